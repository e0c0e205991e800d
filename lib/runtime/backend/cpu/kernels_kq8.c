/* kernels_kq8.c — integer dots and the integer GEMM for the K-quants
 * (q2_K, q3_K, q4_K, q5_K, q6_K) against activations in q8_K (per 256: an
 * f32 scale xd, 256 int8 codes, int16 sums of each 16 codes; see
 * mt_kq_quantize_x_q8K in kernels_kq.c).
 *
 * Every K-quant super-block is first brought to one form (kq_unp):
 *   weight e = d·a_g·u_e − dm·b_g,  g = e/16, u_e unsigned (0..63)
 *     q2_K: u 2 bits, a = scale nibble, b = min nibble,  dm = dmin
 *     q3_K: u = low2 + 4·high bit (0..7), a = 6-bit scale − 32, b = 4a, dm = d
 *     q4_K: u 4 bits, a/b = 6-bit scale/min of sub-block g/2, dm = dmin
 *     q5_K: u 5 bits, as q4_K
 *     q6_K: u 6 bits, a = int8 scale, b = 32a, dm = d
 * so one dot serves them all. As llama.cpp's kernels do, the f32 sums are
 * kept per SIMD lane across super-blocks and reduced once per row. Per
 * super-block, exact int32 lane sums
 *   P_l = Σ_{j<4} Σ_{i<4} a_g(e) · u_e · x8_e,  e = 64j + 4l + i  (l < 16)
 *   O_m = b_2m · bsum_2m + b_2m+1 · bsum_2m+1                    (m < 8)
 * (|P_l| < 2^24, |O_m| < 2^24), then with fused multiply-adds, per lane,
 *   q3_K, q6_K (dm = d: offsets folded in integers, as llama.cpp does):
 *     F_l = fma(d·xd, P_l − [l < 8] O_l, F_l)
 *   q2_K, q4_K, q5_K:
 *     F_l = fma(d·xd, P_l, F_l),  M_m = fma(−(dm·xd), O_m, M_m)
 * and at the end of the row G_m = (F_m + F_m+8) + M_m, y = (G_0 + G_4 +
 * (G_2 + G_6)) + (G_1 + G_5 + (G_3 + G_7)) (hsum_lanes below). The plain C
 * twin (mt_kq8_rows_ref) and the SIMD paths compute the same integers and
 * the same f32 sequence, so their results are bit-identical; so are decode
 * (one row at a time) and prefill (tiles of rows × tokens), and any split
 * of rows between threads.
 *
 * SIMD (AVX2; with AVX-512 VL + VNNI the same 256-bit code with vpdpwssd
 * and 32 registers): codes unpacked to bytes in element order (shifts and
 * masks), scales expanded to one int16 per pair of elements; per 32
 * elements one vpmaddubsw (u unsigned × x8 signed, pairs to int16: at most
 * 2·63·127, no saturation) and one vpmaddwd+add or vpdpwssd with the
 * scales, even chunks of 32 into P_0..7 and odd ones into P_8..15. With
 * AVX-512 BW as well, the prefill tile takes 64 elements per step in zmm
 * registers, whose 16 int32 lanes are P_0..15 directly. Prefill unpacks
 * KQ_TR rows once and runs KQ_TR × KQ_TT tiles (rows × tokens) over them,
 * each code vector loaded once per tile row and each x vector once per
 * tile column. Builds without AVX2 run the plain C twin. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels_impl.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define KQ8_SIMD 1
#if defined(__AVX512VL__) && defined(__AVX512VNNI__)
#define KQ8_VNNI 1
#if defined(__AVX512BW__)
#define KQ8_512 1
#endif
#endif
#endif

/* One super-block in the common form. ax: a_g expanded to the int16 lanes
 * of vpmaddubsw's output, 16 per 32 elements (lanes 0-7: group 2j, 8-15:
 * group 2j+1). 576 bytes, 64-aligned in arrays. */
typedef struct {
    uint8_t u[256];
    int16_t ax[128];
    int16_t b[16];
    float d, dm;
    uint8_t pad[24];
} kq_unp;

static inline float ld_half(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return mt_f16_to_f32(h);
}

int mt_kq8_type(mt_dtype t) {
    return t == MT_DT_Q2_K || t == MT_DT_Q3_K || t == MT_DT_Q4_K || t == MT_DT_Q5_K || t == MT_DT_Q6_K;
}

