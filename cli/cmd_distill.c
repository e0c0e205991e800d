/* cmd_distill.c — `moetool distill TEACHER -o OUT --student dense|MERGED`:
 * a dense Mistral-layout student trained from the MoE teacher by KD, or a
 * merged MoE (a `moetool merge` output) healed against it; written as a
 * Hugging Face MistralForCausalLM / MixtralForCausalLM directory. Flags map
 * one to one onto mt_distill_opts through the option table below. */
#define _GNU_SOURCE
#include "cli_impl.h"
#include "moetool/mt_distill.h"

#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

typedef struct {
    mt_distill_opts o;
    const char *out, *student;
    int json, quiet;
} distill_args;

static void distill_init(void *p) {
    distill_args *a = p;
    memset(a, 0, sizeof *a);
    mt_distill_opts_default(&a->o);
}

/* In mt_distill_init order (tests/test_options.c checks it). */
const char *const cli_distill_inits[] = {"concat", "average", "random", NULL};

static const cli_opt distill_opts[] = {
    {"output", 'o', CLI_OUTPUT, "OUT", "output directory (appears only when complete); an existing OUT is replaced "
     "only when moetool wrote it", NULL, CLI_AT(distill_args, out)},
    {"force", 0, CLI_BOOL, NULL, "replace an existing OUT (or OUT.ckpt) that moetool did not write", NULL,
     CLI_AT(distill_args, o.force), .flags = CLI_OPT_CLI_ONLY},
    {"student", 0, CLI_STRING, "S", "dense: a dense student built from the experts; or the directory of a merged MoE "
     "(a `moetool merge` output, fewer experts per layer) to heal, router included", NULL,
     CLI_AT(distill_args, student)},
    {"width", 0, CLI_INT, "W", "FFN width of a dense student (default top_k x expert width)", NULL,
     CLI_AT(distill_args, o.width), 1, 1 << 20},
    {"init", 0, CLI_ENUM, "I", "dense student's FFN: concat (the most-routed experts side by side, down_proj scaled "
     "by their mean gate), average (experts averaged by routing frequency in W/expert-width groups) or random "
     "(N(0, 0.02), the baseline)", "concat", CLI_AT(distill_args, o.init), .choices = cli_distill_inits},
    {"init-tokens", 0, CLI_INT, "N", "tokens of the data the teacher routes to rank experts for concat/average",
     "32768", CLI_AT(distill_args, o.init_tokens), 1, 1L << 30},
    {"data", 0, CLI_PATH, "FILE", "training text (default: TEACHER/data/train.txt)", NULL,
     CLI_AT(distill_args, o.data_path)},
    {"tokens", 0, CLI_INT, "N", "training tokens; steps = N / (B x S)", "524288", CLI_AT(distill_args, o.tokens), 1,
     1L << 40},
    {"kd-weight", 0, CLI_FLOAT, "A", "weight of the KD term in [0, 1]: loss = (1 - A) CE + A T^2 KL", "0.5",
     CLI_AT(distill_args, o.kd_weight), .flo = 0, .fhi = 1},
    {"temperature", 0, CLI_FLOAT, "T", "KD temperature", "1", CLI_AT(distill_args, o.temperature), .flo = 0,
     .fhi = 100, .flags = CLI_OPT_LO_OPEN},
    {"lr", 0, CLI_FLOAT, "LR", "peak learning rate", "1e-3", CLI_AT(distill_args, o.lr), .flo = 0, .fhi = 10,
     .flags = CLI_OPT_LO_OPEN},
    {"warmup", 0, CLI_INT, "N", "warmup steps (default 5 % of the steps)", NULL, CLI_AT(distill_args, o.warmup), 0,
     1 << 30},
    {"batch", 0, CLI_INT, "B", "sequences per step", "16", CLI_AT(distill_args, o.batch), 1, 4096},
    {"seq", 0, CLI_INT, "S", "tokens per sequence", "256", CLI_AT(distill_args, o.seq), 2, 1 << 16},
    {"seed", 0, CLI_INT, "N", "data order and random init", "1", CLI_AT(distill_args, o.seed), 0, 0x7fffffffL},
    {"checkpoint-every", 0, CLI_INT, "N", "write OUT.ckpt every N steps (atomically; removed when OUT is complete)",
     NULL, CLI_AT(distill_args, o.ckpt_every), 1, 1 << 30},
    {"resume", 0, CLI_BOOL, NULL, "continue from OUT.ckpt (same options and --threads give the uninterrupted run's "
     "losses exactly)", NULL, CLI_AT(distill_args, o.resume), .flags = CLI_OPT_CLI_ONLY},
    {"topk-logits", 0, CLI_INT, "K", "train on aligned windows of S tokens whose teacher logits are computed once, the "
     "top K per position kept in a zstd-compressed cache that later runs with the same teacher, data, K and S reuse; KD "
     "against the teacher's top K renormalised (K = vocab: the full distribution)", NULL,
     CLI_AT(distill_args, o.topk_logits), 1, 1 << 20},
    {"logit-cache", 0, CLI_STRING, "FILE", "the --topk-logits cache (read when present, written when windows were "
     "added; kept after the run)", "OUT.logits", CLI_AT(distill_args, o.logit_cache)},
    {"threads", 0, CLI_INT, "T", "CPU threads of each process", "all cores; under mpirun, the cores split between its "
     "ranks", CLI_AT(distill_args, o.n_threads), 1, MT_MAX_THREADS},
    {"json", 0, CLI_BOOL, NULL, "one JSON object on stdout, with every step's losses", NULL,
     CLI_AT(distill_args, json), .flags = CLI_OPT_CLI_ONLY},
    {"quiet", 0, CLI_BOOL, NULL, "no progress lines on stderr", NULL, CLI_AT(distill_args, quiet),
     .flags = CLI_OPT_CLI_ONLY},
};

