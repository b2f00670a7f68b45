-- beat: a node's heartbeats for a chunk of its timelines
-- (tasks.state.beats ElectionFeed.publish_heartbeats), in one command. The
-- ZMSCORE and two ZADDs it replaces carried five arguments a timeline, and
-- redis-py's packing of them was a third of a heartbeat round at 10,000.
-- KEYS[1] beats ZSET ("NODE:ttid" -> last heartbeat), KEYS[2] registered
-- timelines ZSET
-- ARGV[1] node id, ARGV[2] the time (unix s), ARGV[3] "1": also register the
-- timelines (NX: a registration keeps its first time), ARGV[4] the timeline
-- ids, comma-separated
-- Returns how many timelines were newly registered, then the positions
-- (1-based) of those whose beat was missing: a first heartbeat, one after
-- expiring, a Redis that lost its data.
local member, now, register = ARGV[1] .. ":", ARGV[2], ARGV[3] == "1"
local out = {0}
local i = 0
for ttid in string.gmatch(ARGV[4], "[^,]+") do
  i = i + 1
  if redis.call("ZADD", KEYS[1], now, member .. ttid) == 1 then
    out[#out + 1] = i
  end
  if register then
    out[1] = out[1] + redis.call("ZADD", KEYS[2], "NX", now, ttid)
  end
end
return out
