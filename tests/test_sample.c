/*
 * test_sample.c - the sampler chain (engine/sample.c) against its contract.
 *
 * Distribution tests draw many samples with a fixed seed and compare the
 * counts with the renormalised probabilities a reference computes in double
 * precision with a full sort; the chi-square bound is generous (far in the
 * tail), and the fixed seed keeps every run identical.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "sample.h"

#define N_DRAWS 20000

/* Chain with every truncation off, so a test turns on only what it checks. */
static smp_params params_plain(float temp, uint64_t seed)
{
    smp_params p = smp_params_default();
    p.temp = temp;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.repeat_penalty = 1.0f;
    p.seed = seed;
    return p;
}

static smp *new_sampler(const smp_params *p, int32_t n_vocab)
{
    smp *s = NULL;
    char err[256] = "";
    int rc = smp_new(&s, p, n_vocab, err);
    if (rc != 0)
        fail_msg("smp_new: %s", err);
    assert_non_null(s);
    return s;
}

/* Deterministic test data, independent of the sampler's own PRNG. */
static uint64_t lcg_state;
static double lcg_uniform(void)
{
    lcg_state = lcg_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(lcg_state >> 11) * 0x1.0p-53;
}

static void fill_random(float *logits, int32_t n, uint64_t seed, double lo, double hi)
{
    lcg_state = seed;
    for (int32_t i = 0; i < n; i++)
        logits[i] = (float)(lo + (hi - lo) * lcg_uniform());
}

static void draw_counts(smp *s, const float *logits, int32_t n, int draws, int *counts)
{
    memset(counts, 0, (size_t)n * sizeof *counts);
    for (int i = 0; i < draws; i++) {
        int32_t id = smp_sample(s, logits);
        assert_true(id >= 0 && id < n);
        counts[id]++;
    }
}

/* Every token drawn is allowed, and the counts fit want[] (probabilities
 * summing to 1 over the allowed tokens) within a loose chi-square bound. */
static void assert_counts_match(const int *counts, const double *want, int32_t n, int draws)
{
    double chi2 = 0.0;
    int cells = 0;
    for (int32_t i = 0; i < n; i++) {
        if (want[i] <= 0.0) {
            if (counts[i] != 0)
                fail_msg("token %d drawn %d times but is outside the allowed set", (int)i,
                         counts[i]);
            continue;
        }
        double e = want[i] * draws;
        chi2 += (counts[i] - e) * (counts[i] - e) / e;
        cells++;
    }
    double df = cells > 1 ? cells - 1 : 1;
    double bound = df + 10.0 * sqrt(2.0 * df) + 10.0;
    if (chi2 > bound)
        fail_msg("chi-square %.1f over %d cells exceeds %.1f", chi2, cells, bound);
}

/* Reference softmax at temperature temp over the tokens with keep[i] set. */
static void ref_softmax(const float *logits, const int *keep, int32_t n, double temp,
                        double *out)
{
    double mx = -INFINITY, z = 0.0;
    for (int32_t i = 0; i < n; i++)
        if (keep[i] && logits[i] > mx)
            mx = logits[i];
    for (int32_t i = 0; i < n; i++) {
        out[i] = keep[i] ? exp((logits[i] - mx) / temp) : 0.0;
        z += out[i];
    }
    for (int32_t i = 0; i < n; i++)
        out[i] /= z;
}

static const float *sort_logits;
static int by_logit_desc(const void *pa, const void *pb)
{
    int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    if (sort_logits[a] != sort_logits[b])
        return sort_logits[a] > sort_logits[b] ? -1 : 1;
    return a < b ? -1 : 1;
}

/* Reference nucleus by a full sort: keep[] marks the smallest set of most
 * probable tokens whose probability reaches top_p. Returns its size. */
