/*
 * test_gguf.c - the GGUF reader and writer (engine/gguf.c).
 *
 * Round trips go through the writer and a real file in a temporary directory
 * (removed at the end). Malformed inputs are built byte by byte with a small
 * builder that knows the GGUF v3 layout, each with exactly one fault, and
 * are opened from a heap buffer of exactly their size, so a read one byte
 * past the end is an AddressSanitizer error rather than luck. Every rejection
 * must carry an error line naming the fault; the tests match a distinctive
 * piece of it.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "gguf.h"
#include "quant.h"

/* ---- temporary files ---------------------------------------------------- */

static char tmp_dir[64];

static int make_tmp_dir(void **state)
{
    (void)state;
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/outpost-test-gguf-XXXXXX");
    return mkdtemp(tmp_dir) ? 0 : -1;
}

static const char *tmp_path(const char *name)
{
    static char path[128];
    snprintf(path, sizeof path, "%s/%s", tmp_dir, name);
    return path;
}

static const char *const tmp_names[] = {"roundtrip.gguf", "aligned.gguf", "v2.gguf",
                                        "prefix.gguf",    "small.gguf",   "empty.gguf"};

static int remove_tmp_dir(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof tmp_names / sizeof tmp_names[0]; i++)
        unlink(tmp_path(tmp_names[i]));
    return rmdir(tmp_dir);
}

