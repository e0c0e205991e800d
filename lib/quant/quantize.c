/* quantize.c — the quantize verb's driver: options, layer-by-layer
 * calibration + GPTQ/RTN of every selected matrix (experts, optionally
 * attention: q/k/v on the attention input, o_proj on the attention output;
 * then optionally embeddings by RTN and lm_head by GPTQ on the final-norm
 * output), the quantized matrices swapped into the loaded model so that
 * the next layer is calibrated on the already-quantized ones (QMoE/GPTQ's
 * sequential order) and so that eval runs the result, and GGUF output.
 *
 * Memory: the quantized matrices of all layers (their storage size, f32 for
 * evaluation-only grids), the model's own weights (mapped), one layer's
 * calibration rows (tokens · hidden f32 per top-k slot, see calib.c) and
 * the working set of the matrices being quantized: each job builds the
 * Hessian of its matrix from the rows (w2: from the expert's intermediate
 * activations, computed in the job), quantizes, measures the output error
 * on the rows and frees it all. Jobs run on up to --threads threads, and
 * a job starts only while the working sets in flight fit half of the
 * memory available when the layer starts (one job always runs), so a
 * Mixtral-width layer holds one or a few experts' Hessians, not eight.
 *
 * Codec qmoe (per-row ternary experts): each expert job also keeps its
 * symbols and f16-rounded row values; after the last layer one Tunstall
 * dictionary is built from the symbol counts of all experts, every expert
 * is coded with it and its coded matrix (MT_DT_QMOE) replaces the decoded
 * f32 one in the model, so eval runs the code. Until then the model holds
 * the decoded ternary weights, so calibration is the same with or without
 * the code. */
#define _GNU_SOURCE
#include "quant_impl.h"

#include "moetool/mt_arch.h"
#include "moetool/mt_qmoe.h"
#include "moetool/mt_write.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Raw metadata value of a GGUF key (lib/io; used to copy keys verbatim). */

void mt_quant_opts_default(mt_quant_opts *o) {
    memset(o, 0, sizeof *o);
    o->method = MT_QUANT_GPTQ;
    o->bits = 4;
    o->group = MT_QUANT_GROUP_DEFAULT;
    o->type = -1;
    o->attn_type = -1;
    o->embed_type = -1;
    o->calib_tokens = 16384;
    o->calib_window = 0; /* 256, or the model's context when shorter */
    o->damp = 0.1;
    o->block = 128;
    o->format = MT_FMT_GGUF;
    o->ternary_range = 0; /* MT_QUANT_TERNARY_RANGE_QMOE with codec qmoe, else 1 */
    o->expert_cap = 4.0;
    o->min_expert_tokens = 16;
    o->sequential = 1;
    o->plan_windows = 2;
}

/* Calibration window: the one asked for, else 256 tokens or the model's
 * whole context (max_position_embeddings) when that is shorter. */
static int calib_window(const mt_quant_opts *o, const mt_config *c) {
    if (o->calib_window) return o->calib_window;
    return c->max_pos > 0 && c->max_pos < MT_QUANT_CALIB_WINDOW ? c->max_pos : MT_QUANT_CALIB_WINDOW;
}

void mt_quant_report_free(mt_quant_report *r) {
    if (!r) return;
    free(r->expert_tokens);
    free(r->plan);
    free(r->ternary_ranges);
    r->expert_tokens = NULL;
    r->plan = NULL;
    r->ternary_ranges = NULL;
}

/* Matrix kinds of a layer. */
/* Kinds of quantized matrix per layer: attention, the routed experts (or the
 * dense MLP, as expert 0), the shared expert (not routed: one per layer,
 * quantized with the experts' grid, calibrated on every token). */

typedef struct {
    int used;
    mt_dtype dtype;        /* storage of data                               */
    uint8_t *data;         /* (rows, row_bytes)                              */
    uint64_t row_bytes;
    int64_t rows, cols;
    double bits;           /* storage bits per weight (nominal for f32)     */
    /* codec qmoe, until coded: symbols (rows, cols) in {-1,0,+1} and the
       f16-rounded row values lo, hi (rows) the grid used */
    int8_t *syms;
    float *lo, *hi;
    mt_qmoe_mat coded;     /* codec qmoe, after coding (dtype MT_DT_QMOE)  */
} qmat;

struct mt_quant_state {
    int n_layers, ne;      /* ne: max(1, experts) per layer                 */
    qmat *q;               /* [n_layers][K_COUNT][ne]                        */
    mt_dtype expert_dtype;
    mt_qmoe_dict dict;     /* codec qmoe: shared by every coded expert       */
    qmat embd, head;       /* embed_bits: token embeddings, untied lm_head   */
    char grid_name[48];    /* the report's, for the output's provenance      */
    double bits_expert, bits_total;
    const char *source;    /* the verb's input path (NULL: the model's)      */
    uint32_t file_type;    /* general.file_type (mix, plan); 0: the experts' */
};

static qmat *qm(mt_quant_state *s, int l, int k, int e) { return &s->q[((size_t)l * K_COUNT + (size_t)k) * (size_t)s->ne + (size_t)e]; }

void mt_quant_state_free(mt_quant_state *s) {
    if (!s) return;
    size_t n = (size_t)s->n_layers * K_COUNT * (size_t)s->ne;
    for (size_t i = 0; i < n; i++) {
        free(s->q[i].data);
        free(s->q[i].syms);
        free(s->q[i].lo);
        free(s->q[i].hi);
        mt_qmoe_mat_free(&s->q[i].coded);
    }
    free(s->q);
    free(s->embd.data);
    free(s->head.data);
    mt_qmoe_dict_free(&s->dict);
    free(s);
}

static int q_dim(const mt_config *c) { return c->n_heads * c->head_dim; }

/* Whether attention is quantized (--attn-bits, --attn-type or a mix). */
static int planned(const mt_quant_opts *o) {
    return (o->target_bpw > 0 || o->target_bytes > 0) && o->codec != MT_QUANT_CODEC_QMOE;
}
/* Whether each qmoe expert matrix gets its own ternary range under
 * target_bpw (qmoe_range.c) instead of the types of a plan. */
static int range_budget(const mt_quant_opts *o) { return o->target_bpw > 0 && o->codec == MT_QUANT_CODEC_QMOE; }
static int with_attn(const mt_quant_opts *o) { return o->attn_bits > 0 || o->attn_type >= 0 || o->mix || planned(o); }
/* Whether embeddings and lm_head are. */
static int with_embed(const mt_quant_opts *o) { return o->embed_bits > 0 || o->embed_type >= 0 || o->mix || planned(o); }

static const mt_quant_role g_kind_role[K_COUNT] = {
    [K_Q] = MT_QROLE_Q,      [K_K] = MT_QROLE_K,     [K_V] = MT_QROLE_V,      [K_O] = MT_QROLE_O,
    [K_W1] = MT_QROLE_GATE,  [K_W3] = MT_QROLE_UP,   [K_W2] = MT_QROLE_DOWN,  [K_SW1] = MT_QROLE_GATE,
    [K_SW3] = MT_QROLE_UP,   [K_SW2] = MT_QROLE_DOWN,
};

/* Whether a mix is written with an importance matrix (given, or computed
 * from the calibration text as GPTQ always does for the i-quant mixes):
 * llama.cpp's mixes choose some types by it. */
static int mix_has_imatrix(const mt_quant_opts *o) {
    return o->imatrix_path || o->imatrix_calib || o->method == MT_QUANT_GPTQ;
}

/* The grid of matrix kind k (K_*) in `layer`, `cols` columns: the plan's
 * type for it (--target-bpw/--target-size; NULL: none or not made yet, then
 * q4_K for checks), the mix's, else the storage type named by --type /
 * --attn-type, else --bits/--group (--attn-bits and its default group),
 * asymmetric with --asym. */
static int matrix_grid(mt_grid *g, const mt_quant_opts *o, const mt_config *c, const mt_quant_plan *plan, int k,
                       int layer, int64_t cols, const char *what) {
    const int is_attn = k <= K_O;
    const int t = planned(o) ? (plan ? plan->type[layer * K_COUNT + k] : (cols % MT_QK_K ? MT_DT_Q8_0 : MT_DT_Q4_K))
                  : o->mix ? mt_quant_mix_type(o->mix, g_kind_role[k], layer, c, cols, mix_has_imatrix(o))
                  : is_attn ? o->attn_type
                            : o->type;
    int rc;
    if (o->mix && t < 0) return mt_seterr(MT_ERR_ARG, "%s: no llama.cpp mix of file type %d", what, o->mix);
    if (t >= 0) return mt_grid_make_type(g, t, cols, what);
    if ((rc = mt_grid_make(g, is_attn ? o->attn_bits : o->bits, is_attn ? MT_QUANT_GROUP_DEFAULT : o->group, cols, what)))
        return rc;
    return o->asym ? mt_grid_asym(g, what) : MT_OK;
}

/* The i-quants llama.cpp writes only with an importance matrix: iq3_xxs,
 * iq2_xxs, iq2_xs, iq2_s, iq1_s, iq1_m (llama_model_quantize stops with
 * "this quantization requires an importance matrix"), and the mixes that
 * hold them. On token embeddings, which have no entry in it, ggml asserts
 * one for iq2_xxs, iq2_xs and iq1_s (the rest weigh by x²). */
static int needs_imatrix(int t) {
    return t == MT_DT_IQ3_XXS || t == MT_DT_IQ2_XXS || t == MT_DT_IQ2_XS || t == MT_DT_IQ2_S || t == MT_DT_IQ1_S ||
           t == MT_DT_IQ1_M;
}

static int mix_needs_imatrix(int ftype) {
    return ftype == 19 || ftype == 20 || ftype == 28 || ftype == 29 || ftype == 24 || ftype == 31 || ftype == 23 ||
           ftype == 22;
}

int mt_quant_check_imatrix(const mt_quant_opts *o) {
    /* token embeddings have no importance matrix (they are looked up, not multiplied) */
    if (o->embed_type == MT_DT_IQ2_XXS || o->embed_type == MT_DT_IQ2_XS || o->embed_type == MT_DT_IQ1_S)
        return mt_seterr(MT_ERR_ARG, "--embed-type %s needs an importance matrix, which token embeddings do not "
                         "have (llama.cpp cannot write it either); use iq2_s, iq1_m, iq3_xxs, iq3_s or a K-quant for them",
                         mt_dtype_name((mt_dtype)o->embed_type));
    const int has_im = o->imatrix_path || o->imatrix_calib || o->method == MT_QUANT_GPTQ;
    if (!has_im) {
        const int attn = !needs_imatrix(o->type), t = attn ? o->attn_type : o->type;
        if (needs_imatrix(t) || (o->mix && mix_needs_imatrix(o->mix)))
            return mt_seterr(MT_ERR_ARG, "%s %s needs an importance matrix (llama.cpp writes it only with one): "
                             "give --imatrix FILE or --imatrix calib, or use --method gptq, which computes it from --calib",
                             o->mix ? "--mix" : attn ? "--attn-type" : "--type",
                             o->mix ? mt_quant_mix_name(o->mix) : mt_dtype_name((mt_dtype)t));
    }
    return MT_OK;
}

