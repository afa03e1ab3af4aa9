//! A reverse proxy that puts optimistic locking in front of any HTTP storage backend.
//!
//! ```not_rust
//! cargo run --release --example proxy                      # with an embedded demo backend
//! cargo run --release --example proxy -- --upstream http://127.0.0.1:3000
//! cargo run --release --example proxy -- --help            # every flag
//! ```
//!
//! Every request goes through [`ConditionalLayer`], then to the upstream over pooled keep-alive
//! connections. Clients may speak HTTP/1.1 or HTTP/2 (prior knowledge). Without `--upstream`, an
//! in-memory storage backend with no concurrency control of its own is started on another
//! loopback port, so the proxy alone shows the whole mechanism.
//!
//! On SIGINT or SIGTERM the proxy stops accepting, lets in-flight requests finish (at most
//! `--shutdown-timeout`), prints its counters and exits 0. Logs go through `tracing`, with the
//! level from `RUST_LOG` (default `info`; `debug` logs one line per request).

mod demo_backend;
mod demo_page;
mod forward;
mod stats;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use clap::Parser;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tower::{util::BoxCloneSyncService, ServiceBuilder, ServiceExt};
use tower_conditional::{
    store::{MemoryStore, VersionStore},
    ConditionalLayer, PathKey,
};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::{
    forward::{ClientAddr, Forward, RequestBody, Upstream},
    stats::{ObserveLayer, Stats},
};

/// Optimistic locking (ETag, Last-Modified; 304, 412, 428) in front of an HTTP storage backend.
#[derive(Debug, Parser)]
#[command(name = "proxy")]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Backend to forward to, e.g. http://127.0.0.1:3000. Without it, an embedded in-memory
    /// demo backend is started on a free loopback port.
    #[arg(long)]
    upstream: Option<Uri>,
    /// Answer writes that carry no precondition (If-Match, If-None-Match, If-Unmodified-Since)
    /// with 428 Precondition Required instead of forwarding them.
    #[arg(long)]
    require_precondition: bool,
    /// Send the upstream's host:port as Host instead of the client's.
    #[arg(long)]
    rewrite_host: bool,
    /// Track at most this many resources; the least recently used are forgotten conservatively.
    #[arg(long, default_value_t = 1_000_000)]
    max_resources: usize,
    /// Largest write body, in bytes, read before the resource is locked (larger: 413).
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    max_body: usize,
    /// Seconds to connect to the upstream (then 502).
    #[arg(long, default_value = "2", value_parser = seconds)]
    connect_timeout: Duration,
    /// Seconds for the upstream to send a response head (then 504).
    #[arg(long, default_value = "30", value_parser = seconds)]
    upstream_timeout: Duration,
    /// Seconds for a whole request, from its head arriving to its response head (then 504).
    #[arg(long, default_value = "60", value_parser = seconds)]
    request_timeout: Duration,
    /// Seconds a write waits for another write to the same resource (then 503).
    #[arg(long, default_value = "10", value_parser = seconds)]
    lock_timeout: Duration,
    /// Seconds a resource stays locked after a write to it timed out upstream.
    #[arg(long, default_value = "5", value_parser = seconds)]
    timeout_grace: Duration,
    /// Seconds in-flight requests get to finish on shutdown.
    #[arg(long, default_value = "10", value_parser = seconds)]
    shutdown_timeout: Duration,
    /// Allow browser pages from this origin (e.g. http://localhost:5173) to call the proxy:
    /// CORS with the conditional headers allowed and ETag/Last-Modified exposed. Repeatable.
    #[arg(long)]
    cors_origin: Vec<String>,
    /// Answer GET on this path with the proxy's counters as JSON (e.g. /_stats). Off by default.
    #[arg(long)]
    stats_path: Option<String>,
    /// Keep versions and write locks in this Redis (e.g. redis://127.0.0.1:6379/), shared by
    /// every proxy using it, instead of in this process.
    #[cfg(feature = "redis")]
    #[arg(long)]
    redis: Option<String>,
}

