#define _GNU_SOURCE
#include "testutil.h"

#include "moetool/mt_runtime.h"
#include "moetool/mt_tokenizer.h"

#include <math.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *env_or(const char *k, const char *dflt) {
    const char *v = getenv(k);
    return v && *v ? v : dflt;
}
const char *tu_model_dir(void) { return env_or("MT_MODEL_DIR", "models/kjv-mixtral-15m"); }
const char *tu_source_dir(void) { return env_or("MT_SOURCE_DIR", "."); }
const char *tu_bin(void) { return env_or("MT_BIN", "build/cli/moetool"); }

const char *tu_model_path(const char *rel) {
    static char buf[4][4096];
    static int k;
    k = (k + 1) & 3;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tu_model_dir(), rel);
    return buf[k];
}

char *tu_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b) {
        b[n] = 0;
        if (len) *len = (size_t)n;
    }
    return b;
}

char *tu_mkdtemp(void) {
    char tmpl[4096];
    snprintf(tmpl, sizeof tmpl, "%s/mt-test-XXXXXX", env_or("TMPDIR", "/tmp"));
    char *d = mkdtemp(tmpl);
    return d ? strdup(d) : NULL;
}

void tu_rmtree(const char *path) {
    if (!path || strncmp(path, "/tmp", 4) != 0) return; /* only our own temp dirs */
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", path);
}

int32_t *tu_test_ids(const mt_tokenizer *tok, size_t *n) {
    size_t len;
    char *text = tu_read_file(tu_model_path("data/test.txt"), &len);
    int32_t *ids = text ? malloc((len + 16) * sizeof *ids) : NULL;
    if (ids && mt_tok_encode(tok, text, len, ids, len + 16, n) != MT_OK) {
        free(ids);
        ids = NULL;
    }
    free(text);
    return ids;
}

uint32_t tu_rand_u32(uint64_t *state) {
    uint64_t x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    return (uint32_t)(x >> 32);
}

float tu_rand_unit(uint64_t *state) { return (float)tu_rand_u32(state) / 4294967296.0f * 2.0f - 1.0f; }

int tu_read_ids(const char *path, int32_t *ids, int cap) {
    size_t len;
    char *t = tu_read_file(path, &len);
    if (!t) return -1;
    int n = 0;
    char *p = t, *end;
    for (;;) {
        long v = strtol(p, &end, 10);
        if (end == p || n >= cap) break;
        ids[n++] = (int32_t)v;
        p = end;
    }
    free(t);
    return n;
}

double tu_max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - b[i]));
    return m;
}

int tu_system(const char *cmd) {
    int rc = system(cmd);
    if (rc != 0) fprintf(stderr, "command failed (%d): %s\n", rc, cmd);
    return rc;
}

float *tu_model_logits(const char *path, const int32_t *ids, int n, int32_t **routing,
                       mt_config *cfg, double *decode_diff) {
    mt_model *m;
    mt_model_opts o;
    mt_model_opts_default(&o);
    o.n_threads = 2;
    if (routing) *routing = NULL;
    if (mt_model_load(&m, path, &o) < 0) {
        fprintf(stderr, "load %s: %s\n", path, mt_last_error());
        return NULL;
    }
    const mt_config *cf = mt_model_config(m);
    float *lg = malloc((size_t)n * cf->vocab * sizeof *lg);
    float *one = malloc((size_t)cf->vocab * sizeof *one);
    mt_ctx *c = NULL;
    int ok = lg && one && mt_ctx_init(&c, m, n, n) == MT_OK && mt_ctx_forward(c, ids, n, lg, 1) == MT_OK;
    if (ok && routing && cf->top_k > 0) {
        size_t cnt = (size_t)cf->n_layers * n * cf->top_k;
        *routing = malloc(cnt * sizeof(int32_t));
        ok = *routing != NULL;
        if (ok) memcpy(*routing, mt_ctx_last_routing(c), cnt * sizeof(int32_t));
    }
    /* token by token through the KV cache */
    double md = 0;
    if (ok) mt_ctx_reset(c);
    for (int i = 0; ok && i < n; i++) {
        ok = mt_ctx_forward(c, ids + i, 1, one, 0) == MT_OK;
        if (ok) md = fmax(md, tu_max_abs_diff(one, lg + (size_t)i * cf->vocab, (size_t)cf->vocab));
    }
    if (ok && cfg) ok = mt_config_copy(cfg, cf) == MT_OK;
    if (!ok) {
        fprintf(stderr, "run %s: %s\n", path, mt_last_error());
        free(lg);
        lg = NULL;
        if (routing) {
            free(*routing);
            *routing = NULL;
        }
    }
    if (decode_diff) *decode_diff = md;
    if (c) mt_ctx_free(c);
    mt_model_free(m);
    free(one);
    return lg;
}
