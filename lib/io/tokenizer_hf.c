/* tokenizer_hf.c — Hugging Face tokenizer.json (tokenizers library) for BPE
 * models, and the hand-written GPT-2 / Llama-3 / Qwen2 pre-tokenizer regexes.
 *
 * Layout read (JSON):
 *   { "added_tokens": [{"id": int, "content": str, "special": bool, ...}],
 *     "normalizer": null | {"type": "Sequence", "normalizers": [..]}
 *                 | {"type": "Prepend", "prepend": "\u2581"}
 *                 | {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
 *     "pre_tokenizer": null | {"type": "ByteLevel", "add_prefix_space": bool, "use_regex": bool}
 *                 | {"type": "Split", "pattern": {"Regex": str}, "behavior": "Isolated", "invert": false}
 *                 | {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": str, "split": bool}
 *                 | {"type": "Sequence", "pretokenizers": [..]},
 *     "model": {"type": "BPE", "vocab": {piece: id}, "merges": ["a b" | ["a", "b"]],
 *               "byte_fallback": bool, "unk_token": str|null, "fuse_unk": bool,
 *               "ignore_merges": bool, "dropout": null, ...},
 *     "decoder": ..., "post_processor": ... (not needed: decoding follows the kind) }
 *
 * Two families come out of it: sentencepiece-style BPE (U+2581 for spaces,
 * byte fallback, merges by rank; kind MT_TOK_SPM) and GPT-2 byte-level BPE
 * (kind MT_TOK_GPT2). A third is the unigram model transformers writes for
 * T5 (SpmConverter / T5Converter; kind MT_TOK_UNIGRAM, tokenizer_unigram.c):
 *     "model": {"type": "Unigram", "vocab": [[piece, score], ...] (id order),
 *               "unk_id": int|null, "byte_fallback": bool},
 *     "normalizer": {"type": "Sequence", "normalizers": [
 *         {"type": "Precompiled", "precompiled_charsmap": base64|null},
 *         {"type": "Strip", "strip_left": false, "strip_right": true},
 *         {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": "▁"}]},
 *     "pre_tokenizer": Metaspace (above).
 * Other models, normalizers and pre-tokenizers are MT_ERR_UNSUPPORTED
 * naming what was found. */
#include "tokenizer_impl.h"

#include "io_impl.h"
#include "tokenizer_unicode.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

/* ---- Unicode classes and the pre-tokenizer ------------------------------ */

static int in_ranges(const uint32_t (*r)[2], size_t n, uint32_t cp) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < r[mid][0]) hi = mid;
        else if (cp > r[mid][1]) lo = mid + 1;
        else return 1;
    }
    return 0;
}

static int is_L(uint32_t cp) {
    if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
    return in_ranges(mt_uni_letter, sizeof mt_uni_letter / sizeof mt_uni_letter[0], cp);
}

static int is_N(uint32_t cp) {
    if (cp < 0x80) return cp >= '0' && cp <= '9';
    return in_ranges(mt_uni_number, sizeof mt_uni_number / sizeof mt_uni_number[0], cp);
}

/* \s: Unicode White_Space */
static int is_S(uint32_t cp) {
    return (cp >= 9 && cp <= 13) || cp == 32 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
           cp == 0x3000;
}

#define CP_INVALID 0xFFFFFFFFu /* an invalid byte: neither letter, number nor space */

static size_t dec(const char *s, size_t n, size_t i, uint32_t *cp) {
    if (i >= n) {
        *cp = CP_INVALID;
        return 0;
    }
    int l = mt_utf8_decode((const unsigned char *)s + i, n - i, cp);
    if (l == 0) {
        *cp = CP_INVALID;
        return 1;
    }
    return (size_t)l;
}

static int is_other(uint32_t cp) { return !is_S(cp) && !is_L(cp) && !is_N(cp); }
static int is_nl(uint32_t cp) { return cp == '\r' || cp == '\n'; }

/* Consumes code points from i while pred holds (at most max, 0 = no limit). */
static size_t run(const char *s, size_t n, size_t i, int (*pred)(uint32_t), size_t max) {
    size_t k = 0;
    uint32_t cp;
    while (i < n && (max == 0 || k < max)) {
        size_t l = dec(s, n, i, &cp);
        if (!pred(cp)) break;
        i += l;
        k++;
    }
    return i;
}

static size_t contraction(const char *s, size_t n, int icase) {
    static const char *const suf[] = {"s", "t", "re", "ve", "m", "ll", "d"};
    if (n < 2 || s[0] != '\'') return 0;
    for (size_t k = 0; k < sizeof suf / sizeof suf[0]; k++) {
        size_t l = strlen(suf[k]), j;
        if (1 + l > n) continue;
        for (j = 0; j < l; j++) {
            char c = s[1 + j];
            if (icase && c >= 'A' && c <= 'Z') c = (char)(c + 32);
            if (c != suf[k][j]) break;
        }
        if (j == l) return 1 + l;
    }
    return 0;
}

