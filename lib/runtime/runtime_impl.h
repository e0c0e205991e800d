/* runtime_impl.h — private structures of the runtime: the loaded model
 * (checkpoint + weight views + tokenizer + the backend it runs on) and the
 * inference context (KV cache and every scratch buffer in backend memory,
 * sized once for n_batch so that a forward never allocates). */
#ifndef MT_RUNTIME_IMPL_H
#define MT_RUNTIME_IMPL_H

#include "moetool/mt_arch.h"
#include "moetool/mt_qmoe.h"
#include "moetool/mt_runtime.h"
#include "backend.h"

struct mt_model {
    mt_ckpt *ck;
    mt_weights w;            /* views into ck's mappings                    */
    int weights_ok;          /* w must be freed                             */
    mt_tokenizer *tok;       /* NULL when the checkpoint has none           */
    mt_backend *be;          /* every op of the forward runs here           */
    char *tok_err;           /* why tok is NULL (loader message), or NULL   */
    int max_experts;         /* max over layers of the expert count         */
    int routing_stride;      /* experts per layer in routing counts: max of
                                cfg.n_experts and every layer's count       */
    float *norm_f32;         /* (2*n_layers+1, hidden): attn and ffn norm of
                                each layer, then the final norm, as f32;
                                backend memory                              */
    mt_qk_norm qk_norm;      /* the family's QK-norm                        */
    float *qkn_f32;          /* (n_layers, qn + kn): q_norm, k_norm weights
                                as f32, backend memory; NULL without       */
    float *bias_f32;         /* (n_layers, q_dim + 2 kv_dim): q/k/v biases as
                                f32, backend memory; NULL without biases   */
    mt_qmoe_dict qdict;      /* qmoe checkpoints: the dictionary ...          */
    mt_qmoe_mat *qmats;      /* ... and every coded matrix, parsed at load    */
    size_t n_qmats;
};

struct mt_ctx {
    mt_model *m;
    int n_ctx, n_batch;
    int pos;                 /* tokens in the cache                         */
    int q_dim, kv_dim;       /* n_heads*head_dim, n_kv_heads*head_dim       */
    int renorm;              /* top-k gates renormalised (config / family)  */

    float *k_cache;          /* (n_layers, n_ctx, kv_dim)                   */
    float *v_cache;          /* (n_layers, n_ctx, kv_dim)                   */

    /* backend memory; scratch all (n_batch, ...) */
    float *x;                /* (n_batch, hidden)    residual stream        */
    float *h;                /* (n_batch, hidden)    normed input           */
    float *q;                /* (n_batch, q_dim)                            */
    float *k;                /* (n_batch, kv_dim)                           */
    float *v;                /* (n_batch, kv_dim)                           */
    float *att_out;          /* (n_batch, q_dim)                            */
    float *proj;             /* (n_batch, hidden)    o_proj / MoE output    */
    float *att_scratch;      /* backend's attn_scratch_floats(n_batch, n_ctx) */
    float *rope_cos;         /* (n_ctx, head_dim/2)                         */
    float *rope_sin;         /* (n_ctx, head_dim/2)                         */
    float *router;           /* (n_batch, max_experts) logits               */
    float *router_p;         /* (n_batch, max_experts) probabilities        */
    int32_t *topk;           /* (n_batch, top_k) for the current layer      */
    float *topk_w;           /* (n_batch, top_k) renormalised weights       */
    float *logits_d;         /* (n_batch, vocab) logits before download; NULL
                                when the backend's memory is host memory   */

    /* host memory (aliases of the buffers above when the backend's memory
     * is host memory, else copies downloaded when needed) */
    int32_t *topk_h;         /* (n_batch, top_k)                            */
    float *topk_w_h;         /* (n_batch, top_k)                            */
    float *cap_h;            /* (n_batch, max(hidden, q_dim, Rmax)) capture
                                staging; NULL on host memory                */

    int32_t *last_routing;   /* (n_layers, last_n, top_k); room for n_batch */
    int last_n;              /* tokens in last_routing                      */
    uint64_t *routing;       /* (n_layers, max_experts) counts, host        */
    int32_t *ex_rows;        /* (n_batch) batch rows routed to one expert, host */
    float *ex_gate;          /* (n_batch) their gates, host                 */
    float *ex_in;            /* (n_batch, hidden) gathered rows             */
    float *ex_g;             /* (n_batch, max ffn)   gate proj (max of ffn,
                                ffn_dense, ffn_shared)                      */
    float *ex_u;             /* (n_batch, max ffn)   up proj                */
    float *ex_out;           /* (n_batch, hidden)                           */

    mt_capture_fn cap_fn;
    void *cap_user;
    unsigned cap_mask;
};

#endif
