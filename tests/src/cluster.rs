//! Production on loopback: a three-node NATS cluster, hub replicas as processes of their own,
//! monitoring panels that reconnect the way the page does, and an owner that keeps publishing.
//! The fault tests in `e2e/cluster.rs` are built from these.
//!
//! Every process is killed when its handle is dropped, so a test that panics leaves nothing
//! running. Each process logs to `target/test-artifacts/cluster/<test>-...log`, to read after a
//! failure.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use vwed_publisher::{Publisher, StatusAction, TaskStatus};

use crate::{encode_id, free_port, Owner, PATIENCE};

/// Nodes in a [`NatsCluster`]: the smallest cluster that keeps a majority when one dies.
pub const NODES: usize = 3;

/// The NATS connection name of an owner from [`NatsCluster::owner`], so that `/connz` shows
/// which node it is on.
pub const OWNER_CONNECTION: &str = "vwed-e2e-owner";

/// The NATS connection name the hub gives itself (hub/src/broker/nats.rs).
pub const HUB_CONNECTION: &str = "vwed-hub";

/// `target/test-artifacts/cluster/`, where the processes log.
pub fn log_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("test-artifacts").join("cluster");
    std::fs::create_dir_all(&dir).expect("a log directory under target/test-artifacts");
    dir
}

/// A log file in [`log_dir`]; appended to, so a process started again keeps what it logged
/// before.
fn log_file(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open the log {}: {e}", path.display()))
}

/// Polls `check` until it holds, failing the test after `limit`: [`eventually`](crate::eventually)
/// for waits that a fault makes longer than [`PATIENCE`].
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `GET path` over HTTP/1.0, so that the body ends with the connection whatever server
/// answers (Go's net/http would chunk a large HTTP/1.1 body). `None` when nothing listens or
/// no full answer comes: the callers poll servers that are starting or stopping.
pub async fn try_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let response = String::from_utf8_lossy(&response).into_owned();
        let (head, body) = response.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        Some((status, body.to_owned()))
    };
    tokio::time::timeout(PATIENCE, exchange)
        .await
        .ok()
        .flatten()
}

/// The value of one sample (`name` or `name{labels}`) in a Prometheus text body; 0 when absent,
/// as Prometheus reads a counter that was never touched.
fn sample(body: &str, sample: &str) -> f64 {
    body.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// A uniformly random fraction in [0, 1), from the standard library's per-process random hash
/// keys (enough for jitter, and no dependency for it).
fn random_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// A loopback port for a server of these tests to listen on: free when asked, never handed out
/// before in this process, and below the kernel's ephemeral range when it can be. A port from
/// [`free_port`] is in that range, where every outgoing connection (a hub's to NATS, a route,
/// a panel's) may take it before the server that was meant to listen on it starts; with nine
/// NATS ports and three hubs per test, that happened.
pub fn unused_port() -> u16 {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    const LOWEST: u16 = 10_000;
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    for _ in 0..1000 {
        let port = if ephemeral_start > LOWEST + 1000 {
            LOWEST + (random_fraction() * f64::from(ephemeral_start - LOWEST)) as u16
        } else {
            free_port()
        };
        if handed_out.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.push(port);
            return port;
        }
    }
    panic!("no free loopback port below {ephemeral_start}");
}

// ---- NATS ------------------------------------------------------------------------------------

/// One `nats-server` of a [`NatsCluster`]; its ports stay the same across restarts, as a
/// node's address does in production.
struct Node {
    /// Where clients (hubs, owners) connect.
    client_port: u16,
    /// Where the other nodes' routes connect.
    cluster_port: u16,
    /// HTTP monitoring: `/routez` tells when the cluster is whole, `/connz` who is connected
    /// where.
    monitor_port: u16,
    /// The running server; `None` while the node is down. Killed on drop.
    child: Option<Child>,
}

/// Three `nats-server` processes routed into one cluster (`--cluster`, `--routes`), each on
/// ports of its own; nodes can be killed and started again on the same ports.
pub struct NatsCluster {
    /// The nodes, by index.
    nodes: Vec<Node>,
    /// Names the nodes and their log files after the test.
    label: String,
}

