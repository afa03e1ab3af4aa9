//! [`Conditional`]: the service that checks preconditions against the version table.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use http::{header::IF_MODIFIED_SINCE, Method, Request, Response};
use tower_service::Service;

use crate::{
    body::ResponseBody,
    date,
    future::{Answer, PendingWrite, ResponseFuture},
    key::{ExtractKey, PathKey},
    table::VersionTable,
};

/// Middleware that answers unchanged reads with `304 Not Modified` and stale writes with
/// `412 Precondition Failed`, and serializes the writes of each resource.
///
/// See the [crate docs](crate) for an example.
pub struct Conditional<S, K: ExtractKey = PathKey> {
    inner: S,
    extract_key: K,
    table: Arc<VersionTable<K::Key>>,
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

impl<S, K: ExtractKey> Conditional<S, K> {
    pub(crate) fn new(inner: S, extract_key: K, table: Arc<VersionTable<K::Key>>) -> Self {
        Self {
            inner,
            extract_key,
            table,
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
}

impl<S, K, ReqBody, ResBody> Service<Request<ReqBody>> for Conditional<S, K>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    K: ExtractKey,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody, K::Key>;

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
        let request = Request::from_parts(parts, body);
        let Some(key) = key else {
            return ResponseFuture::passthrough(self.inner.call(request));
        };

        if let Access::Read = access {
            // The version is taken before forwarding: a write that lands meanwhile makes the
            // stamp older than the data, never newer.
            let now = self.table.now();
            let version = self.table.current(&key, now);
            let since = date::parse_date_header(request.headers(), &IF_MODIFIED_SINCE);
            if since.is_some_and(|date| version.is_validated_by(date)) {
                return ResponseFuture::answered(Answer::not_modified(version, now));
            }
            return ResponseFuture::read(self.inner.call(request), version, self.table.clone());
        }

        let lock = self.table.write_lock(&key);
        match lock.clone().try_lock_owned() {
            Ok(guard) => ResponseFuture::write(&mut self.inner, request, key, guard, &self.table),
            Err(_) => {
                // The call happens after an await: take the service that was readied and leave
                // a clone in its place (tower-service, "Be careful when cloning inner services").
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let pending = PendingWrite {
                    inner,
                    request,
                    key,
                    table: self.table.clone(),
                };
                ResponseFuture::locking(Box::pin(lock.lock_owned()), pending)
            }
        }
    }
}

impl<S: Clone, K: ExtractKey + Clone> Clone for Conditional<S, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            extract_key: self.extract_key.clone(),
            table: self.table.clone(),
        }
    }
}

impl<S: fmt::Debug, K: ExtractKey> fmt::Debug for Conditional<S, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conditional")
            .field("inner", &self.inner)
            .field("tracked_resources", &self.table.len())
            .finish()
    }
}
