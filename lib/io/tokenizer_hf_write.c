/* tokenizer_hf_write.c — a sentencepiece-style vocabulary written as a
 * Hugging Face tokenizer.json, so that a model converted from GGUF loads in
 * transformers' fast tokenizer (no protobuf/sentencepiece needed).
 *
 * The layout is what transformers' LlamaConverter writes for a legacy Llama
 * tokenizer: a BPE model with byte fallback, a normalizer that prepends
 * U+2581 and replaces spaces by it, no pre-tokenizer, a decoder that undoes
 * both, BOS added by the post-processor, control and user pieces as added
 * tokens. The merges are derived from the vocabulary as its
 * SentencePieceExtractor does: for every piece, every split into two pieces
 * of the vocabulary (ordered by their ids), all sorted stably by the merged
 * piece's score, highest first. */
#include "io_impl.h"
#include "tokenizer_impl.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int32_t l, r;  /* ids of the two halves */
    int32_t piece; /* id of the merged piece */
    size_t seq;    /* insertion order, for a stable sort */
} merge_t;

static const mt_tokenizer *g_sort_tok; /* qsort has no user pointer */

static int cmp_merge(const void *a, const void *b) {
    const merge_t *x = a, *y = b;
    const float sx = g_sort_tok->pieces[x->piece].score, sy = g_sort_tok->pieces[y->piece].score;
    if (sx != sy) return sx > sy ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static json_t *piece_json(const mt_tokenizer *t, int id) {
    const mt_tok_piece_rec *p = &t->pieces[id];
    return json_stringn(t->pool + p->off, p->len);
}

static json_t *added_token(const mt_tokenizer *t, int id, int special) {
    json_t *a = json_object();
    json_object_set_new(a, "id", json_integer(id));
    json_object_set_new(a, "content", piece_json(t, id));
    json_object_set_new(a, "single_word", json_false());
    json_object_set_new(a, "lstrip", json_false());
    json_object_set_new(a, "rstrip", json_false());
    json_object_set_new(a, "normalized", json_false());
    json_object_set_new(a, "special", special ? json_true() : json_false());
    return a;
}

static json_t *str_pattern(const char *s) {
    json_t *p = json_object();
    json_object_set_new(p, "String", json_string(s));
    return p;
}

static json_t *build(const mt_tokenizer *t, const char *path, int *status) {
    json_t *root = json_object(), *added = json_array(), *vocab = json_object(), *merges = json_array();
    merge_t *ms = NULL;
    size_t nm = 0, cap = 0;
    char sp[4] = "\xe2\x96\x81";
    for (size_t i = 0; i < t->n_vocab; i++) {
        const mt_tok_piece_rec *p = &t->pieces[i];
        json_t *s = piece_json(t, (int)i);
        if (!s) {
            *status = mt_seterr(MT_ERR_UNSUPPORTED, "%s: piece %zu is not valid UTF-8, which tokenizer.json cannot hold", path, i);
            goto fail;
        }
        json_object_set_new(vocab, json_string_value(s), json_integer((json_int_t)i));
        json_decref(s);
        const int ty = (int)i == t->unk ? MT_PIECE_UNKNOWN : p->type;
        if (ty == MT_PIECE_UNKNOWN || ty == MT_PIECE_CONTROL || ty == MT_PIECE_USER_DEFINED)
            json_array_append_new(added, added_token(t, (int)i, ty != MT_PIECE_USER_DEFINED));
        /* merges: every split of a normal piece into two pieces */
        if (ty != MT_PIECE_NORMAL || p->len < 2) continue;
        const char *w = t->pool + p->off;
        size_t local0 = nm;
        for (size_t k = 1; k < p->len; k++) {
            if ((w[k] & 0xc0) == 0x80) continue; /* not a character boundary */
            int l = mt_tok_lookup(t, w, k), r = mt_tok_lookup(t, w + k, p->len - k);
            if (l < 0 || r < 0) continue;
            if (memchr(w, ' ', p->len)) continue; /* "a b" cannot hold a space */
            if (nm == cap) {
                size_t nc = cap ? cap * 2 : 4096;
                merge_t *g = realloc(ms, nc * sizeof *ms);
                if (!g) {
                    *status = mt_seterr(MT_ERR_NOMEM, "%s: out of memory", path);
                    goto fail;
                }
                ms = g;
                cap = nc;
            }
            ms[nm++] = (merge_t){l, r, (int32_t)i, 0};
        }
        /* within one piece: by the ids of the halves */
        for (size_t a = local0 + 1; a < nm; a++)
            for (size_t b = a; b > local0 && (ms[b].l < ms[b - 1].l || (ms[b].l == ms[b - 1].l && ms[b].r < ms[b - 1].r));
                 b--) {
                merge_t x = ms[b];
                ms[b] = ms[b - 1];
                ms[b - 1] = x;
            }
    }
    for (size_t k = 0; k < nm; k++) ms[k].seq = k;
    g_sort_tok = t;
    if (nm) qsort(ms, nm, sizeof *ms, cmp_merge);
    for (size_t k = 0; k < nm; k++) {
        const mt_tok_piece_rec *a = &t->pieces[ms[k].l], *b = &t->pieces[ms[k].r];
        size_t n = a->len + 1 + b->len;
        char *s = malloc(n + 1);
        if (!s) {
            *status = mt_seterr(MT_ERR_NOMEM, "%s: out of memory", path);
            goto fail;
        }
        memcpy(s, t->pool + a->off, a->len);
        s[a->len] = ' ';
        memcpy(s + a->len + 1, t->pool + b->off, b->len);
        s[n] = 0;
        json_array_append_new(merges, json_stringn(s, n));
        free(s);
    }
    free(ms);
    ms = NULL;

    json_object_set_new(root, "version", json_string("1.0"));
    json_object_set_new(root, "truncation", json_null());
    json_object_set_new(root, "padding", json_null());
    json_object_set_new(root, "added_tokens", added);
    added = NULL;
    /* normalizer: (prepend U+2581) + replace ' ' by U+2581 */
    json_t *norms = json_array();
    if (t->prepend != MT_PREPEND_NEVER) {
        json_t *pre = json_object();
        json_object_set_new(pre, "type", json_string("Prepend"));
        json_object_set_new(pre, "prepend", json_string(sp));
        json_array_append_new(norms, pre);
    }
    json_t *rep = json_object();
    json_object_set_new(rep, "type", json_string("Replace"));
    json_object_set_new(rep, "pattern", str_pattern(" "));
    json_object_set_new(rep, "content", json_string(sp));
    json_array_append_new(norms, rep);
    json_t *norm = json_object();
    json_object_set_new(norm, "type", json_string("Sequence"));
    json_object_set_new(norm, "normalizers", norms);
    json_object_set_new(root, "normalizer", norm);
    json_object_set_new(root, "pre_tokenizer", json_null());
    /* post-processor: BOS first, as add_bos_token */
    if (t->bos >= 0) {
        json_t *pp = json_object(), *single = json_array(), *pair = json_array(), *specials = json_object();
        json_t *bos_name = piece_json(t, t->bos);
        const char *bn = json_string_value(bos_name);
        for (int k = 0; k < 2; k++) {
            json_t *seq = k ? pair : single;
            for (int part = 0; part <= k; part++) {
                json_t *st = json_object(), *sti = json_object();
                json_object_set_new(sti, "id", json_string(bn));
                json_object_set_new(sti, "type_id", json_integer(part));
                json_object_set_new(st, "SpecialToken", sti);
                json_array_append_new(seq, st);
                json_t *sq = json_object(), *sqi = json_object();
                json_object_set_new(sqi, "id", json_string(part ? "B" : "A"));
                json_object_set_new(sqi, "type_id", json_integer(part));
                json_object_set_new(sq, "Sequence", sqi);
                json_array_append_new(seq, sq);
            }
        }
        json_t *sd = json_object(), *ids = json_array(), *toks = json_array();
        json_object_set_new(sd, "id", json_string(bn));
        json_array_append_new(ids, json_integer(t->bos));
        json_array_append_new(toks, json_string(bn));
        json_object_set_new(sd, "ids", ids);
        json_object_set_new(sd, "tokens", toks);
        json_object_set_new(specials, bn, sd);
        json_object_set_new(pp, "type", json_string("TemplateProcessing"));
        json_object_set_new(pp, "single", single);
        json_object_set_new(pp, "pair", pair);
        json_object_set_new(pp, "special_tokens", specials);
        json_object_set_new(root, "post_processor", pp);
        json_decref(bos_name);
    } else {
        json_object_set_new(root, "post_processor", json_null());
    }
    /* decoder: U+2581 -> ' ', bytes, fuse, strip the prepended space */
    json_t *decs = json_array(), *d;
    d = json_object();
    json_object_set_new(d, "type", json_string("Replace"));
    json_object_set_new(d, "pattern", str_pattern(sp));
    json_object_set_new(d, "content", json_string(" "));
    json_array_append_new(decs, d);
    if (t->byte_fallback) {
        d = json_object();
        json_object_set_new(d, "type", json_string("ByteFallback"));
        json_array_append_new(decs, d);
    }
    d = json_object();
    json_object_set_new(d, "type", json_string("Fuse"));
    json_array_append_new(decs, d);
    if (t->prepend != MT_PREPEND_NEVER) {
        d = json_object();
        json_object_set_new(d, "type", json_string("Strip"));
        json_object_set_new(d, "content", json_string(" "));
        json_object_set_new(d, "start", json_integer(1));
        json_object_set_new(d, "stop", json_integer(0));
        json_array_append_new(decs, d);
    }
    json_t *dec = json_object();
    json_object_set_new(dec, "type", json_string("Sequence"));
    json_object_set_new(dec, "decoders", decs);
    json_object_set_new(root, "decoder", dec);
    json_t *model = json_object();
    json_object_set_new(model, "type", json_string("BPE"));
    json_object_set_new(model, "dropout", json_null());
    if (t->unk >= 0) json_object_set_new(model, "unk_token", piece_json(t, t->unk));
    else json_object_set_new(model, "unk_token", json_null());
    json_object_set_new(model, "continuing_subword_prefix", json_null());
    json_object_set_new(model, "end_of_word_suffix", json_null());
    json_object_set_new(model, "fuse_unk", json_true());
    json_object_set_new(model, "byte_fallback", t->byte_fallback ? json_true() : json_false());
    json_object_set_new(model, "vocab", vocab);
    json_object_set_new(model, "merges", merges);
    json_object_set_new(root, "model", model);
    return root;
fail:
    free(ms);
    json_decref(added);
    json_decref(vocab);
    json_decref(merges);
    json_decref(root);
    return NULL;
}

int mt_tok_write_hf_json(const mt_tokenizer *t, const char *dir) {
    if (!t || !dir) return mt_seterr(MT_ERR_ARG, "mt_tok_write_hf_json: NULL argument");
    if (t->kind != MT_TOK_SPM)
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: only sentencepiece-style vocabularies are written as tokenizer.json",
                         dir);
    if (t->remove_extra_ws)
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: the vocabulary removes extra whitespace, which tokenizer.json cannot "
                         "express", dir);
    int st = MT_OK;
    json_t *j = build(t, dir, &st);
    if (!j) return st;
    char *text = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (!text) return mt_seterr(MT_ERR_NOMEM, "%s: out of memory", dir);
    int rc = mt_write_small_file(dir, "tokenizer.json", text, strlen(text));
    free(text);
    return rc;
}
