/*
 * engine.h - load a GGUF model and run it (the eng_ module).
 *
 * An eng_model holds the hyper-parameters, the tokenizer and pointers to the
 * weights, which stay in the read-only mapping of the GGUF file. It is
 * immutable after eng_model_open() and may be shared by several contexts.
 *
 * An eng_ctx is one sequence being evaluated: its KV cache, scratch buffers
 * and compute thread pool. eng_eval() appends a batch of tokens (the prompt
 * as one matrix x matrix pass, or one token while decoding) and leaves the
 * logits in the context. A context is driven by one thread at a time.
 */
#ifndef OUTPOST_ENGINE_H
#define OUTPOST_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "quant.h"
#include "tok.h"

enum {
    ENG_OK = 0,
    ENG_EIO = -1,
    ENG_EFORMAT = -2,  /* the file (model, saved KV state) is not usable */
    ENG_ENOMEM = -3,
    ENG_EUSAGE = -4,   /* bad arguments */
    ENG_ECTXFULL = -5, /* the batch does not fit in the context */
};

/* The decoder families the engine runs. All are pre-norm transformers with
 * RoPE and a gated FFN; they differ in the options below (see model.c for
 * which architecture sets which). */
typedef enum eng_arch {
    ENG_ARCH_LLAMA = 1,
    ENG_ARCH_QWEN2,
    ENG_ARCH_QWEN3,
    ENG_ARCH_PHI3,
    ENG_ARCH_GEMMA2,
} eng_arch;

/* The FFN's gate activation: out = act(gate) * up. */
typedef enum eng_ffn_act { ENG_ACT_SILU, ENG_ACT_GELU } eng_ffn_act;

typedef struct eng_hparams {
    eng_arch arch;
    char arch_name[32];
    int32_t n_vocab;
    int32_t n_ctx_train;
    int32_t n_embd;
    int32_t n_layer;
    int32_t n_head;
    int32_t n_head_kv;
    int32_t head_dim;  /* <arch>.attention.key_length, else n_embd / n_head */
    int32_t n_ff;
    int32_t n_rot;     /* RoPE dimension count (<= head_dim: partial rotary) */
    float rope_freq_base;
    float rope_freq_scale;  /* linear RoPE scaling: 1 / rope.scaling.factor (1 = none) */
    float rope_attn_factor; /* rope.scaling.attn_factor: cos and sin are scaled by it */
    int32_t n_ctx_orig;     /* rope.scaling.original_context_length: longer contexts
                               use LongRoPE's long factors */
    bool rope_neox;    /* rotate pairs (i, i + n_rot/2), not (2i, 2i+1) */
    float norm_eps;
    float attn_scale;      /* query-key scale, 1/sqrt(head_dim) unless the arch says else */
    float attn_softcap;    /* > 0: scores become c * tanh(s / c) (gemma2) */
    float final_softcap;   /* > 0: the same for the logits */
    int32_t swa_window;    /* > 0: sliding-window layers see this many positions */
    int32_t swa_pattern;   /* layer l slides iff l % p < p - 1 (p = 0: all layers) */
    float embd_scale;      /* token embeddings are multiplied by this (1 = none) */
    eng_ffn_act ffn_act;
    bool tied_output;  /* output head shares token_embd */
} eng_hparams;

typedef struct eng_model eng_model;
typedef struct eng_ctx eng_ctx;

int eng_model_open(eng_model **out, const char *path, char err[256]);
void eng_model_close(eng_model *m);
const eng_hparams *eng_model_hparams(const eng_model *m);
const tok *eng_model_tok(const eng_model *m);
const gguf *eng_model_gguf(const eng_model *m);
/* Bytes of weights one decode step reads: every layer tensor and the output
 * head in full, plus one embedding row. */
uint64_t eng_model_decode_weight_bytes(const eng_model *m);
/* Bytes of weights copied out of the file mapping at load (converted or
 * repacked); everything else is read in place from the mapping. */
uint64_t eng_model_repacked_bytes(const eng_model *m);
/* The type most of the weights have (for reports). */
qt_type eng_model_main_type(const eng_model *m);

