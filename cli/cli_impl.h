/* cli_impl.h — shared pieces of the moetool command line: exit codes,
 * error reporting, progress lines, a tiny JSON writer. The CLI uses only the
 * public headers of libmoe. */
#ifndef MT_CLI_IMPL_H
#define MT_CLI_IMPL_H

#include "moetool/mt_runtime.h"
#include "options.h"

#include <stdio.h>

/* Exit codes (documented in README and `moetool --help`). */
enum {
    MT_EXIT_OK = 0,
    MT_EXIT_FAIL = 1,   /* the work failed: bad input file, I/O error, ...  */
    MT_EXIT_USAGE = 2,  /* bad command line                                 */
};

/* Prints "moetool <verb>: <library message>" and returns MT_EXIT_FAIL, or
 * MT_EXIT_USAGE for an output the output policy refused (MT_ERR_REFUSED). */
int cli_fail(const char *verb, int status);
/* Prints "moetool <verb>: <message>" + hint and returns MT_EXIT_USAGE. */
int cli_usage_error(const char *verb, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* -o "" is refused before any work: returns -1 after printing. */
int cli_check_output(const char *verb, const char *out);
/* Prints a name read from a file with control bytes escaped, padded to width. */
void cli_term_str(FILE *f, const char *s, int width);

/* The log callback (mt_set_log): one line per message on stderr. */
void cli_log_stderr(void *user, mt_log_level level, const char *msg);
/* Whether a progress line is drawn (async-signal-safe). */
int cli_progress_shown(void);

/* Progress on stderr, redrawn in place, only when stderr is a terminal. */
void cli_progress(void *user, const char *what, uint64_t done, uint64_t total);
void cli_progress_done(void);

/* --device of the verbs that run a model: "cpu", "cuda" -> mt_device. */
extern const char *const cli_device_choices[];
extern const int cli_device_values[];

/* Path of the bundled model, used when a verb's MODEL is omitted. */
const char *cli_default_model(void);

/* rel inside MODEL when it is a directory, else beside the MODEL file
 * (malloc'd; NULL when out of memory). */
char *cli_beside_model(const char *model, const char *rel);

/* Minimal JSON writer to a FILE: strings are escaped, and bytes that are
 * not valid UTF-8 are written as U+FFFD, so the output is always valid JSON. */
void json_str(FILE *f, const char *s);
void json_strn(FILE *f, const char *s, size_t n);

/* Verbs: entry points and option tables (cli/verbs.c lists them). */
extern const cli_verb cli_verb_inspect, cli_verb_convert, cli_verb_eval, cli_verb_generate, cli_verb_tokenize,
    cli_verb_quantize, cli_verb_merge, cli_verb_distill, cli_verb_run;
int cmd_inspect(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_merge(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_distill(int argc, char **argv);
/* Encoder-decoder models (cmd_seq2seq.c), reached from inspect, eval and
 * generate when mt_s2s_detect says the checkpoint is one. */
int cli_s2s_inspect(const char *path, int json);
/* pairs_path: JSON Lines pairs; text_path (else): translation pairs as
 * "SOURCE<tab>TARGET" lines (a model with language codes). src_lang /
 * tgt_lang: language codes of texts (NLLB), or NULL. */
typedef struct {
    const char *pairs, *text;          /* one of them                              */
    const char *src_lang, *tgt_lang;   /* NLLB: language codes of texts, or NULL   */
    const char *save_pairs;            /* write the pairs scored (JSON Lines), or NULL */
    int window, max_windows;           /* Switch --text: span-corruption windows   */
    unsigned long long seed;           /* Switch --text: the noise's seed          */
    int n_threads, json, quiet;
    int force;                         /* --save-pairs may replace an existing file */
} cli_s2s_eval_opts;
int cli_s2s_eval(const char *model_path, const cli_s2s_eval_opts *o);
/* From --ids (ids out) or -p TEXT (encoded with the model's tokenizer + EOS;
 * the generated ids decoded to text). */
int cli_s2s_generate(const char *model_path, const char *ids, const char *prompt, const char *src_lang,
                     const char *tgt_lang, int n_predict, int stop_at_eos, int n_threads, int json);

/* After writing OUT: one stderr line when transformers and llama.cpp cannot
 * load it as moetool runs it (mt_config_portability). */
void cli_note_portability(const char *verb, const char *out);

/* "moetool VERB ARGS..." quoted for a POSIX shell (malloc'd; NULL when out of
 * memory): recorded in outputs as the command that made them. */
char *cli_command_line(int argc, char **argv);

/* Encodes text with the model's tokenizer into a malloc'd array. */
int cli_encode(const mt_tokenizer *tok, const char *text, size_t len, int add_bos, int32_t **ids, size_t *n);

#endif
