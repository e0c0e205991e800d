/* codec_impl.h — private to lib/io: the row codecs the storage-type table
 * (lib/io/dtype.c) points at. n is a whole number of blocks (checked by
 * mt_row_to_f32 / mt_row_from_f32 before they dispatch). */
#ifndef MT_CODEC_IMPL_H
#define MT_CODEC_IMPL_H

#include <string.h>

#include "moetool/mt_common.h"

/* Round to nearest, ties to even, as llama.cpp's nearest_int (|x| < 2^22). */
static inline int mt_nearest_int(float fval) {
    float val = fval + 12582912.f;
    int i;
    memcpy(&i, &val, sizeof(int));
    return (i & 0x007fffff) - 0x00400000;
}

void mt_f32_row_to_f32(const void *src, float *dst, int64_t n);
void mt_f32_row_from_f32(const float *src, void *dst, int64_t n);
void mt_f16_row_to_f32(const void *src, float *dst, int64_t n);
void mt_f16_row_from_f32(const float *src, void *dst, int64_t n);
void mt_bf16_row_to_f32(const void *src, float *dst, int64_t n);
void mt_bf16_row_from_f32(const float *src, void *dst, int64_t n);
void mt_q8_0_row_to_f32(const void *src, float *dst, int64_t n);
void mt_q8_0_row_from_f32(const float *src, void *dst, int64_t n);
void mt_q4_0_row_to_f32(const void *src, float *dst, int64_t n);
void mt_q4_0_row_from_f32(const float *src, void *dst, int64_t n);
void mt_tq1_0_row_to_f32(const void *src, float *dst, int64_t n);
void mt_tq2_0_row_to_f32(const void *src, float *dst, int64_t n);
void mt_q4_1_row_to_f32(const void *src, float *dst, int64_t n);
void mt_q5_0_row_to_f32(const void *src, float *dst, int64_t n);
void mt_q5_1_row_to_f32(const void *src, float *dst, int64_t n);
void mt_q2_K_row_to_f32(const void *src, float *dst, int64_t n);
void mt_q3_K_row_to_f32(const void *src, float *dst, int64_t n);
void mt_q4_K_row_to_f32(const void *src, float *dst, int64_t n);
void mt_q5_K_row_to_f32(const void *src, float *dst, int64_t n);
void mt_q6_K_row_to_f32(const void *src, float *dst, int64_t n);
void mt_q8_K_row_to_f32(const void *src, float *dst, int64_t n);
void mt_q4_1_row_from_f32(const float *src, void *dst, int64_t n);
void mt_q5_0_row_from_f32(const float *src, void *dst, int64_t n);
void mt_q5_1_row_from_f32(const float *src, void *dst, int64_t n);
void mt_q2_K_row_from_f32(const float *src, void *dst, int64_t n);
void mt_q3_K_row_from_f32(const float *src, void *dst, int64_t n);
void mt_q4_K_row_from_f32(const float *src, void *dst, int64_t n);
void mt_q5_K_row_from_f32(const float *src, void *dst, int64_t n);
void mt_q6_K_row_from_f32(const float *src, void *dst, int64_t n);
/* The block quantizers (mt_codec.h) and a row of whole blocks through one. */
extern const mt_blk_codec mt_q4_1_codec, mt_q5_0_codec, mt_q5_1_codec;
extern const mt_blk_codec mt_q2_K_codec, mt_q3_K_codec, mt_q4_K_codec, mt_q5_K_codec, mt_q6_K_codec;
void mt_blk_row_from_f32(const mt_blk_codec *c, const float *src, void *dst, int64_t n);
/* The same with importance weights qw (n floats; c->fit_w) and the K-quant
 * rows through them. */
