-- raise_archive_start: move archive_start_lsn up to ARGV[1] if that is higher
-- (never down): where a timeline's archive starts after `walbackup retain`.
-- KEYS[1] timeline HASH field "archive_start_lsn" ("%X/%X")
-- ARGV[1] candidate archive start ("%X/%X")
-- Returns the stored archive_start_lsn.
local current = redis.call("HGET", KEYS[1], "archive_start_lsn")
if not current or lsn_less(current, ARGV[1]) then
  redis.call("HSET", KEYS[1], "archive_start_lsn", ARGV[1])
  return ARGV[1]
end
return current
