/* ckpt_impl.h — private helpers shared by the safetensors reader, the
 * config reader, the checkpoint view and the weight mapper in lib/io. */
#ifndef MT_CKPT_IMPL_H
#define MT_CKPT_IMPL_H

#include "io_impl.h"

/* Size in bytes of the file (or buffer) behind a parsed safetensors. */
uint64_t mt_safetensors_file_size(const mt_safetensors *st);

/* Range checks shared by the HF and GGUF config readers: positive sizes,
 * heads divisible by kv heads, top_k <= n_experts, layer count, even
 * head_dim, finite positive rope_theta/eps. Message names `path`. */
int mt_config_validate(const mt_config *c, const char *path);

#endif
