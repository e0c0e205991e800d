/* dtype.c — THE storage-type table (mt_dtype.h): one row per mt_dtype with
 * its user name, block size, the names and numbers safetensors, torch, ggml
 * (GGUF tensor type) and llama.cpp (general.file_type) give it, and its row
 * codecs (lib/io/codec/). Every mapping between our types and a format's is
 * a lookup here.
 *
 * general.file_type: a GGUF records the LLAMA_FTYPE_* of its dominant weight
 * type. Types without one (integers, f64, qmoe) map to
 * MT_GGUF_FILE_TYPE_DEFAULT = LLAMA_FTYPE_ALL_F32 (0), the value convert
 * has always written for them. (quantize once fell back to 32, BF16, but
 * only for expert types it then refuses to write to GGUF, so no file ever
 * carried that default.) */
#include <string.h>
#include <strings.h>

#include "codec/codec_impl.h"

#define NONE (-1)

static const mt_dtype_info g_dtypes[MT_DT_COUNT] = {
    /* name, block elems, block bytes, is_float, safetensors, torch, ggml type, file_type, to_f32, from_f32, gptq_bits, blk */
    [MT_DT_F32] = {"f32", 1, 4, 1, "F32", "float32", 0, 0, mt_f32_row_to_f32, mt_f32_row_from_f32},
    [MT_DT_F16] = {"f16", 1, 2, 1, "F16", "float16", 1, 1, mt_f16_row_to_f32, mt_f16_row_from_f32},
    [MT_DT_BF16] = {"bf16", 1, 2, 1, "BF16", "bfloat16", 30, 32, mt_bf16_row_to_f32, mt_bf16_row_from_f32},
    [MT_DT_Q8_0] = {"q8_0", MT_QK8_0, MT_Q8_0_BYTES, 1, NULL, NULL, 8, 7, mt_q8_0_row_to_f32, mt_q8_0_row_from_f32, 8},
    [MT_DT_Q4_0] = {"q4_0", MT_QK4_0, MT_Q4_0_BYTES, 1, NULL, NULL, 2, 2, mt_q4_0_row_to_f32, mt_q4_0_row_from_f32, 4},
    [MT_DT_TQ1_0] = {"tq1_0", MT_QK_K, MT_TQ1_0_BYTES, 1, NULL, NULL, 34, 36, mt_tq1_0_row_to_f32, NULL},
    [MT_DT_TQ2_0] = {"tq2_0", MT_QK_K, MT_TQ2_0_BYTES, 1, NULL, NULL, 35, 37, mt_tq2_0_row_to_f32, NULL},
    [MT_DT_I8] = {"i8", 1, 1, 0, "I8", "int8", 24, NONE, NULL, NULL},
    [MT_DT_I16] = {"i16", 1, 2, 0, "I16", "int16", 25, NONE, NULL, NULL},
    [MT_DT_I32] = {"i32", 1, 4, 0, "I32", "int32", 26, NONE, NULL, NULL},
    [MT_DT_I64] = {"i64", 1, 8, 0, "I64", "int64", 27, NONE, NULL, NULL},
    [MT_DT_U8] = {"u8", 1, 1, 0, "U8", "uint8", NONE, NONE, NULL, NULL},
    [MT_DT_F64] = {"f64", 1, 8, 0, "F64", "float64", 28, NONE, NULL, NULL},
    [MT_DT_F8_E4M3] = {"f8_e4m3", 1, 1, 1, "F8_E4M3", "float8_e4m3fn", NONE, NONE, NULL, NULL},
    [MT_DT_F8_E5M2] = {"f8_e5m2", 1, 1, 1, "F8_E5M2", "float8_e5m2", NONE, NONE, NULL, NULL},
    [MT_DT_BOOL] = {"bool", 1, 1, 0, "BOOL", "bool", NONE, NONE, NULL, NULL},
    [MT_DT_QMOE] = {"qmoe", 1, 0, 1, NULL, NULL, NONE, NONE, NULL, NULL},
    /* q4_1 .. q6_k also from f32 (llama.cpp's reference quantizers; their
     * block quantizer for GPTQ); the rest read only. file_type: the LLAMA_FTYPE of the mix a type
     * dominates in llama-quantize's output (Q3_K_M 12, Q4_K_M 15, Q5_K_M 17;
     * IQ3_S 26, not IQ3_XS 22 or IQ3_M 27; IQ2_S 28, not IQ2_M 29);
     * Q8_K is llama.cpp's activation type and has none. */
    [MT_DT_Q4_1] = {"q4_1", 32, MT_Q4_1_BYTES, 1, NULL, NULL, 3, 3, mt_q4_1_row_to_f32, mt_q4_1_row_from_f32, 0, &mt_q4_1_codec},
    [MT_DT_Q5_0] = {"q5_0", 32, MT_Q5_0_BYTES, 1, NULL, NULL, 6, 8, mt_q5_0_row_to_f32, mt_q5_0_row_from_f32, 0, &mt_q5_0_codec},
    [MT_DT_Q5_1] = {"q5_1", 32, MT_Q5_1_BYTES, 1, NULL, NULL, 7, 9, mt_q5_1_row_to_f32, mt_q5_1_row_from_f32, 0, &mt_q5_1_codec},
    [MT_DT_Q2_K] = {"q2_k", MT_QK_K, MT_Q2_K_BYTES, 1, NULL, NULL, 10, 10, mt_q2_K_row_to_f32, mt_q2_K_row_from_f32, 0, &mt_q2_K_codec,
                    mt_q2_K_row_from_f32_w},
    [MT_DT_Q3_K] = {"q3_k", MT_QK_K, MT_Q3_K_BYTES, 1, NULL, NULL, 11, 12, mt_q3_K_row_to_f32, mt_q3_K_row_from_f32, 0, &mt_q3_K_codec,
                    mt_q3_K_row_from_f32_w},
    [MT_DT_Q4_K] = {"q4_k", MT_QK_K, MT_Q4_K_BYTES, 1, NULL, NULL, 12, 15, mt_q4_K_row_to_f32, mt_q4_K_row_from_f32, 0, &mt_q4_K_codec,
                    mt_q4_K_row_from_f32_w},
    [MT_DT_Q5_K] = {"q5_k", MT_QK_K, MT_Q5_K_BYTES, 1, NULL, NULL, 13, 17, mt_q5_K_row_to_f32, mt_q5_K_row_from_f32, 0, &mt_q5_K_codec,
                    mt_q5_K_row_from_f32_w},
    [MT_DT_Q6_K] = {"q6_k", MT_QK_K, MT_Q6_K_BYTES, 1, NULL, NULL, 14, 18, mt_q6_K_row_to_f32, mt_q6_K_row_from_f32, 0, &mt_q6_K_codec,
                    mt_q6_K_row_from_f32_w},
    [MT_DT_Q8_K] = {"q8_k", MT_QK_K, MT_Q8_K_BYTES, 1, NULL, NULL, 15, NONE, mt_q8_K_row_to_f32, NULL},
    [MT_DT_IQ4_NL] = {"iq4_nl", 32, MT_IQ4_NL_BYTES, 1, NULL, NULL, 20, 25, mt_iq4_nl_row_to_f32, mt_iq4_nl_row_from_f32, 0,
                      NULL, mt_iq4_nl_row_from_f32_w},
    [MT_DT_IQ4_XS] = {"iq4_xs", MT_QK_K, MT_IQ4_XS_BYTES, 1, NULL, NULL, 23, 30, mt_iq4_xs_row_to_f32, mt_iq4_xs_row_from_f32, 0,
                      NULL, mt_iq4_xs_row_from_f32_w},
    [MT_DT_IQ2_XXS] = {"iq2_xxs", MT_QK_K, MT_IQ2_XXS_BYTES, 1, NULL, NULL, 16, 19, mt_iq2_xxs_row_to_f32, NULL, 0,
                      NULL, mt_iq2_xxs_row_from_f32_w},
    [MT_DT_IQ2_XS] = {"iq2_xs", MT_QK_K, MT_IQ2_XS_BYTES, 1, NULL, NULL, 17, 20, mt_iq2_xs_row_to_f32, NULL, 0,
                      NULL, mt_iq2_xs_row_from_f32_w},
    [MT_DT_IQ2_S] = {"iq2_s", MT_QK_K, MT_IQ2_S_BYTES, 1, NULL, NULL, 22, 28, mt_iq2_s_row_to_f32, NULL, 0,
                      NULL, mt_iq2_s_row_from_f32_w},
    [MT_DT_IQ3_XXS] = {"iq3_xxs", MT_QK_K, MT_IQ3_XXS_BYTES, 1, NULL, NULL, 18, 23, mt_iq3_xxs_row_to_f32, NULL, 0,
                      NULL, mt_iq3_xxs_row_from_f32_w},
    [MT_DT_IQ3_S] = {"iq3_s", MT_QK_K, MT_IQ3_S_BYTES, 1, NULL, NULL, 21, 26, mt_iq3_s_row_to_f32, NULL, 0,
                      NULL, mt_iq3_s_row_from_f32_w},
    [MT_DT_IQ1_S] = {"iq1_s", MT_QK_K, MT_IQ1_S_BYTES, 1, NULL, NULL, 19, 24, mt_iq1_s_row_to_f32, NULL, 0,
                      NULL, mt_iq1_s_row_from_f32_w},
    [MT_DT_IQ1_M] = {"iq1_m", MT_QK_K, MT_IQ1_M_BYTES, 1, NULL, NULL, 29, 31, mt_iq1_m_row_to_f32, NULL, 0,
                      NULL, mt_iq1_m_row_from_f32_w},
};

