//! Optimistic locking for any HTTP service, with standard conditional requests.
//!
//! [`ConditionalLayer`] sits in front of a storage service that has no concurrency control of
//! its own and keeps a version for every resource it sees: a strong `ETag` and a
//! `Last-Modified`. It is the only clock. It evaluates RFC 9110 preconditions (`If-Match`,
//! `If-Unmodified-Since`, `If-None-Match`, `If-Modified-Since`, `If-Range`, in §13.2.2 order) and
//! answers, **before the request reaches the inner service**:
//!
//! - a read (`GET`, `HEAD`) that names the current version in `If-None-Match` or
//!   `If-Modified-Since` with `304 Not Modified`;
//! - a write (`POST`, `PUT`, `PATCH`, `DELETE`) whose `If-Match` or `If-Unmodified-Since` does
//!   not name the current version (or whose `If-None-Match: *` finds the resource) with
//!   `412 Precondition Failed`. A client re-reads and retries;
//! - with [`ConditionalLayer::require_precondition`], a write with no precondition at all with
//!   `428 Precondition Required`.
//!
//! A write is checked, forwarded and recorded under its resource's write lock, so two clients
//! that read the same version cannot both write it: no update is lost. Writes to different
//! resources never wait on each other, and reads never wait at all.
//!
//! Versions live in a [`store::VersionStore`]: [`store::MemoryStore`] in the process by default,
//! or, with the `redis` feature, `store::RedisStore`, shared by several proxies.
//!
//! With the `metrics` feature, the layer counts what it does (`304`, `412` by precondition,
//! `428`, refusals, forwarded reads and writes by outcome) and times lock waits, store calls and
//! the inner service through the [`metrics`](https://docs.rs/metrics) facade, into the recorder
//! the service installs (before it applies the layer); the README lists the metrics.
//!
//! The layer assumes by default that every write goes through it. When other programs write to
//! the backend too, [`ConditionalLayer::revalidate_after`], [`ConditionalLayer::verify_writes`]
//! and [`ConditionalLayer::forward_validators`] make it notice them, from a fingerprint of what
//! the backend serves (its `ETag`, its `Last-Modified`, or a hash of the body).
//!
//! Dates have one-second resolution. A date shared by two versions written in the same second
//! is never accepted as a validator; once the clock has moved on, the current version is
//! re-dated to a second of its own (its ETag stays). A resource the layer has not seen since it
//! started is dated at the layer's start and treated the same way, and ETags carry a random
//! per-start instance, so clients that synced before a restart get `412` and re-sync instead of
//! overwriting newer data.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use http::{header, Method, Request, Response, StatusCode};
//! use http_body_util::Full;
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//! use tower_conditional::ConditionalLayer;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), std::convert::Infallible> {
//! let storage = service_fn(|_req: Request<Full<Bytes>>| async {
//!     Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("{}"))))
//! });
//! let mut service = ServiceBuilder::new()
//!     .layer(ConditionalLayer::new())
//!     .service(storage);
//!
//! // Save: the layer stamps the new version on the response.
//! let save = Request::post("/api/storage").body(Full::default()).unwrap();
//! let res = service.ready().await?.call(save).await?;
//! assert_eq!(res.status(), StatusCode::OK);
//! let last_modified = res.headers()[header::LAST_MODIFIED].clone();
//!
//! // A save based on an older version is refused without reaching the storage.
//! let stale = Request::builder()
//!     .method(Method::POST)
//!     .uri("/api/storage")
//!     .header(header::IF_UNMODIFIED_SINCE, "Sun, 06 Nov 1994 08:49:37 GMT")
//!     .body(Full::default())
//!     .unwrap();
//! let res = service.ready().await?.call(stale).await?;
//! assert_eq!(res.status(), StatusCode::PRECONDITION_FAILED);
//! assert_eq!(res.headers()[header::LAST_MODIFIED], last_modified);
//! # Ok(())
//! # }
//! ```
//!
//! # Semantics
//!
//! | request | layer's answer |
//! |---|---|
//! | a precondition in §13.2.2 order fails on `GET`/`HEAD` | `304` (`If-None-Match`, `If-Modified-Since`) or `412` (`If-Match`, `If-Unmodified-Since`) |
//! | a precondition fails on a write | `412` |
//! | malformed `If-Match`/`If-None-Match` | ignored on reads, `400` on writes |
//! | invalid or repeated date field | ignored (RFC 9110 §13.1.3, §13.1.4) |
//! | `GET` with `Range` and a non-matching `If-Range` | forwarded without `Range` |
//! | all preconditions hold | forwarded; a 2xx read is stamped with the version seen before forwarding |
//! | forwarded write answered 2xx | version bumped, new `ETag`/`Last-Modified` on the response |
//! | forwarded write answered 4xx | nothing changes |
//! | forwarded write answered 1xx/3xx/5xx, failed, or dropped | version bumped: the outcome is unknown |
//! | any other method, or a key function returning `None` | passed through untouched |
//!
//! Dates are matched exactly. `*` tests whether the resource exists, which the layer learns
//! from responses; when it does not know and a write depends on it, it asks the inner service
//! (`HEAD`, else `GET`) under the resource's lock. Write bodies are read in full before the lock
//! is taken, and probes have empty bodies, so the inner service's request body type must
//! implement [`FromBytes`]. A forwarded write the inner service does not answer at once runs in
//! a task spawned on the current tokio runtime, so that a client leaving never abandons one. Every response the layer answers or stamps carries a `Date` from its
//! clock, never earlier than its `Last-Modified`. The README has the full table.

#![warn(missing_docs, missing_debug_implementations)]
#![deny(unreachable_pub)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod answer;
mod body;
pub mod clock;
mod date;
mod etag;
mod fingerprint;
mod future;
pub mod key;
mod layer;
mod metrics;
mod precondition;
mod read;
mod request_body;
mod service;
pub mod store;
mod version;
mod write;

pub use crate::{
    body::ResponseBody, future::ResponseFuture, key::ExtractKey, key::PathKey,
    layer::ConditionalLayer, request_body::FromBytes, service::Conditional,
};
