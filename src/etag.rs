//! Entity tags: the strong ETag the layer issues per version, and the `If-Match` /
//! `If-None-Match` / `If-Range` fields that name them (RFC 9110 §8.8.3, §13.1).
//!
//! The layer's tags have the form `"<instance>.<counter>"` in hex: the instance is drawn at
//! random when a version table starts, so a tag issued before a restart never names a version
//! issued after it, and the counter is the version's own.

use std::cell::RefCell;

use http::{HeaderMap, HeaderName, HeaderValue};

/// The strong entity tag of one version of one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tag {
    pub(crate) instance: u64,
    pub(crate) counter: u64,
}

impl Tag {
    /// The `ETag` header value. Recently used values are cached per thread: a hot resource's
    /// tag is formatted once per version, not once per response.
    pub(crate) fn header_value(self) -> HeaderValue {
        const SLOTS: usize = 64;
        thread_local! {
            static CACHE: RefCell<Vec<Option<(Tag, HeaderValue)>>> = RefCell::new(vec![None; SLOTS]);
        }
        CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            let slot = &mut cache[(self.counter ^ self.instance) as usize % SLOTS];
            match slot {
                Some((tag, value)) if *tag == self => value.clone(),
                _ => {
                    let value = self.format();
                    *slot = Some((self, value.clone()));
                    value
                }
            }
        })
    }

    /// Written by hand into a buffer on the stack: every write makes a new tag, and `format!`
    /// cost a write more than the rest of its stamping together.
    fn format(self) -> HeaderValue {
        let mut buf = [0; 2 * 16 + 3];
        buf[0] = b'"';
        let mut len = 1 + write_hex(&mut buf[1..], self.instance);
        buf[len] = b'.';
        len += 1;
        len += write_hex(&mut buf[len..], self.counter);
        buf[len] = b'"';
        HeaderValue::from_bytes(&buf[..=len])
            .expect("hex digits, a dot and quotes are a valid value")
    }

    /// Whether `opaque` (the quoted part of a client's tag, quotes excluded) names this tag.
    fn is_named_by(self, opaque: &[u8]) -> bool {
        let Some(dot) = opaque.iter().position(|&b| b == b'.') else {
            return false;
        };
        let (instance, counter) = (&opaque[..dot], &opaque[dot + 1..]);
        parse_hex(instance) == Some(self.instance) && parse_hex(counter) == Some(self.counter)
    }
}

/// Writes `n` in lower-case hex without leading zeros at the start of `out`; returns how many
/// digits it wrote.
fn write_hex(out: &mut [u8], n: u64) -> usize {
    let digits = (16 - n.leading_zeros() as usize / 4).max(1);
    for (i, digit) in out[..digits].iter_mut().enumerate() {
        let nibble = (n >> (4 * (digits - 1 - i))) & 0xf;
        *digit = b"0123456789abcdef"[nibble as usize];
    }
    digits
}

/// Lower-case hex without leading zeros, exactly as [`Tag::header_value`] writes it, so that
/// one tag has one spelling.
fn parse_hex(digits: &[u8]) -> Option<u64> {
    let canonical = !digits.is_empty()
        && digits.len() <= 16
        && (digits == b"0" || digits[0] != b'0')
        && digits
            .iter()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    canonical.then(|| u64::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok())?
}

/// An `If-Match` or `If-None-Match` field as it applies to one tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TagCondition {
    /// The field is not in the request.
    Absent,
    /// `*`: any current representation.
    Any,
    /// A list of tags; whether one names the current tag by strong and by weak comparison.
    List {
        strong_match: bool,
        weak_match: bool,
    },
    /// Not `*` and not a list of entity-tags.
    Malformed,
}

impl TagCondition {
    /// Reads `name` from `headers`, comparing its tags with `current`. Several field lines
    /// form one list (RFC 9110 §5.3); `*` must stand alone.
    pub(crate) fn parse(headers: &HeaderMap, name: &HeaderName, current: Tag) -> Self {
        let mut values = headers.get_all(name).iter().peekable();
        if values.peek().is_none() {
            return TagCondition::Absent;
        }
        let mut lines = 0;
        let mut any = false;
        let (mut strong_match, mut weak_match, mut tags) = (false, false, 0);
        for value in values {
            lines += 1;
            let bytes = value.as_bytes();
            if trim(bytes) == b"*" {
                any = true;
                continue;
            }
            let Some(list) = parse_list(bytes) else {
                return TagCondition::Malformed;
            };
            for (weak, opaque) in list {
                tags += 1;
                if current.is_named_by(opaque) {
                    weak_match = true;
                    strong_match |= !weak;
                }
            }
        }
        match (any, lines, tags) {
            (true, 1, _) => TagCondition::Any,
            (true, _, _) | (false, _, 0) => TagCondition::Malformed,
            (false, _, _) => TagCondition::List {
                strong_match,
                weak_match,
            },
        }
    }
}

/// `If-Range`: a date or a single entity-tag (RFC 9110 §13.1.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IfRange {
    Absent,
    /// A strong tag naming the current version.
    StrongMatch,
    /// A date, in seconds since the Unix epoch.
    Date(u64),
    /// Anything else: a weak or other tag, or an invalid value; the range is not served.
    NoMatch,
}

