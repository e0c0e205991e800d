/* provenance.c — what a verb did, recorded in what it wrote: a "moetool"
 * object in config.json ({"version", "verb", "source", "options",
 * "command"}), the same JSON as the GGUF string key moetool.provenance, and
 * a short README.md model card (front matter for the Hugging Face Hub, the
 * options as a table, notes such as which tools load the output). No time
 * stamps: the same run writes the same bytes. */
#include "io_impl.h"
#include "tokenizer_impl.h"
#include "moetool/mt_write.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

struct mt_prov {
    json_t *root, *options;
    char **notes;
    size_t n_notes;
    char **tags;
    size_t n_tags;
};

mt_prov *mt_prov_new(const char *verb, const char *source) {
    mt_prov *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->root = json_object();
    p->options = json_object();
    if (!p->root || !p->options) {
        mt_prov_free(p);
        return NULL;
    }
    json_object_set_new(p->root, "version", json_string(MT_VERSION));
    json_object_set_new(p->root, "verb", json_string(verb ? verb : "?"));
    if (source) json_object_set_new(p->root, "source", json_string(source));
    return p;
}

void mt_prov_free(mt_prov *p) {
    if (!p) return;
    json_decref(p->root);
    json_decref(p->options);
    for (size_t i = 0; i < p->n_notes; i++) free(p->notes[i]);
    for (size_t i = 0; i < p->n_tags; i++) free(p->tags[i]);
    free(p->notes);
    free(p->tags);
    free(p);
}

/* Strings from paths and argv may hold any bytes: invalid UTF-8 becomes
 * U+FFFD so that the JSON stays valid. */
static json_t *jstr(const char *s) {
    json_t *j = json_string(s);
    if (j) return j;
    size_t n = strlen(s);
    char *o = malloc(3 * n + 1);
    if (!o) return json_string("?");
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        int len = mt_utf8_decode((const unsigned char *)s + i, n - i, &cp);
        if (len <= 0) {
            memcpy(o + k, "\xef\xbf\xbd", 3);
            k += 3;
            i++;
        } else {
            memcpy(o + k, s + i, (size_t)len);
            k += (size_t)len;
            i += (size_t)len;
        }
    }
    o[k] = 0;
    j = json_string(o);
    free(o);
    return j ? j : json_string("?");
}

void mt_prov_str(mt_prov *p, const char *key, const char *val) {
    if (p && key && val) json_object_set_new(p->options, key, jstr(val));
}
void mt_prov_int(mt_prov *p, const char *key, long long val) {
    if (p && key) json_object_set_new(p->options, key, json_integer(val));
}
void mt_prov_num(mt_prov *p, const char *key, double val) {
    if (p && key) json_object_set_new(p->options, key, json_real(val));
}
void mt_prov_command(mt_prov *p, const char *command) {
    if (p && command) json_object_set_new(p->root, "command", jstr(command));
}

static int push(char ***arr, size_t *n, const char *s) {
    char **g = realloc(*arr, (*n + 1) * sizeof **arr);
    if (!g) return -1;
    *arr = g;
    if (!(g[*n] = strdup(s))) return -1;
    (*n)++;
    return 0;
}
void mt_prov_note(mt_prov *p, const char *text) {
    if (p && text) push(&p->notes, &p->n_notes, text);
}
void mt_prov_tag(mt_prov *p, const char *tag) {
    if (p && tag) push(&p->tags, &p->n_tags, tag);
}

static json_t *full(const mt_prov *p) {
    json_t *j = json_deep_copy(p->root);
    if (j) json_object_set(j, "options", p->options);
    return j;
}

char *mt_prov_json(const mt_prov *p) {
    if (!p) return NULL;
    json_t *j = full(p);
    char *s = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(j);
    return s;
}

