//! Test support: a naive storage backend with hooks, real loopback servers and clients.
#![allow(dead_code)]

pub mod proxy;
#[cfg(feature = "redis")]
pub mod redis_cluster;
#[cfg(feature = "redis")]
pub mod redis_server;

use std::{
    collections::HashMap,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{
    net::TcpListener,
    sync::{mpsc, Semaphore},
};
use tower::{Service, ServiceExt};
use tower_conditional::clock::ManualClock;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A second well after the epoch, so dates are plausible.
pub fn start_of_test_time() -> std::time::SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_750_000_000)
}

pub fn manual_clock() -> ManualClock {
    ManualClock::new(start_of_test_time())
}

pub const SECOND: Duration = Duration::from_secs(1);

/// A fresh backend behind a fresh layer on a manual clock at the start of test time.
pub fn layered() -> (
    ManualClock,
    Backend,
    tower_conditional::Conditional<Backend>,
) {
    let clock = manual_clock();
    let backend = Backend::default();
    let layer = tower_conditional::ConditionalLayer::new()
        .store(tower_conditional::store::MemoryStore::new().clock(clock.clone()));
    let service = tower::Layer::layer(&layer, backend.clone());
    (clock, backend, service)
}

/// Request headers that steer the backend in one request.
pub const HOLD: &str = "x-test-hold"; // announce arrival, then wait for `Backend::release`
pub const STATUS: &str = "x-test-status"; // answer with this status and store nothing
pub const FAIL: &str = "x-test-fail"; // return a service error
/// The body of the backend's own 412, given when a conditional header reaches it.
pub const BACKEND_PRECONDITION: &str = "the backend evaluated a conditional header";
pub const NO_HEAD: &str = "x-test-no-head"; // answer HEAD with 405, as some backends do
pub const ECHO: &str = "x-test-echo"; // answer with the request's headers, one "name: value" a line
pub const HOP: &str = "x-test-hop"; // add connection-specific fields to the response
pub const PANIC: &str = "x-test-panic"; // panic in the service's future
pub const SAW_RANGE: &str = "x-test-saw-range"; // set on a GET response when `Range` reached the backend

/// A storage backend with no concurrency control of its own: GET returns a path's document,
/// POST/PUT/PATCH store the request body (reading the old one first and yielding between the
/// read and the write, as a naive read-modify-write does), DELETE removes it.
#[derive(Clone, Default)]
pub struct Backend {
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    docs: Mutex<HashMap<String, Bytes>>,
    hits: AtomicUsize,
    methods: Mutex<Vec<Method>>,
    gate: Gate,
}

struct Gate {
    open: Semaphore,
    arrived_tx: mpsc::UnboundedSender<()>,
    arrived_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>,
}

