-- Every key set, with values in range.
models = {
  { name = "tiny", path = "/var/lib/outpost/models/tiny.gguf", ctx = 2048, threads = 2, kv_type = "q8_0", default = true },
  { path = "models/other-q4_0.gguf", kv_type = "f16" },
}
listen = {
  socket = "/run/outpost/outpost.sock",
  socket_mode = "0660",
  allowed_uids = { 1000, "root" },
  allowed_gids = { 100, 0 },
  tcp = "[::1]:8080",
  api_key = "s3cret-token",
}
state_dir = "/var/lib/outpost"
policy = { file = "policy/default.lua", lua_dir = "/usr/share/outpost/lua", instr_limit = 200000, mem_limit_mb = 4 }
peer = { url = "http://gateway.local:8080", api_key = "peer-key" }
cloud = { url = "https://api.example.com/v1", api_key = "k", model = "gpt-4o-mini", budget_usd_month = 12.5, price_per_1k_tokens = 0.002 }
limits = { max_body_bytes = 1048576, max_prompt_tokens = 4096, max_output_tokens = 512,
           queue_depth = 8, request_timeout_s = 60, drain_timeout_s = 10 }
retention = { request_max_age_days = 7, max_requests = 100000, session_idle_days = 30 }
kv = { disk_budget_mb = 256 }
fleet = { broker = "mqtts://broker.example.com:8883", device_id = "dev-01", fleet_key = "fleet.pub",
          groups = { "lab", "eu.west" }, topic_prefix = "outpost/v1", ca = "ca.pem", cert = "c.pem", key = "k.pem" }
plugins = { dir = "/usr/lib/outpost/plugins", enabled = { "backend-openai", "sensor-linux" } }
sensors = { root = "/", interval_s = 5 }
memory_max_mb = 512
