/* tokenizer.c — the tokenizer engine shared by every source: vocabulary and
 * piece map, the BPE merge loop (score mode for sentencepiece, rank mode for
 * merges lists; see tokenizer_impl.h), byte fallback, decoding, building a
 * tokenizer from GGUF-style vocabulary arrays, and picking the tokenizer that
 * belongs to a checkpoint.
 *
 * Encoding is O(n log n) in the text length: symbols form a linked list over
 * one buffer, candidate merges sit in a binary heap and stale candidates are
 * recognised on pop by their recorded byte size (symbols only grow), as in
 * sentencepiece's bpe_model.cc and llama.cpp's llm_tokenizer_spm. */
#include "tokenizer_impl.h"

#include "io_impl.h"
#include "moetool/mt_io.h"

#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- small utilities --------------------------------------------------- */

static uint64_t hash_state(const char *s, size_t n) {
    uint64_t h = MT_TOK_HASH0;
    for (size_t i = 0; i < n; i++) h = mt_tok_hash_step(h, (unsigned char)s[i]);
    return h;
}

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = hash_state(s, n);
    return h ^ (h >> 29);
}

static uint64_t hash_pair(uint32_t a, uint32_t b) {
    uint64_t h = ((uint64_t)a << 32 | b) * 0x9E3779B97F4A7C15ull;
    return h ^ (h >> 31);
}

int mt_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp) {
    if (n == 0) return 0;
    unsigned c = s[0];
    if (c < 0x80) { *cp = c; return 1; }
    int len;
    uint32_t v, min;
    if (c >= 0xC2 && c <= 0xDF) { len = 2; v = c & 0x1F; min = 0x80; }
    else if (c >= 0xE0 && c <= 0xEF) { len = 3; v = c & 0x0F; min = 0x800; }
    else if (c >= 0xF0 && c <= 0xF4) { len = 4; v = c & 0x07; min = 0x10000; }
    else return 0;
    if ((size_t)len > n) return 0;
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        v = v << 6 | (s[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return len;
}

int mt_utf8_encode(uint32_t cp, char *out) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xC0 | cp >> 6); out[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12); out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18); out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3F)); out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

static int utf8_valid(const char *s, size_t n) {
    size_t i = 0;
    uint32_t cp;
    while (i < n) {
        int l = mt_utf8_decode((const unsigned char *)s + i, n - i, &cp);
        if (!l) return 0;
        i += (size_t)l;
    }
    return 1;
}

/* GPT-2 bytes_to_unicode: printable Latin-1 bytes map to themselves, the
 * other 68 (0x00-0x20, 0x7F-0xA0, 0xAD) to U+0100.. in byte order. */
uint32_t mt_tok_byte_to_cp(int b) {
    if (b <= 0x20) return 256 + (uint32_t)b;
    if (b >= 0x7F && b <= 0xA0) return 256 + 33 + (uint32_t)(b - 0x7F);
    if (b == 0xAD) return 256 + 67;
    return (uint32_t)b;
}

/* The inverse: the byte of a code point, or -1. */
static int cp_to_byte(uint32_t cp) {
    if (cp >= 256 && cp < 256 + 33) return (int)(cp - 256);
    if (cp >= 256 + 33 && cp < 256 + 67) return (int)(cp - 256 - 33 + 0x7F);
    if (cp == 256 + 67) return 0xAD;
    if ((cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE && cp <= 0xFF)) return (int)cp;
    return -1;
}

/* ---- construction ------------------------------------------------------ */

int mt_tok_new(mt_tokenizer **out, mt_tok_kind kind) {
    mt_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return mt_seterr(MT_ERR_NOMEM, "tokenizer: out of memory");
    t->kind = kind;
    t->bos = t->eos = t->unk = -1;
    for (int b = 0; b < 256; b++) t->byte_id[b] = t->bl_id[b] = -1;
    t->escape_ws = 1;
    *out = t;
    return MT_OK;
}

void mt_tok_free(mt_tokenizer *t) {
    if (!t) return;
    free(t->pieces);
    free(t->pool);
    free(t->map);
    free(t->pairs);
    free(t->merge_off);
    free(t->merge_pool);
    free(t->specials);
    free(t->is_special);
    free(t->cm_units);
    free(t->cm_norm);
    free(t);
}

int mt_tok_add_piece(mt_tokenizer *t, const char *s, size_t len, float score, int type,
                     const char *name) {
    size_t id = t->n_vocab;
    if (id >= MT_TOK_MAX_VOCAB)
        return mt_seterr(MT_ERR_FORMAT, "%s: more than %u pieces", name, MT_TOK_MAX_VOCAB);
    if (len > MT_TOK_MAX_PIECE)
        return mt_seterr(MT_ERR_FORMAT, "%s: piece %zu is %zu bytes long (at most %d)", name, id, len,
                         MT_TOK_MAX_PIECE);
    if (!utf8_valid(s, len)) return mt_seterr(MT_ERR_FORMAT, "%s: piece %zu is not valid UTF-8", name, id);
    if (type < MT_PIECE_NORMAL || type > MT_PIECE_BYTE)
        return mt_seterr(MT_ERR_FORMAT, "%s: piece %zu has unknown type %d", name, id, type);
    if ((id & (id - 1)) == 0) { /* grow at powers of two */
        size_t cap = id ? id * 2 : 64;
        mt_tok_piece_rec *p = realloc(t->pieces, cap * sizeof *p);
        if (!p) return mt_seterr(MT_ERR_NOMEM, "%s: out of memory", name);
        t->pieces = p;
    }
    if (t->pool_len + len + 1 > t->pool_cap) {
        size_t cap = t->pool_cap ? t->pool_cap : 4096;
        while (cap < t->pool_len + len + 1) cap *= 2;
        char *p = realloc(t->pool, cap);
        if (!p) return mt_seterr(MT_ERR_NOMEM, "%s: out of memory", name);
        t->pool = p;
        t->pool_cap = cap;
    }
    if (len) memcpy(t->pool + t->pool_len, s, len);
    t->pool[t->pool_len + len] = 0;
    t->pieces[id] = (mt_tok_piece_rec){(uint32_t)t->pool_len, (uint32_t)len, score, type};
    t->pool_len += len + 1;
    t->n_vocab++;
    return MT_OK;
}

int mt_tok_build_map(mt_tokenizer *t, const char *name) {
    if (t->n_vocab == 0) return mt_seterr(MT_ERR_FORMAT, "%s: the vocabulary is empty", name);
    size_t cap = 16;
    while (cap < t->n_vocab * 2) cap *= 2;
    free(t->map);
    t->map = malloc(cap * sizeof *t->map);
    if (!t->map) return mt_seterr(MT_ERR_NOMEM, "%s: out of memory", name);
    memset(t->map, 0xFF, cap * sizeof *t->map);
    t->map_cap = cap;
    t->max_len = 0;
    for (size_t id = 0; id < t->n_vocab; id++) {
        const mt_tok_piece_rec *p = &t->pieces[id];
        if (p->len == 0) continue;
        if (p->len > t->max_len) t->max_len = p->len;
        const char *s = t->pool + p->off;
        size_t h = (size_t)hash_bytes(s, p->len) & (cap - 1);
        for (;;) {
            int32_t o = t->map[h];
            if (o < 0) { t->map[h] = (int32_t)id; break; }
            const mt_tok_piece_rec *q = &t->pieces[o];
            if (q->len == p->len && memcmp(t->pool + q->off, s, p->len) == 0)
                return mt_seterr(MT_ERR_FORMAT, "%s: duplicate piece '%.*s' (ids %d and %zu)", name,
                                 (int)(p->len > 64 ? 64 : p->len), s, o, id);
            h = (h + 1) & (cap - 1);
        }
    }
    return MT_OK;
}

