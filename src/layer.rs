//! [`ConditionalLayer`]: configuration, and the version table its services share.

use std::{fmt, sync::Arc};

use tower_layer::Layer;

use crate::{
    clock::{Clock, SystemClock},
    key::{ExtractKey, PathKey},
    service::Conditional,
    table::VersionTable,
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
    require_precondition: bool,
}

impl ConditionalLayer {
    /// A layer keyed by the normalized request path, on the system clock.
    pub fn new() -> Self {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        Self {
            extract_key: PathKey,
            table: Arc::new(VersionTable::new(clock.clone())),
            clock,
            require_precondition: false,
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
            table: Arc::new(VersionTable::new(clock.clone())),
            clock,
            ..self
        }
    }

    /// With `true`, a write that carries none of `If-Match`, `If-None-Match` and a valid
    /// `If-Unmodified-Since` is answered `428 Precondition Required` (RFC 6585 §3): no blind
    /// overwrites. Off by default.
    pub fn require_precondition(mut self, require: bool) -> Self {
        self.require_precondition = require;
        self
    }

    /// Maps requests to resources with `extract_key`, usually a closure
    /// `Fn(&http::request::Parts) -> Option<Key>`; `None` passes a request through untouched.
    pub fn key_fn<K2: ExtractKey>(self, extract_key: K2) -> ConditionalLayer<K2> {
        ConditionalLayer {
            table: Arc::new(VersionTable::new(self.clock.clone())),
            clock: self.clock,
            extract_key,
            require_precondition: self.require_precondition,
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
            self.require_precondition,
        )
    }
}

impl<K: ExtractKey + Clone> Clone for ConditionalLayer<K> {
    fn clone(&self) -> Self {
        Self {
            extract_key: self.extract_key.clone(),
            clock: self.clock.clone(),
            table: self.table.clone(),
            require_precondition: self.require_precondition,
        }
    }
}

impl<K: ExtractKey> fmt::Debug for ConditionalLayer<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConditionalLayer")
            .field("tracked_resources", &self.table.len())
            .field("require_precondition", &self.require_precondition)
            .finish()
    }
}
