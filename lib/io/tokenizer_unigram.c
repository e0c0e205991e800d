/* tokenizer_unigram.c — sentencepiece unigram models (T5's spiece.model,
 * tokenizer.json "Unigram"): the precompiled-charsmap normaliser, the
 * Viterbi segmentation by piece scores, and decoding. The readers
 * (tokenizer_spm.c, tokenizer_hf.c) fill the vocabulary; this file follows
 * sentencepiece's normalizer.cc, unigram_model.cc (EncodeOptimized) and
 * sentencepiece_processor.cc (unknown runs, byte fallback, Decode).
 * Byte layout of the charsmap below; the protobuf and JSON that carry it
 * are described in tokenizer_spm.c and tokenizer_hf.c.
 *
 * Precompiled charsmap (NormalizerSpec.precompiled_charsmap, the base64
 * "precompiled_charsmap" of an HF "Precompiled" normaliser):
 *   u32 LE  trie_size (bytes, a multiple of 4)
 *   trie    trie_size / 4 u32 LE units of a darts-clone double array
 *   strings the replacement strings, each NUL-terminated; a leaf's value is
 *           the offset of its string here
 * Unit bits: has_leaf = bit 8; offset = (u >> 10) << ((u & 0x200) >> 6);
 * label = u & 0x800000FF (value units have bit 31 set, so no byte matches
 * them); value = u & 0x7FFFFFFF. Looking up text s: id = offset(unit[0]);
 * for each byte c: id ^= c, stop unless label(unit[id]) == c, id ^=
 * offset(unit[id]); when that unit has a leaf, s[0..i] is a key whose
 * value is unit[id].value. The longest of the first 32 keys wins; no key:
 * the next UTF-8 character is kept (an invalid byte becomes U+FFFD).
 * Checked at load: every unit reachable from the root through a non-NUL
 * byte lies inside the array and is reached once, every leaf's value lies
 * inside the strings with a NUL before their end. Lookups check every unit
 * index and value again (a NUL byte in the text can reach units the load
 * did not walk), and the strings get a NUL after their end, so no input
 * makes a lookup leave the blob.
 *
 * Normalisation, sentencepiece (spiece.model): leading characters that
 * normalise to " " are dropped (remove_extra_whitespaces), U+2581 is
 * prepended (add_dummy_prefix), each normalised prefix loses its leading
 * spaces after a space, spaces become U+2581 (escape_whitespaces), trailing
 * U+2581 are dropped. tokenizer.json (T5Converter's pipeline): literal
 * special tokens are cut out first; each segment goes through the charsmap,
 * loses trailing White_Space (Strip right), runs of 2+ spaces become one
 * U+2581 (Replace " {2,}"), spaces become U+2581 and U+2581 is prepended
 * unless present (Metaspace), and each word (from one U+2581 to the next)
 * is segmented alone. HF's Precompiled applies the charsmap per grapheme
 * cluster taking the shortest key; moetool uses sentencepiece's longest
 * match for both (they agree on every fixture case: docs/seq2seq.md).
 *
 * Viterbi: best[i] = max over pieces p ending at i of best[start] +
 * score(p); a position with no one-character piece also gets an unknown
 * node scoring min_score - 10 (a float, as sentencepiece computes it); path
 * scores are summed in double. Ties keep the earlier start. Consecutive
 * unknowns are one <unk> (or, with byte fallback, each byte's <0xXX>). */
#include "tokenizer_impl.h"

#include "io_impl.h"

#include <float.h>
#include <stdlib.h>
#include <string.h>

/* ---- the charsmap --------------------------------------------------------- */

static inline uint32_t u_offset(uint32_t u) { return (u >> 10) << ((u & (1u << 9)) >> 6); }
static inline uint32_t u_label(uint32_t u) { return u & ((1u << 31) | 0xFFu); }
static inline int u_has_leaf(uint32_t u) { return (u >> 8) & 1; }
static inline uint32_t u_value(uint32_t u) { return u & ((1u << 31) - 1); }

