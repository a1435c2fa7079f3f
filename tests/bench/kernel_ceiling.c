/*
 * kernel_ceiling.c - what bounds the prompt (gemm) tiles on an AVX-512 VNNI
 * CPU: the throughput of vpdpbusd alone and beside the float work each
 * 32-element block costs, and the Q4_0 x16 and Q4_K x16 tiles' own speed.
 *
 * A tile does 8 vpdpbusd per block and 16 rows x 1 token (512 multiply-adds)
 * and then scales the block's integer dot into the float sum: a conversion,
 * a multiply (weight scale x activation scale) and an FMA. Whether those
 * float instructions share execution ports with vpdpbusd decides how close
 * to vpdpbusd's peak a tile can get, so part 1 times 24 independent
 * vpdpbusd per loop against the same 24 plus three of each candidate, and
 * prints each mix's speed as a share of vpdpbusd alone: a share near 1
 * means the instruction runs on other ports (free), near 24/27 = 0.89 that
 * it takes a vpdpbusd slot.
 *
 * Part 2 times one thread's gemm tile call (ROWS x TOKENS x N, weights and
 * activations in L2, best of 15) for Q4_0 x16 and Q4_K x16, in GMAC/s and
 * as a share of part 1's vpdpbusd peak (64 multiply-adds per instruction).
 *
 *   kernel_ceiling [N]   (row length, default 2048)
 *
 * Prints a table and one JSON line; asserts nothing about time. x86-64
 * with AVX-512 F/BW/VL + VNNI only (it says so and exits 0 elsewhere).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "quant.h"

#define ROWS 64
#define TOKENS 128

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define KC_X86 1

enum { MIX_NONE, MIX_CVT, MIX_MUL, MIX_FMA, MIX_ADD_EPI32, MIX_ADD_PS, MIX_SCALEF, MIX_MULLO, MIX_BLOCK, MIX_COUNT };
static const char *const mix_name[MIX_COUNT] = {
    "vpdpbusd alone", "+ vcvtdq2ps", "+ vmulps", "+ vfmadd231ps", "+ vpaddd", "+ vaddps", "+ vscalefps",
    "+ vpmulld", "+ cvt, mul, fma (a block)",
};
static const char *const mix_key[MIX_COUNT] = {
    "alone", "cvt", "mul", "fma", "add_epi32", "add_ps", "scalef", "mullo", "block",
};

/* The loops are written in assembly so that the compiler neither moves
 * nor merges the instructions being timed: 24 vpdpbusd on 12 chains
 * (zmm0-11) per turn, and after each 8 of them one instruction of the mix
 * (MIX_BLOCK: a conversion, a multiply and an FMA in a row, as a tile does)
 * writing registers no vpdpbusd reads. Float sources hold 1.0, so no
 * operand is ever a NaN or a denormal. */