static uint8_t *slurp(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    long n = ftell(f);
    assert_true(n >= 0);
    rewind(f);
    uint8_t *p = malloc(n ? (size_t)n : 1);
    assert_non_null(p);
    assert_int_equal(fread(p, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *size = (size_t)n;
    return p;
}

static void spill(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

/* ---- byte builder ------------------------------------------------------- */

typedef struct bb {
    uint8_t *p;
    size_t n, cap;
} bb;

static void bb_bytes(bb *b, const void *src, size_t n)
{
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        assert_non_null(b->p);
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->n, src, n);
    b->n += n;
}

static void bb_u8(bb *b, uint8_t v) { bb_bytes(b, &v, 1); }
static void bb_u32(bb *b, uint32_t v) { bb_bytes(b, &v, 4); }
static void bb_u64(bb *b, uint64_t v) { bb_bytes(b, &v, 8); }

static void bb_str(bb *b, const char *s)
{
    bb_u64(b, strlen(s));
    bb_bytes(b, s, strlen(s));
}

static void bb_header(bb *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
    bb_bytes(b, "GGUF", 4);
    bb_u32(b, version);
    bb_u64(b, n_tensors);
    bb_u64(b, n_kv);
}

static void bb_kv_u32(bb *b, const char *key, uint32_t v)
{
    bb_str(b, key);
    bb_u32(b, GGUF_TYPE_UINT32);
    bb_u32(b, v);
}

static void bb_kv_str(bb *b, const char *key, const char *v)
{
    bb_str(b, key);
    bb_u32(b, GGUF_TYPE_STRING);
    bb_str(b, v);
}

/* ne must hold min(n_dims, 8) extents; a hostile n_dims writes at most 8. */
static void bb_tensor(bb *b, const char *name, uint32_t n_dims, const uint64_t *ne,
                      uint32_t type, uint64_t offset)
{
    bb_str(b, name);
    bb_u32(b, n_dims);
    for (uint32_t d = 0; d < n_dims && d < 8; d++)
        bb_u64(b, ne[d]);
    bb_u32(b, type);
    bb_u64(b, offset);
}

static void bb_pad(bb *b, size_t align)
{
    while (b->n % align)
        bb_u8(b, 0);
}

static void bb_fill(bb *b, size_t n, uint8_t v)
{
    for (size_t i = 0; i < n; i++)
        bb_u8(b, (uint8_t)(v + i));
}

/* One F32 tensor of 8 elements (32 bytes) at offset 0, after one key. */
static void bb_minimal(bb *b, uint32_t version)
{
    uint64_t ne[1] = {8};
    bb_header(b, version, 1, 1);
    bb_kv_str(b, "general.name", "tiny");
    bb_tensor(b, "w", 1, ne, QT_F32, 0);
    bb_pad(b, GGUF_DEFAULT_ALIGNMENT);
    bb_fill(b, 32, 1);
}

/* ---- opening ------------------------------------------------------------ */

/* Open from a heap copy of exactly n bytes. */
static int open_exact(const void *p, size_t n, gguf **g, uint8_t **copy, char err[256])
{
    *copy = malloc(n ? n : 1);
    assert_non_null(*copy);
    if (n)
        memcpy(*copy, p, n);
    err[0] = '\0';
    return gguf_open_buffer(g, *copy, n, "bad.gguf", err);
}

static void expect_reject(const void *p, size_t n, const char *needle)
{
    gguf *g = (gguf *)&g; /* not NULL, so the test sees gguf_open_buffer clear it */
    uint8_t *copy;
    char err[256];
    int rc = open_exact(p, n, &g, &copy, err);
    if (rc == 0) {
        gguf_close(g);
        free(copy);
        fail_msg("a file that should fail with \"%s\" was accepted", needle);
        return;
    }
    assert_null(g);
    free(copy);
    if (rc != GGUF_EFORMAT)
        fail_msg("expected GGUF_EFORMAT, got %d (%s)", rc, err);
    if (!strstr(err, needle))
        fail_msg("error \"%s\" does not mention \"%s\"", err, needle);
    if (!strstr(err, "bad.gguf"))
        fail_msg("error \"%s\" does not name the file", err);
}

static void expect_reject_bb(bb *b, const char *needle)
{
    expect_reject(b->p, b->n, needle);
    free(b->p);
    memset(b, 0, sizeof *b);
}

static gguf *open_ok(const char *path)
{
    gguf *g = NULL;
    char err[256] = "";
    int rc = gguf_open(&g, path, err);
    if (rc != 0)
        fail_msg("gguf_open(%s): %d %s", path, rc, err);
    assert_non_null(g);
    return g;
}

/* ---- the round-trip file ------------------------------------------------ */

typedef struct tensor_spec {
    const char *name;
    uint32_t n_dims;
    int64_t ne[GGUF_MAX_DIMS];
    qt_type type;
} tensor_spec;

static const tensor_spec rt_tensors[] = {
    {"token_embd.weight", 2, {7, 3}, QT_F32},
    {"blk.0.attn_norm.weight", 1, {16}, QT_F16},
    {"blk.0.attn_q.weight", 2, {64, 2}, QT_Q4_0},
    {"blk.0.ffn_up.weight", 3, {32, 3, 2}, QT_Q8_0},
    {"blk.0.ffn_down.weight", 4, {256, 1, 2, 1}, QT_Q4_K},
    {"positions", 1, {5}, QT_I32},
    {"scale", 1, {1}, QT_BF16},
    {"blk.0.q5", 2, {32, 1}, QT_Q5_1},
};
#define N_RT_TENSORS (sizeof rt_tensors / sizeof rt_tensors[0])

static uint64_t spec_bytes(const tensor_spec *t)
{
    uint64_t n = qt_row_bytes(t->type, t->ne[0]);
    for (uint32_t d = 1; d < t->n_dims; d++)
        n *= (uint64_t)t->ne[d];
    return n;
}

static void tensor_pattern(uint8_t *p, uint64_t n, size_t which)
{
    for (uint64_t i = 0; i < n; i++)
        p[i] = (uint8_t)(i * 31 + which * 7 + (i >> 8));
}

static const uint8_t arr_u8[] = {0, 1, 255};
static const int8_t arr_i8[] = {-128, 0, 127};
static const uint16_t arr_u16[] = {0, 1234, 65535};
static const int16_t arr_i16[] = {-32768, -1, 32767};
static const uint32_t arr_u32[] = {0, 3000000000u, UINT32_MAX};
static const int32_t arr_i32[] = {INT32_MIN, -7, INT32_MAX};
static const float arr_f32[] = {-1.5f, 0.0f, 3.4e38f};
static const bool arr_bool[] = {true, false, true};
static const uint64_t arr_u64[] = {0, 1ull << 40, UINT64_MAX};
static const int64_t arr_i64[] = {INT64_MIN, -3, INT64_MAX};
static const double arr_f64[] = {-2.25, 1e-300, 1e300};
static const gguf_str arr_str[] = {{"alpha", 5}, {"", 0}, {"nul\0inside", 10}, {"ü→", 5}};

typedef struct arr_spec {
    const char *key;
    gguf_type elem;
    const void *data;
    size_t elem_size;
} arr_spec;

static const arr_spec rt_arrays[] = {
    {"arr.u8", GGUF_TYPE_UINT8, arr_u8, 1},       {"arr.i8", GGUF_TYPE_INT8, arr_i8, 1},
    {"arr.u16", GGUF_TYPE_UINT16, arr_u16, 2},    {"arr.i16", GGUF_TYPE_INT16, arr_i16, 2},
    {"arr.u32", GGUF_TYPE_UINT32, arr_u32, 4},    {"arr.i32", GGUF_TYPE_INT32, arr_i32, 4},
    {"arr.f32", GGUF_TYPE_FLOAT32, arr_f32, 4},   {"arr.bool", GGUF_TYPE_BOOL, arr_bool, sizeof(bool)},
    {"arr.u64", GGUF_TYPE_UINT64, arr_u64, 8},    {"arr.i64", GGUF_TYPE_INT64, arr_i64, 8},
    {"arr.f64", GGUF_TYPE_FLOAT64, arr_f64, 8},
};
#define N_RT_ARRAYS (sizeof rt_arrays / sizeof rt_arrays[0])

static void set_ok(int rc)
{
    assert_int_equal(rc, GGUF_OK);
}

static void set_value(gguf_writer *w, const char *key, gguf_value v)
{
    set_ok(gguf_writer_set(w, key, &v));
}

/* Writes every metadata type and the tensors above; alignment 0 = default. */
static void write_roundtrip(const char *path, uint32_t alignment)
{
    gguf_writer *w = gguf_writer_new();
    assert_non_null(w);
    char err[256] = "";
    set_value(w, "s.u8", (gguf_value){.type = GGUF_TYPE_UINT8, .v.u64 = 200});
    set_value(w, "s.i8", (gguf_value){.type = GGUF_TYPE_INT8, .v.i64 = -100});
    set_value(w, "s.u16", (gguf_value){.type = GGUF_TYPE_UINT16, .v.u64 = 60000});
    set_value(w, "s.i16", (gguf_value){.type = GGUF_TYPE_INT16, .v.i64 = -30000});
    set_ok(gguf_writer_set_u32(w, "s.u32", 4000000000u));
    set_ok(gguf_writer_set_i32(w, "s.i32", -2000000000));
    set_ok(gguf_writer_set_f32(w, "s.f32", 3.25f));
    set_ok(gguf_writer_set_bool(w, "s.bool", true));
    set_ok(gguf_writer_set_str(w, "s.str", "hello, world"));
    set_value(w, "s.u64", (gguf_value){.type = GGUF_TYPE_UINT64, .v.u64 = UINT64_MAX - 5});
    set_value(w, "s.i64", (gguf_value){.type = GGUF_TYPE_INT64, .v.i64 = INT64_MIN + 9});
    set_value(w, "s.f64", (gguf_value){.type = GGUF_TYPE_FLOAT64, .v.f64 = 3.141592653589793});
    set_ok(gguf_writer_set_str(w, "s.empty", ""));
    set_value(w, "s.nul", (gguf_value){.type = GGUF_TYPE_STRING, .v.str = {"a\0b", 3}});
    set_ok(gguf_writer_set_bool(w, "s.false", false));
    if (alignment)
        set_ok(gguf_writer_set_u32(w, "general.alignment", alignment));

    for (size_t i = 0; i < N_RT_ARRAYS; i++) {
        set_ok(gguf_writer_set_arr(w, rt_arrays[i].key, rt_arrays[i].elem, 3, rt_arrays[i].data));
        char key[64];
        snprintf(key, sizeof key, "%s.empty", rt_arrays[i].key);
        set_ok(gguf_writer_set_arr(w, key, rt_arrays[i].elem, 0, NULL));
    }
    set_ok(gguf_writer_set_arr(w, "arr.str", GGUF_TYPE_STRING, 4, arr_str));
    set_ok(gguf_writer_set_arr(w, "arr.str.empty", GGUF_TYPE_STRING, 0, NULL));

    /* [[1, 2, 3], [], [["alpha", "", ...]]]: arrays of arrays, nested twice. */
    gguf_value inner_str = {.type = GGUF_TYPE_ARRAY};
    inner_str.v.arr.elem = GGUF_TYPE_STRING;
    inner_str.v.arr.n = 4;
    inner_str.v.arr.data = arr_str;
    gguf_value deep = {.type = GGUF_TYPE_ARRAY};
    deep.v.arr.elem = GGUF_TYPE_ARRAY;
    deep.v.arr.n = 1;
    deep.v.arr.data = &inner_str;
    gguf_value outer_elems[3] = {{.type = GGUF_TYPE_ARRAY}, {.type = GGUF_TYPE_ARRAY}, deep};
    outer_elems[0].v.arr.elem = GGUF_TYPE_INT32;
    outer_elems[0].v.arr.n = 3;
    outer_elems[0].v.arr.data = arr_i32;
    outer_elems[1].v.arr.elem = GGUF_TYPE_FLOAT64;
    outer_elems[1].v.arr.n = 0;
    outer_elems[1].v.arr.data = NULL;
    set_ok(gguf_writer_set_arr(w, "arr.nested", GGUF_TYPE_ARRAY, 3, outer_elems));
    set_ok(gguf_writer_set_arr(w, "arr.nested.empty", GGUF_TYPE_ARRAY, 0, NULL));

    for (size_t i = 0; i < N_RT_TENSORS; i++) {
        const tensor_spec *t = &rt_tensors[i];
        int idx = gguf_writer_add_tensor(w, t->name, t->n_dims, t->ne, t->type, err);
        if (idx < 0)
            fail_msg("add_tensor %s: %s", t->name, err);
        assert_int_equal(idx, (int)i);
    }
    if (gguf_writer_begin(w, path, err) != 0)
        fail_msg("begin: %s", err);
    for (size_t i = 0; i < N_RT_TENSORS; i++) {
        uint64_t n = spec_bytes(&rt_tensors[i]);
        uint8_t *data = malloc(n);
        assert_non_null(data);
        tensor_pattern(data, n, i);
        if (gguf_writer_write_tensor(w, data, n, err) != 0)
            fail_msg("write_tensor %s: %s", rt_tensors[i].name, err);
        free(data);
    }
    if (gguf_writer_finish(w, err) != 0)
        fail_msg("finish: %s", err);
    gguf_writer_free(w);
}

static const gguf_value *get_typed(const gguf *g, const char *key, gguf_type t)
{
    const gguf_value *v = gguf_get(g, key);
    if (!v)
        fail_msg("key %s missing", key);
    if (v->type != t)
        fail_msg("key %s has type %s, expected %s", key, gguf_type_name(v->type),
                 gguf_type_name(t));
    return v;
}

static void check_str_array(const gguf_value *v)
{
    assert_int_equal(v->type, GGUF_TYPE_ARRAY);
    assert_int_equal(v->v.arr.elem, GGUF_TYPE_STRING);
    assert_int_equal(v->v.arr.n, 4);
    const gguf_str *s = v->v.arr.data;
    for (int i = 0; i < 4; i++) {
        assert_int_equal(s[i].len, arr_str[i].len);
        assert_memory_equal(s[i].ptr, arr_str[i].ptr, arr_str[i].len + 1); /* with the NUL */
    }
}

static void check_roundtrip(const gguf *g, uint32_t alignment)
{
    assert_int_equal(gguf_get_u64(g, "s.u8", &(uint64_t){0}), 0);
    assert_int_equal(get_typed(g, "s.u8", GGUF_TYPE_UINT8)->v.u64, 200);
    assert_int_equal(get_typed(g, "s.i8", GGUF_TYPE_INT8)->v.i64, -100);
    assert_int_equal(get_typed(g, "s.u16", GGUF_TYPE_UINT16)->v.u64, 60000);
    assert_int_equal(get_typed(g, "s.i16", GGUF_TYPE_INT16)->v.i64, -30000);
    assert_int_equal(get_typed(g, "s.u32", GGUF_TYPE_UINT32)->v.u64, 4000000000u);
    assert_int_equal(get_typed(g, "s.i32", GGUF_TYPE_INT32)->v.i64, -2000000000);
    assert_true(get_typed(g, "s.f32", GGUF_TYPE_FLOAT32)->v.f64 == 3.25);
    assert_true(get_typed(g, "s.bool", GGUF_TYPE_BOOL)->v.b);
    assert_false(get_typed(g, "s.false", GGUF_TYPE_BOOL)->v.b);
    assert_string_equal(get_typed(g, "s.str", GGUF_TYPE_STRING)->v.str.ptr, "hello, world");
    assert_true(get_typed(g, "s.u64", GGUF_TYPE_UINT64)->v.u64 == UINT64_MAX - 5);
    assert_true(get_typed(g, "s.i64", GGUF_TYPE_INT64)->v.i64 == INT64_MIN + 9);
    assert_true(get_typed(g, "s.f64", GGUF_TYPE_FLOAT64)->v.f64 == 3.141592653589793);
    const gguf_value *e = get_typed(g, "s.empty", GGUF_TYPE_STRING);
    assert_int_equal(e->v.str.len, 0);
    assert_string_equal(e->v.str.ptr, "");
    const gguf_value *nul = get_typed(g, "s.nul", GGUF_TYPE_STRING);
    assert_int_equal(nul->v.str.len, 3);
    assert_memory_equal(nul->v.str.ptr, "a\0b", 4);

    /* Typed getters convert where the value fits and refuse where it does not. */
    uint32_t u32;
    int32_t i32;
    float f32;
    bool b;
    assert_int_equal(gguf_get_u32(g, "s.u32", &u32), 0);
    assert_int_equal(u32, 4000000000u);
    assert_int_equal(gguf_get_u32(g, "s.u8", &u32), 0);
    assert_int_equal(u32, 200);
    assert_int_equal(gguf_get_u32(g, "s.u64", &u32), GGUF_ETYPE);
    assert_int_equal(gguf_get_u32(g, "s.i8", &u32), GGUF_ETYPE);
    assert_int_equal(gguf_get_i32(g, "s.i16", &i32), 0);
    assert_int_equal(i32, -30000);
    assert_int_equal(gguf_get_i32(g, "s.u32", &i32), GGUF_ETYPE);
    assert_int_equal(gguf_get_f32(g, "s.f32", &f32), 0);
    assert_true(f32 == 3.25f);
    assert_int_equal(gguf_get_f32(g, "s.u16", &f32), 0);
    assert_true(f32 == 60000.0f);
    assert_int_equal(gguf_get_f32(g, "s.str", &f32), GGUF_ETYPE);
    assert_int_equal(gguf_get_bool(g, "s.bool", &b), 0);
    assert_true(b);
    assert_int_equal(gguf_get_bool(g, "s.u8", &b), GGUF_ETYPE);
    assert_int_equal(gguf_get_u32(g, "no.such.key", &u32), GGUF_ENOTFOUND);
    assert_null(gguf_get(g, "no.such.key"));
    assert_string_equal(gguf_get_str(g, "s.str"), "hello, world");
    assert_null(gguf_get_str(g, "s.u8"));

    for (size_t i = 0; i < N_RT_ARRAYS; i++) {
        const arr_spec *a = &rt_arrays[i];
        uint64_t n = 99;
        const void *data = gguf_get_arr(g, a->key, a->elem, &n);
        if (!data)
            fail_msg("array %s missing or of the wrong element type", a->key);
        assert_int_equal(n, 3);
        assert_memory_equal(data, a->data, 3 * a->elem_size);
        /* Scalar arrays are naturally aligned C arrays. */
        assert_int_equal((uintptr_t)data % a->elem_size, 0);
        assert_null(gguf_get_arr(g, a->key, a->elem == GGUF_TYPE_UINT8 ? GGUF_TYPE_INT8
                                                                        : GGUF_TYPE_UINT8,
                                 &n));
        char key[64];
        snprintf(key, sizeof key, "%s.empty", a->key);
        const gguf_value *v = get_typed(g, key, GGUF_TYPE_ARRAY);
        assert_int_equal(v->v.arr.elem, a->elem);
        assert_int_equal(v->v.arr.n, 0);
    }
    check_str_array(gguf_get(g, "arr.str"));
    const gguf_value *es = get_typed(g, "arr.str.empty", GGUF_TYPE_ARRAY);
    assert_int_equal(es->v.arr.elem, GGUF_TYPE_STRING);
    assert_int_equal(es->v.arr.n, 0);

    const gguf_value *nested = get_typed(g, "arr.nested", GGUF_TYPE_ARRAY);
    assert_int_equal(nested->v.arr.elem, GGUF_TYPE_ARRAY);
    assert_int_equal(nested->v.arr.n, 3);
    const gguf_value *items = nested->v.arr.data;
    assert_int_equal(items[0].type, GGUF_TYPE_ARRAY);
    assert_int_equal(items[0].v.arr.elem, GGUF_TYPE_INT32);
    assert_int_equal(items[0].v.arr.n, 3);
    assert_memory_equal(items[0].v.arr.data, arr_i32, sizeof arr_i32);
    assert_int_equal(items[1].v.arr.elem, GGUF_TYPE_FLOAT64);
    assert_int_equal(items[1].v.arr.n, 0);
    assert_int_equal(items[2].v.arr.elem, GGUF_TYPE_ARRAY);
    assert_int_equal(items[2].v.arr.n, 1);
    check_str_array(&((const gguf_value *)items[2].v.arr.data)[0]);
    const gguf_value *ne = get_typed(g, "arr.nested.empty", GGUF_TYPE_ARRAY);
    assert_int_equal(ne->v.arr.elem, GGUF_TYPE_ARRAY);
    assert_int_equal(ne->v.arr.n, 0);

    /* Keys come back in the order they were set. */
    assert_string_equal(gguf_kv_key(g, 0), "s.u8");
    assert_string_equal(gguf_kv_key(g, 1), "s.i8");
    assert_null(gguf_kv_key(g, gguf_kv_count(g)));
    assert_null(gguf_kv_value(g, gguf_kv_count(g)));
    size_t n_kv = 15 + (alignment ? 1 : 0) + 2 * N_RT_ARRAYS + 4;
    assert_int_equal(gguf_kv_count(g), n_kv);

    uint32_t al = alignment ? alignment : GGUF_DEFAULT_ALIGNMENT;
    assert_int_equal(gguf_alignment(g), al);
    assert_int_equal(gguf_data_offset(g) % al, 0);
    assert_int_equal(gguf_tensor_count(g), N_RT_TENSORS);
    assert_null(gguf_tensor_at(g, N_RT_TENSORS));
    for (size_t i = 0; i < N_RT_TENSORS; i++) {
        const tensor_spec *s = &rt_tensors[i];
        const gguf_tensor *t = gguf_find_tensor(g, s->name);
        assert_non_null(t);
        assert_ptr_equal(t, gguf_tensor_at(g, i));
        assert_string_equal(t->name, s->name);
        assert_int_equal(t->n_dims, s->n_dims);
        assert_int_equal(t->type, s->type);
        for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++)
            assert_int_equal(t->ne[d], d < s->n_dims ? s->ne[d] : 1);
        uint64_t n = spec_bytes(s);
        assert_int_equal(t->size_bytes, n);
        assert_int_equal(t->offset % al, 0);
        assert_int_equal((gguf_data_offset(g) + t->offset) % al, 0);
        assert_true(gguf_data_offset(g) + t->offset + n <= gguf_file_size(g));
        uint8_t *want = malloc(n);
        assert_non_null(want);
        tensor_pattern(want, n, i);
        assert_memory_equal(t->data, want, n);
        free(want);
    }
    assert_null(gguf_find_tensor(g, "no.such.tensor"));
}

static void gguf_roundtrips_every_metadata_type_and_tensor(void **state)
{
    (void)state;
    const char *path = tmp_path("roundtrip.gguf");
    write_roundtrip(path, 0);
    gguf *g = open_ok(path);
    assert_int_equal(gguf_version(g), 3);
    assert_string_equal(gguf_path(g), path);
    check_roundtrip(g, 0);
    gguf_close(g);

    /* The same bytes through the buffer entry point. */
    size_t n;
    uint8_t *bytes = slurp(path, &n);
    char err[256] = "";
    assert_int_equal(gguf_open_buffer(&g, bytes, n, "mem", err), 0);
    assert_int_equal(gguf_file_size(g), n);
    check_roundtrip(g, 0);
    gguf_close(g);
    free(bytes);
}

static void gguf_honours_a_custom_alignment(void **state)
{
    (void)state;
    const uint32_t aligns[] = {64, 256, 1};
    for (size_t i = 0; i < sizeof aligns / sizeof aligns[0]; i++) {
        const char *path = tmp_path("aligned.gguf");
        write_roundtrip(path, aligns[i]);
        gguf *g = open_ok(path);
        check_roundtrip(g, aligns[i]);
        gguf_close(g);
    }
}

static void gguf_copy_kv_rewrites_the_same_metadata(void **state)
{
    (void)state;
    const char *src_path = tmp_path("roundtrip.gguf");
    write_roundtrip(src_path, 0);
    gguf *src = open_ok(src_path);
    gguf_writer *w = gguf_writer_new();
    assert_non_null(w);
    set_ok(gguf_writer_copy_kv(w, src, "arr."));
    char err[256] = "";
    const char *path = tmp_path("small.gguf");
    assert_int_equal(gguf_writer_begin(w, path, err), 0);
    assert_int_equal(gguf_writer_finish(w, err), 0);
    gguf_writer_free(w);
    gguf *g = open_ok(path);
    assert_int_equal(gguf_kv_count(g), 2 * N_RT_ARRAYS + 4);
    assert_null(gguf_get(g, "s.u8"));
    check_str_array(gguf_get(g, "arr.str"));
    const gguf_value *nested = get_typed(g, "arr.nested", GGUF_TYPE_ARRAY);
    assert_int_equal(nested->v.arr.n, 3);
    assert_int_equal(gguf_tensor_count(g), 0);
    gguf_close(g);
    gguf_close(src);
}

/* Version 2 has the same layout as version 3 (64-bit counts and lengths). */
static void gguf_reads_version_2(void **state)
{
    (void)state;
    const char *path = tmp_path("roundtrip.gguf");
    write_roundtrip(path, 0);
    size_t n;
    uint8_t *bytes = slurp(path, &n);
    uint32_t v2 = 2;
    memcpy(bytes + 4, &v2, 4);
    const char *p2 = tmp_path("v2.gguf");
    spill(p2, bytes, n);
    free(bytes);
    gguf *g = open_ok(p2);
    assert_int_equal(gguf_version(g), 2);
    check_roundtrip(g, 0);
    gguf_close(g);

    bb b = {0};
    bb_minimal(&b, 2);
    gguf *m = NULL;
    uint8_t *copy;
    char err[256];
    assert_int_equal(open_exact(b.p, b.n, &m, &copy, err), 0);
    assert_int_equal(gguf_version(m), 2);
    assert_string_equal(gguf_get_str(m, "general.name"), "tiny");
    gguf_close(m);
    free(copy);
    free(b.p);
}

static void gguf_builder_minimal_file_is_valid(void **state)
{
    (void)state;
    bb b = {0};
    bb_minimal(&b, 3);
    gguf *g = NULL;
    uint8_t *copy;
    char err[256];
    assert_int_equal(open_exact(b.p, b.n, &g, &copy, err), 0);
    const gguf_tensor *t = gguf_find_tensor(g, "w");
    assert_non_null(t);
    assert_int_equal(t->size_bytes, 32);
    assert_int_equal(((const uint8_t *)t->data)[31], 32);
    gguf_close(g);
    free(copy);
    free(b.p);
}

static void gguf_accepts_a_file_without_tensors_or_keys(void **state)
{
    (void)state;
    bb b = {0};
    bb_header(&b, 3, 0, 0);
    gguf *g = NULL;
    uint8_t *copy;
    char err[256];
    assert_int_equal(open_exact(b.p, b.n, &g, &copy, err), 0);
    assert_int_equal(gguf_kv_count(g), 0);
    assert_int_equal(gguf_tensor_count(g), 0);
    gguf_close(g);
    free(copy);
    free(b.p);
}

/* ---- malformed headers -------------------------------------------------- */

static void gguf_rejects_bad_magic(void **state)
{
    (void)state;
    bb b = {0};
    bb_minimal(&b, 3);
    b.p[3] = 'X';
    expect_reject_bb(&b, "not a GGUF file");
    bb_minimal(&b, 3);
    memcpy(b.p, "FUGG", 4); /* byte-swapped magic */
    expect_reject_bb(&b, "magic 46 55 47 47");
}

static void gguf_rejects_unsupported_versions(void **state)
{
    (void)state;
    bb b = {0};
    bb_minimal(&b, 1);
    expect_reject_bb(&b, "unsupported GGUF version 1 ");
    bb_minimal(&b, 4);
    expect_reject_bb(&b, "unsupported GGUF version 4 ");
    bb_minimal(&b, 999);
    expect_reject_bb(&b, "unsupported GGUF version 999 ");
    bb_minimal(&b, 0);
    expect_reject_bb(&b, "unsupported GGUF version 0 ");

    /* A real v1 header: 32-bit counts (1 tensor, 1 key) then the key. */
    bb_bytes(&b, "GGUF", 4);
    bb_u32(&b, 1);
    bb_u32(&b, 1);
    bb_u32(&b, 1);
    bb_u32(&b, 4);
    bb_bytes(&b, "name", 4);
    bb_u32(&b, GGUF_TYPE_UINT32);
    bb_u32(&b, 7);
    expect_reject_bb(&b, "version 1");
}

/* Every prefix of a valid file that cuts into its header, metadata, infos or
 * tensor data must fail cleanly; prefixes that only drop trailing padding
 * still hold the whole file and must open. */
static void gguf_rejects_truncation_at_every_byte(void **state)
{
    (void)state;
    bb b = {0};
    const uint64_t ne_a[2] = {8, 2}, ne_b[1] = {32};
    bb_header(&b, 3, 2, 6);
    bb_kv_u32(&b, "general.alignment", 32);
    bb_kv_str(&b, "general.name", "trunc");
    bb_str(&b, "k.f64");
    bb_u32(&b, GGUF_TYPE_FLOAT64);
    bb_u64(&b, 0x400921fb54442d18ull);
    bb_str(&b, "k.strs");
    bb_u32(&b, GGUF_TYPE_ARRAY);
    bb_u32(&b, GGUF_TYPE_STRING);
    bb_u64(&b, 2);
    bb_str(&b, "ab");
    bb_str(&b, "");
    bb_str(&b, "k.nest");
    bb_u32(&b, GGUF_TYPE_ARRAY);
    bb_u32(&b, GGUF_TYPE_ARRAY);
    bb_u64(&b, 2);
    bb_u32(&b, GGUF_TYPE_UINT16);
    bb_u64(&b, 3);
    bb_fill(&b, 6, 9);
    bb_u32(&b, GGUF_TYPE_STRING);
    bb_u64(&b, 1);
    bb_str(&b, "xyz");
    bb_str(&b, "k.bool");
    bb_u32(&b, GGUF_TYPE_BOOL);
    bb_u8(&b, 1);
    bb_tensor(&b, "a", 2, ne_a, QT_F32, 0);
    bb_tensor(&b, "b", 1, ne_b, QT_Q8_0, 64);
    bb_pad(&b, 32);
    bb_fill(&b, 64, 3);
    bb_fill(&b, 34, 5); /* one Q8_0 block */
    size_t data_end = b.n;
    bb_pad(&b, 32);

    gguf *g = NULL;
    uint8_t *copy;
    char err[256];
    assert_int_equal(open_exact(b.p, b.n, &g, &copy, err), 0);
    assert_int_equal(gguf_tensor_count(g), 2);
    gguf_close(g);
    free(copy);

    static const char *const faults[] = {"truncated", "cannot fit", "does not fit",
                                         "past the end of the file", "padding"};
    for (size_t len = 0; len < data_end; len++) {
        g = (gguf *)&g;
        int rc = open_exact(b.p, len, &g, &copy, err);
        free(copy);
        if (rc == 0) {
            gguf_close(g);
            fail_msg("the first %zu of %zu bytes were accepted", len, data_end);
        }
        assert_int_equal(rc, GGUF_EFORMAT);
        assert_null(g);
        bool named = false;
        for (size_t f = 0; f < sizeof faults / sizeof faults[0]; f++)
            named |= strstr(err, faults[f]) != NULL;
        if (!named)
            fail_msg("prefix %zu: error \"%s\" does not say the file is cut short", len, err);
    }
    for (size_t len = data_end; len <= b.n; len++) {
        assert_int_equal(open_exact(b.p, len, &g, &copy, err), 0);
        gguf_close(g);
        free(copy);
    }

    /* Through a real file too, where the short-file check comes first. */
    const char *path = tmp_path("prefix.gguf");
    for (size_t len = 0; len < data_end; len += 7) {
        spill(path, b.p, len);
        g = NULL;
        err[0] = '\0';
        assert_int_equal(gguf_open(&g, path, err), GGUF_EFORMAT);
        assert_null(g);
        assert_non_null(strstr(err, path));
    }
    free(b.p);
}

static void gguf_rejects_absurd_counts(void **state)
{
    (void)state;
    bb b = {0};
    bb_header(&b, 3, 1ull << 63, 0);
    bb_fill(&b, 64, 0);
    expect_reject_bb(&b, "tensor count 9223372036854775808 cannot fit");

    bb_header(&b, 3, 0, UINT64_MAX);
    bb_fill(&b, 64, 0);
    expect_reject_bb(&b, "metadata count 18446744073709551615 cannot fit");

    bb_header(&b, 3, 0, 1ull << 40);
    bb_fill(&b, 64, 0);
    expect_reject_bb(&b, "metadata count 1099511627776 cannot fit");

    /* A key length past the end of the file. */
    bb_header(&b, 3, 0, 1);
    bb_u64(&b, 1ull << 63);
    bb_fill(&b, 16, 'a');
    expect_reject_bb(&b, "needs 9223372036854775808 bytes");

    /* A string value length past the end, including one that wraps if added. */
    bb_header(&b, 3, 0, 1);
    bb_str(&b, "k");
    bb_u32(&b, GGUF_TYPE_STRING);
    bb_u64(&b, UINT64_MAX);
    bb_fill(&b, 16, 'a');
    expect_reject_bb(&b, "string value of key 'k'");

    /* Array lengths past the end, for scalars, strings and nested arrays. */
    const uint32_t elems[] = {GGUF_TYPE_UINT32, GGUF_TYPE_UINT8, GGUF_TYPE_STRING,
                              GGUF_TYPE_ARRAY, GGUF_TYPE_FLOAT64};
    const uint64_t lens[] = {1ull << 62, UINT64_MAX, 1ull << 61, 1ull << 60, 1ull << 61};
    for (size_t i = 0; i < sizeof elems / sizeof elems[0]; i++) {
        bb_header(&b, 3, 0, 1);
        bb_str(&b, "k.arr");
        bb_u32(&b, GGUF_TYPE_ARRAY);
        bb_u32(&b, elems[i]);
        bb_u64(&b, lens[i]);
        bb_fill(&b, 48, 0);
        expect_reject_bb(&b, "does not fit");
    }

    /* A tensor name length past the end. */
    bb_header(&b, 3, 1, 0);
    bb_u64(&b, UINT64_MAX - 3);
    bb_fill(&b, 40, 'n');
    expect_reject_bb(&b, "the name of tensor 0");
}

static void gguf_rejects_unknown_metadata_types(void **state)
{
    (void)state;
    bb b = {0};
    bb_header(&b, 3, 0, 1);
    bb_str(&b, "k.odd");
    bb_u32(&b, GGUF_TYPE_COUNT);
    bb_fill(&b, 16, 0);
    expect_reject_bb(&b, "key 'k.odd': unknown value type 13");

    bb_header(&b, 3, 0, 1);
    bb_str(&b, "k.odd");
    bb_u32(&b, UINT32_MAX);
    bb_fill(&b, 16, 0);
    expect_reject_bb(&b, "unknown value type 4294967295");

    bb_header(&b, 3, 0, 1);
    bb_str(&b, "k.arr");
    bb_u32(&b, GGUF_TYPE_ARRAY);
    bb_u32(&b, 77);
    bb_u64(&b, 1);
    bb_fill(&b, 16, 0);
    expect_reject_bb(&b, "unknown array element type 77");
}

static void gguf_rejects_arrays_nested_too_deep(void **state)
{
    (void)state;
    bb b = {0};
    bb_header(&b, 3, 0, 1);
    bb_str(&b, "k.deep");
    bb_u32(&b, GGUF_TYPE_ARRAY);
    for (int i = 0; i < 64; i++) {
        bb_u32(&b, GGUF_TYPE_ARRAY);
        bb_u64(&b, 1);
    }
    bb_u32(&b, GGUF_TYPE_UINT8);
    bb_u64(&b, 0);
    expect_reject_bb(&b, "nested deeper");
}

static void gguf_rejects_empty_or_nul_names(void **state)
{
    (void)state;
    bb b = {0};
    bb_header(&b, 3, 0, 1);
    bb_str(&b, "");
    bb_u32(&b, GGUF_TYPE_UINT8);
    bb_u8(&b, 1);
    expect_reject_bb(&b, "key 0 is empty or contains a NUL");

    bb_header(&b, 3, 0, 1);
    bb_u64(&b, 3);
    bb_bytes(&b, "a\0b", 3);
    bb_u32(&b, GGUF_TYPE_UINT8);
    bb_u8(&b, 1);
    expect_reject_bb(&b, "key 0 is empty or contains a NUL");

    const uint64_t ne[1] = {8};
    bb_header(&b, 3, 1, 0);
    bb_tensor(&b, "", 1, ne, QT_F32, 0);
    bb_pad(&b, 32);
    bb_fill(&b, 32, 0);
    expect_reject_bb(&b, "tensor 0: name is empty");
}

static void gguf_rejects_duplicate_keys(void **state)
{
    (void)state;
    bb b = {0};
    bb_header(&b, 3, 0, 3);
    bb_kv_u32(&b, "a.b", 1);
    bb_kv_str(&b, "a.c", "x");
    bb_kv_str(&b, "a.b", "y"); /* same key, another type */
    expect_reject_bb(&b, "key 'a.b' appears twice");
}

/* ---- malformed tensor infos -------------------------------------------- */

/* A file with one tensor info as given and enough zero bytes of data. */
static void bb_one_tensor(bb *b, uint32_t n_dims, const uint64_t *ne, uint32_t type,
                          uint64_t offset, size_t data_bytes)
{
    bb_header(b, 3, 1, 0);
    bb_tensor(b, "t", n_dims, ne, type, offset);
    bb_pad(b, 32);
    bb_fill(b, data_bytes, 0);
}

static void gguf_rejects_unknown_tensor_types(void **state)
{
    (void)state;
    const uint64_t ne[1] = {32};
    const uint32_t types[] = {99, 4, 5, QT_TYPE_COUNT, UINT32_MAX};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        bb b = {0};
        bb_one_tensor(&b, 1, ne, types[i], 0, 256);
        char needle[64];
        snprintf(needle, sizeof needle, "unknown tensor type %u", types[i]);
        expect_reject_bb(&b, needle);
    }
}

