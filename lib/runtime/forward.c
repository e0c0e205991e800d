/* forward.c — the Mixtral forward, as Hugging Face's MixtralForCausalLM
 * computes it in f32, written against the backend interface (backend.h):
 * every op on activations runs on the model's backend; the host only
 * decides which rows go to which expert and delivers capture events.
 *
 *   x = embed[tok]
 *   per layer:  h = rmsnorm(x) * w_attn
 *               q, k, v = h Wqᵀ, h Wkᵀ, h Wvᵀ
 *               RoPE on q, k (rotate_half: pairs i, i + head_dim/2; GGUF's
 *               permuted rows: pairs 2i, 2i+1, written in rotate_half order)
 *               causal GQA attention, softmax(q·k / sqrt(head_dim))
 *               x += attn Woᵀ
 *               h = rmsnorm(x) * w_ffn
 *               p = softmax(h Wrᵀ) in f32; top-k (ties: lower expert first);
 *               gates = p_topk / sum(p_topk) (unless the family / config
 *               says not to renormalise: Qwen2-MoE's norm_topk_prob false)
 *               x += Σ_k gate_k · W2_e(silu(W1_e h) ⊙ W3_e h)
 *               [+ sigmoid(h · w_sg) · W2_s(silu(W1_s h) ⊙ W3_s h): the
 *               shared expert, when the layer has one]
 * q/k/v get their biases added after the projections when the family has
 * them (Qwen2-MoE); q and k are RMS-normed before RoPE with the family's
 * QK-norm (Qwen3-MoE: each head; OLMoE: the whole projection).
 *   logits = rmsnorm(x) * w_out · lm_headᵀ
 *
 * Capture events (mt_runtime.h) are delivered at ATTN_IN, ATTN_OUT (attn,
 * before Wo), FFN_IN, ROUTER_LOGITS, EXPERT_IN/OUT and LAYER_OUT of every
 * layer and at FINAL_NORM (rmsnorm(x) * w_out of all rows) after the last;
 * a kind not in the mask costs one test of the mask.
 *
 * An aliased layer (router of R rows over K experts, row r -> expert
 * alias[r]) takes the softmax and top-k over the R rows as above, then maps
 * the chosen rows to experts; rows that alias one expert add their gates and
 * that expert runs once (its later top-k slots become -1, gate 0). With
 * aliased experts that are identical copies this is exactly the unaliased
 * model. Routing counts, top-k ids and capture events name experts; the
 * ROUTER_LOGITS event carries the R row logits.
 * A dense model (n_experts = 0) runs w1[0]/w3[0]/w2[0] with gate 1.
 * Prefill (n > 1) runs whole batches through the backend's linear; each
 * expert gets the rows routed to it gathered into one matrix, and its output
 * is scattered back with the gate weights, experts in index order as HF adds
 * them. Every buffer is allocated once in mt_ctx_init. */
#include "runtime_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- context ------------------------------------------------------------ */

/* a * b * c * sizeof(float) without overflow, or 0. */
static size_t fbytes3(size_t a, size_t b, size_t c) {
    if (a == 0 || b == 0 || c == 0) return sizeof(float);
    if (a > SIZE_MAX / b) return 0;
    size_t ab = a * b;
    if (ab > SIZE_MAX / c) return 0;
    size_t abc = ab * c;
    if (abc > SIZE_MAX / sizeof(float)) return 0;
    return abc * sizeof(float);
}

