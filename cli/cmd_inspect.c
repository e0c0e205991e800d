/* cmd_inspect.c — `moetool inspect PATH`: what a checkpoint holds. */
#define _GNU_SOURCE
#include "cli_impl.h"
#include "moetool/mt_seq2seq.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    int json, tensors;
} inspect_args;

static void inspect_init(void *p) { memset(p, 0, sizeof(inspect_args)); }

static const cli_opt inspect_opts[] = {
    {"json", 0, CLI_BOOL, NULL, "one JSON object on stdout", NULL, CLI_AT(inspect_args, json)},
    {"tensors", 0, CLI_BOOL, NULL, "list every tensor (always included in --json)", NULL, CLI_AT(inspect_args, tensors)},
};

const cli_verb cli_verb_inspect = {
    .name = "inspect",
    .synopsis = "usage: moetool inspect [PATH] [--json] [--tensors]",
    .about = "Prints the architecture, parameter counts (total, in experts, active per\n"
             "token), storage types, tensors with shapes and bytes, and the tokenizer.\n"
             "PATH: Hugging Face directory, .safetensors file or .gguf (default: the\n"
             "bundled model). A lone .safetensors without config.json beside it is\n"
             "listed as tensors only.\n",
    .positional = "PATH",
    .opts = inspect_opts,
    .n_opts = sizeof inspect_opts / sizeof inspect_opts[0],
    .args_size = sizeof(inspect_args),
    .init = inspect_init,
    .run = cmd_inspect,
    .recipe_step = 0,
};

static const char *fmt_name(mt_format f) {
    switch (f) {
    case MT_FMT_HF: return "hf";
    case MT_FMT_SAFETENSORS: return "safetensors";
    case MT_FMT_GGUF: return "gguf";
    case MT_FMT_PYTORCH: return "pytorch";
    }
    return "?";
}

