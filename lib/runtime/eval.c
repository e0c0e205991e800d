/* eval.c — perplexity of a token stream, and the same windows compared with
 * a reference model (KL, top-1 agreement, |Δp| of the correct token).
 *
 * Protocols (docs/runtime.md):
 *  GPTQ      windows of ctx tokens from ids[0], non-overlapping, the final
 *            partial window dropped; each window from an empty cache; logits
 *            at t predict token t+1 for t = 0..ctx-2 (ctx-1 scored per window).
 *  LLAMACPP  as llama.cpp's llama-perplexity: the stream is BOS + ids (the
 *            text tokenized with BOS); windows of ctx tokens of that stream,
 *            the first token of every window replaced by BOS; logits at
 *            t = ctx/2 .. ctx-2 predict t+1 (ctx-1-ctx/2 scored per window).
 * Log-softmax runs in double; NLL sums in double; ppl = exp(mean NLL). */
#include "runtime_impl.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void mt_eval_opts_default(mt_eval_opts *o) {
    memset(o, 0, sizeof *o);
    o->ctx = 256;
    o->protocol = MT_PPL_GPTQ;
    o->n_batch = 0;
    o->max_windows = 0;
}

void mt_eval_result_free(mt_eval_result *r) {
    if (!r) return;
    free(r->routing);
    r->routing = NULL;
}

/* lp[v] = log softmax(logits)[v] in double; returns argmax (lowest on ties). */
static int log_softmax(const float *logits, int n, double *lp) {
    int am = 0;
    float mx = logits[0];
    for (int v = 1; v < n; v++)
        if (logits[v] > mx) {
            mx = logits[v];
            am = v;
        }
    double s = 0;
    for (int v = 0; v < n; v++) s += exp((double)logits[v] - (double)mx);
    double ls = log(s);
    for (int v = 0; v < n; v++) lp[v] = (double)logits[v] - (double)mx - ls;
    return am;
}

