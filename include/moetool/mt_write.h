/* mt_write.h — writing checkpoints: streaming GGUF, safetensors and Hugging
 * Face shard writers, and all-or-nothing output directories. Every writer
 * follows one pattern: declare everything that goes into the header first,
 * then stream each tensor's bytes in declaration order (in pieces of any
 * size); the writer computes offsets, pads, and puts the output in place only
 * on _finish. _free on an unfinished writer removes every temporary. Used by
 * convert, quantize and merge. */
#ifndef MT_WRITE_H
#define MT_WRITE_H

#include "mt_arch.h"
#include "mt_io.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- GGUF v3 --------------------------------------------------------- */
typedef struct mt_gguf_writer mt_gguf_writer;

/* Output is unnamed (or a registered "<path>.tmp-<pid>-XXXXXX") until
 * mt_gguf_writer_finish; the file carries the key moetool.writer. */
int mt_gguf_writer_open(mt_gguf_writer **out, const char *path);
/* Metadata (keys must be unique; checked). */
int mt_gguf_writer_kv_u32(mt_gguf_writer *w, const char *key, uint32_t v);
int mt_gguf_writer_kv_i32(mt_gguf_writer *w, const char *key, int32_t v);
int mt_gguf_writer_kv_u64(mt_gguf_writer *w, const char *key, uint64_t v);
int mt_gguf_writer_kv_f32(mt_gguf_writer *w, const char *key, float v);
int mt_gguf_writer_kv_bool(mt_gguf_writer *w, const char *key, int v);
int mt_gguf_writer_kv_str(mt_gguf_writer *w, const char *key, const char *s, size_t len);
/* Numeric array: n packed little-endian elements of elem_type. */
int mt_gguf_writer_kv_arr(mt_gguf_writer *w, const char *key, mt_gguf_type elem_type,
                          const void *data, uint64_t n);
/* String array; lens may be NULL (then strings are NUL-terminated). */
int mt_gguf_writer_kv_arr_str(mt_gguf_writer *w, const char *key, uint64_t n,
                              const char *const *strs, const size_t *lens);
/* general.quantized_by = "moetool" (llama.cpp's key) when file_type (a
 * GGUF general.file_type) is a quantized type; nothing for float types. */
int mt_gguf_writer_kv_quantized_by(mt_gguf_writer *w, uint32_t file_type);
/* A value copied verbatim from another GGUF (see mt_gguf_kv_raw). */
int mt_gguf_writer_kv_raw(mt_gguf_writer *w, const char *key, mt_gguf_type type, const void *raw, size_t len);
/* Tensor info; shape in PyTorch order (outermost first), 1..4 dims. */
int mt_gguf_writer_add_tensor(mt_gguf_writer *w, const char *name, mt_dtype dtype,
                              int n_dims, const int64_t *shape);
/* Bytes of the declared tensors' data, in declaration order. The header is
 * written on the first call; a call may span tensor boundaries. */
int mt_gguf_writer_write(mt_gguf_writer *w, const void *data, size_t n);
/* Checks every declared byte was written, pads, renames into place. */
int mt_gguf_writer_finish(mt_gguf_writer *w);
/* Frees; removes the temporary output when not finished. NULL ok. */
void mt_gguf_writer_free(mt_gguf_writer *w);

/* ---- safetensors ------------------------------------------------------
 * One file: header JSON with keys sorted (as the Python library writes it),
 * padded with spaces to a multiple of 8, optional "__metadata__"
 * {"format": "pt"}; data laid out in declaration order. */
typedef struct mt_st_writer mt_st_writer;

int mt_st_writer_open(mt_st_writer **out, const char *path, int pt_metadata);
int mt_st_writer_add(mt_st_writer *w, const char *name, mt_dtype dtype, int n_dims,
                     const int64_t *shape);
int mt_st_writer_write(mt_st_writer *w, const void *data, size_t n);
int mt_st_writer_finish(mt_st_writer *w);
void mt_st_writer_free(mt_st_writer *w);

