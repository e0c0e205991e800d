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
#include "moetool/mt_qmoe.h"
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

static int replay(const char *sub, feed_fn feed) {
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
        for (size_t cut = 0; cut < len; cut += 1 + cut / 64) feed(exact, cut);
        free(exact);
        n++;
    }
    closedir(d);
    return n;
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
