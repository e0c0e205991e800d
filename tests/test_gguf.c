/* test_gguf.c — GGUF reader and writer: round trips through our writer
 * (checked against the byte layout written out by hand here), hostile
 * hand-crafted headers (each must fail with the right status and a message
 * naming the file), every truncation of a valid file, and a replay of the
 * fuzz corpus. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "moetool/mt_io.h"
#include "testutil.h"
#include "writer_impl.h"

/* ---- a tiny GGUF builder, independent of the library's writer ----------- */
typedef struct {
    uint8_t *b;
    size_t n, cap;
} bb;

static void bb_put(bb *x, const void *p, size_t n) {
    if (x->n + n > x->cap) {
        x->cap = (x->n + n) * 2 + 64;
        x->b = realloc(x->b, x->cap);
        assert_non_null(x->b);
    }
    memcpy(x->b + x->n, p, n);
    x->n += n;
}
static void bb_u32(bb *x, uint32_t v) {
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    bb_put(x, b, 4);
}
static void bb_u64(bb *x, uint64_t v) {
    bb_u32(x, (uint32_t)v);
    bb_u32(x, (uint32_t)(v >> 32));
}
static void bb_str(bb *x, const char *s) {
    bb_u64(x, strlen(s));
    bb_put(x, s, strlen(s));
}
static void bb_pad(bb *x, size_t a) {
    while (x->n % a) bb_put(x, "", 1);
}

typedef struct {
    const char *name;
    uint32_t n_dims;
    uint64_t ne[5];
    uint32_t type;
    uint64_t offset;
} tinfo;

/* Header with one string kv ("general.name") plus `extra_kv` raw bytes
 * (counted as n_extra keys), the given tensor infos, padding, and
 * `data_len` bytes of data (value i & 0xff). */
static bb build(uint32_t version, const tinfo *t, size_t nt, const bb *extra_kv, uint64_t n_extra, size_t data_len) {
    bb x = {0};
    bb_put(&x, "GGUF", 4);
    bb_u32(&x, version);
    bb_u64(&x, nt);
    bb_u64(&x, 1 + n_extra);
    bb_str(&x, "general.name");
    bb_u32(&x, MT_GGUF_STRING);
    bb_str(&x, "tiny");
    if (extra_kv) bb_put(&x, extra_kv->b, extra_kv->n);
    for (size_t i = 0; i < nt; i++) {
        bb_str(&x, t[i].name);
        bb_u32(&x, t[i].n_dims);
        for (uint32_t d = 0; d < t[i].n_dims && d < 5; d++) bb_u64(&x, t[i].ne[d]);
        bb_u32(&x, t[i].type);
        bb_u64(&x, t[i].offset);
    }
    bb_pad(&x, 32);
    for (size_t i = 0; i < data_len; i++) {
        uint8_t v = (uint8_t)i;
        bb_put(&x, &v, 1);
    }
    return x;
}

/* Two valid tensors: a (2,8) f32 at 0 (64 bytes) and a (4) f16 at 64. */
static const tinfo g_ok[2] = {{"a.weight", 2, {8, 2}, 0, 0}, {"b.weight", 1, {4}, 1, 64}};

static void expect_fail(const bb *x, int status, const char *needle) {
    mt_gguf *g = (mt_gguf *)0x1;
    int rc = mt_gguf_parse(&g, x->b, x->n, "mem.gguf");
    if (rc != status) fprintf(stderr, "expected %s, got %s: %s\n", mt_status_name(status), mt_status_name(rc), mt_last_error());
    assert_int_equal(rc, status);
    assert_null(g);
    assert_non_null(strstr(mt_last_error(), "mem.gguf"));
    if (needle && !strstr(mt_last_error(), needle)) {
        fprintf(stderr, "message '%s' lacks '%s'\n", mt_last_error(), needle);
        fail();
    }
}

