/*
 * cmd_quantize.c - `outpost quantize IN OUT TYPE`: rewrite a GGUF model with
 * its weight matrices in another type, plus the mtool_ helpers that
 * `outpost model synth` shares (see model_tools.h).
 *
 * Every tensor is read from the input's mapping, dequantized to float and
 * re-quantized row-parallel on the compute pool, then streamed to the
 * writer; only one output tensor is ever held in memory. A tensor that is
 * already in its output type is copied byte for byte (re-quantizing a
 * quantized tensor to its own type would only add error). The writer goes
 * through a temporary file and a rename, so OUT is either the old file or
 * the whole new one.
 *
 * Which type each tensor gets (after llama.cpp's quantizer):
 *  - 1-D tensors (norm weights, biases) are F32: they are tiny and every
 *    token's activations are scaled by them.
 *  - Legacy targets (q4_0 ... q8_0, f16): output.weight gets q8_0 when the
 *    target has fewer than 6 bits per weight (the logits of every step come
 *    out of it); token_embd.weight and every other 2-D weight get the
 *    target type, tied embeddings included.
 *  - K-quant targets are recipes: mtool_recipe_type applies llama.cpp's
 *    per-tensor rules (llama_tensor_get_type, for dense models without an
 *    importance matrix): the output tensor (token_embd when tied) q6_k,
 *    and attn_v, ffn_down and attn_output more bits in the layers where
 *    llama.cpp gives them more.
 *  - A tensor whose row length is not a whole number of its type's blocks
 *    falls back as llama.cpp's do (q4_k to q5_0, ...; q8_0 for the legacy
 *    types), else f16, with one note on stderr.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "gguf.h"
#include "model_tools.h"
#include "pool.h"
#include "quant.h"

/* ---- shared with model synth ------------------------------------------- */

/* llama.cpp's LLAMA_FTYPE numbering (llama.h) for general.file_type. */
enum {
    FT_Q2_K = 10,
    FT_Q3_K_S = 11,
    FT_Q3_K_M = 12,
    FT_Q3_K_L = 13,
    FT_Q4_K_S = 14,
    FT_Q4_K_M = 15,
    FT_Q5_K_S = 16,
    FT_Q5_K_M = 17,
    FT_Q6_K = 18,
};

/* The K rows are recipes that mix types per tensor (mtool_recipe_type). */
static const mtool_target targets[] = {
    {"f32", QT_F32, 0, 32, false},
    {"f16", QT_F16, 1, 16, false},
    {"bf16", QT_BF16, 32, 16, false},
    {"q8_0", QT_Q8_0, 7, 8, false},
    {"q4_0", QT_Q4_0, 2, 4, false},
    {"q4_1", QT_Q4_1, 3, 4, false},
    {"q5_0", QT_Q5_0, 8, 5, false},
    {"q5_1", QT_Q5_1, 9, 5, false},
    {"q6_k", QT_Q6_K, FT_Q6_K, 6, true},
    {"q5_k_m", QT_Q5_K, FT_Q5_K_M, 5, true},
    {"q5_k_s", QT_Q5_K, FT_Q5_K_S, 5, true},
    {"q4_k_m", QT_Q4_K, FT_Q4_K_M, 4, true},
    {"q4_k_s", QT_Q4_K, FT_Q4_K_S, 4, true},
    {"q3_k_l", QT_Q3_K, FT_Q3_K_L, 3, true},
    {"q3_k_m", QT_Q3_K, FT_Q3_K_M, 3, true},
    {"q3_k_s", QT_Q3_K, FT_Q3_K_S, 3, true},
    {"q2_k", QT_Q2_K, FT_Q2_K, 2, true},
    /* llama-quantize's short names for the _m recipes (not listed) */
    {"q3_k", QT_Q3_K, FT_Q3_K_M, 3, true},
    {"q4_k", QT_Q4_K, FT_Q4_K_M, 4, true},
    {"q5_k", QT_Q5_K, FT_Q5_K_M, 5, true},
};
#define N_LISTED_TARGETS (sizeof targets / sizeof targets[0] - 3)
#define N_TARGETS (sizeof targets / sizeof targets[0])

