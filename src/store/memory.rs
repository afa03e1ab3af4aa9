//! [`MemoryStore`]: the in-memory version table, one [`Version`] and one write lock per resource.
//!
//! Shared by every clone of a layer and of the services it wraps. Map guards are only ever held
//! for a copy or an update of a version, never across an `.await`; the per-resource write lock
//! is an async mutex held through an `Arc`, so a writer waits on its own resource only.
//!
//! The table can be bounded. When it is full, the least recently used entries are forgotten, and the **floors** are raised first: the date and the counter every
//! resource the table does not know starts from. A forgotten resource thus comes back with a
//! version at least as new as any it had, so a client holding one of its old validators gets
//! `412`, never a `200` (and its tags never repeat).

use std::{
    collections::hash_map::RandomState,
    hash::{BuildHasher, Hash},
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::SystemTime,
};

use dashmap::{mapref::entry::Entry as MapEntry, DashMap};
use http::HeaderMap;
use tokio::sync::Mutex;

use std::{
    fmt,
    future::{ready, Future},
    time::Duration,
};

use tokio::sync::OwnedMutexGuard;

use super::{Fingerprint, Observed, Rekey, Snapshot, StoreError, VersionStore};
use crate::{
    answer,
    clock::{unix_secs, Clock, SystemClock},
    metrics,
    version::{Existence, Version},
};

/// The default [`VersionStore`]: a `DashMap` in the process, shared by every clone of the layer.
///
/// Reads take no lock (a map read guard for a copy of the version); writes to different
/// resources never wait on each other. See [`MemoryStore::max_resources`] for its bound.
pub struct MemoryStore<K> {
    entries: DashMap<K, Entry>,
    /// How many entries `entries` holds (its own `len` locks every shard).
    len: AtomicUsize,
    /// The most entries kept; more trigger an eviction.
    max_entries: usize,
    /// Advances on every insert; an entry's `last_used` is its value when it was last used, so
    /// eviction order follows use relative to inserts, which are what fill the table. (It wraps
    /// after 2^32 inserts, which only misorders recency for a moment.)
    tick: AtomicU32,
    evicting: AtomicBool,
    /// The date of every resource the table does not know: its start second at first.
    floor: AtomicU64,
    /// The counter of every resource the table does not know: past every forgotten one.
    counter_floor: AtomicU64,
    /// Drawn at random when the table starts; part of every ETag it issues.
    instance: u64,
    clock: Arc<dyn Clock>,
    /// The process's tracked-resources gauge (with the `metrics` feature).
    tracked: metrics::Tracked,
}

/// One resource, in 24 bytes: the table holds many of them.
struct Entry {
    /// The version's counter, with its ambiguity and existence in the top bits.
    counter_and_flags: u64,
    /// The version's `Last-Modified` in seconds since the Unix epoch (good until 2106).
    modified: u32,
    /// The table's `tick` when the entry was last used, for eviction.
    last_used: AtomicU32,
    /// What only some resources need, allocated when first needed.
    extras: Option<Box<Extras>>,
}

#[derive(Default)]
struct Extras {
    /// The headers of the last 2xx read that a `304` must repeat (RFC 9110 §15.4.5).
    cached: Option<Arc<HeaderMap>>,
    /// Made by the first write: a resource that is only read never pays for one.
    write_lock: Option<Arc<Mutex<()>>>,
    /// What the inner service last served for the current version, and when: only kept when
    /// the layer detects writers that bypass it, so boxed apart.
    seen: Option<Box<(Fingerprint, u64)>>,
}

const AMBIGUOUS: u64 = 1 << 63;
const EXISTS: u64 = 1 << 62;
const ABSENT: u64 = 1 << 61;
const COUNTER: u64 = ABSENT - 1;

impl Entry {
    fn new(version: Version, tick: u32) -> Self {
        let mut entry = Self {
            counter_and_flags: 0,
            modified: 0,
            last_used: AtomicU32::new(tick),
            extras: None,
        };
        entry.set_version(version);
        entry
    }

    fn version(&self, instance: u64) -> Version {
        let packed = self.counter_and_flags;
        Version {
            instance,
            counter: packed & COUNTER,
            modified: u64::from(self.modified),
            ambiguous: packed & AMBIGUOUS != 0,
            exists: if packed & EXISTS != 0 {
                Existence::Exists
            } else if packed & ABSENT != 0 {
                Existence::Absent
            } else {
                Existence::Unknown
            },
        }
    }

