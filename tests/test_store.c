/*
 * test_store.c - the SQLite store against real database files.
 *
 * Every test gets a fresh directory from mkdtemp and removes it afterwards.
 * Nothing here speaks SQL: the tests go through the store_ API only, and the
 * one test that needs a database "from the future" edits the user_version
 * field of the file header directly (SQLite file format: a 4-byte big-endian
 * integer at offset 60). A fake clock makes ages and LRU order exact.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
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

#include "store.h"

typedef struct fixture {
    char dir[64];
    char db[128];
} fixture;

static int64_t fake_now_ms;

static int64_t fake_clock(void *ctx)
{
    (void)ctx;
    return fake_now_ms;
}

static int format_row(void *ud, const store_request_row *r, char **payload, size_t *len,
                      char err[256]);

static store_opts clock_opts(void)
{
    store_opts o = {0};
    o.now_ms = fake_clock;
    return o;
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    snprintf(f->dir, sizeof f->dir, "/tmp/outpost-store-XXXXXX");
    if (!mkdtemp(f->dir)) {
        free(f);
        return -1;
    }
    snprintf(f->db, sizeof f->db, "%s/outpost.db", f->dir);
    fake_now_ms = 1700000000000;
    *state = f;
    return 0;
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static int teardown(void **state)
{
    fixture *f = *state;
    nftw(f->dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
    free(f);
    return 0;
}

static store *open_ok(const char *path, const store_opts *o)
{
    char err[256] = "";
    store *s = NULL;
    int rc = store_open(&s, path, o, err);
    if (rc)
        print_error("store_open: %s\n", err);
    assert_int_equal(rc, 0);
    assert_non_null(s);
    return s;
}

static void new_session(store *s, uid_t uid, char id[STORE_ID_SIZE])
{
    char err[256];
    int rc = store_session_create(s, uid, "stories260K", NULL, id, err);
    if (rc)
        print_error("create: %s\n", err);
    assert_int_equal(rc, 0);
}

static void append(store *s, const char *id, uid_t uid, store_role role, const char *text)
{
    char err[256];
    int rc = store_message_append(s, id, uid, role, text, strlen(text), 3, NULL, err);
    if (rc)
        print_error("append: %s\n", err);
    assert_int_equal(rc, 0);
}

static size_t message_count(store *s, const char *id, uid_t uid)
{
    char err[256];
    store_message *m;
    size_t n;
    assert_int_equal(store_messages_load(s, id, uid, &m, &n, err), 0);
    store_messages_free(m, n);
    return n;
}

static store_request request(const char *id, store_route route, const char *status, double ttft)
{
    store_request r = {0};
    r.id = id;
    r.route = route;
    r.reason = "default";
    r.model = "stories260K";
    r.prompt_tokens = 10;
    r.completion_tokens = 20;
    r.ttft_ms = ttft;
    r.decode_tok_s = 50;
    r.token_p50_ms = 20;
    r.token_p95_ms = 30;
    r.status = status;
    return r;
}

static void insert_request(store *s, const store_request *r)
{
    char err[256];
    int rc = store_request_insert(s, r, err);
    if (rc)
        print_error("request insert: %s\n", err);
    assert_int_equal(rc, 0);
}

static int64_t request_count(store *s)
{
    char err[256];
    store_rollup ru;
    assert_int_equal(store_requests_rollup(s, INT64_MIN, &ru, err), 0);
    return ru.n_requests;
}

static bool file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* ---- opening and schema --------------------------------------------------- */

static void open_creates_private_wal_database_at_latest_version(void **state)
{
    fixture *f = *state;
    store *s = open_ok(f->db, NULL);
    assert_int_equal(store_user_version(s), store_schema_version());
    assert_true(store_schema_version() >= 2);

    struct stat st;
    assert_int_equal(stat(f->db, &st), 0);
    assert_int_equal(st.st_mode & 077, 0);
    char wal[160];
    snprintf(wal, sizeof wal, "%s-wal", f->db);
    char id[STORE_ID_SIZE];
    new_session(s, 1000, id);
    assert_true(file_exists(wal)); /* WAL mode: the write went to the log */
    assert_int_equal(stat(wal, &st), 0);
    assert_int_equal(st.st_mode & 077, 0);
    store_close(s);
    assert_false(file_exists(wal)); /* the last close checkpoints it away */
}

static void reopen_keeps_sessions_messages_and_settings(void **state)
{
    fixture *f = *state;
    char err[256], id[STORE_ID_SIZE];
    store *s = open_ok(f->db, NULL);
    new_session(s, 1000, id);
    append(s, id, 1000, STORE_ROLE_USER, "hello");
    append(s, id, 1000, STORE_ROLE_ASSISTANT, "hi there");
    assert_int_equal(store_setting_set(s, "policy.version", "7", err), 0);
    store_close(s);

    s = open_ok(f->db, NULL);
    store_message *m;
    size_t n;
    assert_int_equal(store_messages_load(s, id, 1000, &m, &n, err), 0);
    assert_int_equal(n, 2);
    assert_string_equal(m[0].content, "hello");
    assert_string_equal(m[1].content, "hi there");
    assert_int_equal(m[1].role, STORE_ROLE_ASSISTANT);
    store_messages_free(m, n);
    char *v;
    assert_int_equal(store_setting_get(s, "policy.version", &v, err), 0);
    assert_string_equal(v, "7");
    free(v);
    store_close(s);
}

/* A database left at each older schema version, with the data that version
 * can hold, upgrades to the latest and keeps that data. */
