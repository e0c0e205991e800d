/* test_cuda_hd.c — the arithmetic the CUDA kernels share with the host
 * (lib/runtime/backend/kernels_hd.h), run on the CPU in every build, with
 * or without CUDA, against the CPU backend and the type table: f16/bf16
 * bits for all 65536 inputs, element decode of every kind against
 * mt_mat_row_f32 (K-quant and TQ super-blocks included), the lane split of a matvec row (any lane count) against
 * the double-precision reference matvec, RoPE pairs against the CPU
 * backend's rope in both styles, the GQA head map, the qmoe group walk from
 * the per-group offsets against the reference qmoe matvec (rows that do not
 * fill the last group, codewords straddling rows). The router row is the
 * CPU backend's router_topk itself: test_backend checks it against an
 * independent implementation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "kernels_hd.h"
#include "kernels_impl.h"
#include "moetool/mt_codec.h"
#include "moetool/mt_qmoe.h"
#include "qmoe_kernel.h"
#include "testutil.h"

static uint64_t g_rng = 0x2545f4914f6cdd1dull;

/* A (rows, cols) matrix of kind k with random contents; row_stride has
 * `pad` spare bytes so that strided rows are exercised. */
typedef struct {
    mt_mat W;
    uint8_t *buf;
} tmat;

static const mt_dtype g_types[] = {MT_DT_F32, MT_DT_F16, MT_DT_BF16, MT_DT_Q8_0, MT_DT_Q4_0};
static const int g_kinds[] = {MT_CU_F32, MT_CU_F16, MT_CU_BF16, MT_CU_Q8_0, MT_CU_Q4_0};

static void make_mat(tmat *t, int ti, int64_t rows, int64_t cols, int pad) {
    const int kind = g_kinds[ti];
    const int64_t rb = mt_cu_row_bytes(kind, cols);
    memset(t, 0, sizeof *t);
    t->W.dtype = g_types[ti];
    t->W.rows = rows;
    t->W.cols = cols;
    t->W.row_stride = (uint64_t)(rb + pad);
    t->buf = calloc((size_t)(rows * (rb + pad)) + 1, 1);
    assert_non_null(t->buf);
    t->W.data = t->buf;
    for (int64_t r = 0; r < rows; r++) {
        uint8_t *row = t->buf + r * (rb + pad);
        for (int64_t i = 0; i < cols; i++) {
            const float v = tu_rand_unit(&g_rng);
            if (kind == MT_CU_F32) memcpy(row + 4 * i, &v, 4);
            if (kind == MT_CU_F16 || kind == MT_CU_BF16) {
                uint32_t u;
                memcpy(&u, &v, 4);
                const uint16_t h = kind == MT_CU_F16 ? mt_f32_to_f16(v) : (uint16_t)(u >> 16); /* bf16 by truncation */
                memcpy(row + 2 * i, &h, 2);
            }
        }
        for (int64_t b = 0; (kind == MT_CU_Q8_0 || kind == MT_CU_Q4_0) && b < cols / 32; b++) {
            int8_t q[32];
            for (int j = 0; j < 32; j++)
                q[j] = (int8_t)(kind == MT_CU_Q8_0 ? (int)(tu_rand_u32(&g_rng) % 256) - 128
                                                   : (int)(tu_rand_u32(&g_rng) % 16) - 8);
            const uint16_t d = mt_f32_to_f16(0.001f + 0.05f * (tu_rand_unit(&g_rng) + 1.0f));
            if (kind == MT_CU_Q8_0)
                mt_q8_0_pack(q, d, row + b * MT_CU_Q8_0_BYTES);
            else
                mt_q4_0_pack(q, d, row + b * MT_CU_Q4_0_BYTES);
        }
    }
}

static int same_float(float a, float b) { return (isnan(a) && isnan(b)) || memcmp(&a, &b, 4) == 0; }

static void test_half_bits(void **state) {
    for (uint32_t h = 0; h < 65536; h++) {
        const float a = mt_cu_f16((uint16_t)h), b = mt_f16_to_f32((uint16_t)h);
        if (!same_float(a, b)) fail_msg("f16 %04x: %a vs %a", h, (double)a, (double)b);
        const float c = mt_cu_bf16((uint16_t)h), d = mt_bf16_to_f32((uint16_t)h);
        if (!same_float(c, d)) fail_msg("bf16 %04x: %a vs %a", h, (double)c, (double)d);
    }
}

