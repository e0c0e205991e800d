/* iq_enc.c — llama.cpp's lattice i-quants written from f32 with an
 * importance matrix (the layouts are at the top of iquant.c): the searches
 * of llama.cpp's quantize_iq2_xxs, _iq2_xs, _iq2_s, _iq3_xxs, _iq3_s,
 * _iq1_s and _iq1_m (ggml-quants.c), step for step, so the bytes equal
 * what llama-quantize writes given the same imatrix (tests/cli_iquant_lattice.sh
 * and cli_iquant_mixes*.sh compare every tensor with llama_model_quantize).
 * Without weights (qw NULL) each weighs by x² (iq2_s: σ²/4 + x²) as
 * llama.cpp does where it allows that; llama.cpp refuses iq2_xxs, iq2_xs
 * and iq1_s without, so callers must not rely on those bytes.
 *
 * Lattices. Every grid point of 8 (iq2, iq1) or 4 (iq3) weights has
 * coordinates l = 0..2 (iq2: grid bytes 8, 25, 43; iq1: −1, 0, +1) or
 * l = 0..7 (iq3), taken from the decoder's grids (iq_grids.h) by rank. The
 * encoder works on odd integers p = 2l + 1 and packs a candidate point as
 * u = Σ l_i << (2 or 3)·i; map[u] is its grid index, or for a point off the
 * grid −(offset + 1) of its neighbour list: the grid points at the nwant
 * smallest squared distances (iq2_xxs, iq2_xs 2; iq2_s 1; iq1 3; iq3_xxs
 * 2; iq3_s 3), nearest first, ties by grid index (llama.cpp's iq2xs_init_impl
 * / iq3xs_init_impl with their qsort on (d², index)). Built once per
 * lattice under a lock on first use, read only afterwards.
 *
 * Per sub-block (32 or 16 weights) the search takes w = qw·sqrt(σ² + x²)
 * (σ² = Σx²/256 for iq2_xxs/xs, 2Σx²/256 otherwise), folds the signs out
 * (iq1: three levels −1, 0, +1 shifted by ±1/8, the best split of the
 * sorted weights found exhaustively instead)
 * (iq2_xxs, iq2_xs, iq3_xxs keep an even number of negatives per 8 by
 * flipping the least important weight), tries a fan of scales, moving each
 * off-grid group to its best neighbour under √w, keeps the scale with the
 * largest (Σ w q x)² / Σ w q², re-snaps off-grid groups once on it, and
 * stores the sub-block scales on a 4-bit (iq1: 3-bit) grid under an f16 d
 * with llama.cpp's fudge factors. Operations in llama.cpp's order
 * (-ffp-contract=off). */
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "codec_impl.h"
#include "iq_grids.h"

#define EPS_IQ2 1e-15f
#define EPS_IQ3_XXS 1e-8f
#define EPS_IQ2_S 1e-8f
#define EPS_IQ1_M 1e-7f
#define EPS_IQ1_S 1e-12f
#define IQ1_DELTA 0.125f

static inline float fmaxf_(float a, float b) { return a > b ? a : b; }
static inline int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* ---- lattices ---------------------------------------------------------- */

typedef struct {
    int dim, bits, ngrid, nmap, nwant; /* 8 or 4 weights; bits per l      */
    int8_t *p;       /* ngrid × dim odd coordinates 2l + 1                 */
    int *map;        /* nmap                                                */
    uint16_t *nb;    /* neighbour lists: count, then grid indices          */
} lattice;

enum { LAT_IQ2XXS, LAT_IQ2XS, LAT_IQ2S, LAT_IQ1S, LAT_IQ3XXS, LAT_IQ3S, LAT_COUNT };

static lattice g_lat[LAT_COUNT] = {
    {8, 2, 256, 43692, 2, NULL, NULL, NULL},
    {8, 2, 512, 43692, 2, NULL, NULL, NULL},
    {8, 2, 1024, 43692, 1, NULL, NULL, NULL},
    {8, 2, 2048, 43692, 3, NULL, NULL, NULL},
    {4, 3, 256, 4096, 2, NULL, NULL, NULL},
    {4, 3, 512, 4096, 3, NULL, NULL, NULL},
};

/* Byte j of decoder grid row k as a signed or unsigned value. */
static int grid_byte(int which, int k, int j) {
    switch (which) {
    case LAT_IQ2XXS: return (uint8_t)(iq2xxs_grid[k] >> 8 * j);
    case LAT_IQ2XS: return (uint8_t)(iq2xs_grid[k] >> 8 * j);
    case LAT_IQ2S: return (uint8_t)(iq2s_grid[k] >> 8 * j);
    case LAT_IQ1S: return (int8_t)(uint8_t)(iq1s_grid[k] >> 8 * j);
    case LAT_IQ3XXS: return (uint8_t)(iq3xxs_grid[k] >> 8 * j);
    default: return (uint8_t)(iq3s_grid[k] >> 8 * j);
    }
}

static void lattice_build(lattice *L);

/* The lattice `which`, built on first use under a lock (NULL when out of
 * memory). */
static const lattice *lattice_get(int which) {
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    lattice *L = &g_lat[which];
    pthread_mutex_lock(&mu);
    if (!L->map) lattice_build(L);
    const lattice *r = L->map ? L : NULL;
    pthread_mutex_unlock(&mu);
    return r;
}