static void test_handmade_valid(void **state) {
    (void)state;
    bb x = build(3, g_ok, 2, NULL, 0, 72);
    mt_gguf *g;
    assert_int_equal(mt_gguf_parse(&g, x.b, x.n, "mem.gguf"), MT_OK);
    assert_int_equal(mt_gguf_tensor_count(g), 2);
    const mt_tensor *a = mt_gguf_find_tensor(g, "a.weight");
    assert_non_null(a);
    assert_int_equal(a->n_dims, 2);
    assert_int_equal(a->shape[0], 2); /* PyTorch order: ne reversed */
    assert_int_equal(a->shape[1], 8);
    assert_int_equal(a->dtype, MT_DT_F32);
    assert_int_equal(a->nbytes, 64);
    assert_int_equal(a->file_offset % 32, 0);
    assert_ptr_equal(a->data, x.b + a->file_offset);
    const mt_tensor *b = mt_gguf_find_tensor(g, "b.weight");
    assert_int_equal(b->dtype, MT_DT_F16);
    assert_int_equal(b->file_offset, a->file_offset + 64);
    const char *s;
    uint64_t n;
    assert_int_equal(mt_gguf_get_str(g, "general.name", &s, &n), MT_OK);
    assert_int_equal(n, 4);
    assert_memory_equal(s, "tiny", 4);
    mt_gguf_free(g);
    /* version 2 has the same layout */
    bb y = build(2, g_ok, 2, NULL, 0, 72);
    assert_int_equal(mt_gguf_parse(&g, y.b, y.n, "mem.gguf"), MT_OK);
    mt_gguf_free(g);
    free(x.b);
    free(y.b);
}

static void test_bad_headers(void **state) {
    (void)state;
    bb x = build(3, g_ok, 2, NULL, 0, 72);
    x.b[0] = 'X';
    expect_fail(&x, MT_ERR_FORMAT, "magic");
    free(x.b);

    x = build(1, g_ok, 2, NULL, 0, 72);
    expect_fail(&x, MT_ERR_UNSUPPORTED, "version 1");
    free(x.b);
    x = build(99, g_ok, 2, NULL, 0, 72);
    expect_fail(&x, MT_ERR_UNSUPPORTED, "version 99");
    free(x.b);

    /* n_tensors 2^60 */
    x = build(3, g_ok, 2, NULL, 0, 72);
    uint64_t big = 1ull << 60;
    memcpy(x.b + 8, &big, 8);
    expect_fail(&x, MT_ERR_FORMAT, "tensor count");
    /* n_kv absurd */
    memcpy(x.b + 8, &(uint64_t){2}, 8);
    uint64_t huge = UINT64_MAX / 3;
    memcpy(x.b + 16, &huge, 8);
    expect_fail(&x, MT_ERR_FORMAT, "metadata count");
    free(x.b);

    /* key length past the end */
    x = build(3, g_ok, 2, NULL, 0, 72);
    uint64_t klen = 1ull << 40;
    memcpy(x.b + 24, &klen, 8);
    expect_fail(&x, MT_ERR_FORMAT, NULL);
    klen = 1000; /* under the key cap but beyond the buffer */
    memcpy(x.b + 24, &klen, 8);
    expect_fail(&x, MT_ERR_FORMAT, "truncated");
    free(x.b);

    /* string value length past the end */
    bb kv = {0};
    bb_str(&kv, "x.s");
    bb_u32(&kv, MT_GGUF_STRING);
    bb_u64(&kv, 1ull << 62);
    x = build(3, NULL, 0, &kv, 1, 0);
    expect_fail(&x, MT_ERR_FORMAT, "x.s");
    free(x.b);
    free(kv.b);
}

