/*
 * attention.c - causal grouped-query attention over the KV cache.
 *
 * Query token i of a batch sits at position n_past + i and attends to cache
 * positions max(0, pos - window + 1) .. pos (the whole prefix when window is
 * 0).
 *
 * Work items are tiles of query rows: a block of consecutive tokens times a
 * group of query heads sharing one KV head, at most ATT_ROWS rows (4 tokens
 * x 8 heads for TinyLlama). An item converts each key and value row of its
 * KV head to float once for all its rows, so a prompt pays one conversion
 * per key per token block instead of one per token. Items shrink (fewer
 * tokens, then fewer heads) while there are too few of them for the
 * threads (decode, short prompts), and are taken in token-block order 0,
 * last, 1, last - 1, ... so that a thread's contiguous range of items holds
 * early tokens (few keys) and late ones (many) alike.
 *
 * The cache is head-major (model_impl.h), so a chunk's keys of one KV head
 * are one contiguous stretch, converted by one call. With position-major
 * rows each head's slice was 128 bytes of every 512 (TinyLlama, F16): the
 * conversion stalled on loads the prefetchers did not foresee, and 1,057
 * decode steps over 992 to 2,048 keys ran at 56.1 tok/s; head-major, 62.8.
 *
 * Keys go ATT_CHUNK at a time, chunks aligned to absolute cache positions,
 * with a running maximum and sum per row (online softmax): a chunk's
 * exponentials are taken against the largest score so far, and the output
 * and sum collected so far are rescaled when the maximum grows. Scratch is
 * a fixed chunk of scores, keys and values per thread whatever the context
 * length, and a prompt never materialises an n x n score matrix.
 *
 * Layouts, chosen so that nothing needs a horizontal sum: the item's
 * queries are transposed once, qt[d][r] (row r = token t * heads + head);
 * a chunk's keys are float rows kf[j][d]; its scores are sc[j][r], 16
 * lanes per key when the item has at most 16 rows (decode) and 32
 * otherwise. Scores of 16 rows are one vector per key: qt's row d times
 * the broadcast key element, d by d (attn_scores), eight keys at a time
 * when one vector holds the rows, so that eight FMA chains hide the
 * latency. The softmax steps run across rows too, 16 lanes at a time.
 * Each row's output then gathers the value rows as a sum of scaled rows
 * vectorised across the head dimension (attn_accum), over that row's own
 * keys only, the rows of one token (same keys) four at a time so that each
 * value row is loaded once for them.
 *
 * Against items of one token (each converting its whole prefix, scores by
 * horizontal sums), TinyLlama-shaped Q4_0 prefill on two threads, three
 * alternated runs: 512 tokens 290 -> 345 tok/s, 128 tokens 338 -> 407
 * (attention fell from ~26% of a 512-token prefill's samples to ~9%).
 *
 * Determinism: every element of every step (score, maximum, exponential,
 * sum, output) is computed by the same operations in the same order
 * whichever item, lane or thread holds its row, and the chunks a row sees
 * depend only on its position. So results depend neither on the thread
 * count nor on how the rows were tiled (test_attention checks both bit for
 * bit, test_model the logits across thread counts).
 *
 * The query meets the keys as the key type's vec_dot would see it
 * (converted to its vec_dot_type and back: rounded to F16 for an F16 cache,
 * Q8_0 codes times scale for a Q8_0 one), so the float scores differ from
 * that dot product only in summation order.
 */
#include <assert.h>
#include <math.h>
#include <string.h>

#include "model_impl.h"
#include "ops.h"

#define ATT_CHUNK 64     /* keys per chunk; chunks start at multiples of it */
#define ATT_ROWS 32      /* query rows (tokens x heads) per work item */
#define ATT_MAX_HEADS 8  /* query heads per work item */

/* For each of nrow rows (at most ATT_ACCUM_ROWS) that see the same keys:
 * out[i][d] += sum over j < c of p[i][j * ps] v[j][d], d < hd, j in order.
 * Defined twice on x86-64: portable, and compiled for AVX2 and FMA. */
