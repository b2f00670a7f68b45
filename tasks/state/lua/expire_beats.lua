-- expire_beats: take the heartbeats at or before a time out of the beats ZSET
-- (their peers just died: the election round marks their timelines), and
-- keep each one's time in the expired ZSET, where readers still find a
-- peer's last beat (the agreement waits a while past heartbeat_timeout).
-- KEYS[1] beats ZSET, KEYS[2] expired ZSET ("NODE:ttid" -> last heartbeat)
-- ARGV[1] the time (unix s)
-- Returns the expired members.
local expired = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", ARGV[1], "WITHSCORES")
local members = {}
for i = 1, #expired, 2 do
  redis.call("ZADD", KEYS[2], expired[i + 1], expired[i])
  members[#members + 1] = expired[i]
end
if #members > 0 then
  redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", ARGV[1])
end
return members
