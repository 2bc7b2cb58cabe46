//! # vwed-hub
//!
//! A stateless realtime hub for the VWED WebSocket API. Task engines and storage services publish
//! change events to NATS (through the `vwed-publisher` SDK); the hub subscribes only to the keys
//! its clients watch, keeps a view of each, and fans events out to WebSocket clients exactly as
//! the original API document describes.
//!
//! The layout follows the data:
//! [`broker`] (NATS, or an embedded bus) → [`fanout`] (one topic task per watched key) → [`view`] (state, filters,
//! rendering) → [`ws`] (endpoints and connections), with [`messages`] the client-facing wire and
//! `vwed_publisher::wire` the publisher-facing one.

pub mod auth;
pub mod broker;
pub mod config;
pub mod demo;
pub mod fanout;
pub mod memory;
pub mod messages;
pub mod metrics;
pub mod page;
pub mod process;
pub mod serve;
pub mod server;
pub mod tls;
pub mod view;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use vwed_publisher::security::redact_url;
use vwed_publisher::{MemoryBus, Subjects};

use crate::auth::Auth;
use crate::broker::{Broker, MemoryBroker, NatsBroker};
use crate::config::Config;
use crate::demo::Demo;
use crate::fanout::{FanOut, TopicContext};
use crate::metrics::Metrics;
use crate::serve::HttpSettings;
use crate::server::AppState;
use crate::tls::{ServerTls, TlsListener, HANDSHAKE_TIMEOUT, MAX_PENDING_HANDSHAKES};
use crate::ws::admission::{Admission, AdmissionRules};
use crate::ws::deflate::Compression;
use crate::ws::ConnectionSettings;

pub use config::Config as HubConfig;

/// How much longer than `--write-timeout` a socket write may stall before the connection ends
/// beneath whatever is using it (see [`serve::StallLimited`]).
const WRITE_STALL_BACKSTOP: std::time::Duration = std::time::Duration::from_secs(2);

/// A running hub.
pub struct Hub {
    /// Where it accepts connections (useful when configured with port 0).
    local_addr: SocketAddr,
    /// Cancelling it starts the drain.
    shutdown: CancellationToken,
    /// The server task; ends when the drain is done. Taken by `shutdown`.
    server: Option<JoinHandle<anyhow::Result<()>>>,
    /// The embedded broker's bus, when the hub runs on one: in-process publishers (the demo, a
    /// test's owner service) publish and answer snapshots on it.
    bus: Option<MemoryBus>,
    /// The simulation that `--demo` runs; stops when the hub is dropped.
    demo: Option<Demo>,
    /// Whether the port speaks TLS, so that the URLs the hub logs say https/wss.
    tls: bool,
}

