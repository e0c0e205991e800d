/* hfconfig.c — the model description from and to a Hugging Face config.json.
 *
 * Layout read (a JSON object; keys as transformers writes them):
 *   model_type                "mixtral" | "mistral" | "llama"  (else architectures[0]:
 *                             MixtralForCausalLM | MistralForCausalLM | LlamaForCausalLM)
 *   vocab_size, hidden_size, intermediate_size, num_hidden_layers,
 *   num_attention_heads       required positive integers
 *   num_key_value_heads       default num_attention_heads
 *   head_dim                  default hidden_size / num_attention_heads (null = default)
 *   num_local_experts, num_experts_per_tok   required for mixtral; dense models: 0
 *   rope_theta                default 1e6 (mixtral), 10000 (mistral, llama)
 *   rms_norm_eps              default 1e-5 (mixtral), 1e-6 (mistral, llama)
 *   max_position_embeddings   default 131072 (mixtral, mistral), 2048 (llama)
 *   tie_word_embeddings       default false
 *   bos_token_id, eos_token_id  integer, null or absent (-1); a list takes its first
 *   rope_scaling              must be absent or null (scaled RoPE is not implemented)
 *   moe_layer_experts         moetool extension: [K0, K1, ...] experts per layer after
 *                             merging (0 = num_local_experts); one entry per layer
 *   moe_router_alias          moetool extension: one entry per layer, null (no alias)
 *                             or [a0 .. a(R-1)]: router row r selects expert a_r of the
 *                             layer's K; K <= R <= MT_MAX_ALIAS_ROWS and every expert has a row
 * Other keys are ignored. Weights stored in HF layout use rotate_half RoPE
 * (MT_ROPE_HALF). */
#define _GNU_SOURCE
#include "ckpt_impl.h"
#include "moetool/mt_arch.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MT_CFG_MAX_DIM (1 << 24)
#define MT_CFG_MAX_EXPERTS (1 << 16)

int mt_config_layer_experts(const mt_config *c, int l) {
    if (c->layer_experts && l >= 0 && l < c->n_layers && c->layer_experts[l] > 0) return c->layer_experts[l];
    if (c->layer_experts && l >= 0 && l < c->n_layers && c->layer_experts[l] == MT_LAYER_DENSE) return 0;
    return c->n_experts;
}

int mt_config_renorm_topk(const mt_config *c) {
    if (c->topk_norm == MT_TOPK_NORM_ON) return 1;
    if (c->topk_norm == MT_TOPK_NORM_OFF) return 0;
    const mt_arch *a = mt_arch_get(c->arch);
    return a ? a->renorm_topk : 1;
}

int mt_config_dense_ffn(const mt_config *c) { return c->ffn_dense > 0 ? c->ffn_dense : c->ffn; }

int mt_config_router_rows(const mt_config *c, int l) {
    if (c->router_rows && l >= 0 && l < c->n_layers && c->router_rows[l] > 0) return c->router_rows[l];
    return mt_config_layer_experts(c, l);
}

int mt_config_has_alias(const mt_config *c) {
    for (int l = 0; c->router_rows && l < c->n_layers; l++)
        if (c->router_rows[l]) return 1;
    return 0;
}

const char *mt_config_portability(const mt_config *c) {
    if (mt_config_has_alias(c))
        return "its router keeps every original row, each mapped to a merged expert (moe_router_alias): moetool "
               "runs it; transformers and llama.cpp cannot";
    for (int l = 0; c->layer_experts && l < c->n_layers; l++) /* dense-MLP layers are the family's own */
        if (c->layer_experts[l] != MT_LAYER_DENSE && mt_config_layer_experts(c, l) != c->n_experts)
            return "its layers keep different numbers of experts (moe_layer_experts): moetool runs it; transformers "
                   "and llama.cpp cannot (a router without a bias cannot switch padded experts off, so no exact "
                   "padding exists; merge with one --experts K for a portable model)";
    return NULL;
}

const int32_t *mt_config_router_alias(const mt_config *c, int l) {
    if (!c->router_alias || l < 0 || l >= c->n_layers) return NULL;
    return c->router_alias[l];
}

void mt_config_free(mt_config *c) {
    if (!c) return;
    for (int l = 0; c->router_alias && l < c->n_layers; l++) free(c->router_alias[l]);
    free(c->router_alias);
    free(c->router_rows);
    free(c->layer_experts);
    c->router_alias = NULL;
    c->router_rows = NULL;
    c->layer_experts = NULL;
}

int mt_config_equal(const mt_config *a, const mt_config *b) {
    mt_config x = *a, y = *b;
    x.layer_experts = y.layer_experts = NULL;
    x.router_rows = y.router_rows = NULL;
    x.router_alias = y.router_alias = NULL;
    if (memcmp(&x, &y, sizeof x) != 0) return 0;
    for (int l = 0; l < a->n_layers; l++) {
        const int ka = a->layer_experts ? a->layer_experts[l] : 0, kb = b->layer_experts ? b->layer_experts[l] : 0;
        const int ra = a->router_rows ? a->router_rows[l] : 0, rb = b->router_rows ? b->router_rows[l] : 0;
        if (ka != kb || ra != rb) return 0;
        if (ra && memcmp(a->router_alias[l], b->router_alias[l], (size_t)ra * sizeof(int32_t)) != 0) return 0;
    }
    return 1;
}

