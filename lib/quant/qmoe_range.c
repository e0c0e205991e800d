/* qmoe_range.c — a ternary range per expert matrix under a bit budget
 * (`quantize --codec qmoe --target-bpw B`).
 *
 * GPTQ's ternary range r (gptq.c widen_ternary) trades nonzeros, so coded
 * bits, for error. One r for every matrix spends the same on a rare expert
 * as on a busy one and on a matrix whose error the layer absorbs as on one
 * it does not. Here each expert matrix of a layer is quantized at every
 * candidate r (mt_qmoe_range_measure: its layer-output error on its own
 * calibration rows and its exact coded size under a reference dictionary),
 * and the layer's ranges are chosen (mt_qmoe_range_choose) to minimise
 * Σ_matrices tokens · relative output error under the layer's share of the
 * budget; the layer is then quantized at the chosen ranges and the next
 * layer calibrated on it, as always.
 *
 * The reference dictionary of a layer is built from the symbol counts of
 * the ranges chosen in the layers before it (layer 0: a prior at the
 * default's 86 % zeros); the final code is built from all layers' counts,
 * so the size measured per layer is an estimate of the final one, which
 * the caller reports (measured numbers in docs/quality.md). */
#include "quant_impl.h"

#include "moetool/mt_qmoe.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

const double mt_qmoe_range_cands[MT_QMOE_RANGE_NCAND] = {1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.8};

int mt_qmoe_range_measure(const mt_mat *src, const float *W0, const double *H0, const mt_calib_rows *x,
                          const mt_grid *g, const mt_gptq_params *gp, const struct mt_qmoe_dict *dict,
                          mt_qmoe_range_probe *pr) {
    const int64_t rows = src->rows, cols = src->cols;
    const size_t nw = (size_t)(rows * cols);
    float *W = malloc(nw * sizeof *W), *a = malloc((size_t)rows * sizeof *a), *b = malloc((size_t)rows * sizeof *b);
    int8_t *codes = malloc(nw);
    double *H = H0 ? malloc((size_t)(cols * cols) * sizeof *H) : NULL;
    int rc = MT_OK;
    if (!W || !a || !b || !codes || (H0 && !H)) {
        rc = mt_seterr(MT_ERR_NOMEM, "quantize: out of memory (ternary range probe)");
        goto done;
    }
    if (g->kind != MT_GRID_TERNARY_ROW || g->group != cols) {
        rc = mt_seterr(MT_ERR_ARG, "quantize: a ternary range per matrix needs --bits ternary --group row");
        goto done;
    }
    for (int c = 0; c < MT_QMOE_RANGE_NCAND; c++) {
        mt_gptq_params p = *gp;
        p.ternary_range = mt_qmoe_range_cands[c];
        memcpy(W, W0, nw * sizeof *W);
        if (H0) memcpy(H, H0, (size_t)(cols * cols) * sizeof *H);
        if ((rc = mt_gptq_quantize(W, rows, cols, H, g, &p, codes, a, b))) goto done;
        double e = 0, ref = 0;
        if (x && (rc = mt_calib_output_err(src, W, x, &e, &ref))) goto done;
        pr->err[c] = ref > 0 ? e / ref : 0;
        pr->ref = ref;
        memset(pr->counts[c], 0, sizeof pr->counts[c]);
        if ((rc = mt_qmoe_count(pr->counts[c], codes, (int64_t)nw))) goto done;
        mt_qmoe_mat cm;
        memset(&cm, 0, sizeof cm);
        if ((rc = mt_qmoe_encode(&cm, dict, codes, a, b, rows, cols))) goto done;
        if (gp->ternary_scales == MT_QMOE_SCALES_U8LOG && (rc = mt_qmoe_mat_set_scale8(&cm))) {
            mt_qmoe_mat_free(&cm);
            goto done;
        }
        mt_qmoe_size sz;
        mt_qmoe_mat_size(&cm, &sz);
        pr->bits[c] = (double)sz.total_bits;
        mt_qmoe_mat_free(&cm);
        if (!H0) { /* RTN ignores the range: every candidate is this one */
            for (int d = 1; d < MT_QMOE_RANGE_NCAND; d++) {
                pr->err[d] = pr->err[0];
                pr->bits[d] = pr->bits[0];
                memcpy(pr->counts[d], pr->counts[0], sizeof pr->counts[0]);
            }
            break;
        }
    }
done:
    free(W);
    free(a);
    free(b);
    free(codes);
    free(H);
    return rc;
}

int mt_qmoe_range_choose_uniform(const mt_qmoe_range_probe *pr, int n, double budget_bits, int *choice,
                                 double *used_bits) {
    int pick = -1, fewest = 0;
    double sum[MT_QMOE_RANGE_NCAND];
    for (int c = 0; c < MT_QMOE_RANGE_NCAND; c++) {
        sum[c] = 0;
        for (int i = 0; i < n; i++) sum[c] += pr[i].bits[c];
        if (sum[c] < sum[fewest]) fewest = c;
        if (pick < 0 && sum[c] <= budget_bits) pick = c;
    }
    const int c = pick >= 0 ? pick : fewest;
    for (int i = 0; i < n; i++) choice[i] = c;
    *used_bits = sum[c];
    return pick >= 0 ? MT_OK : MT_ERR_ARG;
}

int mt_qmoe_range_choose(const mt_qmoe_range_probe *pr, const double *weight, int n, double budget_bits, int *choice,
                         double *used_bits) {
    double used = 0;
    /* every matrix at its smallest candidate (ties: the lower error) */
    for (int i = 0; i < n; i++) {
        int best = 0;
        for (int c = 1; c < MT_QMOE_RANGE_NCAND; c++)
            if (pr[i].bits[c] < pr[i].bits[best] ||
                (pr[i].bits[c] == pr[i].bits[best] && pr[i].err[c] < pr[i].err[best]))
                best = c;
        choice[i] = best;
        used += pr[i].bits[best];
    }
    /* then the move (any matrix, to any candidate) with the largest drop in
     * weighted error per added bit that still fits, until none does */
    for (;;) {
        int bi = -1, bc = -1;
        double br = 0;
        for (int i = 0; i < n; i++) {
            const int cur = choice[i];
            for (int c = 0; c < MT_QMOE_RANGE_NCAND; c++) {
                const double add = pr[i].bits[c] - pr[i].bits[cur];
                const double gain = weight[i] * (pr[i].err[cur] - pr[i].err[c]);
                if (!(gain > 0) || used + add > budget_bits) continue;
                /* a move that saves bits and error is always taken first */
                const double r = add <= 0 ? HUGE_VAL : gain / add;
                if (r > br) {
                    br = r;
                    bi = i;
                    bc = c;
                }
            }
        }
        if (bi < 0) break;
        used += pr[bi].bits[bc] - pr[bi].bits[choice[bi]];
        choice[bi] = bc;
    }
    *used_bits = used;
    return used <= budget_bits ? MT_OK : MT_ERR_ARG;
}
