/* distill.c — mt_distill: the training loop (data sampling, teacher logits,
 * step, schedule), the resumable checkpoint and the output directory.
 *
 * Data: the training text encoded once (BOS first); each sequence of a batch
 * starts at a uniform random offset (splitmix64 from the seed), so the RNG
 * state is the whole data position a checkpoint needs.
 *
 * Checkpoint "<out>.ckpt", written under "<out>.ckpt.tmp-<pid>-XXXXXX" and
 * renamed into place (fsync'd first):
 *   offset 0  "MTDSTCK1"                        magic + version
 *          8  u64 words[CK_WORDS]                shape, batch, steps, seed, init,
 *                                                options' hash, step done, RNG,
 *                                                tokens done, n_params
 *          .. f32 params[n], m[n], v[n]
 *          .. u64 FNV-1a of every byte before it
 * --resume refuses a file whose magic, size, checksum, shape or options
 * differ from this run's. */
#define _GNU_SOURCE
#include "distill_impl.h"
#include "reduce.h"

#include "moetool/mt_write.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char *g_init_names[MT_DISTILL_INIT_COUNT] = {"concat", "average", "random"};
int mt_distill_launcher_rank(void) { return dst_reduce_launcher_rank(); }

const char *mt_distill_init_name(int init) {
    return init >= 0 && init < MT_DISTILL_INIT_COUNT ? g_init_names[init] : "?";
}
int mt_distill_init_from_name(const char *s) {
    for (int i = 0; i < MT_DISTILL_INIT_COUNT; i++)
        if (!strcmp(s, g_init_names[i])) return i;
    return -1;
}

void mt_distill_opts_default(mt_distill_opts *o) {
    memset(o, 0, sizeof *o);
    o->init = MT_DISTILL_INIT_CONCAT;
    o->tokens = 524288;
    /* One set of defaults for both student kinds: for healing a merged MoE
     * they also gave the lowest perplexity of the settings compared in
     * docs/distill.md (KD weight 0.9 / 0.5 / 0.167, T 2 / 1, lr 3e-4 / 1e-3). */
    o->kd_weight = 0.5f;
    o->temperature = 1.0f;
    o->lr = 1e-3f;
    o->min_lr_frac = 0.1f;
    o->weight_decay = 0.01f;
    o->beta1 = 0.9f, o->beta2 = 0.95f;
    o->grad_clip = 1.0f;
    o->warmup = -1;
    o->batch = 16, o->seq = 256;
    o->init_tokens = 32768;
    o->seed = 1;
}

/* ---- checkpoint ---------------------------------------------------------------- */
enum { CK_L, CK_H, CK_NH, CK_NKV, CK_D, CK_F, CK_V, CK_B, CK_T, CK_STEPS, CK_SEED, CK_INIT, CK_OPTS, CK_STEP,
       CK_RNG, CK_TOKENS, CK_NPARAMS, CK_WORDS };

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

/* Hash of the options a resumed run must share (they shape the loss curve). */
static uint64_t opts_hash(const mt_distill_opts *o, int warmup, const dt_config *c, int topk) {
    const float f[] = {o->kd_weight, o->temperature, o->lr, o->min_lr_frac, o->weight_decay, o->beta1, o->beta2,
                       o->grad_clip};
    uint64_t h = fnv(0xcbf29ce484222325ull, f, sizeof f);
    h = fnv(h, &warmup, sizeof warmup);
    h = fnv(h, &o->tokens, sizeof o->tokens);
    if (c->n_experts) { /* a MoE student: its expert count and top-k too */
        const int ek[2] = {c->n_experts, c->top_k};
        h = fnv(h, ek, sizeof ek);
    }
    if (topk) h = fnv(h, &topk, sizeof topk); /* other data windows and KD target */
    return h;
}

