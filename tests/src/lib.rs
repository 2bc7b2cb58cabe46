//! The parts every end-to-end test is built from: a broker (a real `nats-server` process on a
//! free port, or the hub's embedded bus), the real hub on a free port, an owner service that
//! publishes and answers snapshots through the real SDK, and real WebSocket clients.

pub mod broker;
pub mod browser;
pub mod client;
pub mod cluster;
pub mod creds;
pub mod nats;
pub mod owner;
pub mod pki;
pub mod tokens;

use std::net::SocketAddr;
use std::sync::Once;
use std::time::Duration;

use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use vwed_hub::broker::Broker;
use vwed_hub::{Hub, HubConfig};

pub use broker::{BrokerKind, TestBroker};
pub use client::{Client, Received};
pub use cluster::{Backoff, Ending, Endpoint, HubProcess, NatsCluster, Panel, Panelled, Traffic};
pub use nats::Nats;
pub use owner::{location, Owner};

/// How long a test waits for something that should happen.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Sends hub and SDK logs to the test output when `RUST_LOG` is set.
pub fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
    });
}

/// A hub under test, on a free loopback port.
pub struct TestHub {
    hub: Option<Hub>,
    addr: SocketAddr,
}

impl TestHub {
    /// The hub with default settings on `broker`.
    pub async fn start(broker: &TestBroker) -> Self {
        Self::start_with(broker, |_| {}).await
    }

    /// The hub on `broker`, with `adjust` applied to the configuration.
    pub async fn start_with(broker: &TestBroker, adjust: impl FnOnce(&mut HubConfig)) -> Self {
        let test_hub = Self::launch_with(broker, adjust).await;
        test_hub.wait_until_ready().await;
        test_hub
    }

    /// Like [`start_with`](Self::start_with), without waiting until the hub is ready (e.g.
    /// because it serves TLS, which the plain probe cannot read).
    pub async fn launch_with(broker: &TestBroker, adjust: impl FnOnce(&mut HubConfig)) -> Self {
        match broker.hub_broker() {
            Some(embedded) => Self::launch_on(embedded, adjust).await,
            None => Self::launch(&broker.nats_url().unwrap_or_default(), adjust).await,
        }
    }

    /// The hub against the NATS at `nats_url`, without waiting for it to connect.
    pub async fn launch(nats_url: &str, adjust: impl FnOnce(&mut HubConfig)) -> Self {
        let mut config = Self::config(adjust);
        config.nats_url = Some(nats_url.to_owned());
        Self::serve(Hub::start(config).await)
    }

    /// The hub on an embedded broker of the test's.
    async fn launch_on(broker: Arc<dyn Broker>, adjust: impl FnOnce(&mut HubConfig)) -> Self {
        let config = Self::config(adjust);
        Self::serve(Hub::start_with_broker(config, broker).await)
    }

    /// The hub in demo mode on its own embedded broker, as the README's first command runs it.
    pub async fn start_demo() -> Self {
        let mut config = Self::config(|_| {});
        config.nats_url = None;
        config.demo = true;
        Self::serve(Hub::start(config).await)
    }

    /// The hub itself, e.g. for its demo or its bus.
    pub fn hub(&self) -> &Hub {
        self.hub.as_ref().expect("the hub is running")
    }

    /// Test settings: a free port and short snapshot timeouts, then `adjust`.
    fn config(adjust: impl FnOnce(&mut HubConfig)) -> HubConfig {
        init_logging();
        let mut config = HubConfig::new(loopback_any_port());
        config.snapshot_timeout = Duration::from_millis(500);
        adjust(&mut config);
        config
    }

    fn serve(started: anyhow::Result<Hub>) -> Self {
        let hub = started.expect("the hub starts");
        let addr = hub.local_addr();
        Self {
            hub: Some(hub),
            addr,
        }
    }

    /// `ws://` URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// The hub's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until `/readyz` says ready.
    pub async fn wait_until_ready(&self) {
        eventually("the hub is ready", || async {
            http_get(self.addr, "/readyz").await.0 == 200
        })
        .await;
    }

    /// The value of one metric sample line (`name` or `name{labels}`), 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let (_, body) = http_get(self.addr, "/metrics").await;
        body.lines()
            .find_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                (name == sample).then(|| value.parse().ok())?
            })
            .unwrap_or(0.0)
    }

    /// Waits until the hub holds exactly `count` broker subscriptions.
    pub async fn wait_for_subscriptions(&self, count: usize) {
        eventually(&format!("the hub holds {count} subscriptions"), || async {
            self.metric("vwed_hub_broker_subscriptions").await == count as f64
        })
        .await;
    }

    /// Shuts the hub down the way SIGTERM does.
    pub async fn shutdown(&mut self) {
        if let Some(hub) = self.hub.take() {
            hub.shutdown().await.expect("clean shutdown");
        }
    }
}

/// `127.0.0.1:0`: the OS picks a free port.
pub fn loopback_any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// A free loopback port (free at the time of asking).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind(loopback_any_port())
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A minimal HTTP/1.1 exchange: returns the status code and the body (read up to its
/// `Content-Length`, or to the end). Raw on purpose, so tests control every header the hub sees.
pub async fn http_request(addr: SocketAddr, request: &str) -> (u16, String) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    http_exchange(stream, request).await
}

/// [`http_request`] over any connection, e.g. TLS.
pub async fn http_exchange<S>(mut stream: S, request: &str) -> (u16, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    let mut chunk = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(complete) = complete_response(&response) {
            response.truncate(complete);
            break;
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => response.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The length of a complete response with a `Content-Length`, once all of it is there.
fn complete_response(response: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(response).ok()?;
    let (head, _) = text.split_once("\r\n\r\n")?;
    let length: usize = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })?;
    let total = head.len() + 4 + length;
    (response.len() >= total).then_some(total)
}

/// `GET path` with `Connection: close`.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// Polls `check` until it holds, failing the test after [`PATIENCE`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Percent-encodes an id for a URL path.
pub fn encode_id(id: &str) -> String {
    percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).to_string()
}