static int32_t ref_nucleus(const float *logits, int32_t n, double top_p, int *keep)
{
    int32_t *order = malloc((size_t)n * sizeof *order);
    int *all = malloc((size_t)n * sizeof *all);
    double *prob = malloc((size_t)n * sizeof *prob);
    assert_non_null(order);
    assert_non_null(all);
    assert_non_null(prob);
    for (int32_t i = 0; i < n; i++) {
        order[i] = i;
        all[i] = 1;
        keep[i] = 0;
    }
    ref_softmax(logits, all, n, 1.0, prob);
    sort_logits = logits;
    qsort(order, (size_t)n, sizeof *order, by_logit_desc);
    double cum = 0.0;
    int32_t kept = 0;
    for (int32_t i = 0; i < n && (kept == 0 || cum < top_p); i++) {
        keep[order[i]] = 1;
        cum += prob[order[i]];
        kept++;
    }
    free(order);
    free(all);
    free(prob);
    return kept;
}

static void greedy_picks_argmax(void **state)
{
    (void)state;
    enum { N = 1000 };
    float logits[N];
    fill_random(logits, N, 7, -5.0, 5.0);
    logits[613] = 9.5f;
    smp_params p = params_plain(0.0f, 1);
    smp *s = new_sampler(&p, N);
    for (int i = 0; i < 5; i++)
        assert_int_equal(smp_sample(s, logits), 613);
    p.temp = -1.0f;
    smp *neg = new_sampler(&p, N);
    assert_int_equal(smp_sample(neg, logits), 613);
    smp_free(neg);
    smp_free(s);
}

static void greedy_ties_go_to_the_lowest_id(void **state)
{
    (void)state;
    float logits[8] = {0.5f, 3.0f, -1.0f, 2.0f, 3.0f, 0.0f, 3.0f, 1.0f};
    smp_params p = params_plain(0.0f, 1);
    smp *s = new_sampler(&p, 8);
    assert_int_equal(smp_sample(s, logits), 1);
    smp_free(s);

    float flat[5] = {-2.0f, -2.0f, -2.0f, -2.0f, -2.0f};
    s = new_sampler(&p, 5);
    assert_int_equal(smp_sample(s, flat), 0);
    smp_free(s);
}

static void nan_logits_are_never_chosen(void **state)
{
    (void)state;
    float logits[6] = {NAN, 1.0f, NAN, 0.5f, NAN, 0.9f};
    smp_params p = params_plain(0.0f, 1);
    smp *s = new_sampler(&p, 6);
    assert_int_equal(smp_sample(s, logits), 1);
    smp_free(s);

    p = params_plain(1.0f, 3);
    s = new_sampler(&p, 6);
    for (int i = 0; i < 2000; i++) {
        int32_t id = smp_sample(s, logits);
        assert_true(id == 1 || id == 3 || id == 5);
    }
    smp_free(s);
}

static void masked_tokens_are_never_chosen(void **state)
{
    (void)state;
    enum { N = 50 };
    float logits[N];
    for (int i = 0; i < N; i++)
        logits[i] = (i % 7 == 3) ? 0.0f : -INFINITY;
    smp_params p = params_plain(1.5f, 11);
    smp *s = new_sampler(&p, N);
    for (int i = 0; i < 2000; i++)
        assert_int_equal(smp_sample(s, logits) % 7, 3);
    smp_free(s);
}

static void logits_are_not_modified(void **state)
{
    (void)state;
    enum { N = 300 };
    float logits[N], copy[N];
    fill_random(logits, N, 5, -3.0, 3.0);
    memcpy(copy, logits, sizeof copy);
    smp_params p = smp_params_default();
    p.repeat_penalty = 1.3f;
    p.seed = 9;
    smp *s = new_sampler(&p, N);
    for (int i = 0; i < 20; i++)
        smp_accept(s, i * 13 % N);
    for (int i = 0; i < 20; i++)
        smp_sample(s, logits);
    assert_memory_equal(logits, copy, sizeof copy);
    smp_free(s);
}

static void sample_seq(const smp_params *p, const float *logits, int32_t n, int32_t *out,
                       int len)
{
    smp *s = new_sampler(p, n);
    for (int i = 0; i < len; i++)
        out[i] = smp_sample(s, logits);
    smp_free(s);
}

