/*
 * kv_state.c - saving a context's KV cache to a file and restoring it.
 *
 * A saved state lets a conversation skip the prefill of everything it said
 * before, across a switch to another conversation or a restart. The file is
 * only worth its bytes if it is exactly what evaluating its tokens would put
 * in the cache, so it carries an identity of everything the rows depend on
 * (architecture, hyper-parameters, each tensor's name, type, shape and a
 * sample of its bytes, the context's RoPE settings) and a checksum of the
 * whole file; anything that does not match is refused and the caller
 * prefills as if there were no file.
 *
 * Layout (integers little-endian; rows as the cache holds them, so the file
 * is for machines of the same byte order, which the magic tells apart):
 *   0  magic "OPKVSTAT"        36 row_bytes (u32)
 *   8  version (u32) = 2       40 n_tokens (u32)
 *  12  header bytes (u32) = 64 44 reserved (u32) = 0
 *  16  identity (u64)          48 checksum (u64) of the file with this field 0
 *  24  kv type (u32, qt_type)  56 reserved (u64) = 0
 *  28  n_layer (u32)
 *  32  kv_dim (u32)
 *  64  n_tokens token ids (i32), then per layer and KV head the K slices
 *      of positions 0 .. n-1, then the V slices (each row_bytes / number of
 *      KV heads; the number of heads follows from the identity). Version 1
 *      held whole position rows instead, as the cache did then; it is
 *      refused like any other mismatch, and the caller prefills.
 * The size is therefore fixed by the header, and a file of any other size
 * is truncated or has been appended to.
 *
 * Writes go to a temporary file in the same directory, are fsynced and then
 * renamed over the target, so a reader sees the old state or the new one,
 * never a mix; a crash leaves at worst a stray temporary file.
 */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model_impl.h"

#define HDR_BYTES 64
static const char kv_magic[8] = {'O', 'P', 'K', 'V', 'S', 'T', 'A', 'T'};

typedef struct kv_hdr {
    uint32_t version, header_bytes;
    uint64_t identity;
    uint32_t kv_type, n_layer, kv_dim, row_bytes, n_tokens, reserved32;
    uint64_t checksum, reserved64;
} kv_hdr;

/* ---- hashing ------------------------------------------------------------- */

/* A 64-bit hash for detecting damage, not attacks: four independent lanes
 * of multiply-rotate over 8-byte words (so it runs at memory speed), folded
 * with a bijective finaliser. A change confined to one word always changes
 * the result. Constants are odd 64-bit numbers with well-mixed bits. */
#define H_P1 0x9E3779B97F4A7C15ull
#define H_P2 0xC2B2AE3D27D4EB4Full
#define H_P3 0x165667B19E3779F9ull

static uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static uint64_t fold64(uint64_t x)
{
    x ^= x >> 31;
    x *= H_P2;
    x ^= x >> 29;
    x *= H_P3;
    x ^= x >> 32;
    return x;
}

static uint64_t load64(const uint8_t *p)
{
    uint64_t w;
    memcpy(&w, p, 8);
    return w;
}

static uint64_t hash_bytes(uint64_t seed, const void *data, size_t n)
{
    const uint8_t *p = data;
    uint64_t h[4] = {seed + H_P1, seed ^ H_P2, seed - H_P3, ~seed};
    size_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int l = 0; l < 4; l++)
            h[l] = rotl64(h[l] ^ (load64(p + i + 8 * (size_t)l) * H_P1), 31) * H_P2;
    for (; i + 8 <= n; i += 8)
        h[0] = rotl64(h[0] ^ (load64(p + i) * H_P1), 31) * H_P2;
    if (i < n) {
        uint8_t tail[8] = {0};
        memcpy(tail, p + i, n - i);
        h[1] = rotl64(h[1] ^ (load64(tail) * H_P1), 31) * H_P2;
    }
    uint64_t r = fold64(seed ^ (uint64_t)n);
    for (int l = 0; l < 4; l++)
        r = fold64(r ^ h[l]);
    return r;
}

