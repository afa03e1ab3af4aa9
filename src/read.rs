//! Reads: decided against the version seen before forwarding, and stamped with it.
//!
//! A read (`GET`, `HEAD`) never takes a lock. Its snapshot is taken **before** it is forwarded:
//! a write that lands meanwhile makes the stamp older than the data (the client's next
//! conditional request then fails or re-reads), never newer (invariant 3). On a store that
//! answers at once ([`VersionStore::current_now`]) the whole read runs in the response future
//! itself, without boxing; on a shared store it waits for the store in [`later`].

use std::{pin::Pin, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use http::{
    header::{CONTENT_TYPE, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, RANGE},
    Method, Request, Response, StatusCode,
};
use http_body::Body;
use http_body_util::BodyExt;
use tower_service::Service;

use crate::{
    answer::{self, Answer, Said},
    body::ResponseBody,
    fingerprint::{BodyHash, Bypass, Fingerprint},
    metrics::{Metrics, StoreOp, Timer},
    precondition::{self, Conditions, Decision, Verdict},
    request_body::{bodiless, FromBytes},
    store::{Observed, Snapshot, Version, VersionStore},
    version::{existence_of, Existence},
};

/// How a read goes on once it has been looked at.
pub(crate) enum Begun<Key, St> {
    /// The layer answers (`304`, `412`).
    Answered(Answer),
    /// Forward the (prepared) request; stamp the response with `ReadInFlight` when it comes.
    Forward(ReadInFlight<Key, St>),
    /// The store must be waited for: see [`later`].
    Later(Key),
}

/// What became of a read: the layer's answer, or the inner service's response, stamped.
pub(crate) enum Outcome<R> {
    Answered(Answer),
    Responded(R),
}

impl<B> Outcome<Response<B>> {
    pub(crate) fn into_response(self) -> Response<ResponseBody<B>> {
        match self {
            Outcome::Answered(answer) => answer.into_response(),
            Outcome::Responded(res) => res.map(ResponseBody::inner),
        }
    }
}

/// Starts a read of `key` without waiting, if the store can tell its version at once.
pub(crate) fn begin<B, Key, St>(
    store: &Arc<St>,
    key: Key,
    request: &mut Request<B>,
    metrics: &Metrics,
) -> Begun<Key, St>
where
    St: VersionStore<Key>,
{
    let now = store.now();
    let Some(snapshot) = store.current_now(&key, now) else {
        return Begun::Later(key);
    };
    match decide(request, &snapshot, now) {
        Decided::Answer(answer) => Begun::Answered(answer),
        // Only a forwarded read keeps the store (a 304 or 412 shares no counter across threads).
        Decided::Forward { if_exists } => Begun::Forward(ReadInFlight {
            store: store.clone(),
            key,
            snapshot,
            if_exists,
            metrics: metrics.clone(),
            started: Timer::start(),
        }),
    }
}

/// A read on a store that must be waited for, or one whose fingerprint the layer checks.
/// `inner` has been readied for it.
pub(crate) async fn later<S, ReqBody, ResBody, Key, St>(
    mut inner: S,
    mut request: Request<ReqBody>,
    key: Key,
    store: Arc<St>,
    bypass: Bypass,
    metrics: Metrics,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: FromBytes,
    ResBody: Body<Data = Bytes> + Send + 'static,
    Key: Clone + Send + Sync + 'static,
    St: VersionStore<Key>,
{
    let now = store.now();
    let snapshot = match metrics
        .store(StoreOp::Current, store.current(&key, now))
        .await
    {
        Ok(snapshot) => snapshot,
        Err(err) => {
            // No version to vouch for: forward without the 304 shortcut, and without validators
            // a client could later send back.
            tracing::warn!(error = %err, "read forwarded without preconditions");
            precondition::remove_conditions(request.headers_mut());
            let started = Timer::start();
            let res = inner.call(request).await?;
            metrics.forwarded_read(started);
            return Ok(unvouched(res.map(ResponseBody::inner)));
        }
    };
    if !bypass.any() {
        let if_exists = match decide(&mut request, &snapshot, now) {
            Decided::Answer(answer) => {
                metrics.answered(answer.said());
                return Ok(answer.into_response());
            }
            Decided::Forward { if_exists } => if_exists,
        };
        let started = Timer::start();
        let res = inner.call(request).await?;
        let read = ReadInFlight {
            store,
            key,
            snapshot,
            if_exists,
            metrics,
            started,
        };
        return Ok(read.finish(res).into_response());
    }

    // Writers may bypass the layer: a `304` from the table only while the backend confirmed
    // the version recently, and every response forwarded is fingerprinted.
    let known = !matches!(snapshot.fingerprint, None | Some(Fingerprint::Unknown));
    let fresh = known
        && bypass
            .revalidate_after
            .is_none_or(|window| now.saturating_sub(snapshot.confirmed) < window.as_secs());
    let method = request.method().clone();
    let (if_exists, revalidating) = match decide(&mut request, &snapshot, now) {
        Decided::Answer(answer) if fresh || !answer.is_not_modified() => {
            metrics.answered(answer.said());
            return Ok(answer.into_response());
        }
        // Revalidate: ask the backend with its own validator, whatever the client sent.
        Decided::Answer(_) => {
            let headers = request.headers_mut();
            precondition::remove_conditions(headers);
            headers.remove(RANGE);
            match &snapshot.fingerprint {
                Some(Fingerprint::ETag(tag)) => {
                    headers.insert(IF_NONE_MATCH, tag.clone());
                }
                Some(Fingerprint::LastModified(date)) => {
                    headers.insert(IF_MODIFIED_SINCE, date.clone());
                }
                _ => {}
            }
            (None, true)
        }
        Decided::Forward { if_exists } => (if_exists, false),
    };
    let (parts, body) = request.into_parts();
    let retry = revalidating.then(|| bodiless::<ReqBody>(method.clone(), &parts));
    let started = Timer::start();
    let res = inner.call(Request::from_parts(parts, body)).await?;
    let backend_304 = res.status() == StatusCode::NOT_MODIFIED;
    let observed = fingerprinted(res, &method, &store, &key, &snapshot, now, &metrics);
    let (res, stamp, confirmed) = observed.await;
    let Some(stamp) = stamp else {
        metrics.forwarded_read(started);
        return Ok(res); // no version to vouch for
    };
    let read = ReadInFlight {
        store: store.clone(),
        key: key.clone(),
        snapshot: snapshot.clone(),
        if_exists,
        metrics: metrics.clone(),
        started,
    };
    let Some(retry) = retry else {
        return Ok(read.finish_stamped(res, stamp));
    };
    // Revalidated: the client's `304` stands only if the backend confirmed the version.
    if confirmed {
        metrics.answered(Said::NotModified);
        return Ok(Answer::not_modified(snapshot, now).into_response());
    }
    if !backend_304 {
        // Changed, or not confirmed: the representation, with the version it can carry.
        return Ok(read.finish_stamped(res, stamp));
    }
    // The backend said `304` to a fingerprint the store no longer holds (a write through the
    // layer came in between): the client needs the representation, which a `304` lacks.
    drop(res);
    std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
    let res = inner.call(retry).await?;
    let observed = fingerprinted(res, &method, &store, &key, &snapshot, now, &metrics);
    let (res, stamp, _) = observed.await;
    Ok(match stamp {
        Some(stamp) => read.finish_stamped(res, stamp),
        None => {
            metrics.forwarded_read(started);
            res
        }
    })
}

/// A response fingerprinted against `seen`: the response (its body read ahead, or hashed as it
/// streams, when the backend sends no validator), the version to stamp it with (the bumped one
/// when this response showed the backend changed without the layer, else `seen`'s, older than
/// or as old as its data; `None` when the store could not tell, then without validators), and
/// whether the store confirmed `seen`'s version.
async fn fingerprinted<ResBody, Key, St>(
    res: Response<ResBody>,
    method: &Method,
    store: &Arc<St>,
    key: &Key,
    seen: &Snapshot,
    now: u64,
    metrics: &Metrics,
) -> (Response<ResponseBody<ResBody>>, Option<Version>, bool)
where
    ResBody: Body<Data = Bytes> + Send + 'static,
    Key: Clone + Send + Sync + 'static,
    St: VersionStore<Key>,
{
    let status = res.status();
    let fingerprint = match status {
        StatusCode::NOT_MODIFIED => seen.fingerprint.clone(),
        StatusCode::NOT_FOUND | StatusCode::GONE => Some(Fingerprint::Absent),
        // A part, or a `HEAD`, says nothing of the whole body: only its validator counts.
        _ if status.is_success() => Fingerprint::of_headers(res.headers()),
        _ => return (res.map(ResponseBody::inner), Some(seen.version), false),
    };
    let (res, fingerprint) = match fingerprint {
        Some(fingerprint) => (res.map(ResponseBody::inner), fingerprint),
        None if *method != Method::GET || status != StatusCode::OK => {
            return (res.map(ResponseBody::inner), Some(seen.version), false);
        }
        None => {
            let (parts, body) = res.into_parts();
            let streaming = parts
                .headers
                .get(CONTENT_TYPE)
                .is_some_and(|kind| kind.as_bytes().starts_with(b"text/event-stream"));
            match read_ahead(body, !streaming).await {
                ReadAhead::Whole {
                    data,
                    trailers,
                    hash,
                } => (
                    Response::from_parts(parts, ResponseBody::read_ahead(data, trailers)),
                    hash.finish(),
                ),
                ReadAhead::Partial { prefix, rest, hash } => {
                    // Too large to hold: learned once it has streamed through. A change found
                    // then bumps the version; this response keeps the older stamp (a client
                    // holding it gets `412` on its next write, never `200`).
                    let version = seen.version;
                    let (store, key, seen) = (store.clone(), key.clone(), seen.clone());
                    let learn = Box::new(move |fingerprint: Fingerprint| {
                        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                            runtime.spawn(async move {
                                let _ = store.observe(&key, &seen, &fingerprint, now).await;
                            });
                        }
                    });
                    let body = ResponseBody::hashing(prefix, rest, hash, learn);
                    return (Response::from_parts(parts, body), Some(version), false);
                }
                // Nothing was sent yet: the client gets a clean error, not a truncated body.
                ReadAhead::Failed => {
                    return (Answer::body_failed(now).into_response(), None, false);
                }
            }
        }
    };
    let observe = store.observe(key, seen, &fingerprint, now);
    match metrics.store(StoreOp::Observe, observe).await {
        Ok(Observed::Confirmed) => (res, Some(seen.version), true),
        Ok(Observed::Changed(version)) => {
            tracing::info!(
                counter = version.counter,
                "the backend changed without the layer"
            );
            (res, Some(version), false)
        }
        // Bumped for a change another observation saw first, or superseded by a write through
        // the layer: this response may be the older data, so it keeps the older stamp.
        Ok(_) => (res, Some(seen.version), false),
        Err(err) => {
            tracing::warn!(error = %err, "read forwarded without validators");
            (unvouched(res), None, false)
        }
    }
}

/// The most of a body without validators the layer holds to fingerprint it before answering,
/// and how long it waits for it: a longer or slower one is hashed as it streams.
const READ_AHEAD: usize = 256 * 1024;
const READ_AHEAD_TIME: Duration = Duration::from_secs(1);

enum ReadAhead<B> {
    /// The whole body, within the bound.
    Whole {
        data: Bytes,
        trailers: Option<http::HeaderMap>,
        hash: BodyHash,
    },
    /// More than the bound: what was read, and the rest.
    Partial {
        prefix: Bytes,
        rest: Pin<Box<B>>,
        hash: BodyHash,
    },
    /// The body failed.
    Failed,
}

/// Reads `body` up to [`READ_AHEAD`] bytes for at most [`READ_AHEAD_TIME`] (not at all without
/// `hold`), hashing what it reads.
async fn read_ahead<B: Body<Data = Bytes>>(body: B, hold: bool) -> ReadAhead<B> {
    let mut body = Box::pin(body);
    let (mut data, mut hash) = (BytesMut::new(), BodyHash::new());
    let deadline = tokio::time::Instant::now() + READ_AHEAD_TIME;
    loop {
        if data.len() > READ_AHEAD || !hold {
            let (prefix, rest) = (data.freeze(), body);
            return ReadAhead::Partial { prefix, rest, hash };
        }
        let Ok(frame) = tokio::time::timeout_at(deadline, body.frame()).await else {
            let (prefix, rest) = (data.freeze(), body);
            return ReadAhead::Partial { prefix, rest, hash };
        };
        match frame {
            None => break,
            Some(Err(_)) => return ReadAhead::Failed,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(chunk) => {
                    hash.update(&chunk);
                    data.extend_from_slice(&chunk);
                }
                Err(frame) => {
                    let trailers = frame.into_trailers().ok();
                    let data = data.freeze();
                    return ReadAhead::Whole {
                        data,
                        trailers,
                        hash,
                    };
                }
            },
        }
    }
    ReadAhead::Whole {
        data: data.freeze(),
        trailers: None,
        hash,
    }
}

