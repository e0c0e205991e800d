/* test_ckpt.c — the checkpoint view and the weight mapping: the bundled
 * model as a sharded HF directory and as a single shard; tiny models written
 * here byte by byte as HF safetensors and as GGUF (merged 3-D experts,
 * per-expert 2-D experts, dense, tied embeddings, per-layer expert counts);
 * malformed directories (missing shard, index naming a tensor its shard
 * lacks, escaping shard names, a tensor in two shards, broken configs) and
 * shape/type mismatches, each with the right status and a message naming the
 * file. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "moetool/mt_io.h"
#include "testutil.h"

static uint64_t fsize(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 ? (uint64_t)st.st_size : 0;
}

static char *join(const char *a, const char *b) {
    char *s = malloc(strlen(a) + strlen(b) + 2);
    sprintf(s, "%s/%s", a, b);
    return s;
}

static void write_text(const char *dir, const char *name, const char *text) {
    char *p = join(dir, name);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    free(p);
}

static void link_model_file(const char *dir, const char *name) {
    char *p = join(dir, name);
    assert_int_equal(symlink(tu_model_path(name), p), 0);
    free(p);
}

static void expect_open_error(const char *path, int status, const char *part1, const char *part2) {
    mt_ckpt *ck = (mt_ckpt *)1;
    int rc = mt_ckpt_open(&ck, path);
    const char *m = mt_last_error();
    if (rc != status || !strstr(m, part1) || (part2 && !strstr(m, part2)))
        fail_msg("%s: got %s \"%s\", want %s with \"%s\" and \"%s\"", path, mt_status_name(rc), m,
                 mt_status_name(status), part1, part2 ? part2 : "");
    assert_null(ck);
}

/* ---- the bundled model -------------------------------------------------- */

static void test_bundled_hf_dir(void **state) {
    (void)state;
    mt_ckpt *ck = NULL;
    assert_int_equal(mt_ckpt_open(&ck, tu_model_dir()), MT_OK);
    assert_int_equal(mt_ckpt_format(ck), MT_FMT_HF);
    assert_string_equal(mt_ckpt_path(ck), tu_model_dir());
    assert_null(mt_ckpt_gguf(ck));
    const mt_config *c = mt_ckpt_config(ck);
    assert_int_equal(c->n_experts, 8);

    /* Independent reading of the index: every entry is there, in its shard,
     * with the same shape and offset as the shard file reports on its own. */
    json_error_t je;
    json_t *idx = json_load_file(tu_model_path("model.safetensors.index.json"), 0, &je);
    assert_non_null(idx);
    json_t *wm = json_object_get(idx, "weight_map");
    assert_int_equal(mt_ckpt_count(ck), json_object_size(wm));
    mt_safetensors *sh[2];
    assert_int_equal(mt_safetensors_open(&sh[0], tu_model_path("model-00001-of-00002.safetensors")), MT_OK);
    assert_int_equal(mt_safetensors_open(&sh[1], tu_model_path("model-00002-of-00002.safetensors")), MT_OK);
    const char *key;
    json_t *val;
    json_object_foreach(wm, key, val) {
        const mt_tensor *t = mt_ckpt_find(ck, key);
        assert_non_null(t);
        assert_string_equal(t->name, key);
        int s = strstr(json_string_value(val), "00002-of") != NULL;
        const mt_tensor *u = mt_safetensors_find(sh[s], key);
        assert_non_null(u);
        assert_int_equal(t->file_offset, u->file_offset);
        assert_int_equal(t->nbytes, u->nbytes);
        assert_int_equal(t->n_dims, u->n_dims);
        assert_memory_equal(t->shape, u->shape, sizeof t->shape);
        assert_memory_equal(t->data, u->data, t->nbytes < 64 ? t->nbytes : 64);
        assert_int_equal(t->dtype, MT_DT_BF16);
    }
    /* Shards are numbered in order of first mention; both are used. */
    int seen[2] = {0, 0};
    for (size_t i = 0; i < mt_ckpt_count(ck); i++) {
        int fi = mt_ckpt_get(ck, i)->file_index;
        assert_true(fi == 0 || fi == 1);
        seen[fi] = 1;
    }
    assert_true(seen[0] && seen[1]);
    mt_safetensors_free(sh[0]);
    mt_safetensors_free(sh[1]);

    /* Parameter count: from the config formula, from the tensors, and from
     * the index's total_size (bf16: 2 bytes each) — three independent sums. */
    int64_t H = c->hidden, F = c->ffn, V = c->vocab, QD = (int64_t)c->n_heads * c->head_dim,
            KD = (int64_t)c->n_kv_heads * c->head_dim, E = c->n_experts;
    int64_t per_layer = 2 * H + H * QD + 2 * H * KD + QD * H + E * H + E * 3 * H * F;
    int64_t formula = 2 * V * H + H + c->n_layers * per_layer;
    int64_t sum = 0;
    for (size_t i = 0; i < mt_ckpt_count(ck); i++) sum += mt_tensor_numel(mt_ckpt_get(ck, i));
    int64_t total_size = json_integer_value(json_object_get(json_object_get(idx, "metadata"), "total_size"));
    printf("params: formula %lld, tensors %lld, index total_size/2 %lld\n", (long long)formula, (long long)sum,
           (long long)(total_size / 2));
    assert_int_equal(sum, formula);
    assert_int_equal(sum * 2, total_size);
    assert_true(sum > 15000000 && sum < 16000000);
    json_decref(idx);

    uint64_t bytes = fsize(tu_model_path("model-00001-of-00002.safetensors")) +
                     fsize(tu_model_path("model-00002-of-00002.safetensors")) + fsize(tu_model_path("config.json")) +
                     fsize(tu_model_path("model.safetensors.index.json"));
    assert_int_equal(mt_ckpt_file_bytes(ck), bytes);
    const mt_tokenizer_files *tf = mt_ckpt_tokenizer_files(ck);
    assert_non_null(tf->spm_model_path);
    assert_non_null(strstr(tf->spm_model_path, "tokenizer.model"));
    assert_non_null(tf->hf_json_path);
    assert_null(mt_ckpt_find(ck, "model.layers.4.input_layernorm.weight"));
    assert_null(mt_ckpt_get(ck, mt_ckpt_count(ck)));
    mt_ckpt_free(ck);
}

