-- release_lease: drop the lease if the caller holds it (stepping down).
-- KEYS[1] lease    STRING "NODE.INSTANCE:EPOCH"
-- KEYS[2] timeline HASH   field "holder" cleared
-- ARGV[1] token
-- Returns 1 when released, 0 when the caller did not hold it.
if redis.call("GET", KEYS[1]) == ARGV[1] then
  redis.call("DEL", KEYS[1])
  redis.call("HDEL", KEYS[2], "holder")
  return 1
end
return 0