int mt_quant_check(const mt_quant_opts *o, const mt_config *c, int for_file) {
    mt_grid g;
    int rc;
    if (o->method != MT_QUANT_RTN && o->method != MT_QUANT_GPTQ) return mt_seterr(MT_ERR_ARG, "quantize: unknown method");
    if (o->experts_only && c->n_experts <= 0)
        return mt_seterr(MT_ERR_ARG, "quantize: the model is dense (no experts); --experts-only needs a MoE model");
    if (o->experts_only && with_attn(o))
        return mt_seterr(MT_ERR_ARG, "quantize: --experts-only and --attn-bits/--attn-type exclude each other");
    if (o->attn_bits && o->attn_type >= 0)
        return mt_seterr(MT_ERR_ARG, "quantize: --attn-bits and --attn-type exclude each other");
    if (o->mix && (o->type >= 0 || o->attn_type >= 0 || o->embed_type >= 0 || o->attn_bits || o->embed_bits ||
                   o->experts_only || o->codec != MT_QUANT_CODEC_NONE))
        return mt_seterr(MT_ERR_ARG, "quantize: a mix (%s) chooses every matrix's type; it excludes --type, --attn-type, "
                         "--embed-type, --attn-bits, --embed-bits, --experts-only and --codec", mt_quant_mix_name(o->mix)
                         ? mt_quant_mix_name(o->mix) : "?");
    if (o->mix && !mt_quant_mix_name(o->mix)) return mt_seterr(MT_ERR_ARG, "quantize: no llama.cpp mix of file type %d", o->mix);
    if (o->target_bpw < 0 || !(o->target_bpw == o->target_bpw))
        return mt_seterr(MT_ERR_ARG, "quantize: --target-bpw %g out of range", o->target_bpw);
    if (o->target_bpw > 0 && o->target_bytes > 0)
        return mt_seterr(MT_ERR_ARG, "quantize: --target-bpw and --target-size exclude each other");
    if (planned(o) && (o->mix || o->type >= 0 || o->attn_type >= 0 || o->embed_type >= 0 || o->attn_bits ||
                       o->embed_bits || o->experts_only || o->codec != MT_QUANT_CODEC_NONE || o->asym))
        return mt_seterr(MT_ERR_ARG, "quantize: --target-bpw/--target-size choose every tensor's type; they exclude "
                         "--mix, --type, --attn-type, --embed-type, --attn-bits, --embed-bits, --experts-only, --asym "
                         "and --codec");
    if (o->codec == MT_QUANT_CODEC_QMOE && o->target_bytes > 0)
        return mt_seterr(MT_ERR_ARG, "quantize: --codec qmoe takes --target-bpw (bits per expert weight), not "
                         "--target-size");
    if (range_budget(o) && o->method != MT_QUANT_GPTQ)
        return mt_seterr(MT_ERR_ARG, "quantize: --target-bpw with --codec qmoe chooses GPTQ's ternary range per matrix; "
                         "it needs --method gptq");
    if (range_budget(o) && o->ternary_range > 0)
        return mt_seterr(MT_ERR_ARG, "quantize: --target-bpw with --codec qmoe chooses each matrix's ternary range; it "
                         "excludes --ternary-range");
    if (o->qmoe_alloc && !range_budget(o))
        return mt_seterr(MT_ERR_ARG, "quantize: --qmoe-alloc applies to --codec qmoe with --target-bpw");
    if (o->qmoe_alloc && o->qmoe_alloc != MT_QMOE_ALLOC_LAYER && o->qmoe_alloc != MT_QMOE_ALLOC_MATRIX)
        return mt_seterr(MT_ERR_ARG, "quantize: unknown qmoe range allocation %d", o->qmoe_alloc);
    if (range_budget(o) && (o->target_bpw < 0.2 || o->target_bpw > 2))
        return mt_seterr(MT_ERR_ARG, "quantize: --target-bpw %g with --codec qmoe is bits per expert weight all-in; "
                         "it must be in [0.2, 2]", o->target_bpw);
    if (planned(o) && for_file && o->format == MT_FMT_HF)
        return mt_seterr(MT_ERR_ARG, "quantize: --target-bpw/--target-size write GGUF; --format hf takes --bits 8 or 4");
    if (o->embed_bits && o->embed_type >= 0)
        return mt_seterr(MT_ERR_ARG, "quantize: --embed-bits and --embed-type exclude each other");
    if ((o->type >= 0 || o->attn_type >= 0 || o->embed_type >= 0 || o->mix) && o->asym)
        return mt_seterr(MT_ERR_ARG, "quantize: --asym applies to --bits grids, not to --type/--attn-type/--embed-type or a mix");
    if ((o->type >= 0 || o->attn_type >= 0 || o->embed_type >= 0 || o->mix) && for_file && o->format == MT_FMT_HF)
        return mt_seterr(MT_ERR_ARG, "quantize: --type/--attn-type/--embed-type and the mixes write GGUF; --format hf "
                         "takes --bits 8 or 4");
    if (c->quant != MT_QFMT_NONE)
        return mt_seterr(MT_ERR_ARG, "quantize: the model is already quantized (quantization_config); start from the "
                         "original weights");
    if ((rc = mt_quant_check_imatrix(o))) return rc;
    if ((rc = matrix_grid(&g, o, c, NULL, K_W1, 0, c->hidden, o->type >= 0 ? "--type on expert w1/w3" : "--bits/--group on expert w1/w3")))
        return rc;
    if (o->codec != MT_QUANT_CODEC_NONE) {
        if (o->codec != MT_QUANT_CODEC_QMOE) return mt_seterr(MT_ERR_ARG, "quantize: unknown codec %d", (int)o->codec);
        if (g.kind != MT_GRID_TERNARY_ROW)
            return mt_seterr(MT_ERR_ARG, "quantize: --codec qmoe codes QMoE's per-row ternary grid; use --bits ternary "
                             "--group row");
        if (for_file && o->format != MT_FMT_HF)
            return mt_seterr(MT_ERR_ARG, "quantize: --codec qmoe is stored in a Hugging Face directory; use --format hf");
    }
    const int hf = for_file && o->format == MT_FMT_HF;
    if (o->format != MT_FMT_HF && o->format != MT_FMT_GGUF)
        return mt_seterr(MT_ERR_ARG, "quantize: output format must be hf or gguf");
    const mt_dtype_info *gd = mt_dtype_get((mt_dtype)mt_grid_dtype(&g));
    if (hf && o->codec == MT_QUANT_CODEC_NONE && !(gd && gd->gptq_bits)) {
        char nm[48];
        mt_grid_name(&g, nm, sizeof nm);
        return mt_seterr(MT_ERR_ARG, "quantize: %s has no Hugging Face (AutoGPTQ) layout here; --format hf takes 8 or 4 "
                         "bits with group 32, or --bits ternary --group row --codec qmoe", nm);
    }
    if (for_file && o->codec == MT_QUANT_CODEC_NONE && mt_grid_dtype(&g) < 0) {
        char nm[48];
        mt_grid_name(&g, nm, sizeof nm);
        return mt_seterr(MT_ERR_ARG, "quantize: %s has no GGUF type; use --eval-only to measure it (files take 8 or 4 bits "
                         "with group 32, or ternary with group 256)", nm);
    }
    if (o->experts_only && (o->embed_bits || o->embed_type >= 0))
        return mt_seterr(MT_ERR_ARG, "quantize: --experts-only and --embed-bits/--embed-type exclude each other");
    if (o->ternary_range > 0 && (o->method != MT_QUANT_GPTQ || g.kind != MT_GRID_TERNARY_ROW))
        return mt_seterr(MT_ERR_ARG, "quantize: --ternary-range applies to GPTQ with --bits ternary --group row");
    if (o->qmoe_scales && o->codec != MT_QUANT_CODEC_QMOE)
        return mt_seterr(MT_ERR_ARG, "quantize: --qmoe-scales applies to --codec qmoe");
    if (o->qmoe_scales && o->qmoe_scales != MT_QMOE_SCALES_F16 && o->qmoe_scales != MT_QMOE_SCALES_U8LOG)
        return mt_seterr(MT_ERR_ARG, "quantize: unknown qmoe row scales %d", o->qmoe_scales);
    if (hf) {
        /* AutoGPTQ zero points pack 32/bits output rows per word */
        const int ab = o->codec == MT_QUANT_CODEC_NONE ? o->bits : 0;
        const struct { int bits; int64_t rows; const char *what; } pk[] = {
            {ab, c->ffn, "expert w1/w3"}, {ab, c->hidden, "expert w2"},
            {o->attn_bits, q_dim(c), "q_proj"}, {o->attn_bits, (int64_t)c->n_kv_heads * c->head_dim, "k_proj/v_proj"},
            {o->attn_bits, c->hidden, "o_proj"}, {o->embed_bits, c->vocab, "embeddings/lm_head"}};
        for (size_t i = 0; i < sizeof pk / sizeof pk[0]; i++)
            if (pk[i].bits >= 2 && pk[i].rows % (32 / pk[i].bits))
                return mt_seterr(MT_ERR_ARG, "quantize: %s has %lld rows, which the AutoGPTQ layout cannot pack at %d bits "
                                 "(a multiple of %d); use --format gguf", pk[i].what, (long long)pk[i].rows, pk[i].bits,
                                 32 / pk[i].bits);
    }
    if (o->tq1 && mt_grid_dtype(&g) != MT_DT_TQ2_0)
        return mt_seterr(MT_ERR_ARG, "quantize: --ternary-type tq1_0 needs --bits ternary --group 256");
    if (hf && o->codec == MT_QUANT_CODEC_NONE && o->attn_bits && o->attn_bits != o->bits)
        return mt_seterr(MT_ERR_ARG, "quantize: the AutoGPTQ layout has one width; --attn-bits %d with --bits %d needs "
                         "--format gguf", o->attn_bits, o->bits);
    if (o->embed_bits) {
        if (o->embed_bits != 8 && o->embed_bits != 4)
            return mt_seterr(MT_ERR_ARG, "quantize: --embed-bits must be 8 or 4, got %d", o->embed_bits);
        if ((rc = mt_grid_make(&g, o->embed_bits, MT_QUANT_GROUP_DEFAULT, c->hidden, "--embed-bits on embeddings")))
            return rc;
        if (hf && o->codec == MT_QUANT_CODEC_NONE)
            return mt_seterr(MT_ERR_ARG, "quantize: the AutoGPTQ layout has no quantized embeddings; use --format gguf "
                             "(or the qmoe format)");
    }
    if ((rc = matrix_grid(&g, o, c, NULL, K_W2, 0, c->ffn, o->type >= 0 ? "--type on expert w2" : "--bits/--group on expert w2")))
        return rc;
    if (with_attn(o)) {
        if ((rc = matrix_grid(&g, o, c, NULL, K_Q, 0, c->hidden, o->attn_bits ? "quantize: --attn-bits on attention" : "quantize: --attn-type on attention")))
            return rc;
        if (for_file && mt_grid_dtype(&g) < 0)
            return mt_seterr(MT_ERR_ARG, "quantize: --attn-bits %d has no file type; use --eval-only", o->attn_bits);
        if ((rc = matrix_grid(&g, o, c, NULL, K_O, 0, q_dim(c), o->attn_bits ? "--attn-bits on o_proj" : "--attn-type on o_proj")))
            return rc;
    }
    if (o->embed_type >= 0 && (rc = mt_grid_make_type(&g, o->embed_type, c->hidden, "--embed-type on embeddings")))
        return rc;
    if (o->method == MT_QUANT_GPTQ) {
        const int W = calib_window(o, c);
        if (W < 2 || W > 65536) return mt_seterr(MT_ERR_ARG, "quantize: calibration window %d out of range", W);
        if (o->calib_tokens < W)
            return mt_seterr(MT_ERR_ARG, "quantize: --calib-tokens %d is less than one window of %d", o->calib_tokens, W);
        if (!(o->damp >= 0) || o->damp > 10) return mt_seterr(MT_ERR_ARG, "quantize: damping %g out of range", o->damp);
        if (o->block <= 0) return mt_seterr(MT_ERR_ARG, "quantize: block %d out of range", o->block);
        if (!(o->expert_cap > 0)) return mt_seterr(MT_ERR_ARG, "quantize: expert cap %g out of range", o->expert_cap);
    }
    return MT_OK;
}

/* ---- one matrix ----------------------------------------------------------- */
typedef struct {
    const mt_mat *src;
    qmat *out;
    mt_grid grid;
    const mt_calib_rows *x; /* GPTQ: src's calibration inputs; NULL: RTN      */
    const mt_mat *w1, *w3; /* expert w2: its inputs are silu(x W1ᵀ)·(x W3ᵀ)   */
    mt_gptq_params gp;
    int keep_syms;         /* codec qmoe: keep symbols and row values       */
    const float *qw;       /* importance per column (imatrix) for the type's
                              own quantizer, rounding to nearest; NULL: none */
    mt_qmoe_range_probe *probe; /* set: only measure every candidate range
                              (qmoe_range.c) with probe_dict; no output     */
    const mt_qmoe_dict *probe_dict;
    uint64_t mem;          /* working set at its peak, bytes (estimate)     */
    int rc;
    char err[256];
    double rel_err;        /* ‖(W−Ŵ)X‖²/‖WX‖², -1 when not calibrated       */
} job_t;

/* Bytes a job holds at its peak: W f32, codes, group parameters, the packed
 * output; with calibration the Hessian (f64) and GPTQ's f32 factor and
 * error block (act-order: a permuted copy of H and W), w2's intermediate
 * activations. */
