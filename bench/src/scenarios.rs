//! The scenarios: each sets up keys and clients, runs measuring rounds, and reports.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use vwed_publisher::{StorageLocation, Subjects};

use crate::cli::{
    ClientArgs, CompareArgs, ConnectStormArgs, FanoutArgs, IdleArgs, ManyKeysArgs, SlowClientArgs,
    StorageArgs,
};
use crate::client::{self, Dial, StreamSpec};
use crate::owner::{Owner, Pacer};
use crate::pool::{Connected, Delivered, Pool};
use crate::procfs::{self, CpuMeter};
use crate::report::{print_table, ratio, Report};
use crate::target::{Env, Target, TargetArgs, TargetKind};
use crate::worker::Job;

/// The hub message type of task deliveries.
const TASK_UPDATE: &str = "task_execution_update";
/// The hub message type of scene status deliveries.
const STATUS_CHANGE: &str = "storage_location_status_change";

/// The key of task `i`.
fn task_key(i: usize) -> String {
    format!("bench-{i}")
}

/// Subscribing to task `key`'s events on endpoint 2 (or its subject on nats-server).
fn broadcast_stream(key: &str) -> StreamSpec {
    StreamSpec {
        path: format!("/ws/task-execution-broadcast/{key}"),
        subject: Subjects::default().task_events(key),
        get_status: true,
    }
}

fn job(
    target: &Target,
    streams: Vec<StreamSpec>,
    counted: &str,
    spread: &ClientArgs,
    storm: bool,
) -> Job {
    Job {
        kind: target.kind,
        ws_base: target.ws_base.clone(),
        streams,
        first_client: 0,
        clients: 0,
        counted_type: counted.to_owned(),
        sources: spread.source_addresses,
        connect_concurrency: if storm { 0 } else { spread.connect_concurrency },
        ready_timeout_ms: spread.ready_timeout.as_millis() as u64,
        compression: target.compression,
    }
}

/// Spawns the workers and connects every client.
async fn connect(
    job: &Job,
    clients: usize,
    spread: &ClientArgs,
) -> anyhow::Result<(Pool, Connected)> {
    let mut pool = Pool::spawn(job, clients, spread.clients_per_worker).await?;
    let connected = pool.connect().await?;
    eprintln!(
        "{} clients subscribed to {} in {:.2}s ({} failed)",
        connected.connected,
        job.kind.name(),
        connected.elapsed.as_secs_f64(),
        connected.failed
    );
    Ok((pool, connected))
}

/// A report with the connection figures filled in.
fn connected_report(
    scenario: &str,
    target: &Target,
    clients: usize,
    connected: &Connected,
) -> Report {
    let mut report = Report::new(scenario, target.kind.name());
    report.clients = clients;
    report.connected = connected.connected;
    report.failed = connected.failed;
    report.connect_secs = connected.elapsed.as_secs_f64();
    report.connect_rate = if report.connect_secs > 0.0 {
        connected.connected as f64 / report.connect_secs
    } else {
        0.0
    };
    report
}

/// What is published in a round.
enum Traffic<'a> {
    /// Events spread round-robin over task keys; stream `i` is key `i`.
    Tasks {
        /// The keys.
        keys: &'a [String],
        /// Extra bytes per event (see `Owner::task_event`).
        padding: usize,
    },
    /// Status changes on random locations of one scene; location `i` belongs to stream
    /// `streams_of[i]`.
    Scene {
        /// The scene.
        key: &'a str,
        /// The stream (filter) of each location.
        stream_of: &'a [usize],
        /// Streams in all.
        streams: usize,
    },
}

/// One measuring round.
struct Measured {
    /// Events published.
    published: u64,
    /// How long publishing took.
    publish_secs: f64,
    /// What the clients received.
    delivered: Delivered,
    /// The target's CPU over publishing and draining.
    cpu_percent: Option<f64>,
    /// The target's RSS at the end.
    rss_end: Option<u64>,
    /// The highest RSS sampled during the round.
    rss_max: Option<u64>,
}

