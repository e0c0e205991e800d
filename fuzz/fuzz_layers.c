/* fuzz_layers.c — libFuzzer target for merge's --layers parser
 * ("0-1:6,2-3:4"). The first byte is the model's layer count (0: syntax
 * only); the rest is the option's text. Any text parses or fails with a
 * message; what parses names only layers below the count, each with K >= 1. */
#include "moetool/mt_merge.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!size) return 0;
    const int n_layers = data[0] % 80;
    char *s = malloc(size); /* the text, NUL-terminated, exactly sized */
    if (!s) return 0;
    memcpy(s, data + 1, size - 1);
    s[size - 1] = 0;
    mt_merge_opts o;
    mt_merge_opts_default(&o);
    if (mt_merge_parse_layers(&o, s, n_layers) == MT_OK) {
        for (int l = 0; l < o.n_layer_experts; l++) {
            if (o.layer_experts[l] < 0) abort();
            if (n_layers > 0 && l >= n_layers && o.layer_experts[l]) abort();
        }
    } else if (!mt_last_error()[0]) {
        abort();
    }
    mt_merge_opts_free(&o);
    free(s);
    return 0;
}
