/* kernels_x86.c — x86 SIMD paths of the runtime's kernels (row dot products
 * for decode matvecs, row conversion to f32 for prefill and embeddings).
 *
 * Compiled for whatever the build targets (-march=native by default, CMake
 * option MT_NATIVE): AVX-512F/BW/DQ/VL paths when the compiler defines them
 * (plus VNNI and VBMI for the block types),
 * AVX2+FMA+F16C paths otherwise, and nothing at all without AVX2, in which
 * case every entry point returns 0 ("not handled") and kernels.c falls back
 * to its plain C reference.
 *
 * Float types (f32, f16, bf16) widen each weight to f32 and FMA against x:
 * AVX-512 does four rows at a time (one accumulator each, masked loads for
 * the column tail), AVX2 one row with four accumulators. Block types (q8_0, q4_0) do what llama.cpp does: x has been
 * quantised once per matvec to int8 blocks of 32 with an f32 scale (see
 * kernels.c), each block's integer dot product is exact in int32
 * (AVX-512 VNNI vpdpbusd when present, else AVX2 maddubs + madd, after the
 * sign trick that makes the left operand unsigned), and is scaled by
 * d_w * d_x into f32 accumulators. q8_0 with VNNI takes two blocks per zmm
 * register (x offset to unsigned, the offset's sum subtracted up front) and
 * two rows per pass, lane for lane the arithmetic of the 256-bit path.
 *
 * Row-independent arithmetic: each output row is computed by the same
 * instruction sequence wherever it falls in a thread split, so threaded
 * matvecs are bit-identical to single-threaded ones. */
#include <string.h>

#include "kernels_impl.h"

/* Entry points used by kernels.c (declared there too). Each returns 1 when it
 * handled the call, 0 when this build has no SIMD path for it. */
int mt_x86_dot_rows(const mt_mat *W, const float *x, const int8_t *xq, const float *xd, const float *xs,
                    float *y, int64_t r0, int64_t r1);
int mt_x86_row_to_f32(mt_dtype t, const void *src, float *dst, int64_t n);
int mt_x86_quantize_x(const float *x, int64_t n, int8_t *xq, float *xd, float *xs);
int mt_x86_gemm_rows(const mt_mat *W, const int8_t *xq, const float *xd, const float *xs, int n, float *Y,
                     int64_t ldy, int64_t r0, int64_t r1);

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
#define MT_X86_AVX512 1
#endif
#if defined(MT_X86_AVX512) && defined(__AVX512VNNI__)
#define MT_X86_VNNI 1
#endif

static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float f16_scale(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* ---- float types ------------------------------------------------------- */
#ifdef MT_X86_AVX512
static inline float hsum512(__m512 v) {
    __m256 s = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    return hsum256(s);
}

/* 16 weights of type T at w[i..] widened to f32 (mask selects the lanes). */
static inline __m512 load16_f32(const float *w, __mmask16 m) { return _mm512_maskz_loadu_ps(m, w); }
static inline __m512 load16_f16(const uint16_t *w, __mmask16 m) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, w));
}
static inline __m512 load16_bf16(const uint16_t *w, __mmask16 m) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, w)), 16));
}

/* One row at a time with four 16-lane accumulators. (A variant doing four
 * rows at a time, sharing each load of x, was no faster on cached matrices
 * and 1.6x slower on streamed f16/bf16 ones: see docs/perf.md.) */
#define MT_DOT512(NAME, WT, LOAD)                                                          \
    static float NAME(const uint8_t *wp, const float *x, int64_t n) {                       \
        const WT *w = (const WT *)(const void *)wp;                                        \
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                          \
        int64_t i = 0;                                                                     \
        for (; i + 64 <= n; i += 64) {                                                     \
            a0 = _mm512_fmadd_ps(LOAD(w + i, 0xffff), _mm512_loadu_ps(x + i), a0);         \
            a1 = _mm512_fmadd_ps(LOAD(w + i + 16, 0xffff), _mm512_loadu_ps(x + i + 16), a1); \
            a2 = _mm512_fmadd_ps(LOAD(w + i + 32, 0xffff), _mm512_loadu_ps(x + i + 32), a2); \
            a3 = _mm512_fmadd_ps(LOAD(w + i + 48, 0xffff), _mm512_loadu_ps(x + i + 48), a3); \
        }                                                                                  \
        for (; i + 16 <= n; i += 16)                                                       \
            a0 = _mm512_fmadd_ps(LOAD(w + i, 0xffff), _mm512_loadu_ps(x + i), a0);         \
        if (i < n) {                                                                       \
            const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);                          \
            a1 = _mm512_fmadd_ps(LOAD(w + i, m), _mm512_maskz_loadu_ps(m, x + i), a1);     \
        }                                                                                  \
        return hsum512(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));       \
    }