/* \s+(?!\S) then \s+, from a whitespace code point at 0. */
static size_t ws_tail(const char *s, size_t n) {
    size_t i = 0, last = 0, count = 0;
    uint32_t cp;
    while (i < n) {
        size_t l = dec(s, n, i, &cp);
        if (!is_S(cp)) break;
        last = i;
        i += l;
        count++;
    }
    if (i == n || count < 2) return i;
    return last;
}

size_t mt_tok_next_word(int split, const char *s, size_t n) {
    uint32_t c0, c1;
    size_t l0 = dec(s, n, 0, &c0), e;
    dec(s, n, l0, &c1);
    if (split == MT_SPLIT_GPT2) {
        if ((e = contraction(s, n, 0))) return e;
        size_t p = c0 == ' ' ? l0 : 0;
        uint32_t cp = p ? c1 : c0;
        if (p == 0 || p < n) {
            if (is_L(cp)) return run(s, n, p, is_L, 0);
            if (is_N(cp)) return run(s, n, p, is_N, 0);
            if (is_other(cp)) return run(s, n, p, is_other, 0);
        }
        return ws_tail(s, n);
    }
    /* Llama-3 / Qwen2 */
    if ((e = contraction(s, n, 1))) return e;
    if (is_L(c0)) return run(s, n, 0, is_L, 0);
    if (!is_nl(c0) && !is_N(c0) && l0 < n && is_L(c1)) return run(s, n, l0, is_L, 0);
    if (is_N(c0)) return run(s, n, 0, is_N, split == MT_SPLIT_QWEN2 ? 1 : 3);
    {
        size_t p = c0 == ' ' ? l0 : 0;
        uint32_t cp = p ? c1 : c0;
        if ((p == 0 || p < n) && is_other(cp)) {
            size_t i = run(s, n, p, is_other, 0);
            return run(s, n, i, is_nl, 0);
        }
    }
    /* \s*[\r\n]+ : up to the last newline of the whitespace run */
    size_t i = 0, after_nl = 0;
    uint32_t cp;
    while (i < n) {
        size_t l = dec(s, n, i, &cp);
        if (!is_S(cp)) break;
        i += l;
        if (is_nl(cp)) after_nl = i;
    }
    if (after_nl) return after_nl;
    return ws_tail(s, n);
}

/* ---- JSON helpers -------------------------------------------------------- */

static const char *jstr(json_t *o, const char *key, size_t *len) {
    json_t *v = json_object_get(o, key);
    if (!json_is_string(v)) return NULL;
    if (len) *len = json_string_length(v);
    return json_string_value(v);
}

static int jbool(json_t *o, const char *key, int dflt) {
    json_t *v = json_object_get(o, key);
    if (json_is_boolean(v)) return json_is_true(v);
    return dflt;
}

static int jis(json_t *o, const char *key, const char *want) {
    const char *s = jstr(o, key, NULL);
    return s && strcmp(s, want) == 0;
}

static const char SPS[] = "\xE2\x96\x81"; /* U+2581 */

typedef struct {
    const char *name;
    int byte_level, byte_level_regex;
    int split;          /* from a Split pre-tokenizer */
    int prepend;        /* mt_prepend_mode */
    int prepend_unless_present;
    int escape_ws, metaspace_split, add_prefix_space;
} hf_pipe;

static int parse_normalizer(json_t *n, hf_pipe *pp, int depth) {
    if (json_is_null(n) || !n) return MT_OK;
    if (!json_is_object(n) || depth > 8) return mt_seterr(MT_ERR_FORMAT, "%s: normalizer is not an object", pp->name);
    const char *type = jstr(n, "type", NULL);
    if (!type) return mt_seterr(MT_ERR_FORMAT, "%s: normalizer without a type", pp->name);
    if (strcmp(type, "Sequence") == 0) {
        json_t *a = json_object_get(n, "normalizers");
        if (!json_is_array(a)) return mt_seterr(MT_ERR_FORMAT, "%s: normalizer Sequence without a normalizers array", pp->name);
        for (size_t i = 0; i < json_array_size(a); i++) {
            int rc = parse_normalizer(json_array_get(a, i), pp, depth + 1);
            if (rc) return rc;
        }
        return MT_OK;
    }
    if (strcmp(type, "Prepend") == 0) {
        if (!jis(n, "prepend", SPS))
            return mt_seterr(MT_ERR_UNSUPPORTED, "%s: normalizer Prepend of anything but U+2581 is not supported", pp->name);
        pp->prepend = MT_PREPEND_ALWAYS;
        return MT_OK;
    }
    if (strcmp(type, "Replace") == 0) {
        json_t *pat = json_object_get(n, "pattern");
        if (!json_is_object(pat) || !jis(pat, "String", " ") || !jis(n, "content", SPS))
            return mt_seterr(MT_ERR_UNSUPPORTED, "%s: normalizer Replace other than ' ' -> U+2581 is not supported", pp->name);
        pp->escape_ws = 1;
        return MT_OK;
    }
    return mt_seterr(MT_ERR_UNSUPPORTED, "%s: normalizer '%s' is not supported", pp->name, type);
}

