-- raise_field: set an integer field of a hash to ARGV[2] if that is higher
-- (never down): the ledger's flushed end and the scrubber's cursors, which
-- concurrent writers may race to advance.
-- KEYS[1] HASH
-- ARGV[1] field, ARGV[2] candidate (a decimal integer below 2^53)
-- Returns the stored value.
local current = redis.call("HGET", KEYS[1], ARGV[1])
if not current or tonumber(current) < tonumber(ARGV[2]) then
  redis.call("HSET", KEYS[1], ARGV[1], ARGV[2])
  return ARGV[2]
end
return current