static uint64_t hash_u64(uint64_t h, uint64_t v) { return hash_bytes(h, &v, sizeof v); }
static uint64_t hash_f32(uint64_t h, float v)
{
    uint32_t b;
    memcpy(&b, &v, sizeof b);
    return hash_u64(h, b);
}
static uint64_t hash_str(uint64_t h, const char *s) { return hash_bytes(h, s, strlen(s) + 1); }

/* Everything the cache rows of c depend on besides the tokens. Tensor data
 * is sampled (64 bytes at the start, middle and end of each tensor), not
 * read whole: enough to tell a retrained or re-quantized model of the same
 * shape apart without touching gigabytes. */
static uint64_t ctx_identity(const eng_ctx *c)
{
    const eng_model *m = c->m;
    const eng_hparams *hp = &m->hp;
    uint64_t h = hash_str(0x6F75747073747376ull, hp->arch_name);
    const int32_t ints[] = {hp->arch, hp->n_vocab, hp->n_embd, hp->n_layer, hp->n_head,
                            hp->n_head_kv, hp->head_dim, hp->n_ff, hp->n_rot, hp->n_ctx_orig,
                            hp->rope_neox, hp->swa_window, hp->swa_pattern, hp->ffn_act,
                            hp->tied_output};
    h = hash_bytes(h, ints, sizeof ints);
    const float floats[] = {hp->rope_freq_base, hp->rope_freq_scale, hp->rope_attn_factor,
                            hp->norm_eps, hp->attn_scale, hp->attn_softcap,
                            hp->final_softcap, hp->embd_scale};
    for (size_t i = 0; i < sizeof floats / sizeof floats[0]; i++)
        h = hash_f32(h, floats[i]);
    /* The context's RoPE: LongRoPE picks its factors by the context size. */
    const ops_rope_cfg *rc = &c->rope;
    h = hash_u64(h, (uint64_t)(uint32_t)rc->head_dim << 32 | (uint32_t)rc->n_rot);
    h = hash_u64(h, rc->neox);
    h = hash_f32(h, rc->freq_base);
    h = hash_f32(h, rc->freq_scale);
    h = hash_f32(h, rc->mscale);
    if (rc->freq_factors)
        h = hash_bytes(h, rc->freq_factors, (size_t)(rc->n_rot / 2) * sizeof(float));
    size_t n = gguf_tensor_count(m->g);
    for (size_t i = 0; i < n; i++) {
        const gguf_tensor *t = gguf_tensor_at(m->g, i);
        h = hash_str(h, t->name);
        h = hash_u64(h, (uint64_t)t->type << 32 | t->n_dims);
        h = hash_bytes(h, t->ne, sizeof t->ne);
        h = hash_u64(h, t->size_bytes);
        const uint8_t *d = t->data;
        uint64_t len = t->size_bytes < 64 ? t->size_bytes : 64;
        if (d && len) {
            h = hash_bytes(h, d, (size_t)len);
            h = hash_bytes(h, d + (t->size_bytes - len) / 2, (size_t)len);
            h = hash_bytes(h, d + t->size_bytes - len, (size_t)len);
        }
    }
    return h;
}

/* ---- header ---------------------------------------------------------------- */

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)p[i] << (8 * i);
    return v;
}
static uint64_t get64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static void hdr_encode(const kv_hdr *h, uint8_t b[HDR_BYTES])
{
    memcpy(b, kv_magic, 8);
    put32(b + 8, h->version);
    put32(b + 12, h->header_bytes);
    put64(b + 16, h->identity);
    put32(b + 24, h->kv_type);
    put32(b + 28, h->n_layer);
    put32(b + 32, h->kv_dim);
    put32(b + 36, h->row_bytes);
    put32(b + 40, h->n_tokens);
    put32(b + 44, h->reserved32);
    put64(b + 48, h->checksum);
    put64(b + 56, h->reserved64);
}

static void hdr_decode(const uint8_t b[HDR_BYTES], kv_hdr *h)
{
    h->version = get32(b + 8);
    h->header_bytes = get32(b + 12);
    h->identity = get64(b + 16);
    h->kv_type = get32(b + 24);
    h->n_layer = get32(b + 28);
    h->kv_dim = get32(b + 32);
    h->row_bytes = get32(b + 36);
    h->n_tokens = get32(b + 40);
    h->reserved32 = get32(b + 44);
    h->checksum = get64(b + 48);
    h->reserved64 = get64(b + 56);
}

