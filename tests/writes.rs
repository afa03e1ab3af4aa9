//! Writes under the resource lock: outcomes that bump, locks released on every path, the order
//! of reads and writes, and tower's readiness contract.

mod support;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use support::{
    call, date_at, poll_once, request, Backend, Reply, FAIL, HOLD, PANIC, SECOND, STATUS,
};
use tower::{Layer, Service, ServiceExt};
use tower_conditional::{clock::ManualClock, store::MemoryStore, Conditional, ConditionalLayer};

const DOC: &str = "/doc";

/// A layered backend at second 1, holding one version of `DOC` dated second 1.
type Layered = Conditional<Backend>;

async fn saved_doc() -> (Backend, ManualClock, Layered) {
    let (clock, backend, mut service) = support::layered();
    clock.advance(SECOND);
    let saved = call(&mut service, request(Method::PUT, DOC, &[], "v1")).await;
    assert_eq!(saved.last_modified(), Some(date_at(1).as_str()));
    clock.advance(SECOND);
    (backend, clock, service)
}

async fn try_call<S, B>(service: &mut S, req: Request<Full<Bytes>>) -> Result<Reply, std::io::Error>
where
    S: Service<Request<Full<Bytes>>, Response = http::Response<B>, Error = std::io::Error>,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let res = service.ready().await?.call(req).await?;
    Ok(Reply::from_response(res).await)
}

/// After a write of unknown outcome: the old date is refused, and the resource is not locked.
async fn assert_bumped_and_writable<S, B>(service: &mut S, backend: &Backend)
where
    S: Service<Request<Full<Bytes>>, Response = http::Response<B>, Error = std::io::Error>,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let stale = try_call(
        service,
        request(
            Method::PUT,
            DOC,
            &[("if-unmodified-since", &date_at(1))],
            "stale",
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        stale.status,
        StatusCode::PRECONDITION_FAILED,
        "the version was not bumped"
    );
    let next = try_call(service, request(Method::PUT, DOC, &[], "next"))
        .await
        .unwrap();
    assert_eq!(next.status, StatusCode::OK);
    assert_eq!(backend.doc(DOC).unwrap(), "next");
}

#[tokio::test]
async fn a_forwarded_write_whose_client_leaves_runs_to_its_end_before_the_next_write() {
    let (backend, _clock, mut service) = saved_doc().await;
    let v1 = date_at(1);
    let held = request(
        Method::PUT,
        DOC,
        &[("if-unmodified-since", &v1), (HOLD, "1")],
        "abandoned",
    );
    let in_flight = ServiceExt::<Request<Full<Bytes>>>::ready(&mut service)
        .await
        .unwrap()
        .call(held);
    let client = tokio::spawn(in_flight);
    backend.arrived().await;
    client.abort(); // the client went away while the backend applies its write
    assert!(client.await.unwrap_err().is_cancelled());

    // A write based on the same version must not be forwarded while the backend may still
    // apply the abandoned one: it waits, then is checked against the abandoned write's result.
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
    let puts = backend
        .methods()
        .iter()
        .filter(|m| **m == Method::PUT)
        .count();
    backend.release();
    assert_eq!(
        next.await.status,
        StatusCode::PRECONDITION_FAILED,
        "the abandoned write bumped the version"
    );
    assert_eq!(
        backend
            .methods()
            .iter()
            .filter(|m| **m == Method::PUT)
            .count(),
        puts
    );
    assert_eq!(backend.doc(DOC).unwrap(), "abandoned");
    assert_bumped_and_writable(&mut service, &backend).await;
}

#[tokio::test]
async fn a_write_whose_backend_fails_bumps_the_version_and_releases_the_lock() {
    let (backend, _clock, mut service) = saved_doc().await;
    let failing = request(
        Method::PUT,
        DOC,
        &[("if-unmodified-since", &date_at(1)), (FAIL, "1")],
        "x",
    );
    assert!(try_call(&mut service, failing).await.is_err());
    assert_bumped_and_writable(&mut service, &backend).await;
}

