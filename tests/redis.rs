//! Several proxies, one truth: proxy binaries sharing a real redis-server (started here on a
//! free loopback port) in front of one naive backend.
#![cfg(feature = "redis")]

mod support;

use std::time::Duration;

use http::{header, Method, StatusCode};
use support::{proxy::start_proxy, redis_server::RedisServer, Backend, HttpClient, HOLD};
use tokio::process::Child;

const DOC: &str = "/api/storage";

async fn proxies(
    redis: &RedisServer,
    upstream: std::net::SocketAddr,
    count: usize,
    extra: &[&str],
) -> Vec<(Child, HttpClient)> {
    let mut started = Vec::new();
    let (upstream, url) = (format!("http://{upstream}"), redis.url());
    for _ in 0..count {
        let mut args = vec!["--upstream", upstream.as_str(), "--redis", url.as_str()];
        args.extend_from_slice(extra);
        let (child, addr) = start_proxy(&args).await;
        started.push((child, HttpClient::new(addr)));
    }
    started
}

async fn increments_lose_nothing(instances: usize) {
    const CLIENTS: usize = 12;
    const INCREMENTS: usize = 20;
    let redis = RedisServer::start().await;
    let backend = Backend::default();
    let mut seed = backend.service();
    support::call(&mut seed, support::request(Method::PUT, DOC, &[], "0")).await;
    let upstream = support::serve(backend.service()).await;
    let proxies = proxies(&redis, upstream, instances, &[]).await;

    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let client = proxies[i % instances].1.clone();
        tasks.push(tokio::spawn(async move {
            client.increment(DOC, INCREMENTS).await
        }));
    }
    let mut successes = 0;
    for task in tasks {
        successes += task.await.unwrap();
    }
    let final_value: usize = std::str::from_utf8(&backend.doc(DOC).unwrap())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(successes, CLIENTS * INCREMENTS);
    assert_eq!(final_value, CLIENTS * INCREMENTS, "an update was lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_on_one_redis_lose_no_update() {
    increments_lose_nothing(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_proxies_on_one_redis_lose_no_update() {
    increments_lose_nothing(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_holds_the_resource_only_until_its_lease_expires() {
    let redis = RedisServer::start().await;
    let backend = Backend::default();
    let upstream = support::serve(backend.service()).await;
    // The lease is sized from the write timeout: 2 × (0.5 s + 1 s) + 0 s + 1 s = 4 s.
    const SHORT_LEASE: [&str; 4] = ["--upstream-timeout", "0.5", "--timeout-grace", "0"];
    let (mut a_process, a) = proxies(&redis, upstream, 1, &SHORT_LEASE)
        .await
        .pop()
        .unwrap();
    // B gives up on a lock after 0.2 s, so a lease still held shows as a 503.
    let (_b_process, b) = proxies(
        &redis,
        upstream,
        1,
        &[&SHORT_LEASE[..], &["--lock-timeout", "0.2"]].concat(),
    )
    .await
    .pop()
    .unwrap();
    let saved = a.send(Method::PUT, DOC, &[], "v1").await;
    let v1 = saved.tag();

    // A takes the lease and forwards a write the backend holds; then A dies.
    let dying = tokio::spawn({
        let (client, v1) = (a.clone(), v1.clone());
        async move {
            client
                .send(
                    Method::PUT,
                    DOC,
                    &[("if-match", &v1), (HOLD, "1")],
                    "from A",
                )
                .await
        }
    });
    backend.arrived().await;
    a_process.kill().await.unwrap();
    drop(dying);

    // While A's lease lives, B is kept out. Once it expires, B proceeds, but A's write may
    // have reached the backend: its outcome is unknown, so the version is bumped first and B's
    // validator from before it gets 412 (never 200). B re-reads and writes.
    let kept_out = b
        .send(Method::PUT, DOC, &[("if-match", &v1)], "from B")
        .await;
    assert_eq!(
        kept_out.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        kept_out.text()
    );
    let after = b
        .send_through_503s(Method::PUT, DOC, &[("if-match", &v1)], "from B")
        .await;
    assert_eq!(
        after.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        after.text()
    );
    let reread = b.send(Method::GET, DOC, &[], "").await;
    let next = b
        .send(Method::PUT, DOC, &[("if-match", &reread.tag())], "from B")
        .await;
    assert_eq!(next.status, StatusCode::OK);
    assert_eq!(backend.doc(DOC).unwrap(), "from B");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_or_flushed_between_a_read_and_a_write_gives_412() {
    let mut redis = RedisServer::start().await;
    let backend = Backend::default();
    let upstream = support::serve(backend.service()).await;
    let proxies = proxies(&redis, upstream, 1, &[]).await;
    let client = &proxies[0].1;
    for (condition, flush) in [
        ("if-match", false),
        ("if-unmodified-since", false),
        ("if-match", true),
        ("if-unmodified-since", true),
    ] {
        // Each round from an empty Redis, so the record's counter starts where a recreated
        // record's would: a reissued tag would match.
        let _: String = redis.query(&["FLUSHALL"]).await;
        client.send_through_503s(Method::PUT, DOC, &[], "v1").await;
        let read = client.send(Method::GET, DOC, &[], "").await;
        let held = match condition {
            "if-match" => read.tag(),
            _ => read.last_modified().unwrap().to_owned(),
        };

        // Redis comes back empty (or is flushed: the same process and history, the record
        // gone), and another client writes first: its version must not look like the one the
        // stale client holds.
        if flush {
            let _: String = redis.query(&["FLUSHALL"]).await;
        } else {
            redis.restart().await;
        }
        let newer = client
            .send_through_503s(Method::PUT, DOC, &[], "newer")
            .await;
        assert_eq!(newer.status, StatusCode::OK);
        let stale = client
            .send(Method::PUT, DOC, &[(condition, held.as_str())], "stale")
            .await;
        assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED, "{condition}");
        assert_eq!(backend.doc(DOC).unwrap(), "newer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_stopped_writes_get_503_and_work_again_when_it_returns() {
    let mut redis = RedisServer::start().await;
    let backend = Backend::default();
    let upstream = support::serve(backend.service()).await;
    let proxies = proxies(&redis, upstream, 1, &[]).await;
    let client = &proxies[0].1;
    client.send(Method::PUT, DOC, &[], "v1").await;

    redis.stop().await;
    let write = client.send(Method::PUT, DOC, &[], "unchecked").await;
    assert_eq!(write.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(write.headers.contains_key(header::RETRY_AFTER));
    assert_eq!(backend.doc(DOC).unwrap(), "v1", "never an unchecked write");
    let read = client.send(Method::GET, DOC, &[], "").await;
    assert_eq!(read.status, StatusCode::OK, "reads are still forwarded");
    assert!(read.etag().is_none(), "with no version to vouch for");

    redis.restart().await;
    let write = client.send_through_503s(Method::PUT, DOC, &[], "v2").await;
    assert_eq!(write.status, StatusCode::OK);
    assert_eq!(backend.doc(DOC).unwrap(), "v2");
}

/// The lease on a resource's lock outlives the longest write the proxy lets through: its write
/// timeout (the upstream timeout plus a second), twice (the existence probe, then the write),
/// and the grace period. A lease set by hand missed the extra second, or all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_outlasts_the_whole_write() {
    let redis = RedisServer::start().await;
    let backend = Backend::default();
    let upstream = support::serve(backend.service()).await;
    let args = ["--upstream-timeout", "40", "--timeout-grace", "5"];
    let (_process, client) = proxies(&redis, upstream, 1, &args).await.pop().unwrap();
    let held = tokio::spawn({
        let client = client.clone();
        async move { client.send(Method::PUT, DOC, &[(HOLD, "1")], "v1").await }
    });
    backend.arrived().await;

    let mut connection = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // The lease's expiry (Redis time, ms) is in the resource's record.
    let (expiry_ms, (secs, micros)): (i64, (i64, i64)) = redis::pipe()
        .cmd("HGET")
        .arg(format!("tc:{DOC}"))
        .arg("e")
        .cmd("TIME")
        .query_async(&mut connection)
        .await
        .unwrap();
    let lease_ms = expiry_ms - (secs * 1000 + micros / 1000);
    let whole_write_ms = (2 * (40 + 1) + 5) * 1000;
    assert!(
        lease_ms > whole_write_ms - 2000,
        "the lease ({lease_ms} ms) ends before the write may ({whole_write_ms} ms)"
    );

    backend.release();
    assert_eq!(held.await.unwrap().status, StatusCode::OK);
}

/// Invariant 3 with fingerprints, in the store's script: an observation that compared with an
/// older record (another read recorded newer data meanwhile) bumps, but must not stamp; one that
/// compared with the current record stamps the change it saw.
#[tokio::test]
async fn an_older_observation_bumps_but_never_stamps() {
    use tower_conditional::store::{Fingerprint, Observed, RedisStore, VersionStore};

    let redis = RedisServer::start().await;
    let store = RedisStore::open(&redis.url()).unwrap();
    let key: &'static str = "/doc";
    let current = |store: RedisStore| async move {
        for _ in 0..100 {
            match VersionStore::<&str>::current(&store, &key, 0).await {
                Ok(snapshot) => return snapshot,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        panic!("Redis never answered");
    };
    let before = current(store.clone()).await;
    let newer = store.observe(&key, &before, &Fingerprint::Body(2), 0).await;
    assert_eq!(newer.unwrap(), Observed::Confirmed);
    match store
        .observe(&key, &before, &Fingerprint::Body(1), 0)
        .await
        .unwrap()
    {
        Observed::Bumped(next) => assert!(next.counter > before.version.counter),
        other => panic!("the older read must not stamp the bump: {other:?}"),
    }
    let now = current(store.clone()).await;
    match store
        .observe(&key, &now, &Fingerprint::Absent, 0)
        .await
        .unwrap()
    {
        Observed::Changed(next) => {
            assert!(next.counter > now.version.counter);
            assert_eq!(next.exists, tower_conditional::store::Existence::Absent);
        }
        other => panic!("{other:?}"),
    }
    let stale = store.observe(&key, &before, &Fingerprint::Body(3), 0).await;
    assert_eq!(stale.unwrap(), Observed::Superseded);
}

/// A read's observation, from before the record was made anew in another history, must not be
/// taken for one of the new version, even when the new counter happens to equal the old one (the
/// replica missed exactly one bump).
#[tokio::test]
async fn an_observation_from_another_history_records_nothing() {
    use tower_conditional::store::{Fingerprint, Observed, RedisStore, VersionStore};

    let redis = RedisServer::start().await;
    let store = RedisStore::open(&redis.url()).unwrap();
    let key: &'static str = "/doc";
    let seen = VersionStore::<&str>::current(&store, &key, 0)
        .await
        .unwrap();
    assert_eq!(
        store
            .observe(&key, &seen, &Fingerprint::Body(1), 0)
            .await
            .unwrap(),
        Observed::Confirmed
    );
    // As if the record came from a replica that missed one bump: another history, the counter
    // one behind, so the reset makes it the counter `seen` has.
    let behind = (seen.version.counter as i64 - 1).to_string();
    let _: i64 = redis
        .query(&["HSET", "tc:/doc", "h", "another-history", "c", &behind])
        .await;
    let observed = store.observe(&key, &seen, &Fingerprint::Body(2), 0).await;
    assert_eq!(observed.unwrap(), Observed::Superseded);
    let now = VersionStore::<&str>::current(&store, &key, 0)
        .await
        .unwrap();
    assert_eq!(now.version.counter, seen.version.counter);
    assert_ne!(now.version.instance, seen.version.instance);
    assert_eq!(
        now.fingerprint, None,
        "nothing recorded for the new version"
    );
}

/// A writer whose lease is gone (it expired and was taken, or the Redis that held it failed
/// over) must not go on under the lock: its next look at the version fails.
#[tokio::test]
async fn a_writer_whose_lease_is_gone_cannot_look_again() {
    use tower_conditional::store::{Existence, RedisStore, VersionStore};

    let redis = RedisServer::start().await;
    let store = RedisStore::open(&redis.url()).unwrap();
    let key: &'static str = "/doc";
    let (wait, hold) = (Duration::from_secs(1), Duration::from_secs(60));
    let lock = VersionStore::<&str>::lock(&store, &key, wait, hold)
        .await
        .unwrap()
        .expect("a free lease");
    // The first look is the one read with the lease; a second goes to Redis.
    assert!(VersionStore::<&str>::peek(&store, &key, &lock)
        .await
        .is_ok());
    assert!(VersionStore::<&str>::peek(&store, &key, &lock)
        .await
        .is_ok());
    let _: i64 = redis.query(&["HDEL", "tc:/doc", "l", "e"]).await;
    assert!(VersionStore::<&str>::peek(&store, &key, &lock)
        .await
        .is_err());
    let learned = VersionStore::<&str>::learn_existence(&store, &key, &lock, Existence::Absent);
    assert!(learned.await.is_err());
}