static int n_layers_ok(const mt_config *c) { return c->n_layers > 0 && c->n_layers <= MT_MAX_LAYERS; }

int mt_config_set_layer_experts(mt_config *c, int l, int k) {
    if (!n_layers_ok(c) || l < 0 || l >= c->n_layers || (k < 0 && k != MT_LAYER_DENSE))
        return mt_seterr(MT_ERR_ARG, "config: layer %d / expert count %d out of range", l, k);
    if (!c->layer_experts && !(c->layer_experts = calloc((size_t)c->n_layers, sizeof *c->layer_experts)))
        return mt_seterr(MT_ERR_NOMEM, "config: out of memory");
    c->layer_experts[l] = k;
    return MT_OK;
}

int mt_config_set_router_alias(mt_config *c, int l, int R, const int32_t *alias) {
    if (!n_layers_ok(c) || l < 0 || l >= c->n_layers || R < 0 || R > MT_MAX_ALIAS_ROWS || (R && !alias))
        return mt_seterr(MT_ERR_ARG, "config: router alias of layer %d with %d rows out of range", l, R);
    if (!c->router_rows) {
        c->router_rows = calloc((size_t)c->n_layers, sizeof *c->router_rows);
        c->router_alias = calloc((size_t)c->n_layers, sizeof *c->router_alias);
        if (!c->router_rows || !c->router_alias) {
            free(c->router_rows);
            free(c->router_alias);
            c->router_rows = NULL;
            c->router_alias = NULL;
            return mt_seterr(MT_ERR_NOMEM, "config: out of memory");
        }
    }
    int32_t *a = NULL;
    if (R && !(a = malloc((size_t)R * sizeof *a))) return mt_seterr(MT_ERR_NOMEM, "config: out of memory");
    if (R) memcpy(a, alias, (size_t)R * sizeof *a);
    free(c->router_alias[l]);
    c->router_alias[l] = a;
    c->router_rows[l] = R;
    return MT_OK;
}

int mt_config_copy(mt_config *dst, const mt_config *src) {
    mt_config c = *src;
    c.layer_experts = NULL;
    c.router_rows = NULL;
    c.router_alias = NULL;
    int rc = MT_OK;
    for (int l = 0; !rc && src->layer_experts && l < src->n_layers; l++)
        rc = mt_config_set_layer_experts(&c, l, src->layer_experts[l]);
    for (int l = 0; !rc && src->router_rows && l < src->n_layers; l++)
        rc = mt_config_set_router_alias(&c, l, src->router_rows[l], src->router_alias[l]);
    if (rc) {
        mt_config_free(&c);
        return rc;
    }
    *dst = c;
    return MT_OK;
}

/* Alias maps: rows within bounds, values name experts of the layer, every
 * expert reachable (an unreachable one would be dead weight no router picks). */
static int validate_alias(const mt_config *c, const char *path) {
    for (int l = 0; c->router_rows && l < c->n_layers; l++) {
        const int R = c->router_rows[l];
        if (R == 0) continue;
        if (c->n_experts == 0)
            return mt_seterr(MT_ERR_FORMAT, "%s: moe_router_alias in a dense model", path);
        const int K = mt_config_layer_experts(c, l);
        if (R < 0 || R > MT_MAX_ALIAS_ROWS || R < K)
            return mt_seterr(MT_ERR_FORMAT, "%s: moe_router_alias[%d] has %d rows for %d experts (need %d .. %d)",
                             path, l, R, K, K, MT_MAX_ALIAS_ROWS);
        const int32_t *a = c->router_alias ? c->router_alias[l] : NULL;
        if (!a) return mt_seterr(MT_ERR_FORMAT, "%s: moe_router_alias[%d] has no rows", path, l);
        for (int r = 0; r < R; r++)
            if (a[r] < 0 || a[r] >= K)
                return mt_seterr(MT_ERR_FORMAT, "%s: moe_router_alias[%d][%d] = %d is not an expert (layer %d has %d)",
                                 path, l, r, a[r], l, K);
        for (int e = 0; e < K; e++) { /* every expert reachable; R is small next to a layer's weights */
            int r = 0;
            while (r < R && a[r] != e) r++;
            if (r == R)
                return mt_seterr(MT_ERR_FORMAT, "%s: moe_router_alias[%d]: no router row selects expert %d", path, l,
                                 e);
        }
    }
    return MT_OK;
}

