/*
 * manifest.c - parse, build and format OTA manifests (format: manifest.h).
 *
 * Invariant: a manifest returned by the parser has passed every check of
 * manifest.h (keys, types, hashes, chunk count, kind rules), so callers use
 * its fields without checking them again. jansson does the JSON; this file
 * only maps it onto the struct.
 */
#include "manifest.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <sodium.h>

#include "delta.h"

static void set_err(char err[256], const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_err(char err[256], const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, 256, fmt, ap);
    va_end(ap);
}

void ota_manifest_free(ota_manifest *m)
{
    if (!m)
        return;
    free(m->chunk_hashes);
    free(m->health_prompt);
    free(m->health_expect);
    free(m);
}

/* ---- parse -------------------------------------------------------------------- */

/* Every key of obj is one of allowed (NULL-terminated). */
static int only_keys(json_t *obj, const char *const *allowed, const char *name, const char *where,
                     char err[256])
{
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) {
        bool ok = false;
        for (const char *const *a = allowed; *a && !ok; a++)
            ok = strcmp(*a, key) == 0;
        if (!ok) {
            set_err(err, "%s: %s: unknown field \"%.64s\"", name, where, key);
            return OTA_EFORMAT;
        }
    }
    return OTA_OK;
}

static json_t *need(json_t *obj, const char *key, const char *name, const char *where,
                    char err[256])
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        set_err(err, "%s: %s: missing field \"%s\"", name, where, key);
    return v;
}

static int get_uint(json_t *obj, const char *key, uint64_t lo, uint64_t hi, const char *name,
                    const char *where, uint64_t *out, char err[256])
{
    json_t *v = need(obj, key, name, where, err);
    if (!v)
        return OTA_EFORMAT;
    if (!json_is_integer(v) || json_integer_value(v) < 0 ||
        (uint64_t)json_integer_value(v) < lo || (uint64_t)json_integer_value(v) > hi) {
        set_err(err, "%s: %s.%s: expected an integer in %llu..%llu", name, where, key,
                (unsigned long long)lo, (unsigned long long)hi);
        return OTA_EFORMAT;
    }
    *out = (uint64_t)json_integer_value(v);
    return OTA_OK;
}

static int hex_hash(json_t *v, const char *name, const char *what,
                    uint8_t out[OTA_MANIFEST_HASH_BYTES], char err[256])
{
    const char *s = json_is_string(v) ? json_string_value(v) : NULL;
    size_t bin_len = 0;
    if (!s || json_string_length(v) != 2 * OTA_MANIFEST_HASH_BYTES ||
        sodium_hex2bin(out, OTA_MANIFEST_HASH_BYTES, s, json_string_length(v), NULL, &bin_len,
                       NULL) != 0 ||
        bin_len != OTA_MANIFEST_HASH_BYTES) {
        set_err(err, "%s: %s: expected a BLAKE2b-256 hash as 64 hex digits", name, what);
        return OTA_EFORMAT;
    }
    return OTA_OK;
}

/* {"hash": HEX64, "size": N} */
static int get_file(json_t *root, const char *key, const char *name,
                    uint8_t hash[OTA_MANIFEST_HASH_BYTES], uint64_t *size, char err[256])
{
    static const char *const keys[] = {"hash", "size", NULL};
    json_t *o = need(root, key, name, "manifest", err);
    if (!o)
        return OTA_EFORMAT;
    if (!json_is_object(o)) {
        set_err(err, "%s: %s: expected an object {\"hash\", \"size\"}", name, key);
        return OTA_EFORMAT;
    }
    int rc = only_keys(o, keys, name, key, err);
    char what[32];
    snprintf(what, sizeof what, "%s.hash", key);
    json_t *h = rc ? NULL : need(o, "hash", name, key, err);
    if (rc || !h)
        return OTA_EFORMAT;
    if ((rc = hex_hash(h, name, what, hash, err)))
        return rc;
    return get_uint(o, "size", 0, (uint64_t)INT64_MAX, name, key, size, err);
}

