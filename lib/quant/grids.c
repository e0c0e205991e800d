/* grids.c — the quantization grids GPTQ and RTN round onto: GPTQ's
 * symmetric and asymmetric uniform grids (2–8 bits, groups or rows), llama.cpp's Q8_0, Q4_0
 * and TQ2_0 blocks with their reference scale rules (so that RTN output is
 * byte-identical to llama.cpp's quantize_row_*_ref), its K-quant and
 * q4_1/q5_x blocks through their two-step block quantizers (lib/io/codec:
 * the block's scales from llama.cpp's reference search, then a code per
 * weight), and QMoE's per-row ternary {min, 0, max}. */
#include "quant_impl.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static float f16_round(float x) { return mt_f16_to_f32(mt_f32_to_f16(x)); }

int mt_grid_make(mt_grid *g, int bits, int group, int64_t cols, const char *what) {
    memset(g, 0, sizeof *g);
    if (bits != 8 && bits != 4 && bits != 3 && bits != 2 && bits != MT_QUANT_TERNARY)
        return mt_seterr(MT_ERR_ARG, "%s: %d-bit quantization is not supported (use 8, 4, 3, 2 or ternary)", what, bits);
    if (group < MT_QUANT_GROUP_DEFAULT)
        return mt_seterr(MT_ERR_ARG, "%s: group %d is not a group size", what, group);
    if (group == MT_QUANT_GROUP_DEFAULT) group = bits >= 4 ? 32 : bits == MT_QUANT_TERNARY ? 256 : 128;
    if (group != MT_QUANT_GROUP_ROW && (cols % group))
        return mt_seterr(MT_ERR_ARG, "%s: group %d does not divide its %lld columns", what, group, (long long)cols);
    if (bits == MT_QUANT_TERNARY) {
        if (group == 256) {
            g->kind = MT_GRID_TQ2_0;
        } else if (group == MT_QUANT_GROUP_ROW) {
            g->kind = MT_GRID_TERNARY_ROW;
        } else {
            return mt_seterr(MT_ERR_ARG, "%s: ternary takes group 256 (TQ2_0) or row (QMoE {min,0,max}), not %d", what,
                             group);
        }
        g->group = group == MT_QUANT_GROUP_ROW ? (int)cols : group;
        return MT_OK;
    }
    if (group == 32 && bits == 8) g->kind = MT_GRID_Q8_0;
    else if (group == 32 && bits == 4) g->kind = MT_GRID_Q4_0;
    else g->kind = MT_GRID_INT;
    g->bits = bits;
    g->group = group == MT_QUANT_GROUP_ROW ? (int)cols : group;
    return MT_OK;
}

int mt_grid_make_type(mt_grid *g, int dtype, int64_t cols, const char *what) {
    const mt_dtype_info *d = mt_dtype_get((mt_dtype)dtype);
    memset(g, 0, sizeof *g);
    if (dtype == MT_DT_Q8_0) return mt_grid_make(g, 8, 32, cols, what);
    if (dtype == MT_DT_Q4_0) return mt_grid_make(g, 4, 32, cols, what);
    if (dtype == MT_DT_TQ2_0) return mt_grid_make(g, MT_QUANT_TERNARY, 256, cols, what);
    if (d && !d->blk && d->from_f32_w) {
        if (cols % d->block_elems)
            return mt_seterr(MT_ERR_ARG, "%s: %s needs rows of whole %d-weight blocks; %lld columns are not", what,
                             d->name, d->block_elems, (long long)cols);
        g->kind = MT_GRID_ROW;
        g->group = d->block_elems;
        g->dtype = dtype;
        return MT_OK;
    }
    if (!d || !d->blk)
        return mt_seterr(MT_ERR_ARG, "%s: moetool does not write %s (types: q8_0, q6_k, q5_k, q5_1, q5_0, q4_k, "
                         "q4_1, q4_0, q3_k, q2_k, tq2_0, iq4_xs, iq4_nl, iq3_s, iq3_xxs, iq2_s, iq2_xs, iq2_xxs, "
                         "iq1_m, iq1_s)", what, d ? d->name : "that type");
    if (cols % d->blk->elems)
        return mt_seterr(MT_ERR_ARG, "%s: %s needs rows of whole %d-weight blocks; %lld columns are not", what, d->name,
                         d->blk->elems, (long long)cols);
    g->kind = MT_GRID_BLOCK;
    g->group = d->blk->elems;
    g->dtype = dtype;
    g->bc = d->blk;
    return MT_OK;
}

int mt_grid_nparam(const mt_grid *g) {
    return g->kind == MT_GRID_BLOCK ? (int)((sizeof(mt_blk_params) + sizeof(float) - 1) / sizeof(float)) : 1;
}

