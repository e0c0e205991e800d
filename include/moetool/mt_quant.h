/* mt_quant.h — `moetool quantize`: calibration through the runtime, RTN and
 * GPTQ (Frantar et al. 2022) on expert, attention and (lm_head) weights,
 * grids from 8 bits down to ternary. Outputs: GGUF in llama.cpp's block
 * types (Q8_0, Q4_0, TQ1_0, TQ2_0; the K-quants Q2_K..Q6_K and Q4_1, Q5_0,
 * Q5_1 by `type`, llama.cpp's mixes by `mix`, a type per tensor under a
 * budget by `target_bpw` / `target_bytes`) that the runtime and llama.cpp
 * execute directly, or a Hugging Face directory with the AutoGPTQ layout (int8/int4)
 * or, with codec MT_QUANT_CODEC_QMOE, the per-row ternary experts in the
 * sub-1-bit dictionary code of mt_qmoe.h, which the runtime executes coded.
 * Grids without a file type (3-bit, 2-bit, other groups, asymmetric) are
 * evaluated in memory (mt_quant_model on a loaded model). */
#ifndef MT_QUANT_H
#define MT_QUANT_H

#include "mt_runtime.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { MT_QUANT_RTN = 0, MT_QUANT_GPTQ = 1 } mt_quant_method;
/* How quantized experts are stored: the grid's own layout, or the qmoe
 * dictionary code (ternary per-row grid only; one dictionary for all
 * experts, built from their symbol counts). */
typedef enum { MT_QUANT_CODEC_NONE = 0, MT_QUANT_CODEC_QMOE = 1 } mt_quant_codec;

/* `bits` value meaning ternary {-1, 0, +1}·scale (or QMoE's {min, 0, max}). */
#define MT_QUANT_TERNARY 1
/* `group` value: one scale per row. */
#define MT_QUANT_GROUP_ROW 0
/* `group` value: the default of the width (32 for 8/4 bit so that they are
 * Q8_0/Q4_0, 128 for 3/2 bit, 256 for ternary = TQ2_0). */
#define MT_QUANT_GROUP_DEFAULT (-1)
#define MT_QUANT_CALIB_WINDOW 256  /* default calibration window, tokens */

/* Default ternary_range of GPTQ with codec qmoe: 0.86 instead of 1.11 coded
 * bits per expert weight on the bundled model (docs/quality.md). */
#define MT_QUANT_TERNARY_RANGE_QMOE 1.4
/* Default row scales of codec qmoe (mt_qmoe.h MT_QMOE_SCALES_*): 8-bit
 * log-coded (MT_QMOE_SCALES_U8LOG), and GPTQ's column order with it
 * (1: act-order). Together, at the same ternary range: 0.798 instead of
 * 0.863 bits per expert weight at ppl 55.69 instead of 56.58 on the bundled
 * model, and fewer bits at lower ppl on models of two other shapes
 * (docs/quality.md). */
#define MT_QUANT_QMOE_SCALES 2
#define MT_QUANT_ACT_ORDER_QMOE 1

