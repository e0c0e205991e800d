/* test_fuzz_corpus_io.c — replays every seed in fuzz/corpus/safetensors,
 * fuzz/corpus/config, fuzz/corpus/qmoe, fuzz/corpus/pickle and
 * fuzz/corpus/pytorch through the parsers the fuzzers
 * drive, plus every truncation of each seed: any status is fine, a crash
 * (or a sanitizer report in a sanitizer build) is not. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moetool/mt_io.h"
#include "moetool/mt_merge.h"
#include "moetool/mt_qmoe.h"
#include "moetool/mt_runtime.h"
#include "moetool/mt_tokenizer.h"
#include "../fuzz/bundle.h"
#include "testutil.h"

typedef void (*feed_fn)(const uint8_t *data, size_t size);

static void feed_safetensors(const uint8_t *data, size_t size) {
    mt_safetensors *st = NULL;
    if (mt_safetensors_parse(&st, data, size, "corpus") == MT_OK) {
        for (size_t i = 0; i < mt_safetensors_count(st); i++) {
            const mt_tensor *t = mt_safetensors_get(st, i);
            assert_true(t->file_offset <= size && t->nbytes <= size - t->file_offset);
        }
        mt_safetensors_free(st);
    } else {
        assert_null(st);
        assert_true(mt_last_error()[0] != 0);
    }
}

static void feed_config(const uint8_t *data, size_t size) {
    mt_config c;
    if (mt_config_from_hf_json(&c, (const char *)data, size, "corpus.json") == MT_OK) {
        char *s = NULL;
        assert_int_equal(mt_config_to_hf_json(&s, &c, "bfloat16"), MT_OK);
        free(s);
        mt_config_free(&c);
    } else {
        assert_true(mt_last_error()[0] != 0);
    }
}

/* As fuzz/fuzz_qmoe.c: blobs against a fixed dictionary; a parsed blob
 * must decode every row. */
static void feed_qmoe(const uint8_t *data, size_t size) {
    static mt_qmoe_dict dict;
    static int ready;
    if (!ready) {
        const uint64_t counts[3] = {850, 75, 75};
        assert_int_equal(mt_qmoe_dict_build(&dict, counts, MT_QMOE_DICT_SIZE - 1, MT_QMOE_MAX_LEN), MT_OK);
        ready = 1;
    }
    if (size >= 1 + MT_QMOE_DICT_BYTES && data[0] == 'D') {
        mt_qmoe_dict d;
        if (mt_qmoe_dict_deserialize(&d, data + 1, MT_QMOE_DICT_BYTES, "corpus") == MT_OK) mt_qmoe_dict_free(&d);
        return;
    }
    mt_qmoe_mat q;
    if (mt_qmoe_deserialize(&q, &dict, data, size, "corpus") != MT_OK) {
        assert_true(mt_last_error()[0] != 0);
        return;
    }
    mt_mat W;
    mt_qmoe_mat_view(&W, &q);
    int8_t *rows = malloc((size_t)(q.rows * q.cols) + 1);
    assert_non_null(rows);
    assert_int_equal(mt_qmoe_decode_rows(&W, 0, q.rows, rows), MT_OK);
    free(rows);
    mt_qmoe_mat_free(&q);
}

static void feed_pickle(const uint8_t *data, size_t size) {
    mt_pickle_dict *d = NULL;
    if (mt_pickle_load_state_dict(&d, data, size, "corpus.pkl") == MT_OK) {
        for (size_t i = 0; i < mt_pickle_count(d); i++)
            assert_true(mt_pickle_get(d, i)->offset <= mt_pickle_get(d, i)->storage_numel);
        mt_pickle_free(d);
    } else {
        assert_null(d);
        assert_true(mt_last_error()[0] != 0);
    }
}

static void feed_pytorch(const uint8_t *data, size_t size) {
    mt_safetensors *st = NULL;
    if (mt_pytorch_parse(&st, data, size, "corpus.bin") == MT_OK) {
        for (size_t i = 0; i < mt_safetensors_count(st); i++) {
            const mt_tensor *t = mt_safetensors_get(st, i);
            volatile uint8_t sink = 0;
            for (uint64_t k = 0; k < t->nbytes; k++) sink ^= ((const uint8_t *)t->data)[k];
            (void)sink;
        }
        mt_safetensors_free(st);
    } else {
        assert_null(st);
        assert_true(mt_last_error()[0] != 0);
    }
}

static void feed_layers(const uint8_t *data, size_t size) {
    if (!size) return;
    char *s = malloc(size);
    memcpy(s, data + 1, size - 1);
    s[size - 1] = 0;
    mt_merge_opts o;
    mt_merge_opts_default(&o);
    const int n_layers = data[0] % 80;
    if (mt_merge_parse_layers(&o, s, n_layers) == MT_OK) {
        for (int l = 0; l < o.n_layer_experts; l++) {
            assert_true(o.layer_experts[l] >= 0);
            if (n_layers > 0 && l >= n_layers) assert_int_equal(o.layer_experts[l], 0);
        }
    } else {
        assert_true(mt_last_error()[0] != 0);
    }
    mt_merge_opts_free(&o);
    free(s);
}