static uint64_t job_mem(const job_t *j) {
    const uint64_t rows = (uint64_t)j->src->rows, cols = (uint64_t)j->src->cols;
    const uint64_t ng = cols / (uint64_t)j->grid.group * (uint64_t)mt_grid_nparam(&j->grid);
    uint64_t m = rows * cols * (sizeof(float) + 1) + 2 * rows * ng * sizeof(float);
    uint64_t rb = 0;
    int dt = mt_grid_dtype(&j->grid);
    if (dt >= 0 && !mt_dtype_nbytes((mt_dtype)dt, cols, &rb)) m += rb * rows;
    if (j->x) {
        m += cols * cols * (sizeof(double) + sizeof(float)) + rows * (uint64_t)(j->gp.block > 0 ? j->gp.block : 128) * 4;
        if (j->gp.act_order) m += cols * cols * sizeof(double) + rows * cols * sizeof(float);
        if (j->w1) m += (uint64_t)j->x->n * cols * sizeof(float);
    }
    if (j->probe) m += (j->x ? cols * cols * sizeof(double) : 0) + rows * cols * (sizeof(float) + 1);
    return m;
}

/* Rows of W (f32) through the storage type's quantizer with j->qw. */
static int row_job(job_t *j, const float *W) {
    const int64_t rows = j->src->rows, cols = j->src->cols;
    qmat *q = j->out;
    int rc;
    q->rows = rows;
    q->cols = cols;
    q->dtype = (mt_dtype)mt_grid_dtype(&j->grid);
    q->bits = mt_grid_bits(&j->grid, cols);
    if ((rc = mt_dtype_nbytes(q->dtype, (uint64_t)cols, &q->row_bytes))) return rc;
    if (!(q->data = malloc((size_t)(q->row_bytes * (uint64_t)rows))))
        return mt_seterr(MT_ERR_NOMEM, "quantize: out of memory");
    for (int64_t r = 0; r < rows; r++)
        if ((rc = mt_row_from_f32_w(q->dtype, W + r * cols, q->data + (uint64_t)r * q->row_bytes, cols, j->qw)))
            return rc;
    q->used = 1;
    return MT_OK;
}

static void run_job(job_t *j) {
    const int64_t rows = j->src->rows, cols = j->src->cols, ng = cols / j->grid.group * mt_grid_nparam(&j->grid);
    float *W = malloc((size_t)(rows * cols) * sizeof *W);
    int8_t *codes = malloc((size_t)(rows * cols));
    float *a = malloc((size_t)(rows * ng) * sizeof *a), *b = malloc((size_t)(rows * ng) * sizeof *b);
    double *H = NULL;
    mt_calib_rows mid;
    const mt_calib_rows *x = j->x;
    int rc = MT_OK;
    mt_calib_rows_init(&mid, cols);
    j->rel_err = -1;
    if (!W || !codes || !a || !b) {
        rc = mt_seterr(MT_ERR_NOMEM, "quantize: out of memory");
        goto done;
    }
    for (int64_t r = 0; r < rows; r++)
        if ((rc = mt_row_to_f32(j->src->dtype, (const uint8_t *)j->src->data + r * j->src->row_stride, W + r * cols, cols)))
            goto done;
    if (j->grid.kind == MT_GRID_ROW || j->qw) {
        /* the type's own quantizer, whole rows, with the importance matrix */
        rc = row_job(j, W);
        goto done;
    }
    if (x) {
        if (j->w1) {
            if ((rc = mt_calib_mid(x, j->w1, j->w3, &mid))) goto done;
            x = &mid;
        }
        if (!(H = malloc((size_t)(cols * cols) * sizeof *H))) {
            rc = mt_seterr(MT_ERR_NOMEM, "quantize: out of memory for a %lld-column Hessian", (long long)cols);
            goto done;
        }
        if ((rc = mt_calib_hessian(x, H))) goto done;
    }
    mt_grid g = j->grid;
    if (g.kind == MT_GRID_TQ2_0 && H) g.mse_scale = 1;
    if (j->probe) {
        rc = mt_qmoe_range_measure(j->src, W, H, x, &g, &j->gp, j->probe_dict, j->probe);
        goto done;
    }
    rc = mt_gptq_quantize(W, rows, cols, H, &g, &j->gp, codes, a, b);
    free(H);
    H = NULL;
    if (rc) goto done;
    if (x) {
        /* ‖WX‖²: the error of an all-zero Ŵ. */
        double e, ref;
        if ((rc = mt_calib_output_err(j->src, W, x, &e, &ref))) goto done;
        j->rel_err = ref > 0 ? e / ref : 0;
    }
    mt_calib_rows_free(&mid);
    qmat *q = j->out;
    q->rows = rows;
    q->cols = cols;
    q->bits = mt_grid_bits(&g, cols);
    int dt = mt_grid_dtype(&g);
    if (dt >= 0) {
        q->dtype = (mt_dtype)dt;
        if ((rc = mt_dtype_nbytes(q->dtype, (uint64_t)cols, &q->row_bytes))) goto done;
        q->data = malloc((size_t)(q->row_bytes * (uint64_t)rows));
        if (!q->data) {
            rc = mt_seterr(MT_ERR_NOMEM, "quantize: out of memory");
            goto done;
        }
        for (int64_t r = 0; r < rows; r++) mt_grid_pack_row(&g, codes + r * cols, a + r * ng, cols, q->data + r * q->row_bytes);
    } else {
        q->dtype = MT_DT_F32;
        q->row_bytes = (uint64_t)cols * sizeof(float);
        q->data = (uint8_t *)W;
        W = NULL;
    }
    if (j->keep_syms) {
        /* one group per row: a = lo, b = hi, already f16-rounded (grids.c) */
        q->syms = codes;
        q->lo = a;
        q->hi = b;
        codes = NULL;
        a = b = NULL;
    }
    q->used = 1;
done:
    if (rc) snprintf(j->err, sizeof j->err, "%s", mt_last_error());
    j->rc = rc;
    mt_calib_rows_free(&mid);
    free(W);
    free(codes);
    free(a);
    free(b);
    free(H);
}

/* Progress per finished matrix (called under the pool's lock, so the
 * callback never runs twice at once). */
typedef struct {
    mt_progress_fn fn;
    void *user;
    uint64_t done, total;
    int layer, n_layers;
} job_progress;

typedef struct {
    job_t *jobs;
    int n;
    int next;
    int running;
    uint64_t budget, in_use;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job_progress *prog;
} pool_t;

/* Takes jobs in order; the next one waits while others run and its working
 * set would take the memory in flight past the budget. */
static void *worker(void *arg) {
    pool_t *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        if (p->next >= p->n) break;
        job_t *j = &p->jobs[p->next];
        if (p->running > 0 && p->in_use + j->mem > p->budget) {
            pthread_cond_wait(&p->cv, &p->mu);
            continue;
        }
        p->next++;
        p->running++;
        p->in_use += j->mem;
        pthread_mutex_unlock(&p->mu);
        run_job(j);
        pthread_mutex_lock(&p->mu);
        p->running--;
        p->in_use -= j->mem;
        if (p->prog && p->prog->fn) {
            char what[64];
            p->prog->done++;
            snprintf(what, sizeof what, "quantize: matrix; layer %d/%d", p->prog->layer + 1, p->prog->n_layers);
            p->prog->fn(p->prog->user, what, p->prog->done, p->prog->total);
        }
        pthread_cond_broadcast(&p->cv);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* Memory the jobs of a layer may hold at once: half of what the system
 * reports available (MemAvailable; else half the physical memory). */
static uint64_t mem_budget(void) {
    uint64_t kb = 0;
    FILE *f = fopen("/proc/meminfo", "r");
    if (f) {
        char line[256];
        unsigned long long v;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "MemAvailable: %llu kB", &v) == 1) {
                kb = v;
                break;
            }
        fclose(f);
    }
    if (kb) return kb * 1024 / 2;
    long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    return pages > 0 && psz > 0 ? (uint64_t)pages * (uint64_t)psz / 2 : UINT64_MAX;
}

/* Runs the jobs on up to n_threads threads (GPTQ per matrix is independent,
 * so the results do not depend on the schedule). */
static int run_jobs(job_t *jobs, int n, int n_threads, job_progress *prog) {
    pool_t p = {jobs, n, 0, 0, mem_budget(), 0, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, prog};
    if (n_threads > n) n_threads = n;
    if (n_threads > 64) n_threads = 64;
    pthread_t th[64];
    int started = 0;
    for (int t = 1; t < n_threads; t++)
        if (pthread_create(&th[started], NULL, worker, &p) == 0) started++;
    worker(&p);
    for (int t = 0; t < started; t++) pthread_join(th[t], NULL);
    pthread_cond_destroy(&p.cv);
    pthread_mutex_destroy(&p.mu);
    for (int i = 0; i < n; i++)
        if (jobs[i].rc) return mt_seterr(jobs[i].rc, "%s", jobs[i].err);
    return MT_OK;
}

mt_mat *mt_quant_layer_mat(mt_layer_weights *L, int k, int e) {
    switch (k) {
    case K_Q: return &L->wq;
    case K_K: return &L->wk;
    case K_V: return &L->wv;
    case K_O: return &L->wo;
    case K_W1: return &L->w1[e];
    case K_W3: return &L->w3[e];
    case K_SW1: return &L->sh_w1;
    case K_SW3: return &L->sh_w3;
    case K_SW2: return &L->sh_w2;
    default: return &L->w2[e];
    }
}

static void default_calib(const char *model_path, char *buf, size_t n) {
    struct stat sb;
    if (stat(model_path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        snprintf(buf, n, "%s/data/train.txt", model_path);
        return;
    }
    const char *sl = strrchr(model_path, '/');
    if (!sl) snprintf(buf, n, "data/train.txt");
    else snprintf(buf, n, "%.*s/data/train.txt", (int)(sl - model_path), model_path);
}

static double mat_bits_stored(const mt_mat *w) {
    uint64_t b = 0;
    if (mt_dtype_nbytes(w->dtype, (uint64_t)(w->rows * w->cols), &b)) return 0;
    return (double)b * 8;
}

/* The plan as JSON: {"token_embd": T, "output": T, "layers": [{"attn_q": T, ...}, ...]}. */
static char *plan_json(const mt_quant_plan *p, const mt_config *c) {
    static const char *const names[K_COUNT] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up",
                                               "ffn_down", "ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp"};
    const size_t cap = 256 + (size_t)c->n_layers * K_COUNT * 40;
    char *b = malloc(cap);
    if (!b) return NULL;
    size_t n = (size_t)snprintf(b, cap, "{\"token_embd\":\"%s\"", mt_dtype_name((mt_dtype)p->embd));
    if (p->head >= 0) n += (size_t)snprintf(b + n, cap - n, ",\"output\":\"%s\"", mt_dtype_name((mt_dtype)p->head));
    n += (size_t)snprintf(b + n, cap - n, ",\"layers\":[");
    for (int l = 0; l < p->n_layers; l++) {
        int first = 1;
        n += (size_t)snprintf(b + n, cap - n, "%s{", l ? "," : "");
        for (int k = 0; k < K_COUNT; k++) {
            const int t = p->type[l * K_COUNT + k];
            if (t < 0) continue;
            n += (size_t)snprintf(b + n, cap - n, "%s\"%s\":\"%s\"", first ? "" : ",", names[k], mt_dtype_name((mt_dtype)t));
            first = 0;
        }
        n += (size_t)snprintf(b + n, cap - n, "}");
    }
    snprintf(b + n, cap - n, "]}");
    return b;
}

/* Points a model matrix at a quantized one (block types; not qmoe). */
static void mat_view(mt_mat *dst, const qmat *q) {
    memset(dst, 0, sizeof *dst);
    dst->dtype = q->dtype;
    dst->rows = q->rows;
    dst->cols = q->cols;
    dst->data = q->data;
    dst->row_stride = q->row_bytes;
}

/* Rewrites a TQ2_0 matrix as TQ1_0 (lossless: same codes, same f16 d). */
static int repack_tq1(qmat *q) {
    uint64_t rb;
    int rc = mt_dtype_nbytes(MT_DT_TQ1_0, (uint64_t)q->cols, &rb);
    if (rc) return rc;
    uint8_t *out = malloc((size_t)(rb * (uint64_t)q->rows));
    if (!out) return mt_seterr(MT_ERR_NOMEM, "quantize: out of memory");
    const int64_t nb = q->cols / MT_QK_K;
    for (int64_t r = 0; r < q->rows; r++)
        for (int64_t b = 0; b < nb; b++) {
            int8_t c[MT_QK_K];
            const uint16_t d = mt_tq2_0_unpack(q->data + (uint64_t)r * q->row_bytes + MT_TQ2_0_BYTES * (uint64_t)b, c);
            mt_tq1_0_pack(c, d, out + (uint64_t)r * rb + MT_TQ1_0_BYTES * (uint64_t)b);
        }
    free(q->data);
    q->data = out;
    q->dtype = MT_DT_TQ1_0;
    q->row_bytes = rb;
    q->bits = MT_TQ1_0_BYTES * 8.0 / MT_QK_K;
    return MT_OK;
}

