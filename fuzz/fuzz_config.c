/* fuzz_config.c — libFuzzer target for the config.json reader. Any input
 * must parse or fail with a status; what parses must pass validation, be
 * written back, and read back to the same description. */
#include "moetool/mt_io.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    mt_config c;
    if (mt_config_from_hf_json(&c, (const char *)data, size, "fuzz.json") != MT_OK) return 0;
    char *s = NULL;
    if (mt_config_to_hf_json(&s, &c, "bfloat16") != MT_OK) abort(); /* (leaks c on abort only) */
    mt_config d;
    if (mt_config_from_hf_json(&d, s, strlen(s), "rewritten") != MT_OK) abort();
    /* The writer names dense Mixtral "mistral", and quantization_config is
     * written by the quantized-directory writer, not from mt_config;
     * everything else must match. */
    memcpy(d.arch, c.arch, sizeof d.arch);
    d.quant = c.quant;
    d.quant_zero_offset = c.quant_zero_offset;
    if (!mt_config_equal(&c, &d)) abort();
    mt_config_free(&c);
    mt_config_free(&d);
    free(s);
    return 0;
}
