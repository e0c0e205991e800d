/* cmd_seq2seq.c — inspect, eval and generate of encoder-decoder models
 * (Switch Transformers, NLLB-MoE: mt_seq2seq.h), reached from those verbs when the
 * checkpoint is one (mt_s2s_detect). Inputs are token ids or text: text is
 * encoded with the model's tokenizer (T5's sentencepiece unigram
 * spiece.model or tokenizer.json) and ends with EOS, as transformers'
 * tokenizer(text).input_ids (docs/seq2seq.md).
 *
 * eval --pairs FILE: JSON Lines, one object per non-empty line,
 *   {"input": [ids] or "text", "target": [ids] or "text"}
 * ids as the model sees them (T5: each sequence ends with EOS, id 1; NLLB:
 * source language code first, EOS last); every
 * target token is scored given the input and the target tokens before it. */
#define _GNU_SOURCE
#include "cli_impl.h"
#include "moetool/mt_seq2seq.h"
#include "moetool/mt_write.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void print_counts(const uint64_t *cnt, int L, int E) {
    printf("[");
    for (int l = 0; l < L; l++) {
        printf("%s[", l ? "," : "");
        for (int e = 0; e <= E; e++) printf("%s%llu", e ? "," : "", (unsigned long long)cnt[(size_t)l * (E + 1) + e]);
        printf("]");
    }
    printf("]");
}

/* counts[layer][expert] of routed choices, [layer][E] the dropped ones. */
static void add_routing(const mt_s2s_model *m, int dec, uint64_t *cnt, int E) {
    int L, n;
    const int32_t *r = mt_s2s_last_routing(m, dec, &L, &n);
    const size_t K = (size_t)mt_s2s_model_config(m)->top_k;
    for (int l = 0; l < L; l++)
        for (size_t i = 0; i < (size_t)n * K; i++) {
            const int e = r[(size_t)l * n * K + i];
            cnt[(size_t)l * (E + 1) + (e < 0 ? E : e)]++;
        }
}

/* Span-corruption sentinels: the tokenizer's <extra_id_0>, <extra_id_1>, ...
 * (T5), else the model's ids above the tokenizer's, counting down from the
 * top (a vocabulary extended for them, as tools/train_switch_kjv.py does). */
static int sentinel_ids(const mt_tokenizer *tok, int vocab, int32_t **out, int *n) {
    int32_t *p = malloc(1024 * sizeof *p);
    int k = 0;
    if (!p) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    char name[32];
    while (k < 1024) {
        snprintf(name, sizeof name, "<extra_id_%d>", k);
        const int id = mt_tok_find(tok, name);
        if (id < 0 || id >= vocab) break;
        p[k++] = id;
    }
    if (!k)
        while (k < 1024 && vocab - 1 - k >= (int)mt_tok_vocab_size(tok)) {
            p[k] = vocab - 1 - k;
            k++;
        }
    if (!k) {
        free(p);
        return mt_seterr(MT_ERR_UNSUPPORTED, "span corruption needs sentinels: the tokenizer has no <extra_id_0> and the "
                         "model's %d ids are no more than the tokenizer's %zu", vocab, mt_tok_vocab_size(tok));
    }
    *out = p;
    *n = k;
    return MT_OK;
}

static void print_ids(FILE *f, const int32_t *ids, int n) {
    fputc('[', f);
    for (int i = 0; i < n; i++) fprintf(f, "%s%d", i ? "," : "", ids[i]);
    fputc(']', f);
}