int mt_config_validate(const mt_config *c, const char *path) {
#define POS(field, what)                                                                              \
    if (c->field <= 0 || c->field >= MT_CFG_MAX_DIM)                                                  \
        return mt_seterr(MT_ERR_FORMAT, "%s: %s is %d (expected 1 .. %d)", path, what, c->field,     \
                         MT_CFG_MAX_DIM - 1);
    POS(vocab, "vocab size")
    POS(hidden, "hidden size")
    POS(ffn, "intermediate size")
    POS(n_heads, "attention head count")
    POS(n_kv_heads, "key/value head count")
    POS(head_dim, "head_dim")
    POS(max_pos, "max_position_embeddings")
#undef POS
    if (c->n_layers <= 0 || c->n_layers > MT_MAX_LAYERS)
        return mt_seterr(MT_ERR_FORMAT, "%s: layer count %d (expected 1 .. %d)", path, c->n_layers,
                         MT_MAX_LAYERS);
    if (c->n_heads % c->n_kv_heads)
        return mt_seterr(MT_ERR_FORMAT, "%s: %d attention heads are not a multiple of %d key/value heads",
                         path, c->n_heads, c->n_kv_heads);
    if (c->head_dim % 2)
        return mt_seterr(MT_ERR_FORMAT, "%s: head_dim %d is odd (RoPE needs pairs)", path, c->head_dim);
    if ((int64_t)c->n_heads * c->head_dim >= MT_CFG_MAX_DIM)
        return mt_seterr(MT_ERR_FORMAT, "%s: heads * head_dim = %lld is too large", path,
                         (long long)c->n_heads * c->head_dim);
    if (c->n_experts < 0 || c->n_experts > MT_CFG_MAX_EXPERTS)
        return mt_seterr(MT_ERR_FORMAT, "%s: expert count %d (expected 0 .. %d)", path, c->n_experts,
                         MT_CFG_MAX_EXPERTS);
    if (c->n_experts == 0) {
        if (c->top_k != 0)
            return mt_seterr(MT_ERR_FORMAT, "%s: experts per token %d in a dense model", path, c->top_k);
        for (int l = 0; c->layer_experts && l < c->n_layers; l++)
            if (c->layer_experts[l])
                return mt_seterr(MT_ERR_FORMAT, "%s: per-layer expert counts in a dense model", path);
    } else {
        if (c->top_k <= 0 || c->top_k > c->n_experts)
            return mt_seterr(MT_ERR_FORMAT, "%s: experts per token %d (expected 1 .. %d experts)", path,
                             c->top_k, c->n_experts);
        for (int l = 0; c->layer_experts && l < c->n_layers; l++) {
            int k = c->layer_experts[l];
            if (k == 0 || k == MT_LAYER_DENSE) continue;
            if (k < c->top_k || k > MT_CFG_MAX_EXPERTS)
                return mt_seterr(MT_ERR_FORMAT, "%s: layer %d has %d experts (need %d .. %d)", path, l, k,
                                 c->top_k, MT_CFG_MAX_EXPERTS);
        }
    }
    int rc = validate_alias(c, path);
    if (rc) return rc;
    if (c->ffn_dense < 0 || c->ffn_dense >= MT_CFG_MAX_DIM || c->ffn_shared < 0 || c->ffn_shared >= MT_CFG_MAX_DIM)
        return mt_seterr(MT_ERR_FORMAT, "%s: dense-MLP / shared-expert intermediate size %d / %d out of range", path,
                         c->ffn_dense, c->ffn_shared);
    if (c->topk_norm < MT_TOPK_NORM_FAMILY || c->topk_norm > MT_TOPK_NORM_OFF)
        return mt_seterr(MT_ERR_FORMAT, "%s: unknown top-k normalisation %d", path, c->topk_norm);
    const mt_arch *fam = mt_arch_get(c->arch);
    if (fam && fam->n_shared_experts > 0 && c->n_experts > 0 && c->ffn_shared <= 0)
        return mt_seterr(MT_ERR_FORMAT, "%s: %s has a shared expert but its intermediate size is %d", path, fam->name,
                         c->ffn_shared);
    if (!(c->rope_theta > 0) || !isfinite(c->rope_theta))
        return mt_seterr(MT_ERR_FORMAT, "%s: rope_theta %g is not a positive number", path, c->rope_theta);
    if (!(c->norm_eps > 0) || !isfinite(c->norm_eps) || c->norm_eps > 1)
        return mt_seterr(MT_ERR_FORMAT, "%s: rms_norm_eps %g out of range (0, 1]", path, c->norm_eps);
    if (c->bos_id < -1 || c->bos_id >= c->vocab)
        return mt_seterr(MT_ERR_FORMAT, "%s: bos_token_id %d outside the vocabulary (%d)", path, c->bos_id,
                         c->vocab);
    if (c->eos_id < -1 || c->eos_id >= c->vocab)
        return mt_seterr(MT_ERR_FORMAT, "%s: eos_token_id %d outside the vocabulary (%d)", path, c->eos_id,
                         c->vocab);
    if (c->rope_style != MT_ROPE_HALF && c->rope_style != MT_ROPE_INTERLEAVED)
        return mt_seterr(MT_ERR_FORMAT, "%s: unknown rope style %d", path, c->rope_style);
    if (!mt_arch_get(c->arch)) return mt_seterr(MT_ERR_UNSUPPORTED, "%s: unsupported architecture %s", path, c->arch);
    return MT_OK;
}

