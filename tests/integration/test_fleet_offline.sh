#!/usr/bin/env bash
# Commands queued while a device is offline, against a real mosquitto: two
# agents (dev1 on MQTT 3.1.1, dev5 on MQTT 5) join once (persistent
# sessions), answer a ping, and are stopped. Then mosquitto_pub, an
# independent client, publishes at QoS 1 on each device's cmd topic, in this
# order: a valid ping (seq 101), a valid config.set (102), a ping that
# expires while the device is down (103), the join ping's own envelope again
# (seq 100, a replay of the same bytes), a new config.set that reuses seq
# 102 (a replayed seq, validly signed), and a valid config.set (104). On
# restart each agent must run 101, 102 and 104, once each and in that order,
# answer 103 "expired" and both replays "replayed" on /resp, and store only
# the valid settings; after a second restart nothing runs or is answered
# again. The broker is the one keeping the messages: the agents are down
# when they are sent. Last, commands the agent acknowledged and stored but
# did not take up before dying (rows put in its inbox while it is down) run
# at the next start, and one that already failed to finish three times is
# dropped.
# Needs mosquitto, mosquitto_sub/_pub, sqlite3, curl, python3.
. "$(dirname "$0")/lib.sh"
need mosquitto mosquitto_sub mosquitto_pub sqlite3 curl python3
# shellcheck source=lib_mqtt.sh
. "$(dirname "$0")/lib_mqtt.sh"
sub_pid=
offline_cleanup() {
  [ -n "$sub_pid" ] && { kill "$sub_pid" 2>/dev/null; wait "$sub_pid" 2>/dev/null; }
  mqtt_stop
}
lib_on_exit=offline_cleanup
check() { if eval "$2"; then ok "$1"; else bad "$1"; fi; }

mqtt_start "$work/mq" || exit 1
P=outpost/v1
"$bin" ota keygen -p "$work/k.pub" -s "$work/k.sec" >/dev/null 2>&1 || { bad "ota keygen"; finish; }
devs=(dev1 dev5)
declare -A proto=([dev1]=4 [dev5]=5) pid=()

# Every reply of every device, as "topic payload" lines, for the whole test.
mosquitto_sub -h 127.0.0.1 -p "$MQTT_PORT" -q 1 -v -t "$P/+/resp" >"$work/resp.log" 2>/dev/null &
sub_pid=$!

start() { # DEVICE: start it and wait until it is connected
  local d=$1 n
  n=$(grep -c "fleet: connected" "$work/$d.log" 2>/dev/null)
  agent_start "$work/$d.log" "$work/$d.sock" --state-dir "$work/$d" --lua-dir "$src/lua" \
    --broker "$MQTT_URL" --device-id "$d" --fleet-key "$work/k.pub" \
    --set fleet.keepalive_s=5 --set fleet.reconnect_max_ms=1000 \
    --set fleet.mqtt_version="${proto[$d]}"
  pid[$d]=$agent_pid
  for _ in $(seq 1 200); do
    [ "$(grep -c "fleet: connected" "$work/$d.log")" -gt "${n:-0}" ] && return 0
    sleep 0.1
  done
  bad "$d did not connect to the broker"
  tail -20 "$work/$d.log"
  finish
}
stop() { # DEVICE
  agent_stop "${pid[$1]}"
  [ "$rc" = 0 ] || bad "$1 exited with status $rc on SIGTERM"
}
seal() { # DEVICE SEQ BODY [FLAGS...]: a signed envelope, not sent
  local d=$1 s=$2 body=$3
  shift 3
  "$bin" fleet cmd -s "$work/k.sec" --device "$d" --seq "$s" --print "$@" "$body"
}
send() { # DEVICE ENVELOPE: publish it at QoS 1 as an independent client would
  mosquitto_pub -h 127.0.0.1 -p "$MQTT_PORT" -q 1 -t "$P/$1/cmd" -m "$2"
}
replies() { # DEVICE: its replies so far, one "seq ok error-kind" line each
  python3 - "$work/resp.log" "$P/$1/resp" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    topic, _, payload = line.rstrip("\n").partition(" ")
    if topic != sys.argv[2]:
        continue
    r = json.loads(payload)
    kind = (r.get("error") or "").split(":")[0]
    print(r["seq"], "ok" if r["ok"] else "refused", kind or "-")
PY
}
wait_replies() { # DEVICE N: until the device has sent N replies (30 s)
  for _ in $(seq 1 300); do
    [ "$(replies "$1" | wc -l)" -ge "$2" ] && return 0
    sleep 0.1
  done
  return 1
}
accepted() { # DEVICE: the commands it ran, "name seq" in the order it ran them
  sed -n 's/.*fleet: command \([a-z.]*\) seq \([0-9]*\) accepted.*/\1 \2/p' "$work/$1.log"
}
setting() { # DEVICE KEY: a value from its settings table (the agent is stopped)
  sqlite3 "$work/$1/outpost.db" "SELECT value FROM settings WHERE key = '$2'"
}

# ---- join once: a ping with seq 100 each, its envelope kept for the replay ----
declare -A join=()
for d in "${devs[@]}"; do start "$d"; done
for d in "${devs[@]}"; do
  join[$d]=$(seal "$d" 100 '{"cmd":"ping"}')
  send "$d" "${join[$d]}"
done
for d in "${devs[@]}"; do
  check "$d (MQTT ${proto[$d]}) joins: its ping seq 100 is answered ok" \
    'wait_replies "$d" 1 && [ "$(replies "$d")" = "100 ok -" ]'
