/* pickle.c — a restricted unpickler for the data.pkl of a torch.save'd
 * state dict. It never executes anything: it interprets exactly the opcodes
 * and globals that torch's save emits for a dict of tensors, and refuses
 * every other opcode and global by name.
 *
 * What torch.save(state_dict) writes (pickle protocol 2):
 *   PROTO 2
 *   GLOBAL 'collections OrderedDict'; EMPTY_TUPLE; REDUCE   (or EMPTY_DICT)
 *   MARK
 *     BINUNICODE '<tensor name>'
 *     GLOBAL 'torch._utils _rebuild_tensor_v2'
 *     MARK
 *       MARK 'storage' GLOBAL 'torch FloatStorage' '<key>' '<location>' <numel> TUPLE
 *       BINPERSID                             -> storage (data/<key> in the zip)
 *       <storage_offset> (<size>...) (<stride>...) <requires_grad>
 *       GLOBAL 'collections OrderedDict' EMPTY_TUPLE REDUCE   (backward hooks)
 *     TUPLE; REDUCE                           -> tensor
 *     ...
 *   SETITEMS
 *   [ <state dict of OrderedDict attributes, e.g. _metadata> BUILD ]
 *   STOP
 * with BINPUT/BINGET memo references sharing repeated globals and storages.
 *
 * Values live in one arena freed at the end; containers never own each
 * other, so self-references made through the memo are harmless (nothing
 * here walks a value recursively). Bounds: memo indices must be defined
 * (get) or the next free slot (put); at most MT_PICKLE_MAX_STACK stack
 * items, MT_PICKLE_MAX_MARKS open marks, nesting depth MT_PICKLE_MAX_DEPTH,
 * arena memory proportional to the input length. */
#define _GNU_SOURCE
#include "io_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MT_PICKLE_MAX_STACK (1u << 20)
#define MT_PICKLE_MAX_MARKS 64
#define MT_PICKLE_MAX_DEPTH 32

typedef enum {
    PV_NONE,
    PV_BOOL,
    PV_INT,
    PV_STR,
    PV_TUPLE,
    PV_LIST,
    PV_DICT,
    PV_GLOBAL,
    PV_STORAGE,
    PV_TENSOR,
} pv_kind;

static const char *const g_kind_names[] = {"None", "bool", "int", "str", "tuple", "list",
                                           "dict", "global", "storage", "tensor"};

/* The allowed globals. */
typedef enum { G_ORDERED_DICT, G_REBUILD_TENSOR_V2, G_STORAGE } pv_global;

typedef struct pv pv;
struct pv {
    uint8_t kind;   /* pv_kind */
    uint8_t depth;  /* 1 + depth of the deepest child */
    union {
        int64_t i;                                   /* BOOL, INT */
        struct { const char *s; uint32_t len; } str; /* into the input */
        struct { pv **items; size_t n, cap; } seq;   /* TUPLE, LIST, DICT (k0, v0, k1, v1, ...) */
        struct { pv_global g; mt_dtype dtype; const char *name; } glob;
        struct {
            mt_dtype dtype;
            const pv *key; /* PV_STR */
            int64_t numel;
        } storage;
        struct {
            const pv *storage; /* PV_STORAGE */
            int64_t offset;
            int n_dims;
            int64_t shape[MT_MAX_DIMS];
        } tensor;
    } u;
};

typedef struct arena_block arena_block;
struct arena_block {
    arena_block *next;
    size_t used, cap;
    max_align_t data[];
};

typedef struct {
    const uint8_t *b;
    size_t len, pos, op_pos;
    const char *name;
    arena_block *blocks;
    size_t arena_bytes, arena_limit;
    pv **stack;
    size_t sp, stack_cap;
    size_t marks[MT_PICKLE_MAX_MARKS];
    size_t n_marks;
    pv **memo;
    size_t n_memo, memo_cap;
} unpickler;

struct mt_pickle_dict {
    size_t n;
    mt_pickle_tensor *tensors;
    char *strings;
};

/* ---- opcode names, for messages about refused opcodes ---------------- */
typedef struct {
    uint8_t op;
    const char *name;
} op_name;

