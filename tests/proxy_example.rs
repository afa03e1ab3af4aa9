//! The proxy example as a user runs it: its binary, real sockets, its demo backend or ours.

mod support;

use http::{Method, StatusCode};
use support::{
    proxy::{start_proxy, start_proxy_with_ops},
    Backend, HttpClient,
};

#[tokio::test]
async fn proxy_serves_its_demo_backend_with_optimistic_locking() {
    let (_proxy, addr) = start_proxy(&[]).await;
    let client = HttpClient::new(addr);

    let sync = client.send(Method::GET, "/api/storage", &[], "").await;
    assert_eq!(sync.status, StatusCode::OK);
    assert!(sync.text().contains("content"), "{}", sync.text());
    let held = sync.last_modified().expect("a stamped read").to_owned();
    sync.assert_dates_truthful();

    // The proxy runs on the system clock: its start second and any second with two writes are
    // ambiguous, so (like every client of the note) retry after a re-sync until a save lands.
    let mut held = held;
    let mut attempts = 0..100_000;
    let saved = loop {
        attempts.next().expect("a save landed within a few seconds");
        let save = client
            .send(
                Method::POST,
                "/api/storage",
                &[("if-unmodified-since", &held)],
                "{\"content\":\"mine\"}",
            )
            .await;
        match save.status {
            StatusCode::OK => break save,
            StatusCode::PRECONDITION_FAILED => {
                let resync = client.send(Method::GET, "/api/storage", &[], "").await;
                held = resync.last_modified().unwrap().to_owned();
                tokio::task::yield_now().await;
            }
            other => panic!("unexpected {other}"),
        }
    };
    saved.assert_dates_truthful();
    let read = client.send(Method::GET, "/api/storage", &[], "").await;
    assert_eq!(read.text(), "{\"content\":\"mine\"}");

    // The version we held before the save is now stale.
    let stale = client
        .send(
            Method::POST,
            "/api/storage",
            &[("if-unmodified-since", &held)],
            "{\"content\":\"lost\"}",
        )
        .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    let read = client.send(Method::GET, "/api/storage", &[], "").await;
    assert_eq!(read.text(), "{\"content\":\"mine\"}");
}

#[tokio::test]
async fn proxy_forwards_to_a_separate_upstream() {
    let backend = Backend::default();
    let upstream = support::serve(backend.service()).await;
    let (_proxy, addr) = start_proxy(&["--upstream", &format!("http://{upstream}")]).await;
    let client = HttpClient::new(addr);

    let saved = client
        .send(Method::PUT, "/docs/a?x=1", &[], "through the proxy")
        .await;
    assert_eq!(saved.status, StatusCode::OK);
    assert_ne!(
        saved.last_modified(),
        Some("Mon, 01 Jan 2001 00:00:00 GMT"),
        "stamped by the layer"
    );
    assert_eq!(backend.doc("/docs/a").unwrap(), "through the proxy");
    let hits = backend.hits();
    let stale = client
        .send(
            Method::PUT,
            "/docs/a",
            &[("if-unmodified-since", "Sun, 06 Nov 1994 08:49:37 GMT")],
            "x",
        )
        .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(backend.hits(), hits, "answered by the proxy");
}

