/*
 * test_scheduler.c - the engine worker with the real stories260K model and a
 * real SQLite store: prefix reuse within a session, and the saved KV states
 * of sessions (agent/scheduler.c, "Saved sessions"): saved when the worker
 * turns to another session and when it stops, restored for the session's
 * next turn (also after a restart), kept within the disk budget by evicting
 * the least recently used, never written with a budget of 0, refused and
 * removed when damaged (the turn still succeeds), removed when the session
 * was deleted meanwhile, and leftovers cleaned at start. The live cache is
 * not reused across uids.
 *
 * Jobs are built as the HTTP front builds them: a session's history from
 * the store, then the new user message; the sink waits for on_done.
 */
#include <dirent.h>
#include <pthread.h>
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

#include "scheduler.h"
#include "store.h"

#define MODEL OUTPOST_SHARED "/models/stories260K.gguf"
#define UID_A 1000
#define UID_B 1001

typedef struct fixture {
    char dir[64], kv_dir[96], db[96];
    store *st;
    sched *s;
} fixture;

typedef struct waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done;
} waiter;

static void on_done(void *ud, sched_job *j)
{
    (void)j;
    waiter *w = ud;
    pthread_mutex_lock(&w->mu);
    w->done = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

static void open_sched(fixture *f, int64_t budget_bytes)
{
    sched_opts o = {
        .name = "stories260K",
        .path = MODEL,
        .n_threads = 1,
        .max_tokens_default = 12,
        .st = f->st,
        .kv_dir = f->kv_dir,
        .kv_budget_bytes = budget_bytes,
    };
    char err[256];
    if (sched_open(&f->s, &o, err))
        fail_msg("sched_open: %s", err);
}

static fixture *new_fixture(int64_t budget_bytes)
{
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/test_sched.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->kv_dir, sizeof f->kv_dir, "%s/kv", f->dir);
    snprintf(f->db, sizeof f->db, "%s/outpost.db", f->dir);
    assert_int_equal(mkdir(f->kv_dir, 0700), 0);
    char err[256];
    if (store_open(&f->st, f->db, NULL, err))
        fail_msg("store_open: %s", err);
    open_sched(f, budget_bytes);
    return f;
}

static void free_fixture(fixture *f)
{
    sched_close(f->s);
    store_close(f->st);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
}

static void new_session(fixture *f, uid_t uid, char id[STORE_ID_SIZE])
{
    char err[256];
    if (store_session_create(f->st, uid, "stories260K", NULL, id, err))
        fail_msg("%s", err);
}

typedef struct turn {
    int64_t prompt_tokens, cached_tokens, completion_tokens;
} turn;

/* One chat turn (greedy, 12 tokens): the session's history, then `text`. */
static turn run_turn(fixture *f, const char *session, uid_t uid, const char *text)
{
    sched_job *j = sched_job_new();
    assert_non_null(j);
    char err[256];
    if (session) {
        snprintf(j->session_id, sizeof j->session_id, "%s", session);
        store_message *m = NULL;
        size_t n = 0;
        if (store_messages_load(f->st, session, uid, &m, &n, err))
            fail_msg("%s", err);
        for (size_t i = 0; i < n; i++)
            assert_int_equal(sched_job_add_msg(j, m[i].role, m[i].content, m[i].content_len), 0);
        store_messages_free(m, n);
        j->n_history = j->n_msgs;
    }
    assert_int_equal(sched_job_add_msg(j, STORE_ROLE_USER, text, strlen(text)), 0);
    j->uid = uid;
    j->sampling.temp = 0;
    j->max_tokens = 12;
    j->t_arrival = sched_now();
    snprintf(j->model, sizeof j->model, "stories260K");
    waiter w = {.done = false};
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    j->sink = (sched_sink){.ud = &w, .on_done = on_done};
    if (sched_prepare(f->s, j, err))
        fail_msg("sched_prepare: %s", err);
    if (sched_submit(f->s, j, err))
        fail_msg("sched_submit: %s", err);
    pthread_mutex_lock(&w.mu);
    while (!w.done)
        pthread_cond_wait(&w.cv, &w.mu);
    pthread_mutex_unlock(&w.mu);
    pthread_cond_destroy(&w.cv);
    pthread_mutex_destroy(&w.mu);
    if (j->status != SCHED_OK)
        fail_msg("turn failed: %s", j->err);
    turn t = {j->prompt_tokens, j->cached_tokens, j->completion_tokens};
    sched_job_free(j);
    return t;
}

