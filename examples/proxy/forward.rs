//! Forwarding to the upstream as a reverse proxy should (RFC 9110 §7.6): connection-specific
//! fields stripped both ways, `Via`, `Forwarded` and `X-Forwarded-For` added, `Host` kept or
//! rewritten, upstream connections bounded, and every failure answered with a short plain-text
//! status instead of a hang.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{
    header::{self, HeaderName},
    uri::PathAndQuery,
    HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, Version,
};
use http_body_util::{combinators::BoxBody, Either, Full};
use tower::Service;

use crate::{
    observe::Upstreamed,
    upstream::{Pool, PooledBody, UpstreamError},
};

pub type RequestBody = BoxBody<Bytes, crate::limits::BodyError>;
pub type ProxyBody = Either<PooledBody, Full<Bytes>>;

/// The client a request came from, set per connection: its address, and the forwarding fields
/// naming it, formatted once per connection rather than once per request.
#[derive(Debug, Clone)]
pub struct ClientAddr {
    /// The `X-Forwarded-For` element: the client's IP.
    forwarded_for: Option<HeaderValue>,
    /// The `Forwarded` element's start, `for=<node>;proto=http` (RFC 7239 §6: a v6 node quoted).
    forwarded: Arc<str>,
}

impl ClientAddr {
    pub fn new(peer: SocketAddr) -> Self {
        let ip = peer.ip();
        let node = match ip {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        Self {
            forwarded_for: HeaderValue::from_str(&ip.to_string()).ok(),
            forwarded: format!("for={node};proto=http").into(),
        }
    }
}

/// The `Forwarded` element's start for a request with no client address (RFC 7239 §6.3).
const UNKNOWN_CLIENT: &str = "for=unknown;proto=http";

/// How to reach the upstream.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub uri: Uri,
    pub connect_timeout: Duration,
    /// How long the upstream may take to send a response head.
    pub response_timeout: Duration,
    /// Send the upstream's authority as `Host` instead of the client's.
    pub rewrite_host: bool,
    /// At most this many connections to the upstream, busy or idle.
    pub max_connections: usize,
    /// At most this many of them idle in the pool.
    pub max_idle: usize,
    /// How long a request waits for a connection when all are busy (then 503).
    pub queue_timeout: Duration,
    /// Put the upstream's time on each response ([`Upstreamed`]), for the request log.
    pub timed: bool,
}

/// Forwards each request to the upstream over kept-alive connections ([`Pool`]).
#[derive(Clone)]
pub struct Forward {
    // One pointer: the layer clones its inner service for every request.
    inner: Arc<ForwardInner>,
}

struct ForwardInner {
    pool: Pool,
    upstream: Upstream,
    /// `Host` for the upstream: its host, and its port unless 80.
    upstream_host: HeaderValue,
    /// The upstream URI's path without its trailing `/`, put before every request's path.
    prefix: String,
    /// Counts the forwarded requests the upstream did not answer.
    errors: metrics::Counter,
}

impl Forward {
    pub fn new(upstream: Upstream, errors: metrics::Counter) -> Result<Self, String> {
        if upstream.uri.scheme_str() != Some("http") || upstream.uri.authority().is_none() {
            return Err(format!(
                "--upstream must be an http://host:port URL, not {}",
                upstream.uri
            ));
        }
        let uri = &upstream.uri;
        let host = uri.host().unwrap_or_default();
        let host = match uri.port_u16() {
            Some(port) if port != 80 => format!("{host}:{port}"),
            _ => host.to_owned(),
        };
        let upstream_host = HeaderValue::from_str(&host).map_err(|err| err.to_string())?;
        let target = Uri::builder()
            .scheme("http")
            .authority(host)
            .path_and_query("/")
            .build()
            .map_err(|err| err.to_string())?;
        let pool = Pool::new(
            target,
            upstream.connect_timeout,
            upstream.max_connections,
            upstream.max_idle,
            upstream.queue_timeout,
        );
        let prefix = upstream.uri.path().trim_end_matches('/').to_owned();
        Ok(Self {
            inner: Arc::new(ForwardInner {
                pool,
                upstream,
                upstream_host,
                prefix,
                errors,
            }),
        })
    }
}

impl ForwardInner {
    /// The upstream's path as a prefix, then the request's path and query: origin-form, as
    /// sent on the upstream connection.
    fn upstream_uri(&self, uri: &Uri) -> Uri {
        let path = match uri.path_and_query() {
            // Shared bytes, not a copy: most upstreams have no path of their own.
            Some(path) if self.prefix.is_empty() => path.clone(),
            path => {
                let path = path.map_or("/", PathAndQuery::as_str);
                format!("{}{path}", self.prefix)
                    .parse()
                    .expect("a valid path and query prefixed by a valid path")
            }
        };
        Uri::from(path)
    }