static void same_seed_gives_the_same_sequence(void **state)
{
    (void)state;
    enum { N = 100, LEN = 64 };
    float logits[N];
    fill_random(logits, N, 3, -1.0, 1.0);
    smp_params p = params_plain(1.0f, 12345);
    int32_t a[LEN], b[LEN];
    sample_seq(&p, logits, N, a, LEN);
    sample_seq(&p, logits, N, b, LEN);
    assert_memory_equal(a, b, sizeof a);

    /* With truncations on too. */
    p = smp_params_default();
    p.seed = 777;
    sample_seq(&p, logits, N, a, LEN);
    sample_seq(&p, logits, N, b, LEN);
    assert_memory_equal(a, b, sizeof a);
}

static void different_seeds_give_different_sequences(void **state)
{
    (void)state;
    enum { N = 100, LEN = 64 };
    float logits[N];
    fill_random(logits, N, 3, -1.0, 1.0);
    int32_t a[LEN], b[LEN], c[LEN];
    smp_params p = params_plain(1.0f, 1);
    sample_seq(&p, logits, N, a, LEN);
    p.seed = 2;
    sample_seq(&p, logits, N, b, LEN);
    p.seed = 0;
    sample_seq(&p, logits, N, c, LEN);
    assert_memory_not_equal(a, b, sizeof a);
    assert_memory_not_equal(a, c, sizeof a);
    assert_memory_not_equal(b, c, sizeof a);
}

static void reset_replays_the_sequence_and_forgets_history(void **state)
{
    (void)state;
    enum { N = 100, LEN = 32 };
    float logits[N];
    fill_random(logits, N, 4, -1.0, 1.0);
    smp_params p = params_plain(1.0f, 99);
    smp *s = new_sampler(&p, N);
    int32_t a[LEN], b[LEN];
    for (int i = 0; i < LEN; i++)
        a[i] = smp_sample(s, logits);
    smp_reset(s);
    for (int i = 0; i < LEN; i++)
        b[i] = smp_sample(s, logits);
    assert_memory_equal(a, b, sizeof a);
    smp_free(s);

    /* A penalised token wins again once the history is forgotten. */
    float two[2] = {2.0f, 1.8f};
    p = params_plain(0.0f, 1);
    p.repeat_penalty = 1.5f;
    s = new_sampler(&p, 2);
    smp_accept(s, 0);
    assert_int_equal(smp_sample(s, two), 1);
    smp_reset(s);
    assert_int_equal(smp_sample(s, two), 0);
    smp_free(s);
}

static void top_k_1_equals_greedy(void **state)
{
    (void)state;
    enum { N = 5000 };
    float *logits = malloc(N * sizeof *logits);
    assert_non_null(logits);
    smp_params greedy = params_plain(0.0f, 1);
    for (uint64_t trial = 0; trial < 20; trial++) {
        fill_random(logits, N, 100 + trial, -4.0, 4.0);
        if (trial % 2)
            logits[trial * 37] = logits[trial * 211 + 1] = 9.0f; /* a tie at the top */
        smp *g = new_sampler(&greedy, N);
        int32_t want = smp_sample(g, logits);
        smp_free(g);
        smp_params p = params_plain(1.7f, trial);
        p.top_k = 1;
        smp *s = new_sampler(&p, N);
        for (int i = 0; i < 50; i++)
            assert_int_equal(smp_sample(s, logits), want);
        smp_free(s);
    }
    free(logits);
}

static void top_k_restricts_support_to_the_k_best(void **state)
{
    (void)state;
    enum { N = 2000, K = 10 };
    float logits[N];
    int keep[N], counts[N];
    double want[N];
    fill_random(logits, N, 21, -2.0, 2.0);
    int32_t order[N];
    for (int i = 0; i < N; i++) {
        order[i] = i;
        keep[i] = 0;
    }
    sort_logits = logits;
    qsort(order, N, sizeof *order, by_logit_desc);
    for (int i = 0; i < K; i++)
        keep[order[i]] = 1;
    ref_softmax(logits, keep, N, 1.0, want);

    smp_params p = params_plain(1.0f, 5);
    p.top_k = K;
    smp *s = new_sampler(&p, N);
    draw_counts(s, logits, N, N_DRAWS, counts);
    assert_counts_match(counts, want, N, N_DRAWS);
    smp_free(s);
}

