/* cmd_distill.c — `moetool distill TEACHER -o OUT --student dense`: a dense
 * Mistral-layout student trained from the MoE teacher by KD, written as a
 * Hugging Face MistralForCausalLM directory. Flags map one to one onto
 * mt_distill_opts. */
#define _GNU_SOURCE
#include "cli_impl.h"
#include "moetool/mt_distill.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *g_help =
    "usage: moetool distill [TEACHER] -o OUT --student dense [--width W]\n"
    "                       [--init concat|average|random] [--init-tokens N] [--data FILE] [--tokens N]\n"
    "                       [--kd-weight A] [--temperature T] [--lr LR] [--warmup N]\n"
    "                       [--batch B] [--seq S] [--seed N] [--checkpoint-every N]\n"
    "                       [--resume] [--threads T] [--force] [--json] [--quiet]\n"
    "\n"
    "Trains a dense student from the MoE TEACHER by knowledge distillation and\n"
    "writes it as a Hugging Face MistralForCausalLM directory (f32) into OUT.\n"
    "The student keeps the teacher's attention, embeddings and norms; each\n"
    "layer gets one SwiGLU FFN of width W built from the experts. Loss per\n"
    "token: (1 - A) * cross-entropy + A * T^2 * KL(teacher_T || student_T), the\n"
    "teacher's logits computed on the fly. AdamW (betas 0.9, 0.95, weight decay\n"
    "0.01 on matrices), gradient clipping at norm 1, linear warmup then cosine\n"
    "to 10 % of LR (docs/distill.md).\n"
    "\n"
    "  -o, --output OUT     output directory (appears only when complete); an\n"
    "                       existing OUT is replaced only when moetool wrote it\n"
    "  --force              replace an existing OUT that moetool did not write\n"
    "  --student dense      the student kind (dense is the only one)\n"
    "  --width W            FFN width of the student (default top_k x expert width)\n"
    "  --init I             concat (default): the most-routed experts side by side,\n"
    "                       down_proj scaled by their mean gate; average: experts\n"
    "                       averaged by routing frequency in W/expert-width groups;\n"
    "                       random: N(0, 0.02), the baseline\n"
    "  --init-tokens N      tokens of the data the teacher routes to rank experts for\n"
    "                       concat/average (default 32768)\n"
    "  --data FILE          training text (default: TEACHER/data/train.txt)\n"
    "  --tokens N           training tokens (default 524288); steps = N / (B x S)\n"
    "  --kd-weight A        weight of the KD term in [0, 1] (default 0.5)\n"
    "  --temperature T      KD temperature (default 1)\n"
    "  --lr LR              peak learning rate (default 1e-3)\n"
    "  --warmup N           warmup steps (default 5 % of the steps)\n"
    "  --batch B            sequences per step (default 16)\n"
    "  --seq S              tokens per sequence (default 256)\n"
    "  --seed N             data order and random init (default 1)\n"
    "  --checkpoint-every N write OUT.ckpt every N steps (atomically; removed when\n"
    "                       OUT is complete)\n"
    "  --resume             continue from OUT.ckpt (same options and --threads give\n"
    "                       the uninterrupted run's losses exactly)\n"
    "  --threads T          CPU threads (default: all cores)\n"
    "  --json               one JSON object on stdout, with every step's losses\n"
    "  --quiet              no progress lines on stderr\n"
    "  -h, --help           this text\n";

typedef struct {
    double *v; /* [steps][4]: loss, ce, kd, lr */
    int *step;
    int n, cap;
} step_log;

static void on_step(void *user, const mt_distill_step *s) {
    step_log *l = user;
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 256;
        double *v = realloc(l->v, (size_t)cap * 4 * sizeof *v);
        int *st = realloc(l->step, (size_t)cap * sizeof *st);
        if (v) l->v = v;
        if (st) l->step = st;
        if (!v || !st) return;
        l->cap = cap;
    }
    l->step[l->n] = s->step;
    double *v = l->v + (size_t)l->n * 4;
    v[0] = s->loss, v[1] = s->ce, v[2] = s->kd, v[3] = s->lr;
    l->n++;
}

