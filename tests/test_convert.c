/* test_convert.c — mt_convert on the bundled model: HF -> GGUF -> HF is
 * bit-identical; GGUF tensors follow llama.cpp's layout (Q/K permutation
 * recomputed here independently, merged experts, F32 norms and router);
 * q8_0 stays within its error bound; HF resharding and retyping; GGUF ->
 * GGUF retyping; failures leave no output and no temporary behind. The
 * byte-level comparison with llama.cpp's own reader is in
 * cli_gguf_independent.sh. */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "moetool/mt_io.h"
#include "moetool/mt_tokenizer.h"
#include "testutil.h"
#include "writer_impl.h"

static char *g_dir;          /* scratch directory for the whole run */
static char g_bf16[4096];    /* model converted to GGUF, types kept */
static char g_q8[4096];      /* model converted to GGUF q8_0 */

static int conv(const char *in, const char *out, mt_format to, int dtype, uint64_t shard) {
    mt_convert_opts o;
    mt_convert_opts_default(&o);
    o.to = to;
    o.dtype = dtype;
    o.shard_bytes = shard;
    o.moetool_only = 1; /* the synthetic per-layer checkpoints are moetool's own */
    int rc = mt_convert(in, out, &o);
    if (rc) fprintf(stderr, "convert %s -> %s: %s: %s\n", in, out, mt_status_name(rc), mt_last_error());
    return rc;
}

static const char *scratch(const char *name) {
    static char buf[4][4096];
    static int k;
    k = (k + 1) & 3;
    snprintf(buf[k], sizeof buf[k], "%s/%s", g_dir, name);
    return buf[k];
}

static int setup(void **state) {
    (void)state;
    g_dir = tu_mkdtemp();
    if (!g_dir) return -1;
    snprintf(g_bf16, sizeof g_bf16, "%s/model.gguf", g_dir);
    snprintf(g_q8, sizeof g_q8, "%s/model-q8_0.gguf", g_dir);
    if (conv(tu_model_dir(), g_bf16, MT_FMT_GGUF, -1, 0) || conv(tu_model_dir(), g_q8, MT_FMT_GGUF, MT_DT_Q8_0, 0)) {
        tu_rmtree(g_dir); /* cmocka skips the teardown of a failed setup */
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    tu_rmtree(g_dir);
    free(g_dir);
    return 0;
}

/* Every tensor of `a` is in `b` with the same type, shape and bytes. */
static void assert_same_tensors(const mt_ckpt *a, const mt_ckpt *b) {
    assert_int_equal(mt_ckpt_count(a), mt_ckpt_count(b));
    for (size_t i = 0; i < mt_ckpt_count(a); i++) {
        const mt_tensor *x = mt_ckpt_get(a, i);
        const mt_tensor *y = mt_ckpt_find(b, x->name);
        if (!y) fprintf(stderr, "missing %s\n", x->name);
        assert_non_null(y);
        assert_int_equal(x->dtype, y->dtype);
        assert_int_equal(x->n_dims, y->n_dims);
        for (int d = 0; d < x->n_dims; d++) assert_int_equal(x->shape[d], y->shape[d]);
        assert_int_equal(x->nbytes, y->nbytes);
        if (memcmp(x->data, y->data, x->nbytes)) fprintf(stderr, "bytes differ: %s\n", x->name);
        assert_memory_equal(x->data, y->data, x->nbytes);
    }
}

static void test_roundtrip_bit_identical(void **state) {
    (void)state;
    const char *back = scratch("back-hf");
    assert_int_equal(conv(g_bf16, back, MT_FMT_HF, -1, 0), MT_OK);
    mt_ckpt *src, *out;
    assert_int_equal(mt_ckpt_open(&src, tu_model_dir()), MT_OK);
    assert_int_equal(mt_ckpt_open(&out, back), MT_OK);
    assert_int_equal(mt_ckpt_format(out), MT_FMT_HF);
    assert_same_tensors(src, out);
    const mt_config *a = mt_ckpt_config(src), *b = mt_ckpt_config(out);
    assert_int_equal(a->n_layers, b->n_layers);
    assert_int_equal(a->hidden, b->hidden);
    assert_int_equal(a->ffn, b->ffn);
    assert_int_equal(a->n_heads, b->n_heads);
    assert_int_equal(a->n_kv_heads, b->n_kv_heads);
    assert_int_equal(a->head_dim, b->head_dim);
    assert_int_equal(a->vocab, b->vocab);
    assert_int_equal(a->n_experts, b->n_experts);
    assert_int_equal(a->top_k, b->top_k);
    assert_true(a->rope_theta == b->rope_theta);
    assert_true(a->norm_eps == b->norm_eps);
    assert_int_equal(a->bos_id, b->bos_id);
    assert_int_equal(a->eos_id, b->eos_id);
    assert_int_equal(a->tie_embeddings, b->tie_embeddings);
    assert_int_equal(b->rope_style, MT_ROPE_HALF);
    /* config.json says bfloat16 */
    char p[4200];
    snprintf(p, sizeof p, "%s/config.json", back);
    json_t *j = json_load_file(p, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "torch_dtype")), "bfloat16");
    json_decref(j);
    /* the tokenizer survives the trip when the source's can be read */
    mt_tokenizer *t0 = NULL, *t1 = NULL;
    if (mt_tok_load_for_ckpt(&t0, src) == MT_OK) {
        assert_int_equal(mt_tok_load_for_ckpt(&t1, out), MT_OK);
        assert_int_equal(mt_tok_vocab_size(t0), mt_tok_vocab_size(t1));
        for (size_t i = 0; i < mt_tok_vocab_size(t0); i++) {
            size_t l0, l1;
            const char *s0 = mt_tok_piece(t0, (int)i, &l0), *s1 = mt_tok_piece(t1, (int)i, &l1);
            assert_int_equal(l0, l1);
            assert_memory_equal(s0, s1, l0);
            assert_true(mt_tok_score(t0, (int)i) == mt_tok_score(t1, (int)i));
            assert_int_equal(mt_tok_type(t0, (int)i), mt_tok_type(t1, (int)i));
        }
        mt_tok_free(t1);
    } else {
        printf("note: tokenizer not loadable here (%s); tokenizer round trip not checked\n", mt_last_error());
    }
    mt_tok_free(t0);
    mt_ckpt_free(src);
    mt_ckpt_free(out);
}

