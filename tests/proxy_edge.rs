//! The proxy binary at the edge (issue 15): targets and hosts an attacker chooses, backends that
//! name one resource two ways, and clients that try to exhaust connections, memory or the
//! upstream. One test per way data was lost, forged or exhausted. Linux only: they read
//! `/proc` and run the proxy under util-linux's `prlimit`.
#![cfg(target_os = "linux")]

mod support;

use std::{
    collections::HashMap,
    net::SocketAddr,
    process::Stdio,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{
    proxy::{start_proxy, start_proxy_with},
    Backend, HttpClient, Reply, ServedBody, ECHO,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// How long any one wait in these tests may take before it counts as a hang.
const DEADLINE: Duration = Duration::from_secs(30);
/// How often a condition is polled while waiting for it.
const POLL: Duration = Duration::from_millis(10);

/// Sends `request` on a new connection and returns what came back before the proxy closed it.
async fn raw(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    // A reset after the answer is fine: what was read before it is kept.
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer))
        .await
        .expect("the proxy answered and closed the connection");
    String::from_utf8_lossy(&answer).into_owned()
}

fn status(answer: &str) -> u16 {
    answer
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

fn raw_header<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    let head = answer.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn upstream_arg(upstream: SocketAddr) -> String {
    format!("http://{upstream}")
}

// ===== 1. Authority-form targets =====

#[tokio::test]
async fn authority_form_and_origin_form_writers_of_one_resource_lose_nothing() {
    let backend = Backend::default();
    let upstream = support::serve(backend.service()).await;
    let (_proxy, addr) = start_proxy(&["--upstream", &upstream_arg(upstream)]).await;
    let client = HttpClient::new(addr);
    assert_eq!(
        client.send(Method::PUT, "/", &[], "v1").await.status,
        StatusCode::OK
    );

    // Writer A spells the target authority-form, writer B origin-form; both read, then write.
    let a_read = raw(
        addr,
        "GET 127.0.0.1:80 HTTP/1.1\r\nhost: proxy\r\nconnection: close\r\n\r\n",
    )
    .await;
    let b_read = client.send(Method::GET, "/", &[], "").await;
    let a_write = match raw_header(&a_read, "etag") {
        Some(tag) => status(
            &raw(
                addr,
                &format!(
                    "PUT 127.0.0.1:80 HTTP/1.1\r\nhost: proxy\r\nif-match: {tag}\r\n\
                     content-length: 1\r\nconnection: close\r\n\r\nA"
                ),
            )
            .await,
        ),
        None => status(&a_read),
    };
    let b_write = client
        .send(Method::PUT, "/", &[("if-match", &b_read.tag())], "B")
        .await;
    assert!(
        !((200..300).contains(&a_write) && b_write.status.is_success()),
        "both writers based on one version succeeded: A's update was lost"
    );
    assert_eq!(a_write, 400, "an authority-form target names no resource");
    assert_eq!(backend.doc("/").unwrap(), "B");

    // CONNECT is not tunnelled, and `*` is a target for OPTIONS only.
    let connect = raw(
        addr,
        "CONNECT 127.0.0.1:80 HTTP/1.1\r\nhost: 127.0.0.1:80\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&connect), 405, "{connect}");
    let star = raw(
        addr,
        "GET * HTTP/1.1\r\nhost: proxy\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&star), 400, "{star}");
}

// ===== 2. Backends that name one resource two ways =====

/// A storage backend whose resource names are `name(uri)`, recording every target it gets.
#[derive(Clone)]
struct NamingBackend {
    name: fn(&Uri) -> String,
    docs: Arc<Mutex<HashMap<String, Bytes>>>,
    targets: Arc<Mutex<Vec<String>>>,
}

impl NamingBackend {
    async fn start(name: fn(&Uri) -> String) -> (Self, SocketAddr) {
        let backend = NamingBackend {
            name,
            docs: Arc::default(),
            targets: Arc::default(),
        };
        let service = {
            let backend = backend.clone();
            tower::service_fn(move |req: Request<ServedBody>| {
                let backend = backend.clone();
                async move { Ok::<_, std::convert::Infallible>(backend.handle(req).await) }
            })
        };
        let addr = support::serve(service).await;
        (backend, addr)
    }

    async fn handle(&self, req: Request<ServedBody>) -> Response<Full<Bytes>> {
        let target = req.uri().to_string();
        self.targets.lock().unwrap().push(target);
        let name = (self.name)(req.uri());
        let method = req.method().clone();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let mut docs = self.docs.lock().unwrap();
        match method {
            Method::GET | Method::HEAD => match docs.get(&name) {
                Some(doc) => Response::new(Full::new(doc.clone())),
                None => {
                    let mut res = Response::new(Full::new(Bytes::new()));
                    *res.status_mut() = StatusCode::NOT_FOUND;
                    res
                }
            },
            _ => {
                docs.insert(name, body);
                Response::new(Full::new(Bytes::from_static(b"saved")))
            }
        }
    }

    fn doc(&self, name: &str) -> Option<Bytes> {
        self.docs.lock().unwrap().get(name).cloned()
    }
}

/// Two writers, each reading then writing its own spelling with `If-Match`: their answers.
async fn two_spellings(client: &HttpClient, first: &str, second: &str) -> (Reply, Reply) {
    for spelling in [first, second] {
        let created = client.send(Method::PUT, spelling, &[], "v0").await;
        assert_eq!(created.status, StatusCode::OK, "{spelling}");
    }
    let a = client.send(Method::GET, first, &[], "").await;
    let b = client.send(Method::GET, second, &[], "").await;
    let a = client
        .send(Method::PUT, first, &[("if-match", &a.tag())], "A")
        .await;
    let b = client
        .send(Method::PUT, second, &[("if-match", &b.tag())], "B")
        .await;
    (a, b)
}

#[tokio::test]
async fn a_backend_that_folds_names_loses_nothing_with_the_matching_key_fold() {
    // Like many a legacy backend: `%2F` decoded, and case folded.
    let (backend, upstream) = NamingBackend::start(|uri| {
        uri.path()
            .replace("%2F", "/")
            .replace("%2f", "/")
            .to_lowercase()
    })
    .await;
    let (_proxy, addr) = start_proxy(&[
        "--upstream",
        &upstream_arg(upstream),
        "--key-fold",
        "decoded-slash,case",
    ])
    .await;
    let client = HttpClient::new(addr);
    let (a, b) = two_spellings(&client, "/docs/a%2Fb", "/Docs/A/B").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        b.status,
        StatusCode::PRECONDITION_FAILED,
        "one resource to the backend, one version to the proxy"
    );
    assert_eq!(backend.doc("/docs/a/b").unwrap(), "A");

    // The README's rule, shown: folding less than the backend does loses an update ...
    let (backend, upstream) =
        NamingBackend::start(|uri| uri.path().replace("%2F", "/").to_lowercase()).await;
    let (_proxy, addr) = start_proxy(&["--upstream", &upstream_arg(upstream)]).await;
    let (a, b) = two_spellings(&HttpClient::new(addr), "/docs/a%2Fb", "/Docs/A/B").await;
    assert!(a.status.is_success() && b.status.is_success());
    assert_eq!(
        backend.doc("/docs/a/b").unwrap(),
        "B",
        "A's update was lost"
    );

    // ... and folding more than it does only costs a spurious 412: nothing is overwritten.
    let (backend, upstream) = NamingBackend::start(|uri| uri.path().to_owned()).await;
    let (_proxy, addr) =
        start_proxy(&["--upstream", &upstream_arg(upstream), "--key-fold", "case"]).await;
    let (a, b) = two_spellings(&HttpClient::new(addr), "/docs/x", "/Docs/X").await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(b.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(backend.doc("/docs/x").unwrap(), "A");
    assert_eq!(
        backend.doc("/Docs/X").unwrap(),
        "v0",
        "B was refused, not applied"
    );

    // A backend naming resources by the query: with --key-query, two documents, two versions.
    let (backend, upstream) = NamingBackend::start(|uri| uri.to_string().replace("%39", "9")).await;
    let (_proxy, addr) = start_proxy(&["--upstream", &upstream_arg(upstream), "--key-query"]).await;
    let (a, b) = two_spellings(&HttpClient::new(addr), "/api/doc?id=7", "/api/doc?id=8").await;
    assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK));
    assert_eq!(backend.doc("/api/doc?id=7").unwrap(), "A");
    assert_eq!(backend.doc("/api/doc?id=8").unwrap(), "B");
    // And one document under two spellings of its query still has one version.
    let (a, b) = two_spellings(&HttpClient::new(addr), "/api/doc?id=9", "/api/doc?id=%39").await;
    assert_eq!(
        (a.status, b.status),
        (StatusCode::OK, StatusCode::PRECONDITION_FAILED)
    );
}

// ===== 3. Forwarded injection through Host =====

/// The elements of a `Forwarded` value: commas outside quoted-strings separate them.
fn forwarded_elements(value: &str) -> Vec<String> {
    let (mut elements, mut current) = (Vec::new(), String::new());
    let (mut quoted, mut escaped) = (false, false);
    for c in value.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                elements.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    elements.push(current);
    elements
}

#[tokio::test]
async fn a_host_header_never_yields_a_second_forwarded_element() {
    let backend = Backend::default();
    let upstream = support::serve(backend.service()).await;
    let (_proxy, addr) = start_proxy(&["--upstream", &upstream_arg(upstream)]).await;
    for host in [
        r#"x", for=6.6.6.6;proto=https;host="trusted.example"#,
        r#"x\", for=6.6.6.6"#,
        "x;for=6.6.6.6",
        "x,for=6.6.6.6",
        "storage.example:8080",
        "[::1]:8080",
    ] {
        let answer = raw(
            addr,
            &format!(
                "GET /echo HTTP/1.1\r\nhost: {host}\r\n{ECHO}: 1\r\nconnection: close\r\n\r\n"
            ),
        )
        .await;
        if status(&answer) == 400 {
            assert!(host.contains("6.6.6.6"), "a valid Host refused: {host}");
            continue;
        }
        assert_eq!(status(&answer), 200, "{answer}");
        let forwarded = answer
            .lines()
            .find_map(|l| l.strip_prefix("forwarded: "))
            .unwrap_or_else(|| panic!("no Forwarded upstream: {answer}"));
        let elements = forwarded_elements(forwarded);
        assert_eq!(
            elements.len(),
            1,
            "Host {host} forged an element: {forwarded}"
        );
        assert!(elements[0].starts_with("for=127.0.0.1;"), "{forwarded}");
    }
}

// ===== 4. Dot segments and the upstream prefix =====

#[tokio::test]
async fn dot_segments_never_leave_the_upstream_prefix() {
    let (backend, upstream) = NamingBackend::start(|uri| uri.path().to_owned()).await;
    let (_proxy, addr) = start_proxy(&["--upstream", &format!("http://{upstream}/api")]).await;
    for target in [
        "/../admin/secret",
        "/%2e%2e/admin/secret",
        "/%2E%2E/admin/secret",
        "/..%2fadmin/secret",
        "/docs/..%2F..%2Fadmin",
        "/docs/%2e%2e%5c%2e%2e%5cadmin",
        "/docs/../../admin/secret",
        "/./../admin",
    ] {
        let answer = raw(
            addr,
            &format!("GET {target} HTTP/1.1\r\nhost: proxy\r\nconnection: close\r\n\r\n"),
        )
        .await;
        assert!(matches!(status(&answer), 400 | 404), "{target}: {answer}");
    }
    let targets = backend.targets.lock().unwrap().clone();
    for seen in &targets {
        let decoded = seen
            .replace("%2F", "/")
            .replace("%2f", "/")
            .to_ascii_lowercase();
        assert!(
            seen.starts_with("/api/")
                && !decoded
                    .split(['/', '\\'])
                    .any(|s| s == ".." || s == "%2e%2e"),
            "left the prefix: {seen} (all: {targets:?})"
        );
    }
}

// ===== 5. File descriptors =====

/// CPU time (user + system) of a process, from `/proc/<pid>/stat`, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    // Fields 14 and 15 of the line; the name (field 2) and state (3) come before `after_name`.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// A GET through the proxy on a new connection, or `None` if it was refused or cut.
async fn try_get(addr: SocketAddr) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = "GET /doc HTTP/1.1\r\nhost: proxy\r\nconnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .ok()?
        .ok()?;
    String::from_utf8_lossy(&answer).get(9..12)?.parse().ok()
}