impl NatsCluster {
    /// Starts every node and waits until each has routes to the other two.
    pub async fn start(label: &str) -> Self {
        let nodes = (0..NODES)
            .map(|_| Node {
                client_port: unused_port(),
                cluster_port: unused_port(),
                monitor_port: unused_port(),
                child: None,
            })
            .collect();
        let mut cluster = Self {
            nodes,
            label: label.to_owned(),
        };
        for node in 0..NODES {
            // A fresh log per run; restarts within the run append.
            let _ = std::fs::remove_file(cluster.log_path(node));
        }
        cluster.start_all().await;
        cluster
    }

    /// `nats://127.0.0.1:<port>` of `node`.
    pub fn url(&self, node: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[node].client_port)
    }

    /// The URLs of `nodes`, comma-separated, as `--nats-url` takes them.
    pub fn urls(&self, nodes: &[usize]) -> String {
        nodes
            .iter()
            .map(|&node| self.url(node))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every node's URL, comma-separated.
    pub fn all_urls(&self) -> String {
        self.urls(&(0..NODES).collect::<Vec<_>>())
    }

    /// Where `node` logs.
    pub fn log_path(&self, node: usize) -> PathBuf {
        log_dir().join(format!("{}-nats-{node}.log", self.label))
    }

    /// Kills `node` (as a crash would) and waits until it is gone.
    pub async fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node].child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts `node` again on its ports and waits until the cluster is whole.
    pub async fn start_node(&mut self, node: usize) {
        self.spawn(node);
        self.wait_until_up(node).await;
        self.wait_for_routes().await;
    }

    /// Kills every node.
    pub async fn stop_all(&mut self) {
        for node in 0..NODES {
            self.kill(node).await;
        }
    }

    /// Starts every node that is down and waits until the cluster is whole.
    pub async fn start_all(&mut self) {
        for node in 0..NODES {
            if self.nodes[node].child.is_none() {
                self.spawn(node);
            }
        }
        for node in 0..NODES {
            self.wait_until_up(node).await;
        }
        self.wait_for_routes().await;
    }

    fn spawn(&mut self, index: usize) {
        let node = &self.nodes[index];
        let routes: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(other, _)| *other != index)
            .map(|(_, other)| format!("nats://127.0.0.1:{}", other.cluster_port))
            .collect();
        let log = log_file(&self.log_path(index));
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1"])
            .args(["-p", &node.client_port.to_string()])
            .args(["-m", &node.monitor_port.to_string()])
            .args([
                "--cluster",
                &format!("nats://127.0.0.1:{}", node.cluster_port),
            ])
            .args(["--routes", &routes.join(",")])
            .args(["--cluster_name", "vwed-e2e"])
            .args(["--server_name", &format!("{}-{index}", self.label)])
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server on PATH (see README: apt-get install nats-server)");
        self.nodes[index].child = Some(child);
    }

    /// Waits until `node` accepts clients and answers on its monitoring port.
    async fn wait_until_up(&mut self, node: usize) {
        let log = self.log_path(node);
        let deadline = Instant::now() + PATIENCE;
        loop {
            let Node {
                client_port,
                monitor_port,
                child,
                ..
            } = &mut self.nodes[node];
            if let Some(Ok(Some(status))) = child.as_mut().map(Child::try_wait) {
                panic!(
                    "nats-server node {node} exited ({status}); see {}",
                    log.display()
                );
            }
            let accepting = TcpStream::connect(("127.0.0.1", *client_port))
                .await
                .is_ok();
            let monitored = try_get(monitor(*monitor_port), "/varz").await.is_some();
            if accepting && monitored {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server node {node} did not start; see {}",
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until every running node has a route to every other running node, so that
    /// interest and messages flow across the whole cluster.
    pub async fn wait_for_routes(&self) {
        let running: Vec<u16> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.monitor_port)
            .collect();
        let wanted = running.len().saturating_sub(1) as u64;
        wait_until(
            &format!("every running node has {wanted} routes"),
            PATIENCE,
            || async {
                for port in &running {
                    let routes = get_json(*port, "/routez").await;
                    if routes.and_then(|r| r["num_routes"].as_u64()) != Some(wanted) {
                        return false;
                    }
                }
                true
            },
        )
        .await;
    }

    /// The names of the client connections on `node` (empty while it is down).
    pub async fn client_names(&self, node: usize) -> Vec<String> {
        let Some(connz) = get_json(self.nodes[node].monitor_port, "/connz").await else {
            return Vec::new();
        };
        connz["connections"]
            .as_array()
            .map(|connections| {
                connections
                    .iter()
                    .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How many client connections named `name` `node` has.
    pub async fn connections_named(&self, node: usize, name: &str) -> usize {
        self.client_names(node)
            .await
            .iter()
            .filter(|n| *n == name)
            .count()
    }

    /// Waits until `node` has `count` client connections named `name`.
    pub async fn wait_for_connections(&self, node: usize, name: &str, count: usize) {
        wait_until(
            &format!("node {node} has {count} connection(s) named {name}"),
            PATIENCE,
            || async { self.connections_named(node, name).await == count },
        )
        .await;
    }

    /// Waits until `node` has learnt over its routes that some other node's client subscribes
    /// to `subject`: from then on, what is published on `node` reaches that subscriber.
    pub async fn wait_for_remote_interest(&self, node: usize, subject: &str) {
        let port = self.nodes[node].monitor_port;
        wait_until(
            &format!("node {node} knows of a remote subscription to {subject}"),
            PATIENCE,
            || async {
                get_json(port, "/routez?subs=1")
                    .await
                    .is_some_and(|routez| {
                        routez["routes"].as_array().is_some_and(|routes| {
                            routes.iter().any(|route| {
                                route["subscriptions_list"]
                                    .as_array()
                                    .is_some_and(|subs| subs.iter().any(|s| s == subject))
                            })
                        })
                    })
            },
        )
        .await;
    }

    /// An owner service whose publisher connects to `nodes[0]` and fails over to the rest in
    /// that order, named [`OWNER_CONNECTION`] so that tests can see where it is.
    pub async fn owner(&self, nodes: &[usize]) -> Owner {
        let urls: Vec<String> = nodes.iter().map(|&node| self.url(node)).collect();
        let client = async_nats::ConnectOptions::new()
            .name(OWNER_CONNECTION)
            .retain_servers_order()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(|_| Duration::from_millis(100))
            .connect(urls)
            .await
            .expect("the owner's NATS options are valid");
        Owner::on(Publisher::new(client)).await
    }
}

/// A node's monitoring address.
fn monitor(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A monitoring endpoint's JSON, `None` while the node is down.
async fn get_json(port: u16, path: &str) -> Option<Value> {
    let (status, body) = try_get(monitor(port), path).await?;
    (status == 200).then(|| serde_json::from_str(&body).ok())?
}

// ---- Hub processes ---------------------------------------------------------------------------

/// The hub as a process of its own, as it runs in production: it can be killed (SIGKILL) or
/// asked to stop (SIGTERM). Killed on drop.
pub struct HubProcess {
    /// The process.
    child: Child,
    /// Where it serves WebSockets, probes and metrics.
    addr: SocketAddr,
    /// Its stderr (JSON log lines), named in failure messages.
    log: PathBuf,
}

impl HubProcess {
    /// Starts `binary` (the tests' `vwed-hub-under-test`) on a free loopback port against
    /// `nats_url` (a comma-separated list is fine), with `extra` flags, and waits until it is
    /// ready. `name` names its log file.
    pub async fn start(binary: &str, name: &str, nats_url: &str, extra: &[&str]) -> Self {
        let mut hub = Self::launch(binary, name, nats_url, extra);
        hub.wait_until_ready().await;
        hub
    }

    /// Like [`start`](Self::start), without waiting.
    pub fn launch(binary: &str, name: &str, nats_url: &str, extra: &[&str]) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], unused_port()));
        let log = log_dir().join(format!("{name}.log"));
        let _ = std::fs::remove_file(&log);
        let mut command = Command::new(binary);
        command
            .args(["--listen", &addr.to_string()])
            .args(["--nats-url", nats_url])
            .args(["--snapshot-timeout", "500ms"])
            .args(["--log-format", "json"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log_file(&log))
            .kill_on_drop(true);
        // Settings of the environment the tests run in must not change the hubs under test.
        for (key, _) in std::env::vars() {
            if key.starts_with("VWED_") {
                command.env_remove(key);
            }
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the hub binary {binary}: {e}"));
        Self { child, addr, log }
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://<addr>`, to which an endpoint's path is appended.
    pub fn ws_base(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// `ws://` URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.ws_base())
    }

    /// Where it logs.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Whether `/readyz` says 200 now (false while it cannot be reached).
    pub async fn is_ready(&self) -> bool {
        try_get(self.addr, "/readyz")
            .await
            .is_some_and(|(status, _)| status == 200)
    }

    /// Waits until `/readyz` says ready; fails at once if the process exited.
    pub async fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        while !self.is_ready().await {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the hub on {} exited ({status}); see {}",
                    self.addr,
                    self.log.display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the hub on {} did not become ready; see {}",
                self.addr,
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The value of one metric sample line (`name` or `name{labels}`), 0 when absent.
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, body) = try_get(self.addr, "/metrics").await.unwrap_or_else(|| {
            panic!(
                "no /metrics from the hub on {}; see {}",
                self.addr,
                self.log.display()
            )
        });
        sample(&body, name)
    }

    /// Kills it with SIGKILL, as a crash or an OOM kill would, and waits until it is gone.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Sends it SIGTERM, as an orchestrator does before replacing it.
    pub async fn terminate(&self) {
        let pid = self
            .child
            .id()
            .expect("the hub is still running")
            .to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().await;
        assert!(
            sent.is_ok_and(|status| status.success()),
            "kill -TERM {pid} failed"
        );
    }

    /// Whether the process has exited.
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits for the process to exit, failing the test after `limit`.
    pub async fn wait_for_exit(&mut self, limit: Duration) -> ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => panic!("cannot wait for the hub on {}: {e}", self.addr),
            Err(_) => panic!(
                "the hub on {} did not exit within {limit:?}; see {}",
                self.addr,
                self.log.display()
            ),
        }
    }
}

// ---- Panels ----------------------------------------------------------------------------------

pub use vwed_hub::ws::Endpoint;

/// What a panel needs to know of an endpoint beyond what the hub's own type says.
pub trait Panelled: Copy {
    /// The path for `key`, realtime endpoints with `interval=1`.
    fn path(self, key: &str) -> String;
    /// Whether the client must ask (`get_status`) for the state: broadcast endpoints push
    /// changes only.
    fn is_broadcast(self) -> bool;
    /// The type of the messages that carry the key's state.
    fn state_type(self) -> &'static str;
    /// The part of a state message compared with the owner's state.
    fn state_of(self, message: &Value) -> Value;
    /// What the owner would answer to a snapshot of `key` now, in the form
    /// [`state_of`](Panelled::state_of) takes from a message (no filters: the panels watch
    /// everything).
    fn expected(self, owner: &Owner, key: &str) -> impl std::future::Future<Output = Value>;
}

impl Panelled for Endpoint {
    fn path(self, key: &str) -> String {
        let query = if self.is_broadcast() {
            ""
        } else {
            "?interval=1"
        };
        format!("/ws/{}/{}{query}", self.segment(), encode_id(key))
    }

    fn is_broadcast(self) -> bool {
        matches!(self, Self::TaskBroadcast | Self::SceneBroadcast)
    }

    fn state_type(self) -> &'static str {
        match self {
            Self::TaskRealtime | Self::TaskBroadcast => "task_execution_update",
            Self::SceneRealtime | Self::SceneBroadcast => "storage_location_update",
        }
    }

    fn state_of(self, message: &Value) -> Value {
        match self {
            Self::TaskRealtime | Self::TaskBroadcast => message["data"].clone(),
            Self::SceneRealtime | Self::SceneBroadcast => {
                message["data"]["storage_locations"].clone()
            }
        }
    }

    async fn expected(self, owner: &Owner, key: &str) -> Value {
        match self {
            Self::TaskRealtime | Self::TaskBroadcast => owner.task_data(key).await,
            Self::SceneRealtime | Self::SceneBroadcast => {
                owner.scene_locations(key, |_| true).await
            }
        }
    }
}