fn seconds(arg: &str) -> Result<Duration, String> {
    let secs: f64 = arg
        .parse()
        .map_err(|_| format!("{arg:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|err| err.to_string())
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;
type Proxy = BoxCloneSyncService<Request<Incoming>, Response<Body>, std::convert::Infallible>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let upstream = match cli.upstream.clone() {
        Some(upstream) => upstream,
        None => {
            let addr = demo_backend::start().await?;
            println!("demo backend on http://{addr}");
            format!("http://{addr}").parse()?
        }
    };
    let stats = Arc::new(Stats::default());
    let layer = ConditionalLayer::new()
        .require_precondition(cli.require_precondition)
        .store(MemoryStore::new().max_resources(cli.max_resources))
        .max_body_size(cli.max_body)
        .lock_timeout(cli.lock_timeout)
        // A backstop: the upstream timeout answers 504 first, which also starts the grace period.
        .write_timeout(cli.upstream_timeout + Duration::from_secs(1))
        .timeout_grace(cli.timeout_grace);
    let forward = Forward::new(
        Upstream {
            uri: upstream,
            connect_timeout: cli.connect_timeout,
            response_timeout: cli.upstream_timeout,
            rewrite_host: cli.rewrite_host,
        },
        stats.clone(),
    )?;
    #[cfg(feature = "redis")]
    if let Some(url) = cli.redis.clone() {
        // The layer sizes each lock's lease from its write timeout and grace period.
        let store = tower_conditional::store::RedisStore::open(&url)?;
        let layer = layer.store(store);
        return serve(
            &cli,
            layer.clone(),
            proxy(&cli, layer, forward, stats.clone()),
            stats,
        )
        .await;
    }
    let proxy = proxy(&cli, layer.clone(), forward, stats.clone());
    serve(&cli, layer, proxy, stats).await
}

/// Accepts connections until SIGINT or SIGTERM, then drains them.
async fn serve<K, St>(
    cli: &Cli,
    tracked: ConditionalLayer<K, St>,
    proxy: Proxy,
    stats: Arc<Stats>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    K: tower_conditional::ExtractKey,
    St: VersionStore<K::Key>,
{
    let listener = TcpListener::bind(cli.listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let graceful = GracefulShutdown::new();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = proxy
            .clone()
            .map_request(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(ClientAddr(peer));
                req
            });
        let connection = auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        });
    }

    drop(listener);
    tracing::info!("shutting down: waiting for in-flight requests");
    if tokio::time::timeout(cli.shutdown_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests still running after the shutdown timeout");
    }
    println!(
        "stats {}",
        stats.json(tracked.tracked_resources()).trim_end()
    );
    Ok(())
}

/// The whole stack: stats endpoint, counting and logging, whole-request timeout, the layer,
/// and forwarding.
fn proxy<St>(
    cli: &Cli,
    layer: ConditionalLayer<PathKey, St>,
    forward: Forward,
    stats: Arc<Stats>,
) -> Proxy
where
    St: VersionStore<Box<str>>,
{
    let request_timeout = cli.request_timeout;
    let stats_path = cli.stats_path.clone();
    // The demo page belongs with the demo backend, whose `/api/demo` it edits.
    let demo = cli.upstream.is_none();
    let layer_handle = layer.clone();
    let endpoint_stats = stats.clone();
    let conditional = ServiceBuilder::new()
        .layer(ObserveLayer(stats))
        // The layer needs a request body it can rebuild from bytes: hyper's, boxed.
        .map_request(|req: Request<Incoming>| req.map(RequestBody::new))
        .layer(layer)
        .service(forward);
    let service = tower::service_fn(move |req: Request<Incoming>| {
        let conditional = conditional.clone();
        let stats_path = stats_path.clone();
        let (stats, layer) = (endpoint_stats.clone(), layer_handle.clone());
        async move {
            if stats_path.as_deref() == Some(req.uri().path()) {
                let body = stats.json(layer.tracked_resources());
                return Ok(boxed(Response::new(Full::new(Bytes::from(body)))));
            }
            if demo {
                if let Some(page) = demo_page::serve(req.uri().path()) {
                    return Ok(boxed(page));
                }
            }
            // A dropped request future never abandons a forwarded write: the layer runs those
            // to their end in tasks of their own.
            match tokio::time::timeout(request_timeout, conditional.oneshot(req)).await {
                Ok(res) => res.map(boxed),
                Err(_) => {
                    let body = "504 Gateway Timeout: the request took too long.\n";
                    Ok(boxed(forward::text(StatusCode::GATEWAY_TIMEOUT, body)))
                }
            }
        }
    });
    // Outermost: a CORS preflight is answered here and never touches the version table.
    let cors = (!cli.cors_origin.is_empty()).then(|| {
        let origins: Vec<HeaderValue> = cli
            .cors_origin
            .iter()
            .map(|o| HeaderValue::from_str(o).expect("a header value"))
            .collect();
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([
                header::CONTENT_TYPE,
                header::IF_MATCH,
                header::IF_NONE_MATCH,
                header::IF_MODIFIED_SINCE,
                header::IF_UNMODIFIED_SINCE,
                header::IF_RANGE,
                header::RANGE,
            ])
            .expose_headers([header::ETAG, header::LAST_MODIFIED, header::DATE])
    });
    BoxCloneSyncService::new(ServiceBuilder::new().option_layer(cors).service(service))
}

/// Any of the proxy's response bodies, as one type (CORS needs one with a `Default`).
fn boxed<B>(res: Response<B>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    res.map(|body| body.map_err(Into::into).boxed_unsync())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("a SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
