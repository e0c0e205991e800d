/* tokenizer_impl.h — private representation shared by the tokenizer
 * readers (tokenizer_spm.c: sentencepiece protobuf, tokenizer_hf.c:
 * tokenizer.json and the GPT-2 pre-tokenizer) and the common engine
 * (tokenizer.c: vocabulary, BPE merging, decoding).
 *
 * One BPE engine serves every source; it runs in one of two modes:
 *  - score mode (sentencepiece, GGUF 'llama'): two adjacent symbols merge
 *    when their concatenation is a vocabulary piece; the highest score wins,
 *    leftmost on ties (sentencepiece bpe_model.cc, llama.cpp llm_tokenizer_spm);
 *  - rank mode (tokenizer.json, GGUF 'gpt2'): two adjacent symbols merge when
 *    the pair is in the merges list; the lowest rank wins, leftmost on ties
 *    (HF tokenizers BPE Word::merge_all). */
#ifndef MT_TOKENIZER_IMPL_H
#define MT_TOKENIZER_IMPL_H

#include "moetool/mt_io.h"
#include "moetool/mt_tokenizer.h"

#include <stdint.h>

/* Largest vocabulary / merges list accepted (guards hostile counts). */
#define MT_TOK_MAX_VOCAB (1u << 24)
#define MT_TOK_MAX_MERGES (1u << 24)
#define MT_TOK_MAX_PIECE 4096 /* bytes of one piece */

/* Pre-tokenizer split patterns for byte-level BPE. */
typedef enum {
    MT_SPLIT_NONE = 0,   /* the whole text is one word                         */
    MT_SPLIT_GPT2 = 1,   /* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+|...      */
    MT_SPLIT_LLAMA3 = 2, /* (?i:'s|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|... */
    MT_SPLIT_QWEN2 = 3,  /* as LLAMA3 with \p{N} one digit at a time          */
} mt_split_kind;

/* Where the sentencepiece "dummy prefix" U+2581 is prepended. */
typedef enum {
    MT_PREPEND_NEVER = 0,
    MT_PREPEND_ALWAYS = 1, /* every segment between special tokens */
    MT_PREPEND_FIRST = 2,  /* only the segment at the start of the text */
} mt_prepend_mode;

typedef struct {
    uint32_t off, len; /* bytes in pool */
    float score;
    int32_t type;      /* mt_piece_type */
} mt_tok_piece_rec;

typedef struct {
    uint32_t a, b;     /* left/right piece ids; a == UINT32_MAX: empty slot */
    int32_t rank;
    int32_t id;        /* piece id of the merged pair */
} mt_tok_pair;

struct mt_tokenizer {
    mt_tok_kind kind;
    size_t n_vocab;
    mt_tok_piece_rec *pieces;  /* [n_vocab] */
    char *pool;                /* piece bytes, NUL after each piece */
    size_t pool_len, pool_cap;
    int32_t *map;              /* piece -> id, open addressing, [map_cap], -1 empty */
    size_t map_cap;            /* power of two */
    size_t max_len;            /* longest piece in bytes */
    uint8_t sep[128];          /* ASCII bytes in no mergeable piece longer than
                                  one byte: they never merge, so merging runs
                                  independently between them */

    int bos, eos, unk;
    int byte_fallback;
    int32_t byte_id[256];      /* <0xXX> piece per byte, -1 if absent */

    /* normalisation (sentencepiece style) */
    int prepend;               /* mt_prepend_mode */
    int escape_ws;             /* ' ' -> U+2581 */
    int remove_extra_ws;       /* sentencepiece remove_extra_whitespaces */
    int metaspace_split;       /* HF Metaspace split=true: words start at U+2581 */

