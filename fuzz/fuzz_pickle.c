/* fuzz_pickle.c — libFuzzer target for the restricted unpickler: any input
 * must load as a state dict or fail with a status and a message, never
 * crash, loop or run out of memory. On success every tensor must lie inside
 * its storage and have a name. */
#include "moetool/mt_io.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    mt_pickle_dict *d = NULL;
    if (mt_pickle_load_state_dict(&d, data, size, "fuzz.pkl") != MT_OK) {
        if (d || !mt_last_error()[0]) abort();
        return 0;
    }
    for (size_t i = 0; i < mt_pickle_count(d); i++) {
        const mt_pickle_tensor *t = mt_pickle_get(d, i);
        uint64_t numel = 1;
        for (int k = 0; k < t->n_dims; k++) numel *= (uint64_t)t->shape[k];
        if (!t->name[0] || !t->storage[0] || t->offset > t->storage_numel || numel > t->storage_numel - t->offset)
            abort();
    }
    mt_pickle_free(d);
    return 0;
}