#[tokio::test]
async fn with_a_low_fd_limit_the_proxy_neither_spins_nor_floods_its_log_and_recovers() {
    let backend = Backend::default();
    let upstream = support::serve(backend.service()).await;
    // First with the default bounds, sized from the fd limit; then with a connection bound
    // above it, so that `accept` itself fails with EMFILE.
    for bound in [None, Some("1000")] {
        let mut args = vec!["--upstream".to_owned(), upstream_arg(upstream)];
        if let Some(bound) = bound {
            args.extend(["--max-connections".to_owned(), bound.to_owned()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (mut proxy, addr) = start_proxy_with(
            &["env", "RUST_LOG=info", "prlimit", "--nofile=128:128", "--"],
            &args,
            Stdio::piped(),
        )
        .await;
        let logged = Arc::new(AtomicUsize::new(0));
        let mut stderr = proxy.stderr.take().unwrap();
        tokio::spawn({
            let logged = logged.clone();
            async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = stderr.read(&mut buf).await {
                    logged.fetch_add(n, Ordering::Relaxed);
                }
            }
        });
        let pid = proxy.id().unwrap();

        // More connections than the proxy has file descriptors, held open (fewer than it has
        // plus the listen backlog, so that every connect completes).
        let mut held = Vec::new();
        for _ in 0..200 {
            held.push(TcpStream::connect(addr).await.unwrap());
        }
        // Once the proxy has said it is out of room, watch it for two seconds.
        let deadline = Instant::now() + DEADLINE;
        while logged.load(Ordering::Relaxed) == 0 {
            assert!(
                Instant::now() < deadline,
                "the proxy never reported the limit"
            );
            tokio::time::sleep(POLL).await;
        }
        let (cpu_before, log_before) = (cpu_ticks(pid), logged.load(Ordering::Relaxed));
        let window = Duration::from_secs(2);
        tokio::time::sleep(window).await; // a measuring window, not a synchronization
        let cpu = cpu_ticks(pid) - cpu_before;
        let log = logged.load(Ordering::Relaxed) - log_before;
        // Spinning takes ~200 ticks of the window; an idle proxy takes ~0. Throttled, the log
        // gets a line a second (~200 bytes), a flood gets megabytes.
        assert!(
            cpu < 50,
            "{bound:?}: {cpu} ticks of CPU in 2 s at the fd limit"
        );
        assert!(log < 16 * 1024, "{bound:?}: {log} bytes of log in 2 s");

        drop(held);
        let deadline = Instant::now() + DEADLINE;
        loop {
            if try_get(addr).await == Some(404) {
                break;
            }
            assert!(Instant::now() < deadline, "{bound:?}: not serving again");
            tokio::time::sleep(POLL).await;
        }
    }
}

// ===== 6. Idle and slow connections =====

#[tokio::test]
async fn idle_half_sent_and_finished_connections_are_closed_after_the_timeouts() {
    let backend = Backend::default();
    let upstream = support::serve(backend.service()).await;
    let (_proxy, addr) = start_proxy(&[
        "--upstream",
        &upstream_arg(upstream),
        "--header-read-timeout",
        "1",
        "--idle-timeout",
        "1",
        "--h2-keep-alive",
        "1",
    ])
    .await;
    // Each timeout is 1 s: a close well before it is a bug too. Wide tolerance for timers
    // and a loaded machine.
    let too_soon = Duration::from_millis(700);
    let closed = |sent: &'static str, answers: bool| async move {
        let opened = Instant::now();
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(sent.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer))
            .await
            .unwrap_or_else(|_| panic!("{sent:?}: the connection stayed open"));
        let lived = opened.elapsed();
        let answer = String::from_utf8_lossy(&answer);
        assert_eq!(
            answer.starts_with("HTTP/1.1 404"),
            answers,
            "{sent:?}: {answer}"
        );
        assert!(lived >= too_soon, "{sent:?}: closed after {lived:?}");
    };
    let http2_idle = async {
        let opened = Instant::now();
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        let connection = tokio::spawn(connection);
        let req = Request::get(format!("http://{addr}/doc"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let res = sender.send_request(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        drop(res);
        let answered = Instant::now();
        let _ = tokio::time::timeout(DEADLINE, connection)
            .await
            .expect("the idle HTTP/2 connection stayed open");
        let (lived, idle) = (opened.elapsed(), answered.elapsed());
        assert!(
            idle >= too_soon,
            "HTTP/2: closed {idle:?} after its last answer ({lived:?} in all)"
        );
    };
    tokio::join!(
        closed("", false),
        closed("GET /doc HTTP/1.1\r\nhost: proxy\r\n", false),
        closed("GET /doc HTTP/1.1\r\nhost: proxy\r\n\r\n", true),
        http2_idle,
    );
}

// ===== 7. Buffered write bodies =====

/// The proxy's resident memory, from `/proc/<pid>/status`, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// Bytes received on `port`'s sockets that no process has read yet (`/proc/net/tcp`).
fn unread_on(port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(fields[1].rsplit(':').next()?, 16).ok()?;
            let rx = u64::from_str_radix(fields[4].rsplit(':').next()?, 16).ok()?;
            (local_port == port).then_some(rx)
        })
        .sum()
}

/// Bytes sent to `port` that the kernel has not delivered yet: the send queues of the sockets
/// whose remote port is `port` (`/proc/net/tcp`).
fn unsent_to(port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let remote_port = u16::from_str_radix(fields[2].rsplit(':').next()?, 16).ok()?;
            let tx = u64::from_str_radix(fields[4].split(':').next()?, 16).ok()?;
            (remote_port == port).then_some(tx)
        })
        .sum()
}

