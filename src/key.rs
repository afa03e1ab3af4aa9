//! Which resource a request reads or writes.
//!
//! By default the key is the request path normalized per RFC 3986 §6.2.2, without the query,
//! so that two spellings of one path share one version and one write lock. A backend whose read
//! and write endpoints differ supplies its own [`ExtractKey`], usually a closure.
//!
//! # Example
//!
//! ```
//! use http::request::Parts;
//! use tower_conditional::ConditionalLayer;
//!
//! // `/api/storage/read` and `/api/storage/write` are one resource; everything else passes.
//! let layer = ConditionalLayer::new().key_fn(|parts: &Parts| {
//!     parts.uri.path().strip_prefix("/api/storage/").map(|_| "storage")
//! });
//! # drop(layer);
//! ```

use std::{borrow::Cow, hash::Hash};

use http::request::Parts;

/// Maps a request to the resource it concerns, or `None` to let it pass untouched.
///
/// Implemented for [`PathKey`] and for any `Fn(&Parts) -> Option<K>`.
pub trait ExtractKey {
    /// The resource key.
    type Key: Hash + Eq + Clone + Send + Sync + 'static;

    /// The resource `parts` reads or writes; `None` passes the request through.
    fn extract_key(&self, parts: &Parts) -> Option<Self::Key>;
}

impl<F, K> ExtractKey for F
where
    F: Fn(&Parts) -> Option<K>,
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    type Key = K;

    fn extract_key(&self, parts: &Parts) -> Option<K> {
        self(parts)
    }
}

/// The default key: the request path, normalized by [`normalize_path`]; the query is ignored.
#[derive(Debug, Clone, Copy, Default)]
pub struct PathKey;

impl ExtractKey for PathKey {
    /// A boxed `str` rather than a `String`: 8 bytes less in every tracked resource.
    type Key = Box<str>;

    fn extract_key(&self, parts: &Parts) -> Option<Box<str>> {
        Some(normalize_path(parts.uri.path()).into())
    }
}

/// Normalizes a URI path per RFC 3986 §6.2.2: percent-encoded unreserved characters are
/// decoded, the hex digits of the other percent-encodings are upper-cased, and `.` and `..`
/// segments are removed. A `%` that starts no percent-encoding is encoded as `%25`, so that
/// decoding never makes a new one out of it (`/%%330` is `/%2530`, not `/%30` then `/0`):
/// normalizing twice gives what normalizing once gave. An empty path (an authority-form target)
/// is `/`, the path it is forwarded as. Nothing else is folded: letter case, `//` and a trailing
/// `/` are kept, since backends may tell those apart. A path that is already normal is
/// borrowed, not copied.
///
/// ```
/// use tower_conditional::key::normalize_path;
///
/// assert_eq!(normalize_path("/a/./b/../%63%2f%7e"), "/a/c%2F~");
/// assert_eq!(normalize_path("/A//b/"), "/A//b/");
/// assert_eq!(normalize_path("/100%"), "/100%25");
/// ```
pub fn normalize_path(path: &str) -> Cow<'_, str> {
    let decoded = normalize_percent_encoding(path);
    let normal = if has_dot_segment(&decoded) {
        Cow::Owned(remove_dot_segments(&decoded))
    } else {
        decoded
    };
    if normal.is_empty() {
        return Cow::Borrowed("/");
    }
    normal
}

