/* seq2seq.c — encoder-decoder checkpoints (Switch Transformers): config.json
 * keys as transformers' SwitchTransformersConfig reads them, and the mapping
 * of a checkpoint's tensors (safetensors or pytorch_model.bin, opened with
 * mt_ckpt_open_raw) onto mt_s2s_weights. Names come from
 * arch/arch_switch.c; no weight is copied. */
#define _GNU_SOURCE
#include "moetool/mt_seq2seq.h"

#include "moetool/mt_arch.h"

#include "arch_seq2seq.h"
#include "ckpt_impl.h"
#include "moetool/mt_codec.h"
#include "moetool/mt_qmoe.h"
#include "moetool/mt_tokenizer.h"
#include "moetool/mt_write.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The families: config model_type and class. */
static const struct {
    int kind;
    const char *type, *cls;
} g_kinds[] = {
    {MT_S2S_SWITCH, "switch_transformers", "SwitchTransformersForConditionalGeneration"},
    {MT_S2S_NLLB_MOE, "nllb-moe", "NllbMoeForConditionalGeneration"},
};
#define N_KINDS (sizeof g_kinds / sizeof g_kinds[0])

/* Index into g_kinds of a config, or -1. */
static int json_kind(const json_t *root) {
    const json_t *mt = json_object_get(root, "model_type");
    const json_t *ar = json_object_get(root, "architectures");
    const json_t *a0 = json_is_array(ar) ? json_array_get(ar, 0) : NULL;
    for (size_t i = 0; i < N_KINDS; i++) {
        if (json_is_string(mt) && !strcmp(json_string_value(mt), g_kinds[i].type)) return (int)i;
        if (!json_is_string(mt) && json_is_string(a0) && !strcmp(json_string_value(a0), g_kinds[i].cls)) return (int)i;
    }
    return -1;
}

int mt_s2s_is_seq2seq_json(const char *text, size_t len) {
    json_t *root = text ? json_loadb(text, len, 0, NULL) : NULL;
    const int r = root && json_is_object(root) && json_kind(root) >= 0;
    json_decref(root);
    return r;
}

/* The name of a role in the family of c. */
static int name_of(const mt_s2s_config *c, char *buf, size_t n, mt_s2s_tensor t, int dec, int l, int e, int alt,
                   int bias) {
    return c->kind == MT_S2S_NLLB_MOE ? mt_nllbmoe_name(buf, n, t, dec, l, e, alt, bias)
                                      : mt_switch_name(buf, n, t, dec, l, e, alt, bias);
}

int mt_s2s_detect(const char *path) {
    if (!path) return 0;
    char *cfg = NULL;
    if (mt_path_is_dir(path)) {
        cfg = mt_path_join(path, "config.json");
    } else if (mt_archive_name(path)) {
        mt_ckpt *ck = NULL;
        int r = 0;
        if (mt_ckpt_open_raw(&ck, path) == MT_OK) {
            size_t len;
            const char *t = mt_ckpt_config_text(ck, &len);
            r = mt_s2s_is_seq2seq_json(t, len);
        }
        mt_ckpt_free(ck);
        return r;
    } else {
        char *dir = mt_path_dir(path);
        cfg = dir ? mt_path_join(dir, "config.json") : NULL;
        free(dir);
    }
    int r = 0;
    mt_mapped m;
    if (cfg && mt_path_exists(cfg) && mt_map_file(&m, cfg) == MT_OK) {
        r = mt_s2s_is_seq2seq_json((const char *)m.data, m.size);
        mt_unmap_file(&m);
    }
    free(cfg);
    return r;
}

/* Integer key; def NULL = required. */
static int key_int(const json_t *root, const char *key, const int *def, int *out, const char *path) {
    const json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (!def) return mt_seterr(MT_ERR_FORMAT, "%s: missing required key \"%s\"", path, key);
        *out = *def;
        return MT_OK;
    }
    if (!json_is_integer(v) || json_integer_value(v) < -1 || json_integer_value(v) > (1 << 30))
        return mt_seterr(MT_ERR_FORMAT, "%s: key \"%s\" is not an integer in range", path, key);
    *out = (int)json_integer_value(v);
    return MT_OK;
}

static int key_bool(const json_t *root, const char *key, int def, int *out, const char *path) {
    const json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return MT_OK;
    }
    if (!json_is_boolean(v)) return mt_seterr(MT_ERR_FORMAT, "%s: key \"%s\" is not a boolean", path, key);
    *out = json_is_true(v);
    return MT_OK;
}

/* transformers: step = num_layers // num_sparse when num_sparse > 0, else
 * num_layers; a saved *_sparse_step key overrides it. */
static int sparse_step(const json_t *root, const char *step_key, const char *n_key, int n_layers, int *out,
                       const char *path) {
    int def_sparse = 3, ns, rc;
    if ((rc = key_int(root, n_key, &def_sparse, &ns, path))) return rc;
    int def = ns > 0 ? n_layers / ns : n_layers;
    if ((rc = key_int(root, step_key, &def, out, path))) return rc;
    if (*out < 0) return mt_seterr(MT_ERR_FORMAT, "%s: key \"%s\" is %d", path, step_key, *out);
    return MT_OK;
}

static int key_float(const json_t *root, const char *key, double def, double lo, double hi, float *out,
                     const char *path) {
    const json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        *out = (float)def;
        return MT_OK;
    }
    if (!json_is_number(v) || !(json_number_value(v) >= lo && json_number_value(v) <= hi))
        return mt_seterr(MT_ERR_FORMAT, "%s: key \"%s\" is not a number in [%g, %g]", path, key, lo, hi);
    *out = (float)json_number_value(v);
    return MT_OK;
}

/* A string key that must be absent, null or `want`: else math not run here. */
static int key_only(const json_t *root, const char *key, const char *want, const char *path) {
    const json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v) || (json_is_string(v) && !strcmp(json_string_value(v), want))) return MT_OK;
    return mt_seterr(MT_ERR_UNSUPPORTED, "%s: %s %s is not supported (only %s)", path, key,
                     json_is_string(v) ? json_string_value(v) : "(not a string)", want);
}

