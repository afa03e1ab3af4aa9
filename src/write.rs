//! Writes: buffered, then evaluated, forwarded and recorded under their resource's write lock.
//!
//! A write goes through these steps, in the request's own future until it is forwarded:
//!
//! 1. its body is read in full (up to [`Config::max_body`]) **before** the lock is taken, so a
//!    slow upload never holds the resource;
//! 2. the resource's lock is taken, waiting at most [`Config::lock_timeout`] (else `503`);
//! 3. the preconditions are decided, asking the inner service whether the resource exists if
//!    a `*` needs it;
//! 4. the write is forwarded; unless the inner service answers at once, it goes on in a task of
//!    its own, which runs to the inner service's answer (or [`Config::write_timeout`]) even if
//!    the client leaves; then the outcome is recorded and the lock released. Otherwise the next
//!    writer could be forwarded while the backend still applies an abandoned write, and one of
//!    the two would be lost.

use std::{
    future::{poll_fn, Future},
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::Arc,
    task::Poll,
    time::Duration,
};

use bytes::Bytes;
use http::{header::IF_MATCH, request::Parts, HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Limited};
use tokio::sync::oneshot;
use tower_service::Service;

use crate::{
    answer::{self, Answer},
    fingerprint::{self, Bypass, Fingerprint},
    metrics::{Access, InFlight, Metrics, StoreOp, Timer},
    precondition::{self, Conditions, Decision, Failed, Verdict},
    request_body::{bodiless, FromBytes},
    store::Snapshot,
    store::{Existence, StoreError, VersionStore},
    version::existence_of,
};

/// The limits a layer puts on writes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub(crate) require_precondition: bool,
    /// The largest write body read before the lock is taken; a larger one gets 413.
    pub(crate) max_body: usize,
    /// How long a write waits for its resource's lock before it gets 503.
    pub(crate) lock_timeout: Duration,
    /// How long a forwarded write may take before the client gets 504.
    pub(crate) write_timeout: Duration,
    /// How long a resource stays locked after a write timed out (here or upstream, 504).
    pub(crate) timeout_grace: Duration,
    /// Writers that bypass the layer: what the layer does to notice them.
    pub(crate) bypass: Bypass,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            require_precondition: false,
            max_body: 8 * 1024 * 1024,
            lock_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            timeout_grace: Duration::from_secs(5),
            bypass: Bypass::default(),
        }
    }
}

impl Config {
    /// The longest a write holds its resource's lock: the existence probe and the write (and,
    /// when the layer watches for writers that bypass it, the verification before and the
    /// reading after), each bounded by the write timeout, the grace period after a timeout, and
    /// a second for the store's own calls. A store whose locks expire (leases) keeps them at
    /// least this long.
    pub(crate) fn lock_hold(&self) -> Duration {
        let calls = if self.bypass.any() { 4 } else { 2 };
        self.write_timeout
            .saturating_mul(calls)
            .saturating_add(self.timeout_grace)
            .saturating_add(Duration::from_secs(1))
    }
}

/// What became of a write once it was prepared.
pub(crate) enum Prepared<R, E> {
    /// The layer answers.
    Answer(Answer),
    /// The write was forwarded and is done: the inner service answered it at once.
    Written(Outcome<R, E>),
    /// The write runs in its own task, which reports here.
    Forwarded(oneshot::Receiver<Outcome<R, E>>),
}

/// What became of a forwarded write.
pub(crate) enum Outcome<R, E> {
    Response(Result<R, E>),
    /// The layer answers instead (the backend refused a validator the layer forwarded, or a
    /// success could not be recorded).
    Answer(Answer),
    TimedOut,
    /// The inner service's future panicked.
    Panicked,
}

