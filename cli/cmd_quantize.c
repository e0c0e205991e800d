/* cmd_quantize.c — `moetool quantize MODEL -o OUT`: RTN or GPTQ of the
 * experts (and optionally attention and embeddings) to llama.cpp block types
 * in GGUF, or to the AutoGPTQ layout / the qmoe code in a Hugging Face
 * directory, or, with --eval-only, any grid quantized in memory and scored on
 * held-out text against the original model. */
#define _GNU_SOURCE
#include "cli_impl.h"
#include "moetool/mt_quant.h"
#include "moetool/mt_qmoe.h"
#include "moetool/mt_seq2seq.h"

#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    mt_quant_opts q;
    const char *out, *text, *calib_pairs;
    int json, quiet, eval_only, threads;
    int no_act_order;
} quantize_args;

static void quantize_init(void *p) {
    quantize_args *a = p;
    memset(a, 0, sizeof *a);
    mt_quant_opts_default(&a->q);
    a->q.plan_windows = -1; /* not given: the library's default, and no error without a budget */
}

static const char *const method_choices[] = {"rtn", "gptq", NULL};
static const int method_values[] = {MT_QUANT_RTN, MT_QUANT_GPTQ};
static const char *const bits_choices[] = {"8", "4", "3", "2", "ternary", NULL};
static const int bits_values[] = {8, 4, 3, 2, MT_QUANT_TERNARY};
static const char *const attn_choices[] = {"8", "4", "3", "2", NULL};
static const char *const embed_choices[] = {"8", "4", NULL};
static const int embed_values[] = {8, 4};
static const char *const codec_choices[] = {"none", "qmoe", NULL};
static const int codec_values[] = {MT_QUANT_CODEC_NONE, MT_QUANT_CODEC_QMOE};
static const char *const qscale_choices[] = {"f16", "u8log", NULL};
static const int qscale_values[] = {1, 2}; /* MT_QMOE_SCALES_F16, MT_QMOE_SCALES_U8LOG */
static const char *const qalloc_choices[] = {"layer", "matrix", NULL};
static const int qalloc_values[] = {MT_QMOE_ALLOC_LAYER, MT_QMOE_ALLOC_MATRIX};
static const char *const format_choices[] = {"gguf", "hf", NULL};
static const int format_values[] = {MT_FMT_GGUF, MT_FMT_HF};
static const char *const ttype_choices[] = {"tq2_0", "tq1_0", NULL};
static const int ttype_values[] = {0, 1};

/* --group N|row: an integer, or the word row. */
static int set_group(void *p, const cli_opt *o, const char *shown, const char *value, char *err, size_t errn) {
    quantize_args *a = p;
    if (!strcmp(value, "row")) {
        a->q.group = MT_QUANT_GROUP_ROW;
        return 0;
    }
    char *end;
    long v = strtol(value, &end, 10);
    if (end == value || *end || v < 1 || v > (1 << 24))
        return snprintf(err, errn, "%s expects an integer in [1, %d] or row, got '%s'", shown, 1 << 24, value), -1;
    a->q.group = (int)v;
    return 0;
}

/* --type T / --attn-type T / --embed-type T: a storage type moetool writes
 * as a grid; --type also takes the names of llama.cpp's _M mixes. */
static int set_type(void *p, const cli_opt *o, const char *shown, const char *value, char *err, size_t errn) {
    quantize_args *a = p;
    static const char *const names[] = {"q8_0", "q6_k", "q5_k", "q5_1", "q5_0", "q4_k", "q4_1", "q4_0", "q3_k", "q2_k",
                                        "tq2_0", "iq4_xs", "iq4_nl", "iq3_s", "iq3_xxs", "iq2_s",
                                        "iq2_xs", "iq2_xxs", "iq1_m", "iq1_s"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcasecmp(value, names[i])) {
            *(!strcmp(o->name, "type")        ? &a->q.type
              : !strcmp(o->name, "attn-type") ? &a->q.attn_type
                                              : &a->q.embed_type) = mt_dtype_from_name(names[i]);
            return 0;
        }
    const int mix = mt_quant_mix_from_name(value);
    if (!strcmp(o->name, "type") && mix > 0 && strlen(value) > 4) { /* q3_k_m, q4_k_m, q5_k_m */
        a->q.mix = mix;
        return 0;
    }
    return snprintf(err, errn, "%s must be one of q8_0, q6_k, q5_k, q5_1, q5_0, q4_k, q4_1, q4_0, q3_k, q2_k, tq2_0, "
                    "iq4_xs, iq4_nl, iq3_s, iq3_xxs, iq2_s, iq2_xs, iq2_xxs, iq1_m, iq1_s%s, "
                    "got '%s'", shown, !strcmp(o->name, "type") ? " (or a mix: q3_k_m, q4_k_m, q5_k_m)" : "", value), -1;
}