static void migrates_from_every_older_version_keeping_data(void **state)
{
    fixture *f = *state;
    char err[256];
    for (int from = 1; from < store_schema_version(); from++) {
        char path[160];
        snprintf(path, sizeof path, "%s/v%d.db", f->dir, from);
        store_opts o = {0};
        o.migrate_to = from;
        store *s = open_ok(path, &o);
        assert_int_equal(store_user_version(s), from);
        char id[STORE_ID_SIZE];
        new_session(s, 42, id);
        append(s, id, 42, STORE_ROLE_USER, "kept across the upgrade");
        if (from >= 2) {
            store_request r = request("req-1", STORE_ROUTE_CLOUD, "ok", 12);
            insert_request(s, &r);
        }
        if (from >= 3)
            assert_int_equal(store_outbox_put(s, "t", "x", 1, NULL, err), 0);
        store_close(s);

        s = open_ok(path, NULL);
        assert_int_equal(store_user_version(s), store_schema_version());
        store_session sess;
        assert_int_equal(store_session_get(s, id, 42, &sess, err), 0);
        assert_int_equal(sess.n_messages, 1);
        assert_string_equal(sess.kv_path, "");
        store_message *m;
        size_t n;
        assert_int_equal(store_messages_load(s, id, 42, &m, &n, err), 0);
        assert_int_equal(n, 1);
        assert_string_equal(m[0].content, "kept across the upgrade");
        store_messages_free(m, n);
        assert_int_equal(request_count(s), from >= 2 ? 1 : 0);
        int64_t pending;
        assert_int_equal(store_outbox_pending(s, &pending, err), 0);
        assert_int_equal(pending, from >= 3 ? 1 : 0);
        /* Everything the latest schema adds works on the upgraded file. */
        assert_int_equal(store_session_set_kv(s, id, "/var/kv/a.bin", 23, 4096, err), 0);
        store_kv_entry *kv;
        assert_int_equal(store_sessions_lru(s, 0, &kv, &n, err), 0);
        assert_int_equal(n, 1);
        assert_int_equal(kv[0].kv_tokens, 23);
        free(kv);
        store_request r = request("req-2", STORE_ROUTE_LOCAL, "ok", 5);
        insert_request(s, &r);
        assert_int_equal(store_outbox_put(s, "t", "y", 1, NULL, err), 0);
        /* Requests from before the upgrade to version 5 count as exported;
           new ones (and ones recorded at version 5 or later) not. */
        int calls = 0;
        size_t n_exp = 0;
        assert_int_equal(store_requests_export(s, "t", 10, format_row, &calls, 0, &n_exp, NULL,
                                               err), 0);
        assert_int_equal(n_exp, from >= 5 ? 2 : 1);
        int64_t cmd = 0;
        assert_int_equal(store_inbox_put(s, "c", "{}", 2, 4, &cmd, err), 0);
        assert_int_equal(store_inbox_done(s, cmd, NULL, NULL, err), 0);
        store_close(s);
    }
}

static void refuses_database_from_a_newer_version_and_leaves_it_alone(void **state)
{
    fixture *f = *state;
    char err[256] = "";
    store *s = open_ok(f->db, NULL);
    char id[STORE_ID_SIZE];
    new_session(s, 1, id);
    store_close(s);

    int fd = open(f->db, O_RDWR);
    assert_true(fd >= 0);
    uint32_t future = (uint32_t)store_schema_version() + 1;
    unsigned char be[4] = {(unsigned char)(future >> 24), (unsigned char)(future >> 16),
                           (unsigned char)(future >> 8), (unsigned char)future};
    assert_int_equal(pwrite(fd, be, 4, 60), 4);
    struct stat before;
    assert_int_equal(fstat(fd, &before), 0);
    unsigned char *orig = malloc((size_t)before.st_size);
    assert_non_null(orig);
    assert_int_equal(pread(fd, orig, (size_t)before.st_size, 0), before.st_size);

    s = NULL;
    assert_int_equal(store_open(&s, f->db, NULL, err), STORE_EVERSION);
    assert_null(s);
    assert_non_null(strstr(err, "newer than this build"));
    assert_non_null(strstr(err, f->db));

    struct stat after;
    assert_int_equal(fstat(fd, &after), 0);
    assert_int_equal(after.st_size, before.st_size);
    unsigned char *now = malloc((size_t)after.st_size);
    assert_non_null(now);
    assert_int_equal(pread(fd, now, (size_t)after.st_size, 0), after.st_size);
    assert_memory_equal(orig, now, (size_t)after.st_size);
    free(orig);
    free(now);
    close(fd);
}

static void refuses_garbage_file_and_unusable_paths_with_clear_errors(void **state)
{
    fixture *f = *state;
    char err[256] = "";
    store *s = NULL;
    int fd = open(f->db, O_WRONLY | O_CREAT, 0600);
    assert_true(fd >= 0);
    char junk[4096];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (char)('a' + i % 26);
    assert_int_equal(write(fd, junk, sizeof junk), (ssize_t)sizeof junk);
    close(fd);
    assert_int_equal(store_open(&s, f->db, NULL, err), STORE_ECORRUPT);
    assert_null(s);
    assert_non_null(strstr(err, "not a database"));

    assert_int_equal(store_open(&s, f->dir, NULL, err), STORE_EIO);
    assert_non_null(strstr(err, f->dir));
    char missing[160];
    snprintf(missing, sizeof missing, "%s/no/such/dir/x.db", f->dir);
    assert_int_equal(store_open(&s, missing, NULL, err), STORE_EIO);
    assert_non_null(strstr(err, "No such file"));
    store_opts o = {0};
    o.migrate_to = store_schema_version() + 1;
    assert_int_equal(store_open(&s, missing, &o, err), STORE_EINVAL);
    assert_null(s);
}

/* ---- sessions -------------------------------------------------------------- */

static void session_of_another_uid_looks_exactly_like_a_missing_one(void **state)
{
    fixture *f = *state;
    char err[256], err_other[256], err_gone[256], id[STORE_ID_SIZE];
    store *s = open_ok(f->db, NULL);
    new_session(s, 1000, id);
    append(s, id, 1000, STORE_ROLE_USER, "my secret");

    store_session sess;
    assert_int_equal(store_session_get(s, id, 1001, &sess, err_other), STORE_ENOTFOUND);
    store_message *m = NULL;
    size_t n = 7;
    assert_int_equal(store_messages_load(s, id, 1001, &m, &n, err), STORE_ENOTFOUND);
    assert_null(m);
    assert_int_equal(n, 0);
    assert_int_equal(store_message_append(s, id, 1001, STORE_ROLE_USER, "x", 1, 1, NULL, err),
                     STORE_ENOTFOUND);
    assert_int_equal(store_session_delete(s, id, 1001, NULL, err), STORE_ENOTFOUND);
    store_session *list;
    assert_int_equal(store_session_list(s, 1001, 0, &list, &n, err), 0);
    assert_int_equal(n, 0);
    assert_null(list);

    /* The owner still has it, untouched by the other uid's attempts. */
    assert_int_equal(store_session_get(s, id, 1000, &sess, err), 0);
    assert_int_equal(sess.owner_uid, 1000);
    assert_int_equal(sess.n_messages, 1);

    store_session gone;
    assert_int_equal(store_session_delete(s, id, 1000, &gone, err), 0);
    assert_string_equal(gone.id, id);
    assert_int_equal(store_session_get(s, id, 1000, &sess, err_gone), STORE_ENOTFOUND);
    assert_string_equal(err_other, err_gone);
    assert_int_equal(store_messages_load(s, id, 1000, &m, &n, err), STORE_ENOTFOUND);
    store_close(s);
}

