-- Shared helpers of the sliding upload window, prepended (after _lsn.lua) to
-- every script by tasks/state/redis.py. The callers check the lease token.
-- Keys, as in the scripts: lease STRING, timeline HASH (field "backup_lsn"),
-- inflight ZSET (segno -> redispatch deadline ms), done ZSET (segno -> segno,
-- finished above backup_lsn).

-- Segments whose ledger entry is kept below segno(backup_lsn) at most: the
-- offloader copies entries into the bucket's ledger pages and deletes them
-- within seconds; this bounds Redis memory when that stalls.
local LEDGER_KEEP = 4096

-- Record segno as finished and move backup_lsn to the end of the longest run
-- of finished segments starting at segno(backup_lsn): never backwards, never
-- over a hole. A commit clears the timeline's last_error and records entry
-- (what the upload verified, tasks.core.ledger; "" for none) in the ledger HASH.
-- Returns the stored backup_lsn, or false when there is none.
local function window_commit(timeline, inflight, done, ledger, segno_text, seg_size, entry)
  local segno = tonumber(segno_text)
  local backup = redis.call("HGET", timeline, "backup_lsn")
  if not backup then
    return false
  end
  local start = lsn_segno(backup, seg_size)
  redis.call("ZREM", inflight, segno_text)
  redis.call("HDEL", timeline, "last_error")
  if segno >= start then
    redis.call("ZADD", done, segno, segno_text)
    if entry ~= "" then
      redis.call("HSET", ledger, segno_text, entry)
    end
  end
  local next_segno = start
  while redis.call("ZSCORE", done, string.format("%d", next_segno)) do
    redis.call("ZREM", done, string.format("%d", next_segno))
    next_segno = next_segno + 1
  end
  if next_segno > start then
    backup = lsn_of_segno(next_segno, seg_size)
    redis.call("HSET", timeline, "backup_lsn", backup)
    for old = math.max(0, start - LEDGER_KEEP), next_segno - LEDGER_KEEP - 1 do
      redis.call("HDEL", ledger, string.format("%d", old))
    end
  end
  return backup
end

-- Claim the segments of [segno(backup_lsn), segno(backup_lsn) + parallel_jobs)
-- below end_segno that are neither finished nor claimed (a claim whose
-- deadline passed counts as lost and is handed out again). Returns the list
-- of claimed segnos as strings.
local function window_claim(timeline, inflight, done, parallel_jobs, end_segno, seg_size,
                            now, deadline)
  local backup = redis.call("HGET", timeline, "backup_lsn")
  if not backup then
    return {}
  end
  local start = lsn_segno(backup, seg_size)
  redis.call("ZREMRANGEBYSCORE", done, "-inf", "(" .. start)
  for _, member in ipairs(redis.call("ZRANGE", inflight, 0, -1)) do
    if tonumber(member) < start then
      redis.call("ZREM", inflight, member)
    end
  end
  local stop = math.min(end_segno, start + parallel_jobs)
  local claimed = {}
  for segno = start, stop - 1 do
    local member = string.format("%d", segno)
    if not redis.call("ZSCORE", done, member) then
      local current = redis.call("ZSCORE", inflight, member)
      if not current or tonumber(current) <= now then
        redis.call("ZADD", inflight, deadline, member)
        table.insert(claimed, member)
      end
    end
  end
  return claimed
end
