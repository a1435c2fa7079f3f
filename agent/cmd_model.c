/*
 * cmd_model.c - `outpost model info` (everything a GGUF file says about
 * itself) and `outpost model synth` (a random-weight model of a named real
 * model's architecture and shape, for benchmarks: speed does not depend on
 * the weights' values).
 *
 * info trusts the GGUF reader's validation and only formats; strings from
 * the file are printed escaped, and long strings and arrays abbreviated
 * unless --full.
 *
 * synth generates, quantizes and writes one tensor at a time (row-parallel
 * on the pool, streamed to gguf_writer), so memory is bounded by the largest
 * tensor. Every row's random numbers come from a generator seeded by (seed,
 * tensor index, row index) alone, so the file is the same bytes for the same
 * seed whatever the thread count.
 */
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "gguf.h"
#include "model_tools.h"
#include "pool.h"
#include "quant.h"

/* ---- info ---------------------------------------------------------------- */

/* What info abbreviates unless --full. */
#define INFO_STR_MAX 96
#define INFO_ARR_HEAD 6

static void print_escaped(const char *s, uint64_t len, uint64_t max)
{
    putchar('"');
    uint64_t n = len < max ? len : max;
    for (uint64_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\')
            printf("\\%c", ch);
        else if (ch == '\n')
            fputs("\\n", stdout);
        else if (ch == '\t')
            fputs("\\t", stdout);
        else if (ch < 0x20 || ch == 0x7f)
            printf("\\x%02x", ch);
        else
            putchar(ch);
    }
    putchar('"');
    if (n < len)
        printf("... (%" PRIu64 " bytes)", len);
}

static void print_scalar_elem(gguf_type t, const void *arr, uint64_t i)
{
    switch (t) {
    case GGUF_TYPE_UINT8: printf("%u", ((const uint8_t *)arr)[i]); break;
    case GGUF_TYPE_INT8: printf("%d", ((const int8_t *)arr)[i]); break;
    case GGUF_TYPE_UINT16: printf("%u", ((const uint16_t *)arr)[i]); break;
    case GGUF_TYPE_INT16: printf("%d", ((const int16_t *)arr)[i]); break;
    case GGUF_TYPE_UINT32: printf("%" PRIu32, ((const uint32_t *)arr)[i]); break;
    case GGUF_TYPE_INT32: printf("%" PRId32, ((const int32_t *)arr)[i]); break;
    case GGUF_TYPE_UINT64: printf("%" PRIu64, ((const uint64_t *)arr)[i]); break;
    case GGUF_TYPE_INT64: printf("%" PRId64, ((const int64_t *)arr)[i]); break;
    case GGUF_TYPE_FLOAT32: printf("%g", (double)((const float *)arr)[i]); break;
    case GGUF_TYPE_FLOAT64: printf("%g", ((const double *)arr)[i]); break;
    case GGUF_TYPE_BOOL: fputs(((const bool *)arr)[i] ? "true" : "false", stdout); break;
    default: fputs("?", stdout); break;
    }
}

static void print_array(const gguf_value *v, bool full, int depth)
{
    uint64_t n = v->v.arr.n;
    uint64_t shown = full ? n : (n < INFO_ARR_HEAD ? n : INFO_ARR_HEAD);
    if (depth > 0)
        printf("array[%s] %" PRIu64 ": ", gguf_type_name(v->v.arr.elem), n);
    putchar('[');
    for (uint64_t i = 0; i < shown; i++) {
        if (i)
            fputs(", ", stdout);
        if (v->v.arr.elem == GGUF_TYPE_STRING) {
            const gguf_str *s = &((const gguf_str *)v->v.arr.data)[i];
            print_escaped(s->ptr, s->len, full ? UINT64_MAX : INFO_STR_MAX);
        } else if (v->v.arr.elem == GGUF_TYPE_ARRAY) {
            print_array(&((const gguf_value *)v->v.arr.data)[i], full, depth + 1);
        } else {
            print_scalar_elem(v->v.arr.elem, v->v.arr.data, i);
        }
    }
    if (shown < n)
        printf("%s... %" PRIu64 " more", shown ? ", " : "", n - shown);
    putchar(']');
}

static void print_value(const gguf_value *v, bool full)
{
    switch (v->type) {
    case GGUF_TYPE_UINT8: case GGUF_TYPE_UINT16: case GGUF_TYPE_UINT32: case GGUF_TYPE_UINT64:
        printf("%" PRIu64, v->v.u64);
        break;
    case GGUF_TYPE_INT8: case GGUF_TYPE_INT16: case GGUF_TYPE_INT32: case GGUF_TYPE_INT64:
        printf("%" PRId64, v->v.i64);
        break;
    case GGUF_TYPE_FLOAT32: case GGUF_TYPE_FLOAT64:
        printf("%g", v->v.f64);
        break;
    case GGUF_TYPE_BOOL:
        fputs(v->v.b ? "true" : "false", stdout);
        break;
    case GGUF_TYPE_STRING:
        print_escaped(v->v.str.ptr, v->v.str.len, full ? UINT64_MAX : INFO_STR_MAX);
        break;
    case GGUF_TYPE_ARRAY:
        print_array(v, full, 0);
        break;
    default:
        fputs("?", stdout);
        break;
    }
}

/* "uint32", or "array[string] 32000" for arrays. */
static void format_value_type(char *buf, size_t cap, const gguf_value *v)
{
    if (v->type == GGUF_TYPE_ARRAY)
        snprintf(buf, cap, "array[%s] %" PRIu64, gguf_type_name(v->v.arr.elem), v->v.arr.n);
    else
        snprintf(buf, cap, "%s", gguf_type_name(v->type));
}

