/* quant_s2s.c — `moetool quantize` of an encoder-decoder MoE (Switch
 * Transformers, NLLB-MoE; mt_seq2seq.h): QMoE's setting. The experts of
 * both stacks, wi and wo of every expert of every sparse layer, are
 * quantized by RTN or GPTQ onto
 *   q8_0 / q4_0 (--bits 8|4, --type q8_0|q4_0): stored in the AutoGPTQ
 *     layout (which holds these blocks exactly), read back as q8_0/q4_0;
 *   QMoE's per-row ternary grid {lo, 0, hi} (--bits ternary --group row
 *     --codec qmoe): coded with the qmoe dictionary code (one dictionary for
 *     all experts of both stacks) and executed coded.
 * Everything else (embeddings, attention, routers, norms, dense FFNs, the
 * relative-position tables) is copied as stored.
 *
 * Calibration (GPTQ) runs the encoder-decoder forward over input/target
 * pairs (teacher-forced, mt_s2s_score) on the original model and keeps, for
 * every expert, the rows it ran: wi's inputs (the normed hidden states
 * routed to it; tokens the capacity drops never reach the expert and are not
 * kept) and wo's inputs relu(wi x). By default all layers are calibrated in
 * that one pass on the unquantized model; with s2s_layerwise (QMoE's order)
 * the sparse layers are taken one at a time, encoder first: a pass over the
 * pairs keeps only that layer's rows, its experts are quantized, and their
 * dequantized weights replace the originals in the running model
 * (mt_s2s_set_expert_matrix) before the next layer's pass. An expert with
 * fewer than min_expert_tokens rows falls back to RTN.
 *
 * Output: a Hugging Face directory (safetensors) with config.json's
 * quantization_config ("gptq" or "qmoe", docs/seq2seq.md); GGUF has no
 * encoder-decoder architecture in llama.cpp. */
#include "quant_impl.h"

#include "moetool/mt_codec.h"
#include "moetool/mt_qmoe.h"
#include "moetool/mt_seq2seq.h"
#include "moetool/mt_tokenizer.h"
#include "moetool/mt_write.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One expert matrix. */
typedef struct {
    int dec, layer, expert, wo;
    char name[256];         /* <...>.weight                                  */
    const mt_mat *src;
    mt_calib_rows x;        /* calibration rows (GPTQ)                       */
    /* result */
    mt_dtype dtype;         /* Q8_0, Q4_0 or QMOE                            */
    uint8_t *data;          /* blocks (rows, row_bytes)                      */
    uint64_t row_bytes;
    int8_t *syms;           /* ternary: symbols and f16-rounded row values   */
    float *lo, *hi;
    mt_qmoe_mat coded;
    uint8_t *blob;          /* qmoe: serialised                             */
    size_t blob_n;
    float *deq;             /* layerwise: the quantized matrix as f32, run by
                               the model for the layers after this one      */
} xmat;

typedef struct {
    xmat *v;
    size_t n;
    int sparse_base[2];     /* index of a stack's first sparse layer in the report */
    uint64_t cap;           /* rows kept per expert matrix                     */
    int only_dec, only_layer; /* layerwise: the one layer whose rows are kept;
                               only_layer < 0: every layer                    */
    int rc;
} s2s_q;

static xmat *find(s2s_q *q, int dec, int layer, int expert, int wo) {
    for (size_t i = 0; i < q->n; i++) {
        xmat *x = &q->v[i];
        if (x->dec == dec && x->layer == layer && x->expert == expert && x->wo == wo) return x;
    }
    return NULL;
}

static void hook(void *user, int dec, int layer, int expert, const float *x, const float *mid, int n) {
    s2s_q *q = user;
    if (q->rc || (q->only_layer >= 0 && (dec != q->only_dec || layer != q->only_layer))) return;
    for (int k = 0; k < 2; k++) {
        xmat *m = find(q, dec, layer, expert, k);
        if (!m) continue;
        int64_t take = n;
        if ((uint64_t)m->x.n + (uint64_t)take > q->cap) take = (int64_t)(q->cap - (uint64_t)m->x.n);
        if (take > 0 && (q->rc = mt_calib_rows_add(&m->x, k ? mid : x, take))) return;
    }
}

