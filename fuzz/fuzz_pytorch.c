/* fuzz_pytorch.c — libFuzzer target for the PyTorch zip reader (libarchive,
 * then the unpickler): any input must parse or fail with a status, never
 * crash or read out of bounds. On success every tensor's bytes are read
 * whole (ASan checks they lie in the buffer or in a decompressed copy) and
 * every tensor is findable by name. */
#include "moetool/mt_io.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    mt_safetensors *st = NULL;
    if (mt_pytorch_parse(&st, data, size, "fuzz.bin") != MT_OK) {
        if (st || !mt_last_error()[0]) abort();
        return 0;
    }
    for (size_t i = 0; i < mt_safetensors_count(st); i++) {
        const mt_tensor *t = mt_safetensors_get(st, i);
        if (mt_safetensors_find(st, t->name) != t) abort();
        volatile uint8_t sink = 0;
        for (uint64_t k = 0; k < t->nbytes; k++) sink ^= ((const uint8_t *)t->data)[k];
        (void)sink;
    }
    mt_safetensors_free(st);
    return 0;
}
