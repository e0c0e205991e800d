/* arch_qwen2moe.c — Qwen1.5-MoE / Qwen2-MoE (transformers' modeling_qwen2_moe,
 * Qwen2MoeForCausalLM): a Llama-style decoder with biases on q/k/v, routed
 * experts (softmax over E, top-k, not renormalised unless norm_topk_prob)
 * beside one shared expert whose output is scaled by
 * sigmoid(x · shared_expert_gate), and dense-MLP layers where
 * decoder_sparse_step / mlp_only_layers say so (their size is
 * intermediate_size; experts use moe_intermediate_size).
 * GGUF follows llama.cpp's "qwen2moe" architecture (convert_hf_to_gguf.py,
 * src/llama-arch.cpp): stacked ffn_{gate,up,down}_exps, the shared expert as
 * ffn_{gate,up,down}_shexp and its gate ffn_gate_inp_shexp; Q/K rows are not
 * permuted (NEOX rope, pairs (i, i + d/2) as in HF). */
#include "arch_impl.h"

#define LF MT_ROLE_F_LAYER
#define Q MT_ROLE_F_QUANT
#define F32 MT_ROLE_F_F32_GGUF
#define MOE (MT_ROLE_F_LAYER | MT_ROLE_F_MOE)
#define EXP (MT_ROLE_F_LAYER | MT_ROLE_F_EXPERT | MT_ROLE_F_STACKED | MT_ROLE_F_MOE | MT_ROLE_F_QUANT)
#define DNS (MT_ROLE_F_LAYER | MT_ROLE_F_DENSE | MT_ROLE_F_QUANT)
#define PFX "model.layers.{L}."

