/* mt_merge.h — reducing the experts of a MoE model (8 -> 6, 8 -> 4, or a
 * count per layer) by calibrated merging or pruning, with the router reduced
 * to K rows, written as a plain Hugging Face Mixtral checkpoint (or, with
 * MT_MERGE_ROUTER_ALIAS, the original rows aliased to the merged experts).
 *
 * Pipeline (lib/merge/merge.c): calibration text -> runtime forward with
 * capture hooks (FFN inputs and router choices of every layer; routing
 * frequencies over all tokens, a fixed-size sample of FFN inputs) -> per
 * layer: every expert run in f32 on the sample -> grouping (method) ->
 * neuron alignment -> weighted average -> K-row router -> streamed output.
 * The math pieces are public so tests can check them against properties. */
#ifndef MT_MERGE_H
#define MT_MERGE_H
#define MT_MERGE_WINDOW 256 /* default calibration window, tokens */
#define MT_MERGE_HELDOUT_FILE_WINDOWS 16 /* auto with --heldout FILE: windows of it scored by default */

#include "mt_io.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    MT_MERGE_PRUNE = 0,     /* keep the K most used experts, router rows sliced        */
    MT_MERGE_AVERAGE,       /* uniform average of the least used into the most used    */
    MT_MERGE_FREQUENCY,     /* same groups, aligned, frequency-weighted                */
    MT_MERGE_HC_SMOE,       /* average-linkage clustering on expert outputs, aligned,
                               frequency-weighted                                       */
    MT_MERGE_MC_SMOE,       /* dominant experts + nearest by router logits, aligned,
                               frequency-weighted                                       */
    MT_MERGE_REAP,          /* keep the K most salient (gate x |output| over routed
                               tokens), router rows sliced                              */
    MT_MERGE_REAP_MERGE,    /* REAP's K most salient as anchors, every other expert
                               merged into the anchor with the closest outputs,
                               aligned, frequency-weighted                              */
    MT_MERGE_NAEE,          /* keep the K experts whose sliced-router layer output best
                               reconstructs the original on the calibration sample
                               (NAEE search: every subset, or greedy elimination when
                               there are more than 5000), router rows sliced            */
    MT_MERGE_AUTO,          /* every method that applies (mt_merge_auto_candidates), fitted
                               on the first calibration windows and measured on the last
                               ones (held out): the lowest held-out perplexity is written */
    MT_MERGE_METHOD_COUNT
} mt_merge_method;

typedef enum {
    MT_MERGE_ROUTER_ANCHOR = 0, /* the row of the group's most used expert            */
    MT_MERGE_ROUTER_AVERAGE,    /* frequency-weighted average of the group's rows      */
    MT_MERGE_ROUTER_FIT,        /* least squares on calibration inputs to the log of
                                   the group's summed routing probability               */
    MT_MERGE_ROUTER_ALIAS,      /* keep every original router row unchanged, each mapped
                                   to the merged expert of its group (config key
                                   moe_router_alias): exact routing, loads in moetool
                                   only; merging methods only (a pruned expert has no
                                   target)                                               */
    MT_MERGE_ROUTER_COUNT
} mt_merge_router;

/* Name <-> value ("hc-smoe", "fit"); -1 when unknown. */
const char *mt_merge_method_name(int m);
int mt_merge_method_from_name(const char *s);
const char *mt_merge_router_name(int r);
int mt_merge_router_from_name(const char *s);

typedef struct {
    int experts;                        /* K for every layer not in layer_experts   */
    int *layer_experts;                 /* [n_layer_experts] per-layer K (0 =
                                           `experts`); heap, set by
                                           mt_merge_parse_layers, released by
                                           mt_merge_opts_free                       */
    int n_layer_experts;
    int budget;                         /* > 0: total experts over all layers, spread
                                           by sensitivity (instead of experts /
                                           layer_experts)                            */
    int method;                         /* mt_merge_method (default auto)           */
    int heldout_windows;                /* auto: calibration windows held out for
                                           choosing (0 = a quarter of them, at
                                           least 1); the rest fit the candidates    */
    const char *heldout_path;           /* auto: choose on the first windows of this
                                           text instead (heldout_windows of them,
                                           default 16, no BOS, as eval's gptq
                                           protocol reads it); every calibration
                                           window then fits                          */
    int router;                         /* mt_merge_router (default fit)            */
    const char *calib_path;             /* calibration text (required)              */
    int calib_tokens;                   /* tokens of calibration (default 16384)    */
    int window;                         /* tokens per calibration window; 0:
                                           MT_MERGE_WINDOW, or max_position_embeddings
                                           when shorter                             */
    int allow_long_context;             /* 1: window may pass max_pos               */
    int sample_tokens;                  /* FFN inputs kept per layer (default 4096) */
    int router_steps;                   /* fit router: 0 = least squares on log
                                           group probabilities; N > 0 = N Adam
                                           steps of softmax regression to the
                                           summed probabilities from the anchor rows */
    int n_threads;                      /* 0 = all CPUs                              */
    int force;                          /* replace an existing output moetool did not
                                           write (docs/outputs.md)                   */
    const char *command;                /* the command line, recorded in the output
                                           (config.json "moetool", README.md); may be
                                           NULL                                      */
    mt_progress_fn progress;
    void *progress_user;
} mt_merge_opts;

