/* common.c — errors, logging, the storage-type table and scalar/row
 * conversions shared by every module. The block-type quantizers follow
 * llama.cpp's reference rounding (quantize_row_q8_0_ref, _q4_0_ref) so that
 * what we write is bit-identical to what llama.cpp would write. */
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

/* ---- dtypes ----------------------------------------------------------- */
static const mt_dtype_info g_dtypes[MT_DT_COUNT] = {
    [MT_DT_F32] = {"f32", 1, 4, 1},
    [MT_DT_F16] = {"f16", 1, 2, 1},
    [MT_DT_BF16] = {"bf16", 1, 2, 1},
    [MT_DT_Q8_0] = {"q8_0", 32, 34, 1},
    [MT_DT_Q4_0] = {"q4_0", 32, 18, 1},
    [MT_DT_TQ1_0] = {"tq1_0", 256, 54, 1},
    [MT_DT_TQ2_0] = {"tq2_0", 256, 66, 1},
    [MT_DT_I8] = {"i8", 1, 1, 0},
    [MT_DT_I16] = {"i16", 1, 2, 0},
    [MT_DT_I32] = {"i32", 1, 4, 0},
    [MT_DT_I64] = {"i64", 1, 8, 0},
    [MT_DT_U8] = {"u8", 1, 1, 0},
    [MT_DT_F64] = {"f64", 1, 8, 0},
    [MT_DT_F8_E4M3] = {"f8_e4m3", 1, 1, 1},
    [MT_DT_F8_E5M2] = {"f8_e5m2", 1, 1, 1},
    [MT_DT_BOOL] = {"bool", 1, 1, 0},
    [MT_DT_QMOE] = {"qmoe", 1, 0, 1},
};

const mt_dtype_info *mt_dtype_get(mt_dtype t) {
    if ((int)t < 0 || t >= MT_DT_COUNT) return NULL;
    return &g_dtypes[t];
}

int mt_dtype_from_name(const char *name) {
    if (!name) return -1;
    for (int i = 0; i < MT_DT_COUNT; i++)
        if (strcasecmp(name, g_dtypes[i].name) == 0) return i;
    if (strcasecmp(name, "float32") == 0) return MT_DT_F32;
    if (strcasecmp(name, "float16") == 0) return MT_DT_F16;
    if (strcasecmp(name, "bfloat16") == 0) return MT_DT_BF16;
    return -1;
}

int mt_dtype_nbytes(mt_dtype t, uint64_t n, uint64_t *out) {
    const mt_dtype_info *d = mt_dtype_get(t);
    if (!d) return mt_seterr(MT_ERR_FORMAT, "unknown storage type %d", (int)t);
    if (n % (uint64_t)d->block_elems)
        return mt_seterr(MT_ERR_FORMAT, "%llu elements is not a whole number of %s blocks (%d)",
                         (unsigned long long)n, d->name, d->block_elems);
    if (d->block_bytes == 0)
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s has no fixed size per element", d->name);
    uint64_t blocks = n / (uint64_t)d->block_elems;
    if (blocks > UINT64_MAX / (uint64_t)d->block_bytes)
        return mt_seterr(MT_ERR_FORMAT, "tensor size overflows");
    *out = blocks * (uint64_t)d->block_bytes;
    return MT_OK;
}

/* ---- scalar conversions ----------------------------------------------- */
static inline uint32_t f2u(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}
static inline float u2f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float mt_bf16_to_f32(uint16_t h) { return u2f((uint32_t)h << 16); }

uint16_t mt_f32_to_bf16(float f) {
    uint32_t u = f2u(f);
    if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)((u >> 16) | 64); /* quiet NaN */
    return (uint16_t)((u + (0x7fff + ((u >> 16) & 1))) >> 16);
}

float mt_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    if (exp == 0) {
        if (mant == 0) return u2f(sign);
        /* subnormal: value = mant * 2^-24 */
        float v = (float)mant * 5.9604644775390625e-8f;
        return sign ? -v : v;
    }
    if (exp == 31) return u2f(sign | 0x7f800000 | (mant << 13));
    return u2f(sign | ((exp + 112) << 23) | (mant << 13));
}

