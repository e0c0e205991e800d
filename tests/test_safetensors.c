/* test_safetensors.c — the safetensors reader against a file written by the
 * reference Python implementation, buffers built here byte by byte, and
 * malformed files that must each give the right status and a message naming
 * the file.
 *
 * fuzz/corpus/safetensors/odd_shapes.safetensors was written by the
 * `safetensors` PyPI package (0.4+), independently of our reader:
 *   from safetensors.numpy import save_file; import numpy as np
 *   save_file({"scalar": np.array(3.5, np.float32),
 *              "vec3": np.arange(3, dtype=np.float32) * 0.5,
 *              "cube": np.arange(30, dtype=np.float64).reshape(2, 3, 5),
 *              "hyper": np.arange(12, dtype=np.int16).reshape(2, 1, 3, 2) - 6,
 *              "empty": np.zeros((0, 7), np.float32),
 *              "flags": np.array([True, False, True]),
 *              "bytes": np.arange(5, dtype=np.uint8) * 3,
 *              "ids": np.array([-1, 2**40], np.int64),
 *              "half": np.array([1.5, -2.0], np.float16),
 *              "i8": np.array([-128, 127, 0], np.int8),
 *              "i32": np.array([[7, -7]], np.int32)},
 *             "odd_shapes.safetensors", metadata={"format": "np", "note": "odd shapes"}) */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moetool/mt_io.h"
#include "testutil.h"

static const char *src_path(const char *rel) {
    static char buf[4][4096];
    static int k;
    k = (k + 1) & 3;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tu_source_dir(), rel);
    return buf[k];
}

static void test_python_written_file(void **state) {
    (void)state;
    const char *p = src_path("fuzz/corpus/safetensors/odd_shapes.safetensors");
    mt_safetensors *st = NULL;
    int rc = mt_safetensors_open(&st, p);
    assert_int_equal(rc, MT_OK);
    assert_int_equal(mt_safetensors_count(st), 11);

    const mt_tensor *t = mt_safetensors_find(st, "scalar");
    assert_non_null(t);
    assert_int_equal(t->dtype, MT_DT_F32);
    assert_int_equal(t->n_dims, 0);
    assert_int_equal(mt_tensor_numel(t), 1);
    float f;
    memcpy(&f, t->data, 4);
    assert_true(f == 3.5f);

    t = mt_safetensors_find(st, "cube");
    assert_non_null(t);
    assert_int_equal(t->dtype, MT_DT_F64);
    assert_int_equal(t->n_dims, 3);
    assert_int_equal(t->shape[0], 2);
    assert_int_equal(t->shape[1], 3);
    assert_int_equal(t->shape[2], 5);
    assert_int_equal(t->nbytes, 30 * 8);
    for (int i = 0; i < 30; i++) {
        double d;
        memcpy(&d, (const char *)t->data + 8 * i, 8);
        assert_true(d == (double)i);
    }

    t = mt_safetensors_find(st, "hyper");
    assert_non_null(t);
    assert_int_equal(t->dtype, MT_DT_I16);
    assert_int_equal(t->n_dims, 4);
    assert_int_equal(t->shape[1], 1);
    assert_int_equal(t->shape[3], 2);
    for (int i = 0; i < 12; i++) {
        int16_t v;
        memcpy(&v, (const char *)t->data + 2 * i, 2);
        assert_int_equal(v, i - 6);
    }

    t = mt_safetensors_find(st, "empty");
    assert_non_null(t);
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->shape[0], 0);
    assert_int_equal(t->shape[1], 7);
    assert_int_equal(t->nbytes, 0);
    assert_int_equal(mt_tensor_numel(t), 0);

    t = mt_safetensors_find(st, "ids");
    assert_non_null(t);
    assert_int_equal(t->dtype, MT_DT_I64);
    int64_t ids[2];
    memcpy(ids, t->data, 16);
    assert_int_equal(ids[0], -1);
    assert_int_equal(ids[1], (int64_t)1 << 40);

    t = mt_safetensors_find(st, "half");
    assert_non_null(t);
    assert_int_equal(t->dtype, MT_DT_F16);
    uint16_t h[2];
    memcpy(h, t->data, 4);
    assert_true(mt_f16_to_f32(h[0]) == 1.5f);
    assert_true(mt_f16_to_f32(h[1]) == -2.0f);

    t = mt_safetensors_find(st, "flags");
    assert_non_null(t);
    assert_int_equal(t->dtype, MT_DT_BOOL);
    assert_int_equal(((const uint8_t *)t->data)[0], 1);
    assert_int_equal(((const uint8_t *)t->data)[1], 0);
    t = mt_safetensors_find(st, "bytes");
    assert_int_equal(t->dtype, MT_DT_U8);
    assert_int_equal(((const uint8_t *)t->data)[4], 12);
    t = mt_safetensors_find(st, "i8");
    assert_int_equal(t->dtype, MT_DT_I8);
    assert_int_equal(((const int8_t *)t->data)[0], -128);
    t = mt_safetensors_find(st, "i32");
    assert_int_equal(t->dtype, MT_DT_I32);
    assert_int_equal(t->shape[0], 1);
    assert_int_equal(t->shape[1], 2);
    assert_null(mt_safetensors_find(st, "__metadata__"));
    assert_null(mt_safetensors_find(st, "nope"));

    /* File order: offsets increase, tensors tile the data region, and every
     * name is found by find. */
    uint64_t prev = 0;
    for (size_t i = 0; i < mt_safetensors_count(st); i++) {
        const mt_tensor *u = mt_safetensors_get(st, i);
        assert_true(u->file_offset >= prev);
        prev = u->file_offset + u->nbytes;
        assert_ptr_equal(mt_safetensors_find(st, u->name), u);
    }
    size_t len = 0;
    char *whole = tu_read_file(p, &len);
    assert_non_null(whole);
    assert_int_equal(prev, len);
    /* data points at file_offset in the mapping: same bytes as a plain read */
    t = mt_safetensors_find(st, "cube");
    assert_memory_equal(t->data, whole + t->file_offset, t->nbytes);
    free(whole);
    mt_safetensors_free(st);
}

