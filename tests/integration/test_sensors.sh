#!/usr/bin/env bash
# Device facts end to end: `outpost serve` loads the real sensor-linux plugin
# from the build tree, reads a fake sysfs/procfs tree (OUTPOST_SYSFS_ROOT),
# and the routing policy and /metrics follow the files as they change: a
# battery that runs low flips the decision to "battery_low" within the
# sampling period, plugging in the charger flips it back, a fact that
# disappears becomes nil in Lua and leaves /metrics. A root that does not
# exist leaves every fact unknown and the agent serving.
# Needs curl and python3.
. "$(dirname "$0")/lib.sh"
need curl python3
root=$work/root
sock=$work/s.sock
[ -f "$build/plugins/sensor-linux.so" ] || { echo "FAIL: $build/plugins/sensor-linux.so is not built"; exit 1; }

# put REL TEXT: write a file of the fake tree (parents created).
put() { mkdir -p "$(dirname "$root/$1")"; printf '%s\n' "$2" >"$root/$1.tmp" && mv "$root/$1.tmp" "$root/$1"; }
put sys/class/power_supply/BAT0/type Battery
put sys/class/power_supply/BAT0/capacity 37
put sys/class/power_supply/BAT0/status Discharging
put sys/class/power_supply/AC/type Mains
put sys/class/power_supply/AC/online 0
put sys/class/thermal/thermal_zone0/temp 45000
put sys/class/thermal/thermal_zone1/temp 71500
put proc/pressure/cpu 'some avg10=12.50 avg60=8.00 avg300=2.10 total=123456'
put proc/pressure/memory 'some avg10=3.25 avg60=1.00 avg300=0.50 total=99'
put proc/pressure/io 'some avg10=0.00 avg60=0.00 avg300=0.00 total=0'

# The policy routes by battery and otherwise reports what it saw, so every
# answer's reason shows the env the facts reached Lua as.
cat >"$work/policy.lua" <<'EOF'
function route(req, env)
  if env.battery_pct ~= nil and env.on_ac == false and env.battery_pct < 20 then
    return { target = "local", reason = "battery_low" }
  end
  return { target = "local", reason = "facts:" .. tostring(env.battery_pct) .. ":" ..
           tostring(env.on_ac) .. ":" .. tostring(env.temp_c) }
end
EOF

start_agent() { # sysfs root
  : >"$work/log"
  OUTPOST_SYSFS_ROOT=$1 agent_start "$work/log" "$sock" --state-dir "$work/state" \
    --policy "$work/policy.lua" --plugin-dir "$build/plugins" \
    --set plugins.enabled=sensor-linux --set sensors.interval_s=1
  pid=$agent_pid
}
stop_agent() { agent_stop "$pid"; pid=""; }
# The reason of one routing decision.
reason() {
  curl -s --unix-socket "$sock" http://localhost/v1/chat/completions -H 'Content-Type: application/json' \
    -d '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":1,"temperature":0}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["outpost"]["reason"])' 2>/dev/null
}
# wait_reason WANT: poll (the sampler runs every second) for at most 5 s.
wait_reason() {
  local t0=$SECONDS got=""
  while [ $((SECONDS - t0)) -lt 5 ]; do
    got=$(reason)
    [ "$got" = "$1" ] && return 0
    sleep 0.2
  done
  echo "  (last reason: $got)"
  return 1
}
# metrics: /metrics into $work/m (a file: grep -q on a pipe would cut curl off).
metrics() { curl -s --unix-socket "$sock" -o "$work/m" http://localhost/metrics; }

start_agent "$root"
grep -q "sensor-linux.*reading $root: battery 37.0 %, on battery, temperature 71.5 C" "$work/log" \
  && ok "the plugin says at start what the device has" || bad "no sensor line in the log: $(cat "$work/log")"

# 1. The facts as read at start reach route() (the hottest zone wins).
got=$(reason)
[ "$got" = "facts:37.0:false:71.5" ] && ok "env: battery 37, on battery, 71.5 C" || bad "first decision: [$got]"

# 2. /metrics shows each known fact as a gauge.
metrics
if grep -qx 'outpost_battery_percent 37' "$work/m" && grep -qx 'outpost_on_ac 0' "$work/m" &&
   grep -qx 'outpost_temperature_celsius 71.5' "$work/m" &&
   grep -qx 'outpost_pressure_stall_percent{resource="cpu"} 12.5' "$work/m" &&
   grep -qx 'outpost_pressure_stall_percent{resource="memory"} 3.25' "$work/m"; then
  ok "/metrics: battery, AC, temperature and pressure gauges"
else bad "/metrics gauges: $(grep -E 'battery|on_ac|temperature|pressure' "$work/m")"; fi

# 3. The battery runs low: the decision changes within the sampling period.
put sys/class/power_supply/BAT0/capacity 12
wait_reason battery_low && ok "battery at 12 % on battery: reason battery_low" || bad "battery_low never came"
metrics; grep -qx 'outpost_battery_percent 12' "$work/m" && ok "/metrics follows the battery" || bad "battery gauge did not follow"

# 4. The charger is plugged in: no longer a reason to move.
put sys/class/power_supply/AC/online 1
wait_reason "facts:12.0:true:71.5" && ok "on AC the low battery is no reason" || bad "AC change not seen"
metrics; grep -qx 'outpost_on_ac 1' "$work/m" && ok "/metrics: on_ac 1" || bad "on_ac gauge did not follow"

# 5. Facts that disappear are nil in Lua and absent from /metrics; garbage
# in a file is no fact either, and the agent keeps serving.
rm -rf "$root/sys/class/power_supply/BAT0"
put sys/class/thermal/thermal_zone0/temp 'hot'
put sys/class/thermal/thermal_zone1/temp '-273150'
wait_reason "facts:nil:true:nil" && ok "battery removed, zones garbage: nil in the policy" || bad "removed facts not nil"
metrics
if ! grep -q '^outpost_battery_percent' "$work/m" && ! grep -q '^outpost_temperature_celsius' "$work/m" &&
   grep -qx 'outpost_on_ac 1' "$work/m"; then
  ok "/metrics drops the unknown gauges, keeps the known"
else bad "/metrics after removal: $(grep -E 'battery|on_ac|temperature' "$work/m")"; fi
stop_agent
[ "$rc" = 0 ] && ok "SIGTERM: exit 0" || bad "exit status $rc"

# 6. A root that does not exist: one line naming it, every fact unknown,
# the agent serves anyway.
start_agent "$work/no-such-root"
grep -q "sensor-linux.*no-such-root" "$work/log" && ok "a missing root is named in the log" \
  || bad "missing root not logged: $(cat "$work/log")"
got=$(reason)
[ "$got" = "facts:nil:nil:nil" ] && ok "missing root: every fact nil, requests answered" || bad "missing root: [$got]"
metrics
if grep -q '^outpost_up 1' "$work/m" && ! grep -qE '^outpost_(battery_percent|on_ac|temperature_celsius|pressure)' "$work/m"; then
  ok "/metrics: no device gauges without facts"
else bad "/metrics without facts: $(grep -E 'outpost_up|battery|on_ac|temperature|pressure' "$work/m")"; fi
stop_agent

finish