static const char text_s[] = "Tell me a story about a cat who lived in a big red house by the sea.";
static const char text_t[] = "Once upon a time, a little dog found a shiny blue ball in the park.";

static sched_stats stats(fixture *f)
{
    sched_stats st;
    sched_get_stats(f->s, &st);
    return st;
}

static bool file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static void kv_file(const fixture *f, const char *id, char *out, size_t size)
{
    snprintf(out, size, "%s/%s.kv", f->kv_dir, id);
}

static store_session get_session(fixture *f, const char *id, uid_t uid)
{
    store_session s;
    char err[256];
    if (store_session_get(f->st, id, uid, &s, err))
        fail_msg("%s", err);
    return s;
}

static int count_files(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

/* Every test starts from a fresh directory, store and scheduler with a
 * 1 MiB budget (a test that needs another reopens the scheduler). */
static int setup(void **state)
{
    *state = new_fixture(1 << 20);
    return 0;
}

static int teardown(void **state)
{
    free_fixture(*state);
    return 0;
}

/* Two sessions of UID_A, s then t each with a first turn: turning to t
 * saved s's state, whose file is path. Returns s's turn; t's in *t1 (may
 * be NULL). */
static turn two_sessions_s_saved(fixture *f, char s[STORE_ID_SIZE], char t[STORE_ID_SIZE],
                                 char path[256], turn *t1)
{
    new_session(f, UID_A, s);
    new_session(f, UID_A, t);
    turn s1 = run_turn(f, s, UID_A, text_s);
    turn tt = run_turn(f, t, UID_A, text_t);
    if (t1)
        *t1 = tt;
    kv_file(f, s, path, 256);
    assert_true(file_exists(path));
    return s1;
}

static void touch(const char *path)
{
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fclose(fp);
}

static void second_turn_reuses_the_first_from_the_live_cache(void **state)
{
    fixture *f = *state;
    char s[STORE_ID_SIZE];
    new_session(f, UID_A, s);
    turn t1 = run_turn(f, s, UID_A, text_s);
    turn t2 = run_turn(f, s, UID_A, "What did the cat do next?");
    assert_true(t1.prompt_tokens >= 8);
    assert_true(t2.cached_tokens >= t1.prompt_tokens);
    assert_true(t2.prompt_tokens > t2.cached_tokens);
    /* Nothing was switched away from, so nothing was written. */
    assert_int_equal(stats(f).kv_saves, 0);
    assert_int_equal(count_files(f->kv_dir), 0);
}

static void switching_sessions_saves_and_the_next_turn_restores(void **state)
{
    fixture *f = *state;
    char s[STORE_ID_SIZE], t[STORE_ID_SIZE], path[256];
    turn t1;
    turn s1 = two_sessions_s_saved(f, s, t, path, &t1);
    /* Turning to t saved s: the file and its row. */
    store_session row = get_session(f, s, UID_A);
    assert_string_equal(row.kv_path, path);
    assert_true(row.kv_tokens >= s1.prompt_tokens);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(row.kv_bytes, (int64_t)st.st_size);
    assert_int_equal(stats(f).kv_saves, 1);
    /* t's turn reused at most what the two prompts share. */
    assert_true(t1.cached_tokens < s1.prompt_tokens / 2);

    turn s2 = run_turn(f, s, UID_A, "What did the cat do next?");
    assert_int_equal(stats(f).kv_restores, 1);
    assert_true(s2.cached_tokens >= s1.prompt_tokens);
    /* and turning back to s saved t */
    kv_file(f, t, path, sizeof path);
    assert_true(file_exists(path));
    assert_int_equal(stats(f).kv_saves, 2);
}

static void a_restart_restores_the_session_saved_at_stop(void **state)
{
    fixture *f = *state;
    char s[STORE_ID_SIZE], path[256];
    new_session(f, UID_A, s);
    turn s1 = run_turn(f, s, UID_A, text_s);
    kv_file(f, s, path, sizeof path);
    assert_false(file_exists(path));
    sched_close(f->s); /* stopping saves the live session */
    f->s = NULL;
    assert_true(file_exists(path));
    open_sched(f, 1 << 20);
    turn s2 = run_turn(f, s, UID_A, "What did the cat do next?");
    assert_true(s2.cached_tokens >= s1.prompt_tokens);
    assert_int_equal(stats(f).kv_restores, 1);
}

static void a_zero_budget_writes_nothing_and_clears_old_files(void **state)
{
    fixture *f = *state;
    char s[STORE_ID_SIZE], t[STORE_ID_SIZE], path[256];
    turn s1 = two_sessions_s_saved(f, s, t, path, NULL);
    /* Restart with budget 0: the old file goes, and none are written. */
    sched_close(f->s);
    open_sched(f, 0);
    assert_false(file_exists(path));
    assert_string_equal(get_session(f, s, UID_A).kv_path, "");
    assert_string_equal(get_session(f, t, UID_A).kv_path, "");
    turn s2 = run_turn(f, s, UID_A, "What did the cat do next?");
    run_turn(f, t, UID_A, "And the dog?");
    assert_true(s2.cached_tokens < s1.prompt_tokens);
    assert_int_equal(count_files(f->kv_dir), 0);
    assert_int_equal(stats(f).kv_saves, 0);
}

static void the_budget_evicts_the_least_recently_used(void **state)
{
    /* Find the size of one state, then allow a little more than two. */
    fixture *f = *state;
    char a[STORE_ID_SIZE], b[STORE_ID_SIZE], c[STORE_ID_SIZE], pa[256], pb[256], pc[256];
    new_session(f, UID_A, a);
    run_turn(f, a, UID_A, text_s);
    run_turn(f, NULL, UID_A, "hello");
    int64_t one = get_session(f, a, UID_A).kv_bytes;
    assert_true(one > 0);
    free_fixture(f);

    *state = f = new_fixture(one * 2 + one / 2);
    new_session(f, UID_A, a);
    new_session(f, UID_A, b);
    new_session(f, UID_A, c);
    run_turn(f, a, UID_A, text_s);
    run_turn(f, b, UID_A, text_s); /* saves a */
    run_turn(f, c, UID_A, text_s); /* saves b */
    kv_file(f, a, pa, sizeof pa);
    kv_file(f, b, pb, sizeof pb);
    kv_file(f, c, pc, sizeof pc);
    assert_true(file_exists(pa) && file_exists(pb) && !file_exists(pc));
    run_turn(f, NULL, UID_A, "hello"); /* saves c: a, the oldest, must go */
    assert_false(file_exists(pa));
    assert_true(file_exists(pb) && file_exists(pc));
    assert_string_equal(get_session(f, a, UID_A).kv_path, "");
    assert_int_equal(stats(f).kv_evictions, 1);
    /* A state larger than the whole budget is not written at all. */
    sched_close(f->s);
    open_sched(f, one / 2);
    assert_int_equal(count_files(f->kv_dir), 0); /* evicted down to the budget */
    run_turn(f, a, UID_A, text_s);
    run_turn(f, NULL, UID_A, "hello");
    assert_int_equal(count_files(f->kv_dir), 0);
}

static void a_damaged_file_is_removed_and_the_turn_prefills(void **state)
{
    fixture *f = *state;
    char s[STORE_ID_SIZE], t[STORE_ID_SIZE], path[256];
    turn s1 = two_sessions_s_saved(f, s, t, path, NULL);
    /* Flip one byte in the middle of the rows. */
    FILE *fp = fopen(path, "r+b");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    long size = ftell(fp);
    fseek(fp, size / 2, SEEK_SET);
    int ch = fgetc(fp);
    fseek(fp, size / 2, SEEK_SET);
    fputc(ch ^ 0x10, fp);
    fclose(fp);
    turn s2 = run_turn(f, s, UID_A, "What did the cat do next?");
    assert_true(s2.completion_tokens > 0);
    assert_true(s2.cached_tokens < s1.prompt_tokens);
    assert_int_equal(stats(f).kv_restore_failures, 1);
    assert_int_equal(stats(f).kv_restores, 0);
    assert_false(file_exists(path));
    /* The same turn again, from the live cache: the greedy reply and the
     * reuse show the cache was left sound. */
    turn s3 = run_turn(f, s, UID_A, "And then?");
    assert_true(s3.cached_tokens >= s2.prompt_tokens);
}

static void a_session_deleted_while_live_leaves_no_file(void **state)
{
    fixture *f = *state;
    char s[STORE_ID_SIZE], path[256], err[256];
    new_session(f, UID_A, s);
    run_turn(f, s, UID_A, text_s);
    assert_int_equal(store_session_delete(f->st, s, UID_A, NULL, err), 0);
    run_turn(f, NULL, UID_A, text_t); /* would save s */
    kv_file(f, s, path, sizeof path);
    assert_false(file_exists(path));
    assert_int_equal(count_files(f->kv_dir), 0);
}

static void leftovers_are_cleaned_at_start(void **state)
{
    fixture *f = *state;
    char s[STORE_ID_SIZE], kept[256], path[256];
    new_session(f, UID_A, s);
    run_turn(f, s, UID_A, text_s);
    sched_close(f->s);
    kv_file(f, s, kept, sizeof kept);
    assert_true(file_exists(kept));
    const char *junk[] = {"0123456789abcdef0123456789abcdef.kv",
                          "0123456789abcdef0123456789abcdef.kv.tmp.Ab12Cd"};
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s", f->kv_dir, junk[i]);
        touch(path);
    }
    snprintf(path, sizeof path, "%s/notes.txt", f->kv_dir);
    touch(path);
    open_sched(f, 1 << 20);
    assert_true(file_exists(kept));
    assert_true(file_exists(path)); /* not a name the scheduler gives */
    assert_int_equal(count_files(f->kv_dir), 2);
    /* A row whose file is gone is forgotten. */
    sched_close(f->s);
    unlink(kept);
    open_sched(f, 1 << 20);
    assert_string_equal(get_session(f, s, UID_A).kv_path, "");
}

static void the_live_cache_is_not_shared_across_uids(void **state)
{
    fixture *f = *state;
    turn a1 = run_turn(f, NULL, UID_A, text_s);
    turn b1 = run_turn(f, NULL, UID_B, text_s);
    turn b2 = run_turn(f, NULL, UID_B, text_s);
    assert_true(a1.prompt_tokens >= 8);
    assert_int_equal(b1.cached_tokens, 0);
    assert_int_equal(b2.cached_tokens, b2.prompt_tokens - 1);
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(second_turn_reuses_the_first_from_the_live_cache),
        T(switching_sessions_saves_and_the_next_turn_restores),
        T(a_restart_restores_the_session_saved_at_stop),
        T(a_zero_budget_writes_nothing_and_clears_old_files),
        T(the_budget_evicts_the_least_recently_used),
        T(a_damaged_file_is_removed_and_the_turn_prefills),
        T(a_session_deleted_while_live_leaves_no_file),
        T(leftovers_are_cleaned_at_start),
        T(the_live_cache_is_not_shared_across_uids),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
