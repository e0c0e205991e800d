/* kernels_kq.c — matvec rows for the read-only llama.cpp block types
 * (lib/io/codec/legacy.c, kquant.c, iq4.c: q4_1, q5_0, q5_1, q2_K..q6_K,
 * q8_K, iq4_nl, iq4_xs).
 *
 * The K-quants q2_K..q6_K do what llama.cpp does: x is quantised once per
 * matvec to q8_K (per 256: an f32 scale dx = −max/127 where max is the
 * element of largest magnitude, codes round(x/dx) clamped to 127, and the
 * sums of each 16 codes), and rows are exact integer dots scaled in f32
 * (kernels_kq8.c, which also holds their prefill GEMM). The other types
 * decode one block to f32 with the type table's to_f32 and dot it in f32
 * with x as llama.cpp's activation type holds it (mt_kq_round_x: q8_K
 * values for iq4_xs and the lattice i-quants, q8_0 values for q4_1, q5_0,
 * q5_1, iq4_nl), which the caller (kernels.c) passes; their prefill
 * (mt_matmul) rounds X the same way before its f32 sgemm, so that moetool
 * computes what llama.cpp computes up to the order of f32 sums
 * (tests/cli_kquant.sh: perplexity within 2.5e-3).
 *
 * The reference (mt_kq_matvec_rows_ref) decodes every weight with to_f32
 * and sums the products in double, without quantising x. */
#include <math.h>
#include <string.h>

#include "kernels_impl.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define KQ_AVX2 1
#endif

static inline float ld_half(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return mt_f16_to_f32(h);
}

int mt_kq_is_q8K_type(mt_dtype t) { return mt_kq8_type(t); }

static int kq_type(mt_dtype t) {
    switch (t) {
    case MT_DT_Q4_1: case MT_DT_Q5_0: case MT_DT_Q5_1: case MT_DT_Q2_K: case MT_DT_Q3_K: case MT_DT_Q4_K:
    case MT_DT_Q5_K: case MT_DT_Q6_K: case MT_DT_Q8_K: case MT_DT_IQ4_NL: case MT_DT_IQ4_XS:
    case MT_DT_IQ2_XXS: case MT_DT_IQ2_XS: case MT_DT_IQ2_S: case MT_DT_IQ3_XXS: case MT_DT_IQ3_S:
    case MT_DT_IQ1_S: case MT_DT_IQ1_M:
        return 1;
    default:
        return 0;
    }
}

int mt_kq_supported(mt_dtype t) { return kq_type(t); }

/* ---- q8_K activations ------------------------------------------------------ */
void mt_kq_quantize_x_q8K_ref(const float *x, int64_t n, int8_t *xq, float *xd, int16_t *bsums) {
    for (int64_t b = 0; b < n / MT_QK_K; b++) {
        const float *xb = x + MT_QK_K * b;
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < MT_QK_K; j++)
            if (fabsf(xb[j]) > amax) {
                amax = fabsf(xb[j]);
                max = xb[j];
            }
        int8_t *q = xq + MT_QK_K * b;
        if (amax == 0.0f) {
            xd[b] = 0.0f;
            memset(q, 0, MT_QK_K);
            memset(bsums + 16 * b, 0, 16 * sizeof *bsums);
            continue;
        }
        const float iscale = -127.0f / max;
        for (int j = 0; j < MT_QK_K; j++) {
            const int v = (int)nearbyintf(iscale * xb[j]);
            q[j] = (int8_t)(v > 127 ? 127 : v);
        }
        for (int s = 0; s < 16; s++) {
            int sum = 0;
            for (int k = 0; k < 16; k++) sum += q[16 * s + k];
            bsums[16 * b + s] = (int16_t)sum;
        }
        xd[b] = 1.0f / iscale;
    }
}

#if defined(__AVX512F__) && defined(__AVX512BW__)
/* The same numbers as the plain C twin above, 16 floats per register: amax
 * by a max tree, max = the first element of that magnitude (as the scalar
 * scan keeps the first), codes by vcvtps2dq (round to nearest even, as
 * nearbyintf in the default rounding mode) clamped to 127, each sum of 16
 * codes one register's sum. A block holding NaN or infinity goes to the
 * plain C twin, whose comparisons skip NaN the way llama.cpp's do. */
void mt_kq_quantize_x_q8K(const float *x, int64_t n, int8_t *xq, float *xd, int16_t *bsums) {
    for (int64_t b = 0; b < n / MT_QK_K; b++) {
        const float *xb = x + MT_QK_K * b;
        __m512 v[16], a[16];
        __mmask16 bad = 0;
        for (int i = 0; i < 16; i++) {
            v[i] = _mm512_loadu_ps(xb + 16 * i);
            a[i] = _mm512_abs_ps(v[i]);
            bad |= _mm512_cmp_ps_mask(a[i], _mm512_set1_ps(INFINITY), _CMP_NLT_UQ); /* inf or NaN */
        }
        if (bad) {
            mt_kq_quantize_x_q8K_ref(xb, MT_QK_K, xq + MT_QK_K * b, xd + b, bsums + 16 * b);
            continue;
        }
        __m512 m = a[0];
        for (int i = 1; i < 16; i++) m = _mm512_max_ps(m, a[i]);
        const float amax = _mm512_reduce_max_ps(m);
        int8_t *q = xq + MT_QK_K * b;
        if (amax == 0.0f) {
            xd[b] = 0.0f;
            memset(q, 0, MT_QK_K);
            memset(bsums + 16 * b, 0, 16 * sizeof *bsums);
            continue;
        }
        const __m512 am = _mm512_set1_ps(amax);
        int j = 0;
        for (int i = 0; i < 16; i++) {
            const __mmask16 k = _mm512_cmp_ps_mask(a[i], am, _CMP_EQ_OQ);
            if (k) {
                j = 16 * i + __builtin_ctz(k);
                break;
            }
        }
        const float iscale = -127.0f / xb[j];
        const __m512 is = _mm512_set1_ps(iscale);
        const __m512i c127 = _mm512_set1_epi32(127);
        for (int i = 0; i < 16; i++) {
            const __m512i c = _mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(v[i], is)), c127);
            _mm_storeu_si128((__m128i *)(void *)(q + 16 * i), _mm512_cvtepi32_epi8(c));
            bsums[16 * b + i] = (int16_t)_mm512_reduce_add_epi32(c);
        }
        xd[b] = 1.0f / iscale;
    }
}
#else
void mt_kq_quantize_x_q8K(const float *x, int64_t n, int8_t *xq, float *xd, int16_t *bsums) {
    mt_kq_quantize_x_q8K_ref(x, n, xq, xd, bsums);
}
#endif