void mt_tok_finalize(mt_tokenizer *t) {
    memset(t->sep, 1, sizeof t->sep);
    for (size_t id = 0; id < t->n_vocab; id++) {
        const mt_tok_piece_rec *p = &t->pieces[id];
        const char *s = t->pool + p->off;
        if (p->len > 1 && p->type != MT_PIECE_CONTROL && p->type != MT_PIECE_BYTE && p->type != MT_PIECE_UNKNOWN)
            for (size_t k = 0; k < p->len; k++)
                if ((unsigned char)s[k] < 128) t->sep[(unsigned char)s[k]] = 0;
    }
    /* rank mode: a byte-fallback symbol that some merge uses is no separator */
    for (int b = 0; b < 128 && t->rank_mode; b++) {
        if (!t->sep[b] || t->byte_id[b] < 0) continue;
        for (size_t h = 0; h < t->pair_cap; h++) {
            const mt_tok_pair *p = &t->pairs[h];
            if (p->a != UINT32_MAX && (p->a == (uint32_t)t->byte_id[b] || p->b == (uint32_t)t->byte_id[b])) {
                t->sep[b] = 0;
                break;
            }
        }
    }
}

int mt_tok_lookup(const mt_tokenizer *t, const char *s, size_t len) {
    if (!t->map || len == 0) return -1;
    return mt_tok_lookup_hashed(t, s, len, hash_state(s, len));
}

int mt_tok_lookup_hashed(const mt_tokenizer *t, const char *s, size_t len, uint64_t state) {
    if (!t->map || len == 0) return -1;
    size_t h = (size_t)(state ^ (state >> 29)) & (t->map_cap - 1);
    for (;;) {
        int32_t o = t->map[h];
        if (o < 0) return -1;
        const mt_tok_piece_rec *q = &t->pieces[o];
        if (q->len == len && memcmp(t->pool + q->off, s, len) == 0) return o;
        h = (h + 1) & (t->map_cap - 1);
    }
}

void mt_tok_find_byte_pieces(mt_tokenizer *t, int mark_type) {
    static const char hex[] = "0123456789ABCDEF";
    for (int b = 0; b < 256; b++) {
        char name[7] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>', 0};
        int id = mt_tok_lookup(t, name, 6);
        if (id >= 0 && (mark_type || t->pieces[id].type == MT_PIECE_BYTE)) {
            if (mark_type) t->pieces[id].type = MT_PIECE_BYTE;
            t->byte_id[b] = id;
        }
    }
}

static int pair_find(const mt_tokenizer *t, uint32_t a, uint32_t b, const mt_tok_pair **out) {
    if (!t->pairs) return 0;
    size_t h = (size_t)hash_pair(a, b) & (t->pair_cap - 1);
    for (;;) {
        const mt_tok_pair *p = &t->pairs[h];
        if (p->a == UINT32_MAX) return 0;
        if (p->a == a && p->b == b) { *out = p; return 1; }
        h = (h + 1) & (t->pair_cap - 1);
    }
}

int mt_tok_set_merges(mt_tokenizer *t, size_t n, const char *const *left, const size_t *left_lens,
                      const char *const *right, const size_t *right_lens, const char *name) {
    int rc = MT_OK;
    char *cat = NULL;
    if (n > MT_TOK_MAX_MERGES) return mt_seterr(MT_ERR_FORMAT, "%s: %zu merges (at most %u)", name, n, MT_TOK_MAX_MERGES);
    size_t cap = 16;
    while (cap < n * 2) cap *= 2;
    t->pairs = malloc(cap * sizeof *t->pairs);
    t->merge_off = malloc((n + 1) * sizeof *t->merge_off);
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        total += left_lens[i] + (right ? right_lens[i] + 1 : 0) + 1;
        if (total > UINT32_MAX / 2) return mt_seterr(MT_ERR_FORMAT, "%s: merges list too large", name);
    }
    t->merge_pool = malloc(total + 1);
    cat = malloc(2 * MT_TOK_MAX_PIECE + 2);
    if (!t->pairs || !t->merge_off || !t->merge_pool || !cat) {
        rc = mt_seterr(MT_ERR_NOMEM, "%s: out of memory", name);
        goto done;
    }
    for (size_t i = 0; i < cap; i++) t->pairs[i].a = UINT32_MAX;
    t->pair_cap = cap;
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const char *a, *b;
        size_t la, lb;
        t->merge_off[i] = (uint32_t)off;
        if (right) {
            a = left[i]; la = left_lens[i]; b = right[i]; lb = right_lens[i];
            memcpy(t->merge_pool + off, a, la);
            t->merge_pool[off + la] = ' ';
            memcpy(t->merge_pool + off + la + 1, b, lb);
            off += la + lb + 1;
        } else {
            const char *s = left[i];
            size_t l = left_lens[i], sp = 1;
            while (sp < l && s[sp] != ' ') sp++;
            if (sp >= l) {
                rc = mt_seterr(MT_ERR_FORMAT, "%s: merge %zu ('%.*s') is not two pieces separated by a space",
                               name, i, (int)(l > 64 ? 64 : l), s);
                goto done;
            }
            a = s; la = sp; b = s + sp + 1; lb = l - sp - 1;
            memcpy(t->merge_pool + off, s, l);
            off += l;
        }
        t->merge_pool[off++] = 0;
        if (la > MT_TOK_MAX_PIECE || lb > MT_TOK_MAX_PIECE) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s: merge %zu is too long", name, i);
            goto done;
        }
        memcpy(cat, a, la);
        memcpy(cat + la, b, lb);
        int ia = mt_tok_lookup(t, a, la), ib = mt_tok_lookup(t, b, lb), ir = mt_tok_lookup(t, cat, la + lb);
        if (ia < 0 || ib < 0 || ir < 0) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s: merge %zu ('%.*s' + '%.*s') refers to a piece not in the vocabulary",
                           name, i, (int)(la > 64 ? 64 : la), a, (int)(lb > 64 ? 64 : lb), b);
            goto done;
        }
        size_t h = (size_t)hash_pair((uint32_t)ia, (uint32_t)ib) & (cap - 1);
        while (t->pairs[h].a != UINT32_MAX && !(t->pairs[h].a == (uint32_t)ia && t->pairs[h].b == (uint32_t)ib))
            h = (h + 1) & (cap - 1);
        if (t->pairs[h].a == UINT32_MAX) /* the first of duplicate merges wins */
            t->pairs[h] = (mt_tok_pair){(uint32_t)ia, (uint32_t)ib, (int32_t)i, ir};
    }
    t->merge_off[n] = (uint32_t)off;
    t->n_merges = n;
done:
    free(cat);
    return rc;
}

int mt_tok_init_byte_level(mt_tokenizer *t, const char *name) {
    (void)name;
    for (int b = 0; b < 256; b++) {
        char u[4];
        int l = mt_utf8_encode(mt_tok_byte_to_cp(b), u);
        t->bl_id[b] = mt_tok_lookup(t, u, (size_t)l);
    }
    return MT_OK;
}