/* ggml's names of its tensor types (ggml.h enum ggml_type; ids 4, 5, 31..33
 * and 36..38 are retired), for messages about types we do not read. */
static const char *const g_ggml_names[] = {
    [0] = "F32",     [1] = "F16",      [2] = "Q4_0",     [3] = "Q4_1",   [6] = "Q5_0",   [7] = "Q5_1",
    [8] = "Q8_0",    [9] = "Q8_1",     [10] = "Q2_K",    [11] = "Q3_K",  [12] = "Q4_K",  [13] = "Q5_K",
    [14] = "Q6_K",   [15] = "Q8_K",    [16] = "IQ2_XXS", [17] = "IQ2_XS", [18] = "IQ3_XXS", [19] = "IQ1_S",
    [20] = "IQ4_NL", [21] = "IQ3_S",   [22] = "IQ2_S",   [23] = "IQ4_XS", [24] = "I8",   [25] = "I16",
    [26] = "I32",    [27] = "I64",     [28] = "F64",     [29] = "IQ1_M", [30] = "BF16",  [34] = "TQ1_0",
    [35] = "TQ2_0",  [39] = "MXFP4",   [40] = "NVFP4",   [41] = "Q1_0",
};

const mt_dtype_info *mt_dtype_get(mt_dtype t) {
    if ((int)t < 0 || t >= MT_DT_COUNT) return NULL;
    return &g_dtypes[t];
}

