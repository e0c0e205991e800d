/* tokenizer_spm.c — sentencepiece tokenizer.model: reading and writing the
 * protobuf by hand (no protobuf library).
 *
 * Byte layout (protobuf wire format): a message is a sequence of fields, each
 * a varint key (field_number << 3 | wire_type) followed by a value: wire type
 * 0 = varint (7 bits per byte, low first, high bit = more, at most 10 bytes),
 * 1 = 8 bytes, 2 = varint length + that many bytes, 5 = 4 bytes (float32 LE).
 * Unknown fields are skipped; groups (3, 4) are rejected.
 *
 *   ModelProto        1: repeated SentencePiece pieces (message)
 *                     2: TrainerSpec trainer_spec (message)
 *                     3: NormalizerSpec normalizer_spec (message)
 *   SentencePiece     1: piece (string)  2: score (float)  3: type (enum,
 *                        1 NORMAL 2 UNKNOWN 3 CONTROL 4 USER_DEFINED 5 UNUSED
 *                        6 BYTE; default NORMAL)
 *   TrainerSpec       3: model_type (1 UNIGRAM (default) 2 BPE 3 WORD 4 CHAR)
 *                     4: vocab_size  24: treat_whitespace_as_suffix
 *                     35: byte_fallback  40/41/42/43: unk/bos/eos/pad id
 *                     (int32; negative ids are 10-byte varints)
 *                     45/46/47: unk/bos/eos piece (string)
 *   NormalizerSpec    1: name  2: precompiled_charsmap (bytes)
 *                     3: add_dummy_prefix (default true)
 *                     4: remove_extra_whitespaces (default true)
 *                     5: escape_whitespaces (default true)
 *
 * BPE models (Mixtral's tokenizer.model, NLLB's sentencepiece.bpe.model)
 * and UNIGRAM models (T5's spiece.model), with or without a precompiled
 * charsmap (checked and run by tokenizer_unigram.c), are accepted;
 * anything else is MT_ERR_UNSUPPORTED naming the feature. */
#include "tokenizer_impl.h"

#include "io_impl.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    const uint8_t *p;
    size_t n, pos;
    size_t base;        /* offset of p[0] in the file, for messages */
    const char *name;
} pb;

static int pb_varint(pb *r, uint64_t *v) {
    uint64_t x = 0;
    size_t at = r->base + r->pos;
    for (int i = 0; i < 10; i++) {
        if (r->pos >= r->n) return mt_seterr(MT_ERR_FORMAT, "%s: truncated varint at offset %zu", r->name, at);
        uint8_t b = r->p[r->pos++];
        if (i == 9 && b > 1) return mt_seterr(MT_ERR_FORMAT, "%s: varint overflows 64 bits at offset %zu", r->name, at);
        x |= (uint64_t)(b & 0x7F) << (7 * i);
        if (!(b & 0x80)) {
            *v = x;
            return MT_OK;
        }
    }
    return mt_seterr(MT_ERR_FORMAT, "%s: varint longer than 10 bytes at offset %zu", r->name, at);
}

/* Next field: number, wire type, and for wire type 2 a sub-reader. */
typedef struct {
    uint32_t field;
    int wt;
    uint64_t v;       /* varint / fixed value */
    pb sub;           /* length-delimited payload */
    size_t at;        /* offset of the key */
} pb_field;

