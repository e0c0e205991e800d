/* mt_common.h — status codes, error messages, storage types and logging shared
 * by every part of libmoe. Public header: the CLI and tests include only
 * headers from include/moetool/. */
#ifndef MT_COMMON_H
#define MT_COMMON_H

#define MT_VERSION "0.1.0" /* the tool's version, recorded in what it writes */

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

/* Progress of long work (convert, eval, quantize, merge): done out of total
 * units. what is "job: unit" ("quantize: layer", "convert: bytes"), optionally
 * followed by "; details" ("eval: window; ppl 12.34"). The library never
 * prints: the CLI draws the line on stderr; NULL callback means silent. */
typedef void (*mt_progress_fn)(void *user, const char *what, uint64_t done, uint64_t total);

/* ---- storage types: the table and its codecs (mt_dtype.h, mt_codec.h) -- */
#include "moetool/mt_dtype.h"

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