#define ATT_ACCUM_ROWS 4
#define ATT_ACCUM(SUFFIX, ATTR)                                                                    \
    ATTR static void attn_accum##SUFFIX(float *const *out, const float *const *p, int nrow,         \
                                        size_t ps, const float *restrict v, int32_t hd, int32_t c) \
    {                                                                                              \
        for (int i = 0; i < nrow; i++) {                                                           \
            float *restrict o = out[i];                                                            \
            for (int32_t j = 0; j < c; j++) {                                                      \
                const float pj = p[i][(size_t)j * ps];                                             \
                const float *vr = v + (size_t)j * hd;                                              \
                for (int32_t d = 0; d < hd; d++)                                                   \
                    o[d] += pj * vr[d];                                                            \
            }                                                                                      \
        }                                                                                          \
    }

ATT_ACCUM(_c, )
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define ATT_HAVE_AVX2 1
ATT_ACCUM(_avx2, __attribute__((target("avx2,fma"))))
#endif

typedef void (*attn_accum_fn)(float *const *, const float *const *, int, size_t, const float *restrict,
                              int32_t, int32_t);

/* One chunk's softmax step for rows r < nr, whose keys of the chunk are
 * ra[r] <= j < rb[r] (of j0 <= j < j1), the scores of key j being
 * sc[j * ss + r]: scores scaled (and soft-capped), each row's maximum
 * raised to its largest score (the output and sum it has so far
 * rescaled), its scores turned into exp(score - maximum) and their sum
 * added to sum[r]. Every element gets the same arithmetic in every
 * version and lane (selects, no reassociation, the chunk's part of a sum
 * in key order); keys outside a row's range stay out of its sums. Lanes
 * nr <= r < ss are set to exp(0), so that one exponential call covers the
 * chunk. */
typedef void (*attn_softmax_fn)(float *restrict, size_t, int32_t, int32_t, int32_t, const int32_t *,
                                const int32_t *, float, float, float *, double *, float *const *,
                                int32_t);

/* Rows whose chunk maximum cmax exceeds their running maximum: the output
 * and sum so far are scaled by exp(max - cmax), and the maximum raised. */
static void attn_raise_max(int32_t nr, const float *cmax, float *max, double *sum, float *const *out,
                           int32_t hd)
{
    for (int32_t r = 0; r < nr; r++)
        if (cmax[r] > max[r]) {
            if (max[r] != -INFINITY) {
                const float f = expf(max[r] - cmax[r]);
                for (int32_t d = 0; d < hd; d++)
                    out[r][d] *= f;
                sum[r] *= f;
            }
            max[r] = cmax[r];
        }
}

