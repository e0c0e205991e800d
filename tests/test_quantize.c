/* test_quantize.c — quantize's outputs against independent references:
 *   - RTN on the Q8_0/Q4_0 grids is byte-identical to mt_row_from_f32
 *     (llama.cpp's quantize_row_q8_0_ref/q4_0_ref rounding), and RTN on the
 *     TQ2_0 grid to a transcription of llama.cpp's quantize_row_tq2_0_ref;
 *   - TQ2_0 rows decode (mt_row_to_f32) as llama.cpp's dequantize_row_tq2_0
 *     (transcribed below) and the runtime's TQ2_0 matvec equals its
 *     reference and the dot product with the decoded rows;
 *   - a quantized GGUF written by mt_quantize_file loads, has the expected
 *     tensor types, and evaluates to the same perplexity as the model
 *     quantized in memory (TOL_PPL_SAME), close to the original for q8_0;
 *   - bad options and short calibration text fail with a message and leave
 *     no output file;
 *   - calibration: the rows kept for each expert are the FFN inputs of the
 *     tokens the router sent to it (first `cap` of them), Hessians,
 *     intermediate activations and output errors equal direct double-
 *     precision sums (and mt_gptq_output_err), and mt_quant_model's GPTQ of
 *     layer 0 equals mt_gptq_quantize on the Hessian of mt_calib_layer,
 *     for 1 and 2 threads alike; with --attn-bits/--embed-bits its o_proj
 *     and lm_head equal mt_gptq_quantize on the Hessians of the attention
 *     outputs and of the final-norm outputs, below RTN's output error. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../lib/quant/quant_impl.h"
#include "kernels_impl.h"
#include "testutil.h"

#define TOL_PPL_SAME 1e-3   /* file vs in-memory model: only Q/K row order differs */
#define TOL_MATVEC 1e-4     /* relative to sum |w||x|                           */
#define TOL_H 1e-12         /* Hessian entries, relative to sqrt(H_ii H_jj)      */
#define TOL_MID 1e-5        /* silu(g)·u, relative to (Σ|w1||x|)(Σ|w3||x|)       */
#define TOL_ERR 1e-4        /* output errors, relative                          */

