/*
 * sensor_linux.c - the `sensor-linux` plugin: battery, power source,
 * temperature and pressure stall facts from Linux's sysfs and procfs, for
 * the routing policy's env.
 *
 * What it reads, under a root directory ("/" on a device, a fake tree in
 * tests):
 *   sys/class/power_supply/<name>/  type "Battery": capacity (0..100) or, when
 *       the driver has none, energy_now/energy_full or charge_now/charge_full;
 *       status. Any other type (Mains, USB, USB_C, Wireless, ...): online.
 *       Supplies with scope "Device" (a wireless mouse's battery) and
 *       batteries with present 0 are not the device's and are skipped.
 *   sys/class/thermal/thermal_zone<N>/temp  millidegrees Celsius.
 *   proc/pressure/{cpu,memory,io}  the "some avg10=" figure (percent of the
 *       last 10 s in which some task stalled on that resource).
 *
 * How facts are combined:
 *   battery_pct  one battery: its figure. Several: weighted by energy_full
 *                (µWh) when every battery reports it - a laptop's 23 Wh
 *                front pack at 10 % and 72 Wh rear pack at 90 % is at 71 %,
 *                not 50 % - else their plain average.
 *   on_ac        1 when any non-battery supply says online 1; 0 when some
 *                say online and none is 1; with no such supply, from the
 *                batteries' status: any "Discharging" is 0, else "Charging",
 *                "Full" or "Not charging" (only said on external power)
 *                is 1; otherwise unknown.
 *   temp_c       the hottest zone whose reading is plausible: -40..150 °C.
 *                Unpopulated or broken zones report -273 °C, 0x7fffffff or
 *                fail with EAGAIN/ENODATA; those are ignored.
 *   pressure     each resource's avg10, 0..100.
 * A fact that no file gives stays unknown (NaN; -1 for on_ac), which the
 * policy sees as nil.
 *
 * Invariants: every file read is bounded (an attribute is at most
 * SENSOR_ATTR_MAX bytes, a pressure file SENSOR_PSI_MAX; a longer file is
 * malformed; regular files only, opened non-blocking so a FIFO planted in a
 * tree can never stall the sampler), and so is every directory walk (the first
 * SENSOR_DIR_MAX entries), so one read costs a few dozen small syscalls
 * whatever is on disk. A malformed file makes its fact unknown, nothing
 * more. The instance owns a copy of the root; nothing it returns is
 * allocated. Called from one thread at a time (the ABI's sensor rule).
 */
#include "outpost_plugin.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SENSOR_NAME "sensor-linux"
#define SENSOR_ATTR_MAX 64   /* bytes of one sysfs attribute, NUL included */
#define SENSOR_PSI_MAX 512   /* bytes of one /proc/pressure file, NUL included */
#define SENSOR_DIR_MAX 256   /* entries looked at in one directory at most */
#define SENSOR_ROOT_MAX 2048 /* the root path, leaving room for what is appended */
#define SENSOR_PATH_MAX (SENSOR_ROOT_MAX + 512)
#define TEMP_MIN_C (-40.0)
#define TEMP_MAX_C 150.0

typedef struct sensor_inst {
    const outpost_host *host;
    char root[SENSOR_ROOT_MAX]; /* without a trailing '/'; "" for "/" */
} sensor_inst;

/* ---- bounded reads -------------------------------------------------------------- */

/* Read at most cap-1 bytes of the regular file at path into buf,
 * NUL-terminated, trailing whitespace removed. 0, or -1 when it cannot be
 * read, is not a regular file, or is empty. */
static int read_small(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0)
        return -1;
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        close(fd);
        return -1;
    }
    size_t len = 0;
    while (len < cap - 1) {
        ssize_t n = read(fd, buf + len, cap - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n < 0 && len == 0) {
                close(fd);
                return -1;
            }
            break;
        }
        len += (size_t)n;
    }
    /* A file longer than any attribute we read is not one we understand
     * (and stopping at the bound would parse a prefix of it). */
    char extra;
    bool too_long = len == cap - 1 && read(fd, &extra, 1) > 0;
    close(fd);
    if (too_long)
        return -1;
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == ' ' || buf[len - 1] == '\t' ||
                       buf[len - 1] == '\r'))
        len--;
    buf[len] = '\0';
    return len ? 0 : -1;
}