static const op_name g_op_names[] = {
    {'(', "MARK"}, {'.', "STOP"}, {'0', "POP"}, {'1', "POP_MARK"}, {'2', "DUP"}, {'F', "FLOAT"},
    {'I', "INT"}, {'J', "BININT"}, {'K', "BININT1"}, {'L', "LONG"}, {'M', "BININT2"}, {'N', "NONE"},
    {'P', "PERSID"}, {'Q', "BINPERSID"}, {'R', "REDUCE"}, {'S', "STRING"}, {'T', "BINSTRING"},
    {'U', "SHORT_BINSTRING"}, {'V', "UNICODE"}, {'X', "BINUNICODE"}, {'a', "APPEND"}, {'b', "BUILD"},
    {'c', "GLOBAL"}, {'d', "DICT"}, {'}', "EMPTY_DICT"}, {'e', "APPENDS"}, {'g', "GET"}, {'h', "BINGET"},
    {'i', "INST"}, {'j', "LONG_BINGET"}, {'l', "LIST"}, {']', "EMPTY_LIST"}, {'o', "OBJ"}, {'p', "PUT"},
    {'q', "BINPUT"}, {'r', "LONG_BINPUT"}, {'s', "SETITEM"}, {'t', "TUPLE"}, {')', "EMPTY_TUPLE"},
    {'u', "SETITEMS"}, {'G', "BINFLOAT"}, {0x80, "PROTO"}, {0x81, "NEWOBJ"}, {0x82, "EXT1"},
    {0x83, "EXT2"}, {0x84, "EXT4"}, {0x85, "TUPLE1"}, {0x86, "TUPLE2"}, {0x87, "TUPLE3"},
    {0x88, "NEWTRUE"}, {0x89, "NEWFALSE"}, {0x8a, "LONG1"}, {0x8b, "LONG4"}, {'B', "BINBYTES"},
    {'C', "SHORT_BINBYTES"}, {0x8c, "SHORT_BINUNICODE"}, {0x8d, "BINUNICODE8"}, {0x8e, "BINBYTES8"},
    {0x8f, "EMPTY_SET"}, {0x90, "ADDITEMS"}, {0x91, "FROZENSET"}, {0x92, "NEWOBJ_EX"},
    {0x93, "STACK_GLOBAL"}, {0x94, "MEMOIZE"}, {0x95, "FRAME"}, {0x96, "BYTEARRAY8"},
    {0x97, "NEXT_BUFFER"}, {0x98, "READONLY_BUFFER"},
};

static const char *opcode_name(uint8_t op) {
    for (size_t i = 0; i < sizeof g_op_names / sizeof g_op_names[0]; i++)
        if (g_op_names[i].op == op) return g_op_names[i].name;
    return "unknown";
}

/* ---- the allowed globals ------------------------------------------------ */
typedef struct {
    const char *module, *name;
    pv_global g;
    mt_dtype dtype;
} allowed_global;

static const allowed_global g_allowed[] = {
    {"collections", "OrderedDict", G_ORDERED_DICT, MT_DT_F32},
    {"torch._utils", "_rebuild_tensor_v2", G_REBUILD_TENSOR_V2, MT_DT_F32},
    {"torch", "FloatStorage", G_STORAGE, MT_DT_F32},
    {"torch", "HalfStorage", G_STORAGE, MT_DT_F16},
    {"torch", "BFloat16Storage", G_STORAGE, MT_DT_BF16},
    {"torch", "DoubleStorage", G_STORAGE, MT_DT_F64},
    {"torch", "LongStorage", G_STORAGE, MT_DT_I64},
    {"torch", "IntStorage", G_STORAGE, MT_DT_I32},
    {"torch", "ShortStorage", G_STORAGE, MT_DT_I16},
    {"torch", "CharStorage", G_STORAGE, MT_DT_I8},
    {"torch", "ByteStorage", G_STORAGE, MT_DT_U8},
    {"torch", "BoolStorage", G_STORAGE, MT_DT_BOOL},
    {"torch", "Float8_e4m3fnStorage", G_STORAGE, MT_DT_F8_E4M3},
    {"torch", "Float8_e5m2Storage", G_STORAGE, MT_DT_F8_E5M2},
};

/* ---- arena ---------------------------------------------------------------- */
static void *arena_alloc(unpickler *u, size_t n) {
    n = (n + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
    arena_block *b = u->blocks;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        if (u->arena_bytes + cap > u->arena_limit) return NULL;
        b = malloc(sizeof *b + cap);
        if (!b) return NULL;
        b->next = u->blocks;
        b->used = 0;
        b->cap = cap;
        u->blocks = b;
        u->arena_bytes += cap;
    }
    void *p = (char *)b->data + b->used;
    b->used += n;
    return p;
}

static int err_at(const unpickler *u, int status, const char *what) {
    return mt_seterr(status, "%s: %s at byte %zu", u->name, what, u->op_pos);
}

static int nomem(const unpickler *u) {
    return mt_seterr(MT_ERR_FORMAT, "%s: the pickle needs more than %zu bytes of memory (input is %zu bytes) at byte %zu",
                     u->name, u->arena_limit, u->len, u->op_pos);
}

static pv *new_value(unpickler *u, pv_kind k) {
    pv *v = arena_alloc(u, sizeof *v);
    if (!v) return NULL;
    memset(v, 0, sizeof *v);
    v->kind = (uint8_t)k;
    v->depth = 1;
    return v;
}

