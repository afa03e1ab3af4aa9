//! The store's server-side scripts: every check-and-update of a resource is one of these, run
//! atomically by the Redis that holds the resource, so several proxies never interleave.
//!
//! Each script touches one key, the resource's record (`KEYS[1]`), so it runs unchanged on one
//! Redis and on a Redis Cluster (no cross-slot calls). The record is a hash:
//!
//! - `c`, `m`, `a`, `x`: the version's counter, date, ambiguity and existence;
//! - `h`: the history the version belongs to (see [`PRELUDE`]); `u`: the fence, a second up to
//!   which dates stay ambiguous after the record joined a new history;
//! - `f`, `t`: the fingerprint the backend last served, and when (only when the layer watches for
//!   writers that bypass it);
//! - `l`, `e`: the write lease, a holder's random token and its expiry (Redis time, ms). The
//!   token stays until its holder bumps or releases: a holder that dies, or outlives its lease,
//!   leaves it, and the next holder bumps first, as that write's outcome is unknown.

/// Defines what every script but [`RELEASE`] shares:
///
/// - `history`: the server's process (`run_id`) and replication history (`master_replid`).
///   Both are random, and one of them changes whenever this Redis may hold less than the one
///   that issued a record's versions: a restart (empty, or from an older snapshot) changes the
///   run id; a replica promoted (by Sentinel, by the cluster, by hand) is another process, and
///   starts a new replication id too. So no record a replica copied from its primary matches
///   once it runs these scripts as a primary itself. (Two `INFO` calls, not one with two
///   sections, which only Redis 7 accepts.)
/// - `read()`: the version, in this history. A record of another history (or none) is reset to
///   the unknown version: the next counter, dated now (never backward) and ambiguous, and fenced
///   for one more second, since the Redis that issued the record's dates may have had a clock up
///   to a second ahead. Its tags (hashed from the history) and dates thus validate nothing
///   issued before, including versions this Redis never received: stale clients get `412`.
/// - `bump(v)`: the version after a write.
pub(super) const PRELUDE: &str = r#"
local server, replication = redis.call('INFO', 'server'), redis.call('INFO', 'replication')
local run = string.find(server, 'run_id:', 1, true)
local replid = string.find(replication, 'master_replid:', 1, true)
local history = string.sub(server, run + 7, run + 22) .. string.sub(replication, replid + 14, replid + 29)
local clock = redis.call('TIME')
local now = tonumber(clock[1])
local now_ms = now * 1000 + math.floor(tonumber(clock[2]) / 1000)
-- The record, as a table: c, m, a, x, u (the version and its fence), f, t (the fingerprint), l,
-- e (the lease).
local function read()
  local r = redis.call('HMGET', KEYS[1], 'c', 'm', 'a', 'x', 'h', 'u', 'f', 't', 'l', 'e')
  local v = {l = r[9], e = tonumber(r[10] or '0')}
  if r[5] == history then
    v.c, v.m, v.a, v.x = tonumber(r[1]), tonumber(r[2]), tonumber(r[3]), r[4]
    v.u, v.f, v.t = tonumber(r[6]), r[7] or '', tonumber(r[8] or '0')
    return v
  end
  v.c, v.m, v.a, v.x = tonumber(r[1] or '-1') + 1, math.max(now, tonumber(r[2] or '0')), 1, 'u'
  v.u, v.f, v.t = now + 1, '', 0
  redis.call('HSET', KEYS[1], 'c', v.c, 'm', v.m, 'a', 1, 'x', 'u', 'h', history, 'u', v.u)
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
pub(super) const CURRENT: &str = r#"
local v = read()
if v.a == 1 and now > v.m and now > v.u then
  v.m, v.a = now, 0
  redis.call('HSET', KEYS[1], 'm', now, 'a', 0)
end
return {history, v.c, v.m, v.a, v.x, v.f, v.t}
"#;

