/* test_forward.c — the runtime's forward on the bundled kjv-mixtral-15m
 * against reference.json / reference-logits.f32 written by an independent
 * PyTorch implementation of HF Mixtral: all logits of logits_case within
 * 1e-3 with the same argmax, per-layer top-2 routing equal to routing_case
 * (in order: descending weight), prefill == token-by-token decode through
 * the KV cache, capture-hook properties, generation and argument errors. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moetool/mt_runtime.h"
#include "testutil.h"

enum { N_CASE = 15 };

static mt_model *g_model;
static int32_t g_ids[N_CASE];
static int32_t g_argmax[N_CASE];
static int32_t g_routing[64][N_CASE][2]; /* [layer][token][k] */
static float *g_ref;                      /* (N_CASE, vocab) */

static int setup(void **state) {
    (void)state;
    mt_model_opts o;
    mt_model_opts_default(&o);
    o.n_threads = 2;
    if (mt_model_load(&g_model, tu_model_dir(), &o) < 0) {
        fprintf(stderr, "load %s: %s\n", tu_model_dir(), mt_last_error());
        return -1;
    }
    size_t len;
    char *txt = tu_read_file(tu_model_path("reference.json"), &len);
    if (!txt) return -1;
    json_error_t err;
    json_t *j = json_loadb(txt, len, 0, &err);
    free(txt);
    if (!j) return -1;
    json_t *lc = json_object_get(j, "logits_case");
    json_t *ids = json_object_get(lc, "ids"), *am = json_object_get(j, "argmax_case");
    json_t *rc = json_object_get(j, "routing_case");
    if (json_array_size(ids) != N_CASE || json_array_size(am) != N_CASE || json_array_size(rc) > 64) return -1;
    for (int i = 0; i < N_CASE; i++) {
        g_ids[i] = (int32_t)json_integer_value(json_array_get(ids, i));
        g_argmax[i] = (int32_t)json_integer_value(json_array_get(am, i));
    }
    for (size_t l = 0; l < json_array_size(rc); l++)
        for (int i = 0; i < N_CASE; i++)
            for (int k = 0; k < 2; k++)
                g_routing[l][i][k] =
                    (int32_t)json_integer_value(json_array_get(json_array_get(json_array_get(rc, l), i), k));
    json_decref(j);
    char *raw = tu_read_file(tu_model_path("reference-logits.f32"), &len);
    int V = mt_model_config(g_model)->vocab;
    if (!raw || len != (size_t)N_CASE * V * 4) return -1;
    g_ref = malloc(len);
    memcpy(g_ref, raw, len);
    free(raw);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    mt_model_free(g_model);
    free(g_ref);
    return 0;
}

static int argmax(const float *x, int n) {
    int a = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[a]) a = i;
    return a;
}

