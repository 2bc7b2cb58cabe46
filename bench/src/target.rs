//! What the benchmark runs against: a `nats-server` and a hub it starts itself (the default,
//! so one command works on a bare machine), or ones given by URL.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// Where the servers are.
#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// A running hub to measure, e.g. ws://127.0.0.1:8000. Unset: the bench starts its own hub
    /// process on a free port, against the NATS server it uses.
    #[arg(long, value_name = "URL")]
    pub hub_url: Option<String>,

    /// The pid of the hub given by --hub-url, so that its RSS and CPU can be read from /proc.
    #[arg(long, value_name = "PID")]
    pub hub_pid: Option<u32>,

    /// The NATS server the hub uses, where the bench publishes and answers snapshots. Unset:
    /// the bench starts its own nats-server (from PATH) on a free port.
    #[arg(long, value_name = "URL")]
    pub nats_url: Option<String>,

    /// nats-server's WebSocket listener, for the nats-server target (e.g. ws://127.0.0.1:8080);
    /// needed only with --nats-url, since the bench's own nats-server enables one.
    #[arg(long, value_name = "URL")]
    pub nats_ws_url: Option<String>,

    /// The pid of the nats-server behind --nats-ws-url, for its RSS and CPU.
    #[arg(long, value_name = "PID")]
    pub nats_pid: Option<u32>,

    /// An extra flag for the hub the bench starts, e.g. --hub-arg=--client-queue=1024
    /// (repeatable).
    #[arg(long, value_name = "FLAG", allow_hyphen_values = true)]
    pub hub_arg: Vec<String>,

    /// Every client offers permessage-deflate, as browsers do, and the nats-server the bench
    /// starts compresses on its WebSocket listener (`compression: true`). The hub accepts the
    /// extension by default.
    #[arg(long)]
    pub compression: bool,
}

/// How long a started process may take to accept connections.
const START_PATIENCE: Duration = Duration::from_secs(20);

/// Which server the WebSocket clients talk to.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// The hub's VWED endpoints.
    Hub,
    /// nats-server's own WebSocket listener (NATS protocol over WebSocket).
    NatsServer,
}

impl TargetKind {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Hub => "hub",
            TargetKind::NatsServer => "nats-server",
        }
    }
}

/// One WebSocket server to measure.
#[derive(Debug, Clone)]
pub struct Target {
    /// Hub or nats-server.
    pub kind: TargetKind,
    /// `ws://host:port`, without a path.
    pub ws_base: String,
    /// Its process, for RSS and CPU; `None` when unknown (an external target without a pid).
    pub pid: Option<u32>,
    /// Whether clients offer permessage-deflate to it.
    pub compression: bool,
}

/// The servers of one benchmark invocation; the ones it started stop when this is dropped.
pub struct Env {
    /// Where the owner publishes and the hub subscribes.
    pub nats_url: String,
    /// The hub, when the scenario needs one.
    pub hub: Option<Target>,
    /// nats-server's WebSocket listener, when the scenario needs one.
    pub nats_ws: Option<Target>,
    /// The hub process started here, kept so that it lives as long as the run. Declared before
    /// `_nats` so that it stops first, rather than warn that its broker went away.
    _hub: Option<HubProcess>,
    /// The nats-server started here, kept so that it lives as long as the run.
    _nats: Option<NatsProcess>,
}

impl Env {
    /// Starts (or finds) what a scenario needs: a hub, nats-server's WebSocket listener, or both.
    pub async fn start(
        args: &TargetArgs,
        need_hub: bool,
        need_nats_ws: bool,
    ) -> anyhow::Result<Self> {
        let own_nats = if args.nats_url.is_none() {
            let websocket = need_nats_ws && args.nats_ws_url.is_none();
            Some(NatsProcess::start(websocket, args.compression).await?)
        } else {
            None
        };
        let nats_url = match (&args.nats_url, &own_nats) {
            (Some(url), _) => url.clone(),
            (None, Some(nats)) => nats.url(),
            (None, None) => bail!("no NATS server"),
        };
        let mut own_hub = None;
        let hub = if !need_hub {
            None
        } else if let Some(url) = &args.hub_url {
            Some(Target {
                kind: TargetKind::Hub,
                ws_base: url.trim_end_matches('/').to_owned(),
                pid: args.hub_pid,
                compression: args.compression,
            })
        } else {
            let process = HubProcess::start(&nats_url, &args.hub_arg).await?;
            let target = Target {
                kind: TargetKind::Hub,
                ws_base: format!("ws://{}", process.addr),
                pid: process.child.id(),
                compression: args.compression,
            };
            own_hub = Some(process);
            Some(target)
        };
        let nats_ws = if !need_nats_ws {
            None
        } else if let Some(url) = &args.nats_ws_url {
            Some(Target {
                kind: TargetKind::NatsServer,
                ws_base: url.trim_end_matches('/').to_owned(),
                pid: args.nats_pid,
                compression: args.compression,
            })
        } else {
            match own_nats
                .as_ref()
                .and_then(|n| n.ws_port.map(|p| (p, n.child.id())))
            {
                Some((port, pid)) => Some(Target {
                    kind: TargetKind::NatsServer,
                    ws_base: format!("ws://127.0.0.1:{port}"),
                    pid,
                    compression: args.compression,
                }),
                None => bail!(
                    "with --nats-url, give --nats-ws-url too (the WebSocket listener of that \
                     nats-server), or leave both out and the bench starts its own"
                ),
            }
        };
        Ok(Self {
            nats_url,
            hub,
            nats_ws,
            _hub: own_hub,
            _nats: own_nats,
        })
    }