/// A response forwarded with no version to vouch for: without validators a client could send
/// back.
fn unvouched<B>(mut res: Response<B>) -> Response<B> {
    res.headers_mut().remove(ETAG);
    res.headers_mut().remove(LAST_MODIFIED);
    res
}

/// What a read's preconditions decide, given the snapshot taken before forwarding.
enum Decided {
    Answer(Answer),
    /// Forward it; when a `*` depended on whether the resource exists, the response decides
    /// between these two.
    Forward {
        if_exists: Option<(Decision, Decision)>,
    },
}

/// Decides a read against `snapshot`, and prepares a forwarded one: drops a `Range` that
/// `If-Range` invalidates and removes the conditions the layer has evaluated.
fn decide<B>(request: &mut Request<B>, snapshot: &Snapshot, now: u64) -> Decided {
    let version = snapshot.version;
    let conditions = Conditions::parse(request.headers(), version);
    let if_exists = match conditions.verdict(false, version, false) {
        // A read is never refused for a missing or malformed precondition.
        Verdict::Decided(
            Decision::Forward | Decision::PreconditionRequired | Decision::BadRequest(_),
        ) => None,
        Verdict::Decided(Decision::NotModified) => {
            return Decided::Answer(Answer::not_modified(snapshot.clone(), now));
        }
        Verdict::Decided(Decision::PreconditionFailed(failed)) => {
            return Decided::Answer(Answer::precondition_failed(failed, version, now));
        }
        // A `*` on a resource whose existence is unknown: the response will tell.
        Verdict::DependsOnExistence { exists, absent } => Some((exists, absent)),
    };
    let method = request.method().clone();
    conditions.strip(&method, request.headers_mut(), version);
    Decided::Forward { if_exists }
}

