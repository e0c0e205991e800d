/* test_dtype.c — the storage-type table (mt_dtype.h) and its codecs
 * (mt_codec.h): every row's invariants; the ggml type ids, block sizes and
 * general.file_type numbers against llama.cpp's ggml.h / llama.h (copied
 * below by hand, not from the table); from_f32 then to_f32 within each
 * type's error bound, computed here from the definition of the format; the
 * ternary blocks decoded by an independent digit extraction; the AutoGPTQ
 * packing against its formula and round trips. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "moetool/mt_common.h"
#include "testutil.h"

/* ---- llama.cpp's numbers (ggml.h enum ggml_type, ggml_type_size and
 * ggml_blck_size, llama.h enum llama_ftype) ---------------------------- */
static const struct {
    mt_dtype t;
    const char *name;
    int ggml, elems, bytes, ftype;
} g_ref[] = {
    {MT_DT_F32, "F32", 0, 1, 4, 0},       /* LLAMA_FTYPE_ALL_F32 */
    {MT_DT_F16, "F16", 1, 1, 2, 1},       /* LLAMA_FTYPE_MOSTLY_F16 */
    {MT_DT_Q4_0, "Q4_0", 2, 32, 18, 2},   /* LLAMA_FTYPE_MOSTLY_Q4_0 */
    {MT_DT_Q8_0, "Q8_0", 8, 32, 34, 7},   /* LLAMA_FTYPE_MOSTLY_Q8_0 */
    {MT_DT_I8, "I8", 24, 1, 1, -1},
    {MT_DT_I16, "I16", 25, 1, 2, -1},
    {MT_DT_I32, "I32", 26, 1, 4, -1},
    {MT_DT_I64, "I64", 27, 1, 8, -1},
    {MT_DT_F64, "F64", 28, 1, 8, -1},
    {MT_DT_BF16, "BF16", 30, 1, 2, 32},   /* LLAMA_FTYPE_MOSTLY_BF16 */
    {MT_DT_TQ1_0, "TQ1_0", 34, 256, 54, 36}, /* LLAMA_FTYPE_MOSTLY_TQ1_0 */
    {MT_DT_TQ2_0, "TQ2_0", 35, 256, 66, 37}, /* LLAMA_FTYPE_MOSTLY_TQ2_0 */
    {MT_DT_Q4_1, "Q4_1", 3, 32, 20, 3},   /* LLAMA_FTYPE_MOSTLY_Q4_1 */
    {MT_DT_Q5_0, "Q5_0", 6, 32, 22, 8},   /* LLAMA_FTYPE_MOSTLY_Q5_0 */
    {MT_DT_Q5_1, "Q5_1", 7, 32, 24, 9},   /* LLAMA_FTYPE_MOSTLY_Q5_1 */
    {MT_DT_Q2_K, "Q2_K", 10, 256, 84, 10},   /* LLAMA_FTYPE_MOSTLY_Q2_K */
    {MT_DT_Q3_K, "Q3_K", 11, 256, 110, 12},  /* LLAMA_FTYPE_MOSTLY_Q3_K_M */
    {MT_DT_Q4_K, "Q4_K", 12, 256, 144, 15},  /* LLAMA_FTYPE_MOSTLY_Q4_K_M */
    {MT_DT_Q5_K, "Q5_K", 13, 256, 176, 17},  /* LLAMA_FTYPE_MOSTLY_Q5_K_M */
    {MT_DT_Q6_K, "Q6_K", 14, 256, 210, 18},  /* LLAMA_FTYPE_MOSTLY_Q6_K */
    {MT_DT_Q8_K, "Q8_K", 15, 256, 292, -1},  /* activations only */
    {MT_DT_IQ4_NL, "IQ4_NL", 20, 32, 18, 25},   /* LLAMA_FTYPE_MOSTLY_IQ4_NL */
    {MT_DT_IQ4_XS, "IQ4_XS", 23, 256, 136, 30}, /* LLAMA_FTYPE_MOSTLY_IQ4_XS */
    {MT_DT_IQ2_XXS, "IQ2_XXS", 16, 256, 66, 19}, /* LLAMA_FTYPE_MOSTLY_IQ2_XXS */
    {MT_DT_IQ2_XS, "IQ2_XS", 17, 256, 74, 20},   /* LLAMA_FTYPE_MOSTLY_IQ2_XS */
    {MT_DT_IQ2_S, "IQ2_S", 22, 256, 82, 28},     /* LLAMA_FTYPE_MOSTLY_IQ2_S */
    {MT_DT_IQ3_XXS, "IQ3_XXS", 18, 256, 98, 23}, /* LLAMA_FTYPE_MOSTLY_IQ3_XXS */
    {MT_DT_IQ3_S, "IQ3_S", 21, 256, 110, 26},    /* LLAMA_FTYPE_MOSTLY_IQ3_S */
    {MT_DT_IQ1_S, "IQ1_S", 19, 256, 50, 24},     /* LLAMA_FTYPE_MOSTLY_IQ1_S */
    {MT_DT_IQ1_M, "IQ1_M", 29, 256, 56, 31},     /* LLAMA_FTYPE_MOSTLY_IQ1_M */
};
#define N_REF (sizeof g_ref / sizeof g_ref[0])

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void) { return tu_rand_u32(&g_rng); }
static float rndf(void) { return tu_rand_unit(&g_rng); }