int mt_tok_set_specials(mt_tokenizer *t, const int32_t *ids, size_t n) {
    free(t->specials);
    free(t->is_special);
    t->specials = NULL;
    t->is_special = NULL;
    t->n_specials = 0;
    t->n_special_lens = 0;
    t->specials_by_scan = 0;
    memset(t->special_first, 0, sizeof t->special_first);
    if (n == 0) return MT_OK;
    t->specials = malloc(n * sizeof *t->specials);
    t->is_special = calloc(t->n_vocab, 1);
    if (!t->specials || !t->is_special) return mt_seterr(MT_ERR_NOMEM, "tokenizer: out of memory");
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || (size_t)id >= t->n_vocab || t->is_special[id]) continue;
        const mt_tok_piece_rec *p = &t->pieces[id];
        if (p->len == 0) continue;
        t->is_special[id] = 1;
        t->specials[t->n_specials++] = id;
        unsigned char c0 = (unsigned char)t->pool[p->off];
        t->special_first[c0 >> 3] |= (uint8_t)(1u << (c0 & 7));
        size_t k = 0;
        while (k < t->n_special_lens && t->special_lens[k] > p->len) k++;
        if (k < t->n_special_lens && t->special_lens[k] == p->len) continue;
        if (t->n_special_lens == 32) { t->specials_by_scan = 1; continue; }
        memmove(t->special_lens + k + 1, t->special_lens + k, (t->n_special_lens - k) * sizeof *t->special_lens);
        t->special_lens[k] = p->len;
        t->n_special_lens++;
    }
    return MT_OK;
}

int mt_tok_match_special(const mt_tokenizer *t, const char *s, size_t n, size_t *len) {
    unsigned char c0 = (unsigned char)s[0];
    if (!(t->special_first[c0 >> 3] & (1u << (c0 & 7)))) return -1;
    if (t->specials_by_scan) {
        int best = -1;
        size_t bl = 0;
        for (size_t i = 0; i < t->n_specials; i++) {
            const mt_tok_piece_rec *p = &t->pieces[t->specials[i]];
            if (p->len > bl && p->len <= n && memcmp(t->pool + p->off, s, p->len) == 0) {
                best = t->specials[i];
                bl = p->len;
            }
        }
        *len = bl;
        return best;
    }
    for (size_t k = 0; k < t->n_special_lens; k++) {
        size_t l = t->special_lens[k];
        if (l > n) continue;
        int id = mt_tok_lookup(t, s, l);
        if (id >= 0 && t->is_special[id]) {
            *len = l;
            return id;
        }
    }
    return -1;
}

void mt_tok_synth_scores(mt_tokenizer *t) {
    size_t n = t->n_vocab;
    for (size_t id = 0; id < n; id++)
        t->pieces[id].score = t->pieces[id].type == MT_PIECE_NORMAL ? -(float)(t->n_merges + id) : 0.0f;
    for (size_t h = 0; h < t->pair_cap; h++) {
        const mt_tok_pair *p = &t->pairs[h];
        if (p->a == UINT32_MAX) continue;
        float s = -(float)p->rank;
        if (t->pieces[p->id].type == MT_PIECE_NORMAL && s > t->pieces[p->id].score) t->pieces[p->id].score = s;
    }
}

/* ---- encoding ----------------------------------------------------------- */

typedef struct {
    int32_t prev, next;   /* linked list of live symbols, -1 at the ends */
    uint32_t start, len;  /* bytes in the work buffer; len 0: merged away */
    int32_t id;           /* rank mode: the symbol's piece */
    int32_t freeze;       /* user-defined piece: never merged */
} enc_sym;

typedef struct {
    float prio;           /* higher first: score, or -rank (exact below 2^24) */
    int32_t left;         /* the right symbol is left's next */
    uint32_t size;        /* left.len + right.len when pushed */
    int32_t id;           /* merged piece */
} enc_cand;

typedef struct {
    const mt_tokenizer *t;
    const char *w;          /* text being merged */
    char *buf;              /* normalised text */
    size_t buf_cap;
    enc_sym *sym;           /* [sym_cap] */
    size_t sym_cap, nsym;
    enc_cand *heap;         /* [heap_cap] */
    size_t heap_n, heap_cap;
    int32_t *rev;           /* [n_vocab] left length of UNUSED pieces (resegmenting) */
    int32_t *ids;           /* output [cap] */
    size_t cap, n;
    size_t unk_end;         /* n right after the last <unk> (spm_fuse_unk) */
    int err;
} enc;

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return MT_OK;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q) return mt_seterr(MT_ERR_NOMEM, "tokenizer: out of memory encoding %zu bytes", need);
    *p = q;
    *cap = c;
    return MT_OK;
}

static inline void emit(enc *e, int32_t id) {
    if (e->n < e->cap) e->ids[e->n] = id;
    e->n++;
}

static inline int cand_before(const enc_cand *a, const enc_cand *b) {
    return a->prio > b->prio || (a->prio == b->prio && a->left < b->left);
}

static int heap_push(enc *e, enc_cand c) {
    if (e->heap_n == e->heap_cap) {
        int rc = grow((void **)&e->heap, &e->heap_cap, e->heap_n + 1, sizeof *e->heap);
        if (rc) return rc;
    }
    size_t i = e->heap_n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_before(&c, &e->heap[p])) break;
        e->heap[i] = e->heap[p];
        i = p;
    }
    e->heap[i] = c;
    return MT_OK;
}

static enc_cand heap_pop(enc *e) {
    enc_cand top = e->heap[0], last = e->heap[--e->heap_n];
    size_t i = 0, n = e->heap_n;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = l;
        if (l >= n) break;
        if (r < n && cand_before(&e->heap[r], &e->heap[l])) m = r;
        if (!cand_before(&e->heap[m], &last)) break;
        e->heap[i] = e->heap[m];
        i = m;
    }
    if (n) e->heap[i] = last;
    return top;
}

static int try_pair(enc *e, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return MT_OK;
    const mt_tokenizer *t = e->t;
    const enc_sym *L = &e->sym[l], *R = &e->sym[r];
    if (L->freeze || R->freeze) return MT_OK;
    enc_cand c = {0, l, L->len + R->len, -1};
    if (t->rank_mode) {
        const mt_tok_pair *p;
        if (L->id < 0 || R->id < 0 || !pair_find(t, (uint32_t)L->id, (uint32_t)R->id, &p)) return MT_OK;
        c.prio = -(float)p->rank;
        c.id = p->id;
    } else {
        if (c.size > t->max_len) return MT_OK;
        int id = mt_tok_lookup(t, e->w + L->start, c.size);
        if (id < 0) return MT_OK;
        int ty = t->pieces[id].type;
        if (ty != MT_PIECE_NORMAL && ty != MT_PIECE_USER_DEFINED && ty != MT_PIECE_UNUSED) return MT_OK;
        c.prio = t->pieces[id].score;
        c.id = id;
        if (ty == MT_PIECE_UNUSED && e->rev) e->rev[id] = (int32_t)L->len;
    }
    return heap_push(e, c);
}

static int add_sym(enc *e, uint32_t start, uint32_t len, int32_t id, int freeze) {
    if (e->nsym == e->sym_cap) {
        int rc = grow((void **)&e->sym, &e->sym_cap, e->nsym + 1, sizeof *e->sym);
        if (rc) return rc;
    }
    e->sym[e->nsym] = (enc_sym){(int32_t)e->nsym - 1, -1, start, len, id, freeze};
    if (e->nsym) e->sym[e->nsym - 1].next = (int32_t)e->nsym;
    e->nsym++;
    return MT_OK;
}

