//! Bounds on what request bodies can make the proxy hold: bytes of write bodies being buffered
//! (`--max-buffered-bytes`) and how long a body may take to arrive (`--body-timeout`).

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
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

    /// Reserves the bytes a write's body may take, before a byte of it is read when its length
    /// is known: `Content-Length` (HTTP/1.1 or HTTP/2). A body known to be empty (most reads, a
    /// bodiless `DELETE`) has nothing to reserve, time or count: `None`. A body over
    /// `--max-body` is refused by the layer unread, so it needs none. A body of unknown length
    /// (chunked, or HTTP/2 without `content-length`) gets room as its frames arrive
    /// ([`Budgeted`]), at most `--max-body`. Without room: `503` with `Retry-After`.
    pub fn reserve<B: Body>(
        &self,
        req: &Request<B>,
    ) -> Result<Option<Arc<Reservation>>, OwnAnswer> {
        let buffered = matches!(
            *req.method(),
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE
        );
        let body = req.body();
        if body.is_end_stream() {
            return Ok(None);
        }
        let exact = body.size_hint().exact();
        let (upfront, grows) = match exact {
            _ if !buffered => (0, false),
            Some(length) if length > self.max_body as u64 => (0, false),
            Some(length) => (usize::try_from(length).unwrap_or(usize::MAX), false),
            None => (0, true),
        };
        let reservation = Reservation {
            permits: self.permits.clone(),
            held: Mutex::new(None),
            total: self.total,
            room: if grows { self.max_body } else { 0 },
            refused: AtomicBool::new(false),
        };
        if upfront > 0 && !reservation.grow(upfront) {
            return Err(budget_spent());
        }
        Ok(Some(Arc::new(reservation)))
    }
}

/// The answer when the budget has no room for a body.
pub fn budget_spent() -> OwnAnswer {
    OwnAnswer::new(StatusCode::SERVICE_UNAVAILABLE, BUDGET_SPENT).with(header::RETRY_AFTER, "1")
}

/// The budget one request holds, until dropped (after its response: the layer keeps the
/// buffered body until then).
pub struct Reservation {
    permits: Arc<Semaphore>,
    held: Mutex<Option<OwnedSemaphorePermit>>,
    /// The whole budget: no one body needs more (it would never get it).
    total: usize,
    /// Bytes it may hold at most as frames arrive.
    room: usize,
    refused: AtomicBool,
}

impl Reservation {
    /// Takes `bytes` more from the budget, or nothing if there is not that much room.
    fn grow(&self, bytes: usize) -> bool {
        let bytes = u32::try_from(bytes.min(self.total)).unwrap_or(u32::MAX);
        let Ok(permit) = self.permits.clone().try_acquire_many_owned(bytes) else {
            return false;
        };
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        match held.as_mut() {
            Some(held) => held.merge(permit),
            None => *held = Some(permit),
        }
        true
    }

    fn held(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits)
    }

    /// Whether a frame of the body found no room: the answer is then `503`.
    pub fn refused(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
    }
}

pin_project_lite::pin_project! {
    /// A request body of unknown length that takes room in the budget for each frame as it
    /// arrives (up to `--max-body`, past which the layer refuses it anyway), and fails when
    /// there is none.
    pub struct Budgeted<B> {
        #[pin]
        inner: B,
        reservation: Arc<Reservation>,
    }
}

impl<B> Budgeted<B> {
    pub fn new(inner: B, reservation: Arc<Reservation>) -> Self {
        Self { inner, reservation }
    }
}

impl<B> Body for Budgeted<B>
where
    B: Body<Data = Bytes, Error = BodyError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
            let reservation = &**this.reservation;
            let wanted = data.map_or(0, Bytes::len);
            let room = reservation.room.saturating_sub(reservation.held());
            let wanted = wanted.min(room);
            if wanted > 0 && !reservation.grow(wanted) {
                reservation.refused.store(true, Ordering::Relaxed);
                return Poll::Ready(Some(Err(BodyError::BudgetSpent)));
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
    BudgetSpent,
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Read(err) => write!(f, "reading the request body: {err}"),
            BodyError::TimedOut => f.write_str("the request body did not arrive in time"),
            BodyError::BudgetSpent => f.write_str("no room left in --max-buffered-bytes"),
        }
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BodyError::Read(err) => Some(err),
            BodyError::TimedOut | BodyError::BudgetSpent => None,
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