impl Default for Gate {
    fn default() -> Self {
        let (arrived_tx, arrived_rx) = mpsc::unbounded_channel();
        Self {
            open: Semaphore::new(0),
            arrived_tx,
            arrived_rx: tokio::sync::Mutex::new(arrived_rx),
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl Backend {
    /// How many requests reached the backend.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// The methods of the requests that reached the backend, oldest first.
    pub fn methods(&self) -> Vec<Method> {
        self.state.methods.lock().unwrap().clone()
    }

    pub fn doc(&self, path: &str) -> Option<Bytes> {
        self.state.docs.lock().unwrap().get(path).cloned()
    }

    /// Waits until a request sent with `x-test-hold` has reached the backend.
    pub async fn arrived(&self) {
        self.state.gate.arrived_rx.lock().await.recv().await;
    }

    /// Lets one held request go on.
    pub fn release(&self) {
        self.state.gate.open.add_permits(1);
    }

    /// The backend as a tower service (it is one itself).
    pub fn service(&self) -> Backend {
        self.clone()
    }

    async fn handle<B>(self, req: Request<B>) -> Result<Response<Full<Bytes>>, io::Error>
    where
        B: Body<Data = Bytes>,
        B::Error: std::fmt::Debug,
    {
        let state = &self.state;
        state.hits.fetch_add(1, Ordering::SeqCst);
        state.methods.lock().unwrap().push(req.method().clone());
        let (parts, body) = req.into_parts();
        if parts.headers.contains_key(HOLD) {
            state.gate.arrived_tx.send(()).unwrap();
            state.gate.open.acquire().await.unwrap().forget();
        }
        if parts.headers.contains_key(FAIL) {
            return Err(io::Error::other("backend failed"));
        }
        if parts.headers.contains_key(PANIC) {
            panic!("the backend panicked, as asked");
        }
        // Like nginx, a backend that evaluates preconditions against its own validators, which
        // never match the layer's: the layer must not forward the conditions it evaluated.
        let conditional = [
            header::IF_MATCH,
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::IF_UNMODIFIED_SINCE,
            header::IF_RANGE,
        ];
        let tracked_method = matches!(
            parts.method,
            Method::GET
                | Method::HEAD
                | Method::POST
                | Method::PUT
                | Method::PATCH
                | Method::DELETE
        );
        if tracked_method
            && conditional
                .iter()
                .any(|name| parts.headers.contains_key(name))
        {
            return Ok(reply(StatusCode::PRECONDITION_FAILED, BACKEND_PRECONDITION));
        }
        if parts.method == Method::HEAD && parts.headers.contains_key(NO_HEAD) {
            return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, "no HEAD here"));
        }
        if parts.headers.contains_key(ECHO) {
            let mut lines = String::new();
            for (name, value) in &parts.headers {
                lines.push_str(&format!(
                    "{name}: {}\n",
                    String::from_utf8_lossy(value.as_bytes())
                ));
            }
            return Ok(Response::new(Full::new(Bytes::from(lines))));
        }
        if parts.headers.contains_key(HOP) {
            let mut res = reply(StatusCode::OK, "hop");
            let headers = res.headers_mut();
            headers.insert(
                header::CONNECTION,
                HeaderValue::from_static("x-resp-private"),
            );
            headers.insert("x-resp-private", HeaderValue::from_static("1"));
            headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
            return Ok(res);
        }
        if let Some(status) = parts.headers.get(STATUS) {
            let status = StatusCode::from_bytes(status.as_bytes()).unwrap();
            return Ok(reply(status, "forced by the test"));
        }
        let path = parts.uri.path().to_owned();
        let body = body.collect().await.expect("request body").to_bytes();
        let mut res = match parts.method {
            Method::GET | Method::HEAD => match state.docs.lock().unwrap().get(&path) {
                Some(doc) => {
                    let mut res = Response::new(Full::new(doc.clone()));
                    let headers = res.headers_mut();
                    headers.insert(
                        header::CACHE_CONTROL,
                        HeaderValue::from_static("max-age=60"),
                    );
                    headers.insert(header::ETAG, HeaderValue::from_static("\"backend-tag\""));
                    if parts.headers.contains_key(header::RANGE) {
                        headers.insert(SAW_RANGE, HeaderValue::from_static("yes"));
                    }
                    res
                }
                None => reply(StatusCode::NOT_FOUND, "no such document"),
            },
            Method::POST | Method::PUT | Method::PATCH => {
                let old = state.docs.lock().unwrap().get(&path).cloned();
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                drop(old);
                state.docs.lock().unwrap().insert(path, body.clone());
                Response::new(Full::new(body))
            }
            Method::DELETE => {
                state.docs.lock().unwrap().remove(&path);
                reply(StatusCode::NO_CONTENT, "")
            }
            _ => reply(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        };
        // A backend's own dates must not leak through the layer's stamps.
        if res.status().is_success() {
            res.headers_mut().insert(
                header::LAST_MODIFIED,
                HeaderValue::from_static("Mon, 01 Jan 2001 00:00:00 GMT"),
            );
        }
        Ok(res)
    }
}

impl<B> Service<Request<B>> for Backend
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Debug,
{
    type Response = Response<Full<Bytes>>;
    type Error = io::Error;
    type Future = BoxFuture<Result<Response<Full<Bytes>>, io::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), io::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        Box::pin(self.clone().handle(req))
    }
}

fn reply(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *res.status_mut() = status;
    res
}