int mt_grid_asym(mt_grid *g, const char *what) {
    if (g->kind == MT_GRID_INT || g->kind == MT_GRID_INT_ASYM) {
        g->kind = MT_GRID_INT_ASYM;
        return MT_OK;
    }
    char nm[48];
    mt_grid_name(g, nm, sizeof nm);
    return mt_seterr(MT_ERR_ARG, "%s: %s %s; --asym takes only the int grids without a file type (3 or 2 bits, "
                     "or 8/4 bits with a group other than 32), measured with --eval-only", what, nm,
                     g->kind == MT_GRID_TERNARY_ROW ? "has its own {min, 0, max} levels per row"
                     : g->kind == MT_GRID_BLOCK || g->kind == MT_GRID_ROW
                         ? "is a llama.cpp block type (a file type with its own scale rules)"
                                                    : "is llama.cpp's symmetric block type (a file type, no zero point)");
}

int mt_grid_dtype(const mt_grid *g) {
    switch (g->kind) {
    case MT_GRID_Q8_0: return MT_DT_Q8_0;
    case MT_GRID_Q4_0: return MT_DT_Q4_0;
    case MT_GRID_TQ2_0: return MT_DT_TQ2_0;
    case MT_GRID_BLOCK:
    case MT_GRID_ROW: return g->dtype;
    default: return -1;
    }
}

double mt_grid_bits(const mt_grid *g, int64_t cols) {
    const mt_dtype_info *dt = mt_dtype_get((mt_dtype)mt_grid_dtype(g));
    if (dt) return dt->block_bytes * 8.0 / dt->block_elems; /* a storage type's blocks */
    switch (g->kind) {
    case MT_GRID_TERNARY_ROW: return 2.0 + 32.0 / (double)cols; /* 2-bit codes + f16 min, max */
    case MT_GRID_INT_ASYM: return g->bits + (16.0 + g->bits) / g->group; /* codes + f16 scale + b-bit zero */
    default: return g->bits + 16.0 / g->group;                  /* codes + one f16 scale */
    }
}

void mt_grid_name(const mt_grid *g, char *buf, size_t n) {
    switch (g->kind) {
    case MT_GRID_Q8_0: snprintf(buf, n, "q8_0"); break;
    case MT_GRID_Q4_0: snprintf(buf, n, "q4_0"); break;
    case MT_GRID_TQ2_0: snprintf(buf, n, "tq2_0"); break;
    case MT_GRID_TERNARY_ROW: snprintf(buf, n, "ternary row (QMoE)"); break;
    case MT_GRID_BLOCK:
    case MT_GRID_ROW: snprintf(buf, n, "%s", mt_dtype_name((mt_dtype)g->dtype)); break;
    case MT_GRID_INT_ASYM: snprintf(buf, n, "int%d g%d asym", g->bits, g->group); break;
    default: snprintf(buf, n, "int%d g%d", g->bits, g->group); break;
    }
}

/* Squared error of ternary rounding of x with scale d. */
static double tern_err(const float *x, int n, float d) {
    double e = 0;
    const float id = d ? 1.0f / d : 0.0f;
    for (int i = 0; i < n; i++) {
        float q = roundf(x[i] * id);
        q = q > 1 ? 1 : q < -1 ? -1 : q;
        double r = (double)x[i] - (double)q * d;
        e += r * r;
    }
    return e;
}

void mt_grid_fit(const mt_grid *g, const float *x, int n, float *a, float *b) {
    float amax = 0, mn = 0, mx = 0, smax = 0;
    for (int i = 0; i < n; i++) {
        float v = fabsf(x[i]);
        if (v > amax) {
            amax = v;
            smax = x[i];
        }
        if (x[i] < mn) mn = x[i];
        if (x[i] > mx) mx = x[i];
    }
    switch (g->kind) {
    case MT_GRID_ROW: /* whole rows through the type's quantizer (mt_gptq_quantize refuses it) */
        MT_ASSERT(g->kind != MT_GRID_ROW);
        return;
    case MT_GRID_BLOCK: {
        int8_t q[MT_QK_K]; /* the reference codes: GPTQ rounds its own */
        MT_ASSERT(n == g->bc->elems && n <= MT_QK_K);
        g->bc->fit(x, (mt_blk_params *)(void *)a, q);
        *b = 0;
        return;
    }
    case MT_GRID_INT: {
        const int maxq = (1 << g->bits) - 1;
        float xmax = amax > 0 ? amax : 1.0f;
        *a = 2.0f * xmax / (float)maxq;
        *b = (float)((maxq + 1) / 2);
        return;
    }
    case MT_GRID_INT_ASYM: {
        /* As GPTQ's reference with sym=False: the range always holds 0, so
         * 0 is a level and the zero point lies in [0, 2^b-1]. */
        const int maxq = (1 << g->bits) - 1;
        float lo = mn, hi = mx;
        if (lo == hi) {
            lo = -1.0f;
            hi = 1.0f;
        }
        float s = f16_round((hi - lo) / (float)maxq);
        if (!(s > 0)) s = 0x1p-24f; /* smallest f16 subnormal: a range too narrow for f16 */
        float z = roundf(-lo / s);
        *a = s;
        *b = z < 0 ? 0.0f : z > (float)maxq ? (float)maxq : z;
        return;
    }
    case MT_GRID_Q8_0: {
        const float d = amax / 127.0f;
        *a = f16_round(d);
        *b = d ? 1.0f / d : 0.0f;
        return;
    }
    case MT_GRID_Q4_0: {
        const float d = smax / -8.0f;
        *a = f16_round(d);
        *b = d ? 1.0f / d : 0.0f;
        return;
    }
    case MT_GRID_TQ2_0: {
        float d = amax;
        if (g->mse_scale && amax > 0) {
            double best = tern_err(x, n, f16_round(amax));
            for (int k = 6; k < 40; k++) {
                float c = f16_round(amax * (float)k / 40.0f);
                double e = tern_err(x, n, c);
                if (e < best) {
                    best = e;
                    d = c;
                }
            }
            /* Lloyd steps: with the support fixed, the best scale is the mean |x| on it. */
            for (int it = 0; it < 3; it++) {
                double s = 0;
                int cnt = 0;
                for (int i = 0; i < n; i++)
                    if (fabsf(x[i]) > 0.5f * d) {
                        s += fabsf(x[i]);
                        cnt++;
                    }
                if (!cnt) break;
                float c = f16_round((float)(s / cnt));
                double e = tern_err(x, n, c);
                if (!(e < best)) break;
                best = e;
                d = c;
            }
        }
        *a = f16_round(d);
        *b = d ? 1.0f / d : 0.0f;
        if (g->mse_scale) *b = *a ? 1.0f / *a : 0.0f;
        return;
    }
    case MT_GRID_TERNARY_ROW:
        *a = f16_round(mn);
        *b = f16_round(mx);
        return;
    }
}