/// Steps 1 to 4 for one write; `inner` has been readied for it.
pub(crate) async fn prepare<S, ReqBody, ResBody, Key, St>(
    inner: S,
    request: Request<ReqBody>,
    key: Key,
    store: Arc<St>,
    config: Config,
    metrics: Metrics,
) -> Result<Prepared<S::Response, S::Error>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: FromBytes + Send + 'static,
    Key: Clone + Send + Sync + 'static,
    St: VersionStore<Key>,
{
    let (parts, body) = request.into_parts();
    let answer = match read_body(body, config.max_body).await {
        Ok(body) => {
            let request = Request::from_parts(parts, ReqBody::from_bytes(body));
            match forward_locked(inner, request, key, &store, config, &metrics).await {
                Ok(Prepared::Answer(answer)) => answer,
                Ok(forwarded) => return Ok(forwarded),
                Err(Refused::Inner(err)) => return Err(err),
                Err(Refused::Store(err)) => {
                    tracing::warn!(error = %err, "write refused");
                    Answer::store_unavailable(store.now())
                }
            }
        }
        Err(refused) => refused.answer(store.now()),
    };
    metrics.answered(answer.said());
    Ok(Prepared::Answer(answer))
}

/// Steps 2 to 4: takes the lock, decides, and forwards the write in a task that keeps the lock
/// until its outcome is recorded.
async fn forward_locked<S, ReqBody, ResBody, Key, St>(
    mut inner: S,
    request: Request<ReqBody>,
    key: Key,
    store: &Arc<St>,
    config: Config,
    metrics: &Metrics,
) -> Result<Prepared<S::Response, S::Error>, Refused<S::Error>>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: FromBytes + Send + 'static,
    Key: Clone + Send + Sync + 'static,
    St: VersionStore<Key>,
{
    let waiting = Timer::start();
    let lock = store
        .lock(&key, config.lock_timeout, config.lock_hold())
        .await;
    metrics.lock_waited(waiting);
    let Some(lock) = lock? else {
        return Ok(Prepared::Answer(Answer::lock_busy(store.now())));
    };
    // The body stays out of the awaits below: it need not be `Sync`.
    let (mut parts, body) = request.into_parts();
    let decided = decide_locked(&mut inner, &parts, &key, &**store, &lock, config, metrics);
    let seen = match decided.await? {
        Decided::Answer(answer) => return Ok(Prepared::Answer(answer)),
        Decided::Forward(seen) => seen,
    };

    precondition::remove_conditions(&mut parts.headers);
    let bypass = config.bypass;
    // The backend checks its own tag too: a bypassing write landing from now on is refused.
    let guarded = match seen.fingerprint.as_ref().and_then(Fingerprint::strong_tag) {
        Some(tag) if bypass.forward_validators => {
            parts.headers.insert(IF_MATCH, tag.clone());
            true
        }
        _ => false,
    };
    // What the backend serves once the write is done, read under the lock, unless the
    // write's own response says.
    let follow_up = bypass.any().then(|| {
        let mut follow = inner.clone();
        let (head, get) = (
            bodiless(Method::HEAD, &parts),
            bodiless(Method::GET, &parts),
        );
        let timeout = config.write_timeout;
        Box::pin(async move {
            let probe = async {
                poll_fn(|cx| follow.poll_ready(cx)).await?;
                fingerprint::probe(&mut follow, head, get).await
            };
            tokio::time::timeout(timeout, probe).await.ok()?.ok()?
        }) as FollowUp
    });
    let request = Request::from_parts(parts, body);
    let on_success = match *request.method() {
        Method::DELETE => Existence::Absent,
        _ => Existence::Exists,
    };
    let in_flight = WriteInFlight {
        store: store.clone(),
        key,
        on_success,
        lock: Some(lock),
        guarded,
        follow_up,
        metrics: metrics.clone(),
        _counted: metrics.in_flight(),
    };
    // Boxed: it may be spawned, and tokio moves a spawned future, and its task's stage, whole
    // several times; this one is over a kilobyte, and a box is one allocation and one copy.
    let mut write = Box::pin(run(inner.call(request), in_flight, config));
    // Polled once here first: a write the inner service answers at once (an in-process
    // backend) is then done, and needs no task nor channel. Any other goes on in a task of its
    // own, where it is polled again (with that task's waker) even if this request's client
    // leaves.
    if let Poll::Ready(outcome) = poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
        return Ok(Prepared::Written(outcome));
    }
    let (report, outcome) = oneshot::channel();
    tokio::spawn(async move {
        let _ = report.send(write.await);
    });
    Ok(Prepared::Forwarded(outcome))
}

/// What step 3 decided.
enum Decided {
    Answer(Answer),
    /// Forward it; the snapshot its preconditions held against.
    Forward(Snapshot),
}

