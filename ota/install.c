/*
 * ota/install.c - staged A/B model install (see install.h for the layout,
 * the phases and the crash-recovery rules).
 *
 * The state file is a few "key value" lines, versioned by its first line
 * and closed by a BLAKE2b checksum of everything before it, so a file
 * damaged on disk is refused (the agent then serves the factory model)
 * rather than half-believed:
 *
 *   outpost-ota-state 1
 *   active a
 *   active_version 7
 *   previous factory
 *   previous_version 0
 *   phase staging
 *   pending_slot b
 *   pending_version 8
 *   pending_hash <64 hex digits>
 *   pending_size 123456
 *   check_attempts 0
 *   pending_tag <text to the end of the line>
 *   checksum <64 hex digits>
 *
 * Every state change goes through set_state(): the new state is written
 * (temporary file, fsync, rename, fsync of the directory) before the
 * in-memory copy changes, so memory never runs ahead of the disk.
 */
#include "install.h"

#include "delta.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define STATE_MAGIC "outpost-ota-state 1"
#define COPY_CHUNK_BYTES (1 << 20)
#define PATH_MAX_BYTES 4096

struct ota_install {
    char dir[PATH_MAX_BYTES];
    char *factory_path;
    char state_path[PATH_MAX_BYTES];
    char slot_path[4][PATH_MAX_BYTES]; /* model.gguf per slot (A, B; others unused) */
    char part_path[4][PATH_MAX_BYTES]; /* model.gguf.part per slot */
    ota_install_state st;
    bool have_active_hash;
    uint8_t active_hash[OTA_HASH_BYTES];
};

static const char *const slot_names[] = {"none", "factory", "a", "b"};
static const char *const phase_names[] = {"idle", "staging", "staged", "checking"};
static const char *const outcome_names[] = {"committed", "rejected", "failed", "rolled_back"};

const char *ota_slot_name(ota_slot s)
{
    return (unsigned)s < 4 ? slot_names[s] : "?";
}

const char *ota_phase_name(ota_phase p)
{
    return (unsigned)p < 4 ? phase_names[p] : "?";
}

const char *ota_install_outcome_name(ota_install_outcome o)
{
    return (unsigned)o < 4 ? outcome_names[o] : "?";
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* ---- helpers ---------------------------------------------------------------------- */

void ota_hex_encode(const uint8_t *in, size_t n, char *out)
{
    sodium_bin2hex(out, 2 * n + 1, in, n);
}

int ota_hex_decode(const char *hex, uint8_t *out, size_t n)
{
    size_t got = 0;
    const char *end = NULL;
    if (strlen(hex) != 2 * n || sodium_hex2bin(out, n, hex, 2 * n, NULL, &got, &end) != 0 ||
        got != n || *end != '\0')
        return -1;
    return 0;
}

int ota_fsync_parent(const char *path, char err[256])
{
    char dir[PATH_MAX_BYTES];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) != 0) {
        snprintf(err, 256, "%s: cannot fsync the directory: %s", dir, strerror(errno));
        if (fd >= 0)
            close(fd);
        return OTA_EIO;
    }
    close(fd);
    return OTA_OK;
}

static int write_all(int fd, const void *data, size_t len)
{
    const uint8_t *p = data;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int ota_write_file_atomic(const char *path, const void *data, size_t len, char err[256])
{
    char tmp[PATH_MAX_BYTES + 8];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
        snprintf(err, 256, "%s: path too long", path);
        return OTA_EINVAL;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(err, 256, "%s: cannot create: %s", tmp, strerror(errno));
        return OTA_EIO;
    }
    if (write_all(fd, data, len) || fsync(fd)) {
        snprintf(err, 256, "%s: cannot write: %s", tmp, strerror(errno));
        close(fd);
        unlink(tmp);
        return OTA_EIO;
    }
    close(fd);
    if (rename(tmp, path)) {
        snprintf(err, 256, "%s: cannot rename into place: %s", path, strerror(errno));
        unlink(tmp);
        return OTA_EIO;
    }
    return ota_fsync_parent(path, err);
}

