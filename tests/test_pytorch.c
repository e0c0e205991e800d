/* test_pytorch.c — the restricted unpickler and the PyTorch zip reader.
 *
 * Pickles are built here byte by byte (a valid state dict, then one
 * malicious or broken change each); tests/data/pickle/ holds small zips
 * written by torch.save and by Python's zipfile (make_pickles.py says how),
 * whose tensor values are known: w = arange(6).reshape(2, 3) (f32),
 * b = [1.5, -2] (bf16), h = [0.25, 0.5, 1] (f16), row = w[1] (a view at
 * element offset 3 of w's storage), i = [7, -1] (i64). Every refusal must
 * be MT_ERR_FORMAT or MT_ERR_UNSUPPORTED with a message naming the
 * problem, and nothing may crash (the ASan build runs this too). */
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

/* ---- a pickle builder ---------------------------------------------------- */
typedef struct {
    uint8_t b[1 << 16];
    size_t n;
} pk;

static void op(pk *p, uint8_t c) { p->b[p->n++] = c; }
static void bytes(pk *p, const void *s, size_t n) {
    memcpy(p->b + p->n, s, n);
    p->n += n;
}
static void str(pk *p, const char *s) { /* SHORT_BINUNICODE */
    op(p, 0x8c);
    op(p, (uint8_t)strlen(s));
    bytes(p, s, strlen(s));
}
static void global(pk *p, const char *mod, const char *name) {
    op(p, 'c');
    bytes(p, mod, strlen(mod));
    op(p, '\n');
    bytes(p, name, strlen(name));
    op(p, '\n');
}
static void int1(pk *p, uint8_t v) {
    op(p, 'K');
    op(p, v);
}
static void u32(pk *p, uint32_t v) {
    for (int i = 0; i < 4; i++) op(p, (uint8_t)(v >> (8 * i)));
}

/* torch.save's shape: {name: _rebuild_tensor_v2(storage(FloatStorage, key,
 * numel), offset, (d0, d1), (s0, s1), False, OrderedDict())}. */
static void tensor(pk *p, const char *name, const char *key, uint8_t numel, uint8_t offset, uint8_t d0, uint8_t d1,
                   uint8_t s0, uint8_t s1) {
    str(p, name);
    global(p, "torch._utils", "_rebuild_tensor_v2");
    op(p, '(');
    op(p, '(');
    str(p, "storage");
    global(p, "torch", "FloatStorage");
    str(p, key);
    str(p, "cpu");
    int1(p, numel);
    op(p, 't');
    op(p, 'Q');
    int1(p, offset);
    int1(p, d0);
    int1(p, d1);
    op(p, 0x86);
    int1(p, s0);
    int1(p, s1);
    op(p, 0x86);
    op(p, 0x89);
    global(p, "collections", "OrderedDict");
    op(p, ')');
    op(p, 'R');
    op(p, 't');
    op(p, 'R');
}

static void begin(pk *p) {
    p->n = 0;
    op(p, 0x80);
    op(p, 2);
    global(p, "collections", "OrderedDict");
    op(p, 'q');
    op(p, 0);
    op(p, ')');
    op(p, 'R');
    op(p, '(');
}
static void end(pk *p) {
    op(p, 'u');
    op(p, '.');
}

static void expect_refused(const pk *p, const char *needle) {
    mt_pickle_dict *d = (mt_pickle_dict *)1;
    int rc = mt_pickle_load_state_dict(&d, p->b, p->n, "crafted.pkl");
    if (rc != MT_ERR_FORMAT && rc != MT_ERR_UNSUPPORTED) fail_msg("status %d for %s: %s", rc, needle, mt_last_error());
    assert_null(d);
    if (!strstr(mt_last_error(), needle) || !strstr(mt_last_error(), "crafted.pkl"))
        fail_msg("message \"%s\" does not say \"%s\"", mt_last_error(), needle);
}