/* ---- reading ---------------------------------------------------------- */

/* Integer-valued JSON number (4096 or 4096.0) in int range. */
static int json_to_int(const json_t *v, int *out) {
    if (json_is_integer(v)) {
        json_int_t i = json_integer_value(v);
        if (i < INT32_MIN || i > INT32_MAX) return 0;
        *out = (int)i;
        return 1;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (!(d >= INT32_MIN && d <= INT32_MAX) || d != floor(d)) return 0;
        *out = (int)d;
        return 1;
    }
    return 0;
}

/* Required (def == NULL) or optional integer key. null counts as absent. */
static int get_int(const json_t *root, const char *key, const int *def, int *out, const char *path) {
    const json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (!def) return mt_seterr(MT_ERR_FORMAT, "%s: missing required key \"%s\"", path, key);
        *out = *def;
        return MT_OK;
    }
    if (!json_to_int(v, out))
        return mt_seterr(MT_ERR_FORMAT, "%s: key \"%s\" is not an integer", path, key);
    return MT_OK;
}

static int get_float(const json_t *root, const char *key, double def, float *out, const char *path) {
    const json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        *out = (float)def;
        return MT_OK;
    }
    if (!json_is_number(v)) return mt_seterr(MT_ERR_FORMAT, "%s: key \"%s\" is not a number", path, key);
    *out = (float)json_number_value(v);
    return MT_OK;
}

/* Token id: integer, null/absent (-1), or a list whose first entry is used. */
static int get_token_id(const json_t *root, const char *key, int *out, const char *path) {
    const json_t *v = json_object_get(root, key);
    *out = -1;
    if (!v || json_is_null(v)) return MT_OK;
    if (json_is_array(v)) {
        if (json_array_size(v) == 0) return MT_OK;
        v = json_array_get(v, 0);
    }
    if (!json_to_int(v, out) || *out < -1)
        return mt_seterr(MT_ERR_FORMAT, "%s: key \"%s\" is not a token id", path, key);
    return MT_OK;
}

/* AutoGPTQ layout options of a quantization_config (or of its "gptq" part). */
static int parse_gptq_layout(const json_t *q, mt_config *c, const char *path) {
    const json_t *cf = json_object_get(q, "checkpoint_format");
    c->quant_zero_offset = 1;
    if (cf && !json_is_null(cf)) {
        if (!json_is_string(cf))
            return mt_seterr(MT_ERR_FORMAT, "%s: quantization_config.checkpoint_format must be a string", path);
        const char *f = json_string_value(cf);
        if (!strcmp(f, "gptq_v2")) c->quant_zero_offset = 0;
        else if (strcmp(f, "gptq") != 0)
            return mt_seterr(MT_ERR_UNSUPPORTED, "%s: quantization_config.checkpoint_format \"%s\" is not supported "
                             "(gptq, gptq_v2)", path, f);
    }
    const json_t *b = json_object_get(q, "bits");
    int bits = 0;
    if (b && (!json_to_int(b, &bits) || (bits != 2 && bits != 4 && bits != 8)))
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: quantization_config.bits must be 2, 4 or 8 for the AutoGPTQ layout",
                         path);
    return MT_OK;
}

/* "quantization_config": none, gptq (AutoGPTQ/GPTQModel layout) or qmoe. */
static int parse_quant(const json_t *root, mt_config *c, const char *path) {
    const json_t *q = json_object_get(root, "quantization_config");
    c->quant = MT_QFMT_NONE;
    if (!q || json_is_null(q)) return MT_OK;
    if (!json_is_object(q)) return mt_seterr(MT_ERR_FORMAT, "%s: quantization_config is not an object", path);
    const json_t *m = json_object_get(q, "quant_method");
    const char *name = json_is_string(m) ? json_string_value(m) : NULL;
    if (!name) return mt_seterr(MT_ERR_FORMAT, "%s: quantization_config has no quant_method", path);
    if (!strcmp(name, "gptq")) {
        c->quant = MT_QFMT_GPTQ;
        return parse_gptq_layout(q, c, path);
    }
    if (!strcmp(name, "qmoe")) {
        c->quant = MT_QFMT_QMOE;
        const json_t *g = json_object_get(q, "gptq");
        c->quant_zero_offset = 1;
        return json_is_object(g) ? parse_gptq_layout(g, c, path) : MT_OK;
    }
    return mt_seterr(MT_ERR_UNSUPPORTED, "%s: quantization_config.quant_method \"%s\" is not supported (gptq, qmoe)",
                     path, name);
}