/* Codec qmoe: one dictionary from the symbol counts of all experts, every
 * expert coded with it and swapped into w as MT_DT_QMOE; the decoded f32
 * copies and the symbols are freed. *bits: all-in storage of the coded
 * experts including the dictionary block. */
static int code_experts(mt_quant_state *s, mt_weights *w, int scales, mt_quant_report *rep, double *bits) {
    const double t0 = mt_now();
    uint64_t counts[3] = {0, 0, 0}, code_bits = 0, total_bits = 8 * mt_qmoe_dict_bytes();
    int rc;
    for (int l = 0; l < s->n_layers; l++)
        for (int k = K_W1; k <= K_W2; k++)
            for (int e = 0; e < s->ne; e++) {
                const qmat *q = qm(s, l, k, e);
                if (q->used && q->syms && (rc = mt_qmoe_count(counts, q->syms, q->rows * q->cols))) return rc;
            }
    const uint64_t n = counts[0] + counts[1] + counts[2];
    if (!n) return mt_seterr(MT_ERR_INTERNAL, "quantize: --codec qmoe found no ternary experts to code");
    if ((rc = mt_qmoe_dict_build(&s->dict, counts, MT_QMOE_DICT_SIZE, MT_QMOE_MAX_LEN))) return rc;
    for (int l = 0; l < s->n_layers; l++)
        for (int k = K_W1; k <= K_W2; k++)
            for (int e = 0; e < s->ne; e++) {
                qmat *q = qm(s, l, k, e);
                if (!q->used || !q->syms) continue;
                if ((rc = mt_qmoe_encode(&q->coded, &s->dict, q->syms, q->lo, q->hi, q->rows, q->cols))) return rc;
                if (scales == MT_QMOE_SCALES_U8LOG && (rc = mt_qmoe_mat_set_scale8(&q->coded))) return rc;
                mt_qmoe_size sz;
                mt_qmoe_mat_size(&q->coded, &sz);
                code_bits += sz.code_bits;
                total_bits += sz.total_bits;
                mt_qmoe_mat_view(mt_quant_layer_mat(&w->layers[l], k, e), &q->coded);
                q->dtype = MT_DT_QMOE;
                q->row_bytes = 0;
                q->bits = (double)sz.total_bits / (double)(q->rows * q->cols);
                free(q->data);
                free(q->syms);
                free(q->lo);
                free(q->hi);
                q->data = NULL;
                q->syms = NULL;
                q->lo = q->hi = NULL;
            }
    double H = 0;
    for (int i = 0; i < 3; i++)
        if (counts[i]) H -= (double)counts[i] / (double)n * log2((double)counts[i] / (double)n);
    rep->symbol_entropy = H;
    rep->zero_frac = (double)counts[0] / (double)n;
    rep->code_bits_expert = (double)code_bits / (double)n;
    rep->code_seconds = mt_now() - t0;
    rep->qmoe_scales = scales;
    s->expert_dtype = MT_DT_QMOE;
    *bits = (double)total_bits;
    return MT_OK;
}

/* Whether some matrix of layer `layer` (-1: any layer) gets a grid GPTQ
 * cannot round onto (MT_GRID_ROW; want_row) or one it can (!want_row). */
static int has_grid(const mt_quant_opts *o, const mt_config *c, const mt_quant_plan *plan, int layer, int want_row) {
    mt_grid g;
    for (int l = layer < 0 ? 0 : layer; l < (layer < 0 ? c->n_layers : layer + 1); l++)
        for (int k = with_attn(o) ? K_Q : K_W1; k < K_COUNT; k++)
            if (!matrix_grid(&g, o, c, plan, k, l, k == K_W2 || k == K_SW2 ? c->ffn : k == K_O ? q_dim(c) : c->hidden,
                             "quantize") &&
                (g.kind == MT_GRID_ROW) == want_row) {
                mt_clearerr();
                return 1;
            }
    mt_clearerr();
    return 0;
}

/* The importance vector a matrix on grid g is written with: for the types
 * whose llama.cpp quantizer takes one (K-quants and legacy blocks error in
 * mt_row_from_f32_w until they do here), when im has it; iq_only: an
 * importance matrix only a plan's i-quants asked for, which leaves the
 * K-quants as they are written without one. */
static const float *job_qw(const mt_imatrix *im, int iq_only, const mt_grid *g, int l, int k, int e) {
    const mt_dtype_info *d = mt_dtype_get((mt_dtype)mt_grid_dtype(g));
    if (!im || !d || !(d->from_f32_w || g->kind == MT_GRID_BLOCK)) return NULL;
    if (iq_only && g->kind != MT_GRID_ROW) return NULL;
    return mt_imatrix_get(im, l, k, e);
}

/* --codec qmoe --target-bpw: every expert job of a layer is first run at
 * each candidate range (measure only, coded with a dictionary of the counts
 * chosen so far), then gets a range under the layer's share of the budget
 * (target · expert weights up to this layer, less what the layers before
 * took and the dictionary block): one for the whole layer
 * (mt_qmoe_range_choose_uniform, the default) or one per matrix
 * (mt_qmoe_range_choose, --qmoe-alloc matrix, weighing each matrix by its
 * expert's output energy ‖W2·mid‖² on its routed rows); the jobs then run
 * at those ranges. ranges[(k − K_W1) · ne + e] receives the choice (ne:
 * experts of the widest layer). */
static int choose_ranges(job_t *jobs, int nj, const mt_quant_opts *o,
                         const mt_layer_weights *L, int ne, float *ranges, mt_qmoe_range_probe *probes, double *weight,
                         int *choice, uint64_t counts[3], double *used, double *params, int nthreads,
                         job_progress *prog) {
    const int lne = L->n_experts > 0 ? L->n_experts : 1;
    mt_qmoe_dict dict;
    memset(&dict, 0, sizeof dict);
    /* layer 0: a prior at the default range's 86 % zeros */
    const uint64_t prior[3] = {860000, 70000, 70000};
    int rc = mt_qmoe_dict_build(&dict, counts[0] + counts[1] + counts[2] ? counts : prior, MT_QMOE_DICT_SIZE,
                                MT_QMOE_MAX_LEN);
    if (rc) return rc;
    int *idx = malloc((size_t)nj * 2 * sizeof *idx), n = 0, *idx_e = idx + nj;
    if (!idx) {
        mt_qmoe_dict_free(&dict);
        return mt_seterr(MT_ERR_NOMEM, "quantize: out of memory");
    }
    for (int i = 0; i < nj; i++) {
        if (!jobs[i].keep_syms) continue;
        jobs[i].probe = &probes[n];
        jobs[i].probe_dict = &dict;
        jobs[i].mem = job_mem(&jobs[i]);
        idx[n++] = i;
    }
    job_t *pj = malloc((size_t)(n ? n : 1) * sizeof *pj);
    if (!pj) rc = mt_seterr(MT_ERR_NOMEM, "quantize: out of memory");
    for (int i = 0; !rc && i < n; i++) pj[i] = jobs[idx[i]];
    if (!rc) rc = run_jobs(pj, n, nthreads, prog);
    for (int i = 0; !rc && i < n; i++) {
        job_t *j = &jobs[idx[i]];
        /* the expert whose rows these are (w2's are its intermediates) */
        int e = 0;
        for (int ee = 0; ee < lne; ee++)
            if (j->src == &L->w1[ee] || j->src == &L->w3[ee] || j->src == &L->w2[ee]) e = ee;
        *params += (double)(j->src->rows * j->src->cols);
        idx_e[i] = e;
    }
    /* weight: the expert's output energy ‖W2 mid‖² on its routed rows, so
     * that every matrix's relative error is counted in the residual
     * stream's units (w1/w3 errors reach it through w2) */
    for (int i = 0; !rc && i < n; i++) {
        weight[i] = 0;
        for (int i2 = 0; i2 < n; i2++)
            if (idx_e[i2] == idx_e[i] && jobs[idx[i2]].src == &L->w2[idx_e[i]]) weight[i] = probes[i2].ref;
    }
    double got = 0;
    if (!rc) {
        /* 0.001 bit per weight held back: the sizes are measured with this
         * layer's reference dictionary, the final code uses all layers' counts */
        const double budget = (o->target_bpw - 0.001) * *params - *used;
        /* over budget: the fewest bits, reported at the end */
        if (o->qmoe_alloc == MT_QMOE_ALLOC_MATRIX)
            mt_qmoe_range_choose(probes, weight, n, budget, choice, &got);
        else
            mt_qmoe_range_choose_uniform(probes, n, budget, choice, &got);
        *used += got;
    }
    for (int i = 0; !rc && i < n; i++) {
        job_t *j = &jobs[idx[i]];
        j->probe = NULL;
        j->probe_dict = NULL;
        j->gp.ternary_range = mt_qmoe_range_cands[choice[i]];
        j->mem = job_mem(j);
        for (int s = 0; s < 3; s++) counts[s] += probes[i].counts[choice[i]][s];
        for (int ee = 0; ee < lne; ee++) {
            if (j->src == &L->w1[ee]) ranges[0 * ne + ee] = (float)j->gp.ternary_range;
            if (j->src == &L->w3[ee]) ranges[1 * ne + ee] = (float)j->gp.ternary_range;
            if (j->src == &L->w2[ee]) ranges[2 * ne + ee] = (float)j->gp.ternary_range;
        }
    }
    free(pj);
    free(idx);
    mt_qmoe_dict_free(&dict);
    return rc;
}

