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

-- Claim, lowest first, the segments of [segno(backup_lsn), segno(backup_lsn) +
-- horizon) below end_segno that are neither finished nor claimed, until
-- parallel_jobs claims are in flight. A claim whose deadline passed counts as
-- lost: not in flight, and handed out again. Unlike the reference's
-- FuturesOrdered window (horizon = parallel_jobs), a finished segment above a
-- slow one frees its slot; the horizon bounds how far uploads run ahead of
-- backup_lsn, hence the done and inflight ZSETs. Model:
-- tasks.core.commit.claim. Returns the list of claimed segnos as strings.
local function window_claim(timeline, inflight, done, parallel_jobs, horizon, end_segno,
                            seg_size, now, deadline)
  local backup = redis.call("HGET", timeline, "backup_lsn")
  if not backup then
    return {}
  end
  local start = lsn_segno(backup, seg_size)
  redis.call("ZREMRANGEBYSCORE", done, "-inf", "(" .. start)
  -- One read of the inflight ZSET (at most horizon members): drop claims
  -- below the window, count the live ones.
  local deadlines = {}
  local live = 0
  local entries = redis.call("ZRANGE", inflight, 0, -1, "WITHSCORES")
  for i = 1, #entries, 2 do
    local segno = tonumber(entries[i])
    if segno < start then
      redis.call("ZREM", inflight, entries[i])
    else
      local current = tonumber(entries[i + 1])
      deadlines[segno] = current
      if current > now then
        live = live + 1
      end
    end
  end
  local stop = math.min(end_segno, start + horizon)
  if live >= parallel_jobs or stop <= start then
    return {}
  end
  local finished = {}
  for _, member in ipairs(redis.call("ZRANGEBYSCORE", done, start, stop - 1)) do
    finished[tonumber(member)] = true
  end
  local claimed, zadd = {}, {}
  for segno = start, stop - 1 do
    if live >= parallel_jobs then
      break
    end
    local current = deadlines[segno]
    if not finished[segno] and (not current or current <= now) then
      local member = string.format("%d", segno)
      table.insert(claimed, member)
      table.insert(zadd, deadline)
      table.insert(zadd, member)
      live = live + 1
    end
  end
  if #claimed > 0 then
    redis.call("ZADD", inflight, unpack(zadd))
  end
  return claimed
end