static void test_bundled_weights(void **state) {
    (void)state;
    mt_ckpt *ck = NULL;
    assert_int_equal(mt_ckpt_open(&ck, tu_model_dir()), MT_OK);
    mt_weights w;
    assert_int_equal(mt_weights_init(&w, ck), MT_OK);
    assert_int_equal(w.cfg.n_layers, 4);
    assert_ptr_equal(w.tok_embd.data, mt_ckpt_find(ck, "model.embed_tokens.weight")->data);
    assert_ptr_equal(w.lm_head.data, mt_ckpt_find(ck, "lm_head.weight")->data);
    assert_ptr_not_equal(w.lm_head.data, w.tok_embd.data);
    assert_int_equal(w.tok_embd.rows, 4096);
    assert_int_equal(w.tok_embd.cols, 256);
    assert_int_equal(w.tok_embd.row_stride, 512);
    assert_int_equal(w.out_norm.rows, 1);
    assert_int_equal(w.out_norm.cols, 256);
    char n[128];
    for (int l = 0; l < 4; l++) {
        const mt_layer_weights *L = &w.layers[l];
        assert_int_equal(L->n_experts, 8);
        assert_int_equal(L->wq.rows, 256);
        assert_int_equal(L->wk.rows, 64);
        assert_int_equal(L->wv.rows, 64);
        assert_int_equal(L->wo.cols, 256);
        assert_int_equal(L->router.rows, 8);
        assert_int_equal(L->router.cols, 256);
        snprintf(n, sizeof n, "model.layers.%d.self_attn.k_proj.weight", l);
        assert_ptr_equal(L->wk.data, mt_ckpt_find(ck, n)->data);
        for (int e = 0; e < 8; e++) {
            snprintf(n, sizeof n, "model.layers.%d.block_sparse_moe.experts.%d.w2.weight", l, e);
            assert_ptr_equal(L->w2[e].data, mt_ckpt_find(ck, n)->data);
            assert_int_equal(L->w2[e].rows, 256);
            assert_int_equal(L->w2[e].cols, 512);
            assert_int_equal(L->w2[e].row_stride, 1024);
            assert_int_equal(L->w2[e].dtype, MT_DT_BF16);
            snprintf(n, sizeof n, "model.layers.%d.block_sparse_moe.experts.%d.w3.weight", l, e);
            assert_ptr_equal(L->w3[e].data, mt_ckpt_find(ck, n)->data);
            assert_int_equal(L->w1[e].rows, 512);
        }
    }
    mt_weights_free(&w);
    mt_weights_free(&w); /* safe twice */
    mt_ckpt_free(ck);
}

static void test_single_shard(void **state) {
    (void)state;
    /* In place: config.json is beside it, but half the tensors are elsewhere. */
    const char *shard = tu_model_path("model-00002-of-00002.safetensors");
    mt_ckpt *ck = NULL;
    assert_int_equal(mt_ckpt_open(&ck, shard), MT_OK);
    assert_int_equal(mt_ckpt_format(ck), MT_FMT_SAFETENSORS);
    mt_safetensors *st = NULL;
    assert_int_equal(mt_safetensors_open(&st, shard), MT_OK);
    assert_int_equal(mt_ckpt_count(ck), mt_safetensors_count(st));
    mt_safetensors_free(st);
    mt_weights w;
    assert_int_equal(mt_weights_init(&w, ck), MT_ERR_NOT_FOUND);
    assert_non_null(strstr(mt_last_error(), "is missing"));
    assert_null(w.layers);
    mt_ckpt_free(ck);

    /* Alone in a directory: the config is needed. */
    char *dir = tu_mkdtemp();
    link_model_file(dir, "model-00002-of-00002.safetensors");
    char *p = join(dir, "model-00002-of-00002.safetensors");
    expect_open_error(p, MT_ERR_NOT_FOUND, p, "config.json");
    free(p);
    tu_rmtree(dir);
    free(dir);
}

/* ---- malformed HF directories ------------------------------------------- */

static char *model_dir_copy(int with_index) {
    char *dir = tu_mkdtemp();
    assert_non_null(dir);
    link_model_file(dir, "config.json");
    link_model_file(dir, "model-00001-of-00002.safetensors");
    link_model_file(dir, "model-00002-of-00002.safetensors");
    if (with_index) link_model_file(dir, "model.safetensors.index.json");
    return dir;
}

/* The bundled index with weight_map[name] = shard (NULL removes it). */
static void write_index_with(const char *dir, const char *name, const char *shard) {
    json_error_t je;
    json_t *idx = json_load_file(tu_model_path("model.safetensors.index.json"), 0, &je);
    json_t *wm = json_object_get(idx, "weight_map");
    if (shard) json_object_set_new(wm, name, json_string(shard));
    else json_object_del(wm, name);
    char *s = json_dumps(idx, 0);
    write_text(dir, "model.safetensors.index.json", s);
    free(s);
    json_decref(idx);
}

/* Minimal f32 safetensors with the given (name, n floats) tensors. */
static void write_small_st(const char *dir, const char *file, int n, const char *const *names, const int *len) {
    char hdr[4096];
    size_t k = 0, off = 0;
    k += (size_t)snprintf(hdr + k, sizeof hdr - k, "{");
    for (int i = 0; i < n; i++) {
        k += (size_t)snprintf(hdr + k, sizeof hdr - k, "%s\"%s\": {\"dtype\": \"F32\", \"shape\": [%d], \"data_offsets\": [%zu, %zu]}",
                              i ? ", " : "", names[i], len[i], off, off + 4 * (size_t)len[i]);
        off += 4 * (size_t)len[i];
    }
    k += (size_t)snprintf(hdr + k, sizeof hdr - k, "}");
    char *p = join(dir, file);
    FILE *f = fopen(p, "wb");
    uint64_t hl = k;
    fwrite(&hl, 8, 1, f);
    fwrite(hdr, 1, k, f);
    for (size_t i = 0; i < off; i++) fputc(0, f);
    fclose(f);
    free(p);
}

