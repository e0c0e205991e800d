/* legacy.c — llama.cpp's older blocks of 32 weights with an offset or a
 * fifth bit, to f32 and (at the end) from f32. Weight j < 16 is the low nibble of qs[j],
 * weight 16 + j the high nibble; f16 fields are IEEE halves, little-endian.
 * Products and sums are each rounded to f32 in the order written (the file
 * is compiled with -ffp-contract=off), as gguf-py's numpy dequantizer does.
 *
 * block_q4_1 (GGML_TYPE_Q4_1 = 3), 20 bytes:
 *   offset 0 f16 d; offset 2 f16 m; offset 4 uint8 qs[16]
 *   weight = d·q + m, q = 0..15
 * block_q5_0 (6), 22 bytes:
 *   offset 0 f16 d; offset 2 uint32 qh (bit j: fifth bit of weight j);
 *   offset 6 uint8 qs[16]
 *   weight = d·(q − 16), q = 0..31
 * block_q5_1 (7), 24 bytes:
 *   offset 0 f16 d; offset 2 f16 m; offset 4 uint32 qh; offset 8 qs[16]
 *   weight = d·q + m, q = 0..31 */
#include <float.h>
#include <math.h>
#include <string.h>

#include "codec_impl.h"

static inline float ld_half(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return mt_f16_to_f32(h);
}

/* Codes 0..31 of one block: nibbles at qs, fifth bits from qh (NULL: none). */
static void nib_codes(const uint8_t *qs, const uint8_t *qh, int q[32]) {
    uint32_t h = 0;
    if (qh) memcpy(&h, qh, 4);
    for (int j = 0; j < 16; j++) {
        q[j] = (qs[j] & 0x0f) | (int)((h >> j) & 1) << 4;
        q[16 + j] = (qs[j] >> 4) | (int)((h >> (16 + j)) & 1) << 4;
    }
}

static void q4_1_block(const uint8_t *b, float *y) {
    int q[32];
    nib_codes(b + 4, NULL, q);
    const float d = ld_half(b), m = ld_half(b + 2);
    for (int j = 0; j < 32; j++) y[j] = d * (float)q[j] + m;
}

static void q5_0_block(const uint8_t *b, float *y) {
    int q[32];
    nib_codes(b + 6, b + 2, q);
    const float d = ld_half(b);
    for (int j = 0; j < 32; j++) y[j] = d * (float)(q[j] - 16);
}

static void q5_1_block(const uint8_t *b, float *y) {
    int q[32];
    nib_codes(b + 8, b + 4, q);
    const float d = ld_half(b), m = ld_half(b + 2);
    for (int j = 0; j < 32; j++) y[j] = d * (float)q[j] + m;
}

void mt_q4_1_row_to_f32(const void *src, float *dst, int64_t n) {
    mt_blocks_each_to_f32(src, dst, n, 32, MT_Q4_1_BYTES, q4_1_block);
}
void mt_q5_0_row_to_f32(const void *src, float *dst, int64_t n) {
    mt_blocks_each_to_f32(src, dst, n, 32, MT_Q5_0_BYTES, q5_0_block);
}
void mt_q5_1_row_to_f32(const void *src, float *dst, int64_t n) {
    mt_blocks_each_to_f32(src, dst, n, 32, MT_Q5_1_BYTES, q5_1_block);
}

/* ---- from f32: llama.cpp's quantize_row_q4_1/q5_0/q5_1_ref --------------
 * q4_1, q5_1: d = (max − min)/(2^b − 1), m = min, q = (x − min)/d + 0.5
 * truncated; q5_0: d = (signed value of largest magnitude)/−16, q = x/d +
 * 16.5 truncated, at most 31. The codes use the unrounded d and min, as
 * llama.cpp does; mt_blk_quant (GPTQ) rounds onto the stored f16 grid. */
static void min_max(const float *x, float *mn, float *mx) {
    float lo = FLT_MAX, hi = -FLT_MAX;
    for (int j = 0; j < 32; j++) {
        if (x[j] < lo) lo = x[j];
        if (x[j] > hi) hi = x[j];
    }
    *mn = lo;
    *mx = hi;
}

