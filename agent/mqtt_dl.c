/*
 * mqtt_dl.c - Eclipse Paho C (libpaho-mqtt3as), loaded only when MQTT is
 * first used.
 *
 * Why: the outpost binary is both the daemon and the fleet CLI. Linking
 * Paho would map it, and OpenSSL with it (~3 MB resident), into every
 * agent, fleet configured or not. So nothing links Paho: this file defines
 * the Paho functions Outpost calls, with Paho's own prototypes (from
 * MQTTAsync.h, so the compiler checks them), and each forwards to the
 * library's function, looked up with dlopen/dlsym on first use. Callers
 * (fleet.c, cmd_fleet*.c, fleet_ota.c) write ordinary Paho calls.
 *
 * Invariants: the library is opened once (pthread_once) and never closed
 * (Paho keeps threads); if it cannot be opened every call fails the way
 * Paho reports failure (MQTTASYNC_FAILURE; void calls do nothing) and
 * mqtt_dl_load() says why. A Paho function used elsewhere and missing here
 * is a link error: add a row to `syms` and a forwarder below.
 */
#include "mqtt_dl.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

/* The Debian runtime package libpaho-mqtt1.3 ships the versioned name; the
 * unversioned one comes with -dev (and other distributions). */
static const char *const lib_names[] = {"libpaho-mqtt3as.so.1", "libpaho-mqtt3as.so"};

static struct {
    __typeof__(&MQTTAsync_setCallbacks) setCallbacks;
    __typeof__(&MQTTAsync_create) create;
    __typeof__(&MQTTAsync_createWithOptions) createWithOptions;
    __typeof__(&MQTTAsync_connect) connect;
    __typeof__(&MQTTAsync_disconnect) disconnect;
    __typeof__(&MQTTAsync_isConnected) isConnected;
    __typeof__(&MQTTAsync_subscribe) subscribe;
    __typeof__(&MQTTAsync_subscribeMany) subscribeMany;
    __typeof__(&MQTTAsync_unsubscribe) unsubscribe;
    __typeof__(&MQTTAsync_send) send;
    __typeof__(&MQTTAsync_sendMessage) sendMessage;
    __typeof__(&MQTTAsync_getPendingTokens) getPendingTokens;
    __typeof__(&MQTTAsync_waitForCompletion) waitForCompletion;
    __typeof__(&MQTTAsync_freeMessage) freeMessage;
    __typeof__(&MQTTAsync_free) free_;
    __typeof__(&MQTTAsync_destroy) destroy;
    __typeof__(&MQTTAsync_strerror) strerror_;
    __typeof__(&MQTTProperties_add) propsAdd;
    __typeof__(&MQTTProperties_free) propsFree;
} api;

#define SYM(field, name) {name, offsetof(__typeof__(api), field)}
static const struct {
    const char *name;
    size_t off;
} syms[] = {
    SYM(setCallbacks, "MQTTAsync_setCallbacks"),
    SYM(create, "MQTTAsync_create"),
    SYM(createWithOptions, "MQTTAsync_createWithOptions"),
    SYM(connect, "MQTTAsync_connect"),
    SYM(disconnect, "MQTTAsync_disconnect"),
    SYM(isConnected, "MQTTAsync_isConnected"),
    SYM(subscribe, "MQTTAsync_subscribe"),
    SYM(subscribeMany, "MQTTAsync_subscribeMany"),
    SYM(unsubscribe, "MQTTAsync_unsubscribe"),
    SYM(send, "MQTTAsync_send"),
    SYM(sendMessage, "MQTTAsync_sendMessage"),
    SYM(getPendingTokens, "MQTTAsync_getPendingTokens"),
    SYM(waitForCompletion, "MQTTAsync_waitForCompletion"),
    SYM(freeMessage, "MQTTAsync_freeMessage"),
    SYM(free_, "MQTTAsync_free"),
    SYM(destroy, "MQTTAsync_destroy"),
    SYM(strerror_, "MQTTAsync_strerror"),
    SYM(propsAdd, "MQTTProperties_add"),
    SYM(propsFree, "MQTTProperties_free"),
};

static pthread_once_t once = PTHREAD_ONCE_INIT;
static bool loaded;
static char load_err[256];

static void load_once(void)
{
    void *h = NULL;
    const char *why = "";
    for (size_t i = 0; i < sizeof lib_names / sizeof lib_names[0] && !h; i++) {
        h = dlopen(lib_names[i], RTLD_NOW | RTLD_LOCAL);
        if (!h && i == 0) {
            const char *e = dlerror();
            why = e ? e : "";
            snprintf(load_err, sizeof load_err, "%s", why);
        }
    }
    if (!h) {
        char first[200];
        snprintf(first, sizeof first, "%s", load_err);
        snprintf(load_err, sizeof load_err,
                 "MQTT: cannot load %s (%.160s); install the Eclipse Paho C library "
                 "(Debian: libpaho-mqtt1.3)", lib_names[0], first);
        return;
    }
    for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++) {
        void *p = dlsym(h, syms[i].name);
        if (!p) {
            snprintf(load_err, sizeof load_err, "MQTT: %s has no %s (Paho C 1.3 or later needed)",
                     lib_names[0], syms[i].name);
            memset(&api, 0, sizeof api);
            return; /* the handle stays open: harmless, and never reopened */
        }
        memcpy((char *)&api + syms[i].off, &p, sizeof p);
    }
    loaded = true;
}