static const struct {
    uint32_t ftype;
    const char *name;
} ftype_names[] = {
    {0, "ALL_F32"},     {1, "MOSTLY_F16"},  {2, "MOSTLY_Q4_0"},  {3, "MOSTLY_Q4_1"},
    {7, "MOSTLY_Q8_0"}, {8, "MOSTLY_Q5_0"}, {9, "MOSTLY_Q5_1"},  {10, "MOSTLY_Q2_K"},
    {11, "MOSTLY_Q3_K_S"}, {12, "MOSTLY_Q3_K_M"}, {13, "MOSTLY_Q3_K_L"},
    {14, "MOSTLY_Q4_K_S"}, {15, "MOSTLY_Q4_K_M"}, {16, "MOSTLY_Q5_K_S"},
    {17, "MOSTLY_Q5_K_M"}, {18, "MOSTLY_Q6_K"},   {32, "MOSTLY_BF16"},
};

static bool target_available(const mtool_target *t)
{
    const qt_traits *tr = qt_get(t->type);
    return tr && tr->from_float && tr->to_float;
}

static void list_available(char *buf, size_t cap)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < N_LISTED_TARGETS; i++) {
        if (!target_available(&targets[i]))
            continue;
        int n = snprintf(buf + used, cap - used, "%s%s", used ? ", " : "", targets[i].name);
        if (n < 0 || (size_t)n >= cap - used)
            break;
        used += (size_t)n;
    }
}

const mtool_target *mtool_target_parse(const char *cmd, const char *name)
{
    char avail[256];
    list_available(avail, sizeof avail);
    for (size_t i = 0; i < N_TARGETS; i++) {
        if (strcasecmp(name, targets[i].name) != 0)
            continue;
        if (target_available(&targets[i]))
            return &targets[i];
        cli_error(cmd, "type %s is not supported yet (supported now: %s)", targets[i].name,
                  avail);
        return NULL;
    }
    cli_error(cmd, "unknown type '%s' (one of: %s)", name, avail);
    return NULL;
}

const char *mtool_ftype_name(uint32_t ftype)
{
    for (size_t i = 0; i < sizeof ftype_names / sizeof ftype_names[0]; i++)
        if (ftype_names[i].ftype == ftype)
            return ftype_names[i].name;
    return NULL;
}

qt_type mtool_fit_type(qt_type want, int64_t row_len)
{
    if (qt_row_bytes(want, row_len) != 0)
        return want;
    qt_type next;
    switch (want) {
    case QT_Q2_K:
    case QT_Q3_K:
        next = QT_Q4_0;
        break;
    case QT_Q4_K:
        next = QT_Q5_0;
        break;
    case QT_Q5_K:
        next = QT_Q5_1;
        break;
    default:
        next = QT_Q8_0;
        break;
    }
    return qt_row_bytes(next, row_len) != 0 ? next : QT_F16;
}

/* ---- K-quant recipes ----------------------------------------------------- */

/* llama.cpp's use_more_bits: the first and last eighth of the layers, and
 * every third layer between, get the recipe's extra bits. */
static bool use_more_bits(int layer, int n_layer)
{
    return layer < n_layer / 8 || layer >= 7 * n_layer / 8 || (layer - n_layer / 8) % 3 == 2;
}

/* attn_v and the fused projections that contain it, which llama.cpp treats
 * alike. */
static bool is_attn_v(const char *name)
{
    return strstr(name, "attn_v.weight") || strstr(name, "attn_qkv.weight") ||
           strstr(name, "attn_kv_b.weight");
}

static int layer_of(const char *name)
{
    int layer;
    return sscanf(name, "blk.%d.", &layer) == 1 && layer >= 0 ? layer : 0;
}

/* The rules of llama.cpp's llama_tensor_get_type (llama-quant.cpp) for the
 * K recipes, for dense models without an importance matrix; llama.cpp
 * counts layers by the order of the tensors, which for one attn_v and one
 * ffn_down per block is the block number used here. */