const char *mt_dtype_name(mt_dtype t) { return mt_dtype_get(t) ? g_dtypes[t].name : "?"; }

int mt_dtype_from_name(const char *name) {
    if (!name) return -1;
    for (int i = 0; i < MT_DT_COUNT; i++)
        if (strcasecmp(name, g_dtypes[i].name) == 0) return i;
    /* torch's spelling of the plain float types ("float16") */
    for (int i = 0; i < MT_DT_COUNT; i++)
        if (mt_dtype_is_plain_float((mt_dtype)i) && strcasecmp(name, g_dtypes[i].torch_name) == 0) return i;
    return -1;
}

int mt_dtype_from_st_name(const char *s) {
    for (int i = 0; s && i < MT_DT_COUNT; i++)
        if (g_dtypes[i].st_name && strcmp(s, g_dtypes[i].st_name) == 0) return i;
    return -1;
}

const char *mt_dtype_st_name(mt_dtype t) { return mt_dtype_get(t) ? g_dtypes[t].st_name : NULL; }

int mt_dtype_from_ggml_type(uint32_t ggml_type) {
    for (int i = 0; i < MT_DT_COUNT; i++)
        if (g_dtypes[i].ggml_type >= 0 && (uint32_t)g_dtypes[i].ggml_type == ggml_type) return i;
    return -1;
}

