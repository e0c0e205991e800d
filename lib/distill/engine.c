/* engine.c — forward, backward, loss and AdamW of the student: embedding,
 * RMSNorm, RoPE attention with GQA and causal mask, then per layer either a
 * SwiGLU FFN (dense, Mistral layout) or a Mixtral MoE block (router logits,
 * softmax, top-k, gates renormalised over the chosen experts, SwiGLU
 * experts, gate-weighted sum); lm_head; cross-entropy + forward KL at
 * temperature T. Every matrix product goes through the backend's gemm_f32;
 * the element-wise ops are plain loops here (each is its own reference;
 * tests/test_distill.c checks every backward against finite differences of
 * an f64 forward).
 *
 * Conventions follow Hugging Face's MistralForCausalLM and
 * MixtralForCausalLM exactly (RoPE rotate_half, angles rounded to f32 as
 * mt_be_rope_tables computes them, RMSNorm x·rsqrt(mean x² + eps)·w, top-k
 * over the softmax probabilities, experts summed in index order), so a
 * checkpoint written from the parameters computes the same function in
 * transformers. */
#include "engine_impl.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static void gemm(mt_backend *be, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc) {
    be->ops->gemm_f32(be, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* ---- parameter layout --------------------------------------------------- */
static void add_param(dt_model *m, dt_kind kind, int layer, int rows, int cols) {
    dt_param *p = &m->table[m->n_table++];
    p->kind = kind, p->layer = layer, p->rows = rows, p->cols = cols, p->expert = -1;
    p->offset = m->n_params;
    m->n_params += (size_t)rows * cols;
}

static void bind(dt_tensors *t, const dt_model *m, float *base) {
    for (int i = 0; i < m->n_table; i++) {
        const dt_param *p = &m->table[i];
        float *x = base + p->offset;
        dt_layer *L = p->layer >= 0 ? &t->layers[p->layer] : NULL;
        switch (p->kind) {
        case DT_EMBD: t->embd = x; break;
        case DT_ATTN_NORM: L->attn_norm = x; break;
        case DT_WQ: L->wq = x; break;
        case DT_WK: L->wk = x; break;
        case DT_WV: L->wv = x; break;
        case DT_WO: L->wo = x; break;
        case DT_FFN_NORM: L->ffn_norm = x; break;
        case DT_W1: L->w1 = x; break;
        case DT_W3: L->w3 = x; break;
        case DT_W2: L->w2 = x; break;
        case DT_OUT_NORM: t->out_norm = x; break;
        case DT_LM_HEAD: t->lm_head = x; break;
        case DT_ROUTER: L->router = x; break;
        case DT_EW1: if (p->expert == 0) L->ew1 = x; break;
        case DT_EW3: if (p->expert == 0) L->ew3 = x; break;
        case DT_EW2: if (p->expert == 0) L->ew2 = x; break;
        }
    }
}

int dt_param_find(const dt_model *m, dt_kind kind, int layer, int expert) {
    for (int i = 0; i < m->n_table; i++)
        if (m->table[i].kind == kind && m->table[i].layer == layer && m->table[i].expert == expert) return i;
    return -1;
}

int dt_model_init(dt_model *m, const dt_config *c, int B, int T, mt_backend *be) {
    memset(m, 0, sizeof *m);
    if (c->n_layers < 1 || c->hidden < 1 || c->n_heads < 1 || c->n_kv_heads < 1 || c->n_heads % c->n_kv_heads ||
        c->head_dim < 2 || c->head_dim % 2 || c->ffn < 1 || c->vocab < 2 || B < 1 || T < 1 || c->n_experts < 0 ||
        (c->n_experts > 0 && (c->top_k < 1 || c->top_k > c->n_experts)))
        return mt_seterr(MT_ERR_ARG, "distill: student shape out of range");
    m->c = *c, m->B = B, m->T = T, m->be = be;
    const int L = c->n_layers, H = c->hidden, QD = c->n_heads * c->head_dim, KD = c->n_kv_heads * c->head_dim;
    const int F = c->ffn, V = c->vocab, E = c->n_experts, K = E ? c->top_k : 1;
    const size_t N = (size_t)B * T, R = N * K;
    m->table = calloc((size_t)(10 + 3 * E) * L + 3, sizeof *m->table);
    m->p.layers = calloc((size_t)L, sizeof(dt_layer));
    m->g.layers = calloc((size_t)L, sizeof(dt_layer));
    if (!m->table || !m->p.layers || !m->g.layers) goto oom;
    add_param(m, DT_EMBD, -1, V, H);
    for (int l = 0; l < L; l++) {
        add_param(m, DT_ATTN_NORM, l, 1, H);
        add_param(m, DT_WQ, l, QD, H);
        add_param(m, DT_WK, l, KD, H);
        add_param(m, DT_WV, l, KD, H);
        add_param(m, DT_WO, l, H, QD);
        add_param(m, DT_FFN_NORM, l, 1, H);
        if (E) {
            add_param(m, DT_ROUTER, l, E, H);
            static const dt_kind ek[3] = {DT_EW1, DT_EW3, DT_EW2};
            for (int k = 0; k < 3; k++)
                for (int e = 0; e < E; e++) {
                    add_param(m, ek[k], l, k == 2 ? H : F, k == 2 ? F : H);
                    m->table[m->n_table - 1].expert = e;
                }
        } else {
            add_param(m, DT_W1, l, F, H);
            add_param(m, DT_W3, l, F, H);
            add_param(m, DT_W2, l, H, F);
        }
    }
    add_param(m, DT_OUT_NORM, -1, 1, H);
    add_param(m, DT_LM_HEAD, -1, V, H);
    m->params = calloc(m->n_params, sizeof(float));
    m->grads = calloc(m->n_params, sizeof(float));
    m->m = calloc(m->n_params, sizeof(float));
    m->v = calloc(m->n_params, sizeof(float));
    if (!m->params || !m->grads || !m->m || !m->v) goto oom;
    bind(&m->p, m, m->params);
    bind(&m->g, m, m->grads);

    /* activations: sizes first, one block */
    const size_t sz[] = {
        (size_t)(L + 1) * N * H,      /* res   */
        (size_t)L * N * H,            /* xn1   */
        (size_t)L * N,                /* rstd1 */
        (size_t)L * N * QD,           /* q     */
        (size_t)L * N * KD,           /* k     */
        (size_t)L * N * KD,           /* v     */
        (size_t)L * B * c->n_heads * T * T, /* att */
        (size_t)L * N * QD,           /* atto  */
        (size_t)L * N * H,            /* mid   */
        (size_t)L * N * H,            /* xn2   */
        (size_t)L * N,                /* rstd2 */
        (size_t)L * R * F,            /* h1    */
        (size_t)L * R * F,            /* h3    */
        (size_t)L * R * F,            /* hg    */
        N * H,                        /* xnf   */
        N,                            /* rstdf */
        N * V,                        /* logits */
        E ? (size_t)L * R * H : 0,    /* eo    */
        E ? (size_t)L * N * K : 0,    /* gate  */
    };
    float **ptr[] = {&m->a.res, &m->a.xn1, &m->a.rstd1, &m->a.q, &m->a.k, &m->a.v, &m->a.att, &m->a.atto,
                     &m->a.mid, &m->a.xn2, &m->a.rstd2, &m->a.h1, &m->a.h3, &m->a.hg, &m->a.xnf, &m->a.rstdf,
                     &m->a.logits, &m->a.eo, &m->a.gate};
    size_t total = 0;
    for (size_t i = 0; i < sizeof sz / sizeof sz[0]; i++) total += sz[i];
    float *blk = m->act_block = malloc(total * sizeof(float));
    if (!blk) goto oom;
    for (size_t i = 0; i < sizeof sz / sizeof sz[0]; i++) *ptr[i] = blk, blk += sz[i];

    const size_t ssz[] = {N * H, N * H, N * QD, N * KD, N * KD, N * QD, R * F, R * F, R * F, (size_t)T * T, (size_t)3 * V,
                          (size_t)T * (c->head_dim / 2), (size_t)T * (c->head_dim / 2), E ? R * H : 0, E ? R * H : 0,
                          E ? R * H : 0, N * (size_t)E, E ? N * K : 0};
    float **sptr[] = {&m->s.dres, &m->s.dx, &m->s.dq, &m->s.dk, &m->s.dv, &m->s.datto, &m->s.dh1, &m->s.dh3,
                      &m->s.dhg, &m->s.datt, &m->s.rowq, &m->rope_cos, &m->rope_sin, &m->s.xg, &m->s.dxg,
                      &m->s.deo, &m->s.dz, &m->s.dgate};
    total = 0;
    for (size_t i = 0; i < sizeof ssz / sizeof ssz[0]; i++) total += ssz[i];
    blk = m->scratch_block = malloc(total * sizeof(float));
    if (!blk) goto oom;
    for (size_t i = 0; i < sizeof ssz / sizeof ssz[0]; i++) *sptr[i] = blk, blk += ssz[i];
    if (E) {
        int32_t *ib = m->int_block = malloc(((size_t)L * N * K + (size_t)L * R + (size_t)L * (E + 1)) * sizeof(int32_t));
        if (!ib) goto oom;
        m->a.sel = ib, m->a.asg = ib + (size_t)L * N * K, m->a.eoff = m->a.asg + (size_t)L * R;
    }
    mt_be_rope_tables(m->rope_cos, m->rope_sin, T, c->head_dim, c->rope_theta);
    return MT_OK;
oom:
    dt_model_free(m);
    return mt_seterr(MT_ERR_NOMEM, "distill: out of memory for the student (%zu parameters, batch %d x %d)",
                     m->n_params, B, T);
}

void dt_model_free(dt_model *m) {
    if (!m) return;
    free(m->table);
    free(m->p.layers);
    free(m->g.layers);
    free(m->params);
    free(m->grads);
    free(m->m);
    free(m->v);
    free(m->act_block);
    free(m->scratch_block);
    free(m->int_block);
    memset(m, 0, sizeof *m);
}

/* ---- element-wise ops ----------------------------------------------------- */
void dt_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *w, int n, int dim, float eps) {
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * dim;
        float *oi = out + (size_t)i * dim;
        double ss = 0;
        for (int j = 0; j < dim; j++) ss += (double)xi[j] * xi[j];
        const float r = (float)(1.0 / sqrt(ss / dim + eps));
        rstd[i] = r;
        for (int j = 0; j < dim; j++) oi[j] = xi[j] * r * w[j];
    }
}

