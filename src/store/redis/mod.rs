//! [`RedisStore`]: one version store for several proxies, on Redis: one server, a primary
//! watched by Sentinel, or a Redis Cluster.
//!
//! Every check-and-update runs as one server-side script on the Redis that holds the resource,
//! so it is atomic across proxies, and dates come from Redis `TIME`. Each resource `R` is one
//! hash, `tc:R` (the prefix is configurable), which holds its version, its write lease and the
//! history its version belongs to; every script touches that key only, so a Redis Cluster
//! spreads resources over its slots and never sees a cross-slot call.
//!
//! # Failover
//!
//! Redis replication is asynchronous: a promoted replica, or a primary restarted from an older
//! snapshot, may lack the last versions the layer issued. Every script compares the server's
//! run id and replication id with the ones the resource's record was written under; when they
//! differ, the record is from another history, and the resource starts over as an unknown one:
//! a new tag (its instance drawn anew), dated now and ambiguous for a second more than
//! usual (clocks of two Redis servers may differ). No validator issued before then validates,
//! so a client holding one gets `412` and re-reads; a client that re-reads writes again at
//! once with the new tag, or with its date two seconds later.
//!
//! A lease lasts as long as the layer may hold the lock: twice its write timeout (the existence
//! probe, then the write), plus the grace period, plus a second for the store's own calls. The
//! layer sizes it; nothing is left to configure by hand. A write whose bump finds its lease gone
//! (it outlived it, or the Redis that held it failed over) is answered `503`: another writer may
//! have overtaken it.
//!
//! Limits, stated plainly: a write in flight while its lease is lost (a process paused longer
//! than its lease, a failover before the lease reached the replica, the record evicted) can be
//! overtaken by the next writer before its own bump. Versions stay safe: a record Redis forgets
//! is made anew with another instance, as after a failover.

mod connection;
mod scripts;

use std::{
    collections::hash_map::RandomState,
    future::Future,
    hash::BuildHasher,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant, SystemTime},
};

use http::HeaderMap;
use redis::{Script, ScriptInvocation};

use self::connection::Connection;
use super::{Existence, Fingerprint, Observed, Rekey, Snapshot, StoreError, Version, VersionStore};
use crate::{clock::unix_secs, metrics};

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
    connection: Connection,
    prefix: Arc<str>,
    scripts: Arc<Scripts>,
}

struct Scripts {
    current: Script,
    peek: Script,
    lock: Script,
    bump: Script,
    release: Script,
    learn: Script,
    observe: Script,
    ping: Script,
}

/// Proof of a held lease on a resource's lock. Dropping it releases the lease (in a task).
pub struct RedisLock {
    store: Option<RedisStore>,
    key: String,
    token: String,
    /// When the lease expires at the latest (measured from before it was taken).
    expires: Instant,
    /// The version read with the lease, for the writer's first look (it saves a round trip).
    taken_at: Mutex<Option<Snapshot>>,
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

/// A version as the scripts return it: instance (16 hex digits), counter, date, ambiguity,
/// existence.
type Row = (String, u64, u64, u8, String);

/// A version with its fingerprint and when it was confirmed, and whether the record was just
/// made anew, as `CURRENT`, `PEEK` and `LOCK` return it.
type SnapshotRow = (String, u64, u64, u8, String, String, u64, u8);

impl RedisStore {
    /// A store on the Redis at `url`: `redis://127.0.0.1:6379/` (also `rediss://`, `unix://`),
    /// or the primary of a Sentinel service, `redis+sentinel://HOST:PORT[,HOST:PORT…]/SERVICE`,
    /// followed through its failovers. The connection is made lazily and remade when lost, so
    /// this succeeds while Redis is down: writes then get `503`, reads are forwarded without the
    /// `304` shortcut. Must be called within a tokio runtime.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        Ok(Self::on(Connection::open(url)?))
    }