static void attn_softmax_c(float *restrict sc, size_t ss, int32_t nr, int32_t j0, int32_t j1,
                           const int32_t *ra, const int32_t *rb, float scale, float softcap, float *max,
                           double *sum, float *const *out, int32_t hd)
{
    float cmax[ATT_ROWS];
    for (int32_t r = 0; r < nr; r++)
        cmax[r] = max[r];
    for (int32_t j = j0; j < j1; j++) {
        float *restrict s = sc + (size_t)j * ss;
        for (int32_t r = 0; r < nr; r++)
            s[r] *= scale;
        if (softcap > 0)
            for (int32_t r = 0; r < nr; r++)
                s[r] = softcap * tanhf(s[r] / softcap);
        for (int32_t r = 0; r < nr; r++)
            cmax[r] = j >= ra[r] && j < rb[r] && s[r] > cmax[r] ? s[r] : cmax[r];
    }
    attn_raise_max(nr, cmax, max, sum, out, hd);
    for (int32_t j = j0; j < j1; j++) {
        float *restrict s = sc + (size_t)j * ss;
        for (int32_t r = 0; r < nr; r++)
            s[r] = j >= ra[r] && j < rb[r] ? s[r] - max[r] : 0.0f;
        for (size_t r = (size_t)nr; r < ss; r++)
            s[r] = 0.0f;
    }
    ops_exp(sc + (size_t)j0 * ss, (int64_t)(j1 - j0) * (int64_t)ss);
    float csum[ATT_ROWS]; /* the chunk's part in float, the running sum in double */
    for (int32_t r = 0; r < nr; r++)
        csum[r] = 0.0f;
    for (int32_t j = j0; j < j1; j++) {
        const float *restrict s = sc + (size_t)j * ss;
        for (int32_t r = 0; r < nr; r++)
            csum[r] += j >= ra[r] && j < rb[r] ? s[r] : 0.0f;
    }
    for (int32_t r = 0; r < nr; r++)
        sum[r] += (double)csum[r];
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define ATT_HAVE_AVX512 1
/* attn_softmax_c with 16 rows per vector: per key, a row's lane is in
 * range when ra <= j < rb (two compares into a mask), the maximum is a
 * masked vmaxps (s > cmax ? s : cmax, as in C), the selects are masked
 * subtractions and additions. Soft-capping (tanhf) stays scalar. */
__attribute__((target("avx512f"))) static void
attn_softmax_avx512(float *restrict sc, size_t ss, int32_t nr, int32_t j0, int32_t j1, const int32_t *ra,
                    const int32_t *rb, float scale, float softcap, float *max, double *sum,
                    float *const *out, int32_t hd)
{
    _Static_assert(ATT_ROWS == 32, "at most two vectors of rows");
    const int nv = (nr + 15) / 16;
    __mmask16 live[2] = {0, 0};
    __m512i va[2], vb[2];
    __m512 vmax[2], acc[2];
    assert(ss >= 16 * (size_t)nv && ss % 16 == 0);
    for (int v = 0; v < nv; v++) {
        const int32_t lanes = nr - 16 * v;
        live[v] = lanes >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << lanes) - 1u);
        va[v] = _mm512_maskz_loadu_epi32(live[v], ra + 16 * v);
        vb[v] = _mm512_maskz_loadu_epi32(live[v], rb + 16 * v);
    }
#define ATT_IN_RANGE(V, JV)                                                                        \
    _mm512_mask_cmplt_epi32_mask(_mm512_mask_cmple_epi32_mask(live[V], va[V], JV), JV, vb[V])

    const __m512 vscale = _mm512_set1_ps(scale);
    if (softcap > 0)
        for (int32_t j = j0; j < j1; j++) {
            float *restrict s = sc + (size_t)j * ss;
            for (int32_t r = 0; r < nr; r++)
                s[r] = softcap * tanhf(s[r] * scale / softcap);
        }
    for (int v = 0; v < nv; v++)
        acc[v] = _mm512_maskz_loadu_ps(live[v], max + 16 * v);
    for (int32_t j = j0; j < j1; j++) {
        const __m512i jv = _mm512_set1_epi32(j);
        float *restrict s = sc + (size_t)j * ss;
        for (int v = 0; v < nv; v++) {
            __m512 x = _mm512_loadu_ps(s + 16 * v);
            if (!(softcap > 0)) {
                x = _mm512_mul_ps(x, vscale);
                _mm512_storeu_ps(s + 16 * v, x);
            }
            acc[v] = _mm512_mask_max_ps(acc[v], ATT_IN_RANGE(v, jv), x, acc[v]);
        }
    }
    float cmax[ATT_ROWS];
    for (int v = 0; v < nv; v++)
        _mm512_storeu_ps(cmax + 16 * v, acc[v]);
    attn_raise_max(nr, cmax, max, sum, out, hd);
    for (int v = 0; v < nv; v++)
        vmax[v] = _mm512_maskz_loadu_ps(live[v], max + 16 * v);
    for (int32_t j = j0; j < j1; j++) {
        const __m512i jv = _mm512_set1_epi32(j);
        float *restrict s = sc + (size_t)j * ss;
        for (int v = 0; v < nv; v++)
            _mm512_storeu_ps(s + 16 * v,
                             _mm512_maskz_sub_ps(ATT_IN_RANGE(v, jv), _mm512_loadu_ps(s + 16 * v), vmax[v]));
        for (size_t r = 16 * (size_t)nv; r < ss; r += 16)
            _mm512_storeu_ps(s + r, _mm512_setzero_ps());
    }
    ops_exp(sc + (size_t)j0 * ss, (int64_t)(j1 - j0) * (int64_t)ss);
    for (int v = 0; v < nv; v++)
        acc[v] = _mm512_setzero_ps();
    for (int32_t j = j0; j < j1; j++) {
        const __m512i jv = _mm512_set1_epi32(j);
        const float *restrict s = sc + (size_t)j * ss;
        for (int v = 0; v < nv; v++)
            acc[v] = _mm512_mask_add_ps(acc[v], ATT_IN_RANGE(v, jv), acc[v], _mm512_loadu_ps(s + 16 * v));
    }
