//! The store's server-side scripts: every check-and-update of a resource is one of these, run
//! atomically by the Redis that holds the resource, so several proxies never interleave.
//!
//! Each script touches one key, the resource's record (`KEYS[1]`), so it runs unchanged on one
//! Redis and on a Redis Cluster (no cross-slot calls). The record is a hash:
//!
//! - `c`, `m`, `a`, `x`: the version's counter, date, ambiguity and existence;
//! - `h`: the history the record belongs to (see [`PRELUDE`]); `i`: the ETag instance of its
//!   versions, drawn when the record was made in this history; `u`: the fence, a second up to
//!   which dates stay ambiguous after that;
//! - `f`, `t`: the fingerprint the backend last served, and when (only when the layer watches for
//!   writers that bypass it);
//! - `l`, `e`: the write lease, a holder's random token and its expiry (Redis time, ms). The
//!   token stays until its holder bumps or releases: a holder that dies, or outlives its lease,
//!   leaves it, and the next holder bumps first, as that write's outcome is unknown;
//! - `b`, `bc`: the token and counter of the last bump, so a bump sent twice (its first answer
//!   lost) is recognized, not applied twice.
//!
//! A script that needs the lease (a writer's look, or what it learned, under its lock) gets the
//! holder's token and fails with `LEASE` when another holds it: the writer must not go on.

/// Defines what every script but [`RELEASE`] shares:
///
/// - It refuses to run on a replica (`READONLY`): a replica's data may be behind, and a primary
///   demoted to a replica keeps its ids until it resyncs. The connection then looks for the
///   primary again.
/// - `history`: the server's process (`run_id`) and replication history (`master_replid`).
///   Both are random, and one of them changes whenever this Redis may hold less than the one
///   that wrote a record: a restart (empty, or from an older snapshot) changes the run id; a
///   replica promoted (by Sentinel, by the cluster, by hand) is another process, and starts a new
///   replication id too. So no record a replica copied from its primary matches once it runs
///   these scripts as a primary itself. (Two `INFO` calls, not one with two sections, which only
///   Redis 7 accepts.)
/// - `read()`: the record, in this history. A record of another history, or none (never made,
///   or deleted: `FLUSHALL`, an eviction), is made anew: the next counter, a new instance (a
///   hash of the history and the Redis time in µs), dated now (never backward) and ambiguous,
///   and fenced for one more second, since the Redis that issued the old dates may have had a
///   clock up to a second ahead. Its tags and dates thus validate nothing issued before,
///   including versions this Redis never received: stale clients get `412`.
/// - `bump(v)`: the version after a write. `held(v)`: fails unless ARGV[1] holds the lease.
pub(super) const PRELUDE: &str = r#"
local replication = redis.call('INFO', 'replication')
if not string.find(replication, 'role:master', 1, true) then
  return redis.error_reply('READONLY the version store is a replica')
end
local server = redis.call('INFO', 'server')
local run = string.find(server, 'run_id:', 1, true)
local replid = string.find(replication, 'master_replid:', 1, true)
local history = string.sub(server, run + 7, run + 22) .. string.sub(replication, replid + 14, replid + 29)
local clock = redis.call('TIME')
local now = tonumber(clock[1])
local now_ms = now * 1000 + math.floor(tonumber(clock[2]) / 1000)
-- The record, as a table: i, c, m, a, x, u (the version and its fence), f, t (the fingerprint),
-- l, e (the lease), b, bc (the last bump).
local function read()
  local r = redis.call('HMGET', KEYS[1], 'h', 'i', 'c', 'm', 'a', 'x', 'u', 'f', 't', 'l', 'e',
    'b', 'bc')
  local v = {l = r[10], e = tonumber(r[11] or '0'), b = r[12], bc = tonumber(r[13] or '-1'),
    new = 0}
  if r[1] == history then
    v.i, v.c, v.m, v.a, v.x = r[2], tonumber(r[3]), tonumber(r[4]), tonumber(r[5]), r[6]
    v.u, v.f, v.t = tonumber(r[7]), r[8] or '', tonumber(r[9] or '0')
    return v
  end
  v.i = string.sub(redis.sha1hex(history .. ':' .. clock[1] .. '.' .. clock[2]), 1, 16)
  v.c, v.m, v.a, v.x = tonumber(r[3] or '-1') + 1, math.max(now, tonumber(r[4] or '0')), 1, 'u'
  v.u, v.f, v.t, v.new = now + 1, '', 0, 1
  redis.call('HSET', KEYS[1], 'h', history, 'i', v.i, 'c', v.c, 'm', v.m, 'a', 1, 'x', 'u',
    'u', v.u)
  redis.call('HDEL', KEYS[1], 'f', 't')
  return v
end
-- Bumps v: the next counter, dated now, never backward; a date it shares with the version
-- before, or one at or before the fence, is ambiguous.
local function bump(v)
  local m = math.max(now, v.m)
  if m == v.m or m <= v.u then v.a = 1 else v.a = 0 end
  v.c, v.m = v.c + 1, m
end
local function held(v)
  if v.l ~= ARGV[1] then
    error({err = 'LEASE the write lock was lost (it expired, or the version store failed over)'})
  end
end
-- Two encoded fingerprints name one representation: what the layer could not learn ('u') is
-- never the same; ETags compare weakly (strong 'e' and weak 'E' differ only in their kind).
local function same(a, b)
  if a == 'u' or b == 'u' then return false end
  local ka, kb = string.sub(a, 1, 1), string.sub(b, 1, 1)
  if (ka == 'e' or ka == 'E') and (kb == 'e' or kb == 'E') then
    return string.sub(a, 2) == string.sub(b, 2)
  end
  return a == b
end
"#;