static void gguf_rejects_bad_n_dims(void **state)
{
    (void)state;
    const uint64_t ne[8] = {8, 1, 1, 1, 1, 1, 1, 1};
    bb b = {0};
    bb_one_tensor(&b, 0, ne, QT_F32, 0, 64);
    expect_reject_bb(&b, "n_dims 0 is outside 1..4");
    bb_one_tensor(&b, 5, ne, QT_F32, 0, 64);
    expect_reject_bb(&b, "n_dims 5 is outside 1..4");
    bb_one_tensor(&b, UINT32_MAX, ne, QT_F32, 0, 64);
    expect_reject_bb(&b, "n_dims 4294967295 is outside");
}

static void gguf_rejects_bad_dimensions(void **state)
{
    (void)state;
    bb b = {0};
    const uint64_t zero[2] = {8, 0};
    bb_one_tensor(&b, 2, zero, QT_F32, 0, 64);
    expect_reject_bb(&b, "dimension 1 is 0");

    const uint64_t neg[1] = {(uint64_t)-4};
    bb_one_tensor(&b, 1, neg, QT_F32, 0, 64);
    expect_reject_bb(&b, "dimension 0 is 18446744073709551612");

    /* Each extent fits, the product does not. */
    const uint64_t wide[3] = {1ull << 32, 1ull << 20, 1ull << 12};
    bb_one_tensor(&b, 3, wide, QT_F32, 0, 64);
    expect_reject_bb(&b, "dimension 2 is 4096");

    /* The element count fits in 63 bits; its size in bytes does not fit 64. */
    const uint64_t big[2] = {1ull << 31, 1ull << 31};
    bb_one_tensor(&b, 2, big, QT_F32, 0, 64);
    expect_reject_bb(&b, "size overflows");

    /* A plausible size, but far more than the file holds. */
    const uint64_t large[2] = {4096, 4096};
    bb_one_tensor(&b, 2, large, QT_F32, 0, 64);
    expect_reject_bb(&b, "past the end of the file");
}

