//! The in-memory version table: one [`Version`] and one write lock per resource.
//!
//! Shared by every clone of a layer and of the services it wraps. Map guards are only ever held
//! for a copy or an update of a version, never across an `.await`; the per-resource write lock
//! is an async mutex held through an `Arc`, so a writer waits on its own resource only.

use std::{
    collections::hash_map::RandomState,
    hash::{BuildHasher, Hash},
    sync::Arc,
    time::SystemTime,
};

use dashmap::DashMap;
use http::HeaderMap;
use tokio::sync::Mutex;

use crate::{
    clock::{unix_secs, Clock},
    etag::Tag,
    version::{Existence, Version},
};

pub(crate) struct VersionTable<K> {
    entries: DashMap<K, Entry>,
    /// The second the table started in: the date of every resource it has not seen.
    floor: u64,
    /// Drawn at random when the table starts; part of every ETag it issues.
    instance: u64,
    clock: Arc<dyn Clock>,
}

struct Entry {
    version: Version,
    /// The headers of the last 2xx read that a `304` must repeat (RFC 9110 §15.4.5).
    cached: Option<Arc<HeaderMap>>,
    write_lock: Arc<Mutex<()>>,
}

impl Entry {
    fn new(version: Version) -> Self {
        Self {
            version,
            cached: None,
            write_lock: Arc::new(Mutex::new(())),
        }
    }
}

/// A resource's current version, with what a `304` for it repeats.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) version: Version,
    pub(crate) cached: Option<Arc<HeaderMap>>,
}

/// A random 64-bit number from the standard library's randomly seeded hasher.
fn random_instance() -> u64 {
    RandomState::new().hash_one(SystemTime::now())
}

impl Entry {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            version: self.version,
            cached: self.cached.clone(),
        }
    }
}

impl<K: Hash + Eq + Clone> VersionTable<K> {
    pub(crate) fn new(clock: Arc<dyn Clock>) -> Self {
        let floor = unix_secs(clock.now());
        Self {
            entries: DashMap::new(),
            floor,
            instance: random_instance(),
            clock,
        }
    }

    /// The clock's current second.
    pub(crate) fn now(&self) -> u64 {
        unix_secs(self.clock.now())
    }

    /// How many resources the table tracks.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The current version of `key`, as it is.
    pub(crate) fn peek(&self, key: &K) -> Version {
        self.entries
            .get(key)
            .map_or(Version::unknown(self.floor), |entry| entry.version)
    }

    /// The current version of `key`, re-dated first if its date is ambiguous and `now` is a
    /// later second (the re-dated version is stored, so every client sees the same date).
    pub(crate) fn current(&self, key: &K, now: u64) -> Snapshot {
        match self.entries.get(key) {
            Some(entry) if entry.version.redated(now).is_none() => return entry.snapshot(),
            Some(_) => {}
            None => {
                let unknown = Version::unknown(self.floor);
                if unknown.redated(now).is_none() {
                    return Snapshot {
                        version: unknown,
                        cached: None,
                    };
                }
            }
        }
        let mut entry = self.entry(key);
        if let Some(redated) = entry.version.redated(now) {
            entry.version = redated;
        }
        entry.snapshot()
    }

    /// The strong ETag of `version`.
    pub(crate) fn tag(&self, version: Version) -> Tag {
        Tag {
            instance: self.instance,
            counter: version.counter,
        }
    }

    /// Records what a read of version `counter` showed: whether the resource exists and, for a
    /// 2xx, the headers a `304` must repeat. Ignored if a write has bumped the version since,
    /// as the read may then describe an older state than the current one.
    pub(crate) fn learn_from_read(
        &self,
        key: &K,
        counter: u64,
        exists: Existence,
        cached: Option<Arc<HeaderMap>>,
    ) {
        let mut entry = self.entry(key);
        if entry.version.counter == counter {
            entry.version.exists = exists;
            entry.cached = cached;
        }
    }

