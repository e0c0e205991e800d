/* test_config.c — config.json reading (bundled model, defaults, every
 * required key, unsupported architectures, range checks) and writing (round
 * trip; and, when the `transformers` Python package is importable, that
 * transformers' own config classes read back what we wrote). */
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

static void test_bundled(void **state) {
    (void)state;
    mt_config c;
    assert_int_equal(mt_config_load_hf(&c, tu_model_path("config.json")), MT_OK);
    assert_string_equal(c.arch, "mixtral");
    assert_int_equal(c.vocab, 4096);
    assert_int_equal(c.hidden, 256);
    assert_int_equal(c.ffn, 512);
    assert_int_equal(c.n_layers, 4);
    assert_int_equal(c.n_heads, 8);
    assert_int_equal(c.n_kv_heads, 2);
    assert_int_equal(c.head_dim, 32);
    assert_int_equal(c.n_experts, 8);
    assert_int_equal(c.top_k, 2);
    assert_true(c.rope_theta == 1e6f);
    assert_true(c.norm_eps == 1e-5f);
    assert_int_equal(c.max_pos, 1024);
    assert_int_equal(c.tie_embeddings, 0);
    assert_int_equal(c.bos_id, 1);
    assert_int_equal(c.eos_id, 2);
    assert_int_equal(c.rope_style, MT_ROPE_HALF);
    for (int l = 0; l < 4; l++) assert_int_equal(mt_config_layer_experts(&c, l), 8);
}

static int parse(mt_config *c, const char *json) { return mt_config_from_hf_json(c, json, strlen(json), "cfg.json"); }

static void test_defaults(void **state) {
    (void)state;
    mt_config c;
    /* Llama: kv heads = heads, head_dim = hidden/heads, theta 1e4, no tokens. */
    assert_int_equal(parse(&c, "{\"model_type\": \"llama\", \"vocab_size\": 100, \"hidden_size\": 64,"
                               " \"intermediate_size\": 96, \"num_hidden_layers\": 2, \"num_attention_heads\": 4}"),
                     MT_OK);
    assert_string_equal(c.arch, "llama");
    assert_int_equal(c.n_kv_heads, 4);
    assert_int_equal(c.head_dim, 16);
    assert_int_equal(c.n_experts, 0);
    assert_int_equal(c.top_k, 0);
    assert_true(c.rope_theta == 10000.0f);
    assert_int_equal(c.bos_id, -1);
    assert_int_equal(c.eos_id, -1);
    assert_int_equal(c.tie_embeddings, 0);
    assert_int_equal(mt_config_layer_experts(&c, 0), 0);

    /* Mistral by class name, null head_dim, eos list, null bos, tied. */
    assert_int_equal(parse(&c, "{\"architectures\": [\"MistralForCausalLM\"], \"vocab_size\": 100,"
                               " \"hidden_size\": 64, \"intermediate_size\": 96, \"num_hidden_layers\": 2,"
                               " \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"head_dim\": null,"
                               " \"eos_token_id\": [7, 8], \"bos_token_id\": null, \"tie_word_embeddings\": true,"
                               " \"rope_theta\": 500000, \"sliding_window\": 4096}"),
                     MT_OK);
    assert_string_equal(c.arch, "mistral");
    assert_int_equal(c.head_dim, 16);
    assert_int_equal(c.eos_id, 7);
    assert_int_equal(c.bos_id, -1);
    assert_int_equal(c.tie_embeddings, 1);
    assert_true(c.rope_theta == 500000.0f);

    /* Mixtral defaults theta 1e6; per-layer expert counts. */
    assert_int_equal(parse(&c, "{\"model_type\": \"mixtral\", \"vocab_size\": 100, \"hidden_size\": 64,"
                               " \"intermediate_size\": 96, \"num_hidden_layers\": 3, \"num_attention_heads\": 4,"
                               " \"num_local_experts\": 8, \"num_experts_per_tok\": 2,"
                               " \"moe_layer_experts\": [8, 6, 2]}"),
                     MT_OK);
    assert_true(c.rope_theta == 1e6f);
    assert_int_equal(mt_config_layer_experts(&c, 0), 8);
    assert_int_equal(mt_config_layer_experts(&c, 1), 6);
    assert_int_equal(mt_config_layer_experts(&c, 2), 2);
    mt_config_free(&c);
}

