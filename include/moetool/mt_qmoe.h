/* mt_qmoe.h — the sub-1-bit code for ternary experts (after QMoE, Frantar &
 * Alistarh 2023) and the matrices the runtime executes in coded form.
 *
 * A ternary matrix stores per weight a symbol s in {0, +1, -1} and per row
 * two values lo < 0 < hi (QMoE's grid {min, 0, max}); weight = hi when
 * s = +1, lo when s = -1, 0 otherwise.
 *
 * The code is a Tunstall code (variable-to-fixed): a dictionary of up to
 * 2^16 symbol sequences, each named by a uint16 codeword. The dictionary is
 * the 2^16 most probable sequences under the symbol frequencies (the
 * Tunstall tree, sequences capped at MT_QMOE_MAX_LEN symbols), so it is a
 * function of three counts: a checkpoint stores the counts, not the 2^16
 * entries (0 bits per weight amortised instead of ~0.4 on a 15M model).
 * Rows are coded back to back; every MT_QMOE_GROUP_ROWS rows start a fresh
 * codeword and have an offset, so thread splits (aligned to 16 rows) and
 * single rows decode independently. Codewords may straddle the rows inside
 * a group; the last one of a group is padded with zeros.
 *
 * Layout in memory (an mt_mat of type MT_DT_QMOE, see mt_qmoe_mat_view):
 * data = codes (uint16), side.qmoe (mt_qmoe_side, mt_io.h) = group offsets,
 * dictionary, f16 scale pairs and the codeword count; group = rows per
 * group. Byte layout on disk: docs/qmoe.md and the top of
 * lib/io/codec/qmoe.c.
 *
 * The codec is whole in lib/io/codec/qmoe.c: dictionary build, encoder and
 * statistics, layout check, reference decoder, serialised form. The CPU
 * backend's fused decode+matvec kernels over this layout are in
 * lib/runtime/backend/cpu/kernels_qmoe.c. */
#ifndef MT_QMOE_H
#define MT_QMOE_H

#include "mt_io.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Serialised form (docs/qmoe.md "Byte layout"; lib/io/codec/qmoe.c). */
#define MT_QMOE_MAGIC "QMOE"       /* matrix blob                      */
#define MT_QMOE_DICT_MAGIC "QMDT"  /* dictionary parameters            */
#define MT_QMOE_VERSION 1
#define MT_QMOE_HEADER_BYTES 40    /* matrix blob header                */
#define MT_QMOE_OFF_VERSION 4      /* header: version (u16)             */
#define MT_QMOE_OFF_GROUP 6        /* header: group_rows G (u16)        */
#define MT_QMOE_OFF_ROWS 8         /* header: rows R (u64) at this byte */
#define MT_QMOE_OFF_COLS 16        /* header: cols C (u64) at this byte */
#define MT_QMOE_OFF_NCODES 24      /* header: codewords N (u64)         */
#define MT_QMOE_OFF_SCALE_TYPE 32  /* header: scale type (u32)          */
#define MT_QMOE_OFF_SCALE_BASE 36  /* header: scale type 2: f32 base; type 1: 0 */
#define MT_QMOE_MAX_GROUP 4096     /* group_rows a reader accepts       */
#define MT_QMOE_DICT_BYTES 40      /* dictionary parameters, whole      */
#define MT_QMOE_DICT_OFF_MAX_LEN 6 /* dictionary: max_len (u16)         */
#define MT_QMOE_DICT_OFF_ENTRIES 8 /* dictionary: n_entries (u32)       */
#define MT_QMOE_DICT_OFF_COUNTS 16 /* dictionary: 3 x u64 symbol counts */
#define MT_QMOE_SCALES_F16 1       /* scale type: f16 (lo, hi) per row  */
#define MT_QMOE_SCALES_U8LOG 2     /* scale type: one u8 log code per row, levels -s, +s */
#define MT_QMOE_SCALE8_STEPS 16    /* u8 log code: 16 codes per octave  */
#define MT_QMOE_DICT_SIZE 65536 /* codewords (uint16)                        */
#define MT_QMOE_MAX_LEN 32      /* symbols per codeword at most (32-bit masks) */
#define MT_QMOE_GROUP_ROWS 16   /* rows per independently decodable group     */

/* Symbol values as stored in an int8 ternary matrix. */
#define MT_QMOE_ZERO 0
#define MT_QMOE_PLUS 1   /* weight = hi of the row */
#define MT_QMOE_MINUS -1 /* weight = lo of the row */

