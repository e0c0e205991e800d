/* arch_nllbmoe.c — NLLB-MoE (transformers' modeling_nllb_moe,
 * NllbMoeForConditionalGeneration): the names of its tensors. A fairseq /
 * BART-style encoder-decoder (pre-norm LayerNorm with bias, biased
 * projections, sinusoidal positions) whose FFN is, in sparse layers, a top-2
 * router over experts:
 *   model.shared.weight (also model.{encoder,decoder}.embed_tokens.weight)
 *   model.{encoder,decoder}.layers.{L}.self_attn.{q,k,v,out}_proj.{weight,bias}
 *   model.{encoder,decoder}.layers.{L}.self_attn_layer_norm.{weight,bias}
 *   model.decoder.layers.{L}.cross_attention.{q,k,v,out}_proj, cross_attention_layer_norm
 *   model.{encoder,decoder}.layers.{L}.ff_layer_norm, dense ffn.fc1 / ffn.fc2,
 *     sparse ffn.router.classifier.weight and ffn.experts.expert_{E}.fc1 / fc2
 *   model.{encoder,decoder}.layer_norm.{weight,bias}, lm_head.weight */
#include "arch_seq2seq.h"

#include <stdio.h>

int mt_nllbmoe_name(char *buf, size_t n, mt_s2s_tensor t, int decoder, int layer, int expert, int alt, int bias) {
    const char *st = decoder ? "decoder" : "encoder", *sfx = bias ? "bias" : "weight";
    static const char *const proj[4] = {"q_proj", "k_proj", "v_proj", "out_proj"};
    int k = -1;
    if (alt && t != MT_S2S_T_EMBD) return -1;
    switch (t) {
    case MT_S2S_T_EMBD:
        if (bias) return -1;
        if (alt == 0) k = snprintf(buf, n, "model.shared.weight");
        else if (alt == 1) k = snprintf(buf, n, "model.encoder.embed_tokens.weight");
        else if (alt == 2) k = snprintf(buf, n, "model.decoder.embed_tokens.weight");
        else return -1;
        break;
    case MT_S2S_T_LM_HEAD:
        if (bias) return -1;
        k = snprintf(buf, n, "lm_head.weight");
        break;
    case MT_S2S_T_REL_BIAS: return -1;
    case MT_S2S_T_FINAL_NORM: k = snprintf(buf, n, "model.%s.layer_norm.%s", st, sfx); break;
    case MT_S2S_T_SA_NORM: k = snprintf(buf, n, "model.%s.layers.%d.self_attn_layer_norm.%s", st, layer, sfx); break;
    case MT_S2S_T_SA_Q:
    case MT_S2S_T_SA_K:
    case MT_S2S_T_SA_V:
    case MT_S2S_T_SA_O:
        k = snprintf(buf, n, "model.%s.layers.%d.self_attn.%s.%s", st, layer, proj[t - MT_S2S_T_SA_Q], sfx);
        break;
    case MT_S2S_T_CA_NORM:
        if (!decoder) return -1;
        k = snprintf(buf, n, "model.decoder.layers.%d.cross_attention_layer_norm.%s", layer, sfx);
        break;
    case MT_S2S_T_CA_Q:
    case MT_S2S_T_CA_K:
    case MT_S2S_T_CA_V:
    case MT_S2S_T_CA_O:
        if (!decoder) return -1;
        k = snprintf(buf, n, "model.decoder.layers.%d.cross_attention.%s.%s", layer, proj[t - MT_S2S_T_CA_Q], sfx);
        break;
    case MT_S2S_T_FF_NORM: k = snprintf(buf, n, "model.%s.layers.%d.ff_layer_norm.%s", st, layer, sfx); break;
    case MT_S2S_T_FF_WI: k = snprintf(buf, n, "model.%s.layers.%d.ffn.fc1.%s", st, layer, sfx); break;
    case MT_S2S_T_FF_WO: k = snprintf(buf, n, "model.%s.layers.%d.ffn.fc2.%s", st, layer, sfx); break;
    case MT_S2S_T_ROUTER:
        if (bias) return -1;
        k = snprintf(buf, n, "model.%s.layers.%d.ffn.router.classifier.weight", st, layer);
        break;
    case MT_S2S_T_EXP_WI:
        k = snprintf(buf, n, "model.%s.layers.%d.ffn.experts.expert_%d.fc1.%s", st, layer, expert, sfx);
        break;
    case MT_S2S_T_EXP_WO:
        k = snprintf(buf, n, "model.%s.layers.%d.ffn.experts.expert_%d.fc2.%s", st, layer, expert, sfx);
        break;
    default: return -1;
    }
    return (k < 0 || (size_t)k >= n) ? -1 : k;
}