/* Round-to-nearest-even, as the F16C instruction vcvtps2ph with imm 0. */
uint16_t mt_f32_to_f16(float f) {
    uint32_t u = f2u(f);
    uint32_t sign = (u >> 16) & 0x8000;
    uint32_t a = u & 0x7fffffff;
    if (a > 0x7f800000) return (uint16_t)(sign | 0x7e00 | ((a >> 13) & 0x3ff)); /* NaN */
    if (a >= 0x477ff000) return (uint16_t)(sign | 0x7c00); /* rounds to >= 65520: inf */
    if (a < 0x38800000) {                                  /* below smallest normal 2^-14 */
        /* subnormal or zero: round a * 2^24 to an integer, ties to even */
        float v = u2f(a) * 16777216.0f; /* exact: scaling by a power of two */
        uint32_t m = (uint32_t)v;
        float frac = v - (float)m;
        if (frac > 0.5f || (frac == 0.5f && (m & 1))) m++;
        return (uint16_t)(sign | m);
    }
    uint32_t r = a + 0x0fff + ((a >> 13) & 1); /* round mantissa to 10 bits */
    r -= 0x38000000;                           /* rebias exponent 127 -> 15 */
    return (uint16_t)(sign | (r >> 13));
}

/* ---- rows -------------------------------------------------------------- */
int mt_row_to_f32(mt_dtype t, const void *src, float *dst, int64_t n) {
    const uint8_t *s = src;
    switch (t) {
    case MT_DT_F32: memcpy(dst, src, (size_t)n * 4); return MT_OK;
    case MT_DT_F16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            dst[i] = mt_f16_to_f32(h);
        }
        return MT_OK;
    case MT_DT_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            dst[i] = mt_bf16_to_f32(h);
        }
        return MT_OK;
    case MT_DT_Q8_0:
        if (n % 32) return mt_seterr(MT_ERR_FORMAT, "q8_0 row of %lld elements", (long long)n);
        for (int64_t b = 0; b < n / 32; b++) {
            const uint8_t *blk = s + 34 * b;
            uint16_t h;
            memcpy(&h, blk, 2);
            float d = mt_f16_to_f32(h);
            for (int j = 0; j < 32; j++) dst[32 * b + j] = d * (float)(int8_t)blk[2 + j];
        }
        return MT_OK;
    case MT_DT_Q4_0:
        if (n % 32) return mt_seterr(MT_ERR_FORMAT, "q4_0 row of %lld elements", (long long)n);
        for (int64_t b = 0; b < n / 32; b++) {
            const uint8_t *blk = s + 18 * b;
            uint16_t h;
            memcpy(&h, blk, 2);
            float d = mt_f16_to_f32(h);
            for (int j = 0; j < 16; j++) {
                dst[32 * b + j] = d * (float)((blk[2 + j] & 0x0f) - 8);
                dst[32 * b + j + 16] = d * (float)((blk[2 + j] >> 4) - 8);
            }
        }
        return MT_OK;
    case MT_DT_TQ1_0:
        if (n % 256) return mt_seterr(MT_ERR_FORMAT, "tq1_0 row of %lld elements", (long long)n);
        for (int64_t b = 0; b < n / 256; b++) {
            const uint8_t *blk = s + 54 * b;
            int8_t q[256];
            uint16_t h;
            memcpy(&h, blk + 52, 2);
            const float d = mt_f16_to_f32(h);
            mt_tq1_0_unpack(blk, q);
            for (int e = 0; e < 256; e++) dst[256 * b + e] = d * (float)q[e];
        }
        return MT_OK;
    case MT_DT_TQ2_0: /* llama.cpp block_tq2_0: qs[64] (2-bit q+1), f16 d */
        if (n % 256) return mt_seterr(MT_ERR_FORMAT, "tq2_0 row of %lld elements", (long long)n);
        for (int64_t b = 0; b < n / 256; b++) {
            const uint8_t *blk = s + 66 * b;
            uint16_t h;
            memcpy(&h, blk + 64, 2);
            float d = mt_f16_to_f32(h);
            for (int e = 0; e < 256; e++)
                dst[256 * b + e] = d * (float)(((blk[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3) - 1);
        }
        return MT_OK;
    default:
        return mt_seterr(MT_ERR_UNSUPPORTED, "conversion from %s to f32 is not supported",
                         mt_dtype_get(t) ? mt_dtype_get(t)->name : "?");
    }
}

/* block_tq1_0 {uint8 qs[48]; uint8 qh[4]; f16 d}: byte m < 32 holds weights
 * m + 32k (k = 0..4), byte 32 + m < 48 weights 160 + m + 16k, qh[j] weights
 * 240 + j + 4k (k = 0..3, then a zero digit), each byte the base-3 number of
 * its q + 1 digits (first weight most significant) scaled to 256/243 and
 * rounded up, so that digit k is ((uint8)(byte · 3^k) · 3) >> 8. */