static void format_shape(char *buf, size_t cap, const gguf_tensor *t)
{
    size_t used = 0;
    buf[0] = '\0';
    for (uint32_t d = 0; d < t->n_dims && used < cap; d++) {
        int n = snprintf(buf + used, cap - used, "%s%" PRId64, d ? ", " : "[", t->ne[d]);
        if (n < 0)
            return;
        used += (size_t)n;
    }
    if (used + 2 <= cap)
        strcat(buf, "]");
}

/* "1.10 B", "134.52 M", "260.13 K", "512". */
static void format_count(char *buf, size_t cap, uint64_t n)
{
    if (n >= 1000000000ull)
        snprintf(buf, cap, "%.2f B", (double)n / 1e9);
    else if (n >= 1000000ull)
        snprintf(buf, cap, "%.2f M", (double)n / 1e6);
    else if (n >= 1000ull)
        snprintf(buf, cap, "%.2f K", (double)n / 1e3);
    else
        snprintf(buf, cap, "%" PRIu64, n);
}

/* One hyper-parameter line: label, value (or "-" when absent), key. */
static void print_hparam(const gguf *g, const char *arch, const char *suffix,
                         const char *label, bool is_float)
{
    char key[160];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    printf("  %-22s ", label);
    if (is_float) {
        float f;
        if (gguf_get_f32(g, key, &f) == 0)
            printf("%-10g", (double)f);
        else
            printf("%-10s", "-");
    } else {
        uint64_t u;
        if (gguf_get_u64(g, key, &u) == 0)
            printf("%-10" PRIu64, u);
        else
            printf("%-10s", "-");
    }
    printf(" (%s)\n", key);
}

static void print_token_id(const gguf *g, const char *label, const char *key,
                           const gguf_str *tokens, uint64_t n_tokens)
{
    uint64_t id = 0;
    if (gguf_get_u64(g, key, &id) != 0)
        return;
    printf("  %-22s %" PRIu64, label, id);
    if (tokens && id < n_tokens) {
        gguf_str text = tokens[id];
        putchar(' ');
        print_escaped(text.ptr, text.len, 40);
    } else if (id == UINT32_MAX) {
        fputs(" (none: -1 written as uint32)", stdout);
    } else if (tokens) {
        printf(" (outside the vocabulary of %" PRIu64 ")", n_tokens);
    }
    putchar('\n');
}

static void print_tokenizer(const gguf *g)
{
    const char *model = gguf_get_str(g, "tokenizer.ggml.model");
    if (!model) {
        printf("\ntokenizer: none (no tokenizer.ggml.model key)\n");
        return;
    }
    uint64_t n_tokens = 0, n_merges = 0;
    const gguf_str *tokens = gguf_get_arr(g, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &n_tokens);
    const char *pre = gguf_get_str(g, "tokenizer.ggml.pre");
    printf("\ntokenizer:\n");
    printf("  %-22s %s\n", "model", model);
    printf("  %-22s %s\n", "pre", pre ? pre : "- (absent: the model's default)");
    printf("  %-22s %" PRIu64 "\n", "vocab size", n_tokens);
    if (gguf_get_arr(g, "tokenizer.ggml.merges", GGUF_TYPE_STRING, &n_merges))
        printf("  %-22s %" PRIu64 "\n", "merges", n_merges);
    print_token_id(g, "bos", "tokenizer.ggml.bos_token_id", tokens, n_tokens);
    print_token_id(g, "eos", "tokenizer.ggml.eos_token_id", tokens, n_tokens);
    print_token_id(g, "unk", "tokenizer.ggml.unknown_token_id", tokens, n_tokens);
    print_token_id(g, "pad", "tokenizer.ggml.padding_token_id", tokens, n_tokens);
    bool b;
    if (gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b) == 0)
        printf("  %-22s %s\n", "add bos", b ? "true" : "false");
    if (gguf_get_bool(g, "tokenizer.ggml.add_eos_token", &b) == 0)
        printf("  %-22s %s\n", "add eos", b ? "true" : "false");
    if (gguf_get(g, "tokenizer.chat_template"))
        printf("  %-22s yes\n", "chat template");
}

static void print_architecture(const gguf *g)
{
    const char *arch = gguf_get_str(g, "general.architecture");
    if (!arch) {
        printf("\narchitecture: none (no general.architecture key)\n");
        return;
    }
    printf("\narchitecture: %s\n", arch);
    print_hparam(g, arch, "context_length", "context length", false);
    print_hparam(g, arch, "embedding_length", "embedding length", false);
    print_hparam(g, arch, "block_count", "block count", false);
    print_hparam(g, arch, "feed_forward_length", "feed-forward length", false);
    print_hparam(g, arch, "attention.head_count", "head count", false);
    print_hparam(g, arch, "attention.head_count_kv", "head count kv", false);
    print_hparam(g, arch, "rope.dimension_count", "rope dimension count", false);
    print_hparam(g, arch, "rope.freq_base", "rope freq base", true);
    print_hparam(g, arch, "attention.layer_norm_rms_epsilon", "rms epsilon", true);
    /* Architectures with LayerNorm (gpt2, falcon) name their epsilon apart. */
    char key[160];
    snprintf(key, sizeof key, "%s.attention.layer_norm_epsilon", arch);
    if (gguf_get(g, key))
        print_hparam(g, arch, "attention.layer_norm_epsilon", "layer norm epsilon", true);
    print_hparam(g, arch, "vocab_size", "vocab size", false);

    /* Derived values, as the engine will compute them. */
    uint64_t n_embd = 0, n_head = 0, n_head_kv = 0;
    snprintf(key, sizeof key, "%s.embedding_length", arch);
    gguf_get_u64(g, key, &n_embd);
    snprintf(key, sizeof key, "%s.attention.head_count", arch);
    gguf_get_u64(g, key, &n_head);
    snprintf(key, sizeof key, "%s.attention.head_count_kv", arch);
    if (gguf_get_u64(g, key, &n_head_kv) != 0)
        n_head_kv = n_head; /* absent means no grouping (llama.cpp's default) */
    uint64_t head_dim = 0;
    snprintf(key, sizeof key, "%s.attention.key_length", arch);
    if (gguf_get_u64(g, key, &head_dim) == 0)
        printf("  %-22s %" PRIu64 " (%s)\n", "head dim", head_dim, key);
    else if (n_embd && n_head && n_embd % n_head == 0)
        printf("  %-22s %" PRIu64 "\n", "head dim", n_embd / n_head);
    if (n_head && n_head_kv && n_head % n_head_kv == 0)
        printf("  %-22s %" PRIu64 "\n", "query heads per kv", n_head / n_head_kv);
}