static bool file_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* ---- the state file ------------------------------------------------------------------ */

static int slot_from_name(const char *s, ota_slot *out)
{
    for (unsigned i = 0; i < 4; i++)
        if (!strcmp(s, slot_names[i])) {
            *out = (ota_slot)i;
            return 0;
        }
    return -1;
}

static int phase_from_name(const char *s, ota_phase *out)
{
    for (unsigned i = 0; i < 4; i++)
        if (!strcmp(s, phase_names[i])) {
            *out = (ota_phase)i;
            return 0;
        }
    return -1;
}

/* The state as text, checksum line included; malloc'd. */
static char *state_format(const ota_install_state *s)
{
    char hash_hex[2 * OTA_HASH_BYTES + 1];
    ota_hex_encode(s->pending_hash, OTA_HASH_BYTES, hash_hex);
    char body[1024];
    int n = snprintf(body, sizeof body,
                     STATE_MAGIC "\n"
                     "active %s\nactive_version %" PRIu64 "\n"
                     "previous %s\nprevious_version %" PRIu64 "\n"
                     "phase %s\npending_slot %s\npending_version %" PRIu64 "\n"
                     "pending_hash %s\npending_size %" PRIu64 "\ncheck_attempts %" PRIu32 "\n"
                     "pending_tag %s\n",
                     ota_slot_name(s->active), s->active_version, ota_slot_name(s->previous),
                     s->previous_version, ota_phase_name(s->phase), ota_slot_name(s->pending_slot),
                     s->pending_version, hash_hex, s->pending_size_bytes, s->check_attempts,
                     s->pending_tag);
    if (n < 0 || (size_t)n >= sizeof body)
        return NULL;
    uint8_t sum[OTA_HASH_BYTES];
    crypto_generichash(sum, sizeof sum, (const uint8_t *)body, (unsigned long long)n, NULL, 0);
    char sum_hex[2 * OTA_HASH_BYTES + 1];
    ota_hex_encode(sum, sizeof sum, sum_hex);
    size_t total = (size_t)n + sizeof "checksum \n" + sizeof sum_hex;
    char *out = malloc(total);
    if (out)
        snprintf(out, total, "%schecksum %s\n", body, sum_hex);
    return out;
}

