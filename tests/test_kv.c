/*
 * test_kv.c - saved KV states (engine/kv_state.c): a state written by one
 * context and read into another gives bit-identical logits to a fresh
 * prefill, for F16 and Q8_0 caches; every kind of bad file (truncated,
 * appended to, corrupt rows, bad magic or version, token ids outside the
 * vocabulary, another model, another KV type, more positions than the
 * context) is refused with an error naming the file and the fault, and
 * never crashes or leaves the context unusable.
 *
 * Two models: stories260K (head size 8, so F16 only) and a random-weight
 * Llama written here with a head size of 32, which Q8_0 rows need.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine.h"

#define STORIES OUTPOST_SHARED "/models/stories260K.gguf"

typedef struct fixture {
    char dir[64];
    char synth_path[128];
    eng_model *stories, *synth;
} fixture;

static uint64_t rng = 99;
static float frand(void)
{
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
}

/* A two-layer Llama with 2 heads of 32 (one KV head) and the stories260K
 * vocabulary; random F32 weights. */
static void write_synth(const char *path)
{
    enum { E = 64, L = 2, FF = 96, KVD = 32 };
    char err[256];
    gguf *voc;
    assert_int_equal(gguf_open(&voc, STORIES, err), 0);
    uint64_t nv;
    assert_non_null(gguf_get_arr(voc, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &nv));
    gguf_writer *w = gguf_writer_new();
    assert_non_null(w);
    assert_int_equal(gguf_writer_copy_kv(w, voc, "tokenizer."), 0);
    assert_int_equal(gguf_writer_set_str(w, "general.architecture", "llama"), 0);
    assert_int_equal(gguf_writer_set_u32(w, "llama.context_length", 256), 0);
    assert_int_equal(gguf_writer_set_u32(w, "llama.embedding_length", E), 0);
    assert_int_equal(gguf_writer_set_u32(w, "llama.block_count", L), 0);
    assert_int_equal(gguf_writer_set_u32(w, "llama.feed_forward_length", FF), 0);
    assert_int_equal(gguf_writer_set_u32(w, "llama.attention.head_count", 2), 0);
    assert_int_equal(gguf_writer_set_u32(w, "llama.attention.head_count_kv", 1), 0);
    assert_int_equal(gguf_writer_set_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f), 0);
    typedef struct { const char *name; int64_t ne0, ne1; } tensor;
    tensor t[3 + 9 * L];
    size_t n = 0;
    t[n++] = (tensor){"token_embd.weight", E, (int64_t)nv};
    t[n++] = (tensor){"output_norm.weight", E, 1};
    t[n++] = (tensor){"output.weight", E, (int64_t)nv};
    static char names[9 * L][40];
    static const char *const parts[9] = {"attn_norm", "attn_q", "attn_k", "attn_v",
                                         "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
                                         "ffn_down"};
    const int64_t shape[9][2] = {{E, 1}, {E, E}, {E, KVD}, {E, KVD}, {E, E},
                                 {E, 1}, {E, FF}, {E, FF}, {FF, E}};
    for (int l = 0; l < L; l++)
        for (int p = 0; p < 9; p++) {
            char *nm = names[l * 9 + p];
            snprintf(nm, 40, "blk.%d.%s.weight", l, parts[p]);
            t[n++] = (tensor){nm, shape[p][0], shape[p][1]};
        }
    for (size_t i = 0; i < n; i++) {
        int64_t ne[2] = {t[i].ne0, t[i].ne1};
        assert_true(gguf_writer_add_tensor(w, t[i].name, t[i].ne1 > 1 ? 2 : 1, ne, QT_F32, err) >=
                    0);
    }
    assert_int_equal(gguf_writer_begin(w, path, err), 0);
    for (size_t i = 0; i < n; i++) {
        size_t cnt = (size_t)(t[i].ne0 * t[i].ne1);
        float *v = malloc(cnt * sizeof *v);
        assert_non_null(v);
        bool norm = t[i].ne1 == 1;
        for (size_t k = 0; k < cnt; k++)
            v[k] = norm ? 1.0f + 0.2f * frand() : 0.25f * frand();
        assert_int_equal(gguf_writer_write_tensor(w, v, cnt * sizeof *v, err), 0);
        free(v);
    }
    assert_int_equal(gguf_writer_finish(w, err), 0);
    gguf_writer_free(w);
    gguf_close(voc);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/test_kv.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->synth_path, sizeof f->synth_path, "%s/synth.gguf", f->dir);
    write_synth(f->synth_path);
    char err[256];
    assert_int_equal(eng_model_open(&f->stories, STORIES, err), 0);
    if (eng_model_open(&f->synth, f->synth_path, err))
        fail_msg("%s", err);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    eng_model_close(f->stories);
    eng_model_close(f->synth);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