/* With `dry`, only checks that the scratch fits in memory (mt_ctx_check). */
static int ctx_init(mt_ctx **out, mt_model *m, int n_ctx, int n_batch, int dry) {
    *out = NULL;
    const mt_config *cf = &m->w.cfg;
    mt_backend *be = m->be;
    if (n_ctx <= 0 || n_batch <= 0)
        return mt_seterr(MT_ERR_ARG, "context: n_ctx %d and n_batch %d must be positive", n_ctx, n_batch);
    if (n_batch > n_ctx) n_batch = n_ctx;
    mt_ctx *c = calloc(1, sizeof *c);
    if (!c) return mt_seterr(MT_ERR_NOMEM, "context: out of memory");
    c->m = m;
    c->n_ctx = n_ctx;
    c->n_batch = n_batch;
    c->q_dim = cf->n_heads * cf->head_dim;
    c->kv_dim = cf->n_kv_heads * cf->head_dim;

    const size_t L = (size_t)cf->n_layers, H = (size_t)cf->hidden, B = (size_t)n_batch;
    const size_t E = (size_t)(m->routing_stride > 0 ? m->routing_stride : 1);
    size_t Rmax = E; /* router logits: aliased layers have more rows than experts */
    for (int l = 0; l < cf->n_layers; l++)
        if (m->w.layers[l].n_experts > 0 && (size_t)m->w.layers[l].n_router_rows > Rmax)
            Rmax = (size_t)m->w.layers[l].n_router_rows;
    const size_t K = (size_t)(cf->top_k > 0 ? cf->top_k : 1);
    size_t F = (size_t)cf->ffn; /* widest MLP: experts, dense layers, shared expert */
    if ((size_t)mt_config_dense_ffn(cf) > F) F = (size_t)mt_config_dense_ffn(cf);
    if ((size_t)cf->ffn_shared > F) F = (size_t)cf->ffn_shared;
    const size_t half = (size_t)cf->head_dim / 2;
    const size_t att = be->ops->attn_scratch_floats(be, n_batch, n_ctx);
    size_t sz[24];
    int ns = 0;
    /* (bytes, destination) pairs in backend memory, every one checked for
     * overflow; topk (int32) is float-sized. */
    float **fdst[] = {&c->k_cache, &c->v_cache, &c->x,          &c->h,        &c->q,      &c->k,
                      &c->v,       &c->att_out, &c->proj,       &c->att_scratch, &c->rope_cos, &c->rope_sin,
                      &c->router,  &c->router_p, &c->topk_w,     &c->ex_in,    &c->ex_g,   &c->ex_u,
                      &c->ex_out,  (float **)&c->topk};
    sz[ns++] = fbytes3(L, (size_t)n_ctx, (size_t)c->kv_dim);
    sz[ns++] = fbytes3(L, (size_t)n_ctx, (size_t)c->kv_dim);
    sz[ns++] = fbytes3(B, H, 1);
    sz[ns++] = fbytes3(B, H, 1);
    sz[ns++] = fbytes3(B, (size_t)c->q_dim, 1);
    sz[ns++] = fbytes3(B, (size_t)c->kv_dim, 1);
    sz[ns++] = fbytes3(B, (size_t)c->kv_dim, 1);
    sz[ns++] = fbytes3(B, (size_t)c->q_dim, 1);
    sz[ns++] = fbytes3(B, H, 1);
    sz[ns++] = fbytes3(att ? att : 1, 1, 1);
    sz[ns++] = fbytes3((size_t)n_ctx, half, 1);
    sz[ns++] = fbytes3((size_t)n_ctx, half, 1);
    sz[ns++] = fbytes3(B, Rmax, 1);
    sz[ns++] = fbytes3(B, Rmax, 1);
    sz[ns++] = fbytes3(B, K, 1);
    sz[ns++] = fbytes3(B, H, 1);
    sz[ns++] = fbytes3(B, F, 1);
    sz[ns++] = fbytes3(B, F, 1);
    sz[ns++] = fbytes3(B, H, 1);
    sz[ns++] = fbytes3(B, K, 1);
    /* The scratch is estimated before any of it is allocated: attention
     * scores grow with threads x batch x context, and a context far past
     * what the machine holds is refused with the numbers, not attempted. */
    double total = 0;
    for (int i = 0; i < ns; i++) total += (double)sz[i];
    const double ram = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
    for (int i = 0; i < ns; i++) {
        if (sz[i] == 0 || (ram > 0 && total > ram)) {
            mt_ctx_free(c);
            return mt_seterr(MT_ERR_NOMEM,
                             "context of %d tokens (batches of %d, %d threads) needs %.1f GiB of scratch, more than "
                             "the %.1f GiB of memory here; use a shorter context or fewer threads",
                             n_ctx, n_batch, be->n_threads, sz[i] == 0 ? INFINITY : total / 1073741824.0, ram / 1073741824.0);
        }
        if (dry) continue;
        *fdst[i] = be->ops->buf_alloc(be, sz[i]);
        if (!*fdst[i]) {
            mt_ctx_free(c);
            return mt_seterr(MT_ERR_NOMEM, "context: out of memory (%zu bytes for n_ctx %d, n_batch %d)", sz[i],
                             n_ctx, n_batch);
        }
    }
    if (dry) {
        mt_ctx_free(c);
        return MT_OK;
    }
    c->renorm = mt_config_renorm_topk(cf);
    size_t lr = fbytes3(L, B, K), rc = fbytes3(L, E, 2), er = fbytes3(B, 1, 1), tk = fbytes3(B, K, 1);
    size_t cw = H > (size_t)c->q_dim ? H : (size_t)c->q_dim, cap = fbytes3(B, cw > Rmax ? cw : Rmax, 1);
    if (!lr || !rc || !er || !tk || !cap) {
        mt_ctx_free(c);
        return mt_seterr(MT_ERR_ARG, "context: n_batch %d is too large for this model", n_batch);
    }
    /* Host arrays. int32 and uint64 arrays: float-sized counts work for
     * int32; the routing counts need 8 bytes each (rc counted 2 floats per
     * entry). */
    c->last_routing = malloc(lr);
    c->routing = calloc(1, rc);
    c->ex_rows = malloc(er);
    c->ex_gate = malloc(er);
    int ok = c->last_routing && c->routing && c->ex_rows && c->ex_gate;
    if (be->host_memory) {
        c->topk_h = c->topk;
        c->topk_w_h = c->topk_w;
    } else {
        c->topk_h = malloc(tk);
        c->topk_w_h = malloc(tk);
        c->cap_h = malloc(cap);
        ok = ok && c->topk_h && c->topk_w_h && c->cap_h;
    }
    float *rc_h = be->host_memory ? c->rope_cos : malloc(fbytes3((size_t)n_ctx, half, 1));
    float *rs_h = be->host_memory ? c->rope_sin : malloc(fbytes3((size_t)n_ctx, half, 1));
    if (!ok || !rc_h || !rs_h) {
        if (rc_h != c->rope_cos) free(rc_h);
        if (rs_h != c->rope_sin) free(rs_h);
        mt_ctx_free(c);
        return mt_seterr(MT_ERR_NOMEM, "context: out of memory");
    }
    mt_be_rope_tables(rc_h, rs_h, n_ctx, cf->head_dim, cf->rope_theta);
    be->ops->upload(be, c->rope_cos, rc_h, sz[10]);
    be->ops->upload(be, c->rope_sin, rs_h, sz[11]);
    if (rc_h != c->rope_cos) free(rc_h);
    if (rs_h != c->rope_sin) free(rs_h);
    /* A device backend writes logits to its memory first (host arrays are
     * the caller's). */
    if (!be->host_memory && !(c->logits_d = be->ops->buf_alloc(be, fbytes3(B, (size_t)cf->vocab, 1)))) {
        mt_ctx_free(c);
        return mt_seterr(MT_ERR_NOMEM, "context: out of %s memory for logits (%d x %d floats)", be->name, n_batch,
                         cf->vocab);
    }
    *out = c;
    return MT_OK;
}