/* ---- every row ---------------------------------------------------------- */
static void test_rows(void **state) {
    (void)state;
    assert_null(mt_dtype_get(MT_DT_COUNT));
    assert_null(mt_dtype_get((mt_dtype)-1));
    assert_string_equal(mt_dtype_name(MT_DT_COUNT), "?");
    for (int i = 0; i < MT_DT_COUNT; i++) {
        const mt_dtype t = (mt_dtype)i;
        const mt_dtype_info *d = mt_dtype_get(t);
        assert_non_null(d);
        assert_non_null(d->name);
        assert_string_equal(mt_dtype_name(t), d->name);
        assert_int_equal(mt_dtype_from_name(d->name), i);
        for (int j = 0; j < i; j++) assert_true(strcmp(d->name, mt_dtype_get((mt_dtype)j)->name) != 0);
        assert_true(d->block_elems >= 1);
        assert_true(d->block_bytes >= 0);
        if (d->block_bytes == 0) assert_int_equal(i, MT_DT_QMOE); /* the one variable-size type */
        /* safetensors holds scalars only; the name maps back */
        if (d->st_name) {
            assert_int_equal(d->block_elems, 1);
            assert_int_equal(mt_dtype_from_st_name(d->st_name), i);
        }
        assert_ptr_equal(mt_dtype_st_name(t), d->st_name);
        if (d->torch_name) assert_int_equal(d->block_elems, 1);
        /* GGUF: id maps back, llama.cpp's name for it */
        assert_int_equal(mt_dtype_ggml_type(t), d->ggml_type);
        if (d->ggml_type >= 0) {
            assert_int_equal(mt_dtype_from_ggml_type((uint32_t)d->ggml_type), i);
            assert_string_not_equal(mt_ggml_type_name((uint32_t)d->ggml_type), "unknown");
        }
        /* file_type: round trip, or the documented default */
        if (d->gguf_file_type >= 0) {
            assert_true(d->ggml_type >= 0);
            assert_int_equal(mt_dtype_gguf_file_type(t), (uint32_t)d->gguf_file_type);
            assert_int_equal(mt_dtype_from_gguf_file_type((uint32_t)d->gguf_file_type), i);
        } else {
            assert_int_equal(mt_dtype_gguf_file_type(t), MT_GGUF_FILE_TYPE_DEFAULT);
        }
        /* codecs: a writer implies a reader; readers only for fixed sizes */
        if (d->from_f32) assert_non_null(d->to_f32);
        if (d->to_f32) {
            assert_true(d->block_bytes > 0);
            assert_true(d->is_float);
        }
        if (d->gptq_bits) {
            assert_int_equal(d->block_elems, 32);
            assert_int_equal(mt_dtype_from_gptq_bits(d->gptq_bits), i);
            assert_non_null(d->to_f32);
        }
        /* plain floats: f32, f16, bf16 exactly; torch name in config.json */
        const int plain = i == MT_DT_F32 || i == MT_DT_F16 || i == MT_DT_BF16;
        assert_int_equal(mt_dtype_is_plain_float(t), plain);
        assert_string_equal(mt_dtype_config_torch_name(t, "x"),
                            i == MT_DT_F32 ? "float32" : i == MT_DT_F16 ? "float16" : i == MT_DT_BF16 ? "bfloat16" : "x");
        /* sizes */
        uint64_t nb = 0;
        if (d->block_bytes) {
            assert_int_equal(mt_dtype_nbytes(t, 3 * (uint64_t)d->block_elems, &nb), MT_OK);
            assert_int_equal(nb, 3 * (uint64_t)d->block_bytes);
            if (d->block_elems > 1) assert_int_equal(mt_dtype_nbytes(t, 1, &nb), MT_ERR_FORMAT);
        } else {
            assert_int_equal(mt_dtype_nbytes(t, 1, &nb), MT_ERR_UNSUPPORTED);
        }
    }
    assert_int_equal(mt_dtype_from_name("float16"), MT_DT_F16);
    assert_int_equal(mt_dtype_from_name("BFLOAT16"), MT_DT_BF16);
    assert_int_equal(mt_dtype_from_name("float32"), MT_DT_F32);
    assert_int_equal(mt_dtype_from_name("Q8_0"), MT_DT_Q8_0);
    assert_int_equal(mt_dtype_from_name("int8"), -1);
    assert_int_equal(mt_dtype_from_name("q4_k"), MT_DT_Q4_K);
    assert_int_equal(mt_dtype_from_name("Q6_K"), MT_DT_Q6_K);
    assert_int_equal(mt_dtype_from_name("IQ2_XXS"), MT_DT_IQ2_XXS);
    assert_int_equal(mt_dtype_from_name("mxfp4"), -1);
    assert_int_equal(mt_dtype_from_st_name("bf16"), -1); /* safetensors names are case-sensitive */
    assert_int_equal(mt_dtype_from_st_name("F8_E4M3"), MT_DT_F8_E4M3);
    assert_int_equal(mt_dtype_from_gptq_bits(4), MT_DT_Q4_0);
    assert_int_equal(mt_dtype_from_gptq_bits(8), MT_DT_Q8_0);
    assert_int_equal(mt_dtype_from_gptq_bits(3), -1);
}

