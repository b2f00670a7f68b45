-- cluster_facts: what a node's heartbeat round reads back of every timeline
-- it holds (tasks.state.beats ElectionFeed.cluster_facts), in one command:
-- a pipeline of an HMGET per timeline cost redis-py more CPU to pack and
-- parse than the round's other work.
-- KEYS: timeline HASHes
-- Returns backup_lsn, offloader, system_id of each, flattened (nil if unset).
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call("HMGET", key, "backup_lsn", "offloader", "system_id")
  out[3 * i - 2] = v[1]
  out[3 * i - 1] = v[2]
  out[3 * i] = v[3]
end
return out