/* ---- reading the input ------------------------------------------------------ */
static int need(unpickler *u, size_t n) {
    if (u->len - u->pos < n) return err_at(u, MT_ERR_FORMAT, "pickle truncated inside an opcode argument");
    return MT_OK;
}

static uint64_t le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* ---- stack, marks, memo ------------------------------------------------------ */
static int push(unpickler *u, pv *v) {
    if (!v) return nomem(u);
    if (u->sp == u->stack_cap) {
        if (u->stack_cap >= MT_PICKLE_MAX_STACK)
            return err_at(u, MT_ERR_FORMAT, "pickle stack deeper than 1048576 items");
        size_t nc = u->stack_cap ? 2 * u->stack_cap : 64;
        pv **ns = realloc(u->stack, nc * sizeof *ns);
        if (!ns) return mt_seterr(MT_ERR_NOMEM, "%s: out of memory", u->name);
        u->stack = ns;
        u->stack_cap = nc;
    }
    u->stack[u->sp++] = v;
    return MT_OK;
}

/* Items above the innermost mark: the stack base of the mark's frame. */
static size_t frame_base(const unpickler *u) { return u->n_marks ? u->marks[u->n_marks - 1] : 0; }

static int pop(unpickler *u, pv **out) {
    if (u->sp <= frame_base(u)) return err_at(u, MT_ERR_FORMAT, "pickle stack underflow");
    *out = u->stack[--u->sp];
    return MT_OK;
}

static int top(unpickler *u, pv **out) {
    if (u->sp <= frame_base(u)) return err_at(u, MT_ERR_FORMAT, "pickle stack underflow");
    *out = u->stack[u->sp - 1];
    return MT_OK;
}

/* Pops the innermost mark; [*base, sp) are the items above it. */
static int pop_mark(unpickler *u, size_t *base) {
    *base = 0;
    if (!u->n_marks) return err_at(u, MT_ERR_FORMAT, "pickle has no MARK to close");
    *base = u->marks[--u->n_marks];
    return MT_OK;
}

static int memo_put(unpickler *u, uint64_t idx) {
    pv *v = NULL;
    int rc = top(u, &v);
    if (rc) return rc;
    if (idx > u->n_memo) {
        char what[96];
        snprintf(what, sizeof what, "memo index %llu skips past the %zu entries defined",
                 (unsigned long long)idx, u->n_memo);
        return err_at(u, MT_ERR_FORMAT, what);
    }
    if (idx == u->n_memo) {
        if (u->n_memo == u->memo_cap) {
            size_t nc = u->memo_cap ? 2 * u->memo_cap : 64;
            pv **nm = realloc(u->memo, nc * sizeof *nm);
            if (!nm) return mt_seterr(MT_ERR_NOMEM, "%s: out of memory", u->name);
            u->memo = nm;
            u->memo_cap = nc;
        }
        u->n_memo++;
    }
    u->memo[idx] = v;
    return MT_OK;
}

static int memo_get(unpickler *u, uint64_t idx) {
    if (idx >= u->n_memo) {
        char what[96];
        snprintf(what, sizeof what, "memo index %llu is not defined (%zu entries)", (unsigned long long)idx,
                 u->n_memo);
        return err_at(u, MT_ERR_FORMAT, what);
    }
    return push(u, u->memo[idx]);
}

static int set_depth(unpickler *u, pv *parent, const pv *child) {
    if (child->depth + 1 > parent->depth) parent->depth = (uint8_t)(child->depth + 1);
    if (parent->depth > MT_PICKLE_MAX_DEPTH) return err_at(u, MT_ERR_FORMAT, "pickle values nested deeper than 32");
    return MT_OK;
}

/* Appends n items to a list or dict value (growing its array by doubling). */
static int seq_append(unpickler *u, pv *c, pv *const *items, size_t n) {
    if (c->u.seq.n + n > c->u.seq.cap) {
        size_t nc = c->u.seq.cap ? c->u.seq.cap : 4;
        while (nc < c->u.seq.n + n) nc *= 2;
        pv **ni = arena_alloc(u, nc * sizeof *ni);
        if (!ni) return nomem(u);
        if (c->u.seq.n) memcpy(ni, c->u.seq.items, c->u.seq.n * sizeof *ni);
        c->u.seq.items = ni;
        c->u.seq.cap = nc;
    }
    for (size_t i = 0; i < n; i++) {
        int rc = set_depth(u, c, items[i]);
        if (rc) return rc;
        c->u.seq.items[c->u.seq.n++] = items[i];
    }
    return MT_OK;
}

static int make_tuple(unpickler *u, pv *const *items, size_t n) {
    pv *t = new_value(u, PV_TUPLE);
    if (!t) return nomem(u);
    int rc = seq_append(u, t, items, n);
    if (rc) return rc;
    return push(u, t);
}

