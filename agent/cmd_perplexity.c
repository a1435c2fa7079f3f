/*
 * cmd_perplexity.c - `outpost perplexity`: how well a model predicts a text.
 *
 * The method is llama.cpp's perplexity tool, so figures compare: the whole
 * text is tokenized once (with BOS when the vocabulary adds one) and cut into
 * floor(n_tokens / CTX) chunks of CTX tokens; each chunk starts afresh with
 * an empty cache and its first token replaced by BOS; only the predictions of
 * the second half of each chunk are scored (the first half gives every
 * scored token at least CTX/2 tokens of context).
 * PPL = exp(mean negative log-likelihood) over the scored tokens.
 */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "engine.h"

static const char usage_text[] =
    "usage: outpost perplexity -m MODEL -f TEXT [-c CTX] [-t THREADS] [--chunks N]\n"
    "\n"
    "Measure the model's perplexity on a text file with llama.cpp's method: the\n"
    "text is tokenized once (with BOS), cut into chunks of CTX tokens that each\n"
    "start with BOS, and the second half of every chunk is scored. Prints\n"
    "running estimates per chunk on stderr and 'PPL = <value>' on stdout.\n"
    "\n"
    "  -m, --model FILE    GGUF model\n"
    "  -f, --file FILE     text to score ('-' for stdin)\n"
    "  -c, --ctx-size N    tokens per chunk (default 512)\n"
    "  -t, --threads N     compute threads (default: online cores)\n"
    "      --chunks N      score at most N chunks (default: all)\n"
    "  -h, --help          this text\n"
    "\n"
    "Exit status: 0 ok, 1 runtime failure (e.g. a text shorter than two chunks'\n"
    "worth of context), 2 usage error.\n";

enum { OPT_CHUNKS = 256 };
static const struct option long_opts[] = {
    {"model", required_argument, NULL, 'm'},
    {"file", required_argument, NULL, 'f'},
    {"ctx-size", required_argument, NULL, 'c'},
    {"threads", required_argument, NULL, 't'},
    {"chunks", required_argument, NULL, OPT_CHUNKS},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

/* -log softmax(logits)[target], in double for a stable sum. */
static double nll(const float *logits, int32_t n_vocab, int32_t target)
{
    float max = logits[0];
    for (int32_t i = 1; i < n_vocab; i++)
        if (logits[i] > max)
            max = logits[i];
    double sum = 0.0;
    for (int32_t i = 0; i < n_vocab; i++)
        sum += exp((double)(logits[i] - max));
    return log(sum) - (double)(logits[target] - max);
}

int cmd_perplexity(int argc, char **argv)
{
    const char *cmd = "perplexity", *model_path = NULL, *text_path = NULL;
    long n_ctx = 512, n_threads = 0, max_chunks = -1;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":m:f:c:t:h", long_opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_path = optarg; break;
        case 'f': text_path = optarg; break;
        case 'c': if (!cli_parse_long(cmd, "-c", optarg, 4, 1 << 20, &n_ctx)) return CLI_USAGE; break;
        case 't': if (!cli_parse_long(cmd, "-t", optarg, 0, 512, &n_threads)) return CLI_USAGE; break;
        case OPT_CHUNKS: if (!cli_parse_long(cmd, "--chunks", optarg, 1, 1 << 30, &max_chunks)) return CLI_USAGE; break;
        case 'h': fputs(usage_text, stdout); return CLI_OK;
        default: return cli_bad_option(cmd, argv, c);
        }
    }
    if (optind < argc) {
        cli_error(cmd, "unexpected argument '%s'", argv[optind]);
        return CLI_USAGE;
    }
    if (!model_path || !text_path) {
        cli_error(cmd, "a model (-m) and a text file (-f) are required");
        return CLI_USAGE;
    }

    int status = CLI_FAIL;
    char err[256];
    eng_model *m = NULL;
    eng_ctx *ctx = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0, len;
    char *text = cli_read_file(cmd, text_path, &len);
    if (!text)
        return CLI_FAIL;
    if (eng_model_open(&m, model_path, err)) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    const tok *tk = eng_model_tok(m);
    const int32_t n_vocab = eng_model_hparams(m)->n_vocab;
    const bool add_bos = tok_add_bos_default(tk) && tok_bos(tk) >= 0;
    if (tok_encode(tk, text, len, add_bos ? TOK_ADD_BOS : 0, &ids, &n_ids, err)) {
        cli_error(cmd, "%s: %s", text_path, err);
        goto done;
    }
    long n_chunks = (long)(n_ids / (size_t)n_ctx);
    if (max_chunks > 0 && max_chunks < n_chunks)
        n_chunks = max_chunks;
    if (n_chunks < 1) {
        cli_error(cmd, "%s: %zu tokens are fewer than one chunk of %ld (lower -c)", text_path,
                  n_ids, n_ctx);
        goto done;
    }
    eng_ctx_params cp = eng_ctx_params_default();
    cp.n_ctx = (int32_t)n_ctx;
    cp.n_batch = (int32_t)n_ctx;
    cp.n_threads = (int32_t)n_threads;
    if (eng_ctx_new(&ctx, m, &cp, err)) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    fprintf(stderr, "outpost perplexity: %zu tokens, %ld chunks of %ld, scoring the last %ld of each\n",
            n_ids, n_chunks, n_ctx, n_ctx - n_ctx / 2 - 1);

    const int32_t first = (int32_t)(n_ctx / 2);
    double sum_nll = 0.0, sum_nll2 = 0.0;
    long count = 0;
    int32_t *chunk = malloc((size_t)n_ctx * sizeof *chunk);
    if (!chunk) {
        cli_error(cmd, "out of memory");
        goto done;
    }
    double t0 = cli_now();
    for (long ci = 0; ci < n_chunks; ci++) {
        const int32_t *src = ids + ci * n_ctx;
        memcpy(chunk, src, (size_t)n_ctx * sizeof *chunk);
        if (add_bos)
            chunk[0] = tok_bos(tk);
        eng_kv_truncate(ctx, 0);
        if (eng_eval(ctx, chunk, (int32_t)n_ctx, true, err)) {
            cli_error(cmd, "chunk %ld: %s", ci + 1, err);
            free(chunk);
            goto done;
        }
        for (int32_t j = first; j < n_ctx - 1; j++) {
            double v = nll(eng_logits(ctx, j), n_vocab, src[j + 1]);
            sum_nll += v;
            sum_nll2 += v * v;
            count++;
        }
        fprintf(stderr, "[%ld]%.4f%s", ci + 1, exp(sum_nll / (double)count),
                ci + 1 < n_chunks ? "," : "\n");
    }
    free(chunk);
    double mean = sum_nll / (double)count;
    double var = sum_nll2 / (double)count - mean * mean;
    double ppl = exp(mean);
    double ppl_err = count > 1 && var > 0 ? ppl * sqrt(var / (double)(count - 1)) : 0.0;
    fprintf(stderr, "outpost perplexity: %ld tokens scored in %.2f s, estimate +/- %.4f\n", count,
            cli_now() - t0, ppl_err);
    printf("PPL = %.4f\n", ppl);
    status = CLI_OK;
done:
    free(ids);
    free(text);
    eng_ctx_free(ctx);
    eng_model_close(m);
    return status;
}
