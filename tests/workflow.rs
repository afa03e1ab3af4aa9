//! The design note's workflow end to end, over real loopback sockets.

mod support;

use http::{header, Method, StatusCode};
use support::{Backend, HttpClient, SECOND};
use tower::Layer;
use tower_conditional::store::MemoryStore;
use tower_conditional::ConditionalLayer;

#[tokio::test]
async fn sync_resync_save_stale_save_resync_retry() {
    let clock = support::manual_clock();
    let layer = ConditionalLayer::new().store(MemoryStore::new().clock(clock.clone()));
    let backend = Backend::default();
    let addr = support::serve(layer.layer(backend.service())).await;
    let alice = HttpClient::new(addr);
    let bob = HttpClient::new(addr);
    // The layer's start second is ambiguous (it may hold versions issued before a restart);
    // a second later, the first read dates the resource afresh.
    clock.advance(SECOND);
    let put = alice.send(Method::POST, "/api/storage", &[], "v1").await;
    assert_eq!(put.status, StatusCode::OK);
    clock.advance(SECOND);

    // sync: 200 + Last-Modified
    let sync = alice.send(Method::GET, "/api/storage", &[], "").await;
    assert_eq!(sync.status, StatusCode::OK);
    assert_eq!(sync.text(), "v1");
    sync.assert_dates_truthful();
    let v1 = sync.last_modified().unwrap().to_owned();
    assert_ne!(
        v1, "Mon, 01 Jan 2001 00:00:00 GMT",
        "the backend's date is replaced"
    );
    let bob_v1 = bob.send(Method::GET, "/api/storage", &[], "").await;
    assert_eq!(bob_v1.last_modified(), Some(v1.as_str()));

    // re-sync: 304, inner not reached
    let hits = backend.hits();
    let resync = alice
        .send(
            Method::GET,
            "/api/storage",
            &[("if-modified-since", &v1)],
            "",
        )
        .await;
    assert_eq!(resync.status, StatusCode::NOT_MODIFIED);
    assert!(resync.body.is_empty());
    assert_eq!(resync.last_modified(), Some(v1.as_str()));
    assert!(resync.header(header::DATE).is_some());
    assert_eq!(backend.hits(), hits, "a 304 never reaches the backend");

    // save: 200 + newer Last-Modified
    clock.advance(SECOND);
    let save = alice
        .send(
            Method::POST,
            "/api/storage",
            &[("if-unmodified-since", &v1)],
            "alice",
        )
        .await;
    assert_eq!(save.status, StatusCode::OK);
    save.assert_dates_truthful();
    let v2 = save.last_modified().unwrap().to_owned();
    assert!(httpdate::parse_http_date(&v2).unwrap() > httpdate::parse_http_date(&v1).unwrap());

    // stale save: 412, inner not reached
    let hits = backend.hits();
    let stale = bob
        .send(
            Method::POST,
            "/api/storage",
            &[("if-unmodified-since", &v1)],
            "bob",
        )
        .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(stale.last_modified(), Some(v2.as_str()));
    assert!(stale.text().contains("Re-read"), "{}", stale.text());
    stale.assert_dates_truthful();
    assert_eq!(backend.hits(), hits, "a 412 never reaches the backend");
    assert_eq!(backend.doc("/api/storage").unwrap(), "alice");

    // re-sync: the stale client gets the new data and date
    let resync = bob
        .send(
            Method::GET,
            "/api/storage",
            &[("if-modified-since", &v1)],
            "",
        )
        .await;
    assert_eq!(resync.status, StatusCode::OK);
    assert_eq!(resync.text(), "alice");
    assert_eq!(resync.last_modified(), Some(v2.as_str()));

    // retry with the re-applied change succeeds
    clock.advance(SECOND);
    let retry = bob
        .send(
            Method::POST,
            "/api/storage",
            &[("if-unmodified-since", &v2)],
            "alice+bob",
        )
        .await;
    assert_eq!(retry.status, StatusCode::OK);
    assert_eq!(backend.doc("/api/storage").unwrap(), "alice+bob");
    assert_ne!(retry.last_modified(), Some(v2.as_str()));
}
