/*
 * test_plugins.c - the in-tree plugins as the agent uses them: the real
 * sensor-linux.so and hook-redact.so, loaded with plug_load from the build
 * tree, and the loader's refusals of broken plugins (tests/plugins/).
 *
 * The sensor reads a fake sysfs/procfs tree built in a temporary directory
 * for each test; the hook redacts with the agent's real PII detector behind
 * a host table like the daemon's. Directories come from the build:
 * OUTPOST_PLUGIN_BUILD_DIR (the in-tree plugins) and OUTPOST_BAD_PLUGIN_DIR.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pii.h"
#include "plugin.h"

#ifndef OUTPOST_PLUGIN_BUILD_DIR
#error "OUTPOST_PLUGIN_BUILD_DIR must name the build tree's plugins directory"
#endif
#ifndef OUTPOST_BAD_PLUGIN_DIR
#error "OUTPOST_BAD_PLUGIN_DIR must name the build tree's tests/plugins directory"
#endif

/* ---- a host like the daemon's ------------------------------------------------------ */

typedef struct test_host {
    pii *detector;
    char last_log[512];
    int n_logs;
} test_host;

static void host_log(void *ctx, const char *plugin, const char *line)
{
    test_host *t = ctx;
    snprintf(t->last_log, sizeof t->last_log, "%s: %s", plugin, line);
    t->n_logs++;
}

static void *host_alloc(void *ctx, size_t size)
{
    (void)ctx;
    return malloc(size);
}

static void host_free(void *ctx, void *p)
{
    (void)ctx;
    free(p);
}

static int host_pii_redact(void *ctx, const char *text, size_t len, char **out, size_t *out_len,
                           size_t *n_found, char err[OUTPOST_PLUGIN_ERR_SIZE])
{
    test_host *t = ctx;
    pii_finding *f = NULL;
    size_t n = 0;
    if (pii_scan(t->detector, text, len, &f, &n, err))
        return OUTPOST_EINPUT;
    free(f);
    if (pii_redact(t->detector, text, len, out, out_len, err))
        return OUTPOST_EINPUT;
    *n_found = n;
    return OUTPOST_OK;
}