/* ---- the opcodes with meaning beyond data --------------------------------- */
static int op_global(unpickler *u, const char *mod, size_t ml, const char *nm, size_t nl) {
    for (size_t i = 0; i < sizeof g_allowed / sizeof g_allowed[0]; i++) {
        const allowed_global *a = &g_allowed[i];
        if (strlen(a->module) == ml && memcmp(a->module, mod, ml) == 0 && strlen(a->name) == nl &&
            memcmp(a->name, nm, nl) == 0) {
            pv *v = new_value(u, PV_GLOBAL);
            if (!v) return nomem(u);
            v->u.glob.g = a->g;
            v->u.glob.dtype = a->dtype;
            v->u.glob.name = a->name;
            return push(u, v);
        }
    }
    /* Print the refused name safely: printable ASCII only, bounded. */
    char shown[160];
    size_t k = 0;
    for (size_t i = 0; i < ml + 1 + nl && k + 1 < sizeof shown; i++) {
        char c = i < ml ? mod[i] : i == ml ? '.' : nm[i - ml - 1];
        shown[k++] = (c >= 0x20 && c < 0x7f) ? c : '?';
    }
    shown[k] = 0;
    return mt_seterr(MT_ERR_UNSUPPORTED, "%s: global %s is not allowed (byte %zu)", u->name, shown, u->op_pos);
}

static int is_empty_dict(const pv *v) { return v->kind == PV_DICT && v->u.seq.n == 0; }

static int int_tuple(unpickler *u, const pv *t, const char *what, int64_t *out, int *n) {
    char msg[96];
    if (t->kind != PV_TUPLE) {
        snprintf(msg, sizeof msg, "_rebuild_tensor_v2 %s is a %s, not a tuple", what, g_kind_names[t->kind]);
        return err_at(u, MT_ERR_FORMAT, msg);
    }
    if (t->u.seq.n > MT_MAX_DIMS) {
        snprintf(msg, sizeof msg, "tensor has %zu dimensions (at most %d supported)", t->u.seq.n, MT_MAX_DIMS);
        return err_at(u, MT_ERR_UNSUPPORTED, msg);
    }
    for (size_t i = 0; i < t->u.seq.n; i++) {
        const pv *e = t->u.seq.items[i];
        if (e->kind != PV_INT || e->u.i < 0) {
            snprintf(msg, sizeof msg, "_rebuild_tensor_v2 %s[%zu] is not a non-negative int", what, i);
            return err_at(u, MT_ERR_FORMAT, msg);
        }
        out[i] = e->u.i;
    }
    *n = (int)t->u.seq.n;
    return MT_OK;
}

/* torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride,
 * requires_grad, backward_hooks[, metadata]) */
static int rebuild_tensor(unpickler *u, const pv *args) {
    size_t n = args->u.seq.n;
    if (n != 6 && n != 7) {
        char msg[80];
        snprintf(msg, sizeof msg, "_rebuild_tensor_v2 called with %zu arguments (6 or 7 expected)", n);
        return err_at(u, MT_ERR_FORMAT, msg);
    }
    pv *const *a = args->u.seq.items;
    if (a[0]->kind != PV_STORAGE) return err_at(u, MT_ERR_FORMAT, "_rebuild_tensor_v2 storage is not a persistent storage");
    if (a[1]->kind != PV_INT || a[1]->u.i < 0)
        return err_at(u, MT_ERR_FORMAT, "_rebuild_tensor_v2 storage_offset is not a non-negative int");
    if (a[4]->kind != PV_BOOL) return err_at(u, MT_ERR_FORMAT, "_rebuild_tensor_v2 requires_grad is not a bool");
    if (!is_empty_dict(a[5]))
        return err_at(u, MT_ERR_UNSUPPORTED, "_rebuild_tensor_v2 backward_hooks is not an empty OrderedDict");
    if (n == 7 && a[6]->kind != PV_NONE && !is_empty_dict(a[6]))
        return err_at(u, MT_ERR_UNSUPPORTED, "_rebuild_tensor_v2 metadata is not empty");
    pv *t = new_value(u, PV_TENSOR);
    if (!t) return nomem(u);
    int64_t stride[MT_MAX_DIMS];
    int ns = 0;
    int rc = int_tuple(u, a[2], "size", t->u.tensor.shape, &t->u.tensor.n_dims);
    if (!rc) rc = int_tuple(u, a[3], "stride", stride, &ns);
    if (rc) return rc;
    if (ns != t->u.tensor.n_dims) return err_at(u, MT_ERR_FORMAT, "_rebuild_tensor_v2 size and stride differ in length");
    /* numel without overflow, then row-major contiguity */
    uint64_t numel = 1;
    for (int d = 0; d < ns; d++) {
        uint64_t s = (uint64_t)t->u.tensor.shape[d];
        if (s && numel > (uint64_t)INT64_MAX / s) return err_at(u, MT_ERR_FORMAT, "tensor element count overflows");
        numel *= s;
    }
    if (numel > 0) {
        uint64_t expect = 1;
        for (int d = ns - 1; d >= 0; d--) {
            if (t->u.tensor.shape[d] != 1 && (uint64_t)stride[d] != expect) {
                char msg[160];
                int k = snprintf(msg, sizeof msg, "tensor strides (");
                for (int e = 0; e < ns && k < 120; e++)
                    k += snprintf(msg + k, sizeof msg - (size_t)k, "%s%lld", e ? ", " : "", (long long)stride[e]);
                snprintf(msg + k, sizeof msg - (size_t)k, ") are not contiguous row-major");
                return err_at(u, MT_ERR_UNSUPPORTED, msg);
            }
            expect *= (uint64_t)t->u.tensor.shape[d];
        }
    }
    const pv *st = a[0];
    uint64_t off = (uint64_t)a[1]->u.i;
    if (off > (uint64_t)st->u.storage.numel || numel > (uint64_t)st->u.storage.numel - off) {
        char msg[200];
        snprintf(msg, sizeof msg, "tensor of %llu elements at offset %llu runs past its storage '%.*s' of %lld elements",
                 (unsigned long long)numel, (unsigned long long)off, (int)(st->u.storage.key->u.str.len > 32 ? 32 : st->u.storage.key->u.str.len),
                 st->u.storage.key->u.str.s, (long long)st->u.storage.numel);
        return err_at(u, MT_ERR_FORMAT, msg);
    }
    t->u.tensor.storage = st;
    t->u.tensor.offset = (int64_t)off;
    return push(u, t);
}

