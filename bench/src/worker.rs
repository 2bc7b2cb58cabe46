//! The hidden `worker` subcommand: a process that holds a share of the clients, driven by the
//! parent over JSON lines (commands on stdin, events on stdout). One process may hold only about
//! 20,000 open files on these machines, so large scenarios need several.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Semaphore;

use crate::client::{self, ClientStat, Dial, Latencies, Settler, Shared, StreamSpec};
use crate::target::TargetKind;

/// Everything a worker needs to know about its clients; the first line on its stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// Hub or nats-server.
    pub kind: TargetKind,
    /// `ws://host:port` of the target.
    pub ws_base: String,
    /// What clients subscribe to; client `i` (counted over all workers) takes stream
    /// `i % streams.len()`.
    pub streams: Vec<StreamSpec>,
    /// The global index of this worker's first client.
    pub first_client: usize,
    /// How many clients this worker holds.
    pub clients: usize,
    /// The hub message type that counts as a delivery.
    pub counted_type: String,
    /// Loopback source addresses to rotate over (127.0.0.1 ..= 127.0.0.N).
    pub sources: u8,
    /// Handshakes in flight at once; 0: all at once (a connect storm).
    pub connect_concurrency: usize,
    /// How long clients may take to be subscribed.
    pub ready_timeout_ms: u64,
    /// Whether clients offer permessage-deflate.
    #[serde(default)]
    pub compression: bool,
}

/// A command from the parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Connect every client and subscribe; answered with [`Event::Ready`].
    Connect,
    /// Count only events of `round` from now on, with fresh counters; answered with
    /// [`Event::RoundStarted`].
    Round {
        /// The round number stamped into its events.
        round: u32,
    },
    /// Publishing is over: wait until each client has its `expected[stream]` events, or until
    /// nothing arrived for `grace_ms`; answered with [`Event::Report`].
    Finish {
        /// Events published per stream.
        expected: Vec<u64>,
        /// How long to wait without progress before giving up on missing events.
        grace_ms: u64,
    },
}

/// A report to the parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Started; reads its job next.
    Started {
        /// The open-file limit it raised itself to.
        fd_limit: u64,
    },
    /// Every client is subscribed or has failed.
    Ready {
        /// Clients subscribed.
        connected: usize,
        /// Clients that could not connect or subscribe.
        failed: usize,
        /// Time-to-subscribed histogram, microseconds from the connect command.
        ready_us: Vec<(u64, u64)>,
    },
    /// The round began.
    RoundStarted {
        /// Its number.
        round: u32,
    },
    /// The round's counts.
    Report {
        /// Stamped events of the round received, over all clients.
        delivered: u64,
        /// Events the clients should have received.
        expected: u64,
        /// Expected events missing, summed per client.
        lost: u64,
        /// Events received beyond the expected count (duplicates), summed per client.
        extra: u64,
        /// Events of earlier rounds that arrived during this one.
        stale: u64,
        /// Clients whose connection has ended.
        closed: usize,
        /// Close codes of the ended connections, with counts.
        close_codes: Vec<(u16, usize)>,
        /// Latency histogram, microseconds.
        latency_us: Vec<(u64, u64)>,
    },
}

/// A histogram as (value, count) pairs, for the trip to the parent.
pub fn histogram_to_pairs(histogram: &Histogram<u64>) -> Vec<(u64, u64)> {
    histogram
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

/// Adds (value, count) pairs into `histogram`.
pub fn add_pairs(histogram: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for &(value, count) in pairs {
        let _ = histogram.record_n(value.max(1), count);
    }
}

async fn emit(event: &Event) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(event)?;
    line.push(b'\n');
    let mut stdout = tokio::io::stdout();
    stdout.write_all(&line).await?;
    stdout.flush().await?;
    Ok(())
}

/// The worker process: runs until its stdin closes.
pub async fn run() -> anyhow::Result<()> {
    let fd_limit = vwed_hub::process::raise_fd_limit();
    emit(&Event::Started { fd_limit }).await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let job_line = lines.next_line().await?.context("no job on stdin")?;
    let job: Job = serde_json::from_str(&job_line).context("reading the job")?;
    let addr = resolve(&job.ws_base).await?;
    let streams: Vec<Arc<StreamSpec>> = job.streams.iter().cloned().map(Arc::new).collect();
    anyhow::ensure!(!streams.is_empty(), "a job needs at least one stream");
    let mut shared = Arc::new(Shared {
        round: Default::default(),
        latencies: Latencies::new(16),
        ready_times: Latencies::new(1),
        start: Instant::now(),
        counted: client::counted_prefix(&job.counted_type),
        settled: Default::default(),
        settled_notify: Default::default(),
    });
    let stats: Vec<Arc<ClientStat>> = (0..job.clients).map(|_| Arc::default()).collect();
    while let Some(line) = lines.next_line().await? {
        let command: Command = serde_json::from_str(&line).context("reading a command")?;
        match command {
            Command::Connect => {
                if let Some(fresh) = Arc::get_mut(&mut shared) {
                    fresh.start = Instant::now();
                }
                let ready = connect_all(&job, addr, &streams, &stats, &shared).await;
                emit(&ready).await?;
            }
            Command::Round { round } => {
                shared.round.store(round, Ordering::Release);
                for stat in &stats {
                    stat.received.store(0, Ordering::Relaxed);
                    stat.stale.store(0, Ordering::Relaxed);
                }
                shared.latencies.merged(true);
                emit(&Event::RoundStarted { round }).await?;
            }
            Command::Finish { expected, grace_ms } => {
                let report = finish(
                    &job,
                    &stats,
                    &shared,
                    &expected,
                    Duration::from_millis(grace_ms),
                )
                .await;
                emit(&report).await?;
            }
        }
    }
    Ok(())
}