/// Samples a process's RSS every 100 ms, keeping the highest, until dropped.
struct RssSampler {
    /// The highest RSS seen.
    max: Arc<AtomicU64>,
    /// The sampling task; aborted on drop.
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: Option<u32>) -> Self {
        let max = Arc::new(AtomicU64::new(0));
        let seen = max.clone();
        let task = tokio::spawn(async move {
            let Some(pid) = pid else { return };
            loop {
                if let Some(rss) = procfs::rss_bytes(pid) {
                    seen.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self { max, task }
    }

    fn max(&self) -> Option<u64> {
        Some(self.max.load(Ordering::Relaxed)).filter(|&m| m > 0)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The load of one round.
struct Load<'a> {
    /// The round's number, stamped into its events.
    round: u32,
    /// What is published.
    traffic: &'a Traffic<'a>,
    /// Events per second, over all keys.
    rate: f64,
    /// How long.
    duration: Duration,
    /// How long to wait for missing deliveries without progress.
    grace: Duration,
}

/// Publishes the load, then collects what the clients received.
async fn measure(
    pool: &mut Pool,
    owner: &Owner,
    target: &Target,
    load: Load<'_>,
) -> anyhow::Result<Measured> {
    let Load {
        round,
        traffic,
        rate,
        duration,
        grace,
    } = load;
    pool.round(round).await?;
    let sampler = RssSampler::start(target.pid);
    let cpu = CpuMeter::start(target.pid);
    let streams = match traffic {
        Traffic::Tasks { keys, .. } => keys.len(),
        Traffic::Scene { streams, .. } => *streams,
    };
    let mut expected = vec![0u64; streams];
    let mut seqs = vec![0u64; streams];
    let mut next_key = 0usize;
    let mut rng = fastrand::Rng::with_seed(u64::from(round));
    let mut pacer = Pacer::new(rate, duration);
    let mut published = 0u64;
    while let Some(batch) = pacer.next_batch().await {
        for _ in 0..batch {
            match traffic {
                Traffic::Tasks { keys, padding } => {
                    let k = next_key % keys.len();
                    next_key += 1;
                    let event = owner.task_event(&keys[k], round, seqs[k], *padding);
                    owner.publish_task(&event).await?;
                    seqs[k] += 1;
                    expected[k] += 1;
                }
                Traffic::Scene { key, stream_of, .. } => {
                    let location = rng.usize(..stream_of.len());
                    let stream = stream_of[location];
                    let event = owner
                        .status_event(key, location, round, seqs[stream])
                        .context("the scene was not seeded")?;
                    owner.publish_scene(&event).await?;
                    seqs[stream] += 1;
                    expected[stream] += 1;
                }
            }
            published += 1;
        }
    }
    owner.flush().await?;
    let publish_secs = pacer.elapsed().as_secs_f64();
    let delivered = pool.finish(&expected, grace).await?;
    Ok(Measured {
        published,
        publish_secs,
        delivered,
        cpu_percent: cpu.percent(),
        rss_end: target.pid.and_then(procfs::rss_bytes),
        rss_max: sampler.max(),
    })
}

/// Fills a report's delivery figures from a round.
fn fill(report: &mut Report, measured: &Measured) {
    let d = &measured.delivered;
    report.events_published = measured.published;
    report.expected = d.expected;
    report.delivered = d.delivered;
    report.delivered_per_sec = if measured.publish_secs > 0.0 {
        (d.delivered as f64 / measured.publish_secs).round()
    } else {
        0.0
    };
    report.set_latency(&d.latency_us);
    report.lost = d.lost;
    report.duplicates = d.extra;
    report.closed = d.closed;
    report.hub_rss_bytes = measured.rss_end;
    report.hub_cpu_percent = measured.cpu_percent.map(|c| (c * 10.0).round() / 10.0);
    report.set("publish_secs", measured.publish_secs);
    if d.stale > 0 {
        report.set("stale", d.stale);
    }
    if !d.close_codes.is_empty() {
        report.set("close_codes", &d.close_codes);
    }
}

/// `fanout` against `target`: returns the report (with --sweep: the best passing step's).
/// What a `fanout` run does.
#[derive(Clone, Copy)]
struct FanoutPlan {
    /// Subscribers.
    clients: usize,
    /// Events per second (the first rate tried, when sweeping).
    rate: f64,
    /// Publishing time (per sweep step).
    duration: Duration,
    /// Sweep with this p99 limit (ms) and at most this many steps.
    sweep: Option<(f64, usize)>,
    /// Extra bytes per event.
    padding: usize,
}

async fn fanout_on(
    env: &Env,
    owner: &Owner,
    kind: TargetKind,
    plan: &FanoutPlan,
    spread: &ClientArgs,
) -> anyhow::Result<Report> {
    let FanoutPlan {
        clients,
        rate,
        duration,
        sweep,
        padding,
    } = *plan;
    let target = env.target(kind)?;
    let keys = vec![task_key(0)];
    owner.seed_task(&keys[0]);
    let requests_before: u64 = owner.snapshot_requests().values().sum();
    let requests = || owner.snapshot_requests().values().sum::<u64>() - requests_before;
    let job = job(
        &target,
        vec![broadcast_stream(&keys[0])],
        TASK_UPDATE,
        spread,
        false,
    );
    let (mut pool, mut connected) = connect(&job, clients, spread).await?;
    // A single run is the first step of a sweep, reported as it is.
    let (p99_limit, max_steps) = sweep.unwrap_or((f64::INFINITY, 1));
    let mut best: Option<(f64, Report)> = None;
    let mut failed_at: Option<f64> = None;
    let mut steps = Vec::new();
    let mut rate = rate;
    for step in 0..max_steps {
        let round = step as u32 + 1;
        let measured = measure(
            &mut pool,
            owner,
            &target,
            Load {
                round,
                traffic: &Traffic::Tasks {
                    keys: &keys,
                    padding,
                },
                rate,
                duration,
                grace: spread.grace,
            },
        )
        .await?;
        let mut report = connected_report("fanout", &target, clients, &connected);
        fill(&mut report, &measured);
        report.set("rate", rate);
        report.set("duration_secs", duration.as_secs_f64());
        if sweep.is_none() {
            report.snapshot_requests = requests();
            return Ok(report);
        }
        let pass = report.lost == 0
            && report.closed == 0
            && report.connected == clients
            && report.p99_ms.is_some_and(|p99| p99 <= p99_limit);
        eprintln!(
            "sweep step {}: {rate:.0} events/s → {} delivered/s, p99 {:?} ms, lost {}, closed {}: {}",
            step + 1,
            report.delivered_per_sec,
            report.p99_ms,
            report.lost,
            report.closed,
            if pass { "pass" } else { "fail" }
        );
        steps.push(json!({
            "rate": rate, "pass": pass, "delivered_per_sec": report.delivered_per_sec,
            "p99_ms": report.p99_ms, "lost": report.lost, "closed": report.closed,
        }));
        if report.closed > 0 || report.connected < clients {
            // The hub dropped clients that fell behind: start the next step with a full set.
            drop(pool);
            (pool, connected) = connect(&job, clients, spread).await?;
        }
        if pass {
            best = Some((rate, report));
        } else {
            failed_at = Some(rate);
        }
        let low = best.as_ref().map(|(r, _)| *r);
        rate = match (low, failed_at) {
            (Some(low), Some(high)) if high / low < 1.1 => break,
            (Some(low), Some(high)) => (low + high) / 2.0,
            (Some(low), None) => low * 2.0,
            (None, Some(high)) => high / 2.0,
            (None, None) => rate,
        };
    }
    let (best_rate, mut report) = match best {
        Some(best) => best,
        None => (
            0.0,
            connected_report("fanout", &target, clients, &connected),
        ),
    };
    report.set("sweep", true);
    report.set("max_rate", best_rate);
    report.set("p99_limit_ms", p99_limit);
    report.set("sweep_steps", steps);
    report.snapshot_requests = requests();
    Ok(report)
}

/// What every scenario starts with: the servers it measures (started here unless given) and
/// the owner that answers snapshot requests and publishes.
async fn start(
    servers: &TargetArgs,
    hub: bool,
    nats_websocket: bool,
) -> anyhow::Result<(Env, Owner)> {
    let env = Env::start(servers, hub, nats_websocket).await?;
    let owner = Owner::start(&env.nats_url).await?;
    Ok((env, owner))
}

/// [`start`] for a scenario that measures one target.
async fn start_for(servers: &TargetArgs, kind: TargetKind) -> anyhow::Result<(Env, Owner)> {
    start(
        servers,
        kind == TargetKind::Hub,
        kind == TargetKind::NatsServer,
    )
    .await
}

/// `fanout`.
pub async fn fanout(args: FanoutArgs) -> anyhow::Result<()> {
    let (env, owner) = start_for(&args.servers, args.target).await?;
    let sweep = args.sweep.then_some((args.p99_limit_ms, args.sweep_steps));
    let report = fanout_on(
        &env,
        &owner,
        args.target,
        &FanoutPlan {
            clients: args.clients,
            rate: args.rate,
            duration: args.duration,
            sweep,
            padding: args.padding,
        },
        &args.spread,
    )
    .await?;
    report.emit();
    Ok(())
}

/// `idle` against `target`.
async fn idle_on(
    env: &Env,
    owner: &Owner,
    kind: TargetKind,
    clients: usize,
    keys: usize,
    hold: Duration,
    spread: &ClientArgs,
) -> anyhow::Result<Report> {
    let target = env.target(kind)?;
    let keys: Vec<String> = (0..keys.max(1)).map(task_key).collect();
    for key in &keys {
        owner.seed_task(key);
    }
    let before = target.pid.and_then(procfs::rss_bytes);
    let streams = keys.iter().map(|k| broadcast_stream(k)).collect();
    let job = job(&target, streams, TASK_UPDATE, spread, false);
    let requests_before: u64 = owner.snapshot_requests().values().sum();
    let (_pool, connected) = connect(&job, clients, spread).await?;
    let sampler = RssSampler::start(target.pid);
    tokio::time::sleep(hold).await;
    let after = target.pid.and_then(procfs::rss_bytes);
    let mut report = connected_report("idle", &target, clients, &connected);
    report.hub_rss_bytes = after;
    if let (Some(before), Some(after)) = (before, after) {
        report.rss_per_conn_bytes =
            Some(((after as f64 - before as f64) / connected.connected.max(1) as f64).round());
        report.set("rss_before_bytes", before);
    }
    report.set("rss_max_bytes", sampler.max());
    report.set("keys", keys.len());
    report.set("hold_secs", hold.as_secs_f64());
    if let Some(fds) = target.pid.and_then(procfs::fd_count) {
        report.set("target_fds", fds);
    }
    report.snapshot_requests = owner.snapshot_requests().values().sum::<u64>() - requests_before;
    Ok(report)
}

/// `idle`.
pub async fn idle(args: IdleArgs) -> anyhow::Result<()> {
    let (env, owner) = start_for(&args.servers, args.target).await?;
    let report = idle_on(
        &env,
        &owner,
        args.target,
        args.clients,
        args.keys,
        args.hold,
        &args.spread,
    )
    .await?;
    report.emit();
    Ok(())
}

/// `many-keys`.
pub async fn many_keys(args: ManyKeysArgs) -> anyhow::Result<()> {
    let (env, owner) = start_for(&args.servers, args.target).await?;
    let target = env.target(args.target)?;
    let keys: Vec<String> = (0..args.keys.max(1)).map(task_key).collect();
    for key in &keys {
        owner.seed_task(key);
    }
    let streams = keys.iter().map(|k| broadcast_stream(k)).collect();
    let job = job(&target, streams, TASK_UPDATE, &args.spread, false);
    let (mut pool, connected) = connect(&job, keys.len(), &args.spread).await?;
    let rate = args.rate_per_key * keys.len() as f64;
    let measured = measure(
        &mut pool,
        &owner,
        &target,
        Load {
            round: 1,
            traffic: &Traffic::Tasks {
                keys: &keys,
                padding: 0,
            },
            rate,
            duration: args.duration,
            grace: args.spread.grace,
        },
    )
    .await?;
    let mut report = connected_report("many-keys", &target, keys.len(), &connected);
    fill(&mut report, &measured);
    report.set("keys", keys.len());
    report.set("rate_per_key", args.rate_per_key);
    report.set("duration_secs", args.duration.as_secs_f64());
    report.snapshot_requests = owner.snapshot_requests().values().sum();
    report.emit();
    Ok(())
}

/// A storage location of the benchmark scene, in storage area `area`.
pub(crate) fn bench_location(scene: &str, index: usize, area: usize) -> StorageLocation {
    let station = format!("S{}", index / 4);
    StorageLocation {
        operate_point_id: Some(format!("AP-{station}")),
        storage_location_name: Some(format!("{station}-{}", index % 4 + 1)),
        area_name: Some(format!("库区{area}")),
        goods_content: Some(String::new()),
        max_weight: Some(5000),
        layer_height: Some(100),
        created_at: Some("2025-06-11T12:00:00.000Z".into()),
        updated_at: Some("2025-06-11T12:00:00.000Z".into()),
        ..StorageLocation::new(
            scene,
            format!("loc-{index}"),
            format!("area-{area}"),
            station,
            (index % 4 + 1) as i64,
        )
    }
}

/// `storage`; with --compare-compression, plain and compressed side by side.
pub async fn storage(args: StorageArgs) -> anyhow::Result<()> {
    if !args.compare_compression {
        storage_once(&args).await?.emit();
        return Ok(());
    }
    let mut runs = Vec::new();
    for compression in [false, true] {
        let mut run = args.clone();
        run.servers.compression = compression;
        let report = storage_once(&run).await?;
        report.emit();
        runs.push(report);
    }
    let [plain, compressed] = &runs[..] else {
        unreachable!("two runs")
    };
    let number = |report: &Report, key: &str| report.more.get(key).and_then(|v| v.as_f64());
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some((a / b * 100.0).round() / 100.0),
        _ => None,
    };
    let mut summary = Report::new("storage-compression", "hub");
    summary.clients = args.clients;
    let wire_plain = number(plain, "wire_bytes");
    let wire_compressed = number(compressed, "wire_bytes");
    summary.set("wire_bytes_plain", wire_plain);
    summary.set("wire_bytes_compressed", wire_compressed);
    summary.set("bytes_fewer_times", ratio(wire_plain, wire_compressed));
    summary.set("cpu_percent_plain", plain.hub_cpu_percent);
    summary.set("cpu_percent_compressed", compressed.hub_cpu_percent);
    summary.set(
        "cpu_ratio",
        ratio(compressed.hub_cpu_percent, plain.hub_cpu_percent),
    );
    summary.set("p99_ms_plain", plain.p99_ms);
    summary.set("p99_ms_compressed", compressed.p99_ms);
    summary.set("rss_bytes_plain", plain.hub_rss_bytes);
    summary.set("rss_bytes_compressed", compressed.hub_rss_bytes);
    summary.emit();
    Ok(())
}

/// One `storage` run, reported.
async fn storage_once(args: &StorageArgs) -> anyhow::Result<Report> {
    let (env, owner) = start_for(&args.servers, TargetKind::Hub).await?;
    let target = env.target(TargetKind::Hub)?;
    let scene = "bench-scene";
    let filters = args.filters.max(1);
    let stream_of: Vec<usize> = (0..args.locations.max(1)).map(|i| i % filters).collect();
    let locations = stream_of
        .iter()
        .enumerate()
        .map(|(i, &area)| bench_location(scene, i, area))
        .collect();
    owner.seed_scene(scene, locations);
    let streams = (0..filters)
        .map(|f| {
            // Every other filter adds a condition that matches every location, so the filters
            // are distinct while each location's stream stays its area.
            let extra = if f % 2 == 1 { "&is_disabled=false" } else { "" };
            StreamSpec {
                path: format!(
                    "/ws/storage-location/{scene}?interval={}&storage_area_id=area-{f}{extra}",
                    args.interval
                ),
                subject: Subjects::default().scene_events(scene),
                get_status: false,
            }
        })
        .collect();
    let job = job(&target, streams, STATUS_CHANGE, &args.spread, false);
    let (mut pool, connected) = connect(&job, args.clients, &args.spread).await?;
    let traffic = Traffic::Scene {
        key: scene,
        stream_of: &stream_of,
        streams: filters,
    };
    let endpoint = "storage-location";
    let sent_before = sent_bytes(&target, endpoint).await;
    let measured = measure(
        &mut pool,
        &owner,
        &target,
        Load {
            round: 1,
            traffic: &traffic,
            rate: args.rate,
            duration: args.duration,
            grace: args.spread.grace,
        },
    )
    .await?;
    let sent_after = sent_bytes(&target, endpoint).await;
    let mut report = connected_report("storage", &target, args.clients, &connected);
    fill(&mut report, &measured);
    report.set("compression", target.compression);
    report.set("locations", args.locations);
    report.set("filters", filters);
    report.set("rate", args.rate);
    report.set("interval_secs", args.interval);
    report.set("duration_secs", args.duration.as_secs_f64());
    if let (Some(before), Some(after)) = (sent_before, sent_after) {
        let (text, wire) = (after.0 - before.0, after.1 - before.1);
        report.set("message_bytes", text);
        report.set("wire_bytes", wire);
        if wire > 0.0 {
            report.set("compression_ratio", (text / wire * 10.0).round() / 10.0);
        }
    }
    report.snapshot_requests = owner.snapshot_requests().values().sum();
    Ok(report)
}

/// The hub's `vwed_hub_message_bytes_total` and `vwed_hub_wire_bytes_total` for `endpoint`
/// (what it sent as text, and what it wrote after compression), read from its `/metrics`;
/// `None` when they cannot be read.
async fn sent_bytes(target: &Target, endpoint: &str) -> Option<(f64, f64)> {
    let body = crate::target::metrics_text(&target.ws_base).await?;
    let read = |name: &str| {
        let series = format!("{name}{{endpoint=\"{endpoint}\"}} ");
        body.lines()
            .find_map(|line| line.strip_prefix(&series))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Some((
        read("vwed_hub_message_bytes_total"),
        read("vwed_hub_wire_bytes_total"),
    ))
}

/// `connect-storm`.
pub async fn connect_storm(args: ConnectStormArgs) -> anyhow::Result<()> {
    let (env, owner) = start_for(&args.servers, TargetKind::Hub).await?;
    let target = env.target(TargetKind::Hub)?;
    let keys: Vec<String> = (0..args.keys.max(1)).map(task_key).collect();
    for key in &keys {
        owner.seed_task(key);
    }
    let streams = keys
        .iter()
        .map(|key| StreamSpec {
            path: format!("/ws/task-execution/{key}"),
            subject: Subjects::default().task_events(key),
            get_status: false,
        })
        .collect();
    let job = job(&target, streams, TASK_UPDATE, &args.spread, true);
    let cpu = CpuMeter::start(target.pid);
    let (_pool, connected) = connect(&job, args.clients, &args.spread).await?;
    let mut report = connected_report("connect-storm", &target, args.clients, &connected);
    report.hub_cpu_percent = cpu.percent().map(|c| (c * 10.0).round() / 10.0);
    report.hub_rss_bytes = target.pid.and_then(procfs::rss_bytes);
    // Time to initial state is what this scenario's latency means.
    report.set_latency(&connected.ready_us);
    let requests = owner.snapshot_requests();
    report.snapshot_requests = requests.values().sum();
    report.set("keys", keys.len());
    report.set(
        "snapshot_requests_max_per_key",
        requests.values().max().copied().unwrap_or(0),
    );
    report.set("keys_requested", requests.len());
    report.set(
        "latency_note",
        "p50/p99/max_ms: time from the storm's start to each client's initial state",
    );
    report.emit();
    Ok(())
}

/// `slow-client`.
pub async fn slow_client(args: SlowClientArgs) -> anyhow::Result<()> {
    let (env, owner) = start_for(&args.servers, TargetKind::Hub).await?;
    let target = env.target(TargetKind::Hub)?;
    let keys = vec![task_key(0)];
    owner.seed_task(&keys[0]);
    let stream = broadcast_stream(&keys[0]);
    let job = job(
        &target,
        vec![stream.clone()],
        TASK_UPDATE,
        &args.spread,
        false,
    );
    let (mut pool, connected) = connect(&job, args.clients, &args.spread).await?;
    let traffic = Traffic::Tasks {
        keys: &keys,
        padding: args.padding,
    };
    // A short round first, so that neither measured round pays for warming up.
    measure(
        &mut pool,
        &owner,
        &target,
        Load {
            round: 1,
            traffic: &traffic,
            rate: args.rate,
            duration: Duration::from_secs(2).min(args.duration),
            grace: args.spread.grace,
        },
    )
    .await?;
    let without = measure(
        &mut pool,
        &owner,
        &target,
        Load {
            round: 2,
            traffic: &traffic,
            rate: args.rate,
            duration: args.duration,
            grace: args.spread.grace,
        },
    )
    .await?;
    let rss_before = target.pid.and_then(procfs::rss_bytes);

    // The staller: a tiny receive buffer, subscribed, then never read again.
    let addr = crate::worker::resolve(&target.ws_base).await?;
    let dial = Dial {
        kind: TargetKind::Hub,
        addr,
        ws_base: target.ws_base.clone(),
        source: std::net::Ipv4Addr::LOCALHOST,
        recv_buffer: Some(4096),
        // Plain, so that what it stalls on is as large as the scenario means.
        compression: false,
    };
    let mut staller = client::open(&dial, &stream.path).await?;
    staller
        .send(Message::text(r#"{"type":"get_status"}"#))
        .await?;
    let _state = tokio::time::timeout(Duration::from_secs(10), staller.next())
        .await
        .context("the staller got no state")?;

    let with = measure(
        &mut pool,
        &owner,
        &target,
        Load {
            round: 3,
            traffic: &traffic,
            rate: args.rate,
            duration: args.duration,
            grace: args.spread.grace,
        },
    )
    .await?;
    let rss_after = target.pid.and_then(procfs::rss_bytes);
    // Read what the staller was sent: did the hub give up on it, and how?
    let started = Instant::now();
    let mut staller_end = "open".to_owned();
    while started.elapsed() < Duration::from_secs(15) {
        match tokio::time::timeout(Duration::from_secs(15), staller.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => {
                staller_end = format!(
                    "closed {}",
                    frame.map(|f| u16::from(f.code)).unwrap_or(1005)
                );
                break;
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_))) | Ok(None) => {
                staller_end = "dropped".to_owned();
                break;
            }
            Err(_) => break,
        }
    }
    let mut report = connected_report("slow-client", &target, args.clients, &connected);
    fill(&mut report, &with);
    report.set("p99_ms_without_staller", latency_ms(&without, 0.99));
    report.set("p50_ms_without_staller", latency_ms(&without, 0.50));
    report.set("lost_without_staller", without.delivered.lost);
    report.set("rss_before_stall_bytes", rss_before);
    report.set("rss_max_during_stall_bytes", with.rss_max);
    report.set("rss_after_stall_bytes", rss_after);
    report.set("staller", staller_end);
    report.set("padding", args.padding);
    report.set("rate", args.rate);
    report.set("duration_secs", args.duration.as_secs_f64());
    report.snapshot_requests = owner.snapshot_requests().values().sum();
    report.emit();
    Ok(())
}

fn latency_ms(measured: &Measured, quantile: f64) -> Option<f64> {
    let h = &measured.delivered.latency_us;
    (!h.is_empty()).then(|| h.value_at_quantile(quantile) as f64 / 1000.0)
}

/// `compare`.
pub async fn compare(args: CompareArgs) -> anyhow::Result<()> {
    // Each part on servers of its own: memory the fanout part freed would otherwise be reused
    // by the idle part's connections, and its figure read far too low.
    let (env, owner) = start(&args.servers, true, true).await?;
    let sweep = args.sweep.then_some((args.p99_limit_ms, args.sweep_steps));
    let mut fanouts = Vec::new();
    let mut idles = Vec::new();
    for kind in [TargetKind::Hub, TargetKind::NatsServer] {
        let report = fanout_on(
            &env,
            &owner,
            kind,
            &FanoutPlan {
                clients: args.clients,
                rate: args.rate,
                duration: args.duration,
                sweep,
                padding: args.padding,
            },
            &args.spread,
        )
        .await?;
        report.emit();
        fanouts.push(report);
    }
    drop((owner, env));
    let (env, owner) = start(&args.servers, true, true).await?;
    for kind in [TargetKind::Hub, TargetKind::NatsServer] {
        let report = idle_on(
            &env,
            &owner,
            kind,
            args.idle_clients,
            args.idle_keys,
            args.hold,
            &args.spread,
        )
        .await?;
        report.emit();
        idles.push(report);
    }
    let (hub_f, nats_f) = (&fanouts[0], &fanouts[1]);
    let (hub_i, nats_i) = (&idles[0], &idles[1]);
    let rate_of = |r: &Report| r.more.get("max_rate").and_then(|v| v.as_f64());
    let summary = json!({
        "scenario": "compare",
        "target": "hub/nats-server",
        "clients": args.clients,
        "idle_clients": args.idle_clients,
        "sweep": args.sweep,
        "fanout_delivered_per_sec_ratio": ratio(Some(hub_f.delivered_per_sec), Some(nats_f.delivered_per_sec)),
        "fanout_p99_ratio": ratio(hub_f.p99_ms, nats_f.p99_ms),
        "fanout_p50_ratio": ratio(hub_f.p50_ms, nats_f.p50_ms),
        "fanout_max_rate_ratio": ratio(rate_of(hub_f), rate_of(nats_f)),
        "fanout_cpu_ratio": ratio(hub_f.hub_cpu_percent, nats_f.hub_cpu_percent),
        "idle_rss_per_conn_ratio": ratio(hub_i.rss_per_conn_bytes, nats_i.rss_per_conn_bytes),
        "compression": args.servers.compression,
        "padding": args.padding,
        "hub": {"delivered": hub_f.delivered, "expected": hub_f.expected, "lost": hub_f.lost,
                "delivered_per_sec": hub_f.delivered_per_sec, "p50_ms": hub_f.p50_ms, "p99_ms": hub_f.p99_ms,
                "cpu_percent": hub_f.hub_cpu_percent, "fanout_rss_bytes": hub_f.hub_rss_bytes,
                "max_rate": rate_of(hub_f), "idle_connected": hub_i.connected, "idle_rss_per_conn_bytes": hub_i.rss_per_conn_bytes},
        "nats_server": {"delivered": nats_f.delivered, "expected": nats_f.expected, "lost": nats_f.lost,
                "delivered_per_sec": nats_f.delivered_per_sec, "p50_ms": nats_f.p50_ms, "p99_ms": nats_f.p99_ms,
                "cpu_percent": nats_f.hub_cpu_percent, "fanout_rss_bytes": nats_f.hub_rss_bytes,
                "max_rate": rate_of(nats_f), "idle_connected": nats_i.connected, "idle_rss_per_conn_bytes": nats_i.rss_per_conn_bytes},
    });
    let line = summary.to_string();
    print_table("compare: hub / nats-server", &line);
    println!("{line}");
    Ok(())
}