/* out_j = x_j·r·w_j, r = (mean x² + eps)^(-1/2):
 * dx_j = r·w_j·dout_j − x_j·r³/dim · Σ_k dout_k·w_k·x_k; dw_j += Σ_i dout_j·x_j·r. */
void dt_rmsnorm_bwd(float *dx, float *dw, const float *dout, const float *x, const float *w, const float *rstd, int n,
                    int dim, int accumulate) {
    for (int i = 0; i < n; i++) {
        const float *xi = x + (size_t)i * dim, *gi = dout + (size_t)i * dim;
        float *di = dx + (size_t)i * dim;
        const float r = rstd[i];
        double dot = 0;
        for (int j = 0; j < dim; j++) dot += (double)gi[j] * w[j] * xi[j];
        const float c = (float)(dot * r * r * r / dim);
        for (int j = 0; j < dim; j++) {
            const float d = r * w[j] * gi[j] - xi[j] * c;
            di[j] = accumulate ? di[j] + d : d;
            dw[j] += gi[j] * xi[j] * r;
        }
    }
}

/* rotate_half: (x1, x2) -> (x1·c − x2·s, x2·c + x1·s) for pairs (i, i + d/2). */
void dt_rope_fwd(float *x, int n, int T, int n_heads, int d, const float *cos_t, const float *sin_t) {
    const int half = d / 2, stride = n_heads * d;
    for (int i = 0; i < n; i++) {
        const float *cs = cos_t + (size_t)(i % T) * half, *sn = sin_t + (size_t)(i % T) * half;
        for (int h = 0; h < n_heads; h++) {
            float *v = x + (size_t)i * stride + (size_t)h * d;
            for (int j = 0; j < half; j++) {
                const float a = v[j], b = v[j + half];
                v[j] = a * cs[j] - b * sn[j];
                v[j + half] = b * cs[j] + a * sn[j];
            }
        }
    }
}