#define MT_QMOE_ALLOC_LAYER 1
#define MT_QMOE_ALLOC_MATRIX 2
typedef struct {
    mt_quant_method method;
    int bits;              /* 8, 4, 3, 2 or MT_QUANT_TERNARY (experts)       */
    int group;             /* columns per scale; MT_QUANT_GROUP_ROW/_DEFAULT  */
    int type;              /* -1: experts on the grid of bits/group; else their
                              storage type (mt_dtype with a writer: q8_0, q4_0,
                              tq2_0, q2_K..q6_K, q4_1, q5_0, q5_1; RTN is then
                              llama.cpp's reference quantizer, GPTQ rounds onto
                              the block scales it picks per block)           */
    int attn_type;         /* -1: attention by attn_bits; else its storage type */
    int embed_type;        /* -1: embeddings/lm_head by embed_bits; else their
                              storage type (embeddings RTN, lm_head GPTQ)   */
    int mix;               /* 0: none; else llama.cpp's mix of that
                              general.file_type (10 Q2_K, 12 Q3_K_M, 15 Q4_K_M,
                              17 Q5_K_M, 18 Q6_K): every matrix, embeddings and
                              lm_head typed by llama-quantize's rules (mix.c);
                              excludes type/attn/embed options               */
    double target_bpw;     /* > 0: choose a storage type per tensor (experts per
                              layer and kind, attention, embeddings, lm_head)
                              so that they average at most this many bits per
                              weight (plan.c); excludes the options above.
                              With codec qmoe instead: bits per expert weight
                              all-in, met by a GPTQ ternary range per expert
                              matrix (qmoe_range.c; excludes ternary_range)  */
    int qmoe_alloc;        /* codec qmoe + target_bpw: MT_QMOE_ALLOC_LAYER (0,
                              default: one range for all expert matrices of a
                              layer) or MT_QMOE_ALLOC_MATRIX (per matrix)     */
    uint64_t target_bytes; /* > 0: the same so that the output GGUF is at most
                              this many bytes                                 */
    int plan_iquants;      /* target_bpw/target_bytes: 0 (default): choose
                              among the K-quants and q8_0; 1: also the
                              i-quants iq1_s … iq4_xs, with the importance
                              matrix (--imatrix, else computed from the
                              calibration text; it then writes only them) */
    int plan_windows;      /* target_bpw/target_bytes: calibration windows on
                              which each tensor's KL at the output is measured
                              to weigh its errors (default 2); 0: the tensors'
                              own output errors only                        */
    int asym;              /* asymmetric int grids (min/max and a zero point per
                              group; experts, and attention with --attn-bits):
                              only grids without a file type (int 2/3 bits, 8/4
                              bits with a group other than 32), evaluated in
                              memory; error for q8_0/q4_0/tq2_0 and ternary */
    int attn_bits;         /* 0: attention kept as stored; else its width, with
                              that width's default group (q8_0/q4_0 for 8/4) */
    int experts_only;      /* require a MoE model (error on a dense one)      */
    mt_quant_codec codec;  /* QMOE: needs bits ternary, group row; HF output  */
    int embed_bits;        /* 0: embeddings and lm_head kept as stored; 8 or 4:
                              Q8_0 / Q4_0 (embeddings round to nearest; an
                              untied lm_head by GPTQ with method GPTQ)      */
    int tq1;               /* ternary group 256: store TQ1_0 (1.69 bits) instead
                              of TQ2_0 (2.06); same grid, same weights      */
    mt_format format;      /* file output: MT_FMT_GGUF (default) or MT_FMT_HF
                              (AutoGPTQ layout for int8/int4, qmoe blobs)    */
    /* llama.cpp's importance matrix (imatrix.c): matrices rounded to nearest
       in a type whose llama.cpp quantizer takes one (iq4_nl, iq4_xs, ...) are
       written with it. It is read from imatrix_path, else computed from the
       calibration text when imatrix_calib is set or a matrix has such a type
       that GPTQ cannot round onto (iq4_*) under method GPTQ. */
    const char *imatrix_path;   /* llama.cpp imatrix file (.dat) to use       */
    int imatrix_calib;          /* compute it from the calibration text       */
    const char *imatrix_out;    /* write the one used there (.dat); NULL: no  */
    /* calibration (GPTQ) */
    const char *calib_path;     /* NULL: <model dir>/data/train.txt          */
    int calib_tokens;           /* default 16384                              */
    int calib_window;           /* tokens per forward; 0: MT_QUANT_CALIB_WINDOW, or
                                   max_position_embeddings when shorter       */
    int allow_long_context;     /* 1: calib_window may pass max_pos           */
    double damp;                /* fraction of mean(diag H), default 0.1      */
    int act_order;              /* 1: GPTQ columns by decreasing H_ii (static
                                   scales); -1: in order; 0: the default
                                   (MT_QUANT_ACT_ORDER_QMOE with codec qmoe,
                                   else in order)                             */
    int block;                  /* lazy-update block, default 128             */
    double ternary_range;       /* GPTQ on the per-row ternary grid: row levels
                                   and zero thresholds at range·(min, max); > 1
                                   gives more zeros, so fewer coded bits. 0: the
                                   codec's default (MT_QUANT_TERNARY_RANGE_QMOE
                                   with qmoe, else 1 = QMoE's {min, 0, max})  */
    int qmoe_scales;            /* codec qmoe: row levels stored as
                                   MT_QMOE_SCALES_F16 (f16 min, max: QMoE's
                                   grid) or MT_QMOE_SCALES_U8LOG (−s, +s, s an
                                   8-bit log code per row, docs/qmoe.md);
                                   0: the default (MT_QUANT_QMOE_SCALES)      */
    double expert_cap;          /* tokens per expert <= cap·mean, default 4   */
    int min_expert_tokens;      /* fewer: the expert falls back to RTN (16)   */
    int sequential;             /* layer l calibrated on quantized layers < l (1) */
    int s2s_layerwise;          /* encoder-decoder GPTQ: each sparse layer's
                                   experts calibrated on the forward with the
                                   sparse layers before it (encoder, then
                                   decoder) already quantized, QMoE's order;
                                   0: all on the original model in one pass  */
    int force;                  /* replace an existing output moetool did not
                                   write (docs/outputs.md)                    */
    const char *command;        /* the command line, recorded in the output;
                                   may be NULL                                */
    mt_progress_fn progress;
    void *progress_user;
} mt_quant_opts;
void mt_quant_opts_default(mt_quant_opts *o);

