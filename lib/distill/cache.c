/* cache.c — the teacher's top-K logit cache of `moetool distill
 * --topk-logits K`: for each training window (aligned windows of --seq
 * tokens of the encoded data) the K largest teacher logits of every position
 * and their token ids, computed once and kept in a zstd-compressed file that
 * later runs (more steps, other KD weights or learning rates, --resume)
 * reuse. The KD term then sees the teacher's distribution restricted to its
 * top K, renormalised (dst_topk_expand gives the loss those K logits and
 * -1e30 elsewhere, whose probability is 0); with K = vocab it is the full
 * distribution and the loss equals the uncached one.
 *
 * File ("OUT.logits" unless --logit-cache names one), written under a
 * temporary name and renamed into place:
 *   offset 0  "MTDSTLC1"
 *          8  u64 key      hash of the teacher (config, final norm, first
 *                          rows of lm_head), the encoded data (tokenizer and
 *                          text), K and the window length
 *         16  u32 K, u32 T, u32 windows of the data, u32 windows stored
 *         32  u64 raw bytes, u64 compressed bytes, u64 FNV-1a of the raw bytes
 *         56  zstd frame of the raw bytes: u32 window index per stored
 *             window, then per stored window T·K i32 ids and T·K f32 logits
 * A file with another key, a bad size or checksum is refused with one line. */
#define _GNU_SOURCE
#include "distill_impl.h"

#include "moetool/mt_write.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

uint64_t dst_cache_key(const mt_model *t, const int32_t *ids, size_t n_ids, int K, int T) {
    const mt_config *c = mt_model_config(t);
    const mt_weights *w = mt_model_weights(t);
    const int dims[] = {c->n_layers, c->hidden, c->n_heads, c->n_kv_heads, c->head_dim, c->ffn, c->vocab,
                        c->n_experts, c->top_k, K, T};
    uint64_t h = fnv(0xcbf29ce484222325ull, dims, sizeof dims);
    h = fnv(h, ids, n_ids * sizeof *ids);
    if (w->out_norm.data) h = fnv(h, w->out_norm.data, (size_t)w->out_norm.row_stride);
    if (w->lm_head.data) {
        const int64_t rows = w->lm_head.rows < 64 ? w->lm_head.rows : 64;
        h = fnv(h, w->lm_head.data, (size_t)(rows * w->lm_head.row_stride));
    }
    return h;
}

void dst_topk_select(const float *logits, int n, int V, int K, int32_t *ids, float *vals) {
    for (int i = 0; i < n; i++) {
        const float *z = logits + (size_t)i * V;
        int32_t *id = ids + (size_t)i * K;
        float *v = vals + (size_t)i * K;
        int m = 0; /* insertion into a sorted list of the best m (descending, ties to the lower id) */
        for (int j = 0; j < V; j++) {
            if (m == K && !(z[j] > v[K - 1])) continue;
            int p = m < K ? m++ : K - 1;
            while (p > 0 && z[j] > v[p - 1]) v[p] = v[p - 1], id[p] = id[p - 1], p--;
            v[p] = z[j], id[p] = j;
        }
    }
}

void dst_topk_expand(const int32_t *ids, const float *vals, int n, int V, int K, float *logits) {
    for (int i = 0; i < n; i++) {
        float *z = logits + (size_t)i * V;
        for (int j = 0; j < V; j++) z[j] = -1e30f;
        for (int k = 0; k < K; k++) z[ids[(size_t)i * K + k]] = vals[(size_t)i * K + k];
    }
}

void dst_cache_free(dst_cache *c) {
    if (!c) return;
    free(c->slot);
    free(c->window);
    free(c->ids);
    free(c->vals);
    memset(c, 0, sizeof *c);
}

