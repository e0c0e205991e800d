/* test_recipe.c — the recipe parser (cli/run/recipe.h): a good recipe read
 * into steps, options, references and run order; every error class with its
 * message and its line:column; the bundled recipes parse. */
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

#include "recipe.h"
#include "testutil.h"

static const char *good =
    "version: 1\n"
    "model: /m\n"
    "calibration: {text: /t.txt, tokens: 4096}\n"
    "steps:\n"
    "  - name: score\n"                 /* forward reference: runs last */
    "    model: ${q.output}\n"
    "    eval: {ref: '${model}', max_windows: 4}\n"
    "  - name: m\n"
    "    merge: {experts: 6, calib-tokens: 2048, allow_long_context: true}\n"
    "  - name: q\n"
    "    quantize: {bits: ternary, group: row, method: rtn, codec: qmoe, format: hf}\n"
    "gates:\n"
    "  - {metric: kl, max: 0.1}\n"
    "  - {metric: perplexity, step: score, min: 1, max: 100}\n";

static void test_good(void **state) {
    (void)state;
    recipe *r = NULL;
    char err[512] = "";
    if (recipe_parse(&r, "dir/good.yaml", good, strlen(good), 0, err, sizeof err)) fail_msg("%s", err);
    assert_int_equal(r->n_steps, 3);
    assert_string_equal(r->model, "/m");
    assert_int_equal(r->calib_tokens, 4096);
    assert_string_equal(r->steps[0].verb->name, "eval");
    assert_string_equal(r->steps[1].verb->name, "merge");
    /* m first, q reads m (previous step), score reads q */
    assert_int_equal(r->order[0], 1);
    assert_int_equal(r->order[1], 2);
    assert_int_equal(r->order[2], 0);
    assert_int_equal(r->steps[2].input, 1);
    assert_int_equal(r->steps[2].n_kv, 5);
    assert_string_equal(r->steps[1].kv[1].opt->name, "calib-tokens");
    assert_int_equal(r->steps[1].kv[1].pos.line, 9);
    assert_int_equal(r->n_gates, 2);
    assert_int_equal(r->gates[0].step, 0); /* the last eval step by default */
    assert_int_equal(r->gates[0].metric, GATE_KL);
    char *outs[3] = {NULL, "/w/m", "/w/q"};
    char *e = recipe_expand(r, "${q.output}+${model}/x", outs, NULL);
    assert_string_equal(e, "/w/q+/m/x");
    free(e);
    recipe_free(r);
}

/* Named texts: eval steps read them as ${texts.NAME}; a gate's text: picks
 * the eval step of that text. */
static void test_texts(void **state) {
    (void)state;
    static const char *y = "version: 1\n"
                           "model: /m\n"
                           "texts:\n"
                           "  kjv: data/test.txt\n"
                           "  other: /abs/other.txt\n"
                           "steps:\n"
                           "  - name: a\n"
                           "    eval: {text: '${texts.kjv}'}\n"
                           "  - name: b\n"
                           "    eval: {text: '${texts.other}'}\n"
                           "gates:\n"
                           "  - {metric: perplexity, text: kjv, max: 9}\n"
                           "  - {metric: perplexity, text: other, step: b, max: 9}\n"
                           "  - {metric: perplexity, max: 9}\n";
    recipe *r = NULL;
    char err[512] = "";
    if (recipe_parse(&r, "dir/t.yaml", y, strlen(y), 0, err, sizeof err)) fail_msg("%s", err);
    assert_int_equal(r->n_texts, 2);
    assert_string_equal(r->texts[0].path, "dir/data/test.txt");
    assert_int_equal(r->gates[0].step, 0);
    assert_int_equal(r->gates[0].text, 0);
    assert_int_equal(r->gates[1].step, 1);
    assert_int_equal(r->gates[1].text, 1);
    assert_int_equal(r->gates[2].step, 1); /* no text: the last eval step */
    assert_int_equal(r->gates[2].text, -1);
    char *e = recipe_expand(r, r->steps[0].kv[0].value, NULL, NULL);
    assert_string_equal(e, "dir/data/test.txt");
    free(e);
    recipe_free(r);
}