int mt_ctx_init(mt_ctx **out, mt_model *m, int n_ctx, int n_batch) { return ctx_init(out, m, n_ctx, n_batch, 0); }

int mt_ctx_check(mt_model *m, int n_ctx, int n_batch) {
    mt_ctx *c;
    return ctx_init(&c, m, n_ctx, n_batch, 1);
}

void mt_ctx_free(mt_ctx *c) {
    if (!c) return;
    mt_backend *be = c->m->be;
    float *bufs[] = {c->k_cache, c->v_cache, c->x,        c->h,        c->q,        c->k,          c->v,
                     c->att_out, c->proj,    c->att_scratch, c->rope_cos, c->rope_sin, c->router,   c->router_p,
                     c->topk_w,  c->ex_in,   c->ex_g,     c->ex_u,     c->ex_out,   (float *)c->topk};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) be->ops->buf_free(be, bufs[i]);
    be->ops->buf_free(be, c->logits_d);
    if (c->topk_h != c->topk) free(c->topk_h);
    if (c->topk_w_h != c->topk_w) free(c->topk_w_h);
    free(c->cap_h);
    free(c->last_routing);
    free(c->routing);
    free(c->ex_rows);
    free(c->ex_gate);
    free(c);
}

void mt_ctx_reset(mt_ctx *c) {
    c->pos = 0;
    c->last_n = 0;
}
int mt_ctx_pos(const mt_ctx *c) { return c->pos; }

