/* fuzz_tok_unigram.c — libFuzzer target for the sentencepiece unigram
 * reader and its precompiled charsmap (tokenizer_unigram.c): the input is
 * used twice, as a charsmap blob placed in the normalizer_spec of a fixed
 * small unigram model (so every byte reaches the double-array checks
 * without having to survive the protobuf first), and as a whole
 * spiece.model. Whatever loads encodes a fixed text and the input itself,
 * and decodes the ids. */
#include "moetool/mt_tokenizer.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void exercise(const mt_tokenizer *t, const char *s, size_t n) {
    int32_t small[8];
    size_t got = 0;
    if (mt_tok_encode(t, s, n, small, 8, &got) != MT_OK) return;
    int32_t *ids = malloc((got ? got : 1) * sizeof *ids);
    size_t again = 0;
    if (!ids) return;
    if (mt_tok_encode(t, s, n, ids, got, &again) != MT_OK || again != got) __builtin_trap();
    char *out = NULL;
    size_t out_len = 0;
    if (mt_tok_decode(t, ids, got, 1, &out, &out_len) == MT_OK) free(out);
    free(ids);
}

static size_t put_varint(uint8_t *p, uint64_t v) {
    size_t n = 0;
    do {
        p[n] = (uint8_t)(v & 0x7F);
        v >>= 7;
        if (v) p[n] |= 0x80;
        n++;
    } while (v);
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* pieces <unk> (UNKNOWN), a, b, U+2581 a; trainer: UNIGRAM */
    static const uint8_t head[] = {0x0A, 0x09, 0x0A, 0x05, '<', 'u', 'n', 'k', '>', 0x18, 0x02,
                                   0x0A, 0x08, 0x0A, 0x01, 'a', 0x15, 0x00, 0x00, 0x80, 0xBF,
                                   0x0A, 0x08, 0x0A, 0x01, 'b', 0x15, 0x00, 0x00, 0x00, 0xC0,
                                   0x0A, 0x0A, 0x0A, 0x04, 0xE2, 0x96, 0x81, 'a', 0x15, 0x00, 0x00, 0x00, 0xBF,
                                   0x12, 0x02, 0x18, 0x01};
    if (size > (1u << 20)) return 0;
    uint8_t *m = malloc(sizeof head + 2 * 10 + 2 + size);
    if (!m) return 0;
    size_t n = sizeof head;
    memcpy(m, head, n);
    uint8_t inner[12];
    size_t li = put_varint(inner, size);
    m[n++] = 0x1A; /* normalizer_spec { 2: precompiled_charsmap } */
    n += put_varint(m + n, 1 + li + size);
    m[n++] = 0x12;
    memcpy(m + n, inner, li);
    n += li;
    if (size) memcpy(m + n, data, size);
    n += size;
    static const char fixed_text[] = "  ab a\xC3\xA9 \xF0\x9F\x98\x80  x\n\tb \xFF\x00z ";
    mt_tokenizer *t = NULL;
    if (mt_tok_parse_spm(&t, m, n, "fuzz-charsmap") == MT_OK) {
        exercise(t, fixed_text, sizeof fixed_text - 1);
        exercise(t, (const char *)data, size < 4096 ? size : 4096);
        mt_tok_free(t);
    }
    free(m);
    t = NULL;
    if (mt_tok_parse_spm(&t, data, size, "fuzz.model") == MT_OK) {
        exercise(t, fixed_text, sizeof fixed_text - 1);
        exercise(t, (const char *)data, size < 4096 ? size : 4096);
        mt_tok_free(t);
    }
    return 0;
}