static void gguf_rejects_rows_that_split_a_block(void **state)
{
    (void)state;
    bb b = {0};
    const uint64_t q4[2] = {33, 2};
    bb_one_tensor(&b, 2, q4, QT_Q4_0, 0, 256);
    expect_reject_bb(&b, "row length 33 is not a multiple of the q4_0 block size 32");

    const uint64_t k[1] = {128};
    bb_one_tensor(&b, 1, k, QT_Q4_K, 0, 256);
    expect_reject_bb(&b, "row length 128 is not a multiple");
}

static void gguf_rejects_tensor_past_eof(void **state)
{
    (void)state;
    bb b = {0};
    const uint64_t ne[1] = {8};
    bb_one_tensor(&b, 1, ne, QT_F32, 0, 31); /* one byte short */
    expect_reject_bb(&b, "tensor 't': data ends past the end of the file");

    bb_one_tensor(&b, 1, ne, QT_F32, 1ull << 40, 64);
    expect_reject_bb(&b, "data ends past the end of the file");

    /* offset + size wraps around 2^64 */
    bb_one_tensor(&b, 1, ne, QT_F32, UINT64_MAX - 31, 64);
    expect_reject_bb(&b, "past the end of the file");
}

static void gguf_rejects_overlapping_tensors(void **state)
{
    (void)state;
    bb b = {0};
    const uint64_t ne16[1] = {16}, ne8[1] = {8};
    bb_header(&b, 3, 2, 0);
    bb_tensor(&b, "first", 1, ne16, QT_F32, 0); /* 64 bytes */
    bb_tensor(&b, "second", 1, ne8, QT_F32, 32);
    bb_pad(&b, 32);
    bb_fill(&b, 128, 0);
    expect_reject_bb(&b, "'first' and 'second' overlap");

    /* Declared out of order and sharing an offset. */
    bb_header(&b, 3, 3, 0);
    bb_tensor(&b, "c", 1, ne8, QT_F32, 64);
    bb_tensor(&b, "a", 1, ne8, QT_F32, 0);
    bb_tensor(&b, "b", 1, ne8, QT_F32, 64);
    bb_pad(&b, 32);
    bb_fill(&b, 128, 0);
    expect_reject_bb(&b, "overlap");
}

