/*
 * test_ota_delta.c - tensor-aware model deltas (ota/delta.c) and OTA
 * manifests (ota/manifest.c).
 *
 * Models are small synthetic GGUF files written by the test with the
 * engine's writer and quantizers (an F32 norm, Q4_0, Q8_0 and F16 matrices)
 * in a fresh mkdtemp directory, removed afterwards. Every round trip is
 * checked byte for byte against the target file; every refusal is checked
 * to leave neither OUT nor OUT.tmp behind (and an existing OUT untouched).
 */
#include <ftw.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "delta.h"
#include "gguf.h"
#include "manifest.h"
#include "quant.h"

typedef struct fixture {
    char dir[64];
    char base[128], target[128], delta[128], out[128], out_tmp[160];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    snprintf(f->dir, sizeof f->dir, "/tmp/ota-delta-XXXXXX");
    if (!mkdtemp(f->dir)) {
        free(f);
        return -1;
    }
    snprintf(f->base, sizeof f->base, "%s/base.gguf", f->dir);
    snprintf(f->target, sizeof f->target, "%s/target.gguf", f->dir);
    snprintf(f->delta, sizeof f->delta, "%s/model.delta", f->dir);
    snprintf(f->out, sizeof f->out, "%s/out.gguf", f->dir);
    snprintf(f->out_tmp, sizeof f->out_tmp, "%s.tmp", f->out);
    *state = f;
    return 0;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static int teardown(void **state)
{
    fixture *f = *state;
    nftw(f->dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

/* ---- synthetic models ---------------------------------------------------------- */

static uint64_t rng;
static double gauss(void)
{
    double u[2];
    for (int i = 0; i < 2; i++) {
        rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
        u[i] = ((double)(rng >> 11) + 0.5) / 9007199254740992.0;
    }
    return sqrt(-2 * log(u[0])) * cos(6.283185307179586 * u[1]);
}

/* How a target differs from its base. */
typedef struct model_spec {
    uint64_t seed;        /* weights of every tensor */
    uint64_t seed_ffn;    /* weights of "blk.0.ffn.weight" only (0: seed) */
    double noise;         /* > 0: every weight moves by noise x std (seeded by noise_seed) */
    uint64_t noise_seed;
    bool extra_tensor;    /* one more tensor, "extra.weight" */
    const char *name_kv;  /* general.name */
    uint32_t alignment;   /* 0: default */
} model_spec;

static const struct {
    const char *name;
    uint32_t type;
    int64_t ne0, ne1;
} tensors[] = {
    {"norm.weight", QT_F32, 256, 1},
    {"blk.0.attn.weight", QT_Q4_0, 256, 64},
    {"blk.0.ffn.weight", QT_Q4_0, 256, 96},
    {"output.weight", QT_Q8_0, 256, 48},
    {"tok_embd.weight", QT_F16, 256, 32},
};
#define N_TENSORS (sizeof tensors / sizeof tensors[0])

static void write_model(const char *path, const model_spec *s)
{
    gguf_writer *w = gguf_writer_new();
    char err[256];
    assert_non_null(w);
    assert_int_equal(gguf_writer_set_str(w, "general.architecture", "llama"), 0);
    assert_int_equal(gguf_writer_set_str(w, "general.name", s->name_kv ? s->name_kv : "base"), 0);
    if (s->alignment)
        assert_int_equal(gguf_writer_set_u32(w, "general.alignment", s->alignment), 0);
    size_t n = N_TENSORS + (s->extra_tensor ? 1 : 0);
    for (size_t i = 0; i < n; i++) {
        int64_t ne[2] = {i < N_TENSORS ? tensors[i].ne0 : 96, i < N_TENSORS ? tensors[i].ne1 : 1};
        uint32_t type = i < N_TENSORS ? tensors[i].type : QT_F32;
        const char *name = i < N_TENSORS ? tensors[i].name : "extra.weight";
        assert_true(gguf_writer_add_tensor(w, name, ne[1] > 1 ? 2 : 1, ne, type, err) >= 0);
    }
    assert_int_equal(gguf_writer_begin(w, path, err), 0);
    for (size_t i = 0; i < n; i++) {
        int64_t ne0 = i < N_TENSORS ? tensors[i].ne0 : 96, ne1 = i < N_TENSORS ? tensors[i].ne1 : 1;
        uint32_t type = i < N_TENSORS ? tensors[i].type : QT_F32;
        int64_t count = ne0 * ne1;
        float *x = malloc((size_t)count * sizeof *x);
        size_t bytes = qt_row_bytes(type, ne0) * (size_t)ne1;
        void *q = malloc(bytes);
        assert_non_null(x);
        assert_non_null(q);
        rng = (i < N_TENSORS && strcmp(tensors[i].name, "blk.0.ffn.weight") == 0 && s->seed_ffn)
                  ? s->seed_ffn * 1000 + i
                  : s->seed * 1000 + i;
        for (int64_t j = 0; j < count; j++)
            x[j] = (float)(0.05 * gauss());
        if (s->noise > 0) {
            rng = s->noise_seed * 1000 + i;
            for (int64_t j = 0; j < count; j++)
                x[j] += (float)(s->noise * 0.05 * gauss());
        }
        const qt_traits *tr = qt_get((qt_type)type);
        assert_non_null(tr);
        if (type == QT_F32)
            memcpy(q, x, bytes);
        else
            tr->from_float(x, q, count);
        assert_int_equal(gguf_writer_write_tensor(w, q, bytes, err), 0);
        free(x);
        free(q);
    }
    assert_int_equal(gguf_writer_finish(w, err), 0);
    gguf_writer_free(w);
}

static unsigned char *slurp(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, fp), (size_t)n);
    fclose(fp);
    *len = (size_t)n;
    return buf;
}

static void spill(const char *path, const void *p, size_t n)
{
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(p, 1, n, fp), n);
    fclose(fp);
}

