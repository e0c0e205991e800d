/* quant_impl.h — private pieces of lib/quant: quantization grids (grids.c),
 * the GPTQ solver (gptq.c) and calibration statistics (calib.c), joined by
 * quantize.c. Tests include this header to check each piece alone. */
#ifndef MT_QUANT_IMPL_H
#define MT_QUANT_IMPL_H

#include "moetool/mt_quant.h"

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
} mt_grid_kind;

typedef struct {
    mt_grid_kind kind;
    int bits;             /* MT_GRID_INT only                              */
    int group;            /* columns per (a, b); = cols for per-row grids    */
    int mse_scale;        /* TQ2_0: pick d minimising the block's squared error
                             (used by GPTQ) instead of llama.cpp's d = absmax */
} mt_grid;

/* Resolves (bits, group) for a matrix of `cols` columns. MT_ERR_ARG with a
 * message naming `what` when the width or group does not fit. */
int mt_grid_make(mt_grid *g, int bits, int group, int64_t cols, const char *what);
/* File type of a grid (Q8_0, Q4_0, TQ2_0) or -1 when it has none. */
int mt_grid_dtype(const mt_grid *g);
/* Storage bits per weight (codes + scales); nominal for grids without a type. */
double mt_grid_bits(const mt_grid *g, int64_t cols);
void mt_grid_name(const mt_grid *g, char *buf, size_t n);

/* Fits (a, b) to the n weights x of one group. */
void mt_grid_fit(const mt_grid *g, const float *x, int n, float *a, float *b);
/* Code of x, and its dequantized value in *dq. */
int mt_grid_quant(const mt_grid *g, float a, float b, float x, float *dq);
/* Packs one row of codes (cols) and its per-group (a, b) into the grid's
 * storage type (Q8_0/Q4_0/TQ2_0 only). */
void mt_grid_pack_row(const mt_grid *g, const int8_t *codes, const float *a, int64_t cols, uint8_t *dst);

/* ---- GPTQ ----------------------------------------------------------------
 * W (rows, cols) f32 row-major, updated in place and left holding the
 * dequantized result Ŵ; codes (rows, cols) and per-group params
 * a, b (rows, cols/group) receive the quantization. H (cols, cols) f64, the
 * sum of x xᵀ over calibration inputs, is destroyed. H == NULL: RTN. */
typedef struct {
    double damp;          /* fraction of mean(diag H) added to the diagonal */
    int block;            /* lazy-update block (columns)                    */
    int act_order;        /* columns by decreasing diag H; scales from the original W */
} mt_gptq_params;

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
 * Per-layer statistics from capture hooks: H for attention inputs, expert
 * inputs (only the rows routed to each expert, capped), and expert
 * intermediate activations silu(W1 x)·(W3 x) for w2. */
typedef struct mt_calib mt_calib;
typedef struct {
    int n_exp;            /* experts (1 for a dense MLP)                   */
    int64_t hidden, ffn;
    double *h_attn;       /* (hidden, hidden) or NULL                      */
    double **h_in;        /* [n_exp] (hidden, hidden)                      */
    double **h_mid;       /* [n_exp] (ffn, ffn)                            */
    uint64_t *count;      /* [n_exp] rows accumulated                      */
    uint64_t n_tokens;    /* tokens run                                    */
} mt_calib_stats;

/* Reads and tokenizes the calibration text; MT_ERR_ARG when it has fewer
 * than `need` tokens (the message names the file). */
int mt_calib_tokens(const mt_model *m, const char *path, int need, int32_t **ids, size_t *n);
/* Runs ids through layers 0..layer of m and accumulates the statistics of
 * `layer` (attention too when with_attn). cap: rows per expert. */
int mt_calib_layer(mt_model *m, int layer, const int32_t *ids, size_t n_ids, int window, int with_attn,
                   uint64_t cap, mt_calib_stats *st);
void mt_calib_stats_free(mt_calib_stats *st);

#endif
