/* ckpt.c — one read-only view over any checkpoint we load: a Hugging Face
 * directory (config.json + model.safetensors, or shards listed in
 * model.safetensors.index.json), a single .safetensors file with config.json
 * beside it, or a GGUF file (llama.cpp's "llama" architecture, MoE or dense,
 * or another family's architecture: mt_arch.gguf_arch).
 * The format is detected by content: a directory is HF, a file starting with
 * "GGUF" is GGUF, a zip or a bare pickle is a PyTorch .bin (pytorch.c),
 * anything else is tried as safetensors. A directory without safetensors may
 * hold pytorch_model.bin or pytorch_model.bin.index.json (same layout as the
 * safetensors index) instead.
 *
 * model.safetensors.index.json layout (as transformers writes it):
 *   { "metadata": { "total_size": N, ... },
 *     "weight_map": { "<tensor name>": "<shard file name>", ... } }
 * Shard names are plain file names inside the directory ('/' and '..' are
 * refused); every listed shard must exist, every listed tensor must be in the
 * shard that the map names, and no tensor may appear in two shards.
 *
 * Every file stays mapped for the lifetime of the mt_ckpt; tensors point
 * into the mappings. */
#define _GNU_SOURCE
#include "ckpt_impl.h"
#include "moetool/mt_arch.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct mt_ckpt {
    mt_format fmt;
    char *path;                 /* as given by the caller                    */
    mt_config cfg;
    size_t n_shards;
    mt_safetensors **shards;    /* [n_shards] (HF, safetensors)              */
    mt_gguf *gguf;              /* GGUF only                                 */
    size_t n;                   /* tensors                                   */
    mt_tensor *tensors;         /* [n] shard by shard, each in file order    */
    size_t *by_name;            /* [n] indices sorted by name                */
    uint64_t file_bytes;
    mt_tokenizer_files tok;
    mt_archive *arc;            /* read from an archive: the files' bytes    */
    int raw_config;             /* mt_ckpt_open_raw: config.json kept as text */
    char *config_text;          /* ... here (NUL-terminated), cfg left zeroed */
    size_t config_len;
};

void mt_ckpt_free(mt_ckpt *ck) {
    if (!ck) return;
    mt_config_free(&ck->cfg);
    for (size_t i = 0; ck->shards && i < ck->n_shards; i++) mt_safetensors_free(ck->shards[i]);
    free(ck->shards);
    if (ck->gguf) mt_gguf_free(ck->gguf);
    free(ck->tensors);
    free(ck->by_name);
    free(ck->tok.spm_model_path);
    free(ck->tok.hf_json_path);
    free(ck->config_text);
    mt_archive_free(ck->arc);
    free(ck->path);
    free(ck);
}

int mt_ckpt_is_archive(const mt_ckpt *ck) { return ck && ck->arc; }

mt_format mt_ckpt_format(const mt_ckpt *ck) { return ck->fmt; }
const char *mt_ckpt_path(const mt_ckpt *ck) { return ck->path; }
const mt_config *mt_ckpt_config(const mt_ckpt *ck) { return &ck->cfg; }
size_t mt_ckpt_count(const mt_ckpt *ck) { return ck ? ck->n : 0; }
const mt_tensor *mt_ckpt_get(const mt_ckpt *ck, size_t i) { return (ck && i < ck->n) ? &ck->tensors[i] : NULL; }
uint64_t mt_ckpt_file_bytes(const mt_ckpt *ck) { return ck->file_bytes; }
const mt_tokenizer_files *mt_ckpt_tokenizer_files(const mt_ckpt *ck) { return &ck->tok; }
const mt_gguf *mt_ckpt_gguf(const mt_ckpt *ck) { return ck->gguf; }
const char *mt_ckpt_config_text(const mt_ckpt *ck, size_t *len) {
    if (len) *len = ck ? ck->config_len : 0;
    return ck ? ck->config_text : NULL;
}

/* Keeps config.json's bytes as text (raw mode). */
static int keep_config_text(mt_ckpt *ck, const void *data, size_t len) {
    if (!(ck->config_text = malloc(len + 1))) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    if (len) memcpy(ck->config_text, data, len);
    ck->config_text[len] = 0;
    ck->config_len = len;
    return MT_OK;
}

