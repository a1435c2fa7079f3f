/*
 * cmd_fleet.c - `outpost fleet ...`: the operator's side of the fleet
 * channel. `fleet cmd` signs one command envelope (fleet_cmd.h), publishes
 * it on the device's or group's /cmd topic and prints the /resp replies
 * that carry its seq. (`fleet publish` and `fleet adapter`, the OTA
 * senders, live here too.)
 *
 * The MQTT side is a short-lived Paho client with a clean session and a
 * random client id: it subscribes to the reply topic before it publishes
 * (replies are not retained), so no reply can slip past it. All waiting is
 * on one mutex and condition variable filled by Paho's callbacks.
 *
 * Sequence numbers: the device accepts a command only when its seq is above
 * the last one it accepted from the fleet key, whoever signed it. Without
 * --seq, the seq is the current Unix time in milliseconds, or one more than
 * the last seq this machine used if that is larger (kept in the seq file,
 * default $XDG_STATE_HOME/outpost/fleet-seq): increasing across commands
 * from one machine and, with clocks in step, across operators.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "cli_mqtt.h"
#include "fleet_cmd.h"
#include "mqtt_dl.h"
#include "ota_sign.h"

static const char *const cmd = "fleet";

static const char fleet_usage_text[] =
    "usage: outpost fleet cmd --broker URL (--device ID | --group G) -s SECKEY [options] JSON\n"
    "       outpost fleet publish --broker URL (--device ID | --group G) -s SECKEY\n"
    "                             --version N --model NEW.gguf [--base OLD.gguf]\n"
    "       outpost fleet adapter --broker URL (--device ID | --group G) -s SECKEY\n"
    "                             --round N ADAPTER.gguf\n"
    "\n"
    "Manage devices of an Outpost fleet through an MQTT broker.\n"
    "\n"
    "  cmd       sign one command, send it, print the device's reply\n"
    "  publish   offer a model (a delta when --base is given) and send its chunks\n"
    "  adapter   send a LoRA adapter for a federated round\n"
    "\n"
    "'outpost fleet SUBCOMMAND --help' describes one subcommand.\n";

static const char cmd_usage_text[] =
    "usage: outpost fleet cmd --broker URL (--device ID | --group G) -s SECKEY\n"
    "                         [--prefix P] [--ca FILE] [--cert FILE --key FILE]\n"
    "                         [--username U] [--mqtt-version 4|5] [--expires-in SEC]\n"
    "                         [--timeout SEC] [--expect N] [--seq N] [--seq-file FILE]\n"
    "                         [--arg-file NAME=FILE]... [--password-file FILE] [--print]\n"
    "                         JSON\n"
    "\n"
    "Sign one fleet command with the fleet's minisign secret key, publish it at\n"
    "QoS 1 on <prefix>/<device>/cmd (or <prefix>/group/<G>/cmd), wait for the\n"
    "replies on /resp that carry its sequence number and print each one, as the\n"
    "device sent it, on its own line of stdout.\n"
    "\n"
    "JSON is the command body: {\"cmd\": NAME, \"args\": {...}} (args optional), e.g.\n"
    "  '{\"cmd\":\"ping\"}'\n"
    "  '{\"cmd\":\"config.set\",\"args\":{\"fleet.rollup_interval_s\":60}}'\n"
    "  '{\"cmd\":\"key.rotate\",\"args\":{\"next_key\":\"<minisign -P base64>\"}}'\n"
    "  '{\"cmd\":\"policy.set\",\"args\":{\"version\":\"7\"}}' --arg-file source=policy.lua\n"
    "Commands: ping, config.set, policy.set, model.offer, adapter.set,\n"
    "telemetry.flush, key.rotate (names are not checked here: the device decides).\n"
    "\n"
    "  --broker URL        mqtt://host:port or mqtts://host:port\n"
    "  --device ID         send to one device and wait for its one reply\n"
    "  --group G           send to a group; print every member's reply until\n"
    "                      --timeout (or until --expect N replies arrived)\n"
    "  -s, --seckey FILE   minisign secret key (encrypted keys: the password from\n"
    "                      --password-file or OUTPOST_OTA_PASSWORD)\n"
    "  --prefix P          topic prefix (default outpost/v1)\n"
    "  --ca FILE           CA certificate for mqtts (default: the system's)\n"
    "  --cert FILE, --key FILE  client certificate and key for mqtts\n"
    "  --username U        MQTT user name; the password is OUTPOST_MQTT_PASSWORD\n"
    "  --mqtt-version V    4 (MQTT 3.1.1, default) or 5\n"
    "  --expires-in SEC    the command expires SEC seconds from now (default 300;\n"
    "                      zero or less makes an expired command, for tests)\n"
    "  --timeout SEC       how long to wait for replies (default 10)\n"
    "  --expect N          with --group: stop after N replies\n"
    "  --seq N             sequence number to sign (default: see below)\n"
    "  --seq-file FILE     where the last seq used is kept (default\n"
    "                      $XDG_STATE_HOME/outpost/fleet-seq)\n"
    "  --arg-file NAME=FILE  put FILE's text into args.NAME (e.g. a Lua policy)\n"
    "  --print             print the signed envelope on stdout and send nothing\n"
    "  -h, --help          this text\n"
    "\n"
    "Sequence numbers: a device runs a command only when its seq is above the\n"
    "last it accepted. Without --seq the seq is the current Unix time in\n"
    "milliseconds, or the seq file's value plus one when that is larger; the\n"
    "seq file is updated before sending.\n"
    "\n"
    "Exit status: 0 every reply said ok (and at least one arrived), 1 a reply\n"
    "said not ok, no reply came in time, or the broker or a file failed,\n"
    "2 usage error.\n";

/* ---- seq -------------------------------------------------------------------------- */