/* --imatrix FILE|calib: llama.cpp's importance matrix, read or computed. */
static int set_imatrix(void *p, const cli_opt *o, const char *shown, const char *value, char *err, size_t errn) {
    (void)o;
    quantize_args *a = p;
    if (!*value) return snprintf(err, errn, "%s expects a file or 'calib', got ''", shown), -1;
    a->q.imatrix_calib = !strcmp(value, "calib");
    a->q.imatrix_path = a->q.imatrix_calib ? NULL : value;
    return 0;
}

/* --target-size N[k|M|G]: bytes (decimal multiples). */
static int set_size(void *p, const cli_opt *o, const char *shown, const char *value, char *err, size_t errn) {
    (void)o;
    quantize_args *a = p;
    char *end;
    double v = strtod(value, &end);
    double mul = !strcmp(end, "") ? 1 : !strcmp(end, "k") || !strcmp(end, "K") ? 1e3 : !strcmp(end, "M") ? 1e6
               : !strcmp(end, "G") ? 1e9 : 0;
    if (end == value || !mul || !(v > 0) || v * mul > 1e18)
        return snprintf(err, errn, "%s expects a positive size in bytes, optionally with k, M or G (10^3, 10^6, 10^9), "
                        "got '%s'", shown, value), -1;
    a->q.target_bytes = (uint64_t)(v * mul);
    return 0;
}

/* --mix NAME: llama.cpp's mix. */
static int set_mix(void *p, const cli_opt *o, const char *shown, const char *value, char *err, size_t errn) {
    (void)o;
    quantize_args *a = p;
    const int mix = mt_quant_mix_from_name(value);
    if (mix < 0)
        return snprintf(err, errn, "%s must be q2_k, q3_k_m, q4_k_m, q5_k_m, q6_k, iq4_xs, iq4_nl, iq3_m, iq3_s, iq3_xs, "
                        "iq3_xxs, iq2_m, iq2_s, iq2_xs, iq2_xxs, iq1_m or iq1_s, got '%s'", shown, value), -1;
    a->q.mix = mix;
    return 0;
}

