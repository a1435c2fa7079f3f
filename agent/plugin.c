/*
 * plugin.c - dlopen a plugin and check it against the ABI before anything
 * of it runs (see plugin.h and plugins/outpost_plugin.h).
 *
 * The order of checks is the order of trust: the file exists, it loads
 * (RTLD_NOW, so a missing symbol fails here and not in the middle of a
 * request), it exports `outpost_plugin`, the ABI version is ours, the struct
 * is at least as large as ours (a plugin built against an older, shorter
 * struct would make us read past its end), the name matches the file, and
 * the kind's table has every operation. Only then is init() called. The
 * library is opened RTLD_LOCAL so two plugins' symbols never collide.
 */
#include "plugin.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct plug {
    void *handle;
    const outpost_plugin *info;
    char *path;
};

const char *plug_kind_name(outpost_plugin_kind k)
{
    switch (k) {
    case OUTPOST_PLUGIN_BACKEND: return "backend";
    case OUTPOST_PLUGIN_SENSOR: return "sensor";
    case OUTPOST_PLUGIN_HOOK: return "hook";
    }
    return NULL;
}

static bool name_ok(const char *name)
{
    if (!name || !*name || *name == '.' || strlen(name) > 64)
        return false;
    for (const char *p = name; *p; p++) {
        char c = *p;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-'))
            return false;
    }
    return true;
}

/* The kind's table is present, every operation in it set, and the other
 * kinds' tables absent. Returns the missing piece's name, or NULL. */
static const char *kind_table_fault(const outpost_plugin *p)
{
    switch (p->kind) {
    case OUTPOST_PLUGIN_BACKEND:
        if (!p->backend)
            return "the backend table";
        if (!p->backend->open || !p->backend->close || !p->backend->chat || !p->backend->probe)
            return "a backend operation (open, close, chat, probe)";
        return p->sensor || p->hook ? "one kind's table only" : NULL;
    case OUTPOST_PLUGIN_SENSOR:
        if (!p->sensor)
            return "the sensor table";
        if (!p->sensor->open || !p->sensor->close || !p->sensor->read)
            return "a sensor operation (open, close, read)";
        return p->backend || p->hook ? "one kind's table only" : NULL;
    case OUTPOST_PLUGIN_HOOK:
        if (!p->hook)
            return "the hook table";
        if (!p->hook->open || !p->hook->close || !p->hook->outbound)
            return "a hook operation (open, close, outbound)";
        return p->backend || p->sensor ? "one kind's table only" : NULL;
    }
    return "a known kind (backend, sensor, hook)";
}

int plug_load(plug **out, const char *dir, const char *name, const outpost_host *host,
              char err[256])
{
    *out = NULL;
    if (!name_ok(name)) {
        snprintf(err, 256, "plugin name \"%s\": expected 1..64 of [A-Za-z0-9_.-], not starting with '.'",
                 name ? name : "");
        return PLUG_EUSAGE;
    }
    plug *p = calloc(1, sizeof *p);
    size_t n = strlen(dir) + strlen(name) + 5;
    if (!p || !(p->path = malloc(n))) {
        free(p);
        snprintf(err, 256, "plugin %s: out of memory", name);
        return PLUG_ENOMEM;
    }
    snprintf(p->path, n, "%s/%s.so", dir, name);
    int rc;
    if (access(p->path, R_OK) != 0) {
        snprintf(err, 256, "plugin %s: %s: no such readable file", name, p->path);
        rc = PLUG_ENOTFOUND;
        goto fail;
    }
    dlerror();
    p->handle = dlopen(p->path, RTLD_NOW | RTLD_LOCAL);
    if (!p->handle) {
        const char *why = dlerror();
        snprintf(err, 256, "plugin %s: cannot load: %s", p->path, why ? why : "dlopen failed");
        rc = PLUG_EOPEN;
        goto fail;
    }
    dlerror();
    const outpost_plugin *info = dlsym(p->handle, OUTPOST_PLUGIN_SYMBOL);
    if (!info || dlerror()) {
        snprintf(err, 256, "plugin %s: exports no `%s` object (not an Outpost plugin)", p->path,
                 OUTPOST_PLUGIN_SYMBOL);
        rc = PLUG_EABI;
        goto fail;
    }
    if (info->abi_version != OUTPOST_PLUGIN_ABI_VERSION) {
        snprintf(err, 256, "plugin %s: built for plugin ABI %u, this agent speaks ABI %u", p->path,
                 info->abi_version, OUTPOST_PLUGIN_ABI_VERSION);
        rc = PLUG_EABI;
        goto fail;
    }
    if (info->struct_size < sizeof(outpost_plugin)) {
        snprintf(err, 256, "plugin %s: its outpost_plugin is %u bytes, expected at least %zu",
                 p->path, info->struct_size, sizeof(outpost_plugin));
        rc = PLUG_EABI;
        goto fail;
    }
    if (!info->name || strcmp(info->name, name) != 0) {
        snprintf(err, 256, "plugin %s: calls itself \"%s\", expected \"%s\" (its file name)",
                 p->path, info->name ? info->name : "(null)", name);
        rc = PLUG_EABI;
        goto fail;
    }
    const char *fault = kind_table_fault(info);
    if (fault) {
        snprintf(err, 256, "plugin %s: kind %d (%s) lacks %s", p->path, (int)info->kind,
                 plug_kind_name(info->kind) ? plug_kind_name(info->kind) : "unknown", fault);
        rc = PLUG_EABI;
        goto fail;
    }
    if (info->init) {
        char perr[OUTPOST_PLUGIN_ERR_SIZE] = "";
        if (info->init(host, perr)) {
            perr[sizeof perr - 1] = '\0';
            snprintf(err, 256, "plugin %s: init failed: %s", p->path, perr[0] ? perr : "(no reason given)");
            rc = PLUG_EINIT;
            goto fail;
        }
    }
    p->info = info;
    *out = p;
    return PLUG_OK;
fail:
    if (p->handle)
        dlclose(p->handle);
    free(p->path);
    free(p);
    return rc;
}

void plug_unload(plug *p)
{
    if (!p)
        return;
    if (p->info && p->info->fini)
        p->info->fini();
    if (p->handle)
        dlclose(p->handle);
    free(p->path);
    free(p);
}

const outpost_plugin *plug_info(const plug *p)
{
    return p->info;
}

const char *plug_path(const plug *p)
{
    return p->path;
}