    fn set_version(&mut self, version: Version) {
        let flags = match version.exists {
            Existence::Exists => EXISTS,
            Existence::Absent => ABSENT,
            Existence::Unknown => 0,
        } | if version.ambiguous { AMBIGUOUS } else { 0 };
        self.counter_and_flags = version.counter.min(COUNTER) | flags;
        self.modified = u32::try_from(version.modified).unwrap_or(u32::MAX);
    }

    fn cached(&self) -> Option<Arc<HeaderMap>> {
        self.extras
            .as_ref()
            .and_then(|extras| extras.cached.clone())
    }

    fn write_lock(&self) -> Option<&Arc<Mutex<()>>> {
        self.extras
            .as_ref()
            .and_then(|extras| extras.write_lock.as_ref())
    }

    fn extras(&mut self) -> &mut Extras {
        self.extras.get_or_insert_with(Box::default)
    }

    fn touch(&self, tick: u32) {
        // A load first: most uses come before the next insert, and need no store.
        if self.last_used.load(Ordering::Relaxed) != tick {
            self.last_used.store(tick, Ordering::Relaxed);
        }
    }

    fn snapshot(&self, instance: u64) -> Snapshot {
        let snapshot = Snapshot::new(self.version(instance)).with_cached(self.cached());
        match self
            .extras
            .as_ref()
            .and_then(|extras| extras.seen.as_deref())
        {
            Some((fingerprint, confirmed)) => {
                snapshot.with_fingerprint(Some(fingerprint.clone()), *confirmed)
            }
            None => snapshot,
        }
    }
}

/// A random 64-bit number from the standard library's randomly seeded hasher.
fn random_instance() -> u64 {
    RandomState::new().hash_one(SystemTime::now())
}

impl<K> VersionStore<K> for MemoryStore<K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    type Lock = OwnedMutexGuard<()>;

    fn now(&self) -> u64 {
        self.now_secs()
    }

    fn tracked_resources(&self) -> usize {
        self.len()
    }

    fn current_now(&self, key: &K, now: u64) -> Option<Snapshot> {
        Some(self.current_sync(key, now))
    }

    fn current(
        &self,
        key: &K,
        now: u64,
    ) -> impl Future<Output = Result<Snapshot, StoreError>> + Send {
        ready(Ok(self.current_sync(key, now)))
    }

    fn learn_from_read(&self, key: &K, seen: &Snapshot, exists: Existence, headers: &HeaderMap) {
        // Compared with the snapshot first: most reads teach nothing and take no map guard.
        let cached = seen.cached.as_deref();
        let learned = exists != Existence::Unknown
            && (exists != seen.version.exists
                || (exists == Existence::Exists && answer::cached_headers_differ(cached, headers)));
        if learned {
            let cached = match exists {
                Existence::Exists => answer::cached_headers(headers),
                _ => None,
            };
            self.learn_from_read_sync(key, seen.version.counter, exists, cached);
        }
    }

    fn observe(
        &self,
        key: &K,
        seen: &Snapshot,
        fingerprint: &Fingerprint,
        now: u64,
    ) -> impl Future<Output = Result<Observed, StoreError>> + Send {
        ready(Ok(self.observe_sync(key, seen, fingerprint, now)))
    }

    fn lock(
        &self,
        key: &K,
        wait: Duration,
        _hold: Duration, // held in the process: released when the guard drops, never earlier
    ) -> impl Future<Output = Result<Option<Self::Lock>, StoreError>> + Send {
        let lock = self.write_lock(key);
        async move {
            match lock.clone().try_lock_owned() {
                Ok(guard) => Ok(Some(guard)),
                Err(_) => Ok(tokio::time::timeout(wait, lock.lock_owned()).await.ok()),
            }
        }
    }

    fn peek(
        &self,
        key: &K,
        _lock: &Self::Lock,
    ) -> impl Future<Output = Result<Snapshot, StoreError>> + Send {
        let snapshot = match self.entries.get(key) {
            Some(entry) => entry.snapshot(self.instance),
            None => Snapshot::new(self.unknown()),
        };
        ready(Ok(snapshot))
    }

    fn learn_existence(
        &self,
        key: &K,
        _lock: &Self::Lock,
        exists: Existence,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.learn_existence_sync(key, exists);
        ready(Ok(()))
    }

    fn bump(
        &self,
        key: &K,
        lock: Self::Lock,
        exists: Existence,
        fingerprint: Option<Fingerprint>,
    ) -> impl Future<Output = Result<Version, StoreError>> + Send {
        let version = self.bump_sync(key, self.now_secs(), exists, fingerprint);
        drop(lock); // released only after the bump
        ready(Ok(version))
    }

    fn bump_unsettled(&self, key: K, lock: Self::Lock) {
        self.bump_sync(&key, self.now_secs(), Existence::Unknown, None);
        drop(lock);
    }
}

