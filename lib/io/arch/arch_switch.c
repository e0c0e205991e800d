/* arch_switch.c — Switch Transformers (transformers'
 * modeling_switch_transformers, SwitchTransformersForConditionalGeneration):
 * the names of its tensors. A T5 encoder-decoder whose FFN sublayer is, in
 * sparse layers, a top-1 router over experts:
 *   shared.weight                                   (vocab, d_model)
 *   {encoder,decoder}.block.{L}.layer.0.SelfAttention.{q,k,v,o}.weight
 *   {encoder,decoder}.block.0.layer.0.SelfAttention.relative_attention_bias.weight
 *   {encoder,decoder}.block.{L}.layer.0.layer_norm.weight
 *   decoder.block.{L}.layer.1.EncDecAttention.{q,k,v,o}.weight, layer.1.layer_norm
 *   FFN sublayer F (encoder 1, decoder 2): block.{L}.layer.F.layer_norm.weight,
 *     dense mlp.wi / mlp.wo, sparse mlp.router.classifier and
 *     mlp.experts.expert_{E}.wi / .wo
 *   {encoder,decoder}.final_layer_norm.weight, lm_head.weight (untied) */
#include "arch_seq2seq.h"

#include <stdio.h>

int mt_switch_name(char *buf, size_t n, mt_s2s_tensor t, int decoder, int layer, int expert, int alt, int bias) {
    const char *st = decoder ? "decoder" : "encoder";
    const int ff = decoder ? 2 : 1;
    static const char *const proj = "qkvo";
    int k = -1;
    if ((alt && t != MT_S2S_T_EMBD) || bias) return -1; /* T5 layers have no biases */
    switch (t) {
    case MT_S2S_T_EMBD:
        if (alt == 0) k = snprintf(buf, n, "shared.weight");
        else if (alt == 1) k = snprintf(buf, n, "encoder.embed_tokens.weight");
        else if (alt == 2) k = snprintf(buf, n, "decoder.embed_tokens.weight");
        else return -1;
        break;
    case MT_S2S_T_LM_HEAD: k = snprintf(buf, n, "lm_head.weight"); break;
    case MT_S2S_T_REL_BIAS:
        k = snprintf(buf, n, "%s.block.0.layer.0.SelfAttention.relative_attention_bias.weight", st);
        break;
    case MT_S2S_T_FINAL_NORM: k = snprintf(buf, n, "%s.final_layer_norm.weight", st); break;
    case MT_S2S_T_SA_NORM: k = snprintf(buf, n, "%s.block.%d.layer.0.layer_norm.weight", st, layer); break;
    case MT_S2S_T_SA_Q:
    case MT_S2S_T_SA_K:
    case MT_S2S_T_SA_V:
    case MT_S2S_T_SA_O:
        k = snprintf(buf, n, "%s.block.%d.layer.0.SelfAttention.%c.weight", st, layer, proj[t - MT_S2S_T_SA_Q]);
        break;
    case MT_S2S_T_CA_NORM:
        if (!decoder) return -1;
        k = snprintf(buf, n, "decoder.block.%d.layer.1.layer_norm.weight", layer);
        break;
    case MT_S2S_T_CA_Q:
    case MT_S2S_T_CA_K:
    case MT_S2S_T_CA_V:
    case MT_S2S_T_CA_O:
        if (!decoder) return -1;
        k = snprintf(buf, n, "decoder.block.%d.layer.1.EncDecAttention.%c.weight", layer, proj[t - MT_S2S_T_CA_Q]);
        break;
    case MT_S2S_T_FF_NORM: k = snprintf(buf, n, "%s.block.%d.layer.%d.layer_norm.weight", st, layer, ff); break;
    case MT_S2S_T_FF_WI: k = snprintf(buf, n, "%s.block.%d.layer.%d.mlp.wi.weight", st, layer, ff); break;
    case MT_S2S_T_FF_WO: k = snprintf(buf, n, "%s.block.%d.layer.%d.mlp.wo.weight", st, layer, ff); break;
    case MT_S2S_T_ROUTER:
        k = snprintf(buf, n, "%s.block.%d.layer.%d.mlp.router.classifier.weight", st, layer, ff);
        break;
    case MT_S2S_T_EXP_WI:
        k = snprintf(buf, n, "%s.block.%d.layer.%d.mlp.experts.expert_%d.wi.weight", st, layer, ff, expert);
        break;
    case MT_S2S_T_EXP_WO:
        k = snprintf(buf, n, "%s.block.%d.layer.%d.mlp.experts.expert_%d.wo.weight", st, layer, ff, expert);
        break;
    default: return -1;
    }
    return (k < 0 || (size_t)k >= n) ? -1 : k;
}
