#!/usr/bin/env bash
# Time of one route() call with the shipped default policy (lua/default.lua),
# for a few requests that take different rules: the median, p99 and minimum
# over N calls in one `outpost policy test --repeat N` process (the policy is
# loaded once; each call builds req/env, runs route() under the sandbox's
# limits and checks the result, as the daemon does). Prints a table and one
# JSON line per case; asserts nothing about time.
#
#   tests/bench/policy_route.sh [BUILD_DIR]      (default: build)
#
# Environment: N (20000 calls per case), POLICY (lua/default.lua).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$here/build}
bin=$build/agent/outpost
policy=${POLICY:-$here/lua/default.lua}
n=${N:-20000}

cases=(
  'plain|{"prompt_tokens":50}|{}'
  'private|{"prompt_tokens":50,"privacy":"private"}|{}'
  'pii|{"prompt_tokens":50,"pii":["email","card"]}|{}'
  'long_prompt|{"prompt_tokens":4000}|{"cloud_rtt_ms":80,"cloud_spend_usd":1,"cloud_budget_usd":10}'
  'battery_low|{"prompt_tokens":50}|{"battery_pct":12,"on_ac":false,"peer_rtt_ms":5,"temp_c":50}'
)

printf '%-12s %-8s %-18s %10s %10s %10s\n' case target reason median_us p99_us min_us
for c in "${cases[@]}"; do
  IFS='|' read -r name req env <<<"$c"
  err=$(mktemp)
  out=$("$bin" policy test "$policy" --request "$req" --env "$env" --repeat "$n" 2>"$err")
  timing=$(cat "$err")
  rm -f "$err"
  python3 - "$name" "$out" "$timing" "$n" <<'PY'
import json, re, sys
name, out, timing, n = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])
m = re.search(r"median ([0-9.]+) us, p99 ([0-9.]+) us, min ([0-9.]+) us", timing)
med, p99, mn = (float(x) for x in m.groups())
print(f"{name:<12} {out['target']:<8} {out['reason']:<18} {med:10.2f} {p99:10.2f} {mn:10.2f}")
print(json.dumps({"case": name, "target": out["target"], "reason": out["reason"], "calls": n,
                  "median_us": med, "p99_us": p99, "min_us": mn}))
PY
done
