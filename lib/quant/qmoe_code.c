/* qmoe_code.c — the encoder side of the sub-1-bit ternary code of
 * mt_qmoe.h: symbol statistics, QMoE's per-row ternary grid, coding a
 * matrix with a Tunstall dictionary (built by the runtime, which decodes),
 * and size accounting.
 *
 * The serialised form (reader and writer) is in lib/runtime/qmoe_blob.c. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qmoe_impl.h"

void mt_qmoe_ternary_rtn(const float *w, int64_t n, int8_t *syms, float *lo, float *hi) {
    float mn = 0.0f, mx = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        mn = fminf(mn, w[i]);
        mx = fmaxf(mx, w[i]);
    }
    mn = mt_f16_to_f32(mt_f32_to_f16(mn));
    mx = mt_f16_to_f32(mt_f32_to_f16(mx));
    for (int64_t i = 0; i < n; i++) syms[i] = w[i] > 0.5f * mx ? 1 : w[i] < 0.5f * mn ? -1 : 0;
    *lo = mn;
    *hi = mx;
}

int mt_qmoe_count(uint64_t counts[3], const int8_t *syms, int64_t n) {
    uint64_t c[3] = {0, 0, 0};
    for (int64_t i = 0; i < n; i++) {
        const int s = syms[i];
        if (s < -1 || s > 1) return mt_seterr(MT_ERR_ARG, "qmoe: symbol %d at %lld is not ternary", s, (long long)i);
        c[s == 0 ? 0 : s > 0 ? 1 : 2]++;
    }
    for (int k = 0; k < 3; k++) counts[k] += c[k];
    return MT_OK;
}

/* Appends codeword c, growing the buffer geometrically. */
static int emit(mt_qmoe_mat *q, uint64_t *cap, int32_t c) {
    if (q->n_codes == *cap) {
        const uint64_t nc = *cap ? 2 * *cap : 1024;
        uint16_t *nb = realloc(q->codes, (size_t)nc * sizeof *nb);
        if (!nb) return mt_seterr(MT_ERR_NOMEM, "qmoe encode: out of memory");
        q->codes = nb;
        *cap = nc;
    }
    q->codes[q->n_codes++] = (uint16_t)c;
    return MT_OK;
}

int mt_qmoe_encode(mt_qmoe_mat *out, const mt_qmoe_dict *dict, const int8_t *syms, const float *lo,
                   const float *hi, int64_t rows, int64_t cols) {
    memset(out, 0, sizeof *out);
    if (!dict || !dict->child || !dict->len || !dict->mask || dict->n_nodes < 1)
        return mt_seterr(MT_ERR_ARG, "qmoe encode: no dictionary");
    if (rows < 0 || cols < 1) return mt_seterr(MT_ERR_ARG, "qmoe encode: shape (%lld, %lld)", (long long)rows, (long long)cols);
    const int G = MT_QMOE_GROUP_ROWS;
    const int64_t ng = mt_qmoe_n_groups(rows, G);
    int st = MT_OK;
    out->rows = rows;
    out->cols = cols;
    out->group_rows = G;
    out->dict = dict;
    out->offsets = malloc((size_t)(ng + 1) * sizeof *out->offsets);
    out->scales = malloc((size_t)(rows > 0 ? rows : 1) * 2 * sizeof *out->scales);
    if (!out->offsets || !out->scales) {
        st = mt_seterr(MT_ERR_NOMEM, "qmoe encode: out of memory");
        goto done;
    }
    for (int64_t r = 0; r < rows; r++) {
        if (!isfinite(lo[r]) || !isfinite(hi[r])) {
            st = mt_seterr(MT_ERR_ARG, "qmoe encode: row %lld has a non-finite scale", (long long)r);
            goto done;
        }
        out->scales[2 * r] = mt_f32_to_f16(lo[r]);
        out->scales[2 * r + 1] = mt_f32_to_f16(hi[r]);
    }
    /* first guess: expected codewords, grown on demand */
    uint64_t cap = (uint64_t)((double)rows * (double)cols / (dict->mean_len > 1.0 ? dict->mean_len : 1.0)) + (uint64_t)ng + 16;
    out->codes = malloc((size_t)cap * sizeof *out->codes);
    if (!out->codes) {
        st = mt_seterr(MT_ERR_NOMEM, "qmoe encode: out of memory");
        goto done;
    }
    const int32_t *child = dict->child;
    out->offsets[0] = 0;
    for (int64_t g = 0; g < ng; g++) {
        const int64_t r1 = (g + 1) * G < rows ? (g + 1) * G : rows;
        const int8_t *s = syms + g * G * cols, *e = syms + r1 * cols;
        int32_t node = 0;
        for (; s < e; s++) {
            const int v = *s;
            if (v < -1 || v > 1) {
                st = mt_seterr(MT_ERR_ARG, "qmoe encode: symbol %d at %lld is not ternary", v, (long long)(s - syms));
                goto done;
            }
            const int32_t nx = child[3 * node + (v == 0 ? 0 : v > 0 ? 1 : 2)];
            if (nx < 0) {
                if ((st = emit(out, &cap, -nx - 1)) != MT_OK) goto done;
                node = 0;
            } else {
                node = nx;
            }
        }
        while (node != 0) { /* pad the group's last codeword with zeros */
            const int32_t nx = child[3 * node];
            if (nx < 0) {
                if ((st = emit(out, &cap, -nx - 1)) != MT_OK) goto done;
                node = 0;
            } else {
                node = nx;
            }
        }
        if (out->n_codes > UINT32_MAX) {
            st = mt_seterr(MT_ERR_UNSUPPORTED, "qmoe encode: more than 2^32 codewords in one matrix");
            goto done;
        }
        out->offsets[g + 1] = (uint32_t)out->n_codes;
    }
done:
    if (st != MT_OK) mt_qmoe_mat_free(out);
    return st;
}

void mt_qmoe_mat_size(const mt_qmoe_mat *q, mt_qmoe_size *s) {
    const int64_t ng = mt_qmoe_n_groups(q->rows, q->group_rows);
    s->code_bits = 16 * q->n_codes;
    s->offset_bits = 32 * (uint64_t)(ng + 1);
    s->scale_bits = 32 * (uint64_t)q->rows;
    s->header_bits = 8 * MT_QMOE_HEADER_BYTES;
    s->total_bits = s->code_bits + s->offset_bits + s->scale_bits + s->header_bits;
}

