//! A Redis Cluster of real redis-server processes on free loopback ports, created by the test
//! (`redis-cli --cluster create`), whose nodes the test can kill to make the cluster fail over.
//! Every wait is bounded; the processes end when the `Cluster` is dropped.

use std::{future::Future, process::Stdio, time::Duration};

use tokio::{
    process::Command,
    time::{sleep, timeout, Instant},
};

use super::redis_server::{free_port, RedisServer};

/// The longest the cluster may take to form, or to fail over.
pub const SETTLE: Duration = Duration::from_secs(20);

pub struct Cluster {
    nodes: Vec<RedisServer>,
    /// The ports of the nodes the test killed.
    killed: Vec<u16>,
}

/// One line of a node's `CLUSTER NODES`: another node as that node sees it.
#[derive(Clone, Debug)]
pub struct NodeView {
    pub id: String,
    pub port: u16,
    pub myself: bool,
    pub master: bool,
    /// Flagged `fail` (or `fail?`) by the node that answered.
    pub failing: bool,
    /// Its master's id, for a replica.
    pub master_id: Option<String>,
    /// The slot ranges it serves, both ends included.
    pub slots: Vec<(u16, u16)>,
}

impl NodeView {
    pub fn serves(&self, slot: u16) -> bool {
        self.slots
            .iter()
            .any(|&(from, to)| (from..=to).contains(&slot))
    }
}

