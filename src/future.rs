//! [`ResponseFuture`]: the forwarded call, or the layer's own answer, plus the bookkeeping that
//! follows a read.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use http::{
    header::{ETAG, LAST_MODIFIED},
    Request, Response, StatusCode,
};
use pin_project_lite::pin_project;
use tokio::sync::oneshot;
use tower_service::Service;

use crate::{
    answer::{self, Answer},
    body::ResponseBody,
    precondition::{Conditions, Decision, Verdict},
    store::{Existence, Snapshot, VersionStore},
    write::{Outcome, Prepared},
};

pub(crate) type PrepareFuture<R, E> =
    Pin<Box<dyn Future<Output = Result<Prepared<R, E>, E>> + Send>>;

pin_project! {
    /// Response future of [`Conditional`](crate::Conditional).
    ///
    /// Reads on a store that answers at once (the in-memory one) are polled in place. A write,
    /// or a read on a shared store, is prepared in a boxed future; a forwarded write then runs
    /// in a task of its own, whose answer this future waits for.
    pub struct ResponseFuture<S, ReqBody, Key, St>
    where
        S: Service<Request<ReqBody>>,
        St: VersionStore<Key>,
    {
        #[pin]
        kind: Kind<S, ReqBody, Key, St>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, ReqBody, Key, St>
    where
        S: Service<Request<ReqBody>>,
        St: VersionStore<Key>,
    {
        // Not a request the layer tracks.
        Passthrough { #[pin] future: S::Future },
        // A read, to be stamped with the version seen before it was forwarded.
        Read { #[pin] future: S::Future, read: Option<ReadInFlight<Key, St>> },
        // Answered without the inner service.
        Answered { answer: Option<Answer> },
        // Answered by the inner service, already stamped.
        Responded { response: Option<S::Response> },
        // A write (body, lock, preconditions, probe), or a read waiting for a shared store.
        Preparing { future: PrepareFuture<S::Response, S::Error> },
        // A write forwarded under its resource's lock, in a task of its own.
        Write { outcome: oneshot::Receiver<Outcome<S::Response, S::Error>> },
    }
}

impl<S, ReqBody, Key, St> ResponseFuture<S, ReqBody, Key, St>
where
    S: Service<Request<ReqBody>>,
    St: VersionStore<Key>,
{
    pub(crate) fn passthrough(future: S::Future) -> Self {
        Self::from(Kind::Passthrough { future })
    }

    pub(crate) fn read(future: S::Future, read: ReadInFlight<Key, St>) -> Self {
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

    fn from(kind: Kind<S, ReqBody, Key, St>) -> Self {
        Self { kind }
    }
}

impl<S, ReqBody, Key, St> Kind<S, ReqBody, Key, St>
where
    S: Service<Request<ReqBody>>,
    St: VersionStore<Key>,
{
    fn prepared(prepared: Prepared<S::Response, S::Error>) -> Self {
        match prepared {
            Prepared::Answer(answer) => Kind::Answered {
                answer: Some(answer),
            },
            Prepared::Responded(response) => Kind::Responded {
                response: Some(response),
            },
            Prepared::Forwarded(outcome) => Kind::Write { outcome },
        }
    }
}

impl<S, ReqBody, ResBody, Key, St> Future for ResponseFuture<S, ReqBody, Key, St>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    St: VersionStore<Key>,
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
                    return Poll::Ready(Ok(match read.finish::<_, ()>(res) {
                        Prepared::Responded(res) => res.map(ResponseBody::inner),
                        Prepared::Answer(answer) => answer.into_response(),
                        Prepared::Forwarded(_) => {
                            unreachable!("a read is never forwarded as a write")
                        }
                    }));
                }
                KindProj::Answered { answer } => {
                    let answer = answer.take().expect("future polled after completion");
                    return Poll::Ready(Ok(answer.into_response()));
                }
                KindProj::Responded { response } => {
                    let response = response.take().expect("future polled after completion");
                    return Poll::Ready(Ok(response.map(ResponseBody::inner)));
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

impl<S, ReqBody, Key, St> fmt::Debug for ResponseFuture<S, ReqBody, Key, St>
where
    S: Service<Request<ReqBody>>,
    St: VersionStore<Key>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.kind {
            Kind::Passthrough { .. } => "Passthrough",
            Kind::Read { .. } => "Read",
            Kind::Answered { .. } => "Answered",
            Kind::Responded { .. } => "Responded",
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

/// What a read's preconditions decide, given the snapshot taken before forwarding.
pub(crate) enum ReadStep {
    Answer(Answer),
    /// Forward it; when a `*` depended on whether the resource exists, the response decides
    /// between these two.
    Forward {
        if_exists: Option<(Decision, Decision)>,
    },
}

/// Decides a read against `snapshot`, and prepares a forwarded one: drops a `Range` that
/// `If-Range` invalidates and removes the conditions the layer has evaluated.
pub(crate) fn decide_read<B>(request: &mut Request<B>, snapshot: &Snapshot, now: u64) -> ReadStep {
    let version = snapshot.version;
    let conditions = Conditions::parse(request.headers(), version);
    let if_exists = match conditions.verdict(false, version, false) {
        Verdict::Decided(Decision::Forward) => None,
        Verdict::Decided(Decision::NotModified) => {
            return ReadStep::Answer(Answer::not_modified(snapshot.clone(), now));
        }
        Verdict::Decided(_) => return ReadStep::Answer(Answer::precondition_failed(version, now)),
        // A `*` on a resource whose existence is unknown: the response will tell.
        Verdict::DependsOnExistence { exists, absent } => Some((exists, absent)),
    };
    let method = request.method().clone();
    conditions.strip(&method, request.headers_mut(), version);
    ReadStep::Forward { if_exists }
}

/// A forwarded read: the version it saw before forwarding, and what to decide from the
/// response when a `*` precondition depended on whether the resource exists.
pub(crate) struct ReadInFlight<Key, St> {
    pub(crate) store: Arc<St>,
    pub(crate) key: Key,
    pub(crate) snapshot: Snapshot,
    pub(crate) if_exists: Option<(Decision, Decision)>,
}

impl<Key, St: VersionStore<Key>> ReadInFlight<Key, St> {
    /// The response stamped with the version seen before forwarding, or the layer's own answer.
    pub(crate) fn finish<B, E>(self, res: Response<B>) -> Prepared<Response<B>, E> {
        let status = res.status();
        let exists = if status.is_success() {
            Existence::Exists
        } else if status == StatusCode::NOT_FOUND || status == StatusCode::GONE {
            Existence::Absent
        } else {
            Existence::Unknown
        };
        let version = self.snapshot.version;
        let cached = self.snapshot.cached.as_deref();
        let learned = exists != Existence::Unknown
            && (exists != version.exists
                || (exists == Existence::Exists
                    && self.store.keeps_cached_headers()
                    && answer::cached_headers_differ(cached, res.headers())));
        if learned {
            let cached =
                (exists == Existence::Exists).then(|| answer::cached_headers(res.headers()));
            self.store
                .learn_from_read(&self.key, version.counter, exists, cached.flatten());
        }

        let now = self.store.now();
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
                Prepared::Answer(Answer::not_modified(snapshot, now))
            }
            Decision::PreconditionFailed => {
                Prepared::Answer(Answer::precondition_failed(version, now))
            }
            _ => {
                let mut res = res;
                if status.is_success() {
                    answer::stamp(res.headers_mut(), version, now);
                }
                Prepared::Responded(res)
            }
        }
    }
}

/// A read on a store that must be waited for. `inner` has been readied for it.
pub(crate) async fn read_later<S, ReqBody, ResBody, Key, St>(
    mut inner: S,
    mut request: Request<ReqBody>,
    key: Key,
    store: Arc<St>,
) -> Result<Prepared<S::Response, S::Error>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    St: VersionStore<Key>,
{
    let now = store.now();
    let snapshot = match store.current(&key, now).await {
        Ok(snapshot) => snapshot,
        Err(err) => {
            // No version to vouch for: forward without the 304 shortcut, and without validators
            // a client could later send back.
            tracing::warn!(error = %err, "read forwarded without preconditions");
            crate::precondition::remove_conditions(request.headers_mut());
            let mut res = inner.call(request).await?;
            res.headers_mut().remove(ETAG);
            res.headers_mut().remove(LAST_MODIFIED);
            return Ok(Prepared::Responded(res));
        }
    };
    let if_exists = match decide_read(&mut request, &snapshot, now) {
        ReadStep::Answer(answer) => return Ok(Prepared::Answer(answer)),
        ReadStep::Forward { if_exists } => if_exists,
    };
    let res = inner.call(request).await?;
    let read = ReadInFlight {
        store,
        key,
        snapshot,
        if_exists,
    };
    Ok(read.finish(res))
}