const mt_tensor *mt_ckpt_find(const mt_ckpt *ck, const char *name) {
    if (!ck || !name) return NULL;
    size_t lo = 0, hi = ck->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const mt_tensor *t = &ck->tensors[ck->by_name[mid]];
        int c = strcmp(t->name, name);
        if (c == 0) return t;
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

static uint64_t file_size(const char *path) {
    struct stat st;
    return (stat(path, &st) == 0 && S_ISREG(st.st_mode)) ? (uint64_t)st.st_size : 0;
}

typedef struct {
    const char *name;
    size_t idx;
} ck_named;

static int cmp_named(const void *a, const void *b) {
    const ck_named *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    if (c) return c;
    return x->idx < y->idx ? -1 : (x->idx > y->idx);
}

/* Builds the by-name index; a name seen twice is an error naming both files. */
static int build_index(mt_ckpt *ck, char *const *shard_names) {
    ck_named *v = calloc(ck->n ? ck->n : 1, sizeof *v);
    ck->by_name = calloc(ck->n ? ck->n : 1, sizeof *ck->by_name);
    if (!v || !ck->by_name) {
        free(v);
        return mt_seterr(MT_ERR_NOMEM, "%s: out of memory", ck->path);
    }
    for (size_t i = 0; i < ck->n; i++) {
        v[i].name = ck->tensors[i].name;
        v[i].idx = i;
    }
    qsort(v, ck->n, sizeof *v, cmp_named);
    for (size_t i = 0; i < ck->n; i++) {
        if (i && strcmp(v[i].name, v[i - 1].name) == 0) {
            const mt_tensor *a = &ck->tensors[v[i - 1].idx], *b = &ck->tensors[v[i].idx];
            int rc = mt_seterr(MT_ERR_FORMAT, "%s: tensor %s is in two shards (%s and %s)", ck->path, a->name,
                               shard_names ? shard_names[a->file_index] : "?",
                               shard_names ? shard_names[b->file_index] : "?");
            free(v);
            return rc;
        }
        ck->by_name[i] = v[i].idx;
    }
    free(v);
    return MT_OK;
}

/* Copies every shard's tensors into ck->tensors, tagging file_index. */
static int gather_shards(mt_ckpt *ck) {
    size_t n = 0;
    for (size_t s = 0; s < ck->n_shards; s++) n += mt_safetensors_count(ck->shards[s]);
    ck->tensors = calloc(n ? n : 1, sizeof *ck->tensors);
    if (!ck->tensors) return mt_seterr(MT_ERR_NOMEM, "%s: out of memory", ck->path);
    ck->n = 0;
    for (size_t s = 0; s < ck->n_shards; s++) {
        for (size_t i = 0; i < mt_safetensors_count(ck->shards[s]); i++) {
            mt_tensor t = *mt_safetensors_get(ck->shards[s], i);
            t.file_index = (int)s;
            ck->tensors[ck->n++] = t;
        }
    }
    return MT_OK;
}

/* tokenizer.model (Llama-style), else spiece.model (T5's name for the same
 * protobuf), else sentencepiece.bpe.model (fairseq's: NLLB), and
 * tokenizer.json. */
static int find_tokenizer_files(mt_ckpt *ck, const char *dir) {
    char *p = mt_path_join(dir, "tokenizer.model");
    char *q = mt_path_join(dir, "tokenizer.json");
    if (!p || !q) {
        free(p);
        free(q);
        return mt_seterr(MT_ERR_NOMEM, "out of memory");
    }
    static const char *const alt[] = {"spiece.model", "sentencepiece.bpe.model"};
    for (size_t i = 0; i < 2 && file_size(p) <= 0; i++) {
        free(p);
        if (!(p = mt_path_join(dir, alt[i]))) {
            free(q);
            return mt_seterr(MT_ERR_NOMEM, "out of memory");
        }
    }
    if (file_size(p) > 0) ck->tok.spm_model_path = p;
    else free(p);
    if (file_size(q) > 0) ck->tok.hf_json_path = q;
    else free(q);
    return MT_OK;
}

/* A shard name from the index must name a file inside the directory. */
static int shard_name_ok(const char *s) {
    if (!s[0] || strchr(s, '/') || strchr(s, '\\')) return 0;
    if (strcmp(s, ".") == 0 || strcmp(s, "..") == 0) return 0;
    return 1;
}

/* Opens one weights file: safetensors or a PyTorch zip. */
typedef int (*shard_open_fn)(mt_safetensors **out, const char *path);

/* Opens one weights file held in memory (a member of an archive). */
typedef int (*shard_parse_fn)(mt_safetensors **out, const void *buf, size_t len, const char *name_for_errors);

/* A member of the checkpoint's archive as a shard, named "ARCHIVE:NAME". */
static int open_member_shard(mt_ckpt *ck, mt_safetensors **out, const char *name, shard_parse_fn parse) {
    const mt_archive_member *m = mt_archive_get(ck->arc, name);
    if (!m) return mt_seterr(MT_ERR_NOT_FOUND, "%s: no %s in the archive", ck->path, name);
    char shown[4400];
    snprintf(shown, sizeof shown, "%s:%s", ck->path, name);
    int rc = parse(out, m->data, m->size, shown);
    if (rc == MT_OK) ck->file_bytes += m->size;
    return rc;
}

static int open_sharded(mt_ckpt *ck, const char *dir, const char *index_path, shard_open_fn open_shard) {
    mt_mapped m = {0};
    const void *idx_data;
    const mt_archive_member *im = ck->arc ? mt_archive_get(ck->arc, index_path) : NULL;
    const shard_parse_fn parse = open_shard == mt_pytorch_open ? mt_pytorch_parse : mt_safetensors_parse;
    int rc = MT_OK;
    size_t idx_size;
    if (im) {
        idx_data = im->data;
        idx_size = im->size;
    } else if ((rc = mt_map_file(&m, index_path))) {
        return rc;
    } else {
        idx_data = m.data;
        idx_size = m.size;
    }
    ck->file_bytes += idx_size;
    json_error_t jerr;
    json_t *root = json_loadb(idx_data ? (const char *)idx_data : "", idx_size, JSON_REJECT_DUPLICATES, &jerr);
    if (!im) mt_unmap_file(&m);
    if (!root)
        return mt_seterr(MT_ERR_FORMAT, "%s: invalid JSON at line %d column %d: %s", index_path, jerr.line,
                         jerr.column, jerr.text);
    char **names = NULL;   /* [n_names] distinct shard file names          */
    ck_named *ent = NULL;  /* [nk] (shard name, entry number), sorted      */
    size_t *shard_of = NULL; /* [nk] shard number of each weight_map entry */
    size_t nk = 0, n_names = 0;
    json_t *wm = json_is_object(root) ? json_object_get(root, "weight_map") : NULL;
    if (!json_is_object(wm)) {
        rc = mt_seterr(MT_ERR_FORMAT, "%s: missing \"weight_map\" object", index_path);
        goto done;
    }
    if (json_object_size(wm) == 0) {
        rc = mt_seterr(MT_ERR_FORMAT, "%s: \"weight_map\" is empty", index_path);
        goto done;
    }
    const char *key;
    json_t *val;
    /* Distinct shard names, in the order the map first mentions them, found by
     * sorting (n log n: an index may list hundreds of thousands of names). */
    nk = json_object_size(wm);
    ent = calloc(nk, sizeof *ent);
    shard_of = calloc(nk, sizeof *shard_of);
    names = calloc(nk, sizeof *names);
    if (!ent || !shard_of || !names) {
        rc = mt_seterr(MT_ERR_NOMEM, "out of memory");
        goto done;
    }
    size_t i = 0;
    json_object_foreach(wm, key, val) {
        if (!json_is_string(val)) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s: weight_map entry for %s is not a file name", index_path, key);
            goto done;
        }
        const char *s = json_string_value(val);
        if (!shard_name_ok(s)) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s: shard name \"%s\" (tensor %s) is not a file in the directory",
                           index_path, s, key);
            goto done;
        }
        ent[i].name = s;
        ent[i].idx = i;
        i++;
    }
    qsort(ent, nk, sizeof *ent, cmp_named); /* by name, then by first mention */
    for (size_t a = 0, b; a < nk; a = b) /* each entry -> its name's first mention */
        for (b = a; b < nk && strcmp(ent[b].name, ent[a].name) == 0; b++) shard_of[ent[b].idx] = ent[a].idx;
    for (size_t k = 0; k < nk; k++) /* shard numbers in order of first mention */
        shard_of[k] = shard_of[k] == k ? n_names++ : shard_of[shard_of[k]];
    i = 0;
    json_object_foreach(wm, key, val) names[shard_of[i++]] = (char *)json_string_value(val);
    ck->shards = calloc(n_names, sizeof *ck->shards);
    if (!ck->shards) {
        rc = mt_seterr(MT_ERR_NOMEM, "out of memory");
        goto done;
    }
    ck->n_shards = n_names;
    for (size_t k = 0; k < ck->n_shards; k++) {
        if (ck->arc) {
            if ((rc = open_member_shard(ck, &ck->shards[k], names[k], parse))) goto done;
            continue;
        }
        char *p = mt_path_join(dir, names[k]);
        if (!p) {
            rc = mt_seterr(MT_ERR_NOMEM, "out of memory");
            goto done;
        }
        if (!mt_path_exists(p)) {
            rc = mt_seterr(MT_ERR_NOT_FOUND, "%s: shard %s listed in the index does not exist", index_path, p);
            free(p);
            goto done;
        }
        rc = open_shard(&ck->shards[k], p);
        if (rc == MT_OK) ck->file_bytes += mt_safetensors_file_size(ck->shards[k]);
        free(p);
        if (rc) goto done;
    }
    /* Every listed tensor is in the shard the map names. */
    i = 0;
    json_object_foreach(wm, key, val) {
        size_t k = shard_of[i++];
        if (!mt_safetensors_find(ck->shards[k], key)) {
            rc = mt_seterr(MT_ERR_FORMAT, "%s: tensor %s is listed in shard %s, which does not contain it",
                           index_path, key, names[k]);
            goto done;
        }
    }
    rc = gather_shards(ck);
    if (rc == MT_OK) rc = build_index(ck, names);

