/*
 * cmd_run.c - `outpost run`: generate a continuation of a prompt locally.
 *
 * The prompt is tokenized (BOS as the vocabulary asks, control-token text
 * parsed), evaluated as one batch, then tokens are sampled one at a time and
 * printed as they come (the prompt too with --echo). Generation ends after -n
 * tokens, at an end-of-generation token, or when the context is full: then
 * either the run stops with a message (the default), or with --context-shift
 * the first --keep tokens stay and half of the rest is dropped, as llama.cpp
 * does, so generation can go on.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "engine.h"
#include "sample.h"

static const char usage_text[] =
    "usage: outpost run -m MODEL [-p TEXT | -f FILE] [options]\n"
    "\n"
    "Generate a continuation of a prompt with a local GGUF model and print it on\n"
    "stdout as it is generated; timings go to stderr.\n"
    "\n"
    "  -m, --model FILE        GGUF model to run (required)\n"
    "  -p, --prompt TEXT       the prompt\n"
    "  -f, --file FILE         read the prompt from FILE ('-' for stdin)\n"
    "  -n, --n-predict N       tokens to generate; -1 until end of text (default 128)\n"
    "  -c, --ctx-size N        context positions (default: the model's, at most 4096)\n"
    "  -t, --threads N         compute threads (default: online cores)\n"
    "  -b, --batch-size N      prompt tokens per forward pass (default 512)\n"
    "      --temp T            temperature; 0 is greedy (default 0.8)\n"
    "      --top-k K           keep the K most likely tokens; 0 is off (default 40)\n"
    "      --top-p P           nucleus sampling; 1 is off (default 0.95)\n"
    "      --min-p P           drop tokens below P x the top probability (default 0.05)\n"
    "      --repeat-penalty R  penalise repeats of the last 64 tokens; 1 is off (default 1)\n"
    "      --repeat-last-n N   how many tokens the penalty looks back (default 64)\n"
    "      --seed S            sampling seed (default: random)\n"
    "      --ctk TYPE          KV cache type: f16 (default) or q8_0 (half the memory)\n"
    "      --ctv TYPE          the same for V; must match --ctk\n"
    "      --echo              print the prompt before the continuation\n"
    "      --context-shift     when the context fills, drop old tokens and go on\n"
    "                          (default: stop with a message)\n"
    "      --keep N            tokens from the start kept by a context shift (default 0;\n"
    "                          BOS is always kept)\n"
    "      --ignore-eos        go on past end-of-text tokens\n"
    "      --lora FILE[:SCALE] apply a LoRA adapter (GGUF) with a scale (default 1);\n"
    "                          repeat for up to 8 adapters\n"
    "  -h, --help              this text\n"
    "\n"
    "Exit status: 0 ok, 1 runtime failure, 2 usage error.\n";

enum {
    OPT_TEMP = 256, OPT_TOPK, OPT_TOPP, OPT_MINP, OPT_REPPEN, OPT_REPN, OPT_SEED, OPT_CTK,
    OPT_CTV, OPT_ECHO, OPT_SHIFT, OPT_KEEP, OPT_IGNORE_EOS, OPT_LORA,
};

static const struct option long_opts[] = {
    {"model", required_argument, NULL, 'm'},
    {"prompt", required_argument, NULL, 'p'},
    {"file", required_argument, NULL, 'f'},
    {"n-predict", required_argument, NULL, 'n'},
    {"ctx-size", required_argument, NULL, 'c'},
    {"threads", required_argument, NULL, 't'},
    {"batch-size", required_argument, NULL, 'b'},
    {"temp", required_argument, NULL, OPT_TEMP},
    {"top-k", required_argument, NULL, OPT_TOPK},
    {"top-p", required_argument, NULL, OPT_TOPP},
    {"min-p", required_argument, NULL, OPT_MINP},
    {"repeat-penalty", required_argument, NULL, OPT_REPPEN},
    {"repeat-last-n", required_argument, NULL, OPT_REPN},
    {"seed", required_argument, NULL, OPT_SEED},
    {"ctk", required_argument, NULL, OPT_CTK},
    {"ctv", required_argument, NULL, OPT_CTV},
    {"echo", no_argument, NULL, OPT_ECHO},
    {"context-shift", no_argument, NULL, OPT_SHIFT},
    {"keep", required_argument, NULL, OPT_KEEP},
    {"ignore-eos", no_argument, NULL, OPT_IGNORE_EOS},
    {"lora", required_argument, NULL, OPT_LORA},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

/* "FILE" or "FILE:SCALE": the scale is what follows the last ':' when that
 * parses as a number (so paths with colons still work without a scale). */
static bool parse_lora_arg(const char *cmd, char *arg, const char **path, float *scale)
{
    *path = arg;
    *scale = 1.0f;
    char *colon = strrchr(arg, ':');
    if (!colon)
        return true;
    char *end;
    double v = strtod(colon + 1, &end);
    if (end == colon + 1 || *end != '\0')
        return true;
    if (!(v >= -100.0 && v <= 100.0)) {
        cli_error(cmd, "--lora: scale '%s' is not a number in -100..100", colon + 1);
        return false;
    }
    *colon = '\0';
    *scale = (float)v;
    return true;
}

