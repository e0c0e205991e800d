/* mt_codec.h — the codecs of the storage types, each once (lib/io/codec/):
 * exact f16/bf16 scalars, llama.cpp's q8_0, q4_0, tq1_0 and tq2_0 blocks
 * and the AutoGPTQ int4/int8 packing. Each codec's byte layout is written at
 * the top of its file; the qmoe code has its own header (mt_qmoe.h).
 * Included by mt_dtype.h. */
#ifndef MT_CODEC_H
#define MT_CODEC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- scalars (lib/io/codec/float.c): exact, round-to-nearest-even ----- */
float mt_bf16_to_f32(uint16_t h);
uint16_t mt_f32_to_bf16(float f);
float mt_f16_to_f32(uint16_t h);
uint16_t mt_f32_to_f16(float f);

/* ---- llama.cpp blocks: weights per block and bytes per block ---------- */
#define MT_QK8_0 32          /* block_q8_0 { f16 d; int8 qs[32]; }               */
#define MT_Q8_0_BYTES 34
#define MT_QK4_0 32          /* block_q4_0 { f16 d; uint8 qs[16]; }              */
#define MT_Q4_0_BYTES 18
#define MT_QK_K 256          /* the ternary super-block                          */
#define MT_TQ1_0_BYTES 54    /* block_tq1_0 { uint8 qs[48]; uint8 qh[4]; f16 d; } */
#define MT_TQ2_0_BYTES 66    /* block_tq2_0 { uint8 qs[64]; f16 d; }             */
/* blocks of legacy.c, kquant.c, iq4.c, iquant.c (layouts at their tops) */
#define MT_Q4_1_BYTES 20
#define MT_Q5_0_BYTES 22
#define MT_Q5_1_BYTES 24
#define MT_Q2_K_BYTES 84
#define MT_Q3_K_BYTES 110
#define MT_Q4_K_BYTES 144
#define MT_Q5_K_BYTES 176
#define MT_Q6_K_BYTES 210
#define MT_Q8_K_BYTES 292
#define MT_IQ4_NL_BYTES 18
#define MT_IQ4_XS_BYTES 136
#define MT_IQ2_XXS_BYTES 66   /* lattice i-quants: layouts at the top of iquant.c */
#define MT_IQ2_XS_BYTES 74
#define MT_IQ2_S_BYTES 82
#define MT_IQ3_XXS_BYTES 98
#define MT_IQ3_S_BYTES 110
#define MT_IQ1_S_BYTES 50
#define MT_IQ1_M_BYTES 56

/* The 6-bit scale *sc and min *m of sub-block j (0..7) of a q4_K/q5_K
 * block, from its 12 scale bytes s; the signed 6-bit scale (−32..31) of
 * sub-block j (0..15) of a q3_K block from its 12 scale bytes. */
void mt_q4_K_scale_min(const uint8_t *s, int j, uint8_t *sc, uint8_t *m);
int mt_q3_K_scale(const uint8_t *s, int j);
/* iq4_nl / iq4_xs code -> value (ggml-common.h kvalues_iq4nl). */
extern const int8_t mt_iq4nl_values[16];

/* ---- block quantizers (kquant_enc.c, legacy.c) -------------------------
 * A block type written from f32 in two steps: `fit` chooses the block's
 * parameters from its weights (llama.cpp's reference search: f16 d and
 * dmin, integer scale and min per sub-block) and reference codes; then
 * each weight has a code on that grid (mt_blk_quant), which is what GPTQ
 * rounds onto column by column with the parameters fixed per block. Codes
 * are signed for the symmetric types (q3_K −4..3, q6_K −32..31, q5_0
 * −16..15) and 0..2^b−1 for the types with a min (q2_K, q4_K, q5_K, q4_1,
 * q5_1). Reached through the storage-type table (mt_dtype_info.blk). */
#define MT_BLK_MAX_SUB 16
typedef struct {
    float dl[MT_BLK_MAX_SUB];   /* per sub-block: weight = dl·q − ml, dl and ml */
    float ml[MT_BLK_MAX_SUB];   /* computed as the decoder computes them        */
    uint16_t d, dmin;           /* the block's f16 fields (dmin: q4_1/q5_1 m)  */
    int16_t sc[MT_BLK_MAX_SUB]; /* integer sub-block scales                    */
    uint8_t m[MT_BLK_MAX_SUB];  /* integer sub-block mins                      */
} mt_blk_params;

