/*
 * client_http.c - outpost-client.so: the client commands' HTTP over the
 * agent's Unix socket, with libcurl (CURLOPT_UNIX_SOCKET_PATH). See
 * client_http.h for why this is a module of its own.
 *
 * Each request is one easy handle inside a curl_global_init/cleanup pair
 * (the commands are single-threaded and make at most a few requests). A
 * streamed reply is cut into events as bytes arrive: an event ends with a
 * blank line (the agent writes "data: ...\n\n"), is handed to on_event and
 * dropped from the buffer, so a long reply never accumulates.
 */
#include "client_http.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct xfer {
    client_http_reply *out;
    client_http_event_fn on_event;
    void *ud;
    bool stop; /* on_event asked to stop: the write error that follows is ours */
} xfer;

static size_t on_data(char *p, size_t size, size_t n, void *arg)
{
    xfer *x = arg;
    client_http_reply *r = x->out;
    size_t k = size * n;
    char *b = realloc(r->body, r->len + k + 1);
    if (!b)
        return 0;
    r->body = b;
    memcpy(r->body + r->len, p, k);
    r->len += k;
    r->body[r->len] = '\0';
    if (!x->on_event)
        return k;
    size_t used = 0;
    for (char *end; !x->stop && (end = strstr(r->body + used, "\n\n"));) {
        *end = '\0';
        const char *line = r->body + used;
        if (!strncmp(line, "data: ", 6))
            x->stop = !x->on_event(x->ud, line + 6, (size_t)(end - line) - 6);
        used = (size_t)(end - r->body) + 2;
    }
    memmove(r->body, r->body + used, r->len - used + 1);
    r->len -= used;
    return x->stop ? 0 : k;
}

static int client_request(const char *sock, const char *method, const char *path,
                          const char *body, client_http_event_fn on_event, void *ud,
                          client_http_reply *out, char err[256])
{
    *out = (client_http_reply){0};
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        snprintf(err, 256, "libcurl did not initialise");
        return -1;
    }
    CURL *curl = curl_easy_init();
    struct curl_slist *hdr = curl_slist_append(NULL, "Content-Type: application/json");
    if (!curl || !hdr) {
        snprintf(err, 256, "cannot initialise libcurl (out of memory)");
        curl_slist_free_all(hdr);
        curl_easy_cleanup(curl);
        curl_global_cleanup();
        return -1;
    }
    char url[512];
    snprintf(url, sizeof url, "http://localhost%s", path);
    xfer x = {.out = out, .on_event = on_event, .ud = ud};
    curl_easy_setopt(curl, CURLOPT_UNIX_SOCKET_PATH, sock);
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &x);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, 10L);
    if (body) {
        curl_easy_setopt(curl, CURLOPT_HTTPHEADER, hdr);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
    }
    if (method)
        curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
    CURLcode rc = curl_easy_perform(curl);
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &out->status);
    curl_slist_free_all(hdr);
    curl_easy_cleanup(curl);
    curl_global_cleanup();
    if (rc != CURLE_OK && !(rc == CURLE_WRITE_ERROR && x.stop)) {
        snprintf(err, 256, "%s: %s", sock, curl_easy_strerror(rc));
        return -1;
    }
    return 0;
}

__attribute__((visibility("default"))) extern const client_http_ops outpost_client_http;
const client_http_ops outpost_client_http = {
    .abi_version = CLIENT_HTTP_ABI_VERSION,
    .struct_size = sizeof(client_http_ops),
    .request = client_request,
};