static void xmat_free(xmat *m) {
    mt_calib_rows_free(&m->x);
    free(m->data);
    free(m->syms);
    free(m->lo);
    free(m->hi);
    mt_qmoe_mat_free(&m->coded);
    free(m->blob);
    free(m->deq);
}

/* Options this path runs; one line naming what it does not. */
static int check_opts(const mt_quant_opts *o, mt_grid *g, int64_t cols) {
    if (o->attn_bits || o->attn_type >= 0 || o->embed_bits || o->embed_type >= 0 || o->mix || o->target_bpw > 0 ||
        o->target_bytes > 0 || o->asym || o->tq1)
        return mt_seterr(MT_ERR_ARG, "quantize: encoder-decoder models quantize their experts only (no --attn-*, "
                         "--embed-*, --mix, --target-*, --asym, --ternary-type)");
    if (o->format != MT_FMT_HF)
        return mt_seterr(MT_ERR_ARG, "quantize: encoder-decoder models are written as a Hugging Face directory "
                         "(--format hf); llama.cpp's GGUF has no such architecture");
    if (o->type >= 0) {
        if (o->type != MT_DT_Q8_0 && o->type != MT_DT_Q4_0)
            return mt_seterr(MT_ERR_ARG, "quantize: encoder-decoder experts take --type q8_0 or q4_0 (or --bits "
                             "ternary --group row --codec qmoe), not %s", mt_dtype_name((mt_dtype)o->type));
        return mt_grid_make_type(g, o->type, cols, "expert");
    }
    if (o->bits == MT_QUANT_TERNARY) {
        if (o->group != MT_QUANT_GROUP_ROW || o->codec != MT_QUANT_CODEC_QMOE)
            return mt_seterr(MT_ERR_ARG, "quantize: ternary experts of an encoder-decoder model are stored with "
                             "--group row --codec qmoe (QMoE's setting)");
        return mt_grid_make(g, MT_QUANT_TERNARY, MT_QUANT_GROUP_ROW, cols, "expert");
    }
    if (o->codec == MT_QUANT_CODEC_QMOE)
        return mt_seterr(MT_ERR_ARG, "quantize: --codec qmoe codes QMoE's per-row ternary grid; use --bits ternary "
                         "--group row");
    if ((o->bits != 8 && o->bits != 4) || (o->group != MT_QUANT_GROUP_DEFAULT && o->group != 32))
        return mt_seterr(MT_ERR_ARG, "quantize: encoder-decoder experts take --bits 8 or 4 with groups of 32 "
                         "(q8_0/q4_0) or --bits ternary --group row --codec qmoe");
    return mt_grid_make_type(g, o->bits == 8 ? MT_DT_Q8_0 : MT_DT_Q4_0, cols, "expert");
}

