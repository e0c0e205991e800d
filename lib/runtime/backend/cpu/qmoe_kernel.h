/* qmoe_kernel.h — private to the runtime: the kernels that execute
 * MT_DT_QMOE matrices (ternary weights in the Tunstall code of mt_qmoe.h)
 * without materialising them, over the codec's layout (lib/io/codec/qmoe.c,
 * mt_mat.side.qmoe). kernels.c dispatches here; tests and the
 * bench call the variants directly to compare them. */
#ifndef MT_QMOE_KERNEL_H
#define MT_QMOE_KERNEL_H

#include "moetool/mt_qmoe.h"

/* y[r] = dot(W[r,:], x) for r in [r0, r1). W is MT_DT_QMOE.
 * _ref: symbol by symbol, each weight lo/hi/0 times x summed in double.
 * _bits: portable C, per codeword the set bits of its +1 / -1 masks
 *        (count trailing zeros) add x into two sums; y = hi·S₊ + lo·S₋.
 * _avx512: the masks drive masked loads/adds of 16 floats (0 when the
 *        build has no AVX-512: the caller falls back).
 * mt_qmoe_matvec_rows: the one the runtime uses (_lut where it applies,
 * else _planes, else _avx512 where built with AVX-512; without it _avx2
 * where the CPU has AVX2 and the shape fits; else _bits; docs/qmoe.md). */
void mt_qmoe_matvec_rows_ref(const mt_mat *W, const float *x, float *y, int64_t r0, int64_t r1);
void mt_qmoe_matvec_rows_bits(const mt_mat *W, const float *x, float *y, int64_t r0, int64_t r1);
int mt_qmoe_matvec_rows_avx512(const mt_mat *W, const float *x, float *y, int64_t r0, int64_t r1);
/* _planes: two stages per group of rows: the codewords expanded into +1 / -1
 *        bitplanes (branch-free bit writer), then AVX-512 masked adds of 16
 *        columns per mask. Returns 0 without touching y when not built with
 *        AVX-512 or when cols % 16 != 0 or a group exceeds 16·16384 symbols. */
int mt_qmoe_matvec_rows_planes(const mt_mat *W, const float *x, float *y, int64_t r0, int64_t r1);
/* _lut: the same planes (stage 1 prefetching the dictionary entries a few
 *        codewords ahead), then the 16 rows of a group at once, one per
 *        lane: each 4-bit slice of a plane indexes a table (built per call in
 *        a per-thread buffer) of the 16 subset sums of 4 x values (vpermps). Returns 0 without touching
 *        y when not built with AVX-512, when a group has more than 16 rows,
 *        cols % 8 != 0 or cols > 16384, or the table cannot be allocated. */
int mt_qmoe_matvec_rows_lut(const mt_mat *W, const float *x, float *y, int64_t r0, int64_t r1);
/* _avx2: _lut with AVX2 only (8 lanes: two halves of 8 rows, two 8-entry
 *        lookups and a blend per 4-bit slice), built on every x86-64 build
 *        whatever -march, run where the CPU has AVX2. Returns 0 without
 *        touching y when the CPU (or the build's target) has no AVX2 or on
 *        the shapes _lut declines. */
int mt_qmoe_matvec_rows_avx2(const mt_mat *W, const float *x, float *y, int64_t r0, int64_t r1);
void mt_qmoe_matvec_rows(const mt_mat *W, const float *x, float *y, int64_t r0, int64_t r1);

/* Row r of W as f32 (cols floats). */
void mt_qmoe_row_f32(const mt_mat *W, int64_t r, float *out);

#endif