/* Probabilities 0.4, 0.3, 0.15, 0.1, 0.05 over five tokens, shuffled ids. */
static const int32_t small_ids[5] = {3, 0, 4, 1, 2};
static const double small_prob[5] = {0.4, 0.3, 0.15, 0.1, 0.05};

static void small_logits(float logits[5])
{
    for (int i = 0; i < 5; i++)
        logits[small_ids[i]] = (float)log(small_prob[i]);
}

static void top_p_keeps_the_smallest_nucleus(void **state)
{
    (void)state;
    float logits[5];
    int keep[5] = {0}, counts[5];
    double want[5];
    small_logits(logits);
    /* 0.4 + 0.3 = 0.7 < 0.8, adding 0.15 reaches 0.85: three tokens. */
    for (int i = 0; i < 3; i++)
        keep[small_ids[i]] = 1;
    ref_softmax(logits, keep, 5, 1.0, want);

    smp_params p = params_plain(1.0f, 8);
    p.top_p = 0.8f;
    smp *s = new_sampler(&p, 5);
    draw_counts(s, logits, 5, N_DRAWS, counts);
    assert_counts_match(counts, want, 5, N_DRAWS);
    smp_free(s);
}

static void top_p_zero_keeps_only_the_most_likely(void **state)
{
    (void)state;
    float logits[5];
    small_logits(logits);
    smp_params p = params_plain(3.0f, 8);
    p.top_p = 0.0f;
    smp *s = new_sampler(&p, 5);
    for (int i = 0; i < 500; i++)
        assert_int_equal(smp_sample(s, logits), small_ids[0]);
    smp_free(s);
}

/* A 150k vocabulary whose nucleus (a few hundred tokens) is larger than the
 * first prefix the sampler tries, so its selection has to grow. */
static void top_p_over_a_large_vocab_matches_a_full_sort(void **state)
{
    (void)state;
    enum { N = 150000, DRAWS = 3000 };
    float *logits = malloc(N * sizeof *logits);
    int *keep = malloc(N * sizeof *keep);
    int *counts = malloc(N * sizeof *counts);
    double *want = malloc(N * sizeof *want);
    assert_non_null(logits);
    assert_non_null(keep);
    assert_non_null(counts);
    assert_non_null(want);
    fill_random(logits, N, 42, -8.0, 0.0);
    for (int i = 0; i < 300; i++)
        logits[(i * 7919) % N] = (float)(9.0 + 0.01 * (i % 50));
    int32_t kept = ref_nucleus(logits, N, 0.9, keep);
    assert_true(kept > 64 && kept < 300);
    ref_softmax(logits, keep, N, 1.0, want);

    smp_params p = params_plain(1.0f, 31);
    p.top_p = 0.9f;
    smp *s = new_sampler(&p, N);
    draw_counts(s, logits, N, DRAWS, counts);
    assert_counts_match(counts, want, N, DRAWS);
    smp_free(s);

    /* Every truncation off: a draw straight from all 150k tokens. */
    for (int i = 0; i < N; i++)
        keep[i] = 1;
    ref_softmax(logits, keep, N, 1.0, want);
    p = params_plain(1.0f, 32);
    s = new_sampler(&p, N);
    draw_counts(s, logits, N, DRAWS, counts);
    int heavy = 0;
    for (int i = 0; i < N; i++)
        if (logits[i] >= 9.0f)
            heavy += counts[i];
    double heavy_want = 0.0;
    for (int i = 0; i < N; i++)
        if (logits[i] >= 9.0f)
            heavy_want += want[i];
    assert_true(fabs((double)heavy / DRAWS - heavy_want) < 0.03);
    smp_free(s);

    free(logits);
    free(keep);
    free(counts);
    free(want);
}

/* Equal logits are ordered by id, so a nucleus that ends among ties keeps
 * the lowest ids: here half of 1000 equally likely tokens. */
static void top_p_breaks_ties_by_lowest_id(void **state)
{
    (void)state;
    enum { N = 1000 };
    float logits[N];
    int keep[N], counts[N];
    double want[N];
    for (int i = 0; i < N; i++) {
        logits[i] = 0.25f;
        keep[i] = i < N / 2;
    }
    ref_softmax(logits, keep, N, 1.0, want);
    smp_params p = params_plain(1.0f, 19);
    p.top_p = 0.4995f; /* not exactly 0.5, so rounding cannot add a token */
    smp *s = new_sampler(&p, N);
    draw_counts(s, logits, N, N_DRAWS, counts);
    assert_counts_match(counts, want, N, N_DRAWS);
    smp_free(s);
}

