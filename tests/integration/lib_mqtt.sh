# lib_mqtt.sh - a real mosquitto broker for the fleet integration tests
# (sourced, not run). Plain MQTT on a free loopback port, optionally TLS on
# a second one with a CA, server and client certificates that openssl makes
# here; the broker keeps its state (retained status, persistent sessions)
# in the test's directory, so a stop and a start on the same port is a
# broker restart. The caller's EXIT trap must call mqtt_stop.
#
#   mqtt_certs DIR            ca.crt, server.{crt,key}, client.{crt,key}, other.{crt,key}
#                             (other: signed by a CA the broker does not trust)
#   mqtt_start DIR [PORT [TLS_PORT]]  start (PORT 0/absent: a free one); sets
#                             MQTT_PORT, MQTT_URL, MQTT_PID (and MQTT_TLS_PORT,
#                             MQTT_TLS_URL when DIR has certificates)
#   mqtt_start_auth DIR USER PASS  a second broker that wants USER/PASS (no
#                             anonymous clients); sets MQTT_AUTH_PORT, MQTT_AUTH_PID
#   mqtt_stop                 stop them (SIGTERM, then wait)
#   mqtt_kill                 stop it hard (SIGKILL)

mqtt_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

mqtt_certs() {
  local d=$1
  mkdir -p "$d"
  (
    cd "$d" || exit 1
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=outpost test CA" \
      -keyout ca.key -out ca.crt 2>/dev/null || exit 1
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >server.ext
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key \
      -out server.csr 2>/dev/null || exit 1
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
      -extfile server.ext -out server.crt 2>/dev/null || exit 1
    openssl req -newkey rsa:2048 -nodes -subj "/CN=outpost-device" -keyout client.key \
      -out client.csr 2>/dev/null || exit 1
    openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
      -out client.crt 2>/dev/null || exit 1
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=untrusted" \
      -keyout other.key -out other.crt 2>/dev/null || exit 1
  )
}

mqtt_start() {
  local d=$1 port=${2:-0} tls_port=${3:-0}
  mkdir -p "$d/db"
  [ "$port" = 0 ] && port=$(mqtt_free_port)
  {
    # Run as us: as root mosquitto would drop to user "mosquitto", who
    # cannot read the test's private directory.
    echo "user $(id -un)"
    echo "persistence true"
    echo "persistence_location $d/db/"
    echo "log_dest file $d/mosquitto.log"
    echo "log_type all"
    echo "per_listener_settings false"
    echo "allow_anonymous true"
    echo "listener $port 127.0.0.1"
  } >"$d/mosquitto.conf"
  if [ -f "$d/ca.crt" ]; then
    [ "$tls_port" = 0 ] && tls_port=$(mqtt_free_port)
    {
      echo "listener $tls_port 127.0.0.1"
      echo "cafile $d/ca.crt"
      echo "certfile $d/server.crt"
      echo "keyfile $d/server.key"
      echo "require_certificate true"
    } >>"$d/mosquitto.conf"
    MQTT_TLS_PORT=$tls_port
    MQTT_TLS_URL="mqtts://localhost:$tls_port"
  fi
  mosquitto -c "$d/mosquitto.conf" >>"$d/mosquitto.out" 2>&1 &
  MQTT_PID=$!
  MQTT_PORT=$port
  MQTT_URL="mqtt://127.0.0.1:$port"
  MQTT_DIR=$d
  for _ in $(seq 1 100); do
    if mosquitto_pub -h 127.0.0.1 -p "$port" -t outpost-test/ping -m x 2>/dev/null; then
      return 0
    fi
    kill -0 "$MQTT_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "mosquitto did not start:"
  cat "$d/mosquitto.out" "$d/mosquitto.log" 2>/dev/null | tail -20
  return 1
}

mqtt_start_auth() {
  local d=$1 port
  mkdir -p "$d"
  port=$(mqtt_free_port)
  mosquitto_passwd -b -c "$d/passwd" "$2" "$3" >/dev/null 2>&1 || return 1
  {
    echo "user $(id -un)"
    echo "log_dest file $d/mosquitto.log"
    echo "per_listener_settings false"
    echo "allow_anonymous false"
    echo "password_file $d/passwd"
    echo "listener $port 127.0.0.1"
  } >"$d/mosquitto.conf"
  mosquitto -c "$d/mosquitto.conf" >>"$d/mosquitto.out" 2>&1 &
  MQTT_AUTH_PID=$!
  MQTT_AUTH_PORT=$port
  for _ in $(seq 1 100); do
    mosquitto_pub -h 127.0.0.1 -p "$port" -u "$2" -P "$3" -t outpost-test/ping -m x 2>/dev/null &&
      return 0
    kill -0 "$MQTT_AUTH_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "mosquitto (password) did not start:"
  cat "$d/mosquitto.out" "$d/mosquitto.log" 2>/dev/null | tail -20
  return 1
}

mqtt_stop() {
  if [ -n "${MQTT_AUTH_PID:-}" ]; then
    kill -TERM "$MQTT_AUTH_PID" 2>/dev/null
    wait "$MQTT_AUTH_PID" 2>/dev/null
    MQTT_AUTH_PID=
  fi
  if [ -n "${MQTT_PID:-}" ]; then
    kill -TERM "$MQTT_PID" 2>/dev/null
    wait "$MQTT_PID" 2>/dev/null
    MQTT_PID=
  fi
}

mqtt_kill() {
  if [ -n "${MQTT_PID:-}" ]; then
    kill -KILL "$MQTT_PID" 2>/dev/null
    wait "$MQTT_PID" 2>/dev/null
    MQTT_PID=
  fi
}
