/* run.c — `moetool run RECIPE.yaml`: runs a recipe's steps, each in a work
 * directory named by a content hash, checks its gates and writes the run's
 * summary.json, report.md and report.html (docs/recipes.md).
 *
 * Each step runs as a child process of this same binary (/proc/self/exe,
 * the verb and the flags its option table turns the step's keys into):
 *   - the flags are exactly what a user would type, so a step behaves as the
 *     verb does on the command line, and `--dry-run` prints those commands;
 *   - verbs keep process-wide state (peak RSS in their reports, the progress
 *     clock, the signal handler that removes an unfinished output) that one
 *     process per step keeps per step;
 *   - a step that fails or crashes cannot take the runner or the other
 *     steps' results with it, and its memory is returned when it ends.
 * A step is finished when its done.json exists (written last, by rename);
 * outputs are atomic already (lib/io/output.c), so an interrupted run
 * resumes by running the steps without done.json again. */
#define _GNU_SOURCE
#include "cli_impl.h"
#include "moetool/mt_tokenizer.h"
#include "recipe.h"
#include "report.h"
#include "sha256.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef MT_VERSION
#define MT_VERSION "0.1.0"
#endif

typedef struct {
    const char *recipe, *force, *workdir;
    int dry_run, json;
} run_args;

static void run_init(void *p) { memset(p, 0, sizeof(run_args)); }

static const cli_opt run_opts[] = {
    {"dry-run", 0, CLI_BOOL, NULL, "check the recipe, its files and models, print the commands and which steps are "
     "cached; run nothing", NULL, CLI_AT(run_args, dry_run)},
    {"force", 0, CLI_STRING, "STEP", "run STEP and every step after it that reads its output even when cached", NULL,
     CLI_AT(run_args, force)},
    {"workdir", 0, CLI_STRING, "DIR", "where step outputs, logs and reports go", "moetool-runs/RECIPE beside the recipe",
     CLI_AT(run_args, workdir)},
    {"json", 0, CLI_BOOL, NULL, "print summary.json on stdout", NULL, CLI_AT(run_args, json)},
};

const cli_verb cli_verb_run = {
    .name = "run",
    .synopsis = "usage: moetool run RECIPE.yaml [--dry-run] [--force STEP] [--workdir DIR] [--json]",
    .about = "Runs a recipe: a YAML list of steps (convert, merge, quantize, distill,\n"
             "eval), each one verb whose keys are that verb's options, and gates on\n"
             "the results (docs/recipes.md). Each step's output lives under a hash of\n"
             "its inputs, options and this binary, so a rerun skips finished steps\n"
             "and an interrupted run resumes.\n"
             "\n"
             "exit codes: 0 every gate holds, 1 a step failed, 2 bad recipe or usage,\n"
             "3 a gate failed (a table on stderr says which and by how much).\n",
    .positional = "RECIPE",
    .opts = run_opts,
    .n_opts = sizeof run_opts / sizeof run_opts[0],
    .args_size = sizeof(run_args),
    .init = run_init,
    .run = cmd_run,
    .recipe_step = 0,
};

/* ------------------------------------------------------------- hashing */

static int hash_file(sha256_ctx *c, const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    static char buf[1 << 16];
    for (ssize_t k; (k = read(fd, buf, sizeof buf)) != 0;) {
        if (k < 0) {
            if (errno == EINTR) continue;
            close(fd);
            return -1;
        }
        sha256_update(c, buf, (size_t)k);
    }
    close(fd);
    return 0;
}

/* Digests of large files are remembered in WORK/file-hashes, keyed by
 * device, inode, size and modification time (as git and ccache trust a
 * file's stat data), so a rerun does not read a many-GB model again. */
#define HASH_CACHE_MIN (16u << 20)
static char *g_hash_cache;     /* the cache file, NULL: none       */
static int g_hash_cache_write; /* dry runs read it but write nothing */

