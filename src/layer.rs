//! [`ConditionalLayer`]: configuration, and the version table its services share.

use std::{fmt, sync::Arc, time::Duration};

use tower_layer::Layer;

use crate::{
    clock::{Clock, SystemClock},
    key::{ExtractKey, PathKey},
    service::Conditional,
    table::VersionTable,
    write::Config,
};

/// Layer that applies [`Conditional`]: optimistic locking with HTTP dates.
///
/// Every service this layer (or a clone of it) makes shares one version table, so the layer can
/// be applied route by route (as axum's `Router::layer` does) and still see one resource once.
/// Each setter starts a new, empty table.
///
/// See the [crate docs](crate) for an example.
pub struct ConditionalLayer<K: ExtractKey = PathKey> {
    extract_key: K,
    clock: Arc<dyn Clock>,
    table: Arc<VersionTable<K::Key>>,
    max_resources: usize,
    config: Config,
}

impl ConditionalLayer {
    /// A layer keyed by the normalized request path, on the system clock.
    pub fn new() -> Self {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        Self {
            extract_key: PathKey,
            table: Arc::new(VersionTable::new(clock.clone(), usize::MAX)),
            clock,
            max_resources: usize::MAX,
            config: Config::default(),
        }
    }
}

impl Default for ConditionalLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: ExtractKey> ConditionalLayer<K> {
    /// Uses `clock` for every date the layer issues (tests use a
    /// [`ManualClock`](crate::clock::ManualClock)).
    pub fn clock(self, clock: impl Clock) -> Self {
        let clock: Arc<dyn Clock> = Arc::new(clock);
        Self {
            table: Arc::new(VersionTable::new(clock.clone(), self.max_resources)),
            clock,
            ..self
        }
    }

    /// With `true`, a write that carries none of `If-Match`, `If-None-Match` and a valid
    /// `If-Unmodified-Since` is answered `428 Precondition Required` (RFC 6585 §3): no blind
    /// overwrites. Off by default.
    pub fn require_precondition(mut self, require: bool) -> Self {
        self.config.require_precondition = require;
        self
    }

    /// Tracks at most about `n` resources. When the table is full, the least recently used
    /// eighth is forgotten (at one-second resolution; never a resource a write holds), after
    /// raising the floor every unknown resource starts from to at least their versions: a
    /// forgotten resource returns with a version at least as new, so clients holding its old
    /// validators get `412`, never `200`. Unbounded by default. Starts a new, empty table.
    pub fn max_resources(self, n: usize) -> Self {
        let max_resources = n.max(1);
        Self {
            table: Arc::new(VersionTable::new(self.clock.clone(), max_resources)),
            max_resources,
            ..self
        }
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

    /// Maps requests to resources with `extract_key`, usually a closure
    /// `Fn(&http::request::Parts) -> Option<Key>`; `None` passes a request through untouched.
    pub fn key_fn<K2: ExtractKey>(self, extract_key: K2) -> ConditionalLayer<K2> {
        ConditionalLayer {
            table: Arc::new(VersionTable::new(self.clock.clone(), self.max_resources)),
            clock: self.clock,
            max_resources: self.max_resources,
            extract_key,
            config: self.config,
        }
    }

    /// How many resources the shared table holds an entry for.
    pub fn tracked_resources(&self) -> usize {
        self.table.len()
    }
}

impl<S, K: ExtractKey + Clone> Layer<S> for ConditionalLayer<K> {
    type Service = Conditional<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        Conditional::new(
            inner,
            self.extract_key.clone(),
            self.table.clone(),
            self.config,
        )
    }
}

impl<K: ExtractKey + Clone> Clone for ConditionalLayer<K> {
    fn clone(&self) -> Self {
        Self {
            extract_key: self.extract_key.clone(),
            clock: self.clock.clone(),
            table: self.table.clone(),
            max_resources: self.max_resources,
            config: self.config,
        }
    }
}

impl<K: ExtractKey> fmt::Debug for ConditionalLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConditionalLayer")
            .field("tracked_resources", &self.table.len())
            .field("config", &self.config)
            .finish()
    }
}