static void lattice_build(lattice *L) {
    const int which = (int)(L - g_lat), dim = L->dim, ng = L->ngrid, lmax = (1 << L->bits) - 1;
    /* coordinate values by rank */
    int vals[8], nv = 0;
    for (int k = 0; k < ng; k++)
        for (int j = 0; j < dim; j++) {
            int v = grid_byte(which, k, j), seen = 0;
            for (int t = 0; t < nv; t++) seen |= vals[t] == v;
            if (!seen && nv < 8) vals[nv++] = v;
        }
    for (int a = 1; a < nv; a++)
        for (int b = a; b > 0 && vals[b - 1] > vals[b]; b--) {
            int t = vals[b];
            vals[b] = vals[b - 1];
            vals[b - 1] = t;
        }
    int8_t *p = malloc((size_t)ng * dim);
    int *map = malloc((size_t)L->nmap * sizeof *map);
    int *d2 = malloc((size_t)ng * sizeof *d2);
    if (!p || !map || !d2) goto fail;
    for (int i = 0; i < L->nmap; i++) map[i] = -1;
    for (int k = 0; k < ng; k++) {
        int u = 0;
        for (int j = 0; j < dim; j++) {
            int v = grid_byte(which, k, j), l = 0;
            while (l < nv && vals[l] != v) l++;
            p[k * dim + j] = (int8_t)(2 * l + 1);
            u |= l << L->bits * j;
        }
        map[u] = k;
    }
    /* neighbour lists of the off-grid points whose coordinates the
     * searches can produce (l <= lmax for iq3, l <= 2 for iq2 / iq1) */
    const int lcap = dim == 8 ? 2 : lmax;
    size_t cap = 1u << 16, used = 0;
    uint16_t *nb = malloc(cap * sizeof *nb);
    if (!nb) goto fail;
    for (int i = 0; i < L->nmap; i++) {
        if (map[i] >= 0) continue;
        int pos[8], ok = 1;
        for (int j = 0; j < dim; j++) {
            int l = (i >> L->bits * j) & lmax;
            ok &= l <= lcap;
            pos[j] = 2 * l + 1;
        }
        if (!ok) continue;
        for (int k = 0; k < ng; k++) {
            int s = 0;
            for (int j = 0; j < dim; j++) {
                int df = p[k * dim + j] - pos[j];
                s += df * df;
            }
            d2[k] = s;
        }
        /* the nwant smallest distinct distances, ascending */
        int want[3], nw = 0;
        for (int t = 0; t < L->nwant; t++) {
            int best = INT32_MAX;
            for (int k = 0; k < ng; k++)
                if (d2[k] < best && (nw == 0 || d2[k] > want[nw - 1])) best = d2[k];
            if (best == INT32_MAX) break;
            want[nw++] = best;
        }
        size_t need = used + 1 + (size_t)ng;
        if (need > cap) {
            while (cap < need) cap *= 2;
            uint16_t *t = realloc(nb, cap * sizeof *nb);
            if (!t) {
                free(nb);
                goto fail;
            }
            nb = t;
        }
        size_t start = used++;
        for (int t = 0; t < nw; t++)
            for (int k = 0; k < ng; k++)
                if (d2[k] == want[t]) nb[used++] = (uint16_t)k;
        nb[start] = (uint16_t)(used - start - 1);
        map[i] = -(int)(start + 1);
    }
    free(d2);
    L->p = p;
    L->nb = nb;
    L->map = map;
    return;
fail:
    free(p);
    free(map);
    free(d2);
}

/* The neighbour of the off-grid point u nearest (w-weighted) to xval at
 * `scale`; its coordinates l into Lo. */
static int best_neighbour(const lattice *lt, int u, const float *xval, const float *w, float scale, int8_t *Lo) {
    const uint16_t *nb = lt->nb - lt->map[u] - 1;
    const int dim = lt->dim;
    float best = FLT_MAX;
    int gi = nb[1];
    for (int j = 1; j <= nb[0]; j++) {
        const int8_t *pg = lt->p + (size_t)nb[j] * dim;
        float d2 = 0;
        for (int i = 0; i < dim; i++) {
            float q = pg[i];
            float diff = scale * q - xval[i];
            d2 += w[i] * diff * diff;
        }
        if (d2 < best) {
            best = d2;
            gi = nb[j];
        }
    }
    const int8_t *pg = lt->p + (size_t)gi * dim;
    for (int i = 0; i < dim; i++) Lo[i] = (int8_t)((pg[i] - 1) / 2);
    return gi;
}

/* The packed index of the dim coordinates of the point nearest xval at 1/id
 * (l clamped to 0..kmax), written to Lo. */
static int snap(const lattice *lt, const float *xval, float id, int kmax, int8_t *Lo) {
    int u = 0;
    for (int i = 0; i < lt->dim; i++) {
        int l = clampi(mt_nearest_int(0.5f * (id * xval[i] - 1)), 0, kmax);
        Lo[i] = (int8_t)l;
        u |= l << lt->bits * i;
    }
    return u;
}

static int packed(const lattice *lt, const int8_t *Lo) {
    int u = 0;
    for (int i = 0; i < lt->dim; i++) u |= Lo[i] << lt->bits * i;
    return u;
}

/* |x| of 8 weights and their sign bits; with `even`, an odd count of
 * negatives flips the weight of least w·x² back (llama.cpp's iq2 parity). */
static uint8_t fold_signs(const float *xb, const float *w, float *xval, int even) {
    int nflip = 0;
    uint8_t s = 0;
    for (int i = 0; i < 8; i++) {
        if (xb[i] >= 0) {
            xval[i] = xb[i];
        } else {
            xval[i] = -xb[i];
            ++nflip;
            s |= (uint8_t)(1 << i);
        }
    }
    if (even && nflip % 2) {
        int imin = 0;
        float min = w[0] * xb[0] * xb[0];
        for (int i = 1; i < 8; i++) {
            float ax = w[i] * xb[i] * xb[i];
            if (ax < min) {
                min = ax;
                imin = i;
            }
        }
        xval[imin] = -xval[imin];
        s ^= (uint8_t)(1 << imin);
    }
    return even ? (uint8_t)(s & 127) : s;
}