/* The block size of the activation type llama.cpp pairs with t: 256 for
 * q8_K (K-quants, iq4_xs), 32 for q8_0 / q8_1 (q5_0, iq4_nl / q4_1, q5_1). */
static int act_block(mt_dtype t) {
    return t == MT_DT_Q4_1 || t == MT_DT_Q5_0 || t == MT_DT_Q5_1 || t == MT_DT_IQ4_NL ? 32 : MT_QK_K;
}

void mt_kq_round_x(mt_dtype t, const float *x, int64_t n, float *out) {
    if (act_block(t) == MT_QK_K) {
        int8_t q[MT_QK_K];
        float d;
        int16_t bs[16];
        for (int64_t b = 0; b < n / MT_QK_K; b++) {
            mt_kq_quantize_x_q8K(x + MT_QK_K * b, MT_QK_K, q, &d, bs);
            for (int j = 0; j < MT_QK_K; j++) out[MT_QK_K * b + j] = d * (float)q[j];
        }
        return;
    }
    /* q8_0 / q8_1 (quantize_row_q8_0_ref): d = amax/127 stored as f16,
     * codes round(x/d) half away from zero */
    for (int64_t b = 0; b < n / 32; b++) {
        const float *xb = x + 32 * b;
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(xb[j]));
        const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        const float dh = mt_f16_to_f32(mt_f32_to_f16(d));
        for (int j = 0; j < 32; j++) out[32 * b + j] = dh * roundf(xb[j] * id);
    }
}

#ifdef KQ_AVX2
static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static float dot_f32(const float *a, const float *x, int n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = s0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(x + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(x + i + 8), s1);
    }
    float t = hsum8(_mm256_add_ps(s0, s1));
    for (; i < n; i++) t += a[i] * x[i];
    return t;
}
#else
static float dot_f32(const float *a, const float *x, int n) {
    float t = 0.0f;
    for (int i = 0; i < n; i++) t += a[i] * x[i];
    return t;
}
#endif

int mt_kq_matvec_rows_ref(const mt_mat *W, const float *x, float *y, int64_t r0, int64_t r1) {
    if (!kq_type(W->dtype)) return 0;
    const mt_dtype_info *di = mt_dtype_get(W->dtype);
    const int64_t nb = W->cols / di->block_elems;
    float buf[MT_QK_K];
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *w = (const uint8_t *)W->data + (uint64_t)r * W->row_stride;
        double s = 0.0;
        for (int64_t b = 0; b < nb; b++) {
            di->to_f32(w + (int64_t)di->block_bytes * b, buf, di->block_elems);
            const float *xb = x + (int64_t)di->block_elems * b;
            for (int j = 0; j < di->block_elems; j++) s += (double)buf[j] * xb[j];
        }
        y[r] = (float)s;
    }
    return 1;
}

int mt_kq_matvec_rows(const mt_mat *W, const float *x, const int8_t *xq, const float *xd, const int16_t *bs,
                      float *y, int64_t r0, int64_t r1) {
    if (!kq_type(W->dtype)) return 0;
    const mt_dtype_info *di = mt_dtype_get(W->dtype);
    const int64_t nb = W->cols / di->block_elems;
    if (mt_kq_is_q8K_type(W->dtype)) {
        if (!xq) return mt_kq_matvec_rows_ref(W, x, y, r0, r1);
        mt_kq8_rows(W, xq, xd, bs, y, r0, r1);
        return 1;
    }
    float buf[MT_QK_K];
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *w = (const uint8_t *)W->data + (uint64_t)r * W->row_stride;
        float s = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            di->to_f32(w + (int64_t)di->block_bytes * b, buf, di->block_elems);
            s += dot_f32(buf, x + (int64_t)di->block_elems * b, di->block_elems);
        }
        y[r] = s;
    }
    return 1;
}

/* A K-quant row's integer dot in plain C (mt_kq8_rows_ref), for tests. */
float mt_kq_dot_q8K_c(mt_dtype t, const uint8_t *row, const int8_t *xq, const float *xd, const int16_t *bs,
                      int64_t nb) {
    const mt_mat W = {.dtype = t, .rows = 1, .cols = nb * MT_QK_K, .data = (void *)(uintptr_t)row, .row_stride = 0};
    float y;
    mt_kq8_rows_ref(&W, xq, xd, bs, &y, 0, 1);
    return y;
}
