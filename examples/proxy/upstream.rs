//! Connections to the upstream: HTTP/1.1 on `hyper::client::conn::http1`, at most
//! `--upstream-max-connections` open (busy or idle), up to `--upstream-max-idle` kept for the
//! next request (one idle for over a minute is closed instead of reused), a request waiting at
//! most `--upstream-queue-timeout` for a connection when all are busy.
//!
//! One upstream, so one stack of idle connections behind a lock held only to push or pop one:
//! no per-request pool key to build and hash, as a general-purpose pooled client must.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::{
    body::Incoming,
    client::conn::http1::{self, SendRequest},
};
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::sync::Semaphore;
use tower::Service;

use crate::forward::RequestBody;

/// How long an idle connection is kept for the next request.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a request got no response from the upstream.
#[derive(Debug)]
pub enum UpstreamError {
    /// Every connection stayed busy for `--upstream-queue-timeout`.
    Busy,
    /// No connection could be made (refused, unreachable, `--connect-timeout`).
    Connect(crate::BoxError),
    /// The connection failed before a response head arrived.
    Send(hyper::Error),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Busy => f.write_str("every upstream connection is busy"),
            UpstreamError::Connect(err) => write!(f, "connecting to the upstream: {err}"),
            UpstreamError::Send(err) => write!(f, "forwarding to the upstream: {err}"),
        }
    }
}

/// The upstream's connections; cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    /// Most recently used last: it is the likeliest to be open still.
    idle: Mutex<Vec<Idle>>,
    permits: Arc<Semaphore>,
    connector: HttpConnector,
    /// `http://host:port`, what the connector connects to.
    target: Uri,
    max_idle: usize,
    queue_timeout: Duration,
}

/// One connection's sending side. Its place in `--upstream-max-connections` is held by the
/// task driving it, so it counts until the socket is closed (after the sender is dropped, or
/// when the upstream closes it), not merely until the sender is gone.
struct Conn {
    sender: SendRequest<RequestBody>,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

impl Pool {
    pub fn new(
        target: Uri,
        connect_timeout: Duration,
        max_connections: usize,
        max_idle: usize,
        queue_timeout: Duration,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        Self {
            shared: Arc::new(Shared {
                idle: Mutex::new(Vec::with_capacity(max_idle)),
                permits: Arc::new(Semaphore::new(max_connections.max(1))),
                connector,
                target,
                max_idle,
                queue_timeout,
            }),
        }
    }

    /// Sends `req` (origin-form, with `Host`) on an idle connection or a new one. A request that
    /// an idle connection could not take (the upstream closed it meanwhile: hyper hands the
    /// request back unsent) goes on the next one; one sent and then failed is not resent.
    pub async fn send(
        &self,
        mut req: Request<RequestBody>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        loop {
            let (mut conn, reused) = match self.shared.checkout() {
                Some(conn) => (conn, true),
                None => (self.shared.connect().await?, false),
            };
            if let Err(err) = conn.sender.ready().await {
                if reused {
                    continue;
                }
                return Err(UpstreamError::Send(err));
            }
            match conn.sender.try_send_request(req).await {
                Ok(res) => {
                    let shared = self.shared.clone();
                    return Ok(res.map(|body| PooledBody {
                        body,
                        conn: Some(conn),
                        ended: false,
                        shared,
                    }));
                }
                Err(mut err) => match err.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(UpstreamError::Send(err.into_error())),
                },
            }
        }
    }
}

impl Shared {
    /// The most recently used idle connection still open, if any; older or closed ones dropped.
    fn checkout(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(Idle { conn, since }) = idle.pop() {
            if !conn.sender.is_closed() && since.elapsed() < IDLE_TIMEOUT {
                return Some(conn);
            }
        }
        None
    }

    fn put(&self, conn: Conn) {
        if conn.sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.max_idle {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    /// A new connection, once there is room for it (else `Busy` after the queue timeout).
    async fn connect(&self) -> Result<Conn, UpstreamError> {
        let permit = tokio::time::timeout(self.queue_timeout, self.permits.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or(UpstreamError::Busy)?;
        let io = self
            .connector
            .clone()
            .call(self.target.clone())
            .await
            .map_err(|err| UpstreamError::Connect(err.into()))?;
        let (sender, connection) = http1::handshake(io).await.map_err(UpstreamError::Send)?;
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "upstream connection ended with an error");
            }
        });
        Ok(Conn { sender })
    }
}

pin_project_lite::pin_project! {
    /// A response body from the upstream: its connection goes back to the pool once the body
    /// has been read to its end (or had none); dropped before that, the connection is closed.
    pub struct PooledBody {
        #[pin]
        body: Incoming,
        conn: Option<Conn>,
        ended: bool,
        shared: Arc<Shared>,
    }

    impl PinnedDrop for PooledBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if *this.ended || this.body.is_end_stream() {
                if let Some(conn) = this.conn.take() {
                    this.shared.put(conn);
                }
            }
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.body.poll_frame(cx));
        match &frame {
            None => *this.ended = true,
            Some(Err(_)) => drop(this.conn.take()),
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
