/*
 * fuzz_kv_state.c - libFuzzer target for saved KV states (engine/kv_state.c:
 * eng_kv_peek and eng_kv_load).
 *
 * At start the harness opens stories260K (from ../shared, or
 * $OUTPOST_SHARED), evaluates a few tokens in a 16-position context and
 * saves that state: the template. The first input byte picks what the file
 * is: the rest of the input as it stands, or the template with the rest of
 * the input xor'ed over its header (to reach the checks behind the magic
 * and version), or over its token ids and rows (to reach the token checks
 * and the checksum). The state's promises (engine.h) are then checked:
 *   - peek and load agree on every check before the rows: a file peek
 *     refuses, load refuses too; a file load accepts, peek accepts with the
 *     same tokens;
 *   - a refusal leaves no tokens, a count of 0 and one error line naming the
 *     file, and the context as it was, or empty once rows were being read;
 *   - an accepted file gives 1..n_ctx tokens inside the vocabulary, n_past
 *     equal to their count, and saving the context again writes the same
 *     bytes: a load restores exactly what the file holds.
 * A broken promise aborts with a message, which libFuzzer reports.
 *
 * Files live in /dev/shm (or $TMPDIR) under per-process names.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine.h"

#ifndef OUTPOST_SHARED
#define OUTPOST_SHARED "../shared"
#endif

#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_kv_state: broken promise: %s (%s:%d)\n", #cond, __FILE__,        \
                    __LINE__);                                                                     \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define N_CTX 16
#define N_TEMPLATE 5
#define HDR_BYTES 64

static eng_model *model;
static eng_ctx *ctx;
static uint8_t *tmpl;
static size_t tmpl_len;
static char in_path[256], out_path[256];

static void die(const char *what, const char *err)
{
    fprintf(stderr, "fuzz_kv_state: %s: %s\n", what, err);
    exit(1);
}

static uint8_t *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    uint8_t *buf = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n >= 0 && fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n + 1)) &&
            fread(buf, 1, (size_t)n, f) != (size_t)n) {
            free(buf);
            buf = NULL;
        }
        *len = (size_t)(n >= 0 ? n : 0);
    }
    fclose(f);
    return buf;
}

static void write_file(const char *path, const uint8_t *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f || (len && fwrite(data, 1, len, f) != len) || fclose(f))
        die(path, "cannot write the input");
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char err[256], path[512];
    const char *shared = getenv("OUTPOST_SHARED");
    snprintf(path, sizeof path, "%s/models/stories260K.gguf", shared ? shared : OUTPOST_SHARED);
    if (eng_model_open(&model, path, err))
        die(path, err);
    eng_ctx_params p = eng_ctx_params_default();
    p.n_ctx = N_CTX;
    p.n_threads = 1;
    if (eng_ctx_new(&ctx, model, &p, err))
        die("context", err);
    const char *dir = getenv("TMPDIR");
    if (access("/dev/shm", W_OK) == 0)
        dir = "/dev/shm";
    else if (!dir)
        dir = "/tmp";
    snprintf(in_path, sizeof in_path, "%s/fuzz_kv_state.%d.in", dir, (int)getpid());
    snprintf(out_path, sizeof out_path, "%s/fuzz_kv_state.%d.out", dir, (int)getpid());
    int32_t ids[N_TEMPLATE];
    const int32_t n_vocab = eng_model_hparams(model)->n_vocab;
    for (int i = 0; i < N_TEMPLATE; i++)
        ids[i] = (int32_t)((7 + 31 * i) % n_vocab);
    if (eng_eval(ctx, ids, N_TEMPLATE, false, err) || eng_kv_save(ctx, in_path, ids, N_TEMPLATE, err))
        die("template state", err);
    tmpl = read_file(in_path, &tmpl_len);
    if (!tmpl || tmpl_len != eng_kv_file_bytes(ctx, N_TEMPLATE))
        die(in_path, "cannot read the template back");
    return 0;
}

/* A refusal: no tokens, count 0, one line naming the file. */
static void check_refusal(int rc, const int32_t *tokens, int32_t n, const char *err)
{
    FUZZ_CHECK(rc != 0);
    FUZZ_CHECK(tokens == NULL);
    FUZZ_CHECK(n == 0);
    FUZZ_CHECK(memchr(err, '\0', 256) != NULL);
    FUZZ_CHECK(strchr(err, '\n') == NULL);
    FUZZ_CHECK(strstr(err, in_path) != NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const int mode = data[0] % 3;
    data++;
    size--;
    uint8_t *file;
    size_t len;
    if (mode == 0) {
        file = malloc(size + 1);
        FUZZ_CHECK(file != NULL);
        memcpy(file, data, size);
        len = size;
    } else {
        file = malloc(tmpl_len);
        FUZZ_CHECK(file != NULL);
        memcpy(file, tmpl, tmpl_len);
        len = tmpl_len;
        const size_t at = mode == 1 ? 0 : HDR_BYTES;
        for (size_t i = 0; i < size && at + i < len; i++)
            file[at + i] ^= data[i];
    }
    write_file(in_path, file, len);

    char err[256];
    int32_t *ptoks = (int32_t *)(uintptr_t)1, pn = -1;
    memset(err, 0, sizeof err);
    const int prc = eng_kv_peek(ctx, in_path, &ptoks, &pn, err);
    if (prc)
        check_refusal(prc, ptoks, pn, err);

    const int32_t before = eng_n_past(ctx);
    int32_t *toks = (int32_t *)(uintptr_t)1, n = -1;
    memset(err, 0, sizeof err);
    const int rc = eng_kv_load(ctx, in_path, &toks, &n, err);
    if (rc) {
        check_refusal(rc, toks, n, err);
        FUZZ_CHECK(eng_n_past(ctx) == before || eng_n_past(ctx) == 0);
    } else {
        /* peek refuses nothing load accepts, and reads the same tokens */
        FUZZ_CHECK(prc == 0);
        FUZZ_CHECK(n >= 1 && n <= N_CTX && n == pn);
        FUZZ_CHECK(toks != NULL && memcmp(toks, ptoks, (size_t)n * sizeof *toks) == 0);
        FUZZ_CHECK(eng_n_past(ctx) == n);
        const int32_t n_vocab = eng_model_hparams(model)->n_vocab;
        for (int32_t i = 0; i < n; i++)
            FUZZ_CHECK(toks[i] >= 0 && toks[i] < n_vocab);
        /* saving what was loaded writes the file back byte for byte */
        FUZZ_CHECK(eng_kv_save(ctx, out_path, toks, n, err) == 0);
        size_t out_len = 0;
        uint8_t *out = read_file(out_path, &out_len);
        FUZZ_CHECK(out != NULL && out_len == len && memcmp(out, file, len) == 0);
        free(out);
        unlink(out_path);
        free(toks);
    }
    if (prc == 0)
        free(ptoks);
    unlink(in_path);
    free(file);
    return 0;
}