void mt_ctx_set_capture(mt_ctx *c, mt_capture_fn fn, void *user, unsigned kind_mask) {
    c->cap_fn = fn;
    c->cap_user = user;
    c->cap_mask = fn ? kind_mask : 0;
}

const uint64_t *mt_ctx_routing_counts(const mt_ctx *c) { return c->m->routing_stride > 0 ? c->routing : NULL; }

void mt_ctx_routing_reset(mt_ctx *c) {
    const mt_config *cf = &c->m->w.cfg;
    size_t E = (size_t)(c->m->routing_stride > 0 ? c->m->routing_stride : 1);
    memset(c->routing, 0, (size_t)cf->n_layers * E * sizeof(uint64_t));
}

const int32_t *mt_ctx_last_routing(const mt_ctx *c) { return c->m->w.cfg.top_k > 0 ? c->last_routing : NULL; }

/* ---- building blocks ----------------------------------------------------- */

/* Capture event with `data` (n_rows, n_cols) in backend memory, copied to
 * the host first when the backend's memory is not. */
static int emit(mt_ctx *c, mt_capture_kind kind, int layer, int expert, int n_rows, int n_cols, const float *data,
                const int32_t *rows, const float *gates, const int32_t *topk) {
    if (!(c->cap_mask & (unsigned)kind)) return 0;
    mt_backend *be = c->m->be;
    if (!be->host_memory) {
        be->ops->download(be, c->cap_h, data, (size_t)n_rows * (size_t)n_cols * sizeof(float));
        data = c->cap_h;
    }
    mt_capture_event ev = {kind, layer, expert, n_rows, n_cols, data, rows, gates, topk};
    return c->cap_fn(c->cap_user, &ev);
}

/* One expert (or the dense MLP) over the gathered rows ex_in (m, hidden);
 * adds gate * output into proj at each row. */
static int run_expert(mt_ctx *c, const mt_layer_weights *Lw, int layer, int e, int m_rows, int expert_id) {
    const mt_config *cf = &c->m->w.cfg;
    const mt_backend_ops *op = c->m->be->ops;
    mt_backend *be = c->m->be;
    const int H = cf->hidden;
    const int64_t F = Lw->w1[e].rows;
    int st;
    if ((st = emit(c, MT_CAP_EXPERT_IN, layer, expert_id, m_rows, H, c->ex_in, c->ex_rows, c->ex_gate, NULL)))
        return st;
    op->linear(be, &Lw->w1[e], c->ex_in, m_rows, c->ex_g);
    op->linear(be, &Lw->w3[e], c->ex_in, m_rows, c->ex_u);
    op->swiglu(be, c->ex_g, c->ex_u, (size_t)m_rows * (size_t)F);
    op->linear(be, &Lw->w2[e], c->ex_g, m_rows, c->ex_out);
    if ((st = emit(c, MT_CAP_EXPERT_OUT, layer, expert_id, m_rows, H, c->ex_out, c->ex_rows, c->ex_gate, NULL)))
        return st;
    op->scatter_add_rows(be, c->proj, c->ex_out, c->ex_rows, c->ex_gate, m_rows, H);
    return 0;
}

/* The shared expert of a MoE layer (Qwen2-MoE): every row of h, its output
 * scaled by sigmoid(h · sh_gate) and added after the routed experts', as
 * transformers' Qwen2MoeSparseMoeBlock adds it. */
