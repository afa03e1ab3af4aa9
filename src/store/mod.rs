//! Where versions live: [`MemoryStore`] in the process (the default), or, with the `redis`
//! feature, [`RedisStore`] shared by several proxies.
//!
//! A store keeps, per resource, its current [`Version`] (and whether it exists), and a write
//! lock held from a write's precondition check until its version bump. Everything the layer
//! guarantees rests on three properties of a store: the check and the bump of one resource never
//! interleave with another writer's; versions only grow, each with a tag no other version of the
//! resource ever had; and a resource the store does not know has a version at least as new as
//! any it could have had (the floor).
//!
//! # Example
//!
//! ```
//! use tower_conditional::{store::MemoryStore, ConditionalLayer};
//!
//! // The default: the same as `ConditionalLayer::new()`.
//! let layer = ConditionalLayer::new().store(MemoryStore::new());
//! # drop(layer);
//! ```

mod memory;
#[cfg(feature = "redis")]
mod redis;

use std::{fmt, future::Future, sync::Arc, time::Duration};

use http::HeaderMap;

pub use self::memory::MemoryStore;
#[cfg(feature = "redis")]
pub use self::redis::RedisStore;
pub use crate::{
    fingerprint::Fingerprint,
    version::{Existence, Version},
};

/// A resource's current version, with the headers a `304` for it repeats.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Snapshot {
    /// The current version.
    pub version: Version,
    /// The `Cache-Control`, `Content-Location`, `Expires` and `Vary` of the last 2xx read.
    pub cached: Option<Arc<HeaderMap>>,
    /// What the inner service last served for this version, if the layer has seen it.
    pub fingerprint: Option<Fingerprint>,
    /// The second the inner service last confirmed `fingerprint` (0: never).
    pub confirmed: u64,
}

impl Snapshot {
    /// A snapshot of `version` with no headers for a `304` to repeat.
    pub fn new(version: Version) -> Self {
        Self {
            version,
            cached: None,
            fingerprint: None,
            confirmed: 0,
        }
    }

    /// The same snapshot with the headers a `304` repeats.
    pub fn with_cached(self, cached: Option<Arc<HeaderMap>>) -> Self {
        Self { cached, ..self }
    }

    /// The same snapshot with the fingerprint last confirmed at the second `confirmed`.
    pub fn with_fingerprint(self, fingerprint: Option<Fingerprint>, confirmed: u64) -> Self {
        Self {
            fingerprint,
            confirmed,
            ..self
        }
    }
}

/// What a store made of a [`Fingerprint`] observed for a version.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Observed {
    /// The same as the one recorded for that version (or the first one): the version stands,
    /// confirmed now.
    Confirmed,
    /// Another one, with no write through the layer since: an out-of-band change. The version
    /// was bumped to this one, which carries the new fingerprint.
    Changed(Version),
    /// Another one than the recorded, which another observation recorded after the snapshot
    /// this one compared with: the version was bumped (a change, one way or the other), but
    /// this observation may be the older one, so a response must not carry the new version.
    Bumped(Version),
    /// A write through the layer bumped the version since: nothing was recorded.
    Superseded,
}

/// A store could not answer (for a shared store: it is unreachable).
#[derive(Debug)]
pub struct StoreError(Box<dyn std::error::Error + Send + Sync>);

