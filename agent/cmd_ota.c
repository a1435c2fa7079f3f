/*
 * cmd_ota.c - `outpost ota keygen|sign|verify`: minisign-compatible keys
 * and signatures from the command line (the formats live in ota_sign.c).
 *
 * The flags, defaults and outputs are minisign's, so scripts written for
 * one work with the other: -p ./minisign.pub, -s ~/.minisign/minisign.key
 * (or $MINISIGN_CONFIG_DIR/minisign.key), FILE.minisig, "Signature and
 * comment signature verified" / "Trusted comment: ...". Two deliberate
 * differences: keys are always written unencrypted (minisign -G -W; the
 * device signs nothing, and a build server keeps its key in a secret
 * store), and an encrypted key's password comes from --password-file or
 * OUTPOST_OTA_PASSWORD, never from a prompt.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "cli.h"
#include "ota_sign.h"

static const char usage_text[] =
    "usage: outpost ota keygen [-p PUBFILE] [-s SECFILE] [-f] [-W] [-q]\n"
    "       outpost ota sign [-s SECFILE] [-x SIGFILE] [-t COMMENT] [-c COMMENT] [-l] [-q]\n"
    "                        -m FILE [FILE...]\n"
    "       outpost ota verify [-p PUBFILE | -P PUBKEY] [-x SIGFILE] [-H] [-q | -Q] -m FILE\n"
    "\n"
    "Ed25519 keys and signatures in minisign's file formats: `minisign -V` accepts\n"
    "what `outpost ota sign` signs, and `outpost ota verify` (and the agent) accept\n"
    "what `minisign -S` signs. The flags are minisign's.\n"
    "\n"
    "keygen   make a key pair. The secret key is written unencrypted (as\n"
    "         `minisign -G -W` does), mode 0600; existing files are kept unless -f.\n"
    "sign     sign each FILE into FILE.minisig (or -x SIGFILE, for one FILE).\n"
    "         Signatures are prehashed (\"ED\": Ed25519 over the file's BLAKE2b-512,\n"
    "         minisign's default since 0.11; any file size in bounded memory) unless -l.\n"
    "verify   check FILE against its signature: the key id, the file's signature and\n"
    "         the trusted comment's. Prints \"Signature and comment signature\n"
    "         verified\" and \"Trusted comment: ...\" on stdout.\n"
    "\n"
    "  -p PUBFILE   public key file (default ./minisign.pub)\n"
    "  -P PUBKEY    public key given as its base64 line, instead of -p\n"
    "  -s SECFILE   secret key file (default $MINISIGN_CONFIG_DIR/minisign.key,\n"
    "               else ~/.minisign/minisign.key)\n"
    "  -m FILE      the file to sign or verify (sign: more FILEs may follow)\n"
    "  -x SIGFILE   signature file (default FILE.minisig)\n"
    "  -t COMMENT   trusted comment, one line, signed with the file (default\n"
    "               \"timestamp:<unix time>\\tfile:<base name>\\thashed\")\n"
    "  -c COMMENT   untrusted comment, one line (default \"signature from outpost\n"
    "               secret key\")\n"
    "  -l           sign in the legacy format (\"Ed\": Ed25519 over the whole file)\n"
    "  -H           verify: refuse legacy signatures\n"
    "  -f           keygen: overwrite existing key files\n"
    "  -W           keygen: accepted for minisign's sake (keys are never encrypted)\n"
    "  -q           quiet: print nothing on success\n"
    "  -Q           verify: print only the trusted comment\n"
    "  --password-file FILE\n"
    "               sign: the password of an encrypted (scrypt) secret key, as\n"
    "               `minisign -G` without -W writes: the first line of FILE;\n"
    "               without it, $OUTPOST_OTA_PASSWORD. There is no prompt.\n"
    "  -h, --help   this text\n"
    "\n"
    "Exit status: 0 ok; 1 a file could not be read or written, a key or signature\n"
    "is malformed, or verification failed (one line on stderr naming the file and\n"
    "what was wrong); 2 usage error.\n";

enum { OPT_PASSWORD_FILE = 256 };
static const struct option long_opts[] = {
    {"password-file", required_argument, NULL, OPT_PASSWORD_FILE},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static const char *const cmd = "ota";

/* minisign's default secret key path, or NULL without a home directory. */
static char *default_seckey_path(void)
{
    const char *dir = getenv("MINISIGN_CONFIG_DIR");
    const char *home = getenv("HOME");
    char *path = NULL;
    int n;
    if (dir && *dir)
        n = asprintf(&path, "%s/minisign.key", dir);
    else if (home && *home)
        n = asprintf(&path, "%s/.minisign/minisign.key", home);
    else
        return NULL;
    return n < 0 ? NULL : path;
}

