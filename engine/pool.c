/*
 * pool.c - persistent compute threads with spin-then-sleep hand-off, where
 * a job's share of a thread that does not turn up is done by one that did.
 *
 * A job is published by bumping `generation` (seq_cst) after storing fn/ctx.
 * Workers watch generation: they spin (PAUSE) for up to IDLE_SPIN_NS, then
 * register as sleepers and wait on `wake` (a futex under glibc). They do
 * not sched_yield() while waiting: that hands the core to whatever else is
 * runnable, possibly for a whole time slice, while the next job is due
 * microseconds later. The spin budget is short on purpose: on a machine
 * shared with other processes a thread that spins long burns the CPU share
 * the scheduler grants it and then waits when it has real work (a 1 ms
 * budget made decode three times slower under load, measured), while
 * 50 us still covers the gaps between the jobs of a decode step. The
 * publisher broadcasts only if a sleeper is registered; because the sleeper
 * increments n_sleeping before it re-reads generation, and the publisher
 * bumps generation before it reads n_sleeping (both seq_cst), a wake-up
 * can't be lost.
 *
 * Shares are claimed, not assigned: fn(ctx, i, nth) runs once per job for
 * each i, by whichever thread first moves slot i's generation from the
 * previous job's to this one's (compare-and-swap). Each thread claims its
 * own slot first; a thread with nothing left claims any slot still open.
 * So when a worker is descheduled or asleep as a job is published, the
 * caller does that share itself instead of waiting for the worker to be
 * scheduled again. On a 2-core machine shared with other work (load 5 to
 * 10) that was the case for a fifth to a third of the jobs of a decode
 * step, and the waits were a fifth to a third of decode time; with claims
 * the caller's waits fell from 1.2-3.4 s to 0.2-0.8 s per 66 tokens
 * (measured with the model of tests/bench/decode_bandwidth.sh, Q4_0).
 * The split of the work still depends on i alone, so results do not depend
 * on who ran a share. Completion is counted in `n_done` (shares finished),
 * which thread 0 spins on; only after DONE_SPIN_NS (a worker descheduled
 * mid-share) does thread 0 yield, in case that worker waits for this core.
 */
#include "pool.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#elif defined(__aarch64__)
#define cpu_relax() __asm__ __volatile__("yield")
#else
#define cpu_relax() ((void)0)
#endif

#include <sched.h>
#include <time.h>

#define SPIN_CHECKS 64         /* pauses between two looks at the clock */
#define IDLE_SPIN_NS 50000L  /* 50 us: longer than the gap between two jobs of a decode step */
#define DONE_SPIN_NS 50000L  /* waiting for workers this long, thread 0 starts to yield */

static long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000L + ts.tv_nsec;
}

/* The generation of the last job whose share i has been claimed; one cache
 * line each, so claims do not bounce a line the other slots share. */
typedef struct slot {
    _Alignas(64) atomic_uint gen;
} slot;

typedef struct worker {
    pool *p;
    int ith;
    pthread_t thread;
} worker;

struct pool {
    int nth;
    worker *workers; /* nth - 1 of them; thread 0 is the caller */
    slot *slots;     /* nth of them */
    pool_fn fn;
    void *ctx;
    atomic_uint generation;
    atomic_int n_done;
    atomic_int n_sleeping;
    atomic_bool stop;
    pthread_mutex_t lock;
    pthread_cond_t wake;
};

/* Claims share i of job gen: true for exactly one thread per job and i.
 * Every share of job gen - 1 was claimed before job gen was published
 * (pool_run returns only when all are done), so each slot holds gen - 1. */
static bool share_claim(pool *p, int i, unsigned gen)
{
    unsigned expect = gen - 1;
    return atomic_compare_exchange_strong(&p->slots[i].gen, &expect, gen);
}

/* Runs share `first` if still open, then any other open share of job gen.
 * A share claimed for gen belongs to the job now published (that job cannot
 * finish before the share does), so fn and ctx are its own. */
