/* cmd_eval.c — `moetool eval MODEL --text FILE`: perplexity, agreement with
 * a reference model, size, speed and routing, all measured by the runtime. */
#define _GNU_SOURCE
#include "cli_impl.h"
#include "moetool/mt_seq2seq.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    mt_eval_opts e;
    mt_model_opts m;
    const char *text, *ref, *pairs, *src_lang, *tgt_lang, *save_pairs;
    int json, quiet, long_ctx, skip, seed, force;
    int ctx_given; /* else the default shrinks to a shorter model context */
} eval_args;

static void eval_init(void *p) {
    eval_args *a = p;
    memset(a, 0, sizeof *a);
    mt_eval_opts_default(&a->e);
    mt_model_opts_default(&a->m);
}

static int set_ctx(void *p, const cli_opt *o, const char *shown, const char *value, char *err, size_t errn) {
    eval_args *a = p;
    a->e.ctx = atoi(value); /* range-checked by the table */
    a->ctx_given = 1;
    return 0;
}

static const char *const protocol_choices[] = {"gptq", "llamacpp", NULL};
static const int protocol_values[] = {MT_PPL_GPTQ, MT_PPL_LLAMACPP};

static const cli_opt eval_opts[] = {
    {"text", 0, CLI_PATH, "FILE", "text to score (default: MODEL/data/test.txt if present, else the bundled model's "
     "held-out data/test.txt, with a line on stderr saying so; it suits models made from the bundled one, which share "
     "its tokenizer)", NULL, CLI_AT(eval_args, text)},
    {"ctx", 0, CLI_INT, "N", "window length in tokens (default 256, or the model's max_position_embeddings when "
     "shorter; at most that)", NULL, CLI_AT(eval_args, e.ctx), 2, 1 << 20, .set = set_ctx},
    {"allow-long-context", 0, CLI_BOOL, NULL, "allow --ctx beyond max_position_embeddings", NULL,
     CLI_AT(eval_args, long_ctx)},
    {"protocol", 0, CLI_ENUM, "P", "gptq or llamacpp", "gptq", CLI_AT(eval_args, e.protocol),
     .choices = protocol_choices, .values = protocol_values},
    {"pairs", 0, CLI_PATH, "FILE", "encoder-decoder models: JSON Lines of {\"input\": [ids] or text, \"target\": [ids] "
     "or text} (text: the model's spiece.model / tokenizer.json, EOS appended); reports the loss and perplexity of the "
     "targets given the inputs (docs/seq2seq.md)", NULL,
     CLI_AT(eval_args, pairs)},
    {"src-lang", 0, CLI_STRING, "CODE", "encoder-decoder models with language codes (NLLB): the language of the input "
     "texts (e.g. eng_Latn; a pairs line's \"src_lang\" overrides it)", NULL, CLI_AT(eval_args, src_lang)},
    {"tgt-lang", 0, CLI_STRING, "CODE", "NLLB: the language of the target texts (e.g. fra_Latn; a pairs line's "
     "\"tgt_lang\" overrides it)", NULL, CLI_AT(eval_args, tgt_lang)},
    {"seed", 0, CLI_INT, "S", "Switch models with --text: the seed of the span-corruption noise", "0",
     CLI_AT(eval_args, seed), 0, 0x7fffffffL},
    {"save-pairs", 0, CLI_PATH, "FILE", "encoder-decoder models: also write the input/target pairs scored, as token "
     "ids in the --pairs format (an existing FILE moetool did not write only with --force)", NULL,
     CLI_AT(eval_args, save_pairs)},
    {"force", 0, CLI_BOOL, NULL, "with --save-pairs: replace an existing FILE", NULL, CLI_AT(eval_args, force)},
    {"ref", 0, CLI_PATH, "MODEL", "reference model for KL / agreement (same tokenizer)", NULL, CLI_AT(eval_args, ref)},
    {"threads", 0, CLI_INT, "T", "CPU threads", "all cores", CLI_AT(eval_args, m.n_threads), 1, MT_MAX_THREADS},
    {"device", 0, CLI_ENUM, "D", "cpu or cuda (a build with CUDA and a device; else one line says which is missing)",
     "cpu", CLI_AT(eval_args, m.device), .choices = cli_device_choices, .values = cli_device_values},
    {"max-windows", 0, CLI_INT, "N", "score only the first N windows (only the text they need is read)", NULL,
     CLI_AT(eval_args, e.max_windows), 1, 1 << 30},
    {"skip-tokens", 0, CLI_INT, "N", "leave out the text's first N tokens; windows start after them (merge --method "
     "auto's held-out windows are --skip-tokens S with S from its --json)", NULL, CLI_AT(eval_args, skip), 0,
     1 << 30},
    {"json", 0, CLI_BOOL, NULL, "one JSON object on stdout", NULL, CLI_AT(eval_args, json), .flags = CLI_OPT_CLI_ONLY},
    {"quiet", 0, CLI_BOOL, NULL, "no progress lines on stderr", NULL, CLI_AT(eval_args, quiet),
     .flags = CLI_OPT_CLI_ONLY},
};