void mt_blk_row_from_f32_w(const mt_blk_codec *c, const float *src, void *dst, int64_t n, const float *qw);
void mt_q2_K_row_from_f32_w(const float *src, void *dst, int64_t n, const float *qw);
void mt_q3_K_row_from_f32_w(const float *src, void *dst, int64_t n, const float *qw);
void mt_q4_K_row_from_f32_w(const float *src, void *dst, int64_t n, const float *qw);
void mt_q5_K_row_from_f32_w(const float *src, void *dst, int64_t n, const float *qw);
void mt_q6_K_row_from_f32_w(const float *src, void *dst, int64_t n, const float *qw);
void mt_iq4_nl_row_to_f32(const void *src, float *dst, int64_t n);
void mt_iq4_xs_row_to_f32(const void *src, float *dst, int64_t n);
/* The same written from f32 (iq4_enc.c), with importance weights qw (one
 * per column; NULL: none) as llama.cpp's quantize_iq4_nl / _xs. */
void mt_iq4_nl_row_from_f32(const float *src, void *dst, int64_t n);
void mt_iq4_xs_row_from_f32(const float *src, void *dst, int64_t n);
void mt_iq4_nl_row_from_f32_w(const float *src, void *dst, int64_t n, const float *qw);
void mt_iq4_xs_row_from_f32_w(const float *src, void *dst, int64_t n, const float *qw);
void mt_iq2_xxs_row_to_f32(const void *src, float *dst, int64_t n);
void mt_iq2_xs_row_to_f32(const void *src, float *dst, int64_t n);
void mt_iq2_s_row_to_f32(const void *src, float *dst, int64_t n);
void mt_iq3_xxs_row_to_f32(const void *src, float *dst, int64_t n);
void mt_iq3_s_row_to_f32(const void *src, float *dst, int64_t n);
void mt_iq1_s_row_to_f32(const void *src, float *dst, int64_t n);
void mt_iq1_m_row_to_f32(const void *src, float *dst, int64_t n);
/* The same written from f32 with importance weights qw (iq_enc.c) as
 * llama.cpp's quantize_iq2_xxs .. quantize_iq1_m (qw NULL: weights x², a
 * fallback llama.cpp refuses for iq2_xxs, iq2_xs, iq1_s). */
void mt_iq2_xxs_row_from_f32_w(const float *src, void *dst, int64_t n, const float *qw);
void mt_iq2_xs_row_from_f32_w(const float *src, void *dst, int64_t n, const float *qw);
void mt_iq2_s_row_from_f32_w(const float *src, void *dst, int64_t n, const float *qw);
void mt_iq3_xxs_row_from_f32_w(const float *src, void *dst, int64_t n, const float *qw);
void mt_iq3_s_row_from_f32_w(const float *src, void *dst, int64_t n, const float *qw);
void mt_iq1_s_row_from_f32_w(const float *src, void *dst, int64_t n, const float *qw);
void mt_iq1_m_row_from_f32_w(const float *src, void *dst, int64_t n, const float *qw);
/* MT_OK once the lattice tables of i-quant t are built (built on first
 * use; other types: MT_OK), else MT_ERR_NOMEM with a message. */
int mt_iq_lattice_ready(mt_dtype t);
/* llama.cpp's make_qp_quants (kquant_enc.c): codes 0..nmax of x >= 0. */
float mt_make_qp_quants(int n, int nmax, const float *x, uint8_t *L, const float *qw);

/* Every weight of the n / elems blocks (of `bytes` bytes each) at src as
 * d·q, with the codes and f16 d from `unpack` (block.c). */
typedef uint16_t (*mt_block_unpack_fn)(const uint8_t *blk, int8_t *q);
void mt_blocks_to_f32(const uint8_t *src, float *dst, int64_t n, int elems, int bytes, mt_block_unpack_fn unpack);
/* The same with a decoder that writes a whole block's floats (kquant.c). */
void mt_blocks_each_to_f32(const uint8_t *src, float *dst, int64_t n, int elems, int bytes,
                           void (*block)(const uint8_t *, float *));

#endif