static int parse_u64(const char *s, uint64_t *out)
{
    if (!*s || *s == '-' || *s == '+')
        return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

int ota_install_state_parse(char *text, size_t len, const char *name, ota_install_state *s,
                            char err[256])
{
    memset(s, 0, sizeof *s);
    char *sum_line = NULL;
    for (size_t i = len; i > 0; i--) {
        if (i >= 2 && text[i - 2] == '\n' && !strncmp(text + i - 1, "checksum ", 9)) {
            sum_line = text + i - 1;
            break;
        }
    }
    if (!sum_line) {
        snprintf(err, 256, "%s: no checksum line", name);
        return OTA_ESTATE;
    }
    uint8_t want[OTA_HASH_BYTES], got[OTA_HASH_BYTES];
    char *sum_hex = sum_line + 9;
    char *nl = strchr(sum_hex, '\n');
    if (nl)
        *nl = '\0';
    if (ota_hex_decode(sum_hex, want, sizeof want)) {
        snprintf(err, 256, "%s: checksum: not 64 hex digits", name);
        return OTA_ESTATE;
    }
    crypto_generichash(got, sizeof got, (const uint8_t *)text,
                       (unsigned long long)(sum_line - text), NULL, 0);
    if (sodium_memcmp(want, got, sizeof got)) {
        snprintf(err, 256, "%s: checksum does not match the contents (damaged file)", name);
        return OTA_ESTATE;
    }
    *sum_line = '\0';
    char *save = NULL;
    char *line = strtok_r(text, "\n", &save);
    if (!line || strcmp(line, STATE_MAGIC)) {
        snprintf(err, 256, "%s: line 1: expected '%s'", name, STATE_MAGIC);
        return OTA_ESTATE;
    }
    unsigned seen = 0;
    int lineno = 1;
    while ((line = strtok_r(NULL, "\n", &save))) {
        lineno++;
        char *sp = strchr(line, ' ');
        if (!sp) {
            snprintf(err, 256, "%s: line %d: expected 'key value'", name, lineno);
            return OTA_ESTATE;
        }
        *sp = '\0';
        const char *k = line, *v = sp + 1;
        uint64_t u = 0;
        int bad = 0;
        unsigned bit = 0;
        if (!strcmp(k, "active")) {
            bad = slot_from_name(v, &s->active), bit = 1;
        } else if (!strcmp(k, "active_version")) {
            bad = parse_u64(v, &s->active_version), bit = 2;
        } else if (!strcmp(k, "previous")) {
            bad = slot_from_name(v, &s->previous), bit = 4;
        } else if (!strcmp(k, "previous_version")) {
            bad = parse_u64(v, &s->previous_version), bit = 8;
        } else if (!strcmp(k, "phase")) {
            bad = phase_from_name(v, &s->phase), bit = 16;
        } else if (!strcmp(k, "pending_slot")) {
            bad = slot_from_name(v, &s->pending_slot), bit = 32;
        } else if (!strcmp(k, "pending_version")) {
            bad = parse_u64(v, &s->pending_version), bit = 64;
        } else if (!strcmp(k, "pending_hash")) {
            bad = ota_hex_decode(v, s->pending_hash, OTA_HASH_BYTES), bit = 128;
        } else if (!strcmp(k, "pending_size")) {
            bad = parse_u64(v, &s->pending_size_bytes), bit = 256;
        } else if (!strcmp(k, "check_attempts")) {
            bad = parse_u64(v, &u) || u > UINT32_MAX, bit = 512;
            s->check_attempts = (uint32_t)u;
        } else if (!strcmp(k, "pending_tag")) {
            bad = strlen(v) > OTA_INSTALL_TAG_MAX, bit = 1024;
            if (!bad)
                snprintf(s->pending_tag, sizeof s->pending_tag, "%s", v);
        } else {
            snprintf(err, 256, "%s: line %d: unknown key '%s'", name, lineno, k);
            return OTA_ESTATE;
        }
        if (bad) {
            snprintf(err, 256, "%s: line %d: %s: bad value '%s'", name, lineno, k, v);
            return OTA_ESTATE;
        }
        seen |= bit;
    }
    if (seen != 2047) {
        snprintf(err, 256, "%s: missing keys (have mask %#x of 0x7ff)", name, seen);
        return OTA_ESTATE;
    }
    /* Slots that can never hold what the state says. */
    if (s->active == OTA_SLOT_NONE ||
        (s->phase != OTA_PHASE_IDLE &&
         ((s->pending_slot != OTA_SLOT_A && s->pending_slot != OTA_SLOT_B) ||
          s->pending_slot == s->active || s->pending_slot == s->previous))) {
        snprintf(err, 256, "%s: inconsistent slots (active %s, previous %s, pending %s)", name,
                 ota_slot_name(s->active), ota_slot_name(s->previous),
                 ota_slot_name(s->pending_slot));
        return OTA_ESTATE;
    }
    return OTA_OK;
}

/* Persist s, then adopt it. */
static int set_state(ota_install *in, const ota_install_state *s, char err[256])
{
    char *text = state_format(s);
    if (!text) {
        snprintf(err, 256, "%s: out of memory", in->state_path);
        return OTA_ENOMEM;
    }
    int rc = ota_write_file_atomic(in->state_path, text, strlen(text), err);
    free(text);
    if (!rc) {
        if (s->active != in->st.active)
            in->have_active_hash = false;
        in->st = *s;
    }
    return rc;
}

static const char *slot_file(const ota_install *in, ota_slot s)
{
    switch (s) {
    case OTA_SLOT_FACTORY: return in->factory_path;
    case OTA_SLOT_A:
    case OTA_SLOT_B: return in->slot_path[s];
    default: return NULL;
    }
}

/* ---- open and recovery ----------------------------------------------------------------- */

static int mkdir_one(const char *path, char err[256])
{
    if (mkdir(path, 0700) && errno != EEXIST) {
        snprintf(err, 256, "%s: cannot create: %s", path, strerror(errno));
        return OTA_EIO;
    }
    return OTA_OK;
}

/* Remove everything in a slot directory but the model a live state names
 * (keep may be NULL: remove all). */
static int clean_slot_dir(ota_install *in, ota_slot s, bool keep_model)
{
    char dir[PATH_MAX_BYTES];
    snprintf(dir, sizeof dir, "%s/slot-%s", in->dir, ota_slot_name(s));
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        if (keep_model && !strcmp(e->d_name, "model.gguf"))
            continue;
        char p[PATH_MAX_BYTES + 256];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (unlink(p) == 0)
            n++;
    }
    closedir(d);
    return n;
}

