//! Forwarding to the upstream as a reverse proxy should (RFC 9110 §7.6): connection-specific
//! fields stripped both ways, `Via`, `Forwarded` and `X-Forwarded-For` added, `Host` kept or
//! rewritten, and every failure answered with a short plain-text status instead of a hang.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{
    header::{self, HeaderName},
    uri::PathAndQuery,
    HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version,
};
use http_body_util::{combinators::BoxBody, Either, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tower::Service;

use crate::stats::Stats;

pub type RequestBody = BoxBody<Bytes, hyper::Error>;
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// The address of the client a request came from, set per connection.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// How to reach the upstream.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub uri: Uri,
    pub connect_timeout: Duration,
    /// How long the upstream may take to send a response head.
    pub response_timeout: Duration,
    /// Send the upstream's authority as `Host` instead of the client's.
    pub rewrite_host: bool,
}

/// Forwards each request to the upstream over pooled keep-alive connections.
#[derive(Clone)]
pub struct Forward {
    client: Client<HttpConnector, RequestBody>,
    upstream: Arc<Upstream>,
    stats: Arc<Stats>,
}

impl Forward {
    pub fn new(upstream: Upstream, stats: Arc<Stats>) -> Result<Self, String> {
        if upstream.uri.scheme_str() != Some("http") || upstream.uri.authority().is_none() {
            return Err(format!(
                "--upstream must be an http://host:port URL, not {}",
                upstream.uri
            ));
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(upstream.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(Self {
            client,
            upstream: Arc::new(upstream),
            stats,
        })
    }

    /// The upstream's scheme and authority, its path as a prefix, then the request's path and query.
    fn upstream_uri(&self, uri: &Uri) -> Uri {
        let prefix = self.upstream.uri.path().trim_end_matches('/');
        let path = uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let mut parts = self.upstream.uri.clone().into_parts();
        parts.path_and_query = Some(
            format!("{prefix}{path}")
                .parse()
                .expect("a valid path and query prefixed by a valid path"),
        );
        Uri::from_parts(parts).expect("upstream scheme and authority are set")
    }

    fn prepare(&self, req: &mut Request<RequestBody>) {
        let client_authority = req.uri().authority().cloned();
        let version = req.version();
        let client = req.extensions().get::<ClientAddr>().map(|c| c.0);
        *req.uri_mut() = self.upstream_uri(req.uri());
        *req.version_mut() = Version::HTTP_11; // whatever the client spoke, upstream is HTTP/1.1
        let headers = req.headers_mut();
        strip_hop_by_hop(headers);
        let host = headers
            .get(header::HOST)
            .cloned()
            .or_else(|| client_authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok()));
        match (self.upstream.rewrite_host, host) {
            (false, Some(host)) => {
                headers.insert(header::HOST, host.clone());
                if let Some(client) = client {
                    add_forwarded(headers, client, &host);
                }
            }
            (_, host) => {
                headers.remove(header::HOST); // the client sets it from the upstream URI
                if let (Some(client), Some(host)) = (client, host) {
                    add_forwarded(headers, client, &host);
                }
            }
        }
        append(headers, header::VIA, via(version));
    }
}

/// RFC 9110 §7.6.1: the fields a proxy must not forward, and those `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TE,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
    for name in ["keep-alive", "proxy-connection"] {
        headers.remove(name);
    }
}

fn via(version: Version) -> HeaderValue {
    HeaderValue::from_static(match version {
        Version::HTTP_10 => "1.0 tower-conditional",
        Version::HTTP_2 => "2 tower-conditional",
        _ => "1.1 tower-conditional",
    })
}

/// `X-Forwarded-For` and RFC 7239 `Forwarded`, appended to what earlier proxies sent.
fn add_forwarded(headers: &mut HeaderMap, client: SocketAddr, host: &HeaderValue) {
    let ip = client.ip();
    if let Ok(value) = HeaderValue::from_str(&ip.to_string()) {
        append(headers, HeaderName::from_static("x-forwarded-for"), value);
    }
    let node = match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let host = host.to_str().unwrap_or("");
    let forwarded = format!("for={node};proto=http;host=\"{host}\"");
    if let Ok(value) = HeaderValue::from_str(&forwarded) {
        append(headers, header::FORWARDED, value);
    }
}

/// Appends `value` to a comma-separated list field.
fn append(headers: &mut HeaderMap, name: HeaderName, value: HeaderValue) {
    let joined = headers
        .get(&name)
        .and_then(|old| old.to_str().ok())
        .and_then(|old| HeaderValue::from_str(&format!("{old}, {}", value.to_str().ok()?)).ok());
    headers.insert(name, joined.unwrap_or(value));
}

const BAD_GATEWAY: &str =
    "502 Bad Gateway: the upstream could not be reached or broke the connection.\n";
const GATEWAY_TIMEOUT: &str = "504 Gateway Timeout: the upstream did not answer in time.\n";

impl Service<Request<RequestBody>> for Forward {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<RequestBody>) -> Self::Future {
        self.prepare(&mut req);
        let version = req.version();
        let response = self.client.request(req);
        let (timeout, stats) = (self.upstream.response_timeout, self.stats.clone());
        Box::pin(async move {
            let res = match tokio::time::timeout(timeout, response).await {
                Ok(Ok(res)) => {
                    let mut res = res.map(Either::Left);
                    strip_hop_by_hop(res.headers_mut());
                    append(res.headers_mut(), header::VIA, via(version));
                    return Ok(res);
                }
                Ok(Err(err)) => {
                    tracing::warn!(error = ?err, "upstream error");
                    text(StatusCode::BAD_GATEWAY, BAD_GATEWAY)
                }
                Err(_) => {
                    tracing::warn!(?timeout, "upstream timed out");
                    text(StatusCode::GATEWAY_TIMEOUT, GATEWAY_TIMEOUT)
                }
            };
            stats.upstream_error();
            Ok(res.map(Either::Right))
        })
    }
}

pub fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}
