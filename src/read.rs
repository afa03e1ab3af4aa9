//! Reads: decided against the version seen before forwarding, and stamped with it.
//!
//! A read (`GET`, `HEAD`) never takes a lock. Its snapshot is taken **before** it is forwarded:
//! a write that lands meanwhile makes the stamp older than the data (the client's next
//! conditional request then fails or re-reads), never newer (invariant 3). On a store that
//! answers at once ([`VersionStore::current_now`]) the whole read runs in the response future
//! itself, without boxing; on a shared store it waits for the store in [`later`].

use std::sync::Arc;

use http::{
    header::{ETAG, LAST_MODIFIED},
    Request, Response,
};
use tower_service::Service;

use crate::{
    answer::{self, Answer},
    precondition::{self, Conditions, Decision, Verdict},
    store::{Snapshot, VersionStore},
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

/// Starts a read of `key` without waiting, if the store can tell its version at once.
pub(crate) fn begin<B, Key, St>(
    store: &Arc<St>,
    key: Key,
    request: &mut Request<B>,
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
        }),
    }
}

/// A read on a store that must be waited for. `inner` has been readied for it.
pub(crate) async fn later<S, ReqBody, ResBody, Key, St>(
    mut inner: S,
    mut request: Request<ReqBody>,
    key: Key,
    store: Arc<St>,
) -> Result<Outcome<S::Response>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    St: VersionStore<Key>,
{
    let now = store.now();
    let snapshot = match store.current(&key, now).await {
        Ok(snapshot) => snapshot,
        Err(err) => {
            // No version to vouch for: forward without the 304 shortcut, and without validators
            // a client could later send back.
            tracing::warn!(error = %err, "read forwarded without preconditions");
            precondition::remove_conditions(request.headers_mut());
            let mut res = inner.call(request).await?;
            res.headers_mut().remove(ETAG);
            res.headers_mut().remove(LAST_MODIFIED);
            return Ok(Outcome::Responded(res));
        }
    };
    let if_exists = match decide(&mut request, &snapshot, now) {
        Decided::Answer(answer) => return Ok(Outcome::Answered(answer)),
        Decided::Forward { if_exists } => if_exists,
    };
    let res = inner.call(request).await?;
    let read = ReadInFlight {
        store,
        key,
        snapshot,
        if_exists,
    };
    Ok(read.finish(res))
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
        Verdict::Decided(Decision::Forward) => None,
        Verdict::Decided(Decision::NotModified) => {
            return Decided::Answer(Answer::not_modified(snapshot.clone(), now));
        }
        Verdict::Decided(_) => return Decided::Answer(Answer::precondition_failed(version, now)),
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
}

impl<Key, St: VersionStore<Key>> ReadInFlight<Key, St> {
    /// The response stamped with the version seen before forwarding, or the layer's own answer.
    pub(crate) fn finish<B>(self, mut res: Response<B>) -> Outcome<Response<B>> {
        let exists = existence_of(res.status());
        self.store
            .learn_from_read(&self.key, &self.snapshot, exists, res.headers());

        let now = self.store.now();
        let version = self.snapshot.version;
        let decision = match (self.if_exists, exists) {
            (Some((decision, _)), Existence::Exists) | (Some((_, decision)), Existence::Absent) => {
                decision
            }
            _ => Decision::Forward,
        };
        match decision {
            Decision::NotModified => {
                let snapshot =
                    Snapshot::new(version).with_cached(answer::cached_headers(res.headers()));
                Outcome::Answered(Answer::not_modified(snapshot, now))
            }
            Decision::PreconditionFailed => {
                Outcome::Answered(Answer::precondition_failed(version, now))
            }
            _ => {
                if res.status().is_success() {
                    answer::stamp(res.headers_mut(), version, now);
                }
                Outcome::Responded(res)
            }
        }
    }
}