static void gguf_rejects_misaligned_tensor_offset(void **state)
{
    (void)state;
    bb b = {0};
    const uint64_t ne[1] = {8};
    bb_one_tensor(&b, 1, ne, QT_F32, 16, 64);
    expect_reject_bb(&b, "offset 16 is not a multiple of the alignment 32");

    /* Aligned to the default, not to the file's own alignment. */
    bb_header(&b, 3, 1, 1);
    bb_kv_u32(&b, "general.alignment", 64);
    bb_tensor(&b, "t", 1, ne, QT_F32, 32);
    bb_pad(&b, 64);
    bb_fill(&b, 128, 0);
    expect_reject_bb(&b, "offset 32 is not a multiple of the alignment 64");
}

static void gguf_rejects_bad_alignment_values(void **state)
{
    (void)state;
    bb b = {0};
    const uint32_t bad[] = {0, 3, 48, 0x80000001u};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        bb_header(&b, 3, 0, 1);
        bb_kv_u32(&b, "general.alignment", bad[i]);
        char needle[64];
        snprintf(needle, sizeof needle, "general.alignment %u is not a power of two", bad[i]);
        expect_reject_bb(&b, needle);
    }

    bb_header(&b, 3, 0, 1);
    bb_str(&b, "general.alignment");
    bb_u32(&b, GGUF_TYPE_UINT64);
    bb_u64(&b, 32);
    expect_reject_bb(&b, "general.alignment has type uint64, expected uint32");

    bb_header(&b, 3, 0, 1);
    bb_kv_str(&b, "general.alignment", "32");
    expect_reject_bb(&b, "general.alignment has type string, expected uint32");

    bb_header(&b, 3, 0, 1);
    bb_str(&b, "general.alignment");
    bb_u32(&b, GGUF_TYPE_INT32);
    bb_u32(&b, 32);
    expect_reject_bb(&b, "has type int32");

    /* The writer refuses the same values up front. */
    gguf_writer *w = gguf_writer_new();
    assert_non_null(w);
    assert_int_equal(gguf_writer_set_u32(w, "general.alignment", 0), GGUF_EUSAGE);
    assert_int_equal(gguf_writer_set_u32(w, "general.alignment", 48), GGUF_EUSAGE);
    assert_int_equal(gguf_writer_set_i32(w, "general.alignment", 32), GGUF_EUSAGE);
    assert_int_equal(gguf_writer_set_u32(w, "general.alignment", 64), GGUF_OK);
    gguf_writer_free(w);
}

