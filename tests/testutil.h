/* testutil.h — small helpers shared by the CMocka tests: locating the
 * bundled model and source tree, reading files, temporary directories. */
#ifndef MT_TESTUTIL_H
#define MT_TESTUTIL_H
#include <stddef.h>
#include <stdint.h>

#include "moetool/mt_io.h"

/* $MT_MODEL_DIR (the bundled kjv-mixtral-15m), $MT_SOURCE_DIR, $MT_BIN. */
const char *tu_model_dir(void);
const char *tu_source_dir(void);
const char *tu_bin(void);
/* "<model_dir>/<rel>" in a static rotating buffer. */
const char *tu_model_path(const char *rel);
/* Whole file into a malloc'd buffer (NUL-terminated); NULL on failure. */
char *tu_read_file(const char *path, size_t *len);
/* Fresh empty directory under $TMPDIR; caller frees the string. */
char *tu_mkdtemp(void);
/* rm -rf of a directory made by tu_mkdtemp. */
void tu_rmtree(const char *path);
/* The bundled model's held-out data/test.txt as token ids of `tok`
 * (malloc'd, *n of them); NULL on failure. */
struct mt_tokenizer;
int32_t *tu_test_ids(const struct mt_tokenizer *tok, size_t *n);
/* Deterministic test data (xorshift64 over *state, any nonzero seed):
 * 32 random bits, or a float in [-1, 1). */
uint32_t tu_rand_u32(uint64_t *state);
float tu_rand_unit(uint64_t *state);

/* Whitespace-separated integers of a file into ids (at most cap); the count,
 * or -1 when the file cannot be read. */
int tu_read_ids(const char *path, int32_t *ids, int cap);
/* max |a[i] - b[i]| in double. */
double tu_max_abs_diff(const float *a, const float *b, size_t n);
/* system(cmd), printing the command when it fails; its status. */
int tu_system(const char *cmd);
/* Logits (n x vocab, malloc'd) of ids run from an empty cache on a fresh
 * model loaded from path with 2 threads. Also runs the same ids token by
 * token through the KV cache and stores the largest difference to the
 * prefill rows in *decode_diff. routing (may be NULL): the top-k experts of
 * every layer and token (malloc'd; NULL for a model without MoE layers).
 * cfg (may be NULL): a copy of the model's description (mt_config_free it).
 * NULL, with the reason printed, on any failure. */
float *tu_model_logits(const char *path, const int32_t *ids, int n, int32_t **routing,
                       mt_config *cfg, double *decode_diff);

#endif