    /// `req` is origin-form, its `Host` checked (`target::admit`).
    fn prepare(&self, req: &mut Request<RequestBody>) {
        let version = req.version();
        let client = req.extensions_mut().remove::<ClientAddr>();
        *req.uri_mut() = self.upstream_uri(req.uri());
        *req.version_mut() = Version::HTTP_11; // whatever the client spoke, upstream is HTTP/1.1
        let headers = req.headers_mut();
        // Taken before anything is stripped (`strip_hop_by_hop` keeps it anyway).
        let host = headers.get(header::HOST).cloned();
        strip_hop_by_hop(headers);
        // Only this proxy says what the client's host, scheme, port and address were.
        remove_where(headers, |name| {
            matches!(
                name.as_str(),
                "x-forwarded-host" | "x-forwarded-proto" | "x-forwarded-port" | "x-real-ip"
            )
        });
        match (&host, self.upstream.rewrite_host) {
            (Some(host), false) => {
                headers.insert(header::HOST, host.clone());
            }
            _ => {
                headers.insert(header::HOST, self.upstream_host.clone());
            }
        }
        // Always, Host or not: otherwise what the client wrote would be the nearest element.
        add_forwarded(headers, client, host.as_ref());
        append(headers, header::VIA, via(version));
    }
}

/// RFC 9110 §7.6.1: the fields a proxy must not forward, and those `Connection` names, except
/// the ones the proxy's forwarding information is built on (`Connection: host` must not make
/// the proxy forget the host, nor `Connection: forwarded` drop the earlier proxies' elements).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Usually empty: no `Connection`, or only `keep-alive`, itself hop-by-hop.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !matches!(name.as_str(), "host" | "forwarded" | "x-forwarded-for"))
        .collect();
    remove_where(headers, |name| is_hop_by_hop(name) || named.contains(name));
}