typedef struct fixture {
    test_host th;
    outpost_host host;
    char root[64]; /* the fake device's / */
    plug *sensor, *hook;
} fixture;

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof *fx);
    assert_non_null(fx);
    char err[256];
    assert_int_equal(pii_new(&fx->th.detector, err), 0);
    fx->host = (outpost_host){
        .abi_version = OUTPOST_PLUGIN_ABI_VERSION,
        .struct_size = sizeof(outpost_host),
        .ctx = &fx->th,
        .agent_version = "test",
        .log = host_log,
        .alloc = host_alloc,
        .free = host_free,
        .pii_redact = host_pii_redact,
    };
    snprintf(fx->root, sizeof fx->root, "/tmp/outpost-plugins-XXXXXX");
    assert_non_null(mkdtemp(fx->root));
    *state = fx;
    return 0;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static int teardown(void **state)
{
    fixture *fx = *state;
    plug_unload(fx->sensor);
    plug_unload(fx->hook);
    nftw(fx->root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    pii_free(fx->th.detector);
    free(fx);
    return 0;
}

/* ---- the fake tree ----------------------------------------------------------------- */

/* mkdir -p of root/rel's parent directories, then write text to root/rel. */
static void put(const fixture *fx, const char *rel, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", fx->root, rel);
    for (char *p = path + strlen(fx->root) + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            assert_true(mkdir(path, 0755) == 0 || errno == EEXIST);
            *p = '/';
        }
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

/* mkdir -p root/rel (it holds an empty .keep, which sysfs readers skip). */
static void make_dir(const fixture *fx, const char *rel)
{
    char keep[512];
    snprintf(keep, sizeof keep, "%s/.keep", rel);
    put(fx, keep, "");
}

static void *sensor_open_at(fixture *fx, const char *root)
{
    char err[256] = "";
    if (!fx->sensor)
        assert_int_equal(plug_load(&fx->sensor, OUTPOST_PLUGIN_BUILD_DIR, "sensor-linux",
                                   &fx->host, err),
                         PLUG_OK);
    const outpost_sensor_ops *ops = plug_info(fx->sensor)->sensor;
    void *inst = NULL;
    int rc = ops->open(&fx->host, root, &inst, err);
    if (rc)
        fail_msg("sensor-linux open %s: %s", root, err);
    assert_non_null(inst);
    return inst;
}

static outpost_sensor_facts sensor_read_once(fixture *fx, void *inst)
{
    outpost_sensor_facts f;
    memset(&f, 0x55, sizeof f);
    char err[256] = "";
    assert_int_equal(plug_info(fx->sensor)->sensor->read(inst, &f, err), OUTPOST_OK);
    return f;
}

static void sensor_done(fixture *fx, void *inst)
{
    plug_info(fx->sensor)->sensor->close(inst);
}

static void assert_all_unknown(const outpost_sensor_facts *f)
{
    assert_true(isnan(f->battery_pct));
    assert_int_equal(f->on_ac, -1);
    assert_true(isnan(f->temp_c));
    assert_true(isnan(f->cpu_pressure_pct));
    assert_true(isnan(f->mem_pressure_pct));
    assert_true(isnan(f->io_pressure_pct));
}

#define PS "sys/class/power_supply/"
#define TZ "sys/class/thermal/"

/* A laptop on battery: 37 %, discharging, charger unplugged, two zones, PSI. */
static void make_laptop(const fixture *fx)
{
    put(fx, PS "BAT0/type", "Battery\n");
    put(fx, PS "BAT0/present", "1\n");
    put(fx, PS "BAT0/capacity", "37\n");
    put(fx, PS "BAT0/status", "Discharging\n");
    put(fx, PS "AC/type", "Mains\n");
    put(fx, PS "AC/online", "0\n");
    put(fx, TZ "thermal_zone0/type", "acpitz\n");
    put(fx, TZ "thermal_zone0/temp", "45000\n");
    put(fx, TZ "thermal_zone1/type", "x86_pkg_temp\n");
    put(fx, TZ "thermal_zone1/temp", "71500\n");
    put(fx, TZ "cooling_device0/cur_state", "3\n"); /* not a zone */
    put(fx, "proc/pressure/cpu", "some avg10=12.50 avg60=8.00 avg300=2.10 total=123456\n"
                                  "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n");
    put(fx, "proc/pressure/memory", "some avg10=3.25 avg60=1.00 avg300=0.50 total=99\n"
                                     "full avg10=1.00 avg60=0.50 avg300=0.10 total=42\n");
    put(fx, "proc/pressure/io", "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
                                 "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n");
}

/* ---- sensor-linux ------------------------------------------------------------------ */

static void sensor_reads_battery_ac_hottest_zone_and_pressure(void **state)
{
    fixture *fx = *state;
    make_laptop(fx);
    void *inst = sensor_open_at(fx, fx->root);
    /* open says in the log what it found */
    assert_non_null(strstr(fx->th.last_log, "sensor-linux: reading "));
    assert_non_null(strstr(fx->th.last_log, "battery 37.0 %"));
    assert_non_null(strstr(fx->th.last_log, "on battery"));
    outpost_sensor_facts f = sensor_read_once(fx, inst);
    assert_float_equal(f.battery_pct, 37.0, 1e-9);
    assert_int_equal(f.on_ac, 0);
    assert_float_equal(f.temp_c, 71.5, 1e-9);
    assert_float_equal(f.cpu_pressure_pct, 12.5, 1e-9);
    assert_float_equal(f.mem_pressure_pct, 3.25, 1e-9);
    assert_float_equal(f.io_pressure_pct, 0.0, 1e-9);

    /* Each read sees the files as they are now. */
    put(fx, PS "AC/online", "1\n");
    put(fx, PS "BAT0/capacity", "38\n");
    put(fx, PS "BAT0/status", "Charging\n");
    put(fx, TZ "thermal_zone0/temp", "90000\n");
    f = sensor_read_once(fx, inst);
    assert_float_equal(f.battery_pct, 38.0, 1e-9);
    assert_int_equal(f.on_ac, 1);
    assert_float_equal(f.temp_c, 90.0, 1e-9);
    sensor_done(fx, inst);
}

static void sensor_with_an_empty_tree_knows_nothing(void **state)
{
    fixture *fx = *state;
    void *inst = sensor_open_at(fx, fx->root);
    assert_non_null(strstr(fx->th.last_log, "battery unknown"));
    assert_non_null(strstr(fx->th.last_log, "power source unknown"));
    outpost_sensor_facts f = sensor_read_once(fx, inst);
    assert_all_unknown(&f);
    /* Directories without the files in them are no different. */
    make_dir(fx, PS "BAT0");
    make_dir(fx, TZ "thermal_zone0");
    make_dir(fx, "proc/pressure");
    f = sensor_read_once(fx, inst);
    assert_all_unknown(&f);
    sensor_done(fx, inst);
}

static void sensor_refuses_a_root_that_is_not_a_directory(void **state)
{
    fixture *fx = *state;
    char err[256] = "";
    assert_int_equal(plug_load(&fx->sensor, OUTPOST_PLUGIN_BUILD_DIR, "sensor-linux", &fx->host,
                               err),
                     PLUG_OK);
    const outpost_sensor_ops *ops = plug_info(fx->sensor)->sensor;
    char missing[128];
    snprintf(missing, sizeof missing, "%s/no-such-root", fx->root);
    void *inst = (void *)1;
    assert_int_equal(ops->open(&fx->host, missing, &inst, err), OUTPOST_EINPUT);
    assert_null(inst);
    assert_non_null(strstr(err, missing));
    assert_non_null(strstr(err, "No such file"));
    put(fx, "plain-file", "x");
    snprintf(missing, sizeof missing, "%s/plain-file", fx->root);
    assert_int_equal(ops->open(&fx->host, missing, &inst, err), OUTPOST_EINPUT);
    assert_non_null(strstr(err, "not a directory"));
}

static void sensor_malformed_files_are_unknown(void **state)
{
    fixture *fx = *state;
    /* Batteries that say nothing usable. */
    put(fx, PS "BAT0/type", "Battery\n");
    put(fx, PS "BAT0/capacity", "abc\n");
    put(fx, PS "BAT0/status", "Exploding\n");
    put(fx, PS "BAT1/type", "Battery\n");
    put(fx, PS "BAT1/capacity", "150\n");
    put(fx, PS "BAT2/type", "Battery\n");
    put(fx, PS "BAT2/capacity", "99999999999999999999999999999\n");
    put(fx, PS "BAT3/type", "Battery\n");
    put(fx, PS "BAT3/energy_now", "5\n");
    put(fx, PS "BAT3/energy_full", "0\n"); /* no division by zero */
    put(fx, PS "BAT4/type", "\n");
    put(fx, PS "BAT4/capacity", "50\n");
    /* A charger whose online is not a number, one with no type. */
    put(fx, PS "AC/type", "Mains\n");
    put(fx, PS "AC/online", "yes\n");
    put(fx, PS "USB/online", "1\n");
    /* Zones: junk, out of range both ways, empty, a directory, a FIFO that
     * would block a blocking open forever, a file far larger than any
     * attribute (all digits: still no number). */
    put(fx, TZ "thermal_zone0/temp", "hot\n");
    put(fx, TZ "thermal_zone1/temp", "-273150\n");
    put(fx, TZ "thermal_zone2/temp", "2147483647\n");
    put(fx, TZ "thermal_zone3/temp", "");
    make_dir(fx, TZ "thermal_zone4/temp");
    make_dir(fx, TZ "thermal_zone5");
    char fifo[256];
    snprintf(fifo, sizeof fifo, "%s/" TZ "thermal_zone5/temp", fx->root);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    char *big = malloc(100001);
    assert_non_null(big);
    memset(big, '7', 100000);
    big[100000] = '\0';
    put(fx, TZ "thermal_zone6/temp", big);
    free(big);
    put(fx, TZ "thermal_zone7/temp", "45000 extra\n");
    /* Pressure files without a usable "some avg10=". */
    put(fx, "proc/pressure/cpu", "some avg10=abc avg60=0.00\n");
    put(fx, "proc/pressure/memory", "full avg10=5.00 avg60=0.00\n");
    put(fx, "proc/pressure/io", "some avg10=500.00 avg60=0.00\n");

    void *inst = sensor_open_at(fx, fx->root);
    outpost_sensor_facts f = sensor_read_once(fx, inst);
    assert_all_unknown(&f);

    /* Binary junk, NULs included, is no better. */
    char junk[64];
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (char)(i * 37 + 1);
    char path[256];
    snprintf(path, sizeof path, "%s/proc/pressure/cpu", fx->root);
    int fd = open(path, O_WRONLY | O_TRUNC);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, junk, sizeof junk), (ssize_t)sizeof junk);
    assert_int_equal(write(fd, "\0some avg10=1.0", 16), 16);
    close(fd);
    f = sensor_read_once(fx, inst);
    assert_true(isnan(f.cpu_pressure_pct));
    sensor_done(fx, inst);
}