static void ck_words(uint64_t *w, const dt_model *m, int steps, const mt_distill_opts *o, int warmup, int topk) {
    /* the global batch (o->batch), whatever the ranks: a checkpoint resumes under any rank count */
    const dt_config *c = &m->c;
    memset(w, 0, CK_WORDS * sizeof *w);
    w[CK_L] = c->n_layers, w[CK_H] = c->hidden, w[CK_NH] = c->n_heads, w[CK_NKV] = c->n_kv_heads;
    w[CK_D] = c->head_dim, w[CK_F] = c->ffn, w[CK_V] = c->vocab, w[CK_B] = (uint64_t)o->batch, w[CK_T] = m->T;
    w[CK_STEPS] = (uint64_t)steps, w[CK_SEED] = o->seed, w[CK_INIT] = (uint64_t)o->init;
    w[CK_OPTS] = opts_hash(o, warmup, c, topk), w[CK_NPARAMS] = m->n_params;
}

static int write_all(int fd, const void *p, size_t n, uint64_t *h) {
    *h = fnv(*h, p, n);
    const char *b = p;
    while (n) {
        ssize_t k = write(fd, b, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return -1;
        b += k, n -= (size_t)k;
    }
    return 0;
}

/* Whether path is a plain file that begins with magic (8 bytes): only such a
 * file (a checkpoint, a logit cache) is replaced or removed without --force. */
int dst_file_is_ours(const char *path, const char *magic) {
    struct stat sb;
    if (lstat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) return 0;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    char head[8];
    const int ours = fd >= 0 && read(fd, head, sizeof head) == (ssize_t)sizeof head && !memcmp(head, magic, 8);
    if (fd >= 0) close(fd);
    return ours;
}
static int ckpt_is_ours(const char *path) { return dst_file_is_ours(path, "MTDSTCK1"); }


static int ckpt_save(const char *path, const dt_model *m, const uint64_t *words) {
    char *tmp = NULL;
    const int fd = mt_output_tmp_create(path, &tmp);
    if (fd < 0) return fd;
    uint64_t h = 0xcbf29ce484222325ull;
    const size_t nb = m->n_params * sizeof(float);
    int bad = write_all(fd, "MTDSTCK1", 8, &h) || write_all(fd, words, CK_WORDS * sizeof *words, &h) ||
              write_all(fd, m->params, nb, &h) || write_all(fd, m->m, nb, &h) || write_all(fd, m->v, nb, &h);
    uint64_t h2 = h;
    bad = bad || write_all(fd, &h2, sizeof h2, &h) || fsync(fd) != 0;
    bad = close(fd) != 0 || bad;
    if (bad || rename(tmp, path) != 0) {
        int st = mt_seterr(MT_ERR_IO, "%s: cannot write the checkpoint: %s", path, strerror(errno));
        unlink(tmp);
        mt_output_tmp_forget(tmp);
        free(tmp);
        return st;
    }
    mt_output_tmp_forget(tmp);
    free(tmp);
    return MT_OK;
}

static int ckpt_load(const char *path, dt_model *m, const uint64_t *want, uint64_t *words) {
    FILE *f = fopen(path, "rb");
    if (!f) return mt_seterr(MT_ERR_NOT_FOUND, "%s: no checkpoint to resume from: %s", path, strerror(errno));
    const size_t nb = m->n_params * sizeof(float);
    const size_t total = 8 + CK_WORDS * 8 + 3 * nb + 8;
    int st = MT_OK;
    struct stat sb;
    char magic[8];
    uint64_t h = 0xcbf29ce484222325ull, stored = 0;
    if (fstat(fileno(f), &sb) != 0 || (uint64_t)sb.st_size != total) {
        st = mt_seterr(MT_ERR_FORMAT, "%s: checkpoint is %lld bytes, this run's student needs %zu (different "
                       "options or a truncated file)", path, (long long)sb.st_size, total);
        goto done;
    }
    if (fread(magic, 1, 8, f) != 8 || memcmp(magic, "MTDSTCK1", 8) ||
        fread(words, 8, CK_WORDS, f) != CK_WORDS || fread(m->params, 1, nb, f) != nb || fread(m->m, 1, nb, f) != nb ||
        fread(m->v, 1, nb, f) != nb || fread(&stored, 8, 1, f) != 1) {
        st = mt_seterr(MT_ERR_FORMAT, "%s: not a moetool distill checkpoint", path);
        goto done;
    }
    h = fnv(h, magic, 8);
    h = fnv(h, words, CK_WORDS * 8);
    h = fnv(h, m->params, nb), h = fnv(h, m->m, nb), h = fnv(h, m->v, nb);
    if (h != stored) {
        st = mt_seterr(MT_ERR_FORMAT, "%s: checkpoint checksum mismatch (corrupt file)", path);
        goto done;
    }
    for (int i = 0; i < CK_WORDS; i++)
        if (i != CK_STEP && i != CK_RNG && i != CK_TOKENS && words[i] != want[i]) {
            static const char *names[CK_WORDS] = {"layers", "hidden", "heads", "kv heads", "head dim", "width",
                                                  "vocab", "batch", "seq", "steps", "seed", "init",
                                                  "training options (kd-weight, temperature, lr, warmup, tokens)"};
            st = mt_seterr(MT_ERR_FORMAT, "%s: checkpoint was written with other options or another teacher "
                           "(%s: %llu, this run %llu)", path, names[i] ? names[i] : "shape",
                           (unsigned long long)words[i], (unsigned long long)want[i]);
            goto done;
        }
    if (words[CK_STEP] > words[CK_STEPS]) st = mt_seterr(MT_ERR_FORMAT, "%s: checkpoint step out of range", path);
done:
    fclose(f);
    return st;
}

/* ---- the run -------------------------------------------------------------------- */
/* A MoE student must read text as the teacher does: same vocabulary and,
 * when it has a tokenizer, the same ids for the start of the data. */
static int check_student_tokens(mt_model *s, const char *spath, const mt_tokenizer *ttz, int V, const char *data,
                                const int32_t *ids, size_t n_ids) {
    const int sv = mt_model_config(s)->vocab;
    if (sv != V)
        return mt_seterr(MT_ERR_FORMAT, "%s: the student's vocabulary has %d tokens, the teacher's %d: different "
                         "tokenizers cannot be distilled", spath, sv, V);
    const mt_tokenizer *stz = mt_model_tokenizer(s);
    if (!stz || stz == ttz) return MT_OK;
    int32_t *sid = NULL;
    size_t n = 0;
    int st = mt_tok_encode_file(stz, data, 4096, &sid, &n, NULL);
    if (st) return st;
    if (n > 4096) n = 4096;
    if (n > n_ids) n = n_ids;
    for (size_t i = 0; i < n; i++)
        if (sid[i] != ids[i]) {
            st = mt_seterr(MT_ERR_FORMAT, "%s: the student's tokenizer encodes %s differently from the teacher's (token %zu: "
                           "%d vs %d)", spath, data, i, sid[i], ids[i]);
            break;
        }
    free(sid);
    return st;
}

/* ---- data parallel (reduce.h) ----------------------------------------------------
 * Ranks meet at agreement points: after the setup, at every step (with the
 * step's loss sums), after each checkpoint and after the output is written.
 * A rank that failed between two of them joins the next one from its exit
 * path, so no rank waits for one that left. Each point reduces the same
 * PAR_WORDS floats: rank 0's status, the number of other ranks that failed,
 * the loss, CE and KD parts of this rank's rows (0 outside a step). */
enum { PAR_ST0, PAR_NFAIL, PAR_LOSS, PAR_CE, PAR_KD, PAR_WORDS };
typedef struct {
    dst_reduce r;
    int stopped;     /* a failure was agreed on: no more collectives */
    int quiet_error; /* this rank's error is rank 0's to report      */
} par_state;

/* Agrees on st across ranks; v (PAR_WORDS, may be NULL) is summed in
 * place. Returns this rank's status: its own error, rank 0's (reported
 * there: this rank stays quiet) or one naming the ranks that failed. */
static int par_agree(par_state *p, int st, float *v) {
    if (p->r.size == 1 || p->stopped) return st;
    float w[PAR_WORDS] = {0};
    if (v) memcpy(w, v, sizeof w);
    w[PAR_ST0] = p->r.rank == 0 ? (float)st : 0.0f;
    w[PAR_NFAIL] = p->r.rank != 0 && st ? 1.0f : 0.0f;
    const int rc = p->r.allreduce_sum(&p->r, w, PAR_WORDS);
    if (rc) {
        p->stopped = 1;
        return st ? st : rc;
    }
    if (v) memcpy(v, w, sizeof w);
    const int st0 = (int)w[PAR_ST0], nfail = (int)w[PAR_NFAIL];
    if (!st0 && !nfail) return MT_OK;
    p->stopped = 1;
    if (p->r.rank != 0) {
        if (st0) p->quiet_error = 1; /* rank 0 names the problem (the same one, as a rule) */
        if (st) return st0 ? st0 : st;
        p->quiet_error = 1;
        return mt_seterr(st0 ? st0 : MT_ERR_INTERNAL, "stopped: another rank failed");
    }
    if (st) return st;
    return mt_seterr(MT_ERR_INTERNAL, "%d of the other %d ranks failed (their errors are printed above)",
                     nfail, p->r.size - 1);
}

/* Rank 0's n floats on every rank (the others' are zeroed and summed in). */
static int par_bcast0(par_state *p, float *x, size_t n) {
    if (p->r.size == 1) return MT_OK;
    if (p->r.rank != 0) memset(x, 0, n * sizeof *x);
    const int st = p->r.allreduce_sum(&p->r, x, n);
    if (st) p->stopped = 1;
    return st;
}

int mt_distill(const char *teacher_path, const char *out_path, const mt_distill_opts *o, mt_distill_report *rep) {
    mt_model *t = NULL, *smodel = NULL;
    mt_backend *be = NULL;
    mt_outdir *od = NULL;
    mt_ctx *tctx = NULL;
    dt_model m;
    memset(&m, 0, sizeof m);
    mt_config sc;
    memset(&sc, 0, sizeof sc);
    int32_t *ids = NULL, *text_ids = NULL, *tok = NULL, *tgt = NULL;
    float *tlog = NULL;
    char *ck_path = NULL, *lc_path = NULL;
    dst_cache lc;
    memset(&lc, 0, sizeof lc);
    mt_distill_report r0;
    mt_distill_report *R = rep ? rep : &r0;
    par_state par;
    memset(&par, 0, sizeof par);
    int st;
    memset(R, 0, sizeof *R);
    R->rank = 0, R->ranks = 1;
    /* errors before the ranks meet are every rank's alike: rank 0 reports them */
    R->quiet_error = dst_reduce_launcher_rank() != 0;
    if (!teacher_path || !out_path || !o) return mt_seterr(MT_ERR_ARG, "distill: missing teacher, output or options");
    if (!o->data_path) return mt_seterr(MT_ERR_ARG, "distill: --data FILE is required");
    if (o->init < 0 || o->init >= MT_DISTILL_INIT_COUNT) return mt_seterr(MT_ERR_ARG, "distill: unknown init %d", o->init);
    if (o->batch < 1 || o->seq < 2 || o->tokens < 1 || o->width < 0 || !(o->lr > 0) || !(o->temperature > 0) ||
        !(o->kd_weight >= 0 && o->kd_weight <= 1) || o->ckpt_every < 0)
        return mt_seterr(MT_ERR_ARG, "distill: batch, seq, tokens, width, lr, temperature or kd-weight out of range");
    if ((st = dst_reduce_init(&par.r))) return st; /* every rank refuses alike */
    const int rank = par.r.rank, ranks = par.r.size, lead = rank == 0;
    R->rank = rank, R->ranks = ranks;
    R->quiet_error = 0;

    if (o->student_path && (o->width || o->init != MT_DISTILL_INIT_CONCAT)) {
        st = mt_seterr(MT_ERR_ARG, "--width and --init shape a dense student; a MoE student (%s) keeps its "
                       "own experts", o->student_path);
        goto done;
    }
    const char *in[] = {o->data_path, o->student_path};
    const int n_in = o->student_path ? 2 : 1;
    if (o->batch < ranks) {
        st = mt_seterr(MT_ERR_ARG, "--batch %d is smaller than the %d ranks: every rank needs at least one sequence "
                       "of the batch", o->batch, ranks);
        goto done;
    }
    /* Outputs (OUT, OUT.ckpt, the logit cache) are rank 0's alone: only it
     * checks, writes and removes them; the others learn its verdict at the
     * first agreement point. */
    if (lead && (st = mt_output_check(out_path, MT_OUTPUT_HF_DIR, o->force, teacher_path, in, n_in))) goto done;
    if (asprintf(&ck_path, "%s.ckpt", out_path) < 0) {
        st = mt_seterr(MT_ERR_NOMEM, "out of memory");
        goto done;
    }
    /* The checkpoint is an output too: never an input, and an existing file
     * there is replaced (and removed at the end) only when it is a previous
     * checkpoint or with --force; this also sweeps dead runs' temporaries. */
    if (lead &&
        (st = mt_output_check(ck_path, MT_OUTPUT_GGUF, o->force || ckpt_is_ours(ck_path), teacher_path, in, n_in)))
        goto done;

    if (o->topk_logits > 0 && o->kd_weight > 0) {
        if (o->logit_cache ? !(lc_path = strdup(o->logit_cache)) : asprintf(&lc_path, "%s.logits", out_path) < 0) {
            lc_path = NULL;
            st = mt_seterr(MT_ERR_NOMEM, "out of memory");
            goto done;
        }
        /* an output that is also read back: a file there must be a logit cache (or --force) */
        if (lead && (st = mt_output_check(lc_path, MT_OUTPUT_GGUF, o->force || dst_file_is_ours(lc_path, "MTDSTLC1"),
                                          teacher_path, in, n_in)))
            goto done;
    }
    mt_model_opts mo;
    mt_model_opts_default(&mo);
    mo.n_threads = o->n_threads;
    if (!mo.n_threads && ranks > 1) { /* the machine's cores shared by the ranks on it, not each taking all */
        const long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        const int local = dst_reduce_local_size(ranks);
        mo.n_threads = ncpu > local ? (int)(ncpu / local) : 1;
    }
    if ((st = mt_model_load(&t, teacher_path, &mo))) goto done;
    const mt_config *tc = mt_model_config(t);
    if (tc->n_experts == 0) {
        st = mt_seterr(MT_ERR_UNSUPPORTED, "%s: the teacher is dense (no experts); distill reads a MoE teacher", teacher_path);
        goto done;
    }
    if (tc->quant != MT_QFMT_NONE || mt_config_has_alias(tc)) {
        st = mt_seterr(MT_ERR_UNSUPPORTED, "%s: quantized or alias-routed teacher; distill reads unquantized "
                       "experts with one router row each", teacher_path);
        goto done;
    }
    const mt_tokenizer *tz = mt_model_tokenizer(t);
    if (!tz) {
        st = mt_seterr(MT_ERR_NOT_FOUND, "%s: no tokenizer to encode the training text with: %s", teacher_path,
                       mt_model_tokenizer_error(t));
        goto done;
    }
    const int width = o->width ? o->width : tc->top_k * tc->ffn;
    const int B = o->batch, T = o->seq, V = tc->vocab;
    if (tc->max_pos > 0 && T > tc->max_pos) {
        st = mt_seterr(MT_ERR_ARG, "--seq %d is longer than the teacher's context of %d", T, tc->max_pos);
        goto done;
    }

    size_t n_text = 0, n_ids;
    if ((st = mt_tok_encode_file(tz, o->data_path, 0, &text_ids, &n_text, NULL))) goto done;
    const int bos = mt_tok_bos(tz);
    if (!(ids = malloc((n_text + 1) * sizeof *ids))) {
        st = mt_seterr(MT_ERR_NOMEM, "%s: out of memory", o->data_path);
        goto done;
    }
    n_ids = 0;
    if (bos >= 0) ids[n_ids++] = bos;
    memcpy(ids + n_ids, text_ids, n_text * sizeof *ids);
    n_ids += n_text;
    for (size_t i = 0; i < n_ids; i++)
        if (ids[i] < 0 || ids[i] >= V) {
            st = mt_seterr(MT_ERR_FORMAT, "%s: token id %d outside the teacher's vocabulary of %d (tokenizer and "
                           "model disagree)", o->data_path, ids[i], V);
            goto done;
        }
    if (n_ids < (size_t)T + 1) {
        st = mt_seterr(MT_ERR_FORMAT, "%s: %zu tokens, too short for one sequence of --seq %d (+1 target)", o->data_path,
                       n_ids, T);
        goto done;
    }
    const uint64_t per_step = (uint64_t)B * T;
    const int steps = (int)((o->tokens + per_step - 1) / per_step);
    const int warmup = o->warmup >= 0 ? o->warmup : steps / 20;

    dt_config dc;
    if (o->student_path) {
        if ((st = mt_model_load(&smodel, o->student_path, &mo))) goto done;
        if ((st = dst_moe_config(&dc, &sc, smodel, o->student_path))) goto done;
        if ((st = check_student_tokens(smodel, o->student_path, tz, V, o->data_path, text_ids, n_text))) goto done;
        if (mt_model_config(smodel)->max_pos > 0 && T > mt_model_config(smodel)->max_pos) {
            st = mt_seterr(MT_ERR_ARG, "--seq %d is longer than the student's context of %d", T,
                           mt_model_config(smodel)->max_pos);
            goto done;
        }
    } else {
        dst_engine_config(&dc, tc, width);
        if ((st = dst_student_config(&sc, tc, width))) goto done;
    }
    if (lead && (st = mt_outdir_open(&od, out_path))) goto done;
    if ((st = mt_backend_cpu_init(&be, mt_model_threads(t)))) goto done;
    /* this rank's sequences of each batch: [b0, b0 + Bl) (uneven when ranks do not divide B) */
    const int b0 = (int)((int64_t)B * rank / ranks), Bl = (int)((int64_t)B * (rank + 1) / ranks) - b0;
    if ((st = dt_model_init(&m, &dc, Bl, T, be))) goto done;

    uint64_t rng = o->seed * 0x2545f4914f6cdd1dull + 1, words[CK_WORDS], want[CK_WORDS];
    uint64_t tokens_done = 0;
    int start = 0;
    const int topk = o->kd_weight > 0 ? o->topk_logits : 0;
    ck_words(want, &m, steps, o, warmup, topk);
    /* Every rank reads the checkpoint (read only) or builds the same student;
     * concat and average, which run the teacher on --init-tokens, are built
     * by rank 0 and sent (they draw nothing from the RNG). */
    const int init_on_lead = ranks > 1 && !o->resume && !smodel && o->init != MT_DISTILL_INIT_RANDOM;
    if (o->resume) {
        if ((st = ckpt_load(ck_path, &m, want, words))) goto done;
        start = (int)words[CK_STEP], rng = words[CK_RNG], tokens_done = words[CK_TOKENS];
    } else if (lead || !init_on_lead) {
        if (lead && o->progress) o->progress(o->progress_user, "distill: init", 0, 1);
        if (smodel) st = dst_student_from_moe(&m, smodel);
        else st = dst_student_from_teacher(&m, t, o->init, ids, n_ids, o->init_tokens, T, &rng);
        if (st) goto done;
    }
    mt_model_free(smodel); /* its weights are in the engine now */
    smodel = NULL;
    tok = malloc((size_t)per_step * sizeof *tok);
    tgt = malloc((size_t)per_step * sizeof *tgt);
    /* this rank's rows; the logit cache's builder (rank 0) needs one window */
    if (o->kd_weight > 0) tlog = malloc((size_t)(Bl > 1 ? Bl : 1) * T * V * sizeof *tlog);
    if (!tok || !tgt || (o->kd_weight > 0 && !tlog)) {
        st = mt_seterr(MT_ERR_NOMEM, "distill: out of memory for a batch of %d x %d", B, T);
        goto done;
    }
    if (o->kd_weight > 0 && (st = mt_ctx_init(&tctx, t, T, T))) goto done;
    const int n_win = (int)((n_ids - 1) / (size_t)T);
    if (topk) {
        if (topk > V) {
            st = mt_seterr(MT_ERR_ARG, "--topk-logits %d is larger than the vocabulary of %d", topk, V);
            goto done;
        }
    }
    if (topk && lead) { /* rank 0 alone computes and writes the cache; the others read it once it is complete */
        if ((st = dst_cache_open(&lc, lc_path, dst_cache_key(t, ids, n_ids, topk, T), topk, T, n_win))) goto done;
        /* the windows this run will read (the data order is the RNG's), computed now when missing */
        uint64_t r2 = rng;
        int n_new = 0;
        for (int s = start; s < steps; s++)
            for (int b = 0; b < B; b++) {
                const int w = (int)(dst_rng_next(&r2) % (uint64_t)n_win);
                if (lc.slot[w] >= 0) continue;
                if (o->progress)
                    o->progress(o->progress_user, "distill: teacher top-K logits", (uint64_t)(s - start),
                                (uint64_t)(steps - start));
                if ((st = dst_teacher_logits(tctx, ids + (size_t)w * T, 1, T, V, tlog)) ||
                    (st = dst_cache_add(&lc, w, tlog, V)))
                    goto done;
                n_new++;
            }
        R->cache_computed = n_new;
        if (n_new && (st = dst_cache_save(&lc, lc_path, &R->cache_bytes))) goto done;
        if (!n_new) {
            struct stat sb;
            R->cache_bytes = stat(lc_path, &sb) == 0 ? (uint64_t)sb.st_size : 0;
        }
        R->cache_windows = lc.n;
        R->cache_bytes_per_token = lc.n ? (double)R->cache_bytes / ((double)lc.n * T) : 0;
    }
    /* the setup's agreement: every rank is ready (rank 0's outputs checked, its cache written) */
    if ((st = par_agree(&par, MT_OK, NULL))) goto done;
    if (init_on_lead && (st = par_bcast0(&par, m.params, m.n_params))) goto done;
    if (topk && !lead) {
        if ((st = dst_cache_open(&lc, lc_path, dst_cache_key(t, ids, n_ids, topk, T), topk, T, n_win))) goto done;
    }

    R->steps = steps, R->start_step = start, R->width = dc.n_experts ? dc.ffn : width, R->init = o->init;
    R->n_experts = dc.n_experts, R->top_k = dc.top_k;
    R->kd_weight = o->kd_weight, R->temperature = o->temperature, R->lr = o->lr;
    R->student_params = m.n_params;
    const dt_adamw adam0 = {o->lr, o->beta1, o->beta2, 1e-8f, o->weight_decay};
    const double t0 = mt_now();
    for (int s = start; s < steps; s++) {
        /* every rank draws the whole batch (the RNG stays the same on all) and keeps its own sequences */
        for (int gb = 0; gb < B; gb++) {
            const int b = gb - b0, mine = b >= 0 && b < Bl;
            size_t off;
            if (topk) { /* an aligned window and its cached teacher logits */
                const int w = (int)(dst_rng_next(&rng) % (uint64_t)n_win), slot = lc.slot[w];
                const size_t per = (size_t)T * topk;
                off = (size_t)w * T;
                if (mine)
                    dst_topk_expand(lc.ids + slot * per, lc.vals + slot * per, T, V, topk, tlog + (size_t)b * T * V);
            } else {
                off = (size_t)(dst_rng_next(&rng) % (uint64_t)(n_ids - (size_t)T));
            }
            if (!mine) continue;
            memcpy(tok + (size_t)b * T, ids + off, (size_t)T * sizeof *tok);
            memcpy(tgt + (size_t)b * T, ids + off + 1, (size_t)T * sizeof *tgt);
        }
        if (tctx && !topk && (st = dst_teacher_logits(tctx, tok, Bl, T, V, tlog))) goto done;
        dt_forward(&m, tok);
        dt_loss L = dt_loss_backward_logits_part(&m, tgt, tlog, o->kd_weight, o->temperature, (double)per_step);
        if (ranks > 1) { /* the batch's loss: the sum of the ranks' parts (in float) */
            float v[PAR_WORDS] = {0};
            v[PAR_LOSS] = (float)L.loss, v[PAR_CE] = (float)L.ce, v[PAR_KD] = (float)L.kd;
            if ((st = par_agree(&par, MT_OK, v))) goto done;
            L.loss = v[PAR_LOSS], L.ce = v[PAR_CE], L.kd = v[PAR_KD];
        }
        if (!isfinite(L.loss)) {
            st = mt_seterr(MT_ERR_INTERNAL, "step %d: loss is %s; stopped%s", s + 1, isnan(L.loss) ? "NaN" : "infinite",
                           o->ckpt_every ? " (the last checkpoint is kept)" : "");
            goto done;
        }
        dt_backward(&m, tok);
        /* the batch's gradient on every rank: the same clipping and step everywhere */
        if (ranks > 1 && (st = par.r.allreduce_sum(&par.r, m.grads, m.n_params))) {
            par.stopped = 1;
            goto done;
        }
        const double gn = dt_clip_grads(&m, o->grad_clip);
        dt_adamw adam = adam0;
        adam.lr = dt_lr_schedule(s, steps, warmup, o->lr, o->min_lr_frac);
        dt_adamw_step(&m, &adam, s + 1);
        tokens_done += per_step;
        const double el = mt_now() - t0;
        if (s == start) R->first_loss = L.loss;
        R->last_loss = L.loss, R->last_ce = L.ce, R->last_kd = L.kd;
        R->tokens = tokens_done;
        R->seconds = el;
        R->tokens_per_s = el > 0 ? (double)(s + 1 - start) * per_step / el : 0;
        if (lead && o->on_step) {
            mt_distill_step ev = {s + 1, steps, tokens_done, L.loss, L.ce, L.kd, adam.lr, gn, R->tokens_per_s,
                                  el / (s + 1 - start) * (steps - s - 1)};
            o->on_step(o->step_user, &ev);
        }
        if (lead && o->progress) {
            char what[128];
            snprintf(what, sizeof what, "distill: step; loss %.4f KD %.4f CE %.4f, %.0f tok/s", L.loss, L.kd, L.ce,
                     R->tokens_per_s);
            o->progress(o->progress_user, what, (uint64_t)s + 1, (uint64_t)steps);
        }
        if (o->ckpt_every && (s + 1) % o->ckpt_every == 0 && s + 1 < steps) {
            memcpy(words, want, sizeof words);
            words[CK_STEP] = (uint64_t)s + 1, words[CK_RNG] = rng, words[CK_TOKENS] = tokens_done;
            if (lead && (st = ckpt_save(ck_path, &m, words))) goto done;
            if ((st = par_agree(&par, MT_OK, NULL))) goto done;
        }
    }

    if (lead) {
        if ((st = dst_write_hf(&m, m.params, &sc, mt_model_ckpt(t), mt_outdir_path(od), 1))) goto done;
        st = mt_outdir_commit(od); /* frees od whatever the outcome */
        od = NULL;
        if (st) goto done;
        if (ckpt_is_ours(ck_path)) unlink(ck_path); /* the output is in place: nothing left to resume */
    }
    st = par_agree(&par, MT_OK, NULL); /* every rank ends once the output is in place */
done:
    /* a rank that failed between two agreement points joins the next one here */
    if (st && !par.stopped) st = par_agree(&par, st, NULL);
    R->quiet_error = R->quiet_error || par.quiet_error;
    if (par.r.finalize) par.r.finalize(&par.r);
    mt_outdir_free(od);
    mt_ctx_free(tctx);
    dt_model_free(&m);
    mt_backend_free(be);
    mt_config_free(&sc);
    mt_model_free(smodel);
    mt_model_free(t);
    free(ids);
    free(text_ids);
    free(tok);
    free(tgt);
    free(tlog);
    free(ck_path);
    free(lc_path);
    dst_cache_free(&lc);
    return st;
}