static void test_bad_tensors(void **state) {
    (void)state;
    tinfo t[2];
    bb x;
#define CASE(status, needle, data_len)                  \
    do {                                                \
        x = build(3, t, 2, NULL, 0, data_len);          \
        expect_fail(&x, status, needle);                \
        free(x.b);                                      \
    } while (0)
    memcpy(t, g_ok, sizeof t);
    t[0].n_dims = 0;
    CASE(MT_ERR_FORMAT, "dimensions", 72);
    memcpy(t, g_ok, sizeof t);
    t[0].n_dims = 5;
    t[0].ne[2] = t[0].ne[3] = t[0].ne[4] = 1;
    CASE(MT_ERR_FORMAT, "dimensions", 72);
    memcpy(t, g_ok, sizeof t);
    t[1].type = 39; /* MXFP4: ggml knows it, we do not */
    CASE(MT_ERR_UNSUPPORTED, "b.weight", 72);
    memcpy(t, g_ok, sizeof t);
    t[1].type = 200; /* nobody knows it */
    CASE(MT_ERR_UNSUPPORTED, "200", 72);
    memcpy(t, g_ok, sizeof t);
    t[1].offset = 4096; /* past the end */
    CASE(MT_ERR_FORMAT, "b.weight", 72);
    memcpy(t, g_ok, sizeof t);
    t[1].offset = UINT64_MAX - 31; /* aligned, overflows offset + size */
    CASE(MT_ERR_FORMAT, "b.weight", 72);
    memcpy(t, g_ok, sizeof t);
    t[1].offset = 65; /* misaligned */
    CASE(MT_ERR_FORMAT, "alignment", 200);
    memcpy(t, g_ok, sizeof t);
    t[1].offset = 32; /* inside a.weight */
    CASE(MT_ERR_FORMAT, "overlap", 200);
    memcpy(t, g_ok, sizeof t);
    t[1].name = "a.weight";
    CASE(MT_ERR_FORMAT, "duplicate", 200);
    memcpy(t, g_ok, sizeof t);
    t[0].ne[0] = 1ull << 40;
    t[0].ne[1] = 1ull << 40; /* element count overflows */
    CASE(MT_ERR_FORMAT, "overflow", 72);
    memcpy(t, g_ok, sizeof t);
    t[0].type = 8; /* q8_0 with rows of 8: not whole blocks */
    CASE(MT_ERR_FORMAT, "blocks", 72);
    memcpy(t, g_ok, sizeof t);
    t[0].ne[1] = 0;
    CASE(MT_ERR_FORMAT, "a.weight", 72);
#undef CASE
}

static void test_bad_metadata(void **state) {
    (void)state;
    bb kv = {0}, x;
    /* duplicate key */
    bb_str(&kv, "general.name");
    bb_u32(&kv, MT_GGUF_UINT32);
    bb_u32(&kv, 7);
    x = build(3, g_ok, 2, &kv, 1, 72);
    expect_fail(&x, MT_ERR_FORMAT, "duplicate");
    free(x.b);
    free(kv.b);
    /* alignment not a power of two */
    kv = (bb){0};
    bb_str(&kv, "general.alignment");
    bb_u32(&kv, MT_GGUF_UINT32);
    bb_u32(&kv, 48);
    x = build(3, g_ok, 2, &kv, 1, 72);
    expect_fail(&x, MT_ERR_FORMAT, "alignment");
    free(x.b);
    free(kv.b);
    /* unknown value type */
    kv = (bb){0};
    bb_str(&kv, "x.y");
    bb_u32(&kv, 77);
    bb_u32(&kv, 0);
    x = build(3, g_ok, 2, &kv, 1, 72);
    expect_fail(&x, MT_ERR_FORMAT, "x.y");
    free(x.b);
    free(kv.b);
    /* array count larger than the file could hold */
    kv = (bb){0};
    bb_str(&kv, "x.arr");
    bb_u32(&kv, MT_GGUF_ARRAY);
    bb_u32(&kv, MT_GGUF_UINT64);
    bb_u64(&kv, 1ull << 61);
    x = build(3, g_ok, 2, &kv, 1, 72);
    expect_fail(&x, MT_ERR_FORMAT, "x.arr");
    free(x.b);
    free(kv.b);
    /* arrays nested two levels deep */
    kv = (bb){0};
    bb_str(&kv, "x.nest");
    bb_u32(&kv, MT_GGUF_ARRAY);
    bb_u32(&kv, MT_GGUF_ARRAY);
    bb_u64(&kv, 1);
    bb_u32(&kv, MT_GGUF_ARRAY);
    bb_u64(&kv, 1);
    bb_u32(&kv, MT_GGUF_UINT8);
    bb_u64(&kv, 1);
    bb_put(&kv, "\1", 1);
    x = build(3, g_ok, 2, &kv, 1, 72);
    expect_fail(&x, MT_ERR_UNSUPPORTED, "nest");
    free(x.b);
    free(kv.b);
    /* one level of nesting is fine; a custom alignment of 64 is honoured */
    kv = (bb){0};
    bb_str(&kv, "x.nest");
    bb_u32(&kv, MT_GGUF_ARRAY);
    bb_u32(&kv, MT_GGUF_ARRAY);
    bb_u64(&kv, 1);
    bb_u32(&kv, MT_GGUF_UINT8);
    bb_u64(&kv, 2);
    bb_put(&kv, "\1\2", 2);
    bb_str(&kv, "general.alignment");
    bb_u32(&kv, MT_GGUF_UINT32);
    bb_u32(&kv, 64);
    tinfo t[2];
    memcpy(t, g_ok, sizeof t);
    x = build(3, t, 2, &kv, 2, 0);
    bb_pad(&x, 64);
    for (int i = 0; i < 72; i++) bb_put(&x, "\0", 1);
    mt_gguf *g;
    assert_int_equal(mt_gguf_parse(&g, x.b, x.n, "mem.gguf"), MT_OK);
    assert_int_equal(mt_gguf_tensor(g, 0)->file_offset % 64, 0);
    mt_gguf_type et;
    uint64_t n;
    assert_int_equal(mt_gguf_get_arr(g, "x.nest", &et, &n), MT_OK);
    assert_int_equal(et, MT_GGUF_ARRAY);
    assert_int_equal(n, 1);
    const void *d;
    assert_int_equal(mt_gguf_arr_data(g, "x.nest", &d), MT_ERR_FORMAT);
    mt_gguf_free(g);
    /* ... and with offset 64 % 64 == 0 but tensor b at 64 < a's 64 bytes: fine; at 32 misaligned */
    free(x.b);
    free(kv.b);
}

