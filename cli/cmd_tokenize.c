/* cmd_tokenize.c — `moetool tokenize MODEL -p TEXT`: the token ids and
 * pieces the model's tokenizer gives a text, and `--decode` for the way
 * back. The same tokenizer eval, generate and calibration use. */
#define _GNU_SOURCE
#include "cli_impl.h"
#include "moetool/mt_seq2seq.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *prompt, *file, *decode, *lang;
    int json, no_bos;
} tokenize_args;

static void tokenize_init(void *p) { memset(p, 0, sizeof(tokenize_args)); }

static const cli_opt tokenize_opts[] = {
    {"prompt", 'p', CLI_STRING, "TEXT", "the text to encode", NULL, CLI_AT(tokenize_args, prompt)},
    {"file", 0, CLI_PATH, "FILE", "encode the text of FILE (a regular file)", NULL, CLI_AT(tokenize_args, file)},
    {"decode", 0, CLI_STRING, "IDS", "decode ids, separated by commas or spaces", NULL, CLI_AT(tokenize_args, decode)},
    {"src-lang", 0, CLI_STRING, "CODE", "encoder-decoder models with language codes (NLLB): the text's language, "
     "put first (e.g. eng_Latn)", NULL, CLI_AT(tokenize_args, lang)},
    {"no-bos", 0, CLI_BOOL, NULL, "do not prepend BOS", NULL, CLI_AT(tokenize_args, no_bos)},
    {"json", 0, CLI_BOOL, NULL, "print {\"n\", \"ids\", \"pieces\"} (pieces as UTF-8, invalid bytes as U+FFFD; ids "
     "are exact) or, with --decode, {\"ids\", \"text\"}", NULL, CLI_AT(tokenize_args, json)},
};

const cli_verb cli_verb_tokenize = {
    .name = "tokenize",
    .synopsis = "usage: moetool tokenize [MODEL] (-p TEXT | --file FILE) [--no-bos] [--src-lang CODE] [--json]\n"
                "       moetool tokenize [MODEL] --decode IDS [--json]",
    .about = "Shows how the model's tokenizer (tokenizer.model, tokenizer.json, or the\n"
             "GGUF's own) encodes a text: one line per token with its id and its piece\n"
             "as the vocabulary stores it (U+2581 for a space, <0xNN> for a byte), BOS\n"
             "first as eval and generate prepend it. --decode turns ids back into text.\n"
             "Encoder-decoder models (Switch Transformers: spiece.model or a unigram\n"
             "tokenizer.json) get no BOS but EOS last, as their eval and generate read text;\n"
             "NLLB-MoE (sentencepiece.bpe.model) gets [--src-lang CODE] + text + </s>.\n",
    .positional = "MODEL",
    .opts = tokenize_opts,
    .n_opts = sizeof tokenize_opts / sizeof tokenize_opts[0],
    .args_size = sizeof(tokenize_args),
    .init = tokenize_init,
    .run = cmd_tokenize,
    .recipe_step = 0,
};

/* "1, 415,1233" -> ids (malloc'd). Each id must be in [0, vocab). */
static int parse_ids(const char *s, int vocab, int32_t **out, size_t *n) {
    size_t cap = 16, k = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids) return cli_usage_error("tokenize", "out of memory");
    const char *p = s;
    for (;;) {
        while (*p == ' ' || *p == ',' || *p == '\t' || *p == '\n') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v >= vocab) {
            free(ids);
            return cli_usage_error("tokenize", "--decode: '%.*s' is not a token id (0..%d)", (int)strcspn(p, " ,\t\n"),
                                   p, vocab - 1);
        }
        if (k == cap) {
            int32_t *g = realloc(ids, (cap *= 2) * sizeof *ids);
            if (!g) {
                free(ids);
                return cli_usage_error("tokenize", "out of memory");
            }
            ids = g;
        }
        ids[k++] = (int32_t)v;
        p = end;
    }
    if (!k) {
        free(ids);
        return cli_usage_error("tokenize", "--decode: no ids given");
    }
    *out = ids;
    *n = k;
    return 0;
}

