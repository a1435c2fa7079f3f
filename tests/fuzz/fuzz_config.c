/*
 * fuzz_config.c - libFuzzer target for the config file reader (agent/config.c).
 *
 * Each input is run as a config file (cfg_load_string: Lua text run as data
 * in a library-less state under the instruction limit and the memory cap)
 * over the built-in defaults. A refusal must come with a known result code
 * and one error line (non-empty, shorter than the buffer, no control bytes).
 * An accepted file must leave a cfg whose promises hold (absolute paths,
 * ports and modes in range; exactly one default model once cfg_validate
 * accepts it), that cfg_validate judges without crashing, that cfg_dump
 * prints, and, once validated, whose dump reads back as a config file
 * giving the same dump again (comments aside: they say where each value
 * came from). A broken promise aborts with a message, which libFuzzer
 * reports as a crash.
 *
 * The input buffer belongs to libFuzzer and is not NUL-terminated; the
 * reader gets its length.
 */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

#define FUZZ_CHECK(cond)                                                             \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "fuzz_config: broken promise: %s (%s:%d)\n", #cond,      \
                    __FILE__, __LINE__);                                             \
            abort();                                                                 \
        }                                                                            \
    } while (0)

static void check_err_line(const char *err)
{
    size_t n = strnlen(err, 256);
    FUZZ_CHECK(n > 0 && n < 256);
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK((unsigned char)err[i] >= 0x20 && (unsigned char)err[i] != 0x7f);
}

static void check_path(const char *p)
{
    if (p)
        FUZZ_CHECK(p[0] == '/');
}

/* What holds of any cfg that loaded; `valid`: also passed cfg_validate. */
static void check_cfg(const cfg *c, bool valid)
{
    size_t n_default = 0;
    for (size_t i = 0; i < c->n_models; i++) {
        const cfg_model *m = &c->models[i];
        /* A name made from a path ending in '/' is empty: cfg_validate refuses it. */
        FUZZ_CHECK(m->name && strlen(m->name) <= CFG_MODEL_NAME_MAX);
        if (valid)
            FUZZ_CHECK(m->name[0] != '\0');
        FUZZ_CHECK(m->path);
        check_path(m->path);
        FUZZ_CHECK(m->ctx >= 0 && m->threads >= 0);
        FUZZ_CHECK(m->kv_type == QT_F16 || m->kv_type == QT_Q8_0);
        n_default += m->is_default;
        FUZZ_CHECK(cfg_find_model(c, m->name) != NULL);
    }
    if (valid) /* several `default = true` load, and cfg_validate refuses them */
        FUZZ_CHECK(c->n_models > 0 && n_default == 1 && cfg_default_model(c) != NULL);
    check_path(c->listen.socket);
    check_path(c->state_dir);
    check_path(c->policy.file);
    check_path(c->policy.lua_dir);
    check_path(c->plugins.dir);
    check_path(c->sensors.root);
    FUZZ_CHECK(c->listen.socket_mode <= 07777);
    if (c->listen.tcp)
        FUZZ_CHECK(c->listen.tcp_host && c->listen.tcp_port >= 1 && c->listen.tcp_port <= 65535);
    FUZZ_CHECK(isnan(c->cloud.budget_usd_month) || c->cloud.budget_usd_month >= 0);
}

/* cfg_dump into a malloc'd string, with each line cut at its comment. The
 * comments (the schema's documentation, and where a value came from, which
 * reading the dump back changes to "the config file") are the only part
 * that may differ; a quoted value never holds "--" followed by a comment,
 * since the origin comment is always the last on its line. */
static char *dump_values(const cfg *c)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    FUZZ_CHECK(f != NULL);
    cfg_dump(c, f);
    FUZZ_CHECK(fclose(f) == 0);
    char *out = malloc(len + 1);
    FUZZ_CHECK(out != NULL);
    size_t o = 0;
    for (char *line = text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        size_t n = next ? (size_t)(next - line) : strlen(line);
        if (next)
            next++;
        /* The last "--" of the line: an origin or documentation comment. */
        size_t cut = n;
        for (size_t i = 0; i + 1 < n; i++)
            if (line[i] == '-' && line[i + 1] == '-')
                cut = i;
        while (cut > 0 && line[cut - 1] == ' ')
            cut--;
        if (cut == 0)
            continue;
        memcpy(out + o, line, cut);
        o += cut;
        out[o++] = '\n';
    }
    out[o] = '\0';
    free(text);
    return out;
}

/* The dump as a config file, over fresh defaults. */
static char *dump_round_trip(const cfg *c, char *first)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    FUZZ_CHECK(f != NULL);
    cfg_dump(c, f);
    FUZZ_CHECK(fclose(f) == 0);
    cfg *back = NULL;
    char err[256] = "";
    FUZZ_CHECK(cfg_new(&back, err) == CFG_OK);
    int rc = cfg_load_string(back, text, len, "dump.lua", err);
    if (rc != CFG_OK) {
        fprintf(stderr, "fuzz_config: the dump does not read back: %s\n%s\n", err, text);
        abort();
    }
    check_cfg(back, false);
    char *second = dump_values(back);
    if (strcmp(first, second) != 0) {
        fprintf(stderr, "fuzz_config: the dump read back dumps differently:\n%s\n---\n%s\n",
                first, second);
        abort();
    }
    free(text);
    cfg_free(back);
    return second;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cfg *c = NULL;
    char err[256] = "";
    if (cfg_new(&c, err) != CFG_OK)
        return 0; /* the environment, not the input */
    memset(err, 0, sizeof err);
    int rc = cfg_load_string(c, (const char *)data, size, "fuzz.lua", err);
    switch (rc) {
    case CFG_OK:
        break;
    case CFG_ESYNTAX:
    case CFG_ERUNTIME:
    case CFG_EINSTR:
    case CFG_EMEM:
    case CFG_ETYPE:
    case CFG_EUNKNOWN:
    case CFG_EVALUE:
    case CFG_ENOMEM:
        check_err_line(err);
        cfg_free(c);
        return 0;
    default:
        fprintf(stderr, "fuzz_config: unexpected result %d: %s\n", rc, err);
        abort();
    }
    check_cfg(c, false);
    memset(err, 0, sizeof err);
    char *first = dump_values(c);
    if (cfg_validate(c, err) != CFG_OK) {
        check_err_line(err);
    } else {
        /* The effective configuration, as `outpost serve` would run it,
         * reads back as itself. (One cfg_validate refuses need not: a model
         * named "" by its path dumps as name = "", which the reader refuses.) */
        check_cfg(c, true);
        free(dump_round_trip(c, first));
    }
    free(first);
    cfg_free(c);
    return 0;
}
