/* fuzz_safetensors.c — libFuzzer target for the safetensors reader: any
 * input must parse or fail with a status, never crash or read out of bounds.
 * On success every tensor must lie inside the buffer and be findable. */
#include "moetool/mt_io.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    mt_safetensors *st = NULL;
    if (mt_safetensors_parse(&st, data, size, "fuzz") != MT_OK) return 0;
    for (size_t i = 0; i < mt_safetensors_count(st); i++) {
        const mt_tensor *t = mt_safetensors_get(st, i);
        if (t->file_offset > size || t->nbytes > size - t->file_offset) abort();
        if ((const uint8_t *)t->data != data + t->file_offset) abort();
        if (mt_safetensors_find(st, t->name) != t) abort();
        volatile uint8_t sink = 0;
        if (t->nbytes) sink ^= ((const uint8_t *)t->data)[t->nbytes - 1];
        (void)sink;
    }
    mt_safetensors_free(st);
    return 0;
}
