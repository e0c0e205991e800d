/* mt_distill.h — knowledge distillation of a Mixtral-format teacher into a
 * dense Mistral-layout student (attention, embeddings and norms copied from
 * the teacher, one SwiGLU FFN per layer built from its experts), or healing
 * of a smaller Mixtral (a `moetool merge` output: every weight, router
 * included, trained against the teacher); trained by
 * (1 − α)·cross-entropy + α·T²·KL(teacher ‖ student) at temperature T with
 * AdamW under warmup + cosine, teacher logits computed on the fly by the
 * runtime. Output: a Hugging Face MistralForCausalLM (dense) or
 * MixtralForCausalLM (healed MoE) directory (f32), under the output policy
 * (mt_write.h). docs/distill.md has the measurements. */
#ifndef MT_DISTILL_H
#define MT_DISTILL_H

#include "mt_common.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    MT_DISTILL_INIT_CONCAT = 0,  /* the top-k experts by routing frequency side by side, w2 scaled by mean gate */
    MT_DISTILL_INIT_AVERAGE = 1, /* experts averaged (frequency-weighted) in width/expert-width groups           */
    MT_DISTILL_INIT_RANDOM = 2,  /* N(0, 0.02) (w2: 0.02/sqrt(2L)), the baseline                                 */
    MT_DISTILL_INIT_COUNT
} mt_distill_init;
const char *mt_distill_init_name(int init);
int mt_distill_init_from_name(const char *s); /* -1 when unknown */

/* One training step, reported after it ran. */
typedef struct {
    int step, steps;       /* 1-based step just done, of steps             */
    uint64_t tokens;       /* training tokens so far                       */
    double loss, ce, kd;   /* this step's loss, its CE and KL parts        */
    double lr, grad_norm;  /* before clipping                              */
    double tokens_per_s;   /* over the steps of this run (teacher included) */
    double eta_s;
} mt_distill_step;
typedef void (*mt_distill_step_fn)(void *user, const mt_distill_step *s);

typedef struct {
    /* NULL: a dense student; else the directory (or file) of a Mixtral-format
     * MoE with the teacher's vocabulary to heal (its own shapes and experts). */
    const char *student_path;
    int width;             /* dense student FFN width; 0 = top_k × expert width */
    int init;              /* mt_distill_init                               */
    const char *data_path; /* training text (required)                      */
    uint64_t tokens;       /* training tokens (default 524288 = 0.5M)       */
    float kd_weight;       /* α (default 0.5)                               */
    float temperature;     /* T (default 1)                                 */
    float lr;              /* peak learning rate (default 1e-3)             */
    float min_lr_frac;     /* cosine floor as a fraction of lr (0.1)        */
    float weight_decay;    /* AdamW, on matrices only (default 0.01)        */
    float beta1, beta2;    /* 0.9, 0.95                                     */
    float grad_clip;       /* global L2 norm (1.0; 0 = off)                 */
    int warmup;            /* steps (-1 = 5 % of the steps, default)        */
    int batch, seq;        /* sequences per step, tokens each (16, 256)     */
    int init_tokens;       /* teacher tokens to count routing on (32768)    */
    uint64_t seed;         /* data order and random init (default 1)        */
    int n_threads;         /* 0 = all cores                                 */
    int force;             /* output policy: replace what moetool did not write */
    /* Resume: a checkpoint "<out>.ckpt" written atomically every
     * ckpt_every steps (0 = never) and removed when the output is in place;
     * resume = 1 continues from it (same options and thread count give the
     * same loss curve as an uninterrupted run). */
    int ckpt_every;
    int resume;
    /* Top-K teacher logit cache: topk_logits = K > 0 trains on aligned
     * windows of seq tokens whose teacher top-K logits are computed once and
     * kept in logit_cache (NULL: "<out>.logits"), reused by later runs with
     * the same teacher, data, K and seq; KD against the teacher's top K
     * renormalised. 0 = logits on the fly (default). */
    int topk_logits;
    const char *logit_cache;
    mt_distill_step_fn on_step;
    void *step_user;
    mt_progress_fn progress;
    void *progress_user;
} mt_distill_opts;
void mt_distill_opts_default(mt_distill_opts *o);

typedef struct {
    int steps, start_step, width, init;
    int n_experts, top_k;          /* the MoE student's; 0 for a dense one */
    double kd_weight, temperature, lr; /* as used                          */
    uint64_t tokens;               /* trained this run and before a resume */
    uint64_t student_params;
    double first_loss, last_loss, last_ce, last_kd;
    double seconds, tokens_per_s;  /* this run's steps, teacher included   */
    /* --topk-logits: windows in the cache, computed by this run, file bytes */
    int cache_windows, cache_computed;
    uint64_t cache_bytes;
    double cache_bytes_per_token;
    /* Data parallel (`mpirun -np N`): this process's rank of ranks (0 of 1
     * alone). Rank 0 alone writes OUT, checkpoints and the cache and calls
     * the callbacks; quiet_error: this rank failed with the error rank 0
     * reports (so N ranks print one line). */
    int rank, ranks, quiet_error;
} mt_distill_report;

/* This process's rank when a launcher (mpirun) started it as one of several
 * (0 otherwise): callers print what every rank would print alike on rank 0
 * only. */
int mt_distill_launcher_rank(void);
int mt_distill(const char *teacher_path, const char *out_path, const mt_distill_opts *o, mt_distill_report *rep);

#ifdef __cplusplus
}
#endif
#endif
