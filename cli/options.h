/* options.h — one declarative option table per verb.
 *
 * Each verb describes its options once, as a cli_opt array: long and short
 * name, type, range or allowed values, documented default, help text and
 * where the value goes (an offset into the verb's argument struct, or a
 * setter for the few values that need the library to interpret them). From
 * that table:
 *   - the command line is parsed (cli_opts_parse_argv) and `--help` is
 *     printed (cli_opts_help);
 *   - a recipe step's YAML mapping is validated and converted
 *     (cli_opts_find, cli_opts_set, cli_opts_suggest), with the same
 *     conversion code, so CLI flags and recipe keys cannot drift.
 * Conversions never print: they write one line into err[] and return -1; the
 * caller prefixes it ("moetool quantize: ..." or "recipe.yaml:4:7: ...").
 *
 * Adding a verb: see docs/architecture.md, "Adding a verb". */
#ifndef MT_CLI_OPTIONS_H
#define MT_CLI_OPTIONS_H

#include <stddef.h>
#include <stdio.h>

typedef enum {
    CLI_BOOL,   /* a flag; in YAML true/false                                  */
    CLI_INT,    /* integer in [lo, hi]; stored as int, long or int64 (size)    */
    CLI_FLOAT,  /* finite number in [flo, fhi]; stored as float or double      */
    CLI_STRING, /* const char *                                                */
    CLI_PATH,   /* const char *: a file or directory the verb reads            */
    CLI_OUTPUT, /* const char *: what the verb writes (set by a recipe's runner)*/
    CLI_ENUM,   /* one of choices[]; stores values[i] (or i) as an int        */
} cli_opt_type;

enum {
    CLI_OPT_INVERT = 1u << 0,  /* bool: the flag stores 0 (--no-tokenizer)          */
    CLI_OPT_CLI_ONLY = 1u << 1,/* not a recipe key (--json, --quiet, --force...)     */
    CLI_OPT_LO_OPEN = 1u << 2, /* float: lo excluded, (lo, hi]                        */
    CLI_OPT_NO_HI = 1u << 3,   /* float: no upper bound                               */
};

struct cli_opt;
/* Custom conversion: called with the (already type-checked) text; returns 0,
 * or -1 after writing one line to err ("must be ..., got 'x'"), shown names
 * the option as the user wrote it ("--dtype" or "dtype"). */
typedef int (*cli_opt_setter)(void *args, const struct cli_opt *o, const char *shown, const char *value, char *err,
                              size_t errn);

typedef struct cli_opt {
    const char *name;        /* long name without "--" ("calib-tokens")          */
    char short_name;         /* 'o', or 0                                         */
    cli_opt_type type;
    const char *metavar;     /* value name in help ("N", "FILE"); NULL for bools  */
    const char *help;        /* help text (wrapped by cli_opts_help)              */
    const char *def;         /* documented default, shown as "(default X)"; NULL:
                                none or described in help                          */
    size_t offset, size;     /* where the value goes in the verb's argument struct */
    long lo, hi;             /* CLI_INT range                                      */
    double flo, fhi;         /* CLI_FLOAT range                                    */
    const char *const *choices; /* CLI_ENUM: NULL-terminated allowed words         */
    const int *values;       /* CLI_ENUM: stored value per choice (NULL: index)   */
    cli_opt_setter set;      /* optional: replaces the store (after type checks)  */
    unsigned flags;          /* CLI_OPT_*                                          */
} cli_opt;

/* Where a row stores its value: CLI_AT(args_type, member); an int range may
 * follow it positionally (CLI_AT(a, n), 1, 100 sets lo and hi). */
#define CLI_AT(T, m) .offset = offsetof(T, m), .size = sizeof(((T *)0)->m)

typedef struct cli_verb {
    const char *name;        /* "quantize"                                         */
    const char *synopsis;    /* the "usage: ..." lines, without trailing newline   */
    const char *about;       /* paragraphs between usage and the option list       */
    const char *positional;  /* "MODEL", "IN", "PATH": at most one, optional      */
    const cli_opt *opts;     /* the table                                          */
    size_t n_opts;
    size_t args_size;        /* sizeof the verb's argument struct                   */
    void (*init)(void *args);/* fills the argument struct with the defaults         */
    int (*run)(int argc, char **argv); /* the verb's entry point                   */
    int recipe_step;         /* usable as a recipe step                             */
} cli_verb;

/* Every verb, in `moetool --help` order; NULL-terminated (cli/verbs.c). */
extern const cli_verb *const cli_verbs[];
const cli_verb *cli_verb_find(const char *name);

/* Looks up a long name; '_' and '-' are the same ("calib_tokens"). */
const cli_opt *cli_opts_find(const cli_verb *v, const char *name);
/* The long name nearest to name by edit distance, when close enough to be a
 * typo (at most 2 edits, and fewer than half the letters); else NULL. With
 * recipe_only, options marked CLI_OPT_CLI_ONLY are not proposed. */
const char *cli_opts_suggest(const cli_verb *v, const char *name, int recipe_only);
/* Edit distance (optimal string alignment: a swap of neighbours is one
 * edit; '_' == '-'), of the first 64 characters. */
int cli_edit_distance(const char *a, const char *b);

/* Converts value (NULL for a bare bool flag, which means true) and stores it.
 * shown names the option in messages. 0, or -1 with err set. */
int cli_opts_set(const cli_opt *o, void *args, const char *shown, const char *value, char *err, size_t errn);

/* Parses argv[1..argc-1] (argv[0] is the verb) into args, which init has
 * filled: "--name value", "--name=value", "-x value", "-xvalue", unique
 * prefixes of long names, "--" ends options. Positionals (at most one) go to
 * *positional (NULL when none). Returns 0; 1 after printing help (-h/--help);
 * or 2 (MT_EXIT_USAGE) after printing one line. */
int cli_opts_parse_argv(const cli_verb *v, void *args, int argc, char **argv, const char **positional);

/* Prints `moetool VERB --help` from the table. */
void cli_opts_help(const cli_verb *v, FILE *f);

#endif
