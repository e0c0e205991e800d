/* q4_0.c — llama.cpp's block_q4_0 (GGML_TYPE_Q4_0 = 2):
 *   offset 0  f16 d        scale
 *   offset 2  uint8 qs[16] byte j: weight j in the low nibble, weight 16 + j
 *                          in the high one, each as code + 8 (code -8..7)
 * 18 bytes per 32 weights; weight = d · code. The quantizer is llama.cpp's
 * quantize_row_q4_0_ref (d = the signed value of largest magnitude / -8). */
#include <math.h>
#include <string.h>

#include "codec_impl.h"

void mt_q4_0_pack(const int8_t q[MT_QK4_0], uint16_t d_f16, uint8_t *blk) {
    memcpy(blk, &d_f16, 2);
    for (int j = 0; j < MT_QK4_0 / 2; j++)
        blk[2 + j] = (uint8_t)((uint8_t)(q[j] + 8) | (uint8_t)(q[MT_QK4_0 / 2 + j] + 8) << 4);
}

uint16_t mt_q4_0_unpack(const uint8_t *blk, int8_t q[MT_QK4_0]) {
    uint16_t h;
    memcpy(&h, blk, 2);
    for (int j = 0; j < MT_QK4_0 / 2; j++) {
        q[j] = (int8_t)((blk[2 + j] & 0x0f) - 8);
        q[MT_QK4_0 / 2 + j] = (int8_t)((blk[2 + j] >> 4) - 8);
    }
    return h;
}

void mt_q4_0_row_to_f32(const void *src, float *dst, int64_t n) {
    mt_blocks_to_f32(src, dst, n, MT_QK4_0, MT_Q4_0_BYTES, mt_q4_0_unpack);
}

void mt_q4_0_row_from_f32(const float *src, void *dst, int64_t n) {
    uint8_t *d8 = dst;
    for (int64_t b = 0; b < n / MT_QK4_0; b++) {
        const float *x = src + MT_QK4_0 * b;
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < MT_QK4_0; j++) {
            if (amax < fabsf(x[j])) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        const float d = max / -8.0f;
        const float id = d ? 1.0f / d : 0.0f;
        int8_t q[MT_QK4_0];
        for (int j = 0; j < MT_QK4_0; j++) {
            const float xs = x[j] * id;
            const int8_t xi = (int8_t)(xs + 8.5f); /* truncation, as llama.cpp */
            q[j] = (int8_t)((xi < 15 ? xi : 15) - 8);
        }
        mt_q4_0_pack(q, mt_f32_to_f16(d), d8 + MT_Q4_0_BYTES * b);
    }
}