static void assert_same_file(const char *a, const char *b)
{
    size_t na, nb;
    unsigned char *pa = slurp(a, &na), *pb = slurp(b, &nb);
    assert_int_equal(na, nb);
    assert_memory_equal(pa, pb, na);
    free(pa);
    free(pb);
}

static bool exists(const char *path) { return access(path, F_OK) == 0; }

/* diff base -> target, patch into out, compare; returns the stats. */
static ota_delta_stats round_trip(fixture *f, const ota_delta_opts *o)
{
    char err[256];
    ota_delta_stats st, pst;
    int rc = ota_delta_diff(f->base, f->target, f->delta, o, &st, err);
    if (rc)
        fail_msg("diff: %s", err);
    rc = ota_delta_patch(f->base, f->delta, f->out, &pst, err);
    if (rc)
        fail_msg("patch: %s", err);
    assert_same_file(f->out, f->target);
    assert_false(exists(f->out_tmp));
    assert_int_equal(st.delta_bytes, pst.delta_bytes);
    return st;
}

/* ---- delta tests ------------------------------------------------------------------ */

static void delta_identical_models_are_all_same(void **state)
{
    fixture *f = *state;
    model_spec s = {.seed = 1};
    write_model(f->base, &s);
    write_model(f->target, &s);
    ota_delta_stats st = round_trip(f, NULL);
    assert_int_equal(st.n_same, N_TENSORS);
    assert_int_equal(st.n_patch + st.n_new + st.n_qdiff, 0);
    assert_true(st.delta_bytes < 2048);
}

static void delta_one_changed_tensor_is_patched_others_same(void **state)
{
    fixture *f = *state;
    model_spec b = {.seed = 1}, t = {.seed = 1, .seed_ffn = 2, .name_kv = "target v2"};
    write_model(f->base, &b);
    write_model(f->target, &t);
    ota_delta_stats st = round_trip(f, NULL);
    assert_int_equal(st.n_same, N_TENSORS - 1);
    assert_int_equal(st.n_patch + st.n_qdiff, 1);
    assert_int_equal(st.n_new, 0);
}