impl IfRange {
    pub(crate) fn parse(headers: &HeaderMap, current: Tag) -> Self {
        let mut values = headers.get_all(http::header::IF_RANGE).iter();
        let Some(value) = values.next() else {
            return IfRange::Absent;
        };
        if values.next().is_some() {
            return IfRange::NoMatch;
        }
        let bytes = trim(value.as_bytes());
        if bytes.first() == Some(&b'"') || bytes.starts_with(b"W/") {
            return match parse_list(bytes).as_deref() {
                Some([(false, opaque)]) if current.is_named_by(opaque) => IfRange::StrongMatch,
                _ => IfRange::NoMatch,
            };
        }
        match std::str::from_utf8(bytes)
            .ok()
            .map(httpdate::parse_http_date)
        {
            Some(Ok(date)) => IfRange::Date(crate::clock::unix_secs(date)),
            _ => IfRange::NoMatch,
        }
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !is_ows(*b))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_ows(*b))
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// `#entity-tag`: comma-separated, empty elements allowed, each `[W/]"etagc*"`.
/// Returns `(weak, opaque)` pairs, or `None` if any element is not an entity-tag.
fn parse_list(bytes: &[u8]) -> Option<Vec<(bool, &[u8])>> {
    let mut tags = Vec::new();
    let mut rest = bytes;
    loop {
        rest = trim_start(rest);
        match rest.first() {
            None => return Some(tags),
            Some(b',') => {
                rest = &rest[1..];
                continue;
            }
            Some(_) => {}
        }
        let weak = rest.starts_with(b"W/");
        if weak {
            rest = &rest[2..];
        }
        let body = rest.strip_prefix(b"\"")?;
        let close = body.iter().position(|&b| b == b'"')?;
        let opaque = &body[..close];
        // etagc = %x21 / %x23-7E / obs-text
        if !opaque
            .iter()
            .all(|&b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80)
        {
            return None;
        }
        tags.push((weak, opaque));
        rest = trim_start(&body[close + 1..]);
        match rest.first() {
            None => return Some(tags),
            Some(b',') => rest = &rest[1..],
            Some(_) => return None,
        }
    }
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !is_ows(*b))
        .unwrap_or(bytes.len());
    &bytes[start..]
}

#[cfg(test)]
mod tests {
    use http::header::{IF_MATCH, IF_RANGE};

    use super::*;

    const CURRENT: Tag = Tag {
        instance: 0xabc,
        counter: 0x1f,
    };

    fn condition(values: &[&[u8]]) -> TagCondition {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(IF_MATCH, HeaderValue::from_bytes(v).unwrap());
        }
        TagCondition::parse(&headers, &IF_MATCH, CURRENT)
    }

    #[test]
    fn tags_round_trip_in_one_spelling() {
        assert_eq!(CURRENT.header_value(), "\"abc.1f\"");
        for (instance, counter) in [(0, 0), (1, 0x10), (u64::MAX, 0xf), (0x8000, u64::MAX >> 3)] {
            let tag = Tag { instance, counter };
            let expected = format!("\"{instance:x}.{counter:x}\"");
            assert_eq!(tag.header_value(), expected.as_str());
        }
        assert!(CURRENT.is_named_by(b"abc.1f"));
        for other in [
            &b"abc.1F"[..],
            b"abc.01f",
            b"0abc.1f",
            b"abc.20",
            b"abd.1f",
            b"abc1f",
            b"abc.",
            b".1f",
        ] {
            assert!(
                !CURRENT.is_named_by(other),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn parses_conditions() {
        use TagCondition::*;
        let both = List {
            strong_match: true,
            weak_match: true,
        };
        let weak_only = List {
            strong_match: false,
            weak_match: true,
        };
        let none = List {
            strong_match: false,
            weak_match: false,
        };
        for (values, expected) in [
            (vec![&b"*"[..]], Any),
            (vec![b" * "], Any),
            (vec![b"\"abc.1f\""], both),
            (vec![b"W/\"abc.1f\""], weak_only),
            (vec![b"\"x\", W/\"abc.1f\""], weak_only),
            (vec![b"\"x\" , \"abc.1f\""], both),
            (vec![b"\"x\"", b"\"abc.1f\""], both),
            (vec![b",\"x\",,"], none),
            (vec![b"\"\""], none),
            (vec![b"\"a,b\""], none),
            (vec![b"abc.1f"], Malformed),
            (vec![b"\"abc.1f"], Malformed),
            (vec![b"\"x\" \"y\""], Malformed),
            (vec![b"w/\"x\""], Malformed),
            (vec![b"*, \"x\""], Malformed),
            (vec![b"*", b"\"x\""], Malformed),
            (vec![b"*", b"*"], Malformed),
            (vec![b""], Malformed),
            (vec![b"\"a\"b\""], Malformed),
        ] {
            assert_eq!(condition(&values), expected, "{values:?}");
        }
        assert_eq!(
            TagCondition::parse(&HeaderMap::new(), &IF_MATCH, CURRENT),
            Absent
        );
    }

    #[test]
    fn parses_if_range() {
        let parse = |v: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(IF_RANGE, HeaderValue::from_str(v).unwrap());
            IfRange::parse(&headers, CURRENT)
        };
        assert_eq!(parse("\"abc.1f\""), IfRange::StrongMatch);
        assert_eq!(parse("W/\"abc.1f\""), IfRange::NoMatch);
        assert_eq!(parse("\"abc.1e\""), IfRange::NoMatch);
        assert_eq!(parse("\"abc.1f\", \"x\""), IfRange::NoMatch);
        assert_eq!(
            parse("Sun, 06 Nov 1994 08:49:37 GMT"),
            IfRange::Date(784111777)
        );
        assert_eq!(parse("soon"), IfRange::NoMatch);
        assert_eq!(IfRange::parse(&HeaderMap::new(), CURRENT), IfRange::Absent);
    }
}
