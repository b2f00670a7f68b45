-- renew_lease: extend each lease if, and only if, the caller still holds it
-- (a node renews every lease it holds each heartbeat round: one command
-- for a thousand, not one each).
-- KEYS  lease STRINGs "NODE.INSTANCE:EPOCH"
-- ARGV[1] lease ttl ms, ARGV[1 + i] the token of KEYS[i]
-- Returns, per lease, 1 when renewed, 0 when the token is stale.
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call("GET", key) == ARGV[1 + i] then
    redis.call("PEXPIRE", key, ARGV[1])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
