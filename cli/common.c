/* common.c — what every verb shares: error lines, option value parsing,
 * progress lines, the log callback, JSON strings and terminal-safe names. */
#define _GNU_SOURCE
#include "cli_impl.h"

#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef MT_DEFAULT_MODEL_DIR
#define MT_DEFAULT_MODEL_DIR "models/kjv-mixtral-15m"
#endif

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
    fprintf(stderr, " (see `moetool %s --help`)\n", verb);
    va_end(ap);
    return MT_EXIT_USAGE;
}

int cli_check_output(const char *verb, const char *out) {
    if (!out) return 0;
    if (!*out) return cli_usage_error(verb, "-o names no file (empty path)"), -1;
    return 0;
}

static volatile sig_atomic_t g_progress_shown;
int cli_progress_shown(void) { return g_progress_shown; }
/* The one progress drawer of every verb. The job started at g_t0 (process
 * start, or the end of the previous job); the rate is measured from the first
 * report on, so model loading does not skew the ETA. */
static double g_t0, g_phase_t0, g_first_t, g_last_report, g_last_print;
static uint64_t g_first_done;
static int g_have_first;
static char g_phase[64]; /* "job: unit" of the last report: a new one starts a phase */

/* Appends to line[cap] at n, never past its end; returns the new length. */
static int addf(char *line, int cap, int n, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
static int addf(char *line, int cap, int n, const char *fmt, ...) {
    if (n >= cap - 1) return n;
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(line + n, (size_t)(cap - n), fmt, ap);
    va_end(ap);
    return k < 0 ? n : n + k < cap - 1 ? n + k : cap - 1;
}

static void fmt_secs(char *b, size_t n, double s) {
    if (s < 0) s = 0;
    unsigned long t = (unsigned long)(s + 0.5);
    if (t >= 3600)
        snprintf(b, n, "%luh%02lum", t / 3600, t / 60 % 60);
    else if (t >= 60)
        snprintf(b, n, "%lum%02lus", t / 60, t % 60);
    else
        snprintf(b, n, "%lus", t);
}

/* what is "verb: unit" with optional details after ';' ("eval: window; ppl
 * 12.3"); a unit named "bytes" is drawn in MiB. On a terminal one line is
 * redrawn with \r; otherwise a line at most every 2 s, none in the first 2 s,
 * and the last one, so logs stay short and quick failures print nothing. */
void cli_progress(void *user, const char *what, uint64_t done, uint64_t total) {
    (void)user;
    const double now = mt_now();
    if (g_t0 <= 0) g_t0 = g_phase_t0 = g_last_report = now;
    const char *semi = strchr(what, ';');
    const int head = semi ? (int)(semi - what) : (int)strlen(what);
    const size_t plen = strlen(g_phase);
    const int same_phase = (int)plen == (head < (int)sizeof g_phase ? head : (int)sizeof g_phase - 1) &&
                           !strncmp(g_phase, what, plen);
    if (!g_have_first || done < g_first_done || !same_phase) {
        snprintf(g_phase, sizeof g_phase, "%.*s", head, what);
        g_have_first = 1;
        g_first_done = done;
        g_first_t = now;
        g_phase_t0 = g_last_report;
    }
    g_last_report = now;
    const int tty = isatty(STDERR_FILENO);
    const int last = total && done >= total;
    if (!tty && (now - g_t0 < 2.0 || (!last && now - g_last_print < 2.0))) return;
    g_last_print = now;
    const int bytes = head >= 5 && !strncmp(what + head - 5, "bytes", 5);
    const double scale = bytes ? 1.0 / 1048576.0 : 1.0;
    double rate = 0;
    if (done > g_first_done && now > g_first_t)
        rate = (double)(done - g_first_done) / (now - g_first_t);
    else if (now > g_phase_t0)
        rate = (double)done / (now - g_phase_t0);
    char line[320], eta[32] = "?";
    const int cap = (int)sizeof line;
    int n = bytes ? addf(line, cap, 0, "moetool %.*s: %.1f", head > 7 ? head - 7 : 0, what, (double)done * scale)
                  : addf(line, cap, 0, "moetool %.*s %llu", head, what, (unsigned long long)done);
    if (total) {
        n = bytes ? addf(line, cap, n, "/%.1f MiB", (double)total * scale)
                  : addf(line, cap, n, "/%llu", (unsigned long long)total);
        n = addf(line, cap, n, " (%.0f%%)", 100.0 * (double)done / (double)total);
    }
    if (semi) n = addf(line, cap, n, ", %s", semi + 1 + (semi[1] == ' '));
    if (rate > 0) {
        const double r = rate * scale;
        const char *unit = bytes ? "MiB" : what;
        for (int i = 0; !bytes && i < head; i++)
            if (what[i] == ' ') unit = what + i + 1;
        const int ul = bytes ? 3 : head - (int)(unit - what);
        n = r >= 1 || bytes ? addf(line, cap, n, ", %.2f %.*s/s", r, ul, unit)
                            : addf(line, cap, n, ", %.1f s/%.*s", 1.0 / r, ul, unit);
    }
    if (total && last) {
        fmt_secs(eta, sizeof eta, now - g_phase_t0);
        addf(line, cap, n, ", done in %s", eta);
    } else if (total && rate > 0) {
        fmt_secs(eta, sizeof eta, (double)(total - done) / rate);
        addf(line, cap, n, ", ETA %s", eta);
    }
    if (tty) {
        fprintf(stderr, "\r%s\033[K", line);
        g_progress_shown = 1;
    } else {
        fprintf(stderr, "%s\n", line);
    }
}

/* Clears a drawn terminal line (before a warning or error line). */
static void progress_clear(void) {
    if (g_progress_shown) {
        fprintf(stderr, "\r\033[K");
        g_progress_shown = 0;
    }
}

void cli_progress_done(void) {
    progress_clear();
    /* The next job's clock starts now. */
    g_t0 = g_phase_t0 = g_last_report = mt_now();
    g_have_first = 0;
    g_last_print = 0;
}

char *cli_beside_model(const char *model, const char *rel) {
    struct stat sb;
    const size_t n = strlen(model) + strlen(rel) + 4;
    char *p = malloc(n);
    if (!p) return NULL;
    const char *sl = strrchr(model, '/');
    if (stat(model, &sb) == 0 && S_ISDIR(sb.st_mode)) snprintf(p, n, "%s/%s", model, rel);
    else if (sl) snprintf(p, n, "%.*s/%s", (int)(sl - model), model, rel);
    else snprintf(p, n, "%s", rel);
    return p;
}

void cli_note_portability(const char *verb, const char *out) {
    mt_ckpt *ck = NULL;
    if (mt_ckpt_open(&ck, out) != MT_OK) {
        mt_clearerr();
        return;
    }
    const char *why = mt_config_portability(mt_ckpt_config(ck));
    if (why) fprintf(stderr, "moetool %s: note: %s: %s\n", verb, out, why);
    mt_ckpt_free(ck);
}

char *cli_command_line(int argc, char **argv) {
    size_t n = 8;
    for (int i = 0; i < argc; i++) n += 4 * strlen(argv[i]) + 3;
    char *s = malloc(n), *q = s;
    if (!s) return NULL;
    q += sprintf(q, "moetool");
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        *q++ = ' ';
        if (*a && strspn(a, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,+@%") == strlen(a)) {
            q += sprintf(q, "%s", a);
            continue;
        }
        *q++ = '\'';
        for (; *a; a++) {
            if (*a == '\'') q += sprintf(q, "'\\''");
            else *q++ = *a;
        }
        *q++ = '\'';
    }
    *q = 0;
    return s;
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

/* Length of the well-formed UTF-8 sequence at p (Unicode table 3-7: no
 * overlongs, surrogates or values above U+10FFFF), or, when there is none,
 * minus the length of its maximal well-formed prefix (at least 1 byte), which
 * is replaced by one U+FFFD as Unicode recommends (and Python decodes). */
static long utf8_len(const unsigned char *p, size_t n) {
    if (p[0] < 0x80) return 1;
    size_t len;
    unsigned char lo = 0x80, hi = 0xbf;
    if (p[0] >= 0xc2 && p[0] <= 0xdf) len = 2;
    else if (p[0] >= 0xe0 && p[0] <= 0xef) {
        len = 3;
        if (p[0] == 0xe0) lo = 0xa0;
        if (p[0] == 0xed) hi = 0x9f;
    } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
        len = 4;
        if (p[0] == 0xf0) lo = 0x90;
        if (p[0] == 0xf4) hi = 0x8f;
    } else
        return -1;
    for (size_t k = 1; k < len; k++) {
        if (k >= n || p[k] < (k == 1 ? lo : 0x80) || p[k] > (k == 1 ? hi : 0xbf)) return -(long)k;
    }
    return (long)len;
}

void json_strn(FILE *f, const char *s, size_t n) {
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x80) {
            long k = utf8_len((const unsigned char *)s + i, n - i);
            if (k < 0) fputs("\\ufffd", f), i += (size_t)(-k) - 1;
            else fwrite(s + i, 1, (size_t)k, f), i += (size_t)k - 1;
            continue;
        }
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

void cli_log_stderr(void *user, mt_log_level level, const char *msg) {
    (void)user;
    if (level == MT_LOG_DEBUG && !getenv("MOETOOL_DEBUG")) return;
    progress_clear();
    fprintf(stderr, "moetool: %s%s\n", level == MT_LOG_WARN ? "warning: " : "", msg);
}

/* Terminal output of names read from files: control bytes (escape
 * sequences, C1 controls) and bytes that are not UTF-8 are shown as \xNN,
 * never sent to the terminal. */
void cli_term_str(FILE *f, const char *s, int width) {
    int n = 0;
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0, len = strlen(s); i < len;) {
        long k = p[i] < 0x80 ? 1 : utf8_len(p + i, len - i);
        const int c1 = k == 2 && p[i] == 0xc2 && p[i + 1] < 0xa0;
        if (k < 0 || c1 || p[i] < 0x20 || p[i] == 0x7f) {
            size_t m = k < 0 ? (size_t)-k : (size_t)k;
            for (size_t j = 0; j < m; j++) n += fprintf(f, "\\x%02x", p[i + j]);
            i += m;
        } else {
            fwrite(p + i, 1, (size_t)k, f);
            i += (size_t)k;
            n++;
        }
    }
    for (; n < width; n++) fputc(' ', f);
}