impl Cluster {
    /// `masters` masters with `replicas` replicas each, every slot covered, `cluster_state:ok`
    /// on every node and every replica's link up.
    pub async fn start(masters: usize, replicas: usize) -> Self {
        let (mut nodes, mut taken) = (Vec::<RedisServer>::new(), Vec::new());
        for _ in 0..masters * (1 + replicas) {
            // Ports from port 0 may be above 55535: the bus port is chosen, not port + 10000.
            let bus = (0..100)
                .map(|_| free_port())
                .find(|port| !taken.contains(port) && nodes.iter().all(|node| node.port != *port))
                .expect("a free port not taken yet");
            taken.push(bus);
            let bus = bus.to_string();
            nodes.push(
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "1000",
                    "--cluster-port",
                    &bus,
                ])
                .await,
            );
        }
        let mut create = Command::new("redis-cli");
        create.args(["--cluster", "create"]);
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let created = timeout(SETTLE, create.output())
            .await
            .expect("redis-cli --cluster create did not finish in 20 s")
            .expect("redis-cli on PATH (apt-get install redis-tools)");
        let report = String::from_utf8_lossy(&created.stdout);
        assert!(
            created.status.success() && report.contains("All 16384 slots covered"),
            "redis-cli --cluster create failed: {report}{}",
            String::from_utf8_lossy(&created.stderr)
        );
        let cluster = Self {
            nodes,
            killed: Vec::new(),
        };
        let expected_replicas = masters * replicas;
        eventually("the new cluster to be ok on every node", || async {
            let mut linked = 0;
            for node in cluster.live() {
                if !cluster.state_ok(node).await {
                    return None;
                }
                let me = cluster.myself(node).await;
                if !me.master {
                    if node.info("replication", "master_link_status").await != "up" {
                        return None;
                    }
                    linked += 1;
                }
            }
            (linked == expected_replicas).then_some(())
        })
        .await;
        cluster
    }

    /// The nodes not killed.
    pub fn live(&self) -> impl Iterator<Item = &RedisServer> {
        self.nodes
            .iter()
            .filter(|node| !self.killed.contains(&node.port))
    }

    /// The URLs of the nodes not killed, as seed nodes for a client.
    pub fn urls(&self) -> Vec<String> {
        self.live().map(RedisServer::url).collect()
    }

    pub fn node(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|node| node.port == port)
            .unwrap_or_else(|| panic!("no node on port {port}"))
    }

    /// Kills the node on `port` (its data is gone).
    pub async fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|node| node.port == port)
            .unwrap_or_else(|| panic!("no node on port {port}"));
        node.stop().await;
        self.killed.push(port);
    }

    /// `CLUSTER KEYSLOT key`.
    pub async fn keyslot(&self, key: &str) -> u16 {
        self.any().query::<u16>(&["CLUSTER", "KEYSLOT", key]).await
    }

    /// `CLUSTER NODES`, as `node` sees the cluster.
    pub async fn view(&self, node: &RedisServer) -> Vec<NodeView> {
        let text: String = node.query(&["CLUSTER", "NODES"]).await;
        text.lines().filter_map(parse_node_line).collect()
    }

    /// The node on `node`'s own line of `CLUSTER NODES`.
    pub async fn myself(&self, node: &RedisServer) -> NodeView {
        self.view(node)
            .await
            .into_iter()
            .find(|view| view.myself)
            .expect("a myself line in CLUSTER NODES")
    }

    /// Whether `node` says `cluster_state:ok`.
    pub async fn state_ok(&self, node: &RedisServer) -> bool {
        let info: String = node.query(&["CLUSTER", "INFO"]).await;
        info.lines().any(|line| line.trim() == "cluster_state:ok")
    }

    /// The port of the master that serves `slot`, if every live node says `cluster_state:ok`
    /// and names the same healthy master for it.
    pub async fn agreed_owner(&self, slot: u16) -> Option<u16> {
        let mut owner = None;
        for node in self.live() {
            if !self.state_ok(node).await {
                return None;
            }
            let serving = self
                .view(node)
                .await
                .into_iter()
                .find(|view| view.master && !view.failing && view.serves(slot))?
                .port;
            if *owner.get_or_insert(serving) != serving {
                return None;
            }
        }
        owner
    }

    /// The port of the master that serves `slot` (the cluster must be settled).
    pub async fn owner(&self, slot: u16) -> u16 {
        self.agreed_owner(slot)
            .await
            .unwrap_or_else(|| panic!("the nodes do not agree on who serves slot {slot}"))
    }

    /// The port of the (live) replica of the master on `master`.
    pub async fn replica_of(&self, master: u16) -> u16 {
        let id = self.myself(self.node(master)).await.id;
        for node in self.live() {
            if self.myself(node).await.master_id.as_deref() == Some(id.as_str()) {
                return node.port;
            }
        }
        panic!("the master on port {master} has no replica");
    }

    /// Waits (at most [`SETTLE`]) until every live node says `cluster_state:ok` and names the
    /// master on `port` for `slot`.
    pub async fn wait_owner(&self, slot: u16, port: u16) {
        eventually(
            &format!("the node on port {port} to serve slot {slot}, cluster ok"),
            || async { (self.agreed_owner(slot).await == Some(port)).then_some(()) },
        )
        .await;
    }

    fn any(&self) -> &RedisServer {
        self.live().next().expect("a live node")
    }
}

/// Polls `check` every 100 ms until it gives a value, for at most [`SETTLE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + SETTLE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "waited {SETTLE:?} for {what} in vain"
        );
        sleep(Duration::from_millis(100)).await;
    }
}

/// `<id> <ip:port@cport[,hostname]> <flags> <master> <ping> <pong> <epoch> <link> <slot>…`
fn parse_node_line(line: &str) -> Option<NodeView> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 8 {
        return None;
    }
    let address = fields[1].split(['@', ',']).next()?;
    let port = address.rsplit_once(':')?.1.parse().ok()?;
    let flags: Vec<&str> = fields[2].split(',').collect();
    let slots = fields[8..]
        .iter()
        .filter(|slot| !slot.starts_with('[')) // a slot being migrated or imported
        .map(|slot| match slot.split_once('-') {
            Some((from, to)) => (from.parse().unwrap(), to.parse().unwrap()),
            None => (slot.parse().unwrap(), slot.parse().unwrap()),
        })
        .collect();
    Some(NodeView {
        id: fields[0].to_owned(),
        port,
        myself: flags.contains(&"myself"),
        master: flags.contains(&"master"),
        failing: flags.contains(&"fail") || flags.contains(&"fail?"),
        master_id: (fields[3] != "-").then(|| fields[3].to_owned()),
        slots,
    })
}