static bool only_one_file(int argc, char **argv, const char *sub)
{
    if (optind < argc) {
        cli_error(cmd, "%s: unexpected argument '%s'", sub, argv[optind]);
        return false;
    }
    return true;
}

/* ---- keygen ------------------------------------------------------------------ */

static int ota_cmd_keygen(int argc, char **argv)
{
    const char *pub_path = "minisign.pub", *sec_arg = NULL;
    bool force = false, quiet = false;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":p:s:fWqh", long_opts, NULL)) != -1) {
        switch (c) {
        case 'p': pub_path = optarg; break;
        case 's': sec_arg = optarg; break;
        case 'f': force = true; break;
        case 'W': break;
        case 'q': quiet = true; break;
        case 'h': fputs(usage_text, stdout); return CLI_OK;
        case OPT_PASSWORD_FILE:
            cli_error(cmd, "keygen: --password-file: keys are written unencrypted");
            return CLI_USAGE;
        default: return cli_bad_option(cmd, argv, c);
        }
    }
    if (!only_one_file(argc, argv, "keygen"))
        return CLI_USAGE;
    char *sec_default = NULL;
    const char *sec_path = sec_arg;
    if (!sec_path) {
        if (!(sec_path = sec_default = default_seckey_path())) {
            cli_error(cmd, "keygen: no -s SECFILE and no HOME for ~/.minisign/minisign.key");
            return CLI_USAGE;
        }
        /* minisign creates its directory for the default key; so do we. */
        char *slash = strrchr(sec_default, '/');
        *slash = '\0';
        if (mkdir(sec_default, 0700) != 0 && errno != EEXIST) {
            cli_error(cmd, "%s: cannot create directory: %s", sec_default, strerror(errno));
            free(sec_default);
            return CLI_FAIL;
        }
        *slash = '/';
    }
    int status = CLI_FAIL;
    char err[256];
    ota_pubkey pk;
    ota_seckey sk;
    if (!force) {
        /* Refuse before writing anything, so no half pair is left behind. */
        const char *exists = access(sec_path, F_OK) == 0 ? sec_path
                             : access(pub_path, F_OK) == 0 ? pub_path : NULL;
        if (exists) {
            cli_error(cmd, "%s: already exists (use -f to overwrite it)", exists);
            goto done;
        }
    }
    if (ota_keygen(&pk, &sk, err) || ota_seckey_save(sec_path, &sk, NULL, NULL, force, err)) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    if (ota_pubkey_save(pub_path, &pk, force, err)) {
        cli_error(cmd, "%s", err);
        unlink(sec_path);
        goto done;
    }
    if (!quiet) {
        char id[17], b64[OTA_PUBKEY_BASE64_LEN + 1];
        ota_key_id_hex(pk.key_id, id);
        ota_pubkey_base64(&pk, b64);
        printf("The secret key was saved as %s (unencrypted) - keep it secret!\n"
               "The public key was saved as %s - that one can be public.\n"
               "Key id %s. Files signed with this key can be verified with:\n\n"
               "outpost ota verify -m <file> -P %s\n",
               sec_path, pub_path, id, b64);
    }
    status = CLI_OK;
done:
    ota_seckey_wipe(&sk);
    free(sec_default);
    return status;
}

/* ---- sign -------------------------------------------------------------------------- */

/* The secret key's password, if any: --password-file's first line, else
 * OUTPOST_OTA_PASSWORD; malloc'd (sodium_memzero + free), or NULL. *bad is
 * set when the file could not be read. */
