/* distill_impl.h — private to lib/distill (and its tests): the student's
 * construction from a teacher, teacher logits, and the HF writer of a
 * student, used by mt_distill and by the gradient check against PyTorch. */
#ifndef MT_DISTILL_IMPL_H
#define MT_DISTILL_IMPL_H

#include "engine_impl.h"
#include "moetool/mt_distill.h"
#include "moetool/mt_runtime.h"

/* The student's engine shape and its HF config (arch "mistral", dense, FFN
 * width `width`) from the teacher's config. */
void dst_engine_config(dt_config *out, const mt_config *teacher, int width);
int dst_student_config(mt_config *out, const mt_config *teacher, int width);

/* The engine shape (MoE) and the output's HF config (the student's own,
 * f32) of a Mixtral-format MoE student to heal; refuses students the engine
 * does not train (other families, alias routing, per-layer expert counts,
 * quantized weights) with one line naming path. */
int dst_moe_config(dt_config *out, mt_config *sc_out, const mt_model *student, const char *path);
/* Copies every weight of the MoE student (router and experts included). */
int dst_student_from_moe(dt_model *m, const mt_model *student);

/* Fills m's parameters from the teacher: embeddings, attention, norms and
 * lm_head copied; the FFN by `init`, with routing statistics counted over
 * the first init_tokens of ids (windows of seq) for concat and average;
 * random init draws from *rng. */
int dst_student_from_teacher(dt_model *m, mt_model *teacher, int init, const int32_t *ids, size_t n_ids,
                             int init_tokens, int seq, uint64_t *rng);

/* Teacher logits (B·T, V) of B sequences of T tokens, each from position 0. */
int dst_teacher_logits(mt_ctx *ctx, const int32_t *tokens, int B, int T, int V, float *out);

/* Writes the student's weights (f32, HF names of `sc`'s family), config.json
 * and the teacher's tokenizer files into the existing directory `dir`.
 * `values` is m->params, or m->grads to dump gradients under the same names. */
int dst_write_hf(const dt_model *m, const float *values, const mt_config *sc, const mt_ckpt *teacher_ck,
                 const char *dir, int with_config);

/* ---- top-K teacher logit cache (cache.c) ---- */
typedef struct {
    uint64_t key;
    int K, T, n_win;   /* K logits per position, windows of T, windows in the data */
    int32_t *slot;     /* [n_win] stored index of a window, -1 */
    int32_t *window;   /* [n] window of each stored entry */
    int32_t *ids;      /* [n][T][K] token ids, largest logit first */
    float *vals;       /* [n][T][K] their logits */
    int n, cap, loaded; /* loaded: entries read from the file */
} dst_cache;
/* Hash of the teacher, the encoded data, K and T that names a cache. */
uint64_t dst_cache_key(const mt_model *t, const int32_t *ids, size_t n_ids, int K, int T);
/* Reads path when it exists (empty cache otherwise); another key, K, T or a
 * corrupt file is an error naming path. */
int dst_cache_open(dst_cache *c, const char *path, uint64_t key, int K, int T, int n_win);
/* Stores the top K of the teacher logits (T, V) of window. */
int dst_cache_add(dst_cache *c, int window, const float *logits, int V);
/* Writes the cache atomically; *bytes = the file's size. */
int dst_cache_save(dst_cache *c, const char *path, uint64_t *bytes);
void dst_cache_free(dst_cache *c);
/* Rows (n, V): the K largest values (descending, ties to the lower index). */
void dst_topk_select(const float *logits, int n, int V, int K, int32_t *ids, float *vals);
/* Rows (n, V) holding those K logits and -1e30 elsewhere. */
void dst_topk_expand(const int32_t *ids, const float *vals, int n, int V, int K, float *logits);

/* Whether path is a plain file beginning with the 8-byte magic (a file
 * moetool distill wrote: replaced or removed without --force). */
int dst_file_is_ours(const char *path, const char *magic);

/* splitmix64 */
uint64_t dst_rng_next(uint64_t *s);

#endif