static int op_reduce(unpickler *u) {
    pv *args = NULL, *fn = NULL;
    int rc = pop(u, &args);
    if (!rc) rc = pop(u, &fn);
    if (rc) return rc;
    if (fn->kind != PV_GLOBAL || fn->u.glob.g == G_STORAGE) {
        char msg[96];
        snprintf(msg, sizeof msg, "REDUCE on a %s%s%s is not allowed", g_kind_names[fn->kind],
                 fn->kind == PV_GLOBAL ? " " : "", fn->kind == PV_GLOBAL ? fn->u.glob.name : "");
        return err_at(u, MT_ERR_UNSUPPORTED, msg);
    }
    if (args->kind != PV_TUPLE) return err_at(u, MT_ERR_FORMAT, "REDUCE arguments are not a tuple");
    if (fn->u.glob.g == G_ORDERED_DICT) {
        if (args->u.seq.n != 0) return err_at(u, MT_ERR_UNSUPPORTED, "OrderedDict called with arguments");
        return push(u, new_value(u, PV_DICT));
    }
    return rebuild_tensor(u, args);
}

/* BINPERSID: ('storage', <torch.XStorage>, key, location, numel) */
static int op_persid(unpickler *u) {
    pv *pid = NULL;
    int rc = pop(u, &pid);
    if (rc) return rc;
    if (pid->kind != PV_TUPLE || pid->u.seq.n != 5) return err_at(u, MT_ERR_FORMAT, "persistent id is not a 5-tuple");
    pv *const *a = pid->u.seq.items;
    if (a[0]->kind != PV_STR || a[0]->u.str.len != 7 || memcmp(a[0]->u.str.s, "storage", 7) != 0)
        return err_at(u, MT_ERR_UNSUPPORTED, "persistent id is not a ('storage', ...) tuple");
    if (a[1]->kind != PV_GLOBAL || a[1]->u.glob.g != G_STORAGE)
        return err_at(u, MT_ERR_FORMAT, "persistent id storage type is not a torch storage class");
    if (a[2]->kind != PV_STR || a[2]->u.str.len == 0) return err_at(u, MT_ERR_FORMAT, "persistent id key is not a string");
    for (uint32_t i = 0; i < a[2]->u.str.len; i++) {
        char c = a[2]->u.str.s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == '-' ||
              c == '.') ||
            (c == '.' && i == 0))
            return err_at(u, MT_ERR_FORMAT, "persistent id key is not a plain file name");
    }
    if (a[3]->kind != PV_STR) return err_at(u, MT_ERR_FORMAT, "persistent id location is not a string");
    if (a[4]->kind != PV_INT || a[4]->u.i < 0) return err_at(u, MT_ERR_FORMAT, "persistent id numel is not a non-negative int");
    pv *s = new_value(u, PV_STORAGE);
    if (!s) return nomem(u);
    s->u.storage.dtype = a[1]->u.glob.dtype;
    s->u.storage.key = a[2];
    s->u.storage.numel = a[4]->u.i;
    return push(u, s);
}

