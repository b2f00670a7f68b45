-- acquire_lease: take (or keep) a timeline's upload lease and mint its fencing token.
-- KEYS[1] lease     STRING  "NODE.INSTANCE:EPOCH" of the holder, expires after ARGV[2] ms
-- KEYS[2] timeline  HASH    field "epoch": fencing counter, only ever incremented here
-- KEYS[3] inflight  ZSET    segno -> redispatch deadline (ms) of the holder's uploads
-- ARGV[1] owner "NODE.INSTANCE" (INSTANCE is new for every worker process, so a
--         restarted node waits out its old lease instead of inheriting claims
--         whose messages died with the old process), ARGV[2] lease ttl ms,
-- ARGV[3] node id
-- Returns the token, or false when another owner holds the lease.
local held = redis.call("GET", KEYS[1])
if held then
  if string.sub(held, 1, string.len(ARGV[1]) + 1) == ARGV[1] .. ":" then
    redis.call("PEXPIRE", KEYS[1], ARGV[2])
    return held
  end
  return false
end
-- The counter starts from the server's clock in microseconds, not from 1: after
-- Redis lost its data, a token minted now never equals one a stale holder
-- still carries (leases are taken far less often than once a microsecond).
local now = redis.call("TIME")
redis.call("HSETNX", KEYS[2], "epoch", now[1] .. string.format("%06d", tonumber(now[2])))
local epoch = redis.call("HINCRBY", KEYS[2], "epoch", 1)
local token = ARGV[1] .. ":" .. string.format("%d", epoch)
redis.call("SET", KEYS[1], token, "PX", ARGV[2])
redis.call("HSET", KEYS[2], "holder", ARGV[3])
-- A new holder starts from backup_lsn: uploads claimed under an older token
-- will be refused at commit, so forget them.
redis.call("DEL", KEYS[3])
return token
