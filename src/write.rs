//! Writes: evaluated, forwarded and recorded under their resource's write lock.

use std::{future::poll_fn, hash::Hash, sync::Arc};

use http::{
    header::{
        CONTENT_LENGTH, CONTENT_TYPE, EXPECT, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE,
        IF_UNMODIFIED_SINCE, RANGE, TRANSFER_ENCODING,
    },
    HeaderMap, Method, Request, Response, StatusCode,
};
use tokio::sync::{Mutex, OwnedMutexGuard};
use tower_service::Service;

use crate::{
    answer::{self, Answer},
    body::ResponseBody,
    precondition::{Conditions, Decision, Verdict},
    table::VersionTable,
    version::Existence,
};

/// A write once its lock is held and its preconditions are decided.
pub(crate) enum Prepared<F, Key: Hash + Eq + Clone> {
    Answer(Answer),
    Forward(F, WriteInFlight<Key>),
}

/// The next step for a write whose lock is held.
pub(crate) enum Step {
    Answer(Answer),
    Forward,
    /// The decision depends on whether the resource exists, which the layer does not know.
    Probe,
}

/// Decides a write against the current version. Only a 412 re-dates: a date issued now for
/// the version about to be replaced would be shared with the one written in the same second.
pub(crate) fn evaluate<Key: Hash + Eq + Clone>(
    headers: &HeaderMap,
    key: &Key,
    table: &VersionTable<Key>,
    require_precondition: bool,
) -> Step {
    let version = table.peek(key);
    let conditions = Conditions::parse(headers, table.tag(version));
    let decision = match conditions.verdict(true, version, require_precondition) {
        Verdict::Decided(decision) => decision,
        Verdict::DependsOnExistence { .. } => return Step::Probe,
    };
    let now = table.now();
    Step::Answer(match decision {
        Decision::Forward => return Step::Forward,
        Decision::PreconditionFailed | Decision::NotModified => {
            let current = table.current(key, now).version;
            Answer::precondition_failed(current, table.tag(current), now)
        }
        Decision::PreconditionRequired => Answer::precondition_required(now),
        Decision::BadRequest(body) => Answer::bad_request(body, now),
    })
}

/// The resource's write lock, held already or to be waited for.
pub(crate) enum Lock {
    Held(OwnedMutexGuard<()>),
    Wait(Arc<Mutex<()>>),
}

const PROBE_INCONCLUSIVE: &str = "503 Service Unavailable: the precondition depends on whether \
the resource exists, and the backend's answer to HEAD (or GET) did not tell. Retry later.\n";

/// The slow path of a write: wait for the lock, probe the resource's existence if a `*`
/// precondition needs it, then decide. `inner` has been readied for this request.
pub(crate) async fn prepare<S, ReqBody, ResBody, Key>(
    mut inner: S,
    request: Request<ReqBody>,
    key: Key,
    lock: Lock,
    table: Arc<VersionTable<Key>>,
    require_precondition: bool,
) -> Result<Prepared<S::Future, Key>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: Default,
    Key: Hash + Eq + Clone,
{
    let guard = match lock {
        Lock::Held(guard) => guard,
        Lock::Wait(lock) => lock.lock_owned().await,
    };
    let mut probed = false;
    loop {
        match evaluate(request.headers(), &key, &table, require_precondition) {
            Step::Answer(answer) => return Ok(Prepared::Answer(answer)),
            Step::Forward => return Ok(forward(&mut inner, request, key, guard, table)),
            Step::Probe if probed => {
                return Ok(Prepared::Answer(Answer::service_unavailable(
                    PROBE_INCONCLUSIVE,
                    table.now(),
                )));
            }
            Step::Probe => {
                // Under the lock no write can change the answer between the probe and the decision.
                let head = probe_request(Method::HEAD, &request);
                let get = probe_request(Method::GET, &request);
                let exists = probe(&mut inner, head, get).await?;
                table.learn_existence(&key, exists);
                probed = true;
                poll_fn(|cx| inner.poll_ready(cx)).await?;
            }
        }
    }
}

/// Forwards a write whose preconditions hold; `lock` is held until it settles.
pub(crate) fn forward<S, ReqBody, Key>(
    inner: &mut S,
    request: Request<ReqBody>,
    key: Key,
    lock: OwnedMutexGuard<()>,
    table: Arc<VersionTable<Key>>,
) -> Prepared<S::Future, Key>
where
    S: Service<Request<ReqBody>>,
    Key: Hash + Eq + Clone,
{
    let on_success = match *request.method() {
        Method::DELETE => Existence::Absent,
        _ => Existence::Exists,
    };
    let in_flight = WriteInFlight {
        table,
        key,
        on_success,
        settled: false,
        _lock: lock,
    };
    Prepared::Forward(inner.call(request), in_flight)
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
    Ok(if status.is_success() {
        Existence::Exists
    } else if status == StatusCode::NOT_FOUND || status == StatusCode::GONE {
        Existence::Absent
    } else {
        Existence::Unknown
    })
}

/// A bodiless, unconditional copy of `original` with `method`.
fn probe_request<ReqBody: Default>(
    method: Method,
    original: &Request<ReqBody>,
) -> Request<ReqBody> {
    let mut probe = Request::new(ReqBody::default());
    *probe.method_mut() = method;
    *probe.uri_mut() = original.uri().clone();
    *probe.version_mut() = original.version();
    *probe.extensions_mut() = original.extensions().clone();
    let headers = probe.headers_mut();
    *headers = original.headers().clone();
    for name in [
        IF_MATCH,
        IF_NONE_MATCH,
        IF_MODIFIED_SINCE,
        IF_UNMODIFIED_SINCE,
        IF_RANGE,
        RANGE,
        CONTENT_LENGTH,
        CONTENT_TYPE,
        TRANSFER_ENCODING,
        EXPECT,
    ] {
        headers.remove(name);
    }
    probe
}

/// A write forwarded under its resource's lock. Settling it, or dropping it unsettled (inner
/// error, or the future dropped because the client left), records the outcome and then
/// releases the lock.
pub(crate) struct WriteInFlight<Key: Hash + Eq + Clone> {
    table: Arc<VersionTable<Key>>,
    key: Key,
    /// Whether the resource exists after this write succeeds.
    on_success: Existence,
    settled: bool,
    // Dropped after `Drop::drop` has bumped the version.
    _lock: OwnedMutexGuard<()>,
}

impl<Key: Hash + Eq + Clone> WriteInFlight<Key> {
    /// The inner service answered. A 4xx refused the write: nothing changed. A 2xx bumps the
    /// version and carries it; anything else may have changed the resource, so it bumps too.
    pub(crate) fn settle<B>(mut self, res: Response<B>) -> Response<ResponseBody<B>> {
        self.settled = true;
        let status = res.status();
        let mut res = res.map(ResponseBody::inner);
        if status.is_client_error() {
            return res;
        }
        let now = self.table.now();
        if status.is_success() {
            let version = self.table.bump(&self.key, now, self.on_success);
            answer::stamp(res.headers_mut(), version, self.table.tag(version), now);
        } else {
            self.table.bump(&self.key, now, Existence::Unknown);
        }
        res
    }
}

impl<Key: Hash + Eq + Clone> Drop for WriteInFlight<Key> {
    fn drop(&mut self) {
        if !self.settled {
            let now = self.table.now();
            self.table.bump(&self.key, now, Existence::Unknown);
        }
    }
}
