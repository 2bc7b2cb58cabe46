//! The `vwed-hub` binary as an operator runs it: embedded broker, demo, JSON logs, SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStderr, Command};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const PATIENCE: Duration = Duration::from_secs(20);

/// The next JSON log line whose message starts with `prefix`.
async fn log_line(lines: &mut Lines<BufReader<ChildStderr>>, prefix: &str) -> Value {
    let find = async {
        while let Ok(Some(line)) = lines.next_line().await {
            let entry: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("every log line is JSON ({e}): {line}"));
            if entry["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(prefix))
            {
                return entry;
            }
        }
        panic!("the hub's log ended before a line starting {prefix:?}");
    };
    tokio::time::timeout(PATIENCE, find)
        .await
        .unwrap_or_else(|_| panic!("no log line starting {prefix:?}"))
}

#[tokio::test]
async fn the_demo_hub_logs_each_connection_as_json_and_stops_on_sigterm() {
    let mut hub = Command::new(env!("CARGO_BIN_EXE_vwed-hub"))
        .args(["--listen", "127.0.0.1:0", "--demo", "--log-format", "json"])
        .env_remove("VWED_NATS_URL")
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the hub binary starts");
    let mut lines = BufReader::new(hub.stderr.take().expect("stderr")).lines();

    let broker = log_line(&mut lines, "broker:").await;
    assert!(broker["message"]
        .as_str()
        .unwrap_or_default()
        .contains("embedded"));
    let serving = log_line(&mut lines, "serving").await;
    let addr = serving["addr"]
        .as_str()
        .expect("the address is logged")
        .to_owned();
    let demo = log_line(&mut lines, "demo running").await;
    assert!(demo["scenes"]
        .as_str()
        .unwrap_or_default()
        .contains("warehouse-north"));

    let url = format!("ws://{addr}/ws/storage-location/warehouse-north?interval=1");
    let (mut client, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connects");
    let first = tokio::time::timeout(PATIENCE, client.next()).await;
    let Ok(Some(Ok(Message::Text(text)))) = first else {
        panic!("expected the scene's state, got {first:?}");
    };
    let state: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(state["type"], "storage_location_update");

    let opened = log_line(&mut lines, "connection opened").await;
    assert_eq!(opened["endpoint"], "storage-location");
    assert_eq!(opened["key"], "warehouse-north");
    assert!(opened["peer"]
        .as_str()
        .unwrap_or_default()
        .starts_with("127.0.0.1:"));

    client
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        })))
        .await
        .expect("close sent");
    let closed = log_line(&mut lines, "connection closed").await;
    assert_eq!(closed["endpoint"], "storage-location");
    assert_eq!(closed["key"], "warehouse-north");
    assert_eq!(closed["close_code"], 1000);
    assert_eq!(closed["closed_by"], "client");
    assert!(closed["duration_ms"].is_u64(), "{closed}");

    // A client that vanishes without a close frame is the network's doing, not the hub's.
    let url = format!("ws://{addr}/ws/task-execution-broadcast/gone");
    let (vanishing, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connects");
    log_line(&mut lines, "connection opened").await;
    drop(vanishing);
    let vanished = log_line(&mut lines, "connection closed").await;
    assert_eq!(vanished["key"], "gone");
    assert_eq!(vanished["closed_by"], "network", "{vanished}");
    assert!(
        vanished.get("close_code").is_none_or(Value::is_null),
        "{vanished}"
    );

    let pid = hub.id().expect("a pid").to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().await;
    assert!(sent.is_ok_and(|status| status.success()));
    log_line(&mut lines, "stopped").await;
    let exit = tokio::time::timeout(PATIENCE, hub.wait()).await;
    assert!(
        matches!(exit, Ok(Ok(status)) if status.success()),
        "{exit:?}"
    );
}