static void run_shares(pool *p, unsigned gen, int first)
{
    for (int k = 0; k < p->nth; k++) {
        int i = (first + k) % p->nth;
        if (!share_claim(p, i, gen))
            continue;
        p->fn(p->ctx, i, p->nth);
        atomic_fetch_add(&p->n_done, 1);
    }
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    pool *p = w->p;
    unsigned seen = 0;
    for (;;) {
        unsigned gen;
        long spins = 0, deadline = 0;
        while ((gen = atomic_load(&p->generation)) == seen) {
            cpu_relax();
            if (++spins % SPIN_CHECKS)
                continue;
            if (deadline == 0)
                deadline = now_ns() + IDLE_SPIN_NS;
            else if (now_ns() > deadline)
                break;
        }
        if (gen == seen) {
            pthread_mutex_lock(&p->lock);
            atomic_fetch_add(&p->n_sleeping, 1);
            while ((gen = atomic_load(&p->generation)) == seen)
                pthread_cond_wait(&p->wake, &p->lock);
            atomic_fetch_sub(&p->n_sleeping, 1);
            pthread_mutex_unlock(&p->lock);
        }
        seen = gen;
        if (atomic_load(&p->stop))
            return NULL;
        run_shares(p, gen, w->ith);
    }
}

/* Returns the new job's generation. */
static unsigned publish(pool *p)
{
    unsigned gen = atomic_fetch_add(&p->generation, 1) + 1;
    if (atomic_load(&p->n_sleeping) > 0) {
        pthread_mutex_lock(&p->lock);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->lock);
    }
    return gen;
}

int pool_new(pool **out, int n_threads, char err[256])
{
    *out = NULL;
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    if (n_threads > 512) {
        snprintf(err, 256, "thread count %d is above the limit of 512", n_threads);
        return -1;
    }
    pool *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(err, 256, "out of memory for the thread pool");
        return -1;
    }
    p->nth = n_threads;
    atomic_init(&p->generation, 0);
    atomic_init(&p->n_done, 0);
    atomic_init(&p->n_sleeping, 0);
    atomic_init(&p->stop, false);
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    p->workers = calloc((size_t)n_threads, sizeof *p->workers);
    p->slots = aligned_alloc(_Alignof(slot), (size_t)n_threads * sizeof *p->slots);
    if (p->slots)
        for (int i = 0; i < n_threads; i++)
            atomic_init(&p->slots[i].gen, 0);
    if (!p->workers || !p->slots) {
        snprintf(err, 256, "out of memory for the thread pool");
        p->nth = 1; /* no worker started: nothing to join */
        pool_free(p);
        return -1;
    }
    for (int i = 1; i < n_threads; i++) {
        worker *w = &p->workers[i];
        w->p = p;
        w->ith = i;
        int rc = pthread_create(&w->thread, NULL, worker_main, w);
        if (rc != 0) {
            snprintf(err, 256, "cannot start compute thread %d of %d: %s", i, n_threads,
                     strerror(rc));
            p->nth = i; /* join only the ones that started */
            pool_free(p);
            return -1;
        }
    }
    *out = p;
    return 0;
}

void pool_free(pool *p)
{
    if (!p)
        return;
    if (p->workers) {
        atomic_store(&p->stop, true);
        publish(p);
        for (int i = 1; i < p->nth; i++)
            pthread_join(p->workers[i].thread, NULL);
        free(p->workers);
    }
    free(p->slots);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->wake);
    free(p);
}

int pool_threads(const pool *p) { return p->nth; }

void pool_run(pool *p, pool_fn fn, void *ctx)
{
    if (p->nth == 1) {
        fn(ctx, 0, 1);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    atomic_store(&p->n_done, 0);
    run_shares(p, publish(p), 0);
    long deadline = 0;
    for (long spins = 1; atomic_load(&p->n_done) < p->nth; spins++) {
        if (deadline < 0) {
            sched_yield();
            continue;
        }
        cpu_relax();
        if (spins % SPIN_CHECKS)
            continue;
        if (deadline == 0)
            deadline = now_ns() + DONE_SPIN_NS;
        else if (now_ns() > deadline)
            deadline = -1;
    }
}
