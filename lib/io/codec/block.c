/* block.c — what the block codecs (q8_0, q4_0, tq1_0, tq2_0) share: a
 * row of blocks to f32, each weight d·q from the block's own unpacker. */
#include "codec_impl.h"

void mt_blocks_to_f32(const uint8_t *src, float *dst, int64_t n, int elems, int bytes, mt_block_unpack_fn unpack) {
    int8_t q[MT_QK_K];
    MT_ASSERT(elems <= MT_QK_K);
    for (int64_t b = 0; b < n / elems; b++) {
        const float d = mt_f16_to_f32(unpack(src + (int64_t)bytes * b, q));
        for (int j = 0; j < elems; j++) dst[elems * b + j] = d * (float)q[j];
    }
}