#undef ATT_IN_RANGE
    float csum[ATT_ROWS];
    for (int v = 0; v < nv; v++)
        _mm512_storeu_ps(csum + 16 * v, acc[v]);
    for (int32_t r = 0; r < nr; r++)
        sum[r] += (double)csum[r];
}
#endif

/* sc[j * ss + r] = sum over d < hd of k[j][d] qt[d][r], for r < nr (at
 * least; a kernel may fill lanes up to a multiple of 16, qt being zero
 * there) and j0 <= j < j1. Portable: each score accumulates d by d. */
typedef void (*attn_scores_fn)(float *restrict, size_t, const float *restrict, const float *restrict,
                               int32_t, int32_t, int32_t, int32_t);

static void attn_scores_c(float *restrict sc, size_t ss, const float *restrict qt, const float *restrict k,
                          int32_t nr, int32_t hd, int32_t j0, int32_t j1)
{
    for (int32_t j = j0; j < j1; j++) {
        float *s = sc + (size_t)j * ss;
        const float *kr = k + (size_t)j * hd;
        for (int32_t r = 0; r < nr; r++)
            s[r] = 0.0f;
        for (int32_t d = 0; d < hd; d++)
            for (int32_t r = 0; r < nr; r++)
                s[r] += kr[d] * qt[(size_t)d * ATT_ROWS + r];
    }
}

#ifdef ATT_HAVE_AVX512
/* attn_scores for AVX-512: NKEYS keys at a time against the NV 16-row
 * vectors of qt that hold rows (decode's items of up to 16 rows: eight keys
 * and one vector; others: four keys and both vectors; eight accumulators
 * either way, enough FMA chains to hide their latency); per d, a load of
 * each qt vector and NKEYS broadcast key elements feed the FMAs. Each score
 * is the same chain of FMAs, d by d, whatever its key's place in a group
 * and however many vectors there are. NKEYS and NV are constants in each
 * instance, so the accumulators stay in registers. */
__attribute__((target("avx512f"), always_inline)) static inline void
attn_scores_keys(float *restrict sc, size_t ss, const float *restrict qt, const float *restrict k, int32_t hd,
                 int32_t j, const int nkeys, const int nv)
{
    const float *k0 = k + (size_t)j * hd;
    __m512 a[8][2];
    for (int i = 0; i < nkeys; i++)
        for (int v = 0; v < nv; v++)
            a[i][v] = _mm512_setzero_ps();
    for (int32_t d = 0; d < hd; d++) {
        __m512 q[2];
        for (int v = 0; v < nv; v++)
            q[v] = _mm512_loadu_ps(qt + (size_t)d * ATT_ROWS + 16 * v);
        for (int i = 0; i < nkeys; i++) {
            const __m512 kv = _mm512_set1_ps(k0[(size_t)i * hd + d]);
            for (int v = 0; v < nv; v++)
                a[i][v] = _mm512_fmadd_ps(kv, q[v], a[i][v]);
        }
    }
    for (int i = 0; i < nkeys; i++)
        for (int v = 0; v < nv; v++)
            _mm512_storeu_ps(sc + (size_t)(j + i) * ss + 16 * v, a[i][v]);
}

__attribute__((target("avx512f"))) static void attn_scores_avx512(float *restrict sc, size_t ss,
                                                                   const float *restrict qt,
                                                                   const float *restrict k, int32_t nr,
                                                                   int32_t hd, int32_t j0, int32_t j1)
{
    _Static_assert(ATT_ROWS == 32, "two zmm of rows");
    int32_t j = j0;
    if (nr <= 16) {
        for (; j + 8 <= j1; j += 8)
            attn_scores_keys(sc, ss, qt, k, hd, j, 8, 1);
        for (; j < j1; j++)
            attn_scores_keys(sc, ss, qt, k, hd, j, 1, 1);
    } else {
        for (; j + 4 <= j1; j += 4)
            attn_scores_keys(sc, ss, qt, k, hd, j, 4, 2);
        for (; j < j1; j++)
            attn_scores_keys(sc, ss, qt, k, hd, j, 1, 2);
    }
}

