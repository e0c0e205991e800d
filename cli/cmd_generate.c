/* cmd_generate.c — `moetool generate MODEL -p PROMPT`: continuation text. */
#define _GNU_SOURCE
#include "cli_impl.h"
#include "moetool/mt_seq2seq.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    mt_sample_opts s;
    mt_model_opts m;
    const char *prompt, *ids, *src_lang, *tgt_lang;
    int json, no_bos;
} generate_args;

static void generate_init(void *p) {
    generate_args *a = p;
    memset(a, 0, sizeof *a);
    mt_sample_opts_default(&a->s);
    mt_model_opts_default(&a->m);
}

static const cli_opt generate_opts[] = {
    {"prompt", 'p', CLI_STRING, "TEXT", "prompt text (encoder-decoder models: the encoder's input, EOS appended; the "
     "output is decoded to text)", NULL, CLI_AT(generate_args, prompt)},
    {"ids", 0, CLI_STRING, "LIST", "encoder-decoder models: the input as token ids (\"3,4,1\"); greedy decoding "
     "from the decoder start token (docs/seq2seq.md)", NULL, CLI_AT(generate_args, ids)},
    {"src-lang", 0, CLI_STRING, "CODE", "encoder-decoder models with language codes (NLLB): the language of -p TEXT "
     "(e.g. eng_Latn), put first in the input", NULL, CLI_AT(generate_args, src_lang)},
    {"tgt-lang", 0, CLI_STRING, "CODE", "NLLB: the language to translate into (e.g. fra_Latn), forced as the first "
     "generated token", NULL, CLI_AT(generate_args, tgt_lang)},
    {"n-predict", 'n', CLI_INT, "N", "tokens to generate (default 64; 0 = prefill only, timing on stderr); prompt + N "
     "may not pass the model's context (max_position_embeddings)", NULL, CLI_AT(generate_args, s.n_predict), 0, 1 << 20},
    {"allow-long-context", 0, CLI_BOOL, NULL, "allow prompt + N beyond max_position_embeddings", NULL,
     CLI_AT(generate_args, s.allow_long_context)},
    {"temp", 0, CLI_FLOAT, "T", "temperature; 0 = greedy", "0", CLI_AT(generate_args, s.temp), .flo = 0,
     .flags = CLI_OPT_NO_HI},
    {"top-p", 0, CLI_FLOAT, "P", "nucleus mass", "1.0", CLI_AT(generate_args, s.top_p), .flo = 0, .fhi = 1,
     .flags = CLI_OPT_LO_OPEN},
    {"seed", 0, CLI_INT, "S", "RNG seed", "0", CLI_AT(generate_args, s.seed), 0, 0x7fffffffL},
    {"threads", 0, CLI_INT, "T", "CPU threads", "all cores", CLI_AT(generate_args, m.n_threads), 1, MT_MAX_THREADS},
    {"device", 0, CLI_ENUM, "D", "cpu or cuda (a build with CUDA and a device; else one line says which is missing)",
     "cpu", CLI_AT(generate_args, m.device), .choices = cli_device_choices, .values = cli_device_values},
    {"no-bos", 0, CLI_BOOL, NULL, "do not prepend BOS", NULL, CLI_AT(generate_args, no_bos)},
    {"ignore-eos", 0, CLI_BOOL, NULL, "keep going after the end-of-sequence token", NULL,
     CLI_AT(generate_args, s.stop_at_eos), .flags = CLI_OPT_INVERT},
    {"json", 0, CLI_BOOL, NULL, "print {\"prompt_ids\", \"ids\", \"text\", timing} instead of text", NULL,
     CLI_AT(generate_args, json), .flags = CLI_OPT_CLI_ONLY},
};

const cli_verb cli_verb_generate = {
    .name = "generate",
    .synopsis = "usage: moetool generate [MODEL] -p PROMPT [-n N] [--temp T] [--top-p P]\n"
                "                        [--seed S] [--threads T] [--device cpu|cuda] [--no-bos]\n"
                "                        [--allow-long-context] [--json]\n"
                "       moetool generate ENCODER_DECODER_MODEL (-p TEXT | --ids LIST) [--src-lang C --tgt-lang C] [-n N] [--ignore-eos]\n"
                "                        [--threads T] [--json]",
    .about = "Continues PROMPT (BOS is prepended). Greedy by default; with --temp > 0\n"
             "samples with temperature and nucleus (top-p) filtering from a seeded RNG.\n"
             "The prompt is prefilled in one batch, then tokens are decoded one by one\n"
             "with a KV cache; timing goes to stderr.\n",
    .positional = "MODEL",
    .opts = generate_opts,
    .n_opts = sizeof generate_opts / sizeof generate_opts[0],
    .args_size = sizeof(generate_args),
    .init = generate_init,
    .run = cmd_generate,
    .recipe_step = 0,
};

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
    generate_args A;
    generate_init(&A);
    const char *model_arg = NULL;
    int prc = cli_opts_parse_argv(&cli_verb_generate, &A, argc, argv, &model_arg);
    if (prc) return prc == 1 ? MT_EXIT_OK : prc;
    mt_sample_opts so = A.s;
    mt_model_opts mo = A.m;
    const char *prompt = A.prompt;
    const int json = A.json, add_bos = !A.no_bos;
    const char *model_path = model_arg ? model_arg : cli_default_model();
    if (mt_s2s_detect(model_path)) {
        if (!A.ids == !prompt)
            return cli_usage_error("generate", "%s is an encoder-decoder model: give its input with -p TEXT or --ids", model_path);
        if (so.temp > 0 || so.top_p < 1 || A.no_bos)
            return cli_usage_error("generate", "encoder-decoder models take -p or --ids, -n, --ignore-eos, --threads and "
                                   "--json only (greedy decoding, no BOS)");
        if (mo.device != MT_DEVICE_CPU)
            return cli_usage_error("generate", "%s: encoder-decoder models run on the CPU only (--device cpu)",
                                   model_path);
        return cli_s2s_generate(model_path, A.ids, prompt, A.src_lang, A.tgt_lang, so.n_predict, so.stop_at_eos,
                                mo.n_threads, json);
    }
    if (A.ids) return cli_usage_error("generate", "--ids is for encoder-decoder models; %s is not one", model_path);
    if (A.src_lang || A.tgt_lang)
        return cli_usage_error("generate", "--src-lang / --tgt-lang are for encoder-decoder models; %s is not one",
                               model_path);
    if (!prompt) return cli_usage_error("generate", "missing -p PROMPT");

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