static int blk_bytes(mt_dtype t) {
    switch (t) {
    case MT_DT_Q2_K: return MT_Q2_K_BYTES;
    case MT_DT_Q3_K: return MT_Q3_K_BYTES;
    case MT_DT_Q4_K: return MT_Q4_K_BYTES;
    case MT_DT_Q5_K: return MT_Q5_K_BYTES;
    default: return MT_Q6_K_BYTES;
    }
}

/* ---- scales (scalar on every path) --------------------------------------- */
/* mt_q4_K_scale_min / mt_q3_K_scale of lib/io/codec/kquant.c, inlined here:
 * decode calls them for every super-block. */
static inline void q4_K_sm(const uint8_t *s, int j, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (uint8_t)((s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4));
        *m = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}
static inline int q3_K_sc(const uint8_t *s, int j) {
    return (((s[j % 8] >> (4 * (j / 8))) & 0x0f) | ((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4) - 32;
}

static inline __attribute__((always_inline)) void unp_scales(mt_dtype t, const uint8_t *blk, int16_t a[16], kq_unp *o) {
    switch (t) {
    case MT_DT_Q2_K:
        for (int g = 0; g < 16; g++) {
            a[g] = (int16_t)(blk[g] & 0x0f);
            o->b[g] = (int16_t)(blk[g] >> 4);
        }
        o->d = ld_half(blk + 80);
        o->dm = ld_half(blk + 82);
        break;
    case MT_DT_Q3_K:
        for (int g = 0; g < 16; g++) {
            a[g] = (int16_t)q3_K_sc(blk + 96, g);
            o->b[g] = (int16_t)(4 * a[g]);
        }
        o->d = o->dm = ld_half(blk + 108);
        break;
    case MT_DT_Q4_K:
    case MT_DT_Q5_K:
        for (int s = 0; s < 8; s++) {
            uint8_t sc, m;
            q4_K_sm(blk + 4, s, &sc, &m);
            a[2 * s] = a[2 * s + 1] = sc;
            o->b[2 * s] = o->b[2 * s + 1] = m;
        }
        o->d = ld_half(blk);
        o->dm = ld_half(blk + 2);
        break;
    default: /* q6_K */
        for (int g = 0; g < 16; g++) {
            a[g] = (int8_t)blk[192 + g];
            o->b[g] = (int16_t)(32 * a[g]);
        }
        o->d = o->dm = ld_half(blk + 208);
        break;
    }
}

/* ---- codes: plain C --------------------------------------------------------- */
static void unp_codes_c(mt_dtype t, const uint8_t *blk, uint8_t *u) {
    for (int e = 0; e < 256; e++) {
        const int c = e / 128, l = (e % 128) / 32, m = e % 32, s = e / 32;
        int v;
        switch (t) {
        case MT_DT_Q2_K:
            v = (blk[16 + 32 * c + m] >> (2 * l)) & 3;
            break;
        case MT_DT_Q3_K:
            v = ((blk[32 + 32 * c + m] >> (2 * l)) & 3) | ((blk[m] >> s) & 1) << 2;
            break;
        case MT_DT_Q4_K:
            v = (blk[16 + 32 * (s / 2) + m] >> (4 * (s % 2))) & 0x0f;
            break;
        case MT_DT_Q5_K:
            v = ((blk[48 + 32 * (s / 2) + m] >> (4 * (s % 2))) & 0x0f) | ((blk[16 + m] >> s) & 1) << 4;
            break;
        default: { /* q6_K */
            const int h = e / 128, i = e % 128;
            v = ((blk[64 * h + i % 64] >> (4 * (i / 64))) & 0x0f) | ((blk[128 + 32 * h + i % 32] >> (2 * (i / 32))) & 3) << 4;
            break;
        }
        }
        u[e] = (uint8_t)v;
    }
}

static void unpack_c(mt_dtype t, const uint8_t *blk, kq_unp *o) {
    int16_t a[16];
    unp_scales(t, blk, a, o);
    for (int k = 0; k < 128; k++) o->ax[k] = a[2 * (k / 16) + (k % 16) / 8];
    unp_codes_c(t, blk, o->u);
}

/* q3_K and q6_K: offsets in the same scale as the codes (dm = d). */
static inline int same_d(mt_dtype t) { return t == MT_DT_Q3_K || t == MT_DT_Q6_K; }

/* The lane sums P (16) and O (8) of one super-block (plain C). */
static void lanes_c(const kq_unp *w, const int8_t *x, const int16_t *bs, int32_t P[16], int32_t O[8]) {
    for (int l = 0; l < 16; l++) {
        int32_t p = 0;
        for (int j = 0; j < 4; j++)
            for (int i = 0; i < 4; i++) {
                const int e = 64 * j + 4 * l + i;
                p += w->ax[8 * (e / 16)] * ((int32_t)w->u[e] * x[e]);
            }
        P[l] = p;
    }
    for (int m = 0; m < 8; m++) O[m] = w->b[2 * m] * bs[2 * m] + w->b[2 * m + 1] * bs[2 * m + 1];
}

/* The row's f32 lanes to y, in the order of the SIMD reduction. */
static float hsum_lanes(const float F[16], const float M[8]) {
    float G[8], h4[4];
    for (int m = 0; m < 8; m++) G[m] = (F[m] + F[m + 8]) + M[m];
    for (int i = 0; i < 4; i++) h4[i] = G[i] + G[i + 4];
    return (h4[0] + h4[2]) + (h4[1] + h4[3]);
}

/* The plain C twin: rows [r0, r1) of W against one q8_K x. */
void mt_kq8_rows_ref(const mt_mat *W, const int8_t *xq, const float *xd, const int16_t *bs, float *y, int64_t r0,
                     int64_t r1) {
    const int64_t nb = W->cols / MT_QK_K;
    const int bb = blk_bytes(W->dtype);
    const int sd = same_d(W->dtype);
    kq_unp o;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *w = (const uint8_t *)W->data + (uint64_t)r * W->row_stride;
        float F[16] = {0}, M[8] = {0};
        for (int64_t b = 0; b < nb; b++) {
            int32_t P[16], O[8];
            unpack_c(W->dtype, w + (int64_t)bb * b, &o);
            lanes_c(&o, xq + MT_QK_K * b, bs + 16 * b, P, O);
            const float s = o.d * xd[b], sm = -(o.dm * xd[b]);
            if (sd)
                for (int m = 0; m < 8; m++) P[m] -= O[m];
            for (int l = 0; l < 16; l++) F[l] = fmaf(s, (float)P[l], F[l]);
            if (!sd)
                for (int m = 0; m < 8; m++) M[m] = fmaf(sm, (float)O[m], M[m]);
        }
        y[r] = hsum_lanes(F, M);
    }
}

#ifdef KQ8_SIMD
static inline float hf(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* ---- codes: AVX2 ---------------------------------------------------------- */
#define LD(p) _mm256_loadu_si256((const __m256i *)(const void *)(p))
#define ST(p, v) _mm256_store_si256((__m256i *)(void *)(p), v)
static inline __m256i madd_acc(__m256i acc, __m256i p, __m256i s) {
#ifdef KQ8_VNNI
    return _mm256_dpwssd_epi32(acc, p, s);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, s));
#endif
}

