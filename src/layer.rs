//! [`ConditionalLayer`]: configuration, and the version store its services share.

use std::{fmt, sync::Arc, time::Duration};

use tower_layer::Layer;

use crate::{
    clock::Clock,
    key::{ExtractKey, PathKey},
    service::Conditional,
    store::{MemoryStore, VersionStore},
    write::Config,
};

/// Layer that applies [`Conditional`]: optimistic locking with ETags and HTTP dates.
///
/// Every service this layer (or a clone of it) makes shares one version store, so the layer can
/// be applied route by route (as axum's `Router::layer` does) and still see one resource once.
/// [`clock`](ConditionalLayer::clock), [`max_resources`](ConditionalLayer::max_resources) and
/// [`key_fn`](ConditionalLayer::key_fn) start a new, empty in-memory store; set a shared store
/// with [`store`](ConditionalLayer::store) after them.
///
/// See the [crate docs](crate) for an example.
pub struct ConditionalLayer<K: ExtractKey = PathKey, St = MemoryStore<<K as ExtractKey>::Key>> {
    extract_key: K,
    store: Arc<St>,
    config: Config,
}

impl ConditionalLayer {
    /// A layer keyed by the normalized request path, with an in-memory store on the system clock.
    pub fn new() -> Self {
        Self {
            extract_key: PathKey,
            store: Arc::new(MemoryStore::new()),
            config: Config::default(),
        }
    }
}

impl Default for ConditionalLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: ExtractKey> ConditionalLayer<K, MemoryStore<K::Key>> {
    /// Uses `clock` for every date the layer issues (tests use a
    /// [`ManualClock`](crate::clock::ManualClock)).
    pub fn clock(self, clock: impl Clock) -> Self {
        let (_, max) = self.store.config();
        Self {
            store: Arc::new(MemoryStore::with(Arc::new(clock), max)),
            ..self
        }
    }

    /// Tracks at most about `n` resources; see [`MemoryStore::max_resources`]. Unbounded by
    /// default.
    pub fn max_resources(self, n: usize) -> Self {
        let (clock, _) = self.store.config();
        Self {
            store: Arc::new(MemoryStore::with(clock, n.max(1))),
            ..self
        }
    }

    /// Maps requests to resources with `extract_key`, usually a closure
    /// `Fn(&http::request::Parts) -> Option<Key>`; `None` passes a request through untouched.
    pub fn key_fn<K2: ExtractKey>(
        self,
        extract_key: K2,
    ) -> ConditionalLayer<K2, MemoryStore<K2::Key>> {
        ConditionalLayer {
            store: Arc::new(self.store.rekeyed()),
            extract_key,
            config: self.config,
        }
    }
}

impl<K: ExtractKey, St> ConditionalLayer<K, St> {
    /// Keeps versions in `store` instead: e.g. a [`RedisStore`](crate::store) shared by several
    /// proxies.
    pub fn store<St2: VersionStore<K::Key>>(self, store: St2) -> ConditionalLayer<K, St2> {
        ConditionalLayer {
            extract_key: self.extract_key,
            store: Arc::new(store),
            config: self.config,
        }
    }

    /// With `true`, a write that carries none of `If-Match`, `If-None-Match` and a valid
    /// `If-Unmodified-Since` is answered `428 Precondition Required` (RFC 6585 §3): no blind
    /// overwrites. Off by default.
    pub fn require_precondition(mut self, require: bool) -> Self {
        self.config.require_precondition = require;
        self
    }

    /// The largest write body the layer reads before locking the resource; a larger one gets
    /// `413 Content Too Large`. Default 8 MiB.
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.config.max_body = bytes;
        self
    }

    /// How long a write waits for its resource's lock before it gets `503 Service Unavailable`
    /// with `Retry-After`. Default 10 s.
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.config.lock_timeout = timeout;
        self
    }

    /// How long a forwarded write may take before its client gets `504 Gateway Timeout`.
    /// Default 30 s. The write keeps running until then even if its client leaves.
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.config.write_timeout = timeout;
        self
    }

    /// How long a resource stays locked after a write timed out (here, or upstream with a
    /// `504`), in case the backend applies it late. Default 5 s.
    pub fn timeout_grace(mut self, grace: Duration) -> Self {
        self.config.timeout_grace = grace;
        self
    }

    /// How many resources the store tracks (in this process).
    pub fn tracked_resources(&self) -> usize
    where
        St: VersionStore<K::Key>,
    {
        self.store.tracked_resources()
    }
}

impl<S, K: ExtractKey + Clone, St> Layer<S> for ConditionalLayer<K, St> {
    type Service = Conditional<S, K, St>;

    fn layer(&self, inner: S) -> Self::Service {
        Conditional::new(
            inner,
            self.extract_key.clone(),
            self.store.clone(),
            self.config,
        )
    }
}

impl<K: ExtractKey + Clone, St> Clone for ConditionalLayer<K, St> {
    fn clone(&self) -> Self {
        Self {
            extract_key: self.extract_key.clone(),
            store: self.store.clone(),
            config: self.config,
        }
    }
}

impl<K: ExtractKey, St> fmt::Debug for ConditionalLayer<K, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConditionalLayer")
            .field("config", &self.config)
            .finish()
    }
}
