/* kernels_hd.h — the parts of the CUDA kernels that are plain arithmetic, as
 * inline functions compiled twice: for the device by nvcc (cuda/, as
 * `__host__ __device__`) and for the host by the C compiler, so that
 * tests/test_cuda_hd.c checks them against the CPU backend's reference
 * kernels on machines without a GPU. The router row is the CPU backend's
 * own code too (one algorithm for both devices). A CUDA kernel is a thin loop around
 * these: which thread handles which elements (the lane split of a matvec
 * row, the RoPE pair, the KV head of a query head), how one element of a
 * stored row decodes (f16/bf16 bits, q8_0 and q4_0 blocks, the K-quant
 * and TQ super-blocks), the walk of one
 * 16-row group of a qmoe matrix from its offset, and the router's softmax +
 * top-k + alias of one token.
 *
 * Numerics are f32 throughout (the CPU reference sums some of them in
 * double): results agree with the CPU backend within rounding, not bit for
 * bit. Nothing here allocates, prints or reads outside the arrays given. */
#ifndef MT_KERNELS_HD_H
#define MT_KERNELS_HD_H

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define MT_HD __host__ __device__ static inline
#else
#define MT_HD static inline
#endif

/* Storage kinds with CUDA kernels (the backend maps mt_dtype onto these). */
enum {
    MT_CU_NONE = -1,
    MT_CU_F32 = 0,
    MT_CU_F16,
    MT_CU_BF16,
    MT_CU_Q8_0,
    MT_CU_Q4_0,
    MT_CU_QMOE,
    /* llama.cpp's super-blocks of 256 weights (sub-blocks of 16 or 32). */
    MT_CU_Q2_K,
    MT_CU_Q3_K,
    MT_CU_Q4_K,
    MT_CU_Q5_K,
    MT_CU_Q6_K,
    MT_CU_TQ1_0,
    MT_CU_TQ2_0
};

/* Lanes of a warp: the matvec splits each row between this many threads. */
#define MT_CU_LANES 32
/* Elements of a q8_0 / q4_0 block and its bytes. */
#define MT_CU_QK 32
#define MT_CU_Q8_0_BYTES 34
#define MT_CU_Q4_0_BYTES 18
/* Elements of a super-block (K-quants, TQ) and of the unit a lane of a
 * matvec takes from it. */
#define MT_CU_QK_K 256
#define MT_CU_SUB 16

/* Bytes of one super-block of kind (0 for the other kinds). */
MT_HD int mt_cu_sb_bytes(int kind) {
    switch (kind) {
    case MT_CU_Q2_K: return 84;
    case MT_CU_Q3_K: return 110;
    case MT_CU_Q4_K: return 144;
    case MT_CU_Q5_K: return 176;
    case MT_CU_Q6_K: return 210;
    case MT_CU_TQ1_0: return 54;
    case MT_CU_TQ2_0: return 66;
    default: return 0;
    }
}

MT_HD int64_t mt_cu_cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

MT_HD float mt_cu_bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* IEEE binary16 -> f32, exact for every input (subnormals, inf, NaN). */
MT_HD float mt_cu_f16(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t ex = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (ex == 0) {
        const float v = (float)man * 5.9604644775390625e-8f; /* man · 2^-24, exact */
        return sign ? -v : v;
    }
    if (ex == 31) return mt_cu_bits_f32(sign | 0x7f800000u | (man << 13));
    return mt_cu_bits_f32(sign | ((ex + 112u) << 23) | (man << 13));
}

MT_HD float mt_cu_bf16(uint16_t h) { return mt_cu_bits_f32((uint32_t)h << 16); }

MT_HD uint16_t mt_cu_ld16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

/* Bytes of a row of `cols` elements stored as kind (cols a multiple of 32
 * for the block kinds). */