int cli_s2s_eval(const char *model_path, const cli_s2s_eval_opts *o) {
    const char *pairs_path = o->pairs, *text_path = o->text, *src_lang = o->src_lang, *tgt_lang = o->tgt_lang;
    const int n_threads = o->n_threads, json = o->json, quiet = o->quiet;
    int span = 0; /* pairs made by span corruption */
    size_t n_text_tokens = 0;
    mt_s2s_model *m = NULL;
    mt_s2s_pair *pairs = NULL;
    size_t n_pairs = 0;
    int rc, ret = MT_EXIT_FAIL;
    uint64_t *cnt[2] = {NULL, NULL};
    if (o->save_pairs) { /* the output policy: never an input, never an existing file moetool did not write */
        const char *in[1] = {pairs_path ? pairs_path : text_path};
        if ((rc = mt_output_check(o->save_pairs, MT_OUTPUT_GGUF, o->force, model_path, in, in[0] ? 1 : 0))) goto fail;
    }
    if ((rc = mt_s2s_load(&m, model_path, n_threads))) goto fail;
    const mt_s2s_config *c = mt_s2s_model_config(m);
    int nsp[2] = {0, 0};
    for (int s = 0; s < 2; s++) {
        for (int l = 0; l < (s ? c->n_dec_layers : c->n_enc_layers); l++) nsp[s] += mt_s2s_layer_sparse(c, s, l);
        cnt[s] = calloc((size_t)(nsp[s] ? nsp[s] : 1) * (size_t)(c->n_experts + 1), sizeof *cnt[s]);
        if (!cnt[s]) {
            rc = mt_seterr(MT_ERR_NOMEM, "out of memory");
            goto fail;
        }
    }
    /* the tokenizer, for text in the pairs; without one, ids only */
    mt_tokenizer *tok = NULL;
    char tok_why[512] = "";
    if (mt_tok_load_for_ckpt(&tok, mt_s2s_model_ckpt(m)) != MT_OK) {
        snprintf(tok_why, sizeof tok_why, "%s", mt_last_error());
        mt_clearerr();
    }
    if ((src_lang || tgt_lang) && tok && !mt_tok_lang_codes(tok)) {
        mt_tok_free(tok);
        rc = mt_seterr(MT_ERR_ARG, "%s: %s is for a model whose tokenizer has language codes (NLLB's "
                       "sentencepiece.bpe.model); this one has none", model_path, src_lang ? "--src-lang" : "--tgt-lang");
        goto fail;
    }
    if (text_path && c->kind == MT_S2S_SWITCH) { /* T5 span corruption of the text */
        int32_t *ids = NULL, *sent = NULL;
        int n_sent = 0;
        span = 1;
        if (!tok) rc = mt_seterr(MT_ERR_UNSUPPORTED, "%s: a text needs the model's tokenizer", text_path);
        else if (!(rc = sentinel_ids(tok, c->vocab, &sent, &n_sent))) {
            const size_t need = o->max_windows ? (size_t)o->max_windows * (size_t)o->window : 0;
            rc = mt_tok_encode_file(tok, text_path, need, &ids, &n_text_tokens, NULL);
            if (!rc && need && n_text_tokens > need) n_text_tokens = need;
            if (!rc)
                rc = mt_s2s_span_corrupt(ids, n_text_tokens, o->window, sent, n_sent, c->eos_id, (uint64_t)o->seed,
                                         (size_t)o->max_windows, &pairs, &n_pairs);
        }
        free(ids);
        free(sent);
        pairs_path = text_path;
    } else if (text_path) {
        rc = mt_s2s_pairs_load_tsv(text_path, tok, src_lang, tgt_lang, &pairs, &n_pairs);
        if (rc == MT_ERR_UNSUPPORTED && tok_why[0]) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", mt_last_error());
            rc = mt_seterr(rc, "%s (%s)", msg, tok_why);
            tok_why[0] = 0;
        }
        pairs_path = text_path;
    } else {
        rc = mt_s2s_pairs_load_lang(pairs_path, tok, src_lang, tgt_lang, &pairs, &n_pairs);
    }
    mt_tok_free(tok);
    if (rc == MT_ERR_UNSUPPORTED && !tok && tok_why[0]) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", mt_last_error());
        rc = mt_seterr(rc, "%s (%s)", msg, tok_why);
    }
    if (rc) goto fail;
    if (o->save_pairs) { /* the pairs as eval --pairs reads them, written beside the path and renamed onto it */
        char *tmp = NULL;
        const int fd = mt_output_tmp_create(o->save_pairs, &tmp);
        if (fd < 0) {
            rc = MT_ERR_IO;
            goto fail;
        }
        FILE *f = fdopen(fd, "w");
        int ok = f != NULL;
        for (size_t i = 0; ok && i < n_pairs; i++) {
            fputs("{\"input\":", f);
            print_ids(f, pairs[i].input, pairs[i].n_in);
            fputs(",\"target\":", f);
            print_ids(f, pairs[i].target, pairs[i].n_tgt);
            ok = fputs("}\n", f) >= 0;
        }
        if (f ? fclose(f) != 0 : (close(fd), 1)) ok = 0;
        if (ok && rename(tmp, o->save_pairs) != 0) ok = 0;
        if (!ok) unlink(tmp);
        mt_output_tmp_forget(tmp);
        free(tmp);
        if (!ok) {
            rc = mt_seterr(MT_ERR_IO, "%s: cannot write the pairs", o->save_pairs);
            goto fail;
        }
    }
    double nll = 0, t0 = now_s();
    uint64_t n_tgt = 0, n_in = 0;
    for (size_t i = 0; i < n_pairs; i++) {
        const mt_s2s_pair *p = &pairs[i];
        double s = 0;
        if ((rc = mt_s2s_score(m, p->input, p->n_in, p->target, p->n_tgt, &s))) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", mt_last_error());
            rc = mt_seterr(rc, "%s:%d: %s", pairs_path, p->line, msg);
            goto fail;
        }
        add_routing(m, 0, cnt[0], c->n_experts);
        add_routing(m, 1, cnt[1], c->n_experts);
        nll += s;
        n_tgt += (uint64_t)p->n_tgt;
        n_in += (uint64_t)p->n_in;
        if (!quiet) cli_progress(NULL, "pairs", i + 1, n_pairs);
    }
    cli_progress_done();
    const double secs = now_s() - t0, mean = nll / (double)n_tgt;
    if (json) {
        printf("{\"model\":");
        json_str(stdout, model_path);
        printf(",\"family\":\"%s\",\"pairs\":", c->family);
        json_str(stdout, pairs_path);
        if (span)
            printf(",\"span_corruption\":{\"text_tokens\":%zu,\"window\":%d,\"noise_density\":0.15,"
                   "\"mean_noise_span\":3,\"seed\":%llu}", n_text_tokens, o->window, o->seed);
        printf(",\"n_pairs\":%llu,\"input_tokens\":%llu,\"target_tokens\":%llu,\"nll_sum\":%.10g,\"nll_mean\":%.10g,"
               "\"ppl\":%.8g,\"seconds\":%.4f,\"threads\":%d,\"routing\":{\"encoder\":",
               (unsigned long long)n_pairs, (unsigned long long)n_in, (unsigned long long)n_tgt, nll, mean, exp(mean),
               secs, mt_s2s_threads(m));
        print_counts(cnt[0], nsp[0], c->n_experts);
        printf(",\"decoder\":");
        print_counts(cnt[1], nsp[1], c->n_experts);
        printf("}}\n");
    } else {
        printf("model:      %s (%s, encoder-decoder)\n", model_path, c->hf_class);
        if (span)
            printf("text:       %s: %zu tokens in windows of %d, T5 span corruption (15 %% noise, mean span 3, "
                   "seed %llu)\n", text_path, n_text_tokens, o->window, o->seed);
        printf("pairs:      %s: %llu pairs, %llu input tokens, %llu target tokens scored\n", pairs_path,
               (unsigned long long)n_pairs, (unsigned long long)n_in, (unsigned long long)n_tgt);
        printf("loss:       %.6f nats/target token\nperplexity: %.4f\n", mean, exp(mean));
        printf("speed:      %.2f s (cpu, %d threads)\n", secs, mt_s2s_threads(m));
        for (int s = 0; s < 2; s++)
            for (int l = 0; l < nsp[s]; l++) {
                const uint64_t *r = cnt[s] + (size_t)l * (c->n_experts + 1);
                uint64_t tot = 0;
                for (int e = 0; e <= c->n_experts; e++) tot += r[e];
                printf("routing:    %s sparse layer %d: dropped by capacity %llu of %llu expert choices\n",
                       s ? "decoder" : "encoder", l, (unsigned long long)r[c->n_experts], (unsigned long long)tot);
            }
    }
    ret = MT_EXIT_OK;
    goto done;