const cli_verb cli_verb_eval = {
    .name = "eval",
    .synopsis = "usage: moetool eval [MODEL] [--text FILE] [--ctx N] [--protocol gptq|llamacpp]\n"
                "                    [--ref MODEL] [--threads T] [--device cpu|cuda] [--max-windows N]\n"
                "                    [--skip-tokens N] [--allow-long-context] [--json] [--quiet]\n"
                "       moetool eval ENCODER_DECODER_MODEL (--pairs FILE | --text FILE) [--src-lang C] [--tgt-lang C]\n"
                "                    [--ctx W] [--max-windows N] [--seed S] [--save-pairs F] [--threads T] [--json]",
    .about = "Perplexity of a text under one of two protocols:\n"
             "  gptq      the whole text tokenized without BOS, cut into non-overlapping\n"
             "            windows of N tokens (a final partial window is dropped); every\n"
             "            token of a window but its first is scored; ppl = exp(mean NLL)\n"
             "  llamacpp  as llama.cpp's llama-perplexity: each window starts with BOS and\n"
             "            only its second half is scored (comparable with llama.cpp)\n"
             "With --ref, also the mean KL(ref || model) per scored token, top-1\n"
             "agreement and mean |p_ref - p_model| of the correct token. Reports size\n"
             "(bits per weight), tokens/s and the tokens routed to each expert.\n"
             "An encoder-decoder model (Switch Transformers, NLLB-MoE) is scored on\n"
             "--pairs: the summed NLL of each target given its input, mean per target\n"
             "token, ppl.\n",
    .positional = "MODEL",
    .opts = eval_opts,
    .n_opts = sizeof eval_opts / sizeof eval_opts[0],
    .args_size = sizeof(eval_args),
    .init = eval_init,
    .run = cmd_eval,
    .recipe_step = 1,
};

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
    eval_args A;
    eval_init(&A);
    const char *model_arg = NULL;
    int prc = cli_opts_parse_argv(&cli_verb_eval, &A, argc, argv, &model_arg);
    if (prc) return prc == 1 ? MT_EXIT_OK : prc;
    mt_eval_opts eo = A.e;
    mt_model_opts mo = A.m;
    const char *text_path = A.text, *ref_path = A.ref;
    const int json = A.json, quiet = A.quiet, long_ctx = A.long_ctx, ctx_given = A.ctx_given;
    const char *model_path = model_arg ? model_arg : cli_default_model();
    if (mt_s2s_detect(model_path)) {
        if (!A.pairs == !text_path)
            return cli_usage_error("eval", "%s is an encoder-decoder model: score it with --pairs FILE or --text FILE "
                                   "(NLLB: SOURCE<tab>TARGET lines)", model_path);
        if (ref_path || long_ctx || A.skip || ((ctx_given || A.e.max_windows) && !text_path))
            return cli_usage_error("eval", "encoder-decoder models take --pairs or --text, --src-lang, --tgt-lang, "
                                   "--ctx, --max-windows and --seed (Switch --text), --save-pairs, --force, --threads, --json "
                                   "and --quiet only");
        if (mo.device != MT_DEVICE_CPU)
            return cli_usage_error("eval", "%s: encoder-decoder models run on the CPU only (--device cpu)", model_path);
        cli_s2s_eval_opts so = {.pairs = A.pairs, .text = text_path, .src_lang = A.src_lang, .tgt_lang = A.tgt_lang,
                                .save_pairs = A.save_pairs, .window = ctx_given ? eo.ctx : 64,
                                .max_windows = eo.max_windows, .seed = (unsigned long long)A.seed,
                                .n_threads = mo.n_threads, .json = json, .quiet = quiet, .force = A.force};
        return cli_s2s_eval(model_path, &so);
    }
    if (A.pairs)
        return cli_usage_error("eval", "--pairs is for encoder-decoder models; %s is not one", model_path);
    if (A.seed) return cli_usage_error("eval", "--seed is for the span corruption of a Switch model's --text");
    if (A.src_lang || A.tgt_lang || A.save_pairs || A.force)
        return cli_usage_error("eval", "--src-lang / --tgt-lang / --save-pairs / --force are for encoder-decoder models; %s is "
                               "not one", model_path);
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
    if ((rc = mt_tok_encode_file(tok, text_path, eo.max_windows ? (size_t)A.skip + (size_t)eo.max_windows * eo.ctx : 0,
                                 &ids, &n_ids, &whole)))
        goto fail;
    if (A.skip) {
        if (n_ids < (size_t)A.skip + (size_t)eo.ctx) {
            rc = mt_seterr(MT_ERR_ARG, "%s: %zu tokens leave less than one window of --ctx %d after --skip-tokens %d",
                           text_path, n_ids, eo.ctx, A.skip);
            goto fail;
        }
        memmove(ids, ids + A.skip, (n_ids - (size_t)A.skip) * sizeof *ids);
        n_ids -= (size_t)A.skip;
    }
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
        printf(",\"speed\":{\"seconds\":%.4f,\"tokens_per_s\":%.2f,\"threads\":%d,\"backend\":\"%s\"}", res.seconds,
               res.tokens_per_s, mt_model_threads(m), mt_model_backend_name(m));
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
        printf("speed:      %.1f tokens/s (%s, %d threads, batches of %d), %.2f s; peak RSS %.1f MiB\n",
               res.tokens_per_s, mt_model_backend_name(m), mt_model_threads(m), eo.n_batch, res.seconds,
               mt_peak_rss_bytes() / 1048576.0);
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
