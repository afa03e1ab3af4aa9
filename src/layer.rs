//! [`ConditionalLayer`]: configuration, and the version store its services share.

use std::{fmt, sync::Arc, time::Duration};

use tower_layer::Layer;

use crate::{
    key::{ExtractKey, PathKey},
    metrics::Metrics,
    service::Conditional,
    store::{MemoryStore, Rekey, VersionStore},
    write::Config,
};

/// Layer that applies [`Conditional`]: optimistic locking with ETags and HTTP dates.
///
/// Every service this layer (or a clone of it) makes shares one version store, so the layer can
/// be applied route by route (as axum's `Router::layer` does) and still see one resource once.
/// Each setting has one setter, and setters commute: [`key_fn`](ConditionalLayer::key_fn)
/// keeps the store set by [`store`](ConditionalLayer::store), before or after it.
///
/// See the [crate docs](crate) for an example.
#[must_use]
pub struct ConditionalLayer<K: ExtractKey = PathKey, St = MemoryStore<<K as ExtractKey>::Key>> {
    extract_key: K,
    store: Arc<St>,
    config: Config,
    /// The `class` label of the metrics of the services it makes.
    class: Arc<str>,
}

/// The `class` label of a layer's metrics until [`ConditionalLayer::metrics_class`] names it.
const DEFAULT_CLASS: &str = "default";

impl ConditionalLayer {
    /// A layer keyed by the normalized request path, with an unbounded in-memory store on the
    /// system clock.
    ///
    /// ```
    /// use tower::ServiceBuilder;
    /// use tower_conditional::ConditionalLayer;
    /// # let storage = tower::service_fn(|_: http::Request<http_body_util::Full<bytes::Bytes>>| async {
    /// #     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::<bytes::Bytes>::default()))
    /// # });
    ///
    /// let service = ServiceBuilder::new().layer(ConditionalLayer::new()).service(storage);
    /// # drop(service);
    /// ```
    pub fn new() -> Self {
        Self {
            extract_key: PathKey,
            store: Arc::new(MemoryStore::new()),
            config: Config::default(),
            class: Arc::from(DEFAULT_CLASS),
        }
    }
}

impl Default for ConditionalLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: ExtractKey, St> ConditionalLayer<K, St> {
    /// Maps requests to resources with `extract_key`, usually a closure
    /// `Fn(&http::request::Parts) -> Option<Key>`; `None` passes a request through untouched.
    /// The store is kept (an in-memory one, emptied, for the new key type).
    ///
    /// ```
    /// use http::request::Parts;
    /// use tower_conditional::ConditionalLayer;
    ///
    /// // One resource per document id, whatever the path spelling around it.
    /// let layer = ConditionalLayer::new().key_fn(|parts: &Parts| {
    ///     parts.uri.path().strip_prefix("/docs/").map(str::to_owned)
    /// });
    /// # drop(layer);
    /// ```
    pub fn key_fn<K2>(self, extract_key: K2) -> ConditionalLayer<K2, St::Rekeyed>
    where
        K2: ExtractKey,
        St: Rekey<K2::Key>,
    {
        ConditionalLayer {
            store: Arc::new(self.store.rekey()),
            extract_key,
            config: self.config,
            class: self.class,
        }
    }

    /// Keeps versions in `store`: a [`MemoryStore`] with its own clock or bound, or, with the
    /// `redis` feature, a `RedisStore` shared by several proxies.
    ///
    /// ```
    /// use tower_conditional::{store::MemoryStore, ConditionalLayer};
    ///
    /// let layer = ConditionalLayer::new().store(MemoryStore::new().max_resources(1_000_000));
    /// # drop(layer);
    /// ```
    pub fn store<St2: VersionStore<K::Key>>(self, store: St2) -> ConditionalLayer<K, St2> {
        ConditionalLayer {
            extract_key: self.extract_key,
            store: Arc::new(store),
            config: self.config,
            class: self.class,
        }
    }

    /// With `true`, a write that carries none of `If-Match`, `If-None-Match` and a valid
    /// `If-Unmodified-Since` is answered `428 Precondition Required` (RFC 6585 §3): no blind
    /// overwrites. Off by default.
    ///
    /// ```
    /// use tower_conditional::ConditionalLayer;
    ///
    /// let layer = ConditionalLayer::new().require_precondition(true);
    /// # drop(layer);
    /// ```
    pub fn require_precondition(mut self, require: bool) -> Self {
        self.config.require_precondition = require;
        self
    }