    /// Records whether the resource exists, as a probe made under its write lock found.
    pub(crate) fn learn_existence(&self, key: &K, exists: Existence) {
        self.entry(key).version.exists = exists;
    }

    /// The write lock of `key`, to be held from the precondition check until the version bump.
    pub(crate) fn write_lock(&self, key: &K) -> Arc<Mutex<()>> {
        match self.entries.get(key) {
            Some(entry) => entry.write_lock.clone(),
            None => self.entry(key).write_lock.clone(),
        }
    }

    /// Records a write to `key` at `now` that left the resource as `exists` says, and returns
    /// the new version.
    pub(crate) fn bump(&self, key: &K, now: u64, exists: Existence) -> Version {
        let mut entry = self.entry(key);
        entry.version = entry.version.next(now, exists);
        entry.version
    }

    fn entry(&self, key: &K) -> dashmap::mapref::one::RefMut<'_, K, Entry> {
        let floor = self.floor;
        self.entries
            .entry(key.clone())
            .or_insert_with(|| Entry::new(Version::unknown(floor)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::clock::ManualClock;

    fn table_at(secs: u64) -> VersionTable<&'static str> {
        VersionTable::new(Arc::new(ManualClock::new(
            UNIX_EPOCH + Duration::from_secs(secs),
        )))
    }

    #[test]
    fn unseen_resources_sit_at_the_ambiguous_floor_without_an_entry() {
        let table = table_at(1000);
        let v = table.current(&"/a", 1000).version;
        assert_eq!(v, Version::unknown(1000));
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn a_redated_version_is_stored_so_every_reader_sees_one_date() {
        let table = table_at(1000);
        let first = table.current(&"/a", 1001).version;
        assert_eq!(first.modified, 1001);
        assert_eq!(table.current(&"/a", 1005).version, first);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn bumps_increase_the_counter_and_track_ambiguity() {
        let table = table_at(1000);
        let a = table.bump(&"/a", 1000, Existence::Exists);
        assert!(
            a.ambiguous,
            "the floor second may hold pre-restart versions"
        );
        let b = table.bump(&"/a", 1002, Existence::Exists);
        assert!(!b.ambiguous && b.counter > a.counter);
        let c = table.bump(&"/a", 1002, Existence::Exists);
        assert!(c.ambiguous && c.counter > b.counter);
        assert_eq!(table.current(&"/a", 1002).version, c);
        assert_eq!(table.current(&"/b", 1002).version.counter, 0);
    }

    #[test]
    fn peeking_never_redates() {
        let table = table_at(1000);
        assert_eq!(table.peek(&"/a"), Version::unknown(1000));
        table.bump(&"/a", 1001, Existence::Exists);
        table.bump(&"/a", 1001, Existence::Exists);
        assert!(table.peek(&"/a").ambiguous);
        assert_eq!(table.peek(&"/a").modified, 1001);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn reads_teach_existence_only_about_the_version_they_saw() {
        let table = table_at(1000);
        table.learn_from_read(&"/a", 0, Existence::Absent, None);
        assert_eq!(table.peek(&"/a").exists, Existence::Absent);
        let v = table.bump(&"/a", 1001, Existence::Exists);
        table.learn_from_read(&"/a", 0, Existence::Absent, None); // a read that began before the write
        assert_eq!(table.peek(&"/a").exists, Existence::Exists);
        table.learn_from_read(&"/a", v.counter, Existence::Absent, None);
        assert_eq!(table.peek(&"/a").exists, Existence::Absent);
    }

    #[test]
    fn tables_draw_different_instances() {
        let (a, b) = (table_at(1000), table_at(1000));
        let v = Version::unknown(1000);
        assert_ne!(a.tag(v), b.tag(v));
    }

    #[test]
    fn write_lock_is_per_resource() {
        let table = table_at(1000);
        let a = table.write_lock(&"/a");
        let _held = a.clone().try_lock_owned().unwrap();
        assert!(table.write_lock(&"/a").try_lock_owned().is_err());
        assert!(table.write_lock(&"/b").try_lock_owned().is_ok());
    }
}