static void test_row_bytes_and_elems(void **state) {
    for (int ti = 0; ti < 5; ti++) {
        const mt_dtype_info *di = mt_dtype_get(g_types[ti]);
        assert_int_equal(mt_cu_row_bytes(g_kinds[ti], 96), 96 / di->block_elems * di->block_bytes);
        tmat t;
        make_mat(&t, ti, 5, 96, ti * 3);
        float *ref = malloc(96 * sizeof(float));
        for (int64_t r = 0; r < 5; r++) {
            mt_mat_row_f32(&t.W, r, ref);
            const uint8_t *row = (const uint8_t *)t.W.data + r * t.W.row_stride;
            for (int64_t i = 0; i < 96; i++)
                if (!same_float(mt_cu_elem(g_kinds[ti], row, i), ref[i]))
                    fail_msg("%s row %lld elem %lld: %g vs %g", di->name, (long long)r, (long long)i,
                             (double)mt_cu_elem(g_kinds[ti], row, i), (double)ref[i]);
        }
        free(ref);
        free(t.buf);
    }
    assert_true(isnan(mt_cu_elem(MT_CU_NONE, NULL, 0)));
}

/* Σ over lanes of mt_cu_lane_dot = the row's dot, for warps of 32 and for
 * odd lane counts (a different split must give the same sum). */
static void test_lane_dot(void **state) {
    const int64_t shapes[][2] = {{7, 32}, {9, 96}, {4, 1056}, {3, 4096}};
    const int lane_counts[] = {1, 7, 32};
    for (int ti = 0; ti < 5; ti++)
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            const int64_t rows = shapes[si][0], cols = shapes[si][1];
            tmat t;
            make_mat(&t, ti, rows, cols, 6);
            float *x = malloc((size_t)cols * sizeof(float)), *y = malloc((size_t)rows * sizeof(float));
            for (int64_t i = 0; i < cols; i++) x[i] = tu_rand_unit(&g_rng);
            mt_matvec_rows_ref(&t.W, x, y, 0, rows);
            float *row_f = malloc((size_t)cols * sizeof(float));
            for (int64_t r = 0; r < rows; r++) {
                mt_mat_row_f32(&t.W, r, row_f);
                double mag = 0;
                for (int64_t i = 0; i < cols; i++) mag += fabs((double)row_f[i] * x[i]);
                const uint8_t *row = (const uint8_t *)t.W.data + r * t.W.row_stride;
                for (size_t li = 0; li < 3; li++) {
                    const int L = lane_counts[li];
                    double s = 0;
                    for (int lane = 0; lane < L; lane++) s += mt_cu_lane_dot(g_kinds[ti], row, x, cols, lane, L);
                    if (fabs(s - y[r]) > 1e-5 * mag + 1e-30)
                        fail_msg("%s (%lld, %lld) row %lld, %d lanes: %.9g vs %.9g (|w||x| %g)",
                                 mt_dtype_get(g_types[ti])->name, (long long)rows, (long long)cols, (long long)r, L, s,
                                 (double)y[r], mag);
                }
            }
            free(row_f);
            free(x);
            free(y);
            free(t.buf);
        }
}

/* The K-quant and TQ super-blocks: every weight of random blocks decoded by
 * mt_cu_elem equals the type table's decoder bit for bit (same float
 * operations in the same order), the row bytes match the table, and the
 * lanes' sub-block dots sum to the row's dot. Block bytes are random except
 * the f16 scales, which are kept finite and small. */
