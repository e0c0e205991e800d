/* common.c — errors, logging, clocks shared by every module. The
 * storage-type table is lib/io/dtype.c, its codecs lib/io/codec/. */
#define _GNU_SOURCE
#include "moetool/mt_common.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <time.h>

/* ---- errors ----------------------------------------------------------- */
static _Thread_local char g_err[1024];

const char *mt_status_name(int status) {
    switch (status) {
    case MT_OK: return "MT_OK";
    case MT_ERR_NOMEM: return "MT_ERR_NOMEM";
    case MT_ERR_IO: return "MT_ERR_IO";
    case MT_ERR_FORMAT: return "MT_ERR_FORMAT";
    case MT_ERR_UNSUPPORTED: return "MT_ERR_UNSUPPORTED";
    case MT_ERR_ARG: return "MT_ERR_ARG";
    case MT_ERR_NOT_FOUND: return "MT_ERR_NOT_FOUND";
    case MT_ERR_INTERNAL: return "MT_ERR_INTERNAL";
    case MT_ERR_REFUSED: return "MT_ERR_REFUSED";
    default: return "MT_ERR_UNKNOWN";
    }
}

const char *mt_last_error(void) { return g_err; }
void mt_clearerr(void) { g_err[0] = 0; }

int mt_seterr(int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    return status;
}

void mt_assert_fail(const char *expr, const char *file, int line) {
    fprintf(stderr, "moetool: internal invariant failed: %s (%s:%d)\n", expr, file, line);
    abort();
}

/* ---- logging ---------------------------------------------------------- */
static mt_log_fn g_log_fn;
static void *g_log_user;

void mt_set_log(mt_log_fn fn, void *user) {
    g_log_fn = fn;
    g_log_user = user;
}

void mt_log(mt_log_level level, const char *fmt, ...) {
    if (!g_log_fn) return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    g_log_fn(g_log_user, level, buf);
}

uint64_t mt_peak_rss_bytes(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (uint64_t)ru.ru_maxrss * 1024u;
}

double mt_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
