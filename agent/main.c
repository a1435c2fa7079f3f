/*
 * main.c - the outpost binary: one program, many subcommands (git-style).
 *
 * The table below is the whole dispatch; each subcommand lives in its own
 * cmd_*.c file and owns its flags and usage text.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"

typedef struct command {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
} command;

static const command commands[] = {
    {"run", cmd_run, "generate text from a prompt with a local model"},
    {"tokenize", cmd_tokenize, "print the token ids of text read on stdin"},
    {"detokenize", cmd_detokenize, "print the text of token ids read on stdin"},
    {"perplexity", cmd_perplexity, "measure a model's perplexity on a text file"},
    {"bench", cmd_bench, "measure prefill/decode speed and memory bandwidth"},
    {"quantize", cmd_quantize, "convert a model's weights to another type"},
    {"model", cmd_model, "inspect (info) or make (synth) model files"},
    {"policy", cmd_policy, "try a routing policy on a request (test); reload it"},
    {"serve", cmd_serve, "run the agent: the OpenAI-compatible API on a socket"},
    {"chat", cmd_chat, "send a message to the running agent and print the reply"},
    {"status", cmd_status, "show whether the agent is up, its models and counters"},
    {"ota", cmd_ota, "make keys, sign and verify files (minisign format)"},
    {"fleet", cmd_fleet, "send signed commands to fleet devices over MQTT"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: outpost COMMAND [ARGS...]\n\n"
               "Outpost: an on-device LLM agent for edge fleets.\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-12s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\n'outpost COMMAND --help' describes one command.\n"
               "Exit codes: 0 ok, 1 runtime failure, 2 usage error.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return CLI_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return CLI_OK;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("outpost %s\n", OUTPOST_VERSION);
        return CLI_OK;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[1], commands[i].name) == 0)
            return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "outpost: unknown command '%s' (see 'outpost --help')\n", argv[1]);
    return CLI_USAGE;
}