static void sum_qx(int n, const float *w, const float *xval, const int8_t *Lq, float *sqx, float *sq2) {
    float sumqx = 0, sumq2 = 0;
    for (int i = 0; i < n; i++) {
        float q = 2 * Lq[i] + 1;
        sumqx += w[i] * xval[i] * q;
        sumq2 += w[i] * q * q;
    }
    *sqx = sumqx;
    *sq2 = sumq2;
}

static float sigma2_of(const float *x, float mul) {
    float sumx2 = 0;
    for (int i = 0; i < MT_QK_K; i++) sumx2 += x[i] * x[i];
    return mul * sumx2 / MT_QK_K;
}

static void weights_of(int n, const float *xb, const float *qw, float sigma2, float *w, float *waux, float plain_add) {
    if (qw)
        for (int i = 0; i < n; i++) w[i] = qw[i] * sqrtf(sigma2 + xb[i] * xb[i]);
    else
        for (int i = 0; i < n; i++) w[i] = plain_add * sigma2 + xb[i] * xb[i];
    if (waux)
        for (int i = 0; i < n; i++) waux[i] = sqrtf(w[i]);
}

/* The scale search of one sub-block of n weights (groups of lt->dim) shared
 * by iq2_xs, iq2_s, iq3_xxs, iq3_s: trial ids (2kmax−1 + is·step)/max for
 * is = −nis..nis, then a re-snap of the off-grid groups (all groups with
 * `resnap_all`). Returns the scale; L holds the coordinates. */
static float search_scale(const lattice *lt, int n, int kmax, int nis, float step, int init_on_grid, int resnap_all,
                          const float *xval, const float *w, const float *waux, float max, int8_t *L) {
    const int dim = lt->dim, ng = n / dim;
    int8_t Laux[32];
    int on[8], on_aux[8];
    float best = 0, scale = max / (2 * kmax - 1);
    for (int k = 0; k < ng; k++) on[k] = init_on_grid;
    for (int is = -nis; is <= nis; ++is) {
        float id = (2 * kmax - 1 + is * step) / max;
        float this_scale = 1 / id;
        for (int k = 0; k < ng; k++) {
            int u = snap(lt, xval + dim * k, id, kmax - 1, Laux + dim * k);
            on_aux[k] = lt->map[u] >= 0;
            if (!on_aux[k]) best_neighbour(lt, u, xval + dim * k, waux + dim * k, this_scale, Laux + dim * k);
        }
        float sumqx, sumq2;
        sum_qx(n, w, xval, Laux, &sumqx, &sumq2);
        if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
            scale = sumqx / sumq2;
            best = scale * sumqx;
            memcpy(L, Laux, (size_t)n);
            memcpy(on, on_aux, sizeof on);
        }
    }
    int n_off = 0;
    for (int k = 0; k < ng; k++) n_off += !on[k];
    if (n_off > 0 && scale > 0) {
        float id = 1 / scale;
        for (int k = 0; k < ng; k++) {
            if (on[k] && !resnap_all) continue;
            int u = snap(lt, xval + dim * k, id, kmax - 1, L + dim * k);
            if (lt->map[u] < 0) best_neighbour(lt, u, xval + dim * k, waux + dim * k, scale, L + dim * k);
        }
        float sumqx, sumq2;
        sum_qx(n, w, xval, L, &sumqx, &sumq2);
        if (sumq2 > 0) scale = sumqx / sumq2;
    }
    return scale;
}

static inline void st16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static inline void st32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }

/* ---- iq2_xxs ------------------------------------------------------------ */