int ota_install_open(const ota_install_opts *o, ota_install **out, ota_install_recovery *rec,
                     char err[256])
{
    *out = NULL;
    ota_install_recovery r = {0};
    if (!o || !o->dir || !o->dir[0] || strlen(o->dir) > PATH_MAX_BYTES - 64) {
        snprintf(err, 256, "ota install: no directory, or its path is too long");
        return OTA_EINVAL;
    }
    if (sodium_init() < 0) {
        snprintf(err, 256, "ota install: libsodium failed to initialise");
        return OTA_ECRYPTO;
    }
    ota_install *in = calloc(1, sizeof *in);
    if (!in || (o->factory_path && !(in->factory_path = strdup(o->factory_path)))) {
        free(in);
        snprintf(err, 256, "ota install: out of memory");
        return OTA_ENOMEM;
    }
    snprintf(in->dir, sizeof in->dir, "%s", o->dir);
    snprintf(in->state_path, sizeof in->state_path, "%s/state", in->dir);
    int rc = mkdir_one(in->dir, err);
    for (ota_slot s = OTA_SLOT_A; s <= OTA_SLOT_B && !rc; s++) {
        char dir[PATH_MAX_BYTES];
        snprintf(dir, sizeof dir, "%s/slot-%s", in->dir, ota_slot_name(s));
        rc = mkdir_one(dir, err);
        snprintf(in->slot_path[s], PATH_MAX_BYTES, "%s/model.gguf", dir);
        snprintf(in->part_path[s], PATH_MAX_BYTES, "%s/model.gguf.part", dir);
    }
    if (rc)
        goto fail;

    /* The state: missing means a fresh device (factory model, nothing
     * pending); unreadable is treated the same, loudly, since the factory
     * model is the one file known to be complete. */
    ota_install_state s = {.active = OTA_SLOT_FACTORY, .previous = OTA_SLOT_NONE};
    bool damaged = false; /* then slot models are kept: nothing says which is good */
    FILE *f = fopen(in->state_path, "rb");
    if (f) {
        char buf[4096];
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        char perr[256];
        bool not_text = n == sizeof buf - 1 || strlen(buf) != n;
        if (not_text)
            snprintf(perr, sizeof perr, "%s: not a state file", in->state_path);
        if (not_text || ota_install_state_parse(buf, n, in->state_path, &s, perr)) {
            fprintf(stderr, "ota install: %s; serving the factory model\n", perr);
            damaged = true;
            s = (ota_install_state){.active = OTA_SLOT_FACTORY, .previous = OTA_SLOT_NONE};
        }
    } else if (errno != ENOENT) {
        snprintf(err, 256, "%s: cannot read: %s", in->state_path, strerror(errno));
        rc = OTA_EIO;
        goto fail;
    }
    r.found_phase = s.phase;
    r.pending_version = s.pending_version;
    snprintf(r.pending_tag, sizeof r.pending_tag, "%s", s.pending_tag);

    /* The active model must exist; else fall back to previous, then factory. */
    if (!slot_file(in, s.active) || !file_exists(slot_file(in, s.active))) {
        r.active_missing = s.active != OTA_SLOT_FACTORY || in->factory_path;
        if (s.previous != OTA_SLOT_NONE && slot_file(in, s.previous) &&
            file_exists(slot_file(in, s.previous))) {
            s.active = s.previous;
            s.active_version = s.previous_version;
        } else {
            s.active = OTA_SLOT_FACTORY;
            s.active_version = 0;
        }
        s.previous = OTA_SLOT_NONE;
        s.previous_version = 0;
    }
    if (s.previous != OTA_SLOT_NONE &&
        (!slot_file(in, s.previous) || !file_exists(slot_file(in, s.previous)))) {
        s.previous = OTA_SLOT_NONE;
        s.previous_version = 0;
    }

    switch (s.phase) {
    case OTA_PHASE_IDLE: break;
    case OTA_PHASE_STAGING:
        r.interrupted = true;
        s.phase = OTA_PHASE_IDLE;
        break;
    case OTA_PHASE_CHECKING:
    case OTA_PHASE_STAGED:
        if (!file_exists(in->slot_path[s.pending_slot])) {
            r.interrupted = true;
            s.phase = OTA_PHASE_IDLE;
        } else if (s.phase == OTA_PHASE_CHECKING && s.check_attempts >= OTA_INSTALL_MAX_CHECKS) {
            r.rolled_back = true;
            s.phase = OTA_PHASE_IDLE;
        } else {
            r.needs_check = true;
            s.phase = OTA_PHASE_STAGED;
        }
        break;
    }
    if (s.phase == OTA_PHASE_IDLE) {
        s.pending_slot = OTA_SLOT_NONE;
        s.pending_version = 0;
        s.pending_size_bytes = 0;
        s.check_attempts = 0;
        memset(s.pending_hash, 0, sizeof s.pending_hash);
        s.pending_tag[0] = '\0';
    }
    /* Write the recovered state before touching files, so that the files
     * removed next are ones no state names. */
    in->st = (ota_install_state){.active = OTA_SLOT_FACTORY};
    if ((rc = set_state(in, &s, err)))
        goto fail;
    for (ota_slot sl = OTA_SLOT_A; sl <= OTA_SLOT_B; sl++) {
        bool keep = damaged || sl == s.active || sl == s.previous ||
                    (s.phase != OTA_PHASE_IDLE && sl == s.pending_slot);
        r.n_removed += clean_slot_dir(in, sl, keep);
    }
    char tmp[PATH_MAX_BYTES + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", in->state_path);
    if (unlink(tmp) == 0)
        r.n_removed++;
    if (rec)
        *rec = r;
    *out = in;
    return OTA_OK;
fail:
    free(in->factory_path);
    free(in);
    return rc;
}

void ota_install_close(ota_install *in)
{
    if (!in)
        return;
    free(in->factory_path);
    free(in);
}

void ota_install_get_state(const ota_install *in, ota_install_state *out)
{
    *out = in->st;
}

const char *ota_install_active_path(const ota_install *in)
{
    return slot_file(in, in->st.active);
}

const char *ota_install_previous_path(const ota_install *in)
{
    return slot_file(in, in->st.previous);
}

int ota_install_active_hash(ota_install *in, uint8_t out[OTA_HASH_BYTES], char err[256])
{
    if (!in->have_active_hash) {
        const char *p = ota_install_active_path(in);
        if (!p) {
            snprintf(err, 256, "%s: no active model", in->dir);
            return OTA_ESTATE;
        }
        int rc = ota_file_hash(p, in->active_hash, NULL, err);
        if (rc)
            return rc;
        in->have_active_hash = true;
    }
    memcpy(out, in->active_hash, OTA_HASH_BYTES);
    return OTA_OK;
}

/* ---- one update ---------------------------------------------------------------------- */

int ota_install_begin(ota_install *in, const ota_install_target *t, const char **part_path,
                      char err[256])
{
    if (in->st.phase != OTA_PHASE_IDLE) {
        snprintf(err, 256, "%s: update %" PRIu64 " is %s; abort it first", in->state_path,
                 in->st.pending_version, ota_phase_name(in->st.phase));
        return OTA_ESTATE;
    }
    if (t->version <= in->st.active_version) {
        snprintf(err, 256, "version %" PRIu64 " is not above the installed version %" PRIu64
                 " (anti-rollback)", t->version, in->st.active_version);
        return OTA_EROLLBACK;
    }
    if (t->tag && strlen(t->tag) > OTA_INSTALL_TAG_MAX) {
        snprintf(err, 256, "update tag longer than %d bytes", OTA_INSTALL_TAG_MAX);
        return OTA_EINVAL;
    }
    ota_install_state s = in->st;
    s.pending_slot = s.active == OTA_SLOT_A ? OTA_SLOT_B : OTA_SLOT_A;
    if (s.previous == s.pending_slot) {
        s.previous = OTA_SLOT_NONE;
        s.previous_version = 0;
    }
    s.phase = OTA_PHASE_STAGING;
    s.pending_version = t->version;
    memcpy(s.pending_hash, t->hash, OTA_HASH_BYTES);
    s.pending_size_bytes = t->size_bytes;
    s.check_attempts = 0;
    snprintf(s.pending_tag, sizeof s.pending_tag, "%s", t->tag ? t->tag : "");
    int rc = set_state(in, &s, err);
    if (rc)
        return rc;
    clean_slot_dir(in, s.pending_slot, false);
    if (part_path)
        *part_path = in->part_path[s.pending_slot];
    return OTA_OK;
}

static int need_phase(const ota_install *in, ota_phase p, const char *what, char err[256])
{
    if (in->st.phase != p) {
        snprintf(err, 256, "%s: %s needs phase %s, the update is %s", in->state_path, what,
                 ota_phase_name(p), ota_phase_name(in->st.phase));
        return OTA_ESTATE;
    }
    return OTA_OK;
}

int ota_install_stage_full(ota_install *in, const char *src_path, char err[256])
{
    int rc = need_phase(in, OTA_PHASE_STAGING, "staging", err);
    if (rc)
        return rc;
    const char *dst = in->part_path[in->st.pending_slot];
    int sfd = open(src_path, O_RDONLY | O_CLOEXEC);
    if (sfd < 0) {
        snprintf(err, 256, "%s: cannot open: %s", src_path, strerror(errno));
        return OTA_EIO;
    }
    int dfd = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    uint8_t *buf = dfd >= 0 ? malloc(COPY_CHUNK_BYTES) : NULL;
    if (dfd < 0 || !buf) {
        snprintf(err, 256, "%s: %s", dst, dfd < 0 ? strerror(errno) : "out of memory");
        rc = dfd < 0 ? OTA_EIO : OTA_ENOMEM;
        goto done;
    }
    for (;;) {
        ssize_t n = read(sfd, buf, COPY_CHUNK_BYTES);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(err, 256, "%s: read failed: %s", src_path, strerror(errno));
            rc = OTA_EIO;
            break;
        }
        if (n == 0)
            break;
        if (write_all(dfd, buf, (size_t)n)) {
            snprintf(err, 256, "%s: write failed: %s", dst, strerror(errno));
            rc = OTA_EIO;
            break;
        }
    }
done:
    free(buf);
    if (dfd >= 0)
        close(dfd);
    close(sfd);
    return rc;
}

