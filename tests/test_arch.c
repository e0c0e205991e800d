/* test_arch.c — the model description: every weight the iterator yields
 * has names that parse back to the same (role, layer, expert) in both
 * formats; per-layer arrays live on the heap with no fixed expert bound
 * (256 experts, 300 alias rows); a synthetic 256-expert checkpoint written
 * to disk loads with every expert matrix where the table says; merge takes
 * a layer of more than 64 experts; a 128-expert checkpoint merges to 64 and
 * to 8 by every method (naee included) and quantizes with --target-bpw. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <jansson.h>
#include "moetool/mt_arch.h"
#include "moetool/mt_merge.h"
#include "moetool/mt_quant.h"
#include "moetool/mt_runtime.h"
#include "moetool/mt_write.h"
#include "testutil.h"

enum { E = 256, L = 2, H = 8, F = 4, V = 16 };

/* Writes a checkpoint of config c to dir: every tensor of the table, f32;
 * value(k, i) = tensor k's identity when `ident`, else small random values
 * (norms 1). */
static void write_ckpt(const char *dir, const mt_config *c, int ident) {
    mt_hf_writer *w = NULL;
    assert_int_equal(mt_hf_writer_open(&w, dir, 0), MT_OK);
    mt_arch_iter it;
    mt_arch_item x;
    uint32_t seed = 12345;
    for (int pass = 0; pass < 2; pass++) {
        assert_int_equal(mt_arch_iter_init(&it, c, MT_ITER_PER_EXPERT, dir), MT_OK);
        int k = 0;
        while (mt_arch_iter_next(&it, &x)) {
            const int64_t n = x.n_dims == 1 ? x.shape[0] : x.shape[0] * x.shape[1];
            if (!pass) {
                assert_int_equal(mt_hf_writer_add(w, x.hf, MT_DT_F32, x.n_dims, x.shape), MT_OK);
                continue;
            }
            float *v = malloc((size_t)n * sizeof *v);
            for (int64_t i = 0; i < n; i++) {
                seed = seed * 1664525u + 1013904223u;
                v[i] = ident ? (float)k + 0.001f * (float)i
                       : x.n_dims == 1 ? 1.0f
                                       : ((float)(seed >> 8) / 16777216.0f - 0.5f) * 0.5f;
            }
            assert_int_equal(mt_hf_writer_write(w, v, (size_t)n * sizeof *v), MT_OK);
            free(v);
            k++;
        }
    }
    assert_int_equal(mt_hf_writer_finish(w), MT_OK);
    mt_hf_writer_free(w);
    char *txt = NULL, path[4096];
    assert_int_equal(mt_config_to_hf_json(&txt, c, "float32"), MT_OK);
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    fputs(txt, f);
    fclose(f);
    free(txt);
}

static void small_config(mt_config *c) {
    memset(c, 0, sizeof *c);
    snprintf(c->arch, sizeof c->arch, "mixtral");
    c->n_layers = L, c->hidden = H, c->ffn = F, c->n_heads = 2, c->n_kv_heads = 1, c->head_dim = 4;
    c->vocab = V, c->n_experts = E, c->top_k = 8, c->rope_theta = 1e6f, c->norm_eps = 1e-5f, c->max_pos = 64;
    c->bos_id = c->eos_id = -1;
}

static void test_iter_names_round_trip(void **state) {
    (void)state;
    mt_config c;
    small_config(&c);
    assert_int_equal(mt_config_set_layer_experts(&c, 1, 200), MT_OK);
    const mt_arch *a = mt_arch_get("mixtral");
    assert_non_null(a);
    for (int per = 0; per < 2; per++) {
        mt_arch_iter it;
        mt_arch_item x;
        assert_int_equal(mt_arch_iter_init(&it, &c, per ? MT_ITER_PER_EXPERT : 0, "t"), MT_OK);
        int n = 0, experts[L] = {0};
        while (mt_arch_iter_next(&it, &x)) {
            int l, e;
            n++;
            if (x.expert >= 0) experts[x.layer]++;
            if (x.hf[0]) {
                assert_ptr_equal(mt_arch_parse(a, x.hf, MT_FMT_HF, &l, &e), x.t);
                assert_int_equal(l, x.layer);
                assert_int_equal(e, x.expert);
            }
            assert_ptr_equal(mt_arch_parse(a, x.gguf, MT_FMT_GGUF, &l, &e), x.t);
            assert_int_equal(l, x.layer);
            if (x.t->role == MT_ROLE_ROUTER) assert_int_equal(x.shape[0], mt_config_layer_experts(&c, x.layer));
        }
        /* globals 3, per layer 6 + router + 3 expert roles (x E when per expert) */
        const int want = per ? 3 + L * 7 + 3 * (E + 200) : 3 + L * 10;
        assert_int_equal(n, want);
        if (per) {
            assert_int_equal(experts[0], 3 * E);
            assert_int_equal(experts[1], 3 * 200);
        }
    }
    /* names that are not the family's */
    int l, e;
    assert_null(mt_arch_parse(a, "model.layers.01.self_attn.q_proj.weight", MT_FMT_HF, &l, &e));
    assert_null(mt_arch_parse(a, "model.layers.0.self_attn.q_proj.weightx", MT_FMT_HF, &l, &e));
    assert_null(mt_arch_parse(a, "blk.x.attn_q.weight", MT_FMT_GGUF, &l, &e));
    assert_null(mt_arch_get("dbrx"));
    mt_config_free(&c);
}

