/*
 * cmd_fleet_publish.c - `outpost fleet publish` and `outpost fleet adapter`:
 * the operator's side of an OTA update (agent/fleet_ota.h is the device's).
 *
 * publish: the payload is the new model (or, with --base, a tensor-aware
 * delta from the base to it, ota/delta.h, written to a temporary file); a
 * manifest (ota/manifest.h) names the version, target, payload and its
 * chunks' hashes and the health check; it is signed with the fleet key
 * (minisign) and travels in the args of a signed model.offer command. Then
 * every chunk goes at QoS 1 to <prefix>/<device>/ota (or the group's), in
 * the binary format of ota/transfer.h, and the command waits for the
 * device's one /resp reply, which comes after the install (or its
 * refusal), and prints it. adapter: the same with a GGUF LoRA adapter sent
 * whole as adapter.set with its round.
 *
 * With --url the payload is not sent: the offer's args name the URL
 * ({"url": ...}, inside the signed command) and the device downloads it
 * (agent/fleet_ota.h); the local file given (--model, --delta or the
 * adapter) must be the very bytes the URL serves, since the manifest is made
 * from it.
 *
 * The MQTT client is agent/cli_mqtt.h (shared with `outpost fleet cmd`), with a clean
 * session, subscribed to /resp before anything is sent (replies are not
 * retained). Waiting is on one mutex and condition variable filled by
 * Paho's callbacks. The seq is the current Unix time in milliseconds (or
 * --seq), so it rises across publishes from one machine.
 */
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "cli_mqtt.h"
#include "delta.h"
#include "fleet_cmd.h"
#include "install.h"
#include "manifest.h"
#include "ota_sign.h"
#include "transfer.h"

static const char *const cmd = "fleet";

static const char publish_usage[] =
    "usage: outpost fleet publish --broker URL (--device ID | --group G) -s SECKEY\n"
    "                             --version N (--model NEW.gguf [--base OLD.gguf] |\n"
    "                             --delta DELTA) [--url URL] [options]\n"
    "       outpost fleet adapter --broker URL (--device ID | --group G) -s SECKEY\n"
    "                             --round N [--url URL] [options] ADAPTER.gguf\n"
    "\n"
    "publish offers a model update: the whole NEW.gguf, or with --base a delta from\n"
    "OLD.gguf (the model the device serves) to NEW.gguf. adapter offers a LoRA\n"
    "adapter for the device's model. The signed manifest rides in a signed command\n"
    "(model.offer / adapter.set); the file follows in chunks on the /ota topic;\n"
    "the device's reply (after it installed, or refused) is printed on stdout.\n"
    "With --url the file is not sent: the device downloads it over HTTPS (resuming\n"
    "with Range requests) from URL, which must serve exactly the local file.\n"
    "\n"
    "  --broker URL        mqtt://host:port or mqtts://host:port\n"
    "  --device ID | --group G   the target\n"
    "  -s, --seckey FILE   the fleet's minisign secret key (encrypted: password in\n"
    "                      OUTPOST_OTA_PASSWORD)\n"
    "  --prefix P          topic prefix (default outpost/v1)\n"
    "  --ca FILE, --cert FILE, --key FILE   TLS files for mqtts\n"
    "  --chunk-size BYTES  chunk size (default 256 KiB)\n"
    "  --delta FILE        publish: a delta made by `outpost ota diff` (against the\n"
    "                      model the device serves) instead of --model/--base\n"
    "  --url URL           the device fetches the payload from this https:// URL\n"
    "                      (the manifest still names every chunk's hash)\n"
    "  --probe TEXT        health check prompt (default: the device's)\n"
    "  --expect TEXT       the probe's answer must contain TEXT\n"
    "  --max-ppl X         the probe text's perplexity must be at most X\n"
    "  --timeout SEC       how long to wait for the reply (default 600)\n"
    "  --seq N             the command's sequence number (default: Unix time in ms)\n"
    "  --corrupt-chunk I   flip one byte of chunk I (to test a device's refusal)\n"
    "\n"
    "Exit status: 0 the device replied ok, 1 it refused or failed, no reply in time,\n"
    "or the broker or a file failed, 2 usage error.\n";

