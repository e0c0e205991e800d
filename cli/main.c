/* main.c — moetool's entry point: usage, verb dispatch (cli/verbs.c) and
 * the signal handler that removes unfinished outputs. */
#define _GNU_SOURCE
#include "cli_impl.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *g_usage =
    "usage: moetool <verb> [options]\n"
    "\n"
    "Shrink Mixture-of-Experts language models and measure what it costs.\n"
    "\n"
    "verbs:\n"
    "  inspect   PATH                 architecture, parameters, tensors, tokenizer\n"
    "  convert   IN -o OUT            Hugging Face safetensors <-> GGUF, retype\n"
    "  eval      MODEL --text FILE    perplexity, KL vs a reference, speed, routing\n"
    "  generate  MODEL -p PROMPT      text continuation with a KV cache\n"
    "  tokenize  MODEL -p TEXT        token ids and pieces (--decode IDS: back)\n"
    "  quantize  MODEL -o OUT         RTN / GPTQ quantization of the experts\n"
    "  merge     MODEL -o OUT --experts K   reduce experts per layer by calibrated merging\n"
    "  run       RECIPE.yaml          a YAML pipeline of steps with quality gates (docs/recipes.md)\n"
    "  distill   TEACHER -o OUT --student dense|DIR  KD: a dense student, or heal a merged MoE\n"
    "\n"
    "MODEL/PATH is a Hugging Face directory (config.json + safetensors, single or\n"
    "sharded), a .safetensors file with config.json beside it, a PyTorch\n"
    "pytorch_model.bin, or a .gguf file.\n"
    "When omitted, the bundled model is used:\n"
    "  %s\n"
    "\n"
    "`moetool <verb> --help` describes each verb.\n"
    "\n"
    "exit codes: 0 success, 1 the work failed (message on stderr), 2 bad usage,\n"
    "3 a recipe's gate failed (run).\n";

/* Interrupted work leaves no partial output: remove the registered
 * temporaries, say so in one line and exit 1. Async-signal-safe: the
 * library's cleanup calls only unlink/rmdir on precomputed paths; the rest is
 * write and _exit. */
static void say(const char *s) {
    size_t n = strlen(s);
    while (n) {
        ssize_t k = write(STDERR_FILENO, s, n);
        if (k <= 0) return;
        s += k;
        n -= (size_t)k;
    }
}

static void on_signal(int sig) {
    const int removed = mt_cleanup_outputs();
    if (cli_progress_shown()) say("\r\033[K");
    switch (sig) {
    case SIGXFSZ: say("moetool: stopped: a file reached the file size limit (ulimit -f)"); break;
    case SIGINT: say("moetool: interrupted (SIGINT)"); break;
    case SIGTERM: say("moetool: terminated (SIGTERM)"); break;
    default: say("moetool: hung up (SIGHUP)"); break;
    }
    say(removed ? "; the unfinished output was removed\n" : "\n");
    _exit(MT_EXIT_FAIL);
}

static void catch_signals(void) {
    static const int sigs[] = {SIGINT, SIGTERM, SIGHUP, SIGXFSZ};
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaddset(&sa.sa_mask, sigs[i]);
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        struct sigaction old;
        /* a signal ignored by whoever started us (nohup) stays ignored */
        if (sigaction(sigs[i], NULL, &old) == 0 && old.sa_handler == SIG_IGN) continue;
        sigaction(sigs[i], &sa, NULL);
    }
}

int main(int argc, char **argv) {
    mt_set_log(cli_log_stderr, NULL);
    catch_signals();
    cli_progress_done(); /* the first job's clock starts with the process */
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        printf(g_usage, cli_default_model());
        return argc < 2 ? MT_EXIT_USAGE : MT_EXIT_OK;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("moetool " MT_VERSION "\n");
        return MT_EXIT_OK;
    }
    const char *verb = argv[1];
    const cli_verb *v = cli_verb_find(verb);
    if (v) return v->run(argc - 1, argv + 1);
    fprintf(stderr, "moetool: unknown verb '%s'\n", verb);
    fprintf(stderr, "(see `moetool --help`)\n");
    return MT_EXIT_USAGE;
}