/* 256 experts, per-layer counts and a 300-row alias survive config.json. */
static void test_config_heap_arrays(void **state) {
    (void)state;
    mt_config c, d, cp;
    small_config(&c);
    assert_int_equal(mt_config_set_layer_experts(&c, 0, 150), MT_OK);
    int32_t *al = malloc(300 * sizeof *al);
    for (int r = 0; r < 300; r++) al[r] = r % 150;
    assert_int_equal(mt_config_set_router_alias(&c, 0, 300, al), MT_OK);
    free(al);
    char *s = NULL;
    assert_int_equal(mt_config_to_hf_json(&s, &c, "float32"), MT_OK);
    assert_int_equal(mt_config_from_hf_json(&d, s, strlen(s), "t"), MT_OK);
    free(s);
    assert_true(mt_config_equal(&c, &d));
    assert_int_equal(mt_config_router_rows(&d, 0), 300);
    assert_int_equal(mt_config_router_alias(&d, 0)[299], 299 % 150);
    assert_int_equal(mt_config_layer_experts(&d, 1), E);
    /* a copy is independent of its source */
    assert_int_equal(mt_config_copy(&cp, &d), MT_OK);
    mt_config_free(&d);
    assert_true(mt_config_equal(&c, &cp));
    assert_true(sizeof(mt_config) < 512); /* no per-layer arrays inline */
    mt_config_free(&cp);
    mt_config_free(&c);
}

/* A 256-expert checkpoint on disk: every expert matrix is found, shaped and
 * points at its own data. */
static void test_load_256_experts(void **state) {
    (void)state;
    char *dir = tu_mkdtemp();
    mt_config c;
    small_config(&c);
    write_ckpt(dir, &c, 1);
    mt_arch_iter it;
    mt_arch_item x;
    mt_ckpt *ck = NULL;
    if (mt_ckpt_open(&ck, dir) != MT_OK) fail_msg("%s", mt_last_error());
    mt_weights wt;
    if (mt_weights_init(&wt, ck) != MT_OK) fail_msg("%s", mt_last_error());
    assert_int_equal(mt_arch_iter_init(&it, &c, MT_ITER_PER_EXPERT, dir), MT_OK);
    int k = 0;
    while (mt_arch_iter_next(&it, &x)) {
        const mt_mat *m = x.t->role == MT_ROLE_ROUTER ? &wt.layers[x.layer].router_full
                                                      : mt_weights_mat(&wt, x.t->role, x.layer, x.expert);
        assert_non_null(m);
        assert_int_equal(m->rows, x.n_dims == 1 ? 1 : x.shape[0]);
        assert_int_equal(m->cols, x.n_dims == 1 ? x.shape[0] : x.shape[1]);
        assert_true(((const float *)m->data)[0] == (float)k);
        k++;
    }
    assert_int_equal(wt.layers[1].n_experts, E);
    assert_null(mt_weights_mat(&wt, MT_ROLE_EXP_GATE, 0, E));
    assert_null(mt_weights_mat(&wt, MT_ROLE_FFN_GATE, 0, -1));
    mt_weights_free(&wt);
    mt_ckpt_free(ck);
    tu_rmtree(dir);
    free(dir);
}