static int shared_expert(mt_ctx *c, const mt_layer_weights *Lw, int n) {
    mt_backend *be = c->m->be;
    const mt_backend_ops *op = be->ops;
    const int H = c->m->w.cfg.hidden;
    op->linear(be, &Lw->sh_gate, c->h, n, c->router); /* (n, 1); routing is done with c->router */
    op->download(be, c->ex_gate, c->router, (size_t)n * sizeof(float));
    for (int i = 0; i < n; i++) {
        c->ex_rows[i] = i;
        c->ex_gate[i] = 1.0f / (1.0f + expf(-c->ex_gate[i]));
    }
    op->linear(be, &Lw->sh_w1, c->h, n, c->ex_g);
    op->linear(be, &Lw->sh_w3, c->h, n, c->ex_u);
    op->swiglu(be, c->ex_g, c->ex_u, (size_t)n * (size_t)Lw->sh_w1.rows);
    op->linear(be, &Lw->sh_w2, c->ex_g, n, c->ex_out);
    op->scatter_add_rows(be, c->proj, c->ex_out, c->ex_rows, c->ex_gate, n, H);
    return 0;
}

static int ffn(mt_ctx *c, int layer, int n) {
    const mt_config *cf = &c->m->w.cfg;
    const mt_layer_weights *Lw = &c->m->w.layers[layer];
    mt_backend *be = c->m->be;
    const mt_backend_ops *op = be->ops;
    const int H = cf->hidden;
    const int ne = Lw->n_experts;
    int st;
    op->buf_zero(be, c->proj, (size_t)n * H * sizeof(float));
    if (ne == 0) {
        for (int i = 0; i < n; i++) {
            c->ex_rows[i] = i;
            c->ex_gate[i] = 1.0f;
        }
        op->gather_rows(be, c->ex_in, c->h, c->ex_rows, n, H);
        if (cf->top_k > 0) {
            int32_t *lr = c->last_routing + (size_t)layer * n * cf->top_k;
            for (size_t i = 0; i < (size_t)n * cf->top_k; i++) lr[i] = -1;
        }
        return run_expert(c, Lw, layer, 0, n, -1);
    }
    const int top_k = cf->top_k;
    const int nr = Lw->alias ? Lw->n_router_rows : ne;
    op->linear(be, Lw->alias ? &Lw->router_full : &Lw->router, c->h, n, c->router);
    mt_be_router_args ra = {c->router, c->router_p, c->topk, c->topk_w, n, nr, top_k, Lw->alias, c->renorm};
    op->router_topk(be, &ra);
    const size_t nk = (size_t)n * top_k;
    op->download(be, c->topk_h, c->topk, nk * sizeof(int32_t));
    op->download(be, c->topk_w_h, c->topk_w, nk * sizeof(float));
    if ((st = emit(c, MT_CAP_ROUTER_LOGITS, layer, -1, n, nr, c->router, NULL, NULL, c->topk_h))) return st;
    int32_t *lr = c->last_routing + (size_t)layer * n * top_k;
    memcpy(lr, c->topk_h, nk * sizeof(int32_t));
    uint64_t *counts = c->routing + (size_t)layer * c->m->routing_stride;
    for (int e = 0; e < ne; e++) {
        int mrows = 0;
        for (int i = 0; i < n; i++)
            for (int k = 0; k < top_k; k++)
                if (c->topk_h[(size_t)i * top_k + k] == e) {
                    c->ex_rows[mrows] = i;
                    c->ex_gate[mrows] = c->topk_w_h[(size_t)i * top_k + k];
                    mrows++;
                }
        counts[e] += (uint64_t)mrows;
        if (mrows == 0) continue;
        op->gather_rows(be, c->ex_in, c->h, c->ex_rows, mrows, H);
        if ((st = run_expert(c, Lw, layer, e, mrows, e))) return st;
    }
    return Lw->sh_w1.data ? shared_expert(c, Lw, n) : 0;
}

/* ---- forward --------------------------------------------------------------- */

static int run_layers(mt_ctx *c, int l0, int n, float *logits, int all_logits);