static void delta_new_tensor_is_new(void **state)
{
    fixture *f = *state;
    model_spec b = {.seed = 1}, t = {.seed = 1, .extra_tensor = true};
    write_model(f->base, &b);
    write_model(f->target, &t);
    ota_delta_stats st = round_trip(f, NULL);
    assert_int_equal(st.n_new, 1);
    assert_int_equal(st.n_same, N_TENSORS);
}

static void delta_fine_tune_uses_qdiff_and_is_smaller(void **state)
{
    fixture *f = *state;
    model_spec b = {.seed = 1}, t = {.seed = 1, .noise = 0.05, .noise_seed = 9};
    write_model(f->base, &b);
    write_model(f->target, &t);
    ota_delta_stats with = round_trip(f, NULL);
    /* Both Q4_0 matrices and the Q8_0 one. */
    assert_int_equal(with.n_qdiff, 3);
    ota_delta_opts o = {.no_qdiff = true};
    ota_delta_stats without = round_trip(f, &o);
    assert_int_equal(without.n_qdiff, 0);
    assert_true(with.delta_bytes < without.delta_bytes * 3 / 4);
}

static void delta_small_pieces_and_other_alignment_round_trip(void **state)
{
    fixture *f = *state;
    model_spec b = {.seed = 1, .alignment = 64},
               t = {.seed = 1, .noise = 0.05, .noise_seed = 4, .alignment = 64};
    write_model(f->base, &b);
    write_model(f->target, &t);
    ota_delta_opts o = {.piece_bytes = 4096, .level = 3};
    ota_delta_stats st = round_trip(f, &o);
    assert_true(st.n_qdiff >= 1);
    o.no_patch = true;
    st = round_trip(f, &o);
    assert_int_equal(st.n_new, N_TENSORS);
}

static void delta_wrong_base_is_refused_out_untouched(void **state)
{
    fixture *f = *state;
    model_spec b = {.seed = 1}, t = {.seed = 1, .seed_ffn = 3}, other = {.seed = 5};
    write_model(f->base, &b);
    write_model(f->target, &t);
    char err[256];
    assert_int_equal(ota_delta_diff(f->base, f->target, f->delta, NULL, NULL, err), OTA_OK);
    write_model(f->base, &other); /* same size, other bytes */
    spill(f->out, "old model", 9);
    assert_int_equal(ota_delta_patch(f->base, f->delta, f->out, NULL, err), OTA_DELTA_EBASE);
    assert_non_null(strstr(err, "wrong base"));
    assert_null(strchr(err, '\n'));
    assert_false(exists(f->out_tmp));
    size_t n;
    unsigned char *p = slurp(f->out, &n);
    assert_int_equal(n, 9);
    assert_memory_equal(p, "old model", 9);
    free(p);
    /* A base of another size is named as such. */
    spill(f->base, "short", 5);
    assert_int_equal(ota_delta_patch(f->base, f->delta, f->out, NULL, err), OTA_DELTA_EBASE);
}

/* The base is hashed beside the writing now: a wrong base must still be
 * refused with OUT untouched and no OUT.tmp, whatever the rebuild did with
 * it. (a) The base differs only in bytes no record reads (its metadata;
 * the target's comes from the delta): the rebuilt file is the target
 * exactly, yet the base's hash is not the delta's. (b) It differs in the
 * tensor a PATCH record reads: the rebuilt tensor fails its hash, and the
 * error still names the base. */