/* The transpose of the rotation: (g1, g2) -> (g1·c + g2·s, g2·c − g1·s). */
void dt_rope_bwd(float *dx, int n, int T, int n_heads, int d, const float *cos_t, const float *sin_t) {
    const int half = d / 2, stride = n_heads * d;
    for (int i = 0; i < n; i++) {
        const float *cs = cos_t + (size_t)(i % T) * half, *sn = sin_t + (size_t)(i % T) * half;
        for (int h = 0; h < n_heads; h++) {
            float *v = dx + (size_t)i * stride + (size_t)h * d;
            for (int j = 0; j < half; j++) {
                const float a = v[j], b = v[j + half];
                v[j] = a * cs[j] + b * sn[j];
                v[j + half] = b * cs[j] - a * sn[j];
            }
        }
    }
}

void dt_swiglu_fwd(float *out, const float *h1, const float *h3, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const float a = h1[i];
        out[i] = a / (1.0f + expf(-a)) * h3[i];
    }
}

/* silu'(a) = σ(a)·(1 + a·(1 − σ(a))). */
void dt_swiglu_bwd(float *dh1, float *dh3, const float *dout, const float *h1, const float *h3, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const float a = h1[i], s = 1.0f / (1.0f + expf(-a));
        dh1[i] = dout[i] * h3[i] * s * (1.0f + a * (1.0f - s));
        dh3[i] = dout[i] * a * s;
    }
}