static int parse_switch(mt_s2s_config *c, const json_t *root, const char *path) {
    int rc, dkv, dff, nh;
    const int d_cap = 64, d_nb = 32, d_md = 128, d_pad = 0, d_eos = 1;
    if ((rc = key_int(root, "d_kv", NULL, &dkv, path)) || (rc = key_int(root, "d_ff", NULL, &dff, path)) ||
        (rc = key_int(root, "num_heads", NULL, &nh, path)) ||
        (rc = key_int(root, "num_layers", NULL, &c->n_enc_layers, path)) ||
        (rc = key_int(root, "num_decoder_layers", &c->n_enc_layers, &c->n_dec_layers, path)) ||
        (rc = key_int(root, "expert_capacity", &d_cap, &c->expert_capacity, path)) ||
        (rc = key_int(root, "relative_attention_num_buckets", &d_nb, &c->num_buckets, path)) ||
        (rc = key_int(root, "relative_attention_max_distance", &d_md, &c->max_distance, path)) ||
        (rc = key_int(root, "pad_token_id", &d_pad, &c->pad_id, path)) ||
        (rc = key_int(root, "eos_token_id", &d_eos, &c->eos_id, path)) ||
        (rc = key_int(root, "decoder_start_token_id", &c->pad_id, &c->decoder_start_id, path)))
        return rc;
    if ((rc = sparse_step(root, "encoder_sparse_step", "num_sparse_encoder_layers", c->n_enc_layers,
                          &c->enc_sparse_step, path)) ||
        (rc = sparse_step(root, "decoder_sparse_step", "num_sparse_decoder_layers", c->n_dec_layers,
                          &c->dec_sparse_step, path)))
        return rc;
    for (int s = 0; s < 2; s++) {
        c->n_heads[s] = nh;
        c->d_kv[s] = dkv;
        c->d_ff[s] = dff;
    }
    c->top_k = 1;
    c->rel_pos = 1;
    c->attn_scale[0] = c->attn_scale[1] = 1.0f;
    c->embed_scale = 1.0f;
    if ((rc = key_float(root, "layer_norm_epsilon", 1e-6, 1e-12, 1, &c->eps, path))) return rc;
    if ((rc = key_only(root, "dense_act_fn", "relu", path))) return rc;
    if (json_is_true(json_object_get(root, "is_gated_act")))
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: is_gated_act true is not supported", path);
    return MT_OK;
}

static int parse_nllb(mt_s2s_config *c, const json_t *root, const char *path) {
    int rc, se = 1;
    const int d_cap = 64, d_pad = 1, d_eos = 2, d_step = 4;
    if ((rc = key_int(root, "encoder_layers", NULL, &c->n_enc_layers, path)) ||
        (rc = key_int(root, "decoder_layers", NULL, &c->n_dec_layers, path)) ||
        (rc = key_int(root, "encoder_ffn_dim", NULL, &c->d_ff[0], path)) ||
        (rc = key_int(root, "decoder_ffn_dim", NULL, &c->d_ff[1], path)) ||
        (rc = key_int(root, "encoder_attention_heads", NULL, &c->n_heads[0], path)) ||
        (rc = key_int(root, "decoder_attention_heads", NULL, &c->n_heads[1], path)) ||
        (rc = key_int(root, "expert_capacity", &d_cap, &c->expert_capacity, path)) ||
        (rc = key_int(root, "encoder_sparse_step", &d_step, &c->enc_sparse_step, path)) ||
        (rc = key_int(root, "decoder_sparse_step", &d_step, &c->dec_sparse_step, path)) ||
        (rc = key_int(root, "pad_token_id", &d_pad, &c->pad_id, path)) ||
        (rc = key_int(root, "eos_token_id", &d_eos, &c->eos_id, path)) ||
        (rc = key_int(root, "decoder_start_token_id", &d_eos, &c->decoder_start_id, path)) ||
        (rc = key_bool(root, "scale_embedding", 1, &se, path)) ||
        (rc = key_bool(root, "normalize_router_prob_before_dropping", 0, &c->norm_before_drop, path)) ||
        (rc = key_float(root, "moe_eval_capacity_token_fraction", 1.0, -1, 1e6, &c->cap_fraction, path)) ||
        (rc = key_float(root, "moe_token_dropout", 0.2, 0, 1, &c->token_dropout, path)))
        return rc;
    if (c->cap_fraction < 0) c->cap_fraction = 0;
    if (c->pad_id < 0) return mt_seterr(MT_ERR_FORMAT, "%s: NLLB-MoE needs pad_token_id for its positions", path);
    for (int s = 0; s < 2; s++) {
        if (c->n_heads[s] <= 0 || c->d_model % c->n_heads[s])
            return mt_seterr(MT_ERR_FORMAT, "%s: d_model %d is not a multiple of the %s attention heads (%d)", path,
                             c->d_model, s ? "decoder" : "encoder", c->n_heads[s]);
        c->d_kv[s] = c->d_model / c->n_heads[s];
        c->attn_scale[s] = (float)pow((double)c->d_kv[s], -0.5);
    }
    c->top_k = 2;
    c->layer_norm_bias = 1;
    c->linear_bias = 1;
    c->eps = 1e-5f; /* nn.LayerNorm's default: the config has no key for it */
    c->embed_scale = se ? (float)sqrt((double)c->d_model) : 1.0f;
    if ((rc = key_only(root, "activation_function", "relu", path)) ||
        (rc = key_only(root, "second_expert_policy", "all", path)))
        return rc;
    int bp = 0;
    if ((rc = key_bool(root, "batch_prioritized_routing", 0, &bp, path))) return rc;
    if (bp) return mt_seterr(MT_ERR_UNSUPPORTED, "%s: batch_prioritized_routing true is not supported", path);
    return MT_OK;
}

/* quantization_config as moetool quantize writes it for these models:
 * absent, "gptq" (experts in the AutoGPTQ layout, symmetric, groups of 32)
 * or "qmoe" (experts as qmoe blobs). */
static int parse_quant(mt_s2s_config *c, const json_t *root, const char *path) {
    const json_t *q = json_object_get(root, "quantization_config");
    c->quant = MT_QFMT_NONE;
    if (!q || json_is_null(q)) return MT_OK;
    const json_t *m = json_is_object(q) ? json_object_get(q, "quant_method") : NULL;
    const char *name = json_is_string(m) ? json_string_value(m) : NULL;
    if (!name) return mt_seterr(MT_ERR_FORMAT, "%s: quantization_config has no quant_method", path);
    if (!strcmp(name, "qmoe")) {
        c->quant = MT_QFMT_QMOE;
        return MT_OK;
    }
    if (strcmp(name, "gptq") != 0)
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: quantization_config.quant_method \"%s\" is not supported for "
                         "encoder-decoder models (gptq, qmoe)", path, name);
    c->quant = MT_QFMT_GPTQ;
    c->quant_zero_offset = 1;
    const json_t *cf = json_object_get(q, "checkpoint_format");
    if (json_is_string(cf) && !strcmp(json_string_value(cf), "gptq_v2")) c->quant_zero_offset = 0;
    else if (cf && !json_is_null(cf) && !(json_is_string(cf) && !strcmp(json_string_value(cf), "gptq")))
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: quantization_config.checkpoint_format is not gptq or gptq_v2", path);
    return MT_OK;
}

