//! What a request names, checked before anything else sees it: its target made origin-form and
//! normalized (so the resource key is computed from exactly the path that is forwarded, and no
//! path can leave the upstream's prefix), its `Host` a plain authority, and the key the
//! backend's own naming implies (`--key-fold`, `--key-query`).

use std::borrow::Cow;

use clap::ValueEnum;
use http::{
    header, request::Parts, uri::PathAndQuery, HeaderValue, Method, Request, StatusCode, Uri,
    Version,
};
use tower_conditional::{key::normalize_path, ExtractKey};

use crate::forward::OwnAnswer;

/// Makes `req`'s target origin-form with its path normalized (RFC 3986 §6.2.2), and its `Host`
/// the authority the client named; or answers the request itself.
///
/// - `CONNECT`: `405` (this is a reverse proxy, not a tunnel).
/// - Asterisk-form (`OPTIONS *`): answered here; with any other method, `400`.
/// - Authority-form (`PUT host:80`) and anything without an absolute path: `400`, since it
///   names no resource of the backend.
/// - A `%` not followed by two hex digits, or a `.`/`..` segment hidden behind an encoded
///   slash (`..%2F`, `..%5C`), which a backend that decodes them would resolve: `400`.
/// - More than one `Host`, or one that is not `host[:port]`, or none on HTTP/1.1 (RFC 9112
///   §3.2): `400`.
///
/// Raw non-ASCII bytes in the target (which RFC 9112 does not allow but clients send) are
/// percent-encoded first, as RFC 3987 §3.1 maps an IRI to a URI: `/é` is forwarded, and keyed,
/// as `/%C3%A9`.
pub fn admit<B>(req: &mut Request<B>) -> Result<(), OwnAnswer> {
    if req.method() == Method::CONNECT {
        let refused = OwnAnswer::new(StatusCode::METHOD_NOT_ALLOWED, CONNECT_REFUSED);
        return Err(refused.with(header::ALLOW, ALLOW));
    }
    let uri = req.uri();
    let (path, query) = (
        encode_non_ascii(uri.path()),
        uri.query().map(encode_non_ascii),
    );
    if path == "*" && uri.scheme().is_none() {
        if req.method() == Method::OPTIONS {
            return Err(OwnAnswer::new(StatusCode::OK, "").with(header::ALLOW, ALLOW));
        }
        return Err(OwnAnswer::new(StatusCode::BAD_REQUEST, ASTERISK_REFUSED));
    }
    if !path.starts_with('/') {
        return Err(OwnAnswer::new(StatusCode::BAD_REQUEST, NO_PATH));
    }
    if !valid_percent_encoding(&path) || hides_dot_segment(&path) {
        return Err(OwnAnswer::new(StatusCode::BAD_REQUEST, BAD_PATH));
    }
    let normal = normalize_path(&path);
    // The usual case, an origin-form target already normal, is kept as it is: no allocation.
    let unchanged = uri.scheme().is_none()
        && matches!((&path, &normal), (Cow::Borrowed(_), Cow::Borrowed(_)))
        && matches!(query, None | Some(Cow::Borrowed(_)));
    // RFC 9112 §3.2.2 (and RFC 9113 §8.3.1 for `:authority`): the target's authority, when it
    // has one, replaces `Host`.
    let authority = uri.authority().map(|a| a.as_str().to_owned());
    let version = req.version();
    if !unchanged {
        let origin_form = match query {
            Some(query) => format!("{normal}?{query}"),
            None => normal.into_owned(),
        };
        let Ok(origin_form) = origin_form.parse::<PathAndQuery>() else {
            return Err(OwnAnswer::new(StatusCode::BAD_REQUEST, BAD_PATH));
        };
        *req.uri_mut() = Uri::from(origin_form);
    }
    let headers = req.headers_mut();
    if let Some(authority) = authority {
        let Ok(value) = HeaderValue::from_str(&authority) else {
            return Err(OwnAnswer::new(StatusCode::BAD_REQUEST, BAD_HOST));
        };
        headers.insert(header::HOST, value);
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(host), None) if !valid_host(host.as_bytes()) => {
            Err(OwnAnswer::new(StatusCode::BAD_REQUEST, BAD_HOST))
        }
        (Some(_), Some(_)) => Err(OwnAnswer::new(StatusCode::BAD_REQUEST, BAD_HOST)),
        (None, _) if version == Version::HTTP_11 => {
            Err(OwnAnswer::new(StatusCode::BAD_REQUEST, NO_HOST))
        }
        _ => Ok(()),
    }
}

const ALLOW: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";
const CONNECT_REFUSED: &str = "405 Method Not Allowed: this proxy does not tunnel (CONNECT).\n";
const ASTERISK_REFUSED: &str = "400 Bad Request: `*` is a target for OPTIONS only.\n";
const NO_PATH: &str = "400 Bad Request: the request target must be a path (origin-form) or an \
absolute URL.\n";
const BAD_PATH: &str = "400 Bad Request: the path has an invalid percent-encoding or a dot \
segment behind an encoded slash.\n";
const BAD_HOST: &str = "400 Bad Request: Host must be one host[:port].\n";
const NO_HOST: &str = "400 Bad Request: an HTTP/1.1 request must carry a Host.\n";

/// RFC 3986 §2.1: every `%` starts `%XX`.
fn valid_percent_encoding(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || matches!((bytes.get(i + 1), bytes.get(i + 2)),
                (Some(h), Some(l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit())
    })
}

