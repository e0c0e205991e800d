/* bundle.h — a fuzz input that stands for a whole model directory.
 *
 * A bundle is a sequence of records, each
 *   u8 name index | u32 little-endian length | that many bytes
 * naming one file of a Hugging Face directory or a GGUF (the index picks a
 * name from g_bundle_names, modulo its length, so every input is a valid
 * bundle). bundle_unpack writes the files into a fresh directory and says
 * which path a loader should open: the GGUF when there is one, else the
 * directory. Shared by fuzz_model.c and the corpus replay test; the seeds
 * are written by tools/make_fuzz_bundles.py. */
#ifndef MT_FUZZ_BUNDLE_H
#define MT_FUZZ_BUNDLE_H

#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const g_bundle_names[] = {
    "config.json",
    "model.safetensors.index.json",
    "tokenizer_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "model.safetensors",
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
    "model.gguf",
};
#define BUNDLE_N_NAMES (sizeof g_bundle_names / sizeof g_bundle_names[0])
#define BUNDLE_MAX_RECORDS 16

/* Removes every plain file in dir (the bundle's files only), then dir. */
static void bundle_clear(const char *dir) {
    char p[4096];
    for (size_t i = 0; i < BUNDLE_N_NAMES; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, g_bundle_names[i]);
        unlink(p);
    }
}

/* Writes the bundle's files into dir (which exists and is empty). Returns the
 * path to load in `load` (cap bytes), or -1 when nothing was written. */
static int bundle_unpack(const uint8_t *data, size_t size, const char *dir, char *load, size_t cap) {
    size_t off = 0;
    int n = 0, gguf = 0;
    while (off + 5 <= size && n < BUNDLE_MAX_RECORDS) {
        const char *name = g_bundle_names[data[off] % BUNDLE_N_NAMES];
        uint32_t len = (uint32_t)data[off + 1] | (uint32_t)data[off + 2] << 8 | (uint32_t)data[off + 3] << 16 |
                       (uint32_t)data[off + 4] << 24;
        off += 5;
        if (len > size - off) len = (uint32_t)(size - off);
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", dir, name);
        int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd < 0) return -1;
        size_t w = 0;
        while (w < len) {
            ssize_t k = write(fd, data + off + w, len - w);
            if (k <= 0) break;
            w += (size_t)k;
        }
        close(fd);
        off += len;
        n++;
        if (!strcmp(name, "model.gguf")) gguf = 1;
    }
    if (!n) return -1;
    if (gguf)
        snprintf(load, cap, "%s/model.gguf", dir);
    else
        snprintf(load, cap, "%s", dir);
    return 0;
}

#endif