typedef struct {
    int elems, bytes;           /* weights and bytes per block                 */
    int sub;                    /* weights per sub-block (one dl, ml)          */
    int qmin, qmax;             /* code range                                  */
    /* parameters of one block from its `elems` weights, and their codes q */
    void (*fit)(const float *x, mt_blk_params *p, int8_t *q);
    void (*pack)(const int8_t *q, const mt_blk_params *p, uint8_t *blk);
    /* fit weighted by the importance qw of the block's `elems` columns, as
       llama.cpp's quantizer with an imatrix (quantize_row_qX_K_impl); NULL:
       the type takes none here */
    void (*fit_w)(const float *x, const float *qw, mt_blk_params *p, int8_t *q);
} mt_blk_codec;

/* Code of weight j (0..elems−1) of a block with parameters p for the value
 * x: nearest((x + ml)/dl) clamped to [qmin, qmax] (0 when dl is 0); its
 * value dl·q − ml, rounded as the decoder rounds it, in *dq. */
int mt_blk_quant(const mt_blk_codec *c, const mt_blk_params *p, int j, float x, float *dq);

/* One block from its codes and f16 scale d, and back (the codes; the
 * return value is d as f16 bits). q8_0 codes are -128..127, q4_0 codes
 * -8..7, ternary codes -1, 0, +1; the weight is d·q. */
void mt_q8_0_pack(const int8_t q[MT_QK8_0], uint16_t d_f16, uint8_t *blk);
uint16_t mt_q8_0_unpack(const uint8_t *blk, int8_t q[MT_QK8_0]);
void mt_q4_0_pack(const int8_t q[MT_QK4_0], uint16_t d_f16, uint8_t *blk);
uint16_t mt_q4_0_unpack(const uint8_t *blk, int8_t q[MT_QK4_0]);
void mt_tq1_0_pack(const int8_t q[MT_QK_K], uint16_t d_f16, uint8_t *blk);
uint16_t mt_tq1_0_unpack(const uint8_t *blk, int8_t q[MT_QK_K]);
void mt_tq2_0_pack(const int8_t q[MT_QK_K], uint16_t d_f16, uint8_t *blk);
uint16_t mt_tq2_0_unpack(const uint8_t *blk, int8_t q[MT_QK_K]);

/* ---- AutoGPTQ packing (lib/io/codec/gptq.c) ---------------------------
 * A (rows = out_features, cols = in_features) matrix of b-bit codes
 * (b = 2, 4, 8; per = 32 / b codes to an int32) in groups of columns:
 *   qweight int32 (cols/per, rows): code of (r, i) in word [i/per][r], bits b·(i%per)
 *   qzeros  int32 (G, rows/per):    zero of (g, r) in word [g][r/per], bits b·(r%per),
 *                                   stored minus quant_zero_offset (1 in AutoGPTQ <= 0.7)
 *   scales  f16   (G, rows)
 *   g_idx   int32 (cols):           group of column i (optional: i / (cols/G))
 * weight (r, i) = scale[g][r] · (code − zero), g = g_idx[i]. */
typedef struct {
    int bits;                    /* 2, 4 or 8                                   */
    int64_t rows, cols, groups;  /* groups G                                    */
    int zero_offset;             /* added to a stored zero point                */
    const uint8_t *qweight, *qzeros, *scales; /* little-endian arrays above     */
    const uint8_t *g_idx;        /* NULL: consecutive groups of cols / G        */
} mt_gptq_view;

/* Code, zero point and group of one element of v. */
int mt_gptq_code(const mt_gptq_view *v, int64_t r, int64_t i);
int mt_gptq_zero(const mt_gptq_view *v, int64_t g, int64_t r);
int64_t mt_gptq_group(const mt_gptq_view *v, int64_t i);
/* Whether v is exactly q4_0 (bits 4) / q8_0 (bits 8) blocks: groups of whole
 * 32-column blocks in order and the symmetric zero point (8 / 128) everywhere
 * — what mt_gptq_pack writes. */
int mt_gptq_is_block(const mt_gptq_view *v);
/* Row r of v as q4_0/q8_0 blocks (when mt_gptq_is_block) or as f32. */
void mt_gptq_row_to_blocks(const mt_gptq_view *v, int64_t r, uint8_t *dst);
void mt_gptq_row_to_f32(const mt_gptq_view *v, int64_t r, float *dst);
/* Packs a q4_0 (bits 4) or q8_0 (bits 8) matrix (rows, cols), row r at
 * src + r·row_bytes, into the AutoGPTQ arrays with one group per 32-column
 * block: qweight (cols/per · rows int32, zeroed by the caller), qzeros
 * (cols/32 · rows/per), scales (cols/32 · rows), g_idx (cols). rows must be
 * a multiple of per. */
void mt_gptq_pack(int bits, const uint8_t *src, uint64_t row_bytes, int64_t rows, int64_t cols, uint32_t *qweight,
                  uint32_t *qzeros, uint16_t *scales, int32_t *g_idx);

#ifdef __cplusplus
}
#endif
#endif
