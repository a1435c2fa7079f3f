/*
 * matmul.c - weight x activation products for a batch of tokens.
 *
 * The activations are quantized once to the weights' vec_dot_type (Q8_0,
 * Q8_1 or Q8_K blocks for quantized weights: 4-bit or 8-bit weights meet
 * 8-bit activations in integer dot products), split across threads by row.
 * Then each weight matrix is cut into fixed tiles of rows, numbered across
 * all jobs, and every thread owns a contiguous range of tiles, so each
 * thread streams one stretch of memory front to back (handing tiles out
 * from a shared counter instead interleaved the threads' streams and cost
 * a tenth of decode speed, measured). A thread that has finished its range
 * takes tiles from the far end of another's (mm_range: the owner takes
 * from the front, thieves from the back, both by compare-and-swap on one
 * word), so a thread the OS deschedules for a time slice - the common case
 * on a machine shared with other work - delays the matmul by at most the
 * tile it is in, not by its whole share; taking from the back keeps away
 * from the lines the owner's prefetches are bringing in. A tile stays in
 * cache while it meets each token of the batch, so a prompt of n tokens
 * reads the weights from memory once, not n times.
 *
 * Where the weights' row has a gemm kernel, a tile is gemm_rows rows and
 * meets the batch gemm_cols tokens per call: the kernel unpacks each weight
 * block once for several tokens and loads each activation block once for
 * several rows (for one token, decode, it still shares the activation work
 * across rows). Elsewhere a tile is MM_TILE_ROWS rows and each output is one
 * vec_dot call.
 *
 * The jobs of one call share the input and its quantized form, so they may
 * differ in weight type as long as their types meet the same activations
 * (a Q6_K attn_v beside Q4_K attn_q and attn_k: one call, one hand-off to
 * the threads, one quantization); each job tiles by its own kernel.
 *
 * Tile boundaries depend only on the matrix, the batch size and the kernel,
 * never on the thread count, and each tile is computed whole by one thread
 * with the same arguments whichever thread it is (owner or thief), so the
 * result is the same for every thread count.
 */
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model_impl.h"

#define MM_TILE_ROWS 16
#define MM_MAX_JOBS 4
#define MM_MAX_RANGES 64 /* threads that may steal; a bigger pool splits statically */

/* The tiles [lo, hi) a thread has not started yet, packed as hi << 32 | lo
 * so owner and thieves agree through one compare-and-swap. One cache line
 * each: the owner's updates stay local until someone steals. */
typedef struct mm_range {
    _Alignas(64) atomic_uint_least64_t lohi;
} mm_range;

typedef struct mm_task {
    const mm_job *jobs;
    int n_jobs;
    const float *x;
    int32_t n;
    int64_t ne0;
    const qt_traits *wt[MM_MAX_JOBS]; /* each job's weight type */
    int64_t tile_rows[MM_MAX_JOBS];   /* rows per tile, per job */
    const qt_traits *xt;              /* the activations' type, common to all */
    const uint8_t *xq; /* quantized activations, or x itself for F32 */
    size_t xq_row_bytes;
    int64_t total_tiles;
    mm_range *ranges;   /* per thread, or NULL: static split */
} mm_task;

static void mm_quantize(void *arg, int ith, int nth)
{
    mm_task *t = arg;
    long b, e;
    pool_range(t->n, ith, nth, &b, &e);
    for (long i = b; i < e; i++)
        t->xt->from_float(t->x + i * t->ne0, (uint8_t *)t->xq + i * t->xq_row_bytes, t->ne0);
}

/* Rows r0 .. r1 of w (type wt) against every token. */
static void mm_tile(const mm_task *t, const qt_traits *wt, const eng_w *w, float *y, int64_t r0, int64_t r1)
{
    const uint8_t *wr = w->data + (size_t)r0 * w->row_bytes;
    if (wt->gemm) {
        for (int32_t tok = 0; tok < t->n; tok += wt->gemm_cols) {
            int nt = t->n - tok < wt->gemm_cols ? t->n - tok : wt->gemm_cols;
            wt->gemm(w->ne0, y + (size_t)tok * (size_t)w->ne1 + (size_t)r0, (size_t)w->ne1, wr,
                     w->row_bytes, (int)(r1 - r0), t->xq + (size_t)tok * t->xq_row_bytes,
                     t->xq_row_bytes, nt);
        }
        return;
    }
    for (int32_t tok = 0; tok < t->n; tok++) {
        const uint8_t *xr = t->xq + (size_t)tok * t->xq_row_bytes;
        float *yr = y + (size_t)tok * (size_t)w->ne1;
        for (int64_t r = r0; r < r1; r++)
            wt->vec_dot(w->ne0, &yr[r], w->data + (size_t)r * w->row_bytes, xr);
    }
}

/* Tile k (numbered across the jobs) of the task. */
static void mm_tile_at(const mm_task *t, int64_t k)
{
    for (int j = 0; j < t->n_jobs; j++) {
        const eng_w *w = t->jobs[j].w;
        const int64_t R = t->tile_rows[j];
        int64_t tiles = (w->ne1 + R - 1) / R;
        if (k < tiles) {
            int64_t r0 = k * R;
            int64_t r1 = r0 + R < w->ne1 ? r0 + R : w->ne1;
            mm_tile(t, t->wt[j], w, t->jobs[j].y, r0, r1);
            return;
        }
        k -= tiles;
    }
}