static void test_reference_logits(void **state) {
    (void)state;
    const mt_config *cf = mt_model_config(g_model);
    const int V = cf->vocab;
    assert_int_equal(cf->n_experts, 8);
    assert_int_equal(cf->top_k, 2);
    mt_ctx *c;
    assert_int_equal(mt_ctx_init(&c, g_model, 64, 32), MT_OK); /* n_batch > n */
    float *lg = malloc((size_t)N_CASE * V * sizeof *lg);
    assert_int_equal(mt_ctx_forward(c, g_ids, N_CASE, lg, 1), MT_OK);
    assert_int_equal(mt_ctx_pos(c), N_CASE);
    double md = 0;
    for (size_t i = 0; i < (size_t)N_CASE * V; i++) {
        double d = fabs((double)lg[i] - g_ref[i]);
        if (d > md) md = d;
    }
    printf("reference logits: maxdiff %.3g over [%d, %d]\n", md, N_CASE, V);
    assert_true(md <= 1e-3);
    for (int i = 0; i < N_CASE; i++) {
        assert_int_equal(argmax(lg + (size_t)i * V, V), g_argmax[i]);
        assert_int_equal(argmax(g_ref + (size_t)i * V, V), g_argmax[i]);
    }
    /* Routing: the reference lists each token's experts by descending weight. */
    const int32_t *r = mt_ctx_last_routing(c);
    assert_non_null(r);
    for (int l = 0; l < cf->n_layers; l++)
        for (int i = 0; i < N_CASE; i++)
            for (int k = 0; k < 2; k++)
                assert_int_equal(r[((size_t)l * N_CASE + i) * 2 + k], g_routing[l][i][k]);
    /* Counts: every token goes to top_k experts in every layer. */
    const uint64_t *cnt = mt_ctx_routing_counts(c);
    for (int l = 0; l < cf->n_layers; l++) {
        uint64_t s = 0;
        for (int e = 0; e < 8; e++) s += cnt[l * 8 + e];
        assert_int_equal(s, (uint64_t)N_CASE * 2);
    }
    mt_ctx_routing_reset(c);
    assert_int_equal(mt_ctx_routing_counts(c)[0], 0);

    /* The last-token-only form equals the last row. */
    float *last = malloc((size_t)V * sizeof *last);
    mt_ctx_reset(c);
    assert_int_equal(mt_ctx_pos(c), 0);
    assert_int_equal(mt_ctx_forward(c, g_ids, N_CASE, last, 0), MT_OK);
    /* (matvec instead of a matmul row for lm_head: rounding only) */
    for (int v = 0; v < V; v++) assert_true(fabs((double)last[v] - lg[(size_t)(N_CASE - 1) * V + v]) <= 1e-5);
    free(last);
    free(lg);
    mt_ctx_free(c);
}

/* Acceptance 3: one batch vs token by token (and a split prefill). */
static void test_prefill_vs_decode(void **state) {
    (void)state;
    const int V = mt_model_config(g_model)->vocab;
    mt_ctx *a, *b;
    assert_int_equal(mt_ctx_init(&a, g_model, 32, N_CASE), MT_OK);
    assert_int_equal(mt_ctx_init(&b, g_model, 32, 8), MT_OK);
    float *batch = malloc((size_t)N_CASE * V * sizeof *batch), *one = malloc((size_t)V * sizeof *one);
    assert_int_equal(mt_ctx_forward(a, g_ids, N_CASE, batch, 1), MT_OK);
    double md = 0, md_last = 0;
    for (int i = 0; i < N_CASE; i++) {
        assert_int_equal(mt_ctx_forward(b, &g_ids[i], 1, one, 0), MT_OK);
        for (int v = 0; v < V; v++) {
            double d = fabs((double)one[v] - batch[(size_t)i * V + v]);
            if (d > md) md = d;
            if (i == N_CASE - 1 && d > md_last) md_last = d;
        }
    }
    printf("prefill vs decode: last token maxdiff %.3g, all tokens %.3g\n", md_last, md);
    assert_true(md_last <= 1e-4);
    assert_true(md <= 1e-4);
    /* 7 tokens prefilled, then 8 more as a second batch. */
    mt_ctx_reset(b);
    assert_int_equal(mt_ctx_forward(b, g_ids, 7, NULL, 0), MT_OK);
    assert_int_equal(mt_ctx_forward(b, g_ids + 7, 8, one, 0), MT_OK);
    md = 0;
    for (int v = 0; v < V; v++) md = fmax(md, fabs((double)one[v] - batch[(size_t)(N_CASE - 1) * V + v]));
    printf("split prefill 7+8: last token maxdiff %.3g\n", md);
    assert_true(md <= 1e-4);
    free(batch);
    free(one);
    mt_ctx_free(a);
    mt_ctx_free(b);
}

/* ---- capture hooks -------------------------------------------------------- */
typedef struct {
    int n_events[64];
    int n;                 /* tokens of the forward */
    int hidden, n_experts, top_k;
    float ffn_in[N_CASE * 256];
    int32_t topk[N_CASE * 2];
    int expert_rows;       /* rows seen by EXPERT_IN in the current layer */
    double gate_sum[N_CASE];
    int bad;
    int abort_at;          /* event number that returns an error; -1 never */
    int count;
} cap_state;

