/*
 * gguf.c - GGUF reader and streaming writer.
 *
 * File layout (GGUF v2/v3, little-endian): magic "GGUF", u32 version,
 * u64 tensor count, u64 metadata count; then the metadata key/value pairs
 * (key: u64 length + bytes; u32 value type; value), then one info per tensor
 * (name, u32 n_dims, n_dims x u64 extents, u32 type, u64 offset). Tensor data
 * starts at the next multiple of general.alignment (default 32) after the
 * infos, and each tensor's offset, relative to that start, is itself a
 * multiple of the alignment. Version 1 used 32-bit counts and is refused.
 *
 * The reader trusts nothing: every length is checked against the bytes that
 * remain before it is used, every product of extents is overflow-checked,
 * and tensors must lie inside the file without overlapping. Strings and
 * arrays are copied out of the mapping into memory the handle owns (strings
 * NUL-terminated, scalar arrays naturally aligned), so callers never do
 * unaligned loads; tensor data is left in the read-only mapping.
 */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "quant.h"

#define GGUF_MAGIC "GGUF"
/* Arrays may nest; a real model never nests deeper than 2, a hostile file
 * could recurse until the stack runs out. */
#define GGUF_MAX_NESTING 8
/* The largest alignment we accept; real files use 32. */
#define GGUF_MAX_ALIGNMENT (1u << 20)

typedef struct gguf_kv {
    char *key;
    gguf_value val;
} gguf_kv;

struct gguf {
    char *path;
    const uint8_t *base; /* whole file */
    uint64_t size;
    bool mapped;         /* base came from mmap and must be unmapped */
    uint32_t version;
    uint32_t alignment;
    uint64_t data_offset;
    size_t n_kv;
    gguf_kv *kv;
    size_t n_tensors;
    gguf_tensor *tensors;
};

static const char *const type_names[GGUF_TYPE_COUNT] = {
    [GGUF_TYPE_UINT8] = "uint8",     [GGUF_TYPE_INT8] = "int8",
    [GGUF_TYPE_UINT16] = "uint16",   [GGUF_TYPE_INT16] = "int16",
    [GGUF_TYPE_UINT32] = "uint32",   [GGUF_TYPE_INT32] = "int32",
    [GGUF_TYPE_FLOAT32] = "float32", [GGUF_TYPE_BOOL] = "bool",
    [GGUF_TYPE_STRING] = "string",   [GGUF_TYPE_ARRAY] = "array",
    [GGUF_TYPE_UINT64] = "uint64",   [GGUF_TYPE_INT64] = "int64",
    [GGUF_TYPE_FLOAT64] = "float64",
};

/* Size on disk (and in memory) of a scalar of type t, 0 for string/array. */
static const uint8_t scalar_size[GGUF_TYPE_COUNT] = {
    [GGUF_TYPE_UINT8] = 1,   [GGUF_TYPE_INT8] = 1,  [GGUF_TYPE_UINT16] = 2,
    [GGUF_TYPE_INT16] = 2,   [GGUF_TYPE_UINT32] = 4, [GGUF_TYPE_INT32] = 4,
    [GGUF_TYPE_FLOAT32] = 4, [GGUF_TYPE_BOOL] = 1,  [GGUF_TYPE_UINT64] = 8,
    [GGUF_TYPE_INT64] = 8,   [GGUF_TYPE_FLOAT64] = 8,
};

const char *gguf_type_name(gguf_type t)
{
    return (unsigned)t < GGUF_TYPE_COUNT ? type_names[t] : "?";
}

/* ---- reading ---------------------------------------------------------- */

typedef struct cursor {
    const uint8_t *p;
    uint64_t size;
    uint64_t pos;
    const char *name; /* file name for messages */
    char *err;
} cursor;

static void set_err(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_err(char *err, const char *fmt, ...)
{
    if (!err)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, 256, fmt, ap);
    va_end(ap);
}

/* Take n bytes for field `what`, or fail naming it. */
static const uint8_t *take(cursor *c, uint64_t n, const char *what)
{
    if (n > c->size - c->pos) {
        set_err(c->err, "%s: truncated reading %s at offset %llu: needs %llu bytes, %llu remain",
                c->name, what, (unsigned long long)c->pos, (unsigned long long)n,
                (unsigned long long)(c->size - c->pos));
        return NULL;
    }
    const uint8_t *p = c->p + c->pos;
    c->pos += n;
    return p;
}

static bool read_u32(cursor *c, uint32_t *v, const char *what)
{
    const uint8_t *p = take(c, 4, what);
    if (!p)
        return false;
    memcpy(v, p, 4);
    return true;
}

static bool read_u64(cursor *c, uint64_t *v, const char *what)
{
    const uint8_t *p = take(c, 8, what);
    if (!p)
        return false;
    memcpy(v, p, 8);
    return true;
}

/* A GGUF string: u64 length then bytes. Copied out, NUL-terminated. */
static bool read_str(cursor *c, gguf_str *s, const char *what)
{
    uint64_t len;
    if (!read_u64(c, &len, what))
        return false;
    const uint8_t *p = take(c, len, what);
    if (!p)
        return false;
    char *copy = malloc(len + 1);
    if (!copy) {
        set_err(c->err, "%s: out of memory for %s (%llu bytes)", c->name, what,
                (unsigned long long)len);
        return false;
    }
    memcpy(copy, p, len);
    copy[len] = '\0';
    s->ptr = copy;
    s->len = len;
    return true;
}

static void value_free(gguf_value *v)
{
    if (v->type == GGUF_TYPE_STRING) {
        free((void *)v->v.str.ptr);
    } else if (v->type == GGUF_TYPE_ARRAY) {
        if (v->v.arr.elem == GGUF_TYPE_STRING) {
            gguf_str *s = (gguf_str *)v->v.arr.data;
            for (uint64_t i = 0; s && i < v->v.arr.n; i++)
                free((void *)s[i].ptr);
        } else if (v->v.arr.elem == GGUF_TYPE_ARRAY) {
            gguf_value *a = (gguf_value *)v->v.arr.data;
            for (uint64_t i = 0; a && i < v->v.arr.n; i++)
                value_free(&a[i]);
        }
        free((void *)v->v.arr.data);
    }
    memset(v, 0, sizeof *v);
}