static void print_metadata(const gguf *g, bool full)
{
    size_t n = gguf_kv_count(g);
    size_t width = 0;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(gguf_kv_key(g, i));
        if (l > width)
            width = l;
    }
    if (width > 48)
        width = 48;
    printf("\nmetadata (%zu keys):\n", n);
    for (size_t i = 0; i < n; i++) {
        const gguf_value *v = gguf_kv_value(g, i);
        char type[48];
        format_value_type(type, sizeof type, v);
        printf("  %-*s %-20s ", (int)width, gguf_kv_key(g, i), type);
        print_value(v, full);
        putchar('\n');
    }
}

static void print_tensors(const gguf *g)
{
    size_t n = gguf_tensor_count(g);
    size_t width = 4;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(gguf_tensor_at(g, i)->name);
        if (l > width)
            width = l;
    }
    if (width > 64)
        width = 64;
    printf("\ntensors (%zu):\n", n);
    printf("  %-*s %-22s %-6s %12s\n", (int)width, "name", "shape", "type", "size");
    uint64_t params = 0, bytes = 0;
    uint64_t type_count[QT_TYPE_COUNT] = {0}, type_elems[QT_TYPE_COUNT] = {0},
             type_bytes[QT_TYPE_COUNT] = {0};
    for (size_t i = 0; i < n; i++) {
        const gguf_tensor *t = gguf_tensor_at(g, i);
        char shape[96], size[32];
        format_shape(shape, sizeof shape, t);
        mtool_format_bytes(t->size_bytes, size);
        printf("  %-*s %-22s %-6s %12s\n", (int)width, t->name, shape,
               qt_type_name((qt_type)t->type), size);
        uint64_t elems = (uint64_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]);
        params += elems;
        bytes += t->size_bytes;
        /* The reader accepts only ids below QT_TYPE_COUNT that qt_get knows. */
        type_count[t->type]++;
        type_elems[t->type] += elems;
        type_bytes[t->type] += t->size_bytes;
    }

    char buf[32], buf2[32];
    format_count(buf, sizeof buf, params);
    printf("\ntotals:\n");
    printf("  %-22s %s (%" PRIu64 ")\n", "parameters", buf, params);
    mtool_format_bytes(bytes, buf);
    printf("  %-22s %s (%" PRIu64 " bytes)\n", "tensor data", buf, bytes);
    for (int t = 0; t < QT_TYPE_COUNT; t++) {
        if (!type_count[t])
            continue;
        mtool_format_bytes(type_bytes[t], buf);
        format_count(buf2, sizeof buf2, type_elems[t]);
        printf("  %-22s %zu tensors, %s parameters, %s (%.1f%%)\n",
               qt_type_name((qt_type)t), (size_t)type_count[t], buf2, buf,
               bytes ? 100.0 * (double)type_bytes[t] / (double)bytes : 0.0);
    }
    if (params)
        printf("  %-22s %.2f\n", "bits per weight", 8.0 * (double)bytes / (double)params);
}

static void info_usage(FILE *f)
{
    fprintf(f,
        "usage: outpost model info [--full] MODEL\n"
        "\n"
        "Describe the GGUF file MODEL: format version, alignment and size; the\n"
        "architecture's hyper-parameters (from the <arch>.* keys); the tokenizer\n"
        "(model, pre-tokenizer, vocabulary size, special tokens); every metadata key\n"
        "with its type and value; every tensor with its shape, type and size; and\n"
        "totals: parameter count, bytes per tensor type, bits per weight.\n"
        "\n"
        "Long strings and arrays are abbreviated to their type, length and first\n"
        "few elements.\n"
        "\n"
        "options:\n"
        "  --full       print strings and arrays in full\n"
        "  -h, --help   print this help and exit\n"
        "\n"
        "exit status: 0 ok, 1 the file cannot be read or is not valid GGUF (the one\n"
        "line on stderr says where it is broken), 2 usage error.\n");
}