/* Scales of one super-block as int16 vectors: A (a_g), B (b_g), g = 0..15,
 * with llama.cpp's bit tricks for the 6-bit fields (the same numbers as
 * unp_scales: tests compare every path with the plain C one). */
static inline __attribute__((always_inline)) void scales_vec(mt_dtype t, const uint8_t *blk, __m256i *A, __m256i *B,
                                                             float *d, float *dm) {
    switch (t) {
    case MT_DT_Q2_K: {
        const __m128i s8 = _mm_loadu_si128((const __m128i *)(const void *)blk);
        *A = _mm256_cvtepu8_epi16(_mm_and_si128(s8, _mm_set1_epi8(0x0f)));
        *B = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(s8, 4), _mm_set1_epi8(0x0f)));
        *d = hf(blk + 80);
        *dm = hf(blk + 82);
        break;
    }
    case MT_DT_Q3_K: {
        uint32_t aux[4];
        memcpy(aux, blk + 96, 12);
        const uint32_t tmp = aux[2], k1 = 0x03030303u, k2 = 0x0f0f0f0fu;
        aux[2] = ((aux[0] >> 4) & k2) | (((tmp >> 4) & k1) << 4);
        aux[3] = ((aux[1] >> 4) & k2) | (((tmp >> 6) & k1) << 4);
        aux[0] = (aux[0] & k2) | (((tmp >> 0) & k1) << 4);
        aux[1] = (aux[1] & k2) | (((tmp >> 2) & k1) << 4);
        const __m128i s8 = _mm_sub_epi8(_mm_loadu_si128((const __m128i *)(const void *)aux), _mm_set1_epi8(32));
        *A = _mm256_cvtepi8_epi16(s8);
        *B = _mm256_slli_epi16(*A, 2);
        *d = *dm = hf(blk + 108);
        break;
    }
    case MT_DT_Q4_K:
    case MT_DT_Q5_K: {
        uint32_t u[4];
        memcpy(u, blk + 4, 12);
        const uint32_t k1 = 0x3f3f3f3fu, k2 = 0x0f0f0f0fu, k3 = 0x03030303u;
        u[3] = ((u[2] >> 4) & k2) | (((u[1] >> 6) & k3) << 4);
        const uint32_t ua = u[1] & k1;
        u[1] = (u[2] & k2) | (((u[0] >> 6) & k3) << 4);
        u[2] = ua;
        u[0] &= k1;
        /* bytes 0..7: scales of sub-blocks 0..7, bytes 8..15: mins */
        const __m128i s8 = _mm_loadu_si128((const __m128i *)(const void *)u);
        const __m128i sc = _mm_unpacklo_epi8(s8, s8), mn = _mm_unpackhi_epi8(s8, s8); /* each twice: per 16 */
        *A = _mm256_cvtepu8_epi16(sc);
        *B = _mm256_cvtepu8_epi16(mn);
        *d = hf(blk);
        *dm = hf(blk + 2);
        break;
    }
    default: /* q6_K */
        *A = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(const void *)(blk + 192)));
        *B = _mm256_slli_epi16(*A, 5);
        *d = *dm = hf(blk + 208);
        break;
    }
}