/// Step 3, under the lock: the layer's answer, or the snapshot to forward against. With
/// `verify_writes`, first asks the inner service what it serves now and bumps the version if a
/// writer bypassed the layer. When a `*` depends on whether the resource exists, asks the inner
/// service once (no write through the layer can change the answer between the probe and the
/// decision), then decides again. `inner` is ready again after.
async fn decide_locked<S, ReqBody, ResBody, Key, St>(
    inner: &mut S,
    request: &Parts,
    key: &Key,
    store: &St,
    lock: &St::Lock,
    config: Config,
    metrics: &Metrics,
) -> Result<Decided, Refused<S::Error>>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: FromBytes,
    ResBody: Body<Data = Bytes>,
    St: VersionStore<Key>,
{
    let (mut probed, mut verified) = (false, false);
    loop {
        match evaluate(
            &request.headers,
            key,
            store,
            lock,
            config.require_precondition,
            metrics,
        )
        .await?
        {
            // Versions only grow: what the table refuses, a verification would refuse too.
            Step::Answer(answer) => return Ok(Decided::Answer(answer)),
            // Asks the backend what it holds now, once, and decides again against that. Boxed,
            // as the probe below: futures of a branch most writes never take would otherwise
            // make every write's future larger, and it is moved whole more than once.
            Step::Forward(_) | Step::Probe if config.bypass.verify_writes && !verified => {
                let verify = verify(inner, request, key, store, lock, config, metrics);
                if !Box::pin(verify).await? {
                    return Ok(Decided::Answer(Answer::unverified(store.now())));
                }
                verified = true;
            }
            Step::Forward(seen) => return Ok(Decided::Forward(seen)),
            Step::Probe if probed => {
                return Ok(Decided::Answer(Answer::probe_inconclusive(store.now())))
            }
            Step::Probe => {
                Box::pin(learn_existence(
                    inner, request, key, store, lock, config, metrics,
                ))
                .await?;
                probed = true;
            }
        }
    }
}

/// With `verify_writes`: asks the inner service what it serves now, and records it (a change
/// bumps the version, and tells whether the resource exists); `false` if it did not say.
/// `inner` is ready again after.
async fn verify<S, ReqBody, ResBody, Key, St>(
    inner: &mut S,
    request: &Parts,
    key: &Key,
    store: &St,
    lock: &St::Lock,
    config: Config,
    metrics: &Metrics,
) -> Result<bool, Refused<S::Error>>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: FromBytes,
    ResBody: Body<Data = Bytes>,
    St: VersionStore<Key>,
{
    let seen = metrics.store(StoreOp::Peek, store.peek(key, lock)).await?;
    let (head, get) = (
        bodiless(Method::HEAD, request),
        bodiless(Method::GET, request),
    );
    let probe = fingerprint::probe(inner, head, get);
    let probe = tokio::time::timeout(config.write_timeout, probe).await;
    let Some(fingerprint) = probe.ok().transpose().map_err(Refused::Inner)?.flatten() else {
        return Ok(false);
    };
    let observe = store.observe(key, &seen, &fingerprint, store.now());
    metrics.store(StoreOp::Observe, observe).await?;
    // What it serves also says whether it exists: no second probe for a `*`.
    let exists = match fingerprint {
        Fingerprint::Absent => Existence::Absent,
        _ => Existence::Exists,
    };
    record_existence(inner, key, store, lock, metrics, exists).await?;
    Ok(true)
}

/// Asks the inner service whether the resource exists, and records what it said. `inner` is
/// ready again after.
async fn learn_existence<S, ReqBody, ResBody, Key, St>(
    inner: &mut S,
    request: &Parts,
    key: &Key,
    store: &St,
    lock: &St::Lock,
    config: Config,
    metrics: &Metrics,
) -> Result<(), Refused<S::Error>>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: FromBytes,
    St: VersionStore<Key>,
{
    let (head, get) = (
        bodiless(Method::HEAD, request),
        bodiless(Method::GET, request),
    );
    let probe = tokio::time::timeout(config.write_timeout, probe(inner, head, get));
    let exists = match probe.await {
        Ok(exists) => exists.map_err(Refused::Inner)?,
        Err(_elapsed) => Existence::Unknown,
    };
    record_existence(inner, key, store, lock, metrics, exists).await
}