static void min_p_drops_tokens_below_the_fraction_of_the_best(void **state)
{
    (void)state;
    float logits[5];
    int keep[5] = {0}, counts[5];
    double want[5];
    small_logits(logits);
    /* Threshold 0.2 * 0.4 = 0.08: 0.1 stays, 0.05 goes. */
    for (int i = 0; i < 4; i++)
        keep[small_ids[i]] = 1;
    ref_softmax(logits, keep, 5, 1.0, want);

    smp_params p = params_plain(1.0f, 13);
    p.min_p = 0.2f;
    smp *s = new_sampler(&p, 5);
    draw_counts(s, logits, 5, N_DRAWS, counts);
    assert_counts_match(counts, want, 5, N_DRAWS);
    smp_free(s);

    /* min_p 1 keeps only the best. */
    p.min_p = 1.0f;
    s = new_sampler(&p, 5);
    for (int i = 0; i < 500; i++)
        assert_int_equal(smp_sample(s, logits), small_ids[0]);
    smp_free(s);
}

/* min-p runs before temperature, so a high temperature flattens the survivors
 * but cannot bring back what min-p dropped. */
static void min_p_applies_before_temperature(void **state)
{
    (void)state;
    float logits[5];
    int keep[5] = {0}, counts[5];
    double want[5];
    small_logits(logits);
    for (int i = 0; i < 2; i++)
        keep[small_ids[i]] = 1;
    ref_softmax(logits, keep, 5, 4.0, want);

    smp_params p = params_plain(4.0f, 14);
    p.min_p = 0.5f; /* threshold 0.2: 0.4 and 0.3 stay */
    smp *s = new_sampler(&p, 5);
    draw_counts(s, logits, 5, N_DRAWS, counts);
    assert_counts_match(counts, want, 5, N_DRAWS);
    smp_free(s);
}

static void chained_top_k_top_p_min_p_match_the_reference(void **state)
{
    (void)state;
    enum { N = 3000, K = 40 };
    float logits[N];
    int keep[N], counts[N];
    double prob[N], want[N];
    fill_random(logits, N, 77, -3.0, 3.0);
    int32_t order[N];
    for (int i = 0; i < N; i++) {
        order[i] = i;
        keep[i] = 0;
    }
    sort_logits = logits;
    qsort(order, N, sizeof *order, by_logit_desc);
    for (int i = 0; i < K; i++)
        keep[order[i]] = 1;
    /* top-p over the renormalised top-k, then min-p against the best. */
    ref_softmax(logits, keep, N, 1.0, prob);
    double cum = 0.0;
    int i = 0;
    for (; i < K && cum < 0.7; i++)
        cum += prob[order[i]];
    for (int j = i; j < K; j++)
        keep[order[j]] = 0;
    for (int j = 0; j < i; j++)
        if (prob[order[j]] < 0.3 * prob[order[0]])
            keep[order[j]] = 0;
    ref_softmax(logits, keep, N, 0.7, want);

    smp_params p = params_plain(0.7f, 15);
    p.top_k = K;
    p.top_p = 0.7f;
    p.min_p = 0.3f;
    smp *s = new_sampler(&p, N);
    draw_counts(s, logits, N, N_DRAWS, counts);
    assert_counts_match(counts, want, N, N_DRAWS);
    smp_free(s);
}