/// §6.2.2.1 and §6.2.2.2: decode `%XX` when it encodes an unreserved character, upper-case it
/// otherwise. A `%` not followed by two hex digits becomes `%25`.
fn normalize_percent_encoding(path: &str) -> Cow<'_, str> {
    let bytes = path.as_bytes();
    let needs_work = bytes.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            && match (bytes.get(i + 1), bytes.get(i + 2)) {
                (Some(h), Some(l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                    is_unreserved(hex_pair(*h, *l))
                        || h.is_ascii_lowercase()
                        || l.is_ascii_lowercase()
                }
                _ => true, // a bare `%`
            }
    });
    if !needs_work {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                let byte = hex_pair(h, l);
                if is_unreserved(byte) {
                    out.push(char::from(byte));
                } else {
                    out.push('%');
                    out.push(char::from(h.to_ascii_uppercase()));
                    out.push(char::from(l.to_ascii_uppercase()));
                }
                i += 3;
            }
            (b'%', _, _) => {
                out.push_str("%25");
                i += 1;
            }
            _ => {
                // Copy up to the next `%` in one go. `i` is a char boundary (it follows an ASCII
                // byte or starts the path) and `bytes[i]` is not `%`, so the search starts there.
                let next = path[i..].find('%').map_or(path.len(), |at| i + at);
                out.push_str(&path[i..next]);
                i = next;
            }
        }
    }
    Cow::Owned(out)
}

fn hex_pair(high: u8, low: u8) -> u8 {
    fn digit(b: u8) -> u8 {
        (b as char).to_digit(16).expect("checked hex digit") as u8
    }
    digit(high) << 4 | digit(low)
}

/// RFC 3986 §2.3: `ALPHA / DIGIT / "-" / "." / "_" / "~"`.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

fn has_dot_segment(path: &str) -> bool {
    // Most paths have no `.` at all: one scan of the bytes, no splitting.
    path.as_bytes().contains(&b'.')
        && path
            .split('/')
            .any(|segment| segment == "." || segment == "..")
}

/// §5.2.4 for a path made of `/`-separated segments: `.` is dropped, `..` drops the segment
/// before it (never above the root), and a final `.` or `..` leaves a trailing `/`.
fn remove_dot_segments(path: &str) -> String {
    let absolute = path.starts_with('/');
    let body = if absolute { &path[1..] } else { path };
    let mut kept: Vec<&str> = Vec::new();
    let mut segments = body.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "." => {}
            ".." => {
                kept.pop();
            }
            other => {
                kept.push(other);
                continue;
            }
        }
        if last {
            kept.push("");
        }
    }
    let joined = kept.join("/");
    if absolute {
        format!("/{joined}")
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn normalizes_per_rfc_3986() {
        for (input, expected) in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/%61/b", "/a/b"),
            ("/a/b/../c", "/a/c"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/..", "/"),
            ("/../../a", "/a"),
            ("/a/%2E%2E/b", "/b"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%2Fb", "/a%2Fb"),
            ("/%7e%7E", "/~~"),
            ("/%e2%82%ac", "/%E2%82%AC"),
            ("/%", "/%25"),
            ("/%zz%4", "/%25zz%254"),
            ("/%%330", "/%2530"), // found by `normalization_is_idempotent`
            ("/%41é", "/Aé"),     // multibyte characters after an encoding: found in review
            ("/%é", "/%25é"),
            ("/%25", "/%25"),
            ("", "/"),
            ("a/..", "/"),
            ("/a//b/", "/a//b/"),
            ("/A/B", "/A/B"),
            ("/.a/..b/", "/.a/..b/"),
            ("*", "*"),
        ] {
            assert_eq!(normalize_path(input), expected, "{input}");
        }
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for path in ["/", "/api/storage", "/a%2Fb", "/a//b/", "/%25zz"] {
            assert!(matches!(normalize_path(path), Cow::Borrowed(_)), "{path}");
        }
    }

    proptest! {
        #[test]
        fn normalization_is_idempotent(path in "/?[a-zA-Z0-9%./~_-]{0,24}") {
            let once = normalize_path(&path).into_owned();
            prop_assert_eq!(normalize_path(&once), once.as_str());
        }

        /// Mostly `%`, hex digits, dots and slashes: where encodings and segments interact.
        #[test]
        fn normalization_of_encodings_is_idempotent(path in "/?[%0-9a-fA-Fé€./]{0,24}") {
            let once = normalize_path(&path).into_owned();
            prop_assert_eq!(normalize_path(&once), once.as_str());
        }
    }
}
