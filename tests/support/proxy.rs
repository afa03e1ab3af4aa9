//! The proxy example's binary, started as a user starts it, and its operations listener.

use std::{net::SocketAddr, path::PathBuf, process::Stdio};

use http::{Method, StatusCode};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// The example's binary, (re)built once per run so a stale one is never tested.
pub fn proxy_binary() -> PathBuf {
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
            // The library's features as the tests were built with them.
            let features: Vec<&str> = [
                ("redis", cfg!(feature = "redis")),
                ("metrics", cfg!(feature = "metrics")),
            ]
            .into_iter()
            .filter_map(|(feature, on)| on.then_some(feature))
            .collect();
            if !features.is_empty() {
                build.args(["--features", &features.join(",")]);
            }
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
pub async fn start_proxy(args: &[&str]) -> (Child, SocketAddr) {
    start_proxy_with(&[], args, Stdio::inherit()).await
}

/// Like [`start_proxy`], run through `wrapper` (e.g. `prlimit --nofile=256:256`) and with its
/// stderr sent to `stderr`.
pub async fn start_proxy_with(
    wrapper: &[&str],
    args: &[&str],
    stderr: Stdio,
) -> (Child, SocketAddr) {
    let started = launch(wrapper, &[], args, stderr).await;
    (started.child, started.addr)
}

/// Starts the proxy with its operations listener on a free port too: the process, the proxy's
/// address and the operations listener's.
pub async fn start_proxy_with_ops(args: &[&str]) -> (Child, SocketAddr, SocketAddr) {
    let mut all = vec!["--metrics-listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let started = launch(&[], &[], &all, Stdio::inherit()).await;
    let ops = started.ops.expect("the proxy printed its metrics address");
    (started.child, started.addr, ops)
}

/// A started proxy.
pub struct Started {
    pub child: Child,
    pub addr: SocketAddr,
    /// The operations listener's address, if it has one.
    pub ops: Option<SocketAddr>,
}

/// Starts the proxy through `wrapper`, with `env` added to its environment, `args`, and its
/// stderr sent to `stderr`.
pub async fn launch(
    wrapper: &[&str],
    env: &[(&str, &str)],
    args: &[&str],
    stderr: Stdio,
) -> Started {
    let binary = proxy_binary();
    let mut command = match wrapper.split_first() {
        Some((program, wrapper_args)) => {
            let mut command = Command::new(program);
            command.args(wrapper_args).arg(binary);
            command
        }
        None => Command::new(binary),
    };
    let mut child = command
        .envs(env.iter().copied())
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut ops = None;
    while let Some(line) = lines.next_line().await.unwrap() {
        if let Some(addr) = line.strip_prefix("metrics on http://") {
            ops = Some(addr.parse().unwrap());
        }
        if let Some(addr) = line.strip_prefix("listening on http://") {
            let addr = addr.parse().unwrap();
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Started { child, addr, ops };
        }
    }
    panic!("the proxy exited without printing its address");
}

/// The operations listener's `/metrics`, parsed.
pub async fn scrape(ops: SocketAddr) -> prometheus_parse::Scrape {
    let reply = super::HttpClient::new(ops)
        .send(Method::GET, "/metrics", &[], "")
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let lines = reply.text().lines().map(|line| Ok(line.to_owned()));
    prometheus_parse::Scrape::parse(lines).expect("the Prometheus text format")
}

/// The value of the one sample `name` whose labels include `labels`.
pub fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut matching = scrape.samples.iter().filter(|sample| {
        sample.metric == name
            && labels
                .iter()
                .all(|(key, value)| sample.labels.get(key) == Some(*value))
    });
    let found = matching
        .next()
        .unwrap_or_else(|| panic!("no {name} {labels:?} in {:?}", scrape.samples));
    assert!(matching.next().is_none(), "several {name} {labels:?}");
    match found.value {
        prometheus_parse::Value::Counter(value)
        | prometheus_parse::Value::Gauge(value)
        | prometheus_parse::Value::Untyped(value) => value,
        ref other => panic!("{name} {labels:?} is not a number: {other:?}"),
    }
}
