/* cmd_eval.c — `moetool eval MODEL --text FILE`: perplexity, agreement with
 * a reference model, size, speed and routing, all measured by the runtime. */
#define _GNU_SOURCE
#include "cli_impl.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

static const char *g_help =
    "usage: moetool eval [MODEL] [--text FILE] [--ctx N] [--protocol gptq|llamacpp]\n"
    "                    [--ref MODEL] [--threads T] [--max-windows N]\n"
    "                    [--allow-long-context] [--json] [--quiet]\n"
    "\n"
    "Perplexity of a text under one of two protocols:\n"
    "  gptq      the whole text tokenized without BOS, cut into non-overlapping\n"
    "            windows of N tokens (a final partial window is dropped); every\n"
    "            token of a window but its first is scored; ppl = exp(mean NLL)\n"
    "  llamacpp  as llama.cpp's llama-perplexity: each window starts with BOS and\n"
    "            only its second half is scored (comparable with llama.cpp)\n"
    "With --ref, also the mean KL(ref || model) per scored token, top-1\n"
    "agreement and mean |p_ref - p_model| of the correct token. Reports size\n"
    "(bits per weight), tokens/s and the tokens routed to each expert.\n"
    "\n"
    "  --text FILE       text to score (default: MODEL/data/test.txt if present,\n"
    "                    else the bundled model's held-out data/test.txt, with a\n"
    "                    line on stderr saying so; it suits models made from the\n"
    "                    bundled one, which share its tokenizer)\n"
    "  --ctx N           window length in tokens (default 256, or the model's\n"
    "                    max_position_embeddings when shorter; at most that)\n"
    "  --allow-long-context  allow --ctx beyond max_position_embeddings\n"
    "  --protocol P      gptq (default) or llamacpp\n"
    "  --ref MODEL       reference model for KL / agreement (same tokenizer)\n"
    "  --threads T       CPU threads (default: all cores)\n"
    "  --max-windows N   score only the first N windows (only the text they\n"
    "                    need is read)\n"
    "  --json            one JSON object on stdout\n"
    "  --quiet           no progress lines on stderr\n"
    "  -h, --help        this text\n";

static void routing_picture(const mt_eval_result *r) {
    static const char *bars[] = {" ", "\u2581", "\u2582", "\u2583", "\u2584", "\u2585", "\u2586", "\u2587", "\u2588"};
    int E = r->routing_experts;
    printf("routing:    share of routed tokens per expert (uniform %.1f%%), bar full at 2x uniform\n", 100.0 / E);
    printf("  layer ");
    for (int e = 0; e < E; e++) printf(" e%-4d", e);
    printf("\n");
    for (int l = 0; l < r->routing_layers; l++) {
        const uint64_t *c = r->routing + (size_t)l * (size_t)E;
        uint64_t tot = 0;
        for (int e = 0; e < E; e++) tot += c[e];
        printf("  %5d ", l);
        for (int e = 0; e < E; e++) printf(" %5.1f", tot ? 100.0 * (double)c[e] / (double)tot : 0.0);
        printf("  ");
        for (int e = 0; e < E; e++) {
            double share = tot ? (double)c[e] / (double)tot : 0.0;
            int k = (int)(share * E / 2.0 * 8.0 + 0.5);
            if (k > 8) k = 8;
            if (k < 0) k = 0;
            printf("%s", bars[k]);
        }
        printf("\n");
    }
}

/* data/test.txt inside a model directory or beside a model file (the
 * bundled model ships its held-out text there). */
static char *default_text(const char *model) { return cli_beside_model(model, "data/test.txt"); }

