/* mt_seq2seq.h — encoder-decoder MoE models (Switch Transformers,
 * NLLB-MoE): their configuration and weights (lib/io/seq2seq.c, names in
 * lib/io/arch/arch_switch.c, arch_nllbmoe.c) and the runtime that runs them
 * (lib/runtime/seq2seq.c): an encoder pass whose output is cached, then a
 * decoder with a self-attention KV cache and cross-attention K/V computed
 * once from the encoder output. docs/seq2seq.md has the math and the checks.
 *
 * These models are a kind apart from the decoder-only families of
 * mt_arch.h: mt_ckpt_open refuses them by name (every verb that needs a
 * decoder-only model says so in one line); mt_ckpt_open_raw + the functions
 * below read them. */
#ifndef MT_SEQ2SEQ_H
#define MT_SEQ2SEQ_H

#include "mt_io.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { MT_S2S_ACT_RELU = 0 } mt_s2s_act;

/* The families: their math differs where the fields below say. */
typedef enum {
    MT_S2S_SWITCH = 0,   /* switch_transformers: T5 blocks, top-1 router     */
    MT_S2S_NLLB_MOE = 1, /* nllb-moe: BART/fairseq blocks, top-2 router       */
} mt_s2s_kind;

typedef struct {
    int kind;               /* mt_s2s_kind                                    */
    char family[32];        /* config model_type: "switch_transformers", "nllb-moe" */
    char hf_class[64];      /* "SwitchTransformersForConditionalGeneration"   */
    int vocab, d_model;
    int n_heads[2], d_kv[2], d_ff[2]; /* [0] encoder, [1] decoder             */
    int n_enc_layers, n_dec_layers;
    int n_experts;          /* experts of a sparse layer                      */
    int top_k;              /* 1 (Switch) or 2 (NLLB-MoE)                     */
    int expert_capacity;    /* tokens one expert takes per sequence and call  */
    float cap_fraction;     /* NLLB-MoE in eval: capacity = ceil(fraction ·
                               tokens of the call); 0: expert_capacity        */
    int norm_before_drop;   /* NLLB-MoE: top-2 gates normalised before the
                               capacity drops tokens (else after)            */
    float token_dropout;    /* NLLB-MoE moe_token_dropout: expert outputs
                               scaled by (1 - it) in eval                     */
    int enc_sparse_step, dec_sparse_step; /* Switch: layer i sparse when
                               i % step == 1 or step == 1; NLLB-MoE: when
                               (i + 1) % step == 0 (transformers' rules)      */
    int rel_pos;            /* T5 relative-position bias (Switch); else
                               fairseq sinusoidal positions (NLLB-MoE)        */
    int num_buckets, max_distance; /* T5 relative-position buckets            */
    int layer_norm_bias;    /* LayerNorm with mean and bias (NLLB-MoE); else
                               T5's RMS norm                                  */
    int linear_bias;        /* biases on attention projections and FFNs       */
    float attn_scale[2];    /* q scale per stack: 1 (T5) or d_kv^-0.5          */
    float embed_scale;      /* embeddings × this: 1 or sqrt(d_model)          */
    float eps;              /* layer norm epsilon                             */
    int tie_embeddings;     /* lm_head = shared embedding                     */
    float lm_scale;         /* decoder output × this before the head: Switch
                               tied d_model^-0.5, else 1                      */
    int act;                /* mt_s2s_act of the dense and expert FFNs        */
    int pad_id, eos_id, decoder_start_id;
    int quant;              /* quantization_config: MT_QFMT_NONE, MT_QFMT_GPTQ
                               (experts in the AutoGPTQ layout) or
                               MT_QFMT_QMOE (experts as qmoe blobs);
                               written by moetool quantize (docs/seq2seq.md) */
    int quant_zero_offset;  /* AutoGPTQ: stored zero = zero - this          */
} mt_s2s_config;

