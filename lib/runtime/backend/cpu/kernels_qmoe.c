/* kernels_qmoe.c — the CPU backend's kernels over the QMoE-style ternary
 * code: fused decode+matvec variants that never materialise W, and one row
 * to f32. The codec itself (dictionary, encoder, layout, its checks, the
 * reference decoder, the serialised form) is lib/io/codec/qmoe.c; these
 * kernels read its layout (mt_mat.side.qmoe) and nothing else.
 *
 * Fused matvec. A codeword expands to up to 32 symbols; the dictionary
 * keeps, per codeword, a 32-bit mask of its +1 positions and one of its -1
 * positions. For a row with values (lo, hi) the dot product is
 *   y = hi · Σ_{+1} x_j + lo · Σ_{-1} x_j,
 * so a row costs, per codeword, the additions of the x_j under its two
 * masks (about 3 for 20 weights at 85 % zeros) and one multiply-add per
 * row at the end. The AVX-512 variant does each codeword branch-free with
 * four masked loads of 16 x values at the codeword's column; the portable
 * one walks the set bits (ctz), which mispredicts more as density grows.
 * Codewords that reach the end of a row (rows are coded back to back inside
 * a group of MT_QMOE_GROUP_ROWS rows) take a slower path that splits the
 * masks at the row boundary. The two-stage kernels (_planes, _lut, below)
 * work differently: codewords to +1/-1 bitplanes of the group, then sums
 * under the planes; _lut, the default, does the second stage for the 16
 * rows of a group at once by table lookups (vpermps on 4-bit slices) and is
 * the fastest; _avx2 is the same with 8 lanes, for CPUs without AVX-512.
 *
 * Robustness: the dictionary tables always have MT_QMOE_DICT_SIZE entries
 * (unused ones decode to nothing), offsets are clamped to the code stream
 * (mt_qmoe_group_span) and every column index is bounded, so even an
 * unchecked matrix cannot make a kernel read out of bounds;
 * mt_qmoe_mat_check reports what is wrong with one. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "kernels_impl.h"
#include "qmoe_kernel.h"

/* Per-thread scratch for the x-sum tables of the LUT kernels: one 64-byte
 * aligned buffer per thread, grown as needed and freed when the thread exits,
 * so that a matvec (one per token and expert) does not allocate. NULL when
 * out of memory (the kernel then declines). */
typedef struct {
    void *p;
    size_t n;
} tab_buf;
static pthread_key_t g_tab_key;
static pthread_once_t g_tab_once = PTHREAD_ONCE_INIT;
static int g_tab_ok;
static void tab_free(void *v) {
    tab_buf *b = v;
    if (b) free(b->p);
    free(b);
}
static void tab_init(void) { g_tab_ok = pthread_key_create(&g_tab_key, tab_free) == 0; }
static __attribute__((unused)) void *tab_get(size_t bytes) {
    pthread_once(&g_tab_once, tab_init);
    if (!g_tab_ok) return NULL;
    tab_buf *b = pthread_getspecific(g_tab_key);
    if (!b) {
        if (!(b = calloc(1, sizeof *b))) return NULL;
        if (pthread_setspecific(g_tab_key, b)) {
            free(b);
            return NULL;
        }
    }
    if (b->n < bytes) {
        void *p = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
        if (!p) return NULL;
        free(b->p);
        b->p = p;
        b->n = bytes;
    }
    return b->p;
}

#if defined(__AVX512F__) && defined(__AVX512DQ__)
#define MT_QMOE_AVX512 1
#endif
/* The AVX2 kernel is built on every x86-64 GCC/Clang build, whatever the
 * -march, with per-function target attributes, and taken at run time when
 * the CPU has AVX2 (__builtin_cpu_supports, which also checks that the OS
 * saves the YMM registers). */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MT_QMOE_AVX2 1
#define MT_QMOE_AVX2_FN __attribute__((target("avx2")))
#else
#define MT_QMOE_AVX2_FN
#endif
#if defined(__F16C__) || defined(MT_QMOE_AVX512) || defined(MT_QMOE_AVX2)
#include <immintrin.h>
#endif

/* f16 -> f32 inline where the CPU converts (the fast kernels flush a row
 * every ~13 codewords; a library call there costs a fifth of the time). */
static inline float f16_f32(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    return mt_f16_to_f32(h);
#endif
}
static inline void row_scales(const mt_mat *W, int64_t r, float *lo, float *hi) {
    const uint16_t *sc = W->side.qmoe.scales;
    *lo = f16_f32(sc[2 * r]);
    *hi = f16_f32(sc[2 * r + 1]);
}

/* ---- reference matvec ------------------------------------------------------- */
typedef struct {
    const mt_mat *W;
    const float *x;
    double *acc; /* (r1 - r0) */
    int64_t r0;
} ref_ctx;
static void ref_sym(void *ctx, int64_t row, int64_t col, int sym) {
    ref_ctx *c = ctx;
    float lo, hi;
    row_scales(c->W, row, &lo, &hi);
    c->acc[row - c->r0] += (double)(sym > 0 ? hi : lo) * (double)c->x[col];
}

void mt_qmoe_matvec_rows_ref(const mt_mat *W, const float *x, float *y, int64_t r0, int64_t r1) {
    if (!mt_qmoe_mat_ok(W) || r0 < 0 || r1 > W->rows) {
        for (int64_t r = r0; r < r1; r++) y[r] = NAN;
        return;
    }
    /* rows one group at a time so the accumulators live on the stack */
    for (int64_t a = r0; a < r1;) {
        double acc[64];
        const int64_t b = a + 64 < r1 ? a + 64 : r1;
        memset(acc, 0, sizeof acc);
        ref_ctx c = {W, x, acc, a};
        mt_qmoe_walk_rows(W, a, b, ref_sym, &c);
        for (int64_t r = a; r < b; r++) y[r] = (float)acc[r - a];
        a = b;
    }
}

