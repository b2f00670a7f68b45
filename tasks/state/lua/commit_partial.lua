-- commit_partial: a partial segment upload was stored and verified: record it
-- and raise the timeline's archived_lsn (never lowered).
-- KEYS[1] lease     STRING "NODE.INSTANCE:EPOCH"
-- KEYS[2] partials  HASH   object name -> "uploading" | "uploaded"
-- KEYS[3] timeline  HASH   field "archived_lsn" ("%X/%X"): end of the newest partial
-- ARGV[1] token, ARGV[2] object name, ARGV[3] its end LSN ("%X/%X")
-- Only the current lease holder commits: a stale token is refused, which
-- fences a paused or partitioned node.
-- Returns false when fenced, else the partials hash as a flat name, status list.
if redis.call("GET", KEYS[1]) ~= ARGV[1] then
  return false
end
redis.call("HSET", KEYS[2], ARGV[2], "uploaded")
local archived = redis.call("HGET", KEYS[3], "archived_lsn")
if not archived or lsn_less(archived, ARGV[3]) then
  redis.call("HSET", KEYS[3], "archived_lsn", ARGV[3])
end
return redis.call("HGETALL", KEYS[2])