/* Builds u64 header length + header + data into a malloc'd buffer. */
static uint8_t *build(const char *header, const void *data, size_t dlen, size_t *len) {
    size_t h = strlen(header);
    uint8_t *b = malloc(8 + h + dlen + 1);
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)h >> (8 * i));
    memcpy(b + 8, header, h);
    if (dlen) memcpy(b + 8 + h, data, dlen);
    *len = 8 + h + dlen;
    return b;
}

/* A zero dimension gives 0 without the other dimensions' product
 * overflowing on the way (UBSan: signed overflow); an overflowing count is -1. */
static void test_numel(void **state) {
    (void)state;
    mt_tensor t;
    memset(&t, 0, sizeof t);
    t.n_dims = 3;
    t.shape[0] = (int64_t)1 << 62;
    t.shape[1] = 4;
    t.shape[2] = 0;
    assert_int_equal(mt_tensor_numel(&t), 0);
    t.n_dims = 2;
    assert_int_equal(mt_tensor_numel(&t), -1);
    t.shape[1] = 1;
    assert_int_equal(mt_tensor_numel(&t), (int64_t)1 << 62);
    t.n_dims = 0;
    assert_int_equal(mt_tensor_numel(&t), 1);
}

static void test_built_in_memory(void **state) {
    (void)state;
    /* bf16 (3, 1), f8 (2,), a 4-D (1, 1, 1, 2) f32, spaces padding the header,
     * tensors listed out of data order. */
    uint16_t bf[3] = {mt_f32_to_bf16(1.0f), mt_f32_to_bf16(-0.5f), mt_f32_to_bf16(256.0f)};
    uint8_t data[6 + 2 + 8 + 2];
    memcpy(data, bf, 6);
    data[6] = 0x38; /* e4m3 1.0 */
    data[7] = 0xb8;
    float q[2] = {2.0f, 4.0f};
    memcpy(data + 8, q, 8);
    data[16] = 0x3c;
    data[17] = 0xbc;
    const char *hdr =
        "{\"q\": {\"dtype\": \"F32\", \"shape\": [1, 1, 1, 2], \"data_offsets\": [8, 16]},"
        " \"b\": {\"dtype\": \"BF16\", \"shape\": [3, 1], \"data_offsets\": [0, 6]},"
        " \"e\": {\"dtype\": \"F8_E5M2\", \"shape\": [2], \"data_offsets\": [16, 18]},"
        " \"f8\": {\"dtype\": \"F8_E4M3\", \"shape\": [2], \"data_offsets\": [6, 8]},"
        " \"__metadata__\": {\"k\": \"v\"}}      ";
    size_t len;
    uint8_t *b = build(hdr, data, sizeof data, &len);
    mt_safetensors *st = NULL;
    assert_int_equal(mt_safetensors_parse(&st, b, len, "mem"), MT_OK);
    assert_int_equal(mt_safetensors_count(st), 4);
    const size_t hlen = strlen(hdr);
    const char *order[4] = {"b", "f8", "q", "e"};
    for (int i = 0; i < 4; i++) assert_string_equal(mt_safetensors_get(st, (size_t)i)->name, order[i]);
    const mt_tensor *t = mt_safetensors_find(st, "b");
    assert_int_equal(t->dtype, MT_DT_BF16);
    assert_int_equal(t->file_offset, 8 + hlen);
    assert_ptr_equal(t->data, b + 8 + hlen);
    uint16_t got;
    memcpy(&got, (const uint8_t *)t->data + 4, 2);
    assert_true(mt_bf16_to_f32(got) == 256.0f);
    t = mt_safetensors_find(st, "q");
    assert_int_equal(t->n_dims, 4);
    assert_int_equal(t->shape[3], 2);
    assert_int_equal(t->file_offset, 8 + hlen + 8);
    assert_int_equal(mt_safetensors_find(st, "f8")->dtype, MT_DT_F8_E4M3);
    assert_int_equal(mt_safetensors_find(st, "e")->dtype, MT_DT_F8_E5M2);
    mt_safetensors_free(st);
    free(b);

    /* An empty-header file and a zero-size tensor are fine. */
    b = build("{}", NULL, 0, &len);
    assert_int_equal(mt_safetensors_parse(&st, b, len, "mem"), MT_OK);
    assert_int_equal(mt_safetensors_count(st), 0);
    mt_safetensors_free(st);
    free(b);
}

