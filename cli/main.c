/* main.c — moetool's entry point: verb dispatch, logging, progress and the
 * helpers every verb shares. */
#define _GNU_SOURCE
#include "cli_impl.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef MT_DEFAULT_MODEL_DIR
#define MT_DEFAULT_MODEL_DIR "models/kjv-mixtral-15m"
#endif

static const char *g_usage =
    "usage: moetool <verb> [options]\n"
    "\n"
    "Shrink Mixture-of-Experts language models and measure what it costs.\n"
    "\n"
    "verbs:\n"
    "  inspect   PATH                 architecture, parameters, tensors, tokenizer\n"
    "  convert   IN -o OUT            Hugging Face safetensors <-> GGUF, retype\n"
    "  eval      MODEL --text FILE    perplexity, KL vs a reference, speed, routing\n"
    "  generate  MODEL -p PROMPT      text continuation with a KV cache\n"
    "  quantize  MODEL -o OUT         RTN / GPTQ quantization of the experts\n"
    "  merge     MODEL -o OUT --experts K   reduce experts per layer by calibrated merging\n"
    "\n"
    "MODEL/PATH is a Hugging Face directory (config.json + safetensors, single or\n"
    "sharded), a .safetensors file with config.json beside it, or a .gguf file.\n"
    "When omitted, the bundled model is used:\n"
    "  %s\n"
    "\n"
    "`moetool <verb> --help` describes each verb.\n"
    "\n"
    "exit codes: 0 success, 1 the work failed (message on stderr), 2 bad usage.\n";

const char *cli_default_model(void) {
    const char *env = getenv("MOETOOL_MODEL");
    if (env && *env) return env;
    return MT_DEFAULT_MODEL_DIR;
}

int cli_fail(const char *verb, int status) {
    cli_progress_done();
    const char *msg = mt_last_error();
    fprintf(stderr, "moetool %s: %s\n", verb, *msg ? msg : mt_status_name(status));
    return status == MT_ERR_REFUSED ? MT_EXIT_USAGE : MT_EXIT_FAIL;
}

int cli_usage_error(const char *verb, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "moetool %s: ", verb);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n(see `moetool %s --help`)\n", verb);
    va_end(ap);
    return MT_EXIT_USAGE;
}

static volatile sig_atomic_t g_progress_shown;

void cli_progress(void *user, const char *what, uint64_t done, uint64_t total) {
    (void)user;
    if (!isatty(STDERR_FILENO)) return;
    if (total)
        fprintf(stderr, "\r%s: %5.1f%% (%llu/%llu)\033[K", what, 100.0 * (double)done / (double)total,
                (unsigned long long)done, (unsigned long long)total);
    else
        fprintf(stderr, "\r%s: %llu\033[K", what, (unsigned long long)done);
    g_progress_shown = 1;
}

void cli_progress_done(void) {
    if (g_progress_shown) {
        fprintf(stderr, "\r\033[K");
        g_progress_shown = 0;
    }
}