    /// The target of kind `kind`, which must have been asked for in [`Env::start`].
    pub fn target(&self, kind: TargetKind) -> anyhow::Result<Target> {
        match kind {
            TargetKind::Hub => self.hub.clone(),
            TargetKind::NatsServer => self.nats_ws.clone(),
        }
        .context("target not started")
    }
}

/// Makes a child die with this process, even when this process is killed outright.
fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches nothing of the parent's memory.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// A free loopback port (free when asked; the OS may hand it out again later, rarely).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

/// A `nats-server` from PATH on free ports, optionally with its WebSocket listener.
struct NatsProcess {
    /// The server; killed on drop.
    child: Child,
    /// Its client port.
    port: u16,
    /// Its WebSocket port, when enabled.
    ws_port: Option<u16>,
    /// Its configuration file, removed on drop.
    config: PathBuf,
}

impl NatsProcess {
    async fn start(websocket: bool, compression: bool) -> anyhow::Result<Self> {
        let port = free_port()?;
        let ws_port = if websocket { Some(free_port()?) } else { None };
        // Scene snapshots of thousands of locations are megabytes; the 1 MB default would
        // refuse them.
        let mut config = format!("host: \"127.0.0.1\"\nport: {port}\nmax_payload: 8MB\n");
        if let Some(ws) = ws_port {
            config.push_str(&format!(
                "websocket {{\n  listen: \"127.0.0.1:{ws}\"\n  no_tls: true\n  compression: {compression}\n}}\n"
            ));
        }
        let path = std::env::temp_dir().join(format!(
            "vwed-bench-nats-{}-{port}.conf",
            std::process::id()
        ));
        std::fs::write(&path, config).context("writing the nats-server configuration")?;
        let mut command = Command::new("nats-server");
        command
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        die_with_parent(&mut command);
        let child = command
            .spawn()
            .context("starting nats-server from PATH (Debian: apt-get install nats-server)")?;
        let nats = Self {
            child,
            port,
            ws_port,
            config: path,
        };
        wait_for_port(port).await?;
        if let Some(ws) = ws_port {
            wait_for_port(ws).await?;
        }
        Ok(nats)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsProcess {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

/// The hub as a process of its own: this very executable's hidden `hub` subcommand.
struct HubProcess {
    /// The hub; killed on drop.
    child: Child,
    /// Where it serves.
    addr: SocketAddr,
}

impl HubProcess {
    async fn start(nats_url: &str, extra: &[String]) -> anyhow::Result<Self> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let exe = std::env::current_exe().context("finding this executable")?;
        let mut command = Command::new(exe);
        command
            .arg("hub")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--nats-url")
            .arg(nats_url)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        // One log line per connection opened and closed would cost the hub more than the
        // traffic measured; warnings still show.
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "warn");
        }
        die_with_parent(&mut command);
        let child = command.spawn().context("starting the hub")?;
        let hub = Self { child, addr };
        let deadline = Instant::now() + START_PATIENCE;
        while Instant::now() < deadline {
            if http_status(addr, "/readyz").await == Some(200) {
                return Ok(hub);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the hub did not become ready on {addr}")
    }
}

async fn wait_for_port(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_PATIENCE;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("nothing listens on port {port}")
}

/// The status code of a plain HTTP GET, or `None` when there is no answer.
async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut head = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut head))
        .await
        .ok()?
        .ok()?;
    std::str::from_utf8(&head[..n])
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

/// The hub's `/metrics` text, from the server behind `ws_base`; `None` when it cannot be read.
pub async fn metrics_text(ws_base: &str) -> Option<String> {
    let addr = crate::worker::resolve(ws_base).await.ok()?;
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")
        .await
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).await.ok()?;
    Some(body)
}
