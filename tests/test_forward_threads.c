/* test_forward_threads.c — the forward gives the same logits, bit for bit,
 * whatever the number of threads: the bundled model written in every
 * storage type the CPU kernels run (f32, bf16, q8_0, q4_0, q4_K, q6_K,
 * q5_0 for llama.cpp's read-only types (rounded x and sgemm), the llama.cpp
 * Q4_K_M mix of q4_K/q5_K/q6_K/q8_0, tq2_0 experts, qmoe-coded experts) is
 * loaded with 1, 2 and 3 threads and runs the same tokens:
 * one batched prefill (all logits: every prefill kernel, expert batches of
 * every size) and then a few tokens one at a time through the KV cache
 * (the decode matvecs). Every logit and every captured activation must be
 * equal to the 1-thread run's; on a difference the first activation that
 * differs (layer, kind, expert) is named. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moetool/mt_runtime.h"
#include "testutil.h"

enum { N_PREFILL = 200, N_DECODE = 4, MAX_EVENTS = 4096 };

static char *g_dir;
static int32_t *g_ids;
static size_t g_n_ids;

/* One captured event: what it was and a copy of its data. */
typedef struct {
    int kind, layer, expert, n;
    float *data;
} event;
typedef struct {
    event ev[MAX_EVENTS];
    int n;
} trace;

static int capture(void *user, const mt_capture_event *e) {
    trace *t = user;
    if (t->n >= MAX_EVENTS) return 0;
    event *d = &t->ev[t->n++];
    d->kind = (int)e->kind;
    d->layer = e->layer;
    d->expert = e->expert;
    d->n = e->n_rows * e->n_cols;
    d->data = malloc((size_t)d->n * sizeof(float));
    if (d->data) memcpy(d->data, e->data, (size_t)d->n * sizeof(float));
    return 0;
}

static void trace_free(trace *t) {
    for (int i = 0; i < t->n; i++) free(t->ev[i].data);
    t->n = 0;
}

/* Logits of the prefill then of each decoded token, (N_PREFILL + N_DECODE,
 * vocab); the activations of every step into tr. */
static float *run(const char *path, int threads, trace *tr, int *vocab) {
    mt_model_opts o;
    mt_model_opts_default(&o);
    o.n_threads = threads;
    mt_model *m = NULL;
    if (mt_model_load(&m, path, &o) != MT_OK) fail_msg("load %s: %s", path, mt_last_error());
    assert_int_equal(mt_model_threads(m), threads);
    const int V = mt_model_config(m)->vocab;
    *vocab = V;
    float *lg = malloc((size_t)(N_PREFILL + N_DECODE) * V * sizeof *lg);
    assert_non_null(lg);
    mt_ctx *c = NULL;
    assert_int_equal(mt_ctx_init(&c, m, N_PREFILL + N_DECODE, N_PREFILL), MT_OK);
    mt_ctx_set_capture(c, capture, tr, 0xffffffffu);
    assert_int_equal(mt_ctx_forward(c, g_ids, N_PREFILL, lg, 1), MT_OK);
    for (int i = 0; i < N_DECODE; i++)
        assert_int_equal(mt_ctx_forward(c, g_ids + N_PREFILL + i, 1, lg + (size_t)(N_PREFILL + i) * V, 0), MT_OK);
    mt_ctx_free(c);
    mt_model_free(m);
    return lg;
}

static const char *kind_name(int k) {
    switch (k) {
    case MT_CAP_ATTN_IN: return "attn_in";
    case MT_CAP_FFN_IN: return "ffn_in";
    case MT_CAP_ROUTER_LOGITS: return "router_logits";
    case MT_CAP_EXPERT_IN: return "expert_in";
    case MT_CAP_EXPERT_OUT: return "expert_out";
    case MT_CAP_LAYER_OUT: return "layer_out";
    case MT_CAP_ATTN_OUT: return "attn_out";
    case MT_CAP_FINAL_NORM: return "final_norm";
    default: return "?";
    }
}

