/* test_alias.c — alias routing (config key moe_router_alias): a layer keeps
 * R router rows over K < R experts, row r -> expert alias[r].
 *
 * The property checked: when aliased experts are identical copies, alias
 * routing is exactly the unaliased model. From the bundled model two
 * checkpoints are written in a temporary directory:
 *   A  8 experts, 8 router rows; layer 1's experts 2 and 5 both replaced by
 *      M = bf16((e2 + e5) / 2)
 *   B  layer 1 with 7 experts (0 1 M 3 4 6 7, renumbered) and the same 8
 *      router rows, alias [0,1,2,3,4,2,5,6]
 * and compared: logits (prefill and decode), routing counts, top-k ids and
 * capture events, which must name experts, derived independently from A's
 * routing. Also: config round trip, bad alias maps -> MT_ERR_FORMAT naming
 * config.json, a router tensor that disagrees with the map, and convert
 * (GGUF refused, HF -> HF keeps the alias). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "moetool/mt_io.h"
#include "moetool/mt_runtime.h"
#include "moetool/mt_write.h"
#include "testutil.h"

enum { LAYER = 1, EA = 2, EB = 5, N_TOK = 192, N_DEC = 6 };
static const int g_alias[8] = {0, 1, 2, 3, 4, 2, 5, 6};

static char *g_tmp, *g_dir_a, *g_dir_b;
static int32_t g_ids[N_TOK];

/* ---- building the checkpoints ----------------------------------------- */