static void test_superblocks(void **state) {
    static const struct {
        mt_dtype t;
        int kind, f16_at[2];
    } sb[] = {{MT_DT_Q2_K, MT_CU_Q2_K, {80, 82}}, {MT_DT_Q3_K, MT_CU_Q3_K, {108, -1}},
              {MT_DT_Q4_K, MT_CU_Q4_K, {0, 2}},   {MT_DT_Q5_K, MT_CU_Q5_K, {0, 2}},
              {MT_DT_Q6_K, MT_CU_Q6_K, {208, -1}}, {MT_DT_TQ1_0, MT_CU_TQ1_0, {52, -1}},
              {MT_DT_TQ2_0, MT_CU_TQ2_0, {64, -1}}};
    const int64_t rows = 3, cols = 1024;
    for (size_t ti = 0; ti < sizeof sb / sizeof sb[0]; ti++) {
        const mt_dtype_info *di = mt_dtype_get(sb[ti].t);
        const int kind = sb[ti].kind, bytes = mt_cu_sb_bytes(kind);
        assert_int_equal(di->block_elems, MT_CU_QK_K);
        assert_int_equal(di->block_bytes, bytes);
        assert_int_equal(mt_cu_row_bytes(kind, cols), cols / 256 * bytes);
        const int64_t stride = mt_cu_row_bytes(kind, cols) + 5;
        uint8_t *buf = malloc((size_t)(rows * stride));
        assert_non_null(buf);
        for (int64_t i = 0; i < rows * stride; i++) buf[i] = (uint8_t)tu_rand_u32(&g_rng);
        for (int64_t r = 0; r < rows; r++)
            for (int64_t b = 0; b < cols / 256; b++)
                for (int f = 0; f < 2; f++)
                    if (sb[ti].f16_at[f] >= 0) {
                        const uint16_t h = mt_f32_to_f16(0.002f + 0.01f * (tu_rand_unit(&g_rng) + 1.0f));
                        memcpy(buf + r * stride + b * bytes + sb[ti].f16_at[f], &h, 2);
                    }
        mt_mat W = {0};
        W.dtype = sb[ti].t;
        W.rows = rows;
        W.cols = cols;
        W.row_stride = (uint64_t)stride;
        W.data = buf;
        float *ref = malloc((size_t)cols * sizeof(float)), *x = malloc((size_t)cols * sizeof(float));
        for (int64_t i = 0; i < cols; i++) x[i] = tu_rand_unit(&g_rng);
        for (int64_t r = 0; r < rows; r++) {
            const uint8_t *row = buf + r * stride;
            mt_mat_row_f32(&W, r, ref);
            double dot = 0, mag = 0;
            for (int64_t i = 0; i < cols; i++) {
                const float v = mt_cu_elem(kind, row, i);
                if (!same_float(v, ref[i]))
                    fail_msg("%s row %lld elem %lld: %a vs %a", di->name, (long long)r, (long long)i, (double)v,
                             (double)ref[i]);
                dot += (double)ref[i] * x[i];
                mag += fabs((double)ref[i] * x[i]);
            }
            const int lane_counts[] = {1, 5, 32};
            for (int li = 0; li < 3; li++) {
                double s = 0;
                for (int lane = 0; lane < lane_counts[li]; lane++)
                    s += mt_cu_lane_dot(kind, row, x, cols, lane, lane_counts[li]);
                if (fabs(s - dot) > 1e-5 * mag + 1e-30)
                    fail_msg("%s row %lld, %d lanes: %.9g vs %.9g", di->name, (long long)r, lane_counts[li], s, dot);
            }
        }
        free(ref);
        free(x);
        free(buf);
    }
}

/* The RoPE kernel's loop (kernels_hd.h pairs) against the CPU backend's rope. */
static void test_rope_pairs(void **state) {
    mt_backend *be = mt_backend_default();
    const int d = 64, half = 32, n = 3, heads = 4, ctx = 16, pos = 5;
    float *cs = malloc(sizeof(float) * ctx * half), *sn = malloc(sizeof(float) * ctx * half);
    mt_be_rope_tables(cs, sn, ctx, d, 10000.0f);
    for (int style = 0; style < 2; style++) {
        float x[3 * 4 * 64], want[3 * 4 * 64], got[3 * 4 * 64];
        for (int i = 0; i < n * heads * d; i++) x[i] = tu_rand_unit(&g_rng);
        memcpy(want, x, sizeof x);
        mt_be_rope_args a = {want, n, heads * d, heads, d, pos, cs, sn, style ? MT_BE_ROPE_PAIRS : MT_BE_ROPE_HALF};
        be->ops->rope(be, &a);
        for (int i = 0; i < n; i++)
            for (int h = 0; h < heads; h++) {
                const float *p = x + (i * heads + h) * d;
                float *o = got + (i * heads + h) * d;
                const float *c = cs + (pos + i) * half, *s = sn + (pos + i) * half;
                for (int j = 0; j < half; j++) {
                    int s0, s1;
                    mt_cu_rope_src(style, j, half, &s0, &s1);
                    assert_true(s0 >= 0 && s0 < d && s1 >= 0 && s1 < d && s0 != s1);
                    o[j] = p[s0] * c[j] - p[s1] * s[j];
                    o[j + half] = p[s1] * c[j] + p[s0] * s[j];
                }
            }
        for (int i = 0; i < n * heads * d; i++)
            if (fabsf(got[i] - want[i]) > 1e-6f * (1.0f + fabsf(want[i])))
                fail_msg("rope style %d element %d: %g vs %g", style, i, (double)got[i], (double)want[i]);
    }
    free(cs);
    free(sn);
}

/* GQA: query heads of one KV head are consecutive, group of n_heads/n_kv. */
static void test_kv_head(void **state) {
    const int cfg[][2] = {{8, 8}, {8, 2}, {32, 8}, {6, 1}};
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        const int nh = cfg[c][0], nkv = cfg[c][1];
        int count[32] = {0};
        for (int hq = 0; hq < nh; hq++) {
            const int hk = mt_cu_kv_head(hq, nh, nkv);
            assert_true(hk >= 0 && hk < nkv);
            if (hq > 0) assert_true(hk == mt_cu_kv_head(hq - 1, nh, nkv) || hk == mt_cu_kv_head(hq - 1, nh, nkv) + 1);
            count[hk]++;
        }
        for (int k = 0; k < nkv; k++) assert_int_equal(count[k], nh / nkv);
    }
}