typedef struct eng_ctx_params {
    int32_t n_ctx;     /* positions in the KV cache; <= 0: the training context */
    int32_t n_threads; /* <= 0: online cores */
    int32_t n_batch;   /* tokens per forward pass; <= 0: 512 */
    qt_type kv_type;   /* QT_F16 (default; QT_F32 is taken as F16) or QT_Q8_0 */
} eng_ctx_params;

eng_ctx_params eng_ctx_params_default(void);
int eng_ctx_new(eng_ctx **out, const eng_model *m, const eng_ctx_params *p, char err[256]);
void eng_ctx_free(eng_ctx *c);

/* Evaluate n tokens at positions n_past .. n_past+n-1. With all_logits the
 * logits of every token are kept (perplexity), otherwise only the last's.
 * ENG_ECTXFULL if the tokens do not fit; the context is then unchanged. */
int eng_eval(eng_ctx *c, const int32_t *tokens, int32_t n, bool all_logits, char err[256]);
/* Logits of token i of the last batch (i = -1: the last token). */
const float *eng_logits(const eng_ctx *c, int32_t i);
int32_t eng_n_past(const eng_ctx *c);
/* The context's compute threads, for work that should share them (e.g. a
 * bandwidth measurement next to decoding). */
struct pool *eng_ctx_pool(eng_ctx *c);
int32_t eng_n_ctx(const eng_ctx *c);
/* Bytes of KV cache per position (all layers, K and V). */
uint64_t eng_kv_bytes_per_pos(const eng_ctx *c);
/* Forget every position from n on (n <= n_past). */
void eng_kv_truncate(eng_ctx *c, int32_t n);
/* Drop positions [keep, keep+n_discard) and move the later ones down, with
 * their keys re-rotated for their new positions (context shift). */
int eng_kv_shift(eng_ctx *c, int32_t keep, int32_t n_discard, char err[256]);

/* Saved KV states (kv_state.c): the first n positions of a context's cache
 * and the n token ids they were computed from, in one file bound to the
 * model, the RoPE settings and the KV type that made it; a file from
 * anything else, truncated or corrupt is refused with ENG_EFORMAT and an
 * error naming the file and the field. Contexts with LoRA adapters attached
 * neither save nor load (their KV depends on the adapters too). */
#define ENG_KV_FILE_VERSION 2
/* The size of the file eng_kv_save writes for n positions of c. */
uint64_t eng_kv_file_bytes(const eng_ctx *c, int32_t n_tokens);
/* Write positions 0 .. n_tokens-1 (n_tokens <= eng_n_past) with their
 * tokens to path, atomically: a temporary file beside it, fsync, rename.
 * The file is created with mode 0600. */
int eng_kv_save(eng_ctx *c, const char *path, const int32_t *tokens, int32_t n_tokens,
                char err[256]);
/* The token ids a saved state holds, checked against c as eng_kv_load
 * checks them, without reading the rows (so without the checksum).
 * *tokens is the caller's (free()). */
int eng_kv_peek(const eng_ctx *c, const char *path, int32_t **tokens, int32_t *n_tokens,
                char err[256]);
/* Replace c's cache with a saved state: on success n_past is the file's
 * token count and *tokens (the caller's, free()) its token ids; the logits
 * are not restored, so evaluate at least one token before sampling. On
 * failure *tokens is NULL and c holds what it held before, unless the rows
 * were already being read (checksum mismatch, read error): then it is
 * empty (n_past 0). */
int eng_kv_load(eng_ctx *c, const char *path, int32_t **tokens, int32_t *n_tokens,
                char err[256]);

/* LoRA adapters (GGUF, general.type = adapter, adapter.type = lora), checked
 * against the model they are opened for. An adapter must outlive every
 * context it is attached to. */
typedef struct eng_lora eng_lora;
#define ENG_MAX_LORAS 8

int eng_lora_open(eng_lora **out, const eng_model *m, const char *path, char err[256]);
void eng_lora_close(eng_lora *l);
int32_t eng_lora_n_pairs(const eng_lora *l); /* how many weights it adapts */
/* Attach n adapters with their scales (scales NULL: all 1), replacing those
 * attached before; n = 0 detaches all. Takes effect from the next eng_eval:
 * tokens already in the KV cache keep what they were computed with. */
int eng_ctx_set_loras(eng_ctx *c, const eng_lora *const *adapters, const float *scales, int n,
                      char err[256]);

#endif