/* A whole-text decimal integer (sysfs attributes are one number). */
static int parse_int(const char *s, long long *out)
{
    while (*s == ' ' || *s == '\t')
        s++;
    if (!*s)
        return -1;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end != '\0')
        return -1;
    *out = v;
    return 0;
}

static int path_of(const sensor_inst *in, char *buf, size_t cap, const char *a, const char *b,
                   const char *c)
{
    int n = snprintf(buf, cap, "%s/%s%s%s%s%s", in->root, a, b ? "/" : "", b ? b : "",
                     c ? "/" : "", c ? c : "");
    return n > 0 && (size_t)n < cap ? 0 : -1;
}

static int read_attr(const sensor_inst *in, const char *dir, const char *entry,
                     const char *attr, char *buf, size_t cap)
{
    char path[SENSOR_PATH_MAX];
    if (path_of(in, path, sizeof path, dir, entry, attr))
        return -1;
    return read_small(path, buf, cap);
}

static int read_int_attr(const sensor_inst *in, const char *dir, const char *entry,
                         const char *attr, long long *out)
{
    char buf[SENSOR_ATTR_MAX];
    if (read_attr(in, dir, entry, attr, buf, sizeof buf))
        return -1;
    return parse_int(buf, out);
}

/* Directory names sysfs would create: no "." or "..", no hidden files. */
static bool entry_ok(const char *name)
{
    return name[0] != '.' && strlen(name) < 128;
}

/* ---- power_supply ------------------------------------------------------------------- */

typedef struct power_scan {
    int n_batteries;
    double pct_sum;        /* plain sum of the batteries' percentages */
    double weighted_sum;   /* pct * energy_full */
    double energy_full_sum;
    int n_with_energy;     /* batteries that reported energy_full */
    int n_supplies;        /* non-battery supplies with a readable online */
    bool any_online;
    bool any_discharging;
    bool any_external;     /* a status only said on external power */
} power_scan;

/* A battery's charge in percent, or NaN. */
static double battery_pct_of(const sensor_inst *in, const char *d, const char *name)
{
    long long v, full;
    if (!read_int_attr(in, d, name, "capacity", &v) && v >= 0 && v <= 100)
        return (double)v;
    static const char *const pairs[][2] = {{"energy_now", "energy_full"},
                                           {"charge_now", "charge_full"}};
    for (size_t i = 0; i < 2; i++)
        if (!read_int_attr(in, d, name, pairs[i][0], &v) &&
            !read_int_attr(in, d, name, pairs[i][1], &full) && v >= 0 && full > 0) {
            double pct = 100.0 * (double)v / (double)full;
            return pct > 100.0 ? 100.0 : pct; /* a worn pack overshoots its full */
        }
    return NAN;
}

static void scan_battery(const sensor_inst *in, const char *d, const char *name, power_scan *ps)
{
    long long v;
    if (!read_int_attr(in, d, name, "present", &v) && v == 0)
        return;
    char status[SENSOR_ATTR_MAX];
    if (!read_attr(in, d, name, "status", status, sizeof status)) {
        if (!strcmp(status, "Discharging"))
            ps->any_discharging = true;
        else if (!strcmp(status, "Charging") || !strcmp(status, "Full") ||
                 !strcmp(status, "Not charging"))
            ps->any_external = true;
    }
    double pct = battery_pct_of(in, d, name);
    if (isnan(pct))
        return;
    ps->n_batteries++;
    ps->pct_sum += pct;
    if (!read_int_attr(in, d, name, "energy_full", &v) && v > 0) {
        ps->n_with_energy++;
        ps->energy_full_sum += (double)v;
        ps->weighted_sum += pct * (double)v;
    }
}

