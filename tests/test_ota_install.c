/*
 * test_ota_install.c - the A/B install (ota/install.h) on real files in a
 * temporary directory: stage, commit and rollback, anti-rollback, target
 * mismatch, and recovery after a crash at each phase. A crash is the
 * handle dropped mid-update (ota_install_close frees memory only, so the
 * files are exactly as the process left them) or a state file put back to
 * what it was at an earlier instant; then ota_install_open must find a
 * model to serve and a clean way on.
 */
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
#include <sodium.h>

#include "delta.h"
#include "install.h"

typedef struct fixture {
    char root[256];
    char dir[300];      /* the install directory */
    char factory[300];  /* the factory model */
    char src[4][300];   /* update payloads, versions 1..4 */
    uint8_t hash[4][OTA_HASH_BYTES];
    uint64_t size[4];
} fixture;

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    assert_int_equal(fclose(f), 0);
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return buf;
}

static bool exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    assert_non_null(fx);
    snprintf(fx->root, sizeof fx->root, "/tmp/test_ota_install.XXXXXX");
    assert_non_null(mkdtemp(fx->root));
    snprintf(fx->dir, sizeof fx->dir, "%s/models", fx->root);
    snprintf(fx->factory, sizeof fx->factory, "%s/factory.gguf", fx->root);
    write_file(fx->factory, "factory model bytes");
    char err[256];
    for (int i = 0; i < 4; i++) {
        snprintf(fx->src[i], sizeof fx->src[i], "%s/v%d.gguf", fx->root, i + 1);
        char text[64];
        snprintf(text, sizeof text, "model version %d, some weights", i + 1);
        write_file(fx->src[i], text);
        assert_int_equal(ota_file_hash(fx->src[i], fx->hash[i], &fx->size[i], err), OTA_OK);
    }
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture *fx = *state;
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fx->root);
    assert_int_equal(system(cmd), 0);
    free(fx);
    return 0;
}

static ota_install *open_dir(fixture *fx, ota_install_recovery *rec)
{
    ota_install_opts o = {.dir = fx->dir, .factory_path = fx->factory};
    ota_install *in = NULL;
    char err[256] = "";
    int rc = ota_install_open(&o, &in, rec, err);
    if (rc)
        print_error("open: %s\n", err);
    assert_int_equal(rc, OTA_OK);
    return in;
}

typedef struct health_probe {
    int calls;
    bool fail;
    char seen_path[512];
    char snapshot_from[512], snapshot_to[512]; /* copy the state file during the check */
} health_probe;

static int health_cb(void *ud, const char *model_path, char err[256])
{
    health_probe *h = ud;
    h->calls++;
    snprintf(h->seen_path, sizeof h->seen_path, "%s", model_path);
    if (h->snapshot_from[0]) {
        char *text = read_file(h->snapshot_from);
        assert_non_null(text);
        write_file(h->snapshot_to, text);
    }
    if (h->fail) {
        snprintf(err, 256, "probe answered nothing");
        return -1;
    }
    return 0;
}

static ota_install_update full_update(fixture *fx, int i, health_probe *h)
{
    ota_install_update u = {
        .target = {.version = (uint64_t)i + 1, .size_bytes = fx->size[i], .tag = "t"},
        .kind = OTA_PAYLOAD_FULL,
        .payload_path = fx->src[i],
        .health = health_cb,
        .health_ud = h,
    };
    memcpy(u.target.hash, fx->hash[i], OTA_HASH_BYTES);
    return u;
}

static void fresh_device_serves_factory(void **state)
{
    fixture *fx = *state;
    ota_install_recovery rec;
    ota_install *in = open_dir(fx, &rec);
    ota_install_state s;
    ota_install_get_state(in, &s);
    assert_int_equal(s.active, OTA_SLOT_FACTORY);
    assert_int_equal(s.active_version, 0);
    assert_int_equal(s.phase, OTA_PHASE_IDLE);
    assert_string_equal(ota_install_active_path(in), fx->factory);
    assert_null(ota_install_previous_path(in));
    assert_false(rec.interrupted);
    assert_false(rec.needs_check);
    ota_install_close(in);
}