int mt_quant_model(mt_quant_state **out, mt_model *m, const mt_quant_opts *o, mt_quant_report *rep) {
    *out = NULL;
    memset(rep, 0, sizeof *rep);
    const mt_config *c = mt_model_config(m);
    /* The model's weight table is ours to repoint: matrices are views. */
    mt_weights *w = (mt_weights *)mt_model_weights(m);
    int rc = mt_quant_check(o, c, 0);
    if (rc) return rc;
    /* Quantizing already-quantized weights would report the source's loss as
     * none: the matrices to quantize must be stored as floats, or in one of
     * llama.cpp's read-only types (K-quants, q4_1/q5_x, iq4: what users
     * download, with no original at hand), which are dequantized to f32 and
     * named in the report (source_dtype) so the CLI says so. moetool's own
     * grids (q8_0, q4_0, ternary, qmoe) are refused: start from the original.
     * (The K-quants and q4_1/q5_x are written by moetool too, but they are
     * what llama.cpp's files hold; they are dequantized.) */
    rep->source_dtype = -1;
    for (int l = 0; l < c->n_layers; l++) {
        mt_layer_weights *L = &w->layers[l];
        for (int k = with_attn(o) ? K_Q : K_W1; k < K_COUNT; k++)
            for (int e = 0; e < (k <= K_O || k >= K_SW1 ? 1 : L->n_experts > 0 ? L->n_experts : 1); e++) {
                if (!mt_quant_layer_mat(L, k, e)->data) continue;
                const mt_dtype t = mt_quant_layer_mat(L, k, e)->dtype;
                if (mt_dtype_is_plain_float(t)) continue;
                const mt_dtype_info *di = mt_dtype_get(t);
                if (di && di->to_f32 && (!di->from_f32 || di->blk || di->from_f32_w) && t != MT_DT_TQ1_0 && t != MT_DT_TQ2_0) {
                    if (rep->source_dtype < 0) rep->source_dtype = (int)t;
                    else if (rep->source_dtype != (int)t) rep->source_mixed = 1;
                    continue;
                }
                return mt_seterr(MT_ERR_ARG, "%s: layer %d is already quantized (%s); quantize the original weights",
                                 mt_ckpt_path(mt_model_ckpt(m)), l, mt_dtype_name(t));
            }
    }
    const double t0 = mt_now();
    mt_param_stats ps;
    mt_model_param_stats(m, &ps);
    int ne = 1;
    for (int l = 0; l < c->n_layers; l++)
        if (w->layers[l].n_experts > ne) ne = w->layers[l].n_experts;
    mt_quant_state *s = calloc(1, sizeof *s);
    int32_t *ids = NULL;
    size_t n_ids = 0;
    job_t *jobs = NULL;
    mt_calib_capture cc;
    memset(&cc, 0, sizeof cc);
    mt_imatrix im_store, *im = NULL;
    memset(&im_store, 0, sizeof im_store);
    mt_quant_plan plan; /* freed at fail: set before the first goto */
    memset(&plan, 0, sizeof plan);
    mt_qmoe_range_probe *probes = NULL; /* --codec qmoe --target-bpw */
    double *rb_weight = NULL;
    int *rb_choice = NULL;
    if (!s) return mt_seterr(MT_ERR_NOMEM, "quantize: out of memory");
    s->n_layers = c->n_layers;
    s->ne = ne;
    s->q = calloc((size_t)c->n_layers * K_COUNT * (size_t)ne, sizeof *s->q);
    rep->n_layers = c->n_layers;
    rep->n_experts = c->n_experts;
    rep->expert_tokens = calloc((size_t)c->n_layers * (size_t)ne, sizeof *rep->expert_tokens);
    jobs = calloc((size_t)K_COUNT * (size_t)ne, sizeof *jobs);
    if (!s->q || !rep->expert_tokens || !jobs) {
        rc = mt_seterr(MT_ERR_NOMEM, "quantize: out of memory");
        goto fail;
    }
    const int gptq = o->method == MT_QUANT_GPTQ;
    const int W = calib_window(o, c);
    /* a plan with i-quant candidates measures and writes them with the
     * importance matrix: computed here unless given (then only they use it) */
    const int plan_iq = planned(o) && o->plan_iquants;
    const int im_calib = !o->imatrix_path && (o->imatrix_calib || (gptq && has_grid(o, c, NULL, -1, 1)) || plan_iq);
    const int im_iq_only = plan_iq && !o->imatrix_path && !o->imatrix_calib;
    if (gptq || planned(o) || im_calib) {
        char def[4096];
        const char *cp = o->calib_path;
        if (!cp) {
            default_calib(mt_ckpt_path(mt_model_ckpt(m)), def, sizeof def);
            cp = def;
        }
        const int max_pos = mt_model_config(m)->max_pos;
        if (max_pos > 0 && W > max_pos && !o->allow_long_context) {
            rc = mt_seterr(MT_ERR_ARG, "calibration windows of %d tokens are longer than the model's context of %d "
                           "(max_position_embeddings); --allow-long-context to calibrate anyway", W, max_pos);
            goto fail;
        }
        if ((rc = mt_calib_tokens(m, cp, o->calib_tokens, &ids, &n_ids))) goto fail;
        n_ids = (size_t)o->calib_tokens / (size_t)W * (size_t)W;
        if (gptq) rep->n_calib_tokens = (int)n_ids;
    }
    if (o->mix) s->file_type = (uint32_t)o->mix;
    if (o->imatrix_path || im_calib) {
        const double ti = mt_now();
        if ((rc = o->imatrix_path ? mt_imatrix_read(&im_store, m, o->imatrix_path)
                                  : mt_imatrix_compute(&im_store, m, ids, n_ids, W)))
            goto fail;
        im = &im_store;
        rep->calib_seconds += mt_now() - ti;
        if (o->imatrix_out && (rc = mt_imatrix_write(im, o->imatrix_out, o->calib_path ? o->calib_path : "")))
            goto fail;
    }
    if (planned(o)) {
        const double tp = mt_now();
        if ((rc = mt_quant_plan_make(&plan, m, o, plan_iq ? im : NULL, ids, n_ids, W))) goto fail;
        rep->calib_seconds += mt_now() - tp;
        s->file_type = mt_dtype_gguf_file_type((mt_dtype)plan.dominant);
        if (!(rep->plan = plan_json(&plan, c))) {
            rc = mt_seterr(MT_ERR_NOMEM, "quantize: out of memory");
            goto fail;
        }
    }
    mt_grid ge;
    matrix_grid(&ge, o, c, NULL, K_W1, 0, c->hidden, "experts");
    char nm[48];
    mt_grid_name(&ge, nm, sizeof nm);
    if (o->mix) snprintf(rep->grid_name, sizeof rep->grid_name, "llama.cpp mix %s", mt_quant_mix_name(o->mix));
    else if (planned(o)) snprintf(rep->grid_name, sizeof rep->grid_name, "per-tensor types (plan)");
    else snprintf(rep->grid_name, sizeof rep->grid_name, "%s", nm);
    rep->attn_dtype = (mt_dtype)-1;
    double qbits_new = 0, qbits_old = 0, ebits = 0, eparams = 0, rel_sum = 0;
    int rel_n = 0;
    const int nthreads = mt_model_threads(m);
    mt_gptq_params gp = {o->damp, o->block, mt_quant_act_order(o),
                         o->ternary_range > 0 ? o->ternary_range
                         : o->codec == MT_QUANT_CODEC_QMOE ? MT_QUANT_TERNARY_RANGE_QMOE : 1.0,
                         mt_quant_qmoe_scales(o)};
    job_progress prog = {o->progress, o->progress_user, 0, 0, 0, c->n_layers};
    for (int l = 0; l < c->n_layers; l++)
        prog.total += (uint64_t)(with_attn(o) ? 4 : 0) +
                      3 * (uint64_t)(w->layers[l].n_experts > 0 ? w->layers[l].n_experts : 1) * (range_budget(o) ? 2 : 1);
    /* --codec qmoe --target-bpw: a ternary range per expert matrix (qmoe_range.c) */
    uint64_t rb_counts[3] = {0, 0, 0};
    double rb_used = 8.0 * (double)mt_qmoe_dict_bytes(), rb_params = 0;
    if (range_budget(o)) {
        probes = calloc((size_t)K_COUNT * (size_t)ne, sizeof *probes);
        rb_weight = calloc((size_t)K_COUNT * (size_t)ne, sizeof *rb_weight);
        rb_choice = calloc((size_t)K_COUNT * (size_t)ne, sizeof *rb_choice);
        rep->ternary_ranges = calloc((size_t)c->n_layers * 3 * (size_t)ne, sizeof *rep->ternary_ranges);
        if (!probes || !rb_weight || !rb_choice || !rep->ternary_ranges) {
            rc = mt_seterr(MT_ERR_NOMEM, "quantize: out of memory");
            goto fail;
        }
    }
    for (int l = 0; l < c->n_layers; l++) {
        mt_layer_weights *L = &w->layers[l];
        const int lne = L->n_experts > 0 ? L->n_experts : 1;
        const int attn = with_attn(o);
        /* no capture for a layer GPTQ has nothing to round in (all iq4) */
        if (gptq && has_grid(o, c, plan.type ? &plan : NULL, l, 0)) {
            const double tc = mt_now();
            if (o->progress) {
                char what[64];
                snprintf(what, sizeof what, "quantize: matrix; layer %d/%d, calibrating", l + 1, c->n_layers);
                o->progress(o->progress_user, what, prog.done, prog.total);
            }
            uint64_t cap = (uint64_t)ceil(o->expert_cap * (double)n_ids *
                                          (L->n_experts > 0 ? (double)c->top_k / L->n_experts : 1.0));
            if ((rc = mt_calib_capture_layer(m, l, ids, n_ids, W, attn, cap, &cc))) goto fail;
            if (L->sh_w1.data && cc.ffn_in.n == 0) {
                rc = mt_seterr(MT_ERR_INTERNAL, "quantize: layer %d: no calibration rows for the shared expert", l);
                goto fail;
            }
            rep->calib_seconds += mt_now() - tc;
            for (int e = 0; e < lne; e++) rep->expert_tokens[(size_t)l * ne + e] = (uint64_t)cc.x[e].n;
        }
        /* Largest working sets first: w2 (ffn-wide Hessian) before w1/w3
         * and attention, so that the big jobs overlap each other and the
         * small ones fill in at the end. */
        static const int order[K_COUNT] = {K_SW2, K_W2, K_SW1, K_SW3, K_W1, K_W3, K_Q, K_K, K_V, K_O};
        int nj = 0;
        for (int ki = 0; ki < K_COUNT; ki++) {
            const int k = order[ki];
            int is_attn = k <= K_O, is_shared = k >= K_SW1;
            if (is_attn && !attn) continue;
            /* the shared expert: not under the qmoe code, which holds routed experts */
            if (is_shared && (!L->sh_w1.data || o->codec == MT_QUANT_CODEC_QMOE)) continue;
            for (int e = 0; e < (is_attn || is_shared ? 1 : lne); e++) {
                job_t *j = &jobs[nj++];
                memset(j, 0, sizeof *j);
                j->src = mt_quant_layer_mat(L, k, e);
                j->out = qm(s, l, k, e);
                j->gp = gp;
                j->keep_syms = !is_attn && o->codec == MT_QUANT_CODEC_QMOE;
                if ((rc = matrix_grid(&j->grid, o, c, plan.type ? &plan : NULL, k, l, j->src->cols, "quantize"))) goto fail;
                if (gptq && j->grid.kind != MT_GRID_ROW) {
                    if (is_attn) {
                        /* q/k/v on the attention input; o_proj on the
                         * attention output of the same pass. */
                        j->x = k == K_O ? &cc.attn_out : &cc.attn;
                    } else if (is_shared) { /* every token's FFN input */
                        j->x = &cc.ffn_in;
                        if (k == K_SW2) {
                            j->w1 = &L->sh_w1;
                            j->w3 = &L->sh_w3;
                        }
                    } else if ((uint64_t)cc.x[e].n < (uint64_t)(o->min_expert_tokens > 0 ? o->min_expert_tokens : 1)) {
                        j->x = NULL;
                        if (k == K_W1) {
                            rep->n_rtn_fallback++;
                            mt_log(MT_LOG_WARN, "quantize: layer %d expert %d got %llu calibration tokens; rounded (RTN)", l,
                                   e, (unsigned long long)cc.x[e].n);
                        }
                    } else {
                        j->x = &cc.x[e];
                        if (k == K_W2) {
                            j->w1 = &L->w1[e];
                            j->w3 = &L->w3[e];
                        }
                    }
                }
                if (!j->x) j->qw = job_qw(im, im_iq_only, &j->grid, l, k, e);
                j->mem = job_mem(j);
            }
        }
        prog.layer = l;
        if (range_budget(o) && (rc = choose_ranges(jobs, nj, o, L, ne, rep->ternary_ranges + (size_t)l * 3 * ne,
                                                   probes, rb_weight, rb_choice, rb_counts, &rb_used, &rb_params,
                                                   nthreads, &prog)))
            goto fail;
        if ((rc = run_jobs(jobs, nj, nthreads, &prog))) goto fail;
        for (int i = 0; i < nj; i++) {
            job_t *j = &jobs[i];
            const double numel = (double)(j->src->rows * j->src->cols);
            qbits_old += mat_bits_stored(j->src);
            qbits_new += j->out->bits * numel;
            if (j->rel_err >= 0) {
                rel_sum += j->rel_err;
                rel_n++;
            }
            int is_attn = j->out == qm(s, l, K_Q, 0) || j->out == qm(s, l, K_K, 0) || j->out == qm(s, l, K_V, 0) ||
                          j->out == qm(s, l, K_O, 0);
            if (!is_attn) {
                ebits += j->out->bits * numel;
                eparams += numel;
                s->expert_dtype = j->out->dtype;
            } else {
                rep->attn_dtype = j->out->dtype;
            }
            /* Swap the quantized matrix in: later layers calibrate on it. */
            mat_view((mt_mat *)j->src, j->out);
        }
        mt_calib_capture_free(&cc);
    }
    if (o->tq1) {
        /* TQ2_0 -> TQ1_0: the same codes and scales, packed 5 per byte. */
        for (int l = 0; l < c->n_layers; l++)
            for (int k = 0; k < K_COUNT; k++)
                for (int e = 0; e < s->ne; e++) {
                    qmat *q = qm(s, l, k, e);
                    if (!q->used || q->dtype != MT_DT_TQ2_0) continue;
                    const double numel = (double)(q->rows * q->cols), old_bits = q->bits;
                    if ((rc = repack_tq1(q))) goto fail;
                    qbits_new += (q->bits - old_bits) * numel;
                    if (k > K_O) {
                        ebits += (q->bits - old_bits) * numel;
                        s->expert_dtype = MT_DT_TQ1_0;
                    } else {
                        rep->attn_dtype = MT_DT_TQ1_0;
                    }
                    mat_view(mt_quant_layer_mat(&w->layers[l], k, e), q);
                }
        snprintf(rep->grid_name, sizeof rep->grid_name, "tq1_0");
    }
    if (with_embed(o)) {
        /* Token embeddings by round to nearest: a lookup has no input
         * statistics. An untied lm_head by GPTQ on the final-norm outputs of
         * the calibration windows run through the quantized model (its
         * embeddings included), RTN without calibration. A tied matrix
         * serves both and stays RTN. */
        const int tied = c->tie_embeddings;
        mt_mat *src[2] = {&w->tok_embd, tied ? NULL : &w->lm_head};
        qmat *dst[2] = {&s->embd, &s->head};
        mt_calib_rows fx;
        mt_calib_rows_init(&fx, c->hidden);
        for (int i = 0; i < 2; i++) {
            if (!src[i]) continue;
            job_t j;
            memset(&j, 0, sizeof j);
            j.src = src[i];
            j.out = dst[i];
            j.gp = gp;
            if (plan.type) {
                rc = mt_grid_make_type(&j.grid, i ? plan.head : plan.embd, src[i]->cols, "quantize");
            } else if (o->mix) {
                const mt_quant_role role = i ? MT_QROLE_OUTPUT : tied ? MT_QROLE_EMBD_TIED : MT_QROLE_EMBD;
                rc = mt_grid_make_type(&j.grid, mt_quant_mix_type(o->mix, role, 0, c, src[i]->cols, mix_has_imatrix(o)), src[i]->cols,
                                       "quantize");
            } else if (o->embed_type >= 0) {
                rc = mt_grid_make_type(&j.grid, o->embed_type, src[i]->cols, "--embed-type");
            } else {
                rc = mt_grid_make(&j.grid, o->embed_bits, MT_QUANT_GROUP_DEFAULT, src[i]->cols, "--embed-bits");
            }
            if (rc) goto fail;
            if (i == 1 && gptq && j.grid.kind != MT_GRID_ROW) {
                const double tc = mt_now();
                if ((rc = mt_calib_capture_final(m, ids, n_ids, W, &fx))) goto fail;
                rep->calib_seconds += mt_now() - tc;
                j.x = &fx;
            }
            if (i == 1 && !j.x) j.qw = job_qw(im, im_iq_only, &j.grid, -1, 0, 0);
            run_job(&j);
            mt_calib_rows_free(&fx);
            if ((rc = j.rc)) {
                mt_seterr(rc, "%s", j.err);
                goto fail;
            }
            if (j.rel_err >= 0) {
                rel_sum += j.rel_err;
                rel_n++;
            }
            qbits_old += mat_bits_stored(src[i]);
            qbits_new += j.out->bits * (double)(src[i]->rows * src[i]->cols);
            mat_view(src[i], j.out);
        }
        if (tied) w->lm_head = w->tok_embd;
    }
    if (o->codec == MT_QUANT_CODEC_QMOE) {
        double coded_bits = 0;
        if ((rc = code_experts(s, w, mt_quant_qmoe_scales(o), rep, &coded_bits))) goto fail;
        qbits_new += coded_bits - ebits;
        ebits = coded_bits;
    }
    if (range_budget(o) && eparams > 0 && ebits / eparams > o->target_bpw)
        mt_log(MT_LOG_WARN, "quantize: the experts take %.4f bits per weight, over --target-bpw %g (the widest range "
               "everywhere was not enough, or the final code differs from its per-layer estimate)", ebits / eparams,
               o->target_bpw);
    rep->expert_dtype = s->expert_dtype;
    rep->expert_params = (uint64_t)eparams;
    rep->total_params = ps.total;
    rep->bits_expert = eparams > 0 ? ebits / eparams : 0;
    rep->bits_total = ps.total ? ((double)ps.weight_bytes * 8 - qbits_old + qbits_new) / (double)ps.total : 0;
    rep->mean_rel_err = rel_n ? rel_sum / rel_n : 0;
    rep->seconds = mt_now() - t0;
    rep->peak_rss = mt_peak_rss_bytes();
    mt_quant_plan_free(&plan);
    mt_imatrix_free(&im_store);
    free(ids);
    free(jobs);
    free(probes);
    free(rb_weight);
    free(rb_choice);
    snprintf(s->grid_name, sizeof s->grid_name, "%s", rep->grid_name);
    s->bits_expert = rep->bits_expert;
    s->bits_total = rep->bits_total;
    *out = s;
    return MT_OK;
fail:
    mt_calib_capture_free(&cc);
    mt_quant_plan_free(&plan);
    mt_imatrix_free(&im_store);
    free(ids);
    free(jobs);
    free(probes);
    free(rb_weight);
    free(rb_choice);
    mt_quant_state_free(s);
    mt_quant_report_free(rep);
    return rc;
}

