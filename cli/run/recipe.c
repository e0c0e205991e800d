/* recipe.c — reads a recipe (recipe.h, docs/recipes.md).
 *
 * Two stages. libyaml's event stream is built into a small tree of our own,
 * where every node keeps its position and the YAML hazards are refused:
 * several documents, duplicate keys (with '_' == '-'), merge keys, aliases
 * to an enclosing node, and aliases whose expansion would pass
 * RECIPE_MAX_NODES (an alias shares its node; the walk below visits it once
 * per use, so the count bounds the work). Then the tree is checked against
 * the schema: every step's keys against its verb's option table
 * (cli/options.h), values converted by the same code as the command line,
 * references resolved, cycles refused, gates matched to eval steps. The
 * first error is reported, as "file:line:col: message". */
#define _GNU_SOURCE
#include "recipe.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

/* ---------------------------------------------------------------- tree */

enum { Y_SCALAR, Y_SEQ, Y_MAP };

typedef struct ynode {
    int kind;
    recipe_pos pos;
    char *s;              /* scalar text (NUL-terminated, no NUL inside)      */
    int plain;            /* scalar written without quotes                    */
    struct ynode **kids;  /* seq: items; map: key, value, key, value...       */
    size_t n, cap;
    size_t weight;        /* nodes in the subtree, aliases expanded           */
    int open;             /* still being built (an alias to it is a cycle)    */
    struct ynode *next_alloc;
} ynode;

typedef struct {
    char *name;
    ynode *node;
} anchor;

typedef struct {
    const char *path;
    char *err;
    size_t errn;
    ynode *all;           /* every node, for freeing                          */
    anchor *anchors;
    size_t n_anchors, cap_anchors;
    size_t expanded;      /* nodes counted with aliases expanded              */
} parser;

static int fail_at(parser *p, recipe_pos pos, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
static int fail_at(parser *p, recipe_pos pos, const char *fmt, ...) {
    int k = snprintf(p->err, p->errn, "%s:%d:%d: ", p->path, pos.line, pos.col);
    if (k < 0 || (size_t)k >= p->errn) return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err + k, p->errn - (size_t)k, fmt, ap);
    va_end(ap);
    for (char *c = p->err; *c; c++) /* one line, whatever the input held */
        if (*c == '\n' || *c == '\r') *c = ' ';
    return -1;
}

static recipe_pos mark_pos(yaml_mark_t m) { return (recipe_pos){(int)m.line + 1, (int)m.column + 1}; }

static ynode *new_node(parser *p, int kind, recipe_pos pos) {
    ynode *n = calloc(1, sizeof *n);
    if (!n) return NULL;
    n->kind = kind;
    n->pos = pos;
    n->weight = 1;
    n->next_alloc = p->all;
    p->all = n;
    return n;
}

static void free_tree(parser *p) {
    for (ynode *n = p->all, *nx; n; n = nx) {
        nx = n->next_alloc;
        free(n->s);
        free(n->kids);
        free(n);
    }
    p->all = NULL;
    for (size_t i = 0; i < p->n_anchors; i++) free(p->anchors[i].name);
    free(p->anchors);
    p->anchors = NULL;
    p->n_anchors = p->cap_anchors = 0;
}

/* '_' and '-' are one character in keys. */
static int key_eq(const char *a, const char *b) {
    for (; *a && *b; a++, b++)
        if (*a != *b && !((*a == '_' || *a == '-') && (*b == '_' || *b == '-'))) return 0;
    return !*a && !*b;
}

static int add_kid(parser *p, ynode *parent, ynode *kid) {
    if (parent->kind == Y_MAP && parent->n % 2 == 0) { /* a key */
        if (kid->kind != Y_SCALAR) return fail_at(p, kid->pos, "a mapping key must be a plain word, not a %s",
                                                  kid->kind == Y_MAP ? "mapping" : "list");
        if (!strcmp(kid->s, "<<") && kid->plain)
            return fail_at(p, kid->pos, "merge keys (<<) are not supported: write the keys out");
        for (size_t i = 0; i < parent->n; i += 2)
            if (key_eq(parent->kids[i]->s, kid->s))
                return fail_at(p, kid->pos, "duplicate key '%s' (first at line %d, column %d)", kid->s,
                               parent->kids[i]->pos.line, parent->kids[i]->pos.col);
    }
    if (parent->n == parent->cap) {
        size_t nc = parent->cap ? 2 * parent->cap : 8;
        ynode **nk = realloc(parent->kids, nc * sizeof *nk);
        if (!nk) return fail_at(p, kid->pos, "out of memory");
        parent->kids = nk;
        parent->cap = nc;
    }
    parent->kids[parent->n++] = kid;
    return 0;
}

static int set_anchor(parser *p, const yaml_char_t *name, ynode *n) {
    if (!name) return 0;
    if (p->n_anchors == p->cap_anchors) {
        size_t nc = p->cap_anchors ? 2 * p->cap_anchors : 8;
        anchor *na = realloc(p->anchors, nc * sizeof *na);
        if (!na) return fail_at(p, n->pos, "out of memory");
        p->anchors = na;
        p->cap_anchors = nc;
    }
    char *s = strdup((const char *)name);
    if (!s) return fail_at(p, n->pos, "out of memory");
    p->anchors[p->n_anchors++] = (anchor){s, n};
    return 0;
}