/* Every proper prefix that cuts into the header or the tensor data fails. */
static void test_truncations(void **state) {
    (void)state;
    bb x = build(3, g_ok, 2, NULL, 0, 72);
    size_t data_end = x.n; /* the last tensor ends exactly at the end */
    for (size_t n = 0; n < data_end; n++) {
        mt_gguf *g = (mt_gguf *)0x1;
        void *copy = malloc(n ? n : 1); /* exact size, so ASan sees any over-read */
        memcpy(copy, x.b, n);
        int rc = mt_gguf_parse(&g, copy, n, "mem.gguf");
        assert_int_not_equal(rc, MT_OK);
        assert_null(g);
        assert_non_null(strstr(mt_last_error(), "mem.gguf"));
        free(copy);
    }
    free(x.b);
}

/* ---- the writer --------------------------------------------------------- */
static void test_writer_roundtrip(void **state) {
    (void)state;
    char *dir = tu_mkdtemp();
    assert_non_null(dir);
    char path[4096];
    snprintf(path, sizeof path, "%s/w.gguf", dir);
    mt_gguf_writer *w;
    assert_int_equal(mt_gguf_writer_open(&w, path), MT_OK);
    assert_int_equal(mt_gguf_writer_kv_str(w, "general.architecture", "llama", 5), MT_OK);
    assert_int_equal(mt_gguf_writer_kv_u32(w, "k.u32", 4000000000u), MT_OK);
    assert_int_equal(mt_gguf_writer_kv_i32(w, "k.i32", -7), MT_OK);
    assert_int_equal(mt_gguf_writer_kv_u64(w, "k.u64", 1ull << 40), MT_OK);
    assert_int_equal(mt_gguf_writer_kv_f32(w, "k.f32", 0.25f), MT_OK);
    assert_int_equal(mt_gguf_writer_kv_bool(w, "k.bool", 1), MT_OK);
    int32_t arr[3] = {1, -2, 3};
    assert_int_equal(mt_gguf_writer_kv_arr(w, "k.arr", MT_GGUF_INT32, arr, 3), MT_OK);
    const char *strs[3] = {"a", "", "\xe2\x96\x81the"};
    assert_int_equal(mt_gguf_writer_kv_arr_str(w, "k.strs", 3, strs, NULL), MT_OK);
    assert_int_equal(mt_gguf_writer_kv_u32(w, "k.u32", 1), MT_ERR_ARG); /* duplicate */
    int64_t s1[2] = {3, 5}, s2[2] = {2, 64}, s3[3] = {4, 2, 6}, s4[1] = {7};
    assert_int_equal(mt_gguf_writer_add_tensor(w, "t.f32", MT_DT_F32, 2, s1), MT_OK);
    assert_int_equal(mt_gguf_writer_add_tensor(w, "t.q8", MT_DT_Q8_0, 2, s2), MT_OK);
    assert_int_equal(mt_gguf_writer_add_tensor(w, "t.bf16", MT_DT_BF16, 3, s3), MT_OK);
    assert_int_equal(mt_gguf_writer_add_tensor(w, "t.i32", MT_DT_I32, 1, s4), MT_OK);
    int64_t bad[2] = {2, 33};
    assert_int_equal(mt_gguf_writer_add_tensor(w, "t.bad", MT_DT_Q8_0, 2, bad), MT_ERR_ARG);
    size_t sizes[4] = {60, 2 * 2 * 34, 48 * 2, 28}, total = 60 + 136 + 96 + 28;
    uint8_t *data = malloc(total);
    for (size_t i = 0; i < total; i++) data[i] = (uint8_t)(i * 7 + 3);
    /* stream in odd pieces that cross tensor boundaries */
    for (size_t off = 0; off < total;) {
        size_t k = off + 13 <= total ? 13 : total - off;
        assert_int_equal(mt_gguf_writer_write(w, data + off, k), MT_OK);
        off += k;
    }
    /* nothing at the final name until finish */
    struct stat st;
    assert_int_not_equal(stat(path, &st), 0);
    assert_int_equal(mt_gguf_writer_finish(w), MT_OK);
    mt_gguf_writer_free(w);

    size_t flen;
    uint8_t *file = (uint8_t *)tu_read_file(path, &flen);
    assert_non_null(file);
    assert_memory_equal(file, "GGUF", 4);
    uint32_t ver;
    uint64_t nt, nkv;
    memcpy(&ver, file + 4, 4);
    memcpy(&nt, file + 8, 8);
    memcpy(&nkv, file + 16, 8);
    assert_int_equal(ver, 3);
    assert_int_equal(nt, 4);
    assert_int_equal(nkv, 9); /* the 8 declared + moetool.writer */
    assert_int_equal(flen % 32, 0);

    mt_gguf *g;
    assert_int_equal(mt_gguf_open(&g, path), MT_OK);
    int64_t iv;
    double dv;
    assert_int_equal(mt_gguf_get_i64(g, "k.u32", &iv), MT_OK);
    assert_int_equal(iv, 4000000000ll);
    assert_int_equal(mt_gguf_get_i64(g, "k.i32", &iv), MT_OK);
    assert_int_equal(iv, -7);
    assert_int_equal(mt_gguf_get_i64(g, "k.u64", &iv), MT_OK);
    assert_int_equal(iv, 1ll << 40);
    assert_int_equal(mt_gguf_get_f64(g, "k.f32", &dv), MT_OK);
    assert_true(dv == 0.25);
    assert_int_equal(mt_gguf_get_i64(g, "k.f32", &iv), MT_ERR_FORMAT); /* 0.25 is no integer */
    assert_int_equal(mt_gguf_get_i64(g, "k.bool", &iv), MT_OK);
    assert_int_equal(iv, 1);
    assert_int_equal(mt_gguf_get_i64(g, "nope", &iv), MT_ERR_NOT_FOUND);
    assert_int_equal(mt_gguf_get_i64(g, "general.architecture", &iv), MT_ERR_FORMAT);
    assert_int_equal(mt_gguf_key_type(g, mt_gguf_find_key(g, "k.bool")), MT_GGUF_BOOL);
    const char *ws;
    uint64_t wl;
    assert_int_equal(mt_gguf_get_str(g, "moetool.writer", &ws, &wl), MT_OK); /* how outputs are recognised */
    assert_true(wl == 7 && !memcmp(ws, "moetool", 7));
    mt_gguf_type et;
    uint64_t n;
    const void *ad;
    assert_int_equal(mt_gguf_get_arr(g, "k.arr", &et, &n), MT_OK);
    assert_int_equal(et, MT_GGUF_INT32);
    assert_int_equal(n, 3);
    assert_int_equal(mt_gguf_arr_data(g, "k.arr", &ad), MT_OK);
    assert_memory_equal(ad, arr, sizeof arr);
    assert_int_equal(mt_gguf_get_arr(g, "k.strs", &et, &n), MT_OK);
    assert_int_equal(et, MT_GGUF_STRING);
    for (uint64_t i = 0; i < 3; i++) {
        const char *s;
        uint64_t len;
        assert_int_equal(mt_gguf_arr_str(g, "k.strs", i, &s, &len), MT_OK);
        assert_int_equal(len, strlen(strs[i]));
        assert_memory_equal(s, strs[i], len);
    }
    const char *s;
    uint64_t len;
    assert_int_equal(mt_gguf_arr_str(g, "k.strs", 3, &s, &len), MT_ERR_ARG);
    assert_int_equal(mt_gguf_arr_data(g, "k.strs", &ad), MT_ERR_FORMAT);

    const char *names[4] = {"t.f32", "t.q8", "t.bf16", "t.i32"};
    const int64_t *shapes[4] = {s1, s2, s3, s4};
    int nd[4] = {2, 2, 3, 1};
    mt_dtype types[4] = {MT_DT_F32, MT_DT_Q8_0, MT_DT_BF16, MT_DT_I32};
    size_t off = 0;
    assert_int_equal(mt_gguf_tensor_count(g), 4);
    for (int i = 0; i < 4; i++) {
        const mt_tensor *t = mt_gguf_tensor(g, (size_t)i);
        assert_string_equal(t->name, names[i]);
        assert_ptr_equal(mt_gguf_find_tensor(g, names[i]), t);
        assert_int_equal(t->dtype, types[i]);
        assert_int_equal(t->n_dims, nd[i]);
        for (int d = 0; d < nd[i]; d++) assert_int_equal(t->shape[d], shapes[i][d]);
        assert_int_equal(t->nbytes, sizes[i]);
        assert_int_equal(t->file_offset % 32, 0);
        assert_memory_equal(t->data, data + off, sizes[i]);
        /* the data is where the header says, in the file bytes too */
        assert_memory_equal(file + t->file_offset, data + off, sizes[i]);
        off += sizes[i];
    }
    assert_null(mt_gguf_find_tensor(g, "t.none"));
    mt_gguf_free(g);
    free(file);
    free(data);

    /* an abandoned writer leaves nothing behind */
    char path2[4200];
    snprintf(path2, sizeof path2, "%s/abandoned.gguf", dir);
    assert_int_equal(mt_gguf_writer_open(&w, path2), MT_OK);
    assert_int_equal(mt_gguf_writer_add_tensor(w, "x", MT_DT_F32, 1, s4), MT_OK);
    assert_int_equal(mt_gguf_writer_write(w, "abcd", 4), MT_OK);
    assert_int_not_equal(mt_gguf_writer_finish(w), MT_OK); /* 24 bytes missing */
    mt_gguf_writer_free(w);
    DIR *dd = opendir(dir);
    struct dirent *e;
    int entries = 0;
    while ((e = readdir(dd)))
        if (e->d_name[0] != '.') {
            entries++;
            assert_string_equal(e->d_name, "w.gguf");
        }
    closedir(dd);
    assert_int_equal(entries, 1);

    assert_int_equal(mt_gguf_open(&g, path2), MT_ERR_IO);
    assert_null(g);
    tu_rmtree(dir);
    free(dir);
}