static int grow(dst_cache *c, int need) {
    if (need <= c->cap) return MT_OK;
    int cap = c->cap ? c->cap : 16;
    while (cap < need) cap *= 2;
    const size_t per = (size_t)c->T * c->K;
    int32_t *wi = realloc(c->window, (size_t)cap * sizeof *wi);
    if (wi) c->window = wi;
    int32_t *ids = wi ? realloc(c->ids, (size_t)cap * per * sizeof *ids) : NULL;
    if (ids) c->ids = ids;
    float *vals = ids ? realloc(c->vals, (size_t)cap * per * sizeof *vals) : NULL;
    if (vals) c->vals = vals;
    if (!vals) return mt_seterr(MT_ERR_NOMEM, "distill: out of memory for the logit cache (%d windows)", need);
    c->cap = cap;
    return MT_OK;
}

int dst_cache_open(dst_cache *c, const char *path, uint64_t key, int K, int T, int n_win) {
    memset(c, 0, sizeof *c);
    c->key = key, c->K = K, c->T = T, c->n_win = n_win;
    if (!(c->slot = malloc((size_t)n_win * sizeof *c->slot))) return mt_seterr(MT_ERR_NOMEM, "distill: out of memory");
    for (int i = 0; i < n_win; i++) c->slot[i] = -1;
    FILE *f = fopen(path, "rb");
    if (!f) return errno == ENOENT ? MT_OK : mt_seterr(MT_ERR_IO, "%s: %s", path, strerror(errno));
    unsigned char hdr[56];
    void *zbuf = NULL, *raw = NULL;
    int st = MT_OK;
    struct stat sb;
    if (fread(hdr, 1, sizeof hdr, f) != sizeof hdr || memcmp(hdr, "MTDSTLC1", 8) || fstat(fileno(f), &sb) != 0) {
        st = mt_seterr(MT_ERR_FORMAT, "%s: not a moetool distill logit cache", path);
        goto done;
    }
    uint64_t fkey, rawn, zn, sum;
    uint32_t fK, fT, fwin, n;
    memcpy(&fkey, hdr + 8, 8), memcpy(&fK, hdr + 16, 4), memcpy(&fT, hdr + 20, 4), memcpy(&fwin, hdr + 24, 4);
    memcpy(&n, hdr + 28, 4), memcpy(&rawn, hdr + 32, 8), memcpy(&zn, hdr + 40, 8), memcpy(&sum, hdr + 48, 8);
    if (fkey != key || fK != (uint32_t)K || fT != (uint32_t)T || fwin != (uint32_t)n_win) {
        st = mt_seterr(MT_ERR_FORMAT, "%s: the logit cache was made for another teacher, data, --topk-logits or --seq "
                       "(K %u, seq %u); remove it or name another --logit-cache", path, fK, fT);
        goto done;
    }
    const size_t per = (size_t)T * K;
    if ((uint64_t)sb.st_size != sizeof hdr + zn || n > (uint32_t)n_win ||
        rawn != (uint64_t)n * (4 + per * 8)) {
        st = mt_seterr(MT_ERR_FORMAT, "%s: logit cache is truncated or corrupt (size)", path);
        goto done;
    }
    zbuf = malloc(zn ? zn : 1), raw = malloc(rawn ? rawn : 1);
    if (!zbuf || !raw || (st = grow(c, (int)n))) {
        st = st ? st : mt_seterr(MT_ERR_NOMEM, "distill: out of memory reading %s", path);
        goto done;
    }
    size_t got = 0;
    if (fread(zbuf, 1, zn, f) == zn) got = ZSTD_decompress(raw, rawn, zbuf, zn);
    if (ZSTD_isError(got) || got != rawn || fnv(0xcbf29ce484222325ull, raw, rawn) != sum) {
        st = mt_seterr(MT_ERR_FORMAT, "%s: logit cache checksum mismatch (corrupt file)", path);
        goto done;
    }
    const unsigned char *p = raw;
    memcpy(c->window, p, (size_t)n * 4);
    p += (size_t)n * 4;
    for (uint32_t i = 0; i < n; i++) {
        if (c->window[i] < 0 || c->window[i] >= n_win || c->slot[c->window[i]] >= 0) {
            st = mt_seterr(MT_ERR_FORMAT, "%s: logit cache lists window %d twice or out of range", path, c->window[i]);
            goto done;
        }
        c->slot[c->window[i]] = (int32_t)i;
        memcpy(c->ids + i * per, p, per * 4), p += per * 4;
        memcpy(c->vals + i * per, p, per * 4), p += per * 4;
    }
    c->n = (int)n, c->loaded = (int)n;
done:
    fclose(f);
    free(zbuf);
    free(raw);
    return st;
}

