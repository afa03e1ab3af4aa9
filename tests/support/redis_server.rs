//! Real redis-server (and redis-sentinel) processes on free loopback ports, started and stopped
//! by the test, and a TCP relay the test can pause, cut and point elsewhere (a replication link
//! that stalls, an address that leads to another server after a failover).

use std::{
    net::SocketAddr,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::{TcpListener, TcpStream},
    process::{Child, Command},
    sync::watch,
};

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct RedisServer {
    pub port: u16,
    args: Vec<String>,
    /// Declared before `dir`: killed before its directory is removed.
    child: Option<Child>,
    /// Its working directory (for `nodes.conf`), removed when dropped.
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts an empty, non-persistent redis-server on a port nothing else uses.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Like [`start`](Self::start), with more arguments (e.g. `--replicaof`, `--cluster-enabled`).
    pub async fn start_with(args: &[&str]) -> Self {
        let mut server = Self {
            port: free_port(),
            args: args.iter().map(|a| a.to_string()).collect(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        server.restart().await;
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server: its data is gone.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    /// Starts a new, empty server on the same port.
    pub async fn restart(&mut self) {
        self.stop().await;
        let mut child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(&self.args)
            .current_dir(self.dir.path())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server on PATH (apt-get install redis-server; .ci/run installs it)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("Ready to accept connections") {
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                self.child = Some(child);
                return;
            }
        }
        panic!("redis-server exited before accepting connections");
    }

    /// Runs one command on this server.
    pub async fn query<T: redis::FromRedisValue>(&self, command: &[&str]) -> T {
        query(self.port, command).await
    }

    /// A field of `INFO section`, e.g. `info("replication", "master_repl_offset")`.
    pub async fn info(&self, section: &str, field: &str) -> String {
        let info: String = self.query(&["INFO", section]).await;
        info.lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {field} in INFO {section}"))
            .trim()
            .to_owned()
    }

    /// Waits until `replica` has everything this primary wrote (at most 10 s).
    pub async fn wait_replicated(&self, replica: &RedisServer) {
        for _ in 0..200 {
            let offset = self.info("replication", "master_repl_offset").await;
            if replica.info("replication", "master_link_status").await == "up"
                && replica.info("replication", "slave_repl_offset").await == offset
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the replica did not catch up in 10 s");
    }
}

/// A redis-sentinel watching one primary as `service`, with a short down-after time.
pub struct Sentinel {
    pub port: u16,
    /// Declared before `_dir`: killed before its directory is removed.
    _child: Child,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    pub async fn start(service: &str, primary: &RedisServer) -> Self {
        let (port, dir) = (free_port(), tempfile::tempdir().unwrap());
        let config = dir.path().join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\n\
                 sentinel monitor {service} 127.0.0.1 {primary} 1\n\
                 sentinel down-after-milliseconds {service} 300\n\
                 sentinel failover-timeout {service} 2000\n",
                primary = primary.port
            ),
        )
        .unwrap();
        let mut child = Command::new("redis-sentinel")
            .arg(&config)
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-sentinel on PATH (apt-get install redis-sentinel)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("+monitor master") {
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                return Self {
                    port,
                    _dir: dir,
                    _child: child,
                };
            }
        }
        panic!("redis-sentinel exited before monitoring");
    }

    /// The port of the primary Sentinel names now.
    pub async fn primary_port(&self, service: &str) -> u16 {
        let (_host, port): (String, u16) = self
            .query(&["SENTINEL", "get-master-addr-by-name", service])
            .await;
        port
    }

    /// Whether Sentinel lists the replica on `port` for `service`.
    pub async fn knows_replica(&self, service: &str, port: u16) -> bool {
        let replicas: Vec<std::collections::HashMap<String, String>> =
            self.query(&["SENTINEL", "REPLICAS", service]).await;
        let port = port.to_string();
        replicas.iter().any(|r| r.get("port") == Some(&port))
    }

    async fn query<T: redis::FromRedisValue>(&self, command: &[&str]) -> T {
        query(self.port, command).await
    }
}

/// A TCP relay on a free loopback port to a target the test can change. Pausing stops every
/// byte in both directions (the connections stay open, as on a stalled link); cutting closes
/// every connection made so far.
#[derive(Clone)]
pub struct Relay {
    pub port: u16,
    target: Arc<Mutex<SocketAddr>>,
    paused: watch::Sender<bool>,
    /// Bumped by `cut`: each connection ends when it changes.
    generation: watch::Sender<u64>,
}

impl Relay {
    pub async fn start(target_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = Self {
            port: listener.local_addr().unwrap().port(),
            target: Arc::new(Mutex::new(SocketAddr::from(([127, 0, 0, 1], target_port)))),
            paused: watch::channel(false).0,
            generation: watch::channel(0).0,
        };
        let accepting = relay.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let target = *accepting.target.lock().unwrap();
                let (paused, cut) = (
                    accepting.paused.subscribe(),
                    accepting.generation.subscribe(),
                );
                tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(target).await {
                        let (ri, wi) = inbound.into_split();
                        let (ro, wo) = outbound.into_split();
                        let mut cut = cut;
                        tokio::select! {
                            _ = pipe(ri, wo, paused.clone()) => {}
                            _ = pipe(ro, wi, paused) => {}
                            _ = cut.changed() => {}
                        }
                    }
                });
            }
        });
        relay
    }

    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    /// Closes every connection made so far; new ones go to the current target.
    pub fn cut(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// New connections go to `port`.
    pub fn point_to(&self, port: u16) {
        *self.target.lock().unwrap() = SocketAddr::from(([127, 0, 0, 1], port));
        self.paused.send_replace(false);
    }
}

/// Copies `from` to `to` while not paused.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut paused: watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0; 16 * 1024];
    loop {
        if paused.wait_for(|p| !p).await.is_err() {
            return;
        }
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Bytes read as the pause began are held back too.
        if paused.wait_for(|p| !p).await.is_err() || to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// Runs one command on the server (or Sentinel) on `port`.
async fn query<T: redis::FromRedisValue>(port: u16, command: &[&str]) -> T {
    let mut connection = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut cmd = redis::cmd(command[0]);
    for arg in &command[1..] {
        cmd.arg(*arg);
    }
    cmd.query_async(&mut connection).await.unwrap()
}
