/* gptq.c — GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training
 * Quantization for Generative Pre-trained Transformers"), as in its
 * reference implementation: dead columns zeroed, damping λ·mean(diag H),
 * the upper Cholesky factor of H⁻¹ (the backend's potrf/potri: LAPACK on the CPU),
 * columns quantized one at a time with the error fed forward inside a
 * block of `block` columns and applied to the rest of the matrix once per
 * block as one gemm (the "lazy batch" update), optional act-order.
 * A plain column-by-column f64 version is kept as the test reference. */
#include "quant_impl.h"

#include "backend.h"
#include "moetool/mt_qmoe.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int mt_gptq_chol_inv(double *H, int64_t cols) {
    if (cols <= 0 || cols > 1 << 30) return mt_seterr(MT_ERR_ARG, "gptq: %lld columns", (long long)cols);
    const int n = (int)cols;
    mt_backend *be = mt_backend_default();
    int info;
    /* Row-major H seen by Fortran is Hᵀ = H; 'L' there is the row-major
     * upper triangle. potrf+potri leave H⁻¹ in it; potrf again gives
     * column-major L with H⁻¹ = L Lᵀ, i.e. row-major U = Lᵀ, Uᵀ U = H⁻¹. */
    if ((info = be->ops->potrf_f64(be, 'L', n, H, n)))
        return mt_seterr(MT_ERR_INTERNAL, "gptq: Hessian is not positive definite (Cholesky info %d)", info);
    if ((info = be->ops->potri_f64(be, 'L', n, H, n)))
        return mt_seterr(MT_ERR_INTERNAL, "gptq: Hessian inverse failed (info %d)", info);
    info = be->ops->potrf_f64(be, 'L', n, H, n);
    if (info) return mt_seterr(MT_ERR_INTERNAL, "gptq: inverse Hessian is not positive definite (info %d)", info);
    for (int64_t i = 0; i < cols; i++)
        for (int64_t j = 0; j < i; j++) H[i * cols + j] = 0.0; /* row-major lower: leftovers */
    return MT_OK;
}

/* Zeroes dead columns and adds damping; returns MT_OK or an error. */
static void prepare_h(float *W, int64_t rows, int64_t cols, double *H, double damp) {
    double mean = 0;
    for (int64_t i = 0; i < cols; i++) {
        if (H[i * cols + i] == 0) {
            H[i * cols + i] = 1;
            for (int64_t r = 0; r < rows; r++) W[r * cols + i] = 0;
        }
        mean += H[i * cols + i];
    }
    mean /= (double)cols;
    for (int64_t i = 0; i < cols; i++) H[i * cols + i] += damp * mean;
}

/* MT_GRID_TERNARY_ROW with p->ternary_range > 0: the row's levels (and so
 * its zero thresholds, half of each) widened from f16(min), f16(max) to
 * f16(range·min), f16(range·max). Only GPTQ does this: its error feedback
 * lets the wider zero band cost less than it does to plain rounding. */
static void widen_ternary(const mt_grid *g, const mt_gptq_params *p, float *lo, float *hi) {
    if (g->kind != MT_GRID_TERNARY_ROW) return;
    if (p->ternary_scales == MT_QMOE_SCALES_U8LOG) {
        const float s = 0.5f * (*hi - *lo);
        *hi = s;
        *lo = -s;
    }
    if (!(p->ternary_range > 0) || p->ternary_range == 1.0) return;
    *lo = mt_f16_to_f32(mt_f32_to_f16((float)(p->ternary_range * *lo)));
    *hi = mt_f16_to_f32(mt_f32_to_f16((float)(p->ternary_range * *hi)));
}

/* 8-bit log-coded levels: the base of the matrix (from the largest row
 * level as widen_ternary gives it, on the weights as they are: with one
 * group per row GPTQ fits a row before any feedback reaches it), 0 when
 * the grid does not use them. */
static float scale8_base(const float *W, int64_t rows, int64_t cols, const mt_grid *g, const mt_gptq_params *p) {
    if (g->kind != MT_GRID_TERNARY_ROW || p->ternary_scales != MT_QMOE_SCALES_U8LOG) return 0;
    float smax = 0;
    for (int64_t r = 0; r < rows; r++) {
        float lo, hi;
        mt_grid_fit(g, W + r * cols, (int)cols, &lo, &hi);
        widen_ternary(g, p, &lo, &hi);
        if (hi > smax) smax = hi;
    }
    return smax > 0 ? mt_qmoe_scale8_base(smax) : 1.0f;
}

/* The row's levels onto the 8-bit log code of base (base 0: unchanged). */
static void snap8(float base, float *lo, float *hi) {
    if (!(base > 0)) return;
    *hi = mt_qmoe_scale8_value(base, mt_qmoe_scale8_code(base, *hi));
    *lo = -*hi;
}