static int64_t key_i64(const mt_gguf *g, const char *k) {
    int64_t v = -999;
    if (mt_gguf_get_i64(g, k, &v) != MT_OK) fprintf(stderr, "%s\n", mt_last_error());
    return v;
}

static void test_gguf_layout(void **state) {
    (void)state;
    mt_ckpt *src;
    mt_gguf *g;
    assert_int_equal(mt_ckpt_open(&src, tu_model_dir()), MT_OK);
    assert_int_equal(mt_gguf_open(&g, g_bf16), MT_OK);
    const mt_config *c = mt_ckpt_config(src);
    const char *s;
    uint64_t n;
    assert_int_equal(mt_gguf_get_str(g, "general.architecture", &s, &n), MT_OK);
    assert_int_equal(n, 5);
    assert_memory_equal(s, "llama", 5);
    assert_int_equal(key_i64(g, "llama.block_count"), c->n_layers);
    assert_int_equal(key_i64(g, "llama.embedding_length"), c->hidden);
    assert_int_equal(key_i64(g, "llama.feed_forward_length"), c->ffn);
    assert_int_equal(key_i64(g, "llama.attention.head_count"), c->n_heads);
    assert_int_equal(key_i64(g, "llama.attention.head_count_kv"), c->n_kv_heads);
    assert_int_equal(key_i64(g, "llama.rope.dimension_count"), c->head_dim);
    assert_int_equal(key_i64(g, "llama.expert_count"), c->n_experts);
    assert_int_equal(key_i64(g, "llama.expert_used_count"), c->top_k);
    assert_int_equal(key_i64(g, "llama.context_length"), c->max_pos);
    assert_int_equal(key_i64(g, "general.file_type"), 32); /* MOSTLY_BF16 */
    assert_int_equal(mt_gguf_find_key(g, "general.alignment"), -1);
    double eps;
    assert_int_equal(mt_gguf_get_f64(g, "llama.attention.layer_norm_rms_epsilon", &eps), MT_OK);
    assert_true((float)eps == c->norm_eps);
    if (mt_gguf_find_key(g, "tokenizer.ggml.tokens") >= 0) {
        mt_gguf_type et;
        assert_int_equal(mt_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n), MT_OK);
        assert_int_equal(et, MT_GGUF_STRING);
        assert_int_equal(n, (uint64_t)c->vocab);
        assert_int_equal(key_i64(g, "tokenizer.ggml.bos_token_id"), c->bos_id);
        assert_int_equal(key_i64(g, "tokenizer.ggml.eos_token_id"), c->eos_id);
    }
    assert_int_equal(mt_gguf_tensor_count(g), 3 + (size_t)c->n_layers * 10);

    char nm[128], hn[128];
    for (int l = 0; l < c->n_layers; l++) {
        /* Q and K: llama.cpp's permute, written as numpy does it:
         * view rows as [head][j in 0..1][i in 0..hd/2), swap j and i. */
        for (int qk = 0; qk < 2; qk++) {
            int heads = qk ? c->n_kv_heads : c->n_heads, hd = c->head_dim, half = hd / 2;
            snprintf(nm, sizeof nm, "blk.%d.attn_%c.weight", l, qk ? 'k' : 'q');
            snprintf(hn, sizeof hn, "model.layers.%d.self_attn.%c_proj.weight", l, qk ? 'k' : 'q');
            const mt_tensor *gt = mt_gguf_find_tensor(g, nm), *ht = mt_ckpt_find(src, hn);
            assert_non_null(gt);
            assert_non_null(ht);
            assert_int_equal(gt->dtype, MT_DT_BF16);
            assert_int_equal(gt->shape[0], ht->shape[0]);
            size_t rb = (size_t)ht->shape[1] * 2;
            int moved = 0;
            for (int h = 0; h < heads; h++)
                for (int j = 0; j < 2; j++)
                    for (int i = 0; i < half; i++) {
                        size_t from = (size_t)(h * hd + j * half + i), to = (size_t)(h * hd + i * 2 + j);
                        moved += from != to;
                        assert_memory_equal((const uint8_t *)gt->data + to * rb, (const uint8_t *)ht->data + from * rb, rb);
                    }
            assert_true(moved > 0);
        }
        /* V and O are not permuted */
        snprintf(nm, sizeof nm, "blk.%d.attn_v.weight", l);
        snprintf(hn, sizeof hn, "model.layers.%d.self_attn.v_proj.weight", l);
        assert_memory_equal(mt_gguf_find_tensor(g, nm)->data, mt_ckpt_find(src, hn)->data, mt_ckpt_find(src, hn)->nbytes);
        /* merged experts: [E][rows][cols], expert e = HF expert e */
        static const char *const gg[3] = {"gate", "up", "down"}, *const hw[3] = {"w1", "w3", "w2"};
        for (int k = 0; k < 3; k++) {
            snprintf(nm, sizeof nm, "blk.%d.ffn_%s_exps.weight", l, gg[k]);
            const mt_tensor *gt = mt_gguf_find_tensor(g, nm);
            assert_non_null(gt);
            assert_int_equal(gt->n_dims, 3);
            assert_int_equal(gt->shape[0], c->n_experts);
            assert_int_equal(gt->shape[1], k == 2 ? c->hidden : c->ffn);
            assert_int_equal(gt->shape[2], k == 2 ? c->ffn : c->hidden);
            for (int e = 0; e < c->n_experts; e++) {
                snprintf(hn, sizeof hn, "model.layers.%d.block_sparse_moe.experts.%d.%s.weight", l, e, hw[k]);
                const mt_tensor *ht = mt_ckpt_find(src, hn);
                assert_non_null(ht);
                assert_memory_equal((const uint8_t *)gt->data + (size_t)e * ht->nbytes, ht->data, ht->nbytes);
            }
        }
        /* norms and router: F32 holding the bf16 values exactly */
        const char *pairs[3][2] = {{"attn_norm", "input_layernorm"},
                                   {"ffn_norm", "post_attention_layernorm"},
                                   {"ffn_gate_inp", "block_sparse_moe.gate"}};
        for (int k = 0; k < 3; k++) {
            snprintf(nm, sizeof nm, "blk.%d.%s.weight", l, pairs[k][0]);
            snprintf(hn, sizeof hn, "model.layers.%d.%s.weight", l, pairs[k][1]);
            const mt_tensor *gt = mt_gguf_find_tensor(g, nm), *ht = mt_ckpt_find(src, hn);
            assert_non_null(gt);
            assert_non_null(ht);
            assert_int_equal(gt->dtype, MT_DT_F32);
            int64_t numel = mt_tensor_numel(ht);
            assert_int_equal(gt->nbytes, (uint64_t)numel * 4);
            for (int64_t i = 0; i < numel; i++) {
                uint16_t hb;
                float gf;
                memcpy(&hb, (const uint8_t *)ht->data + 2 * i, 2);
                memcpy(&gf, (const uint8_t *)gt->data + 4 * i, 4);
                assert_true(gf == mt_bf16_to_f32(hb));
            }
        }
    }
    assert_non_null(mt_gguf_find_tensor(g, "token_embd.weight"));
    assert_non_null(mt_gguf_find_tensor(g, "output.weight"));
    assert_int_equal(mt_gguf_find_tensor(g, "output_norm.weight")->dtype, MT_DT_F32);
    mt_gguf_free(g);
    mt_ckpt_free(src);
}

