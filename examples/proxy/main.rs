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
//! Everything a client can make it hold is bounded: connections, how long they may idle or take
//! to send a head or a body, bytes of write bodies being buffered, and connections to the
//! upstream. On SIGINT or SIGTERM the proxy stops accepting, lets in-flight requests finish (at
//! most `--shutdown-timeout`) and exits 0. Logs go through `tracing` to stderr, as text or JSON
//! lines, with the level from `RUST_LOG` (default `info`); `--log-requests` logs one line per
//! request at `info`. With `--metrics-listen`, Prometheus metrics, `/livez` and `/readyz` are
//! served on a listener of their own. Every flag can also be set from the environment
//! (`TOWER_CONDITIONAL_` and the flag's name, e.g. `TOWER_CONDITIONAL_UPSTREAM`); a flag given
//! on the command line wins.

mod conn;
mod demo_backend;
mod demo_page;
mod forward;
mod limits;
mod observe;
mod ops;
mod target;
mod upstream;

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use clap::Parser;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty};
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tower::{util::BoxCloneSyncService, ServiceBuilder, ServiceExt};
use tower_conditional::{
    store::{MemoryStore, VersionStore},
    ConditionalLayer,
};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::{
    conn::Limits,
    forward::{Forward, RequestBody, Upstream},
    limits::{BodyBudget, Budgeted, TimedBody},
    observe::ObserveLayer,
    ops::Counters,
    target::{Fold, ResourceKey},
};