/* What was done, for the CLI's report and --json. */
typedef struct {
    int n_layers, n_experts;
    uint64_t *expert_tokens;    /* [n_layers * max(1, n_experts)] calibration rows
                                   per expert after the cap (caller frees)      */
    int n_rtn_fallback;         /* experts quantized by RTN for lack of tokens  */
    int n_calib_tokens;         /* calibration tokens actually run               */
    mt_dtype expert_dtype;      /* storage type of quantized experts (F32 when the
                                   grid has no file type: evaluation only)     */
    mt_dtype attn_dtype;        /* likewise for attention (-1: untouched)       */
    char grid_name[48];         /* "q4_0", "int3 g128", "ternary row (QMoE)"... */
    double bits_expert;         /* bits per expert weight (codes + scales)      */
    double bits_total;          /* bits per weight over all weights             */
    uint64_t expert_params, total_params;
    double seconds, calib_seconds;
    uint64_t peak_rss;
    double mean_rel_err;        /* mean over quantized matrices of the layer-output
                                   error ‖(W−Ŵ)X‖² / ‖WX‖² on calibration data
                                   (GPTQ; 0 for RTN without calibration)       */
    /* codec qmoe (else 0): bits_expert above is then all-in (codewords,
       group offsets, f16 row scales, blob headers, the dictionary block). */
    double code_bits_expert;    /* codewords alone, bits per expert weight      */
    double symbol_entropy;      /* order-0 entropy of the symbols, bits/weight  */
    double zero_frac;           /* fraction of 0 symbols                         */
    double code_seconds;        /* dictionary build + encoding                   */
    int qmoe_scales;            /* row levels written: MT_QMOE_SCALES_F16/_U8LOG */
    int source_dtype;           /* stored type of the matrices quantized when they
                                   were dequantized first (a llama.cpp type such
                                   as q4_K); -1 or a float type: none          */
    int source_mixed;           /* several such types (source_dtype the first)  */
    char *plan;                 /* --target-bpw/--target-size: the chosen types as
                                   JSON ({"token_embd": "q4_k", "output": ...,
                                   "layers": [{"attn_q": ...}, ...]}); else NULL */
    float *ternary_ranges;      /* codec qmoe with target_bpw: the ternary range
                                   chosen for each expert matrix, [n_layers][3
                                   (w1, w3, w2)][max(1, n_experts)]; else NULL */
} mt_quant_report;
void mt_quant_report_free(mt_quant_report *r);

/* llama.cpp's mix of a name ("q4_k_m", "Q2_K", "q3_k_m", "q5_k_m",
 * "q6_k") as its general.file_type, -1 if none; and back (NULL if none). */