static int parse(mt_s2s_config *c, const json_t *root, const char *path) {
    if (!json_is_object(root)) return mt_seterr(MT_ERR_FORMAT, "%s: config is not a JSON object", path);
    const int k = json_kind(root);
    if (k < 0)
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: not a Switch Transformers or NLLB-MoE configuration", path);
    memset(c, 0, sizeof *c);
    c->kind = g_kinds[k].kind;
    snprintf(c->family, sizeof c->family, "%s", g_kinds[k].type);
    snprintf(c->hf_class, sizeof c->hf_class, "%s", g_kinds[k].cls);
    int rc;
    if ((rc = key_int(root, "vocab_size", NULL, &c->vocab, path)) ||
        (rc = key_int(root, "d_model", NULL, &c->d_model, path)) ||
        (rc = key_int(root, "num_experts", NULL, &c->n_experts, path)))
        return rc;
    if ((rc = c->kind == MT_S2S_NLLB_MOE ? parse_nllb(c, root, path) : parse_switch(c, root, path))) return rc;
    if ((rc = key_bool(root, "tie_word_embeddings", 1, &c->tie_embeddings, path))) return rc;
    c->lm_scale = c->kind == MT_S2S_SWITCH && c->tie_embeddings ? (float)pow((double)c->d_model, -0.5) : 1.0f;
    int rb = 0;
    if ((rc = key_bool(root, "router_bias", 0, &rb, path))) return rc;
    if (rb) return mt_seterr(MT_ERR_UNSUPPORTED, "%s: router_bias true is not supported", path);
    if ((rc = key_only(root, "router_dtype", "float32", path))) return rc;
    c->act = MT_S2S_ACT_RELU;
    if ((rc = parse_quant(c, root, path))) return rc;
    /* ranges */
    struct {
        const char *key;
        int v, lo, hi;
    } chk[] = {
        {"vocab_size", c->vocab, 1, 1 << 24},
        {"d_model", c->d_model, 1, 1 << 16},
        {"d_kv", c->d_kv[0], 1, 1 << 12},
        {"d_kv (decoder)", c->d_kv[1], 1, 1 << 12},
        {"d_ff", c->d_ff[0], 1, 1 << 20},
        {"d_ff (decoder)", c->d_ff[1], 1, 1 << 20},
        {"num_heads", c->n_heads[0], 1, 1 << 10},
        {"num_heads (decoder)", c->n_heads[1], 1, 1 << 10},
        {"encoder layers", c->n_enc_layers, 1, MT_MAX_LAYERS},
        {"decoder layers", c->n_dec_layers, 1, MT_MAX_LAYERS},
        {"num_experts", c->n_experts, 2, 65536},
        {"expert_capacity", c->expert_capacity, 0, 1 << 30},
        {"relative_attention_num_buckets", c->rel_pos ? c->num_buckets : 2, 2, 1 << 12},
        {"relative_attention_max_distance", c->rel_pos ? c->max_distance : 1, 1, 1 << 24},
        {"encoder sparse step", c->enc_sparse_step, 0, 1 << 20},
        {"decoder sparse step", c->dec_sparse_step, 0, 1 << 20},
    };
    for (size_t i = 0; i < sizeof chk / sizeof chk[0]; i++)
        if (chk[i].v < chk[i].lo || chk[i].v > chk[i].hi)
            return mt_seterr(MT_ERR_FORMAT, "%s: key \"%s\" is %d (expected %d .. %d)", path, chk[i].key, chk[i].v,
                             chk[i].lo, chk[i].hi);
    for (int s = 0; s < 2; s++)
        if ((int64_t)c->n_heads[s] * c->d_kv[s] > (1 << 20))
            return mt_seterr(MT_ERR_FORMAT, "%s: attention heads · head size is too large", path);
    const int ids[3] = {c->pad_id, c->eos_id, c->decoder_start_id};
    static const char *const idk[3] = {"pad_token_id", "eos_token_id", "decoder_start_token_id"};
    for (int i = 0; i < 3; i++)
        if (ids[i] < -1 || ids[i] >= c->vocab || (i == 2 && ids[i] < 0))
            return mt_seterr(MT_ERR_FORMAT, "%s: key \"%s\" is %d, outside the vocabulary of %d", path, idk[i],
                             ids[i], c->vocab);
    return MT_OK;
}

int mt_s2s_config_parse(mt_s2s_config *c, const char *text, size_t len, const char *path) {
    if (!path) path = "config.json";
    if (!text) return mt_seterr(MT_ERR_ARG, "%s: no config text", path);
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return mt_seterr(MT_ERR_FORMAT, "%s: invalid JSON at line %d column %d: %s", path, jerr.line, jerr.column,
                         jerr.text);
    int rc = parse(c, root, path);
    json_decref(root);
    return rc;
}

int mt_s2s_layer_sparse(const mt_s2s_config *c, int decoder, int layer) {
    const int step = decoder ? c->dec_sparse_step : c->enc_sparse_step;
    if (step <= 0) return 0;
    if (c->kind == MT_S2S_NLLB_MOE) return (layer + 1) % step == 0;
    return layer % step == 1 || step == 1;
}

/* ---- weights -------------------------------------------------------------- */
typedef struct {
    const mt_ckpt *ck;
    const char *path;
    const mt_s2s_config *c;
    mt_s2s_weights *w;      /* owns matrices unpacked at load */
} wctx;

/* mat = the tensor (rows, cols) (rows 0: a vector of cols), any storage
 * type the runtime runs, whole rows. */
static int get(const wctx *x, const char *name, int64_t rows, int64_t cols, mt_mat *m) {
    const mt_tensor *t = mt_ckpt_find(x->ck, name);
    const int64_t wd[2] = {rows ? rows : cols, cols};
    char want[64], got[96];
    mt_arch_shape_str(want, sizeof want, rows ? 2 : 1, wd);
    if (!t) return mt_seterr(MT_ERR_NOT_FOUND, "%s: tensor %s is missing (expected shape %s)", x->path, name, want);
    int ok = rows ? (t->n_dims == 2 && t->shape[0] == rows && t->shape[1] == cols)
                  : (t->n_dims == 1 && t->shape[0] == cols);
    if (!ok) {
        mt_arch_shape_str(got, sizeof got, t->n_dims, t->shape);
        return mt_seterr(MT_ERR_FORMAT, "%s: tensor %s has shape %s, expected %s", x->path, name, got, want);
    }
    const mt_dtype_info *di = mt_dtype_get(t->dtype);
    if (!di || !mt_dtype_is_plain_float(t->dtype))
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: tensor %s has storage type %s; encoder-decoder models run f32, "
                         "f16 and bf16 weights", x->path, name, di ? di->name : "?");
    const uint64_t rb = (uint64_t)cols * (uint64_t)di->block_bytes, r = rows ? (uint64_t)rows : 1;
    if (t->nbytes != r * rb)
        return mt_seterr(MT_ERR_FORMAT, "%s: tensor %s holds %llu bytes, expected %llu", x->path, name,
                         (unsigned long long)t->nbytes, (unsigned long long)(r * rb));
    memset(m, 0, sizeof *m);
    m->dtype = t->dtype;
    m->rows = (int64_t)r;
    m->cols = cols;
    m->data = t->data;
    m->row_stride = rb;
    return MT_OK;
}

/* A typed part <base><suffix> of an AutoGPTQ matrix with exactly dims d. */
static int gptq_part(const wctx *x, const char *base, const char *suffix, mt_dtype dt, int nd, const int64_t *d,
                     const mt_tensor **out) {
    char n[320];
    snprintf(n, sizeof n, "%s%s", base, suffix);
    const mt_tensor *t = mt_ckpt_find(x->ck, n);
    int ok = t && t->dtype == dt && t->n_dims == nd;
    for (int i = 0; ok && i < nd; i++) ok = t->shape[i] == d[i];
    if (!ok) {
        char want[64];
        mt_arch_shape_str(want, sizeof want, nd, d);
        return mt_seterr(MT_ERR_FORMAT, "%s: tensor %s is missing or not %s %s", x->path, n, mt_dtype_name(dt), want);
    }
    *out = t;
    return MT_OK;
}

