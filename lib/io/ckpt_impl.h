/* ckpt_impl.h — private helpers shared by the safetensors reader, the
 * config reader, the checkpoint view and the weight mapper in lib/io. */
#ifndef MT_CKPT_IMPL_H
#define MT_CKPT_IMPL_H

#include "io_impl.h"

/* Size in bytes of the file (or buffer) behind a parsed safetensors. */
uint64_t mt_safetensors_file_size(const mt_safetensors *st);

/* A safetensors-like view over tensors another reader found (the PyTorch
 * zip): takes `tensors` ([n], malloc'd; names and data owned by `owner`)
 * and `owner`, released by owner_free(owner) when the view is freed (also
 * on error). Builds the by-name index; a name seen twice is MT_ERR_FORMAT. */
int mt_safetensors_adopt(mt_safetensors **out, const char *name, uint64_t file_size, mt_tensor *tensors, size_t n,
                         void *owner, void (*owner_free)(void *));

/* Range checks shared by the HF and GGUF config readers: positive sizes,
 * heads divisible by kv heads, top_k <= n_experts, layer count, even
 * head_dim, finite positive rope_theta/eps. Message names `path`. */
int mt_config_validate(const mt_config *c, const char *path);

/* A qmoe blob tensor (U8, "<weight>.qmoe") as an MT_DT_QMOE matrix of
 * (rows, cols), its header checked (weights.c; the decoder-only and the
 * encoder-decoder loaders). */
int mt_qmoe_blob_mat(const mt_ckpt *ck, const char *path, const char *blob_name, int64_t rows, int64_t cols,
                     mt_mat *m);

#endif
