//! Command-line flags, each with an environment variable and a default that works.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use crate::auth::{AuthRules, TokenKey};

/// vwed-hub: the realtime hub of the VWED WebSocket API.
///
/// Serves the four VWED endpoints under /ws (task execution and storage locations, realtime and
/// broadcast), fed by change events that task engines and storage services publish to NATS.
/// The hub keeps no data of its own: when it needs current state it asks the owning service
/// for a snapshot over NATS request/reply. Run as many replicas as you like.
///
/// Without --nats-url the hub runs on an embedded in-process broker that only publishers inside
/// the hub can reach: use it with --demo to see everything work with no other software.
///
/// Also serves a monitoring page at /, /healthz (alive), /readyz (broker connected) and
/// /metrics (Prometheus).
#[derive(Debug, Clone, Parser)]
#[command(
    version,
    about,
    long_about,
    after_help = "Logs go to stderr; set the level with RUST_LOG (default: info), e.g. RUST_LOG=vwed_hub=debug."
)]
pub struct Config {
    /// Address to serve HTTP and WebSocket connections on.
    #[arg(long, env = "VWED_LISTEN", default_value = "0.0.0.0:8000")]
    pub listen: SocketAddr,

    /// NATS server(s) to connect to, e.g. nats://127.0.0.1:4222; several may be given,
    /// comma-separated. The hub starts even when NATS is down and connects as soon as it can
    /// (until then /readyz says 503 and new clients are closed with 1013). Unset: the hub runs
    /// on an embedded in-process broker instead.
    #[arg(long, env = "VWED_NATS_URL", value_parser = parse_nats_url)]
    pub nats_url: Option<String>,

    /// Run simulated task engines and storage services inside the hub, publishing on its broker
    /// (the embedded one, or NATS with --nats-url), and log where to watch them. On NATS they
    /// answer snapshots for every key under the prefix: never beside real services.
    #[arg(long, env = "VWED_DEMO", action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub demo: bool,

    /// First tokens of every NATS subject (`<prefix>.task.<key>.execution`, ...); must match
    /// the publishers' prefix.
    #[arg(long, env = "VWED_SUBJECT_PREFIX", default_value = "vwed", value_parser = vwed_publisher::subject::parse_prefix)]
    pub subject_prefix: String,

    /// How often to send WebSocket Ping frames; a client silent for three periods is dropped.
    #[arg(long, env = "VWED_PING_INTERVAL", default_value = "20s", value_parser = parse_duration)]
    pub ping_interval: Duration,

    /// How long to wait for an owner's snapshot reply before retrying (with backoff).
    #[arg(long, env = "VWED_SNAPSHOT_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub snapshot_timeout: Duration,

    /// Messages that may wait for one client's socket. A broadcast client that falls this far
    /// behind is closed with 1013; a realtime client just gets the newer state later.
    #[arg(long, env = "VWED_CLIENT_QUEUE", default_value_t = 256)]
    pub client_queue: usize,

    /// How long one socket write may block before the client is considered gone: a WebSocket
    /// client is then dropped; an HTTP response the client does not read (a page asset,
    /// /metrics) ends its connection 2 s later.
    #[arg(long, env = "VWED_WRITE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub write_timeout: Duration,

    /// Messages a client may send per second, on average (ping, get_status, ...); past it and
    /// its burst, the client gets an `error` and its messages are dropped, and if it goes on,
    /// close 1008. 0: no limit.
    #[arg(long, env = "VWED_CLIENT_MESSAGE_RATE", default_value_t = 20.0, value_parser = parse_rate)]
    pub client_message_rate: f64,

    /// Messages a client may send at once above --client-message-rate.
    #[arg(long, env = "VWED_CLIENT_MESSAGE_BURST", default_value_t = 40)]
    pub client_message_burst: u32,

    /// Accept permessage-deflate from clients that offer it (every browser does): messages go
    /// out deflated, each compressed once for all the clients that get it. A storage scene's
    /// state shrinks about tenfold. Clients that do not offer it are served as without it.
    /// false: decline the extension.
    #[arg(long, env = "VWED_COMPRESSION", default_value_t = true, action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub compression: bool,

    /// Messages shorter than this many bytes go uncompressed (under 64 never are): status
    /// changes of a few hundred bytes shrink little and cost the client an inflate.
    #[arg(long, env = "VWED_COMPRESSION_THRESHOLD", default_value_t = 256)]
    pub compression_threshold: usize,

