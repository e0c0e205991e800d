/* kernels_kq.c — matvec rows for the read-only llama.cpp block types
 * (lib/io/codec/legacy.c, kquant.c, iq4.c: q4_1, q5_0, q5_1, q2_K..q6_K,
 * q8_K, iq4_nl, iq4_xs).
 *
 * Q4_K and Q6_K (the bulk of llama.cpp's Q4_K_M, Q5_K_M and Q6_K files) do
 * what llama.cpp does: x is quantised once per matvec to q8_K (per 256: an
 * f32 scale dx = −max/127 where max is the element of largest magnitude,
 * codes round(x/dx) clamped to 127, and the sums of each 16 codes), and a
 * row is integer dot products per sub-block, scaled by the sub-block's
 * 6/8-bit scale, then by d·dx in f32:
 *   q4_K: d·dx·Σ_s sc_s·Σ q·x8 − dmin·dx·Σ_s m_s·(sum of x8 in s)
 *   q6_K: d·dx·(Σ_s sc_s·Σ q·x8 − 32·Σ_s sc_s·(sum of x8 in s)), q = 0..63
 * The AVX2 path (maddubs of the unsigned codes with x8, madd with the
 * scales) and the plain C one (mt_kq_matvec_rows_ref's twin in this file,
 * kq_dot_q4_K_c / kq_dot_q6_K_c) compute the same integers; only the f32
 * accumulation order differs. The other types decode one block to f32 with
 * the type table's to_f32 and dot it in f32 with x as llama.cpp's
 * activation type holds it (mt_kq_round_x: q8_K values for the K-quants
 * and iq4_xs, q8_0 values for q4_1, q5_0, q5_1, iq4_nl), which the caller
 * (kernels.c) passes; prefill (mt_matmul) rounds X the same way before its
 * f32 sgemm, so that moetool computes what llama.cpp computes up to the
 * order of f32 sums (tests/cli_kquant.sh: perplexity within 1e-3).
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

int mt_kq_is_q8K_type(mt_dtype t) { return t == MT_DT_Q4_K || t == MT_DT_Q6_K; }

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
void mt_kq_quantize_x_q8K(const float *x, int64_t n, int8_t *xq, float *xd, int16_t *bsums) {
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

/* ---- plain C integer dots (one super-block) -------------------------------- */
static float kq_dot_q4_K_c(const uint8_t *blk, const int8_t *q8, float dx, const int16_t *bs) {
    int32_t sum = 0, msum = 0;
    for (int s = 0; s < 8; s++) {
        uint8_t sc, m;
        mt_q4_K_scale_min(blk + 4, s, &sc, &m);
        int32_t t = 0;
        const uint8_t *qs = blk + 16 + 32 * (s / 2);
        for (int k = 0; k < 32; k++) t += ((qs[k] >> (4 * (s % 2))) & 0x0f) * q8[32 * s + k];
        sum += sc * t;
        msum += m * (bs[2 * s] + bs[2 * s + 1]);
    }
    return ld_half(blk) * dx * (float)sum - ld_half(blk + 2) * dx * (float)msum;
}

static float kq_dot_q6_K_c(const uint8_t *blk, const int8_t *q8, float dx, const int16_t *bs) {
    int32_t sum = 0, off = 0;
    for (int s = 0; s < 16; s++) {
        const int sc = (int8_t)blk[192 + s];
        int32_t t = 0;
        for (int k = 0; k < 16; k++) {
            const int e = 16 * s + k, h = e / 128, i = e % 128;
            const int lo = (blk[64 * h + i % 64] >> (4 * (i / 64))) & 0x0f;
            const int hi = (blk[128 + 32 * h + i % 32] >> (2 * (i / 32))) & 3;
            t += (lo | hi << 4) * q8[e];
        }
        sum += sc * t;
        off += sc * bs[s];
    }
    return ld_half(blk + 208) * dx * (float)(sum - 32 * off);
}

