//! The proxy example run as a service: Prometheus metrics and health checks on its operations
//! listener, flags from the environment, JSON log lines. Through its binary, on loopback ports.

mod support;

use std::process::Stdio;

use http::{Method, StatusCode};
use support::{
    proxy::{launch, start_proxy_with_ops},
    Backend, HttpClient,
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::TcpSocket,
};

/// After a known sequence of requests, every counter says exactly what the layer did.
#[cfg(feature = "metrics")]
#[tokio::test]
async fn metrics_count_what_the_layer_did() {
    use support::{
        proxy::{sample, scrape},
        STATUS,
    };

    let backend = Backend::default();
    let upstream = support::serve(backend.service()).await;
    let upstream = format!("http://{upstream}");
    let (_proxy, addr, ops) =
        start_proxy_with_ops(&["--upstream", &upstream, "--require-precondition"]).await;
    let client = HttpClient::new(addr);
    let send = |method: Method, headers: &[(&str, &str)]| {
        let client = client.clone();
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        async move {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str()))
                .collect();
            client.send(method, "/doc", &headers, "body").await
        }
    };

    // A create (the layer asks the backend whether it exists first: not counted), a read, two
    // 304s.
    let created = send(Method::PUT, &[("if-none-match", "*")]).await;
    assert_eq!(created.status, StatusCode::OK);
    let tag = send(Method::GET, &[]).await.tag();
    for _ in 0..2 {
        let unchanged = send(Method::GET, &[("if-none-match", &tag)]).await;
        assert_eq!(unchanged.status, StatusCode::NOT_MODIFIED);
    }
    // One 412 per precondition, a 428 and a 400.
    let old_date = "Sun, 06 Nov 1994 08:49:37 GMT";
    for (name, value) in [
        ("if-match", "\"stale.1\""),
        ("if-unmodified-since", old_date),
        ("if-none-match", tag.as_str()),
    ] {
        let refused = send(Method::PUT, &[(name, value)]).await;
        assert_eq!(refused.status, StatusCode::PRECONDITION_FAILED, "{name}");
    }
    let blind = send(Method::PUT, &[]).await;
    assert_eq!(blind.status, StatusCode::PRECONDITION_REQUIRED);
    let malformed = send(Method::PUT, &[("if-match", "no quotes")]).await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    // Forwarded writes of each outcome: 4xx (nothing changes), 5xx (unknown: bumps), 2xx.
    let refused = send(Method::PUT, &[("if-match", &tag), (STATUS, "422")]).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    let failed = send(Method::PUT, &[("if-match", &tag), (STATUS, "500")]).await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    let tag = send(Method::GET, &[]).await.tag();
    let saved = send(Method::PUT, &[("if-match", &tag)]).await;
    assert_eq!(saved.status, StatusCode::OK);

    let scraped = scrape(ops).await;
    let requests = |labels: &[(&str, &str)]| {
        let mut all = vec![("class", "default")];
        all.extend_from_slice(labels);
        sample(&scraped, "tower_conditional_requests_total", &all)
    };
    let outcome = |outcome| requests(&[("outcome", outcome)]);
    let failed = |precondition| {
        requests(&[
            ("outcome", "precondition_failed"),
            ("precondition", precondition),
        ])
    };
    let written = |result| requests(&[("outcome", "forwarded_write"), ("result", result)]);
    assert_eq!(outcome("not_modified"), 2.0);
    assert_eq!(failed("if_match"), 1.0);
    assert_eq!(failed("if_unmodified_since"), 1.0);
    assert_eq!(failed("if_none_match"), 1.0);
    assert_eq!(failed("backend"), 0.0);
    assert_eq!(outcome("precondition_required"), 1.0);
    assert_eq!(outcome("bad_request"), 1.0);
    assert_eq!(outcome("content_too_large"), 0.0);
    assert_eq!(outcome("unavailable"), 0.0);
    assert_eq!(outcome("forwarded_read"), 2.0);
    assert_eq!(written("2xx"), 2.0);
    assert_eq!(written("4xx"), 1.0);
    assert_eq!(written("unknown"), 1.0);

    let class = [("class", "default")];
    // Every write waited for its resource's lock once.
    let lock_waits = sample(
        &scraped,
        "tower_conditional_lock_wait_seconds_count",
        &class,
    );
    assert_eq!(lock_waits, 9.0);
    let upstream = |access| {
        let labels = [("class", "default"), ("access", access)];
        sample(
            &scraped,
            "tower_conditional_upstream_seconds_count",
            &labels,
        )
    };
    assert_eq!(upstream("read"), 2.0);
    assert_eq!(upstream("write"), 4.0);
    let bumps = [("class", "default"), ("op", "bump")];
    // 2xx and unknown outcomes bump; a 4xx does not.
    assert_eq!(
        sample(&scraped, "tower_conditional_store_seconds_count", &bumps),
        3.0
    );
    assert_eq!(
        sample(&scraped, "tower_conditional_writes_in_flight", &class),
        0.0
    );
    assert_eq!(
        sample(&scraped, "tower_conditional_tracked_resources", &[]),
        1.0
    );
    assert_eq!(
        sample(
            &scraped,
            "tower_conditional_proxy_upstream_errors_total",
            &[]
        ),
        0.0
    );
}

