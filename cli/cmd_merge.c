/* cmd_merge.c — `moetool merge MODEL -o OUT --experts K`: fewer experts per
 * layer by calibrated merging or pruning, written as a HF Mixtral checkpoint.
 * Flags map one to one onto mt_merge_opts. */
#define _GNU_SOURCE
#include "cli_impl.h"
#include "moetool/mt_merge.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *g_help =
    "usage: moetool merge [MODEL] -o OUT (--experts K | --layers SPEC | --budget N)\n"
    "                     [--method M]\n"
    "                     [--router R] [--calib FILE] [--calib-tokens N] [--sample N]\n"
    "                     [--router-steps N] [--threads T] [--allow-long-context] [--json] [--quiet]\n"
    "\n"
    "Reduces the experts of every MoE layer to K and writes a Hugging Face\n"
    "Mixtral checkpoint (num_local_experts = K, a K-row router) into OUT.\n"
    "Statistics come from running the model on calibration text.\n"
    "\n"
    "  -o, --output OUT     output directory (appears only when complete); an\n"
    "                       existing OUT is replaced only when moetool wrote it\n"
    "                       (docs/outputs.md)\n"
    "  --force              replace an existing OUT that moetool did not write (a\n"
    "                       symbolic link: the link itself); never an input\n"
    "  --experts K          experts per layer in the output (top_k <= K < experts)\n"
    "  --layers SPEC        per-layer K, e.g. 0-1:6,2-3:4 (overrides --experts for\n"
    "                       those layers; written as config key moe_layer_experts)\n"
    "  --budget N           N experts in all, spread over the layers by sensitivity\n"
    "                       (layer-output error of the best kept set at each K)\n"
    "                       Different K per layer (--layers, --budget) runs in\n"
    "                       moetool only: transformers and llama.cpp need one K\n"
    "  --method M           prune | average | frequency | hc-smoe | mc-smoe | reap |\n"
    "                       reap-merge | naee (default reap-merge; see docs/merge.md)\n"
    "  --router R           anchor | average | fit | alias (default fit): how the K\n"
    "                       router rows are made for merged groups (pruning slices\n"
    "                       rows). alias keeps every original router row, mapped to\n"
    "                       its group's merged expert (config moe_router_alias):\n"
    "                       exact routing, but the output loads in moetool only\n"
    "                       (not transformers, no convert --to gguf); merging\n"
    "                       methods only\n"
    "  --router-steps N     fit router: 0 = least squares (default); N > 0 = N steps\n"
    "                       of softmax regression instead\n"
    "  --calib FILE         calibration text (default: MODEL/data/train.txt; a\n"
    "                       missing one is an error naming it)\n"
    "  --calib-tokens N     calibration tokens (default 16384), in windows of 256\n"
    "                       or of the model's whole context when shorter\n"
    "  --sample N           FFN inputs kept per layer for expert outputs (default 4096)\n"
    "  --threads T          CPU threads (default: all cores)\n"
    "  --allow-long-context calibrate in windows longer than the model's\n"
    "                       max_position_embeddings\n"
    "  --json               one JSON object on stdout\n"
    "  --quiet              no progress lines on stderr\n"
    "  -h, --help           this text\n";