static int model_info(int argc, char **argv)
{
    static const char *const CMD = "model info";
    static const struct option opts[] = {
        {"full", no_argument, NULL, 'f'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool full = false;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'f':
            full = true;
            break;
        case 'h':
            info_usage(stdout);
            return CLI_OK;
        default:
            fprintf(stderr, "outpost %s: see 'outpost model info --help'\n", CMD);
            return CLI_USAGE;
        }
    }
    if (argc - optind != 1) {
        cli_error(CMD, "expected one MODEL argument, got %d (see 'outpost model info --help')",
                  argc - optind);
        return CLI_USAGE;
    }
    char err[256];
    gguf *g;
    if (gguf_open(&g, argv[optind], err) != 0) {
        cli_error(CMD, "%s", err);
        return CLI_FAIL;
    }
    char size[32];
    mtool_format_bytes(gguf_file_size(g), size);
    printf("model: %s\n", gguf_path(g));
    printf("  %-22s %s (%" PRIu64 " bytes)\n", "file size", size, gguf_file_size(g));
    printf("  %-22s %" PRIu32 "\n", "gguf version", gguf_version(g));
    printf("  %-22s %" PRIu32 "\n", "alignment", gguf_alignment(g));
    printf("  %-22s %" PRIu64 "\n", "data offset", gguf_data_offset(g));
    const char *name = gguf_get_str(g, "general.name");
    if (name)
        printf("  %-22s %s\n", "name", name);
    uint32_t ftype;
    if (gguf_get_u32(g, "general.file_type", &ftype) == 0) {
        const char *fname = mtool_ftype_name(ftype);
        printf("  %-22s %s (%" PRIu32 ")\n", "file type", fname ? fname : "unknown", ftype);
    }
    print_architecture(g);
    print_tokenizer(g);
    print_metadata(g, full);
    print_tensors(g);
    gguf_close(g);
    return fflush(stdout) == 0 ? CLI_OK : CLI_FAIL;
}

/* ---- synth --------------------------------------------------------------- */

/* Real models' shapes. n_vocab is not here: it comes from --vocab. */
typedef struct synth_shape {
    const char *name;
    const char *description;
    const char *arch;   /* general.architecture, which decides the tensor set */
    uint32_t n_embd, n_layer, n_ff, n_head, n_head_kv;
    uint32_t head_dim;  /* written as attention.key_length; 0: n_embd / n_head */
    uint32_t n_ctx;     /* what we write as <arch>.context_length */
    float rope_base, rms_eps;
    bool tied_output;   /* output.weight absent: logits use token_embd */
    /* Llama 3 RoPE scaling, baked into rope_freqs.weight as llama.cpp's
     * converter does (factor 0: none). */
    float llama3_factor, llama3_low, llama3_high;
    uint32_t llama3_orig_ctx;
} synth_shape;

static const synth_shape shapes[] = {
    {"tinyllama-1.1b", "TinyLlama 1.1B", "llama", 2048, 22, 5632, 32, 4, 0, 2048, 10000.0f, 1e-5f,
     false, 0, 0, 0, 0},
    {"smol-135m", "SmolLM 135M", "llama", 576, 30, 1536, 9, 3, 0, 2048, 10000.0f, 1e-5f, true,
     0, 0, 0, 0},
    /* Llama 3.2 1B was trained to 131072 tokens; 8192 keeps a KV cache of the
     * default context within a small device's memory. */
    {"llama-3.2-1b", "Llama 3.2 1B", "llama", 2048, 16, 8192, 32, 8, 0, 8192, 500000.0f, 1e-5f,
     true, 32.0f, 1.0f, 4.0f, 8192},
    {"stories15m", "TinyStories 15M (llama2.c)", "llama", 288, 6, 768, 6, 6, 0, 256, 10000.0f,
     1e-5f, false, 0, 0, 0, 0},
    {"stories260k", "TinyStories 260K (llama2.c)", "llama", 64, 5, 172, 8, 4, 0, 512, 10000.0f,
     1e-5f, false, 0, 0, 0, 0},
    /* The context lengths below are the models' own (Qwen3 0.6B: 40960). */
    {"qwen2.5-0.5b", "Qwen2.5 0.5B", "qwen2", 896, 24, 4864, 14, 2, 0, 32768, 1000000.0f, 1e-6f,
     true, 0, 0, 0, 0},
    {"qwen3-0.6b", "Qwen3 0.6B", "qwen3", 1024, 28, 3072, 16, 8, 128, 40960, 1000000.0f, 1e-6f,
     true, 0, 0, 0, 0},
    {"phi-3-mini", "Phi-3 mini 4K (3.8B)", "phi3", 3072, 32, 8192, 32, 32, 0, 4096, 10000.0f,
     1e-5f, false, 0, 0, 0, 0},
    {"gemma-2-2b", "Gemma 2 2B", "gemma2", 2304, 26, 9216, 8, 4, 256, 8192, 10000.0f, 1e-6f, true,
     0, 0, 0, 0},
};
#define N_SHAPES (sizeof shapes / sizeof shapes[0])

static void print_shapes(FILE *f)
{
    fprintf(f, "%-16s %6s %6s %6s %6s %6s %8s %10s %6s %-7s %s\n", "shape", "n_embd", "layers",
            "n_ff", "heads", "kv", "ctx", "rope_base", "tied", "arch", "model");
    for (size_t i = 0; i < N_SHAPES; i++) {
        const synth_shape *s = &shapes[i];
        fprintf(f, "%-16s %6u %6u %6u %6u %6u %8u %10g %6s %-7s %s\n", s->name, s->n_embd,
                s->n_layer, s->n_ff, s->n_head, s->n_head_kv, s->n_ctx, (double)s->rope_base,
                s->tied_output ? "yes" : "no", s->arch, s->description);
    }
}

/* splitmix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number
 * generators"): a good 64-bit mix, and a generator when stepped by the
 * golden-ratio increment. */
