/* fuzz_tok_json.c — libFuzzer target for the tokenizer.json reader: parses
 * the input as tokenizer.json; when it parses, encodes and decodes a fixed
 * string and the input itself as text. Every input is also encoded as text
 * with fixed byte-level tokenizers (GPT-2 and Llama-3 pre-tokenizer
 * patterns), checking decode(encode(x)) == x, which holds for any bytes. */
#include "moetool/mt_tokenizer.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void exercise(const mt_tokenizer *t, const char *s, size_t n, int check_round_trip) {
    int32_t small[8];
    size_t got = 0;
    if (mt_tok_encode(t, s, n, small, 8, &got) != MT_OK) return;
    int32_t *ids = malloc((got ? got : 1) * sizeof *ids);
    size_t again = 0;
    if (!ids) return;
    if (mt_tok_encode(t, s, n, ids, got, &again) != MT_OK || again != got) __builtin_trap();
    char *out = NULL;
    size_t out_len = 0;
    if (mt_tok_decode(t, ids, got, 1, &out, &out_len) == MT_OK) {
        if (check_round_trip && (out_len != n || memcmp(out, s, n) != 0)) __builtin_trap();
        free(out);
    }
    free(ids);
}

/* A byte-level vocabulary: the 256 byte characters plus a few merges. */
static mt_tokenizer *fixed_bl(const char *split) {
    static char json[32768];
    char *p = json, *end = json + sizeof json;
    p += snprintf(p, (size_t)(end - p), "{\"pre_tokenizer\": %s, \"model\": {\"type\": \"BPE\", \"vocab\": {", split);
    for (int b = 0; b < 256; b++) {
        int cp = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE) ? b : -1;
        if (cp < 0) {
            int k = 0;
            for (int i = 0; i < b; i++) k += !((i >= 0x21 && i <= 0x7E) || (i >= 0xA1 && i <= 0xAC) || (i >= 0xAE));
            cp = 256 + k;
        }
        p += snprintf(p, (size_t)(end - p), "\"\\u%04x\": %d, ", cp, b);
    }
    p += snprintf(p, (size_t)(end - p),
                  "\"th\": 256, \"\\u0120t\": 257, \"\\u0120th\": 258, \"he\": 259, \"\\u0120the\": 260, \"\\u010a\\u010a\": 261},"
                  " \"merges\": [\"t h\", \"\\u0120 t\", \"\\u0120t h\", \"h e\", \"\\u0120th e\", \"\\u010a \\u010a\"]}}");
    mt_tokenizer *t = NULL;
    if (mt_tok_parse_hf_json(&t, json, (size_t)(p - json), "fixed.json") != MT_OK) __builtin_trap();
    return t;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static mt_tokenizer *gpt2, *llama3;
    if (!gpt2) {
        gpt2 = fixed_bl("{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": true}");
        llama3 = fixed_bl("{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": {\"Regex\": "
                          "\"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}{1,3}| "
                          "?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"}, "
                          "\"behavior\": \"Isolated\", \"invert\": false}, {\"type\": \"ByteLevel\", "
                          "\"add_prefix_space\": false, \"use_regex\": false}]}");
    }
    const char *text = (const char *)data;
    exercise(gpt2, text, size, 1);
    exercise(llama3, text, size, 1);

    mt_tokenizer *t = NULL;
    if (mt_tok_parse_hf_json(&t, text, size, "fuzz.json") != MT_OK) return 0;
    static const char fixed_text[] = "Hello <s> world's 123 caf\xC3\xA9 \xF0\x9F\x98\x80  \n\n x\xFF";
    exercise(t, fixed_text, sizeof fixed_text - 1, 0);
    exercise(t, text, size < 4096 ? size : 4096, 0);
    mt_tok_free(t);
    return 0;
}
