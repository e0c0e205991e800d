/* mix.c — llama.cpp's K-quant and i-quant mixes (llama-quantize's Q2_K, Q3_K_M,
 * Q4_K_M, Q5_K_M, Q6_K, IQ4_NL, IQ4_XS, IQ3_*, IQ2_*, IQ1_*): the storage type of each matrix by its role and
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
 * llama-quantize on the bundled model, tests/cli_iquant_write.sh); without
 * an importance matrix ffn_down of layers < L/8 q5_K.
 *
 * The lattice i-quant mixes (llama.cpp's llama_tensor_get_type_impl for
 * IQ2_XXS 19, IQ2_XS 20, IQ2_S 28, IQ2_M 29, IQ1_S 24, IQ1_M 31 and IQ3_XXS
 * 23, IQ3_XS 22, IQ3_S 26, IQ3_M 27; base types iq2_xxs, iq2_xs, iq2_xs (!),
 * iq2_s, iq1_s, iq1_m, iq3_xxs, iq3_s, iq3_s, iq3_s):
 *
 *                  IQ2_XXS/XS, IQ1_S/M          IQ2_S/M         IQ3_XXS                 IQ3_XS/S/M
 *   output         q5_K                         q5_K            q5_K                    q6_K
 *   token_embd     q2_K                         iq3_s           iq3_s                   base
 *   attn_v         q4_K if gqa>=4 or >=4 experts, else q2_K     gqa>=4: q4_K, else      q4_K if gqa>=4 (IQ3_M
 *                  (IQ2_S/M: iq3_s)                             iq3_xxs (iq3_s without  always); 8 experts q8_0
 *                                                               imatrix); 8 experts q8_0
 *   attn_k         8 experts: q4_K                              8 experts q8_0, else    IQ3_XS: iq3_xxs; 8 experts q8_0
 *                                                               iq2_s
 *   attn_q         base                                         iq2_s                   IQ3_XS: iq3_xxs
 *   attn_output    8 experts q5_K, else IQ1: iq2_xxs,           8 experts q5_K, else    8 experts q5_K, else IQ3_M q4_K
 *                  IQ2_S/M: iq3_s                               iq3_s
 *   ffn_down       l < L/8: q2_K (IQ2_S/M: iq3_s)               without imatrix l<L/8   IQ3_M: q4_K if l < L/8 or (8
 *                                                               q4_K else q3_K          experts and more bits)
 *   ffn_gate/up    base                                         base                    IQ3_XS: iq3_xxs for L/8 <= l < 7L/8
 *
 * with rows not whole 256-blocks falling back to iq4_nl. */
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
    {"iq4_xs", 30, MT_DT_IQ4_XS},   {"iq2_xxs", 19, MT_DT_IQ2_XXS}, {"iq2_xs", 20, MT_DT_IQ2_XS},
    {"iq2_s", 28, MT_DT_IQ2_XS},    {"iq2_m", 29, MT_DT_IQ2_S},     {"iq3_xxs", 23, MT_DT_IQ3_XXS},
    {"iq3_xs", 22, MT_DT_IQ3_S},    {"iq3_s", 26, MT_DT_IQ3_S},     {"iq3_m", 27, MT_DT_IQ3_S},
    {"iq1_s", 24, MT_DT_IQ1_S},     {"iq1_m", 31, MT_DT_IQ1_M},
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
    case MT_DT_IQ4_XS:
    case MT_DT_IQ3_S:
    case MT_DT_IQ3_XXS:
    case MT_DT_IQ2_S:
    case MT_DT_IQ2_XS:
    case MT_DT_IQ2_XXS:
    case MT_DT_IQ1_M:
    case MT_DT_IQ1_S: return MT_DT_IQ4_NL;
    default: return t;
    }
}

/* The lattice i-quant mixes: low (IQ2_*, IQ1_*) and IQ3_*. */
static int iq_low(int f) { return f == 19 || f == 20 || f == 28 || f == 29 || f == 24 || f == 31; }
static int iq3(int f) { return f == 23 || f == 22 || f == 26 || f == 27; }

