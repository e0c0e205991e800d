/* mt_io.h — checkpoints on disk: Hugging Face directories (config.json +
 * safetensors, single or sharded), single .safetensors files, GGUF v3.
 * Every reader memory-maps its files and validates every count and offset;
 * every writer streams and renames into place only when complete. */
#ifndef MT_IO_H
#define MT_IO_H

#include "mt_common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- architecture ----------------------------------------------------- */
typedef enum {
    MT_ROPE_HALF = 0,        /* HF rotate_half: pairs (i, i + d/2)           */
    MT_ROPE_INTERLEAVED = 1, /* GGUF 'llama': pairs (2i, 2i+1), Q/K rows permuted */
} mt_rope_style;

#define MT_MAX_LAYERS 512       /* validation bound on n_layers; nothing is sized by it */
#define MT_MAX_ALIAS_ROWS 65536 /* validation bound on the router rows of an aliased layer */

/* Ownership of the per-layer arrays: an mt_config owns them (heap, NULL when
 * every layer has the default). mt_config_free releases them, mt_config_copy
 * makes an independent copy. A struct assignment (`c2 = *c`) is a borrowed
 * view: it may be read while `c` lives, but never freed nor written through.
 * Set them with mt_config_set_layer_experts / mt_config_set_router_alias. */
typedef struct {
    char arch[32];       /* "mixtral", "mistral", "llama" (mt_arch_get)        */
    int n_layers;
    int hidden;          /* d_model                                           */
    int ffn;             /* intermediate size of one expert (or the dense MLP) */
    int ffn_dense;       /* dense-MLP layers of a MoE model, when their size
                            differs (Qwen2-MoE intermediate_size); 0 = ffn   */
    int ffn_shared;      /* shared expert's intermediate size; 0 = none      */
    int topk_norm;       /* mt_topk_norm: top-k gates renormalised or not    */
    int n_heads;
    int n_kv_heads;
    int head_dim;
    int vocab;
    int n_experts;       /* experts per layer; 0 = dense model                */
    int top_k;           /* experts per token; 0 when dense                   */
    /* [n_layers] experts per layer (merge can leave layers with different
     * K); an entry of 0 means n_experts, MT_LAYER_DENSE a dense-MLP layer
     * of a MoE model (Qwen2-MoE decoder_sparse_step / mlp_only_layers).
     * NULL: every layer has n_experts. */
    int *layer_experts;
    /* Alias routing (config key moe_router_alias): layer l keeps
     * router_rows[l] = R router rows for its K experts (R >= K), and router
     * row r selects expert router_alias[l][r]; every expert is the target of
     * at least one row. router_rows[l] == 0: no alias, one row per expert.
     * Both NULL when no layer is aliased; router_alias[l] is NULL for a
     * layer without alias. */
    int *router_rows;          /* [n_layers]                                  */
    int32_t **router_alias;    /* [n_layers][router_rows[l]]                  */
    float rope_theta;
    float norm_eps;
    int max_pos;
    int tie_embeddings;
    int bos_id, eos_id;  /* -1 when unknown */
    int rope_style;      /* mt_rope_style of the stored Q/K weights           */
    /* config.json "quantization_config" (HF directories only). */
    int quant;           /* mt_quant_format: which quantized tensors to expect */
    int quant_zero_offset; /* AutoGPTQ layout: stored zero = zero - this (1 for
                              checkpoint_format "gptq", 0 for "gptq_v2")     */
} mt_config;

#define MT_LAYER_DENSE (-1)

/* Whether the top-k gates are renormalised to sum 1: the family's default
 * (mt_arch.renorm_topk) unless the checkpoint says (norm_topk_prob). */
typedef enum { MT_TOPK_NORM_FAMILY = 0, MT_TOPK_NORM_ON = 1, MT_TOPK_NORM_OFF = 2 } mt_topk_norm;

/* quantization_config.quant_method of an HF checkpoint. */
typedef enum {
    MT_QFMT_NONE = 0,
    MT_QFMT_GPTQ = 1, /* AutoGPTQ tensor layout: <m>.qweight/.qzeros/.scales/.g_idx */
    MT_QFMT_QMOE = 2, /* experts as <m>.weight.qmoe blobs + qmoe.dictionary (docs/qmoe.md);
                         other quantized linears in the AutoGPTQ layout          */
} mt_quant_format;