static void delta_wrong_base_is_refused_however_the_rebuild_ends(void **state)
{
    fixture *f = *state;
    model_spec b = {.seed = 1, .name_kv = "base-A"}, t = {.seed = 1, .seed_ffn = 3};
    model_spec meta_only = {.seed = 1, .name_kv = "base-B"}, ffn = {.seed = 1, .seed_ffn = 7,
                                                                     .name_kv = "base-A"};
    write_model(f->base, &b);
    write_model(f->target, &t);
    char err[256];
    ota_delta_stats st;
    assert_int_equal(ota_delta_diff(f->base, f->target, f->delta, NULL, &st, err), OTA_OK);
    assert_int_equal(st.n_same, N_TENSORS - 1);
    const model_spec *wrong[] = {&meta_only, &ffn};
    for (size_t i = 0; i < 2; i++) {
        size_t n_before, n_after;
        free(slurp(f->base, &n_before));
        write_model(f->base, wrong[i]);
        free(slurp(f->base, &n_after));
        assert_int_equal(n_before, n_after); /* same size: only the hash tells */
        spill(f->out, "old model", 9);
        err[0] = '\0';
        assert_int_equal(ota_delta_patch(f->base, f->delta, f->out, NULL, err), OTA_DELTA_EBASE);
        assert_non_null(strstr(err, "wrong base"));
        assert_false(exists(f->out_tmp));
        size_t n;
        unsigned char *p = slurp(f->out, &n);
        assert_int_equal(n, 9);
        assert_memory_equal(p, "old model", 9);
        free(p);
    }
    /* The right base again: the same delta applies. */
    write_model(f->base, &b);
    assert_int_equal(ota_delta_patch(f->base, f->delta, f->out, NULL, err), OTA_OK);
    assert_same_file(f->out, f->target);
}

/* SAME tensors are copied file to file (copy_file_range) where the kernel
 * can, else written from the map: a base on another file system (tmpfs
 * /dev/shm, when there is one) takes whichever path works, and the output
 * is still the target byte for byte. */
static void delta_same_tensors_copy_across_file_systems(void **state)
{
    fixture *f = *state;
    model_spec b = {.seed = 1}, t = {.seed = 1, .seed_ffn = 2};
    write_model(f->base, &b);
    write_model(f->target, &t);
    char err[256];
    assert_int_equal(ota_delta_diff(f->base, f->target, f->delta, NULL, NULL, err), OTA_OK);
    char shm_base[64];
    snprintf(shm_base, sizeof shm_base, "/dev/shm/ota-delta-base-%ld.gguf", (long)getpid());
    size_t n;
    unsigned char *p = slurp(f->base, &n);
    FILE *fp = fopen(shm_base, "wb");
    if (fp) {
        assert_int_equal(fwrite(p, 1, n, fp), n);
        fclose(fp);
        assert_int_equal(ota_delta_patch(shm_base, f->delta, f->out, NULL, err), OTA_OK);
        assert_same_file(f->out, f->target);
        unlink(shm_base);
    }
    free(p);
    /* And on the same file system. */
    unlink(f->out);
    assert_int_equal(ota_delta_patch(f->base, f->delta, f->out, NULL, err), OTA_OK);
    assert_same_file(f->out, f->target);
}

static void delta_truncated_is_refused_without_output(void **state)
{
    fixture *f = *state;
    model_spec b = {.seed = 1}, t = {.seed = 1, .noise = 0.05, .noise_seed = 2};
    write_model(f->base, &b);
    write_model(f->target, &t);
    char err[256];
    assert_int_equal(ota_delta_diff(f->base, f->target, f->delta, NULL, NULL, err), OTA_OK);
    size_t n;
    unsigned char *d = slurp(f->delta, &n);
    size_t cuts[] = {0, 7, OTA_DELTA_HEADER_BYTES - 1, OTA_DELTA_HEADER_BYTES + 3, n / 3, n / 2,
                     n - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        spill(f->delta, d, cuts[i]);
        err[0] = '\0';
        int rc = ota_delta_patch(f->base, f->delta, f->out, NULL, err);
        assert_int_not_equal(rc, OTA_OK);
        assert_true(err[0] != '\0');
        assert_null(strchr(err, '\n'));
        assert_false(exists(f->out));
        assert_false(exists(f->out_tmp));
    }
    /* One byte too many is refused too. */
    unsigned char *longer = malloc(n + 1);
    assert_non_null(longer);
    memcpy(longer, d, n);
    longer[n] = 0;
    spill(f->delta, longer, n + 1);
    assert_int_equal(ota_delta_patch(f->base, f->delta, f->out, NULL, err), OTA_EFORMAT);
    assert_false(exists(f->out));
    free(longer);
    free(d);
}

