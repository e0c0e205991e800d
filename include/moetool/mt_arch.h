/* mt_arch.h — the model description: for each supported family, one table
 * of tensor roles (what a weight is for, its Hugging Face and GGUF names,
 * its shape from the config) and the family's hyperparameters. Every walk
 * over a checkpoint's weights (loading, conversion, quantization, merging)
 * goes through this table and its iterator, so a tensor name is written in
 * exactly one place: the family's table file (lib/io/arch/arch_<family>.c).
 *
 * Name patterns: "{L}" stands for the layer index, "{E}" for the expert
 * index; nothing else is special. */
#ifndef MT_ARCH_H
#define MT_ARCH_H

#include "mt_io.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What a weight is for. Dense layers use FFN_*, MoE layers ROUTER + EXP_*. */
typedef enum {
    MT_ROLE_TOK_EMBD = 0,
    MT_ROLE_OUT_NORM,
    MT_ROLE_LM_HEAD,
    MT_ROLE_ATTN_NORM,
    MT_ROLE_WQ,
    MT_ROLE_WK,
    MT_ROLE_WV,
    MT_ROLE_WO,
    MT_ROLE_FFN_NORM,
    MT_ROLE_ROUTER,
    MT_ROLE_EXP_GATE, /* w1 */
    MT_ROLE_EXP_UP,   /* w3 */
    MT_ROLE_EXP_DOWN, /* w2 */
    MT_ROLE_FFN_GATE,
    MT_ROLE_FFN_UP,
    MT_ROLE_FFN_DOWN,
    MT_ROLE_BQ,         /* q/k/v projection biases (Qwen2-MoE)           */
    MT_ROLE_BK,
    MT_ROLE_BV,
    MT_ROLE_SHEXP_GATE, /* shared expert: always on, beside the routed ones */
    MT_ROLE_SHEXP_UP,
    MT_ROLE_SHEXP_DOWN,
    MT_ROLE_SHEXP_ROUTER, /* (1, hidden): the shared expert's sigmoid gate */
    MT_ROLE_Q_NORM,     /* QK-norm weights (Qwen3-MoE: per head, OLMoE:  */
    MT_ROLE_K_NORM,     /* over the whole projection)                    */
    MT_ROLE_COUNT
} mt_role;

/* Flags of a role. */
enum {
    MT_ROLE_F_LAYER = 1 << 0,    /* one per layer ({L} in the names)                 */
    MT_ROLE_F_EXPERT = 1 << 1,   /* one per expert of a MoE layer ({E} in HF names)  */
    MT_ROLE_F_OPTIONAL = 1 << 2, /* may be absent: lm_head when embeddings are tied  */
    MT_ROLE_F_STACKED = 1 << 3,  /* GGUF holds all experts in one 3-D tensor          */
    MT_ROLE_F_QUANT = 1 << 4,    /* a linear weight that quantize may rewrite         */
    MT_ROLE_F_MOE = 1 << 5,      /* only in layers with experts                       */
    MT_ROLE_F_DENSE = 1 << 6,    /* only in layers without experts                    */
    MT_ROLE_F_ROPE = 1 << 7,     /* Q/K rows: GGUF stores them permuted for its RoPE  */
    MT_ROLE_F_F32_GGUF = 1 << 8, /* kept in F32 in GGUF (llama.cpp: norms, router)    */
};

/* A dimension of a role's shape, resolved against the config. */
typedef enum {
    MT_DIM_NONE = 0,    /* 1-D tensor: only `cols` is used                 */
    MT_DIM_HIDDEN,      /* hidden                                          */
    MT_DIM_FFN,         /* ffn (intermediate size of an expert / the MLP)  */
    MT_DIM_VOCAB,       /* vocab                                           */
    MT_DIM_Q,           /* n_heads * head_dim                              */
    MT_DIM_KV,          /* n_kv_heads * head_dim                           */
    MT_DIM_ROUTER,      /* router rows of the layer (= its experts without alias) */
    MT_DIM_FFN_DENSE,   /* ffn_dense: dense-MLP layers of a MoE model (0 = ffn) */
    MT_DIM_FFN_SHARED,  /* ffn_shared: the shared expert                   */
    MT_DIM_ONE,         /* 1 (a gate row)                                  */
    MT_DIM_HEAD,        /* head_dim                                        */
} mt_dim;

