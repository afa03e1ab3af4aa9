//! The demo page: two editors of one document, each with its own JavaScript client.

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use http_body_util::Full;

const PAGE: &str = include_str!("../../clients/js/demo.html");
const CLIENT: &str = include_str!("../../clients/js/conditional-storage.js");

/// The page or its script, for a path under `/_demo/`.
pub fn serve(path: &str) -> Option<Response<Full<Bytes>>> {
    let (body, content_type) = match path {
        "/_demo" | "/_demo/" | "/_demo/index.html" => (PAGE, "text/html; charset=utf-8"),
        "/_demo/conditional-storage.js" => (CLIENT, "text/javascript; charset=utf-8"),
        _ => return None,
    };
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Some(res)
}
