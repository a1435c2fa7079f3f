-- /etc/outpost/config.lua - configuration of the Outpost agent (`outpost serve`).
--
-- This file is Lua read as data: it runs with no library and no functions
-- at all (no print, no os.getenv), under an instruction limit and a memory
-- cap, and only the globals below may be set, to tables, strings, numbers
-- and booleans. A misspelt key is an error, not a silent default. Locals,
-- arithmetic and string concatenation work, e.g.
--   local models_dir = "/var/lib/outpost/models"
--   ... path = models_dir .. "/tinyllama.gguf" ...
--
-- Precedence: built-in defaults < this file < OUTPOST_* environment
-- variables < `outpost serve` flags. `outpost serve -c FILE --print-config`
-- shows the result and where each value came from.
--
-- Every setting below is commented out and shows its default (or an
-- example where there is none). Relative paths are relative to this file's
-- directory. Secrets are better kept in /etc/outpost/environment
-- (OUTPOST_API_KEY, OUTPOST_CLOUD_KEY, OUTPOST_PEER_KEY) than here.

-- Models to load at start. Each entry: path (required), name (default: the
-- file name without .gguf; clients ask for it as "model"), ctx (KV
-- positions, 0: the model's training context), threads (0: one per core),
-- kv_type ("f16" or "q8_0", half the memory), default (the model that
-- "default" names; the first one when none says so). At least one model is
-- needed: here or with `outpost serve -m FILE`.
models = {
  -- { name = "tinyllama", path = "/var/lib/outpost/models/tinyllama-1.1b-q4_0.gguf", ctx = 4096, threads = 0, kv_type = "f16", default = true },
}

-- Where local apps reach the agent.
listen = {
  -- Unix socket. Default: /run/outpost/outpost.sock under systemd, else
  -- $XDG_RUNTIME_DIR/outpost.sock. Env OUTPOST_SOCKET, flag --socket.
  -- socket = "/run/outpost/outpost.sock",

  -- Socket file mode, an octal string (Lua has no octal numbers).
  -- socket_mode = "0660",

  -- Root, the agent's own user and members of its group (outpost) may
  -- always connect; these lists admit more users and groups, by id or by
  -- name ("alice"); a peer is checked with SO_PEERCRED.
  -- allowed_uids = { 1000 },
  -- allowed_gids = { 100 },

  -- Optional TCP listener, HOST:PORT or [IPv6]:PORT. Any address other
  -- than loopback requires api_key. Env OUTPOST_LISTEN, flag --listen.
  -- tcp = "127.0.0.1:8080",

  -- Bearer token TCP clients must send. Env OUTPOST_API_KEY.
  -- api_key = "change-me",
}

-- SQLite database and saved KV caches. Default: /var/lib/outpost under
-- systemd, else $XDG_STATE_HOME/outpost (~/.local/state/outpost).
-- Env OUTPOST_STATE_DIR, flag --state-dir.
-- state_dir = "/var/lib/outpost"

-- The Lua routing policy: route(req, env) decides local, peer or cloud.
policy = {
  -- Default: default.lua in lua_dir. Env OUTPOST_POLICY, flag --policy.
  -- file = "/usr/share/outpost/lua/default.lua",
  -- Where the policy's require() finds modules. Env OUTPOST_LUA_DIR.
  -- lua_dir = "/usr/share/outpost/lua",
  -- Limits per route() call; a policy that hits one answers locally.
  -- instr_limit = 1000000,
  -- mem_limit_mb = 8,
}

-- A network-edge peer: another Outpost. Env OUTPOST_PEER, flag --peer.
peer = {
  -- url = "http://gateway.local:8080",
  -- api_key = "change-me",
  -- How calls there are bounded: connect timeout per attempt; the whole
  -- call with its retries (0: limits.request_timeout_s, which it may not
  -- exceed); further attempts after a failure before any reply text, with
  -- a pause that starts at retry_backoff_ms and doubles (at most 16x).
  -- connect_timeout_ms = 3000,
  -- timeout_ms = 0,
  -- retries = 2,
  -- retry_backoff_ms = 250,
}

-- An OpenAI-compatible cloud API. Env OUTPOST_CLOUD, flag --cloud; the key
-- from OUTPOST_CLOUD_KEY.
cloud = {
  -- url = "https://api.openai.com/v1",
  -- api_key = "change-me",
  -- Model name sent upstream; unset: the name the client asked for.
  -- model = "gpt-4o-mini",
  -- Monthly spend cap in USD; unset: no cap, 0: never use the cloud.
  -- budget_usd_month = 10,
  -- USD per 1000 tokens (prompt + completion), for the spend estimate.
  -- price_per_1k_tokens = 0.01,
  -- How calls there are bounded: connect timeout per attempt; the whole
  -- call with its retries (0: limits.request_timeout_s, which it may not
  -- exceed); further attempts after a failure before any reply text, with
  -- a pause that starts at retry_backoff_ms and doubles (at most 16x).
  -- connect_timeout_ms = 3000,
  -- timeout_ms = 0,
  -- retries = 2,
  -- retry_backoff_ms = 250,
}

-- Bounds per request and per model queue.
limits = {
  -- max_body_bytes = 4194304,
  -- 0: as many prompt tokens as the model's context holds.
  -- max_prompt_tokens = 0,
  -- max_output_tokens = 2048,
  -- Requests waiting per model; more are refused with 429.
  -- queue_depth = 16,
  -- request_timeout_s = 300,
  -- On SIGTERM in-flight requests get this long to finish (the unit's
  -- TimeoutStopSec is 45 s: raise it too if this grows).
  -- drain_timeout_s = 30,
}

-- What the store keeps; 0 keeps forever.
retention = {
  -- request_max_age_days = 30,
  -- max_requests = 100000,
  -- session_idle_days = 30,
}

-- KV caches of idle sessions saved to disk (LRU); 0 saves none.
kv = {
  -- disk_budget_mb = 1024,
}

-- Fleet management over MQTT (signed commands, OTA, telemetry).
-- Flags --broker, --device-id, --fleet-key, --group, --ca, --cert, --key.
fleet = {
  -- broker = "mqtts://broker.example.com:8883",
  -- device_id = "pi-kitchen-01",
  -- fleet_key = "/etc/outpost/fleet.pub",
  -- groups = { "kitchen", "beta" },
  -- topic_prefix = "outpost/v1",
  -- ca = "/etc/outpost/ca.pem",
  -- cert = "/etc/outpost/device.pem",
  -- key = "/etc/outpost/device.key",
  -- ota_ca = "/etc/outpost/ota-ca.pem", -- CA for OTA downloads by https:// URL (nil: the system's)
  -- username = "pi-kitchen-01",
  -- Better in the environment (OUTPOST_MQTT_PASSWORD) than in this file:
  -- password = "change me",
  -- mqtt_version = 4,            -- 4 (MQTT 3.1.1) or 5
  -- keepalive_s = 30,
  -- reconnect_min_ms = 500,      -- doubles per failed attempt, with jitter
  -- reconnect_max_ms = 30000,
  -- rollup_interval_s = 300,     -- fleet config.set may change it
  -- outbox_max_msgs = 10000,     -- unsent telemetry kept (oldest roll-ups dropped first)
}

-- Plugins (backends, sensors, hooks), loaded by name from dir: those in
-- enabled at start; the backend for peer and cloud only when one of them is
-- configured (so an agent without them never maps libcurl and TLS).
plugins = {
  -- dir = "/usr/lib/x86_64-linux-gnu/outpost/plugins",
  -- enabled = { "sensor-linux", "hook-redact" },
  -- backend = "backend-openai",
}

-- Device facts (battery, AC power, temperature, pressure) the sensor
-- plugins read for the policy's env. Env OUTPOST_SYSFS_ROOT sets root.
sensors = {
  -- root = "/",        -- where sys/ and proc/ are read
  -- interval_s = 5,    -- seconds between readings
}

-- The agent's memory budget in MiB (0: none). The kernel ceiling is the
-- unit's MemoryMax= (2G): change both together (`systemctl edit outpost`).
-- memory_max_mb = 2048
