/*
 * cli_mqtt.c - the operator commands' synchronous MQTT client (see
 * cli_mqtt.h).
 */
#include "cli_mqtt.h"

#include <jansson.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "mqtt_dl.h"
static void done_set(cli_mqtt *m, int *field, int v)
{
    pthread_mutex_lock(&m->mu);
    *field = v;
    pthread_cond_broadcast(&m->cv);
    pthread_mutex_unlock(&m->mu);
}

static void c_conn_ok(void *ctx, MQTTAsync_successData *d)
{
    (void)d;
    cli_mqtt *m = ctx;
    done_set(m, &m->connect_rc, 1);
}

static void c_conn_fail(void *ctx, MQTTAsync_failureData *d)
{
    cli_mqtt *m = ctx;
    pthread_mutex_lock(&m->mu);
    snprintf(m->connect_err, sizeof m->connect_err, "code %d%s%s", d ? d->code : 0,
             d && d->message ? ": " : "", d && d->message ? d->message : "");
    pthread_mutex_unlock(&m->mu);
    done_set(m, &m->connect_rc, -1);
}

static void c_conn_ok5(void *ctx, MQTTAsync_successData5 *d)
{
    (void)d;
    cli_mqtt *m = ctx;
    done_set(m, &m->connect_rc, 1);
}

static void c_conn_fail5(void *ctx, MQTTAsync_failureData5 *d)
{
    cli_mqtt *m = ctx;
    pthread_mutex_lock(&m->mu);
    snprintf(m->connect_err, sizeof m->connect_err, "code %d, reason %d%s%s", d ? d->code : 0,
             d ? (int)d->reasonCode : 0, d && d->message ? ": " : "",
             d && d->message ? d->message : "");
    pthread_mutex_unlock(&m->mu);
    done_set(m, &m->connect_rc, -1);
}

static void c_sub_ok(void *ctx, MQTTAsync_successData *d)
{
    (void)d;
    cli_mqtt *m = ctx;
    done_set(m, &m->sub_rc, 1);
}

static void c_sub_fail(void *ctx, MQTTAsync_failureData *d)
{
    (void)d;
    cli_mqtt *m = ctx;
    done_set(m, &m->sub_rc, -1);
}

static void c_sub_ok5(void *ctx, MQTTAsync_successData5 *d)
{
    cli_mqtt *m = ctx;
    done_set(m, &m->sub_rc, d && d->reasonCode >= MQTTREASONCODE_UNSPECIFIED_ERROR ? -1 : 1);
}

static void c_sub_fail5(void *ctx, MQTTAsync_failureData5 *d)
{
    (void)d;
    cli_mqtt *m = ctx;
    done_set(m, &m->sub_rc, -1);
}

static void c_pub_ok(void *ctx, MQTTAsync_successData *d)
{
    (void)d;
    cli_mqtt *m = ctx;
    done_set(m, &m->pub_rc, 1);
}

static void c_pub_fail(void *ctx, MQTTAsync_failureData *d)
{
    (void)d;
    cli_mqtt *m = ctx;
    done_set(m, &m->pub_rc, -1);
}

static void c_pub_ok5(void *ctx, MQTTAsync_successData5 *d)
{
    cli_mqtt *m = ctx;
    done_set(m, &m->pub_rc, d && d->reasonCode >= MQTTREASONCODE_UNSPECIFIED_ERROR ? -1 : 1);
}

static void c_pub_fail5(void *ctx, MQTTAsync_failureData5 *d)
{
    (void)d;
    cli_mqtt *m = ctx;
    done_set(m, &m->pub_rc, -1);
}

