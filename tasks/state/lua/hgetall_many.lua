-- hgetall_many: HGETALL of every HASH in KEYS, in one command (elections
-- read two per timeline, a thousand timelines at a time: as a pipeline,
-- redis-py spent more CPU packing and parsing them than the election itself).
-- KEYS: HASHes
-- Returns each one's flat field/value list, in order.
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call("HGETALL", key)
end
return out
