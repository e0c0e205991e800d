/* writer_impl.h — private parts of lib/io's writers; the writers themselves
 * are public in include/moetool/mt_write.h. */
#ifndef MT_WRITER_IMPL_H
#define MT_WRITER_IMPL_H

#include "io_impl.h"

#include "moetool/mt_write.h"

/* The metadata key every GGUF moetool writes carries (value "moetool"); it
 * is how a previous output is recognised (docs/outputs.md). */
#define MT_GGUF_MOETOOL_KEY "moetool.writer"

#endif
