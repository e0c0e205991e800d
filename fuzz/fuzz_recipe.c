/* fuzz_recipe.c — libFuzzer target for the recipe parser (cli/run/recipe.h).
 * Any input must parse or fail with a one-line "file:line:col: ..." message;
 * what parses must have its steps in a dependency order, and every value's
 * references must expand. File checks are off: the fuzzer tests the parser,
 * not the file system. Seeds: fuzz/corpus/recipe (recipes/ and bad cases). */
#include "recipe.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    recipe *r = NULL;
    char err[512];
    err[0] = 0;
    if (recipe_parse(&r, "fuzz.yaml", (const char *)data, size, 0, err, sizeof err) != 0) {
        if (r || strncmp(err, "fuzz.yaml:", 10) != 0 || strchr(err, '\n')) abort();
        return 0;
    }
    char **outs = calloc(r->n_steps + 1, sizeof *outs);
    if (!outs) abort();
    size_t *rank = calloc(r->n_steps + 1, sizeof *rank);
    for (size_t k = 0; k < r->n_steps; k++) rank[r->order[k]] = k;
    for (size_t i = 0; i < r->n_steps; i++) {
        outs[i] = "/out";
        for (size_t d = 0; d < r->steps[i].n_deps; d++)
            if (rank[r->steps[i].deps[d]] >= rank[i]) abort(); /* a dependency runs first */
    }
    for (size_t i = 0; i < r->n_steps; i++)
        for (size_t k = 0; k < r->steps[i].n_kv; k++) {
            char *e = recipe_expand(r, r->steps[i].kv[k].value, outs, NULL);
            if (!e) abort();
            free(e);
        }
    free(rank);
    free(outs);
    recipe_free(r);
    return 0;
}