#[tokio::test]
async fn an_unreachable_upstream_gives_502_not_a_hang() {
    // A port that was free a moment ago: connections to it are refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (_proxy, addr) = start_proxy(&["--upstream", &format!("http://{closed}")]).await;
    let client = HttpClient::new(addr);
    let res = client.send(Method::GET, "/api/storage", &[], "").await;
    assert_eq!(res.status, StatusCode::BAD_GATEWAY);
    assert!(res.text().contains("upstream"), "{}", res.text());
    let res = client.send(Method::POST, "/api/storage", &[], "x").await;
    assert_eq!(res.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn require_precondition_refuses_blind_writes_with_428() {
    let (_proxy, addr) = start_proxy(&["--require-precondition"]).await;
    let client = HttpClient::new(addr);
    let blind = client.send(Method::POST, "/api/storage", &[], "{}").await;
    assert_eq!(blind.status, StatusCode::PRECONDITION_REQUIRED);
    assert!(blind.text().contains("If-Match"), "{}", blind.text());

    let read = client.send(Method::GET, "/api/storage", &[], "").await;
    let tag = read
        .header(http::header::ETAG)
        .expect("an ETag on a read")
        .to_owned();
    let save = client
        .send(
            Method::POST,
            "/api/storage",
            &[("if-match", &tag)],
            "{\"content\":\"ok\"}",
        )
        .await;
    assert_eq!(save.status, StatusCode::OK);
    assert_ne!(save.header(http::header::ETAG), Some(tag.as_str()));
}

#[tokio::test]
async fn proxy_strips_hop_by_hop_fields_both_ways_and_adds_forwarding_fields() {
    let backend = Backend::default();
    let upstream = support::serve(backend.service()).await;
    let (_proxy, addr) = start_proxy(&["--upstream", &format!("http://{upstream}")]).await;
    let client = HttpClient::new(addr);

    let echoed = client
        .send(
            Method::GET,
            "/echo",
            &[
                (support::ECHO, "1"),
                ("connection", "x-private"),
                ("x-private", "secret"),
                ("proxy-authorization", "Basic eA=="),
                ("x-forwarded-for", "203.0.113.7"),
                ("host", "storage.example"),
            ],
            "",
        )
        .await;
    let seen = echoed.text().to_ascii_lowercase();
    for gone in [
        "x-private:",
        "proxy-authorization:",
        "connection: x-private",
    ] {
        assert!(!seen.contains(gone), "{gone} reached the upstream:\n{seen}");
    }
    for kept in [
        "host: storage.example",
        "x-forwarded-for: 203.0.113.7, 127.0.0.1",
        "forwarded: for=127.0.0.1;proto=http;host=\"storage.example\"",
        "via: 1.1 tower-conditional",
    ] {
        assert!(seen.contains(kept), "{kept} missing upstream:\n{seen}");
    }

    let hop = client
        .send(Method::GET, "/hop", &[(support::HOP, "1")], "")
        .await;
    assert!(!hop.headers.contains_key("x-resp-private"));
    assert!(!hop.headers.contains_key("keep-alive"));
    assert_eq!(hop.header(http::header::VIA), Some("1.1 tower-conditional"));
}

#[tokio::test]
async fn proxy_can_rewrite_host_to_the_upstream() {
    let backend = Backend::default();
    let upstream = support::serve(backend.service()).await;
    let (_proxy, addr) = start_proxy(&[
        "--upstream",
        &format!("http://{upstream}"),
        "--rewrite-host",
    ])
    .await;
    let echoed = HttpClient::new(addr)
        .send(
            Method::GET,
            "/echo",
            &[(support::ECHO, "1"), ("host", "storage.example")],
            "",
        )
        .await;
    assert!(
        echoed.text().contains(&format!("host: {upstream}")),
        "{}",
        echoed.text()
    );
}

#[tokio::test]
async fn proxy_speaks_http2_with_prior_knowledge() {
    let (_proxy, addr) = start_proxy(&[]).await;
    let client = HttpClient::http2(addr);
    let read = client.send(Method::GET, "/api/storage", &[], "").await;
    assert_eq!(read.status, StatusCode::OK);
    let tag = read.header(http::header::ETAG).unwrap().to_owned();
    let not_modified = client
        .send(Method::GET, "/api/storage", &[("if-none-match", &tag)], "")
        .await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    let save = client
        .send(
            Method::PUT,
            "/api/storage",
            &[("if-match", &tag)],
            "{\"content\":\"h2\"}",
        )
        .await;
    assert_eq!(save.status, StatusCode::OK);
}

#[tokio::test]
async fn proxy_shuts_down_gracefully_on_sigterm() {
    let backend = Backend::default();
    let upstream = support::serve(backend.service()).await;
    let (mut proxy, addr) = start_proxy(&["--upstream", &format!("http://{upstream}")]).await;
    let client = HttpClient::new(addr);
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .send(Method::PUT, "/doc", &[(support::HOLD, "1")], "finishing")
                .await
        }
    });
    backend.arrived().await;

    let pid = proxy.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    // The proxy stops accepting; the request it is serving still completes. Polled gently: a
    // tight loop would only open connections for the proxy to accept and drain.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let refused = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the proxy stopped accepting"
        );
        match tokio::net::TcpStream::connect(addr).await {
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            Err(err) => break err,
        }
    };
    // Refused once the listener is closed (reset if a connection raced its closing).
    let kind = refused.kind();
    assert!(
        matches!(
            kind,
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
        ),
        "{refused}"
    );
    backend.release();
    assert_eq!(in_flight.await.unwrap().status, StatusCode::OK);
    let status = proxy.wait().await.unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(backend.doc("/doc").unwrap(), "finishing");
}