/* Expert matrix `name` (…​.weight) of a quantized checkpoint: a qmoe blob
 * <name>.qmoe (parsed by the runtime against the dictionary, shape checked
 * here), or the AutoGPTQ layout <base>.qweight/.qzeros/.scales/.g_idx as
 * moetool writes it (8 or 4 bits, groups of 32 in order, symmetric),
 * unpacked to q8_0 / q4_0 blocks that the runtime runs. */
static int get_qexpert(const wctx *x, const char *name, int64_t rows, int64_t cols, mt_mat *m) {
    char n[320];
    memset(m, 0, sizeof *m);
    if (x->c->quant == MT_QFMT_QMOE) {
        snprintf(n, sizeof n, "%s.qmoe", name);
        return mt_qmoe_blob_mat(x->ck, x->path, n, rows, cols, m);
    }
    const size_t len = strlen(name);
    if (len < 8 || len >= 256 || strcmp(name + len - 7, ".weight") != 0)
        return mt_seterr(MT_ERR_INTERNAL, "%s: %s is not a .weight tensor", x->path, name);
    char base[256];
    snprintf(base, sizeof base, "%.*s", (int)(len - 7), name);
    snprintf(n, sizeof n, "%s.qweight", base);
    const mt_tensor *qw = mt_ckpt_find(x->ck, n), *qz, *sc, *gi;
    if (!qw) return mt_seterr(MT_ERR_NOT_FOUND, "%s: tensor %s (or %s) is missing", x->path, name, n);
    const int bits = qw->n_dims == 2 && cols > 0 ? (int)(qw->shape[0] * 32 / cols) : 0;
    if ((bits != 4 && bits != 8) || cols % 32 || rows % (32 / bits))
        return mt_seterr(MT_ERR_FORMAT, "%s: tensor %s is not 8- or 4-bit codes of a (%lld, %lld) matrix in groups of "
                         "32", x->path, n, (long long)rows, (long long)cols);
    const int per = 32 / bits;
    const int64_t G = cols / 32;
    int rc;
    if ((rc = gptq_part(x, base, ".qweight", MT_DT_I32, 2, (const int64_t[]){cols / per, rows}, &qw)) ||
        (rc = gptq_part(x, base, ".scales", MT_DT_F16, 2, (const int64_t[]){G, rows}, &sc)) ||
        (rc = gptq_part(x, base, ".qzeros", MT_DT_I32, 2, (const int64_t[]){G, rows / per}, &qz)) ||
        (rc = gptq_part(x, base, ".g_idx", MT_DT_I32, 1, (const int64_t[]){cols}, &gi)))
        return rc;
    for (int64_t i = 0; i < cols; i++) {
        int32_t gv;
        memcpy(&gv, (const uint8_t *)gi->data + 4 * i, 4);
        if (gv != i / 32)
            return mt_seterr(MT_ERR_FORMAT, "%s: %s.g_idx[%lld] is not column / 32", x->path, base, (long long)i);
    }
    const mt_gptq_view v = {bits, rows, cols, G, x->c->quant_zero_offset, qw->data, qz->data, sc->data, NULL};
    if (!mt_gptq_is_block(&v))
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: %s: zero points are not the symmetric ones of q%d_0 blocks",
                         x->path, base, bits == 8 ? 8 : 4);
    const mt_dtype qt = bits == 8 ? MT_DT_Q8_0 : MT_DT_Q4_0;
    uint64_t rb;
    if ((rc = mt_dtype_nbytes(qt, (uint64_t)cols, &rb))) return rc;
    void **o = realloc(x->w->owned, (x->w->n_owned + 1) * sizeof *o);
    if (o) x->w->owned = o;
    uint8_t *buf = o ? malloc((size_t)(rb * (uint64_t)rows)) : NULL;
    if (!buf) return mt_seterr(MT_ERR_NOMEM, "%s: out of memory unpacking %s", x->path, base);
    x->w->owned[x->w->n_owned++] = buf;
    for (int64_t r = 0; r < rows; r++) mt_gptq_row_to_blocks(&v, r, buf + (uint64_t)r * rb);
    m->dtype = qt;
    m->rows = rows;
    m->cols = cols;
    m->data = buf;
    m->row_stride = rb;
    return MT_OK;
}

/* role (and its bias when the family has biases and `with_bias`). */
static int get_role2(const wctx *x, mt_s2s_tensor role, int dec, int l, int e, int64_t rows, int64_t cols, mt_mat *m,
                     mt_mat *b) {
    char name[192];
    if (name_of(x->c, name, sizeof name, role, dec, l, e, 0, 0) < 0)
        return mt_seterr(MT_ERR_INTERNAL, "%s: no name for a tensor of layer %d", x->path, l);
    const int expert = role == MT_S2S_T_EXP_WI || role == MT_S2S_T_EXP_WO;
    int rc = expert && x->c->quant != MT_QFMT_NONE && !mt_ckpt_find(x->ck, name)
                 ? get_qexpert(x, name, rows, cols, m)
                 : get(x, name, rows, cols, m);
    if (rc || !b) return rc;
    const int is_norm = role == MT_S2S_T_SA_NORM || role == MT_S2S_T_CA_NORM || role == MT_S2S_T_FF_NORM ||
                        role == MT_S2S_T_FINAL_NORM;
    if (!(is_norm ? x->c->layer_norm_bias : x->c->linear_bias)) return MT_OK;
    if (name_of(x->c, name, sizeof name, role, dec, l, e, 0, 1) < 0)
        return mt_seterr(MT_ERR_INTERNAL, "%s: no bias name for a tensor of layer %d", x->path, l);
    return get(x, name, 0, rows ? rows : cols, b);
}
#define get_role(x, role, dec, l, e, rows, cols, m) get_role2(x, role, dec, l, e, rows, cols, m, NULL)