/* Releases the per-layer arrays (the struct itself is the caller's). */
void mt_config_free(mt_config *c);
/* *dst = an owned copy of *src (dst's previous contents are not freed). */
int mt_config_copy(mt_config *dst, const mt_config *src);
/* Experts of layer l (0 = n_experts); allocates the array on first use. */
int mt_config_set_layer_experts(mt_config *c, int l, int k);
/* Router alias of layer l: R rows, alias[r] the expert of row r; R = 0
 * removes it. The rows are copied. */
int mt_config_set_router_alias(mt_config *c, int l, int R, const int32_t *alias);
/* The alias map of layer l ([router_rows] entries), or NULL. */
const int32_t *mt_config_router_alias(const mt_config *c, int l);
/* 1 when a and b describe the same model (per-layer arrays by value; a NULL
 * array equals one of zeros). */
int mt_config_equal(const mt_config *a, const mt_config *b);
/* 1 when the top-k gates of `c` are renormalised (topk_norm or the family's). */
int mt_config_renorm_topk(const mt_config *c);
/* Intermediate size of layer l's dense MLP (ffn_dense, else ffn). */
int mt_config_dense_ffn(const mt_config *c);
/* Experts in layer l (handles layer_experts overrides; 0 for a dense layer). */
int mt_config_layer_experts(const mt_config *c, int l);
/* Router rows of layer l: router_rows[l] when aliased, else its expert count. */
int mt_config_router_rows(const mt_config *c, int l);
/* 1 when any layer of `c` routes through an alias map. */
int mt_config_has_alias(const mt_config *c);
/* NULL when transformers and llama.cpp load the model as moetool runs it;
 * else a sentence saying why not (router alias, per-layer expert counts). */
const char *mt_config_portability(const mt_config *c);

/* Parses a Hugging Face config.json. Mixtral, Mistral and Llama are
 * accepted; anything else is MT_ERR_UNSUPPORTED naming the architecture. */
int mt_config_from_hf_json(mt_config *out, const char *json_text, size_t len, const char *path_for_errors);
int mt_config_load_hf(mt_config *out, const char *config_json_path);
/* Writes config.json text for `c` (caller frees *out with free()). */
int mt_config_to_hf_json(char **out, const mt_config *c, const char *torch_dtype);
/* The same with a "quantization_config" object (JSON text; NULL: none). */
int mt_config_to_hf_json_q(char **out, const mt_config *c, const char *torch_dtype, const char *quant_json);

/* ---- tensors ------------------------------------------------------------ */
#define MT_MAX_DIMS 4
typedef struct {
    const char *name;           /* native name in its file                  */
    mt_dtype dtype;
    int n_dims;
    int64_t shape[MT_MAX_DIMS]; /* outermost first (PyTorch order): a Linear
                                   weight is (out_features, in_features)     */
    const void *data;           /* into the mapping; valid while open       */
    uint64_t nbytes;
    int file_index;             /* which shard                              */
    uint64_t file_offset;       /* absolute byte offset in that file        */
} mt_tensor;

int64_t mt_tensor_numel(const mt_tensor *t);

/* ---- single safetensors file --------------------------------------------
 * Byte layout: u64 LE header length N; N bytes of JSON
 * {"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]},
 *  "__metadata__": {str: str}}; then the data region, offsets relative to
 * its start. */
typedef struct mt_safetensors mt_safetensors;
int mt_safetensors_open(mt_safetensors **out, const char *path);
/* Same checks on a buffer the caller keeps alive (used by the fuzzer). */
int mt_safetensors_parse(mt_safetensors **out, const void *buf, size_t len, const char *name_for_errors);
void mt_safetensors_free(mt_safetensors *st);
size_t mt_safetensors_count(const mt_safetensors *st);
const mt_tensor *mt_safetensors_get(const mt_safetensors *st, size_t i);
const mt_tensor *mt_safetensors_find(const mt_safetensors *st, const char *name);

/* ---- PyTorch checkpoints (torch.save zip: pytorch_model.bin) -------------
 * Read through libarchive; the pickle in <archive>/data.pkl is interpreted by
 * a restricted unpickler that never executes anything (docs/formats.md has
 * the byte layout and the opcode/global allow-list). The result is the same
 * view of named tensors a safetensors file gives: stored (uncompressed)
 * storages are mapped in place, compressed ones decompressed once. */
int mt_pytorch_open(mt_safetensors **out, const char *path);
/* The same on a zip in a buffer the caller keeps alive (used by the fuzzer). */
int mt_pytorch_parse(mt_safetensors **out, const void *buf, size_t len, const char *name_for_errors);

