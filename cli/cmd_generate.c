/* cmd_generate.c — `moetool generate MODEL -p PROMPT`: continuation text. */
#define _GNU_SOURCE
#include "cli_impl.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

static const char *g_help =
    "usage: moetool generate [MODEL] -p PROMPT [-n N] [--temp T] [--top-p P]\n"
    "                        [--seed S] [--threads T] [--no-bos] [--allow-long-context]\n"
    "                        [--json]\n"
    "\n"
    "Continues PROMPT (BOS is prepended). Greedy by default; with --temp > 0\n"
    "samples with temperature and nucleus (top-p) filtering from a seeded RNG.\n"
    "The prompt is prefilled in one batch, then tokens are decoded one by one\n"
    "with a KV cache; timing goes to stderr.\n"
    "\n"
    "  -p, --prompt TEXT  prompt text\n"
    "  -n N               tokens to generate (default 64; 0 = prefill only, timing\n"
    "                     on stderr); prompt + N may not pass the model's context\n"
    "                     (max_position_embeddings)\n"
    "  --allow-long-context  allow prompt + N beyond max_position_embeddings\n"
    "  --temp T           temperature (default 0 = greedy)\n"
    "  --top-p P          nucleus mass (default 1.0)\n"
    "  --seed S           RNG seed (default 1)\n"
    "  --threads T        CPU threads (default: all cores)\n"
    "  --no-bos           do not prepend BOS\n"
    "  --ignore-eos       keep going after the end-of-sequence token\n"
    "  --json             print {\"prompt_ids\", \"ids\", \"text\", timing} instead of text\n"
    "  -h, --help         this text\n";

typedef struct {
    const mt_tokenizer *tok;
    int stream;
} gen_state;

static int on_token(void *user, int32_t id) {
    gen_state *g = user;
    if (!g->stream) return 0;
    char buf[256];
    size_t len = 0;
    if (mt_tok_piece_text(g->tok, id, buf, sizeof buf, &len) == MT_OK && len <= sizeof buf) {
        fwrite(buf, 1, len, stdout);
        fflush(stdout);
    }
    return 0;
}