/* ---- against llama.cpp's numbers ------------------------------------- */
static void test_llama_cpp_numbers(void **state) {
    (void)state;
    int seen_ggml = 0;
    for (size_t k = 0; k < N_REF; k++) {
        const mt_dtype_info *d = mt_dtype_get(g_ref[k].t);
        assert_int_equal(d->ggml_type, g_ref[k].ggml);
        assert_int_equal(d->block_elems, g_ref[k].elems);
        assert_int_equal(d->block_bytes, g_ref[k].bytes);
        assert_int_equal(d->gguf_file_type, g_ref[k].ftype);
        assert_string_equal(mt_ggml_type_name((uint32_t)g_ref[k].ggml), g_ref[k].name);
    }
    for (int i = 0; i < MT_DT_COUNT; i++) seen_ggml += mt_dtype_get((mt_dtype)i)->ggml_type >= 0;
    assert_int_equal(seen_ggml, (int)N_REF); /* every GGUF type of ours is in the list above */
    assert_string_equal(mt_ggml_type_name(12), "Q4_K");
    assert_string_equal(mt_ggml_type_name(4), "unknown"); /* retired */
    assert_string_equal(mt_ggml_type_name(1000), "unknown");
    assert_int_equal(mt_dtype_from_ggml_type(12), MT_DT_Q4_K);
    assert_int_equal(mt_dtype_from_ggml_type(39), -1); /* MXFP4: not read */
    assert_int_equal(mt_dtype_from_gguf_file_type(15), MT_DT_Q4_K); /* MOSTLY_Q4_K_M */
    assert_int_equal(mt_dtype_from_gguf_file_type(14), -1);         /* MOSTLY_Q4_K_S: no row of its own */
}

/* ---- from_f32 then to_f32 within the format's bound -------------------- */
/* Largest error of rounding v to f16: half an ulp, 2^-25 among subnormals. */
static double f16_err(double v) { return fmax(fabs(v) * ldexp(1.0, -11), ldexp(1.0, -25)); }