#ifdef KQ_AVX2
static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* One row of q4_K against q8_K x. */
static float kq_row_q4_K(const uint8_t *w, const int8_t *xq, const float *xd, const int16_t *bs, int64_t nb) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    __m256 acc = _mm256_setzero_ps();
    float mins = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + MT_Q4_K_BYTES * b;
        const int8_t *q8 = xq + MT_QK_K * b;
        const int16_t *bsb = bs + 16 * b;
        __m256i isum = _mm256_setzero_si256();
        int32_t msum = 0;
        for (int j = 0; j < 4; j++) {
            uint8_t sc0, m0, sc1, m1;
            mt_q4_K_scale_min(blk + 4, 2 * j, &sc0, &m0);
            mt_q4_K_scale_min(blk + 4, 2 * j + 1, &sc1, &m1);
            const __m256i q = _mm256_loadu_si256((const __m256i *)(blk + 16 + 32 * j));
            const __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            const __m256i p0 = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(q8 + 64 * j)));
            const __m256i p1 = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(q8 + 64 * j + 32)));
            isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p0, _mm256_set1_epi16(sc0)));
            isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p1, _mm256_set1_epi16(sc1)));
            msum += m0 * (bsb[4 * j] + bsb[4 * j + 1]) + m1 * (bsb[4 * j + 2] + bsb[4 * j + 3]);
        }
        const float dd = ld_half(blk) * xd[b];
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dd), _mm256_cvtepi32_ps(isum), acc);
        mins += ld_half(blk + 2) * xd[b] * (float)msum;
    }
    return hsum8(acc) - mins;
}

/* One row of q6_K against q8_K x. */
static float kq_row_q6_K(const uint8_t *w, const int8_t *xq, const float *xd, const int16_t *bs, int64_t nb) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), m3 = _mm256_set1_epi8(3);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = w + MT_Q6_K_BYTES * b;
        const int8_t *q8 = xq + MT_QK_K * b;
        const int8_t *sc = (const int8_t *)(blk + 192);
        __m256i isum = _mm256_setzero_si256();
        int32_t off = 0;
        for (int s = 0; s < 16; s++) off += sc[s] * bs[16 * b + s];
        for (int h = 0; h < 2; h++) {
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)(blk + 64 * h));
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(blk + 64 * h + 32));
            const __m256i qh = _mm256_loadu_si256((const __m256i *)(blk + 128 + 32 * h));
            const __m256i lo[4] = {_mm256_and_si256(l0, m4), _mm256_and_si256(l1, m4),
                                   _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                   _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4)};
            for (int l = 0; l < 4; l++) {
                const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * l), m3);
                const __m256i q = _mm256_or_si256(lo[l], _mm256_slli_epi16(hi, 4));
                const __m256i p = _mm256_maddubs_epi16(q, _mm256_loadu_si256((const __m256i *)(q8 + 128 * h + 32 * l)));
                const int s = 8 * h + 2 * l;
                const __m256i scv = _mm256_set_m128i(_mm_set1_epi16(sc[s + 1]), _mm_set1_epi16(sc[s]));
                isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, scv));
            }
        }
        /* subtract 32·Σ sc·bsum from lane 0 */
        isum = _mm256_sub_epi32(isum, _mm256_setr_epi32(32 * off, 0, 0, 0, 0, 0, 0, 0));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(ld_half(blk + 208) * xd[b]), _mm256_cvtepi32_ps(isum), acc);
    }
    return hsum8(acc);
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
        const int q4 = W->dtype == MT_DT_Q4_K;
        for (int64_t r = r0; r < r1; r++) {
            const uint8_t *w = (const uint8_t *)W->data + (uint64_t)r * W->row_stride;
#ifdef KQ_AVX2
            y[r] = q4 ? kq_row_q4_K(w, xq, xd, bs, nb) : kq_row_q6_K(w, xq, xd, bs, nb);
#else
            float s = 0.0f;
            for (int64_t b = 0; b < nb; b++)
                s += q4 ? kq_dot_q4_K_c(w + MT_Q4_K_BYTES * b, xq + MT_QK_K * b, xd[b], bs + 16 * b)
                        : kq_dot_q6_K_c(w + MT_Q6_K_BYTES * b, xq + MT_QK_K * b, xd[b], bs + 16 * b);
            y[r] = s;
#endif
        }
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

/* The integer q4_K / q6_K dots in plain C, for tests against the SIMD rows. */
float mt_kq_dot_q8K_c(mt_dtype t, const uint8_t *row, const int8_t *xq, const float *xd, const int16_t *bs,
                      int64_t nb) {
    float s = 0.0f;
    for (int64_t b = 0; b < nb; b++)
        s += t == MT_DT_Q4_K ? kq_dot_q4_K_c(row + MT_Q4_K_BYTES * b, xq + MT_QK_K * b, xd[b], bs + 16 * b)
                             : kq_dot_q6_K_c(row + MT_Q6_K_BYTES * b, xq + MT_QK_K * b, xd[b], bs + 16 * b);
    return s;
}