/* Keys that change the math: refused unless the family runs what they ask. */
static int check_family_keys(const json_t *root, const mt_arch *fam, const char *path) {
    const json_t *act = json_object_get(root, "hidden_act");
    if (act && !json_is_null(act) && (!json_is_string(act) || strcmp(json_string_value(act), fam->hidden_act)))
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: hidden_act %s is not supported for %s (only %s)", path,
                         json_is_string(act) ? json_string_value(act) : "(not a string)", fam->name, fam->hidden_act);
    for (const char *const *k = fam->hf_refuse_set; k && *k; k++) {
        const json_t *v = json_object_get(root, *k);
        if (v && !json_is_null(v) && !json_is_false(v))
            return mt_seterr(MT_ERR_UNSUPPORTED, "%s: %s = %s is not supported for %s", path, *k,
                             json_is_true(v) ? "true" : "a value", fam->name);
    }
    static const char *const bias_keys[] = {"attention_bias", "mlp_bias"};
    for (size_t i = 0; i < sizeof bias_keys / sizeof bias_keys[0]; i++) {
        const json_t *b = json_object_get(root, bias_keys[i]);
        if (b && json_is_true(b) && !fam->attn_bias)
            return mt_seterr(MT_ERR_UNSUPPORTED, "%s: %s = true is not supported for %s (its projections have no biases)",
                             path, bias_keys[i], fam->name);
    }
    return MT_OK;
}

/* Qwen2-MoE: layer l is a dense MLP unless (l + 1) % decoder_sparse_step == 0
 * and l is not in mlp_only_layers (transformers' Qwen2MoeDecoderLayer). */
static int parse_sparse_layers(const json_t *root, mt_config *c, const char *path) {
    int one = 1, step, rc;
    if ((rc = get_int(root, "decoder_sparse_step", &one, &step, path))) return rc;
    if (step <= 0) return mt_seterr(MT_ERR_FORMAT, "%s: decoder_sparse_step is %d", path, step);
    for (int l = 0; l < c->n_layers && l < MT_MAX_LAYERS; l++)
        if ((l + 1) % step && (rc = mt_config_set_layer_experts(c, l, MT_LAYER_DENSE))) return rc;
    const json_t *mo = json_object_get(root, "mlp_only_layers");
    if (!mo || json_is_null(mo)) return MT_OK;
    if (!json_is_array(mo)) return mt_seterr(MT_ERR_FORMAT, "%s: key \"mlp_only_layers\" is not a list", path);
    for (size_t i = 0; i < json_array_size(mo); i++) {
        int l;
        if (!json_to_int(json_array_get(mo, i), &l) || l < 0 || l >= c->n_layers)
            return mt_seterr(MT_ERR_FORMAT, "%s: mlp_only_layers[%zu] is not a layer index (0 .. %d)", path, i,
                             c->n_layers - 1);
        if ((rc = mt_config_set_layer_experts(c, l, MT_LAYER_DENSE))) return rc;
    }
    return MT_OK;
}

