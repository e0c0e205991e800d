/* cmd_merge.c — `moetool merge MODEL -o OUT --experts K`: fewer experts per
 * layer by calibrated merging or pruning, written as a HF Mixtral checkpoint.
 * Flags map one to one onto mt_merge_opts. */
#define _GNU_SOURCE
#include "cli_impl.h"
#include "moetool/mt_merge.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    mt_merge_opts o;
    const char *out, *layers;
    int json, quiet;
} merge_args;

static void merge_init(void *p) {
    merge_args *a = p;
    memset(a, 0, sizeof *a);
    mt_merge_opts_default(&a->o);
}

/* In mt_merge_method / mt_merge_router order (tests/test_options.c checks it). */
const char *const cli_merge_methods[] = {"prune", "average", "frequency", "hc-smoe", "mc-smoe",
                                         "reap",  "reap-merge", "naee", "auto", NULL};
const char *const cli_merge_routers[] = {"anchor", "average", "fit", "alias", NULL};

static const cli_opt merge_opts[] = {
    {"output", 'o', CLI_OUTPUT, "OUT", "output directory (appears only when complete); an existing OUT is replaced "
     "only when moetool wrote it (docs/outputs.md)", NULL, CLI_AT(merge_args, out)},
    {"force", 0, CLI_BOOL, NULL, "replace an existing OUT that moetool did not write (a symbolic link: the link "
     "itself); never an input", NULL, CLI_AT(merge_args, o.force), .flags = CLI_OPT_CLI_ONLY},
    {"experts", 0, CLI_INT, "K", "experts per layer in the output (top_k <= K < experts)", NULL,
     CLI_AT(merge_args, o.experts), 1, 64},
    {"layers", 0, CLI_STRING, "SPEC", "per-layer K, e.g. 0-1:6,2-3:4 (overrides --experts for those layers; written "
     "as config key moe_layer_experts)", NULL, CLI_AT(merge_args, layers)},
    {"budget", 0, CLI_INT, "N", "N experts in all, spread over the layers by sensitivity (layer-output error of the "
     "best kept set at each K). Different K per layer (--layers, --budget) runs in moetool only: transformers and "
     "llama.cpp need one K", NULL, CLI_AT(merge_args, o.budget), 1, 1 << 20},
    {"method", 0, CLI_ENUM, "M", "auto | prune | average | frequency | hc-smoe | mc-smoe | reap | reap-merge | naee "
     "(see docs/merge.md). auto splits the calibration windows: the last quarter (at least 1; --heldout-windows) is "
     "held out (one window in all: none, and reap-merge is written), the rest fit every candidate (the methods above; with --router alias only the merging ones), each "
     "candidate is measured by its perplexity on the held-out windows, and the lowest is written; it equals "
     "--method M --calib-tokens <fit tokens> with the chosen M. One method for all layers", "auto",
     CLI_AT(merge_args, o.method), .choices = cli_merge_methods},
    {"heldout-windows", 0, CLI_INT, "N", "--method auto: calibration windows held out for choosing (default a "
     "quarter of them, at least 1; with --heldout, windows of that text, default 16)", NULL,
     CLI_AT(merge_args, o.heldout_windows), 1, 1 << 20},
    {"heldout", 0, CLI_PATH, "FILE", "--method auto: choose on the first windows of FILE (no BOS, as `eval --text "
     "FILE --max-windows N` scores them) instead of the calibration text's last ones; every calibration window then "
     "fits. Text the model was not trained on ranks the candidates better", NULL,
     CLI_AT(merge_args, o.heldout_path)},
    {"router", 0, CLI_ENUM, "R", "anchor | average | fit | alias: how the K router rows are made for merged groups "
     "(pruning slices rows). alias keeps every original router row, mapped to its group's merged expert (config "
     "moe_router_alias): exact routing, but the output loads in moetool only (not transformers, no convert --to "
     "gguf); merging methods only", "fit", CLI_AT(merge_args, o.router), .choices = cli_merge_routers},
    {"router-steps", 0, CLI_INT, "N", "fit router: 0 = least squares (default); N > 0 = N steps of softmax "
     "regression instead", NULL, CLI_AT(merge_args, o.router_steps), 0, 100000},
    {"calib", 0, CLI_PATH, "FILE", "calibration text (default: MODEL/data/train.txt; a missing one is an error "
     "naming it)", NULL, CLI_AT(merge_args, o.calib_path)},
    {"calib-tokens", 0, CLI_INT, "N", "calibration tokens (default 16384), in windows of 256 or of the model's "
     "whole context when shorter", NULL, CLI_AT(merge_args, o.calib_tokens),
     256, 1L << 26},
    {"sample", 0, CLI_INT, "N", "FFN inputs kept per layer for expert outputs", "4096",
     CLI_AT(merge_args, o.sample_tokens), 16, 1 << 20},
    {"threads", 0, CLI_INT, "T", "CPU threads", "all cores", CLI_AT(merge_args, o.n_threads), 1, MT_MAX_THREADS},
    {"allow-long-context", 0, CLI_BOOL, NULL, "calibrate in windows longer than the model's max_position_embeddings",
     NULL, CLI_AT(merge_args, o.allow_long_context)},
    {"json", 0, CLI_BOOL, NULL, "one JSON object on stdout", NULL, CLI_AT(merge_args, json), .flags = CLI_OPT_CLI_ONLY},
    {"quiet", 0, CLI_BOOL, NULL, "no progress lines on stderr", NULL, CLI_AT(merge_args, quiet),
     .flags = CLI_OPT_CLI_ONLY},
};

