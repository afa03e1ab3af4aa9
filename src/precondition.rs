//! RFC 9110 §13.2.2: which precondition decides a request, in which order, and what it decides.

use http::{
    header::{IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, RANGE},
    HeaderMap, HeaderName, Method,
};

use crate::{
    date,
    etag::{IfRange, TagCondition},
    version::{Existence, Version},
};

/// What the layer does with a request once its preconditions are evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Every precondition holds (or there is none): forward it.
    Forward,
    /// `304 Not Modified`.
    NotModified,
    /// `412 Precondition Failed`, and the field that failed.
    PreconditionFailed(Failed),
    /// `428 Precondition Required` (RFC 6585 §3), when the layer requires preconditions.
    PreconditionRequired,
    /// `400 Bad Request`: a malformed condition on a write, which must not be ignored.
    BadRequest(Malformed),
}

/// The conditional field whose failure answers `412`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failed {
    IfMatch,
    IfUnmodifiedSince,
    /// On a write: `If-None-Match` names the current version, or `*` finds the resource.
    IfNoneMatch,
    /// The backend refused the `If-Match` the layer forwarded with its own tag
    /// (`forward_validators`): a writer bypassed the layer.
    Backend,
}

/// A tag condition that cannot be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Malformed {
    IfMatch,
    IfNoneMatch,
}

/// The decision, or the two decisions that depend on whether the resource exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Decided(Decision),
    DependsOnExistence { exists: Decision, absent: Decision },
}

/// The conditional fields of one request, compared with the current version's tag.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Conditions {
    if_match: TagCondition,
    if_unmodified_since: Option<u64>,
    if_none_match: TagCondition,
    if_modified_since: Option<u64>,
    /// Whether any conditional field is in the request, valid or not.
    present: bool,
    /// Whether the request has a `Range`.
    range: bool,
}

impl Conditions {
    /// The conditions of `headers`, against the version `current` whose tag is `tag`.
    pub(crate) fn parse(headers: &HeaderMap, current: Version) -> Self {
        // One pass over the (usually few) fields first: most requests carry no condition, and
        // then nothing is looked up; the others look up only the fields they carry.
        let (mut carried, mut range) = ([false; 5], false);
        for name in headers.keys() {
            if let Some(i) = CONDITIONAL.iter().position(|field| field == name) {
                carried[i] = true;
            }
            range |= name == RANGE;
        }
        if !carried.contains(&true) {
            return Self {
                if_match: TagCondition::Absent,
                if_unmodified_since: None,
                if_none_match: TagCondition::Absent,
                if_modified_since: None,
                present: false,
                range,
            };
        }
        Self::parse_carried(headers, current, carried, range)
    }

    /// The conditions of a request that carries some: each field in `carried` (in the order of
    /// [`CONDITIONAL`]) is looked up and parsed.
    fn parse_carried(
        headers: &HeaderMap,
        current: Version,
        carried: [bool; 5],
        range: bool,
    ) -> Self {
        let tag = current.tag();
        let [if_match, if_none_match, if_modified_since, if_unmodified_since, _] = carried;
        let tag_condition = |carried: bool, name| {
            if carried {
                TagCondition::parse(headers, name, tag)
            } else {
                TagCondition::Absent
            }
        };
        let date = |carried: bool, name| {
            carried
                .then(|| date::parse_date_header_expecting(headers, name, current.modified))
                .flatten()
        };
        Self {
            if_match: tag_condition(if_match, &IF_MATCH),
            if_unmodified_since: date(if_unmodified_since, &IF_UNMODIFIED_SINCE),
            if_none_match: tag_condition(if_none_match, &IF_NONE_MATCH),
            if_modified_since: date(if_modified_since, &IF_MODIFIED_SINCE),
            present: true,
            range,
        }
    }

    /// Prepares a request the layer forwards: drops `Range` if step 5 says so, and removes the
    /// conditional fields. The layer has evaluated them against its own versions; a backend that
    /// evaluated them again against its own validators (which never match the layer's) would
    /// refuse or short-circuit requests the layer let through.
    pub(crate) fn strip(&self, method: &Method, headers: &mut HeaderMap, version: Version) {
        if self.range && range_must_be_dropped(method, headers, version) {
            headers.remove(RANGE);
        }
        if self.present {
            remove_conditions(headers);
        }
    }

    /// Evaluates the conditions of a read (`write == false`) or a write against `version`.
    /// With `require_precondition`, a write that carries none gets 428.
    pub(crate) fn verdict(
        &self,
        write: bool,
        version: Version,
        require_precondition: bool,
    ) -> Verdict {
        let decide = |exists| self.decide(write, version, exists, require_precondition);
        match version.exists {
            Existence::Exists => Verdict::Decided(decide(true)),
            Existence::Absent => Verdict::Decided(decide(false)),
            Existence::Unknown => match (decide(true), decide(false)) {
                (exists, absent) if exists == absent => Verdict::Decided(exists),
                (exists, absent) => Verdict::DependsOnExistence { exists, absent },
            },
        }
    }

