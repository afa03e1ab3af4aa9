//! A resource's version and the rules that keep its `Last-Modified` truthful and unambiguous.
//!
//! HTTP dates have one-second resolution, so two versions written in the same second share a
//! date. A client holding such a shared ("ambiguous") date cannot prove which of the two it saw,
//! so the date is never accepted as a validator. Once the clock has moved past that second the
//! current version is re-dated to the current second, which no other version can share.

/// One version of one resource, as a [`VersionStore`](crate::store::VersionStore) keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Version {
    /// The store instance (or history) that issued the version: part of its ETag, drawn at random
    /// whenever a store starts empty, so tags never repeat across restarts.
    pub instance: u64,
    /// Incremented by every write whose outcome may have changed the resource.
    pub counter: u64,
    /// `Last-Modified`, in whole seconds since the Unix epoch.
    pub modified: u64,
    /// Another version (possibly an unknown one) may carry the same `modified`.
    pub ambiguous: bool,
    /// Whether this version has a current representation, as far as the layer has seen.
    pub exists: Existence,
}

/// Whether a resource has a current representation (RFC 9110 §13.1.1: what `*` matches).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Existence {
    /// Not known: the layer asks the inner service when a precondition depends on it.
    Unknown,
    /// It has one.
    Exists,
    /// It has none.
    Absent,
}

impl Version {
    /// The version of a resource the layer knows nothing about: dated at the `floor`, and
    /// ambiguous, because any number of versions may have been issued in that second before;
    /// its counter is at least one past any the layer has forgotten, so no tag repeats.
    pub const fn unknown(instance: u64, floor: u64, counter: u64) -> Self {
        Self {
            instance,
            counter,
            modified: floor,
            ambiguous: true,
            exists: Existence::Unknown,
        }
    }

    /// The same version dated `now`, when its own date is ambiguous and `now` is a later second.
    pub fn redated(self, now: u64) -> Option<Self> {
        (self.ambiguous && now > self.modified).then_some(Self {
            modified: now,
            ambiguous: false,
            ..self
        })
    }

    /// The version a write at `now` produces, leaving the resource as `exists` says. The date
    /// never goes backward, even if the clock does; a date it shares with this version makes it
    /// ambiguous.
    pub fn next(self, now: u64, exists: Existence) -> Self {
        let modified = now.max(self.modified);
        Self {
            instance: self.instance,
            counter: self.counter + 1,
            modified,
            ambiguous: modified == self.modified,
            exists,
        }
    }

    /// Whether a client date (`If-Modified-Since`, `If-Unmodified-Since`) names this version:
    /// an exact match with a date no other version shares.
    pub fn is_validated_by(self, date: u64) -> bool {
        !self.ambiguous && date == self.modified
    }

    /// The version's strong ETag.
    pub(crate) fn tag(self) -> crate::etag::Tag {
        crate::etag::Tag {
            instance: self.instance,
            counter: self.counter,
        }
    }
}

/// What a response to a read (or a probe) says about whether the resource exists: a 2xx that
/// it does, a `404` or `410` that it does not, anything else nothing.
pub(crate) fn existence_of(status: http::StatusCode) -> Existence {
    if status.is_success() {
        Existence::Exists
    } else if status == http::StatusCode::NOT_FOUND || status == http::StatusCode::GONE {
        Existence::Absent
    } else {
        Existence::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_version_is_ambiguous_until_redated_in_a_later_second() {
        let v = Version::unknown(7, 100, 0);
        assert!(!v.is_validated_by(100));
        assert_eq!(v.redated(100), None);
        let r = v.redated(101).unwrap();
        assert_eq!((r.counter, r.modified), (0, 101));
        assert!(r.is_validated_by(101));
        assert_eq!(r.redated(102), None, "an unambiguous date is kept");
    }

    #[test]
    fn two_writes_in_one_second_share_an_ambiguous_date() {
        let v = Version::unknown(7, 100, 0).redated(101).unwrap();
        let a = v.next(102, Existence::Exists);
        assert!(a.is_validated_by(102));
        let b = a.next(102, Existence::Exists);
        assert_eq!(b.modified, 102);
        assert!(b.ambiguous);
        assert!(!b.is_validated_by(102));
        assert!(b.counter > a.counter);
        let c = b.redated(103).unwrap();
        assert_eq!((c.counter, c.modified), (b.counter, 103));
    }

    #[test]
    fn dates_never_go_backward_when_the_clock_does() {
        let v = Version::unknown(7, 100, 0).redated(200).unwrap();
        let w = v.next(150, Existence::Exists);
        assert_eq!(w.modified, 200);
        assert!(w.ambiguous);
        assert!(w.counter > v.counter);
    }

    #[test]
    fn only_an_exact_date_validates() {
        let v = Version::unknown(7, 100, 0).redated(105).unwrap();
        assert!(!v.is_validated_by(104));
        assert!(!v.is_validated_by(106));
        assert!(v.is_validated_by(105));
    }
}