static void test_bad_dirs(void **state) {
    (void)state;
    char *dir, *p;

    /* Missing shard. */
    dir = model_dir_copy(0);
    write_index_with(dir, "model.norm.weight", "model-00003-of-00002.safetensors");
    expect_open_error(dir, MT_ERR_NOT_FOUND, "model-00003-of-00002.safetensors", "model.safetensors.index.json");
    tu_rmtree(dir);
    free(dir);

    /* Index naming a tensor the shard lacks. */
    dir = model_dir_copy(0);
    write_index_with(dir, "model.layers.9.extra.weight", "model-00001-of-00002.safetensors");
    expect_open_error(dir, MT_ERR_FORMAT, "model.layers.9.extra.weight", "model.safetensors.index.json");
    tu_rmtree(dir);
    free(dir);

    /* Shard names that leave the directory. */
    const char *escapes[] = {"../model-00001-of-00002.safetensors", "/etc/passwd", "..", "sub/x.safetensors", ""};
    for (size_t i = 0; i < sizeof escapes / sizeof escapes[0]; i++) {
        dir = model_dir_copy(0);
        write_index_with(dir, "model.norm.weight", escapes[i]);
        expect_open_error(dir, MT_ERR_FORMAT, "model.safetensors.index.json", "not a file in the directory");
        tu_rmtree(dir);
        free(dir);
    }

    /* A tensor in two shards. */
    dir = tu_mkdtemp();
    link_model_file(dir, "config.json");
    const char *n1[] = {"a"}, *n2[] = {"a", "b"};
    const int l1[] = {2}, l2[] = {2, 3};
    write_small_st(dir, "s1.safetensors", 1, n1, l1);
    write_small_st(dir, "s2.safetensors", 2, n2, l2);
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\": {\"a\": \"s1.safetensors\", \"b\": \"s2.safetensors\"}}");
    expect_open_error(dir, MT_ERR_FORMAT, "two shards", "s2.safetensors");
    /* Index JSON broken, weight_map missing, weight_map value not a string. */
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\": {\"a\": ");
    expect_open_error(dir, MT_ERR_FORMAT, "model.safetensors.index.json", "JSON");
    write_text(dir, "model.safetensors.index.json", "{\"metadata\": {}}");
    expect_open_error(dir, MT_ERR_FORMAT, "model.safetensors.index.json", "weight_map");
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\": {\"a\": 3}}");
    expect_open_error(dir, MT_ERR_FORMAT, "model.safetensors.index.json", "not a file name");
    /* A malformed shard is reported with the shard's name. */
    write_text(dir, "s1.safetensors", "garbage!garbage!");
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\": {\"a\": \"s1.safetensors\"}}");
    expect_open_error(dir, MT_ERR_FORMAT, "s1.safetensors", NULL);
    tu_rmtree(dir);
    free(dir);

    /* Config problems in an otherwise good directory. */
    dir = model_dir_copy(1);
    p = join(dir, "config.json");
    unlink(p);
    expect_open_error(dir, MT_ERR_NOT_FOUND, "config.json", NULL);
    write_text(dir, "config.json", "{\"model_type\": \"mixtral\", \"vocab_size\": 4096, \"hidden_size\": 256}");
    expect_open_error(dir, MT_ERR_FORMAT, p, "intermediate_size");
    write_text(dir, "config.json", "{\"model_type\": \"jamba\", \"vocab_size\": 4096}");
    expect_open_error(dir, MT_ERR_UNSUPPORTED, p, "jamba");
    write_text(dir, "config.json", "{\"architectures\": [\"GPT2LMHeadModel\"], \"model_type\": \"gpt2\"}");
    expect_open_error(dir, MT_ERR_UNSUPPORTED, p, "gpt2");
    free(p);
    tu_rmtree(dir);
    free(dir);

    /* Config but no weights; nothing at all. */
    dir = tu_mkdtemp();
    link_model_file(dir, "config.json");
    expect_open_error(dir, MT_ERR_NOT_FOUND, dir, "model.safetensors");
    p = join(dir, "nothing-here");
    expect_open_error(p, MT_ERR_NOT_FOUND, p, NULL);
    free(p);
    /* A file that is neither GGUF nor safetensors. */
    write_text(dir, "junk.bin", "hello");
    p = join(dir, "junk.bin");
    expect_open_error(p, MT_ERR_FORMAT, p, NULL);
    free(p);
    tu_rmtree(dir);
    free(dir);
}

/* ---- tiny models written here -------------------------------------------- */

enum { TV = 16, TH = 8, TNH = 2, TKV = 1, THD = 4, TF = 4, TL = 2, TE = 3 };

typedef struct {
    char name[96];
    int nd;
    int64_t shape[4]; /* PyTorch order */
} tspec;

typedef struct {
    tspec t[128];
    int n;
} tlist;

static void add(tlist *l, int nd, int64_t a, int64_t b, int64_t c, const char *fmt, ...) {
    tspec *s = &l->t[l->n++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->name, sizeof s->name, fmt, ap);
    va_end(ap);
    s->nd = nd;
    s->shape[0] = a;
    s->shape[1] = b;
    s->shape[2] = c;
}

static int64_t numel(const tspec *s) {
    int64_t n = 1;
    for (int d = 0; d < s->nd; d++) n *= s->shape[d];
    return n;
}

/* Value of element i of tensor k: identifies both. */
static float tval(int k, int64_t i) { return (float)(k * 1000 + i); }

static void write_values(FILE *f, const tlist *l) {
    for (int k = 0; k < l->n; k++)
        for (int64_t i = 0; i < numel(&l->t[k]); i++) {
            float v = tval(k, i);
            fwrite(&v, 4, 1, f);
        }
}

static void write_tiny_st(const char *path, const tlist *l) {
    char *hdr = malloc(65536);
    size_t k = 0, off = 0;
    k += (size_t)snprintf(hdr + k, 65536 - k, "{\"__metadata__\": {\"format\": \"pt\"}");
    for (int i = 0; i < l->n; i++) {
        const tspec *s = &l->t[i];
        k += (size_t)snprintf(hdr + k, 65536 - k, ", \"%s\": {\"dtype\": \"F32\", \"shape\": [", s->name);
        for (int d = 0; d < s->nd; d++) k += (size_t)snprintf(hdr + k, 65536 - k, d ? ", %lld" : "%lld", (long long)s->shape[d]);
        size_t nb = 4 * (size_t)numel(s);
        k += (size_t)snprintf(hdr + k, 65536 - k, "], \"data_offsets\": [%zu, %zu]}", off, off + nb);
        off += nb;
    }
    k += (size_t)snprintf(hdr + k, 65536 - k, "}");
    while (k % 8) hdr[k++] = ' ';
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    uint64_t hl = k;
    fwrite(&hl, 8, 1, f);
    fwrite(hdr, 1, k, f);
    write_values(f, l);
    fclose(f);
    free(hdr);
}

