/*
 * gguf.h - read and write GGUF model files (versions 2 and 3).
 *
 * A reader maps the whole file read-only, parses the header, every metadata
 * value and every tensor info, and checks each count, offset and size
 * against the file size before anything else may look at it. After
 * gguf_open() succeeds every pointer handed out (keys, strings, arrays,
 * tensor data) stays valid until gguf_close(); the caller never frees them.
 *
 * A writer is streaming: the caller declares every metadata value and every
 * tensor (name, shape, type) first, then gguf_writer_begin() writes the
 * header and the caller hands over each tensor's bytes in declaration order.
 * The file is written under a temporary name and renamed into place by
 * gguf_writer_finish(), so a reader never sees a half-written model.
 */
#ifndef OUTPOST_GGUF_H
#define OUTPOST_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GGUF_MAX_DIMS 4
#define GGUF_DEFAULT_ALIGNMENT 32

/* Result codes: 0 is success, negative values name the kind of failure. */
enum {
    GGUF_OK = 0,
    GGUF_EIO = -1,       /* open/read/write/mmap failed */
    GGUF_EFORMAT = -2,   /* the bytes are not a valid GGUF file */
    GGUF_ENOMEM = -3,
    GGUF_ENOTFOUND = -4, /* key or tensor absent */
    GGUF_ETYPE = -5,     /* present, but of another type */
    GGUF_EUSAGE = -6,    /* the caller broke the API contract */
};

/* Metadata value types, numbered as in the GGUF specification. */
typedef enum gguf_type {
    GGUF_TYPE_UINT8 = 0,
    GGUF_TYPE_INT8 = 1,
    GGUF_TYPE_UINT16 = 2,
    GGUF_TYPE_INT16 = 3,
    GGUF_TYPE_UINT32 = 4,
    GGUF_TYPE_INT32 = 5,
    GGUF_TYPE_FLOAT32 = 6,
    GGUF_TYPE_BOOL = 7,
    GGUF_TYPE_STRING = 8,
    GGUF_TYPE_ARRAY = 9,
    GGUF_TYPE_UINT64 = 10,
    GGUF_TYPE_INT64 = 11,
    GGUF_TYPE_FLOAT64 = 12,
    GGUF_TYPE_COUNT
} gguf_type;

const char *gguf_type_name(gguf_type t);

/* A string: NUL-terminated copy owned by the gguf handle; len excludes the NUL
 * (the string may itself contain NUL bytes, so use len). */
typedef struct gguf_str {
    const char *ptr;
    uint64_t len;
} gguf_str;

/* One metadata value. Arrays of scalars are stored as packed, naturally aligned
 * C arrays of the element type (uint8_t, int32_t, float, double, bool, ...);
 * arrays of strings as gguf_str[]; arrays of arrays as gguf_value[]. */
typedef struct gguf_value {
    gguf_type type;
    union {
        uint64_t u64; /* UINT8/16/32/64 */
        int64_t i64;  /* INT8/16/32/64 */
        double f64;   /* FLOAT32/64 */
        bool b;
        gguf_str str;
        struct {
            gguf_type elem;
            uint64_t n;
            const void *data;
        } arr;
    } v;
} gguf_value;

typedef struct gguf_tensor {
    const char *name;
    uint32_t n_dims;
    int64_t ne[GGUF_MAX_DIMS]; /* ne[0] is the row length; unused dims are 1 */
    uint32_t type;             /* a qt_type (ggml type id) */
    uint64_t offset;           /* from the start of the data section */
    uint64_t size_bytes;
    const void *data;          /* into the mapping (reader) */
} gguf_tensor;

typedef struct gguf gguf;

/* Open and validate a file; on failure *out is NULL and err holds one line. */
int gguf_open(gguf **out, const char *path, char err[256]);
/* The same over a caller-owned buffer that must outlive the handle (fuzzing). */
int gguf_open_buffer(gguf **out, const void *data, size_t size, const char *name,
                     char err[256]);
void gguf_close(gguf *g);

const char *gguf_path(const gguf *g);
uint32_t gguf_version(const gguf *g);
uint32_t gguf_alignment(const gguf *g);
uint64_t gguf_file_size(const gguf *g);
uint64_t gguf_data_offset(const gguf *g);
/* Whether tensor data lies in a private read-only mapping of the file (so
 * its pages may be dropped and read again), not in a caller's buffer. */
bool gguf_is_mapped(const gguf *g);

size_t gguf_kv_count(const gguf *g);
const char *gguf_kv_key(const gguf *g, size_t i);
const gguf_value *gguf_kv_value(const gguf *g, size_t i);
const gguf_value *gguf_get(const gguf *g, const char *key); /* NULL if absent */

/* Typed getters: 0, GGUF_ENOTFOUND or GGUF_ETYPE. Integer getters accept any
 * integer type whose value fits; float getters accept floats and integers. */
int gguf_get_u64(const gguf *g, const char *key, uint64_t *out);
int gguf_get_u32(const gguf *g, const char *key, uint32_t *out);
int gguf_get_i32(const gguf *g, const char *key, int32_t *out);
int gguf_get_f32(const gguf *g, const char *key, float *out);
int gguf_get_bool(const gguf *g, const char *key, bool *out);
/* NULL if absent or not a string. */
const char *gguf_get_str(const gguf *g, const char *key);
/* The array under key if its elements have type elem (n in *n), else NULL. */
const void *gguf_get_arr(const gguf *g, const char *key, gguf_type elem, uint64_t *n);

size_t gguf_tensor_count(const gguf *g);
const gguf_tensor *gguf_tensor_at(const gguf *g, size_t i);
const gguf_tensor *gguf_find_tensor(const gguf *g, const char *name);

/* Writing. */
typedef struct gguf_writer gguf_writer;

gguf_writer *gguf_writer_new(void);
void gguf_writer_free(gguf_writer *w); /* also removes an unfinished temp file */

/* Metadata setters copy their arguments; setting a key twice replaces it. */
int gguf_writer_set(gguf_writer *w, const char *key, const gguf_value *v);
int gguf_writer_set_u32(gguf_writer *w, const char *key, uint32_t v);
int gguf_writer_set_i32(gguf_writer *w, const char *key, int32_t v);
int gguf_writer_set_f32(gguf_writer *w, const char *key, float v);
int gguf_writer_set_bool(gguf_writer *w, const char *key, bool v);
int gguf_writer_set_str(gguf_writer *w, const char *key, const char *s);
int gguf_writer_set_arr(gguf_writer *w, const char *key, gguf_type elem, uint64_t n,
                        const void *data);
/* Copy every key of src whose name starts with prefix ("" copies all). */
int gguf_writer_copy_kv(gguf_writer *w, const gguf *src, const char *prefix);

/* Declare a tensor; ne has n_dims entries. Returns its index. */
int gguf_writer_add_tensor(gguf_writer *w, const char *name, uint32_t n_dims,
                           const int64_t *ne, uint32_t type, char err[256]);

int gguf_writer_begin(gguf_writer *w, const char *path, char err[256]);
/* Tensor bytes, in declaration order; size must equal the tensor's size. */
int gguf_writer_write_tensor(gguf_writer *w, const void *data, uint64_t size,
                             char err[256]);
int gguf_writer_finish(gguf_writer *w, char err[256]);

#endif