static int file_digest(const char *path, const struct stat *sb, char out[65]) {
    char key[160];
    snprintf(key, sizeof key, "%llu %llu %lld %lld.%09ld ", (unsigned long long)sb->st_dev,
             (unsigned long long)sb->st_ino, (long long)sb->st_size, (long long)sb->st_mtim.tv_sec,
             (long)sb->st_mtim.tv_nsec);
    const int cached = g_hash_cache && (uint64_t)sb->st_size >= HASH_CACHE_MIN;
    if (cached) {
        FILE *f = fopen(g_hash_cache, "r");
        char line[256];
        const size_t kl = strlen(key);
        int hit = 0;
        while (f && !hit && fgets(line, sizeof line, f))
            if (!strncmp(line, key, kl) && strlen(line + kl) >= 64 && strspn(line + kl, "0123456789abcdef") == 64) {
                memcpy(out, line + kl, 64);
                out[64] = 0;
                hit = 1;
            }
        if (f) fclose(f);
        if (hit) return 0;
    }
    sha256_ctx c;
    sha256_init(&c);
    if (hash_file(&c, path)) return -1;
    sha256_hex(&c, out);
    if (cached && g_hash_cache_write) {
        FILE *f = fopen(g_hash_cache, "a");
        if (f) fprintf(f, "%s%s\n", key, out), fclose(f);
    }
    return 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Names and contents of a file or (recursively, sorted) a directory. */
static int hash_tree(sha256_ctx *c, const char *path, int depth) {
    struct stat sb;
    if (stat(path, &sb) != 0 || depth > 16) return -1;
    if (!S_ISDIR(sb.st_mode)) {
        char d[65];
        if (file_digest(path, &sb, d)) return -1;
        sha256_update(c, "F", 1);
        sha256_update(c, d, 64);
        return 0;
    }
    DIR *d = opendir(path);
    if (!d) return -1;
    char **names = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            char **nn = realloc(names, cap * sizeof *nn);
            if (!nn) {
                rc = -1;
                break;
            }
            names = nn;
        }
        if (!(names[n] = strdup(e->d_name))) {
            rc = -1;
            break;
        }
        n++;
    }
    closedir(d);
    if (names) qsort(names, n, sizeof *names, cmp_str);
    sha256_update(c, "D", 1);
    for (size_t i = 0; i < n; i++) {
        char *p = NULL;
        if (rc == 0 && asprintf(&p, "%s/%s", path, names[i]) >= 0) {
            sha256_update(c, names[i], strlen(names[i]) + 1);
            rc = hash_tree(c, p, depth + 1);
        } else {
            rc = -1;
        }
        free(p);
        free(names[i]);
    }
    free(names);
    return rc;
}

static int hash_path(const char *path, char out[65]) {
    sha256_ctx c;
    sha256_init(&c);
    if (hash_tree(&c, path, 0)) return -1;
    sha256_hex(&c, out);
    return 0;
}

/* ------------------------------------------------------------ the plan */

typedef struct {
    char key[65];
    char *dir;       /* WORK/steps/NAME-KEY16                                 */
    char *output;    /* what the step writes (NULL for eval)                  */
    char *input;     /* its MODEL                                             */
    char **argv;     /* the command, argv[0] = the binary                     */
    int argc;
    int cached, run, failed, exit_code;
    double seconds;
    json_t *result;  /* the verb's --json output                              */
} step_plan;

typedef struct {
    recipe *r;
    step_plan *s;
    char *work;
    char exe_hash[65];
    char model_hash[65];
} plan;

static int push_arg(step_plan *sp, const char *a) {
    char **na = realloc(sp->argv, (size_t)(sp->argc + 2) * sizeof *na);
    if (!na) return -1;
    sp->argv = na;
    if (!(na[sp->argc] = strdup(a))) return -1;
    sp->argc++;
    na[sp->argc] = NULL;
    return 0;
}

/* The text a value is hashed as: step outputs by their key, the base model
 * by its content hash, files by their content, so the spelling of a path
 * is not part of a key. */
static char *hash_text(plan *pl, const char *value, int is_path) {
    const recipe *r = pl->r;
    if (is_path) { /* a file, named directly or as ${texts.NAME}: its content */
        char *plain = recipe_expand(r, value, NULL, "${model}");
        if (!plain) return NULL;
        if (!strstr(plain, "${")) {
            char h[65];
            const int bad = hash_path(plain, h);
            free(plain);
            return strdup(bad ? "<unreadable>" : h);
        }
        free(plain);
    }
    char **tokens = calloc(r->n_steps, sizeof *tokens);
    if (!tokens) return NULL;
    for (size_t i = 0; i < r->n_steps; i++)
        if (asprintf(&tokens[i], "<step %s>", pl->s[i].key) < 0) tokens[i] = NULL;
    char *model = NULL, *t = NULL;
    if (asprintf(&model, "<model %s>", pl->model_hash) >= 0) t = recipe_expand(r, value, tokens, model);
    for (size_t i = 0; i < r->n_steps; i++) free(tokens[i]);
    free(tokens);
    free(model);
    return t;
}

static const char *out_name(const recipe_step *s) {
    const char *v = s->verb->name;
    if (!strcmp(v, "merge") || !strcmp(v, "distill")) return "model";
    for (size_t k = 0; k < s->n_kv; k++) {
        if (!strcmp(v, "quantize") && !strcmp(s->kv[k].opt->name, "format")) return strcmp(s->kv[k].value, "hf") ? "model.gguf" : "model";
        if (!strcmp(v, "convert") && !strcmp(s->kv[k].opt->name, "to")) return strcmp(s->kv[k].value, "hf") ? "model.gguf" : "model";
    }
    return "model.gguf";
}