static void gguf_rejects_duplicate_tensor_names(void **state)
{
    (void)state;
    bb b = {0};
    const uint64_t ne[1] = {8};
    bb_header(&b, 3, 2, 0);
    bb_tensor(&b, "blk.0.w", 1, ne, QT_F32, 0);
    bb_tensor(&b, "blk.0.w", 1, ne, QT_F32, 32);
    bb_pad(&b, 32);
    bb_fill(&b, 64, 0);
    expect_reject_bb(&b, "tensor 'blk.0.w' appears twice");
}

/* A failure deep inside nested arrays must free what was already read
 * (LeakSanitizer checks this under -Db_sanitize=address). */
static void gguf_frees_partial_nested_arrays_on_error(void **state)
{
    (void)state;
    bb b = {0};
    bb_header(&b, 3, 0, 1);
    bb_str(&b, "k.nest");
    bb_u32(&b, GGUF_TYPE_ARRAY);
    bb_u32(&b, GGUF_TYPE_ARRAY);
    bb_u64(&b, 2);
    bb_u32(&b, GGUF_TYPE_STRING); /* first inner array: complete */
    bb_u64(&b, 1);
    bb_str(&b, "ok");
    bb_u32(&b, GGUF_TYPE_STRING); /* second: two strings, the second cut off */
    bb_u64(&b, 2);
    bb_str(&b, "kept");
    bb_u64(&b, 100);
    bb_fill(&b, 10, 'z');
    expect_reject_bb(&b, "truncated");

    bb_header(&b, 3, 0, 1);
    bb_str(&b, "k.nest2");
    bb_u32(&b, GGUF_TYPE_ARRAY);
    bb_u32(&b, GGUF_TYPE_ARRAY);
    bb_u64(&b, 1);
    bb_u32(&b, GGUF_TYPE_ARRAY); /* inner array of arrays whose 2nd is bad */
    bb_u64(&b, 2);
    bb_u32(&b, GGUF_TYPE_UINT8);
    bb_u64(&b, 1);
    bb_u8(&b, 5);
    bb_u32(&b, 200);
    bb_u64(&b, 0);
    bb_fill(&b, 16, 0);
    expect_reject_bb(&b, "unknown array element type 200");
}

