/* tokenizer_file.c — encoding a text file with a bound on the tokens wanted.
 *
 * Verbs that score or calibrate on the first N tokens of a text (eval
 * --max-windows, calibration --calib-tokens) must not read and encode a
 * whole multi-gigabyte file for them. The file is read in growing pieces
 * (pipes too); each piece is cut just after a line break that is followed
 * by a non-space character, where no token of either tokenizer kind (SPM
 * pieces, GPT-2 pre-tokens) spans the cut, and encoded. Reading stops once
 * the encoded prefix holds enough tokens, so those tokens are the first
 * tokens of the whole text's encoding. Each piece doubles the last, so the
 * encoding work is at most about twice that of the final prefix. */
#define _GNU_SOURCE
#include "io_impl.h"
#include "moetool/mt_tokenizer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Encodes text[0, len) into a malloc'd array (replacing *ids). */
static int encode_all(const mt_tokenizer *t, const char *text, size_t len, int32_t **ids, size_t *n) {
    size_t cap = len + 16, got = 0;
    int32_t *buf = realloc(*ids, cap * sizeof *buf);
    if (!buf) return mt_seterr(MT_ERR_NOMEM, "out of memory encoding %zu bytes of text", len);
    *ids = buf;
    int rc = mt_tok_encode(t, text, len, buf, cap, &got);
    if (rc == MT_OK && got > cap) {
        buf = realloc(*ids, got * sizeof *buf);
        if (!buf) return mt_seterr(MT_ERR_NOMEM, "out of memory encoding %zu bytes of text", len);
        *ids = buf;
        rc = mt_tok_encode(t, text, len, buf, got, &got);
    }
    *n = got;
    return rc;
}

/* End of the last line break in text[0, len) followed by a non-space, or 0. */
static size_t safe_cut(const char *text, size_t len) {
    for (size_t p = len; p-- > 1;) {
        if (text[p - 1] != '\n') continue;
        const char c = text[p];
        if (c != ' ' && c != '\n' && c != '\r' && c != '\t' && c != '\f' && c != '\v') return p;
    }
    return 0;
}

int mt_tok_encode_file(const mt_tokenizer *t, const char *path, size_t max_tokens, int32_t **ids, size_t *n,
                       int *whole) {
    if (!t || !path || !ids || !n) return mt_seterr(MT_ERR_ARG, "mt_tok_encode_file: NULL argument");
    *ids = NULL;
    *n = 0;
    if (whole) *whole = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return mt_seterr(MT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    char *text = NULL;
    size_t len = 0, cap = 0;
    /* First piece: generous for the tokens wanted (a token is rarely over 8 bytes). */
    size_t want = max_tokens ? (max_tokens > ((size_t)1 << 27) ? (size_t)1 << 30 : max_tokens * 8 + 65536)
                             : SIZE_MAX;
    int eof = 0, rc = MT_OK;
    for (;;) {
        while (!eof && len < want) {
            if (len + 65536 + 1 > cap) {
                size_t nc = cap ? cap * 2 : (size_t)1 << 20;
                while (nc < len + 65536 + 1) nc *= 2;
                char *nt = realloc(text, nc);
                if (!nt) {
                    rc = mt_seterr(MT_ERR_NOMEM, "%s: out of memory reading", path);
                    goto done;
                }
                text = nt;
                cap = nc;
            }
            const size_t ask = want - len < 65536 ? want - len : 65536;
            size_t got = fread(text + len, 1, ask, f);
            len += got;
            if (got < ask) {
                if (ferror(f)) {
                    rc = mt_seterr(MT_ERR_IO, "%s: read error", path);
                    goto done;
                }
                eof = 1;
            }
        }
        if (eof) {
            if ((rc = encode_all(t, text ? text : "", len, ids, n))) goto done;
            if (whole) *whole = 1;
            break;
        }
        size_t cut = safe_cut(text, len);
        if (cut > 0) {
            if ((rc = encode_all(t, text, cut, ids, n))) goto done;
            if (*n >= max_tokens) break;
        }
        want = len * 2;
    }
done:
    fclose(f);
    free(text);
    if (rc) {
        free(*ids);
        *ids = NULL;
        *n = 0;
    }
    return rc;
}