MT_HD int64_t mt_cu_row_bytes(int kind, int64_t cols) {
    switch (kind) {
    case MT_CU_F32: return 4 * cols;
    case MT_CU_F16:
    case MT_CU_BF16: return 2 * cols;
    case MT_CU_Q8_0: return cols / MT_CU_QK * MT_CU_Q8_0_BYTES;
    case MT_CU_Q4_0: return cols / MT_CU_QK * MT_CU_Q4_0_BYTES;
    default: return cols / MT_CU_QK_K * mt_cu_sb_bytes(kind);
    }
}

/* ---- super-blocks ----------------------------------------------------------
 * Layouts as lib/io/codec/kquant.c and tq.c document them. A weight is
 * dl·q − ml, with (dl, ml) shared by the 16 weights of sub-block s (16 or
 * 32 for Q4_K/Q5_K, whose sub-blocks of 32 are two of these) and q the
 * weight's code with its offset applied; the same float operations in the
 * same order as the codec's decoders, so that on the host the two agree bit
 * for bit. */
MT_HD void mt_cu_q4_K_scale_min(const uint8_t *s, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

MT_HD void mt_cu_sb_scale(int kind, const uint8_t *b, int s, float *dl, float *ml) {
    *ml = 0.0f;
    switch (kind) {
    case MT_CU_Q2_K:
        *dl = mt_cu_f16(mt_cu_ld16(b + 80)) * (float)(b[s] & 0x0f);
        *ml = mt_cu_f16(mt_cu_ld16(b + 82)) * (float)(b[s] >> 4);
        return;
    case MT_CU_Q3_K: {
        const int lo = (b[96 + s % 8] >> (4 * (s / 8))) & 0x0f, hi = (b[104 + s % 4] >> (2 * (s / 4))) & 3;
        *dl = mt_cu_f16(mt_cu_ld16(b + 108)) * (float)((lo | hi << 4) - 32);
        return;
    }
    case MT_CU_Q4_K:
    case MT_CU_Q5_K: {
        int sc, m;
        mt_cu_q4_K_scale_min(b + 4, s / 2, &sc, &m);
        *dl = mt_cu_f16(mt_cu_ld16(b)) * (float)sc;
        *ml = mt_cu_f16(mt_cu_ld16(b + 2)) * (float)m;
        return;
    }
    case MT_CU_Q6_K: *dl = mt_cu_f16(mt_cu_ld16(b + 208)) * (float)(int8_t)b[192 + s]; return;
    case MT_CU_TQ1_0: *dl = mt_cu_f16(mt_cu_ld16(b + 52)); return;
    case MT_CU_TQ2_0: *dl = mt_cu_f16(mt_cu_ld16(b + 64)); return;
    default: *dl = NAN; return;
    }
}

/* Base-3 digit k of a TQ1_0 byte (llama.cpp's scaled encoding). */
MT_HD int mt_cu_tq1_digit(uint8_t byte, int k) {
    const uint8_t pow3[5] = {1, 3, 9, 27, 81};
    return (((uint8_t)(byte * pow3[k])) * 3) >> 8;
}

/* Code of weight e (0..255) of a super-block, offset applied. */
MT_HD int mt_cu_sb_code(int kind, const uint8_t *b, int e) {
    switch (kind) {
    case MT_CU_Q2_K: return (b[16 + 32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
    case MT_CU_Q3_K: {
        const int lo = (b[32 + 32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
        return lo - (((b[e % 32] >> (e / 32)) & 1) ? 0 : 4);
    }
    case MT_CU_Q4_K: return (b[16 + 32 * (e / 64) + e % 32] >> (4 * ((e / 32) % 2))) & 0x0f;
    case MT_CU_Q5_K:
        return ((b[48 + 32 * (e / 64) + e % 32] >> (4 * ((e / 32) % 2))) & 0x0f) | ((b[16 + e % 32] >> (e / 32)) & 1) << 4;
    case MT_CU_Q6_K: {
        const int h = e / 128, l = (e % 128) / 32, m = e % 32;
        const int ql = (b[64 * h + 32 * (l % 2) + m] >> (4 * (l / 2))) & 0x0f, qh = (b[128 + 32 * h + m] >> (2 * l)) & 3;
        return (ql | qh << 4) - 32;
    }
    case MT_CU_TQ2_0: return ((b[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3) - 1;
    case MT_CU_TQ1_0:
        if (e < 160) return mt_cu_tq1_digit(b[e % 32], e / 32) - 1;
        if (e < 240) return mt_cu_tq1_digit(b[32 + (e - 160) % 16], (e - 160) / 16) - 1;
        return mt_cu_tq1_digit(b[48 + (e - 240) % 4], (e - 240) / 4) - 1;
    default: return 0;
    }
}

/* Weight e of a super-block. Its scale is that of sub-block e / 16 (Q6_K's
 * scale 8h + 2l + (m ≥ 16) of weight 128h + 32l + m is e / 16 as well;
 * Q4_K/Q5_K halve it onto their sub-blocks of 32). */
MT_HD float mt_cu_sb_elem(int kind, const uint8_t *b, int e) {
    float dl, ml;
    mt_cu_sb_scale(kind, b, e / MT_CU_SUB, &dl, &ml);
    const float q = (float)mt_cu_sb_code(kind, b, e);
    if (kind == MT_CU_Q2_K || kind == MT_CU_Q4_K || kind == MT_CU_Q5_K) return dl * q - ml;
    return dl * q;
}

/* dot of sub-block s (weights 16s .. 16s + 15) of a super-block with x16:
 * dl·Σ q·x − ml·Σ x. */
MT_HD float mt_cu_sb_sub_dot(int kind, const uint8_t *b, int s, const float *x16) {
    float dl, ml, sq = 0.0f, sx = 0.0f;
    mt_cu_sb_scale(kind, b, s, &dl, &ml);
    for (int k = 0; k < MT_CU_SUB; k++) {
        sq += (float)mt_cu_sb_code(kind, b, MT_CU_SUB * s + k) * x16[k];
        sx += x16[k];
    }
    return dl * sq - ml * sx;
}

/* Element i of a stored row. q8_0: f16 d, 32 int8, value d·q. q4_0: f16 d,
 * 16 bytes, elements 0..15 in the low nibbles, 16..31 in the high ones,
 * value d·(nibble − 8). */
MT_HD float mt_cu_elem(int kind, const uint8_t *row, int64_t i) {
    switch (kind) {
    case MT_CU_F32: {
        uint32_t u = (uint32_t)row[4 * i] | ((uint32_t)row[4 * i + 1] << 8) | ((uint32_t)row[4 * i + 2] << 16) |
                     ((uint32_t)row[4 * i + 3] << 24);
        return mt_cu_bits_f32(u);
    }
    case MT_CU_F16: return mt_cu_f16(mt_cu_ld16(row + 2 * i));
    case MT_CU_BF16: return mt_cu_bf16(mt_cu_ld16(row + 2 * i));
    case MT_CU_Q8_0: {
        const uint8_t *b = row + (i / MT_CU_QK) * MT_CU_Q8_0_BYTES;
        return mt_cu_f16(mt_cu_ld16(b)) * (float)(int8_t)b[2 + i % MT_CU_QK];
    }
    case MT_CU_Q4_0: {
        const uint8_t *b = row + (i / MT_CU_QK) * MT_CU_Q4_0_BYTES;
        const int j = (int)(i % MT_CU_QK);
        const int nib = j < 16 ? (b[2 + j] & 0x0f) : (b[2 + j - 16] >> 4);
        return mt_cu_f16(mt_cu_ld16(b)) * (float)(nib - 8);
    }
    default: {
        const int bytes = mt_cu_sb_bytes(kind);
        if (!bytes) return NAN;
        return mt_cu_sb_elem(kind, row + (i / MT_CU_QK_K) * bytes, (int)(i % MT_CU_QK_K));
    }
    }
}

/* One lane's part of dot(row, x) in a matvec where `lanes` threads share a
 * row: the float kinds interleave elements (lane, lane + lanes, ...: loads
 * of a warp are contiguous), the block kinds interleave whole blocks of 32
 * (one f16 scale per block and lane), the super-block kinds their
 * sub-blocks of 16 (a 4096-wide row gives each of 32 lanes 8). The lanes' parts sum to the dot. */
MT_HD float mt_cu_lane_dot(int kind, const uint8_t *row, const float *x, int64_t cols, int lane, int lanes) {
    float s = 0.0f;
    if (kind == MT_CU_Q8_0 || kind == MT_CU_Q4_0) {
        const int64_t bytes = kind == MT_CU_Q8_0 ? MT_CU_Q8_0_BYTES : MT_CU_Q4_0_BYTES;
        for (int64_t b = lane; b < cols / MT_CU_QK; b += lanes) {
            const uint8_t *blk = row + b * bytes;
            const float d = mt_cu_f16(mt_cu_ld16(blk));
            const float *xb = x + b * MT_CU_QK;
            float t = 0.0f;
            if (kind == MT_CU_Q8_0) {
                for (int j = 0; j < MT_CU_QK; j++) t += (float)(int8_t)blk[2 + j] * xb[j];
            } else {
                for (int j = 0; j < 16; j++) {
                    t += (float)((blk[2 + j] & 0x0f) - 8) * xb[j];
                    t += (float)((blk[2 + j] >> 4) - 8) * xb[16 + j];
                }
            }
            s += d * t;
        }
        return s;
    }
    const int sb = mt_cu_sb_bytes(kind);
    if (sb) { /* super-blocks: lanes take sub-blocks of 16 in turn */
        for (int64_t u = lane; u < cols / MT_CU_SUB; u += lanes)
            s += mt_cu_sb_sub_dot(kind, row + (u / 16) * sb, (int)(u % 16), x + u * MT_CU_SUB);
        return s;
    }
    for (int64_t i = lane; i < cols; i += lanes) s += mt_cu_elem(kind, row, i) * x[i];
    return s;
}

/* RoPE: the stored pair (src0, src1) of output pair j of a head of 2·half
 * values; the output goes to (j, j + half) in both styles. style 0: Hugging
 * Face rotate_half (j, j + half); 1: GGUF's interleaved pairs (2j, 2j + 1). */
MT_HD void mt_cu_rope_src(int style, int j, int half, int *src0, int *src1) {
    *src0 = style ? 2 * j : j;
    *src1 = style ? 2 * j + 1 : j + half;
}

/* KV head read by query head hq (GQA groups of n_heads / n_kv_heads). */
MT_HD int mt_cu_kv_head(int hq, int n_heads, int n_kv_heads) { return hq / (n_heads / n_kv_heads); }

/* 1 / sqrt(mean(x²) + eps) from the sum of squares in double. */
MT_HD float mt_cu_rms_scale(double sumsq, int dim, float eps) {
    return 1.0f / sqrtf((float)(sumsq / dim) + eps);
}

/* ---- qmoe ------------------------------------------------------------------
 * Codewords [k0, k1) of group g: offsets[g] .. offsets[g + 1], clamped to the
 * stream (as the CPU kernels clamp unchecked input). */
MT_HD void mt_cu_qmoe_span(const uint32_t *offsets, uint64_t n_codes, int64_t g, uint64_t *k0, uint64_t *k1) {
    uint64_t a = offsets[g], b = offsets[g + 1];
    if (b > n_codes) b = n_codes;
    if (a > b) a = b;
    *k0 = a;
    *k1 = b;
}

/* Rows of group g: group_rows, fewer in the last group. */
MT_HD int64_t mt_cu_qmoe_group_rows(int64_t rows, int64_t group_rows, int64_t g) {
    const int64_t r0 = g * group_rows;
    return r0 + group_rows <= rows ? group_rows : rows - r0;
}

/* y[r] = dot(row r, x) for the rows of group g: the group's codewords are
 * walked once; each symbol +1 adds x[col] to S₊, −1 to S₋ of the current
 * row; a finished row gets hi·S₊ + lo·S₋ (scales: f16 lo, hi per row).
 * Codewords straddle rows inside a group; a stream that ends early leaves
 * the rest of its rows at what they summed (0 for rows never reached). */
MT_HD void mt_cu_qmoe_group_dot(const uint16_t *codes, const uint32_t *offsets, uint64_t n_codes, const uint8_t *len,
                                const uint64_t *mask, const uint16_t *scales, int64_t rows, int64_t cols,
                                int64_t group_rows, int64_t g, const float *x, float *y) {
    uint64_t k0, k1;
    mt_cu_qmoe_span(offsets, n_codes, g, &k0, &k1);
    const int64_t nrows = mt_cu_qmoe_group_rows(rows, group_rows, g);
    int64_t r = 0, col = 0;
    float sp = 0.0f, sm = 0.0f;
    for (uint64_t k = k0; k < k1 && r < nrows; k++) {
        const uint16_t c = codes[k];
        const uint32_t pl = (uint32_t)mask[c], mi = (uint32_t)(mask[c] >> 32);
        for (int s = 0; s < len[c]; s++) {
            if ((pl >> s) & 1u)
                sp += x[col];
            else if ((mi >> s) & 1u)
                sm += x[col];
            if (++col == cols) {
                const int64_t row = g * group_rows + r;
                y[row] = mt_cu_f16(scales[2 * row + 1]) * sp + mt_cu_f16(scales[2 * row]) * sm;
                sp = sm = 0.0f;
                col = 0;
                if (++r == nrows) break;
            }
        }
    }
    for (; r < nrows; r++) {
        const int64_t row = g * group_rows + r;
        y[row] = mt_cu_f16(scales[2 * row + 1]) * sp + mt_cu_f16(scales[2 * row]) * sm;
        sp = sm = 0.0f;
    }
}

/* ---- router ----------------------------------------------------------------
 * One token: p = softmax(logits) over ne rows, top_k rows of p (ties to the
 * lower index), gates p_topk (divided by their sum when renorm); with alias
 * (router row -> expert) rows become experts and a later slot holding an
 * expert an earlier slot holds gives it its gate and becomes -1, gate 0.
 * The CPU backend's router_topk runs it row by row. */
MT_HD void mt_cu_router_row(const float *lg, int ne, int top_k, int renorm, const int32_t *alias, float *p,
                            int32_t *tk, float *tw) {
    float mx = -FLT_MAX, sum = 0.0f;
    for (int e = 0; e < ne; e++) mx = lg[e] > mx ? lg[e] : mx;
    for (int e = 0; e < ne; e++) {
        p[e] = expf(lg[e] - mx);
        sum += p[e];
    }
    for (int e = 0; e < ne; e++) p[e] /= sum;
    float wsum = 0.0f;
    for (int k = 0; k < top_k; k++) {
        int best = -1;
        for (int e = 0; e < ne; e++) {
            int taken = 0;
            for (int q = 0; q < k; q++) taken |= tk[q] == e;
            if (taken) continue;
            if (best < 0 || p[e] > p[best]) best = e;
        }
        tk[k] = best;
        tw[k] = p[best];
        wsum += p[best];
    }
    for (int k = 0; renorm && k < top_k; k++) tw[k] /= wsum;
    if (!alias) return;
    for (int k = 0; k < top_k; k++) {
        tk[k] = alias[tk[k]];
        for (int q = 0; q < k; q++)
            if (tk[q] == tk[k]) {
                tw[q] += tw[k];
                tw[k] = 0.0f;
                tk[k] = -1;
                break;
            }
    }
}

#endif