static void messages_come_back_in_append_order(void **state)
{
    fixture *f = *state;
    char err[256], id[STORE_ID_SIZE];
    store *s = open_ok(f->db, &(store_opts){.now_ms = fake_clock});
    new_session(s, 7, id);
    for (int i = 0; i < 60; i++) {
        char text[32];
        snprintf(text, sizeof text, "message %d", i);
        int64_t seq;
        fake_now_ms += 10;
        assert_int_equal(store_message_append(s, id, 7, (store_role)(i % STORE_ROLE_COUNT), text,
                                              strlen(text), i, &seq, err),
                         0);
        assert_int_equal(seq, i + 1);
    }
    store_message *m;
    size_t n;
    assert_int_equal(store_messages_load(s, id, 7, &m, &n, err), 0);
    assert_int_equal(n, 60);
    for (int i = 0; i < 60; i++) {
        char text[32];
        snprintf(text, sizeof text, "message %d", i);
        assert_int_equal(m[i].seq, i + 1);
        assert_string_equal(m[i].content, text);
        assert_int_equal(m[i].content_len, strlen(text));
        assert_int_equal(m[i].role, i % STORE_ROLE_COUNT);
        assert_int_equal(m[i].n_tokens, i);
        assert_int_equal(m[i].created_ms, 1700000000000 + 10 * (i + 1));
    }
    store_messages_free(m, n);
    store_session sess;
    assert_int_equal(store_session_get(s, id, 7, &sess, err), 0);
    assert_int_equal(sess.n_messages, 60);
    assert_int_equal(sess.created_ms, 1700000000000);
    assert_int_equal(sess.last_used_ms, 1700000000000 + 600);
    store_close(s);
}

static void session_list_is_per_owner_and_lru_lists_saved_kv_oldest_first(void **state)
{
    fixture *f = *state;
    char err[256], a[STORE_ID_SIZE], b[STORE_ID_SIZE], c[STORE_ID_SIZE], other[STORE_ID_SIZE];
    store_opts o = clock_opts();
    store *s = open_ok(f->db, &o);
    new_session(s, 1, a);
    fake_now_ms += 1000;
    new_session(s, 1, b);
    fake_now_ms += 1000;
    assert_int_equal(store_session_create(s, 1, "tinyllama", "Trip plans", c, err), 0);
    new_session(s, 2, other);
    fake_now_ms += 1000;
    append(s, a, 1, STORE_ROLE_USER, "a is now the most recent");

    store_session *list;
    size_t n;
    assert_int_equal(store_session_list(s, 1, 0, &list, &n, err), 0);
    assert_int_equal(n, 3);
    assert_string_equal(list[0].id, a);
    assert_string_equal(list[1].id, c);
    assert_string_equal(list[1].title, "Trip plans");
    assert_string_equal(list[1].model, "tinyllama");
    assert_string_equal(list[2].id, b);
    free(list);
    assert_int_equal(store_session_list(s, 1, 2, &list, &n, err), 0);
    assert_int_equal(n, 2);
    free(list);

    assert_int_equal(store_session_set_kv(s, a, "/kv/a", 100, 1 << 20, err), 0);
    assert_int_equal(store_session_set_kv(s, b, "/kv/b", 50, 1 << 19, err), 0);
    assert_int_equal(store_session_set_kv(s, other, "/kv/o", 10, 1 << 18, err), 0);
    store_kv_entry *kv;
    assert_int_equal(store_sessions_lru(s, 0, &kv, &n, err), 0);
    assert_int_equal(n, 3);
    assert_string_equal(kv[0].id, b);
    assert_string_equal(kv[0].kv_path, "/kv/b");
    assert_int_equal(kv[0].kv_bytes, 1 << 19);
    assert_string_equal(kv[1].id, other);
    assert_string_equal(kv[2].id, a);
    free(kv);
    assert_int_equal(store_sessions_lru(s, 1, &kv, &n, err), 0);
    assert_int_equal(n, 1);
    assert_string_equal(kv[0].id, b);
    free(kv);

    assert_int_equal(store_session_set_kv(s, b, NULL, 0, 0, err), 0);
    assert_int_equal(store_sessions_lru(s, 0, &kv, &n, err), 0);
    assert_int_equal(n, 2);
    free(kv);
    assert_int_equal(store_session_set_kv(s, "0123456789abcdef0123456789abcdef", "/kv/x", 1, 1,
                                          err),
                     STORE_ENOTFOUND);

    store_session gone;
    assert_int_equal(store_session_delete(s, a, 1, &gone, err), 0);
    assert_string_equal(gone.kv_path, "/kv/a");
    assert_int_equal(gone.kv_tokens, 100);
    store_close(s);
}

static void new_ids_are_32_hex_digits_and_differ(void **state)
{
    (void)state;
    char err[256], a[STORE_ID_SIZE], b[STORE_ID_SIZE];
    assert_int_equal(store_new_id(a, err), 0);
    assert_int_equal(store_new_id(b, err), 0);
    assert_int_equal(strlen(a), 32);
    assert_int_equal(strspn(a, "0123456789abcdef"), 32);
    assert_string_not_equal(a, b);
}

/* ---- hostile input ---------------------------------------------------------- */

static void quotes_and_sql_in_strings_are_only_data(void **state)
{
    fixture *f = *state;
    char err[256], id[STORE_ID_SIZE];
    store *s = open_ok(f->db, NULL);
    new_session(s, 5, id);
    append(s, id, 5, STORE_ROLE_USER, "before");

    const char *evil_ids[] = {"x' OR '1'='1", "'; DROP TABLE sessions; --", "\"", "%s%n", "",
                              "0123456789abcdef0123456789abcdef' OR owner_uid != 5 --"};
    for (size_t i = 0; i < sizeof evil_ids / sizeof evil_ids[0]; i++) {
        store_session sess;
        assert_int_equal(store_session_get(s, evil_ids[i], 5, &sess, err), STORE_ENOTFOUND);
        assert_int_equal(store_message_append(s, evil_ids[i], 5, STORE_ROLE_USER, "x", 1, 1,
                                              NULL, err),
                         STORE_ENOTFOUND);
        assert_int_equal(store_session_delete(s, evil_ids[i], 5, NULL, err), STORE_ENOTFOUND);
    }

    char *long_id = malloc(10001);
    assert_non_null(long_id);
    memset(long_id, '\'', 10000);
    long_id[10000] = '\0';
    store_session sess;
    assert_int_equal(store_session_get(s, long_id, 5, &sess, err), STORE_ENOTFOUND);
    assert_int_equal(store_message_append(s, long_id, 5, STORE_ROLE_USER, "x", 1, 1, NULL, err),
                     STORE_ENOTFOUND);
    free(long_id);

    const char *model = "m'); DROP TABLE messages; --";
    const char *title = "it's \"quoted\" \\ and 100% %s";
    char id2[STORE_ID_SIZE];
    assert_int_equal(store_session_create(s, 5, model, title, id2, err), 0);
    const char *content = "Robert'); DROP TABLE sessions;-- \"x\" \\n \xf0\x9f\x98\x80 \xe2\x82\xac";
    append(s, id2, 5, STORE_ROLE_USER, content);
    assert_int_equal(store_session_get(s, id2, 5, &sess, err), 0);
    assert_string_equal(sess.model, model);
    assert_string_equal(sess.title, title);
    store_message *m;
    size_t n;
    assert_int_equal(store_messages_load(s, id2, 5, &m, &n, err), 0);
    assert_int_equal(n, 1);
    assert_string_equal(m[0].content, content);
    store_messages_free(m, n);
    assert_int_equal(store_setting_set(s, "k' OR 1=1 --", "v'; DELETE FROM settings", err), 0);
    char *v;
    assert_int_equal(store_setting_get(s, "k' OR 1=1 --", &v, err), 0);
    assert_string_equal(v, "v'; DELETE FROM settings");
    free(v);
    store_request r = request("r'); DROP TABLE requests; --", STORE_ROUTE_PEER, "ok", 3);
    r.reason = "'; --";
    insert_request(s, &r);

    /* Every table is still there, with its rows. */
    assert_int_equal(message_count(s, id, 5), 1);
    assert_int_equal(request_count(s), 1);
    store_close(s);
}