/* The expanded scales of 32 elements (chunk k): a_{2k} in lanes 0-7,
 * a_{2k+1} in lanes 8-15, from A's halves broadcast to both lanes. */
static const uint8_t g_ax_ctl[4][32] __attribute__((aligned(32))) = {
#define KQ_CTL(k)                                                                                              \
    {4 * k, 4 * k + 1, 4 * k, 4 * k + 1, 4 * k, 4 * k + 1, 4 * k, 4 * k + 1, 4 * k, 4 * k + 1, 4 * k, 4 * k + 1, \
     4 * k, 4 * k + 1, 4 * k, 4 * k + 1, 4 * k + 2, 4 * k + 3, 4 * k + 2, 4 * k + 3, 4 * k + 2, 4 * k + 3,       \
     4 * k + 2, 4 * k + 3, 4 * k + 2, 4 * k + 3, 4 * k + 2, 4 * k + 3, 4 * k + 2, 4 * k + 3, 4 * k + 2, 4 * k + 3}
    KQ_CTL(0), KQ_CTL(1), KQ_CTL(2), KQ_CTL(3)
#undef KQ_CTL
};
static inline __m256i ax_chunk(__m256i Alo, __m256i Ahi, int k) {
    return _mm256_shuffle_epi8(k < 4 ? Alo : Ahi, _mm256_load_si256((const __m256i *)(const void *)g_ax_ctl[k % 4]));
}

/* Scales of one super-block into o (ax expanded, b, d, dm). */
static inline __attribute__((always_inline)) void scales_simd(mt_dtype t, const uint8_t *blk, kq_unp *o) {
    __m256i A, B;
    scales_vec(t, blk, &A, &B, &o->d, &o->dm);
    const __m256i Alo = _mm256_permute4x64_epi64(A, 0x44), Ahi = _mm256_permute4x64_epi64(A, 0xee);
    for (int k = 0; k < 8; k++) ST(o->ax + 16 * k, ax_chunk(Alo, Ahi, k));
    ST(o->b, B);
}

static inline __attribute__((always_inline)) void put32(int dot, uint8_t *u, const int8_t *x, const __m256i *A2,
                                                        __m256i *acc, int off, __m256i v) {
    if (dot) /* even chunks to lanes 0-7 of P, odd chunks to lanes 8-15 */
        acc[(off / 32) & 1] = madd_acc(acc[(off / 32) & 1], _mm256_maddubs_epi16(v, LD(x + off)), ax_chunk(A2[0], A2[1], off / 32));
    else
        ST(u + off, v);
}