static inline uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

typedef struct synth_fill {
    uint64_t seed;   /* already mixed with the tensor's index */
    float mean, std; /* of every element */
} synth_fill;

/* Row r: mean + std * g, g close to a standard normal: the sum of four
 * uniform 16-bit lanes of one 64-bit draw (Irwin-Hall, variance 4/12 of the
 * lane range squared), centred and scaled. Bounded at about 3.5 sigma, which
 * is fine for weights and costs one draw per element. */
static void synth_row(void *vctx, int64_t row, float *dst, int64_t n)
{
    const synth_fill *f = vctx;
    uint64_t state = mix64(f->seed ^ mix64((uint64_t)row + 0x632be59bd9b4e019ull));
    const float scale = f->std * 1.7320508f / 65536.0f; /* sqrt(3) / 2^16 */
    for (int64_t i = 0; i < n; i++) {
        state += 0x9e3779b97f4a7c15ull;
        uint64_t z = mix64(state);
        uint32_t sum = (uint32_t)(z & 0xffff) + (uint32_t)((z >> 16) & 0xffff) +
                       (uint32_t)((z >> 32) & 0xffff) + (uint32_t)(z >> 48);
        dst[i] = f->mean + scale * ((float)sum - 131070.0f);
    }
}

typedef struct synth_tensor {
    char name[64];
    uint32_t n_dims;
    int64_t ne[2];
    qt_type wanted, type; /* before and after the block-size fallback */
    float mean, std;
    bool llama3_rope;     /* computed Llama 3 RoPE divisors, not random */
    uint64_t size_bytes;
} synth_tensor;

/* A matrix of out_dim rows of in_dim inputs: std 1/sqrt(in_dim) keeps each
 * output's variance near its input's. */
static void add_matrix(synth_tensor *t, const char *name, int64_t in_dim, int64_t out_dim)
{
    snprintf(t->name, sizeof t->name, "%s", name);
    t->n_dims = 2;
    t->ne[0] = in_dim;
    t->ne[1] = out_dim;
    t->mean = 0.0f;
    t->std = 1.0f / sqrtf((float)in_dim);
}

/* An RMS-norm weight: 1, with a little noise so it is not a constant. */
static void add_norm(synth_tensor *t, const char *name, int64_t dim)
{
    snprintf(t->name, sizeof t->name, "%s", name);
    t->n_dims = 1;
    t->ne[0] = dim;
    t->ne[1] = 1;
    t->mean = 1.0f;
    t->std = 0.01f;
}

/* A bias vector: small values around 0. */
static void add_bias(synth_tensor *t, const char *name, int64_t dim)
{
    snprintf(t->name, sizeof t->name, "%s", name);
    t->n_dims = 1;
    t->ne[0] = dim;
    t->ne[1] = 1;
    t->mean = 0.0f;
    t->std = 0.1f;
}

typedef struct synth_rope {
    const synth_shape *s;
    int64_t n_rot;
} synth_rope;

/* Llama 3's RoPE frequency divisors (HF transformers' "llama3" rope_type,
 * which llama.cpp's converter stores in rope_freqs.weight): wavelengths
 * shorter than orig_ctx / high keep their frequency, those longer than
 * orig_ctx / low are slowed by factor, and those between are blended. */
static void synth_llama3_row(void *vctx, int64_t row, float *dst, int64_t n)
{
    const synth_rope *r = vctx;
    const synth_shape *s = r->s;
    const double orig = (double)s->llama3_orig_ctx;
    (void)row;
    for (int64_t i = 0; i < n; i++) {
        double freq = pow((double)s->rope_base, -2.0 * (double)i / (double)r->n_rot);
        double wavelen = 2.0 * 3.14159265358979323846 / freq;
        if (wavelen < orig / s->llama3_high) {
            dst[i] = 1.0f;
        } else if (wavelen > orig / s->llama3_low) {
            dst[i] = s->llama3_factor;
        } else {
            double smooth = (orig / wavelen - s->llama3_low) / (s->llama3_high - s->llama3_low);
            dst[i] = (float)(1.0 / ((1.0 - smooth) / s->llama3_factor + smooth));
        }
    }
}

static void synth_usage(FILE *f)
{
    fprintf(f,
        "usage: outpost model synth --shape NAME --type TYPE --vocab GGUF -o OUT\n"
        "                           [--seed S] [-t THREADS]\n"
        "       outpost model synth --shape list\n"
        "\n"
        "Write a GGUF model of a real model's architecture and shape filled with\n"
        "random weights, for benchmarks and tests where the weights' values do not\n"
        "matter. The tokenizer (every tokenizer.* key) is copied from the GGUF file\n"
        "given with --vocab, and the vocabulary size is its token count.\n"
        "\n"
        "Matrices are drawn with mean 0 and standard deviation 1/sqrt(row length),\n"
        "so activations keep a sane scale; norm weights are 1 plus a little noise.\n"
        "1-D tensors are f32; 2-D tensors are TYPE (the K types are llama.cpp's\n"
        "recipes, as in 'outpost quantize'), or the fallback type where a row is not\n"
        "a whole number of the type's blocks (a note on stderr names each). The same\n"
        "seed writes the same bytes, whatever the thread count.\n"
        "\n"
        "options:\n"
        "  --shape NAME      one of the shapes below, or 'list' to print them\n"
        "  --type TYPE       type of the 2-D weights (f32, f16, bf16, q8_0, q4_0,\n"
        "                    q4_1, q5_0, q5_1, q6_k, q5_k_m, q4_k_m, q3_k_m, q2_k, ...;\n"
        "                    'outpost quantize --help' lists them all)\n"
        "  --vocab GGUF      the GGUF file whose tokenizer the model gets\n"
        "  -o, --output OUT  where to write the model\n"
        "  --seed S          random seed (default 1)\n"
        "  -t, --threads N   compute threads (default: one per core)\n"
        "  -h, --help        print this help and exit\n"
        "\n"
        "shapes:\n");
    print_shapes(f);
    fprintf(f,
        "\n"
        "exit status: 0 ok, 1 runtime failure (unreadable vocab file, write error),\n"
        "2 usage error.\n"
        "\n"
        "example:\n"
        "  outpost model synth --shape tinyllama-1.1b --type q4_0 \\\n"
        "      --vocab ggml-vocab-llama-spm.gguf -o tinyllama-q4_0.gguf\n");
}