static void iq2_xxs_block(const lattice *lt, const float *x, const float *qw, uint8_t *b) {
    const int kmax = 3;
    float scales[8], w[32], waux[32], xval[32], max_scale = 0;
    int8_t L[32], Laux[32];
    uint8_t signs[4];
    uint32_t q2[16] = {0};
    const float sigma2 = sigma2_of(x, 1.f);
    st16(b, mt_f32_to_f16(0.f));
    for (int ib = 0; ib < 8; ib++) {
        const float *xb = x + 32 * ib;
        weights_of(32, xb, qw ? qw + 32 * ib : NULL, sigma2, w, waux, 0);
        for (int k = 0; k < 4; k++) signs[k] = fold_signs(xb + 8 * k, w + 8 * k, xval + 8 * k, 1);
        float max = xval[0];
        for (int i = 1; i < 32; i++) max = fmaxf_(max, xval[i]);
        if (max < EPS_IQ2) {
            scales[ib] = 0;
            continue;
        }
        float scale = mt_make_qp_quants(32, kmax + 1, xval, (uint8_t *)L, w);
        float eff_max = scale * kmax;
        if (eff_max <= 0) {
            scales[ib] = 0;
            continue;
        }
        float best = 0;
        for (int is = -6; is <= 6; ++is) {
            float id = (2 * kmax - 1 + is * 0.1f) / eff_max;
            float this_scale = 1 / id;
            for (int k = 0; k < 4; k++) {
                int u = snap(lt, xval + 8 * k, id, kmax - 1, Laux + 8 * k);
                if (lt->map[u] < 0) best_neighbour(lt, u, xval + 8 * k, waux + 8 * k, this_scale, Laux + 8 * k);
            }
            float sumqx, sumq2;
            sum_qx(32, w, xval, Laux, &sumqx, &sumq2);
            if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
                scale = sumqx / sumq2;
                best = scale * sumqx;
                memcpy(L, Laux, 32);
            }
        }
        if (scale > 0) {
            float id = 1 / scale;
            for (int k = 0; k < 4; k++) {
                int u = snap(lt, xval + 8 * k, id, kmax - 1, L + 8 * k);
                int gi = lt->map[u];
                if (gi < 0) gi = best_neighbour(lt, u, xval + 8 * k, waux + 8 * k, scale, L + 8 * k);
                const int8_t *pg = lt->p + (size_t)gi * 8;
                for (int i = 0; i < 8; i++) L[8 * k + i] = (int8_t)((pg[i] - 1) / 2);
            }
            float sumqx, sumq2;
            sum_qx(32, w, xval, L, &sumqx, &sumq2);
            if (sumq2 > 0) scale = sumqx / sumq2;
        }
        if (scale < 0) {
            scale = -scale;
            for (int k = 0; k < 4; k++) signs[k] = (uint8_t)(~signs[k] & 127);
        }
        for (int k = 0; k < 4; k++) {
            int gi = lt->map[packed(lt, L + 8 * k)];
            q2[2 * ib] |= (uint32_t)(gi < 0 ? 0 : gi) << 8 * k;
            q2[2 * ib + 1] |= (uint32_t)signs[k] << 7 * k;
        }
        scales[ib] = scale;
        max_scale = fmaxf_(max_scale, scale);
    }
    if (!max_scale) {
        memset(b + 2, 0, 64);
        return;
    }
    float d = max_scale / 31;
    st16(b, mt_f32_to_f16(d));
    float id = 1 / d;
    for (int ib = 0; ib < 8; ib++) {
        int l = clampi(mt_nearest_int(0.5f * (id * scales[ib] - 1)), 0, 15);
        q2[2 * ib + 1] |= (uint32_t)l << 28;
    }
    for (int i = 0; i < 16; i++) st32(b + 2 + 4 * i, q2[i]);
}

/* ---- iq2_xs, iq2_s (sub-blocks of 16, nibble scales) -------------------- */

static void iq2_16_block(const lattice *lt, int is_s, const float *x, const float *qw, uint8_t *b) {
    const int kmax = 3;
    float scales[16], w[16], waux[16], xval[16], max_scale = 0;
    int8_t L[16];
    uint8_t signs[2];
    const float sigma2 = sigma2_of(x, is_s ? 2.f : 1.f);
    const size_t bytes = is_s ? MT_IQ2_S_BYTES : MT_IQ2_XS_BYTES;
    memset(b, 0, bytes);
    uint8_t *sc = b + (is_s ? 74 : 66);
    for (int ib = 0; ib < 16; ib++) {
        const float *xb = x + 16 * ib;
        weights_of(16, xb, qw ? qw + 16 * ib : NULL, sigma2, w, waux, 0.25f);
        for (int k = 0; k < 2; k++) signs[k] = fold_signs(xb + 8 * k, w + 8 * k, xval + 8 * k, !is_s);
        float max = xval[0];
        for (int i = 1; i < 16; i++) max = fmaxf_(max, xval[i]);
        memset(L, 0, 16);
        if (max < (is_s ? EPS_IQ2_S : EPS_IQ2)) {
            scales[ib] = 0;
            continue;
        }
        float scale = search_scale(lt, 16, kmax, 9, 0.1f, 1, 0, xval, w, waux, max, L);
        if (scale < 0) {
            scale = -scale;
            for (int k = 0; k < 2; k++) signs[k] = (uint8_t)(is_s ? ~signs[k] : ~signs[k] & 127);
        }
        for (int k = 0; k < 2; k++) {
            int gi = lt->map[packed(lt, L + 8 * k)];
            gi = gi < 0 ? 0 : gi;
            const int i8 = 2 * ib + k;
            if (is_s) {
                b[2 + i8] = (uint8_t)(gi & 255);
                b[66 + i8 / 4] |= (uint8_t)((gi >> 8) << 2 * (i8 % 4));
                b[34 + i8] = signs[k];
            } else {
                st16(b + 2 + 2 * i8, (uint16_t)(gi | signs[k] << 9));
            }
        }
        scales[ib] = scale;
        max_scale = fmaxf_(max_scale, scale);
    }
    if (!max_scale) {
        if (!is_s) memset(b + 2, 0, 64);
        return;
    }
    float d = max_scale / 31;
    st16(b, mt_f32_to_f16(is_s ? d * 0.9875f : d));
    float id = 1 / d;
    for (int ib = 0; ib < 16; ib++) {
        int l = clampi(mt_nearest_int(0.5f * (id * scales[ib] - 1)), 0, 15);
        if (ib % 2 == 0) sc[ib / 2] = (uint8_t)l;
        else sc[ib / 2] |= (uint8_t)(l << 4);
    }
}

/* ---- iq3_xxs, iq3_s ----------------------------------------------------- */