/* A reply whose seq is ours is kept (as the text the device sent). */
static int c_message(void *ctx, char *topic, int topic_len, MQTTAsync_message *msg)
{
    (void)topic_len;
    cli_mqtt *m = ctx;
    json_t *o = msg->payload ? json_loadb(msg->payload, (size_t)msg->payloadlen, 0, NULL) : NULL;
    size_t tl = strlen(topic);
    if (tl > 7 && strcmp(topic + tl - 7, "/status") == 0) {
        json_t *ota_seq = json_object_get(json_object_get(o, "ota"), "seq");
        if (json_is_integer(ota_seq) && (uint64_t)json_integer_value(ota_seq) == m->seq)
            done_set(m, &m->offer_taken, 1);
        json_decref(o);
        MQTTAsync_freeMessage(&msg);
        MQTTAsync_free(topic);
        return 1;
    }
    json_t *seq = json_object_get(o, "seq");
    if (json_is_integer(seq) && (uint64_t)json_integer_value(seq) == m->seq) {
        char *text = malloc((size_t)msg->payloadlen + 1);
        pthread_mutex_lock(&m->mu);
        char **nv = text ? realloc(m->replies, (m->n_replies + 1) * sizeof *nv) : NULL;
        if (nv) {
            memcpy(text, msg->payload, (size_t)msg->payloadlen);
            text[msg->payloadlen] = '\0';
            m->replies = nv;
            m->replies[m->n_replies++] = text;
            pthread_cond_broadcast(&m->cv);
        } else {
            free(text);
        }
        pthread_mutex_unlock(&m->mu);
    }
    json_decref(o);
    MQTTAsync_freeMessage(&msg);
    MQTTAsync_free(topic);
    return 1;
}

static void c_lost(void *ctx, char *cause)
{
    (void)cause;
    cli_mqtt *m = ctx;
    done_set(m, &m->connect_rc, -1);
}

int cli_mqtt_wait(cli_mqtt *m, int *field, double deadline)
{
    pthread_mutex_lock(&m->mu);
    while (*field == 0 && cli_now() < deadline) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&m->cv, &m->mu, &ts);
    }
    int v = *field;
    pthread_mutex_unlock(&m->mu);
    return v;
}



/* mqtt://h:p -> tcp://h:p, mqtts://h:p -> ssl://h:p. */
static char *paho_url(const char *url)
{
    const char *rest = NULL, *scheme = NULL;
    if (strncmp(url, "mqtt://", 7) == 0)
        rest = url + 7, scheme = "tcp";
    else if (strncmp(url, "mqtts://", 8) == 0)
        rest = url + 8, scheme = "ssl";
    const char *colon = rest ? strrchr(rest, ':') : NULL;
    if (!rest || !colon || colon == rest || !colon[1] ||
        strspn(colon + 1, "0123456789") != strlen(colon + 1) || strchr(rest, '/'))
        return NULL;
    size_t n = strlen(rest) + 7;
    char *out = malloc(n);
    if (out)
        snprintf(out, n, "%s://%s", scheme, rest);
    return out;
}

int cli_mqtt_open(cli_mqtt *m, const cli_broker *b, double timeout_s, char err[256])
{
    memset(m, 0, sizeof *m);
    pthread_mutex_init(&m->mu, NULL);
    pthread_cond_init(&m->cv, NULL);
    m->version = b->version;
    if (mqtt_dl_load(err))
        return CLI_FAIL;
    char *url = paho_url(b->url);
    if (!url) {
        snprintf(err, 256, "--broker: '%s' is not mqtt://host:port or mqtts://host:port",
                 b->url);
        return CLI_USAGE;
    }
    uint8_t rnd[6];
    randombytes_buf(rnd, sizeof rnd);
    char id[40];
    snprintf(id, sizeof id, "outpost-cli-%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2],
             rnd[3], rnd[4], rnd[5]);
    MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer;
    co.MQTTVersion = b->version == 5 ? MQTTVERSION_5 : MQTTVERSION_3_1_1;
    int rc = MQTTAsync_createWithOptions(&m->client, url, id, MQTTCLIENT_PERSISTENCE_NONE, NULL,
                                         &co);
    bool tls = strncmp(url, "ssl://", 6) == 0;
    free(url);
    if (rc != MQTTASYNC_SUCCESS) {
        m->client = NULL;
        snprintf(err, 256, "%s: %s", b->url, MQTTAsync_strerror(rc));
        return CLI_FAIL;
    }
    MQTTAsync_setCallbacks(m->client, m, c_lost, c_message, NULL);
    MQTTAsync_connectOptions o3 = MQTTAsync_connectOptions_initializer;
    MQTTAsync_connectOptions o5 = MQTTAsync_connectOptions_initializer5;
    MQTTAsync_connectOptions *o = b->version == 5 ? &o5 : &o3;
    MQTTAsync_SSLOptions ssl = MQTTAsync_SSLOptions_initializer;
    o->context = m;
    o->keepAliveInterval = 30;
    o->connectTimeout = (int)(timeout_s < 1 ? 1 : timeout_s);
    o->username = b->username;
    o->password = getenv("OUTPOST_MQTT_PASSWORD");
    if (b->version == 5) {
        o->cleanstart = 1;
        o->onSuccess5 = c_conn_ok5;
        o->onFailure5 = c_conn_fail5;
    } else {
        o->MQTTVersion = MQTTVERSION_3_1_1;
        o->cleansession = 1;
        o->onSuccess = c_conn_ok;
        o->onFailure = c_conn_fail;
    }
    if (tls) {
        ssl.trustStore = b->ca;
        ssl.keyStore = b->cert;
        ssl.privateKey = b->key;
        ssl.enableServerCertAuth = 1;
        ssl.verify = 1;
        o->ssl = &ssl;
    }
    if ((rc = MQTTAsync_connect(m->client, o)) != MQTTASYNC_SUCCESS) {
        snprintf(err, 256, "%s: connect: %s", b->url, MQTTAsync_strerror(rc));
        return CLI_FAIL;
    }
    if (cli_mqtt_wait(m, &m->connect_rc, cli_now() + timeout_s + 1) != 1) {
        snprintf(err, 256, "%s: cannot connect (%s)", b->url,
                 m->connect_err[0] ? m->connect_err : "timed out");
        return CLI_FAIL;
    }
    return CLI_OK;
}

