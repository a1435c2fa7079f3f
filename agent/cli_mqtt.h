/*
 * cli_mqtt.h - the short-lived synchronous MQTT client of the operator
 * commands (`outpost fleet cmd|publish|adapter`), on Paho's asynchronous API
 * loaded through mqtt_dl.
 *
 * One connection with a clean session; every call waits for the broker's
 * answer (CONNACK, SUBACK, PUBACK) up to its timeout. Paho's callbacks fill
 * the handle under its mutex and signal its condition variable: the caller
 * reads replies / offer_taken under m->mu, or waits with cli_mqtt_wait().
 * Messages on subscribed topics are matched against m->seq: a /resp reply
 * whose "seq" is m->seq is kept (malloc'd text, freed by cli_mqtt_close),
 * a status whose "ota"."seq" is m->seq sets offer_taken.
 */
#ifndef OUTPOST_CLI_MQTT_H
#define OUTPOST_CLI_MQTT_H
#include <pthread.h>
#include <stdint.h>
#include <stddef.h>

#include <MQTTAsync.h>

typedef struct cli_mqtt {
    MQTTAsync client;
    int version;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int connect_rc;  /* 0 pending, 1 ok, -1 failed */
    char connect_err[200];
    int sub_rc;      /* 0 pending, 1 ok, -1 failed */
    int pub_rc;
    /* What arrived for the command with this seq: its /resp replies (texts,
       in order), and whether a status message named it as the device's OTA
       transfer in flight (ota.seq == seq: the device took the offer). */
    uint64_t seq;
    char **replies;
    size_t n_replies;
    int offer_taken; /* 0 not yet, 1 yes */
} cli_mqtt;

/* Where and how to connect: url is mqtt://host:port or mqtts://host:port
 * (then ca, cert, key are the TLS files); version 3 (3.1.1) or 5. */
typedef struct cli_broker {
    const char *url, *ca, *cert, *key, *username;
    int version;
} cli_broker;

/* Connect (waits up to timeout_s). CLI_OK, CLI_USAGE for a bad URL, else
 * CLI_FAIL with err. m is always initialised: close it with cli_mqtt_close. */
int cli_mqtt_open(cli_mqtt *m, const cli_broker *b, double timeout_s, char err[256]);
void cli_mqtt_close(cli_mqtt *m);
int cli_mqtt_subscribe(cli_mqtt *m, const char *topic, double timeout_s, char err[256]);
/* Publish at QoS 1 and wait for the PUBACK. */
int cli_mqtt_publish(cli_mqtt *m, const char *topic, const void *data, size_t len,
                     double timeout_s, char err[256]);
/* Wait until *field (a member of m) is not 0 or the deadline (cli_now()
 * seconds) passed; returns *field. */
int cli_mqtt_wait(cli_mqtt *m, int *field, double deadline);
/* Wait until more than `have` replies arrived or the deadline passed;
 * returns the number of replies (read m->replies[i] under m->mu). */
size_t cli_mqtt_wait_replies(cli_mqtt *m, size_t have, double deadline);

#endif