static int plan_step(plan *pl, int i, char *err, size_t errn) {
    const recipe *r = pl->r;
    const recipe_step *s = &r->steps[i];
    step_plan *sp = &pl->s[i];
    char **outs = calloc(r->n_steps, sizeof *outs);
    if (!outs) return snprintf(err, errn, "out of memory"), -1;
    for (size_t k = 0; k < r->n_steps; k++) outs[k] = pl->s[k].output;
    /* input */
    char *in_hash;
    if (s->model) {
        sp->input = recipe_expand(r, s->model, outs, NULL);
        in_hash = hash_text(pl, s->model, 1);
    } else if (s->input >= 0) {
        sp->input = strdup(pl->s[s->input].output);
        if (asprintf(&in_hash, "<step %s>", pl->s[s->input].key) < 0) in_hash = NULL;
    } else {
        sp->input = strdup(r->model);
        in_hash = strdup(pl->model_hash);
    }
    sha256_ctx c;
    sha256_init(&c);
    char *line = NULL;
    int rc = sp->input && in_hash ? 0 : -1;
    if (rc == 0 && asprintf(&line, "moetool-run 1\ntool %s %s\nverb %s\ninput %s\n", MT_VERSION, pl->exe_hash,
                            s->verb->name, in_hash) >= 0) {
        sha256_update(&c, line, strlen(line));
        free(line);
    }
    free(in_hash);
    rc = rc || push_arg(sp, "/proc/self/exe") || push_arg(sp, s->verb->name) || push_arg(sp, sp->input);
    /* options in table order, so the key does not depend on the YAML order */
    int has_calib = 0, has_calib_tokens = 0;
    for (size_t o = 0; rc == 0 && o < s->verb->n_opts; o++) {
        const cli_opt *opt = &s->verb->opts[o];
        for (size_t k = 0; rc == 0 && k < s->n_kv; k++) {
            if (s->kv[k].opt != opt) continue;
            char flag[96];
            snprintf(flag, sizeof flag, "--%s", opt->name);
            has_calib |= !strcmp(opt->name, "calib");
            has_calib_tokens |= !strcmp(opt->name, "calib-tokens");
            /* a string naming an existing file or directory (distill's
             * --student MERGED_DIR) counts by its content, as a path does */
            struct stat sb;
            const int as_path = opt->type == CLI_PATH ||
                                (opt->type == CLI_STRING && !strstr(s->kv[k].value, "${") && stat(s->kv[k].value, &sb) == 0);
            char *h = hash_text(pl, s->kv[k].value, as_path);
            if (h && asprintf(&line, "opt %s=%s\n", opt->name, h) >= 0) {
                sha256_update(&c, line, strlen(line));
                free(line);
            } else {
                rc = -1;
            }
            free(h);
            if (opt->type == CLI_BOOL) {
                if (!strcmp(s->kv[k].value, "true")) rc = rc || push_arg(sp, flag);
                continue;
            }
            char *v = recipe_expand(r, s->kv[k].value, outs, NULL);
            rc = rc || !v || push_arg(sp, flag) || push_arg(sp, v);
            free(v);
        }
    }
    /* the recipe's calibration, for verbs that calibrate and did not say */
    if (rc == 0 && r->calib_text && !has_calib && cli_opts_find(s->verb, "calib")) {
        char h[65];
        if (hash_path(r->calib_text, h)) strcpy(h, "<unreadable>");
        if (asprintf(&line, "opt calib=%s\n", h) >= 0) sha256_update(&c, line, strlen(line)), free(line);
        rc = push_arg(sp, "--calib") || push_arg(sp, r->calib_text);
    }
    if (rc == 0 && r->calib_tokens && !has_calib_tokens && cli_opts_find(s->verb, "calib-tokens")) {
        char t[32];
        snprintf(t, sizeof t, "%d", r->calib_tokens);
        if (asprintf(&line, "opt calib-tokens=%s\n", t) >= 0) sha256_update(&c, line, strlen(line)), free(line);
        rc = push_arg(sp, "--calib-tokens") || push_arg(sp, t);
    }
    sha256_hex(&c, sp->key);
    if (rc == 0 && asprintf(&sp->dir, "%s/steps/%s-%.16s", pl->work, s->name, sp->key) < 0) rc = -1;
    if (rc == 0 && s->writes_model) {
        if (asprintf(&sp->output, "%s/%s", sp->dir, out_name(s)) < 0) rc = -1;
        else rc = push_arg(sp, "-o") || push_arg(sp, sp->output);
    }
    if (rc == 0 && cli_opts_find(s->verb, "json")) rc = push_arg(sp, "--json");
    if (rc == 0 && cli_opts_find(s->verb, "quiet")) rc = push_arg(sp, "--quiet");
    free(outs);
    if (rc) snprintf(err, errn, "out of memory planning step '%s'", s->name);
    return rc;
}