/* ---- fast matvecs -------------------------------------------------------------
 * Both walk each group's codewords once, keeping `col` (column of the next
 * symbol in the current row). ACC(xc, plus, minus) adds x under the masks;
 * FLUSH finishes a row. The skeleton is shared through a macro so the two
 * variants differ only in how they add. */
#define QMOE_ROWS_BODY(ACC_INIT, ACC, FLUSH)                                                         \
    const mt_qmoe_dict *d = W->side.qmoe.dict;                                                              \
    const uint16_t *codes = W->data;                                                                \
    const uint8_t *len = d->len;                                                                    \
    const uint64_t *mask = d->mask;                                                                 \
    const int64_t G = W->group, cols = W->cols;                                                     \
    for (int64_t g = r0 / G; g * G < r1; g++) {                                                     \
        int64_t row = g * G;                                                                        \
        const int64_t row_end = row + G < r1 ? row + G : r1;                                        \
        uint64_t k0, k1;                                                                            \
        mt_qmoe_group_span(W, g, &k0, &k1);                                                                 \
        int64_t col = 0;                                                                            \
        ACC_INIT;                                                                                   \
        for (uint64_t k = k0; k < k1; k++) {                                                        \
            const uint16_t c = codes[k];                                                            \
            int64_t L = len[c];                                                                     \
            uint64_t pl = (uint32_t)mask[c], mi = mask[c] >> 32;                                    \
            if (col + L < cols) {                                                                   \
                ACC(x + col, pl, mi);                                                               \
                col += L;                                                                           \
                continue;                                                                           \
            }                                                                                       \
            while (L > 0) { /* reaches the end of the row: split the masks */                      \
                const int64_t take = cols - col < L ? cols - col : L;                               \
                const uint64_t keep = ((uint64_t)1 << take) - 1;                                    \
                ACC(x + col, pl & keep, mi & keep);                                                 \
                col += take;                                                                        \
                pl >>= take;                                                                        \
                mi >>= take;                                                                        \
                L -= take;                                                                          \
                if (col == cols) {                                                                  \
                    if (row >= r0) FLUSH;                                                           \
                    ACC_INIT;                                                                       \
                    col = 0;                                                                        \
                    if (++row >= row_end) goto group_done;                                          \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
        /* stream shorter than the group (unchecked input): rest reads 0 */                         \
        for (; row < row_end; row++) {                                                              \
            if (row >= r0) FLUSH;                                                                   \
            ACC_INIT;                                                                               \
        }                                                                                           \
    group_done:;                                                                                    \
    }

void mt_qmoe_matvec_rows_bits(const mt_mat *W, const float *x, float *y, int64_t r0, int64_t r1) {
    if (!mt_qmoe_mat_ok(W) || r0 < 0 || r1 > W->rows) {
        for (int64_t r = r0; r < r1; r++) y[r] = NAN;
        return;
    }
    float sp = 0.0f, sm = 0.0f;
#define BITS_INIT (sp = 0.0f, sm = 0.0f)
#define BITS_ACC(XC, PL, MI)                                                                        \
    do {                                                                                            \
        const float *xc_ = (XC);                                                                    \
        for (uint32_t b_ = (uint32_t)(PL); b_; b_ &= b_ - 1) sp += xc_[__builtin_ctz(b_)];          \
        for (uint32_t b_ = (uint32_t)(MI); b_; b_ &= b_ - 1) sm += xc_[__builtin_ctz(b_)];          \
    } while (0)
#define BITS_FLUSH                                                                                  \
    do {                                                                                            \
        float lo_, hi_;                                                                             \
        row_scales(W, row, &lo_, &hi_);                                                             \
        y[row] = hi_ * sp + lo_ * sm;                                                               \
    } while (0)
    QMOE_ROWS_BODY(BITS_INIT, BITS_ACC, BITS_FLUSH)
#undef BITS_INIT
#undef BITS_ACC
#undef BITS_FLUSH
}

#ifdef MT_QMOE_AVX512
static inline float hsum16(__m512 v) {
    __m256 s = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 t = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    t = _mm_add_ps(t, _mm_movehl_ps(t, t));
    t = _mm_add_ss(t, _mm_movehdup_ps(t));
    return _mm_cvtss_f32(t);
}
#endif

int mt_qmoe_matvec_rows_avx512(const mt_mat *W, const float *x, float *y, int64_t r0, int64_t r1) {
#ifdef MT_QMOE_AVX512
    if (!mt_qmoe_mat_ok(W) || r0 < 0 || r1 > W->rows) {
        for (int64_t r = r0; r < r1; r++) y[r] = NAN;
        return 1;
    }
    /* ap/am: sums under +1 / -1 masks for columns col..col+15 of the
     * codeword, bp/bm for col+16..col+31. Masked loads never touch lanes
     * outside the masks, so reading past the end of x cannot fault. */
    __m512 ap, am, bp, bm;
#define V_INIT (ap = am = bp = bm = _mm512_setzero_ps())
#define V_ACC(XC, PL, MI)                                                                           \
    do {                                                                                            \
        const __mmask16 p0_ = (__mmask16)(PL), p1_ = (__mmask16)((PL) >> 16);                       \
        const __mmask16 m0_ = (__mmask16)(MI), m1_ = (__mmask16)((MI) >> 16);                       \
        ap = _mm512_add_ps(ap, _mm512_maskz_loadu_ps(p0_, (XC)));                                   \
        am = _mm512_add_ps(am, _mm512_maskz_loadu_ps(m0_, (XC)));                                   \
        bp = _mm512_add_ps(bp, _mm512_maskz_loadu_ps(p1_, (XC) + 16));                              \
        bm = _mm512_add_ps(bm, _mm512_maskz_loadu_ps(m1_, (XC) + 16));                              \
    } while (0)
#define V_FLUSH                                                                                     \
    do {                                                                                            \
        float lo_, hi_;                                                                             \
        row_scales(W, row, &lo_, &hi_);                                                             \
        const __m512 t_ = _mm512_fmadd_ps(_mm512_add_ps(ap, bp), _mm512_set1_ps(hi_),               \
                                          _mm512_mul_ps(_mm512_add_ps(am, bm), _mm512_set1_ps(lo_))); \
        y[row] = hsum16(t_);                                                                        \
    } while (0)
    QMOE_ROWS_BODY(V_INIT, V_ACC, V_FLUSH)
#undef V_INIT
#undef V_ACC
#undef V_FLUSH
    return 1;
#else
    (void)W, (void)x, (void)y, (void)r0, (void)r1;
    return 0;
#endif
}

/* ---- two-stage kernel: bitplanes, then masked sums ------------------------------
 * Per group of rows, stage 1 expands the codewords into two bitplanes (bit
 * i of the group's symbol stream set in P when symbol i is +1, in M when
 * it is -1) with a branch-free bit writer: per codeword two shifts, two
 * ORs, two unaligned 8-byte stores and a few integer ops; no per-symbol
 * work, no row-boundary test (a row is just the bit range
 * [r·cols, (r+1)·cols) of the planes), no data-dependent branch. Stage 2
 * turns 32 plane bits at a time into AVX-512 masks (broadcast + vptestmd)
 * and adds x under them, four rows at a time so each x load serves eight
 * masked adds. The planes of a group of 16 rows are 4·cols bytes (L1 for
 * cols <= 4096). Measured on Zen 4, 512x256 at 85 % zeros: stage 1 ~2.0 ns
 * and stage 2 ~1.1 ns per codeword (~20 weights), against 3.7 ns for the
 * one-stage kernel; numbers in docs/qmoe.md.
 *
 * Taken when cols is a multiple of 16 (rows start on 16-bit boundaries of
 * the planes; every expert shape is) and a group fits QP_MAX_BITS; the
 * caller falls back to the one-stage kernel otherwise. */
#define QP_MAX_BITS (16 * 16384) /* symbols of one group: 16 rows of 16384 */
#define QP_WORDS (QP_MAX_BITS / 64 + 2)

#ifdef MT_QMOE_AVX512
/* Stage 1: the first `need` symbols (a multiple of 8) of codewords
 * [k0, k1) into the planes P, M (bytes 0 .. need/8; bits past the stream
 * read 0). Bit writer as in zstd's BIT_flushBitsFast: the pending bits sit
 * in a 64-bit accumulator (at most 7 + 32 of them), every codeword ORs its
 * masks in, stores all 8 bytes unaligned at the write position, then
 * advances by the whole bytes done — no branch on "word full" (a branch
 * there is taken at random every ~3 codewords and mispredicts). Writes
 * end before byte need/8 + 12 and cover at least bytes 0 .. need/8 + 1
 * (stage 2 reads 32 bits where it needs 16 at the end of an odd row). */
static void qp_expand(const uint16_t *codes, uint64_t k0, uint64_t k1, const uint8_t *len, const uint64_t *mask,
                      uint64_t need, uint8_t *P, uint8_t *M) {
    uint64_t ap = 0, am = 0, ob = 0;
    unsigned nb = 0; /* pending bits in ap/am, < 8 between codewords */
    const uint64_t ob_end = need >> 3;
    for (const uint16_t *c = codes + k0, *ce = codes + k1; c < ce && ob < ob_end; c++) {
        const unsigned code = *c; /* once: the stores below may alias it for all the compiler knows */
        const uint64_t m = mask[code];
        const unsigned L = len[code];
        ap |= (uint64_t)(uint32_t)m << nb;
        am |= (m >> 32) << nb;
        memcpy(P + ob, &ap, 8);
        memcpy(M + ob, &am, 8);
        nb += L;
        const unsigned done = nb & ~7u; /* whole bytes written, in bits (<= 32) */
        ob += nb >> 3;
        nb &= 7;
        ap >>= done;
        am >>= done;
    }
    memcpy(P + ob, &ap, 8);
    memcpy(M + ob, &am, 8);
    if (ob < ob_end) { /* stream shorter than the group (unchecked input): the rest reads 0 */
        memset(P + ob + 8, 0, ob_end - ob);
        memset(M + ob + 8, 0, ob_end - ob);
    }
}

/* Stage 2: y[r] for rows [rs, re) of the group starting at row gr0 from
 * its planes: S+ and S- by masked adds of x, 32 columns per step. */
#define QP_ADD(acc, k, xv) _mm512_mask_add_ps((acc), (k), (acc), (xv))
/* 32 plane bits starting at 16-bit chunk `chunk`, broadcast to all lanes;
 * vptestmd against one bit per lane turns them into masks (a GPR-to-mask
 * move per 16 columns, the obvious way, is limited to about one per two
 * cycles on Zen 4 and made stage 2 twice as slow). */
static inline __m512i qp_bcast(const uint64_t *plane, int64_t chunk) {
    uint32_t v;
    memcpy(&v, (const uint16_t *)(const void *)plane + chunk, sizeof v);
    return _mm512_set1_epi32((int)v);
}
static void qp_rows(const mt_mat *W, const uint64_t *P, const uint64_t *M, const float *x, float *y, int64_t gr0,
                    int64_t rs, int64_t re) {
    const int64_t nc = W->cols / 16; /* 16-column chunks per row */
    const __m512i blo = _mm512_setr_epi32(1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4, 1 << 5, 1 << 6, 1 << 7, 1 << 8,
                                          1 << 9, 1 << 10, 1 << 11, 1 << 12, 1 << 13, 1 << 14, 1 << 15);
    const __m512i bhi = _mm512_slli_epi32(blo, 16);
    int64_t r = rs;
#define QP_STEP(pacc, macc, rowoff, xa, xb, J)                                                     \
    do {                                                                                            \
        const __m512i vp_ = qp_bcast(P, (rowoff) + (J)), vm_ = qp_bcast(M, (rowoff) + (J));         \
        pacc = QP_ADD(pacc, _mm512_test_epi32_mask(vp_, blo), xa);                                 \
        macc = QP_ADD(macc, _mm512_test_epi32_mask(vm_, blo), xa);                                 \
        pacc = QP_ADD(pacc, _mm512_test_epi32_mask(vp_, bhi), xb);                                 \
        macc = QP_ADD(macc, _mm512_test_epi32_mask(vm_, bhi), xb);                                 \
    } while (0)
    for (; r + 4 <= re; r += 4) { /* four rows share each x load */
        const int64_t b = (r - gr0) * nc;
        __m512 p0 = _mm512_setzero_ps(), p1 = p0, p2 = p0, p3 = p0, m0 = p0, m1 = p0, m2 = p0, m3 = p0;
        int64_t j = 0;
        for (; j + 2 <= nc; j += 2) {
            const __m512 xa = _mm512_loadu_ps(x + 16 * j), xb = _mm512_loadu_ps(x + 16 * j + 16);
            QP_STEP(p0, m0, b, xa, xb, j);
            QP_STEP(p1, m1, b + nc, xa, xb, j);
            QP_STEP(p2, m2, b + 2 * nc, xa, xb, j);
            QP_STEP(p3, m3, b + 3 * nc, xa, xb, j);
        }
        if (j < nc) { /* odd chunk count: the upper 16 bits read belong to the next row; xb = 0 drops them */
            const __m512 xa = _mm512_loadu_ps(x + 16 * j), xb = _mm512_setzero_ps();
            QP_STEP(p0, m0, b, xa, xb, j);
            QP_STEP(p1, m1, b + nc, xa, xb, j);
            QP_STEP(p2, m2, b + 2 * nc, xa, xb, j);
            QP_STEP(p3, m3, b + 3 * nc, xa, xb, j);
        }
        const __m512 ps[4] = {p0, p1, p2, p3}, ms[4] = {m0, m1, m2, m3};
        for (int i = 0; i < 4; i++) {
            float lo, hi;
            row_scales(W, r + i, &lo, &hi);
            y[r + i] = hi * hsum16(ps[i]) + lo * hsum16(ms[i]);
        }
    }
    for (; r < re; r++) {
        const int64_t b = (r - gr0) * nc;
        __m512 p0 = _mm512_setzero_ps(), m0 = p0;
        int64_t j = 0;
        for (; j + 2 <= nc; j += 2) {
            const __m512 xa = _mm512_loadu_ps(x + 16 * j), xb = _mm512_loadu_ps(x + 16 * j + 16);
            QP_STEP(p0, m0, b, xa, xb, j);
        }
        if (j < nc) {
            const __m512 xa = _mm512_loadu_ps(x + 16 * j), xb = _mm512_setzero_ps();
            QP_STEP(p0, m0, b, xa, xb, j);
        }
        float lo, hi;
        row_scales(W, r, &lo, &hi);
        y[r] = hi * hsum16(p0) + lo * hsum16(m0);
    }
#undef QP_STEP
}
#undef QP_ADD
#endif

int mt_qmoe_matvec_rows_planes(const mt_mat *W, const float *x, float *y, int64_t r0, int64_t r1) {
#ifdef MT_QMOE_AVX512
    if (!mt_qmoe_mat_ok(W) || r0 < 0 || r1 > W->rows) {
        for (int64_t r = r0; r < r1; r++) y[r] = NAN;
        return 1;
    }
    const int64_t G = W->group, cols = W->cols;
    if (cols % 16 != 0 || (uint64_t)G * (uint64_t)cols > QP_MAX_BITS) return 0;
    const mt_qmoe_dict *d = W->side.qmoe.dict;
    const uint16_t *codes = W->data;
    uint64_t P[QP_WORDS], M[QP_WORDS];
    for (int64_t g = r0 / G; g * G < r1; g++) {
        const int64_t gr0 = g * G, gr1 = gr0 + G < W->rows ? gr0 + G : W->rows;
        const int64_t rs = r0 > gr0 ? r0 : gr0, re = r1 < gr1 ? r1 : gr1; /* rows wanted */
        uint64_t k0, k1;
        mt_qmoe_group_span(W, g, &k0, &k1);
        qp_expand(codes, k0, k1, d->len, d->mask, (uint64_t)(re - gr0) * (uint64_t)cols, (uint8_t *)P, (uint8_t *)M);
        qp_rows(W, P, M, x, y, gr0, rs, re);
    }
    return 1;
#else
    (void)W, (void)x, (void)y, (void)r0, (void)r1;
    return 0;
#endif
}

/* ---- LUT kernel: prefetching stage 1, stage 2 by table lookups across 16 rows -----
 * Stage 1 is qp_expand with two changes measured on Zen 4 (1024x4096, 80 %
 * zeros): the mask and length entries of the codeword QL_AHEAD places ahead
 * are prefetched (the 2^16-entry tables live in L2 and the out-of-order
 * window alone does not cover their latency: 2.1 -> 1.5 ns per codeword),
 * and both planes' pending bits sit in one SSE register (one zero-extending
 * load puts the +1 mask in the low and the -1 mask in the high 64 bits, one
 * shift places both, one shift drops the bytes done): the loop was bound
 * by integer instructions (~4.5 per cycle), and this moves a third of them
 * to the vector units (1.5 -> 1.2 ns per codeword). Interleaving two groups
 * in one loop was measured too and does not help (not latency bound).
 *
 * Stage 2 works on the 16 rows of a group at once, one row per lane. Per
 * call, a table of the 16 subset sums of every 4 consecutive x values is
 * built (T[b][s] = sum of x[4b + i] over the bits i of s; 16 floats = one
 * vector per block of 4 columns). The planes are read 32 columns x 16 rows
 * at a time (a 16x16 transpose of 32-bit words, so that lane r holds the 32
 * plane bits of row r), and each 4-bit slice is a vpermps index into the
 * table of its block: one lookup and one add cover 64 weights of one plane,
 * against four mask tests and four masked adds in qp_rows. Measured: 0.033
 * ns per weight with the transposes (0.55 ns per codeword) against 0.039
 * (0.66) for qp_rows. Interleaving stage 2 of one group with stage 1 of the next (every
 * 12-64 codewords) was measured too and gains nothing: both stages compete
 * for the same vector shift/shuffle units.
 *
 * Taken when a group has at most 16 rows, cols is a multiple of 8 (rows
 * start on whole bytes of the planes and no 4-column block straddles a row
 * end) and 16 rows fit the plane buffer; otherwise the caller falls back. */
#define QL_AHEAD 10

#if defined(MT_QMOE_AVX512) || defined(MT_QMOE_AVX2)
/* The high 64 bits of v to an unaligned address (one vpextrq; _mm_storeh_pd
 * is an aligned double store as far as the compiler is concerned). */
static inline MT_QMOE_AVX2_FN void ql_store_hi(uint8_t *p, __m128i v) {
    const uint64_t h = (uint64_t)_mm_extract_epi64(v, 1);
    memcpy(p, &h, 8);
}

/* Stage 1 with the contract of qp_expand (same planes, same bytes written).
 * Shared with the AVX2 kernel: it needs SSE4.1 only. */
static MT_QMOE_AVX2_FN void ql_expand(const uint16_t *codes, uint64_t k0, uint64_t k1, const uint8_t *len, const uint64_t *mask,
                      uint64_t need, uint8_t *P, uint8_t *M) {
    const uint16_t *c = codes + k0, *const ce = codes + k1;
    __m128i acc = _mm_setzero_si128(); /* pending bits: +1 plane in the low, -1 plane in the high 64 bits */
    uint64_t ob = 0;
    unsigned nb = 0; /* pending bits in acc, < 8 between codewords */
    const uint64_t ob_end = need >> 3;
#define QL_STEP                                                                                     \
    do {                                                                                            \
        const unsigned code_ = *c++;                                                                \
        const __m128i v_ = _mm_cvtepu32_epi64(_mm_loadl_epi64((const __m128i *)(const void *)(mask + code_))); \
        const unsigned n2_ = nb + len[code_];                                                       \
        acc = _mm_or_si128(acc, _mm_sll_epi64(v_, _mm_cvtsi32_si128((int)nb)));                     \
        _mm_storel_epi64((__m128i *)(void *)(P + ob), acc);                                         \
        ql_store_hi(M + ob, acc);                                                                   \
        ob += n2_ >> 3;                                                                             \
        nb = n2_ & 7;                                                                               \
        acc = _mm_srl_epi64(acc, _mm_cvtsi32_si128((int)(n2_ & ~7u)));                              \
    } while (0)
    for (;;) {
        /* steps that stay inside the stream and start below ob_end (a step advances <= 4 bytes),
         * less the look-ahead, so the loop below needs neither test */
        uint64_t n = (uint64_t)(ce - c);
        const uint64_t room = ob < ob_end ? (ob_end - ob) / 4 : 0;
        if (room < n) n = room;
        if (n <= QL_AHEAD) break;
        n -= QL_AHEAD;
#pragma GCC unroll 4
        for (; n; n--) {
            __builtin_prefetch(mask + c[QL_AHEAD]);
            __builtin_prefetch(len + c[QL_AHEAD]);
            QL_STEP;
        }
    }
    while (c < ce && ob < ob_end) QL_STEP;
#undef QL_STEP
    _mm_storel_epi64((__m128i *)(void *)(P + ob), acc);
    ql_store_hi(M + ob, acc);
    if (ob < ob_end) { /* stream shorter than the group (unchecked input): the rest reads 0 */
        memset(P + ob + 8, 0, ob_end - ob);
        memset(M + ob + 8, 0, ob_end - ob);
    }
}
#endif

#ifdef MT_QMOE_AVX512
/* r[0..15]: 16 rows of 16 words each (row i in r[i]). On return col[j]
 * holds word j of every row (lane i = row i), j = 4L + k for 128-bit lane
 * L and k = 0..3; see the order in ql_cols. */
static inline __attribute__((always_inline)) void ql_transpose(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) { /* u[4i + k], 128-bit lane L: word 4L + k of rows 4i .. 4i + 3 */
        r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int k = 0; k < 4; k++) {
        const __m512i s0 = _mm512_shuffle_i32x4(r[k], r[4 + k], 0x88), s1 = _mm512_shuffle_i32x4(r[k], r[4 + k], 0xDD);
        const __m512i s2 = _mm512_shuffle_i32x4(r[8 + k], r[12 + k], 0x88);
        const __m512i s3 = _mm512_shuffle_i32x4(r[8 + k], r[12 + k], 0xDD);
        t[k] = _mm512_shuffle_i32x4(s0, s2, 0x88);      /* word k      */
        t[4 + k] = _mm512_shuffle_i32x4(s1, s3, 0x88);  /* word 4 + k  */
        t[8 + k] = _mm512_shuffle_i32x4(s0, s2, 0xDD);  /* word 8 + k  */
        t[12 + k] = _mm512_shuffle_i32x4(s1, s3, 0xDD); /* word 12 + k */
    }
    for (int j = 0; j < 16; j++) r[j] = t[j];
}

/* Adds the table entries of the 8 nibbles of 32 columns: acc[b & 3] +=
 * T[b][nibble b of each lane]. */
#define QL_LOOKUP(acc, w, T8)                                                                      \
    do {                                                                                            \
        acc[0] = _mm512_add_ps(acc[0], _mm512_permutexvar_ps((w), (T8)[0]));                        \
        acc[1] = _mm512_add_ps(acc[1], _mm512_permutexvar_ps(_mm512_srli_epi32((w), 4), (T8)[1]));  \
        acc[2] = _mm512_add_ps(acc[2], _mm512_permutexvar_ps(_mm512_srli_epi32((w), 8), (T8)[2]));  \
        acc[3] = _mm512_add_ps(acc[3], _mm512_permutexvar_ps(_mm512_srli_epi32((w), 12), (T8)[3])); \
        acc[0] = _mm512_add_ps(acc[0], _mm512_permutexvar_ps(_mm512_srli_epi32((w), 16), (T8)[4])); \
        acc[1] = _mm512_add_ps(acc[1], _mm512_permutexvar_ps(_mm512_srli_epi32((w), 20), (T8)[5])); \
        acc[2] = _mm512_add_ps(acc[2], _mm512_permutexvar_ps(_mm512_srli_epi32((w), 24), (T8)[6])); \
        acc[3] = _mm512_add_ps(acc[3], _mm512_permutexvar_ps(_mm512_srli_epi32((w), 28), (T8)[7])); \
    } while (0)

/* Sums under the planes of 16 rows (row i at bit i * cols) into sp/sm:
 * nd 32-bit words per row, T has 8 * nd blocks. */
static void ql_rows(const uint8_t *P, const uint8_t *M, int64_t cols, int64_t nd, const __m512 *T, float *sp,
                    float *sm) {
    __m512 ap[4], am[4];
    for (int i = 0; i < 4; i++) ap[i] = am[i] = _mm512_setzero_ps();
    const int64_t rb = cols / 8; /* bytes per row */
    for (int64_t w0 = 0; w0 < nd; w0 += 16) {
        const int64_t nw = nd - w0 < 16 ? nd - w0 : 16;
        const __mmask16 lm = (__mmask16)((1u << nw) - 1);
        __m512i rw[16];
        for (int i = 0; i < 16; i++) rw[i] = _mm512_maskz_loadu_epi32(lm, P + i * rb + 4 * w0);
        ql_transpose(rw);
        for (int64_t j = 0; j < nw; j++) QL_LOOKUP(ap, rw[j], T + 8 * (w0 + j));
        for (int i = 0; i < 16; i++) rw[i] = _mm512_maskz_loadu_epi32(lm, M + i * rb + 4 * w0);
        ql_transpose(rw);
        for (int64_t j = 0; j < nw; j++) QL_LOOKUP(am, rw[j], T + 8 * (w0 + j));
    }
    _mm512_storeu_ps(sp, _mm512_add_ps(_mm512_add_ps(ap[0], ap[1]), _mm512_add_ps(ap[2], ap[3])));
    _mm512_storeu_ps(sm, _mm512_add_ps(_mm512_add_ps(am[0], am[1]), _mm512_add_ps(am[2], am[3])));
}
#undef QL_LOOKUP

/* T[b][s] = sum of x[4b + i] over the set bits i of s, x read as 0 from cols on. */
static void ql_table(const float *x, int64_t cols, int64_t nblk, __m512 *T) {
    for (int64_t b = 0; b < nblk; b++) {
        float v[4];
        for (int i = 0; i < 4; i++) v[i] = 4 * b + i < cols ? x[4 * b + i] : 0.0f;
        __m512 t = _mm512_maskz_mov_ps(0xAAAA, _mm512_set1_ps(v[0]));
        t = _mm512_mask_add_ps(t, 0xCCCC, t, _mm512_set1_ps(v[1]));
        t = _mm512_mask_add_ps(t, 0xF0F0, t, _mm512_set1_ps(v[2]));
        T[b] = _mm512_mask_add_ps(t, 0xFF00, t, _mm512_set1_ps(v[3]));
    }
}
#endif

int mt_qmoe_matvec_rows_lut(const mt_mat *W, const float *x, float *y, int64_t r0, int64_t r1) {
#ifdef MT_QMOE_AVX512
    if (!mt_qmoe_mat_ok(W) || r0 < 0 || r1 > W->rows) {
        for (int64_t r = r0; r < r1; r++) y[r] = NAN;
        return 1;
    }
    const int64_t G = W->group, cols = W->cols;
    if (G > 16 || cols % 8 != 0 || (uint64_t)16 * (uint64_t)cols > QP_MAX_BITS) return 0;
    if (r0 >= r1) return 1;
    const int64_t nd = (cols + 31) / 32; /* 32-bit plane words per row */
    __m512 *T = tab_get((size_t)(8 * nd) * sizeof(__m512));
    if (!T) return 0;
    ql_table(x, cols, 8 * nd, T);
    const mt_qmoe_dict *d = W->side.qmoe.dict;
    const uint16_t *codes = W->data;
    uint64_t P[QP_WORDS], M[QP_WORDS];
    const size_t used = (size_t)(2 * cols + 16); /* bytes of 16 rows and the reads past the last one */
    memset(P, 0, used); /* rows a group does not decode are read, and ignored */
    memset(M, 0, used);
    float sp[16], sm[16];
    for (int64_t g = r0 / G; g * G < r1; g++) {
        const int64_t gr0 = g * G, gr1 = gr0 + G < W->rows ? gr0 + G : W->rows;
        const int64_t rs = r0 > gr0 ? r0 : gr0, re = r1 < gr1 ? r1 : gr1;
        uint64_t k0, k1;
        mt_qmoe_group_span(W, g, &k0, &k1);
        ql_expand(codes, k0, k1, d->len, d->mask, (uint64_t)(re - gr0) * (uint64_t)cols, (uint8_t *)P, (uint8_t *)M);
        ql_rows((const uint8_t *)P, (const uint8_t *)M, cols, nd, T, sp, sm);
        for (int64_t r = rs; r < re; r++) {
            float lo, hi;
            row_scales(W, r, &lo, &hi);
            y[r] = hi * sp[r - gr0] + lo * sm[r - gr0];
        }
    }
    return 1;
#else
    (void)W, (void)x, (void)y, (void)r0, (void)r1;
    return 0;
#endif
}

/* ---- the LUT kernel in AVX2 (machines without AVX-512) ---------------------------
 * Stage 1 is ql_expand. Stage 2 as in ql_rows, one row per lane, with 8
 * lanes: the 16 rows of a group in two halves of 8, each read as 8 rows x
 * 8 plane words (256 columns) and transposed (8 x 8 32-bit words, 24
 * shuffles). vpermps on 8 lanes indexes 8 table entries, so the table of a
 * block of 4 columns is two vectors: the subset sums of x[4b .. 4b+2]
 * (nibble bit 3 clear) and the same plus x[4b+3] (bit 3 set); a nibble
 * costs two lookups with the same 3-bit index and a blend on its bit 3
 * (vblendvps reads the sign bit: the word shifted left so bit 3 lands
 * there). Same shape limits as _lut. */
#ifdef MT_QMOE_AVX2
/* r[i]: word w0 .. w0+7 of row i -> r[j]: word w0 + j of rows 0..7 (lane i = row i). */
static inline __attribute__((always_inline)) MT_QMOE_AVX2_FN void qa_transpose(__m256i r[8]) {
    __m256i t[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) { /* r[4i + k], 128-bit lane L: word 4L + k of rows 4i .. 4i + 3 */
        r[4 * i] = _mm256_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 1] = _mm256_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 2] = _mm256_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        r[4 * i + 3] = _mm256_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int k = 0; k < 4; k++) {
        t[k] = _mm256_permute2x128_si256(r[k], r[4 + k], 0x20);     /* word k     */
        t[4 + k] = _mm256_permute2x128_si256(r[k], r[4 + k], 0x31); /* word 4 + k */
    }
    for (int j = 0; j < 8; j++) r[j] = t[j];
}