/* ---- Hugging Face sharded weights -------------------------------------
 * Writes into an existing directory (normally mt_outdir_path of an
 * mt_outdir):
 * model.safetensors when everything fits in shard_bytes, else
 * model-0000K-of-0000N.safetensors + model.safetensors.index.json
 * (metadata.total_size and weight_map). Tensors are split in declaration
 * order; a tensor larger than shard_bytes gets a shard of its own. */
typedef struct mt_hf_writer mt_hf_writer;

int mt_hf_writer_open(mt_hf_writer **out, const char *dir, uint64_t shard_bytes);
int mt_hf_writer_add(mt_hf_writer *w, const char *name, mt_dtype dtype, int n_dims,
                     const int64_t *shape);
/* Bytes of declared tensors, in declaration order; the shard layout is fixed
 * on the first call. */
int mt_hf_writer_write(mt_hf_writer *w, const void *data, size_t n);
int mt_hf_writer_finish(mt_hf_writer *w);
void mt_hf_writer_free(mt_hf_writer *w);

/* The encoded bytes of metadata value k of a parsed GGUF (after its type
 * field), for copying it into another GGUF unchanged (mt_gguf_writer_kv_raw). */
int mt_gguf_kv_raw(const mt_gguf *g, int k, mt_gguf_type *type, const void **raw, size_t *len);

/* ---- output policy (docs/outputs.md) ------------------------------------
 * Every verb that writes calls mt_output_check before any work. It refuses
 * (MT_ERR_REFUSED, message naming the path) an output that is, is inside, or
 * contains an input (compared by device and inode: the model path, every
 * entry of a model directory or the side files of a model file, and each
 * other input such as calibration text), and an existing output path that
 * is neither a previous moetool output of the same kind nor approved by
 * `force` (a symbolic link is never a moetool output; with force only the
 * link itself is replaced). It also removes the temporaries
 * "OUT.tmp-<pid>-XXXXXX" that killed processes left beside `out_path`.
 * The writers' commit checks the same rule again before replacing anything. */
typedef enum { MT_OUTPUT_GGUF = 0, MT_OUTPUT_HF_DIR = 1 } mt_output_kind;
int mt_output_check(const char *out_path, mt_output_kind kind, int force, const char *model_path,
                    const char *const *other_inputs, size_t n_other);
/* Registers (and forgets) a temporary file a caller creates itself, so that
 * mt_cleanup_outputs removes it; its name should follow
 * "<output>.tmp-<pid>-XXXXXX" (6 of [a-z0-9]) so that a later run sweeps it. */
int mt_output_tmp_add(const char *path);
void mt_output_tmp_forget(const char *path);
/* Creates (O_EXCL) and registers a temporary file "<path>.tmp-<pid>-XXXXXX"
 * beside path, for a single-file output written there and renamed onto path
 * when complete; the caller forgets it (mt_output_tmp_forget) after the
 * rename or unlink. Returns the open descriptor, or < 0 with the message set. */
int mt_output_tmp_create(const char *path, char **tmp);

/* ---- output directories -------------------------------------------------
 * A directory written under a registered temporary name beside `path` and
 * put in place by mt_outdir_commit (with the marker file .moetool-output
 * listing its files; replacing only what the policy allows); mt_outdir_free
 * before commit removes it. A signal handler removes it with
 * mt_cleanup_outputs. */
typedef struct mt_outdir mt_outdir;
int mt_outdir_open(mt_outdir **out, const char *path);
/* The temporary directory to write files into. */
const char *mt_outdir_path(const mt_outdir *o);
int mt_outdir_commit(mt_outdir *o);
void mt_outdir_free(mt_outdir *o);

/* ---- provenance (lib/io/provenance.c) ------------------------------------
 * What a verb did, recorded in its output: mt_prov_config adds a "moetool"
 * object {"version", "verb", "source", "options", "command"} to a
 * config.json text; mt_prov_json is the same object (for the GGUF key
 * moetool.provenance); mt_prov_write_card writes DIR/README.md (tags, the
 * options as a table, the command, notes). No time stamps. */
