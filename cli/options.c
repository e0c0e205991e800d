/* options.c — the table-driven option parser, help printer and key
 * validator behind every verb (options.h). */
#define _GNU_SOURCE
#include "options.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define EXIT_USAGE 2

const cli_verb *cli_verb_find(const char *name) {
    for (size_t i = 0; cli_verbs[i]; i++)
        if (!strcmp(cli_verbs[i]->name, name)) return cli_verbs[i];
    return NULL;
}

/* '_' and '-' are one character for names. */
static int same_char(char a, char b) { return a == b || ((a == '_' || a == '-') && (b == '_' || b == '-')); }

static int same_name(const char *a, const char *b) {
    for (; *a && *b; a++, b++)
        if (!same_char(*a, *b)) return 0;
    return !*a && !*b;
}

const cli_opt *cli_opts_find(const cli_verb *v, const char *name) {
    for (size_t i = 0; i < v->n_opts; i++)
        if (same_name(v->opts[i].name, name)) return &v->opts[i];
    return NULL;
}

/* Optimal string alignment distance: insertions, deletions, substitutions
 * and transpositions of neighbours ("mgr" -> "mrg") cost 1. */
int cli_edit_distance(const char *a, const char *b) {
    enum { CAP = 64 };
    const size_t n = strnlen(a, CAP), m = strnlen(b, CAP);
    static _Thread_local int d[CAP + 1][CAP + 1];
    for (size_t i = 0; i <= n; i++) d[i][0] = (int)i;
    for (size_t j = 0; j <= m; j++) d[0][j] = (int)j;
    for (size_t i = 1; i <= n; i++)
        for (size_t j = 1; j <= m; j++) {
            int best = d[i - 1][j - 1] + !same_char(a[i - 1], b[j - 1]);
            if (d[i - 1][j] + 1 < best) best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best) best = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && same_char(a[i - 1], b[j - 2]) && same_char(a[i - 2], b[j - 1]) &&
                d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    return d[n][m];
}

const char *cli_opts_suggest(const cli_verb *v, const char *name, int recipe_only) {
    const char *best = NULL;
    int best_d = 3;
    const int len = (int)strnlen(name, 64);
    for (size_t i = 0; i < v->n_opts; i++) {
        const cli_opt *o = &v->opts[i];
        if (recipe_only && (o->flags & CLI_OPT_CLI_ONLY)) continue;
        const int d = cli_edit_distance(name, o->name);
        if (d < best_d && 2 * d < (len > (int)strlen(o->name) ? len : (int)strlen(o->name))) best_d = d, best = o->name;
    }
    return best;
}

static void store_int(void *p, size_t size, long long v) {
    if (size == sizeof(int64_t)) *(int64_t *)p = (int64_t)v;
    else if (size == sizeof(int)) *(int *)p = (int)v;
    else *(long *)p = (long)v;
}

/* "a, b or c" */
static void list_choices(const char *const *ch, char *buf, size_t n) {
    size_t k = 0, cnt = 0;
    buf[0] = 0;
    while (ch[cnt]) cnt++;
    for (size_t i = 0; i < cnt && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, "%s%s", i == 0 ? "" : i + 1 == cnt ? " or " : ", ", ch[i]);
}

