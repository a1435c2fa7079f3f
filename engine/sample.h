/*
 * sample.h - choosing the next token from logits (the smp_ module).
 *
 * The chain runs in the order llama.cpp users know: repetition penalty over
 * the last repeat_last_n accepted tokens, then top-k, top-p, min-p,
 * temperature, and a draw from the resulting distribution with a seeded
 * PRNG. temp <= 0 means greedy: the argmax after the penalty (lowest id wins
 * a tie). A sampler is owned by one thread; the same seed and inputs give the
 * same tokens on every machine.
 */
#ifndef OUTPOST_SAMPLE_H
#define OUTPOST_SAMPLE_H

#include <stdint.h>

typedef struct smp_params {
    float temp;           /* <= 0: greedy */
    int32_t top_k;        /* <= 0: off */
    float top_p;          /* >= 1: off */
    float min_p;          /* <= 0: off */
    float repeat_penalty; /* 1: off */
    int32_t repeat_last_n;
    uint64_t seed;
} smp_params;

/* llama.cpp's defaults: temp 0.8, top-k 40, top-p 0.95, min-p 0.05,
 * repeat penalty 1.0 over 64 tokens, seed 0 (callers pick a random seed). */
smp_params smp_params_default(void);

typedef struct smp smp;

int smp_new(smp **out, const smp_params *p, int32_t n_vocab, char err[256]);
void smp_free(smp *s);
/* Forget the history (for a new sequence); the PRNG is reseeded. */
void smp_reset(smp *s);
/* Record a token of the sequence (prompt or generated) for the penalty. */
void smp_accept(smp *s, int32_t id);
/* Pick a token from n_vocab logits; logits are not modified. */
int32_t smp_sample(smp *s, const float *logits);

#endif