fail:
    ret = cli_fail("eval", rc);
done:
    mt_s2s_pairs_free(pairs, n_pairs);
    free(cnt[0]);
    free(cnt[1]);
    mt_s2s_free(m);
    return ret;
}

/* "3,4,1" or "3 4 1" -> ids. */
static int parse_id_list(const char *s, int32_t **out, int *n) {
    size_t cap = strlen(s) / 2 + 1;
    int32_t *p = malloc(cap * sizeof *p);
    if (!p) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    int k = 0;
    while (*s) {
        while (*s == ' ' || *s == ',') s++;
        if (!*s) break;
        char *e;
        long v = strtol(s, &e, 10);
        if (e == s || v < 0 || v > INT32_MAX || (size_t)k >= cap) {
            free(p);
            return mt_seterr(MT_ERR_ARG, "--ids: \"%s\" is not a list of token ids", s);
        }
        p[k++] = (int32_t)v;
        s = e;
    }
    if (!k) {
        free(p);
        return mt_seterr(MT_ERR_ARG, "--ids: no token ids");
    }
    *out = p;
    *n = k;
    return MT_OK;
}

int cli_s2s_generate(const char *model_path, const char *ids, const char *prompt, const char *src_lang,
                     const char *tgt_lang, int n_predict, int stop_at_eos, int n_threads, int json) {
    mt_s2s_model *m = NULL;
    mt_tokenizer *tok = NULL;
    int32_t *in = NULL, *out = NULL;
    char *text = NULL;
    size_t text_len = 0;
    int ni = 0, no = 0, rc, ret = MT_EXIT_FAIL;
    if (ids && (rc = parse_id_list(ids, &in, &ni))) return cli_usage_error("generate", "%s", mt_last_error());
    if ((rc = mt_s2s_load(&m, model_path, n_threads))) goto fail;
    int forced = -1; /* NLLB: the target language code is the first token */
    if (prompt || src_lang || tgt_lang) { /* text in, text out: the model's tokenizer */
        if ((rc = mt_tok_load_for_ckpt(&tok, mt_s2s_model_ckpt(m)))) goto fail;
        if (mt_tok_lang_codes(tok) && prompt && !tgt_lang) {
            rc = mt_seterr(MT_ERR_ARG, "%s translates into the language given by --tgt-lang CODE (e.g. fra_Latn)",
                           model_path);
            goto fail;
        }
        if (tgt_lang && (forced = mt_tok_lang_id(tok, tgt_lang)) < 0) {
            rc = mt_seterr(MT_ERR_ARG, "--tgt-lang '%s' is not one of the tokenizer's %d language codes", tgt_lang,
                           mt_tok_lang_codes(tok));
            goto fail;
        }
        if (prompt && (rc = mt_s2s_encode_text_lang(tok, prompt, strlen(prompt), src_lang, &in, &ni))) goto fail;
    }
    if (!(out = malloc((size_t)(n_predict > 0 ? n_predict : 1) * sizeof *out))) {
        rc = mt_seterr(MT_ERR_NOMEM, "out of memory");
        goto fail;
    }
    const double t0 = now_s();
    if ((rc = mt_s2s_greedy_forced(m, in, ni, forced, n_predict, stop_at_eos, out, &no))) goto fail;
    const double secs = now_s() - t0;
    if (tok && (rc = mt_tok_decode(tok, out, (size_t)no, 1, &text, &text_len))) goto fail;
    if (json) {
        printf("{\"input_ids\":[");
        for (int i = 0; i < ni; i++) printf("%s%d", i ? "," : "", in[i]);
        printf("],\"ids\":[");
        for (int i = 0; i < no; i++) printf("%s%d", i ? "," : "", out[i]);
        printf("]");
        if (text) {
            printf(",\"text\":");
            json_strn(stdout, text, text_len);
        }
        printf(",\"seconds\":%.4f,\"threads\":%d}\n", secs, mt_s2s_threads(m));
    } else if (text) {
        fwrite(text, 1, text_len, stdout);
        printf("\n");
        fprintf(stderr, "moetool generate: encoded %d tokens, generated %d in %.3f s (%d threads)\n", ni, no, secs,
                mt_s2s_threads(m));
    } else {
        for (int i = 0; i < no; i++) printf("%s%d", i ? " " : "", out[i]);
        printf("\n");
        fprintf(stderr, "moetool generate: encoded %d tokens, generated %d in %.3f s (%d threads)\n", ni, no, secs,
                mt_s2s_threads(m));
    }
    ret = MT_EXIT_OK;
    goto done;
fail:
    ret = cli_fail("generate", rc);
done:
    free(in);
    free(out);
    free(text);
    mt_tok_free(tok);
    mt_s2s_free(m);
    return ret;
}

