//! Faults through the proxy binary, over real loopback sockets: upstreams that refuse, reset,
//! fail or stall; clients that leave or upload slowly; more resources than the table holds.
//! After each, no lock is left held (the next write succeeds), no version goes backwards (tag
//! counters only grow), and no update is lost (stale validators get 412).

mod support;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use http::{Method, StatusCode};
use support::{proxy::start_proxy, Backend, HttpClient, Reply, HOLD, STATUS};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// The counter of one of the layer's tags, `"<instance>.<counter>"`.
fn counter(reply: &Reply) -> u64 {
    let tag = reply.etag().expect("an ETag").trim_matches('"');
    u64::from_str_radix(tag.rsplit('.').next().unwrap(), 16).unwrap()
}

async fn proxy_for(
    upstream: std::net::SocketAddr,
    extra: &[&str],
) -> (tokio::process::Child, HttpClient) {
    let mut args = vec!["--upstream".to_owned(), format!("http://{upstream}")];
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (child, addr) = start_proxy(&args).await;
    (child, HttpClient::new(addr))
}

/// The shared ending: a stale tag is refused, with a version at least `at_least`; a fresh one
/// works; counters only grow.
async fn assert_recovered(client: &HttpClient, path: &str, stale: &str, at_least: u64) {
    let refused = client
        .send(Method::PUT, path, &[("if-match", stale)], "stale")
        .await;
    assert_eq!(refused.status, StatusCode::PRECONDITION_FAILED);
    assert!(
        counter(&refused) >= at_least,
        "a version went backwards, or was not bumped"
    );
    let current = refused.tag();
    let next = client
        .send(Method::PUT, path, &[("if-match", &current)], "next")
        .await;
    assert_eq!(
        next.status,
        StatusCode::OK,
        "the resource is still locked or stale"
    );
    assert!(counter(&next) > counter(&refused));
}

#[tokio::test]
async fn an_upstream_that_refuses_connections_gives_502_until_it_is_back() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (_proxy, client) = proxy_for(port, &[]).await;
    let read = client.send(Method::GET, "/doc", &[], "").await;
    assert_eq!(read.status, StatusCode::BAD_GATEWAY);
    let write = client.send(Method::PUT, "/doc", &[], "v1").await;
    assert_eq!(write.status, StatusCode::BAD_GATEWAY);
    assert!(write.text().contains("upstream"), "{}", write.text());

    let backend = Backend::default();
    support::serve_on(TcpListener::bind(port).await.unwrap(), backend.service());
    let saved = client.send(Method::PUT, "/doc", &[], "v1").await;
    assert_eq!(saved.status, StatusCode::OK);
    assert!(
        counter(&saved) >= 2,
        "the 502 write counted as a possible change"
    );
    let newer = client
        .send(Method::PUT, "/doc", &[("if-match", &saved.tag())], "v2")
        .await;
    assert_eq!(newer.status, StatusCode::OK);
    assert_recovered(&client, "/doc", &saved.tag(), counter(&newer)).await;
}

/// An upstream speaking raw HTTP/1.1: a write carrying `x-test-reset` gets half a response
/// head and a TCP reset; anything else gets `200 ok`.
async fn resetting_upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 4096];
                    let Ok(n) = stream.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    if buf.len() < end + 4 + length {
                        continue;
                    }
                    buf.drain(..end + 4 + length);
                    if head.contains("x-test-reset") {
                        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Le").await;
                        // Linger 0 makes the drop send a reset at once (it cannot block).
                        #[allow(deprecated)]
                        let _ = stream.set_linger(Some(Duration::ZERO));
                        return; // dropped with linger 0: a reset
                    }
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                }
            });
        }
    });
    addr
}