/* acc += T[b][nibble b of each lane] for the 8 nibbles of a word; T2 holds
 * 8 blocks of (low half, high half) vectors. */
#define QA_NIB(acc, T2, b, idx, sel)                                                                \
    (acc) = _mm256_add_ps((acc), _mm256_blendv_ps(_mm256_permutevar8x32_ps((T2)[2 * (b)], (idx)),  \
                                                  _mm256_permutevar8x32_ps((T2)[2 * (b) + 1], (idx)), \
                                                  _mm256_castsi256_ps(sel)))
#define QA_LOOKUP(acc, w, T2)                                                                       \
    do {                                                                                            \
        QA_NIB(acc[0], T2, 0, (w), _mm256_slli_epi32((w), 28));                                     \
        QA_NIB(acc[1], T2, 1, _mm256_srli_epi32((w), 4), _mm256_slli_epi32((w), 24));               \
        QA_NIB(acc[0], T2, 2, _mm256_srli_epi32((w), 8), _mm256_slli_epi32((w), 20));               \
        QA_NIB(acc[1], T2, 3, _mm256_srli_epi32((w), 12), _mm256_slli_epi32((w), 16));              \
        QA_NIB(acc[0], T2, 4, _mm256_srli_epi32((w), 16), _mm256_slli_epi32((w), 12));              \
        QA_NIB(acc[1], T2, 5, _mm256_srli_epi32((w), 20), _mm256_slli_epi32((w), 8));               \
        QA_NIB(acc[0], T2, 6, _mm256_srli_epi32((w), 24), _mm256_slli_epi32((w), 4));               \
        QA_NIB(acc[1], T2, 7, _mm256_srli_epi32((w), 28), (w));                                     \
    } while (0)

