/* qmoe.c — the sub-1-bit code for ternary experts (include/moetool/mt_qmoe.h,
 * docs/qmoe.md), whole: the Tunstall dictionary, the encoder and its
 * statistics, the layout of a coded matrix in memory (an mt_mat of type
 * MT_DT_QMOE: codewords in `data`, the typed side data mt_mat.side.qmoe) and
 * its checks, the reference decoder, and the serialised form. The backends
 * keep only their kernels over this layout (the CPU's in
 * lib/runtime/backend/cpu/kernels_qmoe.c).
 *
 * Serialised form: read when the runtime loads a `quant_method: "qmoe"`
 * checkpoint, written by `moetool quantize`. Every count, size and offset of
 * a blob is checked before anything is allocated; every codeword is checked
 * against the dictionary (mt_qmoe_mat_check) before a kernel may see the
 * matrix.
 *
 * Matrix blob (all little-endian; docs/qmoe.md has the same table):
 *   0   4  magic "QMOE"
 *   4   2  version (1)
 *   6   2  group_rows G (1..4096)
 *   8   8  rows R
 *   16  8  cols C (>= 1)
 *   24  8  n_codes N (< 2^32)
 *   32  4  scale type (1: f16 lo, hi per row; 2: u8 log code per row)
 *   36  4  type 1: reserved, 0; type 2: f32 base (finite, > 0)
 *   40     offsets: u32 × (ceil(R/G) + 1), first 0, last N, non-decreasing
 *   ...    codes: u16 × N
 *   ...    scales: type 1: u16 (f16) × 2R, lo then hi of each row;
 *                  type 2: u8 × R, the code k of each row (levels -s, +s,
 *                  s = mt_qmoe_scale8_value(base, k))
 *   total = 40 + 4·(ceil(R/G)+1) + 2N + 4R (type 1) or + R (type 2) bytes
 *   exactly. moetool writes type 1 unless asked for 8-bit scales, so files
 *   written before type 2 existed read and write back unchanged.
 * Dictionary parameters (one per model):
 *   0   4  magic "QMDT"
 *   4   2  version (1)
 *   6   2  max_len (1..32)
 *   8   4  n_entries (3..65536)
 *   12  4  reserved, 0
 *   16  8  count of zeros; 24  8  count of +1; 32  8  count of -1
 * The reader rebuilds the dictionary with mt_qmoe_dict_build.
 *
 * Robustness of the layout: the dictionary tables always have
 * MT_QMOE_DICT_SIZE entries (unused ones decode to nothing) and
 * mt_qmoe_group_span clamps offsets to the code stream, so even an unchecked
 * matrix cannot make a decoder read out of bounds. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moetool/mt_qmoe.h"

/* ---- dictionary: Tunstall tree -------------------------------------------
 * Start from the root (the empty sequence, probability 1). Repeatedly take
 * the leaf of highest probability (ties: the one created first) whose
 * length is below max_len and replace it by its three children (appending a
 * zero, a +1, a -1, created in that order, probability times p_s), while
 * the leaf count stays <= n_entries. Leaves are then numbered in canonical
 * order: by length, then lexicographically with 0 < +1 < -1. The tree is
 * complete, so any sequence followed by enough zeros parses greedily. */
typedef struct {
    double p;
    int32_t parent;
    uint8_t sym, depth; /* sym: 0 zero, 1 plus, 2 minus */
    int32_t internal;   /* internal index, -1 for a leaf */
} tnode;

/* max-heap of node ids ordered by (p desc, id asc) */
static int heap_before(const tnode *n, int32_t a, int32_t b) {
    return n[a].p > n[b].p || (n[a].p == n[b].p && a < b);
}
static void heap_push(int32_t *h, int *nh, const tnode *n, int32_t v) {
    int i = (*nh)++;
    h[i] = v;
    while (i > 0 && heap_before(n, h[i], h[(i - 1) / 2])) {
        int32_t t = h[i];
        h[i] = h[(i - 1) / 2];
        h[(i - 1) / 2] = t;
        i = (i - 1) / 2;
    }
}
static int32_t heap_pop(int32_t *h, int *nh, const tnode *n) {
    int32_t top = h[0];
    h[0] = h[--(*nh)];
    int i = 0;
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < *nh && heap_before(n, h[l], h[m])) m = l;
        if (r < *nh && heap_before(n, h[r], h[m])) m = r;
        if (m == i) break;
        int32_t t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
    return top;
}

