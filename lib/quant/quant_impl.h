/* quant_impl.h — private pieces of lib/quant: quantization grids (grids.c),
 * the GPTQ solver (gptq.c) and calibration statistics (calib.c), joined by
 * quantize.c. Tests include this header to check each piece alone. */
#ifndef MT_QUANT_IMPL_H
#define MT_QUANT_IMPL_H

#include "moetool/mt_quant.h"
#include "moetool/mt_write.h"

#include <stdio.h>

/* ---- grids --------------------------------------------------------------
 * A grid maps a group of `group` consecutive weights of a row to codes with
 * two per-group parameters (a, b). Every grid dequantizes a code to a float
 * exactly as its storage type will (f16-rounded scales for llama.cpp's
 * blocks), so GPTQ's error feedback sees the values the runtime uses. */
typedef enum {
    MT_GRID_INT = 0,      /* GPTQ's symmetric grid: q in [0, 2^b-1], zero 2^(b-1),
                             scale 2·absmax/(2^b-1); a = scale, b = zero  */
    MT_GRID_Q8_0,         /* llama.cpp q8_0: d = absmax/127, q = round(x/d); a = f16(d), b = 1/d */
    MT_GRID_Q4_0,         /* llama.cpp q4_0: d = max/-8, q = min(15, (int)(x/d + 8.5)); a, b as q8_0 */
    MT_GRID_TQ2_0,        /* ternary per 256-block, llama.cpp's TQ2_0 layout; a = f16(d), b = 1/d */
    MT_GRID_TERNARY_ROW,  /* QMoE: per row {min, 0, max}, thresholds min/2, max/2; a = min, b = max */
    MT_GRID_BLOCK,        /* a llama.cpp block type with a two-step quantizer
                             (mt_dtype_info.blk: q2_K..q6_K, q4_1, q5_0, q5_1):
                             per block of `group` weights the parameters its
                             reference search picks (f16 d, dmin, sub-block
                             scales and mins), stored as one mt_blk_params in
                             the group's mt_grid_nparam floats of a; b unused */
    MT_GRID_INT_ASYM,     /* asymmetric uniform grid (GPTQ's sym=False): min, max of the
                             group widened to include 0, scale f16((max−min)/(2^b-1)),
                             zero round(−min/scale) in [0, 2^b-1], levels scale·(q − zero);
                             a = scale, b = zero (an integer); codes q − 2^(b-1) */
    MT_GRID_ROW,          /* a llama.cpp type written whole rows at a time by its
                             own quantizer (mt_dtype_info.from_f32_w: iq4_nl,
                             iq4_xs), with the importance matrix when there is
                             one: round to nearest only, no codes or group
                             parameters for GPTQ (mt_grid_fit/quant/pack_row
                             do not apply); group = the type's block      */
} mt_grid_kind;

typedef struct {
    mt_grid_kind kind;
    int bits;             /* MT_GRID_INT and MT_GRID_INT_ASYM only          */
    int group;            /* columns per (a, b); = cols for per-row grids    */
    int mse_scale;        /* TQ2_0: pick d minimising the block's squared error
                             (used by GPTQ) instead of llama.cpp's d = absmax */
    int dtype;            /* MT_GRID_BLOCK: its storage type               */
    const mt_blk_codec *bc; /* MT_GRID_BLOCK: that type's block quantizer   */
} mt_grid;

/* Resolves (bits, group) for a matrix of `cols` columns. MT_ERR_ARG with a
 * message naming `what` when the width or group does not fit. */
int mt_grid_make(mt_grid *g, int bits, int group, int64_t cols, const char *what);
/* The grid of a storage type named by the user (--type): q8_0, q4_0 and
 * tq2_0 as mt_grid_make makes them, the types with a block quantizer
 * (q2_K..q6_K, q4_1, q5_0, q5_1) as MT_GRID_BLOCK, iq4_nl/iq4_xs as
 * MT_GRID_ROW. MT_ERR_ARG naming
 * `what` for other types or when the blocks do not divide `cols`. */
int mt_grid_make_type(mt_grid *g, int dtype, int64_t cols, const char *what);
/* Floats per group in the parameter arrays a and b: 1, or for
 * MT_GRID_BLOCK enough to hold one mt_blk_params. */
int mt_grid_nparam(const mt_grid *g);
/* Turns a grid from mt_grid_make into the asymmetric one (MT_GRID_INT ->
 * MT_GRID_INT_ASYM; unchanged if already asymmetric). MT_ERR_ARG, with a
 * message naming `what`, for the file-type grids (Q8_0, Q4_0, TQ2_0) and
 * the per-row ternary grid. */