static const mt_arch_tensor g_qwen2moe_tensors[] = {
    {MT_ROLE_TOK_EMBD, "embed_tokens", "model.embed_tokens.weight", "token_embd.weight", NULL, 0, MT_DIM_VOCAB,
     MT_DIM_HIDDEN},
    {MT_ROLE_ATTN_NORM, "input_layernorm", PFX "input_layernorm.weight", "blk.{L}.attn_norm.weight", NULL, LF | F32,
     MT_DIM_NONE, MT_DIM_HIDDEN},
    {MT_ROLE_WQ, "q_proj", PFX "self_attn.q_proj.weight", "blk.{L}.attn_q.weight", NULL, LF | Q, MT_DIM_Q,
     MT_DIM_HIDDEN},
    {MT_ROLE_BQ, "q_proj.bias", PFX "self_attn.q_proj.bias", "blk.{L}.attn_q.bias", NULL, LF | F32, MT_DIM_NONE,
     MT_DIM_Q},
    {MT_ROLE_WK, "k_proj", PFX "self_attn.k_proj.weight", "blk.{L}.attn_k.weight", NULL, LF | Q, MT_DIM_KV,
     MT_DIM_HIDDEN},
    {MT_ROLE_BK, "k_proj.bias", PFX "self_attn.k_proj.bias", "blk.{L}.attn_k.bias", NULL, LF | F32, MT_DIM_NONE,
     MT_DIM_KV},
    {MT_ROLE_WV, "v_proj", PFX "self_attn.v_proj.weight", "blk.{L}.attn_v.weight", NULL, LF | Q, MT_DIM_KV,
     MT_DIM_HIDDEN},
    {MT_ROLE_BV, "v_proj.bias", PFX "self_attn.v_proj.bias", "blk.{L}.attn_v.bias", NULL, LF | F32, MT_DIM_NONE,
     MT_DIM_KV},
    {MT_ROLE_WO, "o_proj", PFX "self_attn.o_proj.weight", "blk.{L}.attn_output.weight", NULL, LF | Q, MT_DIM_HIDDEN,
     MT_DIM_Q},
    {MT_ROLE_FFN_NORM, "post_attention_layernorm", PFX "post_attention_layernorm.weight", "blk.{L}.ffn_norm.weight",
     NULL, LF | F32, MT_DIM_NONE, MT_DIM_HIDDEN},
    {MT_ROLE_ROUTER, "router", PFX "mlp.gate.weight", "blk.{L}.ffn_gate_inp.weight", NULL, MOE | F32, MT_DIM_ROUTER,
     MT_DIM_HIDDEN},
    {MT_ROLE_EXP_GATE, "gate_proj", PFX "mlp.experts.{E}.gate_proj.weight", "blk.{L}.ffn_gate_exps.weight", NULL, EXP,
     MT_DIM_FFN, MT_DIM_HIDDEN},
    {MT_ROLE_EXP_UP, "up_proj", PFX "mlp.experts.{E}.up_proj.weight", "blk.{L}.ffn_up_exps.weight", NULL, EXP,
     MT_DIM_FFN, MT_DIM_HIDDEN},
    {MT_ROLE_EXP_DOWN, "down_proj", PFX "mlp.experts.{E}.down_proj.weight", "blk.{L}.ffn_down_exps.weight", NULL, EXP,
     MT_DIM_HIDDEN, MT_DIM_FFN},
    {MT_ROLE_SHEXP_ROUTER, "shared_expert_gate", PFX "mlp.shared_expert_gate.weight",
     "blk.{L}.ffn_gate_inp_shexp.weight", NULL, MOE | F32, MT_DIM_ONE, MT_DIM_HIDDEN},
    {MT_ROLE_SHEXP_GATE, "shared_expert.gate_proj", PFX "mlp.shared_expert.gate_proj.weight",
     "blk.{L}.ffn_gate_shexp.weight", NULL, MOE | Q, MT_DIM_FFN_SHARED, MT_DIM_HIDDEN},
    {MT_ROLE_SHEXP_UP, "shared_expert.up_proj", PFX "mlp.shared_expert.up_proj.weight", "blk.{L}.ffn_up_shexp.weight",
     NULL, MOE | Q, MT_DIM_FFN_SHARED, MT_DIM_HIDDEN},
    {MT_ROLE_SHEXP_DOWN, "shared_expert.down_proj", PFX "mlp.shared_expert.down_proj.weight",
     "blk.{L}.ffn_down_shexp.weight", NULL, MOE | Q, MT_DIM_HIDDEN, MT_DIM_FFN_SHARED},
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

/* Qwen2-MoE's attention is plain causal attention here: the sliding window
 * (use_sliding_window) is not run, so a config asking for it is refused. */
static const char *const g_qwen2moe_refuse[] = {"use_sliding_window", NULL};

const mt_arch mt_arch_qwen2moe = {
    .name = "qwen2moe",
    .hf_model_type = "qwen2_moe",
    .hf_class = "Qwen2MoeForCausalLM",
    .gguf_arch = "qwen2moe",
    .moe = 1,
    .rope_theta = 10000.0, /* Qwen2MoeConfig defaults */
    .norm_eps = 1e-6,
    .max_pos = 32768,
    .routing = MT_ROUTE_SOFTMAX,
    .renorm_topk = 0, /* norm_topk_prob = false */
    .n_shared_experts = 1,
    .shared_gate = 1,
    .qk_norm = 0,
    .attn_bias = 1,
    .hf_rope = MT_ROPE_HALF,
    .gguf_rope = MT_ROPE_HALF,
    .hidden_act = "silu",
    .hf_key_experts = "num_experts",
    .hf_key_expert_ffn = "moe_intermediate_size",
    .hf_key_shared_ffn = "shared_expert_intermediate_size",
    .hf_key_norm_topk = "norm_topk_prob",
    .hf_sparse_layers = 1,
    .hf_refuse_set = g_qwen2moe_refuse,
    .hf_attn_module = "self_attn",
    .hf_moe_module = "mlp.experts",
    .hf_mlp_module = "mlp",
    .tensors = g_qwen2moe_tensors,
    .n_tensors = (int)(sizeof g_qwen2moe_tensors / sizeof g_qwen2moe_tensors[0]),
};
