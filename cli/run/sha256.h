/* sha256.h — SHA-256 for content-addressed recipe steps. */
#ifndef MT_CLI_SHA256_H
#define MT_CLI_SHA256_H
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t h[8];
    uint64_t len;
    uint8_t buf[64];
    size_t n;
} sha256_ctx;

void sha256_init(sha256_ctx *c);
void sha256_update(sha256_ctx *c, const void *data, size_t len);
/* Finishes and writes 64 hex digits + NUL. */
void sha256_hex(sha256_ctx *c, char out[65]);
#endif
