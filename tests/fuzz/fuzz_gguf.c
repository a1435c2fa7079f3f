/*
 * fuzz_gguf.c - libFuzzer target for the GGUF reader (and, through it, the
 * writer).
 *
 * Each input is opened with gguf_open_buffer(). A rejection must leave no
 * handle and one error line. An accepted file must keep every promise of
 * gguf.h: every byte of every key, string, array and tensor readable (ASan
 * checks the bounds), tensors aligned, inside the file and disjoint, names
 * and keys unique. An accepted file is then written back with the writer and
 * read again, and the two readings must be equal. A broken promise aborts
 * with a message, which libFuzzer reports as a crash.
 *
 * The input buffer belongs to libFuzzer; the handle borrows it until
 * gguf_close(). The round-trip file lives in /dev/shm (or $TMPDIR) under a
 * per-process name and is removed after each input.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf.h"

#define FUZZ_CHECK(cond)                                                             \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "fuzz_gguf: broken promise: %s (%s:%d)\n", #cond,        \
                    __FILE__, __LINE__);                                             \
            abort();                                                                 \
        }                                                                            \
    } while (0)

/* Keeps the compiler from dropping reads whose only purpose is ASan's check. */
static volatile uint8_t sink;

static void touch(const void *p, uint64_t n)
{
    const uint8_t *b = p;
    uint8_t acc = 0;
    for (uint64_t i = 0; i < n; i++)
        acc ^= b[i];
    sink = acc;
}

static size_t elem_size(gguf_type t)
{
    switch (t) {
    case GGUF_TYPE_UINT8:
    case GGUF_TYPE_INT8:
        return 1;
    case GGUF_TYPE_BOOL:
        return sizeof(bool);
    case GGUF_TYPE_UINT16:
    case GGUF_TYPE_INT16:
        return 2;
    case GGUF_TYPE_UINT32:
    case GGUF_TYPE_INT32:
    case GGUF_TYPE_FLOAT32:
        return 4;
    case GGUF_TYPE_UINT64:
    case GGUF_TYPE_INT64:
    case GGUF_TYPE_FLOAT64:
        return 8;
    default:
        return 0;
    }
}

static void check_str(const gguf_str *s)
{
    FUZZ_CHECK(s->ptr != NULL);
    touch(s->ptr, s->len);
    FUZZ_CHECK(s->ptr[s->len] == '\0');
}

static void check_value(const gguf_value *v, int depth)
{
    FUZZ_CHECK(depth < 64);
    FUZZ_CHECK((unsigned)v->type < GGUF_TYPE_COUNT);
    if (v->type == GGUF_TYPE_STRING) {
        check_str(&v->v.str);
        return;
    }
    if (v->type != GGUF_TYPE_ARRAY)
        return;
    gguf_type elem = v->v.arr.elem;
    FUZZ_CHECK((unsigned)elem < GGUF_TYPE_COUNT);
    FUZZ_CHECK(v->v.arr.n == 0 || v->v.arr.data != NULL);
    if (elem == GGUF_TYPE_STRING) {
        for (uint64_t i = 0; i < v->v.arr.n; i++)
            check_str(&((const gguf_str *)v->v.arr.data)[i]);
    } else if (elem == GGUF_TYPE_ARRAY) {
        for (uint64_t i = 0; i < v->v.arr.n; i++) {
            const gguf_value *sub = &((const gguf_value *)v->v.arr.data)[i];
            FUZZ_CHECK(sub->type == GGUF_TYPE_ARRAY);
            check_value(sub, depth + 1);
        }
    } else {
        size_t es = elem_size(elem);
        FUZZ_CHECK((uintptr_t)v->v.arr.data % es == 0);
        touch(v->v.arr.data, v->v.arr.n * es);
    }
}

static bool str_equal(const gguf_str *a, const gguf_str *b)
{
    return a->len == b->len && memcmp(a->ptr, b->ptr, a->len) == 0;
}