/* q8_0: each block within d * (1/2 + 127 * 2^-11) of the bf16 value, where
 * d = amax/127 and the second term bounds the f16 rounding of d. */
static void test_q8_0_error_bound(void **state) {
    (void)state;
    mt_gguf *q, *b;
    assert_int_equal(mt_gguf_open(&q, g_q8), MT_OK);
    assert_int_equal(mt_gguf_open(&b, g_bf16), MT_OK);
    assert_int_equal(key_i64(q, "general.file_type"), 7); /* MOSTLY_Q8_0 */
    assert_int_equal(mt_gguf_tensor_count(q), mt_gguf_tensor_count(b));
    double worst = 0;
    int n_q8 = 0;
    float *x = malloc((1 << 14) * sizeof(float)), *y = malloc((1 << 14) * sizeof(float));
    for (size_t i = 0; i < mt_gguf_tensor_count(q); i++) {
        const mt_tensor *tq = mt_gguf_tensor(q, i), *tb = mt_gguf_find_tensor(b, tq->name);
        assert_non_null(tb);
        if (tb->dtype == MT_DT_F32) { /* norms and router stay F32, untouched */
            assert_int_equal(tq->dtype, MT_DT_F32);
            assert_memory_equal(tq->data, tb->data, tb->nbytes);
            continue;
        }
        assert_int_equal(tq->dtype, MT_DT_Q8_0);
        n_q8++;
        int64_t cols = tq->shape[tq->n_dims - 1], rows = mt_tensor_numel(tq) / cols;
        assert_true(cols <= (1 << 14));
        for (int64_t r = 0; r < rows; r++) {
            assert_int_equal(mt_row_to_f32(MT_DT_Q8_0, (const uint8_t *)tq->data + r * (cols / 32) * 34, x, cols), MT_OK);
            assert_int_equal(mt_row_to_f32(MT_DT_BF16, (const uint8_t *)tb->data + r * cols * 2, y, cols), MT_OK);
            for (int64_t k = 0; k < cols; k += 32) {
                float amax = 0;
                for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(y[k + j]));
                double d = amax / 127.0, bound = d * (0.5 + 127.0 / 2048.0) + 1e-30;
                for (int j = 0; j < 32; j++) {
                    double err = fabs((double)x[k + j] - (double)y[k + j]);
                    if (d > 0 && err / d > worst) worst = err / d;
                    if (err > bound) {
                        fprintf(stderr, "%s row %lld col %lld: %g vs %g (bound %g)\n", tq->name, (long long)r,
                                (long long)(k + j), x[k + j], y[k + j], bound);
                        fail();
                    }
                }
            }
        }
    }
    printf("q8_0: %d tensors, max error %.4f d (bound %.4f d)\n", n_q8, worst, 0.5 + 127.0 / 2048.0);
    assert_true(n_q8 >= 3 + 4 * 7 - 1);
    free(x);
    free(y);
    mt_gguf_free(q);
    mt_gguf_free(b);
}