static const char *tiny_cfg(int moe, int tie) {
    static char buf[1024];
    snprintf(buf, sizeof buf,
             "{\"model_type\": \"%s\", \"vocab_size\": %d, \"hidden_size\": %d, \"intermediate_size\": %d,"
             " \"num_hidden_layers\": %d, \"num_attention_heads\": %d, \"num_key_value_heads\": %d,"
             " \"head_dim\": %d, \"num_local_experts\": %d, \"num_experts_per_tok\": 2,"
             " \"tie_word_embeddings\": %s %s}",
             moe ? "mixtral" : "mistral", TV, TH, TF, TL, TNH, TKV, THD, TE, tie ? "true" : "false",
             moe ? ", \"moe_layer_experts\": [3, 2]" : "");
    return buf;
}

/* HF tensor list; layer 1 of the MoE model has 2 experts. */
static void hf_tensors(tlist *l, int moe, int tie) {
    l->n = 0;
    add(l, 2, TV, TH, 0, "model.embed_tokens.weight");
    add(l, 1, TH, 0, 0, "model.norm.weight");
    if (!tie) add(l, 2, TV, TH, 0, "lm_head.weight");
    for (int L = 0; L < TL; L++) {
        add(l, 1, TH, 0, 0, "model.layers.%d.input_layernorm.weight", L);
        add(l, 1, TH, 0, 0, "model.layers.%d.post_attention_layernorm.weight", L);
        add(l, 2, TNH * THD, TH, 0, "model.layers.%d.self_attn.q_proj.weight", L);
        add(l, 2, TKV * THD, TH, 0, "model.layers.%d.self_attn.k_proj.weight", L);
        add(l, 2, TKV * THD, TH, 0, "model.layers.%d.self_attn.v_proj.weight", L);
        add(l, 2, TH, TNH * THD, 0, "model.layers.%d.self_attn.o_proj.weight", L);
        if (moe) {
            int E = L == 0 ? 3 : 2;
            add(l, 2, E, TH, 0, "model.layers.%d.block_sparse_moe.gate.weight", L);
            for (int e = 0; e < E; e++) {
                add(l, 2, TF, TH, 0, "model.layers.%d.block_sparse_moe.experts.%d.w1.weight", L, e);
                add(l, 2, TH, TF, 0, "model.layers.%d.block_sparse_moe.experts.%d.w2.weight", L, e);
                add(l, 2, TF, TH, 0, "model.layers.%d.block_sparse_moe.experts.%d.w3.weight", L, e);
            }
        } else {
            add(l, 2, TF, TH, 0, "model.layers.%d.mlp.gate_proj.weight", L);
            add(l, 2, TF, TH, 0, "model.layers.%d.mlp.up_proj.weight", L);
            add(l, 2, TH, TF, 0, "model.layers.%d.mlp.down_proj.weight", L);
        }
    }
}

static int index_of(const tlist *l, const char *name) {
    for (int k = 0; k < l->n; k++)
        if (!strcmp(l->t[k].name, name)) return k;
    fail_msg("no tensor %s in the list", name);
    return -1;
}

/* The matrix holds tensor `name` starting at element `first`. */
static void check_mat(const mt_mat *m, const tlist *l, const char *name, int64_t first, int64_t rows, int64_t cols) {
    int k = index_of(l, name);
    assert_int_equal(m->dtype, MT_DT_F32);
    assert_int_equal(m->rows, rows);
    assert_int_equal(m->cols, cols);
    assert_int_equal(m->row_stride, 4 * cols);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            float v;
            memcpy(&v, (const char *)m->data + r * m->row_stride + 4 * c, 4);
            if (v != tval(k, first + r * cols + c))
                fail_msg("%s: element (%lld, %lld) is %g, want %g", name, (long long)r, (long long)c, v,
                         tval(k, first + r * cols + c));
        }
}

static void test_tiny_hf(void **state) {
    (void)state;
    for (int moe = 0; moe < 2; moe++)
        for (int tie = 0; tie < 2; tie++) {
            char *dir = tu_mkdtemp();
            tlist l;
            hf_tensors(&l, moe, tie);
            char *p = join(dir, "model.safetensors");
            write_tiny_st(p, &l);
            free(p);
            write_text(dir, "config.json", tiny_cfg(moe, tie));
            mt_ckpt *ck = NULL;
            if (mt_ckpt_open(&ck, dir) != MT_OK) fail_msg("%s", mt_last_error());
            assert_int_equal(mt_ckpt_count(ck), l.n);
            assert_null(mt_ckpt_tokenizer_files(ck)->spm_model_path);
            mt_weights w;
            if (mt_weights_init(&w, ck) != MT_OK) fail_msg("%s", mt_last_error());
            check_mat(&w.tok_embd, &l, "model.embed_tokens.weight", 0, TV, TH);
            check_mat(&w.out_norm, &l, "model.norm.weight", 0, 1, TH);
            if (tie) assert_ptr_equal(w.lm_head.data, w.tok_embd.data);
            else check_mat(&w.lm_head, &l, "lm_head.weight", 0, TV, TH);
            char n[128];
            for (int L = 0; L < TL; L++) {
                const mt_layer_weights *Lw = &w.layers[L];
                snprintf(n, sizeof n, "model.layers.%d.self_attn.o_proj.weight", L);
                check_mat(&Lw->wo, &l, n, 0, TH, TNH * THD);
                snprintf(n, sizeof n, "model.layers.%d.post_attention_layernorm.weight", L);
                check_mat(&Lw->ffn_norm, &l, n, 0, 1, TH);
                if (!moe) {
                    assert_int_equal(Lw->n_experts, 0);
                    snprintf(n, sizeof n, "model.layers.%d.mlp.down_proj.weight", L);
                    check_mat(&Lw->w2[0], &l, n, 0, TH, TF);
                    snprintf(n, sizeof n, "model.layers.%d.mlp.up_proj.weight", L);
                    check_mat(&Lw->w3[0], &l, n, 0, TF, TH);
                    continue;
                }
                int E = L == 0 ? 3 : 2;
                assert_int_equal(Lw->n_experts, E);
                snprintf(n, sizeof n, "model.layers.%d.block_sparse_moe.gate.weight", L);
                check_mat(&Lw->router, &l, n, 0, E, TH);
                for (int e = 0; e < E; e++) {
                    snprintf(n, sizeof n, "model.layers.%d.block_sparse_moe.experts.%d.w1.weight", L, e);
                    check_mat(&Lw->w1[e], &l, n, 0, TF, TH);
                    snprintf(n, sizeof n, "model.layers.%d.block_sparse_moe.experts.%d.w2.weight", L, e);
                    check_mat(&Lw->w2[e], &l, n, 0, TH, TF);
                }
            }
            mt_weights_free(&w);
            mt_ckpt_free(ck);
            tu_rmtree(dir);
            free(dir);
        }
}

