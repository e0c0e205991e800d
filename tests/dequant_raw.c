/* dequant_raw.c — test tool (not a test): decodes a file of raw blocks of
 * one storage type to little-endian f32 with the type table's to_f32, so
 * that tests/dequant_check.py can compare moetool's decoders with gguf-py's.
 * Usage: dequant_raw TYPE IN.bin OUT.f32 (TYPE as users type it: q4_k). */
#include <stdio.h>
#include <stdlib.h>

#include "moetool/mt_common.h"

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: dequant_raw TYPE IN.bin OUT.f32\n");
        return 2;
    }
    const int t = mt_dtype_from_name(argv[1]);
    const mt_dtype_info *d = mt_dtype_get((mt_dtype)t);
    if (t < 0 || !d || !d->to_f32 || d->block_bytes <= 0) {
        fprintf(stderr, "dequant_raw: %s: not a readable type\n", argv[1]);
        return 2;
    }
    FILE *f = fopen(argv[2], "rb");
    if (!f) return perror(argv[2]), 1;
    fseek(f, 0, SEEK_END);
    const long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    if (len <= 0 || len % d->block_bytes) {
        fprintf(stderr, "dequant_raw: %s: %ld bytes is not whole %s blocks\n", argv[2], len, d->name);
        return 1;
    }
    const int64_t nb = len / d->block_bytes, n = nb * d->block_elems;
    uint8_t *in = malloc((size_t)len);
    float *out = malloc((size_t)n * sizeof *out);
    if (!in || !out || fread(in, 1, (size_t)len, f) != (size_t)len) return fprintf(stderr, "dequant_raw: read\n"), 1;
    fclose(f);
    if (mt_row_to_f32((mt_dtype)t, in, out, n) != MT_OK) return fprintf(stderr, "dequant_raw: %s\n", mt_last_error()), 1;
    FILE *o = fopen(argv[3], "wb");
    if (!o || fwrite(out, sizeof *out, (size_t)n, o) != (size_t)n || fclose(o)) return perror(argv[3]), 1;
    free(in);
    free(out);
    return 0;
}
