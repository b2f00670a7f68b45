-- claim_segments: pick the next segments to upload inside the sliding window.
-- KEYS[1] lease     STRING "NODE.INSTANCE:EPOCH"
-- KEYS[2] timeline  HASH   field "backup_lsn" ("%X/%X")
-- KEYS[3] inflight  ZSET   segno -> redispatch deadline (ms)
-- KEYS[4] done      ZSET   segno -> segno, finished above backup_lsn
-- ARGV[1] token, ARGV[2] parallel_jobs, ARGV[3] end segno (exclusive: first
-- segment not complete locally), ARGV[4] seg_size, ARGV[5] now ms,
-- ARGV[6] deadline ms for newly claimed segments
-- The window is [segno(backup_lsn), segno(backup_lsn) + parallel_jobs), as the
-- reference's FuturesOrdered: a slow segment holds the window, so finished
-- but uncommitted segments stay bounded. A claim whose deadline passed (its
-- message was lost) is handed out again.
-- Returns false when fenced, else the list of claimed segnos.
if redis.call("GET", KEYS[1]) ~= ARGV[1] then
  return false
end
local seg_size = tonumber(ARGV[4])
local backup = redis.call("HGET", KEYS[2], "backup_lsn")
if not backup then
  return {}
end
local start = lsn_segno(backup, seg_size)
local now = tonumber(ARGV[5])
redis.call("ZREMRANGEBYSCORE", KEYS[4], "-inf", "(" .. start)
for _, member in ipairs(redis.call("ZRANGE", KEYS[3], 0, -1)) do
  if tonumber(member) < start then
    redis.call("ZREM", KEYS[3], member)
  end
end
local stop = math.min(tonumber(ARGV[3]), start + tonumber(ARGV[2]))
local claimed = {}
for segno = start, stop - 1 do
  local member = string.format("%d", segno)
  if not redis.call("ZSCORE", KEYS[4], member) then
    local deadline = redis.call("ZSCORE", KEYS[3], member)
    if not deadline or tonumber(deadline) <= now then
      redis.call("ZADD", KEYS[3], ARGV[6], member)
      table.insert(claimed, member)
    end
  end
end
return claimed
