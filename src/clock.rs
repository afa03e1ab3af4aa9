//! The layer's clock: the only clock whose dates it trusts.
//!
//! Every `Last-Modified` and `Date` the layer writes comes from one [`Clock`]. Client dates are
//! only ever compared for equality against dates this clock produced. Tests inject a
//! [`ManualClock`] to make the one-second resolution of HTTP dates deterministic.
//!
//! # Example
//!
//! ```
//! use std::time::{Duration, UNIX_EPOCH};
//! use tower_conditional::{clock::ManualClock, store::MemoryStore, ConditionalLayer};
//!
//! let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
//! let layer = ConditionalLayer::new().store(MemoryStore::new().clock(clock.clone()));
//! clock.advance(Duration::from_secs(1)); // the layer sees the next second
//! # drop(layer);
//! ```

use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// A source of wall-clock time for the layer.
///
/// Implemented for [`SystemClock`], [`ManualClock`] and any `Fn() -> SystemTime`.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;
}

impl<F> Clock for F
where
    F: Fn() -> SystemTime + Send + Sync + 'static,
{
    fn now(&self) -> SystemTime {
        self()
    }
}

/// The system's wall clock, [`SystemTime::now`]. The default.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to; clones share the same time.
///
/// Resolution is one second, the resolution of HTTP dates.
#[derive(Clone)]
pub struct ManualClock {
    unix_secs: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock reading `start` (rounded down to the second).
    pub fn new(start: SystemTime) -> Self {
        Self {
            unix_secs: Arc::new(AtomicU64::new(unix_secs(start))),
        }
    }

    /// Moves the clock forward by `by` (whole seconds).
    pub fn advance(&self, by: Duration) {
        self.unix_secs.fetch_add(by.as_secs(), Ordering::SeqCst);
    }

    /// Sets the clock to `to`, forward or backward.
    pub fn set(&self, to: SystemTime) {
        self.unix_secs.store(unix_secs(to), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.unix_secs.load(Ordering::SeqCst))
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("unix_secs", &self.unix_secs.load(Ordering::SeqCst))
            .finish()
    }
}

/// Whole seconds since the Unix epoch, as the layer's dates count them; times before it read
/// as 0.
pub fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_clones_share_time() {
        let clock = ManualClock::new(UNIX_EPOCH + Duration::from_millis(10_900));
        let other = clock.clone();
        assert_eq!(unix_secs(other.now()), 10);
        clock.advance(Duration::from_secs(5));
        assert_eq!(unix_secs(other.now()), 15);
        other.set(UNIX_EPOCH + Duration::from_secs(3));
        assert_eq!(unix_secs(clock.now()), 3);
    }

    #[test]
    fn closures_are_clocks() {
        let clock = || UNIX_EPOCH + Duration::from_secs(42);
        assert_eq!(unix_secs(Clock::now(&clock)), 42);
    }
}