/* ---- a small MQTT client --------------------------------------------------------- */

typedef struct pub_opts {
    const char *broker, *device, *group, *seckey, *prefix, *ca, *cert, *key;
    const char *model, *base, *probe, *expect, *delta, *url;
    long version, chunk_size, timeout_s, corrupt_chunk;
    double max_ppl;
    uint64_t seq;
} pub_opts;

/* ---- the update ---------------------------------------------------------------------- */

/* Send the offer (name: model.offer / adapter.set) and the payload's chunks,
 * print the reply. */
static int send_update(const pub_opts *o, const char *name, const char *payload_path,
                       const ota_manifest *mf, long round)
{
    char err[256];
    int status = CLI_FAIL;
    ota_seckey sk;
    if (ota_seckey_load(o->seckey, getenv("OUTPOST_OTA_PASSWORD"), &sk, err)) {
        cli_error(cmd, "%s", err);
        return CLI_FAIL;
    }
    char *mtext = ota_manifest_format(mf), *sigtext = NULL, *payload = NULL, *envelope = NULL;
    ota_sig sig;
    json_t *args = NULL;
    uint8_t *buf = NULL;
    FILE *in = NULL;
    cli_mqtt m;
    bool m_open = false;
    if (!mtext || ota_sign_buffer(&sk, mtext, strlen(mtext), OTA_SIG_PREHASHED, NULL, NULL, &sig,
                                  err) || !(sigtext = ota_sig_format(&sig))) {
        cli_error(cmd, "manifest: %s", mtext ? err : "out of memory");
        goto out;
    }
    args = json_pack("{s:s, s:s}", "manifest", mtext, "manifest_sig", sigtext);
    if (args && round > 0)
        json_object_set_new(args, "round", json_integer(round));
    if (args && o->url)
        json_object_set_new(args, "url", json_string(o->url));
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    uint64_t seq = o->seq ? o->seq
                          : (uint64_t)now.tv_sec * 1000u + (uint64_t)now.tv_nsec / 1000000u;
    const char *target = o->device ? o->device : o->group;
    if (!args ||
        fleet_payload_build(o->device ? FLEET_TARGET_DEVICE : FLEET_TARGET_GROUP, target, seq,
                            (int64_t)time(NULL) + 600, name, args, &payload, err) ||
        fleet_cmd_seal(&sk, payload, strlen(payload), NULL, &envelope, err)) {
        cli_error(cmd, "%s: %s", name, args ? err : "out of memory");
        goto out;
    }
    const char *prefix = o->prefix ? o->prefix : "outpost/v1";
    char t_cmd[512], t_ota[512], t_resp[512], t_status[512];
    snprintf(t_status, sizeof t_status, "%s/%s/status", prefix, o->device ? o->device : "+");
    if (o->device) {
        snprintf(t_cmd, sizeof t_cmd, "%s/%s/cmd", prefix, o->device);
        snprintf(t_ota, sizeof t_ota, "%s/%s/ota", prefix, o->device);
        snprintf(t_resp, sizeof t_resp, "%s/%s/resp", prefix, o->device);
    } else {
        snprintf(t_cmd, sizeof t_cmd, "%s/group/%s/cmd", prefix, o->group);
        snprintf(t_ota, sizeof t_ota, "%s/group/%s/ota", prefix, o->group);
        snprintf(t_resp, sizeof t_resp, "%s/+/resp", prefix);
    }
    cli_broker b = {.url = o->broker, .ca = o->ca, .cert = o->cert, .key = o->key, .version = 3};
    int rc = cli_mqtt_open(&m, &b, 10, err);
    m_open = true;
    m.seq = seq;
    if (rc) {
        cli_error(cmd, "%s", err);
        status = rc;
        goto out;
    }
    if (cli_mqtt_subscribe(&m, t_resp, 10, err) || cli_mqtt_subscribe(&m, t_status, 10, err) ||
        cli_mqtt_publish(&m, t_cmd, envelope, strlen(envelope), 30, err)) {
        cli_error(cmd, "%s", err);
        goto out;
    }
    /* The chunks go once the device's status names this offer (it took it),
     * so none races ahead of the offer; a refusal replies at once. A group
     * gets them once any member took it (or after the wait). */
    double accept_deadline = cli_now() + 30;
    while (cli_now() < accept_deadline) {
        pthread_mutex_lock(&m.mu);
        bool done = m.offer_taken || m.n_replies;
        pthread_mutex_unlock(&m.mu);
        if (done)
            break;
        cli_mqtt_wait(&m, &m.offer_taken, cli_now() + 0.2);
    }
    pthread_mutex_lock(&m.mu);
    bool refused = m.n_replies > 0;
    pthread_mutex_unlock(&m.mu);
    double t0 = cli_now();
    if (o->url) {
        fprintf(stderr, "outpost fleet: %s seq %" PRIu64 ": the device fetches %" PRIu64
                " bytes from %s; waiting for the reply\n", name, seq, mf->payload_size, o->url);
        goto wait_reply;
    }
    /* The chunks, in order; the device stores each before acknowledging. */
    in = fopen(payload_path, "rb");
    buf = malloc(mf->chunk_size);
    if (!in || !buf) {
        cli_error(cmd, "%s: cannot read", payload_path);
        goto out;
    }
    uint8_t id[OTA_XFER_ID_BYTES];
    memcpy(id, mf->payload_hash, OTA_XFER_ID_BYTES);
    for (uint32_t i = 0; i < mf->n_chunks && !refused; i++) {
        size_t n = fread(buf, 1, mf->chunk_size, in);
        if (n == 0) {
            cli_error(cmd, "%s: ends before chunk %" PRIu32, payload_path, i);
            goto out;
        }
        if (o->corrupt_chunk >= 0 && (long)i == o->corrupt_chunk)
            buf[n / 2] ^= 0x5a;
        uint8_t *msg = NULL;
        size_t msg_len = 0;
        if (ota_xfer_msg_build(id, i, buf, n, &msg, &msg_len, err) ||
            cli_mqtt_publish(&m, t_ota, msg, msg_len, 30, err)) {
            free(msg);
            cli_error(cmd, "chunk %" PRIu32 ": %s", i, err);
            goto out;
        }
        free(msg);
        /* A refusal (bad signature, old version, wrong base) may already be here. */
        pthread_mutex_lock(&m.mu);
        bool replied = m.n_replies > 0;
        pthread_mutex_unlock(&m.mu);
        if (replied)
            break;
    }
    fprintf(stderr, "outpost fleet: %s seq %" PRIu64 ": %" PRIu64 " bytes in %" PRIu32
            " chunks sent in %.1f s; waiting for the reply\n", name, seq, mf->payload_size,
            mf->n_chunks, cli_now() - t0);
wait_reply:;
    double deadline = cli_now() + (double)o->timeout_s;
    size_t n_replies = cli_mqtt_wait_replies(&m, 0, deadline);
    pthread_mutex_lock(&m.mu);
    char *reply = n_replies ? m.replies[0] : NULL;
    pthread_mutex_unlock(&m.mu);
    if (!reply) {
        cli_error(cmd, "no reply to %s seq %" PRIu64 " within %ld s", name, seq, o->timeout_s);
        goto out;
    }
    printf("%s\n", reply);
    fflush(stdout);
    json_t *r = json_loads(reply, 0, NULL);
    status = json_is_true(json_object_get(r, "ok")) ? CLI_OK : CLI_FAIL;
    json_decref(r);
out:
    if (in)
        fclose(in);
    free(buf);
    if (m_open)
        cli_mqtt_close(&m);
    ota_seckey_wipe(&sk);
    json_decref(args);
    free(mtext);
    free(sigtext);
    free(payload);
    free(envelope);
    return status;
}