/* A random checkpoint with the bundled tokenizer (vocab 4096) in dir/src. */
static void write_tok_ckpt(const char *src, const mt_config *c) {
    assert_int_equal(mkdir(src, 0755), 0);
    write_ckpt(src, c, 0);
    size_t len = 0;
    char *tok = tu_read_file(tu_model_path("tokenizer.model"), &len), p[8192];
    assert_non_null(tok);
    snprintf(p, sizeof p, "%s/tokenizer.model", src);
    FILE *f = fopen(p, "wb");
    fwrite(tok, 1, len, f);
    fclose(f);
    free(tok);
}

/* merge 72 -> 40 experts per layer (the 64-expert bound is gone) on a
 * random model with the bundled tokenizer; the output loads with 40. */
static void test_merge_72_experts(void **state) {
    (void)state;
    char *dir = tu_mkdtemp(), src[4096], out[4096];
    snprintf(src, sizeof src, "%s/src", dir);
    snprintf(out, sizeof out, "%s/out", dir);
    mt_config c;
    small_config(&c);
    c.n_experts = 72, c.top_k = 2, c.vocab = 4096, c.hidden = 16, c.ffn = 8;
    write_tok_ckpt(src, &c);
    mt_merge_opts o;
    mt_merge_opts_default(&o);
    o.experts = 40;
    o.method = MT_MERGE_AVERAGE;
    o.router = MT_MERGE_ROUTER_AVERAGE;
    o.calib_path = tu_model_path("data/train.txt");
    o.calib_tokens = 1024;
    o.sample_tokens = 64;
    o.window = 64;
    o.n_threads = 2;
    mt_merge_report r;
    if (mt_merge(src, out, &o, &r) != MT_OK) fail_msg("%s", mt_last_error());
    assert_int_equal(r.experts_in, 72);
    for (int l = 0; l < L; l++) {
        assert_int_equal(r.layer_k[l], 40);
        int seen[40] = {0};
        for (int e = 0; e < 72; e++) {
            assert_true(r.group[l][e] >= 0 && r.group[l][e] < 40);
            seen[r.group[l][e]] = 1;
        }
        for (int k = 0; k < 40; k++) assert_true(seen[k]);
    }
    mt_merge_report_free(&r);
    mt_model *m = NULL;
    if (mt_model_load(&m, out, NULL) != MT_OK) fail_msg("%s", mt_last_error());
    assert_int_equal(mt_model_config(m)->n_experts, 40);
    mt_model_free(m);
    mt_config_free(&c);
    tu_rmtree(dir);
    free(dir);
}

/* Bits of n weights stored in the type named by plan entry t. */
static double plan_bits(const json_t *t, double n) {
    assert_non_null(json_string_value(t));
    const int d = mt_dtype_from_name(json_string_value(t));
    assert_true(d >= 0);
    const mt_dtype_info *in = mt_dtype_get((mt_dtype)d);
    return n * 8.0 * (double)in->block_bytes / (double)in->block_elems;
}

/* Perplexity of `path` on random tokens, with `ref` as the reference: a
 * finite perplexity and KL, every scored token counted. */
static void eval_loads(const char *path, int want_experts, mt_model *ref) {
    mt_model *m = NULL;
    if (mt_model_load(&m, path, NULL) != MT_OK) fail_msg("%s: %s", path, mt_last_error());
    assert_int_equal(mt_model_config(m)->n_experts, want_experts);
    int32_t ids[129];
    uint64_t rng = 7;
    for (int i = 0; i < 129; i++) ids[i] = (int32_t)(tu_rand_u32(&rng) % 4096);
    mt_eval_opts eo;
    mt_eval_opts_default(&eo);
    eo.ctx = 64;
    mt_eval_result er;
    if (mt_eval_ppl(m, ref, ids, 129, &eo, &er) != MT_OK) fail_msg("%s: %s", path, mt_last_error());
    assert_true(er.ppl > 1 && er.ppl < 1e6);
    assert_true(er.has_ref && er.kl_mean >= 0 && er.kl_mean < 50);
    assert_true(er.n_scored > 0);
    mt_eval_result_free(&er);
    mt_model_free(m);
}

/* 128 experts (Qwen3-MoE's count; hidden 32, 2 layers, top-2): merged to 64
 * and to 8 by every explicit method, naee included (greedy search: C(128, 64)
 * and C(128, 8) sets are far past the exhaustive bound); each output loads
 * with that many experts and evaluates against the source. Then quantize
 * --target-bpw 4.5 plans its 128-expert units and the GGUF evaluates. */