    /* merging */
    int rank_mode;             /* 1: merges by rank (pairs), 0: by score */
    mt_tok_pair *pairs;        /* [pair_cap] */
    size_t pair_cap;
    size_t n_merges;
    uint32_t *merge_off;       /* [n_merges + 1] into merge_pool: "a b" strings */
    char *merge_pool;
    int ignore_merges;         /* HF: a word that is a piece is emitted whole */
    int fuse_unk;
    int has_unused;            /* UNUSED pieces present: resegment them */
    int has_user_defined;      /* score mode: USER_DEFINED pieces are atomic */

    /* byte level (GPT-2) */
    int split;                 /* mt_split_kind */
    int add_prefix_space;
    int32_t bl_id[256];        /* id of the one-char piece of byte b, -1 if absent */

    /* literal matches before BPE: HF added tokens, GGUF control/user tokens,
     * sentencepiece user-defined pieces */
    int32_t *specials;         /* ids, [n_specials] */
    size_t n_specials;
    uint8_t *is_special;       /* [n_vocab] */
    uint8_t special_first[32]; /* bitmap of first bytes */
    uint32_t special_lens[32]; /* distinct lengths, longest first */
    size_t n_special_lens;
    int specials_by_scan;      /* more than 32 lengths: linear scan */
    int prepend_unless_present; /* HF Metaspace: no second U+2581 */
};

/* ---- tokenizer.c: construction helpers used by the readers ------------ */
int mt_tok_new(mt_tokenizer **out, mt_tok_kind kind);
/* Appends a piece (bytes need not be NUL-terminated); id = previous count. */
int mt_tok_add_piece(mt_tokenizer *t, const char *s, size_t len, float score, int type,
                     const char *name_for_errors);
/* Builds the piece map; fails on duplicates (naming them). */
int mt_tok_build_map(mt_tokenizer *t, const char *name_for_errors);
/* Last step of every reader, once types and merges are known: derives the
 * separator bytes (mt_tokenizer.sep). */
void mt_tok_finalize(mt_tokenizer *t);
/* id of a piece, -1 if absent. */
int mt_tok_lookup(const mt_tokenizer *t, const char *s, size_t len);
/* Fills byte_id[] from <0xXX> pieces; sets their type to BYTE when
 * `mark_type` (sources without types). */
void mt_tok_find_byte_pieces(mt_tokenizer *t, int mark_type);
/* Adds the merges list (rank order). Each entry is "a b" (split at the first
 * space after the first byte) or, when `right` is not NULL, a pair. */
int mt_tok_set_merges(mt_tokenizer *t, size_t n, const char *const *left, const size_t *left_lens,
                      const char *const *right, const size_t *right_lens, const char *name_for_errors);
/* Byte-level tables (bl_id) from the vocabulary. */
int mt_tok_init_byte_level(mt_tokenizer *t, const char *name_for_errors);
/* Literal-match table from the given ids. */
int mt_tok_set_specials(mt_tokenizer *t, const int32_t *ids, size_t n);
/* For rank-mode SPM (no scores in the source): scores that order pieces as
 * the merges do, so that a written tokenizer.model encodes the same. */
void mt_tok_synth_scores(mt_tokenizer *t);

/* The tokenizer stored in GGUF metadata (tokenizer.ggml.*); `path` names
 * the file in messages. */
int mt_tok_from_gguf(mt_tokenizer **out, const mt_gguf *g, const char *path);
/* bos_token / eos_token of a tokenizer_config.json text, when they name pieces. */
void mt_tok_apply_hf_config(mt_tokenizer *t, const char *text, size_t len);

/* ---- tokenizer_hf.c: GPT-2 pre-tokenizer --------------------------------
 * Length in bytes of the next word of text[0..len) under `split`
 * (len > 0; the result is in 1..len). */
size_t mt_tok_next_word(int split, const char *text, size_t len);

/* UTF-8: decodes one code point at s[0..n); returns its length (1..4) and
 * the code point, or 0 for an invalid sequence. */
int mt_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp);
int mt_utf8_encode(uint32_t cp, char *out);
/* The GPT-2 byte -> code point table (bytes_to_unicode). */
uint32_t mt_tok_byte_to_cp(int b);

#endif
