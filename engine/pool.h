/*
 * pool.h - a persistent pool of compute threads (the pool_ module).
 *
 * pool_run(p, fn, ctx) calls fn(ctx, ith, nth) exactly once for each ith in
 * 0 .. nth-1 and returns when all have finished. Share ith normally runs on
 * thread ith (the caller is thread 0), but a thread that has finished its
 * own takes any share whose thread has not started it yet (asleep, or
 * descheduled on a busy machine), so fn must not assume which thread runs
 * ith: per-share state is indexed by ith, never thread-local. Work is split
 * by ith alone, never by which thread happens to be first, so a kernel that
 * writes each output from exactly one ith gives bit-identical results for
 * any thread count.
 *
 * Workers spin for a short while after a job before they sleep on a
 * condition variable: a decode step dispatches a few hundred small jobs and a
 * futex wake-up per job would cost more than the work. One pool is driven by
 * one thread at a time.
 */
#ifndef OUTPOST_POOL_H
#define OUTPOST_POOL_H

typedef struct pool pool;
typedef void (*pool_fn)(void *ctx, int ith, int nth);

/* n_threads <= 0 means one per online core. */
int pool_new(pool **out, int n_threads, char err[256]);
void pool_free(pool *p);
int pool_threads(const pool *p);
void pool_run(pool *p, pool_fn fn, void *ctx);

/* Split [0, n) into nth near-equal contiguous ranges; range of thread ith. */
static inline void pool_range(long n, int ith, int nth, long *begin, long *end)
{
    long per = n / nth, rem = n % nth;
    *begin = ith * per + (ith < rem ? ith : rem);
    *end = *begin + per + (ith < rem ? 1 : 0);
}

#endif
