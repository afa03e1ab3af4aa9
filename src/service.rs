//! [`Conditional`]: the service that checks preconditions against the version table.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Method, Request, Response};
use tower_service::Service;

use crate::{
    answer::Answer,
    body::ResponseBody,
    future::{ReadInFlight, ResponseFuture},
    key::{ExtractKey, PathKey},
    precondition::{Conditions, Decision, Verdict},
    request_body::FromBytes,
    table::VersionTable,
    write::{self, Config},
};

/// Middleware that answers unchanged reads with `304 Not Modified` and stale writes with
/// `412 Precondition Failed`, and serializes the writes of each resource.
///
/// See the [crate docs](crate) for an example.
pub struct Conditional<S, K: ExtractKey = PathKey> {
    inner: S,
    extract_key: K,
    table: Arc<VersionTable<K::Key>>,
    config: Config,
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
    pub(crate) fn new(
        inner: S,
        extract_key: K,
        table: Arc<VersionTable<K::Key>>,
        config: Config,
    ) -> Self {
        Self {
            inner,
            extract_key,
            table,
            config,
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
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: FromBytes + Send + 'static,
    ResBody: Send + 'static,
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
        match access {
            Access::Read => self.read(request, key),
            _ => self.write(request, key),
        }
    }
}

impl<S, K: ExtractKey> Conditional<S, K> {
    fn read<ReqBody>(
        &mut self,
        mut request: Request<ReqBody>,
        key: K::Key,
    ) -> ResponseFuture<S, ReqBody, K::Key>
    where
        S: Service<Request<ReqBody>>,
    {
        // The version is taken before forwarding: a write that lands meanwhile makes the stamp
        // older than the data, never newer.
        let now = self.table.now();
        let snapshot = self.table.current(&key, now);
        let version = snapshot.version;
        let tag = self.table.tag(version);
        let conditions = Conditions::parse(request.headers(), tag, version);
        let if_exists = match conditions.verdict(false, version, false) {
            Verdict::Decided(Decision::Forward) => None,
            Verdict::Decided(Decision::NotModified) => {
                return ResponseFuture::answered(Answer::not_modified(snapshot, tag, now));
            }
            Verdict::Decided(_) => {
                return ResponseFuture::answered(Answer::precondition_failed(version, tag, now));
            }
            // A `*` on a resource whose existence is unknown: the response will tell.
            Verdict::DependsOnExistence { exists, absent } => Some((exists, absent)),
        };
        let method = request.method().clone();
        conditions.strip(&method, request.headers_mut(), version, tag);
        let read = ReadInFlight {
            table: self.table.clone(),
            key,
            snapshot,
            tag,
            if_exists,
        };
        ResponseFuture::read(self.inner.call(request), read)
    }

    fn write<ReqBody, ResBody>(
        &mut self,
        request: Request<ReqBody>,
        key: K::Key,
    ) -> ResponseFuture<S, ReqBody, K::Key>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ReqBody: FromBytes + Send + 'static,
        ResBody: Send + 'static,
    {
        // The call happens after an await: take the service that was readied and leave a clone
        // in its place (tower-service, "Be careful when cloning inner services").
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let table = self.table.clone();
        ResponseFuture::preparing(Box::pin(write::prepare(
            inner,
            request,
            key,
            table,
            self.config,
        )))
    }
}

impl<S: Clone, K: ExtractKey + Clone> Clone for Conditional<S, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            extract_key: self.extract_key.clone(),
            table: self.table.clone(),
            config: self.config,
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