static int pb_next(pb *r, pb_field *f) {
    uint64_t key;
    int rc;
    f->at = r->base + r->pos;
    if ((rc = pb_varint(r, &key))) return rc;
    f->field = (uint32_t)(key >> 3);
    f->wt = (int)(key & 7);
    if (key >> 3 == 0 || key >> 3 > 536870911u)
        return mt_seterr(MT_ERR_FORMAT, "%s: bad field number at offset %zu", r->name, f->at);
    switch (f->wt) {
    case 0:
        return pb_varint(r, &f->v);
    case 1:
    case 5: {
        size_t w = f->wt == 1 ? 8 : 4;
        if (r->n - r->pos < w) return mt_seterr(MT_ERR_FORMAT, "%s: truncated field %u at offset %zu", r->name, f->field, f->at);
        uint64_t x = 0;
        for (size_t i = 0; i < w; i++) x |= (uint64_t)r->p[r->pos + i] << (8 * i);
        r->pos += w;
        f->v = x;
        return MT_OK;
    }
    case 2: {
        uint64_t len;
        if ((rc = pb_varint(r, &len))) return rc;
        if (len > r->n - r->pos)
            return mt_seterr(MT_ERR_FORMAT, "%s: field %u at offset %zu: length %llu runs past the end (%zu bytes left)",
                             r->name, f->field, f->at, (unsigned long long)len, r->n - r->pos);
        f->sub = (pb){r->p + r->pos, (size_t)len, 0, r->base + r->pos, r->name};
        r->pos += (size_t)len;
        return MT_OK;
    }
    default:
        return mt_seterr(MT_ERR_FORMAT, "%s: unsupported wire type %d (field %u) at offset %zu", r->name, f->wt,
                         f->field, f->at);
    }
}

static int want(const pb *r, const pb_field *f, int wt) {
    if (f->wt == wt) return MT_OK;
    return mt_seterr(MT_ERR_FORMAT, "%s: field %u at offset %zu has wire type %d, expected %d", r->name, f->field,
                     f->at, f->wt, wt);
}

static int32_t as_i32(uint64_t v) {
    int64_t s = (int64_t)v;
    if (s < INT32_MIN || s > INT32_MAX) return -1;
    return (int32_t)s;
}

typedef struct {
    int model_type;
    int byte_fallback;
    int unk_id, bos_id, eos_id;
    int ws_suffix;
    const uint8_t *piece_name[3]; /* unk, bos, eos piece strings (unused here) */
} trainer;

static int parse_trainer(pb r, trainer *tr) {
    pb_field f;
    int rc;
    while (r.pos < r.n) {
        if ((rc = pb_next(&r, &f))) return rc;
        switch (f.field) {
        case 3: if ((rc = want(&r, &f, 0))) return rc; tr->model_type = (int)as_i32(f.v); break;
        case 24: if ((rc = want(&r, &f, 0))) return rc; tr->ws_suffix = f.v != 0; break;
        case 35: if ((rc = want(&r, &f, 0))) return rc; tr->byte_fallback = f.v != 0; break;
        case 40: if ((rc = want(&r, &f, 0))) return rc; tr->unk_id = as_i32(f.v); break;
        case 41: if ((rc = want(&r, &f, 0))) return rc; tr->bos_id = as_i32(f.v); break;
        case 42: if ((rc = want(&r, &f, 0))) return rc; tr->eos_id = as_i32(f.v); break;
        default: break;
        }
    }
    return MT_OK;
}

typedef struct {
    int add_dummy_prefix, remove_extra_ws, escape_ws;
    const uint8_t *charsmap;
    size_t charsmap_len, charsmap_at;
    char name[64];
} normalizer;

static int parse_normalizer(pb r, normalizer *ns) {
    pb_field f;
    int rc;
    while (r.pos < r.n) {
        if ((rc = pb_next(&r, &f))) return rc;
        switch (f.field) {
        case 1:
            if ((rc = want(&r, &f, 2))) return rc;
            snprintf(ns->name, sizeof ns->name, "%.*s", (int)(f.sub.n > 63 ? 63 : f.sub.n), (const char *)f.sub.p);
            break;
        case 2:
            if ((rc = want(&r, &f, 2))) return rc;
            ns->charsmap = f.sub.p;
            ns->charsmap_len = f.sub.n;
            ns->charsmap_at = f.sub.base;
            break;
        case 3: if ((rc = want(&r, &f, 0))) return rc; ns->add_dummy_prefix = f.v != 0; break;
        case 4: if ((rc = want(&r, &f, 0))) return rc; ns->remove_extra_ws = f.v != 0; break;
        case 5: if ((rc = want(&r, &f, 0))) return rc; ns->escape_ws = f.v != 0; break;
        default: break;
        }
    }
    return MT_OK;
}

