/* arch_olmoe.c — OLMoE (OlmoeForCausalLM, model_type olmoe; transformers'
 * modeling_olmoe): a Llama-style decoder with QK-norm over the whole q and k
 * projections (q_norm of n_heads·head_dim, k_norm of n_kv_heads·head_dim,
 * before the split into heads and RoPE), routed experts only (softmax over
 * E, top-k, not renormalised unless norm_topk_prob), experts sized by
 * intermediate_size, every layer MoE. clip_qkv (clamping q/k/v) is not run
 * here and is refused when set.
 * GGUF follows llama.cpp's "olmoe" architecture: attn_q_norm / attn_k_norm,
 * stacked ffn_*_exps, Q/K rows as in HF (NEOX rope). llama.cpp sizes
 * attn_k_norm by n_embd, so its olmoe holds no grouped-query attention
 * (OLMoE-1B-7B has none): such a checkpoint converts to HF only. */
#include "arch_impl.h"

#define LF MT_ROLE_F_LAYER
#define Q MT_ROLE_F_QUANT
#define F32 MT_ROLE_F_F32_GGUF
#define EXP (MT_ROLE_F_LAYER | MT_ROLE_F_EXPERT | MT_ROLE_F_STACKED | MT_ROLE_F_MOE | MT_ROLE_F_QUANT)
#define PFX "model.layers.{L}."

static const mt_arch_tensor g_olmoe_tensors[] = {
    {MT_ROLE_TOK_EMBD, "embed_tokens", "model.embed_tokens.weight", "token_embd.weight", NULL, 0, MT_DIM_VOCAB,
     MT_DIM_HIDDEN},
    {MT_ROLE_ATTN_NORM, "input_layernorm", PFX "input_layernorm.weight", "blk.{L}.attn_norm.weight", NULL, LF | F32,
     MT_DIM_NONE, MT_DIM_HIDDEN},
    {MT_ROLE_WQ, "q_proj", PFX "self_attn.q_proj.weight", "blk.{L}.attn_q.weight", NULL, LF | Q, MT_DIM_Q,
     MT_DIM_HIDDEN},
    {MT_ROLE_Q_NORM, "q_norm", PFX "self_attn.q_norm.weight", "blk.{L}.attn_q_norm.weight", NULL, LF | F32,
     MT_DIM_NONE, MT_DIM_Q},
    {MT_ROLE_WK, "k_proj", PFX "self_attn.k_proj.weight", "blk.{L}.attn_k.weight", NULL, LF | Q, MT_DIM_KV,
     MT_DIM_HIDDEN},
    {MT_ROLE_K_NORM, "k_norm", PFX "self_attn.k_norm.weight", "blk.{L}.attn_k_norm.weight", NULL, LF | F32,
     MT_DIM_NONE, MT_DIM_KV},
    {MT_ROLE_WV, "v_proj", PFX "self_attn.v_proj.weight", "blk.{L}.attn_v.weight", NULL, LF | Q, MT_DIM_KV,
     MT_DIM_HIDDEN},
    {MT_ROLE_WO, "o_proj", PFX "self_attn.o_proj.weight", "blk.{L}.attn_output.weight", NULL, LF | Q, MT_DIM_HIDDEN,
     MT_DIM_Q},
    {MT_ROLE_FFN_NORM, "post_attention_layernorm", PFX "post_attention_layernorm.weight", "blk.{L}.ffn_norm.weight",
     NULL, LF | F32, MT_DIM_NONE, MT_DIM_HIDDEN},
    {MT_ROLE_ROUTER, "router", PFX "mlp.gate.weight", "blk.{L}.ffn_gate_inp.weight", NULL,
     LF | MT_ROLE_F_MOE | F32, MT_DIM_ROUTER, MT_DIM_HIDDEN},
    {MT_ROLE_EXP_GATE, "gate_proj", PFX "mlp.experts.{E}.gate_proj.weight", "blk.{L}.ffn_gate_exps.weight", NULL, EXP,
     MT_DIM_FFN, MT_DIM_HIDDEN},
    {MT_ROLE_EXP_UP, "up_proj", PFX "mlp.experts.{E}.up_proj.weight", "blk.{L}.ffn_up_exps.weight", NULL, EXP,
     MT_DIM_FFN, MT_DIM_HIDDEN},
    {MT_ROLE_EXP_DOWN, "down_proj", PFX "mlp.experts.{E}.down_proj.weight", "blk.{L}.ffn_down_exps.weight", NULL, EXP,
     MT_DIM_HIDDEN, MT_DIM_FFN},
    {MT_ROLE_OUT_NORM, "norm", "model.norm.weight", "output_norm.weight", NULL, F32, MT_DIM_NONE, MT_DIM_HIDDEN},
    {MT_ROLE_LM_HEAD, "lm_head", "lm_head.weight", "output.weight", NULL, MT_ROLE_F_OPTIONAL, MT_DIM_VOCAB,
     MT_DIM_HIDDEN},
};

static const char *const g_olmoe_refuse[] = {"clip_qkv", NULL};

const mt_arch mt_arch_olmoe = {
    .name = "olmoe",
    .hf_model_type = "olmoe",
    .hf_class = "OlmoeForCausalLM",
    .gguf_arch = "olmoe",
    .moe = 1,
    .rope_theta = 10000.0, /* OlmoeConfig defaults */
    .norm_eps = 1e-5,
    .max_pos = 4096,
    .routing = MT_ROUTE_SOFTMAX,
    .renorm_topk = 0, /* norm_topk_prob = false */
    .qk_norm = MT_QK_NORM_FULL,
    .hf_rope = MT_ROPE_HALF,
    .gguf_rope = MT_ROPE_HALF,
    .gguf_kv_eq_heads = 1, /* llama.cpp: attn_k_norm of n_embd */
    .hidden_act = "silu",
    .hf_key_experts = "num_experts",
    .hf_key_norm_topk = "norm_topk_prob",
    .hf_refuse_set = g_olmoe_refuse,
    .hf_attn_module = "self_attn",
    .hf_moe_module = "mlp.experts",
    .hf_mlp_module = "mlp",
    .tensors = g_olmoe_tensors,
    .n_tensors = (int)(sizeof g_olmoe_tensors / sizeof g_olmoe_tensors[0]),
};
