//! Which requests the layer tracks, and which resource each one concerns.

mod support;

use http::{header, request::Parts, Method, StatusCode};
use support::{call, date_at, request, Backend, SECOND};
use tower::Layer;
use tower_conditional::ConditionalLayer;
use tower_conditional::{clock::ManualClock, store::MemoryStore};

#[tokio::test]
async fn spellings_of_one_path_share_one_version() {
    let (clock, _backend, mut service) = support::layered();
    clock.advance(SECOND);
    let saved = call(&mut service, request(Method::PUT, "/a/./b", &[], "1")).await;
    assert_eq!(saved.last_modified(), Some(date_at(1).as_str()));
    clock.advance(SECOND);

    for spelling in ["/a/b", "/%61/b", "/a/c/../b", "/a/b?query=ignored"] {
        let read = call(
            &mut service,
            request(
                Method::GET,
                spelling,
                &[("if-modified-since", &date_at(1))],
                "",
            ),
        )
        .await;
        assert_eq!(read.status, StatusCode::NOT_MODIFIED, "{spelling}");
    }
    let write = call(
        &mut service,
        request(
            Method::PUT,
            "/%61/b",
            &[("if-unmodified-since", &date_at(1))],
            "2",
        ),
    )
    .await;
    assert_eq!(write.status, StatusCode::OK);
    let stale = call(
        &mut service,
        request(
            Method::PUT,
            "/a/b",
            &[("if-unmodified-since", &date_at(1))],
            "3",
        ),
    )
    .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);

    // Not folded: case, a trailing slash, an empty segment.
    for other in ["/A/b", "/a/b/", "/a//b"] {
        let read = call(&mut service, request(Method::GET, other, &[], "")).await;
        assert_ne!(read.last_modified(), Some(date_at(2).as_str()), "{other}");
    }
}

fn bounded_store<K: std::hash::Hash + Eq + Clone>(clock: &ManualClock) -> MemoryStore<K> {
    MemoryStore::new().clock(clock.clone()).max_resources(1)
}

/// Setters commute: a store set before `key_fn` keeps its clock and bound, as one set after.
#[tokio::test]
async fn key_fn_and_store_give_the_same_layer_in_either_order() {
    let key = |parts: &Parts| Some(parts.uri.path().to_owned());
    for store_first in [true, false] {
        let clock = support::manual_clock();
        let layer = if store_first {
            ConditionalLayer::new()
                .store(bounded_store::<Box<str>>(&clock))
                .key_fn(key)
        } else {
            ConditionalLayer::new()
                .key_fn(key)
                .store(bounded_store::<String>(&clock))
        };
        let mut service = layer.layer(Backend::default().service());
        clock.advance(SECOND);
        for path in ["/a", "/b", "/c"] {
            let saved = call(&mut service, request(Method::PUT, path, &[], "x")).await;
            assert_eq!(
                saved.last_modified(),
                Some(date_at(1).as_str()),
                "the store's clock, store first: {store_first}"
            );
        }
        assert!(
            layer.tracked_resources() <= 1,
            "the store's bound, store first: {store_first}"
        );
    }
}

#[tokio::test]
async fn a_key_function_joins_endpoints_and_lets_others_pass() {
    let clock = support::manual_clock();
    let backend = Backend::default();
    let layer = ConditionalLayer::new()
        .store(MemoryStore::new().clock(clock.clone()))
        .key_fn(|parts: &Parts| {
            matches!(parts.uri.path(), "/api/storage/read" | "/api/storage/write")
                .then_some("storage")
        });
    let mut service = layer.layer(backend.service());
    clock.advance(SECOND);
    let saved = call(
        &mut service,
        request(Method::POST, "/api/storage/write", &[], "1"),
    )
    .await;
    let v1 = saved.last_modified().unwrap().to_owned();
    clock.advance(SECOND);
    let read = call(
        &mut service,
        request(
            Method::GET,
            "/api/storage/read",
            &[("if-modified-since", &v1)],
            "",
        ),
    )
    .await;
    assert_eq!(read.status, StatusCode::NOT_MODIFIED);

    // `None`: untouched. The condition reaches the backend, which evaluates it itself.
    let stale = date_at(0);
    let passed = call(
        &mut service,
        request(
            Method::PUT,
            "/elsewhere",
            &[("if-unmodified-since", &stale)],
            "x",
        ),
    )
    .await;
    assert_eq!(passed.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(passed.text(), support::BACKEND_PRECONDITION);
    assert!(passed.header(http::header::ETAG).is_none(), "not stamped");
    let plain = call(&mut service, request(Method::PUT, "/elsewhere", &[], "x")).await;
    assert_eq!(plain.last_modified(), Some("Mon, 01 Jan 2001 00:00:00 GMT"));
    assert_eq!(layer.tracked_resources(), 1);
}

#[tokio::test]
async fn other_methods_pass_through_untouched() {
    let (_clock, backend, mut service) = support::layered();
    let stale = date_at(0);
    for method in [
        Method::OPTIONS,
        Method::TRACE,
        Method::from_bytes(b"PROPFIND").unwrap(),
    ] {
        let hits = backend.hits();
        let res = call(
            &mut service,
            request(
                method.clone(),
                "/doc",
                &[("if-unmodified-since", &stale)],
                "",
            ),
        )
        .await;
        assert_eq!(res.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(backend.hits(), hits + 1);
        assert!(res.headers.get(header::DATE).is_none(), "not stamped");
    }
}