typedef struct {
    uint64_t key; /* length << 56 | symbols in base 3, first symbol most significant */
    int32_t node;
} leaf_key;
static int cmp_leaf(const void *a, const void *b) {
    const leaf_key *x = a, *y = b;
    return x->key < y->key ? -1 : x->key > y->key;
}

void mt_qmoe_dict_free(mt_qmoe_dict *d) {
    if (!d) return;
    free(d->len);
    free(d->mask);
    free(d->child);
    memset(d, 0, sizeof *d);
}

int mt_qmoe_dict_build(mt_qmoe_dict *d, const uint64_t counts[3], int n_entries, int max_len) {
    memset(d, 0, sizeof *d);
    if (n_entries < 3 || n_entries > MT_QMOE_DICT_SIZE)
        return mt_seterr(MT_ERR_ARG, "qmoe dictionary: %d entries (need 3..%d)", n_entries, MT_QMOE_DICT_SIZE);
    if (max_len < 1 || max_len > MT_QMOE_MAX_LEN)
        return mt_seterr(MT_ERR_ARG, "qmoe dictionary: max length %d (need 1..%d)", max_len, MT_QMOE_MAX_LEN);
    const double tot = (double)counts[0] + (double)counts[1] + (double)counts[2] + 3.0;
    const double ps[3] = {((double)counts[0] + 1.0) / tot, ((double)counts[1] + 1.0) / tot,
                          ((double)counts[2] + 1.0) / tot};
    const int max_nodes = 1 + 3 * (n_entries / 2 + 1);
    tnode *nd = malloc((size_t)max_nodes * sizeof *nd);
    int32_t *heap = malloc((size_t)max_nodes * sizeof *heap);
    leaf_key *lk = malloc((size_t)n_entries * sizeof *lk);
    d->len = calloc(MT_QMOE_DICT_SIZE, 1);
    d->mask = calloc(MT_QMOE_DICT_SIZE, sizeof *d->mask);
    d->child = malloc((size_t)3 * (size_t)(n_entries / 2 + 1) * sizeof *d->child);
    if (!nd || !heap || !lk || !d->len || !d->mask || !d->child) {
        free(nd);
        free(heap);
        free(lk);
        mt_qmoe_dict_free(d);
        return mt_seterr(MT_ERR_NOMEM, "qmoe dictionary: out of memory");
    }
    int n_nodes = 1, nh = 0, n_leaves = 1, n_int = 0;
    nd[0] = (tnode){1.0, -1, 0, 0, -1};
    if (max_len > 0) heap_push(heap, &nh, nd, 0);
    while (nh > 0 && n_leaves + 2 <= n_entries) {
        const int32_t v = heap_pop(heap, &nh, nd);
        nd[v].internal = n_int++;
        for (int s = 0; s < 3; s++) {
            const int32_t c = n_nodes++;
            nd[c] = (tnode){nd[v].p * ps[s], v, (uint8_t)s, (uint8_t)(nd[v].depth + 1), -1};
            if (nd[c].depth < max_len) heap_push(heap, &nh, nd, c);
        }
        n_leaves += 2;
    }
    /* canonical numbering of the leaves */
    int nl = 0;
    double mean = 0.0;
    for (int32_t v = 0; v < n_nodes; v++) {
        if (nd[v].internal >= 0) continue;
        uint64_t k = 0, pw = 1;
        for (int32_t u = v; nd[u].parent >= 0; u = nd[u].parent) {
            k += pw * nd[u].sym;
            pw *= 3;
        }
        lk[nl].key = (uint64_t)nd[v].depth << 56 | k;
        lk[nl].node = v;
        nl++;
        mean += nd[v].p * nd[v].depth;
    }
    MT_ASSERT(nl == n_leaves);
    qsort(lk, (size_t)nl, sizeof *lk, cmp_leaf);
    for (int c = 0; c < nl; c++) {
        const int32_t v = lk[c].node;
        uint32_t plus = 0, minus = 0;
        for (int32_t u = v; nd[u].parent >= 0; u = nd[u].parent) {
            const int pos = nd[u].depth - 1;
            if (nd[u].sym == 1) plus |= 1u << pos;
            if (nd[u].sym == 2) minus |= 1u << pos;
        }
        d->len[c] = nd[v].depth;
        d->mask[c] = plus | (uint64_t)minus << 32;
        nd[v].internal = -(c + 1); /* reuse: leaf code */
        if (nd[v].depth > d->max_len) d->max_len = nd[v].depth;
    }
    for (int32_t v = 1; v < n_nodes; v++) {
        const int32_t pi = nd[nd[v].parent].internal; /* parents are internal */
        d->child[3 * pi + nd[v].sym] = nd[v].internal;
    }
    d->counts[0] = counts[0];
    d->counts[1] = counts[1];
    d->counts[2] = counts[2];
    d->n_entries = nl;
    d->n_nodes = n_int;
    d->mean_len = mean;
    if (n_int == 0) { /* root never expanded (max_len 0 cannot happen; keep a valid trie) */
        free(nd);
        free(heap);
        free(lk);
        mt_qmoe_dict_free(d);
        return mt_seterr(MT_ERR_INTERNAL, "qmoe dictionary: empty tree");
    }
    free(nd);
    free(heap);
    free(lk);
    return MT_OK;
}