/* GPTQ (or RTN) of one matrix onto grid g. */
static int quant_one(xmat *m, const mt_grid *g0, const mt_quant_opts *o, int use_calib, int measure,
                     double *rel_err, int keep) {
    const int64_t rows = m->src->rows, cols = m->src->cols;
    mt_grid g = *g0;
    if (g.kind == MT_GRID_TERNARY_ROW) g.group = (int)cols;
    const int64_t ng = cols / g.group * mt_grid_nparam(&g);
    float *W = malloc((size_t)(rows * cols) * sizeof *W);
    int8_t *codes = malloc((size_t)(rows * cols));
    float *a = malloc((size_t)(rows * ng) * sizeof *a), *b = malloc((size_t)(rows * ng) * sizeof *b);
    double *H = NULL;
    int rc = MT_OK;
    *rel_err = -1;
    if (!W || !codes || !a || !b) {
        rc = mt_seterr(MT_ERR_NOMEM, "quantize: out of memory");
        goto done;
    }
    for (int64_t r = 0; r < rows && !rc; r++)
        rc = mt_row_to_f32(m->src->dtype, (const uint8_t *)m->src->data + r * m->src->row_stride, W + r * cols, cols);
    if (rc) goto done;
    if (use_calib) {
        if (!(H = malloc((size_t)(cols * cols) * sizeof *H))) {
            rc = mt_seterr(MT_ERR_NOMEM, "quantize: out of memory for a %lld-column Hessian", (long long)cols);
            goto done;
        }
        if ((rc = mt_calib_hessian(&m->x, H))) goto done;
    }
    /* GPTQ widens the ternary levels to range·(min, max) (more zeros, fewer
       coded bits); RTN keeps QMoE's {min, 0, max} (gptq.c) */
    mt_gptq_params gp = {o->damp, o->block > 0 ? o->block : 128, mt_quant_act_order(o),
                         o->ternary_range > 0 ? o->ternary_range : MT_QUANT_TERNARY_RANGE_QMOE,
                         mt_quant_qmoe_scales(o)};
    if ((rc = mt_gptq_quantize(W, rows, cols, H, &g, &gp, codes, a, b))) goto done;
    if (measure && m->x.n > 0) {
        double e, ref;
        if ((rc = mt_calib_output_err(m->src, W, &m->x, &e, &ref))) goto done;
        *rel_err = ref > 0 ? e / ref : 0;
    }
    const int dt = mt_grid_dtype(&g);
    if (dt >= 0) {
        m->dtype = (mt_dtype)dt;
        if ((rc = mt_dtype_nbytes(m->dtype, (uint64_t)cols, &m->row_bytes))) goto done;
        if (!(m->data = malloc((size_t)(m->row_bytes * (uint64_t)rows)))) {
            rc = mt_seterr(MT_ERR_NOMEM, "quantize: out of memory");
            goto done;
        }
        for (int64_t r = 0; r < rows; r++)
            mt_grid_pack_row(&g, codes + r * cols, a + r * ng, cols, m->data + r * m->row_bytes);
    } else { /* ternary row: a = lo, b = hi (f16-rounded, grids.c) */
        m->dtype = MT_DT_QMOE;
        m->syms = codes;
        m->lo = a;
        m->hi = b;
        codes = NULL;
        a = b = NULL;
    }
    if (keep) { /* the quantized weights, dequantized by GPTQ in place */
        m->deq = W;
        W = NULL;
    }
done:
    free(W);
    free(codes);
    free(a);
    free(b);
    free(H);
    return rc;
}

static int write_gptq(mt_hf_writer *hw, const xmat *m) {
    const int bits = mt_dtype_get(m->dtype)->gptq_bits, per = 32 / bits;
    const int64_t R = m->src->rows, C = m->src->cols, NB = C / 32;
    uint32_t *qw = calloc((size_t)(C / per * R), sizeof *qw);
    uint32_t *qz = malloc((size_t)(NB * (R / per) + 1) * sizeof *qz);
    uint16_t *sc = malloc((size_t)(NB * R) * sizeof *sc);
    int32_t *gi = malloc((size_t)C * sizeof *gi);
    int rc = MT_OK;
    if (!qw || !qz || !sc || !gi) rc = mt_seterr(MT_ERR_NOMEM, "quantize: out of memory");
    if (!rc) {
        mt_gptq_pack(bits, m->data, m->row_bytes, R, C, qw, qz, sc, gi);
        if (!(rc = mt_hf_writer_write(hw, qw, (size_t)(C / per * R) * 4)) &&
            !(rc = mt_hf_writer_write(hw, qz, (size_t)(NB * (R / per)) * 4)) &&
            !(rc = mt_hf_writer_write(hw, sc, (size_t)(NB * R) * 2)))
            rc = mt_hf_writer_write(hw, gi, (size_t)C * 4);
    }
    free(qw);
    free(qz);
    free(sc);
    free(gi);
    return rc;
}

