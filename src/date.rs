//! HTTP-dates in and out: parsing a conditional date header, formatting a date header value.

use std::{
    cell::RefCell,
    time::{Duration, UNIX_EPOCH},
};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::clock::unix_secs;

/// The date in a conditional header, in seconds since the Unix epoch.
///
/// RFC 9110 §13.1.3/§13.1.4: a recipient must ignore the field if its value is not a valid
/// HTTP-date, or if it has more than one member; so does a header that appears twice. A value
/// spelled exactly as the layer writes `expected` is recognized without parsing: clients echo
/// the dates they were given, so that is the common case.
pub(crate) fn parse_date_header_expecting(
    headers: &HeaderMap,
    name: &HeaderName,
    expected: u64,
) -> Option<u64> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    if with_header_value(expected, |spelled| value == spelled) {
        return Some(expected);
    }
    let date = httpdate::parse_http_date(value.to_str().ok()?.trim()).ok()?;
    Some(unix_secs(date))
}

/// `secs` as an IMF-fixdate header value. The last few values are cached per thread, since
/// `Date` and `Last-Modified` change once a second while requests come far more often.
pub(crate) fn header_value(secs: u64) -> HeaderValue {
    with_header_value(secs, HeaderValue::clone)
}

/// `f` applied to the cached header value of `secs` (no clone of it to compare with).
fn with_header_value<R>(secs: u64, f: impl FnOnce(&HeaderValue) -> R) -> R {
    const SLOTS: usize = 4;
    thread_local! {
        static CACHE: RefCell<[Option<(u64, HeaderValue)>; SLOTS]> = const { RefCell::new([None, None, None, None]) };
    }
    CACHE.with(|cache| {
        let slot = &mut cache.borrow_mut()[(secs % SLOTS as u64) as usize];
        match slot {
            Some((cached, value)) if *cached == secs => f(value),
            // A clone is kept: clones of a clone take the shorter path in `bytes`.
            _ => f(&slot.insert((secs, format(secs).clone())).1),
        }
    })
}

fn format(secs: u64) -> HeaderValue {
    let formatted = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs));
    HeaderValue::try_from(formatted).expect("an HTTP-date is a valid header value")
}

#[cfg(test)]
mod tests {
    use http::header::IF_MODIFIED_SINCE;

    use super::*;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(IF_MODIFIED_SINCE, HeaderValue::from_bytes(v).unwrap());
        }
        map
    }

    #[test]
    fn parses_the_three_http_date_formats() {
        for date in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            let parsed =
                parse_date_header_expecting(&headers(&[date.as_bytes()]), &IF_MODIFIED_SINCE, 0);
            assert_eq!(parsed, Some(784111777), "{date}");
        }
    }

    #[test]
    fn ignores_invalid_and_repeated_dates() {
        let one = b"Sun, 06 Nov 1994 08:49:37 GMT".as_slice();
        for bad in [
            headers(&[]),
            headers(&[b"yesterday"]),
            headers(&[b"Sun, 06 Nov 1994 08:49:37 GMT, Mon, 07 Nov 1994 08:49:37 GMT"]),
            headers(&[one, one]),
            headers(&[b"Sun, 06 Nov 1994 08:49:37 GMT\xff"]),
            headers(&[b"Sun, 32 Nov 1994 08:49:37 GMT"]),
        ] {
            assert_eq!(
                parse_date_header_expecting(&bad, &IF_MODIFIED_SINCE, 0),
                None,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_expected_spelling_is_recognized_and_others_are_parsed() {
        let expecting =
            |v: &[u8]| parse_date_header_expecting(&headers(&[v]), &IF_MODIFIED_SINCE, 784111777);
        assert_eq!(expecting(b"Sun, 06 Nov 1994 08:49:37 GMT"), Some(784111777));
        assert_eq!(expecting(b"Sun Nov  6 08:49:37 1994"), Some(784111777));
        assert_eq!(expecting(b"Sun, 06 Nov 1994 08:49:38 GMT"), Some(784111778));
        assert_eq!(expecting(b"garbage"), None);
        let one = b"Sun, 06 Nov 1994 08:49:37 GMT".as_slice();
        assert_eq!(
            parse_date_header_expecting(&headers(&[one, one]), &IF_MODIFIED_SINCE, 784111777),
            None
        );
    }

    #[test]
    fn formats_and_caches_the_same_value() {
        assert_eq!(header_value(784111777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(header_value(784111778), "Sun, 06 Nov 1994 08:49:38 GMT");
        assert_eq!(header_value(784111777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(header_value(784111781), "Sun, 06 Nov 1994 08:49:41 GMT");
    }
}
