/* cmd_convert.c — `moetool convert IN -o OUT`: HF safetensors <-> GGUF. */
#define _GNU_SOURCE
#include "cli_impl.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

static const char *g_help =
    "usage: moetool convert [IN] -o OUT [--to hf|gguf] [--dtype TYPE] [--shard-size MB]\n"
    "                       [--no-tokenizer] [--moetool-only] [--force] [--quiet]\n"
    "\n"
    "Converts a checkpoint between Hugging Face safetensors (directory, single\n"
    "or sharded) and GGUF v3 as llama.cpp reads it (arch 'llama', merged 3-D\n"
    "expert tensors, router kept F32, Q/K rows permuted). Streams tensor by\n"
    "tensor; OUT appears only when complete (written under a temporary name).\n"
    "\n"
    "  -o, --output OUT   output directory (hf) or file (gguf); an existing OUT is\n"
    "                     replaced only when moetool wrote it (docs/outputs.md)\n"
    "  --force            replace an existing OUT that moetool did not write (a\n"
    "                     symbolic link: the link itself); never an input\n"
    "  --quiet            no progress lines on stderr\n"
    "  --to hf|gguf       output format (default: gguf if OUT ends in .gguf, else hf)\n"
    "  --dtype TYPE       f32, f16, bf16, q8_0 or q4_0 for the weight matrices\n"
    "                     (default: keep each tensor's type; q8_0 and q4_0 are\n"
    "                     GGUF-only, with llama.cpp's reference rounding)\n"
    "  --shard-size MB    largest HF shard in MiB (default 4096)\n"
    "  --moetool-only     write a GGUF of a model with per-layer expert counts\n"
    "                     (merge --layers/--budget), which only moetool runs\n"
    "                     (llama.cpp needs one count; by default an error)\n"
    "  --no-tokenizer     write the output even when the input's tokenizer cannot\n"
    "                     be read or carried over (by default that is an error)\n"
    "  -h, --help         this text\n";

int cmd_convert(int argc, char **argv) {
    static const struct option opts[] = {{"output", required_argument, 0, 'o'},
                                         {"to", required_argument, 0, 'T'},
                                         {"dtype", required_argument, 0, 'd'},
                                         {"shard-size", required_argument, 0, 's'},
                                         {"no-tokenizer", no_argument, 0, 'N'},
                                         {"moetool-only", no_argument, 0, 'M'},
                                         {"force", no_argument, 0, 'f'},
                                         {"quiet", no_argument, 0, 'Q'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    mt_convert_opts o;
    mt_convert_opts_default(&o);
    o.require_tokenizer = 1;
    const char *out = NULL, *to = NULL;
    int c, quiet = 0;
    long v;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 'T': to = optarg; break;
        case 'd':
            o.dtype = mt_dtype_from_name(optarg);
            if (o.dtype < 0 || !mt_dtype_get((mt_dtype)o.dtype)->from_f32) /* what we can write from f32 */
                return cli_usage_error("convert", "--dtype must be f32, f16, bf16, q8_0 or q4_0, got '%s'", optarg);
            break;
        case 's':
            if (cli_parse_int("convert", "--shard-size", optarg, 1, 1 << 20, &v)) return MT_EXIT_USAGE;
            o.shard_bytes = (uint64_t)v << 20;
            break;
        case 'N': o.require_tokenizer = 0; break;
        case 'M': o.moetool_only = 1; break;
        case 'f': o.force = 1; break;
        case 'Q': quiet = 1; break;
        case 'h': fputs(g_help, stdout); return MT_EXIT_OK;
        default: return cli_bad_option("convert", c, argv);
        }
    }
    if (argc - optind > 1) return cli_usage_error("convert", "expects one input, got %d", argc - optind);
    const char *in = optind < argc ? argv[optind] : cli_default_model();
    if (!out) return cli_usage_error("convert", "missing -o OUT");
    if (cli_check_output("convert", out)) return MT_EXIT_USAGE;
    size_t L = strlen(out);
    int out_gguf = L > 5 && !strcmp(out + L - 5, ".gguf");
    if (to) {
        if (!strcmp(to, "gguf"))
            out_gguf = 1;
        else if (!strcmp(to, "hf"))
            out_gguf = 0;
        else
            return cli_usage_error("convert", "--to must be hf or gguf, got '%s'", to);
    }
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
