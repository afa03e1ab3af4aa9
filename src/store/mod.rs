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
pub use crate::version::{Existence, Version};

/// A resource's current version, with the headers a `304` for it repeats.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The current version.
    pub version: Version,
    /// The `Cache-Control`, `Content-Location`, `Expires` and `Vary` of the last 2xx read.
    pub cached: Option<Arc<HeaderMap>>,
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
/// Reads ask [`current_now`](VersionStore::current_now) first: a store that can answer without
/// waiting (the in-memory one) keeps reads free of any boxing or await; others answer through
/// [`current`](VersionStore::current). Writes always go through the async methods.
pub trait VersionStore<K>: Send + Sync + 'static {
    /// Proof that a resource's write lock is held. Dropping it releases the lock without a
    /// bump (the write was not forwarded).
    type Lock: Send + 'static;

    /// The current second of the layer's clock, for `Date` headers.
    fn now(&self) -> u64;

    /// How many resources the store tracks here (for a shared store: in this process's cache,
    /// if any).
    fn tracked_resources(&self) -> usize;

    /// The current snapshot of `key`, re-dated if its date is ambiguous and `now` is a later
    /// second, if the store can tell without waiting.
    fn current_now(&self, key: &K, now: u64) -> Option<Snapshot>;

    /// The current snapshot of `key`, re-dated as [`current_now`](VersionStore::current_now)
    /// does.
    fn current(
        &self,
        key: &K,
        now: u64,
    ) -> impl Future<Output = Result<Snapshot, StoreError>> + Send;

    /// The current version of `key`, as it is (never re-dated).
    fn peek(&self, key: &K) -> impl Future<Output = Result<Version, StoreError>> + Send;

    /// Whether the store keeps the headers a `304` repeats (`learn_from_read`'s `cached`). A
    /// store that does not is not told when only they change.
    fn keeps_cached_headers(&self) -> bool {
        true
    }

    /// Records what a read of version `counter` showed, unless a write has bumped the version
    /// since. Best effort: a store may drop it.
    fn learn_from_read(
        &self,
        key: &K,
        counter: u64,
        exists: Existence,
        cached: Option<Arc<HeaderMap>>,
    );

    /// Records whether `key` exists, as a probe made under its write lock found.
    fn learn_existence(
        &self,
        key: &K,
        exists: Existence,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Takes the write lock of `key`, waiting at most `wait`; `None` if it stayed taken.
    fn lock(
        &self,
        key: &K,
        wait: Duration,
    ) -> impl Future<Output = Result<Option<Self::Lock>, StoreError>> + Send;

    /// Records a write to `key` that left it as `exists` says, then releases `lock`. Returns
    /// the new version.
    fn bump(
        &self,
        key: &K,
        lock: Self::Lock,
        exists: Existence,
    ) -> impl Future<Output = Result<Version, StoreError>> + Send;

    /// Records a write of unknown outcome, then releases `lock`, without waiting: called when
    /// a forwarded write's task ends without an answer. A store that must wait spawns a task.
    fn bump_unsettled(&self, key: K, lock: Self::Lock);
}
