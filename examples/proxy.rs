//! A reverse proxy that puts optimistic locking in front of any HTTP storage backend.
//!
//! ```not_rust
//! cargo run --release --example proxy                      # with an embedded demo backend
//! cargo run --release --example proxy -- --upstream http://127.0.0.1:3000
//! ```
//!
//! Every request goes through [`ConditionalLayer`], then to the upstream over pooled keep-alive
//! connections. Without `--upstream`, an in-memory storage backend with no concurrency control
//! of its own is started on another loopback port, so the proxy alone shows the whole mechanism:
//!
//! ```not_rust
//! curl -i http://127.0.0.1:8080/api/storage
//! curl -i -X POST -H 'If-Unmodified-Since: <Last-Modified from above>' -d '{"content":"new"}' \
//!      http://127.0.0.1:8080/api/storage
//! ```
#![deny(warnings)]

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use clap::Parser;
use http::{header, uri::PathAndQuery, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{combinators::BoxBody, BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tower::{Service, ServiceBuilder};
use tower_conditional::ConditionalLayer;

/// Optimistic locking (304/412 from Last-Modified) in front of an HTTP storage backend.
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
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let cli = Cli::parse();
    let upstream = match cli.upstream {
        Some(upstream) => upstream,
        None => {
            let addr = demo_backend::start().await?;
            println!("demo backend on http://{addr}");
            format!("http://{addr}").parse()?
        }
    };
    let forward = Forward::new(upstream)?;
    let service = ServiceBuilder::new()
        // The layer needs a request body with a `Default` (for its existence probes).
        .map_request(|req: Request<Incoming>| req.map(RequestBody::new))
        .layer(ConditionalLayer::new().require_precondition(cli.require_precondition))
        .service(forward);

    let listener = TcpListener::bind(cli.listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(err) => {
                eprintln!("accept error: {err}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type RequestBody = BoxBody<Bytes, hyper::Error>;
type ProxyBody = Either<Incoming, Full<Bytes>>;

/// Forwards each request to the upstream; an upstream that cannot be reached gives 502.
#[derive(Clone)]
struct Forward {
    client: Client<HttpConnector, RequestBody>,
    upstream: Uri,
}

impl Forward {
    fn new(upstream: Uri) -> Result<Self, String> {
        if upstream.scheme_str() != Some("http") || upstream.authority().is_none() {
            return Err(format!(
                "--upstream must be an http://host:port URL, not {upstream}"
            ));
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self { client, upstream })
    }

    /// The upstream's scheme and authority, its path as a prefix, then the request's path and query.
    fn upstream_uri(&self, uri: &Uri) -> Uri {
        let prefix = self.upstream.path().trim_end_matches('/');
        let path = uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let mut parts = self.upstream.clone().into_parts();
        parts.path_and_query = Some(
            format!("{prefix}{path}")
                .parse()
                .expect("a valid path and query prefixed by a valid path"),
        );
        Uri::from_parts(parts).expect("upstream scheme and authority are set")
    }
}

/// RFC 9110 §7.6.1: connection-specific fields are not forwarded.
const HOP_BY_HOP: [header::HeaderName; 5] = [
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

impl Service<Request<RequestBody>> for Forward {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<RequestBody>) -> Self::Future {
        *req.uri_mut() = self.upstream_uri(req.uri());
        for name in &HOP_BY_HOP {
            req.headers_mut().remove(name);
        }
        req.headers_mut().remove("keep-alive");
        let response = self.client.request(req);
        Box::pin(async move {
            Ok(match response.await {
                Ok(res) => res.map(Either::Left),
                Err(err) => {
                    eprintln!("upstream error: {err}");
                    text(
                        StatusCode::BAD_GATEWAY,
                        "502 Bad Gateway: the upstream could not be reached.\n",
                    )
                    .map(Either::Right)
                }
            })
        })
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}

/// The design note's storage, with no concurrency control at all: GET returns a path's document,
/// POST/PUT/PATCH replace it, DELETE removes it. Behind the proxy, no update is lost anyway.
mod demo_backend {
    use super::*;

    type Docs = Arc<Mutex<HashMap<String, Bytes>>>;

    pub(super) async fn start() -> std::io::Result<SocketAddr> {
        let docs: Docs = Arc::default();
        docs.lock().unwrap().insert(
            "/api/storage".to_owned(),
            Bytes::from_static(b"{\"content\":\"hello\"}\n"),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let docs = docs.clone();
                let service = hyper::service::service_fn(move |req| handle(docs.clone(), req));
                tokio::spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(addr)
    }

    async fn handle(
        docs: Docs,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, hyper::Error> {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_owned();
        Ok(match parts.method {
            Method::GET | Method::HEAD => match docs.lock().unwrap().get(&path) {
                Some(doc) => {
                    let mut res = Response::new(Full::new(doc.clone()));
                    res.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    res
                }
                None => text(StatusCode::NOT_FOUND, "no document at this path\n"),
            },
            Method::POST | Method::PUT | Method::PATCH => {
                let body = body.collect().await?.to_bytes();
                docs.lock().unwrap().insert(path, body);
                text(StatusCode::OK, "saved\n")
            }
            Method::DELETE => {
                docs.lock().unwrap().remove(&path);
                text(StatusCode::OK, "deleted\n")
            }
            _ => text(
                StatusCode::METHOD_NOT_ALLOWED,
                "GET, HEAD, POST, PUT, PATCH or DELETE\n",
            ),
        })
    }
}