static int get_text(json_t *obj, const char *key, const char *name, char **out, char err[256])
{
    json_t *v = json_object_get(obj, key);
    if (!v)
        return OTA_OK;
    if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v)) {
        set_err(err, "%s: health.%s: expected a string without NUL characters", name, key);
        return OTA_EFORMAT;
    }
    if (!(*out = strdup(json_string_value(v)))) {
        set_err(err, "%s: out of memory", name);
        return OTA_ENOMEM;
    }
    return OTA_OK;
}

static int parse_health(json_t *root, const char *name, ota_manifest *m, char err[256])
{
    static const char *const keys[] = {"prompt", "expect_substring", "max_ppl", NULL};
    json_t *o = json_object_get(root, "health");
    if (!o)
        return OTA_OK;
    if (!json_is_object(o)) {
        set_err(err, "%s: health: expected an object", name);
        return OTA_EFORMAT;
    }
    int rc = only_keys(o, keys, name, "health", err);
    if (!rc && !json_object_get(o, "prompt")) {
        set_err(err, "%s: health: missing field \"prompt\"", name);
        rc = OTA_EFORMAT;
    }
    if (!rc)
        rc = get_text(o, "prompt", name, &m->health_prompt, err);
    if (!rc)
        rc = get_text(o, "expect_substring", name, &m->health_expect, err);
    if (rc)
        return rc;
    if (!m->health_prompt[0]) {
        set_err(err, "%s: health.prompt: empty", name);
        return OTA_EFORMAT;
    }
    json_t *p = json_object_get(o, "max_ppl");
    if (p) {
        double v = json_is_number(p) ? json_number_value(p) : -1;
        if (!(v > 0) || !isfinite(v)) {
            set_err(err, "%s: health.max_ppl: expected a number above 0", name);
            return OTA_EFORMAT;
        }
        m->health_max_ppl = v;
    }
    return OTA_OK;
}

static int parse_payload(json_t *root, const char *name, ota_manifest *m, char err[256])
{
    static const char *const keys[] = {"hash", "size", "chunk_size", "chunks", NULL};
    json_t *o = need(root, "payload", name, "manifest", err);
    if (!o)
        return OTA_EFORMAT;
    if (!json_is_object(o)) {
        set_err(err, "%s: payload: expected an object", name);
        return OTA_EFORMAT;
    }
    int rc = only_keys(o, keys, name, "payload", err);
    json_t *h = rc ? NULL : need(o, "hash", name, "payload", err);
    if (rc || !h)
        return OTA_EFORMAT;
    uint64_t cs;
    if ((rc = hex_hash(h, name, "payload.hash", m->payload_hash, err)) ||
        (rc = get_uint(o, "size", 0, (uint64_t)INT64_MAX, name, "payload", &m->payload_size,
                       err)) ||
        (rc = get_uint(o, "chunk_size", OTA_MANIFEST_CHUNK_MIN, OTA_MANIFEST_CHUNK_MAX, name,
                       "payload", &cs, err)))
        return rc;
    m->chunk_size = (uint32_t)cs;
    uint64_t want = (m->payload_size + cs - 1) / cs;
    json_t *c = need(o, "chunks", name, "payload", err);
    if (!c)
        return OTA_EFORMAT;
    if (!json_is_array(c) || json_array_size(c) != want || want > OTA_MANIFEST_CHUNKS_MAX) {
        set_err(err, "%s: payload.chunks: expected an array of %llu hashes (size / chunk_size, "
                "at most %u)", name, (unsigned long long)want, OTA_MANIFEST_CHUNKS_MAX);
        return OTA_EFORMAT;
    }
    m->n_chunks = (uint32_t)want;
    if (want && !(m->chunk_hashes = malloc((size_t)want * OTA_MANIFEST_HASH_BYTES))) {
        set_err(err, "%s: out of memory for %llu chunk hashes", name, (unsigned long long)want);
        return OTA_ENOMEM;
    }
    for (size_t i = 0; i < want; i++) {
        char what[48];
        snprintf(what, sizeof what, "payload.chunks[%zu]", i);
        if ((rc = hex_hash(json_array_get(c, i), name, what,
                           m->chunk_hashes + i * OTA_MANIFEST_HASH_BYTES, err)))
            return rc;
    }
    return OTA_OK;
}