static void iq3_xxs_block(const lattice *lt, const float *x, const float *qw, uint8_t *b) {
    const int kmax = 8;
    float scales[8], w[32], waux[32], xval[32], max_scale = 0;
    int8_t L[32];
    uint8_t signs[4], q3[96] = {0};
    uint32_t ss[8] = {0};
    const float sigma2 = sigma2_of(x, 2.f);
    st16(b, mt_f32_to_f16(0.f));
    for (int ib = 0; ib < 8; ib++) {
        const float *xb = x + 32 * ib;
        weights_of(32, xb, qw ? qw + 32 * ib : NULL, sigma2, w, waux, 0);
        for (int k = 0; k < 4; k++) signs[k] = fold_signs(xb + 8 * k, w + 8 * k, xval + 8 * k, 1);
        float max = xval[0];
        for (int i = 1; i < 32; i++) max = fmaxf_(max, xval[i]);
        memset(L, 0, 32);
        if (max < EPS_IQ3_XXS) {
            scales[ib] = 0;
            continue;
        }
        float scale = search_scale(lt, 32, kmax, 15, 0.2f, 1, 0, xval, w, waux, max, L);
        if (scale < 0) {
            scale = -scale;
            for (int k = 0; k < 4; k++) signs[k] = (uint8_t)(~signs[k] & 127);
        }
        for (int k = 0; k < 8; k++) {
            int gi = lt->map[packed(lt, L + 4 * k)];
            q3[8 * ib + k] = (uint8_t)(gi < 0 ? 0 : gi);
        }
        ss[ib] = (uint32_t)signs[0] | (uint32_t)signs[1] << 7 | (uint32_t)signs[2] << 14 | (uint32_t)signs[3] << 21;
        scales[ib] = scale;
        max_scale = fmaxf_(max_scale, scale);
    }
    if (!max_scale) {
        memset(b + 2, 0, 96);
        return;
    }
    float d = max_scale / 31;
    st16(b, mt_f32_to_f16(d * 1.0125f));
    float id = 1 / d;
    for (int ib = 0; ib < 8; ib++) {
        int l = clampi(mt_nearest_int(0.5f * (id * scales[ib] - 1)), 0, 15);
        ss[ib] |= (uint32_t)l << 28;
    }
    memcpy(b + 2, q3, 64);
    for (int ib = 0; ib < 8; ib++) st32(b + 66 + 4 * ib, ss[ib]);
}

static void iq3_s_block(const lattice *lt, const float *x, const float *qw, uint8_t *b) {
    const int kmax = 8;
    float scales[8], w[32], waux[32], xval[32], max_scale = 0;
    int8_t L[32];
    uint8_t signs[4];
    memset(b, 0, MT_IQ3_S_BYTES);
    /* llama.cpp advances its qs / signs cursors only past sub-blocks it
     * quantizes (an all-zero sub-block shifts the rest): kept as it is */
    uint8_t *qs = b + 2, *qh = b + 66, *sg = b + 74, *sc = b + 106;
    const float sigma2 = sigma2_of(x, 2.f);
    for (int ib = 0; ib < 8; ib++) {
        const float *xb = x + 32 * ib;
        weights_of(32, xb, qw ? qw + 32 * ib : NULL, sigma2, w, waux, 0);
        for (int k = 0; k < 4; k++) signs[k] = fold_signs(xb + 8 * k, w + 8 * k, xval + 8 * k, 0);
        float max = xval[0];
        for (int i = 1; i < 32; i++) max = fmaxf_(max, xval[i]);
        memset(L, 0, 32);
        if (!max) {
            scales[ib] = 0;
            continue;
        }
        float scale = search_scale(lt, 32, kmax, 9, 0.2f, 0, 1, xval, w, waux, max, L);
        if (scale < 0) {
            scale = -scale;
            for (int k = 0; k < 4; k++) signs[k] = (uint8_t)~signs[k];
        }
        for (int k = 0; k < 8; k++) {
            int gi = lt->map[packed(lt, L + 4 * k)];
            gi = gi < 0 ? 0 : gi;
            qs[k] = (uint8_t)(gi & 255);
            qh[(ib * 8 + k) / 8] |= (uint8_t)((gi >> 8) << ((ib * 8 + k) % 8));
        }
        qs += 8;
        memcpy(sg, signs, 4);
        sg += 4;
        scales[ib] = scale;
        max_scale = fmaxf_(max_scale, scale);
    }
    if (!max_scale) return;
    float d = max_scale / 31;
    st16(b, mt_f32_to_f16(d * 1.033f));
    float id = 1 / d;
    for (int ib = 0; ib < 8; ib += 2) {
        int l1 = clampi(mt_nearest_int(0.5f * (id * scales[ib] - 1)), 0, 15);
        int l2 = clampi(mt_nearest_int(0.5f * (id * scales[ib + 1] - 1)), 0, 15);
        sc[ib / 2] = (uint8_t)(l1 | l2 << 4);
    }
}

/* ---- iq1_s, iq1_m: three levels −1, 0, +1 shifted by ±δ ---------------- */

typedef struct {
    float x;
    int i;
} xpair;

static int xpair_cmp(const void *a, const void *b) {
    const float l = ((const xpair *)a)->x, r = ((const xpair *)b)->x;
    return l < r ? -1 : l > r ? 1 : 0;
}

/* The neighbour of off-grid u nearest xb at `scale` with levels xx. */
static int iq1_neighbour(const lattice *lt, int u, const float *xb, const float *w, float scale, const float *xx,
                         int8_t *Lo) {
    const uint16_t *nb = lt->nb - lt->map[u] - 1;
    float best = FLT_MAX;
    int gi = nb[1];
    for (int j = 1; j <= nb[0]; j++) {
        const int8_t *pg = lt->p + (size_t)nb[j] * 8;
        float d2 = 0;
        for (int i = 0; i < 8; i++) {
            float q = xx[(pg[i] - 1) / 2];
            float diff = scale * q - xb[i];
            d2 += w[i] * diff * diff;
        }
        if (d2 < best) {
            best = d2;
            gi = nb[j];
        }
    }
    const int8_t *pg = lt->p + (size_t)gi * 8;
    for (int i = 0; i < 8; i++) Lo[i] = (int8_t)((pg[i] - 1) / 2);
    return gi;
}