int cmd_generate(int argc, char **argv) {
    static const struct option opts[] = {{"prompt", required_argument, 0, 'p'},
                                         {"temp", required_argument, 0, 't'},
                                         {"top-p", required_argument, 0, 'P'},
                                         {"seed", required_argument, 0, 's'},
                                         {"threads", required_argument, 0, 'T'},
                                         {"no-bos", no_argument, 0, 'B'},
                                         {"ignore-eos", no_argument, 0, 'E'},
                                         {"allow-long-context", no_argument, 0, 'L'},
                                         {"json", no_argument, 0, 'j'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    mt_sample_opts so;
    mt_sample_opts_default(&so);
    mt_model_opts mo;
    mt_model_opts_default(&mo);
    const char *prompt = NULL;
    int json = 0, add_bos = 1, c;
    long v;
    double d;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":p:n:h", opts, NULL)) != -1) {
        switch (c) {
        case 'p': prompt = optarg; break;
        case 'n':
            if (cli_parse_int("generate", "-n", optarg, 0, 1 << 20, &v)) return MT_EXIT_USAGE;
            so.n_predict = (int)v;
            break;
        case 't':
            if (cli_parse_float("generate", "--temp", optarg, &d)) return MT_EXIT_USAGE;
            if (d < 0) return cli_usage_error("generate", "--temp must be >= 0");
            so.temp = (float)d;
            break;
        case 'P':
            if (cli_parse_float("generate", "--top-p", optarg, &d)) return MT_EXIT_USAGE;
            if (d <= 0 || d > 1) return cli_usage_error("generate", "--top-p must be in (0, 1]");
            so.top_p = (float)d;
            break;
        case 's':
            if (cli_parse_int("generate", "--seed", optarg, 0, 0x7fffffffL, &v)) return MT_EXIT_USAGE;
            so.seed = (uint64_t)v;
            break;
        case 'T':
            if (cli_parse_int("generate", "--threads", optarg, 1, MT_MAX_THREADS, &v)) return MT_EXIT_USAGE;
            mo.n_threads = (int)v;
            break;
        case 'B': add_bos = 0; break;
        case 'E': so.stop_at_eos = 0; break;
        case 'L': so.allow_long_context = 1; break;
        case 'j': json = 1; break;
        case 'h': fputs(g_help, stdout); return MT_EXIT_OK;
        default: return cli_bad_option("generate", c, argv);
        }
    }
    if (argc - optind > 1) return cli_usage_error("generate", "expects one MODEL, got %d", argc - optind);
    if (!prompt) return cli_usage_error("generate", "missing -p PROMPT");
    const char *model_path = optind < argc ? argv[optind] : cli_default_model();

    int ret = MT_EXIT_FAIL, rc;
    mt_model *m = NULL;
    int32_t *pids = NULL, *out = NULL;
    size_t n_p = 0;
    char *text = NULL;
    size_t text_len = 0;
    if ((rc = mt_model_load(&m, model_path, &mo))) goto fail;
    const mt_tokenizer *tok = mt_model_tokenizer(m);
    if (!tok) {
        rc = mt_seterr(MT_ERR_NOT_FOUND, "no tokenizer to read the prompt with: %s", mt_model_tokenizer_error(m));
        goto fail;
    }
    if ((rc = cli_encode(tok, prompt, strlen(prompt), add_bos, &pids, &n_p))) goto fail;
    if (n_p == 0) {
        rc = mt_seterr(MT_ERR_ARG, "the prompt is empty");
        goto fail;
    }
    const int max_pos = mt_model_config(m)->max_pos;
    if (max_pos > 0 && !so.allow_long_context && (int64_t)n_p + so.n_predict - 1 > max_pos) {
        ret = cli_usage_error("generate", "the prompt (%zu tokens) and -n %d pass the model's context of %d tokens "
                              "(max_position_embeddings); lower -n or --allow-long-context", n_p, so.n_predict, max_pos);
        goto done;
    }
    out = malloc((size_t)(so.n_predict > 0 ? so.n_predict : 1) * sizeof *out);
    if (!out) {
        rc = mt_seterr(MT_ERR_NOMEM, "out of memory");
        goto fail;
    }
    gen_state gs = {tok, !json};
    if (!json) {
        fputs(prompt, stdout);
        fflush(stdout);
    }
    int n_out = 0;
    mt_gen_timing tm;
    memset(&tm, 0, sizeof tm);
    if ((rc = mt_generate(m, pids, (int)n_p, &so, on_token, &gs, out, &n_out, &tm))) goto fail;
    if ((rc = mt_tok_decode(tok, out, (size_t)n_out, 0, &text, &text_len))) goto fail;
    double pp = tm.prefill_s > 0 ? tm.n_prompt / tm.prefill_s : 0.0;
    double tg = tm.decode_s > 0 && tm.n_gen > 1 ? (tm.n_gen - 1) / tm.decode_s : 0.0;
    if (json) {
        printf("{\"prompt_ids\":[");
        for (size_t i = 0; i < n_p; i++) printf("%s%d", i ? "," : "", pids[i]);
        printf("],\"ids\":[");
        for (int i = 0; i < n_out; i++) printf("%s%d", i ? "," : "", out[i]);
        printf("],\"text\":");
        json_strn(stdout, text, text_len);
        printf(",\"prefill_tokens_per_s\":%.2f,\"decode_tokens_per_s\":%.2f,\"threads\":%d}\n", pp, tg,
               mt_model_threads(m));
    } else {
        printf("\n");
        fprintf(stderr, "moetool generate: prompt %d tokens at %.1f tokens/s, generated %d at %.1f tokens/s (%d threads)\n",
                tm.n_prompt, pp, tm.n_gen, tg, mt_model_threads(m));
    }
    ret = MT_EXIT_OK;
    goto done;
fail:
    if (!json) fflush(stdout);
    ret = cli_fail("generate", rc);
done:
    free(text);
    free(out);
    free(pids);
    mt_model_free(m);
    return ret;
}
