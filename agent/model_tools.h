/*
 * model_tools.h - what `outpost quantize` and `outpost model synth` share
 * (the mtool_ prefix): the table of weight types a user may name, the rule
 * that picks a type a tensor's rows actually fit, and a row-parallel
 * converter that fills one tensor at a time.
 *
 * Both commands stream: they hold one tensor's output bytes at a time and
 * hand them to gguf_writer, so memory stays bounded by the largest tensor
 * however big the model is. Implemented in cmd_quantize.c.
 */
#ifndef OUTPOST_MODEL_TOOLS_H
#define OUTPOST_MODEL_TOOLS_H

#include <stdbool.h>
#include <stdint.h>

#include "pool.h"
#include "quant.h"

/* One type name a user may pass to quantize/synth. */
typedef struct mtool_target {
    const char *name; /* "q4_0", as users type it */
    qt_type type;     /* what the 2-D weights are stored as (a recipe's base) */
    uint32_t ftype;   /* llama.cpp's LLAMA_FTYPE number, for general.file_type */
    int bits;         /* nominal bits per weight, for the output-tensor rule */
    bool mixture;     /* a K-quant recipe: mtool_recipe_type picks per tensor */
} mtool_target;

/* What a recipe needs to know of the model it quantizes. */
typedef struct mtool_model_shape {
    int n_layer;      /* <arch>.block_count */
    int n_attn_v;     /* attn_v (or fused attn_qkv) tensors in the model */
    int n_gqa;        /* attention heads per KV head */
    bool tied_output; /* no output.weight: token_embd also makes the logits */
} mtool_model_shape;

/* The type llama.cpp's recipe for target (a mixture) gives the 2-D weight
 * `name` with rows of row_len elements, before the block-size fallback:
 * more bits for the output tensor and, depending on the recipe, for
 * attn_v, ffn_down and attn_output in some layers. */
qt_type mtool_recipe_type(const mtool_target *target, const mtool_model_shape *m,
                          const char *name, int64_t row_len);

/* The row for name (case-insensitive), or NULL after printing one line for
 * cmd: unknown names list the supported ones; names llama.cpp knows that we
 * cannot produce yet say "type X is not supported yet". */
const mtool_target *mtool_target_parse(const char *cmd, const char *name);

/* "Q4_0" for general.file_type 2, "MOSTLY_F16" for 1 ...; NULL if unknown. */
const char *mtool_ftype_name(uint32_t ftype);

/* The type a tensor with rows of row_len elements is stored as when want is
 * asked for: want if the rows are whole blocks of it; else, as llama.cpp
 * falls back, q4_0 for q2_k/q3_k, q5_0 for q4_k, q5_1 for q5_k and q8_0 for
 * q6_k and every other type, if the rows are whole blocks of that; else f16
 * (block size 1, so always). */
qt_type mtool_fit_type(qt_type want, int64_t row_len);

/* The one-line note on stderr for a tensor mtool_fit_type moved off the
 * type that was asked for. */
void mtool_note_fallback(const char *name, int64_t row_len, qt_type wanted, qt_type got);

/* Fills dst with the n floats of row `row`. Called concurrently from the
 * pool's threads, each on its own rows and its own dst. */
typedef void (*mtool_row_fn)(void *ctx, int64_t row, float *dst, int64_t n);

/* out = n_rows rows of row_len elements of dst_type, row r made from the
 * floats fill() gives for r; rows are split over the pool's threads, so the
 * bytes do not depend on the thread count. dst_type must have a from_float
 * and row_len must be a whole number of its blocks. */
int mtool_convert(pool *p, mtool_row_fn fill, void *ctx, int64_t n_rows, int64_t row_len,
                  qt_type dst_type, void *out, char err[256]);

/* A byte count for people: "512 B", "2.25 KiB", "1.05 MiB", "3.21 GiB". */
void mtool_format_bytes(uint64_t n, char buf[32]);

#endif
