/*
 * install.h - staged A/B model install with health check, rollback and
 * anti-rollback (ota_install_).
 *
 * On disk, under the directory the caller gives (the agent uses
 * <state_dir>/models):
 *
 *   slot-a/model.gguf, slot-b/model.gguf   installed models
 *   slot-X/model.gguf.part                 a model being staged
 *   state                                  which slot serves, which one is
 *                                          kept for rollback, the pending
 *                                          update and its phase
 *
 * The "factory" model is the file the agent was configured with (-m); it
 * serves until the first update commits and is never written or removed.
 *
 * An update goes: begin (anti-rollback check, pick the slot that is not
 * active, state STAGING) -> stage (write the new model into
 * slot-X/model.gguf.part: a full file copied or a delta patched against the
 * active model) -> finish (target size and BLAKE2b-256 hash verified,
 * fsync, rename to model.gguf, fsync the directory, state STAGED) -> check
 * (state CHECKING, the caller's health callback loads the model and runs its
 * probe) -> commit (state: active = the new slot, previous = the old active,
 * phase IDLE) or roll back (staged file removed, phase IDLE, the old model
 * serves on).
 *
 * Invariants:
 *  - the state file is only ever replaced whole (write a temporary file,
 *    fsync it, rename it over, fsync the directory), so a crash leaves the
 *    old or the new state, never a torn one;
 *  - the active model's file is never written while it is active, so at
 *    every instant the state names a complete, verified model to serve;
 *  - the slot an update writes into is first dropped from the state
 *    (previous = none) and only then overwritten;
 *  - a version is installed only when it is above the active one.
 *
 * Crash recovery (ota_install_open) reads the state and cleans up: a
 * STAGING update lost its partial file (removed; the caller restarts the
 * apply from its payload, see ota_install_recovery.interrupted); a STAGED
 * one is kept and needs its health check; a CHECKING one (the agent died
 * during the check) goes back to STAGED for another try, and after
 * OTA_INSTALL_MAX_CHECKS attempts is rolled back, so a model that crashes
 * the agent cannot crash it forever. Stray temporary files and models no
 * state names are removed.
 *
 * Threads: an ota_install is used by one thread at a time (the agent's OTA
 * worker); the caller serialises.
 *
 * Ownership: ota_install_open returns a handle freed by ota_install_close;
 * paths returned point into the handle and live until the next call that
 * changes the state.
 */
#ifndef OUTPOST_OTA_INSTALL_H
#define OUTPOST_OTA_INSTALL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ota_sign.h" /* OTA_OK, OTA_EIO, OTA_ENOMEM, OTA_EINVAL */

/* Errors of this module besides ota_sign.h's OTA_E* (same error space). */
enum {
    OTA_EROLLBACK = -30,  /* version not above the installed one */
    OTA_EWRONGBASE = -31, /* the delta's base is not the active model */
    OTA_ETARGET = -32,    /* the staged model is not the announced target (size, hash) */
    OTA_EHEALTH = -33,    /* the health check failed: rolled back */
    OTA_ESTATE = -34,     /* the state file is unreadable, or a call out of order */
    OTA_EPATCH = -35,     /* the delta could not be applied */
};

#define OTA_HASH_BYTES 32       /* BLAKE2b-256 (crypto_generichash, 32-byte output) */
#define OTA_INSTALL_MAX_CHECKS 3 /* health-check attempts before a forced rollback */
#define OTA_INSTALL_TAG_MAX 127 /* bytes of the caller's tag for a pending update */

typedef enum ota_slot {
    OTA_SLOT_NONE,
    OTA_SLOT_FACTORY, /* the configured model file */
    OTA_SLOT_A,
    OTA_SLOT_B,
} ota_slot;

typedef enum ota_phase {
    OTA_PHASE_IDLE,
    OTA_PHASE_STAGING,  /* writing slot-X/model.gguf.part */
    OTA_PHASE_STAGED,   /* slot-X/model.gguf complete and verified, not checked */
    OTA_PHASE_CHECKING, /* the health check is running */
} ota_phase;

typedef enum ota_payload_kind {
    OTA_PAYLOAD_FULL,  /* the payload is the whole target model */
    OTA_PAYLOAD_DELTA, /* the payload is a delta against the active model */
} ota_payload_kind;

/* "none", "factory", "a", "b"; "idle", "staging", ... */
const char *ota_slot_name(ota_slot s);
const char *ota_phase_name(ota_phase p);

/* What the state file says (a copy). */
typedef struct ota_install_state {
    ota_slot active;
    uint64_t active_version;   /* 0: the factory model, unversioned */
    ota_slot previous;         /* kept for rollback; OTA_SLOT_NONE: nothing kept */
    uint64_t previous_version;
    ota_phase phase;
    ota_slot pending_slot;     /* phase != IDLE: where the update goes */
    uint64_t pending_version;
    uint8_t pending_hash[OTA_HASH_BYTES];
    uint64_t pending_size_bytes;
    uint32_t check_attempts;
    char pending_tag[OTA_INSTALL_TAG_MAX + 1]; /* the caller's name for the update */
} ota_install_state;