static int mkdir_p(const char *path) {
    char *p = strdup(path);
    if (!p) return -1;
    for (char *c = p + 1; *c; c++) {
        if (*c != '/') continue;
        *c = 0;
        if (mkdir(p, 0777) != 0 && errno != EEXIST) return free(p), -1;
        *c = '/';
    }
    int rc = mkdir(p, 0777) != 0 && errno != EEXIST ? -1 : 0;
    free(p);
    return rc;
}

static char *join(const char *a, const char *b) {
    char *p = NULL;
    return asprintf(&p, "%s/%s", a, b) < 0 ? NULL : p;
}

/* A work directory holds only what `moetool run` writes (steps, logs,
 * report.md/.html, summary.json): one that exists with other entries and no
 * .moetool-run marker is refused, so a report never replaces a user's file.
 * An empty or new directory is claimed by writing the marker. */
static int claim_workdir(const char *dir, char *err, size_t errn) {
    char *marker = join(dir, ".moetool-run");
    if (!marker) return snprintf(err, errn, "out of memory"), -1;
    struct stat sb;
    int rc = 0;
    if (lstat(marker, &sb) == 0 && S_ISREG(sb.st_mode)) goto done;
    DIR *d = opendir(dir);
    if (!d) {
        rc = -1;
        snprintf(err, errn, "%s: %s", dir, strerror(errno));
        goto done;
    }
    struct dirent *e;
    int other = 0;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) other = 1;
    closedir(d);
    if (other) {
        rc = -1;
        snprintf(err, errn, "%s: the work directory holds files that moetool run did not write (no .moetool-run); "
                 "choose another --workdir", dir);
        goto done;
    }
    int fd = open(marker, O_WRONLY | O_CREAT | O_EXCL, 0666);
    if (fd < 0 || write(fd, "moetool run work directory\n", 27) != 27) {
        rc = -1;
        snprintf(err, errn, "%s: %s", marker, strerror(errno));
    }
    if (fd >= 0) close(fd);
done:
    free(marker);
    return rc;
}

/* One run at a time per work directory: an exclusive flock on the marker,
 * held until this process exits (close-on-exec, so steps do not inherit
 * it). A second run on the same directory stops at once instead of racing
 * the first for the same step directories and reports. */
static int lock_workdir(const char *dir, char *err, size_t errn) {
    static int lock_fd = -1;
    char *marker = join(dir, ".moetool-run");
    if (!marker) return snprintf(err, errn, "out of memory"), -1;
    int rc = 0;
    lock_fd = open(marker, O_RDONLY | O_CLOEXEC);
    if (lock_fd < 0) {
        rc = -1;
        snprintf(err, errn, "%s: %s", marker, strerror(errno));
    } else if (flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
        rc = -1;
        if (errno == EWOULDBLOCK)
            snprintf(err, errn, "%s: another moetool run is using this work directory; wait for it to finish or "
                     "choose another --workdir", dir);
        else
            snprintf(err, errn, "%s: cannot lock: %s", marker, strerror(errno));
        close(lock_fd);
        lock_fd = -1;
    }
    free(marker);
    return rc;
}

/* Writes text to path through a temporary name and a rename. */
static int write_atomic(const char *path, const char *text) {
    char *tmp = NULL;
    if (asprintf(&tmp, "%s.part", path) < 0) return -1;
    FILE *f = fopen(tmp, "wb");
    int rc = f ? 0 : -1;
    if (f) {
        if (fputs(text, f) < 0) rc = -1;
        if (fclose(f) != 0) rc = -1;
    }
    if (rc == 0 && rename(tmp, path) != 0) rc = -1;
    if (rc) unlink(tmp);
    free(tmp);
    return rc;
}

static void last_line(const char *path, char *out, size_t n) {
    out[0] = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return;
    char line[1024];
    while (fgets(line, sizeof line, f))
        if (line[0] && line[0] != '\n') {
            size_t L = strlen(line) < n - 1 ? strlen(line) : n - 1;
            memcpy(out, line, L);
            out[L] = 0;
        }
    fclose(f);
    size_t L = strlen(out);
    while (L && (out[L - 1] == '\n' || out[L - 1] == '\r')) out[--L] = 0;
}

static json_t *load_result(const step_plan *sp) {
    char *p = join(sp->dir, "result.json");
    json_t *j = p ? json_load_file(p, 0, NULL) : NULL;
    free(p);
    return j;
}

/* While a step runs, a signal to the runner goes to the step (which removes
 * its unfinished output), and the runner stops after it. */