/* Decode one scalar of type t from p into v. */
static void scalar_decode(gguf_type t, const uint8_t *p, gguf_value *v)
{
    v->type = t;
    switch (t) {
    case GGUF_TYPE_UINT8: v->v.u64 = p[0]; break;
    case GGUF_TYPE_INT8: v->v.i64 = (int8_t)p[0]; break;
    case GGUF_TYPE_UINT16: { uint16_t x; memcpy(&x, p, 2); v->v.u64 = x; break; }
    case GGUF_TYPE_INT16: { int16_t x; memcpy(&x, p, 2); v->v.i64 = x; break; }
    case GGUF_TYPE_UINT32: { uint32_t x; memcpy(&x, p, 4); v->v.u64 = x; break; }
    case GGUF_TYPE_INT32: { int32_t x; memcpy(&x, p, 4); v->v.i64 = x; break; }
    case GGUF_TYPE_UINT64: memcpy(&v->v.u64, p, 8); break;
    case GGUF_TYPE_INT64: memcpy(&v->v.i64, p, 8); break;
    case GGUF_TYPE_FLOAT32: { float x; memcpy(&x, p, 4); v->v.f64 = x; break; }
    case GGUF_TYPE_FLOAT64: memcpy(&v->v.f64, p, 8); break;
    case GGUF_TYPE_BOOL: v->v.b = p[0] != 0; break;
    default: break;
    }
}

static bool read_value(cursor *c, gguf_type t, gguf_value *v, int depth, const char *key);

static bool read_array(cursor *c, gguf_value *v, int depth, const char *key)
{
    uint32_t elem;
    uint64_t n;
    char what[160];
    snprintf(what, sizeof what, "the array type of key '%s'", key);
    if (!read_u32(c, &elem, what))
        return false;
    snprintf(what, sizeof what, "the array length of key '%s'", key);
    if (!read_u64(c, &n, what))
        return false;
    if (elem >= GGUF_TYPE_COUNT) {
        set_err(c->err, "%s: key '%s': unknown array element type %u", c->name, key, elem);
        return false;
    }
    if (depth >= GGUF_MAX_NESTING) {
        set_err(c->err, "%s: key '%s': arrays nested deeper than %d", c->name, key,
                GGUF_MAX_NESTING);
        return false;
    }
    /* Every element takes at least this many bytes, so a count that cannot
     * fit in the rest of the file is refused before anything is allocated. */
    uint64_t min_elem = scalar_size[elem] ? scalar_size[elem] : (elem == GGUF_TYPE_STRING ? 8 : 12);
    if (n > (c->size - c->pos) / min_elem) {
        set_err(c->err, "%s: key '%s': array of %llu %s elements does not fit in the %llu bytes that remain",
                c->name, key, (unsigned long long)n, gguf_type_name(elem),
                (unsigned long long)(c->size - c->pos));
        return false;
    }
    v->type = GGUF_TYPE_ARRAY;
    v->v.arr.elem = (gguf_type)elem;
    v->v.arr.n = 0;
    v->v.arr.data = NULL;
    if (scalar_size[elem]) {
        size_t es = elem == GGUF_TYPE_BOOL ? sizeof(bool) : scalar_size[elem];
        void *data = malloc(n ? n * es : 1);
        if (!data)
            goto oom;
        snprintf(what, sizeof what, "the elements of array '%s'", key);
        const uint8_t *p = take(c, n * scalar_size[elem], what);
        if (!p) {
            free(data);
            return false;
        }
        if (elem == GGUF_TYPE_BOOL) {
            bool *b = data;
            for (uint64_t i = 0; i < n; i++)
                b[i] = p[i] != 0;
        } else {
            memcpy(data, p, n * es);
        }
        v->v.arr.data = data;
        v->v.arr.n = n;
        return true;
    }
    size_t es = elem == GGUF_TYPE_STRING ? sizeof(gguf_str) : sizeof(gguf_value);
    void *data = calloc(n ? n : 1, es);
    if (!data)
        goto oom;
    v->v.arr.data = data;
    for (uint64_t i = 0; i < n; i++) {
        bool ok;
        /* Count the slot before filling it: a half-read nested array in it
         * must be freed too (the slot is zeroed, so freeing it is safe). */
        v->v.arr.n = i + 1;
        if (elem == GGUF_TYPE_STRING) {
            snprintf(what, sizeof what, "string %llu of array '%s'", (unsigned long long)i, key);
            ok = read_str(c, &((gguf_str *)data)[i], what);
        } else {
            ok = read_value(c, GGUF_TYPE_ARRAY, &((gguf_value *)data)[i], depth + 1, key);
        }
        if (!ok)
            return false; /* the caller frees what was read */
    }
    return true;
oom:
    set_err(c->err, "%s: key '%s': out of memory for %llu array elements", c->name, key,
            (unsigned long long)n);
    return false;
}

static bool read_value(cursor *c, gguf_type t, gguf_value *v, int depth, const char *key)
{
    char what[160];
    if ((unsigned)t >= GGUF_TYPE_COUNT) {
        set_err(c->err, "%s: key '%s': unknown value type %u", c->name, key, (unsigned)t);
        return false;
    }
    if (t == GGUF_TYPE_STRING) {
        v->type = t;
        snprintf(what, sizeof what, "the string value of key '%s'", key);
        return read_str(c, &v->v.str, what);
    }
    if (t == GGUF_TYPE_ARRAY)
        return read_array(c, v, depth, key);
    snprintf(what, sizeof what, "the %s value of key '%s'", gguf_type_name(t), key);
    const uint8_t *p = take(c, scalar_size[t], what);
    if (!p)
        return false;
    scalar_decode(t, p, v);
    return true;
}

void gguf_close(gguf *g)
{
    if (!g)
        return;
    for (size_t i = 0; i < g->n_kv; i++) {
        free(g->kv[i].key);
        value_free(&g->kv[i].val);
    }
    free(g->kv);
    for (size_t i = 0; i < g->n_tensors; i++)
        free((void *)g->tensors[i].name);
    free(g->tensors);
    if (g->mapped && g->base)
        munmap((void *)g->base, g->size);
    free(g->path);
    free(g);
}

