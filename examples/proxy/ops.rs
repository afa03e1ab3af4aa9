//! The operations listener (`--metrics-listen`), apart from the proxied namespace: Prometheus
//! metrics at `/metrics`, liveness at `/livez`, readiness at `/readyz`.
//!
//! Every number comes from the one recorder installed here: the layer's metrics (with the
//! library's `metrics` feature) and the proxy's own counters. `/readyz` checks, on every call,
//! that the upstream accepts a TCP connection and, with `--redis`, that Redis answers a
//! `PING`; each check is bounded by `--connect-timeout`, so polling it every second is cheap.

use std::{convert::Infallible, future::Future, pin::Pin, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics::Counter;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

/// Histogram buckets for every `_seconds` metric: from 100 µs (a store call in memory) to
/// 30 s (the default upstream timeout).
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 30.0,
];
/// Scrapers and probes connected at once; more are closed unread.
const MAX_CONNECTIONS: usize = 16;
/// How long one connection to it may live, busy or not (a scraper reconnects).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(30);
/// How often histograms are drained into their buckets between scrapes.
const UPKEEP: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder for the whole process. Call it before the layer is built:
/// the layer registers its metrics when it is made.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)?
        .install_recorder()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// What the proxy counts itself, beside the layer: requests the layer never saw, and upstream
/// failures.
#[derive(Clone)]
pub struct Counters {
    /// Forwarded requests the upstream did not answer (`502`, `503` busy, `504`).
    pub upstream_errors: Counter,
    /// Request bodies that did not arrive within `--body-timeout` (`408`).
    pub slow_uploads: Counter,
    /// Writes refused for want of room in `--max-buffered-bytes` (`503`).
    pub budget_refused: Counter,
}

impl Counters {
    /// Registers them with the installed recorder (none installed: they count nothing).
    pub fn register() -> Self {
        Self {
            upstream_errors: metrics::counter!("tower_conditional_proxy_upstream_errors_total"),
            slow_uploads: metrics::counter!("tower_conditional_proxy_slow_uploads_total"),
            budget_refused: metrics::counter!("tower_conditional_proxy_budget_refused_total"),
        }
    }
}

/// A readiness check of a dependency: `Err` says why it is not ready.
pub type Check =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Whether the upstream at `uri` accepts a TCP connection within `timeout`.
pub fn upstream_check(uri: &Uri, timeout: Duration) -> Check {
    // An IPv6 literal comes bracketed in a URI, not in a socket address.
    let host = uri.host().unwrap_or_default();
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(80);
    Arc::new(move || {
        let host = host.clone();
        Box::pin(async move {
            match tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), port))).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(err)) => Err(format!("upstream {host}:{port}: {err}")),
                Err(_) => Err(format!(
                    "upstream {host}:{port}: no connection in {timeout:?}"
                )),
            }
        })
    })
}

/// Whether Redis answers a `PING` within `timeout`.
#[cfg(feature = "redis")]
pub fn redis_check(store: tower_conditional::store::RedisStore, timeout: Duration) -> Check {
    Arc::new(move || {
        let store = store.clone();
        Box::pin(async move {
            match tokio::time::timeout(timeout, store.ping()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(err)) => Err(format!("redis: {err}")),
                Err(_) => Err(format!("redis: no answer in {timeout:?}")),
            }
        })
    })
}

/// Serves the operations endpoints on `listener` until the process ends.
pub async fn serve(listener: TcpListener, metrics: PrometheusHandle, checks: Vec<Check>) {
    let endpoints = Arc::new(Endpoints { metrics, checks });
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, say: the proxy itself matters more; try again shortly.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // dropped: closed unread
        };
        let endpoints = endpoints.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let endpoints = endpoints.clone();
                async move { Ok::<_, Infallible>(endpoints.answer(req).await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service);
            // A client that never reads its answers (or trickles requests) would keep its slot
            // for ever, and with all of them, the probes out: each connection lives this long.
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
            drop(slot);
        });
    }
}

struct Endpoints {
    metrics: PrometheusHandle,
    checks: Vec<Check>,
}

impl Endpoints {
    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            let mut res = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n".into(),
            );
            res.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return res;
        }
        match req.uri().path() {
            "/metrics" => {
                let mut res = text(StatusCode::OK, self.metrics.render());
                res.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                res
            }
            "/livez" => text(StatusCode::OK, "ok\n".into()),
            "/readyz" => {
                for check in &self.checks {
                    if let Err(why) = check().await {
                        let body = format!("not ready: {why}\n");
                        return text(StatusCode::SERVICE_UNAVAILABLE, body);
                    }
                }
                text(StatusCode::OK, "ready\n".into())
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: /metrics, /livez, /readyz\n".into(),
            ),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}