/* ---- matrices -------------------------------------------------------------- */
void mt_qmoe_mat_view(mt_mat *out, const mt_qmoe_mat *q) {
    memset(out, 0, sizeof *out);
    out->dtype = MT_DT_QMOE;
    out->rows = q->rows;
    out->cols = q->cols;
    out->data = q->codes;
    out->row_stride = 0;
    out->side.qmoe.offsets = q->offsets;
    out->side.qmoe.dict = q->dict;
    out->side.qmoe.scales = q->scales;
    out->side.qmoe.n_codes = q->n_codes;
    out->side.qmoe.scale_type = q->scale_type;
    out->group = q->group_rows;
}

int mt_qmoe_mat_ok(const mt_mat *W) {
    if (!W || W->dtype != MT_DT_QMOE || W->rows < 0 || W->cols <= 0 || W->group < 1 || W->group > INT32_MAX)
        return 0;
    const mt_qmoe_side *q = &W->side.qmoe;
    if (!q->offsets || !q->dict || !q->scales || (!W->data && q->n_codes)) return 0;
    return q->dict->len && q->dict->mask;
}

int mt_qmoe_mat_check(const mt_mat *W, const char *what) {
    if (!mt_qmoe_mat_ok(W)) return mt_seterr(MT_ERR_FORMAT, "%s: malformed qmoe matrix (sizes or side arrays)", what);
    const mt_qmoe_dict *d = W->side.qmoe.dict;
    const uint32_t *off = W->side.qmoe.offsets;
    const uint16_t *codes = W->data;
    const uint64_t n_codes = W->side.qmoe.n_codes;
    const int64_t ng = mt_qmoe_n_groups(W->rows, (int)W->group);
    if (off[0] != 0) return mt_seterr(MT_ERR_FORMAT, "%s: first group offset is %u, not 0", what, off[0]);
    for (int64_t g = 0; g < ng; g++) {
        if (off[g + 1] < off[g] || off[g + 1] > n_codes)
            return mt_seterr(MT_ERR_FORMAT, "%s: group %lld offset %u outside [%u, %llu]", what, (long long)g + 1,
                             off[g + 1], off[g], (unsigned long long)n_codes);
        const int64_t nrows = (g + 1) * W->group <= W->rows ? W->group : W->rows - g * W->group;
        const uint64_t need = (uint64_t)nrows * (uint64_t)W->cols;
        uint64_t have = 0;
        for (uint32_t k = off[g]; k < off[g + 1]; k++) {
            if (codes[k] >= d->n_entries)
                return mt_seterr(MT_ERR_FORMAT, "%s: codeword %u at %u is outside the dictionary (%d entries)", what,
                                 codes[k], k, d->n_entries);
            if (have >= need)
                return mt_seterr(MT_ERR_FORMAT, "%s: group %lld has codewords past its %llu symbols", what,
                                 (long long)g, (unsigned long long)need);
            have += d->len[codes[k]];
        }
        if (have < need)
            return mt_seterr(MT_ERR_FORMAT, "%s: group %lld decodes to %llu symbols, needs %llu", what, (long long)g,
                             (unsigned long long)have, (unsigned long long)need);
    }
    if (off[ng] != n_codes)
        return mt_seterr(MT_ERR_FORMAT, "%s: %llu codewords, offsets end at %u", what, (unsigned long long)n_codes,
                         off[ng]);
    return MT_OK;
}