int cli_opts_set(const cli_opt *o, void *args, const char *shown, const char *value, char *err, size_t errn) {
    char *dst = (char *)args + o->offset;
    char *end;
    if (o->type == CLI_BOOL) {
        int on = 1;
        if (value) {
            if (!strcmp(value, "true")) on = 1;
            else if (!strcmp(value, "false")) on = 0;
            else return snprintf(err, errn, "%s expects true or false, got '%s'", shown, value), -1;
        }
        if (o->set) return on ? o->set(args, o, shown, "true", err, errn) : 0;
        if (!on) return 0; /* false: the default stays */
        store_int(dst, o->size, (o->flags & CLI_OPT_INVERT) ? 0 : 1);
        return 0;
    }
    if (!value) return snprintf(err, errn, "option %s needs a value", shown), -1;
    switch (o->type) {
    case CLI_INT: {
        errno = 0;
        long long v = strtoll(value, &end, 10);
        if (errno || end == value || *end || v < o->lo || v > o->hi)
            return snprintf(err, errn, "%s expects an integer in [%ld, %ld], got '%s'", shown, o->lo, o->hi, value), -1;
        if (o->set) return o->set(args, o, shown, value, err, errn);
        store_int(dst, o->size, v);
        return 0;
    }
    case CLI_FLOAT: {
        errno = 0;
        double v = strtod(value, &end);
        if (errno || end == value || *end || !isfinite(v))
            return snprintf(err, errn, "%s expects a finite number, got '%s'", shown, value), -1;
        const int lo_ok = (o->flags & CLI_OPT_LO_OPEN) ? v > o->flo : v >= o->flo;
        const int hi_ok = (o->flags & CLI_OPT_NO_HI) || v <= o->fhi;
        if (!lo_ok || !hi_ok) {
            if (o->flags & CLI_OPT_NO_HI)
                return snprintf(err, errn, "%s must be %s %g, got '%s'", shown, (o->flags & CLI_OPT_LO_OPEN) ? ">" : ">=",
                                o->flo, value), -1;
            return snprintf(err, errn, "%s must be in %c%g, %g], got '%s'", shown, (o->flags & CLI_OPT_LO_OPEN) ? '(' : '[',
                            o->flo, o->fhi, value), -1;
        }
        if (o->set) return o->set(args, o, shown, value, err, errn);
        if (o->size == sizeof(float)) *(float *)dst = (float)v;
        else *(double *)dst = v;
        return 0;
    }
    case CLI_ENUM:
        for (int i = 0; o->choices[i]; i++) {
            if (strcmp(o->choices[i], value)) continue;
            if (o->set) return o->set(args, o, shown, value, err, errn);
            store_int(dst, o->size, o->values ? o->values[i] : i);
            return 0;
        }
        {
            char list[256];
            list_choices(o->choices, list, sizeof list);
            return snprintf(err, errn, "%s must be %s, got '%s'", shown, list, value), -1;
        }
    case CLI_STRING:
    case CLI_PATH:
    case CLI_OUTPUT:
        if (o->set) return o->set(args, o, shown, value, err, errn);
        *(const char **)dst = value;
        return 0;
    case CLI_BOOL: break;
    }
    return snprintf(err, errn, "%s: unknown option type", shown), -1;
}

static int usage(const cli_verb *v, const char *msg) {
    fprintf(stderr, "moetool %s: %s (see `moetool %s --help`)\n", v->name, msg, v->name);
    return EXIT_USAGE;
}

int cli_opts_parse_argv(const cli_verb *v, void *args, int argc, char **argv, const char **positional) {
    char err[512];
    int n_pos = 0;
    *positional = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--")) {
            for (i++; i < argc; i++, n_pos++)
                if (!*positional) *positional = argv[i];
            break;
        }
        if (a[0] != '-' || !a[1]) {
            if (!*positional) *positional = a;
            n_pos++;
            continue;
        }
        const cli_opt *o = NULL;
        const char *value = NULL;
        char shown[96];
        if (a[1] == '-') {
            const char *name = a + 2, *eq = strchr(name, '=');
            const size_t nl = eq ? (size_t)(eq - name) : strlen(name);
            if (nl == 4 && !strncmp(name, "help", 4)) return cli_opts_help(v, stdout), 1;
            const cli_opt *prefix = NULL;
            int n_prefix = 0;
            for (size_t k = 0; k < v->n_opts; k++) {
                const cli_opt *c = &v->opts[k];
                if (strncmp(c->name, name, nl)) continue;
                if (strlen(c->name) == nl) {
                    o = c;
                    break;
                }
                prefix = c, n_prefix++;
            }
            if (!o && n_prefix == 1) o = prefix; /* unique abbreviation, as getopt_long */
            if (!o) {
                const int ambiguous = n_prefix > 1;
                snprintf(err, sizeof err, "%s option %.*s", ambiguous ? "ambiguous" : "unknown", (int)(nl + 2), a);
                char *dup = strndup(name, nl);
                const char *near = !ambiguous && dup ? cli_opts_suggest(v, dup, 0) : NULL;
                free(dup);
                if (near) snprintf(err + strlen(err), sizeof err - strlen(err), "; did you mean --%s?", near);
                return usage(v, err);
            }
            snprintf(shown, sizeof shown, "--%s", o->name);
            if (eq) {
                if (o->type == CLI_BOOL) {
                    snprintf(err, sizeof err, "option --%s takes no value", o->name);
                    return usage(v, err);
                }
                value = eq + 1;
            } else if (o->type != CLI_BOOL) {
                if (i + 1 >= argc) {
                    snprintf(err, sizeof err, "option %s needs a value", a);
                    return usage(v, err);
                }
                value = argv[++i];
            }
        } else {
            if (a[1] == 'h' && !a[2]) return cli_opts_help(v, stdout), 1;
            for (size_t k = 0; k < v->n_opts; k++)
                if (v->opts[k].short_name == a[1]) o = &v->opts[k];
            if (!o) {
                snprintf(err, sizeof err, "unknown option -%c", a[1]);
                return usage(v, err);
            }
            snprintf(shown, sizeof shown, "-%c", a[1]);
            if (o->type == CLI_BOOL) {
                if (a[2]) {
                    snprintf(err, sizeof err, "option -%c takes no value", a[1]);
                    return usage(v, err);
                }
            } else if (a[2]) {
                value = a + 2;
            } else if (i + 1 >= argc) {
                snprintf(err, sizeof err, "option -%c needs a value", a[1]);
                return usage(v, err);
            } else {
                value = argv[++i];
            }
        }
        if (cli_opts_set(o, args, shown, value, err, sizeof err)) return usage(v, err);
    }
    if (n_pos > 1) {
        snprintf(err, sizeof err, "expects one %s, got %d", v->positional ? v->positional : "argument", n_pos);
        return usage(v, err);
    }
    return 0;
}

