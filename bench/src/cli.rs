//! Command-line flags: one subcommand per scenario.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::target::{TargetArgs, TargetKind};

/// vwed-bench: load generator for vwed-hub.
///
/// Opens many real WebSocket clients against a target, publishes stamped events into NATS
/// through the publisher SDK (an owner inside the bench also answers the hub's snapshot
/// requests through the SDK and counts them), and reports per scenario: clients held, connect
/// rate, events published, messages delivered per second, end-to-end latency p50/p99/max,
/// messages lost, and the target's RSS and CPU from /proc.
///
/// By default it needs only `nats-server` on PATH: it starts its own nats-server on a free
/// port and its own hub as a separate process (this same executable), and stops both at the
/// end. Give --hub-url and --nats-url to measure servers that already run.
///
/// Output: a human table on stderr and one JSON line per scenario on stdout. Clients are
/// spread over worker processes (--clients-per-worker) and loopback source addresses
/// (--source-addresses), since one process may hold only about 20,000 open files here.
#[derive(Debug, Parser)]
#[command(name = "vwed-bench", version, about, long_about)]
pub struct Cli {
    /// The scenario to run.
    #[command(subcommand)]
    pub command: Scenario,
}

/// The scenarios (names fixed; sizes by flags).
#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// One task key, N broadcast subscribers (endpoint 2), events at a fixed rate for a fixed
    /// time: delivered/s and latency. With --sweep: the highest rate at which p99 stays at or
    /// under --p99-limit-ms with nothing lost.
    Fanout(FanoutArgs),
    /// N subscribers on N distinct task keys (endpoint 2), each key at a fixed event rate.
    ManyKeys(ManyKeysArgs),
    /// N connected, subscribed, silent clients (endpoint 2): the target's RSS per connection.
    Idle(IdleArgs),
    /// One scene of many locations, endpoint-3 clients over a number of distinct filters, a
    /// fixed rate of status changes: latency of the status changes and the hub's CPU.
    Storage(StorageArgs),
    /// N clients connect at once onto K task keys (endpoint 1): time until every client has its
    /// initial state, and how many snapshot requests the owner received per key.
    ConnectStorm(ConnectStormArgs),
    /// N subscribers, then the same with one more client that stops reading: the others' p99
    /// without and with the staller, and the hub's RSS sampled while it stalls.
    SlowClient(SlowClientArgs),
    /// `fanout` and `idle` against the hub and against nats-server's own WebSocket listener (the
    /// NATS protocol over WebSocket, same messages, same number of clients) in one invocation:
    /// both results and the ratios hub / nats-server.
    Compare(CompareArgs),
    /// Clients that keep connecting and leaving (politely, by resetting the TCP connection, or
    /// after half a handshake) while events flow on many keys: the hub's RSS after every
    /// --report-every sessions, which should stay flat after warm-up.
    Churn(ChurnArgs),
    /// (internal) Hold a share of the clients for a parent vwed-bench, driven over stdin/stdout.
    #[command(hide = true)]
    Worker,
    /// (internal) Run the hub, as the bench does when it starts its own.
    #[command(hide = true)]
    Hub(Box<vwed_hub::HubConfig>),
}

/// How clients are spread and how long the bench waits.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Clients per worker process; more clients start more workers. Each client is one open
    /// file, and a process may hold about 20,000 here.
    #[arg(long, default_value_t = 10_000)]
    pub clients_per_worker: usize,

    /// Loopback source addresses to connect from (127.0.0.1 ..= 127.0.0.N), so that one
    /// address's ephemeral ports do not cap the count.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(1..=250))]
    pub source_addresses: u8,

    /// WebSocket handshakes (and subscriptions) in flight at once per worker.
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,

    /// How long connecting and subscribing every client may take.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub ready_timeout: Duration,

    /// After publishing, how long to wait without any new delivery before the missing events
    /// count as lost.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
}

