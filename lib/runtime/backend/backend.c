/* backend.c — the parts of the backend interface that are the same for
 * every device: freeing through the table and the RoPE tables, which are
 * computed on the host once per context and uploaded; without CUDA in the
 * build, the answer to mt_backend_cuda_init. */
#include "backend.h"

#include <math.h>

void mt_backend_free(mt_backend *be) {
    if (be) be->ops->free(be);
}

#ifndef MT_HAVE_CUDA
int mt_backend_cuda_init(mt_backend **out, int device) {
    *out = NULL;
    return mt_seterr(MT_ERR_UNSUPPORTED, "this moetool was not built with CUDA (configure it with nvcc installed, MT_CUDA AUTO or ON)");
}
#endif

void mt_be_rope_tables(float *cos_t, float *sin_t, int n_ctx, int d, float theta) {
    const int half = d / 2;
    for (int i = 0; i < half; i++) {
        float expo = (float)(2 * i) / (float)d;
        float inv = 1.0f / powf(theta, expo);
        for (int p = 0; p < n_ctx; p++) {
            float ang = (float)p * inv;
            cos_t[(size_t)p * half + i] = (float)cos((double)ang);
            sin_t[(size_t)p * half + i] = (float)sin((double)ang);
        }
    }
}
