/* arch_mixtral.c — the Llama-style decoder family: Mixtral (MoE) and the
 * dense Mistral and Llama it shares every tensor name with. The GGUF names
 * follow llama.cpp's "llama" architecture (convert_hf_to_gguf.py): merged
 * 3-D expert tensors ffn_{gate,up,down}_exps with ne = [hidden, ffn, E]
 * (gate/up) and [ffn, hidden, E] (down); older files name experts one by
 * one (blk.L.ffn_gate.E.weight). w1 = gate, w3 = up, w2 = down. */
#include "arch_impl.h"

#define LF MT_ROLE_F_LAYER
#define Q MT_ROLE_F_QUANT
#define EXP (MT_ROLE_F_LAYER | MT_ROLE_F_EXPERT | MT_ROLE_F_STACKED | MT_ROLE_F_MOE | MT_ROLE_F_QUANT)
#define DNS (MT_ROLE_F_LAYER | MT_ROLE_F_DENSE | MT_ROLE_F_QUANT)
#define F32 MT_ROLE_F_F32_GGUF

static const mt_arch_tensor g_llama_tensors[] = {
    {MT_ROLE_TOK_EMBD, "embed_tokens", "model.embed_tokens.weight", "token_embd.weight", NULL, 0,
     MT_DIM_VOCAB, MT_DIM_HIDDEN},
    {MT_ROLE_ATTN_NORM, "input_layernorm", "model.layers.{L}.input_layernorm.weight", "blk.{L}.attn_norm.weight", NULL,
     LF | F32, MT_DIM_NONE, MT_DIM_HIDDEN},
    {MT_ROLE_WQ, "q_proj", "model.layers.{L}.self_attn.q_proj.weight", "blk.{L}.attn_q.weight", NULL,
     LF | Q | MT_ROLE_F_ROPE, MT_DIM_Q, MT_DIM_HIDDEN},
    {MT_ROLE_WK, "k_proj", "model.layers.{L}.self_attn.k_proj.weight", "blk.{L}.attn_k.weight", NULL,
     LF | Q | MT_ROLE_F_ROPE, MT_DIM_KV, MT_DIM_HIDDEN},
    {MT_ROLE_WV, "v_proj", "model.layers.{L}.self_attn.v_proj.weight", "blk.{L}.attn_v.weight", NULL, LF | Q,
     MT_DIM_KV, MT_DIM_HIDDEN},
    {MT_ROLE_WO, "o_proj", "model.layers.{L}.self_attn.o_proj.weight", "blk.{L}.attn_output.weight", NULL, LF | Q,
     MT_DIM_HIDDEN, MT_DIM_Q},
    {MT_ROLE_FFN_NORM, "post_attention_layernorm", "model.layers.{L}.post_attention_layernorm.weight",
     "blk.{L}.ffn_norm.weight", NULL, LF | F32, MT_DIM_NONE, MT_DIM_HIDDEN},
    {MT_ROLE_ROUTER, "router", "model.layers.{L}.block_sparse_moe.gate.weight", "blk.{L}.ffn_gate_inp.weight", NULL,
     LF | MT_ROLE_F_MOE | F32, MT_DIM_ROUTER, MT_DIM_HIDDEN},
    {MT_ROLE_EXP_GATE, "w1", "model.layers.{L}.block_sparse_moe.experts.{E}.w1.weight", "blk.{L}.ffn_gate_exps.weight",
     "blk.{L}.ffn_gate.{E}.weight", EXP, MT_DIM_FFN, MT_DIM_HIDDEN},
    {MT_ROLE_EXP_UP, "w3", "model.layers.{L}.block_sparse_moe.experts.{E}.w3.weight", "blk.{L}.ffn_up_exps.weight",
     "blk.{L}.ffn_up.{E}.weight", EXP, MT_DIM_FFN, MT_DIM_HIDDEN},
    {MT_ROLE_EXP_DOWN, "w2", "model.layers.{L}.block_sparse_moe.experts.{E}.w2.weight",
     "blk.{L}.ffn_down_exps.weight", "blk.{L}.ffn_down.{E}.weight", EXP, MT_DIM_HIDDEN, MT_DIM_FFN},
    {MT_ROLE_FFN_GATE, "gate_proj", "model.layers.{L}.mlp.gate_proj.weight", "blk.{L}.ffn_gate.weight", NULL, DNS,
     MT_DIM_FFN, MT_DIM_HIDDEN},
    {MT_ROLE_FFN_UP, "up_proj", "model.layers.{L}.mlp.up_proj.weight", "blk.{L}.ffn_up.weight", NULL, DNS, MT_DIM_FFN,
     MT_DIM_HIDDEN},
    {MT_ROLE_FFN_DOWN, "down_proj", "model.layers.{L}.mlp.down_proj.weight", "blk.{L}.ffn_down.weight", NULL, DNS,
     MT_DIM_HIDDEN, MT_DIM_FFN},
    {MT_ROLE_OUT_NORM, "norm", "model.norm.weight", "output_norm.weight", NULL, F32, MT_DIM_NONE, MT_DIM_HIDDEN},
    {MT_ROLE_LM_HEAD, "lm_head", "lm_head.weight", "output.weight", NULL, MT_ROLE_F_OPTIONAL, MT_DIM_VOCAB,
     MT_DIM_HIDDEN},
};

#define LLAMA_FAMILY(nm, type, cls, is_moe, theta, eps, maxpos)                                                      \
    {                                                                                                                \
        .name = nm, .hf_model_type = type, .hf_class = cls, .gguf_arch = "llama", .moe = is_moe,                     \
        .rope_theta = theta, .norm_eps = eps, .max_pos = maxpos, .routing = MT_ROUTE_SOFTMAX, .renorm_topk = 1,      \
        .n_shared_experts = 0, .qk_norm = 0, .attn_bias = 0, .hf_rope = MT_ROPE_HALF, .hidden_act = "silu",          \
        .gguf_rope = MT_ROPE_INTERLEAVED, .hf_key_experts = "num_local_experts",                                     \
        .hf_attn_module = "self_attn", .hf_moe_module = "block_sparse_moe.experts", .hf_mlp_module = "mlp",         \
        .tensors = g_llama_tensors, .n_tensors = (int)(sizeof g_llama_tensors / sizeof g_llama_tensors[0]),          \
    }

const mt_arch mt_arch_mixtral = LLAMA_FAMILY("mixtral", "mixtral", "MixtralForCausalLM", 1, 1e6, 1e-5, 131072);
const mt_arch mt_arch_mistral = LLAMA_FAMILY("mistral", "mistral", "MistralForCausalLM", 0, 10000.0, 1e-6, 131072);
const mt_arch mt_arch_llama = LLAMA_FAMILY("llama", "llama", "LlamaForCausalLM", 0, 10000.0, 1e-6, 2048);