/// Optimistic locking (ETag, Last-Modified; 304, 412, 428) in front of an HTTP storage backend.
#[derive(Debug, Parser)]
#[command(name = "proxy")]
struct Cli {
    /// Address to listen on.
    #[arg(
        long,
        env = "TOWER_CONDITIONAL_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    listen: SocketAddr,
    /// Backend to forward to, e.g. http://127.0.0.1:3000. Without it, an embedded in-memory
    /// demo backend is started on a free loopback port.
    #[arg(long, env = "TOWER_CONDITIONAL_UPSTREAM")]
    upstream: Option<Uri>,
    /// Answer writes that carry no precondition (If-Match, If-None-Match, If-Unmodified-Since)
    /// with 428 Precondition Required instead of forwarding them.
    #[arg(long, env = "TOWER_CONDITIONAL_REQUIRE_PRECONDITION")]
    require_precondition: bool,
    /// Send the upstream's host:port as Host instead of the client's.
    #[arg(long, env = "TOWER_CONDITIONAL_REWRITE_HOST")]
    rewrite_host: bool,
    /// Track at most this many resources; the least recently used are forgotten conservatively.
    #[arg(
        long,
        env = "TOWER_CONDITIONAL_MAX_RESOURCES",
        default_value_t = 1_000_000
    )]
    max_resources: usize,
    /// Largest write body, in bytes, read before the resource is locked (larger: 413).
    #[arg(long, env = "TOWER_CONDITIONAL_MAX_BODY", default_value_t = 8 * 1024 * 1024)]
    max_body: usize,
    /// Seconds to connect to the upstream (then 502).
    #[arg(long, env = "TOWER_CONDITIONAL_CONNECT_TIMEOUT", default_value = "2", value_parser = seconds)]
    connect_timeout: Duration,
    /// Seconds for the upstream to send a response head (then 504).
    #[arg(long, env = "TOWER_CONDITIONAL_UPSTREAM_TIMEOUT", default_value = "30", value_parser = seconds)]
    upstream_timeout: Duration,
    /// Seconds for a whole request, from its head arriving to its response head (then 504).
    #[arg(long, env = "TOWER_CONDITIONAL_REQUEST_TIMEOUT", default_value = "60", value_parser = seconds)]
    request_timeout: Duration,
    /// Seconds a write waits for another write to the same resource (then 503).
    #[arg(long, env = "TOWER_CONDITIONAL_LOCK_TIMEOUT", default_value = "10", value_parser = seconds)]
    lock_timeout: Duration,
    /// Seconds a resource stays locked after a write to it timed out upstream.
    #[arg(long, env = "TOWER_CONDITIONAL_TIMEOUT_GRACE", default_value = "5", value_parser = seconds)]
    timeout_grace: Duration,
    /// Other programs write to the backend too: answer 304 from the version table only while
    /// the backend confirmed the version within this many seconds, then ask it (with its own
    /// ETag or Last-Modified). Every forwarded read is fingerprinted. Off by default.
    #[arg(long, env = "TOWER_CONDITIONAL_REVALIDATE_AFTER", value_parser = seconds)]
    revalidate_after: Option<Duration>,
    /// Other programs write to the backend too: before deciding a write, ask the backend (under
    /// the resource's lock) what it holds now; a bypassing write makes stale writers get 412.
    #[arg(long, env = "TOWER_CONDITIONAL_VERIFY_WRITES")]
    verify_writes: bool,
    /// The backend issues strong ETags and checks If-Match: forward each write with the
    /// backend's own tag, so it refuses one that lost a race with a bypassing writer.
    #[arg(long, env = "TOWER_CONDITIONAL_FORWARD_VALIDATORS")]
    forward_validators: bool,
    /// How the backend folds two spellings of a path into one resource, comma-separated: case,
    /// slashes (`//` is `/`), trailing-slash, decoded-slash (`%2F` is `/`). Fold what the
    /// backend folds: folding more only costs spurious 412s, folding less loses updates.
    #[arg(
        long,
        env = "TOWER_CONDITIONAL_KEY_FOLD",
        value_enum,
        value_delimiter = ','
    )]
    key_fold: Vec<Fold>,
    /// Include the query string in the resource key, for backends that name resources by it
    /// (e.g. /api/doc?id=7).
    #[arg(long, env = "TOWER_CONDITIONAL_KEY_QUERY")]
    key_query: bool,
    /// Client connections open at once; more get 503 or are closed. Default 10,000, or fewer
    /// to stay under the open-file limit.
    #[arg(long, env = "TOWER_CONDITIONAL_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Seconds a client has to send a request head, also while an HTTP/1.1 connection waits
    /// for its next request (then the connection is closed).
    #[arg(long, env = "TOWER_CONDITIONAL_HEADER_READ_TIMEOUT", default_value = "30", value_parser = seconds)]
    header_read_timeout: Duration,
    /// Seconds a connection may stay without a request in progress (then it is closed).
    #[arg(long, env = "TOWER_CONDITIONAL_IDLE_TIMEOUT", default_value = "75", value_parser = seconds)]
    idle_timeout: Duration,
    /// Seconds between HTTP/2 keep-alive pings; a peer that does not answer one within as
    /// long is disconnected.
    #[arg(long, env = "TOWER_CONDITIONAL_H2_KEEP_ALIVE", default_value = "20", value_parser = seconds)]
    h2_keep_alive: Duration,
    /// Bytes of write bodies buffered at once, over all connections; a write that cannot get
    /// room for its body gets 503 before it is read.
    #[arg(long, env = "TOWER_CONDITIONAL_MAX_BUFFERED_BYTES", default_value_t = 256 * 1024 * 1024)]
    max_buffered_bytes: usize,
    /// Seconds for a request body to arrive, from the request head (then 408); shorter than
    /// --request-timeout.
    #[arg(long, env = "TOWER_CONDITIONAL_BODY_TIMEOUT", default_value = "30", value_parser = seconds)]
    body_timeout: Duration,
    /// Connections to the upstream, busy or idle. Default 512, or fewer to stay under the
    /// open-file limit.
    #[arg(long, env = "TOWER_CONDITIONAL_UPSTREAM_MAX_CONNECTIONS")]
    upstream_max_connections: Option<usize>,
    /// Idle connections kept open to the upstream.
    #[arg(
        long,
        env = "TOWER_CONDITIONAL_UPSTREAM_MAX_IDLE",
        default_value_t = 64
    )]
    upstream_max_idle: usize,
    /// Seconds a request waits for an upstream connection when all are busy (then 503).
    #[arg(long, env = "TOWER_CONDITIONAL_UPSTREAM_QUEUE_TIMEOUT", default_value = "1", value_parser = seconds)]
    upstream_queue_timeout: Duration,
    /// Seconds in-flight requests get to finish on shutdown.
    #[arg(long, env = "TOWER_CONDITIONAL_SHUTDOWN_TIMEOUT", default_value = "10", value_parser = seconds)]
    shutdown_timeout: Duration,
    /// Allow browser pages from this origin (e.g. http://localhost:5173) to call the proxy:
    /// CORS with the conditional headers allowed and ETag/Last-Modified exposed. Repeatable.
    #[arg(long, env = "TOWER_CONDITIONAL_CORS_ORIGIN", value_parser = origin, value_delimiter = ',')]
    cors_origin: Vec<HeaderValue>,
    /// Serve Prometheus metrics (/metrics), liveness (/livez) and readiness (/readyz: the
    /// upstream accepts connections and Redis answers) on this address, apart from the proxied
    /// namespace. Off by default.
    #[arg(long, env = "TOWER_CONDITIONAL_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Log lines as text or JSON (one object a line), to stderr.
    #[arg(long, env = "TOWER_CONDITIONAL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log one line per request at info (method, path, status, what the layer did, the version
    /// served, the upstream's time); at debug otherwise.
    #[arg(long, env = "TOWER_CONDITIONAL_LOG_REQUESTS")]
    log_requests: bool,
    /// Keep versions and write locks in this Redis (e.g. redis://127.0.0.1:6379/), shared by
    /// every proxy using it, instead of in this process; or in the primary a Sentinel names,
    /// followed through failovers: redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE_NAME.
    #[cfg(feature = "redis")]
    #[arg(
        long,
        env = "TOWER_CONDITIONAL_REDIS",
        hide_env_values = true, // a URL may carry a password: not in --help
        conflicts_with = "redis_cluster"
    )]
    redis: Option<String>,
    /// Keep versions and write locks in this Redis Cluster instead (a node's URL, e.g.
    /// redis://127.0.0.1:7000/; repeat it, or separate URLs with commas, for more seed nodes).
    #[cfg(feature = "redis")]
    #[arg(
        long,
        env = "TOWER_CONDITIONAL_REDIS_CLUSTER",
        hide_env_values = true,
        value_name = "URL",
        value_delimiter = ','
    )]
    redis_cluster: Vec<String>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Whether a line per request is logged: at info with `--log-requests`, else at debug when
