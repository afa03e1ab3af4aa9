//! No lost update: 32 clients × 50 read-modify-write increments of one counter, over real
//! loopback sockets, on a backend with no concurrency control of its own.

mod support;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use http::{Method, StatusCode};
use support::{Backend, HttpClient, SECOND};
use tower::Layer;
use tower_conditional::store::MemoryStore;
use tower_conditional::{clock::ManualClock, ConditionalLayer};

const CLIENTS: usize = 32;
const INCREMENTS: usize = 50;
const PATH: &str = "/api/storage";
/// A bound against a hang, not a speed target: a run takes about 20 s alone in a debug build,
/// and four of them run at once, on a machine that may be busy with other builds.
const WORKLOAD_LIMIT: Duration = Duration::from_secs(600);

/// Which validator the clients hold: the design note's dates, ETags, or half of each.
#[derive(Clone, Copy, Debug)]
enum Validators {
    Dates,
    ETags,
    Mixed,
    /// Clients of a backend with no concurrency control: they hold no validator at all.
    None,
}

impl Validators {
    /// The (response header, read precondition, write precondition) client `index` uses.
    fn for_client(self, index: usize) -> (http::HeaderName, &'static str, &'static str) {
        let etag = match self {
            Validators::None => {
                let never_sent = http::HeaderName::from_static("x-no-validator");
                return (never_sent, "if-none-match", "if-match");
            }
            Validators::Dates => false,
            Validators::ETags => true,
            Validators::Mixed => index % 2 == 1,
        };
        if etag {
            (http::header::ETAG, "if-none-match", "if-match")
        } else {
            (
                http::header::LAST_MODIFIED,
                "if-modified-since",
                "if-unmodified-since",
            )
        }
    }
}

/// What one workload run saw.
struct Outcome {
    successful_writes: usize,
    final_value: usize,
    rejected_writes: usize,
}

/// Each client syncs, then saves `value + 1` with `If-Unmodified-Since`; on 412 it re-syncs and
/// re-applies its increment, as the design note's client does. On every 412 the test clock moves
/// one second on, so dates shared by writes in one second get re-dated and the run ends.
async fn run(client: HttpClient, clock: Option<ManualClock>, validators: Validators) -> Outcome {
    let successes = Arc::new(AtomicUsize::new(0));
    let rejections = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for index in 0..CLIENTS {
        let (client, clock) = (client.clone(), clock.clone());
        let (successes, rejections) = (successes.clone(), rejections.clone());
        let validator = validators.for_client(index);
        tasks.push(tokio::spawn(async move {
            let (validator_header, read_condition, write_condition) = validator;
            let (mut value, mut modified) =
                sync(&client, None, &validator_header, read_condition).await;
            for _ in 0..INCREMENTS {
                loop {
                    let precondition = modified.as_deref().map(|m| (write_condition, m));
                    let headers: Vec<_> = precondition.into_iter().collect();
                    let body = (value + 1).to_string();
                    let save = client.send(Method::POST, PATH, &headers, &body).await;
                    match save.status {
                        StatusCode::OK => {
                            successes.fetch_add(1, Ordering::SeqCst);
                            value += 1;
                            modified = save.header(validator_header.clone()).map(str::to_owned);
                            break;
                        }
                        StatusCode::PRECONDITION_FAILED => {
                            rejections.fetch_add(1, Ordering::SeqCst);
                            if let Some(clock) = &clock {
                                clock.advance(SECOND);
                            }
                            let held = Some((value, modified));
                            (value, modified) =
                                sync(&client, held, &validator_header, read_condition).await;
                        }
                        other => panic!("unexpected {other} for a save"),
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let final_value = sync(&client, None, &http::header::ETAG, "if-none-match")
        .await
        .0;
    Outcome {
        successful_writes: successes.load(Ordering::SeqCst),
        final_value,
        rejected_writes: rejections.load(Ordering::SeqCst),
    }
}

/// GET with `If-Modified-Since` when the client holds a version; 304 keeps what it holds.
async fn sync(
    client: &HttpClient,
    held: Option<(usize, Option<String>)>,
    validator_header: &http::HeaderName,
    read_condition: &str,
) -> (usize, Option<String>) {
    let since = held.as_ref().and_then(|(_, m)| m.as_deref());
    let headers: Vec<_> = since.map(|m| (read_condition, m)).into_iter().collect();
    let res = client.send(Method::GET, PATH, &headers, "").await;
    match res.status {
        StatusCode::OK => (
            res.text().parse().unwrap(),
            res.header(validator_header.clone()).map(str::to_owned),
        ),
        StatusCode::NOT_MODIFIED => held.expect("304 only answers a client holding a version"),
        other => panic!("unexpected {other} for a sync"),
    }
}

async fn seeded_backend() -> Backend {
    let backend = Backend::default();
    let mut service = backend.service();
    support::call(&mut service, support::request(Method::PUT, PATH, &[], "0")).await;
    backend
}

async fn through_the_layer(validators: Validators) -> Outcome {
    let backend = seeded_backend().await;
    let clock = support::manual_clock();
    let layer = ConditionalLayer::new().store(MemoryStore::new().clock(clock.clone()));
    let addr = support::serve(layer.layer(backend.service())).await;
    let run = run(HttpClient::new(addr), Some(clock), validators);
    let outcome = tokio::time::timeout(WORKLOAD_LIMIT, run)
        .await
        .expect("the workload finishes");
    assert_eq!(backend.doc(PATH).unwrap(), outcome.final_value.to_string());
    outcome
}

fn assert_nothing_lost(outcome: &Outcome) {
    assert_eq!(outcome.successful_writes, CLIENTS * INCREMENTS);
    assert_eq!(
        outcome.final_value, outcome.successful_writes,
        "an update was lost"
    );
    assert!(
        outcome.rejected_writes > 0,
        "the clients never raced: the test proves nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_through_the_layer_lose_nothing() {
    assert_nothing_lost(&through_the_layer(Validators::Dates).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etag_clients_lose_nothing() {
    assert_nothing_lost(&through_the_layer(Validators::ETags).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn date_and_etag_clients_on_one_resource_lose_nothing() {
    assert_nothing_lost(&through_the_layer(Validators::Mixed).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_workload_without_the_layer_loses_updates() {
    let backend = seeded_backend().await;
    let addr = support::serve(backend.service()).await;

    let outcome = tokio::time::timeout(
        WORKLOAD_LIMIT,
        run(HttpClient::new(addr), None, Validators::None),
    )
    .await
    .expect("the workload finishes");

    assert_eq!(outcome.successful_writes, CLIENTS * INCREMENTS);
    assert!(
        outcome.final_value < outcome.successful_writes,
        "no lost update without the layer: the workload cannot see them (final {})",
        outcome.final_value
    );
}
