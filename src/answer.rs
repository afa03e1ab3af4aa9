//! Responses the layer gives itself, and the validator headers it stamps on forwarded ones.

use std::sync::Arc;

use http::{
    header::{
        CACHE_CONTROL, CONTENT_LOCATION, CONTENT_TYPE, DATE, ETAG, EXPIRES, LAST_MODIFIED,
        RETRY_AFTER, VARY,
    },
    HeaderMap, HeaderName, HeaderValue, Response, StatusCode,
};

use crate::{
    body::ResponseBody,
    date,
    precondition::{Failed, Malformed},
    store::{Snapshot, Version},
};

/// A response the layer gives without (or instead of) the inner service's.
#[derive(Debug)]
pub(crate) struct Answer {
    status: StatusCode,
    /// The precondition whose failure a `412` tells (what it says is otherwise its status).
    failed: Option<Failed>,
    body: &'static str,
    /// The version whose validators the answer carries.
    stamp: Option<Version>,
    /// What a `304` repeats from the last 2xx read.
    cached: Option<Arc<HeaderMap>>,
    now: u64,
}

/// What an answer tells its client, in the terms of the layer's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Said {
    NotModified,
    PreconditionFailed(Failed),
    PreconditionRequired,
    /// `400`: a malformed tag condition, or a write body that failed.
    BadRequest,
    /// `413`.
    TooLarge,
    /// `503`: a busy lock, an unreachable store, an inconclusive probe or verification, an
    /// abandoned write.
    Unavailable,
    /// `504`, `500`, `502`: what became of a forwarded request the layer could not relay.
    ForwardFailed,
}

impl Answer {
    /// `304 Not Modified` for `snapshot`, repeating what its last 2xx read carried.
    pub(crate) fn not_modified(snapshot: Snapshot, now: u64) -> Self {
        Self {
            status: StatusCode::NOT_MODIFIED,
            failed: None,
            body: "",
            stamp: Some(snapshot.version),
            cached: snapshot.cached,
            now,
        }
    }

    /// `412 Precondition Failed` (`failed` said so), with the validators of the current
    /// `version`.
    pub(crate) fn precondition_failed(failed: Failed, version: Version, now: u64) -> Self {
        Self {
            status: StatusCode::PRECONDITION_FAILED,
            failed: Some(failed),
            body: "412 Precondition Failed: the resource has changed since the version this \
request was based on. Re-read it (GET) and retry with its new ETag or Last-Modified.\n",
            stamp: Some(version),
            cached: None,
            now,
        }
    }

    /// `428 Precondition Required`: a blind write, refused.
    pub(crate) fn precondition_required(now: u64) -> Self {
        Self::plain(
            StatusCode::PRECONDITION_REQUIRED,
            "428 Precondition Required: this server refuses blind overwrites. Read the \
resource first and send its ETag in If-Match (or its Last-Modified in If-Unmodified-Since), or \
If-None-Match: * to create it only if it does not exist.\n",
            now,
        )
    }

    /// `400 Bad Request`: a write's tag condition that cannot be parsed (ignoring it would
    /// make the write blind).
    pub(crate) fn malformed(field: Malformed, now: u64) -> Self {
        let body = match field {
            Malformed::IfMatch => {
                "400 Bad Request: If-Match must be * or a comma-separated list of entity-tags \
such as \"abc.1\" (quotes included).\n"
            }
            Malformed::IfNoneMatch => {
                "400 Bad Request: If-None-Match must be * or a comma-separated list of \
entity-tags such as \"abc.1\" (quotes included).\n"
            }
        };
        Self::plain(StatusCode::BAD_REQUEST, body, now)
    }