    /// The largest write body the layer reads before locking the resource; a larger one gets
    /// `413 Content Too Large`. Default 8 MiB.
    ///
    /// ```
    /// use tower_conditional::ConditionalLayer;
    ///
    /// let layer = ConditionalLayer::new().max_body_size(64 * 1024);
    /// # drop(layer);
    /// ```
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.config.max_body = bytes;
        self
    }

    /// How long a write waits for its resource's lock before it gets `503 Service Unavailable`
    /// with `Retry-After`. Default 10 s.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_conditional::ConditionalLayer;
    ///
    /// let layer = ConditionalLayer::new().lock_timeout(Duration::from_secs(2));
    /// # drop(layer);
    /// ```
    pub fn lock_timeout(mut self, timeout: Duration) -> Self {
        self.config.lock_timeout = timeout;
        self
    }

    /// How long a forwarded write (and, before it, an existence probe) may take before its
    /// client gets `504 Gateway Timeout`. Default 30 s. The write keeps running until then even
    /// if its client leaves. A store's lock lease is sized from it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_conditional::ConditionalLayer;
    ///
    /// let layer = ConditionalLayer::new().write_timeout(Duration::from_secs(5));
    /// # drop(layer);
    /// ```
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.config.write_timeout = timeout;
        self
    }

    /// How long a resource stays locked after a write timed out (here, or upstream with a
    /// `504`), in case the backend applies it late. Default 5 s.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_conditional::ConditionalLayer;
    ///
    /// let layer = ConditionalLayer::new().timeout_grace(Duration::from_secs(1));
    /// # drop(layer);
    /// ```
    pub fn timeout_grace(mut self, grace: Duration) -> Self {
        self.config.timeout_grace = grace;
        self
    }

    /// With `true`, every 2xx read the layer forwards is fingerprinted (the inner service's
    /// `ETag`, else its `Last-Modified`, else a hash of the body): the same version served with
    /// another fingerprint, with no write through the layer in between, means a writer
    /// bypassed the layer, and the version is bumped (new `ETag`, truthful `Last-Modified`).
    /// Off by default: the layer is then the only writer. See the README on bypassing writers.
    ///
    /// ```
    /// use tower_conditional::ConditionalLayer;
    ///
    /// let layer = ConditionalLayer::new().fingerprint_reads(true);
    /// # drop(layer);
    /// ```
    pub fn fingerprint_reads(mut self, fingerprint: bool) -> Self {
        self.config.bypass.fingerprint_reads = fingerprint;
        self
    }

    /// Answers `304` from the version table only while the inner service confirmed the
    /// version within `window`; after it, the read is forwarded (with the inner service's own
    /// `ETag` or `Last-Modified` as the condition, so a backend that supports them answers a
    /// cheap `304`), the version confirmed or bumped, and the client's conditions evaluated
    /// against it. Turns [`fingerprint_reads`](ConditionalLayer::fingerprint_reads) on. Off by
    /// default: the table is trusted forever.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_conditional::ConditionalLayer;
    ///
    /// let layer = ConditionalLayer::new().revalidate_after(Duration::from_secs(5));
    /// # drop(layer);
    /// ```
    pub fn revalidate_after(mut self, window: Duration) -> Self {
        self.config.bypass.revalidate_after = Some(window);
        self
    }

    /// With `true`, a write first asks the inner service, under the resource's lock, what it
    /// serves now (`HEAD` when it carries a validator, else `GET`), bumps the version if a
    /// writer bypassed the layer, and only then evaluates the preconditions: a client whose
    /// validator predates the bypassing write gets `412`. After a 2xx write, the new
    /// fingerprint is recorded (from the write's response, else read under the lock). Costs
    /// one or two more round trips per write. Off by default.
    ///
    /// ```
    /// use tower_conditional::ConditionalLayer;
    ///
    /// let layer = ConditionalLayer::new().verify_writes(true);
    /// # drop(layer);
    /// ```
    pub fn verify_writes(mut self, verify: bool) -> Self {
        self.config.bypass.verify_writes = verify;
        self
    }

    /// With `true`, a write the layer forwards carries `If-Match` with the inner service's own
    /// strong `ETag` for the version the client named, so a backend that checks `If-Match`
    /// itself refuses a write that lost a race with a bypassing writer; its `412` becomes the
    /// client's `412` and a version bump. Only for backends that issue strong `ETag`s and check
    /// `If-Match`. Off by default.
    ///
    /// ```
    /// use tower_conditional::ConditionalLayer;
    ///
    /// let layer = ConditionalLayer::new().verify_writes(true).forward_validators(true);
    /// # drop(layer);
    /// ```
    pub fn forward_validators(mut self, forward: bool) -> Self {
        self.config.bypass.forward_validators = forward;
        self
    }

    /// Labels this layer's metrics with `class="<class>"` (`"default"` otherwise): a service
    /// with several layers, say one per kind of resource, tells their metrics apart by it.
    /// Each service the layer makes registers its metric handles with the recorder installed
    /// then: install it before. See the README for the metrics.
    ///
    /// ```
    /// use tower_conditional::ConditionalLayer;
    ///
    /// let layer = ConditionalLayer::new().metrics_class("documents");
    /// # drop(layer);
    /// ```
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub fn metrics_class(mut self, class: &str) -> Self {
        self.class = Arc::from(class);
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
            Metrics::new(&self.class),
        )
    }
}

impl<K: ExtractKey + Clone, St> Clone for ConditionalLayer<K, St> {
    fn clone(&self) -> Self {
        Self {
            extract_key: self.extract_key.clone(),
            store: self.store.clone(),
            config: self.config,
            class: self.class.clone(),
        }
    }
}

impl<K: ExtractKey, St> fmt::Debug for ConditionalLayer<K, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConditionalLayer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
