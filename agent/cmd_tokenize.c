/*
 * cmd_tokenize.c - `outpost tokenize` and `outpost detokenize`: the model's
 * tokenizer on stdin/stdout, exactly as the tokenizer contract states: input
 * bytes are taken as given (no newline added or stripped), ids are printed
 * on one line separated by single spaces.
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "engine.h"

static const char tokenize_usage[] =
    "usage: outpost tokenize -m MODEL [--bos] [--special] < TEXT\n"
    "\n"
    "Read UTF-8 text on stdin exactly as given and print its token ids, separated\n"
    "by single spaces, on one line.\n"
    "\n"
    "  -m, --model FILE   GGUF model (or vocabulary-only GGUF) whose tokenizer to use\n"
    "      --bos          prepend the BOS token\n"
    "      --special      match control-token text (e.g. <s>) as those tokens;\n"
    "                     by default it is tokenized as plain text\n"
    "  -h, --help         this text\n"
    "\n"
    "Exit status: 0 ok, 1 runtime failure, 2 usage error.\n";

static const char detokenize_usage[] =
    "usage: outpost detokenize -m MODEL [--special] < IDS\n"
    "\n"
    "Read token ids (separated by white space) on stdin and print their text,\n"
    "the inverse of 'outpost tokenize': BOS/EOS are dropped and the leading space\n"
    "a SentencePiece tokenizer adds is removed. Nothing is added at the end.\n"
    "\n"
    "  -m, --model FILE   GGUF model whose tokenizer to use\n"
    "      --special      print control tokens' text instead of dropping it\n"
    "  -h, --help         this text\n"
    "\n"
    "Exit status: 0 ok, 1 runtime failure (e.g. an id outside the vocabulary),\n"
    "2 usage error.\n";

enum { OPT_BOS = 256, OPT_SPECIAL };
static const struct option long_opts[] = {
    {"model", required_argument, NULL, 'm'},
    {"bos", no_argument, NULL, OPT_BOS},
    {"special", no_argument, NULL, OPT_SPECIAL},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

/* The tokenizer alone: vocabulary-only GGUF files have no weights. */
static tok *open_tok(const char *cmd, const char *path, gguf **g)
{
    char err[256];
    tok *t = NULL;
    if (gguf_open(g, path, err)) {
        cli_error(cmd, "%s", err);
        return NULL;
    }
    if (tok_open_gguf(&t, *g, err)) {
        cli_error(cmd, "%s: tokenizer: %s", path, err);
        gguf_close(*g);
        *g = NULL;
        return NULL;
    }
    return t;
}

static int parse_args(const char *cmd, const char *usage, int argc, char **argv,
                      const char **model, bool *bos, bool *special, bool allow_bos)
{
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":m:h", long_opts, NULL)) != -1) {
        switch (c) {
        case 'm': *model = optarg; break;
        case OPT_BOS:
            if (!allow_bos) {
                cli_error(cmd, "--bos is a tokenize option");
                return CLI_USAGE;
            }
            *bos = true;
            break;
        case OPT_SPECIAL: *special = true; break;
        case 'h': fputs(usage, stdout); return -1;
        default: return cli_bad_option(cmd, argv, c);
        }
    }
    if (optind < argc) {
        cli_error(cmd, "unexpected argument '%s'", argv[optind]);
        return CLI_USAGE;
    }
    if (!*model) {
        cli_error(cmd, "a model is required (-m MODEL)");
        return CLI_USAGE;
    }
    return CLI_OK;
}

int cmd_tokenize(int argc, char **argv)
{
    const char *cmd = "tokenize", *model = NULL;
    bool bos = false, special = false;
    int rc = parse_args(cmd, tokenize_usage, argc, argv, &model, &bos, &special, true);
    if (rc)
        return rc < 0 ? CLI_OK : rc;
    gguf *g = NULL;
    tok *t = open_tok(cmd, model, &g);
    if (!t)
        return CLI_FAIL;
    int status = CLI_FAIL;
    size_t len, n = 0;
    int32_t *ids = NULL;
    char err[256];
    char *text = cli_read_file(cmd, "-", &len);
    if (!text)
        goto done;
    unsigned flags = (bos ? TOK_ADD_BOS : 0) | (special ? TOK_PARSE_SPECIAL : 0);
    if (tok_encode(t, text, len, flags, &ids, &n, err)) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    for (size_t i = 0; i < n; i++)
        printf(i ? " %d" : "%d", ids[i]);
    putchar('\n');
    status = fflush(stdout) == 0 ? CLI_OK : CLI_FAIL;
done:
    free(ids);
    free(text);
    tok_free(t);
    gguf_close(g);
    return status;
}

int cmd_detokenize(int argc, char **argv)
{
    const char *cmd = "detokenize", *model = NULL;
    bool bos = false, special = false;
    int rc = parse_args(cmd, detokenize_usage, argc, argv, &model, &bos, &special, false);
    if (rc)
        return rc < 0 ? CLI_OK : rc;
    gguf *g = NULL;
    tok *t = open_tok(cmd, model, &g);
    if (!t)
        return CLI_FAIL;
    int status = CLI_FAIL;
    size_t len, n = 0, cap = 0;
    int32_t *ids = NULL;
    char *out = NULL, err[256];
    char *text = cli_read_file(cmd, "-", &len);
    if (!text)
        goto done;
    for (char *p = text;;) {
        while (isspace((unsigned char)*p))
            p++;
        if (!*p)
            break;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v >= tok_n_vocab(t) ||
            (*end && !isspace((unsigned char)*end))) {
            int w = 0;
            while (p[w] && !isspace((unsigned char)p[w]) && w < 40)
                w++;
            cli_error(cmd, "'%.*s' is not a token id of this vocabulary (0..%d)", w, p,
                      tok_n_vocab(t) - 1);
            goto done;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 256;
            int32_t *ni = realloc(ids, cap * sizeof *ids);
            if (!ni) {
                cli_error(cmd, "out of memory");
                goto done;
            }
            ids = ni;
        }
        ids[n++] = (int32_t)v;
        p = end;
    }
    size_t out_len;
    if (tok_decode(t, ids, n, special, &out, &out_len, err)) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    fwrite(out, 1, out_len, stdout);
    status = fflush(stdout) == 0 ? CLI_OK : CLI_FAIL;
done:
    free(out);
    free(ids);
    free(text);
    tok_free(t);
    gguf_close(g);
    return status;
}