static int cmp_str_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The first name that occurs twice among n, or NULL. Sorting keeps this
 * O(n log n): a hostile file may hold hundreds of thousands of names. */
static const char *find_duplicate(const char **names, size_t n)
{
    qsort(names, n, sizeof *names, cmp_str_ptr);
    for (size_t i = 1; i < n; i++)
        if (strcmp(names[i - 1], names[i]) == 0)
            return names[i];
    return NULL;
}

static int check_unique_names(gguf *g, char *err)
{
    size_t n = g->n_kv > g->n_tensors ? g->n_kv : g->n_tensors;
    const char **names = malloc((n ? n : 1) * sizeof *names);
    if (!names) {
        set_err(err, "%s: out of memory", g->path);
        return GGUF_ENOMEM;
    }
    for (size_t i = 0; i < g->n_kv; i++)
        names[i] = g->kv[i].key;
    const char *dup = find_duplicate(names, g->n_kv);
    if (dup) {
        set_err(err, "%s: key '%s' appears twice", g->path, dup);
        free(names);
        return GGUF_EFORMAT;
    }
    for (size_t i = 0; i < g->n_tensors; i++)
        names[i] = g->tensors[i].name;
    dup = find_duplicate(names, g->n_tensors);
    free(names);
    if (dup) {
        set_err(err, "%s: tensor '%s' appears twice", g->path, dup);
        return GGUF_EFORMAT;
    }
    return GGUF_OK;
}

static int cmp_tensor_offset(const void *a, const void *b)
{
    const gguf_tensor *x = *(const gguf_tensor *const *)a, *y = *(const gguf_tensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

static int parse_tensor_info(gguf *g, cursor *c, size_t i)
{
    gguf_tensor *t = &g->tensors[i];
    char what[96];
    gguf_str name;
    snprintf(what, sizeof what, "the name of tensor %zu", i);
    if (!read_str(c, &name, what))
        return GGUF_EFORMAT;
    t->name = name.ptr;
    g->n_tensors = i + 1; /* from here on gguf_close frees the name */
    if (name.len == 0 || strlen(name.ptr) != name.len) {
        set_err(c->err, "%s: tensor %zu: name is empty or contains a NUL byte", c->name, i);
        return GGUF_EFORMAT;
    }
    snprintf(what, sizeof what, "n_dims of tensor '%.60s'", t->name);
    if (!read_u32(c, &t->n_dims, what))
        return GGUF_EFORMAT;
    if (t->n_dims == 0 || t->n_dims > GGUF_MAX_DIMS) {
        set_err(c->err, "%s: tensor '%s': n_dims %u is outside 1..%d", c->name, t->name,
                t->n_dims, GGUF_MAX_DIMS);
        return GGUF_EFORMAT;
    }
    uint64_t n_elems = 1;
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++)
        t->ne[d] = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) {
        uint64_t ne;
        snprintf(what, sizeof what, "dimension %u of tensor '%.60s'", d, t->name);
        if (!read_u64(c, &ne, what))
            return GGUF_EFORMAT;
        if (ne == 0 || ne > (uint64_t)INT64_MAX || n_elems > (uint64_t)INT64_MAX / ne) {
            set_err(c->err, "%s: tensor '%s': dimension %u is %llu (must be >= 1, and the element count must fit in 63 bits)",
                    c->name, t->name, d, (unsigned long long)ne);
            return GGUF_EFORMAT;
        }
        t->ne[d] = (int64_t)ne;
        n_elems *= ne;
    }
    snprintf(what, sizeof what, "the type of tensor '%.60s'", t->name);
    if (!read_u32(c, &t->type, what))
        return GGUF_EFORMAT;
    /* Sizes come from the type table's block geometry, which also knows
     * types the engine cannot compute with, so such files can be inspected. */
    uint32_t block_elems, block_bytes;
    if (t->type >= QT_FILE_TYPE_COUNT || !qt_block_size((qt_type)t->type, &block_elems, &block_bytes)) {
        set_err(c->err, "%s: tensor '%s': unknown tensor type %u", c->name, t->name, t->type);
        return GGUF_EFORMAT;
    }
    if (t->ne[0] % block_elems != 0) {
        set_err(c->err, "%s: tensor '%s': row length %lld is not a multiple of the %s block size %u",
                c->name, t->name, (long long)t->ne[0], qt_type_name((qt_type)t->type),
                block_elems);
        return GGUF_EFORMAT;
    }
    uint64_t n_blocks = n_elems / block_elems;
    if (n_blocks > UINT64_MAX / block_bytes) {
        set_err(c->err, "%s: tensor '%s': size overflows 64 bits", c->name, t->name);
        return GGUF_EFORMAT;
    }
    t->size_bytes = n_blocks * block_bytes;
    snprintf(what, sizeof what, "the offset of tensor '%.60s'", t->name);
    if (!read_u64(c, &t->offset, what))
        return GGUF_EFORMAT;
    if (t->offset % g->alignment != 0) {
        set_err(c->err, "%s: tensor '%s': offset %llu is not a multiple of the alignment %u",
                c->name, t->name, (unsigned long long)t->offset, g->alignment);
        return GGUF_EFORMAT;
    }
    return GGUF_OK;
}

