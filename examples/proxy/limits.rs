//! Bounds on what request bodies can make the proxy hold: bytes of write bodies being buffered
//! (`--max-buffered-bytes`) and how long a body may take to arrive (`--body-timeout`).

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Sleep,
};

use crate::forward::OwnAnswer;

/// Bytes of write bodies the layer may be buffering at once, shared by every connection.
#[derive(Clone)]
pub struct BodyBudget {
    permits: Arc<Semaphore>,
    total: usize,
    max_body: usize,
}

const BUDGET_SPENT: &str = "503 Service Unavailable: the proxy is buffering as many uploads as it \
may. Retry shortly.\n";

impl BodyBudget {
    pub fn new(total: usize, max_body: usize) -> Self {
        let total = total.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(total)),
            total,
            max_body,
        }
    }

    /// Reserves the bytes a write's body may take before a byte of it is read: its
    /// `Content-Length`, or `--max-body` when it has none. A body over `--max-body` is refused
    /// by the layer unread, so it needs none. Without room: `503` with `Retry-After`.
    pub fn reserve<B>(&self, req: &Request<B>) -> Result<Option<OwnedSemaphorePermit>, OwnAnswer> {
        let buffered = matches!(
            *req.method(),
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE
        );
        if !buffered {
            return Ok(None);
        }
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let bytes = match declared {
            Some(length) if length > self.max_body as u64 => return Ok(None),
            Some(length) => length as usize,
            None => self.max_body,
        };
        let bytes = u32::try_from(bytes.min(self.total)).unwrap_or(u32::MAX);
        match self.permits.clone().try_acquire_many_owned(bytes) {
            Ok(permit) => Ok(Some(permit)),
            Err(_) => Err(
                OwnAnswer::new(StatusCode::SERVICE_UNAVAILABLE, BUDGET_SPENT)
                    .with(header::RETRY_AFTER, "1"),
            ),
        }
    }
}

/// The answer to a body that did not arrive within `--body-timeout`; the rest of it is not
/// waited for, so the connection is closed.
pub fn body_timed_out() -> OwnAnswer {
    OwnAnswer::new(
        StatusCode::REQUEST_TIMEOUT,
        "408 Request Timeout: the request body did not arrive in time.\n",
    )
    .with(header::CONNECTION, "close")
}

/// Why a request body could not be read.
#[derive(Debug)]
pub enum BodyError {
    Read(hyper::Error),
    TimedOut,
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Read(err) => write!(f, "reading the request body: {err}"),
            BodyError::TimedOut => f.write_str("the request body did not arrive in time"),
        }
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BodyError::Read(err) => Some(err),
            BodyError::TimedOut => None,
        }
    }
}

pin_project_lite::pin_project! {
    /// A request body that fails once `timeout` has passed since the request's head arrived,
    /// and says so in `timed_out`, so the answer can be `408` rather than whatever the reader
    /// makes of a failed body.
    pub struct TimedBody<B> {
        #[pin]
        inner: B,
        #[pin]
        deadline: Sleep,
        timed_out: Arc<AtomicBool>,
    }
}

impl<B> TimedBody<B> {
    pub fn new(inner: B, timeout: Duration) -> (Self, Arc<AtomicBool>) {
        let timed_out = Arc::new(AtomicBool::new(false));
        let body = Self {
            inner,
            deadline: tokio::time::sleep(timeout),
            timed_out: timed_out.clone(),
        };
        (body, timed_out)
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes, Error = hyper::Error>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(BodyError::Read)));
        }
        if this.deadline.poll(cx).is_ready() {
            this.timed_out.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(BodyError::TimedOut)));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