static int op_setitems(unpickler *u, size_t base) {
    if (base == 0) return err_at(u, MT_ERR_FORMAT, "SETITEMS with no dict below the mark");
    pv *d = u->stack[base - 1];
    if (d->kind != PV_DICT) return err_at(u, MT_ERR_FORMAT, "SETITEMS target is not a dict");
    if ((u->sp - base) % 2) return err_at(u, MT_ERR_FORMAT, "SETITEMS with an odd number of items");
    int rc = seq_append(u, d, u->stack + base, u->sp - base);
    u->sp = base;
    return rc;
}

static int op_appends(unpickler *u, size_t base) {
    if (base == 0) return err_at(u, MT_ERR_FORMAT, "APPENDS with no list below the mark");
    pv *l = u->stack[base - 1];
    if (l->kind != PV_LIST) return err_at(u, MT_ERR_FORMAT, "APPENDS target is not a list");
    int rc = seq_append(u, l, u->stack + base, u->sp - base);
    u->sp = base;
    return rc;
}

static int push_int(unpickler *u, int64_t v) {
    pv *x = new_value(u, PV_INT);
    if (!x) return nomem(u);
    x->u.i = v;
    return push(u, x);
}

static int push_str(unpickler *u, size_t len_bytes) {
    int rc = need(u, len_bytes);
    if (rc) return rc;
    uint64_t n = le(u->b + u->pos, (int)len_bytes);
    u->pos += len_bytes;
    if (n > u->len - u->pos) return err_at(u, MT_ERR_FORMAT, "pickle truncated inside a string");
    pv *s = new_value(u, PV_STR);
    if (!s) return nomem(u);
    s->u.str.s = (const char *)u->b + u->pos;
    s->u.str.len = (uint32_t)n;
    u->pos += n;
    return push(u, s);
}

/* GLOBAL's "module\nname\n" arguments. */
static int read_line(unpickler *u, const char **s, size_t *n) {
    const uint8_t *p = u->b + u->pos;
    const uint8_t *nl = memchr(p, '\n', u->len - u->pos);
    if (!nl) return err_at(u, MT_ERR_FORMAT, "pickle truncated inside a GLOBAL name");
    *s = (const char *)p;
    *n = (size_t)(nl - p);
    u->pos += *n + 1;
    return MT_OK;
}

