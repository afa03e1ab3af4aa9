//! Writers that bypass the layer: a backend with a side door (a write that does not go through
//! the layer), of three kinds — one that sends its own `ETag`, one that sends only
//! `Last-Modified`, one that sends no validator at all — behind the layer on real sockets.

mod support;

use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::{Duration, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use support::{HttpClient, Reply, ServedBody, SECOND};
use tokio::sync::{mpsc, Semaphore};
use tower::{Layer, Service};
use tower_conditional::{clock::ManualClock, store::MemoryStore, ConditionalLayer};

const DOC: &str = "/doc";
/// Holds a write (announces it, then waits for `release`) before the backend checks `If-Match`.
const HOLD: &str = "x-test-hold";

/// Which validator the backend sends.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Validator {
    ETag,
    LastModified,
    None,
}

/// A storage backend with validators of its own and a side door. `GET`/`HEAD` answer `304` to
/// a matching `If-None-Match` / `If-Modified-Since`; writes check `If-Match` against its tag.
#[derive(Clone)]
struct SideDoorBackend {
    validator: Validator,
    state: Arc<State>,
}

struct State {
    /// Per path: the body and the backend's own revision.
    docs: Mutex<HashMap<String, (Bytes, u64)>>,
    hits: AtomicUsize,
    not_modified: AtomicUsize,
    held: mpsc::UnboundedSender<()>,
    arrived: tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>,
    open: Semaphore,
}

impl SideDoorBackend {
    fn new(validator: Validator) -> Self {
        let (held, arrived) = mpsc::unbounded_channel();
        Self {
            validator,
            state: Arc::new(State {
                docs: Mutex::default(),
                hits: AtomicUsize::new(0),
                not_modified: AtomicUsize::new(0),
                held,
                arrived: tokio::sync::Mutex::new(arrived),
                open: Semaphore::new(0),
            }),
        }
    }

    /// A write that does not go through the layer.
    fn write_directly(&self, path: &str, body: &str) {
        let mut docs = self.state.docs.lock().unwrap();
        let revision = docs.get(path).map_or(0, |(_, r)| *r) + 1;
        docs.insert(path.to_owned(), (Bytes::from(body.to_owned()), revision));
    }

    /// A delete that does not go through the layer.
    fn delete_directly(&self, path: &str) {
        self.state.docs.lock().unwrap().remove(path);
    }

    /// How many `304`s the backend itself gave.
    fn not_modified(&self) -> usize {
        self.state.not_modified.load(Ordering::SeqCst)
    }

    fn doc(&self, path: &str) -> Bytes {
        self.state.docs.lock().unwrap()[path].0.clone()
    }

    fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    async fn arrived(&self) {
        self.state.arrived.lock().await.recv().await;
    }

    fn release(&self) {
        self.state.open.add_permits(1);
    }

    /// The validator of `revision`, as this backend spells it.
    fn validator(&self, revision: u64) -> Option<(header::HeaderName, HeaderValue)> {
        match self.validator {
            Validator::ETag => Some((
                header::ETAG,
                HeaderValue::from_str(&format!("\"rev-{revision}\"")).unwrap(),
            )),
            Validator::LastModified => {
                // One second per revision: every revision has a date of its own.
                let date = UNIX_EPOCH + Duration::from_secs(1_600_000_000 + revision);
                let date = httpdate::fmt_http_date(date);
                Some((header::LAST_MODIFIED, HeaderValue::from_str(&date).unwrap()))
            }
            Validator::None => None,
        }
    }

    async fn handle(self, req: Request<ServedBody>) -> Response<Full<Bytes>> {
        self.state.hits.fetch_add(1, Ordering::SeqCst);
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_owned();
        let header = |name| {
            parts
                .headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
        };
        let current = self.state.docs.lock().unwrap().get(&path).cloned();
        match parts.method {
            Method::GET | Method::HEAD => {
                let Some((body, revision)) = current else {
                    return reply(StatusCode::NOT_FOUND, Bytes::new(), None);
                };
                let validator = self.validator(revision);
                if let Some((name, value)) = &validator {
                    let condition = match *name {
                        header::ETAG => header(header::IF_NONE_MATCH),
                        _ => header(header::IF_MODIFIED_SINCE),
                    };
                    if condition == value.to_str().ok() {
                        self.state.not_modified.fetch_add(1, Ordering::SeqCst);
                        return reply(StatusCode::NOT_MODIFIED, Bytes::new(), validator);
                    }
                }
                let body = if parts.method == Method::HEAD {
                    Bytes::new()
                } else {
                    body
                };
                reply(StatusCode::OK, body, validator)
            }
            _ => {
                let body = body.collect().await.unwrap().to_bytes();
                if parts.headers.contains_key(HOLD) {
                    self.state.held.send(()).unwrap();
                    self.state.open.acquire().await.unwrap().forget();
                }
                let mut docs = self.state.docs.lock().unwrap();
                let revision = docs.get(&path).map_or(0, |(_, r)| *r);
                if let Some(expected) = header(header::IF_MATCH) {
                    let current = self.validator(revision).map(|(_, v)| v);
                    if current.as_ref().and_then(|v| v.to_str().ok()) != Some(expected) {
                        return reply(StatusCode::PRECONDITION_FAILED, Bytes::new(), None);
                    }
                }
                docs.insert(path, (body, revision + 1));
                reply(StatusCode::OK, Bytes::new(), self.validator(revision + 1))
            }
        }
    }
}

