/* iq4_enc.c — llama.cpp's non-linear 4-bit blocks from f32 (the layouts
 * are at the top of iq4.c), with or without an importance matrix: the
 * search of llama.cpp's quantize_row_iq4_nl_impl as quantize_iq4_nl /
 * quantize_iq4_xs run it (ntry 7, what llama-quantize writes whether or not
 * it has an imatrix):
 *
 *   weights  per 32 weights: w = qw·sqrt(σ² + x²) with the importance qw of
 *            the column (σ² = 2·Σx²/n over the super-block), or x² without
 *   scale    per 32: d = max/values[0] fitted by weighted least squares,
 *            then 15 trial scales (values[0] + t)/max, t = −7..7, keeping
 *            the one maximising (Σ w q x)² / Σ w q²; each weight takes the
 *            nearest table value (best_index_int8)
 *   iq4_xs   the 8 sub-block scales on a 6-bit signed grid under an f16
 *            d = −max_scale/32, every code re-chosen on the final scale
 *
 * Operations follow llama.cpp's reference in order (-ffp-contract=off), so
 * the bytes equal llama.cpp's: tests/cli_iquant_write.sh compares them per
 * tensor with llama_model_quantize given the same importance matrix. */
#include <math.h>
#include <string.h>

#include "codec_impl.h"

#define GROUP_MAX_EPS 1e-15f

/* Index of the table value nearest x in a sorted table of n (a power of 2):
 * level i once x reaches the midpoint of values i−1 and i. */
static inline int best_index_int8(int n, const int8_t *val, float x) {
    const float x2 = x + x;
    int idx = 0;
    for (int step = n >> 1; step > 0; step >>= 1) {
        const int j = idx + step;
        idx = (x2 >= (float)(val[j - 1] + val[j])) ? j : idx;
    }
    return idx;
}

/* One super-block of sbs weights in sub-blocks of 32: *dh, codes L (sbs),
 * and for iq4_xs (sbs 256) the packed scales. */
static void iq4_impl(int sbs, const float *x, uint16_t *dh, uint8_t *q4, uint16_t *scales_h, uint8_t *scales_l,
                     const float *quant_weights) {
    const int bs = 32, ntry = 7;
    const int8_t *values = mt_iq4nl_values;
    float scales[MT_QK_K / 32], weight[32];
    uint8_t L[MT_QK_K];
    float sigma2 = 0;
    for (int j = 0; j < sbs; ++j) sigma2 += x[j] * x[j];
    sigma2 *= 2.f / sbs;
    memset(q4, 0, (size_t)sbs / 2);
    *dh = mt_f32_to_f16(0.f);
    float max_scale = 0, amax_scale = 0;
    for (int ib = 0; ib < sbs / bs; ++ib) {
        const float *xb = x + ib * bs;
        uint8_t *Lb = L + ib * bs;
        if (quant_weights) {
            const float *qw = quant_weights + ib * bs;
            for (int j = 0; j < bs; ++j) weight[j] = qw[j] * sqrtf(sigma2 + xb[j] * xb[j]);
        } else {
            for (int j = 0; j < bs; ++j) weight[j] = xb[j] * xb[j];
        }
        float amax = 0, max = 0;
        for (int j = 0; j < bs; ++j) {
            float ax = fabsf(xb[j]);
            if (ax > amax) {
                amax = ax;
                max = xb[j];
            }
        }
        if (amax < GROUP_MAX_EPS) {
            scales[ib] = 0;
            memset(Lb, 0, (size_t)bs);
            continue;
        }
        float d = -max / values[0];
        float id = 1 / d;
        float sumqx = 0, sumq2 = 0;
        for (int j = 0; j < bs; ++j) {
            float al = id * xb[j];
            int l = best_index_int8(16, values, al);
            Lb[j] = (uint8_t)l;
            float q = values[l];
            float w = weight[j];
            sumqx += w * q * xb[j];
            sumq2 += w * q * q;
        }
        d = sumq2 > 0 ? sumqx / sumq2 : 0.f;
        float best = d * sumqx;
        for (int itry = -ntry; itry <= ntry; ++itry) {
            id = (itry + values[0]) / max;
            sumqx = sumq2 = 0;
            for (int j = 0; j < bs; ++j) {
                float al = id * xb[j];
                int l = best_index_int8(16, values, al);
                float q = values[l];
                float w = weight[j];
                sumqx += w * q * xb[j];
                sumq2 += w * q * q;
            }
            if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
        scales[ib] = d;
        float abs_d = fabsf(d);
        if (abs_d > amax_scale) {
            amax_scale = abs_d;
            max_scale = d;
        }
    }
    if (sbs / bs > 1) {
        memset(scales_h, 0, sizeof *scales_h);
        float d = -max_scale / 32;
        *dh = mt_f32_to_f16(d);
        float id = d ? 1 / d : 0.f;
        for (int ib = 0; ib < sbs / bs; ++ib) {
            int l = mt_nearest_int(id * scales[ib]);
            l = l < -32 ? -32 : l > 31 ? 31 : l;
            float dl = d * l;
            float idl = dl ? 1 / dl : 0.f;
            uint8_t *Lb = L + ib * bs;
            const float *xb = x + ib * bs;
            for (int j = 0; j < bs; ++j) Lb[j] = (uint8_t)best_index_int8(16, values, idl * xb[j]);
            l += 32;
            uint8_t l_l = (uint8_t)(l & 0xf), l_h = (uint8_t)(l >> 4);
            if (ib % 2 == 0) scales_l[ib / 2] = l_l;
            else scales_l[ib / 2] |= (uint8_t)(l_l << 4);
            *scales_h |= (uint16_t)(l_h << 2 * (ib % 8));
        }
    } else {
        *dh = mt_f32_to_f16(scales[0]);
        float id = scales[0] ? 1 / scales[0] : 0;
        for (int j = 0; j < sbs; ++j) L[j] = (uint8_t)best_index_int8(16, values, id * x[j]);
    }
    for (int i = 0; i < sbs / 32; ++i)
        for (int j = 0; j < 16; ++j) q4[16 * i + j] = (uint8_t)(L[32 * i + j] | (L[32 * i + 16 + j] << 4));
}

void mt_iq4_nl_row_from_f32_w(const float *src, void *dst, int64_t n, const float *qw) {
    uint8_t *b = dst;
    for (int64_t i = 0; i < n / 32; i++, b += MT_IQ4_NL_BYTES) {
        uint16_t d, unused_h;
        iq4_impl(32, src + 32 * i, &d, b + 2, &unused_h, NULL, qw ? qw + 32 * i : NULL);
        memcpy(b, &d, 2);
    }
}

void mt_iq4_xs_row_from_f32_w(const float *src, void *dst, int64_t n, const float *qw) {
    uint8_t *b = dst;
    for (int64_t i = 0; i < n / MT_QK_K; i++, b += MT_IQ4_XS_BYTES) {
        uint16_t d, sh;
        iq4_impl(MT_QK_K, src + MT_QK_K * i, &d, b + 8, &sh, b + 4, qw ? qw + MT_QK_K * i : NULL);
        memcpy(b, &d, 2);
        memcpy(b + 2, &sh, 2);
    }
}

void mt_iq4_nl_row_from_f32(const float *src, void *dst, int64_t n) { mt_iq4_nl_row_from_f32_w(src, dst, n, NULL); }
void mt_iq4_xs_row_from_f32(const float *src, void *dst, int64_t n) { mt_iq4_xs_row_from_f32_w(src, dst, n, NULL); }
