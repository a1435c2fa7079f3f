/*
 * fuzz_sensor.c - sensor-linux's readers (plugins/sensor_linux.c) on
 * arbitrary file contents. The input is cut at each 0xff byte into the
 * contents of the files of a fake device tree, in the order of files[]
 * below (a missing piece removes its file); then one read() runs, and the
 * harness aborts if a fact is outside its documented range: battery 0..100
 * or NaN, on_ac -1/0/1, temperature -40..150 or NaN, pressures 0..100 or NaN.
 * The plugin's source is compiled into the harness, so its branches are
 * instrumented. The tree lives in a temporary directory (on /dev/shm when
 * writable) removed at exit.
 */
#include "../../plugins/sensor_linux.c"

#include <ftw.h>
#include <stdint.h>
#include <stdlib.h>

#define PS "sys/class/power_supply/"
#define TZ "sys/class/thermal/"

static const char *const files[] = {
    PS "BAT0/type", PS "BAT0/capacity", PS "BAT0/status", PS "BAT0/present",
    PS "BAT0/scope", PS "BAT0/energy_now", PS "BAT0/energy_full", PS "BAT1/type",
    PS "BAT1/charge_now", PS "BAT1/charge_full", PS "BAT1/energy_full", PS "AC/type",
    PS "AC/online", TZ "thermal_zone0/temp", TZ "thermal_zone1/temp",
    "proc/pressure/cpu", "proc/pressure/memory", "proc/pressure/io",
};
#define N_FILES (sizeof files / sizeof files[0])

static char root[64];
static void *inst;

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void remove_tree(void)
{
    if (inst)
        sensor_close(inst);
    nftw(root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static void make_dirs(const char *rel)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    for (char *p = path + strlen(root) + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            mkdir(path, 0700);
            *p = '/';
        }
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    /* tmpfs when there is one: the harness writes 18 files per input. */
    snprintf(root, sizeof root, "%s/outpost-fuzz-sensor-XXXXXX",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    if (!mkdtemp(root))
        abort();
    atexit(remove_tree);
    for (size_t i = 0; i < N_FILES; i++)
        make_dirs(files[i]);
    char err[OUTPOST_PLUGIN_ERR_SIZE];
    if (sensor_open(NULL, root, &inst, err))
        abort();
    return 0;
}

static bool pct_ok(double v)
{
    return isnan(v) || (v >= 0 && v <= 100);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t at = 0;
    for (size_t i = 0; i < N_FILES; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s", root, files[i]);
        if (at > size) {
            unlink(path);
            continue;
        }
        const uint8_t *end = size - at ? memchr(data + at, 0xff, size - at) : NULL;
        size_t len = end ? (size_t)(end - (data + at)) : size - at;
        FILE *f = fopen(path, "wb");
        if (!f)
            abort();
        if (len && fwrite(data + at, 1, len, f) != len)
            abort();
        fclose(f);
        at += len + 1;
    }
    outpost_sensor_facts fa;
    char err[OUTPOST_PLUGIN_ERR_SIZE];
    if (sensor_read(inst, &fa, err) != OUTPOST_OK)
        abort();
    if (!pct_ok(fa.battery_pct) || fa.on_ac < -1 || fa.on_ac > 1 ||
        !(isnan(fa.temp_c) || (fa.temp_c >= TEMP_MIN_C && fa.temp_c <= TEMP_MAX_C)) ||
        !pct_ok(fa.cpu_pressure_pct) || !pct_ok(fa.mem_pressure_pct) || !pct_ok(fa.io_pressure_pct))
        abort();
    return 0;
}