done:
    free(names);
    free(ent);
    free(shard_of);
    json_decref(root);
    return rc;
}

static int open_single(mt_ckpt *ck, const char *st_path, shard_open_fn open_shard) {
    ck->shards = calloc(1, sizeof *ck->shards);
    if (!ck->shards) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    int rc = open_shard(&ck->shards[0], st_path);
    if (rc) return rc;
    ck->n_shards = 1;
    ck->file_bytes += mt_safetensors_file_size(ck->shards[0]);
    rc = gather_shards(ck);
    if (rc == MT_OK) rc = build_index(ck, NULL);
    return rc;
}

static int open_archive_single(mt_ckpt *ck, const char *name, shard_parse_fn parse) {
    ck->shards = calloc(1, sizeof *ck->shards);
    if (!ck->shards) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    int rc = open_member_shard(ck, &ck->shards[0], name, parse);
    if (rc) return rc;
    ck->n_shards = 1;
    rc = gather_shards(ck);
    if (rc == MT_OK) rc = build_index(ck, NULL);
    return rc;
}

static int load_config_in(mt_ckpt *ck, const char *dir, const char *for_what) {
    char *cp = mt_path_join(dir, "config.json");
    if (!cp) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    int rc;
    if (!mt_path_exists(cp)) {
        rc = mt_seterr(MT_ERR_NOT_FOUND, "%s: needs %s beside it for the model configuration", for_what, cp);
    } else if (ck->raw_config) {
        mt_mapped m;
        if ((rc = mt_map_file(&m, cp)) == MT_OK) {
            rc = keep_config_text(ck, m.data, m.size);
            mt_unmap_file(&m);
        }
    } else {
        rc = mt_config_load_hf(&ck->cfg, cp);
    }
    if (rc == MT_OK) ck->file_bytes += file_size(cp);
    free(cp);
    return rc;
}

