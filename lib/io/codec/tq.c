/* tq.c — llama.cpp's ternary super-blocks of 256 weights, q in {-1, 0, +1},
 * weight = d · q:
 *
 * block_tq2_0 (GGML_TYPE_TQ2_0 = 35), 66 bytes:
 *   offset 0   uint8 qs[64]  byte 32c + m holds, in bits 2l..2l+1, weight
 *                            128c + 32l + m as q + 1 (c = 0..1, l = 0..3)
 *   offset 64  f16 d
 *
 * block_tq1_0 (GGML_TYPE_TQ1_0 = 34), 54 bytes:
 *   offset 0   uint8 qs[48]  byte m < 32 holds weights m + 32k (k = 0..4),
 *                            byte 32 + m < 48 weights 160 + m + 16k
 *   offset 48  uint8 qh[4]   byte j holds weights 240 + j + 4k (k = 0..3),
 *                            then a zero digit
 *   offset 52  f16 d
 * each byte the base-3 number of its q + 1 digits (first weight most
 * significant) scaled to 256/243 and rounded up, so that digit k is
 * ((uint8)(byte · 3^k) · 3) >> 8.
 *
 * No quantizer from f32 here (the table's from_f32 is NULL): quantize
 * writes tq2_0 from its grid's codes and repacks to tq1_0 losslessly. */
#include <string.h>

#include "codec_impl.h"

void mt_tq2_0_pack(const int8_t q[MT_QK_K], uint16_t d_f16, uint8_t *blk) {
    memset(blk, 0, 64);
    for (int e = 0; e < MT_QK_K; e++) {
        const int c = e / 128, l = (e % 128) / 32, m = e % 32;
        blk[32 * c + m] |= (uint8_t)((q[e] + 1) << (2 * l));
    }
    memcpy(blk + 64, &d_f16, 2);
}

uint16_t mt_tq2_0_unpack(const uint8_t *blk, int8_t q[MT_QK_K]) {
    for (int e = 0; e < MT_QK_K; e++)
        q[e] = (int8_t)(((blk[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3) - 1);
    uint16_t h;
    memcpy(&h, blk + 64, 2);
    return h;
}

uint16_t mt_tq1_0_unpack(const uint8_t *blk, int8_t q[MT_QK_K]) {
    static const uint8_t pow3[5] = {1, 3, 9, 27, 81};
    for (int k = 0; k < 5; k++) {
        for (int m = 0; m < 32; m++) q[m + 32 * k] = (int8_t)((((uint8_t)(blk[m] * pow3[k])) * 3) >> 8) - 1;
        for (int m = 0; m < 16; m++) q[160 + m + 16 * k] = (int8_t)((((uint8_t)(blk[32 + m] * pow3[k])) * 3) >> 8) - 1;
    }
    for (int k = 0; k < 4; k++)
        for (int j = 0; j < 4; j++) q[240 + j + 4 * k] = (int8_t)((((uint8_t)(blk[48 + j] * pow3[k])) * 3) >> 8) - 1;
    uint16_t h;
    memcpy(&h, blk + 52, 2);
    return h;
}

void mt_tq1_0_pack(const int8_t q[MT_QK_K], uint16_t d_f16, uint8_t *blk) {
    for (int m = 0; m < 32; m++) {
        unsigned v = 0;
        for (int k = 0; k < 5; k++) v = v * 3 + (unsigned)(q[m + 32 * k] + 1);
        blk[m] = (uint8_t)((v * 256 + 242) / 243);
    }
    for (int m = 0; m < 16; m++) {
        unsigned v = 0;
        for (int k = 0; k < 5; k++) v = v * 3 + (unsigned)(q[160 + m + 16 * k] + 1);
        blk[32 + m] = (uint8_t)((v * 256 + 242) / 243);
    }
    for (int j = 0; j < 4; j++) {
        unsigned v = 0;
        for (int k = 0; k < 4; k++) v = v * 3 + (unsigned)(q[240 + j + 4 * k] + 1);
        v *= 3;
        blk[48 + j] = (uint8_t)((v * 256 + 242) / 243);
    }
    memcpy(blk + 52, &d_f16, 2);
}

void mt_tq1_0_row_to_f32(const void *src, float *dst, int64_t n) {
    mt_blocks_to_f32(src, dst, n, MT_QK_K, MT_TQ1_0_BYTES, mt_tq1_0_unpack);
}

void mt_tq2_0_row_to_f32(const void *src, float *dst, int64_t n) {
    mt_blocks_to_f32(src, dst, n, MT_QK_K, MT_TQ2_0_BYTES, mt_tq2_0_unpack);
}