static int no_unk(void) {
    return mt_seterr(MT_ERR_ARG, "tokenizer: the text has a character that the vocabulary cannot encode "
                                 "(no byte fallback and no unknown token)");
}

/* Score mode output of one final symbol (sentencepiece resegment + byte fallback). */
static int spm_emit(enc *e, uint32_t start, uint32_t len) {
    const mt_tokenizer *t = e->t;
    int id = mt_tok_lookup(t, e->w + start, len);
    if (id >= 0 && t->pieces[id].type == MT_PIECE_UNUSED && e->rev && e->rev[id] > 0 &&
        (uint32_t)e->rev[id] < len) {
        uint32_t l = (uint32_t)e->rev[id];
        int rc = spm_emit(e, start, l);
        return rc ? rc : spm_emit(e, start + l, len - l);
    }
    if (id >= 0) { emit(e, id); return MT_OK; }
    if (t->byte_fallback) {
        for (uint32_t i = 0; i < len; i++) {
            int b = t->byte_id[(unsigned char)e->w[start + i]];
            if (b < 0) b = t->unk;
            if (b < 0) return no_unk();
            emit(e, b);
        }
        return MT_OK;
    }
    if (t->unk < 0) return no_unk();
    if (t->spm_fuse_unk && e->unk_end == e->n) return MT_OK; /* one <unk> for a run */
    emit(e, t->unk);
    e->unk_end = e->n;
    return MT_OK;
}

/* Merges w[0..m) (a chunk of the text or a word) and emits its ids. */
static int bpe_core(enc *e, const char *w, size_t m, int byte_level) {
    const mt_tokenizer *t = e->t;
    int rc;
    if (m == 0) return MT_OK;
    e->w = w;
    e->nsym = 0;
    e->heap_n = 0;
    if ((rc = grow((void **)&e->sym, &e->sym_cap, m, sizeof *e->sym))) return rc;
    /* symbols */
    size_t i = 0;
    while (i < m) {
        if (byte_level) {
            int32_t id = t->bl_id[(unsigned char)w[i]];
            if (id < 0) id = t->unk;
            if (id < 0) return no_unk();
            if ((rc = add_sym(e, (uint32_t)i, 1, id, 0))) return rc;
            i++;
            continue;
        }
        if (!t->rank_mode && t->n_specials) { /* sentencepiece user-defined pieces */
            size_t sl;
            int sid = mt_tok_match_special(t, w + i, m - i, &sl);
            if (sid >= 0 && t->pieces[sid].type == MT_PIECE_USER_DEFINED) {
                if ((rc = add_sym(e, (uint32_t)i, (uint32_t)sl, sid, 1))) return rc;
                i += sl;
                continue;
            }
        }
        uint32_t cp;
        int l = mt_utf8_decode((const unsigned char *)w + i, m - i, &cp);
        if (l == 0) l = 1; /* invalid UTF-8: the byte alone (byte fallback) */
        if (!t->rank_mode) {
            if ((rc = add_sym(e, (uint32_t)i, (uint32_t)l, -1, 0))) return rc;
        } else {
            int id = mt_tok_lookup(t, w + i, (size_t)l);
            int all_bytes = t->byte_fallback;
            for (int k = 0; k < l && all_bytes; k++) all_bytes = t->byte_id[(unsigned char)w[i + k]] >= 0;
            if (id >= 0) {
                if ((rc = add_sym(e, (uint32_t)i, (uint32_t)l, id, 0))) return rc;
            } else if (all_bytes) {
                for (int k = 0; k < l; k++)
                    if ((rc = add_sym(e, (uint32_t)(i + k), 1, t->byte_id[(unsigned char)w[i + k]], 0))) return rc;
            } else {
                if (t->unk < 0) return no_unk();
                enc_sym *prev = e->nsym ? &e->sym[e->nsym - 1] : NULL;
                if (t->fuse_unk && prev && prev->id == t->unk && prev->freeze == 2) {
                    prev->len += (uint32_t)l;
                } else if ((rc = add_sym(e, (uint32_t)i, (uint32_t)l, t->unk, 0))) {
                    return rc;
                } else {
                    e->sym[e->nsym - 1].freeze = 2; /* an unknown never merges */
                }
            }
        }
        i += (size_t)l;
    }
    /* merges */
    if ((rc = grow((void **)&e->heap, &e->heap_cap, e->nsym + 16, sizeof *e->heap))) return rc;
    for (size_t k = 0; k + 1 < e->nsym; k++)
        if ((rc = try_pair(e, (int32_t)k, (int32_t)k + 1))) return rc;
    while (e->heap_n) {
        enc_cand c = heap_pop(e);
        enc_sym *L = &e->sym[c.left];
        if (L->len == 0 || L->next < 0) continue;
        enc_sym *R = &e->sym[L->next];
        /* symbols only grow, so an unchanged total means an unchanged pair */
        if (R->len == 0 || L->len + R->len != c.size) continue;
        L->len += R->len;
        L->id = c.id;
        R->len = 0;
        L->next = R->next;
        if (R->next >= 0) e->sym[R->next].prev = c.left;
        if ((rc = try_pair(e, L->prev, c.left))) return rc;
        if ((rc = try_pair(e, c.left, L->next))) return rc;
    }
    /* output */
    for (int32_t k = e->nsym ? 0 : -1; k >= 0; k = e->sym[k].next) {
        const enc_sym *s = &e->sym[k];
        if (t->rank_mode || byte_level || s->freeze == 1) emit(e, s->id);
        else if ((rc = spm_emit(e, s->start, s->len))) return rc;
    }
    return MT_OK;
}

/* Merges w[0..m), cut after every separator byte (see mt_tokenizer.sep):
 * merges never cross one, so the result is that of one run over the whole,
 * with a small, cache-resident heap. */
static int bpe_run(enc *e, const char *w, size_t m, int byte_level) {
    const mt_tokenizer *t = e->t;
    int rc;
    if (m == 0) return MT_OK;
    if (m > UINT32_MAX / 2) return mt_seterr(MT_ERR_ARG, "tokenizer: text too long (%zu bytes)", m);
    if (t->rank_mode && t->ignore_merges && !byte_level) {
        int id = mt_tok_lookup(t, w, m);
        if (id >= 0) { emit(e, id); return MT_OK; }
    }
    if (byte_level) return bpe_core(e, w, m, 1);
    size_t a = 0;
    for (size_t i = 0; i < m; i++) {
        unsigned char c = (unsigned char)w[i];
        if (c < 128 && t->sep[c]) {
            if ((rc = bpe_core(e, w + a, i + 1 - a, 0))) return rc;
            a = i + 1;
        }
    }
    return bpe_core(e, w + a, m - a, 0);
}

static const char SP[] = "\xE2\x96\x81"; /* U+2581 */

