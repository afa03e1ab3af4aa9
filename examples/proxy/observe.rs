//! The per-request log line: method, path, status, what the layer did, the version served and
//! the upstream's time. At `info` with `--log-requests`, else at `debug`; as JSON with
//! `--log-format json`.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::{header, Method, Request, Response, StatusCode};
use tower::{Layer, Service};

/// Put on every response the upstream gave (or failed to give): how long it took.
#[derive(Debug, Clone, Copy)]
pub struct Upstreamed(pub Duration);

/// Logs every request that reaches the layer.
#[derive(Clone)]
pub struct ObserveLayer {
    /// At `info` rather than `debug`.
    pub at_info: bool,
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            at_info: self.at_info,
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    at_info: bool,
}

impl<S, B, R> Service<Request<B>> for Observe<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (method, path, started) = (
            req.method().clone(),
            req.uri().path().to_owned(),
            Instant::now(),
        );
        let at_info = self.at_info;
        let response = self.inner.call(req);
        Box::pin(async move {
            let res = response.await?;
            let upstream = res.extensions().get::<Upstreamed>().map(|up| up.0);
            let status = res.status();
            let action = action(&method, status, upstream.is_some());
            let version = res
                .headers()
                .get(header::ETAG)
                .and_then(|tag| tag.to_str().ok());
            let upstream_seconds = upstream.map(|up| up.as_secs_f64());
            let seconds = started.elapsed().as_secs_f64();
            macro_rules! line {
                ($level:ident) => {
                    tracing::$level!(
                        %method,
                        path,
                        status = status.as_u16(),
                        action,
                        version,
                        upstream_seconds,
                        seconds,
                        "request"
                    )
                };
            }
            if at_info {
                line!(info);
            } else {
                line!(debug);
            }
            Ok(res)
        })
    }
}

/// What the layer did, in the terms of its `outcome` metric label: forwarded (the upstream
/// answered, or failed to), or answered itself (told by the status).
fn action(method: &Method, status: StatusCode, forwarded: bool) -> &'static str {
    let write = match *method {
        Method::GET | Method::HEAD => false,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE => true,
        _ => return "untracked",
    };
    match (forwarded, status) {
        (true, _) if write => "forwarded_write",
        (true, _) => "forwarded_read",
        (false, StatusCode::NOT_MODIFIED) => "not_modified",
        (false, StatusCode::PRECONDITION_FAILED) => "precondition_failed",
        (false, StatusCode::PRECONDITION_REQUIRED) => "precondition_required",
        (false, StatusCode::BAD_REQUEST) => "bad_request",
        (false, StatusCode::PAYLOAD_TOO_LARGE) => "content_too_large",
        (false, StatusCode::SERVICE_UNAVAILABLE) => "unavailable",
        (false, _) => "answered",
    }
}