uint64_t eng_kv_file_bytes(const eng_ctx *c, int32_t n_tokens)
{
    uint64_t n = n_tokens > 0 ? (uint64_t)n_tokens : 0;
    return HDR_BYTES + 4 * n + 2 * (uint64_t)c->kv.n_layer * n * (uint64_t)c->kv.row_bytes;
}

/* ---- I/O ------------------------------------------------------------------- */

static int write_full(int fd, const void *buf, size_t n)
{
    const uint8_t *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* 0: all n bytes read; -1: error (errno); 1: the file ended first. */
static int read_full(int fd, void *buf, size_t n)
{
    uint8_t *p = buf;
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (r == 0)
            return 1;
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* read_full for one part of a saved state; ENG_EIO with the line
 * "<path>: reading <what>: <why>" when it cannot be read whole. */
static int read_part(int fd, void *buf, size_t n, const char *path, const char *what,
                     char err[256])
{
    int r = read_full(fd, buf, n);
    if (r)
        snprintf(err, 256, "%s: reading %s: %s", path, what,
                 r < 0 ? strerror(errno) : "the file ended early");
    return r ? ENG_EIO : ENG_OK;
}

/* The sections after the header, in file order: tokens, then K and V of
 * each KV head of each layer (each contiguous in the cache). i = 0 is the
 * tokens. */
static size_t n_sections(const eng_ctx *c)
{
    return 1 + 2 * (size_t)c->kv.n_layer * (size_t)c->kv.n_head_kv;
}

static uint8_t *section(const eng_ctx *c, size_t i, const int32_t *tokens, size_t *len,
                        int32_t n_tokens)
{
    if (i == 0) {
        *len = (size_t)n_tokens * sizeof(int32_t);
        return (uint8_t *)(uintptr_t)tokens;
    }
    const size_t per_layer = 2 * (size_t)c->kv.n_head_kv;
    const int32_t layer = (int32_t)((i - 1) / per_layer);
    const size_t k = (i - 1) % per_layer; /* K of every head, then V */
    const int32_t head = (int32_t)(k % (size_t)c->kv.n_head_kv);
    *len = (size_t)n_tokens * c->kv.head_bytes;
    return k < (size_t)c->kv.n_head_kv ? kv_k_head(&c->kv, layer, head, 0) : kv_v_head(&c->kv, layer, head, 0);
}

int eng_kv_save(eng_ctx *c, const char *path, const int32_t *tokens, int32_t n_tokens,
                char err[256])
{
    if (n_tokens <= 0 || n_tokens > c->n_past || !tokens) {
        snprintf(err, 256, "%s: cannot save %d positions of a cache holding %d", path, n_tokens,
                 c->n_past);
        return ENG_EUSAGE;
    }
    if (c->lora.n > 0) {
        snprintf(err, 256, "%s: the context has %d LoRA adapter(s) attached; only base-model KV "
                           "states are saved", path, c->lora.n);
        return ENG_EUSAGE;
    }
    kv_hdr h = {
        .version = ENG_KV_FILE_VERSION,
        .header_bytes = HDR_BYTES,
        .identity = ctx_identity(c),
        .kv_type = (uint32_t)c->kv.type,
        .n_layer = (uint32_t)c->kv.n_layer,
        .kv_dim = (uint32_t)c->kv.kv_dim,
        .row_bytes = (uint32_t)c->kv.row_bytes,
        .n_tokens = (uint32_t)n_tokens,
    };
    uint8_t hb[HDR_BYTES];
    hdr_encode(&h, hb);
    uint64_t sum = hash_bytes(0, hb, sizeof hb);
    for (size_t i = 0; i < n_sections(c); i++) {
        size_t len;
        const uint8_t *p = section(c, i, tokens, &len, n_tokens);
        sum = hash_bytes(sum, p, len);
    }
    h.checksum = sum;
    hdr_encode(&h, hb);

    size_t plen = strlen(path);
    char *tmp = malloc(plen + 16);
    if (!tmp) {
        snprintf(err, 256, "%s: out of memory", path);
        return ENG_ENOMEM;
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp.XXXXXX", 12);
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, 256, "%s: cannot create a temporary file beside it: %s", path,
                 strerror(errno));
        free(tmp);
        return ENG_EIO;
    }
    int rc = write_full(fd, hb, sizeof hb);
    for (size_t i = 0; i < n_sections(c) && !rc; i++) {
        size_t len;
        const uint8_t *p = section(c, i, tokens, &len, n_tokens);
        rc = write_full(fd, p, len);
    }
    if (!rc)
        rc = fsync(fd);
    int e = errno;
    if (close(fd) && !rc) {
        rc = -1;
        e = errno;
    }
    if (!rc && rename(tmp, path)) {
        rc = -1;
        e = errno;
    }
    if (rc) {
        snprintf(err, 256, "%s: writing the KV state (%llu bytes): %s", path,
                 (unsigned long long)eng_kv_file_bytes(c, n_tokens), strerror(e));
        unlink(tmp);
        free(tmp);
        return ENG_EIO;
    }
    /* Make the rename itself durable. A failure here leaves a complete file
     * that may or may not survive a power cut, which a later load checks
     * anyway, so it is not reported. */
    char *dir = dirname(tmp);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    free(tmp);
    return ENG_OK;
}

/* Open path and check its header and token ids against c. On success *fd is
 * open just past the tokens and *sum covers the header and tokens. */
static int open_checked(const eng_ctx *c, const char *path, int *fd_out, kv_hdr *h,
                        int32_t **tokens_out, uint64_t *sum, char err[256])
{
    *fd_out = -1;
    *tokens_out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, 256, "%s: %s", path, strerror(errno));
        return ENG_EIO;
    }
    int rc = ENG_EFORMAT;
    int32_t *tokens = NULL;
    struct stat st;
    if (fstat(fd, &st)) {
        snprintf(err, 256, "%s: %s", path, strerror(errno));
        rc = ENG_EIO;
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(err, 256, "%s: not a regular file", path);
        goto fail;
    }
    uint8_t hb[HDR_BYTES];
    if (st.st_size < HDR_BYTES) {
        snprintf(err, 256, "%s: truncated: %lld bytes, shorter than the %d-byte header", path,
                 (long long)st.st_size, HDR_BYTES);
        goto fail;
    }
    if ((rc = read_part(fd, hb, sizeof hb, path, "the header", err)))
        goto fail;
    rc = ENG_EFORMAT;
    if (memcmp(hb, kv_magic, sizeof kv_magic)) {
        snprintf(err, 256, "%s: not an Outpost KV state (bad magic)", path);
        goto fail;
    }
    hdr_decode(hb, h);
    if (h->version != ENG_KV_FILE_VERSION) {
        snprintf(err, 256, "%s: format version %u; this build reads version %d", path,
                 h->version, ENG_KV_FILE_VERSION);
        goto fail;
    }
    if (h->header_bytes != HDR_BYTES || h->reserved32 || h->reserved64) {
        snprintf(err, 256, "%s: header: size %u, reserved fields %u/%llu; expected %d, 0/0",
                 path, h->header_bytes, h->reserved32, (unsigned long long)h->reserved64,
                 HDR_BYTES);
        goto fail;
    }
    if (c->lora.n > 0) {
        snprintf(err, 256, "%s: the context has %d LoRA adapter(s) attached; only base-model KV "
                           "states are restored", path, c->lora.n);
        rc = ENG_EUSAGE;
        goto fail;
    }
    if (h->kv_type != (uint32_t)c->kv.type) {
        snprintf(err, 256, "%s: KV type %s; this context stores %s", path,
                 h->kv_type < QT_TYPE_COUNT ? qt_type_name((qt_type)h->kv_type) : "unknown",
                 qt_type_name(c->kv.type));
        goto fail;
    }
    uint64_t id = ctx_identity(c);
    if (h->identity != id) {
        snprintf(err, 256, "%s: saved by another model or RoPE setting (identity %016llx; this "
                           "context %016llx)", path, (unsigned long long)h->identity,
                 (unsigned long long)id);
        goto fail;
    }
    if (h->n_layer != (uint32_t)c->kv.n_layer || h->kv_dim != (uint32_t)c->kv.kv_dim ||
        h->row_bytes != (uint32_t)c->kv.row_bytes) {
        snprintf(err, 256, "%s: %u layers of %u-wide rows (%u bytes); this context has %d of %d "
                           "(%zu bytes)", path, h->n_layer, h->kv_dim, h->row_bytes,
                 c->kv.n_layer, c->kv.kv_dim, c->kv.row_bytes);
        goto fail;
    }
    if (h->n_tokens == 0 || h->n_tokens > (uint32_t)c->n_ctx) {
        snprintf(err, 256, "%s: n_tokens %u; this context holds 1 to %d", path, h->n_tokens,
                 c->n_ctx);
        goto fail;
    }
    uint64_t want = eng_kv_file_bytes(c, (int32_t)h->n_tokens);
    if ((uint64_t)st.st_size != want) {
        snprintf(err, 256, "%s: %s: %lld bytes; the header promises %llu", path,
                 (uint64_t)st.st_size < want ? "truncated" : "trailing bytes",
                 (long long)st.st_size, (unsigned long long)want);
        goto fail;
    }
    tokens = malloc((size_t)h->n_tokens * sizeof *tokens);
    if (!tokens) {
        snprintf(err, 256, "%s: out of memory for %u token ids", path, h->n_tokens);
        rc = ENG_ENOMEM;
        goto fail;
    }
    if ((rc = read_part(fd, tokens, (size_t)h->n_tokens * sizeof *tokens, path,
                        "the token ids", err)))
        goto fail;
    rc = ENG_EFORMAT;
    for (uint32_t i = 0; i < h->n_tokens; i++) {
        if (tokens[i] < 0 || tokens[i] >= c->m->hp.n_vocab) {
            snprintf(err, 256, "%s: token %u is %d, outside the vocabulary of %d", path, i,
                     tokens[i], c->m->hp.n_vocab);
            goto fail;
        }
    }
    put64(hb + 48, 0);
    *sum = hash_bytes(hash_bytes(0, hb, sizeof hb), tokens,
                      (size_t)h->n_tokens * sizeof *tokens);
    *fd_out = fd;
    *tokens_out = tokens;
    return ENG_OK;