void mt_tq1_0_unpack(const uint8_t *blk, int8_t *q) {
    static const uint8_t pow3[5] = {1, 3, 9, 27, 81};
    for (int k = 0; k < 5; k++) {
        for (int m = 0; m < 32; m++) q[m + 32 * k] = (int8_t)((((uint8_t)(blk[m] * pow3[k])) * 3) >> 8) - 1;
        for (int m = 0; m < 16; m++) q[160 + m + 16 * k] = (int8_t)((((uint8_t)(blk[32 + m] * pow3[k])) * 3) >> 8) - 1;
    }
    for (int k = 0; k < 4; k++)
        for (int j = 0; j < 4; j++) q[240 + j + 4 * k] = (int8_t)((((uint8_t)(blk[48 + j] * pow3[k])) * 3) >> 8) - 1;
}

void mt_tq1_0_pack(const int8_t *q, uint16_t d_f16, uint8_t *blk) {
    for (int m = 0; m < 32; m++) {
        unsigned v = 0;
        for (int k = 0; k < 5; k++) v = v * 3 + (unsigned)(q[m + 32 * k] + 1);
        blk[m] = (uint8_t)((v * 256 + 242) / 243);
    }
    for (int m = 0; m < 16; m++) {
        unsigned v = 0;
        for (int k = 0; k < 5; k++) v = v * 3 + (unsigned)(q[160 + m + 16 * k] + 1);
        blk[32 + m] = (uint8_t)((v * 256 + 242) / 243);
    }
    for (int j = 0; j < 4; j++) {
        unsigned v = 0;
        for (int k = 0; k < 4; k++) v = v * 3 + (unsigned)(q[240 + j + 4 * k] + 1);
        v *= 3;
        blk[48 + j] = (uint8_t)((v * 256 + 242) / 243);
    }
    memcpy(blk + 52, &d_f16, 2);
}

int mt_row_from_f32(mt_dtype t, const float *src, void *dst, int64_t n) {
    uint8_t *d8 = dst;
    switch (t) {
    case MT_DT_F32: memcpy(dst, src, (size_t)n * 4); return MT_OK;
    case MT_DT_F16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = mt_f32_to_f16(src[i]);
            memcpy(d8 + 2 * i, &h, 2);
        }
        return MT_OK;
    case MT_DT_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = mt_f32_to_bf16(src[i]);
            memcpy(d8 + 2 * i, &h, 2);
        }
        return MT_OK;
    case MT_DT_Q8_0:
        if (n % 32) return mt_seterr(MT_ERR_FORMAT, "q8_0 needs rows of whole 32-blocks, got %lld", (long long)n);
        for (int64_t b = 0; b < n / 32; b++) {
            const float *x = src + 32 * b;
            uint8_t *blk = d8 + 34 * b;
            float amax = 0.0f;
            for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
            const float d = amax / 127.0f;
            const float id = d ? 1.0f / d : 0.0f;
            uint16_t h = mt_f32_to_f16(d);
            memcpy(blk, &h, 2);
            for (int j = 0; j < 32; j++) blk[2 + j] = (uint8_t)(int8_t)roundf(x[j] * id);
        }
        return MT_OK;
    case MT_DT_Q4_0:
        if (n % 32) return mt_seterr(MT_ERR_FORMAT, "q4_0 needs rows of whole 32-blocks, got %lld", (long long)n);
        for (int64_t b = 0; b < n / 32; b++) {
            const float *x = src + 32 * b;
            uint8_t *blk = d8 + 18 * b;
            float amax = 0.0f, max = 0.0f;
            for (int j = 0; j < 32; j++) {
                if (amax < fabsf(x[j])) {
                    amax = fabsf(x[j]);
                    max = x[j];
                }
            }
            const float d = max / -8.0f;
            const float id = d ? 1.0f / d : 0.0f;
            uint16_t h = mt_f32_to_f16(d);
            memcpy(blk, &h, 2);
            for (int j = 0; j < 16; j++) {
                const float x0 = x[j] * id, x1 = x[16 + j] * id;
                uint8_t xi0 = (uint8_t)((int8_t)(x0 + 8.5f) < 15 ? (int8_t)(x0 + 8.5f) : 15);
                uint8_t xi1 = (uint8_t)((int8_t)(x1 + 8.5f) < 15 ? (int8_t)(x1 + 8.5f) : 15);
                blk[2 + j] = (uint8_t)(xi0 | (xi1 << 4));
            }
        }
        return MT_OK;
    default:
        return mt_seterr(MT_ERR_UNSUPPORTED, "conversion from f32 to %s is not supported",
                         mt_dtype_get(t) ? mt_dtype_get(t)->name : "?");
    }
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