/// A forwarded read: the version it saw before forwarding, and what to decide from the
/// response when a `*` precondition depended on whether the resource exists.
pub(crate) struct ReadInFlight<Key, St> {
    store: Arc<St>,
    key: Key,
    snapshot: Snapshot,
    if_exists: Option<(Decision, Decision)>,
    metrics: Metrics,
    /// When it was forwarded.
    started: Timer,
}

impl<Key, St: VersionStore<Key>> ReadInFlight<Key, St> {
    /// The response stamped with the version seen before forwarding, or the layer's own answer.
    pub(crate) fn finish<B>(self, res: Response<B>) -> Outcome<Response<B>> {
        let version = self.snapshot.version;
        self.finish_with(res, version)
    }

    /// The same, for a fingerprinted response, stamped with `stamp`.
    fn finish_stamped<B>(
        self,
        res: Response<ResponseBody<B>>,
        stamp: Version,
    ) -> Response<ResponseBody<B>> {
        match self.finish_with(res, stamp) {
            Outcome::Answered(answer) => answer.into_response(),
            Outcome::Responded(res) => res,
        }
    }

    fn finish_with<B>(self, mut res: Response<B>, version: Version) -> Outcome<Response<B>> {
        let exists = existence_of(res.status());
        self.store
            .learn_from_read(&self.key, &self.snapshot, exists, res.headers());

        let now = self.store.now();
        let decision = match (self.if_exists, exists) {
            (Some((decision, _)), Existence::Exists) | (Some((_, decision)), Existence::Absent) => {
                decision
            }
            _ => Decision::Forward,
        };
        let answer = match decision {
            Decision::NotModified => {
                let snapshot =
                    Snapshot::new(version).with_cached(answer::cached_headers(res.headers()));
                Answer::not_modified(snapshot, now)
            }
            Decision::PreconditionFailed(failed) => {
                Answer::precondition_failed(failed, version, now)
            }
            _ => {
                self.metrics.forwarded_read(self.started);
                if res.status().is_success() {
                    answer::stamp(res.headers_mut(), version, now);
                }
                return Outcome::Responded(res);
            }
        };
        self.metrics.answered(answer.said());
        Outcome::Answered(answer)
    }
}