static const cli_opt quantize_opts[] = {
    {"output", 'o', CLI_OUTPUT, "OUT", "file (gguf) or directory (hf) to write; appears only when complete; an "
     "existing OUT is replaced only when moetool wrote it (docs/outputs.md)", NULL, CLI_AT(quantize_args, out)},
    {"force", 0, CLI_BOOL, NULL, "replace an existing OUT that moetool did not write (a symbolic link: the link "
     "itself); never an input", NULL, CLI_AT(quantize_args, q.force), .flags = CLI_OPT_CLI_ONLY},
    {"format", 0, CLI_ENUM, "gguf|hf", "output format; hf needs an HF source", "gguf", CLI_AT(quantize_args, q.format),
     .choices = format_choices, .values = format_values},
    {"method", 0, CLI_ENUM, "M", "gptq or rtn", "gptq", CLI_AT(quantize_args, q.method), .choices = method_choices,
     .values = method_values},
    {"bits", 0, CLI_ENUM, "B", "8, 4, 3, 2 or ternary", "4", CLI_AT(quantize_args, q.bits), .choices = bits_choices,
     .values = bits_values},
    {"group", 0, CLI_STRING, "N|row", "columns per scale (default: 32 for 8/4 bits, 128 for 3/2 bits, 256 for "
     "ternary)", NULL, CLI_AT(quantize_args, q.group), .set = set_group},
    {"type", 0, CLI_STRING, "T", "experts' GGUF storage type instead of --bits/--group: q8_0, q6_k, q5_k, q5_1, q5_0, "
     "q4_k, q4_1, q4_0, q3_k, q2_k, tq2_0, iq4_xs, iq4_nl, iq3_s, iq3_xxs, iq2_s, iq2_xs, iq2_xxs, iq1_m or iq1_s "
     "(rtn: llama.cpp's reference quantizer, the same values "
     "for the K-quants; q4_1/q5_x round to nearest on the stored grid; gptq: per block the scales and mins that "
     "search picks on the weights as GPTQ's error feedback left them, then GPTQ's rounding; iq4_xs/iq4_nl are "
     "always llama.cpp's quantizer, with the importance matrix: --imatrix, or under gptq computed from --calib; "
     "iq3_xxs, iq2_*, iq1_* need one, as in llama.cpp)",
     NULL, CLI_AT(quantize_args, q.type), .set = set_type},
    {"attn-type", 0, CLI_STRING, "T", "also quantize q/k/v/o projections to storage type T (as --type)", NULL,
     CLI_AT(quantize_args, q.attn_type), .set = set_type},
    {"embed-type", 0, CLI_STRING, "T", "also quantize token embeddings (round to nearest) and lm_head (GPTQ unless "
     "tied) to storage type T (as --type)", NULL, CLI_AT(quantize_args, q.embed_type), .set = set_type},
    {"mix", 0, CLI_STRING, "NAME", "llama.cpp's mix q2_k, q3_k_m, q4_k_m, q5_k_m, q6_k, iq4_xs, iq4_nl, iq3_m, iq3_s, "
     "iq3_xs, iq3_xxs, iq2_m, iq2_s, iq2_xs, iq2_xxs, iq1_m or iq1_s: every matrix (experts, "
     "attention, embeddings, lm_head) gets the type llama-quantize gives it (e.g. q4_k_m: q4_k, with q6_k for "
     "lm_head and for ffn_down and attn_v of some layers, q8_0 attn_k/attn_v with 8 experts); the file's file_type "
     "is the mix's; with --method gptq each matrix is GPTQ'd onto its type (--type q3_k_m etc. say the same)", NULL,
     CLI_AT(quantize_args, q.mix), .set = set_mix},
    {"target-bpw", 0, CLI_FLOAT, "B", "choose a GGUF type per tensor (each attention projection, each layer's gate/up/"
     "down experts, embeddings, lm_head; from q2_k, q3_k, q4_k, q5_k, q6_k, q8_0) so that they average at most B bits "
     "per weight: every tensor starts at q2_k, then the upgrade with the largest drop in measured error per added "
     "byte that still fits is taken, until none fits; error = sum over weights of the squared rounding error times "
     "the mean square of that input column on the first 4096 calibration tokens (experts: over their routed "
     "tokens), scaled per tensor to the KL it adds at the model's output (--plan-windows); the tensors are then "
     "quantized by --method (docs/quality.md). With --codec qmoe instead: at most B bits per expert weight all-in "
     "(0.2 to 2): each expert matrix is GPTQ'd at every ternary range of 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.8 and, "
     "layer by layer under the layer's share of B, gets a range by --qmoe-alloc (excludes --ternary-range; the "
     "ranges chosen are in --json)", NULL,
     CLI_AT(quantize_args, q.target_bpw), .flo = 0.2, .fhi = 16.0},
    {"plan-windows", 0, CLI_INT, "N", "with --target-bpw/--target-size: each tensor, alone in its smallest type, is "
     "measured by the KL it adds to the next-token distributions over the first N calibration windows, and its "
     "errors are scaled to that KL, so the budget goes where the output feels it (one forward of N windows per "
     "tensor; default 2); 0: rank by the tensors' own errors only", NULL, CLI_AT(quantize_args, q.plan_windows), 0, 64},
    {"plan-iquants", 0, CLI_BOOL, NULL, "with --target-bpw/--target-size: choose also among llama.cpp's i-quants "
     "(iq1_s, iq1_m, iq2_xxs, iq2_xs, iq2_s, iq3_xxs, iq3_s, iq4_xs), measured and written with the importance "
     "matrix (--imatrix FILE, else computed from --calib, used then for the i-quants only); reaches budgets below "
     "the K-quants' smallest (down to ~1.6 bits per weight), better than llama.cpp's i-quant files at 2 and 2.5 "
     "bits on the bundled model, worse than the K-quant plan at 3 (docs/quality.md); default: the K-quants and "
     "q8_0 only", NULL, CLI_AT(quantize_args, q.plan_iquants)},
    {"target-size", 0, CLI_STRING, "BYTES", "the same with the output file at most BYTES (k, M, G: 10^3, 10^6, 10^9)",
     NULL, CLI_AT(quantize_args, q.target_bytes), .set = set_size},
    {"asym", 0, CLI_BOOL, NULL, "asymmetric int grid: per group min/max (widened to hold 0), scale (max-min)/(2^B-1) "
     "and an integer zero point; grids without a file type only (3/2 bits, 8/4 with a group other than 32; attention "
     "with --attn-bits 3/2); --eval-only", NULL, CLI_AT(quantize_args, q.asym)},
    {"experts-only", 0, CLI_BOOL, NULL, "require a MoE model and quantize only its experts", NULL,
     CLI_AT(quantize_args, q.experts_only)},
    {"attn-bits", 0, CLI_ENUM, "B", "also quantize q/k/v/o projections to B bits (8: q8_0, 4: q4_0, 3/2: group 128)",
     NULL, CLI_AT(quantize_args, q.attn_bits), .choices = attn_choices, .values = bits_values},
    {"imatrix", 0, CLI_STRING, "FILE|calib", "llama.cpp's importance matrix (per matrix and input column the mean "
     "x^2 over the calibration tokens it multiplied; experts: their routed tokens): a llama-imatrix .dat FILE, or "
     "'calib' to compute it from --calib/--calib-tokens; the matrices rounded to nearest in a type whose llama.cpp "
     "quantizer takes one are written with it, as llama-quantize --imatrix writes them", NULL,
     CLI_AT(quantize_args, q.imatrix_path), .set = set_imatrix},
    {"imatrix-out", 0, CLI_STRING, "FILE", "also write the importance matrix used to FILE (llama.cpp's .dat format, "
     "which llama-quantize --imatrix reads)", NULL, CLI_AT(quantize_args, q.imatrix_out), .flags = CLI_OPT_CLI_ONLY},
    {"calib", 0, CLI_PATH, "FILE", "calibration text (default: MODEL/data/train.txt, or data/train.txt beside a MODEL "
     "file, which is then named on stderr; a missing one is an error)", NULL, CLI_AT(quantize_args, q.calib_path)},
    {"calib-pairs", 0, CLI_PATH, "FILE", "encoder-decoder models (Switch Transformers, NLLB-MoE): GPTQ calibration "
     "pairs, JSON Lines {\"input\": [ids], \"target\": [ids]} as eval --pairs; the experts of both stacks see the "
     "rows routed to them in the teacher-forced forward (docs/seq2seq.md)", NULL,
     CLI_AT(quantize_args, calib_pairs)},
    {"layerwise", 0, CLI_BOOL, NULL, "encoder-decoder models with GPTQ: calibrate each sparse layer's experts on the "
     "forward with the sparse layers before it already quantized (encoder, then decoder: QMoE's order; one pass over "
     "the pairs per sparse layer); default: every layer on the original model in one pass", NULL,
     CLI_AT(quantize_args, q.s2s_layerwise)},
    {"calib-tokens", 0, CLI_INT, "N", "calibration tokens (default 16384), in windows of 256 or of the model's "
     "whole context when shorter", NULL,
     CLI_AT(quantize_args, q.calib_tokens), 1, 1 << 30},
    {"damp", 0, CLI_FLOAT, "F", "GPTQ damping, fraction of mean diag(H)", "0.1", CLI_AT(quantize_args, q.damp),
     .flo = -HUGE_VAL, .flags = CLI_OPT_NO_HI},
    {"act-order", 0, CLI_BOOL, NULL, "GPTQ columns by decreasing diag(H) (the default with --codec qmoe)", NULL,
     CLI_AT(quantize_args, q.act_order)},
    {"no-act-order", 0, CLI_BOOL, NULL, "GPTQ columns in order, also with --codec qmoe", NULL,
     CLI_AT(quantize_args, no_act_order)},
    {"embed-bits", 0, CLI_ENUM, "8|4", "also quantize token embeddings and lm_head to Q8_0 / Q4_0 (embeddings round to "
     "nearest, lm_head by GPTQ unless tied; gguf, or hf with --codec qmoe)", NULL, CLI_AT(quantize_args, q.embed_bits),
     .choices = embed_choices, .values = embed_values},
    {"ternary-type", 0, CLI_ENUM, "T", "tq2_0 or tq1_0 for --bits ternary --group 256", "tq2_0",
     CLI_AT(quantize_args, q.tq1), .choices = ttype_choices, .values = ttype_values},
    {"ternary-range", 0, CLI_FLOAT, "R", "GPTQ, --bits ternary --group row: levels and zero thresholds of each row at "
     "R x (min, max); larger R gives more zeros, so fewer bits with --codec qmoe, at some perplexity (default 1.4 "
     "with --codec qmoe, else 1)", NULL, CLI_AT(quantize_args, q.ternary_range), .flo = 0.5, .fhi = 4.0},
    {"codec", 0, CLI_ENUM, "none|qmoe", "qmoe: code the per-row ternary experts with one dictionary for all experts "
     "and run the code directly (needs --bits ternary --group row; --format hf or --eval-only)", "none",
     CLI_AT(quantize_args, q.codec), .choices = codec_choices, .values = codec_values},
    {"qmoe-scales", 0, CLI_ENUM, "f16|u8log", "with --codec qmoe, each row's levels: f16 (min, max) as in QMoE (32 "
     "bits per row), or u8log: -s, +s with s = (max - min)/2 (times R under GPTQ) stored as one 8-bit log code per "
     "row (steps of 2^(1/16) below a per-matrix base; 8 bits per row; docs/qmoe.md) (default u8log)", NULL,
     CLI_AT(quantize_args, q.qmoe_scales), .choices = qscale_choices, .values = qscale_values},
    {"qmoe-alloc", 0, CLI_ENUM, "layer|matrix", "with --codec qmoe --target-bpw: layer gives all expert matrices of "
     "a layer the narrowest range whose bits fit the layer's share (the same as the best single --ternary-range "
     "there); matrix chooses per matrix, greedily, the largest drop in output energy times relative layer-output "
     "error per added bit (measured worse in perplexity on the bundled model: docs/quality.md) (default layer)", NULL,
     CLI_AT(quantize_args, q.qmoe_alloc), .choices = qalloc_choices, .values = qalloc_values},
    {"eval-only", 0, CLI_BOOL, NULL, "quantize in memory and evaluate; write nothing", NULL,
     CLI_AT(quantize_args, eval_only)},
    {"text", 0, CLI_PATH, "FILE", "text for --eval-only", "MODEL/data/test.txt", CLI_AT(quantize_args, text)},
    {"threads", 0, CLI_INT, "T", "CPU threads", "all cores", CLI_AT(quantize_args, threads), 1, MT_MAX_THREADS},
    {"allow-long-context", 0, CLI_BOOL, NULL, "calibrate in windows longer than the model's max_position_embeddings",
     NULL, CLI_AT(quantize_args, q.allow_long_context)},
    {"json", 0, CLI_BOOL, NULL, "one JSON object on stdout", NULL, CLI_AT(quantize_args, json),
     .flags = CLI_OPT_CLI_ONLY},
    {"quiet", 0, CLI_BOOL, NULL, "no progress lines on stderr", NULL, CLI_AT(quantize_args, quiet),
     .flags = CLI_OPT_CLI_ONLY},
};