/* ---- routing ------------------------------------------------------------- */
void dt_route_fwd(int32_t *sel, float *gate, const float *z, int n, int E, int K) {
    for (int i = 0; i < n; i++) {
        const float *zi = z + (size_t)i * E;
        int32_t *si = sel + (size_t)i * K;
        float *gi = gate + (size_t)i * K;
        /* the K largest logits (= the K most probable experts), ties to the lower index */
        for (int k = 0; k < K; k++) {
            int best = -1;
            for (int e = 0; e < E; e++) {
                int taken = 0;
                for (int j = 0; j < k; j++) taken |= si[j] == e;
                if (!taken && (best < 0 || zi[e] > zi[best])) best = e;
            }
            si[k] = best;
        }
        /* softmax over all E then renormalised over the K = softmax over the K chosen logits */
        const float mx = zi[si[0]];
        double sum = 0;
        for (int k = 0; k < K; k++) sum += exp((double)zi[si[k]] - mx);
        for (int k = 0; k < K; k++) gi[k] = (float)(exp((double)zi[si[k]] - mx) / sum);
    }
}

void dt_route_bwd(float *dz, const float *dgate, const int32_t *sel, const float *gate, int n, int E, int K) {
    memset(dz, 0, (size_t)n * E * sizeof(float));
    for (int i = 0; i < n; i++) {
        const float *g = gate + (size_t)i * K, *dg = dgate + (size_t)i * K;
        double s = 0;
        for (int k = 0; k < K; k++) s += (double)g[k] * dg[k];
        for (int k = 0; k < K; k++) dz[(size_t)i * E + sel[(size_t)i * K + k]] = (float)(g[k] * (dg[k] - s));
    }
}

/* ---- attention -------------------------------------------------------------- */
void dt_attention_fwd(mt_backend *be, float *out, float *att, const float *q, const float *k, const float *v, int B,
                      int T, int NH, int NKV, int D) {
    const int QD = NH * D, KD = NKV * D, group = NH / NKV;
    const float scale = 1.0f / sqrtf((float)D);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const size_t qo = (size_t)b * T * QD + (size_t)h * D, ko = (size_t)b * T * KD + (size_t)(h / group) * D;
            float *S = att + ((size_t)b * NH + h) * T * T;
            gemm(be, 0, 1, T, T, D, scale, q + qo, QD, k + ko, KD, 0.0f, S, T);
            for (int i = 0; i < T; i++) {
                float *row = S + (size_t)i * T;
                float mx = -FLT_MAX;
                for (int j = 0; j <= i; j++) mx = row[j] > mx ? row[j] : mx;
                double sum = 0;
                for (int j = 0; j <= i; j++) sum += row[j] = expf(row[j] - mx);
                const float inv = (float)(1.0 / sum);
                for (int j = 0; j <= i; j++) row[j] *= inv;
                for (int j = i + 1; j < T; j++) row[j] = 0;
            }
            gemm(be, 0, 0, T, D, T, 1.0f, S, T, v + ko, KD, 0.0f, out + qo, QD);
        }
}

void dt_attention_bwd(mt_backend *be, float *dq, float *dk, float *dv, float *datt, const float *dout, const float *att,
                      const float *q, const float *k, const float *v, int B, int T, int NH, int NKV, int D) {
    const int QD = NH * D, KD = NKV * D, group = NH / NKV;
    const float scale = 1.0f / sqrtf((float)D);
    memset(dk, 0, (size_t)B * T * KD * sizeof(float));
    memset(dv, 0, (size_t)B * T * KD * sizeof(float));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) {
            const size_t qo = (size_t)b * T * QD + (size_t)h * D, ko = (size_t)b * T * KD + (size_t)(h / group) * D;
            const float *P = att + ((size_t)b * NH + h) * T * T;
            gemm(be, 0, 1, T, T, D, 1.0f, dout + qo, QD, v + ko, KD, 0.0f, datt, T);   /* dP = dO·Vᵀ */
            gemm(be, 1, 0, T, D, T, 1.0f, P, T, dout + qo, QD, 1.0f, dv + ko, KD);    /* dV += Pᵀ·dO */
            for (int i = 0; i < T; i++) {                                             /* softmax backward */
                float *dr = datt + (size_t)i * T;
                const float *pr = P + (size_t)i * T;
                double s = 0;
                for (int j = 0; j <= i; j++) s += (double)pr[j] * dr[j];
                for (int j = 0; j <= i; j++) dr[j] = pr[j] * (dr[j] - (float)s);
                for (int j = i + 1; j < T; j++) dr[j] = 0;
            }
            gemm(be, 0, 0, T, D, T, scale, datt, T, k + ko, KD, 0.0f, dq + qo, QD);   /* dQ = s·dS·K   */
            gemm(be, 1, 0, T, D, T, scale, datt, T, q + qo, QD, 1.0f, dk + ko, KD);   /* dK += s·dSᵀ·Q */
        }
}

/* ---- the model ---------------------------------------------------------------- */
/* Y (n, out) = X (n, in) · Wᵀ (+ Y when beta = 1). */
static void linear(mt_backend *be, float *Y, const float *X, const float *W, int n, int in, int out, float beta) {
    gemm(be, 0, 1, n, out, in, 1.0f, X, in, W, in, beta, Y, out);
}

