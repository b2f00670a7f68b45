-- commit_and_claim: commit_segment, then claim_segments, then renew the lease,
-- in one round trip: what an upload task does after each segment.
-- KEYS[1] lease     STRING "NODE.INSTANCE:EPOCH"
-- KEYS[2] timeline  HASH   field "backup_lsn" ("%X/%X")
-- KEYS[3] inflight  ZSET   segno -> redispatch deadline (ms)
-- KEYS[4] done      ZSET   segno -> segno, finished above backup_lsn
-- KEYS[5] ledger    HASH   segno -> ledger entry JSON the upload verified (recent window)
-- ARGV[1] token, ARGV[2] segno, ARGV[3] seg_size, ARGV[4] parallel_jobs,
-- ARGV[5] end segno (exclusive), ARGV[6] now ms, ARGV[7] deadline ms for newly
-- claimed segments, ARGV[8] lease ttl ms, ARGV[9] ledger entry ("" for none),
-- ARGV[10] reorder horizon (segments)
-- The claimed segments count as started (as after start_upload): the caller
-- uploads them at once, or sends them to its queue.
-- Returns {0, ""} when fenced, else {1, backup_lsn, claimed segno...}.
if redis.call("GET", KEYS[1]) ~= ARGV[1] then
  return {0, ""}
end
local seg_size = tonumber(ARGV[3])
local backup = window_commit(KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[2], seg_size, ARGV[9])
if not backup then
  return {0, ""}
end
local out = {1, backup}
local claimed = window_claim(KEYS[2], KEYS[3], KEYS[4], tonumber(ARGV[4]), tonumber(ARGV[10]),
                             tonumber(ARGV[5]), seg_size, tonumber(ARGV[6]), ARGV[7])
for _, member in ipairs(claimed) do
  table.insert(out, member)
end
redis.call("PEXPIRE", KEYS[1], ARGV[8])
return out
