//! What every endpoint shares: heartbeats, client message errors, validation and close codes,
//! the frame limit, liveness, probes and shutdown.

use std::time::Duration;

use tokio_tungstenite::tungstenite::Message;
use vwed_e2e::{
    http_get, http_request, location, on_both_brokers, BrokerKind, Client, Owner, Received,
    TestBroker, TestHub,
};
use vwed_publisher::{TaskResult, TaskStatus};

const ENDPOINTS: [&str; 4] = [
    "/ws/task-execution/t-1",
    "/ws/task-execution-broadcast/t-1",
    "/ws/storage-location/s-1",
    "/ws/storage-location-broadcast/s-1",
];

async fn start(kind: BrokerKind) -> (TestBroker, Owner, TestHub) {
    let broker = TestBroker::start(kind).await;
    let owner = seeded_owner(&broker).await;
    let hub = TestHub::start(&broker).await;
    (broker, owner, hub)
}

/// An owner of task `t-1` and scene `s-1`.
async fn seeded_owner(broker: &TestBroker) -> Owner {
    let owner = Owner::start(broker).await;
    owner
        .seed_task("t-1", vec![TaskResult::now("[a] 1", TaskStatus::Success)])
        .await;
    owner
        .seed_scene("s-1", vec![location("s-1", "l-1", "A1", "S1", 1)])
        .await;
    owner
}

/// Connects and consumes the initial state of realtime endpoints.
async fn connect_settled(hub: &TestHub, path: &str) -> Client {
    let mut client = Client::connect(hub, path).await;
    if !path.contains("broadcast") {
        let first = client.next_json().await;
        assert!(
            first["type"].as_str().unwrap().ends_with("_update"),
            "{first}"
        );
    }
    client
}

