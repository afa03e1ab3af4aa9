//! A benchmark reference, not a proxy to deploy: the least a hyper-util reverse proxy does per
//! request (no layer, no limits, no forwarding headers, panics on any upstream error), so
//! `bench/cpu.sh` and `bench/instructions.sh` can show what the proxy example adds to it.
//!
//! ```not_rust
//! cargo build --release --example bare_proxy
//! bash bench/instructions.sh ours=target/release/examples/proxy bare=target/release/examples/bare_proxy
//! ```
//!
//! Takes the proxy example's `--listen ADDR --upstream URL` and prints `listening on …` like it.

use std::convert::Infallible;

use http::{Request, Uri};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        let at = args.iter().position(|a| a == name);
        at.and_then(|at| args.get(at + 1)).cloned()
    };
    let listen = arg("--listen").unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let upstream: Uri = arg("--upstream")
        .expect("--upstream URL")
        .parse()
        .expect("an upstream URL");
    let listener = TcpListener::bind(&listen).await.expect("a free address");
    println!(
        "listening on http://{}",
        listener.local_addr().expect("bound")
    );
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<_, Incoming> = Client::builder(TokioExecutor::new()).build(connector);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (client, upstream) = (client.clone(), upstream.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let mut parts = upstream.clone().into_parts();
                parts.path_and_query = req.uri().path_and_query().cloned();
                *req.uri_mut() = Uri::from_parts(parts).expect("an upstream URI");
                let response = client.request(req);
                async move { Ok::<_, Infallible>(response.await.expect("an upstream answer")) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