int cli_parse_int(const char *verb, const char *opt, const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        cli_usage_error(verb, "%s expects an integer in [%ld, %ld], got '%s'", opt, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_parse_float(const char *verb, const char *opt, const char *s, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end) {
        cli_usage_error(verb, "%s expects a number, got '%s'", opt, s);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_read_text(const char *path, char **out, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return mt_seterr(MT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    if (!buf) {
        fclose(f);
        return mt_seterr(MT_ERR_NOMEM, "out of memory");
    }
    for (;;) {
        if (n + 1 >= cap) {
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                fclose(f);
                return mt_seterr(MT_ERR_NOMEM, "out of memory reading %s", path);
            }
            buf = nb;
            cap *= 2;
        }
        size_t k = fread(buf + n, 1, cap - n - 1, f);
        n += k;
        if (k == 0) break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        free(buf);
        return mt_seterr(MT_ERR_IO, "%s: read failed", path);
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return MT_OK;
}

int cli_encode(const mt_tokenizer *tok, const char *text, size_t len, int add_bos, int32_t **ids, size_t *n) {
    size_t cap = len + 16, got = 0;
    int32_t *buf = malloc(cap * sizeof *buf);
    if (!buf) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    size_t off = 0;
    if (add_bos) {
        int bos = mt_tok_bos(tok);
        if (bos < 0) {
            free(buf);
            return mt_seterr(MT_ERR_FORMAT, "the tokenizer has no BOS token");
        }
        buf[off++] = bos;
    }
    int rc = mt_tok_encode(tok, text, len, buf + off, cap - off, &got);
    if (rc == MT_OK && got > cap - off) {
        int32_t *nb = realloc(buf, (got + off) * sizeof *buf);
        if (!nb) {
            free(buf);
            return mt_seterr(MT_ERR_NOMEM, "out of memory");
        }
        buf = nb;
        rc = mt_tok_encode(tok, text, len, buf + off, got, &got);
    }
    if (rc) {
        free(buf);
        return rc;
    }
    *ids = buf;
    *n = got + off;
    return MT_OK;
}

void json_strn(FILE *f, const char *s, size_t n) {
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        default:
            if (c < 0x20)
                fprintf(f, "\\u%04x", c);
            else
                fputc(c, f);
        }
    }
    fputc('"', f);
}

void json_str(FILE *f, const char *s) { json_strn(f, s, strlen(s)); }

static void log_to_stderr(void *user, mt_log_level level, const char *msg) {
    (void)user;
    if (level == MT_LOG_DEBUG && !getenv("MOETOOL_DEBUG")) return;
    cli_progress_done();
    fprintf(stderr, "moetool: %s%s\n", level == MT_LOG_WARN ? "warning: " : "", msg);
}

/* Interrupted work leaves no partial output: remove the registered
 * temporaries, say so in one line and exit 1. Async-signal-safe: the
 * library's cleanup calls only unlink/rmdir on precomputed paths; the rest is
 * write and _exit. */
static void say(const char *s) {
    size_t n = strlen(s);
    while (n) {
        ssize_t k = write(STDERR_FILENO, s, n);
        if (k <= 0) return;
        s += k;
        n -= (size_t)k;
    }
}

static void on_signal(int sig) {
    const int removed = mt_cleanup_outputs();
    if (g_progress_shown) say("\r\033[K");
    switch (sig) {
    case SIGXFSZ: say("moetool: stopped: a file reached the file size limit (ulimit -f)"); break;
    case SIGINT: say("moetool: interrupted (SIGINT)"); break;
    case SIGTERM: say("moetool: terminated (SIGTERM)"); break;
    default: say("moetool: hung up (SIGHUP)"); break;
    }
    say(removed ? "; the unfinished output was removed\n" : "\n");
    _exit(MT_EXIT_FAIL);
}

static void catch_signals(void) {
    static const int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGXFSZ};
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaddset(&sa.sa_mask, sigs[i]);
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        struct sigaction old;
        /* a signal ignored by whoever started us (nohup) stays ignored */
        if (sigaction(sigs[i], NULL, &old) == 0 && old.sa_handler == SIG_IGN) continue;
        sigaction(sigs[i], &sa, NULL);
    }
}

int main(int argc, char **argv) {
    mt_set_log(log_to_stderr, NULL);
    catch_signals();
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        printf(g_usage, cli_default_model());
        return argc < 2 ? MT_EXIT_USAGE : MT_EXIT_OK;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("moetool 0.1.0\n");
        return MT_EXIT_OK;
    }
    const char *verb = argv[1];
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } verbs[] = {
        {"inspect", cmd_inspect},
        {"convert", cmd_convert},
        {"eval", cmd_eval},
        {"generate", cmd_generate},
        {"quantize", cmd_quantize},
        {"merge", cmd_merge},
    };
    for (size_t i = 0; i < sizeof verbs / sizeof verbs[0]; i++)
        if (!strcmp(verb, verbs[i].name)) return verbs[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "moetool: unknown verb '%s'\n", verb);
    fprintf(stderr, "(see `moetool --help`)\n");
    return MT_EXIT_USAGE;
}