/// Records what the inner service said of the resource's existence, then waits until `inner`
/// is ready again (for the write, or the next probe).
async fn record_existence<S, ReqBody, Key, St>(
    inner: &mut S,
    key: &Key,
    store: &St,
    lock: &St::Lock,
    metrics: &Metrics,
    exists: Existence,
) -> Result<(), Refused<S::Error>>
where
    S: Service<Request<ReqBody>>,
    St: VersionStore<Key>,
{
    let learn = store.learn_existence(key, lock, exists);
    metrics.store(StoreOp::LearnExistence, learn).await?;
    poll_fn(|cx| inner.poll_ready(cx))
        .await
        .map_err(Refused::Inner)
}

/// Why a write could not be prepared: the store, or the inner service (during a probe).
enum Refused<E> {
    Store(StoreError),
    Inner(E),
}

impl<E> From<StoreError> for Refused<E> {
    fn from(err: StoreError) -> Self {
        Refused::Store(err)
    }
}

/// Why a write's body was not read.
enum BodyRefused {
    TooLarge,
    Unreadable,
}

impl BodyRefused {
    fn answer(self, now: u64) -> Answer {
        match self {
            BodyRefused::TooLarge => Answer::body_too_large(now),
            BodyRefused::Unreadable => Answer::body_unreadable(now),
        }
    }
}

/// Reads a write's body in full, or says why not. (A body of one frame is kept as it came:
/// `Collected::to_bytes` hands out its only buffer without copying it.)
async fn read_body<B: Body>(body: B, limit: usize) -> Result<Bytes, BodyRefused> {
    if body.size_hint().lower() > limit as u64 {
        return Err(BodyRefused::TooLarge);
    }
    // Why the body failed does not matter here, only whether it was too large.
    let body = body.map_err(|_| std::io::Error::other("unreadable request body"));
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(BodyRefused::TooLarge),
        Err(_) => Err(BodyRefused::Unreadable),
    }
}

/// Runs a forwarded write to its end, whether or not anyone still waits for its answer. Its
/// outcome comes once the version is bumped, so the client's next write sees it; after a
/// timeout (here or upstream), at once, the resource staying locked for the grace period.
async fn run<F, ResBody, E, Key, St>(
    call: F,
    in_flight: WriteInFlight<Key, St>,
    config: Config,
) -> Outcome<Response<ResBody>, E>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    Key: Clone + Send + 'static,
    St: VersionStore<Key>,
{
    let metrics = in_flight.metrics.clone();
    let started = Timer::start();
    // A call answered at its first poll never registers the timer: `Timeout` polls it first.
    let answered = tokio::time::timeout(config.write_timeout, catch_unwind(call)).await;
    metrics.upstream(Access::Write, started);
    let outcome = match answered {
        Ok(Ok(Ok(res))) if res.status() == StatusCode::GATEWAY_TIMEOUT => {
            // The backend may still be applying it: keep others out for the grace period.
            metrics.written(Some(res.status()));
            hold_for_grace(in_flight, config.timeout_grace);
            return Outcome::Response(Ok(res));
        }
        Ok(Ok(Ok(res))) => in_flight.settle(res).await,
        Ok(Ok(Err(err))) => {
            drop(in_flight); // unsettled: bumps
            Outcome::Response(Err(err))
        }
        Ok(Err(_panic)) => {
            drop(in_flight); // unsettled: bumps
            tracing::error!("the inner service panicked while handling a write");
            Outcome::Panicked
        }
        Err(_elapsed) => {
            metrics.written(None);
            tracing::warn!(timeout = ?config.write_timeout, "write timed out; resource stays locked for the grace period");
            hold_for_grace(in_flight, config.timeout_grace);
            return Outcome::TimedOut;
        }
    };
    match &outcome {
        Outcome::Response(Ok(res)) => metrics.written(Some(res.status())),
        Outcome::Answer(answer) => metrics.answered(answer.said()),
        Outcome::Response(Err(_)) | Outcome::TimedOut | Outcome::Panicked => metrics.written(None),
    }
    outcome
}

/// Keeps a timed-out write's resource locked for `grace` in a task of its own, then records the
/// write (of unknown outcome) and releases the lock; its client is answered meanwhile.
fn hold_for_grace<Key, St>(in_flight: WriteInFlight<Key, St>, grace: Duration)
where
    Key: Clone + Send + 'static,
    St: VersionStore<Key>,
{
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        drop(in_flight);
    });
}