static uint64_t g_rng = 0x853C49E6748FEA9Bull;
static float rnd(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (float)((double)(g_rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* llama.cpp quantize_row_tq2_0_ref, transcribed (block: qs[64], f16 d). */
static void llama_quantize_tq2_0(const float *x, uint8_t *y, int64_t k) {
    for (int64_t i = 0; i < k / 256; i++) {
        float amax = 0.0f;
        for (int j = 0; j < 256; j++) amax = fmaxf(amax, fabsf(x[j]));
        const float d = amax, id = d ? 1.0f / d : 0.0f;
        uint8_t *blk = y + 66 * i;
        uint16_t h = mt_f32_to_f16(d);
        memcpy(blk + 64, &h, 2);
        for (size_t j = 0; j < 64; j += 32) {
            for (size_t m = 0; m < 32; ++m) {
                uint8_t q = 0;
                for (size_t n = 0; n < 4; ++n) {
                    int xi = (int)lroundf(x[m + n * 32] * id) + 1;
                    q += (uint8_t)((xi & 3) << (2 * n));
                }
                blk[j + m] = q;
            }
            x += 4 * 32;
        }
    }
}

/* llama.cpp dequantize_row_tq2_0, transcribed. */
static void llama_dequantize_tq2_0(const uint8_t *x, float *y, int64_t k) {
    for (int64_t i = 0; i < k / 256; ++i) {
        uint16_t h;
        memcpy(&h, x + 66 * i + 64, 2);
        const float d = mt_f16_to_f32(h);
        for (size_t j = 0; j < 64; j += 32)
            for (size_t l = 0; l < 4; ++l)
                for (size_t m = 0; m < 32; ++m) {
                    int8_t q = (int8_t)((x[66 * i + j + m] >> (l * 2)) & 3);
                    *y++ = (float)(q - 1) * d;
                }
    }
}

static void rtn_pack(const float *row, int64_t cols, int bits, int group, uint8_t *out) {
    mt_grid g;
    assert_int_equal(mt_grid_make(&g, bits, group, cols, "test"), MT_OK);
    float *w = malloc((size_t)cols * sizeof *w), *a = malloc((size_t)cols * sizeof *a), *b = malloc((size_t)cols * sizeof *b);
    int8_t *codes = malloc((size_t)cols);
    memcpy(w, row, (size_t)cols * sizeof *w);
    mt_gptq_params p = {.damp = 0.1, .block = 128};
    assert_int_equal(mt_gptq_quantize(w, 1, cols, NULL, &g, &p, codes, a, b), MT_OK);
    mt_grid_pack_row(&g, codes, a, cols, out);
    /* Ŵ left in w is what the packed row decodes to. */
    float *dq = malloc((size_t)cols * sizeof *dq);
    assert_int_equal(mt_row_to_f32((mt_dtype)mt_grid_dtype(&g), out, dq, cols), MT_OK);
    for (int64_t i = 0; i < cols; i++) assert_true(dq[i] == w[i]);
    free(dq);
    free(w);
    free(a);
    free(b);
    free(codes);
}

static void test_rtn_bit_identical(void **st) {
    (void)st;
    const int64_t cols = 1024;
    float *x = malloc((size_t)cols * sizeof *x);
    uint8_t mine[2048], ref[2048];
    for (int trial = 0; trial < 50; trial++) {
        float scale = powf(10.0f, (float)(trial % 7) - 4.0f);
        for (int64_t i = 0; i < cols; i++) x[i] = rnd() * scale * (i % 29 == 0 ? 8.0f : 1.0f);
        if (trial == 3) memset(x, 0, 32 * sizeof *x); /* an all-zero block */
        rtn_pack(x, cols, 8, 32, mine);
        assert_int_equal(mt_row_from_f32(MT_DT_Q8_0, x, ref, cols), MT_OK);
        assert_memory_equal(mine, ref, 34 * cols / 32);
        rtn_pack(x, cols, 4, 32, mine);
        assert_int_equal(mt_row_from_f32(MT_DT_Q4_0, x, ref, cols), MT_OK);
        assert_memory_equal(mine, ref, 18 * cols / 32);
        rtn_pack(x, cols, MT_QUANT_TERNARY, 256, mine);
        llama_quantize_tq2_0(x, ref, cols);
        assert_memory_equal(mine, ref, 66 * cols / 256);
    }
    free(x);
}

static void test_tq2_0_decode_and_kernel(void **st) {
    (void)st;
    const int64_t rows = 37, cols = 768;
    const uint64_t rb = 66 * cols / 256;
    uint8_t *data = malloc((size_t)(rows * rb));
    float *x = malloc((size_t)cols * sizeof *x), *wr = malloc((size_t)cols * sizeof *wr),
          *wl = malloc((size_t)cols * sizeof *wl), *y1 = malloc((size_t)rows * sizeof *y1),
          *y2 = malloc((size_t)rows * sizeof *y2);
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t i = 0; i < cols; i++) wr[i] = rnd() * (r + 1) * 0.01f;
        llama_quantize_tq2_0(wr, data + r * rb, cols);
    }
    for (int64_t i = 0; i < cols; i++) x[i] = rnd();
    mt_mat W = {.dtype = MT_DT_TQ2_0, .rows = rows, .cols = cols, .data = data, .row_stride = rb};
    assert_true(mt_kernel_supported(MT_DT_TQ2_0));
    mt_matvec_rows_ref(&W, x, y1, 0, rows);
    mt_matvec_rows(&W, x, y2, 0, rows);
    double maxrel = 0;
    for (int64_t r = 0; r < rows; r++) {
        assert_int_equal(mt_row_to_f32(MT_DT_TQ2_0, data + r * rb, wr, cols), MT_OK);
        llama_dequantize_tq2_0(data + r * rb, wl, cols);
        assert_memory_equal(wr, wl, (size_t)cols * sizeof *wr);
        double dot = 0, A = 0;
        for (int64_t i = 0; i < cols; i++) {
            dot += (double)wl[i] * x[i];
            A += fabs((double)wl[i] * x[i]);
        }
        double e1 = fabs(y1[r] - dot) / (A + 1e-30), e2 = fabs(y2[r] - dot) / (A + 1e-30);
        if (e2 > maxrel) maxrel = e2;
        assert_true(e1 <= TOL_MATVEC);
        assert_true(e2 <= TOL_MATVEC);
    }
    printf("tq2_0 matvec: max rel. error vs decoded dot %.3g\n", maxrel);
    free(data);
    free(x);
    free(wr);
    free(wl);
    free(y1);
    free(y2);
}

static int32_t *test_ids(const mt_model *m, size_t *n) {
    int32_t *ids = tu_test_ids(mt_model_tokenizer(m), n);
    assert_non_null(ids);
    return ids;
}

static double ppl_of(mt_model *m, const int32_t *ids, size_t n) {
    mt_eval_opts eo;
    mt_eval_opts_default(&eo);
    eo.max_windows = 8;
    mt_eval_result r;
    assert_int_equal(mt_eval_ppl(m, NULL, ids, n, &eo, &r), MT_OK);
    double p = r.ppl;
    mt_eval_result_free(&r);
    return p;
}

/* File written by quantize == the model quantized in memory. */
static void check_file(const char *dir, int method, int bits, int group, mt_dtype want, double *ppl_file) {
    char out[4096];
    snprintf(out, sizeof out, "%s/q-%d-%d.gguf", dir, method, bits);
    mt_quant_opts o;
    mt_quant_opts_default(&o);
    o.method = method;
    o.bits = bits;
    o.group = group;
    o.calib_tokens = 1024;
    mt_quant_report rep;
    assert_int_equal(mt_quantize_file(tu_model_dir(), out, &o, 2, &rep), MT_OK);
    assert_int_equal(rep.expert_dtype, want);
    mt_quant_report_free(&rep);

    mt_model_opts mo;
    mt_model_opts_default(&mo);
    mo.n_threads = 2;
    mt_model *mf = NULL, *mm = NULL;
    assert_int_equal(mt_model_load(&mf, out, &mo), MT_OK);
    const mt_layer_weights *L = &mt_model_weights(mf)->layers[0];
    assert_int_equal(L->w1[0].dtype, want);
    assert_int_equal(L->w2[3].dtype, want);
    assert_int_equal(L->wq.dtype, MT_DT_BF16); /* attention untouched */
    size_t n;
    int32_t *ids = test_ids(mf, &n);
    double pf = ppl_of(mf, ids, n);

    assert_int_equal(mt_model_load(&mm, tu_model_dir(), &mo), MT_OK);
    o.calib_path = tu_model_path("data/train.txt");
    mt_quant_state *qs = NULL;
    assert_int_equal(mt_quant_model(&qs, mm, &o, &rep), MT_OK);
    mt_quant_report_free(&rep);
    double pm = ppl_of(mm, ids, n);
    printf("%s %s: file ppl %.5f, in-memory ppl %.5f\n", method ? "gptq" : "rtn", mt_dtype_get(want)->name, pf, pm);
    assert_true(fabs(pf - pm) <= TOL_PPL_SAME * pm);
    *ppl_file = pf;
    free(ids);
    mt_model_free(mf);
    mt_model_free(mm);
    mt_quant_state_free(qs);
    unlink(out);
}

static void test_gguf_outputs(void **st) {
    (void)st;
    char *dir = tu_mkdtemp();
    double p8, p4, pt, pg;
    check_file(dir, MT_QUANT_RTN, 8, 32, MT_DT_Q8_0, &p8);
    check_file(dir, MT_QUANT_RTN, 4, 32, MT_DT_Q4_0, &p4);
    check_file(dir, MT_QUANT_RTN, MT_QUANT_TERNARY, 256, MT_DT_TQ2_0, &pt);
    check_file(dir, MT_QUANT_GPTQ, MT_QUANT_TERNARY, 256, MT_DT_TQ2_0, &pg);
    /* Orders a quantization must respect: more bits, smaller loss; GPTQ beats RTN. */
    assert_true(p8 < p4);
    assert_true(p4 < pt);
    assert_true(pg < pt);
    tu_rmtree(dir);
    free(dir);
}

static void test_bad_options(void **st) {
    (void)st;
    mt_ckpt *ck = NULL;
    assert_int_equal(mt_ckpt_open(&ck, tu_model_dir()), MT_OK);
    mt_config c;
    assert_int_equal(mt_config_copy(&c, mt_ckpt_config(ck)), MT_OK);
    mt_ckpt_free(ck);
    mt_quant_opts o;
    mt_quant_opts_default(&o);
    o.bits = 5;
    assert_int_equal(mt_quant_check(&o, &c, 0), MT_ERR_ARG);
    assert_non_null(strstr(mt_last_error(), "5-bit"));
    o.bits = 3;
    o.group = 48;
    assert_int_equal(mt_quant_check(&o, &c, 0), MT_ERR_ARG);
    assert_non_null(strstr(mt_last_error(), "does not divide"));
    o.group = 128;
    assert_int_equal(mt_quant_check(&o, &c, 0), MT_OK);
    assert_int_equal(mt_quant_check(&o, &c, 1), MT_ERR_ARG); /* int3: no GGUF type */
    assert_non_null(strstr(mt_last_error(), "--eval-only"));
    o.bits = MT_QUANT_TERNARY;
    o.group = 64;
    assert_int_equal(mt_quant_check(&o, &c, 0), MT_ERR_ARG);
    mt_config dense = c;
    dense.n_experts = 0;
    dense.top_k = 0;
    mt_quant_opts_default(&o);
    o.experts_only = 1;
    assert_int_equal(mt_quant_check(&o, &dense, 0), MT_ERR_ARG);
    assert_non_null(strstr(mt_last_error(), "dense"));
    assert_int_equal(mt_quant_check(&o, &c, 0), MT_OK);

    /* Calibration text too short: error naming it, no output file. */
    char *dir = tu_mkdtemp();
    char calib[4096], out[4096];
    snprintf(calib, sizeof calib, "%s/short.txt", dir);
    snprintf(out, sizeof out, "%s/out.gguf", dir);
    FILE *f = fopen(calib, "w");
    fputs("In the beginning God created the heaven and the earth.\n", f);
    fclose(f);
    mt_quant_opts_default(&o);
    o.calib_path = calib;
    mt_quant_report rep;
    assert_int_equal(mt_quantize_file(tu_model_dir(), out, &o, 2, &rep), MT_ERR_ARG);
    assert_non_null(strstr(mt_last_error(), "short.txt"));
    assert_int_equal(access(out, F_OK), -1);
    /* nothing at all left in the directory but the calibration text */
    char cmd[8300];
    snprintf(cmd, sizeof cmd, "test $(ls -A '%s' | wc -l) -eq 1", dir);
    assert_int_equal(system(cmd), 0);
    tu_rmtree(dir);
    free(dir);
    mt_config_free(&c);
}

/* ---- calibration ------------------------------------------------------------ */
/* FFN inputs and router choices of one layer, straight from the hooks. */
typedef struct {
    int layer, top_k;
    int64_t hidden;
    float *ffn_in;         /* (n, hidden), all windows in order */
    int32_t *topk;         /* (n, top_k) */
    int64_t n;
} ref_hook;

static int ref_capture(void *user, const mt_capture_event *ev) {
    ref_hook *r = user;
    if (ev->layer != r->layer) return 0;
    if (ev->kind == MT_CAP_FFN_IN) {
        r->ffn_in = realloc(r->ffn_in, (size_t)((r->n + ev->n_rows) * r->hidden) * sizeof(float));
        memcpy(r->ffn_in + r->n * r->hidden, ev->data, (size_t)(ev->n_rows * r->hidden) * sizeof(float));
    } else if (ev->kind == MT_CAP_ROUTER_LOGITS) {
        r->topk = realloc(r->topk, (size_t)((r->n + ev->n_rows) * r->top_k) * sizeof(int32_t));
        memcpy(r->topk + r->n * r->top_k, ev->topk, (size_t)(ev->n_rows * r->top_k) * sizeof(int32_t));
        r->n += ev->n_rows; /* FFN_IN comes first */
    }
    return 0;
}

static const float *rows_at(const mt_calib_rows *x, int64_t i) {
    return x->blk[i / MT_CALIB_BLOCK] + (i % MT_CALIB_BLOCK) * x->cols;
}

static void test_calib_rows_and_stats(void **st) {
    (void)st;
    mt_model *m = NULL;
    mt_model_opts mo;
    mt_model_opts_default(&mo);
    mo.n_threads = 2;
    assert_int_equal(mt_model_load(&m, tu_model_dir(), &mo), MT_OK);
    const mt_config *c = mt_model_config(m);
    const int layer = 1, win = 256, n = 3 * win;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    assert_int_equal(mt_calib_tokens(m, tu_model_path("data/train.txt"), n, &ids, &n_ids), MT_OK);

    /* Reference: every window through layers 0..layer with a plain hook. */
    ref_hook r = {layer, c->top_k, c->hidden, NULL, NULL, 0};
    mt_ctx *ctx = NULL;
    assert_int_equal(mt_ctx_init(&ctx, m, win, win), MT_OK);
    mt_ctx_set_capture(ctx, ref_capture, &r, MT_CAP_FFN_IN | MT_CAP_ROUTER_LOGITS);
    for (int off = 0; off < n; off += win) {
        mt_ctx_reset(ctx);
        assert_int_equal(mt_ctx_forward(ctx, ids + off, win, NULL, 0), MT_OK);
    }
    mt_ctx_free(ctx);
    assert_int_equal(r.n, n);

    const uint64_t caps[2] = {100000, 60};
    for (int ci = 0; ci < 2; ci++) {
        mt_calib_capture cc;
        assert_int_equal(mt_calib_capture_layer(m, layer, ids, (size_t)n, win, 1, caps[ci], &cc), MT_OK);
        assert_int_equal(cc.n_tokens, n);
        assert_int_equal(cc.attn.n, n);
        int64_t tot = 0;
        for (int e = 0; e < cc.n_exp; e++) {
            /* the tokens routed to e, in order, first cap of them */
            int64_t k = 0;
            for (int64_t t = 0; t < n && (uint64_t)k < caps[ci]; t++) {
                int hit = 0;
                for (int s2 = 0; s2 < c->top_k; s2++) hit |= r.topk[t * c->top_k + s2] == e;
                if (!hit) continue;
                assert_true(k < cc.x[e].n);
                assert_memory_equal(rows_at(&cc.x[e], k), r.ffn_in + t * c->hidden, (size_t)c->hidden * sizeof(float));
                k++;
            }
            assert_int_equal(cc.x[e].n, k);
            tot += k;
        }
        if (ci == 0) assert_int_equal(tot, (int64_t)n * c->top_k); /* no cap: every token feeds top_k experts */
        if (ci == 1) {
            mt_calib_capture_free(&cc);
            continue;
        }

        /* Hessian and intermediate activations of expert 3 against direct sums. */
        const mt_layer_weights *L = &mt_model_weights(m)->layers[layer];
        const int e = 3;
        const mt_calib_rows *x = &cc.x[e];
        const int64_t Hd = c->hidden, F = c->ffn;
        double *H = malloc((size_t)(Hd * Hd) * sizeof *H);
        assert_int_equal(mt_calib_hessian(x, H), MT_OK);
        double worst = 0;
        for (int64_t i = 0; i < Hd; i++)
            for (int64_t j = 0; j < Hd; j++) {
                double s = 0, si = 0, sj = 0;
                for (int64_t t = 0; t < x->n; t++) {
                    const float *v = rows_at(x, t);
                    s += (double)v[i] * v[j];
                    si += (double)v[i] * v[i];
                    sj += (double)v[j] * v[j];
                }
                const double d = fabs(H[i * Hd + j] - s) / (sqrt(si * sj) + 1e-300);
                if (d > worst) worst = d;
            }
        printf("expert %d: %lld rows, Hessian worst rel. diff %.3g\n", e, (long long)x->n, worst);
        assert_true(worst <= TOL_H);

        mt_calib_rows y;
        assert_int_equal(mt_calib_mid(x, &L->w1[e], &L->w3[e], &y), MT_OK);
        assert_int_equal(y.n, x->n);
        assert_int_equal(y.cols, F);
        float *w1 = malloc((size_t)(F * Hd) * sizeof *w1), *w3 = malloc((size_t)(F * Hd) * sizeof *w3);
        for (int64_t i = 0; i < F; i++) {
            mt_row_to_f32(L->w1[e].dtype, (const uint8_t *)L->w1[e].data + i * L->w1[e].row_stride, w1 + i * Hd, Hd);
            mt_row_to_f32(L->w3[e].dtype, (const uint8_t *)L->w3[e].data + i * L->w3[e].row_stride, w3 + i * Hd, Hd);
        }
        worst = 0;
        for (int64_t t = 0; t < x->n; t += 7) {
            const float *v = rows_at(x, t);
            for (int64_t i = 0; i < F; i++) {
                double g = 0, u = 0, ag = 0, au = 0;
                for (int64_t k = 0; k < Hd; k++) {
                    g += (double)w1[i * Hd + k] * v[k];
                    u += (double)w3[i * Hd + k] * v[k];
                    ag += fabs((double)w1[i * Hd + k] * v[k]);
                    au += fabs((double)w3[i * Hd + k] * v[k]);
                }
                const double want = g / (1 + exp(-g)) * u;
                const double d = fabs(rows_at(&y, t)[i] - want) / (ag * au + 1e-30);
                if (d > worst) worst = d;
            }
        }
        printf("expert %d: silu(W1 x)(W3 x) worst rel. diff %.3g\n", e, worst);
        assert_true(worst <= TOL_MID);

        /* Output error of a perturbed w2 on y against tr(D H Dᵀ) (gptq.c). */
        const mt_mat *w2 = &L->w2[e];
        float *W = malloc((size_t)(w2->rows * w2->cols) * sizeof *W), *Wq = malloc((size_t)(w2->rows * w2->cols) * sizeof *Wq);
        for (int64_t i = 0; i < w2->rows; i++)
            mt_row_to_f32(w2->dtype, (const uint8_t *)w2->data + i * w2->row_stride, W + i * w2->cols, w2->cols);
        for (int64_t i = 0; i < w2->rows * w2->cols; i++) Wq[i] = W[i] * (1.0f + 0.05f * rnd());
        double *Hm = malloc((size_t)(F * F) * sizeof *Hm);
        assert_int_equal(mt_calib_hessian(&y, Hm), MT_OK);
        double err, ref;
        assert_int_equal(mt_calib_output_err(w2, Wq, &y, &err, &ref), MT_OK);
        const double err0 = mt_gptq_output_err(W, Wq, w2->rows, w2->cols, Hm);
        float *Z = calloc((size_t)(w2->rows * w2->cols), sizeof *Z);
        const double ref0 = mt_gptq_output_err(W, Z, w2->rows, w2->cols, Hm);
        printf("expert %d w2: output error %.6g (via H %.6g), reference %.6g (via H %.6g)\n", e, err, err0, ref, ref0);
        assert_true(err > 0 && fabs(err - err0) <= TOL_ERR * err0);
        assert_true(fabs(ref - ref0) <= TOL_ERR * ref0);
        free(Z);
        free(Hm);
        free(W);
        free(Wq);
        free(w1);
        free(w3);
        mt_calib_rows_free(&y);
        free(H);
        mt_calib_capture_free(&cc);
    }
    free(r.ffn_in);
    free(r.topk);
    free(ids);
    mt_model_free(m);
}

/* mt_quant_model (GPTQ q4_0, rows captured, Hessians built per job) on
 * layer 0 == mt_gptq_quantize with the Hessians of mt_calib_layer (all at
 * once), byte for byte, with 1 and 2 threads. */
static void test_quant_model_per_job(void **st) {
    (void)st;
    mt_quant_opts o;
    mt_quant_opts_default(&o);
    o.bits = 4;
    o.calib_tokens = 1024;
    o.calib_path = tu_model_path("data/train.txt");
    mt_model_opts mo;
    mt_model_opts_default(&mo);
    mo.n_threads = 2;
    mt_model *ref = NULL;
    assert_int_equal(mt_model_load(&ref, tu_model_dir(), &mo), MT_OK);
    int32_t *ids = NULL;
    size_t n_ids = 0;
    assert_int_equal(mt_calib_tokens(ref, o.calib_path, o.calib_tokens, &ids, &n_ids), MT_OK);
    const mt_config *c = mt_model_config(ref);
    const uint64_t cap = (uint64_t)ceil(o.expert_cap * 1024.0 * c->top_k / c->n_experts);
    const mt_layer_weights *L0 = &mt_model_weights(ref)->layers[0];
    const mt_gptq_params gp = {.damp = o.damp, .block = o.block, .act_order = o.act_order};
    for (int threads = 1; threads <= 2; threads++) {
        mo.n_threads = threads;
        mt_model *m = NULL;
        assert_int_equal(mt_model_load(&m, tu_model_dir(), &mo), MT_OK);
        /* The statistics come from the same model at the same thread count:
         * prefill splits its BLAS products by thread, and on some OpenBLAS
         * kernels a split changes float summation order, so captures at 1
         * and 2 threads may differ in the last ulp (and a GPTQ code with
         * them). What is claimed here is per-job == all-at-once. */
        mt_calib_stats cs;
        assert_int_equal(mt_calib_layer(m, 0, ids, 1024, MT_QUANT_CALIB_WINDOW, 0, cap, &cs), MT_OK);
        mt_quant_state *qs = NULL;
        mt_quant_report rep;
        assert_int_equal(mt_quant_model(&qs, m, &o, &rep), MT_OK);
        const mt_layer_weights *L = &mt_model_weights(m)->layers[0];
        for (int e = 0; e < c->n_experts; e++) {
            assert_int_equal(rep.expert_tokens[e], cs.count[e]);
            const mt_mat *src[3] = {&L0->w1[e], &L0->w3[e], &L0->w2[e]}, *got[3] = {&L->w1[e], &L->w3[e], &L->w2[e]};
            const double *hs[3] = {cs.h_in[e], cs.h_in[e], cs.h_mid[e]};
            for (int k = 0; k < 3; k++) {
                const int64_t rows = src[k]->rows, cols = src[k]->cols;
                mt_grid g;
                assert_int_equal(mt_grid_make(&g, 4, MT_QUANT_GROUP_DEFAULT, cols, "test"), MT_OK);
                float *W = malloc((size_t)(rows * cols) * sizeof *W), *a = malloc((size_t)(rows * cols) * sizeof *a),
                      *b = malloc((size_t)(rows * cols) * sizeof *b);
                int8_t *codes = malloc((size_t)(rows * cols));
                double *H = malloc((size_t)(cols * cols) * sizeof *H);
                memcpy(H, hs[k], (size_t)(cols * cols) * sizeof *H);
                for (int64_t i = 0; i < rows; i++)
                    mt_row_to_f32(src[k]->dtype, (const uint8_t *)src[k]->data + i * src[k]->row_stride, W + i * cols, cols);
                assert_int_equal(mt_gptq_quantize(W, rows, cols, H, &g, &gp, codes, a, b), MT_OK);
                uint64_t rb;
                assert_int_equal(mt_dtype_nbytes(MT_DT_Q4_0, (uint64_t)cols, &rb), MT_OK);
                uint8_t *packed = malloc((size_t)(rb * (uint64_t)rows));
                for (int64_t i = 0; i < rows; i++) mt_grid_pack_row(&g, codes + i * cols, a + i * (cols / g.group), cols, packed + i * rb);
                assert_int_equal(got[k]->dtype, MT_DT_Q4_0);
                assert_int_equal(got[k]->row_stride, rb);
                assert_memory_equal(got[k]->data, packed, (size_t)(rb * (uint64_t)rows));
                free(packed);
                free(H);
                free(codes);
                free(W);
                free(a);
                free(b);
            }
        }
        printf("%d thread(s): layer 0 experts byte-identical to GPTQ on mt_calib_layer's Hessians; mean rel. err %.6g\n",
               threads, rep.mean_rel_err);
        mt_quant_report_free(&rep);
        mt_model_free(m);
        mt_quant_state_free(qs);
        mt_calib_stats_free(&cs);
    }
    free(ids);
    mt_model_free(ref);
}

/* q4_0 (group 32) of src by GPTQ on a copy of H (NULL: RTN), packed;
 * *err = tr(D H Dᵀ) on Href with D = W − Ŵ. */
static uint8_t *q4_packed(const mt_mat *src, const double *H0, const double *Href, double *err) {
    const int64_t rows = src->rows, cols = src->cols;
    mt_grid g;
    assert_int_equal(mt_grid_make(&g, 4, MT_QUANT_GROUP_DEFAULT, cols, "test"), MT_OK);
    float *W = malloc((size_t)(rows * cols) * sizeof *W), *Wo = malloc((size_t)(rows * cols) * sizeof *Wo);
    float *a = malloc((size_t)(rows * cols) * sizeof *a), *b = malloc((size_t)(rows * cols) * sizeof *b);
    int8_t *codes = malloc((size_t)(rows * cols));
    double *H = NULL;
    if (H0) {
        H = malloc((size_t)(cols * cols) * sizeof *H);
        memcpy(H, H0, (size_t)(cols * cols) * sizeof *H);
    }
    for (int64_t i = 0; i < rows; i++)
        mt_row_to_f32(src->dtype, (const uint8_t *)src->data + i * src->row_stride, W + i * cols, cols);
    memcpy(Wo, W, (size_t)(rows * cols) * sizeof *W);
    const mt_gptq_params gp = {.damp = 0.1, .block = 128};
    assert_int_equal(mt_gptq_quantize(W, rows, cols, H, &g, &gp, codes, a, b), MT_OK);
    *err = mt_gptq_output_err(Wo, W, rows, cols, Href);
    uint64_t rb;
    assert_int_equal(mt_dtype_nbytes(MT_DT_Q4_0, (uint64_t)cols, &rb), MT_OK);
    uint8_t *packed = malloc((size_t)(rb * (uint64_t)rows));
    for (int64_t i = 0; i < rows; i++) mt_grid_pack_row(&g, codes + i * cols, a + i * (cols / g.group), cols, packed + i * rb);
    free(H);
    free(codes);
    free(W);
    free(Wo);
    free(a);
    free(b);
    return packed;
}

/* GPTQ of o_proj and lm_head in mt_quant_model (q4_0 experts, --attn-bits 4,
 * --embed-bits 4): layer 0's o_proj == mt_gptq_quantize on the Hessian of
 * the attention outputs (mt_calib_layer), the untied lm_head ==
 * mt_gptq_quantize on the Hessian of the final-norm outputs of the
 * calibration windows through the quantized model, byte for byte; and
 * each has a lower output error than RTN on its Hessian. */
static void test_quant_model_oproj_lm_head(void **st) {
    (void)st;
    mt_quant_opts o;
    mt_quant_opts_default(&o);
    o.bits = 4;
    o.attn_bits = 4;
    o.embed_bits = 4;
    o.calib_tokens = 1024;
    o.calib_path = tu_model_path("data/train.txt");
    mt_model_opts mo;
    mt_model_opts_default(&mo);
    mo.n_threads = 2;
    mt_model *ref = NULL, *m = NULL;
    assert_int_equal(mt_model_load(&ref, tu_model_dir(), &mo), MT_OK);
    assert_int_equal(mt_model_load(&m, tu_model_dir(), &mo), MT_OK);
    const mt_config *c = mt_model_config(ref);
    assert_false(c->tie_embeddings);
    const int64_t qd = (int64_t)c->n_heads * c->head_dim, Hd = c->hidden;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    assert_int_equal(mt_calib_tokens(ref, o.calib_path, o.calib_tokens, &ids, &n_ids), MT_OK);
    mt_calib_stats cs;
    const uint64_t cap = (uint64_t)ceil(o.expert_cap * 1024.0 * c->top_k / c->n_experts);
    assert_int_equal(mt_calib_layer(ref, 0, ids, 1024, MT_QUANT_CALIB_WINDOW, 1, cap, &cs), MT_OK);
    assert_int_equal(cs.q_dim, qd);
    assert_non_null(cs.h_attn_out);
    /* every token's row: the trace is the sum of squares of 1024 rows, > 0 */
    double tr = 0;
    for (int64_t i = 0; i < qd; i++) tr += cs.h_attn_out[i * qd + i];
    assert_true(tr > 0);

    mt_quant_state *qs = NULL;
    mt_quant_report rep;
    assert_int_equal(mt_quant_model(&qs, m, &o, &rep), MT_OK);
    const mt_weights *Wr = mt_model_weights(ref), *Wm = mt_model_weights(m);
    double e_gptq, e_rtn;
    uint8_t *want = q4_packed(&Wr->layers[0].wo, cs.h_attn_out, cs.h_attn_out, &e_gptq);
    uint8_t *rtn = q4_packed(&Wr->layers[0].wo, NULL, cs.h_attn_out, &e_rtn);
    const mt_mat *got = &Wm->layers[0].wo;
    assert_int_equal(got->dtype, MT_DT_Q4_0);
    assert_memory_equal(got->data, want, (size_t)(got->row_stride * (uint64_t)got->rows));
    printf("o_proj layer 0: output error GPTQ %.6g, RTN %.6g\n", e_gptq, e_rtn);
    assert_true(e_gptq < e_rtn);
    free(want);
    free(rtn);

    /* lm_head: the final-norm rows of the quantized model (lm_head itself
     * does not enter them). */
    mt_calib_rows fx;
    assert_int_equal(mt_calib_capture_final(m, ids, 1024, MT_QUANT_CALIB_WINDOW, &fx), MT_OK);
    assert_int_equal(fx.n, 1024);
    assert_int_equal(fx.cols, Hd);
    double *H = malloc((size_t)(Hd * Hd) * sizeof *H);
    assert_int_equal(mt_calib_hessian(&fx, H), MT_OK);
    want = q4_packed(&Wr->lm_head, H, H, &e_gptq);
    rtn = q4_packed(&Wr->lm_head, NULL, H, &e_rtn);
    got = &Wm->lm_head;
    assert_int_equal(got->dtype, MT_DT_Q4_0);
    assert_memory_equal(got->data, want, (size_t)(got->row_stride * (uint64_t)got->rows));
    printf("lm_head: output error GPTQ %.6g, RTN %.6g\n", e_gptq, e_rtn);
    assert_true(e_gptq < e_rtn);
    free(want);
    free(rtn);
    /* embeddings stay RTN */
    rtn = q4_packed(&Wr->tok_embd, NULL, H, &e_rtn);
    got = &Wm->tok_embd;
    assert_int_equal(got->dtype, MT_DT_Q4_0);
    assert_memory_equal(got->data, rtn, (size_t)(got->row_stride * (uint64_t)got->rows));
    free(rtn);
    free(H);
    mt_calib_rows_free(&fx);
    mt_quant_report_free(&rep);
    mt_quant_state_free(qs);
    mt_calib_stats_free(&cs);
    free(ids);
    mt_model_free(m);
    mt_model_free(ref);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rtn_bit_identical),
        cmocka_unit_test(test_tq2_0_decode_and_kernel),
        cmocka_unit_test(test_bad_options),
        cmocka_unit_test(test_gguf_outputs),
        cmocka_unit_test(test_calib_rows_and_stats),
        cmocka_unit_test(test_quant_model_per_job),
        cmocka_unit_test(test_quant_model_oproj_lm_head),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