/* GGUF -> GGUF q8_0 gives the same tensor bytes as HF -> GGUF q8_0, and the
 * metadata is carried over. */
static void test_gguf_retype(void **state) {
    (void)state;
    const char *p = scratch("retyped.gguf");
    assert_int_equal(conv(g_bf16, p, MT_FMT_GGUF, MT_DT_Q8_0, 0), MT_OK);
    mt_gguf *a, *b, *orig;
    assert_int_equal(mt_gguf_open(&a, g_q8), MT_OK);
    assert_int_equal(mt_gguf_open(&b, p), MT_OK);
    assert_int_equal(mt_gguf_open(&orig, g_bf16), MT_OK);
    assert_int_equal(mt_gguf_tensor_count(a), mt_gguf_tensor_count(b));
    for (size_t i = 0; i < mt_gguf_tensor_count(a); i++) {
        const mt_tensor *x = mt_gguf_tensor(a, i), *y = mt_gguf_find_tensor(b, x->name);
        assert_non_null(y);
        assert_int_equal(x->dtype, y->dtype);
        assert_int_equal(x->nbytes, y->nbytes);
        assert_memory_equal(x->data, y->data, x->nbytes);
    }
    /* every key carried over, plus general.quantized_by (the bf16 source is not quantized) */
    assert_int_equal(mt_gguf_key_count(b), mt_gguf_key_count(orig) + 1);
    assert_int_equal(key_i64(b, "general.file_type"), 7);
    assert_int_equal(key_i64(b, "llama.expert_count"), key_i64(orig, "llama.expert_count"));
    mt_gguf_free(a);
    mt_gguf_free(b);
    mt_gguf_free(orig);
}