int mt_grid_asym(mt_grid *g, const char *what);
/* File type of a grid (Q8_0, Q4_0, TQ2_0) or -1 when it has none. */
int mt_grid_dtype(const mt_grid *g);
/* Storage bits per weight (codes + scales); nominal for grids without a type. */
double mt_grid_bits(const mt_grid *g, int64_t cols);
void mt_grid_name(const mt_grid *g, char *buf, size_t n);

/* Fits the parameters of one group (mt_grid_nparam floats at a and at b)
 * to its n weights x. */
void mt_grid_fit(const mt_grid *g, const float *x, int n, float *a, float *b);
/* Code of x, weight j (0..group−1) of a group with parameters a, b, and its
 * dequantized value in *dq. */
int mt_grid_quant(const mt_grid *g, const float *a, const float *b, int j, float x, float *dq);
/* Packs one row of codes (cols) and its per-group parameters a into the
 * grid's storage type (grids with a type only). */
void mt_grid_pack_row(const mt_grid *g, const int8_t *codes, const float *a, int64_t cols, uint8_t *dst);

/* ---- the matrices quantize types, per layer ------------------------------- */
/* Kinds of quantized matrix per layer: attention, the routed experts (or the
 * dense MLP, as expert 0), the shared expert (not routed: one per layer,
 * quantized with the experts' grid, calibrated on every token). */
enum { K_Q, K_K, K_V, K_O, K_W1, K_W3, K_W2, K_SW1, K_SW3, K_SW2, K_COUNT };
/* Matrix of kind k (K_*) of expert e (0 for the others) in a layer. */
mt_mat *mt_quant_layer_mat(mt_layer_weights *L, int k, int e);

/* ---- a type per tensor under a size budget (plan.c) ----------------------
 * Units are the tensors a GGUF stores: each attention projection and each
 * expert kind (all experts of a layer share a stacked tensor, so a type) of
 * every layer, the shared expert's matrices, token embeddings and an untied
 * lm_head. */
typedef struct {
    int n_layers;
    int *type;          /* [n_layers * K_COUNT] storage type; -1: not a unit */
    int embd, head;     /* storage types of token embeddings and an untied
                           lm_head (head -1 when tied)                     */
    uint64_t params;    /* weights in the units                            */
    uint64_t bytes;     /* their bytes under the plan                      */
    int dominant;       /* the type holding the most weights               */
} mt_quant_plan;
/* Chooses the types for o->target_bpw / o->target_bytes from the error
 * each candidate type (q2_K, q3_K, q4_K, q5_K, q6_K, q8_0; with an
 * importance matrix im also the i-quants iq1_s … iq4_xs, rounded with it)
 * gives each unit, measured on the first tokens of ids (see plan.c). */
typedef struct mt_imatrix mt_imatrix;
int mt_quant_plan_make(mt_quant_plan *p, mt_model *m, const mt_quant_opts *o, const mt_imatrix *im,
                       const int32_t *ids, size_t n_ids, int window);
void mt_quant_plan_free(mt_quant_plan *p);

/* ---- llama.cpp's mixes (mix.c) -------------------------------------------- */
typedef enum {
    MT_QROLE_Q, MT_QROLE_K, MT_QROLE_V, MT_QROLE_O, /* attention projections    */
    MT_QROLE_GATE, MT_QROLE_UP, MT_QROLE_DOWN,      /* FFN / expert matrices    */
    MT_QROLE_EMBD, MT_QROLE_EMBD_TIED, MT_QROLE_OUTPUT,
} mt_quant_role;
/* The storage type llama.cpp's mix `ftype` (llama.h LLAMA_FTYPE_MOSTLY_*:
 * 10 Q2_K, 12 Q3_K_M, 15 Q4_K_M, 17 Q5_K_M, 18 Q6_K, the i-quant mixes
 * 19..31) gives a matrix of `role` in `layer` with `cols` columns, written
 * with an importance matrix (has_im) or not; -1 for another ftype. */
int mt_quant_mix_type(int ftype, mt_quant_role role, int layer, const mt_config *c, int64_t cols, int has_im);