static void test_valid_by_hand(void **state) {
    (void)state;
    static pk p;
    begin(&p);
    tensor(&p, "w", "0", 6, 0, 2, 3, 3, 1);
    tensor(&p, "v", "0", 6, 3, 1, 3, 3, 1); /* a view at offset 3 */
    end(&p);
    mt_pickle_dict *d = NULL;
    assert_int_equal(mt_pickle_load_state_dict(&d, p.b, p.n, "crafted.pkl"), MT_OK);
    assert_int_equal(mt_pickle_count(d), 2);
    const mt_pickle_tensor *t = mt_pickle_get(d, 1);
    assert_string_equal(t->name, "v");
    assert_string_equal(t->storage, "0");
    assert_int_equal(t->dtype, MT_DT_F32);
    assert_int_equal(t->offset, 3);
    assert_int_equal(t->storage_numel, 6);
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->shape[0], 1);
    assert_int_equal(t->shape[1], 3);
    mt_pickle_free(d);
    /* Every truncation fails cleanly. */
    for (size_t n = 0; n < p.n; n++) {
        d = NULL;
        int rc = mt_pickle_load_state_dict(&d, p.b, n, "crafted.pkl");
        assert_true(rc == MT_ERR_FORMAT || rc == MT_ERR_UNSUPPORTED);
        assert_null(d);
        assert_non_null(strstr(mt_last_error(), "crafted.pkl"));
    }
}

/* The data.pkl torch.save wrote (torch's own pickler, with memo reuse of
 * globals and of w's storage). */
static void test_torch_pickle(void **state) {
    (void)state;
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/data/pickle/good.pkl", tu_source_dir());
    size_t len = 0;
    char *buf = tu_read_file(path, &len);
    assert_non_null(buf);
    mt_pickle_dict *d = NULL;
    assert_int_equal(mt_pickle_load_state_dict(&d, buf, len, path), MT_OK);
    assert_int_equal(mt_pickle_count(d), 5);
    const char *names[] = {"w", "b", "h", "row", "i"};
    const mt_dtype types[] = {MT_DT_F32, MT_DT_BF16, MT_DT_F16, MT_DT_F32, MT_DT_I64};
    for (size_t i = 0; i < 5; i++) {
        assert_string_equal(mt_pickle_get(d, i)->name, names[i]);
        assert_int_equal(mt_pickle_get(d, i)->dtype, types[i]);
    }
    assert_string_equal(mt_pickle_get(d, 3)->storage, mt_pickle_get(d, 0)->storage);
    assert_int_equal(mt_pickle_get(d, 3)->offset, 3);
    mt_pickle_free(d);
    free(buf);
}

static void test_os_system(void **state) {
    (void)state;
    static pk p;
    p.n = 0;
    op(&p, 0x80);
    op(&p, 2);
    global(&p, "os", "system");
    str(&p, "touch /tmp/pwned");
    op(&p, 0x85);
    op(&p, 'R');
    op(&p, '.');
    expect_refused(&p, "global os.system is not allowed");
    /* the same through STACK_GLOBAL (protocol 4) */
    p.n = 0;
    op(&p, 0x80);
    op(&p, 4);
    str(&p, "posix");
    str(&p, "system");
    op(&p, 0x93);
    expect_refused(&p, "global posix.system is not allowed");
}

static void test_reduce_eval_and_allowed_noncallables(void **state) {
    (void)state;
    static pk p;
    p.n = 0;
    op(&p, 0x80);
    op(&p, 2);
    global(&p, "builtins", "eval");
    str(&p, "__import__('os')");
    op(&p, 0x85);
    op(&p, 'R');
    op(&p, '.');
    expect_refused(&p, "global builtins.eval is not allowed");
    /* an allowed global that is not a callable we run */
    p.n = 0;
    op(&p, 0x80);
    op(&p, 2);
    global(&p, "torch", "FloatStorage");
    op(&p, ')');
    op(&p, 'R');
    op(&p, '.');
    expect_refused(&p, "REDUCE on a global FloatStorage is not allowed");
    /* REDUCE on a string */
    p.n = 0;
    str(&p, "os.system");
    op(&p, ')');
    op(&p, 'R');
    op(&p, '.');
    expect_refused(&p, "REDUCE on a str is not allowed");
    /* OrderedDict called with arguments */
    p.n = 0;
    global(&p, "collections", "OrderedDict");
    op(&p, '(');
    str(&p, "x");
    op(&p, 't');
    op(&p, 'R');
    op(&p, '.');
    expect_refused(&p, "OrderedDict called with arguments");
}

static void test_refused_opcodes(void **state) {
    (void)state;
    static pk p;
    p.n = 0;
    op(&p, 0x80);
    op(&p, 2);
    op(&p, '(');
    global(&p, "collections", "OrderedDict");
    op(&p, 'i'); /* INST */
    expect_refused(&p, "pickle opcode 0x69 (INST) at byte 28 is not allowed");
    p.n = 0;
    op(&p, 0x81); /* NEWOBJ */
    expect_refused(&p, "pickle opcode 0x81 (NEWOBJ) at byte 0 is not allowed");
    p.n = 0;
    op(&p, 'P'); /* PERSID (text) */
    expect_refused(&p, "(PERSID)");
    p.n = 0;
    op(&p, 0xff);
    expect_refused(&p, "pickle opcode 0xff (unknown) at byte 0 is not allowed");
}