/* attn_accum with the rows' outputs held in zmm (64 dims of up to four
 * rows: sixteen independent FMA chains) while the value rows stream past,
 * each loaded once for all the rows: every output element gets the
 * multiply-adds of attn_accum_c in the same order, each fused into one FMA.
 * NROW is a constant in each instance, so the accumulators stay in
 * registers. */
__attribute__((target("avx512f"), always_inline)) static inline void
attn_accum_rows(float *const *out, const float *const *p, const int nrow, size_t ps, const float *restrict v,
                int32_t hd, int32_t c)
{
    for (int32_t d0 = 0; d0 < hd; d0 += 64) {
        __mmask16 m[4];
        __m512 acc[ATT_ACCUM_ROWS][4];
        for (int k = 0; k < 4; k++) {
            const int32_t lanes = hd - d0 - 16 * k;
            m[k] = lanes >= 16 ? (__mmask16)0xffff : lanes > 0 ? (__mmask16)((1u << lanes) - 1u) : 0;
        }
        for (int i = 0; i < nrow; i++)
            for (int k = 0; k < 4; k++)
                acc[i][k] = _mm512_maskz_loadu_ps(m[k], out[i] + d0 + 16 * k);
        for (int32_t j = 0; j < c; j++) {
            const float *vr = v + (size_t)j * hd + d0;
            __m512 vk[4];
            for (int k = 0; k < 4; k++)
                vk[k] = _mm512_maskz_loadu_ps(m[k], vr + 16 * k);
            for (int i = 0; i < nrow; i++) {
                const __m512 pj = _mm512_set1_ps(p[i][(size_t)j * ps]);
                for (int k = 0; k < 4; k++)
                    acc[i][k] = _mm512_fmadd_ps(pj, vk[k], acc[i][k]);
            }
        }
        for (int i = 0; i < nrow; i++)
            for (int k = 0; k < 4; k++)
                _mm512_mask_storeu_ps(out[i] + d0 + 16 * k, m[k], acc[i][k]);
    }
}

__attribute__((target("avx512f"))) static void attn_accum_avx512(float *const *out, const float *const *p,
                                                                  int nrow, size_t ps, const float *restrict v,
                                                                  int32_t hd, int32_t c)
{
    _Static_assert(ATT_ACCUM_ROWS == 4, "one case per row count");
    switch (nrow) {
    case 4: attn_accum_rows(out, p, 4, ps, v, hd, c); break;
    case 3: attn_accum_rows(out, p, 3, ps, v, hd, c); break;
    case 2: attn_accum_rows(out, p, 2, ps, v, hd, c); break;
    default: attn_accum_rows(out, p, 1, ps, v, hd, c); break;
    }
}
#endif

typedef struct attn_task {
    const kv_cache *kv;
    const attn_params *a;
    float *scratch;
    size_t scratch_per_thread;
    int32_t heads_per_item;  /* divides n_head / n_head_kv, at most ATT_MAX_HEADS */
    int32_t tokens_per_item; /* times heads_per_item at most ATT_ROWS */
    attn_scores_fn scores;
    attn_softmax_fn softmax;
    attn_accum_fn accum;
} attn_task;