/// The current version, re-dated if ambiguous and Redis time has moved past it and the fence.
/// `CURRENT`, `PEEK` and `LOCK` end the version with 1 if the record was just made anew.
pub(super) const CURRENT: &str = r#"
local v = read()
if v.a == 1 and now > v.m and now > v.u then
  v.m, v.a = now, 0
  redis.call('HSET', KEYS[1], 'm', now, 'a', 0)
end
return {v.i, v.c, v.m, v.a, v.x, v.f, v.t, v.new}
"#;

/// ARGV[1] = the lease holder's token. The current version, as it is (never re-dated).
pub(super) const PEEK: &str = r#"
local v = read()
held(v)
return {v.i, v.c, v.m, v.a, v.x, v.f, v.t, v.new}
"#;

/// ARGV[1] = token, ARGV[2] = lease in ms. Takes the lease if it is free, expired, or already
/// this token's (a retried call whose first answer was lost), and returns 1 and the version as
/// `PEEK` does; 0 and an empty version if another holds it. An expired lease whose token is still
/// there was left by a holder that may have forwarded a write: the version is bumped first.
pub(super) const LOCK: &str = r#"
local v = read()
if v.l and v.l ~= ARGV[1] then
  if v.e > now_ms then return {0, {'', 0, 0, 0, '', '', 0, v.new}} end
  bump(v); v.x, v.f, v.t = 'u', '', 0
  redis.call('HSET', KEYS[1], 'c', v.c, 'm', v.m, 'a', v.a, 'x', v.x)
  redis.call('HDEL', KEYS[1], 'f', 't')
end
redis.call('HSET', KEYS[1], 'l', ARGV[1], 'e', now_ms + tonumber(ARGV[2]))
return {1, {v.i, v.c, v.m, v.a, v.x, v.f, v.t, v.new}}
"#;

/// ARGV[1] = token, ARGV[2] = existence after the write, ARGV[3] = what the backend serves
/// since ('' for nothing known). Bumps, then releases the lease if this writer still holds it.
/// Returns the new version and whether the lease was still held. The same bump sent again
/// (its lease was held, and nothing bumped since) returns the version it made.
pub(super) const BUMP: &str = r#"
local v = read()
if v.b == ARGV[1] and v.bc == v.c then return {v.i, v.c, v.m, v.a, v.x, 1} end
bump(v)
redis.call('HSET', KEYS[1], 'c', v.c, 'm', v.m, 'a', v.a, 'x', ARGV[2])
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], 'f', 't')
else
  redis.call('HSET', KEYS[1], 'f', ARGV[3], 't', now)
end
local was_held = 0
if v.l == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'l', 'e'); was_held = 1
  redis.call('HSET', KEYS[1], 'b', ARGV[1], 'bc', v.c)
else
  redis.call('HDEL', KEYS[1], 'b', 'bc') -- a lost lease is reported again if asked again
end
return {v.i, v.c, v.m, v.a, ARGV[2], was_held}
"#;

/// ARGV[1] = token. Releases a lease not followed by a write (nothing was forwarded). Needs no
/// history: a token is random, and only its holder knows it.
pub(super) const RELEASE: &str = r#"
if redis.call('HGET', KEYS[1], 'l') == ARGV[1] then
  return redis.call('HDEL', KEYS[1], 'l', 'e')
end
return 0
"#;

/// What a read learned, for the version it saw: ARGV[1] = '', ARGV[2] = its instance, ARGV[3] =
/// its counter, ARGV[4] = existence; recorded unless a write (or a new history) came in between.
/// Or what a writer learned under its lock: ARGV[1] = its token, ARGV[4] = existence.
pub(super) const LEARN: &str = r#"
local v = read()
if ARGV[1] ~= '' then
  held(v)
elseif ARGV[2] ~= v.i or tonumber(ARGV[3]) ~= v.c then
  return 0
end
redis.call('HSET', KEYS[1], 'x', ARGV[4])
return 1
"#;

/// ARGV[1] = the instance and ARGV[2] the counter the read saw, ARGV[3] = the fingerprint it saw,
/// ARGV[4] = the fingerprint its snapshot carried ('' for none). Confirms the recorded
/// fingerprint (or records the first), or, if another one is recorded for the same version,
/// bumps the version: an out-of-band change, which the read may stamp ('b') only if what is
/// recorded is still what its snapshot carried, else not ('B'). A version that moved on means a
/// write through the layer (or a new history) came in between: nothing is recorded ('s').
pub(super) const OBSERVE: &str = r#"
local v = read()
if v.i ~= ARGV[1] or v.c ~= tonumber(ARGV[2]) then return {v.i, v.c, v.m, v.a, v.x, 's'} end
if v.f == '' or same(v.f, ARGV[3]) then
  redis.call('HSET', KEYS[1], 'f', ARGV[3], 't', now)
  return {v.i, v.c, v.m, v.a, v.x, 'c'}
end
local recorded = v.f
bump(v)
if ARGV[3] == 'a' then v.x = 'a' else v.x = 'e' end
redis.call('HSET', KEYS[1], 'c', v.c, 'm', v.m, 'a', v.a, 'x', v.x, 'f', ARGV[3], 't', now)
local outcome = 'B'
if recorded == 'u' or (ARGV[4] ~= '' and same(recorded, ARGV[4])) then outcome = 'b' end
return {v.i, v.c, v.m, v.a, v.x, outcome}
"#;

/// Whether this Redis answers as a primary (for readiness checks).
pub(super) const PING: &str = r#"
if not string.find(redis.call('INFO', 'replication'), 'role:master', 1, true) then
  return redis.error_reply('READONLY the version store is a replica')
end
return redis.call('PING')
"#;