/// Flags of `fanout`.
#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    /// Broadcast subscribers on the one key.
    #[arg(long, default_value_t = 2_000)]
    pub clients: usize,
    /// Events per second published to the key (with --sweep: the first rate tried).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// How long events are published (per sweep step with --sweep).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Find the highest rate with p99 ≤ --p99-limit-ms and nothing lost: double the rate while
    /// it holds, then bisect.
    #[arg(long)]
    pub sweep: bool,
    /// The p99 latency a sweep step must stay at or under to pass, in milliseconds.
    #[arg(long, default_value_t = 100.0)]
    pub p99_limit_ms: f64,
    /// Most sweep steps.
    #[arg(long, default_value_t = 8)]
    pub sweep_steps: usize,
    /// What the clients connect to.
    #[arg(long, value_enum, default_value_t = TargetKind::Hub)]
    pub target: TargetKind,
    /// Extra bytes per event (a second result with a context this long), to measure larger
    /// messages; 0: events of about 250 bytes.
    #[arg(long, default_value_t = 0)]
    pub padding: usize,
    /// Where the servers are.
    #[command(flatten)]
    pub servers: TargetArgs,
    /// How clients are spread.
    #[command(flatten)]
    pub spread: ClientArgs,
}

/// Flags of `many-keys`.
#[derive(Debug, Clone, Args)]
pub struct ManyKeysArgs {
    /// Keys, and subscribers (one per key).
    #[arg(long, default_value_t = 10_000)]
    pub keys: usize,
    /// Events per second on each key.
    #[arg(long, default_value_t = 1.0)]
    pub rate_per_key: f64,
    /// How long events are published.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// What the clients connect to.
    #[arg(long, value_enum, default_value_t = TargetKind::Hub)]
    pub target: TargetKind,
    /// Where the servers are.
    #[command(flatten)]
    pub servers: TargetArgs,
    /// How clients are spread.
    #[command(flatten)]
    pub spread: ClientArgs,
}

/// Flags of `idle`.
#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    /// Idle subscribed clients.
    #[arg(long, default_value_t = 15_000)]
    pub clients: usize,
    /// Task keys they spread over.
    #[arg(long, default_value_t = 100)]
    pub keys: usize,
    /// How long to hold them, sampling the target's RSS, before the final reading.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
    /// What the clients connect to.
    #[arg(long, value_enum, default_value_t = TargetKind::Hub)]
    pub target: TargetKind,
    /// Where the servers are.
    #[command(flatten)]
    pub servers: TargetArgs,
    /// How clients are spread.
    #[command(flatten)]
    pub spread: ClientArgs,
}

/// Flags of `storage`.
#[derive(Debug, Clone, Args)]
pub struct StorageArgs {
    /// Locations in the scene, spread evenly over the filters' storage areas.
    #[arg(long, default_value_t = 5_000)]
    pub locations: usize,
    /// Endpoint-3 clients.
    #[arg(long, default_value_t = 1_000)]
    pub clients: usize,
    /// Distinct filters (one storage area each; every other one also with is_disabled=false).
    #[arg(long, default_value_t = 20)]
    pub filters: usize,
    /// Status changes per second, on random locations.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// How long status changes are published.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// The clients' `interval` (seconds between periodic filtered updates).
    #[arg(long, default_value_t = 3)]
    pub interval: u32,
    /// Run twice, each time on fresh servers: clients without permessage-deflate, then clients
    /// offering it; then the two side by side (bytes on the wire, hub CPU, p99).
    #[arg(long)]
    pub compare_compression: bool,
    /// Where the servers are.
    #[command(flatten)]
    pub servers: TargetArgs,
    /// How clients are spread.
    #[command(flatten)]
    pub spread: ClientArgs,
}

/// Flags of `connect-storm`.
#[derive(Debug, Clone, Args)]
pub struct ConnectStormArgs {
    /// Clients, all connecting at once.
    #[arg(long, default_value_t = 5_000)]
    pub clients: usize,
    /// Task keys they spread over.
    #[arg(long, default_value_t = 50)]
    pub keys: usize,
    /// Where the servers are.
    #[command(flatten)]
    pub servers: TargetArgs,
    /// How clients are spread.
    #[command(flatten)]
    pub spread: ClientArgs,
}

