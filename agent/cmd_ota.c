/*
 * cmd_ota.c - `outpost ota keygen|sign|verify`: minisign-compatible keys
 * and signatures from the command line (the formats live in ota/sign.c);
 * `outpost ota diff|patch`: tensor-aware model deltas (ota/delta.c);
 * `outpost ota manifest`: signed update manifests (ota/manifest.c).
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
#include "delta.h"
#include "manifest.h"
#include "ota_sign.h"

static const char usage_text[] =
    "usage: outpost ota keygen [-p PUBFILE] [-s SECFILE] [-f] [-W] [-q]\n"
    "       outpost ota sign [-s SECFILE] [-x SIGFILE] [-t COMMENT] [-c COMMENT] [-l] [-q]\n"
    "                        -m FILE [FILE...]\n"
    "       outpost ota verify [-p PUBFILE | -P PUBKEY] [-x SIGFILE] [-H] [-q | -Q] -m FILE\n"
    "       outpost ota diff BASE TARGET -o DELTA [--level N] [--no-qdiff] [--json]\n"
    "       outpost ota patch BASE DELTA -o OUT [--json]\n"
    "       outpost ota manifest (--delta DELTA | --full FILE) --version N -o MANIFEST ...\n"
    "       (`outpost ota diff --help` describes model deltas, `outpost ota manifest\n"
    "       --help` update manifests)\n"
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
    char *password = cli_seckey_password(cmd, password_file, &bad);
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

/* ---- diff / patch ------------------------------------------------------------------ */

static const char delta_usage_text[] =
    "usage: outpost ota diff BASE TARGET -o DELTA [--level N] [--no-qdiff] [--json]\n"
    "       outpost ota patch BASE DELTA -o OUT [--json]\n"
    "\n"
    "Model deltas that know the GGUF layout. `diff` writes DELTA, which turns the\n"
    "model BASE into the model TARGET; `patch` applies it to BASE and writes OUT,\n"
    "byte for byte equal to TARGET. Both work one tensor (piece of 4 MiB) at a time\n"
    "on mapped files, so their memory does not grow with the model.\n"
    "\n"
    "A delta holds the target's metadata (zstd) and, for each target tensor in file\n"
    "order, one of:\n"
    "  same    the base tensor of the same name, type and shape has the same bytes\n"
    "  patch   zstd with the base tensor as reference (--patch-from, per piece)\n"
    "  qdiff   Q4_0/Q8_0 blocks coded as differences from the base's blocks in the\n"
    "          same places, then zstd: a fine-tune that moves every weight a little\n"
    "          leaves most quants equal or off by one (chosen when it is smaller)\n"
    "  new     zstd alone (no base tensor of that name)\n"
    "It is bound to the BLAKE2b-256 hashes of BASE and TARGET: `patch` refuses a\n"
    "base with another hash before it writes anything, checks every rebuilt\n"
    "tensor's hash and the whole file's, writes OUT.tmp, fsyncs it and renames it\n"
    "to OUT (an existing OUT is replaced only then). On any error no OUT.tmp is\n"
    "left and OUT is untouched. The format is described in ota/delta.h.\n"
    "\n"
    "  -o, --output FILE  where to write the delta (diff) or the model (patch)\n"
    "  --level N          zstd level, 1..19 (default 9); higher is smaller, slower\n"
    "  --no-qdiff         diff: never use the block-aware transform\n"
    "  --json             print one JSON object instead of the text summary\n"
    "  -h, --help         this text\n"
    "\n"
    "diff prints the sizes of base, target and delta, the delta's share of the\n"
    "target, the time taken and how many tensors were same, patch, qdiff and new.\n"
    "\n"
    "Exit status: 0 ok; 1 a file could not be read or written, is not a GGUF\n"
    "model or a delta, the delta is damaged or truncated, or BASE is not the\n"
    "delta's base (one line on stderr naming the file and what was wrong);\n"
    "2 usage error.\n";