/* Sentencepiece-style segment: normalise into e->buf, then merge. */
static int spm_segment(enc *e, const char *s, size_t n, int at_start) {
    const mt_tokenizer *t = e->t;
    int rc;
    if (n == 0) return MT_OK;
    if ((rc = grow((void **)&e->buf, &e->buf_cap, 3 * n + 3, 1))) return rc;
    size_t a = 0, b = n, m = 0;
    if (t->remove_extra_ws) {
        while (a < b && s[a] == ' ') a++;
        while (b > a && s[b - 1] == ' ') b--;
        if (a == b) return MT_OK;
    }
    int pre = t->prepend == MT_PREPEND_ALWAYS || (t->prepend == MT_PREPEND_FIRST && at_start);
    if (pre && t->prepend_unless_present && (s[a] == ' ' || (b - a >= 3 && memcmp(s + a, SP, 3) == 0))) pre = 0;
    if (pre) { memcpy(e->buf, SP, 3); m = 3; }
    for (size_t i = a; i < b; i++) {
        if (s[i] == ' ') {
            if (t->remove_extra_ws && i > a && s[i - 1] == ' ') continue;
            if (t->escape_ws) { memcpy(e->buf + m, SP, 3); m += 3; continue; }
        }
        e->buf[m++] = s[i];
    }
    if (!t->metaspace_split) return bpe_run(e, e->buf, m, 0);
    /* HF Metaspace split: a word starts at every U+2581 */
    size_t w0 = 0;
    for (size_t i = 3; i + 3 <= m; i++) {
        if (memcmp(e->buf + i, SP, 3) == 0) {
            if ((rc = bpe_run(e, e->buf + w0, i - w0, 0))) return rc;
            w0 = i;
            i += 2;
        }
    }
    return bpe_run(e, e->buf + w0, m - w0, 0);
}

/* Sentencepiece BPE with a precompiled charsmap (NLLB): sentencepiece's
 * own normaliser (tokenizer_unigram.c), then the merges. */
static int spm_cm_segment(enc *e, const char *s, size_t n, int at_start) {
    (void)at_start; /* sentencepiece normalises every segment alike */
    size_t m = 0;
    int rc = mt_tok_sp_normalize(e->t, s, n, &e->buf, &e->buf_cap, &m);
    return rc ? rc : bpe_run(e, e->buf, m, 0);
}

/* Byte-level segment: split into words, merge each. */
static int gpt2_segment(enc *e, const char *s, size_t n, int at_start) {
    const mt_tokenizer *t = e->t;
    int rc;
    (void)at_start; /* HF ByteLevel adds the prefix space to every segment */
    if (n == 0) return MT_OK;
    const char *text = s;
    if (t->add_prefix_space && s[0] != ' ') {
        if ((rc = grow((void **)&e->buf, &e->buf_cap, n + 1, 1))) return rc;
        e->buf[0] = ' ';
        memcpy(e->buf + 1, s, n);
        text = e->buf;
        n++;
    }
    size_t i = 0;
    char *word = NULL;
    size_t word_cap = 0;
    while (i < n) {
        size_t wl = t->split == MT_SPLIT_NONE ? n - i : mt_tok_next_word(t->split, text + i, n - i);
        if (t->ignore_merges) { /* the mapped word as a piece */
            if ((rc = grow((void **)&word, &word_cap, 2 * wl, 1))) break;
            size_t ml = 0;
            for (size_t k = 0; k < wl; k++) ml += (size_t)mt_utf8_encode(mt_tok_byte_to_cp((unsigned char)text[i + k]), word + ml);
            int id = mt_tok_lookup(t, word, ml);
            if (id >= 0) { emit(e, id); i += wl; continue; }
        }
        if ((rc = bpe_run(e, text + i, wl, 1))) break;
        i += wl;
    }
    free(word);
    return i < n ? rc : MT_OK;
}

int mt_tok_encode(const mt_tokenizer *t, const char *text, size_t len, int32_t *ids, size_t cap, size_t *n) {
    if (!t || !n || (!text && len) || (!ids && cap))
        return mt_seterr(MT_ERR_ARG, "mt_tok_encode: NULL argument");
    if (len > ((size_t)1 << 31)) return mt_seterr(MT_ERR_ARG, "mt_tok_encode: text too long (%zu bytes)", len);
    if (t->kind == MT_TOK_UNIGRAM) return mt_tok_unigram_encode(t, text, len, ids, cap, n);
    enc e = {0};
    e.t = t;
    e.ids = ids;
    e.cap = cap;
    int rc = MT_OK;
    if (!t->rank_mode && t->has_unused) {
        e.rev = calloc(t->n_vocab, sizeof *e.rev);
        if (!e.rev) return mt_seterr(MT_ERR_NOMEM, "tokenizer: out of memory");
    }
    e.unk_end = SIZE_MAX;
    int (*segment)(enc *, const char *, size_t, int) = t->kind == MT_TOK_GPT2 ? gpt2_segment
                                                       : t->cm_units            ? spm_cm_segment
                                                                                : spm_segment;
    if ((t->rank_mode || t->split_specials) && t->n_specials) { /* literal special tokens first */
        size_t seg = 0, i = 0;
        while (i < len && rc == MT_OK) {
            size_t sl;
            int id = mt_tok_match_special(t, text + i, len - i, &sl);
            if (id < 0) { i++; continue; }
            if (i > seg) rc = segment(&e, text + seg, i - seg, seg == 0);
            emit(&e, id);
            i += sl;
            seg = i;
        }
        if (rc == MT_OK && len > seg) rc = segment(&e, text + seg, len - seg, seg == 0);
    } else {
        rc = segment(&e, text, len, 1);
    }
    free(e.buf);
    free(e.sym);
    free(e.heap);
    free(e.rev);
    if (rc == MT_OK) *n = e.n;
    return rc;
}

/* ---- decoding ----------------------------------------------------------- */

typedef struct {
    char *p;
    size_t n, cap;
} dbuf;

static int dput(dbuf *d, const char *s, size_t n) {
    if (d->n + n + 1 > d->cap) {
        int rc = grow((void **)&d->p, &d->cap, d->n + n + 1, 1);
        if (rc) return rc;
    }
    memcpy(d->p + d->n, s, n);
    d->n += n;
    return MT_OK;
}