/* Declares (pass 0) or writes (pass 1) the tensors of one quantized matrix. */
static int put_mat(mt_hf_writer *hw, const xmat *m, int pass) {
    char n[300];
    if (m->dtype == MT_DT_QMOE) {
        snprintf(n, sizeof n, "%s.qmoe", m->name);
        return pass ? mt_hf_writer_write(hw, m->blob, m->blob_n)
                    : mt_hf_writer_add(hw, n, MT_DT_U8, 1, (const int64_t[]){(int64_t)m->blob_n});
    }
    if (pass) return write_gptq(hw, m);
    const int bits = mt_dtype_get(m->dtype)->gptq_bits, per = 32 / bits;
    const int64_t R = m->src->rows, C = m->src->cols, G = C / 32;
    const size_t bl = strlen(m->name) - 7; /* without .weight */
    static const char *const sfx[4] = {".qweight", ".qzeros", ".scales", ".g_idx"};
    static const mt_dtype dts[4] = {MT_DT_I32, MT_DT_I32, MT_DT_F16, MT_DT_I32};
    const int64_t shp[4][2] = {{C / per, R}, {G, R / per}, {G, R}, {C, 0}};
    int rc = MT_OK;
    for (int k = 0; k < 4 && !rc; k++) {
        snprintf(n, sizeof n, "%.*s%s", (int)bl, m->name, sfx[k]);
        rc = mt_hf_writer_add(hw, n, dts[k], k == 3 ? 1 : 2, shp[k]);
    }
    return rc;
}