/* What ota_install_open found and did. */
typedef struct ota_install_recovery {
    ota_phase found_phase;       /* the phase in the state file at open */
    bool interrupted;            /* a STAGING update was cut: restart it from its
                                    payload (version and tag below) or drop it */
    bool needs_check;            /* a STAGED update waits for its health check */
    bool rolled_back;            /* too many check attempts: the update was dropped */
    uint64_t pending_version;
    char pending_tag[OTA_INSTALL_TAG_MAX + 1];
    int n_removed;               /* stray files removed */
    bool active_missing;         /* the active slot's file was gone: fell back */
} ota_install_recovery;

typedef struct ota_install ota_install;

typedef struct ota_install_opts {
    const char *dir;          /* created if missing (mode 0700) */
    const char *factory_path; /* the configured model; may be NULL (then nothing
                                 serves until an update commits) */
} ota_install_opts;

/* Open (and recover) the install directory. rec may be NULL. */
int ota_install_open(const ota_install_opts *o, ota_install **out, ota_install_recovery *rec,
                     char err[256]);
void ota_install_close(ota_install *in);

void ota_install_get_state(const ota_install *in, ota_install_state *out);
/* The model file to serve (the active slot's, or the factory path); NULL
 * when there is none. */
const char *ota_install_active_path(const ota_install *in);
/* The file kept for rollback, NULL when none. */
const char *ota_install_previous_path(const ota_install *in);
/* BLAKE2b-256 of the active model (computed once, then remembered). */
int ota_install_active_hash(ota_install *in, uint8_t out[OTA_HASH_BYTES], char err[256]);

/* ---- one update, step by step ---------------------------------------------- */

typedef struct ota_install_target {
    uint64_t version;
    uint8_t hash[OTA_HASH_BYTES];
    uint64_t size_bytes;
    const char *tag;          /* kept with the pending update; NULL: "" */
} ota_install_target;

/* Anti-rollback check, pick the slot, drop it from the state, state STAGING.
 * *part_path: where the new model is to be written (removed first).
 * OTA_EROLLBACK when the version is not above the active one; OTA_ESTATE
 * when another update is pending (abort it first). */
int ota_install_begin(ota_install *in, const ota_install_target *t, const char **part_path,
                      char err[256]);
/* Stage by copying a whole model file into the part file (streaming). */
int ota_install_stage_full(ota_install *in, const char *src_path, char err[256]);
/* Stage by applying a delta against the active model. base_hash: the
 * delta's base as the manifest names it; OTA_EWRONGBASE when the active
 * model is another one (checked before anything is written). */
int ota_install_stage_delta(ota_install *in, const char *delta_path,
                            const uint8_t base_hash[OTA_HASH_BYTES], char err[256]);
/* Verify the part file against the target, fsync, rename, state STAGED.
 * OTA_ETARGET (the part file is removed and the update dropped) when it
 * does not match. */
int ota_install_finish(ota_install *in, char err[256]);

/* The health check: load model_path, warm up, run the probe. 0 passes. */
typedef int (*ota_health_fn)(void *ud, const char *model_path, char err[256]);

/* State CHECKING, run the check, then commit (OTA_OK) or roll back
 * (OTA_EHEALTH, err says why). */
int ota_install_check(ota_install *in, ota_health_fn health, void *ud, char err[256]);
/* Drop the pending update in any phase (remove its files, state IDLE). */
int ota_install_abort(ota_install *in, char err[256]);

/* ---- one update in one call ---------------------------------------------------- */

typedef enum ota_install_outcome {
    OTA_OUTCOME_COMMITTED,
    OTA_OUTCOME_REJECTED,    /* refused before anything was written (version, base) */
    OTA_OUTCOME_FAILED,      /* staging failed (I/O, patch, target mismatch) */
    OTA_OUTCOME_ROLLED_BACK, /* the health check failed */
} ota_install_outcome;

/* "committed", "rejected", "failed", "rolled_back". */
const char *ota_install_outcome_name(ota_install_outcome o);

typedef struct ota_install_report {
    ota_install_outcome outcome;
    uint64_t version;
    double stage_ms, check_ms; /* wall time of each step (0 when not reached) */
} ota_install_report;

typedef struct ota_install_update {
    ota_install_target target;
    ota_payload_kind kind;
    const char *payload_path;
    uint8_t base_hash[OTA_HASH_BYTES]; /* kind DELTA */
    ota_health_fn health;              /* NULL: no check (commit once staged) */
    void *health_ud;
} ota_install_update;

/* begin, stage, finish, check; any failure after begin aborts the update
 * so the old model serves on. rep is always filled. */
int ota_install_apply(ota_install *in, const ota_install_update *u, ota_install_report *rep,
                      char err[256]);

/* ---- helpers shared with the transfer and the agent ---------------------------------- */

/* Parse state file text (len bytes, NUL-terminated; changed in place):
 * checksum, magic, every key once, consistent slots. For the fuzzer and
 * for tools; ota_install_open uses it. */
int ota_install_state_parse(char *text, size_t len, const char *name, ota_install_state *out,
                            char err[256]);

/* Lower-case hex (2 * n + 1 bytes in out); parse the same (exactly 2 * n digits). */
void ota_hex_encode(const uint8_t *in, size_t n, char *out);
int ota_hex_decode(const char *hex, uint8_t *out, size_t n);
/* Replace path with data: temporary file, fsync, rename, fsync directory. */
int ota_write_file_atomic(const char *path, const void *data, size_t len, char err[256]);
/* fsync the directory holding path. */
int ota_fsync_parent(const char *path, char err[256]);

#endif