/* 1 when a config.json text names an encoder-decoder family moetool runs
 * (Switch Transformers, NLLB-MoE), else 0. */
int mt_s2s_is_seq2seq_json(const char *json_text, size_t len);
/* 1 when the checkpoint at `path` (directory, file with config.json beside
 * it, or archive) is such a model; 0 when not or unreadable (the loader
 * then says why). */
int mt_s2s_detect(const char *path);
/* Parses a Switch Transformers / NLLB-MoE config.json; names `path` in errors. */
int mt_s2s_config_parse(mt_s2s_config *c, const char *json_text, size_t len, const char *path);
/* Sparse (MoE) layer? decoder = 0 encoder, 1 decoder. */
int mt_s2s_layer_sparse(const mt_s2s_config *c, int decoder, int layer);

/* Biases (suffix _b) are present (data != NULL) when the family has them. */
typedef struct {
    mt_mat ln, ln_b;        /* self-attention layer norm (1, d_model)         */
    mt_mat q_b, k_b, v_b, o_b;
    mt_mat x_ln_b, xq_b, xk_b, xv_b, xo_b, ff_ln_b;
    mt_mat *wi_b, *wo_b;    /* [max(1, n_experts)] FFN biases, or NULL        */
    mt_mat q, k, v, o;      /* (n_heads·d_kv, d_model), o: (d_model, n_heads·d_kv) */
    mt_mat x_ln;            /* decoder: cross-attention layer norm, and its   */
    mt_mat xq, xk, xv, xo;  /* projections (data NULL in the encoder)          */
    mt_mat ff_ln;           /* FFN layer norm                                  */
    int n_experts;          /* 0: dense FFN in wi[0], wo[0]                    */
    mt_mat router;          /* (n_experts, d_model)                            */
    mt_mat *wi, *wo;        /* [max(1, n_experts)]: (d_ff, d_model), (d_model, d_ff) */
} mt_s2s_layer;

typedef struct {
    mt_s2s_config cfg;
    mt_mat embd;            /* shared (vocab, d_model)                        */
    mt_mat lm_head;         /* (vocab, d_model); = embd when tied              */
    mt_mat enc_rel, dec_rel; /* relative_attention_bias (num_buckets, n_heads) */
    mt_mat enc_norm, dec_norm; /* final layer norms (1, d_model)               */
    mt_mat enc_norm_b, dec_norm_b;
    mt_s2s_layer *enc, *dec;
    void **owned;           /* expert matrices unpacked at load (AutoGPTQ)    */
    size_t n_owned;
} mt_s2s_weights;

/* Maps the tensors of a checkpoint opened with mt_ckpt_open_raw onto the
 * description above, checking every shape; a missing or misshapen tensor
 * is one error naming the checkpoint, the tensor and the expected shape. */
int mt_s2s_weights_init(mt_s2s_weights *w, const mt_ckpt *ck);
void mt_s2s_weights_free(mt_s2s_weights *w);
/* The tensor name of expert e's wi (wo = 0) or wo (wo = 1) matrix in layer
 * `layer` of a stack (decoder 0/1); < 0 when the layer is dense or the name
 * does not fit. */
int mt_s2s_expert_name(const mt_s2s_config *c, char *buf, size_t n, int decoder, int layer, int expert, int wo);
/* 1 when `name` repeats the shared embedding (the aliases a
 * pytorch_model.bin keeps, a tied lm_head): written once by convert and
 * quantize. */
int mt_s2s_is_alias(const mt_s2s_weights *w, const char *name);
/* Bytes the checkpoint stores for the expert matrices (their tensors under
 * every layout: floats, AutoGPTQ qweight/qzeros/scales/g_idx, qmoe blobs,
 * plus the qmoe dictionary) and their weight count: bits per expert weight
 * = 8·bytes / weights. */
int mt_s2s_expert_storage(const mt_ckpt *ck, const mt_s2s_weights *w, uint64_t *bytes, uint64_t *n_weights);

