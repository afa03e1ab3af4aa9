//! [`Conditional`]: the service that checks preconditions against the version table.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Method, Request, Response};
use tower_service::Service;

use crate::{
    body::ResponseBody,
    future::ResponseFuture,
    key::{ExtractKey, PathKey},
    metrics::Metrics,
    read::{self, Begun},
    request_body::FromBytes,
    store::{MemoryStore, VersionStore},
    write::{self, Config},
};

/// Middleware that answers unchanged reads with `304 Not Modified` and stale writes with
/// `412 Precondition Failed`, and serializes the writes of each resource.
///
/// See the [crate docs](crate) for an example.
pub struct Conditional<S, K: ExtractKey = PathKey, St = MemoryStore<<K as ExtractKey>::Key>> {
    inner: S,
    extract_key: K,
    store: Arc<St>,
    config: Config,
    metrics: Metrics,
}

/// What a request does to its resource.
enum Access {
    Read,
    Write,
    Untracked,
}

impl Access {
    fn of(method: &Method) -> Self {
        match *method {
            Method::GET | Method::HEAD => Access::Read,
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE => Access::Write,
            _ => Access::Untracked,
        }
    }
}

// ===== impl Conditional =====

impl<S, K: ExtractKey, St> Conditional<S, K, St> {
    pub(crate) fn new(
        inner: S,
        extract_key: K,
        store: Arc<St>,
        config: Config,
        metrics: Metrics,
    ) -> Self {
        Self {
            inner,
            extract_key,
            store,
            config,
            metrics,
        }
    }

    /// Gets a reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Gets a mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The call happens after an await: take the service that was readied and leave a clone in
    /// its place (tower-service, "Be careful when cloning inner services").
    fn take_ready(&mut self) -> S
    where
        S: Clone,
    {
        let clone = self.inner.clone();
        std::mem::replace(&mut self.inner, clone)
    }
}

impl<S, K, St, ReqBody, ResBody> Service<Request<ReqBody>> for Conditional<S, K, St>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: FromBytes + Send + 'static,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    K: ExtractKey,
    St: VersionStore<K::Key>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, ResBody, K::Key, St>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let access = Access::of(request.method());
        if let Access::Untracked = access {
            return ResponseFuture::passthrough(self.inner.call(request));
        }
        let (parts, body) = request.into_parts();
        let key = self.extract_key.extract_key(&parts);
        let mut request = Request::from_parts(parts, body);
        let Some(key) = key else {
            return ResponseFuture::passthrough(self.inner.call(request));
        };
        if let Access::Write = access {
            let (inner, store) = (self.take_ready(), self.store.clone());
            let metrics = self.metrics.clone();
            let prepare = write::prepare(inner, request, key, store.clone(), self.config, metrics);
            return ResponseFuture::write(Box::pin(prepare), store);
        }
        // Reads on a store that answers at once run unboxed, unless every read is
        // fingerprinted (which waits for the response, and the store).
        let key = if self.config.bypass.any() {
            key
        } else {
            match read::begin(&self.store, key, &mut request, &self.metrics) {
                Begun::Answered(answer) => {
                    self.metrics.answered(answer.said());
                    return ResponseFuture::answered(answer);
                }
                Begun::Forward(read) => {
                    return ResponseFuture::read(self.inner.call(request), read)
                }
                Begun::Later(key) => key,
            }
        };
        let (inner, store) = (self.take_ready(), self.store.clone());
        let metrics = self.metrics.clone();
        let read = read::later(inner, request, key, store, self.config.bypass, metrics);
        ResponseFuture::read_later(Box::pin(read))
    }
}

impl<S: Clone, K: ExtractKey + Clone, St> Clone for Conditional<S, K, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            extract_key: self.extract_key.clone(),
            store: self.store.clone(),
            config: self.config,
            metrics: self.metrics.clone(),
        }
    }
}

impl<S: fmt::Debug, K: ExtractKey, St> fmt::Debug for Conditional<S, K, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conditional")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}