enum { OPT_LEVEL = 300, OPT_NO_QDIFF, OPT_JSON };
static const struct option delta_opts[] = {
    {"output", required_argument, NULL, 'o'},
    {"level", required_argument, NULL, OPT_LEVEL},
    {"no-qdiff", no_argument, NULL, OPT_NO_QDIFF},
    {"json", no_argument, NULL, OPT_JSON},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static double mib(uint64_t n) { return (double)n / (1024.0 * 1024.0); }

/* Shared flag parsing of diff and patch; the two positional files in in[]. */
static int delta_args(int argc, char **argv, const char *sub, bool is_diff, const char *in[2],
                      const char **out, ota_delta_opts *o, bool *json)
{
    int c;
    long level;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":o:h", delta_opts, NULL)) != -1) {
        switch (c) {
        case 'o': *out = optarg; break;
        case 'h': fputs(delta_usage_text, stdout); return -1;
        case OPT_JSON: *json = true; break;
        case OPT_LEVEL:
        case OPT_NO_QDIFF:
            if (!is_diff) {
                cli_error(cmd, "%s: %s is an option of diff", sub,
                          c == OPT_LEVEL ? "--level" : "--no-qdiff");
                return CLI_USAGE;
            }
            if (c == OPT_NO_QDIFF) {
                o->no_qdiff = true;
            } else {
                if (!cli_parse_long(cmd, "--level", optarg, 1, 19, &level))
                    return CLI_USAGE;
                o->level = (int)level;
            }
            break;
        default: return cli_bad_option(cmd, argv, c);
        }
    }
    if (argc - optind != 2) {
        cli_error(cmd, "%s: expected two files, %s (see 'outpost ota diff --help')", sub,
                  is_diff ? "BASE and TARGET" : "BASE and DELTA");
        return CLI_USAGE;
    }
    if (!*out) {
        cli_error(cmd, "%s: -o %s is required", sub, is_diff ? "DELTA" : "OUT");
        return CLI_USAGE;
    }
    in[0] = argv[optind];
    in[1] = argv[optind + 1];
    return CLI_OK;
}

static int ota_cmd_diff(int argc, char **argv)
{
    const char *in[2] = {NULL, NULL}, *out = NULL;
    ota_delta_opts o = {0};
    bool json = false;
    int rc = delta_args(argc, argv, "diff", true, in, &out, &o, &json);
    if (rc)
        return rc < 0 ? CLI_OK : rc;
    char err[256];
    ota_delta_stats st;
    double t0 = cli_now();
    if (ota_delta_diff(in[0], in[1], out, &o, &st, err) != OTA_OK) {
        cli_error(cmd, "diff: %s", err);
        return CLI_FAIL;
    }
    double secs = cli_now() - t0;
    double ratio = st.target_bytes ? 100.0 * (double)st.delta_bytes / (double)st.target_bytes : 0;
    if (json) {
        printf("{\"base_bytes\":%llu,\"target_bytes\":%llu,\"delta_bytes\":%llu,"
               "\"ratio_pct\":%.3f,\"seconds\":%.3f,\"same\":%u,\"patch\":%u,\"qdiff\":%u,"
               "\"new\":%u}\n",
               (unsigned long long)st.base_bytes, (unsigned long long)st.target_bytes,
               (unsigned long long)st.delta_bytes, ratio, secs, st.n_same, st.n_patch,
               st.n_qdiff, st.n_new);
    } else {
        printf("base    %s: %llu bytes (%.2f MiB)\n", in[0], (unsigned long long)st.base_bytes,
               mib(st.base_bytes));
        printf("target  %s: %llu bytes (%.2f MiB)\n", in[1], (unsigned long long)st.target_bytes,
               mib(st.target_bytes));
        printf("delta   %s: %llu bytes (%.2f MiB), %.2f%% of the target\n", out,
               (unsigned long long)st.delta_bytes, mib(st.delta_bytes), ratio);
        printf("tensors %u same, %u patch, %u qdiff, %u new\n", st.n_same, st.n_patch,
               st.n_qdiff, st.n_new);
        printf("time    %.2f s\n", secs);
    }
    return CLI_OK;
}

static int ota_cmd_patch(int argc, char **argv)
{
    const char *in[2] = {NULL, NULL}, *out = NULL;
    ota_delta_opts o = {0};
    bool json = false;
    int rc = delta_args(argc, argv, "patch", false, in, &out, &o, &json);
    if (rc)
        return rc < 0 ? CLI_OK : rc;
    char err[256];
    ota_delta_stats st;
    double t0 = cli_now();
    if (ota_delta_patch(in[0], in[1], out, &st, err) != OTA_OK) {
        cli_error(cmd, "patch: %s", err);
        return CLI_FAIL;
    }
    double secs = cli_now() - t0;
    if (json)
        printf("{\"target_bytes\":%llu,\"delta_bytes\":%llu,\"seconds\":%.3f}\n",
               (unsigned long long)st.target_bytes, (unsigned long long)st.delta_bytes, secs);
    else
        printf("wrote %s: %llu bytes (%.2f MiB) from a %.2f MiB delta in %.2f s, hashes verified\n",
               out, (unsigned long long)st.target_bytes, mib(st.target_bytes),
               mib(st.delta_bytes), secs);
    return CLI_OK;
}

