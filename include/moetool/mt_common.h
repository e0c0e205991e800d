/* mt_common.h — status codes, error messages, storage types and logging shared
 * by every part of libmoe. Public header: the CLI and tests include only
 * headers from include/moetool/. */
#ifndef MT_COMMON_H
#define MT_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status codes: stable numbers, never reuse a value ---------------- */
typedef enum {
    MT_OK = 0,
    MT_ERR_NOMEM = -1,       /* allocation failed */
    MT_ERR_IO = -2,          /* open/read/write/mmap/rename failed */
    MT_ERR_FORMAT = -3,      /* input file is malformed (bad magic, bounds, ...) */
    MT_ERR_UNSUPPORTED = -4, /* well-formed but not something we handle */
    MT_ERR_ARG = -5,         /* bad option or argument from the caller */
    MT_ERR_NOT_FOUND = -6,   /* missing tensor, key, file */
    MT_ERR_INTERNAL = -7,    /* broken invariant reported instead of aborting */
    MT_ERR_REFUSED = -8,     /* output refused by the output policy (docs/outputs.md) */
} mt_status;

/* Name of a status ("MT_ERR_FORMAT"), never NULL. */
const char *mt_status_name(int status);

/* Message of the last failing call on this thread: what and where (file,
 * tensor, byte offset). Never NULL; "" when none. */
const char *mt_last_error(void);

/* Records a message for the current thread and returns `status`, so that
 * `return mt_seterr(MT_ERR_FORMAT, "%s: ...", path);` is the idiom. */
int mt_seterr(int status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
void mt_clearerr(void);

/* Invariant check that is always on. Never used for input validation. */
void mt_assert_fail(const char *expr, const char *file, int line);
#define MT_ASSERT(x) ((x) ? (void)0 : mt_assert_fail(#x, __FILE__, __LINE__))

/* ---- logging: the library never prints; the CLI installs a callback ---- */
typedef enum { MT_LOG_DEBUG = 0, MT_LOG_INFO = 1, MT_LOG_WARN = 2 } mt_log_level;
typedef void (*mt_log_fn)(void *user, mt_log_level level, const char *msg);
void mt_set_log(mt_log_fn fn, void *user);
void mt_log(mt_log_level level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Progress of long work (convert, eval): done out of total units. The CLI
 * draws a line on a terminal; NULL callback means silent. */
typedef void (*mt_progress_fn)(void *user, const char *what, uint64_t done, uint64_t total);

/* ---- storage types ("dtypes") ----------------------------------------
 * Values are our own; GGUF and safetensors codes are mapped in lib/io.
 * Block types store `block_elems` weights in `block_bytes` bytes, along the
 * innermost (column) dimension; a row is always a whole number of blocks. */
typedef enum {
    MT_DT_F32 = 0,
    MT_DT_F16,
    MT_DT_BF16,
    MT_DT_Q8_0,   /* llama.cpp block: f16 d; int8 qs[32]                   */
    MT_DT_Q4_0,   /* llama.cpp block: f16 d; uint8 qs[16] (low nibble first half) */
    MT_DT_TQ1_0,  /* llama.cpp ternary, 256 weights in 54 bytes            */
    MT_DT_TQ2_0,  /* llama.cpp ternary, 256 weights in 66 bytes            */
    MT_DT_I8,
    MT_DT_I16,
    MT_DT_I32,
    MT_DT_I64,
    MT_DT_U8,
    MT_DT_F64,
    MT_DT_F8_E4M3,
    MT_DT_F8_E5M2,
    MT_DT_BOOL,
    MT_DT_QMOE,   /* ternary rows in the Tunstall code of mt_qmoe.h; variable
                     size (block_bytes 0): codes in data, side arrays in aux */
    MT_DT_COUNT
} mt_dtype;

typedef struct {
    const char *name;   /* "bf16", "q8_0", ... as users type it */
    int block_elems;    /* 1 for scalar types */
    int block_bytes;    /* bytes of one block (element size for scalars) */
    int is_float;       /* usable as model weight by the runtime */
} mt_dtype_info;

const mt_dtype_info *mt_dtype_get(mt_dtype t);
/* Parses a user-typed name ("bf16", "Q8_0", "f32"); returns -1 if unknown. */
int mt_dtype_from_name(const char *name);
/* Bytes of `n` elements; sets *out and returns MT_OK, or MT_ERR_FORMAT when
 * n is not a multiple of the block size or the product overflows. */
int mt_dtype_nbytes(mt_dtype t, uint64_t n, uint64_t *out);

/* ---- scalar conversions (exact, round-to-nearest-even) ---------------- */
float mt_bf16_to_f32(uint16_t h);
uint16_t mt_f32_to_bf16(float f);
float mt_f16_to_f32(uint16_t h);
uint16_t mt_f32_to_f16(float f);

/* Converts `n` elements of a row of type `t` to f32. For block types n is a
 * multiple of the block size. Plain C reference; fast paths live in the
 * runtime's kernels. */
int mt_row_to_f32(mt_dtype t, const void *src, float *dst, int64_t n);
/* llama.cpp's TQ1_0 block (54 bytes, 256 ternary weights: 5 per byte in
 * base 3 for the first 240, 4 per byte for the last 16, then f16 d): the
 * codes q in {-1, 0, +1} of one block, and the block of 256 codes and d. */
void mt_tq1_0_unpack(const uint8_t *blk, int8_t *q);
void mt_tq1_0_pack(const int8_t *q, uint16_t d_f16, uint8_t *blk);
/* Quantizes/converts n f32 values into type t (f32, f16, bf16, q8_0, q4_0),
 * with llama.cpp's reference rounding for the block types. */
int mt_row_from_f32(mt_dtype t, const float *src, void *dst, int64_t n);

/* Removes every temporary output still registered (files, directories and
 * the files inside them; docs/outputs.md) and returns how many paths it
 * removed. Async-signal-safe: for a program's signal handler (it calls only
 * unlink and rmdir on precomputed paths). */
int mt_cleanup_outputs(void);

/* Peak resident set size of this process in bytes (from getrusage). */
uint64_t mt_peak_rss_bytes(void);
/* Monotonic time in seconds. */
double mt_now(void);

#ifdef __cplusplus
}
#endif
#endif