/* Dictionary: entry c (0 <= c < n_entries) decodes to len[c] symbols; bit i
 * of mask[c] & 0xffffffff is set when symbol i is +1, bit i of mask[c] >> 32
 * when it is -1. Read-only once built; shared by every matrix of a model. */
typedef struct mt_qmoe_dict {
    uint64_t counts[3];  /* symbol counts it was built from: zeros, +1, -1   */
    int max_len;         /* longest sequence (<= MT_QMOE_MAX_LEN)            */
    int n_entries;       /* codewords in use (<= MT_QMOE_DICT_SIZE)          */
    uint8_t *len;        /* [n_entries]                                      */
    uint64_t *mask;      /* [n_entries] plus | (uint64_t)minus << 32         */
    /* Encoder trie: node 0 is the root; child[3 * k + s'] is the child of
     * node k for symbol index s' (0: zero, 1: +1, 2: -1); a negative entry
     * -(c + 1) is the leaf of codeword c. */
    int32_t *child;      /* [n_nodes * 3]                                    */
    int n_nodes;         /* internal nodes                                   */
    double mean_len;     /* expected symbols per codeword under the counts   */
} mt_qmoe_dict;

/* Builds the Tunstall dictionary of up to n_entries codewords (<= 2^16,
 * >= 3) with sequences of at most max_len symbols (1..32) for symbol
 * frequencies (counts[s] + 1) / (sum + 3). Deterministic: the same counts
 * give the same dictionary on every machine (docs/qmoe.md gives the exact
 * procedure). */
int mt_qmoe_dict_build(mt_qmoe_dict *d, const uint64_t counts[3], int n_entries, int max_len);
void mt_qmoe_dict_free(mt_qmoe_dict *d);

/* A coded ternary matrix (rows, cols). */
typedef struct {
    int64_t rows, cols;
    int group_rows;             /* rows per group (MT_QMOE_GROUP_ROWS)        */
    uint64_t n_codes;
    uint16_t *codes;            /* [n_codes]                                   */
    uint32_t *offsets;          /* [n_groups + 1] first codeword of each group */
    uint16_t *scales;           /* [rows * 2] f16: lo, hi of each row (the
                                   values the kernels read, whatever the
                                   stored form)                                */
    const mt_qmoe_dict *dict;   /* not owned                                   */
    int scale_type;             /* stored form of the scales: MT_QMOE_SCALES_* */
    float scale_base;           /* MT_QMOE_SCALES_U8LOG: value of code 255     */
} mt_qmoe_mat;

static inline int64_t mt_qmoe_n_groups(int64_t rows, int group_rows) {
    return (rows + group_rows - 1) / group_rows;
}

/* An mt_mat of type MT_DT_QMOE over q (no copy; q must outlive it). */
void mt_qmoe_mat_view(mt_mat *out, const mt_qmoe_mat *q);

/* Bytes of the serialised blob of a (rows, *) matrix in groups of
 * group_rows with n_codes codewords and scales stored as scale_type
 * (MT_QMOE_SCALES_*): header, offsets, codes, scales. */
uint64_t mt_qmoe_blob_bytes(int64_t rows, int group_rows, uint64_t n_codes, int scale_type);

/* ---- 8-bit log-coded row scales (scale type MT_QMOE_SCALES_U8LOG) ---------
 * A row's levels are -s and +s; s is stored as a code k in 0..255 against a
 * per-matrix base b (f32, finite, > 0): k = 0 is s = 0, else
 *     s = f16( b · 2^(-(255 - k) / 16) )
 * computed exactly as mt_qmoe_scale8_value does (2^(-i/16), i = 0..15, as
 * f32 constants, times b in f32, then ldexp by -(255 - k) / 16, then
 * rounded to f16), so every reader gets the same f16 value. */
float mt_qmoe_scale8_value(float base, int k);
/* The code whose value is nearest to s >= 0 (ties: the smaller code). */
int mt_qmoe_scale8_code(float base, float s);
/* The base the quantizer uses for a matrix whose largest row level is
 * smax > 0: f16(smax), so that code 255 is that row's level exactly. */
float mt_qmoe_scale8_base(float smax);
/* Converts a coded matrix (scale type f16) to MT_QMOE_SCALES_U8LOG with the
 * base of its largest level: every row must have lo = -hi with hi a code
 * value of that base (what the quantizer rounds to); MT_ERR_ARG otherwise. */
int mt_qmoe_mat_set_scale8(mt_qmoe_mat *q);