/* ---- GPTQ ----------------------------------------------------------------
 * W (rows, cols) f32 row-major, updated in place and left holding the
 * dequantized result Ŵ; codes (rows, cols) and per-group params
 * a, b (rows, cols/group, mt_grid_nparam) receive the quantization. A
 * group's parameters are fitted when GPTQ reaches its first column, on the
 * weights as the error feedback has left them (act-order: on the original
 * weights), then held while its columns are rounded. H (cols, cols) f64, the
 * sum of x xᵀ over calibration inputs, is destroyed. H == NULL: RTN. */
typedef struct {
    double damp;          /* fraction of mean(diag H) added to the diagonal */
    int block;            /* lazy-update block (columns)                    */
    int act_order;        /* columns by decreasing diag H; scales from the original W */
    double ternary_range; /* MT_GRID_TERNARY_ROW only: levels and thresholds
                             of each row at range·(min, max) instead of (min,
                             max) (> 1: more zeros, fewer bits once coded);
                             0 or 1: QMoE's grid. Other grids ignore it.  */
    int ternary_scales;   /* MT_GRID_TERNARY_ROW only: 0 or MT_QMOE_SCALES_F16:
                             levels f16 (min, max) (QMoE's grid);
                             MT_QMOE_SCALES_U8LOG: levels −s, +s with
                             s = (max − min)/2 (times ternary_range under
                             GPTQ), rounded to the matrix's 8-bit log code
                             (mt_qmoe_scale8_*; base from the largest s)
                             before any rounding, so GPTQ's feedback and
                             the stored weights use the coded levels      */
} mt_gptq_params;

/* Whether GPTQ takes columns by decreasing H_ii (act-order) under o. */
static inline int mt_quant_act_order(const mt_quant_opts *o) {
    return o->act_order > 0 || (o->act_order == 0 && o->codec == MT_QUANT_CODEC_QMOE && MT_QUANT_ACT_ORDER_QMOE);
}

/* The row scales of o's qmoe experts (MT_QMOE_SCALES_*), 0 without the codec. */
static inline int mt_quant_qmoe_scales(const mt_quant_opts *o) {
    return o->codec == MT_QUANT_CODEC_QMOE ? (o->qmoe_scales ? o->qmoe_scales : MT_QUANT_QMOE_SCALES) : 0;
}

int mt_gptq_quantize(float *W, int64_t rows, int64_t cols, double *H, const mt_grid *g,
                     const mt_gptq_params *p, int8_t *codes, float *a, float *b);
/* Reference: the same method column by column in f64, no blocks, no
 * lazy updates (tests compare the two). Natural column order only. */
int mt_gptq_quantize_naive(float *W, int64_t rows, int64_t cols, const double *H, const mt_grid *g, double damp,
                           int8_t *codes, float *a, float *b);
/* U (cols, cols), upper triangular with Uᵀ U = (H + damp)⁻¹ (row-major);
 * H is overwritten by U. Exposed for tests. */
int mt_gptq_chol_inv(double *H, int64_t cols);
/* ‖(W − Ŵ) X‖² = tr(D H Dᵀ) with D = W − Ŵ (rows, cols); H (cols, cols). */
double mt_gptq_output_err(const float *W, const float *Wq, int64_t rows, int64_t cols, const double *H);

/* ---- calibration ----------------------------------------------------------
 * A layer's calibration inputs are captured once as f32 rows: the attention
 * input and attention output (o_proj's input) of every token and each
 * expert's routed input rows (capped per expert, first rows first). GPTQ's Hessians H = Σ x xᵀ (f64) are built
 * from the rows one matrix at a time, and an expert's intermediate
 * activations silu(W1 x)·(W3 x), w2's inputs, are computed from its rows
 * when w2 is quantized; so a layer needs its rows (O(tokens · hidden))
 * plus the Hessians of the matrices being quantized, not those of all its
 * experts at once. */
#define MT_CALIB_BLOCK 256    /* rows per block of mt_calib_rows              */
typedef struct {
    int64_t cols;         /* row width                                     */
    int64_t n;            /* rows held                                     */
    int nblk, blk_cap;
    float **blk;          /* [nblk] (MT_CALIB_BLOCK, cols) each; block i holds
                             rows i·MT_CALIB_BLOCK.., the last one fewer    */
} mt_calib_rows;

void mt_calib_rows_init(mt_calib_rows *x, int64_t cols);
int mt_calib_rows_add(mt_calib_rows *x, const float *rows, int64_t m);
void mt_calib_rows_free(mt_calib_rows *x);
/* Rows held in block i. */
static inline int64_t mt_calib_rows_in(const mt_calib_rows *x, int i) {
    const int64_t r = x->n - (int64_t)i * MT_CALIB_BLOCK;
    return r < MT_CALIB_BLOCK ? r : MT_CALIB_BLOCK;
}
/* H (cols, cols) f64 = Σ x xᵀ over the rows of x, both triangles. */
int mt_calib_hessian(const mt_calib_rows *x, double *H);
/* y (width w1->rows; initialised here, freed by the caller) = silu(x W1ᵀ)·(x W3ᵀ)
 * for every row x, with W1/W3 as stored (converted to f32 in chunks). */
