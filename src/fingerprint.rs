//! What identifies the inner service's representation of a resource: how the layer notices
//! writes that bypass it.
//!
//! The layer's versions are its own. A backend that other programs also write to changes
//! behind them; a [`Fingerprint`] of what the backend served, recorded with the version, lets the
//! layer tell: the same version served with another fingerprint, with no write through the layer
//! in between, is an out-of-band change, and the version is bumped.
//!
//! The fingerprint is the backend's own `ETag` when it sends one, else its `Last-Modified`, else
//! a hash of the body, computed as the body streams through (memory stays bounded whatever the
//! size). A `Last-Modified` has one-second resolution: two backend writes in one second look
//! alike, which only the `ETag` or the body hash can tell apart.

use std::{future::poll_fn, time::Duration};

use bytes::Bytes;
use http::{
    header::{ETAG, LAST_MODIFIED},
    HeaderMap, HeaderValue, Request, Response, StatusCode,
};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tower_service::Service;

/// The inner service's validator for one representation, or a hash of its body.
///
/// Two `ETag`s compare weakly (`W/"a"` is `"a"`): a backend that weakens its tag when it
/// compresses a response has not changed the resource.
#[derive(Debug, Clone, Eq)]
#[non_exhaustive]
pub enum Fingerprint {
    /// The inner service's own `ETag`, as it sent it.
    ETag(HeaderValue),
    /// Its `Last-Modified`, when it sends no `ETag`.
    LastModified(HeaderValue),
    /// A 64-bit FNV-1a hash of the body, when it sends neither.
    Body(u64),
    /// The inner service answered `404` or `410`: no representation.
    Absent,
    /// The layer wrote the resource and could not learn what the inner service serves since:
    /// whatever is seen next counts as a change.
    Unknown,
}

impl PartialEq for Fingerprint {
    fn eq(&self, other: &Self) -> bool {
        fn opaque(tag: &HeaderValue) -> &[u8] {
            let bytes = tag.as_bytes();
            bytes.strip_prefix(b"W/").unwrap_or(bytes)
        }
        match (self, other) {
            (Fingerprint::ETag(a), Fingerprint::ETag(b)) => opaque(a) == opaque(b),
            (Fingerprint::LastModified(a), Fingerprint::LastModified(b)) => a == b,
            (Fingerprint::Body(a), Fingerprint::Body(b)) => a == b,
            (Fingerprint::Absent, Fingerprint::Absent) => true,
            // Nothing is the same as what the layer could not learn.
            _ => false,
        }
    }
}

impl Fingerprint {
    /// The validator in `headers`: the `ETag`, else the `Last-Modified`.
    pub fn of_headers(headers: &HeaderMap) -> Option<Self> {
        if let Some(tag) = headers.get(ETAG) {
            return Some(Fingerprint::ETag(tag.clone()));
        }
        headers
            .get(LAST_MODIFIED)
            .map(|date| Fingerprint::LastModified(date.clone()))
    }

    /// The backend's strong `ETag`, which it can check in `If-Match` itself.
    pub(crate) fn strong_tag(&self) -> Option<&HeaderValue> {
        match self {
            Fingerprint::ETag(tag) if tag.as_bytes().first() == Some(&b'"') => Some(tag),
            _ => None,
        }
    }

    /// One line of ASCII text, for a store that keeps strings (see
    /// [`decode`](Fingerprint::decode)). Header values are hex-encoded, so any bytes round-trip.
    pub fn encode(&self) -> String {
        fn hex(bytes: &[u8]) -> String {
            bytes.iter().map(|byte| format!("{byte:02x}")).collect()
        }
        match self {
            // `E` for a weak tag, without its `W/`: a store compares what follows the kind.
            Fingerprint::ETag(tag) => match tag.as_bytes().strip_prefix(b"W/") {
                Some(opaque) => format!("E{}", hex(opaque)),
                None => format!("e{}", hex(tag.as_bytes())),
            },
            Fingerprint::LastModified(date) => format!("m{}", hex(date.as_bytes())),
            Fingerprint::Body(hash) => format!("h{hash:016x}"),
            Fingerprint::Absent => "a".to_owned(),
            Fingerprint::Unknown => "u".to_owned(),
        }
    }

    /// The fingerprint [`encode`](Fingerprint::encode) made, if `text` is one.
    pub fn decode(text: &str) -> Option<Self> {
        fn value(hex: &str) -> Option<HeaderValue> {
            if hex.len() % 2 != 0 || !hex.is_ascii() {
                return None;
            }
            let bytes: Option<Vec<u8>> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
                .collect();
            HeaderValue::from_bytes(&bytes?).ok()
        }
        let (kind, rest) = (text.get(..1)?, text.get(1..)?);
        match kind {
            "e" => value(rest).map(Fingerprint::ETag),
            "E" => value(&format!("572f{rest}")).map(Fingerprint::ETag), // `W/`
            "m" => value(rest).map(Fingerprint::LastModified),
            "h" => u64::from_str_radix(rest, 16).ok().map(Fingerprint::Body),
            "a" if rest.is_empty() => Some(Fingerprint::Absent),
            "u" if rest.is_empty() => Some(Fingerprint::Unknown),
            _ => None,
        }
    }
}

/// How the layer notices writes that reach the inner service without it . All off by default: the layer is then the only writer.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Bypass {
    /// Record a fingerprint with every 2xx read the layer forwards, and bump on a change.
    pub(crate) fingerprint_reads: bool,
    /// Answer `304` from the table only while the inner service confirmed the version within
    /// this long; after it, forward the read (conditionally, with the backend's validator).
    pub(crate) revalidate_after: Option<Duration>,
    /// Ask the inner service for the current fingerprint under the lock before deciding a
    /// write, and record the written one after.
    pub(crate) verify_writes: bool,
    /// Forward a write with `If-Match: <the backend's strong tag>` for the version it names.
    pub(crate) forward_validators: bool,
}