static int run(unpickler *u, pv **result) {
    while (u->pos < u->len) {
        u->op_pos = u->pos;
        uint8_t op = u->b[u->pos++];
        int rc = MT_OK;
        size_t base = 0;
        pv *a = NULL, *b = NULL, *c = NULL;
        switch (op) {
        case 0x80: /* PROTO */
            if ((rc = need(u, 1))) return rc;
            if (u->b[u->pos] > 5) return err_at(u, MT_ERR_UNSUPPORTED, "pickle protocol above 5");
            u->pos++;
            break;
        case 0x95: { /* FRAME: a length prefix; the framed bytes are read as usual */
            if ((rc = need(u, 8))) return rc;
            uint64_t n = le(u->b + u->pos, 8);
            u->pos += 8;
            if (n > u->len - u->pos) return err_at(u, MT_ERR_FORMAT, "pickle FRAME runs past the end");
            break;
        }
        case '.': /* STOP */
            if (u->n_marks) return err_at(u, MT_ERR_FORMAT, "pickle STOP with an open MARK");
            if (u->sp != 1) return err_at(u, MT_ERR_FORMAT, "pickle STOP with other than one value on the stack");
            *result = u->stack[0];
            if (u->pos != u->len) return err_at(u, MT_ERR_FORMAT, "trailing bytes after pickle STOP");
            return MT_OK;
        case '(': /* MARK */
            if (u->n_marks == MT_PICKLE_MAX_MARKS) return err_at(u, MT_ERR_FORMAT, "more than 64 open MARKs");
            u->marks[u->n_marks++] = u->sp;
            break;
        case '}': rc = push(u, new_value(u, PV_DICT)); break;
        case ']': rc = push(u, new_value(u, PV_LIST)); break;
        case ')': rc = push(u, new_value(u, PV_TUPLE)); break;
        case 'N': rc = push(u, new_value(u, PV_NONE)); break;
        case 0x88: /* NEWTRUE */
        case 0x89: /* NEWFALSE */
            if (!(a = new_value(u, PV_BOOL))) return nomem(u);
            a->u.i = op == 0x88;
            rc = push(u, a);
            break;
        case 't': /* TUPLE */
            if ((rc = pop_mark(u, &base))) return rc;
            if (!(c = new_value(u, PV_TUPLE))) return nomem(u);
            if (u->sp > base && (rc = seq_append(u, c, u->stack + base, u->sp - base))) return rc;
            u->sp = base;
            rc = push(u, c);
            break;
        case 0x85: /* TUPLE1 */
        case 0x86: /* TUPLE2 */
        case 0x87: { /* TUPLE3 */
            size_t k = (size_t)(op - 0x84);
            if (u->sp < frame_base(u) + k) return err_at(u, MT_ERR_FORMAT, "pickle stack underflow");
            pv *items[3];
            memcpy(items, u->stack + u->sp - k, k * sizeof *items);
            u->sp -= k;
            rc = make_tuple(u, items, k);
            break;
        }
        case 'X': rc = push_str(u, 4); break;   /* BINUNICODE */
        case 0x8c: rc = push_str(u, 1); break;  /* SHORT_BINUNICODE */
        case 'K':                               /* BININT1 */
            if ((rc = need(u, 1))) return rc;
            rc = push_int(u, u->b[u->pos]);
            u->pos += 1;
            break;
        case 'M': /* BININT2 */
            if ((rc = need(u, 2))) return rc;
            rc = push_int(u, (int64_t)le(u->b + u->pos, 2));
            u->pos += 2;
            break;
        case 'J': /* BININT: signed 32-bit */
            if ((rc = need(u, 4))) return rc;
            rc = push_int(u, (int64_t)(int32_t)(uint32_t)le(u->b + u->pos, 4));
            u->pos += 4;
            break;
        case 0x8a: { /* LONG1: n bytes of little-endian two's complement */
            if ((rc = need(u, 1))) return rc;
            size_t n = u->b[u->pos++];
            if (n > 8) return err_at(u, MT_ERR_UNSUPPORTED, "LONG1 integer wider than 64 bits");
            if ((rc = need(u, n))) return rc;
            uint64_t v = n ? le(u->b + u->pos, (int)n) : 0;
            if (n && n < 8 && (u->b[u->pos + n - 1] & 0x80)) v |= ~(uint64_t)0 << (8 * n);
            u->pos += n;
            rc = push_int(u, (int64_t)v);
            break;
        }
        case 'q': /* BINPUT */
            if ((rc = need(u, 1))) return rc;
            rc = memo_put(u, u->b[u->pos++]);
            break;
        case 'r': /* LONG_BINPUT */
            if ((rc = need(u, 4))) return rc;
            rc = memo_put(u, le(u->b + u->pos, 4));
            u->pos += 4;
            break;
        case 0x94: /* MEMOIZE */
            rc = memo_put(u, u->n_memo);
            break;
        case 'h': /* BINGET */
            if ((rc = need(u, 1))) return rc;
            rc = memo_get(u, u->b[u->pos++]);
            break;
        case 'j': /* LONG_BINGET */
            if ((rc = need(u, 4))) return rc;
            rc = memo_get(u, le(u->b + u->pos, 4));
            u->pos += 4;
            break;
        case 'c': { /* GLOBAL */
            const char *m, *n;
            size_t ml, nl;
            if ((rc = read_line(u, &m, &ml)) || (rc = read_line(u, &n, &nl))) return rc;
            rc = op_global(u, m, ml, n, nl);
            break;
        }
        case 0x93: /* STACK_GLOBAL */
            if ((rc = pop(u, &b)) || (rc = pop(u, &a))) return rc;
            if (a->kind != PV_STR || b->kind != PV_STR) return err_at(u, MT_ERR_FORMAT, "STACK_GLOBAL on non-strings");
            rc = op_global(u, a->u.str.s, a->u.str.len, b->u.str.s, b->u.str.len);
            break;
        case 'R': rc = op_reduce(u); break; /* REDUCE */
        case 'Q': rc = op_persid(u); break; /* BINPERSID */
        case 's':                           /* SETITEM */
            if (u->sp < frame_base(u) + 3) return err_at(u, MT_ERR_FORMAT, "SETITEM with too few stack items");
            if (u->stack[u->sp - 3]->kind != PV_DICT) return err_at(u, MT_ERR_FORMAT, "SETITEM target is not a dict");
            rc = seq_append(u, u->stack[u->sp - 3], u->stack + u->sp - 2, 2);
            u->sp -= 2;
            break;
        case 'u': /* SETITEMS */
            if ((rc = pop_mark(u, &base))) return rc;
            rc = op_setitems(u, base);
            break;
        case 'a': /* APPEND */
            if (u->sp < frame_base(u) + 2) return err_at(u, MT_ERR_FORMAT, "APPEND with too few stack items");
            if (u->stack[u->sp - 2]->kind != PV_LIST) return err_at(u, MT_ERR_FORMAT, "APPEND target is not a list");
            rc = seq_append(u, u->stack[u->sp - 2], u->stack + u->sp - 1, 1);
            u->sp -= 1;
            break;
        case 'e': /* APPENDS */
            if ((rc = pop_mark(u, &base))) return rc;
            rc = op_appends(u, base);
            break;
        case 'b': /* BUILD: only an OrderedDict's attribute state (e.g. _metadata), ignored */
            if ((rc = pop(u, &a)) || (rc = top(u, &b))) return rc;
            if (b->kind != PV_DICT) return err_at(u, MT_ERR_UNSUPPORTED, "BUILD on something other than an OrderedDict");
            if (a->kind != PV_DICT && a->kind != PV_NONE) return err_at(u, MT_ERR_UNSUPPORTED, "BUILD state is not a dict");
            break;
        default: {
            return mt_seterr(MT_ERR_UNSUPPORTED, "%s: pickle opcode 0x%02x (%s) at byte %zu is not allowed", u->name, op,
                             opcode_name(op), u->op_pos);
        }
        }
        if (rc) return rc;
    }
    u->op_pos = u->pos;
    return err_at(u, MT_ERR_FORMAT, "pickle truncated (no STOP)");
}