/// Runs `future`, turning a panic in it into an `Err`: the write's client is told, instead of
/// losing its answer with the task.
async fn catch_unwind<F: Future>(future: F) -> std::thread::Result<F::Output> {
    let mut future = std::pin::pin!(future);
    poll_fn(
        |cx| match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(panic) => Poll::Ready(Err(panic)),
        },
    )
    .await
}

/// The next step for a write whose lock is held.
enum Step {
    Answer(Answer),
    Forward(Snapshot),
    /// The decision depends on whether the resource exists, which the layer does not know.
    Probe,
}

/// Decides a write against the current version. Only a 412 re-dates: a date issued now for
/// the version about to be replaced would be shared with the one written in the same second.
async fn evaluate<Key, St: VersionStore<Key>>(
    headers: &HeaderMap,
    key: &Key,
    store: &St,
    lock: &St::Lock,
    require_precondition: bool,
    metrics: &Metrics,
) -> Result<Step, StoreError> {
    let seen = metrics.store(StoreOp::Peek, store.peek(key, lock)).await?;
    let version = seen.version;
    let conditions = Conditions::parse(headers, version);
    let decision = match conditions.verdict(true, version, require_precondition) {
        Verdict::Decided(decision) => decision,
        Verdict::DependsOnExistence { .. } => return Ok(Step::Probe),
    };
    let failed = match decision {
        Decision::Forward => return Ok(Step::Forward(seen)), // no clock read: the bump has one
        Decision::PreconditionFailed(failed) => failed,
        Decision::NotModified => Failed::IfNoneMatch, // a write's `304` is a `412` (§13.1.2)
        Decision::PreconditionRequired => {
            return Ok(Step::Answer(Answer::precondition_required(store.now())))
        }
        Decision::BadRequest(field) => {
            return Ok(Step::Answer(Answer::malformed(field, store.now())))
        }
    };
    let now = store.now();
    // The `412` carries the current version, re-dated if its date is shared and the clock has
    // moved on; only then is the store asked again. Under the lock no other write through the
    // layer moves it (an observation of a bypassing writer may, as it may just after any call).
    let version = match seen.version.redated(now) {
        None => seen.version,
        Some(_) => {
            let current = metrics.store(StoreOp::Current, store.current(key, now));
            current.await?.version
        }
    };
    Ok(Step::Answer(Answer::precondition_failed(
        failed, version, now,
    )))
}

/// Asks the inner service whether the resource exists: `HEAD`, or `GET` if `HEAD` is not
/// supported. `inner` must be ready.
async fn probe<S, ReqBody, ResBody>(
    inner: &mut S,
    head: Request<ReqBody>,
    get: Request<ReqBody>,
) -> Result<Existence, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    let mut status = inner.call(head).await?.status();
    if status == StatusCode::METHOD_NOT_ALLOWED || status == StatusCode::NOT_IMPLEMENTED {
        poll_fn(|cx| inner.poll_ready(cx)).await?;
        status = inner.call(get).await?.status();
    }
    Ok(existence_of(status))
}

/// A write forwarded under its resource's lock. Settling it, or dropping it unsettled (inner
/// error, timeout, or its task cancelled), records the outcome and releases the lock.
pub(crate) struct WriteInFlight<Key: Clone, St: VersionStore<Key>> {
    store: Arc<St>,
    key: Key,
    /// Whether the resource exists after this write succeeds.
    on_success: Existence,
    /// Held until the outcome is recorded; taken by then.
    lock: Option<St::Lock>,
    /// Whether the write carries the backend's own tag in `If-Match`.
    guarded: bool,
    /// Reads what the backend serves after the write (with `verify_writes`).
    follow_up: Option<FollowUp>,
    metrics: Metrics,
    /// Counts it in the writes in flight until it is dropped.
    _counted: InFlight,
}

/// The backend's fingerprint after a write, read under the write's lock.
type FollowUp = Pin<Box<dyn Future<Output = Option<Fingerprint>> + Send>>;

