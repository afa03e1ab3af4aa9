//! Strong ETags: one per version, stable across re-dating, unique across restarts, never slowed
//! by the one-second date rule; and a create-only race.

mod support;

use std::sync::Arc;

use http::{Method, StatusCode};
use support::{call, request, Backend, HttpClient, SECOND};
use tokio::sync::Barrier;
use tower::Layer;
use tower_conditional::store::MemoryStore;
use tower_conditional::ConditionalLayer;

const DOC: &str = "/doc";

#[tokio::test]
async fn every_write_gets_a_new_tag_and_re_dating_keeps_it() {
    let clock = support::manual_clock();
    let mut service = ConditionalLayer::new()
        .store(MemoryStore::new().clock(clock.clone()))
        .layer(Backend::default());
    clock.advance(SECOND);
    let first = call(&mut service, request(Method::PUT, DOC, &[], "1")).await;
    let second = call(&mut service, request(Method::PUT, DOC, &[], "2")).await;
    let (first_tag, second_tag) = (first.etag().unwrap(), second.etag().unwrap());
    assert_ne!(first_tag, second_tag);
    assert_eq!(
        first.last_modified(),
        second.last_modified(),
        "same second, same date"
    );
    assert!(
        second_tag.starts_with('"') && !second_tag.starts_with("W/"),
        "strong: {second_tag}"
    );

    clock.advance(SECOND);
    let read = call(&mut service, request(Method::GET, DOC, &[], "")).await;
    assert_ne!(read.last_modified(), second.last_modified(), "re-dated");
    assert_eq!(read.etag(), Some(second_tag), "same version, same tag");
    let not_modified = call(
        &mut service,
        request(Method::GET, DOC, &[("if-none-match", second_tag)], ""),
    )
    .await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    assert_eq!(not_modified.etag(), Some(second_tag));
    assert_eq!(not_modified.last_modified(), read.last_modified());
}

#[tokio::test]
async fn etag_clients_write_a_hot_resource_without_waiting_for_the_clock() {
    let (clock, backend, mut service) = support::layered();
    clock.advance(SECOND);
    let mut tag = call(&mut service, request(Method::PUT, DOC, &[], "0"))
        .await
        .etag()
        .unwrap()
        .to_owned();
    // Twenty writes in one second: dates would be ambiguous after the first, tags never are.
    for i in 1..=20 {
        let save = call(
            &mut service,
            request(Method::PUT, DOC, &[("if-match", &tag)], &i.to_string()),
        )
        .await;
        assert_eq!(save.status, StatusCode::OK, "write {i}");
        tag = save.tag();
    }
    assert_eq!(backend.doc(DOC).unwrap(), "20");
}

#[tokio::test]
async fn a_restarted_layer_never_accepts_an_earlier_instance_tag() {
    let clock = support::manual_clock();
    let backend = Backend::default();
    let mut before = ConditionalLayer::new()
        .store(MemoryStore::new().clock(clock.clone()))
        .layer(backend.service());
    clock.advance(SECOND);
    let saved = call(&mut before, request(Method::PUT, DOC, &[], "mine")).await;
    let held = saved.tag();

    let mut after = ConditionalLayer::new()
        .store(MemoryStore::new().clock(clock.clone()))
        .layer(backend.service());
    let read = call(
        &mut after,
        request(Method::GET, DOC, &[("if-none-match", &held)], ""),
    )
    .await;
    assert_eq!(read.status, StatusCode::OK);
    assert_ne!(read.etag(), Some(held.as_str()));
    let write = call(
        &mut after,
        request(Method::PUT, DOC, &[("if-match", &held)], "stale"),
    )
    .await;
    assert_eq!(write.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(backend.doc(DOC).unwrap(), "mine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_create_only_writes_race_and_exactly_one_wins() {
    const CLIENTS: usize = 16;
    let backend = Backend::default();
    let addr = support::serve(ConditionalLayer::new().layer(backend.service())).await;
    let start = Arc::new(Barrier::new(CLIENTS));
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let (client, start) = (HttpClient::new(addr), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let body = format!("client {i}");
            let res = client
                .send(Method::PUT, "/new", &[("if-none-match", "*")], &body)
                .await;
            (res.status, body)
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        match status {
            StatusCode::OK => winners.push(body),
            StatusCode::PRECONDITION_FAILED => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(backend.doc("/new").unwrap(), winners[0]);
    let puts = backend
        .methods()
        .iter()
        .filter(|m| **m == Method::PUT)
        .count();
    assert_eq!(puts, 1, "the losers never reached the backend");
}