static int on_capture(void *user, const mt_capture_event *ev) {
    cap_state *s = user;
    s->count++;
    if (s->abort_at >= 0 && s->count == s->abort_at) return MT_ERR_INTERNAL;
    int kind_bit = 0;
    while ((1 << kind_bit) != (int)ev->kind) kind_bit++;
    s->n_events[kind_bit]++;
    switch (ev->kind) {
    case MT_CAP_ATTN_IN:
    case MT_CAP_LAYER_OUT:
        if (ev->n_rows != s->n || ev->n_cols != s->hidden || ev->expert != -1) s->bad++;
        break;
    case MT_CAP_FFN_IN:
        if (ev->n_rows != s->n || ev->n_cols != s->hidden) s->bad++;
        memcpy(s->ffn_in, ev->data, (size_t)s->n * s->hidden * sizeof(float));
        for (int i = 0; i < s->n; i++) s->gate_sum[i] = 0;
        break;
    case MT_CAP_ROUTER_LOGITS:
        if (ev->n_rows != s->n || ev->n_cols != s->n_experts || !ev->topk) s->bad++;
        memcpy(s->topk, ev->topk, (size_t)s->n * s->top_k * sizeof(int32_t));
        /* the chosen experts have the largest logits, in descending order */
        for (int i = 0; i < s->n; i++) {
            const float *lg = ev->data + (size_t)i * s->n_experts;
            const int32_t *tk = ev->topk + (size_t)i * s->top_k;
            if (lg[tk[0]] < lg[tk[1]]) s->bad++;
            for (int e = 0; e < s->n_experts; e++)
                if (e != tk[0] && e != tk[1] && lg[e] > lg[tk[1]]) s->bad++;
        }
        break;
    case MT_CAP_EXPERT_IN:
        for (int r = 0; r < ev->n_rows; r++) {
            int row = ev->rows[r];
            if (row < 0 || row >= s->n) {
                s->bad++;
                continue;
            }
            if (memcmp(ev->data + (size_t)r * s->hidden, s->ffn_in + (size_t)row * s->hidden,
                       (size_t)s->hidden * sizeof(float)))
                s->bad++;
            const int32_t *tk = s->topk + (size_t)row * s->top_k;
            if (tk[0] != ev->expert && tk[1] != ev->expert) s->bad++;
            s->gate_sum[row] += ev->gates[r];
        }
        break;
    case MT_CAP_EXPERT_OUT:
        if (ev->n_cols != s->hidden || !ev->rows || !ev->gates) s->bad++;
        break;
    }
    return 0;
}