static eng_ctx *new_ctx(const eng_model *m, int32_t n_ctx, qt_type kv)
{
    eng_ctx_params p = eng_ctx_params_default();
    p.n_ctx = n_ctx;
    p.n_threads = 2;
    p.kv_type = kv;
    eng_ctx *c;
    char err[256];
    if (eng_ctx_new(&c, m, &p, err))
        fail_msg("%s", err);
    return c;
}

/* A deterministic prompt of n ids inside the vocabulary. */
static void prompt_ids(const eng_model *m, int32_t *ids, int n)
{
    int32_t nv = eng_model_hparams(m)->n_vocab;
    for (int i = 0; i < n; i++)
        ids[i] = (int32_t)((i * 37 + 11) % nv);
    ids[0] = 1;
}

enum { N_PROMPT = 40 };

/* Prefill N_PROMPT tokens in a fresh context and save them to path. */
static eng_ctx *prefill_and_save(const eng_model *m, qt_type kv, const char *path, int32_t *ids)
{
    char err[256];
    eng_ctx *c = new_ctx(m, 128, kv);
    prompt_ids(m, ids, N_PROMPT + 1);
    assert_int_equal(eng_eval(c, ids, N_PROMPT, false, err), 0);
    if (eng_kv_save(c, path, ids, N_PROMPT, err))
        fail_msg("%s", err);
    return c;
}

static void round_trip(const fixture *f, const eng_model *m, qt_type kv, int32_t n_ctx_load)
{
    char path[128], err[256];
    snprintf(path, sizeof path, "%s/rt.kv", f->dir);
    int32_t ids[N_PROMPT + 1];
    eng_ctx *a = prefill_and_save(m, kv, path, ids);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal((uint64_t)st.st_size, eng_kv_file_bytes(a, N_PROMPT));
    assert_int_equal(st.st_mode & 0777, 0600);

    /* The fresh prefill continues with one more token. */
    assert_int_equal(eng_eval(a, ids + N_PROMPT, 1, false, err), 0);
    int32_t nv = eng_model_hparams(m)->n_vocab;

    eng_ctx *b = new_ctx(m, n_ctx_load, kv);
    int32_t *got = NULL, n_got = 0;
    if (eng_kv_load(b, path, &got, &n_got, err))
        fail_msg("%s", err);
    assert_int_equal(n_got, N_PROMPT);
    assert_int_equal(eng_n_past(b), N_PROMPT);
    assert_memory_equal(got, ids, N_PROMPT * sizeof *ids);
    assert_int_equal(eng_eval(b, ids + N_PROMPT, 1, false, err), 0);
    assert_memory_equal(eng_logits(b, -1), eng_logits(a, -1), (size_t)nv * sizeof(float));
    free(got);
    eng_ctx_free(a);
    eng_ctx_free(b);
}

static void f16_round_trip_gives_identical_logits(void **state)
{
    fixture *f = *state;
    round_trip(f, f->stories, QT_F16, 128);
    round_trip(f, f->synth, QT_F16, 128);
}

static void q8_0_round_trip_gives_identical_logits(void **state)
{
    fixture *f = *state;
    round_trip(f, f->synth, QT_Q8_0, 128);
}

static void state_restores_into_a_context_of_another_size(void **state)
{
    fixture *f = *state;
    round_trip(f, f->stories, QT_F16, 256);
}

/* Copy src to dst, keeping the first `keep` bytes (all when keep < 0),
 * then xor byte `flip_at` (when >= 0) with 0x01 and append `extra` bytes. */
static void copy_damaged(const char *src, const char *dst, long keep, long flip_at, int extra)
{
    FILE *in = fopen(src, "rb");
    assert_non_null(in);
    fseek(in, 0, SEEK_END);
    long size = ftell(in);
    rewind(in);
    unsigned char *buf = malloc((size_t)size + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)size, in), (size_t)size);
    fclose(in);
    if (flip_at >= 0)
        buf[flip_at] ^= 0x01;
    FILE *out = fopen(dst, "wb");
    assert_non_null(out);
    size_t n = keep >= 0 && keep < size ? (size_t)keep : (size_t)size;
    assert_int_equal(fwrite(buf, 1, n, out), n);
    for (int i = 0; i < extra; i++)
        fputc(0, out);
    fclose(out);
    free(buf);
}