int cmd_merge(int argc, char **argv) {
    static const struct option opts[] = {{"output", required_argument, 0, 'o'},
                                         {"experts", required_argument, 0, 'k'},
                                         {"layers", required_argument, 0, 'l'},
                                         {"budget", required_argument, 0, 'b'},
                                         {"method", required_argument, 0, 'm'},
                                         {"router", required_argument, 0, 'r'},
                                         {"router-steps", required_argument, 0, 'R'},
                                         {"calib", required_argument, 0, 'c'},
                                         {"calib-tokens", required_argument, 0, 'n'},
                                         {"sample", required_argument, 0, 's'},
                                         {"threads", required_argument, 0, 't'},
                                         {"allow-long-context", no_argument, 0, 'L'},
                                         {"json", no_argument, 0, 'j'},
                                         {"force", no_argument, 0, 'f'},
                                         {"quiet", no_argument, 0, 'Q'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    mt_merge_opts o;
    mt_merge_opts_default(&o);
    const char *out = NULL, *layers = NULL;
    int json = 0, quiet = 0, c;
    long v;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 'k':
            if (cli_parse_int("merge", "--experts", optarg, 1, 64, &v)) return MT_EXIT_USAGE;
            o.experts = (int)v;
            break;
        case 'l': layers = optarg; break;
        case 'b':
            if (cli_parse_int("merge", "--budget", optarg, 1, 1 << 20, &v)) return MT_EXIT_USAGE;
            o.budget = (int)v;
            break;
        case 'm':
            if ((o.method = mt_merge_method_from_name(optarg)) < 0)
                return cli_usage_error("merge", "--method must be prune, average, frequency, hc-smoe, mc-smoe, reap, reap-merge or naee, got '%s'",
                                       optarg);
            break;
        case 'r':
            if ((o.router = mt_merge_router_from_name(optarg)) < 0)
                return cli_usage_error("merge", "--router must be anchor, average, fit or alias, got '%s'", optarg);
            break;
        case 'R':
            if (cli_parse_int("merge", "--router-steps", optarg, 0, 100000, &v)) return MT_EXIT_USAGE;
            o.router_steps = (int)v;
            break;
        case 'c': o.calib_path = optarg; break;
        case 'n':
            if (cli_parse_int("merge", "--calib-tokens", optarg, 256, 1L << 26, &v)) return MT_EXIT_USAGE;
            o.calib_tokens = (int)v;
            break;
        case 's':
            if (cli_parse_int("merge", "--sample", optarg, 16, 1 << 20, &v)) return MT_EXIT_USAGE;
            o.sample_tokens = (int)v;
            break;
        case 't':
            if (cli_parse_int("merge", "--threads", optarg, 1, MT_MAX_THREADS, &v)) return MT_EXIT_USAGE;
            o.n_threads = (int)v;
            break;
        case 'L': o.allow_long_context = 1; break;
        case 'j': json = 1; break;
        case 'f': o.force = 1; break;
        case 'Q': quiet = 1; break;
        case 'h': fputs(g_help, stdout); return MT_EXIT_OK;
        default: return cli_bad_option("merge", c, argv);
        }
    }
    if (argc - optind > 1) return cli_usage_error("merge", "expects one MODEL, got %d", argc - optind);
    const char *model = optind < argc ? argv[optind] : cli_default_model();
    if (!out) return cli_usage_error("merge", "missing -o OUT");
    if (cli_check_output("merge", out)) return MT_EXIT_USAGE;
    if (!o.experts && !layers && !o.budget) return cli_usage_error("merge", "missing --experts K (or --layers SPEC, --budget N)");
    if (o.budget && (o.experts || layers)) return cli_usage_error("merge", "--budget cannot be combined with --experts or --layers");
    if (layers && mt_merge_parse_layers(&o, layers, 0)) return cli_usage_error("merge", "%s", mt_last_error());
    char *calib_default = NULL;
    if (!o.calib_path) {
        if (!(calib_default = cli_beside_model(model, "data/train.txt"))) return cli_fail("merge", MT_ERR_NOMEM);
        if (access(calib_default, R_OK) != 0) {
            int r = cli_usage_error("merge", "no --calib FILE given and %s (data/train.txt beside the model) does not exist",
                                    calib_default);
            free(calib_default);
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
    cli_progress_done();
    if (rc) {
        mt_merge_report_free(&r);
        free(calib_default);
        /* Option errors found against the model (K vs experts, layers) are usage errors. */
        return rc == MT_ERR_ARG ? (fprintf(stderr, "moetool merge: %s\n", mt_last_error()), MT_EXIT_USAGE)
                                : cli_fail("merge", rc);
    }
    double rss = mt_peak_rss_bytes() / 1048576.0;
    cli_note_portability("merge", out);
    if (json) {
        printf("{\"output\": ");
        json_str(stdout, out);
        printf(", \"method\": \"%s\", \"router\": \"%s\", \"router_steps\": %d, \"calib_tokens\": %llu,"
               " \"experts_in\": %d, \"layer_experts\": [",
               mt_merge_method_name(o.method), mt_merge_router_name(o.router), o.router_steps,
               (unsigned long long)r.calib_tokens, r.experts_in);
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
        printf(", \"expert_params_in\": %llu, \"expert_params_out\": %llu, \"router_fit_rmse\": %.6f,"
               " \"seconds\": %.3f, \"peak_rss_mib\": %.1f}\n",
               (unsigned long long)r.expert_params_in, (unsigned long long)r.expert_params_out, r.router_fit_rmse,
               r.seconds, rss);
    } else {
        printf("merged %s -> %s: %s, router %s, %llu calibration tokens\n", model, out, mt_merge_method_name(o.method),
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
