/* kquant_enc.c — llama.cpp's K-quant super-blocks from f32 (the byte
 * layouts are at the top of kquant.c). Each block is quantized in two
 * steps, so that GPTQ can use the second one column by column:
 *
 *   fit    the block's parameters from its 256 weights: f16 d (and dmin)
 *          and the integer scale (and min) of each sub-block, chosen by
 *          llama.cpp's reference search (quantize_row_qX_K_ref):
 *            q2_K  per 16: weighted min/scale search (|x| weights, 16
 *                  trial steps, mean absolute error), 4-bit scale and min
 *            q3_K  per 16: symmetric scale refined by coordinate descent
 *                  on x²-weighted squared error, 6-bit signed scales
 *            q4_K, q5_K  per 32: min/scale search weighted by
 *                  mean|x| + |x| (21 / 16 trial steps), 6-bit scale and min
 *            q6_K  per 16: symmetric scale search over 19 trial steps
 *                  (x²-weighted), 8-bit signed scales
 *   quant  each weight on the grid those parameters define (mt_blk_quant):
 *          q = nearest((x + ml)/dl) clamped to the code range, where
 *          dl = d·scale and ml = dmin·min are computed as the decoder does.
 *
 * Sums, products and roundings follow llama.cpp's reference in order (the
 * file is compiled with -ffp-contract=off), so mt_row_from_f32 writes the
 * bytes llama.cpp's quantizer writes without an importance matrix; the
 * test in tests/cli_kquant_write.sh compares the two per tensor. */
#include <math.h>
#include <string.h>

#include "codec_impl.h"

#define GROUP_MAX_EPS 1e-15f

static inline int imax(int a, int b) { return a > b ? a : b; }
static inline int imin(int a, int b) { return a < b ? a : b; }

/* Symmetric codes l in [-nmax, nmax-1] (stored + nmax in L) with the scale
 * maximising (Σ w x l)² / Σ w l², w = x² (llama.cpp make_qx_quants with
 * rmse_type 1). Returns the scale (signed: the largest |x| maps to -nmax). */
static float make_qx_quants(int n, int nmax, const float *x, int8_t *L, const float *qw) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; ++i) {
        float ax = fabsf(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    if (amax < GROUP_MAX_EPS) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.f;
    }
    float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = mt_nearest_int(iscale * x[i]);
        l = imax(-nmax, imin(nmax - 1, l));
        L[i] = (int8_t)(l + nmax);
        float w = qw ? qw[i] : x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; ++i) {
            int l = mt_nearest_int(iscale * x[i]);
            l = imax(-nmax, imin(nmax - 1, l));
            float w = qw ? qw[i] : x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; ++i) {
                int l = mt_nearest_int(iscale * x[i]);
                L[i] = (int8_t)(nmax + imax(-nmax, imin(nmax - 1, l)));
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* q3_K's sub-block search (llama.cpp make_q3_quants with do_rmse): codes
 * from the max, then up to 5 rounds of moving single codes while that
 * raises (Σ w x l)² / Σ w l², w = x². L holds l + nmax. */
static float make_q3_quants(int n, int nmax, const float *x, int8_t *L) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; ++i) {
        float ax = fabsf(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    if (amax < GROUP_MAX_EPS) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.f;
    }
    float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = mt_nearest_int(iscale * x[i]);
        l = imax(-nmax, imin(nmax - 1, l));
        L[i] = (int8_t)l;
        float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    for (int itry = 0; itry < 5; ++itry) {
        int n_changed = 0;
        for (int i = 0; i < n; ++i) {
            float w = x[i] * x[i];
            float slx = sumlx - w * x[i] * L[i];
            if (slx > 0) {
                float sl2 = suml2 - w * L[i] * L[i];
                int new_l = mt_nearest_int(x[i] * sl2 / slx);
                new_l = imax(-nmax, imin(nmax - 1, new_l));
                if (new_l != L[i]) {
                    slx += w * x[i] * new_l;
                    sl2 += w * new_l * new_l;
                    if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (int8_t)new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        ++n_changed;
                    }
                }
            }
        }
        if (!n_changed) break;
    }
    for (int i = 0; i < n; ++i) L[i] = (int8_t)(L[i] + nmax);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* Codes 0..nmax with a scale and a min (x ≈ scale·l − the_min), chosen
 * among nstep + 1 trial steps by weighted least squares (llama.cpp
 * make_qkx2_quants); error measured as |diff| (use_mad) or diff². qkx3:
 * llama.cpp's make_qkx3_quants (the weighted K-quants' fit), the same
 * search whose trial codes are rounded from min(v, nmax) and 0 for v <= 0
 * (v stays finite when the running min nears max). */