/// Removes every field whose name `unwanted` picks. One pass over the names present, then a
/// removal for each picked: removing each candidate name instead (hashing it) cost a forwarded
/// request ~3k instructions more (`bench/instructions.sh`).
fn remove_where(headers: &mut HeaderMap, unwanted: impl Fn(&HeaderName) -> bool) {
    let picked: Vec<HeaderName> = headers.keys().filter(|n| unwanted(n)).cloned().collect();
    for name in picked {
        headers.remove(name);
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    // One match on the name's text: cheaper than comparing it with each `HeaderName`.
    matches!(
        name.as_str(),
        "connection"
            | "te"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "keep-alive"
            | "proxy-connection"
    )
}

fn via(version: Version) -> HeaderValue {
    HeaderValue::from_static(match version {
        Version::HTTP_10 => "1.0 tower-conditional",
        Version::HTTP_2 => "2 tower-conditional",
        _ => "1.1 tower-conditional",
    })
}

/// `X-Forwarded-For` and RFC 7239 `Forwarded`, appended to what earlier proxies sent: an
/// element `for=<client>;proto=http`, with `;host=` when the request named one. A `Forwarded`
/// that does not parse as a list of elements (an open quote could swallow ours) is replaced.
fn add_forwarded(headers: &mut HeaderMap, client: Option<ClientAddr>, host: Option<&HeaderValue>) {
    if let Some(value) = client.as_ref().and_then(|c| c.forwarded_for.clone()) {
        append(headers, HeaderName::from_static("x-forwarded-for"), value);
    }
    let element = client.as_ref().map_or(UNKNOWN_CLIENT, |c| &c.forwarded);
    let mut forwarded = String::with_capacity(element.len() + 64);
    forwarded.push_str(element);
    if let Some(host) = host {
        // RFC 7239 §4: a quoted-string, so nothing in `Host` can end the element or start another.
        forwarded.push_str(";host=");
        forwarded.push_str(&quoted_string(host.to_str().unwrap_or("")));
    }
    let earlier = joined(headers, &header::FORWARDED);
    if !earlier.as_deref().is_none_or(is_forwarded_list) {
        tracing::debug!(forwarded = ?earlier, "replacing a Forwarded that is not a list of elements");
        headers.remove(header::FORWARDED);
    }
    if let Ok(value) = HeaderValue::from_str(&forwarded) {
        append(headers, header::FORWARDED, value);
    }
}

/// Whether `value` is an RFC 7239 §4 `Forwarded` list: elements separated by commas, each of
/// `token=value` pairs separated by semicolons, each value a token or a quoted-string (optional
/// whitespace around the separators tolerated).
fn is_forwarded_list(value: &str) -> bool {
    let bytes = value.as_bytes();
    let mut i = 0;
    let skip_ows = |i: &mut usize| {
        while bytes.get(*i).is_some_and(|b| matches!(b, b' ' | b'\t')) {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while bytes.get(*i).copied().is_some_and(is_tchar) {
            *i += 1;
        }
        *i > start
    };
    loop {
        skip_ows(&mut i);
        // forwarded-element = [ forwarded-pair ] *( ";" [ forwarded-pair ] )
        loop {
            if bytes.get(i).copied().is_some_and(is_tchar) {
                token(&mut i);
                if bytes.get(i) != Some(&b'=') {
                    return false;
                }
                i += 1;
                if bytes.get(i) == Some(&b'"') {
                    i += 1;
                    loop {
                        match bytes.get(i) {
                            None => return false,
                            Some(b'"') => break,
                            Some(b'\\') if bytes.get(i + 1).is_some_and(|b| !is_ctl(*b)) => i += 2,
                            Some(b) if !is_ctl(*b) || *b == b'\t' => i += 1,
                            Some(_) => return false,
                        }
                    }
                    i += 1;
                } else if !token(&mut i) {
                    return false;
                }
            }
            skip_ows(&mut i);
            if bytes.get(i) != Some(&b';') {
                break;
            }
            i += 1;
            skip_ows(&mut i);
        }
        match bytes.get(i) {
            None => return true,
            Some(b',') => i += 1,
            Some(_) => return false,
        }
    }
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_ctl(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

/// Every value of a list field, joined with `, ` (empty and non-text ones left out).
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

/// RFC 9110 §5.6.4 `quoted-string`: `"` and `\\` escaped, anything outside `qdtext` dropped.
fn quoted_string(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value
        .chars()
        .filter(|c| *c == '\t' || (' '..='~').contains(c))
    {
        if matches!(c, '"' | '\\') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// Appends `value` to a comma-separated list field, as one line after all earlier ones.
fn append(headers: &mut HeaderMap, name: HeaderName, value: HeaderValue) {
    let joined = joined(headers, &name)
        .and_then(|old| HeaderValue::from_str(&format!("{old}, {}", value.to_str().ok()?)).ok());
    headers.insert(name, joined.unwrap_or(value));
}

const BAD_GATEWAY: &str =
    "502 Bad Gateway: the upstream could not be reached or broke the connection.\n";
const GATEWAY_TIMEOUT: &str = "504 Gateway Timeout: the upstream did not answer in time.\n";
const UPSTREAM_BUSY: &str =
    "503 Service Unavailable: every connection to the upstream is busy. Retry shortly.\n";

impl Service<Request<RequestBody>> for Forward {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<RequestBody>) -> Self::Future {
        let forward = self.inner.clone();
        forward.prepare(&mut req);
        let timeout = forward.upstream.response_timeout;
        let started = forward.upstream.timed.then(Instant::now);
        Box::pin(async move {
            let res = match tokio::time::timeout(timeout, forward.pool.send(req)).await {
                Ok(Ok(res)) => {
                    let mut res = res.map(Either::Left);
                    let version = res.version();
                    strip_hop_by_hop(res.headers_mut());
                    append(res.headers_mut(), header::VIA, via(version));
                    if let Some(started) = started {
                        res.extensions_mut().insert(Upstreamed(started.elapsed()));
                    }
                    return Ok(res);
                }
                Ok(Err(UpstreamError::Busy)) => {
                    tracing::debug!("no upstream connection free in time");
                    let mut res = text(StatusCode::SERVICE_UNAVAILABLE, UPSTREAM_BUSY);
                    res.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    res
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
            forward.errors.increment(1);
            let mut res = res.map(Either::Right);
            if let Some(started) = started {
                res.extensions_mut().insert(Upstreamed(started.elapsed()));
            }
            Ok(res)
        })
    }
}

/// An answer the proxy gives itself instead of forwarding: a status, a short plain-text body
/// and a few more headers (`Allow`, `Retry-After`, `Connection`).
#[derive(Debug)]
pub struct OwnAnswer {
    status: StatusCode,
    body: &'static str,
    headers: Vec<(HeaderName, &'static str)>,
}

impl OwnAnswer {
    pub const fn new(status: StatusCode, body: &'static str) -> Self {
        Self {
            status,
            body,
            headers: Vec::new(),
        }
    }

    pub fn with(mut self, name: HeaderName, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut res = text(self.status, self.body);
        for (name, value) in self.headers {
            res.headers_mut()
                .insert(name, HeaderValue::from_static(value));
        }
        res
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
