/* mt_runtime.h — the MoE runtime every verb measures with: a loaded model
 * (weights memory-mapped, executed in their stored type), inference contexts
 * with a KV cache, capture hooks for calibration consumers, evaluation
 * (perplexity, KL against a reference, routing) and sampling. */
#ifndef MT_RUNTIME_H
#define MT_RUNTIME_H

#include "mt_common.h"
#include "mt_io.h"
#include "mt_tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- model ------------------------------------------------------------- */
typedef struct mt_model mt_model;

/* Most threads a model (its thread pool) runs with. */
#define MT_MAX_THREADS 512

/* Where the forward runs. MT_DEVICE_CUDA needs a build with CUDA and a
 * device; without either, mt_model_load fails with the reason (never a
 * silent fallback to the CPU). */
typedef enum { MT_DEVICE_CPU = 0, MT_DEVICE_CUDA = 1 } mt_device;

typedef struct {
    int n_threads;          /* 0 = number of online CPUs, at most MT_MAX_THREADS */
    mt_device device;       /* MT_DEVICE_CPU by default                          */
    int device_index;       /* which CUDA device (0 by default)                  */
    int gguf_layout;        /* 1: hold a Hugging Face checkpoint's weights as its
                               GGUF conversion would (mt_weights_gguf_layout):
                               what quantize to GGUF computes on, so that its
                               result equals quantizing the converted file   */
} mt_model_opts;
void mt_model_opts_default(mt_model_opts *o);

int mt_model_load(mt_model **out, const char *path, const mt_model_opts *opts);
/* The same on a checkpoint already open, which the model then owns (freed
 * by mt_model_free, or here on failure). */
int mt_model_load_ckpt(mt_model **out, mt_ckpt *ck, const mt_model_opts *opts);
void mt_model_free(mt_model *m);
const mt_config *mt_model_config(const mt_model *m);
const mt_weights *mt_model_weights(const mt_model *m);
const mt_ckpt *mt_model_ckpt(const mt_model *m);
/* NULL when the checkpoint has no tokenizer (eval of ids still works). */
const mt_tokenizer *mt_model_tokenizer(const mt_model *m);
/* Why mt_model_tokenizer is NULL (the loader's message), or "" when it is not. */
const char *mt_model_tokenizer_error(const mt_model *m);
int mt_model_threads(const mt_model *m);
/* The backend the forward runs on: "cpu" or "cuda". */
const char *mt_model_backend_name(const mt_model *m);

/* Parameter counts: total, in experts, active per token. */
typedef struct {
    uint64_t total, experts, active;
    uint64_t weight_bytes;       /* bytes of all weight data as stored   */
    uint64_t expert_bytes;
} mt_param_stats;
void mt_model_param_stats(const mt_model *m, mt_param_stats *out);

/* ---- capture hooks ----------------------------------------------------
 * Called synchronously during forward, on the calling thread, once per
 * layer and kind, with rows for the tokens of the current batch. Data is
 * valid only during the call. Return non-zero to abort the forward (the
 * status is passed through). */
typedef enum {
    MT_CAP_ATTN_IN = 1 << 0,       /* normed input of attention (n, hidden)      */
    MT_CAP_FFN_IN = 1 << 1,        /* normed input of router/experts (n, hidden) */
    MT_CAP_ROUTER_LOGITS = 1 << 2, /* (n, router rows): n_experts, or R with alias */
    MT_CAP_EXPERT_IN = 1 << 3,     /* rows routed to one expert (m, hidden)      */
    MT_CAP_EXPERT_OUT = 1 << 4,    /* that expert's outputs before gating (m, hidden) */
    MT_CAP_LAYER_OUT = 1 << 5,     /* residual stream after the layer (n, hidden) */
    MT_CAP_ATTN_OUT = 1 << 6,      /* attention output, o_proj's input (n, n_heads·head_dim) */
    MT_CAP_FINAL_NORM = 1 << 7,    /* final-norm output, lm_head's input (n, hidden);
                                      layer = n_layers, once per forward, every token
                                      of the batch (with or without logits) */
} mt_capture_kind;

typedef struct {
    mt_capture_kind kind;
    int layer;
    int expert;              /* for EXPERT_*; else -1                          */
    int n_rows, n_cols;
    const float *data;       /* (n_rows, n_cols) row-major                     */
    const int32_t *rows;     /* EXPERT_*: batch row of each data row           */
    const float *gates;      /* EXPERT_*: renormalised routing weight per row  */
    const int32_t *topk;     /* ROUTER_LOGITS: (n, top_k) chosen experts; with
                                alias routing a slot whose expert was already
                                chosen by another row is -1 (gate added there) */
} mt_capture_event;

typedef int (*mt_capture_fn)(void *user, const mt_capture_event *ev);

/* ---- inference context ------------------------------------------------- */
typedef struct mt_ctx mt_ctx;

