/* test_families.c — the runtime on MoE families other than Mixtral, against
 * independent implementations. A generator script per family writes small
 * random checkpoints in the family's exact Hugging Face layout with their
 * reference logits and routing (Qwen2-MoE: tests/make_qwen2moe.py, which
 * uses transformers' own Qwen2MoeForCausalLM for both; Qwen3-MoE and OLMoE,
 * which transformers 4.40 lacks: tests/make_qk_checkpoint.py writes the
 * checkpoints, tests/ref_qk_moe.py, a float64 numpy forward written from the
 * published modeling code, the references). Here, per case:
 *   - our logits within 1e-4 (absolute) of the reference, the same top-k
 *     experts in every layer for every token, prefill equal to decode;
 *   - HF -> GGUF (the family's llama.cpp architecture) gives the same logits
 *     (bit-identical for f32) unless the family's GGUF cannot hold the case,
 *     which must then be refused with an error naming the reason;
 *   - GGUF -> HF gives the same logits again and a config.json that reads
 *     back to the same model description.
 * The Qwen2-MoE cases need a Python with torch + transformers
 * (MT_TORCH_PYTHON, else /usr/bin/python3 or python3), the others python3
 * with numpy; exits 77 (skipped) when neither is there. */
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
#include <sys/wait.h>

#include "moetool/mt_runtime.h"
#include "testutil.h"

static char *g_dir;

/* Logits of ids on a fresh model of path; prefill equals decode. */
static float *run_model(const char *path, const int32_t *ids, int n, int32_t **routing, mt_config *cfg) {
    double dd = 0;
    float *lg = tu_model_logits(path, ids, n, routing, cfg, &dd);
    assert_non_null(lg);
    assert_true(dd <= 1e-4);
    return lg;
}

static void check_case(const char *name) {
    char path[1024], gg[1100], back[1100];
    int32_t ids[256];
    snprintf(path, sizeof path, "%s/%s/tokens.txt", g_dir, name);
    const int n = tu_read_ids(path, ids, 256);
    assert_true(n > 1);
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    int32_t *routing = NULL;
    mt_config cf;
    float *lg = run_model(path, ids, n, &routing, &cf);
    assert_non_null(lg);
    const int V = cf.vocab, L = cf.n_layers, K = cf.top_k;

    size_t len;
    snprintf(path, sizeof path, "%s/%s/ref-logits.f32", g_dir, name);
    float *ref = (float *)tu_read_file(path, &len);
    assert_non_null(ref);
    assert_int_equal(len, (size_t)n * V * sizeof(float));
    double scale = 0;
    for (size_t i = 0; i < (size_t)n * V; i++) scale = fmax(scale, fabs(ref[i]));
    const double md = tu_max_abs_diff(lg, ref, (size_t)n * V);

    snprintf(path, sizeof path, "%s/%s/ref-routing.json", g_dir, name);
    json_error_t err;
    json_t *rr = json_load_file(path, 0, &err);
    assert_non_null(rr);
    assert_int_equal(json_array_size(rr), (size_t)L);
    int same = 0, total = 0;
    for (int l = 0; l < L; l++)
        for (int i = 0; i < n; i++)
            for (int k = 0; k < K; k++) {
                json_t *v = json_array_get(json_array_get(json_array_get(rr, l), i), k);
                same += routing[((size_t)l * n + i) * K + k] == json_integer_value(v);
                total++;
            }
    json_decref(rr);
    printf("%-15s %s, %d tokens: max |dlogit| %.3g vs reference (max |logit| %.3g), routing %d/%d equal", name,
           cf.arch, n, md, scale, same, total);
    assert_true(md <= 1e-4);
    assert_int_equal(same, total);

    /* HF -> GGUF -> HF */
    mt_convert_opts co;
    mt_convert_opts_default(&co);
    co.to = MT_FMT_GGUF;
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    snprintf(gg, sizeof gg, "%s/%s.gguf", g_dir, name);
    int dense_layers = 0;
    for (int l = 0; l < L; l++) dense_layers += mt_config_layer_experts(&cf, l) == 0;
    const int st = mt_convert(path, gg, &co);
    /* what llama.cpp's architecture cannot hold is refused by name: dense-MLP
     * layers in qwen2moe / qwen3moe, grouped-query attention in olmoe */
    const int gqa_refused = !strcmp(cf.arch, "olmoe") && cf.n_kv_heads != cf.n_heads;
    if (dense_layers || gqa_refused) {
        printf(", GGUF refused: %s\n", mt_last_error());
        assert_int_equal(st, MT_ERR_UNSUPPORTED);
        assert_non_null(strstr(mt_last_error(), dense_layers ? "dense MLP" : "grouped-query attention"));
    } else {
        assert_int_equal(st, MT_OK);
        mt_config cg;
        float *lg2 = run_model(gg, ids, n, NULL, &cg);
        assert_non_null(lg2);
        const double mg = tu_max_abs_diff(lg, lg2, (size_t)n * V);
        printf(", GGUF max |d| %.3g", mg);
        assert_true(mg == 0);
        assert_true(mt_config_equal(&cf, &cg) || (cg.rope_style == cf.rope_style && !strcmp(cg.arch, cf.arch)));
        mt_config_free(&cg);
        co.to = MT_FMT_HF;
        snprintf(back, sizeof back, "%s/%s-back", g_dir, name);
        assert_int_equal(mt_convert(gg, back, &co), MT_OK);
        float *lg3 = run_model(back, ids, n, NULL, NULL);
        assert_non_null(lg3);
        const double mb = tu_max_abs_diff(lg, lg3, (size_t)n * V);
        printf(", GGUF->HF max |d| %.3g\n", mb);
        assert_true(mb == 0);
        free(lg2);
        free(lg3);
    }
    /* config.json written from the description reads back to it */
    char *js = NULL;
    mt_config c2;
    assert_int_equal(mt_config_to_hf_json(&js, &cf, "float32"), MT_OK);
    assert_int_equal(mt_config_from_hf_json(&c2, js, strlen(js), "written config.json"), MT_OK);
    c2.bos_id = cf.bos_id; /* token ids and the quantization layout are not part of the math */
    assert_true(mt_config_equal(&cf, &c2));
    mt_config_free(&c2);
    free(js);
    mt_config_free(&cf);
    free(ref);
    free(lg);
    free(routing);
}