static int parse_root(mt_config *c, const json_t *root, const char *path) {
    if (!json_is_object(root)) return mt_seterr(MT_ERR_FORMAT, "%s: config is not a JSON object", path);
    const json_t *mt = json_object_get(root, "model_type");
    const json_t *ar = json_object_get(root, "architectures");
    const mt_arch *fam = NULL;
    if (json_is_string(mt)) {
        const char *s = json_string_value(mt);
        if (mt_arch_refusal(s, NULL)) return mt_seterr(MT_ERR_UNSUPPORTED, "%s: %s", path, mt_arch_refusal(s, NULL));
        if (!(fam = mt_arch_find_hf(s, NULL)))
            return mt_seterr(MT_ERR_UNSUPPORTED, "%s: unsupported architecture %s", path, s);
    } else if (mt && !json_is_null(mt)) {
        return mt_seterr(MT_ERR_FORMAT, "%s: key \"model_type\" is not a string", path);
    } else if (json_is_array(ar) && json_array_size(ar) > 0 && json_is_string(json_array_get(ar, 0))) {
        const char *s = json_string_value(json_array_get(ar, 0));
        if (!(fam = mt_arch_find_hf(NULL, s)))
            return mt_seterr(MT_ERR_UNSUPPORTED, "%s: unsupported architecture %s", path, s);
    } else {
        return mt_seterr(MT_ERR_FORMAT, "%s: missing required key \"model_type\"", path);
    }
    int rc;
    if ((rc = check_family_keys(root, fam, path))) return rc;

    memset(c, 0, sizeof *c);
    snprintf(c->arch, sizeof c->arch, "%s", fam->name);
    c->rope_style = (int)fam->hf_rope;
    if ((rc = get_int(root, "vocab_size", NULL, &c->vocab, path))) return rc;
    if ((rc = get_int(root, "hidden_size", NULL, &c->hidden, path))) return rc;
    if ((rc = get_int(root, "intermediate_size", NULL, &c->ffn, path))) return rc;
    if (fam->hf_key_expert_ffn) { /* experts sized apart from the dense MLP */
        c->ffn_dense = c->ffn;
        if ((rc = get_int(root, fam->hf_key_expert_ffn, NULL, &c->ffn, path))) return rc;
    }
    if (fam->hf_key_shared_ffn && (rc = get_int(root, fam->hf_key_shared_ffn, NULL, &c->ffn_shared, path))) return rc;
    if (fam->hf_key_norm_topk) {
        const json_t *nt = json_object_get(root, fam->hf_key_norm_topk);
        if (nt && !json_is_null(nt) && !json_is_boolean(nt))
            return mt_seterr(MT_ERR_FORMAT, "%s: key \"%s\" is not a boolean", path, fam->hf_key_norm_topk);
        if (json_is_boolean(nt)) c->topk_norm = json_is_true(nt) ? MT_TOPK_NORM_ON : MT_TOPK_NORM_OFF;
    }
    if ((rc = get_int(root, "num_hidden_layers", NULL, &c->n_layers, path))) return rc;
    if ((rc = get_int(root, "num_attention_heads", NULL, &c->n_heads, path))) return rc;
    if ((rc = get_int(root, "num_key_value_heads", &c->n_heads, &c->n_kv_heads, path))) return rc;
    if (c->n_heads <= 0)
        return mt_seterr(MT_ERR_FORMAT, "%s: num_attention_heads is %d", path, c->n_heads);
    int hd_def = c->hidden / c->n_heads;
    if ((rc = get_int(root, "head_dim", &hd_def, &c->head_dim, path))) return rc;
    if (fam->moe) {
        if ((rc = get_int(root, fam->hf_key_experts, NULL, &c->n_experts, path))) return rc;
        if ((rc = get_int(root, "num_experts_per_tok", NULL, &c->top_k, path))) return rc;
        if (c->n_experts <= 0)
            return mt_seterr(MT_ERR_FORMAT, "%s: %s is %d", path, fam->hf_key_experts, c->n_experts);
    }
    if ((rc = get_float(root, "rope_theta", fam->rope_theta, &c->rope_theta, path))) return rc;
    if ((rc = get_float(root, "rms_norm_eps", fam->norm_eps, &c->norm_eps, path))) return rc;
    if ((rc = get_int(root, "max_position_embeddings", &fam->max_pos, &c->max_pos, path))) return rc;
    const json_t *tie = json_object_get(root, "tie_word_embeddings");
    if (tie && !json_is_null(tie)) {
        if (!json_is_boolean(tie))
            return mt_seterr(MT_ERR_FORMAT, "%s: key \"tie_word_embeddings\" is not a boolean", path);
        c->tie_embeddings = json_is_true(tie);
    }
    if ((rc = get_token_id(root, "bos_token_id", &c->bos_id, path))) return rc;
    if ((rc = get_token_id(root, "eos_token_id", &c->eos_id, path))) return rc;
    const json_t *rs = json_object_get(root, "rope_scaling");
    if (rs && !json_is_null(rs)) {
        const json_t *ty = json_is_object(rs) ? json_object_get(rs, "rope_type") : NULL;
        if (!ty && json_is_object(rs)) ty = json_object_get(rs, "type");
        if (!(json_is_string(ty) && strcmp(json_string_value(ty), "default") == 0))
            return mt_seterr(MT_ERR_UNSUPPORTED, "%s: rope_scaling %s is not supported", path,
                             json_is_string(ty) ? json_string_value(ty) : "(unknown type)");
    }
    const json_t *le = json_object_get(root, "moe_layer_experts");
    if (le && !json_is_null(le)) {
        if (!json_is_array(le))
            return mt_seterr(MT_ERR_FORMAT, "%s: key \"moe_layer_experts\" is not a list", path);
        if (c->n_experts == 0)
            return mt_seterr(MT_ERR_FORMAT, "%s: \"moe_layer_experts\" in a dense model", path);
        if (c->n_layers <= 0 || c->n_layers > MT_MAX_LAYERS || json_array_size(le) != (size_t)c->n_layers)
            return mt_seterr(MT_ERR_FORMAT, "%s: \"moe_layer_experts\" has %zu entries for %d layers", path,
                             json_array_size(le), c->n_layers);
        for (int l = 0; l < c->n_layers; l++) {
            int k;
            if (!json_to_int(json_array_get(le, (size_t)l), &k) || k < 0)
                return mt_seterr(MT_ERR_FORMAT, "%s: moe_layer_experts[%d] is not a count", path, l);
            if ((rc = mt_config_set_layer_experts(c, l, k == c->n_experts ? 0 : k))) return rc;
        }
    }
    const json_t *al = json_object_get(root, "moe_router_alias");
    if (al && !json_is_null(al)) {
        if (!json_is_array(al))
            return mt_seterr(MT_ERR_FORMAT, "%s: key \"moe_router_alias\" is not a list", path);
        if (c->n_experts == 0)
            return mt_seterr(MT_ERR_FORMAT, "%s: \"moe_router_alias\" in a dense model", path);
        if (c->n_layers <= 0 || c->n_layers > MT_MAX_LAYERS || json_array_size(al) != (size_t)c->n_layers)
            return mt_seterr(MT_ERR_FORMAT, "%s: \"moe_router_alias\" has %zu entries for %d layers", path,
                             json_array_size(al), c->n_layers);
        for (int l = 0; l < c->n_layers; l++) {
            const json_t *row = json_array_get(al, (size_t)l);
            if (json_is_null(row)) continue;
            const int K = mt_config_layer_experts(c, l);
            size_t R = json_is_array(row) ? json_array_size(row) : 0;
            if (!json_is_array(row))
                return mt_seterr(MT_ERR_FORMAT, "%s: moe_router_alias[%d] is neither a list nor null", path, l);
            if (R < (size_t)K || R > MT_MAX_ALIAS_ROWS)
                return mt_seterr(MT_ERR_FORMAT, "%s: moe_router_alias[%d] has %zu rows for %d experts (need %d .. %d)",
                                 path, l, R, K, K, MT_MAX_ALIAS_ROWS);
            int32_t *a = malloc(R * sizeof *a);
            if (!a) return mt_seterr(MT_ERR_NOMEM, "%s: out of memory", path);
            for (size_t r = 0; r < R; r++) {
                int e;
                if (!json_to_int(json_array_get(row, r), &e) || e < 0 || e >= K) {
                    free(a);
                    return mt_seterr(MT_ERR_FORMAT,
                                     "%s: moe_router_alias[%d][%zu] is not an expert index (layer %d has %d)", path, l,
                                     r, l, K);
                }
                a[r] = e;
            }
            rc = mt_config_set_router_alias(c, l, (int)R, a);
            free(a);
            if (rc) return rc;
        }
    }
    if (fam->hf_sparse_layers && (rc = parse_sparse_layers(root, c, path))) return rc;
    if ((rc = parse_quant(root, c, path))) return rc;
    return mt_config_validate(c, path);
}

