/* legacy.c — llama.cpp's older blocks of 32 weights with an offset or a
 * fifth bit, read only (to f32). Weight j < 16 is the low nibble of qs[j],
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
