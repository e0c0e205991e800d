/* arch_seq2seq.h — tensor names of the encoder-decoder families
 * (arch_switch.c, arch_nllbmoe.c), for the weight mapper in lib/io/seq2seq.c. */
#ifndef MT_ARCH_SEQ2SEQ_H
#define MT_ARCH_SEQ2SEQ_H

#include <stddef.h>

/* What a Switch Transformers weight is for. */
typedef enum {
    MT_S2S_T_EMBD = 0,   /* shared embedding (also the tied lm_head)         */
    MT_S2S_T_LM_HEAD,
    MT_S2S_T_REL_BIAS,   /* relative_attention_bias of layer 0 of a stack     */
    MT_S2S_T_FINAL_NORM,
    MT_S2S_T_SA_NORM,    /* self-attention: layer norm, q, k, v, o            */
    MT_S2S_T_SA_Q,
    MT_S2S_T_SA_K,
    MT_S2S_T_SA_V,
    MT_S2S_T_SA_O,
    MT_S2S_T_CA_NORM,    /* decoder cross-attention: layer norm, q, k, v, o   */
    MT_S2S_T_CA_Q,
    MT_S2S_T_CA_K,
    MT_S2S_T_CA_V,
    MT_S2S_T_CA_O,
    MT_S2S_T_FF_NORM,
    MT_S2S_T_FF_WI,      /* dense FFN                                         */
    MT_S2S_T_FF_WO,
    MT_S2S_T_ROUTER,     /* sparse FFN: router, expert wi / wo                */
    MT_S2S_T_EXP_WI,
    MT_S2S_T_EXP_WO,
} mt_s2s_tensor;

/* The Hugging Face name of a tensor (stack: 0 encoder, 1 decoder; layer
 * and expert where the role has them). `alt` > 0 asks for the alternative
 * names of the same tensor (the shared embedding is also saved as
 * encoder.embed_tokens / decoder.embed_tokens); `bias` for the ".bias" of
 * the role. Returns the length, or -1 when there is no such name. */
int mt_switch_name(char *buf, size_t n, mt_s2s_tensor t, int decoder, int layer, int expert, int alt, int bias);
int mt_nllbmoe_name(char *buf, size_t n, mt_s2s_tensor t, int decoder, int layer, int expert, int alt, int bias);

#endif