/* dX (n, in) (=|+=) dY (n, out) · W ; dW (out, in) = dYᵀ · X. */
static void linear_bwd(mt_backend *be, float *dX, float *dW, const float *dY, const float *X, const float *W, int n,
                       int in, int out, float beta_dx) {
    gemm(be, 0, 0, n, in, out, 1.0f, dY, out, W, in, beta_dx, dX, in);
    gemm(be, 1, 0, out, in, n, 1.0f, dY, out, X, in, 0.0f, dW, in);
}

/* ---- the MoE block ------------------------------------------------------------ */
/* Rows of layer l's FFN activations (R = N·K) and its routing arrays. */
typedef struct {
    float *h1, *h3, *hg, *eo, *gate;
    int32_t *sel, *asg, *eoff;
} moe_acts;

static moe_acts moe_layer(const dt_model *m, int l) {
    const int N = m->B * m->T, K = m->c.top_k, E = m->c.n_experts, F = m->c.ffn, H = m->c.hidden;
    const size_t R = (size_t)N * K;
    const dt_acts *a = &m->a;
    moe_acts x = {a->h1 + (size_t)l * R * F, a->h3 + (size_t)l * R * F, a->hg + (size_t)l * R * F,
                  a->eo + (size_t)l * R * H, a->gate + (size_t)l * R, a->sel + (size_t)l * R, a->asg + (size_t)l * R,
                  a->eoff + (size_t)l * (E + 1)};
    return x;
}

/* xg rows [o, o + n) = xn2 rows of the tokens those FFN rows serve. */
static void moe_gather(float *xg, const float *xn2, const int32_t *asg, int o, int n, int H, int K) {
    for (int r = o; r < o + n; r++)
        memcpy(xg + (size_t)r * H, xn2 + (size_t)(asg[r] / K) * H, (size_t)H * sizeof(float));
}

/* y = mid + Σ_k gate_k · expert_{sel_k}(xn2), experts in index order. */
static void moe_forward(dt_model *m, int l, float *y, const float *mid, const float *xn2) {
    const dt_config *c = &m->c;
    mt_backend *be = m->be;
    const int N = m->B * m->T, H = c->hidden, F = c->ffn, E = c->n_experts, K = c->top_k;
    const dt_layer *w = &m->p.layers[l];
    moe_acts x = moe_layer(m, l);
    float *z = m->s.dz, *xg = m->s.xg;
    linear(be, z, xn2, w->router, N, H, E, 0.0f);
    dt_route_fwd(x.sel, x.gate, z, N, E, K);
    /* FFN rows grouped by expert, tokens ascending within one */
    memset(x.eoff, 0, (size_t)(E + 1) * sizeof *x.eoff);
    for (int i = 0; i < N * K; i++) x.eoff[x.sel[i] + 1]++;
    for (int e = 0; e < E; e++) x.eoff[e + 1] += x.eoff[e];
    for (int e = 0, r = 0; e < E; e++)
        for (int i = 0; i < N * K; i++)
            if (x.sel[i] == e) x.asg[r++] = i;
    memset(y, 0, (size_t)N * H * sizeof(float));
    for (int e = 0; e < E; e++) {
        const int o = x.eoff[e], n = x.eoff[e + 1] - o;
        if (!n) continue;
        moe_gather(xg, xn2, x.asg, o, n, H, K);
        float *h1 = x.h1 + (size_t)o * F, *h3 = x.h3 + (size_t)o * F, *hg = x.hg + (size_t)o * F;
        float *eo = x.eo + (size_t)o * H;
        linear(be, h1, xg + (size_t)o * H, w->ew1 + (size_t)e * F * H, n, H, F, 0.0f);
        linear(be, h3, xg + (size_t)o * H, w->ew3 + (size_t)e * F * H, n, H, F, 0.0f);
        dt_swiglu_fwd(hg, h1, h3, (size_t)n * F);
        linear(be, eo, hg, w->ew2 + (size_t)e * H * F, n, F, H, 0.0f);
        for (int r = 0; r < n; r++) {
            const int i = x.asg[o + r];
            const float g = x.gate[i];
            float *yi = y + (size_t)(i / K) * H;
            const float *er = eo + (size_t)r * H;
            for (int j = 0; j < H; j++) yi[j] += g * er[j];
        }
    }
    for (size_t i = 0; i < (size_t)N * H; i++) y[i] += mid[i];
}