static void content_with_nul_or_broken_utf8_is_refused_clearly(void **state)
{
    fixture *f = *state;
    char err[256], id[STORE_ID_SIZE];
    store *s = open_ok(f->db, NULL);
    new_session(s, 9, id);

    assert_int_equal(store_message_append(s, id, 9, STORE_ROLE_USER, "ab\0cd", 5, 1, NULL, err),
                     STORE_EINVAL);
    assert_non_null(strstr(err, "NUL byte at offset 2"));
    const struct {
        const char *bytes;
        size_t len, bad_at;
    } bad[] = {
        {"ok \xc3\x28", 5, 3},       /* lead byte without continuation */
        {"\xc0\xaf", 2, 0},          /* overlong '/' */
        {"x\xed\xa0\x80", 4, 1},     /* UTF-16 surrogate */
        {"\xf4\x90\x80\x80", 4, 0},  /* above U+10FFFF */
        {"abc\xe2\x82", 5, 3},       /* cut short at the end */
        {"\x80", 1, 0},              /* stray continuation byte */
        {"\xff", 1, 0},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(store_message_append(s, id, 9, STORE_ROLE_USER, bad[i].bytes, bad[i].len,
                                              1, NULL, err),
                         STORE_EINVAL);
        char want[48];
        snprintf(want, sizeof want, "not valid UTF-8 at offset %zu", bad[i].bad_at);
        assert_non_null(strstr(err, want));
    }
    assert_int_equal(message_count(s, id, 9), 0);

    /* Well-formed text of every sequence length is accepted as is. */
    const char *good = "a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80";
    append(s, id, 9, STORE_ROLE_USER, good);
    append(s, id, 9, STORE_ROLE_USER, "");

    size_t big = STORE_CONTENT_MAX + 1;
    char *huge = malloc(big);
    assert_non_null(huge);
    memset(huge, 'a', big);
    assert_int_equal(store_message_append(s, id, 9, STORE_ROLE_USER, huge, big, 1, NULL, err),
                     STORE_EINVAL);
    assert_non_null(strstr(err, "limit"));
    free(huge);

    assert_int_equal(store_message_append(s, id, 9, (store_role)99, "x", 1, 1, NULL, err),
                     STORE_EINVAL);
    assert_int_equal(store_message_append(s, id, 9, STORE_ROLE_USER, "x", 1, -1, NULL, err),
                     STORE_EINVAL);
    assert_int_equal(store_message_append(s, id, 9, STORE_ROLE_USER, NULL, 0, 1, NULL, err),
                     STORE_EINVAL);
    assert_int_equal(store_message_append(s, NULL, 9, STORE_ROLE_USER, "x", 1, 1, NULL, err),
                     STORE_EINVAL);
    char long_model[STORE_NAME_MAX + 2];
    memset(long_model, 'm', sizeof long_model - 1);
    long_model[sizeof long_model - 1] = '\0';
    char id2[STORE_ID_SIZE];
    assert_int_equal(store_session_create(s, 9, long_model, NULL, id2, err), STORE_EINVAL);
    assert_int_equal(store_session_create(s, 9, "", NULL, id2, err), STORE_EINVAL);
    assert_int_equal(store_session_create(s, 9, "m\xff", NULL, id2, err), STORE_EINVAL);

    store_request r = request("r1", (store_route)7, "ok", 1);
    assert_int_equal(store_request_insert(s, &r, err), STORE_EINVAL);
    r = request("r1", STORE_ROUTE_LOCAL, "a status that is far too long to be a code", 1);
    assert_int_equal(store_request_insert(s, &r, err), STORE_EINVAL);
    r = request("r1", STORE_ROUTE_LOCAL, "ok", 1);
    r.prompt_tokens = -5;
    assert_int_equal(store_request_insert(s, &r, err), STORE_EINVAL);
    r = request("r1", STORE_ROUTE_LOCAL, "ok", 1);
    r.cost_usd = -1;
    assert_int_equal(store_request_insert(s, &r, err), STORE_EINVAL);
    assert_int_equal(request_count(s), 0);

    assert_int_equal(message_count(s, id, 9), 2);
    store_close(s);
}

/* ---- telemetry ------------------------------------------------------------ */

