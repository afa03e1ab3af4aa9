//! The one-second date rules, on a deterministic clock: ambiguous dates, re-dating, restarts,
//! truthful `Last-Modified`, and date headers that must be ignored.

mod support;

use std::time::Duration;

use http::{header, Method, StatusCode};
use support::{call, date_at, request, Backend, SECOND};
use tower::Layer;
use tower_conditional::store::MemoryStore;
use tower_conditional::ConditionalLayer;

const DOC: &str = "/doc";

#[tokio::test]
async fn two_writes_in_one_second_share_a_date_that_validates_nothing() {
    let (clock, backend, mut service) = support::layered();
    clock.advance(SECOND);

    let first = call(&mut service, request(Method::PUT, DOC, &[], "1")).await;
    let second = call(&mut service, request(Method::PUT, DOC, &[], "2")).await;
    assert_eq!(first.last_modified(), Some(date_at(1).as_str()));
    assert_eq!(
        second.last_modified(),
        first.last_modified(),
        "one second, one date"
    );
    let shared = date_at(1);

    // A client holding the shared date cannot prove it saw the second write.
    let stale = call(
        &mut service,
        request(Method::PUT, DOC, &[("if-unmodified-since", &shared)], "x"),
    )
    .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(
        stale.last_modified(),
        Some(shared.as_str()),
        "same second: not re-dated yet"
    );
    let read = call(
        &mut service,
        request(Method::GET, DOC, &[("if-modified-since", &shared)], ""),
    )
    .await;
    assert_eq!(
        read.status,
        StatusCode::OK,
        "never a 304 for an ambiguous date"
    );
    assert_eq!(read.text(), "2");
    assert_eq!(backend.doc(DOC).unwrap(), "2");

    // Once the clock has moved on, a read re-dates the resource and the client goes on.
    clock.advance(SECOND);
    let resync = call(
        &mut service,
        request(Method::GET, DOC, &[("if-modified-since", &shared)], ""),
    )
    .await;
    assert_eq!(resync.status, StatusCode::OK);
    assert_eq!(resync.last_modified(), Some(date_at(2).as_str()));
    let again = call(
        &mut service,
        request(Method::GET, DOC, &[("if-modified-since", &date_at(2))], ""),
    )
    .await;
    assert_eq!(
        again.status,
        StatusCode::NOT_MODIFIED,
        "the new date is unique"
    );
    let retry = call(
        &mut service,
        request(
            Method::PUT,
            DOC,
            &[("if-unmodified-since", &date_at(2))],
            "3",
        ),
    )
    .await;
    assert_eq!(retry.status, StatusCode::OK);
    assert_eq!(backend.doc(DOC).unwrap(), "3");

    for reply in [first, second, stale, read, resync, again, retry] {
        reply.assert_dates_truthful();
    }
}

#[tokio::test]
async fn a_412_re_dates_an_ambiguous_version_once_the_second_has_passed() {
    let clock = support::manual_clock();
    let mut service = ConditionalLayer::new()
        .store(MemoryStore::new().clock(clock.clone()))
        .layer(Backend::default().service());
    clock.advance(SECOND);
    call(&mut service, request(Method::PUT, DOC, &[], "1")).await;
    call(&mut service, request(Method::PUT, DOC, &[], "2")).await;
    clock.advance(SECOND);

    let stale = call(
        &mut service,
        request(
            Method::PUT,
            DOC,
            &[("if-unmodified-since", &date_at(1))],
            "x",
        ),
    )
    .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(stale.last_modified(), Some(date_at(2).as_str()));
    stale.assert_dates_truthful();
    let retry = call(
        &mut service,
        request(
            Method::PUT,
            DOC,
            &[("if-unmodified-since", &date_at(2))],
            "3",
        ),
    )
    .await;
    assert_eq!(retry.status, StatusCode::OK);
}