MT_DOT512(dot_f32, float, load16_f32)
MT_DOT512(dot_f16, uint16_t, load16_f16)
MT_DOT512(dot_bf16, uint16_t, load16_bf16)

#define MT_FLOAT_ROWS(NAME)                                                                \
    do {                                                                                   \
        for (int64_t r = r0; r < r1; r++) y[r] = NAME(base + r * st, x, n);                \
    } while (0)

#else /* AVX2 */
static inline __m256 load8_f32(const float *w) { return _mm256_loadu_ps(w); }
static inline __m256 load8_f16(const uint16_t *w) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)w)); }
static inline __m256 load8_bf16(const uint16_t *w) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)w)), 16));
}
static inline float scalar_f32(const float *w) { return *w; }
static inline float scalar_f16(const uint16_t *w) { return _cvtsh_ss(*w); }
static inline float scalar_bf16(const uint16_t *w) {
    uint32_t u = (uint32_t)*w << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

#define MT_DOT256(NAME, WT, LOAD, SCALAR)                                                  \
    static float NAME(const uint8_t *wp, const float *x, int64_t n) {                       \
        const WT *w = (const WT *)(const void *)wp;                                        \
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                          \
        int64_t i = 0;                                                                     \
        for (; i + 32 <= n; i += 32) {                                                     \
            a0 = _mm256_fmadd_ps(LOAD(w + i), _mm256_loadu_ps(x + i), a0);                 \
            a1 = _mm256_fmadd_ps(LOAD(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);         \
            a2 = _mm256_fmadd_ps(LOAD(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);       \
            a3 = _mm256_fmadd_ps(LOAD(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);       \
        }                                                                                  \
        for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(LOAD(w + i), _mm256_loadu_ps(x + i), a0); \
        float s = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));     \
        for (; i < n; i++) s += SCALAR(w + i) * x[i];                                      \
        return s;                                                                          \
    }
MT_DOT256(dot_f32, float, load8_f32, scalar_f32)
MT_DOT256(dot_f16, uint16_t, load8_f16, scalar_f16)
MT_DOT256(dot_bf16, uint16_t, load8_bf16, scalar_bf16)

#define MT_FLOAT_ROWS(NAME)                                                                \
    do {                                                                                   \
        for (int64_t r = r0; r < r1; r++) y[r] = NAME(base + r * st, x, n);                \
    } while (0)
#endif

/* ---- block types --------------------------------------------------------- */
/* Every block-type dot product below takes T tokens at once (T = 1..MT_X86_T,
 * a constant at each call site, so the loops over t unroll and the
 * accumulators stay in registers): the weight block is loaded and unpacked
 * once and used for each token, and each token's accumulators see exactly
 * the instruction sequence of T = 1. Decode is T = 1; the prefill GEMM
 * (mt_x86_gemm_rows) runs tiles of T = 4 tokens, so its results are the
 * decode results bit for bit. */
#define MT_X86_T 4
#define MT_X86_INLINE static inline __attribute__((always_inline))

/* Exact int8 x int8 dot of 32 pairs, as 8 int32 partial sums converted to f32.
 * Sign trick: |w| is unsigned, x * sign(w) signed (w = -128 gives |w| = 128 as
 * an unsigned byte, still exact; x is in [-127, 127]). aw = |w|, computed
 * once per weight block. */
MT_X86_INLINE __m256 dot32_i8(__m256i aw, __m256i w, __m256i x) {
    const __m256i sx = _mm256_sign_epi8(x, w);
#ifdef MT_X86_VNNI
    const __m256i dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), aw, sx);
#else
    /* pairs: |w| <= 128, |x| <= 127, so 2 * 128 * 127 fits int16 */
    const __m256i dot = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sx), _mm256_set1_epi16(1));