static uint32_t rd32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }

int mt_tok_set_charsmap(mt_tokenizer *t, const void *blob, size_t len, const char *name) {
    const uint8_t *b = blob;
    if (len <= 4) return mt_seterr(MT_ERR_FORMAT, "%s: precompiled charsmap of %zu bytes is too short", name, len);
    const uint32_t trie = rd32(b);
    if (trie == 0 || trie % 4 || trie > len - 4)
        return mt_seterr(MT_ERR_FORMAT, "%s: precompiled charsmap: trie size %u does not fit its %zu bytes (or is not a "
                         "multiple of 4)", name, trie, len);
    const size_t n = trie / 4, norm_len = len - 4 - trie;
    uint32_t *u = malloc(n * sizeof *u);
    char *norm = malloc(norm_len + 1);
    uint8_t *seen = calloc(n, 1);
    uint32_t *stack = malloc(n * sizeof *stack);
    int rc = MT_OK;
    if (!u || !norm || !seen || !stack) {
        rc = mt_seterr(MT_ERR_NOMEM, "%s: out of memory", name);
        goto done;
    }
    for (size_t i = 0; i < n; i++) u[i] = rd32(b + 4 + 4 * i);
    if (norm_len) memcpy(norm, b + 4 + trie, norm_len);
    norm[norm_len] = 0;
    /* every node reachable from the root: children in range, each once,
     * leaves pointing at a terminated string */
    size_t sp = 0;
    stack[sp++] = 0;
    seen[0] = 1;
    while (sp) {
        const uint32_t id = stack[--sp];
        const uint32_t base = id ^ u_offset(u[id]);
        if (u_has_leaf(u[id]) && id != 0) {
            if (base >= n) {
                rc = mt_seterr(MT_ERR_FORMAT, "%s: precompiled charsmap: unit %u's leaf at %u is outside the %zu units",
                               name, id, base, n);
                goto done;
            }
            const uint32_t v = u_value(u[base]);
            if (v >= norm_len || !memchr(norm + v, 0, norm_len - v)) {
                rc = mt_seterr(MT_ERR_FORMAT, "%s: precompiled charsmap: unit %u's replacement at %u is outside the %zu "
                               "bytes of strings (or unterminated)", name, id, v, norm_len);
                goto done;
            }
        }
        if ((base & ~0xFFu) >= n) continue; /* no child can be in range */
        for (uint32_t c = 1; c < 256; c++) { /* label 0 is where leaves sit */
            const uint32_t ch = base ^ c;
            if (ch >= n || u_label(u[ch]) != c) continue;
            if (seen[ch]) {
                rc = mt_seterr(MT_ERR_FORMAT, "%s: precompiled charsmap: unit %u is reached twice (not a trie)", name, ch);
                goto done;
            }
            seen[ch] = 1;
            stack[sp++] = ch;
        }
    }
    free(t->cm_units);
    free(t->cm_norm);
    t->cm_units = u;
    t->cm_n_units = n;
    t->cm_norm = norm;
    t->cm_norm_len = norm_len;
    u = NULL;
    norm = NULL;
done:
    free(u);
    free(norm);
    free(seen);
    free(stack);
    return rc;
}

void mt_tok_unigram_scores(mt_tokenizer *t) {
    float lo = FLT_MAX, hi = FLT_MIN; /* sentencepiece's starting values */
    for (size_t i = 0; i < t->n_vocab; i++) {
        const mt_tok_piece_rec *p = &t->pieces[i];
        if (t->uni_hf ? p->type == MT_PIECE_UNUSED : p->type != MT_PIECE_NORMAL) continue;
        if (p->score < lo) lo = p->score;
        if (p->score > hi) hi = p->score;
    }
    t->uni_min_score = lo;
    t->uni_max_score = hi;
}

