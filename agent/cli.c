/*
 * cli.c - helpers shared by the outpost subcommands (see cli.h).
 */
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void cli_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "outpost %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

int cli_bad_option(const char *cmd, char **argv, int ret)
{
    const char *arg = argv[optind - 1];
    if (ret == ':')
        cli_error(cmd, "option '%s' needs a value (see 'outpost %s --help')", arg, cmd);
    else if (optopt && strncmp(arg, "--", 2) != 0)
        cli_error(cmd, "unknown option '-%c' (see 'outpost %s --help')", optopt, cmd);
    else
        cli_error(cmd, "unknown option '%s' (see 'outpost %s --help')", arg, cmd);
    return CLI_USAGE;
}

bool cli_parse_long(const char *cmd, const char *flag, const char *s, long lo, long hi,
                    long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end != '\0' || v < lo || v > hi) {
        cli_error(cmd, "%s: '%s' is not a whole number in %ld..%ld", flag, s, lo, hi);
        return false;
    }
    *out = v;
    return true;
}

bool cli_parse_u64(const char *cmd, const char *flag, const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end != '\0' || s[0] == '-') {
        cli_error(cmd, "%s: '%s' is not a non-negative whole number", flag, s);
        return false;
    }
    *out = v;
    return true;
}

bool cli_parse_float(const char *cmd, const char *flag, const char *s, double lo, double hi,
                     float *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end != '\0' || !isfinite(v) || v < lo || v > hi) {
        cli_error(cmd, "%s: '%s' is not a number in %g..%g", flag, s, lo, hi);
        return false;
    }
    *out = (float)v;
    return true;
}

char *cli_read_file(const char *cmd, const char *path, size_t *len)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) {
        cli_error(cmd, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (n + 1 >= cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0)
            break;
    }
    bool bad = !buf || ferror(f);
    if (f != stdin)
        fclose(f);
    if (bad) {
        cli_error(cmd, "%s: %s", path, buf ? "read error" : "out of memory");
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

double cli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

bool cli_in_build_tree(void)
{
#ifdef OUTPOST_BUILD_DIR
    char exe[4096], built[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return false;
    exe[n] = '\0';
    return realpath(OUTPOST_BUILD_DIR "/agent/outpost", built) && strcmp(exe, built) == 0;
#else
    return false;
#endif
}

char *cli_seckey_password(const char *cmd, const char *file, bool *bad)
{
    *bad = false;
    if (file) {
        size_t len;
        char *text = cli_read_file(cmd, file, &len);
        if (!text) {
            *bad = true;
            return NULL;
        }
        text[strcspn(text, "\r\n")] = '\0';
        return text;
    }
    const char *env = getenv("OUTPOST_OTA_PASSWORD");
    if (!env)
        return NULL;
    char *copy = strdup(env);
    if (!copy) {
        cli_error(cmd, "out of memory");
        *bad = true;
    }
    return copy;
}