/// Flags of `slow-client`.
#[derive(Debug, Clone, Args)]
pub struct SlowClientArgs {
    /// Subscribers that keep reading.
    #[arg(long, default_value_t = 200)]
    pub clients: usize,
    /// Events per second on the key.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// How long each phase (without, then with the staller) publishes.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Extra bytes per event, so that the staller's kernel socket buffers fill and the hub's
    /// own queue for it is reached within the run (the kernel alone holds megabytes).
    #[arg(long, default_value_t = 16_384)]
    pub padding: usize,
    /// Where the servers are.
    #[command(flatten)]
    pub servers: TargetArgs,
    /// How clients are spread.
    #[command(flatten)]
    pub spread: ClientArgs,
}

/// Flags of `compare`.
#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    /// Subscribers in the fanout part.
    #[arg(long, default_value_t = 2_000)]
    pub clients: usize,
    /// Events per second in the fanout part (the same offered load on both targets; with
    /// --sweep, the first rate tried).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// How long the fanout part publishes (per sweep step).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Also sweep both targets for their highest rate with p99 ≤ --p99-limit-ms and nothing lost.
    #[arg(long)]
    pub sweep: bool,
    /// See `fanout --p99-limit-ms`.
    #[arg(long, default_value_t = 100.0)]
    pub p99_limit_ms: f64,
    /// See `fanout --sweep-steps`.
    #[arg(long, default_value_t = 8)]
    pub sweep_steps: usize,
    /// Clients in the idle part.
    #[arg(long, default_value_t = 15_000)]
    pub idle_clients: usize,
    /// Task keys of the idle part.
    #[arg(long, default_value_t = 100)]
    pub idle_keys: usize,
    /// How long the idle part holds its clients.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
    /// Extra bytes per event (a second result with a context this long), to measure larger
    /// messages; 0: events of about 250 bytes.
    #[arg(long, default_value_t = 0)]
    pub padding: usize,
    /// Where the servers are.
    #[command(flatten)]
    pub servers: TargetArgs,
    /// How clients are spread.
    #[command(flatten)]
    pub spread: ClientArgs,
}

/// Flags of `churn`.
#[derive(Debug, Clone, Args)]
pub struct ChurnArgs {
    /// Clients at once; each runs one session after another.
    #[arg(long, default_value_t = 300)]
    pub clients: usize,
    /// Sessions in all.
    #[arg(long, default_value_t = 100_000)]
    pub sessions: u64,
    /// Share of sessions that reset the TCP connection instead of closing.
    #[arg(long, default_value_t = 0.3)]
    pub abort_share: f64,
    /// Share of sessions that send half an opening handshake and go away.
    #[arg(long, default_value_t = 0.1)]
    pub half_share: f64,
    /// Longest a subscribed session watches before it leaves (each a random time up to it).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
    /// Read the hub's RSS after every this many sessions.
    #[arg(long, default_value_t = 10_000)]
    pub report_every: u64,
    /// Sessions before the growth per session is measured (allocator pools, maps reaching
    /// their working size).
    #[arg(long, default_value_t = 20_000)]
    pub warmup: u64,
    /// Scenes, each watched on endpoints 3 and 4.
    #[arg(long, default_value_t = 20)]
    pub scenes: usize,
    /// Tasks, each watched on endpoints 1 and 2.
    #[arg(long, default_value_t = 20)]
    pub tasks: usize,
    /// Locations per scene.
    #[arg(long, default_value_t = 100)]
    pub locations: usize,
    /// Events per second over all keys (task results and status changes, alternately).
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// After the last session, how long to wait before the final RSS reading: longer than the
    /// hub's --memory-trim-interval (10 s), so that the reading shows what it keeps.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// Loopback source addresses to connect from (127.0.0.1 ..= 127.0.0.N).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(1..=250))]
    pub source_addresses: u8,
    /// Where the servers are.
    #[command(flatten)]
    pub servers: TargetArgs,
}
