//! One result per scenario: a human table on stderr and one JSON line on stdout, with stable
//! field names.

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Map, Value};

/// The fields every scenario reports; scenario-specific ones go into `more`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Scenario name, as on the command line.
    pub scenario: String,
    /// `hub` or `nats-server`.
    pub target: String,
    /// Clients asked for.
    pub clients: usize,
    /// Clients that connected and subscribed.
    pub connected: usize,
    /// Clients that could not.
    pub failed: usize,
    /// Seconds from the first connect until every client was subscribed (or failed).
    pub connect_secs: f64,
    /// Clients subscribed per second over `connect_secs`.
    pub connect_rate: f64,
    /// Events the owner published.
    pub events_published: u64,
    /// Deliveries the clients should have received (each client knows its share).
    pub expected: u64,
    /// Stamped messages the clients received (messages, not frames).
    pub delivered: u64,
    /// `delivered` over the publishing time.
    pub delivered_per_sec: f64,
    /// Median end-to-end latency, publish to client, in milliseconds.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency, in milliseconds.
    pub p99_ms: Option<f64>,
    /// Highest latency, in milliseconds.
    pub max_ms: Option<f64>,
    /// `expected − received`, summed per client.
    pub lost: u64,
    /// Received beyond what was expected (duplicates), summed per client.
    pub duplicates: u64,
    /// Clients whose connection ended during the run.
    pub closed: usize,
    /// RSS of the target process (the hub, or nats-server for that target) at the end.
    pub hub_rss_bytes: Option<u64>,
    /// Growth of that RSS since before the clients connected, per connected client.
    pub rss_per_conn_bytes: Option<f64>,
    /// The target's CPU use while publishing and delivering, percent of one core.
    pub hub_cpu_percent: Option<f64>,
    /// Snapshot requests the owner answered.
    pub snapshot_requests: u64,
    /// Scenario-specific fields.
    #[serde(flatten)]
    pub more: Map<String, Value>,
}

impl Report {
    /// A report of `scenario` against `target`.
    pub fn new(scenario: &str, target: &str) -> Self {
        Self {
            scenario: scenario.to_owned(),
            target: target.to_owned(),
            ..Self::default()
        }
    }

    /// Adds a scenario-specific field.
    pub fn set(&mut self, key: &str, value: impl Serialize) {
        self.more.insert(
            key.to_owned(),
            serde_json::to_value(value).unwrap_or(Value::Null),
        );
    }

    /// Sets p50/p99/max from a histogram of microseconds (none when it is empty).
    pub fn set_latency(&mut self, latency_us: &Histogram<u64>) {
        if latency_us.is_empty() {
            return;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        self.p50_ms = Some(ms(latency_us.value_at_quantile(0.50)));
        self.p99_ms = Some(ms(latency_us.value_at_quantile(0.99)));
        self.max_ms = Some(ms(latency_us.max()));
    }

    /// The report as one line of JSON, fields in declaration order.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Prints the table to stderr and the JSON line to stdout.
    pub fn emit(&self) {
        let line = self.to_json();
        print_table(&format!("{} against {}", self.scenario, self.target), &line);
        println!("{line}");
    }
}

/// A JSON object's members in the order they were written (serde_json's own map sorts them).
struct Ordered(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Ordered, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, Value>()? {
                    members.push(member);
                }
                Ok(Ordered(members))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

/// Prints the members of the JSON object `line` as an aligned two-column table on stderr.
pub fn print_table(title: &str, line: &str) {
    let Ok(Ordered(fields)) = serde_json::from_str::<Ordered>(line) else {
        return;
    };
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    eprintln!("\n== {title}");
    for (key, value) in &fields {
        let shown = match value {
            Value::Null => continue,
            Value::Number(n) if n.is_f64() => format!("{:.3}", n.as_f64().unwrap_or(0.0)),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        eprintln!("  {key:<width$}  {shown}");
    }
}

/// `a / b`, rounded to three decimals; `None` when either is missing or `b` is 0.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some((a / b * 1000.0).round() / 1000.0),
        _ => None,
    }
}
