//! A task snapshot responder on the Rust SDK, for cross-language tests: a Python test runs it
//! beside a Python responder in the same queue group and checks that the hub's requests are
//! answered by both, with the same bytes on the wire.
//!
//! It answers every task record id with one fixed result whose context is `answered by rust`,
//! so a test can tell which SDK answered. Once it listens (subscribed and flushed), it prints
//! the line `ready` to stdout and nothing else there (logs go to stderr, with `RUST_LOG`); it
//! serves until SIGTERM or SIGINT. Stdin is not watched, so a test must kill it.

use std::convert::Infallible;
use std::io::Write;

use anyhow::Context;
use clap::Parser;
use vwed_publisher::{Publisher, TaskResult, TaskSnapshot, TaskStatus};

/// The responder's command line.
#[derive(Parser)]
#[command(about = "Answer every task snapshot request through the Rust SDK, for tests.")]
struct Args {
    /// NATS server to serve on.
    #[arg(long, env = "VWED_NATS_URL")]
    nats_url: String,

    /// First tokens of every NATS subject; must match the hub's.
    #[arg(long, env = "VWED_SUBJECT_PREFIX", default_value = "vwed",
          value_parser = vwed_publisher::subject::parse_prefix)]
    subject_prefix: String,
}

/// The snapshot of any task: rev 1 and one result that names this SDK.
fn snapshot(task_record_id: String) -> TaskSnapshot {
    TaskSnapshot {
        task_record_id,
        rev: 1,
        results: vec![TaskResult {
            created_at: "2025-06-11T12:00:00.000Z".into(),
            context: "answered by rust".into(),
            status: TaskStatus::Success,
        }],
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();

    // The SIGTERM handler first, so that a test stopping the responder right after `ready`
    // finds it in place.
    #[cfg(unix)]
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;

    let client = async_nats::connect(args.nats_url.as_str())
        .await
        .with_context(|| format!("cannot connect to {}", args.nats_url))?;
    let publisher = Publisher::new(client).with_prefix(args.subject_prefix);
    let responder = publisher
        .serve_task_snapshots(|id: String| async move { Ok::<_, Infallible>(Some(snapshot(id))) })
        .await
        .context("cannot serve task snapshots")?;
    // The subscription reaches the server before `ready`, so no request after it goes unheard.
    publisher.flush().await.context("cannot flush")?;

    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "ready").context("cannot write to stdout")?;
        stdout.flush().context("cannot flush stdout")?;
    }

    #[cfg(unix)]
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("cannot listen for Ctrl-C")?;
    responder.stop();
    Ok(())
}