static volatile sig_atomic_t g_child, g_signal;

static void forward_signal(int sig) {
    g_signal = sig;
    if (g_child > 0) kill((pid_t)g_child, sig);
}

static void catch_for_child(struct sigaction *old) {
    static const int sigs[] = {SIGINT, SIGTERM, SIGHUP};
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = forward_signal;
    sigemptyset(&sa.sa_mask);
    for (int i = 0; i < 3; i++) {
        sigaction(sigs[i], NULL, &old[i]);
        if (old[i].sa_handler != SIG_IGN) sigaction(sigs[i], &sa, NULL);
    }
}

static void restore_signals(const struct sigaction *old) {
    static const int sigs[] = {SIGINT, SIGTERM, SIGHUP};
    for (int i = 0; i < 3; i++) sigaction(sigs[i], &old[i], NULL);
}

static int exec_step(step_plan *sp, const recipe_step *s, char *err, size_t errn) {
    if (mkdir_p(sp->dir)) return snprintf(err, errn, "%s: %s", sp->dir, strerror(errno)), -1;
    char *res = join(sp->dir, "result.json.part"), *log = join(sp->dir, "log.txt"), *fin = join(sp->dir, "result.json");
    int rc = -1;
    const double t0 = mt_now();
    fflush(NULL);
    struct sigaction old[3];
    catch_for_child(old);
    pid_t pid = res && log && fin ? fork() : -1;
    if (pid == 0) {
        restore_signals(old);
        int o = open(res, O_WRONLY | O_CREAT | O_TRUNC, 0666), e = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0666);
        if (o < 0 || e < 0 || dup2(o, 1) < 0 || dup2(e, 2) < 0) _exit(127);
        execv("/proc/self/exe", sp->argv);
        _exit(127);
    }
    int st = 0;
    if (pid > 0) {
        g_child = pid;
        if (g_signal) kill(pid, g_signal);
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
        g_child = 0;
        sp->seconds = mt_now() - t0;
        sp->exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        if (sp->exit_code == 0) {
            rc = rename(res, fin);
            if (rc) snprintf(err, errn, "%s: %s", fin, strerror(errno));
        } else {
            char line[400];
            last_line(log, line, sizeof line);
            snprintf(err, errn, "step '%s' (%s) failed with exit %d: %s (log: %s)", s->name, s->verb->name,
                     sp->exit_code, *line ? line : "no message", log);
        }
    } else {
        snprintf(err, errn, "cannot start step '%s': %s", s->name, strerror(errno));
    }
    restore_signals(old);
    if (g_signal) {
        snprintf(err, errn, "interrupted during step '%s' (signal %d); run again to resume", s->name, (int)g_signal);
        rc = -1;
    }
    free(res);
    free(log);
    free(fin);
    return rc;
}

static int write_done(const step_plan *sp, const recipe_step *s) {
    json_t *d = json_pack("{s:s, s:s, s:s?, s:f}", "key", sp->key, "verb", s->verb->name, "output", sp->output,
                          "seconds", sp->seconds);
    char *txt = d ? json_dumps(d, JSON_INDENT(2)) : NULL;
    char *p = join(sp->dir, "done.json");
    int rc = txt && p ? write_atomic(p, txt) : -1;
    free(txt);
    free(p);
    json_decref(d);
    return rc;
}

static int is_done(const step_plan *sp) {
    char *p = join(sp->dir, "done.json");
    struct stat sb;
    int ok = p && stat(p, &sb) == 0;
    free(p);
    return ok;
}

/* ---------------------------------------------------------------- gates */

static int gate_value(const json_t *res, recipe_metric m, double *v) {
    if (!res) return -1;
    const json_t *x = NULL;
    switch (m) {
    case GATE_PERPLEXITY: x = json_object_get(res, "ppl"); break;
    case GATE_PERPLEXITY_RATIO: {
        const json_t *a = json_object_get(res, "ppl"), *b = json_object_get(res, "ref_ppl");
        if (!json_is_number(a) || !json_is_number(b) || json_number_value(b) <= 0) return -1;
        *v = json_number_value(a) / json_number_value(b);
        return 0;
    }
    case GATE_KL: x = json_object_get(res, "kl_mean"); break;
    case GATE_TOP1: x = json_object_get(res, "top1_agree"); break;
    case GATE_SIZE_MIB:
        x = json_object_get(json_object_get(res, "size"), "file_bytes");
        if (!json_is_number(x)) return -1;
        *v = json_number_value(x) / 1048576.0;
        return 0;
    case GATE_BITS_PER_WEIGHT: x = json_object_get(json_object_get(res, "size"), "bits_per_weight"); break;
    case GATE_TOKENS_PER_S: x = json_object_get(json_object_get(res, "speed"), "tokens_per_s"); break;
    case GATE_COUNT: break;
    }
    if (!json_is_number(x)) return -1;
    *v = json_number_value(x);
    return 0;
}

