-- renew_lease: extend the lease if, and only if, the caller still holds it.
-- KEYS[1] lease STRING "NODE.INSTANCE:EPOCH"
-- ARGV[1] token, ARGV[2] lease ttl ms
-- Returns 1 when renewed, 0 when the token is stale.
if redis.call("GET", KEYS[1]) == ARGV[1] then
  redis.call("PEXPIRE", KEYS[1], ARGV[2])
  return 1
end
return 0