/// the log filter lets `proxy::observe` debug lines through.
fn logs_requests(cli: &Cli) -> bool {
    cli.log_requests || tracing::enabled!(target: "proxy::observe", tracing::Level::DEBUG)
}

fn seconds(arg: &str) -> Result<Duration, String> {
    let secs: f64 = arg
        .parse()
        .map_err(|_| format!("{arg:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|err| err.to_string())
}

/// A CORS origin as browsers send it: `null`, or `scheme://host[:port]` with no path.
fn origin(arg: &str) -> Result<HeaderValue, String> {
    let valid = arg == "null"
        || arg.parse::<Uri>().is_ok_and(|uri| {
            uri.scheme().is_some()
                && uri.authority().is_some()
                && uri.path() == "/"
                && uri.query().is_none()
                && !arg.ends_with('/')
        });
    match HeaderValue::from_str(arg) {
        Ok(value) if valid => Ok(value),
        _ => Err(format!(
            "{arg:?} is not an origin: use scheme://host[:port], e.g. http://localhost:5173, \
             with no path or trailing slash"
        )),
    }
}

/// Default connection bounds that keep the proxy under its open-file limit, with room left
/// for its own files and the connections refused with a 503.
fn connection_bounds(cli: &Cli) -> (usize, usize) {
    let budget = open_file_limit().saturating_sub(64);
    let upstream = cli
        .upstream_max_connections
        .unwrap_or_else(|| (budget / 4).clamp(1, 512));
    let clients = cli.max_connections.unwrap_or_else(|| {
        budget
            .saturating_sub(upstream + conn::OVERFLOW)
            .clamp(1, 10_000)
    });
    (clients, upstream)
}

#[cfg(unix)]
fn open_file_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    match unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } {
        0 => usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX),
        _ => 1024,
    }
}