/* One item: tokens i0 .. i0 + nt, heads h0 .. h0 + hg of KV head kvh. */
static void attn_item(const attn_task *t, float *scratch, int32_t i0, int32_t nt, int32_t h0)
{
    const attn_params *a = t->a;
    const kv_cache *kv = t->kv;
    const int32_t hd = a->head_dim, hg = t->heads_per_item, nr = nt * hg;
    const int32_t kvh = h0 / (a->n_head / a->n_head_kv);
    const qt_traits *kt = qt_get(kv->type);
    const qt_traits *qtt = qt_get(kt->vec_dot_type);
    /* scratch: scores [ATT_CHUNK][ATT_ROWS], keys and values [ATT_CHUNK][hd],
     * queries transposed [hd][ATT_ROWS], one query row's conversion (hd
     * floats of room: any conversion of q fits) */
    float *sc = scratch;
    float *kf = sc + (size_t)ATT_CHUNK * ATT_ROWS;
    float *vf = kf + (size_t)ATT_CHUNK * hd;
    float *qt = vf + (size_t)ATT_CHUNK * hd;
    float *qroom = qt + (size_t)hd * ATT_ROWS;
    float *out[ATT_ROWS];
    int32_t lo[ATT_ROWS], hi[ATT_ROWS]; /* row r sees keys lo[r] .. hi[r] - 1 */
    float max[ATT_ROWS];
    double sum[ATT_ROWS];
    /* a key's scores: 16 lanes when the rows fit, so that the lanes the
     * exponentials and vector steps cover are mostly rows */
    const size_t ss = nr <= 16 ? 16 : ATT_ROWS;
    assert(nr >= 1 && nr <= ATT_ROWS);

    memset(qt, 0, (size_t)hd * ATT_ROWS * sizeof(float));
    int32_t klo = INT32_MAX, khi = 0;
    for (int32_t r = 0; r < nr; r++) {
        const int32_t i = i0 + r / hg, h = h0 + r % hg;
        const int32_t pos = a->n_past + i;
        const float *q = a->q + (size_t)i * a->q_stride + (size_t)h * hd;
        /* the query as the key type's dot meets it */
        const float *qf = q;
        if (kt->vec_dot_type != QT_F32) {
            qtt->from_float(q, qroom, hd);
            qtt->to_float(qroom, kf, hd); /* kf is free until the first chunk */
            qf = kf;
        }
        for (int32_t d = 0; d < hd; d++)
            qt[(size_t)d * ATT_ROWS + r] = qf[d];
        out[r] = a->out + (size_t)i * a->out_stride + (size_t)h * hd;
        memset(out[r], 0, (size_t)hd * sizeof(float));
        lo[r] = a->window > 0 && pos - a->window + 1 > 0 ? pos - a->window + 1 : 0;
        hi[r] = pos + 1;
        max[r] = -INFINITY;
        sum[r] = 0.0;
        if (lo[r] < klo)
            klo = lo[r];
        if (hi[r] > khi)
            khi = hi[r];
    }

    for (int32_t base = klo - klo % ATT_CHUNK; base < khi; base += ATT_CHUNK) {
        /* keys base + j0 .. base + j1 - 1 are some row's */
        const int32_t j0 = klo > base ? klo - base : 0;
        const int32_t j1 = khi - base < ATT_CHUNK ? khi - base : ATT_CHUNK;
        /* the head's keys and values of the chunk are contiguous */
        kt->to_float(kv_k_head(kv, a->layer, kvh, base + j0), kf + (size_t)j0 * hd, (int64_t)(j1 - j0) * hd);
        kt->to_float(kv_v_head(kv, a->layer, kvh, base + j0), vf + (size_t)j0 * hd, (int64_t)(j1 - j0) * hd);
        t->scores(sc, ss, qt, kf, nr, hd, j0, j1);

        int32_t ra[ATT_ROWS], rb[ATT_ROWS];
        for (int32_t r = 0; r < nr; r++) {
            ra[r] = lo[r] - base > j0 ? lo[r] - base : j0;
            rb[r] = hi[r] - base < j1 ? hi[r] - base : j1;
        }
        t->softmax(sc, ss, nr, j0, j1, ra, rb, a->scale, a->softcap, max, sum, out, hd);
        /* a token's rows (its heads) see the same keys: they gather the
         * value rows together */
        for (int32_t r = 0; r < nr;) {
            int nrow = 1;
            while (nrow < ATT_ACCUM_ROWS && r + nrow < nr && ra[r + nrow] == ra[r] && rb[r + nrow] == rb[r])
                nrow++;
            if (ra[r] < rb[r]) {
                const float *p[ATT_ACCUM_ROWS];
                for (int i = 0; i < nrow; i++)
                    p[i] = sc + (size_t)ra[r] * ss + r + i;
                t->accum(out + r, p, nrow, ss, vf + (size_t)ra[r] * hd, hd, rb[r] - ra[r]);
            }
            r += nrow;
        }
    }
    for (int32_t r = 0; r < nr; r++) {
        const float inv = (float)(1.0 / sum[r]);
        for (int32_t d = 0; d < hd; d++)
            out[r][d] *= inv;
    }
}