int mt_ctx_forward(mt_ctx *c, const int32_t *tokens, int n, float *logits, int all_logits) {
    mt_model *m = c->m;
    mt_backend *be = m->be;
    const mt_backend_ops *op = be->ops;
    const mt_config *cf = &m->w.cfg;
    if (n <= 0 || n > c->n_batch)
        return mt_seterr(MT_ERR_ARG, "forward: %d tokens, but the context takes 1..%d per call", n, c->n_batch);
    if (c->pos + n > c->n_ctx)
        return mt_seterr(MT_ERR_ARG, "forward: %d tokens at position %d exceed the context of %d", n, c->pos, c->n_ctx);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= cf->vocab)
            return mt_seterr(MT_ERR_ARG, "forward: token id %d at %d is outside the vocabulary of %d", (int)tokens[i],
                             i, cf->vocab);

    op->get_rows(be, &m->w.tok_embd, tokens, n, c->x);
    return run_layers(c, 0, n, logits, all_logits);
}

int mt_ctx_forward_from(mt_ctx *c, int layer, const float *x, int n, float *logits, int all_logits) {
    mt_model *m = c->m;
    mt_backend *be = m->be;
    const mt_config *cf = &m->w.cfg;
    if (layer < 0 || layer > cf->n_layers)
        return mt_seterr(MT_ERR_ARG, "forward: layer %d outside 0..%d", layer, cf->n_layers);
    if (n <= 0 || n > c->n_batch)
        return mt_seterr(MT_ERR_ARG, "forward: %d tokens, but the context takes 1..%d per call", n, c->n_batch);
    if (c->pos + n > c->n_ctx)
        return mt_seterr(MT_ERR_ARG, "forward: %d tokens at position %d exceed the context of %d", n, c->pos, c->n_ctx);
    const size_t bytes = (size_t)n * (size_t)cf->hidden * sizeof(float);
    if (be->host_memory)
        memcpy(c->x, x, bytes);
    else
        be->ops->upload(be, c->x, x, bytes);
    return run_layers(c, layer, n, logits, all_logits);
}

/* Layers l0 .. n_layers − 1 on the residual stream in c->x, then the final
 * norm and the logits; advances the position by n. */