static ynode *find_anchor(parser *p, const char *name) {
    for (size_t i = p->n_anchors; i-- > 0;) /* a redefined anchor: the latest */
        if (!strcmp(p->anchors[i].name, name)) return p->anchors[i].node;
    return NULL;
}

static int count(parser *p, size_t w, recipe_pos pos) {
    p->expanded += w;
    if (p->expanded > RECIPE_MAX_NODES)
        return fail_at(p, pos, "the document expands to more than %d nodes (aliases included); refused", RECIPE_MAX_NODES);
    return 0;
}

/* Builds the tree of the one document in data; *root NULL for an empty file. */
static int build_tree(parser *p, const char *data, size_t len, ynode **root) {
    yaml_parser_t yp;
    yaml_event_t ev;
    ynode *stack[RECIPE_MAX_DEPTH];
    int depth = 0, docs = 0, rc = 0;
    *root = NULL;
    if (!yaml_parser_initialize(&yp)) return fail_at(p, (recipe_pos){1, 1}, "out of memory");
    yaml_parser_set_input_string(&yp, (const unsigned char *)data, len);
    for (int done = 0; !done && rc == 0;) {
        if (!yaml_parser_parse(&yp, &ev)) {
            recipe_pos pos = mark_pos(yp.problem_mark);
            if (yp.error == YAML_READER_ERROR) /* the reader's mark counts bytes, not lines */
                rc = fail_at(p, (recipe_pos){1, 1}, "not UTF-8 text: %s at byte %zu", yp.problem ? yp.problem : "bad input",
                             yp.problem_offset);
            else
                rc = fail_at(p, pos, "YAML: %s%s%s", yp.problem ? yp.problem : "syntax error",
                             yp.context ? " " : "", yp.context ? yp.context : "");
            break;
        }
        const recipe_pos pos = mark_pos(ev.start_mark);
        ynode *n = NULL;
        switch (ev.type) {
        case YAML_STREAM_END_EVENT: done = 1; break;
        case YAML_DOCUMENT_START_EVENT:
            if (++docs > 1) rc = fail_at(p, pos, "a recipe is one YAML document; found a second one");
            break;
        case YAML_SCALAR_EVENT:
            if (memchr(ev.data.scalar.value, 0, ev.data.scalar.length)) {
                rc = fail_at(p, pos, "a value holds a NUL character");
                break;
            }
            if (!(n = new_node(p, Y_SCALAR, pos)) || !(n->s = strdup((const char *)ev.data.scalar.value))) {
                rc = fail_at(p, pos, "out of memory");
                break;
            }
            n->plain = ev.data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
            if (!(rc = count(p, 1, pos)) && !(rc = set_anchor(p, ev.data.scalar.anchor, n)))
                rc = depth ? add_kid(p, stack[depth - 1], n) : (*root = n, 0);
            break;
        case YAML_SEQUENCE_START_EVENT:
        case YAML_MAPPING_START_EVENT: {
            if (depth >= RECIPE_MAX_DEPTH) {
                rc = fail_at(p, pos, "nested more than %d levels deep", RECIPE_MAX_DEPTH);
                break;
            }
            const int map = ev.type == YAML_MAPPING_START_EVENT;
            if (!(n = new_node(p, map ? Y_MAP : Y_SEQ, pos))) {
                rc = fail_at(p, pos, "out of memory");
                break;
            }
            n->open = 1;
            const yaml_char_t *a = map ? ev.data.mapping_start.anchor : ev.data.sequence_start.anchor;
            if ((rc = count(p, 1, pos)) || (rc = set_anchor(p, a, n))) break;
            rc = depth ? add_kid(p, stack[depth - 1], n) : (*root = n, 0);
            stack[depth++] = n;
            break;
        }
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT: {
            ynode *c = stack[--depth];
            c->open = 0;
            for (size_t i = 0; i < c->n; i++) c->weight += c->kids[i]->weight;
            break;
        }
        case YAML_ALIAS_EVENT: {
            ynode *t = find_anchor(p, (const char *)ev.data.alias.anchor);
            if (!t) rc = fail_at(p, pos, "alias *%s names no anchor before it", (const char *)ev.data.alias.anchor);
            else if (t->open) rc = fail_at(p, pos, "alias *%s refers to a node that contains it", (const char *)ev.data.alias.anchor);
            else if (!(rc = count(p, t->weight, pos))) rc = depth ? add_kid(p, stack[depth - 1], t) : (*root = t, 0);
            break;
        }
        default: break;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&yp);
    return rc;
}

/* --------------------------------------------------------------- schema */

static const char *const metric_names[GATE_COUNT] = {"perplexity", "perplexity_ratio", "kl", "top1",
                                                     "size_mib", "bits_per_weight", "tokens_per_s"};

const char *recipe_metric_name(recipe_metric m) { return m < GATE_COUNT ? metric_names[m] : "?"; }

static const char *kind_name(const ynode *n) {
    return n->kind == Y_MAP ? "a mapping" : n->kind == Y_SEQ ? "a list" : "a value";
}

/* The word of words[] nearest to s, if it looks like a typo of it. */
static const char *nearest(const char *s, const char *const *words, size_t n) {
    const char *best = NULL;
    int best_d = 3;
    const int len = (int)strnlen(s, 64);
    for (size_t i = 0; i < n; i++) {
        if (!words[i]) continue;
        const int wl = (int)strlen(words[i]), d = cli_edit_distance(s, words[i]);
        if (d < best_d && 2 * d < (len > wl ? len : wl)) best = words[i], best_d = d;
    }
    return best;
}

static int unknown_key(parser *p, const ynode *k, const char *where, const char *const *words, size_t n) {
    const char *near = nearest(k->s, words, n);
    char list[512];
    size_t o = 0;
    list[0] = 0;
    for (size_t i = 0; i < n && o < sizeof list; i++)
        if (words[i]) o += (size_t)snprintf(list + o, sizeof list - o, "%s%s", o ? ", " : "", words[i]);
    if (near) return fail_at(p, k->pos, "unknown key '%s' in %s; did you mean '%s'?", k->s, where, near);
    return fail_at(p, k->pos, "unknown key '%s' in %s (known: %s)", k->s, where, list);
}

static int want_scalar(parser *p, const ynode *v, const char *what) {
    if (v->kind != Y_SCALAR) return fail_at(p, v->pos, "%s expects a single value, got %s", what, kind_name(v));
    return 0;
}

static int want_int(parser *p, const ynode *v, const char *what, long lo, long hi, long *out) {
    if (want_scalar(p, v, what)) return -1;
    char *end;
    errno = 0;
    long x = strtol(v->s, &end, 10);
    if (errno || end == v->s || *end || x < lo || x > hi)
        return fail_at(p, v->pos, "%s expects an integer in [%ld, %ld], got '%s'", what, lo, hi, v->s);
    *out = x;
    return 0;
}

static int want_num(parser *p, const ynode *v, const char *what, double *out) {
    if (want_scalar(p, v, what)) return -1;
    char *end;
    errno = 0;
    double x = strtod(v->s, &end);
    if (errno || end == v->s || *end || x != x || x > 1e300 || x < -1e300)
        return fail_at(p, v->pos, "%s expects a number, got '%s'", what, v->s);
    *out = x;
    return 0;
}

/* A path as written, made relative to the recipe's directory. */
static char *resolve(const recipe *r, const char *s) {
    char *out = NULL;
    if (s[0] == '/' || !strncmp(s, "${", 2) || !strcmp(r->dir, ".")) return strdup(s);
    if (asprintf(&out, "%s/%s", r->dir, s) < 0) return NULL;
    return out;
}

static int exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

int recipe_step_find(const recipe *r, const char *name) {
    for (size_t i = 0; i < r->n_steps; i++)
        if (r->steps[i].name && !strcmp(r->steps[i].name, name)) return (int)i;
    return -1;
}

static int add_dep(recipe_step *s, int d) {
    for (size_t i = 0; i < s->n_deps; i++)
        if (s->deps[i] == d) return 0;
    int *nd = realloc(s->deps, (s->n_deps + 1) * sizeof *nd);
    if (!nd) return -1;
    s->deps = nd;
    s->deps[s->n_deps++] = d;
    return 0;
}

/* Checks the ${...} references in s (at pos) and records them as
 * dependencies of step self (-1: none). */
static int check_refs(parser *p, recipe *r, int self, const char *s, recipe_pos pos) {
    for (const char *c = strstr(s, "${"); c; c = strstr(c, "${")) {
        const char *e = strchr(c, '}');
        if (!e) return fail_at(p, pos, "unterminated reference '%s' (write ${model} or ${STEP.output})", c);
        const size_t n = (size_t)(e - c - 2);
        char ref[128];
        if (n >= sizeof ref) return fail_at(p, pos, "reference too long");
        memcpy(ref, c + 2, n);
        ref[n] = 0;
        c = e + 1;
        if (!strcmp(ref, "model")) continue;
        if (!strncmp(ref, "texts.", 6)) {
            if (recipe_text_find(r, ref + 6) >= 0) continue;
            const char **names = calloc(r->n_texts + 1, sizeof *names);
            for (size_t i = 0; names && i < r->n_texts; i++) names[i] = r->texts[i].name;
            const char *near = names ? nearest(ref + 6, names, r->n_texts) : NULL;
            int rc = near ? fail_at(p, pos, "reference ${%s}: no text named '%s' under texts:; did you mean '%s'?", ref,
                                    ref + 6, near)
                          : fail_at(p, pos, "reference ${%s}: no text named '%s' under texts:", ref, ref + 6);
            free(names);
            return rc;
        }
        char *dot = strrchr(ref, '.');
        if (!dot) {
            if (recipe_step_find(r, ref) >= 0)
                return fail_at(p, pos, "reference ${%s} names a step: write ${%s.output}", ref, ref);
            return fail_at(p, pos, "unknown reference ${%s} (write ${model} or ${STEP.output})", ref);
        }
        *dot = 0;
        if (strcmp(dot + 1, "output")) {
            const char *const out_word[] = {"output"};
            const char *near = nearest(dot + 1, out_word, 1);
            return fail_at(p, pos, "reference ${%s.%s}: a step has only .output%s", ref, dot + 1,
                           near ? " (a typo?)" : "");
        }
        const int t = recipe_step_find(r, ref);
        if (t < 0) {
            const char **names = calloc(r->n_steps + 1, sizeof *names);
            for (size_t i = 0; names && i < r->n_steps; i++) names[i] = r->steps[i].name;
            const char *near = names ? nearest(ref, names, r->n_steps) : NULL;
            int rc = near ? fail_at(p, pos, "reference ${%s.output}: no step named '%s'; did you mean '%s'?", ref, ref, near)
                          : fail_at(p, pos, "reference ${%s.output}: no step named '%s'", ref, ref);
            free(names);
            return rc;
        }
        if (!r->steps[t].writes_model)
            return fail_at(p, pos, "reference ${%s.output}: step '%s' (%s) writes no model", ref, ref, r->steps[t].verb->name);
        if (self >= 0 && add_dep(&r->steps[self], t)) return fail_at(p, pos, "out of memory");
    }
    return 0;
}

/* The verbs a step may use, for messages and suggestions. */
static size_t step_words(const char **w, size_t cap) {
    size_t n = 0;
    w[n++] = "name";
    w[n++] = "model";
    for (size_t i = 0; cli_verbs[i] && n < cap; i++)
        if (cli_verbs[i]->recipe_step) w[n++] = cli_verbs[i]->name;
    return n;
}

static int parse_step_opts(parser *p, recipe *r, recipe_step *s, const ynode *m, int check_files) {
    const cli_verb *v = s->verb;
    if (m->kind == Y_SCALAR && (!*m->s || !strcmp(m->s, "~") || !strcmp(m->s, "null")) && m->plain) return 0;
    if (m->kind != Y_MAP) return fail_at(p, m->pos, "%s expects a mapping of its options, got %s", v->name, kind_name(m));
    void *scratch = calloc(1, v->args_size);
    if (!scratch) return fail_at(p, m->pos, "out of memory");
    v->init(scratch);
    s->kv = calloc(m->n / 2 + 1, sizeof *s->kv);
    int rc = s->kv ? 0 : fail_at(p, m->pos, "out of memory");
    for (size_t i = 0; rc == 0 && i < m->n; i += 2) {
        const ynode *k = m->kids[i], *val = m->kids[i + 1];
        const cli_opt *o = cli_opts_find(v, k->s);
        char what[160];
        snprintf(what, sizeof what, "%s: %s", v->name, k->s);
        if (!o) {
            const char *near = cli_opts_suggest(v, k->s, 1);
            rc = near ? fail_at(p, k->pos, "%s has no option '%s'; did you mean '%s'?", v->name, k->s, near)
                      : fail_at(p, k->pos, "%s has no option '%s' (see `moetool %s --help`)", v->name, k->s, v->name);
            break;
        }
        if (o->type == CLI_OUTPUT) {
            rc = fail_at(p, k->pos, "%s: the output is chosen by moetool run (refer to it as ${%s.output})", what, s->name);
            break;
        }
        if (o->flags & CLI_OPT_CLI_ONLY) {
            rc = fail_at(p, k->pos, "%s is a command-line option, not a recipe key", what);
            break;
        }
        if ((rc = want_scalar(p, val, what))) break;
        const char *text = val->s;
        if (o->type == CLI_BOOL && !val->plain) {
            rc = fail_at(p, val->pos, "%s expects true or false (unquoted), got '%s'", what, text);
            break;
        }
        const int has_ref = strstr(text, "${") != NULL;
        if (has_ref && o->type != CLI_PATH && o->type != CLI_STRING) {
            rc = fail_at(p, val->pos, "%s: references are allowed in paths only", what);
            break;
        }
        char err[384];
        if (!has_ref && cli_opts_set(o, scratch, what, text, err, sizeof err)) {
            rc = fail_at(p, val->pos, "%s", err);
            break;
        }
        recipe_kv *kv = &s->kv[s->n_kv++];
        kv->opt = o;
        kv->pos = val->pos;
        kv->value = o->type == CLI_PATH ? resolve(r, text) : strdup(text);
        if (!kv->value) {
            rc = fail_at(p, val->pos, "out of memory");
            break;
        }
        if (o->type == CLI_PATH && !has_ref && check_files && !exists(kv->value))
            rc = fail_at(p, val->pos, "%s: %s does not exist", what, kv->value);
    }
    free(scratch);
    return rc;
}

static int parse_steps(parser *p, recipe *r, const ynode *seq, int check_files) {
    if (seq->kind != Y_SEQ || seq->n == 0)
        return fail_at(p, seq->pos, "steps expects a non-empty list of steps, got %s", seq->kind == Y_SEQ ? "an empty list" : kind_name(seq));
    if (!(r->steps = calloc(seq->n, sizeof *r->steps))) return fail_at(p, seq->pos, "out of memory");
    const char *words[32];
    const size_t n_words = step_words(words, 32);
    /* names first: references may point forward */
    for (size_t i = 0; i < seq->n; i++) {
        const ynode *st = seq->kids[i];
        recipe_step *s = &r->steps[i];
        s->pos = st->pos;
        r->n_steps = i + 1;
        if (st->kind != Y_MAP) return fail_at(p, st->pos, "a step is a mapping (name:, one verb:), got %s", kind_name(st));
        const ynode *verb_key = NULL, *verb_val = NULL;
        for (size_t k = 0; k < st->n; k += 2) {
            const ynode *key = st->kids[k], *val = st->kids[k + 1];
            const cli_verb *v = cli_verb_find(key->s);
            if (!strcmp(key->s, "name")) {
                if (want_scalar(p, val, "name")) return -1;
                if (!*val->s || strspn(val->s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") != strlen(val->s))
                    return fail_at(p, val->pos, "step name '%s' may hold only letters, digits, '-' and '_'", val->s);
                if (!strcmp(val->s, "texts") || !strcmp(val->s, "model"))
                    return fail_at(p, val->pos, "step name '%s' is reserved (${%s...} means something else)", val->s,
                                   val->s);
                if (recipe_step_find(r, val->s) >= 0)
                    return fail_at(p, val->pos, "a second step named '%s' (first at line %d)", val->s,
                                   r->steps[recipe_step_find(r, val->s)].pos.line);
                if (!(s->name = strdup(val->s))) return fail_at(p, val->pos, "out of memory");
            } else if (!strcmp(key->s, "model")) {
                if (want_scalar(p, val, "model")) return -1;
                if (!(s->model = resolve(r, val->s))) return fail_at(p, val->pos, "out of memory");
                s->model_pos = val->pos;
            } else if (v) {
                if (!v->recipe_step) {
                    char list[128] = "";
                    for (size_t w = 2; w < n_words; w++) snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", w > 2 ? ", " : "", words[w]);
                    return fail_at(p, key->pos, "%s cannot be a recipe step (steps: %s)", v->name, list);
                }
                if (verb_key)
                    return fail_at(p, key->pos, "a step has one verb; this one has %s and %s", verb_key->s, key->s);
                verb_key = key;
                verb_val = val;
                s->verb = v;
            } else {
                return unknown_key(p, key, "a step", words, n_words);
            }
        }
        if (!s->name) return fail_at(p, st->pos, "a step needs a name:");
        if (!verb_key) {
            char list[128] = "";
            for (size_t w = 2; w < n_words; w++) snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", w > 2 ? ", " : "", words[w]);
            return fail_at(p, st->pos, "step '%s' names no verb (one of %s)", s->name, list);
        }
        s->writes_model = 0;
        for (size_t k = 0; k < s->verb->n_opts; k++)
            if (s->verb->opts[k].type == CLI_OUTPUT) s->writes_model = 1;
        if (parse_step_opts(p, r, s, verb_val, check_files)) return -1;
        if (!strcmp(s->verb->name, "convert")) {
            int has_to = 0;
            for (size_t k = 0; k < s->n_kv; k++) has_to |= !strcmp(s->kv[k].opt->name, "to");
            if (!has_to) return fail_at(p, verb_key->pos, "step '%s': convert in a recipe needs to: hf or gguf", s->name);
        }
    }
    /* references and inputs */
    for (size_t i = 0; i < r->n_steps; i++) {
        recipe_step *s = &r->steps[i];
        if (s->model) {
            if (check_refs(p, r, (int)i, s->model, s->model_pos)) return -1;
            if (!strstr(s->model, "${") && check_files && !exists(s->model))
                return fail_at(p, s->model_pos, "step '%s': model %s does not exist", s->name, s->model);
        } else {
            s->input = -1;
            for (size_t j = i; j-- > 0;)
                if (r->steps[j].writes_model) {
                    s->input = (int)j;
                    if (add_dep(s, (int)j)) return fail_at(p, s->pos, "out of memory");
                    break;
                }
        }
        for (size_t k = 0; k < s->n_kv; k++)
            if (check_refs(p, r, (int)i, s->kv[k].value, s->kv[k].pos)) return -1;
    }
    return 0;
}

/* Depth-first order with cycle detection; color: 0 new, 1 on the path, 2 done. */
static int visit(parser *p, recipe *r, int i, int *color, int *path, int depth, size_t *n_order) {
    if (color[i] == 2) return 0;
    path[depth] = i;
    if (color[i] == 1) {
        char msg[512];
        size_t o = 0;
        int start = depth;
        while (start > 0 && path[start - 1] != i) start--;
        for (int k = start > 0 ? start - 1 : 0; k <= depth && o < sizeof msg; k++)
            o += (size_t)snprintf(msg + o, sizeof msg - o, "%s%s", o ? " -> " : "", r->steps[path[k]].name);
        return fail_at(p, r->steps[i].pos, "steps refer to each other in a cycle: %s", msg);
    }
    color[i] = 1;
    recipe_step *s = &r->steps[i];
    for (size_t d = 0; d < s->n_deps; d++)
        if (visit(p, r, s->deps[d], color, path, depth + 1, n_order)) return -1;
    color[i] = 2;
    r->order[(*n_order)++] = i;
    return 0;
}

static int order_steps(parser *p, recipe *r) {
    int *color = calloc(r->n_steps, sizeof *color), *path = calloc(r->n_steps + 1, sizeof *path);
    r->order = calloc(r->n_steps, sizeof *r->order);
    int rc = color && path && r->order ? 0 : fail_at(p, (recipe_pos){1, 1}, "out of memory");
    size_t n = 0;
    for (size_t i = 0; rc == 0 && i < r->n_steps; i++) rc = visit(p, r, (int)i, color, path, 0, &n);
    free(color);
    free(path);
    return rc;
}

static int has_key(const recipe_step *s, const char *name) {
    for (size_t k = 0; k < s->n_kv; k++)
        if (!strcmp(s->kv[k].opt->name, name)) return 1;
    return 0;
}

/* Whether eval step s reads the named text t (its text: is ${texts.NAME}). */
static int step_reads_text(const recipe *r, const recipe_step *s, int t) {
    if (strcmp(s->verb->name, "eval")) return 0;
    char want[160];
    snprintf(want, sizeof want, "${texts.%s}", r->texts[t].name);
    for (size_t k = 0; k < s->n_kv; k++)
        if (!strcmp(s->kv[k].opt->name, "text") && !strcmp(s->kv[k].value, want)) return 1;
    return 0;
}

/* A gate on a named text reads the eval step of that text: the one its
 * step: names (which must read the text), else the only one that reads it. */
static int pick_text_step(parser *p, const recipe *r, recipe_gate *gt, int has_step, recipe_pos pos) {
    const char *tn = r->texts[gt->text].name;
    if (has_step) {
        if (!step_reads_text(r, &r->steps[gt->step], gt->text))
            return fail_at(p, pos, "gate: step '%s' does not evaluate text '%s' (its text: is not ${texts.%s})",
                           r->steps[gt->step].name, tn, tn);
        return 0;
    }
    int found = -1;
    for (size_t i = 0; i < r->n_steps; i++) {
        if (!step_reads_text(r, &r->steps[i], gt->text)) continue;
        if (found >= 0)
            return fail_at(p, pos, "gate: steps '%s' and '%s' both evaluate text '%s'; say which with step:",
                           r->steps[found].name, r->steps[i].name, tn);
        found = (int)i;
    }
    if (found < 0)
        return fail_at(p, pos, "gate: no eval step evaluates text '%s' (give one text: ${texts.%s})", tn, tn);
    gt->step = found;
    return 0;
}

static int parse_texts(parser *p, recipe *r, const ynode *m, int check_files) {
    if (m->kind != Y_MAP) return fail_at(p, m->pos, "texts expects a mapping of NAME: file, got %s", kind_name(m));
    if (!(r->texts = calloc(m->n / 2 + 1, sizeof *r->texts))) return fail_at(p, m->pos, "out of memory");
    for (size_t k = 0; k < m->n; k += 2) {
        const ynode *key = m->kids[k], *val = m->kids[k + 1];
        if (!*key->s || strspn(key->s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") != strlen(key->s))
            return fail_at(p, key->pos, "text name '%s' may hold only letters, digits, '-' and '_'", key->s);
        if (want_scalar(p, val, "texts")) return -1;
        if (strstr(val->s, "${")) return fail_at(p, val->pos, "texts: %s must be a file, not a reference", key->s);
        recipe_text *t = &r->texts[r->n_texts++];
        t->pos = val->pos;
        if (!(t->name = strdup(key->s)) || !(t->path = resolve(r, val->s))) return fail_at(p, val->pos, "out of memory");
        if (check_files && !exists(t->path)) return fail_at(p, val->pos, "texts: %s: %s does not exist", key->s, t->path);
    }
    return 0;
}

static int parse_gates(parser *p, recipe *r, const ynode *seq) {
    if (seq->kind != Y_SEQ) return fail_at(p, seq->pos, "gates expects a list, got %s", kind_name(seq));
    if (!(r->gates = calloc(seq->n + 1, sizeof *r->gates))) return fail_at(p, seq->pos, "out of memory");
    static const char *const keys[] = {"metric", "step", "text", "min", "max"};
    int last_eval = -1;
    for (size_t i = 0; i < r->n_steps; i++)
        if (!strcmp(r->steps[i].verb->name, "eval")) last_eval = (int)i;
    for (size_t i = 0; i < seq->n; i++) {
        const ynode *g = seq->kids[i];
        recipe_gate *gt = &r->gates[r->n_gates++];
        gt->pos = g->pos;
        gt->step = last_eval;
        gt->text = -1;
        gt->metric = GATE_COUNT;
        int has_step = 0;
        recipe_pos text_pos = g->pos;
        if (g->kind != Y_MAP) return fail_at(p, g->pos, "a gate is a mapping (metric:, min: or max:), got %s", kind_name(g));
        for (size_t k = 0; k < g->n; k += 2) {
            const ynode *key = g->kids[k], *val = g->kids[k + 1];
            if (!strcmp(key->s, "metric")) {
                if (want_scalar(p, val, "metric")) return -1;
                for (int m = 0; m < GATE_COUNT; m++)
                    if (!strcmp(val->s, metric_names[m])) gt->metric = (recipe_metric)m;
                if (gt->metric == GATE_COUNT) {
                    const char *near = nearest(val->s, metric_names, GATE_COUNT);
                    if (near) return fail_at(p, val->pos, "unknown metric '%s'; did you mean '%s'?", val->s, near);
                    return fail_at(p, val->pos, "unknown metric '%s' (perplexity, perplexity_ratio, kl, top1, size_mib, "
                                                "bits_per_weight, tokens_per_s)", val->s);
                }
            } else if (!strcmp(key->s, "step")) {
                if (want_scalar(p, val, "step")) return -1;
                gt->step = recipe_step_find(r, val->s);
                has_step = 1;
                if (gt->step < 0) return fail_at(p, val->pos, "gate: no step named '%s'", val->s);
                if (strcmp(r->steps[gt->step].verb->name, "eval"))
                    return fail_at(p, val->pos, "gate: step '%s' is a %s step; gates read eval steps", val->s,
                                   r->steps[gt->step].verb->name);
            } else if (!strcmp(key->s, "min")) {
                if (want_num(p, val, "min", &gt->min)) return -1;
                gt->has_min = 1;
            } else if (!strcmp(key->s, "max")) {
                if (want_num(p, val, "max", &gt->max)) return -1;
                gt->has_max = 1;
            } else if (!strcmp(key->s, "text")) {
                if (want_scalar(p, val, "text")) return -1;
                gt->text = recipe_text_find(r, val->s);
                text_pos = val->pos;
                if (gt->text < 0) {
                    const char **names = calloc(r->n_texts + 1, sizeof *names);
                    for (size_t t = 0; names && t < r->n_texts; t++) names[t] = r->texts[t].name;
                    const char *near = names ? nearest(val->s, names, r->n_texts) : NULL;
                    int rc = near ? fail_at(p, val->pos, "gate: no text named '%s' under texts:; did you mean '%s'?",
                                            val->s, near)
                                  : fail_at(p, val->pos, "gate: no text named '%s' under texts:", val->s);
                    free(names);
                    return rc;
                }
            } else {
                return unknown_key(p, key, "a gate", keys, 5);
            }
        }
        if (gt->text >= 0 && pick_text_step(p, r, gt, has_step, text_pos)) return -1;
        if (gt->metric == GATE_COUNT) return fail_at(p, g->pos, "a gate needs metric:");
        if (!gt->has_min && !gt->has_max) return fail_at(p, g->pos, "gate %s needs min: or max:", metric_names[gt->metric]);
        if (gt->has_min && gt->has_max && gt->min > gt->max)
            return fail_at(p, g->pos, "gate %s: min %g is above max %g", metric_names[gt->metric], gt->min, gt->max);
        if (gt->step < 0) return fail_at(p, g->pos, "gate %s: the recipe has no eval step to read", metric_names[gt->metric]);
        const recipe_step *es = &r->steps[gt->step];
        if ((gt->metric == GATE_PERPLEXITY_RATIO || gt->metric == GATE_KL || gt->metric == GATE_TOP1) && !has_key(es, "ref"))
            return fail_at(p, g->pos, "gate %s compares with a reference: give step '%s' a ref: (e.g. ref: ${model})",
                           metric_names[gt->metric], es->name);
    }
    return 0;
}

static int parse_calibration(parser *p, recipe *r, const ynode *m, int check_files) {
    static const char *const keys[] = {"text", "tokens"};
    if (m->kind != Y_MAP) return fail_at(p, m->pos, "calibration expects a mapping (text:, tokens:), got %s", kind_name(m));
    for (size_t k = 0; k < m->n; k += 2) {
        const ynode *key = m->kids[k], *val = m->kids[k + 1];
        if (!strcmp(key->s, "text")) {
            if (want_scalar(p, val, "calibration: text")) return -1;
            if (strstr(val->s, "${")) return fail_at(p, val->pos, "calibration: text must be a file, not a reference");
            if (!(r->calib_text = resolve(r, val->s))) return fail_at(p, val->pos, "out of memory");
            if (check_files && !exists(r->calib_text))
                return fail_at(p, val->pos, "calibration: text %s does not exist", r->calib_text);
        } else if (!strcmp(key->s, "tokens")) {
            long t;
            if (want_int(p, val, "calibration: tokens", 256, 1L << 26, &t)) return -1;
            r->calib_tokens = (int)t;
        } else if (!strcmp(key->s, "seed")) {
            return fail_at(p, key->pos, "calibration: seed is not supported: windows are taken in order from the "
                                        "start of the text");
        } else {
            return unknown_key(p, key, "calibration", keys, 2);
        }
    }
    return 0;
}

static int parse_root(parser *p, recipe *r, const ynode *root, int check_files) {
    static const char *const keys[] = {"version", "name", "description", "model", "calibration", "texts", "steps", "gates"};
    const recipe_pos top = {1, 1};
    if (!root || (root->kind == Y_SCALAR && !*root->s)) return fail_at(p, top, "empty recipe (see docs/recipes.md)");
    if (root->kind != Y_MAP) return fail_at(p, root->pos, "a recipe is a mapping (version:, model:, steps:...), got %s", kind_name(root));
    const ynode *steps = NULL, *gates = NULL, *calib = NULL, *texts = NULL;
    for (size_t k = 0; k < root->n; k += 2) {
        const ynode *key = root->kids[k], *val = root->kids[k + 1];
        if (!strcmp(key->s, "version")) {
            long v;
            if (want_int(p, val, "version", 0, 1000000, &v)) return -1;
            if (v != RECIPE_VERSION)
                return fail_at(p, val->pos, "recipe version %ld is not supported (this moetool reads version %d)", v, RECIPE_VERSION);
            r->version = (int)v;
        } else if (!strcmp(key->s, "name") || !strcmp(key->s, "description")) {
            if (want_scalar(p, val, key->s)) return -1;
        } else if (!strcmp(key->s, "model")) {
            if (want_scalar(p, val, "model")) return -1;
            if (strstr(val->s, "${")) return fail_at(p, val->pos, "model: the base model is a path, not a reference");
            if (!(r->model = resolve(r, val->s))) return fail_at(p, val->pos, "out of memory");
            r->model_pos = val->pos;
            if (check_files && !exists(r->model)) return fail_at(p, val->pos, "model %s does not exist", r->model);
        } else if (!strcmp(key->s, "calibration")) {
            calib = val;
        } else if (!strcmp(key->s, "texts")) {
            texts = val;
        } else if (!strcmp(key->s, "steps")) {
            steps = val;
        } else if (!strcmp(key->s, "gates")) {
            gates = val;
        } else {
            return unknown_key(p, key, "the recipe", keys, sizeof keys / sizeof keys[0]);
        }
    }
    if (!r->version) return fail_at(p, root->pos, "missing version: %d (the recipe schema version)", RECIPE_VERSION);
    if (!r->model) return fail_at(p, root->pos, "missing model: (the base model's path)");
    if (calib && parse_calibration(p, r, calib, check_files)) return -1;
    if (texts && parse_texts(p, r, texts, check_files)) return -1;
    if (!steps) return fail_at(p, root->pos, "missing steps:");
    if (parse_steps(p, r, steps, check_files) || order_steps(p, r)) return -1;
    if (calib) {
        int used = 0;
        for (size_t i = 0; i < r->n_steps; i++) used |= cli_opts_find(r->steps[i].verb, "calib") != NULL;
        if (!used) return fail_at(p, calib->pos, "calibration: no step calibrates (merge or quantize would)");
    }
    if (gates && parse_gates(p, r, gates)) return -1;
    return 0;
}

int recipe_text_find(const recipe *r, const char *name) {
    for (size_t i = 0; i < r->n_texts; i++)
        if (!strcmp(r->texts[i].name, name)) return (int)i;
    return -1;
}

int recipe_parse(recipe **out, const char *path, const char *data, size_t len, int check_files, char *err, size_t errn) {
    *out = NULL;
    parser p = {.path = path, .err = err, .errn = errn};
    recipe *r = calloc(1, sizeof *r);
    if (!r) return snprintf(err, errn, "%s: out of memory", path), -1;
    r->path = strdup(path);
    const char *sl = strrchr(path, '/');
    r->dir = sl ? strndup(path, (size_t)(sl - path) + (sl == path)) : strdup(".");
    if (!r->path || !r->dir) {
        recipe_free(r);
        return snprintf(err, errn, "%s: out of memory", path), -1;
    }
    ynode *root = NULL;
    int rc = len > RECIPE_MAX_BYTES ? fail_at(&p, (recipe_pos){1, 1}, "%zu bytes is larger than a recipe may be (%u)", len,
                                              RECIPE_MAX_BYTES)
                                    : build_tree(&p, data, len, &root);
    if (rc == 0) rc = parse_root(&p, r, root, check_files);
    free_tree(&p);
    if (rc) {
        recipe_free(r);
        return -1;
    }
    *out = r;
    return 0;
}

int recipe_load(recipe **out, const char *path, int check_files, char *err, size_t errn) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return snprintf(err, errn, "%s: %s", path, strerror(errno)), -1;
    char *buf = malloc(RECIPE_MAX_BYTES + 1);
    size_t n = buf ? fread(buf, 1, RECIPE_MAX_BYTES + 1, f) : 0;
    const int bad = !buf || ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return snprintf(err, errn, "%s: cannot read the file", path), -1;
    }
    int rc = recipe_parse(out, path, buf, n, check_files, err, errn);
    free(buf);
    return rc;
}

void recipe_free(recipe *r) {
    if (!r) return;
    for (size_t i = 0; i < r->n_steps; i++) {
        recipe_step *s = &r->steps[i];
        free(s->name);
        free(s->model);
        for (size_t k = 0; k < s->n_kv; k++) free(s->kv[k].value);
        free(s->kv);
        free(s->deps);
    }
    free(r->steps);
    free(r->order);
    free(r->gates);
    for (size_t i = 0; r->texts && i < r->n_texts; i++) {
        free(r->texts[i].name);
        free(r->texts[i].path);
    }
    free(r->texts);
    free(r->calib_text);
    free(r->model);
    free(r->path);
    free(r->dir);
    free(r);
}

char *recipe_expand(const recipe *r, const char *s, char *const *outputs, const char *model) {
    size_t cap = strlen(s) + 1, n = 0;
    char *o = malloc(cap);
    if (!o) return NULL;
    for (const char *c = s; *c;) {
        const char *add = NULL;
        size_t alen = 0, skip = 1;
        char name[128];
        const char *e = !strncmp(c, "${", 2) ? strchr(c, '}') : NULL;
        if (e && (size_t)(e - c - 2) < sizeof name) {
            memcpy(name, c + 2, (size_t)(e - c - 2));
            name[e - c - 2] = 0;
            char *dot = strrchr(name, '.');
            if (!strcmp(name, "model")) add = model ? model : r->model;
            else if (!strncmp(name, "texts.", 6)) {
                const int t = recipe_text_find(r, name + 6);
                add = t >= 0 ? r->texts[t].path : NULL;
            } else if (dot && !strcmp(dot + 1, "output")) {
                *dot = 0;
                int t = recipe_step_find(r, name);
                add = t >= 0 && outputs ? outputs[t] : NULL;
            }
            if (add) skip = (size_t)(e - c) + 1;
        }
        if (!add) add = c, alen = 1;
        else alen = strlen(add);
        if (n + alen + 1 > cap) {
            cap = 2 * (n + alen + 1);
            char *no = realloc(o, cap);
            if (!no) {
                free(o);
                return NULL;
            }
            o = no;
        }
        memcpy(o + n, add, alen);
        n += alen;
        c += skip;
    }
    o[n] = 0;
    return o;
}