#endif
    return _mm256_cvtepi32_ps(dot);
}

/* q8_0 block: f16 d at +0, int8 qs[32] at +2 (34 bytes). Token t's x is
 * xq[t] (int8, 32 per block) with scales xd[t]. */
MT_X86_INLINE void dot_q8_0_T(const uint8_t *w, const int8_t *const *xq, const float *const *xd, int64_t nb, int T,
                              float *out) {
    __m256 a0[MT_X86_T], a1[MT_X86_T];
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) a0[t] = a1[t] = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        const uint8_t *b0 = w + 34 * b, *b1 = b0 + 34;
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)(b0 + 2));
        const __m256i w1 = _mm256_loadu_si256((const __m256i *)(b1 + 2));
        const __m256i aw0 = _mm256_sign_epi8(w0, w0), aw1 = _mm256_sign_epi8(w1, w1);
        const float d0 = f16_scale(b0), d1 = f16_scale(b1);
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            const __m256i x0 = _mm256_loadu_si256((const __m256i *)(xq[t] + 32 * b));
            const __m256i x1 = _mm256_loadu_si256((const __m256i *)(xq[t] + 32 * b + 32));
            a0[t] = _mm256_fmadd_ps(_mm256_set1_ps(d0 * xd[t][b]), dot32_i8(aw0, w0, x0), a0[t]);
            a1[t] = _mm256_fmadd_ps(_mm256_set1_ps(d1 * xd[t][b + 1]), dot32_i8(aw1, w1, x1), a1[t]);
        }
    }
    if (b < nb) {
        const uint8_t *b0 = w + 34 * b;
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)(b0 + 2));
        const __m256i aw0 = _mm256_sign_epi8(w0, w0);
        const float d0 = f16_scale(b0);
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            const __m256i x0 = _mm256_loadu_si256((const __m256i *)(xq[t] + 32 * b));
            a0[t] = _mm256_fmadd_ps(_mm256_set1_ps(d0 * xd[t][b]), dot32_i8(aw0, w0, x0), a0[t]);
        }
    }
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) out[t] = hsum256(_mm256_add_ps(a0[t], a1[t]));
}

#ifdef MT_X86_VNNI
/* R rows (R = 1, 2) of q8_0 against T tokens, two blocks per zmm register:
 * lanes 0-7 hold block 2i's 8 int32 partial sums and f32 accumulator, lanes
 * 8-15 block 2i+1's, so lane for lane the arithmetic is the 256-bit path's
 * (a0 = even blocks, a1 = odd blocks, both summed at the end). AVX-512 has
 * no vpsignb, so the int8 x int8 dot takes the offset route instead of the
 * sign trick: vpdpbusd of (x + 128) as unsigned bytes with w, started from
 * -128 * (w's four-byte sums) — the same int32 lanes exactly, the offset
 * computed once per weight block for all T tokens. out[r * MT_X86_T + t]. */
MT_X86_INLINE void dot_q8_0_RT(const uint8_t *const *w, int R, const int8_t *const *xq, const float *const *xd,
                               int64_t nb, int T, float *out) {
    const __m512i off = _mm512_set1_epi8((char)0x80), z = _mm512_setzero_si512();
    const __m512i sel = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    __m512 acc[2][MT_X86_T];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        __m512i wv[2], corr[2];
        __m512 dw[2];
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const uint8_t *b0 = w[r] + 34 * b;
            wv[r] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(b0 + 2))),
                                       _mm256_loadu_si256((const __m256i *)(b0 + 36)), 1);
            corr[r] = _mm512_sub_epi32(z, _mm512_dpbusd_epi32(z, off, wv[r]));
            dw[r] = _mm512_insertf32x8(_mm512_set1_ps(f16_scale(b0)), _mm256_set1_ps(f16_scale(b0 + 34)), 1);
        }
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            const __m512i xu = _mm512_xor_si512(_mm512_loadu_si512(xq[t] + 32 * b), off);
            const __m512 xdv = _mm512_permutexvar_ps(
                sel, _mm512_castps128_ps512(_mm_castsi128_ps(_mm_loadl_epi64((const __m128i *)(const void *)(xd[t] + b)))));