/* The three levels shifted up (x_p) or down (x_m) by δ. */
static const float x_p[3] = {-1 + IQ1_DELTA, IQ1_DELTA, 1 + IQ1_DELTA};
static const float x_m[3] = {-1 - IQ1_DELTA, -IQ1_DELTA, 1 - IQ1_DELTA};

static float absmax(int n, const float *xb) {
    float max = fabsf(xb[0]);
    for (int i = 1; i < n; i++) max = fmaxf_(max, fabsf(xb[i]));
    return max;
}

/* Sorts xb (n) ascending into pr (llama.cpp's qsort of (x, index) pairs). */
static void sort_pairs(int n, const float *xb, xpair *pr) {
    for (int j = 0; j < n; j++) {
        pr[j].x = xb[j];
        pr[j].i = j;
    }
    qsort(pr, (size_t)n, sizeof *pr, xpair_cmp);
}

/* Grid indices of the groups of 8 of L (n), each off-grid group moved to
 * its best neighbour (levels xx_of(k)); the scale refitted when one moved. */
static float iq1_snap(const lattice *lt, int n, const float *xb, const float *w, float scale, const float *const *xxk,
                      int8_t *L, uint16_t *index) {
    int all_on = 1;
    for (int k = 0; k < n / 8; k++) {
        int u = packed(lt, L + 8 * k), gi = lt->map[u];
        if (gi < 0) {
            all_on = 0;
            gi = iq1_neighbour(lt, u, xb + 8 * k, w + 8 * k, scale, xxk[k], L + 8 * k);
        }
        index[k] = (uint16_t)gi;
    }
    if (!all_on) {
        float sumqx = 0, sumq2 = 0;
        for (int k = 0; k < n / 8; k++) {
            const int8_t *pg = lt->p + (size_t)index[k] * 8;
            for (int j = 0; j < 8; j++) {
                float wj = w[8 * k + j];
                float q = xxk[k][(pg[j] - 1) / 2];
                sumqx += wj * q * xb[8 * k + j];
                sumq2 += wj * q * q;
            }
        }
        if (sumqx > 0 && sumq2 > 0) scale = sumqx / sumq2;
    }
    return scale;
}

static void iq1_s_block(const lattice *lt, const float *x, const float *qw, uint8_t *b) {
    float scales[8], w[32], sumx[33], sumw[33], max_scale = 0;
    int8_t L[32], shifts[8];
    uint16_t index[4], qh[8] = {0};
    xpair pr[32];
    memset(b, 0, MT_IQ1_S_BYTES);
    const float sigma2 = sigma2_of(x, 2.f);
    for (int ib = 0; ib < 8; ib++) {
        const float *xb = x + 32 * ib;
        weights_of(32, xb, qw ? qw + 32 * ib : NULL, sigma2, w, NULL, 0);
        const float max = absmax(32, xb);
        scales[ib] = 0;
        shifts[ib] = 1;
        if (max < EPS_IQ1_S) continue;
        sort_pairs(32, xb, pr);
        sumx[0] = sumw[0] = 0;
        for (int j = 0; j < 32; j++) {
            int i = pr[j].i;
            sumx[j + 1] = sumx[j] + w[i] * xb[i];
            sumw[j + 1] = sumw[j] + w[i];
        }
        float best = -FLT_MAX, scale = max;
        int b1 = -1, b2 = -1, shift = 0;
        for (int i1 = 0; i1 <= 32; ++i1) {
            for (int i2 = i1; i2 <= 32; ++i2) {
                float sumqx = (sumx[i1] - sumx[0]) * x_p[0] + (sumx[i2] - sumx[i1]) * x_p[1] + (sumx[32] - sumx[i2]) * x_p[2];
                float sumq2 = (sumw[i1] - sumw[0]) * x_p[0] * x_p[0] + (sumw[i2] - sumw[i1]) * x_p[1] * x_p[1] +
                              (sumw[32] - sumw[i2]) * x_p[2] * x_p[2];
                if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
                    scale = sumqx / sumq2;
                    best = scale * sumqx;
                    b1 = i1, b2 = i2, shift = 1;
                }
                sumqx = (sumx[i1] - sumx[0]) * x_m[0] + (sumx[i2] - sumx[i1]) * x_m[1] + (sumx[32] - sumx[i2]) * x_m[2];
                sumq2 = (sumw[i1] - sumw[0]) * x_m[0] * x_m[0] + (sumw[i2] - sumw[i1]) * x_m[1] * x_m[1] +
                        (sumw[32] - sumw[i2]) * x_m[2] * x_m[2];
                if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
                    scale = sumqx / sumq2;
                    best = scale * sumqx;
                    b1 = i1, b2 = i2, shift = -1;
                }
            }
        }
        if (b1 < 0 || b2 < 0 || shift == 0) continue;
        for (int j = 0; j < 32; j++) L[pr[j].i] = (int8_t)(j < b1 ? 0 : j < b2 ? 1 : 2);
        if (scale < 0) {
            for (int j = 0; j < 32; j++) L[j] = (int8_t)(2 - L[j]);
            scale = -scale;
            shift = -shift;
        }
        const float *xx = shift == 1 ? x_p : x_m;
        const float *xxk[4] = {xx, xx, xx, xx};
        scale = iq1_snap(lt, 32, xb, w, scale, xxk, L, index);
        uint16_t h = 0;
        for (int k = 0; k < 4; k++) {
            b[2 + 4 * ib + k] = (uint8_t)(index[k] & 255);
            h |= (uint16_t)((index[k] >> 8) << 3 * k);
        }
        qh[ib] = h;
        scales[ib] = scale;
        shifts[ib] = (int8_t)shift;
        max_scale = fmaxf_(max_scale, scale);
    }
    if (max_scale) {
        float d = max_scale / 15;
        st16(b, mt_f32_to_f16(d * 1.125f));
        float id = 1 / d;
        for (int ib = 0; ib < 8; ib++) {
            int l = clampi(mt_nearest_int(0.5f * (id * scales[ib] - 1)), 0, 7);
            if (shifts[ib] == -1) l |= 8;
            qh[ib] |= (uint16_t)(l << 12);
        }
    }
    for (int ib = 0; ib < 8; ib++) st16(b + 34 + 2 * ib, qh[ib]);
}