static int parse_piece(mt_tokenizer *t, pb r, size_t index) {
    pb_field f;
    int rc;
    const char *s = NULL;
    size_t len = 0;
    float score = 0;
    int type = MT_PIECE_NORMAL, have = 0;
    size_t at = r.base;
    while (r.pos < r.n) {
        if ((rc = pb_next(&r, &f))) return rc;
        switch (f.field) {
        case 1:
            if ((rc = want(&r, &f, 2))) return rc;
            s = (const char *)f.sub.p;
            len = f.sub.n;
            have = 1;
            break;
        case 2: {
            if ((rc = want(&r, &f, 5))) return rc;
            uint32_t u = (uint32_t)f.v;
            memcpy(&score, &u, 4);
            break;
        }
        case 3:
            if ((rc = want(&r, &f, 0))) return rc;
            if (f.v < MT_PIECE_NORMAL || f.v > MT_PIECE_BYTE)
                return mt_seterr(MT_ERR_FORMAT, "%s: piece %zu (offset %zu) has unknown type %llu", r.name, index, at,
                                 (unsigned long long)f.v);
            type = (int)f.v;
            break;
        default: break;
        }
    }
    if (!have || len == 0) return mt_seterr(MT_ERR_FORMAT, "%s: piece %zu (offset %zu) is empty", r.name, index, at);
    if (score != score) return mt_seterr(MT_ERR_FORMAT, "%s: piece %zu (offset %zu) has a NaN score", r.name, index, at);
    return mt_tok_add_piece(t, s, len, score, type, r.name);
}