#[tokio::test]
async fn a_write_whose_backend_panics_is_answered_500_dated_now_and_bumps() {
    let (backend, _clock, mut service) = saved_doc().await;
    let panicking = request(
        Method::PUT,
        DOC,
        &[("if-unmodified-since", &date_at(1)), (PANIC, "1")],
        "x",
    );
    let reply = try_call(&mut service, panicking).await.unwrap();
    assert_eq!(
        reply.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        reply.text()
    );
    assert!(reply.text().contains("panicked"), "{}", reply.text());
    assert_eq!(reply.header(http::header::DATE), Some(date_at(2).as_str()));
    assert_bumped_and_writable(&mut service, &backend).await;
}

/// The runtime a forwarded write's task runs on shuts down while the backend holds the write:
/// its client, waiting elsewhere, is told the outcome is unknown, dated by the layer's clock.
#[test]
fn a_write_whose_task_is_shut_down_is_answered_503_dated_by_the_clock() {
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let first = runtime();
    let (backend, mut service, pending) = first.block_on(async {
        let (backend, _clock, mut service) = saved_doc().await;
        let held = request(Method::PUT, DOC, &[(HOLD, "1")], "held");
        ServiceExt::<Request<Full<Bytes>>>::ready(&mut service)
            .await
            .unwrap();
        let mut pending = Box::pin(service.call(held));
        tokio::select! {
            _ = &mut pending => panic!("answered while the backend holds the write"),
            () = backend.arrived() => {}
        }
        (backend, service, pending)
    });
    drop(first); // drops the write's task, as a shutdown does

    runtime().block_on(async {
        let reply = Reply::from_response(pending.await.unwrap()).await;
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            reply.text()
        );
        assert!(
            reply.text().contains("outcome is unknown"),
            "{}",
            reply.text()
        );
        assert_eq!(reply.header(http::header::DATE), Some(date_at(2).as_str()));
        assert_eq!(reply.header(http::header::RETRY_AFTER), Some("1"));
        assert_bumped_and_writable(&mut service, &backend).await;
    });
}

#[tokio::test]
async fn a_write_answered_5xx_bumps_the_version() {
    let (backend, _clock, mut service) = saved_doc().await;
    let res = call(
        &mut service,
        request(Method::PUT, DOC, &[(STATUS, "500")], "x"),
    )
    .await;
    assert_eq!(res.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_bumped_and_writable(&mut service, &backend).await;
}

#[tokio::test]
async fn a_write_refused_with_4xx_changes_nothing() {
    let (_backend, _clock, mut service) = saved_doc().await;
    let res = call(
        &mut service,
        request(Method::PUT, DOC, &[(STATUS, "409")], "x"),
    )
    .await;
    assert_eq!(res.status, StatusCode::CONFLICT);
    let next = call(
        &mut service,
        request(
            Method::PUT,
            DOC,
            &[("if-unmodified-since", &date_at(1))],
            "y",
        ),
    )
    .await;
    assert_eq!(
        next.status,
        StatusCode::OK,
        "a refused write must not invalidate the client's version"
    );
}

#[tokio::test]
async fn a_read_is_stamped_with_the_version_seen_before_a_write_that_lands_meanwhile() {
    let (backend, _clock, service) = saved_doc().await;
    let mut reader = service.clone();
    let read = tokio::spawn(async move {
        call(&mut reader, request(Method::GET, DOC, &[(HOLD, "1")], "")).await
    });
    backend.arrived().await; // the read has seen version 1 and is in the backend

    let mut writer = service.clone();
    let write = call(
        &mut writer,
        request(
            Method::PUT,
            DOC,
            &[("if-unmodified-since", &date_at(1))],
            "v2",
        ),
    )
    .await;
    assert_eq!(write.last_modified(), Some(date_at(2).as_str()));

    backend.release();
    let read = read.await.unwrap();
    assert_eq!(read.text(), "v2", "the backend served the newer data");
    assert_eq!(
        read.last_modified(),
        Some(date_at(1).as_str()),
        "stamped older than the data, never newer"
    );
    let stale = call(
        &mut writer,
        request(
            Method::PUT,
            DOC,
            &[("if-unmodified-since", &date_at(1))],
            "x",
        ),
    )
    .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
}

#[tokio::test]
async fn a_read_during_a_write_neither_waits_nor_sees_the_unfinished_version() {
    let (backend, _clock, service) = saved_doc().await;
    let mut writer = service.clone();
    let write = tokio::spawn(async move {
        let v1 = date_at(1);
        let headers = [("if-unmodified-since", v1.as_str()), (HOLD, "1")];
        call(&mut writer, request(Method::PUT, DOC, &headers, "v2")).await
    });
    backend.arrived().await; // the write holds the lock and is in the backend

    let mut reader = service.clone();
    let read = call(&mut reader, request(Method::GET, DOC, &[], "")).await;
    assert_eq!(
        read.last_modified(),
        Some(date_at(1).as_str()),
        "not bumped before the write's answer"
    );
    let revalidated = call(
        &mut reader,
        request(Method::GET, DOC, &[("if-modified-since", &date_at(1))], ""),
    )
    .await;
    assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED);

    backend.release();
    let write = write.await.unwrap();
    assert_eq!(write.status, StatusCode::OK);
    assert_eq!(write.last_modified(), Some(date_at(2).as_str()));
    let after = call(
        &mut reader,
        request(Method::GET, DOC, &[("if-modified-since", &date_at(1))], ""),
    )
    .await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(after.last_modified(), Some(date_at(2).as_str()));
}

