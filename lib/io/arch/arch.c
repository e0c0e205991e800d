/* arch.c — family-independent code over the tensor-role tables: the
 * registry of families, name expansion and parsing of "{L}"/"{E}" patterns,
 * shapes from the config, and the iterator over every weight. */
#include "arch_impl.h"

#include <stdio.h>
#include <string.h>

static const mt_arch *const g_families[] = {&mt_arch_mixtral, &mt_arch_mistral, &mt_arch_llama, &mt_arch_qwen2moe,
                                             &mt_arch_qwen3moe, &mt_arch_olmoe};
#define N_FAMILIES (sizeof g_families / sizeof g_families[0])

const mt_arch *mt_arch_get(const char *name) {
    for (size_t i = 0; name && i < N_FAMILIES; i++)
        if (!strcmp(g_families[i]->name, name)) return g_families[i];
    return NULL;
}

const mt_arch *mt_arch_find_hf(const char *model_type, const char *class_name) {
    for (size_t i = 0; i < N_FAMILIES; i++) {
        if (model_type && !strcmp(g_families[i]->hf_model_type, model_type)) return g_families[i];
        if (!model_type && class_name && !strcmp(g_families[i]->hf_class, class_name)) return g_families[i];
    }
    return NULL;
}

/* Families recognised but refused by name: what they need that moetool
 * does not run. */
static const struct {
    const char *hf_model_type, *gguf_arch, *why;
} g_refused[] = {
    {"deepseek_v2", "deepseek2", "DeepSeek-V2 multi-head latent attention (MLA) is not supported"},
    {"deepseek_v3", NULL, "DeepSeek-V3 multi-head latent attention (MLA) is not supported"},
    /* encoder-decoder models: read by mt_seq2seq.h, refused by the verbs that
       need a decoder-only model */
    {"switch_transformers", NULL,
     "switch_transformers is an encoder-decoder model: only inspect, eval, generate and convert --to hf run it (this "
     "command supports decoder-only models)"},
    {"nllb-moe", NULL,
     "nllb-moe is an encoder-decoder model: only inspect, eval, generate and convert --to hf run it (this command "
     "supports decoder-only models)"},
};

const char *mt_arch_refusal(const char *hf_model_type, const char *gguf_arch) {
    for (size_t i = 0; i < sizeof g_refused / sizeof g_refused[0]; i++) {
        if (hf_model_type && !strcmp(g_refused[i].hf_model_type, hf_model_type)) return g_refused[i].why;
        if (gguf_arch && g_refused[i].gguf_arch && !strcmp(g_refused[i].gguf_arch, gguf_arch)) return g_refused[i].why;
    }
    return NULL;
}

const mt_arch *mt_arch_find_gguf(const char *gguf_arch) {
    for (size_t i = 0; gguf_arch && i < N_FAMILIES; i++)
        if (!strcmp(g_families[i]->gguf_arch, gguf_arch)) return g_families[i];
    return NULL;
}

int mt_arch_of(const mt_arch **out, const mt_config *c, const char *path) {
    *out = mt_arch_get(c->arch);
    if (!*out) return mt_seterr(MT_ERR_UNSUPPORTED, "%s: unsupported architecture %s", path, c->arch);
    return MT_OK;
}

const mt_arch_tensor *mt_arch_tensor_of(const mt_arch *a, mt_role role) {
    for (int i = 0; a && i < a->n_tensors; i++)
        if (a->tensors[i].role == role) return &a->tensors[i];
    return NULL;
}

/* Expands {L} and {E} of pattern p. */
static int expand(char *buf, size_t n, const char *p, int layer, int expert) {
    size_t k = 0;
    while (*p) {
        char num[16];
        const char *s = NULL;
        size_t len = 1;
        if (!strncmp(p, "{L}", 3) || !strncmp(p, "{E}", 3)) {
            const int v = p[1] == 'L' ? layer : expert;
            if (v < 0) return -1;
            len = (size_t)snprintf(num, sizeof num, "%d", v);
            s = num;
            p += 3;
        } else {
            s = p++;
        }
        if (k + len >= n) return -1;
        memcpy(buf + k, s, len);
        k += len;
    }
    if (k >= n) return -1;
    buf[k] = 0;
    return (int)k;
}

int mt_arch_name(char *buf, size_t n, const mt_arch_tensor *t, mt_format fmt, int layer, int expert) {
    if (n) buf[0] = 0;
    if (!t) return -1;
    const char *p = fmt == MT_FMT_GGUF ? (expert >= 0 && t->gguf_split ? t->gguf_split : t->gguf) : t->hf;
    if (!p) return -1;
    return expand(buf, n, p, layer, expert);
}

/* Matches name against pattern p; {L}/{E} take a decimal number. */
static int match(const char *p, const char *name, int *layer, int *expert) {
    *layer = *expert = -1;
    while (*p) {
        if (!strncmp(p, "{L}", 3) || !strncmp(p, "{E}", 3)) {
            if (*name < '0' || *name > '9' || (name[0] == '0' && name[1] >= '0' && name[1] <= '9')) return 0;
            long v = 0;
            while (*name >= '0' && *name <= '9' && v < (1L << 24)) v = v * 10 + (*name++ - '0');
            if (*name >= '0' && *name <= '9') return 0;
            *(p[1] == 'L' ? layer : expert) = (int)v;
            p += 3;
        } else if (*p++ != *name++) {
            return 0;
        }
    }
    return *name == 0;
}

