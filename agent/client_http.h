/*
 * client_http.h - the boundary between the outpost binary and
 * outpost-client.so, the module that carries the client commands' HTTP
 * transport (libcurl) so that the daemon never maps libcurl and its TLS,
 * LDAP, SSH and Kerberos libraries (the agent's RSS, issue P3).
 *
 * Only `outpost chat`, `outpost status` and `outpost policy reload`
 * (agent/cmd_client.c) dlopen() the module, and only when they run; the
 * commands' flags, JSON and printing stay in the binary. The module exports
 * one object, `outpost_client_http` (CLIENT_HTTP_SYMBOL), whose abi_version
 * must equal CLIENT_HTTP_ABI_VERSION and whose struct_size must be at least
 * the binary's sizeof(client_http_ops); the binary refuses anything else with
 * one line naming the file. Binary and module come from one build, so the
 * version check guards against a stale install, not against third parties.
 *
 * Where the module is: an outpost run from its build tree loads
 * <build>/agent/outpost-client.so; an installed one
 * libdir/outpost/outpost-client.so (meson installs it there).
 *
 * Ownership: a reply's body is malloc'd by the module (same process, same C
 * library) and freed by the caller with free().
 */
#ifndef OUTPOST_CLIENT_HTTP_H
#define OUTPOST_CLIENT_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CLIENT_HTTP_ABI_VERSION 1u
#define CLIENT_HTTP_SYMBOL "outpost_client_http"
#define CLIENT_HTTP_MODULE "outpost-client.so"

/* A streamed reply's Server-Sent Events: data is the text after "data: " of
 * one complete event (len bytes, NUL-terminated in place). Return false to
 * stop reading (the request then ends without an error). */
typedef bool (*client_http_event_fn)(void *ud, const char *data, size_t len);

typedef struct client_http_reply {
    char *body;   /* the whole body, or with on_event what was not an event;
                     NUL-terminated; NULL when nothing arrived */
    size_t len;
    long status;  /* HTTP status; 0 when no response arrived */
} client_http_reply;

typedef struct client_http_ops {
    uint32_t abi_version; /* CLIENT_HTTP_ABI_VERSION */
    uint32_t struct_size; /* sizeof(client_http_ops) in the module */
    /* One HTTP/1.1 request to the agent on the Unix socket sock: GET (body
     * NULL) or POST of a JSON body, or method when not NULL. on_event (may
     * be NULL) gets the reply's events as they arrive. Returns 0 when a
     * response arrived (any status), -1 with err set (the socket, libcurl's
     * reason) when the agent could not be reached or the transfer broke. */
    int (*request)(const char *sock, const char *method, const char *path, const char *body,
                   client_http_event_fn on_event, void *ud, client_http_reply *out,
                   char err[256]);
} client_http_ops;

#endif
