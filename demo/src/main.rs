//! `vwed-demo`: publishes the demo simulation to a real NATS server, so that a hub started with
//! `--nats-url` shows live data on its monitoring page.

use std::time::Duration;

use clap::Parser;
use vwed_demo::{Demo, DemoConfig};
use vwed_publisher::security::redact_url;
use vwed_publisher::Publisher;

/// vwed-demo: simulated task engines and storage services for vwed-hub.
///
/// Publishes realistic task results and storage-location changes to NATS and answers the
/// hub's snapshot requests, as real services would. Run a hub with the same --nats-url and
/// --subject-prefix and open its page to watch.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    long_about,
    after_help = "Logs go to stderr; set the level with RUST_LOG (default: info), e.g. RUST_LOG=vwed_demo=debug to see every task start and end."
)]
struct Args {
    /// NATS server(s) to publish to; several may be given, comma-separated. The demo starts
    /// even when NATS is down and publishes as soon as it connects.
    #[arg(long, env = "VWED_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,

    /// First tokens of every NATS subject; must match the hub's --subject-prefix.
    #[arg(long, env = "VWED_SUBJECT_PREFIX", default_value = "vwed", value_parser = vwed_publisher::subject::parse_prefix)]
    subject_prefix: String,

    /// How many scenes to simulate (warehouse-north, warehouse-south, cold-store, then
    /// warehouse-4, ...), each with 200 to 500 storage locations.
    #[arg(long, env = "VWED_DEMO_SCENES", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..))]
    scenes: u16,

    /// Background storage-location status changes per second, across all scenes, besides
    /// those the tasks make. 0 turns them off.
    #[arg(long, env = "VWED_DEMO_CHANGES_PER_SECOND", default_value_t = 4.0, value_parser = parse_rate)]
    changes_per_second: f64,

    /// How many transport tasks run at any time.
    #[arg(long, env = "VWED_DEMO_TASKS", default_value_t = 4)]
    tasks: usize,

    /// Mean time between two results of one task (jittered ±50%).
    #[arg(long, env = "VWED_DEMO_STEP_INTERVAL", default_value = "1500ms", value_parser = parse_duration)]
    step_interval: Duration,

    /// NATS authentication and TLS: the hub's `--nats-*` flags and environment variables, so
    /// that one environment configures both.
    #[command(flatten)]
    security: vwed_publisher::NatsFlags,

    /// Log format on stderr: human-readable text, or one JSON object per line for log
    /// collectors (the hub's variable too, so one environment sets both).
    #[arg(long, env = "VWED_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, the event's fields at the top level.
    Json,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        );
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }

    // Retrying the first connection lets the demo start before NATS does; events published
    // meanwhile wait in the client's buffer.
    let security = args
        .security
        .security()
        .with_url_credentials(&args.nats_url)?;
    let options = async_nats::ConnectOptions::new()
        .name("vwed-demo")
        .retry_on_initial_connect()
        .max_reconnects(None);
    let client = security
        .apply(options)?
        // A comma-separated list of servers, as the help says; async-nats takes one per string.
        .connect(args.nats_url.split(',').map(str::trim).collect::<Vec<_>>())
        .await?;
    tracing::info!(
        url = %redact_url(&args.nats_url),
        security = %security.describe(),
        "publishing to NATS"
    );
    let publisher = Publisher::new(client).with_prefix(&args.subject_prefix);
    let config = DemoConfig {
        scenes: usize::from(args.scenes),
        status_changes_per_second: args.changes_per_second,
        concurrent_tasks: args.tasks,
        step_interval: args.step_interval,
    };
    let demo = Demo::start(publisher.clone(), config).await?;

    for scene in demo.scene_ids() {
        let locations = demo.location_count(&scene).await.unwrap_or_default();
        tracing::info!(%scene, locations, "simulating scene");
    }
    let tasks = demo.running_tasks().await;
    tracing::info!(?tasks, "tasks running");
    if let Some(scene) = demo.scene_ids().first() {
        // The hub's address is not the demo's to know (8000 on a machine, 8080 through the
        // compose file's load balancer): the path is what a reader needs.
        tracing::info!(
            "open /?scene={scene} on the page of a hub run with --nats-url {} and --subject-prefix {}",
            redact_url(&args.nats_url),
            args.subject_prefix
        );
    }
    if let Some(task) = tasks.first() {
        tracing::info!("or watch a task: /ws/task-execution/{task} on that hub");
    }

    // New tasks start all the time; naming a few now and then gives a reader fresh ids to open.
    let mut every = tokio::time::interval(Duration::from_secs(30));
    every.tick().await;
    loop {
        tokio::select! {
            _ = shutdown_signal() => break,
            _ = every.tick() => {
                tracing::info!(tasks = ?demo.running_tasks().await, "tasks running");
            }
        }
    }

    tracing::info!("stopping");
    demo.stop();
    // Hand what is buffered to the server, but do not hang on a server that is gone.
    if tokio::time::timeout(Duration::from_secs(2), publisher.flush())
        .await
        .is_err()
    {
        tracing::warn!("NATS did not take the last events in time");
    }
    Ok(())
}

/// Ctrl-C, or SIGTERM where there is one (e.g. `kill`, a container stop).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGTERM; stop with Ctrl-C");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration =
        humantime::parse_duration(text).map_err(|e| format!("{e} (try e.g. 1500ms, 2s)"))?;
    if duration.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(duration)
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate >= 0.0 => Ok(rate),
        _ => Err("must be a number of changes per second, 0 or more (e.g. 4 or 0.5)".into()),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use vwed_publisher::NatsSecurity;

    use super::*;

    #[test]
    fn defaults_match_the_library_and_the_hub() {
        let args = Args::parse_from(["vwed-demo"]);
        let config = DemoConfig::default();
        assert_eq!(args.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(args.subject_prefix, "vwed");
        assert_eq!(usize::from(args.scenes), config.scenes);
        assert_eq!(args.changes_per_second, config.status_changes_per_second);
        assert_eq!(args.tasks, config.concurrent_tasks);
        assert_eq!(args.step_interval, config.step_interval);
        assert_eq!(args.security.security(), NatsSecurity::default());
    }

    #[test]
    fn security_flags_map_onto_the_sdk() {
        let args = Args::parse_from([
            "vwed-demo",
            "--nats-user",
            "demo",
            "--nats-password",
            "s3cret",
            "--nats-tls-ca",
            "ca.pem",
            "--nats-tls-required",
        ]);
        let security = args.security.security();
        assert_eq!(security.user.as_deref(), Some("demo"));
        assert_eq!(security.password.as_deref(), Some("s3cret"));
        assert_eq!(security.tls_ca, Some(PathBuf::from("ca.pem")));
        assert!(security.tls_required);
        assert!(!format!("{args:?}").contains("s3cret"));
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in [
            &["vwed-demo", "--scenes", "0"][..],
            &["vwed-demo", "--changes-per-second", "-1"],
            &["vwed-demo", "--changes-per-second", "NaN"],
            &["vwed-demo", "--subject-prefix", "a.*"],
            &["vwed-demo", "--step-interval", "0s"],
            &["vwed-demo", "--nats-token", "t", "--nats-creds", "a.creds"],
            &["vwed-demo", "--nats-user", "u"],
        ] {
            assert!(Args::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }
}
