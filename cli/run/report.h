/* report.h — what `moetool run` writes at the end of a run: summary.json,
 * report.md and a self-contained report.html with SVG plots. */
#ifndef MT_CLI_REPORT_H
#define MT_CLI_REPORT_H

#include <jansson.h>
#include <stdio.h>

#include "recipe.h"

typedef struct {
    const char *key, *output, *dir;
    const json_t *result;   /* the verb's --json output, NULL when none          */
    int cached, failed;
    double seconds;
    char *const *argv;
    int argc;
} report_step;

typedef struct {
    const recipe_gate *gate;
    int have, pass;         /* have: the value was found in the step's result    */
    double value;
} report_gate;

typedef struct {
    const recipe *r;
    const char *work, *recipe_path;
    double seconds;
    int failed;
    const report_step *steps;  /* per recipe step (recipe order)               */
    const report_gate *gates;
    size_t n_gates;
    int exit_code;
} report_input;

/* Writes WORK/summary.json, report.md and report.html; with json_out, the
 * summary also goes there. 0, or -1 with err. */
int report_write(const report_input *in, FILE *json_out, char *err, size_t errn);
/* The gate table: which gate, its value, the limit, by how much it misses. */
void report_gate_table(const report_input *in, FILE *f);

#endif