int mt_config_from_hf_json(mt_config *out, const char *json_text, size_t len, const char *path) {
    if (!path) path = "config.json";
    if (!out || !json_text) return mt_seterr(MT_ERR_ARG, "%s: no config text", path);
    json_error_t jerr;
    json_t *root = json_loadb(json_text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return mt_seterr(MT_ERR_FORMAT, "%s: invalid JSON at line %d column %d: %s", path, jerr.line,
                         jerr.column, jerr.text);
    mt_config c;
    memset(&c, 0, sizeof c);
    int rc = parse_root(&c, root, path);
    json_decref(root);
    if (rc == MT_OK) *out = c;
    else mt_config_free(&c);
    return rc;
}

int mt_config_load_hf(mt_config *out, const char *path) {
    mt_mapped m;
    int rc = mt_map_file(&m, path);
    if (rc) {
        if (!mt_path_exists(path)) return mt_seterr(MT_ERR_NOT_FOUND, "%s: config file not found", path);
        return rc;
    }
    rc = mt_config_from_hf_json(out, m.data ? (const char *)m.data : "", m.size, path);
    mt_unmap_file(&m);
    return rc;
}

/* ---- writing ---------------------------------------------------------- */

/* The shortest decimal that reads back as the same float, as a double, so
 * that 1e-5f is written "1e-05" and not "9.9999997e-06". */
static double float_short(float f) {
    char buf[32];
    for (int p = 1; p <= 9; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, (double)f);
        if (strtof(buf, NULL) == f) return strtod(buf, NULL);
    }
    return (double)f;
}

static json_t *token_json(int id) { return id >= 0 ? json_integer(id) : json_null(); }

/* Dense-MLP layers as decoder_sparse_step (the smallest step giving exactly
 * them) or, when no step does, as mlp_only_layers with step 1. */
static int set_sparse_layers(json_t *r, const mt_config *c) {
    int step = 0;
    for (int s = 1; s <= c->n_layers && !step; s++) {
        int ok = 1;
        for (int l = 0; ok && l < c->n_layers; l++)
            ok = (mt_config_layer_experts(c, l) == 0) == ((l + 1) % s != 0 || c->n_experts == 0);
        if (ok) step = s;
    }
    json_t *mo = json_array();
    int bad = !mo;
    for (int l = 0; !step && mo && l < c->n_layers; l++)
        if (mt_config_layer_experts(c, l) == 0) bad |= json_array_append_new(mo, json_integer(l));
    bad |= json_object_set_new(r, "decoder_sparse_step", json_integer(step ? step : 1));
    bad |= json_object_set_new(r, "mlp_only_layers", mo);
    return bad;
}

int mt_config_to_hf_json(char **out, const mt_config *c, const char *torch_dtype) {
    return mt_config_to_hf_json_q(out, c, torch_dtype, NULL);
}