/// `/readyz` says whether the upstream accepts connections, on every call; `/livez` only that
/// the process serves.
#[tokio::test]
async fn readyz_follows_the_upstream_and_livez_stays_up() {
    // The upstream's port stays ours while it is gone (a second socket bound to it, not
    // listening, refuses connections): a listener of another test cannot take it meanwhile.
    let socket = || {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseport(true).unwrap();
        socket
    };
    let first = socket();
    first.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let upstream = first.local_addr().unwrap();
    let listener = first.listen(16).unwrap();
    let reserved = socket();
    reserved.bind(upstream).unwrap();
    let (_proxy, _addr, ops) =
        start_proxy_with_ops(&["--upstream", &format!("http://{upstream}")]).await;
    let ops = HttpClient::new(ops);

    let ready = ops.send(Method::GET, "/readyz", &[], "").await;
    assert_eq!((ready.status, ready.text()), (StatusCode::OK, "ready\n"));

    drop(listener);
    let gone = ops.send(Method::GET, "/readyz", &[], "").await;
    assert_eq!(gone.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        gone.text().starts_with("not ready: upstream"),
        "{}",
        gone.text()
    );
    let live = ops.send(Method::GET, "/livez", &[], "").await;
    assert_eq!((live.status, live.text()), (StatusCode::OK, "ok\n"));

    let _back = reserved.listen(16).unwrap();
    let ready = ops.send(Method::GET, "/readyz", &[], "").await;
    assert_eq!((ready.status, ready.text()), (StatusCode::OK, "ready\n"));
}