int mt_dtype_ggml_type(mt_dtype t) { return mt_dtype_get(t) ? g_dtypes[t].ggml_type : -1; }

const char *mt_ggml_type_name(uint32_t ggml_type) {
    if (ggml_type < sizeof g_ggml_names / sizeof g_ggml_names[0] && g_ggml_names[ggml_type])
        return g_ggml_names[ggml_type];
    return "unknown";
}

uint32_t mt_dtype_gguf_file_type(mt_dtype t) {
    const mt_dtype_info *d = mt_dtype_get(t);
    return d && d->gguf_file_type >= 0 ? (uint32_t)d->gguf_file_type : MT_GGUF_FILE_TYPE_DEFAULT;
}

int mt_dtype_from_gguf_file_type(uint32_t ft) {
    for (int i = 0; i < MT_DT_COUNT; i++)
        if (g_dtypes[i].gguf_file_type >= 0 && (uint32_t)g_dtypes[i].gguf_file_type == ft) return i;
    return -1;
}

int mt_dtype_from_gptq_bits(int bits) {
    for (int i = 0; bits > 0 && i < MT_DT_COUNT; i++)
        if (g_dtypes[i].gptq_bits == bits) return i;
    return -1;
}

int mt_dtype_is_plain_float(mt_dtype t) {
    const mt_dtype_info *d = mt_dtype_get(t);
    return d && d->is_float && d->block_elems == 1 && d->from_f32 && d->st_name;
}

const char *mt_dtype_config_torch_name(mt_dtype t, const char *fallback) {
    return mt_dtype_is_plain_float(t) ? g_dtypes[t].torch_name : fallback;
}

int mt_dtype_nbytes(mt_dtype t, uint64_t n, uint64_t *out) {
    const mt_dtype_info *d = mt_dtype_get(t);
    if (!d) return mt_seterr(MT_ERR_FORMAT, "unknown storage type %d", (int)t);
    if (n % (uint64_t)d->block_elems)
        return mt_seterr(MT_ERR_FORMAT, "%llu elements is not a whole number of %s blocks (%d)",
                         (unsigned long long)n, d->name, d->block_elems);
    if (d->block_bytes == 0)
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s has no fixed size per element", d->name);
    uint64_t blocks = n / (uint64_t)d->block_elems;
    if (blocks > UINT64_MAX / (uint64_t)d->block_bytes)
        return mt_seterr(MT_ERR_FORMAT, "tensor size overflows");
    *out = blocks * (uint64_t)d->block_bytes;
    return MT_OK;
}