#[cfg(not(unix))]
fn open_file_limit() -> usize {
    usize::MAX
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;
type Proxy = BoxCloneSyncService<Request<Incoming>, Response<Body>, Infallible>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    // Before the layer makes its service, which registers its metrics with the recorder then.
    let metrics = match cli.metrics_listen {
        Some(_) => Some(ops::install()?),
        None => None,
    };
    let counters = Counters::register();
    let upstream = match cli.upstream.clone() {
        Some(upstream) => upstream,
        None => {
            let addr = demo_backend::start().await?;
            println!("demo backend on http://{addr}");
            format!("http://{addr}").parse()?
        }
    };
    let (max_connections, upstream_max_connections) = connection_bounds(&cli);
    let layer = ConditionalLayer::new()
        .key_fn(ResourceKey::new(&cli.key_fold, cli.key_query))
        .require_precondition(cli.require_precondition)
        .store(MemoryStore::new().max_resources(cli.max_resources))
        .max_body_size(cli.max_body)
        .lock_timeout(cli.lock_timeout)
        // A backstop: the upstream timeout answers 504 first, which also starts the grace period.
        .write_timeout(cli.upstream_timeout + Duration::from_secs(1))
        .timeout_grace(cli.timeout_grace)
        .verify_writes(cli.verify_writes)
        .forward_validators(cli.forward_validators);
    let layer = match cli.revalidate_after {
        Some(window) => layer.revalidate_after(window),
        None => layer,
    };
    let upstream_ready = ops::upstream_check(&upstream, cli.connect_timeout);
    let forward = Forward::new(
        Upstream {
            uri: upstream,
            connect_timeout: cli.connect_timeout,
            response_timeout: cli.upstream_timeout,
            rewrite_host: cli.rewrite_host,
            max_connections: upstream_max_connections,
            max_idle: cli.upstream_max_idle,
            queue_timeout: cli.upstream_queue_timeout,
            timed: logs_requests(&cli),
        },
        counters.upstream_errors.clone(),
    )?;
    #[cfg(feature = "redis")]
    if cli.redis.is_some() || !cli.redis_cluster.is_empty() {
        use tower_conditional::store::RedisStore;
        // The layer sizes each lock's lease from its write timeout and grace period.
        let store = match &cli.redis {
            Some(url) => RedisStore::open(url)?,
            None => RedisStore::cluster(&cli.redis_cluster)?,
        };
        let checks = vec![
            upstream_ready,
            ops::redis_check(store.clone(), cli.connect_timeout),
        ];
        let proxy = proxy(&cli, layer.store(store), forward, counters);
        return serve(&cli, max_connections, proxy, metrics, checks).await;
    }
    let proxy = proxy(&cli, layer, forward, counters);
    serve(&cli, max_connections, proxy, metrics, vec![upstream_ready]).await
}