qt_type mtool_recipe_type(const mtool_target *target, const mtool_model_shape *m,
                          const char *name, int64_t row_len)
{
    const qt_type base = target->type;
    const uint32_t ft = target->ftype;
    const bool token_embd = strcmp(name, "token_embd.weight") == 0;
    /* the logits come out of the output tensor: q6_k unless its rows do not
     * fit the recipe's blocks, then q8_0 */
    if (strcmp(name, "output.weight") == 0 || (token_embd && m->tied_output))
        return qt_row_bytes(base, row_len) != 0 ? QT_Q6_K : QT_Q8_0;
    if (token_embd)
        return base;
    const int layer = layer_of(name);
    if (is_attn_v(name)) {
        switch (ft) {
        case FT_Q2_K:
            return m->n_gqa >= 4 ? QT_Q4_K : QT_Q3_K;
        case FT_Q3_K_M:
            return layer < 2 ? QT_Q5_K : QT_Q4_K;
        case FT_Q3_K_L:
            return QT_Q5_K;
        case FT_Q4_K_M:
        case FT_Q5_K_M:
            return use_more_bits(layer, m->n_attn_v) ? QT_Q6_K : base;
        case FT_Q4_K_S:
            return layer < 4 ? QT_Q5_K : base;
        default:
            return base;
        }
    }
    if (strstr(name, "ffn_down")) {
        const int n = m->n_layer;
        switch (ft) {
        case FT_Q2_K:
            return QT_Q3_K;
        case FT_Q3_K_M:
            return layer < n / 16 ? QT_Q5_K : QT_Q4_K;
        case FT_Q3_K_L:
            return QT_Q5_K;
        case FT_Q4_K_M:
        case FT_Q5_K_M:
            return use_more_bits(layer, n) ? QT_Q6_K : base;
        case FT_Q4_K_S:
            return layer < n / 8 ? QT_Q5_K : base;
        default:
            return base;
        }
    }
    if (strstr(name, "attn_output.weight")) {
        switch (ft) {
        case FT_Q2_K:
            return QT_Q3_K;
        case FT_Q3_K_M:
            return QT_Q4_K;
        case FT_Q3_K_L:
            return QT_Q5_K;
        default:
            return base;
        }
    }
    return base;
}

/* The recipe's view of a GGUF model: layer count and heads from the
 * metadata where present, the rest from the tensor names. */
static void model_shape(const gguf *g, mtool_model_shape *m)
{
    int max_layer = -1;
    bool has_output = false;
    memset(m, 0, sizeof *m);
    for (size_t i = 0; i < gguf_tensor_count(g); i++) {
        const char *name = gguf_tensor_at(g, i)->name;
        has_output = has_output || strcmp(name, "output.weight") == 0;
        if (is_attn_v(name))
            m->n_attn_v++;
        int layer;
        if (sscanf(name, "blk.%d.", &layer) == 1 && layer > max_layer)
            max_layer = layer;
    }
    m->n_layer = max_layer + 1;
    m->tied_output = !has_output;
    m->n_gqa = 1;
    const char *arch = gguf_get_str(g, "general.architecture");
    if (!arch)
        return;
    char key[160];
    uint64_t v, n_head = 0, n_head_kv = 0;
    snprintf(key, sizeof key, "%s.block_count", arch);
    if (gguf_get_u64(g, key, &v) == 0 && v > 0 && v < (1u << 20))
        m->n_layer = (int)v;
    snprintf(key, sizeof key, "%s.attention.head_count", arch);
    gguf_get_u64(g, key, &n_head);
    snprintf(key, sizeof key, "%s.attention.head_count_kv", arch);
    if (gguf_get_u64(g, key, &n_head_kv) != 0)
        n_head_kv = n_head;
    if (n_head > 0 && n_head_kv > 0 && n_head / n_head_kv < (1u << 20))
        m->n_gqa = (int)(n_head / n_head_kv);
}

void mtool_note_fallback(const char *name, int64_t row_len, qt_type wanted, qt_type got)
{
    const qt_traits *tr = qt_get(wanted);
    fflush(stdout); /* keep the note next to its tensor's line when both go to one file */
    fprintf(stderr, "note: %s: row length %" PRId64 " is not a multiple of %u, kept as %s\n",
            name, row_len, tr ? tr->block_elems : 0, qt_type_name(got));
}