void cli_mqtt_close(cli_mqtt *m)
{
    if (m->client) {
        if (MQTTAsync_isConnected(m->client)) {
            MQTTAsync_disconnectOptions d = MQTTAsync_disconnectOptions_initializer;
            d.timeout = 1000;
            MQTTAsync_disconnect(m->client, &d);
            for (int i = 0; i < 100 && MQTTAsync_isConnected(m->client); i++)
                usleep(10000);
        }
        MQTTAsync_destroy(&m->client);
    }
    for (size_t i = 0; i < m->n_replies; i++)
        free(m->replies[i]);
    free(m->replies);
    pthread_mutex_destroy(&m->mu);
    pthread_cond_destroy(&m->cv);
}

int cli_mqtt_subscribe(cli_mqtt *m, const char *topic, double timeout_s, char err[256])
{
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    ro.context = m;
    if (m->version == 5) {
        ro.onSuccess5 = c_sub_ok5;
        ro.onFailure5 = c_sub_fail5;
    } else {
        ro.onSuccess = c_sub_ok;
        ro.onFailure = c_sub_fail;
    }
    m->sub_rc = 0;
    int rc = MQTTAsync_subscribe(m->client, topic, 1, &ro);
    if (rc != MQTTASYNC_SUCCESS || cli_mqtt_wait(m, &m->sub_rc, cli_now() + timeout_s) != 1) {
        snprintf(err, 256, "subscribe to %s: %s", topic,
                 rc != MQTTASYNC_SUCCESS ? MQTTAsync_strerror(rc) : "refused or timed out");
        return CLI_FAIL;
    }
    return CLI_OK;
}

int cli_mqtt_publish(cli_mqtt *m, const char *topic, const void *data, size_t len,
                        double timeout_s, char err[256])
{
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    ro.context = m;
    if (m->version == 5) {
        ro.onSuccess5 = c_pub_ok5;
        ro.onFailure5 = c_pub_fail5;
    } else {
        ro.onSuccess = c_pub_ok;
        ro.onFailure = c_pub_fail;
    }
    MQTTAsync_message msg = MQTTAsync_message_initializer;
    msg.payload = (void *)data;
    msg.payloadlen = (int)len;
    msg.qos = 1;
    m->pub_rc = 0;
    int rc = MQTTAsync_sendMessage(m->client, topic, &msg, &ro);
    if (rc != MQTTASYNC_SUCCESS || cli_mqtt_wait(m, &m->pub_rc, cli_now() + timeout_s) != 1) {
        snprintf(err, 256, "publish to %s: %s", topic,
                 rc != MQTTASYNC_SUCCESS ? MQTTAsync_strerror(rc) : "not acknowledged in time");
        return CLI_FAIL;
    }
    return CLI_OK;
}

size_t cli_mqtt_wait_replies(cli_mqtt *m, size_t have, double deadline)
{
    pthread_mutex_lock(&m->mu);
    while (m->n_replies <= have && cli_now() < deadline) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&m->cv, &m->mu, &ts);
    }
    size_t n = m->n_replies;
    pthread_mutex_unlock(&m->mu);
    return n;
}
