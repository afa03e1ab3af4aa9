//! [`ResponseFuture`]: the forwarded call, or the layer's own answer, plus the write bookkeeping.

use std::{
    fmt,
    future::Future,
    hash::Hash,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use http::{
    header::{CONTENT_TYPE, DATE, IF_UNMODIFIED_SINCE, LAST_MODIFIED},
    HeaderMap, HeaderValue, Request, Response, StatusCode,
};
use pin_project_lite::pin_project;
use tokio::sync::OwnedMutexGuard;
use tower_service::Service;

use crate::{body::ResponseBody, date, table::VersionTable, version::Version};

type LockFuture = Pin<Box<dyn Future<Output = OwnedMutexGuard<()>> + Send>>;

pin_project! {
    /// Response future of [`Conditional`](crate::Conditional).
    ///
    /// Reads and uncontended writes are polled in place; only a write that has to wait for its
    /// resource's lock boxes the wait.
    pub struct ResponseFuture<S, ReqBody, Key>
    where
        S: Service<Request<ReqBody>>,
        Key: Hash,
        Key: Eq,
        Key: Clone,
    {
        #[pin]
        kind: Kind<S, ReqBody, Key>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, ReqBody, Key>
    where
        S: Service<Request<ReqBody>>,
        Key: Hash,
        Key: Eq,
        Key: Clone,
    {
        // Not a request the layer tracks.
        Passthrough { #[pin] future: S::Future },
        // A read, to be stamped with the version seen before it was forwarded.
        Read { #[pin] future: S::Future, version: Version, table: Arc<VersionTable<Key>> },
        // 304 or 412, answered without the inner service.
        Answered { answer: Option<Answer> },
        // A write waiting for its resource's lock, holding the service readied for it.
        Locking { lock: LockFuture, pending: Option<PendingWrite<S, ReqBody, Key>> },
        // A write forwarded under its resource's lock.
        Write { #[pin] future: S::Future, in_flight: Option<WriteInFlight<Key>> },
    }
}

pub(crate) struct PendingWrite<S, ReqBody, Key> {
    pub(crate) inner: S,
    pub(crate) request: Request<ReqBody>,
    pub(crate) key: Key,
    pub(crate) table: Arc<VersionTable<Key>>,
}

impl<S, ReqBody, Key> ResponseFuture<S, ReqBody, Key>
where
    S: Service<Request<ReqBody>>,
    Key: Hash + Eq + Clone,
{
    pub(crate) fn passthrough(future: S::Future) -> Self {
        Self::from(Kind::Passthrough { future })
    }

    pub(crate) fn read(future: S::Future, version: Version, table: Arc<VersionTable<Key>>) -> Self {
        Self::from(Kind::Read {
            future,
            version,
            table,
        })
    }

    pub(crate) fn answered(answer: Answer) -> Self {
        Self::from(Kind::Answered {
            answer: Some(answer),
        })
    }

    /// A write whose lock is held: check its precondition, then forward it or answer 412.
    pub(crate) fn write(
        inner: &mut S,
        request: Request<ReqBody>,
        key: Key,
        lock: OwnedMutexGuard<()>,
        table: &Arc<VersionTable<Key>>,
    ) -> Self {
        Self::from(Kind::write(inner, request, key, lock, table))
    }

    /// A write that must first wait for `lock`; `pending.inner` has been readied for it.
    pub(crate) fn locking(lock: LockFuture, pending: PendingWrite<S, ReqBody, Key>) -> Self {
        Self::from(Kind::Locking {
            lock,
            pending: Some(pending),
        })
    }

    fn from(kind: Kind<S, ReqBody, Key>) -> Self {
        Self { kind }
    }
}

impl<S, ReqBody, Key> Kind<S, ReqBody, Key>
where
    S: Service<Request<ReqBody>>,
    Key: Hash + Eq + Clone,
{
    fn write(
        inner: &mut S,
        request: Request<ReqBody>,
        key: Key,
        lock: OwnedMutexGuard<()>,
        table: &Arc<VersionTable<Key>>,
    ) -> Self {
        // Under the lock no other write to this resource can bump it until we are done, so the
        // version checked here is the one the forwarded write will replace.
        let precondition = date::parse_date_header(request.headers(), &IF_UNMODIFIED_SINCE);
        if precondition.is_some_and(|date| !table.peek(&key).is_validated_by(date)) {
            // Only the 412 re-dates: a date issued now for the version about to be replaced
            // would be shared with the new version written in the same second.
            let now = table.now();
            let current = table.current(&key, now);
            return Kind::Answered {
                answer: Some(Answer::precondition_failed(current, now)),
            };
        }
        let in_flight = WriteInFlight {
            table: table.clone(),
            key,
            settled: false,
            _lock: lock,
        };
        Kind::Write {
            future: inner.call(request),
            in_flight: Some(in_flight),
        }
    }
}

impl<S, ReqBody, ResBody, Key> Future for ResponseFuture<S, ReqBody, Key>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    Key: Hash + Eq + Clone,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        loop {
            match kind.as_mut().project() {
                KindProj::Passthrough { future } => {
                    return future.poll(cx).map_ok(|res| res.map(ResponseBody::inner));
                }
                KindProj::Read {
                    future,
                    version,
                    table,
                } => {
                    let mut res = ready!(future.poll(cx))?.map(ResponseBody::inner);
                    if res.status().is_success() {
                        stamp(res.headers_mut(), version.modified, table.now());
                    }
                    return Poll::Ready(Ok(res));
                }
                KindProj::Answered { answer } => {
                    let answer = answer.take().expect("future polled after completion");
                    return Poll::Ready(Ok(answer.into_response()));
                }
                KindProj::Locking { lock, pending } => {
                    let guard = ready!(lock.as_mut().poll(cx));
                    let PendingWrite {
                        mut inner,
                        request,
                        key,
                        table,
                    } = pending.take().expect("future polled after completion");
                    let next = Kind::write(&mut inner, request, key, guard, &table);
                    kind.set(next);
                }
                KindProj::Write { future, in_flight } => {
                    let result = ready!(future.poll(cx));
                    let in_flight = in_flight.take().expect("future polled after completion");
                    // On `Err` the write is dropped unsettled: the outcome is unknown, so it bumps.
                    let res = result?;
                    let mut res = res.map(ResponseBody::inner);
                    let bumped = in_flight.settle(res.status());
                    if let (Some((version, now)), true) = (bumped, res.status().is_success()) {
                        stamp(res.headers_mut(), version.modified, now);
                    }
                    return Poll::Ready(Ok(res));
                }
            }
        }
    }
}

impl<S, ReqBody, Key> fmt::Debug for ResponseFuture<S, ReqBody, Key>
where
    S: Service<Request<ReqBody>>,
    Key: Hash + Eq + Clone,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.kind {
            Kind::Passthrough { .. } => "Passthrough",
            Kind::Read { .. } => "Read",
            Kind::Answered { .. } => "Answered",
            Kind::Locking { .. } => "Locking",
            Kind::Write { .. } => "Write",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

/// A write forwarded under its resource's lock. Settling it, or dropping it unsettled (inner
/// error, or the future dropped because the client left), records the outcome and then
/// releases the lock.
pub(crate) struct WriteInFlight<Key: Hash + Eq + Clone> {
    table: Arc<VersionTable<Key>>,
    key: Key,
    settled: bool,
    // Dropped after `Drop::drop` has bumped the version.
    _lock: OwnedMutexGuard<()>,
}

impl<Key: Hash + Eq + Clone> WriteInFlight<Key> {
    /// The inner service answered `status`. A 4xx refused the write: nothing changed. Anything
    /// else may have changed the resource and bumps it; the new version and the time are returned.
    fn settle(mut self, status: StatusCode) -> Option<(Version, u64)> {
        self.settled = true;
        if status.is_client_error() {
            return None;
        }
        let now = self.table.now();
        Some((self.table.bump(&self.key, now), now))
    }
}

impl<Key: Hash + Eq + Clone> Drop for WriteInFlight<Key> {
    fn drop(&mut self) {
        if !self.settled {
            let now = self.table.now();
            self.table.bump(&self.key, now);
        }
    }
}

/// A response the layer gives without calling the inner service.
#[derive(Debug)]
pub(crate) struct Answer {
    status: StatusCode,
    modified: u64,
    now: u64,
}

const PRECONDITION_FAILED_BODY: &str = "412 Precondition Failed: the resource has changed since \
the version this request was based on. Re-read it (GET) and retry with its new Last-Modified.\n";

impl Answer {
    pub(crate) fn not_modified(version: Version, now: u64) -> Self {
        Self {
            status: StatusCode::NOT_MODIFIED,
            modified: version.modified,
            now,
        }
    }

    pub(crate) fn precondition_failed(version: Version, now: u64) -> Self {
        Self {
            status: StatusCode::PRECONDITION_FAILED,
            modified: version.modified,
            now,
        }
    }

    fn into_response<B>(self) -> Response<ResponseBody<B>> {
        let body = match self.status {
            StatusCode::PRECONDITION_FAILED => PRECONDITION_FAILED_BODY,
            _ => "",
        };
        let mut res = Response::new(ResponseBody::own(body));
        *res.status_mut() = self.status;
        if !body.is_empty() {
            res.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
        }
        stamp(res.headers_mut(), self.modified, self.now);
        res
    }
}

/// Sets `Last-Modified` and a `Date` no earlier than it, replacing the inner service's.
fn stamp(headers: &mut HeaderMap, modified: u64, now: u64) {
    headers.insert(LAST_MODIFIED, date::header_value(modified));
    headers.insert(DATE, date::header_value(now.max(modified)));
}