/* ------------------------------------------------------------- the run */

/* Before any work: every model the recipe names by path opens and shares
 * the base model's vocabulary (a mismatch would surface hours later as a
 * failed eval --ref or a meaningless KL), and merge steps on the base model
 * ask for a K the model can give (top_k <= K < experts). Outputs of steps do
 * not exist yet: the verbs check those when they run. */
/* Whether two tokenizers hold the same pieces; 0, or -1 with the first
 * difference in msg. */
static int same_tokenizer(const mt_tokenizer *a, const mt_tokenizer *b, char *msg, size_t n) {
    const size_t na = mt_tok_vocab_size(a), nb = mt_tok_vocab_size(b);
    if (na != nb) return snprintf(msg, n, "a tokenizer of %zu pieces, the base model's has %zu", nb, na), -1;
    for (size_t i = 0; i < na; i++) {
        size_t la = 0, lb = 0;
        const char *pa = mt_tok_piece(a, (int)i, &la), *pb = mt_tok_piece(b, (int)i, &lb);
        if (!pa || !pb || la != lb || memcmp(pa, pb, la))
            return snprintf(msg, n, "a different tokenizer: token %zu is '%.*s', in the base model '%.*s'", i,
                            (int)(lb > 40 ? 40 : lb), pb ? pb : "", (int)(la > 40 ? 40 : la), pa ? pa : ""), -1;
    }
    return 0;
}

/* --dry-run's model checks, before any work: every model a recipe names by
 * path opens and shares the base model's vocabulary and tokenizer; a distill
 * step's student directory has the teacher's family and shape; merge's K
 * fits the base model. */
static int check_models(const recipe *r, char *err, size_t errn) {
    mt_ckpt *base = NULL;
    if (mt_ckpt_open(&base, r->model) != MT_OK)
        return snprintf(err, errn, "%s:%d:%d: model %s: %s", r->path, r->model_pos.line, r->model_pos.col, r->model,
                        mt_last_error()), -1;
    const mt_config *bc = mt_ckpt_config(base);
    mt_tokenizer *btok = NULL;
    if (mt_tok_load_for_ckpt(&btok, base) != MT_OK) btok = NULL; /* none: nothing to compare */
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < r->n_steps; i++) {
        const recipe_step *s = &r->steps[i];
        const int on_base = (!s->model && s->input < 0) || (s->model && !strcmp(s->model, "${model}"));
        const int distill = !strcmp(s->verb->name, "distill");
        for (size_t k = 0; rc == 0 && k <= s->n_kv; k++) {
            const char *path = NULL;
            recipe_pos pos;
            int student = 0;
            if (k == s->n_kv) path = s->model, pos = s->model_pos;
            else if (!strcmp(s->kv[k].opt->name, "ref")) path = s->kv[k].value, pos = s->kv[k].pos;
            else if (distill && !strcmp(s->kv[k].opt->name, "student") && strcmp(s->kv[k].value, "dense"))
                path = s->kv[k].value, pos = s->kv[k].pos, student = 1;
            if (!path || strstr(path, "${")) continue;
            mt_ckpt *ck = NULL;
            mt_tokenizer *tok = NULL;
            char why[256];
            if (mt_ckpt_open(&ck, path) != MT_OK) {
                rc = snprintf(err, errn, "%s:%d:%d: model %s: %s", r->path, pos.line, pos.col, path, mt_last_error());
            } else if (mt_ckpt_config(ck)->vocab != bc->vocab) {
                rc = snprintf(err, errn, "%s:%d:%d: %s has a vocabulary of %d tokens, the base model %s one of %d",
                              r->path, pos.line, pos.col, path, mt_ckpt_config(ck)->vocab, r->model, bc->vocab);
            } else if (btok && mt_tok_load_for_ckpt(&tok, ck) == MT_OK && same_tokenizer(btok, tok, why, sizeof why)) {
                rc = snprintf(err, errn, "%s:%d:%d: %s has %s (base model %s)", r->path, pos.line, pos.col, path, why,
                              r->model);
            } else if (student) {
                const mt_config *sc = mt_ckpt_config(ck);
                if (strcmp(sc->arch, bc->arch) || sc->hidden != bc->hidden || sc->n_layers != bc->n_layers ||
                    sc->n_heads != bc->n_heads || sc->n_kv_heads != bc->n_kv_heads)
                    rc = snprintf(err, errn, "%s:%d:%d: distill: student %s (%s, %d layers, hidden %d, %d/%d heads) "
                                  "does not have the teacher's shape (%s, %d layers, hidden %d, %d/%d heads)",
                                  r->path, pos.line, pos.col, path, sc->arch, sc->n_layers, sc->hidden, sc->n_heads,
                                  sc->n_kv_heads, bc->arch, bc->n_layers, bc->hidden, bc->n_heads, bc->n_kv_heads);
            }
            mt_tok_free(tok);
            mt_ckpt_free(ck);
            rc = rc ? -1 : 0;
        }
        if (rc || !on_base || strcmp(s->verb->name, "merge")) continue;
        for (size_t k = 0; k < s->n_kv; k++) {
            if (strcmp(s->kv[k].opt->name, "experts")) continue;
            const int K = atoi(s->kv[k].value);
            if (bc->n_experts <= 0 || K < bc->top_k || K >= bc->n_experts) {
                rc = -1;
                snprintf(err, errn, "%s:%d:%d: merge: experts %d does not fit the base model (%d experts, top-%d): "
                         "it needs top_k <= K < experts", r->path, s->kv[k].pos.line, s->kv[k].pos.col, K,
                         bc->n_experts, bc->top_k);
            }
        }
    }
    mt_tok_free(btok);
    mt_ckpt_free(base);
    return rc;
}