int ota_install_stage_delta(ota_install *in, const char *delta_path,
                            const uint8_t base_hash[OTA_HASH_BYTES], char err[256])
{
    int rc = need_phase(in, OTA_PHASE_STAGING, "staging", err);
    if (rc)
        return rc;
    uint8_t have[OTA_HASH_BYTES];
    if ((rc = ota_install_active_hash(in, have, err)))
        return rc;
    if (sodium_memcmp(have, base_hash, OTA_HASH_BYTES)) {
        char want_hex[2 * OTA_HASH_BYTES + 1], have_hex[2 * OTA_HASH_BYTES + 1];
        ota_hex_encode(base_hash, OTA_HASH_BYTES, want_hex);
        ota_hex_encode(have, OTA_HASH_BYTES, have_hex);
        snprintf(err, 256, "wrong base: the delta needs %.16s..., the active model %s is %.16s...",
                 want_hex, ota_install_active_path(in), have_hex);
        return OTA_EWRONGBASE;
    }
    char perr[256] = "";
    if (ota_delta_patch(ota_install_active_path(in), delta_path,
                        in->part_path[in->st.pending_slot], NULL, perr)) {
        snprintf(err, 256, "patch: %s", perr);
        return OTA_EPATCH;
    }
    return OTA_OK;
}