static bool value_equal(const gguf_value *a, const gguf_value *b)
{
    if (a->type != b->type)
        return false;
    switch (a->type) {
    case GGUF_TYPE_STRING:
        return str_equal(&a->v.str, &b->v.str);
    case GGUF_TYPE_BOOL:
        return a->v.b == b->v.b;
    case GGUF_TYPE_FLOAT32:
    case GGUF_TYPE_FLOAT64:
        /* Bit-equal, or both NaN (a float NaN's payload may be quieted). */
        return memcmp(&a->v.f64, &b->v.f64, sizeof(double)) == 0 ||
               (a->v.f64 != a->v.f64 && b->v.f64 != b->v.f64);
    case GGUF_TYPE_INT8:
    case GGUF_TYPE_INT16:
    case GGUF_TYPE_INT32:
    case GGUF_TYPE_INT64:
        return a->v.i64 == b->v.i64;
    case GGUF_TYPE_ARRAY:
        break;
    default:
        return a->v.u64 == b->v.u64;
    }
    gguf_type elem = a->v.arr.elem;
    uint64_t n = a->v.arr.n;
    if (elem != b->v.arr.elem || n != b->v.arr.n)
        return false;
    for (uint64_t i = 0; i < n; i++) {
        if (elem == GGUF_TYPE_STRING) {
            if (!str_equal(&((const gguf_str *)a->v.arr.data)[i],
                           &((const gguf_str *)b->v.arr.data)[i]))
                return false;
        } else if (elem == GGUF_TYPE_ARRAY) {
            if (!value_equal(&((const gguf_value *)a->v.arr.data)[i],
                             &((const gguf_value *)b->v.arr.data)[i]))
                return false;
        }
    }
    if (elem == GGUF_TYPE_STRING || elem == GGUF_TYPE_ARRAY || n == 0)
        return true;
    /* Float arrays compare bit for bit: the writer copies their bytes. */
    return memcmp(a->v.arr.data, b->v.arr.data, n * elem_size(elem)) == 0;
}

static void check_handle(const gguf *g, const uint8_t *file, size_t size)
{
    uint32_t align = gguf_alignment(g);
    FUZZ_CHECK(align != 0 && (align & (align - 1)) == 0);
    FUZZ_CHECK(gguf_version(g) == 2 || gguf_version(g) == 3);
    FUZZ_CHECK(gguf_file_size(g) == size);

    size_t n_kv = gguf_kv_count(g);
    for (size_t i = 0; i < n_kv; i++) {
        const char *key = gguf_kv_key(g, i);
        const gguf_value *v = gguf_kv_value(g, i);
        FUZZ_CHECK(key && key[0] && v);
        /* Unique keys: the lookup by name finds this very entry. */
        FUZZ_CHECK(gguf_get(g, key) == v);
        check_value(v, 0);
    }
    FUZZ_CHECK(gguf_kv_key(g, n_kv) == NULL);

    size_t n_t = gguf_tensor_count(g);
    if (n_t == 0)
        return;
    uint64_t base = gguf_data_offset(g);
    FUZZ_CHECK(base % align == 0 && base <= size);
    for (size_t i = 0; i < n_t; i++) {
        const gguf_tensor *t = gguf_tensor_at(g, i);
        FUZZ_CHECK(t && t->name && t->name[0]);
        FUZZ_CHECK(gguf_find_tensor(g, t->name) == t);
        FUZZ_CHECK(t->n_dims >= 1 && t->n_dims <= GGUF_MAX_DIMS);
        for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++)
            FUZZ_CHECK(t->ne[d] >= 1 && (d < t->n_dims || t->ne[d] == 1));
        FUZZ_CHECK(t->offset % align == 0);
        FUZZ_CHECK(t->size_bytes > 0 && t->offset <= size - base &&
                   t->size_bytes <= size - base - t->offset);
        FUZZ_CHECK((const uint8_t *)t->data == file + base + t->offset);
        touch(t->data, t->size_bytes);
        /* Disjoint: quadratic, but fuzz inputs hold few tensors. */
        for (size_t j = 0; j < i; j++) {
            const gguf_tensor *u = gguf_tensor_at(g, j);
            FUZZ_CHECK(t->offset + t->size_bytes <= u->offset ||
                       u->offset + u->size_bytes <= t->offset);
        }
    }
    FUZZ_CHECK(gguf_tensor_at(g, n_t) == NULL);
}