typedef struct {
    int64_t i;
    double d;
} diag_t;
static int cmp_diag(const void *x, const void *y) {
    const diag_t *a = x, *b = y;
    if (a->d != b->d) return a->d < b->d ? 1 : -1;
    return a->i < b->i ? -1 : a->i > b->i;
}

/* RTN: every group fitted on the weights as they are (ternary rows: no
 * widening, but the 8-bit levels when asked for). */
static void rtn(float *W, int64_t rows, int64_t cols, const mt_grid *g, const mt_gptq_params *p, int8_t *codes,
                float *a, float *b) {
    const int64_t ng = cols / g->group, np = mt_grid_nparam(g);
    mt_gptq_params p1 = *p;
    p1.ternary_range = 1.0;
    const float base = scale8_base(W, rows, cols, g, &p1);
    for (int64_t r = 0; r < rows; r++) {
        float *w = W + r * cols;
        for (int64_t k = 0; k < ng; k++) {
            float *pa = a + (r * ng + k) * np, *pb = b + (r * ng + k) * np;
            mt_grid_fit(g, w + k * g->group, g->group, pa, pb);
            if (base > 0) {
                widen_ternary(g, &p1, pa, pb);
                snap8(base, pa, pb);
            }
            for (int64_t j = k * g->group; j < (k + 1) * g->group; j++) {
                float dq;
                codes[r * cols + j] = (int8_t)mt_grid_quant(g, pa, pb, (int)(j - k * g->group), w[j], &dq);
                w[j] = dq;
            }
        }
    }
}

int mt_gptq_quantize(float *W, int64_t rows, int64_t cols, double *H, const mt_grid *g,
                     const mt_gptq_params *p, int8_t *codes, float *a, float *b) {
    if (cols % g->group) return mt_seterr(MT_ERR_ARG, "gptq: group %d does not divide %lld columns", g->group, (long long)cols);
    if (g->kind == MT_GRID_ROW)
        return mt_seterr(MT_ERR_ARG, "gptq: %s is written whole rows at a time by its own quantizer, not by codes",
                         mt_dtype_name((mt_dtype)g->dtype));
    if (!H) {
        rtn(W, rows, cols, g, p, codes, a, b);
        return MT_OK;
    }
    const int64_t ng = cols / g->group, np = mt_grid_nparam(g), B = p->block > 0 ? p->block : 128;
    mt_backend *be = mt_backend_default();
    int rc = MT_OK;
    int64_t *perm = NULL;
    float *Wp = NULL, *U = NULL, *E = NULL;
    prepare_h(W, rows, cols, H, p->damp);
    const float base8 = scale8_base(W, rows, cols, g, p); /* after dead columns are zeroed, as the fits */
    if (p->act_order) {
        /* Scales come from the original weights (GPTQ's static groups): the
         * group a column belongs to is fixed, its quantization order is not. */
        for (int64_t r = 0; r < rows; r++)
            for (int64_t k = 0; k < ng; k++) {
                float *pa = a + (r * ng + k) * np, *pb = b + (r * ng + k) * np;
                mt_grid_fit(g, W + r * cols + k * g->group, g->group, pa, pb);
                widen_ternary(g, p, pa, pb);
                snap8(base8, pa, pb);
            }
        perm = malloc((size_t)cols * sizeof *perm);
        diag_t *dg = malloc((size_t)cols * sizeof *dg);
        double *Hp = malloc((size_t)cols * (size_t)cols * sizeof *Hp);
        Wp = malloc((size_t)rows * (size_t)cols * sizeof *Wp);
        if (!perm || !dg || !Hp || !Wp) {
            free(dg);
            free(Hp);
            rc = mt_seterr(MT_ERR_NOMEM, "gptq: out of memory");
            goto done;
        }
        for (int64_t i = 0; i < cols; i++) dg[i] = (diag_t){i, H[i * cols + i]};
        qsort(dg, (size_t)cols, sizeof *dg, cmp_diag);
        for (int64_t i = 0; i < cols; i++) perm[i] = dg[i].i;
        free(dg);
        for (int64_t i = 0; i < cols; i++)
            for (int64_t j = 0; j < cols; j++) Hp[i * cols + j] = H[perm[i] * cols + perm[j]];
        memcpy(H, Hp, (size_t)cols * (size_t)cols * sizeof *H);
        free(Hp);
        for (int64_t r = 0; r < rows; r++)
            for (int64_t i = 0; i < cols; i++) Wp[r * cols + i] = W[r * cols + perm[i]];
    }
    if ((rc = mt_gptq_chol_inv(H, cols))) goto done;
    U = malloc((size_t)cols * (size_t)cols * sizeof *U);
    E = malloc((size_t)rows * (size_t)B * sizeof *E);
    if (!U || !E) {
        rc = mt_seterr(MT_ERR_NOMEM, "gptq: out of memory");
        goto done;
    }
    for (int64_t i = 0; i < cols * cols; i++) U[i] = (float)H[i];
    float *Wk = perm ? Wp : W; /* columns in quantization order */
    for (int64_t i1 = 0; i1 < cols; i1 += B) {
        const int64_t i2 = i1 + B < cols ? i1 + B : cols, nb = i2 - i1;
        for (int64_t r = 0; r < rows; r++) {
            float *w = Wk + r * cols;
            for (int64_t j = i1; j < i2; j++) {
                const int64_t col = perm ? perm[j] : j, gi = col / g->group;
                float *pa = a + (r * ng + gi) * np, *pb = b + (r * ng + gi) * np;
                if (!perm && col % g->group == 0) {
                    mt_grid_fit(g, w + j, g->group, pa, pb);
                    widen_ternary(g, p, pa, pb);
                    snap8(base8, pa, pb);
                }
                float dq;
                codes[r * cols + col] = (int8_t)mt_grid_quant(g, pa, pb, (int)(col % g->group), w[j], &dq);
                const float err = (w[j] - dq) / U[j * cols + j];
                w[j] = dq;
                const float *u = U + j * cols;
                for (int64_t k = j + 1; k < i2; k++) w[k] -= err * u[k];
                E[r * B + (j - i1)] = err;
            }
        }
        if (i2 < cols)
            be->ops->gemm_f32(be, 0, 0, (int)rows, (int)(cols - i2), (int)nb, -1.0f, E, (int)B, U + i1 * cols + i2,
                              (int)cols, 1.0f, Wk + i2, (int)cols);
    }
    if (perm)
        for (int64_t r = 0; r < rows; r++)
            for (int64_t i = 0; i < cols; i++) W[r * cols + perm[i]] = Wp[r * cols + i];
done:
    free(perm);
    free(Wp);
    free(U);
    free(E);
    return rc;
}