/// The current version, as it is (never re-dated).
pub(super) const PEEK: &str = r#"
local v = read()
return {history, v.c, v.m, v.a, v.x, v.f, v.t}
"#;

/// ARGV[1] = token, ARGV[2] = lease in ms. Takes the lease if it is free or expired, and
/// returns 1 and the version as `PEEK` does; 0 and nil if the lease is held. An expired lease whose token is still there was left by a holder that may have
/// forwarded a write: the version is bumped first.
pub(super) const LOCK: &str = r#"
local v = read()
if v.l then
  if v.e > now_ms then return {0, false} end
  bump(v); v.x, v.f, v.t = 'u', '', 0
  redis.call('HSET', KEYS[1], 'c', v.c, 'm', v.m, 'a', v.a, 'x', v.x)
  redis.call('HDEL', KEYS[1], 'f', 't')
end
redis.call('HSET', KEYS[1], 'l', ARGV[1], 'e', now_ms + tonumber(ARGV[2]))
return {1, {history, v.c, v.m, v.a, v.x, v.f, v.t}}
"#;

/// ARGV[1] = token, ARGV[2] = existence after the write, ARGV[3] = what the backend serves
/// since ('' for nothing known). Bumps, then releases the lease if this writer still holds it.
/// Returns the new version and whether the lease was still held.
pub(super) const BUMP: &str = r#"
local v = read()
bump(v)
redis.call('HSET', KEYS[1], 'c', v.c, 'm', v.m, 'a', v.a, 'x', ARGV[2])
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], 'f', 't')
else
  redis.call('HSET', KEYS[1], 'f', ARGV[3], 't', now)
end
local held = 0
if v.l == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'l', 'e'); held = 1
end
return {history, v.c, v.m, v.a, ARGV[2], held}
"#;

/// ARGV[1] = token. Releases a lease not followed by a write (nothing was forwarded). Needs no
/// history: a token is random, and only its holder knows it.
pub(super) const RELEASE: &str = r#"
if redis.call('HGET', KEYS[1], 'l') == ARGV[1] then
  return redis.call('HDEL', KEYS[1], 'l', 'e')
end
return 0
"#;

/// ARGV[1] = the counter a read saw ('' for any: a writer under the lock), ARGV[2] = existence.
/// Records it unless a write came in between (or the history changed: the counter moved on).
pub(super) const LEARN: &str = r#"
local v = read()
if ARGV[1] == '' or tonumber(ARGV[1]) == v.c then
  redis.call('HSET', KEYS[1], 'x', ARGV[2])
end
return 1
"#;

/// ARGV[1] = the counter the read saw, ARGV[2] = the fingerprint it saw, ARGV[3] = the
/// fingerprint its snapshot carried ('' for none). Confirms the recorded fingerprint (or
/// records the first), or, if another one is recorded for the same counter, bumps the version:
/// an out-of-band change, which the read may stamp ('b') only if what is recorded is still what
/// its snapshot carried, else not ('B'). A counter that moved on means a write through the
/// layer came in between: nothing is recorded ('s').
pub(super) const OBSERVE: &str = r#"
local v = read()
if v.c ~= tonumber(ARGV[1]) then return {history, v.c, v.m, v.a, v.x, 's'} end
if v.f == '' or same(v.f, ARGV[2]) then
  redis.call('HSET', KEYS[1], 'f', ARGV[2], 't', now)
  return {history, v.c, v.m, v.a, v.x, 'c'}
end
local recorded = v.f
bump(v)
if ARGV[2] == 'a' then v.x = 'a' else v.x = 'e' end
redis.call('HSET', KEYS[1], 'c', v.c, 'm', v.m, 'a', v.a, 'x', v.x, 'f', ARGV[2], 't', now)
local outcome = 'B'
if recorded == 'u' or (ARGV[3] ~= '' and same(recorded, ARGV[3])) then outcome = 'b' end
return {history, v.c, v.m, v.a, v.x, outcome}
"#;