int mt_eval_ppl(mt_model *m, mt_model *ref, const int32_t *ids, size_t n_ids, const mt_eval_opts *o,
                mt_eval_result *out) {
    mt_eval_opts def;
    memset(out, 0, sizeof *out);
    if (!o) {
        mt_eval_opts_default(&def);
        o = &def;
    }
    const mt_config *cf = mt_model_config(m);
    const int ctx = o->ctx, V = cf->vocab;
    if (ctx < 2) return mt_seterr(MT_ERR_ARG, "eval: window of %d tokens; at least 2 are needed", ctx);
    if (o->protocol != MT_PPL_GPTQ && o->protocol != MT_PPL_LLAMACPP)
        return mt_seterr(MT_ERR_ARG, "eval: unknown protocol %d", (int)o->protocol);
    if (o->n_batch < 0 || o->max_windows < 0)
        return mt_seterr(MT_ERR_ARG, "eval: negative n_batch or max_windows");
    int nb = o->n_batch > 0 && o->n_batch < ctx ? o->n_batch : ctx;
    if (ref && mt_model_config(ref)->vocab != V)
        return mt_seterr(MT_ERR_ARG, "eval: reference vocabulary %d differs from the model's %d",
                         mt_model_config(ref)->vocab, V);

    int bos = -1;
    int llama = o->protocol == MT_PPL_LLAMACPP;
    if (llama) {
        bos = cf->bos_id;
        if (bos < 0 && mt_model_tokenizer(m)) bos = mt_tok_bos(mt_model_tokenizer(m));
        if (bos < 0 || bos >= V)
            return mt_seterr(MT_ERR_ARG, "eval: the llama.cpp protocol needs a BOS token and the model has none");
    }
    /* The stream the windows are cut from: ids, or BOS + ids for llama.cpp
     * (not doubled when the caller already put a BOS first). */
    int prepend = llama && !(n_ids > 0 && ids[0] == bos);
    size_t n_stream = n_ids + (size_t)prepend;
    size_t n_win64 = n_stream / (size_t)ctx;
    if (n_win64 == 0)
        return mt_seterr(MT_ERR_ARG, "eval: %zu tokens are fewer than one window of %d", n_stream, ctx);
    if (o->max_windows > 0 && n_win64 > (size_t)o->max_windows) n_win64 = (size_t)o->max_windows;
    if (n_win64 > INT32_MAX) n_win64 = INT32_MAX;
    const int n_win = (int)n_win64;
    const int first = llama ? ctx / 2 : 0;

    int st = MT_OK;
    mt_ctx *cm = NULL, *cr = NULL;
    int32_t *win = malloc((size_t)ctx * sizeof *win);
    float *lg = malloc((size_t)nb * V * sizeof *lg), *lgr = NULL;
    double *lp = malloc((size_t)V * sizeof *lp), *lpr = NULL;
    if (!win || !lg || !lp) {
        st = mt_seterr(MT_ERR_NOMEM, "eval: out of memory");
        goto done;
    }
    if (ref) {
        lgr = malloc((size_t)nb * V * sizeof *lgr);
        lpr = malloc((size_t)V * sizeof *lpr);
        if (!lgr || !lpr) {
            st = mt_seterr(MT_ERR_NOMEM, "eval: out of memory");
            goto done;
        }
        if ((st = mt_ctx_init(&cr, ref, ctx, nb)) < 0) goto done;
    }
    if ((st = mt_ctx_init(&cm, m, ctx, nb)) < 0) goto done;
    mt_ctx_routing_reset(cm);

    double t0 = mt_now(), t_fwd = 0;
    double nll = 0, nll_ref = 0, kl = 0, dp = 0;
    uint64_t n_scored = 0, agree = 0, n_fwd = 0;
    for (int w = 0; w < n_win; w++) {
        size_t start = (size_t)w * ctx; /* in the stream */
        for (int t = 0; t < ctx; t++) {
            size_t s = start + (size_t)t;
            win[t] = prepend ? (s == 0 ? bos : ids[s - 1]) : ids[s];
        }
        if (llama) win[0] = bos;
        mt_ctx_reset(cm);
        if (cr) mt_ctx_reset(cr);
        for (int b = 0; b < ctx; b += nb) {
            int n = ctx - b < nb ? ctx - b : nb;
            double tf = mt_now();
            if ((st = mt_ctx_forward(cm, win + b, n, lg, 1)) < 0) goto done;
            t_fwd += mt_now() - tf;
            n_fwd += (uint64_t)n;
            if (cr && (st = mt_ctx_forward(cr, win + b, n, lgr, 1)) < 0) goto done;
            for (int i = 0; i < n; i++) {
                int t = b + i;
                if (t < first || t > ctx - 2) continue;
                int tgt = win[t + 1];
                int am = log_softmax(lg + (size_t)i * V, V, lp);
                nll -= lp[tgt];
                n_scored++;
                if (cr) {
                    int amr = log_softmax(lgr + (size_t)i * V, V, lpr);
                    nll_ref -= lpr[tgt];
                    double k = 0;
                    for (int v = 0; v < V; v++) {
                        double pr = exp(lpr[v]);
                        if (pr > 0) k += pr * (lpr[v] - lp[v]);
                    }
                    kl += k;
                    agree += am == amr;
                    dp += fabs(exp(lpr[tgt]) - exp(lp[tgt]));
                }
            }
        }
        if (o->progress) {
            char what[64];
            snprintf(what, sizeof what, "eval: window; ppl %.4f", n_scored ? exp(nll / (double)n_scored) : 0.0);
            o->progress(o->progress_user, what, (uint64_t)w + 1, (uint64_t)n_win);
        }
    }
    out->nll_sum = nll;
    out->n_scored = n_scored;
    out->n_windows = n_win;
    out->ppl = n_scored ? exp(nll / (double)n_scored) : 0;
    if (cr && n_scored) {
        out->has_ref = 1;
        out->kl_mean = kl / (double)n_scored;
        out->top1_agree = (double)agree / (double)n_scored;
        out->dp_mean = dp / (double)n_scored;
        out->ref_ppl = exp(nll_ref / (double)n_scored);
    }
    out->seconds = mt_now() - t0;
    out->tokens_per_s = t_fwd > 0 ? (double)n_fwd / t_fwd : 0;
    const uint64_t *rc = mt_ctx_routing_counts(cm);
    int E = m->routing_stride;
    if (rc && E > 0) {
        size_t cnt = (size_t)cf->n_layers * (size_t)E;
        out->routing = malloc(cnt * sizeof(uint64_t));
        if (!out->routing) {
            st = mt_seterr(MT_ERR_NOMEM, "eval: out of memory");
            goto done;
        }
        memcpy(out->routing, rc, cnt * sizeof(uint64_t));
        out->routing_layers = cf->n_layers;
        out->routing_experts = E;
    }
    st = MT_OK;
done:
    if (st < 0) mt_eval_result_free(out);
    mt_ctx_free(cm);
    mt_ctx_free(cr);
    free(win);
    free(lg);
    free(lgr);
    free(lp);
    free(lpr);
    return st;
}