static int open_hf_dir(mt_ckpt *ck, const char *dir) {
    int rc = load_config_in(ck, dir, dir);
    if (rc) return rc;
    char *idx = mt_path_join(dir, "model.safetensors.index.json");
    char *one = mt_path_join(dir, "model.safetensors");
    char *pt_idx = mt_path_join(dir, "pytorch_model.bin.index.json");
    char *pt_one = mt_path_join(dir, "pytorch_model.bin");
    if (!idx || !one || !pt_idx || !pt_one) rc = mt_seterr(MT_ERR_NOMEM, "out of memory");
    else if (mt_path_exists(idx)) rc = open_sharded(ck, dir, idx, mt_safetensors_open);
    else if (mt_path_exists(one)) rc = open_single(ck, one, mt_safetensors_open);
    else if (mt_path_exists(pt_idx)) rc = open_sharded(ck, dir, pt_idx, mt_pytorch_open);
    else if (mt_path_exists(pt_one)) rc = open_single(ck, pt_one, mt_pytorch_open);
    else
        rc = mt_seterr(MT_ERR_NOT_FOUND,
                       "%s: no model.safetensors, model.safetensors.index.json, pytorch_model.bin or "
                       "pytorch_model.bin.index.json in the directory",
                       dir);
    free(idx);
    free(one);
    free(pt_idx);
    free(pt_one);
    if (rc == MT_OK) rc = find_tokenizer_files(ck, dir);
    return rc;
}

/* ---- GGUF -------------------------------------------------------------- */

/* Optional integer key; *present tells whether it was there. */
static int gguf_int(const mt_gguf *g, const char *path, const char *key, int required, int64_t def, int *out) {
    int64_t v = def;
    if (mt_gguf_find_key(g, key) < 0) {
        if (required) return mt_seterr(MT_ERR_FORMAT, "%s: missing required key %s", path, key);
    } else {
        /* Hyperparameters are integers: a BOOL or float here is a broken file,
         * not a value to round. */
        mt_gguf_type ty = mt_gguf_key_type(g, mt_gguf_find_key(g, key));
        if (ty == MT_GGUF_BOOL || ty == MT_GGUF_FLOAT32 || ty == MT_GGUF_FLOAT64)
            return mt_seterr(MT_ERR_FORMAT, "%s: key %s is stored as %s, not as an integer", path, key,
                             ty == MT_GGUF_BOOL ? "BOOL" : ty == MT_GGUF_FLOAT32 ? "FLOAT32" : "FLOAT64");
        if (mt_gguf_get_i64(g, key, &v) != MT_OK)
            return mt_seterr(MT_ERR_FORMAT, "%s: key %s is not an integer", path, key);
    }
    if (v < INT32_MIN || v > INT32_MAX)
        return mt_seterr(MT_ERR_FORMAT, "%s: key %s = %lld out of range", path, key, (long long)v);
    *out = (int)v;
    return MT_OK;
}

