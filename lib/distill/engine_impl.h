/* engine_impl.h — private to lib/distill: the training engine of the
 * student, dense (Mistral layout: one SwiGLU FFN per layer) or MoE (Mixtral
 * layout: router, softmax, top-k, renormalised gates, SwiGLU experts) —
 * forward, backward, loss, AdamW — written in the
 * manner of llm.c's train_gpt2.c: sizes first, one allocation for the
 * parameters (and one each for gradients and optimiser moments), pointers
 * into it, every op a plain loop or a gemm through the backend interface
 * (backend.h gemm_f32), so a device backend can run the big products.
 *
 * Shapes are row-major, batch B sequences of T tokens, N = B·T rows. */
#ifndef MT_DISTILL_ENGINE_IMPL_H
#define MT_DISTILL_ENGINE_IMPL_H

#include "backend.h"
#include "moetool/mt_common.h"

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int n_layers;   /* L                     */
    int hidden;     /* H                     */
    int n_heads;    /* NH                    */
    int n_kv_heads; /* NKV (divides NH)      */
    int head_dim;   /* D (even)              */
    int ffn;        /* F: width of the SwiGLU FFN (of one expert when MoE) */
    int vocab;      /* V                     */
    float norm_eps;
    float rope_theta;
    int n_experts;  /* E: 0 = dense          */
    int top_k;      /* K experts per token (MoE) */
} dt_config;

/* One layer's parameters (pointers into dt_model.params or .grads). */
typedef struct {
    float *attn_norm; /* (H)         */
    float *wq;        /* (NH·D, H)   */
    float *wk;        /* (NKV·D, H)  */
    float *wv;        /* (NKV·D, H)  */
    float *wo;        /* (H, NH·D)   */
    float *ffn_norm;  /* (H)         */
    float *w1;        /* (F, H) gate             dense */
    float *w3;        /* (F, H) up               dense */
    float *w2;        /* (H, F) down             dense */
    float *router;    /* (E, H)                  MoE   */
    float *ew1;       /* (E, F, H) experts' gate MoE   */
    float *ew3;       /* (E, F, H) experts' up   MoE   */
    float *ew2;       /* (E, H, F) experts' down MoE   */
} dt_layer;

typedef struct {
    float *embd;      /* (V, H)      */
    dt_layer *layers; /* [L]         */
    float *out_norm;  /* (H)         */
    float *lm_head;   /* (V, H)      */
} dt_tensors;

/* The parameter tensors in a fixed order (the checkpoint's and the output
 * file's): embd, per layer attention and norms then the FFN (dense: w1, w3,
 * w2; MoE: router, every expert's w1, every expert's w3, every expert's w2,
 * so each kind is one contiguous (E, ·, ·) block), out_norm, lm_head. */
typedef enum {
    DT_EMBD = 0, DT_ATTN_NORM, DT_WQ, DT_WK, DT_WV, DT_WO, DT_FFN_NORM, DT_W1, DT_W3, DT_W2, DT_OUT_NORM, DT_LM_HEAD,
    DT_ROUTER, DT_EW1, DT_EW3, DT_EW2
} dt_kind;
typedef struct {
    dt_kind kind;
    int layer;       /* -1 for globals */
    int expert;      /* -1 unless DT_EW*   */
    int rows, cols;  /* rows = 1 for norm vectors */
    size_t offset;   /* floats into the flat array */
} dt_param;

/* Activations of one step (all (N, ·) unless noted). R = rows of the FFN:
 * N dense, N·K for MoE (one per token and chosen expert, grouped by expert). */
typedef struct {
    float *res;    /* (L+1, N, H) residual stream entering each layer; [L] = final */
    float *xn1;    /* (L, N, H)   attn-normed input                 */
    float *rstd1;  /* (L, N)                                        */
    float *q;      /* (L, N, NH·D) roped                            */
    float *k;      /* (L, N, NKV·D) roped                           */
    float *v;      /* (L, N, NKV·D)                                 */
    float *att;    /* (L, B, NH, T, T) softmax probabilities        */
    float *atto;   /* (L, N, NH·D) attention output (o_proj input)  */
    float *mid;    /* (L, N, H)   residual after attention          */
    float *xn2;    /* (L, N, H)                                     */
    float *rstd2;  /* (L, N)                                        */
    float *h1;     /* (L, R, F)   gate pre-activation               */
    float *h3;     /* (L, R, F)   up                                */
    float *hg;     /* (L, R, F)   silu(h1)·h3                       */
    float *eo;     /* (L, R, H)   each expert's output (MoE)        */
    float *gate;   /* (L, N, K)   renormalised top-k gates (MoE)    */
    int32_t *sel;  /* (L, N, K)   chosen experts, by probability    */
    int32_t *asg;  /* (L, R)      token·K + slot of each FFN row     */
    int32_t *eoff; /* (L, E + 1)  first FFN row of each expert       */
    float *xnf;    /* (N, H)      final-normed                      */
    float *rstdf;  /* (N)                                           */
    float *logits; /* (N, V)      then dloss/dlogits after the loss */
} dt_acts;

/* Scratch of the backward pass (one layer at a time). */
typedef struct {
    float *dres;  /* (N, H) gradient of the residual stream */
    float *dx;    /* (N, H)                                  */
    float *dq;    /* (N, NH·D)                               */
    float *dk;    /* (N, NKV·D)                              */
    float *dv;    /* (N, NKV·D)                              */
    float *datto; /* (N, NH·D)                               */
    float *dh1;   /* (R, F)                                  */
    float *dh3;   /* (R, F)                                  */
    float *dhg;   /* (R, F)                                  */
    float *xg;    /* (R, H) FFN inputs gathered per expert (MoE)  */
    float *dxg;   /* (R, H)                                       */
    float *deo;   /* (R, H)                                       */
    float *dz;    /* (N, E) router logits, then their gradient    */
    float *dgate; /* (N, K)                                       */
    float *datt;  /* (T, T) one head's score gradient        */
    float *rowq;  /* (3, V) one row's softmaxes in the loss   */
} dt_grads_scratch;

