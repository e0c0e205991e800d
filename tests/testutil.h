/* testutil.h — small helpers shared by the CMocka tests: locating the
 * bundled model and source tree, reading files, temporary directories. */
#ifndef MT_TESTUTIL_H
#define MT_TESTUTIL_H
#include <stddef.h>
#include <stdint.h>

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

#endif