/// With `--redis`, `/readyz` is not ready while Redis is down.
#[cfg(feature = "redis")]
#[tokio::test]
async fn readyz_follows_redis() {
    use support::redis_server::RedisServer;

    let mut redis = RedisServer::start().await;
    let backend = Backend::default();
    let upstream = support::serve(backend.service()).await;
    let (_proxy, _addr, ops) = start_proxy_with_ops(&[
        "--upstream",
        &format!("http://{upstream}"),
        "--redis",
        &redis.url(),
    ])
    .await;
    let ops = HttpClient::new(ops);
    let ready = ops.send(Method::GET, "/readyz", &[], "").await;
    assert_eq!((ready.status, ready.text()), (StatusCode::OK, "ready\n"));

    redis.stop().await;
    let gone = ops.send(Method::GET, "/readyz", &[], "").await;
    assert_eq!(gone.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        gone.text().starts_with("not ready: redis"),
        "{}",
        gone.text()
    );
    let live = ops.send(Method::GET, "/livez", &[], "").await;
    assert_eq!(live.status, StatusCode::OK);

    // The store's connection is remade on its next use after the failure: ready again within
    // a few checks.
    redis.restart().await;
    let mut checks = 0..100;
    loop {
        checks.next().expect("ready again once Redis is back");
        let ready = ops.send(Method::GET, "/readyz", &[], "").await;
        if ready.status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// `GET /metrics` on the proxy's own address is the upstream's business; the operations
/// listener answers only its own paths, and only to reads.
#[tokio::test]
async fn the_operations_listener_is_apart_from_the_proxied_namespace() {
    let backend = Backend::default();
    let upstream = support::serve(backend.service()).await;
    let (_proxy, addr, ops) =
        start_proxy_with_ops(&["--upstream", &format!("http://{upstream}")]).await;

    let proxied = HttpClient::new(addr)
        .send(Method::GET, "/metrics", &[], "")
        .await;
    assert_eq!(
        proxied.status,
        StatusCode::NOT_FOUND,
        "the backend's answer"
    );
    assert_eq!(backend.hits(), 1);

    let ops = HttpClient::new(ops);
    let put = ops.send(Method::PUT, "/metrics", &[], "x").await;
    assert_eq!(put.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(put.header(http::header::ALLOW), Some("GET, HEAD"));
    let other = ops.send(Method::GET, "/doc", &[], "").await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    let metrics = ops.send(Method::GET, "/metrics", &[], "").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(
        metrics
            .header(http::header::CONTENT_TYPE)
            .is_some_and(|kind| kind.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        metrics.header(http::header::CONTENT_TYPE)
    );
}

/// Every flag has a `TOWER_CONDITIONAL_` variable; the command line wins over it.
#[tokio::test]
async fn an_environment_variable_sets_a_flag_and_the_flag_beats_it() {
    let backend = Backend::default();
    let upstream = format!("http://{}", support::serve(backend.service()).await);

    // The upstream and a switch from the environment alone.
    let env = [
        ("TOWER_CONDITIONAL_UPSTREAM", upstream.as_str()),
        ("TOWER_CONDITIONAL_REQUIRE_PRECONDITION", "true"),
    ];
    let started = launch(&[], &env, &[], Stdio::inherit()).await;
    let blind = HttpClient::new(started.addr)
        .send(Method::PUT, "/doc", &[], "blind")
        .await;
    assert_eq!(blind.status, StatusCode::PRECONDITION_REQUIRED);
    assert_eq!(
        backend.hits(),
        0,
        "the environment's upstream, and its switch"
    );

    // A limit from the environment, overridden on the command line.
    let env = [
        ("TOWER_CONDITIONAL_UPSTREAM", upstream.as_str()),
        ("TOWER_CONDITIONAL_MAX_BODY", "1"),
    ];
    let started = launch(&[], &env, &["--max-body", "1000"], Stdio::inherit()).await;
    let written = HttpClient::new(started.addr)
        .send(Method::PUT, "/doc", &[], "longer than one byte")
        .await;
    assert_eq!(written.status, StatusCode::OK);
    assert_eq!(backend.doc("/doc").unwrap(), "longer than one byte");

    // The same limit from the environment alone applies.
    let started = launch(&[], &env, &[], Stdio::inherit()).await;
    let refused = HttpClient::new(started.addr)
        .send(Method::PUT, "/doc", &[], "longer than one byte")
        .await;
    assert_eq!(refused.status, StatusCode::PAYLOAD_TOO_LARGE);
}

/// With `--log-format json --log-requests`, stderr is JSON lines, one per request with what
/// the layer did.
#[tokio::test]
async fn json_log_lines_carry_each_request() {
    let backend = Backend::default();
    let upstream = format!("http://{}", support::serve(backend.service()).await);
    let args = [
        "--upstream",
        &upstream,
        "--log-format",
        "json",
        "--log-requests",
    ];
    let mut started = launch(&[], &[], &args, Stdio::piped()).await;
    let client = HttpClient::new(started.addr);
    let saved = client.send(Method::PUT, "/doc", &[], "v1").await;
    assert_eq!(saved.status, StatusCode::OK);
    let tag = saved.tag();
    let unchanged = client
        .send(Method::GET, "/doc", &[("if-none-match", &tag)], "")
        .await;
    assert_eq!(unchanged.status, StatusCode::NOT_MODIFIED);

    // Each line is written before its response is sent: all are there once the proxy is gone.
    started.child.kill().await.unwrap();
    let stderr = started.child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let mut requests = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        let line: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"));
        if line["message"] == "request" {
            requests.push(line);
        }
    }
    assert_eq!(requests.len(), 2, "{requests:?}");
    let (write, read) = (&requests[0], &requests[1]);
    assert_eq!(write["level"], "INFO");
    assert_eq!(write["method"], "PUT");
    assert_eq!(write["path"], "/doc");
    assert_eq!(write["status"], 200);
    assert_eq!(write["action"], "forwarded_write");
    assert_eq!(write["version"], tag.as_str());
    assert!(write["upstream_seconds"].as_f64().is_some(), "{write}");
    assert_eq!(read["method"], "GET");
    assert_eq!(read["status"], 304);
    assert_eq!(read["action"], "not_modified");
    assert_eq!(read["version"], tag.as_str());
    assert!(
        read.get("upstream_seconds").is_none(),
        "not forwarded: {read}"
    );
}