/* Sums under one plane of 8 rows (row i at byte i * (cols / 8) of B) into
 * s[0..7]: nd 32-bit words per row, T has 16 * nd vectors. Full chunks of 8
 * words stay inside the 16 rows of the buffer (4·nd <= cols/8 + 3 bytes per
 * row); the last, partial one is read with a lane mask. */
static MT_QMOE_AVX2_FN void qa_rows8(const uint8_t *B, int64_t cols, int64_t nd, const __m256 *T, float *s) {
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    const int64_t rb = cols / 8; /* bytes per row */
    for (int64_t w0 = 0; w0 < nd; w0 += 8) {
        const int64_t nw = nd - w0 < 8 ? nd - w0 : 8;
        const uint8_t *b = B + 4 * w0;
        __m256i rw[8];
        if (nw == 8) {
            for (int i = 0; i < 8; i++) rw[i] = _mm256_loadu_si256((const __m256i *)(const void *)(b + i * rb));
        } else {
            const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            const __m256i lm = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)nw), lane);
            for (int i = 0; i < 8; i++) rw[i] = _mm256_maskload_epi32((const int *)(const void *)(b + i * rb), lm);
        }
        qa_transpose(rw);
        for (int64_t j = 0; j < nw; j++) QA_LOOKUP(acc, rw[j], T + 16 * (w0 + j));
    }
    _mm256_storeu_ps(s, _mm256_add_ps(acc[0], acc[1]));
}
#undef QA_LOOKUP
#undef QA_NIB