/* sentencepiece string_util::OneCharLen: the length a lead byte announces. */
static size_t one_char_len(unsigned char c) { return (size_t)"\1\1\1\1\1\1\1\1\1\1\1\1\2\2\3\4"[c >> 4]; }

/* The normalised form of the longest prefix of s[0..n) (n > 0): *rep and
 * *rep_len; returns the bytes consumed (>= 1). */
static size_t norm_prefix(const mt_tokenizer *t, const char *s, size_t n, int user_defined, const char **rep,
                          size_t *rep_len) {
    if (user_defined && t->n_specials) { /* sentencepiece: user-defined pieces pass as they are */
        size_t sl;
        if (mt_tok_match_special(t, s, n, &sl) >= 0) {
            *rep = s;
            *rep_len = sl;
            return sl;
        }
    }
    if (t->cm_units) {
        const uint32_t *u = t->cm_units;
        const size_t nu = t->cm_n_units;
        size_t longest = 0, found = 0;
        uint32_t value = 0, id = u_offset(u[0]);
        for (size_t i = 0; i < n; i++) {
            const unsigned char c = (unsigned char)s[i];
            id ^= c;
            if (id >= nu || u_label(u[id]) != c) break;
            const int leaf = u_has_leaf(u[id]);
            id ^= u_offset(u[id]);
            if (leaf) {
                if (id >= nu) break; /* checked at load; kept as a guard */
                if (found++ < 32) {
                    longest = i + 1;
                    value = u_value(u[id]);
                }
            }
        }
        if (longest && value < t->cm_norm_len) {
            *rep = t->cm_norm + value;
            *rep_len = strlen(*rep); /* terminated inside cm_norm (checked at load) */
            return longest;
        }
    }
    uint32_t cp;
    int l = mt_utf8_decode((const unsigned char *)s, n, &cp);
    if (!l) {
        *rep = "\xEF\xBF\xBD";
        *rep_len = 3;
        return 1;
    }
    *rep = s;
    *rep_len = (size_t)l;
    return (size_t)l;
}

/* ---- work buffers -------------------------------------------------------- */

typedef struct {
    char *p;
    size_t n, cap;
} sbuf;

static int sput(sbuf *b, const char *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 256;
        while (c < b->n + n + 1) c *= 2;
        char *q = realloc(b->p, c);
        if (!q) return mt_seterr(MT_ERR_NOMEM, "tokenizer: out of memory normalising text");
        b->p = q;
        b->cap = c;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    return MT_OK;
}

static const char SPS[] = "\xE2\x96\x81"; /* U+2581 */

typedef struct {
    const mt_tokenizer *t;
    sbuf norm, tmp;
    double *best;     /* [cap] path score ending at a byte position */
    int64_t *start;   /* [cap] start of its last piece, -1: none yet */
    int32_t *node;    /* [cap] its piece id; -2: an unknown character */
    int32_t *path;    /* [cap] backtracked ids */
    size_t cap;
    int32_t *ids;
    size_t ids_cap, n;
    int prev_unk;
} uwork;

static void emit(uwork *w, int32_t id) {
    if (w->n < w->ids_cap) w->ids[w->n] = id;
    w->n++;
}

/* sentencepiece Normalizer::Normalize into w->norm. */
static int sp_normalize(uwork *w, const char *s, size_t n) {
    const mt_tokenizer *t = w->t;
    const char *rep;
    size_t rl, i = 0;
    int rc;
    w->norm.n = 0;
    if (t->remove_extra_ws)
        while (i < n) {
            size_t c = norm_prefix(t, s + i, n - i, 1, &rep, &rl);
            if (!(rl == 1 && rep[0] == ' ')) break;
            i += c;
        }
    if (i == n) return MT_OK;
    const char *space = t->escape_ws ? SPS : " ";
    const size_t space_len = t->escape_ws ? 3 : 1;
    if (t->prepend != MT_PREPEND_NEVER && (rc = sput(&w->norm, space, space_len))) return rc;
    int prev_space = t->remove_extra_ws;
    while (i < n) {
        size_t c = norm_prefix(t, s + i, n - i, 1, &rep, &rl);
        while (prev_space && rl && rep[0] == ' ') rep++, rl--;
        if (rl) {
            for (size_t k = 0; k < rl; k++)
                if ((rc = rep[k] == ' ' ? sput(&w->norm, space, space_len) : sput(&w->norm, rep + k, 1))) return rc;
            prev_space = rep[rl - 1] == ' ';
        }
        i += c;
        if (!t->remove_extra_ws) prev_space = 0;
    }
    if (t->remove_extra_ws)
        while (w->norm.n >= space_len && memcmp(w->norm.p + w->norm.n - space_len, space, space_len) == 0)
            w->norm.n -= space_len;
    return MT_OK;
}

