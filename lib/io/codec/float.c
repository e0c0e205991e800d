/* float.c — the plain float storage types: f32 (IEEE binary32, copied),
 * f16 (IEEE binary16) and bf16 (the top 16 bits of a binary32), both
 * little-endian, converted exactly with round-to-nearest-even. */
#include <string.h>

#include "codec_impl.h"

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

void mt_f32_row_to_f32(const void *src, float *dst, int64_t n) { memcpy(dst, src, (size_t)n * 4); }
void mt_f32_row_from_f32(const float *src, void *dst, int64_t n) { memcpy(dst, src, (size_t)n * 4); }

/* f16 and bf16 rows: one 16-bit word per element, little-endian. */
static void half_to_f32(const void *src, float *dst, int64_t n, float (*cv)(uint16_t)) {
    const uint8_t *s = src;
    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, s + 2 * i, 2);
        dst[i] = cv(h);
    }
}

static void half_from_f32(const float *src, void *dst, int64_t n, uint16_t (*cv)(float)) {
    uint8_t *d8 = dst;
    for (int64_t i = 0; i < n; i++) {
        const uint16_t h = cv(src[i]);
        memcpy(d8 + 2 * i, &h, 2);
    }
}

void mt_f16_row_to_f32(const void *src, float *dst, int64_t n) { half_to_f32(src, dst, n, mt_f16_to_f32); }
void mt_f16_row_from_f32(const float *src, void *dst, int64_t n) { half_from_f32(src, dst, n, mt_f32_to_f16); }
void mt_bf16_row_to_f32(const void *src, float *dst, int64_t n) { half_to_f32(src, dst, n, mt_bf16_to_f32); }
void mt_bf16_row_from_f32(const float *src, void *dst, int64_t n) { half_from_f32(src, dst, n, mt_f32_to_bf16); }