fn reply(
    status: StatusCode,
    body: Bytes,
    validator: Option<(header::HeaderName, HeaderValue)>,
) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(body));
    *res.status_mut() = status;
    if let Some((name, value)) = validator {
        res.headers_mut().insert(name, value);
    }
    res
}

impl Service<Request<ServedBody>> for SideDoorBackend {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ServedBody>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(req).await) })
    }
}

/// The backend behind a layer on a manual clock, served on loopback.
async fn behind(
    validator: Validator,
    configure: impl FnOnce(ConditionalLayer) -> ConditionalLayer,
) -> (SideDoorBackend, ManualClock, HttpClient) {
    let backend = SideDoorBackend::new(validator);
    let clock = support::manual_clock();
    let layer = configure(ConditionalLayer::new().store(MemoryStore::new().clock(clock.clone())));
    let addr = support::serve(layer.layer(backend.clone())).await;
    clock.advance(SECOND);
    (backend, clock, HttpClient::new(addr))
}

const KINDS: [Validator; 3] = [Validator::ETag, Validator::LastModified, Validator::None];

#[tokio::test]
async fn after_the_window_a_bypassing_write_is_shown_and_stale_writers_get_412() {
    for kind in KINDS {
        let (backend, clock, client) = behind(kind, |layer| {
            layer
                .revalidate_after(Duration::from_secs(5))
                .verify_writes(true)
        })
        .await;
        let saved = client.send(Method::PUT, DOC, &[], "v1").await;
        assert_eq!(saved.status, StatusCode::OK, "{kind:?}");
        let read = client.send(Method::GET, DOC, &[], "").await;
        assert_eq!(read.status, StatusCode::OK);
        let (t1, d1) = (read.tag(), read.last_modified().unwrap().to_owned());
        clock.advance(SECOND);

        // Within the window, 304s come from the table: the backend sees neither.
        let hits = backend.hits();
        for _ in 0..2 {
            let cached = client
                .send(Method::GET, DOC, &[("if-none-match", &t1)], "")
                .await;
            assert_eq!(cached.status, StatusCode::NOT_MODIFIED, "{kind:?}");
        }
        assert_eq!(
            backend.hits(),
            hits,
            "{kind:?}: a 304 within the window reached the backend"
        );

        backend.write_directly(DOC, "bypass");
        clock.advance(Duration::from_secs(5));

        // After the window: the new data, under a new version.
        let fresh = client
            .send(Method::GET, DOC, &[("if-none-match", &t1)], "")
            .await;
        assert_eq!(fresh.status, StatusCode::OK, "{kind:?}");
        assert_eq!(fresh.text(), "bypass", "{kind:?}");
        assert_ne!(fresh.tag(), t1, "{kind:?}");
        fresh.assert_dates_truthful();

        // Writers holding the version from before the bypass are refused; it survives.
        for (condition, value) in [("if-match", &t1), ("if-unmodified-since", &d1)] {
            let stale = client
                .send(Method::PUT, DOC, &[(condition, value)], "stale")
                .await;
            assert_eq!(
                stale.status,
                StatusCode::PRECONDITION_FAILED,
                "{kind:?} {condition}"
            );
        }
        assert_eq!(backend.doc(DOC), "bypass", "{kind:?}");

        // A client that re-reads can write again.
        let reread = client.send(Method::GET, DOC, &[], "").await;
        let ok = client
            .send(Method::PUT, DOC, &[("if-match", &reread.tag())], "v2")
            .await;
        assert_eq!(ok.status, StatusCode::OK, "{kind:?}");
        assert_eq!(backend.doc(DOC), "v2", "{kind:?}");
    }
}