int mt_tok_sp_normalize(const mt_tokenizer *t, const char *s, size_t n, char **buf, size_t *cap, size_t *len) {
    uwork w = {0};
    w.t = t;
    w.norm.p = *buf;
    w.norm.cap = *cap;
    int rc = sp_normalize(&w, s, n);
    *buf = w.norm.p;
    *cap = w.norm.cap;
    *len = w.norm.n;
    return rc;
}

/* Unicode White_Space (Rust char::is_whitespace, HF Strip). */
static int is_ws(uint32_t cp) {
    return (cp >= 9 && cp <= 13) || cp == 32 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
           cp == 0x3000;
}

/* The tokenizer.json pipeline of one segment into w->norm (see the top). */
static int hf_normalize(uwork *w, const char *s, size_t n, int at_start) {
    const mt_tokenizer *t = w->t;
    const char *rep;
    size_t rl, i = 0;
    int rc;
    w->tmp.n = 0;
    w->norm.n = 0;
    if (!t->cm_units && (rc = sput(&w->tmp, s, n))) return rc;
    while (t->cm_units && i < n) { /* Precompiled */
        i += norm_prefix(t, s + i, n - i, 0, &rep, &rl);
        if ((rc = sput(&w->tmp, rep, rl))) return rc;
    }
    if (t->remove_extra_ws) { /* Strip(right) */
        while (w->tmp.n) {
            size_t k = w->tmp.n - 1;
            while (k > 0 && ((unsigned char)w->tmp.p[k] & 0xC0) == 0x80 && w->tmp.n - k < 4) k--;
            uint32_t cp;
            int l = mt_utf8_decode((const unsigned char *)w->tmp.p + k, w->tmp.n - k, &cp);
            if (l == 0 || (size_t)l != w->tmp.n - k || !is_ws(cp)) break;
            w->tmp.n = k;
        }
    }
    if (w->tmp.n == 0) return MT_OK;
    const char *p = w->tmp.p;
    const size_t m = w->tmp.n;
    int pre = t->prepend == MT_PREPEND_ALWAYS || (t->prepend == MT_PREPEND_FIRST && at_start);
    if (pre && t->prepend_unless_present && (p[0] == ' ' || (m >= 3 && memcmp(p, SPS, 3) == 0))) pre = 0;
    if (pre && (rc = sput(&w->norm, SPS, 3))) return rc;
    for (size_t k = 0; k < m; k++) {
        if (p[k] != ' ') {
            if ((rc = sput(&w->norm, p + k, 1))) return rc;
            continue;
        }
        if (t->remove_extra_ws && k + 1 < m && p[k + 1] == ' ') /* Replace(" {2,}", U+2581) */
            while (k + 1 < m && p[k + 1] == ' ') k++;
        if ((rc = sput(&w->norm, t->escape_ws ? SPS : " ", t->escape_ws ? 3 : 1))) return rc;
    }
    return MT_OK;
}