static char *default_seq_file(void)
{
    const char *xdg = getenv("XDG_STATE_HOME"), *home = getenv("HOME");
    char buf[4096];
    if (xdg && xdg[0] == '/')
        snprintf(buf, sizeof buf, "%s/outpost/fleet-seq", xdg);
    else if (home && home[0])
        snprintf(buf, sizeof buf, "%s/.local/state/outpost/fleet-seq", home);
    else
        return NULL;
    return strdup(buf);
}

static int mkdir_parents(const char *path)
{
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return -1;
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            if (mkdir(buf, 0700) && errno != EEXIST)
                return -1;
            *p = '/';
        }
    return 0;
}

/* The next seq: max(now in ms, the file's value + 1); the file is rewritten
 * (temporary file + rename) before the command leaves. */
static int next_seq(const char *path, uint64_t *seq, char err[256])
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t s = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    FILE *f = fopen(path, "r");
    if (f) {
        unsigned long long last = 0;
        if (fscanf(f, "%llu", &last) == 1 && last + 1 > s)
            s = last + 1;
        fclose(f);
    } else if (errno != ENOENT) {
        snprintf(err, 256, "--seq-file %s: %s", path, strerror(errno));
        return CLI_FAIL;
    }
    *seq = s;
    return CLI_OK;
}

static int save_seq(const char *path, uint64_t seq, char err[256])
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp%ld", path, (long)getpid());
    if (mkdir_parents(path)) {
        snprintf(err, 256, "--seq-file %s: cannot create its directory: %s", path,
                 strerror(errno));
        return CLI_FAIL;
    }
    FILE *f = fopen(tmp, "w");
    if (!f || fprintf(f, "%" PRIu64 "\n", seq) < 0 || fflush(f) || fsync(fileno(f))) {
        snprintf(err, 256, "--seq-file %s: cannot write: %s", tmp, strerror(errno));
        if (f)
            fclose(f);
        unlink(tmp);
        return CLI_FAIL;
    }
    fclose(f);
    if (rename(tmp, path)) {
        snprintf(err, 256, "--seq-file %s: %s", path, strerror(errno));
        unlink(tmp);
        return CLI_FAIL;
    }
    return CLI_OK;
}

/* ---- fleet cmd ------------------------------------------------------------------------- */

