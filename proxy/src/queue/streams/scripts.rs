//! The queue's steps on Redis, each one Lua script: atomic (no other
//! client's command runs in between, so two sidecars never take the same
//! job, and a cancel never races a take) and one round trip.
//!
//! Keys, all under the store's `key_prefix` P, queue Q from the config:
//! - `P q:Q:s:<class>` a stream per priority class (0 high, 1 normal,
//!   2 low), entries `id <job id>`, consumer group `kaname`;
//! - `P q:Q:delayed` a sorted set of job ids waiting out a backoff, by due
//!   time (unix ms);
//! - `P q:Q:depth` a hash `w0 w1 w2`: jobs waiting per class (backoff
//!   included), kept by these scripts only, so it is exact;
//! - `P q:Q:idem:<hex SHA-256 of the Idempotency-Key>` → job id: the key a
//!   client sent is hashed, never used as a key itself;
//! - `P job:<id>` a hash: `job` (the record, postcard), `body`, `status`,
//!   `attempts`, `updated`, `created`, `queue`, `class`, `entry` (the
//!   stream entry holding it now), `digest` (the request's fingerprint),
//!   `idem`, `owner` (the consumer delivering it), `error`, `result`, `due`.
//!   It expires `keep_finished` after the job ends, with its idempotency key.
//!
//! Job ids are 22 characters of URL-safe base64 made by kaname (parsed
//! before any key is built from a client's request); queue names come from
//! the config. Keys are built inside the scripts, so one Redis (or a
//! primary with replicas) is required, not Redis Cluster.

use std::sync::LazyLock;

/// ARGV: 1 prefix, 2 queue, 3 id, 4 class, 5 idempotency key digest or '',
/// 6 request fingerprint, 7 record, 8 body, 9 max_depth, 10 now (ms).
/// Returns {'new'} | {'duplicate', id, status} | {'mismatch'} | {'full'}.
const ACCEPT: &str = r"
local P, Q, id, class, idem = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local base = P .. 'q:' .. Q .. ':'
local depth = base .. 'depth'
if idem ~= '' then
  local first = redis.call('GET', base .. 'idem:' .. idem)
  if first then
    local f = redis.call('HMGET', P .. 'job:' .. first, 'status', 'digest')
    if f[1] then
      if f[2] == ARGV[6] then return {'duplicate', first, f[1]} end
      return {'mismatch'}
    end
  end
end
local w = redis.call('HMGET', depth, 'w0', 'w1', 'w2')
local waiting = (tonumber(w[1]) or 0) + (tonumber(w[2]) or 0) + (tonumber(w[3]) or 0)
if waiting >= tonumber(ARGV[9]) then return {'full'} end
local s = base .. 's:' .. class
redis.pcall('XGROUP', 'CREATE', s, 'kaname', '0', 'MKSTREAM')
local entry = redis.call('XADD', s, '*', 'id', id)
redis.call('HSET', P .. 'job:' .. id, 'job', ARGV[7], 'body', ARGV[8], 'status', 'queued',
  'attempts', 0, 'updated', ARGV[10], 'created', ARGV[10], 'queue', Q, 'class', class,
  'entry', entry, 'digest', ARGV[6], 'idem', idem)
redis.call('HINCRBY', depth, 'w' .. class, 1)
if idem ~= '' then redis.call('SET', base .. 'idem:' .. idem, id) end
return {'new'}
";

/// ARGV: 1 prefix, 2 queue, 3 consumer, 4 now (ms), 5 max jobs,
/// 6 visibility_timeout (ms). Jobs whose backoff is over go back to their
/// stream; then, class by class (strict priority), entries of consumers
/// idle longer than the visibility timeout (a sidecar that died while
/// delivering) are claimed (XAUTOCLAIM), then new entries read
/// (XREADGROUP). Returns {{id, record, body, attempts}...}, {w0, w1, w2,
/// created of the oldest waiting job or 0}.
const TAKE: &str = r"
local P, Q, me, now, max, idle = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
local base = P .. 'q:' .. Q .. ':'
local depth = base .. 'depth'
local delayed = base .. 'delayed'
for _, id in ipairs(redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, 256)) do
  redis.call('ZREM', delayed, id)
  local h = P .. 'job:' .. id
  local class = redis.call('HGET', h, 'class')
  if class then
    local s = base .. 's:' .. class
    redis.pcall('XGROUP', 'CREATE', s, 'kaname', '0', 'MKSTREAM')
    redis.call('HSET', h, 'entry', redis.call('XADD', s, '*', 'id', id))
    redis.call('HDEL', h, 'due')
  end
