//! Every scenario at a tiny size, through the built binary, against a nats-server and a hub it
//! starts itself: what must hold at any size (nothing lost, exact delivery counts, one snapshot
//! request per key). Needs `nats-server` on PATH.

use std::process::Command;

use serde_json::Value;

/// Runs `vwed-bench <args>` and returns its JSON lines.
fn bench(args: &[&str]) -> Vec<Value> {
    let output = Command::new(env!("CARGO_BIN_EXE_vwed-bench"))
        .args(args)
        .output()
        .expect("vwed-bench runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "vwed-bench {args:?} failed: {stderr}"
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(!lines.is_empty(), "no JSON line; stderr: {stderr}");
    lines
}

fn u(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {report}"))
}

fn f(report: &Value, field: &str) -> f64 {
    report[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} in {report}"))
}

/// Every client subscribed, received exactly what was published to its key, and stayed.
fn assert_complete(report: &Value, clients: u64) {
    assert_eq!(u(report, "connected"), clients, "{report}");
    assert_eq!(u(report, "failed"), 0, "{report}");
    assert_eq!(u(report, "lost"), 0, "{report}");
    assert_eq!(u(report, "duplicates"), 0, "{report}");
    assert_eq!(u(report, "closed"), 0, "{report}");
    assert!(u(report, "expected") > 0, "{report}");
    assert_eq!(u(report, "delivered"), u(report, "expected"), "{report}");
    assert!(f(report, "p99_ms") >= f(report, "p50_ms"), "{report}");
}

#[test]
fn help_names_every_scenario() {
    let output = Command::new(env!("CARGO_BIN_EXE_vwed-bench"))
        .arg("--help")
        .output()
        .expect("vwed-bench runs");
    let help = String::from_utf8_lossy(&output.stdout);
    for scenario in [
        "fanout",
        "many-keys",
        "idle",
        "storage",
        "connect-storm",
        "slow-client",
        "compare",
        "churn",
    ] {
        assert!(help.contains(scenario), "{scenario} missing from:\n{help}");
    }
    for internal in ["worker", "hub"] {
        assert!(
            !help
                .lines()
                .any(|line| line.trim_start().starts_with(&format!("{internal} "))),
            "the internal {internal} subcommand stays hidden:\n{help}"
        );
    }
}

#[test]
fn fanout_delivers_every_event_to_every_client() {
    let lines = bench(&[
        "fanout",
        "--clients",
        "30",
        "--rate",
        "40",
        "--duration",
        "1s",
    ]);
    let report = &lines[0];
    assert_eq!(report["scenario"], "fanout");
    assert_eq!(report["target"], "hub");
    assert_complete(report, 30);
    assert_eq!(u(report, "events_published"), 40);
    assert_eq!(u(report, "expected"), 30 * 40);
    assert_eq!(u(report, "snapshot_requests"), 1);
    assert!(u(report, "hub_rss_bytes") > 0, "{report}");
}

#[test]
fn fanout_sweep_reports_its_steps_and_the_best_passing_rate() {
    let lines = bench(&[
        "fanout",
        "--clients",
        "10",
        "--rate",
        "20",
        "--duration",
        "500ms",
        "--sweep",
        "--sweep-steps",
        "2",
        "--p99-limit-ms",
        "1000",
    ]);
    let report = &lines[0];
    let steps = report["sweep_steps"].as_array().expect("sweep_steps");
    assert_eq!(steps.len(), 2, "{report}");
    let mut best = 0.0f64;
    for step in steps {
        if step["pass"] == true {
            assert_eq!(u(step, "lost"), 0, "{step}");
            assert!(f(step, "p99_ms") <= 1000.0, "{step}");
            best = best.max(f(step, "rate"));
        }
    }
    assert_eq!(f(report, "max_rate"), best, "{report}");
}

#[test]
fn many_keys_delivers_each_key_to_its_client() {
    let lines = bench(&[
        "many-keys",
        "--keys",
        "40",
        "--rate-per-key",
        "3",
        "--duration",
        "1s",
    ]);
    let report = &lines[0];
    assert_complete(report, 40);
    assert_eq!(u(report, "events_published"), 120);
    assert_eq!(u(report, "expected"), 120);
    assert_eq!(u(report, "snapshot_requests"), 40);
}

#[test]
fn idle_reports_memory_per_connection() {
    let lines = bench(&["idle", "--clients", "50", "--keys", "5", "--hold", "300ms"]);
    let report = &lines[0];
    assert_eq!(u(report, "connected"), 50, "{report}");
    assert_eq!(u(report, "closed"), 0, "{report}");
    assert!(report["rss_per_conn_bytes"].is_number(), "{report}");
    assert_eq!(u(report, "snapshot_requests"), 5);
}

#[test]
fn churn_reports_rss_per_sessions_and_leaves_no_connection_open() {
    let lines = bench(&[
        "churn",
        "--clients",
        "20",
        "--sessions",
        "400",
        "--report-every",
        "100",
        "--warmup",
        "100",
        "--tasks",
        "3",
        "--scenes",
        "3",
        "--locations",
        "10",
        "--hold",
        "100ms",
        "--settle",
        "0s",
    ]);
    let report = &lines[0];
    assert_eq!(u(report, "sessions"), 400, "{report}");
    assert_eq!(u(report, "sessions_failed"), 0, "{report}");
    assert!(u(report, "sessions_half") > 0, "{report}");
    assert!(u(report, "sessions_aborted") > 0, "{report}");
    assert_eq!(u(report, "open_connections_at_end"), 0, "{report}");
    let series = report["rss_series"].as_array().expect("a series");
    assert_eq!(series.len(), 4, "{report}");
    assert!(series.iter().all(|s| s["rss_bytes"].is_u64()), "{report}");
    assert!(
        report["rss_growth_per_session_bytes"].is_number(),
        "{report}"
    );
}

#[test]
fn storage_delivers_status_changes_to_matching_filters() {
    let lines = bench(&[
        "storage",
        "--locations",
        "200",
        "--clients",
        "40",
        "--filters",
        "4",
        "--rate",
        "40",
        "--duration",
        "1s",
        "--interval",
        "1",
    ]);
    let report = &lines[0];
    assert_complete(report, 40);
    // Each change is to one location, in one area: a quarter of the clients watch it.
    assert_eq!(u(report, "expected"), 40 * 40 / 4, "{report}");
    assert_eq!(u(report, "snapshot_requests"), 1);
}

#[test]
fn connect_storm_asks_each_key_once() {
    let lines = bench(&["connect-storm", "--clients", "80", "--keys", "8"]);
    let report = &lines[0];
    assert_eq!(u(report, "connected"), 80, "{report}");
    assert_eq!(u(report, "snapshot_requests"), 8, "{report}");
    assert_eq!(u(report, "snapshot_requests_max_per_key"), 1, "{report}");
    assert!(f(report, "max_ms") > 0.0, "{report}");
}

#[test]
fn slow_client_leaves_the_others_complete() {
    let lines = bench(&[
        "slow-client",
        "--clients",
        "10",
        "--rate",
        "50",
        "--duration",
        "1s",
    ]);
    let report = &lines[0];
    assert_complete(report, 10);
    assert_eq!(u(report, "lost_without_staller"), 0, "{report}");
    assert!(report["p99_ms_without_staller"].is_number(), "{report}");
    assert!(u(report, "rss_max_during_stall_bytes") > 0, "{report}");
}

#[test]
fn compare_measures_both_targets_alike() {
    let lines = bench(&[
        "compare",
        "--clients",
        "20",
        "--rate",
        "30",
        "--duration",
        "1s",
        "--idle-clients",
        "30",
        "--idle-keys",
        "3",
        "--hold",
        "300ms",
    ]);
    assert_eq!(lines.len(), 5, "{lines:?}");
    let targets: Vec<(&str, &str)> = lines[..4]
        .iter()
        .map(|l| {
            (
                l["scenario"].as_str().unwrap_or(""),
                l["target"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        targets,
        [
            ("fanout", "hub"),
            ("fanout", "nats-server"),
            ("idle", "hub"),
            ("idle", "nats-server")
        ]
    );
    for fanout in &lines[..2] {
        assert_complete(fanout, 20);
        assert_eq!(u(fanout, "expected"), 20 * 30);
    }
    assert_eq!(
        u(&lines[1], "snapshot_requests"),
        0,
        "nats-server asks no owner"
    );
    for idle in &lines[2..4] {
        assert_eq!(u(idle, "connected"), 30, "{idle}");
    }
    let summary = &lines[4];
    assert_eq!(summary["scenario"], "compare");
    assert!(
        summary["fanout_delivered_per_sec_ratio"].is_number(),
        "{summary}"
    );
    assert!(summary["fanout_p99_ratio"].is_number(), "{summary}");
    assert!(summary["idle_rss_per_conn_ratio"].is_number(), "{summary}");
}