static void check_round_trip(mt_dtype t, const float *x, int64_t n) {
    const mt_dtype_info *d = mt_dtype_get(t);
    uint8_t *buf = malloc((size_t)(n / d->block_elems * d->block_bytes));
    float *y = malloc((size_t)n * sizeof *y);
    assert_non_null(buf);
    assert_non_null(y);
    assert_int_equal(mt_row_from_f32(t, x, buf, n), MT_OK);
    assert_int_equal(mt_row_to_f32(t, buf, y, n), MT_OK);
    for (int64_t b = 0; b < n / d->block_elems; b++) {
        const float *xb = x + b * d->block_elems, *yb = y + b * d->block_elems;
        double amax = 0, smax = 0;
        for (int j = 0; j < d->block_elems; j++)
            if (fabs(xb[j]) > amax) amax = fabs(xb[j]), smax = xb[j];
        for (int j = 0; j < d->block_elems; j++) {
            const double err = fabs((double)yb[j] - (double)xb[j]);
            double bound;
            if (t == MT_DT_F32) bound = 0;
            else if (t == MT_DT_F16) bound = f16_err(xb[j]);
            else if (t == MT_DT_BF16) bound = fabs(xb[j]) * ldexp(1.0, -8); /* 8-bit mantissa */
            /* code error d/2 (q4_0: d, where code 8 clamps to 7) plus |q| times
             * the f16 rounding of d (relative, or absolute when subnormal) */
            else if (t == MT_DT_Q8_0) bound = amax / 127 * 0.5 + 127 * f16_err(amax / 127) + 1e-9;
            else if (t == MT_DT_Q4_0) {
                const double dq = smax / -8, r = dq ? xb[j] / dq : 0;
                bound = amax / 8 * (r > 7.5 ? 1.0 : 0.5) + 8 * f16_err(amax / 8) + 1e-9;
            }
            else if (d->blk) { /* a code step of the super-block's range, doubled for clipping and scale rounding */
                double bamax = 0;
                for (int k = 0; k < d->block_elems; k++) bamax = fmax(bamax, fabs(xb[k]));
                bound = 2.0 * 2.0 * bamax / (d->blk->qmax - d->blk->qmin) + 1e-6 * bamax + 1e-30;
            }
            else if (t == MT_DT_IQ4_NL || t == MT_DT_IQ4_XS) {
                /* the table's widest gap (24 of 127 steps) halved, times the
                 * block scale, doubled for the 6-bit sub-block scales of
                 * iq4_xs: at most 0.2 of the block's largest |x| */
                double bamax = 0;
                for (int k = 0; k < d->block_elems; k++) bamax = fmax(bamax, fabs(xb[k]));
                bound = 0.2 * bamax + 1e-30;
            }
            else fail_msg("no bound for %s", d->name);
            if (err > bound) fail_msg("%s: element %lld: %g -> %g (error %g > %g)", d->name, (long long)(b * d->block_elems + j),
                                      xb[j], yb[j], err, bound);
        }
        /* the element of largest magnitude is a whole code: ±127 d or -8 d */
        if (t == MT_DT_Q8_0 || t == MT_DT_Q4_0) {
            uint16_t h;
            memcpy(&h, buf + b * d->block_bytes, 2);
            const double dd = mt_f16_to_f32(h);
            const double want = t == MT_DT_Q8_0 ? amax / 127 : smax / -8;
            assert_true(fabs(dd - want) <= f16_err(want));
        }
    }
    if (d->blk) {
        /* The scale search does at least about as well as plain rounding on
         * each sub-block's own min..max (or ±absmax) grid with an f32 step. */
        const int sub = d->blk->sub, lv = d->blk->qmax - d->blk->qmin, has_min = d->blk->qmin == 0;
        double e = 0, e_naive = 0;
        for (int64_t s0 = 0; s0 < n; s0 += sub) {
            double lo = 0, hi = 0, am = 0;
            for (int j = 0; j < sub; j++) {
                lo = fmin(lo, x[s0 + j]);
                hi = fmax(hi, x[s0 + j]);
                am = fmax(am, fabs(x[s0 + j]));
            }
            const double step = has_min ? (hi - lo) / lv : 2 * am / lv;
            for (int j = 0; j < sub; j++) {
                const double v = x[s0 + j];
                const double r = step > 0 ? (has_min ? lo + step * nearbyint((v - lo) / step) : step * nearbyint(v / step)) : 0;
                e_naive += (r - v) * (r - v);
                e += ((double)y[s0 + j] - v) * ((double)y[s0 + j] - v);
            }
        }
        /* 1.6: q2_K minimises absolute error with 4-bit scales and mins (on
         * heavy tails 1.49x; 0.65-0.73x elsewhere; the others 0.26-1.13x).
         * Not on the 1e-3 rows: q6_K's d = max/(32·128) is an f16 subnormal
         * there and its rounding dominates (2.2x). */
        double rowmax = 0;
        for (int64_t i = 0; i < n; i++) rowmax = fmax(rowmax, fabs(x[i]));
        if (rowmax > 0.01 && e > 1.6 * e_naive + 1e-30)
            fail_msg("%s: squared error %g > 1.6 x plain rounding's %g", d->name, e, e_naive);
    }
    if (t == MT_DT_BF16)
        for (int64_t i = 0; i < n; i++) {
            uint32_t u;
            memcpy(&u, &y[i], 4);
            assert_int_equal(u & 0xffff, 0);
        }
    free(buf);
    free(y);
}