/* ---- GGUF output ------------------------------------------------------------ */
/* (layer, kind, expert) of a tensor name in a format, by the family's role
 * table; -1 when not a quantized kind. A stacked GGUF expert tensor gives
 * expert -1. */
static int kind_of_role(mt_role role) {
    switch (role) {
    case MT_ROLE_WQ: return K_Q;
    case MT_ROLE_WK: return K_K;
    case MT_ROLE_WV: return K_V;
    case MT_ROLE_WO: return K_O;
    case MT_ROLE_EXP_GATE: case MT_ROLE_FFN_GATE: return K_W1;
    case MT_ROLE_EXP_UP: case MT_ROLE_FFN_UP: return K_W3;
    case MT_ROLE_EXP_DOWN: case MT_ROLE_FFN_DOWN: return K_W2;
    case MT_ROLE_SHEXP_GATE: return K_SW1;
    case MT_ROLE_SHEXP_UP: return K_SW3;
    case MT_ROLE_SHEXP_DOWN: return K_SW2;
    default: return -1;
    }
}

static int role_kind(const mt_config *c, const char *name, mt_format fmt, int *layer, int *expert) {
    int l = -1, e = -1;
    const mt_arch_tensor *t = mt_arch_parse(mt_arch_get(c->arch), name, fmt, &l, &e);
    *layer = l;
    *expert = e < 0 ? 0 : e;
    return t ? kind_of_role(t->role) : -1;
}

/* The quantized embeddings / lm_head of a role, or NULL. */
static const qmat *embed_q_role(const mt_quant_state *s, const mt_arch_tensor *t) {
    const qmat *q = NULL;
    if (t && t->role == MT_ROLE_TOK_EMBD) q = &s->embd;
    else if (t && t->role == MT_ROLE_LM_HEAD) q = &s->head;
    return q && q->used ? q : NULL;
}

/* The quantized embeddings / lm_head for a tensor name, or NULL. */
static const qmat *embed_q(const mt_quant_state *s, const mt_config *c, const char *name, mt_format fmt) {
    return embed_q_role(s, mt_arch_parse(mt_arch_get(c->arch), name, fmt, NULL, NULL));
}

/* What quantize did, for config.json / README.md or the GGUF key
 * moetool.provenance (lib/io/provenance.c). */
static mt_prov *quant_provenance(const mt_quant_state *s, const mt_model *m, const mt_quant_opts *o) {
    mt_prov *p = mt_prov_new("quantize", s->source ? s->source : mt_ckpt_path(mt_model_ckpt(m)));
    if (!p) return NULL;
    mt_prov_tag(p, "moe");
    mt_prov_tag(p, "quantized");
    mt_prov_str(p, "method", o->method == MT_QUANT_GPTQ ? "gptq" : "rtn");
    mt_prov_str(p, "experts", s->grid_name);
    if (o->codec == MT_QUANT_CODEC_QMOE) {
        mt_prov_str(p, "codec", "qmoe");
        mt_prov_str(p, "qmoe_scales", mt_quant_qmoe_scales(o) == MT_QMOE_SCALES_U8LOG ? "u8log" : "f16");
    }
    if (o->attn_bits) mt_prov_int(p, "attention_bits", o->attn_bits);
    if (o->attn_type >= 0) mt_prov_str(p, "attention_type", mt_dtype_name((mt_dtype)o->attn_type));
    if (o->embed_type >= 0) mt_prov_str(p, "embedding_type", mt_dtype_name((mt_dtype)o->embed_type));
    if (o->mix) mt_prov_str(p, "llama_cpp_mix", mt_quant_mix_name(o->mix));
    if (o->embed_bits) mt_prov_int(p, "embedding_bits", o->embed_bits);
    mt_prov_num(p, "bits_per_expert_weight", s->bits_expert);
    mt_prov_num(p, "bits_per_weight", s->bits_total);
    if (o->method == MT_QUANT_GPTQ) {
        if (o->calib_path) mt_prov_str(p, "calibration_text", o->calib_path);
        mt_prov_int(p, "calibration_tokens", o->calib_tokens);
        mt_prov_num(p, "damp", o->damp);
        if (mt_quant_act_order(o)) mt_prov_int(p, "act_order", 1);
        if (o->ternary_range > 0) mt_prov_num(p, "ternary_range", o->ternary_range);
        if (range_budget(o)) {
            mt_prov_num(p, "qmoe_target_bpw", o->target_bpw);
            mt_prov_str(p, "qmoe_alloc", o->qmoe_alloc == MT_QMOE_ALLOC_MATRIX ? "matrix" : "layer");
        }
    }
    mt_prov_command(p, o->command);
    return p;
}

/* The key moetool.provenance: what quantize did. */
static int put_provenance(const mt_quant_state *s, const mt_model *m, const mt_quant_opts *o, mt_gguf_writer *gw,
                          const char *out_path) {
    mt_prov *p = quant_provenance(s, m, o);
    char *pj = mt_prov_json(p);
    int rc = pj ? mt_gguf_writer_kv_str(gw, "moetool.provenance", pj, strlen(pj))
                : mt_seterr(MT_ERR_NOMEM, "%s: out of memory", out_path);
    free(pj);
    mt_prov_free(p);
    return rc;
}

/* a mix is its own file type (Q4_K_M's experts are q4_K and q6_K); a plan
 * takes that of its dominant type */
static uint32_t out_file_type(const mt_quant_state *s) {
    return s->file_type ? s->file_type : mt_dtype_gguf_file_type(s->expert_dtype);
}

int mt_quant_export_open(mt_gguf_export **x, const mt_ckpt *ck) {
    mt_convert_opts co;
    mt_convert_opts_default(&co);
    co.to = MT_FMT_GGUF;
    co.moetool_only = 1; /* the runtime runs per-layer expert counts */
    return mt_gguf_export_open(x, ck, &co);
}

/* ---- GGUF output of a Hugging Face source: convert's GGUF of it (lib/io's
 * export: names, order, metadata, types, Q/K order) with the quantized
 * matrices in place of theirs. The model was loaded in that GGUF layout
 * (mt_model_opts.gguf_layout), so they are in GGUF row order already. */
typedef struct {
    const mt_quant_state *s;
    const mt_model *m;
    const mt_quant_opts *o;
    const mt_gguf_export *x;
    const char *out_path;
} export_ctx;

/* The quantized matrix of export tensor i (expert e of a stacked one), or NULL. */
static const qmat *export_q(const export_ctx *x, size_t i, int e) {
    mt_quant_state *s = (mt_quant_state *)x->s;
    mt_gguf_export_tensor t;
    mt_gguf_export_tensor_get(x->x, i, &t);
    const int k = t.role ? kind_of_role(t.role->role) : -1;
    if (k >= 0 && t.layer >= 0 && t.layer < s->n_layers && qm(s, t.layer, k, 0)->used)
        return e < s->ne ? qm(s, t.layer, k, e < 0 ? 0 : e) : NULL;
    return embed_q_role(s, t.role);
}

static mt_dtype export_type(void *user, size_t i, mt_dtype planned) {
    const qmat *q = export_q(user, i, 0);
    return q ? q->dtype : planned;
}

static int export_data(void *user, size_t i, int e, const void **data, uint64_t *n) {
    const qmat *q = export_q(user, i, e);
    *data = q ? q->data : NULL;
    *n = q ? q->row_bytes * (uint64_t)q->rows : 0;
    return MT_OK;
}

static int export_kvs(void *user, mt_gguf_writer *w) {
    const export_ctx *x = user;
    return put_provenance(x->s, x->m, x->o, w, x->out_path);
}

static int write_gguf_export(const mt_quant_state *s, const mt_model *m, const mt_quant_opts *o, const char *out_path) {
    mt_gguf_export *x = NULL;
    int rc = mt_quant_export_open(&x, mt_model_ckpt(m));
    if (rc) return rc;
    export_ctx ctx = {s, m, o, x, out_path};
    for (size_t i = 0; i < mt_gguf_export_count(x) && !rc; i++) {
        mt_gguf_export_tensor t;
        mt_gguf_export_tensor_get(x, i, &t);
        const qmat *q = export_q(&ctx, i, 0);
        if (q && (q->dtype == MT_DT_F32 || q->dtype == MT_DT_QMOE))
            rc = mt_seterr(MT_ERR_ARG, "%s: %s was quantized on a grid without a GGUF type", out_path, t.name);
        for (int e = 0; q && !rc && e < t.n_experts; e++)
            if (!export_q(&ctx, i, e) || !export_q(&ctx, i, e)->used)
                rc = mt_seterr(MT_ERR_INTERNAL, "%s: expert %d of %s was not quantized", out_path, e, t.name);
    }
    const mt_gguf_export_hooks h = {1, out_file_type(s), export_kvs, export_type, export_data, &ctx};
    if (!rc) rc = mt_gguf_export_write(x, out_path, &h);
    mt_gguf_export_free(x);
    return rc;
}