static void rollup_counts_routes_statuses_tokens_and_ttft_percentiles(void **state)
{
    fixture *f = *state;
    char err[256];
    store_opts o = clock_opts();
    store *s = open_ok(f->db, &o);

    store_request old = request("old", STORE_ROUTE_CLOUD, "ok", 1);
    old.created_ms = fake_now_ms - 3600 * 1000;
    insert_request(s, &old);
    /* 100 requests, ttft 1..100 ms, in shuffled order so the store must sort. */
    for (int k = 0; k < 100; k++) {
        int i = 1 + (k * 37) % 100;
        char id[16];
        snprintf(id, sizeof id, "r%d", i);
        store_request r = request(id, (store_route)(i % 3), i % 10 == 0 ? "timeout" : "ok", i);
        r.prompt_tokens = i;
        r.completion_tokens = 2 * i;
        r.cached_tokens = i / 2;
        r.cost_usd = r.route == STORE_ROUTE_CLOUD ? 0.25 : 0;
        insert_request(s, &r);
    }
    store_request failed = request(NULL, STORE_ROUTE_LOCAL, "queue_full", -1);
    failed.decode_tok_s = -1;
    failed.prompt_tokens = failed.completion_tokens = 0;
    insert_request(s, &failed);
    store_request dup = request("r5", STORE_ROUTE_LOCAL, "ok", 1);
    assert_int_equal(store_request_insert(s, &dup, err), STORE_EEXIST);
    assert_non_null(strstr(err, "r5"));

    store_rollup ru;
    assert_int_equal(store_requests_rollup(s, fake_now_ms - 60 * 1000, &ru, err), 0);
    assert_int_equal(ru.n_requests, 101);
    assert_int_equal(ru.n_errors, 11);
    assert_int_equal(ru.n_by_route[STORE_ROUTE_LOCAL], 34);
    assert_int_equal(ru.n_by_route[STORE_ROUTE_PEER], 34);
    assert_int_equal(ru.n_by_route[STORE_ROUTE_CLOUD], 33);
    assert_int_equal(ru.prompt_tokens, 5050);
    assert_int_equal(ru.completion_tokens, 10100);
    int64_t cached = 0;
    for (int i = 1; i <= 100; i++)
        cached += i / 2;
    assert_int_equal(ru.cached_tokens, cached);
    assert_float_equal(ru.cost_usd, 33 * 0.25, 1e-9);
    assert_float_equal(ru.ttft_p50_ms, 50, 0);
    assert_float_equal(ru.ttft_p95_ms, 95, 0);
    assert_float_equal(ru.decode_tok_s_mean, 50, 1e-9);

    /* Groups by (route, status): ok and timeout per route, plus queue_full. */
    int64_t sum = 0;
    bool saw_queue_full = false;
    for (int g = 0; g < ru.n_groups; g++) {
        sum += ru.groups[g].n;
        if (strcmp(ru.groups[g].status, "queue_full") == 0) {
            saw_queue_full = true;
            assert_int_equal(ru.groups[g].route, STORE_ROUTE_LOCAL);
            assert_int_equal(ru.groups[g].n, 1);
        }
        if (ru.groups[g].route == STORE_ROUTE_PEER && strcmp(ru.groups[g].status, "timeout") == 0)
            assert_int_equal(ru.groups[g].n, 4); /* 10, 40, 70, 100 */
    }
    assert_int_equal(ru.n_groups, 7);
    assert_int_equal(ru.groups_dropped, 0);
    assert_int_equal(sum, 101);
    assert_true(saw_queue_full);
    assert_true(ru.groups[0].n >= ru.groups[ru.n_groups - 1].n);

    /* Including the old row moves the totals, and an empty window is empty. */
    assert_int_equal(store_requests_rollup(s, 0, &ru, err), 0);
    assert_int_equal(ru.n_requests, 102);
    assert_int_equal(store_requests_rollup(s, fake_now_ms + 1, &ru, err), 0);
    assert_int_equal(ru.n_requests, 0);
    assert_int_equal(ru.n_groups, 0);
    assert_float_equal(ru.ttft_p50_ms, -1, 0);
    assert_float_equal(ru.decode_tok_s_mean, -1, 0);
    store_close(s);
}

/* ---- retention -------------------------------------------------------------- */

static void prune_drops_old_and_excess_telemetry_and_idle_sessions(void **state)
{
    fixture *f = *state;
    char err[256];
    store_opts o = clock_opts();
    store *s = open_ok(f->db, &o);
    const int64_t day_ms = 86400 * 1000;
    int64_t t0 = fake_now_ms;

    /* 1000 requests, one a minute from t0: more than several prune batches. */
    for (int i = 0; i < 1000; i++) {
        char id[16];
        snprintf(id, sizeof id, "q%d", i);
        store_request r = request(id, STORE_ROUTE_LOCAL, "ok", 1);
        r.created_ms = t0 + (int64_t)i * 60000;
        insert_request(s, &r);
    }
    char idle[STORE_ID_SIZE], busy[STORE_ID_SIZE], bare[STORE_ID_SIZE];
    new_session(s, 3, idle);
    new_session(s, 3, bare);
    new_session(s, 3, busy);
    append(s, idle, 3, STORE_ROLE_USER, "old conversation");
    assert_int_equal(store_session_set_kv(s, idle, "/kv/idle.bin", 12, 4096, err), 0);
    fake_now_ms = t0 + 3 * day_ms;
    append(s, busy, 3, STORE_ROLE_USER, "still going");

    /* Keep one day of telemetry, one day and 600 minutes after t0: the
       requests of minutes 0..599 are older than that and go, 400 stay. */
    fake_now_ms = t0 + day_ms + 600 * 60000;
    store_retention keep_day = {.request_max_age_s = 86400};
    store_prune_result res;
    assert_int_equal(store_prune(s, &keep_day, &res, err), 0);
    assert_int_equal(res.n_requests, 600);
    assert_int_equal(res.n_sessions, 0);
    store_prune_result_free(&res);
    assert_int_equal(request_count(s), 400);

    store_retention cap = {.max_requests = 100};
    assert_int_equal(store_prune(s, &cap, &res, err), 0);
    assert_int_equal(res.n_requests, 300);
    store_prune_result_free(&res);
    assert_int_equal(request_count(s), 100);
    store_rollup ru;
    assert_int_equal(store_requests_rollup(s, t0 + 900 * 60000, &ru, err), 0);
    assert_int_equal(ru.n_requests, 100); /* the newest hundred stayed */

    /* Sessions: idle and bare were last used at t0, busy at t0 + 3 days. */
    fake_now_ms = t0 + 4 * day_ms;
    store_retention idle_limit = {.session_idle_s = 2 * 86400};
    assert_int_equal(store_prune(s, &idle_limit, &res, err), 0);
    assert_int_equal(res.n_sessions, 2);
    assert_int_equal(res.n_kv_paths, 1);
    assert_string_equal(res.kv_paths[0], "/kv/idle.bin");
    store_prune_result_free(&res);
    store_session sess;
    assert_int_equal(store_session_get(s, idle, 3, &sess, err), STORE_ENOTFOUND);
    assert_int_equal(store_session_get(s, bare, 3, &sess, err), STORE_ENOTFOUND);
    assert_int_equal(store_session_get(s, busy, 3, &sess, err), 0);
    assert_int_equal(message_count(s, busy, 3), 1);

    /* Limits of zero keep everything. */
    store_retention none = {0};
    assert_int_equal(store_prune(s, &none, NULL, err), 0);
    assert_int_equal(request_count(s), 100);
    store_retention negative = {.max_requests = -1};
    assert_int_equal(store_prune(s, &negative, NULL, err), STORE_EINVAL);
    store_close(s);
}

/* ---- outbox ----------------------------------------------------------------- */