typedef struct mt_prov mt_prov;
mt_prov *mt_prov_new(const char *verb, const char *source); /* NULL: out of memory */
void mt_prov_free(mt_prov *p);
void mt_prov_str(mt_prov *p, const char *key, const char *val);
void mt_prov_int(mt_prov *p, const char *key, long long val);
void mt_prov_num(mt_prov *p, const char *key, double val);
void mt_prov_command(mt_prov *p, const char *command);
void mt_prov_note(mt_prov *p, const char *markdown);
void mt_prov_tag(mt_prov *p, const char *tag);
char *mt_prov_json(const mt_prov *p); /* malloc'd */
int mt_prov_config(const mt_prov *p, char **config_text);
int mt_prov_write_card(const mt_prov *p, const char *dir, const char *title);

/* ---- a Hugging Face checkpoint as GGUF -------------------------------------
 * The GGUF that `moetool convert` makes of a Hugging Face checkpoint, planned
 * once: llama.cpp's tensor names and order (experts stacked in 3-D tensors),
 * the storage types (norms and router F32, types GGUF lacks as F32), Q/K
 * rows permuted for its RoPE where the family's GGUF says so, and the
 * family's metadata, tokenizer and chat template. convert writes it as it
 * is; quantize writes its GGUF of a Hugging Face source through it,
 * replacing the tensors it quantized (no converted copy on disk). */
typedef struct mt_gguf_export mt_gguf_export;
/* Checks and plans (o: its dtype, moetool_only, require_tokenizer; NULL:
 * defaults). `ck` must outlive the export. */
int mt_gguf_export_open(mt_gguf_export **out, const mt_ckpt *ck, const mt_convert_opts *o);
void mt_gguf_export_free(mt_gguf_export *x);
/* Logs what the plan leaves out: input tensors without a place in the
 * output, q8_0 requests stored as f16. */
void mt_gguf_export_warn(const mt_gguf_export *x);
size_t mt_gguf_export_count(const mt_gguf_export *x);
typedef struct {
    const char *name;           /* GGUF name                                   */
    const mt_arch_tensor *role;
    int layer;                  /* -1: not per layer                           */
    int n_experts;              /* > 0: experts stacked in a 3-D tensor        */
    mt_dtype dtype;             /* convert's storage type                      */
    int n_dims;
    const int64_t *shape;       /* PyTorch order                               */
    uint64_t nbytes;
} mt_gguf_export_tensor;
void mt_gguf_export_tensor_get(const mt_gguf_export *x, size_t i, mt_gguf_export_tensor *t);
/* Bytes of convert's output: all tensor data (unpadded) and everything
 * before the data section (header, metadata, tensor infos, padding). */
int mt_gguf_export_sizes(mt_gguf_export *x, uint64_t *tensor_bytes, uint64_t *header_bytes);
typedef struct {
    /* 0: general.file_type of the planned types; 1: file_type, and the keys
       end with the writer's mark, general.quantized_by, then extra_kvs'
       (the order of quantize's GGUF -> GGUF rewrite) */
    int set_file_type;
    uint32_t file_type;
    int (*extra_kvs)(void *user, mt_gguf_writer *w);
    /* Tensor i's stored type (`planned`: convert's) */
    mt_dtype (*tensor_type)(void *user, size_t i, mt_dtype planned);
    /* Tensor i's bytes, expert by expert for a stacked one (expert -1: not
       stacked): *data NULL (at expert 0 or -1) streams convert's conversion
       of the checkpoint instead */
    int (*tensor_data)(void *user, size_t i, int expert, const void **data, uint64_t *nbytes);
    void *user;
} mt_gguf_export_hooks;
/* Writes the GGUF (hooks NULL: exactly convert's) under the output policy:
 * unnamed or a registered temporary until complete, then renamed. */
int mt_gguf_export_write(mt_gguf_export *x, const char *out_path, const mt_gguf_export_hooks *h);

/* Writes text (config.json, ...) as dir/name. */
int mt_write_text_file(const char *dir, const char *name, const char *text, size_t len);
/* Copies tokenizer.model, tokenizer.json, tokenizer_config.json and
 * generation_config.json from an HF checkpoint's directory when present;
 * for a GGUF source writes tokenizer.model from its vocabulary (sentencepiece
 * vocabularies only). Missing tokenizer: MT_OK with a logged warning. */
int mt_copy_tokenizer(const mt_ckpt *src, const char *dst_dir);

#ifdef __cplusplus
}
#endif
#endif