/* convert --to hf of an encoder-decoder checkpoint (safetensors or
 * pytorch_model.bin in, a Hugging Face directory of safetensors out): every
 * tensor copied under its name (the shared embedding once), in o->dtype
 * (-1 keeps each tensor's type; f32, f16, bf16), config.json with
 * torch_dtype updated, tokenizer files copied. Same output policy as
 * mt_convert (which calls it for such a model). */
int mt_s2s_convert_hf(const char *in_path, const char *out_path, const mt_convert_opts *o);

/* Input/target pairs (eval --pairs, quantize --calib-pairs): JSON Lines,
 * one object per non-empty line, {"input": [ids] or text, "target": [ids]
 * or text}; a text is encoded with `tok` and ends with EOS (as
 * mt_s2s_encode_text); without a tokenizer (tok NULL) text is refused by
 * name. Errors name the file and the line. */
typedef struct {
    int32_t *input, *target;
    int n_in, n_tgt;
    int line;               /* 1-based line of the file                       */
} mt_s2s_pair;
struct mt_tokenizer;
int mt_s2s_pairs_load(const char *path, const struct mt_tokenizer *tok, mt_s2s_pair **out, size_t *n);
/* The same with language codes for a tokenizer that has them (NLLB's
 * sentencepiece.bpe.model): texts of "input" are encoded with src_lang,
 * of "target" with tgt_lang (mt_s2s_encode_text_lang); a line's own
 * "src_lang" / "tgt_lang" keys override them. */
int mt_s2s_pairs_load_lang(const char *path, const struct mt_tokenizer *tok, const char *src_lang,
                           const char *tgt_lang, mt_s2s_pair **out, size_t *n);
/* A text's ids as T5's tokenizer gives them (transformers'
 * tokenizer(text).input_ids): its encoding, then EOS; *out malloc'd. */
int mt_s2s_encode_text(const struct mt_tokenizer *tok, const char *text, size_t len, int32_t **out, int *n);
/* A text's ids with a language code: for a tokenizer with language codes
 * (NLLB, mt_tok_lang_codes > 0) [code] + encoding + [</s>], as transformers'
 * NllbTokenizer (non-legacy) gives source and target texts; `lang` is
 * required there and refused (by name) for a tokenizer without codes.
 * lang NULL elsewhere: mt_s2s_encode_text. */
int mt_s2s_encode_text_lang(const struct mt_tokenizer *tok, const char *text, size_t len, const char *lang,
                            int32_t **out, int *n);
/* Translation pairs as text (eval --text of a model with language codes):
 * one "SOURCE<tab>TARGET" per non-empty line, encoded with src_lang /
 * tgt_lang (mt_s2s_encode_text_lang). */
int mt_s2s_pairs_load_tsv(const char *path, const struct mt_tokenizer *tok, const char *src_lang,
                          const char *tgt_lang, mt_s2s_pair **out, size_t *n);
/* T5 span-corruption pairs from a token stream (eval --text of a Switch
 * model): consecutive windows of `window` tokens (the last, shorter one
 * when it has 2 or more; at most max_pairs windows, 0 = all); per window of
 * n tokens T5's random_spans_noise_mask: noise = round(0.15 n) clamped to
 * 1..n-1, spans = round(noise / 3) clamped to 1..min(noise, n - noise),
 * noise and clean lengths each cut into `spans` positive parts at random,
 * clean part first; input = clean parts each followed by sentinels[s],
 * target = sentinels[s] then the noise part, both ending with eos. The
 * random cuts come from splitmix64 seeded with `seed` (the exact draws:
 * docs/seq2seq.md). */
int mt_s2s_span_corrupt(const int32_t *toks, size_t n_toks, int window, const int32_t *sentinels, int n_sentinels,
                        int eos, uint64_t seed, size_t max_pairs, mt_s2s_pair **out, size_t *n_out);