int ota_manifest_parse(const char *text, size_t len, const char *name, ota_manifest **out,
                       char err[256])
{
    static const char *const keys[] = {"version", "kind", "base", "target", "payload", "health",
                                       NULL};
    *out = NULL;
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        set_err(err, "%s: line %d: %s", name, je.line, je.text);
        return OTA_EFORMAT;
    }
    ota_manifest *m = calloc(1, sizeof *m);
    int rc = OTA_ENOMEM;
    if (!m) {
        set_err(err, "%s: out of memory", name);
        goto done;
    }
    rc = OTA_EFORMAT;
    if (!json_is_object(root)) {
        set_err(err, "%s: expected a JSON object", name);
        goto done;
    }
    if ((rc = only_keys(root, keys, name, "manifest", err)) ||
        (rc = get_uint(root, "version", 1, (uint64_t)INT64_MAX, name, "manifest", &m->version,
                       err)))
        goto done;
    rc = OTA_EFORMAT;
    json_t *k = need(root, "kind", name, "manifest", err);
    if (!k)
        goto done;
    const char *ks = json_is_string(k) ? json_string_value(k) : "";
    if (strcmp(ks, "full") == 0 && json_string_length(k) == 4) {
        m->kind = OTA_MANIFEST_FULL;
    } else if (strcmp(ks, "delta") == 0 && json_string_length(k) == 5) {
        m->kind = OTA_MANIFEST_DELTA;
    } else {
        set_err(err, "%s: kind: expected \"full\" or \"delta\"", name);
        goto done;
    }
    if (m->kind == OTA_MANIFEST_DELTA) {
        if ((rc = get_file(root, "base", name, m->base_hash, &m->base_size, err)))
            goto done;
    } else if (json_object_get(root, "base")) {
        set_err(err, "%s: base: a full manifest has no base", name);
        rc = OTA_EFORMAT;
        goto done;
    }
    if ((rc = get_file(root, "target", name, m->target_hash, &m->target_size, err)) ||
        (rc = parse_payload(root, name, m, err)) || (rc = parse_health(root, name, m, err)))
        goto done;
    if (m->kind == OTA_MANIFEST_FULL &&
        (m->payload_size != m->target_size ||
         memcmp(m->payload_hash, m->target_hash, OTA_MANIFEST_HASH_BYTES) != 0)) {
        set_err(err, "%s: payload: a full manifest's payload must be its target (hash and size)",
                name);
        rc = OTA_EFORMAT;
        goto done;
    }
    *out = m;
    m = NULL;
    rc = OTA_OK;
done:
    ota_manifest_free(m);
    json_decref(root);
    return rc;
}

int ota_manifest_load(const char *path, ota_manifest **out, char err[256])
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        set_err(err, "%s: cannot open: %s", path, strerror(errno));
        return OTA_EIO;
    }
    /* Manifests are small; a chunk list of OTA_MANIFEST_CHUNKS_MAX hashes is
     * the largest legal one (about 70 MiB), so refuse anything bigger. */
    size_t cap = 1 << 16, len = 0;
    const size_t limit = (size_t)OTA_MANIFEST_CHUNKS_MAX * 72 + (1 << 20);
    char *buf = malloc(cap);
    int rc = OTA_OK;
    while (buf) {
        if (len == cap) {
            char *nb = cap < limit ? realloc(buf, cap * 2) : NULL;
            if (!nb) {
                set_err(err, "%s: %s", path, cap < limit ? "out of memory" : "too large for a manifest");
                rc = cap < limit ? OTA_ENOMEM : OTA_EFORMAT;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0) {
            if (ferror(f)) {
                set_err(err, "%s: read failed", path);
                rc = OTA_EIO;
            }
            break;
        }
    }
    fclose(f);
    if (!buf) {
        set_err(err, "%s: out of memory", path);
        return OTA_ENOMEM;
    }
    if (!rc)
        rc = ota_manifest_parse(buf, len, path, out, err);
    free(buf);
    return rc;
}

