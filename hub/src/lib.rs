//! # vwed-hub
//!
//! A stateless realtime hub for the VWED WebSocket API. Task engines and storage services publish
//! change events to NATS (through the `vwed-publisher` SDK); the hub subscribes only to the keys
//! its clients watch, keeps a view of each, and fans events out to WebSocket clients exactly as
//! the original API document describes.
//!
//! The layout follows the data:
//! [`broker`] (NATS) → [`fanout`] (one topic task per watched key) → [`view`] (state, filters,
//! rendering) → [`ws`] (endpoints and connections), with [`messages`] the client-facing wire and
//! `vwed_publisher::wire` the publisher-facing one.

pub mod broker;
pub mod config;
pub mod fanout;
pub mod messages;
pub mod metrics;
pub mod server;
pub mod view;
pub mod ws;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use vwed_publisher::Subjects;

use crate::broker::{Broker, NatsBroker};
use crate::config::Config;
use crate::fanout::{FanOut, TopicContext};
use crate::metrics::Metrics;
use crate::server::AppState;
use crate::ws::ConnectionSettings;

pub use config::Config as HubConfig;

/// A running hub.
pub struct Hub {
    /// Where it accepts connections (useful when configured with port 0).
    local_addr: SocketAddr,
    /// Cancelling it starts the drain.
    shutdown: CancellationToken,
    /// The server task; ends when the drain is done.
    server: JoinHandle<anyhow::Result<()>>,
}

impl Hub {
    /// Connects to the broker (in the background if it is down), binds the listener and starts
    /// serving.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let broker = NatsBroker::connect(&config.nats_url)
            .await
            .with_context(|| format!("invalid NATS configuration {:?}", config.nats_url))?;
        tracing::info!(url = %config.nats_url, "using NATS broker");
        Self::start_with_broker(config, Arc::new(broker)).await
    }

    /// Starts serving over an already connected broker.
    pub async fn start_with_broker(
        config: Config,
        broker: Arc<dyn Broker>,
    ) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let context = Arc::new(TopicContext {
            broker,
            subjects: Subjects::new(config.subject_prefix.clone()),
            snapshot_timeout: config.snapshot_timeout,
            metrics: Arc::new(Metrics::default()),
        });
        let fanout = Arc::new(FanOut::new(context));
        let follower = tokio::spawn(fanout.clone().follow_broker());
        let shutdown = CancellationToken::new();
        let connections = TaskTracker::new();
        let state = AppState {
            fanout,
            settings: ConnectionSettings {
                ping_interval: config.ping_interval,
                queue_capacity: config.client_queue,
                write_timeout: config.write_timeout,
            },
            shutdown: shutdown.clone(),
            connections: connections.clone(),
        };
        let app = server::router(state);
        let drain = config.shutdown_timeout;
        let stop = shutdown.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .context("server failed")?;
            connections.close();
            if tokio::time::timeout(drain, connections.wait())
                .await
                .is_err()
            {
                tracing::warn!(?drain, "some connections did not close in time");
            }
            follower.abort();
            Ok(())
        });
        tracing::info!(addr = %local_addr, "serving /ws, /healthz, /readyz, /metrics");
        Ok(Self {
            local_addr,
            shutdown,
            server,
        })
    }

    /// The address the hub accepts connections on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, closes every client with 1001 and waits (up to the drain limit).
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.server.await.context("server task failed")?
    }
}
