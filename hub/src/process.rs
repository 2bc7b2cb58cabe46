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
    // Each client is a file; the usual soft limit (1024) would cap the hub far below its size.
    let open_files = raise_fd_limit();
    if config.max_connections == 0
        || u64::try_from(config.max_connections).unwrap_or(u64::MAX) > open_files
    {
        tracing::info!(
            open_files,
            "open-file limit: connections past it are refused by the system"
        );
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

/// Raises this process's soft limit on open files to its hard limit; returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    limit.rlim_cur
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_open_file_limit_can_be_raised_to_the_hard_limit() {
        assert!(super::raise_fd_limit() > 0);
    }
}
