/* fuzz_model.c — libFuzzer target over the whole model loader: a bundle
 * (fuzz/bundle.h) becomes a Hugging Face directory (config.json, the shard
 * index, tokenizer_config.json, tokenizer.json/.model, one or two shards,
 * GPTQ or qmoe tensors included) or a GGUF (config from metadata, the GGUF
 * tokenizer), and is loaded as every verb loads it. Any input must load or
 * fail with a message; what loads is run: every tokenizer piece decoded,
 * a short text encoded, and two tokens through the forward pass (every
 * weight path, the qmoe decoder included); an SPM vocabulary is also
 * written back as tokenizer.json. */
#include "bundle.h"
#include "moetool/mt_runtime.h"
#include "moetool/mt_tokenizer.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static char g_dir[64];

static void exercise(mt_model *m) {
    const mt_tokenizer *t = mt_model_tokenizer(m);
    if (t) {
        size_t nv = mt_tok_vocab_size(t);
        char buf[256];
        size_t len;
        for (size_t i = 0; i < nv && i < 70000; i++) {
            len = 0;
            mt_tok_piece_text(t, (int)i, buf, sizeof buf, &len);
        }
        /* what GGUF -> HF writes from this vocabulary */
        if (mt_tok_kind_of(t) == MT_TOK_SPM) mt_tok_write_hf_json(t, g_dir);
        int32_t ids[64];
        size_t n = 0;
        static const char text[] = "In the beginning \xe2\x80\x94 <s> caf\xc3\xa9 \xff 12";
        if (mt_tok_encode(t, text, sizeof text - 1, ids, 64, &n) == MT_OK) {
            char *s = NULL;
            if (mt_tok_decode(t, ids, n, 1, &s, NULL) == MT_OK) free(s);
        }
    }
    const mt_config *c = mt_model_config(m);
    if (c->vocab < 1 || mt_ctx_check(m, 2, 2) != MT_OK) return;
    mt_ctx *ctx = NULL;
    if (mt_ctx_init(&ctx, m, 2, 2) != MT_OK) return;
    float *logits = malloc((size_t)c->vocab * sizeof *logits);
    int32_t tok[2] = {0, c->vocab - 1};
    if (logits) mt_ctx_forward(ctx, tok, 2, logits, 0);
    free(logits);
    mt_ctx_free(ctx);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!g_dir[0]) {
        snprintf(g_dir, sizeof g_dir, "/tmp/mt-fuzz-model-XXXXXX");
        if (!mkdtemp(g_dir)) abort();
    }
    char load[4200];
    bundle_clear(g_dir);
    if (bundle_unpack(data, size, g_dir, load, sizeof load) == 0) {
        mt_model_opts o;
        mt_model_opts_default(&o);
        o.n_threads = 1;
        mt_model *m = NULL;
        if (mt_model_load(&m, load, &o) == MT_OK)
            exercise(m);
        else if (m || !mt_last_error()[0])
            abort();
        mt_model_free(m);
    }
    bundle_clear(g_dir);
    return 0;
}