enum { OPT_BROKER = 256, OPT_DEVICE, OPT_GROUP, OPT_PREFIX, OPT_CA, OPT_CERT, OPT_KEY,
       OPT_VERSION, OPT_MODEL, OPT_BASE, OPT_CHUNK, OPT_PROBE, OPT_EXPECT, OPT_MAXPPL,
       OPT_TIMEOUT, OPT_SEQ, OPT_CORRUPT, OPT_ROUND, OPT_DELTA, OPT_URL };

static const struct option pub_long[] = {
    {"broker", required_argument, NULL, OPT_BROKER},
    {"device", required_argument, NULL, OPT_DEVICE},
    {"group", required_argument, NULL, OPT_GROUP},
    {"seckey", required_argument, NULL, 's'},
    {"prefix", required_argument, NULL, OPT_PREFIX},
    {"ca", required_argument, NULL, OPT_CA},
    {"cert", required_argument, NULL, OPT_CERT},
    {"key", required_argument, NULL, OPT_KEY},
    {"version", required_argument, NULL, OPT_VERSION},
    {"model", required_argument, NULL, OPT_MODEL},
    {"base", required_argument, NULL, OPT_BASE},
    {"chunk-size", required_argument, NULL, OPT_CHUNK},
    {"probe", required_argument, NULL, OPT_PROBE},
    {"expect", required_argument, NULL, OPT_EXPECT},
    {"max-ppl", required_argument, NULL, OPT_MAXPPL},
    {"timeout", required_argument, NULL, OPT_TIMEOUT},
    {"seq", required_argument, NULL, OPT_SEQ},
    {"corrupt-chunk", required_argument, NULL, OPT_CORRUPT},
    {"round", required_argument, NULL, OPT_ROUND},
    {"delta", required_argument, NULL, OPT_DELTA},
    {"url", required_argument, NULL, OPT_URL},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static int parse_pub(int argc, char **argv, pub_opts *o, long *round)
{
    *o = (pub_opts){.chunk_size = 0, .timeout_s = 600, .corrupt_chunk = -1};
    *round = 0;
    optind = 1;
    opterr = 0;
    int c;
    long v;
    while ((c = getopt_long(argc, argv, ":s:h", pub_long, NULL)) != -1) {
        switch (c) {
        case OPT_BROKER: o->broker = optarg; break;
        case OPT_DEVICE: o->device = optarg; break;
        case OPT_GROUP: o->group = optarg; break;
        case 's': o->seckey = optarg; break;
        case OPT_PREFIX: o->prefix = optarg; break;
        case OPT_CA: o->ca = optarg; break;
        case OPT_CERT: o->cert = optarg; break;
        case OPT_KEY: o->key = optarg; break;
        case OPT_MODEL: o->model = optarg; break;
        case OPT_BASE: o->base = optarg; break;
        case OPT_PROBE: o->probe = optarg; break;
        case OPT_EXPECT: o->expect = optarg; break;
        case OPT_DELTA: o->delta = optarg; break;
        case OPT_URL:
            if (strncmp(optarg, "https://", 8) != 0 || strlen(optarg) <= 8) {
                cli_error(cmd, "--url: expected an https:// URL, got '%s'", optarg);
                return CLI_USAGE;
            }
            o->url = optarg;
            break;
        case OPT_VERSION:
            if (!cli_parse_long(cmd, "--version", optarg, 1, INT64_MAX / 2, &o->version))
                return CLI_USAGE;
            break;
        case OPT_ROUND:
            if (!cli_parse_long(cmd, "--round", optarg, 1, INT64_MAX / 2, round))
                return CLI_USAGE;
            break;
        case OPT_CHUNK:
            if (!cli_parse_long(cmd, "--chunk-size", optarg, OTA_XFER_CHUNK_MIN_BYTES,
                                OTA_XFER_CHUNK_MAX_BYTES, &o->chunk_size))
                return CLI_USAGE;
            break;
        case OPT_TIMEOUT:
            if (!cli_parse_long(cmd, "--timeout", optarg, 1, 86400, &o->timeout_s))
                return CLI_USAGE;
            break;
        case OPT_SEQ:
            if (!cli_parse_long(cmd, "--seq", optarg, 1, INT64_MAX / 2, &v))
                return CLI_USAGE;
            o->seq = (uint64_t)v;
            break;
        case OPT_CORRUPT:
            if (!cli_parse_long(cmd, "--corrupt-chunk", optarg, 0, INT32_MAX, &o->corrupt_chunk))
                return CLI_USAGE;
            break;
        case OPT_MAXPPL: {
            char *end;
            o->max_ppl = strtod(optarg, &end);
            if (*end || !(o->max_ppl > 0)) {
                cli_error(cmd, "--max-ppl: expected a number above 0, got '%s'", optarg);
                return CLI_USAGE;
            }
            break;
        }
        case 'h': fputs(publish_usage, stdout); return -1;
        default: return cli_bad_option(cmd, argv, c);
        }
    }
    if (!o->broker || !o->seckey || (!o->device == !o->group)) {
        cli_error(cmd, "--broker, -s and one of --device or --group are required");
        return CLI_USAGE;
    }
    return CLI_OK;
}

int fleet_publish_main(int argc, char **argv)
{
    pub_opts o;
    long round;
    int rc = parse_pub(argc, argv, &o, &round);
    if (rc)
        return rc < 0 ? CLI_OK : rc;
    if (!o.model == !o.delta || !o.version || optind < argc || (o.delta && o.base)) {
        cli_error(cmd, "publish: --version N and one of --model NEW.gguf or --delta DELTA are "
                       "required (and nothing else; --base goes with --model)");
        return CLI_USAGE;
    }
    if (o.url && o.base) {
        cli_error(cmd, "publish: --url with --base: the URL must serve the delta itself; make "
                       "it with `outpost ota diff` and pass it with --delta");
        return CLI_USAGE;
    }
    if (sodium_init() < 0) {
        cli_error(cmd, "libsodium failed to initialise");
        return CLI_FAIL;
    }
    char err[256], delta_path[64] = "";
    const char *payload = o.delta ? o.delta : o.model;
    int status = CLI_FAIL;
    ota_manifest *mf = NULL;
    if (o.base) {
        snprintf(delta_path, sizeof delta_path, "/tmp/outpost-delta.XXXXXX");
        int fd = mkstemp(delta_path);
        if (fd < 0) {
            cli_error(cmd, "cannot create a temporary file for the delta");
            return CLI_FAIL;
        }
        close(fd);
        ota_delta_stats st;
        double t0 = cli_now();
        if (ota_delta_diff(o.base, o.model, delta_path, NULL, &st, err)) {
            cli_error(cmd, "delta: %s", err);
            goto out;
        }
        fprintf(stderr, "outpost fleet: delta %s -> %s: %" PRIu64 " bytes (target %" PRIu64
                ", %.1f%%) in %.1f s\n", o.base, o.model, st.delta_bytes, st.target_bytes,
                st.target_bytes ? 100.0 * (double)st.delta_bytes / (double)st.target_bytes : 0,
                cli_now() - t0);
        payload = delta_path;
    }
    if (ota_manifest_from_file(payload,
                               o.base || o.delta ? OTA_MANIFEST_DELTA : OTA_MANIFEST_FULL,
                               (uint64_t)o.version, (uint32_t)o.chunk_size, &mf, err) ||
        ((o.probe || o.expect || o.max_ppl > 0) &&
         ota_manifest_set_health(mf, o.probe ? o.probe : "Hello", o.expect, o.max_ppl, err))) {
        cli_error(cmd, "manifest: %s", err);
        goto out;
    }
    status = send_update(&o, "model.offer", payload, mf, 0);
out:
    ota_manifest_free(mf);
    if (delta_path[0])
        unlink(delta_path);
    return status;
}

int fleet_adapter_main(int argc, char **argv)
{
    pub_opts o;
    long round;
    int rc = parse_pub(argc, argv, &o, &round);
    if (rc)
        return rc < 0 ? CLI_OK : rc;
    if (!round || optind != argc - 1 || o.model || o.base || o.delta) {
        cli_error(cmd, "adapter: --round N and one ADAPTER.gguf are required");
        return CLI_USAGE;
    }
    if (sodium_init() < 0) {
        cli_error(cmd, "libsodium failed to initialise");
        return CLI_FAIL;
    }
    ota_manifest *mf = NULL;
    char err[256];
    if (ota_manifest_from_file(argv[optind], OTA_MANIFEST_FULL, (uint64_t)round,
                               (uint32_t)o.chunk_size, &mf, err)) {
        cli_error(cmd, "manifest: %s", err);
        return CLI_FAIL;
    }
    int status = send_update(&o, "adapter.set", argv[optind], mf, round);
    ota_manifest_free(mf);
    return status;
}