/* From dy = s.dres: the experts', gates' and router's gradients; s.dx = dloss/dxn2. */
static void moe_backward(dt_model *m, int l, const float *xn2) {
    const dt_config *c = &m->c;
    mt_backend *be = m->be;
    const int N = m->B * m->T, H = c->hidden, F = c->ffn, E = c->n_experts, K = c->top_k;
    const dt_layer *w = &m->p.layers[l];
    dt_layer *g = &m->g.layers[l];
    dt_grads_scratch *s = &m->s;
    moe_acts x = moe_layer(m, l);
    for (int r = 0; r < N * K; r++) {
        const int i = x.asg[r];
        const float *dy = s->dres + (size_t)(i / K) * H, *er = x.eo + (size_t)r * H;
        float *de = s->deo + (size_t)r * H;
        const float gt = x.gate[i];
        double dg = 0;
        for (int j = 0; j < H; j++) de[j] = gt * dy[j], dg += (double)dy[j] * er[j];
        s->dgate[i] = (float)dg;
    }
    for (int e = 0; e < E; e++) {
        const int o = x.eoff[e], n = x.eoff[e + 1] - o;
        if (!n) continue;
        moe_gather(s->xg, xn2, x.asg, o, n, H, K);
        const size_t fo = (size_t)o * F, ho = (size_t)o * H;
        linear_bwd(be, s->dhg + fo, g->ew2 + (size_t)e * H * F, s->deo + ho, x.hg + fo, w->ew2 + (size_t)e * H * F, n, F,
                   H, 0.0f);
        dt_swiglu_bwd(s->dh1 + fo, s->dh3 + fo, s->dhg + fo, x.h1 + fo, x.h3 + fo, (size_t)n * F);
        linear_bwd(be, s->dxg + ho, g->ew1 + (size_t)e * F * H, s->dh1 + fo, s->xg + ho, w->ew1 + (size_t)e * F * H, n,
                   H, F, 0.0f);
        linear_bwd(be, s->dxg + ho, g->ew3 + (size_t)e * F * H, s->dh3 + fo, s->xg + ho, w->ew3 + (size_t)e * F * H, n,
                   H, F, 1.0f);
    }
    memset(s->dx, 0, (size_t)N * H * sizeof(float));
    for (int r = 0; r < N * K; r++) {
        float *dx = s->dx + (size_t)(x.asg[r] / K) * H;
        const float *d = s->dxg + (size_t)r * H;
        for (int j = 0; j < H; j++) dx[j] += d[j];
    }
    dt_route_bwd(s->dz, s->dgate, x.sel, x.gate, N, E, K);
    linear_bwd(be, s->dx, g->router, s->dz, xn2, w->router, N, H, E, 1.0f);
}

void dt_forward(dt_model *m, const int32_t *tokens) {
    const dt_config *c = &m->c;
    mt_backend *be = m->be;
    const int L = c->n_layers, H = c->hidden, NH = c->n_heads, NKV = c->n_kv_heads, D = c->head_dim, F = c->ffn;
    const int QD = NH * D, KD = NKV * D, V = c->vocab, B = m->B, T = m->T, N = B * T;
    dt_acts *a = &m->a;
    for (int i = 0; i < N; i++)
        memcpy(a->res + (size_t)i * H, m->p.embd + (size_t)tokens[i] * H, (size_t)H * sizeof(float));
    for (int l = 0; l < L; l++) {
        const dt_layer *w = &m->p.layers[l];
        const float *x = a->res + (size_t)l * N * H;
        float *xn1 = a->xn1 + (size_t)l * N * H, *q = a->q + (size_t)l * N * QD, *k = a->k + (size_t)l * N * KD;
        float *v = a->v + (size_t)l * N * KD, *atto = a->atto + (size_t)l * N * QD, *mid = a->mid + (size_t)l * N * H;
        float *xn2 = a->xn2 + (size_t)l * N * H, *h1 = a->h1 + (size_t)l * N * F, *h3 = a->h3 + (size_t)l * N * F;
        float *hg = a->hg + (size_t)l * N * F, *y = a->res + (size_t)(l + 1) * N * H;
        (void)h1, (void)h3, (void)hg;
        dt_rmsnorm_fwd(xn1, a->rstd1 + (size_t)l * N, x, w->attn_norm, N, H, c->norm_eps);
        linear(be, q, xn1, w->wq, N, H, QD, 0.0f);
        linear(be, k, xn1, w->wk, N, H, KD, 0.0f);
        linear(be, v, xn1, w->wv, N, H, KD, 0.0f);
        dt_rope_fwd(q, N, T, NH, D, m->rope_cos, m->rope_sin);
        dt_rope_fwd(k, N, T, NKV, D, m->rope_cos, m->rope_sin);
        dt_attention_fwd(be, atto, a->att + (size_t)l * B * NH * T * T, q, k, v, B, T, NH, NKV, D);
        memcpy(mid, x, (size_t)N * H * sizeof(float));
        linear(be, mid, atto, w->wo, N, QD, H, 1.0f);
        dt_rmsnorm_fwd(xn2, a->rstd2 + (size_t)l * N, mid, w->ffn_norm, N, H, c->norm_eps);
        if (c->n_experts) {
            moe_forward(m, l, y, mid, xn2);
            continue;
        }
        linear(be, h1, xn2, w->w1, N, H, F, 0.0f);
        linear(be, h3, xn2, w->w3, N, H, F, 0.0f);
        dt_swiglu_fwd(hg, h1, h3, (size_t)N * F);
        memcpy(y, mid, (size_t)N * H * sizeof(float));
        linear(be, y, hg, w->w2, N, F, H, 1.0f);
    }
    dt_rmsnorm_fwd(a->xnf, a->rstdf, a->res + (size_t)L * N * H, m->p.out_norm, N, H, c->norm_eps);
    linear(be, a->logits, a->xnf, m->p.lm_head, N, H, V, 0.0f);
}