static const char *roundtrip_path(void)
{
    static char path[256];
    if (!path[0]) {
        const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
        snprintf(path, sizeof path, "%s/outpost-fuzz-gguf-%ld.gguf", dir ? dir : "/tmp",
                 (long)getpid());
    }
    return path;
}

/* Write g back out and read it again: the same keys in the same order, the
 * same tensors with the same bytes. */
static void check_roundtrip(const gguf *g)
{
    const char *path = roundtrip_path();
    char err[256] = "";
    gguf_writer *w = gguf_writer_new();
    FUZZ_CHECK(w != NULL);
    FUZZ_CHECK(gguf_writer_copy_kv(w, g, "") == GGUF_OK);
    size_t n_t = gguf_tensor_count(g);
    for (size_t i = 0; i < n_t; i++) {
        const gguf_tensor *t = gguf_tensor_at(g, i);
        int idx = gguf_writer_add_tensor(w, t->name, t->n_dims, t->ne, t->type, err);
        if (idx != (int)i)
            fprintf(stderr, "fuzz_gguf: writer refused tensor '%s': %s\n", t->name, err);
        FUZZ_CHECK(idx == (int)i);
    }
    if (gguf_writer_begin(w, path, err) != GGUF_OK) {
        /* Out of disk space is not the reader's fault. */
        fprintf(stderr, "fuzz_gguf: cannot write %s: %s\n", path, err);
        gguf_writer_free(w);
        return;
    }
    for (size_t i = 0; i < n_t; i++) {
        const gguf_tensor *t = gguf_tensor_at(g, i);
        FUZZ_CHECK(gguf_writer_write_tensor(w, t->data, t->size_bytes, err) == GGUF_OK);
    }
    FUZZ_CHECK(gguf_writer_finish(w, err) == GGUF_OK);
    gguf_writer_free(w);

    gguf *h = NULL;
    int rc = gguf_open(&h, path, err);
    if (rc != GGUF_OK)
        fprintf(stderr, "fuzz_gguf: the rewritten file does not open: %s\n", err);
    FUZZ_CHECK(rc == GGUF_OK);
    FUZZ_CHECK(gguf_kv_count(h) == gguf_kv_count(g));
    for (size_t i = 0; i < gguf_kv_count(g); i++) {
        FUZZ_CHECK(strcmp(gguf_kv_key(g, i), gguf_kv_key(h, i)) == 0);
        FUZZ_CHECK(value_equal(gguf_kv_value(g, i), gguf_kv_value(h, i)));
    }
    FUZZ_CHECK(gguf_tensor_count(h) == n_t);
    FUZZ_CHECK(gguf_alignment(h) == gguf_alignment(g));
    for (size_t i = 0; i < n_t; i++) {
        const gguf_tensor *a = gguf_tensor_at(g, i), *b = gguf_tensor_at(h, i);
        FUZZ_CHECK(strcmp(a->name, b->name) == 0 && a->n_dims == b->n_dims &&
                   a->type == b->type && a->size_bytes == b->size_bytes);
        FUZZ_CHECK(memcmp(a->ne, b->ne, sizeof a->ne) == 0);
        FUZZ_CHECK(memcmp(a->data, b->data, a->size_bytes) == 0);
    }
    gguf_close(h);
    unlink(path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    gguf *g = (gguf *)&g; /* not NULL: a failed open must clear it */
    char err[256];
    memset(err, 0, sizeof err);
    int rc = gguf_open_buffer(&g, data, size, "fuzz.gguf", err);
    if (rc != GGUF_OK) {
        FUZZ_CHECK(rc < 0);
        FUZZ_CHECK(g == NULL);
        FUZZ_CHECK(err[0] != '\0' && memchr(err, '\0', sizeof err) != NULL);
        FUZZ_CHECK(strstr(err, "fuzz.gguf") != NULL);
        return 0;
    }
    FUZZ_CHECK(g != NULL);
    check_handle(g, data, size);
    check_roundtrip(g);
    gguf_close(g);
    return 0;
}
