//! The layer's added cost per request against the bare inner service, in-process.
//!
//! ```not_rust
//! cargo bench --bench overhead
//! cargo bench --bench overhead --features metrics   # with a Prometheus recorder installed
//! bash bench/metrics_overhead.sh                    # the 304 path, feature off and on, alternated
//! ```
//!
//! The inner service answers at once. Each request is driven by `block_on` on a current-thread
//! tokio runtime, for the bare service and the layered one alike, so the difference between
//! the two is the layer's own work (for a write: reading the body, the lock, and the task the
//! forwarded write runs in).

use std::{
    convert::Infallible,
    future::{ready, Ready},
    time::{Duration, UNIX_EPOCH},
};

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{header, Method, Request, Response};
use http_body_util::Full;
use tokio::runtime::Runtime;
use tower::{service_fn, util::ServiceFn, Layer, Service};
use tower_conditional::store::MemoryStore;
use tower_conditional::{clock::ManualClock, ConditionalLayer};

const PATH: &str = "/api/storage";

fn bare() -> BareService {
    service_fn(|_req| {
        let body = Full::new(Bytes::from_static(b"{\"content\":\"x\"}"));
        ready(Ok(Response::new(body)))
    })
}

/// Drives one call to its end on `runtime`.
fn call_now<S: Service<Request<Full<Bytes>>>>(
    runtime: &Runtime,
    service: &mut S,
    req: Request<Full<Bytes>>,
) -> S::Response
where
    S::Error: std::fmt::Debug,
{
    runtime.block_on(async {
        std::future::poll_fn(|cx| service.poll_ready(cx))
            .await
            .unwrap();
        service.call(req).await.unwrap()
    })
}

/// A conditional header and its value.
type Condition<'a> = Option<(header::HeaderName, &'a str)>;

struct Case<'a> {
    name: &'a str,
    method: Method,
    condition: Condition<'a>,
    status: u16,
}

type BareService =
    ServiceFn<fn(Request<Full<Bytes>>) -> Ready<Result<Response<Full<Bytes>>, Infallible>>>;

fn request(method: Method, condition: Condition<'_>) -> Request<Full<Bytes>> {
    let body = match method {
        Method::POST => Full::new(Bytes::from_static(b"{\"content\":\"y\"}")),
        _ => Full::default(),
    };
    let mut req = Request::builder().method(method).uri(PATH);
    if let Some((name, value)) = condition {
        req = req.header(name, value);
    }
    req.body(body).unwrap()
}

/// With the `metrics` feature, the layers record into a Prometheus recorder, as in the proxy
/// (installed before any layer is made: they register their handles when made).
fn install_recorder() {
    #[cfg(feature = "metrics")]
    {
        static INSTALLED: std::sync::Once = std::sync::Once::new();
        INSTALLED.call_once(|| {
            let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .expect("the only recorder");
            // Drains histograms, as a scraped proxy's would be.
            std::thread::spawn(move || loop {
                std::thread::sleep(Duration::from_secs(1));
                handle.run_upkeep();
            });
        });
    }
}

fn overhead(c: &mut Criterion) {
    install_recorder();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let runtime = &runtime;
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_750_000_000));
    let mut layered = ConditionalLayer::new()
        .store(MemoryStore::new().clock(clock.clone()))
        .layer(bare());
    let mut bare = bare();
    clock.advance(Duration::from_secs(1));
    let saved = call_now(runtime, &mut layered, request(Method::PUT, None));
    let current = saved.headers()[header::LAST_MODIFIED]
        .to_str()
        .unwrap()
        .to_owned();
    let stale = "Sun, 06 Nov 1994 08:49:37 GMT";

    let cases = [
        Case {
            name: "not_modified_304",
            method: Method::GET,
            condition: Some((header::IF_MODIFIED_SINCE, &current)),
            status: 304,
        },
        Case {
            name: "forwarded_read",
            method: Method::GET,
            condition: None,
            status: 200,
        },
        Case {
            name: "precondition_failed_412",
            method: Method::POST,
            condition: Some((header::IF_UNMODIFIED_SINCE, stale)),
            status: 412,
        },
        // Last: every forwarded write bumps the version, which would end the 304 case.
        Case {
            name: "forwarded_write",
            method: Method::POST,
            condition: None,
            status: 200,
        },
    ];
    for Case {
        name,
        method,
        condition,
        status,
    } in cases
    {
        let res = call_now(
            runtime,
            &mut layered,
            request(method.clone(), condition.clone()),
        );
        assert_eq!(res.status(), status, "{name} takes the path it names");
        let mut group = c.benchmark_group(name);
        group.bench_function("bare", |b| {
            b.iter(|| {
                black_box(call_now(
                    runtime,
                    &mut bare,
                    request(method.clone(), condition.clone()),
                ))
            })
        });
        group.bench_function("layered", |b| {
            b.iter(|| {
                black_box(call_now(
                    runtime,
                    &mut layered,
                    request(method.clone(), condition.clone()),
                ))
            })
        });
        group.finish();
    }
}