static uint64_t mat_params(const mt_mat *w) { return w->data ? (uint64_t)w->rows * (uint64_t)w->cols : 0; }

/* Parameters of a stack: all, in experts, and active per token (top_k
 * experts of a sparse layer). */
static void stack_params(const mt_s2s_layer *ls, int L, int top_k, uint64_t *total, uint64_t *experts,
                         uint64_t *active) {
    for (int l = 0; l < L; l++) {
        const mt_s2s_layer *y = &ls[l];
        const mt_mat *mats[] = {&y->ln, &y->q, &y->k, &y->v, &y->o, &y->x_ln, &y->xq, &y->xk, &y->xv, &y->xo,
                                &y->ff_ln, &y->router, &y->ln_b, &y->q_b, &y->k_b, &y->v_b, &y->o_b, &y->x_ln_b,
                                &y->xq_b, &y->xk_b, &y->xv_b, &y->xo_b, &y->ff_ln_b};
        uint64_t base = 0;
        for (size_t i = 0; i < sizeof mats / sizeof mats[0]; i++) base += mat_params(mats[i]);
        const int E = y->n_experts ? y->n_experts : 1;
        const uint64_t one = mat_params(&y->wi[0]) + mat_params(&y->wo[0]) + mat_params(&y->wi_b[0]) +
                             mat_params(&y->wo_b[0]);
        *total += base + (uint64_t)E * one;
        if (y->n_experts) *experts += (uint64_t)E * one;
        *active += base + (uint64_t)(y->n_experts ? top_k : 1) * one;
    }
}