/* T[2b] lane s: sum of x[4b + i] over the set bits i of s (s < 8); T[2b + 1]
 * the same plus x[4b + 3]; x read as 0 from cols on. */
static MT_QMOE_AVX2_FN void qa_table(const float *x, int64_t cols, int64_t nblk, __m256 *T) {
    for (int64_t b = 0; b < nblk; b++) {
        float v[4];
        for (int i = 0; i < 4; i++) v[i] = 4 * b + i < cols ? x[4 * b + i] : 0.0f;
        const __m256 lo =
            _mm256_setr_ps(0.0f, v[0], v[1], v[0] + v[1], v[2], v[0] + v[2], v[1] + v[2], v[0] + v[1] + v[2]);
        T[2 * b] = lo;
        T[2 * b + 1] = _mm256_add_ps(lo, _mm256_set1_ps(v[3]));
    }
}

/* The body of mt_qmoe_matvec_rows_avx2 once the CPU is known to have AVX2
 * (kept out of the caller so no AVX instruction runs before the check). */
static __attribute__((noinline)) MT_QMOE_AVX2_FN int qa_matvec(const mt_mat *W, const float *x, float *y, int64_t r0,
                                                               int64_t r1) {
    if (!mt_qmoe_mat_ok(W) || r0 < 0 || r1 > W->rows) {
        for (int64_t r = r0; r < r1; r++) y[r] = NAN;
        return 1;
    }
    const int64_t G = W->group, cols = W->cols;
    if (G > 16 || cols % 8 != 0 || (uint64_t)16 * (uint64_t)cols > QP_MAX_BITS) return 0;
    if (r0 >= r1) return 1;
    const int64_t nd = (cols + 31) / 32; /* 32-bit plane words per row */
    __m256 *T = tab_get((size_t)(16 * nd) * sizeof(__m256));
    if (!T) return 0;
    qa_table(x, cols, 8 * nd, T);
    const mt_qmoe_dict *d = W->side.qmoe.dict;
    const uint16_t *codes = W->data;
    uint64_t P[QP_WORDS], M[QP_WORDS];
    const size_t used = (size_t)(2 * cols + 16); /* bytes of 16 rows and the reads past the last one */
    memset(P, 0, used); /* rows a group does not decode are read, and ignored */
    memset(M, 0, used);
    float sp[16], sm[16];
    const int64_t half = cols; /* bytes of 8 rows of a plane */
    for (int64_t g = r0 / G; g * G < r1; g++) {
        const int64_t gr0 = g * G, gr1 = gr0 + G < W->rows ? gr0 + G : W->rows;
        const int64_t rs = r0 > gr0 ? r0 : gr0, re = r1 < gr1 ? r1 : gr1;
        uint64_t k0, k1;
        mt_qmoe_group_span(W, g, &k0, &k1);
        ql_expand(codes, k0, k1, d->len, d->mask, (uint64_t)(re - gr0) * (uint64_t)cols, (uint8_t *)P, (uint8_t *)M);
        qa_rows8((const uint8_t *)P, cols, nd, T, sp);
        qa_rows8((const uint8_t *)M, cols, nd, T, sm);
        if (re - gr0 > 8) { /* the second 8 rows only where wanted */
            qa_rows8((const uint8_t *)P + half, cols, nd, T, sp + 8);
            qa_rows8((const uint8_t *)M + half, cols, nd, T, sm + 8);
        }
        for (int64_t r = rs; r < re; r++) {
            float lo, hi;
            row_scales(W, r, &lo, &hi);
            y[r] = hi * sp[r - gr0] + lo * sm[r - gr0];
        }
    }
    return 1;
}
#endif

