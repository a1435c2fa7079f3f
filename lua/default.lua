-- default.lua - Outpost's shipped routing policy: where each request is
-- answered (local engine, a network-edge peer, or the cloud) and why.
--
-- route(req, env) returns { target = "local"|"peer"|"cloud", reason = "..." }.
-- The rules, first match wins:
--   1. privacy = "private"                  -> local   "private"
--   2. PII found in the request             -> local   "pii_detected"
--   3. the client asked for local           -> local   "requested"
--   4. offline                              -> local   "offline"
--   5. the client asked for cloud or peer   -> there   "requested", unless it
--      cannot be reached or paid for: local "over_budget" / "peer_unreachable"
--   6. a tight max_latency_ms               -> local   "latency_critical"
--   7. a long prompt, a long conversation, a deep local queue or a slow
--      local engine -> cloud "long_prompt" / "long_conversation" / "local_busy"
--      / "local_slow" when it is reachable and under budget, else the peer if
--      reachable, else local "over_budget" (an unreachable cloud falls through)
--   8. battery low (not on AC) or too hot   -> peer if reachable, else cloud
--      if affordable: "battery_low" / "thermal"; neither: local
--      "over_budget" / "cloud_unreachable"
--   9. everything else                      -> local   "default_local"
-- A fact the agent does not know is nil and never triggers a rule. Privacy
-- comes first: no other fact can send private or PII-bearing text away.

local T = {
  long_prompt_tokens = 1536,      -- above this, prefill on the device is slow
  long_conversation_messages = 24,
  latency_critical_ms = 800,      -- deadlines this tight cannot afford a round trip
  busy_queue_depth = 4,           -- requests already waiting for the local engine
  slow_local_tok_s = 2.0,         -- the local engine decodes slower than this
  battery_low_pct = 20,
  hot_c = 80,                     -- SoC temperature where throttling starts
  budget_reserve = 0.02,          -- stop using the cloud with 2 % of the budget left
  max_cloud_rtt_ms = 1500,        -- a cloud slower than this counts as unreachable
}

local function cloud_reachable(env)
  return env.online and (env.cloud_rtt_ms == nil or env.cloud_rtt_ms <= T.max_cloud_rtt_ms)
end

-- No budget configured means no cap; a budget of 0 means never.
local function under_budget(env)
  local budget = env.cloud_budget_usd
  if budget == nil then return true end
  return (env.cloud_spend_usd or 0) < budget * (1 - T.budget_reserve)
end

local function peer_reachable(env)
  return env.peer_rtt_ms ~= nil
end

local function decide(target, reason)
  return { target = target, reason = reason }
end

-- Work the device should not do itself: a peer first (no cost), then the
-- cloud, else it stays here and says what blocked the cloud.
local function offload(env, reason)
  if peer_reachable(env) then return decide("peer", reason) end
  if cloud_reachable(env) then
    if under_budget(env) then return decide("cloud", reason) end
    return decide("local", "over_budget")
  end
  return decide("local", "cloud_unreachable")
end

local function hard_request(req, env)
  if req.prompt_tokens > T.long_prompt_tokens then return "long_prompt" end
  if req.messages > T.long_conversation_messages then return "long_conversation" end
  if env.queue_depth >= T.busy_queue_depth then return "local_busy" end
  if env.local_tok_s ~= nil and env.local_tok_s < T.slow_local_tok_s then
    return "local_slow"
  end
  return nil
end

function route(req, env)
  if req.privacy == "private" then return decide("local", "private") end
  if #req.pii > 0 then return decide("local", "pii_detected") end
  if req.route_requested == "local" then return decide("local", "requested") end
  if not env.online then return decide("local", "offline") end

  if req.route_requested == "cloud" then
    if not cloud_reachable(env) then return decide("local", "cloud_unreachable") end
    if not under_budget(env) then return decide("local", "over_budget") end
    return decide("cloud", "requested")
  elseif req.route_requested == "peer" then
    if not peer_reachable(env) then return decide("local", "peer_unreachable") end
    return decide("peer", "requested")
  end

  if req.max_latency_ms ~= nil and req.max_latency_ms <= T.latency_critical_ms then
    return decide("local", "latency_critical")
  end

  local hard = hard_request(req, env)
  if hard ~= nil then
    if cloud_reachable(env) and under_budget(env) then return decide("cloud", hard) end
    if peer_reachable(env) then return decide("peer", hard) end
    if cloud_reachable(env) then return decide("local", "over_budget") end
  end

  if env.battery_pct ~= nil and env.on_ac == false and env.battery_pct < T.battery_low_pct then
    return offload(env, "battery_low")
  end
  if env.temp_c ~= nil and env.temp_c >= T.hot_c then
    return offload(env, "thermal")
  end
  return decide("local", "default_local")
end