int cmd_eval(int argc, char **argv) {
    static const struct option opts[] = {{"text", required_argument, 0, 't'},
                                         {"ctx", required_argument, 0, 'c'},
                                         {"protocol", required_argument, 0, 'p'},
                                         {"ref", required_argument, 0, 'r'},
                                         {"threads", required_argument, 0, 'T'},
                                         {"max-windows", required_argument, 0, 'w'},
                                         {"allow-long-context", no_argument, 0, 'L'},
                                         {"json", no_argument, 0, 'j'},
                                         {"quiet", no_argument, 0, 'Q'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    mt_eval_opts eo;
    mt_eval_opts_default(&eo);
    mt_model_opts mo;
    mt_model_opts_default(&mo);
    const char *text_path = NULL, *ref_path = NULL;
    int json = 0, quiet = 0, long_ctx = 0, ctx_given = 0, c;
    long v;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 't': text_path = optarg; break;
        case 'c':
            if (cli_parse_int("eval", "--ctx", optarg, 2, 1 << 20, &v)) return MT_EXIT_USAGE;
            eo.ctx = (int)v;
            ctx_given = 1;
            break;
        case 'p':
            if (!strcmp(optarg, "gptq"))
                eo.protocol = MT_PPL_GPTQ;
            else if (!strcmp(optarg, "llamacpp"))
                eo.protocol = MT_PPL_LLAMACPP;
            else
                return cli_usage_error("eval", "--protocol must be gptq or llamacpp, got '%s'", optarg);
            break;
        case 'r': ref_path = optarg; break;
        case 'T':
            if (cli_parse_int("eval", "--threads", optarg, 1, MT_MAX_THREADS, &v)) return MT_EXIT_USAGE;
            mo.n_threads = (int)v;
            break;
        case 'w':
            if (cli_parse_int("eval", "--max-windows", optarg, 1, 1 << 30, &v)) return MT_EXIT_USAGE;
            eo.max_windows = (int)v;
            break;
        case 'L': long_ctx = 1; break;
        case 'j': json = 1; break;
        case 'Q': quiet = 1; break;
        case 'h': fputs(g_help, stdout); return MT_EXIT_OK;
        default: return cli_bad_option("eval", c, argv);
        }
    }
    if (argc - optind > 1) return cli_usage_error("eval", "expects one MODEL, got %d", argc - optind);
    const char *model_path = optind < argc ? argv[optind] : cli_default_model();
    char *text_default = NULL;
    if (!text_path) {
        /* A model directory that ships its held-out text (as the bundled one
         * does) is scored on it; anything else on the bundled model's. */
        text_default = default_text(model_path);
        FILE *probe = text_default ? fopen(text_default, "rb") : NULL;
        if (probe) {
            fclose(probe);
        } else {
            fprintf(stderr, "moetool eval: no --text given and %s does not exist: scoring ",
                    text_default ? text_default : "data/test.txt");
            free(text_default);
            text_default = default_text(cli_default_model());
            fprintf(stderr, "%s\n", text_default ? text_default : "?");
        }
        text_path = text_default;
    }
    eo.n_batch = eo.ctx;
    if (!quiet) eo.progress = cli_progress;

    int ret = MT_EXIT_FAIL, rc;
    mt_model *m = NULL, *ref = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    int whole = 0;
    mt_eval_result res;
    memset(&res, 0, sizeof res);

    if ((rc = mt_model_load(&m, model_path, &mo))) goto fail;
    if (ref_path && (rc = mt_model_load(&ref, ref_path, &mo))) goto fail;
    const mt_tokenizer *tok = mt_model_tokenizer(m);
    if (!tok) {
        rc = mt_seterr(MT_ERR_NOT_FOUND, "no tokenizer to read the text with: %s", mt_model_tokenizer_error(m));
        goto fail;
    }
    const int max_pos = mt_model_config(m)->max_pos;
    if (!ctx_given && max_pos > 0 && eo.ctx > max_pos) eo.ctx = eo.n_batch = max_pos; /* the default fits the model */
    if (max_pos > 0 && eo.ctx > max_pos && !long_ctx) {
        ret = cli_usage_error("eval", "--ctx %d is longer than the model's context of %d tokens "
                              "(max_position_embeddings); --allow-long-context to score anyway", eo.ctx, max_pos);
        goto done;
    }
    if ((rc = mt_ctx_check(m, eo.ctx, eo.n_batch)) || (ref && (rc = mt_ctx_check(ref, eo.ctx, eo.n_batch)))) goto fail;
    if (ref && mt_model_config(ref)->vocab != mt_model_config(m)->vocab) {
        rc = mt_seterr(MT_ERR_ARG, "%s: reference vocabulary (%d) differs from the model's (%d)", ref_path,
                       mt_model_config(ref)->vocab, mt_model_config(m)->vocab);
        goto fail;
    }
    /* With --max-windows only the text those windows need is read. */
    if ((rc = mt_tok_encode_file(tok, text_path, (size_t)eo.max_windows * (size_t)eo.ctx, &ids, &n_ids, &whole)))
        goto fail;
    if (n_ids < (size_t)eo.ctx) {
        rc = mt_seterr(MT_ERR_ARG, "%s: %zu tokens is shorter than one window of --ctx %d", text_path, n_ids, eo.ctx);
        goto fail;
    }
    if ((rc = mt_eval_ppl(m, ref, ids, n_ids, &eo, &res))) goto fail;
    cli_progress_done();

    mt_param_stats ps;
    mt_model_param_stats(m, &ps);
    uint64_t file_bytes = mt_ckpt_file_bytes(mt_model_ckpt(m));
    double bpw_all = ps.total ? 8.0 * (double)ps.weight_bytes / (double)ps.total : 0.0;
    double bpw_exp = ps.experts ? 8.0 * (double)ps.expert_bytes / (double)ps.experts : 0.0;
    const char *proto = eo.protocol == MT_PPL_GPTQ ? "gptq" : "llamacpp";
    if (json) {
        printf("{\"model\":");
        json_str(stdout, model_path);
        printf(",\"text\":");
        json_str(stdout, text_path);
        printf(",\"protocol\":\"%s\",\"ctx\":%d,\"tokens\":%zu,\"windows\":%d,\"scored\":%llu,\"ppl\":%.6f,"
               "\"nll_mean\":%.8f",
               proto, eo.ctx, n_ids, res.n_windows, (unsigned long long)res.n_scored, res.ppl,
               res.n_scored ? res.nll_sum / (double)res.n_scored : 0.0);
        if (res.has_ref) {
            printf(",\"ref\":");
            json_str(stdout, ref_path);
            printf(",\"ref_ppl\":%.6f,\"kl_mean\":%.8f,\"top1_agree\":%.6f,\"dp_mean\":%.8f", res.ref_ppl, res.kl_mean,
                   res.top1_agree, res.dp_mean);
        }
        printf(",\"size\":{\"file_bytes\":%llu,\"weight_bytes\":%llu,\"params\":%llu,\"expert_params\":%llu,"
               "\"active_params\":%llu,\"bits_per_weight\":%.4f,\"bits_per_expert_weight\":%.4f}",
               (unsigned long long)file_bytes, (unsigned long long)ps.weight_bytes, (unsigned long long)ps.total,
               (unsigned long long)ps.experts, (unsigned long long)ps.active, bpw_all, bpw_exp);
        printf(",\"speed\":{\"seconds\":%.4f,\"tokens_per_s\":%.2f,\"threads\":%d,\"backend\":\"cpu\"}", res.seconds,
               res.tokens_per_s, mt_model_threads(m));
        printf(",\"peak_rss_bytes\":%llu", (unsigned long long)mt_peak_rss_bytes());
        printf(",\"routing\":");
        if (res.routing) {
            printf("[");
            for (int l = 0; l < res.routing_layers; l++) {
                printf("%s[", l ? "," : "");
                for (int e = 0; e < res.routing_experts; e++)
                    printf("%s%llu", e ? "," : "",
                           (unsigned long long)res.routing[(size_t)l * (size_t)res.routing_experts + (size_t)e]);
                printf("]");
            }
            printf("]");
        } else {
            printf("null");
        }
        printf("}\n");
    } else {
        printf("model:      %s\n", model_path);
        printf("size:       %.2f MiB on disk; %.2fM params (%.2fM in experts, %.2fM active/token); %.2f bits/weight, "
               "%.2f bits/expert weight\n",
               file_bytes / 1048576.0, ps.total / 1e6, ps.experts / 1e6, ps.active / 1e6, bpw_all, bpw_exp);
        printf("text:       %s: %zu tokens%s; protocol %s, ctx %d: %d windows, %llu tokens scored\n", text_path, n_ids,
               whole ? "" : " read", proto, eo.ctx, res.n_windows, (unsigned long long)res.n_scored);
        printf("perplexity: %.4f\n", res.ppl);
        if (res.has_ref)
            printf("vs ref:     %s: ppl %.4f; KL(ref||model) %.6f nats/token, top-1 agreement %.2f%%, mean |dp| %.5f\n",
                   ref_path, res.ref_ppl, res.kl_mean, 100.0 * res.top1_agree, res.dp_mean);
        printf("speed:      %.1f tokens/s (cpu, %d threads, batches of %d), %.2f s; peak RSS %.1f MiB\n",
               res.tokens_per_s, mt_model_threads(m), eo.n_batch, res.seconds, mt_peak_rss_bytes() / 1048576.0);
        if (res.routing) routing_picture(&res);
    }
    ret = MT_EXIT_OK;
    goto done;
fail:
    ret = cli_fail("eval", rc);
done:
    mt_eval_result_free(&res);
    free(ids);
    free(text_default);
    mt_model_free(ref);
    mt_model_free(m);
    return ret;
}
