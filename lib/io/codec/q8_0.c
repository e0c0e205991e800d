/* q8_0.c — llama.cpp's block_q8_0 (GGML_TYPE_Q8_0 = 8):
 *   offset 0  f16 d        scale
 *   offset 2  int8 qs[32]  codes; weight j = d · qs[j]
 * 34 bytes per 32 weights. The quantizer is llama.cpp's
 * quantize_row_q8_0_ref (d = amax / 127, codes rounded half away from
 * zero), so that what we write is bit-identical to what llama.cpp writes. */
#include <math.h>
#include <string.h>

#include "codec_impl.h"

void mt_q8_0_pack(const int8_t q[MT_QK8_0], uint16_t d_f16, uint8_t *blk) {
    memcpy(blk, &d_f16, 2);
    for (int j = 0; j < MT_QK8_0; j++) blk[2 + j] = (uint8_t)q[j];
}

uint16_t mt_q8_0_unpack(const uint8_t *blk, int8_t q[MT_QK8_0]) {
    uint16_t h;
    memcpy(&h, blk, 2);
    for (int j = 0; j < MT_QK8_0; j++) q[j] = (int8_t)blk[2 + j];
    return h;
}

void mt_q8_0_row_to_f32(const void *src, float *dst, int64_t n) {
    mt_blocks_to_f32(src, dst, n, MT_QK8_0, MT_Q8_0_BYTES, mt_q8_0_unpack);
}

void mt_q8_0_row_from_f32(const float *src, void *dst, int64_t n) {
    uint8_t *d8 = dst;
    for (int64_t b = 0; b < n / MT_QK8_0; b++) {
        const float *x = src + MT_QK8_0 * b;
        float amax = 0.0f;
        for (int j = 0; j < MT_QK8_0; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax / 127.0f;
        const float id = d ? 1.0f / d : 0.0f;
        int8_t q[MT_QK8_0];
        for (int j = 0; j < MT_QK8_0; j++) q[j] = (int8_t)roundf(x[j] * id);
        mt_q8_0_pack(q, mt_f32_to_f16(d), d8 + MT_Q8_0_BYTES * b);
    }
}
