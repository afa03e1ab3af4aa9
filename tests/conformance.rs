//! RFC 9110 §13 conformance: one row per case, each naming the section it checks.
//!
//! Every row starts from a fresh layer and backend in one of four states, sends one request
//! and checks the status, whether the request itself reached the backend, and the validators
//! on what the layer answered. Header values may name the state's validators: `{etag}` and
//! `{date}` are the current version's, `{weak}` is `W/{etag}`, `{old_etag}` and `{old_date}`
//! belong to the version before it.

mod support;

use http::{header, Method, StatusCode};
use support::{call, date_at, request, Backend, Reply, SAW_RANGE, SECOND};
use tower::Layer;
use tower_conditional::store::MemoryStore;
use tower_conditional::ConditionalLayer;

const DOC: &str = "/doc";

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Written twice through the layer (at seconds 1 and 2), then read; now second 3.
    Existing,
    /// Written, then deleted through the layer; now second 3.
    Missing,
    /// In the backend, never seen by this layer (as after a restart); now second 1.
    UnseenExisting,
    /// Neither in the backend nor seen by this layer; now second 1.
    UnseenMissing,
}
use State::*;

struct Case {
    rfc: &'static str,
    state: State,
    method: Method,
    headers: &'static [(&'static str, &'static str)],
    require_precondition: bool,
    status: u16,
    /// Whether the request itself (not a probe) reached the backend.
    forwarded: bool,
    /// For `Range` requests: whether `Range` reached the backend.
    range_forwarded: Option<bool>,
}

const fn case(
    rfc: &'static str,
    state: State,
    method: Method,
    headers: &'static [(&'static str, &'static str)],
    status: u16,
    forwarded: bool,
) -> Case {
    Case {
        rfc,
        state,
        method,
        headers,
        require_precondition: false,
        status,
        forwarded,
        range_forwarded: None,
    }
}

const fn requiring(mut case: Case) -> Case {
    case.require_precondition = true;
    case
}

const fn range(mut case: Case, forwarded: bool) -> Case {
    case.range_forwarded = Some(forwarded);
    case
}

const GET: Method = Method::GET;
const HEAD: Method = Method::HEAD;
const PUT: Method = Method::PUT;
const POST: Method = Method::POST;
const PATCH: Method = Method::PATCH;
const DELETE: Method = Method::DELETE;