static void test_memo_bounds(void **state) {
    (void)state;
    static pk p;
    p.n = 0;
    op(&p, 0x80);
    op(&p, 2);
    op(&p, 'j'); /* LONG_BINGET 0xffffffff */
    u32(&p, 0xffffffffu);
    expect_refused(&p, "memo index 4294967295 is not defined");
    p.n = 0;
    op(&p, '}');
    op(&p, 'r'); /* LONG_BINPUT far past the end */
    u32(&p, 0x7fffffffu);
    expect_refused(&p, "memo index 2147483647 skips past");
    p.n = 0;
    op(&p, 'h');
    op(&p, 0);
    expect_refused(&p, "memo index 0 is not defined");
    p.n = 0;
    op(&p, 'q'); /* BINPUT with nothing on the stack */
    op(&p, 0);
    expect_refused(&p, "stack underflow");
}

static void test_recursion_bombs(void **state) {
    (void)state;
    static pk p;
    /* a tuple of a tuple of ... 10000 deep */
    p.n = 0;
    op(&p, ')');
    for (int i = 0; i < 10000; i++) op(&p, 0x85);
    op(&p, '.');
    expect_refused(&p, "nested deeper than 32");
    /* MARK bomb */
    p.n = 0;
    for (int i = 0; i < 10000; i++) op(&p, '(');
    expect_refused(&p, "more than 64 open MARKs");
    /* a list appended into itself through the memo, then nested */
    p.n = 0;
    op(&p, ']');
    op(&p, 'q');
    op(&p, 0);
    for (int i = 0; i < 100; i++) {
        op(&p, 'h');
        op(&p, 0);
        op(&p, 'a');
    }
    op(&p, '.');
    expect_refused(&p, "nested deeper than 32");
    /* a million-item stack of Nones */
    static uint8_t big[(1 << 20) + 16];
    memset(big, 'N', sizeof big);
    mt_pickle_dict *d = NULL;
    assert_int_equal(mt_pickle_load_state_dict(&d, big, sizeof big, "crafted.pkl"), MT_ERR_FORMAT);
    assert_non_null(strstr(mt_last_error(), "stack deeper than"));
}

static void test_tensor_checks(void **state) {
    (void)state;
    static pk p;
    begin(&p);
    tensor(&p, "w", "0", 6, 0, 2, 3, 1, 2); /* transposed strides */
    end(&p);
    expect_refused(&p, "tensor strides (1, 2) are not contiguous row-major");
    begin(&p);
    tensor(&p, "w", "0", 6, 4, 2, 3, 3, 1); /* 6 elements at offset 4 of 6 */
    end(&p);
    expect_refused(&p, "tensor of 6 elements at offset 4 runs past its storage '0' of 6 elements");
    begin(&p);
    tensor(&p, "w", "../x", 6, 0, 2, 3, 3, 1);
    end(&p);
    expect_refused(&p, "persistent id key is not a plain file name");
    begin(&p);
    str(&p, "n");
    int1(&p, 3);
    end(&p);
    expect_refused(&p, "state dict entry n is a int, not a tensor");
    /* LONG1 wider than 64 bits */
    p.n = 0;
    op(&p, 0x8a);
    op(&p, 9);
    for (int i = 0; i < 9; i++) op(&p, 0xff);
    op(&p, '.');
    expect_refused(&p, "LONG1 integer wider than 64 bits");
}

/* ---- the zip reader ---------------------------------------------------------- */
static const char *data_path(const char *name) {
    static char buf[4096];
    snprintf(buf, sizeof buf, "%s/tests/data/pickle/%s", tu_source_dir(), name);
    return buf;
}

static void check_good(const mt_safetensors *st) {
    assert_int_equal(mt_safetensors_count(st), 5);
    const mt_tensor *w = mt_safetensors_find(st, "w"), *row = mt_safetensors_find(st, "row");
    const mt_tensor *b = mt_safetensors_find(st, "b"), *h = mt_safetensors_find(st, "h"), *i = mt_safetensors_find(st, "i");
    assert_non_null(w);
    assert_non_null(row);
    assert_non_null(b);
    assert_non_null(h);
    assert_non_null(i);
    assert_int_equal(w->n_dims, 2);
    assert_int_equal(w->shape[0], 2);
    assert_int_equal(w->shape[1], 3);
    assert_int_equal(w->nbytes, 24);
    float f[6];
    memcpy(f, w->data, sizeof f);
    for (int k = 0; k < 6; k++) assert_true(f[k] == (float)k);
    assert_int_equal(row->n_dims, 1);
    assert_ptr_equal(row->data, (const uint8_t *)w->data + 12);
    float bf[2], hf[3];
    assert_int_equal(mt_row_to_f32(MT_DT_BF16, b->data, bf, 2), MT_OK);
    assert_true(bf[0] == 1.5f && bf[1] == -2.0f);
    assert_int_equal(mt_row_to_f32(MT_DT_F16, h->data, hf, 3), MT_OK);
    assert_true(hf[0] == 0.25f && hf[1] == 0.5f && hf[2] == 1.0f);
    int64_t iv[2];
    memcpy(iv, i->data, sizeof iv);
    assert_true(iv[0] == 7 && iv[1] == -1);
}