#[tokio::test]
async fn verify_writes_refuses_a_writer_that_predates_an_unseen_bypass() {
    for kind in KINDS {
        let (backend, clock, client) = behind(kind, |layer| layer.verify_writes(true)).await;
        let saved = client.send(Method::PUT, DOC, &[], "v1").await;
        let t1 = saved.tag();
        clock.advance(SECOND);
        let d1 = client
            .send(Method::GET, DOC, &[], "")
            .await
            .last_modified()
            .unwrap()
            .to_owned();

        // No read through the layer sees the bypass: only the write's own check can.
        backend.write_directly(DOC, "bypass");
        for (condition, value) in [("if-match", &t1), ("if-unmodified-since", &d1)] {
            let stale = client
                .send(Method::PUT, DOC, &[(condition, value)], "stale")
                .await;
            assert_eq!(
                stale.status,
                StatusCode::PRECONDITION_FAILED,
                "{kind:?} {condition}"
            );
        }
        assert_eq!(backend.doc(DOC), "bypass", "{kind:?}");
    }
}

#[tokio::test]
async fn without_detection_the_table_is_trusted_as_before() {
    let (backend, clock, client) = behind(Validator::ETag, |layer| layer).await;
    let t1 = client.send(Method::PUT, DOC, &[], "v1").await.tag();
    clock.advance(SECOND);
    backend.write_directly(DOC, "bypass");
    clock.advance(Duration::from_secs(60));
    let cached = client
        .send(Method::GET, DOC, &[("if-none-match", &t1)], "")
        .await;
    assert_eq!(
        cached.status,
        StatusCode::NOT_MODIFIED,
        "the documented default"
    );
}

#[tokio::test]
async fn a_forwarded_read_notices_a_bypass_and_stamps_the_new_version() {
    for kind in KINDS {
        let (backend, clock, client) = behind(kind, |layer| layer.fingerprint_reads(true)).await;
        client.send(Method::PUT, DOC, &[], "v1").await;
        let first = client.send(Method::GET, DOC, &[], "").await;
        clock.advance(SECOND);
        backend.write_directly(DOC, "bypass");
        let second = client.send(Method::GET, DOC, &[], "").await;
        assert_eq!(second.text(), "bypass");
        assert_ne!(
            second.tag(),
            first.tag(),
            "{kind:?}: new data under the old version"
        );
        let stale = client
            .send(Method::PUT, DOC, &[("if-match", &first.tag())], "stale")
            .await;
        assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED, "{kind:?}");
        assert_eq!(backend.doc(DOC), "bypass");
    }
}

/// The race `forward_validators` closes: a bypassing write lands after the layer verified the
/// resource and before the backend applies the write. The backend refuses it on its own tag.
#[tokio::test]
async fn forwarded_validators_let_the_backend_refuse_a_write_that_lost_a_race() {
    let (backend, _clock, client) = behind(Validator::ETag, |layer| {
        layer.verify_writes(true).forward_validators(true)
    })
    .await;
    let t1 = client.send(Method::PUT, DOC, &[], "v1").await.tag();
    let racing = tokio::spawn({
        let (client, t1) = (client.clone(), t1.clone());
        async move {
            client
                .send(
                    Method::PUT,
                    DOC,
                    &[("if-match", &t1), (HOLD, "1")],
                    "lost race",
                )
                .await
        }
    });
    backend.arrived().await; // verified, forwarded, held before the backend checks
    backend.write_directly(DOC, "bypass");
    backend.release();
    let refused: Reply = racing.await.unwrap();
    assert_eq!(
        refused.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        refused.text()
    );
    assert_ne!(refused.tag(), t1, "the 412 carries the bumped version");
    assert_eq!(backend.doc(DOC), "bypass");
    let again = client
        .send(Method::PUT, DOC, &[("if-match", &t1)], "again")
        .await;
    assert_eq!(again.status, StatusCode::PRECONDITION_FAILED);
}

