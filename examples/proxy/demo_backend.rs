//! The demo backend: the design note's storage with no concurrency control at all.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;

use crate::forward::text;

/// GET returns a path's document, POST/PUT/PATCH replace it, DELETE removes it, and two
/// concurrent saves overwrite each other. Behind the proxy, no update is lost anyway.
type Docs = Arc<Mutex<HashMap<String, Bytes>>>;

pub async fn start() -> std::io::Result<SocketAddr> {
    let docs: Docs = Arc::default();
    docs.lock().unwrap().insert(
        "/api/storage".to_owned(),
        Bytes::from_static(b"{\"content\":\"hello\"}\n"),
    );
    // The document the demo page's two editors share.
    docs.lock().unwrap().insert(
        "/api/demo".to_owned(),
        Bytes::from_static(b"{\"items\":[]}"),
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

async fn handle(docs: Docs, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
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