/// The monitoring page's reconnect policy (hub/src/page/app.js): exponential backoff with full
/// jitter, reset once a socket has stayed open a while; with test-sized numbers.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Upper bound of the first delay; it doubles with each attempt.
    pub base: Duration,
    /// No delay's upper bound goes above this.
    pub cap: Duration,
    /// A socket open this long resets the attempts, so that a hub that accepts and then
    /// closes at once is not retried in a tight loop.
    pub stable_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
            stable_after: Duration::from_secs(1),
        }
    }
}

impl Backoff {
    /// The wait before attempt `attempt` (0-based): random(0, min(cap, base * 2^attempt)).
    pub fn delay(&self, attempt: u32) -> Duration {
        let bound = self
            .cap
            .min(self.base.saturating_mul(2u32.saturating_pow(attempt)));
        bound.mul_f64(random_fraction())
    }
}

/// How one of a panel's sockets ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The hub sent a close frame with this code.
    Closed(u16),
    /// The connection ended without a close frame (the hub died, or the network failed).
    Dropped,
}

/// What a panel has seen, for the test to check.
#[derive(Debug, Clone, Default)]
pub struct PanelLog {
    /// The hub (index into the URL list) of every socket opened, in order.
    pub sockets: Vec<usize>,
    /// How each socket that ended ended, in order.
    pub endings: Vec<Ending>,
    /// The hub of the socket open now, if one is.
    pub connected_to: Option<usize>,
    /// Connection attempts that failed (refused, or the handshake failed).
    pub failed_attempts: u32,
    /// The compared part (see [`Panelled::state_of`]) of the last state message.
    pub last_state: Option<Value>,
    /// State messages received, so that a `get_status` answer can be told from silence.
    pub states: u64,
    /// Messages received by `type`, e.g. to count the events a broadcast panel got.
    pub counts: HashMap<String, u64>,
    /// The last `error` message, for failure messages (outages make the hub send some).
    pub last_error: Option<Value>,
}