/* The codes of one super-block in element order, 32 at a time: stored to
 * u (dot 0), or multiplied with x and the expanded scales ax into acc[0]
 * (even chunks of 32) and acc[1] (odd). */
static inline __attribute__((always_inline)) void codes_simd(int dot, mt_dtype t, const uint8_t *blk, uint8_t *u,
                                                             const int8_t *x, const __m256i *ax, __m256i *acc) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), m3 = _mm256_set1_epi8(3), m1 = _mm256_set1_epi8(1);
    switch (t) {
    case MT_DT_Q2_K:
    case MT_DT_Q3_K: {
        const uint8_t *qs = blk + (t == MT_DT_Q2_K ? 16 : 32);
        const __m256i hm = LD(blk);
        _Pragma("GCC unroll 8")
        for (int c = 0; c < 2; c++) {
            const __m256i q = LD(qs + 32 * c);
            _Pragma("GCC unroll 8")
            for (int l = 0; l < 4; l++) {
                __m256i v = _mm256_and_si256(_mm256_srli_epi16(q, 2 * l), m3);
                if (t == MT_DT_Q3_K)
                    v = _mm256_or_si256(v, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hm, 4 * c + l), m1), 2));
                put32(dot, u, x, ax, acc, 128 * c + 32 * l, v);
            }
        }
        break;
    }
    case MT_DT_Q4_K:
    case MT_DT_Q5_K: {
        const uint8_t *qs = blk + (t == MT_DT_Q4_K ? 16 : 48);
        const __m256i qh = LD(blk + 16);
        _Pragma("GCC unroll 8")
        for (int j = 0; j < 4; j++) {
            const __m256i q = LD(qs + 32 * j);
            __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            if (t == MT_DT_Q5_K) {
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * j), m1), 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * j + 1), m1), 4));
            }
            put32(dot, u, x, ax, acc, 64 * j, lo);
            put32(dot, u, x, ax, acc, 64 * j + 32, hi);
        }
        break;
    }
    default: /* q6_K */
        _Pragma("GCC unroll 8")
        for (int h = 0; h < 2; h++) {
            const __m256i l0 = LD(blk + 64 * h), l1 = LD(blk + 64 * h + 32), qh = LD(blk + 128 + 32 * h);
            const __m256i lo[4] = {_mm256_and_si256(l0, m4), _mm256_and_si256(l1, m4),
                                   _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                   _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4)};
            _Pragma("GCC unroll 8")
            for (int l = 0; l < 4; l++) {
                const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * l), m3);
                put32(dot, u, x, ax, acc, 128 * h + 32 * l, _mm256_or_si256(lo[l], _mm256_slli_epi16(hi, 4)));
            }
        }
        break;
    }
}

static inline __attribute__((always_inline)) void unpack_simd(mt_dtype t, const uint8_t *blk, kq_unp *o) {
    scales_simd(t, blk, o);
    codes_simd(0, t, blk, o->u, NULL, NULL, NULL);
}

