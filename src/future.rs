//! [`ResponseFuture`]: the forwarded call, or the layer's own answer, plus the bookkeeping that
//! follows a read or a write.

use std::{
    fmt,
    future::Future,
    hash::Hash,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tokio::sync::oneshot;
use tower_service::Service;

use crate::{
    answer::{self, Answer},
    body::ResponseBody,
    etag::Tag,
    precondition::Decision,
    table::{Snapshot, VersionTable},
    version::Existence,
    write::{Outcome, Prepared},
};

pub(crate) type PrepareFuture<R, E> =
    Pin<Box<dyn Future<Output = Result<Prepared<R, E>, E>> + Send>>;

pin_project! {
    /// Response future of [`Conditional`](crate::Conditional).
    ///
    /// Reads are polled in place. A write is prepared in a boxed future (its body read, its lock
    /// taken, its preconditions decided), then forwarded in a task of its own, whose answer
    /// this future waits for.
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
        Read { #[pin] future: S::Future, read: Option<ReadInFlight<Key>> },
        // Answered without the inner service.
        Answered { answer: Option<Answer> },
        // A write being read, waiting for its lock, or probing whether the resource exists.
        Preparing { future: PrepareFuture<S::Response, S::Error> },
        // A write forwarded under its resource's lock, in a task of its own.
        Write { outcome: oneshot::Receiver<Outcome<S::Response, S::Error>> },
    }
}

impl<S, ReqBody, Key> ResponseFuture<S, ReqBody, Key>
where
    S: Service<Request<ReqBody>>,
    Key: Hash + Eq + Clone,
{
    pub(crate) fn passthrough(future: S::Future) -> Self {
        Self::from(Kind::Passthrough { future })
    }

    pub(crate) fn read(future: S::Future, read: ReadInFlight<Key>) -> Self {
        Self::from(Kind::Read {
            future,
            read: Some(read),
        })
    }

    pub(crate) fn answered(answer: Answer) -> Self {
        Self::from(Kind::Answered {
            answer: Some(answer),
        })
    }

    pub(crate) fn preparing(future: PrepareFuture<S::Response, S::Error>) -> Self {
        Self::from(Kind::Preparing { future })
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
    fn prepared(prepared: Prepared<S::Response, S::Error>) -> Self {
        match prepared {
            Prepared::Answer(answer) => Kind::Answered {
                answer: Some(answer),
            },
            Prepared::Forwarded(outcome) => Kind::Write { outcome },
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
                KindProj::Read { future, read } => {
                    let res = ready!(future.poll(cx))?;
                    let read = read.take().expect("future polled after completion");
                    return Poll::Ready(Ok(read.finish(res)));
                }
                KindProj::Answered { answer } => {
                    let answer = answer.take().expect("future polled after completion");
                    return Poll::Ready(Ok(answer.into_response()));
                }
                KindProj::Preparing { future } => {
                    let prepared = ready!(future.as_mut().poll(cx))?;
                    kind.set(Kind::prepared(prepared));
                }
                KindProj::Write { outcome } => {
                    return Poll::Ready(match ready!(Pin::new(outcome).poll(cx)) {
                        Ok(Outcome::Response(result)) => {
                            result.map(|res| res.map(ResponseBody::inner))
                        }
                        Ok(Outcome::TimedOut { now }) => {
                            Ok(Answer::write_timed_out(now).into_response())
                        }
                        // The task ended without a word: only when its runtime shuts down.
                        Err(_) => {
                            Ok(
                                Answer::plain(StatusCode::SERVICE_UNAVAILABLE, OUTCOME_UNKNOWN, 0)
                                    .into_response(),
                            )
                        }
                    });
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
            Kind::Preparing { .. } => "Preparing",
            Kind::Write { .. } => "Write",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

const OUTCOME_UNKNOWN: &str = "503 Service Unavailable: the server is shutting down and the \
outcome of this write is unknown. Re-read the resource before retrying.\n";

/// A forwarded read: the version it saw before forwarding, and what to decide from the
/// response when a `*` precondition depended on whether the resource exists.
pub(crate) struct ReadInFlight<Key> {
    pub(crate) table: Arc<VersionTable<Key>>,
    pub(crate) key: Key,
    pub(crate) snapshot: Snapshot,
    pub(crate) tag: Tag,
    pub(crate) if_exists: Option<(Decision, Decision)>,
}

impl<Key: Hash + Eq + Clone> ReadInFlight<Key> {
    fn finish<B>(self, res: Response<B>) -> Response<ResponseBody<B>> {
        let status = res.status();
        let exists = if status.is_success() {
            Existence::Exists
        } else if status == http::StatusCode::NOT_FOUND || status == http::StatusCode::GONE {
            Existence::Absent
        } else {
            Existence::Unknown
        };
        let version = self.snapshot.version;
        let cached = self.snapshot.cached.as_deref();
        let learned = exists != Existence::Unknown
            && (exists != version.exists
                || (exists == Existence::Exists
                    && answer::cached_headers_differ(cached, res.headers())));
        if learned {
            let cached =
                (exists == Existence::Exists).then(|| answer::cached_headers(res.headers()));
            self.table
                .learn_from_read(&self.key, version.counter, exists, cached.flatten());
        }

        let now = self.table.now();
        let decision = match (self.if_exists, exists) {
            (Some((decision, _)), Existence::Exists) | (Some((_, decision)), Existence::Absent) => {
                decision
            }
            _ => Decision::Forward,
        };
        match decision {
            Decision::NotModified => {
                let snapshot = Snapshot {
                    version,
                    cached: answer::cached_headers(res.headers()),
                };
                Answer::not_modified(snapshot, self.tag, now).into_response()
            }
            Decision::PreconditionFailed => {
                Answer::precondition_failed(version, self.tag, now).into_response()
            }
            _ => {
                let mut res = res.map(ResponseBody::inner);
                if status.is_success() {
                    answer::stamp(res.headers_mut(), version, self.tag, now);
                }
                res
            }
        }
    }
}