void mt_qmoe_group_span(const mt_mat *W, int64_t g, uint64_t *k0, uint64_t *k1) {
    const uint32_t *off = W->side.qmoe.offsets;
    const uint64_t n_codes = W->side.qmoe.n_codes;
    uint64_t a = off[g], b = off[g + 1];
    if (b > n_codes) b = n_codes;
    if (a > b) a = b;
    *k0 = a;
    *k1 = b;
}

/* ---- reference decoder ---------------------------------------------------- */
void mt_qmoe_walk_rows(const mt_mat *W, int64_t r0, int64_t r1, mt_qmoe_sym_fn fn, void *ctx) {
    const mt_qmoe_dict *d = W->side.qmoe.dict;
    const uint16_t *codes = W->data;
    const int64_t G = W->group, cols = W->cols;
    for (int64_t g = r0 / G; g * G < r1; g++) {
        const int64_t gr0 = g * G, gr1 = gr0 + G < W->rows ? gr0 + G : W->rows;
        const uint64_t n_sym = (uint64_t)(gr1 - gr0) * (uint64_t)cols;
        const uint64_t want0 = (uint64_t)((r0 > gr0 ? r0 : gr0) - gr0) * (uint64_t)cols;
        const uint64_t want1 = (uint64_t)((r1 < gr1 ? r1 : gr1) - gr0) * (uint64_t)cols;
        uint64_t k0, k1, pos = 0;
        mt_qmoe_group_span(W, g, &k0, &k1);
        for (uint64_t k = k0; k < k1 && pos < want1 && pos < n_sym; k++) {
            const int L = d->len[codes[k]];
            const uint64_t m = d->mask[codes[k]];
            if (pos + (uint64_t)L > want0) {
                for (int i = 0; i < L; i++) {
                    const uint64_t p = pos + (uint64_t)i;
                    if (p < want0 || p >= want1) continue;
                    const int s = (m >> i & 1) ? 1 : (m >> (32 + i) & 1) ? -1 : 0;
                    if (s) fn(ctx, gr0 + (int64_t)(p / (uint64_t)cols), (int64_t)(p % (uint64_t)cols), s);
                }
            }
            pos += (uint64_t)L;
        }
    }
}

typedef struct {
    int8_t *out;
    int64_t r0, cols;
} dec_ctx;
static void dec_sym(void *ctx, int64_t row, int64_t col, int sym) {
    dec_ctx *c = ctx;
    c->out[(row - c->r0) * c->cols + col] = (int8_t)sym;
}

int mt_qmoe_decode_rows(const mt_mat *W, int64_t r0, int64_t r1, int8_t *out) {
    if (!mt_qmoe_mat_ok(W) || r0 < 0 || r1 > W->rows || r0 > r1)
        return mt_seterr(MT_ERR_ARG, "qmoe decode: bad matrix or rows [%lld, %lld)", (long long)r0, (long long)r1);
    memset(out, 0, (size_t)(r1 - r0) * (size_t)W->cols);
    dec_ctx c = {out, r0, W->cols};
    mt_qmoe_walk_rows(W, r0, r1, dec_sym, &c);
    return MT_OK;
}

/* ---- encoder and statistics ------------------------------------------------- */
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
    out->scale_type = MT_QMOE_SCALES_F16;
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
    s->scale_bits = (q->scale_type == MT_QMOE_SCALES_U8LOG ? 8 : 32) * (uint64_t)q->rows;
    s->header_bits = 8 * MT_QMOE_HEADER_BYTES;
    s->total_bits = s->code_bits + s->offset_bits + s->scale_bits + s->header_bits;
    MT_ASSERT(s->total_bits == 8 * mt_qmoe_blob_bytes(q->rows, q->group_rows, q->n_codes, q->scale_type));
}


void mt_qmoe_mat_free(mt_qmoe_mat *q) {
    if (!q) return;
    free(q->codes);
    free(q->offsets);
    free(q->scales);
    memset(q, 0, sizeof *q);
}

uint64_t mt_qmoe_dict_bytes(void) { return MT_QMOE_DICT_BYTES; }

/* ---- serialisation ------------------------------------------------------------ */
static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t get32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}
static uint64_t get64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