static void sensor_weighs_several_batteries_by_energy(void **state)
{
    fixture *fx = *state;
    put(fx, PS "BAT0/type", "Battery\n");
    put(fx, PS "BAT0/capacity", "10\n");
    put(fx, PS "BAT0/energy_full", "23000000\n");
    put(fx, PS "BAT1/type", "Battery\n");
    put(fx, PS "BAT1/capacity", "90\n");
    put(fx, PS "BAT1/energy_full", "72000000\n");
    void *inst = sensor_open_at(fx, fx->root);
    outpost_sensor_facts f = sensor_read_once(fx, inst);
    assert_float_equal(f.battery_pct, (10.0 * 23 + 90.0 * 72) / 95, 1e-9);
    /* One of them without energy_full: a plain average. */
    char path[256];
    snprintf(path, sizeof path, "%s/" PS "BAT1/energy_full", fx->root);
    assert_int_equal(unlink(path), 0);
    f = sensor_read_once(fx, inst);
    assert_float_equal(f.battery_pct, 50.0, 1e-9);
    sensor_done(fx, inst);
}

static void sensor_battery_without_capacity_uses_now_over_full(void **state)
{
    fixture *fx = *state;
    put(fx, PS "BAT0/type", "Battery\n");
    put(fx, PS "BAT0/energy_now", "15000000\n");
    put(fx, PS "BAT0/energy_full", "60000000\n");
    void *inst = sensor_open_at(fx, fx->root);
    outpost_sensor_facts f = sensor_read_once(fx, inst);
    assert_float_equal(f.battery_pct, 25.0, 1e-9);
    sensor_done(fx, inst);

    /* charge_* (µAh) when there is no energy_*; a worn pack past its full
     * counts as 100. */
    char path[256];
    snprintf(path, sizeof path, "%s/" PS "BAT0/energy_now", fx->root);
    assert_int_equal(unlink(path), 0);
    put(fx, PS "BAT0/charge_now", "3100000\n");
    put(fx, PS "BAT0/charge_full", "3000000\n");
    inst = sensor_open_at(fx, fx->root);
    f = sensor_read_once(fx, inst);
    assert_float_equal(f.battery_pct, 100.0, 1e-9);
    sensor_done(fx, inst);
}