static void print_piece(const tok *tk, int32_t id)
{
    char buf[256];
    int n = tok_piece(tk, id, false, buf, sizeof buf);
    if (n > (int)sizeof buf) {
        char *big = malloc((size_t)n);
        if (big && tok_piece(tk, id, false, big, (size_t)n) == n)
            fwrite(big, 1, (size_t)n, stdout);
        free(big);
    } else if (n > 0) {
        fwrite(buf, 1, (size_t)n, stdout);
    }
}

int cmd_run(int argc, char **argv)
{
    const char *cmd = "run", *model_path = NULL, *prompt = NULL, *prompt_file = NULL;
    long n_predict = 128, n_ctx = 0, n_threads = 0, n_batch = 512, keep = 0;
    bool echo = false, shift = false, ignore_eos = false, seed_set = false;
    smp_params sp = smp_params_default();
    eng_ctx_params cp = eng_ctx_params_default();
    int ctv = -1;
    long v;
    const char *lora_paths[ENG_MAX_LORAS];
    float lora_scales[ENG_MAX_LORAS];
    int n_lora = 0;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":m:p:f:n:c:t:b:h", long_opts, NULL)) != -1) {
        switch (c) {
        case 'm': model_path = optarg; break;
        case 'p': prompt = optarg; break;
        case 'f': prompt_file = optarg; break;
        case 'n': if (!cli_parse_long(cmd, "-n", optarg, -1, 1 << 24, &n_predict)) return CLI_USAGE; break;
        case 'c': if (!cli_parse_long(cmd, "-c", optarg, 0, 1 << 22, &n_ctx)) return CLI_USAGE; break;
        case 't': if (!cli_parse_long(cmd, "-t", optarg, 0, 512, &n_threads)) return CLI_USAGE; break;
        case 'b': if (!cli_parse_long(cmd, "-b", optarg, 1, 1 << 16, &n_batch)) return CLI_USAGE; break;
        case OPT_TEMP: if (!cli_parse_float(cmd, "--temp", optarg, 0, 100, &sp.temp)) return CLI_USAGE; break;
        case OPT_TOPK: if (!cli_parse_long(cmd, "--top-k", optarg, 0, 1 << 24, &v)) return CLI_USAGE; sp.top_k = (int32_t)v; break;
        case OPT_TOPP: if (!cli_parse_float(cmd, "--top-p", optarg, 0, 1, &sp.top_p)) return CLI_USAGE; break;
        case OPT_MINP: if (!cli_parse_float(cmd, "--min-p", optarg, 0, 1, &sp.min_p)) return CLI_USAGE; break;
        case OPT_REPPEN: if (!cli_parse_float(cmd, "--repeat-penalty", optarg, 0.01, 100, &sp.repeat_penalty)) return CLI_USAGE; break;
        case OPT_REPN: if (!cli_parse_long(cmd, "--repeat-last-n", optarg, 0, 1 << 20, &v)) return CLI_USAGE; sp.repeat_last_n = (int32_t)v; break;
        case OPT_SEED: if (!cli_parse_u64(cmd, "--seed", optarg, &sp.seed)) return CLI_USAGE; seed_set = true; break;
        case OPT_CTK:
        case OPT_CTV: {
            int t = qt_type_from_name(optarg);
            if (t != QT_F16 && t != QT_Q8_0) {
                cli_error(cmd, "%s: KV cache type '%s' is not supported (f16, q8_0)",
                          c == OPT_CTK ? "--ctk" : "--ctv", optarg);
                return CLI_USAGE;
            }
            if (c == OPT_CTK)
                cp.kv_type = (qt_type)t;
            else
                ctv = t;
            break;
        }
        case OPT_ECHO: echo = true; break;
        case OPT_SHIFT: shift = true; break;
        case OPT_KEEP: if (!cli_parse_long(cmd, "--keep", optarg, 0, 1 << 22, &keep)) return CLI_USAGE; break;
        case OPT_IGNORE_EOS: ignore_eos = true; break;
        case OPT_LORA:
            if (n_lora == ENG_MAX_LORAS) {
                cli_error(cmd, "--lora: at most %d adapters", ENG_MAX_LORAS);
                return CLI_USAGE;
            }
            if (!parse_lora_arg(cmd, optarg, &lora_paths[n_lora], &lora_scales[n_lora]))
                return CLI_USAGE;
            n_lora++;
            break;
        case 'h': fputs(usage_text, stdout); return CLI_OK;
        default: return cli_bad_option(cmd, argv, c);
        }
    }
    if (optind < argc) {
        cli_error(cmd, "unexpected argument '%s'", argv[optind]);
        return CLI_USAGE;
    }
    if (!model_path) {
        cli_error(cmd, "a model is required (-m MODEL)");
        return CLI_USAGE;
    }
    if (prompt && prompt_file) {
        cli_error(cmd, "give the prompt with -p or -f, not both");
        return CLI_USAGE;
    }
    if (ctv >= 0 && (qt_type)ctv != cp.kv_type) {
        cli_error(cmd, "--ctv must match --ctk");
        return CLI_USAGE;
    }
    if (!seed_set)
        sp.seed = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);

    int status = CLI_FAIL;
    char err[256];
    char *file_text = NULL;
    eng_model *m = NULL;
    eng_ctx *ctx = NULL;
    smp *sampler = NULL;
    eng_lora *loras[ENG_MAX_LORAS] = {0};
    int32_t *ids = NULL;
    size_t n_ids = 0;
    if (prompt_file) {
        size_t len;
        if (!(file_text = cli_read_file(cmd, prompt_file, &len)))
            goto done;
        prompt = file_text;
    }
    if (!prompt)
        prompt = "";

    double t_load = cli_now();
    if (eng_model_open(&m, model_path, err)) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    const eng_hparams *hp = eng_model_hparams(m);
    const tok *tk = eng_model_tok(m);
    cp.n_ctx = (int32_t)(n_ctx > 0 ? n_ctx : (hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096));
    cp.n_threads = (int32_t)n_threads;
    cp.n_batch = (int32_t)n_batch;
    if (eng_ctx_new(&ctx, m, &cp, err)) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    for (int i = 0; i < n_lora; i++) {
        if (eng_lora_open(&loras[i], m, lora_paths[i], err)) {
            cli_error(cmd, "%s", err);
            goto done;
        }
    }
    if (n_lora > 0 &&
        eng_ctx_set_loras(ctx, (const eng_lora *const *)loras, lora_scales, n_lora, err)) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    if (smp_new(&sampler, &sp, hp->n_vocab, err)) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    unsigned flags = TOK_PARSE_SPECIAL | (tok_add_bos_default(tk) ? TOK_ADD_BOS : 0);
    if (tok_encode(tk, prompt, strlen(prompt), flags, &ids, &n_ids, err)) {
        cli_error(cmd, "prompt: %s", err);
        goto done;
    }
    if (n_ids == 0) {
        cli_error(cmd, "the prompt is empty and the model has no BOS token to start from");
        goto done;
    }
    if ((long)n_ids > eng_n_ctx(ctx)) {
        cli_error(cmd, "the prompt is %zu tokens, longer than the context of %d (raise -c)",
                  n_ids, eng_n_ctx(ctx));
        goto done;
    }
    t_load = cli_now() - t_load;

    if (echo) {
        for (size_t i = 0; i < n_ids; i++)
            print_piece(tk, ids[i]);
        fflush(stdout);
    }
    for (size_t i = 0; i < n_ids; i++)
        smp_accept(sampler, ids[i]);

    double t0 = cli_now();
    if (eng_eval(ctx, ids, (int32_t)n_ids, false, err)) {
        cli_error(cmd, "prompt: %s", err);
        goto done;
    }
    double t_prompt = cli_now() - t0;
    const bool has_bos = (flags & TOK_ADD_BOS) && ids[0] == tok_bos(tk);
    const int32_t n_keep = (int32_t)keep + (has_bos ? 1 : 0);

    long generated = 0;
    double t1 = cli_now();
    while (n_predict < 0 || generated < n_predict) {
        int32_t next = smp_sample(sampler, eng_logits(ctx, -1));
        if (!ignore_eos && tok_is_eog(tk, next))
            break;
        print_piece(tk, next);
        fflush(stdout);
        smp_accept(sampler, next);
        generated++;
        if (n_predict >= 0 && generated >= n_predict)
            break;
        if (eng_n_past(ctx) >= eng_n_ctx(ctx)) {
            if (!shift) {
                fputc('\n', stdout);
                cli_error(cmd, "the context of %d tokens is full; stopped after %ld tokens "
                          "(raise -c, or use --context-shift)", eng_n_ctx(ctx), generated);
                status = CLI_OK;
                goto timings;
            }
            int32_t n_discard = (eng_n_past(ctx) - n_keep) / 2;
            if (n_keep >= eng_n_past(ctx) - 1 || n_discard < 1) {
                cli_error(cmd, "--keep %ld leaves nothing to drop from a full context of %d",
                          keep, eng_n_ctx(ctx));
                goto done;
            }
            if (eng_kv_shift(ctx, n_keep, n_discard, err)) {
                cli_error(cmd, "context shift: %s", err);
                goto done;
            }
        }
        if (eng_eval(ctx, &next, 1, false, err)) {
            cli_error(cmd, "%s", err);
            goto done;
        }
    }
    fputc('\n', stdout);
    status = CLI_OK;
timings:;
    double t_gen = cli_now() - t1;
    fprintf(stderr,
            "outpost run: load %.0f ms | prompt %zu tokens, %.1f tok/s | generated %ld tokens, %.1f tok/s\n",
            t_load * 1e3, n_ids, t_prompt > 0 ? (double)n_ids / t_prompt : 0.0, generated,
            t_gen > 0 ? (double)generated / t_gen : 0.0);
done:
    free(ids);
    smp_free(sampler);
    eng_ctx_free(ctx);
    for (int i = 0; i < n_lora; i++)
        eng_lora_close(loras[i]);
    eng_model_close(m);
    free(file_text);
    return status;
}