typedef struct convert_job {
    mtool_row_fn fill;
    void *ctx;
    int64_t n_rows, row_len;
    const qt_traits *dst;
    size_t row_bytes;
    unsigned char *out;
    float *scratch; /* row_len floats per thread */
} convert_job;

static void convert_rows(void *vjob, int ith, int nth)
{
    convert_job *j = vjob;
    long begin, end;
    pool_range((long)j->n_rows, ith, nth, &begin, &end);
    float *row = j->scratch + (size_t)ith * (size_t)j->row_len;
    for (long r = begin; r < end; r++) {
        j->fill(j->ctx, r, row, j->row_len);
        j->dst->from_float(row, j->out + (size_t)r * j->row_bytes, j->row_len);
    }
}

int mtool_convert(pool *p, mtool_row_fn fill, void *ctx, int64_t n_rows, int64_t row_len,
                  qt_type dst_type, void *out, char err[256])
{
    const qt_traits *tr = qt_get(dst_type);
    size_t row_bytes = qt_row_bytes(dst_type, row_len);
    if (!tr || !tr->from_float || row_bytes == 0) {
        snprintf(err, 256, "cannot store rows of %" PRId64 " elements as %s", row_len,
                 qt_type_name(dst_type));
        return -1;
    }
    int nth = pool_threads(p);
    float *scratch = malloc((size_t)nth * (size_t)row_len * sizeof *scratch);
    if (!scratch) {
        snprintf(err, 256, "out of memory for %d rows of %" PRId64 " floats", nth, row_len);
        return -1;
    }
    convert_job job = {fill, ctx, n_rows, row_len, tr, row_bytes, out, scratch};
    pool_run(p, convert_rows, &job);
    free(scratch);
    return 0;
}

void mtool_format_bytes(uint64_t n, char buf[32])
{
    static const char *units[] = {"KiB", "MiB", "GiB", "TiB"};
    if (n < 1024) {
        snprintf(buf, 32, "%" PRIu64 " B", n);
        return;
    }
    double v = (double)n / 1024.0;
    size_t u = 0;
    while (v >= 1024.0 && u + 1 < sizeof units / sizeof units[0]) {
        v /= 1024.0;
        u++;
    }
    snprintf(buf, 32, "%.2f %s", v, units[u]);
}

/* ---- quantize ------------------------------------------------------------ */

static const char *const CMD = "quantize";