int mt_prov_config(const mt_prov *p, char **config_text) {
    if (!p || !config_text || !*config_text) return mt_seterr(MT_ERR_ARG, "mt_prov_config: NULL argument");
    json_error_t err;
    json_t *c = json_loads(*config_text, 0, &err);
    if (!c || !json_is_object(c)) {
        json_decref(c);
        return mt_seterr(MT_ERR_FORMAT, "config.json to annotate does not parse: %s", err.text);
    }
    json_t *j = full(p);
    if (!j) {
        json_decref(c);
        return mt_seterr(MT_ERR_NOMEM, "out of memory");
    }
    json_object_set_new(c, "moetool", j);
    char *s = json_dumps(c, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(c);
    if (!s) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    size_t n = strlen(s);
    char *t = realloc(s, n + 2);
    if (!t) {
        free(s);
        return mt_seterr(MT_ERR_NOMEM, "out of memory");
    }
    t[n] = '\n';
    t[n + 1] = 0;
    free(*config_text);
    *config_text = t;
    return MT_OK;
}

typedef struct {
    char *p;
    size_t n, cap;
    int oom;
} sbuf;

static void sput(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 1024;
        while (c < b->n + n + 1) c *= 2;
        char *g = realloc(b->p, c);
        if (!g) {
            b->oom = 1;
            return;
        }
        b->p = g;
        b->cap = c;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}
static void sputs(sbuf *b, const char *s) { sput(b, s, strlen(s)); }
/* Markdown table cells and code spans: '|' and '`' and newlines would break
 * the layout; they are written as their escapes or spaces. */
static void sput_cell(sbuf *b, const char *s) {
    for (; *s; s++) {
        if (*s == '|') sputs(b, "\\|");
        else if (*s == '`') sputs(b, "'");
        else if (*s == '\n' || *s == '\r') sputs(b, " ");
        else sput(b, s, 1);
    }
}

int mt_prov_write_card(const mt_prov *p, const char *dir, const char *title) {
    if (!p || !dir) return mt_seterr(MT_ERR_ARG, "mt_prov_write_card: NULL argument");
    sbuf b = {0};
    sputs(&b, "---\nlibrary_name: transformers\ntags:\n- moetool\n");
    for (size_t i = 0; i < p->n_tags; i++) {
        sputs(&b, "- ");
        sput_cell(&b, p->tags[i]);
        sputs(&b, "\n");
    }
    sputs(&b, "---\n\n# ");
    sput_cell(&b, title && *title ? title : "model");
    sputs(&b, "\n\nWritten by moetool " MT_VERSION " `");
    sput_cell(&b, json_string_value(json_object_get(p->root, "verb")));
    sputs(&b, "`");
    const char *src = json_string_value(json_object_get(p->root, "source"));
    if (src) {
        sputs(&b, " from `");
        sput_cell(&b, src);
        sputs(&b, "`");
    }
    sputs(&b, ". The same record is in config.json under `moetool`.\n\n| option | value |\n|---|---|\n");
    const char *key;
    json_t *v;
    json_object_foreach(p->options, key, v) {
        char num[64];
        const char *s = num;
        if (json_is_string(v)) s = json_string_value(v);
        else if (json_is_integer(v)) snprintf(num, sizeof num, "%lld", (long long)json_integer_value(v));
        else if (json_is_real(v)) snprintf(num, sizeof num, "%g", json_real_value(v));
        else s = "?";
        sputs(&b, "| ");
        sput_cell(&b, key);
        sputs(&b, " | ");
        sput_cell(&b, s);
        sputs(&b, " |\n");
    }
    const char *cmd = json_string_value(json_object_get(p->root, "command"));
    if (cmd) {
        sputs(&b, "\nCommand: `");
        sput_cell(&b, cmd);
        sputs(&b, "`\n");
    }
    for (size_t i = 0; i < p->n_notes; i++) {
        sputs(&b, "\n");
        sputs(&b, p->notes[i]);
        sputs(&b, "\n");
    }
    if (b.oom) {
        free(b.p);
        return mt_seterr(MT_ERR_NOMEM, "%s: out of memory writing README.md", dir);
    }
    int rc = mt_write_small_file(dir, "README.md", b.p, b.n);
    free(b.p);
    return rc;
}