static void test_zip_good_and_deflated(void **state) {
    (void)state;
    mt_safetensors *st = NULL;
    assert_int_equal(mt_pytorch_open(&st, data_path("good.bin")), MT_OK);
    check_good(st);
    /* stored members are mapped in place: torch aligns them to 64 bytes */
    const mt_tensor *w = mt_safetensors_find(st, "w");
    assert_true(w->file_offset > 0 && w->file_offset % 64 == 0);
    size_t len = 0;
    char *buf = tu_read_file(data_path("good.bin"), &len);
    assert_non_null(buf);
    assert_true(w->file_offset + w->nbytes <= len);
    assert_memory_equal(buf + w->file_offset, w->data, w->nbytes);
    free(buf);
    mt_safetensors_free(st);
    st = NULL;
    assert_int_equal(mt_pytorch_open(&st, data_path("deflated.bin")), MT_OK);
    check_good(st);
    assert_int_equal(mt_safetensors_find(st, "w")->file_offset, 0); /* decompressed, not in the file */
    mt_safetensors_free(st);
}

static void expect_zip_refused(const char *file, int status, const char *needle) {
    mt_safetensors *st = (mt_safetensors *)1;
    int rc = mt_pytorch_open(&st, data_path(file));
    if (rc != status) fail_msg("%s: status %d, want %d: %s", file, rc, status, mt_last_error());
    assert_null(st);
    if (!strstr(mt_last_error(), needle) || !strstr(mt_last_error(), file))
        fail_msg("%s: message \"%s\" does not say \"%s\"", file, mt_last_error(), needle);
}

static void test_zip_refusals(void **state) {
    (void)state;
    expect_zip_refused("missing_storage.bin", MT_ERR_FORMAT, "storage good/data/1 of tensor b is missing from the archive");
    expect_zip_refused("short_storage.bin", MT_ERR_FORMAT, "storage good/data/0 holds 22 bytes but 6 f32 elements");
    expect_zip_refused("traversal.bin", MT_ERR_FORMAT, "zip member \"../../etc/evil\" has an absolute or \"..\" path");
    expect_zip_refused("no_pickle.bin", MT_ERR_FORMAT, "not a torch.save archive");
    expect_zip_refused("big_endian.bin", MT_ERR_UNSUPPORTED, "big-endian checkpoints are not supported");
    expect_zip_refused("legacy.bin", MT_ERR_UNSUPPORTED, "legacy (pre-1.6, non-zip) PyTorch serialization");
    expect_zip_refused("good.pkl", MT_ERR_FORMAT, "not a zip archive");
    expect_zip_refused("bomb.bin", MT_ERR_FORMAT, "refused as a zip bomb");
    /* every truncation of a good archive fails cleanly (no central directory) */
    size_t len = 0;
    char *buf = tu_read_file(data_path("good.bin"), &len);
    assert_non_null(buf);
    for (size_t n = 0; n < len; n += 7) {
        mt_safetensors *st = NULL;
        int rc = mt_pytorch_parse(&st, buf, n, "cut.bin");
        if (rc == MT_OK) {
            check_good(st);
            mt_safetensors_free(st);
        } else {
            assert_null(st);
            assert_non_null(strstr(mt_last_error(), "cut.bin"));
        }
    }
    free(buf);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_by_hand),
        cmocka_unit_test(test_torch_pickle),
        cmocka_unit_test(test_os_system),
        cmocka_unit_test(test_reduce_eval_and_allowed_noncallables),
        cmocka_unit_test(test_refused_opcodes),
        cmocka_unit_test(test_memo_bounds),
        cmocka_unit_test(test_recursion_bombs),
        cmocka_unit_test(test_tensor_checks),
        cmocka_unit_test(test_zip_good_and_deflated),
        cmocka_unit_test(test_zip_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