static mt_dtype iq_mix_type(int f, mt_dtype base, mt_quant_role role, int layer, const mt_config *c, int has_im) {
    const int L = c->n_layers, e8 = c->n_experts == 8, gqa = c->n_kv_heads > 0 ? c->n_heads / c->n_kv_heads : 1;
    const int s_m = f == 28 || f == 29, iq1 = f == 24 || f == 31;
    switch (role) {
    case MT_QROLE_OUTPUT:
    case MT_QROLE_EMBD_TIED: return iq3(f) && f != 23 ? MT_DT_Q6_K : MT_DT_Q5_K;
    case MT_QROLE_EMBD: return iq3(f) ? MT_DT_IQ3_S : s_m ? MT_DT_IQ3_S : MT_DT_Q2_K;
    case MT_QROLE_V:
        if (iq_low(f)) return gqa >= 4 || c->n_experts >= 4 ? MT_DT_Q4_K : s_m ? MT_DT_IQ3_S : MT_DT_Q2_K;
        if (e8) return MT_DT_Q8_0;
        if (f == 23) return gqa >= 4 ? MT_DT_Q4_K : has_im ? MT_DT_IQ3_XXS : MT_DT_IQ3_S;
        return gqa >= 4 || f == 27 ? MT_DT_Q4_K : base;
    case MT_QROLE_K:
        if (iq_low(f)) return e8 ? MT_DT_Q4_K : base;
        return e8 ? MT_DT_Q8_0 : f == 22 ? MT_DT_IQ3_XXS : f == 23 ? MT_DT_IQ2_S : base;
    case MT_QROLE_Q: return f == 22 ? MT_DT_IQ3_XXS : f == 23 ? MT_DT_IQ2_S : base;
    case MT_QROLE_O:
        if (e8) return MT_DT_Q5_K;
        if (iq_low(f)) return iq1 ? MT_DT_IQ2_XXS : s_m ? MT_DT_IQ3_S : base;
        return f == 23 ? MT_DT_IQ3_S : f == 27 ? MT_DT_Q4_K : base;
    case MT_QROLE_DOWN:
        if (iq_low(f)) return layer < L / 8 ? (s_m ? MT_DT_IQ3_S : MT_DT_Q2_K) : base;
        if (f == 23 && !has_im) return layer < L / 8 ? MT_DT_Q4_K : MT_DT_Q3_K;
        if (f == 27 && (layer < L / 8 || (e8 && more_bits(layer, L)))) return MT_DT_Q4_K;
        return base;
    case MT_QROLE_GATE:
    case MT_QROLE_UP: return f == 22 && layer >= L / 8 && layer < 7 * L / 8 ? MT_DT_IQ3_XXS : base;
    default: return base;
    }
}

int mt_quant_mix_type(int ftype, mt_quant_role role, int layer, const mt_config *c, int64_t cols, int has_im) {
    mt_dtype base = (mt_dtype)-1, t;
    for (int i = 0; i < N_MIXES; i++)
        if (g_mixes[i].ftype == ftype) base = g_mixes[i].base;
    if ((int)base < 0) return -1;
    if (iq_low(ftype) || iq3(ftype)) {
        t = iq_mix_type(ftype, base, role, layer, c, has_im);
        /* output / tied embeddings: q8_0 when the rows are not whole blocks of the base type */
        if ((role == MT_QROLE_OUTPUT || role == MT_QROLE_EMBD_TIED) && cols % MT_QK_K) return MT_DT_Q8_0;
        return fallback(t, cols);
    }
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
        else if ((ftype == 25 || ftype == 30) && !has_im && layer < L / 8) t = MT_DT_Q5_K;
        break;
    default: break; /* attn_q, ffn_gate, ffn_up: the base type */
    }
    return fallback(t, cols);
}