/* hsum_lanes of the row's f32 lanes: Flo = F_0..7, Fhi = F_8..15. */
static inline float hsum_lanes_simd(__m256 Flo, __m256 Fhi, __m256 M) {
    const __m256 G = _mm256_add_ps(_mm256_add_ps(Flo, Fhi), M);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(G), _mm256_extractf128_ps(G, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

#define KQ_TR 2 /* rows per tile */
#define KQ_TT 4 /* tokens per tile */
_Static_assert(KQ_TR <= 2 && KQ_TT <= 4, "tile scales are indexed 4r + t in 8 lanes");

/* y[t·ldy + r] (r < R rows of U, t < T tokens of X) = the tile's blocks
 * [0, nb). U: R rows of nb unpacked blocks; token t's codes at xq + t·ldx,
 * scales xd + t·nb, sums bs + 16·t·nb. sd: same_d(type). Per (row, token)
 * the lane arithmetic of mt_kq8_rows_ref. */
static inline __attribute__((always_inline)) void tile(int R, int T, int sd, const kq_unp *U, int64_t nb,
                                                       const int8_t *xq, const float *xd, const int16_t *bs,
                                                       int64_t ldx, float *y, int64_t ldy) {
#ifdef KQ8_512
    __m512 F[KQ_TR][KQ_TT];
#else
    __m256 Flo[KQ_TR][KQ_TT], Fhi[KQ_TR][KQ_TT];
#endif
    __m256 M[KQ_TR][KQ_TT];
    _Pragma("GCC unroll 8")
    for (int r = 0; r < R; r++)
        _Pragma("GCC unroll 8")
        for (int t = 0; t < T; t++) {
#ifdef KQ8_512
            F[r][t] = _mm512_setzero_ps();
#else
            Flo[r][t] = Fhi[r][t] = _mm256_setzero_ps();
#endif
            M[r][t] = _mm256_setzero_ps();
        }
    for (int64_t b = 0; b < nb; b++) {
#ifdef KQ8_512
        /* 64 elements per step: vpdpwssd lane l of step j sums elements
         * 64j + 4l .. 64j + 4l + 3, which is P_l's definition */
        __m512i acc[KQ_TR][KQ_TT];
        _Pragma("GCC unroll 8")
        for (int r = 0; r < R; r++)
            _Pragma("GCC unroll 8")
            for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_si512();
        _Pragma("GCC unroll 8")
        for (int j = 0; j < 4; j++) {
            __m512i u[KQ_TR], a[KQ_TR];
            _Pragma("GCC unroll 8")
            for (int r = 0; r < R; r++) {
                u[r] = _mm512_load_si512((const void *)(U[r * nb + b].u + 64 * j));
                a[r] = _mm512_load_si512((const void *)(U[r * nb + b].ax + 32 * j));
            }
            _Pragma("GCC unroll 8")
            for (int t = 0; t < T; t++) {
                const __m512i x = _mm512_loadu_si512((const void *)(xq + t * ldx + MT_QK_K * b + 64 * j));
                _Pragma("GCC unroll 8")
                for (int r = 0; r < R; r++)
                    acc[r][t] = _mm512_dpwssd_epi32(acc[r][t], _mm512_maddubs_epi16(u[r], x), a[r]);
            }
        }
#else
        /* 32 elements per step: even steps are P_0..7, odd steps P_8..15 */
        __m256i acc[KQ_TR][KQ_TT][2];
        _Pragma("GCC unroll 8")
        for (int r = 0; r < R; r++)
            _Pragma("GCC unroll 8")
            for (int t = 0; t < T; t++) acc[r][t][0] = acc[r][t][1] = _mm256_setzero_si256();
        _Pragma("GCC unroll 8")
        for (int j = 0; j < 8; j++) {
            __m256i u[KQ_TR], a[KQ_TR];
            _Pragma("GCC unroll 8")
            for (int r = 0; r < R; r++) {
                u[r] = _mm256_load_si256((const __m256i *)(const void *)(U[r * nb + b].u + 32 * j));
                a[r] = _mm256_load_si256((const __m256i *)(const void *)(U[r * nb + b].ax + 16 * j));
            }
            _Pragma("GCC unroll 8")
            for (int t = 0; t < T; t++) {
                const __m256i x = LD(xq + t * ldx + MT_QK_K * b + 32 * j);
                _Pragma("GCC unroll 8")
                for (int r = 0; r < R; r++)
                    acc[r][t][j & 1] = madd_acc(acc[r][t][j & 1], _mm256_maddubs_epi16(u[r], x), a[r]);
            }
        }
#endif
        /* d·xd and −(dm·xd) of the whole tile in one vector multiply each
         * (lane 4r + t; the same f32 products as the scalar ones, and
         * −dm·xd = −(dm·xd) exactly), then broadcast per (row, token) from
         * memory */
        float sv[8] __attribute__((aligned(32))), nv[8] __attribute__((aligned(32)));
        {
            const float x0 = xd[b], x1 = T > 1 ? xd[nb + b] : 0.0f, x2 = T > 2 ? xd[2 * nb + b] : 0.0f,
                        x3 = T > 3 ? xd[3 * nb + b] : 0.0f;
            const __m256 xv = _mm256_setr_ps(x0, x1, x2, x3, x0, x1, x2, x3);
            const float d0 = U[b].d, d1 = R > 1 ? U[nb + b].d : 0.0f;
            const float m0 = U[b].dm, m1 = R > 1 ? U[nb + b].dm : 0.0f;
            _mm256_store_ps(sv, _mm256_mul_ps(_mm256_setr_ps(d0, d0, d0, d0, d1, d1, d1, d1), xv));
            if (!sd) _mm256_store_ps(nv, _mm256_mul_ps(_mm256_setr_ps(-m0, -m0, -m0, -m0, -m1, -m1, -m1, -m1), xv));
        }
        _Pragma("GCC unroll 8")
        for (int t = 0; t < T; t++) {
            const __m256i bsv = LD(bs + 16 * (t * nb + b));
            _Pragma("GCC unroll 8")
            for (int r = 0; r < R; r++) {
                const __m256i O = _mm256_madd_epi16(LD(U[r * nb + b].b), bsv);
#ifdef KQ8_512
                __m512i P = acc[r][t];
                if (sd) P = _mm512_sub_epi32(P, _mm512_zextsi256_si512(O));
                F[r][t] = _mm512_fmadd_ps(_mm512_set1_ps(sv[4 * r + t]), _mm512_cvtepi32_ps(P), F[r][t]);
#else
                const __m256 s = _mm256_set1_ps(sv[4 * r + t]);
                __m256i Pl = acc[r][t][0];
                if (sd) Pl = _mm256_sub_epi32(Pl, O);
                Flo[r][t] = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(Pl), Flo[r][t]);
                Fhi[r][t] = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(acc[r][t][1]), Fhi[r][t]);
#endif
                if (!sd) M[r][t] = _mm256_fmadd_ps(_mm256_set1_ps(nv[4 * r + t]), _mm256_cvtepi32_ps(O), M[r][t]);
            }
        }
    }
    _Pragma("GCC unroll 8")
    for (int r = 0; r < R; r++)
        _Pragma("GCC unroll 8")
        for (int t = 0; t < T; t++)
#ifdef KQ8_512
            y[t * ldy + r] = hsum_lanes_simd(_mm512_castps512_ps256(F[r][t]), _mm512_extractf32x8_ps(F[r][t], 1), M[r][t]);
#else
            y[t * ldy + r] = hsum_lanes_simd(Flo[r][t], Fhi[r][t], M[r][t]);
#endif
}