enum Upload {
    /// All but the last byte sent, and read by the proxy; the connection is held.
    Stalled(TcpStream),
    /// Answered before its body was read.
    Refused(String),
}

async fn stalled_upload(addr: SocketAddr, i: usize, length: usize) -> Upload {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let head = format!("PUT /big/{i} HTTP/1.1\r\nhost: proxy\r\ncontent-length: {length}\r\n\r\n");
    write.write_all(head.as_bytes()).await.unwrap();
    let body = vec![b'x'; length - 1];
    let mut answer = vec![0u8; 4096];
    tokio::select! {
        biased;
        n = read.read(&mut answer) => Upload::Refused(String::from_utf8_lossy(&answer[..n.unwrap_or(0)]).into_owned()),
        sent = write.write_all(&body) => match sent {
            Ok(()) => Upload::Stalled(read.reunite(write).unwrap()),
            Err(_) => {
                let n = tokio::time::timeout(DEADLINE, read.read(&mut answer)).await.unwrap().unwrap_or(0);
                Upload::Refused(String::from_utf8_lossy(&answer[..n]).into_owned())
            }
        },
    }
}

#[tokio::test]
async fn stalled_uploads_stay_within_the_buffered_bytes_budget() {
    const MIB: usize = 1024 * 1024;
    let budget = 32 * MIB;
    let backend = Backend::default();
    let upstream = support::serve(backend.service()).await;
    let (proxy, addr) = start_proxy(&[
        "--upstream",
        &upstream_arg(upstream),
        "--max-buffered-bytes",
        &budget.to_string(),
        "--body-timeout",
        "120",
        "--request-timeout",
        "180",
    ])
    .await;
    let pid = proxy.id().unwrap();
    let client = HttpClient::new(addr);
    assert_eq!(
        client.send(Method::PUT, "/warm", &[], "up").await.status,
        StatusCode::OK
    );
    let baseline = rss(pid);

    let uploads: Vec<_> = (0..40)
        .map(|i| tokio::spawn(stalled_upload(addr, i, 8 * MIB)))
        .collect();
    let mut held = Vec::new();
    let mut refused = 0;
    for upload in uploads {
        match tokio::time::timeout(DEADLINE, upload)
            .await
            .expect("an upload settled")
            .unwrap()
        {
            Upload::Stalled(stream) => held.push(stream),
            Upload::Refused(answer) => {
                assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
                assert!(
                    answer.to_ascii_lowercase().contains("retry-after: 1"),
                    "{answer}"
                );
                refused += 1;
            }
        }
    }
    // Every byte sent has been delivered and read by the proxy: what it buffers is in its
    // memory now.
    let deadline = Instant::now() + DEADLINE;
    while unsent_to(addr.port()) > 0 || unread_on(addr.port()) > 0 {
        assert!(Instant::now() < deadline, "the proxy stopped reading");
        tokio::time::sleep(POLL).await;
    }
    let grown = rss(pid).saturating_sub(baseline);
    // The margin: hyper's read buffers (up to ~400 KiB per connection, 40 connections) and
    // allocator slack; without the budget the growth is the 320 MiB sent.
    let margin = 96 * MIB as u64;
    assert!(
        grown < budget as u64 + margin,
        "RSS grew {} MiB with a {} MiB budget ({} uploads held, {refused} refused)",
        grown / MIB as u64,
        budget / MIB,
        held.len()
    );
    assert!(
        held.len() <= budget / (8 * MIB),
        "{} uploads admitted",
        held.len()
    );
    assert_eq!(held.len() + refused, 40);
}