enum { OPT_BROKER = 256, OPT_DEVICE, OPT_GROUP, OPT_PREFIX, OPT_CA, OPT_CERT, OPT_KEY,
       OPT_USERNAME, OPT_MQTT_VERSION, OPT_EXPIRES_IN, OPT_TIMEOUT, OPT_EXPECT, OPT_SEQ,
       OPT_SEQ_FILE, OPT_ARG_FILE, OPT_PASSWORD_FILE, OPT_PRINT };

static const struct option cmd_opts[] = {
    {"broker", required_argument, NULL, OPT_BROKER},
    {"device", required_argument, NULL, OPT_DEVICE},
    {"group", required_argument, NULL, OPT_GROUP},
    {"seckey", required_argument, NULL, 's'},
    {"prefix", required_argument, NULL, OPT_PREFIX},
    {"ca", required_argument, NULL, OPT_CA},
    {"cert", required_argument, NULL, OPT_CERT},
    {"key", required_argument, NULL, OPT_KEY},
    {"username", required_argument, NULL, OPT_USERNAME},
    {"mqtt-version", required_argument, NULL, OPT_MQTT_VERSION},
    {"expires-in", required_argument, NULL, OPT_EXPIRES_IN},
    {"timeout", required_argument, NULL, OPT_TIMEOUT},
    {"expect", required_argument, NULL, OPT_EXPECT},
    {"seq", required_argument, NULL, OPT_SEQ},
    {"seq-file", required_argument, NULL, OPT_SEQ_FILE},
    {"arg-file", required_argument, NULL, OPT_ARG_FILE},
    {"password-file", required_argument, NULL, OPT_PASSWORD_FILE},
    {"print", no_argument, NULL, OPT_PRINT},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static bool topic_level_ok(const char *s)
{
    size_t n = strlen(s);
    return n > 0 && n <= FLEET_ID_MAX && !strpbrk(s, "/+#");
}

static int fleet_cmd_main(int argc, char **argv)
{
    const char *broker = NULL, *device = NULL, *group = NULL, *seckey = NULL,
               *prefix = "outpost/v1", *seq_file = NULL, *password_file = NULL;
    cli_broker b = {.version = 4};
    long expires_in = 300, timeout_s = 10, expect = 0, version = 4;
    uint64_t seq = 0;
    bool print_only = false;
    json_t *arg_files = json_object();
    char *seq_default = NULL, *password = NULL, *payload = NULL, *envelope = NULL, *topic = NULL,
         *resp_topic = NULL;
    json_t *body = NULL;
    ota_seckey sk;
    memset(&sk, 0, sizeof sk);
    cli_mqtt m;
    bool m_open = false;
    int status = CLI_USAGE;
    char err[256];
    if (!arg_files) {
        cli_error(cmd, "out of memory");
        return CLI_FAIL;
    }
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":s:h", cmd_opts, NULL)) != -1) {
        switch (c) {
        case OPT_BROKER: broker = optarg; break;
        case OPT_DEVICE: device = optarg; break;
        case OPT_GROUP: group = optarg; break;
        case 's': seckey = optarg; break;
        case OPT_PREFIX: prefix = optarg; break;
        case OPT_CA: b.ca = optarg; break;
        case OPT_CERT: b.cert = optarg; break;
        case OPT_KEY: b.key = optarg; break;
        case OPT_USERNAME: b.username = optarg; break;
        case OPT_MQTT_VERSION:
            if (!cli_parse_long(cmd, "--mqtt-version", optarg, 4, 5, &version))
                goto done;
            break;
        case OPT_EXPIRES_IN:
            if (!cli_parse_long(cmd, "--expires-in", optarg, -31536000, 31536000, &expires_in))
                goto done;
            break;
        case OPT_TIMEOUT:
            if (!cli_parse_long(cmd, "--timeout", optarg, 1, 3600, &timeout_s))
                goto done;
            break;
        case OPT_EXPECT:
            if (!cli_parse_long(cmd, "--expect", optarg, 1, 1000000, &expect))
                goto done;
            break;
        case OPT_SEQ:
            if (!cli_parse_u64(cmd, "--seq", optarg, &seq) || seq < 1 || seq > INT64_MAX) {
                cli_error(cmd, "--seq: '%s' is not an integer in 1..%" PRId64, optarg, INT64_MAX);
                goto done;
            }
            break;
        case OPT_SEQ_FILE: seq_file = optarg; break;
        case OPT_PASSWORD_FILE: password_file = optarg; break;
        case OPT_PRINT: print_only = true; break;
        case OPT_ARG_FILE: {
            char *eq = strchr(optarg, '=');
            if (!eq || eq == optarg || !eq[1]) {
                cli_error(cmd, "--arg-file: expected NAME=FILE, got '%s'", optarg);
                goto done;
            }
            *eq = '\0';
            size_t len;
            char *text = cli_read_file(cmd, eq + 1, &len);
            if (!text) {
                status = CLI_FAIL;
                goto done;
            }
            json_t *s = json_stringn(text, len);
            free(text);
            if (!s) {
                cli_error(cmd, "--arg-file %s: not UTF-8 text", eq + 1);
                goto done;
            }
            json_object_set_new(arg_files, optarg, s);
            break;
        }
        case 'h':
            fputs(cmd_usage_text, stdout);
            status = CLI_OK;
            goto done;
        default: status = cli_bad_option(cmd, argv, c); goto done;
        }
    }
    b.version = (int)version;
    b.url = broker;
    if (optind != argc - 1) {
        if (optind >= argc)
            cli_error(cmd, "cmd: missing the command JSON (see --help)");
        else
            cli_error(cmd, "cmd: unexpected argument '%s'", argv[optind + 1]);
        goto done;
    }
    if ((device != NULL) == (group != NULL)) {
        cli_error(cmd, "cmd: give exactly one of --device and --group");
        goto done;
    }
    const char *target = device ? device : group;
    if (!topic_level_ok(target)) {
        cli_error(cmd, "cmd: %s '%s' is not one MQTT topic level of 1..%d bytes",
                  device ? "--device" : "--group", target, FLEET_ID_MAX);
        goto done;
    }
    if (!seckey) {
        cli_error(cmd, "cmd: -s SECKEY is required");
        goto done;
    }
    if (!broker && !print_only) {
        cli_error(cmd, "cmd: --broker URL is required (or --print)");
        goto done;
    }
    if ((b.cert == NULL) != (b.key == NULL)) {
        cli_error(cmd, "cmd: --cert and --key go together");
        goto done;
    }
    json_error_t je;
    body = json_loads(argv[optind], JSON_REJECT_DUPLICATES, &je);
    json_t *name = json_object_get(body, "cmd");
    json_t *args = json_object_get(body, "args");
    if (!json_is_object(body) || !json_is_string(name) || (args && !json_is_object(args))) {
        cli_error(cmd, "cmd: JSON must be {\"cmd\": NAME, \"args\": {...}}%s%s",
                  body ? "" : ": ", body ? "" : je.text);
        goto done;
    }
    const char *k;
    json_t *v;
    json_object_foreach(body, k, v) if (strcmp(k, "cmd") && strcmp(k, "args")) {
        cli_error(cmd, "cmd: JSON: unknown field '%s' (expected cmd, args)", k);
        goto done;
    }
    if (json_object_size(arg_files)) {
        if (!args) {
            args = json_object();
            json_object_set_new(body, "args", args);
        }
        json_object_update(args, arg_files);
    }
    status = CLI_FAIL;

    bool bad = false;
    password = cli_seckey_password(cmd, password_file, &bad);
    if (bad)
        goto done;
    if (ota_seckey_load(seckey, password, &sk, err) != OTA_OK) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    if (!seq) {
        if (!seq_file && !(seq_file = seq_default = default_seq_file())) {
            cli_error(cmd, "cmd: no --seq, no --seq-file, and neither XDG_STATE_HOME nor HOME");
            goto done;
        }
        if (next_seq(seq_file, &seq, err) || save_seq(seq_file, seq, err)) {
            cli_error(cmd, "%s", err);
            goto done;
        }
    }
    time_t now = time(NULL);
    if (fleet_payload_build(device ? FLEET_TARGET_DEVICE : FLEET_TARGET_GROUP, target, seq,
                            (int64_t)now + expires_in, json_string_value(name), args, &payload,
                            err) ||
        fleet_cmd_seal(&sk, payload, strlen(payload), NULL, &envelope, err)) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    if (print_only) {
        printf("%s\n", envelope);
        status = CLI_OK;
        goto done;
    }

    size_t tn = strlen(prefix) + strlen(target) + 32;
    topic = malloc(tn);
    resp_topic = malloc(tn);
    if (!topic || !resp_topic) {
        cli_error(cmd, "out of memory");
        goto done;
    }
    if (device) {
        snprintf(topic, tn, "%s/%s/cmd", prefix, device);
        snprintf(resp_topic, tn, "%s/%s/resp", prefix, device);
    } else {
        snprintf(topic, tn, "%s/group/%s/cmd", prefix, group);
        snprintf(resp_topic, tn, "%s/+/resp", prefix);
    }
    int rc = cli_mqtt_open(&m, &b, (double)timeout_s, err);
    m_open = true;
    m.seq = seq;
    if (rc) {
        cli_error(cmd, "%s", err);
        status = rc;
        goto done;
    }
    if (cli_mqtt_subscribe(&m, resp_topic, (double)timeout_s, err) ||
        cli_mqtt_publish(&m, topic, envelope, strlen(envelope), (double)timeout_s, err)) {
        cli_error(cmd, "%s", err);
        goto done;
    }
    fprintf(stderr, "outpost fleet: sent %s seq %" PRIu64 " to %s\n", json_string_value(name), seq,
            topic);
    double deadline = cli_now() + (double)timeout_s;
    size_t want = device ? 1 : (size_t)expect;
    size_t printed = 0, n_ok = 0;
    for (;;) {
        size_t have = cli_mqtt_wait_replies(&m, printed, deadline);
        pthread_mutex_lock(&m.mu);
        for (; printed < have; printed++) {
            printf("%s\n", m.replies[printed]);
            json_t *r = json_loads(m.replies[printed], 0, NULL);
            n_ok += json_is_true(json_object_get(r, "ok"));
            json_decref(r);
        }
        pthread_mutex_unlock(&m.mu);
        fflush(stdout);
        if ((want && printed >= want) || cli_now() >= deadline)
            break;
    }
    if (printed == 0) {
        cli_error(cmd, "no reply to seq %" PRIu64 " on %s within %ld s", seq, resp_topic,
                  timeout_s);
        goto done;
    }
    if (want && printed < want)
        cli_error(cmd, "%zu of %zu expected replies within %ld s", printed, want, timeout_s);
    status = n_ok == printed && (!want || printed >= want) ? CLI_OK : CLI_FAIL;