static int grow_work(uwork *w, size_t m) {
    if (m + 1 <= w->cap) return MT_OK;
    size_t c = w->cap ? w->cap : 256;
    while (c < m + 1) c *= 2;
    double *b = realloc(w->best, c * sizeof *b);
    if (b) w->best = b;
    int64_t *s = realloc(w->start, c * sizeof *s);
    if (s) w->start = s;
    int32_t *nd = realloc(w->node, c * sizeof *nd);
    if (nd) w->node = nd;
    int32_t *pa = realloc(w->path, c * sizeof *pa);
    if (pa) w->path = pa;
    if (!b || !s || !nd || !pa) return mt_seterr(MT_ERR_NOMEM, "tokenizer: out of memory segmenting %zu bytes", m);
    w->cap = c;
    return MT_OK;
}

static int no_unk(void) {
    return mt_seterr(MT_ERR_ARG, "tokenizer: the text has a character that the vocabulary cannot encode "
                                 "(no byte fallback and no unknown token)");
}

/* The emitted form of one unknown span s[0..l). */
static int emit_unk(uwork *w, const char *s, size_t l) {
    const mt_tokenizer *t = w->t;
    if (t->byte_fallback) {
        int all = 1;
        for (size_t k = 0; k < l && all; k++) all = t->byte_id[(unsigned char)s[k]] >= 0;
        if (all) {
            for (size_t k = 0; k < l; k++) emit(w, t->byte_id[(unsigned char)s[k]]);
            w->prev_unk = 0;
            return MT_OK;
        }
    }
    if (t->unk < 0) return no_unk();
    if (!w->prev_unk) emit(w, t->unk); /* a run of unknowns is one <unk> */
    w->prev_unk = 1;
    return MT_OK;
}

/* Best segmentation of s[0..m) (normalised), emitted. */
static int viterbi(uwork *w, const char *s, size_t m) {
    const mt_tokenizer *t = w->t;
    int rc;
    if (m == 0) return MT_OK;
    if ((rc = grow_work(w, m))) return rc;
    const int hf = t->uni_hf;
    const float unk_score = t->uni_min_score - 10.0f;
    for (size_t i = 0; i <= m; i++) w->start[i] = -1;
    w->best[0] = 0;
    w->prev_unk = 0; /* unknowns fuse within one segmentation */
    for (size_t i = 0; i < m;) {
        const size_t mblen = one_char_len((unsigned char)s[i]) < m - i ? one_char_len((unsigned char)s[i]) : m - i;
        const double till = w->best[i];
        int single = 0;
        uint64_t h = MT_TOK_HASH0;
        for (size_t k = i; k < m && k - i < t->max_len; k++) {
            h = mt_tok_hash_step(h, (unsigned char)s[k]);
            const size_t len = k + 1 - i;
            const int id = mt_tok_lookup_hashed(t, s + i, len, h);
            if (id < 0) continue;
            const int ty = t->pieces[id].type;
            /* path scores in double, as both libraries sum them (float
             * storage of the sums would pick another of two near-equal
             * segmentations once the sums are large: checked on the whole
             * of test.txt against sentencepiece, cli_tokenize_unigram) */
            double cand;
            if (hf) {
                if (ty == MT_PIECE_UNUSED) continue;
                cand = (double)t->pieces[id].score + till;
            } else if (ty == MT_PIECE_NORMAL) {
                cand = (double)t->pieces[id].score + till;
            } else if (ty == MT_PIECE_USER_DEFINED) {
                cand = (double)((float)len * t->uni_max_score) - 0.1 + till;
            } else {
                continue; /* UNUSED, CONTROL, UNKNOWN, BYTE: not in sentencepiece's trie */
            }
            if (w->start[k + 1] < 0 || cand > w->best[k + 1]) {
                w->best[k + 1] = cand;
                w->start[k + 1] = (int64_t)i;
                w->node[k + 1] = id;
            }
            if (len == mblen) single = 1;
        }
        if (!single) {
            const double cand = (double)unk_score + till;
            if (w->start[i + mblen] < 0 || cand > w->best[i + mblen]) {
                w->best[i + mblen] = cand;
                w->start[i + mblen] = (int64_t)i;
                w->node[i + mblen] = -2;
            }
        }
        i += mblen;
    }
    /* backtrack */
    size_t np = 0;
    for (size_t e = m; e > 0;) {
        if (w->start[e] < 0) return mt_seterr(MT_ERR_INTERNAL, "tokenizer: no segmentation reaches byte %zu", e);
        w->path[np++] = (int32_t)e;
        e = (size_t)w->start[e];
    }
    while (np) {
        const size_t e = (size_t)w->path[--np], b = (size_t)w->start[e];
        const int32_t id = w->node[e];
        if (id == -2 || id == t->unk) {
            if ((rc = emit_unk(w, s + b, e - b))) return rc;
        } else {
            emit(w, id);
            w->prev_unk = 0;
        }
    }
    return MT_OK;
}