static void outbox_keeps_messages_across_restarts_until_acknowledged(void **state)
{
    fixture *f = *state;
    char err[256];
    store *s = open_ok(f->db, NULL);
    int64_t ids[5];
    const unsigned char bin[] = {0x00, 0xff, 0x10, 0x00, 0x7f};
    for (int i = 0; i < 5; i++) {
        char topic[64];
        snprintf(topic, sizeof topic, "outpost/v1/dev-1/telemetry");
        if (i == 4)
            assert_int_equal(store_outbox_put(s, topic, NULL, 0, &ids[i], err), 0);
        else
            assert_int_equal(store_outbox_put(s, topic, bin, sizeof bin - (size_t)i, &ids[i], err),
                             0);
        if (i)
            assert_true(ids[i] > ids[i - 1]);
    }
    store_outbox_msg *m;
    size_t n;
    assert_int_equal(store_outbox_peek(s, 3, &m, &n, err), 0);
    assert_int_equal(n, 3);
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(m[i].id, ids[i]);
        assert_int_equal(m[i].attempts, 1);
        assert_int_equal(m[i].payload_len, sizeof bin - i);
        assert_memory_equal(m[i].payload, bin, sizeof bin - i);
        assert_string_equal(m[i].topic, "outpost/v1/dev-1/telemetry");
    }
    store_outbox_free(m, n);
    int64_t acked[] = {ids[0], ids[2], 999999};
    assert_int_equal(store_outbox_ack(s, acked, 3, err), 0);
    store_close(s);

    s = open_ok(f->db, NULL);
    int64_t pending;
    assert_int_equal(store_outbox_pending(s, &pending, err), 0);
    assert_int_equal(pending, 3);
    assert_int_equal(store_outbox_peek(s, 10, &m, &n, err), 0);
    assert_int_equal(n, 3);
    assert_int_equal(m[0].id, ids[1]);
    assert_int_equal(m[0].attempts, 2);
    assert_int_equal(m[1].id, ids[3]);
    assert_int_equal(m[1].attempts, 1);
    assert_int_equal(m[2].id, ids[4]);
    assert_int_equal(m[2].payload_len, 0);
    assert_non_null(m[2].payload);
    int64_t rest[] = {m[0].id, m[1].id, m[2].id};
    store_outbox_free(m, n);
    assert_int_equal(store_outbox_ack(s, rest, 3, err), 0);
    assert_int_equal(store_outbox_pending(s, &pending, err), 0);
    assert_int_equal(pending, 0);
    assert_int_equal(store_outbox_peek(s, 10, &m, &n, err), 0);
    assert_int_equal(n, 0);
    store_outbox_free(m, n);

    store_prune_result res;
    store_retention none = {0};
    assert_int_equal(store_prune(s, &none, &res, err), 0);
    assert_int_equal(res.n_outbox, 5);
    store_prune_result_free(&res);
    int64_t next;
    assert_int_equal(store_outbox_put(s, "t", "z", 1, &next, err), 0);
    assert_true(next > ids[4]); /* ids are never reused, even after pruning */
    assert_int_equal(store_outbox_put(s, "", "z", 1, NULL, err), STORE_EINVAL);
    assert_int_equal(store_outbox_put(s, "t", NULL, 3, NULL, err), STORE_EINVAL);
    store_close(s);
}

/* ---- disk full -------------------------------------------------------------- */

static void full_database_fails_cleanly_and_keeps_committed_rows(void **state)
{
    fixture *f = *state;
    char err[256] = "", id[STORE_ID_SIZE];
    store_opts capped = {.max_db_bytes = 256 << 10};
    store *s = open_ok(f->db, &capped);
    new_session(s, 4, id);
    char text[2048];
    int ok = 0, rc = 0;
    for (int i = 0; i < 1000; i++) {
        memset(text, 'a' + i % 26, sizeof text - 1);
        text[sizeof text - 1] = '\0';
        rc = store_message_append(s, id, 4, STORE_ROLE_USER, text, strlen(text), 500, NULL, err);
        if (rc)
            break;
        ok++;
    }
    assert_int_equal(rc, STORE_EFULL);
    assert_true(ok > 10);
    assert_non_null(strstr(err, "database or disk is full"));
    assert_non_null(strstr(err, "committed data is intact"));
    assert_non_null(strstr(err, f->db));

    /* Other writes fail the same way and leave nothing half-done. */
    int64_t big_payload[1024] = {0};
    int64_t ob;
    assert_int_equal(store_outbox_put(s, "t", big_payload, sizeof big_payload, &ob, err),
                     STORE_EFULL);
    int64_t pending;
    assert_int_equal(store_outbox_pending(s, &pending, err), 0);
    assert_int_equal(pending, 0);

    store_message *m;
    size_t n;
    assert_int_equal(store_messages_load(s, id, 4, &m, &n, err), 0);
    assert_int_equal(n, (size_t)ok);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(m[i].seq, (int64_t)i + 1);
        assert_int_equal(m[i].content_len, sizeof text - 1);
        assert_int_equal(m[i].content[0], 'a' + (int)i % 26);
    }
    store_messages_free(m, n);
    store_close(s);

    /* With room again (no cap), the same file takes more and lost nothing. */
    s = open_ok(f->db, NULL);
    assert_int_equal(message_count(s, id, 4), (size_t)ok);
    append(s, id, 4, STORE_ROLE_ASSISTANT, "room again");
    assert_int_equal(message_count(s, id, 4), (size_t)ok + 1);
    store_close(s);
}

/* ---- threads ---------------------------------------------------------------- */

enum { N_THREADS = 4, N_OPS = 100 };

typedef struct worker {
    const char *path;
    store *shared;  /* NULL: open a handle of its own */
    int index;
    int failures;
    char first_err[256];
    char session[STORE_ID_SIZE];
} worker;

static void *worker_main(void *arg)
{
    worker *w = arg;
    char err[256];
    store *s = w->shared;
    if (!s && store_open(&s, w->path, NULL, err) != 0) {
        w->failures++;
        snprintf(w->first_err, sizeof w->first_err, "%s", err);
        return NULL;
    }
    int rc = store_session_create(s, (uid_t)(100 + w->index), "m", NULL, w->session, err);
    for (int i = 0; rc == 0 && i < N_OPS; i++) {
        char id[32], text[64];
        snprintf(id, sizeof id, "w%d-%d", w->index, i);
        snprintf(text, sizeof text, "thread %d message %d", w->index, i);
        store_request r = request(id, STORE_ROUTE_LOCAL, "ok", i);
        if ((rc = store_request_insert(s, &r, err)) ||
            (rc = store_message_append(s, w->session, (uid_t)(100 + w->index), STORE_ROLE_USER,
                                       text, strlen(text), 4, NULL, err)) ||
            (rc = store_outbox_put(s, "telemetry", text, strlen(text), NULL, err)))
            break;
        store_rollup ru;
        if (i % 10 == 0 && (rc = store_requests_rollup(s, 0, &ru, err)))
            break;
    }
    if (rc) {
        w->failures++;
        snprintf(w->first_err, sizeof w->first_err, "%s", err);
    }
    if (!w->shared)
        store_close(s);
    return NULL;
}