const cli_verb cli_verb_quantize = {
    .name = "quantize",
    .synopsis =
        "usage: moetool quantize [MODEL] -o OUT [--format gguf|hf] [--method rtn|gptq]\n"
        "                        [--bits 8|4|3|2|ternary] [--group N|row] [--asym] [--codec none|qmoe]\n"
        "                        [--ternary-range R] [--qmoe-scales f16|u8log]\n"
        "                        [--type T] [--experts-only | --attn-bits B | --attn-type T]\n"
        "                        [--embed-bits 8|4 | --embed-type T] [--mix q2_k|q3_k_m|q4_k_m|q5_k_m|q6_k|iq4_xs|iq4_nl|iq3_m|iq3_s|iq3_xs|iq3_xxs|iq2_m|iq2_s|iq2_xs|iq2_xxs|iq1_m|iq1_s]\n"
        "                        [--target-bpw B | --target-size BYTES]\n"
        "                        [--calib FILE] [--calib-tokens N] [--damp F] [--act-order | --no-act-order]\n"
        "                        [--imatrix FILE|calib] [--imatrix-out FILE]\n"
        "                        [--threads T] [--allow-long-context] [--json] [--quiet]\n"
        "       moetool quantize [MODEL] --eval-only [same options] [--codec none|qmoe]\n"
        "                        [--text FILE]",
    .about =
        "Quantizes the expert weights (attention and embeddings are kept as stored\n"
        "unless --attn-bits / --embed-bits are given; router and norms always are).\n"
        "GPTQ runs calibration text\n"
        "through the model layer by layer (each layer sees the outputs of the\n"
        "already-quantized layers before it) and uses, for each expert, only the\n"
        "tokens routed to it (at most 4x the mean; experts with fewer than 16 fall\n"
        "back to RTN and are reported).\n"
        "\n"
        "Grids and what they are written as:\n"
        "  --bits 8 --group 32      Q8_0 (8.5 bits/weight): GGUF, or AutoGPTQ int8 (hf)\n"
        "  --bits 4 --group 32      Q4_0 (4.5 bits/weight): GGUF, or AutoGPTQ int4 (hf)\n"
        "  --bits ternary --group 256  llama.cpp TQ2_0 (2.06 bits/weight): GGUF\n"
        "    ... --ternary-type tq1_0  the same weights as TQ1_0 (1.69 bits/weight)\n"
        "  --bits ternary --group row  QMoE {min,0,max} per row             --eval-only\n"
        "    ... --codec qmoe       the same, coded with the qmoe dictionary code\n"
        "                           (< 1 bit/weight), executed coded: --format hf\n"
        "  --type q6_k|q5_k|q4_k|q3_k|q2_k  llama.cpp K-quants (6.56/5.5/4.5/3.44/2.62\n"
        "                           bits/weight): GGUF; --type q5_1|q5_0|q4_1 its legacy blocks\n"
        "  --bits 8|4|3|2 --group N|row  symmetric int, one f16 scale per group --eval-only\n"
        "    ... --asym             asymmetric int, f16 scale + B-bit zero per group --eval-only\n"
        "Grids without a GGUF type are measured with --eval-only: the model is\n"
        "quantized and dequantized in memory and scored on --text (gptq protocol,\n"
        "ctx 256) against the original; no file is written.\n",
    .positional = "MODEL",
    .opts = quantize_opts,
    .n_opts = sizeof quantize_opts / sizeof quantize_opts[0],
    .args_size = sizeof(quantize_args),
    .init = quantize_init,
    .run = cmd_quantize,
    .recipe_step = 1,
};
static void print_report(const mt_quant_report *r, const mt_quant_opts *o, const char *out, uint64_t file_bytes, int json,
                         const mt_eval_result *ev) {
    const char *dtn = r->expert_dtype == MT_DT_F32    ? "none (eval only)"
                      : r->expert_dtype == MT_DT_QMOE ? "qmoe code (executed coded)"
                                                       : mt_dtype_get(r->expert_dtype)->name;
    int ne = r->n_experts > 0 ? r->n_experts : 1;
    const int deq = r->source_dtype >= 0 && !mt_dtype_is_plain_float((mt_dtype)r->source_dtype);
    if (deq)
        fprintf(stderr, "moetool quantize: note: the matrices quantized were stored as %s%s; they were dequantized to "
                "f32 first (the result carries both roundings); other tensors are kept as stored\n",
                mt_dtype_name((mt_dtype)r->source_dtype), r->source_mixed ? " and other llama.cpp types" : "");
    if (json) {
        printf("{\"method\":\"%s\",\"grid\":", o->method == MT_QUANT_GPTQ ? "gptq" : "rtn");
        json_str(stdout, r->grid_name);
        printf(",\"bits\":");
        if (o->bits == MT_QUANT_TERNARY) printf("\"ternary\"");
        else printf("%d", o->bits);
        printf(",\"asym\":%s", o->asym ? "true" : "false");
        if (o->mix) printf(",\"mix\":\"%s\"", mt_quant_mix_name(o->mix));
        if (r->plan) printf(",\"plan\":%s", r->plan);
        printf(",\"attn_bits\":%d,\"embed_bits\":%d,\"codec\":\"%s\",\"expert_type\":", o->attn_bits, o->embed_bits,
               o->codec == MT_QUANT_CODEC_QMOE ? "qmoe" : "none");
        json_str(stdout, r->expert_dtype == MT_DT_F32 ? "none" : mt_dtype_get(r->expert_dtype)->name);
        printf(",\"bits_per_expert_weight\":%.4f,\"bits_per_weight\":%.4f,\"expert_params\":%llu,\"total_params\":%llu",
               r->bits_expert, r->bits_total, (unsigned long long)r->expert_params, (unsigned long long)r->total_params);
        if (out) {
            printf(",\"output\":");
            json_str(stdout, out);
            printf(",\"file_bytes\":%llu", (unsigned long long)file_bytes);
        }
        printf(",\"quantize_s\":%.3f,\"calib_s\":%.3f,\"peak_rss\":%llu,\"calib_tokens\":%d,\"rtn_fallback\":%d",
               r->seconds, r->calib_seconds, (unsigned long long)r->peak_rss, r->n_calib_tokens, r->n_rtn_fallback);
        if (r->ternary_ranges) {
            printf(",\"target_bpw\":%g,\"ternary_ranges\":[", o->target_bpw);
            for (int l = 0; l < r->n_layers; l++) {
                static const char *const kn[3] = {"w1", "w3", "w2"};
                printf("%s{", l ? "," : "");
                for (int k = 0; k < 3; k++) {
                    printf("%s\"%s\":[", k ? "," : "", kn[k]);
                    for (int e = 0; e < ne; e++)
                        printf("%s%g", e ? "," : "", r->ternary_ranges[((size_t)l * 3 + (size_t)k) * (size_t)ne + (size_t)e]);
                    printf("]");
                }
                printf("}");
            }
            printf("]");
        } else if (o->bits == MT_QUANT_TERNARY && o->group == MT_QUANT_GROUP_ROW && o->method == MT_QUANT_GPTQ)
            printf(",\"ternary_range\":%g", o->ternary_range > 0                ? o->ternary_range
                                             : o->codec == MT_QUANT_CODEC_QMOE ? MT_QUANT_TERNARY_RANGE_QMOE
                                                                                : 1.0);
        if (o->method == MT_QUANT_GPTQ)
            printf(",\"act_order\":%s", o->act_order > 0 || (o->act_order == 0 && o->codec == MT_QUANT_CODEC_QMOE &&
                                                              MT_QUANT_ACT_ORDER_QMOE)
                                             ? "true"
                                             : "false");
        if (o->codec == MT_QUANT_CODEC_QMOE)
            printf(",\"qmoe_scales\":\"%s\"", (o->qmoe_scales ? o->qmoe_scales : MT_QUANT_QMOE_SCALES) == 2 ? "u8log" : "f16");
        if (o->codec == MT_QUANT_CODEC_QMOE)
            printf(",\"code_bits_per_expert_weight\":%.4f,\"symbol_entropy\":%.4f,\"zero_frac\":%.5f,\"code_s\":%.3f",
                   r->code_bits_expert, r->symbol_entropy, r->zero_frac, r->code_seconds);
        if (deq) {
            printf(",\"dequantized_from\":");
            json_str(stdout, mt_dtype_name((mt_dtype)r->source_dtype));
        }
        printf(",\"mean_rel_output_err\":%.6g,\"expert_tokens\":[", r->mean_rel_err);
        for (int l = 0; l < r->n_layers; l++) {
            printf("%s[", l ? "," : "");
            for (int e = 0; e < ne; e++)
                printf("%s%llu", e ? "," : "", (unsigned long long)r->expert_tokens[(size_t)l * ne + e]);
            printf("]");
        }
        printf("]");
        if (ev)
            printf(",\"ppl\":%.6f,\"ref_ppl\":%.6f,\"kl_mean\":%.8f,\"top1_agree\":%.6f,\"n_scored\":%llu", ev->ppl,
                   ev->ref_ppl, ev->kl_mean, ev->top1_agree, (unsigned long long)ev->n_scored);
        printf("}\n");
        return;
    }
    printf("method:     %s, grid %s, experts stored as %s\n", o->method == MT_QUANT_GPTQ ? "gptq" : "rtn", r->grid_name, dtn);
    printf("size:       %.4f bits per expert weight, %.4f bits per weight overall", r->bits_expert, r->bits_total);
    if (out) printf(", %s %.2f MB", out, (double)file_bytes / 1e6);
    printf("\n");
    if (o->codec == MT_QUANT_CODEC_QMOE)
        printf("code:       %.4f bits per expert weight in codewords (symbol entropy %.4f, %.2f %% zeros); the rest\n"
               "            is %s row scales, group offsets, headers, dictionary; coded in %.2f s\n",
               r->code_bits_expert, r->symbol_entropy, 100.0 * r->zero_frac,
               r->qmoe_scales == MT_QMOE_SCALES_U8LOG ? "8-bit log" : "f16", r->code_seconds);
    if (o->method == MT_QUANT_GPTQ) {
        printf("calib:      %d tokens, %.2f s; experts by RTN for lack of tokens: %d; mean rel. output error %.5f\n",
               r->n_calib_tokens, r->calib_seconds, r->n_rtn_fallback, r->mean_rel_err);
        printf("tokens per expert (after cap):\n");
        for (int l = 0; l < r->n_layers; l++) {
            printf("  layer %d:", l);
            for (int e = 0; e < ne; e++) printf(" %llu", (unsigned long long)r->expert_tokens[(size_t)l * ne + e]);
            printf("\n");
        }
    }
    if (r->plan) printf("types:      %s\n", r->plan);
    printf("time:       %.2f s, peak RSS %.1f MB\n", r->seconds, (double)r->peak_rss / 1e6);
    if (ev)
        printf("eval:       ppl %.4f (original %.4f), KL %.6f nats/token, top-1 agreement %.2f%% over %llu tokens\n",
               ev->ppl, ev->ref_ppl, ev->kl_mean, 100.0 * ev->top1_agree, (unsigned long long)ev->n_scored);
}