typedef struct {
    mt_role role;
    const char *label;       /* short name for messages: "q_proj"            */
    const char *hf;          /* HF name pattern                               */
    const char *gguf;        /* GGUF name pattern (stacked experts: the 3-D tensor) */
    const char *gguf_split;  /* per-expert GGUF name (older files), or NULL    */
    unsigned flags;          /* MT_ROLE_F_*                                    */
    mt_dim rows, cols;       /* PyTorch order: a Linear is (out, in)           */
} mt_arch_tensor;

typedef enum { MT_ROUTE_SOFTMAX = 0, MT_ROUTE_SIGMOID = 1 } mt_route_fn;

/* RMSNorm on Q and K after their projections, before RoPE. */
typedef enum {
    MT_QK_NORM_NONE = 0,
    MT_QK_NORM_HEAD = 1, /* each head's head_dim values (Qwen3-MoE)              */
    MT_QK_NORM_FULL = 2, /* the whole q (n_heads·head_dim) / k projection (OLMoE) */
} mt_qk_norm;

/* One family. Hyperparameters describe the math the runtime must run; a
 * family whose math the runtime lacks is refused by name at load. */
typedef struct {
    const char *name;            /* mt_config.arch: "mixtral"                   */
    const char *hf_model_type;   /* config.json model_type                      */
    const char *hf_class;        /* config.json architectures[0]                */
    const char *gguf_arch;       /* general.architecture written to GGUF       */
    int moe;                     /* config carries num_local_experts / top-k    */
    /* HF config defaults */
    double rope_theta, norm_eps;
    int max_pos;
    /* math */
    mt_route_fn routing;         /* scores over experts                          */
    int renorm_topk;             /* top-k weights renormalised to sum 1          */
    int n_shared_experts;        /* always-on experts beside the routed ones     */
    int shared_gate;             /* shared expert output scaled by
                                    sigmoid(x · shared_expert_gate)              */
    mt_qk_norm qk_norm;          /* RMSNorm on Q and K                           */
    int attn_bias;               /* biases on q/k/v projections                  */
    mt_rope_style hf_rope;       /* RoPE pairing of HF-stored Q/K rows           */
    int gguf_kv_eq_heads;        /* llama.cpp's arch sizes k_norm by hidden: its
                                    GGUF holds only n_kv_heads == n_heads      */
    mt_rope_style gguf_rope;     /* ... and of GGUF-stored ones (llama: permuted
                                    to pairs; qwen2moe: as HF, NEOX rope)       */
    /* HF config.json keys that differ between families */
    const char *hf_key_experts;    /* "num_local_experts" | "num_experts"        */
    const char *hf_key_expert_ffn; /* NULL: intermediate_size sizes the experts;
                                      else the experts' key, and
                                      intermediate_size sizes dense-MLP layers  */
    const char *hf_key_shared_ffn; /* shared expert's intermediate size, or NULL */
    const char *hf_key_norm_topk;  /* key overriding renorm_topk, or NULL        */
    int hf_sparse_layers;          /* decoder_sparse_step / mlp_only_layers say
                                      which layers are dense MLPs              */
    const char *const *hf_refuse_set; /* keys that ask for math the family does
                                      not run here unless absent, null or false
                                      (use_sliding_window, clip_qkv; NULL-ended) */
    const char *hidden_act;      /* the only activation the family runs ("silu") */
    /* HF module names quantization_config lists (relative to a layer) */
    const char *hf_attn_module;  /* "self_attn"                                  */
    const char *hf_moe_module;   /* "block_sparse_moe.experts"                   */
    const char *hf_mlp_module;   /* "mlp"                                        */
    const mt_arch_tensor *tensors; /* in output order: globals before layers, the
                                      per-layer roles, then the globals after     */
    int n_tensors;
} mt_arch;

/* The family named `name` (mt_config.arch), or NULL. */
const mt_arch *mt_arch_get(const char *name);
/* The family of an HF model_type / architectures[0] class name, or NULL. */
const mt_arch *mt_arch_find_hf(const char *model_type, const char *class_name);
/* Why a known family is refused (HF model_type or GGUF architecture), or
 * NULL: "DeepSeek-V2 multi-head latent attention (MLA) is not supported". */
