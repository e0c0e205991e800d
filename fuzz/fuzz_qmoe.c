/* fuzz_qmoe.c — libFuzzer target for the qmoe blob reader (what the runtime
 * runs on every coded matrix of a `quant_method: "qmoe"` checkpoint). A
 * fixed dictionary is built once; any input must parse or fail with a
 * status, and a blob that parses must decode and run through every matvec
 * kernel and the row decoder without reading outside its arrays. An input
 * starting with 'D' feeds the dictionary-parameter reader instead (small
 * dictionaries only, so that each run stays fast). */
#include "moetool/mt_qmoe.h"
#include "../lib/runtime/backend/cpu/kernels_impl.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static mt_qmoe_dict dict;
    static int ready;
    if (!ready) {
        const uint64_t counts[3] = {850, 75, 75};
        if (mt_qmoe_dict_build(&dict, counts, MT_QMOE_DICT_SIZE - 1, MT_QMOE_MAX_LEN) != MT_OK) abort();
        ready = 1;
    }
    if (size >= 1 + MT_QMOE_DICT_BYTES && data[0] == 'D') {
        uint8_t p[MT_QMOE_DICT_BYTES];
        memcpy(p, data + 1, sizeof p);
        p[8] = p[8] & 0x3f; /* n_entries < 64 keeps a run short */
        p[9] = p[10] = p[11] = 0;
        mt_qmoe_dict d;
        if (mt_qmoe_dict_deserialize(&d, p, sizeof p, "fuzz") == MT_OK) mt_qmoe_dict_free(&d);
        return 0;
    }
    mt_qmoe_mat q;
    if (mt_qmoe_deserialize(&q, &dict, data, size, "fuzz") != MT_OK) return 0;
    if (q.rows > 0 && q.cols <= (1 << 16) && (uint64_t)q.rows * (uint64_t)q.cols <= (1u << 22)) {
        mt_mat W;
        mt_qmoe_mat_view(&W, &q);
        float *x = calloc((size_t)q.cols, sizeof *x), *y = calloc((size_t)q.rows, sizeof *y);
        int8_t *s = malloc((size_t)q.cols);
        if (!x || !y || !s) abort();
        for (int64_t i = 0; i < q.cols; i++) x[i] = (float)(i % 7) - 3.0f;
        mt_matvec_rows(&W, x, y, 0, q.rows);
        mt_matvec_rows_ref(&W, x, y, 0, q.rows);
        if (mt_qmoe_decode_rows(&W, q.rows - 1, q.rows, s) != MT_OK) abort();
        free(x);
        free(y);
        free(s);
    }
    mt_qmoe_mat_free(&q);
    return 0;
}