impl Bypass {
    /// Whether fingerprints are kept at all.
    pub(crate) fn any(&self) -> bool {
        self.fingerprint_reads
            || self.revalidate_after.is_some()
            || self.verify_writes
            || self.forward_validators
    }
}

/// What the inner service serves for a resource, asked with a bodiless `head`, then `get`: the
/// validator of its `HEAD` when it sends one, else of its `GET`, else a hash of the `GET`'s body
/// (read to its end, never held); `Absent` for `404` or `410`; `None` when it says nothing
/// usable. `inner` must be ready; it is used once or twice.
pub(crate) async fn probe<S, ReqBody, ResBody>(
    inner: &mut S,
    head: Request<ReqBody>,
    get: Request<ReqBody>,
) -> Result<Option<Fingerprint>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
{
    let head = inner.call(head).await?;
    match head.status() {
        StatusCode::NOT_FOUND | StatusCode::GONE => return Ok(Some(Fingerprint::Absent)),
        status if status.is_success() => {
            if let Some(fingerprint) = Fingerprint::of_headers(head.headers()) {
                return Ok(Some(fingerprint));
            }
        }
        _ => {}
    }
    poll_fn(|cx| inner.poll_ready(cx)).await?;
    let res = inner.call(get).await?;
    match res.status() {
        StatusCode::NOT_FOUND | StatusCode::GONE => Ok(Some(Fingerprint::Absent)),
        StatusCode::OK => {
            if let Some(fingerprint) = Fingerprint::of_headers(res.headers()) {
                return Ok(Some(fingerprint));
            }
            let mut body = std::pin::pin!(res.into_body());
            let mut hash = BodyHash::new();
            while let Some(frame) = body.frame().await {
                match frame.ok().map(Frame::into_data) {
                    Some(Ok(data)) => hash.update(&data),
                    Some(Err(_trailers)) => {}
                    None => return Ok(None), // cut short: unknown
                }
            }
            Ok(Some(hash.finish()))
        }
        _ => Ok(None),
    }
}

/// FNV-1a, 64 bits: stable across builds and processes (several proxies on one Redis compare
/// each other's hashes), and a few lines rather than a crate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyHash(u64);

impl BodyHash {
    pub(crate) fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub(crate) fn finish(self) -> Fingerprint {
        Fingerprint::Body(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_any_bytes() {
        for fingerprint in [
            Fingerprint::ETag(HeaderValue::from_static("\"abc\"")),
            Fingerprint::ETag(HeaderValue::from_static("W/\"abc\"")),
            Fingerprint::LastModified(HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT")),
            Fingerprint::Body(0),
            Fingerprint::Body(u64::MAX),
            Fingerprint::Absent,
            Fingerprint::Unknown,
            // Bytes that are not UTF-8 must not be folded into one another.
            Fingerprint::ETag(HeaderValue::from_bytes(b"\"\xff\x80\"").unwrap()),
        ] {
            let decoded = Fingerprint::decode(&fingerprint.encode()).unwrap();
            assert_eq!(decoded.encode(), fingerprint.encode());
        }
        let (a, b) = (
            Fingerprint::ETag(HeaderValue::from_bytes(b"\"\xff\"").unwrap()),
            Fingerprint::ETag(HeaderValue::from_bytes(b"\"\xfe\"").unwrap()),
        );
        assert_ne!(
            Fingerprint::decode(&a.encode()),
            Fingerprint::decode(&b.encode())
        );
        for garbage in ["", "x1", "e7", "ezz", "eé", "a1"] {
            assert_eq!(Fingerprint::decode(garbage), None, "{garbage}");
        }
    }

    #[test]
    fn etags_compare_weakly_and_unknown_matches_nothing() {
        let tag = |t: &'static str| Fingerprint::ETag(HeaderValue::from_static(t));
        assert_eq!(tag("W/\"a\""), tag("\"a\""));
        assert_ne!(tag("\"a\""), tag("\"b\""));
        assert_ne!(Fingerprint::Unknown, Fingerprint::Unknown);
        assert_ne!(Fingerprint::Unknown, Fingerprint::Absent);
    }

    #[test]
    fn the_etag_comes_first_and_only_a_strong_one_is_forwarded() {
        let mut headers = HeaderMap::new();
        headers.insert(
            LAST_MODIFIED,
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert!(matches!(
            Fingerprint::of_headers(&headers),
            Some(Fingerprint::LastModified(_))
        ));
        headers.insert(ETAG, HeaderValue::from_static("W/\"a\""));
        let weak = Fingerprint::of_headers(&headers).unwrap();
        assert!(matches!(weak, Fingerprint::ETag(_)) && weak.strong_tag().is_none());
        headers.insert(ETAG, HeaderValue::from_static("\"a\""));
        assert!(Fingerprint::of_headers(&headers)
            .unwrap()
            .strong_tag()
            .is_some());
    }

    #[test]
    fn body_hashes_tell_bodies_apart_whatever_the_chunking() {
        let hash = |chunks: &[&[u8]]| {
            let mut hash = BodyHash::new();
            chunks.iter().for_each(|chunk| hash.update(chunk));
            hash.finish()
        };
        assert_eq!(hash(&[b"hello world"]), hash(&[b"hello", b" ", b"world"]));
        assert_ne!(hash(&[b"hello world"]), hash(&[b"hello worle"]));
        assert_ne!(hash(&[]), hash(&[b"\0"]));
    }
}
