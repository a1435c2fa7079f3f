/*
 * plugin.h - loading plugins (the plug_ module): dlopen a
 * <dir>/<name>.so, check what it exports against the ABI in
 * plugins/outpost_plugin.h, and hand out its operations.
 *
 * A plug owns the dlopen handle; the outpost_plugin it returns points into
 * the loaded object and is valid until plug_unload(). Loading calls the
 * plugin's init() with the host table given (which must outlive the plug);
 * unloading calls fini() and dlclose(). A plugin that fails any check is not
 * kept: plug_load() returns an error naming the file and the fault, and the
 * caller decides whether to go on without it (the agent does).
 */
#ifndef OUTPOST_PLUG_H
#define OUTPOST_PLUG_H

#include "outpost_plugin.h"

enum {
    PLUG_OK = 0,
    PLUG_ENOTFOUND = -1, /* no such file */
    PLUG_EOPEN = -2,     /* dlopen failed (not a shared object, missing symbols) */
    PLUG_EABI = -3,      /* no outpost_plugin symbol, or a mismatched/incomplete one */
    PLUG_EINIT = -4,     /* the plugin's init() failed */
    PLUG_ENOMEM = -5,
    PLUG_EUSAGE = -6,    /* a bad name */
};

typedef struct plug plug;

/* Load <dir>/<name>.so. name: [A-Za-z0-9_.-], not starting with '.'. */
int plug_load(plug **out, const char *dir, const char *name, const outpost_host *host,
              char err[256]);
void plug_unload(plug *p);

const outpost_plugin *plug_info(const plug *p);
const char *plug_path(const plug *p);

/* "backend", "sensor", "hook"; NULL for an unknown kind. */
const char *plug_kind_name(outpost_plugin_kind k);

#endif
