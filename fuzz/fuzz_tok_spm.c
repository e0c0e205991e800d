/* fuzz_tok_spm.c — libFuzzer target for the sentencepiece tokenizer.model
 * reader: parses the input as a ModelProto; when it parses, encodes and
 * decodes a fixed string and the input itself as text. Every input is also
 * encoded with a fixed small sentencepiece tokenizer, checking
 * decode(encode(x)) == x (which holds for any bytes without U+2581, thanks
 * to full byte fallback). */
#include "moetool/mt_tokenizer.h"

#include <stdint.h>
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
    char buf[16];
    for (size_t i = 0; i < got && i < 64; i++) {
        size_t len = 0;
        mt_tok_piece_text(t, ids[i], buf, sizeof buf, &len);
    }
    free(ids);
}

static mt_tokenizer *fixed_spm(void) {
    static const char *const words[] = {"<unk>", "<s>", "</s>", "\xE2\x96\x81", "a", "b", "ab", "\xE2\x96\x81" "a",
                                        "\xE2\x96\x81" "ab", "ba", "\xC3\xA9", "\xE2\x96\x81\xE2\x96\x81", "aa"};
    enum { NW = sizeof words / sizeof words[0], N = NW + 256 };
    static char bytes[256][7];
    const char *p[N];
    size_t l[N];
    float sc[N];
    int32_t ty[N];
    for (int i = 0; i < NW; i++) {
        p[i] = words[i];
        l[i] = strlen(words[i]);
        sc[i] = -(float)i;
        ty[i] = i == 0 ? MT_PIECE_UNKNOWN : i < 3 ? MT_PIECE_CONTROL : MT_PIECE_NORMAL;
    }
    for (int b = 0; b < 256; b++) {
        static const char hex[] = "0123456789ABCDEF";
        char *s = bytes[b];
        s[0] = '<'; s[1] = '0'; s[2] = 'x'; s[3] = hex[b >> 4]; s[4] = hex[b & 15]; s[5] = '>'; s[6] = 0;
        p[NW + b] = s;
        l[NW + b] = 6;
        sc[NW + b] = 0;
        ty[NW + b] = MT_PIECE_BYTE;
    }
    mt_tokenizer *t = NULL;
    if (mt_tok_from_vocab(&t, MT_TOK_SPM, N, p, l, sc, ty, 0, NULL, NULL, 1, 2, 0) != MT_OK) __builtin_trap();
    return t;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static mt_tokenizer *fixed;
    if (!fixed) fixed = fixed_spm();
    const char *text = (const char *)data;
    int has_sp = 0;
    for (size_t i = 0; i + 3 <= size && !has_sp; i++) has_sp = memcmp(text + i, "\xE2\x96\x81", 3) == 0;
    exercise(fixed, text, size, !has_sp);

    mt_tokenizer *t = NULL;
    if (mt_tok_parse_spm(&t, data, size, "fuzz.model") != MT_OK) return 0;
    static const char fixed_text[] = "In the beginning, caf\xC3\xA9 \xF0\x9F\x98\x80  x\n\ty \xFF";
    exercise(t, fixed_text, sizeof fixed_text - 1, 0);
    exercise(t, text, size < 4096 ? size : 4096, 0);
    size_t n = mt_tok_vocab_size(t);
    for (size_t i = 0; i < n && i < 64; i++) {
        size_t len;
        mt_tok_piece(t, (int)i, &len);
        mt_tok_score(t, (int)i);
        mt_tok_type(t, (int)i);
    }
    mt_tok_free(t);
    return 0;
}