static int parse(gguf *g, char *err)
{
    cursor c = {.p = g->base, .size = g->size, .pos = 0, .name = g->path, .err = err};
    const uint8_t *magic = take(&c, 4, "the magic");
    if (!magic)
        return GGUF_EFORMAT;
    if (memcmp(magic, GGUF_MAGIC, 4) != 0) {
        set_err(err, "%s: not a GGUF file (magic %02x %02x %02x %02x, expected \"GGUF\")",
                g->path, magic[0], magic[1], magic[2], magic[3]);
        return GGUF_EFORMAT;
    }
    if (!read_u32(&c, &g->version, "the version"))
        return GGUF_EFORMAT;
    if (g->version != 2 && g->version != 3) {
        set_err(err, "%s: unsupported GGUF version %u (this reader takes versions 2 and 3)",
                g->path, g->version);
        return GGUF_EFORMAT;
    }
    uint64_t n_tensors, n_kv;
    if (!read_u64(&c, &n_tensors, "the tensor count") || !read_u64(&c, &n_kv, "the metadata count"))
        return GGUF_EFORMAT;
    /* A key/value takes at least 8 (key length) + 4 (type) + 1 bytes and a
     * tensor info at least 8 + 4 + 8 + 4 + 8; counts that cannot fit are lies. */
    if (n_kv > (c.size - c.pos) / 13) {
        set_err(err, "%s: metadata count %llu cannot fit in a %llu-byte file", g->path,
                (unsigned long long)n_kv, (unsigned long long)g->size);
        return GGUF_EFORMAT;
    }
    if (n_tensors > (c.size - c.pos) / 32) {
        set_err(err, "%s: tensor count %llu cannot fit in a %llu-byte file", g->path,
                (unsigned long long)n_tensors, (unsigned long long)g->size);
        return GGUF_EFORMAT;
    }
    g->kv = calloc(n_kv ? n_kv : 1, sizeof *g->kv);
    g->tensors = calloc(n_tensors ? n_tensors : 1, sizeof *g->tensors);
    if (!g->kv || !g->tensors) {
        set_err(err, "%s: out of memory for %llu keys and %llu tensors", g->path,
                (unsigned long long)n_kv, (unsigned long long)n_tensors);
        return GGUF_ENOMEM;
    }

    for (uint64_t i = 0; i < n_kv; i++) {
        gguf_kv *kv = &g->kv[i];
        gguf_str key;
        char what[64];
        snprintf(what, sizeof what, "key %llu", (unsigned long long)i);
        if (!read_str(&c, &key, what))
            return GGUF_EFORMAT;
        kv->key = (char *)key.ptr;
        g->n_kv = i + 1;
        if (key.len == 0 || strlen(key.ptr) != key.len) {
            set_err(err, "%s: key %llu is empty or contains a NUL byte", g->path,
                    (unsigned long long)i);
            return GGUF_EFORMAT;
        }
        uint32_t type;
        char what2[160];
        snprintf(what2, sizeof what2, "the type of key '%.100s'", kv->key);
        if (!read_u32(&c, &type, what2))
            return GGUF_EFORMAT;
        if (!read_value(&c, (gguf_type)type, &kv->val, 0, kv->key))
            return GGUF_EFORMAT;
    }

    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    const gguf_value *al = gguf_get(g, "general.alignment");
    if (al) {
        if (al->type != GGUF_TYPE_UINT32) {
            set_err(err, "%s: general.alignment has type %s, expected uint32", g->path,
                    gguf_type_name(al->type));
            return GGUF_EFORMAT;
        }
        uint64_t a = al->v.u64;
        if (a == 0 || (a & (a - 1)) != 0 || a > GGUF_MAX_ALIGNMENT) {
            set_err(err, "%s: general.alignment %llu is not %s (1..%u)", g->path,
                    (unsigned long long)a,
                    a && !(a & (a - 1)) ? "at most the largest supported alignment" : "a power of two",
                    GGUF_MAX_ALIGNMENT);
            return GGUF_EFORMAT;
        }
        g->alignment = (uint32_t)a;
    }

    for (uint64_t i = 0; i < n_tensors; i++) {
        int rc = parse_tensor_info(g, &c, (size_t)i);
        if (rc)
            return rc;
    }
    int urc = check_unique_names(g, err);
    if (urc)
        return urc;

    /* GGUF: tensor data starts at the next multiple of the alignment. */
    uint64_t pad = (g->alignment - c.pos % g->alignment) % g->alignment;
    if (n_tensors > 0 && pad > c.size - c.pos) {
        set_err(err, "%s: file ends inside the padding before the tensor data (offset %llu)",
                g->path, (unsigned long long)c.pos);
        return GGUF_EFORMAT;
    }
    g->data_offset = c.pos + pad;
    uint64_t data_size = g->size > g->data_offset ? g->size - g->data_offset : 0;

    /* Every tensor must lie inside the data section, and no two may overlap. */
    if (n_tensors > 0) {
        gguf_tensor **order = malloc(n_tensors * sizeof *order);
        if (!order) {
            set_err(err, "%s: out of memory", g->path);
            return GGUF_ENOMEM;
        }
        for (uint64_t i = 0; i < n_tensors; i++)
            order[i] = &g->tensors[i];
        qsort(order, n_tensors, sizeof *order, cmp_tensor_offset);
        int rc = GGUF_OK;
        for (uint64_t i = 0; i < n_tensors && rc == GGUF_OK; i++) {
            gguf_tensor *t = order[i];
            if (t->offset > data_size || t->size_bytes > data_size - t->offset) {
                set_err(err, "%s: tensor '%s': data ends past the end of the file (offset %llu + %llu bytes, data section %llu bytes)",
                        g->path, t->name, (unsigned long long)t->offset,
                        (unsigned long long)t->size_bytes, (unsigned long long)data_size);
                rc = GGUF_EFORMAT;
            } else if (i + 1 < n_tensors && t->offset + t->size_bytes > order[i + 1]->offset) {
                set_err(err, "%s: tensors '%s' and '%s' overlap (offsets %llu+%llu and %llu)",
                        g->path, t->name, order[i + 1]->name, (unsigned long long)t->offset,
                        (unsigned long long)t->size_bytes,
                        (unsigned long long)order[i + 1]->offset);
                rc = GGUF_EFORMAT;
            } else {
                t->data = g->base + g->data_offset + t->offset;
            }
        }
        free(order);
        if (rc)
            return rc;
    }
    return GGUF_OK;
}

static int open_common(gguf **out, gguf *g, char *err)
{
    int rc = parse(g, err);
    if (rc) {
        gguf_close(g);
        *out = NULL;
        return rc;
    }
    *out = g;
    return GGUF_OK;
}