/* The restricted unpickler alone: a state dict of tensors, in pickle order. */
typedef struct {
    const char *name;        /* state dict key                               */
    mt_dtype dtype;
    const char *storage;     /* key of the storage: <archive>/data/<storage> */
    uint64_t storage_numel;  /* elements of the whole storage                */
    uint64_t offset;         /* first element of this tensor in the storage  */
    int n_dims;
    int64_t shape[MT_MAX_DIMS];
} mt_pickle_tensor;
typedef struct mt_pickle_dict mt_pickle_dict;
int mt_pickle_load_state_dict(mt_pickle_dict **out, const void *buf, size_t len, const char *name_for_errors);
void mt_pickle_free(mt_pickle_dict *d);
size_t mt_pickle_count(const mt_pickle_dict *d);
const mt_pickle_tensor *mt_pickle_get(const mt_pickle_dict *d, size_t i);

/* ---- tokenizer sources found next to a checkpoint ---------------------- */
typedef struct {
    char *spm_model_path;    /* tokenizer.model, spiece.model or
                                sentencepiece.bpe.model, or NULL             */
    char *hf_json_path;      /* tokenizer.json, or NULL                      */
    /* a checkpoint read from an archive: the files' bytes instead (owned by
       the checkpoint; NULL when absent) */
    const void *spm_model_buf;
    size_t spm_model_len;
    const char *spm_model_name; /* "tokenizer.model", "spiece.model" or
                                   "sentencepiece.bpe.model"                  */
    const char *hf_json_buf, *hf_config_buf; /* tokenizer.json, tokenizer_config.json */
    size_t hf_json_len, hf_config_len;
} mt_tokenizer_files;

/* ---- checkpoint: one view over any supported format -------------------- */
typedef enum { MT_FMT_HF = 0, MT_FMT_SAFETENSORS = 1, MT_FMT_GGUF = 2, MT_FMT_PYTORCH = 3 } mt_format;

typedef struct mt_gguf mt_gguf;
typedef struct mt_ckpt mt_ckpt;

/* Opens a HF directory (safetensors, or pytorch_model.bin when there is no
 * safetensors), a single .safetensors or PyTorch .bin (config.json expected
 * beside it) or a .gguf. Detects the format by content, not by name. */
int mt_ckpt_open(mt_ckpt **out, const char *path);
void mt_ckpt_free(mt_ckpt *ck);
mt_format mt_ckpt_format(const mt_ckpt *ck);
const char *mt_ckpt_path(const mt_ckpt *ck);
const mt_config *mt_ckpt_config(const mt_ckpt *ck);
size_t mt_ckpt_count(const mt_ckpt *ck);
const mt_tensor *mt_ckpt_get(const mt_ckpt *ck, size_t i);
const mt_tensor *mt_ckpt_find(const mt_ckpt *ck, const char *native_name);
/* Total bytes of the checkpoint's files on disk. */
uint64_t mt_ckpt_file_bytes(const mt_ckpt *ck);
const mt_tokenizer_files *mt_ckpt_tokenizer_files(const mt_ckpt *ck);
/* The GGUF behind a GGUF checkpoint (tokenizer metadata lives there), else NULL. */
const mt_gguf *mt_ckpt_gguf(const mt_ckpt *ck);
/* Whether the checkpoint was read from an archive (.tar, .tar.gz, .tar.zst,
 * .zip...): reading verbs take it, writing verbs refuse it. */
int mt_ckpt_is_archive(const mt_ckpt *ck);
/* Opens the tensors of a Hugging Face checkpoint (directory, single file
 * with config.json beside it, or archive; not GGUF) without reading
 * config.json as a decoder-only configuration: its text is kept for a
 * reader of another model kind (encoder-decoder, mt_seq2seq.h) and
 * mt_ckpt_config returns an all-zero config. */
int mt_ckpt_open_raw(mt_ckpt **out, const char *path);
/* config.json's text of a checkpoint opened with mt_ckpt_open_raw (NUL-
 * terminated, *len bytes), else NULL. */
const char *mt_ckpt_config_text(const mt_ckpt *ck, size_t *len);

/* ---- the model description the runtime executes ------------------------
 * A matrix is a view into mapped data: `rows` output features of `cols`
 * input features each, row r at data + r * row_stride. Norm vectors are
 * 1 x n matrices. */
struct mt_qmoe_dict;

/* Side data of a qmoe-coded matrix (MT_DT_QMOE; the code of mt_qmoe.h,
 * layout in lib/io/codec/qmoe.c): `data` holds the uint16 codewords, `group`
 * the rows per independently decodable group. */