int cmd_tokenize(int argc, char **argv) {
    tokenize_args A;
    tokenize_init(&A);
    const char *model_arg = NULL;
    int prc = cli_opts_parse_argv(&cli_verb_tokenize, &A, argc, argv, &model_arg);
    if (prc) return prc == 1 ? MT_EXIT_OK : prc;
    const char *prompt = A.prompt, *file = A.file, *decode = A.decode;
    const int json = A.json, add_bos = !A.no_bos;
    if (!!prompt + !!file + !!decode != 1)
        return cli_usage_error("tokenize", "give exactly one of -p TEXT, --file FILE or --decode IDS");
    const char *model_path = model_arg ? model_arg : cli_default_model();

    int ret = MT_EXIT_FAIL, rc;
    mt_model *m = NULL;
    mt_ckpt *ck = NULL;          /* encoder-decoder models: read raw */
    mt_tokenizer *s2s_tok = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    char *text = NULL;
    const mt_tokenizer *tok;
    const int s2s = mt_s2s_detect(model_path);
    if (s2s) {
        if (A.no_bos) return cli_usage_error("tokenize", "--no-bos: encoder-decoder models have no BOS");
        if ((rc = mt_ckpt_open_raw(&ck, model_path)) || (rc = mt_tok_load_for_ckpt(&s2s_tok, ck))) goto fail;
        tok = s2s_tok;
    } else {
        mt_model_opts mo;
        mt_model_opts_default(&mo);
        mo.n_threads = 1;
        if ((rc = mt_model_load(&m, model_path, &mo))) goto fail;
        tok = mt_model_tokenizer(m);
        if (!tok) {
            rc = mt_seterr(MT_ERR_NOT_FOUND, "no tokenizer: %s", mt_model_tokenizer_error(m));
            goto fail;
        }
    }
    if (decode) {
        if ((ret = parse_ids(decode, (int)mt_tok_vocab_size(tok), &ids, &n))) goto done;
        ret = MT_EXIT_FAIL;
        size_t len = 0;
        if ((rc = mt_tok_decode(tok, ids, n, 1, &text, &len))) goto fail;
        if (json) {
            printf("{\"ids\":[");
            for (size_t i = 0; i < n; i++) printf("%s%d", i ? "," : "", ids[i]);
            printf("],\"text\":");
            json_strn(stdout, text, len);
            printf("}\n");
        } else {
            fwrite(text, 1, len, stdout);
            putchar('\n');
        }
        ret = MT_EXIT_OK;
        goto done;
    }
    if (A.lang && (!s2s || !mt_tok_lang_codes(tok))) {
        rc = mt_seterr(MT_ERR_ARG, "--src-lang: %s's tokenizer has no language codes", model_path);
        goto fail;
    }
    if (s2s && file && mt_tok_lang_codes(tok)) {
        rc = mt_seterr(MT_ERR_ARG, "--file: give the text of an NLLB model with -p and --src-lang");
        goto fail;
    }
    if (s2s && prompt) {
        int k = 0;
        if ((rc = mt_s2s_encode_text_lang(tok, prompt, strlen(prompt), A.lang, &ids, &k))) goto fail;
        n = (size_t)k;
    } else if (file) {
        size_t n_text = 0;
        int32_t *body = NULL;
        if ((rc = mt_tok_encode_file(tok, file, 0, &body, &n_text, NULL))) goto fail;
        const int bos = add_bos && !s2s ? mt_tok_bos(tok) : -1;
        if (add_bos && !s2s && bos < 0) {
            free(body);
            rc = mt_seterr(MT_ERR_FORMAT, "the tokenizer has no BOS token; --no-bos to encode without");
            goto fail;
        }
        ids = malloc((n_text + 2) * sizeof *ids);
        if (!ids) {
            free(body);
            rc = mt_seterr(MT_ERR_NOMEM, "%s: out of memory", file);
            goto fail;
        }
        if (bos >= 0) ids[n++] = bos;
        if (n_text) memcpy(ids + n, body, n_text * sizeof *ids);
        n += n_text;
        if (s2s && mt_tok_eos(tok) >= 0) ids[n++] = mt_tok_eos(tok);
        free(body);
    } else if ((rc = cli_encode(tok, prompt, strlen(prompt), add_bos, &ids, &n))) {
        goto fail;
    }
    if (json) {
        printf("{\"n\":%zu,\"ids\":[", n);
        for (size_t i = 0; i < n; i++) printf("%s%d", i ? "," : "", ids[i]);
        printf("],\"pieces\":[");
    }
    for (size_t i = 0; i < n; i++) {
        size_t len = 0;
        const char *piece = mt_tok_piece(tok, ids[i], &len);
        if (!piece) len = 0;
        if (json) {
            if (i) putchar(',');
            json_strn(stdout, piece ? piece : "", len);
        } else {
            char buf[256];
            if (len > sizeof buf - 1) len = sizeof buf - 1;
            if (len) memcpy(buf, piece, len);
            buf[len] = 0;
            printf("%8d  ", ids[i]);
            cli_term_str(stdout, buf, 0);
            putchar('\n');
        }
    }
    if (json) printf("]}\n");
    else fprintf(stderr, "%zu tokens\n", n);
    ret = MT_EXIT_OK;
    goto done;
fail:
    ret = cli_fail("tokenize", rc);
done:
    free(text);
    free(ids);
    mt_model_free(m);
    mt_tok_free(s2s_tok);
    mt_ckpt_free(ck);
    return ret;
}