static void test_capture(void **state) {
    (void)state;
    const mt_config *cf = mt_model_config(g_model);
    mt_ctx *c;
    assert_int_equal(mt_ctx_init(&c, g_model, 32, N_CASE), MT_OK);
    cap_state *s = calloc(1, sizeof *s);
    s->n = N_CASE;
    s->hidden = cf->hidden;
    s->n_experts = cf->n_experts;
    s->top_k = cf->top_k;
    s->abort_at = -1;
    unsigned all = MT_CAP_ATTN_IN | MT_CAP_FFN_IN | MT_CAP_ROUTER_LOGITS | MT_CAP_EXPERT_IN | MT_CAP_EXPERT_OUT |
                   MT_CAP_LAYER_OUT;
    mt_ctx_set_capture(c, on_capture, s, all);
    float *lg = malloc((size_t)cf->vocab * sizeof *lg);
    assert_int_equal(mt_ctx_forward(c, g_ids, N_CASE, lg, 0), MT_OK);
    assert_int_equal(s->bad, 0);
    assert_int_equal(s->n_events[0], cf->n_layers); /* ATTN_IN */
    assert_int_equal(s->n_events[1], cf->n_layers); /* FFN_IN */
    assert_int_equal(s->n_events[2], cf->n_layers); /* ROUTER_LOGITS */
    assert_int_equal(s->n_events[5], cf->n_layers); /* LAYER_OUT */
    assert_true(s->n_events[3] >= cf->n_layers && s->n_events[3] == s->n_events[4]);
    for (int i = 0; i < N_CASE; i++) assert_true(fabs(s->gate_sum[i] - 1.0) < 1e-5); /* last layer */
    /* capturing does not change the result */
    float *lg2 = malloc((size_t)cf->vocab * sizeof *lg2);
    mt_ctx_set_capture(c, NULL, NULL, 0);
    mt_ctx_reset(c);
    assert_int_equal(mt_ctx_forward(c, g_ids, N_CASE, lg2, 0), MT_OK);
    assert_memory_equal(lg, lg2, (size_t)cf->vocab * sizeof(float));
    /* only the asked kinds are delivered */
    memset(s->n_events, 0, sizeof s->n_events);
    mt_ctx_set_capture(c, on_capture, s, MT_CAP_LAYER_OUT);
    mt_ctx_reset(c);
    assert_int_equal(mt_ctx_forward(c, g_ids, N_CASE, NULL, 0), MT_OK);
    assert_int_equal(s->n_events[5], cf->n_layers);
    assert_int_equal(s->n_events[0] + s->n_events[1] + s->n_events[2] + s->n_events[3] + s->n_events[4], 0);
    /* a non-zero return aborts the forward with that status, position unchanged */
    s->abort_at = s->count + 2;
    mt_ctx_reset(c);
    assert_int_equal(mt_ctx_forward(c, g_ids, N_CASE, NULL, 0), MT_ERR_INTERNAL);
    assert_int_equal(mt_ctx_pos(c), 0);
    free(lg);
    free(lg2);
    free(s);
    mt_ctx_free(c);
}

static void test_errors(void **state) {
    (void)state;
    mt_ctx *c;
    assert_int_equal(mt_ctx_init(&c, g_model, 0, 1), MT_ERR_ARG);
    assert_int_equal(mt_ctx_init(&c, g_model, 8, 4), MT_OK);
    int32_t bad = mt_model_config(g_model)->vocab;
    assert_int_equal(mt_ctx_forward(c, &bad, 1, NULL, 0), MT_ERR_ARG);
    bad = -1;
    assert_int_equal(mt_ctx_forward(c, &bad, 1, NULL, 0), MT_ERR_ARG);
    assert_int_equal(mt_ctx_forward(c, g_ids, 5, NULL, 0), MT_ERR_ARG); /* n > n_batch */
    assert_int_equal(mt_ctx_forward(c, g_ids, 4, NULL, 0), MT_OK);
    assert_int_equal(mt_ctx_forward(c, g_ids, 4, NULL, 0), MT_OK);
    assert_int_equal(mt_ctx_forward(c, g_ids, 1, NULL, 0), MT_ERR_ARG); /* cache full */
    assert_true(strstr(mt_last_error(), "context") != NULL);
    assert_int_equal(mt_ctx_pos(c), 8);
    mt_ctx_free(c);
    mt_ctx_free(NULL);
    mt_model *none = (mt_model *)1;
    assert_true(mt_model_load(&none, "/nonexistent/model", NULL) < 0);
    assert_null(none);
}