void mt_s2s_pairs_free(mt_s2s_pair *p, size_t n);

/* ---- runtime ------------------------------------------------------------ */
typedef struct mt_s2s_model mt_s2s_model;

int mt_s2s_load(mt_s2s_model **out, const char *path, int n_threads);
void mt_s2s_free(mt_s2s_model *m);
const mt_s2s_config *mt_s2s_model_config(const mt_s2s_model *m);
const mt_s2s_weights *mt_s2s_model_weights(const mt_s2s_model *m);
const mt_ckpt *mt_s2s_model_ckpt(const mt_s2s_model *m);
int mt_s2s_threads(const mt_s2s_model *m);

/* Encodes `ids` (one sequence, ids as given: T5 inputs end with EOS) into
 * the encoder-output cache, computes every decoder layer's cross-attention
 * K/V from it and empties the decoder's KV cache. */
int mt_s2s_encode(mt_s2s_model *m, const int32_t *ids, int n);
/* Runs n decoder tokens at the decoder's current position (after encode),
 * appending to its KV cache. logits: NULL or (n, vocab). The expert
 * capacity applies to the tokens of this call, as transformers applies it
 * to the sequence of one forward. */
int mt_s2s_decode(mt_s2s_model *m, const int32_t *ids, int n, float *logits);
/* Decoder tokens in the KV cache. */
int mt_s2s_decode_pos(const mt_s2s_model *m);
/* Experts each token went to in the last encode / decode call per sparse
 * layer ([sparse layer][token][top_k]: top-1 expert first, -1 where the
 * capacity dropped that choice); *n_sparse layers, *n_tok tokens. */
const int32_t *mt_s2s_last_routing(const mt_s2s_model *m, int decoder, int *n_sparse, int *n_tok);

/* Negative log-likelihood (nats, summed) of `target` given `input`,
 * teacher-forced in one decoder call: decoder input = decoder_start_id then
 * target[0..n-2] (transformers' labels shifted right). */
int mt_s2s_score(mt_s2s_model *m, const int32_t *input, int n_in, const int32_t *target, int n_tgt, double *nll_sum);

/* Calibration: called for every sparse layer's expert with the rows it ran
 * in the last encode/decode call: x (n, d_model), wi's input (the normed
 * hidden state), and mid (n, d_ff), wo's input (relu(wi · x)). NULL
 * removes the hook. */
typedef void (*mt_s2s_expert_hook)(void *user, int decoder, int layer, int expert, const float *x,
                                   const float *mid, int n);
void mt_s2s_set_expert_hook(mt_s2s_model *m, mt_s2s_expert_hook fn, void *user);
/* Runs expert `expert`'s wi (wo = 0) or wo (wo = 1) of sparse layer `layer`
 * of a stack with the f32 matrix w (its shape) from now on: quantize's
 * layer-by-layer calibration puts each quantized layer in place before it
 * calibrates the next. w stays the caller's and must outlive the model. */
int mt_s2s_set_expert_matrix(mt_s2s_model *m, int decoder, int layer, int expert, int wo, const float *w);

/* Greedy decoding: encode `input`, start from decoder_start_id and take the
 * argmax token up to max_new tokens (stopping after EOS when stop_at_eos),
 * one token per decoder call. out (cap max_new) gets them, *n_out the count. */
int mt_s2s_greedy(mt_s2s_model *m, const int32_t *input, int n_in, int max_new, int stop_at_eos, int32_t *out,
                  int *n_out);
/* The same with the first generated token forced to forced_bos (>= 0):
 * transformers' forced_bos_token_id, NLLB's target language code; it counts
 * as one of the max_new tokens. forced_bos < 0: mt_s2s_greedy. */
int mt_s2s_greedy_forced(mt_s2s_model *m, const int32_t *input, int n_in, int forced_bos, int max_new, int stop_at_eos,
                         int32_t *out, int *n_out);

#ifdef __cplusplus
}
#endif
#endif