/// Accepts connections until SIGINT or SIGTERM, then drains them; serves the operations
/// endpoints meanwhile, with `--metrics-listen`.
async fn serve(
    cli: &Cli,
    max_connections: usize,
    proxy: Proxy,
    metrics: Option<PrometheusHandle>,
    checks: Vec<ops::Check>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // Before the address is printed: from then on a signal means "drain and exit".
    let shutdown = shutdown_signal()?;
    if let (Some(addr), Some(metrics)) = (cli.metrics_listen, metrics) {
        let listener = TcpListener::bind(addr).await?;
        println!("metrics on http://{}", listener.local_addr()?);
        tokio::spawn(ops::serve(listener, metrics, checks));
    }
    let listener = TcpListener::bind(cli.listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let limits = Limits {
        max_connections,
        header_read_timeout: cli.header_read_timeout,
        idle_timeout: cli.idle_timeout,
        h2_keep_alive: cli.h2_keep_alive,
        shutdown_timeout: cli.shutdown_timeout,
    };
    conn::serve(listener, proxy, limits, shutdown).await;
    Ok(())
}

/// The whole stack: target checks, body budget and timeout, whole-request timeout, logging,
/// the layer, and forwarding.
fn proxy<St>(
    cli: &Cli,
    layer: ConditionalLayer<ResourceKey, St>,
    forward: Forward,
    counters: Counters,
) -> Proxy
where
    St: VersionStore<Box<str>>,
{
    let (request_timeout, body_timeout) = (cli.request_timeout, cli.body_timeout);
    let budget = BodyBudget::new(cli.max_buffered_bytes, cli.max_body);
    // The demo page belongs with the demo backend, whose `/api/demo` it edits.
    let demo = cli.upstream.is_none();
    // Boxed with its request type named: the async block below then proves `Send` for one
    // concrete service instead of a generic stack.
    let conditional: BoxCloneSyncService<Request<RequestBody>, Response<Body>, Infallible> =
        BoxCloneSyncService::new(
            ServiceBuilder::new()
                .map_response(boxed)
                // Only when its lines go somewhere: it costs allocations and clock reads.
                .option_layer(logs_requests(cli).then_some(ObserveLayer {
                    at_info: cli.log_requests,
                }))
                .layer(layer)
                .service(forward),
        );
    // One pointer to clone per request (and per connection) instead of each part.
    let shared = Arc::new((conditional, counters, budget));
    let service = tower::service_fn(move |mut req: Request<Incoming>| {
        let shared = shared.clone();
        async move {
            let (conditional, counters, budget) = &*shared;
            // From here on the target is an origin-form, normalized path: what the key is
            // computed from is exactly what is forwarded.
            if let Err(refused) = target::admit(&mut req) {
                return Ok(boxed(refused.into_response()));
            }
            if demo {
                if let Some(page) = demo_page::serve(req.uri().path()) {
                    return Ok(boxed(page));
                }
            }
            // `None` for a body known to be empty (most reads): no budget, no body timer.
            let reserved = match budget.reserve(&req) {
                Ok(reserved) => reserved,
                Err(refused) => {
                    counters.budget_refused.increment(1);
                    return Ok(boxed(refused.into_response()));
                }
            };
            let (parts, body) = req.into_parts();
            let (body, uploading) = match reserved {
                None => (
                    RequestBody::new(Empty::new().map_err(|never| match never {})),
                    None,
                ),
                Some(reserved) => {
                    // The layer needs a request body it can rebuild from bytes: hyper's, boxed.
                    let (body, timed_out) = TimedBody::new(body, body_timeout);
                    let body = Budgeted::new(body, reserved.clone());
                    (RequestBody::new(body), Some((timed_out, reserved)))
                }
            };
            let req = Request::from_parts(parts, body);
            // A dropped request future never abandons a forwarded write: the layer runs those
            // to their end in tasks of their own.
            let call = conditional.clone().oneshot(req);
            let res = tokio::time::timeout(request_timeout, call).await;
            if let Some((timed_out, reserved)) = uploading {
                if timed_out.load(std::sync::atomic::Ordering::Relaxed) {
                    counters.slow_uploads.increment(1);
                    return Ok(boxed(limits::body_timed_out().into_response()));
                }
                if reserved.refused() {
                    counters.budget_refused.increment(1);
                    // The rest of the body is not read: the connection cannot be reused.
                    let refused = limits::budget_spent().with(header::CONNECTION, "close");
                    return Ok(boxed(refused.into_response()));
                }
            }
            match res {
                Ok(res) => res,
                Err(_) => {
                    let body = "504 Gateway Timeout: the request took too long.\n";
                    Ok(boxed(forward::text(StatusCode::GATEWAY_TIMEOUT, body)))
                }
            }
        }
    });
    // Outermost: a CORS preflight is answered here and never touches the version table.
    let cors = (!cli.cors_origin.is_empty()).then(|| {
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(cli.cors_origin.iter().cloned()))
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

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not when the
/// future is first polled: call it before announcing the address, or a signal sent as soon as
/// the proxy is up (while `serve` has not yet polled it) kills the process with its default
/// action, cutting off requests already forwarded.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        let mut interrupt = tokio::signal::windows::ctrl_c()?;
        Ok(async move {
            interrupt.recv().await;
        })
    }
}