/* The fuzz corpus must parse or fail cleanly (run under ASan in CI). */
static void test_corpus(void **state) {
    (void)state;
    char dirp[4096];
    snprintf(dirp, sizeof dirp, "%s/fuzz/corpus/gguf", tu_source_dir());
    DIR *d = opendir(dirp);
    if (!d) skip();
    struct dirent *e;
    int n = 0, ok = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char p[8192];
        snprintf(p, sizeof p, "%s/%s", dirp, e->d_name);
        size_t len;
        char *buf = tu_read_file(p, &len);
        if (!buf) continue;
        mt_gguf *g;
        int rc = mt_gguf_parse(&g, buf, len, e->d_name);
        if (rc == MT_OK) {
            ok++;
            for (size_t i = 0; i < mt_gguf_tensor_count(g); i++) {
                const mt_tensor *t = mt_gguf_tensor(g, i);
                assert_true(t->file_offset + t->nbytes <= len);
                /* readable block types decode their first row (K-quant seeds) */
                const mt_dtype_info *di = mt_dtype_get(t->dtype);
                const int64_t cols = t->shape[t->n_dims - 1];
                uint64_t rb;
                float row[1024];
                if (di && di->to_f32 && di->block_elems > 1 && cols <= 1024 &&
                    mt_dtype_nbytes(t->dtype, (uint64_t)cols, &rb) == MT_OK && rb <= t->nbytes)
                    assert_int_equal(mt_row_to_f32(t->dtype, t->data, row, cols), MT_OK);
            }
            mt_gguf_free(g);
        } else {
            assert_non_null(strstr(mt_last_error(), e->d_name));
        }
        free(buf);
        n++;
    }
    closedir(d);
    printf("gguf corpus: %d files, %d valid\n", n, ok);
    assert_true(n >= 1);
}

