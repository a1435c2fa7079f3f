/*
 * sample.c - the sampler chain: penalty, top-k, top-p, min-p, temperature,
 * draw (the smp_ module; API and chain order in sample.h).
 *
 * Candidates are (logit, id) pairs ordered by logit descending, then id
 * ascending; that total order makes every truncation (top-k, top-p ties,
 * greedy) independent of how the selection was done, so results do not
 * depend on the sort algorithm. A full sort is avoided: top-k is a bounded
 * heap (n log k), top-p without top-k buckets the probability mass by logit
 * and sorts only the bucket where the nucleus ends, min-p is a filter, and a
 * chain with no truncation draws straight from the unsorted logits.
 *
 * The caller's logits are never written: greedy scans them in place, the
 * rest of the chain works on a copy. NaN logits are never chosen. The smp owns
 * all of its buffers, sized for n_vocab once in smp_new(); smp_sample() does
 * not allocate. Status codes: SMP_EINVAL for bad parameters, SMP_ENOMEM.
 */
#include "sample.h"

#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SMP_EINVAL (-1)
#define SMP_ENOMEM (-3)

/* A history longer than this is a caller's mistake, not a context size. */
#define SMP_MAX_REPEAT_LAST_N (1 << 20)

/* Top-p over the whole vocabulary buckets logits by their distance below the
 * maximum: SMP_TOP_P_BUCKETS buckets over SMP_TOP_P_RANGE logit units, the
 * last one also holding everything further down (whose probability relative
 * to the best token is below e^-32). */
#define SMP_TOP_P_BUCKETS 4096
#define SMP_TOP_P_RANGE 32

typedef struct smp_cand {
    float logit;
    int32_t id;
} smp_cand;

struct smp {
    smp_params p;
    int32_t n_vocab;
    int32_t *hist; /* ring buffer of the last repeat_last_n accepted ids */
    int32_t hist_cap, hist_len, hist_pos;
    uint8_t *seen; /* one flag per id; all zero between calls */
    smp_cand *cand, *spare; /* n_vocab each; selections ping-pong between them */
    float *prob;            /* n_vocab unnormalised probabilities */
    double bucket_mass[SMP_TOP_P_BUCKETS];
    uint64_t rng[4];
};

static void set_err(char err[256], const char *fmt, ...)
{
    if (!err)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, 256, fmt, ap);
    va_end(ap);
}

/*
 * PRNG: xoshiro256** (Blackman and Vigna, 2018). The 256-bit state is filled
 * from the 64-bit seed by four successive outputs of splitmix64 (Steele, Lea
 * and Flood), as the xoshiro authors recommend, so that nearby seeds give
 * unrelated streams and the state is never all zero. Output: rotate-left by 7
 * of (s1 * 5), times 9; then the xorshift-style state update with shift 17 and
 * rotation 45. A uniform double in [0, 1) takes the top 53 bits.
 */