/* Bytes of a file, or of the files of a directory (one level). */
static uint64_t path_bytes(const char *path) {
    struct stat sb;
    if (stat(path, &sb) != 0) return 0;
    if (!S_ISDIR(sb.st_mode)) return (uint64_t)sb.st_size;
    uint64_t n = 0;
    DIR *d = opendir(path);
    if (!d) return 0;
    for (struct dirent *e; (e = readdir(d));) {
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", path, e->d_name);
        if (stat(p, &sb) == 0 && S_ISREG(sb.st_mode)) n += (uint64_t)sb.st_size;
    }
    closedir(d);
    return n;
}

/* Encoder-decoder models (mt_s2s_quantize_file): experts only, a Hugging
 * Face directory out, GPTQ calibrated on --calib-pairs. */
static int quantize_s2s(quantize_args *A, const char *model_path, int argc, char **argv) {
    mt_quant_opts o = A->q;
    if (A->eval_only)
        return cli_usage_error("quantize", "%s is an encoder-decoder model: quantize it with -o DIR, then measure the "
                               "output with eval --pairs", model_path);
    if (o.calib_path)
        return cli_usage_error("quantize", "%s is an encoder-decoder model: it calibrates on --calib-pairs FILE (token "
                               "ids), not on text", model_path);
    int fmt_given = 0;
    for (int i = 1; i < argc; i++) fmt_given |= !strncmp(argv[i], "--format", 8);
    if (!fmt_given) o.format = MT_FMT_HF;
    if (!A->quiet) o.progress = cli_progress;
    char *cmdline = cli_command_line(argc, argv);
    o.command = cmdline;
    mt_quant_report rep;
    int rc = mt_s2s_quantize_file(model_path, A->out, &o, A->calib_pairs, A->threads, &rep);
    free(cmdline);
    cli_progress_done();
    if (rc) {
        mt_quant_report_free(&rep);
        return cli_fail("quantize", rc);
    }
    print_report(&rep, &o, A->out, path_bytes(A->out), A->json, NULL);
    mt_quant_report_free(&rep);
    return MT_EXIT_OK;
}

