-- start_upload: before an upload, check the token, extend the lease and push
-- back the segment's redispatch deadline (a retrying upload is not lost).
-- KEYS[1] lease     STRING "NODE.INSTANCE:EPOCH"
-- KEYS[2] inflight  ZSET   segno -> redispatch deadline (ms)
-- ARGV[1] token, ARGV[2] lease ttl ms, ARGV[3] segno, ARGV[4] new deadline ms
-- Returns 1 when the caller may upload, 0 when its token is stale.
if redis.call("GET", KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call("PEXPIRE", KEYS[1], ARGV[2])
redis.call("ZADD", KEYS[2], "XX", ARGV[4], ARGV[3])
return 1
