-- commit_segment: record a finished upload and advance backup_lsn in order.
-- KEYS[1] lease     STRING "NODE.INSTANCE:EPOCH"
-- KEYS[2] timeline  HASH   field "backup_lsn" ("%X/%X")
-- KEYS[3] inflight  ZSET   segno -> redispatch deadline (ms)
-- KEYS[4] done      ZSET   segno -> segno, finished above backup_lsn
-- KEYS[5] ledger    HASH   segno -> ledger entry JSON the upload verified (recent window)
-- ARGV[1] token, ARGV[2] segno, ARGV[3] seg_size, ARGV[4] ledger entry ("" for none)
-- backup_lsn moves only to the end of the longest run of finished segments
-- starting at segno(backup_lsn): never backwards, never over a hole (see
-- window_commit in _window.lua). Only the current lease holder commits: a
-- stale token (an older epoch, or a lease that expired) is refused, which
-- fences a paused or partitioned node.
-- Returns {0, ""} when fenced, else {1, backup_lsn}.
if redis.call("GET", KEYS[1]) ~= ARGV[1] then
  return {0, ""}
end
local backup = window_commit(KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[2], tonumber(ARGV[3]), ARGV[4])
if not backup then
  return {0, ""}
end
return {1, backup}
