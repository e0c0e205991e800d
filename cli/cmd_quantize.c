/* cmd_quantize.c — `moetool quantize MODEL -o OUT`: RTN or GPTQ of the
 * experts (and optionally attention and embeddings) to llama.cpp block types
 * in GGUF, or to the AutoGPTQ layout / the qmoe code in a Hugging Face
 * directory, or, with --eval-only, any grid quantized in memory and scored on
 * held-out text against the original model. */
#define _GNU_SOURCE
#include "cli_impl.h"
#include "moetool/mt_quant.h"

#include <dirent.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *g_help =
    "usage: moetool quantize [MODEL] -o OUT [--format gguf|hf] [--method rtn|gptq]\n"
    "                        [--bits 8|4|3|2|ternary] [--group N|row] [--asym] [--codec none|qmoe]\n"
    "                        [--experts-only | --attn-bits B] [--embed-bits 8|4]\n"
    "                        [--calib FILE] [--calib-tokens N] [--damp F] [--act-order]\n"
    "                        [--threads T] [--allow-long-context] [--json] [--quiet]\n"
    "       moetool quantize [MODEL] --eval-only [same options] [--codec none|qmoe]\n"
    "                        [--text FILE]\n"
    "\n"
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
    "  --bits 8|4|3|2 --group N|row  symmetric int, one f16 scale per group --eval-only\n"
    "    ... --asym             asymmetric int, f16 scale + B-bit zero per group --eval-only\n"
    "Grids without a GGUF type are measured with --eval-only: the model is\n"
    "quantized and dequantized in memory and scored on --text (gptq protocol,\n"
    "ctx 256) against the original; no file is written.\n"
    "\n"
    "  -o, --output OUT    file (gguf) or directory (hf) to write; appears only\n"
    "                      when complete; an existing OUT is replaced only when\n"
    "                      moetool wrote it (docs/outputs.md)\n"
    "  --force             replace an existing OUT that moetool did not write (a\n"
    "                      symbolic link: the link itself); never an input\n"
    "  --format gguf|hf    output format (default gguf; hf needs an HF source)\n"
    "  --method M          gptq (default) or rtn\n"
    "  --bits B            8, 4 (default), 3, 2 or ternary\n"
    "  --group N|row       columns per scale (default: 32 for 8/4 bits, 128 for\n"
    "                      3/2 bits, 256 for ternary)\n"
    "  --asym              asymmetric int grid: per group min/max (widened to hold\n"
    "                      0), scale (max-min)/(2^B-1) and an integer zero point;\n"
    "                      grids without a file type only (3/2 bits, 8/4 with a\n"
    "                      group other than 32; attention with --attn-bits 3/2);\n"
    "                      --eval-only\n"
    "  --experts-only      require a MoE model and quantize only its experts\n"
    "  --attn-bits B       also quantize q/k/v/o projections to B bits (8: q8_0,\n"
    "                      4: q4_0, 3/2: group 128)\n"
    "  --calib FILE        calibration text (default: MODEL/data/train.txt, or\n"
    "                      data/train.txt beside a MODEL file, which is then\n"
    "                      named on stderr; a missing one is an error)\n"
    "  --calib-tokens N    calibration tokens (default 16384), in windows of 256\n"
    "                      or of the model's whole context when shorter\n"
    "  --damp F            GPTQ damping, fraction of mean diag(H) (default 0.1)\n"
    "  --act-order         GPTQ columns by decreasing diag(H)\n"
    "  --embed-bits 8|4    also quantize token embeddings and lm_head to Q8_0 /\n"
    "                      Q4_0 (embeddings round to nearest, lm_head by GPTQ\n"
    "                      unless tied; gguf, or hf with --codec qmoe)\n"
    "  --ternary-type T    tq2_0 (default) or tq1_0 for --bits ternary --group 256\n"
    "  --ternary-range R   GPTQ, --bits ternary --group row: levels and zero\n"
    "                      thresholds of each row at R x (min, max); larger R\n"
    "                      gives more zeros, so fewer bits with --codec qmoe, at\n"
    "                      some perplexity (default 1.4 with --codec qmoe, else 1)\n"
    "  --codec none|qmoe   qmoe: code the per-row ternary experts with one\n"
    "                      dictionary for all experts and run the code directly\n"
    "                      (needs --bits ternary --group row; --format hf or\n"
    "                      --eval-only)\n"
    "  --eval-only         quantize in memory and evaluate; write nothing\n"
    "  --text FILE         text for --eval-only (default MODEL/data/test.txt)\n"
    "  --threads T         CPU threads (default: all cores)\n"
    "  --allow-long-context  calibrate in windows longer than the model's\n"
    "                      max_position_embeddings\n"
    "  --json              one JSON object on stdout\n"
    "  --quiet             no progress lines on stderr\n"
    "  -h, --help          this text\n";