/* ---- malformed inputs --------------------------------------------------- */

typedef struct {
    const char *what;
    const char *header;      /* NULL: raw bytes below */
    size_t data_len;         /* zero bytes appended after the header */
    const uint8_t *raw;
    size_t raw_len;
    int status;
    const char *msg_part;    /* must appear in the message besides the file name */
} bad_case;

static void check_bad_file(const char *dir, const bad_case *c) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.safetensors", dir, c->what);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (c->header) {
        size_t len;
        uint8_t *zeros = calloc(1, c->data_len + 1);
        uint8_t *b = build(c->header, zeros, c->data_len, &len);
        assert_int_equal(fwrite(b, 1, len, f), len);
        free(b);
        free(zeros);
    } else if (c->raw_len) {
        assert_int_equal(fwrite(c->raw, 1, c->raw_len, f), c->raw_len);
    }
    fclose(f);
    mt_safetensors *st = (mt_safetensors *)1;
    int rc = mt_safetensors_open(&st, path);
    if (rc != c->status || !strstr(mt_last_error(), path) || !strstr(mt_last_error(), c->msg_part))
        fail_msg("%s: got %s \"%s\", want %s with \"%s\"", c->what, mt_status_name(rc), mt_last_error(),
                 mt_status_name(c->status), c->msg_part);
    assert_null(st);
}

