//! Several proxies, one truth, on a Redis Cluster: proxy binaries with `--redis-cluster` in front
//! of one naive backend, the cluster made of real redis-server processes the test creates
//! (`redis-cli --cluster create`) and, with a replica per master, fails over by killing a master.
#![cfg(feature = "redis")]

mod support;

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use http::{header, Method, StatusCode};
use support::{proxy::start_proxy, redis_cluster::Cluster, Backend, HttpClient, Reply};
use tokio::{process::Child, time::Instant};

/// Where the store keeps a resource's record (its default prefix).
fn record(path: &str) -> String {
    format!("tc:{path}")
}

/// `count` proxies on the cluster of the `seeds` (node URLs), in front of `upstream`.
async fn proxies(
    seeds: &[String],
    upstream: SocketAddr,
    count: usize,
    extra: &[&str],
) -> Vec<(Child, HttpClient)> {
    let upstream = format!("http://{upstream}");
    let mut args = vec!["--upstream", upstream.as_str()];
    for url in seeds {
        args.extend(["--redis-cluster", url.as_str()]);
    }
    args.extend_from_slice(extra);
    let mut started = Vec::new();
    for _ in 0..count {
        let (child, addr) = start_proxy(&args).await;
        started.push((child, HttpClient::new(addr)));
    }
    started
}

/// A read that the store vouched for (with an ETag), retried while it is not (the store
/// unreachable: the proxy forwards reads without a version), for at most 10 s.
async fn read_vouched(client: &HttpClient, path: &str) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = client.send(Method::GET, path, &[], "").await;
        if reply.etag().is_some() {
            return reply;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path}: no ETag for 10 s ({})",
            reply.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Paths whose records live on `count` different masters, one each.
