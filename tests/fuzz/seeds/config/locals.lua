-- Locals, arithmetic, concatenation, a local helper, nested constructors.
local dir = "/srv/models"
local function model(n, ctx) return { name = n, path = dir .. "/" .. n .. ".gguf", ctx = ctx * 2 } end
models = { model("a", 1024), model("b", 512) }
limits = { queue_depth = 4 + 4, request_timeout_s = 2 ^ 6 // 1, max_output_tokens = #"abcdefgh" * 32 }
listen = { tcp = "127.0.0.1:" .. (8000 + 80), socket_mode = "06" .. "00" }
cloud = { budget_usd_month = 1 / 3, price_per_1k_tokens = 1e-3 }
local t = {}
for i = 1, 3 do t[#t + 1] = "g" .. i end
fleet = { groups = t }