/* ---- build and format ------------------------------------------------------------- */

int ota_manifest_from_file(const char *payload_path, ota_manifest_kind kind, uint64_t version,
                           uint32_t chunk_size, ota_manifest **out, char err[256])
{
    *out = NULL;
    if (sodium_init() < 0) {
        set_err(err, "libsodium failed to initialise");
        return OTA_ECRYPTO;
    }
    if (chunk_size == 0)
        chunk_size = OTA_MANIFEST_CHUNK_DEFAULT;
    if (chunk_size < OTA_MANIFEST_CHUNK_MIN || chunk_size > OTA_MANIFEST_CHUNK_MAX ||
        version < 1 || version > (uint64_t)INT64_MAX ||
        (kind != OTA_MANIFEST_FULL && kind != OTA_MANIFEST_DELTA)) {
        set_err(err, "manifest: version %llu (1..2^63-1), chunk size %u (%u..%u)",
                (unsigned long long)version, chunk_size, OTA_MANIFEST_CHUNK_MIN,
                OTA_MANIFEST_CHUNK_MAX);
        return OTA_EINVAL;
    }
    ota_manifest *m = calloc(1, sizeof *m);
    uint8_t *buf = malloc(chunk_size);
    int fd = -1, rc = OTA_ENOMEM;
    if (!m || !buf) {
        set_err(err, "out of memory");
        goto done;
    }
    m->version = version;
    m->kind = kind;
    m->chunk_size = chunk_size;
    if (kind == OTA_MANIFEST_DELTA) {
        ota_delta_header h;
        if ((rc = ota_delta_read_header(payload_path, &h, err)))
            goto done;
        memcpy(m->base_hash, h.base_hash, OTA_MANIFEST_HASH_BYTES);
        memcpy(m->target_hash, h.target_hash, OTA_MANIFEST_HASH_BYTES);
        m->base_size = h.base_bytes;
        m->target_size = h.target_bytes;
    }
    if ((fd = open(payload_path, O_RDONLY | O_CLOEXEC)) < 0) {
        set_err(err, "%s: cannot open: %s", payload_path, strerror(errno));
        rc = OTA_EIO;
        goto done;
    }
    crypto_generichash_state whole;
    crypto_generichash_init(&whole, NULL, 0, OTA_MANIFEST_HASH_BYTES);
    size_t cap = 0;
    for (;;) {
        size_t got = 0;
        while (got < chunk_size) {
            ssize_t n = read(fd, buf + got, chunk_size - got);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0) {
                set_err(err, "%s: read failed: %s", payload_path, strerror(errno));
                rc = OTA_EIO;
                goto done;
            }
            if (n == 0)
                break;
            got += (size_t)n;
        }
        if (got == 0)
            break;
        if (m->n_chunks == OTA_MANIFEST_CHUNKS_MAX) {
            set_err(err, "%s: more than %u chunks of %u bytes (use a larger chunk size)",
                    payload_path, OTA_MANIFEST_CHUNKS_MAX, chunk_size);
            rc = OTA_EINVAL;
            goto done;
        }
        if (m->n_chunks == cap) {
            size_t nc = cap ? cap * 2 : 64;
            uint8_t *nh = realloc(m->chunk_hashes, nc * OTA_MANIFEST_HASH_BYTES);
            if (!nh) {
                set_err(err, "out of memory");
                rc = OTA_ENOMEM;
                goto done;
            }
            m->chunk_hashes = nh;
            cap = nc;
        }
        crypto_generichash(m->chunk_hashes + (size_t)m->n_chunks * OTA_MANIFEST_HASH_BYTES,
                           OTA_MANIFEST_HASH_BYTES, buf, got, NULL, 0);
        crypto_generichash_update(&whole, buf, got);
        m->n_chunks++;
        m->payload_size += got;
        if (got < chunk_size)
            break;
    }
    crypto_generichash_final(&whole, m->payload_hash, OTA_MANIFEST_HASH_BYTES);
    if (kind == OTA_MANIFEST_FULL) {
        memcpy(m->target_hash, m->payload_hash, OTA_MANIFEST_HASH_BYTES);
        m->target_size = m->payload_size;
    }
    *out = m;
    m = NULL;
    rc = OTA_OK;