static void repetition_penalty_changes_the_greedy_choice(void **state)
{
    (void)state;
    smp_params p = params_plain(0.0f, 1);
    p.repeat_penalty = 1.5f;
    p.repeat_last_n = 2;

    /* Positive logit divided: 2.0 / 1.5 = 1.33 < 1.8. */
    float pos[4] = {2.0f, 1.8f, 0.0f, -1.0f};
    smp *s = new_sampler(&p, 4);
    assert_int_equal(smp_sample(s, pos), 0);
    smp_accept(s, 0);
    assert_int_equal(smp_sample(s, pos), 1);
    /* The window holds two tokens: after two more, 0 is forgiven. */
    smp_accept(s, 2);
    smp_accept(s, 3);
    assert_int_equal(smp_sample(s, pos), 0);
    smp_free(s);

    /* Negative logit multiplied: -1.0 * 1.5 = -1.5 < -1.2. */
    float neg[3] = {-1.0f, -1.2f, -5.0f};
    s = new_sampler(&p, 3);
    assert_int_equal(smp_sample(s, neg), 0);
    smp_accept(s, 0);
    assert_int_equal(smp_sample(s, neg), 1);
    smp_free(s);
}

static void repetition_penalty_applies_once_per_distinct_token(void **state)
{
    (void)state;
    /* 2.0 / 1.25 = 1.6 > 1.5, but penalised twice it would be 1.28. */
    float logits[2] = {2.0f, 1.5f};
    smp_params p = params_plain(0.0f, 1);
    p.repeat_penalty = 1.25f;
    smp *s = new_sampler(&p, 2);
    for (int i = 0; i < 5; i++)
        smp_accept(s, 0);
    assert_int_equal(smp_sample(s, logits), 0);
    smp_free(s);

    /* Out-of-vocabulary ids are ignored, and penalty 1 changes nothing. */
    p.repeat_penalty = 1.0f;
    s = new_sampler(&p, 2);
    smp_accept(s, 0);
    smp_accept(s, -1);
    smp_accept(s, 2);
    assert_int_equal(smp_sample(s, logits), 0);
    smp_free(s);
}

static void repetition_penalty_reshapes_the_distribution(void **state)
{
    (void)state;
    float logits[3] = {1.0f, 1.0f, 1.0f};
    float penalised[3] = {1.0f / 2.0f, 1.0f, 1.0f};
    int keep[3] = {1, 1, 1}, counts[3];
    double want[3];
    ref_softmax(penalised, keep, 3, 1.0, want);
    smp_params p = params_plain(1.0f, 16);
    p.repeat_penalty = 2.0f;
    smp *s = new_sampler(&p, 3);
    smp_accept(s, 0);
    draw_counts(s, logits, 3, N_DRAWS, counts);
    assert_counts_match(counts, want, 3, N_DRAWS);
    smp_free(s);
}

static double top_share(float temp)
{
    float logits[4] = {2.0f, 1.0f, 0.0f, -1.0f};
    int keep[4] = {1, 1, 1, 1}, counts[4];
    double want[4];
    ref_softmax(logits, keep, 4, temp, want);
    smp_params p = params_plain(temp, 17);
    smp *s = new_sampler(&p, 4);
    draw_counts(s, logits, 4, N_DRAWS, counts);
    assert_counts_match(counts, want, 4, N_DRAWS);
    smp_free(s);
    return (double)counts[0] / N_DRAWS;
}

static void temperature_sharpens_below_one_and_flattens_above(void **state)
{
    (void)state;
    double cold = top_share(0.3f), unit = top_share(1.0f), hot = top_share(5.0f);
    assert_true(cold > 0.95);
    assert_true(cold > unit + 0.2);
    assert_true(unit > hot + 0.2);
    assert_true(hot < 0.4);
}

static void default_params_are_llama_cpp_defaults(void **state)
{
    (void)state;
    smp_params p = smp_params_default();
    assert_true(p.temp == 0.8f);
    assert_int_equal(p.top_k, 40);
    assert_true(p.top_p == 0.95f);
    assert_true(p.min_p == 0.05f);
    assert_true(p.repeat_penalty == 1.0f);
    assert_int_equal(p.repeat_last_n, 64);

    /* They sample only among the 40 best of a 150k vocabulary. */
    enum { N = 150000 };
    float *logits = malloc(N * sizeof *logits);
    assert_non_null(logits);
    fill_random(logits, N, 55, -10.0, 10.0);
    p.seed = 3;
    smp *s = new_sampler(&p, N);
    int32_t *order = malloc(N * sizeof *order);
    assert_non_null(order);
    for (int i = 0; i < N; i++)
        order[i] = i;
    sort_logits = logits;
    qsort(order, N, sizeof *order, by_logit_desc);
    float floor40 = logits[order[39]];
    for (int i = 0; i < 200; i++) {
        int32_t id = smp_sample(s, logits);
        assert_true(logits[id] >= floor40);
    }
    smp_free(s);
    free(order);
    free(logits);
}

