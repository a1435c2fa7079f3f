/*
 * http.h - the agent's HTTP front (the http_ module): the OpenAI-compatible
 * API and the agent's own routes, served with libmicrohttpd on a Unix socket
 * and optionally on TCP.
 *
 * Who may talk to it: on the socket, a peer whose uid (SO_PEERCRED) is root,
 * the agent's own uid or in allowed_uids, or whose gid (primary or
 * supplementary) is in allowed_gids or is the agent's own gid (the group the
 * socket's mode 0660 lets in). On TCP, any client that sends
 * "Authorization: Bearer <api_key>" when a key is set; without a key the
 * listener only starts on a loopback address. GET /health needs neither.
 * Sessions belong to the peer's uid; every TCP client is one identity,
 * HTTP_TCP_UID.
 *
 * Threads: libmicrohttpd's own pool polls with epoll; no handler blocks.
 * A generation request is parked (connection suspended) while it waits for
 * the engine and resumed by the worker's callbacks, so thousands of idle or
 * waiting connections cost no threads and /health answers in microseconds
 * while the engine is busy.
 *
 * Ownership: the front borrows everything in http_services; the caller keeps
 * them alive until http_stop() returns.
 */
#ifndef OUTPOST_HTTP_H
#define OUTPOST_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "api.h"
#include "cloud.h"
#include "outpost_plugin.h"
#include "pii.h"
#include "pol.h"
#include "scheduler.h"
#include "store.h"

enum {
    HTTP_OK = 0,
    HTTP_EUSAGE = -1,  /* bad options */
    HTTP_ESOCKET = -2, /* a listener could not be created */
    HTTP_ENOMEM = -3,
    HTTP_EDAEMON = -4, /* libmicrohttpd refused to start */
};

/* The owner uid of sessions created over TCP (no peer credentials there). */
#define HTTP_TCP_UID ((uid_t)0x7ffffffe)

typedef struct http_opts {
    const char *socket_path;     /* NULL: no Unix socket */
    unsigned socket_mode;        /* 0: 0660 */
    const uint32_t *allowed_uids;
    size_t n_allowed_uids;
    const uint32_t *allowed_gids;
    size_t n_allowed_gids;
    const char *tcp_host;        /* NULL: no TCP listener */
    int tcp_port;                /* 0: any free port (see http_tcp_port) */
    const char *api_key;         /* bearer key for TCP; NULL or "": none */
    size_t max_body_bytes;       /* request bodies beyond: 413; 0: 4 MiB */
    const api_limits *limits;    /* what a request may ask; NULL: api_limits_default() */
    unsigned threads;            /* polling threads; 0: 2 */
    unsigned max_connections;    /* 0: 4096 */
    unsigned idle_timeout_s;     /* idle keep-alive connections close; 0: 60 */
    unsigned request_timeout_s;  /* a generation's whole life, queueing included; 0: none */
} http_opts;

/* The services requests are answered with. models[default_model] is what
 * "default" names. peer and cloud have submit == NULL when not configured. */
typedef struct http_services {
    store *st;                   /* NULL: no sessions, no telemetry */
    pol *policy;                 /* NULL: everything local, reason "no_policy" */
    const pii *pii;              /* NULL: no PII scan */
    sched **models;
    size_t n_models;
    size_t default_model;
    sched_backend peer, cloud;
    /* The remote backends behind peer and cloud (NULL: not configured): their
       reachability, RTT and spend go into the policy's env and /metrics. */
    cloud *peer_link, *cloud_link;
    /* POST /v1/policy/reload (and SIGHUP, through the caller): reload the
       policy and what of the config can change at run time. */
    int (*reload)(void *ud, char err[256]);
    void *reload_ud;
} http_services;

/* What the sensor plugins last read (serve.c samples them): the plugin
 * ABI's own record, so facts pass through unchanged. NaN, or -1 for on_ac,
 * when unknown. The policy's env gets battery_pct, on_ac and temp_c (nil
 * when unknown); /metrics shows each known fact as a gauge. */
typedef outpost_sensor_facts http_device_facts;

/* Every fact unknown. */
void http_device_facts_unknown(http_device_facts *f);

typedef struct http_server http_server;

/* Create the listeners and start serving. Until http_set_ready() every
 * route but /health and /metrics answers 503 (loading). */
int http_start(http_server **out, const http_opts *o, char err[256]);

/* Give the front its services and open for requests (ready = true), or
 * answer 503 again (false). Call with ready once the models are loaded. */
void http_set_services(http_server *h, const http_services *svc);
void http_set_ready(http_server *h, bool ready);

/* Replace the device facts routing and /metrics see (copies; any thread).
 * Until the first call every fact is unknown. */
void http_set_device_facts(http_server *h, const http_device_facts *f);

/* The TCP port actually bound (after tcp_port 0), or 0 with no TCP. */
int http_tcp_port(const http_server *h);

/* Change who may connect and the TCP key (config reload). Copies. */
int http_set_access(http_server *h, const uint32_t *uids, size_t n_uids, const uint32_t *gids,
                    size_t n_gids, const char *api_key, char err[256]);

/* Stop accepting connections (the socket file is removed); requests in
 * flight go on. */
void http_close_listeners(http_server *h);

/* Generation requests now running or queued. */
int http_in_flight(http_server *h);

/* Close everything: call after the schedulers are drained (no request may
 * still be waiting for a worker). */
void http_stop(http_server *h);

#endif