impl<K, K2> Rekey<K2> for MemoryStore<K>
where
    K2: Hash + Eq + Clone + Send + Sync + 'static,
{
    type Rekeyed = MemoryStore<K2>;

    fn rekey(&self) -> MemoryStore<K2> {
        MemoryStore::with(self.clock.clone(), self.max_entries)
    }
}

impl<K> fmt::Debug for MemoryStore<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("tracked", &self.len.load(Ordering::Relaxed))
            .field("max_resources", &self.max_entries)
            .field("now", &unix_secs(self.clock.now()))
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone> Default for MemoryStore<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Hash + Eq + Clone> MemoryStore<K> {
    /// An unbounded store on the system clock.
    #[must_use]
    pub fn new() -> Self {
        Self::with(Arc::new(SystemClock), usize::MAX)
    }

    /// The same store on `clock`, which dates every version (tests use a
    /// [`ManualClock`](crate::clock::ManualClock)). Starts empty.
    ///
    /// ```
    /// use std::time::SystemTime;
    /// use tower_conditional::{clock::ManualClock, store::MemoryStore, ConditionalLayer};
    ///
    /// let clock = ManualClock::new(SystemTime::now());
    /// let layer = ConditionalLayer::new().store(MemoryStore::new().clock(clock.clone()));
    /// # drop(layer);
    /// ```
    #[must_use]
    pub fn clock(self, clock: impl Clock) -> Self {
        Self::with(Arc::new(clock), self.max_entries)
    }

    /// Tracks at most about `n` resources. When the table is full, the least recently used
    /// eighth is forgotten (never a resource a write holds), after raising the floor every
    /// unknown resource starts from to at least their versions: a forgotten resource returns
    /// with a version at least as new, so clients holding its old validators get `412`, never
    /// `200`. Unbounded by default. Starts empty.
    ///
    /// ```
    /// use tower_conditional::{store::MemoryStore, ConditionalLayer};
    ///
    /// let layer = ConditionalLayer::new().store(MemoryStore::new().max_resources(100_000));
    /// # drop(layer);
    /// ```
    #[must_use]
    pub fn max_resources(self, n: usize) -> Self {
        Self::with(self.clock.clone(), n.max(1))
    }

    /// A table holding at most `max_entries` resources (`usize::MAX`: unbounded).
    pub(crate) fn with(clock: Arc<dyn Clock>, max_entries: usize) -> Self {
        let floor = unix_secs(clock.now());
        Self {
            entries: DashMap::new(),
            len: AtomicUsize::new(0),
            max_entries,
            tick: AtomicU32::new(0),
            evicting: AtomicBool::new(false),
            floor: AtomicU64::new(floor),
            counter_floor: AtomicU64::new(0),
            instance: random_instance(),
            clock,
            tracked: metrics::Tracked::new(),
        }
    }

    /// The clock's current second.
    fn now_secs(&self) -> u64 {
        unix_secs(self.clock.now())
    }

    /// How many resources the table tracks.
    fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    fn unknown(&self) -> Version {
        Version::unknown(
            self.instance,
            self.floor.load(Ordering::SeqCst),
            self.counter_floor.load(Ordering::SeqCst),
        )
    }

    /// The current version of `key`, as it is.
    #[cfg(test)]
    fn peek_sync(&self, key: &K) -> Version {
        match self.entries.get(key) {
            Some(entry) => entry.version(self.instance),
            None => self.unknown(),
        }
    }

    /// The current version of `key`, re-dated first if its date is ambiguous and `now` is a
    /// later second (the re-dated version is stored, so every client sees the same date).
    fn current_sync(&self, key: &K, now: u64) -> Snapshot {
        match self.entries.get(key) {
            Some(entry) if entry.version(self.instance).redated(now).is_none() => {
                entry.touch(self.tick.load(Ordering::Relaxed));
                return entry.snapshot(self.instance);
            }
            Some(_) => {}
            None => {
                let unknown = self.unknown();
                if unknown.redated(now).is_none() {
                    return Snapshot::new(unknown);
                }
            }
        }
        let instance = self.instance;
        self.update(key, |entry| {
            if let Some(redated) = entry.version(instance).redated(now) {
                entry.set_version(redated);
            }
            entry.snapshot(instance)
        })
    }

    /// Records what a read of version `counter` showed: whether the resource exists and, for a
    /// 2xx, the headers a `304` must repeat. Ignored if a write has bumped the version since,
    /// as the read may then describe an older state than the current one.
    fn learn_from_read_sync(
        &self,
        key: &K,
        counter: u64,
        exists: Existence,
        cached: Option<Arc<HeaderMap>>,
    ) {
        let instance = self.instance;
        self.update(key, |entry| {
            let version = entry.version(instance);
            if version.counter == counter {
                entry.set_version(Version { exists, ..version });
                if cached.is_some() || entry.cached().is_some() {
                    entry.extras().cached = cached;
                }
            }
        });
    }

    /// Records whether the resource exists, as a probe made under its write lock found.
    fn learn_existence_sync(&self, key: &K, exists: Existence) {
        let instance = self.instance;
        self.update(key, |entry| {
            let version = entry.version(instance);
            entry.set_version(Version { exists, ..version });
        });
    }

    /// The write lock of `key`, to be held from the precondition check until the version bump.
    /// An entry whose lock is held or awaited is never evicted.
    fn write_lock(&self, key: &K) -> Arc<Mutex<()>> {
        if let Some(entry) = self.entries.get(key) {
            if let Some(lock) = entry.write_lock() {
                entry.touch(self.tick.load(Ordering::Relaxed));
                return lock.clone();
            }
        }
        self.update(key, |entry| {
            entry
                .extras()
                .write_lock
                .get_or_insert_with(Arc::default)
                .clone()
        })
    }

    /// Records a write to `key` at `now` that left the resource as `exists` says, and returns
    /// the new version.
    fn bump_sync(
        &self,
        key: &K,
        now: u64,
        exists: Existence,
        fingerprint: Option<Fingerprint>,
    ) -> Version {
        let instance = self.instance;
        self.update(key, |entry| {
            let next = entry.version(instance).next(now, exists);
            entry.set_version(next);
            // The write changed the representation: what the backend serves since, or nothing.
            match fingerprint {
                Some(fingerprint) => entry.extras().seen = Some(Box::new((fingerprint, now))),
                None => {
                    if let Some(extras) = &mut entry.extras {
                        extras.seen = None;
                    }
                }
            }
            next
        })
    }

    /// See [`VersionStore::observe`].
    fn observe_sync(
        &self,
        key: &K,
        seen: &Snapshot,
        fingerprint: &Fingerprint,
        now: u64,
    ) -> Observed {
        let instance = self.instance;
        self.update(key, |entry| {
            let current = entry.version(instance);
            if current.counter != seen.version.counter {
                return Observed::Superseded;
            }
            let extras = entry.extras();
            let recorded = extras.seen.as_deref().map(|(recorded, _)| recorded);
            let observed = match recorded {
                Some(recorded) if recorded != fingerprint => {
                    let exists = match fingerprint {
                        Fingerprint::Absent => Existence::Absent,
                        _ => Existence::Exists,
                    };
                    let next = current.next(now, exists);
                    // Only an observation that compared with what is still recorded may stamp
                    // the new version: another may have recorded newer data meanwhile.
                    if seen
                        .fingerprint
                        .as_ref()
                        .is_some_and(|seen| seen == recorded)
                        || matches!(recorded, Fingerprint::Unknown)
                    {
                        Observed::Changed(next)
                    } else {
                        Observed::Bumped(next)
                    }
                }
                _ => Observed::Confirmed,
            };
            match (&observed, &mut extras.seen) {
                // The same again: only when it was confirmed changes.
                (Observed::Confirmed, Some(seen)) => seen.1 = now,
                _ => extras.seen = Some(Box::new((fingerprint.clone(), now))),
            }
            if let Observed::Changed(next) | Observed::Bumped(next) = observed {
                extras.cached = None;
                entry.set_version(next);
            }
            observed
        })
    }

    /// Applies `change` to the entry of `key`, creating it if needed, then evicts if the table
    /// has grown past its bound (with no map guard held).
    fn update<R>(&self, key: &K, change: impl FnOnce(&mut Entry) -> R) -> R {
        // Most keys are known already: no owned copy of the key for them.
        if let Some(mut entry) = self.entries.get_mut(key) {
            entry.touch(self.tick.load(Ordering::Relaxed));
            return change(&mut entry);
        }
        let (result, inserted) = match self.entries.entry(key.clone()) {
            MapEntry::Occupied(mut occupied) => {
                let entry = occupied.get_mut();
                entry.touch(self.tick.load(Ordering::Relaxed));
                (change(entry), false)
            }
            MapEntry::Vacant(vacant) => {
                let tick = self.tick.fetch_add(1, Ordering::Relaxed) + 1;
                let mut entry = Entry::new(self.unknown(), tick);
                let result = change(&mut entry);
                vacant.insert(entry);
                (result, true)
            }
        };
        if inserted {
            self.tracked.added();
        }
        if inserted && self.len.fetch_add(1, Ordering::Relaxed) + 1 > self.max_entries {
            self.evict();
        }
        result
    }

    /// Forgets about an eighth of the table, least recently used first, down to 7/8 of its
    /// bound. One eviction runs at a time; concurrent inserts meanwhile overshoot briefly.
    /// It runs on the inserting request, takes each shard's lock in turn (never all at once)
    /// and costs O(bound), once per bound/8 inserts.
    fn evict(&self) {
        if self.evicting.swap(true, Ordering::AcqRel) {
            return;
        }
        let keep = self.max_entries - self.max_entries / 8;
        let excess = self.len().saturating_sub(keep);
        if excess > 0 {
            // Pass 1: the recency below which `excess` entries fall, and the newest version
            // among them.
            let mut recency: Vec<u32> = self
                .entries
                .iter()
                .map(|e| e.last_used.load(Ordering::Relaxed))
                .collect();
            let nth = excess.min(recency.len()).saturating_sub(1);
            let cutoff = *recency.select_nth_unstable(nth).1;
            let (mut counter, mut modified) = (0, 0);
            for entry in self.entries.iter() {
                if entry.last_used.load(Ordering::Relaxed) <= cutoff {
                    let version = entry.version(self.instance);
                    counter = counter.max(version.counter);
                    modified = modified.max(version.modified);
                }
            }
            // The floors rise before anything is removed: a reader that misses an entry must
            // see a floor at least as new as what the entry held.
            let counter_floor = self
                .counter_floor
                .fetch_max(counter + 1, Ordering::SeqCst)
                .max(counter + 1);
            let floor = self
                .floor
                .fetch_max(modified, Ordering::SeqCst)
                .max(modified);
            // Pass 2: remove up to `excess` of them, sparing any whose lock a writer holds or
            // awaits, or that a write has moved past the floors since pass 1.
            let mut removed = 0;
            self.entries.retain(|_, entry| {
                let version = entry.version(self.instance);
                let forget = removed < excess
                    && entry.last_used.load(Ordering::Relaxed) <= cutoff
                    && entry
                        .write_lock()
                        .is_none_or(|lock| Arc::strong_count(lock) == 1)
                    && version.counter < counter_floor
                    && version.modified <= floor;
                removed += usize::from(forget);
                !forget
            });
            self.len.fetch_sub(removed, Ordering::Relaxed);
            self.tracked.evicted(removed);
        }
        self.evicting.store(false, Ordering::Release);
    }
}