static int byte_of_piece(const char *s, size_t n) {
    if (n != 6 || s[0] != '<' || s[1] != '0' || s[2] != 'x' || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}


static int piece_text(const mt_tokenizer *t, int id, dbuf *d) {
    if (id < 0 || (size_t)id >= t->n_vocab) return mt_seterr(MT_ERR_ARG, "tokenizer: token id %d out of range (vocabulary %zu)", id, t->n_vocab);
    const mt_tok_piece_rec *p = &t->pieces[id];
    const char *s = t->pool + p->off;
    if (p->type == MT_PIECE_CONTROL) return MT_OK;
    if (p->type == MT_PIECE_UNKNOWN && (t->kind == MT_TOK_UNIGRAM || t->cm_units))
        return dput(d, MT_TOK_UNK_SURFACE, sizeof MT_TOK_UNK_SURFACE - 1);
    if (p->type == MT_PIECE_BYTE) {
        int b = byte_of_piece(s, p->len);
        if (b >= 0) {
            char c = (char)b;
            return dput(d, &c, 1);
        }
    }
    if (t->kind == MT_TOK_GPT2) {
        if (p->type == MT_PIECE_USER_DEFINED || p->type == MT_PIECE_UNKNOWN) return dput(d, s, p->len);
        size_t i = 0;
        while (i < p->len) {
            uint32_t cp = UINT32_MAX;
            int l = mt_utf8_decode((const unsigned char *)s + i, p->len - i, &cp);
            int b = l ? cp_to_byte(cp) : -1;
            if (l == 0) l = 1;
            int rc;
            if (b >= 0) {
                char c = (char)b;
                rc = dput(d, &c, 1);
            } else {
                rc = dput(d, s + i, (size_t)l);
            }
            if (rc) return rc;
            i += (size_t)l;
        }
        return MT_OK;
    }
    size_t i = 0, a = 0;
    while (i + 3 <= p->len) {
        if (t->escape_ws && memcmp(s + i, SP, 3) == 0) {
            int rc = dput(d, s + a, i - a);
            if (!rc) rc = dput(d, " ", 1);
            if (rc) return rc;
            i += 3;
            a = i;
        } else {
            i++;
        }
    }
    return dput(d, s + a, p->len - a);
}

int mt_tok_decode(const mt_tokenizer *t, const int32_t *ids, size_t n, int strip_leading_space, char **out,
                  size_t *out_len) {
    if (!t || !out || (!ids && n)) return mt_seterr(MT_ERR_ARG, "mt_tok_decode: NULL argument");
    if (t->kind == MT_TOK_UNIGRAM) return mt_tok_unigram_decode(t, ids, n, strip_leading_space, out, out_len);
    dbuf d = {0};
    int rc = dput(&d, "", 0);
    for (size_t i = 0; i < n && rc == MT_OK; i++) rc = piece_text(t, ids[i], &d);
    if (rc) {
        free(d.p);
        return rc;
    }
    size_t skip = 0;
    if (strip_leading_space && mt_tok_add_space_prefix(t) && d.n && d.p[0] == ' ') skip = 1;
    if (strip_leading_space && t->n_lang) { /* NllbTokenizer: the joined text .strip()ped */
        while (skip < d.n && strchr(" \t\n\r\v\f", d.p[skip])) skip++;
        while (d.n > skip && strchr(" \t\n\r\v\f", d.p[d.n - 1])) d.n--;
    }
    if (skip) memmove(d.p, d.p + skip, d.n - skip);
    d.n -= skip;
    d.p[d.n] = 0;
    *out = d.p;
    if (out_len) *out_len = d.n;
    return MT_OK;
}

int mt_tok_piece_text(const mt_tokenizer *t, int id, char *buf, size_t cap, size_t *len) {
    if (!t || !len || (!buf && cap)) return mt_seterr(MT_ERR_ARG, "mt_tok_piece_text: NULL argument");
    dbuf d = {0};
    int rc = piece_text(t, id, &d);
    if (rc == MT_OK) { /* copies what fits; *len is the full length */
        size_t at = *len;
        if (at < cap && d.n) memcpy(buf + at, d.p, d.n < cap - at ? d.n : cap - at);
        *len = at + d.n;
    }
    free(d.p);
    return rc;
}

/* ---- accessors ----------------------------------------------------------- */

mt_tok_kind mt_tok_kind_of(const mt_tokenizer *t) { return t->kind; }
size_t mt_tok_vocab_size(const mt_tokenizer *t) { return t ? t->n_vocab : 0; }

const char *mt_tok_piece(const mt_tokenizer *t, int id, size_t *len) {
    if (!t || id < 0 || (size_t)id >= t->n_vocab) {
        if (len) *len = 0;
        return NULL;
    }
    if (len) *len = t->pieces[id].len;
    return t->pool + t->pieces[id].off;
}

float mt_tok_score(const mt_tokenizer *t, int id) {
    return t && id >= 0 && (size_t)id < t->n_vocab ? t->pieces[id].score : 0.0f;
}

int mt_tok_type(const mt_tokenizer *t, int id) {
    return t && id >= 0 && (size_t)id < t->n_vocab ? t->pieces[id].type : -1;
}

size_t mt_tok_merge_count(const mt_tokenizer *t) { return t ? t->n_merges : 0; }

const char *mt_tok_merge(const mt_tokenizer *t, size_t i, size_t *len) {
    if (!t || i >= t->n_merges) {
        if (len) *len = 0;
        return NULL;
    }
    if (len) *len = t->merge_off[i + 1] - t->merge_off[i] - 1;
    return t->merge_pool + t->merge_off[i];
}

int mt_tok_bos(const mt_tokenizer *t) { return t ? t->bos : -1; }
int mt_tok_eos(const mt_tokenizer *t) { return t ? t->eos : -1; }
int mt_tok_unk(const mt_tokenizer *t) { return t ? t->unk : -1; }

int mt_tok_add_space_prefix(const mt_tokenizer *t) {
    if (!t) return 0;
    return t->kind == MT_TOK_GPT2 ? t->add_prefix_space : t->prepend != MT_PREPEND_NEVER;
}

/* ---- from vocabulary arrays (GGUF) --------------------------------------- */

static int check_special_id(int id, size_t n) { return id >= 0 && (size_t)id < n ? id : -1; }

int mt_tok_from_vocab(mt_tokenizer **out, mt_tok_kind kind, size_t n_vocab, const char *const *pieces,
                      const size_t *piece_lens, const float *scores, const int32_t *types, size_t n_merges,
                      const char *const *merges, const size_t *merge_lens, int bos_id, int eos_id, int unk_id) {
    static const char *name = "vocabulary";
    if (!out || (n_vocab && (!pieces || !piece_lens)) || (n_merges && (!merges || !merge_lens)))
        return mt_seterr(MT_ERR_ARG, "mt_tok_from_vocab: NULL argument");
    if (kind != MT_TOK_SPM && kind != MT_TOK_GPT2) return mt_seterr(MT_ERR_ARG, "mt_tok_from_vocab: bad kind %d", (int)kind);
    *out = NULL;
    mt_tokenizer *t;
    int rc = mt_tok_new(&t, kind);
    if (rc) return rc;
    int32_t *sp = NULL;
    size_t nsp = 0;
    for (size_t i = 0; i < n_vocab && rc == MT_OK; i++)
        rc = mt_tok_add_piece(t, pieces[i], piece_lens[i], scores ? scores[i] : 0.0f,
                              types ? types[i] : MT_PIECE_NORMAL, name);
    if (rc == MT_OK) rc = mt_tok_build_map(t, name);
    if (rc) goto fail;
    t->bos = check_special_id(bos_id, n_vocab);
    t->eos = check_special_id(eos_id, n_vocab);
    t->unk = check_special_id(unk_id, n_vocab);
    if (!types) {
        if (t->bos >= 0) t->pieces[t->bos].type = MT_PIECE_CONTROL;
        if (t->eos >= 0) t->pieces[t->eos].type = MT_PIECE_CONTROL;
        if (t->unk >= 0) t->pieces[t->unk].type = MT_PIECE_UNKNOWN;
    }
    if (t->unk < 0) /* the UNKNOWN piece, if the caller gave no id */
        for (size_t i = 0; i < n_vocab; i++)
            if (t->pieces[i].type == MT_PIECE_UNKNOWN) { t->unk = (int)i; break; }
    sp = malloc((n_vocab ? n_vocab : 1) * sizeof *sp);
    if (!sp) { rc = mt_seterr(MT_ERR_NOMEM, "%s: out of memory", name); goto fail; }
    if (kind == MT_TOK_SPM) {
        mt_tok_find_byte_pieces(t, !types); /* without types, <0xXX> names byte pieces */
        for (int b = 0; b < 256; b++) t->byte_fallback |= t->byte_id[b] >= 0;
        t->prepend = MT_PREPEND_ALWAYS; /* llama.cpp's default for 'llama' vocabularies */
        t->escape_ws = 1;
        for (size_t i = 0; i < n_vocab; i++) {
            if (t->pieces[i].type == MT_PIECE_UNUSED) t->has_unused = 1;
            if (t->pieces[i].type == MT_PIECE_USER_DEFINED) sp[nsp++] = (int32_t)i;
        }
    } else {
        t->rank_mode = 1;
        t->split = MT_SPLIT_GPT2;
        rc = mt_tok_set_merges(t, n_merges, merges, merge_lens, NULL, NULL, name);
        if (rc == MT_OK) rc = mt_tok_init_byte_level(t, name);
        if (rc) goto fail;
        for (size_t i = 0; i < n_vocab; i++)
            if (t->pieces[i].type == MT_PIECE_CONTROL || t->pieces[i].type == MT_PIECE_USER_DEFINED) sp[nsp++] = (int32_t)i;
    }
    if ((rc = mt_tok_set_specials(t, sp, nsp))) goto fail;
    t->has_user_defined = nsp > 0;
    mt_tok_finalize(t);
    free(sp);
    *out = t;
    return MT_OK;
fail:
    free(sp);
    mt_tok_free(t);
    return rc;
}

/* ---- the tokenizer of a checkpoint ------------------------------------- */

/* GGUF keys read (llama.cpp conventions):
 *   tokenizer.ggml.model       string: "llama" (sentencepiece BPE) or "gpt2"
 *   tokenizer.ggml.tokens      [string] pieces, id order
 *   tokenizer.ggml.scores      [float32] merge priorities ("llama"), optional
 *   tokenizer.ggml.token_type  [int32] mt_piece_type per piece, optional
 *   tokenizer.ggml.merges      [string] "a b", rank order ("gpt2")
 *   tokenizer.ggml.bos_token_id / eos_token_id / unknown_token_id  uint32
 *   tokenizer.ggml.add_space_prefix  bool ("llama"; default true)
 *   tokenizer.ggml.pre         string: pre-tokenizer of "gpt2" vocabularies */
int mt_tok_from_gguf(mt_tokenizer **out, const mt_gguf *g, const char *path) {
    if (!out || !g) return mt_seterr(MT_ERR_ARG, "mt_tok_from_gguf: NULL argument");
    if (!path) path = "gguf";
    *out = NULL;
    const char *model;
    uint64_t model_len, n = 0, nm = 0;
    mt_gguf_type et;
    int rc;
    if (mt_gguf_get_str(g, "tokenizer.ggml.model", &model, &model_len))
        return mt_seterr(MT_ERR_NOT_FOUND, "%s: no tokenizer.ggml.model key (no tokenizer in this GGUF)", path);
    mt_tok_kind kind;
    if (model_len == 5 && memcmp(model, "llama", 5) == 0) kind = MT_TOK_SPM;
    else if (model_len == 4 && memcmp(model, "gpt2", 4) == 0) kind = MT_TOK_GPT2;
    else
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: tokenizer.ggml.model '%.*s' is not supported (llama, gpt2 are)", path,
                         (int)(model_len > 32 ? 32 : model_len), model);
    if ((rc = mt_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n))) return rc;
    if (et != MT_GGUF_STRING || n == 0 || n > MT_TOK_MAX_VOCAB)
        return mt_seterr(MT_ERR_FORMAT, "%s: tokenizer.ggml.tokens must be a non-empty string array (at most %u)", path,
                         MT_TOK_MAX_VOCAB);
    const char **pieces = calloc(n, sizeof *pieces);
    size_t *lens = calloc(n, sizeof *lens);
    float *scores = NULL;
    int32_t *types = NULL;
    const char **merges = NULL;
    size_t *mlens = NULL;
    if (!pieces || !lens) { rc = mt_seterr(MT_ERR_NOMEM, "%s: out of memory", path); goto done; }
    for (uint64_t i = 0; i < n; i++) {
        uint64_t l;
        if ((rc = mt_gguf_arr_str(g, "tokenizer.ggml.tokens", i, &pieces[i], &l))) goto done;
        lens[i] = (size_t)l;
    }
    uint64_t k;
    const void *data;
    if (mt_gguf_get_arr(g, "tokenizer.ggml.scores", &et, &k) == MT_OK) {
        if (et != MT_GGUF_FLOAT32 || k != n || mt_gguf_arr_data(g, "tokenizer.ggml.scores", &data)) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s: tokenizer.ggml.scores must be %llu float32", path, (unsigned long long)n);
            goto done;
        }
        if (!(scores = malloc(n * sizeof *scores))) { rc = mt_seterr(MT_ERR_NOMEM, "%s: out of memory", path); goto done; }
        memcpy(scores, data, n * sizeof *scores);
    }
    if (mt_gguf_get_arr(g, "tokenizer.ggml.token_type", &et, &k) == MT_OK) {
        if ((et != MT_GGUF_INT32 && et != MT_GGUF_UINT32) || k != n || mt_gguf_arr_data(g, "tokenizer.ggml.token_type", &data)) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s: tokenizer.ggml.token_type must be %llu int32", path, (unsigned long long)n);
            goto done;
        }
        if (!(types = malloc(n * sizeof *types))) { rc = mt_seterr(MT_ERR_NOMEM, "%s: out of memory", path); goto done; }
        memcpy(types, data, n * sizeof *types);
        for (uint64_t i = 0; i < n; i++)
            if (types[i] < MT_PIECE_NORMAL || types[i] > MT_PIECE_BYTE) types[i] = MT_PIECE_NORMAL;
    }
    if (kind == MT_TOK_GPT2) {
        if ((rc = mt_gguf_get_arr(g, "tokenizer.ggml.merges", &et, &nm))) goto done;
        if (et != MT_GGUF_STRING || nm > MT_TOK_MAX_MERGES) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s: tokenizer.ggml.merges must be a string array", path);
            goto done;
        }
        merges = calloc(nm ? nm : 1, sizeof *merges);
        mlens = calloc(nm ? nm : 1, sizeof *mlens);
        if (!merges || !mlens) { rc = mt_seterr(MT_ERR_NOMEM, "%s: out of memory", path); goto done; }
        for (uint64_t i = 0; i < nm; i++) {
            uint64_t l;
            if ((rc = mt_gguf_arr_str(g, "tokenizer.ggml.merges", i, &merges[i], &l))) goto done;
            mlens[i] = (size_t)l;
        }
    }
    int64_t bos = -1, eos = -1, unk = -1, v;
    if (mt_gguf_get_i64(g, "tokenizer.ggml.bos_token_id", &v) == MT_OK) bos = v;
    if (mt_gguf_get_i64(g, "tokenizer.ggml.eos_token_id", &v) == MT_OK) eos = v;
    if (mt_gguf_get_i64(g, "tokenizer.ggml.unknown_token_id", &v) == MT_OK) unk = v;
    mt_clearerr();
    if (bos >= (int64_t)n) bos = -1;
    if (eos >= (int64_t)n) eos = -1;
    if (unk >= (int64_t)n) unk = -1;
    rc = mt_tok_from_vocab(out, kind, (size_t)n, pieces, lens, scores, types, (size_t)nm, merges, mlens, (int)bos,
                           (int)eos, (int)unk);
    if (rc) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", mt_last_error());
        rc = mt_seterr(rc, "%s: %s", path, msg);
        goto done;
    }
    if (mt_gguf_get_i64(g, "tokenizer.ggml.add_space_prefix", &v) == MT_OK && kind == MT_TOK_SPM)
        (*out)->prepend = v ? MT_PREPEND_ALWAYS : MT_PREPEND_NEVER;
    const char *pre;
    uint64_t pre_len;
    if (kind == MT_TOK_GPT2 && mt_gguf_get_str(g, "tokenizer.ggml.pre", &pre, &pre_len) == MT_OK) {
        static const struct { const char *name; int split; } known[] = {
            {"default", MT_SPLIT_GPT2}, {"gpt2", MT_SPLIT_GPT2}, {"gpt-2", MT_SPLIT_GPT2},
            {"llama3", MT_SPLIT_LLAMA3}, {"llama-v3", MT_SPLIT_LLAMA3}, {"llama-bpe", MT_SPLIT_LLAMA3},
            {"smaug-bpe", MT_SPLIT_LLAMA3}, {"qwen2", MT_SPLIT_QWEN2},
        };
        int found = 0;
        for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
            if (strlen(known[i].name) == pre_len && memcmp(known[i].name, pre, pre_len) == 0) {
                (*out)->split = known[i].split;
                found = 1;
            }
        if (!found) {
            mt_tok_free(*out);
            *out = NULL;
            rc = mt_seterr(MT_ERR_UNSUPPORTED, "%s: pre-tokenizer tokenizer.ggml.pre '%.*s' is not supported", path,
                           (int)(pre_len > 32 ? 32 : pre_len), pre);
            goto done;
        }
    }
    mt_clearerr();