static void iq1_m_block(const lattice *lt, const float *x, const float *qw, uint8_t *b) {
    const uint8_t masks[4] = {0x00, 0x80, 0x08, 0x88};
    float scales[16], w[16], max_scale = 0;
    int8_t L[16], shifts[16];
    uint16_t index[2], sc[4] = {0};
    xpair pr[16];
    uint8_t *qs = b, *qh = b + 32;
    memset(b, 0, MT_IQ1_M_BYTES);
    const float sigma2 = sigma2_of(x, 2.f);
    for (int ib = 0; ib < 16; ib++) {
        const float *xb = x + 16 * ib;
        weights_of(16, xb, qw ? qw + 16 * ib : NULL, sigma2, w, NULL, 0);
        const float max = absmax(16, xb);
        scales[ib] = 0;
        shifts[ib] = 0;
        if (max < EPS_IQ1_M) continue;
        sort_pairs(16, xb, pr);
        /* prefix sums per half (each half has its own shift); with
         * v0 − v1 = v1 − v2 = −1 a split's Σ q x is T·v2 − px[i1] − px[i2] */
        float px[2][17], pw[2][17];
        px[0][0] = px[1][0] = pw[0][0] = pw[1][0] = 0;
        for (int j = 0; j < 16; j++) {
            const int i = pr[j].i, h = i < 8 ? 0 : 1;
            px[h][j + 1] = px[h][j] + w[i] * xb[i];
            px[1 - h][j + 1] = px[1 - h][j];
            pw[h][j + 1] = pw[h][j] + w[i];
            pw[1 - h][j + 1] = pw[1 - h][j];
        }
        const float txs[2] = {px[0][16], px[1][16]}, tws[2] = {pw[0][16], pw[1][16]};
        const float p2 = x_p[2], m2 = x_m[2];
        const float cp1 = x_p[0] * x_p[0] - x_p[1] * x_p[1], cp2 = x_p[1] * x_p[1] - x_p[2] * x_p[2];
        const float cm1 = x_m[0] * x_m[0] - x_m[1] * x_m[1], cm2 = x_m[1] * x_m[1] - x_m[2] * x_m[2];
        float best = -FLT_MAX, scale = max;
        int b1 = -1, b2 = -1, bk = -1;
        for (int i1 = 0; i1 <= 16; ++i1) {
            for (int i2 = i1; i2 <= 16; ++i2) {
                float qxp[2], qxm[2], q2p[2], q2m[2], sqx[4], sq2[4];
                for (int h = 0; h < 2; h++) {
                    const float sx = px[h][i1] + px[h][i2];
                    qxp[h] = txs[h] * p2 - sx;
                    qxm[h] = txs[h] * m2 - sx;
                    q2p[h] = tws[h] * p2 * p2 + pw[h][i1] * cp1 + pw[h][i2] * cp2;
                    q2m[h] = tws[h] * m2 * m2 + pw[h][i1] * cm1 + pw[h][i2] * cm2;
                }
                sqx[0] = qxp[0] + qxp[1];
                sqx[1] = qxp[0] + qxm[1];
                sqx[2] = qxm[0] + qxp[1];
                sqx[3] = qxm[0] + qxm[1];
                sq2[0] = q2p[0] + q2p[1];
                sq2[1] = q2p[0] + q2m[1];
                sq2[2] = q2m[0] + q2p[1];
                sq2[3] = q2m[0] + q2m[1];
                for (int k = 0; k < 4; k++) {
                    if (sq2[k] > 0 && sqx[k] * sqx[k] > best * sq2[k]) {
                        scale = sqx[k] / sq2[k];
                        best = scale * sqx[k];
                        b1 = i1, b2 = i2, bk = k;
                    }
                }
            }
        }
        if (b1 < 0 || b2 < 0 || bk < 0) continue;
        for (int j = 0; j < 16; j++) L[pr[j].i] = (int8_t)(j < b1 ? 0 : j < b2 ? 1 : 2);
        if (scale < 0) {
            for (int j = 0; j < 16; j++) L[j] = (int8_t)(2 - L[j]);
            scale = -scale;
            bk = 3 - bk;
        }
        const float *xxk[2] = {bk < 2 ? x_p : x_m, bk % 2 == 0 ? x_p : x_m};
        scale = iq1_snap(lt, 16, xb, w, scale, xxk, L, index);
        qs[2 * ib] = (uint8_t)(index[0] & 255);
        qs[2 * ib + 1] = (uint8_t)(index[1] & 255);
        qh[ib] = (uint8_t)((index[0] >> 8) | ((index[1] >> 8) << 4));
        scales[ib] = scale;
        shifts[ib] = (int8_t)bk;
        max_scale = fmaxf_(max_scale, scale);
    }
    if (!max_scale) return;
    float d = max_scale / 15;
    float id = 1 / d;
    float sumqx = 0, sumq2 = 0;
    for (int ib = 0; ib < 16; ib++) {
        int l = clampi(mt_nearest_int(0.5f * (id * scales[ib] - 1)), 0, 7);
        sc[ib / 4] |= (uint16_t)(l << 3 * (ib % 4));
        qh[ib] |= masks[shifts[ib]];
        const float *xb = x + 16 * ib;
        weights_of(16, xb, qw ? qw + 16 * ib : NULL, sigma2, w, NULL, 0);
        for (int k = 0; k < 2; k++) {
            const float *xx = (k == 0 ? shifts[ib] < 2 : shifts[ib] % 2 == 0) ? x_p : x_m;
            const int8_t *pg = lt->p + (size_t)(qs[2 * ib + k] + ((qh[ib] << (8 - 4 * k)) & 0x700)) * 8;
            for (int j = 0; j < 8; j++) {
                float wj = w[8 * k + j];
                float q = xx[(pg[j] - 1) / 2] * (2 * l + 1);
                sumqx += wj * q * xb[8 * k + j];
                sumq2 += wj * q * q;
            }
        }
    }
    if (sumq2 > 0) d = sumqx / sumq2;
    const uint16_t h = mt_f32_to_f16(d * 1.1125f);
    sc[0] |= (uint16_t)((h & 0x000f) << 12);
    sc[1] |= (uint16_t)((h & 0x00f0) << 8);
    sc[2] |= (uint16_t)((h & 0x0f00) << 4);
    sc[3] |= (uint16_t)(h & 0xf000);
    for (int i = 0; i < 4; i++) st16(b + 48 + 2 * i, sc[i]);
}