impl<K> Drop for MemoryStore<K> {
    fn drop(&mut self) {
        // Its entries go with it: the process-wide gauge stops counting them.
        self.tracked.dropped(self.len.load(Ordering::Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::clock::ManualClock;

    fn table_at(secs: u64) -> MemoryStore<&'static str> {
        bounded_table_at(secs, usize::MAX)
    }

    fn bounded_table_at(secs: u64, max: usize) -> MemoryStore<&'static str> {
        let clock = ManualClock::new(UNIX_EPOCH + Duration::from_secs(secs));
        MemoryStore::with(Arc::new(clock), max)
    }

    #[test]
    fn unseen_resources_sit_at_the_ambiguous_floor_without_an_entry() {
        let table = table_at(1000);
        let v = table.current_sync(&"/a", 1000).version;
        assert_eq!(v, Version::unknown(table.instance, 1000, 0));
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn a_redated_version_is_stored_so_every_reader_sees_one_date() {
        let table = table_at(1000);
        let first = table.current_sync(&"/a", 1001).version;
        assert_eq!(first.modified, 1001);
        assert_eq!(table.current_sync(&"/a", 1005).version, first);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn bumps_increase_the_counter_and_track_ambiguity() {
        let table = table_at(1000);
        let a = table.bump_sync(&"/a", 1000, Existence::Exists, None);
        assert!(
            a.ambiguous,
            "the floor second may hold pre-restart versions"
        );
        let b = table.bump_sync(&"/a", 1002, Existence::Exists, None);
        assert!(!b.ambiguous && b.counter > a.counter);
        let c = table.bump_sync(&"/a", 1002, Existence::Exists, None);
        assert!(c.ambiguous && c.counter > b.counter);
        assert_eq!(table.current_sync(&"/a", 1002).version, c);
        assert_eq!(table.current_sync(&"/b", 1002).version.counter, 0);
    }

    #[test]
    fn peeking_never_redates() {
        let table = table_at(1000);
        assert_eq!(
            table.peek_sync(&"/a"),
            Version::unknown(table.instance, 1000, 0)
        );
        table.bump_sync(&"/a", 1001, Existence::Exists, None);
        table.bump_sync(&"/a", 1001, Existence::Exists, None);
        assert!(table.peek_sync(&"/a").ambiguous);
        assert_eq!(table.peek_sync(&"/a").modified, 1001);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn reads_teach_existence_only_about_the_version_they_saw() {
        let table = table_at(1000);
        table.learn_from_read_sync(&"/a", 0, Existence::Absent, None);
        assert_eq!(table.peek_sync(&"/a").exists, Existence::Absent);
        let v = table.bump_sync(&"/a", 1001, Existence::Exists, None);
        table.learn_from_read_sync(&"/a", 0, Existence::Absent, None); // a read that began before the write
        assert_eq!(table.peek_sync(&"/a").exists, Existence::Exists);
        table.learn_from_read_sync(&"/a", v.counter, Existence::Absent, None);
        assert_eq!(table.peek_sync(&"/a").exists, Existence::Absent);
    }

    /// Invariant 3 with fingerprints: an observation may stamp the version it bumps only if
    /// what is recorded is still what its snapshot carried; one that compared with an older
    /// record (another read recorded newer data meanwhile) bumps, but must not stamp.
    #[test]
    fn only_an_observation_of_the_current_record_may_stamp_the_change() {
        let table = table_at(1000);
        let body = |n| Fingerprint::Body(n);
        let before = table.current_sync(&"/a", 1001);
        // Two reads of the same version: the newer data is recorded first.
        assert_eq!(
            table.observe_sync(&"/a", &before, &body(2), 1001),
            Observed::Confirmed
        );
        match table.observe_sync(&"/a", &before, &body(1), 1001) {
            Observed::Bumped(next) => assert!(next.counter > before.version.counter),
            other => panic!("the older read must not stamp the bump: {other:?}"),
        }
        // A read that compared with the current record stamps the change it saw.
        let current = table.current_sync(&"/a", 1002);
        match table.observe_sync(&"/a", &current, &body(3), 1002) {
            Observed::Changed(next) => assert!(next.counter > current.version.counter),
            other => panic!("{other:?}"),
        }
        // A version the layer wrote without learning what the backend serves: any sight is a
        // change; a read that began before a write through the layer records nothing.
        let written = table.bump_sync(&"/a", 1003, Existence::Exists, Some(Fingerprint::Unknown));
        let after = table.current_sync(&"/a", 1003);
        assert_eq!(after.version, written);
        assert!(matches!(
            table.observe_sync(&"/a", &after, &body(3), 1003),
            Observed::Changed(_)
        ));
        assert_eq!(
            table.observe_sync(&"/a", &before, &body(9), 1003),
            Observed::Superseded
        );
        // What a 404 shows makes the resource absent.
        let now = table.current_sync(&"/a", 1004);
        match table.observe_sync(&"/a", &now, &Fingerprint::Absent, 1004) {
            Observed::Changed(next) => assert_eq!(next.exists, Existence::Absent),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tables_draw_different_instances() {
        let (a, b) = (table_at(1000), table_at(1000));
        assert_ne!(a.unknown().tag(), b.unknown().tag());
    }

    #[test]
    fn an_entry_packs_every_version_it_holds() {
        assert_eq!(std::mem::size_of::<Entry>(), 24);
        for exists in [Existence::Unknown, Existence::Exists, Existence::Absent] {
            for ambiguous in [false, true] {
                for counter in [0, 1, 12345, COUNTER] {
                    let version = Version {
                        instance: 9,
                        counter,
                        modified: 4_102_444_800, // 2100-01-01
                        ambiguous,
                        exists,
                    };
                    assert_eq!(Entry::new(version, 0).version(9), version);
                }
            }
        }
    }

    #[test]
    fn write_lock_is_per_resource() {
        let table = table_at(1000);
        let a = table.write_lock(&"/a");
        let _held = a.clone().try_lock_owned().unwrap();
        assert!(table.write_lock(&"/a").try_lock_owned().is_err());
        assert!(table.write_lock(&"/b").try_lock_owned().is_ok());
    }

    const KEYS: [&str; 40] = [
        "/0", "/1", "/2", "/3", "/4", "/5", "/6", "/7", "/8", "/9", "/10", "/11", "/12", "/13",
        "/14", "/15", "/16", "/17", "/18", "/19", "/20", "/21", "/22", "/23", "/24", "/25", "/26",
        "/27", "/28", "/29", "/30", "/31", "/32", "/33", "/34", "/35", "/36", "/37", "/38", "/39",
    ];

    #[test]
    fn a_bounded_table_forgets_the_least_recently_used_and_raises_its_floors() {
        let table = bounded_table_at(1000, 16);
        let mut versions = Vec::new();
        for (i, key) in KEYS.iter().enumerate().take(16) {
            // Two writes each, one second apart per key, so recency and versions differ.
            let now = 1001 + i as u64;
            table.bump_sync(key, now, Existence::Exists, None);
            versions.push(table.bump_sync(key, now, Existence::Exists, None));
        }
        assert_eq!(table.len(), 16);
        table.bump_sync(&KEYS[16], 2000, Existence::Exists, None);
        assert!(table.len() <= 16, "{}", table.len());
        // The oldest are gone, and come back no older than they were.
        let forgotten: Vec<_> = (0..16)
            .filter(|&i| table.entries.get(KEYS[i]).is_none())
            .collect();
        assert!(!forgotten.is_empty());
        assert!(forgotten.iter().all(|&i| i < 8), "{forgotten:?}");
        for &i in &forgotten {
            let now = table.peek_sync(&KEYS[i]);
            assert!(now.counter > versions[i].counter, "a tag could repeat");
            assert!(now.modified >= versions[i].modified, "a date went backward");
            assert!(!now.is_validated_by(versions[i].modified));
        }
    }

    #[test]
    fn a_locked_entry_is_never_evicted() {
        let table = bounded_table_at(1000, 8);
        let lock = table.write_lock(&KEYS[0]);
        let _held = lock.clone().try_lock_owned().unwrap();
        for (i, key) in KEYS.iter().enumerate().skip(1) {
            table.bump_sync(key, 1001 + i as u64, Existence::Exists, None);
        }
        assert!(table.len() <= 8);
        assert!(
            table.entries.get(KEYS[0]).is_some(),
            "a writer's lock was forgotten"
        );
        assert!(Arc::ptr_eq(&table.write_lock(&KEYS[0]), &lock));
        assert!(table
            .entries
            .get(KEYS[1])
            .is_none_or(|e| e.write_lock().is_none()));
    }
}