done:
    free(pieces);
    free(lens);
    free(scores);
    free(types);
    free(merges);
    free(mlens);
    return rc;
}

/* A unigram spiece.model with a tokenizer_config.json beside it: the
 * "extra_ids" it names (T5Tokenizer's sentinels; 100 when the class is
 * T5Tokenizer without the key), which are not in the protobuf. */
static int apply_t5_config(mt_tokenizer *t, const char *text, size_t len, const char *name) {
    if (t->kind != MT_TOK_UNIGRAM || !text) return MT_OK;
    json_t *cfg = json_loadb(text, len, 0, NULL);
    int n = 0;
    if (json_is_object(cfg)) {
        json_t *e = json_object_get(cfg, "extra_ids"), *c = json_object_get(cfg, "tokenizer_class");
        if (json_is_integer(e) && json_integer_value(e) > 0 && json_integer_value(e) <= 100000) n = (int)json_integer_value(e);
        else if (!e && json_is_string(c) && !strcmp(json_string_value(c), "T5Tokenizer")) n = 100;
    }
    json_decref(cfg);
    return mt_tok_add_extra_ids(t, n, name);
}

/* fairseq's sentencepiece.bpe.model (NLLB) gets fairseq's id layout. */
static int is_fairseq_name(const char *name) {
    const char *b = strrchr(name, '/');
    b = b ? b + 1 : name;
    const char *c = strrchr(b, ':'); /* "archive:member" */
    return !strcmp(c ? c + 1 : b, "sentencepiece.bpe.model");
}

