//! Writes on 1 and 2 threads, to distinct resources (they should scale: no global lock) and to
//! one hot resource (they serialize on its lock and must degrade gracefully); and the default
//! key's normalization alone, on a clean and on a dirty path.
//!
//! ```not_rust
//! cargo bench --bench scaling
//! ```
//!
//! Each thread drives its own current-thread runtime over a clone of one layered service (one
//! shared version table); the inner service answers at once. Criterion reports the time per
//! write across all threads: with perfect scaling, 2 threads on distinct keys take half the time
//! per write of 1 thread.

use std::{
    convert::Infallible,
    future::{ready, Ready},
    sync::{Arc, Barrier},
    time::{Duration, Instant},
};

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{Method, Request, Response};
use http_body_util::Full;
use tower::{service_fn, util::ServiceFn, Layer, Service};
use tower_conditional::{key::normalize_path, ConditionalLayer};

type BareService =
    ServiceFn<fn(Request<Full<Bytes>>) -> Ready<Result<Response<Full<Bytes>>, Infallible>>>;

fn bare() -> BareService {
    service_fn(|_req| ready(Ok(Response::new(Full::new(Bytes::from_static(b"{}"))))))
}

/// Runs `iters` writes split over `threads` threads, each writing `path(thread)`.
fn writes<S>(service: &S, threads: usize, iters: u64, path: fn(usize) -> String) -> Duration
where
    S: Service<Request<Full<Bytes>>> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
{
    let start = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|thread| {
            let (mut service, start) = (service.clone(), start.clone());
            let path = path(thread);
            let share = iters / threads as u64;
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                start.wait();
                runtime.block_on(async {
                    for _ in 0..share {
                        let req = Request::builder()
                            .method(Method::PUT)
                            .uri(path.as_str())
                            .body(Full::new(Bytes::from_static(b"{\"content\":\"y\"}")))
                            .unwrap();
                        std::future::poll_fn(|cx| service.poll_ready(cx))
                            .await
                            .unwrap();
                        black_box(service.call(req).await.unwrap());
                    }
                });
            })
        })
        .collect();
    start.wait();
    let began = Instant::now();
    for handle in handles {
        handle.join().unwrap();
    }
    began.elapsed()
}

fn scaling(c: &mut Criterion) {
    let layered = ConditionalLayer::new().layer(bare());
    let bare = bare();
    let mut group = c.benchmark_group("writes");
    for threads in [1, 2] {
        group.bench_with_input(
            BenchmarkId::new("bare_distinct", threads),
            &threads,
            |b, &t| b.iter_custom(|iters| writes(&bare, t, iters, |i| format!("/doc/{i}"))),
        );
        group.bench_with_input(
            BenchmarkId::new("layered_distinct", threads),
            &threads,
            |b, &t| b.iter_custom(|iters| writes(&layered, t, iters, |i| format!("/doc/{i}"))),
        );
        group.bench_with_input(
            BenchmarkId::new("layered_hot_key", threads),
            &threads,
            |b, &t| b.iter_custom(|iters| writes(&layered, t, iters, |_| "/hot".to_owned())),
        );
    }
    group.finish();
}

fn normalization(c: &mut Criterion) {
    let mut group = c.benchmark_group("normalize_path");
    group.bench_function("clean", |b| {
        b.iter(|| black_box(normalize_path(black_box("/api/storage/doc-17"))))
    });
    group.bench_function("dirty", |b| {
        b.iter(|| {
            black_box(normalize_path(black_box(
                "/api/./storage/%64oc-%2f/../doc-17",
            )))
        })
    });
    group.finish();
}

criterion_group!(benches, scaling, normalization);
criterion_main!(benches);
