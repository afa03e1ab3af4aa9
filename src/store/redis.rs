//! [`RedisStore`]: one version store for several proxies, on Redis.
//!
//! Every check-and-update runs as one server-side script, so it is atomic across instances,
//! and dates come from Redis `TIME`, one clock for all of them. Per resource `R` (keys are
//! prefixed, `tc:` by default):
//!
//! - `tc:v:R`, a hash: the version's counter `c`, date `m`, ambiguity `a`, existence `x`;
//! - `tc:l:R`, the write lock: a lease (`SET NX PX`) holding a random token, released only by
//!   its holder (a script compares the token);
//! - in `tc:v:R`, `w`: the token of a holder that may have forwarded a write. Set with the
//!   lease, removed by its bump or its release. A holder that dies, or outlives its lease,
//!   leaves it, and the next holder bumps first: that write's outcome is unknown (invariant 4);
//! - in `tc:v:R`, `f` and `t`: the fingerprint the backend last served, and when (only when the
//!   layer watches for writers that bypass it);
//! - `tc:epoch`: `<id>:<floor>`, made by the first script that finds it missing. A hash of the
//!   id is part of every ETag and the floor (the Redis time then) dates every resource Redis
//!   does not know. A Redis restarted empty thus starts a new epoch: tags from before never
//!   match, and old dates are at or before the floor, which is ambiguous, so stale clients get
//!   `412` (invariant 5).
//!
//! A lease lasts as long as the layer may hold the lock: twice its write timeout (the existence
//! probe, then the write), plus the grace period, plus a second for the store's own calls. The
//! layer sizes it; nothing is left to configure by hand.
//!
//! Limits, stated plainly: a process that stalls longer than its lease (a paused VM) can be
//! overtaken by the next writer; and Redis must
//! not evict these keys (`maxmemory-policy noeviction`, or a `volatile-*` policy), since a
//! version Redis forgets within one epoch would start again at counter 0 and could reissue a tag.

use std::{
    collections::hash_map::RandomState,
    future::Future,
    hash::BuildHasher,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use http::HeaderMap;
use redis::{aio::ConnectionManager, Script};

use super::{Existence, Fingerprint, Observed, Rekey, Snapshot, StoreError, Version, VersionStore};
use crate::{clock::unix_secs, fingerprint::BodyHash};

/// A [`VersionStore`] in Redis, shared by every proxy that uses the same Redis and prefix.
///
/// ```no_run
/// use tower_conditional::{store::RedisStore, ConditionalLayer};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::open("redis://127.0.0.1:6379/")?;
/// let layer = ConditionalLayer::new().store(store);
/// // A key function, before or after the store, keeps it.
/// let layer = layer.key_fn(|parts: &http::request::Parts| Some(parts.uri.path().to_owned()));
/// # drop(layer);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    prefix: Arc<str>,
    /// Proposed as the instance of a new epoch; Redis keeps the first proposal it sees.
    proposal: Arc<str>,
    scripts: Arc<Scripts>,
}

struct Scripts {
    current: Script,
    observe: Script,
    peek: Script,
    bump: Script,
    learn: Script,
    release: Script,
    lock: Script,
}

/// Proof of a held lease on a resource's lock. Dropping it releases the lease (in a task).
pub struct RedisLock {
    store: Option<RedisStore>,
    key: String,
    token: String,
    /// When the lease expires at the latest (measured from before it was taken).
    expires: Instant,
}

impl std::fmt::Debug for RedisLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLock")
            .field("key", &self.key)
            .field(
                "expires_in",
                &self.expires.saturating_duration_since(Instant::now()),
            )
            .finish_non_exhaustive()
    }
}

// KEYS[1] = epoch. Defines `epoch()` -> instance, floor (creating the epoch if missing), `now`,
// and `read(key)` -> c, m, a, x (the unknown version if missing).
const PRELUDE: &str = r#"
local function epoch()
  local e = redis.call('GET', KEYS[1])
  if not e then
    local t = redis.call('TIME')
    e = ARGV[1] .. '-' .. t[1] .. '-' .. t[2] .. ':' .. t[1]
    redis.call('SET', KEYS[1], e)
  end
  local instance, floor = string.match(e, '^([^:]+):(%d+)$')
  return instance, tonumber(floor)