static const char RX_GPT2[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char RX_LLAMA3[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char RX_QWEN2[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

static int parse_pretok(json_t *n, hf_pipe *pp, int depth) {
    if (json_is_null(n) || !n) return MT_OK;
    if (!json_is_object(n) || depth > 8) return mt_seterr(MT_ERR_FORMAT, "%s: pre_tokenizer is not an object", pp->name);
    const char *type = jstr(n, "type", NULL);
    if (!type) return mt_seterr(MT_ERR_FORMAT, "%s: pre_tokenizer without a type", pp->name);
    if (strcmp(type, "Sequence") == 0) {
        json_t *a = json_object_get(n, "pretokenizers");
        if (!json_is_array(a)) return mt_seterr(MT_ERR_FORMAT, "%s: pre_tokenizer Sequence without a pretokenizers array", pp->name);
        for (size_t i = 0; i < json_array_size(a); i++) {
            int rc = parse_pretok(json_array_get(a, i), pp, depth + 1);
            if (rc) return rc;
        }
        return MT_OK;
    }
    if (strcmp(type, "ByteLevel") == 0) {
        pp->byte_level = 1;
        pp->add_prefix_space = jbool(n, "add_prefix_space", 1);
        pp->byte_level_regex = jbool(n, "use_regex", 1);
        if (pp->byte_level_regex && pp->split)
            return mt_seterr(MT_ERR_UNSUPPORTED, "%s: a Split pre-tokenizer followed by ByteLevel with use_regex is not supported", pp->name);
        if (pp->byte_level_regex) pp->split = MT_SPLIT_GPT2;
        return MT_OK;
    }
    if (strcmp(type, "Split") == 0) {
        json_t *pat = json_object_get(n, "pattern");
        const char *rx = json_is_object(pat) ? jstr(pat, "Regex", NULL) : NULL;
        if (!rx) return mt_seterr(MT_ERR_UNSUPPORTED, "%s: Split pre-tokenizer without a Regex pattern is not supported", pp->name);
        if (!jis(n, "behavior", "Isolated") || jbool(n, "invert", 0))
            return mt_seterr(MT_ERR_UNSUPPORTED, "%s: Split pre-tokenizer behaviour other than Isolated is not supported", pp->name);
        if (pp->split) return mt_seterr(MT_ERR_UNSUPPORTED, "%s: more than one Split pre-tokenizer is not supported", pp->name);
        if (strcmp(rx, RX_GPT2) == 0) pp->split = MT_SPLIT_GPT2;
        else if (strcmp(rx, RX_LLAMA3) == 0) pp->split = MT_SPLIT_LLAMA3;
        else if (strcmp(rx, RX_QWEN2) == 0) pp->split = MT_SPLIT_QWEN2;
        else return mt_seterr(MT_ERR_UNSUPPORTED, "%s: Split pre-tokenizer pattern '%.80s' is not supported", pp->name, rx);
        return MT_OK;
    }
    if (strcmp(type, "Metaspace") == 0) {
        if (!jis(n, "replacement", SPS))
            return mt_seterr(MT_ERR_UNSUPPORTED, "%s: Metaspace with a replacement other than U+2581 is not supported", pp->name);
        const char *scheme = jstr(n, "prepend_scheme", NULL);
        if (scheme) {
            if (strcmp(scheme, "always") == 0) pp->prepend = MT_PREPEND_ALWAYS;
            else if (strcmp(scheme, "first") == 0) pp->prepend = MT_PREPEND_FIRST;
            else if (strcmp(scheme, "never") == 0) pp->prepend = MT_PREPEND_NEVER;
            else return mt_seterr(MT_ERR_UNSUPPORTED, "%s: Metaspace prepend_scheme '%s' is not supported", pp->name, scheme);
        } else {
            pp->prepend = jbool(n, "add_prefix_space", 1) ? MT_PREPEND_ALWAYS : MT_PREPEND_NEVER;
        }
        pp->prepend_unless_present = 1;
        pp->escape_ws = 1;
        pp->metaspace_split = jbool(n, "split", 1);
        return MT_OK;
    }
    return mt_seterr(MT_ERR_UNSUPPORTED, "%s: pre_tokenizer '%s' is not supported", pp->name, type);
}

typedef struct {
    const char *s;
    size_t len;
    int type;
    int set;
} slot;

/* BOS/EOS: the usual names among the control tokens (tokenizer_config.json,
 * read by mt_tok_load_hf_json, may override). */
static void guess_bos_eos(mt_tokenizer *t) {
    static const char *const bos_names[] = {"<s>", "<|begin_of_text|>", "<|startoftext|>", "<bos>"};
    static const char *const eos_names[] = {"</s>", "<|end_of_text|>", "<|endoftext|>", "<|im_end|>", "<eos>"};
    for (size_t i = 0; i < sizeof bos_names / sizeof *bos_names && t->bos < 0; i++) {
        int id = mt_tok_lookup(t, bos_names[i], strlen(bos_names[i]));
        if (id >= 0 && t->pieces[id].type == MT_PIECE_CONTROL) t->bos = id;
    }
    for (size_t i = 0; i < sizeof eos_names / sizeof *eos_names && t->eos < 0; i++) {
        int id = mt_tok_lookup(t, eos_names[i], strlen(eos_names[i]));
        if (id >= 0 && t->pieces[id].type == MT_PIECE_CONTROL) t->eos = id;
    }
}

/* ---- Unigram --------------------------------------------------------------- */

/* Standard base64 (padding optional, no whitespace) into a malloc'd buffer. */
static int base64_decode(const char *s, size_t n, uint8_t **out, size_t *out_len) {
    uint8_t *o = malloc(n / 4 * 3 + 3);
    if (!o) return -1;
    size_t k = 0;
    uint32_t acc = 0;
    int bits = 0;
    size_t i = 0;
    for (; i < n && s[i] != '='; i++) {
        const char c = s[i];
        int v = c >= 'A' && c <= 'Z' ? c - 'A' : c >= 'a' && c <= 'z' ? c - 'a' + 26 : c >= '0' && c <= '9' ? c - '0' + 52
                : c == '+' ? 62 : c == '/' ? 63 : -1;
        if (v < 0) { free(o); return -1; }
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            o[k++] = (uint8_t)(acc >> bits);
        }
    }
    for (; i < n; i++)
        if (s[i] != '=') { free(o); return -1; }
    *out = o;
    *out_len = k;
    return 0;
}

typedef struct {
    uint8_t *charsmap;
    size_t charsmap_len;
    int strip_right, collapse;
} uni_norm;

static int parse_uni_normalizer(json_t *n, uni_norm *un, const char *name, int depth) {
    if (json_is_null(n) || !n) return MT_OK;
    if (!json_is_object(n) || depth > 8) return mt_seterr(MT_ERR_FORMAT, "%s: normalizer is not an object", name);
    const char *type = jstr(n, "type", NULL);
    if (!type) return mt_seterr(MT_ERR_FORMAT, "%s: normalizer without a type", name);
    if (strcmp(type, "Sequence") == 0) {
        json_t *a = json_object_get(n, "normalizers");
        if (!json_is_array(a)) return mt_seterr(MT_ERR_FORMAT, "%s: normalizer Sequence without a normalizers array", name);
        for (size_t i = 0; i < json_array_size(a); i++) {
            int rc = parse_uni_normalizer(json_array_get(a, i), un, name, depth + 1);
            if (rc) return rc;
        }
        return MT_OK;
    }
    if (strcmp(type, "Precompiled") == 0) {
        json_t *c = json_object_get(n, "precompiled_charsmap");
        if (json_is_null(c) || !c) return MT_OK;
        if (!json_is_string(c)) return mt_seterr(MT_ERR_FORMAT, "%s: Precompiled.precompiled_charsmap is not a string", name);
        if (un->charsmap) return mt_seterr(MT_ERR_UNSUPPORTED, "%s: more than one Precompiled normalizer", name);
        if (base64_decode(json_string_value(c), json_string_length(c), &un->charsmap, &un->charsmap_len))
            return mt_seterr(MT_ERR_FORMAT, "%s: Precompiled.precompiled_charsmap is not base64", name);
        return MT_OK;
    }
    if (strcmp(type, "Strip") == 0) {
        if (jbool(n, "strip_left", 1) || !jbool(n, "strip_right", 1))
            return mt_seterr(MT_ERR_UNSUPPORTED, "%s: normalizer Strip other than right-only is not supported", name);
        un->strip_right = 1;
        return MT_OK;
    }
    if (strcmp(type, "Replace") == 0) {
        json_t *pat = json_object_get(n, "pattern");
        if (!json_is_object(pat) || !jis(pat, "Regex", " {2,}") || !jis(n, "content", SPS))
            return mt_seterr(MT_ERR_UNSUPPORTED, "%s: normalizer Replace other than \" {2,}\" -> U+2581 is not supported "
                             "with a Unigram model", name);
        un->collapse = 1;
        return MT_OK;
    }
    return mt_seterr(MT_ERR_UNSUPPORTED, "%s: normalizer '%s' is not supported with a Unigram model", name, type);
}

static int hf_build_unigram(mt_tokenizer **out, json_t *root, json_t *model, const char *name) {
    int rc;
    json_t *vocab = json_object_get(model, "vocab");
    if (!json_is_array(vocab)) return mt_seterr(MT_ERR_FORMAT, "%s: model.vocab of a Unigram model is not an array", name);
    const size_t nv = json_array_size(vocab);
    uni_norm un = {0};
    hf_pipe pp = {.name = name};
    mt_tokenizer *t = NULL;
    slot *sl = NULL;
    float *score = NULL;
    int32_t *spec = NULL;
    if ((rc = parse_uni_normalizer(json_object_get(root, "normalizer"), &un, name, 0))) goto done;
    if ((rc = parse_pretok(json_object_get(root, "pre_tokenizer"), &pp, 0))) goto done;
    if (pp.byte_level || pp.split) {
        rc = mt_seterr(MT_ERR_UNSUPPORTED, "%s: a Unigram model with a ByteLevel or Split pre-tokenizer is not supported", name);
        goto done;
    }
    if (un.strip_right != un.collapse) {
        rc = mt_seterr(MT_ERR_UNSUPPORTED, "%s: Strip(right) without Replace(\" {2,}\") or the reverse is not supported", name);
        goto done;
    }
    json_t *added = json_object_get(root, "added_tokens");
    if (added && !json_is_array(added) && !json_is_null(added)) {
        rc = mt_seterr(MT_ERR_FORMAT, "%s: added_tokens is not an array", name);
        goto done;
    }
    const size_t n_added = json_is_array(added) ? json_array_size(added) : 0;
    if (nv == 0 || nv + n_added > MT_TOK_MAX_VOCAB) {
        rc = mt_seterr(MT_ERR_FORMAT, "%s: Unigram vocabulary of %zu pieces (1 to %u)", name, nv, MT_TOK_MAX_VOCAB);
        goto done;
    }
    size_t n = nv;
    for (size_t i = 0; i < n_added; i++) {
        json_t *a = json_array_get(added, i), *id = json_object_get(a, "id");
        if (!json_is_object(a) || !json_is_integer(id) || json_integer_value(id) < 0 ||
            json_integer_value(id) >= (json_int_t)(nv + n_added) || !jstr(a, "content", NULL)) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s: added_tokens[%zu] needs an id (below %zu) and a content", name, i, nv + n_added);
            goto done;
        }
        if ((size_t)json_integer_value(id) + 1 > n) n = (size_t)json_integer_value(id) + 1;
    }
    sl = calloc(n, sizeof *sl);
    score = calloc(n, sizeof *score);
    spec = malloc((n_added ? n_added : 1) * sizeof *spec);
    if (!sl || !score || !spec) { rc = mt_seterr(MT_ERR_NOMEM, "%s: out of memory", name); goto done; }
    for (size_t i = 0; i < nv; i++) {
        json_t *e = json_array_get(vocab, i), *p = json_array_get(e, 0), *sc = json_array_get(e, 1);
        if (!json_is_array(e) || json_array_size(e) != 2 || !json_is_string(p) || !json_is_number(sc)) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s: model.vocab[%zu] is not a [piece, score] pair", name, i);
            goto done;
        }
        const double v = json_number_value(sc);
        if (!(v >= -1e30 && v <= 1e30)) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s: model.vocab[%zu] has score %g", name, i, v);
            goto done;
        }
        sl[i] = (slot){json_string_value(p), json_string_length(p), MT_PIECE_NORMAL, 1};
        score[i] = (float)v;
    }
    size_t n_spec = 0;
    for (size_t i = 0; i < n_added; i++) {
        json_t *a = json_array_get(added, i);
        size_t id = (size_t)json_integer_value(json_object_get(a, "id")), len = 0;
        const char *c = jstr(a, "content", &len);
        if (sl[id].set && (sl[id].len != len || memcmp(sl[id].s, c, len) != 0)) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s: added token %zu '%.64s' conflicts with vocab piece '%.64s'", name, id, c, sl[id].s);
            goto done;
        }
        sl[id] = (slot){c, len, jbool(a, "special", 0) ? MT_PIECE_CONTROL : MT_PIECE_USER_DEFINED, 1};
        spec[n_spec++] = (int32_t)id;
    }
    if ((rc = mt_tok_new(&t, MT_TOK_UNIGRAM))) goto done;
    for (size_t id = 0; id < n; id++)
        if ((rc = mt_tok_add_piece(t, sl[id].set ? sl[id].s : "", sl[id].set ? sl[id].len : 0, score[id],
                                   sl[id].set ? sl[id].type : MT_PIECE_UNUSED, name)))
            goto done;
    if ((rc = mt_tok_build_map(t, name))) goto done;
    json_t *unk = json_object_get(model, "unk_id");
    if (json_is_integer(unk)) {
        if (json_integer_value(unk) < 0 || (size_t)json_integer_value(unk) >= nv) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s: model.unk_id %lld is not a vocab id", name, (long long)json_integer_value(unk));
            goto done;
        }
        t->unk = (int)json_integer_value(unk);
        t->pieces[t->unk].type = MT_PIECE_UNKNOWN;
    } else if (unk && !json_is_null(unk)) {
        rc = mt_seterr(MT_ERR_FORMAT, "%s: model.unk_id is not an integer", name);
        goto done;
    }
    t->byte_fallback = jbool(model, "byte_fallback", 0);
    if (t->byte_fallback) mt_tok_find_byte_pieces(t, 1);
    if (un.charsmap && (rc = mt_tok_set_charsmap(t, un.charsmap, un.charsmap_len, name))) goto done;
    t->uni_hf = 1;
    t->split_specials = 1;
    t->remove_extra_ws = un.strip_right;
    t->prepend = pp.prepend;
    t->prepend_unless_present = pp.prepend_unless_present;
    t->escape_ws = pp.escape_ws;
    t->metaspace_split = pp.metaspace_split;
    if ((rc = mt_tok_set_specials(t, spec, n_spec))) goto done;
    mt_tok_finalize(t);
    mt_tok_unigram_scores(t);
    guess_bos_eos(t);
    *out = t;
    t = NULL;