static void update_commits_into_other_slot_and_keeps_previous(void **state)
{
    fixture *fx = *state;
    ota_install *in = open_dir(fx, NULL);
    health_probe h = {0};
    char err[256];
    ota_install_report rep;
    ota_install_update u = full_update(fx, 0, &h);
    assert_int_equal(ota_install_apply(in, &u, &rep, err), OTA_OK);
    assert_int_equal(rep.outcome, OTA_OUTCOME_COMMITTED);
    assert_int_equal(h.calls, 1);
    ota_install_state s;
    ota_install_get_state(in, &s);
    assert_int_equal(s.active, OTA_SLOT_A);
    assert_int_equal(s.active_version, 1);
    assert_int_equal(s.previous, OTA_SLOT_FACTORY);
    assert_string_equal(h.seen_path, ota_install_active_path(in));
    assert_string_equal(read_file(ota_install_active_path(in)), "model version 1, some weights");
    assert_string_equal(ota_install_previous_path(in), fx->factory);

    /* The next one goes to B and keeps A; the one after reuses A (the
     * factory file is never touched). */
    u = full_update(fx, 1, &h);
    assert_int_equal(ota_install_apply(in, &u, &rep, err), OTA_OK);
    ota_install_get_state(in, &s);
    assert_int_equal(s.active, OTA_SLOT_B);
    assert_int_equal(s.previous, OTA_SLOT_A);
    assert_int_equal(s.previous_version, 1);
    u = full_update(fx, 2, &h);
    assert_int_equal(ota_install_apply(in, &u, &rep, err), OTA_OK);
    ota_install_get_state(in, &s);
    assert_int_equal(s.active, OTA_SLOT_A);
    assert_int_equal(s.previous, OTA_SLOT_B);
    assert_string_equal(read_file(ota_install_active_path(in)), "model version 3, some weights");
    assert_string_equal(read_file(fx->factory), "factory model bytes");
    uint8_t have[OTA_HASH_BYTES];
    assert_int_equal(ota_install_active_hash(in, have, err), OTA_OK);
    assert_memory_equal(have, fx->hash[2], OTA_HASH_BYTES);
    ota_install_close(in);

    /* The state survives a restart. */
    ota_install_recovery rec;
    in = open_dir(fx, &rec);
    ota_install_get_state(in, &s);
    assert_int_equal(s.active, OTA_SLOT_A);
    assert_int_equal(s.active_version, 3);
    assert_int_equal(rec.n_removed, 0);
    ota_install_close(in);
}

static void version_not_above_installed_is_refused(void **state)
{
    fixture *fx = *state;
    ota_install *in = open_dir(fx, NULL);
    health_probe h = {0};
    char err[256];
    ota_install_report rep;
    ota_install_update u = full_update(fx, 2, &h); /* version 3 */
    assert_int_equal(ota_install_apply(in, &u, &rep, err), OTA_OK);
    u = full_update(fx, 1, &h); /* version 2 */
    assert_int_equal(ota_install_apply(in, &u, &rep, err), OTA_EROLLBACK);
    assert_int_equal(rep.outcome, OTA_OUTCOME_REJECTED);
    assert_non_null(strstr(err, "anti-rollback"));
    u = full_update(fx, 2, &h); /* the same version again */
    assert_int_equal(ota_install_apply(in, &u, &rep, err), OTA_EROLLBACK);
    assert_int_equal(h.calls, 1);
    ota_install_state s;
    ota_install_get_state(in, &s);
    assert_int_equal(s.active_version, 3);
    assert_int_equal(s.phase, OTA_PHASE_IDLE);
    ota_install_close(in);
}

static void failed_health_check_rolls_back(void **state)
{
    fixture *fx = *state;
    ota_install *in = open_dir(fx, NULL);
    health_probe h = {0};
    char err[256];
    ota_install_report rep;
    ota_install_update u = full_update(fx, 0, &h);
    assert_int_equal(ota_install_apply(in, &u, &rep, err), OTA_OK);
    h.fail = true;
    u = full_update(fx, 1, &h);
    assert_int_equal(ota_install_apply(in, &u, &rep, err), OTA_EHEALTH);
    assert_int_equal(rep.outcome, OTA_OUTCOME_ROLLED_BACK);
    assert_non_null(strstr(err, "probe answered nothing"));
    ota_install_state s;
    ota_install_get_state(in, &s);
    assert_int_equal(s.active, OTA_SLOT_A);
    assert_int_equal(s.active_version, 1);
    assert_int_equal(s.phase, OTA_PHASE_IDLE);
    assert_string_equal(read_file(ota_install_active_path(in)), "model version 1, some weights");
    char staged[400];
    snprintf(staged, sizeof staged, "%s/slot-b/model.gguf", fx->dir);
    assert_false(exists(staged));
    /* The same version may be offered again once fixed. */
    h.fail = false;
    assert_int_equal(ota_install_apply(in, &u, &rep, err), OTA_OK);
    ota_install_close(in);
}