/* A model bundle (fuzz/bundle.h) unpacked into a directory and loaded;
 * what loads runs two tokens. Returns the load status. */
static char g_bundle_dir[64];
static int load_bundle(const uint8_t *data, size_t size) {
    if (!g_bundle_dir[0]) {
        snprintf(g_bundle_dir, sizeof g_bundle_dir, "/tmp/mt-test-bundle-XXXXXX");
        assert_non_null(mkdtemp(g_bundle_dir));
    }
    char load[4200];
    int st = MT_ERR_ARG;
    bundle_clear(g_bundle_dir);
    if (bundle_unpack(data, size, g_bundle_dir, load, sizeof load) == 0) {
        mt_model_opts o;
        mt_model_opts_default(&o);
        o.n_threads = 1;
        mt_model *m = NULL;
        st = mt_model_load(&m, load, &o);
        if (st == MT_OK) {
            const mt_config *c = mt_model_config(m);
            mt_ctx *ctx = NULL;
            if (c->vocab >= 1 && mt_ctx_check(m, 2, 2) == MT_OK && mt_ctx_init(&ctx, m, 2, 2) == MT_OK) {
                float *logits = malloc((size_t)c->vocab * sizeof *logits);
                int32_t tok[2] = {0, c->vocab - 1};
                mt_ctx_forward(ctx, tok, 2, logits, 0);
                free(logits);
                mt_ctx_free(ctx);
            }
        } else {
            assert_null(m);
            assert_true(mt_last_error()[0] != 0);
        }
        mt_model_free(m);
    }
    bundle_clear(g_bundle_dir);
    return st;
}
static void feed_model(const uint8_t *data, size_t size) { load_bundle(data, size); }

static int replay_step(const char *sub, feed_fn feed, size_t step_div) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/fuzz/corpus/%s", tu_source_dir(), sub);
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        size_t len = 0;
        char *buf = tu_read_file(path, &len);
        if (!buf) continue;
        /* An exact-size copy so that sanitizers catch a read one past the end. */
        uint8_t *exact = malloc(len ? len : 1);
        memcpy(exact, buf, len);
        free(buf);
        feed(exact, len);
        for (size_t cut = 0; cut < len; cut += 1 + cut / step_div) feed(exact, cut);
        free(exact);
        n++;
    }
    closedir(d);
    return n;
}

static int replay(const char *sub, feed_fn feed) { return replay_step(sub, feed, 64); }

static void test_layers_corpus(void **state) {
    (void)state;
    int n = replay("layers", feed_layers);
    printf("layers corpus: %d files\n", n);
    assert_true(n >= 3);
}

/* Every seed is a real model that loads (tools/make_fuzz_bundles.py wrote
 * them from moetool's own outputs); its truncations load or fail cleanly. */
static void test_model_corpus(void **state) {
    (void)state;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/fuzz/corpus/model", tu_source_dir());
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strstr(e->d_name, ".bundle")) continue;
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        size_t len = 0;
        uint8_t *buf = (uint8_t *)tu_read_file(path, &len);
        assert_non_null(buf);
        int st = load_bundle(buf, len);
        if (st != MT_OK) fail_msg("%s: %s", e->d_name, mt_last_error());
        free(buf);
        n++;
    }
    closedir(d);
    int m = replay_step("model", feed_model, 8);
    if (g_bundle_dir[0]) rmdir(g_bundle_dir);
    printf("model corpus: %d seeds load; %d files replayed with truncations\n", n, m);
    assert_true(n >= 4);
}

static void test_safetensors_corpus(void **state) {
    (void)state;
    int n = replay("safetensors", feed_safetensors);
    printf("safetensors corpus: %d files\n", n);
    assert_true(n >= 3);
}

static void test_config_corpus(void **state) {
    (void)state;
    int n = replay("config", feed_config);
    printf("config corpus: %d files\n", n);
    assert_true(n >= 3);
}

static void test_qmoe_corpus(void **state) {
    (void)state;
    int n = replay("qmoe", feed_qmoe);
    printf("qmoe corpus: %d files\n", n);
    assert_true(n >= 3);
}

static void test_pickle_corpus(void **state) {
    (void)state;
    int n = replay("pickle", feed_pickle);
    printf("pickle corpus: %d files\n", n);
    assert_true(n >= 3);
}

static void test_pytorch_corpus(void **state) {
    (void)state;
    int n = replay("pytorch", feed_pytorch);
    printf("pytorch corpus: %d files\n", n);
    assert_true(n >= 3);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pickle_corpus),
        cmocka_unit_test(test_pytorch_corpus),
        cmocka_unit_test(test_safetensors_corpus),
        cmocka_unit_test(test_config_corpus),
        cmocka_unit_test(test_qmoe_corpus),
        cmocka_unit_test(test_layers_corpus),
        cmocka_unit_test(test_model_corpus),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