fail:
    free(tokens);
    close(fd);
    return rc;
}

int eng_kv_peek(const eng_ctx *c, const char *path, int32_t **tokens, int32_t *n_tokens,
                char err[256])
{
    int fd;
    kv_hdr h;
    uint64_t sum;
    *n_tokens = 0;
    int rc = open_checked(c, path, &fd, &h, tokens, &sum, err);
    if (rc)
        return rc;
    close(fd);
    *n_tokens = (int32_t)h.n_tokens;
    return ENG_OK;
}

int eng_kv_load(eng_ctx *c, const char *path, int32_t **tokens, int32_t *n_tokens,
                char err[256])
{
    int fd;
    kv_hdr h;
    uint64_t sum;
    *n_tokens = 0;
    int rc = open_checked(c, path, &fd, &h, tokens, &sum, err);
    if (rc)
        return rc;
    /* From here on the rows are overwritten: a failure leaves no positions. */
    c->n_past = 0;
    c->n_logits = 0;
    int32_t n = (int32_t)h.n_tokens;
    for (size_t i = 1; i < n_sections(c) && !rc; i++) {
        size_t len;
        uint8_t *p = section(c, i, NULL, &len, n);
        char what[48];
        snprintf(what, sizeof what, "the rows of layer %zu", (i - 1) / (2 * (size_t)c->kv.n_head_kv));
        rc = read_part(fd, p, len, path, what, err);
        sum = hash_bytes(sum, p, len);
    }
    close(fd);
    if (!rc && sum != h.checksum) {
        snprintf(err, 256, "%s: checksum mismatch (file %016llx, contents %016llx): the file is "
                           "corrupt", path, (unsigned long long)h.checksum,
                 (unsigned long long)sum);
        rc = ENG_EFORMAT;
    }
    if (rc) {
        free(*tokens);
        *tokens = NULL;
        return rc;
    }
    c->n_past = n;
    *n_tokens = n;
    return ENG_OK;
}
