-- clear_error: delete a timeline's last_error only if it still is what the
-- caller read (tasks.state.redis RedisState.clear_error): an error recorded
-- in between (an upload's, a damaged copy's) stays.
-- KEYS[1] timeline HASH
-- ARGV[1] the last_error as read
-- Returns 1 if it was deleted, else 0.
if redis.call("HGET", KEYS[1], "last_error") == ARGV[1] then
  return redis.call("HDEL", KEYS[1], "last_error")
end
return 0