uint64_t mt_qmoe_blob_bytes(int64_t rows, int group_rows, uint64_t n_codes, int scale_type) {
    const uint64_t ng = (uint64_t)mt_qmoe_n_groups(rows, group_rows);
    const uint64_t per_row = scale_type == MT_QMOE_SCALES_U8LOG ? 1 : 4;
    return MT_QMOE_HEADER_BYTES + 4 * (ng + 1) + 2 * n_codes + per_row * (uint64_t)rows; /* rows, n_codes < 2^40 */
}

/* ---- 8-bit log-coded row scales ------------------------------------------------ */
/* 2^(-i/16), i = 0..15, rounded to f32 (exact constants: the decoded value
 * must not depend on the platform's exp2). */
static const float k_pow2_16th[MT_QMOE_SCALE8_STEPS] = {
    0x1p+0f,          0x1.ea4afap-1f, 0x1.d5818ep-1f, 0x1.c199bep-1f, 0x1.ae89fap-1f, 0x1.9c4918p-1f,
    0x1.8ace54p-1f,   0x1.7a1148p-1f, 0x1.6a09e6p-1f, 0x1.5ab07ep-1f, 0x1.4bfdaep-1f, 0x1.3dea64p-1f,
    0x1.306fe0p-1f,   0x1.2387a6p-1f, 0x1.172b84p-1f, 0x1.0b5586p-1f};

float mt_qmoe_scale8_value(float base, int k) {
    if (k <= 0) return 0.0f;
    if (k > 255) k = 255;
    const int e = 255 - k;
    const float v = ldexpf(base * k_pow2_16th[e % MT_QMOE_SCALE8_STEPS], -(e / MT_QMOE_SCALE8_STEPS));
    return mt_f16_to_f32(mt_f32_to_f16(v));
}

int mt_qmoe_scale8_code(float base, float s) {
    if (!(s > 0) || !(base > 0)) return 0;
    int best = 0;
    float bd = s; /* distance to code 0 (value 0) */
    for (int k = 1; k < 256; k++) {
        const float d = fabsf(mt_qmoe_scale8_value(base, k) - s);
        if (d < bd) {
            bd = d;
            best = k;
        }
    }
    return best;
}

float mt_qmoe_scale8_base(float smax) { return mt_f16_to_f32(mt_f32_to_f16(smax)); }

int mt_qmoe_mat_set_scale8(mt_qmoe_mat *q) {
    float base = 0;
    for (int64_t r = 0; r < q->rows; r++) {
        const float hi = mt_f16_to_f32(q->scales[2 * r + 1]);
        if (hi > base) base = hi;
    }
    if (!(base > 0) || !isfinite(base)) base = 1.0f; /* all rows zero: any base */
    for (int64_t r = 0; r < q->rows; r++) {
        const float lo = mt_f16_to_f32(q->scales[2 * r]), hi = mt_f16_to_f32(q->scales[2 * r + 1]);
        if (lo != -hi || mt_qmoe_scale8_value(base, mt_qmoe_scale8_code(base, hi)) != hi)
            return mt_seterr(MT_ERR_ARG, "qmoe: row %lld's levels (%g, %g) are not an 8-bit log-coded pair -s, +s",
                             (long long)r, (double)lo, (double)hi);
    }
    for (int64_t r = 0; r < q->rows; r++) q->scales[2 * r] = (uint16_t)(q->scales[2 * r + 1] ^ 0x8000u); /* -s */
    q->scale_type = MT_QMOE_SCALES_U8LOG;
    q->scale_base = base;
    return MT_OK;
}

