/* iquant.c — llama.cpp's lattice i-quants, read only (to f32): super-blocks
 * of 256 weights whose groups of 8 (or 4) weights are points of a fixed
 * grid (iq_grids.h), with sign bits and small per-sub-block scales. f16 d
 * little-endian; products rounded to f32 one at a time in the order written
 * (-ffp-contract=off), as gguf-py's numpy dequantizer computes them
 * (tests/cli_dequant.sh: bit-identical on random blocks).
 *
 * Signs: ksigns_iq2xs[i] is the 7-bit i with an eighth (parity) bit; bit j
 * set = weight j of the group negative.
 *
 * block_iq2_xxs (GGML_TYPE_IQ2_XXS = 16), 66 bytes: f16 d; uint32 q[16].
 *   Sub-block s (32 weights) = words a = q[2s], b = q[2s+1]; scale
 *   db = d·(0.5 + b>>28)·0.25; group l (0..3): grid iq2xxs_grid[byte l of
 *   a], signs ksigns[(b >> 7l) & 127]; weight = db·grid·sign.
 * block_iq2_xs (17), 74 bytes: f16 d; uint16 qs[32]; uint8 scales[8].
 *   Group k (8 weights): grid iq2xs_grid[qs[k] & 511], signs
 *   ksigns[qs[k] >> 9]; db = d·(0.5 + nibble k/2 of scales)·0.25 (nibble
 *   i is bits 4(i%2) of byte i/2).
 * block_iq2_s (22), 82 bytes: f16 d; uint8 qs[32]; uint8 signs[32];
 *   uint8 qh[8]; uint8 scales[8]. Group k: grid iq2s_grid[qs[k] |
 *   ((qh[k/4] >> 2(k%4)) & 3) << 8], sign bits signs[k]; db as iq2_xs.
 * block_iq3_xxs (18), 98 bytes: f16 d; uint8 qs[64]; uint32 sc[8].
 *   Sub-block s: db = d·(0.5 + sc[s]>>28)·0.5; group l (8 weights): signs
 *   ksigns[(sc[s] >> 7l) & 127], values iq3xxs_grid[qs[8s+2l]] then
 *   iq3xxs_grid[qs[8s+2l+1]] (4 each).
 * block_iq3_s (21), 110 bytes: f16 d; uint8 qs[64]; uint8 qh[8];
 *   uint8 signs[32]; uint8 scales[4]. Weight w: grid point k = w/4 is
 *   iq3s_grid[qs[k] | bit k%8 of qh[k/8] << 8], value w%4; sign bit w%8 of
 *   signs[w/8]; db = d·(1 + 2·nibble s) for sub-block s = w/32.
 * block_iq1_s (19), 50 bytes: f16 d; uint8 qs[32]; uint16 qh[8].
 *   Sub-block s: dl = d·(2·((qh[s] >> 12) & 7) + 1), delta = −0.125 when
 *   bit 15 of qh[s] is set else +0.125; group l: grid iq1s_grid[qs[4s+l] |
 *   ((qh[s] >> 3l) & 7) << 8] (−1, 0, +1); weight = dl·(grid + delta).
 * block_iq1_m (29), 56 bytes: uint8 qs[32]; uint8 qh[16]; uint16 sc[4].
 *   d is the f16 whose nibbles are the top nibbles of sc[0..3] (sc[0]'s
 *   lowest); group k: h = qh[k/2] >> 4(k%2), grid iq1s_grid[qs[k] |
 *   (h & 7) << 8], delta −0.125 if h & 8 else +0.125, dl = d·(2·((sc[k/8]
 *   >> 3((k/2)%4)) & 7) + 1); weight = dl·(grid + delta). */
#include <string.h>

#include "codec_impl.h"
#include "iq_grids.h"

static inline float ld_half(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return mt_f16_to_f32(h);
}
static inline uint32_t ld32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
static inline uint16_t ld16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}
static inline float gval(uint64_t row, int j) { return (float)(uint8_t)(row >> (8 * j)); }

/* 8 weights db·grid·sign from a grid row and a sign byte. */
static inline void put8(float *y, float db, uint64_t row, uint8_t signs) {
    for (int j = 0; j < 8; j++) y[j] = db * gval(row, j) * ((signs >> j) & 1 ? -1.0f : 1.0f);
}

static void iq2_xxs_block(const uint8_t *b, float *y) {
    const float d = ld_half(b);
    for (int s = 0; s < 8; s++) {
        const uint32_t a = ld32(b + 2 + 8 * s), c = ld32(b + 6 + 8 * s);
        const float db = d * (0.5f + (float)(c >> 28)) * 0.25f;
        for (int l = 0; l < 4; l++)
            put8(y + 32 * s + 8 * l, db, iq2xxs_grid[(a >> (8 * l)) & 0xff], ksigns_iq2xs[(c >> (7 * l)) & 127]);
    }
}

static inline float db_nibble(float d, const uint8_t *scales, int i) {
    return d * (0.5f + (float)((scales[i / 2] >> (4 * (i % 2))) & 0x0f)) * 0.25f;
}