static int model_synth(int argc, char **argv)
{
    static const char *const CMD = "model synth";
    enum { OPT_SHAPE = 256, OPT_TYPE, OPT_VOCAB, OPT_SEED };
    static const struct option opts[] = {
        {"shape", required_argument, NULL, OPT_SHAPE},
        {"type", required_argument, NULL, OPT_TYPE},
        {"vocab", required_argument, NULL, OPT_VOCAB},
        {"output", required_argument, NULL, 'o'},
        {"seed", required_argument, NULL, OPT_SEED},
        {"threads", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *shape_name = NULL, *type_name = NULL, *vocab_path = NULL, *out_path = NULL;
    uint64_t seed = 1;
    long n_threads = 0;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:t:h", opts, NULL)) != -1) {
        switch (c) {
        case OPT_SHAPE: shape_name = optarg; break;
        case OPT_TYPE: type_name = optarg; break;
        case OPT_VOCAB: vocab_path = optarg; break;
        case 'o': out_path = optarg; break;
        case OPT_SEED:
            if (!cli_parse_u64(CMD, "--seed", optarg, &seed))
                return CLI_USAGE;
            break;
        case 't':
            if (!cli_parse_long(CMD, "--threads", optarg, 1, 1024, &n_threads))
                return CLI_USAGE;
            break;
        case 'h':
            synth_usage(stdout);
            return CLI_OK;
        default:
            fprintf(stderr, "outpost %s: see 'outpost model synth --help'\n", CMD);
            return CLI_USAGE;
        }
    }
    if (optind < argc) {
        cli_error(CMD, "unexpected argument '%s' (see 'outpost model synth --help')",
                  argv[optind]);
        return CLI_USAGE;
    }
    if (shape_name && strcmp(shape_name, "list") == 0) {
        print_shapes(stdout);
        return CLI_OK;
    }
    const char *missing = !shape_name ? "--shape" : !type_name ? "--type"
                        : !vocab_path ? "--vocab" : !out_path ? "-o" : NULL;
    if (missing) {
        cli_error(CMD, "%s is required (see 'outpost model synth --help')", missing);
        return CLI_USAGE;
    }
    const synth_shape *shape = NULL;
    for (size_t i = 0; i < N_SHAPES; i++)
        if (strcmp(shape_name, shapes[i].name) == 0)
            shape = &shapes[i];
    if (!shape) {
        char names[256] = "";
        for (size_t i = 0; i < N_SHAPES; i++) {
            if (i)
                strcat(names, ", ");
            strcat(names, shapes[i].name);
        }
        cli_error(CMD, "--shape: unknown shape '%s' (one of: %s)", shape_name, names);
        return CLI_USAGE;
    }
    const mtool_target *target = mtool_target_parse(CMD, type_name);
    if (!target)
        return CLI_USAGE;

    double t0 = cli_now();
    char err[256];
    int rc = CLI_FAIL;
    gguf *vocab = NULL;
    gguf_writer *w = NULL;
    pool *p = NULL;
    synth_tensor *ts = NULL;
    unsigned char *buf = NULL;

    if (gguf_open(&vocab, vocab_path, err) != 0) {
        cli_error(CMD, "%s", err);
        goto done;
    }
    uint64_t n_vocab = 0;
    if (!gguf_get_arr(vocab, "tokenizer.ggml.tokens", GGUF_TYPE_STRING, &n_vocab) ||
        n_vocab == 0 || n_vocab > UINT32_MAX) {
        cli_error(CMD, "%s: no usable tokenizer.ggml.tokens array (a list of strings)",
                  vocab_path);
        goto done;
    }

    /* The tensor list, in the order llama.cpp's converters write them, with
     * their names for the shape's architecture. GGUF ne[0] is the row
     * length, i.e. a matrix's input dimension. */
    const char *arch = shape->arch;
    const bool qwen2 = strcmp(arch, "qwen2") == 0, qwen3 = strcmp(arch, "qwen3") == 0;
    const bool phi3 = strcmp(arch, "phi3") == 0, gemma2 = strcmp(arch, "gemma2") == 0;
    const uint32_t head_dim = shape->head_dim ? shape->head_dim : shape->n_embd / shape->n_head;
    const int64_t n_embd = shape->n_embd, n_ff = shape->n_ff;
    const int64_t n_q = (int64_t)shape->n_head * head_dim;
    const int64_t n_kv = (int64_t)shape->n_head_kv * head_dim;
    size_t n_max = 4 + 13 * (size_t)shape->n_layer, n_tensors = 0;
    ts = calloc(n_max, sizeof *ts);
    w = gguf_writer_new();
    if (!ts || !w) {
        cli_error(CMD, "%s: out of memory", out_path);
        goto done;
    }
    size_t k = 0;
    if (shape->llama3_factor > 0) {
        add_norm(&ts[k], "rope_freqs.weight", head_dim / 2);
        ts[k++].llama3_rope = true;
    }
    add_matrix(&ts[k++], "token_embd.weight", n_embd, (int64_t)n_vocab);
    add_norm(&ts[k++], "output_norm.weight", n_embd);
    if (!shape->tied_output)
        add_matrix(&ts[k++], "output.weight", n_embd, (int64_t)n_vocab);
    for (uint32_t l = 0; l < shape->n_layer; l++) {
        char nm[64];
#define LNAME(suffix) (snprintf(nm, sizeof nm, "blk.%u." suffix, l), nm)
        add_norm(&ts[k++], LNAME("attn_norm.weight"), n_embd);
        if (phi3) {
            add_matrix(&ts[k++], LNAME("attn_qkv.weight"), n_embd, n_q + 2 * n_kv);
        } else {
            add_matrix(&ts[k++], LNAME("attn_q.weight"), n_embd, n_q);
            add_matrix(&ts[k++], LNAME("attn_k.weight"), n_embd, n_kv);
            add_matrix(&ts[k++], LNAME("attn_v.weight"), n_embd, n_kv);
        }
        if (qwen2) {
            add_bias(&ts[k++], LNAME("attn_q.bias"), n_q);
            add_bias(&ts[k++], LNAME("attn_k.bias"), n_kv);
            add_bias(&ts[k++], LNAME("attn_v.bias"), n_kv);
        }
        if (qwen3) {
            add_norm(&ts[k++], LNAME("attn_q_norm.weight"), head_dim);
            add_norm(&ts[k++], LNAME("attn_k_norm.weight"), head_dim);
        }
        add_matrix(&ts[k++], LNAME("attn_output.weight"), n_q, n_embd);
        if (gemma2)
            add_norm(&ts[k++], LNAME("post_attention_norm.weight"), n_embd);
        add_norm(&ts[k++], LNAME("ffn_norm.weight"), n_embd);
        if (phi3) {
            add_matrix(&ts[k++], LNAME("ffn_up.weight"), n_embd, 2 * n_ff);
        } else {
            add_matrix(&ts[k++], LNAME("ffn_gate.weight"), n_embd, n_ff);
            add_matrix(&ts[k++], LNAME("ffn_up.weight"), n_embd, n_ff);
        }
        add_matrix(&ts[k++], LNAME("ffn_down.weight"), n_ff, n_embd);
        if (gemma2)
            add_norm(&ts[k++], LNAME("post_ffw_norm.weight"), n_embd);
#undef LNAME
    }
    n_tensors = k;

    bool any_quantized = false;
    uint64_t max_bytes = 0, total_bytes = 0, params = 0;
    /* K types are recipes, as in `outpost quantize`: one attn_v (or fused
     * attn_qkv) per layer in every shape */
    const mtool_model_shape recipe_shape = {(int)shape->n_layer, (int)shape->n_layer,
                                            (int)(shape->n_head / shape->n_head_kv),
                                            shape->tied_output};
    for (size_t i = 0; i < n_tensors; i++) {
        synth_tensor *t = &ts[i];
        t->wanted = t->n_dims == 1    ? QT_F32
                    : target->mixture ? mtool_recipe_type(target, &recipe_shape, t->name, t->ne[0])
                                      : target->type;
        t->type = mtool_fit_type(t->wanted, t->ne[0]);
        any_quantized = any_quantized || qt_get(t->type)->is_quantized;
        t->size_bytes = (uint64_t)t->ne[1] * qt_row_bytes(t->type, t->ne[0]);
        if (t->size_bytes > max_bytes)
            max_bytes = t->size_bytes;
        total_bytes += t->size_bytes;
        params += (uint64_t)(t->ne[0] * t->ne[1]);
        if (gguf_writer_add_tensor(w, t->name, t->n_dims, t->ne, t->type, err) < 0) {
            cli_error(CMD, "%s: %s", out_path, err);
            goto done;
        }
    }

    char model_name[96];
    snprintf(model_name, sizeof model_name, "synthetic %s (random weights)", shape->name);
    int wrc = 0;
    char key[96];
#define AKEY(suffix) (snprintf(key, sizeof key, "%s." suffix, arch), key)
    wrc |= gguf_writer_set_str(w, "general.architecture", arch);
    wrc |= gguf_writer_set_str(w, "general.name", model_name);
    wrc |= gguf_writer_set_u32(w, "general.file_type", target->ftype);
    if (any_quantized)
        wrc |= gguf_writer_set_u32(w, "general.quantization_version", 2);
    wrc |= gguf_writer_set_u32(w, AKEY("context_length"), shape->n_ctx);
    wrc |= gguf_writer_set_u32(w, AKEY("embedding_length"), shape->n_embd);
    wrc |= gguf_writer_set_u32(w, AKEY("block_count"), shape->n_layer);
    wrc |= gguf_writer_set_u32(w, AKEY("feed_forward_length"), shape->n_ff);
    wrc |= gguf_writer_set_u32(w, AKEY("rope.dimension_count"), head_dim);
    wrc |= gguf_writer_set_u32(w, AKEY("attention.head_count"), shape->n_head);
    wrc |= gguf_writer_set_u32(w, AKEY("attention.head_count_kv"), shape->n_head_kv);
    if (shape->head_dim) {
        wrc |= gguf_writer_set_u32(w, AKEY("attention.key_length"), shape->head_dim);
        wrc |= gguf_writer_set_u32(w, AKEY("attention.value_length"), shape->head_dim);
    }
    wrc |= gguf_writer_set_f32(w, AKEY("attention.layer_norm_rms_epsilon"), shape->rms_eps);
    wrc |= gguf_writer_set_f32(w, AKEY("rope.freq_base"), shape->rope_base);
    wrc |= gguf_writer_set_u32(w, AKEY("vocab_size"), (uint32_t)n_vocab);
    if (phi3) {
        /* Phi-3 mini 4K: no LongRoPE factors; its config's window of 2047,
         * which llama.cpp (and the engine) ignore */
        wrc |= gguf_writer_set_u32(w, AKEY("rope.scaling.original_context_length"), shape->n_ctx);
        wrc |= gguf_writer_set_u32(w, AKEY("attention.sliding_window"), 2047);
    }
    if (gemma2) {
        wrc |= gguf_writer_set_f32(w, AKEY("attn_logit_softcapping"), 50.0f);
        wrc |= gguf_writer_set_f32(w, AKEY("final_logit_softcapping"), 30.0f);
        wrc |= gguf_writer_set_u32(w, AKEY("attention.sliding_window"), 4096);
    }
#undef AKEY
    wrc |= gguf_writer_copy_kv(w, vocab, "tokenizer.");
    if (wrc != 0) {
        cli_error(CMD, "%s: metadata could not be set (out of memory?)", out_path);
        goto done;
    }

    if (pool_new(&p, (int)n_threads, err) != 0) {
        cli_error(CMD, "%s", err);
        goto done;
    }
    if (!(buf = malloc((size_t)max_bytes))) {
        cli_error(CMD, "out of memory for a %" PRIu64 "-byte tensor", max_bytes);
        goto done;
    }
    if (gguf_writer_begin(w, out_path, err) != 0) {
        cli_error(CMD, "%s", err);
        goto done;
    }
    for (size_t i = 0; i < n_tensors; i++) {
        const synth_tensor *t = &ts[i];
        synth_fill fill = {mix64(seed ^ mix64((uint64_t)i + 1)), t->mean, t->std};
        synth_rope rope = {shape, head_dim};
        int crc = t->llama3_rope
                      ? mtool_convert(p, synth_llama3_row, &rope, 1, t->ne[0], t->type, buf, err)
                      : mtool_convert(p, synth_row, &fill, t->ne[1], t->ne[0], t->type, buf, err);
        if (crc != 0) {
            cli_error(CMD, "tensor %s: %s", t->name, err);
            goto done;
        }
        if (gguf_writer_write_tensor(w, buf, t->size_bytes, err) != 0) {
            cli_error(CMD, "%s", err);
            goto done;
        }
        if (t->type != t->wanted)
            mtool_note_fallback(t->name, t->ne[0], t->wanted, t->type);
    }
    if (gguf_writer_finish(w, err) != 0) {
        cli_error(CMD, "%s", err);
        goto done;
    }

    struct stat st;
    uint64_t file_bytes = stat(out_path, &st) == 0 ? (uint64_t)st.st_size : total_bytes;
    char size[32], count[32];
    mtool_format_bytes(file_bytes, size);
    format_count(count, sizeof count, params);
    printf("wrote %s\n", out_path);
    printf("  shape    %s: n_embd %u, %u layers, n_ff %u, %u heads, %u kv heads, ctx %u%s\n",
           shape->name, shape->n_embd, shape->n_layer, shape->n_ff, shape->n_head,
           shape->n_head_kv, shape->n_ctx, shape->tied_output ? ", tied output" : "");
    printf("  vocab    %" PRIu64 " tokens from %s\n", n_vocab, vocab_path);
    printf("  type     %s (%zu tensors, %s parameters, %.2f bits per weight)\n", target->name,
           n_tensors, count, 8.0 * (double)total_bytes / (double)params);
    printf("  size     %s (%" PRIu64 " bytes)\n", size, file_bytes);
    printf("  seed     %" PRIu64 ", %.2f s with %d thread%s\n", seed, cli_now() - t0,
           pool_threads(p), pool_threads(p) == 1 ? "" : "s");
    rc = CLI_OK;

done:
    free(buf);
    free(ts);
    pool_free(p);
    gguf_writer_free(w);
    gguf_close(vocab);
    return rc;
}

/* ---- dispatch ------------------------------------------------------------ */

static void model_usage(FILE *f)
{
    fprintf(f,
        "usage: outpost model info [--full] MODEL\n"
        "       outpost model synth --shape NAME --type TYPE --vocab GGUF -o OUT\n"
        "                           [--seed S] [-t THREADS]\n"
        "\n"
        "  info    describe a GGUF model: hyper-parameters, tokenizer, metadata,\n"
        "          tensors and totals\n"
        "  synth   write a random-weight model of a named real model's shape\n"
        "\n"
        "'outpost model info --help' and 'outpost model synth --help' say more.\n"
        "exit status: 0 ok, 1 runtime failure, 2 usage error.\n");
}

int cmd_model(int argc, char **argv)
{
    if (argc < 2) {
        cli_error("model", "expected 'info' or 'synth' (see 'outpost model --help')");
        return CLI_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        model_usage(stdout);
        return CLI_OK;
    }
    if (strcmp(argv[1], "info") == 0)
        return model_info(argc - 1, argv + 1);
    if (strcmp(argv[1], "synth") == 0)
        return model_synth(argc - 1, argv + 1);
    cli_error("model", "unknown subcommand '%s' (expected 'info' or 'synth')", argv[1]);
    return CLI_USAGE;
}