static void payload_not_matching_target_is_dropped(void **state)
{
    fixture *fx = *state;
    ota_install *in = open_dir(fx, NULL);
    health_probe h = {0};
    char err[256];
    ota_install_report rep;
    ota_install_update u = full_update(fx, 0, &h);
    u.payload_path = fx->src[1]; /* other bytes than the announced hash */
    assert_int_equal(ota_install_apply(in, &u, &rep, err), OTA_ETARGET);
    assert_int_equal(rep.outcome, OTA_OUTCOME_FAILED);
    assert_non_null(strstr(err, "not the announced target"));
    assert_int_equal(h.calls, 0);
    ota_install_state s;
    ota_install_get_state(in, &s);
    assert_int_equal(s.active, OTA_SLOT_FACTORY);
    assert_int_equal(s.phase, OTA_PHASE_IDLE);
    char part[400];
    snprintf(part, sizeof part, "%s/slot-a/model.gguf.part", fx->dir);
    assert_false(exists(part));
    /* A missing payload fails the same clean way. */
    u = full_update(fx, 0, &h);
    u.payload_path = "/nonexistent/payload";
    assert_int_equal(ota_install_apply(in, &u, &rep, err), OTA_EIO);
    assert_int_equal(rep.outcome, OTA_OUTCOME_FAILED);
    ota_install_get_state(in, &s);
    assert_int_equal(s.phase, OTA_PHASE_IDLE);
    ota_install_close(in);
}

static void delta_against_wrong_base_is_rejected_before_staging(void **state)
{
    fixture *fx = *state;
    ota_install *in = open_dir(fx, NULL);
    char err[256];
    ota_install_report rep;
    ota_install_update u = full_update(fx, 0, NULL);
    u.health = NULL;
    u.kind = OTA_PAYLOAD_DELTA;
    memcpy(u.base_hash, fx->hash[3], OTA_HASH_BYTES); /* not the factory model */
    assert_int_equal(ota_install_apply(in, &u, &rep, err), OTA_EWRONGBASE);
    assert_int_equal(rep.outcome, OTA_OUTCOME_REJECTED);
    assert_non_null(strstr(err, "wrong base"));
    ota_install_state s;
    ota_install_get_state(in, &s);
    assert_int_equal(s.phase, OTA_PHASE_IDLE);
    ota_install_close(in);
}

static void crash_while_staging_restarts_cleanly(void **state)
{
    fixture *fx = *state;
    ota_install *in = open_dir(fx, NULL);
    char err[256];
    ota_install_target t = {.version = 1, .size_bytes = fx->size[0], .tag = "xfer-0001"};
    memcpy(t.hash, fx->hash[0], OTA_HASH_BYTES);
    const char *part = NULL;
    assert_int_equal(ota_install_begin(in, &t, &part, err), OTA_OK);
    write_file(part, "model vers"); /* half written when the power went */
    char part_copy[400];
    snprintf(part_copy, sizeof part_copy, "%s", part);
    ota_install_close(in);

    ota_install_recovery rec;
    in = open_dir(fx, &rec);
    assert_int_equal(rec.found_phase, OTA_PHASE_STAGING);
    assert_true(rec.interrupted);
    assert_int_equal(rec.pending_version, 1);
    assert_string_equal(rec.pending_tag, "xfer-0001");
    assert_false(exists(part_copy));
    assert_string_equal(ota_install_active_path(in), fx->factory);
    ota_install_state s;
    ota_install_get_state(in, &s);
    assert_int_equal(s.phase, OTA_PHASE_IDLE);
    /* And the update runs again from the start. */
    health_probe h = {0};
    ota_install_report rep;
    ota_install_update u = full_update(fx, 0, &h);
    assert_int_equal(ota_install_apply(in, &u, &rep, err), OTA_OK);
    ota_install_close(in);
}