static void expect_rejected(const smp_params *p, int32_t n_vocab, const char *needle)
{
    smp *s = (smp *)&s; /* not NULL, to see smp_new clear it */
    char err[256] = "";
    int rc = smp_new(&s, p, n_vocab, err);
    assert_true(rc < 0);
    assert_null(s);
    if (!strstr(err, needle))
        fail_msg("error \"%s\" does not mention \"%s\"", err, needle);
}

static void invalid_params_are_rejected_with_a_reason(void **state)
{
    (void)state;
    smp_params ok = smp_params_default();
    expect_rejected(&ok, 0, "n_vocab");
    expect_rejected(&ok, -5, "n_vocab");

    smp_params p = ok;
    p.top_p = -0.1f;
    expect_rejected(&p, 10, "top_p");
    p = ok;
    p.top_p = NAN;
    expect_rejected(&p, 10, "top_p");
    p = ok;
    p.temp = NAN;
    expect_rejected(&p, 10, "temp");
    p = ok;
    p.temp = INFINITY;
    expect_rejected(&p, 10, "temp");
    p = ok;
    p.min_p = 1.5f;
    expect_rejected(&p, 10, "min_p");
    p = ok;
    p.repeat_penalty = 0.0f;
    expect_rejected(&p, 10, "repeat_penalty");
    p = ok;
    p.repeat_penalty = -1.1f;
    expect_rejected(&p, 10, "repeat_penalty");
    p = ok;
    p.repeat_last_n = -1;
    expect_rejected(&p, 10, "repeat_last_n");

    smp *s = NULL;
    char err[256] = "";
    assert_true(smp_new(&s, NULL, 10, err) < 0);
    assert_non_null(strstr(err, "params"));

    /* The edges of the valid ranges are accepted. */
    p = ok;
    p.top_k = -3;
    p.top_p = 1.5f;
    p.min_p = -0.5f;
    p.temp = -2.0f;
    p.repeat_last_n = 0;
    assert_int_equal(smp_new(&s, &p, 1, err), 0);
    float one = 0.0f;
    assert_int_equal(smp_sample(s, &one), 0);
    smp_accept(s, 0);
    smp_free(s);
    smp_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(greedy_picks_argmax),
        cmocka_unit_test(greedy_ties_go_to_the_lowest_id),
        cmocka_unit_test(nan_logits_are_never_chosen),
        cmocka_unit_test(masked_tokens_are_never_chosen),
        cmocka_unit_test(logits_are_not_modified),
        cmocka_unit_test(same_seed_gives_the_same_sequence),
        cmocka_unit_test(different_seeds_give_different_sequences),
        cmocka_unit_test(reset_replays_the_sequence_and_forgets_history),
        cmocka_unit_test(top_k_1_equals_greedy),
        cmocka_unit_test(top_k_restricts_support_to_the_k_best),
        cmocka_unit_test(top_p_keeps_the_smallest_nucleus),
        cmocka_unit_test(top_p_zero_keeps_only_the_most_likely),
        cmocka_unit_test(top_p_over_a_large_vocab_matches_a_full_sort),
        cmocka_unit_test(top_p_breaks_ties_by_lowest_id),
        cmocka_unit_test(min_p_drops_tokens_below_the_fraction_of_the_best),
        cmocka_unit_test(min_p_applies_before_temperature),
        cmocka_unit_test(chained_top_k_top_p_min_p_match_the_reference),
        cmocka_unit_test(repetition_penalty_changes_the_greedy_choice),
        cmocka_unit_test(repetition_penalty_applies_once_per_distinct_token),
        cmocka_unit_test(repetition_penalty_reshapes_the_distribution),
        cmocka_unit_test(temperature_sharpens_below_one_and_flattens_above),
        cmocka_unit_test(default_params_are_llama_cpp_defaults),
        cmocka_unit_test(invalid_params_are_rejected_with_a_reason),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
