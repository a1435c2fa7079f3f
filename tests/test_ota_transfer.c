/*
 * test_ota_transfer.c - chunk reception (ota/transfer.h) on real files:
 * chunks in any order, corrupted / short / foreign chunks refused, progress
 * that survives a reopen (the resume after a restart), the message format
 * and its malformed forms.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <sodium.h>

#include "delta.h"
#include "install.h"
#include "transfer.h"

#define CHUNK 1024
#define SIZE (5 * CHUNK + 300) /* six chunks, the last one short */

typedef struct fixture {
    char dir[256];
    uint8_t payload[SIZE];
    uint8_t (*hashes)[OTA_XFER_HASH_BYTES];
    ota_xfer_spec spec;
} fixture;

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    assert_non_null(fx);
    snprintf(fx->dir, sizeof fx->dir, "/tmp/test_ota_transfer.XXXXXX");
    assert_non_null(mkdtemp(fx->dir));
    for (size_t i = 0; i < SIZE; i++)
        fx->payload[i] = (uint8_t)(i * 7 + i / 13);
    uint32_t n = (SIZE + CHUNK - 1) / CHUNK;
    fx->hashes = calloc(n, OTA_XFER_HASH_BYTES);
    assert_non_null(fx->hashes);
    for (uint32_t i = 0; i < n; i++) {
        size_t len = i + 1 < n ? CHUNK : SIZE - (size_t)i * CHUNK;
        crypto_generichash(fx->hashes[i], OTA_XFER_HASH_BYTES, fx->payload + (size_t)i * CHUNK,
                           len, NULL, 0);
    }
    fx->spec = (ota_xfer_spec){.size_bytes = SIZE, .chunk_size_bytes = CHUNK, .n_chunks = n,
                               .chunk_hashes = (const uint8_t(*)[OTA_XFER_HASH_BYTES])fx->hashes};
    crypto_generichash(fx->spec.hash, OTA_XFER_HASH_BYTES, fx->payload, SIZE, NULL, 0);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture *fx = *state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fx->dir);
    assert_int_equal(system(cmd), 0);
    free(fx->hashes);
    free(fx);
    return 0;
}

static const uint8_t *chunk_of(fixture *fx, uint32_t i, size_t *len)
{
    *len = (size_t)i + 1 < fx->spec.n_chunks ? CHUNK : SIZE - (size_t)i * CHUNK;
    return fx->payload + (size_t)i * CHUNK;
}

static ota_xfer *open_xfer(fixture *fx)
{
    ota_xfer *x = NULL;
    char err[256] = "";
    int rc = ota_xfer_open(fx->dir, &fx->spec, &x, err);
    if (rc)
        print_error("open: %s\n", err);
    assert_int_equal(rc, OTA_OK);
    return x;
}

static void chunks_in_any_order_assemble_the_payload(void **state)
{
    fixture *fx = *state;
    ota_xfer *x = open_xfer(fx);
    char err[256];
    uint32_t order[] = {5, 2, 0, 4, 1, 3};
    for (size_t k = 0; k < 6; k++) {
        assert_false(ota_xfer_complete(x));
        size_t len;
        const uint8_t *d = chunk_of(fx, order[k], &len);
        assert_int_equal(ota_xfer_put(x, order[k], d, len, err), OTA_OK);
        assert_true(ota_xfer_has_chunk(x, order[k]));
    }
    assert_true(ota_xfer_complete(x));
    assert_int_equal(ota_xfer_verify(x, err), OTA_OK);
    uint8_t h[OTA_HASH_BYTES];
    uint64_t size;
    assert_int_equal(ota_file_hash(ota_xfer_path(x), h, &size, err), OTA_OK);
    assert_int_equal(size, SIZE);
    assert_memory_equal(h, fx->spec.hash, OTA_HASH_BYTES);
    ota_xfer_close(x);
}

static void corrupted_short_and_stray_chunks_are_refused(void **state)
{
    fixture *fx = *state;
    ota_xfer *x = open_xfer(fx);
    char err[256];
    size_t len;
    const uint8_t *d = chunk_of(fx, 1, &len);
    uint8_t bad[CHUNK];
    memcpy(bad, d, len);
    bad[100] ^= 1;
    assert_int_equal(ota_xfer_put(x, 1, bad, len, err), OTA_ECHUNK);
    assert_non_null(strstr(err, "corrupted"));
    assert_int_equal(ota_xfer_put(x, 1, d, len - 1, err), OTA_ECHUNK);
    assert_int_equal(ota_xfer_put(x, 6, d, len, err), OTA_ECHUNK);
    assert_int_equal(ota_xfer_put(x, 2, d, len, err), OTA_ECHUNK); /* chunk 1's bytes at 2 */
    assert_int_equal(ota_xfer_n_received(x), 0);
    assert_int_equal(ota_xfer_verify(x, err), OTA_EINCOMPLETE);
    /* the good chunk still goes in, and twice is fine (a redelivery) */
    assert_int_equal(ota_xfer_put(x, 1, d, len, err), OTA_OK);
    assert_int_equal(ota_xfer_put(x, 1, d, len, err), OTA_OK);
    assert_int_equal(ota_xfer_n_received(x), 1);
    ota_xfer_close(x);
}