static char *load_password(const char *file, bool *bad)
{
    *bad = false;
    if (file) {
        size_t len;
        char *text = cli_read_file(cmd, file, &len);
        if (!text) {
            *bad = true;
            return NULL;
        }
        text[strcspn(text, "\r\n")] = '\0';
        return text;
    }
    const char *env = getenv("OUTPOST_OTA_PASSWORD");
    if (!env)
        return NULL;
    char *copy = strdup(env);
    if (!copy) {
        cli_error(cmd, "out of memory");
        *bad = true;
    }
    return copy;
}

static int ota_cmd_sign(int argc, char **argv)
{
    const char *sec_arg = NULL, *first = NULL, *sig_arg = NULL, *trusted = NULL,
               *untrusted = NULL, *password_file = NULL;
    bool legacy = false, quiet = false;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":s:m:x:t:c:lqWh", long_opts, NULL)) != -1) {
        switch (c) {
        case 's': sec_arg = optarg; break;
        case 'm': first = optarg; break;
        case 'x': sig_arg = optarg; break;
        case 't': trusted = optarg; break;
        case 'c': untrusted = optarg; break;
        case 'l': legacy = true; break;
        case 'q': quiet = true; break;
        case 'W': break;
        case OPT_PASSWORD_FILE: password_file = optarg; break;
        case 'h': fputs(usage_text, stdout); return CLI_OK;
        default: return cli_bad_option(cmd, argv, c);
        }
    }
    (void)quiet; /* sign prints nothing on success, as minisign */
    int n_files = (first ? 1 : 0) + (argc - optind);
    if (n_files == 0) {
        cli_error(cmd, "sign: -m FILE is required (see 'outpost ota --help')");
        return CLI_USAGE;
    }
    if (sig_arg && n_files > 1) {
        cli_error(cmd, "sign: -x SIGFILE names one signature, but %d files were given", n_files);
        return CLI_USAGE;
    }
    if ((trusted && (strlen(trusted) > OTA_TRUSTED_MAX || strpbrk(trusted, "\r\n"))) ||
        (untrusted && (strlen(untrusted) > OTA_UNTRUSTED_MAX || strpbrk(untrusted, "\r\n")))) {
        cli_error(cmd, "sign: %s: must be one line of at most %d bytes", trusted ? "-t" : "-c",
                  trusted ? OTA_TRUSTED_MAX : OTA_UNTRUSTED_MAX);
        return CLI_USAGE;
    }
    char *sec_default = NULL;
    const char *sec_path = sec_arg;
    if (!sec_path && !(sec_path = sec_default = default_seckey_path())) {
        cli_error(cmd, "sign: no -s SECFILE and no HOME for ~/.minisign/minisign.key");
        return CLI_USAGE;
    }
    int status = CLI_FAIL;
    char err[256];
    ota_seckey sk;
    memset(&sk, 0, sizeof sk);
    ota_sig *sig = malloc(sizeof *sig);
    char *sig_path = NULL;
    bool bad;
    char *password = load_password(password_file, &bad);
    if (bad)
        goto done;
    if (!sig) {
        cli_error(cmd, "out of memory");
        goto done;
    }
    int rc = ota_seckey_load(sec_path, password, &sk, err);
    if (rc) {
        if (rc == OTA_EPASSWORD && !password)
            cli_error(cmd, "%s (give it with --password-file or OUTPOST_OTA_PASSWORD)", err);
        else
            cli_error(cmd, "%s", err);
        goto done;
    }
    for (int i = 0; i < n_files; i++) {
        const char *file = first ? (i == 0 ? first : argv[optind + i - 1]) : argv[optind + i];
        free(sig_path);
        sig_path = NULL;
        if (sig_arg) {
            sig_path = strdup(sig_arg);
        } else if (asprintf(&sig_path, "%s.minisig", file) < 0) {
            sig_path = NULL;
        }
        if (!sig_path) {
            cli_error(cmd, "out of memory");
            goto done;
        }
        if (ota_sign_file(&sk, file, legacy ? OTA_SIG_LEGACY : OTA_SIG_PREHASHED, trusted,
                          untrusted, sig, err) ||
            ota_sig_save(sig_path, sig, err)) {
            cli_error(cmd, "%s", err);
            goto done;
        }
    }
    status = CLI_OK;
