/* gptq.c — the AutoGPTQ int packing (quant_method "gptq", as AutoGPTQ and
 * transformers store it). For a (rows = out_features, cols = in_features)
 * matrix of b-bit codes, b in {2, 4, 8}, per = 32 / b codes to a word, G
 * groups of columns, all arrays little-endian:
 *   qweight int32 (cols/per, rows)  code of (r, i): word [i/per][r], bits b·(i % per)
 *   qzeros  int32 (G, rows/per)     zero of (g, r): word [g][r/per], bits b·(r % per),
 *                                   stored minus zero_offset (1: AutoGPTQ <= 0.7 and
 *                                   what transformers reads as quant_method gptq)
 *   scales  f16   (G, rows)         scale of (g, r)
 *   g_idx   int32 (cols)            group of column i (absent: i / (cols / G))
 * weight (r, i) = scales[g][r] · (code − zero), g = g_idx[i].
 * A q4_0 / q8_0 matrix is exactly this with b = 4 / 8, one group per
 * 32-column block and the symmetric zero 2^(b−1): code = q + 2^(b−1). */
#include <string.h>

#include "codec_impl.h"

static uint32_t rd32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

int mt_gptq_code(const mt_gptq_view *v, int64_t r, int64_t i) {
    const int per = 32 / v->bits;
    const uint32_t w = rd32(v->qweight + 4 * ((uint64_t)(i / per) * (uint64_t)v->rows + (uint64_t)r));
    return (int)(w >> (v->bits * (i % per))) & ((1 << v->bits) - 1);
}

int mt_gptq_zero(const mt_gptq_view *v, int64_t g, int64_t r) {
    const int per = 32 / v->bits;
    const uint32_t w = rd32(v->qzeros + 4 * ((uint64_t)g * (uint64_t)(v->rows / per) + (uint64_t)(r / per)));
    return ((int)(w >> (v->bits * (r % per))) & ((1 << v->bits) - 1)) + v->zero_offset;
}

int64_t mt_gptq_group(const mt_gptq_view *v, int64_t i) {
    return v->g_idx ? (int64_t)(int32_t)rd32(v->g_idx + 4 * i) : i / (v->cols / v->groups);
}

static float scale(const mt_gptq_view *v, int64_t g, int64_t r) {
    uint16_t h;
    memcpy(&h, v->scales + 2 * ((uint64_t)g * (uint64_t)v->rows + (uint64_t)r), 2);
    return mt_f16_to_f32(h);
}

int mt_gptq_is_block(const mt_gptq_view *v) {
    if ((v->bits != 4 && v->bits != 8) || v->g_idx || v->cols % v->groups || (v->cols / v->groups) % 32) return 0;
    const int sym = 1 << (v->bits - 1);
    for (int64_t g = 0; g < v->groups; g++)
        for (int64_t r = 0; r < v->rows; r++)
            if (mt_gptq_zero(v, g, r) != sym) return 0;
    return 1;
}

void mt_gptq_row_to_blocks(const mt_gptq_view *v, int64_t r, uint8_t *dst) {
    const int64_t gs = v->cols / v->groups;
    const int sym = 1 << (v->bits - 1);
    for (int64_t b0 = 0; b0 < v->cols; b0 += 32) {
        const int64_t g = b0 / gs;
        uint16_t d;
        memcpy(&d, v->scales + 2 * ((uint64_t)g * (uint64_t)v->rows + (uint64_t)r), 2);
        int8_t q[32];
        for (int j = 0; j < 32; j++) q[j] = (int8_t)(mt_gptq_code(v, r, b0 + j) - sym);
        if (v->bits == 4) {
            mt_q4_0_pack(q, d, dst);
            dst += MT_Q4_0_BYTES;
        } else {
            mt_q8_0_pack(q, d, dst);
            dst += MT_Q8_0_BYTES;
        }
    }
}

void mt_gptq_row_to_f32(const mt_gptq_view *v, int64_t r, float *dst) {
    for (int64_t i = 0; i < v->cols; i++) {
        const int64_t g = mt_gptq_group(v, i);
        dst[i] = scale(v, g, r) * (float)(mt_gptq_code(v, r, i) - mt_gptq_zero(v, g, r));
    }
}

void mt_gptq_pack(int bits, const uint8_t *src, uint64_t row_bytes, int64_t rows, int64_t cols, uint32_t *qweight,
                  uint32_t *qzeros, uint16_t *scales, int32_t *g_idx) {
    const int per = 32 / bits, sym = 1 << (bits - 1);
    const int64_t nb = cols / 32;
    const size_t bb = bits == 4 ? MT_Q4_0_BYTES : MT_Q8_0_BYTES;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = src + (uint64_t)r * row_bytes + (uint64_t)b * bb;
            int8_t q[32];
            scales[b * rows + r] = bits == 4 ? mt_q4_0_unpack(blk, q) : mt_q8_0_unpack(blk, q);
            for (int j = 0; j < 32; j++) {
                const int64_t i = b * 32 + j;
                qweight[(i / per) * rows + r] |= (uint32_t)(q[j] + sym) << (bits * (i % per));
            }
        }
    /* the symmetric zero point, stored minus one, in every field of a word */
    uint32_t z = 0;
    for (int k = 0; k < per; k++) z |= (uint32_t)(sym - 1) << (bits * k);
    for (int64_t i = 0; i < nb * (rows / per); i++) qzeros[i] = z;
    for (int64_t i = 0; i < cols; i++) g_idx[i] = (int32_t)(i / 32);
}