static char *default_workdir(const char *recipe_path) {
    const char *base = strrchr(recipe_path, '/');
    base = base ? base + 1 : recipe_path;
    size_t L = strlen(base);
    if (L > 5 && !strcmp(base + L - 5, ".yaml")) L -= 5;
    else if (L > 4 && !strcmp(base + L - 4, ".yml")) L -= 4;
    char *p = NULL;
    const size_t dl = (size_t)(base - recipe_path);
    if (asprintf(&p, "%.*smoetool-runs/%.*s", (int)dl, recipe_path, (int)L, base) < 0) return NULL;
    return p;
}

/* Downstream of a forced step: every step that reads it, transitively. */
static void mark_forced(plan *pl, int f) {
    const recipe *r = pl->r;
    pl->s[f].run = 1;
    for (size_t i = 0; i < r->n_steps; i++)
        for (size_t d = 0; d < r->steps[i].n_deps; d++)
            if (r->steps[i].deps[d] == f && !pl->s[i].run) mark_forced(pl, (int)i);
}

static void plan_free(plan *pl) {
    if (pl->s)
        for (size_t i = 0; i < pl->r->n_steps; i++) {
            step_plan *sp = &pl->s[i];
            for (int a = 0; a < sp->argc; a++) free(sp->argv[a]);
            free(sp->argv);
            free(sp->dir);
            free(sp->output);
            free(sp->input);
            json_decref(sp->result);
        }
    free(pl->s);
    free(pl->work);
}

