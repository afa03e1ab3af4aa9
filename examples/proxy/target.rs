//! What a request names, checked before anything else sees it: its target made origin-form and
//! normalized (so the resource key is computed from exactly the path that is forwarded, and no
//! path can leave the upstream's prefix), its `Host` a plain authority, and the key the
//! backend's own naming implies (`--key-fold`, `--key-query`).

use std::borrow::Cow;

use clap::ValueEnum;
use http::{
    header, request::Parts, uri::PathAndQuery, HeaderValue, Method, Request, StatusCode, Uri,
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
/// - More than one `Host`, or one that is not `host[:port]`: `400`.
pub fn admit<B>(req: &mut Request<B>) -> Result<(), OwnAnswer> {
    if req.method() == Method::CONNECT {
        let refused = OwnAnswer::new(StatusCode::METHOD_NOT_ALLOWED, CONNECT_REFUSED);
        return Err(refused.with(header::ALLOW, ALLOW));
    }
    let uri = req.uri();
    if uri.path() == "*" && uri.scheme().is_none() {
        if req.method() == Method::OPTIONS {
            return Err(OwnAnswer::new(StatusCode::OK, "").with(header::ALLOW, ALLOW));
        }
        return Err(OwnAnswer::new(StatusCode::BAD_REQUEST, ASTERISK_REFUSED));
    }
    if !uri.path().starts_with('/') {
        return Err(OwnAnswer::new(StatusCode::BAD_REQUEST, NO_PATH));
    }
    if !valid_percent_encoding(uri.path()) || hides_dot_segment(uri.path()) {
        return Err(OwnAnswer::new(StatusCode::BAD_REQUEST, BAD_PATH));
    }
    let path = normalize_path(uri.path());
    let origin_form = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.into_owned(),
    };
    let Ok(origin_form) = origin_form.parse::<PathAndQuery>() else {
        return Err(OwnAnswer::new(StatusCode::BAD_REQUEST, BAD_PATH));
    };
    // RFC 9112 §3.2.2 (and RFC 9113 §8.3.1 for `:authority`): the target's authority, when it
    // has one, replaces `Host`.
    let authority = uri.authority().map(|a| a.as_str().to_owned());
    *req.uri_mut() = Uri::from(origin_form);
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
    let decoded = percent_decode_ascii(path);
    decoded
        .split(['/', '\\'])
        .any(|segment| segment == "." || segment == "..")
}

/// `%XX` decoded where it encodes an ASCII character; other bytes kept as they are.
fn percent_decode_ascii(path: &str) -> Cow<'_, str> {
    if !path.contains('%') {
        return Cow::Borrowed(path);
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(byte) = hex_byte(bytes.get(i + 1..i + 3)) {
                if byte.is_ascii() {
                    out.push(char::from(byte));
                    i += 3;
                    continue;
                }
            }
        }
        let next = path[i + 1..].find('%').map_or(path.len(), |at| i + 1 + at);
        out.push_str(&path[i..next]);
        i = next;
    }
    Cow::Owned(out)
}

/// The byte `XX` of a `%XX` (both hex digits; `from_str_radix` alone would take `+1`).
fn hex_byte(pair: Option<&[u8]>) -> Option<u8> {
    let pair = pair.filter(|p| p.iter().all(u8::is_ascii_hexdigit))?;
    u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()
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
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match hex_byte(bytes.get(i + 1..i + 3)) {
            Some(byte) if bytes[i] == b'%' && !byte.is_ascii() => {
                decoded.push(byte);
                i += 3;
            }
            _ => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    match String::from_utf8(decoded) {
        Ok(decoded) => decoded.to_lowercase(),
        Err(_) => path.to_ascii_lowercase(),
    }
}

/// RFC 3986 §6.2.2.1–2 for a query: `%XX` of an unreserved character decoded, other hex digits
/// upper-cased. Nothing else: `+` and `%20` stay apart, as backends tell them apart.
fn normalize_query(query: &str) -> String {
    let bytes = query.as_bytes();
    let mut out = String::with_capacity(query.len());
    let mut i = 0;
    while i < bytes.len() {
        match hex_byte(bytes.get(i + 1..i + 3)) {
            Some(byte) if bytes[i] == b'%' => {
                if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                    out.push(char::from(byte));
                } else {
                    out.push_str(&format!("%{byte:02X}"));
                }
                i += 3;
            }
            _ => {
                let next = query[i + 1..]
                    .find('%')
                    .map_or(query.len(), |at| i + 1 + at);
                out.push_str(&query[i..next]);
                i = next;
            }
        }
    }
    out
}