int mt_calib_mid(const mt_calib_rows *x, const mt_mat *w1, const mt_mat *w3, mt_calib_rows *y);
/* Layer-output error of a quantized matrix on the rows x: err = ‖(W − Ŵ) Xᵀ‖²,
 * ref = ‖W Xᵀ‖² (= tr(D H Dᵀ), tr(W H Wᵀ) with D = W − Ŵ and H of x), W as
 * stored in w, Ŵ (w->rows, w->cols) f32. f32 products, f64 sums. */
int mt_calib_output_err(const mt_mat *w, const float *Wq, const mt_calib_rows *x, double *err, double *ref);

/* The captured inputs of one layer. */
typedef struct {
    int n_exp;            /* experts (1 for a dense MLP)                   */
    int64_t hidden, ffn;
    mt_calib_rows attn;   /* attention inputs of every token (with_attn)   */
    mt_calib_rows attn_out; /* attention outputs, o_proj's inputs, of every
                             token (n_heads·head_dim wide; with_attn)       */
    mt_calib_rows *x;     /* [n_exp] routed input rows of each expert      */
    mt_calib_rows ffn_in; /* FFN inputs of every token, when the layer has a
                             shared expert (its calibration)                */
    uint64_t n_tokens;    /* tokens run                                    */
} mt_calib_capture;

/* Runs ids through layers 0..layer of m (windows of `window` tokens) and
 * keeps the inputs of `layer` (attention's and o_proj's too when
 * with_attn); cap: rows per expert. */
int mt_calib_capture_layer(mt_model *m, int layer, const int32_t *ids, size_t n_ids, int window, int with_attn,
                           uint64_t cap, mt_calib_capture *cc);
void mt_calib_capture_free(mt_calib_capture *cc);
/* Runs ids through the whole model (windows of `window` tokens) and keeps
 * the final-norm output of every token, lm_head's input, in x (hidden
 * wide; initialised here, freed by the caller). */
int mt_calib_capture_final(mt_model *m, const int32_t *ids, size_t n_ids, int window, mt_calib_rows *x);

/* All Hessians of a layer at once, from mt_calib_capture_layer: H for
 * attention inputs and outputs, for each expert's routed inputs (w1/w3) and for its
 * intermediate activations (w2). Holds n_exp·(hidden² + ffn²) doubles:
 * for tests and small models; quantization builds them one at a time. */
typedef struct {
    int n_exp;            /* experts (1 for a dense MLP)                   */
    int64_t hidden, ffn;
    double *h_attn;       /* (hidden, hidden) or NULL                      */
    double *h_attn_out;   /* (q_dim, q_dim), o_proj's inputs, or NULL      */
    int64_t q_dim;        /* n_heads·head_dim                              */
    double **h_in;        /* [n_exp] (hidden, hidden)                      */
    double **h_mid;       /* [n_exp] (ffn, ffn)                            */
    uint64_t *count;      /* [n_exp] rows accumulated                      */
    uint64_t n_tokens;    /* tokens run                                    */
} mt_calib_stats;

/* Reads and tokenizes the calibration text; MT_ERR_ARG when it has fewer
 * than `need` tokens (the message names the file). */
int mt_calib_tokens(const mt_model *m, const char *path, int need, int32_t **ids, size_t *n);
/* mt_calib_capture_layer, then every Hessian of `layer`. */
int mt_calib_layer(mt_model *m, int layer, const int32_t *ids, size_t n_ids, int window, int with_attn,
                   uint64_t cap, mt_calib_stats *st);
void mt_calib_stats_free(mt_calib_stats *st);

/* ---- llama.cpp's importance matrix (imatrix.c) -----------------------------
 * Per weight matrix and input column, the mean x² over the calibration
 * tokens the matrix multiplied (routed experts: the tokens routed to each);
 * the quantizers of the types that take one (mt_dtype_info.from_f32_w)
 * weight their search by it, as llama-quantize --imatrix does. */