static int gguf_float(const mt_gguf *g, const char *path, const char *key, int required, double def, float *out) {
    double v = def;
    if (mt_gguf_find_key(g, key) < 0) {
        if (required) return mt_seterr(MT_ERR_FORMAT, "%s: missing required key %s", path, key);
    } else if (mt_gguf_get_f64(g, key, &v) != MT_OK) {
        return mt_seterr(MT_ERR_FORMAT, "%s: key %s is not a number", path, key);
    }
    *out = (float)v;
    return MT_OK;
}

/* GGUF keys "<arch>.<suffix>" of the file's architecture. */
#define AK(suffix) (snprintf(key, sizeof key, "%s.%s", ga, suffix), key)

static int gguf_config(mt_config *c, const mt_gguf *g, const char *path) {
    memset(c, 0, sizeof *c);
    const char *arch;
    uint64_t alen;
    if (mt_gguf_find_key(g, "general.architecture") < 0)
        return mt_seterr(MT_ERR_FORMAT, "%s: missing required key general.architecture", path);
    if (mt_gguf_get_str(g, "general.architecture", &arch, &alen) != MT_OK)
        return mt_seterr(MT_ERR_FORMAT, "%s: general.architecture is not a string", path);
    char ga[32], key[96];
    snprintf(ga, sizeof ga, "%.*s", (int)(alen < sizeof ga ? alen : 0), arch);
    const mt_arch *fam = mt_arch_find_gguf(ga);
    if (mt_arch_refusal(NULL, ga)) return mt_seterr(MT_ERR_UNSUPPORTED, "%s: %s", path, mt_arch_refusal(NULL, ga));
    if (!fam || alen >= sizeof ga)
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: unsupported GGUF architecture %.*s", path,
                         (int)(alen > 64 ? 64 : alen), arch);
    int rc;
    if ((rc = gguf_int(g, path, AK("block_count"), 1, 0, &c->n_layers))) return rc;
    if ((rc = gguf_int(g, path, AK("embedding_length"), 1, 0, &c->hidden))) return rc;
    if ((rc = gguf_int(g, path, AK("feed_forward_length"), 1, 0, &c->ffn))) return rc;
    if ((rc = gguf_int(g, path, AK("attention.head_count"), 1, 0, &c->n_heads))) return rc;
    if ((rc = gguf_int(g, path, AK("attention.head_count_kv"), 0, c->n_heads, &c->n_kv_heads))) return rc;
    if (c->n_heads <= 0) return mt_seterr(MT_ERR_FORMAT, "%s: %s is %d", path, AK("attention.head_count"), c->n_heads);
    if ((rc = gguf_int(g, path, AK("attention.key_length"), 0, c->hidden / c->n_heads, &c->head_dim))) return rc;
    if ((rc = gguf_float(g, path, AK("rope.freq_base"), 0, 10000.0, &c->rope_theta))) return rc;
    if ((rc = gguf_float(g, path, AK("attention.layer_norm_rms_epsilon"), 0, 1e-5, &c->norm_eps))) return rc;
    if ((rc = gguf_int(g, path, AK("expert_count"), 0, 0, &c->n_experts))) return rc;
    if (c->n_experts > 0) {
        if ((rc = gguf_int(g, path, AK("expert_used_count"), 1, 0, &c->top_k))) return rc;
    }
    if (fam->hf_key_expert_ffn) { /* feed_forward_length sizes dense MLPs, experts have their own */
        c->ffn_dense = c->ffn;
        if ((rc = gguf_int(g, path, AK("expert_feed_forward_length"), 1, 0, &c->ffn))) return rc;
    }
    if (fam->n_shared_experts > 0 && c->n_experts > 0 &&
        (rc = gguf_int(g, path, AK("expert_shared_feed_forward_length"), 1, 0, &c->ffn_shared)))
        return rc;
    if (mt_gguf_find_key(g, AK("expert_weights_norm")) >= 0) {
        int64_t v = 0;
        if (mt_gguf_key_type(g, mt_gguf_find_key(g, key)) != MT_GGUF_BOOL || mt_gguf_get_i64(g, key, &v) != MT_OK)
            return mt_seterr(MT_ERR_FORMAT, "%s: key %s is not a BOOL", path, key);
        c->topk_norm = v ? MT_TOPK_NORM_ON : MT_TOPK_NORM_OFF;
    }
    if ((rc = gguf_int(g, path, AK("context_length"), 0, 4096, &c->max_pos))) return rc;
    /* GGUF "llama" is the Llama-style family: Mixtral with experts, else Llama */
    if (!strcmp(fam->gguf_arch, "llama")) fam = mt_arch_get(c->n_experts > 0 ? "mixtral" : "llama");
    char emb_name[64], head_name[64];
    mt_arch_name(emb_name, sizeof emb_name, mt_arch_tensor_of(fam, MT_ROLE_TOK_EMBD), MT_FMT_GGUF, -1, -1);
    mt_arch_name(head_name, sizeof head_name, mt_arch_tensor_of(fam, MT_ROLE_LM_HEAD), MT_FMT_GGUF, -1, -1);
    const mt_tensor *emb = mt_gguf_find_tensor(g, emb_name);
    if (!emb || emb->n_dims != 2) return mt_seterr(MT_ERR_FORMAT, "%s: no 2-D tensor %s", path, emb_name);
    int64_t vdef = emb->shape[0];
    if (vdef > INT32_MAX) vdef = INT32_MAX;
    if ((rc = gguf_int(g, path, AK("vocab_size"), 0, vdef, &c->vocab))) return rc;
    if ((rc = gguf_int(g, path, "tokenizer.ggml.bos_token_id", 0, -1, &c->bos_id))) return rc;
    if ((rc = gguf_int(g, path, "tokenizer.ggml.eos_token_id", 0, -1, &c->eos_id))) return rc;
    if (mt_gguf_find_key(g, "moetool.layer_experts") >= 0) {
        mt_gguf_type et;
        uint64_t n;
        const void *data;
        if (mt_gguf_get_arr(g, "moetool.layer_experts", &et, &n) != MT_OK ||
            (et != MT_GGUF_UINT32 && et != MT_GGUF_INT32) || mt_gguf_arr_data(g, "moetool.layer_experts", &data) != MT_OK)
            return mt_seterr(MT_ERR_FORMAT, "%s: moetool.layer_experts is not an array of u32", path);
        if (c->n_experts <= 0)
            return mt_seterr(MT_ERR_FORMAT, "%s: moetool.layer_experts in a dense model", path);
        if (c->n_layers <= 0 || c->n_layers > MT_MAX_LAYERS || n != (uint64_t)c->n_layers)
            return mt_seterr(MT_ERR_FORMAT, "%s: moetool.layer_experts has %llu entries for %d layers", path,
                             (unsigned long long)n, c->n_layers);
        const uint8_t *b = data;
        for (int l = 0; l < c->n_layers; l++) {
            uint32_t k = (uint32_t)b[4 * l] | (uint32_t)b[4 * l + 1] << 8 | (uint32_t)b[4 * l + 2] << 16 |
                         (uint32_t)b[4 * l + 3] << 24;
            if (k > (1u << 16))
                return mt_seterr(MT_ERR_FORMAT, "%s: moetool.layer_experts[%d] = %u out of range", path, l, k);
            if ((rc = mt_config_set_layer_experts(c, l, (int)k == c->n_experts ? 0 : (int)k))) return rc;
        }
    }
    snprintf(c->arch, sizeof c->arch, "%s", fam->name);
    c->tie_embeddings = mt_gguf_find_tensor(g, head_name) == NULL;
    c->rope_style = (int)fam->gguf_rope;
    return mt_config_validate(c, path);
}
#undef AK