static void test_round_trips(void **state) {
    (void)state;
    enum { N = 1024 };
    float *x = malloc(N * sizeof *x);
    assert_non_null(x);
    int tried = 0;
    for (int i = 0; i < MT_DT_COUNT; i++) {
        const mt_dtype_info *d = mt_dtype_get((mt_dtype)i);
        if (!d->from_f32) {
            float z[256] = {0};
            uint8_t buf[1024];
            assert_int_equal(mt_row_from_f32((mt_dtype)i, z, buf, d->block_elems), MT_ERR_UNSUPPORTED);
            continue;
        }
        for (int rep = 0; rep < 4; rep++) {
            const float scale = rep == 0 ? 1.0f : rep == 1 ? 1e-3f : rep == 2 ? 300.0f : 0.05f;
            for (int k = 0; k < N; k++) x[k] = scale * rndf();
            if (rep == 3) /* heavy tails and exact zeros in blocks */
                for (int k = 0; k < N; k++) x[k] = k % 7 == 0 ? 0.0f : k % 97 == 0 ? 40.0f * x[k] : x[k];
            if (rep == 3) for (int k = 64; k < 96; k++) x[k] = 0.0f; /* an all-zero block */
            check_round_trip((mt_dtype)i, x, N);
        }
        tried++;
        if (d->block_elems > 1) { /* partial blocks are refused */
            uint8_t buf[64];
            float y[64];
            assert_int_equal(mt_row_from_f32((mt_dtype)i, x, buf, d->block_elems - 1), MT_ERR_FORMAT);
            assert_int_equal(mt_row_to_f32((mt_dtype)i, buf, y, d->block_elems + 1), MT_ERR_FORMAT);
        }
    }
    assert_int_equal(tried, 15); /* f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k..q6_k, iq4_nl, iq4_xs */
    float y[4];
    assert_int_equal(mt_row_to_f32(MT_DT_I32, x, y, 4), MT_ERR_UNSUPPORTED);
    assert_int_equal(mt_row_to_f32(MT_DT_QMOE, x, y, 4), MT_ERR_UNSUPPORTED);
    free(x);
}

/* ---- ternary blocks: independent decoders ------------------------------
 * tq2_0 as llama.cpp's dequantize_row_tq2_0 walks it; tq1_0 by the inverse
 * of the 256/243 scaling: a byte b = ceil(v·256/243) holds v = b·243 >> 8,
 * whose base-3 digits (most significant first) are the codes + 1. */