/// What a test looks at in a response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: HeaderName) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn last_modified(&self) -> Option<&str> {
        self.header(header::LAST_MODIFIED)
    }

    pub fn etag(&self) -> Option<&str> {
        self.header(header::ETAG)
    }

    /// The `ETag`, which the reply must have.
    pub fn tag(&self) -> String {
        self.etag().expect("an ETag").to_owned()
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    /// RFC 9110 §8.8.2.1: no `Last-Modified` later than the `Date` it travels with.
    pub fn assert_dates_truthful(&self) {
        if let Some(lm) = self.last_modified() {
            let date = self
                .header(header::DATE)
                .expect("Date beside Last-Modified");
            let lm = httpdate::parse_http_date(lm).unwrap();
            let date = httpdate::parse_http_date(date).unwrap();
            assert!(lm <= date, "Last-Modified {lm:?} after Date {date:?}");
        }
    }

    pub async fn from_response<B>(res: Response<B>) -> Self
    where
        B: Body,
        B::Error: std::fmt::Debug,
    {
        let (parts, body) = res.into_parts();
        let body = body.collect().await.expect("response body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}

/// Builds a request with optional headers and body.
pub fn request(
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

/// Drives one request through a service in-process.
pub async fn call<S, B>(service: &mut S, req: Request<Full<Bytes>>) -> Reply
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body,
    B::Error: std::fmt::Debug,
{
    let res = service.ready().await.unwrap().call(req).await.unwrap();
    Reply::from_response(res).await
}

/// The request body `serve` hands to its service: hyper's, boxed, since the layer needs a
/// body type it can rebuild from bytes (`FromBytes`).
pub type ServedBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

/// Serves `service` on 127.0.0.1 with a port the OS picks, until the test's runtime ends.
pub async fn serve<S, B>(service: S) -> SocketAddr
where
    S: Service<Request<ServedBody>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_on(listener, service)
}

/// Serves `service` on `listener` until the test's runtime ends.
pub fn serve_on<S, B>(listener: TcpListener, service: S) -> SocketAddr
where
    S: Service<Request<ServedBody>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = service
                .clone()
                .map_request(|req: Request<Incoming>| req.map(ServedBody::new));
            let service = TowerToHyperService::new(service);
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// An HTTP client for one server on loopback.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

impl HttpClient {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
            base: format!("http://{addr}"),
        }
    }

    /// A client that speaks HTTP/2 with prior knowledge (h2c).
    pub fn http2(addr: SocketAddr) -> Self {
        Self {
            client: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
            base: format!("http://{addr}"),
        }
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        let req = request(method, &format!("{}{path}", self.base), headers, body);
        let res = self
            .client
            .request(req)
            .await
            .expect("request to loopback server");
        Reply::from_response(res).await
    }

    /// A client's read-modify-write loop on `path`, a number: reads it, then writes it plus one
    /// with `If-Match`, re-reading after each `412`, until `increments` writes succeeded (at most
    /// 10,000 tries); panics on any other answer. Returns the writes that succeeded.
    pub async fn increment(&self, path: &str, increments: usize) -> usize {
        let read = self.send(Method::GET, path, &[], "").await;
        let (mut value, mut held): (usize, String) = (read.text().parse().unwrap(), read.tag());
        let mut done = 0;
        for _ in 0..10_000 {
            if done == increments {
                return done;
            }
            let next = (value + 1).to_string();
            let save = self
                .send(Method::PUT, path, &[("if-match", &held)], &next)
                .await;
            match save.status {
                StatusCode::OK => {
                    done += 1;
                    value += 1;
                    held = save.tag();
                }
                StatusCode::PRECONDITION_FAILED => {
                    let read = self.send(Method::GET, path, &[], "").await;
                    (value, held) = (read.text().parse().unwrap(), read.tag());
                }
                other => panic!("unexpected {other} on {path}: {}", save.text()),
            }
        }
        panic!("a client made no progress on {path}");
    }

    /// Sends until the answer is not a 503 (a shared store reconnecting or failing over, a lease
    /// expiring), at most 200 times, 50 ms apart.
    pub async fn send_through_503s(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        for _ in 0..200 {
            let reply = self.send(method.clone(), path, headers, body).await;
            if reply.status != StatusCode::SERVICE_UNAVAILABLE {
                return reply;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("still 503 after 200 tries");
    }
}

/// The HTTP-date `secs` seconds after the start of test time.
pub fn date_at(secs: u64) -> String {
    httpdate::fmt_http_date(start_of_test_time() + Duration::from_secs(secs))
}

/// Polls `future` once: whether it finished, without waiting for it.
pub async fn poll_once<F: Future + Unpin>(future: &mut F) -> std::task::Poll<F::Output> {
    std::future::poll_fn(|cx| std::task::Poll::Ready(Pin::new(&mut *future).poll(cx))).await
}