static void usage(FILE *f)
{
    char avail[256], wrapped[320];
    list_available(avail, sizeof avail);
    /* the list on lines of at most 72 columns, each indented by two */
    size_t w = 0, col = 2;
    for (const char *p = avail; *p && w + 4 < sizeof wrapped; p++) {
        if (*p == ' ' && col > 60) {
            memcpy(wrapped + w, "\n  ", 3);
            w += 3;
            col = 2;
            continue;
        }
        wrapped[w++] = *p;
        col++;
    }
    wrapped[w] = '\0';
    fprintf(f,
        "usage: outpost quantize IN OUT TYPE [-t THREADS]\n"
        "\n"
        "Write a copy of the GGUF model IN to OUT with its weight matrices converted\n"
        "to TYPE. All metadata is copied (general.file_type is updated). Tensors of\n"
        "any type the engine reads are dequantized and re-quantized (a tensor\n"
        "already in its output type is copied unchanged); only one tensor is held\n"
        "in memory at a time. One line per tensor and the sizes before and after\n"
        "are printed on stdout.\n"
        "\n"
        "TYPE is one of:\n"
        "  %s\n"
        "(q3_k, q4_k and q5_k are accepted for the _m recipes).\n"
        "\n"
        "Which tensors get which type:\n"
        "  1-D tensors (norm weights)   f32\n"
        "  output.weight                q8_0 for q4_0, q4_1, q5_0, q5_1; q6_k for the\n"
        "                               K types; else TYPE (logits need the precision)\n"
        "  other 2-D weights            TYPE, including token_embd.weight\n"
        "The K types are llama.cpp's recipes (llama-quantize without an importance\n"
        "matrix): besides output.weight (token_embd.weight if the model has no\n"
        "output.weight), they give more bits to\n"
        "  q4_k_m, q5_k_m   attn_v and ffn_down: q6_k in the first and last eighth of\n"
        "                   the layers and in every third layer between\n"
        "  q4_k_s           attn_v of layers 0-3, ffn_down of the first eighth: q5_k\n"
        "  q3_k_m           attn_v q5_k in layers 0-1, else q4_k; attn_output q4_k;\n"
        "                   ffn_down q5_k in the first sixteenth, else q4_k\n"
        "  q3_k_l           attn_v, attn_output, ffn_down: q5_k\n"
        "  q2_k             attn_v q4_k (q3_k if fewer than 4 heads share a KV head),\n"
        "                   attn_output and ffn_down q3_k\n"
        "A tensor whose row length is not a multiple of its type's block size falls\n"
        "back as llama.cpp's do: q2_k and q3_k to q4_0, q4_k to q5_0, q5_k to q5_1,\n"
        "q6_k and the other types to q8_0, and to f16 if the rows are not whole\n"
        "32-element blocks either; a note on stderr names each such tensor.\n"
        "\n"
        "options:\n"
        "  -t, --threads N   compute threads (default: one per core)\n"
        "  -h, --help        print this help and exit\n"
        "\n"
        "OUT must not be IN; an existing OUT is replaced atomically (written under a\n"
        "temporary name, then renamed).\n"
        "\n"
        "exit status: 0 ok, 1 runtime failure (unreadable or malformed input, write\n"
        "error), 2 usage error (bad arguments, unknown TYPE, OUT is IN).\n"
        "\n"
        "examples:\n"
        "  outpost quantize model-f16.gguf model-q4_0.gguf q4_0\n"
        "  outpost quantize model-f16.gguf model-q4_k_m.gguf q4_k_m\n",
        wrapped);
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t ls = strlen(s), lx = strlen(suffix);
    return ls >= lx && strcmp(s + ls - lx, suffix) == 0;
}

typedef struct dequant_ctx {
    const unsigned char *src;
    size_t row_bytes;
    qt_to_float_fn to_float;
} dequant_ctx;

static void dequant_row(void *vctx, int64_t row, float *dst, int64_t n)
{
    const dequant_ctx *c = vctx;
    c->to_float(c->src + (size_t)row * c->row_bytes, dst, n);
}

/* The plan for one tensor: its output type, and whether its bytes are a
 * straight copy of the input's. */
typedef struct plan {
    qt_type wanted; /* before the block-size fallback */
    qt_type type;
    bool copy;
    uint64_t size_bytes;
} plan;

static void plan_tensor(const gguf_tensor *t, const mtool_target *target,
                        const mtool_model_shape *shape, plan *pl)
{
    const qt_traits *src = qt_get((qt_type)t->type);
    qt_type want;
    if (!src || !src->to_float)
        want = (qt_type)t->type; /* integer or storage-only: nothing to convert */
    else if (t->n_dims == 1)
        want = QT_F32;
    else if (!ends_with(t->name, "weight"))
        want = (qt_type)t->type;
    else if (target->mixture)
        want = mtool_recipe_type(target, shape, t->name, t->ne[0]);
    else if (strcmp(t->name, "output.weight") == 0 && target->bits < 6)
        want = QT_Q8_0;
    else
        want = target->type;
    qt_type got = mtool_fit_type(want, t->ne[0]);
    pl->wanted = want;
    pl->type = got;
    pl->copy = got == (qt_type)t->type;
    uint64_t rows = (uint64_t)(t->ne[1] * t->ne[2] * t->ne[3]);
    pl->size_bytes = rows * qt_row_bytes(got, t->ne[0]);
}

/* Drop the input's pages of a tensor we are done with. They are clean pages
 * of a read-only file mapping, so the kernel could reclaim them anyway, but
 * without this the whole input counts in our RSS by the end, which on a
 * small device looks like (and competes like) a model-sized allocation. */