/// The IPv4 address of a `ws://host:port` URL.
pub async fn resolve(ws_base: &str) -> anyhow::Result<SocketAddr> {
    let host_port = ws_base
        .strip_prefix("ws://")
        .context("the target URL must start with ws://")?;
    let host_port = host_port.split('/').next().unwrap_or(host_port);
    tokio::net::lookup_host(host_port)
        .await?
        .find(SocketAddr::is_ipv4)
        .with_context(|| format!("no IPv4 address for {host_port}"))
}

async fn connect_all(
    job: &Job,
    addr: SocketAddr,
    streams: &[Arc<StreamSpec>],
    stats: &[Arc<ClientStat>],
    shared: &Arc<Shared>,
) -> Event {
    let permits = Arc::new(Semaphore::new(if job.connect_concurrency == 0 {
        Semaphore::MAX_PERMITS
    } else {
        job.connect_concurrency
    }));
    for (offset, stat) in stats.iter().enumerate() {
        let index = job.first_client + offset;
        let dial = Dial {
            kind: job.kind,
            addr,
            ws_base: job.ws_base.clone(),
            source: Ipv4Addr::new(
                127,
                0,
                0,
                1 + (index % usize::from(job.sources.max(1))) as u8,
            ),
            recv_buffer: None,
            compression: job.compression,
        };
        let spec = streams[index % streams.len()].clone();
        let (stat, shared, permits) = (stat.clone(), shared.clone(), permits.clone());
        tokio::spawn(async move {
            // Held until this client settles, so that at most `connect_concurrency` handshakes
            // and subscriptions are in flight.
            let permit = permits.acquire_owned().await.ok();
            client::run(index, dial, spec, stat, shared, Settler::new(permit)).await;
        });
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(job.ready_timeout_ms);
    while shared.settled.load(Ordering::Acquire) < stats.len() as u64 {
        if tokio::time::timeout_at(deadline, shared.settled_notify.notified())
            .await
            .is_err()
        {
            break;
        }
    }
    let connected = stats
        .iter()
        .filter(|s| s.ready.load(Ordering::Acquire))
        .count();
    Event::Ready {
        connected,
        failed: stats.len() - connected,
        ready_us: histogram_to_pairs(&shared.ready_times.merged(false)),
    }
}

async fn finish(
    job: &Job,
    stats: &[Arc<ClientStat>],
    shared: &Shared,
    expected: &[u64],
    grace: Duration,
) -> Event {
    let expected_of = |offset: usize| {
        let stream = (job.first_client + offset) % job.streams.len();
        expected.get(stream).copied().unwrap_or(0)
    };
    let mut last_total = u64::MAX;
    let mut last_progress = Instant::now();
    loop {
        let mut total = 0;
        let mut complete = true;
        for (offset, stat) in stats.iter().enumerate() {
            let received = stat.received.load(Ordering::Relaxed);
            total += received;
            if stat.ready.load(Ordering::Acquire)
                && stat.closed.load(Ordering::Acquire) == 0
                && received < expected_of(offset)
            {
                complete = false;
            }
        }
        if complete {
            break;
        }
        if total != last_total {
            last_total = total;
            last_progress = Instant::now();
        } else if last_progress.elapsed() >= grace {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut delivered, mut expected_sum, mut lost, mut extra, mut stale) = (0, 0, 0, 0, 0);
    let mut codes: std::collections::BTreeMap<u16, usize> = Default::default();
    for (offset, stat) in stats.iter().enumerate() {
        if !stat.ready.load(Ordering::Acquire) {
            continue;
        }
        let received = stat.received.load(Ordering::Relaxed);
        let want = expected_of(offset);
        delivered += received;
        expected_sum += want;
        lost += want.saturating_sub(received);
        extra += received.saturating_sub(want);
        stale += stat.stale.load(Ordering::Relaxed);
        let code = stat.closed.load(Ordering::Acquire);
        if code != 0 {
            *codes.entry(code).or_default() += 1;
        }
    }
    Event::Report {
        delivered,
        expected: expected_sum,
        lost,
        extra,
        stale,
        closed: codes.values().sum(),
        close_codes: codes.into_iter().collect(),
        latency_us: histogram_to_pairs(&shared.latencies.merged(false)),
    }
}