int mt_config_to_hf_json_q(char **out, const mt_config *c, const char *torch_dtype, const char *quant_json) {
    *out = NULL;
    int rc = mt_config_validate(c, "config");
    if (rc) return rc;
    /* dense Mixtral (every expert merged away) is written as a Mistral; other
     * families keep their class (their config takes num_experts = 0) */
    const mt_arch *fam = mt_arch_get(c->arch);
    if (fam && !strcmp(fam->gguf_arch, "llama"))
        fam = mt_arch_get(strcmp(c->arch, "llama") == 0 ? "llama" : c->n_experts > 0 ? "mixtral" : "mistral");
    if (!fam) return mt_seterr(MT_ERR_INTERNAL, "config: no family for %s", c->arch);
    /* a: 0 Mixtral, 1 Mistral, 2 Llama, 3 another family (its own keys) */
    const int a = strcmp(fam->gguf_arch, "llama") ? 3 : fam->moe ? 0 : strcmp(fam->name, "llama") == 0 ? 2 : 1;
    json_t *r = json_object();
    if (!r) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    int bad = 0;
#define SET(k, v) bad |= json_object_set_new(r, k, v)
    SET("architectures", json_pack("[s]", fam->hf_class));
    SET("model_type", json_string(fam->hf_model_type));
    SET("vocab_size", json_integer(c->vocab));
    SET("hidden_size", json_integer(c->hidden));
    SET("intermediate_size", json_integer(a == 3 ? mt_config_dense_ffn(c) : c->ffn));
    SET("num_hidden_layers", json_integer(c->n_layers));
    SET("num_attention_heads", json_integer(c->n_heads));
    SET("num_key_value_heads", json_integer(c->n_kv_heads));
    SET("head_dim", json_integer(c->head_dim));
    if (a == 3) {
        SET(fam->hf_key_experts, json_integer(c->n_experts));
        SET("num_experts_per_tok", json_integer(c->n_experts > 0 ? c->top_k : 1));
        if (fam->hf_key_expert_ffn) SET(fam->hf_key_expert_ffn, json_integer(c->ffn));
        if (fam->hf_key_shared_ffn) SET(fam->hf_key_shared_ffn, json_integer(c->ffn_shared));
        if (fam->hf_key_norm_topk) SET(fam->hf_key_norm_topk, json_boolean(mt_config_renorm_topk(c)));
        if (fam->hf_sparse_layers) bad |= set_sparse_layers(r, c);
        SET("output_router_logits", json_false());
        SET("router_aux_loss_coef", json_real(0.001));
    }
    if (a == 0) {
        SET("num_local_experts", json_integer(c->n_experts));
        SET("num_experts_per_tok", json_integer(c->top_k));
        SET("output_router_logits", json_false());
        SET("router_aux_loss_coef", json_real(0.02));
        SET("router_jitter_noise", json_real(0.0));
    }
    SET("rope_theta", json_real(float_short(c->rope_theta)));
    SET("rms_norm_eps", json_real(float_short(c->norm_eps)));
    SET("max_position_embeddings", json_integer(c->max_pos));
    SET("hidden_act", json_string("silu"));
    if (a == 2) {
        SET("attention_bias", json_false());
        SET("mlp_bias", json_false());
        SET("pretraining_tp", json_integer(1));
        SET("rope_scaling", json_null());
    } else if (a == 3) {
        SET("attention_bias", json_false());
        for (const char *const *k = fam->hf_refuse_set; k && *k; k++) SET(*k, json_null());
    } else {
        SET("sliding_window", json_null());
    }
    SET("attention_dropout", json_real(0.0));
    SET("initializer_range", json_real(0.02));
    SET("tie_word_embeddings", json_boolean(c->tie_embeddings));
    SET("bos_token_id", token_json(c->bos_id));
    SET("eos_token_id", token_json(c->eos_id));
    SET("use_cache", json_true());
    SET("torch_dtype", json_string(torch_dtype ? torch_dtype : "bfloat16"));
    int any = 0;
    for (int l = 0; c->layer_experts && l < c->n_layers; l++) any |= c->layer_experts[l] > 0;
    if ((a == 0 || a == 3) && any) {
        json_t *arr = json_array();
        for (int l = 0; l < c->n_layers; l++) bad |= json_array_append_new(arr, json_integer(mt_config_layer_experts(c, l)));
        SET("moe_layer_experts", arr);
    }
    if ((a == 0 || a == 3) && mt_config_has_alias(c)) {
        json_t *arr = json_array();
        for (int l = 0; l < c->n_layers; l++) {
            const int R = c->router_rows[l];
            json_t *row = R ? json_array() : json_null();
            for (int j = 0; j < R; j++) bad |= json_array_append_new(row, json_integer(c->router_alias[l][j]));
            bad |= json_array_append_new(arr, row);
        }
        SET("moe_router_alias", arr);
    }
    if (quant_json) {
        json_error_t je;
        json_t *q = json_loads(quant_json, 0, &je);
        if (!json_is_object(q)) {
            json_decref(q);
            json_decref(r);
            return mt_seterr(MT_ERR_INTERNAL, "quantization_config is not a JSON object: %s", je.text);
        }
        SET("quantization_config", q);
    }
#undef SET
    char *s = bad ? NULL : json_dumps(r, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
    json_decref(r);
    if (!s) return mt_seterr(MT_ERR_NOMEM, "out of memory writing config.json");
    /* json_dumps memory is malloc'd by jansson's default allocator (malloc). */
    size_t n = strlen(s);
    char *t = malloc(n + 2);
    if (!t) {
        free(s);
        return mt_seterr(MT_ERR_NOMEM, "out of memory");
    }
    memcpy(t, s, n);
    t[n] = '\n';
    t[n + 1] = 0;
    free(s);
    *out = t;
    return MT_OK;
}
