/* mt_dtype.h — THE storage-type table: one row per type the tree can hold,
 * with every name and number other formats give it and its row codecs, as
 * ggml's type_traits. Formats (safetensors, GGUF, config.json), the CLI and
 * the quantizers ask this table instead of keeping their own lists; the
 * only `switch` over storage types outside lib/io/dtype.c and
 * lib/io/codec/ are the runtime's kernel tables. Included by mt_common.h. */
#ifndef MT_DTYPE_H
#define MT_DTYPE_H

#include <stddef.h>
#include <stdint.h>

#include "moetool/mt_codec.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Values are our own (stable within a build, never written to a file);
 * GGUF and safetensors codes are columns of the table. Block types store
 * `block_elems` weights in `block_bytes` bytes along the innermost (column)
 * dimension; a row is always a whole number of blocks. */
typedef enum {
    MT_DT_F32 = 0,
    MT_DT_F16,
    MT_DT_BF16,
    MT_DT_Q8_0,   /* llama.cpp block_q8_0 (mt_codec.h)                     */
    MT_DT_Q4_0,   /* llama.cpp block_q4_0 (mt_codec.h)                     */
    MT_DT_TQ1_0,  /* llama.cpp ternary, 256 weights in 54 bytes            */
    MT_DT_TQ2_0,  /* llama.cpp ternary, 256 weights in 66 bytes            */
    MT_DT_I8,
    MT_DT_I16,
    MT_DT_I32,
    MT_DT_I64,
    MT_DT_U8,
    MT_DT_F64,
    MT_DT_F8_E4M3,
    MT_DT_F8_E5M2,
    MT_DT_BOOL,
    MT_DT_QMOE,   /* ternary rows in the Tunstall code of mt_qmoe.h; variable
                     size (block_bytes 0): codes in data, side arrays in aux */
    MT_DT_Q4_1,   /* llama.cpp legacy blocks of 32 (lib/io/codec/legacy.c)  */
    MT_DT_Q5_0,
    MT_DT_Q5_1,
    MT_DT_Q2_K,   /* llama.cpp K-quants, 256 weights (lib/io/codec/kquant.c) */
    MT_DT_Q3_K,
    MT_DT_Q4_K,
    MT_DT_Q5_K,
    MT_DT_Q6_K,
    MT_DT_Q8_K,
    MT_DT_IQ4_NL, /* llama.cpp non-linear 4-bit (lib/io/codec/iq4.c)        */
    MT_DT_IQ4_XS,
    MT_DT_IQ2_XXS, /* llama.cpp lattice i-quants (lib/io/codec/iquant.c)    */
    MT_DT_IQ2_XS,
    MT_DT_IQ2_S,
    MT_DT_IQ3_XXS,
    MT_DT_IQ3_S,
    MT_DT_IQ1_S,
    MT_DT_IQ1_M,
    MT_DT_COUNT
} mt_dtype;

/* Row codecs of a table row: n elements, n a multiple of block_elems (the
 * caller checks; mt_row_to_f32/mt_row_from_f32 do). Plain C references. */
typedef void (*mt_row_to_f32_fn)(const void *src, float *dst, int64_t n);
typedef void (*mt_row_from_f32_fn)(const float *src, void *dst, int64_t n);
/* The same with an importance weight per element of the row (qw, n floats:
 * llama.cpp's imatrix values of the row's columns); qw NULL: none. */
typedef void (*mt_row_from_f32_w_fn)(const float *src, void *dst, int64_t n, const float *qw);

typedef struct {
    const char *name;        /* "bf16", "q8_0", ... as users type it        */
    int block_elems;         /* 1 for scalar types                          */
    int block_bytes;         /* bytes of one block (element size for scalars;
                                0: variable size, MT_DT_QMOE)               */
    int is_float;            /* usable as model weight by the runtime       */
    const char *st_name;     /* safetensors "dtype" ("BF16"); NULL: none    */
    const char *torch_name;  /* torch dtype ("bfloat16"); NULL: none        */
    int ggml_type;           /* GGUF tensor type (ggml.h enum ggml_type); -1 */
    int gguf_file_type;      /* general.file_type when this type dominates a
                                GGUF (llama.h LLAMA_FTYPE_*); -1: none      */
    mt_row_to_f32_fn to_f32;     /* NULL: cannot be read as numbers          */
    mt_row_from_f32_fn from_f32; /* NULL: we do not write it from f32        */
    int gptq_bits;           /* width of the AutoGPTQ int layout the type
                                packs into losslessly (mt_codec.h); 0: none */
    const mt_blk_codec *blk; /* its block quantizer in two steps (fit, then
                                codes; mt_codec.h), for GPTQ; NULL: none    */
    mt_row_from_f32_w_fn from_f32_w; /* llama.cpp's quantizer with an
                                importance matrix; NULL: it takes none      */
} mt_dtype_info;

