//! Failover loses nothing: proxies on a Redis primary whose replica is promoted, by hand behind
//! a moved address and through Sentinel. Real redis-server and redis-sentinel processes on free
//! loopback ports; the replication link runs through a relay the test stalls, so the last bump
//! exists only on the primary that dies.
#![cfg(feature = "redis")]

mod support;

use std::time::Duration;

use http::{header, Method, StatusCode};
use support::{
    proxy::start_proxy,
    redis_server::{RedisServer, Relay, Sentinel},
    Backend, HttpClient, Reply, HOLD,
};

const DOC: &str = "/api/doc";

/// A read whose `Last-Modified` validates (a record's first dates are ambiguous for a couple of
/// seconds, by design): reads until `If-Unmodified-Since` with it would be accepted, i.e. a
/// conditional read with it gets `304`. At most 100 tries, 50 ms apart.
async fn read_with_validating_date(client: &HttpClient) -> Reply {
    for _ in 0..100 {
        let read = client.send(Method::GET, DOC, &[], "").await;
        assert_eq!(read.status, StatusCode::OK);
        let date = read.last_modified().unwrap().to_owned();
        let again = client
            .send(Method::GET, DOC, &[("if-modified-since", &date)], "")
            .await;
        if again.status == StatusCode::NOT_MODIFIED {
            return read;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no read's date validated within 5 s");
}

/// A primary, and a replica whose replication link runs through a relay (`link`) the test can
/// stall; the proxies find "the primary" at `address`, a relay the test re-points after a
/// failover.
struct Replicated {
    primary: RedisServer,
    link: Relay,
    replica: RedisServer,
    address: Relay,
}

impl Replicated {
    async fn start() -> Self {
        let primary = RedisServer::start().await;
        let link = Relay::start(primary.port).await;
        let replica =
            RedisServer::start_with(&["--replicaof", "127.0.0.1", &link.port.to_string()]).await;
        let address = Relay::start(primary.port).await;
        Self {
            primary,
            link,
            replica,
            address,
        }
    }

    /// The primary dies, the replica is promoted (`REPLICAOF NO ONE`), and the address now
    /// leads to it (connections to the old one are cut).
    async fn fail_over(&mut self) {
        self.primary.stop().await;
        let _: String = self.replica.query(&["REPLICAOF", "NO", "ONE"]).await;
        self.address.point_to(self.replica.port);
        self.address.cut();
    }
}

/// A proxy binary in front of `backend`, on the Redis at `redis` (any URL `--redis` takes).
async fn proxy_on(redis: &str, backend: &Backend) -> (tokio::process::Child, HttpClient) {
    let upstream = support::serve(backend.service()).await;
    let upstream = format!("http://{upstream}");
    let (child, addr) = start_proxy(&["--upstream", &upstream, "--redis", redis]).await;
    (child, HttpClient::new(addr))
}

/// The scenario of issue 12: the replica never got the last bump (v2), is promoted, and the
/// proxy's Redis address now leads to it. A client still holding v1's validators must get `412`
/// (with the tag and with the date), the backend keeps v2, and a client that re-reads writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_replica_that_missed_the_last_bump_refuses_stale_validators() {
    let mut redis = Replicated::start().await;
    let backend = Backend::default();
    let (_proxy, client) = proxy_on(
        &format!("redis://127.0.0.1:{}/", redis.address.port),
        &backend,
    )
    .await;

    assert_eq!(
        client.send(Method::PUT, DOC, &[], "v1").await.status,
        StatusCode::OK
    );
    let v1 = read_with_validating_date(&client).await;
    let (t1, d1) = (v1.tag(), v1.last_modified().unwrap().to_owned());
    redis.primary.wait_replicated(&redis.replica).await;

    // The link stalls: v2 and its bump reach the primary only.
    redis.link.pause();
    let v2 = client
        .send(Method::PUT, DOC, &[("if-match", &t1)], "v2")
        .await;
    assert_eq!(v2.status, StatusCode::OK);

    redis.fail_over().await;

    let stale_tag = client
        .send_through_503s(Method::PUT, DOC, &[("if-match", &t1)], "lost?")
        .await;
    assert_eq!(
        stale_tag.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        stale_tag.text()
    );
    let stale_date = client
        .send_through_503s(Method::PUT, DOC, &[("if-unmodified-since", &d1)], "lost?")
        .await;
    assert_eq!(
        stale_date.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        stale_date.text()
    );
    assert_eq!(
        backend.doc(DOC).unwrap(),
        "v2",
        "the newer write was overwritten"
    );

    // A client that re-reads writes again, with the tag at once.
    let fresh = client.send(Method::GET, DOC, &[], "").await;
    assert_eq!(fresh.text(), "v2");
    let write = client
        .send(Method::PUT, DOC, &[("if-match", &fresh.tag())], "v3")
        .await;
    assert_eq!(write.status, StatusCode::OK, "{}", write.text());
    assert_eq!(backend.doc(DOC).unwrap(), "v3");
}

/// A write in flight while Redis fails over: its lease was taken on the primary that died and
/// never reached the replica, so its bump finds no lease. Another writer may have overtaken it:
/// it is answered `503` with `Retry-After`, not a success the layer cannot vouch for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_in_flight_during_a_failover_gets_503() {
    let mut redis = Replicated::start().await;
    let backend = Backend::default();
    let (_proxy, client) = proxy_on(
        &format!("redis://127.0.0.1:{}/", redis.address.port),
        &backend,
    )
    .await;

    let v1 = client.send(Method::PUT, DOC, &[], "v1").await;
    assert_eq!(v1.status, StatusCode::OK);
    redis.primary.wait_replicated(&redis.replica).await;
    redis.link.pause();
    let in_flight = tokio::spawn({
        let (client, tag) = (client.clone(), v1.tag());
        async move {
            client
                .send(Method::PUT, DOC, &[("if-match", &tag), (HOLD, "1")], "v2")
                .await
        }
    });
    backend.arrived().await;

    redis.fail_over().await;
    backend.release();

    let answer = in_flight.await.unwrap();
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        answer.text()
    );
    assert!(answer.header(header::RETRY_AFTER).is_some());
    assert!(
        answer.etag().is_none(),
        "a version the layer cannot vouch for"
    );
    // Its client re-reads and writes on.
    let fresh = client.send_through_503s(Method::GET, DOC, &[], "").await;
    assert_eq!(fresh.text(), "v2");
    let write = client
        .send_through_503s(Method::PUT, DOC, &[("if-match", &fresh.tag())], "v3")
        .await;
    assert_eq!(write.status, StatusCode::OK, "{}", write.text());
}