static void sensor_power_source_from_battery_status_without_a_charger(void **state)
{
    fixture *fx = *state;
    put(fx, PS "BAT0/type", "Battery\n");
    put(fx, PS "BAT0/capacity", "80\n");
    put(fx, PS "BAT0/status", "Charging\n");
    void *inst = sensor_open_at(fx, fx->root);
    assert_int_equal(sensor_read_once(fx, inst).on_ac, 1);
    put(fx, PS "BAT0/status", "Full\n");
    assert_int_equal(sensor_read_once(fx, inst).on_ac, 1);
    put(fx, PS "BAT0/status", "Discharging\n");
    assert_int_equal(sensor_read_once(fx, inst).on_ac, 0);
    put(fx, PS "BAT0/status", "Unknown\n");
    assert_int_equal(sensor_read_once(fx, inst).on_ac, -1);
    /* Any online charger decides over a status. */
    put(fx, PS "ucsi-source-psy-1/type", "USB\n");
    put(fx, PS "ucsi-source-psy-1/online", "0\n");
    put(fx, PS "AC0/type", "Mains\n");
    put(fx, PS "AC0/online", "1\n");
    put(fx, PS "BAT0/status", "Discharging\n");
    assert_int_equal(sensor_read_once(fx, inst).on_ac, 1);
    sensor_done(fx, inst);
}

