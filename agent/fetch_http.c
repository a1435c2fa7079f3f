/*
 * fetch_http.c - outpost-fetch.so: one HTTPS GET of an OTA payload, from a
 * byte offset on, with libcurl (see fetch_http.h for why this is a module
 * and for its invariants).
 *
 * Each get() is one easy handle. The range is asked with CURLOPT_RANGE
 * ("N-"), not CURLOPT_RESUME_FROM, so that a server answering 200 with the
 * whole file is not an error: the body's place in the file follows from the
 * status (206: the offset asked, 200: 0), read once when the first bytes
 * arrive. Nothing here allocates beyond libcurl's own handle.
 */
#include "fetch_http.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc = CURLE_FAILED_INIT;

static void global_init(void)
{
    global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

typedef struct xfer {
    CURL *curl;
    const fetch_http_req *req;
    fetch_http_result *res;
    bool started;
    uint64_t at_bytes; /* the file offset of the next body byte */
    bool too_long;
} xfer;

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    xfer *x = arg;
    size_t k = size * n;
    if (!x->started) {
        long code = 0;
        curl_easy_getinfo(x->curl, CURLINFO_RESPONSE_CODE, &code);
        x->res->status = code;
        x->at_bytes = code == 206 ? x->req->offset_bytes : 0;
        x->started = true;
    }
    if (k == 0)
        return 0;
    if (x->req->max_bytes && (x->at_bytes > x->req->max_bytes ||
                              k > x->req->max_bytes - x->at_bytes)) {
        x->too_long = true;
        return 0;
    }
    if (!x->req->on_data(x->req->ud, x->at_bytes, p, k)) {
        x->res->stopped = true;
        return 0;
    }
    x->at_bytes += k;
    x->res->body_bytes += k;
    return k;
}

static int on_progress(void *arg, curl_off_t dl_total, curl_off_t dl_now, curl_off_t ul_total,
                       curl_off_t ul_now)
{
    (void)dl_total, (void)dl_now, (void)ul_total, (void)ul_now;
    xfer *x = arg;
    if (x->req->cancelled && x->req->cancelled(x->req->ud)) {
        x->res->stopped = true;
        return 1;
    }
    return 0;
}

static int fetch_get(const fetch_http_req *req, fetch_http_result *res, char err[256])
{
    *res = (fetch_http_result){0};
    pthread_once(&global_once, global_init);
    if (global_rc != CURLE_OK) {
        snprintf(err, 256, "libcurl did not initialise: %s", curl_easy_strerror(global_rc));
        return -1;
    }
    if (!req->url || strncmp(req->url, "https://", 8) != 0 || !req->on_data) {
        snprintf(err, 256, "url \"%.120s\": only https:// URLs are fetched",
                 req->url ? req->url : "");
        return -1;
    }
    CURL *curl = curl_easy_init();
    if (!curl) {
        snprintf(err, 256, "cannot initialise libcurl (out of memory)");
        return -1;
    }
    xfer x = {.curl = curl, .req = req, .res = res};
    char range[48];
    snprintf(range, sizeof range, "%llu-", (unsigned long long)req->offset_bytes);
    char curl_err[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(curl, CURLOPT_URL, req->url);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(curl, CURLOPT_REDIR_PROTOCOLS_STR, "https");
    curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(curl, CURLOPT_MAXREDIRS, 5L);
    curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 2L);
    if (req->ca_file)
        curl_easy_setopt(curl, CURLOPT_CAINFO, req->ca_file);
    if (req->offset_bytes > 0)
        curl_easy_setopt(curl, CURLOPT_RANGE, range);
    curl_easy_setopt(curl, CURLOPT_FAILONERROR, 1L);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, req->connect_timeout_s);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, req->low_speed_bytes);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, req->low_speed_time_s);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &x);
    curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(curl, CURLOPT_XFERINFODATA, &x);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, curl_err);
    curl_easy_setopt(curl, CURLOPT_USERAGENT, "outpost-ota");
    CURLcode rc = curl_easy_perform(curl);
    long code = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &code);
    res->status = code;
    curl_easy_cleanup(curl);
    if (rc == CURLE_OK)
        return 0;
    if (x.too_long)
        snprintf(err, 256, "%.120s: serves more than the %llu bytes announced", req->url,
                 (unsigned long long)req->max_bytes);
    else if (res->stopped)
        snprintf(err, 256, "%.120s: transfer stopped", req->url);
    else
        snprintf(err, 256, "%.120s: %s%s%s (HTTP %ld, %llu bytes from %llu)", req->url,
                 curl_easy_strerror(rc), curl_err[0] ? ": " : "", curl_err, code,
                 (unsigned long long)res->body_bytes, (unsigned long long)req->offset_bytes);
    return -1;
}

__attribute__((visibility("default"))) extern const fetch_http_ops outpost_fetch_http;
const fetch_http_ops outpost_fetch_http = {
    .abi_version = FETCH_HTTP_ABI_VERSION,
    .struct_size = sizeof(fetch_http_ops),
    .get = fetch_get,
};
