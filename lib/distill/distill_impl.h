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

/* splitmix64 */
uint64_t dst_rng_next(uint64_t *s);

#endif