done:
    mt_tok_free(t);
    free(un.charsmap);
    free(sl);
    free(score);
    free(spec);
    return rc;
}

static int hf_build(mt_tokenizer **out, json_t *root, const char *name) {
    int rc;
    json_t *model = json_object_get(root, "model");
    if (!json_is_object(model)) return mt_seterr(MT_ERR_FORMAT, "%s: no \"model\" object (not a tokenizer.json?)", name);
    const char *mtype = jstr(model, "type", NULL);
    if (mtype && strcmp(mtype, "Unigram") == 0) return hf_build_unigram(out, root, model, name);
    if (mtype && strcmp(mtype, "BPE") != 0)
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: model type '%s' is not supported (BPE and Unigram are)", name, mtype);
    json_t *vocab = json_object_get(model, "vocab"), *merges = json_object_get(model, "merges");
    if (!json_is_object(vocab)) return mt_seterr(MT_ERR_FORMAT, "%s: model.vocab is not an object", name);
    if (!json_is_array(merges)) return mt_seterr(MT_ERR_FORMAT, "%s: model.merges is not an array", name);
    json_t *dropout = json_object_get(model, "dropout");
    if (json_is_number(dropout) && json_number_value(dropout) != 0.0)
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: BPE dropout is not supported", name);
    const char *csp = jstr(model, "continuing_subword_prefix", NULL), *eow = jstr(model, "end_of_word_suffix", NULL);
    if ((csp && *csp) || (eow && *eow))
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: BPE continuing_subword_prefix / end_of_word_suffix are not supported", name);

    hf_pipe pp = {.name = name};
    if ((rc = parse_normalizer(json_object_get(root, "normalizer"), &pp, 0))) return rc;
    if ((rc = parse_pretok(json_object_get(root, "pre_tokenizer"), &pp, 0))) return rc;
    if (pp.byte_level && (pp.escape_ws || pp.prepend))
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: byte-level BPE combined with U+2581 normalisation is not supported", name);

    /* ids */
    json_t *added = json_object_get(root, "added_tokens");
    if (added && !json_is_array(added) && !json_is_null(added))
        return mt_seterr(MT_ERR_FORMAT, "%s: added_tokens is not an array", name);
    size_t n_added = json_is_array(added) ? json_array_size(added) : 0;
    size_t n_vocab_entries = json_object_size(vocab);
    if (n_vocab_entries + n_added > MT_TOK_MAX_VOCAB) return mt_seterr(MT_ERR_FORMAT, "%s: vocabulary too large", name);
    int64_t max_id = -1;
    const char *key;
    json_t *val;
    json_object_foreach(vocab, key, val) {
        if (!json_is_integer(val) || json_integer_value(val) < 0 || json_integer_value(val) >= MT_TOK_MAX_VOCAB)
            return mt_seterr(MT_ERR_FORMAT, "%s: vocab entry '%.64s' has no valid id", name, key);
        if (json_integer_value(val) > max_id) max_id = json_integer_value(val);
    }
    for (size_t i = 0; i < n_added; i++) {
        json_t *a = json_array_get(added, i), *id = json_object_get(a, "id");
        if (!json_is_object(a) || !json_is_integer(id) || json_integer_value(id) < 0 ||
            json_integer_value(id) >= MT_TOK_MAX_VOCAB || !jstr(a, "content", NULL))
            return mt_seterr(MT_ERR_FORMAT, "%s: added_tokens[%zu] needs an id and a content", name, i);
        if (json_integer_value(id) > max_id) max_id = json_integer_value(id);
    }
    size_t n = (size_t)(max_id + 1);
    if (n == 0) return mt_seterr(MT_ERR_FORMAT, "%s: the vocabulary is empty", name);
    if (n > 2 * (n_vocab_entries + n_added) + 1024)
        return mt_seterr(MT_ERR_FORMAT, "%s: ids run to %zu for %zu entries", name, n - 1, n_vocab_entries + n_added);
    slot *sl = calloc(n, sizeof *sl);
    int32_t *spec = malloc((n_added ? n_added : 1) * sizeof *spec);
    const char **ml = NULL, **mr = NULL;
    size_t *mll = NULL, *mrl = NULL;
    mt_tokenizer *t = NULL;
    size_t n_spec = 0;
    if (!sl || !spec) { rc = mt_seterr(MT_ERR_NOMEM, "%s: out of memory", name); goto done; }
    json_object_foreach(vocab, key, val) {
        size_t id = (size_t)json_integer_value(val);
        if (sl[id].set) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s: id %zu is given to both '%.64s' and '%.64s'", name, id, sl[id].s, key);
            goto done;
        }
        sl[id] = (slot){key, strlen(key), MT_PIECE_NORMAL, 1};
    }
    for (size_t i = 0; i < n_added; i++) {
        json_t *a = json_array_get(added, i);
        size_t id = (size_t)json_integer_value(json_object_get(a, "id")), len = 0;
        const char *c = jstr(a, "content", &len);
        int type = jbool(a, "special", 0) ? MT_PIECE_CONTROL : MT_PIECE_USER_DEFINED;
        if (sl[id].set && (sl[id].len != len || memcmp(sl[id].s, c, len) != 0)) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s: added token %zu '%.64s' conflicts with vocab piece '%.64s'", name, id, c, sl[id].s);
            goto done;
        }
        sl[id] = (slot){c, len, type, 1};
        spec[n_spec++] = (int32_t)id;
    }
    if ((rc = mt_tok_new(&t, pp.byte_level ? MT_TOK_GPT2 : MT_TOK_SPM))) goto done;
    for (size_t id = 0; id < n; id++) {
        if ((rc = mt_tok_add_piece(t, sl[id].set ? sl[id].s : "", sl[id].set ? sl[id].len : 0, 0.0f,
                                   sl[id].set ? sl[id].type : MT_PIECE_UNUSED, name)))
            goto done;
    }
    if ((rc = mt_tok_build_map(t, name))) goto done;

    /* merges */
    size_t nm = json_array_size(merges);
    ml = calloc(nm + 1, sizeof *ml);
    mr = calloc(nm + 1, sizeof *mr);
    mll = calloc(nm + 1, sizeof *mll);
    mrl = calloc(nm + 1, sizeof *mrl);
    if (!ml || !mr || !mll || !mrl) { rc = mt_seterr(MT_ERR_NOMEM, "%s: out of memory", name); goto done; }
    int pairs = -1;
    for (size_t i = 0; i < nm; i++) {
        json_t *m = json_array_get(merges, i);
        int is_pair = json_is_array(m);
        if (pairs < 0) pairs = is_pair;
        if (is_pair != pairs) { rc = mt_seterr(MT_ERR_FORMAT, "%s: merges mix strings and pairs (entry %zu)", name, i); goto done; }
        if (is_pair) {
            json_t *a = json_array_get(m, 0), *b = json_array_get(m, 1);
            if (json_array_size(m) != 2 || !json_is_string(a) || !json_is_string(b)) {
                rc = mt_seterr(MT_ERR_FORMAT, "%s: merges[%zu] is not a pair of strings", name, i);
                goto done;
            }
            ml[i] = json_string_value(a); mll[i] = json_string_length(a);
            mr[i] = json_string_value(b); mrl[i] = json_string_length(b);
        } else {
            if (!json_is_string(m)) { rc = mt_seterr(MT_ERR_FORMAT, "%s: merges[%zu] is not a string", name, i); goto done; }
            ml[i] = json_string_value(m); mll[i] = json_string_length(m);
        }
    }
    if ((rc = mt_tok_set_merges(t, nm, ml, mll, pairs == 1 ? mr : NULL, mrl, name))) goto done;
    t->rank_mode = 1;
    t->byte_fallback = jbool(model, "byte_fallback", 0);
    t->fuse_unk = jbool(model, "fuse_unk", 0);
    t->ignore_merges = jbool(model, "ignore_merges", 0);
    size_t ul;
    const char *unk = jstr(model, "unk_token", &ul);
    if (unk) {
        t->unk = mt_tok_lookup(t, unk, ul);
        if (t->unk < 0) { rc = mt_seterr(MT_ERR_FORMAT, "%s: unk_token '%.64s' is not in the vocabulary", name, unk); goto done; }
        t->pieces[t->unk].type = MT_PIECE_UNKNOWN;
    }
    if (t->byte_fallback) mt_tok_find_byte_pieces(t, 1);
    if (pp.byte_level) {
        t->split = pp.split;
        t->add_prefix_space = pp.add_prefix_space;
        t->escape_ws = 0;
        if ((rc = mt_tok_init_byte_level(t, name))) goto done;
    } else {
        t->prepend = pp.prepend;
        t->prepend_unless_present = pp.prepend_unless_present;
        t->escape_ws = pp.escape_ws;
        t->metaspace_split = pp.metaspace_split;
        if (pp.split) { rc = mt_seterr(MT_ERR_UNSUPPORTED, "%s: a Split pre-tokenizer without ByteLevel is not supported", name); goto done; }
        mt_tok_synth_scores(t);
    }
    if ((rc = mt_tok_set_specials(t, spec, n_spec))) goto done;
    mt_tok_finalize(t);
    guess_bos_eos(t);
    *out = t;
    t = NULL;