static void crash_after_rename_before_staged_state_drops_the_file(void **state)
{
    fixture *fx = *state;
    ota_install *in = open_dir(fx, NULL);
    char err[256];
    ota_install_target t = {.version = 1, .size_bytes = fx->size[0]};
    memcpy(t.hash, fx->hash[0], OTA_HASH_BYTES);
    const char *part = NULL;
    assert_int_equal(ota_install_begin(in, &t, &part, err), OTA_OK);
    assert_int_equal(ota_install_stage_full(in, fx->src[0], err), OTA_OK);
    char model[400];
    snprintf(model, sizeof model, "%s/slot-a/model.gguf", fx->dir);
    assert_int_equal(rename(part, model), 0); /* the rename made it, the state write did not */
    ota_install_close(in);
    ota_install_recovery rec;
    in = open_dir(fx, &rec);
    assert_true(rec.interrupted);
    assert_int_equal(rec.n_removed, 1);
    assert_false(exists(model));
    assert_string_equal(ota_install_active_path(in), fx->factory);
    ota_install_close(in);
}

static void crash_when_staged_resumes_with_the_check(void **state)
{
    fixture *fx = *state;
    ota_install *in = open_dir(fx, NULL);
    char err[256];
    ota_install_target t = {.version = 2, .size_bytes = fx->size[1], .tag = "x"};
    memcpy(t.hash, fx->hash[1], OTA_HASH_BYTES);
    assert_int_equal(ota_install_begin(in, &t, NULL, err), OTA_OK);
    assert_int_equal(ota_install_stage_full(in, fx->src[1], err), OTA_OK);
    assert_int_equal(ota_install_finish(in, err), OTA_OK);
    ota_install_close(in);

    ota_install_recovery rec;
    in = open_dir(fx, &rec);
    assert_true(rec.needs_check);
    assert_false(rec.interrupted);
    assert_string_equal(ota_install_active_path(in), fx->factory); /* not yet switched */
    health_probe h = {0};
    assert_int_equal(ota_install_check(in, health_cb, &h, err), OTA_OK);
    ota_install_state s;
    ota_install_get_state(in, &s);
    assert_int_equal(s.active_version, 2);
    assert_string_equal(read_file(ota_install_active_path(in)), "model version 2, some weights");
    ota_install_close(in);
}

static void crash_during_check_retries_then_rolls_back(void **state)
{
    fixture *fx = *state;
    ota_install *in = open_dir(fx, NULL);
    char err[256];
    ota_install_target t = {.version = 2, .size_bytes = fx->size[1]};
    memcpy(t.hash, fx->hash[1], OTA_HASH_BYTES);
    assert_int_equal(ota_install_begin(in, &t, NULL, err), OTA_OK);
    assert_int_equal(ota_install_stage_full(in, fx->src[1], err), OTA_OK);
    assert_int_equal(ota_install_finish(in, err), OTA_OK);

    /* Each round: the check runs, the state as it was during the check is
     * put back (the agent died in the check), and a restart follows. */
    health_probe h = {.fail = true};
    snprintf(h.snapshot_from, sizeof h.snapshot_from, "%s/state", fx->dir);
    snprintf(h.snapshot_to, sizeof h.snapshot_to, "%s/state.snap", fx->root);
    for (int round = 1; round <= OTA_INSTALL_MAX_CHECKS; round++) {
        assert_int_equal(ota_install_check(in, health_cb, &h, err), OTA_EHEALTH);
        ota_install_close(in);
        char *snap = read_file(h.snapshot_to);
        assert_non_null(strstr(snap, "phase checking"));
        char dst[400];
        snprintf(dst, sizeof dst, "%s/state", fx->dir);
        write_file(dst, snap);
        /* the rollback had removed the staged model; the crash means it never did */
        char model[400];
        snprintf(model, sizeof model, "%s/slot-a/model.gguf", fx->dir);
        write_file(model, "model version 2, some weights");
        ota_install_recovery rec;
        in = open_dir(fx, &rec);
        assert_int_equal(rec.found_phase, OTA_PHASE_CHECKING);
        if (round < OTA_INSTALL_MAX_CHECKS) {
            assert_true(rec.needs_check);
            assert_false(rec.rolled_back);
        } else {
            assert_false(rec.needs_check);
            assert_true(rec.rolled_back);
            assert_false(exists(model));
        }
        assert_string_equal(ota_install_active_path(in), fx->factory);
    }
    ota_install_state s;
    ota_install_get_state(in, &s);
    assert_int_equal(s.phase, OTA_PHASE_IDLE);
    assert_int_equal(s.active_version, 0);
    ota_install_close(in);
}