int dst_cache_add(dst_cache *c, int window, const float *logits, int V) {
    int st = grow(c, c->n + 1);
    if (st) return st;
    const size_t per = (size_t)c->T * c->K;
    dst_topk_select(logits, c->T, V, c->K, c->ids + (size_t)c->n * per, c->vals + (size_t)c->n * per);
    c->window[c->n] = window;
    c->slot[window] = c->n++;
    return MT_OK;
}

int dst_cache_save(dst_cache *c, const char *path, uint64_t *bytes) {
    const size_t per = (size_t)c->T * c->K, rawn = (size_t)c->n * (4 + per * 8);
    unsigned char *raw = malloc(rawn ? rawn : 1);
    const size_t zcap = ZSTD_compressBound(rawn);
    void *z = malloc(zcap ? zcap : 1);
    char *tmp = NULL;
    int st = MT_OK, fd = -1;
    if (!raw || !z) {
        st = mt_seterr(MT_ERR_NOMEM, "distill: out of memory writing %s", path);
        goto done;
    }
    unsigned char *p = raw;
    memcpy(p, c->window, (size_t)c->n * 4), p += (size_t)c->n * 4;
    for (int i = 0; i < c->n; i++) {
        memcpy(p, c->ids + (size_t)i * per, per * 4), p += per * 4;
        memcpy(p, c->vals + (size_t)i * per, per * 4), p += per * 4;
    }
    const size_t zn = ZSTD_compress(z, zcap, raw, rawn, 3);
    if (ZSTD_isError(zn)) {
        st = mt_seterr(MT_ERR_INTERNAL, "%s: zstd: %s", path, ZSTD_getErrorName(zn));
        goto done;
    }
    unsigned char hdr[56];
    const uint64_t key = c->key, rn = rawn, zz = zn, sum = fnv(0xcbf29ce484222325ull, raw, rawn);
    const uint32_t u[4] = {(uint32_t)c->K, (uint32_t)c->T, (uint32_t)c->n_win, (uint32_t)c->n};
    memcpy(hdr, "MTDSTLC1", 8), memcpy(hdr + 8, &key, 8), memcpy(hdr + 16, u, 16);
    memcpy(hdr + 32, &rn, 8), memcpy(hdr + 40, &zz, 8), memcpy(hdr + 48, &sum, 8);
    if ((fd = mt_output_tmp_create(path, &tmp)) < 0) { /* renamed into place when complete */
        st = fd;
        goto done;
    }
    FILE *f = fdopen(fd, "wb");
    int bad = !f || fwrite(hdr, 1, sizeof hdr, f) != sizeof hdr || fwrite(z, 1, zn, f) != zn || fflush(f) != 0 ||
              fsync(fileno(f)) != 0;
    if (f) bad = fclose(f) != 0 || bad;
    else close(fd);
    if (bad || rename(tmp, path) != 0) {
        st = mt_seterr(MT_ERR_IO, "%s: cannot write the logit cache: %s", path, strerror(errno));
        unlink(tmp);
    }
    mt_output_tmp_forget(tmp);
    if (bytes) *bytes = sizeof hdr + zn;
done:
    free(raw);
    free(z);
    free(tmp);
    return st;
}