/* config.json: the source's, with quantization_config and provenance. */
static int write_config(const mt_ckpt *ck, const char *dir, const mt_quant_opts *o, const mt_qmoe_dict *dict,
                        const uint64_t counts[3], const char *in_path, const char *grid_name, double bits_expert) {
    size_t len;
    const char *text = mt_ckpt_config_text(ck, &len);
    json_t *cfg = text ? json_loadb(text, len, JSON_REJECT_DUPLICATES, NULL) : NULL;
    if (!cfg) return mt_seterr(MT_ERR_FORMAT, "%s: config.json is not valid JSON", in_path);
    json_t *q = json_object();
    json_t *mods = json_array();
    json_array_append_new(mods, json_string("mlp.experts"));
    json_array_append_new(mods, json_string("ffn.experts"));
    if (o->codec == MT_QUANT_CODEC_QMOE) {
        json_object_set_new(q, "quant_method", json_string("qmoe"));
        json_object_set_new(q, "bits", json_string("ternary"));
        json_object_set_new(q, "group_rows", json_integer(MT_QMOE_GROUP_ROWS));
        json_t *d = json_object();
        json_object_set_new(d, "kind", json_string("tunstall"));
        json_object_set_new(d, "max_len", json_integer(dict->max_len));
        json_object_set_new(d, "n_entries", json_integer(dict->n_entries));
        json_t *c = json_array();
        for (int i = 0; i < 3; i++) json_array_append_new(c, json_integer((json_int_t)counts[i]));
        json_object_set_new(d, "counts", c);
        json_object_set_new(q, "dictionary", d);
        if (mt_quant_qmoe_scales(o) == MT_QMOE_SCALES_U8LOG) json_object_set_new(q, "row_scales", json_string("u8log"));
    } else {
        json_object_set_new(q, "quant_method", json_string("gptq"));
        json_object_set_new(q, "bits", json_integer(o->type == MT_DT_Q4_0 || (o->type < 0 && o->bits == 4) ? 4 : 8));
        json_object_set_new(q, "group_size", json_integer(32));
        json_object_set_new(q, "sym", json_true());
        json_object_set_new(q, "desc_act", json_false());
        json_object_set_new(q, "checkpoint_format", json_string("gptq"));
    }
    json_object_set_new(q, "modules", mods);
    json_object_set_new(cfg, "quantization_config", q);
    char *out = json_dumps(cfg, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(cfg);
    if (!out) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    mt_prov *prov = mt_prov_new("quantize", in_path);
    int rc = prov ? MT_OK : mt_seterr(MT_ERR_NOMEM, "out of memory");
    if (!rc) {
        mt_prov_str(prov, "method", o->method == MT_QUANT_GPTQ ? "gptq" : "rtn");
        mt_prov_str(prov, "grid", grid_name);
        mt_prov_str(prov, "modules", "experts of the encoder and the decoder");
        mt_prov_num(prov, "bits_per_expert_weight", bits_expert);
        if (o->method == MT_QUANT_GPTQ) mt_prov_num(prov, "damp", o->damp);
        if (o->command) mt_prov_command(prov, o->command);
        mt_prov_note(prov, o->codec == MT_QUANT_CODEC_QMOE
                               ? "The experts are stored in moetool's sub-1-bit qmoe code (`*.qmoe` blobs and "
                                 "`qmoe.dictionary`, docs/qmoe.md): moetool runs this checkpoint; other tools cannot."
                               : "The experts are in the AutoGPTQ layout (q8_0/q4_0 blocks exactly); every other "
                                 "tensor is as in the source. moetool runs this checkpoint (docs/seq2seq.md).");
        rc = mt_prov_config(prov, &out);
    }
    if (!rc) rc = mt_write_text_file(dir, "config.json", out, strlen(out));
    if (!rc) rc = mt_prov_write_card(prov, dir, "quantized encoder-decoder MoE");
    mt_prov_free(prov);
    free(out);
    return rc;
}

int mt_s2s_quantize_file(const char *in_path, const char *out_path, const mt_quant_opts *o, const char *calib_pairs,
                         int n_threads, mt_quant_report *rep) {
    const double t0 = mt_now();
    memset(rep, 0, sizeof *rep);
    rep->source_dtype = -1;
    rep->attn_dtype = (mt_dtype)-1;
    const int gptq = o->method == MT_QUANT_GPTQ;
    if (gptq && !calib_pairs)
        return mt_seterr(MT_ERR_ARG, "quantize: GPTQ of an encoder-decoder model calibrates on input/target pairs: "
                         "give --calib-pairs FILE (JSON Lines as eval --pairs), or use --method rtn");
    if (o->s2s_layerwise && !gptq)
        return mt_seterr(MT_ERR_ARG, "quantize: --layerwise orders GPTQ's calibration; RTN has none");
    if (o->qmoe_scales && o->codec != MT_QUANT_CODEC_QMOE)
        return mt_seterr(MT_ERR_ARG, "quantize: --qmoe-scales applies to --codec qmoe");
    if (o->ternary_range > 0 && (!gptq || o->bits != MT_QUANT_TERNARY))
        return mt_seterr(MT_ERR_ARG, "quantize: --ternary-range applies to GPTQ with --bits ternary --group row");
    const char *others[1] = {calib_pairs};
    int rc = mt_output_check(out_path, MT_OUTPUT_HF_DIR, o->force, in_path, others, calib_pairs ? 1 : 0);
    if (rc) return rc;
    mt_s2s_model *m = NULL;
    mt_s2s_pair *pairs = NULL;
    size_t n_pairs = 0;
    s2s_q q = {0};
    mt_qmoe_dict dict = {0};
    uint64_t counts[3] = {0, 0, 0};
    mt_outdir *od = NULL;
    mt_hf_writer *hw = NULL;
    if ((rc = mt_s2s_load(&m, in_path, n_threads))) goto done;
    const mt_s2s_config *c = mt_s2s_model_config(m);
    const mt_s2s_weights *w = mt_s2s_model_weights(m);
    const mt_ckpt *ck = mt_s2s_model_ckpt(m);
    if (c->quant != MT_QFMT_NONE) {
        rc = mt_seterr(MT_ERR_ARG, "%s: the experts are already quantized; quantize the original model", in_path);
        goto done;
    }
    mt_grid g_wi, g_wo;
    if ((rc = check_opts(o, &g_wi, c->d_model)) || (rc = check_opts(o, &g_wo, c->d_ff[0])) ||
        (rc = check_opts(o, &g_wo, c->d_ff[1])))
        goto done;
    /* the expert matrices */
    int n_sparse = 0;
    for (int s = 0; s < 2; s++) {
        q.sparse_base[s] = n_sparse;
        for (int l = 0; l < (s ? c->n_dec_layers : c->n_enc_layers); l++)
            n_sparse += mt_s2s_layer_sparse(c, s, l) ? 1 : 0;
    }
    if (!n_sparse) {
        rc = mt_seterr(MT_ERR_ARG, "%s: no sparse layer, no experts to quantize", in_path);
        goto done;
    }
    const int E = c->n_experts;
    if (!(q.v = calloc((size_t)n_sparse * (size_t)E * 2, sizeof *q.v))) {
        rc = mt_seterr(MT_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (int s = 0; s < 2; s++)
        for (int l = 0; l < (s ? c->n_dec_layers : c->n_enc_layers); l++) {
            const mt_s2s_layer *y = s ? &w->dec[l] : &w->enc[l];
            for (int e = 0; e < y->n_experts; e++)
                for (int k = 0; k < 2; k++) {
                    xmat *x = &q.v[q.n++];
                    *x = (xmat){.dec = s, .layer = l, .expert = e, .wo = k, .src = k ? &y->wo[e] : &y->wi[e]};
                    mt_s2s_expert_name(c, x->name, sizeof x->name, s, l, e, k);
                    mt_calib_rows_init(&x->x, x->src->cols);
                    if (!mt_dtype_is_plain_float(x->src->dtype)) {
                        rc = mt_seterr(MT_ERR_UNSUPPORTED, "%s: tensor %s is stored as %s; quantize reads f32, f16 "
                                       "and bf16 experts", in_path, x->name, mt_dtype_name(x->src->dtype));
                        goto done;
                    }
                }
        }
    rep->n_layers = n_sparse;
    rep->n_experts = E;
    if (!(rep->expert_tokens = calloc((size_t)n_sparse * (size_t)E, sizeof *rep->expert_tokens))) {
        rc = mt_seterr(MT_ERR_NOMEM, "out of memory");
        goto done;
    }
    /* calibration: the forward over the pairs, expert rows kept by the hook
       (with RTN they only measure the output error) */
    if (calib_pairs) {
        mt_tokenizer *tok = NULL; /* for text in the pairs; without one, ids only */
        if (mt_tok_load_for_ckpt(&tok, ck) != MT_OK) mt_clearerr();
        rc = mt_s2s_pairs_load(calib_pairs, tok, &pairs, &n_pairs);
        mt_tok_free(tok);
        if (rc) goto done;
        q.cap = (uint64_t)(o->calib_tokens > 0 ? o->calib_tokens : 16384);
    }
    /* calibrate and quantize: every layer at once, or (layerwise) one sparse
       layer after the other, each on the forward with the ones before it
       quantized; q.v is in (stack, layer) order */
    const int layerwise = gptq && calib_pairs && o->s2s_layerwise;
    double err_sum = 0, tcal = 0;
    int n_err = 0;
    uint64_t ran = 0;
    const int min_rows = o->min_expert_tokens > 0 ? o->min_expert_tokens : 1;
    q.only_layer = -1;
    for (size_t first = 0; first < q.n;) {
        size_t last = q.n;
        if (layerwise) {
            last = first;
            while (last < q.n && q.v[last].dec == q.v[first].dec && q.v[last].layer == q.v[first].layer) last++;
            q.only_dec = q.v[first].dec;
            q.only_layer = q.v[first].layer;
        }
        if (calib_pairs) {
            const double tc = mt_now();
            mt_s2s_set_expert_hook(m, hook, &q);
            ran = 0;
            for (size_t i = 0; i < n_pairs && ran < (uint64_t)o->calib_tokens; i++) {
                double nll;
                if ((rc = mt_s2s_score(m, pairs[i].input, pairs[i].n_in, pairs[i].target, pairs[i].n_tgt, &nll))) {
                    char msg[512];
                    snprintf(msg, sizeof msg, "%s", mt_last_error());
                    rc = mt_seterr(rc, "%s:%d: %s", calib_pairs, pairs[i].line, msg);
                    goto done;
                }
                if ((rc = q.rc)) goto done;
                ran += (uint64_t)pairs[i].n_in + (uint64_t)pairs[i].n_tgt;
                if (o->progress && !layerwise) o->progress(o->progress_user, "calibration pairs", i + 1, n_pairs);
            }
            mt_s2s_set_expert_hook(m, NULL, NULL);
            tcal += mt_now() - tc;
        }
        for (size_t i = first; i < last; i++) {
            xmat *x = &q.v[i];
            int idx = q.sparse_base[x->dec]; /* sparse layer index of (dec, layer) in the report */
            for (int l = 0; l < x->layer; l++) idx += mt_s2s_layer_sparse(c, x->dec, l) ? 1 : 0;
            if (!x->wo) rep->expert_tokens[(size_t)idx * E + x->expert] = (uint64_t)x->x.n;
            const int use = gptq && x->x.n >= min_rows;
            if (gptq && !use && !x->wo) rep->n_rtn_fallback++;
            double re;
            if ((rc = quant_one(x, x->wo ? &g_wo : &g_wi, o, use, calib_pairs != NULL, &re, layerwise))) {
                char msg[512];
                snprintf(msg, sizeof msg, "%s", mt_last_error());
                rc = mt_seterr(rc, "%s: %s: %s", in_path, x->name, msg);
                goto done;
            }
            if (re >= 0) {
                err_sum += re;
                n_err++;
            }
            mt_calib_rows_free(&x->x);
            if (o->progress) o->progress(o->progress_user, "expert matrices", i + 1, q.n);
        }
        /* the next layers see this one quantized */
        for (size_t i = first; i < last && layerwise && !rc; i++)
            rc = mt_s2s_set_expert_matrix(m, q.v[i].dec, q.v[i].layer, q.v[i].expert, q.v[i].wo, q.v[i].deq);
        if (rc) goto done;
        first = last;
    }
    if (calib_pairs) {
        rep->n_calib_tokens = (int)ran;
        rep->calib_seconds = tcal;
    }
    rep->mean_rel_err = n_err ? err_sum / n_err : 0;
    /* qmoe: one dictionary for all, every matrix coded and serialised */
    uint64_t exp_bits = 0, exp_w = 0, code_bits = 0;
    const int qmoe = o->codec == MT_QUANT_CODEC_QMOE;
    if (qmoe) {
        const double tq = mt_now();
        for (size_t i = 0; i < q.n && !rc; i++)
            rc = mt_qmoe_count(counts, q.v[i].syms, q.v[i].src->rows * q.v[i].src->cols);
        if (rc || (rc = mt_qmoe_dict_build(&dict, counts, MT_QMOE_DICT_SIZE, MT_QMOE_MAX_LEN))) goto done;
        exp_bits += 8 * mt_qmoe_dict_bytes();
        for (size_t i = 0; i < q.n; i++) {
            xmat *x = &q.v[i];
            if ((rc = mt_qmoe_encode(&x->coded, &dict, x->syms, x->lo, x->hi, x->src->rows, x->src->cols)) ||
                (mt_quant_qmoe_scales(o) == MT_QMOE_SCALES_U8LOG && (rc = mt_qmoe_mat_set_scale8(&x->coded))) ||
                (rc = mt_qmoe_serialize(&x->coded, &x->blob, &x->blob_n)))
                goto done;
            mt_qmoe_size sz;
            mt_qmoe_mat_size(&x->coded, &sz);
            code_bits += sz.code_bits;
            exp_bits += 8 * (uint64_t)x->blob_n;
        }
        const uint64_t tot = counts[0] + counts[1] + counts[2];
        double H = 0;
        for (int i = 0; i < 3; i++)
            if (counts[i]) H -= (double)counts[i] / (double)tot * log2((double)counts[i] / (double)tot);
        rep->symbol_entropy = H;
        rep->zero_frac = tot ? (double)counts[0] / (double)tot : 0;
        rep->code_bits_expert = tot ? (double)code_bits / (double)tot : 0;
        rep->code_seconds = mt_now() - tq;
        rep->qmoe_scales = mt_quant_qmoe_scales(o);
    }
    for (size_t i = 0; i < q.n; i++) {
        const xmat *x = &q.v[i];
        const uint64_t nw = (uint64_t)x->src->rows * (uint64_t)x->src->cols;
        exp_w += nw;
        if (!qmoe) { /* stored AutoGPTQ arrays */
            const int bits = mt_dtype_get(x->dtype)->gptq_bits, per = 32 / bits;
            const uint64_t R = (uint64_t)x->src->rows, C = (uint64_t)x->src->cols;
            exp_bits += 8 * (4 * (C / per * R) + 4 * (C / 32 * (R / per)) + 2 * (C / 32 * R) + 4 * C);
        }
    }
    rep->expert_dtype = qmoe ? MT_DT_QMOE : q.v[0].dtype;
    rep->expert_params = exp_w;
    rep->bits_expert = exp_w ? (double)exp_bits / (double)exp_w : 0;
    mt_grid_name(&g_wi, rep->grid_name, sizeof rep->grid_name);
    if (!qmoe) snprintf(rep->grid_name, sizeof rep->grid_name, "%s", mt_dtype_name(q.v[0].dtype));
    /* write: every tensor of the source (the shared embedding once), experts quantized */
    if ((rc = mt_outdir_open(&od, out_path))) goto done;
    if ((rc = mt_hf_writer_open(&hw, mt_outdir_path(od), 0))) goto done;
    const size_t nt = mt_ckpt_count(ck);
    uint64_t other_bits = 0, other_w = 0;
    for (int pass = 0; pass < 2 && !rc; pass++) {
        for (size_t i = 0; i < nt && !rc; i++) {
            const mt_tensor *t = mt_ckpt_get(ck, i);
            if (mt_s2s_is_alias(w, t->name)) continue;
            const xmat *x = NULL;
            for (size_t k = 0; k < q.n && !x; k++)
                if (!strcmp(q.v[k].name, t->name)) x = &q.v[k];
            if (x) {
                rc = put_mat(hw, x, pass);
                continue;
            }
            if (!pass) {
                other_bits += 8 * t->nbytes;
                other_w += (uint64_t)mt_tensor_numel(t);
            }
            rc = pass ? mt_hf_writer_write(hw, t->data, (size_t)t->nbytes)
                      : mt_hf_writer_add(hw, t->name, t->dtype, t->n_dims, t->shape);
        }
        if (!rc && qmoe) {
            uint8_t d[MT_QMOE_DICT_BYTES];
            mt_qmoe_dict_serialize(&dict, d);
            rc = pass ? mt_hf_writer_write(hw, d, sizeof d)
                      : mt_hf_writer_add(hw, "qmoe.dictionary", MT_DT_U8, 1, (const int64_t[]){MT_QMOE_DICT_BYTES});
        }
    }
    if (rc || (rc = mt_hf_writer_finish(hw))) goto done;
    rep->total_params = exp_w + other_w;
    rep->bits_total = rep->total_params ? (double)(exp_bits + other_bits) / (double)rep->total_params : 0;
    if ((rc = write_config(ck, mt_outdir_path(od), o, &dict, counts, in_path, rep->grid_name, rep->bits_expert)) ||
        (rc = mt_copy_tokenizer(ck, mt_outdir_path(od))))
        goto done;
    rc = mt_outdir_commit(od);
    od = NULL;
    rep->seconds = mt_now() - t0;
    rep->peak_rss = mt_peak_rss_bytes();
done:
    mt_hf_writer_free(hw);
    mt_outdir_free(od);
    for (size_t i = 0; i < q.n; i++) xmat_free(&q.v[i]);
    free(q.v);
    mt_qmoe_dict_free(&dict);
    mt_s2s_pairs_free(pairs, n_pairs);
    mt_s2s_free(m);
    return rc;
}
