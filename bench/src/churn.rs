//! `churn`: clients that keep connecting and leaving (some politely, some by dropping the TCP
//! connection, some after half a handshake) while events flow, and the hub's RSS after every
//! so many sessions. A hub that forgets each session once it is over stays flat after warm-up;
//! one that keeps something per session grows with the count, and keeps it after all have left.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use vwed_hub::ws::deflate::Inflating;

use crate::cli::ChurnArgs;
use crate::owner::{Owner, Pacer};
use crate::procfs::{self, CpuMeter};
use crate::report::Report;
use crate::target::{Env, Target, TargetKind};

/// How a session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Subscribes, watches a while, then sends a close frame and waits for the answer.
    Polite,
    /// Subscribes, watches a while, then resets the TCP connection: no close frame, as a
    /// tablet that loses its Wi-Fi (or a killed browser) leaves.
    Abort,
    /// Sends the first half of its opening handshake and goes away.
    Half,
}

/// One point of the RSS series.
#[derive(Debug, Clone, Serialize)]
struct Sample {
    /// Sessions finished when it was read.
    sessions: u64,
    /// Seconds since the first session began.
    secs: f64,
    /// The hub's resident memory.
    rss_bytes: Option<u64>,
    /// Heap in use and held by the hub's allocator, from its `/metrics` (glibc only): RSS that
    /// grows while `heap_in_use_bytes` stays flat is the allocator's, not the hub's data.
    heap_in_use_bytes: Option<u64>,
    heap_held_bytes: Option<u64>,
}

/// What the sessions count.
#[derive(Default)]
struct Counts {
    /// Sessions finished, of any kind.
    done: AtomicU64,
    /// Polite, abort and half sessions finished.
    polite: AtomicU64,
    aborted: AtomicU64,
    half: AtomicU64,
    /// Sessions that expected a state and did not get one (could not connect, refused, timed
    /// out, or closed by the hub).
    failed: AtomicU64,
    /// Stamped event messages received during the sessions' watching.
    events_received: AtomicU64,
}

/// The paths a session may watch, cycled through: each endpoint, over every key.
fn paths(scenes: &[String], tasks: &[String], areas: usize) -> Vec<(String, bool)> {
    let mut paths = Vec::new();
    for task in tasks {
        paths.push((format!("/ws/task-execution/{task}"), false));
        paths.push((format!("/ws/task-execution-broadcast/{task}"), true));
    }
    for (i, scene) in scenes.iter().enumerate() {
        // A filter per scene, so that the realtime groups' filters change too.
        paths.push((
            format!(
                "/ws/storage-location/{scene}?interval=1&storage_area_id=area-{}",
                i % areas.max(1)
            ),
            false,
        ));
        paths.push((format!("/ws/storage-location-broadcast/{scene}"), true));
    }
    paths
}

