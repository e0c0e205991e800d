/* generate.c — text generation: the prompt is prefilled in one batched
 * forward, then tokens are decoded one at a time through the KV cache.
 * Greedy by default (argmax, lowest id on ties); with temp > 0, softmax of
 * logits/temp, restricted to the smallest top-p nucleus, sampled with a
 * seeded PCG32 generator so that a seed reproduces its output. The EOS
 * token ends generation (when stop_at_eos) and is not emitted. */
#include "runtime_impl.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void mt_sample_opts_default(mt_sample_opts *o) {
    memset(o, 0, sizeof *o);
    o->n_predict = 64;
    o->temp = 0.0f;
    o->top_p = 1.0f;
    o->seed = 0;
    o->stop_at_eos = 1;
}

/* PCG32 (O'Neill, pcg32_random_r). */
typedef struct {
    uint64_t state, inc;
} pcg32;

static uint32_t pcg32_next(pcg32 *r) {
    uint64_t old = r->state;
    r->state = old * 6364136223846793005ULL + r->inc;
    uint32_t xs = (uint32_t)(((old >> 18u) ^ old) >> 27u);
    uint32_t rot = (uint32_t)(old >> 59u);
    return (xs >> rot) | (xs << ((-rot) & 31));
}

static void pcg32_seed(pcg32 *r, uint64_t seed) {
    r->state = 0;
    r->inc = (0x853c49e6748fea9bULL << 1u) | 1u;
    pcg32_next(r);
    r->state += seed;
    pcg32_next(r);
}

/* Uniform in [0, 1) with 53 random bits. */
static double pcg32_unit(pcg32 *r) {
    uint64_t a = pcg32_next(r) >> 5, b = pcg32_next(r) >> 6;
    return ((double)a * 67108864.0 + (double)b) / 9007199254740992.0;
}

static int argmax(const float *x, int n) {
    int am = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[am]) am = i;
    return am;
}

typedef struct {
    float p;
    int32_t id;
} prob_id;

static int cmp_prob_desc(const void *a, const void *b) {
    const prob_id *x = a, *y = b;
    if (x->p != y->p) return x->p < y->p ? 1 : -1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Temperature + nucleus sampling; `pi` is scratch of n entries. */
static int sample(const float *logits, int n, float temp, float top_p, pcg32 *rng, prob_id *pi) {
    float mx = -FLT_MAX;
    for (int i = 0; i < n; i++)
        if (logits[i] > mx) mx = logits[i];
    double sum = 0;
    for (int i = 0; i < n; i++) {
        float p = expf((logits[i] - mx) / temp);
        pi[i].p = p;
        pi[i].id = i;
        sum += p;
    }
    int keep = n;
    double mass = sum;
    if (top_p < 1.0f) {
        qsort(pi, (size_t)n, sizeof *pi, cmp_prob_desc);
        double cum = 0;
        for (int i = 0; i < n; i++) {
            cum += pi[i].p;
            if (cum >= (double)top_p * sum) {
                keep = i + 1;
                break;
            }
        }
        mass = 0;
        for (int i = 0; i < keep; i++) mass += pi[i].p;
    }
    double u = pcg32_unit(rng) * mass, acc = 0;
    for (int i = 0; i < keep; i++) {
        acc += pi[i].p;
        if (u < acc) return pi[i].id;
    }
    return pi[keep - 1].id;
}

int mt_generate(mt_model *m, const int32_t *prompt, int n_prompt, const mt_sample_opts *o, mt_token_fn on_token,
                void *user, int32_t *out_ids, int *n_out, mt_gen_timing *timing) {
    mt_sample_opts def;
    if (!o) {
        mt_sample_opts_default(&def);
        o = &def;
    }
    if (n_out) *n_out = 0;
    if (timing) memset(timing, 0, sizeof *timing);
    const mt_config *cf = mt_model_config(m);
    const int V = cf->vocab;
    if (n_prompt <= 0) return mt_seterr(MT_ERR_ARG, "generate: the prompt is empty (add at least a BOS token)");
    if (o->n_predict < 0) return mt_seterr(MT_ERR_ARG, "generate: n_predict %d is negative", o->n_predict);
    if (o->temp < 0 || !(o->top_p > 0.0f && o->top_p <= 1.0f))
        return mt_seterr(MT_ERR_ARG, "generate: temp %g must be >= 0 and top_p %g in (0, 1]", (double)o->temp,
                         (double)o->top_p);
    if (o->n_predict > 0 && !out_ids) return mt_seterr(MT_ERR_ARG, "generate: no output buffer");
    int max_pos = cf->max_pos > 0 && !o->allow_long_context ? cf->max_pos : INT32_MAX / 2;
    if (n_prompt > max_pos)
        return mt_seterr(MT_ERR_ARG, "generate: the prompt has %d tokens, more than the model's context of %d",
                         n_prompt, max_pos);
    /* The last generated token is never fed back, so n_prompt + n_predict - 1
     * positions suffice. */
    int64_t want = (int64_t)n_prompt + (o->n_predict > 0 ? o->n_predict - 1 : 0);
    int n_ctx = want > max_pos ? max_pos : (int)want;
    int eos = cf->eos_id;
    if (eos < 0 && mt_model_tokenizer(m)) eos = mt_tok_eos(mt_model_tokenizer(m));

    int st = MT_OK, n_gen = 0;
    mt_ctx *c = NULL;
    float *logits = malloc((size_t)V * sizeof *logits);
    prob_id *pi = o->temp > 0 ? malloc((size_t)V * sizeof *pi) : NULL;
    if (!logits || (o->temp > 0 && !pi)) {
        st = mt_seterr(MT_ERR_NOMEM, "generate: out of memory");
        goto done;
    }
    if ((st = mt_ctx_init(&c, m, n_ctx, n_prompt)) < 0) goto done;
    pcg32 rng;
    pcg32_seed(&rng, o->seed);

    double t0 = mt_now();
    if ((st = mt_ctx_forward(c, prompt, n_prompt, logits, 0)) < 0) goto done;
    double t1 = mt_now();
    if (timing) timing->prefill_s = t1 - t0;
    while (n_gen < o->n_predict) {
        int32_t id = o->temp > 0 ? sample(logits, V, o->temp, o->top_p, &rng, pi) : argmax(logits, V);
        if (o->stop_at_eos && id == eos) break;
        out_ids[n_gen++] = id;
        if (on_token && on_token(user, id)) break;
        if (n_gen == o->n_predict || mt_ctx_pos(c) >= n_ctx) break;
        if ((st = mt_ctx_forward(c, &id, 1, logits, 0)) < 0) goto done;
    }
    if (timing) {
        timing->decode_s = mt_now() - t1;
        timing->n_prompt = n_prompt;
        timing->n_gen = n_gen;
    }
    st = MT_OK;
done:
    if (n_out) *n_out = n_gen;
    mt_ctx_free(c);
    free(logits);
    free(pi);
    return st;
}
