/* test_options.c — the per-verb option tables (cli/options.h): argv parsing,
 * documented defaults equal to the real ones, typed conversion errors,
 * "did you mean", and the tables' own consistency. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moetool/mt_distill.h"
#include "moetool/mt_merge.h"
#include "moetool/mt_quant.h"
#include "options.h"

static long long get_int(const void *args, const cli_opt *o) {
    const char *p = (const char *)args + o->offset;
    if (o->size == sizeof(int64_t)) return *(const int64_t *)p;
    if (o->size == sizeof(int)) return *(const int *)p;
    return *(const long *)p;
}

static double get_float(const void *args, const cli_opt *o) {
    const char *p = (const char *)args + o->offset;
    return o->size == sizeof(float) ? *(const float *)p : *(const double *)p;
}

static void *fresh(const cli_verb *v) {
    void *a = calloc(1, v->args_size);
    assert_non_null(a);
    v->init(a);
    return a;
}

static const cli_opt *opt(const cli_verb *v, const char *name) {
    const cli_opt *o = cli_opts_find(v, name);
    assert_non_null(o);
    return o;
}

static void test_parse_argv(void **state) {
    (void)state;
    const cli_verb *v = cli_verb_find("quantize");
    assert_non_null(v);
    void *a = fresh(v);
    char *argv[] = {"quantize", "--bits", "ternary", "--group=row", "MODEL", "--calib-tok", "512", "-oOUT",
                    "--damp", "0.25", "--act-order", "--method", "rtn"};
    const char *pos = NULL;
    assert_int_equal(cli_opts_parse_argv(v, a, 13, argv, &pos), 0);
    assert_string_equal(pos, "MODEL");
    assert_int_equal(get_int(a, opt(v, "bits")), MT_QUANT_TERNARY);
    assert_int_equal(get_int(a, opt(v, "group")), MT_QUANT_GROUP_ROW);
    assert_int_equal(get_int(a, opt(v, "calib-tokens")), 512);
    assert_int_equal(get_int(a, opt(v, "act-order")), 1);
    assert_int_equal(get_int(a, opt(v, "method")), MT_QUANT_RTN);
    assert_true(get_float(a, opt(v, "damp")) == 0.25);
    assert_string_equal(*(const char **)((char *)a + opt(v, "output")->offset), "OUT");
    free(a);

    /* an inverted flag stores 0; a float stored as float */
    v = cli_verb_find("generate");
    a = fresh(v);
    char *g[] = {"generate", "--ignore-eos", "--top-p", "0.5", "-n", "7", "--", "-p"};
    assert_int_equal(cli_opts_parse_argv(v, a, 8, g, &pos), 0);
    assert_string_equal(pos, "-p");
    assert_int_equal(get_int(a, opt(v, "ignore-eos")), 0);
    assert_true(get_float(a, opt(v, "top-p")) == 0.5);
    assert_int_equal(get_int(a, opt(v, "n-predict")), 7);
    free(a);

    /* distill: its flags as the getopt parser took them */
    v = cli_verb_find("distill");
    assert_non_null(v);
    assert_true(v->recipe_step);
    a = fresh(v);
    assert_true(get_float(a, opt(v, "kd-weight")) == 0.5f && get_float(a, opt(v, "lr")) == 1e-3f);
    char *d[] = {"distill", "T", "-o", "OUT", "--student", "dense", "--init", "average", "--tokens", "4096",
                 "--kd-weight", "0.25", "--temperature=2", "--seq", "64", "--checkpoint-every", "4", "--resume"};
    assert_int_equal(cli_opts_parse_argv(v, a, 18, d, &pos), 0);
    assert_string_equal(pos, "T");
    assert_int_equal(get_int(a, opt(v, "init")), MT_DISTILL_INIT_AVERAGE);
    assert_int_equal(get_int(a, opt(v, "tokens")), 4096);
    assert_int_equal(get_int(a, opt(v, "seq")), 64);
    assert_int_equal(get_int(a, opt(v, "checkpoint-every")), 4);
    assert_int_equal(get_int(a, opt(v, "resume")), 1);
    assert_true(get_float(a, opt(v, "kd-weight")) == 0.25f && get_float(a, opt(v, "temperature")) == 2.0f);
    assert_string_equal(*(const char **)((char *)a + opt(v, "student")->offset), "dense");
    free(a);
}