/* The parse fails and the message holds want, which starts with "line:col:". */
static void bad(const char *yaml, size_t len, const char *want) {
    recipe *r = NULL;
    char err[512] = "";
    if (recipe_parse(&r, "r.yaml", yaml, len, 1, err, sizeof err) == 0) fail_msg("accepted; wanted '%s'", want);
    assert_null(r);
    char full[600];
    snprintf(full, sizeof full, "r.yaml:%s", want);
    if (!strstr(err, full)) fail_msg("message '%s' lacks '%s'", err, full);
    assert_null(strchr(err, '\n'));
}
#define BAD(y, w) bad(y, strlen(y), w)

static void test_errors(void **state) {
    (void)state;
    const char *m = tu_model_dir();
    char buf[4096];
#define HEAD "version: 1\nmodel: /\n"
    BAD("", "1:1: empty recipe");
    BAD("- a\n- b\n", "1:1: a recipe is a mapping");
    BAD("model: /\nsteps: [{name: a, eval: {}}]\n", "1:1: missing version: 1");
    BAD("version: 2\nmodel: /\n", "1:10: recipe version 2 is not supported");
    BAD("version: one\n", "1:10: version expects an integer");
    BAD(HEAD "stpes: []\n", "3:1: unknown key 'stpes' in the recipe; did you mean 'steps'?");
    BAD(HEAD "model: /x\n", "3:1: duplicate key 'model' (first at line 2, column 1)");
    BAD("version: 1\nmodel: /no/such/model\n", "2:8: model /no/such/model does not exist");
    BAD(HEAD "steps:\n  - name: a\n    merge: {experts: 6, calib_tokns: 99}\n",
        "5:25: merge has no option 'calib_tokns'; did you mean 'calib-tokens'?");
    BAD(HEAD "steps:\n  - name: a\n    merge: {experts: six}\n", "5:22: merge: experts expects an integer in [1, 64], got 'six'");
    BAD(HEAD "steps:\n  - name: a\n    quantize: {bits: 5}\n", "5:22: quantize: bits must be 8, 4, 3, 2 or ternary, got '5'");
    BAD(HEAD "steps:\n  - name: a\n    quantize: {act_order: 'true'}\n", "5:27: quantize: act_order expects true or false");
    BAD(HEAD "steps:\n  - name: a\n    quantize: {calib: [a, b]}\n", "5:23: quantize: calib expects a single value, got a list");
    BAD(HEAD "steps:\n  - name: a\n    quantize: {calib: /no/such.txt}\n", "5:23: quantize: calib: /no/such.txt does not exist");
    BAD(HEAD "steps:\n  - name: a\n    quantize: {json: true}\n", "5:16: quantize: json is a command-line option");
    BAD(HEAD "steps:\n  - name: a\n    quantize: {output: x.gguf}\n", "5:16: quantize: output: the output is chosen by moetool run");
    BAD(HEAD "steps:\n  - name: a\n    quantize: {calib_tokens: 1, calib-tokens: 2}\n",
        "5:33: duplicate key 'calib-tokens' (first at line 5, column 16)");
    BAD(HEAD "steps:\n  - name: a\n    quantise: {}\n", "5:5: unknown key 'quantise' in a step; did you mean 'quantize'?");
    BAD(HEAD "steps:\n  - name: a\n    generate: {}\n", "5:5: generate cannot be a recipe step");
    BAD(HEAD "steps:\n  - name: a\n    merge: {}\n    eval: {}\n", "6:5: a step has one verb; this one has merge and eval");
    BAD(HEAD "steps:\n  - name: a\n    merge: {}\n  - name: a\n    eval: {}\n", "6:11: a second step named 'a'");
    BAD(HEAD "steps:\n  - name: a\n    model: ${b.output}\n    merge: {}\n  - name: b\n    model: ${a.output}\n    merge: {}\n",
        "4:5: steps refer to each other in a cycle: a -> b -> a");
    BAD(HEAD "steps:\n  - name: a\n    model: ${a.output}\n    merge: {}\n", "4:5: steps refer to each other in a cycle: a -> a");
    BAD(HEAD "steps:\n  - name: mrg\n    merge: {}\n  - name: b\n    model: ${mgr.output}\n    eval: {}\n",
        "7:12: reference ${mgr.output}: no step named 'mgr'; did you mean 'mrg'?");
    BAD(HEAD "steps:\n  - name: a\n    eval: {}\n  - name: b\n    model: ${a.output}\n    eval: {}\n",
        "7:12: reference ${a.output}: step 'a' (eval) writes no model");
    BAD(HEAD "steps:\n  - name: a\n    eval: {ref: ${model}\n", "5:"); /* unterminated flow mapping: YAML error */
    BAD(HEAD "steps:\n  - name: a\n    eval: {ref: '${modl}'}\n", "5:17: unknown reference ${modl}");
    BAD(HEAD "steps:\n  - name: a\n    eval: {ctx: '${model}'}\n", "5:17: eval: ctx: references are allowed in paths only");
    BAD(HEAD "steps:\n  - name: a\n    eval: {}\ngates:\n  - {metric: perplexty, max: 3}\n",
        "7:14: unknown metric 'perplexty'; did you mean 'perplexity'?");
    BAD(HEAD "steps:\n  - name: a\n    eval: {}\ngates:\n  - {metric: kl, max: 3}\n",
        "7:5: gate kl compares with a reference: give step 'a' a ref:");
    BAD(HEAD "steps:\n  - name: a\n    eval: {}\ngates:\n  - {metric: perplexity}\n", "7:5: gate perplexity needs min: or max:");
    BAD(HEAD "steps:\n  - name: a\n    merge: {}\ngates:\n  - {metric: perplexity, step: a, max: 3}\n",
        "7:32: gate: step 'a' is a merge step; gates read eval steps");
    /* named texts */
#define TX HEAD "texts: {kjv: /, wiki: /}\n"
    BAD(TX "steps:\n  - name: a\n    eval: {text: '${texts.kvj}'}\n",
        "6:18: reference ${texts.kvj}: no text named 'kvj' under texts:; did you mean 'kjv'?");
    BAD(TX "steps:\n  - name: a\n    eval: {text: '${texts.kjv}'}\ngates:\n  - {metric: perplexity, text: wki, max: 3}\n",
        "8:32: gate: no text named 'wki' under texts:; did you mean 'wiki'?");
    BAD(TX "steps:\n  - name: a\n    eval: {text: '${texts.kjv}'}\ngates:\n  - {metric: perplexity, text: wiki, max: 3}\n",
        "8:32: gate: no eval step evaluates text 'wiki' (give one text: ${texts.wiki})");
    BAD(TX "steps:\n  - name: a\n    eval: {text: '${texts.kjv}'}\n  - name: b\n    eval: {text: '${texts.kjv}'}\n"
           "gates:\n  - {metric: perplexity, text: kjv, max: 3}\n",
        "10:32: gate: steps 'a' and 'b' both evaluate text 'kjv'; say which with step:");
    BAD(TX "steps:\n  - name: a\n    eval: {text: '${texts.kjv}'}\n  - name: b\n    eval: {text: '${texts.wiki}'}\n"
           "gates:\n  - {metric: perplexity, step: b, text: kjv, max: 3}\n",
        "10:41: gate: step 'b' does not evaluate text 'kjv'");
    BAD(TX "steps:\n  - name: texts\n    eval: {}\n", "5:11: step name 'texts' is reserved");
    BAD(HEAD "texts: {kjv: /no/such.txt}\n", "3:14: texts: kjv: /no/such.txt does not exist");
    BAD(HEAD "texts: {kjv: '${model}'}\n", "3:14: texts: kjv must be a file, not a reference");
    BAD(HEAD "texts: [a]\n", "3:8: texts expects a mapping of NAME: file");
    BAD(HEAD "calibration: {text: /t, seed: 3}\n", "3:21: calibration: text /t does not exist");
    BAD(HEAD "calibration: {seed: 3}\n", "3:15: calibration: seed is not supported");
    BAD(HEAD "steps:\n  - name: a\n    convert: {}\n", "5:5: step 'a': convert in a recipe needs to: hf or gguf");
    BAD(HEAD "steps: []\n", "3:8: steps expects a non-empty list of steps, got an empty list");
    BAD(HEAD "x: &a [1]\ny: *a\nz: *b\n", "5:4: alias *b names no anchor before it");
    BAD(HEAD "<<: {a: 1}\n", "3:1: merge keys (<<) are not supported");
    BAD(HEAD "---\nversion: 1\n", "3:1: a recipe is one YAML document; found a second one");
    BAD(HEAD "name: \"a\\0b\"\n", "3:7: a value holds a NUL character");
    /* non-UTF-8 */
    const char latin1[] = "version: 1\nmodel: /caf\xe9\n";
    bad(latin1, sizeof latin1 - 1, "1:1: not UTF-8 text");
    /* billion laughs: 9 levels of 10 aliases each */
    size_t o = (size_t)snprintf(buf, sizeof buf, HEAD "a0: &a0 [x]\n");
    for (int l = 1; l < 9; l++) {
        o += (size_t)snprintf(buf + o, sizeof buf - o, "a%d: &a%d [", l, l);
        for (int k = 0; k < 10; k++) o += (size_t)snprintf(buf + o, sizeof buf - o, "%s*a%d", k ? "," : "", l - 1);
        o += (size_t)snprintf(buf + o, sizeof buf - o, "]\n");
    }
    BAD(buf, "8:22: the document expands to more than 100000 nodes (aliases included); refused");
    /* deep nesting */
    o = (size_t)snprintf(buf, sizeof buf, HEAD "x: ");
    for (int k = 0; k < 100; k++) buf[o++] = '[';
    buf[o] = 0;
    BAD(buf, "3:");
    assert_non_null(strstr(buf, "[[["));
    /* a good recipe with a real model and file checks on */
    snprintf(buf, sizeof buf, "version: 1\nmodel: %s\nsteps:\n  - name: s\n    eval: {text: %s/data/test.txt}\n", m, m);
    recipe *r = NULL;
    char err[512];
    if (recipe_parse(&r, "r.yaml", buf, strlen(buf), 1, err, sizeof err)) fail_msg("%s", err);
    recipe_free(r);
    /* too large */
    char *big = calloc(1, RECIPE_MAX_BYTES + 2);
    memset(big, ' ', RECIPE_MAX_BYTES + 1);
    bad(big, RECIPE_MAX_BYTES + 1, "1:1: 1048577 bytes is larger than a recipe may be");
    free(big);
}