/* Writes text wrapped to 79 columns; continuation lines start at col. */
static void wrap(FILE *f, const char *text, int at, int col) {
    int x = at;
    const char *p = text;
    while (*p) {
        if (*p == '\n') { /* explicit break */
            fprintf(f, "\n%*s", col, "");
            x = col;
            p++;
            continue;
        }
        const char *w = p;
        while (*p && *p != ' ' && *p != '\n') p++;
        const int wl = (int)(p - w);
        if (x > col && x + 1 + wl > 79) {
            fprintf(f, "\n%*s", col, "");
            x = col;
        } else if (x > col) {
            fputc(' ', f);
            x++;
        }
        fwrite(w, 1, (size_t)wl, f);
        x += wl;
        while (*p == ' ') p++;
    }
    fputc('\n', f);
}

void cli_opts_help(const cli_verb *v, FILE *f) {
    fprintf(f, "%s\n\n%s\n", v->synopsis, v->about);
    int width = 0;
    char head[128];
    for (size_t i = 0; i < v->n_opts; i++) {
        const cli_opt *o = &v->opts[i];
        int n = snprintf(head, sizeof head, "%s%c%s--%s%s%s", o->short_name ? "-" : "", o->short_name ? o->short_name : ' ',
                         o->short_name ? ", " : "", o->name, o->metavar ? " " : "", o->metavar ? o->metavar : "");
        n -= o->short_name ? 0 : 1;
        if (n > width && n <= 24) width = n;
    }
    const int col = 2 + width + 2;
    for (size_t i = 0; i < v->n_opts; i++) {
        const cli_opt *o = &v->opts[i];
        int n;
        if (o->short_name)
            n = fprintf(f, "  -%c, --%s%s%s", o->short_name, o->name, o->metavar ? " " : "", o->metavar ? o->metavar : "");
        else
            n = fprintf(f, "  --%s%s%s", o->name, o->metavar ? " " : "", o->metavar ? o->metavar : "");
        char text[1024];
        snprintf(text, sizeof text, "%s%s%s%s", o->help, o->def ? " (default " : "", o->def ? o->def : "",
                 o->def ? ")" : "");
        if (n + 2 > col) {
            fprintf(f, "\n%*s", col, "");
            n = col;
        } else {
            fprintf(f, "%*s", col - n, "");
            n = col;
        }
        wrap(f, text, n, col);
    }
    fprintf(f, "  -h, --help%*sthis text\n", col - 12 > 1 ? col - 12 : 1, "");
}