static void set_params(mt_blk_params *p, uint16_t d, uint16_t m, int has_m) {
    memset(p, 0, sizeof *p);
    p->d = d;
    p->dmin = m;
    p->sc[0] = 1;
    p->dl[0] = mt_f16_to_f32(d);
    p->ml[0] = has_m ? -mt_f16_to_f32(m) : 0.0f; /* weight = d·q + m = d·q − (−m) */
}

static void q41_51_fit(const float *x, mt_blk_params *p, int8_t *q, int nmax) {
    float mn, mx;
    min_max(x, &mn, &mx);
    const float d = (mx - mn) / (float)nmax;
    const float id = d ? 1.0f / d : 0.0f;
    set_params(p, mt_f32_to_f16(d), mt_f32_to_f16(mn), 1);
    for (int j = 0; j < 32; j++) {
        const int v = nmax == 15 ? (int8_t)((x[j] - mn) * id + 0.5f) : (uint8_t)((x[j] - mn) * id + 0.5f);
        q[j] = (int8_t)(v < nmax ? v : nmax);
    }
}

static void q4_1_fit(const float *x, mt_blk_params *p, int8_t *q) { q41_51_fit(x, p, q, 15); }
static void q5_1_fit(const float *x, mt_blk_params *p, int8_t *q) { q41_51_fit(x, p, q, 31); }

static void q5_0_fit(const float *x, mt_blk_params *p, int8_t *q) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < 32; j++)
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    const float d = max / -16;
    const float id = d ? 1.0f / d : 0.0f;
    set_params(p, mt_f32_to_f16(d), 0, 0);
    for (int j = 0; j < 32; j++) {
        const int v = (int8_t)(x[j] * id + 16.5f);
        q[j] = (int8_t)((v < 31 ? v : 31) - 16);
    }
}

/* Nibbles of the codes u (0..31) at qs, fifth bits into *qh. */
static void nib_pack(const int *u, uint8_t *qs, uint8_t *qh) {
    uint32_t h = 0;
    for (int j = 0; j < 16; j++) {
        qs[j] = (uint8_t)((u[j] & 0x0F) | (u[16 + j] & 0x0F) << 4);
        h |= (uint32_t)((u[j] >> 4) & 1) << j;
        h |= (uint32_t)((u[16 + j] >> 4) & 1) << (16 + j);
    }
    if (qh) memcpy(qh, &h, 4);
}

static void q4_1_pack(const int8_t *q, const mt_blk_params *p, uint8_t *b) {
    int u[32];
    for (int j = 0; j < 32; j++) u[j] = q[j];
    memcpy(b, &p->d, 2);
    memcpy(b + 2, &p->dmin, 2);
    nib_pack(u, b + 4, NULL);
}

static void q5_0_pack(const int8_t *q, const mt_blk_params *p, uint8_t *b) {
    int u[32];
    for (int j = 0; j < 32; j++) u[j] = q[j] + 16;
    memcpy(b, &p->d, 2);
    nib_pack(u, b + 6, b + 2);
}

static void q5_1_pack(const int8_t *q, const mt_blk_params *p, uint8_t *b) {
    int u[32];
    for (int j = 0; j < 32; j++) u[j] = q[j];
    memcpy(b, &p->d, 2);
    memcpy(b + 2, &p->dmin, 2);
    nib_pack(u, b + 8, b + 4);
}

const mt_blk_codec mt_q4_1_codec = {32, MT_Q4_1_BYTES, 32, 0, 15, q4_1_fit, q4_1_pack, NULL};
const mt_blk_codec mt_q5_0_codec = {32, MT_Q5_0_BYTES, 32, -16, 15, q5_0_fit, q5_0_pack, NULL};
const mt_blk_codec mt_q5_1_codec = {32, MT_Q5_1_BYTES, 32, 0, 31, q5_1_fit, q5_1_pack, NULL};

void mt_q4_1_row_from_f32(const float *src, void *dst, int64_t n) { mt_blk_row_from_f32(&mt_q4_1_codec, src, dst, n); }
void mt_q5_0_row_from_f32(const float *src, void *dst, int64_t n) { mt_blk_row_from_f32(&mt_q5_0_codec, src, dst, n); }
void mt_q5_1_row_from_f32(const float *src, void *dst, int64_t n) { mt_blk_row_from_f32(&mt_q5_1_codec, src, dst, n); }
