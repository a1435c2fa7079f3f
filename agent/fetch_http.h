/*
 * fetch_http.h - the boundary between the agent and outpost-fetch.so, the
 * module that downloads an OTA payload named by URL (HTTPS, libcurl), so
 * that the daemon maps libcurl and its TLS, LDAP, SSH and Kerberos
 * libraries only once an offer names a URL (the agent's RSS, issue P3; the
 * same reason as client_http.h and agent/mqtt_dl.c).
 *
 * One call is one GET: from offset_bytes on (a "Range: bytes=N-" request
 * when N > 0), the body handed to on_data as it arrives, each piece with its
 * place in the file: a server that honours the range answers 206 and the
 * first byte is at offset_bytes; one that ignores it answers 200 and the
 * body starts at 0 (the caller skips what it has). Retries, backoff, resume
 * and every hash check belong to the caller (agent/fleet_ota.c); the module
 * only moves bytes.
 *
 * Invariants: https only (CURLOPT_PROTOCOLS_STR, redirects too, at most 5);
 * the peer's certificate and host name are verified (against ca_file when
 * given, else the system's store); a status >= 400 is an error with no data
 * delivered; connect_timeout_s bounds the connection, and a transfer slower
 * than low_speed_bytes per second for low_speed_time_s is cut; at most
 * max_bytes body bytes are accepted (0: no limit).
 *
 * The module exports one object, `outpost_fetch_http` (FETCH_HTTP_SYMBOL),
 * whose abi_version must equal FETCH_HTTP_ABI_VERSION and whose struct_size
 * must be at least the agent's sizeof(fetch_http_ops). Where it is: an
 * outpost run from its build tree loads <build>/agent/outpost-fetch.so; an
 * installed one libdir/outpost/outpost-fetch.so (agent/serve.c picks).
 *
 * Threads: get() may be called from any one thread at a time per request;
 * libcurl's global state is set up once (pthread_once) and never torn down.
 * Ownership: nothing the module returns is allocated; req is borrowed.
 */
#ifndef OUTPOST_FETCH_HTTP_H
#define OUTPOST_FETCH_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FETCH_HTTP_ABI_VERSION 1u
#define FETCH_HTTP_SYMBOL "outpost_fetch_http"
#define FETCH_HTTP_MODULE "outpost-fetch.so"

/* at_bytes: where p[0] sits in the file. Return false to stop the transfer
 * (get then fails with stopped set). */
typedef bool (*fetch_http_data_fn)(void *ud, uint64_t at_bytes, const void *p, size_t n);

typedef struct fetch_http_req {
    const char *url;        /* https://... */
    uint64_t offset_bytes;  /* 0: the whole file */
    uint64_t max_bytes;     /* the file's size: no more is accepted (0: no limit) */
    const char *ca_file;    /* PEM CA bundle; NULL: the system's */
    long connect_timeout_s;
    long low_speed_bytes, low_speed_time_s;
    fetch_http_data_fn on_data;
    /* Polled about once a second, also while connecting or stalled (NULL:
     * never): true stops the transfer (get then fails with stopped set). */
    bool (*cancelled)(void *ud);
    void *ud; /* for on_data and cancelled */
} fetch_http_req;

typedef struct fetch_http_result {
    long status;          /* HTTP status; 0 when no response arrived */
    uint64_t body_bytes;  /* delivered to on_data */
    bool stopped;         /* on_data or cancelled asked to stop */
} fetch_http_result;

typedef struct fetch_http_ops {
    uint32_t abi_version; /* FETCH_HTTP_ABI_VERSION */
    uint32_t struct_size; /* sizeof(fetch_http_ops) in the module */
    /* 0 when the whole body (from the range asked) arrived; -1 with err
     * naming the URL and libcurl's reason otherwise (res says how far it
     * got). */
    int (*get)(const fetch_http_req *req, fetch_http_result *res, char err[256]);
} fetch_http_ops;

#endif