int mt_tok_parse_spm(mt_tokenizer **out, const void *buf, size_t len, const char *name) {
    if (!out || (!buf && len)) return mt_seterr(MT_ERR_ARG, "mt_tok_parse_spm: NULL argument");
    if (!name) name = "tokenizer.model";
    *out = NULL;
    mt_tokenizer *t;
    int rc = mt_tok_new(&t, MT_TOK_SPM);
    if (rc) return rc;
    trainer tr = {.model_type = 1, .unk_id = 0, .bos_id = 1, .eos_id = 2};
    normalizer ns = {.add_dummy_prefix = 1, .remove_extra_ws = 1, .escape_ws = 1};
    int have_trainer = 0;
    int32_t *ud = NULL;
    pb r = {buf, len, 0, 0, name};
    pb_field f;
    while (r.pos < r.n) {
        if ((rc = pb_next(&r, &f))) goto fail;
        if (f.field == 1) {
            if ((rc = want(&r, &f, 2)) || (rc = parse_piece(t, f.sub, t->n_vocab))) goto fail;
        } else if (f.field == 2) {
            if ((rc = want(&r, &f, 2)) || (rc = parse_trainer(f.sub, &tr))) goto fail;
            have_trainer = 1;
        } else if (f.field == 3) {
            if ((rc = want(&r, &f, 2)) || (rc = parse_normalizer(f.sub, &ns))) goto fail;
        }
    }
    if (t->n_vocab == 0) { rc = mt_seterr(MT_ERR_FORMAT, "%s: no pieces (not a sentencepiece model?)", name); goto fail; }
    if (!have_trainer) { rc = mt_seterr(MT_ERR_FORMAT, "%s: no trainer_spec (not a sentencepiece model?)", name); goto fail; }
    if (tr.model_type != 1 && tr.model_type != 2) {
        rc = mt_seterr(MT_ERR_UNSUPPORTED, "%s: sentencepiece model_type %d is not supported (only UNIGRAM and BPE)", name,
                       tr.model_type);
        goto fail;
    }
    if (tr.model_type == 1) {
        t->kind = MT_TOK_UNIGRAM;
        if (ns.charsmap_len && (rc = mt_tok_set_charsmap(t, ns.charsmap, ns.charsmap_len, name))) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", mt_last_error());
            rc = mt_seterr(rc, "%s (normalizer_spec at offset %zu)", msg, ns.charsmap_at);
            goto fail;
        }
    } else if (ns.charsmap_len && (rc = mt_tok_set_charsmap(t, ns.charsmap, ns.charsmap_len, name))) {
        /* BPE with sentencepiece's normaliser (NLLB's nmt_nfkc) */
        char msg[512];
        snprintf(msg, sizeof msg, "%s", mt_last_error());
        rc = mt_seterr(rc, "%s (normalizer_spec at offset %zu)", msg, ns.charsmap_at);
        goto fail;
    }
    if (tr.ws_suffix) { rc = mt_seterr(MT_ERR_UNSUPPORTED, "%s: treat_whitespace_as_suffix is not supported", name); goto fail; }
    if ((rc = mt_tok_build_map(t, name))) goto fail;
    size_t n_ud = 0;
    if (!(ud = malloc(t->n_vocab * sizeof *ud))) { rc = mt_seterr(MT_ERR_NOMEM, "%s: out of memory", name); goto fail; }
    for (size_t i = 0; i < t->n_vocab; i++) {
        int ty = t->pieces[i].type;
        if (ty == MT_PIECE_UNKNOWN) {
            if (t->unk >= 0) { rc = mt_seterr(MT_ERR_FORMAT, "%s: more than one unknown piece (%d and %zu)", name, t->unk, i); goto fail; }
            t->unk = (int)i;
        } else if (ty == MT_PIECE_BYTE && !tr.byte_fallback) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s: byte piece %zu present although byte_fallback is off", name, i);
            goto fail;
        } else if (ty == MT_PIECE_USER_DEFINED) {
            ud[n_ud++] = (int32_t)i;
        } else if (ty == MT_PIECE_UNUSED) {
            t->has_unused = 1;
        }
    }
    if (t->unk < 0) { rc = mt_seterr(MT_ERR_FORMAT, "%s: no unknown piece (<unk>)", name); goto fail; }
    mt_tok_find_byte_pieces(t, 0);
    t->byte_fallback = tr.byte_fallback;
    t->spm_fuse_unk = t->kind == MT_TOK_SPM && !tr.byte_fallback;
    t->bos = tr.bos_id >= 0 && (size_t)tr.bos_id < t->n_vocab ? tr.bos_id : -1;
    t->eos = tr.eos_id >= 0 && (size_t)tr.eos_id < t->n_vocab ? tr.eos_id : -1;
    t->prepend = ns.add_dummy_prefix ? MT_PREPEND_ALWAYS : MT_PREPEND_NEVER;
    t->remove_extra_ws = ns.remove_extra_ws;
    t->escape_ws = ns.escape_ws;
    if ((rc = mt_tok_set_specials(t, ud, n_ud))) goto fail;
    t->has_user_defined = n_ud > 0;
    mt_tok_finalize(t);
    if (t->kind == MT_TOK_UNIGRAM) mt_tok_unigram_scores(t);
    free(ud);
    *out = t;
    return MT_OK;
fail:
    free(ud);
    mt_tok_free(t);
    return rc;
}

int mt_tok_load_spm(mt_tokenizer **out, const char *path) {
    if (!out || !path) return mt_seterr(MT_ERR_ARG, "mt_tok_load_spm: NULL argument");
    mt_mapped m;
    int rc = mt_map_file(&m, path);
    if (rc) return rc;
    rc = mt_tok_parse_spm(out, m.data, m.size, path);
    mt_unmap_file(&m);
    return rc;
}

/* ---- writing ----------------------------------------------------------- */

typedef struct {
    uint8_t *p;
    size_t n, cap;
    int err;
} wbuf;

static void wput(wbuf *w, const void *s, size_t n) {
    if (w->err) return;
    if (w->n + n > w->cap) {
        size_t c = w->cap ? w->cap : 4096;
        while (c < w->n + n) c *= 2;
        uint8_t *q = realloc(w->p, c);
        if (!q) { w->err = 1; return; }
        w->p = q;
        w->cap = c;
    }
    memcpy(w->p + w->n, s, n);
    w->n += n;
}

static void wvarint(wbuf *w, uint64_t v) {
    uint8_t b[10];
    size_t n = 0;
    do {
        b[n] = (uint8_t)(v & 0x7F);
        v >>= 7;
        if (v) b[n] |= 0x80;
        n++;
    } while (v);
    wput(w, b, n);
}