static void progress_survives_a_reopen(void **state)
{
    fixture *fx = *state;
    ota_xfer *x = open_xfer(fx);
    char err[256];
    for (uint32_t i = 0; i < 3; i++) {
        size_t len;
        const uint8_t *d = chunk_of(fx, i, &len);
        assert_int_equal(ota_xfer_put(x, i, d, len, err), OTA_OK);
    }
    ota_xfer_close(x); /* the agent stops (or dies) here */
    x = open_xfer(fx);
    assert_int_equal(ota_xfer_n_received(x), 3);
    assert_true(ota_xfer_has_chunk(x, 2));
    assert_false(ota_xfer_has_chunk(x, 3));
    for (uint32_t i = 3; i < 6; i++) {
        size_t len;
        const uint8_t *d = chunk_of(fx, i, &len);
        assert_int_equal(ota_xfer_put(x, i, d, len, err), OTA_OK);
    }
    assert_int_equal(ota_xfer_verify(x, err), OTA_OK);
    char part[512];
    snprintf(part, sizeof part, "%s", ota_xfer_path(x));
    ota_xfer_discard(x);
    assert_int_equal(access(part, F_OK), -1);
}

static void a_map_of_another_payload_starts_over(void **state)
{
    fixture *fx = *state;
    ota_xfer *x = open_xfer(fx);
    char err[256];
    size_t len;
    const uint8_t *d = chunk_of(fx, 0, &len);
    assert_int_equal(ota_xfer_put(x, 0, d, len, err), OTA_OK);
    char map[600];
    snprintf(map, sizeof map, "%s", ota_xfer_path(x));
    strcpy(strrchr(map, '.'), ".map");
    ota_xfer_close(x);
    FILE *f = fopen(map, "r+b");
    assert_non_null(f);
    assert_int_equal(fseek(f, 4, SEEK_SET), 0);
    fputc(99, f); /* n_chunks no longer matches */
    fclose(f);
    x = open_xfer(fx);
    assert_int_equal(ota_xfer_n_received(x), 0);
    ota_xfer_close(x);
}

static void message_round_trip_and_malformed_messages(void **state)
{
    fixture *fx = *state;
    ota_xfer *x = open_xfer(fx);
    char err[256];
    uint8_t id[OTA_XFER_ID_BYTES];
    ota_xfer_spec_id(&fx->spec, id);
    assert_memory_equal(id, ota_xfer_id(x), OTA_XFER_ID_BYTES);
    size_t len;
    const uint8_t *d = chunk_of(fx, 4, &len);
    uint8_t *msg;
    size_t msg_len;
    assert_int_equal(ota_xfer_msg_build(id, 4, d, len, &msg, &msg_len, err), OTA_OK);
    assert_int_equal(msg_len, OTA_XFER_HEADER_BYTES + len);
    assert_memory_equal(msg, "OTC1", 4);
    assert_int_equal(msg[12], 4);
    uint8_t pid[OTA_XFER_ID_BYTES];
    uint32_t index;
    const uint8_t *pd;
    size_t pl;
    assert_int_equal(ota_xfer_msg_parse(msg, msg_len, pid, &index, &pd, &pl, err), OTA_OK);
    assert_int_equal(index, 4);
    assert_int_equal(pl, len);
    assert_int_equal(ota_xfer_put_msg(x, msg, msg_len, err), OTA_OK);
    /* too short, bad magic, another transfer */
    assert_int_equal(ota_xfer_put_msg(x, msg, 10, err), OTA_ECHUNK);
    assert_int_equal(ota_xfer_msg_parse(NULL, 0, pid, &index, &pd, &pl, err), OTA_ECHUNK);
    msg[0] = 'X';
    assert_int_equal(ota_xfer_put_msg(x, msg, msg_len, err), OTA_ECHUNK);
    msg[0] = 'O';
    msg[5] ^= 0xff;
    assert_int_equal(ota_xfer_put_msg(x, msg, msg_len, err), OTA_EXFERID);
    free(msg);
    ota_xfer_close(x);
}

static void hostile_specs_are_refused(void **state)
{
    fixture *fx = *state;
    ota_xfer *x = NULL;
    char err[256];
    ota_xfer_spec s = fx->spec;
    s.chunk_size_bytes = 10;
    assert_int_equal(ota_xfer_open(fx->dir, &s, &x, err), OTA_EINVAL);
    s = fx->spec;
    s.n_chunks = 5; /* does not cover the size */
    assert_int_equal(ota_xfer_open(fx->dir, &s, &x, err), OTA_EINVAL);
    s = fx->spec;
    s.size_bytes = 0;
    assert_int_equal(ota_xfer_open(fx->dir, &s, &x, err), OTA_EINVAL);
    s = fx->spec;
    s.chunk_size_bytes = OTA_XFER_CHUNK_MAX_BYTES * 2u;
    assert_int_equal(ota_xfer_open(fx->dir, &s, &x, err), OTA_EINVAL);
    assert_null(x);
}

int main(void)
{
    if (sodium_init() < 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(chunks_in_any_order_assemble_the_payload, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(corrupted_short_and_stray_chunks_are_refused, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(progress_survives_a_reopen, setup, teardown),
        cmocka_unit_test_setup_teardown(a_map_of_another_payload_starts_over, setup, teardown),
        cmocka_unit_test_setup_teardown(message_round_trip_and_malformed_messages, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(hostile_specs_are_refused, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