static void sensor_skips_peripheral_and_absent_batteries(void **state)
{
    fixture *fx = *state;
    put(fx, PS "hid-mouse-battery/type", "Battery\n");
    put(fx, PS "hid-mouse-battery/scope", "Device\n");
    put(fx, PS "hid-mouse-battery/capacity", "5\n");
    put(fx, PS "hid-mouse-battery/status", "Discharging\n");
    put(fx, PS "BAT1/type", "Battery\n");
    put(fx, PS "BAT1/present", "0\n");
    put(fx, PS "BAT1/capacity", "0\n");
    void *inst = sensor_open_at(fx, fx->root);
    outpost_sensor_facts f = sensor_read_once(fx, inst);
    assert_true(isnan(f.battery_pct));
    assert_int_equal(f.on_ac, -1);
    put(fx, PS "BAT0/type", "Battery\n");
    put(fx, PS "BAT0/scope", "System\n");
    put(fx, PS "BAT0/capacity", "64\n");
    f = sensor_read_once(fx, inst);
    assert_float_equal(f.battery_pct, 64.0, 1e-9);
    sensor_done(fx, inst);
}

/* ---- hook-redact ------------------------------------------------------------------- */

static char *host_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    assert_non_null(p);
    memcpy(p, s, n);
    return p;
}

static void *hook_open(fixture *fx)
{
    char err[256] = "";
    assert_int_equal(plug_load(&fx->hook, OUTPOST_PLUGIN_BUILD_DIR, "hook-redact", &fx->host, err),
                     PLUG_OK);
    void *inst = NULL;
    assert_int_equal(plug_info(fx->hook)->hook->open(&fx->host, &inst, err), OUTPOST_OK);
    assert_non_null(inst);
    return inst;
}