/* ---- generation ------------------------------------------------------------- */
static void test_generate(void **state) {
    (void)state;
    const int V = mt_model_config(g_model)->vocab;
    mt_sample_opts so;
    mt_sample_opts_default(&so);
    so.n_predict = 10;
    so.stop_at_eos = 0;
    int32_t out[16], n = 0;
    int n_out = 0;
    mt_gen_timing tm;
    const int np = 5;
    assert_int_equal(mt_generate(g_model, g_ids, np, &so, NULL, NULL, out, &n_out, &tm), MT_OK);
    assert_int_equal(n_out, 10);
    assert_int_equal(tm.n_prompt, np);
    assert_int_equal(tm.n_gen, 10);
    printf("generate: prefill %.4f s, decode %.4f s for %d tokens\n", tm.prefill_s, tm.decode_s, tm.n_gen);
    /* first token: the independent reference's argmax after the prompt */
    assert_int_equal(out[0], g_argmax[np - 1]);
    /* greedy: every generated token is the argmax of a full forward */
    int32_t seq[32];
    memcpy(seq, g_ids, np * sizeof(int32_t));
    memcpy(seq + np, out, (size_t)n_out * sizeof(int32_t));
    n = np + n_out - 1;
    mt_ctx *c;
    assert_int_equal(mt_ctx_init(&c, g_model, 32, 32), MT_OK);
    float *lg = malloc((size_t)n * V * sizeof *lg);
    assert_int_equal(mt_ctx_forward(c, seq, n, lg, 1), MT_OK);
    for (int i = 0; i < n_out; i++) assert_int_equal(argmax(lg + (size_t)(np - 1 + i) * V, V), out[i]);
    free(lg);
    mt_ctx_free(c);

    /* sampling: a seed reproduces its output; a tiny nucleus is greedy */
    int32_t s1[16], s2[16], s3[16];
    int n1, n2, n3;
    so.temp = 1.0f;
    so.seed = 42;
    assert_int_equal(mt_generate(g_model, g_ids, np, &so, NULL, NULL, s1, &n1, NULL), MT_OK);
    assert_int_equal(mt_generate(g_model, g_ids, np, &so, NULL, NULL, s2, &n2, NULL), MT_OK);
    assert_int_equal(n1, n2);
    assert_memory_equal(s1, s2, (size_t)n1 * sizeof(int32_t));
    so.top_p = 1e-6f;
    assert_int_equal(mt_generate(g_model, g_ids, np, &so, NULL, NULL, s3, &n3, NULL), MT_OK);
    assert_int_equal(n3, 10);
    assert_memory_equal(s3, out, 10 * sizeof(int32_t));

    /* errors: empty prompt, prompt longer than the model's context */
    mt_sample_opts_default(&so);
    assert_int_equal(mt_generate(g_model, g_ids, 0, &so, NULL, NULL, out, &n_out, NULL), MT_ERR_ARG);
    int maxp = mt_model_config(g_model)->max_pos;
    int32_t *big = calloc((size_t)maxp + 1, sizeof *big);
    assert_int_equal(mt_generate(g_model, big, maxp + 1, &so, NULL, NULL, out, &n_out, NULL), MT_ERR_ARG);
    free(big);
}

static void test_param_stats(void **state) {
    (void)state;
    const mt_config *c = mt_model_config(g_model);
    mt_param_stats ps;
    mt_model_param_stats(g_model, &ps);
    uint64_t H = c->hidden, kvd = (uint64_t)c->n_kv_heads * c->head_dim, qd = (uint64_t)c->n_heads * c->head_dim;
    uint64_t expert = 3ull * c->ffn * H;
    uint64_t per_layer = 2 * H + qd * H * 2 + kvd * H * 2 + (uint64_t)c->n_experts * H;
    uint64_t base = 2ull * c->vocab * H + H + c->n_layers * per_layer;
    uint64_t experts = (uint64_t)c->n_layers * c->n_experts * expert;
    printf("params: total %llu, experts %llu, active %llu, %llu bytes\n", (unsigned long long)ps.total,
           (unsigned long long)ps.experts, (unsigned long long)ps.active, (unsigned long long)ps.weight_bytes);
    assert_int_equal(ps.experts, experts);
    assert_int_equal(ps.total, base + experts);
    assert_int_equal(ps.active, base + (uint64_t)c->n_layers * c->top_k * expert);
    assert_int_equal(ps.weight_bytes, 2 * ps.total); /* bf16 */
    assert_int_equal(ps.expert_bytes, 2 * ps.experts);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_logits), cmocka_unit_test(test_prefill_vs_decode),
        cmocka_unit_test(test_capture),          cmocka_unit_test(test_errors),
        cmocka_unit_test(test_generate),         cmocka_unit_test(test_param_stats),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