/* A file written by llama.cpp's gguf-py (fuzz/corpus/gguf/valid_small.gguf,
 * made by GGUFWriter) reads back with the values it was given. */
static void test_written_by_gguf_py(void **state) {
    (void)state;
    char p[4096];
    snprintf(p, sizeof p, "%s/fuzz/corpus/gguf/valid_small.gguf", tu_source_dir());
    mt_gguf *g;
    assert_int_equal(mt_gguf_open(&g, p), MT_OK);
    const char *s;
    uint64_t n;
    assert_int_equal(mt_gguf_get_str(g, "general.architecture", &s, &n), MT_OK);
    assert_int_equal(n, 5);
    assert_memory_equal(s, "llama", 5);
    int64_t iv;
    assert_int_equal(mt_gguf_get_i64(g, "llama.embedding_length", &iv), MT_OK);
    assert_int_equal(iv, 32);
    assert_int_equal(mt_gguf_get_i64(g, "x.u64", &iv), MT_OK);
    assert_int_equal(iv, 7);
    assert_int_equal(mt_gguf_get_str(g, "x.s", &s, &n), MT_OK);
    assert_int_equal(n, 5);
    assert_memory_equal(s, "hello", 5);
    assert_int_equal(mt_gguf_arr_str(g, "tokenizer.ggml.tokens", 3, &s, &n), MT_OK);
    assert_int_equal(n, 6);
    assert_memory_equal(s, "\xe2\x96\x81the", 6);
    const mt_tensor *t = mt_gguf_find_tensor(g, "token_embd.weight");
    assert_non_null(t);
    assert_int_equal(t->dtype, MT_DT_F32);
    assert_int_equal(t->shape[0], 4);
    assert_int_equal(t->shape[1], 32);
    for (int i = 0; i < 128; i++) {
        float f;
        memcpy(&f, (const uint8_t *)t->data + 4 * i, 4);
        assert_true(f == (float)i);
    }
    t = mt_gguf_find_tensor(g, "blk.0.attn_q.weight");
    assert_int_equal(t->dtype, MT_DT_Q8_0);
    assert_int_equal(t->shape[0], 2);
    assert_int_equal(t->shape[1], 32);
    assert_int_equal(t->nbytes, 68);
    t = mt_gguf_find_tensor(g, "blk.0.ffn_gate_exps.weight");
    assert_int_equal(t->n_dims, 3);
    assert_int_equal(mt_gguf_find_tensor(g, "blk.0.attn_norm.weight")->dtype, MT_DT_F16);
    mt_gguf_free(g);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handmade_valid), cmocka_unit_test(test_bad_headers),
        cmocka_unit_test(test_bad_tensors),    cmocka_unit_test(test_bad_metadata),
        cmocka_unit_test(test_truncations),    cmocka_unit_test(test_writer_roundtrip),
        cmocka_unit_test(test_corpus),         cmocka_unit_test(test_written_by_gguf_py),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