static void delta_corrupted_is_refused_without_output(void **state)
{
    fixture *f = *state;
    model_spec b = {.seed = 1}, t = {.seed = 1, .noise = 0.05, .noise_seed = 2, .name_kv = "t"};
    write_model(f->base, &b);
    write_model(f->target, &t);
    char err[256];
    assert_int_equal(ota_delta_diff(f->base, f->target, f->delta, NULL, NULL, err), OTA_OK);
    size_t n;
    unsigned char *d = slurp(f->delta, &n);
    /* Every 211th byte flipped in turn: header, meta, record headers, pieces. */
    unsigned refused = 0;
    for (size_t at = 0; at < n; at += 211) {
        d[at] ^= 0x40;
        spill(f->delta, d, n);
        d[at] ^= 0x40;
        err[0] = '\0';
        int rc = ota_delta_patch(f->base, f->delta, f->out, NULL, err);
        if (rc == OTA_OK) {
            /* Only possible where zstd ignores the byte; the output must
             * then still be the target exactly. */
            assert_same_file(f->out, f->target);
            unlink(f->out);
            continue;
        }
        refused++;
        assert_true(rc == OTA_EFORMAT || rc == OTA_DELTA_EHASH);
        assert_null(strchr(err, '\n'));
        assert_false(exists(f->out));
        assert_false(exists(f->out_tmp));
    }
    assert_true(refused > 0);
    /* A record's tensor hash: the rebuilt tensor does not match. */
    ota_delta_header h;
    assert_int_equal(ota_delta_header_parse(d, n, "d", &h, err), OTA_OK);
    size_t rec = OTA_DELTA_HEADER_BYTES + (size_t)h.meta_payload_bytes;
    d[rec + 56] ^= 1;
    spill(f->delta, d, n);
    assert_int_equal(ota_delta_patch(f->base, f->delta, f->out, NULL, err), OTA_DELTA_EHASH);
    assert_non_null(strstr(err, "does not match its hash"));
    assert_false(exists(f->out));
    assert_false(exists(f->out_tmp));
    free(d);
}

static void delta_not_a_gguf_is_refused_by_diff(void **state)
{
    fixture *f = *state;
    model_spec b = {.seed = 1};
    write_model(f->base, &b);
    spill(f->target, "GGUF but not really", 19);
    char err[256];
    assert_int_not_equal(ota_delta_diff(f->base, f->target, f->delta, NULL, NULL, err), OTA_OK);
    assert_non_null(strstr(err, f->target));
    assert_false(exists(f->delta));
}

static void delta_parsers_refuse_bad_fields(void **state)
{
    (void)state;
    char err[256];
    ota_delta_header h;
    unsigned char buf[OTA_DELTA_HEADER_BYTES] = {0};
    assert_int_equal(ota_delta_header_parse(buf, sizeof buf, "x", &h, err), OTA_EFORMAT);
    assert_non_null(strstr(err, "magic"));
    memcpy(buf, OTA_DELTA_MAGIC, 8);
    assert_int_equal(ota_delta_header_parse(buf, sizeof buf, "x", &h, err), OTA_EFORMAT);
    assert_non_null(strstr(err, "header hash"));
    ota_delta_record r;
    unsigned char rb[OTA_DELTA_RECORD_BYTES] = {0};
    rb[0] = 9;
    assert_int_equal(ota_delta_record_parse(rb, sizeof rb, "x", &r, err), OTA_EFORMAT);
    assert_non_null(strstr(err, "kind 9"));
    rb[0] = OTA_DELTA_NEW; /* no piece size */
    memset(rb + 12, 0xFF, 4);
    assert_int_equal(ota_delta_record_parse(rb, sizeof rb, "x", &r, err), OTA_EFORMAT);
    assert_non_null(strstr(err, "piece size"));
    assert_int_equal(ota_delta_record_parse(rb, 10, "x", &r, err), OTA_EFORMAT);
}

