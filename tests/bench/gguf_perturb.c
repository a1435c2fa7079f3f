/*
 * gguf_perturb.c - make the "new version" of a model for the OTA delta
 * benchmark (tests/bench/ota_delta.sh): a copy of a GGUF file with the same
 * metadata, tensor names, shapes and types, in which
 *   --noise F     every tensor moves by Gaussian noise of F times that
 *                 tensor's own standard deviation (a full fine-tune), or
 *   --replace F   round(F x the tensor count) of the 2-D tensors, evenly
 *                 spaced in file order, are drawn afresh (with the seed)
 *                 with each tensor's mean and standard deviation (a model
 *                 that differs in a fraction F of its tensors only);
 * the others are copied byte for byte. Quantized tensors are dequantized,
 * changed and quantized again with the engine's own rows (qt_), so the
 * result is what a quantizer would write. One tensor is held at a time.
 *
 * usage: gguf_perturb IN OUT (--noise F | --replace F) [--seed S]
 * Exit status 0 ok, 1 failure, 2 usage. A bench tool, not shipped.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "quant.h"

static uint64_t rng_state;

static uint64_t rng_next(void)
{
    /* splitmix64 */
    uint64_t z = (rng_state += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

static double rng_uniform(void) { return ((double)(rng_next() >> 11) + 0.5) / 9007199254740992.0; }

static double rng_gauss(void)
{
    return sqrt(-2.0 * log(rng_uniform())) * cos(6.283185307179586 * rng_uniform());
}

int main(int argc, char **argv)
{
    const char *in = NULL, *out = NULL;
    double noise = -1, replace = -1;
    uint64_t seed = 1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--noise") == 0 && i + 1 < argc)
            noise = atof(argv[++i]);
        else if (strcmp(argv[i], "--replace") == 0 && i + 1 < argc)
            replace = atof(argv[++i]);
        else if (strcmp(argv[i], "--seed") == 0 && i + 1 < argc)
            seed = strtoull(argv[++i], NULL, 10);
        else if (!in)
            in = argv[i];
        else if (!out)
            out = argv[i];
        else
            in = NULL;
    }
    if (!in || !out || (noise < 0) == (replace < 0)) {
        fprintf(stderr, "usage: gguf_perturb IN OUT (--noise F | --replace F) [--seed S]\n");
        return 2;
    }
    rng_state = seed;
    char err[256];
    gguf *g = NULL;
    gguf_writer *w = gguf_writer_new();
    float *buf = NULL;
    void *qbuf = NULL;
    int status = 1;
    if (!w || gguf_open(&g, in, err) || gguf_writer_copy_kv(w, g, "")) {
        fprintf(stderr, "gguf_perturb: %s\n", w ? err : "out of memory");
        goto done;
    }
    size_t nt = gguf_tensor_count(g);
    for (size_t i = 0; i < nt; i++) {
        const gguf_tensor *t = gguf_tensor_at(g, i);
        if (gguf_writer_add_tensor(w, t->name, t->n_dims, t->ne, t->type, err) < 0) {
            fprintf(stderr, "gguf_perturb: %s\n", err);
            goto done;
        }
    }
    if (gguf_writer_begin(w, out, err)) {
        fprintf(stderr, "gguf_perturb: %s\n", err);
        goto done;
    }
    unsigned changed = 0;
    size_t n2d = 0, j2d = 0;
    for (size_t i = 0; i < nt; i++)
        n2d += gguf_tensor_at(g, i)->n_dims >= 2;
    size_t k_replace = replace >= 0 ? (size_t)llround(replace * (double)nt) : 0;
    if (k_replace > n2d)
        k_replace = n2d;
    for (size_t i = 0; i < nt; i++) {
        const gguf_tensor *t = gguf_tensor_at(g, i);
        const qt_traits *tr = qt_get((qt_type)t->type);
        int64_t n = 1;
        for (uint32_t d = 0; d < t->n_dims; d++)
            n *= t->ne[d];
        bool pick = noise >= 0;
        if (noise < 0 && t->n_dims >= 2) {
            pick = (j2d + 1) * k_replace / n2d > j2d * k_replace / n2d;
            j2d++;
        }
        if (!pick || !tr || !tr->to_float || !tr->from_float) {
            if (gguf_writer_write_tensor(w, t->data, t->size_bytes, err)) {
                fprintf(stderr, "gguf_perturb: %s\n", err);
                goto done;
            }
            continue;
        }
        free(buf);
        free(qbuf);
        buf = malloc((size_t)n * sizeof *buf);
        qbuf = malloc(t->size_bytes);
        if (!buf || !qbuf) {
            fprintf(stderr, "gguf_perturb: out of memory\n");
            goto done;
        }
        tr->to_float(t->data, buf, n);
        double sum = 0, sq = 0;
        for (int64_t j = 0; j < n; j++) {
            sum += buf[j];
            sq += (double)buf[j] * buf[j];
        }
        double mean = sum / (double)n, sd = sqrt(fmax(sq / (double)n - mean * mean, 0));
        for (int64_t j = 0; j < n; j++)
            buf[j] = noise >= 0 ? (float)(buf[j] + noise * sd * rng_gauss())
                                : (float)(mean + sd * rng_gauss());
        tr->from_float(buf, qbuf, n);
        if (gguf_writer_write_tensor(w, qbuf, t->size_bytes, err)) {
            fprintf(stderr, "gguf_perturb: %s\n", err);
            goto done;
        }
        changed++;
    }
    if (gguf_writer_finish(w, err)) {
        fprintf(stderr, "gguf_perturb: %s\n", err);
        goto done;
    }
    printf("gguf_perturb: %s -> %s: %u of %zu tensors changed\n", in, out, changed, nt);
    status = 0;
done:
    free(buf);
    free(qbuf);
    gguf_writer_free(w);
    gguf_close(g);
    return status;
}