void mt_merge_opts_default(mt_merge_opts *o);
/* Releases what mt_merge_parse_layers allocated (the rest is the caller's). */
void mt_merge_opts_free(mt_merge_opts *o);
/* The methods auto tries for these options, in order (ties go to the first):
 * prune, average, frequency, hc-smoe, mc-smoe, reap, reap-merge, naee; with
 * MT_MERGE_ROUTER_ALIAS only the merging ones. Returns how many were written
 * to out. */
int mt_merge_auto_candidates(const mt_merge_opts *o, int *out);
/* Parses "0-1:6,2-3:4" (layer ranges : K) into o->layer_experts (grown on
 * the heap to the last layer named; layers not named stay 0). Layers are
 * checked against n_layers (or, when n_layers <= 0, against MT_MAX_LAYERS,
 * the bound every loaded model's layer count satisfies). */
int mt_merge_parse_layers(mt_merge_opts *o, const char *spec, int n_layers);

/* Per-layer arrays are on the heap, sized by the model (no expert or layer
 * bound): mt_merge allocates them, the caller releases them with
 * mt_merge_report_free (also after a failed mt_merge; safe on a zeroed
 * report). */
typedef struct {
    int n_layers;
    int experts_in;                     /* experts per layer of the source           */
    int top_k;                          /* experts each token uses                   */
    int *layer_k;                       /* [n_layers] experts per layer written      */
    /* group[l][e]: output expert that source expert e of layer l went into,
     * -1 when pruned. */
    int **group;                        /* [n_layers][experts_in]                    */
    double **freq;                      /* [n_layers][experts_in] fraction of routed
                                           slots per expert                          */
    double **gate_mean;                 /* [n_layers][experts_in] mean renormalised
                                           gate when routed                          */
    uint64_t calib_tokens;              /* tokens run                                */
    uint64_t expert_params_in, expert_params_out;
    double router_fit_rmse;             /* mean over layers (fit router only)        */
    /* recon_err[l]: relative error of layer l's output on the sample
     * (|y' - y|^2 / |y|^2 summed over the sample) with the kept experts and
     * the router sliced; set for naee (-1 otherwise). */
    double *recon_err;                  /* [n_layers]                                */
    /* With a budget: sensitivity[l][K] = the same relative error of the best
     * kept set of K experts (the naee search), K = top_k .. experts; the
     * budget's per-layer counts minimise its sum. */
    double **sensitivity;               /* [n_layers][experts_in + 1]                */
    double seconds;
    /* What was written and, with MT_MERGE_AUTO, how it was chosen. */
    int method;                         /* the method written                        */
    int window;                         /* calibration window, tokens                */
    uint64_t fit_tokens;                /* tokens the statistics came from (the
                                           first fit_tokens of the calibration
                                           stream: BOS, when the tokenizer has one,
                                           then the text)                            */
    int heldout_windows;                /* auto: windows held out (0 otherwise)      */
    uint64_t heldout_skip;              /* auto: text tokens before the held-out
                                           part (eval --skip-tokens scores the same) */
    double base_ppl;                    /* auto: the source model's held-out ppl     */
    int source_dtype;                   /* stored type (mt_dtype) of the router and
                                           expert matrices merged when it is not a
                                           plain float (they were dequantized to
                                           f32); -1 when all are f32/f16/bf16       */
    int source_mixed;                   /* 1: more than one such type                */
    int n_candidates;
    struct {
        int method;
        double ppl;                     /* held-out perplexity (gptq protocol)       */
        double kl;                      /* mean KL(source || candidate), nats/token  */
        double seconds;                 /* build + write + held-out evaluation       */
    } candidates[MT_MERGE_METHOD_COUNT];
    void *mem;                          /* the one block behind the arrays (owned)   */
} mt_merge_report;

void mt_merge_report_free(mt_merge_report *r);

/* Merges `model_path` (HF directory or safetensors with HF tensor names) into
 * the HF checkpoint directory `out_path` (written under a temporary name,
 * renamed when complete). `report` may be NULL. */
int mt_merge(const char *model_path, const char *out_path, const mt_merge_opts *o, mt_merge_report *report);

/* ---- building blocks (f32; row-major; shapes as in PyTorch) ------------- */

/* SwiGLU expert: y (n, H) = w2 (H, F) · (silu(w1 (F, H) · x) * (w3 (F, H) · x))
 * for x (n, H). act (n, F) receives the hidden activations when not NULL. */
void mt_merge_expert_forward(const float *w1, const float *w3, const float *w2, int H, int F, const float *x, int n,
                             float *y, float *act);

/* Reorders hidden units in place: new unit j = old unit perm[j] (rows of w1
 * and w3, columns of w2). The expert computes the same function. */
int mt_merge_permute_expert(float *w1, float *w3, float *w2, int H, int F, const int *perm);

/* Aligns a member's hidden units to an anchor's: perm[j] = the member unit
 * matched to anchor unit j, maximising the summed correlation of their
 * activations over n samples (anchor_act, member_act: (n, F)). Greedy
 * assignment on the correlation matrix (O(F^2) memory, O(F^2 log F) time)
 * then 2-opt swaps; no O(F^3) solve. */
int mt_merge_align(const float *anchor_act, const float *member_act, int n, int F, int *perm);

/* Reference MoE block in f32: router (E, H), top_k of softmax renormalised,
 * experts e with w1[e], w3[e], w2[e]. y (n, H). */
void mt_merge_moe_forward(const float *router, const float *const *w1, const float *const *w3,
                          const float *const *w2, int E, int top_k, int H, int F, const float *x, int n, float *y);

#ifdef __cplusplus
}
#endif
#endif