static void attn_worker(void *arg, int ith, int nth)
{
    const attn_task *t = arg;
    const attn_params *a = t->a;
    const int32_t tb = t->tokens_per_item, hg = t->heads_per_item;
    const int32_t blocks = (a->n_tokens + tb - 1) / tb, per_block = a->n_head / hg;
    float *scratch = t->scratch + (size_t)ith * t->scratch_per_thread;
    long b, e;
    pool_range((long)blocks * per_block, ith, nth, &b, &e);
    for (long item = b; item < e; item++) {
        const int32_t slot = (int32_t)(item / per_block);
        const int32_t blk = slot % 2 == 0 ? slot / 2 : blocks - 1 - slot / 2;
        const int32_t i0 = blk * tb;
        const int32_t nt = a->n_tokens - i0 < tb ? a->n_tokens - i0 : tb;
        attn_item(t, scratch, i0, nt, (int32_t)(item % per_block) * hg);
    }
}

size_t attn_scratch_floats(int32_t n_ctx, int32_t head_dim)
{
    (void)n_ctx; /* keys are taken ATT_CHUNK at a time */
    return (size_t)ATT_CHUNK * ATT_ROWS + 2 * (size_t)ATT_CHUNK * (size_t)head_dim +
           (size_t)head_dim * ATT_ROWS + (size_t)head_dim + 16;
}

void attn_run(pool *p, const kv_cache *kv, float *scratch, const attn_params *a)
{
    attn_task t = {.kv = kv, .a = a, .scratch = scratch,
                   .scratch_per_thread = attn_scratch_floats(kv->n_ctx, a->head_dim)};
    /* As many heads per item as share a KV head (up to ATT_MAX_HEADS) and as
     * many tokens as fill ATT_ROWS; tokens, then heads, halved while that
     * leaves fewer than two items per thread. Not four: halving the heads
     * makes two items convert and score the same keys (a score vector has
     * 16 lanes however few rows use them), and decode's items cost the
     * same, so two per thread already balance. TinyLlama decode, one
     * layer, two threads (an ad hoc harness, medians of 15): 192 keys 35.7 ->
     * 20.6 us, 512 keys 131.9 -> 69.4 us, 2048 keys 607 -> 305 us; and
     * `outpost run` of a 1,980-token prompt, its 67 decode steps: 36.6 ->
     * 47.8 tok/s. */
    const int32_t group = a->n_head / a->n_head_kv;
    int32_t hg = 1;
    while (hg * 2 <= ATT_MAX_HEADS && group % (hg * 2) == 0)
        hg *= 2;
    int32_t tb = ATT_ROWS / hg < a->n_tokens ? ATT_ROWS / hg : a->n_tokens;
    for (;;) {
        const long items = (long)((a->n_tokens + tb - 1) / tb) * (a->n_head / hg);
        if (items >= 2L * pool_threads(p))
            break;
        if (tb > 1)
            tb /= 2;
        else if (hg > 1)
            hg /= 2;
        else
            break;
    }
    t.heads_per_item = hg;
    t.tokens_per_item = tb;
    t.scores = attn_scores_c;
    t.softmax = attn_softmax_c;
    t.accum = attn_accum_c;
#ifdef ATT_HAVE_AVX2
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        t.accum = attn_accum_avx2;
#endif
#ifdef ATT_HAVE_AVX512
    if (__builtin_cpu_supports("avx512f")) {
        t.scores = attn_scores_avx512;
        t.softmax = attn_softmax_avx512;
        t.accum = attn_accum_avx512;
    }
#endif
    pool_run(p, attn_worker, &t);
}