impl<Key: Clone, St: VersionStore<Key>> WriteInFlight<Key, St> {
    /// The inner service answered. A 4xx refused the write: nothing changed, unless it is a
    /// `412` to the backend's own tag the layer forwarded (a writer bypassed the layer: bump,
    /// and answer `412`). A 2xx bumps the version and carries it, with the fingerprint the
    /// backend now serves when the layer tracks them; anything else may have changed the
    /// resource, so it bumps too.
    async fn settle<B, E>(mut self, mut res: Response<B>) -> Outcome<Response<B>, E> {
        // The lock stays in `self` until the bump takes it: should anything before that panic
        // or be dropped (the follow-up read below), dropping `self` still bumps.
        let status = res.status();
        if status == StatusCode::PRECONDITION_FAILED && self.guarded {
            let now = self.store.now();
            let lock = self.lock.take().expect("settled once");
            let bump = self.store.bump(&self.key, lock, Existence::Unknown, None);
            return Outcome::Answer(match self.metrics.store(StoreOp::Bump, bump).await {
                Ok(version) => Answer::precondition_failed(Failed::Backend, version, now),
                Err(err) => {
                    tracing::error!(error = %err, "a write's version could not be recorded");
                    Answer::store_unavailable(now)
                }
            });
        }
        if status.is_client_error() {
            drop(self.lock.take()); // refused: nothing changed, released without a bump
            return Outcome::Response(Ok(res));
        }
        let exists = if status.is_success() {
            self.on_success
        } else {
            Existence::Unknown
        };
        // What the backend serves now, recorded with the new version before the lock goes, for
        // the client that gets that version with a 2xx: the write response's own validator,
        // else read under the lock; if neither tells, whatever is seen next counts as a change.
        // No client holds the version of another outcome: what is seen next is its baseline.
        let fingerprint = match self.follow_up.take() {
            Some(follow_up) if status.is_success() => {
                Some(match Fingerprint::of_headers(res.headers()) {
                    Some(own) => own,
                    None => follow_up.await.unwrap_or(Fingerprint::Unknown),
                })
            }
            _ => None,
        };
        let lock = self.lock.take().expect("settled once");
        let bump = self.store.bump(&self.key, lock, exists, fingerprint);
        match self.metrics.store(StoreOp::Bump, bump).await {
            Ok(version) if status.is_success() => {
                answer::stamp(res.headers_mut(), version, self.store.now())
            }
            Ok(_) => {}
            // A success the layer cannot vouch for: the client must re-read, not build on it.
            Err(err) if status.is_success() => {
                tracing::error!(error = %err, "a write's version could not be recorded");
                return Outcome::Answer(Answer::write_unrecorded(self.store.now()));
            }
            Err(err) => tracing::error!(error = %err, "a write's version could not be recorded"),
        }
        Outcome::Response(Ok(res))
    }
}

impl<Key: Clone, St: VersionStore<Key>> Drop for WriteInFlight<Key, St> {
    fn drop(&mut self) {
        if let Some(lock) = self.lock.take() {
            self.store.bump_unsettled(self.key.clone(), lock);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::VecDeque,
        task::{Context, Poll},
    };

    use http_body::Frame;

    use super::*;

    /// A body that yields its frames one by one, with no size hint.
    struct Frames(VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn frames(chunks: &[&'static str]) -> Frames {
        let mut frames: VecDeque<_> = chunks
            .iter()
            .map(|chunk| Frame::data(Bytes::from_static(chunk.as_bytes())))
            .collect();
        frames.push_back(Frame::trailers(HeaderMap::new()));
        Frames(frames)
    }

    #[tokio::test]
    async fn a_body_is_read_whole_from_any_number_of_frames_within_its_limit() {
        for chunks in [&[][..], &["whole"], &["", "whole"], &["wh", "", "ol", "e"]] {
            let read = read_body(frames(chunks), 5).await;
            let expected = if chunks.is_empty() { "" } else { "whole" };
            assert_eq!(
                read.ok().as_deref(),
                Some(expected.as_bytes()),
                "{chunks:?}"
            );
        }
        for chunks in [&["wholes"][..], &["whol", "es"], &["w", "hole", "s"]] {
            let read = read_body(frames(chunks), 5).await;
            assert!(matches!(read, Err(BodyRefused::TooLarge)), "{chunks:?}");
        }
    }
}