done:
    mt_tok_free(t);
    free(sl);
    free(spec);
    free(ml);
    free(mr);
    free(mll);
    free(mrl);
    return rc;
}

int mt_tok_parse_hf_json(mt_tokenizer **out, const char *text, size_t len, const char *name) {
    if (!out || (!text && len)) return mt_seterr(MT_ERR_ARG, "mt_tok_parse_hf_json: NULL argument");
    if (!name) name = "tokenizer.json";
    *out = NULL;
    json_error_t err;
    json_t *root = json_loadb(text ? text : "", len, JSON_REJECT_DUPLICATES, &err);
    if (!root)
        return mt_seterr(MT_ERR_FORMAT, "%s: invalid JSON at line %d column %d: %s", name, err.line, err.column, err.text);
    int rc;
    if (!json_is_object(root)) rc = mt_seterr(MT_ERR_FORMAT, "%s: top level is not a JSON object", name);
    else rc = hf_build(out, root, name);
    json_decref(root);
    return rc;
}

/* bos_token / eos_token of tokenizer_config.json: a string or {"content": s}. */
static void config_special(mt_tokenizer *t, json_t *cfg, const char *key, int *dst) {
    json_t *v = json_object_get(cfg, key);
    if (json_is_object(v)) v = json_object_get(v, "content");
    if (!json_is_string(v)) return;
    int id = mt_tok_lookup(t, json_string_value(v), json_string_length(v));
    if (id >= 0) *dst = id;
}