static float make_qkx_quants(int n, int nmax, const float *x, const float *weights, uint8_t *L, float *the_min,
                             uint8_t *Laux, float rmin, float rdelta, int nstep, int use_mad, int qkx3) {
    float min = x[0], max = x[0];
    float sum_w = weights[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        float w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        *the_min = -min;
        return 0.f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_error = 0;
    for (int i = 0; i < n; ++i) {
        int l = mt_nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)imax(0, imin(nmax, l));
        float diff = scale * L[i] + min - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        best_error += weights[i] * diff;
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            int l;
            if (qkx3) {
                const float v = iscale * (x[i] - min);
                l = v > 0 ? mt_nearest_int(v < nmax ? v : (float)nmax) : 0;
            } else {
                l = imax(0, imin(nmax, mt_nearest_int(iscale * (x[i] - min))));
            }
            Laux[i] = (uint8_t)l;
            float w = weights[i];
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float cur_error = 0;
            for (int i = 0; i < n; ++i) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                diff = use_mad ? fabsf(diff) : diff * diff;
                cur_error += weights[i] * diff;
            }
            if (cur_error < best_error) {
                for (int i = 0; i < n; ++i) L[i] = Laux[i];
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

/* Codes 0..nmax of the non-negative x (sub-block scales or mins) with one
 * scale, by weighted squared error: 9 trial scales, then up to 5 rounds of
 * moving single codes (llama.cpp make_qp_quants). */
float mt_make_qp_quants(int n, int nmax, const float *x, uint8_t *L, const float *qw) {
    float max = 0;
    for (int i = 0; i < n; ++i) max = max > x[i] ? max : x[i];
    if (max < GROUP_MAX_EPS) {
        for (int i = 0; i < n; ++i) L[i] = 0;
        return 0.f;
    }
    float iscale = nmax / max;
    for (int i = 0; i < n; ++i) L[i] = (uint8_t)mt_nearest_int(iscale * x[i]);
    float scale = 1 / iscale;
    float best_mse = 0;
    for (int i = 0; i < n; ++i) {
        float diff = x[i] - scale * L[i];
        best_mse += qw[i] * diff * diff;
    }
    for (int is = -4; is <= 4; ++is) {
        if (is == 0) continue;
        float iscale_is = (0.1f * is + nmax) / max;
        float scale_is = 1 / iscale_is;
        float mse = 0;
        for (int i = 0; i < n; ++i) {
            int l = imin(nmax, mt_nearest_int(iscale_is * x[i]));
            float diff = x[i] - scale_is * l;
            mse += qw[i] * diff * diff;
        }
        if (mse < best_mse) {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = imin(nmax, mt_nearest_int(iscale * x[i]));
        L[i] = (uint8_t)l;
        float w = qw[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    for (int itry = 0; itry < 5; ++itry) {
        int n_changed = 0;
        for (int i = 0; i < n; ++i) {
            float w = qw[i];
            float slx = sumlx - w * x[i] * L[i];
            float sl2 = suml2 - w * L[i] * L[i];
            if (slx > 0 && sl2 > 0) {
                int new_l = imin(nmax, mt_nearest_int(x[i] * sl2 / slx));
                if (new_l != L[i]) {
                    slx += w * x[i] * new_l;
                    sl2 += w * new_l * new_l;
                    if (slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (uint8_t)new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        ++n_changed;
                    }
                }
            }
        }
        if (!n_changed) break;
    }
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

int mt_blk_quant(const mt_blk_codec *c, const mt_blk_params *p, int j, float x, float *dq) {
    const int s = j / c->sub;
    const float dl = p->dl[s], ml = p->ml[s];
    int q = 0;
    if (dl != 0) {
        float v = (x + ml) / dl;
        /* clamped before rounding (same result), so that nearest_int stays
         * in range whatever GPTQ's error feedback did to x; NaN -> qmin */
        if (!(v > (float)(c->qmin - 1))) v = (float)(c->qmin - 1);
        if (v > (float)(c->qmax + 1)) v = (float)(c->qmax + 1);
        q = imax(c->qmin, imin(c->qmax, mt_nearest_int(v)));
    }
    *dq = dl * (float)q - ml;
    return q;
}

/* After fit: every weight of a sub-block with dl != 0 on the final grid;
 * the others keep the codes of the search (their value is −ml whatever
 * the code), as llama.cpp leaves them. */
static void requant(const mt_blk_codec *c, const mt_blk_params *p, const float *x, int8_t *q) {
    for (int j = 0; j < c->elems; j++) {
        if (p->dl[j / c->sub] == 0) continue;
        float dq;
        q[j] = (int8_t)mt_blk_quant(c, p, j, x[j], &dq);
    }
}

static void set_dl_ml(mt_blk_params *p, int nsub) {
    const float d = mt_f16_to_f32(p->d), dmin = mt_f16_to_f32(p->dmin);
    for (int s = 0; s < nsub; s++) {
        p->dl[s] = d * (float)p->sc[s];
        p->ml[s] = dmin * (float)p->m[s];
    }
}

/* ---- q2_K ---------------------------------------------------------------- */
static void q2_K_fit(const float *x, mt_blk_params *p, int8_t *q) {
    uint8_t L[MT_QK_K], Laux[16];
    float weights[16], mins[16], scales[16];
    float max_scale = 0, max_min = 0;
    memset(p, 0, sizeof *p);
    for (int j = 0; j < 16; ++j) {
        for (int l = 0; l < 16; ++l) weights[l] = fabsf(x[16 * j + l]);
        scales[j] = make_qkx_quants(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux, -0.5f, 0.1f, 15, 1, 0);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    uint8_t sb[16] = {0}; /* the scale bytes, composed as llama.cpp composes them */
    if (max_scale > 0) {
        float iscale = 15.f / max_scale;
        for (int j = 0; j < 16; ++j) sb[j] = (uint8_t)mt_nearest_int(iscale * scales[j]);
        p->d = mt_f32_to_f16(max_scale / 15.f);
    } else {
        p->d = mt_f32_to_f16(0.f);
    }
    if (max_min > 0) {
        float iscale = 15.f / max_min;
        for (int j = 0; j < 16; ++j) sb[j] |= (uint8_t)(mt_nearest_int(iscale * mins[j]) << 4);
        p->dmin = mt_f32_to_f16(max_min / 15.f);
    } else {
        p->dmin = mt_f32_to_f16(0.f);
    }
    for (int j = 0; j < 16; ++j) {
        p->sc[j] = sb[j] & 0x0f;
        p->m[j] = sb[j] >> 4;
    }
    set_dl_ml(p, 16);
    for (int j = 0; j < MT_QK_K; j++) q[j] = (int8_t)L[j];
    requant(&mt_q2_K_codec, p, x, q);
}

static void q2_K_pack(const int8_t *q, const mt_blk_params *p, uint8_t *b) {
    for (int j = 0; j < 16; j++) b[j] = (uint8_t)((p->sc[j] & 0x0f) | (p->m[j] & 0x0f) << 4);
    for (int j = 0; j < MT_QK_K; j += 128)
        for (int l = 0; l < 32; ++l)
            b[16 + j / 4 + l] = (uint8_t)(q[j + l] | q[j + l + 32] << 2 | q[j + l + 64] << 4 | q[j + l + 96] << 6);
    memcpy(b + 80, &p->d, 2);
    memcpy(b + 82, &p->dmin, 2);
}

/* ---- q3_K ---------------------------------------------------------------- */
static void q3_K_fit(const float *x, mt_blk_params *p, int8_t *q) {
    int8_t L[MT_QK_K];
    float scales[16];
    float max_scale = 0, amax = 0;
    memset(p, 0, sizeof *p);
    for (int j = 0; j < 16; ++j) {
        scales[j] = make_q3_quants(16, 4, x + 16 * j, L + 16 * j);
        float scale = fabsf(scales[j]);
        if (scale > amax) {
            amax = scale;
            max_scale = scales[j];
        }
    }
    if (max_scale) {
        float iscale = -32.f / max_scale;
        for (int j = 0; j < 16; ++j) {
            int8_t l = (int8_t)mt_nearest_int(iscale * scales[j]);
            p->sc[j] = (int16_t)(imax(-32, imin(31, l)));
        }
        p->d = mt_f32_to_f16(1 / iscale);
    } else {
        p->d = mt_f32_to_f16(0.f);
    }
    set_dl_ml(p, 16);
    for (int j = 0; j < MT_QK_K; j++) q[j] = (int8_t)(L[j] - 4);
    requant(&mt_q3_K_codec, p, x, q);
}

static void q3_K_pack(const int8_t *q, const mt_blk_params *p, uint8_t *b) {
    uint8_t L[MT_QK_K];
    memset(b, 0, MT_Q3_K_BYTES);
    for (int j = 0; j < MT_QK_K; j++) {
        L[j] = (uint8_t)(q[j] + 4);
        if (L[j] > 3) {
            b[j % 32] |= (uint8_t)(1u << (j / 32));
            L[j] -= 4;
        }
    }
    for (int j = 0; j < MT_QK_K; j += 128)
        for (int l = 0; l < 32; ++l)
            b[32 + j / 4 + l] = (uint8_t)(L[j + l] | L[j + l + 32] << 2 | L[j + l + 64] << 4 | L[j + l + 96] << 6);
    uint8_t *s = b + 96;
    for (int j = 0; j < 16; ++j) {
        int l = p->sc[j] + 32;
        if (j < 8) s[j] = (uint8_t)(l & 0xF);
        else s[j - 8] |= (uint8_t)((l & 0xF) << 4);
        s[j % 4 + 8] |= (uint8_t)((l >> 4) << (2 * (j / 4)));
    }
    memcpy(b + 108, &p->d, 2);
}

/* ---- q4_K and q5_K --------------------------------------------------------- */
static void q45_K_fit(const mt_blk_codec *c, const float *x, mt_blk_params *p, int8_t *q) {
    const int nmax = c->qmax;
    uint8_t L[MT_QK_K], Laux[32];
    float weights[32], mins[8], scales[8];
    float max_scale = 0, max_min = 0;
    memset(p, 0, sizeof *p);
    for (int j = 0; j < 8; ++j) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
        float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; ++l) weights[l] = av_x + fabsf(x[32 * j + l]);
        scales[j] = nmax == 15 ? make_qkx_quants(32, 15, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -1.f, 0.1f, 20, 0, 0)
                               : make_qkx_quants(32, 31, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -0.5f, 0.1f, 15, 0, 0);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    for (int j = 0; j < 8; ++j) {
        uint8_t ls = (uint8_t)mt_nearest_int(inv_scale * scales[j]);
        uint8_t lm = (uint8_t)mt_nearest_int(inv_min * mins[j]);
        p->sc[j] = ls < 63 ? ls : 63;
        p->m[j] = lm < 63 ? lm : 63;
    }
    p->d = mt_f32_to_f16(max_scale / 63.f);
    p->dmin = mt_f32_to_f16(max_min / 63.f);
    set_dl_ml(p, 8);
    for (int j = 0; j < MT_QK_K; j++) q[j] = (int8_t)L[j];
    requant(c, p, x, q);
}

static void q4_K_fit(const float *x, mt_blk_params *p, int8_t *q) { q45_K_fit(&mt_q4_K_codec, x, p, q); }
static void q5_K_fit(const float *x, mt_blk_params *p, int8_t *q) { q45_K_fit(&mt_q5_K_codec, x, p, q); }

/* d, dmin and the 12 scale bytes of q4_K/q5_K (inverse of mt_q4_K_scale_min). */
static void q45_K_head(const mt_blk_params *p, uint8_t *b) {
    uint8_t *s = b + 4;
    memcpy(b, &p->d, 2);
    memcpy(b + 2, &p->dmin, 2);
    memset(s, 0, 12);
    for (int j = 0; j < 8; ++j) {
        const uint8_t ls = (uint8_t)p->sc[j], lm = p->m[j];
        if (j < 4) {
            s[j] = ls;
            s[j + 4] = lm;
        } else {
            s[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
            s[j - 4] |= (uint8_t)((ls >> 4) << 6);
            s[j - 0] |= (uint8_t)((lm >> 4) << 6);
        }
    }
}

static void q4_K_pack(const int8_t *q, const mt_blk_params *p, uint8_t *b) {
    q45_K_head(p, b);
    uint8_t *qs = b + 16;
    for (int j = 0; j < MT_QK_K; j += 64, qs += 32)
        for (int l = 0; l < 32; ++l) qs[l] = (uint8_t)(q[j + l] | q[j + l + 32] << 4);
}

static void q5_K_pack(const int8_t *q, const mt_blk_params *p, uint8_t *b) {
    q45_K_head(p, b);
    uint8_t *qh = b + 16, *ql = b + 48;
    memset(qh, 0, 32);
    uint8_t m1 = 1, m2 = 2;
    for (int n = 0; n < MT_QK_K; n += 64, ql += 32) {
        for (int j = 0; j < 32; ++j) {
            int l1 = q[n + j], l2 = q[n + j + 32];
            if (l1 > 15) {
                l1 -= 16;
                qh[j] |= m1;
            }
            if (l2 > 15) {
                l2 -= 16;
                qh[j] |= m2;
            }
            ql[j] = (uint8_t)(l1 | l2 << 4);
        }
        m1 = (uint8_t)(m1 << 2);
        m2 = (uint8_t)(m2 << 2);
    }
}

/* ---- q6_K ---------------------------------------------------------------- */
/* qw: importance weights of the sub-block search (imatrix), NULL: x². */
static void q6_K_fit_qw(const float *x, const float *qw, mt_blk_params *p, int8_t *q) {
    int8_t L[MT_QK_K];
    float scales[16];
    float max_scale = 0, max_abs_scale = 0;
    memset(p, 0, sizeof *p);
    for (int ib = 0; ib < 16; ++ib) {
        const float scale = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib, qw ? qw + 16 * ib : NULL);
        scales[ib] = scale;
        const float abs_scale = fabsf(scale);
        if (abs_scale > max_abs_scale) {
            max_abs_scale = abs_scale;
            max_scale = scale;
        }
    }
    if (max_abs_scale < GROUP_MAX_EPS) { /* an all-zero block: every field 0 */
        p->d = mt_f32_to_f16(0.f);
        set_dl_ml(p, 16);
        for (int j = 0; j < MT_QK_K; j++) q[j] = -32;
        return;
    }
    float iscale = -128.f / max_scale;
    p->d = mt_f32_to_f16(1 / iscale);
    for (int ib = 0; ib < 16; ++ib) p->sc[ib] = (int16_t)(int8_t)imin(127, mt_nearest_int(iscale * scales[ib]));
    set_dl_ml(p, 16);
    for (int j = 0; j < MT_QK_K; j++) q[j] = (int8_t)(L[j] - 32);
    requant(&mt_q6_K_codec, p, x, q);
}

static void q6_K_fit(const float *x, mt_blk_params *p, int8_t *q) { q6_K_fit_qw(x, NULL, p, q); }

static void q6_K_pack(const int8_t *q, const mt_blk_params *p, uint8_t *b) {
    uint8_t *ql = b, *qh = b + 128;
    for (int j = 0; j < MT_QK_K; j += 128, ql += 64, qh += 32)
        for (int l = 0; l < 32; ++l) {
            const int L0 = q[j + l] + 32, L1 = q[j + l + 32] + 32, L2 = q[j + l + 64] + 32, L3 = q[j + l + 96] + 32;
            ql[l] = (uint8_t)((L0 & 0xF) | (L2 & 0xF) << 4);
            ql[l + 32] = (uint8_t)((L1 & 0xF) | (L3 & 0xF) << 4);
            qh[l] = (uint8_t)((L0 >> 4) | (L1 >> 4) << 2 | (L2 >> 4) << 4 | (L3 >> 4) << 6);
        }
    for (int j = 0; j < 16; j++) b[192 + j] = (uint8_t)(int8_t)p->sc[j];
    memcpy(b + 208, &p->d, 2);
}

/* ---- the same with an importance matrix (llama.cpp quantize_row_qX_K_impl):
 * sub-block weights w = qw·sqrt(σ² + x²) with σ² the block's mean x² (×2
 * for q3_K..q5_K), sub-block fits by make_qkx3_quants (q2_K, q4_K, q5_K) or
 * make_qx_quants (q3_K), their scales and mins on the integer grid by
 * make_qp_quants / make_qx_quants weighted by each sub-block's Σw; q6_K
 * weights its sub-block search by qw itself. Then every code requantized. */
static float block_sigma2(const float *x) {
    float sumx2 = 0;
    for (int j = 0; j < MT_QK_K; ++j) sumx2 += x[j] * x[j];
    return sumx2 / MT_QK_K;
}

static void q2_K_fit_w(const float *x, const float *qw, mt_blk_params *p, int8_t *q) {
    uint8_t L[MT_QK_K], Laux[16], Ls[16], Lm[16];
    float weight[16], sw[16], mins[16], scales[16];
    const float sigma2 = block_sigma2(x);
    memset(p, 0, sizeof *p);
    for (int j = 0; j < 16; ++j) {
        sw[j] = 0;
        for (int l = 0; l < 16; ++l) weight[l] = qw[16 * j + l] * sqrtf(sigma2 + x[16 * j + l] * x[16 * j + l]);
        for (int l = 0; l < 16; ++l) sw[j] += weight[l];
        scales[j] = make_qkx_quants(16, 3, x + 16 * j, weight, L + 16 * j, &mins[j], Laux, -0.9f, 0.05f, 36, 0, 1);
    }
    const float dm = mt_make_qp_quants(16, 15, scales, Ls, sw), mm = mt_make_qp_quants(16, 15, mins, Lm, sw);
    p->d = mt_f32_to_f16(dm);
    p->dmin = mt_f32_to_f16(mm);
    for (int j = 0; j < 16; ++j) { /* the scale byte Ls | Lm << 4, as stored */
        const uint8_t sb = (uint8_t)(Ls[j] | Lm[j] << 4);
        p->sc[j] = sb & 0x0f;
        p->m[j] = sb >> 4;
    }
    set_dl_ml(p, 16);
    for (int j = 0; j < MT_QK_K; j++) q[j] = (int8_t)L[j];
    requant(&mt_q2_K_codec, p, x, q);
}

static void q3_K_fit_w(const float *x, const float *qw, mt_blk_params *p, int8_t *q) {
    int8_t L[MT_QK_K], Ls[16];
    float weight[16], sw[16], scales[16];
    const float sigma2 = 2 * block_sigma2(x);
    memset(p, 0, sizeof *p);
    for (int j = 0; j < 16; ++j) {
        for (int l = 0; l < 16; ++l) weight[l] = qw[16 * j + l] * sqrtf(sigma2 + x[16 * j + l] * x[16 * j + l]);
        float sumw = 0;
        for (int l = 0; l < 16; ++l) sumw += weight[l];
        sw[j] = sumw;
        scales[j] = make_qx_quants(16, 4, x + 16 * j, L + 16 * j, weight);
    }
    const float d_block = make_qx_quants(16, 32, scales, Ls, sw);
    for (int j = 0; j < 16; ++j) p->sc[j] = (int16_t)(Ls[j] - 32);
    p->d = mt_f32_to_f16(d_block);
    set_dl_ml(p, 16);
    for (int j = 0; j < MT_QK_K; j++) q[j] = (int8_t)(L[j] - 4);
    requant(&mt_q3_K_codec, p, x, q);
}

static void q45_K_fit_w(const mt_blk_codec *c, const float *x, const float *qw, mt_blk_params *p, int8_t *q) {
    uint8_t L[MT_QK_K], Laux[32], Ls[8], Lm[8];
    float weights[32], sw[8], mins[8], scales[8];
    const float sigma2 = 2 * block_sigma2(x);
    memset(p, 0, sizeof *p);
    for (int j = 0; j < 8; ++j) {
        for (int l = 0; l < 32; ++l) weights[l] = qw[32 * j + l] * sqrtf(sigma2 + x[32 * j + l] * x[32 * j + l]);
        float sumw = 0;
        for (int l = 0; l < 32; ++l) sumw += weights[l];
        sw[j] = sumw;
        scales[j] = make_qkx_quants(32, c->qmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -0.9f, 0.05f, 36, 0, 1);
    }
    const float d_block = mt_make_qp_quants(8, 63, scales, Ls, sw), m_block = mt_make_qp_quants(8, 63, mins, Lm, sw);
    for (int j = 0; j < 8; ++j) {
        p->sc[j] = Ls[j] < 63 ? Ls[j] : 63;
        p->m[j] = Lm[j] < 63 ? Lm[j] : 63;
    }
    p->d = mt_f32_to_f16(d_block);
    p->dmin = mt_f32_to_f16(m_block);
    set_dl_ml(p, 8);
    for (int j = 0; j < MT_QK_K; j++) q[j] = (int8_t)L[j];
    requant(c, p, x, q);
}

static void q4_K_fit_w(const float *x, const float *qw, mt_blk_params *p, int8_t *q) {
    q45_K_fit_w(&mt_q4_K_codec, x, qw, p, q);
}
static void q5_K_fit_w(const float *x, const float *qw, mt_blk_params *p, int8_t *q) {
    q45_K_fit_w(&mt_q5_K_codec, x, qw, p, q);
}
static void q6_K_fit_w(const float *x, const float *qw, mt_blk_params *p, int8_t *q) { q6_K_fit_qw(x, qw, p, q); }

const mt_blk_codec mt_q2_K_codec = {MT_QK_K, MT_Q2_K_BYTES, 16, 0, 3, q2_K_fit, q2_K_pack, q2_K_fit_w};
const mt_blk_codec mt_q3_K_codec = {MT_QK_K, MT_Q3_K_BYTES, 16, -4, 3, q3_K_fit, q3_K_pack, q3_K_fit_w};
const mt_blk_codec mt_q4_K_codec = {MT_QK_K, MT_Q4_K_BYTES, 32, 0, 15, q4_K_fit, q4_K_pack, q4_K_fit_w};
const mt_blk_codec mt_q5_K_codec = {MT_QK_K, MT_Q5_K_BYTES, 32, 0, 31, q5_K_fit, q5_K_pack, q5_K_fit_w};
const mt_blk_codec mt_q6_K_codec = {MT_QK_K, MT_Q6_K_BYTES, 16, -32, 31, q6_K_fit, q6_K_pack, q6_K_fit_w};

void mt_blk_row_from_f32(const mt_blk_codec *c, const float *src, void *dst, int64_t n) {
    int8_t q[MT_QK_K];
    mt_blk_params p;
    MT_ASSERT(c->elems <= MT_QK_K);
    for (int64_t b = 0; b < n / c->elems; b++) {
        c->fit(src + (int64_t)c->elems * b, &p, q);
        c->pack(q, &p, (uint8_t *)dst + (int64_t)c->bytes * b);
    }
}

void mt_blk_row_from_f32_w(const mt_blk_codec *c, const float *src, void *dst, int64_t n, const float *qw) {
    int8_t q[MT_QK_K];
    mt_blk_params p;
    MT_ASSERT(c->elems <= MT_QK_K && c->fit_w);
    for (int64_t b = 0; b < n / c->elems; b++) {
        c->fit_w(src + (int64_t)c->elems * b, qw + (int64_t)c->elems * b, &p, q);
        c->pack(q, &p, (uint8_t *)dst + (int64_t)c->bytes * b);
    }
}

#define KQ_FROM(T)                                                                                 \
    void mt_##T##_row_from_f32(const float *src, void *dst, int64_t n) {                          \
        mt_blk_row_from_f32(&mt_##T##_codec, src, dst, n);                                         \
    }                                                                                              \
    void mt_##T##_row_from_f32_w(const float *src, void *dst, int64_t n, const float *qw) {        \
        mt_blk_row_from_f32_w(&mt_##T##_codec, src, dst, n, qw);                                   \
    }
KQ_FROM(q2_K)
KQ_FROM(q3_K)
KQ_FROM(q4_K)
KQ_FROM(q5_K)
KQ_FROM(q6_K)