#pragma GCC unroll 4
            for (int r = 0; r < R; r++)
                acc[r][t] = _mm512_fmadd_ps(_mm512_mul_ps(dw[r], xdv),
                                            _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(corr[r], xu, wv[r])), acc[r][t]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++) {
        __m256 a0[MT_X86_T], a1[MT_X86_T];
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            a0[t] = _mm512_castps512_ps256(acc[r][t]);
            a1[t] = _mm512_extractf32x8_ps(acc[r][t], 1);
        }
        if (b < nb) {
            const uint8_t *b0 = w[r] + 34 * b;
            const __m256i w0 = _mm256_loadu_si256((const __m256i *)(b0 + 2));
            const __m256i aw0 = _mm256_sign_epi8(w0, w0);
            const float d0 = f16_scale(b0);
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) {
                const __m256i x0 = _mm256_loadu_si256((const __m256i *)(xq[t] + 32 * b));
                a0[t] = _mm256_fmadd_ps(_mm256_set1_ps(d0 * xd[t][b]), dot32_i8(aw0, w0, x0), a0[t]);
            }
        }
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) out[r * MT_X86_T + t] = hsum256(_mm256_add_ps(a0[t], a1[t]));
    }
}
#endif

/* q4_0 block: f16 d at +0, 16 bytes at +2: low nibbles are elements 0..15,
 * high nibbles 16..31; value = d * (nibble - 8). */
static inline __m256i q4_unpack(const uint8_t *qs) {
    const __m128i t = _mm_loadu_si128((const __m128i *)qs);
    const __m256i b = _mm256_insertf128_si256(_mm256_castsi128_si256(t), _mm_srli_epi16(t, 4), 1);
    return _mm256_sub_epi8(_mm256_and_si256(b, _mm256_set1_epi8(0x0f)), _mm256_set1_epi8(8));
}

/* One block the 256-bit way (tails, and builds without AVX-512 VBMI/VNNI),
 * for T tokens: acc[t] += d_w * d_x * dot, the block's codes unpacked once. */
MT_X86_INLINE void q4_block_T(const uint8_t *blk, const int8_t *const *xq, const float *const *xd, int64_t b,
                              int T, __m256 *acc) {
    const __m256i q = q4_unpack(blk + 2), aq = _mm256_sign_epi8(q, q);
    const float d = f16_scale(blk);
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) {
        const __m256i x = _mm256_loadu_si256((const __m256i *)(xq[t] + 32 * b));
        acc[t] = _mm256_add_ps(acc[t], _mm256_mul_ps(_mm256_set1_ps(d * xd[t][b]), dot32_i8(aq, q, x)));
    }
}

#if defined(MT_X86_VNNI) && defined(__AVX512VBMI__)
/* Eight q4_0 blocks (144 bytes) per step, all in zmm registers:
 *  - vpermt2b picks the 8 f16 scales out of the first 128 bytes, and the
 *    nibble bytes of blocks 0-3 (bytes 2..71) and 4-7 (bytes 74..143) into
 *    one register each: [q0 | q1 | q2 | q3], 16 bytes per 128-bit lane;
 *  - nibbles stay unsigned (0..15) as vpdpbusd's unsigned operand, so no
 *    sign trick is needed; the -8 offset is applied once per block as
 *    -8 * d_w * d_x * sum(x_q), with sum(x_q) precomputed per block (xs);
 *  - x blocks are re-laned to match: low halves (elements 0..15) of four
 *    blocks in one register, high halves in another.
 * The last load is masked to the group's 144 bytes, so nothing past the row
 * is touched. About 4.5 instructions per block instead of ~17. With T
 * tokens the loads, permutes and nibble masks are done once per group. */