/// A body without validators too large to hold is hashed as it streams: the change it carries
/// is learned at its end (the response itself keeps the older stamp), and nothing is lost.
#[tokio::test]
async fn a_large_body_is_fingerprinted_as_it_streams() {
    let (backend, clock, client) = behind(Validator::None, |layer| {
        layer.revalidate_after(Duration::ZERO)
    })
    .await;
    let large = |fill: char| fill.to_string().repeat(2 * 1024 * 1024);
    client.send(Method::PUT, DOC, &[], &large('a')).await;
    let first = client.send(Method::GET, DOC, &[], "").await;
    assert_eq!(first.body.len(), 2 * 1024 * 1024);
    clock.advance(SECOND);
    backend.write_directly(DOC, &large('b'));

    let carrying = client.send(Method::GET, DOC, &[], "").await;
    assert_eq!(carrying.body, large('b'));
    // Learned once its body has streamed through (in a task): a read that names the old
    // version gets 412 from the table once it is. Polled, bounded.
    let mut learned = false;
    for _ in 0..500 {
        let check = client
            .send(Method::HEAD, DOC, &[("if-match", &first.tag())], "")
            .await;
        if check.status == StatusCode::PRECONDITION_FAILED {
            learned = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        learned,
        "the change a streamed body carried was never learned"
    );
    let stale = client
        .send(Method::PUT, DOC, &[("if-match", &first.tag())], "stale")
        .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(backend.doc(DOC), large('b'));
}

/// After the window, an unchanged resource is confirmed by one request to the backend, with
/// the backend's own validator (so it can answer `304` itself), and the client gets its `304`.
#[tokio::test]
async fn after_the_window_an_unchanged_resource_is_confirmed_by_one_backend_request() {
    for kind in KINDS {
        let (backend, clock, client) =
            behind(kind, |layer| layer.revalidate_after(Duration::from_secs(5))).await;
        client.send(Method::PUT, DOC, &[], "v1").await;
        let t1 = client.send(Method::GET, DOC, &[], "").await.tag();
        clock.advance(Duration::from_secs(10));
        let hits = backend.hits();
        let confirmed = client
            .send(Method::GET, DOC, &[("if-none-match", &t1)], "")
            .await;
        assert_eq!(confirmed.status, StatusCode::NOT_MODIFIED, "{kind:?}");
        assert_eq!(confirmed.tag(), t1, "{kind:?}: confirmed, not bumped");
        assert_eq!(backend.hits(), hits + 1, "{kind:?}");
        // With a validator of its own, the backend was asked with it and answered 304 itself.
        let cheap = usize::from(kind != Validator::None);
        assert_eq!(backend.not_modified(), cheap, "{kind:?}");
        // Confirmed now: the next one stays in the table.
        let cached = client
            .send(Method::GET, DOC, &[("if-none-match", &t1)], "")
            .await;
        assert_eq!(cached.status, StatusCode::NOT_MODIFIED);
        assert_eq!(backend.hits(), hits + 1, "{kind:?}");
    }
}

/// Two layers (as two proxies would) on one Redis: what one saw the backend serve, the other
/// compares with, and the version they bump is the one both check.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_layers_on_one_redis_share_the_fingerprint() {
    use support::redis_server::RedisServer;
    use tower_conditional::store::RedisStore;

    let redis = RedisServer::start().await;
    let backend = SideDoorBackend::new(Validator::ETag);
    let mut clients = Vec::new();
    for _ in 0..2 {
        let store = RedisStore::open(&redis.url()).unwrap();
        let layer = ConditionalLayer::new()
            .store(store)
            .revalidate_after(Duration::ZERO);
        clients.push(HttpClient::new(
            support::serve(layer.layer(backend.clone())).await,
        ));
    }
    let (a, b) = (&clients[0], &clients[1]);
    // The first calls may meet the store still connecting (503): bounded retries.
    let mut saved = None;
    for _ in 0..100 {
        let reply = a.send(Method::PUT, DOC, &[], "v1").await;
        if reply.status != StatusCode::SERVICE_UNAVAILABLE {
            saved = Some(reply);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(saved.expect("Redis answered").status, StatusCode::OK);
    let t1 = a.send(Method::GET, DOC, &[], "").await.tag();

    backend.write_directly(DOC, "bypass");
    let seen_by_b = b
        .send(Method::GET, DOC, &[("if-none-match", &t1)], "")
        .await;
    assert_eq!(seen_by_b.status, StatusCode::OK);
    assert_eq!(seen_by_b.text(), "bypass");
    assert_ne!(seen_by_b.tag(), t1);
    let stale_at_a = a
        .send(Method::PUT, DOC, &[("if-match", &t1)], "stale")
        .await;
    assert_eq!(stale_at_a.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(backend.doc(DOC), "bypass");
}

/// The proxy binary in front of a backend that another client writes to directly, over HTTP.
#[tokio::test]
async fn the_proxy_notices_a_write_made_straight_to_the_backend() {
    let backend = SideDoorBackend::new(Validator::LastModified);
    let upstream = support::serve(backend.clone()).await;
    let (_proxy, addr) = support::proxy::start_proxy(&[
        "--upstream",
        &format!("http://{upstream}"),
        "--revalidate-after",
        "0",
        "--verify-writes",
    ])
    .await;
    let (through, straight) = (HttpClient::new(addr), HttpClient::new(upstream));
    assert_eq!(
        through.send(Method::PUT, DOC, &[], "v1").await.status,
        StatusCode::OK
    );
    let t1 = through.send(Method::GET, DOC, &[], "").await.tag();

    let bypass = straight.send(Method::PUT, DOC, &[], "bypass").await;
    assert_eq!(bypass.status, StatusCode::OK);

    let stale = through
        .send(Method::PUT, DOC, &[("if-match", &t1)], "stale")
        .await;
    assert_eq!(
        stale.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        stale.text()
    );
    let fresh = through
        .send(Method::GET, DOC, &[("if-none-match", &t1)], "")
        .await;
    assert_eq!(fresh.status, StatusCode::OK);
    assert_eq!(fresh.text(), "bypass");
    assert_eq!(backend.doc(DOC), "bypass");
}

/// A bypass right after a write through the layer, with no read in between: the layer recorded
/// what the backend served after its own write (the write's validator, else read under the
/// lock), so the first read after the bypass is a change, not a first sight. Each setting alone.
#[tokio::test]
async fn a_bypass_right_after_a_write_through_the_layer_is_noticed() {
    for kind in KINDS {
        // Revalidation alone: the client that wrote gets the bypassing data, not a 304.
        let (backend, clock, client) =
            behind(kind, |layer| layer.revalidate_after(Duration::from_secs(5))).await;
        let t1 = client.send(Method::PUT, DOC, &[], "v1").await.tag();
        backend.write_directly(DOC, "bypass");
        clock.advance(Duration::from_secs(10));
        let fresh = client
            .send(Method::GET, DOC, &[("if-none-match", &t1)], "")
            .await;
        assert_eq!(fresh.status, StatusCode::OK, "{kind:?}");
        assert_eq!(fresh.text(), "bypass");
        assert_ne!(fresh.tag(), t1, "{kind:?}");

        // Fingerprinted reads alone: a plain read shows the change, and the writer's next
        // write is refused.
        let (backend, clock, client) = behind(kind, |layer| layer.fingerprint_reads(true)).await;
        let t1 = client.send(Method::PUT, DOC, &[], "v1").await.tag();
        clock.advance(SECOND);
        backend.write_directly(DOC, "bypass");
        let read = client.send(Method::GET, DOC, &[], "").await;
        assert_ne!(read.tag(), t1, "{kind:?}");
        let stale = client
            .send(Method::PUT, DOC, &[("if-match", &t1)], "stale")
            .await;
        assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED, "{kind:?}");
        assert_eq!(backend.doc(DOC), "bypass");
    }
}

/// A delete that bypasses the layer: the resource is absent, so a create-only write proceeds
/// and a write that requires it to exist is refused.
#[tokio::test]
async fn a_bypassing_delete_makes_the_resource_absent() {
    for kind in KINDS {
        let (backend, clock, client) = behind(kind, |layer| layer.verify_writes(true)).await;
        client.send(Method::PUT, DOC, &[], "v1").await;
        clock.advance(SECOND);
        backend.delete_directly(DOC);
        let must_exist = client
            .send(Method::PUT, DOC, &[("if-match", "*")], "x")
            .await;
        assert_eq!(
            must_exist.status,
            StatusCode::PRECONDITION_FAILED,
            "{kind:?}"
        );
        let create = client
            .send(Method::PUT, DOC, &[("if-none-match", "*")], "created")
            .await;
        assert_eq!(create.status, StatusCode::OK, "{kind:?}: {}", create.text());
        assert_eq!(backend.doc(DOC), "created");
    }
}

/// A large body without validator, revalidated with the client's tag: the client gets the
/// representation (200), never a 304 the layer could not confirm.
#[tokio::test]
async fn a_large_body_is_never_revalidated_into_an_unconfirmed_304() {
    let (backend, clock, client) = behind(Validator::None, |layer| {
        layer.revalidate_after(Duration::ZERO)
    })
    .await;
    let large = |fill: char| fill.to_string().repeat(1024 * 1024);
    let t1 = client.send(Method::PUT, DOC, &[], &large('a')).await.tag();
    clock.advance(SECOND);
    backend.write_directly(DOC, &large('b'));
    let revalidated = client
        .send(Method::GET, DOC, &[("if-none-match", &t1)], "")
        .await;
    assert_eq!(revalidated.status, StatusCode::OK);
    assert_eq!(revalidated.body, large('b'));
}