/// `churn`.
pub async fn churn(args: ChurnArgs) -> anyhow::Result<()> {
    let env = Env::start(&args.servers, true, false).await?;
    let owner = Arc::new(Owner::start(&env.nats_url).await?);
    let target = env.target(TargetKind::Hub)?;
    let tasks: Vec<String> = (0..args.tasks.max(1))
        .map(|i| format!("churn-task-{i}"))
        .collect();
    let scenes: Vec<String> = (0..args.scenes.max(1))
        .map(|i| format!("churn-scene-{i}"))
        .collect();
    const AREAS: usize = 4;
    for task in &tasks {
        owner.seed_task(task);
    }
    for scene in &scenes {
        let locations = (0..args.locations.max(1))
            .map(|i| crate::scenarios::bench_location(scene, i, i % AREAS))
            .collect();
        owner.seed_scene(scene, locations);
    }
    let addr = crate::worker::resolve(&target.ws_base).await?;
    let paths = Arc::new(paths(&scenes, &tasks, AREAS));
    let counts = Arc::new(Counts::default());
    let next = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let start = Instant::now();
    let rss_start = target.pid.and_then(procfs::rss_bytes);
    let cpu = CpuMeter::start(target.pid);
    let plan = Arc::new(Plan {
        sessions: args.sessions,
        abort_share: args.abort_share,
        half_share: args.half_share,
        hold: args.hold,
        addr,
        ws_base: target.ws_base.clone(),
        sources: args.source_addresses.max(1),
        compression: target.compression,
        report_every: args.report_every.max(1),
        pid: target.pid,
        start,
    });
    let mut loops = Vec::new();
    for lane in 0..args.clients.max(1) {
        let (plan, paths, counts, next, samples) = (
            plan.clone(),
            paths.clone(),
            counts.clone(),
            next.clone(),
            samples.clone(),
        );
        loops.push(tokio::spawn(async move {
            lane_loop(lane, &plan, &paths, &counts, &next, &samples).await;
        }));
    }
    // Events flow on every key while the clients come and go.
    let stop = stop_signal();
    let publishing = {
        let (owner, tasks, scenes) = (owner.clone(), tasks.clone(), scenes.clone());
        let (rate, locations) = (args.rate, args.locations.max(1));
        let stop = stop.1.clone();
        tokio::spawn(async move { publish(&owner, &tasks, &scenes, locations, rate, stop).await })
    };
    for lane in loops {
        lane.await.context("a client lane panicked")?;
    }
    let run_secs = start.elapsed().as_secs_f64();
    let _ = stop.0.send(true);
    let published = publishing.await.context("the publisher panicked")??;
    // Every client has left: the hub's gauges should read zero once it has noticed, and what
    // it still holds is what it kept.
    let open_at_end = wait_for_no_connections(&target, Duration::from_secs(30)).await;
    tokio::time::sleep(args.settle).await;
    let rss_after = target.pid.and_then(procfs::rss_bytes);
    let heap_after = scrape(&target.ws_base).await;
    let series = samples.lock().map(|s| s.clone()).unwrap_or_default();

    let done = counts.done.load(Ordering::Acquire);
    let mut report = Report::new("churn", target.kind.name());
    report.clients = args.clients;
    report.events_published = published;
    report.hub_rss_bytes = rss_after;
    report.hub_cpu_percent = cpu.percent().map(|c| (c * 10.0).round() / 10.0);
    report.snapshot_requests = owner.snapshot_requests().values().sum();
    report.set("sessions", done);
    report.set("sessions_polite", counts.polite.load(Ordering::Acquire));
    report.set("sessions_aborted", counts.aborted.load(Ordering::Acquire));
    report.set("sessions_half", counts.half.load(Ordering::Acquire));
    report.set("sessions_failed", counts.failed.load(Ordering::Acquire));
    report.set(
        "events_received",
        counts.events_received.load(Ordering::Acquire),
    );
    report.set("run_secs", (run_secs * 10.0).round() / 10.0);
    report.set(
        "sessions_per_sec",
        (done as f64 / run_secs.max(1e-9)).round(),
    );
    report.set("abort_share", args.abort_share);
    report.set("half_share", args.half_share);
    report.set("scenes", scenes.len());
    report.set("tasks", tasks.len());
    report.set("rate", args.rate);
    report.set("open_connections_at_end", open_at_end);
    report.set("rss_start_bytes", rss_start);
    report.set("rss_after_settle_bytes", rss_after);
    report.set(
        "heap_in_use_after_settle_bytes",
        heap_after.as_ref().and_then(|m| m.heap_in_use),
    );
    report.set(
        "heap_held_after_settle_bytes",
        heap_after.as_ref().and_then(|m| m.heap_held),
    );
    if let Some((per_session, from)) = growth_after_warmup(&series, args.warmup) {
        // The slope from the first sample at or past the warm-up to the last one: what each
        // further session leaves behind.
        report.set(
            "rss_growth_per_session_bytes",
            (per_session * 10.0).round() / 10.0,
        );
        report.set("rss_growth_from_sessions", from);
    }
    report.set("rss_series", &series);
    report.emit();
    Ok(())
}

/// Tells the publisher to stop (the sender) and lets it see that (the receiver).
fn stop_signal() -> (
    tokio::sync::watch::Sender<bool>,
    tokio::sync::watch::Receiver<bool>,
) {
    tokio::sync::watch::channel(false)
}

/// Bytes of RSS per session from the first sample at or past `warmup` sessions to the last.
fn growth_after_warmup(series: &[Sample], warmup: u64) -> Option<(f64, u64)> {
    let first = series.iter().find(|s| s.sessions >= warmup)?;
    let last = series.last()?;
    let sessions = last
        .sessions
        .checked_sub(first.sessions)
        .filter(|&n| n > 0)?;
    let grown = last.rss_bytes? as f64 - first.rss_bytes? as f64;
    Some((grown / sessions as f64, first.sessions))
}

/// What every lane needs.
struct Plan {
    /// Sessions in all.
    sessions: u64,
    /// Shares of sessions that reset the connection, and that send half a handshake.
    abort_share: f64,
    half_share: f64,
    /// Longest a subscribed session watches (each watches a random time up to it).
    hold: Duration,
    /// The hub.
    addr: SocketAddr,
    ws_base: String,
    /// Loopback source addresses to spread over.
    sources: u8,
    /// Offer permessage-deflate.
    compression: bool,
    /// Read the RSS after every this many sessions.
    report_every: u64,
    /// The hub's pid, for its RSS.
    pid: Option<u32>,
    /// When the run began.
    start: Instant,
}