int cmd_quantize(int argc, char **argv) {
    quantize_args A;
    quantize_init(&A);
    const char *model_arg = NULL;
    int prc = cli_opts_parse_argv(&cli_verb_quantize, &A, argc, argv, &model_arg);
    if (prc) return prc == 1 ? MT_EXIT_OK : prc;
    if (A.no_act_order) {
        if (A.q.act_order) return cli_usage_error("quantize", "--act-order and --no-act-order exclude each other");
        A.q.act_order = -1;
    }
    mt_quant_opts o = A.q;
    const char *out = A.out, *text_path = A.text;
    const int json = A.json, quiet = A.quiet, eval_only = A.eval_only, threads = A.threads;
    if (!out && !eval_only) return cli_usage_error("quantize", "needs -o OUT (or --eval-only)");
    if (cli_check_output("quantize", out)) return MT_EXIT_USAGE;
    if (out && eval_only) return cli_usage_error("quantize", "--eval-only writes no file; drop -o");
    if (o.plan_windows >= 0 && !(o.target_bpw > 0 || o.target_bytes > 0))
        return cli_usage_error("quantize", "--plan-windows only weighs a --target-bpw/--target-size plan; give one");
    if (o.plan_iquants && !(o.target_bpw > 0 || o.target_bytes > 0))
        return cli_usage_error("quantize", "--plan-iquants only widens a --target-bpw/--target-size plan; give one");
    if (o.plan_windows < 0) {
        mt_quant_opts d;
        mt_quant_opts_default(&d);
        o.plan_windows = d.plan_windows;
    }
    if (o.experts_only && o.attn_bits) return cli_usage_error("quantize", "--experts-only and --attn-bits exclude each other");
    if (mt_quant_check_imatrix(&o)) return cli_usage_error("quantize", "%s", mt_last_error());
    const char *model_path = model_arg ? model_arg : cli_default_model();
    if (mt_s2s_detect(model_path)) return quantize_s2s(&A, model_path, argc, argv);
    if (o.s2s_layerwise)
        return cli_usage_error("quantize", "--layerwise is for encoder-decoder models; %s is quantized in its own "
                               "sequential order", model_path);
    if (A.calib_pairs)
        return cli_usage_error("quantize", "--calib-pairs is for encoder-decoder models; %s calibrates on text "
                               "(--calib FILE)", model_path);
    char *calib_default = NULL;
    if ((o.method == MT_QUANT_GPTQ || o.target_bpw > 0 || o.target_bytes > 0) && !o.calib_path) {
        /* Where the library would look, said out loud (beside a GGUF file that
         * is e.g. /tmp/data/train.txt, which nobody would guess). */
        if (!(calib_default = cli_beside_model(model_path, "data/train.txt"))) return cli_fail("quantize", MT_ERR_NOMEM);
        if (access(calib_default, R_OK) != 0) {
            int r = cli_usage_error("quantize", "no --calib FILE given and %s (data/train.txt beside the model) does not "
                                    "exist", calib_default);
            free(calib_default);
            return r;
        }
        struct stat sb;
        if (stat(model_path, &sb) != 0 || !S_ISDIR(sb.st_mode)) /* beside a file: say where */
            fprintf(stderr, "moetool quantize: no --calib given: calibrating on %s\n", calib_default);
        o.calib_path = calib_default;
    }
    if (!quiet) o.progress = cli_progress;

    mt_quant_report rep;
    memset(&rep, 0, sizeof rep);
    int rc;
    if (!eval_only) {
        char *cmdline = cli_command_line(argc, argv);
        o.command = cmdline;
        rc = mt_quantize_file(model_path, out, &o, threads, &rep);
        free(cmdline);
        cli_progress_done();
        free(calib_default);
        if (rc) return cli_fail("quantize", rc);
        print_report(&rep, &o, out, path_bytes(out), json, NULL);
        cli_note_portability("quantize", out);
        mt_quant_report_free(&rep);
        return MT_EXIT_OK;
    }

    /* --eval-only: quantize the loaded model in place, score it against the original. */
    int ret = MT_EXIT_FAIL;
    mt_model *m = NULL, *ref = NULL;
    mt_quant_state *qs = NULL;
    char *text_default = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    mt_eval_result res;
    memset(&res, 0, sizeof res);
    mt_model_opts mo;
    mt_model_opts_default(&mo);
    mo.n_threads = threads;
    if (!text_path) {
        size_t n = strlen(model_path) + 32;
        text_default = malloc(n);
        if (text_default) snprintf(text_default, n, "%s/data/test.txt", model_path);
        text_path = text_default;
    }
    if ((rc = mt_model_load(&m, model_path, &mo))) goto fail;
    if ((rc = mt_model_load(&ref, model_path, &mo))) goto fail;
    if (!mt_model_tokenizer(m)) {
        rc = mt_seterr(MT_ERR_ARG, "no tokenizer to read the evaluation text with: %s", mt_model_tokenizer_error(m));
        goto fail;
    }
    if ((rc = mt_tok_encode_file(mt_model_tokenizer(m), text_path, 0, &ids, &n_ids, NULL))) goto fail;
    if ((rc = mt_quant_model(&qs, m, &o, &rep))) goto fail;
    cli_progress_done();
    mt_eval_opts eo;
    mt_eval_opts_default(&eo);
    eo.n_batch = eo.ctx;
    if (!quiet) eo.progress = cli_progress;
    if ((rc = mt_eval_ppl(m, ref, ids, n_ids, &eo, &res))) goto fail;
    cli_progress_done();
    print_report(&rep, &o, NULL, 0, json, &res);
    ret = MT_EXIT_OK;
fail:
    cli_progress_done();
    if (ret != MT_EXIT_OK) ret = cli_fail("quantize", rc);
    mt_eval_result_free(&res);
    mt_quant_report_free(&rep);
    free(ids);
    free(text_default);
    free(calib_default);
    mt_model_free(ref);
    mt_model_free(m);
    mt_quant_state_free(qs);
    return ret;
}