impl StoreError {
    /// Wraps the cause.
    pub fn new(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self(cause.into())
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "version store: {}", self.0)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// Keeps the versions and write locks of resources keyed by `K`.
///
/// The layer calls three groups of methods: [`now`](VersionStore::now) and
/// [`tracked_resources`](VersionStore::tracked_resources) for dates and figures; the read
/// methods, which never wait for a lock; and the write methods, between
/// [`lock`](VersionStore::lock) and [`bump`](VersionStore::bump) (or
/// [`bump_unsettled`](VersionStore::bump_unsettled)), whose lock is proof of being under it.
///
/// # Contract
///
/// Every guarantee of the layer rests on these; a store that breaks one loses updates.
///
/// 1. **One writer per resource.** While a [`Lock`](VersionStore::Lock) for a key exists, no
///    other `lock` of that key succeeds. A store whose locks expire by themselves (leases)
///    keeps each for at least the `hold` it was asked for.
/// 2. **Versions only grow, and tags never repeat.** Each `bump` returns a version with a
///    counter above every counter the key had, under the same `instance`; its `modified` is
///    `max(now, previous)` and is `ambiguous` when it equals the previous date. A version whose
///    date is ambiguous is re-dated (same counter) by `current` once `now` is a later second,
///    and every later reader sees that same date.
/// 3. **Unknown means newest.** A key the store does not know (never seen, forgotten, or lost
///    in a restart) has a version at least as new as any it had: a counter past every one it
///    issued (or another `instance`) and a `modified` no earlier than any it issued, ambiguous.
/// 4. **Learning never overrides a write.** `learn_from_read` records nothing if the key has
///    been bumped since the snapshot the read saw.
/// 5. **An unknown outcome bumps.** `bump_unsettled` records a new version (existence unknown)
///    even though no one waits for it.
///
/// # Example
///
/// A minimal store: one mutex around a map, the lock a permit of a per-resource semaphore.
/// (Use [`MemoryStore`]: it is the same without the global mutex, and bounded.)
///
/// ```
/// use std::{collections::HashMap, future::{ready, Future}, sync::{Arc, Mutex}, time::Duration};
/// use http::HeaderMap;
/// use tokio::sync::{OwnedSemaphorePermit, Semaphore};
/// use tower_conditional::{
///     clock::{unix_secs, Clock, SystemClock},
///     store::{Existence, Fingerprint, Snapshot, StoreError, Version, VersionStore},
///     ConditionalLayer,
/// };
///
/// struct Resource { version: Version, lock: Arc<Semaphore> }
///
/// struct TinyStore { start: u64, resources: Mutex<HashMap<String, Resource>> }
///
/// impl TinyStore {
///     fn new() -> Self {
///         let start = unix_secs(SystemClock.now());
///         Self { start, resources: Mutex::default() }
///     }
///
///     /// Applies `change` to the resource of `key`, made at the floor if unknown (rule 3:
///     /// nothing is ever forgotten here, and the floor is the start second, ambiguous).
///     fn with<R>(&self, key: &str, change: impl FnOnce(&mut Resource) -> R) -> R {
///         let mut resources = self.resources.lock().unwrap();
///         let resource = resources.entry(key.to_owned()).or_insert_with(|| Resource {
///             version: Version::unknown(7, self.start, 0),
///             lock: Arc::new(Semaphore::new(1)),
///         });
///         change(resource)
///     }
/// }
///
/// impl<K: AsRef<str> + Send + Sync + 'static> VersionStore<K> for TinyStore {
///     type Lock = OwnedSemaphorePermit;
///
///     fn now(&self) -> u64 { unix_secs(SystemClock.now()) }
///
///     fn tracked_resources(&self) -> usize { self.resources.lock().unwrap().len() }
///
///     fn current(&self, key: &K, now: u64) -> impl Future<Output = Result<Snapshot, StoreError>> + Send {
///         let version = self.with(key.as_ref(), |r| {
///             if let Some(redated) = r.version.redated(now) { r.version = redated }
///             r.version
///         });
///         ready(Ok(Snapshot::new(version)))
///     }
///
///     fn learn_from_read(&self, key: &K, seen: &Snapshot, exists: Existence, _: &HeaderMap) {
///         self.with(key.as_ref(), |r| {
///             if r.version.counter == seen.version.counter && exists != Existence::Unknown {
///                 r.version.exists = exists;
///             }
///         })
///     }
///
///     fn lock(&self, key: &K, wait: Duration, _hold: Duration)
///         -> impl Future<Output = Result<Option<Self::Lock>, StoreError>> + Send {
///         let lock = self.with(key.as_ref(), |r| r.lock.clone());
///         async move { Ok(tokio::time::timeout(wait, lock.acquire_owned()).await.ok().and_then(Result::ok)) }
///     }
///
///     fn peek(&self, key: &K, _: &Self::Lock) -> impl Future<Output = Result<Snapshot, StoreError>> + Send {
///         ready(Ok(Snapshot::new(self.with(key.as_ref(), |r| r.version))))
///     }
///
///     fn learn_existence(&self, key: &K, _: &Self::Lock, exists: Existence)
///         -> impl Future<Output = Result<(), StoreError>> + Send {
///         ready(Ok(self.with(key.as_ref(), |r| r.version.exists = exists)))
///     }
///
///     fn bump(&self, key: &K, lock: Self::Lock, exists: Existence, _: Option<Fingerprint>)
///         -> impl Future<Output = Result<Version, StoreError>> + Send {
///         let now = VersionStore::<K>::now(self);
///         let version = self.with(key.as_ref(), |r| { r.version = r.version.next(now, exists); r.version });
///         drop(lock); // released only after the bump
///         ready(Ok(version))
///     }
///
///     fn bump_unsettled(&self, key: K, lock: Self::Lock) {
///         let now = VersionStore::<K>::now(self);
///         self.with(key.as_ref(), |r| r.version = r.version.next(now, Existence::Unknown));
///         drop(lock);
///     }
/// }
///
/// let layer = ConditionalLayer::new().store(TinyStore::new());
/// # drop(layer);
/// ```
pub trait VersionStore<K>: Send + Sync + 'static {
    /// Proof that a resource's write lock is held. Dropping it releases the lock without a
    /// bump (the write was not forwarded).
    type Lock: Send + Sync + 'static;

