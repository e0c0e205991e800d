/* cmd_convert.c — `moetool convert IN -o OUT`: HF safetensors <-> GGUF. */
#define _GNU_SOURCE
#include "cli_impl.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    mt_convert_opts c;
    const char *out, *dtype;
    int to; /* -1: from OUT's name, 0: hf, 1: gguf */
    int shard_mb, quiet;
} convert_args;

static void convert_init(void *p) {
    convert_args *a = p;
    memset(a, 0, sizeof *a);
    mt_convert_opts_default(&a->c);
    a->c.require_tokenizer = 1;
    a->to = -1;
    a->shard_mb = 4096; /* the library's 0 means the same 4 GiB */
}

static const char *const to_choices[] = {"hf", "gguf", NULL};

static int set_dtype(void *p, const cli_opt *o, const char *shown, const char *value, char *err, size_t errn) {
    convert_args *a = p;
    const int dt = mt_dtype_from_name(value);
    if (dt < 0 || !mt_dtype_get((mt_dtype)dt)->from_f32) /* what we can write from f32 */
        return snprintf(err, errn, "%s must be f32, f16, bf16, q8_0, q6_k, q5_k, q5_1, q5_0, q4_k, q4_1, q4_0, q3_k, q2_k, iq4_xs or iq4_nl, got '%s'", shown, value), -1;
    a->c.dtype = dt;
    a->dtype = value;
    return 0;
}

static const cli_opt convert_opts[] = {
    {"output", 'o', CLI_OUTPUT, "OUT", "output directory (hf) or file (gguf); an existing OUT is replaced only when "
     "moetool wrote it (docs/outputs.md)", NULL, CLI_AT(convert_args, out)},
    {"force", 0, CLI_BOOL, NULL, "replace an existing OUT that moetool did not write (a symbolic link: the link "
     "itself); never an input", NULL, CLI_AT(convert_args, c.force), .flags = CLI_OPT_CLI_ONLY},
    {"quiet", 0, CLI_BOOL, NULL, "no progress lines on stderr", NULL, CLI_AT(convert_args, quiet),
     .flags = CLI_OPT_CLI_ONLY},
    {"to", 0, CLI_ENUM, "hf|gguf", "output format", "gguf if OUT ends in .gguf, else hf", CLI_AT(convert_args, to),
     .choices = to_choices},
    {"dtype", 0, CLI_STRING, "TYPE", "f32, f16, bf16, q8_0, q6_k, q5_k, q5_1, q5_0, q4_k, q4_1, q4_0, q3_k, q2_k, "
     "iq4_xs or iq4_nl for "
     "the weight matrices (default: keep each tensor's type; the block types are GGUF-only, written as llama.cpp's "
     "quantizer writes them without an importance matrix)", NULL,
     CLI_AT(convert_args, dtype), .set = set_dtype},
    {"shard-size", 0, CLI_INT, "MB", "largest HF shard in MiB", "4096", CLI_AT(convert_args, shard_mb), 1, 1 << 20},
    {"moetool-only", 0, CLI_BOOL, NULL, "write a GGUF of a model with per-layer expert counts (merge "
     "--layers/--budget), which only moetool runs (llama.cpp needs one count; by default an error)", NULL,
     CLI_AT(convert_args, c.moetool_only)},
    {"no-tokenizer", 0, CLI_BOOL, NULL, "write the output even when the input's tokenizer cannot be read or carried "
     "over (by default that is an error)", NULL, CLI_AT(convert_args, c.require_tokenizer), .flags = CLI_OPT_INVERT},
};

const cli_verb cli_verb_convert = {
    .name = "convert",
    .synopsis = "usage: moetool convert [IN] -o OUT [--to hf|gguf] [--dtype TYPE] [--shard-size MB]\n"
                "                       [--no-tokenizer] [--moetool-only] [--force] [--quiet]",
    .about = "Converts a checkpoint between Hugging Face safetensors (directory, single\n"
             "or sharded) and GGUF v3 as llama.cpp reads it (arch 'llama', merged 3-D\n"
             "expert tensors, router kept F32, Q/K rows permuted). Streams tensor by\n"
             "tensor; OUT appears only when complete (written under a temporary name).\n",
    .positional = "input",
    .opts = convert_opts,
    .n_opts = sizeof convert_opts / sizeof convert_opts[0],
    .args_size = sizeof(convert_args),
    .init = convert_init,
    .run = cmd_convert,
    .recipe_step = 1,
};

int cmd_convert(int argc, char **argv) {
    convert_args A;
    convert_init(&A);
    mt_convert_opts o;
    const char *in_arg = NULL;
    int prc = cli_opts_parse_argv(&cli_verb_convert, &A, argc, argv, &in_arg);
    if (prc) return prc == 1 ? MT_EXIT_OK : prc;
    A.c.shard_bytes = (uint64_t)A.shard_mb << 20;
    o = A.c;
    const char *out = A.out;
    const int quiet = A.quiet;
    const char *in = in_arg ? in_arg : cli_default_model();
    if (!out) return cli_usage_error("convert", "missing -o OUT");
    if (cli_check_output("convert", out)) return MT_EXIT_USAGE;
    size_t L = strlen(out);
    int out_gguf = L > 5 && !strcmp(out + L - 5, ".gguf");
    if (A.to >= 0) out_gguf = A.to;
    o.to = out_gguf ? MT_FMT_GGUF : MT_FMT_HF;
    if (!out_gguf && o.dtype >= 0 && !mt_dtype_is_plain_float((mt_dtype)o.dtype))
        return cli_usage_error("convert", "--dtype %s needs --to gguf (Hugging Face safetensors have no such type)",
                               mt_dtype_get((mt_dtype)o.dtype)->name);
    if (!quiet) o.progress = cli_progress;
    double t0 = mt_now();
    int rc = mt_convert(in, out, &o);
    cli_progress_done();
    if (rc) return cli_fail("convert", rc);
    fprintf(stderr, "moetool convert: wrote %s (%s) in %.2f s, peak RSS %.1f MiB\n", out, out_gguf ? "gguf" : "hf",
            mt_now() - t0, mt_peak_rss_bytes() / 1048576.0);
    cli_note_portability("convert", out);
    return MT_EXIT_OK;
}