/* ---- manifest tests ---------------------------------------------------------------- */

static void manifest_round_trips_through_text(void **state)
{
    fixture *f = *state;
    model_spec b = {.seed = 1}, t = {.seed = 1, .seed_ffn = 2};
    write_model(f->base, &b);
    write_model(f->target, &t);
    char err[256];
    assert_int_equal(ota_delta_diff(f->base, f->target, f->delta, NULL, NULL, err), OTA_OK);
    ota_manifest *m = NULL, *back = NULL;
    assert_int_equal(ota_manifest_from_file(f->delta, OTA_MANIFEST_DELTA, 7, 1024, &m, err),
                     OTA_OK);
    assert_int_equal(ota_manifest_set_health(m, "Once upon a time", "the", 40.5, err), OTA_OK);
    uint64_t dsize;
    uint8_t th[32], bh[32];
    assert_int_equal(ota_file_hash(f->target, th, NULL, err), OTA_OK);
    assert_int_equal(ota_file_hash(f->base, bh, NULL, err), OTA_OK);
    assert_int_equal(ota_file_hash(f->delta, m->payload_hash, &dsize, err), OTA_OK);
    assert_memory_equal(m->target_hash, th, 32);
    assert_memory_equal(m->base_hash, bh, 32);
    assert_int_equal(m->payload_size, dsize);
    assert_int_equal(m->n_chunks, (dsize + 1023) / 1024);
    char *text = ota_manifest_format(m);
    assert_non_null(text);
    assert_int_equal(ota_manifest_parse(text, strlen(text), "m", &back, err), OTA_OK);
    assert_int_equal(back->version, 7);
    assert_int_equal(back->kind, OTA_MANIFEST_DELTA);
    assert_memory_equal(back->chunk_hashes, m->chunk_hashes, (size_t)m->n_chunks * 32);
    assert_string_equal(back->health_prompt, "Once upon a time");
    assert_string_equal(back->health_expect, "the");
    assert_true(fabs(back->health_max_ppl - 40.5) < 1e-9);
    free(text);
    ota_manifest_free(back);
    ota_manifest_free(m);
    /* A full manifest: the payload is the target. */
    assert_int_equal(ota_manifest_from_file(f->target, OTA_MANIFEST_FULL, 8, 0, &m, err), OTA_OK);
    assert_memory_equal(m->target_hash, th, 32);
    text = ota_manifest_format(m);
    assert_non_null(text);
    assert_null(strstr(text, "\"base\""));
    assert_int_equal(ota_manifest_parse(text, strlen(text), "m", &back, err), OTA_OK);
    free(text);
    ota_manifest_free(back);
    ota_manifest_free(m);
}

#define H64 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define FILEJ "{\"hash\":\"" H64 "\",\"size\":10}"
#define PAYJ "{\"hash\":\"" H64 "\",\"size\":10,\"chunk_size\":1024,\"chunks\":[\"" H64 "\"]}"

