/* arch_impl.h — the families' tables, for the registry in arch.c. Adding a
 * family: one arch_<family>.c defining a `const mt_arch`, one line here and
 * one entry in arch.c's registry. */
#ifndef MT_ARCH_IMPL_H
#define MT_ARCH_IMPL_H

#include "moetool/mt_arch.h"

extern const mt_arch mt_arch_mixtral;
extern const mt_arch mt_arch_mistral;
extern const mt_arch mt_arch_llama;
extern const mt_arch mt_arch_qwen2moe;
extern const mt_arch mt_arch_qwen3moe;
extern const mt_arch mt_arch_olmoe;

#endif