static int map_stack(const wctx *x, const mt_s2s_config *c, int dec, mt_s2s_layer **out) {
    const int L = dec ? c->n_dec_layers : c->n_enc_layers;
    const int64_t D = c->d_model, I = (int64_t)c->n_heads[dec] * c->d_kv[dec], F = c->d_ff[dec];
    mt_s2s_layer *ls = calloc((size_t)L, sizeof *ls);
    if (!ls) return mt_seterr(MT_ERR_NOMEM, "%s: out of memory", x->path);
    *out = ls;
    int rc = MT_OK;
    for (int l = 0; l < L && rc == MT_OK; l++) {
        mt_s2s_layer *y = &ls[l];
        if ((rc = get_role2(x, MT_S2S_T_SA_NORM, dec, l, 0, 0, D, &y->ln, &y->ln_b)) ||
            (rc = get_role2(x, MT_S2S_T_SA_Q, dec, l, 0, I, D, &y->q, &y->q_b)) ||
            (rc = get_role2(x, MT_S2S_T_SA_K, dec, l, 0, I, D, &y->k, &y->k_b)) ||
            (rc = get_role2(x, MT_S2S_T_SA_V, dec, l, 0, I, D, &y->v, &y->v_b)) ||
            (rc = get_role2(x, MT_S2S_T_SA_O, dec, l, 0, D, I, &y->o, &y->o_b)))
            break;
        if (dec && ((rc = get_role2(x, MT_S2S_T_CA_NORM, dec, l, 0, 0, D, &y->x_ln, &y->x_ln_b)) ||
                    (rc = get_role2(x, MT_S2S_T_CA_Q, dec, l, 0, I, D, &y->xq, &y->xq_b)) ||
                    (rc = get_role2(x, MT_S2S_T_CA_K, dec, l, 0, I, D, &y->xk, &y->xk_b)) ||
                    (rc = get_role2(x, MT_S2S_T_CA_V, dec, l, 0, I, D, &y->xv, &y->xv_b)) ||
                    (rc = get_role2(x, MT_S2S_T_CA_O, dec, l, 0, D, I, &y->xo, &y->xo_b))))
            break;
        if ((rc = get_role2(x, MT_S2S_T_FF_NORM, dec, l, 0, 0, D, &y->ff_ln, &y->ff_ln_b))) break;
        const int E = mt_s2s_layer_sparse(c, dec, l) ? c->n_experts : 0, n = E ? E : 1;
        y->n_experts = E;
        y->wi = calloc((size_t)n, sizeof *y->wi);
        y->wo = calloc((size_t)n, sizeof *y->wo);
        y->wi_b = calloc((size_t)n, sizeof *y->wi_b);
        y->wo_b = calloc((size_t)n, sizeof *y->wo_b);
        if (!y->wi || !y->wo || !y->wi_b || !y->wo_b) {
            rc = mt_seterr(MT_ERR_NOMEM, "%s: out of memory", x->path);
            break;
        }
        if (!E) {
            if ((rc = get_role2(x, MT_S2S_T_FF_WI, dec, l, 0, F, D, &y->wi[0], &y->wi_b[0])) ||
                (rc = get_role2(x, MT_S2S_T_FF_WO, dec, l, 0, D, F, &y->wo[0], &y->wo_b[0])))
                break;
            continue;
        }
        if ((rc = get_role(x, MT_S2S_T_ROUTER, dec, l, 0, E, D, &y->router))) break;
        for (int e = 0; e < E && rc == MT_OK; e++)
            if ((rc = get_role2(x, MT_S2S_T_EXP_WI, dec, l, e, F, D, &y->wi[e], &y->wi_b[e])) == MT_OK)
                rc = get_role2(x, MT_S2S_T_EXP_WO, dec, l, e, D, F, &y->wo[e], &y->wo_b[e]);
    }
    return rc;
}

int mt_s2s_weights_init(mt_s2s_weights *w, const mt_ckpt *ck) {
    memset(w, 0, sizeof *w);
    wctx x = {ck, mt_ckpt_path(ck), &w->cfg, w};
    size_t len;
    const char *text = mt_ckpt_config_text(ck, &len);
    if (!text) return mt_seterr(MT_ERR_ARG, "%s: checkpoint not opened for an encoder-decoder model", x.path);
    char shown[4200];
    snprintf(shown, sizeof shown, "%s: config.json", x.path);
    int rc = mt_s2s_config_parse(&w->cfg, text, len, shown);
    if (rc) return rc;
    const mt_s2s_config *c = &w->cfg;
    const int64_t V = c->vocab, D = c->d_model;
    /* the shared embedding under whichever name the file kept */
    char name[192];
    const char *found = NULL;
    for (int alt = 0; !found && name_of(c, name, sizeof name, MT_S2S_T_EMBD, 0, 0, 0, alt, 0) >= 0; alt++)
        if (mt_ckpt_find(ck, name)) found = name;
    if (!found) name_of(c, name, sizeof name, MT_S2S_T_EMBD, 0, 0, 0, 0, 0);
    if ((rc = get(&x, name, V, D, &w->embd))) goto fail;
    if (c->tie_embeddings) w->lm_head = w->embd;
    else if ((rc = get_role(&x, MT_S2S_T_LM_HEAD, 0, 0, 0, V, D, &w->lm_head))) goto fail;
    if (c->rel_pos && ((rc = get_role(&x, MT_S2S_T_REL_BIAS, 0, 0, 0, c->num_buckets, c->n_heads[0], &w->enc_rel)) ||
                       (rc = get_role(&x, MT_S2S_T_REL_BIAS, 1, 0, 0, c->num_buckets, c->n_heads[1], &w->dec_rel))))
        goto fail;
    if ((rc = get_role2(&x, MT_S2S_T_FINAL_NORM, 0, 0, 0, 0, D, &w->enc_norm, &w->enc_norm_b)) ||
        (rc = get_role2(&x, MT_S2S_T_FINAL_NORM, 1, 0, 0, 0, D, &w->dec_norm, &w->dec_norm_b)) ||
        (rc = map_stack(&x, c, 0, &w->enc)) || (rc = map_stack(&x, c, 1, &w->dec)))
        goto fail;
    return MT_OK;
fail:
    mt_s2s_weights_free(w);
    return rc;
}

static void free_stack(mt_s2s_layer *ls, int L) {
    for (int l = 0; ls && l < L; l++) {
        free(ls[l].wi);
        free(ls[l].wo);
        free(ls[l].wi_b);
        free(ls[l].wo_b);
    }
    free(ls);
}

void mt_s2s_weights_free(mt_s2s_weights *w) {
    if (!w) return;
    free_stack(w->enc, w->cfg.n_enc_layers);
    free_stack(w->dec, w->cfg.n_dec_layers);
    w->enc = w->dec = NULL;
    for (size_t i = 0; i < w->n_owned; i++) free(w->owned[i]);
    free(w->owned);
    w->owned = NULL;
    w->n_owned = 0;
}

int mt_s2s_expert_name(const mt_s2s_config *c, char *buf, size_t n, int decoder, int layer, int expert, int wo) {
    if (!mt_s2s_layer_sparse(c, decoder, layer) || expert < 0 || expert >= c->n_experts) return -1;
    return name_of(c, buf, n, wo ? MT_S2S_T_EXP_WO : MT_S2S_T_EXP_WI, decoder, layer, expert, 0, 0);
}

int mt_s2s_expert_storage(const mt_ckpt *ck, const mt_s2s_weights *w, uint64_t *bytes, uint64_t *n_weights) {
    static const char *const sfx[] = {".weight", ".weight.qmoe", ".qweight", ".qzeros", ".scales", ".g_idx"};
    const mt_s2s_config *c = &w->cfg;
    *bytes = *n_weights = 0;
    for (int s = 0; s < 2; s++)
        for (int l = 0; l < (s ? c->n_dec_layers : c->n_enc_layers); l++) {
            const mt_s2s_layer *y = s ? &w->dec[l] : &w->enc[l];
            for (int e = 0; e < y->n_experts; e++)
                for (int k = 0; k < 2; k++) {
                    char nm[256], t[280];
                    const int len = mt_s2s_expert_name(c, nm, sizeof nm, s, l, e, k);
                    if (len < 8) return mt_seterr(MT_ERR_INTERNAL, "no name for an expert matrix");
                    nm[len - 7] = 0; /* strip .weight */
                    for (size_t i = 0; i < sizeof sfx / sizeof sfx[0]; i++) {
                        snprintf(t, sizeof t, "%s%s", nm, sfx[i]);
                        const mt_tensor *tt = mt_ckpt_find(ck, t);
                        if (tt) *bytes += tt->nbytes;
                    }
                    const mt_mat *W = k ? &y->wo[e] : &y->wi[e];
                    *n_weights += (uint64_t)W->rows * (uint64_t)W->cols;
                }
        }
    const mt_tensor *d = mt_ckpt_find(ck, "qmoe.dictionary");
    if (d) *bytes += d->nbytes;
    return MT_OK;
}

