-- raise_backup_lsn: move backup_lsn up to ARGV[1] if that is higher (never down).
-- Used to start a timeline at its timeline_start_lsn and to recover backup_lsn
-- that nodes persisted when Redis lost it.
-- KEYS[1] timeline HASH field "backup_lsn" ("%X/%X")
-- ARGV[1] candidate backup_lsn ("%X/%X")
-- Returns the stored backup_lsn.
local current = redis.call("HGET", KEYS[1], "backup_lsn")
if not current or lsn_less(current, ARGV[1]) then
  redis.call("HSET", KEYS[1], "backup_lsn", ARGV[1])
  return ARGV[1]
end
return current