end
local instance, floor = epoch()
local now = tonumber(redis.call('TIME')[1])
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
local function read(key)
  local h = redis.call('HMGET', key, 'c', 'm', 'a', 'x')
  if not h[1] then return 0, floor, 1, 'u' end
  return tonumber(h[1]), tonumber(h[2]), tonumber(h[3]), h[4]
end
-- The version after (c, m): the next counter, dated now, never backward; a date it shares with
-- the version before is ambiguous.
local function bumped(c, m)
  local m2 = math.max(now, m)
  if m2 == m then return c + 1, m2, 1 end
  return c + 1, m2, 0
end
-- The fingerprint recorded with the version and when it was confirmed ('' and 0 if none).
local function seen(key)
  local s = redis.call('HMGET', key, 'f', 't')
  return s[1] or '', tonumber(s[2] or '0')
end
"#;

// KEYS[2] = version. The current version, re-dated if ambiguous and Redis time has moved on.
const CURRENT: &str = r#"
local c, m, a, x = read(KEYS[2])
if a == 1 and now > m then
  m = now; a = 0
  redis.call('HSET', KEYS[2], 'c', c, 'm', m, 'a', a, 'x', x)
end
local f, t = seen(KEYS[2])
return {instance, c, m, a, x, f, t}
"#;

// KEYS[2] = version; ARGV[2] = the counter the read saw, ARGV[3] = the fingerprint it saw,
// ARGV[4] = the fingerprint its snapshot carried ('' for none). Confirms the recorded fingerprint
// (or records the first), or, if another one is recorded for the same counter, bumps the
// version: an out-of-band change, which the read may stamp ('b') only if what is recorded is
// still what its snapshot carried, else not ('B'). A counter that moved on means a write
// through the layer came in between: nothing is recorded ('s').
const OBSERVE: &str = r#"
local c, m, a, x = read(KEYS[2])
if c ~= tonumber(ARGV[2]) then return {instance, c, m, a, x, 's'} end
local f = redis.call('HGET', KEYS[2], 'f')
if (not f) or same(f, ARGV[3]) then
  redis.call('HSET', KEYS[2], 'c', c, 'm', m, 'a', a, 'x', x, 'f', ARGV[3], 't', now)
  return {instance, c, m, a, x, 'c'}
end
local c2, m2, a2 = bumped(c, m)
local x2 = 'e'
if ARGV[3] == 'a' then x2 = 'a' end
redis.call('HSET', KEYS[2], 'c', c2, 'm', m2, 'a', a2, 'x', x2, 'f', ARGV[3], 't', now)
local outcome = 'B'
if f == 'u' or (ARGV[4] ~= '' and same(f, ARGV[4])) then outcome = 'b' end
return {instance, c2, m2, a2, x2, outcome}
"#;

const PEEK: &str = r#"
local c, m, a, x = read(KEYS[2])
local f, t = seen(KEYS[2])
return {instance, c, m, a, x, f, t}
"#;

// KEYS[2] = version, KEYS[3] = lease; ARGV[2] = token, ARGV[3] = existence after the write,
// ARGV[4] = what the backend serves since ('' for nothing known).
// Bumps (the date never goes backward; a shared date is ambiguous), then releases the lease if
// this writer still holds it. Returns the new version and whether the lease was still held.
const BUMP: &str = r#"
local c, m, a, x = read(KEYS[2])
local c2, m2, a2 = bumped(c, m)
redis.call('HSET', KEYS[2], 'c', c2, 'm', m2, 'a', a2, 'x', ARGV[3])
if ARGV[4] == '' then
  redis.call('HDEL', KEYS[2], 'f', 't')
else
  redis.call('HSET', KEYS[2], 'f', ARGV[4], 't', now)
end
if redis.call('HGET', KEYS[2], 'w') == ARGV[2] then redis.call('HDEL', KEYS[2], 'w') end
local held = 0
if redis.call('GET', KEYS[3]) == ARGV[2] then
  redis.call('DEL', KEYS[3]); held = 1
end
return {instance, c2, m2, a2, ARGV[3], held}
"#;

// KEYS[2] = version; ARGV[2] = counter read ('' for any), ARGV[3] = existence.
const LEARN: &str = r#"
local c, m, a, x = read(KEYS[2])
if ARGV[2] == '' or tonumber(ARGV[2]) == c then
  redis.call('HSET', KEYS[2], 'c', c, 'm', m, 'a', a, 'x', ARGV[3])
