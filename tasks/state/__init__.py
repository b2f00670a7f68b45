"""Coordination and node state: Redis (keys, records, Lua, RedisState) and the WORKDIR on disk."""
