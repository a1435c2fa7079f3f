/*
 * cmd_bench.c - `outpost bench`: prefill and decode speed, and how close
 * decode comes to the machine's memory read bandwidth.
 *
 * Like llama-bench, prefill (pp) evaluates -p random tokens as one batch and
 * decode (tg) evaluates -n tokens one at a time, each from an empty cache.
 * Decode is memory-bound: every step reads all layer weights, the output
 * head, one embedding row and the KV cache so far. Effective bandwidth is
 * those bytes over the time per token, and the share is that over the read
 * bandwidth measured in the same run by streaming all threads through a
 * buffer far larger than the last-level cache. The two are measured in
 * turns: before each decode step the same threads read as many bytes of
 * that buffer, and each side is its bytes over its summed time. On a shared
 * machine the load from other processes changes from second to second;
 * reading the bandwidth apart from decode (the best of a few passes of a
 * tenth of a second, as this file did before) compared decode's average
 * over seconds with the best moment of the bandwidth. The fastest pass is
 * still reported (membw_peak_gbs). Medians over -r repetitions.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include "cli.h"
#include "engine.h"
#include "pool.h"

static const char usage_text[] =
    "usage: outpost bench -m MODEL [-p N] [-n N] [-t T] [-r R] [--json]\n"
    "       outpost bench --membw [-t T] [-r R] [--json]\n"
    "\n"
    "Measure prefill (pp: -p tokens in one batch) and decode (tg: -n tokens one at\n"
    "a time) speed, the effective bandwidth of decode (bytes one decode step reads:\n"
    "layer and output weights, one embedding row, the KV cache; over the time per\n"
    "token) and its share of the memory read bandwidth, measured in the same run by\n"
    "streaming all threads through a buffer far larger than the last-level cache:\n"
    "before each decode step they read as many bytes as the step does.\n"
    "Figures are medians over -r repetitions. --membw measures the bandwidth alone\n"
    "(the best of four passes over the whole buffer).\n"
    "\n"
    "  -m, --model FILE     GGUF model\n"
    "  -p, --n-prompt N     prefill tokens (default 128; 0 skips prefill)\n"
    "  -n, --n-gen N        decode tokens (default 64; 0 skips decode)\n"
    "  -t, --threads N      compute threads (default: online cores)\n"
    "  -r, --repetitions R  repetitions (default 3)\n"
    "      --membw          measure memory read bandwidth only\n"
    "      --membw-mib N    size of the bandwidth buffer (default: 4x the last-level\n"
    "                       cache, at least 1024 MiB)\n"
    "      --ctk TYPE       KV cache type for K and V: f16 (default) or q8_0\n"
    "      --json           print one JSON object instead of the table: model, type,\n"
    "                       threads, pp_tokens, pp_tok_s, tg_tokens, tg_tok_s, eff_gbs,\n"
    "                       membw_gbs, membw_share, membw_peak_gbs, peak_rss_mb,\n"
    "                       repacked_bytes, decode_bytes, kv_type, kv_bytes_per_token\n"
    "  -h, --help           this text\n"
    "\n"
    "GB/s are 10^9 bytes per second. Exit status: 0 ok, 1 runtime failure, 2 usage error.\n";

enum { OPT_MEMBW = 256, OPT_MEMBW_MIB, OPT_JSON, OPT_CTK };
static const struct option long_opts[] = {
    {"model", required_argument, NULL, 'm'},
    {"n-prompt", required_argument, NULL, 'p'},
    {"n-gen", required_argument, NULL, 'n'},
    {"threads", required_argument, NULL, 't'},
    {"repetitions", required_argument, NULL, 'r'},
    {"membw", no_argument, NULL, OPT_MEMBW},
    {"membw-mib", required_argument, NULL, OPT_MEMBW_MIB},
    {"json", no_argument, NULL, OPT_JSON},
    {"ctk", required_argument, NULL, OPT_CTK},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

/* ---- memory read bandwidth ------------------------------------------- */

typedef struct membw {
    uint64_t *buf;
    size_t n_words;
    size_t pass_first, pass_words; /* the window one pass reads (multiples of 16 words) */
    uint64_t sink[64]; /* per thread, so the reads cannot be optimised away */
} membw;