/* ---- the state dict out of the result ------------------------------------------ */
static int collect(mt_pickle_dict *d, const pv *root, const char *name) {
    if (root->kind != PV_DICT)
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: the pickle holds a %s, not a state dict", name, g_kind_names[root->kind]);
    size_t n = root->u.seq.n / 2, bytes = 0;
    for (size_t i = 0; i < n; i++) {
        const pv *k = root->u.seq.items[2 * i], *v = root->u.seq.items[2 * i + 1];
        if (k->kind != PV_STR) return mt_seterr(MT_ERR_UNSUPPORTED, "%s: state dict key %zu is a %s, not a str", name, i, g_kind_names[k->kind]);
        if (memchr(k->u.str.s, 0, k->u.str.len) || k->u.str.len == 0)
            return mt_seterr(MT_ERR_FORMAT, "%s: state dict key %zu is empty or holds a NUL byte", name, i);
        if (v->kind != PV_TENSOR)
            return mt_seterr(MT_ERR_UNSUPPORTED, "%s: state dict entry %.*s is a %s, not a tensor", name,
                             (int)(k->u.str.len > 200 ? 200 : k->u.str.len), k->u.str.s, g_kind_names[v->kind]);
        bytes += k->u.str.len + 1 + v->u.tensor.storage->u.storage.key->u.str.len + 1;
    }
    d->tensors = calloc(n ? n : 1, sizeof *d->tensors);
    d->strings = malloc(bytes ? bytes : 1);
    if (!d->tensors || !d->strings) return mt_seterr(MT_ERR_NOMEM, "%s: out of memory", name);
    char *p = d->strings;
    for (size_t i = 0; i < n; i++) {
        const pv *k = root->u.seq.items[2 * i], *v = root->u.seq.items[2 * i + 1];
        const pv *st = v->u.tensor.storage;
        mt_pickle_tensor *t = &d->tensors[i];
        memcpy(p, k->u.str.s, k->u.str.len);
        p[k->u.str.len] = 0;
        t->name = p;
        p += k->u.str.len + 1;
        memcpy(p, st->u.storage.key->u.str.s, st->u.storage.key->u.str.len);
        p[st->u.storage.key->u.str.len] = 0;
        t->storage = p;
        p += st->u.storage.key->u.str.len + 1;
        t->dtype = st->u.storage.dtype;
        t->storage_numel = (uint64_t)st->u.storage.numel;
        t->offset = (uint64_t)v->u.tensor.offset;
        t->n_dims = v->u.tensor.n_dims;
        memcpy(t->shape, v->u.tensor.shape, sizeof t->shape);
        d->n = i + 1;
    }
    return MT_OK;
}

void mt_pickle_free(mt_pickle_dict *d) {
    if (!d) return;
    free(d->tensors);
    free(d->strings);
    free(d);
}

size_t mt_pickle_count(const mt_pickle_dict *d) { return d ? d->n : 0; }

const mt_pickle_tensor *mt_pickle_get(const mt_pickle_dict *d, size_t i) {
    return d && i < d->n ? &d->tensors[i] : NULL;
}

int mt_pickle_load_state_dict(mt_pickle_dict **out, const void *buf, size_t len, const char *name) {
    *out = NULL;
    if (!name) name = "<pickle>";
    unpickler u;
    memset(&u, 0, sizeof u);
    u.b = buf;
    u.len = buf ? len : 0;
    u.name = name;
    /* Every value costs at most a few bytes of input; containers at most
     * double. 64 bytes of arena per input byte covers both with room. */
    u.arena_limit = (len < SIZE_MAX / 64 - (1u << 20)) ? 64 * len + (1u << 20) : SIZE_MAX;
    mt_pickle_dict *d = calloc(1, sizeof *d);
    pv *root = NULL;
    int rc = d ? run(&u, &root) : mt_seterr(MT_ERR_NOMEM, "out of memory");
    if (rc == MT_OK) rc = collect(d, root, name);
    while (u.blocks) {
        arena_block *nx = u.blocks->next;
        free(u.blocks);
        u.blocks = nx;
    }
    free(u.stack);
    free(u.memo);
    if (rc) {
        mt_pickle_free(d);
        return rc;
    }
    *out = d;
    return MT_OK;
}