static const uint8_t k_q4_idx_d[64] = {0, 1, 18, 19, 36, 37, 54, 55, 72, 73, 90, 91, 108, 109, 126, 127};
static uint8_t k_q4_idx_lo[64], k_q4_idx_hi[64];
static int k_q4_idx_ready; /* benign race: every thread writes the same bytes */

MT_X86_INLINE void dot_q4_0_T(const uint8_t *w, const int8_t *const *xq, const float *const *xd,
                              const float *const *xs, int64_t nb, int T, float *out) {
    if (!__atomic_load_n(&k_q4_idx_ready, __ATOMIC_ACQUIRE)) {
        for (int j = 0; j < 64; j++) {
            k_q4_idx_lo[j] = (uint8_t)(18 * (j / 16) + 2 + j % 16);          /* blocks 0..3 from w       */
            k_q4_idx_hi[j] = (uint8_t)(18 * (4 + j / 16) + 2 + j % 16 - 64); /* blocks 4..7 from w + 64  */
        }
        __atomic_store_n(&k_q4_idx_ready, 1, __ATOMIC_RELEASE);
    }
    const __m512i vidx_d = _mm512_loadu_si512(k_q4_idx_d), vidx_lo = _mm512_loadu_si512(k_q4_idx_lo),
                  vidx_hi = _mm512_loadu_si512(k_q4_idx_hi);
    const __m512i sel0 = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    const __m512i sel1 = _mm512_add_epi32(sel0, _mm512_set1_epi32(4));
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    __m512 acc0[MT_X86_T], acc1[MT_X86_T];
    __m256 corr[MT_X86_T];
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) {
        acc0[t] = acc1[t] = _mm512_setzero_ps();
        corr[t] = _mm256_setzero_ps();
    }
    int64_t b = 0;
    for (; b + 8 <= nb; b += 8) {
        const uint8_t *g = w + 18 * b;
        /* ~1 KiB ahead: the hardware prefetcher alone left q4_0 at 1.7x the
         * bandwidth floor (docs/perf.md); reads past the row are harmless. */
        _mm_prefetch((const char *)(g + 1024), _MM_HINT_T0);
        _mm_prefetch((const char *)(g + 1088), _MM_HINT_T0);
        _mm_prefetch((const char *)(g + 1152), _MM_HINT_T0);
        const __m512i z0 = _mm512_loadu_si512(g), z1 = _mm512_loadu_si512(g + 64);
        const __m512i z2 = _mm512_maskz_loadu_epi8(0xffff, g + 128);
        /* the 8 blocks' f16 scales, and their nibbles: blocks 0..3, 4..7 */
        const __m256 dw = _mm256_cvtph_ps(_mm512_castsi512_si128(_mm512_permutex2var_epi8(z0, vidx_d, z1)));
        const __m512i qa = _mm512_permutex2var_epi8(z0, vidx_lo, z1), qb = _mm512_permutex2var_epi8(z1, vidx_hi, z2);
        const __m512i lo_a = _mm512_and_si512(qa, m4), hi_a = _mm512_and_si512(_mm512_srli_epi16(qa, 4), m4);
        const __m512i lo_b = _mm512_and_si512(qb, m4), hi_b = _mm512_and_si512(_mm512_srli_epi16(qb, 4), m4);
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            /* scales d_w * d_x for the 8 blocks */
            const __m256 sc = _mm256_mul_ps(dw, _mm256_loadu_ps(xd[t] + b));
            corr[t] = _mm256_fmadd_ps(sc, _mm256_loadu_ps(xs[t] + b), corr[t]);
            const __m512 sc8 = _mm512_castps256_ps512(sc);
            const int8_t *x = xq[t] + 32 * b;
            {
                const __m512i xa = _mm512_loadu_si512(x), xb = _mm512_loadu_si512(x + 64);
                const __m512i xlo = _mm512_shuffle_i64x2(xa, xb, _MM_SHUFFLE(2, 0, 2, 0));
                const __m512i xhi = _mm512_shuffle_i64x2(xa, xb, _MM_SHUFFLE(3, 1, 3, 1));
                const __m512i d = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo_a, xlo), hi_a, xhi);
                acc0[t] = _mm512_fmadd_ps(_mm512_permutexvar_ps(sel0, sc8), _mm512_cvtepi32_ps(d), acc0[t]);
            }
            {
                const __m512i xa = _mm512_loadu_si512(x + 128), xb = _mm512_loadu_si512(x + 192);
                const __m512i xlo = _mm512_shuffle_i64x2(xa, xb, _MM_SHUFFLE(2, 0, 2, 0));
                const __m512i xhi = _mm512_shuffle_i64x2(xa, xb, _MM_SHUFFLE(3, 1, 3, 1));
                const __m512i d = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo_b, xlo), hi_b, xhi);
                acc1[t] = _mm512_fmadd_ps(_mm512_permutexvar_ps(sel1, sc8), _mm512_cvtepi32_ps(d), acc1[t]);
            }
        }
    }
    float s[MT_X86_T];
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) s[t] = hsum512(_mm512_add_ps(acc0[t], acc1[t])) - 8.0f * hsum256(corr[t]);
    if (b < nb) {
        __m256 tail[MT_X86_T];
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) tail[t] = _mm256_setzero_ps();
        for (; b < nb; b++) q4_block_T(w + 18 * b, xq, xd, b, T, tail);
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) s[t] += hsum256(tail[t]);
    }
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) out[t] = s[t];
}
#else
MT_X86_INLINE void dot_q4_0_T(const uint8_t *w, const int8_t *const *xq, const float *const *xd,
                              const float *const *xs, int64_t nb, int T, float *out) {
    (void)xs;
    __m256 a0[MT_X86_T], a1[MT_X86_T];
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) a0[t] = a1[t] = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        const uint8_t *b0 = w + 18 * b, *b1 = b0 + 18;
        const __m256i q0 = q4_unpack(b0 + 2), q1 = q4_unpack(b1 + 2);
        const __m256i aq0 = _mm256_sign_epi8(q0, q0), aq1 = _mm256_sign_epi8(q1, q1);
        const float d0 = f16_scale(b0), d1 = f16_scale(b1);
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            const __m256i x0 = _mm256_loadu_si256((const __m256i *)(xq[t] + 32 * b));
            const __m256i x1 = _mm256_loadu_si256((const __m256i *)(xq[t] + 32 * b + 32));
            a0[t] = _mm256_fmadd_ps(_mm256_set1_ps(d0 * xd[t][b]), dot32_i8(aq0, q0, x0), a0[t]);
            a1[t] = _mm256_fmadd_ps(_mm256_set1_ps(d1 * xd[t][b + 1]), dot32_i8(aq1, q1, x1), a1[t]);
        }
    }
    if (b < nb) q4_block_T(w + 18 * b, xq, xd, b, T, a0);
