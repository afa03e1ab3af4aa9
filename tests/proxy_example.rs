//! The proxy example as a user runs it: its binary, real sockets, its demo backend or ours.

mod support;

use std::{net::SocketAddr, path::PathBuf, process::Stdio};

use http::{Method, StatusCode};
use support::{Backend, HttpClient};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// The example's binary, (re)built once per run so a stale one is never tested.
fn proxy_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let mut dir = std::env::current_exe().unwrap();
            dir.pop(); // the test binary
            if dir.ends_with("deps") {
                dir.pop();
            }
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut build = std::process::Command::new(cargo);
            build.args(["build", "--quiet", "--example", "proxy"]);
            if dir.ends_with("release") {
                build.arg("--release");
            }
            assert!(
                build.status().unwrap().success(),
                "building the proxy example"
            );
            dir.join("examples")
                .join(format!("proxy{}", std::env::consts::EXE_SUFFIX))
        })
        .clone()
}

/// Starts the proxy on a free port and returns it with the address it printed.
async fn start_proxy(args: &[&str]) -> (Child, SocketAddr) {
    let mut child = Command::new(proxy_binary())
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while let Some(line) = lines.next_line().await.unwrap() {
        if let Some(addr) = line.strip_prefix("listening on http://") {
            let addr = addr.parse().unwrap();
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return (child, addr);
        }
    }
    panic!("the proxy exited without printing its address");
}

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