/// A signal sent as soon as the proxy announces its address drains and exits 0: the handlers
/// are in place before the address is printed (they used to be installed on the first poll of
/// the accept loop, and a SIGTERM that beat it killed the proxy, in-flight requests and all).
#[tokio::test]
async fn a_sigterm_right_after_startup_is_a_clean_shutdown() {
    for _ in 0..5 {
        let (mut proxy, _addr) = start_proxy(&[]).await;
        let pid = proxy.id().unwrap().to_string();
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(killed.success());
        let status = proxy.wait().await.unwrap();
        assert!(status.success(), "killed by the signal: {status:?}");
    }
}

#[tokio::test]
async fn cors_preflights_are_answered_without_touching_the_version_table() {
    let origin = "http://app.example";
    let (_proxy, addr, ops) = start_proxy_with_ops(&["--cors-origin", origin]).await;
    let client = HttpClient::new(addr);
    let preflight = client
        .send(
            Method::OPTIONS,
            "/api/fresh",
            &[
                ("origin", origin),
                ("access-control-request-method", "PUT"),
                ("access-control-request-headers", "if-match, content-type"),
            ],
            "",
        )
        .await;
    assert!(preflight.status.is_success(), "{}", preflight.status);
    assert_eq!(
        preflight.header(http::header::ACCESS_CONTROL_ALLOW_ORIGIN),
        Some(origin)
    );
    let allowed = preflight
        .header(http::header::ACCESS_CONTROL_ALLOW_HEADERS)
        .unwrap()
        .to_ascii_lowercase();
    for name in [
        "if-match",
        "if-none-match",
        "if-modified-since",
        "if-unmodified-since",
    ] {
        assert!(allowed.contains(name), "{name} not allowed: {allowed}");
    }
    // Nothing read, nothing tracked.
    #[cfg(feature = "metrics")]
    {
        let scraped = support::proxy::scrape(ops).await;
        let reads = [("class", "default"), ("outcome", "forwarded_read")];
        let tracked = "tower_conditional_tracked_resources";
        let counted = support::proxy::sample(&scraped, "tower_conditional_requests_total", &reads);
        assert_eq!(counted, 0.0);
        assert_eq!(support::proxy::sample(&scraped, tracked, &[]), 0.0);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = ops;

    let read = client
        .send(Method::GET, "/api/storage", &[("origin", origin)], "")
        .await;
    assert_eq!(
        read.header(http::header::ACCESS_CONTROL_ALLOW_ORIGIN),
        Some(origin)
    );
    let exposed = read
        .header(http::header::ACCESS_CONTROL_EXPOSE_HEADERS)
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        exposed.contains("etag") && exposed.contains("last-modified"),
        "{exposed}"
    );
    let other = client
        .send(
            Method::GET,
            "/api/storage",
            &[("origin", "http://evil.example")],
            "",
        )
        .await;
    assert!(other
        .header(http::header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .is_none());
}

#[tokio::test]
async fn the_demo_page_is_served_with_the_embedded_backend_only() {
    let (_proxy, addr) = start_proxy(&[]).await;
    let page = HttpClient::new(addr)
        .send(Method::GET, "/_demo/", &[], "")
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text().contains("conditional-storage.js"));
    let script = HttpClient::new(addr)
        .send(Method::GET, "/_demo/conditional-storage.js", &[], "")
        .await;
    assert!(script.text().contains("export class ConditionalStorage"));

    let backend = Backend::default();
    let upstream = support::serve(backend.service()).await;
    let (_proxy, addr) = start_proxy(&["--upstream", &format!("http://{upstream}")]).await;
    let page = HttpClient::new(addr)
        .send(Method::GET, "/_demo/", &[], "")
        .await;
    assert_eq!(
        page.status,
        StatusCode::NOT_FOUND,
        "forwarded to the real backend"
    );
}

#[tokio::test]
async fn an_invalid_cors_origin_is_a_cli_error_not_a_panic() {
    for origin in [
        "http://app.example\nx",
        "http://app.example/",
        "app.example",
    ] {
        let out = tokio::process::Command::new(support::proxy::proxy_binary())
            .args(["--listen", "127.0.0.1:0", "--cors-origin", origin])
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{origin:?}: {stderr}");
        assert!(
            stderr.contains("--cors-origin") && stderr.contains("is not an origin"),
            "{origin:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