#pragma GCC unroll 4
    for (int t = 0; t < T; t++) out[t] = hsum256(_mm256_add_ps(a0[t], a1[t]));
}
#endif

/* Rows [r0, r1) of a block-type W for T tokens (x of token t at xq[t],
 * xd[t], xs[t]); y[t][r] written. */
MT_X86_INLINE void block_rows_T(const mt_mat *W, const int8_t *const *xq, const float *const *xd,
                                const float *const *xs, int T, float *const *y, int64_t r0, int64_t r1) {
    const uint8_t *base = W->data;
    const uint64_t st = W->row_stride;
    const int64_t nb = W->cols / 32;
    float o[MT_X86_T];
    int64_t r = r0;
#ifdef MT_X86_VNNI
    if (W->dtype == MT_DT_Q8_0) {
        float o2[2 * MT_X86_T];
        /* pairs of rows share each token's loads in the GEMM; decode (T = 1)
         * streams one row at a time: two interleaved row streams from DRAM
         * were measured 3x slower (bench_matvec q8_0 1024x3584 cold) */
        for (; T > 1 && r + 2 <= r1; r += 2) {
            const uint8_t *wr[2] = {base + r * st, base + (r + 1) * st};
            dot_q8_0_RT(wr, 2, xq, xd, nb, T, o2);
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) y[t][r] = o2[t], y[t][r + 1] = o2[MT_X86_T + t];
        }
        for (; r < r1; r++) {
            const uint8_t *wr[1] = {base + r * st};
            dot_q8_0_RT(wr, 1, xq, xd, nb, T, o2);
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) y[t][r] = o2[t];
        }
        return;
    }