/* Takes the first (owner) or last (thief) tile left in r; -1 when empty. */
static int64_t mm_range_take(mm_range *r, bool from_back)
{
    uint_least64_t v = atomic_load_explicit(&r->lohi, memory_order_relaxed);
    for (;;) {
        uint32_t lo = (uint32_t)v, hi = (uint32_t)(v >> 32);
        if (lo >= hi)
            return -1;
        uint_least64_t nv = from_back ? ((uint_least64_t)(hi - 1) << 32 | lo)
                                      : ((uint_least64_t)hi << 32 | (lo + 1));
        if (atomic_compare_exchange_weak_explicit(&r->lohi, &v, nv, memory_order_relaxed,
                                                  memory_order_relaxed))
            return from_back ? (int64_t)hi - 1 : (int64_t)lo;
    }
}

static void mm_compute(void *arg, int ith, int nth)
{
    mm_task *t = arg;
    long b, e;
    pool_range(t->total_tiles, ith, nth, &b, &e);
    if (!t->ranges) {
        for (long k = b; k < e; k++)
            mm_tile_at(t, k);
        return;
    }
    int64_t k;
    while ((k = mm_range_take(&t->ranges[ith], false)) >= 0)
        mm_tile_at(t, k);
    for (int v = 1; v < nth; v++) {
        mm_range *victim = &t->ranges[(ith + v) % nth];
        while ((k = mm_range_take(victim, true)) >= 0)
            mm_tile_at(t, k);
    }
}

bool mm_can_share(const eng_w *a, const eng_w *b)
{
    return a->ne0 == b->ne0 && qt_get(a->type)->vec_dot_type == qt_get(b->type)->vec_dot_type;
}

int mm_run(pool *p, mm_scratch *s, const mm_job *jobs, int n_jobs, const float *x, int32_t n,
           char err[256])
{
    if (n_jobs < 1 || n_jobs > MM_MAX_JOBS) {
        snprintf(err, 256, "matmul: %d jobs (1..%d allowed)", n_jobs, MM_MAX_JOBS);
        return ENG_EUSAGE;
    }
    mm_task t = {.jobs = jobs, .n_jobs = n_jobs, .x = x, .n = n, .ne0 = jobs[0].w->ne0};
    for (int j = 0; j < n_jobs; j++) {
        if (!mm_can_share(jobs[0].w, jobs[j].w)) {
            snprintf(err, 256, "matmul: %s and %s differ in width or activation type", jobs[0].w->name,
                     jobs[j].w->name);
            return ENG_EUSAGE;
        }
        t.wt[j] = qt_get(jobs[j].w->type);
        t.tile_rows[j] = t.wt[j]->gemm ? t.wt[j]->gemm_rows : MM_TILE_ROWS;
        t.total_tiles += (jobs[j].w->ne1 + t.tile_rows[j] - 1) / t.tile_rows[j];
    }
    const qt_type act = t.wt[0]->vec_dot_type;
    t.xt = qt_get(act);
    if (act == QT_F32) {
        t.xq = (const uint8_t *)x;
        t.xq_row_bytes = (size_t)t.ne0 * sizeof(float);
    } else {
        t.xq_row_bytes = qt_row_bytes(act, t.ne0);
        size_t need = t.xq_row_bytes * (size_t)n;
        if (need > s->cap_bytes) {
            /* 64-byte aligned: activation loads on whole lines */
            uint8_t *nb = aligned_alloc(64, (need + 63) / 64 * 64);
            if (!nb) { /* the old buffer stays, with its size, for smaller batches */
                snprintf(err, 256, "matmul: out of memory for %zu bytes of activations", need);
                return ENG_ENOMEM;
            }
            free(s->xq);
            s->xq = nb;
            s->cap_bytes = need;
        }
        t.xq = s->xq;
        if (n == 1)
            mm_quantize(&t, 0, 1);
        else
            pool_run(p, mm_quantize, &t);
    }
    /* Every range is set before any thread starts (pool_run publishes the
     * job after these stores), so a thief never sees a stale range. */
    const int nth = pool_threads(p);
    mm_range ranges[MM_MAX_RANGES];
    if (nth > 1 && nth <= MM_MAX_RANGES && t.total_tiles < INT32_MAX) {
        for (int i = 0; i < nth; i++) {
            long b, e;
            pool_range(t.total_tiles, i, nth, &b, &e);
            atomic_init(&ranges[i].lohi, (uint_least64_t)e << 32 | (uint_least64_t)b);
        }
        t.ranges = ranges;
    }
    pool_run(p, mm_compute, &t);
    return s->lora ? lora_apply(p, s, jobs, n_jobs, x, n, err) : ENG_OK;
}

void mm_scratch_release(mm_scratch *s)
{
    free(s->xq);
    s->xq = NULL;
    s->cap_bytes = 0;
}
