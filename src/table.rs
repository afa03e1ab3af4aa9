//! The in-memory version table: one [`Version`] and one write lock per resource.
//!
//! Shared by every clone of a layer and of the services it wraps. Map guards are only ever held
//! for a copy or an update of a version, never across an `.await`; the per-resource write lock
//! is an async mutex held through an `Arc`, so a writer waits on its own resource only.

use std::{hash::Hash, sync::Arc};

use dashmap::DashMap;
use tokio::sync::Mutex;

use crate::{
    clock::{unix_secs, Clock},
    version::Version,
};

pub(crate) struct VersionTable<K> {
    entries: DashMap<K, Entry>,
    /// The second the table started in: the date of every resource it has not seen.
    floor: u64,
    clock: Arc<dyn Clock>,
}

struct Entry {
    version: Version,
    write_lock: Arc<Mutex<()>>,
}

impl Entry {
    fn new(version: Version) -> Self {
        Self {
            version,
            write_lock: Arc::new(Mutex::new(())),
        }
    }
}

impl<K: Hash + Eq + Clone> VersionTable<K> {
    pub(crate) fn new(clock: Arc<dyn Clock>) -> Self {
        let floor = unix_secs(clock.now());
        Self {
            entries: DashMap::new(),
            floor,
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
    pub(crate) fn current(&self, key: &K, now: u64) -> Version {
        match self.entries.get(key) {
            Some(entry) if entry.version.redated(now).is_none() => return entry.version,
            Some(_) => {}
            None => {
                let unknown = Version::unknown(self.floor);
                if unknown.redated(now).is_none() {
                    return unknown;
                }
            }
        }
        let mut entry = self.entry(key);
        if let Some(redated) = entry.version.redated(now) {
            entry.version = redated;
        }
        entry.version
    }

    /// The write lock of `key`, to be held from the precondition check until the version bump.
    pub(crate) fn write_lock(&self, key: &K) -> Arc<Mutex<()>> {
        match self.entries.get(key) {
            Some(entry) => entry.write_lock.clone(),
            None => self.entry(key).write_lock.clone(),
        }
    }

    /// Records a write to `key` at `now` and returns the new version.
    pub(crate) fn bump(&self, key: &K, now: u64) -> Version {
        let mut entry = self.entry(key);
        entry.version = entry.version.next(now);
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
        let v = table.current(&"/a", 1000);
        assert_eq!(v, Version::unknown(1000));
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn a_redated_version_is_stored_so_every_reader_sees_one_date() {
        let table = table_at(1000);
        let first = table.current(&"/a", 1001);
        assert_eq!(first.modified, 1001);
        assert_eq!(table.current(&"/a", 1005), first);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn bumps_increase_the_counter_and_track_ambiguity() {
        let table = table_at(1000);
        let a = table.bump(&"/a", 1000);
        assert!(
            a.ambiguous,
            "the floor second may hold pre-restart versions"
        );
        let b = table.bump(&"/a", 1002);
        assert!(!b.ambiguous && b.counter > a.counter);
        let c = table.bump(&"/a", 1002);
        assert!(c.ambiguous && c.counter > b.counter);
        assert_eq!(table.current(&"/a", 1002), c);
        assert_eq!(table.current(&"/b", 1002).counter, 0);
    }

    #[test]
    fn peeking_never_redates() {
        let table = table_at(1000);
        assert_eq!(table.peek(&"/a"), Version::unknown(1000));
        table.bump(&"/a", 1001);
        table.bump(&"/a", 1001);
        assert!(table.peek(&"/a").ambiguous);
        assert_eq!(table.peek(&"/a").modified, 1001);
        assert_eq!(table.len(), 1);
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