#endif
    for (; r < r1; r++) {
        if (W->dtype == MT_DT_Q8_0)
            dot_q8_0_T(base + r * st, xq, xd, nb, T, o);
        else
            dot_q4_0_T(base + r * st, xq, xd, xs, nb, T, o);
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) y[t][r] = o[t];
    }
}

/* Rows of W per pass over the token tiles in the GEMM: 32 rows of a
 * 4096-column q8_0 matrix are 136 KiB, kept in L2 while every tile of
 * tokens runs over them. */
#define MT_X86_GEMM_ROWS 32

int mt_x86_gemm_rows(const mt_mat *W, const int8_t *xq, const float *xd, const float *xs, int n, float *Y,
                     int64_t ldy, int64_t r0, int64_t r1) {
    if (W->dtype != MT_DT_Q8_0 && W->dtype != MT_DT_Q4_0) return 0;
    const int64_t cols = W->cols, nb = cols / 32;
    for (int64_t c0 = r0; c0 < r1; c0 += MT_X86_GEMM_ROWS) {
        const int64_t c1 = c0 + MT_X86_GEMM_ROWS < r1 ? c0 + MT_X86_GEMM_ROWS : r1;
        for (int t0 = 0; t0 < n; t0 += MT_X86_T) {
            const int T = n - t0 < MT_X86_T ? n - t0 : MT_X86_T;
            const int8_t *q[MT_X86_T];
            const float *d[MT_X86_T], *sm[MT_X86_T];
            float *y[MT_X86_T];
            for (int t = 0; t < T; t++) {
                q[t] = xq + (int64_t)(t0 + t) * cols;
                d[t] = xd + (int64_t)(t0 + t) * nb;
                sm[t] = xs + (int64_t)(t0 + t) * nb;
                y[t] = Y + (int64_t)(t0 + t) * ldy;
            }
            switch (T) {
            case 4: block_rows_T(W, q, d, sm, 4, y, c0, c1); break;
            case 3: block_rows_T(W, q, d, sm, 3, y, c0, c1); break;
            case 2: block_rows_T(W, q, d, sm, 2, y, c0, c1); break;
            default: block_rows_T(W, q, d, sm, 1, y, c0, c1); break;
            }
        }
    }
    return 1;
}

int mt_x86_dot_rows(const mt_mat *W, const float *x, const int8_t *xq, const float *xd, const float *xs,
                    float *y, int64_t r0, int64_t r1) {
    const uint8_t *base = W->data;
    const uint64_t st = W->row_stride;
    const int64_t n = W->cols;
    switch (W->dtype) {
    case MT_DT_F32:
        MT_FLOAT_ROWS(dot_f32);
        return 1;
    case MT_DT_F16:
        MT_FLOAT_ROWS(dot_f16);
        return 1;
    case MT_DT_BF16:
        MT_FLOAT_ROWS(dot_bf16);
        return 1;
    case MT_DT_Q8_0:
    case MT_DT_Q4_0:
        if (!xq) return 0;
        block_rows_T(W, &xq, &xd, &xs, 1, &y, r0, r1);
        return 1;
    default:
        return 0;
    }
}

/* ---- activations to q8 blocks ------------------------------------------- */
/* Same rule as the scalar quantiser in kernels.c: d = amax / 127,
 * q = round-to-nearest-even(x / d) (x * (127 / amax)). */