static void hook_redact_replaces_email_and_card_and_counts_them(void **state)
{
    fixture *fx = *state;
    void *inst = hook_open(fx);
    const outpost_hook_ops *ops = plug_info(fx->hook)->hook;
    outpost_message msgs[3] = {
        {.role = "system", .content = host_strdup("You are helpful.")},
        {.role = "user", .content = host_strdup("Mail jane.doe@example.com the receipt.")},
        {.role = "user", .content = host_strdup("Pay with 4111 1111 1111 1111 today")},
    };
    for (size_t i = 0; i < 3; i++)
        msgs[i].len = strlen(msgs[i].content);
    const char *untouched = msgs[0].content;
    outpost_outbound ob = {.target = "cloud", .redact = true, .messages = msgs, .n_messages = 3,
                           .prompt = host_strdup("card 5555555555554444, bob@example.org"),
                           .n_redacted = 1 /* an earlier hook's count is kept */};
    ob.prompt_len = strlen(ob.prompt);
    char err[256] = "";
    assert_int_equal(ops->outbound(inst, &ob, err), OUTPOST_OK);
    assert_int_equal(ob.n_redacted, 1 + 4);
    assert_ptr_equal(msgs[0].content, untouched); /* no PII: same buffer */
    assert_string_equal(msgs[1].content, "Mail [EMAIL] the receipt.");
    assert_int_equal(msgs[1].len, strlen(msgs[1].content));
    assert_string_equal(msgs[2].content, "Pay with [CARD] today");
    assert_int_equal(msgs[2].len, strlen(msgs[2].content));
    assert_string_equal(ob.prompt, "card [CARD], [EMAIL]");
    assert_int_equal(ob.prompt_len, strlen(ob.prompt));
    for (size_t i = 0; i < 3; i++)
        free((void *)msgs[i].content);
    free(ob.prompt);
    ops->close(inst);
}

static void hook_without_redact_leaves_the_text_alone(void **state)
{
    fixture *fx = *state;
    void *inst = hook_open(fx);
    const outpost_hook_ops *ops = plug_info(fx->hook)->hook;
    char *text = host_strdup("Mail jane.doe@example.com, card 4111 1111 1111 1111");
    outpost_message m = {.role = "user", .content = text, .len = strlen(text)};
    outpost_outbound ob = {.target = "peer", .redact = false, .messages = &m, .n_messages = 1};
    char err[256] = "";
    assert_int_equal(ops->outbound(inst, &ob, err), OUTPOST_OK);
    assert_ptr_equal(m.content, text);
    assert_string_equal(m.content, "Mail jane.doe@example.com, card 4111 1111 1111 1111");
    assert_int_equal(ob.n_redacted, 0);
    assert_null(ob.prompt);
    free(text);
    ops->close(inst);
}

static int failing_redact(void *ctx, const char *text, size_t len, char **out, size_t *out_len,
                          size_t *n_found, char err[OUTPOST_PLUGIN_ERR_SIZE])
{
    (void)ctx, (void)text, (void)len, (void)out, (void)out_len, (void)n_found;
    snprintf(err, OUTPOST_PLUGIN_ERR_SIZE, "detector exploded");
    return OUTPOST_ENOMEM;
}

static void hook_failure_names_the_text_and_stops_the_request(void **state)
{
    fixture *fx = *state;
    void *inst = hook_open(fx);
    const outpost_hook_ops *ops = plug_info(fx->hook)->hook;
    fx->host.pii_redact = failing_redact; /* the hook reads the host at each call */
    char *text = host_strdup("hello");
    outpost_message m = {.role = "user", .content = text, .len = 5};
    outpost_outbound ob = {.target = "cloud", .redact = true, .messages = &m, .n_messages = 1};
    char err[256] = "";
    assert_int_equal(ops->outbound(inst, &ob, err), OUTPOST_ENOMEM);
    assert_non_null(strstr(err, "hook-redact: message 0: detector exploded"));
    assert_ptr_equal(m.content, text);
    free(text);
    ops->close(inst);

    /* A host without a detector cannot open the hook at all. */
    fx->host.pii_redact = NULL;
    inst = (void *)1;
    assert_int_equal(ops->open(&fx->host, &inst, err), OUTPOST_EINPUT);
    assert_null(inst);
    assert_non_null(strstr(err, "pii_redact"));
}

/* ---- the loader ------------------------------------------------------------------ */