/* The model at path: threads 2 and 3 against 1, bit for bit. */
static void check_model(const char *what, const char *path) {
    static trace t1, tn;
    int V = 0;
    float *ref = run(path, 1, &t1, &V);
    for (int th = 2; th <= 3; th++) {
        float *lg = run(path, th, &tn, &V);
        const size_t nl = (size_t)(N_PREFILL + N_DECODE) * V;
        size_t bad = 0, first = nl;
        for (size_t i = 0; i < nl; i++)
            if (memcmp(&lg[i], &ref[i], sizeof(float)) != 0) {
                if (first == nl) first = i;
                bad++;
            }
        if (bad) {
            char where[256] = "no captured activation differs";
            assert_int_equal(tn.n, t1.n);
            for (int i = 0; i < t1.n; i++) {
                const event *a = &t1.ev[i], *b = &tn.ev[i];
                if (a->kind != b->kind || a->n != b->n || memcmp(a->data, b->data, (size_t)a->n * sizeof(float))) {
                    snprintf(where, sizeof where, "first differing activation: event %d, layer %d %s expert %d", i,
                             a->layer, kind_name(a->kind), a->expert);
                    break;
                }
            }
            fail_msg("%s: %zu of %zu logits differ between 1 and %d threads (first: token %zu, %.9g vs %.9g); %s",
                     what, bad, nl, th, first / (size_t)V, lg[first], ref[first], where);
        }
        print_message("%s: %d threads == 1 thread (%zu logits, %d activations)\n", what, th, nl, t1.n);
        free(lg);
        trace_free(&tn);
    }
    free(ref);
    trace_free(&t1);
}

static void convert_to(const char *dtype) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "'%s' convert '%s' -o '%s/%s.gguf' --to gguf --dtype %s --quiet", tu_bin(),
             tu_model_dir(), g_dir, dtype, dtype);
    assert_int_equal(tu_system(cmd), 0);
    snprintf(cmd, sizeof cmd, "%s/%s.gguf", g_dir, dtype);
    check_model(dtype, cmd);
}

static void quantize_to(const char *name, const char *args, const char *ext) {
    char cmd[8192], out[4200];
    snprintf(out, sizeof out, "%s/%s%s", g_dir, name, ext);
    snprintf(cmd, sizeof cmd, "'%s' quantize '%s' -o '%s' --method rtn %s --quiet", tu_bin(), tu_model_dir(), out,
             args);
    assert_int_equal(tu_system(cmd), 0);
    check_model(name, out);
}

static void test_f32(void **s) { (void)s; convert_to("f32"); }
static void test_bf16(void **s) { (void)s; convert_to("bf16"); }
static void test_q8_0(void **s) { (void)s; convert_to("q8_0"); }
static void test_q4_0(void **s) { (void)s; convert_to("q4_0"); }
static void test_q4_k(void **s) { (void)s; convert_to("q4_k"); }
static void test_q6_k(void **s) { (void)s; convert_to("q6_k"); }
static void test_q5_0(void **s) { (void)s; convert_to("q5_0"); } /* x rounded to q8_0, then sgemm */
static void test_q4_k_m(void **s) { (void)s; quantize_to("q4_k_m", "--mix q4_k_m", ".gguf"); }
static void test_tq2_0(void **s) { (void)s; quantize_to("tq2_0", "--bits ternary --group 256", ".gguf"); }
static void test_qmoe(void **s) {
    (void)s;
    quantize_to("qmoe", "--bits ternary --group row --codec qmoe --format hf", "");
}

static int setup(void **state) {
    (void)state;
    g_dir = tu_mkdtemp();
    if (!g_dir) return -1;
    mt_model *m = NULL;
    if (mt_model_load(&m, tu_model_dir(), NULL) != MT_OK) return -1;
    g_ids = tu_test_ids(mt_model_tokenizer(m), &g_n_ids);
    mt_model_free(m);
    return g_ids && g_n_ids >= N_PREFILL + N_DECODE ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    tu_rmtree(g_dir);
    free(g_dir);
    free(g_ids);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f32),  cmocka_unit_test(test_bf16),   cmocka_unit_test(test_q8_0),
        cmocka_unit_test(test_q4_0), cmocka_unit_test(test_q4_k),   cmocka_unit_test(test_q6_k),
        cmocka_unit_test(test_q5_0), cmocka_unit_test(test_q4_k_m), cmocka_unit_test(test_tq2_0),
        cmocka_unit_test(test_qmoe),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