static void shape_str(const mt_tensor *t, char *buf, size_t cap) {
    size_t k = 0;
    buf[k++] = '[';
    for (int d = 0; d < t->n_dims && k < cap - 24; d++)
        k += (size_t)snprintf(buf + k, cap - k, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
    snprintf(buf + k, cap - k, "]");
}

typedef struct {
    uint64_t total, experts, active, bytes;
    uint64_t dtype_params[MT_DT_COUNT];
} counts;

static int uniform_experts(const mt_config *c) {
    for (int l = 0; l < c->n_layers; l++)
        if (mt_config_layer_experts(c, l) != c->n_experts) return 0;
    return 1;
}

static uint64_t mat_params(const mt_mat *m) { return m->data ? (uint64_t)(m->rows * m->cols) : 0; }

/* Parameters of the model description: what a quantized checkpoint holds in
 * packed form (AutoGPTQ words, qmoe blobs) counted as the weights it codes. */
static uint64_t logical_params(const mt_weights *w) {
    const mt_config *cfg = &w->cfg;
    uint64_t n = mat_params(&w->tok_embd) + mat_params(&w->out_norm) + (cfg->tie_embeddings ? 0 : mat_params(&w->lm_head));
    for (int l = 0; l < cfg->n_layers; l++) {
        const mt_layer_weights *L = &w->layers[l];
        n += mat_params(&L->attn_norm) + mat_params(&L->ffn_norm) + mat_params(&L->wq) + mat_params(&L->wk) +
             mat_params(&L->wv) + mat_params(&L->wo);
        if (L->n_experts > 0) n += mat_params(&L->router_full);
        for (int e = 0; e < (L->n_experts > 0 ? L->n_experts : 1); e++)
            n += mat_params(&L->w1[e]) + mat_params(&L->w2[e]) + mat_params(&L->w3[e]);
    }
    return n;
}

static void count_weights(const mt_weights *w, counts *c) {
    const mt_config *cfg = &w->cfg;
    for (int l = 0; l < cfg->n_layers; l++) {
        const mt_layer_weights *L = &w->layers[l];
        if (L->n_experts <= 0) continue;
        uint64_t per = 0;
        for (int e = 0; e < L->n_experts; e++)
            per += (uint64_t)(L->w1[e].rows * L->w1[e].cols + L->w2[e].rows * L->w2[e].cols +
                              L->w3[e].rows * L->w3[e].cols);
        c->experts += per;
        c->active -= per;
        c->active += per / (uint64_t)L->n_experts * (uint64_t)cfg->top_k;
    }
}

static void print_tok(FILE *f, const mt_ckpt *ck, int json) {
    mt_tokenizer *tok = NULL;
    int rc = mt_tok_load_for_ckpt(&tok, ck);
    if (json) {
        fprintf(f, ",\"tokenizer\":");
        if (rc) {
            fprintf(f, "null");
        } else {
            fprintf(f, "{\"kind\":\"%s\",\"vocab\":%zu,\"bos\":%d,\"eos\":%d}",
                    mt_tok_kind_of(tok) == MT_TOK_SPM       ? "sentencepiece-bpe"
                    : mt_tok_kind_of(tok) == MT_TOK_UNIGRAM ? "sentencepiece-unigram"
                                                            : "gpt2-byte-bpe",
                    mt_tok_vocab_size(tok), mt_tok_bos(tok), mt_tok_eos(tok));
        }
    } else {
        if (rc)
            fprintf(f, "tokenizer:    none (%s)\n", mt_last_error());
        else
            fprintf(f, "tokenizer:    %s, %zu pieces, bos %d, eos %d\n",
                    mt_tok_kind_of(tok) == MT_TOK_SPM       ? "sentencepiece BPE (byte fallback)"
                    : mt_tok_kind_of(tok) == MT_TOK_UNIGRAM ? "sentencepiece unigram"
                                                            : "GPT-2 byte-level BPE",
                    mt_tok_vocab_size(tok), mt_tok_bos(tok), mt_tok_eos(tok));
    }
    mt_tok_free(tok);
}

static int inspect_lone_safetensors(const char *path, int json) {
    mt_safetensors *st = NULL;
    int rc = mt_safetensors_open(&st, path);
    if (rc) return cli_fail("inspect", rc);
    uint64_t total = 0, bytes = 0;
    size_t n = mt_safetensors_count(st);
    if (json) printf("{\"path\":"), json_str(stdout, path), printf(",\"format\":\"safetensors\",\"tensors\":[");
    else printf("path:         %s\nformat:       safetensors (no config.json: tensors only)\n", path);
    for (size_t i = 0; i < n; i++) {
        const mt_tensor *t = mt_safetensors_get(st, i);
        char sh[128];
        shape_str(t, sh, sizeof sh);
        total += (uint64_t)mt_tensor_numel(t);
        bytes += t->nbytes;
        if (json) {
            printf("%s{\"name\":", i ? "," : "");
            json_str(stdout, t->name);
            printf(",\"dtype\":\"%s\",\"shape\":%s,\"bytes\":%llu}", mt_dtype_get(t->dtype)->name, sh,
                   (unsigned long long)t->nbytes);
        } else {
            printf("  ");
            cli_term_str(stdout, t->name, 60);
            printf(" %-6s %-20s %llu\n", mt_dtype_get(t->dtype)->name, sh, (unsigned long long)t->nbytes);
        }
    }
    if (json) printf("],\"params\":{\"total\":%llu},\"bytes\":%llu}\n", (unsigned long long)total, (unsigned long long)bytes);
    else printf("parameters:   %llu in %zu tensors, %llu bytes\n", (unsigned long long)total, n, (unsigned long long)bytes);
    mt_safetensors_free(st);
    return MT_EXIT_OK;
}

int cmd_inspect(int argc, char **argv) {
    inspect_args A;
    inspect_init(&A);
    const char *path_arg = NULL;
    int prc = cli_opts_parse_argv(&cli_verb_inspect, &A, argc, argv, &path_arg);
    if (prc) return prc == 1 ? MT_EXIT_OK : prc;
    const int json = A.json, list = A.tensors;
    const char *path = path_arg ? path_arg : cli_default_model();

    if (mt_s2s_detect(path)) return cli_s2s_inspect(path, json);
    mt_ckpt *ck = NULL;
    int rc = mt_ckpt_open(&ck, path);
    if (rc) {
        size_t L = strlen(path);
        if (L > 12 && !strcmp(path + L - 12, ".safetensors")) {
            /* A shard or loose file: list what it holds. */
            char *err = strdup(mt_last_error());
            int r = inspect_lone_safetensors(path, json);
            if (r == MT_EXIT_OK && !json) printf("note:         %s\n", err ? err : "");
            free(err);
            return r;
        }
        return cli_fail("inspect", rc);
    }
    const mt_config *cfg = mt_ckpt_config(ck);
    mt_weights w;
    memset(&w, 0, sizeof w);
    rc = mt_weights_init(&w, ck);
    if (rc) {
        mt_ckpt_free(ck);
        return cli_fail("inspect", rc);
    }
    counts cnt;
    memset(&cnt, 0, sizeof cnt);
    size_t n = mt_ckpt_count(ck);
    for (size_t i = 0; i < n; i++) {
        const mt_tensor *t = mt_ckpt_get(ck, i);
        cnt.total += (uint64_t)mt_tensor_numel(t);
        cnt.bytes += t->nbytes;
        cnt.dtype_params[t->dtype] += (uint64_t)mt_tensor_numel(t);
    }
    /* Quantized checkpoints store packed tensors: count parameters from the
     * model description, and the storage shares by bytes. */
    const int packed = cfg->quant != MT_QFMT_NONE;
    if (packed) {
        cnt.total = logical_params(&w);
        memset(cnt.dtype_params, 0, sizeof cnt.dtype_params);
        for (size_t i = 0; i < n; i++) cnt.dtype_params[mt_ckpt_get(ck, i)->dtype] += mt_ckpt_get(ck, i)->nbytes;
    }
    cnt.active = cnt.total;
    count_weights(&w, &cnt);

    if (json) {
        printf("{\"path\":");
        json_str(stdout, path);
        printf(",\"format\":\"%s\",\"arch\":", fmt_name(mt_ckpt_format(ck)));
        json_str(stdout, cfg->arch);
        printf(",\"config\":{\"n_layers\":%d,\"hidden\":%d,\"ffn\":%d,\"n_heads\":%d,\"n_kv_heads\":%d,"
               "\"head_dim\":%d,\"vocab\":%d,\"n_experts\":%d,\"top_k\":%d,\"rope_theta\":%g,\"norm_eps\":%g,"
               "\"max_pos\":%d,\"tie_embeddings\":%s,\"rope_style\":\"%s\"}",
               cfg->n_layers, cfg->hidden, cfg->ffn, cfg->n_heads, cfg->n_kv_heads, cfg->head_dim, cfg->vocab,
               cfg->n_experts, cfg->top_k, cfg->rope_theta, cfg->norm_eps, cfg->max_pos,
               cfg->tie_embeddings ? "true" : "false", cfg->rope_style == MT_ROPE_HALF ? "half" : "interleaved");
        const char *why = mt_config_portability(cfg);
        if (uniform_experts(cfg)) {
            printf(",\"layer_experts\":null");
        } else {
            printf(",\"layer_experts\":[");
            for (int l = 0; l < cfg->n_layers; l++) printf("%s%d", l ? "," : "", mt_config_layer_experts(cfg, l));
            printf("]");
        }
        printf(",\"portable\":%s,\"portability\":", why ? "false" : "true");
        if (why) json_str(stdout, why);
        else printf("null");
        printf(",\"params\":{\"total\":%llu,\"experts\":%llu,\"active\":%llu}", (unsigned long long)cnt.total,
               (unsigned long long)cnt.experts, (unsigned long long)cnt.active);
        printf(",\"tensor_bytes\":%llu,\"file_bytes\":%llu", (unsigned long long)cnt.bytes,
               (unsigned long long)mt_ckpt_file_bytes(ck));
        printf(",\"quantization\":\"%s\",\"dtypes%s\":{",
               cfg->quant == MT_QFMT_QMOE ? "qmoe" : cfg->quant == MT_QFMT_GPTQ ? "gptq" : "none", packed ? "_bytes" : "");
        int first = 1;
        for (int t = 0; t < MT_DT_COUNT; t++)
            if (cnt.dtype_params[t]) {
                printf("%s\"%s\":%llu", first ? "" : ",", mt_dtype_get((mt_dtype)t)->name,
                       (unsigned long long)cnt.dtype_params[t]);
                first = 0;
            }
        printf("}");
        print_tok(stdout, ck, 1);
        printf(",\"tensors\":[");
        for (size_t i = 0; i < n; i++) {
            const mt_tensor *t = mt_ckpt_get(ck, i);
            char sh[128];
            shape_str(t, sh, sizeof sh);
            printf("%s{\"name\":", i ? "," : "");
            json_str(stdout, t->name);
            printf(",\"dtype\":\"%s\",\"shape\":%s,\"bytes\":%llu}", mt_dtype_get(t->dtype)->name, sh,
                   (unsigned long long)t->nbytes);
        }
        printf("]}\n");
    } else {
        printf("path:         %s\n", path);
        printf("format:       %s\n", fmt_name(mt_ckpt_format(ck)));
        printf("architecture: %s, %d layers, hidden %d, heads %d (kv %d, head_dim %d), vocab %d\n", cfg->arch,
               cfg->n_layers, cfg->hidden, cfg->n_heads, cfg->n_kv_heads, cfg->head_dim, cfg->vocab);
        if (cfg->n_experts > 0) {
            int varied = 0, dense = 0; /* dense-MLP layers are listed on their own line */
            for (int l = 0; l < cfg->n_layers; l++)
                varied |= mt_config_layer_experts(cfg, l) && mt_config_layer_experts(cfg, l) != cfg->n_experts;
            if (!varied) {
                printf("experts:      %d per layer, top-%d, expert ffn %d", cfg->n_experts, cfg->top_k, cfg->ffn);
            } else {
                printf("experts:      ");
                for (int l = 0; l < cfg->n_layers; l++) printf("%s%d", l ? "," : "", mt_config_layer_experts(cfg, l));
                printf(" per layer, top-%d, expert ffn %d", cfg->top_k, cfg->ffn);
            }
            if (!mt_config_renorm_topk(cfg)) printf(", top-k gates not renormalised");
            if (cfg->ffn_shared > 0) printf(", shared expert ffn %d", cfg->ffn_shared);
            printf("\n");
            for (int l = 0; l < cfg->n_layers; l++)
                if (mt_config_layer_experts(cfg, l) == 0) printf(dense++ ? " %d" : "mlp:          dense-MLP layers %d", l);
            if (dense) printf(", ffn %d\n", mt_config_dense_ffn(cfg));
        } else {
            printf("mlp:          dense, ffn %d\n", cfg->ffn);
        }
        if (mt_config_portability(cfg)) printf("portable:     no: %s\n", mt_config_portability(cfg));
        printf("rope:         theta %g, %s pairs; rms eps %g; context %d%s\n", cfg->rope_theta,
               cfg->rope_style == MT_ROPE_HALF ? "half-split" : "interleaved", cfg->norm_eps, cfg->max_pos,
               cfg->tie_embeddings ? "; tied embeddings" : "");
        printf("parameters:   %.2fM total, %.2fM in experts, %.2fM active per token\n", cnt.total / 1e6,
               cnt.experts / 1e6, cnt.active / 1e6);
        printf("storage:      %llu bytes of tensors, %llu bytes on disk;%s", (unsigned long long)cnt.bytes,
               (unsigned long long)mt_ckpt_file_bytes(ck),
               packed ? (cfg->quant == MT_QFMT_QMOE ? " quantized (qmoe), by bytes:" : " quantized (gptq), by bytes:")
                      : "");
        for (int t = 0; t < MT_DT_COUNT; t++)
            if (cnt.dtype_params[t])
                printf(" %s %.1f%%", mt_dtype_get((mt_dtype)t)->name,
                       100.0 * cnt.dtype_params[t] / (packed ? cnt.bytes : cnt.total));
        printf("\n");
        print_tok(stdout, ck, 0);
        printf("tensors:      %zu\n", n);
        if (list) {
            for (size_t i = 0; i < n; i++) {
                const mt_tensor *t = mt_ckpt_get(ck, i);
                char sh[128];
                shape_str(t, sh, sizeof sh);
                printf("  ");
                cli_term_str(stdout, t->name, 58);
                printf(" %-6s %-18s %10llu\n", mt_dtype_get(t->dtype)->name, sh, (unsigned long long)t->nbytes);
            }
        }
    }
    mt_weights_free(&w);
    mt_ckpt_free(ck);
    return MT_EXIT_OK;
}