int mt_grid_quant(const mt_grid *g, const float *pa, const float *pb, int j, float x, float *dq) {
    const float a = *pa, b = *pb;
    switch (g->kind) {
    case MT_GRID_ROW: MT_ASSERT(g->kind != MT_GRID_ROW); return 0;
    case MT_GRID_BLOCK: return mt_blk_quant(g->bc, (const mt_blk_params *)(const void *)pa, j, x, dq);
    case MT_GRID_INT:
    case MT_GRID_INT_ASYM: {
        /* code q − 2^(bits-1) for both: the symmetric grid's zero b is 2^(bits-1) */
        const int maxq = (1 << g->bits) - 1;
        float q = roundf(x / a) + b;
        q = q < 0 ? 0 : q > (float)maxq ? (float)maxq : q;
        *dq = a * (q - b);
        return (int)q - (1 << (g->bits - 1));
    }
    case MT_GRID_Q8_0: {
        float q = roundf(x * b);
        q = q < -128 ? -128 : q > 127 ? 127 : q;
        *dq = a * q;
        return (int)q;
    }
    case MT_GRID_Q4_0: {
        float v = x * b + 8.5f;
        v = v < 0 ? 0 : v > 15.5f ? 15.5f : v;
        int q = (int)v;
        if (q > 15) q = 15;
        *dq = a * (float)(q - 8);
        return q - 8;
    }
    case MT_GRID_TQ2_0: {
        long q = lroundf(x * b);
        q = q < -1 ? -1 : q > 1 ? 1 : q;
        *dq = a * (float)q;
        return (int)q;
    }
    case MT_GRID_TERNARY_ROW:
        if (b > 0 && x > 0.5f * b) {
            *dq = b;
            return 1;
        }
        if (a < 0 && x < 0.5f * a) {
            *dq = a;
            return -1;
        }
        *dq = 0;
        return 0;
    }
    *dq = 0;
    return 0;
}

void mt_grid_pack_row(const mt_grid *g, const int8_t *codes, const float *a, int64_t cols, uint8_t *dst) {
    switch (g->kind) {
    case MT_GRID_Q8_0:
        for (int64_t blk = 0; blk < cols / MT_QK8_0; blk++)
            mt_q8_0_pack(codes + MT_QK8_0 * blk, mt_f32_to_f16(a[blk]), dst + MT_Q8_0_BYTES * blk);
        break;
    case MT_GRID_Q4_0:
        for (int64_t blk = 0; blk < cols / MT_QK4_0; blk++)
            mt_q4_0_pack(codes + MT_QK4_0 * blk, mt_f32_to_f16(a[blk]), dst + MT_Q4_0_BYTES * blk);
        break;
    case MT_GRID_TQ2_0:
        for (int64_t blk = 0; blk < cols / MT_QK_K; blk++)
            mt_tq2_0_pack(codes + MT_QK_K * blk, mt_f32_to_f16(a[blk]), dst + MT_TQ2_0_BYTES * blk);
        break;
    case MT_GRID_BLOCK: {
        const int np = mt_grid_nparam(g), e = g->bc->elems;
        for (int64_t blk = 0; blk < cols / e; blk++)
            g->bc->pack(codes + (int64_t)e * blk, (const mt_blk_params *)(const void *)(a + (int64_t)np * blk),
                        dst + (int64_t)g->bc->bytes * blk);
        break;
    }
    default:
        break;
    }
}