typedef struct {
    dt_config c;
    int B, T;                 /* batch shape the activations are sized for */
    mt_backend *be;           /* gemms run here (not owned)                 */
    size_t n_params;
    dt_param *table;          /* [n_table]                                  */
    int n_table;
    float *params;            /* (n_params) f32 master weights              */
    float *grads;             /* (n_params)                                 */
    float *m, *v;             /* (n_params) AdamW moments                   */
    dt_tensors p, g;          /* views into params / grads                  */
    dt_acts a;
    dt_grads_scratch s;
    float *rope_cos, *rope_sin; /* (T, D/2)                                 */
    void *act_block, *scratch_block, *int_block;
} dt_model;

/* Loss of one step: mean over the N scored tokens. */
typedef struct {
    double loss;  /* (1 − α)·CE + α·T²·KL                  */
    double ce;    /* mean cross-entropy with the labels    */
    double kd;    /* mean KL(teacher_T ‖ student_T)        */
} dt_loss;

typedef struct {
    float lr, beta1, beta2, eps, weight_decay;
} dt_adamw;

/* Index of the parameter (kind, layer, expert) in m->table, or -1. */
int dt_param_find(const dt_model *m, dt_kind kind, int layer, int expert);
/* Sizes and allocates everything for batches of B×T. Parameters are zero. */
int dt_model_init(dt_model *m, const dt_config *c, int B, int T, mt_backend *be);
void dt_model_free(dt_model *m);

/* Forward to logits (a.logits) for tokens (B, T). */
void dt_forward(dt_model *m, const int32_t *tokens);
/* Loss of a.logits against targets (B, T) and, when alpha > 0, the teacher's
 * logits (N, V) at temperature temp; replaces a.logits with dloss/dlogits. */
dt_loss dt_loss_backward_logits(dt_model *m, const int32_t *targets, const float *teacher, float alpha, float temp);
/* The same for this rank's B·T rows of a batch of n_total rows spread over
 * ranks (data parallel): dloss/dlogits and the returned loss, CE and KD are
 * this rank's rows' terms divided by n_total, so their sums over the ranks
 * are the batch's gradient and means. n_total = B·T is the function above. */
dt_loss dt_loss_backward_logits_part(dt_model *m, const int32_t *targets, const float *teacher, float alpha, float temp,
                                     double n_total);
/* Backward from dloss/dlogits in a.logits; grads are overwritten. */
void dt_backward(dt_model *m, const int32_t *tokens);
/* Global L2 norm of the gradient; scales it to max_norm when larger (max_norm > 0). */
double dt_clip_grads(dt_model *m, float max_norm);
/* One AdamW step (t = 1-based step number); no weight decay on norm vectors. */
void dt_adamw_step(dt_model *m, const dt_adamw *o, int t);
/* Learning rate of step `step` (0-based) of `total`: linear warmup over
 * `warmup` steps to lr, then cosine to lr·min_frac. */
float dt_lr_schedule(int step, int total, int warmup, float lr, float min_frac);

/* ---- ops (each with its backward; tests check them with finite differences) */
void dt_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *w, int n, int dim, float eps);
/* dx (overwritten or accumulated with accumulate), dw accumulated. */
void dt_rmsnorm_bwd(float *dx, float *dw, const float *dout, const float *x, const float *w, const float *rstd, int n,
                    int dim, int accumulate);
/* In place on (n, stride) rows, heads of d at the row start, positions 0..T-1 repeating every T rows. */
void dt_rope_fwd(float *x, int n, int T, int n_heads, int d, const float *cos_t, const float *sin_t);
void dt_rope_bwd(float *dx, int n, int T, int n_heads, int d, const float *cos_t, const float *sin_t);
void dt_swiglu_fwd(float *out, const float *h1, const float *h3, size_t n);
void dt_swiglu_bwd(float *dh1, float *dh3, const float *dout, const float *h1, const float *h3, size_t n);
/* Mixtral routing of n rows of logits z (n, E): softmax, the K most probable
 * experts (ties: lower index) into sel (n, K), their probabilities
 * renormalised to sum 1 into gate (n, K). */
void dt_route_fwd(int32_t *sel, float *gate, const float *z, int n, int E, int K);
/* dz (n, E) = gradient of the logits from dgate (n, K): the renormalised
 * gates are a softmax over the chosen logits, so dz_k = g_k·(dg_k − Σ g·dg)
 * on the chosen experts and 0 elsewhere. */
void dt_route_bwd(float *dz, const float *dgate, const int32_t *sel, const float *gate, int n, int E, int K);
/* Causal GQA attention of B sequences of T; att (B, NH, T, T) probabilities. */
void dt_attention_fwd(mt_backend *be, float *out, float *att, const float *q, const float *k, const float *v, int B,
                      int T, int NH, int NKV, int D);
/* dq overwritten, dk/dv overwritten; datt (T, T) scratch. */
void dt_attention_bwd(mt_backend *be, float *dq, float *dk, float *dv, float *datt, const float *dout, const float *att,
                      const float *q, const float *k, const float *v, int B, int T, int NH, int NKV, int D);

#endif