    // ----- The clock, and what the store holds -----

    /// The current second (since the Unix epoch) of the store's clock: the one clock every
    /// date the layer issues comes from.
    fn now(&self) -> u64;

    /// How many resources the store tracks here (for a shared store: in this process, if any).
    fn tracked_resources(&self) -> usize;

    // ----- Reads: never under a lock -----

    /// The current snapshot of `key`, if the store can tell without waiting; `None` (the
    /// default) sends every read through [`current`](VersionStore::current). A store that
    /// answers here spares reads any boxing or await.
    fn current_now(&self, key: &K, now: u64) -> Option<Snapshot> {
        let _ = (key, now);
        None
    }

    /// The current snapshot of `key`, re-dated first if its date is ambiguous and `now` is a
    /// later second (contract rule 2).
    fn current(
        &self,
        key: &K,
        now: u64,
    ) -> impl Future<Output = Result<Snapshot, StoreError>> + Send;

    /// What a forwarded read of the snapshot `seen` showed: whether the resource exists, and
    /// the response's headers (a store that keeps [`Snapshot::cached`] takes them from here).
    /// Called for every forwarded read, so it should cost nothing when nothing changed; best
    /// effort, and ignored if the key was bumped since `seen` (contract rule 4).
    fn learn_from_read(&self, key: &K, seen: &Snapshot, exists: Existence, headers: &HeaderMap);

    /// Records that the inner service served `fingerprint` for the snapshot `seen` at second
    /// `now`. If the key is still at `seen`'s counter: confirms it when it matches the recorded
    /// one (or none is recorded); else bumps the version (existent unless the fingerprint is
    /// [`Fingerprint::Absent`]) and records it with the new version, returning
    /// [`Observed::Changed`] when the recorded one is still the one `seen` carried, else
    /// [`Observed::Bumped`]. Only called when the layer detects writers that bypass it; the
    /// default refuses.
    fn observe(
        &self,
        key: &K,
        seen: &Snapshot,
        fingerprint: &Fingerprint,
        now: u64,
    ) -> impl Future<Output = Result<Observed, StoreError>> + Send {
        let _ = (key, seen, fingerprint, now);
        std::future::ready(Err(StoreError::new("this store keeps no fingerprints")))
    }

    // ----- Writes: between `lock` and `bump` -----

    /// Takes the write lock of `key`, waiting at most `wait`; `None` if it stayed taken. The
    /// layer holds it at most `hold` (its write timeout and grace, with a margin): a lock that
    /// expires by itself must live at least that long.
    fn lock(
        &self,
        key: &K,
        wait: Duration,
        hold: Duration,
    ) -> impl Future<Output = Result<Option<Self::Lock>, StoreError>> + Send;

    /// The current snapshot of `key`, as it is (never re-dated), for a writer holding `lock`.
    fn peek(
        &self,
        key: &K,
        lock: &Self::Lock,
    ) -> impl Future<Output = Result<Snapshot, StoreError>> + Send;

    /// Records whether `key` exists, as a probe made under `lock` found.
    fn learn_existence(
        &self,
        key: &K,
        lock: &Self::Lock,
        exists: Existence,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Records a write to `key` that left it as `exists` says, with what the inner service
    /// serves since (`fingerprint`, when the layer tracks them; the recorded one is forgotten
    /// otherwise), then releases `lock`. Returns the new version.
    fn bump(
        &self,
        key: &K,
        lock: Self::Lock,
        exists: Existence,
        fingerprint: Option<Fingerprint>,
    ) -> impl Future<Output = Result<Version, StoreError>> + Send;

    /// Records a write of unknown outcome, then releases `lock`, without waiting: called when
    /// a forwarded write's task ends without an answer. A store that must wait spawns a task.
    fn bump_unsettled(&self, key: K, lock: Self::Lock);
}

/// The same store for another key type, so that
/// [`ConditionalLayer::key_fn`](crate::ConditionalLayer::key_fn) and
/// [`ConditionalLayer::store`](crate::ConditionalLayer::store) can come in either order.
pub trait Rekey<K> {
    /// The store for keys of type `K`.
    type Rekeyed: VersionStore<K>;

    /// A store with the same settings, for keys of type `K`. An in-memory store starts empty;
    /// a shared one is the same store.
    fn rekey(&self) -> Self::Rekeyed;
}