impl PanelLog {
    /// Messages of `kind` received so far.
    pub fn count(&self, kind: &str) -> u64 {
        self.counts.get(kind).copied().unwrap_or(0)
    }
}

/// A monitoring panel: one endpoint and key, on whichever hub of a list will take it. When its
/// socket ends it reconnects with the page's [`Backoff`], to the next hub of the list.
pub struct Panel {
    /// The endpoint it watches.
    pub endpoint: Endpoint,
    /// The task record id or scene id it watches.
    pub key: String,
    /// The hub it was opened on, to name it in failure messages.
    first_hub: usize,
    /// What it has seen; shared with its connection task.
    log: Arc<Mutex<PanelLog>>,
    /// Asks the open socket to send `{"type":"get_status"}`.
    ask: mpsc::UnboundedSender<()>,
    /// The connection loop; aborted on drop.
    task: JoinHandle<()>,
}

impl Drop for Panel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How long a broadcast panel waits for the answer to a `get_status`.
const ANSWER_WAIT: Duration = Duration::from_secs(2);

impl Panel {
    /// Opens `endpoint` for `key` on hub `first` of `hubs` (`ws://` bases), reconnecting as
    /// `backoff` says.
    pub fn open(
        hubs: Vec<String>,
        first: usize,
        endpoint: Endpoint,
        key: &str,
        backoff: Backoff,
    ) -> Self {
        let log = Arc::new(Mutex::new(PanelLog::default()));
        let (ask, asked) = mpsc::unbounded_channel();
        let task = tokio::spawn(reconnecting(
            hubs,
            first,
            endpoint,
            endpoint.path(key),
            backoff,
            log.clone(),
            asked,
        ));
        Self {
            endpoint,
            key: key.to_owned(),
            first_hub: first,
            log,
            ask,
            task,
        }
    }