static float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static uint16_t f32_to_bf16(float f) { /* round to nearest even; inputs are finite */
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* Expert index of "model.layers.<LAYER>.block_sparse_moe.experts.<e>.<w>.weight", else -1. */
static int layer_expert(const char *name, char *w_out) {
    int l, e;
    char w[8];
    if (sscanf(name, "model.layers.%d.block_sparse_moe.experts.%d.%2s", &l, &e, w) != 3 || l != LAYER) return -1;
    memcpy(w_out, w, 3);
    return e;
}

static void write_config(const char *dir, const mt_config *c) {
    char *text = NULL;
    assert_int_equal(mt_config_to_hf_json(&text, c, "bfloat16"), MT_OK);
    char p[4096];
    snprintf(p, sizeof p, "%s/config.json", dir);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    free(text);
}

/* Writes A (aliased == 0) or B (aliased == 1) into dir. */
static void build(const char *dir, int aliased) {
    mt_ckpt *ck;
    assert_int_equal(mt_ckpt_open(&ck, tu_model_dir()), MT_OK);
    const size_t n = mt_ckpt_count(ck);
    /* merged expert M per weight (w1, w2, w3) */
    uint16_t *merged[3] = {0};
    const char *wn[3] = {"w1", "w2", "w3"};
    for (int k = 0; k < 3; k++) {
        char na[160], nb[160];
        snprintf(na, sizeof na, "model.layers.%d.block_sparse_moe.experts.%d.%s.weight", LAYER, EA, wn[k]);
        snprintf(nb, sizeof nb, "model.layers.%d.block_sparse_moe.experts.%d.%s.weight", LAYER, EB, wn[k]);
        const mt_tensor *a = mt_ckpt_find(ck, na), *b = mt_ckpt_find(ck, nb);
        assert_non_null(a);
        assert_non_null(b);
        assert_int_equal(a->dtype, MT_DT_BF16);
        int64_t m = mt_tensor_numel(a);
        merged[k] = malloc((size_t)m * 2);
        const uint16_t *pa = a->data, *pb = b->data;
        for (int64_t i = 0; i < m; i++)
            merged[k][i] = f32_to_bf16(0.5f * (bf16_to_f32(pa[i]) + bf16_to_f32(pb[i])));
    }
    mt_hf_writer *w;
    assert_int_equal(mt_hf_writer_open(&w, dir, 0), MT_OK);
    for (int pass = 0; pass < 2; pass++) {
        for (size_t i = 0; i < n; i++) {
            const mt_tensor *t = mt_ckpt_get(ck, i);
            char wk[3] = {0}, name[160];
            int e = layer_expert(t->name, wk);
            const void *data = t->data;
            snprintf(name, sizeof name, "%s", t->name);
            if (e == EA || e == EB) {
                int k = wk[1] == '1' ? 0 : wk[1] == '2' ? 1 : 2;
                data = merged[k];
                if (aliased && e == EB) continue;
            } else if (aliased && e > EB) {
                snprintf(name, sizeof name, "model.layers.%d.block_sparse_moe.experts.%d.%s.weight", LAYER, e - 1, wk);
            }
            if (pass == 0)
                assert_int_equal(mt_hf_writer_add(w, name, t->dtype, t->n_dims, t->shape), MT_OK);
            else
                assert_int_equal(mt_hf_writer_write(w, data, t->nbytes), MT_OK);
        }
    }
    assert_int_equal(mt_hf_writer_finish(w), MT_OK);
    mt_hf_writer_free(w);
    mt_config c = *mt_ckpt_config(ck);
    if (aliased) {
        c.layer_experts[LAYER] = 7;
        c.router_rows[LAYER] = 8;
        for (int r = 0; r < 8; r++) c.router_alias[LAYER][r] = (uint8_t)g_alias[r];
    }
    write_config(dir, &c);
    for (int k = 0; k < 3; k++) free(merged[k]);
    mt_ckpt_free(ck);
}

static char *subdir(const char *name) {
    char *p = malloc(strlen(g_tmp) + strlen(name) + 2);
    sprintf(p, "%s/%s", g_tmp, name);
    assert_int_equal(mkdir(p, 0755), 0);
    return p;
}

static int setup(void **state) {
    (void)state;
    g_tmp = tu_mkdtemp();
    if (!g_tmp) return -1;
    g_dir_a = subdir("a");
    g_dir_b = subdir("b");
    build(g_dir_a, 0);
    build(g_dir_b, 1);
    uint64_t s = 12345;
    for (int i = 0; i < N_TOK; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        g_ids[i] = (int32_t)(3 + (s >> 33) % 4000);
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    tu_rmtree(g_tmp);
    free(g_tmp);
    free(g_dir_a);
    free(g_dir_b);
    return 0;
}

static mt_model *load(const char *dir) {
    mt_model_opts o;
    mt_model_opts_default(&o);
    o.n_threads = 2;
    mt_model *m = NULL;
    if (mt_model_load(&m, dir, &o) != MT_OK) fprintf(stderr, "load %s: %s\n", dir, mt_last_error());
    assert_non_null(m);
    return m;
}

/* ---- capture: per token, the total gate each expert of LAYER got ------- */
typedef struct {
    float gate[N_TOK][8];  /* [token][expert] summed gate */
    int runs[N_TOK][8];    /* how often the expert ran for the token */
    int bad, logit_cols;
} cap_t;

static int on_cap(void *user, const mt_capture_event *ev) {
    cap_t *c = user;
    if (ev->layer != LAYER) return 0;
    if (ev->kind == MT_CAP_ROUTER_LOGITS) {
        c->logit_cols = ev->n_cols;
        return 0;
    }
    if (ev->expert < 0 || ev->expert >= 8) {
        c->bad++;
        return 0;
    }
    for (int r = 0; r < ev->n_rows; r++) {
        c->gate[ev->rows[r]][ev->expert] += ev->gates[r];
        c->runs[ev->rows[r]][ev->expert]++;
    }
    return 0;
}

/* ---- tests --------------------------------------------------------------- */

static void test_config_round_trip(void **state) {
    (void)state;
    mt_ckpt *ck;
    assert_int_equal(mt_ckpt_open(&ck, g_dir_b), MT_OK);
    const mt_config *c = mt_ckpt_config(ck);
    assert_int_equal(c->n_experts, 8);
    assert_int_equal(mt_config_layer_experts(c, LAYER), 7);
    assert_int_equal(mt_config_router_rows(c, LAYER), 8);
    assert_int_equal(mt_config_router_rows(c, 0), 8);
    assert_int_equal(c->router_rows[0], 0);
    assert_true(mt_config_has_alias(c));
    for (int r = 0; r < 8; r++) assert_int_equal(c->router_alias[LAYER][r], g_alias[r]);
    /* the text as written */
    char p[4096];
    snprintf(p, sizeof p, "%s/config.json", g_dir_b);
    char *txt = tu_read_file(p, NULL);
    assert_non_null(strstr(txt, "\"moe_router_alias\""));
    assert_non_null(strstr(txt, "\"moe_layer_experts\""));
    free(txt);
    /* the weights: router_full has 8 rows, router the 7 anchor rows */
    mt_weights w;
    assert_int_equal(mt_weights_init(&w, ck), MT_OK);
    const mt_layer_weights *L = &w.layers[LAYER];
    assert_int_equal(L->n_experts, 7);
    assert_int_equal(L->n_router_rows, 8);
    assert_non_null(L->alias);
    assert_int_equal(L->router_full.rows, 8);
    assert_int_equal(L->router.rows, 7);
    const int anchor[7] = {0, 1, 2, 3, 4, 6, 7}; /* first row aliasing each expert */
    for (int e = 0; e < 7; e++)
        assert_memory_equal((const uint8_t *)L->router.data + e * L->router.row_stride,
                            (const uint8_t *)L->router_full.data + anchor[e] * L->router_full.row_stride,
                            L->router.row_stride);
    assert_null(w.layers[0].alias);
    assert_int_equal(w.layers[0].n_router_rows, 8);
    mt_weights_free(&w);
    mt_ckpt_free(ck);
}

static void test_alias_equals_copies(void **state) {
    (void)state;
    mt_model *ma = load(g_dir_a), *mb = load(g_dir_b);
    const int V = mt_model_config(ma)->vocab, NL = mt_model_config(ma)->n_layers, K = 2;
    mt_ctx *ca, *cb;
    assert_int_equal(mt_ctx_init(&ca, ma, N_TOK + N_DEC, N_TOK), MT_OK);
    assert_int_equal(mt_ctx_init(&cb, mb, N_TOK + N_DEC, N_TOK), MT_OK);
    cap_t *pa = calloc(1, sizeof *pa), *pb = calloc(1, sizeof *pb);
    mt_ctx_set_capture(ca, on_cap, pa, MT_CAP_ROUTER_LOGITS | MT_CAP_EXPERT_IN);
    mt_ctx_set_capture(cb, on_cap, pb, MT_CAP_ROUTER_LOGITS | MT_CAP_EXPERT_IN);
    float *la = malloc((size_t)N_TOK * V * sizeof(float)), *lb = malloc((size_t)N_TOK * V * sizeof(float));
    assert_int_equal(mt_ctx_forward(ca, g_ids, N_TOK, la, 1), MT_OK);
    assert_int_equal(mt_ctx_forward(cb, g_ids, N_TOK, lb, 1), MT_OK);

    /* logits */
    double md = 0;
    for (size_t i = 0; i < (size_t)N_TOK * V; i++) md = fmax(md, fabs((double)la[i] - lb[i]));
    printf("prefill: max |logit A - logit B| = %.3g over %d tokens\n", md, N_TOK);
    assert_true(md <= 1e-5);

    /* top-k ids: B's are A's rows mapped through the alias, duplicates -1 */
    const int32_t *ra = mt_ctx_last_routing(ca), *rb = mt_ctx_last_routing(cb);
    int both = 0;
    for (int l = 0; l < NL; l++)
        for (int i = 0; i < N_TOK; i++) {
            const int32_t *ta = ra + ((size_t)l * N_TOK + i) * K, *tb = rb + ((size_t)l * N_TOK + i) * K;
            if (l != LAYER) {
                assert_int_equal(ta[0], tb[0]);
                assert_int_equal(ta[1], tb[1]);
                continue;
            }
            int e0 = g_alias[ta[0]], e1 = g_alias[ta[1]];
            assert_int_equal(tb[0], e0);
            assert_int_equal(tb[1], e1 == e0 ? -1 : e1);
            both += e1 == e0;
        }
    printf("tokens with both aliased rows in their top-2: %d of %d\n", both, N_TOK);
    assert_true(both > 0); /* the summed-gate path was exercised */

    /* routing counts: per expert, tokens that ran it */
    const uint64_t *ka = mt_ctx_routing_counts(ca), *kb = mt_ctx_routing_counts(cb);
    assert_non_null(ka);
    assert_non_null(kb);
    for (int l = 0; l < NL; l++) {
        uint64_t ea[8], eb[8] = {0};
        for (int e = 0; e < 8; e++) ea[e] = ka[(size_t)l * 8 + e];
        for (int e = 0; e < 8; e++) eb[e] = kb[(size_t)l * 8 + e];
        if (l != LAYER) {
            assert_memory_equal(ea, eb, sizeof ea);
            continue;
        }
        uint64_t want[8] = {0};
        for (int r = 0; r < 8; r++) want[g_alias[r]] += ea[r];
        want[2] -= (uint64_t)both;
        assert_memory_equal(want, eb, sizeof want);
    }

    /* capture events: experts of B, each at most once per token, gates the
     * sum of A's gates of the rows aliasing it */
    assert_int_equal(pa->bad + pb->bad, 0);
    assert_int_equal(pb->logit_cols, 8);
    for (int i = 0; i < N_TOK; i++) {
        float want[8] = {0};
        for (int r = 0; r < 8; r++) want[g_alias[r]] += pa->gate[i][r];
        float tot = 0;
        for (int e = 0; e < 8; e++) {
            assert_true(pb->runs[i][e] <= 1);
            assert_true(fabsf(want[e] - pb->gate[i][e]) <= 1e-6f);
            tot += pb->gate[i][e];
        }
        assert_true(fabsf(tot - 1.0f) <= 1e-5f);
        assert_int_equal(pb->runs[i][7], 0);
    }

    /* decode through the KV cache (the matvec path) */
    md = 0;
    for (int t = 0; t < N_DEC; t++) {
        int32_t id = g_ids[t];
        assert_int_equal(mt_ctx_forward(ca, &id, 1, la, 0), MT_OK);
        assert_int_equal(mt_ctx_forward(cb, &id, 1, lb, 0), MT_OK);
        for (int v = 0; v < V; v++) md = fmax(md, fabs((double)la[v] - lb[v]));
    }
    printf("decode: max |logit A - logit B| = %.3g over %d tokens\n", md, N_DEC);
    assert_true(md <= 1e-5);

    free(la);
    free(lb);
    free(pa);
    free(pb);
    mt_ctx_free(ca);
    mt_ctx_free(cb);
    mt_model_free(ma);
    mt_model_free(mb);
}

/* Eval reports the same perplexity for both. */
static void test_eval_equal(void **state) {
    (void)state;
    mt_model *ma = load(g_dir_a), *mb = load(g_dir_b);
    mt_eval_opts o;
    mt_eval_opts_default(&o);
    o.ctx = 64;
    o.max_windows = 3;
    int32_t ids[N_TOK];
    memcpy(ids, g_ids, sizeof ids);
    mt_eval_result a, b;
    assert_int_equal(mt_eval_ppl(ma, NULL, ids, N_TOK, &o, &a), MT_OK);
    assert_int_equal(mt_eval_ppl(mb, ma, ids, N_TOK, &o, &b), MT_OK);
    printf("ppl A %.6f  B %.6f  KL %.3g  top-1 %.4f\n", a.ppl, b.ppl, b.kl_mean, b.top1_agree);
    assert_true(fabs(a.ppl - b.ppl) <= 1e-4 * a.ppl);
    assert_true(b.top1_agree == 1.0);
    assert_int_equal(b.routing_experts >= 7, 1);
    mt_eval_result_free(&a);
    mt_eval_result_free(&b);
    mt_model_free(ma);
    mt_model_free(mb);
}

static const char *BASE =
    "{\"model_type\": \"mixtral\", \"vocab_size\": 100, \"hidden_size\": 64, \"intermediate_size\": 32,"
    " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_local_experts\": 4,"
    " \"num_experts_per_tok\": 2";

static int parse(const char *tail, mt_config *c) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s%s}", BASE, tail);
    return mt_config_from_hf_json(c, buf, strlen(buf), "/x/config.json");
}