int gguf_open(gguf **out, const char *path, char err[256])
{
    *out = NULL;
    gguf *g = calloc(1, sizeof *g);
    if (!g || !(g->path = strdup(path))) {
        free(g);
        set_err(err, "%s: out of memory", path);
        return GGUF_ENOMEM;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        set_err(err, "%s: cannot open: %s", path, strerror(errno));
        gguf_close(g);
        return GGUF_EIO;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        set_err(err, "%s: not a regular file", path);
        close(fd);
        gguf_close(g);
        return GGUF_EIO;
    }
    g->size = (uint64_t)st.st_size;
    if (g->size < 24) {
        set_err(err, "%s: file is %llu bytes, too small for a GGUF header (24 bytes)", path,
                (unsigned long long)g->size);
        close(fd);
        gguf_close(g);
        return GGUF_EFORMAT;
    }
    void *m = mmap(NULL, g->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        set_err(err, "%s: cannot map %llu bytes: %s", path, (unsigned long long)g->size,
                strerror(errno));
        gguf_close(g);
        return GGUF_EIO;
    }
    g->base = m;
    g->mapped = true;
    return open_common(out, g, err);
}

int gguf_open_buffer(gguf **out, const void *data, size_t size, const char *name,
                     char err[256])
{
    *out = NULL;
    gguf *g = calloc(1, sizeof *g);
    if (!g || !(g->path = strdup(name ? name : "<buffer>"))) {
        free(g);
        set_err(err, "%s: out of memory", name ? name : "<buffer>");
        return GGUF_ENOMEM;
    }
    g->base = data;
    g->size = size;
    return open_common(out, g, err);
}

const char *gguf_path(const gguf *g) { return g->path; }
uint32_t gguf_version(const gguf *g) { return g->version; }
uint32_t gguf_alignment(const gguf *g) { return g->alignment; }
uint64_t gguf_file_size(const gguf *g) { return g->size; }
uint64_t gguf_data_offset(const gguf *g) { return g->data_offset; }
bool gguf_is_mapped(const gguf *g) { return g->mapped; }
size_t gguf_kv_count(const gguf *g) { return g->n_kv; }

const char *gguf_kv_key(const gguf *g, size_t i)
{
    return i < g->n_kv ? g->kv[i].key : NULL;
}

const gguf_value *gguf_kv_value(const gguf *g, size_t i)
{
    return i < g->n_kv ? &g->kv[i].val : NULL;
}

/* Linear: files hold tens of keys and lookups happen at load time only. */
const gguf_value *gguf_get(const gguf *g, const char *key)
{
    for (size_t i = 0; i < g->n_kv; i++)
        if (strcmp(g->kv[i].key, key) == 0)
            return &g->kv[i].val;
    return NULL;
}

static bool is_unsigned(gguf_type t)
{
    return t == GGUF_TYPE_UINT8 || t == GGUF_TYPE_UINT16 || t == GGUF_TYPE_UINT32 ||
           t == GGUF_TYPE_UINT64;
}

static bool is_signed(gguf_type t)
{
    return t == GGUF_TYPE_INT8 || t == GGUF_TYPE_INT16 || t == GGUF_TYPE_INT32 ||
           t == GGUF_TYPE_INT64;
}

int gguf_get_u64(const gguf *g, const char *key, uint64_t *out)
{
    const gguf_value *v = gguf_get(g, key);
    if (!v)
        return GGUF_ENOTFOUND;
    if (is_unsigned(v->type)) {
        *out = v->v.u64;
        return GGUF_OK;
    }
    if (is_signed(v->type) && v->v.i64 >= 0) {
        *out = (uint64_t)v->v.i64;
        return GGUF_OK;
    }
    return GGUF_ETYPE;
}

int gguf_get_u32(const gguf *g, const char *key, uint32_t *out)
{
    uint64_t x;
    int rc = gguf_get_u64(g, key, &x);
    if (rc)
        return rc;
    if (x > UINT32_MAX)
        return GGUF_ETYPE;
    *out = (uint32_t)x;
    return GGUF_OK;
}

int gguf_get_i32(const gguf *g, const char *key, int32_t *out)
{
    const gguf_value *v = gguf_get(g, key);
    if (!v)
        return GGUF_ENOTFOUND;
    int64_t x;
    if (is_signed(v->type))
        x = v->v.i64;
    else if (is_unsigned(v->type) && v->v.u64 <= INT32_MAX)
        x = (int64_t)v->v.u64;
    else
        return GGUF_ETYPE;
    if (x < INT32_MIN || x > INT32_MAX)
        return GGUF_ETYPE;
    *out = (int32_t)x;
    return GGUF_OK;
}

int gguf_get_f32(const gguf *g, const char *key, float *out)
{
    const gguf_value *v = gguf_get(g, key);
    if (!v)
        return GGUF_ENOTFOUND;
    if (v->type == GGUF_TYPE_FLOAT32 || v->type == GGUF_TYPE_FLOAT64)
        *out = (float)v->v.f64;
    else if (is_unsigned(v->type))
        *out = (float)v->v.u64;
    else if (is_signed(v->type))
        *out = (float)v->v.i64;
    else
        return GGUF_ETYPE;
    return GGUF_OK;
}

int gguf_get_bool(const gguf *g, const char *key, bool *out)
{
    const gguf_value *v = gguf_get(g, key);
    if (!v)
        return GGUF_ENOTFOUND;
    if (v->type != GGUF_TYPE_BOOL)
        return GGUF_ETYPE;
    *out = v->v.b;
    return GGUF_OK;
}

const char *gguf_get_str(const gguf *g, const char *key)
{
    const gguf_value *v = gguf_get(g, key);
    return v && v->type == GGUF_TYPE_STRING ? v->v.str.ptr : NULL;
}

const void *gguf_get_arr(const gguf *g, const char *key, gguf_type elem, uint64_t *n)
{
    const gguf_value *v = gguf_get(g, key);
    if (!v || v->type != GGUF_TYPE_ARRAY || v->v.arr.elem != elem)
        return NULL;
    *n = v->v.arr.n;
    return v->v.arr.data;
}

size_t gguf_tensor_count(const gguf *g) { return g->n_tensors; }

const gguf_tensor *gguf_tensor_at(const gguf *g, size_t i)
{
    return i < g->n_tensors ? &g->tensors[i] : NULL;
}

/* Linear for the same reason as gguf_get: a few hundred tensors, looked up
 * once each while a model loads. */
