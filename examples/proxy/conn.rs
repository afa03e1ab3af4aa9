//! Accepting and serving client connections within bounds: at most `--max-connections` at once
//! (the next few get a short `503`, the rest are closed at once), accept errors such as EMFILE
//! backed off and logged at most once a second, request heads read within
//! `--header-read-timeout`, connections idle for `--idle-timeout` closed, HTTP/2 peers pinged,
//! and on shutdown every connection drained.

use std::{
    convert::Infallible,
    future::Future,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use http::{header, HeaderValue, Request, StatusCode};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{watch, OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tower::ServiceExt;

use crate::{forward::ClientAddr, Proxy};

/// How long connections may live, and how many.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub h2_keep_alive: Duration,
    pub shutdown_timeout: Duration,
}

/// Connections over `--max-connections` answered `503` at once; beyond these, closed unread.
pub const OVERFLOW: usize = 32;
/// How long an overflow connection may take to send its request head and read the `503`.
const OVERFLOW_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepts connections until `shutdown`, then lets them finish (at most `--shutdown-timeout`).
pub async fn serve(
    listener: TcpListener,
    proxy: Proxy,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let builder = builder(&limits);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let overflow = Arc::new(Semaphore::new(OVERFLOW));
    // Each connection holds a receiver: `closed()` on the sender is "every connection is gone".
    let (closing, closing_rx) = watch::channel(false);
    let (mut accept_failed, mut full) = (Throttled::default(), Throttled::default());
    let mut backoff = BACKOFF_MIN;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            // Shutdown first: a flood of connections must not delay it.
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => {
                    backoff = BACKOFF_MIN;
                    conn
                }
                Err(err) if is_connection_error(&err) => continue,
                Err(err) => {
                    // EMFILE and the like: the listener stays readable, so retrying at once
                    // would spin. Wait, longer each time, as hyper's and axum's servers do.
                    accept_failed.warn(|suppressed| {
                        tracing::warn!(error = %err, suppressed, "accept failed; backing off");
                    });
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = &mut shutdown => break,
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                let connection = Connection {
                    builder: builder.clone(),
                    proxy: proxy.clone(),
                    idle_timeout: limits.idle_timeout,
                    closing: closing_rx.clone(),
                    _slot: slot,
                };
                tokio::spawn(connection.run(stream, peer));
            }
            Err(_) => {
                full.warn(|suppressed| {
                    tracing::warn!(
                        max = limits.max_connections,
                        suppressed,
                        "connection limit reached; refusing connections"
                    );
                });
                if let Ok(permit) = overflow.clone().try_acquire_owned() {
                    tokio::spawn(refuse(stream, permit));
                }
            }
        }
    }

    drop(listener);
    drop(closing_rx);
    closing.send_replace(true);
    tracing::info!("shutting down: waiting for in-flight requests");
    if tokio::time::timeout(limits.shutdown_timeout, closing.closed())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests still running after the shutdown timeout");
    }
}

/// HTTP/1.1 and HTTP/2 with their timers: hyper's header-read timeout (which also runs while an
/// HTTP/1.1 connection waits for its next request) and HTTP/2 keep-alive pings.
fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.h2_keep_alive)
        .keep_alive_timeout(limits.h2_keep_alive);
    builder
}

/// Errors of one connection that `accept` reports; the listener itself is fine.
fn is_connection_error(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// A log line at most once a second, with how many were left out.
#[derive(Default)]
struct Throttled {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttled {
    fn warn(&mut self, log: impl FnOnce(u64)) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now - last < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return;
        }
        log(self.suppressed);
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// One client connection, holding its slot until it ends.
struct Connection {
    builder: auto::Builder<TokioExecutor>,
    proxy: Proxy,
    idle_timeout: Duration,
    closing: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
}

impl Connection {
    async fn run(mut self, stream: TcpStream, peer: std::net::SocketAddr) {
        let activity = Arc::new(Activity::new());
        let client = ClientAddr::new(peer);
        let service = {
            let (proxy, activity) = (self.proxy.clone(), activity.clone());
            tower::service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(client.clone());
                let busy = Busy::new(activity.clone());
                let call = proxy.clone().oneshot(req);
                async move {
                    let res = call.await;
                    drop(busy);
                    res
                }
            })
        };
        let connection = self
            .builder
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        tokio::pin!(connection);
        let mut draining = false;
        loop {
            let idle_until = activity.idle_until(self.idle_timeout);
            tokio::select! {
                ended = connection.as_mut() => {
                    if let Err(err) = ended {
                        tracing::debug!(error = %err, "connection ended with an error");
                    }
                    return;
                }
                () = tokio::time::sleep_until(idle_until), if !draining => {
                    if activity.idle_until(self.idle_timeout) <= Instant::now() {
                        tracing::debug!("closing an idle connection");
                        connection.as_mut().graceful_shutdown();
                        draining = true;
                    }
                }
                _ = self.closing.changed(), if !draining => {
                    connection.as_mut().graceful_shutdown();
                    draining = true;
                }
            }
        }
    }
}

/// Requests in progress on a connection, and when the last one ended.
struct Activity {
    in_flight: AtomicUsize,
    since: Mutex<Instant>,
}

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            since: Mutex::new(Instant::now()),
        }
    }

    /// When the connection will have been idle for `timeout`, if nothing starts meanwhile.
    fn idle_until(&self, timeout: Duration) -> Instant {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return Instant::now() + timeout;
        }
        *self.since.lock().unwrap_or_else(|e| e.into_inner()) + timeout
    }
}

/// Marks a request in progress until dropped.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::SeqCst);
        Self(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

const FULL: &str =
    "503 Service Unavailable: the proxy is at its connection limit. Retry shortly.\n";

/// Answers a connection over the limit with `503` and closes it.
async fn refuse(stream: TcpStream, _permit: OwnedSemaphorePermit) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(false)
        .timer(TokioTimer::new())
        .header_read_timeout(OVERFLOW_TIMEOUT);
    let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
        let mut res = crate::forward::text(StatusCode::SERVICE_UNAVAILABLE, FULL);
        res.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        Ok::<_, Infallible>(res.map(|body| -> http_body_util::Full<Bytes> { body }))
    });
    let serve = builder.serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(OVERFLOW_TIMEOUT, serve).await;
}
