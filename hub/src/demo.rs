//! `--demo`: the simulated task engine and storage service (crate `vwed-demo`) on the hub's own
//! broker, so that the hub shows something with no other software.
//!
//! Behind the cargo feature `demo` (on by default, as the `vwed-hub` binary and the image
//! need it): a program that embeds the hub library with `default-features = false` does not
//! compile the simulation in, and `--demo` then fails at start with an error that says why.

use anyhow::Context;
use vwed_publisher::MemoryBus;

use crate::config::Config;

#[cfg(feature = "demo")]
pub use vwed_demo::Demo;

/// Without the `demo` feature there is no demo to hold: this type has no values.
#[cfg(not(feature = "demo"))]
pub enum Demo {}

#[cfg(not(feature = "demo"))]
impl Demo {
    /// Nothing to stop.
    pub fn stop(self) {}
}

/// Starts the simulated services on the hub's own broker: the embedded bus, or a NATS connection
/// of their own.
#[cfg(feature = "demo")]
pub async fn start(config: &Config, bus: Option<&MemoryBus>) -> anyhow::Result<Demo> {
    use vwed_publisher::Publisher;

    let publisher = match (bus, &config.nats_url) {
        (Some(bus), _) => Publisher::in_process(bus.clone()),
        (None, url) => {
            let url = url.as_deref().unwrap_or_default();
            tracing::warn!(
                "--demo on NATS: the demo answers snapshots for every key under the prefix \
                 {:?}; run it on one hub only, and never beside real services on that prefix",
                config.subject_prefix
            );
            let options = async_nats::ConnectOptions::new()
                .name("vwed-hub-demo")
                .retry_on_initial_connect()
                .max_reconnects(None);
            Publisher::new(
                config
                    .nats_security
                    .security()
                    .with_url_credentials(url)?
                    .apply(options)?
                    .connect(crate::broker::server_list(url))
                    .await
                    .context("the demo cannot reach NATS")?,
            )
        }
    };
    Demo::start(
        publisher.with_prefix(config.subject_prefix.clone()),
        vwed_demo::DemoConfig::default(),
    )
    .await
    .context("the demo could not start")
}

/// Without the `demo` feature: `--demo` is refused, naming the feature.
#[cfg(not(feature = "demo"))]
pub async fn start(_config: &Config, _bus: Option<&MemoryBus>) -> anyhow::Result<Demo> {
    Err(anyhow::anyhow!(
        "--demo: this build of the hub has no demo (built without the cargo feature `demo`)"
    ))
    .context("the demo could not start")
}

/// Logs what the demo runs and where to watch it; `host` is how a browser reaches the hub.
#[cfg(feature = "demo")]
pub async fn announce(demo: &Demo, host: &str, tls: bool) {
    let scenes = demo.scene_ids();
    let tasks = demo.running_tasks().await;
    let scheme = if tls { "https" } else { "http" };
    let first_scene = scenes.first().map(String::as_str).unwrap_or_default();
    tracing::info!(scenes = ?scenes, tasks = ?tasks, "demo running");
    tracing::info!("open {scheme}://{host}/?scene={first_scene} to watch it");
}

/// Without the `demo` feature there is never a demo to announce.
#[cfg(not(feature = "demo"))]
pub async fn announce(demo: &Demo, _host: &str, _tls: bool) {
    match *demo {}
}