static int count_entries(const char *dir, const char *needle) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.' && (!needle || strstr(e->d_name, needle))) n++;
    closedir(d);
    return n;
}

/* HF -> HF as f32 in small shards, then back to bf16 in one file: exact. */
static void test_hf_reshard_retype(void **state) {
    (void)state;
    const char *f32 = scratch("f32-sharded"), *bf = scratch("bf16-again");
    assert_int_equal(conv(tu_model_dir(), f32, MT_FMT_HF, MT_DT_F32, 8u << 20), MT_OK);
    int shards = count_entries(f32, ".safetensors");
    printf("f32 copy: %d files named *.safetensors*\n", shards);
    assert_true(shards >= 1 + 60 / 8); /* ~61 MB of f32 in shards of 8 MB, plus the index */
    char p[4200];
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", f32);
    json_t *idx = json_load_file(p, 0, NULL);
    assert_non_null(idx);
    json_t *wm = json_object_get(idx, "weight_map");
    mt_ckpt *src, *a, *b;
    assert_int_equal(mt_ckpt_open(&src, tu_model_dir()), MT_OK);
    assert_int_equal(mt_ckpt_open(&a, f32), MT_OK);
    assert_int_equal(json_object_size(wm), mt_ckpt_count(src));
    uint64_t total = 0;
    for (size_t i = 0; i < mt_ckpt_count(a); i++) {
        const mt_tensor *t = mt_ckpt_get(a, i), *s = mt_ckpt_find(src, t->name);
        assert_non_null(s);
        assert_int_equal(t->dtype, MT_DT_F32);
        total += t->nbytes;
        for (int64_t k = 0; k < mt_tensor_numel(s); k++) {
            uint16_t h;
            float f;
            memcpy(&h, (const uint8_t *)s->data + 2 * k, 2);
            memcpy(&f, (const uint8_t *)t->data + 4 * k, 4);
            assert_true(f == mt_bf16_to_f32(h));
        }
    }
    assert_int_equal(json_integer_value(json_object_get(json_object_get(idx, "metadata"), "total_size")), total);
    json_decref(idx);
    /* side files copied */
    snprintf(p, sizeof p, "%s/tokenizer.model", f32);
    assert_int_equal(access(p, R_OK), 0);
    assert_int_equal(conv(f32, bf, MT_FMT_HF, MT_DT_BF16, 0), MT_OK);
    assert_int_equal(count_entries(bf, ".safetensors"), 1); /* one model.safetensors, no index */
    assert_int_equal(mt_ckpt_open(&b, bf), MT_OK);
    assert_same_tensors(src, b);
    mt_ckpt_free(src);
    mt_ckpt_free(a);
    mt_ckpt_free(b);
}

/* Copies a file, keeping the first `keep` bytes (all when keep == -1) and
 * applying one byte patch (at < 0: none). */
static void copy_patched(const char *from, const char *to, long keep, long at, const void *patch, size_t n) {
    size_t len;
    char *b = tu_read_file(from, &len);
    assert_non_null(b);
    if (at >= 0) memcpy(b + at, patch, n);
    FILE *f = fopen(to, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(b, 1, keep < 0 ? len : (size_t)keep, f), keep < 0 ? len : (size_t)keep);
    fclose(f);
    free(b);
}

