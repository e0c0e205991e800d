/* fuzz_gguf.c — libFuzzer target over the GGUF reader: any input must parse
 * or fail with a message, never crash or read outside the buffer; a parsed
 * file's getters are exercised on everything it declares. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "moetool/mt_io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* an exact-size copy so that ASan catches a read one byte past the end */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    if (size) memcpy(buf, data, size);
    mt_gguf *g = NULL;
    if (mt_gguf_parse(&g, buf, size, "fuzz.gguf") == MT_OK) {
        volatile uint64_t sink = 0;
        for (size_t i = 0; i < mt_gguf_tensor_count(g); i++) {
            const mt_tensor *t = mt_gguf_tensor(g, i);
            if (mt_gguf_find_tensor(g, t->name) != t) abort();
            if (t->file_offset + t->nbytes > size) abort();
            if (t->nbytes) sink += ((const uint8_t *)t->data)[0] + ((const uint8_t *)t->data)[t->nbytes - 1];
            /* the first row through its type's decoder (block layouts of
             * lib/io/codec), whatever bytes it holds */
            const mt_dtype_info *di = mt_dtype_get(t->dtype);
            const int64_t cols = t->shape[t->n_dims - 1];
            uint64_t rb;
            float row[4096];
            if (di && di->to_f32 && cols <= 4096 && mt_dtype_nbytes(t->dtype, (uint64_t)cols, &rb) == MT_OK &&
                rb <= t->nbytes && mt_row_to_f32(t->dtype, t->data, row, cols) == MT_OK)
                sink += (uint64_t)(row[cols - 1] != row[cols - 1]);
            if (di && di->block_elems > 1 && di->block_bytes > 0)
                sink += (uint64_t)mt_dtype_find_nonfinite_block(t->dtype, t->data, (int64_t)(t->nbytes / (uint64_t)di->block_bytes));
        }
        for (size_t k = 0; k < mt_gguf_key_count(g); k++) {
            const char *key = mt_gguf_key_name(g, (int)k);
            if (mt_gguf_find_key(g, key) != (int)k) abort();
            int64_t iv;
            double dv;
            const char *s;
            uint64_t n;
            mt_gguf_type et;
            const void *ad;
            mt_gguf_get_i64(g, key, &iv);
            mt_gguf_get_f64(g, key, &dv);
            if (mt_gguf_get_str(g, key, &s, &n) == MT_OK && n) sink += (uint8_t)s[n - 1];
            if (mt_gguf_get_arr(g, key, &et, &n) == MT_OK) {
                uint64_t len;
                if (et == MT_GGUF_STRING)
                    for (uint64_t i = 0; i < n; i++)
                        if (mt_gguf_arr_str(g, key, i, &s, &len) == MT_OK && len) sink += (uint8_t)s[len - 1];
                static const int esz[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
                if (mt_gguf_arr_data(g, key, &ad) == MT_OK && n && (unsigned)et < 13 && esz[et])
                    sink += ((const uint8_t *)ad)[n * (uint64_t)esz[et] - 1];
            }
        }
        (void)sink;
        mt_gguf_free(g);
    }
    free(buf);
    return 0;
}
