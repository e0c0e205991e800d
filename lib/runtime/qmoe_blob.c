/* qmoe_blob.c — the serialised form of the qmoe code (mt_qmoe.h), read by
 * the runtime when it loads a `quant_method: "qmoe"` checkpoint and written
 * by `moetool quantize`. Every count, size and offset of a blob is checked
 * before anything is allocated; every codeword is checked against the
 * dictionary (mt_qmoe_mat_check) before the kernels may see the matrix.
 *
 * Matrix blob (all little-endian; docs/qmoe.md has the same table):
 *   0   4  magic "QMOE"
 *   4   2  version (1)
 *   6   2  group_rows G (1..4096)
 *   8   8  rows R
 *   16  8  cols C (>= 1)
 *   24  8  n_codes N (< 2^32)
 *   32  4  scale type (1: f16 lo, hi per row)
 *   36  4  reserved, 0
 *   40     offsets: u32 × (ceil(R/G) + 1), first 0, last N, non-decreasing
 *   ...    codes: u16 × N
 *   ...    scales: u16 (f16) × 2R, lo then hi of each row
 *   total = 40 + 4·(ceil(R/G)+1) + 2N + 4R bytes exactly.
 * Dictionary parameters (one per model):
 *   0   4  magic "QMDT"
 *   4   2  version (1)
 *   6   2  max_len (1..32)
 *   8   4  n_entries (3..65536)
 *   12  4  reserved, 0
 *   16  8  count of zeros; 24  8  count of +1; 32  8  count of -1
 * The reader rebuilds the dictionary with mt_qmoe_dict_build. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moetool/mt_qmoe.h"

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

int mt_qmoe_serialize(const mt_qmoe_mat *q, uint8_t **out, size_t *n) {
    *out = NULL;
    *n = 0;
    const int64_t ng = mt_qmoe_n_groups(q->rows, q->group_rows);
    const size_t bytes = MT_QMOE_HEADER_BYTES + 4 * (size_t)(ng + 1) + 2 * (size_t)q->n_codes + 4 * (size_t)q->rows;
    uint8_t *b = malloc(bytes), *p = b;
    if (!b) return mt_seterr(MT_ERR_NOMEM, "qmoe serialize: out of memory");
    memcpy(p, MT_QMOE_MAGIC, 4);
    put16(p + 4, MT_QMOE_VERSION);
    put16(p + 6, (uint16_t)q->group_rows);
    put64(p + 8, (uint64_t)q->rows);
    put64(p + 16, (uint64_t)q->cols);
    put64(p + 24, q->n_codes);
    put32(p + 32, MT_QMOE_SCALES_F16);
    put32(p + 36, 0);
    p += MT_QMOE_HEADER_BYTES;
    for (int64_t g = 0; g <= ng; g++, p += 4) put32(p, q->offsets[g]);
    for (uint64_t k = 0; k < q->n_codes; k++, p += 2) put16(p, q->codes[k]);
    for (int64_t r = 0; r < 2 * q->rows; r++, p += 2) put16(p, q->scales[r]);
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
    if (get16(buf + 4) != MT_QMOE_VERSION)
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: qmoe version %u (this reader: %d)", what, get16(buf + 4), MT_QMOE_VERSION);
    const uint64_t G = get16(buf + 6), rows = get64(buf + 8), cols = get64(buf + 16), nc = get64(buf + 24);
    if (G < 1 || G > 4096) return mt_seterr(MT_ERR_FORMAT, "%s: qmoe group of %llu rows", what, (unsigned long long)G);
    if (cols < 1 || cols > ((uint64_t)1 << 40) || rows > ((uint64_t)1 << 40) || nc > UINT32_MAX)
        return mt_seterr(MT_ERR_FORMAT, "%s: qmoe shape (%llu, %llu) with %llu codewords", what,
                         (unsigned long long)rows, (unsigned long long)cols, (unsigned long long)nc);
    if (get32(buf + 32) != MT_QMOE_SCALES_F16 || get32(buf + 36) != 0)
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: qmoe scale type %u", what, get32(buf + 32));
    const uint64_t ng = (rows + G - 1) / G;
    const uint64_t need = MT_QMOE_HEADER_BYTES + 4 * (ng + 1) + 2 * nc + 4 * rows; /* < 2^44: no overflow */
    if (need != n)
        return mt_seterr(MT_ERR_FORMAT, "%s: qmoe matrix of %llu bytes, its header says %llu", what,
                         (unsigned long long)n, (unsigned long long)need);
    q->rows = (int64_t)rows;
    q->cols = (int64_t)cols;
    q->group_rows = (int)G;
    q->n_codes = nc;
    q->dict = dict;
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
    for (uint64_t r = 0; r < 2 * rows; r++, p += 2) q->scales[r] = get16(p);
    mt_mat W;
    mt_qmoe_mat_view(&W, q);
    const int st = mt_qmoe_mat_check(&W, what);
    if (st != MT_OK) mt_qmoe_mat_free(q);
    return st;
}

void mt_qmoe_dict_serialize(const mt_qmoe_dict *d, uint8_t out[40]) {
    memcpy(out, MT_QMOE_DICT_MAGIC, 4);
    put16(out + 4, MT_QMOE_VERSION);
    put16(out + 6, (uint16_t)d->max_len);
    put32(out + 8, (uint32_t)d->n_entries);
    put32(out + 12, 0);
    for (int k = 0; k < 3; k++) put64(out + 16 + 8 * k, d->counts[k]);
}

int mt_qmoe_dict_deserialize(mt_qmoe_dict *d, const uint8_t *buf, size_t n, const char *what) {
    memset(d, 0, sizeof *d);
    if (n != MT_QMOE_DICT_BYTES || memcmp(buf, MT_QMOE_DICT_MAGIC, 4) != 0)
        return mt_seterr(MT_ERR_FORMAT, "%s: not a qmoe dictionary (magic or size %zu)", what, n);
    if (get16(buf + 4) != MT_QMOE_VERSION)
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: qmoe dictionary version %u", what, get16(buf + 4));
    const uint64_t counts[3] = {get64(buf + 16), get64(buf + 24), get64(buf + 32)};
    const int st = mt_qmoe_dict_build(d, counts, (int)get32(buf + 8), get16(buf + 6));
    if (st != MT_OK) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s", mt_last_error());
        return mt_seterr(st, "%s: %s", what, msg);
    }
    return MT_OK;
}