static void test_failures_leave_nothing(void **state) {
    (void)state;
    char *d = tu_mkdtemp();
    char out[4200], in[4200];
    /* output directory cannot be created */
    snprintf(out, sizeof out, "%s/no/such/dir/out.gguf", d);
    assert_int_not_equal(conv(tu_model_dir(), out, MT_FMT_GGUF, -1, 0), MT_OK);
    snprintf(out, sizeof out, "%s/no/such/out-hf", d);
    assert_int_not_equal(conv(tu_model_dir(), out, MT_FMT_HF, -1, 0), MT_OK);
    assert_int_equal(count_entries(d, NULL), 0);

    /* bad options */
    assert_int_equal(conv(tu_model_dir(), scratch("x"), MT_FMT_HF, MT_DT_Q8_0, 0), MT_ERR_ARG);
    assert_int_equal(conv(tu_model_dir(), scratch("x"), MT_FMT_SAFETENSORS, -1, 0), MT_ERR_ARG);

    /* a GGUF whose last expert tensor claims ggml type I8: it opens (the
     * bytes fit), and the conversion fails on that tensor after most of the
     * output was written */
    size_t len;
    char *b = tu_read_file(g_bf16, &len);
    assert_non_null(b);
    const char *victim = "blk.3.ffn_down_exps.weight";
    char *hit = memmem(b, len > 1 << 20 ? 1 << 20 : len, victim, strlen(victim));
    assert_non_null(hit);
    long type_at = (long)(hit - b) + (long)strlen(victim) + 4 + 3 * 8;
    uint32_t ty;
    memcpy(&ty, b + type_at, 4);
    assert_int_equal(ty, 30); /* BF16 */
    free(b);
    snprintf(in, sizeof in, "%s/i8.gguf", d);
    uint32_t i8 = 24;
    copy_patched(g_bf16, in, -1, type_at, &i8, 4);
    snprintf(out, sizeof out, "%s/out-hf", d);
    int rc = conv(in, out, MT_FMT_HF, -1, 0);
    assert_int_not_equal(rc, MT_OK);
    assert_non_null(strstr(mt_last_error(), victim));
    assert_int_equal(count_entries(d, NULL), 1); /* only i8.gguf */

    /* a truncated input shard: nothing is written either */
    char hf[4200], p[4400];
    snprintf(hf, sizeof hf, "%s/hf", d);
    mkdir(hf, 0755);
    const char *files[] = {"config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
                           "tokenizer.model"};
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/%s", hf, files[i]);
        copy_patched(tu_model_path(files[i]), p, -1, -1, NULL, 0);
    }
    snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", hf);
    copy_patched(tu_model_path("model-00002-of-00002.safetensors"), p, 1 << 20, -1, NULL, 0);
    snprintf(out, sizeof out, "%s/out.gguf", d);
    assert_int_not_equal(conv(hf, out, MT_FMT_GGUF, -1, 0), MT_OK);
    assert_int_equal(count_entries(d, NULL), 2); /* i8.gguf, hf */
    assert_int_equal(count_entries(hf, ".tmp-"), 0);
    tu_rmtree(d);
    free(d);
}

typedef struct {
    uint64_t last, total;
    int calls, monotonic;
} prog;

static void on_progress(void *user, const char *what, uint64_t done, uint64_t total) {
    prog *p = user;
    if (done < p->last || (p->total && total != p->total)) p->monotonic = 0;
    p->last = done;
    p->total = total;
    p->calls++;
}

static void test_progress(void **state) {
    (void)state;
    prog pr = {0, 0, 0, 1};
    mt_convert_opts o;
    mt_convert_opts_default(&o);
    o.to = MT_FMT_GGUF;
    o.progress = on_progress;
    o.progress_user = &pr;
    assert_int_equal(mt_convert(tu_model_dir(), scratch("progress.gguf"), &o), MT_OK);
    assert_true(pr.calls > 10);
    assert_true(pr.monotonic);
    assert_int_equal(pr.last, pr.total);
    mt_gguf *g;
    assert_int_equal(mt_gguf_open(&g, scratch("progress.gguf")), MT_OK);
    uint64_t sum = 0;
    for (size_t i = 0; i < mt_gguf_tensor_count(g); i++) sum += mt_gguf_tensor(g, i)->nbytes;
    assert_int_equal(sum, pr.total);
    mt_gguf_free(g);
}

/* Writes a tiny random bf16 checkpoint with our HF shard writer (in
 * several shards). moe == 0: dense Llama with tied embeddings, head_dim !=
 * hidden/heads and an ffn of 48 (not whole q8_0 blocks). moe == 1: Mixtral
 * whose layers have 3 and 2 experts (moe_layer_experts). */