static int open_gguf(mt_ckpt *ck, const char *path) {
    int rc = mt_gguf_open(&ck->gguf, path);
    if (rc) return rc;
    ck->file_bytes = file_size(path);
    rc = gguf_config(&ck->cfg, ck->gguf, path);
    if (rc) return rc;
    size_t n = mt_gguf_tensor_count(ck->gguf);
    ck->tensors = calloc(n ? n : 1, sizeof *ck->tensors);
    if (!ck->tensors) return mt_seterr(MT_ERR_NOMEM, "%s: out of memory", path);
    for (size_t i = 0; i < n; i++) {
        const mt_tensor *t = mt_gguf_tensor(ck->gguf, i);
        if (!t) return mt_seterr(MT_ERR_INTERNAL, "%s: tensor %zu missing", path, i);
        ck->tensors[i] = *t;
        ck->tensors[i].file_index = 0;
    }
    ck->n = n;
    rc = build_index(ck, NULL);
    if (rc) return rc;
    char *dir = mt_path_dir(path);
    if (!dir) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    rc = find_tokenizer_files(ck, dir);
    free(dir);
    return rc;
}

/* The first bytes of a model file, opened without blocking: anything but a
 * regular file (a FIFO, a device) is refused by name. */
static int read_head(const char *path, unsigned char *buf, size_t cap, size_t *got, uint64_t *size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return mt_seterr(MT_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int rc = mt_seterr(MT_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        return rc;
    }
    if (!S_ISREG(st.st_mode)) {
        int rc = mt_seterr(MT_ERR_IO, "%s: not a regular file (%s)", path, mt_file_kind(st.st_mode));
        close(fd);
        return rc;
    }
    ssize_t n = pread(fd, buf, cap, 0);
    close(fd);
    if (n < 0) return mt_seterr(MT_ERR_IO, "%s: cannot read: %s", path, strerror(errno));
    *got = (size_t)n;
    *size = (uint64_t)st.st_size;
    return MT_OK;
}

/* safetensors begin with a little-endian u64 header length that fits in the
 * file, then the JSON header's '{'. */
static int looks_like_safetensors(const unsigned char *h, size_t got, uint64_t size) {
    if (got < 9 || size < 9) return 0;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | h[i];
    return n <= size - 8 && h[8] == '{';
}

/* Bytes for a message: "\"In the b\"" with anything unprintable as \xNN. */
static const char *show_bytes(const unsigned char *b, size_t n, char *out, size_t cap) {
    size_t k = 0;
    out[k++] = '"';
    for (size_t i = 0; i < n && k + 6 < cap; i++) {
        if (b[i] >= 0x20 && b[i] < 0x7f && b[i] != '"' && b[i] != '\\') out[k++] = (char)b[i];
        else k += (size_t)snprintf(out + k, cap - k, "\\x%02x", b[i]);
    }
    out[k++] = '"';
    out[k] = 0;
    return out;
}

/* ---- archives ------------------------------------------------------------ */
/* A GGUF or a Hugging Face directory inside an archive, from memory. */
static int open_archive(mt_ckpt *ck, const char *path) {
    int rc = mt_archive_read(&ck->arc, path);
    if (rc) return rc;
    const mt_archive_member *cfg = mt_archive_get(ck->arc, "config.json"), *gg = NULL;
    for (size_t i = 0; i < ck->arc->n; i++) {
        const char *nm = ck->arc->m[i].name;
        size_t L = strlen(nm);
        if (L > 5 && !strcmp(nm + L - 5, ".gguf")) {
            if (gg) return mt_seterr(MT_ERR_FORMAT, "%s: more than one .gguf (%s, %s): one model per archive", path,
                                     gg->name, nm);
            gg = &ck->arc->m[i];
        }
    }
    char shown[4400];
    if (gg && !cfg && ck->raw_config)
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: holds a GGUF, not a Hugging Face checkpoint with a config.json", path);
    if (gg && !cfg) {
        ck->fmt = MT_FMT_GGUF;
        snprintf(shown, sizeof shown, "%s:%s", path, gg->name);
        if ((rc = mt_gguf_parse(&ck->gguf, gg->data, gg->size, shown))) return rc;
        ck->file_bytes = gg->size;
        if ((rc = gguf_config(&ck->cfg, ck->gguf, shown))) return rc;
        size_t n = mt_gguf_tensor_count(ck->gguf);
        ck->tensors = calloc(n ? n : 1, sizeof *ck->tensors);
        if (!ck->tensors) return mt_seterr(MT_ERR_NOMEM, "%s: out of memory", path);
        for (size_t i = 0; i < n; i++) ck->tensors[i] = *mt_gguf_tensor(ck->gguf, i);
        ck->n = n;
        return build_index(ck, NULL);
    }
    if (!cfg) return mt_seterr(MT_ERR_NOT_FOUND, "%s: neither config.json nor a .gguf in the archive", path);
    ck->fmt = MT_FMT_HF;
    snprintf(shown, sizeof shown, "%s:config.json", path);
    if (ck->raw_config) rc = keep_config_text(ck, cfg->data, cfg->size);
    else rc = mt_config_from_hf_json(&ck->cfg, (const char *)cfg->data, cfg->size, shown);
    if (rc) return rc;
    ck->file_bytes += cfg->size;
    if (mt_archive_get(ck->arc, "model.safetensors.index.json"))
        rc = open_sharded(ck, NULL, "model.safetensors.index.json", mt_safetensors_open);
    else if (mt_archive_get(ck->arc, "model.safetensors"))
        rc = open_archive_single(ck, "model.safetensors", mt_safetensors_parse);
    else if (mt_archive_get(ck->arc, "pytorch_model.bin.index.json"))
        rc = open_sharded(ck, NULL, "pytorch_model.bin.index.json", mt_pytorch_open);
    else if (mt_archive_get(ck->arc, "pytorch_model.bin"))
        rc = open_archive_single(ck, "pytorch_model.bin", mt_pytorch_parse);
    else
        rc = mt_seterr(MT_ERR_NOT_FOUND, "%s: config.json but no model.safetensors, model.safetensors.index.json, "
                       "pytorch_model.bin or its index in the archive", path);
    if (rc) return rc;
    const mt_archive_member *t;
    static const char *const spm_names[] = {"tokenizer.model", "spiece.model", "sentencepiece.bpe.model"};
    for (size_t i = 0; i < 3; i++)
        if ((t = mt_archive_get(ck->arc, spm_names[i])) && t->size) {
            ck->tok.spm_model_buf = t->data;
            ck->tok.spm_model_len = t->size;
            ck->tok.spm_model_name = spm_names[i];
            break;
        }
    if ((t = mt_archive_get(ck->arc, "tokenizer.json")) && t->size) {
        ck->tok.hf_json_buf = (const char *)t->data;
        ck->tok.hf_json_len = t->size;
    }
    if ((t = mt_archive_get(ck->arc, "tokenizer_config.json"))) {
        ck->tok.hf_config_buf = (const char *)t->data;
        ck->tok.hf_config_len = t->size;
    }
    return MT_OK;
}

static int open_ckpt(mt_ckpt **out, const char *path, int raw_config) {
    *out = NULL;
    if (!path || !*path) return mt_seterr(MT_ERR_ARG, "no checkpoint path given");
    mt_ckpt *ck = calloc(1, sizeof *ck);
    if (!ck || !(ck->path = strdup(path))) {
        free(ck);
        return mt_seterr(MT_ERR_NOMEM, "out of memory");
    }
    ck->raw_config = raw_config;
    int rc;
    if (mt_path_is_dir(path)) {
        ck->fmt = MT_FMT_HF;
        rc = open_hf_dir(ck, path);
    } else if (!mt_path_exists(path)) {
        rc = mt_seterr(MT_ERR_NOT_FOUND, "%s: no such file or directory", path);
    } else if (mt_archive_name(path)) {
        rc = open_archive(ck, path);
    } else {
        unsigned char head[16] = {0};
        size_t got = 0;
        uint64_t fsize = 0;
        rc = read_head(path, head, sizeof head, &got, &fsize);
        size_t L = strlen(path);
        const int named_gguf = L > 5 && strcmp(path + L - 5, ".gguf") == 0;
        if (rc) {
            /* read_head said why */
        } else if (got >= 4 && memcmp(head, "GGUF", 4) == 0 && raw_config) {
            rc = mt_seterr(MT_ERR_UNSUPPORTED, "%s: a GGUF file, not a Hugging Face checkpoint with a config.json",
                           path);
        } else if (got >= 4 && memcmp(head, "GGUF", 4) == 0) {
            ck->fmt = MT_FMT_GGUF;
            rc = open_gguf(ck, path);
        } else if (named_gguf) {
            char shown[40];
            rc = mt_seterr(MT_ERR_FORMAT, "%s: not a GGUF file: it begins with %s, a GGUF file with \"GGUF\"", path,
                           show_bytes(head, got < 4 ? got : 4, shown, sizeof shown));
        } else {
            /* zip (torch.save), or PROTO 2 + LONG1 magic number: legacy torch, refused by name */
            const int is_pt =
                got >= 4 && (memcmp(head, "PK\003\004", 4) == 0 || memcmp(head, "\x80\x02\x8a\x0a", 4) == 0);
            if (!is_pt && !looks_like_safetensors(head, got, fsize)) {
                char shown[40];
                rc = mt_seterr(MT_ERR_FORMAT,
                               "%s: not a model (neither GGUF, safetensors nor a PyTorch checkpoint; it begins with %s)",
                               path, show_bytes(head, got < 8 ? got : 8, shown, sizeof shown));
            } else {
                ck->fmt = is_pt ? MT_FMT_PYTORCH : MT_FMT_SAFETENSORS;
                char *dir = mt_path_dir(path);
                if (!dir) rc = mt_seterr(MT_ERR_NOMEM, "out of memory");
                else {
                    rc = open_single(ck, path, is_pt ? mt_pytorch_open : mt_safetensors_open);
                    if (rc == MT_OK) rc = load_config_in(ck, dir, path);
                    if (rc == MT_OK) rc = find_tokenizer_files(ck, dir);
                }
                free(dir);
            }
        }
    }
    if (rc) {
        mt_ckpt_free(ck);
        return rc;
    }
    *out = ck;
    return MT_OK;
}

int mt_ckpt_open(mt_ckpt **out, const char *path) { return open_ckpt(out, path, 0); }
int mt_ckpt_open_raw(mt_ckpt **out, const char *path) { return open_ckpt(out, path, 1); }