int mt_x86_quantize_x(const float *x, int64_t n, int8_t *xq, float *xd, float *xs) {
    const __m256 signbit = _mm256_set1_ps(-0.0f);
    for (int64_t b = 0; b < n / 32; b++) {
        const float *xb = x + 32 * b;
        __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8);
        __m256 v2 = _mm256_loadu_ps(xb + 16), v3 = _mm256_loadu_ps(xb + 24);
        __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(signbit, v0), _mm256_andnot_ps(signbit, v1)),
                                 _mm256_max_ps(_mm256_andnot_ps(signbit, v2), _mm256_andnot_ps(signbit, v3)));
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        const float amax = _mm_cvtss_f32(h);
        xd[b] = amax / 127.0f;
        const __m256 id = _mm256_set1_ps(amax != 0.0f ? 127.0f / amax : 0.0f);
        const __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, id)); /* MXCSR default: nearest-even */
        const __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, id));
        const __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, id));
        const __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, id));
        /* packs work per 128-bit lane: fix the order with a final permute */
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(xq + 32 * b), p);
        /* sum of the 32 int8: pairs to int16 (x 1), then to int32 */
        const __m256i s32 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), p), _mm256_set1_epi16(1));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s32), _mm256_extracti128_si256(s32, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(1, 0, 3, 2)));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(2, 3, 0, 1)));
        xs[b] = (float)_mm_cvtsi128_si32(s4);
    }
    return 1;
}

/* ---- rows to f32 ---------------------------------------------------------- */
int mt_x86_row_to_f32(mt_dtype t, const void *src, float *dst, int64_t n) {
    const uint8_t *s = src;
    int64_t i = 0;
    switch (t) {
    case MT_DT_F16:
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + 2 * i))));
        for (; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            dst[i] = _cvtsh_ss(h);
        }
        return 1;
    case MT_DT_BF16:
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_si256((__m256i *)(dst + i),
                                _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(s + 2 * i))), 16));
        for (; i < n; i++) {
            uint32_t u = 0;
            memcpy((uint8_t *)&u + 2, s + 2 * i, 2);
            memcpy(dst + i, &u, 4);
        }
        return 1;
    case MT_DT_Q8_0:
        for (int64_t b = 0; b < n / 32; b++) {
            const uint8_t *blk = s + 34 * b;
            const __m256 d = _mm256_set1_ps(f16_scale(blk));
            for (int j = 0; j < 32; j += 8) {
                const __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(blk + 2 + j)));
                _mm256_storeu_ps(dst + 32 * b + j, _mm256_mul_ps(d, _mm256_cvtepi32_ps(q)));
            }
        }
        return 1;
    case MT_DT_Q4_0:
        for (int64_t b = 0; b < n / 32; b++) {
            const uint8_t *blk = s + 18 * b;
            const __m256 d = _mm256_set1_ps(f16_scale(blk));
            const __m256i q = q4_unpack(blk + 2); /* 32 int8 in element order */
            const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
            _mm256_storeu_ps(dst + 32 * b + 0, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo))));
            _mm256_storeu_ps(dst + 32 * b + 8, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)))));
            _mm256_storeu_ps(dst + 32 * b + 16, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi))));
            _mm256_storeu_ps(dst + 32 * b + 24, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)))));
        }
        return 1;
    default:
        return 0;
    }
}

#else /* no AVX2: plain C everywhere */
int mt_x86_dot_rows(const mt_mat *W, const float *x, const int8_t *xq, const float *xd, const float *xs,
                    float *y, int64_t r0, int64_t r1) {
    (void)W, (void)x, (void)xq, (void)xd, (void)xs, (void)y, (void)r0, (void)r1;
    return 0;
}
int mt_x86_row_to_f32(mt_dtype t, const void *src, float *dst, int64_t n) {
    (void)t, (void)src, (void)dst, (void)n;
    return 0;
}
int mt_x86_quantize_x(const float *x, int64_t n, int8_t *xq, float *xd, float *xs) {
    (void)x, (void)n, (void)xq, (void)xd, (void)xs;
    return 0;
}
int mt_x86_gemm_rows(const mt_mat *W, const int8_t *xq, const float *xd, const float *xs, int n, float *Y,
                     int64_t ldy, int64_t r0, int64_t r1) {
    (void)W, (void)xq, (void)xd, (void)xs, (void)n, (void)Y, (void)ldy, (void)r0, (void)r1;
    return 0;
}
#endif