const gguf_tensor *gguf_find_tensor(const gguf *g, const char *name)
{
    for (size_t i = 0; i < g->n_tensors; i++)
        if (strcmp(g->tensors[i].name, name) == 0)
            return &g->tensors[i];
    return NULL;
}

/* ---- writing ---------------------------------------------------------- */

typedef struct wtensor {
    char *name;
    uint32_t n_dims;
    int64_t ne[GGUF_MAX_DIMS];
    uint32_t type;
    uint64_t offset;
    uint64_t size_bytes;
} wtensor;

struct gguf_writer {
    gguf_kv *kv;
    size_t n_kv, cap_kv;
    wtensor *tensors;
    size_t n_tensors, cap_tensors;
    uint32_t alignment;
    FILE *f;
    char *path, *tmp_path;
    size_t next_tensor; /* index of the tensor whose bytes come next */
};

gguf_writer *gguf_writer_new(void)
{
    gguf_writer *w = calloc(1, sizeof *w);
    if (w)
        w->alignment = GGUF_DEFAULT_ALIGNMENT;
    return w;
}

void gguf_writer_free(gguf_writer *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->n_kv; i++) {
        free(w->kv[i].key);
        value_free(&w->kv[i].val);
    }
    free(w->kv);
    for (size_t i = 0; i < w->n_tensors; i++)
        free(w->tensors[i].name);
    free(w->tensors);
    if (w->f) {
        fclose(w->f);
        unlink(w->tmp_path);
    }
    free(w->path);
    free(w->tmp_path);
    free(w);
}

/* Deep copy of a value into memory the writer owns. */
static int value_copy(gguf_value *dst, const gguf_value *src, int depth)
{
    *dst = *src;
    if (src->type == GGUF_TYPE_STRING) {
        char *s = malloc(src->v.str.len + 1);
        if (!s)
            return GGUF_ENOMEM;
        memcpy(s, src->v.str.ptr, src->v.str.len);
        s[src->v.str.len] = '\0';
        dst->v.str.ptr = s;
        return GGUF_OK;
    }
    if (src->type != GGUF_TYPE_ARRAY)
        return (unsigned)src->type < GGUF_TYPE_COUNT ? GGUF_OK : GGUF_EUSAGE;
    if (depth >= GGUF_MAX_NESTING || (unsigned)src->v.arr.elem >= GGUF_TYPE_COUNT)
        return GGUF_EUSAGE;
    gguf_type elem = src->v.arr.elem;
    uint64_t n = src->v.arr.n;
    dst->v.arr.n = 0;
    dst->v.arr.data = NULL;
    size_t es = elem == GGUF_TYPE_STRING ? sizeof(gguf_str)
              : elem == GGUF_TYPE_ARRAY  ? sizeof(gguf_value)
              : elem == GGUF_TYPE_BOOL   ? sizeof(bool)
                                         : scalar_size[elem];
    if (n > SIZE_MAX / es)
        return GGUF_ENOMEM;
    void *data = calloc(n ? n : 1, es);
    if (!data)
        return GGUF_ENOMEM;
    dst->v.arr.data = data;
    if (scalar_size[elem]) {
        if (n)
            memcpy(data, src->v.arr.data, n * es);
        dst->v.arr.n = n;
        return GGUF_OK;
    }
    for (uint64_t i = 0; i < n; i++) {
        if (elem == GGUF_TYPE_STRING) {
            const gguf_str *s = &((const gguf_str *)src->v.arr.data)[i];
            char *p = malloc(s->len + 1);
            if (!p)
                return GGUF_ENOMEM;
            memcpy(p, s->ptr, s->len);
            p[s->len] = '\0';
            ((gguf_str *)data)[i] = (gguf_str){p, s->len};
        } else {
            const gguf_value *sub = &((const gguf_value *)src->v.arr.data)[i];
            if (sub->type != GGUF_TYPE_ARRAY)
                return GGUF_EUSAGE;
            int rc = value_copy(&((gguf_value *)data)[i], sub, depth + 1);
            if (rc) {
                value_free(&((gguf_value *)data)[i]);
                return rc;
            }
        }
        dst->v.arr.n = i + 1;
    }
    return GGUF_OK;
}

int gguf_writer_set(gguf_writer *w, const char *key, const gguf_value *v)
{
    if (w->f || !key || !*key)
        return GGUF_EUSAGE;
    gguf_value copy;
    int rc = value_copy(&copy, v, 0);
    if (rc) {
        value_free(&copy);
        return rc;
    }
    if (strcmp(key, "general.alignment") == 0) {
        if (copy.type != GGUF_TYPE_UINT32 || copy.v.u64 == 0 ||
            (copy.v.u64 & (copy.v.u64 - 1)) || copy.v.u64 > GGUF_MAX_ALIGNMENT) {
            value_free(&copy);
            return GGUF_EUSAGE;
        }
        w->alignment = (uint32_t)copy.v.u64;
    }
    for (size_t i = 0; i < w->n_kv; i++) {
        if (strcmp(w->kv[i].key, key) == 0) {
            value_free(&w->kv[i].val);
            w->kv[i].val = copy;
            return GGUF_OK;
        }
    }
    if (w->n_kv == w->cap_kv) {
        size_t cap = w->cap_kv ? w->cap_kv * 2 : 32;
        gguf_kv *kv = realloc(w->kv, cap * sizeof *kv);
        if (!kv) {
            value_free(&copy);
            return GGUF_ENOMEM;
        }
        w->kv = kv;
        w->cap_kv = cap;
    }
    char *k = strdup(key);
    if (!k) {
        value_free(&copy);
        return GGUF_ENOMEM;
    }
    w->kv[w->n_kv++] = (gguf_kv){k, copy};
    return GGUF_OK;
}

int gguf_writer_set_u32(gguf_writer *w, const char *key, uint32_t v)
{
    gguf_value x = {.type = GGUF_TYPE_UINT32, .v.u64 = v};
    return gguf_writer_set(w, key, &x);
}

int gguf_writer_set_i32(gguf_writer *w, const char *key, int32_t v)
{
    gguf_value x = {.type = GGUF_TYPE_INT32, .v.i64 = v};
    return gguf_writer_set(w, key, &x);
}