/* Per row: CE = lse(z) − z_y; with q = softmax(z/τ), p = softmax(t/τ),
 * KL = Σ p (log p − log q). dloss/dz = (1−α)/N·(softmax z − onehot) + α·τ/N·(q − p)
 * (the α·τ² scale times the 1/τ of z/τ). One exp per element and softmax
 * (two at τ = 1, three otherwise), sums in double. */
dt_loss dt_loss_backward_logits(dt_model *m, const int32_t *targets, const float *teacher, float alpha, float temp) {
    return dt_loss_backward_logits_part(m, targets, teacher, alpha, temp, (double)m->B * m->T);
}

dt_loss dt_loss_backward_logits_part(dt_model *m, const int32_t *targets, const float *teacher, float alpha, float temp,
                                     double n_total) {
    const int V = m->c.vocab, rows = m->B * m->T;
    const double N = n_total;
    const int kd = alpha > 0 && teacher;
    const double wce = kd ? 1.0 - alpha : 1.0, wkd = kd ? alpha : 0.0;
    const float invT = 1.0f / temp;
    float *e1 = m->s.rowq, *eT = temp == 1.0f ? e1 : m->s.rowq + V, *ep = m->s.rowq + 2 * (size_t)V;
    double ce_sum = 0, kd_sum = 0;
    for (int i = 0; i < rows; i++) {
        float *z = m->a.logits + (size_t)i * V;
        float mx = -FLT_MAX;
        for (int j = 0; j < V; j++) mx = z[j] > mx ? z[j] : mx;
        double s1 = 0;
        for (int j = 0; j < V; j++) s1 += e1[j] = expf(z[j] - mx);
        const double lse = mx + log(s1);
        ce_sum += lse - z[targets[i]];
        double sT = s1, sp = 1, lseT = lse, lsep = 0;
        if (kd) {
            const float *t = teacher + (size_t)i * V;
            float tm = -FLT_MAX;
            for (int j = 0; j < V; j++) tm = t[j] > tm ? t[j] : tm;
            sp = 0;
            for (int j = 0; j < V; j++) sp += ep[j] = expf((t[j] - tm) * invT);
            lsep = tm * invT + log(sp);
            if (eT != e1) {
                sT = 0;
                for (int j = 0; j < V; j++) sT += eT[j] = expf((z[j] - mx) * invT);
                lseT = mx * invT + log(sT);
            }
            double kl = 0;
            for (int j = 0; j < V; j++) kl += ep[j] * (((double)t[j] * invT - lsep) - ((double)z[j] * invT - lseT));
            kd_sum += kl / sp;
        }
        const double a1 = wce / s1 / N, aT = wkd * temp / sT / N, ap = wkd * temp / sp / N;
        for (int j = 0; j < V; j++) z[j] = (float)(a1 * e1[j] + (kd ? aT * eT[j] - ap * ep[j] : 0.0));
        z[targets[i]] -= (float)(wce / N);
    }
    dt_loss r;
    r.ce = ce_sum / N;
    r.kd = kd_sum / N;
    r.loss = wce * r.ce + wkd * (double)temp * temp * r.kd;
    return r;
}

