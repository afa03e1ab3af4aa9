//! The Redis store's cost per request, against the in-memory store, measured in one run.
//!
//! ```not_rust
//! cargo bench --features redis --bench redis_store
//! ```
//!
//! Starts its own redis-server (Debian's package) on a free loopback port, then sends the same
//! sequential requests through the layer on each store, over a bare inner service that answers
//! at once: reads (one script call each) and writes (two: the lease with the version, then the
//! bump with the release).

use std::{
    convert::Infallible,
    future::ready,
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use tower::{service_fn, Layer, Service};
use tower_conditional::{store::RedisStore, ConditionalLayer};

const ROUNDS: usize = 3;
const REQUESTS: u32 = 4000;

fn main() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut redis = Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-server on PATH");
    let mut lines = BufReader::new(redis.stdout.take().unwrap()).lines();
    while let Some(Ok(line)) = lines.next() {
        if line.contains("Ready to accept connections") {
            break;
        }
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let bare = service_fn(|_req: Request<Full<Bytes>>| {
            ready(Ok::<_, Infallible>(Response::new(Full::new(
                Bytes::from_static(b"{}"),
            ))))
        });
        let memory = ConditionalLayer::new().layer(bare);
        let redis_store = RedisStore::open(&format!("redis://127.0.0.1:{port}/")).unwrap();
        let shared = ConditionalLayer::new().store(redis_store).layer(bare);
        println!(
            "{:<8}{:>14}{:>14}{:>8}",
            "", "memory µs", "redis µs", "ratio"
        );
        for method in [Method::GET, Method::PUT] {
            let (mut m, mut r) = (Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                m.push(per_request(&mut memory.clone(), method.clone()).await);
                r.push(per_request(&mut shared.clone(), method.clone()).await);
            }
            m.sort();
            r.sort();
            let (m, r) = (m[ROUNDS / 2], r[ROUNDS / 2]);
            let micros = |d: Duration| d.as_secs_f64() * 1e6;
            println!(
                "{:<8}{:>14.2}{:>14.2}{:>8.1}",
                method.as_str(),
                micros(m),
                micros(r),
                micros(r) / micros(m)
            );
        }
    });
    redis.kill().unwrap();
    let _ = redis.wait();
}

/// The median-free mean time of `REQUESTS` sequential requests of `method` to one resource.
async fn per_request<S>(service: &mut S, method: Method) -> Duration
where
    S: Service<Request<Full<Bytes>>>,
    S::Error: std::fmt::Debug,
{
    let started = Instant::now();
    for _ in 0..REQUESTS {
        let body = if method == Method::PUT {
            Full::new(Bytes::from_static(b"{\"c\":1}"))
        } else {
            Full::default()
        };
        let req = Request::builder()
            .method(method.clone())
            .uri("/doc")
            .body(body)
            .unwrap();
        std::future::poll_fn(|cx| service.poll_ready(cx))
            .await
            .unwrap();
        let _ = service.call(req).await.unwrap();
    }
    started.elapsed() / REQUESTS
}
