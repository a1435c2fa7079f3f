#!/usr/bin/env bash
# Cost of one sensor-linux read() (the daemon takes one every
# sensors.interval_s on its main thread): the real plugin from the build
# tree, loaded with Python's ctypes, reading (a) a fake laptop tree (two
# batteries, a charger, 8 thermal zones, PSI) and (b) this machine's own /.
# Median, p99 and minimum over N reads; the ctypes call adds about a
# microsecond. Prints a table and one JSON line per case; asserts nothing
# about time.
#
#   tests/bench/sensor_read.sh [BUILD_DIR]      (default: build)
#
# Environment: N (2000 reads per case).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$here/build}
so=$build/plugins/sensor-linux.so
n=${N:-2000}
[ -f "$so" ] || { echo "no $so: build first" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

put() { mkdir -p "$(dirname "$work/laptop/$1")"; printf '%s\n' "$2" >"$work/laptop/$1"; }
for b in BAT0 BAT1; do
  put sys/class/power_supply/$b/type Battery
  put sys/class/power_supply/$b/present 1
  put sys/class/power_supply/$b/capacity 42
  put sys/class/power_supply/$b/energy_full 50000000
  put sys/class/power_supply/$b/status Discharging
done
put sys/class/power_supply/AC/type Mains
put sys/class/power_supply/AC/online 0
for z in 0 1 2 3 4 5 6 7; do put sys/class/thermal/thermal_zone$z/temp $((40000 + z * 1000)); done
for r in cpu memory io; do put proc/pressure/$r 'some avg10=1.00 avg60=1.00 avg300=1.00 total=1'; done

python3 - "$so" "$n" "$work/laptop" / <<'PY'
import ctypes as C, json, sys, time
so, n, roots = sys.argv[1], int(sys.argv[2]), sys.argv[3:]

class Facts(C.Structure):
    _fields_ = [("battery_pct", C.c_double), ("on_ac", C.c_int), ("temp_c", C.c_double),
                ("cpu", C.c_double), ("mem", C.c_double), ("io", C.c_double)]
OPEN = C.CFUNCTYPE(C.c_int, C.c_void_p, C.c_char_p, C.POINTER(C.c_void_p), C.c_char_p)
CLOSE = C.CFUNCTYPE(None, C.c_void_p)
READ = C.CFUNCTYPE(C.c_int, C.c_void_p, C.POINTER(Facts), C.c_char_p)
class SensorOps(C.Structure):
    _fields_ = [("open", OPEN), ("close", CLOSE), ("read", READ)]
class Plugin(C.Structure):
    _fields_ = [("abi_version", C.c_uint32), ("struct_size", C.c_uint32), ("name", C.c_char_p),
                ("version", C.c_char_p), ("description", C.c_char_p), ("kind", C.c_int),
                ("init", C.c_void_p), ("fini", C.c_void_p), ("backend", C.c_void_p),
                ("sensor", C.POINTER(SensorOps)), ("hook", C.c_void_p)]

lib = C.CDLL(so)
plugin = Plugin.in_dll(lib, "outpost_plugin")
ops = plugin.sensor.contents
print(f"{'case':<8} {'battery':>8} {'on_ac':>6} {'temp_c':>7} {'median_us':>10} {'p99_us':>10} {'min_us':>10}")
for name, root in zip(("laptop", "this_host"), roots):
    inst, err = C.c_void_p(), C.create_string_buffer(256)
    assert ops.open(None, root.encode(), C.byref(inst), err) == 0, err.value
    f = Facts()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        ops.read(inst, C.byref(f), err)
        ts.append((time.perf_counter_ns() - t0) / 1000)
    ops.close(inst)
    ts.sort()
    med, p99, mn = ts[len(ts) // 2], ts[int(len(ts) * 0.99)], ts[0]
    fmt = lambda v: "nil" if v != v else f"{v:.1f}"
    print(f"{name:<8} {fmt(f.battery_pct):>8} {f.on_ac:>6} {fmt(f.temp_c):>7} {med:10.1f} {p99:10.1f} {mn:10.1f}")
    print(json.dumps({"case": name, "reads": n, "battery_pct": None if f.battery_pct != f.battery_pct else f.battery_pct,
                      "on_ac": f.on_ac, "temp_c": None if f.temp_c != f.temp_c else f.temp_c,
                      "median_us": round(med, 2), "p99_us": round(p99, 2), "min_us": round(mn, 2)}))
PY