const mt_arch_tensor *mt_arch_parse(const mt_arch *a, const char *name, mt_format fmt, int *layer, int *expert) {
    int l, e;
    for (int i = 0; a && name && i < a->n_tensors; i++) {
        const mt_arch_tensor *t = &a->tensors[i];
        const char *pats[2] = {fmt == MT_FMT_GGUF ? t->gguf : t->hf, fmt == MT_FMT_GGUF ? t->gguf_split : NULL};
        for (int k = 0; k < 2; k++)
            if (pats[k] && match(pats[k], name, &l, &e)) {
                if (layer) *layer = l;
                if (expert) *expert = e;
                return t;
            }
    }
    return NULL;
}

static int64_t dim(mt_dim d, const mt_config *c, int layer) {
    switch (d) {
    case MT_DIM_HIDDEN: return c->hidden;
    case MT_DIM_FFN: return c->ffn;
    case MT_DIM_VOCAB: return c->vocab;
    case MT_DIM_Q: return (int64_t)c->n_heads * c->head_dim;
    case MT_DIM_KV: return (int64_t)c->n_kv_heads * c->head_dim;
    case MT_DIM_ROUTER: return mt_config_router_rows(c, layer);
    case MT_DIM_FFN_DENSE: return mt_config_dense_ffn(c);
    case MT_DIM_FFN_SHARED: return c->ffn_shared;
    case MT_DIM_ONE: return 1;
    case MT_DIM_HEAD: return c->head_dim;
    default: return 1;
    }
}

int mt_arch_shape(const mt_arch_tensor *t, const mt_config *c, int layer, int64_t shape[2]) {
    if (t->rows == MT_DIM_NONE) {
        shape[0] = dim(t->cols, c, layer);
        shape[1] = 0;
        return 1;
    }
    shape[0] = dim(t->rows, c, layer);
    shape[1] = dim(t->cols, c, layer);
    return 2;
}

void mt_arch_shape_str(char *buf, size_t n, int nd, const int64_t *shape) {
    size_t k = 0;
    k += (size_t)snprintf(buf + k, n - k, "[");
    for (int d = 0; d < nd && k < n; d++)
        k += (size_t)snprintf(buf + k, n - k, d ? ", %lld" : "%lld", (long long)shape[d]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

int64_t mt_rope_perm_row(int to_gguf, int64_t r, int64_t hd) {
    const int64_t h = r / hd, k = r % hd, half = hd / 2;
    if (to_gguf) return h * hd + (k % 2) * half + k / 2;
    return h * hd + (k % half) * 2 + k / half;
}

/* ---- iterator ------------------------------------------------------------- */
int mt_arch_iter_init(mt_arch_iter *it, const mt_config *c, unsigned flags, const char *path) {
    memset(it, 0, sizeof *it);
    int rc = mt_arch_of(&it->a, c, path ? path : "config");
    if (rc) return rc;
    it->c = c;
    it->flags = flags;
    it->run_start = it->run_end = -1;
    return MT_OK;
}

/* Does layer `l` (or the model, l < 0) have role t? */
static int has_role(const mt_arch_tensor *t, const mt_config *c, int l, unsigned flags) {
    if (l >= 0 && (t->flags & MT_ROLE_F_MOE) && mt_config_layer_experts(c, l) <= 0) return 0;
    if (l >= 0 && (t->flags & MT_ROLE_F_DENSE) && mt_config_layer_experts(c, l) > 0) return 0;
    if ((t->flags & MT_ROLE_F_OPTIONAL) && !(flags & MT_ITER_OPTIONAL) && t->role == MT_ROLE_LM_HEAD &&
        c->tie_embeddings)
        return 0;
    return 1;
}

int mt_arch_iter_next(mt_arch_iter *it, mt_arch_item *out) {
    const mt_arch *a = it->a;
    const mt_config *c = it->c;
    const int per_expert = (it->flags & MT_ITER_PER_EXPERT) != 0;
    for (;;) {
        if (it->i >= a->n_tensors) return 0;
        const mt_arch_tensor *t = &a->tensors[it->i];
        int l = -1, e = -1, E = 0;
        if (t->flags & MT_ROLE_F_LAYER) {
            if (it->run_start < 0) { /* entering a run of per-layer roles */
                it->run_start = it->i;
                it->run_end = it->i;
                while (it->run_end < a->n_tensors && (a->tensors[it->run_end].flags & MT_ROLE_F_LAYER)) it->run_end++;
                it->layer = 0;
                it->expert = 0;
            }
            if (it->layer >= c->n_layers) { /* run done */
                it->i = it->run_end;
                it->run_start = -1;
                continue;
            }
            l = it->layer;
            const int has = has_role(t, c, l, it->flags);
            if (has && (t->flags & MT_ROLE_F_EXPERT)) {
                E = mt_config_layer_experts(c, l);
                if (per_expert) e = it->expert;
            }
            /* advance */
            if (has && per_expert && (t->flags & MT_ROLE_F_EXPERT) && ++it->expert < E) {
                /* same role, next expert */
            } else {
                it->expert = 0;
                if (++it->i >= it->run_end) {
                    it->i = it->run_start;
                    it->layer++;
                }
            }
            if (!has) continue;
        } else {
            it->i++;
            if (!has_role(t, c, -1, it->flags)) continue;
        }
        memset(out, 0, sizeof *out);
        out->t = t;
        out->layer = l;
        out->expert = e;
        out->n_experts = E;
        out->n_dims = mt_arch_shape(t, c, l, out->shape);
        mt_arch_name(out->hf, sizeof out->hf, t, MT_FMT_HF, l, e < 0 ? 0 : e);
        if (e < 0 && (t->flags & MT_ROLE_F_EXPERT)) out->hf[0] = 0; /* stacked item: no single HF name */
        mt_arch_name(out->gguf, sizeof out->gguf, t, MT_FMT_GGUF, l, (t->flags & MT_ROLE_F_STACKED) ? -1 : e);
        return 1;
    }
}