/* Byte offsets of a block's scales: f16 unless noted (q8_K: one f32). */
int64_t mt_dtype_find_nonfinite_block(mt_dtype t, const void *data, int64_t nblocks) {
    static const struct {
        mt_dtype t;
        int8_t n, f32;
        uint8_t off[2];
    } scales[] = {
        {MT_DT_Q8_0, 1, 0, {0}},   {MT_DT_Q4_0, 1, 0, {0}},     {MT_DT_TQ1_0, 1, 0, {52}},
        {MT_DT_TQ2_0, 1, 0, {64}}, {MT_DT_Q4_1, 2, 0, {0, 2}},  {MT_DT_Q5_0, 1, 0, {0}},
        {MT_DT_Q5_1, 2, 0, {0, 2}}, {MT_DT_Q2_K, 2, 0, {80, 82}}, {MT_DT_Q3_K, 1, 0, {108}},
        {MT_DT_Q4_K, 2, 0, {0, 2}}, {MT_DT_Q5_K, 2, 0, {0, 2}},  {MT_DT_Q6_K, 1, 0, {208}},
        {MT_DT_Q8_K, 1, 1, {0}},   {MT_DT_IQ4_NL, 1, 0, {0}},   {MT_DT_IQ4_XS, 1, 0, {0}},
        {MT_DT_IQ2_XXS, 1, 0, {0}}, {MT_DT_IQ2_XS, 1, 0, {0}},  {MT_DT_IQ2_S, 1, 0, {0}},
        {MT_DT_IQ3_XXS, 1, 0, {0}}, {MT_DT_IQ3_S, 1, 0, {0}},   {MT_DT_IQ1_S, 1, 0, {0}},
    };
    if (t == MT_DT_IQ1_M) { /* d's four nibbles are the top nibbles of the uint16 scales at 48 */
        const uint8_t *p = data;
        for (int64_t b = 0; b < nblocks; b++, p += MT_IQ1_M_BYTES) {
            uint16_t sc[4];
            memcpy(sc, p + 48, 8);
            const uint16_t h = (uint16_t)((sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000));
            if ((h & 0x7c00u) == 0x7c00u) return b;
        }
        return -1;
    }
    const mt_dtype_info *d = mt_dtype_get(t);
    for (size_t i = 0; d && i < sizeof scales / sizeof scales[0]; i++) {
        if (scales[i].t != t) continue;
        const uint8_t *p = data;
        for (int64_t b = 0; b < nblocks; b++, p += d->block_bytes)
            for (int k = 0; k < scales[i].n; k++) {
                const int off = scales[i].off[k];
                if (scales[i].f32) {
                    uint32_t u;
                    memcpy(&u, p + off, 4);
                    if ((u & 0x7f800000u) == 0x7f800000u) return b;
                } else {
                    uint16_t h;
                    memcpy(&h, p + off, 2);
                    if ((h & 0x7c00u) == 0x7c00u) return b;
                }
            }
        return -1;
    }
    return -1;
}

int mt_row_to_f32(mt_dtype t, const void *src, float *dst, int64_t n) {
    const mt_dtype_info *d = mt_dtype_get(t);
    if (!d || !d->to_f32)
        return mt_seterr(MT_ERR_UNSUPPORTED, "conversion from %s to f32 is not supported", mt_dtype_name(t));
    if (n < 0 || n % d->block_elems)
        return mt_seterr(MT_ERR_FORMAT, "%s row of %lld elements", d->name, (long long)n);
    d->to_f32(src, dst, n);
    return MT_OK;
}

int mt_row_from_f32(mt_dtype t, const float *src, void *dst, int64_t n) {
    const mt_dtype_info *d = mt_dtype_get(t);
    if (!d || !d->from_f32)
        return mt_seterr(MT_ERR_UNSUPPORTED, "conversion from f32 to %s is not supported", mt_dtype_name(t));
    if (n < 0 || n % d->block_elems)
        return mt_seterr(MT_ERR_FORMAT, "%s needs rows of whole %d-blocks, got %lld", d->name, d->block_elems,
                         (long long)n);
    d->from_f32(src, dst, n);
    return MT_OK;
}

int mt_row_from_f32_w(mt_dtype t, const float *src, void *dst, int64_t n, const float *qw) {
    const mt_dtype_info *d = mt_dtype_get(t);
    /* the lattice i-quants have only the weighted quantizer; without weights
     * it weighs by x² as llama.cpp's does (iq3_*, iq2_s, iq1_m) */
    if (!qw && !(d && !d->from_f32 && d->from_f32_w)) return mt_row_from_f32(t, src, dst, n);
    if (!d || !d->from_f32_w)
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s is not written with an importance matrix here", mt_dtype_name(t));
    if (n < 0 || n % d->block_elems)
        return mt_seterr(MT_ERR_FORMAT, "%s needs rows of whole %d-blocks, got %lld", d->name, d->block_elems,
                         (long long)n);
    const int rc = mt_iq_lattice_ready(t); /* a failed table build is an error, never a zero row */
    if (rc) return rc;
    d->from_f32_w(src, dst, n, qw);
    return MT_OK;
}