static void loader_accepts_the_in_tree_plugins(void **state)
{
    fixture *fx = *state;
    char err[256] = "";
    assert_int_equal(plug_load(&fx->sensor, OUTPOST_PLUGIN_BUILD_DIR, "sensor-linux", &fx->host,
                               err),
                     PLUG_OK);
    const outpost_plugin *s = plug_info(fx->sensor);
    assert_string_equal(s->name, "sensor-linux");
    assert_int_equal(s->kind, OUTPOST_PLUGIN_SENSOR);
    assert_non_null(s->description);
    assert_int_equal(plug_load(&fx->hook, OUTPOST_PLUGIN_BUILD_DIR, "hook-redact", &fx->host, err),
                     PLUG_OK);
    assert_int_equal(plug_info(fx->hook)->kind, OUTPOST_PLUGIN_HOOK);
    assert_string_equal(plug_kind_name(plug_info(fx->hook)->kind), "hook");
}

static void expect_refusal(fixture *fx, const char *dir, const char *name, int code,
                           const char *needle)
{
    plug *p = (plug *)1;
    char err[256] = "";
    int rc = plug_load(&p, dir, name, &fx->host, err);
    if (rc != code || !strstr(err, needle))
        fail_msg("plugin %s: got %d \"%s\", expected %d and \"%s\"", name, rc, err, code, needle);
    assert_null(p);
    assert_null(strchr(err, '\n'));
}

static void loader_refuses_each_broken_plugin_naming_the_fault(void **state)
{
    fixture *fx = *state;
    const char *bad = OUTPOST_BAD_PLUGIN_DIR;
    expect_refusal(fx, bad, "bad-nosym", PLUG_EABI, "exports no `outpost_plugin` object");
    expect_refusal(fx, bad, "bad-undef", PLUG_EOPEN, "outpost_test_symbol_nobody_defines");
    expect_refusal(fx, bad, "bad-abi", PLUG_EABI, "built for plugin ABI 999");
    expect_refusal(fx, bad, "bad-size", PLUG_EABI, "is 16 bytes, expected at least");
    expect_refusal(fx, bad, "bad-name", PLUG_EABI, "calls itself \"someone-else\"");
    expect_refusal(fx, bad, "bad-table", PLUG_EABI, "lacks a sensor operation");
    expect_refusal(fx, bad, "bad-init", PLUG_EINIT, "init failed: the test device is on fire");
    /* Every line names the file. */
    expect_refusal(fx, bad, "bad-abi", PLUG_EABI, OUTPOST_BAD_PLUGIN_DIR "/bad-abi.so");

    expect_refusal(fx, bad, "no-such-plugin", PLUG_ENOTFOUND, "no-such-plugin.so: no such");
    expect_refusal(fx, bad, "../plugins/bad-abi", PLUG_EUSAGE, "plugin name");
    expect_refusal(fx, bad, "", PLUG_EUSAGE, "plugin name");
    put(fx, "not-elf.so", "#!/bin/sh\necho this is not a shared object\n");
    expect_refusal(fx, fx->root, "not-elf", PLUG_EOPEN, "cannot load");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(sensor_reads_battery_ac_hottest_zone_and_pressure, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(sensor_with_an_empty_tree_knows_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(sensor_refuses_a_root_that_is_not_a_directory, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(sensor_malformed_files_are_unknown, setup, teardown),
        cmocka_unit_test_setup_teardown(sensor_weighs_several_batteries_by_energy, setup, teardown),
        cmocka_unit_test_setup_teardown(sensor_battery_without_capacity_uses_now_over_full, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(sensor_power_source_from_battery_status_without_a_charger,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(sensor_skips_peripheral_and_absent_batteries, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(hook_redact_replaces_email_and_card_and_counts_them, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(hook_without_redact_leaves_the_text_alone, setup, teardown),
        cmocka_unit_test_setup_teardown(hook_failure_names_the_text_and_stops_the_request, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(loader_accepts_the_in_tree_plugins, setup, teardown),
        cmocka_unit_test_setup_teardown(loader_refuses_each_broken_plugin_naming_the_fault, setup,
                                        teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