int ota_install_finish(ota_install *in, char err[256])
{
    int rc = need_phase(in, OTA_PHASE_STAGING, "finishing", err);
    if (rc)
        return rc;
    ota_slot sl = in->st.pending_slot;
    const char *part = in->part_path[sl];
    uint8_t got[OTA_HASH_BYTES];
    uint64_t size = 0;
    if ((rc = ota_file_hash(part, got, &size, err)))
        return rc;
    if (size != in->st.pending_size_bytes ||
        sodium_memcmp(got, in->st.pending_hash, OTA_HASH_BYTES)) {
        char want_hex[2 * OTA_HASH_BYTES + 1], got_hex[2 * OTA_HASH_BYTES + 1];
        ota_hex_encode(in->st.pending_hash, OTA_HASH_BYTES, want_hex);
        ota_hex_encode(got, OTA_HASH_BYTES, got_hex);
        snprintf(err, 256, "%s: not the announced target: %" PRIu64 " bytes, hash %.16s... "
                 "(expected %" PRIu64 " bytes, %.16s...)", part, size, got_hex,
                 in->st.pending_size_bytes, want_hex);
        char aerr[256];
        ota_install_abort(in, aerr);
        return OTA_ETARGET;
    }
    int fd = open(part, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fsync(fd)) {
        snprintf(err, 256, "%s: fsync failed: %s", part, strerror(errno));
        if (fd >= 0)
            close(fd);
        return OTA_EIO;
    }
    close(fd);
    if (rename(part, in->slot_path[sl])) {
        snprintf(err, 256, "%s: cannot rename into place: %s", part, strerror(errno));
        return OTA_EIO;
    }
    if ((rc = ota_fsync_parent(in->slot_path[sl], err)))
        return rc;
    ota_install_state s = in->st;
    s.phase = OTA_PHASE_STAGED;
    return set_state(in, &s, err);
}