#[tokio::test]
async fn a_stalled_upload_gets_408_after_the_body_timeout() {
    let backend = Backend::default();
    let upstream = support::serve(backend.service()).await;
    let (_proxy, addr, ops) = support::proxy::start_proxy_with_ops(&[
        "--upstream",
        &upstream_arg(upstream),
        "--body-timeout",
        "1",
        "--request-timeout",
        "60",
    ])
    .await;
    let answer = raw(
        addr,
        "PUT /doc HTTP/1.1\r\nhost: proxy\r\ncontent-length: 10\r\n\r\nhalf.",
    )
    .await;
    assert_eq!(status(&answer), 408, "{answer}");
    assert_eq!(backend.hits(), 0, "nothing forwarded");
    let scraped = support::proxy::scrape(ops).await;
    let slow = "tower_conditional_proxy_slow_uploads_total";
    assert_eq!(support::proxy::sample(&scraped, slow, &[]), 1.0);
}

// ===== 8. HTTP/2 fan-out to the upstream =====

/// An upstream that holds every request until released, counting its open connections.
#[derive(Clone)]
struct CountingUpstream {
    open: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    gate: Arc<tokio::sync::Semaphore>,
}

impl CountingUpstream {
    fn new() -> Self {
        Self {
            open: Arc::default(),
            most: Arc::default(),
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
        }
    }