static void read_power(const sensor_inst *in, outpost_sensor_facts *f)
{
    static const char d[] = "sys/class/power_supply";
    char path[SENSOR_PATH_MAX];
    if (path_of(in, path, sizeof path, d, NULL, NULL))
        return;
    DIR *dir = opendir(path);
    if (!dir)
        return;
    power_scan ps = {0};
    struct dirent *e;
    for (int seen = 0; seen < SENSOR_DIR_MAX && (e = readdir(dir)); seen++) {
        if (!entry_ok(e->d_name))
            continue;
        char type[SENSOR_ATTR_MAX], scope[SENSOR_ATTR_MAX];
        if (read_attr(in, d, e->d_name, "type", type, sizeof type))
            continue;
        if (!read_attr(in, d, e->d_name, "scope", scope, sizeof scope) &&
            !strcmp(scope, "Device"))
            continue;
        if (!strcmp(type, "Battery")) {
            scan_battery(in, d, e->d_name, &ps);
            continue;
        }
        long long online;
        if (!read_int_attr(in, d, e->d_name, "online", &online) && online >= 0) {
            ps.n_supplies++;
            if (online > 0)
                ps.any_online = true;
        }
    }
    closedir(dir);
    if (ps.n_batteries > 0)
        f->battery_pct = ps.n_with_energy == ps.n_batteries && ps.energy_full_sum > 0
                             ? ps.weighted_sum / ps.energy_full_sum
                             : ps.pct_sum / ps.n_batteries;
    if (ps.n_supplies > 0)
        f->on_ac = ps.any_online ? 1 : 0;
    else if (ps.any_discharging)
        f->on_ac = 0;
    else if (ps.any_external)
        f->on_ac = 1;
}

/* ---- thermal zones ---------------------------------------------------------------- */

static void read_thermal(const sensor_inst *in, outpost_sensor_facts *f)
{
    static const char d[] = "sys/class/thermal";
    char path[SENSOR_PATH_MAX];
    if (path_of(in, path, sizeof path, d, NULL, NULL))
        return;
    DIR *dir = opendir(path);
    if (!dir)
        return;
    double hottest = NAN;
    struct dirent *e;
    for (int seen = 0; seen < SENSOR_DIR_MAX && (e = readdir(dir)); seen++) {
        if (!entry_ok(e->d_name) || strncmp(e->d_name, "thermal_zone", 12) != 0)
            continue;
        long long milli;
        if (read_int_attr(in, d, e->d_name, "temp", &milli))
            continue;
        double c = (double)milli / 1000.0;
        if (c < TEMP_MIN_C || c > TEMP_MAX_C)
            continue;
        if (isnan(hottest) || c > hottest)
            hottest = c;
    }
    closedir(dir);
    f->temp_c = hottest;
}

/* ---- pressure stall information --------------------------------------------------- */

/* The avg10 of the "some" line (Documentation/accounting/psi.rst: "some
 * avg10=0.00 avg60=0.00 avg300=0.00 total=0"), or NaN. */
static double read_psi(const sensor_inst *in, const char *resource)
{
    char buf[SENSOR_PSI_MAX];
    if (read_attr(in, "proc/pressure", resource, NULL, buf, sizeof buf))
        return NAN;
    for (char *line = buf; line && *line;) {
        char *next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        if (!strncmp(line, "some ", 5)) {
            const char *p = strstr(line, " avg10=");
            if (!p)
                return NAN;
            p += 7;
            char *end;
            errno = 0;
            double v = strtod(p, &end);
            if (errno || end == p || (*end != ' ' && *end != '\0') || !(v >= 0 && v <= 100))
                return NAN;
            return v;
        }
        line = next;
    }
    return NAN;
}

/* ---- the operations --------------------------------------------------------------- */

static void facts_unknown(outpost_sensor_facts *f)
{
    f->battery_pct = NAN;
    f->on_ac = -1;
    f->temp_c = NAN;
    f->cpu_pressure_pct = NAN;
    f->mem_pressure_pct = NAN;
    f->io_pressure_pct = NAN;
}

static int sensor_read(void *inst, outpost_sensor_facts *out, char err[OUTPOST_PLUGIN_ERR_SIZE])
{
    if (!out) {
        snprintf(err, OUTPOST_PLUGIN_ERR_SIZE, SENSOR_NAME ": read: no facts struct given");
        return OUTPOST_EINPUT;
    }
    facts_unknown(out);
    if (!inst) {
        snprintf(err, OUTPOST_PLUGIN_ERR_SIZE, SENSOR_NAME ": read: no instance");
        return OUTPOST_EINPUT;
    }
    const sensor_inst *in = inst;
    read_power(in, out);
    read_thermal(in, out);
    out->cpu_pressure_pct = read_psi(in, "cpu");
    out->mem_pressure_pct = read_psi(in, "memory");
    out->io_pressure_pct = read_psi(in, "io");
    return OUTPOST_OK;
}

