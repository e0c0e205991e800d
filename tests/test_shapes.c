/* test_shapes.c — the runtime on Mixtral-family shapes other than the
 * bundled model. tests/make_checkpoint.py writes small random-weight HF
 * checkpoints (f32/f16/bf16, single-file and sharded, 4 and 6 experts, top-k
 * 1/2/3, GQA ratios 1/2/4, head_dim != hidden/heads, theta 1e4/1e6, eps
 * 1e-6/1e-5, a dense Mistral, tied embeddings); tests/ref_mixtral.py, an
 * independent float64 numpy forward, writes their reference logits and
 * routing. Here: our logits within 1e-3 relative, the same routing, prefill
 * equal to decode, and the same logits after conversion to GGUF (Q/K rows
 * permuted the llama.cpp way). Needs python3 with numpy; exits 77 (skipped)
 * without it. */
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

static char *g_dir;

/* Logits of ids on a fresh model of path; prefill equals decode. */
static float *run_model(const char *path, const int32_t *ids, int n, int32_t **routing, int *top_k) {
    double dd = 0;
    mt_config cf;
    float *lg = tu_model_logits(path, ids, n, routing, routing ? &cf : NULL, &dd);
    assert_non_null(lg);
    assert_true(dd <= 1e-4);
    if (routing) {
        *top_k = cf.top_k;
        mt_config_free(&cf);
    }
    return lg;
}

static void test_shapes(void **state) {
    (void)state;
    char path[1024], name[128];
    snprintf(path, sizeof path, "%s/cases.txt", g_dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    int n_cases = 0;
    while (fscanf(f, "%127s", name) == 1) {
        int32_t ids[256];
        snprintf(path, sizeof path, "%s/%s/tokens.txt", g_dir, name);
        int n = tu_read_ids(path, ids, 256);
        assert_true(n > 1);
        snprintf(path, sizeof path, "%s/%s", g_dir, name);
        int32_t *routing = NULL;
        int top_k = 0;
        float *lg = run_model(path, ids, n, &routing, &top_k);
        assert_non_null(lg);
        size_t len;
        snprintf(path, sizeof path, "%s/%s/config.json", g_dir, name);
        json_error_t err;
        json_t *cfg = json_load_file(path, 0, &err);
        assert_non_null(cfg);
        int V = (int)json_integer_value(json_object_get(cfg, "vocab_size"));
        int L = (int)json_integer_value(json_object_get(cfg, "num_hidden_layers"));
        json_decref(cfg);
        snprintf(path, sizeof path, "%s/%s/ref-logits.f32", g_dir, name);
        float *ref = (float *)tu_read_file(path, &len);
        assert_non_null(ref);
        assert_int_equal(len, (size_t)n * V * sizeof(float));
        double scale = 1;
        for (size_t i = 0; i < (size_t)n * V; i++) scale = fmax(scale, fabs(ref[i]));
        double md = tu_max_abs_diff(lg, ref, (size_t)n * V);
        printf("%-20s %2d tokens: maxdiff %.3g (max |logit| %.3g)", name, n, md, scale);
        assert_true(md <= 1e-3 * scale);

        /* routing, in descending-weight order as the reference lists it */
        snprintf(path, sizeof path, "%s/%s/ref-routing.json", g_dir, name);
        json_t *rr = json_load_file(path, 0, &err);
        assert_non_null(rr);
        if (top_k > 0) {
            assert_int_equal(json_array_size(rr), (size_t)L);
            for (int l = 0; l < L; l++)
                for (int i = 0; i < n; i++)
                    for (int k = 0; k < top_k; k++) {
                        json_t *v = json_array_get(json_array_get(json_array_get(rr, l), i), k);
                        assert_int_equal(routing[((size_t)l * n + i) * top_k + k], json_integer_value(v));
                    }
        } else {
            assert_int_equal(json_array_size(rr), 0);
        }
        json_decref(rr);

        /* The same checkpoint as GGUF: Q/K rows permuted, un-permuted at run time. */
        mt_convert_opts co;
        mt_convert_opts_default(&co);
        co.to = MT_FMT_GGUF;
        snprintf(path, sizeof path, "%s/%s", g_dir, name);
        char gg[1100];
        snprintf(gg, sizeof gg, "%s/%s.gguf", g_dir, name);
        int st = mt_convert(path, gg, &co);
        if (st == MT_OK) {
            float *lg2 = run_model(gg, ids, n, NULL, NULL);
            assert_non_null(lg2);
            double mg = tu_max_abs_diff(lg, lg2, (size_t)n * V);
            printf(", GGUF maxdiff %.3g%s", mg, mg == 0 ? " (bit-identical)" : "");
            assert_true(mg <= 1e-5 * scale);
            free(lg2);
        } else {
            printf(", GGUF conversion unavailable: %s", mt_last_error());
        }
        printf("\n");
        free(ref);
        free(lg);
        free(routing);
        n_cases++;
    }
    fclose(f);
    assert_int_equal(n_cases, 5);
}

int main(void) {
    if (system("python3 -c 'import numpy' >/dev/null 2>&1") != 0) {
        printf("skipped: python3 with numpy is not available\n");
        return 77;
    }
    g_dir = tu_mkdtemp();
    if (!g_dir) return 1;
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "python3 '%s/tests/make_checkpoint.py' '%s' && python3 '%s/tests/ref_mixtral.py' '%s'/*/",
             tu_source_dir(), g_dir, tu_source_dir(), g_dir);
    if (tu_system(cmd) != 0) {
        tu_rmtree(g_dir);
        return 1;
    }
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_shapes)};
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    tu_rmtree(g_dir);
    free(g_dir);
    return rc;
}