static void release_pages(const void *data, uint64_t size)
{
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t begin = ((uintptr_t)data + page - 1) & ~(page - 1);
    uintptr_t end = ((uintptr_t)data + (uintptr_t)size) & ~(page - 1);
    if (end > begin)
        madvise((void *)begin, end - begin, MADV_DONTNEED);
}

static bool same_file(const char *a, const char *b)
{
    struct stat sa, sb;
    if (stat(a, &sa) != 0 || stat(b, &sb) != 0)
        return false;
    return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

static void print_shape(char *buf, size_t cap, const gguf_tensor *t)
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

int cmd_quantize(int argc, char **argv)
{
    static const struct option opts[] = {
        {"threads", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    long n_threads = 0;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "t:h", opts, NULL)) != -1) {
        switch (c) {
        case 't':
            if (!cli_parse_long(CMD, "--threads", optarg, 1, 1024, &n_threads))
                return CLI_USAGE;
            break;
        case 'h':
            usage(stdout);
            return CLI_OK;
        default:
            fprintf(stderr, "outpost %s: see 'outpost quantize --help'\n", CMD);
            return CLI_USAGE;
        }
    }
    if (argc - optind != 3) {
        cli_error(CMD, "expected IN OUT TYPE, got %d argument%s (see 'outpost quantize --help')",
                  argc - optind, argc - optind == 1 ? "" : "s");
        return CLI_USAGE;
    }
    const char *in_path = argv[optind], *out_path = argv[optind + 1];
    const mtool_target *target = mtool_target_parse(CMD, argv[optind + 2]);
    if (!target)
        return CLI_USAGE;
    if (strcmp(in_path, out_path) == 0 || same_file(in_path, out_path)) {
        cli_error(CMD, "%s: refusing to overwrite the input file; name another OUT", out_path);
        return CLI_USAGE;
    }

    double t0 = cli_now();
    char err[256];
    int rc = CLI_FAIL;
    gguf *in = NULL;
    gguf_writer *w = NULL;
    pool *p = NULL;
    plan *plans = NULL;
    unsigned char *buf = NULL;

    if (gguf_open(&in, in_path, err) != 0) {
        cli_error(CMD, "%s", err);
        goto done;
    }
    size_t n_tensors = gguf_tensor_count(in);
    plans = calloc(n_tensors ? n_tensors : 1, sizeof *plans);
    w = gguf_writer_new();
    if (!plans || !w) {
        cli_error(CMD, "%s: out of memory", out_path);
        goto done;
    }
    if (pool_new(&p, (int)n_threads, err) != 0) {
        cli_error(CMD, "%s", err);
        goto done;
    }

    /* Metadata: everything but the two keys that describe the weights'
     * types, which are set below to match what is written. */
    bool any_quantized = false;
    uint64_t max_bytes = 0;
    mtool_model_shape shape;
    model_shape(in, &shape);
    for (size_t i = 0; i < n_tensors; i++) {
        const gguf_tensor *t = gguf_tensor_at(in, i);
        plan_tensor(t, target, &shape, &plans[i]);
        const qt_traits *tr = qt_get(plans[i].type);
        any_quantized = any_quantized || (tr && tr->is_quantized);
        if (!plans[i].copy && plans[i].size_bytes > max_bytes)
            max_bytes = plans[i].size_bytes;
    }
    for (size_t i = 0; i < gguf_kv_count(in); i++) {
        const char *key = gguf_kv_key(in, i);
        if (strcmp(key, "general.file_type") == 0 ||
            strcmp(key, "general.quantization_version") == 0)
            continue;
        if (gguf_writer_set(w, key, gguf_kv_value(in, i)) != 0) {
            cli_error(CMD, "%s: metadata key '%s' could not be copied", in_path, key);
            goto done;
        }
    }
    /* Version 2 of ggml's quantization formats: the block layouts in use
     * since 2023, the ones quant.h implements. */
    if (gguf_writer_set_u32(w, "general.file_type", target->ftype) != 0 ||
        (any_quantized && gguf_writer_set_u32(w, "general.quantization_version", 2) != 0)) {
        cli_error(CMD, "%s: out of memory", out_path);
        goto done;
    }
    for (size_t i = 0; i < n_tensors; i++) {
        const gguf_tensor *t = gguf_tensor_at(in, i);
        if (gguf_writer_add_tensor(w, t->name, t->n_dims, t->ne, plans[i].type, err) < 0) {
            cli_error(CMD, "%s: %s", out_path, err);
            goto done;
        }
    }
    if (max_bytes > 0 && !(buf = malloc((size_t)max_bytes))) {
        cli_error(CMD, "out of memory for a %" PRIu64 "-byte tensor", max_bytes);
        goto done;
    }
    if (gguf_writer_begin(w, out_path, err) != 0) {
        cli_error(CMD, "%s", err);
        goto done;
    }
    printf("quantizing %s -> %s as %s with %d thread%s\n", in_path, out_path, target->name,
           pool_threads(p), pool_threads(p) == 1 ? "" : "s");
    uint64_t in_bytes = 0, out_bytes = 0;
    for (size_t i = 0; i < n_tensors; i++) {
        const gguf_tensor *t = gguf_tensor_at(in, i);
        const void *data = t->data;
        if (!plans[i].copy) {
            const qt_traits *src = qt_get((qt_type)t->type);
            dequant_ctx dc = {t->data, qt_row_bytes((qt_type)t->type, t->ne[0]), src->to_float};
            int64_t rows = t->ne[1] * t->ne[2] * t->ne[3];
            if (mtool_convert(p, dequant_row, &dc, rows, t->ne[0], plans[i].type, buf, err) != 0) {
                cli_error(CMD, "%s: tensor %s: %s", in_path, t->name, err);
                goto done;
            }
            data = buf;
        }
        if (gguf_writer_write_tensor(w, data, plans[i].size_bytes, err) != 0) {
            cli_error(CMD, "%s", err);
            goto done;
        }
        release_pages(t->data, t->size_bytes);
        char shape[64], sb[32], db[32];
        print_shape(shape, sizeof shape, t);
        mtool_format_bytes(t->size_bytes, sb);
        mtool_format_bytes(plans[i].size_bytes, db);
        printf("[%4zu/%4zu] %-32s %-14s %5s -> %-5s %10s -> %s\n", i + 1, n_tensors, t->name,
               shape, qt_type_name((qt_type)t->type), qt_type_name(plans[i].type), sb, db);
        if (plans[i].type != plans[i].wanted)
            mtool_note_fallback(t->name, t->ne[0], plans[i].wanted, plans[i].type);
        in_bytes += t->size_bytes;
        out_bytes += plans[i].size_bytes;
    }
    if (gguf_writer_finish(w, err) != 0) {
        cli_error(CMD, "%s", err);
        goto done;
    }

    struct stat st;
    if (stat(out_path, &st) != 0) {
        cli_error(CMD, "%s: cannot stat the written file: %s", out_path, strerror(errno));
        goto done;
    }
    uint64_t before = gguf_file_size(in), after = (uint64_t)st.st_size;
    char tb[32], tab[32];
    mtool_format_bytes(in_bytes, tb);
    mtool_format_bytes(out_bytes, tab);
    printf("tensor data: %s -> %s\n", tb, tab);
    /* Both sizes in the unit that suits the larger, so they compare at a glance. */
    double unit = 1024.0;
    const char *unit_name = "KiB";
    if (before >= (1u << 30)) {
        unit = 1073741824.0;
        unit_name = "GiB";
    } else if (before >= (1u << 20)) {
        unit = 1048576.0;
        unit_name = "MiB";
    }
    printf("file size: %.2f %s -> %.2f %s ", (double)before / unit, unit_name,
           (double)after / unit, unit_name);
    if (after <= before)
        printf("(%.1fx smaller, %.1f%% reduction)\n", (double)before / (double)after,
               100.0 * (1.0 - (double)after / (double)before));
    else
        printf("(%.1fx larger, %.1f%% increase)\n", (double)after / (double)before,
               100.0 * ((double)after / (double)before - 1.0));
    printf("wrote %s (%s) in %.2f s\n", out_path, target->name, cli_now() - t0);
    rc = CLI_OK;

done:
    free(buf);
    free(plans);
    gguf_writer_free(w);
    pool_free(p);
    gguf_close(in);
    return rc;
}