impl Hub {
    /// Connects to NATS (in the background if it is down) or sets up the embedded broker,
    /// starts the demo if asked to, binds the listener and starts serving.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let (broker, bus): (Arc<dyn Broker>, _) = match &config.nats_url {
            Some(url) => {
                // A URL may carry a password (nats://user:pass@host): never log it.
                let shown = redact_url(url);
                let security = config
                    .nats_security
                    .security()
                    .with_url_credentials(url)
                    .with_context(|| format!("invalid NATS configuration {shown:?}"))?;
                let broker = NatsBroker::connect(url, &security)
                    .await
                    .with_context(|| format!("invalid NATS configuration {shown:?}"))?;
                tracing::info!(url = %shown, security = %security.describe(), "broker: NATS");
                (Arc::new(broker), None)
            }
            None => {
                if config.nats_security.any() {
                    tracing::warn!(
                        "--nats-* authentication and TLS flags are ignored without --nats-url"
                    );
                }
                let bus = MemoryBus::new();
                if config.demo {
                    tracing::info!("broker: embedded in-process bus (no --nats-url given)");
                } else {
                    tracing::warn!(
                        "broker: embedded in-process bus (no --nats-url given): no service outside \
                         this process can publish to it; give --nats-url (VWED_NATS_URL) in production"
                    );
                }
                (Arc::new(MemoryBroker::new(&bus)), Some(bus))
            }
        };
        // The demo answers snapshots before the first client can ask for one.
        let demo = if config.demo {
            Some(demo::start(&config, bus.as_ref()).await?)
        } else {
            None
        };
        let mut hub = Self::start_with_broker(config, broker).await?;
        hub.bus = bus;
        if let Some(demo) = demo {
            demo::announce(&demo, &browsable(hub.local_addr), hub.tls).await;
            hub.demo = Some(demo);
        }
        Ok(hub)
    }

    /// Starts serving over an already connected broker (without the demo, which needs a
    /// publisher of its own; see [`Hub::start`]).
    pub async fn start_with_broker(
        config: Config,
        broker: Arc<dyn Broker>,
    ) -> anyhow::Result<Self> {
        // Bad certificate or token-key files stop the start before the port opens.
        let tls = ServerTls::from_flags(&config.tls)?;
        let auth = Auth::new(&config.auth_rules()).context("invalid token configuration")?;
        if auth.is_enabled() {
            tracing::info!("connection tokens required (JWT)");
        }
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let metrics = Arc::new(Metrics::default());
        let context = Arc::new(TopicContext {
            broker,
            subjects: Subjects::new(config.subject_prefix.clone()),
            snapshot_timeout: config.snapshot_timeout,
            metrics: metrics.clone(),
        });
        let fanout = Arc::new(FanOut::new(context));
        let follower = tokio::spawn(fanout.clone().follow_broker());
        let shutdown = CancellationToken::new();
        tokio::spawn(memory::trim_periodically(
            config.memory_trim_interval,
            shutdown.clone(),
        ));
        let connections = TaskTracker::new();
        let state = AppState {
            fanout,
            settings: ConnectionSettings {
                ping_interval: config.ping_interval,
                queue_capacity: config.client_queue,
                write_timeout: config.write_timeout,
                drain_spread: config.drain_spread,
                message_rate: config.client_message_rate,
                message_burst: config.client_message_burst,
                compression: config.compression.then_some(Compression {
                    threshold: config.compression_threshold,
                    level: config.compression_level,
                }),
            },
            shutdown: shutdown.clone(),
            connections: connections.clone(),
            admission: Arc::new(Admission::new(AdmissionRules {
                allowed_origins: config.allowed_origins.clone(),
                trusted_proxies: config.trusted_proxies.clone(),
                max_connections: config.max_connections,
                max_per_ip: config.max_connections_per_ip,
            })),
            auth: Arc::new(auth),
        };
        let app = server::router(state);
        let drain = config.shutdown_timeout;
        if config.drain_spread >= drain {
            tracing::warn!(
                spread = ?config.drain_spread,
                limit = ?drain,
                "--drain-spread is not below --shutdown-timeout: on shutdown, clients the spread \
                 places late are cut off without a close frame"
            );
        }
        let stop = shutdown.clone();
        let secure = tls.is_some();
        let listener = match tls {
            Some(tls) => {
                tokio::spawn(
                    tls.clone()
                        .watch(config.tls.tls_reload_interval, shutdown.clone()),
                );
                Listening::Tls(TlsListener::new(
                    listener,
                    tls.config(),
                    HANDSHAKE_TIMEOUT,
                    MAX_PENDING_HANDSHAKES,
                    metrics,
                )?)
            }
            None => Listening::Plain(listener),
        };
        let http = HttpSettings {
            header_read_timeout: config.http_header_timeout,
            // Behind the WebSocket's own write timeout, so that it, not this, ends a slow
            // WebSocket client (and says so in its metrics and close).
            write_stall_limit: config.write_timeout + WRITE_STALL_BACKSTOP,
        };
        let server = tokio::spawn(async move {
            // HTTP connections (requests in hand, WebSocket handshakes, idle keep-alives),
            // tracked apart from the WebSocket connections they become.
            let requests = TaskTracker::new();
            match listener {
                Listening::Plain(listener) => {
                    let listener = axum::serve::ListenerExt::tap_io(
                        listener,
                        |stream: &mut tokio::net::TcpStream| serve::no_delay(stream),
                    );
                    serve::serve(listener, app, http, stop, requests.clone()).await
                }
                // The TLS listener sets TCP_NODELAY itself, before the handshake.
                Listening::Tls(listener) => {
                    serve::serve(listener, app, http, stop, requests.clone()).await
                }
            }
            // The port is closed now. Requests in hand finish first (a WebSocket handshake
            // among them becomes a connection to close), then the WebSocket connections close,
            // all within the drain limit, so that no client can hold up the exit.
            let drained = tokio::time::timeout(drain, async {
                requests.close();
                requests.wait().await;
                connections.close();
                connections.wait().await;
            })
            .await;
            if drained.is_err() {
                tracing::warn!(?drain, "some connections did not close in time");
            }
            follower.abort();
            Ok(())
        });
        let (http, ws) = if secure {
            ("https", "wss")
        } else {
            ("http", "ws")
        };
        tracing::info!(
            addr = %local_addr,
            "serving {http}: the page at {http}://{}/, {ws}://{}/ws/..., /healthz, /readyz, /metrics",
            browsable(local_addr),
            browsable(local_addr),
        );
        Ok(Self {
            local_addr,
            shutdown,
            server: Some(server),
            bus: None,
            demo: None,
            tls: secure,
        })
    }

    /// The address the hub accepts connections on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The embedded broker's bus, when the hub runs on one (no `nats_url`).
    pub fn bus(&self) -> Option<&MemoryBus> {
        self.bus.as_ref()
    }

    /// The running demo, when started with `demo`.
    pub fn demo(&self) -> Option<&Demo> {
        self.demo.as_ref()
    }

    /// Stops accepting, closes every client with 1001 and waits (up to the drain limit).
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let drained = match self.server.take() {
            Some(server) => server.await.context("server task failed")?,
            None => Ok(()),
        };
        if let Some(demo) = self.demo.take() {
            demo.stop();
        }
        drained
    }
}

impl Drop for Hub {
    /// A hub dropped without [`Hub::shutdown`] still stops serving (without waiting for the
    /// drain), so that it never outlives its owner.
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The port the hub serves on, as it is given to the sockets the hub is about to serve over.
enum Listening {
    /// Plain HTTP and WebSocket.
    Plain(tokio::net::TcpListener),
    /// HTTPS and WSS only.
    Tls(TlsListener),
}

/// `addr` as a browser on this machine reaches it (`localhost` for an unspecified address).
pub(crate) fn browsable(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("localhost:{}", addr.port())
    } else {
        addr.to_string()
    }
}