#[rustfmt::skip]
fn cases() -> Vec<Case> {
    vec![
        // If-None-Match on reads: weak comparison, a match is 304 (§13.1.2).
        case("13.1.2 INM current tag", Existing, GET, &[("if-none-match", "{etag}")], 304, false),
        case("13.1.2 INM old tag", Existing, GET, &[("if-none-match", "{old_etag}")], 200, true),
        case("13.1.2 INM weak form of current tag (weak comparison)", Existing, GET, &[("if-none-match", "{weak}")], 304, false),
        case("13.1.2 INM list containing current tag", Existing, GET, &[("if-none-match", "\"x\", {etag}")], 304, false),
        case("13.1.2 INM * existing", Existing, GET, &[("if-none-match", "*")], 304, false),
        case("13.1.2 INM * missing", Missing, GET, &[("if-none-match", "*")], 404, true),
        case("13.1.2 INM * unseen existing: decided from the response", UnseenExisting, GET, &[("if-none-match", "*")], 304, true),
        case("13.1.2 INM * unseen missing", UnseenMissing, GET, &[("if-none-match", "*")], 404, true),
        case("13.1.2 INM malformed on a read is ignored", Existing, GET, &[("if-none-match", "abc")], 200, true),
        case("13.1.2 HEAD INM current tag", Existing, HEAD, &[("if-none-match", "{etag}")], 304, false),
        // If-Modified-Since (§13.1.3), and its place after If-None-Match (§13.2.2 step 4).
        case("13.1.3 IMS current date", Existing, GET, &[("if-modified-since", "{date}")], 304, false),
        case("13.1.3 IMS old date", Existing, GET, &[("if-modified-since", "{old_date}")], 200, true),
        case("13.1.3 IMS invalid date ignored", Existing, GET, &[("if-modified-since", "soon")], 200, true),
        case("13.1.3 HEAD IMS current date", Existing, HEAD, &[("if-modified-since", "{date}")], 304, false),
        case("13.2.2 INM match wins over a stale IMS", Existing, GET, &[("if-none-match", "{etag}"), ("if-modified-since", "{old_date}")], 304, false),
        case("13.2.2 IMS ignored when INM present and not matching", Existing, GET, &[("if-none-match", "{old_etag}"), ("if-modified-since", "{date}")], 200, true),
        // If-Match on reads: strong comparison (§13.1.1).
        case("13.1.1 GET If-Match current tag", Existing, GET, &[("if-match", "{etag}")], 200, true),
        case("13.1.1 GET If-Match old tag", Existing, GET, &[("if-match", "{old_etag}")], 412, false),
        case("13.1.1 GET If-Match weak tag never matches", Existing, GET, &[("if-match", "{weak}")], 412, false),
        case("13.1.1 GET If-Match * existing", Existing, GET, &[("if-match", "*")], 200, true),
        case("13.1.1 GET If-Match * missing", Missing, GET, &[("if-match", "*")], 412, false),
        case("13.1.1 GET If-Match * unseen missing: decided from the 404", UnseenMissing, GET, &[("if-match", "*")], 412, true),
        case("13.1.1 GET If-Match * unseen existing", UnseenExisting, GET, &[("if-match", "*")], 200, true),
        case("13.1.1 GET If-Match malformed is ignored", Existing, GET, &[("if-match", "abc")], 200, true),
        case("13.2.2 If-Match failure comes before If-None-Match", Existing, GET, &[("if-match", "{old_etag}"), ("if-none-match", "{etag}")], 412, false),
        case("13.1.4 GET IUS old date", Existing, GET, &[("if-unmodified-since", "{old_date}")], 412, false),
        case("13.2.2 IUS ignored when If-Match present", Existing, GET, &[("if-match", "{etag}"), ("if-unmodified-since", "{old_date}")], 200, true),
        // If-Range (§13.1.5, §13.2.2 step 5).
        range(case("13.1.5 If-Range current tag keeps Range", Existing, GET, &[("range", "bytes=0-1"), ("if-range", "{etag}")], 200, true), true),
        range(case("13.1.5 If-Range old tag drops Range", Existing, GET, &[("range", "bytes=0-1"), ("if-range", "{old_etag}")], 200, true), false),
        range(case("13.1.5 If-Range weak tag drops Range", Existing, GET, &[("range", "bytes=0-1"), ("if-range", "{weak}")], 200, true), false),
        range(case("13.1.5 If-Range current date keeps Range", Existing, GET, &[("range", "bytes=0-1"), ("if-range", "{date}")], 200, true), true),
        range(case("13.1.5 If-Range old date drops Range", Existing, GET, &[("range", "bytes=0-1"), ("if-range", "{old_date}")], 200, true), false),
        range(case("13.1.5 Range without If-Range is untouched", Existing, GET, &[("range", "bytes=0-1")], 200, true), true),
        // If-Match on writes (§13.1.1).
        case("13.1.1 PUT If-Match current tag", Existing, PUT, &[("if-match", "{etag}")], 200, true),
        case("13.1.1 PUT If-Match old tag", Existing, PUT, &[("if-match", "{old_etag}")], 412, false),
        case("13.1.1 PUT If-Match weak tag", Existing, PUT, &[("if-match", "{weak}")], 412, false),
        case("13.1.1 PUT If-Match list with current tag", Existing, PUT, &[("if-match", "\"x\", {etag}")], 200, true),
        case("13.1.1 PUT If-Match * existing", Existing, PUT, &[("if-match", "*")], 200, true),
        case("13.1.1 PUT If-Match * missing", Missing, PUT, &[("if-match", "*")], 412, false),
        case("13.1.1 PUT If-Match * unseen existing (probed)", UnseenExisting, PUT, &[("if-match", "*")], 200, true),
        case("13.1.1 PUT If-Match * unseen missing (probed)", UnseenMissing, PUT, &[("if-match", "*")], 412, false),
        case("13.1.1 PUT If-Match a tag from another instance", UnseenExisting, PUT, &[("if-match", "\"0.0\"")], 412, false),
        case("13.1.1 PUT If-Match on a deleted resource's tag", Missing, PUT, &[("if-match", "{etag}")], 412, false),
        case("13.1.1 PUT If-Match malformed is 400", Existing, PUT, &[("if-match", "abc")], 400, false),
        case("13.1.1 POST If-Match old tag", Existing, POST, &[("if-match", "{old_etag}")], 412, false),
        case("13.1.1 PATCH If-Match current tag", Existing, PATCH, &[("if-match", "{etag}")], 200, true),
        case("13.1.1 DELETE If-Match current tag", Existing, DELETE, &[("if-match", "{etag}")], 204, true),
        case("13.1.1 DELETE If-Match old tag", Existing, DELETE, &[("if-match", "{old_etag}")], 412, false),
        // If-None-Match on writes: a match is 412 (§13.1.2).
        case("13.1.2 PUT INM * existing (create-only)", Existing, PUT, &[("if-none-match", "*")], 412, false),
        case("13.1.2 PUT INM * missing creates", Missing, PUT, &[("if-none-match", "*")], 200, true),
        case("13.1.2 PUT INM * unseen existing (probed)", UnseenExisting, PUT, &[("if-none-match", "*")], 412, false),
        case("13.1.2 PUT INM * unseen missing (probed)", UnseenMissing, PUT, &[("if-none-match", "*")], 200, true),
        case("13.1.2 PUT INM * unseen existing, HEAD refused: probed with GET", UnseenExisting, PUT, &[("if-none-match", "*"), ("x-test-no-head", "1")], 412, false),
        case("13.1.2 PUT INM * unseen missing, HEAD refused: probed with GET", UnseenMissing, PUT, &[("if-none-match", "*"), ("x-test-no-head", "1")], 200, true),
        case("13.1.2 PUT INM * when the probe cannot tell: 503", UnseenExisting, PUT, &[("if-none-match", "*"), ("x-test-status", "500")], 503, false),
        case("13.1.2 PUT INM current tag", Existing, PUT, &[("if-none-match", "{etag}")], 412, false),
        case("13.1.2 PUT INM weak form of current tag", Existing, PUT, &[("if-none-match", "{weak}")], 412, false),
        case("13.1.2 PUT INM old tag", Existing, PUT, &[("if-none-match", "{old_etag}")], 200, true),
        case("13.1.2 PUT INM malformed is 400", Existing, PUT, &[("if-none-match", "\"open")], 400, false),
        case("13.2.2 PUT If-Match passes, then INM fails", Existing, PUT, &[("if-match", "{etag}"), ("if-none-match", "{etag}")], 412, false),
        // If-Unmodified-Since on writes (§13.1.4), If-Modified-Since ignored (§13.1.3).
        case("13.1.4 PUT IUS current date", Existing, PUT, &[("if-unmodified-since", "{date}")], 200, true),
        case("13.1.4 PUT IUS old date", Existing, PUT, &[("if-unmodified-since", "{old_date}")], 412, false),
        case("13.1.4 PUT IUS invalid ignored", Existing, PUT, &[("if-unmodified-since", "later")], 200, true),
        case("13.2.2 PUT IUS ignored when If-Match present", Existing, PUT, &[("if-match", "{etag}"), ("if-unmodified-since", "{old_date}")], 200, true),
        case("13.1.3 PUT IMS ignored on writes", Existing, PUT, &[("if-modified-since", "{date}")], 200, true),
        // 428 Precondition Required (RFC 6585 §3).
        requiring(case("6585-3 PUT without precondition", Existing, PUT, &[], 428, false)),
        requiring(case("6585-3 DELETE without precondition", Existing, DELETE, &[], 428, false)),
        requiring(case("6585-3 an invalid IUS is no precondition", Existing, PUT, &[("if-unmodified-since", "later")], 428, false)),
        requiring(case("6585-3 PUT If-Match passes", Existing, PUT, &[("if-match", "{etag}")], 200, true)),
        requiring(case("6585-3 PUT IUS passes", Existing, PUT, &[("if-unmodified-since", "{date}")], 200, true)),
        requiring(case("6585-3 PUT INM * creates", UnseenMissing, PUT, &[("if-none-match", "*")], 200, true)),
        requiring(case("6585-3 reads never need one", Existing, GET, &[], 200, true)),
        case("6585-3 off by default", Existing, PUT, &[], 200, true),
    ]
}