/* A row's documented default, converted by the row itself, gives what the
 * verb's init gives: help text and behaviour cannot disagree. */
static void test_documented_defaults(void **state) {
    (void)state;
    int checked = 0;
    for (size_t i = 0; cli_verbs[i]; i++) {
        const cli_verb *v = cli_verbs[i];
        for (size_t k = 0; k < v->n_opts; k++) {
            const cli_opt *o = &v->opts[k];
            if (!o->def || o->type == CLI_STRING || o->type == CLI_PATH || o->type == CLI_OUTPUT) continue;
            void *a = fresh(v), *b = fresh(v);
            char err[256];
            if (cli_opts_set(o, b, o->name, o->def, err, sizeof err) == 0) {
                if (memcmp(a, b, v->args_size) != 0) fail_msg("%s --%s: documented default %s differs", v->name, o->name, o->def);
                checked++;
            }
            free(a);
            free(b);
        }
    }
    assert_true(checked >= 20);
}

static void expect_err(const char *verb, const char *name, const char *value, const char *msg) {
    const cli_verb *v = cli_verb_find(verb);
    void *a = fresh(v);
    char err[256] = "";
    assert_int_equal(cli_opts_set(opt(v, name), a, name, value, err, sizeof err), -1);
    if (!strstr(err, msg)) fail_msg("%s %s=%s: '%s' lacks '%s'", verb, name, value ? value : "(none)", err, msg);
    free(a);
}

static void test_type_errors(void **state) {
    (void)state;
    expect_err("quantize", "calib-tokens", "12x", "calib-tokens expects an integer in [1, 1073741824], got '12x'");
    expect_err("quantize", "calib-tokens", "0", "expects an integer in [1,");
    expect_err("quantize", "bits", "5", "bits must be 8, 4, 3, 2 or ternary, got '5'");
    expect_err("quantize", "group", "col", "expects an integer in [1, 16777216] or row, got 'col'");
    expect_err("quantize", "damp", "nan", "expects a finite number, got 'nan'");
    expect_err("quantize", "ternary-range", "5", "must be in [0.5, 4], got '5'");
    expect_err("quantize", "asym", "yes", "expects true or false, got 'yes'");
    expect_err("quantize", "calib", NULL, "needs a value");
    expect_err("generate", "top-p", "0", "must be in (0, 1], got '0'");
    expect_err("generate", "temp", "-1", "must be >= 0, got '-1'");
    expect_err("merge", "router", "lsq", "router must be anchor, average, fit or alias, got 'lsq'");
    expect_err("convert", "dtype", "iq2_xs", "must be f32, f16, bf16, q8_0, q6_k, q5_k, q5_1, q5_0, q4_k, q4_1, q4_0, "
               "q3_k, q2_k, iq4_xs or iq4_nl, got 'iq2_xs'");
    expect_err("quantize", "type", "iq2_k", "must be one of q8_0, q6_k, q5_k, q5_1, q5_0, q4_k, q4_1, q4_0, q3_k, q2_k, "
               "tq2_0, iq4_xs, iq4_nl, iq3_s, iq3_xxs, iq2_s, iq2_xs, iq2_xxs, iq1_m, iq1_s (or a mix: q3_k_m, q4_k_m, "
               "q5_k_m), got 'iq2_k'");
    expect_err("quantize", "attn-type", "q4_k_m", "must be one of q8_0, q6_k, q5_k, q5_1, q5_0, q4_k, q4_1, q4_0, q3_k, "
               "q2_k, tq2_0, iq4_xs, iq4_nl, iq3_s, iq3_xxs, iq2_s, iq2_xs, iq2_xxs, iq1_m, iq1_s, got 'q4_k_m'");
    expect_err("quantize", "mix", "q4_k_s", "must be q2_k, q3_k_m, q4_k_m, q5_k_m, q6_k, iq4_xs, iq4_nl, iq3_m, iq3_s, "
               "iq3_xs, iq3_xxs, iq2_m, iq2_s, iq2_xs, iq2_xxs, iq1_m or iq1_s, got 'q4_k_s'");
    expect_err("quantize", "target-size", "7X", "expects a positive size in bytes");
    expect_err("eval", "threads", "1024", "[1, 512]");
    expect_err("distill", "kd-weight", "1.5", "kd-weight must be in [0, 1], got '1.5'");
    expect_err("distill", "temperature", "0", "temperature must be in (0, 100], got '0'");
    expect_err("distill", "init", "svd", "init must be concat, average or random, got 'svd'");
    expect_err("distill", "seq", "1", "seq expects an integer in [2, 65536], got '1'");
    /* a bool set to false keeps the default */
    const cli_verb *v = cli_verb_find("convert");
    void *a = fresh(v), *b = fresh(v);
    char err[64];
    assert_int_equal(cli_opts_set(opt(v, "no-tokenizer"), b, "no-tokenizer", "false", err, sizeof err), 0);
    assert_memory_equal(a, b, v->args_size);
    free(a);
    free(b);
}