static void run_writers(const char *path, store *shared)
{
    worker w[N_THREADS];
    pthread_t t[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].path = path;
        w[i].shared = shared;
        w[i].index = i;
        assert_int_equal(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < N_THREADS; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    for (int i = 0; i < N_THREADS; i++) {
        if (w[i].failures)
            print_error("thread %d: %s\n", i, w[i].first_err);
        assert_int_equal(w[i].failures, 0);
    }

    char err[256];
    store *s = shared ? shared : open_ok(path, NULL);
    assert_int_equal(request_count(s), N_THREADS * N_OPS);
    int64_t pending;
    assert_int_equal(store_outbox_pending(s, &pending, err), 0);
    assert_int_equal(pending, N_THREADS * N_OPS);
    for (int i = 0; i < N_THREADS; i++) {
        store_message *m;
        size_t n;
        assert_int_equal(store_messages_load(s, w[i].session, (uid_t)(100 + i), &m, &n, err), 0);
        assert_int_equal(n, N_OPS);
        for (size_t k = 0; k < n; k++)
            assert_int_equal(m[k].seq, (int64_t)k + 1);
        store_messages_free(m, n);
    }
    if (!shared)
        store_close(s);
}

static void four_writers_with_own_handles_never_see_busy(void **state)
{
    fixture *f = *state;
    store_close(open_ok(f->db, NULL));
    run_writers(f->db, NULL);
}

static void four_threads_sharing_one_handle_all_succeed(void **state)
{
    fixture *f = *state;
    store *s = open_ok(f->db, NULL);
    run_writers(f->db, s);
    store_close(s);
}

/* ---- settings --------------------------------------------------------------- */

/* The export formatter of the tests: "<id>|<route>|<ttft or nan>". */
static int format_row(void *ud, const store_request_row *r, char **payload, size_t *len,
                      char err[256])
{
    int *calls = ud;
    (*calls)++;
    if (strcmp(r->id, "refuse-me") == 0) {
        snprintf(err, 256, "formatter refuses %s", r->id);
        return -1;
    }
    char buf[256];
    int n = snprintf(buf, sizeof buf, "%s|%s|%g", r->id, store_route_name(r->route), r->ttft_ms);
    *payload = strdup(buf);
    *len = (size_t)n;
    return *payload ? 0 : -1;
}

/* Every request is exported once, across handles (restarts), oldest first;
 * a formatter failure leaves nothing marked. */
static void requests_are_exported_to_the_outbox_exactly_once(void **state)
{
    fixture *f = *state;
    char err[256];
    store *s = open_ok(f->db, NULL);
    for (int i = 0; i < 5; i++) {
        char id[16];
        snprintf(id, sizeof id, "req-%d", i);
        store_request r = request(id, i == 2 ? STORE_ROUTE_CLOUD : STORE_ROUTE_LOCAL, "ok",
                                  i == 3 ? -1 : 10 + i);
        insert_request(s, &r);
    }
    int calls = 0;
    size_t n = 0;
    store_outbox_drops d = {0};
    assert_int_equal(store_requests_export(s, "t/telemetry", 3, format_row, &calls, 0, &n, &d, err),
                     0);
    assert_int_equal(n, 3);
    assert_int_equal(store_requests_export(s, "t/telemetry", 3, format_row, &calls, 0, &n, &d, err),
                     0);
    assert_int_equal(n, 2);
    store_close(s);
    s = open_ok(f->db, NULL);
    assert_int_equal(store_requests_export(s, "t/telemetry", 3, format_row, &calls, 0, &n, &d, err),
                     0);
    assert_int_equal(n, 0);
    assert_int_equal(calls, 5);

    store_outbox_msg *m;
    size_t nm;
    assert_int_equal(store_outbox_peek(s, 10, &m, &nm, err), 0);
    assert_int_equal(nm, 5);
    assert_string_equal((char *)m[0].payload, "req-0|local|10");
    assert_string_equal((char *)m[2].payload, "req-2|cloud|12");
    assert_string_equal((char *)m[3].payload, "req-3|local|nan");
    assert_string_equal(m[4].topic, "t/telemetry");
    store_outbox_free(m, nm);

    store_request bad = request("refuse-me", STORE_ROUTE_LOCAL, "ok", 1);
    insert_request(s, &bad);
    assert_int_not_equal(store_requests_export(s, "t/telemetry", 10, format_row, &calls, 0, &n, &d,
                                               err), 0);
    assert_non_null(strstr(err, "refuse-me"));
    int64_t pending;
    assert_int_equal(store_outbox_pending(s, &pending, err), 0);
    assert_int_equal(pending, 5);
    assert_int_equal(store_requests_export(s, "t/telemetry", 0, format_row, &calls, 0, &n, &d, err),
                     STORE_EINVAL);
    store_close(s);
}

/* Over the bound, roll-ups go first (oldest first), then the oldest
 * records; the drops are counted; peek_after skips what is in flight. */
static void bounded_outbox_drops_rollups_first_and_counts(void **state)
{
    fixture *f = *state;
    char err[256];
    store *s = open_ok(f->db, NULL);
    store_outbox_drops d = {0};
    int64_t ids[8];
    /* r0 R1 r2 R3 r4 (R = roll-up), bound 5: nothing dropped yet. */
    for (int i = 0; i < 5; i++) {
        char p[8];
        snprintf(p, sizeof p, "%c%d", i % 2 ? 'R' : 'r', i);
        assert_int_equal(store_outbox_put_kind(s, "t", p, strlen(p),
                                               i % 2 ? STORE_OUTBOX_ROLLUP : STORE_OUTBOX_RECORD,
                                               5, &ids[i], &d, err), 0);
    }
    assert_int_equal(d.rollups, 0);
    assert_int_equal(d.records, 0);
    /* r5: R1 goes. r6: R3 goes. r7: no roll-up left, r0 goes. */
    for (int i = 5; i < 8; i++) {
        char p[8];
        snprintf(p, sizeof p, "r%d", i);
        assert_int_equal(store_outbox_put_kind(s, "t", p, strlen(p), STORE_OUTBOX_RECORD, 5,
                                               &ids[i], &d, err), 0);
    }
    assert_int_equal(d.rollups, 2);
    assert_int_equal(d.records, 1);
    store_outbox_msg *m;
    size_t n;
    assert_int_equal(store_outbox_peek(s, 10, &m, &n, err), 0);
    assert_int_equal(n, 5);
    const char *want[] = {"r2", "r4", "r5", "r6", "r7"};
    for (size_t i = 0; i < n; i++)
        assert_string_equal((char *)m[i].payload, want[i]);
    store_outbox_free(m, n);
    assert_int_equal(store_outbox_peek_after(s, ids[5], 10, &m, &n, err), 0);
    assert_int_equal(n, 2);
    assert_int_equal(m[0].id, ids[6]);
    store_outbox_free(m, n);
    /* An acknowledged message does not count against the bound. */
    assert_int_equal(store_outbox_ack(s, &ids[2], 1, err), 0);
    assert_int_equal(store_outbox_put_kind(s, "t", "r8", 2, STORE_OUTBOX_RECORD, 5, NULL, &d, err),
                     0);
    assert_int_equal(d.records, 1);
    assert_int_equal(store_outbox_put_kind(s, "t", "x", 1, (store_outbox_kind)7, 5, NULL, &d, err),
                     STORE_EINVAL);
    store_close(s);
}

static void settings_overwrite_delete_and_report_missing(void **state)
{
    fixture *f = *state;
    char err[256];
    store *s = open_ok(f->db, NULL);
    char *v = (char *)"untouched";
    assert_int_equal(store_setting_get(s, "cloud.spend_usd", &v, err), STORE_ENOTFOUND);
    assert_null(v);
    assert_non_null(strstr(err, "cloud.spend_usd"));
    assert_int_equal(store_setting_set(s, "cloud.spend_usd", "1.5", err), 0);
    assert_int_equal(store_setting_set(s, "cloud.spend_usd", "2.25", err), 0);
    assert_int_equal(store_setting_get(s, "cloud.spend_usd", &v, err), 0);
    assert_string_equal(v, "2.25");
    free(v);
    assert_int_equal(store_setting_set(s, "empty", "", err), 0);
    assert_int_equal(store_setting_get(s, "empty", &v, err), 0);
    assert_string_equal(v, "");
    free(v);
    assert_int_equal(store_setting_delete(s, "cloud.spend_usd", err), 0);
    assert_int_equal(store_setting_delete(s, "cloud.spend_usd", err), STORE_ENOTFOUND);
    assert_int_equal(store_setting_set(s, "", "x", err), STORE_EINVAL);
    assert_int_equal(store_setting_set(s, "k", "\xc3", err), STORE_EINVAL);
    store_close(s);
}

/* The fleet's command inbox: bounded, kept across a reopen (a crash between
 * the PUBACK and the command being taken up), peeks count attempts, and
 * done deletes the row and writes the state in one transaction. */
static void inbox_keeps_commands_until_done_and_is_bounded(void **state)
{
    fixture *f = *state;
    char err[256] = "";
    store *s = open_ok(f->db, NULL);
    int64_t a = 0, b = 0, c = 0;
    assert_int_equal(store_inbox_put(s, "outpost/v1/dev1/cmd", "{\"seq\":1}", 9, 2, &a, err), 0);
    assert_int_equal(store_inbox_put(s, "outpost/v1/group/g/cmd", "", 0, 2, &b, err), 0);
    assert_true(b > a);
    assert_int_equal(store_inbox_put(s, "outpost/v1/dev1/cmd", "x", 1, 2, &c, err), STORE_EFULL);
    assert_non_null(strstr(err, "inbox"));
    assert_int_equal(store_inbox_put(s, "", "x", 1, 2, &c, err), STORE_EINVAL);
    store_close(s);

    s = open_ok(f->db, NULL);
    store_outbox_msg *m = NULL;
    size_t n = 0;
    assert_int_equal(store_inbox_peek(s, 16, &m, &n, err), 0);
    assert_int_equal(n, 2);
    assert_int_equal(m[0].id, a);
    assert_string_equal(m[0].topic, "outpost/v1/dev1/cmd");
    assert_int_equal(m[0].payload_len, 9);
    assert_memory_equal(m[0].payload, "{\"seq\":1}", 9);
    assert_int_equal(m[0].attempts, 1);
    assert_int_equal(m[1].payload_len, 0);
    store_outbox_free(m, n);

    assert_int_equal(store_inbox_done(s, a, "fleet.state", "{\"last_seq\":1}", err), 0);
    char *v = NULL;
    assert_int_equal(store_setting_get(s, "fleet.state", &v, err), 0);
    assert_string_equal(v, "{\"last_seq\":1}");
    free(v);
    /* A refused value leaves the row where it was. */
    assert_int_equal(store_inbox_done(s, b, "fleet.state", "\xc3", err), STORE_EINVAL);
    assert_int_equal(store_inbox_peek(s, 16, &m, &n, err), 0);
    assert_int_equal(n, 1);
    assert_int_equal(m[0].id, b);
    assert_int_equal(m[0].attempts, 2);
    store_outbox_free(m, n);
    assert_int_equal(store_inbox_done(s, b, NULL, NULL, err), 0);
    assert_int_equal(store_inbox_peek(s, 16, &m, &n, err), 0);
    assert_int_equal(n, 0);
    store_outbox_free(m, n);
    /* Room again; ids are never reused. */
    assert_int_equal(store_inbox_put(s, "outpost/v1/dev1/cmd", "y", 1, 2, &c, err), 0);
    assert_true(c > b);
    store_close(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(open_creates_private_wal_database_at_latest_version,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(reopen_keeps_sessions_messages_and_settings, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(migrates_from_every_older_version_keeping_data, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(refuses_database_from_a_newer_version_and_leaves_it_alone,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(refuses_garbage_file_and_unusable_paths_with_clear_errors,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(session_of_another_uid_looks_exactly_like_a_missing_one,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(messages_come_back_in_append_order, setup, teardown),
        cmocka_unit_test_setup_teardown(
            session_list_is_per_owner_and_lru_lists_saved_kv_oldest_first, setup, teardown),
        cmocka_unit_test(new_ids_are_32_hex_digits_and_differ),
        cmocka_unit_test_setup_teardown(quotes_and_sql_in_strings_are_only_data, setup, teardown),
        cmocka_unit_test_setup_teardown(content_with_nul_or_broken_utf8_is_refused_clearly, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(rollup_counts_routes_statuses_tokens_and_ttft_percentiles,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(prune_drops_old_and_excess_telemetry_and_idle_sessions,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(outbox_keeps_messages_across_restarts_until_acknowledged,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(full_database_fails_cleanly_and_keeps_committed_rows,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(four_writers_with_own_handles_never_see_busy, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(four_threads_sharing_one_handle_all_succeed, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(requests_are_exported_to_the_outbox_exactly_once, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(bounded_outbox_drops_rollups_first_and_counts, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(inbox_keeps_commands_until_done_and_is_bounded, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(settings_overwrite_delete_and_report_missing, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
