//! A simulated task engine: starts a task every few seconds, runs its blocks one after another
//! (appending `RUNNING` results), ends it in `SUCCESS` or `FAILED`, and answers the hub's
//! snapshot requests from the same in-memory state, read together with its rev.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::sync::Mutex;
use vwed_publisher::{Publisher, TaskChange, TaskEvent, TaskResult, TaskSnapshot, TaskStatus};

/// Publishes simulated task execution results to NATS for vwed-hub.
#[derive(Parser)]
struct Args {
    /// NATS server to publish to.
    #[arg(long, env = "VWED_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Subject prefix; must match the hub's.
    #[arg(long, env = "VWED_SUBJECT_PREFIX", default_value = "vwed")]
    subject_prefix: String,
    /// Seconds between new tasks.
    #[arg(long, default_value_t = 5)]
    every: u64,
}

/// Each task's rev and results, changed and read under one lock.
type Tasks = Arc<Mutex<HashMap<String, (u64, Vec<TaskResult>)>>>;

const BLOCKS: [&str; 5] = [
    "[取货] 前往货架",
    "[取货] 叉取托盘",
    "[运输] 前往站点",
    "[放货] 放下托盘",
    "[完成] 返回待命点",
];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().init();
    let args = Args::parse();
    let client = async_nats::connect(&args.nats_url).await?;
    let publisher = Publisher::new(client).with_prefix(&args.subject_prefix);
    let tasks: Tasks = Arc::default();

    let state = tasks.clone();
    let _responder = publisher
        .serve_task_snapshots(move |id: String| {
            let state = state.clone();
            async move {
                let tasks = state.lock().await;
                Ok::<_, std::convert::Infallible>(tasks.get(&id).map(|(rev, results)| {
                    TaskSnapshot {
                        task_record_id: id,
                        rev: *rev,
                        results: results.clone(),
                    }
                }))
            }
        })
        .await?;
    tracing::info!(url = %args.nats_url, "task engine running; watch a task at ws://localhost:8000/ws/task-execution/task-1");

    for number in 1.. {
        let id = format!("task-{number}");
        tracing::info!(%id, "starting task");
        tokio::spawn(run_task(publisher.clone(), tasks.clone(), id));
        tokio::time::sleep(Duration::from_secs(args.every)).await;
    }
    Ok(())
}

async fn run_task(publisher: Publisher, tasks: Tasks, id: String) {
    let fails_at = (fastrand::u8(0..4) == 0).then(|| fastrand::usize(1..BLOCKS.len()));
    for (step, block) in BLOCKS.iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(500..2000))).await;
        let status = match fails_at {
            Some(at) if at == step => TaskStatus::Failed,
            _ if step + 1 == BLOCKS.len() => TaskStatus::Success,
            _ => TaskStatus::Running,
        };
        if let Err(error) = append(&publisher, &tasks, &id, TaskResult::now(*block, status)).await {
            tracing::warn!(%id, %error, "could not publish");
        }
        if status != TaskStatus::Running {
            tracing::info!(%id, ?status, "task ended");
            return;
        }
    }
}

/// Appends a result and publishes it with the rev stored beside it, under one lock, so a
/// snapshot never shows state without its rev or the other way round.
async fn append(
    publisher: &Publisher,
    tasks: &Tasks,
    id: &str,
    result: TaskResult,
) -> Result<(), vwed_publisher::Error> {
    let mut tasks = tasks.lock().await;
    let (rev, results) = tasks.entry(id.to_owned()).or_default();
    *rev = publisher.next_rev();
    results.push(result.clone());
    let event = TaskEvent {
        task_record_id: id.to_owned(),
        rev: *rev,
        prev_rev: None,
        change: TaskChange::Append {
            index: (results.len() - 1) as u64,
            results: vec![result],
        },
    };
    publisher.publish_task(&event).await
}
