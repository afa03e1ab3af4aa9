//! What the layer records through the [`metrics`](https://docs.rs/metrics) facade, with the
//! `metrics` feature: the names, and the handles it records with.
//!
//! Handles are registered once per service the layer makes, with whatever recorder is
//! installed then: install it first. A request then only bumps atomics through them: no name
//! lookup, no label formatting, no allocation. Without the feature, [`Metrics`]
//! is zero-sized and every recording function is empty.
//!
//! Names follow Prometheus conventions (base units, `_total` on counters); the README lists
//! them with what each counts.

use std::future::Future;

use http::StatusCode;

use crate::answer::Said;

/// A version-store call the layer times.
#[derive(Debug, Clone, Copy)]
pub(crate) enum StoreOp {
    Current,
    Peek,
    LearnExistence,
    Bump,
    Observe,
}

/// Whether a forwarded request reads or writes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Access {
    Read,
    Write,
}

#[cfg(feature = "metrics")]
mod enabled {
    use std::{sync::Arc, time::Instant};

    use ::metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

    /// Requests by what the layer did: label `outcome`, plus `precondition` on a `412` and
    /// `result` on a forwarded write.
    const REQUESTS: &str = "tower_conditional_requests_total";
    /// How long a write waited for its resource's write lock.
    const LOCK_WAIT: &str = "tower_conditional_lock_wait_seconds";
    /// How long a version-store call took (label `op`).
    const STORE: &str = "tower_conditional_store_seconds";
    /// How long the inner service took to answer a forwarded request (label `access`).
    const UPSTREAM: &str = "tower_conditional_upstream_seconds";
    /// Writes forwarded whose outcome is not recorded yet.
    const WRITES_IN_FLIGHT: &str = "tower_conditional_writes_in_flight";
    /// Resources the in-memory stores of the process track.
    const TRACKED: &str = "tower_conditional_tracked_resources";
    /// Resources the in-memory stores forgot to stay within their bound.
    const EVICTIONS: &str = "tower_conditional_evictions_total";
    /// Calls to Redis that failed.
    const REDIS_ERRORS: &str = "tower_conditional_redis_errors_total";
    /// Resource records the Redis store made anew: a new history (a failover, a restart) or a
    /// record gone (a flush, an eviction), so validators from before get `412`.
    const RECORDS_RESET: &str = "tower_conditional_redis_records_reset_total";

    /// One layer's handles, labelled with its class.
    #[derive(Clone)]
    pub(crate) struct Metrics(Arc<Handles>);

    pub(super) struct Handles {
        pub(super) not_modified: Counter,
        /// By [`Failed`](crate::precondition::Failed), in declaration order.
        pub(super) precondition_failed: [Counter; 4],
        pub(super) precondition_required: Counter,
        pub(super) bad_request: Counter,
        pub(super) too_large: Counter,
        pub(super) unavailable: Counter,
        pub(super) forwarded_read: Counter,
        /// 2xx, 4xx, anything else (unknown outcome).
        pub(super) forwarded_write: [Counter; 3],
        pub(super) lock_wait: Histogram,
        /// By [`StoreOp`], in declaration order.
        pub(super) store: [Histogram; 5],
        /// By [`Access`], in declaration order.
        pub(super) upstream: [Histogram; 2],
        pub(super) writes_in_flight: Gauge,
    }

    impl Metrics {
        pub(crate) fn new(class: &str) -> Self {
            let class = class.to_owned();
            let requests = |outcome: &'static str| counter!(REQUESTS, "class" => class.clone(), "outcome" => outcome);
            let failed = |precondition: &'static str| {
                counter!(REQUESTS, "class" => class.clone(), "outcome" => "precondition_failed",
                    "precondition" => precondition)
            };
            let written = |result: &'static str| {
                counter!(REQUESTS, "class" => class.clone(), "outcome" => "forwarded_write",
                    "result" => result)
            };
            let store = |op: &'static str| histogram!(STORE, "class" => class.clone(), "op" => op);
            let upstream = |access: &'static str| histogram!(UPSTREAM, "class" => class.clone(), "access" => access);
            Self(Arc::new(Handles {
                not_modified: requests("not_modified"),
                precondition_failed: [
                    failed("if_match"),
                    failed("if_unmodified_since"),
                    failed("if_none_match"),
                    failed("backend"),
                ],
                precondition_required: requests("precondition_required"),
                bad_request: requests("bad_request"),
                too_large: requests("content_too_large"),
                unavailable: requests("unavailable"),
                forwarded_read: requests("forwarded_read"),
                forwarded_write: [written("2xx"), written("4xx"), written("unknown")],
                lock_wait: histogram!(LOCK_WAIT, "class" => class.clone()),
                store: [
                    store("current"),
                    store("peek"),
                    store("learn_existence"),
                    store("bump"),
                    store("observe"),
                ],
                upstream: [upstream("read"), upstream("write")],
                writes_in_flight: gauge!(WRITES_IN_FLIGHT, "class" => class.clone()),
            }))
        }

        pub(super) fn handles(&self) -> &Handles {
            &self.0
        }
    }

    /// When something started, to record how long it took.
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Timer(Instant);

    impl Timer {
        pub(crate) fn start() -> Self {
            Self(Instant::now())
        }

        pub(super) fn record(self, histogram: &Histogram) {
            histogram.record(self.0.elapsed().as_secs_f64());
        }
    }

    /// Counts a write in flight until dropped.
    pub(crate) struct InFlight(Gauge);

    impl InFlight {
        pub(super) fn new(gauge: &Gauge) -> Self {
            gauge.increment(1.0);
            Self(gauge.clone())
        }
    }

    impl Drop for InFlight {
        fn drop(&mut self) {
            self.0.decrement(1.0);
        }
    }

    /// The in-memory stores' size, registered once per store.
    #[derive(Clone)]
    pub(crate) struct Tracked(Gauge);

    impl Tracked {
        pub(crate) fn new() -> Self {
            Self(gauge!(TRACKED))
        }

        pub(crate) fn added(&self) {
            self.0.increment(1.0);
        }

        pub(crate) fn evicted(&self, removed: usize) {
            self.0.decrement(removed as f64);
            counter!(EVICTIONS).increment(removed as u64);
        }

        /// The store is dropped with `left` entries.
        pub(crate) fn dropped(&self, left: usize) {
            self.0.decrement(left as f64);
        }
    }

    /// A call to Redis failed.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn redis_error() {
        counter!(REDIS_ERRORS).increment(1);
    }

    /// The Redis store made a resource's record anew.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn record_reset() {
        counter!(RECORDS_RESET).increment(1);
    }
}