static void write_synth(const char *hf, int moe) {
    assert_int_equal(mkdir(hf, 0755), 0);
    char cfg[1024];
    snprintf(cfg, sizeof cfg,
             "{\"architectures\": [\"%s\"], \"model_type\": \"%s\", \"vocab_size\": 64,"
             " \"hidden_size\": 64, \"intermediate_size\": %d, \"num_hidden_layers\": 2,"
             " \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"head_dim\": 32,"
             " \"rms_norm_eps\": 1e-06, \"rope_theta\": 10000.0, \"max_position_embeddings\": 128,"
             " \"tie_word_embeddings\": %s, \"bos_token_id\": 1, \"eos_token_id\": 2, \"torch_dtype\": \"bfloat16\"%s}\n",
             moe ? "MixtralForCausalLM" : "LlamaForCausalLM", moe ? "mixtral" : "llama", moe ? 64 : 48,
             moe ? "false" : "true",
             moe ? ", \"num_local_experts\": 3, \"num_experts_per_tok\": 2, \"moe_layer_experts\": [3, 2]" : "");
    assert_int_equal(mt_write_small_file(hf, "config.json", cfg, strlen(cfg)), MT_OK);
    struct {
        char name[96];
        int nd;
        int64_t shape[2];
    } t[64];
    int n = 0, F = moe ? 64 : 48;
#define T(nm, d0, d1) (snprintf(t[n].name, 96, "%s", nm), t[n].nd = (d1) ? 2 : 1, t[n].shape[0] = d0, t[n].shape[1] = d1, n++)
    T("model.embed_tokens.weight", 64, 64);
    char nm[96];
    for (int l = 0; l < 2; l++) {
#define TL(suffix, d0, d1) (snprintf(nm, sizeof nm, "model.layers.%d.%s", l, suffix), T(nm, d0, d1))
        TL("input_layernorm.weight", 64, 0);
        TL("self_attn.q_proj.weight", 128, 64);
        TL("self_attn.k_proj.weight", 64, 64);
        TL("self_attn.v_proj.weight", 64, 64);
        TL("self_attn.o_proj.weight", 64, 128);
        TL("post_attention_layernorm.weight", 64, 0);
        if (moe) {
            int E = 3 - l;
            TL("block_sparse_moe.gate.weight", E, 64);
            for (int e = 0; e < E; e++) {
                char ex[64];
                snprintf(ex, sizeof ex, "block_sparse_moe.experts.%d.w1.weight", e);
                TL(ex, F, 64);
                snprintf(ex, sizeof ex, "block_sparse_moe.experts.%d.w2.weight", e);
                TL(ex, 64, F);
                snprintf(ex, sizeof ex, "block_sparse_moe.experts.%d.w3.weight", e);
                TL(ex, F, 64);
            }
        } else {
            TL("mlp.gate_proj.weight", F, 64);
            TL("mlp.up_proj.weight", F, 64);
            TL("mlp.down_proj.weight", 64, F);
        }
#undef TL
    }
    T("model.norm.weight", 64, 0);
    if (moe) T("lm_head.weight", 64, 64);
#undef T
    mt_hf_writer *w;
    assert_int_equal(mt_hf_writer_open(&w, hf, 40000), MT_OK);
    for (int i = 0; i < n; i++) assert_int_equal(mt_hf_writer_add(w, t[i].name, MT_DT_BF16, t[i].nd, t[i].shape), MT_OK);
    uint32_t seed = 12345;
    for (int i = 0; i < n; i++) {
        int64_t numel = t[i].shape[0] * (t[i].nd == 2 ? t[i].shape[1] : 1);
        for (int64_t k = 0; k < numel; k++) {
            seed = seed * 1664525u + 1013904223u;
            uint16_t h = mt_f32_to_bf16(((float)(seed >> 8) / 16777216.0f - 0.5f) * 0.2f);
            assert_int_equal(mt_hf_writer_write(w, &h, 2), MT_OK);
        }
    }
    assert_int_equal(mt_hf_writer_finish(w), MT_OK);
    mt_hf_writer_free(w);
    assert_true(count_entries(hf, "-of-") >= 2);
}

/* HF -> GGUF (kept and q8_0) -> HF on a synthetic checkpoint. */
static mt_gguf *synth_roundtrip(const char *d, int moe, mt_gguf **q8_out) {
    char hf[4200], gg[4200], q8[4200], back[4200];
    snprintf(hf, sizeof hf, "%s/synth%d", d, moe);
    snprintf(gg, sizeof gg, "%s/synth%d.gguf", d, moe);
    snprintf(q8, sizeof q8, "%s/synth%d-q8.gguf", d, moe);
    snprintf(back, sizeof back, "%s/synth%d-back", d, moe);
    write_synth(hf, moe);
    assert_int_equal(conv(hf, gg, MT_FMT_GGUF, -1, 0), MT_OK);
    assert_int_equal(conv(hf, q8, MT_FMT_GGUF, MT_DT_Q8_0, 0), MT_OK);
    assert_int_equal(conv(gg, back, MT_FMT_HF, -1, 0), MT_OK);
    mt_ckpt *a, *b;
    assert_int_equal(mt_ckpt_open(&a, hf), MT_OK);
    assert_int_equal(mt_ckpt_open(&b, back), MT_OK);
    assert_same_tensors(a, b);
    for (int l = 0; l < 2; l++)
        assert_int_equal(mt_config_layer_experts(mt_ckpt_config(a), l), mt_config_layer_experts(mt_ckpt_config(b), l));
    assert_int_equal(mt_ckpt_config(b)->tie_embeddings, mt_ckpt_config(a)->tie_embeddings);
    mt_ckpt_free(a);
    mt_ckpt_free(b);
    mt_gguf *g;
    assert_int_equal(mt_gguf_open(&g, gg), MT_OK);
    assert_int_equal(mt_gguf_open(q8_out, q8), MT_OK);
    return g;
}

