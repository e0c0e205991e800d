/* arch_qwen3moe.c — Qwen3-MoE (Qwen3MoeForCausalLM, model_type qwen3_moe;
 * transformers' modeling_qwen3_moe): a Llama-style decoder with QK-norm
 * (RMSNorm over each head's head_dim values of q and k, weights
 * self_attn.q_norm / k_norm of size head_dim, applied before RoPE), an
 * explicit head_dim, no biases, routed experts only (softmax over E, top-k,
 * renormalised when norm_topk_prob), experts sized by moe_intermediate_size
 * and dense-MLP layers (decoder_sparse_step / mlp_only_layers) by
 * intermediate_size.
 * GGUF follows llama.cpp's "qwen3moe" architecture: attn_q_norm /
 * attn_k_norm, stacked ffn_*_exps, Q/K rows as in HF (NEOX rope). */
#include "arch_impl.h"

#define LF MT_ROLE_F_LAYER
#define Q MT_ROLE_F_QUANT
#define F32 MT_ROLE_F_F32_GGUF
#define EXP (MT_ROLE_F_LAYER | MT_ROLE_F_EXPERT | MT_ROLE_F_STACKED | MT_ROLE_F_MOE | MT_ROLE_F_QUANT)
#define DNS (MT_ROLE_F_LAYER | MT_ROLE_F_DENSE | MT_ROLE_F_QUANT)
#define PFX "model.layers.{L}."

static const mt_arch_tensor g_qwen3moe_tensors[] = {
    {MT_ROLE_TOK_EMBD, "embed_tokens", "model.embed_tokens.weight", "token_embd.weight", NULL, 0, MT_DIM_VOCAB,
     MT_DIM_HIDDEN},
    {MT_ROLE_ATTN_NORM, "input_layernorm", PFX "input_layernorm.weight", "blk.{L}.attn_norm.weight", NULL, LF | F32,
     MT_DIM_NONE, MT_DIM_HIDDEN},
    {MT_ROLE_WQ, "q_proj", PFX "self_attn.q_proj.weight", "blk.{L}.attn_q.weight", NULL, LF | Q, MT_DIM_Q,
     MT_DIM_HIDDEN},
    {MT_ROLE_Q_NORM, "q_norm", PFX "self_attn.q_norm.weight", "blk.{L}.attn_q_norm.weight", NULL, LF | F32,
     MT_DIM_NONE, MT_DIM_HEAD},
    {MT_ROLE_WK, "k_proj", PFX "self_attn.k_proj.weight", "blk.{L}.attn_k.weight", NULL, LF | Q, MT_DIM_KV,
     MT_DIM_HIDDEN},
    {MT_ROLE_K_NORM, "k_norm", PFX "self_attn.k_norm.weight", "blk.{L}.attn_k_norm.weight", NULL, LF | F32,
     MT_DIM_NONE, MT_DIM_HEAD},
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
    {MT_ROLE_FFN_GATE, "gate_proj", PFX "mlp.gate_proj.weight", "blk.{L}.ffn_gate.weight", NULL, DNS,
     MT_DIM_FFN_DENSE, MT_DIM_HIDDEN},
    {MT_ROLE_FFN_UP, "up_proj", PFX "mlp.up_proj.weight", "blk.{L}.ffn_up.weight", NULL, DNS, MT_DIM_FFN_DENSE,
     MT_DIM_HIDDEN},
    {MT_ROLE_FFN_DOWN, "down_proj", PFX "mlp.down_proj.weight", "blk.{L}.ffn_down.weight", NULL, DNS, MT_DIM_HIDDEN,
     MT_DIM_FFN_DENSE},
    {MT_ROLE_OUT_NORM, "norm", "model.norm.weight", "output_norm.weight", NULL, F32, MT_DIM_NONE, MT_DIM_HIDDEN},
    {MT_ROLE_LM_HEAD, "lm_head", "lm_head.weight", "output.weight", NULL, MT_ROLE_F_OPTIONAL, MT_DIM_VOCAB,
     MT_DIM_HIDDEN},
};

static const char *const g_qwen3moe_refuse[] = {"use_sliding_window", NULL};

const mt_arch mt_arch_qwen3moe = {
    .name = "qwen3moe",
    .hf_model_type = "qwen3_moe",
    .hf_class = "Qwen3MoeForCausalLM",
    .gguf_arch = "qwen3moe",
    .moe = 1,
    .rope_theta = 10000.0, /* Qwen3MoeConfig defaults */
    .norm_eps = 1e-6,
    .max_pos = 32768,
    .routing = MT_ROUTE_SOFTMAX,
    .renorm_topk = 0, /* norm_topk_prob defaults to false; the released models set it true */
    .qk_norm = MT_QK_NORM_HEAD,
    .hf_rope = MT_ROPE_HALF,
    .gguf_rope = MT_ROPE_HALF,
    .hidden_act = "silu",
    .hf_key_experts = "num_experts",
    .hf_key_expert_ffn = "moe_intermediate_size",
    .hf_key_norm_topk = "norm_topk_prob",
    .hf_sparse_layers = 1,
    .hf_refuse_set = g_qwen3moe_refuse,
    .hf_attn_module = "self_attn",
    .hf_moe_module = "mlp.experts",
    .hf_mlp_module = "mlp",
    .tensors = g_qwen3moe_tensors,
    .n_tensors = (int)(sizeof g_qwen3moe_tensors / sizeof g_qwen3moe_tensors[0]),
};