static void test_merge_quantize_128_experts(void **state) {
    (void)state;
    char *dir = tu_mkdtemp(), src[4096], out[4096];
    snprintf(src, sizeof src, "%s/src", dir);
    mt_config c;
    small_config(&c);
    c.n_experts = 128, c.top_k = 2, c.vocab = 4096, c.hidden = 32, c.ffn = 32, c.head_dim = 16;
    write_tok_ckpt(src, &c);
    mt_model *ref = NULL;
    if (mt_model_load(&ref, src, NULL) != MT_OK) fail_msg("%s", mt_last_error());
    static const int methods[] = {MT_MERGE_PRUNE,  MT_MERGE_AVERAGE, MT_MERGE_FREQUENCY, MT_MERGE_HC_SMOE,
                                  MT_MERGE_MC_SMOE, MT_MERGE_REAP,    MT_MERGE_REAP_MERGE, MT_MERGE_NAEE};
    static const int Ks[] = {64, 8};
    for (size_t i = 0; i < sizeof methods / sizeof *methods; i++)
        for (size_t j = 0; j < 2; j++) {
            snprintf(out, sizeof out, "%s/%s-%d", dir, mt_merge_method_name(methods[i]), Ks[j]);
            mt_merge_opts o;
            mt_merge_opts_default(&o);
            o.experts = Ks[j];
            o.method = methods[i];
            o.calib_path = tu_model_path("data/train.txt");
            o.calib_tokens = 512;
            o.sample_tokens = 64;
            o.window = 64;
            o.n_threads = 2;
            mt_merge_report r;
            if (mt_merge(src, out, &o, &r) != MT_OK) fail_msg("%s: %s", out, mt_last_error());
            assert_int_equal(r.experts_in, 128);
            for (int l = 0; l < L; l++) {
                assert_int_equal(r.layer_k[l], Ks[j]);
                int kept = 0;
                for (int e = 0; e < 128; e++) {
                    assert_true(r.group[l][e] >= -1 && r.group[l][e] < Ks[j]);
                    kept += r.group[l][e] >= 0;
                }
                assert_true(kept >= Ks[j]);
                if (methods[i] == MT_MERGE_NAEE) assert_true(r.recon_err[l] >= 0 && r.recon_err[l] <= 1.0001);
            }
            mt_merge_report_free(&r);
            eval_loads(out, Ks[j], ref);
        }
    /* --target-bpw on the 128-expert source: the plan's types, weighted by
     * the parameters of each tensor they name, average at most the target */
    snprintf(out, sizeof out, "%s/q.gguf", dir);
    mt_quant_opts q;
    mt_quant_opts_default(&q);
    q.target_bpw = 5.0;
    q.calib_path = tu_model_path("data/train.txt");
    q.calib_tokens = 512;
    q.calib_window = 64;
    mt_quant_report qr;
    memset(&qr, 0, sizeof qr);
    if (mt_quantize_file(src, out, &q, 2, &qr) != MT_OK) fail_msg("%s", mt_last_error());
    assert_non_null(qr.plan);
    json_error_t je;
    json_t *plan = json_loads(qr.plan, 0, &je);
    assert_non_null(plan);
    const double VH = (double)c.vocab * c.hidden, HH = (double)c.hidden * c.n_heads * c.head_dim,
                 HK = (double)c.hidden * c.n_kv_heads * c.head_dim, EX = 128.0 * c.hidden * c.ffn;
    double bits = plan_bits(json_object_get(plan, "token_embd"), VH) + plan_bits(json_object_get(plan, "output"), VH),
           params = 2 * VH;
    assert_int_equal(json_array_size(json_object_get(plan, "layers")), L);
    static const char *kinds[] = {"attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
    for (int l = 0; l < L; l++)
        for (int k = 0; k < 7; k++) {
            const double n = k == 0 || k == 3 ? HH : k < 3 ? HK : EX;
            bits += plan_bits(json_object_get(json_array_get(json_object_get(plan, "layers"), (size_t)l), kinds[k]), n);
            params += n;
        }
    json_decref(plan);
    fprintf(stderr, "--target-bpw 5: planned %.4f bits per weight (all weights: %.4f)\n", bits / params, qr.bits_total);
    assert_true(bits / params <= 5.0 + 1e-9 && bits / params > 4.0);
    mt_quant_report_free(&qr);
    eval_loads(out, 128, ref);
    mt_model_free(ref);
    mt_config_free(&c);
    tu_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_iter_names_round_trip),
        cmocka_unit_test(test_config_heap_arrays),
        cmocka_unit_test(test_load_256_experts),
        cmocka_unit_test(test_merge_72_experts),
        cmocka_unit_test(test_merge_quantize_128_experts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