done:
    if (fd >= 0)
        close(fd);
    free(buf);
    ota_manifest_free(m);
    return rc;
}

int ota_manifest_set_health(ota_manifest *m, const char *prompt, const char *expect,
                            double max_ppl, char err[256])
{
    if (!prompt || !prompt[0] || max_ppl < 0 || !isfinite(max_ppl)) {
        set_err(err, "manifest health: a non-empty prompt and a max_ppl >= 0 are needed");
        return OTA_EINVAL;
    }
    char *p = strdup(prompt), *e = expect ? strdup(expect) : NULL;
    if (!p || (expect && !e)) {
        free(p);
        free(e);
        set_err(err, "out of memory");
        return OTA_ENOMEM;
    }
    free(m->health_prompt);
    free(m->health_expect);
    m->health_prompt = p;
    m->health_expect = e;
    m->health_max_ppl = max_ppl;
    return OTA_OK;
}

static json_t *hex_json(const uint8_t h[OTA_MANIFEST_HASH_BYTES])
{
    char hex[2 * OTA_MANIFEST_HASH_BYTES + 1];
    sodium_bin2hex(hex, sizeof hex, h, OTA_MANIFEST_HASH_BYTES);
    return json_string(hex);
}

static json_t *file_json(const uint8_t h[OTA_MANIFEST_HASH_BYTES], uint64_t size)
{
    return json_pack("{s:o,s:I}", "hash", hex_json(h), "size", (json_int_t)size);
}

char *ota_manifest_format(const ota_manifest *m)
{
    json_t *chunks = json_array();
    for (uint32_t i = 0; chunks && i < m->n_chunks; i++) {
        if (json_array_append_new(chunks, hex_json(m->chunk_hashes +
                                                   (size_t)i * OTA_MANIFEST_HASH_BYTES))) {
            json_decref(chunks);
            chunks = NULL;
        }
    }
    if (!chunks)
        return NULL;
    json_t *root = json_pack("{s:I,s:s}", "version", (json_int_t)m->version, "kind",
                             m->kind == OTA_MANIFEST_DELTA ? "delta" : "full");
    if (!root) {
        json_decref(chunks);
        return NULL;
    }
    bool ok = true;
    if (m->kind == OTA_MANIFEST_DELTA)
        ok = !json_object_set_new(root, "base", file_json(m->base_hash, m->base_size));
    ok = ok && !json_object_set_new(root, "target", file_json(m->target_hash, m->target_size));
    if (!ok)
        json_decref(chunks);
    ok = ok && !json_object_set_new(root, "payload",
                                    json_pack("{s:o,s:I,s:I,s:o}", "hash",
                                              hex_json(m->payload_hash), "size",
                                              (json_int_t)m->payload_size, "chunk_size",
                                              (json_int_t)m->chunk_size, "chunks", chunks));
    if (ok && m->health_prompt) {
        json_t *h = json_pack("{s:s}", "prompt", m->health_prompt);
        if (h && m->health_expect)
            json_object_set_new(h, "expect_substring", json_string(m->health_expect));
        if (h && m->health_max_ppl > 0)
            json_object_set_new(h, "max_ppl", json_real(m->health_max_ppl));
        ok = h && !json_object_set_new(root, "health", h);
    }
    char *text = ok ? json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    json_decref(root);
    if (!text)
        return NULL;
    size_t n = strlen(text);
    char *out = realloc(text, n + 2);
    if (!out) {
        free(text);
        return NULL;
    }
    out[n] = '\n';
    out[n + 1] = '\0';
    return out;
}