#define KC_DP(i) "vpdpbusd %%zmm31, %%zmm30, %%zmm" #i "\n\t"
#define KC_DP8A KC_DP(0) KC_DP(1) KC_DP(2) KC_DP(3) KC_DP(4) KC_DP(5) KC_DP(6) KC_DP(7)
#define KC_DP8B KC_DP(8) KC_DP(9) KC_DP(10) KC_DP(11) KC_DP(0) KC_DP(1) KC_DP(2) KC_DP(3)
#define KC_DP8C KC_DP(4) KC_DP(5) KC_DP(6) KC_DP(7) KC_DP(8) KC_DP(9) KC_DP(10) KC_DP(11)
#define KC_LOOP(X1, X2, X3)                                                                        \
    __asm__ volatile("vbroadcastss %[one], %%zmm28\n\t"                                            \
                     "vbroadcastss %[one], %%zmm29\n\t"                                            \
                     "vpbroadcastd %[bytes], %%zmm30\n\t"                                          \
                     "vpbroadcastd %[bytes], %%zmm31\n\t"                                          \
                     "1:\n\t" KC_DP8A X1 KC_DP8B X2 KC_DP8C X3 "dec %[n]\n\t"                       \
                     "jnz 1b\n\t"                                                                  \
                     : [n] "+r"(n)                                                                 \
                     : [one] "m"(one), [bytes] "m"(bytes)                                          \
                     : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6",      \
                       "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14",        \
                       "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22",     \
                       "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30",     \
                       "xmm31")
#define KC_CVT(d) "vcvtdq2ps %%zmm0, %%zmm" d "\n\t"
#define KC_MUL(d) "vmulps %%zmm29, %%zmm28, %%zmm" d "\n\t"
#define KC_FMA(d) "vfmadd231ps %%zmm29, %%zmm28, %%zmm" d "\n\t"
#define KC_ADDD(d) "vpaddd %%zmm29, %%zmm28, %%zmm" d "\n\t"
#define KC_ADDPS(d) "vaddps %%zmm29, %%zmm28, %%zmm" d "\n\t"
#define KC_SCALEF(d) "vscalefps %%zmm29, %%zmm28, %%zmm" d "\n\t"
#define KC_MULLO(d) "vpmulld %%zmm29, %%zmm28, %%zmm" d "\n\t"
#define KC_BLOCK(d) "vcvtdq2ps %%zmm4, %%zmm1" d "\n\t vmulps %%zmm28, %%zmm1" d ", %%zmm1" d "\n\t" \
                    "vfmadd231ps %%zmm29, %%zmm1" d ", %%zmm2" d "\n\t"

/* Seconds for `turns` turns of the mix's loop. */
__attribute__((target("avx512f,avx512vnni"), noinline)) static double time_mix(int mix, long turns)
{
    const float one = 1.0f;
    const int32_t bytes = 0x03030303;
    long n = turns;
    const double t0 = now();
    switch (mix) {
    case MIX_CVT: KC_LOOP(KC_CVT("12"), KC_CVT("13"), KC_CVT("14")); break;
    case MIX_MUL: KC_LOOP(KC_MUL("12"), KC_MUL("13"), KC_MUL("14")); break;
    case MIX_FMA: KC_LOOP(KC_FMA("12"), KC_FMA("13"), KC_FMA("14")); break;
    case MIX_ADD_EPI32: KC_LOOP(KC_ADDD("12"), KC_ADDD("13"), KC_ADDD("14")); break;
    case MIX_ADD_PS: KC_LOOP(KC_ADDPS("12"), KC_ADDPS("13"), KC_ADDPS("14")); break;
    case MIX_SCALEF: KC_LOOP(KC_SCALEF("12"), KC_SCALEF("13"), KC_SCALEF("14")); break;
    case MIX_MULLO: KC_LOOP(KC_MULLO("12"), KC_MULLO("13"), KC_MULLO("14")); break;
    case MIX_BLOCK: KC_LOOP(KC_BLOCK("2"), KC_BLOCK("3"), KC_BLOCK("4")); break;
    default: KC_LOOP("", "", ""); break;
    }
    return now() - t0;
}

static int have_vnni(void)
{
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}
#endif

/* One thread's gemm call on ROWS x TOKENS x n of type t (weights made by
 * its from_float from a fixed pattern), best of 15 runs of 10 calls, GMAC/s. */
static double time_gemm(qt_type t, int64_t n)
{
    const qt_traits *w = qt_get(t), *a = qt_get(w->vec_dot_type);
    const size_t xs = (qt_row_bytes(t, n) + 63) / 64 * 64, ys = qt_row_bytes(w->vec_dot_type, n);
    float *f = malloc((size_t)n * ROWS * sizeof(float));
    uint8_t *x = aligned_alloc(64, xs * ROWS), *y = aligned_alloc(64, (ys * TOKENS + 63) / 64 * 64);
    float *s = malloc(sizeof(float) * ROWS * TOKENS);
    if (!f || !x || !y || !s) {
        fprintf(stderr, "kernel_ceiling: out of memory\n");
        exit(1);
    }
    for (int64_t i = 0; i < n * ROWS; i++)
        f[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;
    for (int r = 0; r < ROWS; r++)
        w->from_float(f + r * n, x + r * xs, n);
    for (int k = 0; k < TOKENS; k++)
        a->from_float(f + (k % ROWS) * n, y + k * ys, n);
    double best = 0;
    for (int rep = 0; rep < 15; rep++) {
        const double t0 = now();
        for (int q = 0; q < 10; q++)
            w->gemm(n, s, ROWS, x, xs, ROWS, y, ys, TOKENS);
        const double g = (double)ROWS * TOKENS * (double)n * 10 / (now() - t0) / 1e9;
        if (g > best)
            best = g;
    }
    free(f);
    free(x);
    free(y);
    free(s);
    return best;
}

int main(int argc, char **argv)
{
    const int64_t n = argc > 1 ? atoll(argv[1]) : 2048;
    if (n <= 0 || n % 512 != 0) {
        fprintf(stderr, "kernel_ceiling: N must be a positive multiple of 512\n");
        return 2;
    }
#ifdef KC_X86
    if (!have_vnni()) {
        printf("kernel_ceiling: this CPU has no AVX-512 VNNI; nothing to measure\n");
        return 0;
    }
    const long iters = 20000000;
    double best[MIX_COUNT];
    for (int m = 0; m < MIX_COUNT; m++)
        best[m] = 1e30;
    for (int rep = 0; rep < 5; rep++) /* the mixes in turns, best of 5 each */
        for (int m = 0; m < MIX_COUNT; m++) {
            const double t = time_mix(m, iters);
            if (t < best[m])
                best[m] = t;
        }
    const double peak = 24.0 * 64.0 * (double)iters / best[MIX_NONE] / 1e9;
    printf("vpdpbusd peak, one thread: %.1f GMAC/s\n\n%-28s %8s\n", peak, "24 vpdpbusd per loop", "share");
    for (int m = 0; m < MIX_COUNT; m++)
        printf("%-28s %8.3f\n", mix_name[m], best[MIX_NONE] / best[m]);
    const double q40 = time_gemm(QT_Q4_0X16, n), q4k = time_gemm(QT_Q4_KX16, n);
    printf("\n%-28s %8s %8s\n", "gemm tile, one thread", "GMAC/s", "of peak");
    printf("%-28s %8.1f %7.1f%%\n", "q4_0x16", q40, 100 * q40 / peak);
    printf("%-28s %8.1f %7.1f%%\n", "q4_kx16", q4k, 100 * q4k / peak);
    printf("{\"n\": %lld, \"vpdpbusd_gmacs\": %.1f", (long long)n, peak);
    for (int m = 1; m < MIX_COUNT; m++)
        printf(", \"share_%s\": %.3f", mix_key[m], best[MIX_NONE] / best[m]);
    printf(", \"q4_0x16_gmacs\": %.1f, \"q4_kx16_gmacs\": %.1f}\n", q40, q4k);
    return 0;
#else
    printf("kernel_ceiling: x86-64 only; nothing to measure\n");
    return 0;
#endif
}
