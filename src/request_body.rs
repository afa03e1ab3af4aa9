//! Request bodies the layer can rebuild: a write's body is read in full before its resource's
//! lock is taken (so a slow upload never holds the resource), then handed on as the same type.

use bytes::Bytes;
use http::{
    header::{CONTENT_LENGTH, CONTENT_TYPE, EXPECT, RANGE, TRANSFER_ENCODING},
    request::Parts,
    Method, Request,
};
use http_body::Body;
use http_body_util::{
    combinators::{BoxBody, UnsyncBoxBody},
    BodyExt, Full,
};

/// A request body type that can be made from bytes: a write's buffered body, or the empty body
/// of a probe asking whether a resource exists.
///
/// Implemented for `Full<Bytes>`, `BoxBody<Bytes, E>`, `UnsyncBoxBody<Bytes, E>` and, with the
/// `axum` feature (on by default), `axum::body::Body`. hyper's `Incoming` cannot be made from
/// bytes: box it first, e.g. `ServiceBuilder::new().map_request(|r: Request<Incoming>|
/// r.map(BoxBody::new))`, as the crate's hyper example does.
pub trait FromBytes: Body<Data = Bytes> + Sized {
    /// A body that yields `bytes`.
    fn from_bytes(bytes: Bytes) -> Self;
}

impl FromBytes for Full<Bytes> {
    fn from_bytes(bytes: Bytes) -> Self {
        Full::new(bytes)
    }
}

impl<E: 'static> FromBytes for BoxBody<Bytes, E> {
    fn from_bytes(bytes: Bytes) -> Self {
        Full::new(bytes).map_err(|never| match never {}).boxed()
    }
}

impl<E: 'static> FromBytes for UnsyncBoxBody<Bytes, E> {
    fn from_bytes(bytes: Bytes) -> Self {
        Full::new(bytes)
            .map_err(|never| match never {})
            .boxed_unsync()
    }
}

#[cfg(feature = "axum")]
impl FromBytes for axum_core::body::Body {
    fn from_bytes(bytes: Bytes) -> Self {
        axum_core::body::Body::from(bytes)
    }
}

/// A bodiless, unconditional copy of the request `original` with `method`.
pub(crate) fn bodiless<ReqBody: FromBytes>(method: Method, original: &Parts) -> Request<ReqBody> {
    let mut probe = Request::new(ReqBody::from_bytes(Bytes::new()));
    *probe.method_mut() = method;
    *probe.uri_mut() = original.uri.clone();
    *probe.version_mut() = original.version;
    *probe.extensions_mut() = original.extensions.clone();
    let headers = probe.headers_mut();
    *headers = original.headers.clone();
    crate::precondition::remove_conditions(headers);
    for name in [
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
