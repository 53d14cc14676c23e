"""The Lua scripts of the Redis state; each runs atomically in Redis (docs/state.md has the key layout).

Every state script takes the key prefix as ARGV[1] and builds its key names from it (so the keys are
not declared in KEYS: these scripts need one Redis server, not a cluster). Times come from Redis's own
clock (TIME), so edges whose clocks differ still agree on lease deadlines and bucket refills.
"""

from __future__ import annotations

_COMMON = """
local P = ARGV[1]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# The result cache: run:<id> holds the packed output; size (hash) its bytes; lru (sorted set) the ids
# by last use, scored by a counter (clock), so no two uses tie; bytes the total.
_CACHE = """
local function cache_touch(id)
  redis.call('ZADD', P .. 'lru', redis.call('INCR', P .. 'clock'), id)
end

local function cache_put(id, blob, max_bytes)
  local size = #blob
  if size > max_bytes then return end
  local old = redis.call('HGET', P .. 'size', id)
  if old then redis.call('DECRBY', P .. 'bytes', old) end
  redis.call('SET', P .. 'run:' .. id, blob)
  redis.call('HSET', P .. 'size', id, size)
  cache_touch(id)
  local total = redis.call('INCRBY', P .. 'bytes', size)
  while total > max_bytes do
    local victim = redis.call('ZPOPMIN', P .. 'lru')[1]
    total = redis.call('DECRBY', P .. 'bytes', redis.call('HGET', P .. 'size', victim))
    redis.call('HDEL', P .. 'size', victim)
    redis.call('DEL', P .. 'run:' .. victim)
  end
end
"""

# ARGV: P, id → the packed output or nil; a hit becomes the most recently used.
CACHE_GET = (
    _COMMON
    + _CACHE
    + """
local blob = redis.call('GET', P .. 'run:' .. ARGV[2])
if blob then cache_touch(ARGV[2]) end
return blob
"""
)

# ARGV: P, id, client, job JSON, queue bound, client bound, use_cache (1/0), runner, image digest.
# → {'done', output} | {'joined', depth} | {'full', ''} | {'client_full', ''} | {'queued', depth}
# job:<id> (hash: job, client, runner, image, attempts, token while leased) exists while the job is
# queued or leased: it is the flight that identical requests join. q:<client> is the client's
# sub-queue; turns lists the clients with waiting jobs in the order they are served; queued counts
# waiting jobs.
SUBMIT = (
    _COMMON
    + """
local id, client = ARGV[2], ARGV[3]
if ARGV[7] == '1' then
  local out = redis.call('GET', P .. 'out:' .. id)
  if out then return {'done', out} end
end
local queued = tonumber(redis.call('GET', P .. 'queued') or '0')
if redis.call('EXISTS', P .. 'job:' .. id) == 1 then return {'joined', tostring(queued)} end
if queued >= tonumber(ARGV[5]) then return {'full', ''} end
local queue = P .. 'q:' .. client
local mine = redis.call('LLEN', queue)
if mine >= tonumber(ARGV[6]) then return {'client_full', ''} end
redis.call('HSET', P .. 'job:' .. id, 'job', ARGV[4], 'client', client, 'runner', ARGV[8], 'image', ARGV[9])
redis.call('RPUSH', queue, id)
if mine == 0 then redis.call('RPUSH', P .. 'turns', client) end
redis.call('INCR', P .. 'queued')
redis.call('PUBLISH', P .. 'work', id)
return {'queued', tostring(queued + 1)}
"""
)

# ARGV: P, token, lease ms, capabilities, scan depth, scan queues
# → {'job', job JSON, depth, attempt} | {'wanted', image digest…}.
# First every job whose lease deadline (leases: sorted set id → deadline ms) has passed goes back to the
# front list, earliest deadline first. Then the first job the caller can run is leased: from the front
# list, else from the clients' sub-queues in turn order (the client served goes to the back of turns,
# the clients passed over keep their place). Capabilities are '' (any job: the in-process worker) or
# JSON {"runners": [...], "images": [...], "fetching": [...]}; only the first `scan depth` jobs of a
# list and the first `scan queues` clients are looked at. Without a job, the images of the jobs
# looked at that the caller could run once it fetched them.
TAKE = (
    _COMMON
    + """
local now = now_ms()
local expired = redis.call('ZRANGEBYSCORE', P .. 'leases', '-inf', now)
for i = #expired, 1, -1 do
  local id = expired[i]
  redis.call('ZREM', P .. 'leases', id)
  redis.call('HDEL', P .. 'job:' .. id, 'token')
  redis.call('LPUSH', P .. 'front', id)
  redis.call('INCR', P .. 'queued')
end
if #expired > 1 then redis.call('PUBLISH', P .. 'work', 'requeued') end
local any = ARGV[4] == ''
local depth, queues = tonumber(ARGV[5]), tonumber(ARGV[6])
local runs, held, fetching, wanted, listed = {}, {}, {}, {}, {}
if not any then
  local caps = cjson.decode(ARGV[4])
  for _, r in ipairs(caps.runners) do runs[r] = true end
  for _, d in ipairs(caps.images) do held[d] = true end
  for _, d in ipairs(caps.fetching) do fetching[d] = true end
