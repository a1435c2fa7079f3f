/*
 * cli.h - what the outpost subcommands share: the command table, number
 * parsing with range checks, and the one-line error convention.
 *
 * Every command is `int cmd_x(int argc, char **argv)` with argv[0] the
 * command's own name, parses its flags with getopt_long, and returns the
 * process exit code: 0 ok, 1 runtime failure, 2 usage error. Errors are one
 * line on stderr, "outpost CMD: what was wrong", naming the file, field or
 * value at fault. `--help` prints the command's usage on stdout and exits 0.
 */
#ifndef OUTPOST_CLI_H
#define OUTPOST_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CLI_OK 0
#define CLI_FAIL 1
#define CLI_USAGE 2

int cmd_run(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);
int cmd_perplexity(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_model(int argc, char **argv); /* model info | model synth */
int cmd_policy(int argc, char **argv); /* policy test | policy reload */
int cmd_serve(int argc, char **argv);
int cmd_chat(int argc, char **argv);
int cmd_status(int argc, char **argv);
int cmd_ota(int argc, char **argv); /* ota keygen | sign | verify | diff | patch | manifest */
int cmd_fleet(int argc, char **argv); /* fleet cmd (and the OTA senders) */
/* `outpost fleet publish` and `outpost fleet adapter` (cmd_fleet_publish.c),
 * argv[0] the subcommand: rows of cmd_fleet's subcommand table. */
int fleet_publish_main(int argc, char **argv);
int fleet_adapter_main(int argc, char **argv);
/* `outpost policy reload`: ask the running agent (cmd_client.c). */
int cmd_policy_reload(int argc, char **argv);

/* After getopt_long returned '?' or ':' (optstrings start with ':' and opterr
 * is 0): one line naming the bad option; returns CLI_USAGE. */
int cli_bad_option(const char *cmd, char **argv, int ret);

/* Print "outpost <cmd>: <message>" on stderr. */
void cli_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Parse the whole of s as a number within [lo, hi]; false (with an error
 * naming flag and value printed for cmd) otherwise. */
bool cli_parse_long(const char *cmd, const char *flag, const char *s, long lo, long hi,
                    long *out);
bool cli_parse_u64(const char *cmd, const char *flag, const char *s, uint64_t *out);
bool cli_parse_float(const char *cmd, const char *flag, const char *s, double lo, double hi,
                     float *out);

/* Read a whole file (or stdin for "-") into a malloc'd NUL-terminated buffer. */
char *cli_read_file(const char *cmd, const char *path, size_t *len);

/* The password of a minisign secret key: the first line of `file` when
 * given (--password-file), else OUTPOST_OTA_PASSWORD, else NULL. malloc'd:
 * sodium_memzero + free it. *bad is set (and the error printed) when the
 * file cannot be read or memory runs out. */
char *cli_seckey_password(const char *cmd, const char *file, bool *bad);

/* Monotonic clock in seconds. */
double cli_now(void);

/* Whether this process is the outpost binary of the build tree it was built
 * in (<OUTPOST_BUILD_DIR>/agent/outpost): then the agent and the client
 * commands load the plugins and modules built beside it rather than the
 * installed ones. false in a binary built without OUTPOST_BUILD_DIR. */
bool cli_in_build_tree(void);

#endif
