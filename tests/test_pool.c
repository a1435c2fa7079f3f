/*
 * test_pool.c - the compute thread pool (engine/pool.c) against its contract:
 * every job runs fn(ctx, i, nth) exactly once for each share i, whichever
 * thread runs it, and pool_run returns only after all shares are done.
 *
 * Shares are claimed, so a share may run on a thread other than its own
 * worker (the caller takes the share of a worker that is asleep or
 * descheduled). The tests record which thread ran each share and check the
 * once-per-share rule and the results, never timing.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "pool.h"

#define MAX_SHARES 8

typedef struct record {
    atomic_int runs[MAX_SHARES];      /* times share i ran in this job */
    pthread_t who[MAX_SHARES];        /* the thread that ran it */
    atomic_int bad_nth;               /* calls that saw a wrong nth */
    int nth;
    long sum[MAX_SHARES];             /* share i's part of a computed result */
    const long *data;
    long n;
} record;

static void record_share(void *arg, int ith, int nth)
{
    record *r = arg;
    if (nth != r->nth || ith < 0 || ith >= MAX_SHARES) {
        atomic_fetch_add(&r->bad_nth, 1);
        return;
    }
    atomic_fetch_add(&r->runs[ith], 1);
    r->who[ith] = pthread_self();
    long b, e, s = 0;
    pool_range(r->n, ith, nth, &b, &e);
    for (long k = b; k < e; k++)
        s += r->data[k];
    r->sum[ith] = s;
}

static void record_reset(record *r, int nth, const long *data, long n)
{
    memset(r, 0, sizeof *r);
    for (int i = 0; i < MAX_SHARES; i++)
        atomic_init(&r->runs[i], 0);
    atomic_init(&r->bad_nth, 0);
    r->nth = nth;
    r->data = data;
    r->n = n;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void pool_runs_each_share_exactly_once(void **state)
{
    (void)state;
    enum { N = 10007 };
    long *data = malloc(N * sizeof *data);
    assert_non_null(data);
    long want = 0;
    for (long k = 0; k < N; k++) {
        data[k] = k * 7 % 13;
        want += data[k];
    }
    for (int nth = 1; nth <= 4; nth++) {
        char err[256];
        pool *p = NULL;
        assert_int_equal(pool_new(&p, nth, err), 0);
        assert_int_equal(pool_threads(p), nth);
        for (int job = 0; job < 2000; job++) {
            record r;
            record_reset(&r, nth, data, N);
            pool_run(p, record_share, &r);
            assert_int_equal(atomic_load(&r.bad_nth), 0);
            long got = 0;
            for (int i = 0; i < nth; i++) {
                assert_int_equal(atomic_load(&r.runs[i]), 1);
                got += r.sum[i];
            }
            for (int i = nth; i < MAX_SHARES; i++)
                assert_int_equal(atomic_load(&r.runs[i]), 0);
            assert_int_equal(got, want);
        }
        pool_free(p);
    }
    free(data);
}

/* Workers idle for milliseconds go to sleep; the caller does not wait for
 * them to wake: it runs the open shares itself. Each job still runs every
 * share once, and over many jobs the caller ran some share other than its
 * own (waking a sleeping thread takes far longer than a share of nothing). */
static void caller_takes_the_shares_of_sleeping_workers(void **state)
{
    (void)state;
    char err[256];
    pool *p = NULL;
    const int nth = 3;
    assert_int_equal(pool_new(&p, nth, err), 0);
    const long data[1] = {1};
    int taken_by_caller = 0;
    for (int job = 0; job < 50; job++) {
        sleep_ms(2); /* past the workers' spin: they sleep */
        record r;
        record_reset(&r, nth, data, 1);
        pool_run(p, record_share, &r);
        assert_int_equal(atomic_load(&r.bad_nth), 0);
        for (int i = 0; i < nth; i++) {
            assert_int_equal(atomic_load(&r.runs[i]), 1);
            if (i > 0 && pthread_equal(r.who[i], pthread_self()))
                taken_by_caller++;
        }
    }
    assert_true(taken_by_caller > 0);
    pool_free(p);
}

/* A share that takes long (its thread is busy) holds the job: pool_run
 * returns only once it is done, and later jobs still run every share once. */
typedef struct slow_job {
    atomic_int done[MAX_SHARES];
    int slow_share;
} slow_job;

static void slow_share_fn(void *arg, int ith, int nth)
{
    (void)nth;
    slow_job *j = arg;
    if (ith == j->slow_share)
        sleep_ms(20);
    atomic_fetch_add(&j->done[ith], 1);
}

static void pool_run_waits_for_a_slow_share(void **state)
{
    (void)state;
    char err[256];
    pool *p = NULL;
    const int nth = 2;
    assert_int_equal(pool_new(&p, nth, err), 0);
    for (int round = 0; round < 10; round++) {
        slow_job j;
        for (int i = 0; i < MAX_SHARES; i++)
            atomic_init(&j.done[i], 0);
        j.slow_share = round % nth;
        pool_run(p, slow_share_fn, &j);
        for (int i = 0; i < nth; i++)
            assert_int_equal(atomic_load(&j.done[i]), 1);
    }
    pool_free(p);
}

static void pool_rejects_too_many_threads(void **state)
{
    (void)state;
    char err[256] = "";
    pool *p = NULL;
    assert_int_not_equal(pool_new(&p, 513, err), 0);
    assert_null(p);
    assert_non_null(strstr(err, "513"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(pool_runs_each_share_exactly_once),
        cmocka_unit_test(caller_takes_the_shares_of_sleeping_workers),
        cmocka_unit_test(pool_run_waits_for_a_slow_share),
        cmocka_unit_test(pool_rejects_too_many_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