static int run_layers(mt_ctx *c, int l0, int n, float *logits, int all_logits) {
    mt_model *m = c->m;
    mt_backend *be = m->be;
    const mt_backend_ops *op = be->ops;
    const mt_config *cf = &m->w.cfg;
    const int H = cf->hidden;
    int st;
    const mt_be_rope_style style = cf->rope_style == MT_ROPE_INTERLEAVED ? MT_BE_ROPE_PAIRS : MT_BE_ROPE_HALF;

    for (int l = l0; l < cf->n_layers; l++) {
        const mt_layer_weights *Lw = &m->w.layers[l];
        op->rmsnorm(be, c->h, c->x, m->norm_f32 + (size_t)(2 * l) * H, n, H, cf->norm_eps);
        if ((st = emit(c, MT_CAP_ATTN_IN, l, -1, n, H, c->h, NULL, NULL, NULL))) return st;
        op->linear(be, &Lw->wq, c->h, n, c->q);
        op->linear(be, &Lw->wk, c->h, n, c->k);
        op->linear(be, &Lw->wv, c->h, n, c->v);
        if (m->bias_f32) { /* q/k/v biases (the family's attn_bias) */
            const float *b = m->bias_f32 + (size_t)l * (c->q_dim + 2 * c->kv_dim);
            for (int i = 0; i < n; i++) {
                op->add(be, c->q + (size_t)i * c->q_dim, b, (size_t)c->q_dim);
                op->add(be, c->k + (size_t)i * c->kv_dim, b + c->q_dim, (size_t)c->kv_dim);
                op->add(be, c->v + (size_t)i * c->kv_dim, b + c->q_dim + c->kv_dim, (size_t)c->kv_dim);
            }
        }
        if (m->qkn_f32) { /* QK-norm before RoPE: per head, or over the whole projection */
            const int ph = m->qk_norm == MT_QK_NORM_HEAD;
            const size_t qn = ph ? (size_t)cf->head_dim : (size_t)c->q_dim, kn = ph ? (size_t)cf->head_dim : (size_t)c->kv_dim;
            const float *wq = m->qkn_f32 + (size_t)l * (qn + kn);
            op->rmsnorm(be, c->q, c->q, wq, ph ? n * cf->n_heads : n, (int)qn, cf->norm_eps);
            op->rmsnorm(be, c->k, c->k, wq + qn, ph ? n * cf->n_kv_heads : n, (int)kn, cf->norm_eps);
        }
        mt_be_rope_args rq = {c->q, n, c->q_dim, cf->n_heads, cf->head_dim, c->pos, c->rope_cos, c->rope_sin, style};
        mt_be_rope_args rk = {c->k, n, c->kv_dim, cf->n_kv_heads, cf->head_dim, c->pos, c->rope_cos, c->rope_sin, style};
        op->rope(be, &rq);
        op->rope(be, &rk);
        mt_be_attn_args at = {c->q,
                              c->k,
                              c->v,
                              c->k_cache + (size_t)l * c->n_ctx * c->kv_dim,
                              c->v_cache + (size_t)l * c->n_ctx * c->kv_dim,
                              c->att_out,
                              c->att_scratch,
                              n,
                              c->pos,
                              c->n_ctx,
                              c->n_batch,
                              cf->n_heads,
                              cf->n_kv_heads,
                              cf->head_dim};
        op->attention(be, &at);
        if ((st = emit(c, MT_CAP_ATTN_OUT, l, -1, n, c->q_dim, c->att_out, NULL, NULL, NULL))) return st;
        op->linear(be, &Lw->wo, c->att_out, n, c->proj);
        op->add(be, c->x, c->proj, (size_t)n * H);

        op->rmsnorm(be, c->h, c->x, m->norm_f32 + (size_t)(2 * l + 1) * H, n, H, cf->norm_eps);
        if ((st = emit(c, MT_CAP_FFN_IN, l, -1, n, H, c->h, NULL, NULL, NULL))) return st;
        if ((st = ffn(c, l, n))) return st;
        op->add(be, c->x, c->proj, (size_t)n * H);
        if ((st = emit(c, MT_CAP_LAYER_OUT, l, -1, n, H, c->x, NULL, NULL, NULL))) return st;
    }
    /* With FINAL_NORM asked for, every row is normed (whatever the logits)
     * and delivered before the position moves, so an abort leaves it. */
    const float *fn = m->norm_f32 + (size_t)(2 * cf->n_layers) * H;
    const int normed = (c->cap_mask & (unsigned)MT_CAP_FINAL_NORM) != 0;
    if (normed) {
        op->rmsnorm(be, c->h, c->x, fn, n, H, cf->norm_eps);
        if ((st = emit(c, MT_CAP_FINAL_NORM, cf->n_layers, -1, n, H, c->h, NULL, NULL, NULL))) return st;
    }
    c->last_n = n;
    c->pos += n;

    if (logits) {
        /* Logits land in the caller's host array: the backend's linear
         * writes there directly when its memory is host memory, else into
         * logits_d, downloaded after. */
        float *dst = be->host_memory ? logits : c->logits_d;
        const int nl = all_logits ? n : 1;
        if (all_logits) {
            if (!normed) op->rmsnorm(be, c->h, c->x, fn, n, H, cf->norm_eps);
            op->linear(be, &m->w.lm_head, c->h, n, dst);
        } else {
            const float *hl = c->h + (size_t)(n - 1) * H;
            if (!normed) {
                op->rmsnorm(be, c->h, c->x + (size_t)(n - 1) * H, fn, 1, H, cf->norm_eps);
                hl = c->h;
            }
            op->linear(be, &m->w.lm_head, hl, 1, dst);
        }
        if (dst != logits) op->download(be, logits, dst, (size_t)nl * (size_t)cf->vocab * sizeof(float));
    }
    op->synchronize(be);
    if (op->status && (st = op->status(be)) < 0) return st;
    return MT_OK;
}
