/* fuzz_archive.c — libFuzzer target for a model inside an archive: the
 * input is written as a .tar (first byte even) or a .zip (odd; gzip/zstd/xz
 * filters are detected by content either way) and opened as every reading
 * verb opens it. Any input must open or fail with a message; what opens has
 * its tensors read whole (ASan checks they lie in the members read). */
#include "moetool/mt_io.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char dir[64];
    if (!dir[0]) {
        snprintf(dir, sizeof dir, "/tmp/mt-fuzz-archive-XXXXXX");
        if (!mkdtemp(dir)) abort();
    }
    if (!size) return 0;
    char path[128];
    snprintf(path, sizeof path, "%s/model.%s", dir, data[0] & 1 ? "zip" : "tar");
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) abort();
    if (write(fd, data + 1, size - 1) != (ssize_t)(size - 1)) abort();
    close(fd);
    mt_ckpt *ck = NULL;
    if (mt_ckpt_open(&ck, path) == MT_OK) {
        volatile uint8_t sink = 0;
        for (size_t i = 0; i < mt_ckpt_count(ck); i++) {
            const mt_tensor *t = mt_ckpt_get(ck, i);
            for (uint64_t k = 0; k < t->nbytes; k += 64) sink ^= ((const uint8_t *)t->data)[k];
            if (t->nbytes) sink ^= ((const uint8_t *)t->data)[t->nbytes - 1];
        }
        (void)sink;
        mt_ckpt_free(ck);
    } else if (ck || !mt_last_error()[0]) {
        abort();
    }
    unlink(path);
    return 0;
}
