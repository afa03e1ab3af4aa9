//! [`ResponseFuture`]: the state machine that drives a request through the read path
//! ([`crate::read`]) or the write path ([`crate::write`]) to its response.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::sync::oneshot;
use tower_service::Service;

use crate::{
    answer::Answer,
    body::ResponseBody,
    read::ReadInFlight,
    store::VersionStore,
    write::{self, Prepared},
};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
pub(crate) type ReadLater<B, E> = BoxFuture<Result<Response<ResponseBody<B>>, E>>;
pub(crate) type WritePrepare<R, E> = BoxFuture<Result<Prepared<R, E>, E>>;

pin_project! {
    /// Response future of [`Conditional`](crate::Conditional).
    ///
    /// Reads on a store that answers at once (the in-memory one) are polled in place. A write,
    /// or a read on a shared store, is prepared in a boxed future; a forwarded write the inner
    /// service does not answer at once then runs in a task of its own, whose answer this future
    /// waits for.
    pub struct ResponseFuture<S, ReqBody, ResBody, Key, St>
    where
        S: Service<Request<ReqBody>>,
        St: VersionStore<Key>,
    {
        #[pin]
        kind: Kind<S, ReqBody, ResBody, Key, St>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, ReqBody, ResBody, Key, St>
    where
        S: Service<Request<ReqBody>>,
        St: VersionStore<Key>,
    {
        // Not a request the layer tracks.
        Passthrough { #[pin] future: S::Future },
        // Answered without the inner service.
        Answered { answer: Option<Answer> },
        // A read, to be stamped with the version seen before it was forwarded.
        Read { #[pin] future: S::Future, read: Option<ReadInFlight<Key, St>> },
        // A read waiting for a shared store, then for the inner service.
        ReadLater { future: ReadLater<ResBody, S::Error> },
        // A write: body, lock, preconditions, probe. The store dates the answer if the write's
        // task ends without one.
        WritePreparing { future: WritePrepare<S::Response, S::Error>, store: Option<Arc<St>> },
        // A write forwarded under its resource's lock: done, or going on in a task of its own.
        Written {
            outcome: oneshot::Receiver<write::Outcome<S::Response, S::Error>>,
            store: Arc<St>,
        },
    }
}

impl<S, ReqBody, ResBody, Key, St> ResponseFuture<S, ReqBody, ResBody, Key, St>
where
    S: Service<Request<ReqBody>>,
    St: VersionStore<Key>,
{
    pub(crate) fn passthrough(future: S::Future) -> Self {
        Self::from(Kind::Passthrough { future })
    }

    pub(crate) fn answered(answer: Answer) -> Self {
        Self::from(Kind::Answered {
            answer: Some(answer),
        })
    }

    pub(crate) fn read(future: S::Future, read: ReadInFlight<Key, St>) -> Self {
        Self::from(Kind::Read {
            future,
            read: Some(read),
        })
    }

    pub(crate) fn read_later(future: ReadLater<ResBody, S::Error>) -> Self {
        Self::from(Kind::ReadLater { future })
    }

    pub(crate) fn write(future: WritePrepare<S::Response, S::Error>, store: Arc<St>) -> Self {
        Self::from(Kind::WritePreparing {
            future,
            store: Some(store),
        })
    }

    fn from(kind: Kind<S, ReqBody, ResBody, Key, St>) -> Self {
        Self { kind }
    }
}

impl<S, ReqBody, ResBody, Key, St> Future for ResponseFuture<S, ReqBody, ResBody, Key, St>
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
                KindProj::Answered { answer } => {
                    let answer = answer.take().expect("future polled after completion");
                    return Poll::Ready(Ok(answer.into_response()));
                }
                KindProj::Read { future, read } => {
                    let res = ready!(future.poll(cx))?;
                    let read = read.take().expect("future polled after completion");
                    return Poll::Ready(Ok(read.finish(res).into_response()));
                }
                KindProj::ReadLater { future } => return future.as_mut().poll(cx),
                KindProj::WritePreparing { future, store } => {
                    match ready!(future.as_mut().poll(cx))? {
                        Prepared::Answer(answer) => kind.set(Kind::Answered {
                            answer: Some(answer),
                        }),
                        Prepared::Written(outcome) => {
                            let store = store.take().expect("future polled after completion");
                            return Poll::Ready(written(outcome, &*store));
                        }
                        Prepared::Forwarded(outcome) => {
                            let store = store.take().expect("future polled after completion");
                            kind.set(Kind::Written { outcome, store });
                        }
                    }
                }
                KindProj::Written { outcome, store } => {
                    return Poll::Ready(match ready!(Pin::new(outcome).poll(cx)) {
                        Ok(outcome) => written(outcome, &**store),
                        // The task ended without a word: its runtime shut down, or it failed
                        // after the inner service answered.
                        Err(_) => Ok(Answer::write_abandoned(store.now()).into_response()),
                    });
                }
            }
        }
    }
}

/// The response to a forwarded write, from what became of it. The layer's own answers are dated
/// now, by the layer's clock.
fn written<B, E, Key, St: VersionStore<Key>>(
    outcome: write::Outcome<Response<B>, E>,
    store: &St,
) -> Result<Response<ResponseBody<B>>, E> {
    let answer = match outcome {
        write::Outcome::Response(result) => return result.map(|res| res.map(ResponseBody::inner)),
        write::Outcome::Answer(answer) => answer,
        write::Outcome::TimedOut => Answer::write_timed_out(store.now()),
        write::Outcome::Panicked => Answer::write_panicked(store.now()),
    };
    Ok(answer.into_response())
}

impl<S, ReqBody, ResBody, Key, St> fmt::Debug for ResponseFuture<S, ReqBody, ResBody, Key, St>
where
    S: Service<Request<ReqBody>>,
    St: VersionStore<Key>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.kind {
            Kind::Passthrough { .. } => "Passthrough",
            Kind::Answered { .. } => "Answered",
            Kind::Read { .. } => "Read",
            Kind::ReadLater { .. } => "ReadLater",
            Kind::WritePreparing { .. } => "WritePreparing",
            Kind::Written { .. } => "Written",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
