/* kquant.c — llama.cpp's K-quant super-blocks of QK_K = 256 weights
 * (ggml-common.h), read only (to f32). Element e of a block is weight e of
 * the row's 256; "f16" is an IEEE half, all multi-byte fields little-endian.
 * Every product below is rounded to f32 on its own, in the order written
 * (the file is compiled with -ffp-contract=off), which is what gguf-py's
 * numpy dequantizer computes: tests/test_kquant_py.sh checks bit equality.
 *
 * block_q2_K (GGML_TYPE_Q2_K = 10), 84 bytes, 16 sub-blocks of 16:
 *   offset 0   uint8 scales[16]  sub-block s: scale = low nibble, min = high
 *   offset 16  uint8 qs[64]      weight e: 2 bits at 2l of byte 32c + m
 *                                (c = e/128, l = (e%128)/32, m = e%32)
 *   offset 80  f16 d, offset 82 f16 dmin
 *   weight = (d·scale_s)·q − dmin·min_s, s = e/16
 *
 * block_q3_K (11), 110 bytes, 16 sub-blocks of 16:
 *   offset 0   uint8 hmask[32]   bit e/32 of byte e%32: high bit of q
 *   offset 32  uint8 qs[64]      low 2 bits, placed as in q2_K
 *   offset 96  uint8 scales[12]  6-bit scale s: low 4 bits are nibble s/8 of
 *                                byte s%8, high 2 bits are bits 2(s/4) of
 *                                byte 8 + s%4; the scale is that − 32
 *   offset 108 f16 d
 *   weight = (d·scale_s)·(low2 − (high bit ? 0 : 4))
 *
 * block_q4_K (12), 144 bytes, 8 sub-blocks of 32:
 *   offset 0   f16 d, offset 2 f16 dmin
 *   offset 4   uint8 scales[12]  6-bit scale and min of sub-block j (as
 *                                mt_q4_K_scale_min unpacks them)
 *   offset 16  uint8 qs[128]     weight e: nibble (s%2) of byte 32(s/2) + e%32,
 *                                s = e/32
 *   weight = (d·scale_s)·q − dmin·min_s
 *
 * block_q5_K (13), 176 bytes: d, dmin, scales[12] as q4_K, then
 *   offset 16  uint8 qh[32]      bit s of byte e%32: fifth bit of q
 *   offset 48  uint8 qs[128]     low 4 bits as q4_K
 *
 * block_q6_K (14), 210 bytes, 16 sub-blocks of 16:
 *   offset 0   uint8 ql[128]     weight e (h = e/128, i = e%128): nibble i/64
 *                                of byte 64h + i%64
 *   offset 128 uint8 qh[64]      bits 2l..2l+1 of byte 32h + e%32, l = i/32
 *   offset 192 int8 scales[16]
 *   offset 208 f16 d
 *   weight = (d·scale_s)·(q − 32), q = low4 | high2 << 4, s = e/16
 *
 * block_q8_K (15), 292 bytes: f32 d; int8 qs[256]; int16 bsums[16] (sums of
 *   16 codes, redundant); weight = d·q. (llama.cpp's activation type.) */
#include <string.h>

#include "codec_impl.h"

static inline float ld_half(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return mt_f16_to_f32(h);
}