int mt_qmoe_serialize(const mt_qmoe_mat *q, uint8_t **out, size_t *n) {
    *out = NULL;
    *n = 0;
    const int64_t ng = mt_qmoe_n_groups(q->rows, q->group_rows);
    const int st = q->scale_type == MT_QMOE_SCALES_U8LOG ? MT_QMOE_SCALES_U8LOG : MT_QMOE_SCALES_F16;
    const size_t bytes = (size_t)mt_qmoe_blob_bytes(q->rows, q->group_rows, q->n_codes, st);
    uint8_t *b = malloc(bytes), *p = b;
    if (!b) return mt_seterr(MT_ERR_NOMEM, "qmoe serialize: out of memory");
    memcpy(p, MT_QMOE_MAGIC, 4);
    put16(p + MT_QMOE_OFF_VERSION, MT_QMOE_VERSION);
    put16(p + MT_QMOE_OFF_GROUP, (uint16_t)q->group_rows);
    put64(p + MT_QMOE_OFF_ROWS, (uint64_t)q->rows);
    put64(p + MT_QMOE_OFF_COLS, (uint64_t)q->cols);
    put64(p + MT_QMOE_OFF_NCODES, q->n_codes);
    put32(p + MT_QMOE_OFF_SCALE_TYPE, (uint32_t)st);
    uint32_t bb = 0;
    if (st == MT_QMOE_SCALES_U8LOG) memcpy(&bb, &q->scale_base, 4);
    put32(p + MT_QMOE_OFF_SCALE_BASE, bb);
    p += MT_QMOE_HEADER_BYTES;
    for (int64_t g = 0; g <= ng; g++, p += 4) put32(p, q->offsets[g]);
    for (uint64_t k = 0; k < q->n_codes; k++, p += 2) put16(p, q->codes[k]);
    if (st == MT_QMOE_SCALES_U8LOG) {
        for (int64_t r = 0; r < q->rows; r++, p++) {
            const float hi = mt_f16_to_f32(q->scales[2 * r + 1]);
            const int k = mt_qmoe_scale8_code(q->scale_base, hi);
            if (mt_qmoe_scale8_value(q->scale_base, k) != hi || mt_f16_to_f32(q->scales[2 * r]) != -hi) {
                free(b);
                return mt_seterr(MT_ERR_INTERNAL, "qmoe serialize: row %lld's scale %g has no 8-bit code",
                                 (long long)r, (double)hi);
            }
            *p = (uint8_t)k;
        }
    } else {
        for (int64_t r = 0; r < 2 * q->rows; r++, p += 2) put16(p, q->scales[r]);
    }
    MT_ASSERT((size_t)(p - b) == bytes);
    *out = b;
    *n = bytes;
    return MT_OK;
}

int mt_qmoe_deserialize(mt_qmoe_mat *q, const mt_qmoe_dict *dict, const uint8_t *buf, size_t n, const char *what) {
    memset(q, 0, sizeof *q);
    if (!dict || !dict->len) return mt_seterr(MT_ERR_ARG, "%s: no qmoe dictionary", what);
    if (n < MT_QMOE_HEADER_BYTES || memcmp(buf, MT_QMOE_MAGIC, 4) != 0)
        return mt_seterr(MT_ERR_FORMAT, "%s: not a qmoe matrix (magic)", what);
    if (get16(buf + MT_QMOE_OFF_VERSION) != MT_QMOE_VERSION)
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: qmoe version %u (this reader: %d)", what,
                         get16(buf + MT_QMOE_OFF_VERSION), MT_QMOE_VERSION);
    const uint64_t G = get16(buf + MT_QMOE_OFF_GROUP), rows = get64(buf + MT_QMOE_OFF_ROWS),
                   cols = get64(buf + MT_QMOE_OFF_COLS), nc = get64(buf + MT_QMOE_OFF_NCODES);
    if (G < 1 || G > MT_QMOE_MAX_GROUP) return mt_seterr(MT_ERR_FORMAT, "%s: qmoe group of %llu rows", what, (unsigned long long)G);
    if (cols < 1 || cols > ((uint64_t)1 << 40) || rows > ((uint64_t)1 << 40) || nc > UINT32_MAX)
        return mt_seterr(MT_ERR_FORMAT, "%s: qmoe shape (%llu, %llu) with %llu codewords", what,
                         (unsigned long long)rows, (unsigned long long)cols, (unsigned long long)nc);
    const uint32_t st = get32(buf + MT_QMOE_OFF_SCALE_TYPE), bb = get32(buf + MT_QMOE_OFF_SCALE_BASE);
    float base = 0;
    memcpy(&base, &bb, 4);
    if (st == MT_QMOE_SCALES_F16) {
        if (bb != 0) return mt_seterr(MT_ERR_FORMAT, "%s: qmoe reserved header field is not 0", what);
    } else if (st == MT_QMOE_SCALES_U8LOG) {
        if (!isfinite(base) || !(base > 0))
            return mt_seterr(MT_ERR_FORMAT, "%s: qmoe 8-bit scale base %g is not a finite positive number", what,
                             (double)base);
    } else {
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: qmoe scale type %u", what, st);
    }
    const uint64_t ng = (uint64_t)mt_qmoe_n_groups((int64_t)rows, (int)G);
    const uint64_t need = mt_qmoe_blob_bytes((int64_t)rows, (int)G, nc, (int)st); /* < 2^44 */
    if (need != n)
        return mt_seterr(MT_ERR_FORMAT, "%s: qmoe matrix of %llu bytes, its header says %llu", what,
                         (unsigned long long)n, (unsigned long long)need);
    q->rows = (int64_t)rows;
    q->cols = (int64_t)cols;
    q->group_rows = (int)G;
    q->n_codes = nc;
    q->dict = dict;
    q->scale_type = (int)st;
    q->scale_base = st == MT_QMOE_SCALES_U8LOG ? base : 0.0f;
    q->offsets = malloc((size_t)(ng + 1) * 4);
    q->codes = malloc((size_t)(nc ? nc : 1) * 2);
    q->scales = malloc((size_t)(rows ? rows : 1) * 4);
    if (!q->offsets || !q->codes || !q->scales) {
        mt_qmoe_mat_free(q);
        return mt_seterr(MT_ERR_NOMEM, "%s: out of memory", what);
    }
    const uint8_t *p = buf + MT_QMOE_HEADER_BYTES;
    for (uint64_t g = 0; g <= ng; g++, p += 4) q->offsets[g] = get32(p);
    for (uint64_t k = 0; k < nc; k++, p += 2) q->codes[k] = get16(p);
    if (st == MT_QMOE_SCALES_U8LOG) {
        for (uint64_t r = 0; r < rows; r++, p++) {
            const uint16_t h = mt_f32_to_f16(mt_qmoe_scale8_value(base, *p));
            q->scales[2 * r] = (uint16_t)(h ^ 0x8000u); /* -s */
            q->scales[2 * r + 1] = h;
        }
    } else {
        for (uint64_t r = 0; r < 2 * rows; r++, p += 2) q->scales[r] = get16(p);
    }
    mt_mat W;
    mt_qmoe_mat_view(&W, q);
    const int rc = mt_qmoe_mat_check(&W, what);
    if (rc != MT_OK) mt_qmoe_mat_free(q);
    return rc;
}