done:
    if (m_open)
        cli_mqtt_close(&m);
    ota_seckey_wipe(&sk);
    if (password) {
        sodium_memzero(password, strlen(password));
        free(password);
    }
    json_decref(arg_files);
    json_decref(body);
    free(seq_default);
    free(payload);
    free(envelope);
    free(topic);
    free(resp_topic);
    return status;
}

/* ---- dispatch ------------------------------------------------------------------------ */

static const struct {
    const char *name;
    int (*fn)(int argc, char **argv);
} subcommands[] = {
    {"cmd", fleet_cmd_main},
    {"publish", fleet_publish_main}, /* cmd_fleet_publish.c */
    {"adapter", fleet_adapter_main},
};

int cmd_fleet(int argc, char **argv)
{
    if (argc < 2) {
        fputs(fleet_usage_text, stderr);
        return CLI_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(fleet_usage_text, stdout);
        return CLI_OK;
    }
    for (size_t i = 0; i < sizeof subcommands / sizeof subcommands[0]; i++)
        if (strcmp(argv[1], subcommands[i].name) == 0)
            return subcommands[i].fn(argc - 1, argv + 1);
    cli_error(cmd, "unknown subcommand '%s' (see 'outpost fleet --help')", argv[1]);
    return CLI_USAGE;
}