end
return 1
"#;

// KEYS[2] = version, KEYS[3] = lease; ARGV[2] = token, ARGV[3] = lease in ms. Takes the lease
// and marks the version "a write may be under way" with the token: a holder that dies (or
// outlives its lease) after forwarding leaves the mark, and the next holder bumps first, since
// that write's outcome is unknown. Returns 1 if taken.
const LOCK: &str = r#"
if not redis.call('SET', KEYS[3], ARGV[2], 'NX', 'PX', ARGV[3]) then return 0 end
if redis.call('HEXISTS', KEYS[2], 'w') == 1 then
  local c, m = read(KEYS[2])
  local c2, m2, a2 = bumped(c, m)
  redis.call('HSET', KEYS[2], 'c', c2, 'm', m2, 'a', a2, 'x', 'u')
  redis.call('HDEL', KEYS[2], 'f', 't')
end
redis.call('HSET', KEYS[2], 'w', ARGV[2])
return 1
"#;

// KEYS[1] = lease, KEYS[2] = version; ARGV[1] = token. Releases a lease not followed by a
// write (nothing was forwarded): the mark goes with it.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  if redis.call('HGET', KEYS[2], 'w') == ARGV[1] then redis.call('HDEL', KEYS[2], 'w') end
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

type Row = (String, u64, u64, u8, String);