const cli_verb cli_verb_merge = {
    .name = "merge",
    .synopsis = "usage: moetool merge [MODEL] -o OUT (--experts K | --layers SPEC | --budget N)\n"
                "                     [--method M]\n"
                "                     [--router R] [--calib FILE] [--calib-tokens N] [--sample N]\n"
                "                     [--router-steps N] [--heldout-windows N] [--heldout FILE] [--threads T]\n"
                "                     [--allow-long-context]\n"
                "                     [--json] [--quiet]",
    .about = "Reduces the experts of every MoE layer to K and writes a Hugging Face\n"
             "Mixtral checkpoint (num_local_experts = K, a K-row router) into OUT.\n"
             "Statistics come from running the model on calibration text.\n",
    .positional = "MODEL",
    .opts = merge_opts,
    .n_opts = sizeof merge_opts / sizeof merge_opts[0],
    .args_size = sizeof(merge_args),
    .init = merge_init,
    .run = cmd_merge,
    .recipe_step = 1,
};

int cmd_merge(int argc, char **argv) {
    merge_args A;
    merge_init(&A);
    const char *model_arg = NULL;
    int prc = cli_opts_parse_argv(&cli_verb_merge, &A, argc, argv, &model_arg);
    if (prc) return prc == 1 ? MT_EXIT_OK : prc;
    mt_merge_opts o = A.o;
    const char *out = A.out, *layers = A.layers;
    const int json = A.json, quiet = A.quiet;
    const char *model = model_arg ? model_arg : cli_default_model();
    if (!out) return cli_usage_error("merge", "missing -o OUT");
    if (cli_check_output("merge", out)) return MT_EXIT_USAGE;
    if (!o.experts && !layers && !o.budget) return cli_usage_error("merge", "missing --experts K (or --layers SPEC, --budget N)");
    if (o.budget && (o.experts || layers)) return cli_usage_error("merge", "--budget cannot be combined with --experts or --layers");
    if (layers && mt_merge_parse_layers(&o, layers, 0)) {
        mt_merge_opts_free(&o);
        return cli_usage_error("merge", "%s", mt_last_error());
    }
    char *calib_default = NULL;
    if (!o.calib_path) {
        if (!(calib_default = cli_beside_model(model, "data/train.txt"))) {
            mt_merge_opts_free(&o);
            return cli_fail("merge", MT_ERR_NOMEM);
        }
        if (access(calib_default, R_OK) != 0) {
            int r = cli_usage_error("merge", "no --calib FILE given and %s (data/train.txt beside the model) does not exist",
                                    calib_default);
            free(calib_default);
            mt_merge_opts_free(&o);
            return r;
        }
        o.calib_path = calib_default;
    }
    if (!quiet) o.progress = cli_progress;
    mt_merge_report r;
    char *cmdline = cli_command_line(argc, argv);
    o.command = cmdline;
    int rc = mt_merge(model, out, &o, &r);
    free(cmdline);
    mt_merge_opts_free(&o);
    cli_progress_done();
    if (rc) {
        mt_merge_report_free(&r);
        free(calib_default);
        /* Option errors found against the model (K vs experts, layers) are usage errors. */
        return rc == MT_ERR_ARG ? (fprintf(stderr, "moetool merge: %s\n", mt_last_error()), MT_EXIT_USAGE)
                                : cli_fail("merge", rc);
    }
    double rss = mt_peak_rss_bytes() / 1048576.0;
    const int deq = r.source_dtype >= 0;
    if (deq)
        fprintf(stderr, "moetool merge: note: the experts and routers were stored as %s%s; they were dequantized to "
                "f32, merged and written as bf16 (other tensors: as stored when safetensors holds the type, else "
                "bf16)\n", mt_dtype_name((mt_dtype)r.source_dtype), r.source_mixed ? " and other llama.cpp types" : "");
    if (o.method == MT_MERGE_AUTO && r.n_candidates == 0)
        fprintf(stderr, "moetool merge: note: --method auto: --calib-tokens %d gives one calibration window of %d "
                "tokens, none can be held out to measure the candidates; wrote reap-merge\n", o.calib_tokens, r.window);
    else if (o.method == MT_MERGE_AUTO && !quiet) {
        /* the candidate table, with the progress lines */
        fprintf(stderr, "moetool merge: auto: fitted on %llu tokens, measured on %d held-out windows of %d tokens%s%s "
                "(source ppl %.4f):\n", (unsigned long long)r.fit_tokens, r.heldout_windows, r.window,
                o.heldout_path ? " of " : "", o.heldout_path ? o.heldout_path : "", r.base_ppl);
        fprintf(stderr, "  %-12s %12s %14s %9s\n", "method", "held-out ppl", "KL to source", "seconds");
        for (int i = 0; i < r.n_candidates; i++)
            fprintf(stderr, "  %-12s %12.4f %14.6f %9.2f%s\n", mt_merge_method_name(r.candidates[i].method),
                    r.candidates[i].ppl, r.candidates[i].kl, r.candidates[i].seconds,
                    r.candidates[i].method == r.method ? "  <- written" : "");
    }
    cli_note_portability("merge", out);
    if (json) {
        printf("{\"output\": ");
        json_str(stdout, out);
        printf(", \"method\": \"%s\", \"router\": \"%s\", \"router_steps\": %d, \"calib_tokens\": %llu,"
               " \"fit_tokens\": %llu, \"experts_in\": %d, \"layer_experts\": [",
               mt_merge_method_name(r.method), mt_merge_router_name(o.router), o.router_steps,
               (unsigned long long)r.calib_tokens, (unsigned long long)r.fit_tokens, r.experts_in);
        for (int l = 0; l < r.n_layers; l++) printf("%s%d", l ? ", " : "", r.layer_k[l]);
        printf("], \"groups\": [");
        for (int l = 0; l < r.n_layers; l++) {
            printf("%s[", l ? ", " : "");
            for (int e = 0; e < r.experts_in; e++) printf("%s%d", e ? ", " : "", r.group[l][e]);
            printf("]");
        }
        printf("], \"freq\": [");
        for (int l = 0; l < r.n_layers; l++) {
            printf("%s[", l ? ", " : "");
            for (int e = 0; e < r.experts_in; e++) printf("%s%.4f", e ? ", " : "", r.freq[l][e]);
            printf("]");
        }
        printf("], \"gate_mean\": [");
        for (int l = 0; l < r.n_layers; l++) {
            printf("%s[", l ? ", " : "");
            for (int e = 0; e < r.experts_in; e++) printf("%s%.4f", e ? ", " : "", r.gate_mean[l][e]);
            printf("]");
        }
        printf("], \"recon_err\": [");
        for (int l = 0; l < r.n_layers; l++) printf("%s%.6f", l ? ", " : "", r.recon_err[l]);
        printf("], \"budget\": %d", o.budget);
        if (o.budget) {
            /* sensitivity[l][K - top_k] for K = top_k .. experts */
            printf(", \"sensitivity\": [");
            for (int l = 0; l < r.n_layers; l++) {
                printf("%s[", l ? ", " : "");
                for (int k = r.top_k; k <= r.experts_in; k++) printf("%s%.6f", k > r.top_k ? ", " : "", r.sensitivity[l][k]);
                printf("]");
            }
            printf("]");
        }
        if (o.method == MT_MERGE_AUTO) {
            printf(", \"auto\": {\"chosen\": \"%s\", \"window\": %d, \"heldout_windows\": %d, \"heldout_skip_tokens\": "
                   "%llu, \"base_ppl\": %.6f, \"candidates\": [",
                   mt_merge_method_name(r.method), r.window, r.heldout_windows, (unsigned long long)r.heldout_skip,
                   r.base_ppl);
            for (int i = 0; i < r.n_candidates; i++)
                printf("%s{\"method\": \"%s\", \"heldout_ppl\": %.6f, \"heldout_kl\": %.8f, \"seconds\": %.3f}",
                       i ? ", " : "", mt_merge_method_name(r.candidates[i].method), r.candidates[i].ppl,
                       r.candidates[i].kl, r.candidates[i].seconds);
            printf("]");
            if (o.heldout_path) {
                printf(", \"heldout_text\": ");
                json_str(stdout, o.heldout_path);
            }
            printf("}");
        }
        if (deq) {
            printf(", \"dequantized_from\": ");
            json_str(stdout, mt_dtype_name((mt_dtype)r.source_dtype));
        }
        printf(", \"expert_params_in\": %llu, \"expert_params_out\": %llu, \"router_fit_rmse\": %.6f,"
               " \"seconds\": %.3f, \"peak_rss_mib\": %.1f}\n",
               (unsigned long long)r.expert_params_in, (unsigned long long)r.expert_params_out, r.router_fit_rmse,
               r.seconds, rss);
    } else {
        printf("merged %s -> %s: %s%s, router %s, %llu calibration tokens\n", model, out, mt_merge_method_name(r.method),
               o.method == MT_MERGE_AUTO ? " (chosen by auto)" : "",
               mt_merge_router_name(o.router), (unsigned long long)r.calib_tokens);
        for (int l = 0; l < r.n_layers; l++) {
            printf("  layer %d: %d -> %d experts; groups", l, r.experts_in, r.layer_k[l]);
            for (int e = 0; e < r.experts_in; e++) printf(" %d", r.group[l][e]);
            if (r.recon_err[l] >= 0) printf("; layer-output error %.4f", r.recon_err[l]);
            printf("\n");
        }
        printf("expert parameters %llu -> %llu; %.2f s, peak RSS %.1f MiB\n", (unsigned long long)r.expert_params_in,
               (unsigned long long)r.expert_params_out, r.seconds, rss);
    }
    mt_merge_report_free(&r);
    free(calib_default);
    return MT_EXIT_OK;
}