static void iq2_xs_block(const uint8_t *b, float *y) {
    const float d = ld_half(b);
    for (int k = 0; k < 32; k++) {
        const uint16_t q = ld16(b + 2 + 2 * k);
        put8(y + 8 * k, db_nibble(d, b + 66, k / 2), iq2xs_grid[q & 511], ksigns_iq2xs[q >> 9]);
    }
}

static void iq2_s_block(const uint8_t *b, float *y) {
    const float d = ld_half(b);
    const uint8_t *qs = b + 2, *sg = b + 34, *qh = b + 66, *sc = b + 74;
    for (int k = 0; k < 32; k++) {
        const int idx = qs[k] | ((qh[k / 4] >> (2 * (k % 4))) & 3) << 8;
        put8(y + 8 * k, db_nibble(d, sc, k / 2), iq2s_grid[idx], sg[k]);
    }
}

static void iq3_xxs_block(const uint8_t *b, float *y) {
    const float d = ld_half(b);
    const uint8_t *qs = b + 2;
    for (int s = 0; s < 8; s++) {
        const uint32_t c = ld32(b + 66 + 4 * s);
        const float db = d * (0.5f + (float)(c >> 28)) * 0.5f;
        for (int l = 0; l < 4; l++) {
            const uint64_t row = (uint64_t)iq3xxs_grid[qs[8 * s + 2 * l]] |
                                 (uint64_t)iq3xxs_grid[qs[8 * s + 2 * l + 1]] << 32;
            put8(y + 32 * s + 8 * l, db, row, ksigns_iq2xs[(c >> (7 * l)) & 127]);
        }
    }
}

static void iq3_s_block(const uint8_t *b, float *y) {
    const float d = ld_half(b);
    const uint8_t *qs = b + 2, *qh = b + 66, *sg = b + 74, *sc = b + 106;
    for (int g = 0; g < 32; g++) { /* groups of 8: grid points 2g, 2g+1 */
        const int k0 = 2 * g, k1 = 2 * g + 1;
        const uint64_t row = (uint64_t)iq3s_grid[qs[k0] | ((qh[k0 / 8] >> (k0 % 8)) & 1) << 8] |
                             (uint64_t)iq3s_grid[qs[k1] | ((qh[k1 / 8] >> (k1 % 8)) & 1) << 8] << 32;
        const int s = g / 4;
        const float db = d * (float)(1 + 2 * ((sc[s / 2] >> (4 * (s % 2))) & 0x0f));
        put8(y + 8 * g, db, row, sg[g]);
    }
}

#define IQ1_DELTA 0.125f

static inline void put8_iq1(float *y, float dl, uint64_t row, float delta) {
    for (int j = 0; j < 8; j++) y[j] = dl * ((float)(int8_t)(uint8_t)(row >> (8 * j)) + delta);
}

static void iq1_s_block(const uint8_t *b, float *y) {
    const float d = ld_half(b);
    const uint8_t *qs = b + 2;
    for (int s = 0; s < 8; s++) {
        const uint16_t h = ld16(b + 34 + 2 * s);
        const float dl = d * (float)(2 * ((h >> 12) & 7) + 1);
        const float delta = h & 0x8000 ? -IQ1_DELTA : IQ1_DELTA;
        for (int l = 0; l < 4; l++)
            put8_iq1(y + 32 * s + 8 * l, dl, iq1s_grid[qs[4 * s + l] | ((h >> (3 * l)) & 7) << 8], delta);
    }
}

static void iq1_m_block(const uint8_t *b, float *y) {
    const uint8_t *qs = b, *qh = b + 32;
    uint16_t sc[4];
    for (int i = 0; i < 4; i++) sc[i] = ld16(b + 48 + 2 * i);
    const uint16_t dh = (uint16_t)((sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000));
    const float d = mt_f16_to_f32(dh);
    for (int k = 0; k < 32; k++) {
        const int h = (qh[k / 2] >> (4 * (k % 2))) & 0x0f;
        const int si = k / 2; /* scale index 0..15: 3 bits at 3(si%4) of sc[si/4] */
        const float dl = d * (float)(2 * ((sc[si / 4] >> (3 * (si % 4))) & 7) + 1);
        put8_iq1(y + 8 * k, dl, iq1s_grid[qs[k] | (h & 7) << 8], h & 8 ? -IQ1_DELTA : IQ1_DELTA);
    }
}

#define IQ_ROW(T, BYTES)                                                                           \
    void mt_##T##_row_to_f32(const void *src, float *dst, int64_t n) {                             \
        mt_blocks_each_to_f32(src, dst, n, MT_QK_K, BYTES, T##_block);                            \
    }
IQ_ROW(iq2_xxs, MT_IQ2_XXS_BYTES)
IQ_ROW(iq2_xs, MT_IQ2_XS_BYTES)
IQ_ROW(iq2_s, MT_IQ2_S_BYTES)
IQ_ROW(iq3_xxs, MT_IQ3_XXS_BYTES)
IQ_ROW(iq3_s, MT_IQ3_S_BYTES)
IQ_ROW(iq1_s, MT_IQ1_S_BYTES)
IQ_ROW(iq1_m, MT_IQ1_M_BYTES)