async fn paths_on_distinct_masters(cluster: &Cluster, count: usize) -> Vec<String> {
    let mut chosen: Vec<(String, u16)> = Vec::new();
    for n in 0..1000 {
        let path = format!("/api/doc{n}");
        let owner = cluster.owner(cluster.keyslot(&record(&path)).await).await;
        if chosen.iter().all(|(_, taken)| *taken != owner) {
            chosen.push((path, owner));
            if chosen.len() == count {
                return chosen.into_iter().map(|(path, _)| path).collect();
            }
        }
    }
    panic!("no {count} paths on {count} masters among 1000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_proxies_on_a_three_master_cluster_lose_no_update() {
    const INSTANCES: usize = 3;
    const CLIENTS: usize = 12;
    const INCREMENTS: usize = 20;
    let cluster = Cluster::start(3, 0).await;
    let paths = paths_on_distinct_masters(&cluster, 3).await;
    let backend = Backend::default();
    let mut seed = backend.service();
    for path in &paths {
        support::call(&mut seed, support::request(Method::PUT, path, &[], "0")).await;
    }
    let upstream = support::serve(backend.service()).await;
    let proxies = proxies(&cluster.urls(), upstream, INSTANCES, &[]).await;

    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        // Each document through every proxy: client i on document i % 3, through proxy i / 3.
        let client = proxies[(i / paths.len()) % INSTANCES].1.clone();
        let path = paths[i % paths.len()].clone();
        tasks.push(tokio::spawn(async move {
            client.increment(&path, INCREMENTS).await
        }));
    }
    let mut successes = 0;
    for task in tasks {
        successes += task.await.unwrap();
    }
    assert_eq!(successes, CLIENTS * INCREMENTS);
    for path in &paths {
        let value: usize = std::str::from_utf8(&backend.doc(path).unwrap())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            value,
            CLIENTS / paths.len() * INCREMENTS,
            "an update to {path} was lost"
        );
    }

    // The records are spread over the cluster: in three slots, each on the master that serves
    // it (a key the node does not serve would be answered MOVED, not 1).
    let (mut slots, mut owners) = (BTreeSet::new(), BTreeSet::new());
    for path in &paths {
        let slot = cluster.keyslot(&record(path)).await;
        let owner = cluster.owner(slot).await;
        let exists: u8 = cluster.node(owner).query(&["EXISTS", &record(path)]).await;
        assert_eq!(
            exists, 1,
            "{path}'s record is not on the master of its slot"
        );
        slots.insert(slot);
        owners.insert(owner);
    }
    assert_eq!(
        (slots.len(), owners.len()),
        (3, 3),
        "{slots:?} on {owners:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_failover_in_the_cluster_fails_stale_validators() {
    const DOC: &str = "/api/failover";
    let mut cluster = Cluster::start(3, 1).await;
    let backend = Backend::default();
    let upstream = support::serve(backend.service()).await;
    // A lease left behind shows as a 503 after 1 s, not 10.
    const LOCK_TIMEOUT: [&str; 2] = ["--lock-timeout", "1"];
    let seeds = cluster.urls();
    let first = proxies(&seeds, upstream, 1, &LOCK_TIMEOUT).await;
    let client = &first[0].1;

    let written = client.send_through_503s(Method::PUT, DOC, &[], "v1").await;
    assert_eq!(written.status, StatusCode::OK, "{}", written.text());
    // T1 and D1, once D1 is unambiguous (dates written in a record's first two seconds are
    // not): a conditional read with it gets 304.
    let started = Instant::now();
    let (t1, d1) = loop {
        let read = read_vouched(client, DOC).await;
        let d1 = read.last_modified().expect("Last-Modified").to_owned();
        let again = client
            .send(Method::GET, DOC, &[("if-modified-since", &d1)], "")
            .await;
        if again.status == StatusCode::NOT_MODIFIED {
            break (read.tag(), d1);
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "D1 still ambiguous after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let fresh = client
        .send(Method::GET, DOC, &[("if-none-match", &t1)], "")
        .await;
    assert_eq!(fresh.status, StatusCode::NOT_MODIFIED, "T1 is current");

    // The master that holds the record, once its replica has it too.
    let slot = cluster.keyslot(&record(DOC)).await;
    let master = cluster.owner(slot).await;
    let exists: u8 = cluster.node(master).query(&["EXISTS", &record(DOC)]).await;
    assert_eq!(exists, 1, "the record is not on the master of its slot");
    let replica = cluster.replica_of(master).await;
    cluster
        .node(master)
        .wait_replicated(cluster.node(replica))
        .await;
    // (A replica redirects reads of keys: count the slot's keys instead.)
    let replicated: u64 = cluster
        .node(replica)
        .query(&["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()])
        .await;
    assert_eq!(replicated, 1, "the replica lacks the record");

    let failover = Instant::now();
    cluster.kill(master).await;
    // Before the cluster has noticed: no write is checked against a master that is gone.
    let early = client
        .send(Method::PUT, DOC, &[("if-match", &t1)], "early")
        .await;
    eprintln!("a write during the failover: {}", early.status);
    match early.status {
        StatusCode::SERVICE_UNAVAILABLE => assert!(early.headers.contains_key(header::RETRY_AFTER)),
        StatusCode::PRECONDITION_FAILED => {}
        other => panic!("a write during the failover: {other} {}", early.text()),
    }
    cluster.wait_owner(slot, replica).await;
    eprintln!(
        "slot {slot}: {replica} replaced {master} in {:?}",
        failover.elapsed()
    );

    // The promoted replica has every byte of the record, but another history: the validators
    // issued before validate nothing.
    let stale = client
        .send_through_503s(Method::PUT, DOC, &[("if-match", &t1)], "stale")
        .await;
    assert_eq!(
        stale.status,
        StatusCode::PRECONDITION_FAILED,
        "stale If-Match: {}",
        stale.text()
    );
    let stale = client
        .send_through_503s(Method::PUT, DOC, &[("if-unmodified-since", &d1)], "stale")
        .await;
    assert_eq!(
        stale.status,
        StatusCode::PRECONDITION_FAILED,
        "stale If-Unmodified-Since: {}",
        stale.text()
    );
    assert_eq!(backend.doc(DOC).unwrap(), "v1", "the last good write");

    // A client that re-reads writes again.
    let reread = read_vouched(client, DOC).await;
    assert_eq!(reread.text(), "v1");
    assert_ne!(reread.tag(), t1, "a tag of the old history");
    let next = client
        .send_through_503s(Method::PUT, DOC, &[("if-match", &reread.tag())], "v2")
        .await;
    assert_eq!(next.status, StatusCode::OK, "{}", next.text());
    assert_eq!(backend.doc(DOC).unwrap(), "v2");
    eprintln!("written again {:?} after the kill", failover.elapsed());

    // A proxy started now with the same seeds (the dead master first) finds the cluster and
    // agrees on the version.
    let mut dead_first = seeds.clone();
    dead_first.sort_by_key(|url| *url != cluster.node(master).url());
    let late = proxies(&dead_first, upstream, 1, &LOCK_TIMEOUT).await;
    let late = &late[0].1;
    assert_eq!(read_vouched(late, DOC).await.tag(), next.tag());
    let stale = late
        .send_through_503s(Method::PUT, DOC, &[("if-match", &t1)], "stale")
        .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(backend.doc(DOC).unwrap(), "v2");
}

/// A write forwarded before the master died, whose lease reached the replica: its bump fails
/// while the slot has no master, is retried, and lands on the promoted replica. No other writer
/// can have come in between (the lease was there all along), so it succeeds, and its tag is the
/// current one; the validator it was based on is stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_in_flight_across_a_master_failover_is_recorded_on_the_promoted_replica() {
    const DOC: &str = "/api/in-flight";
    let mut cluster = Cluster::start(3, 1).await;
    let backend = Backend::default();
    let upstream = support::serve(backend.service()).await;
    let first = proxies(&cluster.urls(), upstream, 1, &["--lock-timeout", "1"]).await;
    let client = first[0].1.clone();
    let t1 = client
        .send_through_503s(Method::PUT, DOC, &[], "v1")
        .await
        .tag();
    let slot = cluster.keyslot(&record(DOC)).await;
    let master = cluster.owner(slot).await;
    let replica = cluster.replica_of(master).await;

    let in_flight = tokio::spawn({
        let (client, t1) = (client.clone(), t1.clone());
        async move {
            let headers = [("if-match", t1.as_str()), (support::HOLD, "1")];
            client.send(Method::PUT, DOC, &headers, "in flight").await
        }
    });
    backend.arrived().await; // under the lease, which the replica then has
    cluster
        .node(master)
        .wait_replicated(cluster.node(replica))
        .await;
    cluster.kill(master).await;
    backend.release(); // the bump meets a slot with no master, and is retried
    cluster.wait_owner(slot, replica).await;

    let written = in_flight.await.unwrap();
    assert_eq!(written.status, StatusCode::OK, "{}", written.text());
    assert_eq!(backend.doc(DOC).unwrap(), "in flight");
    let stale = client
        .send_through_503s(Method::PUT, DOC, &[("if-match", &t1)], "stale")
        .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(read_vouched(&client, DOC).await.tag(), written.tag());
    let next = client
        .send_through_503s(Method::PUT, DOC, &[("if-match", &written.tag())], "next")
        .await;
    assert_eq!(next.status, StatusCode::OK, "{}", next.text());
    assert_eq!(backend.doc(DOC).unwrap(), "next");
}
