-- Shared helpers, prepended to every script by tasks/state/redis.py.
-- LSNs are stored as PostgreSQL's "%X/%X" text: each half fits a Lua double
-- exactly, so segment arithmetic stays exact over the full 64-bit range
-- (seg_size is a power of two <= 2^30).
local function lsn_parse(text)
  local slash = string.find(text, "/", 1, true)
  return tonumber(string.sub(text, 1, slash - 1), 16), tonumber(string.sub(text, slash + 1), 16)
end
local function lsn_segno(text, seg_size)
  local hi, lo = lsn_parse(text)
  return hi * (4294967296 / seg_size) + math.floor(lo / seg_size)
end
local function lsn_of_segno(segno, seg_size)
  local per = 4294967296 / seg_size
  local hi = math.floor(segno / per)
  return string.format("%X/%X", hi, (segno - hi * per) * seg_size)
end
local function lsn_less(a, b)
  local ahi, alo = lsn_parse(a)
  local bhi, blo = lsn_parse(b)
  return ahi < bhi or (ahi == bhi and alo < blo)
end