int mt_quant_write_gguf(const mt_quant_state *s0, const mt_model *m, const mt_quant_opts *o, const char *out_path) {
    mt_quant_state *s = (mt_quant_state *)s0;
    const mt_gguf *g = mt_ckpt_gguf(mt_model_ckpt(m));
    const mt_config *c = mt_model_config(m);
    if (!g) {
        const mt_arch *fam = mt_arch_get(c->arch);
        if (fam && c->rope_style != (int)fam->gguf_rope)
            return mt_seterr(MT_ERR_ARG, "%s: quantized GGUF output of a Hugging Face model needs it loaded in GGUF "
                             "layout (mt_model_opts.gguf_layout)", out_path);
        return write_gguf_export(s, m, o, out_path);
    }
    const size_t nt = mt_gguf_tensor_count(g);
    int rc;
    mt_gguf_writer *gw = NULL;
    const uint32_t ftype = out_file_type(s);
    if ((rc = mt_gguf_writer_open(&gw, out_path))) return rc;
    for (size_t k = 0; k < mt_gguf_key_count(g) && !rc; k++) {
        const char *key = mt_gguf_key_name(g, (int)k);
        if (!strcmp(key, "general.alignment") || !strcmp(key, "general.quantized_by") ||
            !strcmp(key, "moetool.provenance"))
            continue;
        if (!strcmp(key, "general.file_type")) {
            rc = mt_gguf_writer_kv_u32(gw, key, ftype);
            continue;
        }
        mt_gguf_type t;
        const void *raw;
        size_t len;
        rc = mt_gguf_kv_raw(g, (int)k, &t, &raw, &len);
        if (!rc) rc = mt_gguf_writer_kv_raw(gw, key, t, raw, len);
    }
    if (!rc && mt_gguf_find_key(g, "general.file_type") < 0)
        rc = mt_gguf_writer_kv_u32(gw, "general.file_type", ftype);
    if (!rc) rc = mt_gguf_writer_kv_quantized_by(gw, ftype);
    if (!rc) rc = put_provenance(s, m, o, gw, out_path);
    for (size_t i = 0; i < nt && !rc; i++) {
        const mt_tensor *t = mt_gguf_tensor(g, i);
        int l = -1, e0, k = role_kind(c, t->name, MT_FMT_GGUF, &l, &e0);
        mt_dtype dt = t->dtype;
        const qmat *eq = embed_q(s, c, t->name, MT_FMT_GGUF);
        if (eq) dt = eq->dtype;
        if (k >= 0 && l >= 0 && l < s->n_layers && qm(s, l, k, 0)->used) {
            dt = qm(s, l, k, 0)->dtype;
            if (dt == MT_DT_F32 || dt == MT_DT_QMOE) {
                rc = mt_seterr(MT_ERR_ARG, "%s: %s was quantized on a grid without a GGUF type", out_path, t->name);
                break;
            }
        }
        rc = mt_gguf_writer_add_tensor(gw, t->name, dt, t->n_dims, t->shape);
    }
    for (size_t i = 0; i < nt && !rc; i++) {
        const mt_tensor *t = mt_gguf_tensor(g, i);
        int l = -1, e0, k = role_kind(c, t->name, MT_FMT_GGUF, &l, &e0);
        if (k >= 0 && l >= 0 && l < s->n_layers && qm(s, l, k, 0)->used) {
            int n_e = t->n_dims == 3 ? (int)t->shape[0] : 1;
            if (n_e > s->ne) {
                rc = mt_seterr(MT_ERR_FORMAT, "%s: %s has %d experts", out_path, t->name, n_e);
                break;
            }
            for (int e = 0; e < n_e && !rc; e++) {
                const qmat *q = qm(s, l, k, e);
                if (!q->used) {
                    rc = mt_seterr(MT_ERR_INTERNAL, "%s: expert %d of %s was not quantized", out_path, e, t->name);
                    break;
                }
                rc = mt_gguf_writer_write(gw, q->data, (size_t)(q->row_bytes * (uint64_t)q->rows));
            }
        } else if (embed_q(s, c, t->name, MT_FMT_GGUF)) {
            const qmat *eq = embed_q(s, c, t->name, MT_FMT_GGUF);
            rc = mt_gguf_writer_write(gw, eq->data, (size_t)(eq->row_bytes * (uint64_t)eq->rows));
        } else {
            rc = mt_gguf_writer_write(gw, t->data, (size_t)t->nbytes);
        }
    }
    if (!rc) rc = mt_gguf_writer_finish(gw);
    mt_gguf_writer_free(gw);
    return rc;
}

/* ---- Hugging Face output ------------------------------------------------------
 * Quantized linears in the AutoGPTQ / GPTQModel layout (checkpoint_format
 * "gptq": zero points stored minus one), which holds Q8_0 and Q4_0 exactly:
 * both are d·(q − z) with one f16 d per 32 columns and the symmetric zero
 * z = 128 / 8. qmoe-coded experts as blobs (docs/qmoe.md). */

/* The quantized matrix stored for an HF tensor name, or NULL. */
static const qmat *hf_q(const mt_quant_state *s0, const mt_config *c, const char *name) {
    mt_quant_state *s = (mt_quant_state *)s0;
    int l, e, k = role_kind(c, name, MT_FMT_HF, &l, &e);
    if (k >= 0) {
        if (l < 0 || l >= s->n_layers || e < 0 || e >= s->ne) return NULL;
        const qmat *q = qm(s, l, k, e);
        return q->used ? q : NULL;
    }
    return embed_q(s, c, name, MT_FMT_HF);
}

/* The four AutoGPTQ tensors of a Q8_0/Q4_0 matrix (rows = out_features,
 * cols = in_features): qweight, qzeros, scales, g_idx, in this order. */
static int gptq_shapes(const qmat *q, int64_t shapes[4][2], int *nd, const char *name) {
    const int bits = mt_dtype_get(q->dtype)->gptq_bits, per = 32 / bits;
    if (q->rows % per)
        return mt_seterr(MT_ERR_ARG, "%s: %lld rows do not pack into the AutoGPTQ zero points (multiple of %d)", name,
                         (long long)q->rows, per);
    const int64_t R = q->rows, C = q->cols;
    shapes[0][0] = C / per, shapes[0][1] = R;
    shapes[1][0] = C / 32, shapes[1][1] = R / per;
    shapes[2][0] = C / 32, shapes[2][1] = R;
    shapes[3][0] = C, shapes[3][1] = 0;
    nd[0] = nd[1] = nd[2] = 2, nd[3] = 1;
    return MT_OK;
}

static const char *const g_gptq_suffix[4] = {".qweight", ".qzeros", ".scales", ".g_idx"};
static const mt_dtype g_gptq_dtype[4] = {MT_DT_I32, MT_DT_I32, MT_DT_F16, MT_DT_I32};

/* Streams the AutoGPTQ tensors of q (declared by gptq_shapes). */
static int write_gptq(mt_hf_writer *hw, const qmat *q) {
    const int bits = mt_dtype_get(q->dtype)->gptq_bits, per = 32 / bits;
    const int64_t R = q->rows, C = q->cols, NB = C / 32;
    uint32_t *qw = calloc((size_t)(C / per * R), sizeof *qw);
    uint32_t *qz = malloc((size_t)(NB * (R / per) + 1) * sizeof *qz);
    uint16_t *sc = malloc((size_t)(NB * R) * sizeof *sc);
    int32_t *gi = malloc((size_t)C * sizeof *gi);
    int rc = MT_OK;
    if (!qw || !qz || !sc || !gi) {
        rc = mt_seterr(MT_ERR_NOMEM, "quantize: out of memory");
        goto done;
    }
    mt_gptq_pack(bits, q->data, q->row_bytes, R, C, qw, qz, sc, gi);
    if (!rc) rc = mt_hf_writer_write(hw, qw, (size_t)(C / per * R) * 4);
    if (!rc) rc = mt_hf_writer_write(hw, qz, (size_t)(NB * (R / per)) * 4);
    if (!rc) rc = mt_hf_writer_write(hw, sc, (size_t)(NB * R) * 2);
    if (!rc) rc = mt_hf_writer_write(hw, gi, (size_t)C * 4);
done:
    free(qw);
    free(qz);
    free(sc);
    free(gi);
    return rc;
}

/* quantization_config of the output (JSON text, malloc'd). */
static char *hf_quant_json(const mt_quant_state *s, const mt_quant_opts *o, const mt_config *c) {
    size_t cap = 4096, n = 0;
    char *b = malloc(cap);
    if (!b) return NULL;
#define OUT(...)                                                          \
    do {                                                                  \
        int k_ = snprintf(b + n, cap - n, __VA_ARGS__);                   \
        if (k_ >= 0 && (size_t)k_ >= cap - n) { /* grow and redo */       \
            char *g_ = realloc(b, cap = 2 * cap + (size_t)k_);            \
            if (!g_) {                                                    \
                free(b);                                                  \
                return NULL;                                              \
            }                                                             \
            b = g_;                                                       \
            k_ = snprintf(b + n, cap - n, __VA_ARGS__);                   \
        }                                                                 \
        if (k_ < 0) {                                                     \
            free(b);                                                      \
            return NULL;                                                  \
        }                                                                 \
        n += (size_t)k_;                                                  \
    } while (0)
    /* module names from the family's table: "<attn module>.<label>", ... */
    const mt_arch *fam = mt_arch_get(c->arch);
    if (!fam) {
        free(b);
        return NULL;
    }
#define LBL(role) mt_arch_tensor_of(fam, role)->label
    const char *exp = c->n_experts > 0 ? fam->hf_moe_module : fam->hf_mlp_module, *att = fam->hf_attn_module;
    if (o->codec == MT_QUANT_CODEC_QMOE) {
        OUT("{\"quant_method\": \"qmoe\", \"bits\": \"ternary\", \"group_rows\": %d, \"dictionary\": {\"kind\": "
            "\"tunstall\", \"max_len\": %d, \"n_entries\": %d, \"counts\": [%llu, %llu, %llu]}, \"modules\": [\"%s\"], "
            "\"method\": \"%s\"",
            MT_QMOE_GROUP_ROWS, s->dict.max_len, s->dict.n_entries, (unsigned long long)s->dict.counts[0],
            (unsigned long long)s->dict.counts[1], (unsigned long long)s->dict.counts[2], exp,
            o->method == MT_QUANT_GPTQ ? "gptq" : "rtn");
        if (mt_quant_qmoe_scales(o) == MT_QMOE_SCALES_U8LOG) OUT(", \"row_scales\": \"u8log\"");
        if (o->attn_bits || o->embed_bits) {
            OUT(", \"gptq\": {\"checkpoint_format\": \"gptq\", \"sym\": true, \"desc_act\": false, \"group_size\": 32, "
                "\"modules\": {");
            int first = 1;
            if (o->attn_bits) {
                OUT("\"%s\": %d", att, o->attn_bits);
                first = 0;
            }
            if (o->embed_bits)
                OUT("%s\"%s\": %d, \"%s\": %d", first ? "" : ", ", LBL(MT_ROLE_TOK_EMBD), o->embed_bits,
                    LBL(MT_ROLE_LM_HEAD), o->embed_bits);
            OUT("}}");
        }
        OUT("}");
    } else {
        OUT("{\"quant_method\": \"gptq\", \"bits\": %d, \"group_size\": 32, \"desc_act\": false, \"sym\": true, "
            "\"damp_percent\": %g, \"true_sequential\": true, \"static_groups\": false, \"checkpoint_format\": \"gptq\", "
            "\"meta\": {\"quantizer\": [\"moetool\"], \"method\": \"%s\"}, \"modules_in_block_to_quantize\": [",
            o->bits, o->damp, o->method == MT_QUANT_GPTQ ? "gptq" : "rtn");
        if (o->attn_bits)
            OUT("[\"%s.%s\", \"%s.%s\", \"%s.%s\"], [\"%s.%s\"], ", att, LBL(MT_ROLE_WK), att, LBL(MT_ROLE_WV), att,
                LBL(MT_ROLE_WQ), att, LBL(MT_ROLE_WO));
        const int ne = c->n_experts > 0 ? c->n_experts : 1;
        for (int pass = 0; pass < 2; pass++) {
            OUT("%s[", pass ? ", " : "");
            for (int e = 0; e < ne; e++) {
                if (c->n_experts > 0) {
                    if (pass == 0)
                        OUT("%s\"%s.%d.%s\", \"%s.%d.%s\"", e ? ", " : "", exp, e, LBL(MT_ROLE_EXP_GATE), exp, e,
                            LBL(MT_ROLE_EXP_UP));
                    else OUT("%s\"%s.%d.%s\"", e ? ", " : "", exp, e, LBL(MT_ROLE_EXP_DOWN));
                } else if (pass == 0) {
                    OUT("\"%s.%s\", \"%s.%s\"", exp, LBL(MT_ROLE_FFN_GATE), exp, LBL(MT_ROLE_FFN_UP));
                } else {
                    OUT("\"%s.%s\"", exp, LBL(MT_ROLE_FFN_DOWN));
                }
            }
            if (c->n_experts > 0 && c->ffn_shared > 0 && mt_arch_tensor_of(fam, MT_ROLE_SHEXP_GATE)) {
                if (pass == 0)
                    OUT(", \"%s.%s\", \"%s.%s\"", fam->hf_mlp_module, LBL(MT_ROLE_SHEXP_GATE), fam->hf_mlp_module,
                        LBL(MT_ROLE_SHEXP_UP));
                else OUT(", \"%s.%s\"", fam->hf_mlp_module, LBL(MT_ROLE_SHEXP_DOWN));
            }
            OUT("]");
        }
        OUT("]");
        /* GPTQModel and vLLM skip modules by negative `dynamic` matches and
         * do not read modules_in_block_to_quantize everywhere: say it both ways. */
        if (!o->attn_bits) OUT(", \"dynamic\": {\"-:.*\\\\.%s\\\\..*\": {}}", att);
        OUT("}");
    }
#undef LBL
#undef OUT
    return b;
}