    /// `413 Content Too Large`: a write body over the layer's limit.
    pub(crate) fn body_too_large(now: u64) -> Self {
        Self::plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            "413 Content Too Large: write bodies are read in full before the resource is \
locked, and this one is over the limit.\n",
            now,
        )
    }

    /// `400 Bad Request`: a write body that failed while it was read.
    pub(crate) fn body_unreadable(now: u64) -> Self {
        Self::plain(
            StatusCode::BAD_REQUEST,
            "400 Bad Request: the request body could not be read.\n",
            now,
        )
    }

    /// `503`: the resource's lock stayed taken for the whole lock timeout.
    pub(crate) fn lock_busy(now: u64) -> Self {
        Self::unavailable(
            "503 Service Unavailable: another write to this resource is taking too long. \
Retry shortly.\n",
            now,
        )
    }

    /// `503`: the version store did not answer, so no write can be checked.
    pub(crate) fn store_unavailable(now: u64) -> Self {
        Self::unavailable(
            "503 Service Unavailable: the version store cannot be reached, so no write can \
be checked. Retry shortly.\n",
            now,
        )
    }

    /// `503`: a `*` precondition needs to know whether the resource exists, and the backend's
    /// answer to the probe did not tell.
    pub(crate) fn probe_inconclusive(now: u64) -> Self {
        Self::unavailable(
            "503 Service Unavailable: the precondition depends on whether the resource \
exists, and the backend's answer to HEAD (or GET) did not tell. Retry later.\n",
            now,
        )
    }

    /// `504`: a forwarded write took longer than the write timeout.
    pub(crate) fn write_timed_out(now: u64) -> Self {
        Self::plain(
            StatusCode::GATEWAY_TIMEOUT,
            "504 Gateway Timeout: the write took too long; its outcome is unknown. Re-read \
the resource before retrying.\n",
            now,
        )
    }

    /// `500`: the inner service panicked while handling a forwarded write.
    pub(crate) fn write_panicked(now: u64) -> Self {
        Self::plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "500 Internal Server Error: the service failed (it panicked) while handling this \
write; its outcome is unknown. Re-read the resource before retrying.\n",
            now,
        )
    }

    /// `503`: the task running a forwarded write ended without an answer (its runtime shut
    /// down, or the task failed after the write).
    pub(crate) fn write_abandoned(now: u64) -> Self {
        Self::unavailable(
            "503 Service Unavailable: the task running this write ended before it could \
answer (the server is shutting down, or failed); its outcome is unknown. Re-read the resource \
before retrying.\n",
            now,
        )
    }

    /// `503`: the backend answered a write, but its version could not be recorded under the
    /// lock (the version store failed over, or the write outlived its lease), so another
    /// write may have overtaken it.
    pub(crate) fn write_unrecorded(now: u64) -> Self {
        Self::unavailable(
            "503 Service Unavailable: the write reached the service, but its new version could \
not be recorded (the version store failed over, or the write took longer than its lock), so \
another write may have overtaken it. Re-read the resource before writing again.\n",
            now,
        )
    }

    /// `503`: with `verify_writes`, the backend did not say what it serves now (no 2xx, `404` or
    /// `410` in time), so the write cannot be checked against writers that bypass the layer.
    pub(crate) fn unverified(now: u64) -> Self {
        Self::unavailable(
            "503 Service Unavailable: the backend did not say what it holds now, so this write \
cannot be checked. Retry shortly.\n",
            now,
        )
    }

    /// `502`: the inner service's response body failed while the layer read it ahead to
    /// fingerprint it (before anything was sent).
    pub(crate) fn body_failed(now: u64) -> Self {
        Self::plain(
            StatusCode::BAD_GATEWAY,
            "502 Bad Gateway: the backend's response body failed before it could be sent.\n",
            now,
        )
    }

    /// What it tells its client, in the terms of the layer's metrics.
    pub(crate) fn said(&self) -> Said {
        if let Some(failed) = self.failed {
            return Said::PreconditionFailed(failed); // every `412` says which
        }
        match self.status {
            StatusCode::NOT_MODIFIED => Said::NotModified,
            StatusCode::PRECONDITION_REQUIRED => Said::PreconditionRequired,
            StatusCode::BAD_REQUEST => Said::BadRequest,
            StatusCode::PAYLOAD_TOO_LARGE => Said::TooLarge,
            StatusCode::SERVICE_UNAVAILABLE => Said::Unavailable,
            _ => Said::ForwardFailed,
        }
    }

    /// Whether this is a `304 Not Modified`.
    pub(crate) fn is_not_modified(&self) -> bool {
        self.status == StatusCode::NOT_MODIFIED
    }

    fn unavailable(body: &'static str, now: u64) -> Self {
        Self::plain(StatusCode::SERVICE_UNAVAILABLE, body, now)
    }

    fn plain(status: StatusCode, body: &'static str, now: u64) -> Self {
        Self {
            status,
            failed: None,
            body,
            stamp: None,
            cached: None,
            now,
        }
    }

    /// The response, with a `Date` from the layer's clock (never earlier than the
    /// `Last-Modified` it carries).
    pub(crate) fn into_response<B>(self) -> Response<ResponseBody<B>> {
        let mut res = Response::new(ResponseBody::own(self.body));
        *res.status_mut() = self.status;
        let headers = res.headers_mut();
        if let Some(cached) = &self.cached {
            for (name, value) in cached.iter() {
                headers.append(name.clone(), value.clone());
            }
        }
        if !self.body.is_empty() {
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        match self.stamp {
            Some(version) => stamp(headers, version, self.now),
            None => {
                headers.insert(DATE, date::header_value(self.now));
            }
        }
        res
    }
}

/// Sets `ETag`, `Last-Modified` and a `Date` no earlier than it, replacing the inner service's.
pub(crate) fn stamp(headers: &mut HeaderMap, version: Version, now: u64) {
    headers.insert(ETAG, version.tag().header_value());
    headers.insert(LAST_MODIFIED, date::header_value(version.modified));
    headers.insert(DATE, date::header_value(now.max(version.modified)));
}

/// What a `304` repeats from a 200 besides `ETag`, `Last-Modified` and `Date` (RFC 9110 §15.4.5).
const CACHED: [HeaderName; 4] = [CACHE_CONTROL, CONTENT_LOCATION, EXPIRES, VARY];

/// Those headers of a 2xx response, if it has any.
pub(crate) fn cached_headers(headers: &HeaderMap) -> Option<Arc<HeaderMap>> {
    let mut cached = HeaderMap::new();
    for name in &CACHED {
        for value in headers.get_all(name) {
            cached.append(name.clone(), value.clone());
        }
    }
    (!cached.is_empty()).then(|| Arc::new(cached))
}

/// Whether `headers` differ from what is cached, without building anything.
pub(crate) fn cached_headers_differ(cached: Option<&HeaderMap>, headers: &HeaderMap) -> bool {
    match cached {
        // One pass over the names, not a lookup of each: most responses carry none of them.
        None => headers.keys().any(|name| CACHED.contains(name)),
        Some(cached) => CACHED
            .iter()
            .any(|name| !headers.get_all(name).iter().eq(cached.get_all(name).iter())),
    }
}