static uint64_t rotl64(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t splitmix64_next(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void rng_seed(uint64_t s[4], uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        s[i] = splitmix64_next(&seed);
}

static uint64_t rng_next(uint64_t s[4])
{
    uint64_t out = rotl64(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return out;
}

static double rng_uniform(uint64_t s[4])
{
    return (double)(rng_next(s) >> 11) * 0x1.0p-53;
}

smp_params smp_params_default(void)
{
    smp_params p = {
        .temp = 0.8f,
        .top_k = 40,
        .top_p = 0.95f,
        .min_p = 0.05f,
        .repeat_penalty = 1.0f,
        .repeat_last_n = 64,
        .seed = 0,
    };
    return p;
}

static int check_params(const smp_params *p, int32_t n_vocab, char err[256])
{
    if (n_vocab <= 0) {
        set_err(err, "sampler: n_vocab is %ld, expected a positive vocabulary size",
                (long)n_vocab);
        return SMP_EINVAL;
    }
    if (isnan(p->temp) || isinf(p->temp)) {
        set_err(err, "sampler: temp is %g, expected a finite number (<= 0 for greedy)",
                (double)p->temp);
        return SMP_EINVAL;
    }
    if (isnan(p->top_p) || p->top_p < 0.0f) {
        set_err(err, "sampler: top_p is %g, expected a value in [0, 1] (>= 1 turns it off)",
                (double)p->top_p);
        return SMP_EINVAL;
    }
    if (isnan(p->min_p) || p->min_p > 1.0f) {
        set_err(err, "sampler: min_p is %g, expected a value <= 1 (<= 0 turns it off)",
                (double)p->min_p);
        return SMP_EINVAL;
    }
    if (isnan(p->repeat_penalty) || isinf(p->repeat_penalty) || p->repeat_penalty <= 0.0f) {
        set_err(err, "sampler: repeat_penalty is %g, expected a finite value > 0 (1 is off)",
                (double)p->repeat_penalty);
        return SMP_EINVAL;
    }
    if (p->repeat_last_n < 0 || p->repeat_last_n > SMP_MAX_REPEAT_LAST_N) {
        set_err(err, "sampler: repeat_last_n is %ld, expected 0..%d tokens",
                (long)p->repeat_last_n, SMP_MAX_REPEAT_LAST_N);
        return SMP_EINVAL;
    }
    return 0;
}

int smp_new(smp **out, const smp_params *p, int32_t n_vocab, char err[256])
{
    if (out)
        *out = NULL;
    if (!out || !p) {
        set_err(err, "sampler: smp_new called with a NULL %s", out ? "params" : "out");
        return SMP_EINVAL;
    }
    int rc = check_params(p, n_vocab, err);
    if (rc)
        return rc;

    smp *s = calloc(1, sizeof *s);
    if (!s)
        goto fail;
    s->p = *p;
    s->n_vocab = n_vocab;
    s->hist_cap = p->repeat_last_n;
    size_t n = (size_t)n_vocab;
    /* At least one slot, so a zero-length history is still a valid pointer. */
    s->hist = calloc(s->hist_cap > 0 ? (size_t)s->hist_cap : 1, sizeof *s->hist);
    s->seen = calloc(n, 1);
    s->cand = malloc(n * sizeof *s->cand);
    s->spare = malloc(n * sizeof *s->spare);
    s->prob = malloc(n * sizeof *s->prob);
    if (!s->hist || !s->seen || !s->cand || !s->spare || !s->prob)
        goto fail;
    rng_seed(s->rng, p->seed);
    *out = s;
    return 0;

fail:
    smp_free(s);
    set_err(err, "sampler: out of memory for a vocabulary of %ld tokens", (long)n_vocab);
    return SMP_ENOMEM;
}

void smp_free(smp *s)
{
    if (!s)
        return;
    free(s->hist);
    free(s->seen);
    free(s->cand);
    free(s->spare);
    free(s->prob);
    free(s);
}

void smp_reset(smp *s)
{
    if (!s)
        return;
    s->hist_len = 0;
    s->hist_pos = 0;
    rng_seed(s->rng, s->p.seed);
}

/* Ids outside the vocabulary cannot be penalised, so they are not recorded. */
void smp_accept(smp *s, int32_t id)
{
    if (!s || s->hist_cap == 0 || id < 0 || id >= s->n_vocab)
        return;
    s->hist[s->hist_pos] = id;
    s->hist_pos = (s->hist_pos + 1) % s->hist_cap;
    if (s->hist_len < s->hist_cap)
        s->hist_len++;
}

/* a comes before b: higher logit, or the same logit and a lower id. */
static bool cand_before(const smp_cand *a, const smp_cand *b)
{
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

static int cand_cmp(const void *pa, const void *pb)
{
    const smp_cand *a = pa, *b = pb;
    if (cand_before(a, b))
        return -1;
    return cand_before(b, a) ? 1 : 0;
}

/* Heap whose root is the candidate that comes last, so the root is the one
 * to evict when a better candidate arrives. */
static void heap_sift_down(smp_cand *h, int32_t n, int32_t i)
{
    for (;;) {
        int32_t last = i, l = 2 * i + 1, r = l + 1;
        if (l < n && cand_before(&h[last], &h[l]))
            last = l;
        if (r < n && cand_before(&h[last], &h[r]))
            last = r;
        if (last == i)
            return;
        smp_cand t = h[i];
        h[i] = h[last];
        h[last] = t;
        i = last;
    }
}

/* The first m of src[0..n) in candidate order, written sorted into dst.
 * Returns min(m, n). src and dst must not overlap. */
static int32_t select_top(const smp_cand *src, int32_t n, int32_t m, smp_cand *dst)
{
    if (m >= n)
        m = n;
    if (m > n / 2) {
        memcpy(dst, src, (size_t)n * sizeof *dst);
        qsort(dst, (size_t)n, sizeof *dst, cand_cmp);
        return m;
    }
    memcpy(dst, src, (size_t)m * sizeof *dst);
    for (int32_t i = m / 2; i-- > 0;)
        heap_sift_down(dst, m, i);
    for (int32_t i = m; i < n; i++) {
        if (cand_before(&src[i], &dst[0])) {
            dst[0] = src[i];
            heap_sift_down(dst, m, 0);
        }
    }
    /* Heap sort: moving the root (the last in order) to the end each time
     * leaves the array in candidate order. */
    for (int32_t end = m - 1; end > 0; end--) {
        smp_cand t = dst[0];
        dst[0] = dst[end];
        dst[end] = t;
        heap_sift_down(dst, end, 0);
    }
    return m;
}

static float cand_max(const smp_cand *c, int32_t n, bool sorted)
{
    if (sorted)
        return c[0].logit;
    float mx = c[0].logit;
    for (int32_t i = 1; i < n; i++)
        if (c[i].logit > mx)
            mx = c[i].logit;
    return mx;
}

/* exp((l - mx) / temp), written so that infinite logits give 0 or 1, not NaN. */
static float rel_prob(float l, float mx, float temp)
{
    return l == mx ? 1.0f : expf((l - mx) / temp);
}

/* llama.cpp's rule: a positive logit is divided by the penalty, a negative
 * one multiplied, so with a penalty above 1 both move down. */
static float penalise(float l, float pen)
{
    return l > 0.0f ? l / pen : l * pen;
}

static bool penalty_active(const smp *s)
{
    return s->p.repeat_penalty != 1.0f && s->hist_len > 0;
}

/* seen[id] marks each distinct id of the window, so a token repeated in the
 * window is penalised once, as llama.cpp does. */
static void mark_history(smp *s, uint8_t on)
{
    for (int32_t i = 0; i < s->hist_len; i++)
        s->seen[s->hist[i]] = on;
}

/* Runs while c is still indexed by id. */
static void apply_penalty(smp *s, smp_cand *c)
{
    if (!penalty_active(s))
        return;
    for (int32_t i = 0; i < s->hist_len; i++) {
        int32_t id = s->hist[i];
        if (s->seen[id])
            continue;
        s->seen[id] = 1;
        c[id].logit = penalise(c[id].logit, s->p.repeat_penalty);
    }
    mark_history(s, 0);
}

/* Nucleus: the shortest prefix in candidate order whose probability (softmax
 * of the current candidates at temperature 1) reaches top_p; at least one.
 * Sorted input (after top-k, at most k candidates) is walked directly. */
static int32_t top_p_sorted(const smp *s, const smp_cand *c, int32_t n)
{
    float mx = c[0].logit;
    double z = 0.0;
    for (int32_t i = 0; i < n; i++)
        z += rel_prob(c[i].logit, mx, 1.0f);
    double want = (double)s->p.top_p * z, cum = 0.0;
    for (int32_t i = 0; i < n; i++) {
        cum += rel_prob(c[i].logit, mx, 1.0f);
        if (cum >= want)
            return i + 1;
    }
    return n; /* rounding left the sum a hair below top_p * z: keep all */
}

/* Bucket of a logit below the maximum: monotone, so a token never lands in an
 * earlier bucket than one that comes before it in candidate order. */
static int32_t top_p_bucket(float l, float mx)
{
    if (l == mx)
        return 0;
    float d = (mx - l) * (float)(SMP_TOP_P_BUCKETS / SMP_TOP_P_RANGE);
    return d < (float)(SMP_TOP_P_BUCKETS - 1) ? (int32_t)d : SMP_TOP_P_BUCKETS - 1;
}

/*
 * Unsorted input (the whole vocabulary) avoids a full sort: one pass sums the
 * probability mass of each logit bucket, the walk over buckets finds the one
 * where the cumulative mass crosses top_p, and only that bucket's tokens are
 * sorted. Every earlier bucket is kept whole, every later one dropped. The
 * kept candidates go to *spare, which then becomes *c; they are not sorted.
 */
static int32_t top_p_unsorted(smp *s, smp_cand **c, smp_cand **spare, int32_t n)
{
    const smp_cand *src = *c;
    smp_cand *dst = *spare;
    float mx = cand_max(src, n, false);
    memset(s->bucket_mass, 0, sizeof s->bucket_mass);
    double z = 0.0;
    for (int32_t i = 0; i < n; i++) {
        double e = rel_prob(src[i].logit, mx, 1.0f);
        s->bucket_mass[top_p_bucket(src[i].logit, mx)] += e;
        z += e;
    }
    double want = (double)s->p.top_p * z, before = 0.0;
    int32_t cut = 0;
    while (cut < SMP_TOP_P_BUCKETS - 1 && before + s->bucket_mass[cut] < want)
        before += s->bucket_mass[cut++];

    int32_t kept = 0;
    for (int32_t i = 0; i < n; i++)
        if (top_p_bucket(src[i].logit, mx) < cut)
            dst[kept++] = src[i];
    int32_t edge = 0;
    for (int32_t i = 0; i < n; i++)
        if (top_p_bucket(src[i].logit, mx) == cut)
            dst[kept + edge++] = src[i];
    qsort(dst + kept, (size_t)edge, sizeof *dst, cand_cmp);
    int32_t take = edge;
    double cum = before;
    for (int32_t i = 0; i < edge; i++) {
        cum += rel_prob(dst[kept + i].logit, mx, 1.0f);
        if (cum >= want) {
            take = i + 1;
            break;
        }
    }
    *spare = *c;
    *c = dst;
    return kept + take;
}

/* Keep p >= min_p * p_max; the ratio of two probabilities does not depend on
 * the normaliser, so this compares logits against max + log(min_p). */
static int32_t apply_min_p(const smp *s, smp_cand *c, int32_t n, bool sorted)
{
    float mx = cand_max(c, n, sorted);
    int32_t keep = 0;
    for (int32_t i = 0; i < n; i++) {
        if (c[i].logit == mx || rel_prob(c[i].logit, mx, 1.0f) >= s->p.min_p)
            c[keep++] = c[i];
    }
    return keep;
}

/* Greedy reads the logits in place (no copy): the first strict maximum after
 * the penalty, so the lowest id wins a tie; NaN never wins. */
static int32_t greedy(smp *s, const float *logits)
{
    bool pen = penalty_active(s);
    if (pen)
        mark_history(s, 1);
    int32_t best = -1;
    float best_logit = -INFINITY;
    for (int32_t i = 0; i < s->n_vocab; i++) {
        float l = logits[i];
        if (isnan(l))
            continue;
        if (pen && s->seen[i])
            l = penalise(l, s->p.repeat_penalty);
        if (best < 0 || l > best_logit) {
            best = i;
            best_logit = l;
        }
    }
    if (pen)
        mark_history(s, 0);
    return best < 0 ? 0 : best;
}

int32_t smp_sample(smp *s, const float *logits)
{
    if (!s || !logits)
        return -1;
    int32_t n = s->n_vocab;
    if (s->p.temp <= 0.0f)
        return greedy(s, logits);

    smp_cand *c = s->cand, *spare = s->spare;
    for (int32_t i = 0; i < n; i++) {
        float l = logits[i];
        c[i].logit = isnan(l) ? -INFINITY : l;
        c[i].id = i;
    }
    apply_penalty(s, c);

    bool sorted = false;
    if (s->p.top_k > 0 && s->p.top_k < n) {
        n = select_top(c, n, s->p.top_k, spare);
        smp_cand *t = c;
        c = spare;
        spare = t;
        sorted = true;
    }
    if (s->p.top_p < 1.0f) {
        if (sorted) {
            n = top_p_sorted(s, c, n);
        } else {
            n = top_p_unsorted(s, &c, &spare, n);
        }
    }
    if (s->p.min_p > 0.0f)
        n = apply_min_p(s, c, n, sorted);

    /* Temperature scales the logits; softmax and the draw follow. */
    float mx = cand_max(c, n, sorted);
    double z = 0.0;
    for (int32_t i = 0; i < n; i++) {
        s->prob[i] = rel_prob(c[i].logit, mx, s->p.temp);
        z += s->prob[i];
    }
    double target = rng_uniform(s->rng) * z;
    double cum = 0.0;
    int32_t last_live = 0;
    for (int32_t i = 0; i < n; i++) {
        if (s->prob[i] <= 0.0f)
            continue;
        cum += s->prob[i];
        last_live = i;
        if (target < cum)
            return c[i].id;
    }
    return c[last_live].id;
}