/* ---- manifest ------------------------------------------------------------------------ */

static const char manifest_usage_text[] =
    "usage: outpost ota manifest (--delta DELTA | --full FILE) --version N -o MANIFEST\n"
    "                            [--chunk-size BYTES] [--health-prompt TEXT\n"
    "                            [--expect TEXT] [--max-ppl X]] [-s SECFILE]\n"
    "\n"
    "Write the JSON manifest of an update (format: ota/manifest.h): its version\n"
    "(a device installs only a version above its own), kind (delta or full), the\n"
    "BLAKE2b-256 hashes and sizes of the base and target models (for a delta, read\n"
    "from its header; for a full model, the file itself), the payload's hash and\n"
    "size, and the hash of each chunk the payload is cut into for delivery over\n"
    "MQTT. With -s the manifest is signed too, into MANIFEST.minisig (prehashed\n"
    "minisign format; `minisign -V -m MANIFEST` verifies it).\n"
    "\n"
    "  --delta DELTA        the payload is a delta from `outpost ota diff`\n"
    "  --full FILE          the payload is the whole model\n"
    "  --version N          the update's version, 1 or more\n"
    "  -o, --output FILE    where to write the manifest\n"
    "  --chunk-size BYTES   chunk size, 1024..67108864 (default 262144)\n"
    "  --health-prompt TEXT the health check's probe prompt (after install)\n"
    "  --expect TEXT        text the probe's answer must contain\n"
    "  --max-ppl X          perplexity ceiling of the health check\n"
    "  -s SECFILE           sign with this secret key (encrypted keys take their\n"
    "                       password from $OUTPOST_OTA_PASSWORD)\n"
    "  -h, --help           this text\n"
    "\n"
    "Exit status: 0 ok; 1 a file could not be read or written, or the delta is not\n"
    "one; 2 usage error.\n";