/* The read loop: the widest loads this CPU has, four independent
 * accumulators, and a software prefetch ahead (on the virtual machines we
 * measured, the hardware prefetcher alone leaves bandwidth unused; the
 * weight kernels prefetch the same way, so both sides of the ratio read
 * memory alike). */
#if defined(__x86_64__)
#include <immintrin.h>
#define MEMBW_PREFETCH 1024

__attribute__((target("avx2"))) static uint64_t membw_sum_avx2(const uint64_t *p, long lines)
{
    __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
    const char *q = (const char *)p;
    for (long i = 0; i < lines; i += 2, q += 128) {
        _mm_prefetch(q + MEMBW_PREFETCH, _MM_HINT_T0);
        a = _mm256_add_epi64(a, _mm256_load_si256((const __m256i *)q));
        b = _mm256_add_epi64(b, _mm256_load_si256((const __m256i *)(q + 32)));
        c = _mm256_add_epi64(c, _mm256_load_si256((const __m256i *)(q + 64)));
        d = _mm256_add_epi64(d, _mm256_load_si256((const __m256i *)(q + 96)));
    }
    a = _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d));
    return (uint64_t)_mm256_extract_epi64(a, 0) ^ (uint64_t)_mm256_extract_epi64(a, 3);
}
#endif

static uint64_t membw_sum_plain(const uint64_t *p, long lines)
{
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0;
    for (long i = 0; i < lines; i++, p += 8) {
        a0 += p[0]; a1 += p[1]; a2 += p[2]; a3 += p[3];
        a4 += p[4]; a5 += p[5]; a6 += p[6]; a7 += p[7];
    }
    return a0 ^ a1 ^ a2 ^ a3 ^ a4 ^ a5 ^ a6 ^ a7;
}

static void membw_read(void *arg, int ith, int nth)
{
    membw *mb = arg;
    long b, e;
    /* pairs of 64-byte lines per thread, contiguous slices of the window */
    pool_range((long)(mb->pass_words / 16), ith, nth, &b, &e);
    const uint64_t *p = mb->buf + mb->pass_first + (size_t)b * 16;
    uint64_t v;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx2"))
        v = membw_sum_avx2(p, 2 * (e - b));
    else
#endif
        v = membw_sum_plain(p, 2 * (e - b));
    mb->sink[ith % 64] += v;
}

static size_t membw_default_bytes(void)
{
    long llc = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (llc <= 0)
        llc = sysconf(_SC_LEVEL2_CACHE_SIZE);
    size_t bytes = llc > 0 ? 4 * (size_t)llc : 0;
    if (bytes < ((size_t)1 << 30))
        bytes = (size_t)1 << 30;
    return bytes;
}

static int membw_init(membw *mb, size_t bytes)
{
    memset(mb, 0, sizeof *mb);
    mb->n_words = bytes / sizeof(uint64_t) / 16 * 16;
    /* 2 MiB aligned and asking for transparent huge pages, as the engine
     * asks for its repacked weights: the reference reads with the same page
     * size as the weights it is compared with, not a slower one (a kernel
     * streaming Q4_K x16 weights ran ~4% faster on huge pages, measured) */
    const size_t huge = (size_t)2 << 20;
    if (posix_memalign((void **)&mb->buf, huge, mb->n_words * sizeof(uint64_t)) != 0)
        return -1;
#ifdef MADV_HUGEPAGE
    (void)madvise(mb->buf, mb->n_words * sizeof(uint64_t) / huge * huge, MADV_HUGEPAGE);
#endif
    for (size_t i = 0; i < mb->n_words; i++) /* touch every page: no faults in the timing */
        mb->buf[i] = i;
    mb->pass_words = mb->n_words;
    return 0;
}

/* Seconds of one pass over the next `bytes` of the buffer (all of it when
 * bytes is 0 or larger), continuing where the last pass stopped, so
 * consecutive passes never find their data in a cache. */
