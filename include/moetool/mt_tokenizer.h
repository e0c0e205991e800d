/* mt_tokenizer.h — tokenizers: sentencepiece BPE (tokenizer.model protobuf,
 * or the same model in tokenizer.json / GGUF 'llama' metadata) with byte
 * fallback, GPT-2 byte-level BPE (tokenizer.json / GGUF 'gpt2'), and
 * sentencepiece unigram (T5's spiece.model, or tokenizer.json "Unigram"),
 * with its precompiled-charsmap normaliser. */
#ifndef MT_TOKENIZER_H
#define MT_TOKENIZER_H

#include "mt_common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    MT_TOK_SPM = 0,     /* sentencepiece-style BPE                          */
    MT_TOK_GPT2 = 1,    /* GPT-2 byte-level BPE                             */
    MT_TOK_UNIGRAM = 2, /* sentencepiece unigram (Viterbi over piece scores) */
} mt_tok_kind;

/* Piece types, numbered as sentencepiece and GGUF number them. */
typedef enum {
    MT_PIECE_NORMAL = 1, MT_PIECE_UNKNOWN = 2, MT_PIECE_CONTROL = 3,
    MT_PIECE_USER_DEFINED = 4, MT_PIECE_UNUSED = 5, MT_PIECE_BYTE = 6,
} mt_piece_type;

typedef struct mt_tokenizer mt_tokenizer;

int mt_tok_load_spm(mt_tokenizer **out, const char *tokenizer_model_path);
int mt_tok_parse_spm(mt_tokenizer **out, const void *buf, size_t len, const char *name_for_errors);
/* fairseq's sentencepiece.bpe.model (NLLB): the protobuf renumbered as
 * fairseq does (<s> <pad> </s> <unk>, pieces, language codes, <mask>;
 * tokenizer_config.json's text, may be NULL, can list the codes and their
 * ids: lib/io/tokenizer_fairseq.c). */
int mt_tok_parse_fairseq(mt_tokenizer **out, const void *spm, size_t spm_len, const char *cfg_text, size_t cfg_len,
                         const char *name_for_errors);
int mt_tok_load_hf_json(mt_tokenizer **out, const char *tokenizer_json_path);
int mt_tok_parse_hf_json(mt_tokenizer **out, const char *text, size_t len, const char *name_for_errors);
/* From vocabulary arrays (as GGUF stores them). kind SPM uses scores as
 * merge priorities; GPT2 uses `merges` ("a b" strings, rank order). */
int mt_tok_from_vocab(mt_tokenizer **out, mt_tok_kind kind, size_t n_vocab,
                      const char *const *pieces, const size_t *piece_lens,
                      const float *scores, const int32_t *types,
                      size_t n_merges, const char *const *merges, const size_t *merge_lens,
                      int bos_id, int eos_id, int unk_id);
void mt_tok_free(mt_tokenizer *t);

/* The tokenizer that belongs to a checkpoint: GGUF metadata
 * (tokenizer.ggml.*), else tokenizer.model or spiece.model (T5), else
 * tokenizer.json beside it. */
struct mt_ckpt;
int mt_tok_load_for_ckpt(mt_tokenizer **out, const struct mt_ckpt *ck);

mt_tok_kind mt_tok_kind_of(const mt_tokenizer *t);
size_t mt_tok_vocab_size(const mt_tokenizer *t);
/* Piece bytes (as stored, e.g. with U+2581 for spaces), score and type. */
const char *mt_tok_piece(const mt_tokenizer *t, int id, size_t *len);
float mt_tok_score(const mt_tokenizer *t, int id);
int mt_tok_type(const mt_tokenizer *t, int id);
size_t mt_tok_merge_count(const mt_tokenizer *t);
const char *mt_tok_merge(const mt_tokenizer *t, size_t i, size_t *len);
int mt_tok_bos(const mt_tokenizer *t);
int mt_tok_eos(const mt_tokenizer *t);
int mt_tok_unk(const mt_tokenizer *t);
/* Language codes of a fairseq-layout tokenizer (NLLB's
 * sentencepiece.bpe.model: eng_Latn, ...), 0 for any other. */
int mt_tok_lang_codes(const mt_tokenizer *t);
/* id of a piece given as a NUL-terminated string (a language code,
 * "</s>"), -1 when absent. */
int mt_tok_find(const mt_tokenizer *t, const char *piece);
/* id of language code `code` of a fairseq-layout tokenizer, -1 if it is
 * not one of its codes. */
int mt_tok_lang_id(const mt_tokenizer *t, const char *code);
/* Whether the model prepends a space ("add_dummy_prefix") before encoding. */
int mt_tok_add_space_prefix(const mt_tokenizer *t);

/* Encodes UTF-8 text (no BOS is added; callers add it). Writes at most
 * `cap` ids to `ids` and the full count to *n; if *n > cap, call again with
 * a larger buffer. Invalid UTF-8 is encoded through byte fallback. */
int mt_tok_encode(const mt_tokenizer *t, const char *text, size_t len,
                  int32_t *ids, size_t cap, size_t *n);
/* Encodes the text of a file (no BOS) into a malloc'd *ids. max_tokens 0:
 * the whole text. Otherwise reading stops once max_tokens are available (the
 * file is read in growing pieces cut at line starts, pipes included): *ids
 * are then the first tokens of the whole text's encoding, at least
 * max_tokens of them unless the text is shorter. *whole (may be NULL) says
 * whether the whole file was read. */
int mt_tok_encode_file(const mt_tokenizer *t, const char *path, size_t max_tokens, int32_t **ids, size_t *n,
                       int *whole);
/* Decodes ids to UTF-8 (caller frees *out). Control tokens decode to "".
 * With `strip_leading_space`, the dummy-prefix space of the first piece is
 * removed, so that decode(encode(x)) == x. */
int mt_tok_decode(const mt_tokenizer *t, const int32_t *ids, size_t n,
                  int strip_leading_space, char **out, size_t *out_len);
/* Bytes of one token's text (for streaming generation); appends to buf. */
int mt_tok_piece_text(const mt_tokenizer *t, int id, char *buf, size_t cap, size_t *len);

/* Writes a sentencepiece tokenizer.model (protobuf) for an SPM tokenizer,
 * so a GGUF converted back to HF carries a loadable tokenizer. */
int mt_tok_write_spm(const mt_tokenizer *t, const char *path);
/* Writes DIR/tokenizer.json (Hugging Face tokenizers' format, as
 * transformers' LlamaConverter lays it out) for an SPM tokenizer, so the
 * fast tokenizer loads it without sentencepiece. */
int mt_tok_write_hf_json(const mt_tokenizer *t, const char *dir);

#ifdef __cplusplus
}
#endif
#endif