/// One client slot: runs sessions one after another until all are taken.
async fn lane_loop(
    lane: usize,
    plan: &Plan,
    paths: &[(String, bool)],
    counts: &Counts,
    next: &AtomicU64,
    samples: &Mutex<Vec<Sample>>,
) {
    let mut rng = fastrand::Rng::with_seed(lane as u64);
    loop {
        let n = next.fetch_add(1, Ordering::AcqRel);
        if n >= plan.sessions {
            return;
        }
        let draw = rng.f64();
        let ending = if draw < plan.half_share {
            Ending::Half
        } else if draw < plan.half_share + plan.abort_share {
            Ending::Abort
        } else {
            Ending::Polite
        };
        let (path, get_status) = &paths[n as usize % paths.len()];
        let source = Ipv4Addr::new(127, 0, 0, 1 + (n % u64::from(plan.sources)) as u8);
        let hold = plan.hold.mul_f64(rng.f64());
        let outcome = tokio::time::timeout(
            Duration::from_secs(20),
            session(plan, source, path, *get_status, ending, hold, counts),
        )
        .await;
        if !matches!(outcome, Ok(Ok(()))) {
            counts.failed.fetch_add(1, Ordering::Relaxed);
        }
        match ending {
            Ending::Polite => &counts.polite,
            Ending::Abort => &counts.aborted,
            Ending::Half => &counts.half,
        }
        .fetch_add(1, Ordering::Relaxed);
        let done = counts.done.fetch_add(1, Ordering::AcqRel) + 1;
        if done.is_multiple_of(plan.report_every) {
            let heap = scrape(&plan.ws_base).await;
            let sample = Sample {
                sessions: done,
                secs: (plan.start.elapsed().as_secs_f64() * 10.0).round() / 10.0,
                rss_bytes: plan.pid.and_then(procfs::rss_bytes),
                heap_in_use_bytes: heap.as_ref().and_then(|m| m.heap_in_use),
                heap_held_bytes: heap.as_ref().and_then(|m| m.heap_held),
            };
            eprintln!(
                "churn: {} sessions, {:.0} s, hub RSS {:.1} MB",
                sample.sessions,
                sample.secs,
                sample.rss_bytes.unwrap_or(0) as f64 / 1e6
            );
            if let Ok(mut samples) = samples.lock() {
                samples.push(sample);
            }
        }
    }
}

/// Prefixes of the hub's state messages, the answer that makes a session subscribed.
const STATE_PREFIXES: [&[u8]; 2] = [
    b"{\"type\":\"task_execution_update\"",
    b"{\"type\":\"storage_location_update\"",
];

/// One session from connect to leave.
async fn session(
    plan: &Plan,
    source: Ipv4Addr,
    path: &str,
    get_status: bool,
    ending: Ending,
    hold: Duration,
    counts: &Counts,
) -> anyhow::Result<()> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    let stream = socket.connect(plan.addr).await?;
    stream.set_nodelay(true)?;
    if ending == Ending::Half {
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
            plan.addr
        );
        let mut stream = stream;
        stream.write_all(head.as_bytes()).await?;
        // Gone before the blank line that would end the head.
        return Ok(());
    }
    let fd = stream.as_raw_fd();
    let mut ws = handshake(plan, stream, path).await?;
    if get_status {
        ws.send(Message::text(r#"{"type":"get_status"}"#)).await?;
    }
    // Subscribed once the state arrives.
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let bytes = text.as_bytes();
                if STATE_PREFIXES.iter().any(|p| bytes.starts_with(p)) {
                    break;
                }
                if bytes.starts_with(b"{\"type\":\"error\"") {
                    anyhow::bail!("the hub refused: {text}");
                }
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(error.into()),
            None => anyhow::bail!("closed before the state"),
        }
    }
    let watching = async {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Text(text) = message {
                if crate::stamp::find(text.as_bytes()).is_some() {
                    counts.events_received.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    };
    // Watching ends with the hold (or earlier if the hub closed, which counts as no failure
    // here: the hub only closes a session for cause, and the next check would show it).
    let _ = tokio::time::timeout(hold, watching).await;
    match ending {
        Ending::Polite => {
            ws.close(None).await?;
            // The hub's close answer, then the end of the stream.
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
        }
        Ending::Abort => {
            // SO_LINGER 0: closing the socket resets the connection rather than ending it.
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: `fd` is the socket `ws` owns, still open; the option is a plain struct
            // of the size given.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                );
            }
            drop(ws);
        }
        Ending::Half => unreachable!("returned above"),
    }
    Ok(())
}