static void damaged_state_file_falls_back_to_factory(void **state)
{
    fixture *fx = *state;
    ota_install *in = open_dir(fx, NULL);
    health_probe h = {0};
    char err[256];
    ota_install_report rep;
    ota_install_update u = full_update(fx, 0, &h);
    assert_int_equal(ota_install_apply(in, &u, &rep, err), OTA_OK);
    ota_install_close(in);
    char path[400];
    snprintf(path, sizeof path, "%s/state", fx->dir);
    char *text = read_file(path);
    assert_non_null(text);
    char *v = strstr(text, "active_version 1");
    assert_non_null(v);
    v[15] = '9'; /* a flipped byte: the checksum no longer matches */
    write_file(path, text);
    in = open_dir(fx, NULL);
    assert_string_equal(ota_install_active_path(in), fx->factory);
    /* nothing says which slot is good, so none is deleted */
    snprintf(path, sizeof path, "%s/slot-a/model.gguf", fx->dir);
    assert_true(exists(path));
    ota_install_close(in);
}

static void missing_active_file_falls_back_to_previous(void **state)
{
    fixture *fx = *state;
    ota_install *in = open_dir(fx, NULL);
    health_probe h = {0};
    char err[256];
    ota_install_report rep;
    ota_install_update u = full_update(fx, 0, &h);
    assert_int_equal(ota_install_apply(in, &u, &rep, err), OTA_OK);
    u = full_update(fx, 1, &h);
    assert_int_equal(ota_install_apply(in, &u, &rep, err), OTA_OK);
    char active[400];
    snprintf(active, sizeof active, "%s", ota_install_active_path(in));
    ota_install_close(in);
    assert_int_equal(unlink(active), 0);
    ota_install_recovery rec;
    in = open_dir(fx, &rec);
    assert_true(rec.active_missing);
    ota_install_state s;
    ota_install_get_state(in, &s);
    assert_int_equal(s.active, OTA_SLOT_A);
    assert_int_equal(s.active_version, 1);
    assert_string_equal(read_file(ota_install_active_path(in)), "model version 1, some weights");
    ota_install_close(in);
}

static void out_of_order_calls_are_refused(void **state)
{
    fixture *fx = *state;
    ota_install *in = open_dir(fx, NULL);
    char err[256];
    assert_int_equal(ota_install_finish(in, err), OTA_ESTATE);
    assert_int_equal(ota_install_check(in, NULL, NULL, err), OTA_ESTATE);
    assert_int_equal(ota_install_stage_full(in, fx->src[0], err), OTA_ESTATE);
    ota_install_target t = {.version = 1, .size_bytes = fx->size[0]};
    memcpy(t.hash, fx->hash[0], OTA_HASH_BYTES);
    assert_int_equal(ota_install_begin(in, &t, NULL, err), OTA_OK);
    assert_int_equal(ota_install_begin(in, &t, NULL, err), OTA_ESTATE);
    assert_int_equal(ota_install_abort(in, err), OTA_OK);
    assert_int_equal(ota_install_begin(in, &t, NULL, err), OTA_OK);
    ota_install_close(in);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(fresh_device_serves_factory, setup, teardown),
        cmocka_unit_test_setup_teardown(update_commits_into_other_slot_and_keeps_previous, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(version_not_above_installed_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(failed_health_check_rolls_back, setup, teardown),
        cmocka_unit_test_setup_teardown(payload_not_matching_target_is_dropped, setup, teardown),
        cmocka_unit_test_setup_teardown(delta_against_wrong_base_is_rejected_before_staging,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(crash_while_staging_restarts_cleanly, setup, teardown),
        cmocka_unit_test_setup_teardown(crash_after_rename_before_staged_state_drops_the_file,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(crash_when_staged_resumes_with_the_check, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(crash_during_check_retries_then_rolls_back, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(damaged_state_file_falls_back_to_factory, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(missing_active_file_falls_back_to_previous, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(out_of_order_calls_are_refused, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