static const char *k_full =
    "{\"model_type\": \"mixtral\", \"vocab_size\": 100, \"hidden_size\": 64, \"intermediate_size\": 96,"
    " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_local_experts\": 4,"
    " \"num_experts_per_tok\": 2}";

/* Removes `"key": value` from k_full (value is a plain number or string). */
static char *without(const char *key) {
    char *s = strdup(k_full);
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    char *p = strstr(s, pat);
    assert_non_null(p);
    char *e = p + strlen(pat);
    while (*e && *e != ',' && *e != '}') e++;
    if (*e == ',') e++;
    else if (p > s && p[-2] == ',') p -= 2; /* last key: drop the comma before it */
    memmove(p, e, strlen(e) + 1);
    return s;
}

static void test_missing_keys(void **state) {
    (void)state;
    mt_config c;
    assert_int_equal(parse(&c, k_full), MT_OK);
    const char *keys[] = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads", "num_local_experts", "num_experts_per_tok", "model_type"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        char *s = without(keys[i]);
        int rc = parse(&c, s);
        if (rc != MT_ERR_FORMAT || !strstr(mt_last_error(), keys[i]) || !strstr(mt_last_error(), "cfg.json"))
            fail_msg("without %s: %s \"%s\" (text %s)", keys[i], mt_status_name(rc), mt_last_error(), s);
        free(s);
    }
    /* On disk: missing file and a key missing name the file. */
    char *dir = tu_mkdtemp();
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    assert_int_equal(mt_config_load_hf(&c, path), MT_ERR_NOT_FOUND);
    assert_non_null(strstr(mt_last_error(), path));
    FILE *f = fopen(path, "w");
    char *s = without("hidden_size");
    fputs(s, f);
    fclose(f);
    free(s);
    assert_int_equal(mt_config_load_hf(&c, path), MT_ERR_FORMAT);
    assert_non_null(strstr(mt_last_error(), path));
    assert_non_null(strstr(mt_last_error(), "hidden_size"));
    tu_rmtree(dir);
    free(dir);
}