async fn both_ping_forms_on_every_endpoint(kind: BrokerKind) {
    let (_broker, _owner, hub) = start(kind).await;
    for path in ENDPOINTS {
        let mut client = connect_settled(&hub, path).await;
        client.assert_alive().await;
        client
            .send_text(r#"{"type":"ping","timestamp":"2025-06-11T12:00:00.000Z"}"#)
            .await;
        let pong = client.next_json().await;
        assert_eq!(pong["type"], "pong", "{path}");
        assert_eq!(pong.as_object().unwrap().len(), 2, "{pong}");
        assert_eq!(pong["timestamp"].as_str().unwrap().len(), 24);
        client.send_text(r#"{"type":"ping"}"#).await;
        assert_eq!(client.next_json().await["type"], "pong");
    }
}

async fn bad_client_messages_get_an_error_and_the_connection_stays(kind: BrokerKind) {
    let (_broker, _owner, hub) = start(kind).await;
    for path in ENDPOINTS {
        let mut client = connect_settled(&hub, path).await;
        let id_field = if path.contains("task") {
            "task_record_id"
        } else {
            "scene_id"
        };
        let id = if path.contains("task") { "t-1" } else { "s-1" };
        let bad: Vec<(Message, &str)> = vec![
            (Message::Text("{not json".into()), "JSON"),
            (Message::Text("PING".into()), "JSON"),
            (Message::Text(r#"{"kind":"ping"}"#.into()), "JSON"),
            (
                Message::Text(r#"{"type":"subscribe"}"#.into()),
                "未知的消息类型: subscribe",
            ),
            (Message::Binary(vec![1, 2, 3].into()), "二进制"),
        ];
        for (message, expected) in bad {
            client.send(message).await;
            let error = client.next_of_type("error").await;
            assert_eq!(error[id_field], id, "{path}: {error}");
            assert!(
                error["message"].as_str().unwrap().contains(expected),
                "{path}: {error}"
            );
            assert_eq!(error.as_object().unwrap().len(), 4, "{error}");
        }
        client.assert_alive().await;
    }
}

async fn invalid_parameters_get_one_error_then_1008(kind: BrokerKind) {
    let (_broker, _owner, hub) = start(kind).await;
    let long_id = "x".repeat(257);
    let cases: Vec<(String, &str, &str)> = vec![
        (
            "/ws/task-execution/t-1?interval=0".into(),
            "task_record_id",
            "interval",
        ),
        (
            "/ws/task-execution/t-1?interval=31".into(),
            "task_record_id",
            "interval",
        ),
        (
            "/ws/task-execution/t-1?interval=-1".into(),
            "task_record_id",
            "interval",
        ),
        (
            "/ws/task-execution/t-1?interval=2.5".into(),
            "task_record_id",
            "interval",
        ),
        (
            "/ws/task-execution/t-1?interval=abc".into(),
            "task_record_id",
            "interval",
        ),
        (
            "/ws/task-execution/t-1?interval=".into(),
            "task_record_id",
            "interval",
        ),
        (
            "/ws/task-execution/t-1?interval=2&interval=3".into(),
            "task_record_id",
            "重复",
        ),
        (
            "/ws/storage-location/s-1?interval=100".into(),
            "scene_id",
            "1 到 30",
        ),
        (
            "/ws/storage-location/s-1?is_occupied=yes".into(),
            "scene_id",
            "is_occupied",
        ),
        (
            "/ws/storage-location/s-1?is_locked=".into(),
            "scene_id",
            "is_locked",
        ),
        (
            "/ws/storage-location/s-1?is_disabled=2".into(),
            "scene_id",
            "true、false、1、0",
        ),
        ("/ws/task-execution/".into(), "task_record_id", "不能为空"),
        (
            "/ws/storage-location-broadcast/".into(),
            "scene_id",
            "不能为空",
        ),
        (
            format!("/ws/task-execution/{long_id}"),
            "task_record_id",
            "256",
        ),
        ("/ws/storage-location/a%0Ab".into(), "scene_id", "控制字符"),
        (
            "/ws/task-execution-broadcast/%FF%FE".into(),
            "task_record_id",
            "UTF-8",
        ),
    ];
    for (path, id_field, expected) in cases {
        let mut client = Client::connect(&hub, &path).await;
        let error = client.next_of_type("error").await;
        assert!(error.get(id_field).is_some(), "{path}: {error}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(expected), "{path}: {message}");
        assert_eq!(client.close_code().await, 1008, "{path}");
    }
    // The hub is unharmed.
    let mut client = connect_settled(&hub, ENDPOINTS[0]).await;
    client.assert_alive().await;
}

async fn a_frame_over_64_kib_closes_with_1009(kind: BrokerKind) {
    let (_broker, _owner, hub) = start(kind).await;
    let mut other = connect_settled(&hub, ENDPOINTS[3]).await;
    let mut client = connect_settled(&hub, ENDPOINTS[0]).await;
    let just_fits = format!(
        r#"{{"type":"ping","pad":"{}"}}"#,
        "x".repeat(64 * 1024 - 30)
    );
    assert!(just_fits.len() <= 64 * 1024);
    client.send_text(&just_fits).await;
    assert_eq!(client.next_json().await["type"], "pong");
    client.send_text(&"x".repeat(64 * 1024 + 1)).await;
    assert_eq!(client.close_code().await, 1009);
    // Other clients do not notice.
    other.assert_alive().await;
}

async fn plain_http_and_unknown_paths(kind: BrokerKind) {
    let (_broker, _owner, hub) = start(kind).await;
    for path in ENDPOINTS {
        let (status, body) = http_get(hub.addr(), path).await;
        assert!(status == 400 || status == 426, "{path}: {status}");
        assert!(!body.is_empty());
    }
    for path in [
        "/ws",
        "/ws/",
        "/ws/unknown/x",
        "/ws/task-execution/a/b",
        "/wss/task-execution/x",
        "/favicon.ico",
    ] {
        assert_eq!(http_get(hub.addr(), path).await.0, 404, "{path}");
    }
    let (status, page) = http_get(hub.addr(), "/").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("<script src=\"app.js\"") || page.contains("<script src=\"/app.js\""),
        "{page}"
    );
    for asset in ["/app.js", "/style.css"] {
        let (status, body) = http_get(hub.addr(), asset).await;
        assert_eq!(status, 200, "{asset}");
        assert!(body.len() > 1000, "{asset}");
    }
    let bad_version = "GET /ws/task-execution/t-1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    assert_eq!(http_request(hub.addr(), bad_version).await.0, 400);
    let no_key = "GET /ws/task-execution/t-1 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n";
    assert_eq!(http_request(hub.addr(), no_key).await.0, 400);
}

async fn probes_and_metrics(kind: BrokerKind) {
    let (_broker, owner, hub) = start(kind).await;
    assert_eq!(http_get(hub.addr(), "/healthz").await, (200, "ok".into()));
    assert_eq!(http_get(hub.addr(), "/readyz").await.0, 200);
    let _client = connect_settled(&hub, ENDPOINTS[2]).await;
    assert_eq!(
        hub.metric(r#"vwed_hub_connections{endpoint="storage-location"}"#)
            .await,
        1.0
    );
    assert_eq!(hub.metric("vwed_hub_broker_connected").await, 1.0);
    assert_eq!(
        hub.metric(r#"vwed_hub_snapshot_duration_seconds_count{kind="scene"}"#)
            .await,
        1.0,
        "the connect took one snapshot, and its time was measured"
    );
    let (status, body) = http_get(hub.addr(), "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("# TYPE vwed_hub_messages_delivered counter"),
        "{body}"
    );
    assert!(
        body.contains("# TYPE vwed_hub_snapshot_duration_seconds histogram"),
        "{body}"
    );

    // Events for the watched key are counted as received; events for a key nobody here
    // watches never reach the hub.
    owner
        .upsert("s-2", vec![location("s-2", "l-1", "A1", "S1", 1)])
        .await;
    owner
        .upsert("s-1", vec![location("s-1", "l-2", "A1", "S1", 2)])
        .await;
    let received = r#"vwed_hub_broker_messages_received_total{kind="scene"}"#;
    vwed_e2e::eventually("the hub counts the watched key's event", || async {
        hub.metric(received).await >= 1.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        hub.metric(received).await,
        1.0,
        "only the watched key's event"
    );
    assert!(body.trim_end().ends_with("# EOF"));
}

async fn silent_connections_are_dropped_and_their_resources_freed(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let owner = Owner::start(&broker).await;
    owner.seed_task("t-1", vec![]).await;
    let hub = TestHub::start_with(&broker, |c| c.ping_interval = Duration::from_millis(200)).await;

    // This client reads (and so answers pings); the other never reads again.
    let mut alive = Client::connect(&hub, "/ws/task-execution-broadcast/t-1").await;
    let silent = Client::connect(&hub, "/ws/task-execution/t-1").await;
    vwed_e2e::eventually("both are counted", || async {
        hub.metric(r#"vwed_hub_connections{endpoint="task-execution"}"#)
            .await
            == 1.0
            && hub
                .metric(r#"vwed_hub_connections{endpoint="task-execution-broadcast"}"#)
                .await
                == 1.0
    })
    .await;
    alive.expect_silence(Duration::from_millis(1500)).await;
    vwed_e2e::eventually("the silent one is gone", || async {
        hub.metric(r#"vwed_hub_connections{endpoint="task-execution"}"#)
            .await
            == 0.0
    })
    .await;
    assert_eq!(
        hub.metric(r#"vwed_hub_connections{endpoint="task-execution-broadcast"}"#)
            .await,
        1.0
    );
    alive.assert_alive().await;
    drop(silent);
}

async fn shutdown_closes_every_client_with_1001(kind: BrokerKind) {
    let (_broker, _owner, mut hub) = start(kind).await;
    let mut clients = Vec::new();
    for path in ENDPOINTS {
        clients.push(connect_settled(&hub, path).await);
    }
    hub.shutdown().await;
    for mut client in clients {
        assert_eq!(client.close_code().await, 1001);
    }
}

async fn a_drain_spread_closes_clients_a_few_at_a_time(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let owner = Owner::start(&broker).await;
    owner.seed_task("t-d", vec![]).await;
    let mut hub = TestHub::start_with(&broker, |c| {
        c.drain_spread = Duration::from_secs(2);
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..16 {
        clients.push(connect_settled(&hub, "/ws/task-execution-broadcast/t-d").await);
    }
    hub.wait_for_subscriptions(1).await;
    // Events keep flowing through the drain, so every connection is busy writing: each must
    // still close at its own moment, and be served until then.
    let publishing = std::sync::atomic::AtomicBool::new(true);
    let publisher = async {
        let mut n = 0;
        while publishing.load(std::sync::atomic::Ordering::Relaxed) {
            owner
                .append("t-d", &format!("[drain] {n}"), TaskStatus::Running)
                .await;
            n += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let started = tokio::time::Instant::now();
    let closes = futures::future::join_all(clients.iter_mut().map(|client| async {
        let mut served = 0;
        loop {
            match client.next().await {
                Received::Json(_) => served += 1,
                Received::Close(close) => {
                    return (close.map(|(code, _)| code), started.elapsed(), served)
                }
                other => panic!("expected events then a close, got {other:?}"),
            }
        }
    }));
    let draining = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        hub.shutdown().await;
        publishing.store(false, std::sync::atomic::Ordering::Relaxed);
    };
    let ((), (), closes) = tokio::join!(publisher, draining, closes);
    assert!(
        closes.iter().all(|(code, ..)| *code == Some(1001)),
        "{closes:?}"
    );
    let first = closes
        .iter()
        .map(|(_, at, _)| *at)
        .min()
        .unwrap_or_default();
    let last = closes
        .iter()
        .map(|(_, at, _)| *at)
        .max()
        .unwrap_or_default();
    // 16 moments drawn over 2 s: all within 0.5 s of each other is a chance of about 1e-8.
    assert!(last - first >= Duration::from_millis(500), "{closes:?}");
    let served_longest = closes
        .iter()
        .max_by_key(|(_, at, _)| *at)
        .map(|(.., served)| *served);
    let served_shortest = closes
        .iter()
        .min_by_key(|(_, at, _)| *at)
        .map(|(.., served)| *served);
    assert!(
        served_longest > served_shortest,
        "the last to close got events until then: {closes:?}"
    );
}

async fn connection_limits_turn_clients_away_with_1013(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let owner = Owner::start(&broker).await;
    owner.seed_task("t-l", vec![]).await;
    let hub = TestHub::start_with(&broker, |c| {
        c.max_connections = 3;
        c.max_connections_per_ip = 2;
        c.trusted_proxies = vec!["127.0.0.1/32".parse().expect("a network")];
    })
    .await;
    let hub = &hub;
    let connect = |ip: &'static str| async move {
        Client::try_connect_with_headers(hub, "/ws/task-execution/t-l", &[("x-forwarded-for", ip)])
            .await
            .expect("the handshake succeeds")
    };
    let mut first = connect("198.51.100.1").await;
    first.next_of_type("task_execution_update").await;
    let mut second = connect("198.51.100.1").await;
    second.next_of_type("task_execution_update").await;

    // A third from the same address: told why, then 1013, with nothing of the key's data.
    let mut third = connect("198.51.100.1").await;
    let error = third.next_json().await;
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["task_record_id"], "t-l");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("上限"),
        "{error}"
    );
    assert_eq!(third.close_code().await, 1013);

    // Another address has room until the hub as a whole is full.
    let mut other = connect("203.0.113.9").await;
    other.next_of_type("task_execution_update").await;
    let mut fourth = connect("192.0.2.44").await;
    assert_eq!(fourth.next_json().await["type"], "error");
    assert_eq!(fourth.close_code().await, 1013);

    // A client that leaves gives its place back.
    first.close().await;
    vwed_e2e::eventually("a place is free again", || async move {
        let mut again = connect("198.51.100.1").await;
        again.next_json().await["type"] == "task_execution_update"
    })
    .await;
    second.assert_alive().await;
}

async fn only_allowed_origins_may_connect(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let owner = Owner::start(&broker).await;
    owner.seed_task("t-o", vec![]).await;
    let hub = TestHub::start_with(&broker, |c| {
        c.allowed_origins = vec!["https://panel.example".into()];
    })
    .await;
    let path = "/ws/task-execution/t-o";
    let refused =
        Client::try_connect_with_headers(&hub, path, &[("origin", "https://evil.example")]).await;
    assert_eq!(refused.err(), Some(403));
    for headers in [&[("origin", "https://panel.example")][..], &[]] {
        let mut client = Client::try_connect_with_headers(&hub, path, headers)
            .await
            .expect("allowed");
        client.next_of_type("task_execution_update").await;
    }
}

async fn a_client_that_floods_is_told_then_closed_with_1008(kind: BrokerKind) {
    let (_broker, _owner, hub) = start(kind).await;
    let mut other = connect_settled(&hub, ENDPOINTS[2]).await;
    let mut flooder = connect_settled(&hub, ENDPOINTS[1]).await;
    // The default allowance: a burst of 40, then 20 a second.
    for _ in 0..40 {
        flooder.send_text("ping").await;
    }
    for _ in 0..40 {
        assert_eq!(flooder.next().await, Received::Text("pong".into()));
    }
    for _ in 0..200 {
        flooder.send_text("ping").await;
    }
    let mut pongs = 0;
    let error = loop {
        match flooder.next().await {
            Received::Text(pong) if pong == "pong" => pongs += 1,
            Received::Json(error) => break error,
            other => panic!("expected pongs then an error, got {other:?}"),
        }
    };
    assert_eq!(error["type"], "error");
    assert_eq!(error["message"], "消息发送过于频繁,请降低发送频率");
    assert!(pongs < 200, "the flood was cut short");
    loop {
        match flooder.next().await {
            Received::Text(pong) if pong == "pong" => continue,
            Received::Close(close) => {
                assert_eq!(close.map(|(code, _)| code), Some(1008));
                break;
            }
            other => panic!("expected the close, got {other:?}"),
        }
    }
    other.assert_alive().await;
}

async fn a_flood_of_get_status_costs_the_hub_little_and_others_nothing(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let _owner = seeded_owner(&broker).await;
    // This flood is on purpose: no message limit, to see what the hub does with the flood.
    let hub = TestHub::start_with(&broker, |c| c.client_message_rate = 0.0).await;
    let mut other = connect_settled(&hub, ENDPOINTS[2]).await;
    let mut flooder = connect_settled(&hub, ENDPOINTS[0]).await;
    for _ in 0..5000 {
        flooder.send_text(r#"{"type":"get_status"}"#).await;
    }
    flooder.send_text("ping").await;
    let mut states = 0;
    loop {
        match flooder.next().await {
            Received::Text(pong) if pong == "pong" => break,
            Received::Json(state) if state["type"] == "task_execution_update" => states += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    while let Some(received) = flooder.next_within(Duration::from_millis(500)).await {
        assert!(matches!(&received, Received::Json(s) if s["type"] == "task_execution_update"));
        states += 1;
    }
    // Requests that arrive while one is pending are answered together, not queued one by one.
    assert!((1..5000).contains(&states), "{states} answers");
    other.send_text(r#"{"type":"get_status"}"#).await;
    assert_eq!(other.next_json().await["type"], "storage_location_update");
}

on_both_brokers!(
    both_ping_forms_on_every_endpoint,
    bad_client_messages_get_an_error_and_the_connection_stays,
    invalid_parameters_get_one_error_then_1008,
    a_frame_over_64_kib_closes_with_1009,
    plain_http_and_unknown_paths,
    probes_and_metrics,
    silent_connections_are_dropped_and_their_resources_freed,
    shutdown_closes_every_client_with_1001,
    a_drain_spread_closes_clients_a_few_at_a_time,
    connection_limits_turn_clients_away_with_1013,
    only_allowed_origins_may_connect,
    a_client_that_floods_is_told_then_closed_with_1008,
    a_flood_of_get_status_costs_the_hub_little_and_others_nothing,
);
