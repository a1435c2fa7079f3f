#!/usr/bin/env bash
# Signature verification throughput on a large file (default 1 GiB of random
# bytes): `outpost ota verify` against the real `minisign -V` on the same
# file, public key and signature (made by minisign), for the prehashed
# format ("ED", BLAKE2b-512 streamed, the default) and the legacy one ("Ed",
# Ed25519 over the whole file). The file is read once beforehand so both
# tools hash from the page cache (this measures the tools, not the disk);
# each tool runs R times, alternating, and the median wall time is kept.
# CPU time (user + system) is shown too: on a shared, loaded machine it is
# the steadier figure. Peak RSS (ru_maxrss) shows the memory each needs; for
# the legacy format it includes the mapped (outpost) or read-in (minisign)
# file. Prints a table and one JSON line per row plus a summary line;
# asserts nothing about time.
#
#   tests/bench/ota_verify.sh [BUILD_DIR]      (default: build)
#
# Environment: SIZE_MIB (1024), R (5), LEGACY (1: also the legacy format).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
build=$(cd "${1:-$here/build}" && pwd)
bin=$build/agent/outpost
size_mib=${SIZE_MIB:-1024}
runs=${R:-5}
legacy=${LEGACY:-1}
command -v minisign >/dev/null || { echo "minisign is not installed" >&2; exit 1; }
[ -x "$bin" ] || { echo "$bin: not built" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
head -c $((size_mib * 1024 * 1024)) /dev/urandom >big.bin
minisign -G -W -p k.pub -s k.key >/dev/null
minisign -S -s k.key -m big.bin -x big.ED >/dev/null
[ "$legacy" = 1 ] && minisign -S -l -s k.key -m big.bin -x big.Ed >/dev/null
cat big.bin >/dev/null

# run FORMAT TOOL: append "FORMAT TOOL wall_s cpu_user_s cpu_sys_s peak_rss_kib" of one
# verification (which must succeed) to results.txt.
run() {
  local fmt=$1 tool=$2
  local -a cmd=("$bin" ota verify -q -p k.pub -m big.bin -x "big.$fmt")
  [ "$tool" = minisign ] && cmd=(minisign -V -q -p k.pub -m big.bin -x "big.$fmt")
  /usr/bin/time -f '%e %U %S %M' -o t.txt "${cmd[@]}" || { echo "$tool failed to verify ($fmt)" >&2; exit 1; }
  echo "$fmt $tool $(cat t.txt)" >>results.txt
}

formats=(ED)
[ "$legacy" = 1 ] && formats+=(Ed)
: >results.txt
for fmt in "${formats[@]}"; do
  for ((i = 0; i < runs; i++)); do
    for tool in outpost minisign; do
      run "$fmt" "$tool"
    done
  done
done

python3 - "$size_mib" "$runs" results.txt <<'PY'
import json, statistics, sys
size_mib, runs, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
size_bytes = size_mib * 1024 * 1024
rows = {}
for line in open(path):
    fmt, tool, wall, usr, sys_, rss_kib = line.split()
    rows.setdefault((fmt, tool), []).append((float(wall), float(usr) + float(sys_), int(rss_kib)))
print(f"{'format':<7} {'tool':<9} {'MiB':>5} {'wall_s':>7} {'MB/s':>6} {'cpu_s':>6} "
      f"{'MB/cpu_s':>8} {'peak_rss_MiB':>12}")
summary = {"bench": "ota_verify", "size_bytes": size_bytes, "runs": runs}
for (fmt, tool), vals in rows.items():
    wall = statistics.median(v[0] for v in vals)
    cpu = statistics.median(v[1] for v in vals)
    rss = max(v[2] for v in vals) / 1024
    mbs = size_bytes / 1e6 / wall if wall > 0 else float("inf")
    mbc = size_bytes / 1e6 / cpu if cpu > 0 else float("inf")
    print(f"{fmt:<7} {tool:<9} {size_mib:>5} {wall:>7.2f} {mbs:>6.0f} {cpu:>6.2f} {mbc:>8.0f} {rss:>12.1f}")
    print(json.dumps({"format": fmt, "tool": tool, "size_bytes": size_bytes, "runs": runs,
                      "median_wall_s": wall, "mb_per_s": round(mbs, 1), "median_cpu_s": cpu,
                      "mb_per_cpu_s": round(mbc, 1), "peak_rss_mib": round(rss, 1)}))
    key = f"{tool}_{fmt}"
    summary[key + "_mb_per_s"] = round(mbs, 1)
    summary[key + "_mb_per_cpu_s"] = round(mbc, 1)
    summary[key + "_peak_rss_mib"] = round(rss, 1)
for fmt in ("ED", "Ed"):
    a, b = summary.get(f"outpost_{fmt}_mb_per_s"), summary.get(f"minisign_{fmt}_mb_per_s")
    if a and b:
        summary[f"speedup_{fmt}"] = round(a / b, 2)
print(json.dumps(summary))
PY