/// An upstream speaking raw HTTP/1.1 that answers every request `200 ok` and counts the
/// connections it accepts; with `close`, it says `Connection: close` and closes each connection
/// after one response.
async fn counting_upstream(close: bool) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let mut chunk = [0u8; 4096];
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    // Requests without a body: each head ends a request.
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let res: &[u8] = if close {
                            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"
                        } else {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                        };
                        if stream.write_all(res).await.is_err() || close {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn upstream_connections_are_kept_and_reused() {
    let (upstream, accepted) = counting_upstream(false).await;
    let (_proxy, client) = proxy_for(upstream, &[]).await;
    for _ in 0..20 {
        let reply = client.send(Method::GET, "/doc", &[], "").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "ok");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "sequential requests each made a new upstream connection"
    );
}

#[tokio::test]
async fn an_upstream_closing_each_connection_still_answers_every_request() {
    let (upstream, accepted) = counting_upstream(true).await;
    let (_proxy, client) = proxy_for(upstream, &["--upstream-max-connections", "2"]).await;
    for _ in 0..20 {
        // A connection the upstream closed is never used again (no 502), nor kept (its place
        // in the bound of 2 comes back).
        let reply = client.send(Method::GET, "/doc", &[], "").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 20);
}

#[tokio::test]
async fn an_upstream_that_resets_mid_response_leaves_the_write_unknown_not_lost() {
    let upstream = resetting_upstream().await;
    let (_proxy, client) = proxy_for(upstream, &[]).await;
    let read = client.send(Method::GET, "/doc", &[], "").await;
    assert_eq!(read.status, StatusCode::OK);
    let reset = client
        .send(
            Method::PUT,
            "/doc",
            &[("if-match", &read.tag()), ("x-test-reset", "1")],
            "x",
        )
        .await;
    assert_eq!(reset.status, StatusCode::BAD_GATEWAY);
    assert_recovered(&client, "/doc", &read.tag(), counter(&read) + 1).await;
}

#[tokio::test]
async fn an_upstream_answering_500_to_a_write_bumps_the_version() {
    let backend = Backend::default();
    let upstream = support::serve(backend.service()).await;
    let (_proxy, client) = proxy_for(upstream, &[]).await;
    let saved = client.send(Method::PUT, "/doc", &[], "v1").await;
    let failed = client
        .send(
            Method::PUT,
            "/doc",
            &[("if-match", &saved.tag()), (STATUS, "500")],
            "x",
        )
        .await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_recovered(&client, "/doc", &saved.tag(), counter(&saved) + 1).await;
    assert_eq!(backend.doc("/doc").unwrap(), "next");
}

#[tokio::test]
async fn an_upstream_answering_after_the_timeout_gets_504_and_a_grace_period() {
    let backend = Backend::default();
    let upstream = support::serve(backend.service()).await;
    let (_proxy, client) = proxy_for(
        upstream,
        &["--upstream-timeout", "1", "--timeout-grace", "1"],
    )
    .await;
    let saved = client.send(Method::PUT, "/doc", &[], "v1").await;
    let slow = client
        .send(
            Method::PUT,
            "/doc",
            &[("if-match", &saved.tag()), (HOLD, "1")],
            "late",
        )
        .await;
    assert_eq!(slow.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        slow.text().contains("did not answer in time"),
        "{}",
        slow.text()
    );
    // The next write waits out the grace period, then finds the version bumped.
    assert_recovered(&client, "/doc", &saved.tag(), counter(&saved) + 1).await;
    assert_eq!(backend.doc("/doc").unwrap(), "next");
}