/// The cost of watching for writers that bypass the layer, against the layer that trusts its
/// table (the default) and the bare service, in one run: a `304` within the revalidation window
/// (answered from the table, but on the boxed path that fingerprints reads), and a write with
/// `verify_writes` (one more inner call: `HEAD`, then `GET` and a hash of the body, as the bare
/// service sends no validator).
fn bypass_overhead(c: &mut Criterion) {
    install_recorder();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let runtime = &runtime;
    let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_750_000_000));
    let store = || MemoryStore::new().clock(clock.clone());
    let mut trusting = ConditionalLayer::new().store(store()).layer(bare());
    let mut watching = ConditionalLayer::new()
        .store(store())
        .revalidate_after(Duration::from_secs(3600))
        .verify_writes(true)
        .layer(bare());
    let mut bare = bare();
    clock.advance(Duration::from_secs(1));
    for service in [&mut trusting, &mut watching] {
        call_now(runtime, service, request(Method::PUT, None));
    }
    clock.advance(Duration::from_secs(1));
    let tags: Vec<String> = [&mut trusting, &mut watching]
        .into_iter()
        .map(|service| {
            let read = call_now(runtime, service, request(Method::GET, None));
            read.headers()[header::ETAG].to_str().unwrap().to_owned()
        })
        .collect();

    let mut group = c.benchmark_group("bypass_304_within_window");
    group.bench_function("bare", |b| {
        b.iter(|| black_box(call_now(runtime, &mut bare, request(Method::GET, None))))
    });
    for (name, service, tag) in [
        ("trusting", &mut trusting, &tags[0]),
        ("watching", &mut watching, &tags[1]),
    ] {
        let condition = Some((header::IF_NONE_MATCH, tag.as_str()));
        let res = call_now(runtime, service, request(Method::GET, condition.clone()));
        assert_eq!(res.status(), 304, "{name} answers from its table");
        group.bench_function(name, |b| {
            b.iter(|| {
                black_box(call_now(
                    runtime,
                    service,
                    request(Method::GET, condition.clone()),
                ))
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("bypass_write");
    group.bench_function("bare", |b| {
        b.iter(|| black_box(call_now(runtime, &mut bare, request(Method::POST, None))))
    });
    for (name, service) in [("trusting", &mut trusting), ("verifying", &mut watching)] {
        group.bench_function(name, |b| {
            b.iter(|| black_box(call_now(runtime, service, request(Method::POST, None))))
        });
    }
    group.finish();
}

/// What the `metrics` feature adds to a `304`: one increment through a counter handle the
/// service registered when it was made; against looking the labelled counter up per request,
/// which the layer never does.
#[cfg(feature = "metrics")]
fn metrics_record(c: &mut Criterion) {
    install_recorder();
    let name = "bench_requests_total";
    let handle = metrics::counter!(name, "class" => "default", "outcome" => "not_modified");
    let mut group = c.benchmark_group("metrics_record");
    group.bench_function("cached_handle", |b| {
        b.iter(|| handle.increment(black_box(1)))
    });
    group.bench_function("lookup_per_request", |b| {
        b.iter(|| {
            metrics::counter!(name, "class" => "default", "outcome" => "not_modified")
                .increment(black_box(1))
        })
    });
    group.finish();
}

#[cfg(feature = "metrics")]
criterion_group!(benches, overhead, bypass_overhead, metrics_record);
#[cfg(not(feature = "metrics"))]
criterion_group!(benches, overhead, bypass_overhead);
criterion_main!(benches);
