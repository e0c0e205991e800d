/* mix.c — llama.cpp's K-quant and IQ4 mixes (llama-quantize's Q2_K, Q3_K_M,
 * Q4_K_M, Q5_K_M, Q6_K, IQ4_NL, IQ4_XS): the storage type of each matrix by its role and
 * layer, as llama_tensor_get_type_impl in llama.cpp's src/llama-quant.cpp
 * chooses it without an importance matrix, for the roles moetool
 * quantizes (no Falcon or 70B special cases; fused QKV has no role here):
 *
 *                      Q2_K    Q3_K_M           Q4_K_M          Q5_K_M          Q6_K
 *   base type          q2_K    q3_K             q4_K            q5_K            q6_K
 *   output (lm_head)   q6_K    q6_K             q6_K            q6_K            q6_K
 *   attn_v             q4_K¹   q5_K (layers<2)  q6_K if more²   q6_K if more²   base
 *                              else q4_K
 *   attn_output        q3_K    q4_K             base            base            base
 *   ffn_down           q3_K    q5_K if l<L/16,  q6_K if more²   q6_K if more²   base
 *                              else q4_K
 *   with 8 experts:    attn_v and attn_k q8_0; attn_output q5_K for Q2_K, Q3_K_M, Q4_K_M
 *   ¹ q3_K when n_head/n_kv_head < 4   ² use_more_bits(l, L): l < L/8, l >= 7L/8, or (l − L/8) % 3 == 2
 * and a tied token embedding takes the output's type. A matrix whose rows
 * are not whole 256-blocks falls back as llama.cpp does (q2_K, q3_K -> q4_0,
 * q4_K -> q5_0, q5_K -> q5_1, q6_K -> q8_0, iq4_xs -> iq4_nl).
 *
 * The i-quant mixes IQ4_NL (25) and IQ4_XS (30): the base type but output
 * q6_K, attn_v q5_K when n_head/n_kv_head >= 4, and with 8 experts attn_v,
 * attn_k q8_0 and attn_output q5_K (checked type for type against
 * llama-quantize on the bundled model, tests/cli_iquant_write.sh). Not
 * reproduced: llama.cpp's q5_K for ffn_down of layers < L/8 when it has no
 * importance matrix (no layer of the bundled 4-layer model). */
#include "quant_impl.h"

#include <string.h>
#include <strings.h>

static const struct {
    const char *name;
    int ftype;     /* llama.h LLAMA_FTYPE_MOSTLY_*            */
    mt_dtype base;
} g_mixes[] = {
    {"q2_k", 10, MT_DT_Q2_K},   {"q3_k_m", 12, MT_DT_Q3_K}, {"q4_k_m", 15, MT_DT_Q4_K},
    {"q5_k_m", 17, MT_DT_Q5_K}, {"q6_k", 18, MT_DT_Q6_K},   {"iq4_nl", 25, MT_DT_IQ4_NL},
    {"iq4_xs", 30, MT_DT_IQ4_XS},
};
#define N_MIXES (int)(sizeof g_mixes / sizeof g_mixes[0])

int mt_quant_mix_from_name(const char *name) {
    for (int i = 0; name && i < N_MIXES; i++)
        if (!strcasecmp(name, g_mixes[i].name)) return g_mixes[i].ftype;
    return -1;
}

const char *mt_quant_mix_name(int ftype) {
    for (int i = 0; i < N_MIXES; i++)
        if (g_mixes[i].ftype == ftype) return g_mixes[i].name;
    return NULL;
}

static int more_bits(int l, int n) { return l < n / 8 || l >= 7 * n / 8 || (l - n / 8) % 3 == 2; }

static mt_dtype fallback(mt_dtype t, int64_t cols) {
    if (cols % MT_QK_K == 0) return t;
    switch (t) {
    case MT_DT_Q2_K:
    case MT_DT_Q3_K: return MT_DT_Q4_0;
    case MT_DT_Q4_K: return MT_DT_Q5_0;
    case MT_DT_Q5_K: return MT_DT_Q5_1;
    case MT_DT_Q6_K: return MT_DT_Q8_0;
    case MT_DT_IQ4_XS: return MT_DT_IQ4_NL;
    default: return t;
    }
}

int mt_quant_mix_type(int ftype, mt_quant_role role, int layer, const mt_config *c, int64_t cols) {
    mt_dtype base = (mt_dtype)-1, t;
    for (int i = 0; i < N_MIXES; i++)
        if (g_mixes[i].ftype == ftype) base = g_mixes[i].base;
    if ((int)base < 0) return -1;
    const int L = c->n_layers, e8 = c->n_experts == 8, gqa = c->n_kv_heads > 0 ? c->n_heads / c->n_kv_heads : 1;
    t = base;
    switch (role) {
    case MT_QROLE_OUTPUT:
    case MT_QROLE_EMBD_TIED:
        /* Q8_0 when the rows are not whole blocks of the base type */
        return cols % MT_QK_K ? MT_DT_Q8_0 : MT_DT_Q6_K;
    case MT_QROLE_EMBD: break;
    case MT_QROLE_V:
        if (ftype == 10) t = gqa >= 4 ? MT_DT_Q4_K : MT_DT_Q3_K;
        else if ((ftype == 25 || ftype == 30) && gqa >= 4) t = MT_DT_Q5_K;
        else if (ftype == 12) t = layer < 2 ? MT_DT_Q5_K : MT_DT_Q4_K;
        else if ((ftype == 15 || ftype == 17) && more_bits(layer, L)) t = MT_DT_Q6_K;
        if (e8) t = MT_DT_Q8_0;
        break;
    case MT_QROLE_K:
        if (e8) t = MT_DT_Q8_0;
        break;
    case MT_QROLE_O:
        if (e8) {
            if (ftype == 10 || ftype == 12 || ftype == 15 || ftype == 25 || ftype == 30) t = MT_DT_Q5_K;
        } else if (ftype == 10) {
            t = MT_DT_Q3_K;
        } else if (ftype == 12) {
            t = MT_DT_Q4_K;
        }
        break;
    case MT_QROLE_DOWN:
        if (ftype == 10) t = MT_DT_Q3_K;
        else if (ftype == 12) t = layer < L / 16 ? MT_DT_Q5_K : MT_DT_Q4_K;
        else if ((ftype == 15 || ftype == 17) && more_bits(layer, L)) t = MT_DT_Q6_K;
        break;
    default: break; /* attn_q, ffn_gate, ffn_up: the base type */
    }
    return fallback(t, cols);
}