/// The WebSocket handshake over a connected socket.
async fn handshake(
    plan: &Plan,
    stream: TcpStream,
    path: &str,
) -> anyhow::Result<WebSocketStream<Inflating<TcpStream>>> {
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(64 << 20));
    let mut request = format!("{}{}", plan.ws_base, path).into_client_request()?;
    if plan.compression {
        request.headers_mut().insert(
            "sec-websocket-extensions",
            vwed_hub::ws::deflate::offer::OFFER.parse()?,
        );
    }
    let stream = Inflating::after_http_answer(stream);
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await?;
    Ok(ws)
}

/// Publishes task results and status changes round-robin over every key at `rate` until
/// aborted; returns how many.
async fn publish(
    owner: &Owner,
    tasks: &[String],
    scenes: &[String],
    locations: usize,
    rate: f64,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<u64> {
    let mut pacer = Pacer::new(rate, Duration::from_secs(365 * 24 * 3600));
    let mut rng = fastrand::Rng::with_seed(1);
    let mut n = 0u64;
    while let Some(batch) = pacer.next_batch().await {
        if *stop.borrow() {
            break;
        }
        for _ in 0..batch {
            let k = n as usize / 2;
            if n.is_multiple_of(2) {
                let event = owner.task_event(&tasks[k % tasks.len()], 1, n, 0);
                owner.publish_task(&event).await?;
            } else if let Some(event) =
                owner.status_event(&scenes[k % scenes.len()], rng.usize(..locations), 1, n)
            {
                owner.publish_scene(&event).await?;
            }
            n += 1;
        }
    }
    Ok(n)
}

/// Waits until the hub's `vwed_hub_connections` gauges sum to zero, or `patience` passes;
/// returns the last sum read (`None` when `/metrics` could not be read).
async fn wait_for_no_connections(target: &Target, patience: Duration) -> Option<u64> {
    let deadline = Instant::now() + patience;
    loop {
        let open = scrape(&target.ws_base).await.map(|m| m.connections);
        if open == Some(0) || Instant::now() >= deadline {
            return open;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the churn reads from the hub's `/metrics`.
struct Scraped {
    /// The `vwed_hub_connections` gauges, summed.
    connections: u64,
    /// `vwed_hub_heap_in_use_bytes`, `vwed_hub_heap_held_bytes` (absent on other allocators).
    heap_in_use: Option<u64>,
    heap_held: Option<u64>,
}

/// Reads the hub's `/metrics`; `None` when it cannot.
async fn scrape(ws_base: &str) -> Option<Scraped> {
    let body = crate::target::metrics_text(ws_base).await?;
    Some(parse_metrics(&body))
}

fn parse_metrics(body: &str) -> Scraped {
    let value = |line: &str| line.rsplit(' ').next()?.trim().parse::<f64>().ok();
    let single = |name: &str| {
        body.lines()
            .find_map(|line| {
                line.strip_prefix(name)?
                    .strip_prefix(' ')
                    .and_then(|_| value(line))
            })
            .map(|v| v as u64)
    };
    Scraped {
        connections: body
            .lines()
            .filter(|line| line.starts_with("vwed_hub_connections{"))
            .filter_map(value)
            .sum::<f64>() as u64,
        heap_in_use: single("vwed_hub_heap_in_use_bytes"),
        heap_held: single("vwed_hub_heap_held_bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_read_by_name() {
        let body = "# HELP ...\nvwed_hub_connections{endpoint=\"task-execution\"} 2\n\
                    vwed_hub_connections{endpoint=\"storage-location\"} 3\n\
                    vwed_hub_heap_in_use_bytes 1234\nvwed_hub_heap_held_bytes 5678\n";
        let scraped = parse_metrics(body);
        assert_eq!(scraped.connections, 5);
        assert_eq!(scraped.heap_in_use, Some(1234));
        assert_eq!(scraped.heap_held, Some(5678));
        assert_eq!(parse_metrics("").heap_in_use, None);
    }

    #[test]
    fn growth_is_the_slope_after_warm_up() {
        let at = |sessions, rss| Sample {
            sessions,
            secs: 0.0,
            rss_bytes: Some(rss),
            heap_in_use_bytes: None,
            heap_held_bytes: None,
        };
        let series = [at(10, 100), at(20, 1_000), at(30, 1_500), at(40, 2_000)];
        assert_eq!(growth_after_warmup(&series, 20), Some((50.0, 20)));
        assert_eq!(
            growth_after_warmup(&series, 40),
            None,
            "one point is no slope"
        );
        assert_eq!(growth_after_warmup(&series, 50), None);
    }
}
