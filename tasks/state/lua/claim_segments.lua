-- claim_segments: pick the next segments to upload inside the sliding window.
-- KEYS[1] lease     STRING "NODE.INSTANCE:EPOCH"
-- KEYS[2] timeline  HASH   field "backup_lsn" ("%X/%X")
-- KEYS[3] inflight  ZSET   segno -> redispatch deadline (ms)
-- KEYS[4] done      ZSET   segno -> segno, finished above backup_lsn
-- ARGV[1] token, ARGV[2] parallel_jobs, ARGV[3] end segno (exclusive: first
-- segment not complete locally), ARGV[4] seg_size, ARGV[5] now ms,
-- ARGV[6] deadline ms for newly claimed segments, ARGV[7] reorder horizon
-- (segments)
-- Up to parallel_jobs claims in flight inside [segno(backup_lsn),
-- segno(backup_lsn) + horizon): the horizon, not a pinned slot, bounds the
-- finished but uncommitted segments. A claim whose deadline passed (its
-- message was lost) is handed out again (see window_claim in _window.lua).
-- Returns false when fenced, else the list of claimed segnos.
if redis.call("GET", KEYS[1]) ~= ARGV[1] then
  return false
end
return window_claim(KEYS[2], KEYS[3], KEYS[4], tonumber(ARGV[2]), tonumber(ARGV[7]),
                    tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6])