void dt_backward(dt_model *m, const int32_t *tokens) {
    const dt_config *c = &m->c;
    mt_backend *be = m->be;
    const int L = c->n_layers, H = c->hidden, NH = c->n_heads, NKV = c->n_kv_heads, D = c->head_dim, F = c->ffn;
    const int QD = NH * D, KD = NKV * D, V = c->vocab, B = m->B, T = m->T, N = B * T;
    const dt_acts *a = &m->a;
    dt_grads_scratch *s = &m->s;
    memset(m->grads, 0, m->n_params * sizeof(float));
    linear_bwd(be, s->dx, m->g.lm_head, a->logits, a->xnf, m->p.lm_head, N, H, V, 0.0f);
    dt_rmsnorm_bwd(s->dres, m->g.out_norm, s->dx, a->res + (size_t)L * N * H, m->p.out_norm, a->rstdf, N, H, 0);
    for (int l = L - 1; l >= 0; l--) {
        const dt_layer *w = &m->p.layers[l];
        dt_layer *g = &m->g.layers[l];
        const float *x = a->res + (size_t)l * N * H, *xn1 = a->xn1 + (size_t)l * N * H;
        const float *q = a->q + (size_t)l * N * QD, *k = a->k + (size_t)l * N * KD, *v = a->v + (size_t)l * N * KD;
        const float *atto = a->atto + (size_t)l * N * QD, *mid = a->mid + (size_t)l * N * H;
        const float *xn2 = a->xn2 + (size_t)l * N * H, *h1 = a->h1 + (size_t)l * N * F;
        const float *h3 = a->h3 + (size_t)l * N * F, *hg = a->hg + (size_t)l * N * F;
        if (c->n_experts) {
            moe_backward(m, l, xn2);
        } else { /* y = mid + hg·w2ᵀ */
            linear_bwd(be, s->dhg, g->w2, s->dres, hg, w->w2, N, F, H, 0.0f);
            dt_swiglu_bwd(s->dh1, s->dh3, s->dhg, h1, h3, (size_t)N * F);
            linear_bwd(be, s->dx, g->w1, s->dh1, xn2, w->w1, N, H, F, 0.0f);
            linear_bwd(be, s->dx, g->w3, s->dh3, xn2, w->w3, N, H, F, 1.0f);
        }
        dt_rmsnorm_bwd(s->dres, g->ffn_norm, s->dx, mid, w->ffn_norm, a->rstd2 + (size_t)l * N, N, H, 1);
        /* mid = x + atto·woᵀ */
        linear_bwd(be, s->datto, g->wo, s->dres, atto, w->wo, N, QD, H, 0.0f);
        dt_attention_bwd(be, s->dq, s->dk, s->dv, s->datt, s->datto, a->att + (size_t)l * B * NH * T * T, q, k, v,
                         B, T, NH, NKV, D);
        dt_rope_bwd(s->dq, N, T, NH, D, m->rope_cos, m->rope_sin);
        dt_rope_bwd(s->dk, N, T, NKV, D, m->rope_cos, m->rope_sin);
        linear_bwd(be, s->dx, g->wq, s->dq, xn1, w->wq, N, H, QD, 0.0f);
        linear_bwd(be, s->dx, g->wk, s->dk, xn1, w->wk, N, H, KD, 1.0f);
        linear_bwd(be, s->dx, g->wv, s->dv, xn1, w->wv, N, H, KD, 1.0f);
        dt_rmsnorm_bwd(s->dres, g->attn_norm, s->dx, x, w->attn_norm, a->rstd1 + (size_t)l * N, N, H, 1);
    }
    for (int i = 0; i < N; i++) {
        float *ge = m->g.embd + (size_t)tokens[i] * H;
        const float *d = s->dres + (size_t)i * H;
        for (int j = 0; j < H; j++) ge[j] += d[j];
    }
}

double dt_clip_grads(dt_model *m, float max_norm) {
    double ss = 0;
    for (size_t i = 0; i < m->n_params; i++) ss += (double)m->grads[i] * m->grads[i];
    const double norm = sqrt(ss);
    if (max_norm > 0 && norm > max_norm) {
        const float sc = (float)(max_norm / norm);
        for (size_t i = 0; i < m->n_params; i++) m->grads[i] *= sc;
    }
    return norm;
}

void dt_adamw_step(dt_model *m, const dt_adamw *o, int t) {
    const float bc1 = 1.0f - powf(o->beta1, (float)t), bc2 = 1.0f - powf(o->beta2, (float)t);
    for (int i = 0; i < m->n_table; i++) {
        const dt_param *p = &m->table[i];
        const float wd = p->rows > 1 ? o->weight_decay : 0.0f; /* no decay on norm vectors */
        const size_t n = (size_t)p->rows * p->cols;
        float *w = m->params + p->offset, *g = m->grads + p->offset, *mm = m->m + p->offset, *vv = m->v + p->offset;
        for (size_t j = 0; j < n; j++) {
            mm[j] = o->beta1 * mm[j] + (1.0f - o->beta1) * g[j];
            vv[j] = o->beta2 * vv[j] + (1.0f - o->beta2) * g[j] * g[j];
            const float mh = mm[j] / bc1, vh = vv[j] / bc2;
            w[j] -= o->lr * (mh / (sqrtf(vh) + o->eps) + wd * w[j]);
        }
    }
}

float dt_lr_schedule(int step, int total, int warmup, float lr, float min_frac) {
    if (warmup > 0 && step < warmup) return lr * (float)(step + 1) / (float)warmup;
    const int span = total - warmup;
    if (span <= 1) return lr;
    const double prog = (double)(step - warmup) / (double)(span - 1);
    const double cosv = 0.5 * (1.0 + cos(3.14159265358979323846 * (prog > 1 ? 1 : prog)));
    return (float)(lr * (min_frac + (1.0 - min_frac) * cosv));
}
