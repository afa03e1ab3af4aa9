//! The layer's limits on writes: body size, waiting for a lock, and writes that take too long.

mod support;

use std::time::Duration;

use http::{header, Method, StatusCode};
use support::{call, date_at, poll_once, request, Backend, HOLD, SECOND};
use tower::Layer;
use tower_conditional::store::MemoryStore;
use tower_conditional::ConditionalLayer;

const DOC: &str = "/doc";

#[tokio::test]
async fn a_body_over_the_limit_gets_413_without_reaching_the_backend_or_the_lock() {
    let backend = Backend::default();
    let mut service = ConditionalLayer::new()
        .max_body_size(16)
        .layer(backend.service());
    let big = call(
        &mut service,
        request(Method::PUT, DOC, &[], "seventeen bytes!!"),
    )
    .await;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(big.header(header::DATE).is_some());
    assert!(backend.methods().is_empty());
    let fits = call(
        &mut service,
        request(Method::PUT, DOC, &[], "sixteen bytes!!!"),
    )
    .await;
    assert_eq!(fits.status, StatusCode::OK);
    assert_eq!(backend.doc(DOC).unwrap(), "sixteen bytes!!!");
}

#[tokio::test(start_paused = true)]
async fn a_writer_that_waits_too_long_for_the_lock_gets_503_and_nothing_queues_forever() {
    let backend = Backend::default();
    let service = ConditionalLayer::new()
        .lock_timeout(Duration::from_secs(2))
        .layer(backend.service());
    let mut first = service.clone();
    let held = tokio::spawn(async move {
        call(
            &mut first,
            request(Method::PUT, DOC, &[(HOLD, "1")], "slow"),
        )
        .await
    });
    backend.arrived().await;

    let mut second = service.clone();
    let busy = call(&mut second, request(Method::PUT, DOC, &[], "waiting")).await;
    assert_eq!(busy.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(busy.header(header::RETRY_AFTER), Some("1"));
    assert_eq!(
        backend.methods().len(),
        1,
        "the waiting write never reached the backend"
    );

    backend.release();
    assert_eq!(held.await.unwrap().status, StatusCode::OK);
    let next = call(&mut second, request(Method::PUT, DOC, &[], "next")).await;
    assert_eq!(next.status, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn a_write_that_times_out_gets_504_and_keeps_the_resource_locked_for_the_grace_period() {
    let clock = support::manual_clock();
    let backend = Backend::default();
    let mut service = ConditionalLayer::new()
        .store(MemoryStore::new().clock(clock.clone()))
        .write_timeout(Duration::from_secs(5))
        .timeout_grace(Duration::from_secs(60))
        .lock_timeout(Duration::from_secs(600))
        .layer(backend.service());
    clock.advance(SECOND);
    call(&mut service, request(Method::PUT, DOC, &[], "v1")).await;
    clock.advance(SECOND);

    let timed_out = call(
        &mut service,
        request(Method::PUT, DOC, &[(HOLD, "1")], "late"),
    )
    .await;
    assert_eq!(timed_out.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        timed_out.text().contains("outcome is unknown"),
        "{}",
        timed_out.text()
    );

    // Within the grace period the next write waits: the backend may still apply the late one.
    let mut next_service = service.clone();
    let mut next = Box::pin(async move {
        call(
            &mut next_service,
            request(
                Method::PUT,
                DOC,
                &[("if-unmodified-since", &date_at(1))],
                "next",
            ),
        )
        .await
    });
    assert!(poll_once(&mut next).await.is_pending());
    let next = next.await; // the paused clock runs through the grace period
    assert_eq!(
        next.status,
        StatusCode::PRECONDITION_FAILED,
        "a timed-out write bumps the version"
    );
    let after = call(&mut service, request(Method::PUT, DOC, &[], "after")).await;
    assert_eq!(after.status, StatusCode::OK);
}

#[tokio::test]
async fn a_bounded_table_forgets_resources_conservatively() {
    let clock = support::manual_clock();
    let backend = Backend::default();
    let layer =
        ConditionalLayer::new().store(MemoryStore::new().clock(clock.clone()).max_resources(100));
    let mut service = layer.layer(backend.service());
    let mut held = Vec::new();
    for i in 0..1000 {
        if i % 100 == 0 {
            clock.advance(SECOND);
        }
        let path = format!("/doc/{i}");
        let saved = call(&mut service, request(Method::PUT, &path, &[], "v1")).await;
        let tag = saved.tag();
        held.push((path, tag, saved.last_modified().unwrap().to_owned()));
        assert!(
            layer.tracked_resources() <= 100,
            "{} tracked",
            layer.tracked_resources()
        );
    }
    clock.advance(SECOND);

    // Every client still holds the validators of the version it wrote, which is current: the
    // layer may have forgotten it, in which case it must answer 412 (never let a write through
    // on a validator it cannot vouch for; a date can also have become shared with the raised
    // floor); the ones it still tracks succeed.
    let (mut forgotten, mut kept) = (0, 0);
    // Most recent first: checking the oldest first would evict the recent ones on the way.
    for (i, (path, tag, date)) in held.iter().enumerate().rev() {
        let (name, value) = if i % 2 == 0 {
            ("if-match", tag)
        } else {
            ("if-unmodified-since", date)
        };
        let write = call(
            &mut service,
            request(Method::PUT, path, &[(name, value)], "v2"),
        )
        .await;
        match write.status {
            StatusCode::OK => kept += 1,
            StatusCode::PRECONDITION_FAILED => {
                forgotten += 1;
                assert_eq!(backend.doc(path).unwrap(), "v1");
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        forgotten >= 800,
        "only {forgotten} of 1000 forgotten with room for 100"
    );
    assert!(kept > 0, "the most recent resources are kept");
    assert!(layer.tracked_resources() <= 100);
}

#[tokio::test]
async fn a_forgotten_resource_never_reissues_an_old_tag_or_date() {
    let clock = support::manual_clock();
    let backend = Backend::default();
    let layer =
        ConditionalLayer::new().store(MemoryStore::new().clock(clock.clone()).max_resources(10));
    let mut service = layer.layer(backend.service());
    clock.advance(SECOND);
    let first = call(&mut service, request(Method::PUT, DOC, &[], "v1")).await;
    clock.advance(SECOND);
    call(&mut service, request(Method::PUT, DOC, &[], "v2")).await;
    let stale_tag = first.tag();
    let stale_date = first.last_modified().unwrap().to_owned();
    for i in 0..50 {
        clock.advance(SECOND);
        call(
            &mut service,
            request(Method::PUT, &format!("/other/{i}"), &[], "x"),
        )
        .await;
    }
    // DOC is forgotten; it comes back and is written again as new: its first tag (counter 1
    // of this instance) must not be issued again.
    call(&mut service, request(Method::PUT, DOC, &[], "v3")).await;
    for (name, value) in [
        ("if-match", &stale_tag),
        ("if-unmodified-since", &stale_date),
    ] {
        let stale = call(
            &mut service,
            request(Method::PUT, DOC, &[(name, value.as_str())], "lost"),
        )
        .await;
        assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED, "{name}");
    }
    assert_eq!(backend.doc(DOC).unwrap(), "v3");
}