    /// zlib level, 1 (fastest) to 9 (smallest). Each message is deflated once however many
    /// clients get it, so a higher level costs CPU per update, not per client.
    #[arg(long, env = "VWED_COMPRESSION_LEVEL", default_value_t = 6,
          value_parser = clap::value_parser!(u32).range(1..=9))]
    pub compression_level: u32,

    /// How long a client may take to send a whole HTTP request head (a WebSocket handshake is
    /// one); a client slower than that, or silent, is disconnected without an answer. The same
    /// limit closes an HTTP connection left idle that long between requests (a WebSocket
    /// connection, once open, is kept alive by Pings instead). It keeps clients that open
    /// sockets and send little or nothing from holding the hub's file descriptors (slowloris),
    /// which --max-connections, counting WebSocket connections, does not see.
    #[arg(long, env = "VWED_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http_header_timeout: Duration,

    /// How often the hub hands heap memory it has freed back to the system (glibc's
    /// `malloc_trim`); 0 never. Without it, memory freed by clients that left stays with the
    /// allocator and resident memory creeps up with churn (docs/PERFORMANCE.md, "Churn").
    #[arg(long, env = "VWED_MEMORY_TRIM_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub memory_trim_interval: Duration,

    /// Open connections allowed in all; past it new clients get an `error` and close 1013.
    /// 0: no limit (the process's file-descriptor limit still applies).
    #[arg(long, env = "VWED_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,

    /// Open connections allowed per client address; past it, an `error` and close 1013.
    /// 0: no limit. Behind a proxy, set --trusted-proxies or every client counts as the proxy.
    #[arg(long, env = "VWED_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,

    /// Proxies (addresses or CIDR networks, comma-separated) whose X-Forwarded-For names the
    /// client; anyone else's is ignored.
    #[arg(long, env = "VWED_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_network)]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// Browser origins allowed to connect (comma-separated, e.g. https://panel.example.com);
    /// others get 403. Unset: all. Clients that send no Origin (services) are always allowed.
    #[arg(long, env = "VWED_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Turns on connection tokens signed with this shared secret (JWT, HS256; at least 32
    /// bytes). Every WebSocket client must then present a token whose `scenes` and `tasks`
    /// claims name what it watches (`*`: all), as `?token=`, `Authorization: Bearer`, or the
    /// subprotocol `bearer.<token>` offered beside `vwed`. Prefer the environment variable.
    #[arg(
        long,
        env = "VWED_JWT_SECRET",
        hide_env_values = true,
        value_name = "SECRET",
        conflicts_with = "jwt_public_key"
    )]
    pub jwt_secret: Option<Secret>,

    /// Turns on connection tokens signed by the holder of this public key (PEM: RSA for RS256,
    /// EC P-256/P-384 for ES256/ES384). See --jwt-secret for what tokens carry.
    #[arg(long, env = "VWED_JWT_PUBLIC_KEY", value_name = "PEM_FILE")]
    pub jwt_public_key: Option<std::path::PathBuf>,

    /// How far a token's `exp` and `nbf` may be off, for clocks that disagree a little.
    /// A connection is closed (1008) when its token expires, after this leeway.
    #[arg(long, env = "VWED_JWT_LEEWAY", default_value = "30s", value_parser = parse_duration_or_zero)]
    pub jwt_leeway: Duration,

    /// When set, tokens must carry this issuer (`iss`).
    #[arg(long, env = "VWED_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// When set, tokens must carry this audience (`aud`).
    #[arg(long, env = "VWED_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// How log lines are written to stderr: `text` for people, `json` (one object per line) for
    /// log collectors. Each connection logs one line when it opens and one when it closes.
    #[arg(long, env = "VWED_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// On SIGTERM/SIGINT, close clients (with 1001) at random moments spread over this window
    /// rather than all at once, so that behind a load balancer they reconnect to the other
    /// replicas gradually. Keep it below --shutdown-timeout; 0s closes all at once.
    #[arg(long, env = "VWED_DRAIN_SPREAD", default_value = "0s", value_parser = parse_duration_or_zero)]
    pub drain_spread: Duration,

    /// On SIGTERM/SIGINT, how long closing clients (with 1001) may take before the hub exits.
    #[arg(long, env = "VWED_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Serving https:// and wss:// (`--tls-*`).
    #[command(flatten)]
    pub tls: crate::tls::TlsFlags,

    /// Authenticating to NATS and securing that connection (`--nats-user`, `--nats-tls-*`, ...).
    #[command(flatten)]
    pub nats_security: crate::broker::NatsFlags,
}