done:
    ota_seckey_wipe(&sk);
    if (password) {
        sodium_memzero(password, strlen(password));
        free(password);
    }
    free(sig_path);
    free(sig);
    free(sec_default);
    return status;
}

/* ---- verify ------------------------------------------------------------------------ */

static int ota_cmd_verify(int argc, char **argv)
{
    const char *pub_path = NULL, *pub_b64 = NULL, *file = NULL, *sig_arg = NULL;
    bool prehashed_only = false, quiet = false, pretty_quiet = false;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":p:P:m:x:HqQh", long_opts, NULL)) != -1) {
        switch (c) {
        case 'p': pub_path = optarg; break;
        case 'P': pub_b64 = optarg; break;
        case 'm': file = optarg; break;
        case 'x': sig_arg = optarg; break;
        case 'H': prehashed_only = true; break;
        case 'q': quiet = true; break;
        case 'Q': pretty_quiet = true; break;
        case 'h': fputs(usage_text, stdout); return CLI_OK;
        case OPT_PASSWORD_FILE:
            cli_error(cmd, "verify: --password-file is for sign");
            return CLI_USAGE;
        default: return cli_bad_option(cmd, argv, c);
        }
    }
    if (!file && optind < argc)
        file = argv[optind++];
    if (!file) {
        cli_error(cmd, "verify: -m FILE is required (see 'outpost ota --help')");
        return CLI_USAGE;
    }
    if (!only_one_file(argc, argv, "verify"))
        return CLI_USAGE;
    if (pub_path && pub_b64) {
        cli_error(cmd, "verify: give the public key with -p or -P, not both");
        return CLI_USAGE;
    }
    int status = CLI_FAIL;
    char err[256];
    char *sig_path = NULL;
    ota_sig *sig = malloc(sizeof *sig);
    ota_pubkey pk;
    if (!sig || (!sig_arg && asprintf(&sig_path, "%s.minisig", file) < 0)) {
        sig_path = NULL;
        cli_error(cmd, "out of memory");
        goto done;
    }
    int rc = pub_b64 ? ota_pubkey_from_base64(pub_b64, "-P", &pk, err)
                     : ota_pubkey_load(pub_path ? pub_path : "minisign.pub", &pk, err);
    if (!rc)
        rc = ota_sig_load(sig_arg ? sig_arg : sig_path, sig, err);
    if (!rc)
        rc = ota_verify_file(&pk, file, sig, prehashed_only ? OTA_VERIFY_PREHASHED_ONLY : 0, err);
    if (rc) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    if (pretty_quiet)
        printf("%s\n", sig->trusted_comment);
    else if (!quiet)
        printf("Signature and comment signature verified\nTrusted comment: %s\n",
               sig->trusted_comment);
    status = CLI_OK;
done:
    free(sig_path);
    free(sig);
    return status;
}

int cmd_ota(int argc, char **argv)
{
    if (argc < 2) {
        cli_error(cmd, "expected 'keygen', 'sign' or 'verify' (see 'outpost ota --help')");
        return CLI_USAGE;
    }
    const char *sub = argv[1];
    if (strcmp(sub, "--help") == 0 || strcmp(sub, "-h") == 0 || strcmp(sub, "help") == 0) {
        fputs(usage_text, stdout);
        return CLI_OK;
    }
    if (strcmp(sub, "keygen") == 0)
        return ota_cmd_keygen(argc - 1, argv + 1);
    if (strcmp(sub, "sign") == 0)
        return ota_cmd_sign(argc - 1, argv + 1);
    if (strcmp(sub, "verify") == 0)
        return ota_cmd_verify(argc - 1, argv + 1);
    cli_error(cmd, "unknown subcommand '%s' (expected keygen, sign or verify)", sub);
    return CLI_USAGE;
}