static void tq2_ref(const uint8_t *blk, int8_t *q) {
    int e = 0;
    for (int j = 0; j < 64; j += 32)
        for (int l = 0; l < 4; l++)
            for (int m = 0; m < 32; m++) q[e++] = (int8_t)(((blk[j + m] >> (l * 2)) & 3) - 1);
}
static void digits(uint8_t b, int n, int8_t *out) {
    unsigned v = ((unsigned)b * 243) >> 8;
    for (int k = n - 1; k >= 0; k--, v /= 3) out[k] = (int8_t)(v % 3) - 1;
}
static void tq1_ref(const uint8_t *blk, int8_t *q) {
    int8_t dg[5];
    for (int m = 0; m < 32; m++) {
        digits(blk[m], 5, dg);
        for (int k = 0; k < 5; k++) q[m + 32 * k] = dg[k];
    }
    for (int m = 0; m < 16; m++) {
        digits(blk[32 + m], 5, dg);
        for (int k = 0; k < 5; k++) q[160 + m + 16 * k] = dg[k];
    }
    for (int j = 0; j < 4; j++) {
        digits(blk[48 + j], 5, dg);
        assert_int_equal(dg[4], -1); /* the padding digit is 0, stored as 0 + 1 - 1 */
        for (int k = 0; k < 4; k++) q[240 + j + 4 * k] = dg[k];
    }
}

static void test_ternary_blocks(void **state) {
    (void)state;
    for (int rep = 0; rep < 200; rep++) {
        int8_t q[256], got[256], ref[256];
        for (int e = 0; e < 256; e++) q[e] = (int8_t)(rep == 0 ? 1 : rep == 1 ? -1 : (int)(rnd() % 3) - 1);
        const uint16_t d = mt_f32_to_f16(0.01f * (float)(rep + 1));
        uint8_t b1[MT_TQ1_0_BYTES], b2[MT_TQ2_0_BYTES];
        mt_tq1_0_pack(q, d, b1);
        mt_tq2_0_pack(q, d, b2);
        tq1_ref(b1, ref);
        assert_memory_equal(ref, q, 256);
        tq2_ref(b2, ref);
        assert_memory_equal(ref, q, 256);
        assert_int_equal(mt_tq1_0_unpack(b1, got), d);
        assert_memory_equal(got, q, 256);
        assert_int_equal(mt_tq2_0_unpack(b2, got), d);
        assert_memory_equal(got, q, 256);
        /* the table's readers: d·q */
        float y1[256], y2[256];
        assert_int_equal(mt_row_to_f32(MT_DT_TQ1_0, b1, y1, 256), MT_OK);
        assert_int_equal(mt_row_to_f32(MT_DT_TQ2_0, b2, y2, 256), MT_OK);
        for (int e = 0; e < 256; e++) {
            assert_true(y1[e] == mt_f16_to_f32(d) * (float)q[e]);
            assert_true(y2[e] == y1[e]);
        }
    }
}

/* ---- q8_0 / q4_0 blocks from codes ------------------------------------- */
static void test_block_codes(void **state) {
    (void)state;
    for (int rep = 0; rep < 100; rep++) {
        int8_t q8[32], q4[32], got[32];
        for (int j = 0; j < 32; j++) {
            q8[j] = (int8_t)(rnd() & 0xff);
            q4[j] = (int8_t)((int)(rnd() % 16) - 8);
        }
        const uint16_t d = mt_f32_to_f16(0.5f + (float)rep);
        uint8_t b8[MT_Q8_0_BYTES], b4[MT_Q4_0_BYTES];
        mt_q8_0_pack(q8, d, b8);
        mt_q4_0_pack(q4, d, b4);
        /* layout by hand: f16 d first, then codes (q4_0: j low, 16 + j high, +8) */
        assert_int_equal(b8[0] | b8[1] << 8, d);
        assert_int_equal(b4[0] | b4[1] << 8, d);
        for (int j = 0; j < 32; j++) assert_int_equal((int8_t)b8[2 + j], q8[j]);
        for (int j = 0; j < 16; j++) assert_int_equal(b4[2 + j], (uint8_t)((q4[j] + 8) | (q4[16 + j] + 8) << 4));
        assert_int_equal(mt_q8_0_unpack(b8, got), d);
        assert_memory_equal(got, q8, 32);
        assert_int_equal(mt_q4_0_unpack(b4, got), d);
        assert_memory_equal(got, q4, 32);
    }
}