/* One row against x (decode), the codes straight from the registers. */
static inline __attribute__((always_inline)) void rows_fused(mt_dtype t, const mt_mat *W, const int8_t *xq,
                                                             const float *xd, const int16_t *bs, float *y,
                                                             int64_t r0, int64_t r1) {
    const int64_t nb = W->cols / MT_QK_K;
    const int bb = blk_bytes(t), sd = same_d(t);
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *w = (const uint8_t *)W->data + (uint64_t)r * W->row_stride;
        __m256 Flo = _mm256_setzero_ps(), Fhi = Flo, M = Flo;
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = w + (int64_t)bb * b;
            __m256i A, B;
            float d, dm;
            scales_vec(t, blk, &A, &B, &d, &dm);
            const __m256i A2[2] = {_mm256_permute4x64_epi64(A, 0x44), _mm256_permute4x64_epi64(A, 0xee)};
            __m256i acc[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
            codes_simd(1, t, blk, NULL, xq + MT_QK_K * b, A2, acc);
            const __m256i O = _mm256_madd_epi16(B, LD(bs + 16 * b));
            const __m256 s = _mm256_set1_ps(d * xd[b]);
            if (sd) acc[0] = _mm256_sub_epi32(acc[0], O);
            Flo = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(acc[0]), Flo);
            Fhi = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(acc[1]), Fhi);
            if (!sd) M = _mm256_fmadd_ps(_mm256_set1_ps(-(dm * xd[b])), _mm256_cvtepi32_ps(O), M);
        }
        y[r] = hsum_lanes_simd(Flo, Fhi, M);
    }
}

/* Rows [r0, r1) of W times n tokens (prefill). U holds KQ_TR · nb
 * unpacked blocks. */