done
for d in "${devs[@]}"; do stop "$d"; done

# ---- while they are down --------------------------------------------------------------
for d in "${devs[@]}"; do
  send "$d" "$(seal "$d" 101 '{"cmd":"ping"}')"
  send "$d" "$(seal "$d" 102 '{"cmd":"config.set","args":{"fleet.rollup_interval_s":77}}')"
  expiring=$(seal "$d" 103 '{"cmd":"ping"}' --expires-in 1)
  send "$d" "$expiring"
  send "$d" "${join[$d]}"
  send "$d" "$(seal "$d" 102 '{"cmd":"config.set","args":{"fleet.rollup_interval_s":99}}')"
  send "$d" "$(seal "$d" 104 '{"cmd":"config.set","args":{"fleet.outbox_max_msgs":5000}}')"
done
expires=$(python3 -c 'import json,sys; print(json.loads(json.loads(sys.argv[1])["payload"])["expires"])' "$expiring")
while [ "$(date +%s)" -le "$expires" ]; do sleep 0.2; done

# ---- first restart: the queue is delivered ----------------------------------------------
for d in "${devs[@]}"; do start "$d"; done
want="100 ok -
101 ok -
102 ok -
103 refused expired
100 refused replayed
102 refused replayed
104 ok -"
for d in "${devs[@]}"; do
  wait_replies "$d" 7
  got=$(replies "$d")
  if [ "$got" = "$want" ]; then
    ok "$d: every queued command got its one reply on /resp, in the order sent"
  else
    bad "$d: every queued command got its one reply on /resp, in the order sent (got: ${got//$'\n'/; })"
  fi
  check "$d: the valid ones ran once each, in sequence order (ping 101, config.set 102, config.set 104)" \
    '[ "$(accepted "$d")" = "$(printf "ping 100\nping 101\nconfig.set 102\nconfig.set 104")" ]'
  check "$d: the reply to config.set 102 says what it applied" \
    'grep "^$P/$d/resp " "$work/resp.log" | grep -q "\"seq\":102,.*\"applied\":{\"fleet.rollup_interval_s\":77}"'
done
for d in "${devs[@]}"; do stop "$d"; done
for d in "${devs[@]}"; do
  check "$d: the stored runtime config has 102's and 104's values, not the replay's" \
    '[ "$(setting "$d" fleet.config | python3 -c "import json,sys; d=json.load(sys.stdin); print(d[\"fleet.rollup_interval_s\"], d[\"fleet.outbox_max_msgs\"])")" = "77 5000" ]'
  check "$d: the stored last accepted seq is 104" \
    '[ "$(setting "$d" fleet.state | python3 -c "import json,sys; print(json.load(sys.stdin)[\"last_seq\"])")" = 104 ]'
done

# ---- second restart: nothing runs again -------------------------------------------------------
for d in "${devs[@]}"; do start "$d"; done
for d in "${devs[@]}"; do
  # A fresh command after the restart: anything still queued for the device
  # would be delivered, and answered, before it.
  send "$d" "$(seal "$d" 105 '{"cmd":"ping"}')"
done
for d in "${devs[@]}"; do
  check "$d: after a second restart only the fresh ping (seq 105) is answered" \
    'wait_replies "$d" 8 && sleep 1 && [ "$(replies "$d")" = "$(printf "%s\n105 ok -" "$want")" ]'
  check "$d: and nothing queued ran again" \
    '[ "$(accepted "$d")" = "$(printf "ping 100\nping 101\nconfig.set 102\nconfig.set 104\nping 105")" ]'
done
for d in "${devs[@]}"; do stop "$d"; done

# ---- acknowledged, then the agent died: the stored command is taken up ------------------
# The broker forgets a command once the agent acknowledged it, so the agent
# stores it before the PUBACK (the inbox). Rows are written here as the
# agent writes them, as if it had died right after acknowledging: on the
# next start the agent takes up each, without the broker. A row already
# taken up FLEET_INBOX_MAX_ATTEMPTS (3) times is a command that kills the
# agent: it is dropped, not run.
inbox_put() { # DEVICE ENVELOPE ATTEMPTS
  python3 - "$work/$1/outpost.db" "$P/$1/cmd" "$2" "$3" <<'PY'
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1])
db.execute("INSERT INTO inbox(topic, payload, created_ms, attempts) VALUES (?, ?, ?, ?)",
           (sys.argv[2], sys.argv[3].encode(), int(time.time() * 1000), int(sys.argv[4])))
db.commit()
PY
}
inbox_put dev1 "$(seal dev1 106 '{"cmd":"config.set","args":{"fleet.rollup_interval_s":55}}')" 0
inbox_put dev1 "$(seal dev1 107 '{"cmd":"ping"}')" 3
start dev1
check "dev1: a command stored before a crash is run at the next start and answered" \
  'wait_replies dev1 9 && [ "$(replies dev1 | tail -n 1)" = "106 ok -" ]'
check "dev1: one taken up three times already is dropped, not run" \
  'grep -q "inbox: command [0-9]* on $P/dev1/cmd dropped" "$work/dev1.log" && ! accepted dev1 | grep -q "ping 107"'
stop dev1
check "dev1: the inbox is empty and config.set 106 is stored" \
  '[ "$(sqlite3 "$work/dev1/outpost.db" "SELECT count(*) FROM inbox")" = 0 ] &&
   [ "$(setting dev1 fleet.config | python3 -c "import json,sys; print(json.load(sys.stdin)[\"fleet.rollup_interval_s\"])")" = 55 ]'
finish