#[tokio::test]
async fn a_second_write_waits_for_the_first_and_is_checked_against_its_result() {
    let (backend, _clock, service) = saved_doc().await;
    let based_on_v1 = |body: &'static str, hold: bool| {
        let mut headers = vec![("if-unmodified-since", date_at(1))];
        if hold {
            headers.push((HOLD, "1".into()));
        }
        let headers: Vec<_> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        request(Method::PUT, DOC, &headers, body)
    };
    let mut first = service.clone();
    let first = tokio::spawn(async move { call(&mut first, based_on_v1("first", true)).await });
    backend.arrived().await;

    let mut second_service = service.clone();
    let mut second =
        Box::pin(async move { call(&mut second_service, based_on_v1("second", false)).await });
    assert!(
        poll_once(&mut second).await.is_pending(),
        "the second write waits for the lock"
    );
    let hits = backend.hits();

    backend.release();
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
    let second = second.await;
    assert_eq!(
        second.status,
        StatusCode::PRECONDITION_FAILED,
        "both were based on version 1"
    );
    assert_eq!(backend.hits(), hits, "the loser never reached the backend");
    assert_eq!(backend.doc(DOC).unwrap(), "first");
}

#[tokio::test]
async fn writes_to_different_resources_do_not_wait_on_each_other() {
    let (backend, _clock, service) = saved_doc().await;
    let mut first = service.clone();
    let held = tokio::spawn(async move {
        call(
            &mut first,
            request(Method::PUT, DOC, &[(HOLD, "1")], "slow"),
        )
        .await
    });
    backend.arrived().await;

    // The held write keeps its lock until released below, so this only finishes if it does
    // not wait for that lock; the timeout turns a wrong wait into a failure instead of a hang.
    let mut other = service.clone();
    let write = call(&mut other, request(Method::PUT, "/other", &[], "fast"));
    let done = tokio::time::timeout(std::time::Duration::from_secs(30), write)
        .await
        .expect("a write to another resource waited for the held one");
    assert_eq!(done.status, StatusCode::OK);
    assert!(!held.is_finished());
    backend.release();
    assert_eq!(held.await.unwrap().status, StatusCode::OK);
}

/// A service that panics when called without a successful `poll_ready` first; clones start
/// unready, as tower's contract allows.
struct MustBeReady<S> {
    inner: S,
    ready: bool,
    calls: Arc<AtomicUsize>,
}

impl<S: Clone> Clone for MustBeReady<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            ready: false,
            calls: self.calls.clone(),
        }
    }
}

impl<S: Service<R>, R> Service<R> for MustBeReady<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        let poll = self.inner.poll_ready(cx);
        self.ready = poll.is_ready();
        poll
    }

    fn call(&mut self, req: R) -> S::Future {
        assert!(self.ready, "called without poll_ready");
        self.ready = false;
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.call(req)
    }
}