static double membw_pass(membw *mb, pool *p, size_t bytes)
{
    size_t words = bytes / sizeof(uint64_t) / 16 * 16;
    if (words == 0 || words > mb->n_words)
        words = mb->n_words;
    if (mb->pass_first + mb->pass_words + words <= mb->n_words)
        mb->pass_first += mb->pass_words;
    else
        mb->pass_first = 0;
    mb->pass_words = words;
    double t0 = cli_now();
    pool_run(p, membw_read, mb);
    return cli_now() - t0;
}

/* GB/s of one full read, best of a few passes (first-touch effects aside, the
 * best pass is the bandwidth the hardware gives). */
static double membw_measure(membw *mb, pool *p)
{
    double best = 0.0;
    for (int pass = 0; pass < 4; pass++) {
        double gbs = (double)(mb->n_words * sizeof(uint64_t)) / membw_pass(mb, p, 0) / 1e9;
        if (gbs > best)
            best = gbs;
    }
    return best;
}

/* ---- model timing ------------------------------------------------------ */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Peak resident memory less the bandwidth buffer, which is touched in full
 * before the model loads and stays resident to the end, so it adds exactly
 * its size to the peak. What remains is what the model and context cost. */
static double peak_rss_mb(size_t exclude_bytes)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double mb = (double)ru.ru_maxrss / 1024.0 - (double)exclude_bytes / 1048576.0;
    return mb > 0 ? mb : 0.0; /* ru_maxrss is in KiB on Linux */
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