/// A value that must not reach logs: its `Debug` shows only that it is set.
#[derive(Clone)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self(text.to_owned()))
    }
}

/// The shape of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, with every field.
    Json,
}

impl Config {
    /// The defaults, with the hub on `listen` and on the embedded broker; for tests and
    /// embedding. Set `nats_url` to use NATS.
    pub fn new(listen: SocketAddr) -> Self {
        let mut config = Self::parse_from(["vwed-hub"]);
        config.listen = listen;
        config
    }

    /// How connection tokens are checked, from the `--jwt-*` flags.
    pub fn auth_rules(&self) -> AuthRules {
        let key = match (&self.jwt_secret, &self.jwt_public_key) {
            (Some(secret), _) => Some(TokenKey::Secret(secret.0.clone())),
            (None, Some(path)) => Some(TokenKey::PublicKeyFile(path.clone())),
            (None, None) => None,
        };
        AuthRules {
            key,
            leeway: self.jwt_leeway,
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
        }
    }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate >= 0.0 => Ok(rate),
        _ => Err("must be a number of messages per second, 0 or more (0: no limit)".into()),
    }
}

fn parse_network(text: &str) -> Result<ipnet::IpNet, String> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{text:?} is no address or network (e.g. 10.0.0.1 or 10.0.0.0/8)"))
}

fn parse_nats_url(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err(
            "is empty; give a URL such as nats://127.0.0.1:4222, or unset it (and \
                    VWED_NATS_URL) to run on the embedded broker"
                .into(),
        );
    }
    Ok(text.to_owned())
}

fn parse_duration_or_zero(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (try e.g. 20s, 500ms, 1m)"))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration_or_zero(text)?;
    if duration.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documentation() {
        let config = Config::parse_from(["vwed-hub"]);
        assert_eq!(config.listen, "0.0.0.0:8000".parse().unwrap());
        assert_eq!(config.nats_url, None);
        assert!(!config.demo);
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(config.subject_prefix, "vwed");
        assert_eq!(config.ping_interval, Duration::from_secs(20));
        assert_eq!(config.http_header_timeout, Duration::from_secs(10));
        assert_eq!(config.memory_trim_interval, Duration::from_secs(10));
    }

    #[test]
    fn an_empty_nats_url_is_a_mistake_not_the_embedded_broker() {
        assert!(Config::try_parse_from(["vwed-hub", "--nats-url", ""]).is_err());
        assert!(Config::try_parse_from(["vwed-hub", "--nats-url", " "]).is_err());
    }

    #[test]
    fn trusted_proxies_are_addresses_or_networks() {
        let config = Config::parse_from(["vwed-hub", "--trusted-proxies", "10.0.0.0/8, 192.0.2.7"]);
        assert_eq!(config.trusted_proxies.len(), 2);
        assert!(Config::try_parse_from(["vwed-hub", "--trusted-proxies", "proxy"]).is_err());
    }

    #[test]
    fn durations_are_human() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    /// Why the hub refuses `args`, or "(accepted)".
    fn refused(args: &[&str]) -> String {
        let mut all = vec!["vwed-hub"];
        all.extend_from_slice(args);
        match Config::try_parse_from(all) {
            Ok(_) => String::from("(accepted)"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn two_ways_to_authenticate_to_nats_are_refused_naming_both() {
        let error = refused(&["--nats-token", "t", "--nats-creds", "a.creds"]);
        assert!(
            error.contains(
                "'--nats-token <NATS_TOKEN>' cannot be used with '--nats-creds <CREDS_FILE>'"
            ),
            "{error}"
        );
        let error = refused(&[
            "--nats-user",
            "u",
            "--nats-password",
            "p",
            "--nats-nkey",
            "s",
        ]);
        assert!(error.contains("cannot be used with"), "{error}");
    }

    #[test]
    fn halves_of_nats_pairs_are_refused() {
        assert!(refused(&["--nats-user", "u"]).contains("--nats-password"));
        assert!(refused(&["--nats-password", "p"]).contains("--nats-user"));
        assert!(refused(&["--nats-tls-cert", "c.pem"]).contains("--nats-tls-key"));
    }

    #[test]
    fn nats_secrets_stay_out_of_debug_output() {
        let config = Config::parse_from([
            "vwed-hub",
            "--nats-user",
            "hub",
            "--nats-password",
            "s3cret",
        ]);
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("\"hub\""), "{shown}");
        let token = Config::parse_from(["vwed-hub", "--nats-token", "t0ken"]);
        assert!(!format!("{token:?}").contains("t0ken"));
    }
}