impl RedisStore {
    /// A store on the Redis at `url` (e.g. `redis://127.0.0.1:6379/`). The connection is made
    /// lazily and remade when lost, so this succeeds while Redis is down: writes then get `503`,
    /// reads are forwarded without the `304` shortcut. Must be called within a tokio runtime.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(StoreError::new)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1);
        let connection =
            ConnectionManager::new_lazy_with_config(client, config).map_err(StoreError::new)?;
        let proposal = format!("{:x}", RandomState::new().hash_one(SystemTime::now()));
        let script = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Ok(Self {
            connection,
            prefix: Arc::from("tc:"),
            proposal: Arc::from(proposal.as_str()),
            scripts: Arc::new(Scripts {
                current: script(CURRENT),
                observe: script(OBSERVE),
                peek: script(PEEK),
                bump: script(BUMP),
                learn: script(LEARN),
                release: Script::new(RELEASE),
                lock: script(LOCK),
            }),
        })
    }

    /// Prefixes every key (default `tc:`), e.g. to share one Redis between deployments.
    ///
    /// ```no_run
    /// use tower_conditional::store::RedisStore;
    ///
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let staging = RedisStore::open("redis://127.0.0.1:6379/")?.prefix("staging:tc:");
    /// # drop(staging);
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn prefix(mut self, prefix: &str) -> Self {
        self.prefix = Arc::from(prefix);
        self
    }

    fn key(&self, kind: &str, key: &str) -> String {
        format!("{}{kind}:{key}", self.prefix)
    }

    fn epoch(&self) -> String {
        format!("{}epoch", self.prefix)
    }

    /// A snapshot from `CURRENT` or `PEEK`.
    async fn snapshot(&self, script: &Script, key: &str) -> Result<Snapshot, StoreError> {
        let (epoch, counter, modified, ambiguous, exists, fingerprint, confirmed): (
            String,
            u64,
            u64,
            u8,
            String,
            String,
            u64,
        ) = script
            .key(self.epoch())
            .key(self.key("v", key))
            .arg(&*self.proposal)
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(StoreError::new)?;
        let version = version((epoch, counter, modified, ambiguous, exists))?;
        let fingerprint = Fingerprint::decode(&fingerprint);
        Ok(Snapshot::new(version).with_fingerprint(fingerprint, confirmed))
    }

    async fn bump_with_retries(
        &self,
        key: &str,
        token: &str,
        expires: Instant,
        exists: Existence,
        fingerprint: Option<&Fingerprint>,
    ) -> Result<Version, StoreError> {
        // The write has happened (or may have): keep trying to record it while the lease keeps
        // other writers out.
        let deadline = expires;
        loop {
            let attempt: Result<(String, u64, u64, u8, String, u8), _> = self
                .scripts
                .bump
                .key(self.epoch())
                .key(self.key("v", key))
                .key(self.key("l", key))
                .arg(&*self.proposal)
                .arg(token)
                .arg(existence_code(exists))
                .arg(fingerprint.map_or(String::new(), Fingerprint::encode))
                .invoke_async(&mut self.connection.clone())
                .await;
            match attempt {
                Ok((instance, counter, modified, ambiguous, exists, held)) => {
                    if held == 0 {
                        tracing::warn!(
                            key,
                            "a write outlived its lease: another writer may have overtaken it"
                        );
                    }
                    return version((instance, counter, modified, ambiguous, exists));
                }
                Err(err) if Instant::now() >= deadline => return Err(StoreError::new(err)),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn release(&self, key: &str, token: &str) {
        let result: Result<i64, _> = self
            .scripts
            .release
            .key(self.key("l", key))
            .key(self.key("v", key))
            .arg(token)
            .invoke_async(&mut self.connection.clone())
            .await;
        if let Err(err) = result {
            tracing::warn!(error = %err, key, "a lease could not be released; it expires on its own");
        }
    }
}

fn existence_code(exists: Existence) -> &'static str {
    match exists {
        Existence::Unknown => "u",
        Existence::Exists => "e",
        Existence::Absent => "a",
    }
}

fn version((epoch, counter, modified, ambiguous, exists): Row) -> Result<Version, StoreError> {
    Ok(Version {
        instance: epoch_instance(&epoch),
        counter,
        modified,
        ambiguous: ambiguous == 1,
        exists: match exists.as_str() {
            "e" => Existence::Exists,
            "a" => Existence::Absent,
            _ => Existence::Unknown,
        },
    })
}

/// The ETag instance of an epoch: a hash of its id that every proxy computes alike (FNV-1a).
/// The id joins the proposing proxy's random number with the Redis time, microseconds
/// included, so an epoch made after a restart never shares the instance of one before it.
fn epoch_instance(epoch: &str) -> u64 {
    BodyHash::of(epoch.as_bytes())
}

/// `now + duration`, or far in the future when that overflows (a huge setting is "never").
fn after(duration: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(duration)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

fn random_token() -> String {
    format!(
        "{:x}{:x}",
        RandomState::new().hash_one(SystemTime::now()),
        RandomState::new().hash_one(std::thread::current().id())
    )
}

impl<K> VersionStore<K> for RedisStore
where
    K: AsRef<str> + Send + Sync + 'static,
{
    type Lock = RedisLock;

    fn now(&self) -> u64 {
        unix_secs(SystemTime::now())
    }

    fn tracked_resources(&self) -> usize {
        0 // nothing is kept in the process
    }

    fn current(
        &self,
        key: &K,
        _now: u64,
    ) -> impl Future<Output = Result<Snapshot, StoreError>> + Send {
        let key = key.as_ref().to_owned();
        async move { self.snapshot(&self.scripts.current, &key).await }
    }

    fn peek(
        &self,
        key: &K,
        _lock: &RedisLock,
    ) -> impl Future<Output = Result<Snapshot, StoreError>> + Send {
        let key = key.as_ref().to_owned();
        async move { self.snapshot(&self.scripts.peek, &key).await }
    }

    fn observe(
        &self,
        key: &K,
        seen: &Snapshot,
        fingerprint: &Fingerprint,
        _now: u64, // Redis `TIME` dates it, as every other version
    ) -> impl Future<Output = Result<Observed, StoreError>> + Send {
        let key = key.as_ref().to_owned();
        let fingerprint = fingerprint.encode();
        let (counter, carried) = (
            seen.version.counter,
            seen.fingerprint
                .as_ref()
                .map_or(String::new(), Fingerprint::encode),
        );
        async move {
            let (epoch, counter, modified, ambiguous, exists, outcome): (
                String,
                u64,
                u64,
                u8,
                String,
                String,
            ) = self
                .scripts
                .observe
                .key(self.epoch())
                .key(self.key("v", &key))
                .arg(&*self.proposal)
                .arg(counter)
                .arg(fingerprint)
                .arg(carried)
                .invoke_async(&mut self.connection.clone())
                .await
                .map_err(StoreError::new)?;
            let version = version((epoch, counter, modified, ambiguous, exists))?;
            Ok(match outcome.as_str() {
                "c" => Observed::Confirmed,
                "b" => Observed::Changed(version),
                "B" => Observed::Bumped(version),
                _ => Observed::Superseded,
            })
        }
    }

    /// Only existence is kept: `304`s from a Redis store repeat no cached headers.
    fn learn_from_read(&self, key: &K, seen: &Snapshot, exists: Existence, _headers: &HeaderMap) {
        if exists == Existence::Unknown || exists == seen.version.exists {
            return;
        }
        let counter = seen.version.counter;
        let (store, key) = (self.clone(), key.as_ref().to_owned());
        tokio::spawn(async move {
            let _ = store.learn(&key, Some(counter), exists).await;
        });
    }

    fn learn_existence(
        &self,
        key: &K,
        _lock: &RedisLock,
        exists: Existence,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let key = key.as_ref().to_owned();
        async move { self.learn(&key, None, exists).await }
    }

    fn lock(
        &self,
        key: &K,
        wait: Duration,
        hold: Duration,
    ) -> impl Future<Output = Result<Option<RedisLock>, StoreError>> + Send {
        let key = key.as_ref().to_owned();
        async move {
            let lease = self.key("l", &key);
            let deadline = after(wait);
            let mut pause = Duration::from_millis(2);
            // Made before the first `SET`: if this future is dropped, or a `SET` fails, after
            // Redis took the lease but before its answer arrived, dropping it releases the
            // lease (by token: a lease someone else holds is left alone).
            let mut held = RedisLock {
                store: Some(self.clone()),
                key,
                token: random_token(),
                expires: after(hold),
            };
            loop {
                held.expires = after(hold);
                let taken: i64 = self
                    .scripts
                    .lock
                    .key(self.epoch())
                    .key(self.key("v", &held.key))
                    .key(&lease)
                    .arg(&*self.proposal)
                    .arg(&held.token)
                    .arg(u64::try_from(hold.as_millis()).unwrap_or(u64::MAX).max(1))
                    .invoke_async(&mut self.connection.clone())
                    .await
                    .map_err(StoreError::new)?;
                if taken == 1 {
                    return Ok(Some(held));
                }
                if Instant::now() >= deadline {
                    held.store = None; // Redis said it is not ours: nothing to release
                    return Ok(None);
                }
                tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now())))
                    .await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
        }
    }

    fn bump(
        &self,
        key: &K,
        mut lock: RedisLock,
        exists: Existence,
        fingerprint: Option<Fingerprint>,
    ) -> impl Future<Output = Result<Version, StoreError>> + Send {
        let key = key.as_ref().to_owned();
        lock.store = None; // the bump releases it
        async move {
            self.bump_with_retries(
                &key,
                &lock.token,
                lock.expires,
                exists,
                fingerprint.as_ref(),
            )
            .await
        }
    }

    fn bump_unsettled(&self, key: K, mut lock: RedisLock) {
        lock.store = None;
        let store = self.clone();
        tokio::spawn(async move {
            if let Err(err) = store
                .bump_with_retries(
                    key.as_ref(),
                    &lock.token,
                    lock.expires,
                    Existence::Unknown,
                    None,
                )
                .await
            {
                tracing::error!(error = %err, "a write of unknown outcome could not be recorded");
            }
        });
    }
}

impl<K> Rekey<K> for RedisStore
where
    K: AsRef<str> + Send + Sync + 'static,
{
    type Rekeyed = RedisStore;

    fn rekey(&self) -> RedisStore {
        self.clone()
    }
}

impl RedisStore {
    async fn learn(
        &self,
        key: &str,
        counter: Option<u64>,
        exists: Existence,
    ) -> Result<(), StoreError> {
        let _: i64 = self
            .scripts
            .learn
            .key(self.epoch())
            .key(self.key("v", key))
            .arg(&*self.proposal)
            .arg(counter.map_or(String::new(), |c| c.to_string()))
            .arg(existence_code(exists))
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(StoreError::new)?;
        Ok(())
    }
}

impl Drop for RedisLock {
    fn drop(&mut self) {
        if let Some(store) = self.store.take() {
            let (key, token) = (
                std::mem::take(&mut self.key),
                std::mem::take(&mut self.token),
            );
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { store.release(&key, &token).await });
            }
        }
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Whether Redis answers: one `PING` over the store's connection (for readiness checks).
    pub fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let mut connection = self.connection.clone();
        async move {
            redis::cmd("PING")
                .query_async::<()>(&mut connection)
                .await
                .map_err(StoreError::new)
        }
    }
}
