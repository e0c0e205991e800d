/* iq4.c — llama.cpp's non-linear 4-bit blocks, read only (to f32): each
 * 4-bit code indexes the 16-value table kvalues_iq4nl of ggml-common.h
 * (the same values as gguf-py's IQ4_NL.kvalues; tests/test_kquant_py.sh
 * decodes random blocks of every code against gguf-py bit for bit).
 * Products are each rounded to f32 (-ffp-contract=off), as gguf-py does.
 *
 * block_iq4_nl (GGML_TYPE_IQ4_NL = 20), 18 bytes, 32 weights:
 *   offset 0 f16 d; offset 2 uint8 qs[16]: weight j < 16 the low nibble of
 *   qs[j], weight 16 + j the high nibble; weight = d·kvalues[code]
 * block_iq4_xs (23), 136 bytes, 256 weights in 8 sub-blocks of 32:
 *   offset 0 f16 d; offset 2 uint16 scales_h (bits 2s..2s+1: high bits of
 *   sub-block s's scale); offset 4 uint8 scales_l[4] (nibble s%2 of byte
 *   s/2: low bits); offset 8 uint8 qs[128], sub-block s at qs + 16s laid out
 *   as one iq4_nl block; weight = (d·(scale_s − 32))·kvalues[code] */
#include <string.h>

#include "codec_impl.h"

const int8_t mt_iq4nl_values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

static inline float ld_half(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return mt_f16_to_f32(h);
}

static void nl32(const uint8_t *qs, float d, float *y) {
    for (int j = 0; j < 16; j++) {
        y[j] = d * (float)mt_iq4nl_values[qs[j] & 0x0f];
        y[16 + j] = d * (float)mt_iq4nl_values[qs[j] >> 4];
    }
}

static void iq4_nl_block(const uint8_t *b, float *y) { nl32(b + 2, ld_half(b), y); }

static void iq4_xs_block(const uint8_t *b, float *y) {
    const float d = ld_half(b);
    uint16_t sh;
    memcpy(&sh, b + 2, 2);
    for (int s = 0; s < 8; s++) {
        const int ls = ((b[4 + s / 2] >> (4 * (s % 2))) & 0x0f) | ((sh >> (2 * s)) & 3) << 4;
        nl32(b + 8 + 16 * s, d * (float)(ls - 32), y + 32 * s);
    }
}

void mt_iq4_nl_row_to_f32(const void *src, float *dst, int64_t n) {
    mt_blocks_each_to_f32(src, dst, n, 32, MT_IQ4_NL_BYTES, iq4_nl_block);
}
void mt_iq4_xs_row_to_f32(const void *src, float *dst, int64_t n) {
    mt_blocks_each_to_f32(src, dst, n, MT_QK_K, MT_IQ4_XS_BYTES, iq4_xs_block);
}