/* ---- rows ---------------------------------------------------------------- */

typedef void (*iq_block_fn)(const lattice *, const float *, const float *, uint8_t *);

static void iq2_xs_blk(const lattice *lt, const float *x, const float *qw, uint8_t *b) { iq2_16_block(lt, 0, x, qw, b); }
static void iq2_s_blk(const lattice *lt, const float *x, const float *qw, uint8_t *b) { iq2_16_block(lt, 1, x, qw, b); }

int mt_iq_lattice_ready(mt_dtype t) {
    int which;
    switch (t) {
    case MT_DT_IQ2_XXS: which = LAT_IQ2XXS; break;
    case MT_DT_IQ2_XS: which = LAT_IQ2XS; break;
    case MT_DT_IQ2_S: which = LAT_IQ2S; break;
    case MT_DT_IQ3_XXS: which = LAT_IQ3XXS; break;
    case MT_DT_IQ3_S: which = LAT_IQ3S; break;
    case MT_DT_IQ1_S:
    case MT_DT_IQ1_M: which = LAT_IQ1S; break;
    default: return MT_OK;
    }
    return lattice_get(which) ? MT_OK
                              : mt_seterr(MT_ERR_NOMEM, "%s: out of memory building the quantizer's lattice tables",
                                          mt_dtype_name(t));
}

static void iq_row(int which, iq_block_fn fn, int bytes, const float *src, void *dst, int64_t n, const float *qw) {
    const lattice *lt = lattice_get(which);
    uint8_t *b = dst;
    if (!lt) { /* unreachable through mt_row_from_f32_w, which checks mt_iq_lattice_ready first */
        memset(dst, 0, (size_t)(n / MT_QK_K) * (size_t)bytes);
        return;
    }
    for (int64_t i = 0; i < n / MT_QK_K; i++, b += bytes)
        fn(lt, src + MT_QK_K * i, qw ? qw + MT_QK_K * i : NULL, b);
}

void mt_iq2_xxs_row_from_f32_w(const float *src, void *dst, int64_t n, const float *qw) {
    iq_row(LAT_IQ2XXS, iq2_xxs_block, MT_IQ2_XXS_BYTES, src, dst, n, qw);
}
void mt_iq2_xs_row_from_f32_w(const float *src, void *dst, int64_t n, const float *qw) {
    iq_row(LAT_IQ2XS, iq2_xs_blk, MT_IQ2_XS_BYTES, src, dst, n, qw);
}
void mt_iq2_s_row_from_f32_w(const float *src, void *dst, int64_t n, const float *qw) {
    iq_row(LAT_IQ2S, iq2_s_blk, MT_IQ2_S_BYTES, src, dst, n, qw);
}
void mt_iq3_xxs_row_from_f32_w(const float *src, void *dst, int64_t n, const float *qw) {
    iq_row(LAT_IQ3XXS, iq3_xxs_block, MT_IQ3_XXS_BYTES, src, dst, n, qw);
}
void mt_iq3_s_row_from_f32_w(const float *src, void *dst, int64_t n, const float *qw) {
    iq_row(LAT_IQ3S, iq3_s_block, MT_IQ3_S_BYTES, src, dst, n, qw);
}
void mt_iq1_s_row_from_f32_w(const float *src, void *dst, int64_t n, const float *qw) {
    iq_row(LAT_IQ1S, iq1_s_block, MT_IQ1_S_BYTES, src, dst, n, qw);
}
void mt_iq1_m_row_from_f32_w(const float *src, void *dst, int64_t n, const float *qw) {
    iq_row(LAT_IQ1S, iq1_m_block, MT_IQ1_M_BYTES, src, dst, n, qw);
}