#[tokio::test]
async fn a_write_that_waits_for_its_lock_calls_the_service_that_was_readied() {
    let backend = Backend::default();
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = MustBeReady {
        inner: backend.service(),
        ready: false,
        calls: calls.clone(),
    };
    let mut service = ConditionalLayer::new().layer(inner);

    ServiceExt::<Request<Full<Bytes>>>::ready(&mut service)
        .await
        .unwrap();
    let held = tokio::spawn(service.call(request(Method::PUT, DOC, &[(HOLD, "1")], "first")));
    backend.arrived().await;
    ServiceExt::<Request<Full<Bytes>>>::ready(&mut service)
        .await
        .unwrap();
    let waiting = tokio::spawn(service.call(request(Method::PUT, DOC, &[], "second")));
    // The layer kept a clone that was never readied: it must be readied again before use.
    let read = call(&mut service, request(Method::GET, DOC, &[], "")).await;
    assert_eq!(read.status, StatusCode::NOT_FOUND);

    backend.release();
    assert_eq!(held.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(waiting.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(backend.doc(DOC).unwrap(), "second");
}

#[tokio::test]
async fn a_probe_that_fails_returns_the_inner_error_and_leaves_the_resource_writable() {
    let backend = Backend::default();
    let mut service = ConditionalLayer::new().layer(backend.service());
    // The probe copies the request's headers, so the backend fails the HEAD too.
    let create = request(
        Method::PUT,
        DOC,
        &[("if-none-match", "*"), (FAIL, "1")],
        "x",
    );
    assert!(try_call(&mut service, create).await.is_err());
    assert_eq!(
        backend.methods(),
        [Method::HEAD],
        "only the probe reached the backend"
    );
    let create = request(Method::PUT, DOC, &[("if-none-match", "*")], "created");
    assert_eq!(
        try_call(&mut service, create).await.unwrap().status,
        StatusCode::OK
    );
    assert_eq!(backend.doc(DOC).unwrap(), "created");
}

/// With `verify_writes`, the backend is read under the lock once a write succeeded. A backend
/// that panics in that read (once) leaves the write's outcome unknown: the version is bumped all the
/// same, so a validator from before the write cannot overwrite it.
#[tokio::test]
async fn a_verified_write_whose_follow_up_read_panics_still_bumps() {
    // 0: nothing written yet; 1: the first write arrived; 2: the read after it panicked.
    let state = Arc::new(AtomicUsize::new(0));
    let backend = {
        let state = state.clone();
        tower::service_fn(move |req: Request<Full<Bytes>>| {
            let state = state.clone();
            async move {
                let (from, to) = if req.method() == Method::PUT {
                    (0, 1)
                } else {
                    (1, 2)
                };
                let moved = state.compare_exchange(from, to, Ordering::SeqCst, Ordering::SeqCst);
                if moved == Ok(1) {
                    panic!("the backend fails its first read after a write");
                }
                Ok::<_, std::io::Error>(http::Response::new(Full::new(Bytes::from_static(b"doc"))))
            }
        })
    };
    let clock = support::manual_clock();
    let layer = ConditionalLayer::new()
        .store(MemoryStore::new().clock(clock.clone()))
        .verify_writes(true);
    let mut service = layer.layer(backend);
    clock.advance(SECOND);
    let tag = call(&mut service, request(Method::GET, DOC, &[], ""))
        .await
        .tag();
    let mut writer = service.clone();
    let write = request(Method::PUT, DOC, &[("if-match", &tag)], "v2");
    // A panic, or an answer saying the outcome is unknown: either way, the write reached the
    // backend.
    let _ =
        tokio::spawn(async move { writer.ready().await.unwrap().call(write).await.is_ok() }).await;
    let stale = request(Method::PUT, DOC, &[("if-match", &tag)], "from before v2");
    assert_eq!(
        call(&mut service, stale).await.status,
        StatusCode::PRECONDITION_FAILED,
        "a validator from before a write of unknown outcome was accepted"
    );
}