static void test_rms_scale(void **state) {
    mt_backend *be = mt_backend_default();
    float x[200], w[200], out[200];
    for (int i = 0; i < 200; i++) {
        x[i] = 3.0f * tu_rand_unit(&g_rng);
        w[i] = tu_rand_unit(&g_rng);
    }
    be->ops->rmsnorm(be, out, x, w, 1, 200, 1e-5f);
    double ss = 0;
    for (int i = 0; i < 200; i++) ss += (double)x[i] * x[i];
    const float r = mt_cu_rms_scale(ss, 200, 1e-5f);
    for (int i = 0; i < 200; i++) assert_true(same_float(w[i] * (x[i] * r), out[i]));
}

/* The qmoe group walk, group by group as the kernel runs it (one thread per
 * group), against the reference matvec of kernels_qmoe.c. */
static void test_qmoe_groups(void **state) {
    const uint64_t counts[3] = {700, 150, 150};
    mt_qmoe_dict d;
    assert_int_equal(mt_qmoe_dict_build(&d, counts, 4096, 12), MT_OK);
    const int64_t shapes[][2] = {{1, 5}, {16, 16}, {37, 40}, {33, 64}, {20, 7}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int64_t rows = shapes[si][0], cols = shapes[si][1];
        int8_t *syms = malloc((size_t)(rows * cols));
        float *lo = malloc((size_t)rows * sizeof(float)), *hi = malloc((size_t)rows * sizeof(float));
        for (int64_t i = 0; i < rows * cols; i++) {
            const uint32_t u = tu_rand_u32(&g_rng) % 10;
            syms[i] = (int8_t)(u < 7 ? 0 : u < 9 ? 1 : -1);
        }
        for (int64_t r = 0; r < rows; r++) {
            lo[r] = mt_f16_to_f32(mt_f32_to_f16(-0.02f - 0.5f * (tu_rand_unit(&g_rng) + 1.0f)));
            hi[r] = mt_f16_to_f32(mt_f32_to_f16(0.02f + 0.5f * (tu_rand_unit(&g_rng) + 1.0f)));
        }
        mt_qmoe_mat q;
        mt_mat W;
        assert_int_equal(mt_qmoe_encode(&q, &d, syms, lo, hi, rows, cols), MT_OK);
        mt_qmoe_mat_view(&W, &q);
        float *x = malloc((size_t)cols * sizeof(float)), *want = malloc((size_t)rows * sizeof(float)),
              *got = malloc((size_t)rows * sizeof(float));
        for (int64_t i = 0; i < cols; i++) x[i] = tu_rand_unit(&g_rng);
        mt_qmoe_matvec_rows_ref(&W, x, want, 0, rows);
        for (int64_t r = 0; r < rows; r++) got[r] = NAN;
        const int64_t ng = mt_qmoe_n_groups(rows, (int)W.group);
        int64_t covered = 0;
        for (int64_t g = 0; g < ng; g++) {
            covered += mt_cu_qmoe_group_rows(rows, W.group, g);
            mt_cu_qmoe_group_dot(q.codes, q.offsets, q.n_codes, d.len, d.mask, q.scales, rows, cols, W.group, g, x,
                                 got);
        }
        assert_int_equal(covered, rows);
        for (int64_t r = 0; r < rows; r++) {
            double mag = 1e-6;
            for (int64_t i = 0; i < cols; i++) mag += fabs((double)x[i]) * (fabs(lo[r]) + hi[r]);
            if (!(fabs((double)got[r] - want[r]) <= 1e-6 * mag))
                fail_msg("qmoe (%lld, %lld) row %lld: %.9g vs %.9g", (long long)rows, (long long)cols, (long long)r,
                         (double)got[r], (double)want[r]);
        }
        mt_qmoe_mat_free(&q);
        free(syms);
        free(lo);
        free(hi);
        free(x);
        free(want);
        free(got);
    }
    mt_qmoe_dict_free(&d);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_half_bits),  cmocka_unit_test(test_row_bytes_and_elems),
        cmocka_unit_test(test_lane_dot),   cmocka_unit_test(test_rope_pairs),
        cmocka_unit_test(test_kv_head),    cmocka_unit_test(test_rms_scale),
        cmocka_unit_test(test_qmoe_groups),
        cmocka_unit_test(test_superblocks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