/// The validators of a state: (current tag, current date, old tag, old date).
struct Validators {
    etag: String,
    date: String,
    old_etag: String,
    old_date: String,
}

async fn setup(
    state: State,
    require_precondition: bool,
) -> (Backend, tower_conditional::Conditional<Backend>, Validators) {
    let clock = support::manual_clock();
    let backend = Backend::default();
    let layer = ConditionalLayer::new()
        .store(MemoryStore::new().clock(clock.clone()))
        .require_precondition(require_precondition);
    let mut service = layer.layer(backend.service());
    let mut seed = backend.service();
    let none = || Validators {
        etag: "\"none\"".into(),
        date: date_at(0),
        old_etag: "\"0.1\"".into(),
        old_date: date_at(0),
    };
    clock.advance(SECOND);
    let validators = match state {
        UnseenExisting => {
            call(&mut seed, request(PUT, DOC, &[], "seeded")).await;
            none()
        }
        UnseenMissing => none(),
        Existing | Missing => {
            let unconditional = [("if-match", "*")];
            let precondition: &[(&str, &str)] = if require_precondition {
                &unconditional
            } else {
                &[]
            };
            call(&mut seed, request(PUT, DOC, &[], "seeded")).await;
            let first = call(&mut service, request(PUT, DOC, precondition, "v1")).await;
            clock.advance(SECOND);
            let method = if state == Existing { PUT } else { DELETE };
            let second = call(&mut service, request(method, DOC, precondition, "v2")).await;
            assert!(second.status.is_success());
            clock.advance(SECOND);
            let read = call(&mut service, request(GET, DOC, &[], "")).await;
            let current = if state == Existing { &read } else { &second };
            Validators {
                etag: current.tag(),
                date: current.last_modified().unwrap().to_owned(),
                old_etag: first.tag(),
                old_date: first.last_modified().unwrap().to_owned(),
            }
        }
    };
    (backend, service, validators)
}