int cli_s2s_inspect(const char *path, int json) {
    mt_ckpt *ck = NULL;
    mt_s2s_weights w;
    memset(&w, 0, sizeof w);
    int rc = mt_ckpt_open_raw(&ck, path);
    if (!rc) rc = mt_s2s_weights_init(&w, ck);
    if (rc) {
        mt_ckpt_free(ck);
        return cli_fail("inspect", rc);
    }
    const mt_s2s_config *c = &w.cfg;
    uint64_t total = 0, experts = 0, active = 0;
    stack_params(w.enc, c->n_enc_layers, c->top_k, &total, &experts, &active);
    stack_params(w.dec, c->n_dec_layers, c->top_k, &total, &experts, &active);
    const uint64_t glob = mat_params(&w.embd) + mat_params(&w.enc_rel) + mat_params(&w.dec_rel) +
                          mat_params(&w.enc_norm) + mat_params(&w.dec_norm) + mat_params(&w.enc_norm_b) +
                          mat_params(&w.dec_norm_b) + (c->tie_embeddings ? 0 : mat_params(&w.lm_head));
    total += glob;
    active += glob;
    int nsp[2] = {0, 0};
    for (int s = 0; s < 2; s++)
        for (int l = 0; l < (s ? c->n_dec_layers : c->n_enc_layers); l++) nsp[s] += mt_s2s_layer_sparse(c, s, l);
    const char *fmt = mt_ckpt_format(ck) == MT_FMT_PYTORCH ? "pytorch" : "hf";
    /* how the experts are stored, and their bits per weight all-in */
    uint64_t ebytes = 0, ew = 0;
    if ((rc = mt_s2s_expert_storage(ck, &w, &ebytes, &ew))) {
        mt_s2s_weights_free(&w);
        mt_ckpt_free(ck);
        return cli_fail("inspect", rc);
    }
    const mt_mat *e0 = NULL;
    for (int s = 0; s < 2 && !e0; s++)
        for (int l = 0; l < (s ? c->n_dec_layers : c->n_enc_layers) && !e0; l++)
            if ((s ? w.dec : w.enc)[l].n_experts) e0 = &(s ? w.dec : w.enc)[l].wi[0];
    const char *qname = c->quant == MT_QFMT_QMOE ? "qmoe"
                        : c->quant == MT_QFMT_GPTQ ? (e0 && e0->dtype == MT_DT_Q4_0 ? "q4_0" : "q8_0")
                                                   : (e0 ? mt_dtype_name(e0->dtype) : "none");
    const double ebits = ew ? 8.0 * (double)ebytes / (double)ew : 0;
    if (json) {
        printf("{\"path\":");
        json_str(stdout, path);
        printf(",\"format\":\"%s\",\"arch\":\"%s\",\"class\":\"%s\",\"encoder_decoder\":true,\"vocab\":%d,"
               "\"d_model\":%d,\"d_kv\":[%d,%d],\"d_ff\":[%d,%d],\"heads\":[%d,%d],\"encoder_layers\":%d,"
               "\"decoder_layers\":%d,\"experts\":%d,\"top_k\":%d,\"expert_capacity\":%d,\"encoder_sparse_step\":%d,"
               "\"decoder_sparse_step\":%d,\"sparse_layers\":{\"encoder\":%d,\"decoder\":%d},\"tie_embeddings\":%s,"
               "\"params\":%llu,\"expert_params\":%llu,\"active_params\":%llu,\"file_bytes\":%llu,\"experts_stored\":\"%s\","
               "\"quantization\":\"%s\",\"bits_per_expert_weight\":%.4f}\n",
               fmt, c->family, c->hf_class, c->vocab, c->d_model, c->d_kv[0], c->d_kv[1], c->d_ff[0], c->d_ff[1],
               c->n_heads[0], c->n_heads[1], c->n_enc_layers, c->n_dec_layers, c->n_experts, c->top_k,
               c->expert_capacity, c->enc_sparse_step, c->dec_sparse_step, nsp[0],
               nsp[1], c->tie_embeddings ? "true" : "false", (unsigned long long)total, (unsigned long long)experts,
               (unsigned long long)active, (unsigned long long)mt_ckpt_file_bytes(ck), qname,
               c->quant == MT_QFMT_QMOE ? "qmoe" : c->quant == MT_QFMT_GPTQ ? "gptq" : "none", ebits);
    } else {
        printf("path:         %s\n", path);
        printf("format:       %s (%zu tensors, %.2f MiB)\n", fmt, mt_ckpt_count(ck),
               mt_ckpt_file_bytes(ck) / 1048576.0);
        printf("family:       %s (%s), encoder-decoder\n", c->family, c->hf_class);
        printf("layers:       %d encoder (%d heads of %d, d_ff %d), %d decoder (%d heads of %d, d_ff %d); d_model %d, "
               "vocab %d\n",
               c->n_enc_layers, c->n_heads[0], c->d_kv[0], c->d_ff[0], c->n_dec_layers, c->n_heads[1], c->d_kv[1],
               c->d_ff[1], c->d_model, c->vocab);
        if (c->cap_fraction > 0)
            printf("experts:      %d per sparse layer, top-%d, capacity ceil(%g x tokens); sparse layers: %d encoder "
                   "(step %d), %d decoder (step %d)\n",
                   c->n_experts, c->top_k, c->cap_fraction, nsp[0], c->enc_sparse_step, nsp[1], c->dec_sparse_step);
        else
            printf("experts:      %d per sparse layer, top-%d, capacity %d tokens; sparse layers: %d encoder (step %d), "
                   "%d decoder (step %d)\n",
                   c->n_experts, c->top_k, c->expert_capacity, nsp[0], c->enc_sparse_step, nsp[1], c->dec_sparse_step);
        printf("params:       %.2fM (%.2fM in experts, %.2fM active/token); lm_head %s\n", total / 1e6,
               experts / 1e6, active / 1e6,
               !c->tie_embeddings ? "untied" : c->lm_scale != 1.0f ? "tied to the embedding (scaled by d_model^-0.5)"
                                                                   : "tied to the embedding");
        if (c->quant == MT_QFMT_QMOE)
            printf("experts:      qmoe code (QMoE ternary, executed coded): %.4f bits per expert weight all-in\n", ebits);
        else if (c->quant == MT_QFMT_GPTQ)
            printf("experts:      %s (AutoGPTQ layout, run as %s blocks): %.4f bits per expert weight stored\n", qname,
                   qname, ebits);
        else
            printf("experts:      %s, %.4f bits per expert weight\n", qname, ebits);
    }
    mt_s2s_weights_free(&w);
    mt_ckpt_free(ck);
    return MT_EXIT_OK;
}