/// Whether a `.` or `..` segment appears once encoded slashes and backslashes count as `/`.
/// `normalize_path` removes the plain ones; a backend that decodes `%2F` (or treats `\` as `/`)
/// would resolve the hidden ones, outside what the key and the prefix assume.
fn hides_dot_segment(path: &str) -> bool {
    percent_decode(path, |_| true)
        .split(|&b| b == b'/' || b == b'\\')
        .any(|segment| segment == b"." || segment == b"..")
}

/// Raw bytes outside ASCII percent-encoded (RFC 3987 §3.1), ASCII kept as it is.
fn encode_non_ascii(s: &str) -> Cow<'_, str> {
    if s.is_ascii() {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() * 3);
    for &b in s.as_bytes() {
        if b.is_ascii() {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Cow::Owned(out)
}

/// The proxy's one percent-decoding helper: the bytes of `s` with each `%XX` (two hex digits)
/// decoded where `decode` says so, and kept encoded, its hex digits upper-cased (RFC 3986
/// §6.2.2.1), where not; anything else copied. It works on bytes, so no input, however it
/// mixes `%` and multi-byte characters, can make it split a character.
fn percent_decode(s: &str, decode: impl Fn(u8) -> bool) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let encoded = match bytes.get(i..i + 3) {
            Some([b'%', high, low]) => hex_digit(*high).zip(hex_digit(*low)),
            _ => None,
        };
        match encoded {
            Some((high, low)) => {
                let byte = high << 4 | low;
                if decode(byte) {
                    out.push(byte);
                } else {
                    out.extend_from_slice(format!("%{byte:02X}").as_bytes());
                }
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

fn hex_digit(b: u8) -> Option<u8> {
    char::from(b)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// RFC 9110 §7.2 `Host = uri-host [ ":" port ]`, with the host a DNS name, an IPv4 address or
/// a bracketed IPv6 literal: nothing that could end a quoted-string or a list element.
fn valid_host(host: &[u8]) -> bool {
    let (name, port) = match host.iter().rposition(|&b| b == b':') {
        Some(colon) if !host[colon..].contains(&b']') => (&host[..colon], Some(&host[colon + 1..])),
        _ => (host, None),
    };
    let port_ok = port.is_none_or(|p| p.iter().all(u8::is_ascii_digit));
    let name_ok = match name {
        [b'[', literal @ .., b']'] => {
            !literal.is_empty()
                && literal
                    .iter()
                    .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        }
        _ => {
            !name.is_empty()
                && name
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        }
    };
    port_ok && name_ok
}

/// A way a backend folds two spellings of a path into one resource (`--key-fold`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Fold {
    /// Letter case (`/Docs/A` is `/docs/a`), also of percent-encoded non-ASCII letters.
    Case,
    /// Runs of slashes (`/docs//a` is `/docs/a`).
    Slashes,
    /// A trailing slash (`/docs/a/` is `/docs/a`).
    TrailingSlash,
    /// An encoded slash (`/docs/a%2Fb` is `/docs/a/b`).
    DecodedSlash,
}

/// The resource key: the normalized path (as forwarded), folded as the backend folds it, and
/// with `--key-query` the query string.
#[derive(Debug, Clone, Default)]
pub struct ResourceKey {
    folds: Vec<Fold>,
    query: bool,
}

impl ResourceKey {
    pub fn new(folds: &[Fold], query: bool) -> Self {
        Self {
            folds: folds.to_vec(),
            query,
        }
    }

    fn folds(&self, fold: Fold) -> bool {
        self.folds.contains(&fold)
    }

    /// The key of an origin-form `uri` (see [`admit`]).
    pub fn of(&self, uri: &Uri) -> String {
        let mut key = normalize_path(uri.path()).into_owned();
        if self.folds(Fold::DecodedSlash) {
            key = key.replace("%2F", "/");
        }
        if self.folds(Fold::Slashes) {
            let mut collapsed = String::with_capacity(key.len());
            for c in key.chars() {
                if !(c == '/' && collapsed.ends_with('/')) {
                    collapsed.push(c);
                }
            }
            key = collapsed;
        }
        if self.folds(Fold::TrailingSlash) && key.len() > 1 && key.ends_with('/') {
            key.pop();
        }
        if self.folds(Fold::Case) {
            key = lowercase(&key);
        }
        if self.query {
            if let Some(query) = uri.query().filter(|q| !q.is_empty()) {
                key.push('?');
                key.push_str(&normalize_query(query));
            }
        }
        key
    }
}

impl ExtractKey for ResourceKey {
    type Key = Box<str>;

    fn extract_key(&self, parts: &Parts) -> Option<Box<str>> {
        Some(self.of(&parts.uri).into())
    }
}

/// Lower case, with percent-encoded UTF-8 decoded first so `%C3%89` folds like `É`.
fn lowercase(path: &str) -> String {
    match String::from_utf8(percent_decode(path, |b| !b.is_ascii())) {
        Ok(decoded) => decoded.to_lowercase(),
        Err(_) => path.to_ascii_lowercase(),
    }
}

/// RFC 3986 §6.2.2.1–2 for a query: `%XX` of an unreserved character decoded, other hex digits
/// upper-cased. Nothing else: `+` and `%20` stay apart, as backends tell them apart.
fn normalize_query(query: &str) -> String {
    let normal = percent_decode(query, |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
    });
    // Only ASCII was decoded, so what was UTF-8 still is.
    String::from_utf8(normal)
        .unwrap_or_else(|err| String::from_utf8_lossy(err.as_bytes()).into_owned())
}