end
local function pick(list)
  if any then return redis.call('LPOP', list) end
  for _, id in ipairs(redis.call('LRANGE', list, 0, depth - 1)) do
    local need = redis.call('HMGET', P .. 'job:' .. id, 'runner', 'image')
    local runner, image = need[1], need[2]
    if runs[runner] and held[image] then
      redis.call('LREM', list, 1, id)
      return id
    end
    if runs[runner] and not fetching[image] and not listed[image] then
      listed[image] = true
      wanted[#wanted + 1] = image
    end
  end
  return false
end
local id = pick(P .. 'front')
if not id then
  for _, client in ipairs(redis.call('LRANGE', P .. 'turns', 0, queues - 1)) do
    local queue = P .. 'q:' .. client
    id = pick(queue)
    if id then
      redis.call('LREM', P .. 'turns', 1, client)
      if redis.call('LLEN', queue) > 0 then redis.call('RPUSH', P .. 'turns', client) end
      break
    end
  end
end
if not id then return {'wanted', unpack(wanted)} end
local left = redis.call('DECR', P .. 'queued')
redis.call('HSET', P .. 'job:' .. id, 'token', ARGV[2])
redis.call('ZADD', P .. 'leases', now + tonumber(ARGV[3]), id)
local attempt = redis.call('HINCRBY', P .. 'job:' .. id, 'attempts', 1)
return {'job', redis.call('HGET', P .. 'job:' .. id, 'job'), tostring(left), tostring(attempt)}
"""
)

# ARGV: P, id, token, lease ms → 1, or 0 when the job is no longer leased with this token.
EXTEND = (
    _COMMON
    + """
if redis.call('HGET', P .. 'job:' .. ARGV[2], 'token') ~= ARGV[3] then return 0 end
redis.call('ZADD', P .. 'leases', now_ms() + tonumber(ARGV[4]), ARGV[2])
return 1
"""
)

# ARGV: P, id, token, packed output, cache bytes, out ms → 1, or 0 (and nothing done) when the lease
# is no longer held. The output goes into the cache and, for the waiters, under out:<id> for a while;
# then `done` announces the id.
COMPLETE = (
    _COMMON
    + _CACHE
    + """
local id = ARGV[2]
if redis.call('HGET', P .. 'job:' .. id, 'token') ~= ARGV[3] then return 0 end
redis.call('DEL', P .. 'job:' .. id)
redis.call('ZREM', P .. 'leases', id)
cache_put(id, ARGV[4], tonumber(ARGV[5]))
redis.call('SET', P .. 'out:' .. id, ARGV[4], 'PX', ARGV[6])
redis.call('PUBLISH', P .. 'done', id)
return 1
"""
)

# ARGV: P, id → false (not in flight) | {'running', runner} | {'queued', runner, position}: the jobs of
# the front list before it, its client's earlier jobs, and from each other client in turns as many as
# the round-robin serves first (one per turn; one more for a client whose turn comes before).
PROGRESS = """
local P, id = ARGV[1], ARGV[2]
local job = redis.call('HMGET', P .. 'job:' .. id, 'client', 'runner', 'token')
local client, runner = job[1], job[2]
if not client then return false end
if job[3] then return {'running', runner} end
local front = redis.call('LPOS', P .. 'front', id)
if front then return {'queued', runner, front} end
local mine = redis.call('LPOS', P .. 'q:' .. client, id)
if not mine then return false end
local ahead, before = redis.call('LLEN', P .. 'front') + mine, 1
for _, other in ipairs(redis.call('LRANGE', P .. 'turns', 0, -1)) do
  if other == client then
    before = 0
  else
    ahead = ahead + math.min(redis.call('LLEN', P .. 'q:' .. other), mine + before)
  end
end
return {'queued', runner, ahead}
"""

STATE = {
    "cache_get": CACHE_GET,
    "submit": SUBMIT,
    "take": TAKE,
    "extend": EXTEND,
    "complete": COMPLETE,
    "progress": PROGRESS,
}

# KEYS[1]: the bucket; ARGV: cost, rate (tokens/s), burst. The bucket is the time at which it is full
# again (api/ratelimit.py); the arithmetic is take_tokens's with "now" as 0, step for step, so that
# Python reaches the same decision from the returned lag. 1e-6 is take_tokens's slack. A bucket that is
# full again is the same as no bucket: the key expires then.
TAKE_TOKENS = """
local cost, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lag = math.max(tonumber(redis.call('GET', KEYS[1]) or now) - now, 0)
local after = lag + cost / rate
if after - burst / rate <= 1e-6 then
  redis.call('SET', KEYS[1], string.format('%.17g', now + after), 'PX', math.ceil(after * 1000) + 1)
end
return string.format('%.17g', lag)
"""
