/* verbs.c — the list of verbs: `moetool VERB` dispatches through it and a
 * recipe step's verb is looked up in it. Adding a verb: define its
 * cli_verb (name, option table, entry point) in cli/cmd_VERB.c, declare it in
 * cli_impl.h and add one line here (docs/architecture.md). */
#include "cli_impl.h"

const cli_verb *const cli_verbs[] = {
    &cli_verb_inspect,
    &cli_verb_convert,
    &cli_verb_eval,
    &cli_verb_generate,
    &cli_verb_tokenize,
    &cli_verb_quantize,
    &cli_verb_merge,
    &cli_verb_distill,
    &cli_verb_run,
    NULL,
};
