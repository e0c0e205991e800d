/* writer_impl.h — private parts of lib/io's writers; the writers themselves
 * are public in include/moetool/mt_write.h. */
#ifndef MT_WRITER_IMPL_H
#define MT_WRITER_IMPL_H

#include "io_impl.h"

#include "moetool/mt_write.h"

/* The metadata key every GGUF moetool writes carries (value "moetool"); it
 * is how a previous output is recognised (docs/outputs.md). */
#define MT_GGUF_MOETOOL_KEY "moetool.writer"

/* A writer that only measures: metadata and tensor infos, no file
 * (mt_gguf_export_sizes); write and finish fail. */
int mt_gguf_writer_open_measure(mt_gguf_writer **out, const char *name);
/* Bytes before the data section of what the writer holds so far (as
 * write_header would emit it, the writer's mark included). */
uint64_t mt_gguf_writer_header_bytes(const mt_gguf_writer *w);

#endif