int ota_install_abort(ota_install *in, char err[256])
{
    if (in->st.phase == OTA_PHASE_IDLE)
        return OTA_OK;
    ota_install_state s = in->st;
    ota_slot sl = s.pending_slot;
    s.phase = OTA_PHASE_IDLE;
    s.pending_slot = OTA_SLOT_NONE;
    s.pending_version = 0;
    s.pending_size_bytes = 0;
    s.check_attempts = 0;
    memset(s.pending_hash, 0, sizeof s.pending_hash);
    s.pending_tag[0] = '\0';
    int rc = set_state(in, &s, err);
    if (!rc)
        clean_slot_dir(in, sl, false);
    return rc;
}

int ota_install_check(ota_install *in, ota_health_fn health, void *ud, char err[256])
{
    int rc = need_phase(in, OTA_PHASE_STAGED, "the health check", err);
    if (rc)
        return rc;
    ota_install_state s = in->st;
    s.phase = OTA_PHASE_CHECKING;
    s.check_attempts++;
    if ((rc = set_state(in, &s, err)))
        return rc;
    char herr[256] = "";
    if (health && health(ud, in->slot_path[s.pending_slot], herr)) {
        char aerr[256];
        if (ota_install_abort(in, aerr))
            fprintf(stderr, "ota install: rollback: %s\n", aerr);
        snprintf(err, 256, "health check of version %" PRIu64 " failed: %s (rolled back)",
                 s.pending_version, herr[0] ? herr : "no reason given");
        return OTA_EHEALTH;
    }
    /* Commit: one state write switches the active slot and keeps the old. */
    ota_install_state c = s;
    c.previous = s.active;
    c.previous_version = s.active_version;
    c.active = s.pending_slot;
    c.active_version = s.pending_version;
    c.phase = OTA_PHASE_IDLE;
    c.pending_slot = OTA_SLOT_NONE;
    c.pending_version = 0;
    c.pending_size_bytes = 0;
    c.check_attempts = 0;
    memset(c.pending_hash, 0, sizeof c.pending_hash);
    c.pending_tag[0] = '\0';
    uint8_t target_hash[OTA_HASH_BYTES];
    memcpy(target_hash, s.pending_hash, OTA_HASH_BYTES);
    if ((rc = set_state(in, &c, err)))
        return rc;
    memcpy(in->active_hash, target_hash, OTA_HASH_BYTES);
    in->have_active_hash = true;
    return OTA_OK;
}

