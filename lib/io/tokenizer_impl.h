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
 *    (HF tokenizers BPE Word::merge_all).
 * Unigram models (kind MT_TOK_UNIGRAM) share the vocabulary, piece map and
 * specials but encode and decode in tokenizer_unigram.c (Viterbi). */
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

    /* unigram (kind MT_TOK_UNIGRAM, tokenizer_unigram.c) */
    float uni_min_score;       /* lowest NORMAL score: unknowns cost it - 10  */
    float uni_max_score;       /* max(FLT_MIN, highest NORMAL score): user-
                                  defined pieces score len * it - 0.1        */
    int uni_hf;                /* tokenizer.json pipeline (Precompiled, Strip
                                  right, " {2,}" -> U+2581, Metaspace; specials
                                  split out first; path scores in double)
                                  instead of sentencepiece's normaliser       */
    int split_specials;        /* literal specials are cut out of the text
                                  before normalising (HF added tokens)       */
    uint32_t *cm_units;        /* precompiled charsmap: double-array units    */
    size_t cm_n_units;
    char *cm_norm;             /* replacement strings, NUL-separated           */
    size_t cm_norm_len;

    /* sentencepiece BPE (score mode) */
    int spm_fuse_unk;          /* consecutive unknown pieces are one <unk>, as
                                  sentencepiece emits them (no byte fallback) */
    /* fairseq layout (tokenizer_fairseq.c) */
    int n_lang;                /* language codes, from id lang_first; 0: none */
    int lang_first;
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

/* Longest literal special at s[0..n) (n > 0): its id and *len, or -1. */
int mt_tok_match_special(const mt_tokenizer *t, const char *s, size_t n, size_t *len);
/* Incremental piece hash: h = MT_TOK_HASH0, then h = mt_tok_hash_step(h, c)
 * for each byte c of s[0..len); mt_tok_lookup_hashed(t, s, len, h) is then
 * mt_tok_lookup(t, s, len) without hashing s again. */
#define MT_TOK_HASH0 1469598103934665603ull
static inline uint64_t mt_tok_hash_step(uint64_t h, unsigned char c) { return (h ^ c) * 1099511628211ull; }
int mt_tok_lookup_hashed(const mt_tokenizer *t, const char *s, size_t len, uint64_t h);

/* ---- tokenizer_unigram.c ------------------------------------------------ */
/* Checks and keeps a copy of a sentencepiece precompiled charsmap (layout at
 * the top of tokenizer_unigram.c); errors name `name`. */
int mt_tok_set_charsmap(mt_tokenizer *t, const void *blob, size_t len, const char *name);
/* Unigram scores (min/max over NORMAL pieces), once the pieces are in. */
void mt_tok_unigram_scores(mt_tokenizer *t);
/* mt_tok_encode / mt_tok_decode for kind MT_TOK_UNIGRAM. */
int mt_tok_unigram_encode(const mt_tokenizer *t, const char *text, size_t len, int32_t *ids, size_t cap, size_t *n);
int mt_tok_unigram_decode(const mt_tokenizer *t, const int32_t *ids, size_t n, int strip_leading_space, char **out,
                          size_t *out_len);
/* T5Tokenizer's sentinels: appends <extra_id_{n-1}> ... <extra_id_0> (so
 * <extra_id_0> is the last id) as control pieces cut out of the text before
 * normalising, as transformers' T5Tokenizer does with extra_ids = n. */
int mt_tok_add_extra_ids(mt_tokenizer *t, int n, const char *name);
/* sentencepiece's surface of the unknown piece: " \u2047 ". */
#define MT_TOK_UNK_SURFACE " \xE2\x81\x87 "

/* sentencepiece's Normalizer::Normalize of s[0..n) (the charsmap, extra
 * whitespace, dummy prefix, U+2581 escapes) into *buf (grown as needed;
 * *cap its size), *len bytes. */
int mt_tok_sp_normalize(const mt_tokenizer *t, const char *s, size_t n, char **buf, size_t *cap, size_t *len);

/* ---- tokenizer_fairseq.c ------------------------------------------------ */
/* Renumbers a sentencepiece tokenizer (*tp, replaced) as fairseq does:
 * <s> <pad> </s> <unk>, the pieces from sentencepiece id 3 (+1), the language
 * codes, <mask>; `cfg_text` (tokenizer_config.json, may be NULL) may list
 * the codes and their ids. Errors name `name`. */
int mt_tok_apply_fairseq(mt_tokenizer **tp, const char *cfg_text, size_t cfg_len, const char *name);

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