fn fill(value: &str, v: &Validators) -> String {
    value
        .replace("{etag}", &v.etag)
        .replace("{weak}", &format!("W/{}", v.etag))
        .replace("{old_etag}", &v.old_etag)
        .replace("{date}", &v.date)
        .replace("{old_date}", &v.old_date)
}

#[tokio::test]
async fn rfc_9110_conformance() {
    let cases = cases();
    assert!(cases.len() >= 40);
    let mut failures = Vec::new();
    for case in &cases {
        let (backend, mut service, validators) = setup(case.state, case.require_precondition).await;
        let headers: Vec<(&str, String)> = case
            .headers
            .iter()
            .map(|(n, v)| (*n, fill(v, &validators)))
            .collect();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let before = backend.methods().len();
        let reply = call(
            &mut service,
            request(case.method.clone(), DOC, &headers, "body"),
        )
        .await;
        let reached: Vec<_> = backend.methods()[before..].to_vec();
        let forwarded = reached.contains(&case.method);
        let problems = check(case, &reply, forwarded, &validators);
        if !problems.is_empty() {
            failures.push(format!(
                "{} ({:?} {:?}): {}",
                case.rfc,
                case.state,
                case.method,
                problems.join("; ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn check(case: &Case, reply: &Reply, forwarded: bool, validators: &Validators) -> Vec<String> {
    let mut problems = Vec::new();
    if reply.status != case.status {
        problems.push(format!(
            "status {} (expected {})",
            reply.status, case.status
        ));
    }
    if forwarded != case.forwarded {
        problems.push(format!(
            "forwarded: {forwarded} (expected {})",
            case.forwarded
        ));
    }
    if let Some(expected) = case.range_forwarded {
        let saw = reply.headers.contains_key(SAW_RANGE);
        if saw != expected {
            problems.push(format!(
                "Range reached the backend: {saw} (expected {expected})"
            ));
        }
    }
    if !forwarded && reply.header(header::DATE).is_none() {
        problems.push("no Date on the layer's own answer".into());
    }
    if matches!(
        reply.status,
        StatusCode::NOT_MODIFIED | StatusCode::PRECONDITION_FAILED
    ) {
        if reply.etag().is_none() || reply.last_modified().is_none() {
            problems.push("a 304/412 without ETag and Last-Modified".into());
        }
        if reply.status == StatusCode::NOT_MODIFIED
            && reply.header(header::CACHE_CONTROL) != Some("max-age=60")
        {
            problems.push("a 304 without the Cache-Control of the 200".into());
        }
    }
    if reply.status == StatusCode::NOT_MODIFIED
        && case.state == Existing
        && reply.etag() != Some(&validators.etag)
    {
        problems.push("a 304 with another ETag than the current one".into());
    }
    if reply.status.is_success() && reply.etag() == Some("\"backend-tag\"") {
        problems.push("the backend's ETag leaked through".into());
    }
    reply.assert_dates_truthful();
    problems
}