int cmd_run(int argc, char **argv) {
    run_args A;
    run_init(&A);
    int prc = cli_opts_parse_argv(&cli_verb_run, &A, argc, argv, &A.recipe);
    if (prc) return prc == 1 ? MT_EXIT_OK : prc;
    if (!A.recipe) return cli_usage_error("run", "missing RECIPE.yaml");
    char err[1024];
    plan pl;
    memset(&pl, 0, sizeof pl);
    if (recipe_load(&pl.r, A.recipe, 1, err, sizeof err)) {
        fprintf(stderr, "moetool run: %s\n", err);
        return MT_EXIT_USAGE;
    }
    recipe *r = pl.r;
    int ret = MT_EXIT_FAIL;
    int force = -1;
    if (A.force && (force = recipe_step_find(r, A.force)) < 0) {
        ret = cli_usage_error("run", "--force names no step of %s: '%s'", A.recipe, A.force);
        goto done;
    }
    if (check_models(r, err, sizeof err)) {
        fprintf(stderr, "moetool run: %s\n", err);
        ret = MT_EXIT_USAGE;
        goto done;
    }
    pl.work = A.workdir ? strdup(A.workdir) : default_workdir(A.recipe);
    pl.s = calloc(r->n_steps, sizeof *pl.s);
    if (pl.work && !A.dry_run && mkdir_p(pl.work)) {
        fprintf(stderr, "moetool run: %s: %s\n", pl.work, strerror(errno));
        goto done;
    }
    if (pl.work && !A.dry_run && claim_workdir(pl.work, err, sizeof err)) {
        fprintf(stderr, "moetool run: %s\n", err);
        ret = MT_EXIT_USAGE;
        goto done;
    }
    if (pl.work && !A.dry_run && lock_workdir(pl.work, err, sizeof err)) {
        fprintf(stderr, "moetool run: %s\n", err);
        goto done;
    }
    g_hash_cache = pl.work ? join(pl.work, "file-hashes") : NULL;
    g_hash_cache_write = !A.dry_run;
    if (!pl.work || !pl.s || hash_path("/proc/self/exe", pl.exe_hash) || hash_path(r->model, pl.model_hash)) {
        fprintf(stderr, "moetool run: cannot hash the model %s or this binary\n", r->model);
        goto done;
    }
    for (size_t k = 0; k < r->n_steps; k++)
        if (plan_step(&pl, r->order[k], err, sizeof err)) {
            fprintf(stderr, "moetool run: %s\n", err);
            goto done;
        }
    for (size_t k = 0; k < r->n_steps; k++) pl.s[k].cached = is_done(&pl.s[k]);
    if (force >= 0) mark_forced(&pl, force);
    for (size_t k = 0; k < r->n_steps; k++)
        if (!pl.s[k].cached) pl.s[k].run = 1;

    if (A.dry_run) {
        for (size_t k = 0; k < r->n_steps; k++) {
            const int i = r->order[k];
            step_plan *sp = &pl.s[i];
            printf("%s (%s): %s\n  moetool", r->steps[i].name, sp->run ? "to run" : "cached", sp->dir);
            for (int a = 1; a < sp->argc; a++) {
                putchar(' ');
                cli_term_str(stdout, sp->argv[a], 0);
            }
            printf("\n");
        }
        ret = MT_EXIT_OK;
        goto done;
    }
    if (mkdir_p(pl.work)) {
        fprintf(stderr, "moetool run: %s: %s\n", pl.work, strerror(errno));
        goto done;
    }
    int failed = 0;
    const double t_run = mt_now();
    for (size_t k = 0; k < r->n_steps && !failed; k++) {
        const int i = r->order[k];
        step_plan *sp = &pl.s[i];
        const recipe_step *s = &r->steps[i];
        if (!sp->run) {
            fprintf(stderr, "moetool run: %s (%s): cached\n", s->name, s->verb->name);
        } else {
            char *done = join(sp->dir, "done.json");
            if (done) unlink(done); /* a forced step is unfinished until it ends */
            free(done);
            fprintf(stderr, "moetool run: %s (%s): running\n", s->name, s->verb->name);
            if (exec_step(sp, s, err, sizeof err) || write_done(sp, s)) {
                fprintf(stderr, "moetool run: %s\n", err);
                sp->failed = 1;
                failed = 1;
                break;
            }
            fprintf(stderr, "moetool run: %s (%s): done in %.1f s\n", s->name, s->verb->name, sp->seconds);
        }
        sp->result = load_result(sp);
    }
    report_input in = {.r = r, .work = pl.work, .recipe_path = A.recipe, .seconds = mt_now() - t_run, .failed = failed};
    report_step *rs = calloc(r->n_steps, sizeof *rs);
    report_gate *rg = calloc(r->n_gates + 1, sizeof *rg);
    int gate_fail = 0;
    for (size_t i = 0; rs && i < r->n_steps; i++)
        rs[i] = (report_step){pl.s[i].key, pl.s[i].output, pl.s[i].dir, pl.s[i].result, !pl.s[i].run, pl.s[i].failed,
                              pl.s[i].seconds, pl.s[i].argv, pl.s[i].argc};
    for (size_t g = 0; rg && !failed && g < r->n_gates; g++) {
        const recipe_gate *gt = &r->gates[g];
        rg[g].gate = gt;
        rg[g].have = gate_value(pl.s[gt->step].result, gt->metric, &rg[g].value) == 0;
        rg[g].pass = rg[g].have && (!gt->has_min || rg[g].value >= gt->min) && (!gt->has_max || rg[g].value <= gt->max);
        gate_fail |= !rg[g].pass;
    }
    in.steps = rs;
    in.gates = failed ? NULL : rg;
    in.n_gates = failed ? 0 : r->n_gates;
    ret = failed ? MT_EXIT_FAIL : gate_fail ? 3 : MT_EXIT_OK;
    in.exit_code = ret;
    if (rs && rg) {
        if (report_write(&in, A.json ? stdout : NULL, err, sizeof err)) {
            fprintf(stderr, "moetool run: %s\n", err);
            if (ret == MT_EXIT_OK) ret = MT_EXIT_FAIL;
        }
        if (!failed && r->n_gates) report_gate_table(&in, stderr);
        fprintf(stderr, "moetool run: %s in %s (report.md, report.html, summary.json)\n",
                ret == MT_EXIT_OK ? "all gates hold" : ret == 3 ? "a gate failed" : "a step failed", pl.work);
    } else {
        fprintf(stderr, "moetool run: out of memory\n");
        ret = MT_EXIT_FAIL;
    }
    free(rs);
    free(rg);
done:
    free(g_hash_cache);
    g_hash_cache = NULL;
    plan_free(&pl);
    recipe_free(r);
    return ret;
}
