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
    store::{Snapshot, Version},
};

/// A response the layer gives without (or instead of) the inner service's.
#[derive(Debug)]
pub(crate) struct Answer {
    status: StatusCode,
    body: &'static str,
    /// The version whose validators the answer carries.
    stamp: Option<Version>,
    /// What a `304` repeats from the last 2xx read.
    cached: Option<Arc<HeaderMap>>,
    now: u64,
}

const PRECONDITION_FAILED: &str = "412 Precondition Failed: the resource has changed since the \
version this request was based on. Re-read it (GET) and retry with its new ETag or Last-Modified.\n";
const PRECONDITION_REQUIRED: &str = "428 Precondition Required: this server refuses blind \
overwrites. Read the resource first and send its ETag in If-Match (or its Last-Modified in \
If-Unmodified-Since), or If-None-Match: * to create it only if it does not exist.\n";

const WRITE_TIMED_OUT: &str = "504 Gateway Timeout: the write took too long; its outcome is \
unknown. Re-read the resource before retrying.\n";

impl Answer {
    pub(crate) fn not_modified(snapshot: Snapshot, now: u64) -> Self {
        Self {
            status: StatusCode::NOT_MODIFIED,
            body: "",
            stamp: Some(snapshot.version),
            cached: snapshot.cached,
            now,
        }
    }

    pub(crate) fn precondition_failed(version: Version, now: u64) -> Self {
        Self {
            status: StatusCode::PRECONDITION_FAILED,
            body: PRECONDITION_FAILED,
            stamp: Some(version),
            cached: None,
            now,
        }
    }

    pub(crate) fn precondition_required(now: u64) -> Self {
        Self::plain(
            StatusCode::PRECONDITION_REQUIRED,
            PRECONDITION_REQUIRED,
            now,
        )
    }

    pub(crate) fn service_unavailable(body: &'static str, now: u64) -> Self {
        Self::plain(StatusCode::SERVICE_UNAVAILABLE, body, now)
    }

    pub(crate) fn write_timed_out(now: u64) -> Self {
        Self::plain(StatusCode::GATEWAY_TIMEOUT, WRITE_TIMED_OUT, now)
    }

    pub(crate) fn plain(status: StatusCode, body: &'static str, now: u64) -> Self {
        Self {
            status,
            body,
            stamp: None,
            cached: None,
            now,
        }
    }

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
    CACHED.iter().any(|name| {
        let now = headers.get_all(name).iter();
        match cached {
            Some(cached) => !now.eq(cached.get_all(name).iter()),
            None => now.count() > 0,
        }
    })
}
