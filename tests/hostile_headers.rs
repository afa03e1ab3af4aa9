//! No header bytes, path or method can make the layer panic; every answer is one it may give.
//! Generated: methods, path bytes, and the conditional fields (dates, tags, `Range`).

mod support;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::Full;
use proptest::prelude::*;
use support::{Backend, SECOND};
use tower::Layer;
use tower_conditional::store::MemoryStore;
use tower_conditional::ConditionalLayer;

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::HEAD),
        Just(Method::POST),
        Just(Method::PUT),
        Just(Method::PATCH),
        Just(Method::DELETE),
        Just(Method::OPTIONS),
        "[A-Z]{1,8}".prop_map(|m| Method::from_bytes(m.as_bytes()).unwrap()),
    ]
}

fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..48),
        // Near-tags: lists, weak tags, stars, broken quotes.
        "(\\*|W/)?(\"[a-f0-9.]{0,8}\"?)?( ?, ?(W/)?\"[a-z0-9.]{0,4}\")*".prop_map(String::into_bytes),
        // Near-dates, so the parser's edges get exercised, not only garbage.
        "(Sun|Mon|Sunday), [0-9]{1,3}[ -](Nov|Jun|Xyz)[ -][0-9]{2,5} [0-9]{2}:[0-9]{2}:[0-9]{2} (GMT|UTC)?"
            .prop_map(String::into_bytes),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_request_heads_never_panic(
        method in method(),
        path in proptest::collection::vec(any::<u8>(), 0..32),
        headers in proptest::collection::vec(
            (
                prop_oneof![
                    Just("if-modified-since"),
                    Just("if-unmodified-since"),
                    Just("if-match"),
                    Just("if-none-match"),
                    Just("if-range"),
                    Just("range"),
                ],
                header_bytes(),
            ),
            0..4,
        ),
    ) {
        let mut uri = b"/".to_vec();
        uri.extend_from_slice(&path);
        let Ok(uri) = Uri::try_from(uri) else { return Ok(()) };
        let mut req = Request::builder().method(method.clone()).uri(uri);
        for (name, value) in &headers {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                req = req.header(*name, value);
            }
        }
        let req = req.body(Full::<Bytes>::default()).unwrap();

        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let reply = runtime.block_on(async {
            let clock = support::manual_clock();
            let mut service = ConditionalLayer::new().store(MemoryStore::new().clock(clock.clone())).layer(Backend::default());
            clock.advance(SECOND);
            support::call(&mut service, req).await
        });
        let allowed: &[StatusCode] = match method.as_str() {
            "GET" | "HEAD" => &[
                StatusCode::OK,
                StatusCode::NOT_MODIFIED,
                StatusCode::NOT_FOUND,
                StatusCode::PRECONDITION_FAILED,
            ],
            "POST" | "PUT" | "PATCH" => {
                &[StatusCode::OK, StatusCode::PRECONDITION_FAILED, StatusCode::BAD_REQUEST]
            }
            "DELETE" => &[
                StatusCode::NO_CONTENT,
                StatusCode::PRECONDITION_FAILED,
                StatusCode::BAD_REQUEST,
            ],
            _ => &[StatusCode::METHOD_NOT_ALLOWED],
        };
        prop_assert!(allowed.contains(&reply.status), "{} answered {}", method, reply.status);
        reply.assert_dates_truthful();
    }
}