enum { OPT_DELTA = 400, OPT_FULL, OPT_VERSION, OPT_CHUNK, OPT_PROMPT, OPT_EXPECT, OPT_MAXPPL };
static const struct option manifest_opts[] = {
    {"delta", required_argument, NULL, OPT_DELTA},
    {"full", required_argument, NULL, OPT_FULL},
    {"version", required_argument, NULL, OPT_VERSION},
    {"output", required_argument, NULL, 'o'},
    {"chunk-size", required_argument, NULL, OPT_CHUNK},
    {"health-prompt", required_argument, NULL, OPT_PROMPT},
    {"expect", required_argument, NULL, OPT_EXPECT},
    {"max-ppl", required_argument, NULL, OPT_MAXPPL},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static int write_text_atomic(const char *path, const char *text, char err[256])
{
    char *tmp = NULL;
    if (asprintf(&tmp, "%s.tmp", path) < 0) {
        snprintf(err, 256, "out of memory");
        return -1;
    }
    FILE *f = fopen(tmp, "w");
    bool ok = f && fputs(text, f) >= 0 && fflush(f) == 0 && fsync(fileno(f)) == 0;
    if (f && fclose(f) != 0)
        ok = false;
    if (!ok || rename(tmp, path) != 0) {
        snprintf(err, 256, "%s: cannot write: %s", path, strerror(errno));
        unlink(tmp);
        free(tmp);
        return -1;
    }
    free(tmp);
    return 0;
}

static int ota_cmd_manifest(int argc, char **argv)
{
    const char *delta = NULL, *full = NULL, *out = NULL, *prompt = NULL, *expect = NULL,
               *sec_path = NULL;
    uint64_t version = 0;
    long chunk = 0;
    float max_ppl = 0;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":o:s:h", manifest_opts, NULL)) != -1) {
        switch (c) {
        case OPT_DELTA: delta = optarg; break;
        case OPT_FULL: full = optarg; break;
        case 'o': out = optarg; break;
        case 's': sec_path = optarg; break;
        case OPT_PROMPT: prompt = optarg; break;
        case OPT_EXPECT: expect = optarg; break;
        case OPT_VERSION:
            if (!cli_parse_u64(cmd, "--version", optarg, &version))
                return CLI_USAGE;
            break;
        case OPT_CHUNK:
            if (!cli_parse_long(cmd, "--chunk-size", optarg, OTA_MANIFEST_CHUNK_MIN,
                                OTA_MANIFEST_CHUNK_MAX, &chunk))
                return CLI_USAGE;
            break;
        case OPT_MAXPPL:
            if (!cli_parse_float(cmd, "--max-ppl", optarg, 1e-6, 1e12, &max_ppl))
                return CLI_USAGE;
            break;
        case 'h': fputs(manifest_usage_text, stdout); return CLI_OK;
        default: return cli_bad_option(cmd, argv, c);
        }
    }
    if (!only_one_file(argc, argv, "manifest"))
        return CLI_USAGE;
    if (!delta == !full || !out || version < 1 || version > (uint64_t)INT64_MAX) {
        cli_error(cmd, "manifest: needs one of --delta or --full, --version N (1 or more) and "
                       "-o MANIFEST (see 'outpost ota manifest --help')");
        return CLI_USAGE;
    }
    if ((expect || max_ppl > 0) && !prompt) {
        cli_error(cmd, "manifest: --expect and --max-ppl need --health-prompt");
        return CLI_USAGE;
    }
    char err[256];
    ota_manifest *m = NULL;
    char *text = NULL;
    int status = CLI_FAIL;
    if (ota_manifest_from_file(delta ? delta : full, delta ? OTA_MANIFEST_DELTA : OTA_MANIFEST_FULL,
                               version, (uint32_t)chunk, &m, err) ||
        (prompt && ota_manifest_set_health(m, prompt, expect, max_ppl, err))) {
        cli_error(cmd, "manifest: %s", err);
        goto done;
    }
    if (!(text = ota_manifest_format(m))) {
        cli_error(cmd, "manifest: out of memory");
        goto done;
    }
    if (write_text_atomic(out, text, err)) {
        cli_error(cmd, "manifest: %s", err);
        goto done;
    }
    if (sec_path) {
        bool bad;
        char *password = cli_seckey_password(cmd, NULL, &bad);
        ota_seckey sk;
        ota_sig *sig = malloc(sizeof *sig);
        char *sig_path = NULL;
        int rc = !sig || asprintf(&sig_path, "%s.minisig", out) < 0 ? -1 : 0;
        if (rc) {
            sig_path = NULL;
            snprintf(err, sizeof err, "out of memory");
        }
        if (!rc)
            rc = ota_seckey_load(sec_path, password, &sk, err);
        if (password) {
            sodium_memzero(password, strlen(password));
            free(password);
        }
        if (!rc) {
            rc = ota_sign_file(&sk, out, OTA_SIG_PREHASHED, NULL, NULL, sig, err);
            ota_seckey_wipe(&sk);
        }
        if (!rc)
            rc = ota_sig_save(sig_path, sig, err);
        free(sig);
        free(sig_path);
        if (rc) {
            cli_error(cmd, "manifest: %s", err);
            unlink(out);
            goto done;
        }
    }
    printf("wrote %s: version %llu, %s, payload %llu bytes in %u chunks of %u%s\n", out,
           (unsigned long long)m->version, m->kind == OTA_MANIFEST_DELTA ? "delta" : "full",
           (unsigned long long)m->payload_size, m->n_chunks, m->chunk_size,
           sec_path ? ", signed" : "");
    status = CLI_OK;
done:
    free(text);
    ota_manifest_free(m);
    return status;
}

int cmd_ota(int argc, char **argv)
{
    if (argc < 2) {
        cli_error(cmd, "expected 'keygen', 'sign', 'verify', 'diff', 'patch' or 'manifest' (see 'outpost ota --help')");
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
    if (strcmp(sub, "diff") == 0)
        return ota_cmd_diff(argc - 1, argv + 1);
    if (strcmp(sub, "patch") == 0)
        return ota_cmd_patch(argc - 1, argv + 1);
    if (strcmp(sub, "manifest") == 0)
        return ota_cmd_manifest(argc - 1, argv + 1);
    cli_error(cmd, "unknown subcommand '%s' (expected keygen, sign, verify, diff, patch or manifest)", sub);
    return CLI_USAGE;
}