static void manifest_parse_refuses_bad_input(void **state)
{
    (void)state;
    static const struct {
        const char *text, *want;
    } cases[] = {
        {"", "line"},
        {"[]", "expected a JSON object"},
        {"{\"version\":1,\"kind\":\"delta\",\"base\":" FILEJ ",\"target\":" FILEJ ",\"payload\":" PAYJ ",\"extra\":1}",
         "unknown field \"extra\""},
        {"{\"version\":0,\"kind\":\"delta\",\"base\":" FILEJ ",\"target\":" FILEJ ",\"payload\":" PAYJ "}",
         "version"},
        {"{\"version\":\"1\",\"kind\":\"delta\",\"base\":" FILEJ ",\"target\":" FILEJ ",\"payload\":" PAYJ "}",
         "version"},
        {"{\"version\":1,\"kind\":\"patch\",\"base\":" FILEJ ",\"target\":" FILEJ ",\"payload\":" PAYJ "}",
         "kind"},
        {"{\"version\":1,\"kind\":\"delta\",\"target\":" FILEJ ",\"payload\":" PAYJ "}",
         "missing field \"base\""},
        {"{\"version\":1,\"kind\":\"full\",\"base\":" FILEJ ",\"target\":" FILEJ ",\"payload\":" PAYJ "}",
         "full manifest has no base"},
        {"{\"version\":1,\"kind\":\"delta\",\"base\":{\"hash\":\"00\",\"size\":1},\"target\":" FILEJ ",\"payload\":" PAYJ "}",
         "base.hash"},
        {"{\"version\":1,\"kind\":\"delta\",\"base\":" FILEJ ",\"target\":" FILEJ ",\"payload\":"
         "{\"hash\":\"" H64 "\",\"size\":5000,\"chunk_size\":1024,\"chunks\":[\"" H64 "\"]}}",
         "payload.chunks"},
        {"{\"version\":1,\"kind\":\"delta\",\"base\":" FILEJ ",\"target\":" FILEJ ",\"payload\":"
         "{\"hash\":\"" H64 "\",\"size\":10,\"chunk_size\":1,\"chunks\":[\"" H64 "\"]}}",
         "chunk_size"},
        {"{\"version\":1,\"kind\":\"delta\",\"base\":" FILEJ ",\"target\":" FILEJ ",\"payload\":" PAYJ
         ",\"health\":{\"prompt\":\"\"}}",
         "health.prompt"},
        {"{\"version\":1,\"kind\":\"delta\",\"base\":" FILEJ ",\"target\":" FILEJ ",\"payload\":" PAYJ
         ",\"health\":{\"prompt\":\"hi\",\"max_ppl\":-1}}",
         "max_ppl"},
        {"{\"version\":1,\"kind\":\"delta\",\"base\":" FILEJ ",\"target\":" FILEJ ",\"payload\":" PAYJ
         ",\"health\":{\"expect_substring\":\"x\"}}",
         "prompt"},
        {"{\"version\":1,\"version\":2,\"kind\":\"delta\"}", "duplicate"},
        {"{\"version\":1,\"kind\":\"full\",\"target\":" FILEJ ",\"payload\":"
         "{\"hash\":\"" H64 "\",\"size\":11,\"chunk_size\":1024,\"chunks\":[\"" H64 "\"]}}",
         "payload must be its target"},
    };
    char err[256];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ota_manifest *m = (ota_manifest *)1;
        int rc = ota_manifest_parse(cases[i].text, strlen(cases[i].text), "m.json", &m, err);
        if (rc == OTA_OK || !strstr(err, cases[i].want))
            fail_msg("case %zu: rc %d, err \"%s\", wanted \"%s\"", i, rc, err, cases[i].want);
        assert_null(m);
        assert_null(strchr(err, '\n'));
    }
    /* And the good one of the same shape parses. */
    const char *ok = "{\"version\":1,\"kind\":\"delta\",\"base\":" FILEJ ",\"target\":" FILEJ
                     ",\"payload\":" PAYJ ",\"health\":{\"prompt\":\"hi\"}}";
    ota_manifest *m = NULL;
    assert_int_equal(ota_manifest_parse(ok, strlen(ok), "m.json", &m, err), OTA_OK);
    assert_int_equal(m->n_chunks, 1);
    assert_null(m->health_expect);
    ota_manifest_free(m);
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(delta_identical_models_are_all_same),
        T(delta_one_changed_tensor_is_patched_others_same),
        T(delta_new_tensor_is_new),
        T(delta_fine_tune_uses_qdiff_and_is_smaller),
        T(delta_small_pieces_and_other_alignment_round_trip),
        T(delta_wrong_base_is_refused_out_untouched),
        T(delta_wrong_base_is_refused_however_the_rebuild_ends),
        T(delta_same_tensors_copy_across_file_systems),
        T(delta_truncated_is_refused_without_output),
        T(delta_corrupted_is_refused_without_output),
        T(delta_not_a_gguf_is_refused_by_diff),
        T(delta_parsers_refuse_bad_fields),
        T(manifest_round_trips_through_text),
        T(manifest_parse_refuses_bad_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