typedef struct {
    char name[96];        /* GGUF tensor name; "" when the model lacks it   */
    int64_t cols;         /* input columns                                  */
    int n_mat;            /* matrices stacked in the tensor (experts) or 1  */
    int ncall;            /* chunks the values were averaged over (file)    */
    float *values;        /* [n_mat][cols] mean x²; NULL: none              */
    double *sum;          /* [n_mat][cols] Σx² while computing, else NULL   */
    uint64_t *count;      /* [n_mat] rows accumulated, else NULL            */
} mt_imatrix_entry;

struct mt_imatrix {
    int n_layers;
    int n;                /* n_layers·K_COUNT + 1 (the last: lm_head)       */
    mt_imatrix_entry *e;  /* [layer·K_COUNT + kind], then lm_head           */
    int chunks;           /* calibration windows run                        */
};

/* Runs ids (windows of `window` tokens) through m and collects every
 * matrix's importance. */
int mt_imatrix_compute(mt_imatrix *im, mt_model *m, const int32_t *ids, size_t n_ids, int window);
/* Reads llama.cpp's imatrix (.dat) for m's tensors; entries naming tensors m
 * lacks are skipped; a wrong size or a negative/non-finite value is an error
 * naming the file and tensor. */
int mt_imatrix_read(mt_imatrix *im, const mt_model *m, const char *path);
/* The same from an open stream (path names it in messages). */
int mt_imatrix_read_stream(mt_imatrix *im, const mt_model *m, FILE *f, const char *path);
/* Writes im as llama.cpp's imatrix (.dat), dataset: the text's name. */
int mt_imatrix_write(const mt_imatrix *im, const char *path, const char *dataset);
/* The importance vector (cols floats) of matrix kind (K_*) of `expert` in
 * `layer` (layer −1: lm_head), or NULL when there is none. */
const float *mt_imatrix_get(const mt_imatrix *im, int layer, int kind, int expert);
void mt_imatrix_free(mt_imatrix *im);

/* The plan of the GGUF an HF source becomes (convert's, per-layer expert
 * counts allowed: the runtime runs them); quantize's GGUF output of such a
 * source is that file with the quantized matrices in place. */
int mt_quant_export_open(mt_gguf_export **x, const mt_ckpt *ck);

/* ---- a ternary range per expert matrix under a bit budget (qmoe_range.c) --
 * With codec qmoe and target_bpw, each expert matrix's GPTQ ternary range
 * is one of mt_qmoe_range_cands, chosen per layer. */
#define MT_QMOE_RANGE_NCAND 7
extern const double mt_qmoe_range_cands[MT_QMOE_RANGE_NCAND];
typedef struct {
    double err[MT_QMOE_RANGE_NCAND];        /* ‖(W−Ŵ)X‖² / ‖WX‖² on its rows (0: none) */
    double bits[MT_QMOE_RANGE_NCAND];       /* coded size all-in (blob), bits     */
    uint64_t counts[MT_QMOE_RANGE_NCAND][3]; /* symbols: zeros, +1, −1            */
    double ref;                             /* ‖WX‖² on its rows (0: none)         */
} mt_qmoe_range_probe;
/* GPTQ of src (weights W0 as f32, Hessian H0 or NULL for RTN, neither
 * changed) at every candidate range with the rest of gp, each result's
 * layer-output error on the rows x (NULL: 0) and its size coded with dict. */
int mt_qmoe_range_measure(const mt_mat *src, const float *W0, const double *H0, const mt_calib_rows *x,
                          const mt_grid *g, const mt_gptq_params *gp, const struct mt_qmoe_dict *dict,
                          mt_qmoe_range_probe *pr);
/* One candidate per matrix: all start at their fewest bits, then the change
 * with the largest drop in weight[i]·err per added bit that keeps the sum
 * of bits within budget_bits is applied, until none is left (every change
 * lowers the weighted error, so it ends). *used_bits: the sum. MT_ERR_ARG
 * (no message) when even the fewest bits exceed the budget; choice is then
 * the fewest. */
int mt_qmoe_range_choose(const mt_qmoe_range_probe *pr, const double *weight, int n, double budget_bits, int *choice,
                         double *used_bits);
/* One candidate for all n matrices: the narrowest range (the first of
 * mt_qmoe_range_cands, the most nonzeros) whose summed bits fit
 * budget_bits. MT_ERR_ARG (no message) when none fits; choice is then the
 * candidate with the fewest summed bits. */
int mt_qmoe_range_choose_uniform(const mt_qmoe_range_probe *pr, int n, double budget_bits, int *choice,
                                 double *used_bits);

#endif