static void gguf_open_reports_missing_and_tiny_files(void **state)
{
    (void)state;
    gguf *g = (gguf *)&g;
    char err[256] = "";
    const char *missing = tmp_path("does-not-exist.gguf");
    assert_int_equal(gguf_open(&g, missing, err), GGUF_EIO);
    assert_null(g);
    assert_non_null(strstr(err, missing));
    assert_non_null(strstr(err, strerror(ENOENT)));

    const char *empty = tmp_path("empty.gguf");
    spill(empty, "", 0);
    g = (gguf *)&g;
    assert_int_equal(gguf_open(&g, empty, err), GGUF_EFORMAT);
    assert_null(g);
    assert_non_null(strstr(err, "too small"));

    g = (gguf *)&g;
    assert_int_equal(gguf_open(&g, tmp_dir, err), GGUF_EIO);
    assert_null(g);
}

static void gguf_writer_refuses_contract_breaks(void **state)
{
    (void)state;
    char err[256] = "";
    gguf_writer *w = gguf_writer_new();
    assert_non_null(w);
    const int64_t ne[2] = {33, 2}, ok[1] = {32};
    assert_true(gguf_writer_add_tensor(w, "odd", 2, ne, QT_Q4_0, err) < 0);
    assert_non_null(strstr(err, "odd"));
    assert_true(gguf_writer_add_tensor(w, "zero", 0, ok, QT_F32, err) < 0);
    assert_int_equal(gguf_writer_add_tensor(w, "t", 1, ok, QT_F32, err), 0);
    assert_true(gguf_writer_add_tensor(w, "t", 1, ok, QT_F32, err) < 0);
    assert_non_null(strstr(err, "twice"));
    const char *path = tmp_path("small.gguf");
    assert_int_equal(gguf_writer_begin(w, path, err), 0);
    float data[32] = {0};
    assert_int_equal(gguf_writer_write_tensor(w, data, 64, err), GGUF_EUSAGE);
    assert_int_equal(gguf_writer_finish(w, err), GGUF_EUSAGE);
    assert_non_null(strstr(err, "0 of 1"));
    assert_int_equal(gguf_writer_write_tensor(w, data, sizeof data, err), 0);
    assert_int_equal(gguf_writer_write_tensor(w, data, sizeof data, err), GGUF_EUSAGE);
    assert_int_equal(gguf_writer_finish(w, err), 0);
    gguf_writer_free(w);
    gguf *g = open_ok(path);
    assert_int_equal(gguf_tensor_count(g), 1);
    gguf_close(g);
}