/* The row of t, or NULL when t is not a storage type. */
const mt_dtype_info *mt_dtype_get(mt_dtype t);
/* "?" when t is not a storage type. */
const char *mt_dtype_name(mt_dtype t);
/* Parses a user-typed name ("bf16", "Q8_0", "f32", "float16"); -1 if unknown. */
int mt_dtype_from_name(const char *name);
/* safetensors dtype string ("BF16") -> type, -1 if unknown; and back, NULL
 * when the type has no safetensors form. */
int mt_dtype_from_st_name(const char *s);
const char *mt_dtype_st_name(mt_dtype t);
/* GGUF tensor type id -> type, -1 when ggml knows it and we do not (or
 * nobody does); and back, -1 when the type has no GGUF form. */
int mt_dtype_from_ggml_type(uint32_t ggml_type);
int mt_dtype_ggml_type(mt_dtype t);
/* ggml's name of a GGUF tensor type id ("Q4_K"), "unknown" if none: for
 * messages about tensors we cannot read. */
const char *mt_ggml_type_name(uint32_t ggml_type);

/* general.file_type of a GGUF whose weight matrices are mostly of type t:
 * the table's value, else MT_GGUF_FILE_TYPE_DEFAULT. */
#define MT_GGUF_FILE_TYPE_DEFAULT 0 /* LLAMA_FTYPE_ALL_F32 */
uint32_t mt_dtype_gguf_file_type(mt_dtype t);
/* The type whose table row has general.file_type ft, -1 if none. */
int mt_dtype_from_gguf_file_type(uint32_t ft);

/* The type that AutoGPTQ codes of `bits` bits unpack into losslessly
 * (q4_0 for 4, q8_0 for 8), -1 if none. */
int mt_dtype_from_gptq_bits(int bits);

/* A plain float type (f32, f16, bf16): written as is into a Hugging Face
 * checkpoint and named by config.json's torch_dtype. */
int mt_dtype_is_plain_float(mt_dtype t);
/* config.json "torch_dtype" for a checkpoint whose weights are mostly of
 * type t: its torch name when t is a plain float type, else `fallback`. */
const char *mt_dtype_config_torch_name(mt_dtype t, const char *fallback);

/* Bytes of `n` elements; sets *out and returns MT_OK, or MT_ERR_FORMAT when
 * n is not a multiple of the block size or the product overflows. */
int mt_dtype_nbytes(mt_dtype t, uint64_t n, uint64_t *out);

/* Whether every scale of the `nblocks` blocks of type t at data is finite
 * (types without block scales: always). Returns the index of the first
 * block with a NaN/inf scale, or -1 when all are finite. */
int64_t mt_dtype_find_nonfinite_block(mt_dtype t, const void *data, int64_t nblocks);

/* Converts `n` elements of a row of type `t` to f32 (the table's to_f32);
 * MT_ERR_FORMAT when n is not whole blocks, MT_ERR_UNSUPPORTED without a
 * codec. Plain C reference; fast paths live in the runtime's kernels. */
int mt_row_to_f32(mt_dtype t, const void *src, float *dst, int64_t n);
/* Quantizes/converts n f32 values into type t (the table's from_f32: f32,
 * f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_K..q6_K), with llama.cpp's
 * reference rounding for the block types (what its quantizer writes
 * without an importance matrix). */
int mt_row_from_f32(mt_dtype t, const float *src, void *dst, int64_t n);
/* mt_row_from_f32 weighted by the importance qw (n floats, one per
 * element; NULL: mt_row_from_f32), as llama.cpp's quantizer given an
 * importance matrix. MT_ERR_UNSUPPORTED for types whose quantizer takes
 * none here. */
int mt_row_from_f32_w(mt_dtype t, const float *src, void *dst, int64_t n, const float *qw);

#ifdef __cplusplus
}
#endif
#endif