/* Loading `path` into c fails with ENG_EFORMAT and an error that names the
 * file and contains `what`. */
static void assert_refused(eng_ctx *c, const char *path, const char *what)
{
    char err[256] = "";
    int32_t *toks = (int32_t *)(uintptr_t)1, n = -1;
    int rc = eng_kv_load(c, path, &toks, &n, err);
    if (rc != ENG_EFORMAT || !strstr(err, path) || !strstr(err, what))
        fail_msg("%s: expected a refusal naming '%s', got %d '%s'", path, what, rc, err);
    assert_null(toks);
    assert_int_equal(n, 0);
    assert_null(strchr(err, '\n'));
}

static void truncated_and_extended_files_are_refused(void **state)
{
    fixture *f = *state;
    char path[128], bad[128];
    snprintf(path, sizeof path, "%s/t.kv", f->dir);
    snprintf(bad, sizeof bad, "%s/t-bad.kv", f->dir);
    int32_t ids[N_PROMPT + 1];
    eng_ctx *a = prefill_and_save(f->stories, QT_F16, path, ids);
    long size = (long)eng_kv_file_bytes(a, N_PROMPT);
    const long cuts[] = {0, 1, 63, 64, 64 + 4 * N_PROMPT - 1, 64 + 4 * N_PROMPT, size - 1};
    eng_ctx *b = new_ctx(f->stories, 128, QT_F16);
    char err[256];
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        copy_damaged(path, bad, cuts[i], -1, 0);
        assert_refused(b, bad, "truncated");
    }
    copy_damaged(path, bad, -1, -1, 3);
    assert_refused(b, bad, "trailing bytes");
    /* The context is still whole and usable. */
    assert_int_equal(eng_eval(b, ids, 4, false, err), 0);
    assert_int_equal(eng_n_past(b), 4);
    eng_ctx_free(a);
    eng_ctx_free(b);
}

static void corrupt_files_are_refused(void **state)
{
    fixture *f = *state;
    char path[128], bad[128], err[256];
    snprintf(path, sizeof path, "%s/c.kv", f->dir);
    snprintf(bad, sizeof bad, "%s/c-bad.kv", f->dir);
    int32_t ids[N_PROMPT + 1];
    eng_ctx *a = prefill_and_save(f->stories, QT_F16, path, ids);
    long size = (long)eng_kv_file_bytes(a, N_PROMPT);
    eng_ctx *b = new_ctx(f->stories, 128, QT_F16);

    copy_damaged(path, bad, -1, 0, 0);
    assert_refused(b, bad, "bad magic");
    copy_damaged(path, bad, -1, 8, 0); /* the version's lowest bit flipped */
    char want[32];
    snprintf(want, sizeof want, "format version %d", ENG_KV_FILE_VERSION ^ 0x1);
    assert_refused(b, bad, want);
    copy_damaged(path, bad, -1, 44, 0); /* a reserved field */
    assert_refused(b, bad, "reserved");
    copy_damaged(path, bad, -1, 16, 0); /* the identity */
    assert_refused(b, bad, "another model");
    /* A token id far outside the vocabulary: the top byte of token 3. */
    copy_damaged(path, bad, -1, 64 + 4 * 3 + 2, 0);
    assert_refused(b, bad, "token 3 is");

    /* A header refusal leaves the cache as it was. */
    assert_int_equal(eng_eval(b, ids, 7, false, err), 0);
    copy_damaged(path, bad, -1, 0, 0);
    assert_refused(b, bad, "bad magic");
    assert_int_equal(eng_n_past(b), 7);

    /* One bit of one row, first, middle and last: the checksum. */
    const long at[] = {64 + 4 * N_PROMPT, size / 2, size - 1};
    for (size_t i = 0; i < 3; i++) {
        copy_damaged(path, bad, -1, at[i], 0);
        assert_refused(b, bad, "checksum mismatch");
        assert_int_equal(eng_n_past(b), 0);
        /* and the context evaluates normally afterwards */
        assert_int_equal(eng_eval(b, ids, 3, false, err), 0);
    }
    /* The undamaged file still loads into the same context. */
    int32_t *toks, n;
    if (eng_kv_load(b, path, &toks, &n, err))
        fail_msg("%s", err);
    assert_int_equal(n, N_PROMPT);
    free(toks);
    eng_ctx_free(a);
    eng_ctx_free(b);
}

