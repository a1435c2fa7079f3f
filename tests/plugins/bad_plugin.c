/*
 * bad_plugin.c - deliberately broken plugins for the loader's refusal tests
 * (tests/test_plugins.c). One source, built once per fault with
 * -DBAD_<FAULT> into bad-<fault>.so (tests/plugins/meson.build):
 *   BAD_NOSYM  exports no outpost_plugin object at all
 *   BAD_UNDEF  needs a symbol nothing defines (dlopen with RTLD_NOW fails)
 *   BAD_ABI    claims plugin ABI 999
 *   BAD_SIZE   claims an outpost_plugin shorter than the agent's
 *   BAD_NAME   calls itself something other than its file name
 *   BAD_TABLE  a sensor whose table lacks read
 *   BAD_INIT   init() fails with a reason
 * Each is otherwise a valid sensor, so exactly one fault is under test.
 */
#include "outpost_plugin.h"

#include <stdio.h>

static int bad_open(const outpost_host *host, const char *root, void **inst,
                    char err[OUTPOST_PLUGIN_ERR_SIZE])
{
    (void)host, (void)root, (void)err;
    *inst = NULL;
    return OUTPOST_OK;
}

static void bad_close(void *inst) { (void)inst; }

static int bad_read(void *inst, outpost_sensor_facts *out, char err[OUTPOST_PLUGIN_ERR_SIZE])
{
    (void)inst, (void)out, (void)err;
    return OUTPOST_OK;
}

#ifdef BAD_UNDEF
extern int outpost_test_symbol_nobody_defines(void);
#endif

static int bad_init(const outpost_host *host, char err[OUTPOST_PLUGIN_ERR_SIZE])
{
    (void)host;
#if defined(BAD_INIT)
    snprintf(err, OUTPOST_PLUGIN_ERR_SIZE, "the test device is on fire");
    return OUTPOST_EIO;
#elif defined(BAD_UNDEF)
    (void)err;
    return outpost_test_symbol_nobody_defines();
#else
    (void)err;
    return OUTPOST_OK;
#endif
}

static const outpost_sensor_ops ops = {
    .open = bad_open,
    .close = bad_close,
#ifndef BAD_TABLE
    .read = bad_read,
#endif
};

#ifdef BAD_NOSYM
/* A plugin-shaped object under another symbol name. */
__attribute__((visibility("default"))) const outpost_plugin not_the_plugin = {
#else
OUTPOST_PLUGIN_EXPORT(bad_plugin) = {
#endif
#ifdef BAD_ABI
    .abi_version = 999,
#else
    .abi_version = OUTPOST_PLUGIN_ABI_VERSION,
#endif
#ifdef BAD_SIZE
    .struct_size = 16,
#else
    .struct_size = sizeof(outpost_plugin),
#endif
#ifdef BAD_NAME
    .name = "someone-else",
#else
    .name = BAD_PLUGIN_NAME,
#endif
    .version = "0",
    .description = "a broken plugin for tests",
    .kind = OUTPOST_PLUGIN_SENSOR,
    .init = bad_init,
    .sensor = &ops,
};

#ifdef BAD_TABLE
/* Keep bad_read referenced so -Werror's unused-function check holds. */
__attribute__((visibility("default"))) int (*const bad_read_ref)(
    void *, outpost_sensor_facts *, char *) = bad_read;
#endif
