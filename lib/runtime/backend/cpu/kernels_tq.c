/* kernels_tq.c — llama.cpp's ternary TQ2_0 and TQ1_0 blocks in the runtime:
 * matvec rows (a reference that decodes element by element and a faster one
 * that works on whole 32-byte groups of codes), so that quantize's ternary
 * GGUF output is executed directly. TQ1_0 (mt_tq1_0_unpack, lib/io) is
 * decoded a block at a time into int8 codes, then dotted.
 *
 * block_tq2_0 (66 bytes, 256 weights): uint8 qs[64]; f16 d. Byte 32c + m
 * holds, in bits 2l..2l+1, weight 128c + 32l + m as q + 1 (q in {-1,0,1});
 * the weight is q·d. */
#include "kernels_impl.h"

#include <string.h>

int mt_tq_matvec_rows_ref(const mt_mat *W, const float *x, float *y, int64_t r0, int64_t r1);
int mt_tq_matvec_rows(const mt_mat *W, const float *x, float *y, int64_t r0, int64_t r1);

static inline float tq_d(const uint8_t *blk) {
    uint16_t h;
    memcpy(&h, blk + 64, 2);
    return mt_f16_to_f32(h);
}

/* TQ1_0: one block of codes at a time. */
static void tq1_rows(const mt_mat *W, const float *x, float *y, int64_t r0, int64_t r1, int ref) {
    const int64_t nb = W->cols / 256;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *w = (const uint8_t *)W->data + (uint64_t)r * W->row_stride;
        double sd = 0;
        float sf = 0;
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = w + 54 * b;
            int8_t q[256];
            uint16_t h;
            memcpy(&h, blk + 52, 2);
            const float d = mt_f16_to_f32(h);
            mt_tq1_0_unpack(blk, q);
            const float *xb = x + 256 * b;
            if (ref) {
                for (int e = 0; e < 256; e++) sd += (double)(d * (float)q[e]) * xb[e];
                continue;
            }
            float acc[16] = {0};
            for (int e = 0; e < 256; e += 16)
                for (int m = 0; m < 16; m++) acc[m] += (float)q[e + m] * xb[e + m];
            float t = 0;
            for (int m = 0; m < 16; m++) t += acc[m];
            sf += t * d;
        }
        y[r] = ref ? (float)sd : sf;
    }
}

int mt_tq_matvec_rows_ref(const mt_mat *W, const float *x, float *y, int64_t r0, int64_t r1) {
    if (W->dtype == MT_DT_TQ1_0) {
        tq1_rows(W, x, y, r0, r1, 1);
        return 1;
    }
    if (W->dtype != MT_DT_TQ2_0) return 0;
    const int64_t nb = W->cols / 256;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *w = (const uint8_t *)W->data + (uint64_t)r * W->row_stride;
        double s = 0;
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = w + 66 * b;
            const float d = tq_d(blk);
            for (int e = 0; e < 256; e++) {
                int q = ((blk[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3) - 1;
                s += (double)(d * (float)q) * x[256 * b + e];
            }
        }
        y[r] = (float)s;
    }
    return 1;
}

/* Per block: Σ (q+1)·x − Σ x, with the codes unpacked 32 at a time so the
 * inner loops vectorise; then one multiply by d. */
int mt_tq_matvec_rows(const mt_mat *W, const float *x, float *y, int64_t r0, int64_t r1) {
    if (W->dtype == MT_DT_TQ1_0) {
        tq1_rows(W, x, y, r0, r1, 0);
        return 1;
    }
    if (W->dtype != MT_DT_TQ2_0) return 0;
    const int64_t nb = W->cols / 256;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *w = (const uint8_t *)W->data + (uint64_t)r * W->row_stride;
        float s = 0;
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = w + 66 * b;
            const float *xb = x + 256 * b;
            float acc[32] = {0}, xs[32] = {0};
            for (int c = 0; c < 2; c++)
                for (int l = 0; l < 4; l++) {
                    const float *xx = xb + 128 * c + 32 * l;
                    const uint8_t *q = blk + 32 * c;
                    for (int m = 0; m < 32; m++) {
                        acc[m] += (float)((q[m] >> (2 * l)) & 3) * xx[m];
                        xs[m] += xx[m];
                    }
                }
            float t = 0;
            for (int m = 0; m < 32; m++) t += acc[m] - xs[m];
            s += t * tq_d(blk);
        }
        y[r] = s;
    }
    return 1;
}