/* Cheap structural check (type, shape, group, side arrays and dictionary
 * present), what every kernel call does first; the full validation of a
 * loaded matrix is mt_qmoe_mat_check. */
int mt_qmoe_mat_ok(const mt_mat *W);

/* Checks an MT_DT_QMOE mt_mat: its side arrays present (mt_qmoe_mat_ok),
 * offsets starting at 0, non-decreasing and ending at n_codes, codewords
 * inside the dictionary, every group decoding to exactly its symbols. MT_ERR_FORMAT naming `what` otherwise. The kernels trust a
 * checked matrix (every codeword is a valid index; they never read outside
 * the arrays even when the symbol count of a group is wrong). */
int mt_qmoe_mat_check(const mt_mat *W, const char *what);

/* Decodes rows [r0, r1) of an MT_DT_QMOE matrix to symbols
 * (out: (r1 - r0) * cols int8 in {-1, 0, +1}). */
int mt_qmoe_decode_rows(const mt_mat *W, int64_t r0, int64_t r1, int8_t *out);

/* Codewords [*k0, *k1) of group g, clamped to the stream (never outside the
 * arrays, even for an unchecked matrix). */
void mt_qmoe_group_span(const mt_mat *W, int64_t g, uint64_t *k0, uint64_t *k1);

/* The reference decoder: calls fn(ctx, row, col, sym) for every nonzero
 * symbol of rows [r0, r1), in order, symbol by symbol. W passed
 * mt_qmoe_mat_ok. */
typedef void (*mt_qmoe_sym_fn)(void *ctx, int64_t row, int64_t col, int sym);
void mt_qmoe_walk_rows(const mt_mat *W, int64_t r0, int64_t r1, mt_qmoe_sym_fn fn, void *ctx);

/* ---- encoder and statistics ---------------------------------------------- */

/* QMoE's ternary grid for one row by round to nearest: lo = min(w),
 * hi = max(w) (as f16, the stored precision), symbol +1 where w > hi/2,
 * -1 where w < lo/2, else 0. */
void mt_qmoe_ternary_rtn(const float *w, int64_t n, int8_t *syms, float *lo, float *hi);

/* Adds the symbol counts of n symbols to counts[3] (zeros, +1, -1).
 * MT_ERR_ARG when a symbol is not in {-1, 0, +1}. */
int mt_qmoe_count(uint64_t counts[3], const int8_t *syms, int64_t n);

/* Codes a ternary matrix: syms (rows, cols) in {-1, 0, +1}, lo and hi
 * (rows) its row values (stored as f16, rounded to nearest). The result
 * owns its arrays (mt_qmoe_mat_free) and points at dict. */
int mt_qmoe_encode(mt_qmoe_mat *out, const mt_qmoe_dict *dict, const int8_t *syms, const float *lo,
                   const float *hi, int64_t rows, int64_t cols);
void mt_qmoe_mat_free(mt_qmoe_mat *q);

/* Storage of a coded matrix, in bits, split by part (serialised layout of
 * docs/qmoe.md; the dictionary is counted once per model by the caller). */
typedef struct {
    uint64_t code_bits, offset_bits, scale_bits, header_bits;
    uint64_t total_bits;
} mt_qmoe_size;
void mt_qmoe_mat_size(const mt_qmoe_mat *q, mt_qmoe_size *s);
/* Bytes of the serialised dictionary parameters. */
uint64_t mt_qmoe_dict_bytes(void);

/* Serialised matrix (docs/qmoe.md "matrix blob"): *out malloc'd, *n bytes. */
int mt_qmoe_serialize(const mt_qmoe_mat *q, uint8_t **out, size_t *n);
/* Parses a blob (magic, version, every count and offset checked, every
 * codeword inside dict, every group decoding to exactly its symbols) into q,
 * which owns copies of the arrays (blobs inside safetensors are not
 * aligned); q->dict = dict. Free with mt_qmoe_mat_free. */
int mt_qmoe_deserialize(mt_qmoe_mat *q, const mt_qmoe_dict *dict, const uint8_t *buf, size_t n,
                        const char *what);
/* Serialised dictionary parameters (16 + 3 * 8 bytes) and back. */
void mt_qmoe_dict_serialize(const mt_qmoe_dict *d, uint8_t out[MT_QMOE_DICT_BYTES]);
int mt_qmoe_dict_deserialize(mt_qmoe_dict *d, const uint8_t *buf, size_t n, const char *what);

#ifdef __cplusplus
}
#endif
#endif