void mt_q4_K_scale_min(const uint8_t *s, int j, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (uint8_t)((s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4));
        *m = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

int mt_q3_K_scale(const uint8_t *s, int j) {
    const int lo = (s[j % 8] >> (4 * (j / 8))) & 0x0f;
    const int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    return (lo | hi << 4) - 32;
}

static void q2_K_block(const uint8_t *b, float *y) {
    const float d = ld_half(b + 80), dmin = ld_half(b + 82);
    for (int s = 0; s < 16; s++) {
        const float dl = d * (float)(b[s] & 0x0f), ml = dmin * (float)(b[s] >> 4);
        for (int k = 0; k < 16; k++) {
            const int e = 16 * s + k;
            const int q = (b[16 + 32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
            y[e] = dl * (float)q - ml;
        }
    }
}

static void q3_K_block(const uint8_t *b, float *y) {
    const float d = ld_half(b + 108);
    for (int s = 0; s < 16; s++) {
        const float dl = d * (float)mt_q3_K_scale(b + 96, s);
        for (int k = 0; k < 16; k++) {
            const int e = 16 * s + k;
            const int lo = (b[32 + 32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
            const int hi = (b[e % 32] >> (e / 32)) & 1;
            y[e] = dl * (float)(lo - (hi ? 0 : 4));
        }
    }
}

/* q4_K and q5_K: qh NULL for q4_K. Inner loops over 32 contiguous bytes so
 * that the compiler vectorises them (each weight is still one product and
 * one difference, rounded on its own). */
static void q45_K_block(const uint8_t *b, const uint8_t *qh, const uint8_t *qs, float *y) {
    const float d = ld_half(b), dmin = ld_half(b + 2);
    for (int s = 0; s < 8; s++) {
        uint8_t sc, m;
        mt_q4_K_scale_min(b + 4, s, &sc, &m);
        const float dl = d * (float)sc, ml = dmin * (float)m;
        const uint8_t *q = qs + 32 * (s / 2);
        const int sh = 4 * (s % 2);
        float *ys = y + 32 * s;
        if (qh)
            for (int k = 0; k < 32; k++) ys[k] = dl * (float)(((q[k] >> sh) & 0x0f) | ((qh[k] >> s) & 1) << 4) - ml;
        else
            for (int k = 0; k < 32; k++) ys[k] = dl * (float)((q[k] >> sh) & 0x0f) - ml;
    }
}

static void q4_K_block(const uint8_t *b, float *y) { q45_K_block(b, NULL, b + 16, y); }
static void q5_K_block(const uint8_t *b, float *y) { q45_K_block(b, b + 16, b + 48, y); }

static void q6_K_block(const uint8_t *b, float *y) {
    const float d = ld_half(b + 208);
    for (int h = 0; h < 2; h++)
        for (int l = 0; l < 4; l++) { /* weights 128h + 32l + m: sub-blocks 8h + 2l and 8h + 2l + 1 */
            const uint8_t *ql = b + 64 * h + 32 * (l % 2), *qh = b + 128 + 32 * h;
            const int sl = 4 * (l / 2), shh = 2 * l;
            for (int half = 0; half < 2; half++) {
                const float dl = d * (float)(int8_t)b[192 + 8 * h + 2 * l + half];
                float *ys = y + 128 * h + 32 * l + 16 * half;
                for (int m = 16 * half; m < 16 * half + 16; m++)
                    ys[m - 16 * half] = dl * (float)((((ql[m] >> sl) & 0x0f) | ((qh[m] >> shh) & 3) << 4) - 32);
            }
        }
}

static void q8_K_block(const uint8_t *b, float *y) {
    float d;
    memcpy(&d, b, 4);
    for (int e = 0; e < MT_QK_K; e++) y[e] = d * (float)(int8_t)b[4 + e];
}

void mt_blocks_each_to_f32(const uint8_t *src, float *dst, int64_t n, int elems, int bytes,
                           void (*block)(const uint8_t *, float *)) {
    for (int64_t b = 0; b < n / elems; b++) block(src + (int64_t)bytes * b, dst + (int64_t)elems * b);
}

#define KQ_ROW(T, BYTES)                                                                           \
    void mt_##T##_row_to_f32(const void *src, float *dst, int64_t n) {                             \
        mt_blocks_each_to_f32(src, dst, n, MT_QK_K, BYTES, T##_block);                            \
    }
KQ_ROW(q2_K, MT_Q2_K_BYTES)
KQ_ROW(q3_K, MT_Q3_K_BYTES)
KQ_ROW(q4_K, MT_Q4_K_BYTES)
KQ_ROW(q5_K, MT_Q5_K_BYTES)
KQ_ROW(q6_K, MT_Q6_K_BYTES)
KQ_ROW(q8_K, MT_Q8_K_BYTES)