static void test_rejected(void **state) {
    (void)state;
    mt_config c;
    struct {
        const char *json;
        int status;
        const char *part;
    } cases[] = {
        {"{\"model_type\": \"jamba\", \"vocab_size\": 1}", MT_ERR_UNSUPPORTED, "jamba"},
        {"{\"model_type\": \"gpt2\"}", MT_ERR_UNSUPPORTED, "gpt2"},
        {"{\"architectures\": [\"GPT2LMHeadModel\"]}", MT_ERR_UNSUPPORTED, "GPT2LMHeadModel"},
        {"{\"model_type\": 5}", MT_ERR_FORMAT, "model_type"},
        {"[1, 2]", MT_ERR_FORMAT, "not a JSON object"},
        {"{\"model_type\": \"mixtral\",", MT_ERR_FORMAT, "invalid JSON"},
        {"", MT_ERR_FORMAT, "invalid JSON"},
        {"{\"model_type\": \"llama\", \"vocab_size\": \"100\"}", MT_ERR_FORMAT, "vocab_size"},
        {"{\"model_type\": \"llama\", \"vocab_size\": 100.5}", MT_ERR_FORMAT, "vocab_size"},
        {"{\"model_type\": \"llama\", \"vocab_size\": 100, \"hidden_size\": 64, \"intermediate_size\": 96,"
         " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 3}",
         MT_ERR_FORMAT, "multiple"},
        {"{\"model_type\": \"llama\", \"vocab_size\": 100, \"hidden_size\": 64, \"intermediate_size\": 96,"
         " \"num_hidden_layers\": 513, \"num_attention_heads\": 4}",
         MT_ERR_FORMAT, "layer count"},
        {"{\"model_type\": \"llama\", \"vocab_size\": 100, \"hidden_size\": 64, \"intermediate_size\": 0,"
         " \"num_hidden_layers\": 2, \"num_attention_heads\": 4}",
         MT_ERR_FORMAT, "intermediate"},
        {"{\"model_type\": \"llama\", \"vocab_size\": 100, \"hidden_size\": 64, \"intermediate_size\": 96,"
         " \"num_hidden_layers\": 2, \"num_attention_heads\": 0}",
         MT_ERR_FORMAT, "num_attention_heads"},
        {"{\"model_type\": \"llama\", \"vocab_size\": 100000000, \"hidden_size\": 64, \"intermediate_size\": 96,"
         " \"num_hidden_layers\": 2, \"num_attention_heads\": 4}",
         MT_ERR_FORMAT, "vocab"},
        {"{\"model_type\": \"llama\", \"vocab_size\": 100, \"hidden_size\": 64, \"intermediate_size\": 96,"
         " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"rope_scaling\": {\"rope_type\": \"llama3\"}}",
         MT_ERR_UNSUPPORTED, "llama3"},
        {"{\"model_type\": \"mixtral\", \"vocab_size\": 100, \"hidden_size\": 64, \"intermediate_size\": 96,"
         " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_local_experts\": 4,"
         " \"num_experts_per_tok\": 5}",
         MT_ERR_FORMAT, "experts per token"},
        {"{\"model_type\": \"mixtral\", \"vocab_size\": 100, \"hidden_size\": 64, \"intermediate_size\": 96,"
         " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_local_experts\": 4,"
         " \"num_experts_per_tok\": 2, \"moe_layer_experts\": [4]}",
         MT_ERR_FORMAT, "moe_layer_experts"},
        {"{\"model_type\": \"mixtral\", \"vocab_size\": 100, \"hidden_size\": 64, \"intermediate_size\": 96,"
         " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_local_experts\": 4,"
         " \"num_experts_per_tok\": 2, \"moe_layer_experts\": [4, 1]}",
         MT_ERR_FORMAT, "layer 1"},
        {"{\"model_type\": \"llama\", \"vocab_size\": 100, \"hidden_size\": 64, \"intermediate_size\": 96,"
         " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"eos_token_id\": 100}",
         MT_ERR_FORMAT, "eos_token_id"},
        {"{\"model_type\": \"llama\", \"vocab_size\": 100, \"hidden_size\": 64, \"intermediate_size\": 96,"
         " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"rms_norm_eps\": -1}",
         MT_ERR_FORMAT, "rms_norm_eps"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = parse(&c, cases[i].json);
        if (rc != cases[i].status || !strstr(mt_last_error(), cases[i].part) || !strstr(mt_last_error(), "cfg.json"))
            fail_msg("case %zu: got %s \"%s\", want %s with \"%s\"", i, mt_status_name(rc), mt_last_error(),
                     mt_status_name(cases[i].status), cases[i].part);
    }
}

static void round_trip(const mt_config *c) {
    char *s = NULL;
    assert_int_equal(mt_config_to_hf_json(&s, c, "bfloat16"), MT_OK);
    mt_config d;
    if (mt_config_from_hf_json(&d, s, strlen(s), "written") != MT_OK) fail_msg("%s\n%s", mt_last_error(), s);
    assert_true(mt_config_equal(c, &d));
    mt_config_free(&d);
    free(s);
}

static void test_round_trip(void **state) {
    (void)state;
    mt_config c;
    assert_int_equal(mt_config_load_hf(&c, tu_model_path("config.json")), MT_OK);
    round_trip(&c);
    assert_int_equal(mt_config_set_layer_experts(&c, 1, 6), MT_OK);
    assert_int_equal(mt_config_set_layer_experts(&c, 3, 2), MT_OK);
    round_trip(&c);
    c.tie_embeddings = 1;
    c.bos_id = -1;
    c.norm_eps = 1e-6f;
    c.rope_theta = 12345.678f;
    round_trip(&c);
    /* dense, written as Mistral */
    mt_config_free(&c);
    memset(c.arch, 0, sizeof c.arch);
    snprintf(c.arch, sizeof c.arch, "mistral");
    c.n_experts = c.top_k = 0;
    round_trip(&c);
    char *s = NULL;
    assert_int_equal(mt_config_to_hf_json(&s, &c, "float32"), MT_OK);
    assert_non_null(strstr(s, "\"MistralForCausalLM\""));
    assert_non_null(strstr(s, "\"float32\""));
    assert_true(strstr(s, "\"rms_norm_eps\": 1e-6") || strstr(s, "\"rms_norm_eps\": 1e-06"));
    free(s);
    memset(c.arch, 0, sizeof c.arch);
    snprintf(c.arch, sizeof c.arch, "llama");
    round_trip(&c);
    /* An invalid description is refused rather than written. */
    c.n_kv_heads = 3;
    assert_int_equal(mt_config_to_hf_json(&s, &c, "float32"), MT_ERR_FORMAT);
    assert_null(s);
    mt_config_free(&c);
}

/* When transformers is importable, its config classes load what we write
 * and report the same numbers (independent reader). */
static void test_transformers_reads_it(void **state) {
    (void)state;
    if (system("python3 -c 'import transformers' >/dev/null 2>&1") != 0) {
        skip();
        return;
    }
    mt_config c;
    assert_int_equal(mt_config_load_hf(&c, tu_model_path("config.json")), MT_OK);
    assert_int_equal(mt_config_set_layer_experts(&c, 2, 5), MT_OK);
    char *dir = tu_mkdtemp();
    for (int dense = 0; dense < 2; dense++) {
        if (dense) {
            mt_config_free(&c);
            c.n_experts = c.top_k = 0;
        }
        char *s = NULL;
        assert_int_equal(mt_config_to_hf_json(&s, &c, "bfloat16"), MT_OK);
        char path[4096];
        snprintf(path, sizeof path, "%s/config.json", dir);
        FILE *f = fopen(path, "w");
        fputs(s, f);
        fclose(f);
        free(s);
        char cmd[8192];
        snprintf(cmd, sizeof cmd,
                 "python3 -c \"import sys, warnings; warnings.simplefilter('ignore');"
                 "from transformers import AutoConfig; c = AutoConfig.from_pretrained('%s');"
                 "print(type(c).__name__, c.vocab_size, c.hidden_size, c.intermediate_size,"
                 " c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.head_dim,"
                 " getattr(c, 'num_local_experts', 0), getattr(c, 'num_experts_per_tok', 0),"
                 " repr(getattr(c, 'rope_theta', None) or c.rope_parameters['rope_theta']), repr(c.rms_norm_eps),"
                 " c.max_position_embeddings, int(c.tie_word_embeddings), c.bos_token_id, c.eos_token_id,"
                 " getattr(c, 'moe_layer_experts', None))\" 2>/dev/null",
                 dir);
        FILE *p = popen(cmd, "r");
        char line[1024] = {0};
        if (!fgets(line, sizeof line, p)) line[0] = 0;
        pclose(p);
        line[strcspn(line, "\n")] = 0;
        const char *want = dense ? "MistralConfig 4096 256 512 4 8 2 32 0 0 1000000.0 1e-05 1024 0 1 2 None"
                                 : "MixtralConfig 4096 256 512 4 8 2 32 8 2 1000000.0 1e-05 1024 0 1 2 [8, 8, 5, 8]";
        assert_string_equal(line, want);
    }
    tu_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bundled),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_missing_keys),
        cmocka_unit_test(test_rejected),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_transformers_reads_it),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