int mt_gptq_quantize_naive(float *W, int64_t rows, int64_t cols, const double *H0, const mt_grid *g, double damp,
                           int8_t *codes, float *a, float *b) {
    const int64_t ng = cols / g->group, np = mt_grid_nparam(g);
    double *H = malloc((size_t)cols * (size_t)cols * sizeof *H);
    double *w = malloc((size_t)cols * sizeof *w);
    float *wf = malloc((size_t)cols * sizeof *wf);
    int rc = MT_OK;
    if (!H || !w || !wf) {
        rc = mt_seterr(MT_ERR_NOMEM, "gptq: out of memory");
        goto done;
    }
    memcpy(H, H0, (size_t)cols * (size_t)cols * sizeof *H);
    prepare_h(W, rows, cols, H, damp);
    if ((rc = mt_gptq_chol_inv(H, cols))) goto done;
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t j = 0; j < cols; j++) w[j] = W[r * cols + j];
        for (int64_t j = 0; j < cols; j++) {
            const int64_t gi = j / g->group;
            float *pa = a + (r * ng + gi) * np, *pb = b + (r * ng + gi) * np;
            if (j % g->group == 0) {
                for (int64_t k = 0; k < g->group; k++) wf[k] = (float)w[j + k];
                mt_grid_fit(g, wf, g->group, pa, pb);
            }
            float dq;
            codes[r * cols + j] = (int8_t)mt_grid_quant(g, pa, pb, (int)(j % g->group), (float)w[j], &dq);
            const double err = (w[j] - dq) / H[j * cols + j];
            w[j] = dq;
            for (int64_t k = j + 1; k < cols; k++) w[k] -= err * H[j * cols + k];
        }
        for (int64_t j = 0; j < cols; j++) W[r * cols + j] = (float)w[j];
    }
done:
    free(H);
    free(w);
    free(wf);
    return rc;
}

double mt_gptq_output_err(const float *W, const float *Wq, int64_t rows, int64_t cols, const double *H) {
    double *d = malloc((size_t)cols * sizeof *d), tot = 0;
    if (!d) return NAN;
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t j = 0; j < cols; j++) d[j] = (double)W[r * cols + j] - (double)Wq[r * cols + j];
        for (int64_t i = 0; i < cols; i++) {
            if (d[i] == 0) continue;
            double s = 0;
            const double *h = H + i * cols;
            for (int64_t j = 0; j < cols; j++) s += h[j] * d[j];
            tot += d[i] * s;
        }
    }
    free(d);
    return tot;
}