static void test_families(void **state) {
    (void)state;
    char path[1024], name[128];
    snprintf(path, sizeof path, "%s/cases", g_dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    int n_cases = 0;
    while (fscanf(f, "%127s", name) == 1) {
        check_case(name);
        n_cases++;
    }
    fclose(f);
    assert_true(n_cases >= 2);
}

/* Runs `cmd`; 0 ok, 77 when the generator says its Python lacks what it needs. */
static int run(const char *cmd) {
    int rc = system(cmd);
    if (rc == 0) return 0;
    if (WIFEXITED(rc) && WEXITSTATUS(rc) == 77) return 77;
    fprintf(stderr, "command failed (%d): %s\n", rc, cmd);
    return 1;
}

int main(void) {
    const char *py = getenv("MT_TORCH_PYTHON");
    char cmd[4096];
    static const char *const cands[] = {"/usr/bin/python3", "python3"};
    for (size_t i = 0; !py && i < 2; i++) {
        snprintf(cmd, sizeof cmd, "%s -c 'import torch, transformers, tokenizers' >/dev/null 2>&1", cands[i]);
        if (system(cmd) == 0) py = cands[i];
    }
    const int numpy = system("python3 -c 'import numpy' >/dev/null 2>&1") == 0;
    if (!py && !numpy) {
        printf("skipped: no python with numpy (nor torch + transformers)\n");
        return 77;
    }
    g_dir = tu_mkdtemp();
    if (!g_dir) return 1;
    int rc = 0, ran = 0;
    if (py) { /* Qwen2-MoE: checkpoints and references from transformers itself */
        snprintf(cmd, sizeof cmd, "%s '%s/tests/make_qwen2moe.py' '%s' --model-dir '%s' 2>/dev/null", py,
                 tu_source_dir(), g_dir, tu_model_dir());
        rc = run(cmd);
        ran += rc == 0;
        if (rc == 77) rc = 0;
    } else {
        printf("Qwen2-MoE cases skipped: no python with torch + transformers\n");
    }
    if (!rc && numpy) { /* Qwen3-MoE, OLMoE: HF layout written in numpy, independent float64 reference */
        snprintf(cmd, sizeof cmd,
                 "python3 '%s/tests/make_qk_checkpoint.py' '%s' --model-dir '%s' && "
                 "python3 '%s/tests/ref_qk_moe.py' '%s/qwen3moe' '%s/qwen3moe-sparse' '%s/olmoe' '%s/olmoe-gqa'",
                 tu_source_dir(), g_dir, tu_model_dir(), tu_source_dir(), g_dir, g_dir, g_dir, g_dir);
        rc = run(cmd);
        ran += rc == 0;
    }
    if (rc || !ran) {
        tu_rmtree(g_dir);
        free(g_dir);
        return rc ? 1 : 77;
    }
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_families)};
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    tu_rmtree(g_dir);
    free(g_dir);
    return rc;
}