/* Shape, type and presence problems found by mt_weights_init. */
static void test_tiny_hf_mismatch(void **state) {
    (void)state;
    struct {
        const char *tensor;
        int64_t a, b;        /* replacement shape (2-D), or a < 0: remove it */
        int status;
        const char *part;
    } cases[] = {
        {"model.layers.1.self_attn.k_proj.weight", 8, 8, MT_ERR_FORMAT, "has shape [8, 8], expected [4, 8]"},
        {"model.layers.0.block_sparse_moe.gate.weight", 2, 8, MT_ERR_FORMAT, "expected [3, 8]"},
        {"model.layers.1.block_sparse_moe.experts.1.w2.weight", 4, 8, MT_ERR_FORMAT, "expected [8, 4]"},
        {"model.norm.weight", 1, 8, MT_ERR_FORMAT, "expected [8]"},
        {"lm_head.weight", -1, 0, MT_ERR_NOT_FOUND, "lm_head.weight is missing"},
        {"model.layers.0.block_sparse_moe.experts.2.w3.weight", -1, 0, MT_ERR_NOT_FOUND, "experts.2.w3.weight"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *dir = tu_mkdtemp();
        tlist l;
        hf_tensors(&l, 1, 0);
        int k = index_of(&l, cases[i].tensor);
        if (cases[i].a < 0) {
            l.t[k] = l.t[--l.n];
        } else {
            l.t[k].nd = cases[i].b ? 2 : 1;
            l.t[k].shape[0] = cases[i].a;
            l.t[k].shape[1] = cases[i].b;
        }
        char *p = join(dir, "model.safetensors");
        write_tiny_st(p, &l);
        free(p);
        write_text(dir, "config.json", tiny_cfg(1, 0));
        mt_ckpt *ck = NULL;
        assert_int_equal(mt_ckpt_open(&ck, dir), MT_OK);
        mt_weights w;
        int rc = mt_weights_init(&w, ck);
        if (rc != cases[i].status || !strstr(mt_last_error(), cases[i].part) || !strstr(mt_last_error(), dir))
            fail_msg("%s: got %s \"%s\", want %s with \"%s\"", cases[i].tensor, mt_status_name(rc), mt_last_error(),
                     mt_status_name(cases[i].status), cases[i].part);
        assert_null(w.layers);
        mt_ckpt_free(ck);
        tu_rmtree(dir);
        free(dir);
    }

    /* A weight stored as integers cannot be run. */
    char *dir = tu_mkdtemp();
    tlist l;
    hf_tensors(&l, 0, 1);
    char *p = join(dir, "model.safetensors");
    write_tiny_st(p, &l);
    /* flip the dtype of model.norm.weight to I32 in place (same size) */
    size_t len;
    char *b = tu_read_file(p, &len);
    const char *pat = "\"model.norm.weight\": {\"dtype\": \"F32\"";
    char *at = memmem(b, len, pat, strlen(pat));
    assert_non_null(at);
    memcpy(strstr(at, "F32"), "I32", 3);
    FILE *f = fopen(p, "wb");
    fwrite(b, 1, len, f);
    fclose(f);
    free(b);
    free(p);
    write_text(dir, "config.json", tiny_cfg(0, 1));
    mt_ckpt *ck = NULL;
    assert_int_equal(mt_ckpt_open(&ck, dir), MT_OK);
    mt_weights w;
    assert_int_equal(mt_weights_init(&w, ck), MT_ERR_UNSUPPORTED);
    assert_non_null(strstr(mt_last_error(), "model.norm.weight"));
    assert_non_null(strstr(mt_last_error(), "i32"));
    mt_ckpt_free(ck);
    tu_rmtree(dir);
    free(dir);
}

/* ---- GGUF written here (GGUF v3, f32 tensors) ------------------------------ */

typedef struct {
    uint8_t *b;
    size_t n, cap;
} gbuf;

static void put(gbuf *g, const void *p, size_t n) {
    if (g->n + n > g->cap) {
        g->cap = (g->n + n) * 2 + 1024;
        g->b = realloc(g->b, g->cap);
    }
    memcpy(g->b + g->n, p, n);
    g->n += n;
}
static void put_u32(gbuf *g, uint32_t v) { put(g, &v, 4); }
static void put_u64(gbuf *g, uint64_t v) { put(g, &v, 8); }
static void put_str(gbuf *g, const char *s) {
    put_u64(g, strlen(s));
    put(g, s, strlen(s));
}
static void kv_u32(gbuf *g, const char *k, uint32_t v) {
    put_str(g, k);
    put_u32(g, MT_GGUF_UINT32);
    put_u32(g, v);
}
static void kv_f32(gbuf *g, const char *k, float v) {
    put_str(g, k);
    put_u32(g, MT_GGUF_FLOAT32);
    put(g, &v, 4);
}
static void kv_str(gbuf *g, const char *k, const char *v) {
    put_str(g, k);
    put_u32(g, MT_GGUF_STRING);
    put_str(g, v);
}

/* variant: 0 merged 3-D experts, 1 per-expert 2-D, 2 dense; tie: no output.weight */
static void gguf_tensors(tlist *l, int variant, int tie) {
    l->n = 0;
    add(l, 2, TV, TH, 0, "token_embd.weight");
    add(l, 1, TH, 0, 0, "output_norm.weight");
    if (!tie) add(l, 2, TV, TH, 0, "output.weight");
    for (int L = 0; L < TL; L++) {
        int E = variant == 2 ? 0 : (L == 0 ? 3 : 2);
        add(l, 1, TH, 0, 0, "blk.%d.attn_norm.weight", L);
        add(l, 2, TNH * THD, TH, 0, "blk.%d.attn_q.weight", L);
        add(l, 2, TKV * THD, TH, 0, "blk.%d.attn_k.weight", L);
        add(l, 2, TKV * THD, TH, 0, "blk.%d.attn_v.weight", L);
        add(l, 2, TH, TNH * THD, 0, "blk.%d.attn_output.weight", L);
        add(l, 1, TH, 0, 0, "blk.%d.ffn_norm.weight", L);
        if (variant == 2) {
            add(l, 2, TF, TH, 0, "blk.%d.ffn_gate.weight", L);
            add(l, 2, TF, TH, 0, "blk.%d.ffn_up.weight", L);
            add(l, 2, TH, TF, 0, "blk.%d.ffn_down.weight", L);
            continue;
        }
        add(l, 2, E, TH, 0, "blk.%d.ffn_gate_inp.weight", L);
        if (variant == 0) {
            add(l, 3, E, TF, TH, "blk.%d.ffn_gate_exps.weight", L);
            add(l, 3, E, TF, TH, "blk.%d.ffn_up_exps.weight", L);
            add(l, 3, E, TH, TF, "blk.%d.ffn_down_exps.weight", L);
        } else {
            for (int e = 0; e < E; e++) {
                add(l, 2, TF, TH, 0, "blk.%d.ffn_gate.%d.weight", L, e);
                add(l, 2, TF, TH, 0, "blk.%d.ffn_up.%d.weight", L, e);
                add(l, 2, TH, TF, 0, "blk.%d.ffn_down.%d.weight", L, e);
            }
        }
    }
}

static void write_tiny_gguf(const char *path, const tlist *l, int moe, const char *arch) {
    gbuf g = {0};
    put(&g, "GGUF", 4);
    put_u32(&g, 3);
    put_u64(&g, (uint64_t)l->n);
    put_u64(&g, moe ? 14 : 11);
    kv_str(&g, "general.architecture", arch);
    kv_u32(&g, "llama.block_count", TL);
    kv_u32(&g, "llama.embedding_length", TH);
    kv_u32(&g, "llama.feed_forward_length", TF);
    kv_u32(&g, "llama.attention.head_count", TNH);
    kv_u32(&g, "llama.attention.head_count_kv", TKV);
    kv_f32(&g, "llama.rope.freq_base", 1e6f);
    kv_f32(&g, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    kv_u32(&g, "llama.context_length", 256);
    kv_u32(&g, "tokenizer.ggml.bos_token_id", 1);
    kv_u32(&g, "tokenizer.ggml.eos_token_id", 2);
    if (moe) {
        kv_u32(&g, "llama.expert_count", TE);
        kv_u32(&g, "llama.expert_used_count", 2);
        put_str(&g, "moetool.layer_experts");
        put_u32(&g, MT_GGUF_ARRAY);
        put_u32(&g, MT_GGUF_UINT32);
        put_u64(&g, 2);
        put_u32(&g, 3);
        put_u32(&g, 2);
    }
    uint64_t off = 0;
    for (int k = 0; k < l->n; k++) {
        const tspec *s = &l->t[k];
        put_str(&g, s->name);
        put_u32(&g, (uint32_t)s->nd);
        for (int d = s->nd - 1; d >= 0; d--) put_u64(&g, (uint64_t)s->shape[d]); /* ne: innermost first */
        put_u32(&g, 0);                                                           /* GGML_TYPE_F32 */
        put_u64(&g, off);
        off += (uint64_t)(4 * numel(s) + 31) / 32 * 32;
    }
    static const uint8_t zeros[32];
    put(&g, zeros, (32 - g.n % 32) % 32);
    for (int k = 0; k < l->n; k++) {
        for (int64_t i = 0; i < numel(&l->t[k]); i++) {
            float v = tval(k, i);
            put(&g, &v, 4);
        }
        put(&g, zeros, (size_t)((32 - (4 * numel(&l->t[k])) % 32) % 32));
    }
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(g.b, 1, g.n, f), g.n);
    fclose(f);
    free(g.b);
}

static void test_tiny_gguf(void **state) {
    (void)state;
    for (int variant = 0; variant < 3; variant++)
        for (int tie = 0; tie < 2; tie++) {
            char *dir = tu_mkdtemp();
            char *p = join(dir, "tiny.gguf"); /* the name does not matter: content does */
            tlist l;
            gguf_tensors(&l, variant, tie);
            write_tiny_gguf(p, &l, variant != 2, "llama");
            mt_ckpt *ck = NULL;
            if (mt_ckpt_open(&ck, p) != MT_OK) fail_msg("variant %d: %s", variant, mt_last_error());
            assert_int_equal(mt_ckpt_format(ck), MT_FMT_GGUF);
            assert_non_null(mt_ckpt_gguf(ck));
            assert_int_equal(mt_ckpt_file_bytes(ck), fsize(p));
            const mt_config *c = mt_ckpt_config(ck);
            assert_string_equal(c->arch, variant == 2 ? "llama" : "mixtral");
            assert_int_equal(c->n_layers, TL);
            assert_int_equal(c->hidden, TH);
            assert_int_equal(c->ffn, TF);
            assert_int_equal(c->n_heads, TNH);
            assert_int_equal(c->n_kv_heads, TKV);
            assert_int_equal(c->head_dim, THD);
            assert_int_equal(c->vocab, TV); /* from token_embd rows */
            assert_int_equal(c->n_experts, variant == 2 ? 0 : TE);
            assert_int_equal(c->top_k, variant == 2 ? 0 : 2);
            assert_true(c->rope_theta == 1e6f);
            assert_int_equal(c->max_pos, 256);
            assert_int_equal(c->bos_id, 1);
            assert_int_equal(c->eos_id, 2);
            assert_int_equal(c->tie_embeddings, tie);
            assert_int_equal(c->rope_style, MT_ROPE_INTERLEAVED);
            mt_weights w;
            if (mt_weights_init(&w, ck) != MT_OK) fail_msg("variant %d: %s", variant, mt_last_error());
            check_mat(&w.tok_embd, &l, "token_embd.weight", 0, TV, TH);
            if (tie) assert_ptr_equal(w.lm_head.data, w.tok_embd.data);
            else check_mat(&w.lm_head, &l, "output.weight", 0, TV, TH);
            char n[128];
            for (int L = 0; L < TL; L++) {
                const mt_layer_weights *Lw = &w.layers[L];
                snprintf(n, sizeof n, "blk.%d.attn_q.weight", L);
                check_mat(&Lw->wq, &l, n, 0, TNH * THD, TH);
                snprintf(n, sizeof n, "blk.%d.attn_norm.weight", L);
                check_mat(&Lw->attn_norm, &l, n, 0, 1, TH);
                if (variant == 2) {
                    assert_int_equal(Lw->n_experts, 0);
                    snprintf(n, sizeof n, "blk.%d.ffn_gate.weight", L);
                    check_mat(&Lw->w1[0], &l, n, 0, TF, TH);
                    snprintf(n, sizeof n, "blk.%d.ffn_down.weight", L);
                    check_mat(&Lw->w2[0], &l, n, 0, TH, TF);
                    continue;
                }
                int E = L == 0 ? 3 : 2;
                assert_int_equal(Lw->n_experts, E);
                snprintf(n, sizeof n, "blk.%d.ffn_gate_inp.weight", L);
                check_mat(&Lw->router, &l, n, 0, E, TH);
                for (int e = 0; e < E; e++) {
                    if (variant == 0) {
                        snprintf(n, sizeof n, "blk.%d.ffn_gate_exps.weight", L);
                        check_mat(&Lw->w1[e], &l, n, (int64_t)e * TF * TH, TF, TH);
                        snprintf(n, sizeof n, "blk.%d.ffn_up_exps.weight", L);
                        check_mat(&Lw->w3[e], &l, n, (int64_t)e * TF * TH, TF, TH);
                        snprintf(n, sizeof n, "blk.%d.ffn_down_exps.weight", L);
                        check_mat(&Lw->w2[e], &l, n, (int64_t)e * TH * TF, TH, TF);
                    } else {
                        snprintf(n, sizeof n, "blk.%d.ffn_gate.%d.weight", L, e);
                        check_mat(&Lw->w1[e], &l, n, 0, TF, TH);
                        snprintf(n, sizeof n, "blk.%d.ffn_down.%d.weight", L, e);
                        check_mat(&Lw->w2[e], &l, n, 0, TH, TF);
                    }
                }
            }
            mt_weights_free(&w);
            mt_ckpt_free(ck);
            free(p);
            tu_rmtree(dir);
            free(dir);
        }

    /* Another architecture is refused, naming it; merged experts of the wrong
     * count are a shape error. */
    char *dir = tu_mkdtemp();
    char *p = join(dir, "m.gguf");
    tlist l;
    gguf_tensors(&l, 0, 0);
    write_tiny_gguf(p, &l, 1, "jamba");
    expect_open_error(p, MT_ERR_UNSUPPORTED, p, "jamba");
    int k = index_of(&l, "blk.1.ffn_up_exps.weight");
    l.t[k].shape[0] = 3;
    write_tiny_gguf(p, &l, 1, "llama");
    mt_ckpt *ck = NULL;
    assert_int_equal(mt_ckpt_open(&ck, p), MT_OK);
    mt_weights w;
    assert_int_equal(mt_weights_init(&w, ck), MT_ERR_FORMAT);
    assert_non_null(strstr(mt_last_error(), "blk.1.ffn_up_exps.weight has shape [3, 4, 8], expected [2, 4, 8]"));
    mt_ckpt_free(ck);
    free(p);
    tu_rmtree(dir);
    free(dir);
}

/* ---- the bundled model as llama.cpp's gguf package writes it --------------
 * When the `gguf` and `numpy` Python packages are importable, this script
 * (llama.cpp's own writer and its key/tensor-name constants, independent of
 * our GGUF code) writes the bundled model as f32 GGUF the way
 * convert_hf_to_gguf.py does for Mixtral: arch "llama", Q/K rows permuted for
 * interleaved RoPE, merged 3-D expert tensors, router ffn_gate_inp. The test
 * then checks every matrix of the GGUF view against the HF view. */
static const char *k_gguf_script =
    "import json, struct, sys, numpy as np, gguf\n"
    "src, out = sys.argv[1], sys.argv[2]\n"
    "cfg = json.load(open(src + '/config.json'))\n"
    "wm = json.load(open(src + '/model.safetensors.index.json'))['weight_map']\n"
    "def load(fn):\n"
    "    b = open(src + '/' + fn, 'rb').read(); n = struct.unpack('<Q', b[:8])[0]\n"
    "    h = json.loads(b[8:8 + n]); r = {}\n"
    "    for k, v in h.items():\n"
    "        if k == '__metadata__': continue\n"
    "        s, e = v['data_offsets']; u = np.frombuffer(b[8 + n + s:8 + n + e], dtype='<u2')\n"
    "        r[k] = (u.astype(np.uint32) << 16).view(np.float32).reshape(v['shape'])\n"
    "    return r\n"
    "T = {}\n"
    "for fn in sorted(set(wm.values())): T.update(load(fn))\n"
    "H, nh, nkv, L, E = cfg['hidden_size'], cfg['num_attention_heads'], cfg['num_key_value_heads'], cfg['num_hidden_layers'], cfg['num_local_experts']\n"
    "def permute(w, n):\n"
    "    return w.reshape(n, 2, w.shape[0] // n // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)\n"
    "N = lambda t, **k: gguf.TENSOR_NAMES[t].format(**k) + '.weight'\n"
    "M = gguf.MODEL_TENSOR\n"
    "w = gguf.GGUFWriter(out, 'llama')\n"
    "w.add_block_count(L); w.add_context_length(cfg['max_position_embeddings'])\n"
    "w.add_embedding_length(H); w.add_feed_forward_length(cfg['intermediate_size'])\n"
    "w.add_head_count(nh); w.add_head_count_kv(nkv); w.add_key_length(cfg['head_dim']); w.add_value_length(cfg['head_dim'])\n"
    "w.add_rope_freq_base(cfg['rope_theta']); w.add_layer_norm_rms_eps(cfg['rms_norm_eps'])\n"
    "w.add_expert_count(E); w.add_expert_used_count(cfg['num_experts_per_tok'])\n"
    "w.add_bos_token_id(cfg['bos_token_id']); w.add_eos_token_id(cfg['eos_token_id'])\n"
    "w.add_tensor(N(M.TOKEN_EMBD), T['model.embed_tokens.weight'])\n"
    "w.add_tensor(N(M.OUTPUT_NORM), T['model.norm.weight'])\n"
    "w.add_tensor(N(M.OUTPUT), T['lm_head.weight'])\n"
    "for l in range(L):\n"
    "    p = 'model.layers.%d.' % l\n"
    "    w.add_tensor(N(M.ATTN_NORM, bid=l), T[p + 'input_layernorm.weight'])\n"
    "    w.add_tensor(N(M.ATTN_Q, bid=l), permute(T[p + 'self_attn.q_proj.weight'], nh))\n"
    "    w.add_tensor(N(M.ATTN_K, bid=l), permute(T[p + 'self_attn.k_proj.weight'], nkv))\n"
    "    w.add_tensor(N(M.ATTN_V, bid=l), T[p + 'self_attn.v_proj.weight'])\n"
    "    w.add_tensor(N(M.ATTN_OUT, bid=l), T[p + 'self_attn.o_proj.weight'])\n"
    "    w.add_tensor(N(M.FFN_NORM, bid=l), T[p + 'post_attention_layernorm.weight'])\n"
    "    w.add_tensor(N(M.FFN_GATE_INP, bid=l), T[p + 'block_sparse_moe.gate.weight'])\n"
    "    for t, k in ((M.FFN_GATE_EXP, 'w1'), (M.FFN_DOWN_EXP, 'w2'), (M.FFN_UP_EXP, 'w3')):\n"
    "        w.add_tensor(N(t, bid=l), np.stack([T[p + 'block_sparse_moe.experts.%d.%s.weight' % (e, k)] for e in range(E)]))\n"
    "w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()\n";

/* Element (r, c) of a matrix as f32. */
static float mat_at(const mt_mat *m, int64_t r, int64_t c) {
    const uint8_t *row = (const uint8_t *)m->data + r * m->row_stride;
    if (m->dtype == MT_DT_F32) {
        float v;
        memcpy(&v, row + 4 * c, 4);
        return v;
    }
    uint16_t h;
    memcpy(&h, row + 2 * c, 2);
    return m->dtype == MT_DT_BF16 ? mt_bf16_to_f32(h) : mt_f16_to_f32(h);
}

/* a (GGUF) equals b (HF); `perm_heads` > 0: a's rows are b's permuted for
 * interleaved RoPE with that many heads. */
static void same_mat(const mt_mat *a, const mt_mat *b, int perm_heads, const char *what, int l) {
    assert_int_equal(a->rows, b->rows);
    assert_int_equal(a->cols, b->cols);
    int64_t hd = perm_heads ? a->rows / perm_heads : 0;
    for (int64_t r = 0; r < a->rows; r++) {
        int64_t src = r;
        if (perm_heads) { /* row h*hd + 2j + s came from h*hd + s*hd/2 + j */
            int64_t h = r / hd, j = (r % hd) / 2, s = r % 2;
            src = h * hd + s * (hd / 2) + j;
        }
        for (int64_t c = 0; c < a->cols; c++)
            if (mat_at(a, r, c) != mat_at(b, src, c))
                fail_msg("layer %d %s (%lld, %lld): gguf %g, hf %g", l, what, (long long)r, (long long)c,
                         mat_at(a, r, c), mat_at(b, src, c));
    }
}

static void test_gguf_from_python(void **state) {
    (void)state;
    if (system("python3 -c 'import gguf, numpy' >/dev/null 2>&1") != 0) {
        skip();
        return;
    }
    char *dir = tu_mkdtemp();
    write_text(dir, "make_gguf.py", k_gguf_script);
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "python3 %s/make_gguf.py %s %s/model.gguf >%s/log.txt 2>&1", dir, tu_model_dir(), dir, dir);
    if (system(cmd) != 0) {
        char *p = join(dir, "log.txt");
        char *log = tu_read_file(p, NULL);
        fail_msg("gguf script failed: %s", log ? log : "?");
    }
    char *p = join(dir, "model.gguf");
    mt_ckpt *g = NULL, *h = NULL;
    if (mt_ckpt_open(&g, p) != MT_OK) fail_msg("%s", mt_last_error());
    assert_int_equal(mt_ckpt_open(&h, tu_model_dir()), MT_OK);
    mt_config cg = *mt_ckpt_config(g), ch = *mt_ckpt_config(h);
    assert_int_equal(cg.rope_style, MT_ROPE_INTERLEAVED);
    assert_int_equal(cg.tie_embeddings, 0);
    cg.rope_style = ch.rope_style;
    cg.max_pos = ch.max_pos;
    assert_true(mt_config_equal(&cg, &ch)); /* same description otherwise */
    mt_weights wg, wh;
    if (mt_weights_init(&wg, g) != MT_OK) fail_msg("%s", mt_last_error());
    assert_int_equal(mt_weights_init(&wh, h), MT_OK);
    same_mat(&wg.tok_embd, &wh.tok_embd, 0, "tok_embd", -1);
    same_mat(&wg.lm_head, &wh.lm_head, 0, "lm_head", -1);
    same_mat(&wg.out_norm, &wh.out_norm, 0, "out_norm", -1);
    for (int l = 0; l < ch.n_layers; l++) {
        const mt_layer_weights *a = &wg.layers[l], *b = &wh.layers[l];
        same_mat(&a->attn_norm, &b->attn_norm, 0, "attn_norm", l);
        same_mat(&a->ffn_norm, &b->ffn_norm, 0, "ffn_norm", l);
        same_mat(&a->wq, &b->wq, ch.n_heads, "wq", l);
        same_mat(&a->wk, &b->wk, ch.n_kv_heads, "wk", l);
        same_mat(&a->wv, &b->wv, 0, "wv", l);
        same_mat(&a->wo, &b->wo, 0, "wo", l);
        same_mat(&a->router, &b->router, 0, "router", l);
        for (int e = 0; e < ch.n_experts; e++) {
            same_mat(&a->w1[e], &b->w1[e], 0, "w1", l);
            same_mat(&a->w2[e], &b->w2[e], 0, "w2", l);
            same_mat(&a->w3[e], &b->w3[e], 0, "w3", l);
        }
    }
    mt_weights_free(&wg);
    mt_weights_free(&wh);
    mt_ckpt_free(g);
    mt_ckpt_free(h);
    free(p);
    tu_rmtree(dir);
    free(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bundled_hf_dir),
        cmocka_unit_test(test_bundled_weights),
        cmocka_unit_test(test_single_shard),
        cmocka_unit_test(test_bad_dirs),
        cmocka_unit_test(test_tiny_hf),
        cmocka_unit_test(test_tiny_hf_mismatch),
        cmocka_unit_test(test_tiny_gguf),
        cmocka_unit_test(test_gguf_from_python),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