int cmd_distill(int argc, char **argv) {
    static const struct option opts[] = {{"output", required_argument, 0, 'o'},
                                         {"student", required_argument, 0, 'S'},
                                         {"width", required_argument, 0, 'w'},
                                         {"init", required_argument, 0, 'i'},
                                         {"init-tokens", required_argument, 0, 'I'},
                                         {"data", required_argument, 0, 'd'},
                                         {"tokens", required_argument, 0, 'n'},
                                         {"kd-weight", required_argument, 0, 'a'},
                                         {"temperature", required_argument, 0, 'T'},
                                         {"lr", required_argument, 0, 'l'},
                                         {"warmup", required_argument, 0, 'W'},
                                         {"batch", required_argument, 0, 'b'},
                                         {"seq", required_argument, 0, 's'},
                                         {"seed", required_argument, 0, 'e'},
                                         {"checkpoint-every", required_argument, 0, 'c'},
                                         {"resume", no_argument, 0, 'r'},
                                         {"threads", required_argument, 0, 't'},
                                         {"json", no_argument, 0, 'j'},
                                         {"force", no_argument, 0, 'f'},
                                         {"quiet", no_argument, 0, 'Q'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    mt_distill_opts o;
    mt_distill_opts_default(&o);
    const char *out = NULL, *student = NULL;
    int json = 0, quiet = 0, c;
    long v;
    double d;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 'S': student = optarg; break;
        case 'w':
            if (cli_parse_int("distill", "--width", optarg, 1, 1 << 20, &v)) return MT_EXIT_USAGE;
            o.width = (int)v;
            break;
        case 'i':
            if ((o.init = mt_distill_init_from_name(optarg)) < 0)
                return cli_usage_error("distill", "--init must be concat, average or random, got '%s'", optarg);
            break;
        case 'I':
            if (cli_parse_int("distill", "--init-tokens", optarg, 1, 1L << 30, &v)) return MT_EXIT_USAGE;
            o.init_tokens = (int)v;
            break;
        case 'd': o.data_path = optarg; break;
        case 'n':
            if (cli_parse_int("distill", "--tokens", optarg, 1, 1L << 40, &v)) return MT_EXIT_USAGE;
            o.tokens = (uint64_t)v;
            break;
        case 'a':
            if (cli_parse_float("distill", "--kd-weight", optarg, &d)) return MT_EXIT_USAGE;
            if (!(d >= 0 && d <= 1)) return cli_usage_error("distill", "--kd-weight must be in [0, 1], got '%s'", optarg);
            o.kd_weight = (float)d;
            break;
        case 'T':
            if (cli_parse_float("distill", "--temperature", optarg, &d)) return MT_EXIT_USAGE;
            if (!(d > 0 && d <= 100)) return cli_usage_error("distill", "--temperature must be in (0, 100], got '%s'", optarg);
            o.temperature = (float)d;
            break;
        case 'l':
            if (cli_parse_float("distill", "--lr", optarg, &d)) return MT_EXIT_USAGE;
            if (!(d > 0 && d < 10)) return cli_usage_error("distill", "--lr must be in (0, 10), got '%s'", optarg);
            o.lr = (float)d;
            break;
        case 'W':
            if (cli_parse_int("distill", "--warmup", optarg, 0, 1 << 30, &v)) return MT_EXIT_USAGE;
            o.warmup = (int)v;
            break;
        case 'b':
            if (cli_parse_int("distill", "--batch", optarg, 1, 4096, &v)) return MT_EXIT_USAGE;
            o.batch = (int)v;
            break;
        case 's':
            if (cli_parse_int("distill", "--seq", optarg, 2, 1 << 16, &v)) return MT_EXIT_USAGE;
            o.seq = (int)v;
            break;
        case 'e':
            if (cli_parse_int("distill", "--seed", optarg, 0, 0x7fffffffL, &v)) return MT_EXIT_USAGE;
            o.seed = (uint64_t)v;
            break;
        case 'c':
            if (cli_parse_int("distill", "--checkpoint-every", optarg, 1, 1 << 30, &v)) return MT_EXIT_USAGE;
            o.ckpt_every = (int)v;
            break;
        case 'r': o.resume = 1; break;
        case 't':
            if (cli_parse_int("distill", "--threads", optarg, 1, MT_MAX_THREADS, &v)) return MT_EXIT_USAGE;
            o.n_threads = (int)v;
            break;
        case 'j': json = 1; break;
        case 'f': o.force = 1; break;
        case 'Q': quiet = 1; break;
        case 'h': fputs(g_help, stdout); return MT_EXIT_OK;
        default: return cli_bad_option("distill", c, argv);
        }
    }
    if (argc - optind > 1) return cli_usage_error("distill", "expects one TEACHER, got %d", argc - optind);
    const char *teacher = optind < argc ? argv[optind] : cli_default_model();
    if (!out) return cli_usage_error("distill", "missing -o OUT");
    if (cli_check_output("distill", out)) return MT_EXIT_USAGE;
    if (!student) return cli_usage_error("distill", "missing --student dense");
    if (strcmp(student, "dense"))
        return cli_usage_error("distill", "--student must be 'dense' (healing a merged MoE is not supported yet), got '%s'",
                               student);
    char *data_default = NULL;
    if (!o.data_path) {
        if (!(data_default = cli_beside_model(teacher, "data/train.txt"))) return cli_fail("distill", MT_ERR_NOMEM);
        if (access(data_default, R_OK) != 0) {
            int r = cli_usage_error("distill", "no --data FILE given and %s (data/train.txt beside the teacher) does "
                                    "not exist", data_default);
            free(data_default);
            return r;
        }
        o.data_path = data_default;
    }
    step_log log = {0};
    o.on_step = on_step, o.step_user = &log;
    if (!quiet) o.progress = cli_progress;
    mt_distill_report r;
    int rc = mt_distill(teacher, out, &o, &r);
    cli_progress_done();
    if (rc) {
        free(data_default);
        free(log.v), free(log.step);
        return rc == MT_ERR_ARG ? (fprintf(stderr, "moetool distill: %s\n", mt_last_error()), MT_EXIT_USAGE)
                                : cli_fail("distill", rc);
    }
    const double rss = mt_peak_rss_bytes() / 1048576.0;
    if (json) {
        printf("{\"output\": ");
        json_str(stdout, out);
        printf(", \"student\": \"dense\", \"width\": %d, \"init\": \"%s\", \"params\": %llu, \"steps\": %d,"
               " \"start_step\": %d, \"batch\": %d, \"seq\": %d, \"tokens\": %llu, \"kd_weight\": %g,"
               " \"temperature\": %g, \"lr\": %g, \"seconds\": %.3f, \"tokens_per_s\": %.1f, \"peak_rss_mib\": %.1f,"
               " \"log\": [",
               r.width, mt_distill_init_name(r.init), (unsigned long long)r.student_params, r.steps, r.start_step,
               o.batch, o.seq, (unsigned long long)r.tokens, o.kd_weight, o.temperature, o.lr, r.seconds,
               r.tokens_per_s, rss);
        for (int i = 0; i < log.n; i++) {
            const double *x = log.v + (size_t)i * 4;
            printf("%s{\"step\": %d, \"loss\": %.9g, \"ce\": %.9g, \"kd\": %.9g, \"lr\": %.6g}", i ? ", " : "",
                   log.step[i], x[0], x[1], x[2], x[3]);
        }
        printf("]}\n");
    } else {
        printf("distilled %s -> %s: dense student, FFN width %d (%s init), %llu parameters\n", teacher, out, r.width,
               mt_distill_init_name(r.init), (unsigned long long)r.student_params);
        printf("steps %d..%d of %d x %d tokens: loss %.4f -> %.4f (KD %.4f, CE %.4f); %.1f s, %.0f tokens/s, peak RSS "
               "%.1f MiB\n", r.start_step + 1, r.steps, o.batch, o.seq, r.first_loss, r.last_loss, r.last_kd, r.last_ce,
               r.seconds, r.tokens_per_s, rss);
    }
    free(data_default);
    free(log.v), free(log.step);
    return MT_EXIT_OK;
}

/* Listed for dispatch; its flags are still parsed by getopt above (its
 * --help is g_help), so it has no table rows yet and is no recipe step. */
const cli_verb cli_verb_distill = {
    .name = "distill",
    .synopsis = "usage: moetool distill TEACHER -o OUT --student dense [options] (see --help)",
    .about = "Trains a dense student from a sparse teacher by knowledge distillation.\n",
    .positional = "TEACHER",
    .opts = NULL,
    .n_opts = 0,
    .args_size = 1,
    .init = NULL,
    .run = cmd_distill,
    .recipe_step = 0,
};