int mqtt_dl_load(char err[256])
{
    pthread_once(&once, load_once);
    if (!loaded) {
        snprintf(err, 256, "%s", load_err);
        return -1;
    }
    return 0;
}

static bool ready(void)
{
    pthread_once(&once, load_once);
    return loaded;
}

/* ---- the forwarders (Paho's prototypes) ------------------------------------ */

int MQTTAsync_setCallbacks(MQTTAsync handle, void *context, MQTTAsync_connectionLost *cl,
                           MQTTAsync_messageArrived *ma, MQTTAsync_deliveryComplete *dc)
{
    return ready() ? api.setCallbacks(handle, context, cl, ma, dc) : MQTTASYNC_FAILURE;
}

int MQTTAsync_create(MQTTAsync *handle, const char *serverURI, const char *clientId,
                     int persistence_type, void *persistence_context)
{
    return ready() ? api.create(handle, serverURI, clientId, persistence_type, persistence_context)
                   : MQTTASYNC_FAILURE;
}

int MQTTAsync_createWithOptions(MQTTAsync *handle, const char *serverURI, const char *clientId,
                                int persistence_type, void *persistence_context,
                                MQTTAsync_createOptions *options)
{
    return ready() ? api.createWithOptions(handle, serverURI, clientId, persistence_type,
                                           persistence_context, options)
                   : MQTTASYNC_FAILURE;
}

int MQTTAsync_connect(MQTTAsync handle, const MQTTAsync_connectOptions *options)
{
    return ready() ? api.connect(handle, options) : MQTTASYNC_FAILURE;
}

int MQTTAsync_disconnect(MQTTAsync handle, const MQTTAsync_disconnectOptions *options)
{
    return ready() ? api.disconnect(handle, options) : MQTTASYNC_FAILURE;
}

int MQTTAsync_isConnected(MQTTAsync handle)
{
    return ready() ? api.isConnected(handle) : 0;
}

int MQTTAsync_subscribe(MQTTAsync handle, const char *topic, int qos,
                        MQTTAsync_responseOptions *response)
{
    return ready() ? api.subscribe(handle, topic, qos, response) : MQTTASYNC_FAILURE;
}

int MQTTAsync_subscribeMany(MQTTAsync handle, int count, char *const *topic, const int *qos,
                            MQTTAsync_responseOptions *response)
{
    return ready() ? api.subscribeMany(handle, count, topic, qos, response) : MQTTASYNC_FAILURE;
}

int MQTTAsync_unsubscribe(MQTTAsync handle, const char *topic,
                          MQTTAsync_responseOptions *response)
{
    return ready() ? api.unsubscribe(handle, topic, response) : MQTTASYNC_FAILURE;
}

int MQTTAsync_send(MQTTAsync handle, const char *destinationName, int payloadlen,
                   const void *payload, int qos, int retained, MQTTAsync_responseOptions *response)
{
    return ready() ? api.send(handle, destinationName, payloadlen, payload, qos, retained, response)
                   : MQTTASYNC_FAILURE;
}

int MQTTAsync_sendMessage(MQTTAsync handle, const char *destinationName,
                          const MQTTAsync_message *msg, MQTTAsync_responseOptions *response)
{
    return ready() ? api.sendMessage(handle, destinationName, msg, response) : MQTTASYNC_FAILURE;
}

int MQTTAsync_getPendingTokens(MQTTAsync handle, MQTTAsync_token **tokens)
{
    return ready() ? api.getPendingTokens(handle, tokens) : MQTTASYNC_FAILURE;
}

int MQTTAsync_waitForCompletion(MQTTAsync handle, MQTTAsync_token token, unsigned long timeout)
{
    return ready() ? api.waitForCompletion(handle, token, timeout) : MQTTASYNC_FAILURE;
}

void MQTTAsync_freeMessage(MQTTAsync_message **msg)
{
    if (ready())
        api.freeMessage(msg);
}

void MQTTAsync_free(void *ptr)
{
    if (ready())
        api.free_(ptr);
}

void MQTTAsync_destroy(MQTTAsync *handle)
{
    if (ready())
        api.destroy(handle);
}

const char *MQTTAsync_strerror(int code)
{
    return ready() ? api.strerror_(code) : "the Paho MQTT library is not available";
}

int MQTTProperties_add(MQTTProperties *props, const MQTTProperty *prop)
{
    return ready() ? api.propsAdd(props, prop) : -1;
}

void MQTTProperties_free(MQTTProperties *properties)
{
    if (ready())
        api.propsFree(properties);
}