/* ---- convert to a Hugging Face directory ----------------------------------- */
/* The embedding is saved once (shared.weight, as save_pretrained does with
 * safetensors); the aliases a pytorch_model.bin repeats it under, and a tied
 * lm_head, are left out. */
int mt_s2s_is_alias(const mt_s2s_weights *w, const char *name) {
    char nm[192];
    for (int alt = 1; name_of(&w->cfg, nm, sizeof nm, MT_S2S_T_EMBD, 0, 0, 0, alt, 0) >= 0; alt++)
        if (!strcmp(nm, name)) return 1;
    return w->cfg.tie_embeddings && name_of(&w->cfg, nm, sizeof nm, MT_S2S_T_LM_HEAD, 0, 0, 0, 0, 0) >= 0 &&
           !strcmp(nm, name);
}

int mt_s2s_convert_hf(const char *in_path, const char *out_path, const mt_convert_opts *o) {
    int rc = mt_output_check(out_path, MT_OUTPUT_HF_DIR, o->force, in_path, NULL, 0);
    if (rc) return rc;
    mt_ckpt *ck = NULL;
    mt_s2s_weights w;
    memset(&w, 0, sizeof w);
    mt_hf_writer *hw = NULL;
    mt_out dir = {0};
    int have_dir = 0;
    float *f32 = NULL;
    void *row = NULL;
    json_t *cfg = NULL;
    char *text = NULL;
    const mt_tensor **list = NULL;
    if ((rc = mt_ckpt_open_raw(&ck, in_path))) goto done;
    if (mt_ckpt_is_archive(ck)) {
        rc = mt_seterr(MT_ERR_UNSUPPORTED, "%s: an archive is read in place by inspect, eval and generate; unpack it "
                       "to convert it", in_path);
        goto done;
    }
    if ((rc = mt_s2s_weights_init(&w, ck))) goto done; /* every tensor the model needs, checked */
    const size_t n = mt_ckpt_count(ck);
    size_t k = 0;
    if (!(list = malloc((n ? n : 1) * sizeof *list))) {
        rc = mt_seterr(MT_ERR_NOMEM, "out of memory");
        goto done;
    }
    int64_t max_cols = 1;
    for (size_t i = 0; i < n; i++) {
        const mt_tensor *t = mt_ckpt_get(ck, i);
        if (mt_s2s_is_alias(&w, t->name)) continue;
        if (!mt_dtype_is_plain_float(t->dtype)) {
            rc = mt_seterr(MT_ERR_UNSUPPORTED, "%s: tensor %s has storage type %s; convert copies f32, f16 and bf16 "
                           "tensors of encoder-decoder models", in_path, t->name, mt_dtype_name(t->dtype));
            goto done;
        }
        const int64_t cols = t->n_dims ? t->shape[t->n_dims - 1] : 1;
        if (cols > max_cols) max_cols = cols;
        list[k++] = t;
    }
    const int target = o->dtype;
    if ((rc = mt_out_open_dir(&dir, out_path))) goto done;
    have_dir = 1;
    if ((rc = mt_hf_writer_open(&hw, dir.tmp_path, o->shard_bytes))) goto done;
    for (size_t i = 0; i < k && !rc; i++)
        rc = mt_hf_writer_add(hw, list[i]->name, target >= 0 ? (mt_dtype)target : list[i]->dtype, list[i]->n_dims,
                              list[i]->shape);
    f32 = malloc((size_t)max_cols * sizeof *f32);
    row = malloc((size_t)max_cols * 4);
    if (!rc && (!f32 || !row)) rc = mt_seterr(MT_ERR_NOMEM, "out of memory");
    uint64_t done_b = 0, total_b = 0;
    for (size_t i = 0; i < k; i++) total_b += list[i]->nbytes;
    for (size_t i = 0; i < k && !rc; i++) {
        const mt_tensor *t = list[i];
        if (target < 0 || (mt_dtype)target == t->dtype) {
            rc = mt_hf_writer_write(hw, t->data, (size_t)t->nbytes);
        } else {
            const int64_t cols = t->n_dims ? t->shape[t->n_dims - 1] : 1, rows = cols ? mt_tensor_numel(t) / cols : 0;
            const size_t in_rb = (size_t)t->nbytes / (size_t)(rows ? rows : 1);
            const size_t out_rb = (size_t)cols * (size_t)mt_dtype_get((mt_dtype)target)->block_bytes;
            for (int64_t r = 0; r < rows && !rc; r++) {
                if ((rc = mt_row_to_f32(t->dtype, (const char *)t->data + (size_t)r * in_rb, f32, cols))) break;
                if ((rc = mt_row_from_f32((mt_dtype)target, f32, row, cols))) break;
                rc = mt_hf_writer_write(hw, row, out_rb);
            }
        }
        done_b += t->nbytes;
        if (o->progress) o->progress(o->progress_user, "tensors", done_b, total_b);
    }
    if (!rc) rc = mt_hf_writer_finish(hw);
    if (rc) goto done;
    /* config.json as the source wrote it, torch_dtype updated */
    size_t clen;
    const char *ctext = mt_ckpt_config_text(ck, &clen);
    if (!(cfg = json_loadb(ctext, clen, JSON_REJECT_DUPLICATES, NULL))) {
        rc = mt_seterr(MT_ERR_FORMAT, "%s: config.json is not valid JSON", in_path);
        goto done;
    }
    if (target >= 0)
        json_object_set_new(cfg, "torch_dtype", json_string(mt_dtype_config_torch_name((mt_dtype)target, "float32")));
    if (!(text = json_dumps(cfg, JSON_INDENT(2) | JSON_PRESERVE_ORDER))) {
        rc = mt_seterr(MT_ERR_NOMEM, "out of memory");
        goto done;
    }
    if ((rc = mt_write_small_file(dir.tmp_path, "config.json", text, strlen(text)))) goto done;
    if ((rc = mt_copy_tokenizer(ck, dir.tmp_path))) goto done;
    rc = mt_out_commit(&dir);
done:
    mt_hf_writer_free(hw);
    if (have_dir) mt_out_abort(&dir);
    json_decref(cfg);
    free(text);
    free(f32);
    free(row);
    free(list);
    mt_s2s_weights_free(&w);
    mt_ckpt_free(ck);
    return rc;
}

/* ---- input/target pairs ---------------------------------------------------- */
/* The ids of a text as the T5 tokenizer gives them: the encoding, then EOS
 * (transformers' tokenizer(text).input_ids). */
