-- raise_lsn: move an LSN field of a timeline up to ARGV[2] if that is higher
-- (never down): archive_start_lsn (where the archive starts after `walbackup
-- retain`) and archived_lsn (the end of the newest partial upload, as the
-- archive's listing finds it after Redis lost its data).
-- KEYS[1] timeline HASH
-- ARGV[1] field, ARGV[2] candidate ("%X/%X")
-- Returns the stored value.
local current = redis.call("HGET", KEYS[1], ARGV[1])
if not current or lsn_less(current, ARGV[2]) then
  redis.call("HSET", KEYS[1], ARGV[1], ARGV[2])
  return ARGV[2]
end
return current