static void test_bad_maps(void **state) {
    (void)state;
    mt_config *c = malloc(sizeof *c);
    /* accepted: more rows than experts, null for a layer, per-layer K */
    assert_int_equal(parse(", \"moe_router_alias\": [null, [0, 1, 2, 3, 3, 0]]", c), MT_OK);
    assert_int_equal(mt_config_router_rows(c, 0), 4);
    assert_int_equal(mt_config_router_rows(c, 1), 6);
    assert_int_equal(parse(", \"moe_layer_experts\": [4, 3], \"moe_router_alias\": [null, [0, 1, 2, 2]]", c), MT_OK);
    assert_int_equal(mt_config_layer_experts(c, 1), 3);
    assert_int_equal(c->router_alias[1][3], 2);
    /* writer -> reader round trip */
    char *text = NULL;
    mt_config d;
    assert_int_equal(mt_config_to_hf_json(&text, c, NULL), MT_OK);
    assert_int_equal(mt_config_from_hf_json(&d, text, strlen(text), "rt"), MT_OK);
    free(text);
    assert_memory_equal(d.router_rows, c->router_rows, sizeof d.router_rows);
    assert_memory_equal(d.router_alias, c->router_alias, sizeof d.router_alias);

    static const struct {
        const char *tail, *needle;
    } bad[] = {
        {", \"moe_router_alias\": [null, [0, 1, 2, 4]]", "moe_router_alias[1][3]"},        /* out of range */
        {", \"moe_router_alias\": [null, [0, 1, -1, 3]]", "moe_router_alias[1][2]"},       /* negative */
        {", \"moe_router_alias\": [null, [0, 1, 2]]", "has 3 rows for 4 experts"},         /* too short */
        {", \"moe_router_alias\": [[0, 1, 2, 3, 0]]", "1 entries for 2 layers"},           /* wrong length */
        {", \"moe_router_alias\": [null, [0, 1, 2, 2, 1]]", "no router row selects expert 3"},
        {", \"moe_router_alias\": [null, 5]", "neither a list nor null"},
        {", \"moe_router_alias\": {\"1\": [0, 1, 2, 3]}", "not a list"},
        {", \"moe_router_alias\": [null, [0, 1, 2, 3.5]]", "moe_router_alias[1][3]"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = parse(bad[i].tail, c);
        if (rc != MT_ERR_FORMAT || !strstr(mt_last_error(), "/x/config.json") || !strstr(mt_last_error(), bad[i].needle))
            fail_msg("case %zu: rc %d, error \"%s\" (want \"%s\")", i, rc, mt_last_error(), bad[i].needle);
    }
    /* more rows than MT_MAX_ALIAS_ROWS */
    char big[512] = ", \"moe_router_alias\": [null, [0, 1, 2, 3";
    for (int r = 4; r <= MT_MAX_ALIAS_ROWS; r++) strcat(big, ", 0");
    strcat(big, "]]");
    assert_int_equal(parse(big, c), MT_ERR_FORMAT);
    assert_non_null(strstr(mt_last_error(), "has 65 rows for 4 experts"));
    /* dense model */
    const char *dense = "{\"model_type\": \"mistral\", \"vocab_size\": 100, \"hidden_size\": 64,"
                        " \"intermediate_size\": 32, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
                        " \"moe_router_alias\": [null, [0]]}";
    assert_int_equal(mt_config_from_hf_json(c, dense, strlen(dense), "/x/config.json"), MT_ERR_FORMAT);
    assert_non_null(strstr(mt_last_error(), "dense"));
    /* a config struct filled by hand is validated by the writer too */
    assert_int_equal(parse("", c), MT_OK);
    c->router_rows[1] = 5;
    for (int r = 0; r < 5; r++) c->router_alias[1][r] = (uint8_t)(r % 3); /* expert 3 unreachable */
    assert_int_equal(mt_config_to_hf_json(&text, c, NULL), MT_ERR_FORMAT);
    assert_null(text);
    free(c);
}

/* Config says 9 rows, the router tensor has 8: the weight mapper names it. */
static void test_router_shape_mismatch(void **state) {
    (void)state;
    char *dir = subdir("c");
    char src[4096], dst[4096];
    snprintf(src, sizeof src, "%s/model.safetensors", g_dir_b);
    snprintf(dst, sizeof dst, "%s/model.safetensors", dir);
    assert_int_equal(symlink(src, dst), 0);
    mt_ckpt *ck;
    assert_int_equal(mt_ckpt_open(&ck, g_dir_b), MT_OK);
    mt_config c = *mt_ckpt_config(ck);
    mt_ckpt_free(ck);
    c.router_rows[LAYER] = 9;
    c.router_alias[LAYER][8] = 6;
    write_config(dir, &c);
    mt_model *m = NULL;
    assert_int_equal(mt_model_load(&m, dir, NULL), MT_ERR_FORMAT);
    assert_null(m);
    assert_non_null(strstr(mt_last_error(), "model.layers.1.block_sparse_moe.gate.weight"));
    free(dir);
}

/* GGUF cannot carry the alias: refused, nothing written. HF -> HF keeps it. */
static void test_convert(void **state) {
    (void)state;
    char out[4096];
    snprintf(out, sizeof out, "%s/b.gguf", g_tmp);
    mt_convert_opts o;
    mt_convert_opts_default(&o);
    o.to = MT_FMT_GGUF;
    assert_int_equal(mt_convert(g_dir_b, out, &o), MT_ERR_UNSUPPORTED);
    assert_non_null(strstr(mt_last_error(), "moe_router_alias"));
    assert_int_not_equal(access(out, F_OK), 0);

    snprintf(out, sizeof out, "%s/b-f32", g_tmp);
    o.to = MT_FMT_HF;
    o.dtype = MT_DT_F32;
    assert_int_equal(mt_convert(g_dir_b, out, &o), MT_OK);
    mt_model *mb = load(g_dir_b), *mc = load(out);
    const mt_config *cc = mt_model_config(mc);
    assert_int_equal(mt_config_router_rows(cc, LAYER), 8);
    assert_int_equal(mt_config_layer_experts(cc, LAYER), 7);
    const int V = cc->vocab;
    mt_ctx *cb, *cx;
    assert_int_equal(mt_ctx_init(&cb, mb, 32, 32), MT_OK);
    assert_int_equal(mt_ctx_init(&cx, mc, 32, 32), MT_OK);
    float *lb = malloc((size_t)32 * V * sizeof(float)), *lc = malloc((size_t)32 * V * sizeof(float));
    assert_int_equal(mt_ctx_forward(cb, g_ids, 32, lb, 1), MT_OK);
    assert_int_equal(mt_ctx_forward(cx, g_ids, 32, lc, 1), MT_OK);
    double md = 0, mx = 0;
    for (size_t i = 0; i < (size_t)32 * V; i++) {
        md = fmax(md, fabs((double)lb[i] - lc[i]));
        mx = fmax(mx, fabs((double)lb[i]));
    }
    /* bf16 -> f32 is exact, so the weights are equal; the two runs differ
     * only in float summation order (bf16 rows are widened before the BLAS
     * product, f32 rows are fed to it in place, and OpenBLAS picks its
     * kernel by shape and alignment). Bound: 2e-6 of the largest logit,
     * ~17 float ulps of it; a wrong weight moves logits by far more. */
    printf("bf16 vs converted f32: max |logit diff| = %.3g (max |logit| %.3g)\n", md, mx);
    assert_true(md <= 2e-6 * fmax(mx, 1.0));
    free(lb);
    free(lc);
    mt_ctx_free(cb);
    mt_ctx_free(cx);
    mt_model_free(mb);
    mt_model_free(mc);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_round_trip), cmocka_unit_test(test_alias_equals_copies),
        cmocka_unit_test(test_eval_equal),        cmocka_unit_test(test_bad_maps),
        cmocka_unit_test(test_router_shape_mismatch), cmocka_unit_test(test_convert),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