static inline __attribute__((always_inline)) void rows_tokens_t(int sd, const mt_mat *W, kq_unp *U, const int8_t *xq,
                                                                const float *xd, const int16_t *bs, int64_t ldx, int n,
                                                                float *Y, int64_t ldy, int64_t r0, int64_t r1) {
    const int64_t nb = W->cols / MT_QK_K;
    const int bb = blk_bytes(W->dtype);
    int64_t r = r0;
    for (; r < r1; r += KQ_TR) {
        const int R = r1 - r >= KQ_TR ? KQ_TR : 1;
        for (int k = 0; k < R; k++) {
            const uint8_t *w = (const uint8_t *)W->data + (uint64_t)(r + k) * W->row_stride;
            for (int64_t b = 0; b < nb; b++) unpack_simd(W->dtype, w + (int64_t)bb * b, &U[k * nb + b]);
        }
        int t = 0;
        if (R == KQ_TR) {
            for (; t + KQ_TT <= n; t += KQ_TT)
                tile(KQ_TR, KQ_TT, sd, U, nb, xq + t * ldx, xd + t * nb, bs + 16 * t * nb, ldx, Y + t * ldy + r, ldy);
            for (; t < n; t++)
                tile(KQ_TR, 1, sd, U, nb, xq + t * ldx, xd + t * nb, bs + 16 * t * nb, ldx, Y + t * ldy + r, ldy);
        } else {
            for (; t + KQ_TT <= n; t += KQ_TT)
                tile(1, KQ_TT, sd, U, nb, xq + t * ldx, xd + t * nb, bs + 16 * t * nb, ldx, Y + t * ldy + r, ldy);
            for (; t < n; t++) tile(1, 1, sd, U, nb, xq + t * ldx, xd + t * nb, bs + 16 * t * nb, ldx, Y + t * ldy + r, ldy);
            r -= KQ_TR - 1; /* the remaining rows one at a time */
        }
    }
}
static void rows_tokens(const mt_mat *W, kq_unp *U, const int8_t *xq, const float *xd, const int16_t *bs,
                        int64_t ldx, int n, float *Y, int64_t ldy, int64_t r0, int64_t r1) {
    if (same_d(W->dtype))
        rows_tokens_t(1, W, U, xq, xd, bs, ldx, n, Y, ldy, r0, r1);
    else
        rows_tokens_t(0, W, U, xq, xd, bs, ldx, n, Y, ldy, r0, r1);
}
/* Per-call buffer of KQ_TR rows of unpacked blocks. */
static kq_unp *unp_alloc(int64_t nb) {
    void *p = NULL;
    if (posix_memalign(&p, 64, (size_t)(4 * nb) * sizeof(kq_unp)) != 0) return NULL;
    return p;
}
#endif

void mt_kq8_rows(const mt_mat *W, const int8_t *xq, const float *xd, const int16_t *bs, float *y, int64_t r0,
                 int64_t r1) {
#ifdef KQ8_SIMD
    switch (W->dtype) {
    case MT_DT_Q2_K: rows_fused(MT_DT_Q2_K, W, xq, xd, bs, y, r0, r1); return;
    case MT_DT_Q3_K: rows_fused(MT_DT_Q3_K, W, xq, xd, bs, y, r0, r1); return;
    case MT_DT_Q4_K: rows_fused(MT_DT_Q4_K, W, xq, xd, bs, y, r0, r1); return;
    case MT_DT_Q5_K: rows_fused(MT_DT_Q5_K, W, xq, xd, bs, y, r0, r1); return;
    default: rows_fused(MT_DT_Q6_K, W, xq, xd, bs, y, r0, r1); return;
    }
#else
    mt_kq8_rows_ref(W, xq, xd, bs, y, r0, r1);
#endif
}

/* Y (n, ldy) columns [r0, r1) = n tokens of q8_K x (codes xq + t·cols,
 * scales xd + t·nb, sums bs + 16·t·nb) times rows [r0, r1) of W. 0 when
 * out of memory (nothing written). */
int mt_kq8_gemm(const mt_mat *W, const int8_t *xq, const float *xd, const int16_t *bs, int n, float *Y,
                int64_t ldy, int64_t r0, int64_t r1) {
    const int64_t nb = W->cols / MT_QK_K;
#ifdef KQ8_SIMD
    kq_unp *U = unp_alloc(nb);
    if (!U) return 0;
    rows_tokens(W, U, xq, xd, bs, W->cols, n, Y, ldy, r0, r1);
    free(U);
#else
    float *y = malloc((size_t)W->rows * sizeof(float));
    if (!y) return 0;
    for (int t = 0; t < n; t++) {
        mt_kq8_rows_ref(W, xq + (int64_t)t * W->cols, xd + (int64_t)t * nb, bs + 16 * (int64_t)t * nb, y, r0, r1);
        memcpy(Y + t * ldy + r0, y + r0, (size_t)(r1 - r0) * sizeof(float));
    }
    free(y);
#endif
    return 1;
}