static void say(const sensor_inst *in, const char *line)
{
    if (in->host && in->host->log)
        in->host->log(in->host->ctx, SENSOR_NAME, line);
}

static void fmt_fact(char *buf, size_t cap, const char *name, double v, const char *unit)
{
    if (isnan(v))
        snprintf(buf, cap, "%s unknown", name);
    else
        snprintf(buf, cap, "%s %.1f%s", name, v, unit);
}

static int sensor_open(const outpost_host *host, const char *root, void **inst,
                       char err[OUTPOST_PLUGIN_ERR_SIZE])
{
    if (!inst) {
        snprintf(err, OUTPOST_PLUGIN_ERR_SIZE, SENSOR_NAME ": open: no instance pointer given");
        return OUTPOST_EINPUT;
    }
    *inst = NULL;
    if (!root || !*root)
        root = "/";
    size_t len = strlen(root);
    while (len > 1 && root[len - 1] == '/')
        len--;
    if (len >= SENSOR_ROOT_MAX) {
        snprintf(err, OUTPOST_PLUGIN_ERR_SIZE, SENSOR_NAME ": root %.64s...: longer than %d bytes",
                 root, SENSOR_ROOT_MAX - 1);
        return OUTPOST_EINPUT;
    }
    struct stat st;
    if (stat(root, &st)) {
        snprintf(err, OUTPOST_PLUGIN_ERR_SIZE, SENSOR_NAME ": root %s: %s", root, strerror(errno));
        return OUTPOST_EINPUT;
    }
    if (!S_ISDIR(st.st_mode)) {
        snprintf(err, OUTPOST_PLUGIN_ERR_SIZE, SENSOR_NAME ": root %s: not a directory", root);
        return OUTPOST_EINPUT;
    }
    sensor_inst *in = calloc(1, sizeof *in);
    if (!in) {
        snprintf(err, OUTPOST_PLUGIN_ERR_SIZE, SENSOR_NAME ": out of memory");
        return OUTPOST_ENOMEM;
    }
    in->host = host;
    if (!(len == 1 && root[0] == '/')) {
        memcpy(in->root, root, len);
        in->root[len] = '\0';
    }
    /* One line saying what this device has, so a missing fact in the
     * policy is explained by the log rather than guessed at. */
    outpost_sensor_facts f;
    char rerr[OUTPOST_PLUGIN_ERR_SIZE];
    if (sensor_read(in, &f, rerr) == OUTPOST_OK) {
        char b[40], t[40], line[OUTPOST_PLUGIN_ERR_SIZE];
        fmt_fact(b, sizeof b, "battery", f.battery_pct, " %");
        fmt_fact(t, sizeof t, "temperature", f.temp_c, " C");
        snprintf(line, sizeof line, "reading %s: %s, %s, %s, pressure stall info %s",
                 in->root[0] ? in->root : "/", b,
                 f.on_ac < 0 ? "power source unknown" : f.on_ac ? "on AC" : "on battery", t,
                 isnan(f.cpu_pressure_pct) ? "unavailable" : "available");
        say(in, line);
    }
    *inst = in;
    return OUTPOST_OK;
}

static void sensor_close(void *inst)
{
    free(inst);
}

static const outpost_sensor_ops sensor_ops = {
    .open = sensor_open,
    .close = sensor_close,
    .read = sensor_read,
};

OUTPOST_PLUGIN_EXPORT(sensor_linux_plugin) = {
    .abi_version = OUTPOST_PLUGIN_ABI_VERSION,
    .struct_size = sizeof(outpost_plugin),
    .name = SENSOR_NAME,
    .version = "1.0.0",
    .description = "battery, AC power, temperature and pressure stall facts from /sys and /proc",
    .kind = OUTPOST_PLUGIN_SENSOR,
    .sensor = &sensor_ops,
};