int gguf_writer_set_f32(gguf_writer *w, const char *key, float v)
{
    gguf_value x = {.type = GGUF_TYPE_FLOAT32, .v.f64 = v};
    return gguf_writer_set(w, key, &x);
}

int gguf_writer_set_bool(gguf_writer *w, const char *key, bool v)
{
    gguf_value x = {.type = GGUF_TYPE_BOOL, .v.b = v};
    return gguf_writer_set(w, key, &x);
}

int gguf_writer_set_str(gguf_writer *w, const char *key, const char *s)
{
    gguf_value x = {.type = GGUF_TYPE_STRING, .v.str = {s, strlen(s)}};
    return gguf_writer_set(w, key, &x);
}

int gguf_writer_set_arr(gguf_writer *w, const char *key, gguf_type elem, uint64_t n,
                        const void *data)
{
    gguf_value x = {.type = GGUF_TYPE_ARRAY};
    x.v.arr.elem = elem;
    x.v.arr.n = n;
    x.v.arr.data = data;
    return gguf_writer_set(w, key, &x);
}

int gguf_writer_copy_kv(gguf_writer *w, const gguf *src, const char *prefix)
{
    size_t plen = strlen(prefix);
    for (size_t i = 0; i < src->n_kv; i++) {
        if (strncmp(src->kv[i].key, prefix, plen) != 0)
            continue;
        int rc = gguf_writer_set(w, src->kv[i].key, &src->kv[i].val);
        if (rc)
            return rc;
    }
    return GGUF_OK;
}

int gguf_writer_add_tensor(gguf_writer *w, const char *name, uint32_t n_dims,
                           const int64_t *ne, uint32_t type, char err[256])
{
    if (w->f) {
        set_err(err, "tensor '%s' declared after writing began", name);
        return GGUF_EUSAGE;
    }
    if (n_dims == 0 || n_dims > GGUF_MAX_DIMS) {
        set_err(err, "tensor '%s': n_dims %u is outside 1..%d", name, n_dims, GGUF_MAX_DIMS);
        return GGUF_EUSAGE;
    }
    size_t row = qt_row_bytes((qt_type)type, ne[0]);
    if (row == 0 || ne[0] <= 0) {
        set_err(err, "tensor '%s': type %s cannot hold rows of %lld elements", name,
                qt_type_name((qt_type)type), (long long)ne[0]);
        return GGUF_EUSAGE;
    }
    uint64_t rows = 1;
    for (uint32_t d = 1; d < n_dims; d++) {
        if (ne[d] <= 0 || rows > UINT64_MAX / (uint64_t)ne[d]) {
            set_err(err, "tensor '%s': bad dimension %u (%lld)", name, d, (long long)ne[d]);
            return GGUF_EUSAGE;
        }
        rows *= (uint64_t)ne[d];
    }
    for (size_t i = 0; i < w->n_tensors; i++) {
        if (strcmp(w->tensors[i].name, name) == 0) {
            set_err(err, "tensor '%s' declared twice", name);
            return GGUF_EUSAGE;
        }
    }
    if (w->n_tensors == w->cap_tensors) {
        size_t cap = w->cap_tensors ? w->cap_tensors * 2 : 64;
        wtensor *t = realloc(w->tensors, cap * sizeof *t);
        if (!t) {
            set_err(err, "out of memory declaring tensor '%s'", name);
            return GGUF_ENOMEM;
        }
        w->tensors = t;
        w->cap_tensors = cap;
    }
    wtensor *t = &w->tensors[w->n_tensors];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) {
        set_err(err, "out of memory declaring tensor '%s'", name);
        return GGUF_ENOMEM;
    }
    t->n_dims = n_dims;
    for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++)
        t->ne[d] = d < n_dims ? ne[d] : 1;
    t->type = type;
    if (rows > UINT64_MAX / row) {
        free(t->name);
        set_err(err, "tensor '%s': size overflows 64 bits", name);
        return GGUF_EUSAGE;
    }
    t->size_bytes = rows * row;
    return (int)w->n_tensors++;
}

static bool put(gguf_writer *w, const void *p, size_t n)
{
    return fwrite(p, 1, n, w->f) == n;
}

static bool put_u32(gguf_writer *w, uint32_t v) { return put(w, &v, 4); }
static bool put_u64(gguf_writer *w, uint64_t v) { return put(w, &v, 8); }

static bool put_str(gguf_writer *w, const char *s, uint64_t len)
{
    return put_u64(w, len) && put(w, s, len);
}

static bool put_scalar(gguf_writer *w, gguf_type t, const gguf_value *v)
{
    uint8_t b[8];
    switch (t) {
    case GGUF_TYPE_UINT8: b[0] = (uint8_t)v->v.u64; break;
    case GGUF_TYPE_INT8: b[0] = (uint8_t)(int8_t)v->v.i64; break;
    case GGUF_TYPE_BOOL: b[0] = v->v.b ? 1 : 0; break;
    case GGUF_TYPE_UINT16: { uint16_t x = (uint16_t)v->v.u64; memcpy(b, &x, 2); break; }
    case GGUF_TYPE_INT16: { int16_t x = (int16_t)v->v.i64; memcpy(b, &x, 2); break; }
    case GGUF_TYPE_UINT32: { uint32_t x = (uint32_t)v->v.u64; memcpy(b, &x, 4); break; }
    case GGUF_TYPE_INT32: { int32_t x = (int32_t)v->v.i64; memcpy(b, &x, 4); break; }
    case GGUF_TYPE_FLOAT32: { float x = (float)v->v.f64; memcpy(b, &x, 4); break; }
    case GGUF_TYPE_UINT64: memcpy(b, &v->v.u64, 8); break;
    case GGUF_TYPE_INT64: memcpy(b, &v->v.i64, 8); break;
    case GGUF_TYPE_FLOAT64: memcpy(b, &v->v.f64, 8); break;
    default: return false;
    }
    return put(w, b, scalar_size[t]);
}

/* Array payload (after the value type): element type, count, elements.
 * Scalar arrays are already in the on-disk representation (little-endian
 * hosts), except bool, which we store as C bool. */