    async fn start(&self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let this = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let open = this.open.fetch_add(1, Ordering::SeqCst) + 1;
                this.most.fetch_max(open, Ordering::SeqCst);
                let this = this.clone();
                tokio::spawn(async move {
                    let gate = this.gate.clone();
                    let service = hyper::service::service_fn(move |_req| {
                        let gate = gate.clone();
                        async move {
                            let _pass = gate.acquire().await.unwrap();
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                Bytes::from_static(b"ok"),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    this.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        addr
    }
}

#[tokio::test]
async fn upstream_connections_stay_under_the_bound_with_ten_times_two_hundred_h2_streams() {
    let (bound, idle) = (20, 4);
    let upstream = CountingUpstream::new();
    let addr = upstream.start().await;
    let (_proxy, proxy_addr) = start_proxy(&[
        "--upstream",
        &upstream_arg(addr),
        "--upstream-max-connections",
        &bound.to_string(),
        "--upstream-max-idle",
        &idle.to_string(),
        "--upstream-queue-timeout",
        "0.5",
    ])
    .await;
    let done = Arc::new(AtomicUsize::new(0));
    let mut requests = Vec::new();
    for c in 0..10 {
        let client = HttpClient::http2(proxy_addr); // one h2 connection each
        for i in 0..200 {
            let (client, done) = (client.clone(), done.clone());
            requests.push(tokio::spawn(async move {
                let reply = client
                    .send(Method::GET, &format!("/doc/{c}/{i}"), &[], "")
                    .await;
                done.fetch_add(1, Ordering::SeqCst);
                reply
            }));
        }
    }
    // All but the requests the bounded connections hold are answered (503 after the queue
    // timeout), unless the proxy opens more connections than the bound.
    let deadline = Instant::now() + DEADLINE;
    while done.load(Ordering::SeqCst) < 2000 - bound
        && upstream.most.load(Ordering::SeqCst) <= bound
    {
        assert!(
            Instant::now() < deadline,
            "requests neither answered nor forwarded"
        );
        tokio::time::sleep(POLL).await;
    }
    upstream
        .gate
        .add_permits(tokio::sync::Semaphore::MAX_PERMITS / 2);
    let mut ok = 0;
    for request in requests {
        let reply = tokio::time::timeout(DEADLINE, request)
            .await
            .unwrap()
            .unwrap();
        match reply.status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(reply.header(header::RETRY_AFTER), Some("1"));
            }
            other => panic!("unexpected {other}"),
        }
    }
    let most = upstream.most.load(Ordering::SeqCst);
    assert!(most <= bound, "{most} upstream connections open at once");
    assert!(ok >= bound, "only {ok} requests got through");
    // Once done, the idle pool keeps at most `idle` of them.
    let deadline = Instant::now() + DEADLINE;
    while upstream.open.load(Ordering::SeqCst) > idle {
        assert!(
            Instant::now() < deadline,
            "idle upstream connections beyond the bound"
        );
        tokio::time::sleep(POLL).await;
    }
}

// ===== 9. Forwarded injection without Host =====

/// The last value of `name` in an echoed request (`name: value` lines).
fn echoed<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    let prefix = format!("{name}: ");
    answer.lines().rev().find_map(|l| l.strip_prefix(&prefix))
}

#[tokio::test]
async fn the_proxy_always_adds_the_nearest_forwarded_element() {
    let backend = Backend::default();
    let upstream = support::serve(backend.service()).await;
    let (_proxy, addr) = start_proxy(&["--upstream", &upstream_arg(upstream)]).await;
    let forged = "forwarded: for=6.6.6.6;proto=https\r\nx-forwarded-for: 6.6.6.6\r\n\
                  x-forwarded-host: trusted.example\r\nx-forwarded-proto: https\r\n\
                  x-forwarded-port: 443\r\nx-real-ip: 6.6.6.6\r\n";

    // RFC 9112 §3.2: an HTTP/1.1 request without Host is refused.
    let answer = raw(
        addr,
        &format!("GET /echo HTTP/1.1\r\n{ECHO}: 1\r\n{forged}connection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status(&answer), 400, "{answer}");

    for (request, host) in [
        // HTTP/1.0 may omit Host: the element has no host=.
        (
            format!("GET /echo HTTP/1.0\r\n{ECHO}: 1\r\n{forged}\r\n"),
            None,
        ),
        // `Connection` may not strip Host or the forwarding fields.
        (
            format!(
                "GET /echo HTTP/1.1\r\nhost: storage.example\r\n{ECHO}: 1\r\n{forged}\
                 connection: host, forwarded, x-forwarded-for, close\r\n\r\n"
            ),
            Some("storage.example"),
        ),
    ] {
        let answer = raw(addr, &request).await;
        assert_eq!(status(&answer), 200, "{request:?}: {answer}");
        let forwarded = echoed(&answer, "forwarded").expect("a Forwarded upstream");
        let nearest = forwarded_elements(forwarded).pop().unwrap();
        let expected = match host {
            Some(host) => format!("for=127.0.0.1;proto=http;host=\"{host}\""),
            None => "for=127.0.0.1;proto=http".to_owned(),
        };
        assert_eq!(nearest.trim(), expected, "{request:?}: {forwarded}");
        let xff = echoed(&answer, "x-forwarded-for").expect("an X-Forwarded-For upstream");
        assert_eq!(xff.rsplit(',').next().unwrap().trim(), "127.0.0.1", "{xff}");
        if let Some(host) = host {
            assert_eq!(echoed(&answer, "host"), Some(host), "{answer}");
        }
        for stripped in [
            "x-forwarded-host",
            "x-forwarded-proto",
            "x-forwarded-port",
            "x-real-ip",
        ] {
            assert_eq!(echoed(&answer, stripped), None, "{stripped}: {answer}");
        }
    }
}

#[tokio::test]
async fn a_forwarded_that_is_not_a_list_is_replaced_not_appended_to() {
    let backend = Backend::default();
    let upstream = support::serve(backend.service()).await;
    let (_proxy, addr) = start_proxy(&["--upstream", &upstream_arg(upstream)]).await;
    let ours = "for=127.0.0.1;proto=http;host=\"proxy\"";
    for (sent, expected) in [
        // An open quote would make our element part of the client's value.
        (r#"for="6.6.6.6"#.to_owned(), ours.to_owned()),
        (r#"for=6.6.6.6;host="a\""#.to_owned(), ours.to_owned()),
        ("for=6.6.6.6;by".to_owned(), ours.to_owned()),
        ("for=6.6.6.6 x".to_owned(), ours.to_owned()),
        // A valid list is kept, with ours after it.
        (
            r#"for=192.0.2.43;by="[2001:db8::1]:80", for=unknown"#.to_owned(),
            format!(r#"for=192.0.2.43;by="[2001:db8::1]:80", for=unknown, {ours}"#),
        ),
    ] {
        let answer = raw(
            addr,
            &format!(
                "GET /echo HTTP/1.1\r\nhost: proxy\r\n{ECHO}: 1\r\nforwarded: {sent}\r\n\
                 connection: close\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(status(&answer), 200, "{sent}: {answer}");
        assert_eq!(
            echoed(&answer, "forwarded"),
            Some(expected.as_str()),
            "{sent}"
        );
    }
}

// ===== 10. Targets mixing percent-encodings and multi-byte characters =====

#[tokio::test]
async fn targets_mixing_percent_encodings_and_utf8_get_a_clean_answer() {
    let backend = Backend::default();
    let upstream = support::serve(backend.service()).await;
    // Every decoding path: the target checks, the case fold and the query key.
    let (_proxy, addr) = start_proxy(&[
        "--upstream",
        &upstream_arg(upstream),
        "--key-fold",
        "case,slashes,trailing-slash,decoded-slash",
        "--key-query",
    ])
    .await;
    for (target, expected) in [
        ("/%41é", 404),
        ("/%é", 400),
        ("/a?%41é", 404),
        ("/%41é/%2e%2e%2Fé", 400),
        ("/é%41%C3%A9/?q=%41é%", 404),
        ("/%4é", 400),
    ] {
        let answer = raw(
            addr,
            &format!("GET {target} HTTP/1.1\r\nhost: proxy\r\nconnection: close\r\n\r\n"),
        )
        .await;
        assert!(!answer.is_empty(), "{target}: the connection was cut");
        assert_eq!(status(&answer), expected, "{target}: {answer}");
    }
    // Written under one spelling, read under the other: one resource.
    let put = raw(
        addr,
        "PUT /%C3%A9t%C3%A9 HTTP/1.1\r\nhost: proxy\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi",
    )
    .await;
    assert_eq!(status(&put), 200, "{put}");
    let get = raw(
        addr,
        "GET /été HTTP/1.1\r\nhost: proxy\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&get), 200, "{get}");
    assert!(get.ends_with("hi"), "{get}");
}

// ===== 11. Budget for bodies of unknown or no length =====

#[tokio::test]
async fn bodiless_and_chunked_writes_take_only_the_budget_they_use() {
    const KIB: usize = 1024;
    let backend = Backend::default();
    let upstream = support::serve(backend.service()).await;
    let (_proxy, addr) = start_proxy(&[
        "--upstream",
        &upstream_arg(upstream),
        "--max-buffered-bytes",
        &(64 * KIB).to_string(),
    ])
    .await;
    let held = |request: String| tokio::spawn(async move { raw(addr, &request).await });
    let chunked = |path: &str, size: usize| {
        format!(
            "PUT {path} HTTP/1.1\r\nhost: proxy\r\ntransfer-encoding: chunked\r\n\
             connection: close\r\n\r\n{size:x}\r\n{}\r\n0\r\n\r\n",
            "x".repeat(size)
        )
    };

    // A bodiless DELETE held at the backend reserves nothing (it used to reserve all of
    // --max-body, here the whole budget).
    let delete = held(format!(
        "DELETE /held HTTP/1.1\r\nhost: proxy\r\n{}: 1\r\nconnection: close\r\n\r\n",
        support::HOLD
    ));
    backend.arrived().await;
    for request in [
        "DELETE /other HTTP/1.1\r\nhost: proxy\r\nconnection: close\r\n\r\n".to_owned(),
        chunked("/small", 8 * KIB),
    ] {
        let answer = raw(addr, &request).await;
        assert_ne!(status(&answer), 503, "{answer}");
    }

    // A chunked body gets room as it arrives: more than is left is refused.
    let big = held(format!(
        "PUT /big HTTP/1.1\r\nhost: proxy\r\ncontent-length: {}\r\n{}: 1\r\n\
         connection: close\r\n\r\n{}",
        48 * KIB,
        support::HOLD,
        "x".repeat(48 * KIB)
    ));
    backend.arrived().await;
    let answer = raw(addr, &chunked("/too-big", 32 * KIB)).await;
    assert_eq!(status(&answer), 503, "{answer}");
    assert_eq!(raw_header(&answer, "retry-after"), Some("1"), "{answer}");
    let answer = raw(addr, &chunked("/fits", 8 * KIB)).await;
    assert_eq!(status(&answer), 200, "{answer}");

    backend.release();
    backend.release();
    for request in [delete, big] {
        let answer = tokio::time::timeout(DEADLINE, request)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(status(&answer), 200 | 204 | 404), "{answer}");
    }
}