static void test_dense_synthetic(void **state) {
    (void)state;
    char *d = tu_mkdtemp();
    mt_gguf *q8, *g = synth_roundtrip(d, 0, &q8);
    assert_null(mt_gguf_find_tensor(g, "output.weight")); /* tied */
    assert_non_null(mt_gguf_find_tensor(g, "blk.1.ffn_gate.weight"));
    assert_int_equal(key_i64(g, "llama.attention.key_length"), 32);
    assert_int_equal(key_i64(g, "llama.attention.value_length"), 32);
    assert_int_equal(mt_gguf_find_key(g, "llama.expert_count"), -1);
    assert_int_equal(mt_gguf_find_key(g, "tokenizer.ggml.tokens"), -1); /* no tokenizer in the source */
    assert_int_equal(mt_gguf_tensor_count(g), 2 + 2 * 9);
    assert_int_equal(mt_gguf_find_tensor(q8, "blk.0.ffn_down.weight")->dtype, MT_DT_F16); /* rows of 48 */
    assert_int_equal(mt_gguf_find_tensor(q8, "blk.0.ffn_up.weight")->dtype, MT_DT_Q8_0);
    assert_int_equal(mt_gguf_find_tensor(q8, "blk.0.attn_q.weight")->dtype, MT_DT_Q8_0);
    assert_int_equal(mt_gguf_find_tensor(q8, "blk.0.attn_norm.weight")->dtype, MT_DT_F32);
    mt_gguf_free(g);
    mt_gguf_free(q8);
    tu_rmtree(d);
    free(d);
}

static void test_layer_experts_synthetic(void **state) {
    (void)state;
    char *d = tu_mkdtemp();
    mt_gguf *q8, *g = synth_roundtrip(d, 1, &q8);
    mt_gguf_type et;
    uint64_t n;
    const void *data;
    assert_int_equal(mt_gguf_get_arr(g, "moetool.layer_experts", &et, &n), MT_OK);
    assert_int_equal(et, MT_GGUF_UINT32);
    assert_int_equal(n, 2);
    assert_int_equal(mt_gguf_arr_data(g, "moetool.layer_experts", &data), MT_OK);
    uint32_t le[2];
    memcpy(le, data, 8);
    assert_int_equal(le[0], 3);
    assert_int_equal(le[1], 2);
    assert_int_equal(key_i64(g, "llama.expert_count"), 3);
    assert_int_equal(mt_gguf_find_tensor(g, "blk.1.ffn_down_exps.weight")->shape[0], 2);
    assert_int_equal(mt_gguf_find_tensor(g, "blk.0.ffn_up_exps.weight")->shape[0], 3);
    assert_int_equal(mt_gguf_find_tensor(g, "blk.1.ffn_gate_inp.weight")->shape[0], 2);
    assert_int_equal(mt_gguf_find_tensor(q8, "blk.1.ffn_gate_inp.weight")->dtype, MT_DT_F32);
    assert_int_equal(mt_gguf_find_tensor(q8, "blk.1.ffn_down_exps.weight")->dtype, MT_DT_Q8_0);
    /* without moetool_only the library refuses it, naming the counts */
    char hf[4200], out[4200];
    snprintf(hf, sizeof hf, "%s/synth1", d);
    snprintf(out, sizeof out, "%s/refused.gguf", d);
    mt_convert_opts o;
    mt_convert_opts_default(&o);
    o.to = MT_FMT_GGUF;
    assert_int_equal(mt_convert(hf, out, &o), MT_ERR_UNSUPPORTED);
    assert_non_null(strstr(mt_last_error(), "different numbers of experts (3,2)"));
    assert_int_equal(access(out, F_OK), -1);
    mt_gguf_free(g);
    mt_gguf_free(q8);
    tu_rmtree(d);
    free(d);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_bit_identical), cmocka_unit_test(test_gguf_layout),
        cmocka_unit_test(test_q8_0_error_bound),        cmocka_unit_test(test_gguf_retype),
        cmocka_unit_test(test_hf_reshard_retype),       cmocka_unit_test(test_failures_leave_nothing),
        cmocka_unit_test(test_progress),               cmocka_unit_test(test_dense_synthetic),
        cmocka_unit_test(test_layer_experts_synthetic),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