int cmd_bench(int argc, char **argv)
{
    const char *cmd = "bench", *model_path = NULL;
    long n_prompt = 128, n_gen = 64, n_threads = 0, reps = 3, membw_mib = 0;
    bool only_membw = false, json = false;
    qt_type kv_type = QT_F16;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":m:p:n:t:r:h", long_opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_path = optarg; break;
        case 'p': if (!cli_parse_long(cmd, "-p", optarg, 0, 1 << 16, &n_prompt)) return CLI_USAGE; break;
        case 'n': if (!cli_parse_long(cmd, "-n", optarg, 0, 1 << 16, &n_gen)) return CLI_USAGE; break;
        case 't': if (!cli_parse_long(cmd, "-t", optarg, 0, 512, &n_threads)) return CLI_USAGE; break;
        case 'r': if (!cli_parse_long(cmd, "-r", optarg, 1, 1000, &reps)) return CLI_USAGE; break;
        case OPT_MEMBW: only_membw = true; break;
        case OPT_MEMBW_MIB: if (!cli_parse_long(cmd, "--membw-mib", optarg, 1, 1 << 20, &membw_mib)) return CLI_USAGE; break;
        case OPT_JSON: json = true; break;
        case OPT_CTK: {
            int t = qt_type_from_name(optarg);
            if (t != QT_F16 && t != QT_Q8_0) {
                cli_error(cmd, "--ctk: KV cache type '%s' is not supported (f16, q8_0)", optarg);
                return CLI_USAGE;
            }
            kv_type = (qt_type)t;
            break;
        }
        case 'h': fputs(usage_text, stdout); return CLI_OK;
        default: return cli_bad_option(cmd, argv, c);
        }
    }
    if (optind < argc) {
        cli_error(cmd, "unexpected argument '%s'", argv[optind]);
        return CLI_USAGE;
    }
    if (!only_membw && !model_path) {
        cli_error(cmd, "a model is required (-m MODEL), or --membw");
        return CLI_USAGE;
    }
    if (!only_membw && n_prompt == 0 && n_gen == 0) {
        cli_error(cmd, "-p 0 and -n 0 leave nothing to measure");
        return CLI_USAGE;
    }

    int status = CLI_FAIL;
    char err[256];
    eng_model *m = NULL;
    eng_ctx *ctx = NULL;
    pool *bw_pool = NULL;
    int32_t *tokens = NULL;
    double *pp = calloc((size_t)reps, sizeof *pp), *tg = calloc((size_t)reps, sizeof *tg);
    double *bw = calloc((size_t)reps, sizeof *bw), *peak = calloc((size_t)reps, sizeof *peak);
    membw mb = {0};
    size_t bw_bytes = membw_mib ? (size_t)membw_mib << 20 : membw_default_bytes();
    if (!pp || !tg || !bw || !peak || membw_init(&mb, bw_bytes) != 0) {
        cli_error(cmd, "out of memory for a %zu MiB bandwidth buffer", bw_bytes >> 20);
        goto done;
    }

    if (only_membw) {
        if (pool_new(&bw_pool, (int)n_threads, err)) {
            cli_error(cmd, "%s", err);
            goto done;
        }
        const int nth = pool_threads(bw_pool);
        for (long r = 0; r < reps; r++)
            bw[r] = membw_measure(&mb, bw_pool);
        double gbs = median(bw, (int)reps);
        if (json)
            printf("{\"threads\": %d, \"buffer_mib\": %zu, \"membw_gbs\": %.3f}\n", nth,
                   bw_bytes >> 20, gbs);
        else
            printf("memory read bandwidth: %.2f GB/s (%d threads, %zu MiB buffer, median of %ld)\n",
                   gbs, nth, bw_bytes >> 20, reps);
        status = CLI_OK;
        goto done;
    }

    if (eng_model_open(&m, model_path, err)) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    const eng_hparams *hp = eng_model_hparams(m);
    eng_ctx_params cp = eng_ctx_params_default();
    long longest = n_prompt > n_gen ? n_prompt : n_gen;
    cp.n_ctx = (int32_t)(longest + 1);
    cp.n_batch = (int32_t)(n_prompt > 0 ? n_prompt : 1);
    cp.n_threads = (int32_t)n_threads;
    cp.kv_type = kv_type;
    if (eng_ctx_new(&ctx, m, &cp, err)) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    /* The bandwidth is read by the context's own compute threads: the same
     * threads, pinned the same way, that decode uses. */
    pool *ctx_pool = eng_ctx_pool(ctx);
    const int nth = pool_threads(ctx_pool);
    tokens = malloc((size_t)(longest + 1) * sizeof *tokens);
    if (!tokens) {
        cli_error(cmd, "out of memory");
        goto done;
    }
    uint64_t seed = 42;
    for (long i = 0; i <= longest; i++)
        tokens[i] = (int32_t)(rng_next(&seed) % (uint64_t)hp->n_vocab);

    /* Warm-up: fault every weight page in before anything is timed. */
    if (eng_eval(ctx, tokens, 1, false, err) || eng_eval(ctx, tokens + 1, 1, false, err)) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    /* Decode step i reads the cache of positions 0..i: on average (n-1)/2 rows. */
    double kv_avg = (double)eng_kv_bytes_per_pos(ctx) * (double)(n_gen + 1) / 2.0;
    double step_bytes = (double)eng_model_decode_weight_bytes(m) + kv_avg;
    for (long r = 0; r < reps; r++) {
        if (n_gen == 0)
            bw[r] = peak[r] = membw_measure(&mb, ctx_pool);
        if (n_prompt > 0) {
            eng_kv_truncate(ctx, 0);
            double t0 = cli_now();
            if (eng_eval(ctx, tokens, (int32_t)n_prompt, false, err)) {
                cli_error(cmd, "prefill: %s", err);
                goto done;
            }
            pp[r] = (double)n_prompt / (cli_now() - t0);
        }
        if (n_gen > 0) {
            /* Each decode step is paired with a read of as many bytes by the
             * same threads just before it, so both are measured over the
             * same stretch of time and meet the same load from the rest of
             * the machine; each side is its bytes over its summed time. */
            eng_kv_truncate(ctx, 0);
            double t_tok = 0.0, t_bw = 0.0, bytes_bw = 0.0;
            peak[r] = 0.0;
            for (long i = 0; i < n_gen; i++) {
                double dt = membw_pass(&mb, ctx_pool, (size_t)step_bytes);
                double pass_bytes = (double)(mb.pass_words * sizeof(uint64_t));
                t_bw += dt;
                bytes_bw += pass_bytes;
                if (pass_bytes / dt / 1e9 > peak[r])
                    peak[r] = pass_bytes / dt / 1e9;
                double t0 = cli_now();
                if (eng_eval(ctx, tokens + i, 1, false, err)) {
                    cli_error(cmd, "decode: %s", err);
                    goto done;
                }
                t_tok += cli_now() - t0;
            }
            tg[r] = (double)n_gen / t_tok;
            bw[r] = bytes_bw / t_bw / 1e9;
        }
    }
    double membw_gbs = median(bw, (int)reps);
    double membw_peak_gbs = median(peak, (int)reps);
    double pp_tok_s = n_prompt > 0 ? median(pp, (int)reps) : 0.0;
    double tg_tok_s = n_gen > 0 ? median(tg, (int)reps) : 0.0;
    double eff_gbs = step_bytes * tg_tok_s / 1e9;
    double share = membw_gbs > 0 ? eff_gbs / membw_gbs : 0.0;
    const char *base = strrchr(model_path, '/');
    base = base ? base + 1 : model_path;
    const char *type = qt_type_name(eng_model_main_type(m));
    if (json) {
        printf("{\"model\": \"");
        for (const char *s = base; *s; s++) /* a file name: escape what JSON needs */
            if (*s == '"' || *s == '\\')
                printf("\\%c", *s);
            else if ((unsigned char)*s < 0x20)
                printf("\\u%04x", *s);
            else
                putchar(*s);
        printf("\", \"type\": \"%s\", \"threads\": %d, \"pp_tokens\": %ld, \"pp_tok_s\": %.3f, "
               "\"tg_tokens\": %ld, \"tg_tok_s\": %.3f, \"eff_gbs\": %.3f, \"membw_gbs\": %.3f, "
               "\"membw_share\": %.4f, \"membw_peak_gbs\": %.3f, \"peak_rss_mb\": %.1f, \"repacked_bytes\": %llu, \"decode_bytes\": %.0f, "
               "\"kv_type\": \"%s\", \"kv_bytes_per_token\": %llu}\n",
               type, nth, n_prompt, pp_tok_s, n_gen, tg_tok_s, eff_gbs, membw_gbs, share, membw_peak_gbs,
               peak_rss_mb(mb.n_words * sizeof(uint64_t)),
               (unsigned long long)eng_model_repacked_bytes(m), step_bytes, qt_type_name(kv_type),
               (unsigned long long)eng_kv_bytes_per_pos(ctx));
    } else {
        printf("model        %s (%s, %s, %d layers, n_embd %d)\n", base, type, hp->arch_name,
               hp->n_layer, hp->n_embd);
        printf("threads      %d, repetitions %ld (medians)\n", nth, reps);
        if (n_prompt > 0)
            printf("prefill      pp%-5ld %10.2f tok/s\n", n_prompt, pp_tok_s);
        if (n_gen > 0) {
            printf("decode       tg%-5ld %10.2f tok/s\n", n_gen, tg_tok_s);
            printf("decode step  %.1f MiB read per token (weights %.1f MiB, KV %.2f MiB avg)\n",
                   step_bytes / 1048576.0,
                   (double)eng_model_decode_weight_bytes(m) / 1048576.0, kv_avg / 1048576.0);
            printf("bandwidth    %.2f GB/s effective, %.2f GB/s measured read between the steps: %.1f%%\n",
                   eff_gbs, membw_gbs, 100.0 * share);
            printf("read peak    %.2f GB/s (the fastest single read pass)\n", membw_peak_gbs);
        }
        printf("KV cache     %s, %llu bytes per token\n", qt_type_name(kv_type),
               (unsigned long long)eng_kv_bytes_per_pos(ctx));
        printf("peak RSS     %.1f MiB (model and context; the bandwidth buffer excluded)\n",
               peak_rss_mb(mb.n_words * sizeof(uint64_t)));
        printf("weights      memory-mapped; %llu bytes repacked at load (norms as F32; Q4_0, Q8_0, Q4_K, Q6_K matrices interleaved)\n",
               (unsigned long long)eng_model_repacked_bytes(m));
    }
    status = CLI_OK;
done:
    free(tokens);
    free(pp);
    free(tg);
    free(bw);
    free(peak);
    free(mb.buf);
    pool_free(bw_pool);
    eng_ctx_free(ctx);
    eng_model_close(m);
    return status;
}
