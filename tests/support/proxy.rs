//! The proxy example's binary, started as a user starts it.

use std::{net::SocketAddr, path::PathBuf, process::Stdio};

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
            if cfg!(feature = "redis") {
                build.args(["--features", "redis"]);
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
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(stderr)
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