    fn decide(
        &self,
        write: bool,
        version: Version,
        exists: bool,
        require_precondition: bool,
    ) -> Decision {
        use Decision::*;
        // Step 1: If-Match, strong comparison; `*` means the resource exists (§13.1.1).
        // Step 2: else If-Unmodified-Since (§13.1.4), exact match against an unshared date.
        match self.if_match {
            TagCondition::Malformed if write => return BadRequest(Malformed::IfMatch),
            TagCondition::Any if !exists => return PreconditionFailed(Failed::IfMatch),
            TagCondition::List { strong_match, .. } if !(strong_match && exists) => {
                return PreconditionFailed(Failed::IfMatch);
            }
            TagCondition::Any | TagCondition::List { .. } => {}
            TagCondition::Absent | TagCondition::Malformed => {
                if self
                    .if_unmodified_since
                    .is_some_and(|date| !version.is_validated_by(date))
                {
                    return PreconditionFailed(Failed::IfUnmodifiedSince);
                }
            }
        }
        // Step 3: If-None-Match, weak comparison; a match is 304 for GET/HEAD, 412 otherwise.
        // Step 4: else If-Modified-Since, for GET/HEAD only.
        let none_match_fails = match self.if_none_match {
            TagCondition::Malformed if write => return BadRequest(Malformed::IfNoneMatch),
            TagCondition::Any => exists,
            TagCondition::List { weak_match, .. } => weak_match && exists,
            TagCondition::Absent | TagCondition::Malformed => {
                !write
                    && self
                        .if_modified_since
                        .is_some_and(|date| version.is_validated_by(date))
            }
        };
        if none_match_fails {
            return if write {
                PreconditionFailed(Failed::IfNoneMatch)
            } else {
                NotModified
            };
        }
        if write && require_precondition && !self.has_write_precondition() {
            return PreconditionRequired;
        }
        Forward
    }

    /// Whether a write carries a precondition the layer can evaluate (an invalid date is none).
    fn has_write_precondition(&self) -> bool {
        !matches!(self.if_match, TagCondition::Absent)
            || self.if_unmodified_since.is_some()
            || !matches!(self.if_none_match, TagCondition::Absent)
    }
}

/// In the order [`Conditions::parse`] takes them apart.
const CONDITIONAL: [HeaderName; 5] = [
    IF_MATCH,
    IF_NONE_MATCH,
    IF_MODIFIED_SINCE,
    IF_UNMODIFIED_SINCE,
    IF_RANGE,
];

/// Removes every conditional field (for the layer's own probe requests).
pub(crate) fn remove_conditions(headers: &mut HeaderMap) {
    for name in &CONDITIONAL {
        headers.remove(name);
    }
}

/// Step 5: a `GET` whose `If-Range` does not name the current version is served in full, so
/// its `Range` must not reach the inner service (§13.1.5). `If-Range` without `Range`, or on
/// another method, is ignored.
fn range_must_be_dropped(method: &Method, headers: &HeaderMap, version: Version) -> bool {
    if method != Method::GET {
        return false;
    }
    match IfRange::parse(headers, version.tag()) {
        IfRange::Absent | IfRange::StrongMatch => false,
        IfRange::Date(date) => !version.is_validated_by(date),
        IfRange::NoMatch => true,
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn version(exists: Existence) -> Version {
        Version {
            instance: 1,
            counter: 7,
            modified: 1000,
            ambiguous: false,
            exists,
        }
    }

    fn conditions(pairs: &[(&str, &str)]) -> Conditions {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        Conditions::parse(&headers, version(Existence::Exists))
    }

    #[test]
    fn star_with_unknown_existence_depends_on_it() {
        let verdict =
            conditions(&[("if-none-match", "*")]).verdict(true, version(Existence::Unknown), false);
        assert_eq!(
            verdict,
            Verdict::DependsOnExistence {
                exists: Decision::PreconditionFailed(Failed::IfNoneMatch),
                absent: Decision::Forward
            }
        );
        let verdict = conditions(&[("if-match", "\"1.7\"")]).verdict(
            true,
            version(Existence::Unknown),
            false,
        );
        assert_eq!(
            verdict,
            Verdict::DependsOnExistence {
                exists: Decision::Forward,
                absent: Decision::PreconditionFailed(Failed::IfMatch)
            }
        );
        let verdict = conditions(&[]).verdict(true, version(Existence::Unknown), false);
        assert_eq!(verdict, Verdict::Decided(Decision::Forward));
    }

    #[test]
    fn an_invalid_date_is_no_precondition_for_428() {
        let c = conditions(&[("if-unmodified-since", "yesterday")]);
        assert_eq!(
            c.verdict(true, version(Existence::Exists), true),
            Verdict::Decided(Decision::PreconditionRequired)
        );
        assert_eq!(
            c.verdict(true, version(Existence::Exists), false),
            Verdict::Decided(Decision::Forward)
        );
        assert_eq!(
            c.verdict(false, version(Existence::Exists), true),
            Verdict::Decided(Decision::Forward)
        );
    }
}