static void test_malformed(void **state) {
    (void)state;
    char *dir = tu_mkdtemp();
    assert_non_null(dir);
    static const uint8_t short_len[5] = {1, 0, 0, 0, 0};
    static const uint8_t past_eof[12] = {0xff, 0xff, 0, 0, 0, 0, 0, 0, '{', '}', ' ', ' '};
    static const uint8_t huge_len[10] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, '{', '}'};
    const bad_case cases[] = {
        {"empty_file", NULL, 0, NULL, 0, MT_ERR_FORMAT, "too short"},
        {"short_len", NULL, 0, short_len, sizeof short_len, MT_ERR_FORMAT, "too short"},
        {"header_past_eof", NULL, 0, past_eof, sizeof past_eof, MT_ERR_FORMAT, "past the end"},
        {"header_len_huge", NULL, 0, huge_len, sizeof huge_len, MT_ERR_FORMAT, "past the end"},
        {"bad_json", "{\"a\": {\"dtype\": \"F32\",", 0, NULL, 0, MT_ERR_FORMAT, "JSON"},
        {"not_object", "[1, 2]", 0, NULL, 0, MT_ERR_FORMAT, "not an object"},
        {"duplicate_name",
         "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
         " \"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}",
         8, NULL, 0, MT_ERR_FORMAT, "JSON"},
        {"truncated_data", "{\"a\": {\"dtype\": \"F32\", \"shape\": [4, 4], \"data_offsets\": [0, 64]}}", 60, NULL, 0,
         MT_ERR_FORMAT, "past the end"},
        {"offsets_out_of_range",
         "{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [1000000, 1000008]}}", 16, NULL, 0,
         MT_ERR_FORMAT, "tensor a"},
        {"offsets_reversed", "{\"a\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [8, 0]}}", 16, NULL, 0,
         MT_ERR_FORMAT, "before begin"},
        {"offsets_negative", "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [-4, 0]}}", 16, NULL,
         0, MT_ERR_FORMAT, "data_offsets"},
        {"overlap",
         "{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]},"
         " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 16]}}",
         16, NULL, 0, MT_ERR_FORMAT, "overlap"},
        {"size_mismatch", "{\"a\": {\"dtype\": \"BF16\", \"shape\": [3, 3], \"data_offsets\": [0, 16]}}", 16, NULL,
         0, MT_ERR_FORMAT, "need 18"},
        {"shape_overflow",
         "{\"a\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296, 4], \"data_offsets\": [0, 16]}}", 16,
         NULL, 0, MT_ERR_FORMAT, "overflow"},
        {"bytes_overflow", "{\"a\": {\"dtype\": \"F64\", \"shape\": [4611686018427387904], \"data_offsets\": [0, 8]}}",
         16, NULL, 0, MT_ERR_FORMAT, "overflow"},
        {"negative_dim", "{\"a\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}", 16, NULL, 0,
         MT_ERR_FORMAT, "shape[0]"},
        {"float_dim", "{\"a\": {\"dtype\": \"F32\", \"shape\": [1.5], \"data_offsets\": [0, 4]}}", 16, NULL, 0,
         MT_ERR_FORMAT, "shape[0]"},
        {"five_dims", "{\"a\": {\"dtype\": \"F32\", \"shape\": [1, 1, 1, 1, 1], \"data_offsets\": [0, 4]}}", 16,
         NULL, 0, MT_ERR_UNSUPPORTED, "5 dimensions"},
        {"unknown_dtype", "{\"a\": {\"dtype\": \"C64\", \"shape\": [1], \"data_offsets\": [0, 8]}}", 16, NULL, 0,
         MT_ERR_UNSUPPORTED, "C64"},
        {"missing_dtype", "{\"a\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 16, NULL, 0, MT_ERR_FORMAT,
         "dtype"},
        {"missing_offsets", "{\"a\": {\"dtype\": \"F32\", \"shape\": [1]}}", 16, NULL, 0, MT_ERR_FORMAT,
         "data_offsets"},
        {"entry_not_object", "{\"a\": 5}", 16, NULL, 0, MT_ERR_FORMAT, "not an object"},
        {"bad_metadata", "{\"__metadata__\": {\"k\": 1}}", 0, NULL, 0, MT_ERR_FORMAT, "__metadata__"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_bad_file(dir, &cases[i]);

    /* Missing file: an I/O error naming it. */
    char path[4096];
    snprintf(path, sizeof path, "%s/absent.safetensors", dir);
    mt_safetensors *st = NULL;
    assert_int_equal(mt_safetensors_open(&st, path), MT_ERR_IO);
    assert_non_null(strstr(mt_last_error(), path));

    /* Real shard cut short: its last tensors run past the end. */
    size_t len = 0;
    char *whole = tu_read_file(tu_model_path("model-00002-of-00002.safetensors"), &len);
    assert_non_null(whole);
    snprintf(path, sizeof path, "%s/cut.safetensors", dir);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(whole, 1, len - 1, f), len - 1);
    fclose(f);
    assert_int_equal(mt_safetensors_open(&st, path), MT_ERR_FORMAT);
    assert_non_null(strstr(mt_last_error(), path));
    assert_non_null(strstr(mt_last_error(), "past the end"));
    /* ... and every prefix of its header fails cleanly too. */
    for (size_t cut = 0; cut < 600; cut += 7) {
        assert_int_not_equal(mt_safetensors_parse(&st, whole, cut, "prefix"), MT_OK);
        assert_null(st);
    }
    free(whole);
    tu_rmtree(dir);
    free(dir);
}

/* The bundled shards parse and agree with the index file's weight_map. */
static void test_bundled_shards(void **state) {
    (void)state;
    mt_safetensors *a = NULL, *b = NULL;
    assert_int_equal(mt_safetensors_open(&a, tu_model_path("model-00001-of-00002.safetensors")), MT_OK);
    assert_int_equal(mt_safetensors_open(&b, tu_model_path("model-00002-of-00002.safetensors")), MT_OK);
    assert_int_equal(mt_safetensors_count(a) + mt_safetensors_count(b), 127);
    const mt_tensor *t = mt_safetensors_find(a, "model.embed_tokens.weight");
    assert_non_null(t);
    assert_int_equal(t->dtype, MT_DT_BF16);
    assert_int_equal(t->shape[0], 4096);
    assert_int_equal(t->shape[1], 256);
    uint64_t bytes = 0;
    for (size_t i = 0; i < mt_safetensors_count(a); i++) bytes += mt_safetensors_get(a, i)->nbytes;
    for (size_t i = 0; i < mt_safetensors_count(b); i++) bytes += mt_safetensors_get(b, i)->nbytes;
    assert_int_equal(bytes, 30691840); /* metadata.total_size of the index */
    mt_safetensors_free(a);
    mt_safetensors_free(b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_python_written_file),
        cmocka_unit_test(test_numel),
        cmocka_unit_test(test_built_in_memory),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_bundled_shards),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