const cli_verb cli_verb_distill = {
    .name = "distill",
    .synopsis = "usage: moetool distill [TEACHER] -o OUT --student dense|MERGED_DIR [--width W]\n"
                "                       [--init concat|average|random] [--init-tokens N] [--data FILE] [--tokens N]\n"
                "                       [--kd-weight A] [--temperature T] [--lr LR] [--warmup N]\n"
                "                       [--batch B] [--seq S] [--seed N] [--checkpoint-every N]\n"
                "                       [--topk-logits K] [--logit-cache FILE]\n"
                "                       [--resume] [--threads T] [--force] [--json] [--quiet]",
    .about = "Trains a student from the MoE TEACHER by knowledge distillation and writes\n"
             "it as a Hugging Face directory (f32) into OUT. --student dense: a dense\n"
             "MistralForCausalLM keeping the teacher's attention, embeddings and norms,\n"
             "one SwiGLU FFN of width W per layer built from the experts. --student\n"
             "MERGED_DIR: that smaller Mixtral (moetool merge's output) healed against\n"
             "the teacher, every weight trained (router, experts, attention, norms);\n"
             "the output is a MixtralForCausalLM. Loss per token: (1 - A) * CE +\n"
             "A * T^2 * KL(teacher_T || student_T), the teacher's logits computed on\n"
             "the fly. AdamW (betas 0.9, 0.95, weight decay 0.01 on matrices), gradient\n"
             "clipping at norm 1, linear warmup then cosine to 10 % of LR\n"
             "(docs/distill.md). Under `mpirun -np N` (built with MPI) the ranks share\n"
             "every batch and sum their gradients; rank 0 writes OUT.\n",
    .positional = "TEACHER",
    .opts = distill_opts,
    .n_opts = sizeof distill_opts / sizeof distill_opts[0],
    .args_size = sizeof(distill_args),
    .init = distill_init,
    .run = cmd_distill,
    .recipe_step = 1,
};

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
        if (v) l->v = v;
        int *st = realloc(l->step, (size_t)cap * sizeof *st);
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
    /* Under mpirun every rank parses the same command line: a usage error is
     * printed by rank 0 only (the others' stderr is muted until training). */
    int stderr_fd = -1;
    if (mt_distill_launcher_rank() > 0) {
        const int nul = open("/dev/null", O_WRONLY | O_CLOEXEC);
        fflush(stderr);
        if (nul >= 0 && (stderr_fd = dup(2)) >= 0) dup2(nul, 2);
        if (nul >= 0) close(nul);
    }
    distill_args A;
    distill_init(&A);
    const char *teacher_arg = NULL;
    int prc = cli_opts_parse_argv(&cli_verb_distill, &A, argc, argv, &teacher_arg);
    if (prc) return prc == 1 ? MT_EXIT_OK : prc;
    mt_distill_opts o = A.o;
    const char *out = A.out, *student = A.student;
    const char *teacher = teacher_arg ? teacher_arg : cli_default_model();
    if (!out) return cli_usage_error("distill", "missing -o OUT");
    if (cli_check_output("distill", out)) return MT_EXIT_USAGE;
    if (!student) return cli_usage_error("distill", "missing --student dense (or --student MERGED_DIR)");
    if (strcmp(student, "dense")) {
        if (access(student, R_OK) != 0)
            return cli_usage_error("distill", "--student must be 'dense' or the directory of a merged MoE; %s does not "
                                   "exist", student);
        o.student_path = student;
    }
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
    if (!A.quiet) o.progress = cli_progress;
    if (stderr_fd >= 0) { /* from here on each rank reports its own errors */
        fflush(stderr);
        dup2(stderr_fd, 2);
        close(stderr_fd);
    }
    mt_distill_report r;
    int rc = mt_distill(teacher, out, &o, &r);
    cli_progress_done();
    if (rc) {
        free(data_default);
        free(log.v), free(log.step);
        const int code = rc == MT_ERR_ARG || rc == MT_ERR_REFUSED ? MT_EXIT_USAGE : MT_EXIT_FAIL;
        if (r.quiet_error) return code; /* rank 0 prints this error: one line for all ranks */
        if (r.rank > 0) return fprintf(stderr, "moetool distill (rank %d of %d): %s\n", r.rank, r.ranks, mt_last_error()), code;
        return rc == MT_ERR_ARG ? (fprintf(stderr, "moetool distill: %s\n", mt_last_error()), MT_EXIT_USAGE)
                                : cli_fail("distill", rc);
    }
    if (r.rank > 0) { /* rank 0 reports the run; the others wrote nothing */
        free(data_default);
        free(log.v), free(log.step);
        return MT_EXIT_OK;
    }
    const double rss = mt_peak_rss_bytes() / 1048576.0;
    if (A.json) {
        printf("{\"output\": ");
        json_str(stdout, out);
        printf(", \"student\": ");
        json_str(stdout, student);
        printf(", \"student_kind\": \"%s\", \"experts\": %d, \"top_k\": %d, \"width\": %d, \"init\": \"%s\","
               " \"params\": %llu, \"steps\": %d, \"start_step\": %d, \"batch\": %d, \"seq\": %d, \"tokens\": %llu,"
               " \"kd_weight\": %g, \"temperature\": %g, \"lr\": %g, \"seconds\": %.3f, \"tokens_per_s\": %.1f,"
               " \"peak_rss_mib\": %.1f, \"topk_logits\": %d, \"cache_windows\": %d, \"cache_computed\": %d,"
               " \"cache_bytes\": %llu, \"cache_bytes_per_token\": %.1f, \"log\": [",
               r.n_experts ? "moe" : "dense", r.n_experts, r.top_k, r.width,
               r.n_experts ? "merged" : mt_distill_init_name(r.init), (unsigned long long)r.student_params, r.steps,
               r.start_step, o.batch, o.seq, (unsigned long long)r.tokens, r.kd_weight, r.temperature, r.lr, r.seconds,
               r.tokens_per_s, rss, r.cache_windows ? o.topk_logits : 0, r.cache_windows, r.cache_computed,
               (unsigned long long)r.cache_bytes, r.cache_bytes_per_token);
        for (int i = 0; i < log.n; i++) {
            const double *x = log.v + (size_t)i * 4;
            printf("%s{\"step\": %d, \"loss\": %.9g, \"ce\": %.9g, \"kd\": %.9g, \"lr\": %.6g}", i ? ", " : "",
                   log.step[i], x[0], x[1], x[2], x[3]);
        }
        printf("]}\n");
    } else {
        if (r.n_experts)
            printf("distilled %s -> %s: MoE student %s healed (%d experts, top-%d, width %d), %llu parameters\n",
                   teacher, out, student, r.n_experts, r.top_k, r.width, (unsigned long long)r.student_params);
        else
            printf("distilled %s -> %s: dense student, FFN width %d (%s init), %llu parameters\n", teacher, out,
                   r.width, mt_distill_init_name(r.init), (unsigned long long)r.student_params);
        printf("steps %d..%d of %d x %d tokens (KD weight %g, T %g, lr %g): loss %.4f -> %.4f (KD %.4f, CE %.4f); "
               "%.1f s, %.0f tokens/s, peak RSS %.1f MiB\n", r.start_step + 1, r.steps, o.batch, o.seq, r.kd_weight,
               r.temperature, r.lr, r.first_loss, r.last_loss, r.last_kd, r.last_ce, r.seconds, r.tokens_per_s, rss);
        if (r.cache_windows)
            printf("teacher top-%d logit cache: %d windows (%d computed by this run), %llu bytes, %.1f bytes per token\n",
                   o.topk_logits, r.cache_windows, r.cache_computed, (unsigned long long)r.cache_bytes,
                   r.cache_bytes_per_token);
    }
    free(data_default);
    free(log.v), free(log.step);
    return MT_EXIT_OK;
}