static void test_did_you_mean(void **state) {
    (void)state;
    const cli_verb *q = cli_verb_find("quantize"), *m = cli_verb_find("merge");
    assert_string_equal(cli_opts_suggest(q, "calib_tokns", 1), "calib-tokens");
    assert_string_equal(cli_opts_suggest(q, "bitz", 1), "bits");
    assert_string_equal(cli_opts_suggest(q, "methd", 1), "method");
    assert_string_equal(cli_opts_suggest(m, "expert", 1), "experts");
    const cli_verb *d = cli_verb_find("distill");
    assert_string_equal(cli_opts_suggest(d, "kd_wieght", 1), "kd-weight");
    assert_null(cli_opts_suggest(d, "resum", 1)); /* CLI-only: not a recipe key */
    assert_null(cli_opts_suggest(q, "temperature", 1));
    assert_null(cli_opts_suggest(q, "ab", 1)); /* 2 edits of 2 letters is no typo */
    assert_null(cli_opts_suggest(q, "jsn", 1)); /* CLI-only options are not recipe keys */
    assert_string_equal(cli_opts_suggest(q, "jsn", 0), "json");
    assert_non_null(cli_opts_find(q, "calib_tokens"));
    assert_non_null(cli_opts_find(q, "allow_long-context"));
    assert_null(cli_opts_find(q, "calib-token"));
    assert_int_equal(cli_edit_distance("kitten", "sitting"), 3);
    assert_int_equal(cli_edit_distance("calib_tokens", "calib-tokens"), 0);
    assert_int_equal(cli_edit_distance("", "abc"), 3);
    assert_int_equal(cli_edit_distance("mgr", "mrg"), 1);
}

/* Table consistency: unique names, help for every row, enum words that the
 * library reads back as the stored value. */
static void test_tables(void **state) {
    (void)state;
    for (size_t i = 0; cli_verbs[i]; i++) {
        const cli_verb *v = cli_verbs[i];
        assert_non_null(v->run);
        assert_true(strstr(v->synopsis, "usage: moetool ") == v->synopsis);
        for (size_t k = 0; k < v->n_opts; k++) {
            const cli_opt *o = &v->opts[k];
            assert_true(o->help && *o->help);
            assert_true(o->offset + o->size <= v->args_size);
            if (o->type == CLI_ENUM) assert_non_null(o->choices);
            if (o->type != CLI_BOOL) assert_non_null(o->metavar);
            for (size_t j = k + 1; j < v->n_opts; j++) {
                assert_int_not_equal(cli_edit_distance(o->name, v->opts[j].name), 0);
                if (o->short_name) assert_int_not_equal(o->short_name, v->opts[j].short_name);
            }
        }
    }
    const cli_verb *m = cli_verb_find("merge");
    const cli_opt *meth = opt(m, "method"), *rt = opt(m, "router");
    for (int i = 0; meth->choices[i]; i++) assert_int_equal(mt_merge_method_from_name(meth->choices[i]), i);
    for (int i = 0; rt->choices[i]; i++) assert_int_equal(mt_merge_router_from_name(rt->choices[i]), i);
    const cli_opt *init = opt(cli_verb_find("distill"), "init");
    for (int i = 0; init->choices[i]; i++) assert_int_equal(mt_distill_init_from_name(init->choices[i]), i);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_argv),   cmocka_unit_test(test_documented_defaults),
        cmocka_unit_test(test_type_errors),  cmocka_unit_test(test_did_you_mean),
        cmocka_unit_test(test_tables),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