const char *mt_arch_refusal(const char *hf_model_type, const char *gguf_arch);
/* The first family written to GGUF as architecture `gguf_arch`, or NULL. */
const mt_arch *mt_arch_find_gguf(const char *gguf_arch);
/* Family of a config: its arch; MT_ERR_UNSUPPORTED naming `path` if unknown. */
int mt_arch_of(const mt_arch **out, const mt_config *c, const char *path);
/* The table row of `role` in `a`, or NULL when the family has no such role. */
const mt_arch_tensor *mt_arch_tensor_of(const mt_arch *a, mt_role role);

/* The name of (role, layer, expert) in a format (MT_FMT_HF or MT_FMT_GGUF;
 * MT_FMT_SAFETENSORS = HF). GGUF experts: expert < 0 names the stacked
 * tensor, expert >= 0 the per-expert one (gguf_split). Returns the length,
 * or -1 when the name does not fit in n bytes or the role has no such name. */
int mt_arch_name(char *buf, size_t n, const mt_arch_tensor *t, mt_format fmt, int layer, int expert);
/* The inverse: the role row, layer and expert of a tensor name in a format,
 * or NULL. GGUF stacked names give *expert = -1; names without {L}/{E}
 * give -1 for those. */
const mt_arch_tensor *mt_arch_parse(const mt_arch *a, const char *name, mt_format fmt, int *layer, int *expert);

/* Expected PyTorch-order shape of one (per-expert) tensor of a role in
 * layer `layer`; returns the number of dims (1 or 2). */
int mt_arch_shape(const mt_arch_tensor *t, const mt_config *c, int layer, int64_t shape[2]);
/* "[r, c]" / "[c]" for messages. */
void mt_arch_shape_str(char *buf, size_t n, int nd, const int64_t *shape);

/* Q/K row permutation between HF's rotate_half RoPE layout and GGUF's
 * interleaved one (llama.cpp's permute: w.reshape(n_head, 2, hd/2, cols)
 * .swapaxes(1, 2)): the source row of output row r of a head_dim-hd matrix,
 * writing GGUF from HF (to_gguf = 1) or HF from GGUF (to_gguf = 0). */
int64_t mt_rope_perm_row(int to_gguf, int64_t r, int64_t hd);

/* ---- iterator over every weight of a model --------------------------------
 * Order: the table's order; per-layer roles run layer by layer (all of a
 * layer's roles, then the next layer). Roles a layer does not have (MOE in a
 * dense layer, DENSE in a MoE layer) are skipped; so is an OPTIONAL role
 * when the config says it is absent (lm_head of tied embeddings).
 * MT_ITER_PER_EXPERT yields a per-expert role once per expert (expert-minor
 * within the role); without it, once per layer with expert = -1.
 * MT_ITER_OPTIONAL yields OPTIONAL roles whatever the config says (the
 * caller checks whether the checkpoint has them). */
enum { MT_ITER_PER_EXPERT = 1, MT_ITER_OPTIONAL = 2 };

typedef struct {
    const mt_arch_tensor *t; /* the role                                        */
    int layer;               /* -1 for global roles                             */
    int expert;              /* -1 unless a per-expert item                      */
    int n_experts;           /* experts of the layer (per-expert roles), else 0 */
    int n_dims;              /* of one (per-expert) tensor: 1 or 2              */
    int64_t shape[2];
    char hf[160], gguf[160]; /* names: gguf of a stacked role without expert is the 3-D tensor */
} mt_arch_item;

typedef struct {
    const mt_arch *a;
    const mt_config *c;
    unsigned flags;
    int i, layer, expert, run_start, run_end;
} mt_arch_iter;

int mt_arch_iter_init(mt_arch_iter *it, const mt_config *c, unsigned flags, const char *path);
/* 1 and fills *out while there are items, then 0. */
int mt_arch_iter_next(mt_arch_iter *it, mt_arch_item *out);

/* Pointer to the mt_mat of (role, layer, expert) in a loaded model: the
 * role-indexed view of mt_weights. NULL when the model has no such matrix. */
const mt_mat *mt_weights_mat(const mt_weights *w, mt_role role, int layer, int expert);

#ifdef __cplusplus
}
#endif
#endif