/* n_ctx: KV cache length; n_batch: most tokens per forward call. */
int mt_ctx_init(mt_ctx **out, mt_model *m, int n_ctx, int n_batch);
/* Whether mt_ctx_init(m, n_ctx, n_batch) would fit in this machine's memory:
 * MT_OK, or MT_ERR_NOMEM with a message giving the bytes it would need. */
int mt_ctx_check(mt_model *m, int n_ctx, int n_batch);
void mt_ctx_free(mt_ctx *c);
void mt_ctx_reset(mt_ctx *c);           /* empties the KV cache             */
int mt_ctx_pos(const mt_ctx *c);        /* tokens in the cache              */
void mt_ctx_set_capture(mt_ctx *c, mt_capture_fn fn, void *user, unsigned kind_mask);

/* Runs n tokens (n <= n_batch) at the current position, appending to the
 * KV cache. logits: NULL, or (n, vocab) when all_logits, else (1, vocab)
 * for the last token. */
int mt_ctx_forward(mt_ctx *c, const int32_t *tokens, int n, float *logits, int all_logits);
/* The same from layer `layer` on: x (n, hidden), host memory, is the
 * residual stream entering that layer (what MT_CAP_LAYER_OUT delivered for
 * layer − 1); layers before it are not run (their KV cache is left as it
 * is), layer = n_layers runs only the final norm and lm_head. Given the
 * stream mt_ctx_forward had there, the logits are the same bit for bit. */
int mt_ctx_forward_from(mt_ctx *c, int layer, const float *x, int n, float *logits, int all_logits);

/* Tokens routed to each expert so far: counts[layer * n_experts + e]. */
const uint64_t *mt_ctx_routing_counts(const mt_ctx *c);
void mt_ctx_routing_reset(mt_ctx *c);
/* Top-k experts chosen for the tokens of the last forward: (n, top_k) ids
 * per layer, layer-major: [layer][token][k]; -1 marks a slot merged into an
 * earlier one by alias routing. */
const int32_t *mt_ctx_last_routing(const mt_ctx *c);

/* ---- evaluation -------------------------------------------------------- */
typedef enum { MT_PPL_GPTQ = 0, MT_PPL_LLAMACPP = 1 } mt_ppl_protocol;

typedef struct {
    int ctx;                 /* window length (default 256)                    */
    mt_ppl_protocol protocol;
    int n_batch;             /* tokens per forward (default = ctx)             */
    int max_windows;         /* 0 = all                                        */
    mt_progress_fn progress;
    void *progress_user;
} mt_eval_opts;
void mt_eval_opts_default(mt_eval_opts *o);

typedef struct {
    double ppl;
    double nll_sum;
    uint64_t n_scored;
    int n_windows;
    /* against a reference model (has_ref) */
    int has_ref;
    double kl_mean;          /* mean KL(ref || model) per scored token, nats   */
    double top1_agree;       /* fraction of scored tokens with equal argmax    */
    double dp_mean;          /* mean |p_ref(correct) - p_model(correct)|       */
    double ref_ppl;
    /* speed */
    double seconds;
    double tokens_per_s;     /* forward tokens per second                      */
    /* routing: counts[layer * n_experts + e] (NULL if dense), caller frees   */
    uint64_t *routing;
    int routing_layers, routing_experts;
} mt_eval_result;

/* Perplexity of `ids` under the protocol; with `ref` != NULL also KL,
 * top-1 agreement and |dp| against it (same tokenization). */
int mt_eval_ppl(mt_model *m, mt_model *ref, const int32_t *ids, size_t n_ids,
                const mt_eval_opts *o, mt_eval_result *out);
void mt_eval_result_free(mt_eval_result *r);

/* ---- generation -------------------------------------------------------- */
typedef struct {
    int n_predict;           /* default 64                                    */
    float temp;              /* 0 = greedy (default)                          */
    float top_p;             /* default 1.0                                   */
    uint64_t seed;
    int stop_at_eos;         /* default 1                                     */
    int allow_long_context;  /* 1: prompt + n_predict may pass max_pos        */
} mt_sample_opts;
void mt_sample_opts_default(mt_sample_opts *o);

/* Called with each new token id; return non-zero to stop. */
typedef int (*mt_token_fn)(void *user, int32_t id);
/* Prefills `prompt` (ids, BOS included by the caller if wanted) and samples
 * up to n_predict tokens, written to out_ids (cap n_predict); *n_out gets the
 * count. Reports prefill and decode timing. */
typedef struct { double prefill_s, decode_s; int n_prompt, n_gen; } mt_gen_timing;
int mt_generate(mt_model *m, const int32_t *prompt, int n_prompt, const mt_sample_opts *o,
                mt_token_fn on_token, void *user, int32_t *out_ids, int *n_out, mt_gen_timing *timing);

#ifdef __cplusplus
}
#endif
#endif