/* Every recipe shipped in recipes/ parses with its files checked. */
static void test_bundled(void **state) {
    (void)state;
    const char *names[] = {"demo.yaml", "shrink-mixtral-local.yaml", "qmoe-ternary.yaml", "distill-dense.yaml"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char path[4096], err[512];
        snprintf(path, sizeof path, "%s/recipes/%s", tu_source_dir(), names[i]);
        recipe *r = NULL;
        if (recipe_load(&r, path, 1, err, sizeof err)) fail_msg("%s", err);
        assert_true(r->n_steps >= 2);
        recipe_free(r);
    }
}

/* The fuzzer's seeds and every truncation of each: a recipe or a one-line
 * positioned message, never a crash (a sanitizer build checks memory). */
static void test_corpus(void **state) {
    (void)state;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/fuzz/corpus/recipe", tu_source_dir());
    DIR *d = opendir(dir);
    assert_non_null(d);
    int seeds = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        size_t len = 0;
        char *data = tu_read_file(path, &len);
        assert_non_null(data);
        for (size_t n = 0; n <= len; n += n < 64 ? 1 : 7) {
            char *copy = malloc(n + 1);
            memcpy(copy, data, n);
            recipe *r = NULL;
            char err[512];
            if (recipe_parse(&r, "seed.yaml", copy, n, 0, err, sizeof err) == 0) recipe_free(r);
            else assert_true(strncmp(err, "seed.yaml:", 10) == 0 && !strchr(err, '\n'));
            free(copy);
        }
        free(data);
        seeds++;
    }
    closedir(d);
    assert_true(seeds >= 5);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_texts),
        cmocka_unit_test(test_bundled),
        cmocka_unit_test(test_corpus),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