/// Sentinel: one primary, one replica (its link through a relay the test stalls), one Sentinel
/// (quorum 1). The proxy finds the primary through Sentinel; v2's bump reaches the primary only;
/// the primary is killed; Sentinel promotes the replica and the proxy follows without a restart.
/// Validators from before get `412`; nothing written is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_follows_a_sentinel_failover_and_loses_nothing() {
    const SERVICE: &str = "docs";
    let mut primary = RedisServer::start().await;
    let link = Relay::start(primary.port).await;
    let replica =
        RedisServer::start_with(&["--replicaof", "127.0.0.1", &link.port.to_string()]).await;
    primary.wait_replicated(&replica).await;
    let sentinel = Sentinel::start(SERVICE, &primary).await;
    let backend = Backend::default();
    let sentinels = format!("redis+sentinel://127.0.0.1:{}/{SERVICE}", sentinel.port);
    let (_proxy, client) = proxy_on(&sentinels, &backend).await;

    assert_eq!(
        client
            .send_through_503s(Method::PUT, DOC, &[], "v1")
            .await
            .status,
        StatusCode::OK
    );
    let v1 = client.send(Method::GET, DOC, &[], "").await;
    primary.wait_replicated(&replica).await;
    link.pause(); // v2 and its bump reach the primary only
    let v2 = client
        .send(Method::PUT, DOC, &[("if-match", &v1.tag())], "v2")
        .await;
    assert_eq!(v2.status, StatusCode::OK);

    // Sentinel learns of the replica from the primary's INFO: it must know it before the end.
    for _ in 0..200 {
        if sentinel.knows_replica(SERVICE, replica.port).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    primary.stop().await;
    // Sentinel notices (300 ms), elects itself and promotes the replica.
    for _ in 0..200 {
        if sentinel.primary_port(SERVICE).await == replica.port {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        sentinel.primary_port(SERVICE).await,
        replica.port,
        "no failover in 10 s"
    );

    let stale = client
        .send_through_503s(Method::PUT, DOC, &[("if-match", &v1.tag())], "lost?")
        .await;
    assert_eq!(
        stale.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        stale.text()
    );
    let held = client
        .send_through_503s(Method::PUT, DOC, &[("if-match", &v2.tag())], "lost?")
        .await;
    assert_eq!(
        held.status,
        StatusCode::PRECONDITION_FAILED,
        "a tag from before the failover"
    );
    assert_eq!(backend.doc(DOC).unwrap(), "v2");

    let fresh = client.send(Method::GET, DOC, &[], "").await;
    let write = client
        .send(Method::PUT, DOC, &[("if-match", &fresh.tag())], "v3")
        .await;
    assert_eq!(write.status, StatusCode::OK, "{}", write.text());
    assert_eq!(backend.doc(DOC).unwrap(), "v3");
    assert_eq!(replica.info("replication", "role").await, "master");
}

/// The clocks of two Redis servers differ: the one that died may have dated its last version
/// (which this one never received) up to a second ahead of this one's clock. A record reset by a
/// new history therefore validates no date before two seconds after the reset.
#[tokio::test]
async fn a_reset_record_validates_no_date_the_old_clock_may_have_issued() {
    use tower_conditional::store::{RedisStore, VersionStore};

    let redis = RedisServer::start().await;
    let store = RedisStore::open(&redis.url()).unwrap();
    let key: &'static str = "/doc";
    // A record of another history, last dated long ago.
    let (now, _micros): (u64, u64) = redis.query(&["TIME"]).await;
    let long_ago = (now - 10).to_string();
    let fields = [
        "c",
        "3",
        "m",
        &long_ago,
        "a",
        "0",
        "x",
        "e",
        "h",
        "another-history",
    ];
    let _: i64 = redis
        .query(&[&["HSET", "tc:/doc"][..], &fields].concat())
        .await;

    let reset = VersionStore::<&str>::current(&store, &key, 0)
        .await
        .unwrap()
        .version;
    assert!(reset.ambiguous, "a reset version's date validates nothing");
    assert!(reset.modified >= now);
    for _ in 0..100 {
        let version = VersionStore::<&str>::current(&store, &key, 0)
            .await
            .unwrap()
            .version;
        if !version.ambiguous {
            assert!(
                version.modified >= reset.modified + 2,
                "{} validates, a second the old clock may have issued (reset at {})",
                version.modified,
                reset.modified
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the reset version was never re-dated");
}

/// A primary demoted to a replica stays up while the proxy's Redis address moves on to the new
/// primary: the proxy's open connection still leads to the old one, where every script refuses
/// (`READONLY`). The proxy must connect anew, not stay stuck answering `503`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_leaves_a_demoted_primary_for_the_new_one() {
    let old = RedisServer::start().await;
    let new = RedisServer::start().await;
    let address = Relay::start(old.port).await;
    let backend = Backend::default();
    let redis = format!("redis://127.0.0.1:{}/", address.port);
    let (_proxy, client) = proxy_on(&redis, &backend).await;
    let v1 = client.send(Method::PUT, DOC, &[], "v1").await;
    assert_eq!(v1.status, StatusCode::OK);

    address.point_to(new.port); // new connections only
    let _: String = old
        .query(&["REPLICAOF", "127.0.0.1", &new.port.to_string()])
        .await;

    let stale = client
        .send_through_503s(Method::PUT, DOC, &[("if-match", &v1.tag())], "lost?")
        .await;
    assert_eq!(
        stale.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        stale.text()
    );
    let fresh = client.send(Method::GET, DOC, &[], "").await;
    let write = client
        .send(Method::PUT, DOC, &[("if-match", &fresh.tag())], "v2")
        .await;
    assert_eq!(write.status, StatusCode::OK, "{}", write.text());
    let on_new: i64 = new.query(&["EXISTS", &format!("tc:{DOC}")]).await;
    assert_eq!(
        on_new, 1,
        "the write's version is recorded on the new primary"
    );
}
