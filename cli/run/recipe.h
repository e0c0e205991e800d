/* recipe.h — `moetool run` recipes: a YAML file read into a checked
 * recipe, every error with file:line:column (docs/recipes.md).
 *
 * The parser is separate from the runner (run.c) so the fuzzer and the unit
 * tests drive it alone; it reads files only to check that the paths a recipe
 * names exist (with check_files). */
#ifndef MT_CLI_RECIPE_H
#define MT_CLI_RECIPE_H

#include <stddef.h>

#include "options.h"

#define RECIPE_VERSION 1
#define RECIPE_MAX_BYTES (1u << 20)   /* larger files are refused              */
#define RECIPE_MAX_NODES 100000       /* YAML nodes after alias expansion      */
#define RECIPE_MAX_DEPTH 64

typedef struct {
    int line, col; /* 1-based */
} recipe_pos;

/* One option of a step: key as its table names it, value text as written
 * (references not yet resolved). */
typedef struct {
    const cli_opt *opt;
    char *value;
    recipe_pos pos;
} recipe_kv;

typedef struct {
    char *name;
    recipe_pos pos;
    const cli_verb *verb;
    char *model;          /* input; NULL: the previous step's output, or ${model} */
    recipe_pos model_pos;
    recipe_kv *kv;
    size_t n_kv;
    int *deps;            /* indices of steps this one reads (references, input) */
    size_t n_deps;
    int writes_model;     /* the verb has an output (all but eval)               */
    int input;            /* without model: the step whose output is the input,
                             -1 for the base model                              */
} recipe_step;

typedef enum {
    GATE_PERPLEXITY,       /* eval ppl                                           */
    GATE_PERPLEXITY_RATIO, /* ppl / ref_ppl (needs ref)                          */
    GATE_KL,               /* mean KL(ref || model) (needs ref)                  */
    GATE_TOP1,             /* top-1 agreement with ref (needs ref)               */
    GATE_SIZE_MIB,         /* file size of the evaluated model, MiB              */
    GATE_BITS_PER_WEIGHT,  /* bits per weight of the evaluated model             */
    GATE_TOKENS_PER_S,     /* eval throughput                                    */
    GATE_COUNT
} recipe_metric;

typedef struct {
    recipe_metric metric;
    int step;              /* an eval step                                        */
    int text;              /* a named text (index in texts), -1: none named       */
    int has_min, has_max;
    double min, max;
    recipe_pos pos;
} recipe_gate;

/* A named text (`texts:`): eval steps read it as ${texts.NAME}, gates
 * name it with text: NAME. */
typedef struct {
    char *name;
    char *path;            /* resolved                                           */
    recipe_pos pos;
} recipe_text;

typedef struct {
    char *path;            /* as given                                           */
    char *dir;             /* its directory: relative paths start here           */
    int version;
    char *model;           /* resolved path of the base model                     */
    recipe_pos model_pos;
    char *calib_text;      /* NULL: each verb's default                           */
    int calib_tokens;      /* 0: each verb's default                              */
    recipe_step *steps;
    size_t n_steps;
    int *order;            /* steps in run order (dependencies first)             */
    recipe_gate *gates;
    size_t n_gates;
    recipe_text *texts;
    size_t n_texts;
} recipe;

const char *recipe_metric_name(recipe_metric m);

/* Parses data (the file's bytes; path names it in messages and anchors
 * relative paths). With check_files, input paths without references must
 * exist. 0, or -1 with err = "path:line:col: message" (one line). */
int recipe_parse(recipe **out, const char *path, const char *data, size_t len, int check_files, char *err, size_t errn);
/* Reads and parses a file (refusing files over RECIPE_MAX_BYTES). */
int recipe_load(recipe **out, const char *path, int check_files, char *err, size_t errn);
void recipe_free(recipe *r);

/* Index of the step named name, or -1. */
int recipe_step_find(const recipe *r, const char *name);

/* Index of the text named name, or -1. */
int recipe_text_find(const recipe *r, const char *name);

/* Expands ${STEP.output} in s with outputs[] (per step, the path it writes,
 * NULL for none), ${texts.NAME} with the text's path and ${model} with model
 * (NULL: the recipe's model path);
 * malloc'd, NULL when out of memory. The references were checked by the
 * parser. */
char *recipe_expand(const recipe *r, const char *s, char *const *outputs, const char *model);

#endif