#[tokio::test]
async fn an_unseen_resource_is_dated_at_the_ambiguous_start_second() {
    let (_clock, backend, mut service) = support::layered();
    call(
        &mut backend.service(),
        request(Method::PUT, DOC, &[], "old"),
    )
    .await;
    let start = date_at(0);

    let read = call(&mut service, request(Method::GET, DOC, &[], "")).await;
    assert_eq!(read.last_modified(), Some(start.as_str()));
    let read = call(
        &mut service,
        request(Method::GET, DOC, &[("if-modified-since", &start)], ""),
    )
    .await;
    assert_eq!(
        read.status,
        StatusCode::OK,
        "the start second may hold versions issued before"
    );
    let write = call(
        &mut service,
        request(Method::PUT, DOC, &[("if-unmodified-since", &start)], "new"),
    )
    .await;
    assert_eq!(write.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(backend.doc(DOC).unwrap(), "old");
}

#[tokio::test]
async fn a_restarted_layer_refuses_versions_issued_before_the_restart() {
    let clock = support::manual_clock();
    let backend = Backend::default();
    let before = ConditionalLayer::new().store(MemoryStore::new().clock(clock.clone()));
    let mut service = before.layer(backend.service());
    clock.advance(SECOND);
    let saved = call(&mut service, request(Method::PUT, DOC, &[], "mine")).await;
    let held = saved.last_modified().unwrap().to_owned();

    // Restart in the same second, and again a second later: the held date never validates.
    for advance in [Duration::ZERO, SECOND] {
        clock.advance(advance);
        let mut restarted = ConditionalLayer::new()
            .store(MemoryStore::new().clock(clock.clone()))
            .layer(backend.service());
        let read = call(
            &mut restarted,
            request(Method::GET, DOC, &[("if-modified-since", &held)], ""),
        )
        .await;
        assert_eq!(read.status, StatusCode::OK, "no 304 for a pre-restart date");
        let write = call(
            &mut restarted,
            request(Method::PUT, DOC, &[("if-unmodified-since", &held)], "x"),
        )
        .await;
        assert_eq!(write.status, StatusCode::PRECONDITION_FAILED);
        assert_eq!(backend.doc(DOC).unwrap(), "mine");
    }
}

#[tokio::test]
async fn last_modified_never_goes_backward_nor_past_the_date_it_travels_with() {
    let clock = support::manual_clock();
    let mut service = ConditionalLayer::new()
        .store(MemoryStore::new().clock(clock.clone()))
        .layer(Backend::default().service());
    clock.advance(Duration::from_secs(5));
    let saved = call(&mut service, request(Method::PUT, DOC, &[], "1")).await;
    assert_eq!(saved.last_modified(), Some(date_at(5).as_str()));

    clock.set(support::start_of_test_time() + Duration::from_secs(3));
    let read = call(&mut service, request(Method::GET, DOC, &[], "")).await;
    assert_eq!(read.last_modified(), Some(date_at(5).as_str()));
    read.assert_dates_truthful();
    let saved = call(&mut service, request(Method::PUT, DOC, &[], "2")).await;
    assert_eq!(
        saved.last_modified(),
        Some(date_at(5).as_str()),
        "never backward"
    );
    saved.assert_dates_truthful();
    let stale = call(
        &mut service,
        request(
            Method::PUT,
            DOC,
            &[("if-unmodified-since", &date_at(5))],
            "3",
        ),
    )
    .await;
    assert_eq!(
        stale.status,
        StatusCode::PRECONDITION_FAILED,
        "5 is shared by two versions"
    );
    stale.assert_dates_truthful();
    assert!(stale.header(header::DATE).is_some());
}

#[tokio::test]
async fn invalid_and_repeated_date_headers_are_ignored() {
    let (clock, backend, mut service) = support::layered();
    clock.advance(SECOND);
    let saved = call(&mut service, request(Method::PUT, DOC, &[], "1")).await;
    let current = saved.last_modified().unwrap().to_owned();
    clock.advance(SECOND);
    let stale = date_at(0);
    let pair = format!("{stale}, {stale}");

    // Ignored `If-Unmodified-Since`: the write goes through as an unconditional one.
    for headers in [
        vec![("if-unmodified-since", "yesterday")],
        vec![("if-unmodified-since", "Sun, 32 Nov 1994 08:49:37 GMT")],
        vec![("if-unmodified-since", pair.as_str())],
        vec![
            ("if-unmodified-since", stale.as_str()),
            ("if-unmodified-since", stale.as_str()),
        ],
    ] {
        let write = call(&mut service, request(Method::PUT, DOC, &headers, "2")).await;
        assert_eq!(write.status, StatusCode::OK, "{headers:?}");
    }
    clock.advance(SECOND); // the four writes shared a second; let a read re-date the last
    let current_now = call(&mut service, request(Method::GET, DOC, &[], "")).await;
    let current_now = current_now.last_modified().unwrap().to_owned();
    assert_ne!(current_now, current);

    // Ignored `If-Modified-Since`: a full response, from the backend.
    for headers in [
        vec![("if-modified-since", "not a date")],
        vec![
            ("if-modified-since", current_now.as_str()),
            ("if-modified-since", current_now.as_str()),
        ],
    ] {
        let hits = backend.hits();
        let read = call(&mut service, request(Method::GET, DOC, &headers, "")).await;
        assert_eq!(read.status, StatusCode::OK, "{headers:?}");
        assert_eq!(backend.hits(), hits + 1);
    }
    let valid = call(
        &mut service,
        request(Method::GET, DOC, &[("if-modified-since", &current_now)], ""),
    )
    .await;
    assert_eq!(valid.status, StatusCode::NOT_MODIFIED, "the control case");
}