    /// A copy of what it has seen so far.
    pub fn log(&self) -> PanelLog {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The hub its socket is open to now, if any.
    pub fn hub(&self) -> Option<usize> {
        self.log().connected_to
    }

    /// Names it in failure messages.
    pub fn label(&self) -> String {
        format!(
            "{:?} {} (opened on hub {})",
            self.endpoint, self.key, self.first_hub
        )
    }

    /// Whether the last state it holds is `expected`. A broadcast panel first asks for the
    /// state and waits for the answer (its last state message then, as no events come once
    /// publishing stopped).
    pub async fn holds(&self, expected: &Value) -> bool {
        if self.endpoint.is_broadcast() {
            let before = self.log().states;
            if self.ask.send(()).is_err() {
                return false;
            }
            let deadline = Instant::now() + ANSWER_WAIT;
            while self.log().states == before {
                if Instant::now() >= deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.log().last_state.as_ref() == Some(expected)
    }
}

/// A panel's life: connect, read until the socket ends, back off, try the next hub.
async fn reconnecting(
    hubs: Vec<String>,
    first: usize,
    endpoint: Endpoint,
    path: String,
    backoff: Backoff,
    log: Arc<Mutex<PanelLog>>,
    mut asked: mpsc::UnboundedReceiver<()>,
) {
    let note = |change: &dyn Fn(&mut PanelLog)| {
        change(&mut log.lock().unwrap_or_else(PoisonError::into_inner));
    };
    let mut hub = first;
    let mut attempt = 0u32;
    loop {
        let url = format!("{}{path}", hubs[hub]);
        match tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(url)).await {
            Ok(Ok((mut socket, _))) => {
                note(&|l| {
                    l.sockets.push(hub);
                    l.connected_to = Some(hub);
                });
                let opened = Instant::now();
                let ending = session(&mut socket, endpoint, &log, &mut asked).await;
                note(&|l| {
                    l.endings.push(ending);
                    l.connected_to = None;
                });
                if opened.elapsed() >= backoff.stable_after {
                    attempt = 0;
                }
                // As the page does: bad parameters will not get better by retrying.
                if ending == Ending::Closed(1008) {
                    return;
                }
            }
            _ => note(&|l| l.failed_attempts += 1),
        }
        tokio::time::sleep(backoff.delay(attempt)).await;
        attempt = attempt.saturating_add(1);
        hub = (hub + 1) % hubs.len();
    }
}

/// Reads one socket until it ends, recording what arrives and sending `get_status` when asked.
async fn session(
    socket: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    endpoint: Endpoint,
    log: &Mutex<PanelLog>,
    asked: &mut mpsc::UnboundedReceiver<()>,
) -> Ending {
    // Questions asked while no socket was open were not answered; the asker asks again.
    while asked.try_recv().is_ok() {}
    loop {
        tokio::select! {
            message = socket.next() => match message {
                Some(Ok(Message::Text(text))) => record(log, endpoint, text.as_str()),
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map_or(1005, |f| u16::from(f.code));
                    // Reading on sends tungstenite's close reply and completes the handshake.
                    let _ = tokio::time::timeout(PATIENCE, async {
                        while let Some(Ok(_)) = socket.next().await {}
                    })
                    .await;
                    return Ending::Closed(code);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Ending::Dropped,
            },
            Some(()) = asked.recv() => {
                // A failed send shows up as the end of the read side.
                let _ = socket.send(Message::Text(r#"{"type":"get_status"}"#.into())).await;
            }
        }
    }
}

/// Records one text message.
fn record(log: &Mutex<PanelLog>, endpoint: Endpoint, text: &str) {
    let Ok(message) = serde_json::from_str::<Value>(text) else {
        return;
    };
    let kind = message["type"].as_str().unwrap_or_default().to_owned();
    let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
    if kind == endpoint.state_type() {
        log.states += 1;
        log.last_state = Some(endpoint.state_of(&message));
    } else if kind == "error" {
        log.last_error = Some(message);
    }
    *log.counts.entry(kind).or_default() += 1;
}

/// Waits until every panel holds what the owner would answer to a snapshot (see
/// [`Panel::holds`]), giving up after `within`. Returns a description of each panel that did
/// not get there: what was lost. Call it once publishing has stopped.
pub async fn converge<'a>(
    owner: &Owner,
    panels: impl IntoIterator<Item = &'a Panel>,
    within: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    let checks = panels.into_iter().map(|panel| async move {
        loop {
            let expected = panel.endpoint.expected(owner, &panel.key).await;
            if panel.holds(&expected).await {
                return None;
            }
            if Instant::now() >= deadline {
                let log = panel.log();
                return Some(format!(
                    "{}: {}; sockets on hubs {:?}, endings {:?}, {} failed attempts, last error {}",
                    panel.label(),
                    difference(log.last_state.as_ref(), &expected),
                    log.sockets,
                    log.endings,
                    log.failed_attempts,
                    log.last_error.map_or("none".into(), |e| e.to_string()),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    futures::future::join_all(checks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Where a panel's state and the owner's differ, briefly (both can be long lists).
fn difference(held: Option<&Value>, expected: &Value) -> String {
    let Some(held) = held else {
        return "holds no state".into();
    };
    let (Some(held), Some(wanted)) = (held.as_array(), expected.as_array()) else {
        return format!(
            "holds {} but the owner has {}",
            brief(held),
            brief(expected)
        );
    };
    let first = held.iter().zip(wanted).position(|(h, w)| h != w);
    match first {
        Some(i) => format!(
            "holds {} items, the owner {}; first difference at {i}: {} vs the owner's {}",
            held.len(),
            wanted.len(),
            brief(&held[i]),
            brief(&wanted[i])
        ),
        None => format!(
            "holds {} items, the owner {} (the same up to the shorter)",
            held.len(),
            wanted.len()
        ),
    }
}

/// `value` as JSON, cut to a length a failure message can show.
fn brief(value: &Value) -> String {
    const SHOWN: usize = 400;
    let text = value.to_string();
    match text.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

// ---- The owner's steady publishing -----------------------------------------------------------

/// The owner publishing at a steady rate in the background, as task engines and storage
/// services do whatever happens to the hubs and NATS: each step appends a result to the next
/// task and flips a status of the next location, round robin.
pub struct Traffic {
    /// Tells the loop to stop before its next step.
    stop: watch::Sender<bool>,
    /// The loop; aborted on drop, so a failing test does not leave it publishing.
    task: Option<JoinHandle<()>>,
    /// Changes published so far (a step is two).
    published: Arc<AtomicU64>,
}

impl Traffic {
    /// Starts publishing on `owner`: a step every `every`, over `tasks` and over the
    /// locations of `scenes` (scene id, location ids). Neither may be empty, and every scene
    /// and location must be known to the owner (seeded).
    pub fn start(
        owner: Arc<Owner>,
        tasks: Vec<String>,
        scenes: Vec<(String, Vec<String>)>,
        every: Duration,
    ) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let published = Arc::new(AtomicU64::new(0));
        let counter = published.clone();
        let task = tokio::spawn(async move {
            let locations: usize = scenes.iter().map(|(_, ids)| ids.len()).sum();
            for step in 0usize.. {
                if *stopped.borrow() {
                    return;
                }
                let task = &tasks[step % tasks.len()];
                owner
                    .append(task, &format!("[step] {step}"), TaskStatus::Running)
                    .await;
                counter.fetch_add(1, Ordering::SeqCst);
                // Every location once per round; even rounds occupy, odd rounds release.
                let mut slot = step % locations;
                let (scene, id) = scenes
                    .iter()
                    .find_map(|(scene, ids)| match ids.get(slot) {
                        Some(id) => Some((scene, id)),
                        None => {
                            slot -= ids.len();
                            None
                        }
                    })
                    .expect("slot is below the number of locations");
                let occupy = (step / locations) & 1 == 0;
                let action = if occupy {
                    StatusAction::Occupy
                } else {
                    StatusAction::Release
                };
                owner
                    .change_status(scene, id, action, |l| l.is_occupied = occupy)
                    .await;
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    _ = stopped.changed() => {}
                }
            }
        });
        Self {
            stop,
            task: Some(task),
            published,
        }
    }

    /// Changes published so far.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::SeqCst)
    }

    /// Waits until `more` changes have been published from now on, so that a test knows the
    /// owner kept publishing across what it just did (at most `limit`).
    pub async fn wait_for(&self, more: u64, limit: Duration) {
        let target = self.published() + more;
        wait_until(
            &format!("the owner published {target} changes"),
            limit,
            || async { self.published() >= target },
        )
        .await;
    }

    /// Stops publishing and waits until the last change is published; returns how many were.
    pub async fn stop(mut self) -> u64 {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            if let Err(error) = task.await {
                panic!("the owner's publishing failed: {error}");
            }
        }
        self.published()
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