int ota_install_apply(ota_install *in, const ota_install_update *u, ota_install_report *rep,
                      char err[256])
{
    *rep = (ota_install_report){.outcome = OTA_OUTCOME_REJECTED, .version = u->target.version};
    if (!u->payload_path) {
        snprintf(err, 256, "ota install: no payload file");
        return OTA_EINVAL;
    }
    if (u->kind == OTA_PAYLOAD_DELTA) {
        /* Refuse a wrong base before the slot is touched. */
        uint8_t have[OTA_HASH_BYTES];
        int rc = ota_install_active_hash(in, have, err);
        if (rc)
            return rc;
        if (sodium_memcmp(have, u->base_hash, OTA_HASH_BYTES)) {
            char want_hex[2 * OTA_HASH_BYTES + 1], have_hex[2 * OTA_HASH_BYTES + 1];
            ota_hex_encode(u->base_hash, OTA_HASH_BYTES, want_hex);
            ota_hex_encode(have, OTA_HASH_BYTES, have_hex);
            snprintf(err, 256, "wrong base: the delta needs %.16s..., the active model is "
                     "%.16s...", want_hex, have_hex);
            return OTA_EWRONGBASE;
        }
    }
    double t0 = now_ms();
    int rc = ota_install_begin(in, &u->target, NULL, err);
    if (rc)
        return rc;
    rep->outcome = OTA_OUTCOME_FAILED;
    if (u->kind == OTA_PAYLOAD_DELTA)
        rc = ota_install_stage_delta(in, u->payload_path, u->base_hash, err);
    else
        rc = ota_install_stage_full(in, u->payload_path, err);
    if (!rc)
        rc = ota_install_finish(in, err);
    rep->stage_ms = now_ms() - t0;
    if (rc) {
        char aerr[256];
        if (ota_install_abort(in, aerr))
            fprintf(stderr, "ota install: abort: %s\n", aerr);
        return rc;
    }
    double t1 = now_ms();
    rc = ota_install_check(in, u->health, u->health_ud, err);
    rep->check_ms = now_ms() - t1;
    if (rc == OTA_EHEALTH)
        rep->outcome = OTA_OUTCOME_ROLLED_BACK;
    else if (!rc)
        rep->outcome = OTA_OUTCOME_COMMITTED;
    return rc;
}