void mt_tok_apply_hf_config(mt_tokenizer *t, const char *text, size_t len) {
    json_error_t err;
    json_t *cfg = json_loadb(text ? text : "", len, 0, &err);
    if (json_is_object(cfg)) {
        config_special(t, cfg, "bos_token", &t->bos);
        config_special(t, cfg, "eos_token", &t->eos);
    }
    json_decref(cfg);
}

int mt_tok_load_hf_json(mt_tokenizer **out, const char *path) {
    if (!out || !path) return mt_seterr(MT_ERR_ARG, "mt_tok_load_hf_json: NULL argument");
    mt_mapped m;
    int rc = mt_map_file(&m, path);
    if (rc) return rc;
    rc = mt_tok_parse_hf_json(out, m.data, m.size, path);
    mt_unmap_file(&m);
    if (rc) return rc;
    char *dir = mt_path_dir(path);
    char *cfg_path = dir ? mt_path_join(dir, "tokenizer_config.json") : NULL;
    if (cfg_path && mt_path_exists(cfg_path)) {
        /* Mapped, not json_load_file: a FIFO here is refused, not waited on. */
        if ((rc = mt_map_file(&m, cfg_path)) == MT_OK) {
            mt_tok_apply_hf_config(*out, (const char *)m.data, m.size);
            mt_unmap_file(&m);
        }
    }
    free(dir);
    free(cfg_path);
    if (rc) {
        mt_tok_free(*out);
        *out = NULL;
        return rc;
    }
    mt_clearerr();
    return MT_OK;
}