int mt_qmoe_matvec_rows_avx2(const mt_mat *W, const float *x, float *y, int64_t r0, int64_t r1) {
#ifdef MT_QMOE_AVX2
    if (!__builtin_cpu_supports("avx2")) return 0;
    return qa_matvec(W, x, y, r0, r1);
#else
    (void)W, (void)x, (void)y, (void)r0, (void)r1;
    return 0;
#endif
}

/* The LUT kernel where built and the shape fits, else the two-stage
 * kernel, else the one-stage AVX-512 kernel (branch-free, so its cost does
 * not grow with the nonzeros per codeword); without AVX-512, the LUT kernel
 * in AVX2 where the CPU has it and the shape fits; else the portable one
 * (docs/qmoe.md). */
void mt_qmoe_matvec_rows(const mt_mat *W, const float *x, float *y, int64_t r0, int64_t r1) {
    if (mt_qmoe_matvec_rows_lut(W, x, y, r0, r1)) return;
    if (mt_qmoe_matvec_rows_planes(W, x, y, r0, r1)) return;
    if (mt_qmoe_matvec_rows_avx512(W, x, y, r0, r1)) return;
    if (!mt_qmoe_matvec_rows_avx2(W, x, y, r0, r1)) mt_qmoe_matvec_rows_bits(W, x, y, r0, r1);
}

/* ---- one row to f32 ------------------------------------------------------------ */
typedef struct {
    float *out;
    float lo, hi;
} row_ctx;
static void row_sym(void *ctx, int64_t row, int64_t col, int sym) {
    row_ctx *c = ctx;
    (void)row;
    c->out[col] = sym > 0 ? c->hi : c->lo;
}

void mt_qmoe_row_f32(const mt_mat *W, int64_t r, float *out) {
    if (!mt_qmoe_mat_ok(W) || r < 0 || r >= W->rows) {
        if (W && W->cols > 0) for (int64_t i = 0; i < W->cols; i++) out[i] = NAN;
        return;
    }
    memset(out, 0, (size_t)W->cols * sizeof(float));
    row_ctx c = {out, 0.0f, 0.0f};
    row_scales(W, r, &c.lo, &c.hi);
    mt_qmoe_walk_rows(W, r, r + 1, row_sym, &c);
}