    /// A store on a Redis Cluster, found from any of its `nodes` (e.g.
    /// `["redis://10.0.0.1:7000/", "redis://10.0.0.2:7000/"]`). Each resource is one key,
    /// spread over the slots like any other; the cluster's failovers are followed. Connected lazily, as [`open`](Self::open).
    ///
    /// ```no_run
    /// use tower_conditional::{store::RedisStore, ConditionalLayer};
    ///
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = RedisStore::cluster(["redis://127.0.0.1:7000/", "redis://127.0.0.1:7001/"])?;
    /// let layer = ConditionalLayer::new().store(store);
    /// # drop(layer);
    /// # Ok(())
    /// # }
    /// ```
    pub fn cluster<I, S>(nodes: I) -> Result<Self, StoreError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Ok(Self::on(Connection::cluster(nodes)?))
    }

    fn on(connection: Connection) -> Self {
        let script = |body: &str| Script::new(&format!("{}{body}", scripts::PRELUDE));
        Self {
            connection,
            prefix: Arc::from("tc:"),
            scripts: Arc::new(Scripts {
                current: script(scripts::CURRENT),
                peek: script(scripts::PEEK),
                lock: script(scripts::LOCK),
                bump: script(scripts::BUMP),
                release: Script::new(scripts::RELEASE),
                learn: script(scripts::LEARN),
                observe: script(scripts::OBSERVE),
                ping: Script::new(scripts::PING),
            }),
        }
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

    /// Whether Redis answers (for a cluster, one of its primaries): for a readiness check.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let _: String = self
            .connection
            .invoke(&self.scripts.ping.prepare_invoke())
            .await
            .map_err(StoreError::new)?;
        Ok(())
    }

    /// The record of the resource `key`.
    fn record(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Runs one script on the record of `key`.
    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        key: &str,
        args: &[&str],
    ) -> Result<T, StoreError> {
        let mut call: ScriptInvocation<'_> = script.key(self.record(key));
        for arg in args {
            call.arg(*arg);
        }
        self.connection.invoke(&call).await.map_err(|err| {
            if err.code() != Some("LEASE") {
                metrics::redis_error(); // a refusal to a writer that lost its lease is not one
            }
            StoreError::new(err)
        })
    }

    /// A snapshot from `CURRENT` or `PEEK`.
    async fn snapshot(
        &self,
        script: &Script,
        key: &str,
        args: &[&str],
    ) -> Result<Snapshot, StoreError> {
        snapshot(self.run(script, key, args).await?)
    }

    async fn bump_with_retries(
        &self,
        key: &str,
        token: &str,
        expires: Instant,
        exists: Existence,
        fingerprint: Option<&Fingerprint>,
    ) -> Result<Version, StoreError> {
        let fingerprint = fingerprint.map_or(String::new(), Fingerprint::encode);
        // The write has happened (or may have): keep trying to record it while the lease keeps
        // other writers out.
        loop {
            let attempt: Result<(String, u64, u64, u8, String, u8), _> = self
                .run(
                    &self.scripts.bump,
                    key,
                    &[token, existence_code(exists), &fingerprint],
                )
                .await;
            match attempt {
                Ok((instance, counter, modified, ambiguous, exists, held)) => {
                    if held == 0 {
                        return Err(StoreError::new(
                            "the write's lease was lost before its bump: another writer may \
                             have overtaken it",
                        ));
                    }
                    return version((instance, counter, modified, ambiguous, exists));
                }
                Err(err) if Instant::now() >= expires => return Err(err),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn release(&self, key: &str, token: &str) {
        let result: Result<i64, _> = self.run(&self.scripts.release, key, &[token]).await;
        if let Err(err) = result {
            tracing::warn!(error = %err, key, "a lease could not be released; it expires on its own");
        }
    }

    /// Records whether `key` exists: as a read of the version `seen` learned it (if still
    /// current), or as the writer holding the lease `token` learned it.
    async fn learn(&self, key: &str, by: Learner<'_>, exists: Existence) -> Result<(), StoreError> {
        let (token, instance, counter) = match by {
            Learner::Read(version) => (
                "",
                instance_code(version.instance),
                version.counter.to_string(),
            ),
            Learner::Writer(token) => (token, String::new(), String::new()),
        };
        let args = [token, &instance, &counter, existence_code(exists)];
        let _: i64 = self.run(&self.scripts.learn, key, &args).await?;
        Ok(())
    }
}

/// Who learned whether a resource exists.
enum Learner<'a> {
    /// A read of this version.
    Read(Version),
    /// The writer holding the lease with this token.
    Writer(&'a str),
}

fn existence_code(exists: Existence) -> &'static str {
    match exists {
        Existence::Unknown => "u",
        Existence::Exists => "e",
        Existence::Absent => "a",
    }
}

fn snapshot(
    (instance, counter, modified, ambiguous, exists, fingerprint, confirmed, made): SnapshotRow,
) -> Result<Snapshot, StoreError> {
    if made == 1 {
        metrics::record_reset();
    }
    let version = version((instance, counter, modified, ambiguous, exists))?;
    Ok(Snapshot::new(version).with_fingerprint(Fingerprint::decode(&fingerprint), confirmed))
}

fn version((instance, counter, modified, ambiguous, exists): Row) -> Result<Version, StoreError> {
    let instance = u64::from_str_radix(&instance, 16)
        .map_err(|_| StoreError::new(format!("a record's instance is not hex: {instance:?}")))?;
    Ok(Version {
        instance,
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

/// An instance as the scripts keep it: the first 16 hex digits of a SHA-1 (of the history and
/// the time the record was made in it), so tags of two histories, or of a record deleted and
/// made again, never meet.
fn instance_code(instance: u64) -> String {
    format!("{instance:016x}")
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
        async move { self.snapshot(&self.scripts.current, &key, &[]).await }
    }

    /// The first look after [`lock`](VersionStore::lock) costs nothing: the lease script read
    /// the version with the lease.
    fn peek(
        &self,
        key: &K,
        lock: &RedisLock,
    ) -> impl Future<Output = Result<Snapshot, StoreError>> + Send {
        let taken_at = lock
            .taken_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let (key, token) = (key.as_ref().to_owned(), lock.token.clone());
        async move {
            match taken_at {
                Some(snapshot) => Ok(snapshot),
                None => self.snapshot(&self.scripts.peek, &key, &[&token]).await,
            }
        }
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
        let (instance, counter) = (
            instance_code(seen.version.instance),
            seen.version.counter.to_string(),
        );
        let carried = seen
            .fingerprint
            .as_ref()
            .map_or(String::new(), Fingerprint::encode);
        async move {
            let (instance, counter, modified, ambiguous, exists, outcome): (
                String,
                u64,
                u64,
                u8,
                String,
                String,
            ) = self
                .run(
                    &self.scripts.observe,
                    &key,
                    &[&instance, &counter, &fingerprint, &carried],
                )
                .await?;
            let version = version((instance, counter, modified, ambiguous, exists))?;
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
        let (store, key, version) = (self.clone(), key.as_ref().to_owned(), seen.version);
        tokio::spawn(async move {
            let _ = store.learn(&key, Learner::Read(version), exists).await;
        });
    }

    fn learn_existence(
        &self,
        key: &K,
        lock: &RedisLock,
        exists: Existence,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let (key, token) = (key.as_ref().to_owned(), lock.token.clone());
        async move { self.learn(&key, Learner::Writer(&token), exists).await }
    }

    /// One round trip when the lease is free: the script takes it and reads the version.
    fn lock(
        &self,
        key: &K,
        wait: Duration,
        hold: Duration,
    ) -> impl Future<Output = Result<Option<RedisLock>, StoreError>> + Send {
        let key = key.as_ref().to_owned();
        async move {
            let deadline = after(wait);
            let lease = u64::try_from(hold.as_millis())
                .unwrap_or(u64::MAX)
                .max(1)
                .to_string();
            let mut pause = Duration::from_millis(2);
            // Made before the first call: if this future is dropped, or a call fails, after
            // Redis granted the lease but before its answer arrived, dropping it releases the
            // lease (by token: a lease someone else holds is left alone).
            let mut held = RedisLock {
                store: Some(self.clone()),
                key,
                token: random_token(),
                expires: after(hold),
                taken_at: Mutex::new(None),
            };
            loop {
                held.expires = after(hold);
                let (taken, row): (u8, SnapshotRow) = self
                    .run(&self.scripts.lock, &held.key, &[&held.token, &lease])
                    .await?;
                if taken == 1 {
                    held.taken_at = Mutex::new(Some(snapshot(row)?));
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

    /// One round trip: the script bumps and releases the lease.
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