int mt_s2s_encode_text(const mt_tokenizer *tok, const char *text, size_t len, int32_t **out, int *n) {
    size_t cap = len + 2, got = 0;
    int32_t *p = malloc(cap * sizeof *p);
    if (!p) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    int rc = mt_tok_encode(tok, text, len, p, cap - 1, &got);
    if (rc == MT_OK && got > cap - 1) { /* a charsmap can expand the text */
        int32_t *q = realloc(p, (got + 1) * sizeof *p);
        if (!q) rc = mt_seterr(MT_ERR_NOMEM, "out of memory");
        else {
            p = q;
            rc = mt_tok_encode(tok, text, len, p, got, &got);
        }
    }
    if (rc == MT_OK && got > (1u << 20)) rc = mt_seterr(MT_ERR_ARG, "text of %zu tokens is too long", got);
    if (rc) {
        free(p);
        return rc;
    }
    if (mt_tok_eos(tok) >= 0) p[got++] = mt_tok_eos(tok);
    *out = p;
    *n = (int)got;
    return MT_OK;
}

int mt_s2s_encode_text_lang(const mt_tokenizer *tok, const char *text, size_t len, const char *lang, int32_t **out,
                            int *n) {
    const int n_lang = mt_tok_lang_codes(tok);
    if (!n_lang && !lang) return mt_s2s_encode_text(tok, text, len, out, n);
    if (!n_lang)
        return mt_seterr(MT_ERR_ARG, "language code '%s' given, but the tokenizer has no language codes", lang);
    if (!lang)
        return mt_seterr(MT_ERR_ARG, "the tokenizer (NLLB) needs a language code for a text: --src-lang / --tgt-lang "
                         "(or \"src_lang\" / \"tgt_lang\" in a pairs file)");
    const int code = mt_tok_lang_id(tok, lang);
    if (code < 0) return mt_seterr(MT_ERR_ARG, "'%s' is not one of the tokenizer's %d language codes", lang, n_lang);
    int32_t *body = NULL;
    int k = 0;
    int rc = mt_s2s_encode_text(tok, text, len, &body, &k); /* encoding + </s> */
    if (rc) return rc;
    int32_t *p = realloc(body, ((size_t)k + 1) * sizeof *p);
    if (!p) {
        free(body);
        return mt_seterr(MT_ERR_NOMEM, "out of memory");
    }
    memmove(p + 1, p, (size_t)k * sizeof *p);
    p[0] = code;
    *out = p;
    *n = k + 1;
    return MT_OK;
}

/* ids of a JSON array of integers, or of a text when there is a tokenizer;
 * names file, line and key in errors. */
static int json_ids(const json_t *a, const mt_tokenizer *tok, const char *lang, const char *path, int line,
                    const char *key, int32_t **out, int *n) {
    if (json_is_string(a) && !tok)
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s:%d: \"%s\" is text, and the model has no tokenizer (spiece.model or "
                         "tokenizer.json) that moetool reads: give token ids", path, line, key);
    if (json_is_string(a)) {
        if (json_string_length(a) == 0)
            return mt_seterr(MT_ERR_FORMAT, "%s:%d: \"%s\" is an empty text", path, line, key);
        int rc = mt_s2s_encode_text_lang(tok, json_string_value(a), json_string_length(a), lang, out, n);
        if (rc) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", mt_last_error());
            return mt_seterr(rc, "%s:%d: \"%s\": %s", path, line, key, msg);
        }
        return MT_OK;
    }
    if (!json_is_array(a) || json_array_size(a) == 0 || json_array_size(a) > (1u << 20))
        return mt_seterr(MT_ERR_FORMAT, "%s:%d: \"%s\" is not a non-empty list of token ids", path, line, key);
    const size_t k = json_array_size(a);
    int32_t *p = malloc(k * sizeof *p);
    if (!p) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < k; i++) {
        const json_t *v = json_array_get(a, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX) {
            free(p);
            return mt_seterr(MT_ERR_FORMAT, "%s:%d: \"%s\"[%zu] is not a token id", path, line, key, i);
        }
        p[i] = (int32_t)json_integer_value(v);
    }
    *out = p;
    *n = (int)k;
    return MT_OK;
}

void mt_s2s_pairs_free(mt_s2s_pair *p, size_t n) {
    for (size_t i = 0; p && i < n; i++) {
        free(p[i].input);
        free(p[i].target);
    }
    free(p);
}

int mt_s2s_pairs_load(const char *path, const mt_tokenizer *tok, mt_s2s_pair **out, size_t *n_out) {
    return mt_s2s_pairs_load_lang(path, tok, NULL, NULL, out, n_out);
}

/* A line's "src_lang" / "tgt_lang" (a string), else the default. */
static const char *line_lang(const json_t *o, const char *key, const char *dflt) {
    const json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : dflt;
}

int mt_s2s_pairs_load_lang(const char *path, const mt_tokenizer *tok, const char *src_lang, const char *tgt_lang,
                           mt_s2s_pair **out, size_t *n_out) {
    *out = NULL;
    *n_out = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return mt_seterr(MT_ERR_IO, "%s: cannot open the pairs file", path);
    mt_s2s_pair *v = NULL;
    size_t n = 0, cap = 0, lcap = 0;
    char *line = NULL;
    int rc = MT_OK, lineno = 0;
    ssize_t got;
    while ((got = getline(&line, &lcap, f)) >= 0) {
        lineno++;
        size_t k = 0;
        while (k < (size_t)got && (line[k] == ' ' || line[k] == '\t' || line[k] == '\r' || line[k] == '\n')) k++;
        if (k == (size_t)got) continue;
        json_t *o = json_loadb(line, (size_t)got, 0, NULL);
        if (!o || !json_is_object(o)) {
            json_decref(o);
            rc = mt_seterr(MT_ERR_FORMAT, "%s:%d: not a JSON object {\"input\": [ids] or text, \"target\": [ids] or text}", path,
                           lineno);
            break;
        }
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            mt_s2s_pair *nv = realloc(v, cap * sizeof *nv);
            if (!nv) {
                json_decref(o);
                rc = mt_seterr(MT_ERR_NOMEM, "out of memory");
                break;
            }
            v = nv;
        }
        mt_s2s_pair *p = &v[n];
        memset(p, 0, sizeof *p);
        p->line = lineno;
        rc = json_ids(json_object_get(o, "input"), tok, line_lang(o, "src_lang", src_lang), path, lineno, "input",
                      &p->input, &p->n_in);
        if (!rc)
            rc = json_ids(json_object_get(o, "target"), tok, line_lang(o, "tgt_lang", tgt_lang), path, lineno, "target",
                          &p->target, &p->n_tgt);
        json_decref(o);
        n++;
        if (rc) break;
    }
    free(line);
    if (!rc && ferror(f)) rc = mt_seterr(MT_ERR_IO, "%s: read error", path);
    fclose(f);
    if (!rc && !n) rc = mt_seterr(MT_ERR_ARG, "%s: no input/target pairs", path);
    if (rc) {
        mt_s2s_pairs_free(v, n);
        return rc;
    }
    *out = v;
    *n_out = n;
    return MT_OK;
}

