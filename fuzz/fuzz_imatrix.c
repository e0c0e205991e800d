/* fuzz_imatrix.c — libFuzzer target for the importance-matrix reader
 * (`quantize --imatrix FILE`, llama.cpp's .dat layout). The bundled model is
 * loaded once (MT_FUZZ_MODEL overrides its path); every input, read through
 * a memory stream, must load or fail with a message, and what loads must
 * hold only finite, non-negative importances of the sizes the model's
 * tensors need. The reader may not allocate more than the model's own
 * vectors whatever the header claims (libFuzzer's -rss_limit_mb catches it). */
#include "../lib/quant/quant_impl.h"
#include "moetool/mt_runtime.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef MT_FUZZ_DEFAULT_MODEL
#define MT_FUZZ_DEFAULT_MODEL "models/kjv-mixtral-15m"
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static mt_model *m;
    if (!m) {
        const char *path = getenv("MT_FUZZ_MODEL") ? getenv("MT_FUZZ_MODEL") : MT_FUZZ_DEFAULT_MODEL;
        mt_model_opts mo;
        mt_model_opts_default(&mo);
        mo.n_threads = 1;
        if (mt_model_load(&m, path, &mo) != MT_OK) {
            fprintf(stderr, "fuzz_imatrix: %s\n", mt_last_error());
            abort();
        }
    }
    FILE *f = fmemopen(size ? (void *)data : (void *)"", size ? size : 1, "rb");
    if (!f) return 0;
    mt_imatrix im;
    const int rc = mt_imatrix_read_stream(&im, m, f, "fuzz.dat");
    fclose(f);
    if (rc != MT_OK) {
        if (!mt_last_error()[0]) abort();
        return 0;
    }
    for (int i = 0; i < im.n; i++) {
        const mt_imatrix_entry *e = &im.e[i];
        if (!e->values) continue;
        for (int64_t v = 0; v < (int64_t)e->n_mat * e->cols; v++)
            if (!(e->values[v] >= 0) || isinf(e->values[v])) abort();
    }
    mt_imatrix_free(&im);
    return 0;
}