static int spm_file_with_config(mt_tokenizer **out, const char *path) {
    int rc = mt_tok_load_spm(out, path);
    const int fairseq = rc == MT_OK && is_fairseq_name(path);
    if (rc || ((*out)->kind != MT_TOK_UNIGRAM && !fairseq)) return rc;
    char *dir = mt_path_dir(path);
    char *cfg = dir ? mt_path_join(dir, "tokenizer_config.json") : NULL;
    mt_mapped m;
    int have = 0;
    if (cfg && mt_path_exists(cfg) && mt_map_file(&m, cfg) == MT_OK) have = 1;
    mt_clearerr();
    if (fairseq) rc = mt_tok_apply_fairseq(out, have ? (const char *)m.data : NULL, have ? m.size : 0, path);
    else if (have) rc = apply_t5_config(*out, (const char *)m.data, m.size, cfg);
    if (have) mt_unmap_file(&m);
    free(dir);
    free(cfg);
    if (rc) {
        mt_tok_free(*out);
        *out = NULL;
    }
    return rc;
}

int mt_tok_load_for_ckpt(mt_tokenizer **out, const struct mt_ckpt *ck) {
    if (!out || !ck) return mt_seterr(MT_ERR_ARG, "mt_tok_load_for_ckpt: NULL argument");
    *out = NULL;
    if (mt_ckpt_format(ck) == MT_FMT_GGUF) {
        const mt_gguf *g = mt_ckpt_gguf(ck);
        if (!g) return mt_seterr(MT_ERR_INTERNAL, "%s: GGUF checkpoint without GGUF metadata", mt_ckpt_path(ck));
        return mt_tok_from_gguf(out, g, mt_ckpt_path(ck));
    }
    const mt_tokenizer_files *f = mt_ckpt_tokenizer_files(ck);
    if (f && (f->spm_model_buf || f->hf_json_buf)) { /* read from an archive */
        char name[4400];
        int rc = MT_ERR_NOT_FOUND;
        if (f->spm_model_buf) {
            snprintf(name, sizeof name, "%s:%s", mt_ckpt_path(ck), f->spm_model_name ? f->spm_model_name : "tokenizer.model");
            rc = mt_tok_parse_spm(out, f->spm_model_buf, f->spm_model_len, name);
            if (rc == MT_OK && is_fairseq_name(name))
                rc = mt_tok_apply_fairseq(out, f->hf_config_buf, f->hf_config_len, name);
            else if (rc == MT_OK)
                rc = apply_t5_config(*out, f->hf_config_buf, f->hf_config_len, name);
            if (rc) {
                mt_tok_free(*out);
                *out = NULL;
            }
            if (rc == MT_OK || !f->hf_json_buf) return rc;
            mt_log(MT_LOG_WARN, "%s; using tokenizer.json instead", mt_last_error());
        }
        snprintf(name, sizeof name, "%s:tokenizer.json", mt_ckpt_path(ck));
        rc = mt_tok_parse_hf_json(out, f->hf_json_buf, f->hf_json_len, name);
        if (rc == MT_OK && f->hf_config_buf) mt_tok_apply_hf_config(*out, f->hf_config_buf, f->hf_config_len);
        return rc;
    }
    if (f && f->spm_model_path) {
        int rc = spm_file_with_config(out, f->spm_model_path);
        if (rc == MT_OK || !f->hf_json_path) return rc;
        /* A broken tokenizer.model with a tokenizer.json beside it: use that,
         * and say so. When both are broken, both messages are kept. */
        char *why = strdup(mt_last_error());
        int rc2 = mt_tok_load_hf_json(out, f->hf_json_path);
        if (rc2 == MT_OK)
            mt_log(MT_LOG_WARN, "%s; using %s instead", why ? why : "tokenizer.model unreadable", f->hf_json_path);
        else {
            char *why2 = strdup(mt_last_error());
            rc = mt_seterr(rc, "%s; and %s", why ? why : "tokenizer.model unreadable", why2 ? why2 : "");
            free(why2);
        }
        free(why);
        return rc2 == MT_OK ? MT_OK : rc;
    }
    if (f && f->hf_json_path) return mt_tok_load_hf_json(out, f->hf_json_path);
    return mt_seterr(MT_ERR_NOT_FOUND, "%s: no tokenizer.model, spiece.model, sentencepiece.bpe.model or tokenizer.json beside the checkpoint",
                     mt_ckpt_path(ck));
}