void mt_qmoe_dict_serialize(const mt_qmoe_dict *d, uint8_t out[MT_QMOE_DICT_BYTES]) {
    memcpy(out, MT_QMOE_DICT_MAGIC, 4);
    put16(out + MT_QMOE_OFF_VERSION, MT_QMOE_VERSION);
    put16(out + MT_QMOE_DICT_OFF_MAX_LEN, (uint16_t)d->max_len);
    put32(out + MT_QMOE_DICT_OFF_ENTRIES, (uint32_t)d->n_entries);
    put32(out + MT_QMOE_DICT_OFF_ENTRIES + 4, 0);
    for (int k = 0; k < 3; k++) put64(out + MT_QMOE_DICT_OFF_COUNTS + 8 * k, d->counts[k]);
}

int mt_qmoe_dict_deserialize(mt_qmoe_dict *d, const uint8_t *buf, size_t n, const char *what) {
    memset(d, 0, sizeof *d);
    if (n != MT_QMOE_DICT_BYTES || memcmp(buf, MT_QMOE_DICT_MAGIC, 4) != 0)
        return mt_seterr(MT_ERR_FORMAT, "%s: not a qmoe dictionary (magic or size %zu)", what, n);
    if (get16(buf + MT_QMOE_OFF_VERSION) != MT_QMOE_VERSION)
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: qmoe dictionary version %u", what, get16(buf + MT_QMOE_OFF_VERSION));
    const uint64_t counts[3] = {get64(buf + MT_QMOE_DICT_OFF_COUNTS), get64(buf + MT_QMOE_DICT_OFF_COUNTS + 8),
                                get64(buf + MT_QMOE_DICT_OFF_COUNTS + 16)};
    const int st = mt_qmoe_dict_build(d, counts, (int)get32(buf + MT_QMOE_DICT_OFF_ENTRIES),
                                      get16(buf + MT_QMOE_DICT_OFF_MAX_LEN));
    if (st != MT_OK) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s", mt_last_error());
        return mt_seterr(st, "%s: %s", what, msg);
    }
    return MT_OK;
}