static bool put_value(gguf_writer *w, const gguf_value *v);

static bool put_array(gguf_writer *w, const gguf_value *v)
{
    gguf_type elem = v->v.arr.elem;
    uint64_t n = v->v.arr.n;
    if (!put_u32(w, (uint32_t)elem) || !put_u64(w, n))
        return false;
    if (elem == GGUF_TYPE_BOOL) {
        const bool *b = v->v.arr.data;
        for (uint64_t i = 0; i < n; i++) {
            uint8_t x = b[i] ? 1 : 0;
            if (!put(w, &x, 1))
                return false;
        }
        return true;
    }
    if (scalar_size[elem])
        return n == 0 || put(w, v->v.arr.data, n * scalar_size[elem]);
    for (uint64_t i = 0; i < n; i++) {
        if (elem == GGUF_TYPE_STRING) {
            const gguf_str *s = &((const gguf_str *)v->v.arr.data)[i];
            if (!put_str(w, s->ptr, s->len))
                return false;
        } else if (!put_array(w, &((const gguf_value *)v->v.arr.data)[i])) {
            return false;
        }
    }
    return true;
}

static bool put_value(gguf_writer *w, const gguf_value *v)
{
    if (v->type == GGUF_TYPE_STRING)
        return put_str(w, v->v.str.ptr, v->v.str.len);
    if (v->type == GGUF_TYPE_ARRAY)
        return put_array(w, v);
    return put_scalar(w, v->type, v);
}

static bool put_padding(gguf_writer *w)
{
    static const uint8_t zeros[64];
    long pos = ftell(w->f);
    if (pos < 0)
        return false;
    uint64_t pad = (w->alignment - (uint64_t)pos % w->alignment) % w->alignment;
    while (pad > 0) {
        size_t n = pad < sizeof zeros ? (size_t)pad : sizeof zeros;
        if (!put(w, zeros, n))
            return false;
        pad -= n;
    }
    return true;
}

int gguf_writer_begin(gguf_writer *w, const char *path, char err[256])
{
    if (w->f) {
        set_err(err, "%s: writing already began", path);
        return GGUF_EUSAGE;
    }
    size_t plen = strlen(path);
    w->path = strdup(path);
    w->tmp_path = malloc(plen + 32);
    if (!w->path || !w->tmp_path) {
        set_err(err, "%s: out of memory", path);
        return GGUF_ENOMEM;
    }
    snprintf(w->tmp_path, plen + 32, "%s.tmp.%ld", path, (long)getpid());
    w->f = fopen(w->tmp_path, "wb");
    if (!w->f) {
        set_err(err, "%s: cannot create: %s", w->tmp_path, strerror(errno));
        return GGUF_EIO;
    }
    setvbuf(w->f, NULL, _IOFBF, 1 << 20);
    uint64_t offset = 0;
    for (size_t i = 0; i < w->n_tensors; i++) {
        w->tensors[i].offset = offset;
        uint64_t sz = w->tensors[i].size_bytes;
        offset += sz + (w->alignment - sz % w->alignment) % w->alignment;
    }
    bool ok = put(w, GGUF_MAGIC, 4) && put_u32(w, 3) && put_u64(w, w->n_tensors) &&
              put_u64(w, w->n_kv);
    for (size_t i = 0; ok && i < w->n_kv; i++)
        ok = put_str(w, w->kv[i].key, strlen(w->kv[i].key)) &&
             put_u32(w, (uint32_t)w->kv[i].val.type) && put_value(w, &w->kv[i].val);
    for (size_t i = 0; ok && i < w->n_tensors; i++) {
        const wtensor *t = &w->tensors[i];
        ok = put_str(w, t->name, strlen(t->name)) && put_u32(w, t->n_dims);
        for (uint32_t d = 0; ok && d < t->n_dims; d++)
            ok = put_u64(w, (uint64_t)t->ne[d]);
        ok = ok && put_u32(w, t->type) && put_u64(w, t->offset);
    }
    ok = ok && put_padding(w);
    if (!ok) {
        set_err(err, "%s: write failed: %s", w->tmp_path, strerror(errno));
        return GGUF_EIO;
    }
    w->next_tensor = 0;
    return GGUF_OK;
}

int gguf_writer_write_tensor(gguf_writer *w, const void *data, uint64_t size, char err[256])
{
    if (!w->f || w->next_tensor >= w->n_tensors) {
        set_err(err, "gguf writer: no tensor is waiting for data");
        return GGUF_EUSAGE;
    }
    const wtensor *t = &w->tensors[w->next_tensor];
    if (size != t->size_bytes) {
        set_err(err, "tensor '%s': got %llu bytes, its shape and type need %llu", t->name,
                (unsigned long long)size, (unsigned long long)t->size_bytes);
        return GGUF_EUSAGE;
    }
    if (!put(w, data, size) || !put_padding(w)) {
        set_err(err, "%s: writing tensor '%s' failed: %s", w->tmp_path, t->name,
                strerror(errno));
        return GGUF_EIO;
    }
    w->next_tensor++;
    return GGUF_OK;
}

int gguf_writer_finish(gguf_writer *w, char err[256])
{
    if (!w->f) {
        set_err(err, "gguf writer: finish before begin");
        return GGUF_EUSAGE;
    }
    if (w->next_tensor != w->n_tensors) {
        set_err(err, "%s: only %zu of %zu tensors were written", w->path, w->next_tensor,
                w->n_tensors);
        return GGUF_EUSAGE;
    }
    bool ok = fflush(w->f) == 0 && fsync(fileno(w->f)) == 0;
    int e = errno;
    ok = (fclose(w->f) == 0) && ok;
    w->f = NULL;
    if (!ok) {
        set_err(err, "%s: write failed: %s", w->tmp_path, strerror(e));
        unlink(w->tmp_path);
        return GGUF_EIO;
    }
    if (rename(w->tmp_path, w->path) != 0) {
        set_err(err, "%s: cannot rename into place: %s", w->path, strerror(errno));
        unlink(w->tmp_path);
        return GGUF_EIO;
    }
    return GGUF_OK;
}