static void print_report(const mt_quant_report *r, const mt_quant_opts *o, const char *out, uint64_t file_bytes, int json,
                         const mt_eval_result *ev) {
    const char *dtn = r->expert_dtype == MT_DT_F32    ? "none (eval only)"
                      : r->expert_dtype == MT_DT_QMOE ? "qmoe code (executed coded)"
                                                       : mt_dtype_get(r->expert_dtype)->name;
    int ne = r->n_experts > 0 ? r->n_experts : 1;
    if (json) {
        printf("{\"method\":\"%s\",\"grid\":", o->method == MT_QUANT_GPTQ ? "gptq" : "rtn");
        json_str(stdout, r->grid_name);
        printf(",\"bits\":");
        if (o->bits == MT_QUANT_TERNARY) printf("\"ternary\"");
        else printf("%d", o->bits);
        printf(",\"asym\":%s", o->asym ? "true" : "false");
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
        if (o->bits == MT_QUANT_TERNARY && o->group == MT_QUANT_GROUP_ROW && o->method == MT_QUANT_GPTQ)
            printf(",\"ternary_range\":%g", o->ternary_range > 0                ? o->ternary_range
                                             : o->codec == MT_QUANT_CODEC_QMOE ? MT_QUANT_TERNARY_RANGE_QMOE
                                                                                : 1.0);
        if (o->codec == MT_QUANT_CODEC_QMOE)
            printf(",\"code_bits_per_expert_weight\":%.4f,\"symbol_entropy\":%.4f,\"zero_frac\":%.5f,\"code_s\":%.3f",
                   r->code_bits_expert, r->symbol_entropy, r->zero_frac, r->code_seconds);
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
               "            is f16 row scales, group offsets, headers, dictionary; coded in %.2f s\n",
               r->code_bits_expert, r->symbol_entropy, 100.0 * r->zero_frac, r->code_seconds);
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

static int parse_bits(const char *s, int *out) {
    if (!strcmp(s, "ternary")) {
        *out = MT_QUANT_TERNARY;
        return 0;
    }
    char *end;
    long v = strtol(s, &end, 10);
    if (*end || end == s || v < 2 || v > 8) return -1;
    *out = (int)v;
    return 0;
}

int cmd_quantize(int argc, char **argv) {
    static const struct option opts[] = {{"output", required_argument, 0, 'o'},
                                         {"method", required_argument, 0, 'm'},
                                         {"bits", required_argument, 0, 'b'},
                                         {"group", required_argument, 0, 'g'},
                                         {"asym", no_argument, 0, 'S'},
                                         {"experts-only", no_argument, 0, 'E'},
                                         {"attn-bits", required_argument, 0, 'A'},
                                         {"calib", required_argument, 0, 'c'},
                                         {"calib-tokens", required_argument, 0, 'n'},
                                         {"damp", required_argument, 0, 'd'},
                                         {"act-order", no_argument, 0, 'a'},
                                         {"eval-only", no_argument, 0, 'e'},
                                         {"codec", required_argument, 0, 'C'},
                                         {"format", required_argument, 0, 'F'},
                                         {"embed-bits", required_argument, 0, 'B'},
                                         {"ternary-range", required_argument, 0, 'R'},
                                         {"ternary-type", required_argument, 0, 'Y'},
                                         {"text", required_argument, 0, 't'},
                                         {"threads", required_argument, 0, 'T'},
                                         {"allow-long-context", no_argument, 0, 'L'},
                                         {"json", no_argument, 0, 'j'},
                                         {"force", no_argument, 0, 'f'},
                                         {"quiet", no_argument, 0, 'Q'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    mt_quant_opts o;
    mt_quant_opts_default(&o);
    const char *out = NULL, *text_path = NULL;
    int json = 0, quiet = 0, eval_only = 0, threads = 0, c;
    long v;
    double f;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":ho:", opts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 'm':
            if (!strcmp(optarg, "gptq")) o.method = MT_QUANT_GPTQ;
            else if (!strcmp(optarg, "rtn")) o.method = MT_QUANT_RTN;
            else return cli_usage_error("quantize", "--method must be rtn or gptq, got '%s'", optarg);
            break;
        case 'b':
            if (parse_bits(optarg, &o.bits) || (o.bits != 8 && o.bits != 4 && o.bits != 3 && o.bits != 2 && o.bits != 1))
                return cli_usage_error("quantize", "--bits must be 8, 4, 3, 2 or ternary, got '%s'", optarg);
            break;
        case 'g':
            if (!strcmp(optarg, "row")) o.group = MT_QUANT_GROUP_ROW;
            else if (cli_parse_int("quantize", "--group", optarg, 1, 1 << 24, &v)) return MT_EXIT_USAGE;
            else o.group = (int)v;
            break;
        case 'S': o.asym = 1; break;
        case 'E': o.experts_only = 1; break;
        case 'A':
            if (parse_bits(optarg, &o.attn_bits) ||
                (o.attn_bits != 8 && o.attn_bits != 4 && o.attn_bits != 3 && o.attn_bits != 2))
                return cli_usage_error("quantize", "--attn-bits must be 8, 4, 3 or 2, got '%s'", optarg);
            break;
        case 'c': o.calib_path = optarg; break;
        case 'n':
            if (cli_parse_int("quantize", "--calib-tokens", optarg, 1, 1 << 30, &v)) return MT_EXIT_USAGE;
            o.calib_tokens = (int)v;
            break;
        case 'd':
            if (cli_parse_float("quantize", "--damp", optarg, &f)) return MT_EXIT_USAGE;
            o.damp = f;
            break;
        case 'a': o.act_order = 1; break;
        case 'e': eval_only = 1; break;
        case 'C':
            if (!strcmp(optarg, "qmoe")) o.codec = MT_QUANT_CODEC_QMOE;
            else if (!strcmp(optarg, "none")) o.codec = MT_QUANT_CODEC_NONE;
            else return cli_usage_error("quantize", "--codec must be none or qmoe, got '%s'", optarg);
            break;
        case 'F':
            if (!strcmp(optarg, "hf")) o.format = MT_FMT_HF;
            else if (!strcmp(optarg, "gguf")) o.format = MT_FMT_GGUF;
            else return cli_usage_error("quantize", "--format must be gguf or hf, got '%s'", optarg);
            break;
        case 'B':
            if (parse_bits(optarg, &o.embed_bits) || (o.embed_bits != 8 && o.embed_bits != 4))
                return cli_usage_error("quantize", "--embed-bits must be 8 or 4, got '%s'", optarg);
            break;
        case 'Y':
            if (!strcmp(optarg, "tq1_0")) o.tq1 = 1;
            else if (!strcmp(optarg, "tq2_0")) o.tq1 = 0;
            else return cli_usage_error("quantize", "--ternary-type must be tq2_0 or tq1_0, got '%s'", optarg);
            break;
        case 'R':
            if (cli_parse_float("quantize", "--ternary-range", optarg, &f)) return MT_EXIT_USAGE;
            if (!(f >= 0.5 && f <= 4.0))
                return cli_usage_error("quantize", "--ternary-range must be in 0.5..4, got '%s'", optarg);
            o.ternary_range = f;
            break;
        case 't': text_path = optarg; break;
        case 'T':
            if (cli_parse_int("quantize", "--threads", optarg, 1, MT_MAX_THREADS, &v)) return MT_EXIT_USAGE;
            threads = (int)v;
            break;
        case 'L': o.allow_long_context = 1; break;
        case 'j': json = 1; break;
        case 'f': o.force = 1; break;
        case 'Q': quiet = 1; break;
        case 'h': fputs(g_help, stdout); return MT_EXIT_OK;
        default: return cli_bad_option("quantize", c, argv);
        }
    }
    if (argc - optind > 1) return cli_usage_error("quantize", "expects one MODEL, got %d", argc - optind);
    if (!out && !eval_only) return cli_usage_error("quantize", "needs -o OUT (or --eval-only)");
    if (cli_check_output("quantize", out)) return MT_EXIT_USAGE;
    if (out && eval_only) return cli_usage_error("quantize", "--eval-only writes no file; drop -o");
    if (o.experts_only && o.attn_bits) return cli_usage_error("quantize", "--experts-only and --attn-bits exclude each other");
    const char *model_path = optind < argc ? argv[optind] : cli_default_model();
    char *calib_default = NULL;
    if (o.method == MT_QUANT_GPTQ && !o.calib_path) {
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