end
local out = {}
local function take(s, class, e)
  -- A claimed entry whose data was deleted is false (Redis 6.2).
  if not e or not e[2] then return end
  local eid, id = e[1], e[2][2]
  local h = P .. 'job:' .. id
  local f = redis.call('HMGET', h, 'status', 'entry', 'job', 'body')
  -- Not (or no longer) the job's entry, or nothing left to deliver.
  if f[2] ~= eid or (f[1] ~= 'queued' and f[1] ~= 'delivering') then
    redis.call('XACK', s, 'kaname', eid)
    redis.call('XDEL', s, eid)
    return
  end
  if f[1] == 'queued' then redis.call('HINCRBY', depth, 'w' .. class, -1) end
  local attempts = redis.call('HINCRBY', h, 'attempts', 1)
  redis.call('HSET', h, 'status', 'delivering', 'updated', now, 'owner', me)
  out[#out + 1] = {id, f[3] or '', f[4] or '', attempts}
end
for class = 0, 2 do
  if #out >= max then break end
  local s = base .. 's:' .. class
  redis.pcall('XGROUP', 'CREATE', s, 'kaname', '0', 'MKSTREAM')
  local claimed = redis.call('XAUTOCLAIM', s, 'kaname', me, idle, '0-0', 'COUNT', max - #out)
  for _, e in ipairs(claimed[2]) do take(s, class, e) end
  if #out < max then
    local read = redis.call('XREADGROUP', 'GROUP', 'kaname', me, 'COUNT', max - #out, 'STREAMS', s, '>')
    if read then
      for _, e in ipairs(read[1][2]) do take(s, class, e) end
    end
  end
end
local w = redis.call('HMGET', depth, 'w0', 'w1', 'w2')
local oldest = 0
local function older(id)
  local c = tonumber(redis.call('HGET', P .. 'job:' .. id, 'created'))
  if c and (oldest == 0 or c < oldest) then oldest = c end
end
for class = 0, 2 do
  local s = base .. 's:' .. class
  -- A class not read this time (enough taken before it) may not exist yet.
  local groups = {}
  if redis.call('EXISTS', s) == 1 then groups = redis.call('XINFO', 'GROUPS', s) end
  for _, g in ipairs(groups) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    if info['name'] == 'kaname' then
      local next = redis.call('XRANGE', s, '(' .. info['last-delivered-id'], '+', 'COUNT', 1)
      if next[1] then older(next[1][2][2]) end
    end
  end
end
local first = redis.call('ZRANGE', delayed, 0, 0)
if first[1] then older(first[1]) end
return {out, {tonumber(w[1]) or 0, tonumber(w[2]) or 0, tonumber(w[3]) or 0, oldest}}
";

/// ARGV: 1 prefix, 2 id, 3 how (done | failed | retry | requeue), 4 now,
/// 5 keep (ms, done and failed) or due (unix ms, retry), 6 error or '',
/// 7 result or ''. Only a job being delivered is finished; returns 1, or 0
/// when it was not (finished by the sidecar it was taken over from).
const FINISH: &str = r"
local P, id, how, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local h = P .. 'job:' .. id
local f = redis.call('HMGET', h, 'status', 'queue', 'class', 'entry', 'idem')
if f[1] ~= 'delivering' then return 0 end
local base = P .. 'q:' .. f[2] .. ':'
local s = base .. 's:' .. f[3]
if f[4] then
  redis.call('XACK', s, 'kaname', f[4])
  redis.call('XDEL', s, f[4])
end
redis.call('HDEL', h, 'entry', 'owner')
if how == 'retry' then
  redis.call('HSET', h, 'status', 'queued', 'updated', now, 'due', ARGV[5], 'error', ARGV[6])
  redis.call('ZADD', base .. 'delayed', ARGV[5], id)
  redis.call('HINCRBY', base .. 'depth', 'w' .. f[3], 1)
elseif how == 'requeue' then
  redis.call('HSET', h, 'status', 'queued', 'updated', now)
  redis.call('HINCRBY', h, 'attempts', -1)
  redis.call('HSET', h, 'entry', redis.call('XADD', s, '*', 'id', id))
  redis.call('HINCRBY', base .. 'depth', 'w' .. f[3], 1)
else
  redis.call('HSET', h, 'status', how, 'updated', now)
  if ARGV[6] ~= '' then redis.call('HSET', h, 'error', ARGV[6]) else redis.call('HDEL', h, 'error') end
  if ARGV[7] ~= '' then redis.call('HSET', h, 'result', ARGV[7]) else redis.call('HDEL', h, 'result') end
  redis.call('HDEL', h, 'body')
  redis.call('PEXPIRE', h, ARGV[5])
  if f[5] and f[5] ~= '' then redis.call('PEXPIRE', base .. 'idem:' .. f[5], ARGV[5]) end
end
return 1
";

/// ARGV: 1 prefix, 2 id, 3 now, 4 keep (ms). Returns 'cancelled',
/// 'conflict' (being delivered or finished) or 'missing'.
const CANCEL: &str = r"
local P, id, now = ARGV[1], ARGV[2], ARGV[3]
local h = P .. 'job:' .. id
local f = redis.call('HMGET', h, 'status', 'queue', 'class', 'entry', 'idem')
if not f[1] then return 'missing' end
if f[1] ~= 'queued' then return 'conflict' end
local base = P .. 'q:' .. f[2] .. ':'
if f[4] then
  local s = base .. 's:' .. f[3]
  redis.call('XACK', s, 'kaname', f[4])
  redis.call('XDEL', s, f[4])
else
  redis.call('ZREM', base .. 'delayed', id)
end
redis.call('HINCRBY', base .. 'depth', 'w' .. f[3], -1)
redis.call('HSET', h, 'status', 'cancelled', 'updated', now)
redis.call('HDEL', h, 'body', 'entry', 'due')
redis.call('PEXPIRE', h, ARGV[4])
if f[5] and f[5] ~= '' then redis.call('PEXPIRE', base .. 'idem:' .. f[5], ARGV[4]) end
return 'cancelled'
";

pub static ACCEPT_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(ACCEPT));
pub static TAKE_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(TAKE));
pub static FINISH_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(FINISH));
pub static CANCEL_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(CANCEL));
