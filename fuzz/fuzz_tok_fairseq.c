/* fuzz_tok_fairseq.c — libFuzzer target for NLLB's tokenizer: fairseq's id
 * layout over a sentencepiece.bpe.model, with the language codes and ids a
 * tokenizer_config.json gives (lib/io/tokenizer_fairseq.c). Input: the
 * tokenizer_config.json text, a NUL byte, the protobuf (no NUL: all of it
 * is the config, over an empty model). What loads encodes a fixed text with
 * language codes and specials in it and decodes the result. */
#include "moetool/mt_tokenizer.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *nul = memchr(data, 0, size);
    const size_t cfg_len = nul ? (size_t)(nul - data) : size;
    const uint8_t *spm = nul ? nul + 1 : data + size;
    const size_t spm_len = size - cfg_len - (nul ? 1 : 0);
    mt_tokenizer *t = NULL;
    if (mt_tok_parse_fairseq(&t, spm, spm_len, (const char *)data, cfg_len, "fuzz.bpe.model") != MT_OK) return 0;
    static const char text[] = "eng_Latn In the <mask> beginning </s>caf\xC3\xA9 \xE6\x97\xA5\xE6\x97\xA5  x\t<unk>";
    int32_t ids[256];
    size_t n = 0;
    if (mt_tok_encode(t, text, sizeof text - 1, ids, 256, &n) == MT_OK && n <= 256) {
        char *out = NULL;
        size_t out_len = 0;
        if (mt_tok_decode(t, ids, n, 1, &out, &out_len) == MT_OK) free(out);
    }
    const int code = mt_tok_lang_id(t, "eng_Latn");
    if (code >= 0 && (size_t)code >= mt_tok_vocab_size(t)) __builtin_trap();
    mt_tok_free(t);
    return 0;
}
