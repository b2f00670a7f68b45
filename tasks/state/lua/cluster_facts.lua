-- cluster_facts: what a node's heartbeat round reads back of every timeline
-- it holds (tasks.state.beats ElectionFeed.cluster_facts), in one command:
-- a pipeline of an HMGET per timeline cost redis-py more CPU to pack and
-- parse than the round's other work.
-- KEYS: timeline HASHes
-- Returns backup_lsn, offloader, system_id, verified_lsn of each, flattened
-- (nil if unset).
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call("HMGET", key, "backup_lsn", "offloader", "system_id", "verified_lsn")
  for j = 1, 4 do
    out[4 * i - 4 + j] = v[j]
  end
end
return out
