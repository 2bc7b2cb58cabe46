//! The parent's side of the worker processes: spawn them, drive them together, merge what they
//! report.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command as Process};

use crate::client::new_histogram;
use crate::worker::{add_pairs, Command, Event, Job};

/// One worker process and its pipes.
struct WorkerProcess {
    /// The process; killed on drop.
    _child: Child,
    /// Where commands go.
    stdin: ChildStdin,
    /// Where its events come from.
    events: Lines<BufReader<ChildStdout>>,
}

impl WorkerProcess {
    async fn send(&mut self, command: &Command) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(command)?;
        line.push(b'\n');
        self.stdin.write_all(&line).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    async fn receive(&mut self) -> anyhow::Result<Event> {
        let line = self
            .events
            .next_line()
            .await?
            .context("a worker process ended early (see its errors above)")?;
        serde_json::from_str(&line).with_context(|| format!("a worker said {line:?}"))
    }
}

/// The clients, connected.
#[derive(Debug, Clone)]
pub struct Connected {
    /// Clients subscribed.
    pub connected: usize,
    /// Clients that failed to connect or subscribe.
    pub failed: usize,
    /// From the connect command until every client settled.
    pub elapsed: Duration,
    /// Time from the connect command to subscribed, per client, in microseconds.
    pub ready_us: Histogram<u64>,
}

/// What a round delivered, over every worker.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// Stamped events received.
    pub delivered: u64,
    /// Events the clients should have received.
    pub expected: u64,
    /// Missing events, summed per client.
    pub lost: u64,
    /// Events beyond the expected count.
    pub extra: u64,
    /// Events of earlier rounds that came late.
    pub stale: u64,
    /// Clients whose connection has ended.
    pub closed: usize,
    /// Their close codes with counts.
    pub close_codes: Vec<(u16, usize)>,
    /// Latency, microseconds.
    pub latency_us: Histogram<u64>,
}

/// The worker processes of one target.
pub struct Pool {
    /// The processes, each with a share of the clients.
    workers: Vec<WorkerProcess>,
}

impl Pool {
    /// Spawns enough workers for `clients` clients (at most `per_worker` each) and hands out
    /// the job. Nothing connects until [`Pool::connect`].
    pub async fn spawn(template: &Job, clients: usize, per_worker: usize) -> anyhow::Result<Self> {
        let per_worker = per_worker.max(1);
        let count = clients.div_ceil(per_worker).max(1);
        let exe = std::env::current_exe().context("finding this executable")?;
        let mut workers = Vec::with_capacity(count);
        for w in 0..count {
            let first = w * clients / count;
            let end = (w + 1) * clients / count;
            let mut command = Process::new(&exe);
            command
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            let mut child = command.spawn().context("starting a worker process")?;
            let stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let mut worker = WorkerProcess {
                _child: child,
                stdin,
                events: BufReader::new(stdout).lines(),
            };
            match worker.receive().await? {
                Event::Started { fd_limit } if (fd_limit as usize) < end - first + 64 => bail!(
                    "a worker may open only {fd_limit} files, too few for {} clients: lower \
                     --clients-per-worker",
                    end - first
                ),
                Event::Started { .. } => {}
                other => bail!("a worker started with {other:?}"),
            }
            let job = Job {
                first_client: first,
                clients: end - first,
                ..template.clone()
            };
            let mut line = serde_json::to_vec(&job)?;
            line.push(b'\n');
            worker.stdin.write_all(&line).await?;
            workers.push(worker);
        }
        Ok(Self { workers })
    }

    async fn broadcast(&mut self, command: &Command) -> anyhow::Result<Vec<Event>> {
        for worker in &mut self.workers {
            worker.send(command).await?;
        }
        let mut events = Vec::with_capacity(self.workers.len());
        for worker in &mut self.workers {
            events.push(worker.receive().await?);
        }
        Ok(events)
    }

    /// Connects every client at once (each worker paces its own handshakes) and waits until all
    /// are subscribed or failed.
    pub async fn connect(&mut self) -> anyhow::Result<Connected> {
        let start = Instant::now();
        let events = self.broadcast(&Command::Connect).await?;
        let elapsed = start.elapsed();
        let mut connected = Connected {
            connected: 0,
            failed: 0,
            elapsed,
            ready_us: new_histogram(),
        };
        for event in events {
            let Event::Ready {
                connected: c,
                failed,
                ready_us,
            } = event
            else {
                bail!("a worker answered connect with {event:?}");
            };
            connected.connected += c;
            connected.failed += failed;
            add_pairs(&mut connected.ready_us, &ready_us);
        }
        Ok(connected)
    }

    /// Starts round `round` in every worker.
    pub async fn round(&mut self, round: u32) -> anyhow::Result<()> {
        for event in self.broadcast(&Command::Round { round }).await? {
            if !matches!(event, Event::RoundStarted { round: r } if r == round) {
                bail!("a worker answered round {round} with {event:?}");
            }
        }
        Ok(())
    }

    /// Ends the round: `expected` events per stream were published.
    pub async fn finish(&mut self, expected: &[u64], grace: Duration) -> anyhow::Result<Delivered> {
        let command = Command::Finish {
            expected: expected.to_vec(),
            grace_ms: grace.as_millis() as u64,
        };
        let mut total = Delivered {
            delivered: 0,
            expected: 0,
            lost: 0,
            extra: 0,
            stale: 0,
            closed: 0,
            close_codes: Vec::new(),
            latency_us: new_histogram(),
        };
        let mut codes: std::collections::BTreeMap<u16, usize> = Default::default();
        for event in self.broadcast(&command).await? {
            let Event::Report {
                delivered,
                expected,
                lost,
                extra,
                stale,
                closed,
                close_codes,
                latency_us,
            } = event
            else {
                bail!("a worker answered finish with {event:?}");
            };
            total.delivered += delivered;
            total.expected += expected;
            total.lost += lost;
            total.extra += extra;
            total.stale += stale;
            total.closed += closed;
            for (code, count) in close_codes {
                *codes.entry(code).or_default() += count;
            }
            add_pairs(&mut total.latency_us, &latency_us);
        }
        total.close_codes = codes.into_iter().collect();
        Ok(total)
    }
}
