-- commit_segment: record a finished upload and advance backup_lsn in order.
-- KEYS[1] lease     STRING "NODE.INSTANCE:EPOCH"
-- KEYS[2] timeline  HASH   field "backup_lsn" ("%X/%X")
-- KEYS[3] inflight  ZSET   segno -> redispatch deadline (ms)
-- KEYS[4] done      ZSET   segno -> segno, finished above backup_lsn
-- ARGV[1] token, ARGV[2] segno, ARGV[3] seg_size
-- backup_lsn moves only to the end of the longest run of finished segments
-- starting at segno(backup_lsn): never backwards, never over a hole. Only the
-- current lease holder commits: a stale token (an older epoch, or a lease that
-- expired) is refused, which fences a paused or partitioned node.
-- Returns {0, ""} when fenced, else {1, backup_lsn}.
if redis.call("GET", KEYS[1]) ~= ARGV[1] then
  return {0, ""}
end
local seg_size = tonumber(ARGV[3])
local segno = tonumber(ARGV[2])
local backup = redis.call("HGET", KEYS[2], "backup_lsn")
if not backup then
  return {0, ""}
end
local start = lsn_segno(backup, seg_size)
redis.call("ZREM", KEYS[3], ARGV[2])
if segno >= start then
  redis.call("ZADD", KEYS[4], segno, ARGV[2])
end
local next_segno = start
while redis.call("ZSCORE", KEYS[4], string.format("%d", next_segno)) do
  redis.call("ZREM", KEYS[4], string.format("%d", next_segno))
  next_segno = next_segno + 1
end
if next_segno > start then
  backup = lsn_of_segno(next_segno, seg_size)
  redis.call("HSET", KEYS[2], "backup_lsn", backup)
end
return {1, backup}
