#define _GNU_SOURCE
#include "testutil.h"

#include "moetool/mt_tokenizer.h"

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
