//! Counters of what the proxy did, and the per-request log line.

use std::{
    future::Future,
    pin::Pin,
    sync::atomic::{AtomicU64, Ordering},
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use http::{Method, Request, Response, StatusCode};
use tower::{Layer, Service};

/// What the proxy has done since it started.
#[derive(Debug, Default)]
pub struct Stats {
    reads: AtomicU64,
    not_modified: AtomicU64,
    writes: AtomicU64,
    precondition_failed: AtomicU64,
    precondition_required: AtomicU64,
    upstream_errors: AtomicU64,
    /// Request bodies that did not arrive within `--body-timeout` (`408`).
    slow_uploads: AtomicU64,
    /// Writes answered `503`: a lock not free within `--lock-timeout`, no room left in
    /// `--max-buffered-bytes`, or no upstream connection free in time.
    busy: AtomicU64,
}

impl Stats {
    pub fn upstream_error(&self) {
        self.upstream_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn slow_upload(&self) {
        self.slow_uploads.fetch_add(1, Ordering::Relaxed);
    }

    /// A write refused before the layer saw it: no room to buffer its body.
    pub fn budget_refused(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.busy.fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self, method: &Method, status: StatusCode) {
        let write = match *method {
            Method::GET | Method::HEAD => false,
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE => true,
            _ => return,
        };
        let counter = if write { &self.writes } else { &self.reads };
        counter.fetch_add(1, Ordering::Relaxed);
        let outcome = match status {
            StatusCode::NOT_MODIFIED => &self.not_modified,
            StatusCode::PRECONDITION_FAILED => &self.precondition_failed,
            StatusCode::PRECONDITION_REQUIRED => &self.precondition_required,
            StatusCode::SERVICE_UNAVAILABLE if write => &self.busy,
            _ => return,
        };
        outcome.fetch_add(1, Ordering::Relaxed);
    }

    /// One JSON object, also the body of the stats endpoint.
    pub fn json(&self, tracked_resources: usize) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "{{\"reads\":{},\"not_modified\":{},\"writes\":{},\"precondition_failed\":{},\
             \"precondition_required\":{},\"upstream_errors\":{},\"slow_uploads\":{},\
             \"busy\":{},\"tracked_resources\":{}}}\n",
            get(&self.reads),
            get(&self.not_modified),
            get(&self.writes),
            get(&self.precondition_failed),
            get(&self.precondition_required),
            get(&self.upstream_errors),
            get(&self.slow_uploads),
            get(&self.busy),
            tracked_resources,
        )
    }
}

/// Counts every request by method and answer, and logs it at debug level.
#[derive(Clone)]
pub struct ObserveLayer(pub Arc<Stats>);

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            stats: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    stats: Arc<Stats>,
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
        let stats = self.stats.clone();
        let response = self.inner.call(req);
        Box::pin(async move {
            let res = response.await?;
            stats.count(&method, res.status());
            tracing::debug!(%method, %path, status = res.status().as_u16(), elapsed = ?started.elapsed(), "request");
            Ok(res)
        })
    }
}