/* ---- AutoGPTQ packing -------------------------------------------------- */
static void test_gptq(void **state) {
    (void)state;
    for (int bits = 4; bits <= 8; bits += 4) {
        const mt_dtype t = (mt_dtype)mt_dtype_from_gptq_bits(bits);
        const int per = 32 / bits;
        const int64_t R = 16, C = 96, NB = C / 32;
        const uint64_t rb = (uint64_t)(NB * mt_dtype_get(t)->block_bytes);
        float *x = malloc((size_t)(R * C) * sizeof *x), *y0 = malloc((size_t)C * 4), *y1 = malloc((size_t)C * 4);
        uint8_t *m = malloc((size_t)(R * (int64_t)rb)), *back = malloc((size_t)rb);
        uint32_t *qw = calloc((size_t)(C / per * R), 4), *qz = malloc((size_t)(NB * R / per) * 4);
        uint16_t *sc = malloc((size_t)(NB * R) * 2);
        int32_t *gi = malloc((size_t)C * 4);
        for (int64_t i = 0; i < R * C; i++) x[i] = rndf();
        for (int64_t r = 0; r < R; r++) assert_int_equal(mt_row_from_f32(t, x + r * C, m + (uint64_t)r * rb, C), MT_OK);
        mt_gptq_pack(bits, m, rb, R, C, qw, qz, sc, gi);
        /* the formula: qweight word [i/per][r] bits b·(i%per) = q + 2^(b-1);
         * zeros 2^(b-1) - 1; g_idx i / 32 */
        for (int64_t r = 0; r < R; r++)
            for (int64_t i = 0; i < C; i++) {
                const uint8_t *blk = m + (uint64_t)r * rb + (uint64_t)(i / 32) * (uint64_t)mt_dtype_get(t)->block_bytes;
                float f[32];
                assert_int_equal(mt_row_to_f32(t, blk, f, 32), MT_OK);
                uint16_t h;
                memcpy(&h, blk, 2);
                const int code = (int)(qw[(i / per) * R + r] >> (bits * (i % per))) & ((1 << bits) - 1);
                assert_true(f[i % 32] == mt_f16_to_f32(h) * (float)(code - (1 << (bits - 1))));
                assert_int_equal(sc[(i / 32) * R + r], h);
            }
        for (int64_t i = 0; i < NB * R / per; i++)
            for (int k = 0; k < per; k++) assert_int_equal((qz[i] >> (bits * k)) & ((1u << bits) - 1), (1u << (bits - 1)) - 1);
        for (int64_t i = 0; i < C; i++) assert_int_equal(gi[i], i / 32);
        /* reading it back: blocks again, identical bytes; f32 equal to the blocks' */
        mt_gptq_view v = {bits, R, C, NB, 1, (const uint8_t *)qw, (const uint8_t *)qz, (const uint8_t *)sc, NULL};
        assert_true(mt_gptq_is_block(&v));
        for (int64_t r = 0; r < R; r++) {
            mt_gptq_row_to_blocks(&v, r, back);
            assert_memory_equal(back, m + (uint64_t)r * rb, rb);
            mt_gptq_row_to_f32(&v, r, y1);
            assert_int_equal(mt_row_to_f32(t, m + (uint64_t)r * rb, y0, C), MT_OK);
            assert_memory_equal(y0, y1, (size_t)C * 4);
        }
        v.g_idx = (const uint8_t *)gi; /* an explicit g_idx is not the block layout */
        assert_false(mt_gptq_is_block(&v));
        assert_int_equal(mt_gptq_group(&v, 95), 2);
        v.g_idx = NULL;
        v.zero_offset = 0; /* zero points off by one: not symmetric */
        assert_false(mt_gptq_is_block(&v));
        free(x), free(y0), free(y1), free(m), free(back), free(qw), free(qz), free(sc), free(gi);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rows),         cmocka_unit_test(test_llama_cpp_numbers),
        cmocka_unit_test(test_round_trips),  cmocka_unit_test(test_ternary_blocks),
        cmocka_unit_test(test_block_codes),  cmocka_unit_test(test_gptq),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