int mt_quant_mix_from_name(const char *name);
const char *mt_quant_mix_name(int ftype);

/* Checks options against a model's shapes: bit width, group dividing the
 * columns, --experts-only on a dense model, a file type for `for_file`. */
int mt_quant_check(const mt_quant_opts *o, const mt_config *c, int for_file);
/* MT_ERR_ARG when o asks for an i-quant llama.cpp writes only with an
 * importance matrix (iq2_xxs, iq2_xs, iq2_s, iq1_s, iq1_m, their mixes)
 * without one (no --imatrix under rtn), or for such a type on token
 * embeddings, which have none (iq1_m excepted). Part of mt_quant_check. */
int mt_quant_check_imatrix(const mt_quant_opts *o);

/* Quantizes the weights of a loaded model in place: the model's matrices are
 * replaced by quantized ones owned by *out (GGUF block types when the grid
 * has one, MT_DT_QMOE with codec qmoe, else dequantized f32), so that
 * eval/generate on `m` afterwards run the quantized model. With codec qmoe
 * the layers are quantized and calibrated exactly as without it (decoded
 * ternary weights), then all experts are coded at the end. Free *out only after the last use of `m`. */
typedef struct mt_quant_state mt_quant_state;
int mt_quant_model(mt_quant_state **out, mt_model *m, const mt_quant_opts *o, mt_quant_report *rep);
void mt_quant_state_free(mt_quant_state *s);

/* Writes a quantized model as GGUF: every tensor and key of `m`'s checkpoint
 * when it is a GGUF, else (a Hugging Face checkpoint, loaded with
 * mt_model_opts.gguf_layout) the GGUF `moetool convert` makes of it
 * (mt_gguf_export), with quantized matrices in their block type and what
 * was done (`o`) as the key moetool.provenance (a JSON string). */
int mt_quant_write_gguf(const mt_quant_state *s, const mt_model *m, const mt_quant_opts *o, const char *out_path);

/* Writes a quantized model as a Hugging Face directory: every tensor of `m`'s
 * checkpoint (which must be HF) as it was, quantized linears in the
 * AutoGPTQ/GPTQModel layout (qweight/qzeros/scales/g_idx; Q8_0 and Q4_0 grids
 * only, which it holds exactly), qmoe-coded experts as `<name>.qmoe` blobs plus
 * `qmoe.dictionary`, and config.json with its quantization_config
 * (docs/formats.md). Written under a temporary name, renamed when complete. */
int mt_quant_write_hf(const mt_quant_state *s, const mt_model *m, const mt_quant_opts *o, const char *out_dir);

/* The whole verb: `in_path` (HF or GGUF) -> GGUF `out_path`, or with format
 * MT_FMT_HF an HF source -> HF directory `out_path` (mt_quant_write_hf). The
 * checkpoint is opened once. An HF source to GGUF is quantized in memory,
 * loaded in the layout its GGUF conversion has (Q/K rows permuted, F32 norms
 * and router), and written as `moetool convert` would write it (names,
 * order, metadata) with the quantized matrices in place: byte-identical to
 * converting first and quantizing the GGUF, with no copy on disk. */
int mt_quantize_file(const char *in_path, const char *out_path, const mt_quant_opts *o, int n_threads,
                     mt_quant_report *rep);

/* The verb for an encoder-decoder MoE (Switch Transformers, NLLB-MoE:
 * mt_seq2seq.h; lib/quant/quant_s2s.c): the experts of both stacks by RTN or
 * GPTQ (calibrated on the input/target pairs of calib_pairs, JSON Lines as
 * eval --pairs) onto q8_0 / q4_0 (AutoGPTQ layout) or QMoE's per-row ternary
 * grid with codec qmoe, everything else copied; output a Hugging Face
 * directory (o->format must be MT_FMT_HF). */
int mt_s2s_quantize_file(const char *in_path, const char *out_path, const mt_quant_opts *o, const char *calib_pairs,
                         int n_threads, mt_quant_report *rep);

#ifdef __cplusplus
}
#endif
#endif