#[cfg(not(feature = "metrics"))]
mod disabled {
    /// Without the `metrics` feature: nothing.
    #[derive(Clone)]
    pub(crate) struct Metrics;

    impl Metrics {
        pub(crate) fn new(_class: &str) -> Self {
            Self
        }
    }

    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Timer;

    impl Timer {
        #[inline(always)]
        pub(crate) fn start() -> Self {
            Self
        }
    }

    pub(crate) struct InFlight;

    #[derive(Clone)]
    pub(crate) struct Tracked;

    impl Tracked {
        pub(crate) fn new() -> Self {
            Self
        }

        #[inline(always)]
        pub(crate) fn added(&self) {}

        #[inline(always)]
        pub(crate) fn evicted(&self, _removed: usize) {}

        pub(crate) fn dropped(&self, _left: usize) {}
    }

    /// A call to Redis failed.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn redis_error() {}

    /// The Redis store made a resource's record anew.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn record_reset() {}
}

#[cfg(not(feature = "metrics"))]
pub(crate) use disabled::*;
#[cfg(feature = "metrics")]
pub(crate) use enabled::*;

impl Metrics {
    /// The layer answered `said` itself.
    #[inline]
    pub(crate) fn answered(&self, said: Said) {
        #[cfg(feature = "metrics")]
        {
            let h = self.handles();
            let counter = match said {
                Said::NotModified => &h.not_modified,
                Said::PreconditionFailed(failed) => &h.precondition_failed[failed as usize],
                Said::PreconditionRequired => &h.precondition_required,
                Said::BadRequest => &h.bad_request,
                Said::TooLarge => &h.too_large,
                Said::Unavailable => &h.unavailable,
                // Counted with the forwarded request whose outcome it tells.
                Said::ForwardFailed => return,
            };
            counter.increment(1);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = said;
    }

    /// A forwarded read got the inner service's response, which took since `started`.
    #[inline]
    pub(crate) fn forwarded_read(&self, started: Timer) {
        #[cfg(feature = "metrics")]
        {
            self.handles().forwarded_read.increment(1);
        }
        self.upstream(Access::Read, started);
    }

    /// A forwarded write ended with `status` (`None`: no response, its outcome unknown).
    pub(crate) fn written(&self, status: Option<StatusCode>) {
        #[cfg(feature = "metrics")]
        {
            let result = match status {
                Some(status) if status.is_success() => 0,
                Some(status) if status.is_client_error() => 1,
                _ => 2,
            };
            self.handles().forwarded_write[result].increment(1);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = status;
    }

    /// The inner service answered a forwarded request (or gave up) after `started`.
    pub(crate) fn upstream(&self, access: Access, started: Timer) {
        #[cfg(feature = "metrics")]
        started.record(&self.handles().upstream[access as usize]);
        #[cfg(not(feature = "metrics"))]
        let _ = (access, started);
    }

    /// A write got its lock (or gave up) after waiting since `started`.
    pub(crate) fn lock_waited(&self, started: Timer) {
        #[cfg(feature = "metrics")]
        started.record(&self.handles().lock_wait);
        #[cfg(not(feature = "metrics"))]
        let _ = started;
    }

    /// Counts a forwarded write in flight until the guard drops.
    pub(crate) fn in_flight(&self) -> InFlight {
        #[cfg(feature = "metrics")]
        return InFlight::new(&self.handles().writes_in_flight);
        #[cfg(not(feature = "metrics"))]
        InFlight
    }

    /// Awaits the store call `call`, timing it as `op`. Not an `async fn`: one would hold
    /// `call` twice (as its argument, then as what it awaits), and the write path's future,
    /// moved whole, grows with every store call it awaits. Without the feature it is `call`.
    pub(crate) fn store<'a, F: Future + 'a>(
        &'a self,
        op: StoreOp,
        call: F,
    ) -> impl Future<Output = F::Output> + 'a {
        #[cfg(feature = "metrics")]
        {
            let started = Timer::start();
            async move {
                let output = call.await;
                started.record(&self.handles().store[op as usize]);
                output
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = op;
            call
        }
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}