static void state_of_another_model_or_kv_type_is_refused(void **state)
{
    fixture *f = *state;
    char stories_kv[128], synth_kv[128];
    snprintf(stories_kv, sizeof stories_kv, "%s/stories.kv", f->dir);
    snprintf(synth_kv, sizeof synth_kv, "%s/synth.kv", f->dir);
    int32_t ids[N_PROMPT + 1];
    eng_ctx *a = prefill_and_save(f->stories, QT_F16, stories_kv, ids);
    eng_ctx *s = prefill_and_save(f->synth, QT_F16, synth_kv, ids);

    eng_ctx *synth_f16 = new_ctx(f->synth, 128, QT_F16);
    assert_refused(synth_f16, stories_kv, "another model");
    eng_ctx *stories = new_ctx(f->stories, 128, QT_F16);
    assert_refused(stories, synth_kv, "another model");
    eng_ctx *synth_q8 = new_ctx(f->synth, 128, QT_Q8_0);
    assert_refused(synth_q8, synth_kv, "KV type f16; this context stores q8_0");
    /* More positions than the context has. */
    eng_ctx *small = new_ctx(f->stories, 32, QT_F16);
    assert_refused(small, stories_kv, "n_tokens 40; this context holds 1 to 32");

    eng_ctx_free(a);
    eng_ctx_free(s);
    eng_ctx_free(synth_f16);
    eng_ctx_free(stories);
    eng_ctx_free(synth_q8);
    eng_ctx_free(small);
}

static void peek_reads_tokens_and_leaves_the_cache(void **state)
{
    fixture *f = *state;
    char path[128], err[256];
    snprintf(path, sizeof path, "%s/p.kv", f->dir);
    int32_t ids[N_PROMPT + 1];
    eng_ctx *a = prefill_and_save(f->stories, QT_F16, path, ids);
    eng_ctx *b = new_ctx(f->stories, 128, QT_F16);
    assert_int_equal(eng_eval(b, ids, 5, false, err), 0);
    int32_t *toks = NULL, n = 0;
    if (eng_kv_peek(b, path, &toks, &n, err))
        fail_msg("%s", err);
    assert_int_equal(n, N_PROMPT);
    assert_memory_equal(toks, ids, N_PROMPT * sizeof *ids);
    assert_int_equal(eng_n_past(b), 5);
    free(toks);
    eng_ctx_free(a);
    eng_ctx_free(b);
}

static void save_checks_its_arguments_and_replaces_atomically(void **state)
{
    fixture *f = *state;
    char path[128], err[256];
    snprintf(path, sizeof path, "%s/s.kv", f->dir);
    int32_t ids[N_PROMPT + 1];
    eng_ctx *a = prefill_and_save(f->stories, QT_F16, path, ids);
    /* More positions than the cache holds, or none. */
    assert_int_equal(eng_kv_save(a, path, ids, N_PROMPT + 1, err), ENG_EUSAGE);
    assert_non_null(strstr(err, "cannot save 41 positions of a cache holding 40"));
    assert_int_equal(eng_kv_save(a, path, ids, 0, err), ENG_EUSAGE);
    /* A shorter state replaces the file whole; no temporary is left. */
    assert_int_equal(eng_kv_save(a, path, ids, 10, err), 0);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal((uint64_t)st.st_size, eng_kv_file_bytes(a, 10));
    char cmd[256];
    snprintf(cmd, sizeof cmd, "ls %s | grep -q tmp", f->dir);
    assert_int_not_equal(system(cmd), 0);
    /* A directory that does not exist: an I/O error naming the path. */
    char nodir[160];
    snprintf(nodir, sizeof nodir, "%s/none/x.kv", f->dir);
    assert_int_equal(eng_kv_save(a, nodir, ids, 10, err), ENG_EIO);
    assert_non_null(strstr(err, nodir));
    /* A missing file: an I/O error, not a format error. */
    int32_t *toks, n;
    assert_int_equal(eng_kv_load(a, nodir, &toks, &n, err), ENG_EIO);
    assert_non_null(strstr(err, "No such file"));
    eng_ctx_free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(f16_round_trip_gives_identical_logits),
        cmocka_unit_test(q8_0_round_trip_gives_identical_logits),
        cmocka_unit_test(state_restores_into_a_context_of_another_size),
        cmocka_unit_test(truncated_and_extended_files_are_refused),
        cmocka_unit_test(corrupt_files_are_refused),
        cmocka_unit_test(state_of_another_model_or_kv_type_is_refused),
        cmocka_unit_test(peek_reads_tokens_and_leaves_the_cache),
        cmocka_unit_test(save_checks_its_arguments_and_replaces_atomically),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