/* Real files from llama.cpp's converters: a model and tokenizer vocabularies. */
static void gguf_opens_the_shared_model_and_vocabularies(void **state)
{
    (void)state;
    char path[512];
    snprintf(path, sizeof path, "%s/models/stories260K.gguf", OUTPOST_SHARED);
    if (access(path, R_OK) != 0)
        skip();
    gguf *g = open_ok(path);
    assert_int_equal(gguf_version(g), 3);
    assert_int_equal(gguf_kv_count(g), 19);
    assert_int_equal(gguf_tensor_count(g), 48);
    assert_string_equal(gguf_get_str(g, "general.architecture"), "llama");
    uint32_t u32;
    assert_int_equal(gguf_get_u32(g, "llama.embedding_length", &u32), 0);
    assert_int_equal(u32, 64);
    assert_int_equal(gguf_get_u32(g, "llama.block_count", &u32), 0);
    assert_int_equal(u32, 5);
    float eps;
    assert_int_equal(gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &eps), 0);
    assert_true(eps > 9e-6f && eps < 1.1e-5f);
    uint64_t n = 0;
    const gguf_str *tokens = gguf_get_arr(g, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &n);
    assert_non_null(tokens);
    assert_int_equal(n, 512);
    assert_string_equal(tokens[1].ptr, "<s>");
    const gguf_tensor *emb = gguf_find_tensor(g, "token_embd.weight");
    assert_non_null(emb);
    assert_int_equal(emb->type, QT_F32);
    assert_int_equal(emb->ne[0], 64);
    assert_int_equal(emb->ne[1], 512);
    assert_int_equal(emb->size_bytes, 64 * 512 * 4);
    uint64_t end = 0;
    for (size_t i = 0; i < gguf_tensor_count(g); i++) {
        const gguf_tensor *t = gguf_tensor_at(g, i);
        if (t->offset + t->size_bytes > end)
            end = t->offset + t->size_bytes;
    }
    assert_true(gguf_data_offset(g) + end <= gguf_file_size(g));
    gguf_close(g);

    static const char *const vocabs[] = {"llama-spm", "gpt-2", "falcon", "deepseek-coder"};
    for (size_t i = 0; i < sizeof vocabs / sizeof vocabs[0]; i++) {
        snprintf(path, sizeof path, "%s/tokenizer/ggml-vocab-%s.gguf", OUTPOST_SHARED, vocabs[i]);
        g = open_ok(path);
        assert_non_null(gguf_get_str(g, "tokenizer.ggml.model"));
        assert_non_null(gguf_get_arr(g, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &n));
        assert_true(n > 1000);
        gguf_close(g);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(gguf_roundtrips_every_metadata_type_and_tensor),
        cmocka_unit_test(gguf_honours_a_custom_alignment),
        cmocka_unit_test(gguf_copy_kv_rewrites_the_same_metadata),
        cmocka_unit_test(gguf_reads_version_2),
        cmocka_unit_test(gguf_builder_minimal_file_is_valid),
        cmocka_unit_test(gguf_accepts_a_file_without_tensors_or_keys),
        cmocka_unit_test(gguf_rejects_bad_magic),
        cmocka_unit_test(gguf_rejects_unsupported_versions),
        cmocka_unit_test(gguf_rejects_truncation_at_every_byte),
        cmocka_unit_test(gguf_rejects_absurd_counts),
        cmocka_unit_test(gguf_rejects_unknown_metadata_types),
        cmocka_unit_test(gguf_rejects_arrays_nested_too_deep),
        cmocka_unit_test(gguf_rejects_empty_or_nul_names),
        cmocka_unit_test(gguf_rejects_duplicate_keys),
        cmocka_unit_test(gguf_rejects_unknown_tensor_types),
        cmocka_unit_test(gguf_rejects_bad_n_dims),
        cmocka_unit_test(gguf_rejects_bad_dimensions),
        cmocka_unit_test(gguf_rejects_rows_that_split_a_block),
        cmocka_unit_test(gguf_rejects_tensor_past_eof),
        cmocka_unit_test(gguf_rejects_overlapping_tensors),
        cmocka_unit_test(gguf_rejects_misaligned_tensor_offset),
        cmocka_unit_test(gguf_rejects_bad_alignment_values),
        cmocka_unit_test(gguf_rejects_duplicate_tensor_names),
        cmocka_unit_test(gguf_frees_partial_nested_arrays_on_error),
        cmocka_unit_test(gguf_open_reports_missing_and_tiny_files),
        cmocka_unit_test(gguf_writer_refuses_contract_breaks),
        cmocka_unit_test(gguf_opens_the_shared_model_and_vocabularies),
    };
    return cmocka_run_group_tests(tests, make_tmp_dir, remove_tmp_dir);
}