/* Segments w->norm, word by word when the pipeline splits at U+2581. */
static int segment_norm(uwork *w) {
    const char *p = w->norm.p;
    const size_t m = w->norm.n;
    int rc;
    if (!w->t->uni_hf || !w->t->metaspace_split) return viterbi(w, p, m);
    size_t w0 = 0;
    for (size_t i = 3; i + 3 <= m; i++) {
        if (memcmp(p + i, SPS, 3) == 0) {
            if ((rc = viterbi(w, p + w0, i - w0))) return rc;
            w0 = i;
            i += 2;
        }
    }
    return viterbi(w, p + w0, m - w0);
}

static int encode_segment(uwork *w, const char *s, size_t n, int at_start) {
    int rc = w->t->uni_hf ? hf_normalize(w, s, n, at_start) : sp_normalize(w, s, n);
    return rc ? rc : segment_norm(w);
}

int mt_tok_unigram_encode(const mt_tokenizer *t, const char *text, size_t len, int32_t *ids, size_t cap, size_t *n) {
    uwork w = {0};
    w.t = t;
    w.ids = ids;
    w.ids_cap = cap;
    int rc = MT_OK;
    if (t->split_specials && t->n_specials) { /* HF added tokens first, on the raw text */
        size_t seg = 0, i = 0;
        while (i < len && rc == MT_OK) {
            size_t sl;
            int id = mt_tok_match_special(t, text + i, len - i, &sl);
            if (id < 0) {
                i++;
                continue;
            }
            if (i > seg) rc = encode_segment(&w, text + seg, i - seg, seg == 0);
            emit(&w, id);
            i += sl;
            seg = i;
        }
        if (rc == MT_OK && len > seg) rc = encode_segment(&w, text + seg, len - seg, seg == 0);
    } else {
        rc = encode_segment(&w, text ? text : "", len, 1);
    }
    free(w.norm.p);
    free(w.tmp.p);
    free(w.best);
    free(w.start);
    free(w.node);
    free(w.path);
    if (rc == MT_OK) *n = w.n;
    return rc;
}

/* ---- decoding ------------------------------------------------------------- */

