//! A plain hyper 1 server using the layer through `ServiceBuilder` and hyper-util.
//!
//! ```not_rust
//! cargo run --example hyper
//! curl -i -X PUT -d 'hello' http://127.0.0.1:3001/notes/1
//! curl -i http://127.0.0.1:3001/notes/1
//! ```

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tower::{service_fn, ServiceBuilder};
use tower_conditional::ConditionalLayer;

type Docs = Arc<Mutex<HashMap<String, Bytes>>>;
type RequestBody = BoxBody<Bytes, hyper::Error>;

/// A key-value store over paths with no concurrency control of its own.
async fn store(docs: Docs, req: Request<RequestBody>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let (status, body) = match parts.method {
        Method::GET | Method::HEAD => match docs.lock().unwrap().get(&path) {
            Some(doc) => (StatusCode::OK, doc.clone()),
            None => (StatusCode::NOT_FOUND, Bytes::from_static(b"not found\n")),
        },
        Method::PUT | Method::POST => match body.collect().await {
            Ok(body) => {
                docs.lock().unwrap().insert(path, body.to_bytes());
                (StatusCode::OK, Bytes::from_static(b"saved\n"))
            }
            Err(_) => (
                StatusCode::BAD_REQUEST,
                Bytes::from_static(b"unreadable body\n"),
            ),
        },
        Method::DELETE => {
            docs.lock().unwrap().remove(&path);
            (StatusCode::NO_CONTENT, Bytes::new())
        }
        _ => (StatusCode::METHOD_NOT_ALLOWED, Bytes::new()),
    };
    let mut res = Response::new(Full::new(body));
    *res.status_mut() = status;
    Ok(res)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let docs = Docs::default();
    let service = ServiceBuilder::new()
        // The layer rebuilds write bodies it has read (`FromBytes`); hyper's `Incoming` is boxed.
        .map_request(|req: Request<Incoming>| req.map(RequestBody::new))
        .layer(ConditionalLayer::new())
        .service(service_fn(move |req| store(docs.clone(), req)));

    let listener = TcpListener::bind("127.0.0.1:3001").await?;
    println!("listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            if let Err(err) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("connection error: {err}");
            }
        });
    }
}