typedef struct {
    const uint32_t *offsets;          /* [n_groups + 1] first codeword of each group */
    const struct mt_qmoe_dict *dict;  /* the model's dictionary (shared)             */
    const uint16_t *scales;           /* [rows * 2] f16: lo, hi of each row          */
    uint64_t n_codes;                 /* codewords at data                           */
    int scale_type;                   /* stored form of scales (MT_QMOE_SCALES_*)    */
    uint64_t blob_bytes;              /* before parsing (offsets NULL): `data` is the
                                         serialised blob, of this many bytes         */
} mt_qmoe_side;

/* Side data of codecs that keep it outside the rows: one typed member per
 * kind, all zero for self-contained row types (f32 ... q4_0, K-quants,
 * tq1_0, tq2_0). */
typedef struct {
    mt_qmoe_side qmoe;                /* MT_DT_QMOE                                   */
} mt_mat_side;

typedef struct {
    mt_dtype dtype;
    int64_t rows, cols;
    const void *data;
    uint64_t row_stride;        /* bytes */
    mt_mat_side side;
    int64_t group;              /* codec group size, 0 if none             */
} mt_mat;

/* Whether m keeps side data outside its rows (rows alone do not decode). */
static inline int mt_mat_has_side(const mt_mat *m) { return m->side.qmoe.offsets || m->side.qmoe.blob_bytes; }

typedef struct {
    mt_mat attn_norm;   /* (1, hidden)                               */
    mt_mat wq;          /* (n_heads * head_dim, hidden)              */
    mt_mat wk;          /* (n_kv_heads * head_dim, hidden)           */
    mt_mat wv;          /* (n_kv_heads * head_dim, hidden)           */
    mt_mat wo;          /* (hidden, n_heads * head_dim)              */
    mt_mat ffn_norm;    /* (1, hidden)                               */
    int n_experts;      /* 0: dense MLP in w1[0], w2[0], w3[0]       */
    mt_mat router;      /* (n_experts, hidden); unused when dense.
                           Aliased layer: a copy of the first router row
                           aliasing each expert (what a plain K-expert
                           reader would take); routing uses router_full */
    mt_mat router_full; /* (n_router_rows, hidden): every router row;
                           = router when the layer has no alias     */
    int n_router_rows;  /* R; = n_experts without alias              */
    const int32_t *alias; /* [n_router_rows] row -> expert, or NULL  */
    mt_mat *w1;         /* [max(1,n_experts)] gate (ffn, hidden)     */
    mt_mat *w3;         /* [max(1,n_experts)] up   (ffn, hidden)     */
    mt_mat *w2;         /* [max(1,n_experts)] down (hidden, ffn)     */
    /* Present only when the family has them (data NULL otherwise): */
    mt_mat bq, bk, bv;  /* (1, q_dim), (1, kv_dim), (1, kv_dim) biases */
    mt_mat sh_w1;       /* shared expert gate (ffn_shared, hidden)   */
    mt_mat sh_w3;       /* shared expert up   (ffn_shared, hidden)   */
    mt_mat sh_w2;       /* shared expert down (hidden, ffn_shared)   */
    mt_mat sh_gate;     /* (1, hidden): output scaled by sigmoid(h · sh_gate) */
    mt_mat q_norm;      /* QK-norm: (1, head_dim) per head or (1, q_dim)  */
    mt_mat k_norm;      /*          (1, head_dim) per head or (1, kv_dim) */
} mt_layer_weights;

typedef struct {
    mt_config cfg;
    mt_mat tok_embd;    /* (vocab, hidden)                           */
    mt_mat out_norm;    /* (1, hidden)                               */
    mt_mat lm_head;     /* (vocab, hidden); = tok_embd when tied     */
    mt_layer_weights *layers;  /* [n_layers]                        */
    void *alias_block;  /* alias maps and anchor router rows of
                           aliased layers (owned), or NULL          */
    void **owned;       /* matrices unpacked at load (AutoGPTQ layout) */
    size_t n_owned;
} mt_weights;

/* Maps a checkpoint's tensors (HF names or GGUF names, per-expert 2-D or
 * merged 3-D expert tensors) onto the description above, checking every
 * shape against the config. No weight is copied, except the K anchor router
 * rows of an aliased layer (kept in alias_block) and matrices stored in the
 * AutoGPTQ layout (repacked at load into Q4_0/Q8_0 when the codes fit, else
 * dequantized to f32; kept in `owned`). A qmoe-coded matrix
 * (<name>.weight.qmoe) becomes an mt_mat of type MT_DT_QMOE whose `data` is
 * the raw blob, `side.qmoe.blob_bytes` its size and the rest of side.qmoe
 * zero: the runtime (mt_model_load) parses and checks it. */