static int byte_of_piece(const char *s, size_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        const char c = s[i];
        const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* A run of byte pieces: valid UTF-8 as it is, each invalid byte as U+FFFD. */
static int flush_bytes(sbuf *out, sbuf *bytes) {
    int rc = MT_OK;
    size_t i = 0;
    while (i < bytes->n && rc == MT_OK) {
        uint32_t cp;
        int l = mt_utf8_decode((const unsigned char *)bytes->p + i, bytes->n - i, &cp);
        if (l) {
            rc = sput(out, bytes->p + i, (size_t)l);
            i += (size_t)l;
        } else {
            rc = sput(out, "\xEF\xBF\xBD", 3);
            i++;
        }
    }
    bytes->n = 0;
    return rc;
}

int mt_tok_unigram_decode(const mt_tokenizer *t, const int32_t *ids, size_t n, int strip_leading_space, char **out,
                          size_t *out_len) {
    sbuf o = {0}, bytes = {0};
    int rc = sput(&o, "", 0);
    /* sentencepiece Decode: while nothing has been written, a piece loses
     * its leading U+2581 (add_dummy_prefix / remove_extra_whitespaces) */
    const int strip = strip_leading_space && (t->prepend != MT_PREPEND_NEVER || t->remove_extra_ws);
    int bos_ws = 1, bos_ws_seen = 0;
    for (size_t i = 0; i < n && rc == MT_OK; i++) {
        if (ids[i] < 0 || (size_t)ids[i] >= t->n_vocab) {
            rc = mt_seterr(MT_ERR_ARG, "tokenizer: token id %d out of range (vocabulary %zu)", ids[i], t->n_vocab);
            break;
        }
        const mt_tok_piece_rec *p = &t->pieces[ids[i]];
        const char *s = t->pool + p->off;
        size_t len = p->len;
        if (p->type == MT_PIECE_BYTE) {
            int b = byte_of_piece(s, len);
            if (b >= 0) {
                char c = (char)b;
                rc = sput(&bytes, &c, 1);
                continue;
            }
        }
        if ((rc = flush_bytes(&o, &bytes))) break;
        if (bos_ws_seen || o.n) bos_ws = 0;
        bos_ws_seen = 0;
        if (p->type == MT_PIECE_CONTROL) continue;
        if (p->type == MT_PIECE_UNKNOWN) {
            rc = sput(&o, MT_TOK_UNK_SURFACE, sizeof MT_TOK_UNK_SURFACE - 1);
            continue;
        }
        if (strip && bos_ws && len >= 3 && memcmp(s, SPS, 3) == 0) {
            s += 3;
            len -= 3;
            bos_ws_seen = !t->remove_extra_ws; /* with it, every leading U+2581 goes */
        }
        size_t a = 0;
        for (size_t k = 0; k + 3 <= len && rc == MT_OK;) {
            if (t->escape_ws && memcmp(s + k, SPS, 3) == 0) {
                rc = sput(&o, s + a, k - a);
                if (!rc) rc = sput(&o, " ", 1);
                k += 3;
                a = k;
            } else {
                k++;
            }
        }
        if (!rc) rc = sput(&o, s + a, len - a);
    }
    if (!rc) rc = flush_bytes(&o, &bytes);
    free(bytes.p);
    if (rc) {
        free(o.p);
        return rc;
    }
    o.p[o.n] = 0;
    *out = o.p;
    if (out_len) *out_len = o.n;
    return MT_OK;
}

/* ---- T5Tokenizer's sentinels -------------------------------------------- */

int mt_tok_add_extra_ids(mt_tokenizer *t, int n, const char *name) {
    if (n <= 0) return MT_OK;
    if (n > 100000) return mt_seterr(MT_ERR_FORMAT, "%s: extra_ids %d is out of range", name, n);
    int32_t *ids = malloc(((size_t)n + t->n_specials) * sizeof *ids);
    if (!ids) return mt_seterr(MT_ERR_NOMEM, "%s: out of memory", name);
    size_t k = t->n_specials;
    if (k) memcpy(ids, t->specials, k * sizeof *ids);
    int rc = MT_OK;
    for (int i = n - 1; i >= 0 && rc == MT_OK; i--) { /* <extra_id_0> is the last id */
        char s[32];
        int l = snprintf(s, sizeof s, "<extra_id_%d>", i);
        if (mt_tok_lookup(t, s, (size_t)l) >= 0) continue;
        ids[k++] = (int32_t)t->n_vocab;
        rc = mt_tok_add_piece(t, s, (size_t)l, 0.0f, MT_PIECE_CONTROL, name);
    }
    if (rc == MT_OK) rc = mt_tok_build_map(t, name);
    if (rc == MT_OK) rc = mt_tok_set_specials(t, ids, k);
    free(ids);
    if (rc == MT_OK) {
        t->split_specials = 1;
        mt_tok_finalize(t);
    }
    return rc;
}