int mt_quant_write_hf(const mt_quant_state *s, const mt_model *m, const mt_quant_opts *o, const char *out_dir) {
    const mt_ckpt *ck = mt_model_ckpt(m);
    const mt_config *c = mt_model_config(m);
    if (mt_ckpt_format(ck) == MT_FMT_GGUF)
        return mt_seterr(MT_ERR_ARG, "%s: Hugging Face output needs a Hugging Face source model", out_dir);
    const mt_arch *fam = NULL;
    int rc = mt_arch_of(&fam, c, out_dir);
    if (rc) return rc;
    mt_outdir *od = NULL;
    mt_hf_writer *hw = NULL;
    char *qjson = NULL, *cfg = NULL, name[256];
    mt_prov *prov = NULL;
    if ((rc = mt_outdir_open(&od, out_dir))) return rc;
    if ((rc = mt_hf_writer_open(&hw, mt_outdir_path(od), 0))) goto done;
    const size_t nt = mt_ckpt_count(ck);
    mt_dtype float_t = MT_DT_BF16;
    for (int pass = 0; pass < 2 && !rc; pass++) {
        for (size_t i = 0; i < nt && !rc; i++) {
            const mt_tensor *t = mt_ckpt_get(ck, i);
            const qmat *q = hf_q(s, c, t->name);
            const size_t len = strlen(t->name);
            const mt_arch_tensor *role = mt_arch_parse(fam, t->name, MT_FMT_HF, NULL, NULL);
            if (role && role->role == MT_ROLE_TOK_EMBD) float_t = t->dtype;
            if (!q) {
                rc = pass ? mt_hf_writer_write(hw, t->data, (size_t)t->nbytes)
                          : mt_hf_writer_add(hw, t->name, t->dtype, t->n_dims, t->shape);
                continue;
            }
            if (q->dtype == MT_DT_QMOE) {
                uint8_t *blob = NULL;
                size_t nb = 0;
                if ((rc = mt_qmoe_serialize(&q->coded, &blob, &nb))) break;
                snprintf(name, sizeof name, "%s.qmoe", t->name);
                rc = pass ? mt_hf_writer_write(hw, blob, nb) : mt_hf_writer_add(hw, name, MT_DT_U8, 1, (const int64_t[]){(int64_t)nb});
                free(blob);
                continue;
            }
            if (!mt_dtype_get(q->dtype)->gptq_bits || len < 8 || strcmp(t->name + len - 7, ".weight")) {
                rc = mt_seterr(MT_ERR_ARG, "%s: %s was quantized to a grid without a Hugging Face layout", out_dir, t->name);
                break;
            }
            if (pass) {
                rc = write_gptq(hw, q);
                continue;
            }
            int64_t shapes[4][2];
            int nd[4];
            if ((rc = gptq_shapes(q, shapes, nd, t->name))) break;
            for (int k = 0; k < 4 && !rc; k++) {
                snprintf(name, sizeof name, "%.*s%s", (int)(len - 7), t->name, g_gptq_suffix[k]);
                rc = mt_hf_writer_add(hw, name, g_gptq_dtype[k], nd[k], shapes[k]);
            }
        }
        if (!rc && o->codec == MT_QUANT_CODEC_QMOE) {
            uint8_t d[MT_QMOE_DICT_BYTES];
            mt_qmoe_dict_serialize(&s->dict, d);
            rc = pass ? mt_hf_writer_write(hw, d, sizeof d)
                      : mt_hf_writer_add(hw, "qmoe.dictionary", MT_DT_U8, 1, (const int64_t[]){MT_QMOE_DICT_BYTES});
        }
    }
    if (rc) goto done;
    if ((rc = mt_hf_writer_finish(hw))) goto done;
    if (!(qjson = hf_quant_json(s, o, c))) {
        rc = mt_seterr(MT_ERR_NOMEM, "%s: out of memory", out_dir);
        goto done;
    }
    const char *tdt = mt_dtype_config_torch_name(float_t, "bfloat16");
    if ((rc = mt_config_to_hf_json_q(&cfg, c, tdt, qjson))) goto done;
    if (!(prov = quant_provenance(s, m, o))) {
        rc = mt_seterr(MT_ERR_NOMEM, "%s: out of memory", out_dir);
        goto done;
    }
    if (o->codec == MT_QUANT_CODEC_QMOE)
        mt_prov_note(prov, "The experts are stored in moetool's sub-1-bit qmoe code (`*.qmoe` blobs and "
                           "`qmoe.dictionary`, docs/formats.md): moetool runs this checkpoint; other tools cannot.");
    else
        mt_prov_note(prov, o->attn_bits == o->bits
                               ? "Every linear of each block is in the AutoGPTQ/GPTQModel layout "
                                 "(`quantization_config` in config.json, and `quantize_config.json` for AutoGPTQ)."
                               : "The experts are in the AutoGPTQ/GPTQModel layout, attention stays in floats: "
                                 "`quantization_config` in config.json says so by `modules_in_block_to_quantize` "
                                 "(transformers with optimum >= 1.20) and by a negative `dynamic` rule (GPTQModel, "
                                 "vLLM); there is no `quantize_config.json`, so AutoGPTQ refuses it rather than "
                                 "misreading the attention as quantized (docs/formats.md).");
    if ((rc = mt_prov_config(prov, &cfg))) goto done;
    if ((rc = mt_write_text_file(mt_outdir_path(od), "config.json", cfg, strlen(cfg)))) goto done;
    /* AutoGPTQ's from_quantized reads quantize_config.json and quantizes every
     * linear of each block whatever modules_in_block_to_quantize says: written
     * only when that is what the checkpoint holds (attention at the experts'
     * width), so an experts-only output is refused by it instead of misread. */
    if (o->codec == MT_QUANT_CODEC_NONE && o->attn_bits == o->bits) {
        char qc[512];
        int k = snprintf(qc, sizeof qc,
                         "{\n  \"bits\": %d,\n  \"group_size\": 32,\n  \"damp_percent\": %g,\n  \"desc_act\": false,\n"
                         "  \"static_groups\": false,\n  \"sym\": true,\n  \"true_sequential\": true,\n"
                         "  \"model_name_or_path\": null,\n  \"model_file_base_name\": \"model\",\n"
                         "  \"quant_method\": \"gptq\",\n  \"checkpoint_format\": \"gptq\"\n}\n",
                         o->bits, o->damp);
        if ((rc = mt_write_text_file(mt_outdir_path(od), "quantize_config.json", qc, (size_t)k))) goto done;
    }
    if ((rc = mt_prov_write_card(prov, mt_outdir_path(od),
                                 strrchr(out_dir, '/') ? strrchr(out_dir, '/') + 1 : out_dir)))
        goto done;
    if ((rc = mt_copy_tokenizer(ck, mt_outdir_path(od)))) goto done;
    rc = mt_outdir_commit(od); /* frees od whatever the outcome */
    od = NULL;
done:
    mt_prov_free(prov);
    mt_hf_writer_free(hw);
    mt_outdir_free(od);
    free(qjson);
    free(cfg);
    return rc;
}

int mt_quantize_file(const char *in_path, const char *out_path, const mt_quant_opts *o0, int n_threads,
                     mt_quant_report *rep) {
    mt_quant_opts o = *o0;
    char calib[4096];
    mt_ckpt *ck = NULL;
    mt_model *m = NULL;
    mt_quant_state *s = NULL;
    int rc;
    memset(rep, 0, sizeof *rep);
    if (!o.calib_path) {
        default_calib(in_path, calib, sizeof calib);
        o.calib_path = calib;
    }
    const char *calib_in[] = {o.calib_path, o.imatrix_path};
    if ((rc = mt_output_check(out_path, o.format == MT_FMT_HF ? MT_OUTPUT_HF_DIR : MT_OUTPUT_GGUF, o.force, in_path,
                              calib_in, o.imatrix_path ? 2 : 1)))
        return rc;
    if (o.imatrix_out) { /* the same policy: never an input, an existing file only with --force */
        if (out_path && strcmp(o.imatrix_out, out_path) == 0)
            return mt_seterr(MT_ERR_ARG, "%s: --imatrix-out names the quantized output too", o.imatrix_out);
        if ((rc = mt_output_check(o.imatrix_out, MT_OUTPUT_GGUF, o.force, in_path, calib_in, o.imatrix_path ? 2 : 1)))
            return rc;
    }
    /* The checkpoint is opened once: checked here, then loaded. */
    if ((rc = mt_ckpt_open(&ck, in_path))) return rc;
    if (mt_ckpt_is_archive(ck)) {
        mt_ckpt_free(ck);
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: an archive is read in place by inspect, eval, generate and tokenize; unpack it to %s it", in_path, "quantize");
    }
    rc = mt_quant_check(&o, mt_ckpt_config(ck), 1);
    const int is_gguf = mt_ckpt_format(ck) == MT_FMT_GGUF;
    if (!rc && o.format == MT_FMT_HF && is_gguf)
        rc = mt_seterr(MT_ERR_ARG, "%s: --format hf needs a Hugging Face source (moetool convert --to hf first)", in_path);
    mt_model_opts mo;
    mt_model_opts_default(&mo);
    mo.n_threads = n_threads;
    if (!rc && !is_gguf && o.format == MT_FMT_GGUF) {
        /* The output is convert's GGUF of the source with the quantized
         * matrices in place (written from memory, no converted copy on disk):
         * its checks now, before the work; the model is held in that GGUF's
         * layout (Q/K row order, F32 norms and router), so the result equals
         * quantizing the converted file. */
        mt_gguf_export *x = NULL;
        if (!(rc = mt_quant_export_open(&x, ck))) mt_gguf_export_warn(x);
        mt_gguf_export_free(x);
        mo.gguf_layout = 1;
    }
    if (rc) {
        mt_ckpt_free(ck);
        return rc;
    }
    if ((rc = mt_model_load_ckpt(&m, ck, &mo))) goto done; /* owns ck, also on failure */
    if ((rc = mt_quant_model(&s, m, &o, rep))) goto done;
    s->source = in_path;
    rc = o.format == MT_FMT_HF ? mt_quant_write_hf(s, m, &o, out_path) : mt_quant_write_gguf(s, m, &o, out_path);
    rep->peak_rss = mt_peak_rss_bytes();
done:
    mt_quant_state_free(s);
    mt_model_free(m);
    if (rc) mt_quant_report_free(rep);
    return rc;
}
