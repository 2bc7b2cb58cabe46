//! Running as a process: logging, start, and a graceful stop on SIGTERM or SIGINT. The
//! `vwed-hub` binary is just this; tests that need the hub as a process of its own run the same.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::{Hub, HubConfig};

/// Sets up logging as configured, runs the hub until SIGTERM or SIGINT, then drains it.
pub async fn run(config: HubConfig) -> anyhow::Result<()> {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    let hub = Hub::start(config).await?;
    shutdown_signal().await;
    tracing::info!("shutting down: closing clients with 1001");
    hub.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the hub");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
