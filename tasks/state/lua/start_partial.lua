-- start_partial: before a partial segment upload, check the token and record
-- the object as being uploaded (so that it is known, and collected once
-- superseded, even if the uploader dies half way).
-- KEYS[1] lease     STRING "NODE.INSTANCE:EPOCH"
-- KEYS[2] partials  HASH   object name -> "uploading" | "uploaded"
-- ARGV[1] token, ARGV[2] lease ttl ms, ARGV[3] object name
-- Returns false when the token is stale (nothing written), else the partials
-- hash as a flat name, status list, read before this call's write.
if redis.call("GET", KEYS[1]) ~= ARGV[1] then
  return false
end
redis.call("PEXPIRE", KEYS[1], ARGV[2])
local before = redis.call("HGETALL", KEYS[2])
if redis.call("HGET", KEYS[2], ARGV[3]) ~= "uploaded" then
  redis.call("HSET", KEYS[2], ARGV[3], "uploading")
end
return before