#[tokio::test]
async fn a_client_that_leaves_mid_write_does_not_let_the_next_write_in_early() {
    let backend = Backend::default();
    let upstream = support::serve(backend.service()).await;
    let (_proxy, addr) = start_proxy(&["--upstream", &format!("http://{upstream}")]).await;
    let client = HttpClient::new(addr);
    let saved = client.send(Method::PUT, "/doc", &[], "v1").await;
    let v1 = saved.tag();

    let mut leaving = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "PUT /doc HTTP/1.1\r\nhost: proxy\r\nif-match: {v1}\r\n{HOLD}: 1\r\ncontent-length: 9\r\n\r\nabandoned"
    );
    leaving.write_all(request.as_bytes()).await.unwrap();
    backend.arrived().await;
    drop(leaving); // the client is gone; the backend is still applying its write

    let second = tokio::spawn({
        let (client, v1) = (client.clone(), v1.clone());
        async move {
            client
                .send(Method::PUT, "/doc", &[("if-match", &v1)], "second")
                .await
        }
    });
    backend.release();
    let second = second.await.unwrap();
    assert_eq!(
        second.status,
        StatusCode::PRECONDITION_FAILED,
        "both were based on v1: one must lose"
    );
    assert_eq!(
        backend.doc("/doc").unwrap(),
        "abandoned",
        "the abandoned write ran to its end"
    );
    let puts = backend
        .methods()
        .iter()
        .filter(|m| **m == Method::PUT)
        .count();
    assert_eq!(puts, 2, "the second write never reached the backend");
    assert_recovered(&client, "/doc", &v1, counter(&saved) + 1).await;
}

#[tokio::test]
async fn a_thousand_resources_in_a_table_of_a_hundred() {
    let backend = Backend::default();
    let upstream = support::serve(backend.service()).await;
    let upstream = format!("http://{upstream}");
    let args = ["--upstream", &upstream, "--max-resources", "100"];
    let (_proxy, addr, ops) = support::proxy::start_proxy_with_ops(&args).await;
    let client = HttpClient::new(addr);
    let mut tags = Vec::new();
    for i in 0..1000 {
        let saved = client
            .send(Method::PUT, &format!("/doc/{i}"), &[], "v1")
            .await;
        assert_eq!(saved.status, StatusCode::OK);
        tags.push(saved.tag());
    }
    #[cfg(feature = "metrics")]
    {
        let scraped = support::proxy::scrape(ops).await;
        let tracked = "tower_conditional_tracked_resources";
        let tracked = support::proxy::sample(&scraped, tracked, &[]);
        assert!(tracked <= 100.0, "{tracked} resources tracked");
        let evicted = "tower_conditional_evictions_total";
        let evicted = support::proxy::sample(&scraped, evicted, &[]);
        assert_eq!(tracked + evicted, 1000.0, "each forgotten one counted");
    }
    #[cfg(not(feature = "metrics"))]
    let _ = ops;
    // The oldest were forgotten: their holders' tags are refused, never accepted.
    for (i, held) in tags.iter().enumerate().take(100) {
        let path = format!("/doc/{i}");
        let write = client
            .send(Method::PUT, &path, &[("if-match", held)], "v2")
            .await;
        assert_eq!(write.status, StatusCode::PRECONDITION_FAILED, "{path}");
        assert_eq!(backend.doc(&path).unwrap(), "v1");
    }
}

#[tokio::test]
async fn a_slow_upload_does_not_hold_the_resource() {
    let backend = Backend::default();
    let upstream = support::serve(backend.service()).await;
    let (_proxy, addr) = start_proxy(&["--upstream", &format!("http://{upstream}")]).await;
    let client = HttpClient::new(addr);
    let saved = client.send(Method::PUT, "/doc", &[], "v1").await;
    let v1 = saved.tag();

    let mut slow = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT /doc HTTP/1.1\r\nhost: proxy\r\nif-match: {v1}\r\ncontent-length: 10\r\n\r\nhello"
    );
    slow.write_all(head.as_bytes()).await.unwrap();

    // Half of the slow body is in; another writer based on v1 goes through meanwhile.
    let precondition = [("if-match", v1.as_str())];
    let fast = client.send(Method::PUT, "/doc", &precondition, "fast");
    let fast = tokio::time::timeout(Duration::from_secs(30), fast)
        .await
        .expect("a slow upload held the resource");
    assert_eq!(fast.status, StatusCode::OK);

    slow.write_all(b"world").await.unwrap();
    let mut answer = vec![0u8; 1024];
    let n = slow.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 412"), "{answer}");
    assert_eq!(backend.doc("/doc").unwrap(), "fast");
    assert_recovered(&client, "/doc", &v1, counter(&fast)).await;
}