int mt_s2s_pairs_load_tsv(const char *path, const mt_tokenizer *tok, const char *src_lang, const char *tgt_lang,
                          mt_s2s_pair **out, size_t *n_out) {
    *out = NULL;
    *n_out = 0;
    if (!tok) return mt_seterr(MT_ERR_UNSUPPORTED, "%s: a text needs the model's tokenizer, and it has none", path);
    FILE *f = fopen(path, "rb");
    if (!f) return mt_seterr(MT_ERR_IO, "%s: cannot open the text", path);
    mt_s2s_pair *v = NULL;
    size_t n = 0, cap = 0, lcap = 0;
    char *line = NULL;
    int rc = MT_OK, lineno = 0;
    ssize_t got;
    while ((got = getline(&line, &lcap, f)) >= 0) {
        lineno++;
        while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r')) got--;
        if (got == 0) continue;
        const char *tab = memchr(line, '\t', (size_t)got);
        if (!tab || tab == line || tab + 1 == line + got) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s:%d: not \"SOURCE<tab>TARGET\" (a translation pair)", path, lineno);
            break;
        }
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            mt_s2s_pair *nv = realloc(v, cap * sizeof *nv);
            if (!nv) {
                rc = mt_seterr(MT_ERR_NOMEM, "out of memory");
                break;
            }
            v = nv;
        }
        mt_s2s_pair *p = &v[n++];
        memset(p, 0, sizeof *p);
        p->line = lineno;
        rc = mt_s2s_encode_text_lang(tok, line, (size_t)(tab - line), src_lang, &p->input, &p->n_in);
        if (!rc)
            rc = mt_s2s_encode_text_lang(tok, tab + 1, (size_t)(line + got - tab - 1), tgt_lang, &p->target, &p->n_tgt);
        if (rc) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", mt_last_error());
            rc = mt_seterr(rc, "%s:%d: %s", path, lineno, msg);
            break;
        }
    }
    free(line);
    if (!rc && ferror(f)) rc = mt_seterr(MT_ERR_IO, "%s: read error", path);
    fclose(f);
    if (!rc && !n) rc = mt_seterr(MT_ERR_ARG, "%s: no translation pairs", path);
    if (rc) {
        mt_s2s_pairs_free(v, n);
        return rc;
    }
    *out = v;
    *n_out = n;
    return MT_OK;
}

/* ---- span corruption (T5) --------------------------------------------------- */
/* splitmix64: the generator docs/seq2seq.md specifies, so that another
 * implementation (tests/cli_span_corrupt.sh's python) builds the same
 * pairs for the same seed. */
static uint64_t sc_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* k positive lengths summing to total (1 <= k <= total): k - 1 distinct cuts
 * drawn from 1..total-1 by a partial Fisher-Yates shuffle (position i swaps
 * with i + next() % (total - 1 - i)), sorted. work: total - 1 ints. */
static void sc_segment(int total, int k, uint64_t *rng, int *work, int *len) {
    const int m = total - 1;
    for (int i = 0; i < m; i++) work[i] = i + 1;
    for (int i = 0; i < k - 1; i++) {
        const int j = i + (int)(sc_next(rng) % (uint64_t)(m - i));
        const int t = work[i];
        work[i] = work[j];
        work[j] = t;
    }
    for (int i = 1; i < k - 1; i++) { /* insertion sort of the k - 1 cuts */
        const int v = work[i];
        int j = i - 1;
        while (j >= 0 && work[j] > v) {
            work[j + 1] = work[j];
            j--;
        }
        work[j + 1] = v;
    }
    int prev = 0;
    for (int i = 0; i < k - 1; i++) {
        len[i] = work[i] - prev;
        prev = work[i];
    }
    len[k - 1] = total - prev;
}

int mt_s2s_span_corrupt(const int32_t *toks, size_t n_toks, int window, const int32_t *sentinels, int n_sentinels,
                        int eos, uint64_t seed, size_t max_pairs, mt_s2s_pair **out, size_t *n_out) {
    *out = NULL;
    *n_out = 0;
    if (window < 2 || window > (1 << 20) || n_sentinels < 1 || (!toks && n_toks))
        return mt_seterr(MT_ERR_ARG, "span corruption: window %d (at least 2) or %d sentinels", window, n_sentinels);
    size_t n_win = n_toks / (size_t)window + (n_toks % (size_t)window >= 2);
    if (max_pairs && n_win > max_pairs) n_win = max_pairs;
    if (!n_win) return mt_seterr(MT_ERR_ARG, "span corruption: %zu tokens are fewer than 2", n_toks);
    mt_s2s_pair *v = calloc(n_win, sizeof *v);
    int *work = malloc((size_t)window * sizeof *work), *nl = malloc((size_t)window * sizeof *nl),
        *cl = malloc((size_t)window * sizeof *cl);
    uint64_t rng = seed;
    int rc = MT_OK;
    if (!v || !work || !nl || !cl) {
        rc = mt_seterr(MT_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (size_t w = 0; w < n_win; w++) {
        const int32_t *x = toks + w * (size_t)window;
        const int n = (int)(n_toks - w * (size_t)window < (size_t)window ? n_toks - w * (size_t)window : (size_t)window);
        /* T5's random_spans_noise_mask: round half to even as numpy */
        int n_noise = (int)nearbyint((double)n * 0.15);
        if (n_noise < 1) n_noise = 1;
        if (n_noise > n - 1) n_noise = n - 1;
        int n_spans = (int)nearbyint((double)n_noise / 3.0);
        if (n_spans < 1) n_spans = 1;
        const int n_clean = n - n_noise;
        if (n_spans > n_clean) n_spans = n_clean;
        if (n_spans > n_noise) n_spans = n_noise;
        if (n_spans > n_sentinels) {
            rc = mt_seterr(MT_ERR_ARG, "span corruption: a window of %d tokens needs %d sentinels, the model has %d", n,
                           n_spans, n_sentinels);
            goto done;
        }
        sc_segment(n_noise, n_spans, &rng, work, nl);
        sc_segment(n_clean, n_spans, &rng, work, cl);
        mt_s2s_pair *p = &v[w];
        p->line = (int)w + 1;
        p->input = malloc(((size_t)n_clean + (size_t)n_spans + 1) * sizeof *p->input);
        p->target = malloc(((size_t)n_noise + (size_t)n_spans + 1) * sizeof *p->target);
        if (!p->input || !p->target) {
            rc = mt_seterr(MT_ERR_NOMEM, "out of memory");
            goto done;
        }
        int i = 0;
        for (int sp = 0; sp < n_spans; sp++) {
            for (int k = 0; k < cl[sp]; k++) p->input[p->n_in++] = x[i++];
            p->input[p->n_in++] = sentinels[sp];
            p->target[p->n_tgt++] = sentinels[sp];
            for (int k = 0; k < nl[sp]; k++) p->target[p->n_tgt++] = x[i++];
        }
        p->input[p->n_in++] = eos;
        p->target[p->n_tgt++] = eos;
    }
done:
    free(work);
    free(nl);
    free(cl);
    if (rc) {
        mt_s2s_pairs_free(v, n_win);
        return rc;
    }
    *out = v;
    *n_out = n_win;
    return MT_OK;
}