static void wkey(wbuf *w, uint32_t field, int wt) { wvarint(w, (uint64_t)field << 3 | (uint64_t)wt); }
static void wint(wbuf *w, uint32_t field, int64_t v) { wkey(w, field, 0); wvarint(w, (uint64_t)v); }
static void wbytes(wbuf *w, uint32_t field, const void *s, size_t n) {
    wkey(w, field, 2);
    wvarint(w, n);
    wput(w, s, n);
}
static void wsub(wbuf *w, uint32_t field, const wbuf *sub) { wbytes(w, field, sub->p, sub->n); }

int mt_tok_write_spm(const mt_tokenizer *t, const char *path) {
    if (!t || !path) return mt_seterr(MT_ERR_ARG, "mt_tok_write_spm: NULL argument");
    if (t->kind != MT_TOK_SPM)
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: only sentencepiece-style tokenizers can be written as tokenizer.model", path);
    if (t->unk < 0) return mt_seterr(MT_ERR_UNSUPPORTED, "%s: the tokenizer has no unknown token, which tokenizer.model requires", path);
    if (t->cm_units || t->n_lang)
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: a tokenizer with a precompiled charsmap or fairseq's id layout is not "
                         "rewritten (copy its sentencepiece model instead)", path);
    wbuf w = {0}, s = {0};
    int rc = MT_OK;
    for (size_t i = 0; i < t->n_vocab; i++) {
        const mt_tok_piece_rec *p = &t->pieces[i];
        if (p->len == 0) { rc = mt_seterr(MT_ERR_UNSUPPORTED, "%s: piece %zu is empty", path, i); goto done; }
        int type = (int)i == t->unk ? MT_PIECE_UNKNOWN : p->type == MT_PIECE_UNKNOWN ? MT_PIECE_CONTROL : p->type;
        if (type == MT_PIECE_BYTE && !t->byte_fallback) type = MT_PIECE_USER_DEFINED;
        s.n = 0;
        wbytes(&s, 1, t->pool + p->off, p->len);
        uint32_t u;
        memcpy(&u, &p->score, 4);
        uint8_t f[4] = {(uint8_t)u, (uint8_t)(u >> 8), (uint8_t)(u >> 16), (uint8_t)(u >> 24)};
        wkey(&s, 2, 5);
        wput(&s, f, 4);
        if (type != MT_PIECE_NORMAL) wint(&s, 3, type);
        wsub(&w, 1, &s);
    }
    s.n = 0;
    wint(&s, 3, 2); /* model_type BPE */
    wint(&s, 4, (int64_t)t->n_vocab);
    wint(&s, 35, t->byte_fallback ? 1 : 0);
    wint(&s, 40, t->unk);
    wint(&s, 41, t->bos);
    wint(&s, 42, t->eos);
    wint(&s, 43, -1);
    {
        const int ids[3] = {t->unk, t->bos, t->eos};
        for (int k = 0; k < 3; k++)
            if (ids[k] >= 0) wbytes(&s, (uint32_t)(45 + k), t->pool + t->pieces[ids[k]].off, t->pieces[ids[k]].len);
    }
    wsub(&w, 2, &s);
    s.n = 0;
    wbytes(&s, 1, "identity", 8);
    wint(&s, 3, t->prepend != MT_PREPEND_NEVER);
    wint(&s, 4, 0);
    wint(&s, 5, t->escape_ws ? 1 : 0);
    wsub(&w, 3, &s);
    if (w.err || s.err) { rc = mt_seterr(MT_ERR_NOMEM, "%s: out of memory", path); goto done; }
    mt_out o;
    if ((rc = mt_out_open_file(&o, path))) goto done;
    if ((rc = mt_out_write(&o, w.p, w.n)) || (rc = mt_out_commit(&o))) {
        mt_out_abort(&o);
        goto done;
    }
    mt_out_abort(&o);
done:
    free(w.p);
    free(s.p);
    return rc;
}