int mt_weights_init(mt_weights *w, const mt_ckpt *ck);
void mt_weights_free(mt_weights *w);
/* An HF checkpoint's weights (mapped by mt_weights_init) as its GGUF
 * conversion holds them (`moetool convert`'s choices): Q/K rows in
 * llama.cpp's RoPE order and the family's GGUF rope style, vectors and what
 * GGUF keeps in F32 (norms, router) as F32, types GGUF lacks as F32. Only
 * the matrices that change are copied (owned). Nothing to do for a GGUF. */
int mt_weights_gguf_layout(mt_weights *w, const mt_ckpt *ck);

/* ---- GGUF v3 (llama.cpp conventions) ----------------------------------- */
typedef enum {
    MT_GGUF_UINT8 = 0, MT_GGUF_INT8 = 1, MT_GGUF_UINT16 = 2, MT_GGUF_INT16 = 3,
    MT_GGUF_UINT32 = 4, MT_GGUF_INT32 = 5, MT_GGUF_FLOAT32 = 6, MT_GGUF_BOOL = 7,
    MT_GGUF_STRING = 8, MT_GGUF_ARRAY = 9, MT_GGUF_UINT64 = 10, MT_GGUF_INT64 = 11,
    MT_GGUF_FLOAT64 = 12,
} mt_gguf_type;

int mt_gguf_open(mt_gguf **out, const char *path);
int mt_gguf_parse(mt_gguf **out, const void *buf, size_t len, const char *name_for_errors);
void mt_gguf_free(mt_gguf *g);
size_t mt_gguf_tensor_count(const mt_gguf *g);
/* Tensors are reported in PyTorch order (GGUF's ne[] reversed). */
const mt_tensor *mt_gguf_tensor(const mt_gguf *g, size_t i);
const mt_tensor *mt_gguf_find_tensor(const mt_gguf *g, const char *name);
/* Metadata lookup: returns the key's index or -1. */
int mt_gguf_find_key(const mt_gguf *g, const char *key);
size_t mt_gguf_key_count(const mt_gguf *g);
const char *mt_gguf_key_name(const mt_gguf *g, int k);
mt_gguf_type mt_gguf_key_type(const mt_gguf *g, int k);
/* Scalars (converted from any integer/float type; MT_ERR_FORMAT on mismatch). */
int mt_gguf_get_i64(const mt_gguf *g, const char *key, int64_t *out);
int mt_gguf_get_f64(const mt_gguf *g, const char *key, double *out);
/* String value: pointer into the mapping, not NUL-terminated. */
int mt_gguf_get_str(const mt_gguf *g, const char *key, const char **s, uint64_t *len);
/* Arrays: element type and count, then element access. */
int mt_gguf_get_arr(const mt_gguf *g, const char *key, mt_gguf_type *elem_type, uint64_t *n);
int mt_gguf_arr_str(const mt_gguf *g, const char *key, uint64_t i, const char **s, uint64_t *len);
/* Raw pointer to the elements of a numeric array (little-endian, packed). */
int mt_gguf_arr_data(const mt_gguf *g, const char *key, const void **data);

/* ---- conversion -------------------------------------------------------- */
typedef struct {
    mt_format to;          /* MT_FMT_HF or MT_FMT_GGUF                         */
    int dtype;             /* -1: keep source types; else mt_dtype for 2-D weights
                              (f32, f16, bf16, q8_0); norms stay f32 in GGUF
                              and the router stays f32 (llama.cpp convention)   */
    uint64_t shard_bytes;  /* HF output: max bytes per shard (0 = 4 GiB)      */
    int require_tokenizer; /* 1: refuse to write an output without the source's
                              tokenizer (the CLI's default; --no-tokenizer
                              clears it); 0 (library default): warn only      */
    int force;             /* replace an existing output moetool did not write
                              (docs/outputs.md)                               */
    int moetool_only;      /* 1: write a GGUF that only moetool runs (per-layer
                              expert counts, key moetool.layer_experts); 0:
                              refuse such a model                             */
    mt_progress_fn progress;
    void *progress_user;
} mt_convert_opts;

void mt_convert_opts_default(mt_convert_opts *o);
/* Streams `in_path` to `out_path`; out_path is written under a temporary
 * name and put in place at the end under the output policy (mt_write.h,
 * docs/outputs.md); on error nothing is left behind. */
int mt_convert(const char *in_path, const char *out_path, const mt_convert_opts *opts);

#ifdef __cplusplus
}
#endif
#endif
