/* engine.c — forward, backward, loss and AdamW of the dense Mistral-layout
 * student (embedding, RMSNorm, RoPE attention with GQA and causal mask,
 * SwiGLU FFN, lm_head; cross-entropy + forward KL at temperature T). Every
 * matrix product goes through the backend's gemm_f32; the element-wise ops
 * are plain loops here (each is its own reference; tests/test_distill.c
 * checks every backward against finite differences of an f64 forward).
 *
 * Conventions follow Hugging Face's MistralForCausalLM exactly (RoPE
 * rotate_half, angles rounded to f32 as mt_be_rope_tables computes them,
 * RMSNorm x·rsqrt(mean x² + eps)·w), so a checkpoint written from the
 * parameters computes the same function in transformers. */
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
    p->kind = kind, p->layer = layer, p->rows = rows, p->cols = cols;
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
        }
    }
}

int dt_model_init(dt_model *m, const dt_config *c, int B, int T, mt_backend *be) {
    memset(m, 0, sizeof *m);
    if (c->n_layers < 1 || c->hidden < 1 || c->n_heads < 1 || c->n_kv_heads < 1 || c->n_heads % c->n_kv_heads ||
        c->head_dim < 2 || c->head_dim % 2 || c->ffn < 1 || c->vocab < 2 || B < 1 || T < 1)
        return mt_seterr(MT_ERR_ARG, "distill: student shape out of range");
    m->c = *c, m->B = B, m->T = T, m->be = be;
    const int L = c->n_layers, H = c->hidden, QD = c->n_heads * c->head_dim, KD = c->n_kv_heads * c->head_dim;
    const int F = c->ffn, V = c->vocab;
    const size_t N = (size_t)B * T;
    m->table = calloc((size_t)9 * L + 3, sizeof *m->table);
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
        add_param(m, DT_W1, l, F, H);
        add_param(m, DT_W3, l, F, H);
        add_param(m, DT_W2, l, H, F);
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
        (size_t)L * N * F,            /* h1    */
        (size_t)L * N * F,            /* h3    */
        (size_t)L * N * F,            /* hg    */
        N * H,                        /* xnf   */
        N,                            /* rstdf */
        N * V,                        /* logits */
    };
    float **ptr[] = {&m->a.res, &m->a.xn1, &m->a.rstd1, &m->a.q, &m->a.k, &m->a.v, &m->a.att, &m->a.atto,
                     &m->a.mid, &m->a.xn2, &m->a.rstd2, &m->a.h1, &m->a.h3, &m->a.hg, &m->a.xnf, &m->a.rstdf,
                     &m->a.logits};
    size_t total = 0;
    for (size_t i = 0; i < sizeof sz / sizeof sz[0]; i++) total += sz[i];
    float *blk = m->act_block = malloc(total * sizeof(float));
    if (!blk) goto oom;
    for (size_t i = 0; i < sizeof sz / sizeof sz[0]; i++) *ptr[i] = blk, blk += sz[i];

    const size_t ssz[] = {N * H, N * H, N * QD, N * KD, N * KD, N * QD, N * F, N * F, N * F, (size_t)T * T, (size_t)3 * V,
                          (size_t)T * (c->head_dim / 2), (size_t)T * (c->head_dim / 2)};
    float **sptr[] = {&m->s.dres, &m->s.dx, &m->s.dq, &m->s.dk, &m->s.dv, &m->s.datto, &m->s.dh1, &m->s.dh3,
                      &m->s.dhg, &m->s.datt, &m->s.rowq, &m->rope_cos, &m->rope_sin};
    total = 0;
    for (size_t i = 0; i < sizeof ssz / sizeof ssz[0]; i++) total += ssz[i];
    blk = m->scratch_block = malloc(total * sizeof(float));
    if (!blk) goto oom;
    for (size_t i = 0; i < sizeof ssz / sizeof ssz[0]; i++) *sptr[i] = blk, blk += ssz[i];
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
    const int V = m->c.vocab, N = m->B * m->T;
    const int kd = alpha > 0 && teacher;
    const double wce = kd ? 1.0 - alpha : 1.0, wkd = kd ? alpha : 0.0;
    const float invT = 1.0f / temp;
    float *e1 = m->s.rowq, *eT = temp == 1.0f ? e1 : m->s.rowq + V, *ep = m->s.rowq + 2 * (size_t)V;
    double ce_sum = 0, kd_sum = 0;
    for (int i = 0; i < N; i++) {
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
        /* y = mid + hg·w2ᵀ */
        linear_bwd(be, s->dhg, g->w2, s->dres, hg, w->w2, N, F, H, 0.0f);
        dt_swiglu_bwd(s->dh1, s->dh3, s->dhg, h1, h3, (size_t)N * F);
        linear_bwd(be, s->dx, g->w1, s->dh1, xn2, w->w1, N, H, F, 0.0f);
        linear_bwd(be, s->dx, g->w3, s->dh3, xn2, w->w3, N, H, F, 1.0f);
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
