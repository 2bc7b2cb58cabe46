//! Faults: snapshots racing events, owners missing, NATS gone and back, malformed events.

use std::time::Duration;

use vwed_e2e::{
    eventually, free_port, http_get, location, on_both_brokers, BrokerKind, Client, HubProcess,
    Owner, TestBroker, TestHub,
};
use vwed_publisher::{Publisher, StatusAction, TaskResult, TaskStatus};

/// Publishes raw bytes on a subject, as a broken publisher might.
async fn raw_publish(publisher: &Publisher, subject: String, payload: &[u8]) {
    publisher
        .publish_raw(subject, payload.to_vec().into())
        .await
        .expect("publish");
    publisher.flush().await.expect("flush");
}

async fn events_racing_a_snapshot_merge_exactly(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let owner = Owner::start(&broker).await;
    owner
        .seed_task("race", vec![TaskResult::now("[a] 0", TaskStatus::Running)])
        .await;
    // The snapshot leaves a second after the owner read its state; events are published meanwhile.
    owner.delay_replies(Duration::from_secs(1));
    let hub = TestHub::start_with(&broker, |c| c.snapshot_timeout = Duration::from_secs(5)).await;

    let mut realtime = Client::connect(&hub, "/ws/task-execution/race?interval=1").await;
    hub.wait_for_subscriptions(1).await;
    let mut broadcast = Client::connect(&hub, "/ws/task-execution-broadcast/race").await;
    broadcast.assert_alive().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for n in 1..=3 {
        owner
            .append("race", &format!("[b] {n}"), TaskStatus::Running)
            .await;
    }

    // The first state the client sees already holds every result, each once.
    let first = realtime.next_of_type("task_execution_update").await;
    assert_eq!(first["data"], owner.task_data("race").await);
    assert_eq!(first["data"].as_array().unwrap().len(), 4);
    // Broadcast clients got the events as they happened, while the snapshot was on its way.
    for n in 1..=3 {
        let event = broadcast.next_of_type("task_execution_update").await;
        assert_eq!(event["data"][0]["context"], format!("[b] {n}"));
    }
    realtime.expect_silence(Duration::from_millis(2500)).await;
}

async fn a_missing_owner_gets_an_error_and_the_state_once_it_answers(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let mut owner = Owner::start_silent(&broker).await;
    owner
        .seed_scene("s-late", vec![location("s-late", "l-1", "A1", "S1", 1)])
        .await;
    let hub = TestHub::start(&broker).await;

    let mut client = Client::connect(&hub, "/ws/storage-location/s-late?interval=1").await;
    let error = client.next_of_type("error").await;
    assert_eq!(error["scene_id"], "s-late");
    assert!(
        error["message"].as_str().unwrap().contains("正在重试"),
        "{error}"
    );
    client.assert_alive().await;

    owner.answer_snapshots().await;
    let update = client.next_of_type("storage_location_update").await;
    assert_eq!(
        update["data"]["storage_locations"],
        owner.scene_locations("s-late", |_| true).await
    );
}

async fn a_slow_owner_times_out_and_is_retried(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let owner = Owner::start(&broker).await;
    owner
        .seed_task("slow", vec![TaskResult::now("[a] 1", TaskStatus::Running)])
        .await;
    owner.delay_replies(Duration::from_secs(2));
    let hub =
        TestHub::start_with(&broker, |c| c.snapshot_timeout = Duration::from_millis(300)).await;

    let mut client = Client::connect(&hub, "/ws/task-execution/slow").await;
    let error = client.next_of_type("error").await;
    assert!(
        error["message"].as_str().unwrap().contains("正在重试"),
        "{error}"
    );
    owner.delay_replies(Duration::ZERO);
    let update = client.next_of_type("task_execution_update").await;
    assert_eq!(update["data"], owner.task_data("slow").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_stay_connected_through_a_nats_restart_and_end_with_the_owners_state() {
    let mut broker = TestBroker::start(BrokerKind::Nats).await;
    let owner = Owner::start(&broker).await;
    owner
        .seed_task("t-r", vec![TaskResult::now("[a] 1", TaskStatus::Running)])
        .await;
    owner
        .seed_scene(
            "s-r",
            vec![
                location("s-r", "l-1", "A1", "S1", 1),
                location("s-r", "l-2", "A1", "S1", 2),
            ],
        )
        .await;
    let hub = TestHub::start(&broker).await;
    let mut task = Client::connect(&hub, "/ws/task-execution/t-r?interval=1").await;
    let mut scene = Client::connect(&hub, "/ws/storage-location/s-r?interval=1").await;
    task.next_of_type("task_execution_update").await;
    scene.next_of_type("storage_location_update").await;

    broker.nats().stop().await;
    assert_eq!(
        http_get(hub.addr(), "/readyz").await.0,
        503,
        "not ready without NATS"
    );
    // While NATS is down the owner's state moves on; no event about it reaches the hub.
    owner
        .seed_task(
            "t-r",
            vec![
                TaskResult::now("[a] 1", TaskStatus::Running),
                TaskResult::now("[a] 1", TaskStatus::Success),
            ],
        )
        .await;
    let mut moved = location("s-r", "l-2", "A1", "S1", 2);
    moved.is_occupied = true;
    owner
        .seed_scene("s-r", vec![location("s-r", "l-1", "A1", "S1", 1), moved])
        .await;
    broker.nats().restart().await;
    hub.wait_until_ready().await;

    let update = task.next_of_type("task_execution_update").await;
    assert_eq!(update["data"], owner.task_data("t-r").await);
    let update = scene.next_of_type("storage_location_update").await;
    assert_eq!(
        update["data"]["storage_locations"],
        owner.scene_locations("s-r", |_| true).await
    );

    // Events flow again after the restart.
    owner
        .change_status("s-r", "l-1", StatusAction::Lock, |l| l.is_locked = true)
        .await;
    let change = scene.next_of_type("storage_location_status_change").await;
    assert_eq!(change["new_status"]["id"], "l-1");
    let update = scene.next_of_type("storage_location_update").await;
    assert_eq!(
        update["data"]["storage_locations"],
        owner.scene_locations("s-r", |_| true).await
    );
}

async fn malformed_events_are_dropped_and_the_hub_carries_on(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let owner = Owner::start(&broker).await;
    owner
        .seed_task("t-m", vec![TaskResult::now("[a] 1", TaskStatus::Running)])
        .await;
    owner
        .seed_task("t-m2", vec![TaskResult::now("[a] 1", TaskStatus::Running)])
        .await;
    let hub = TestHub::start(&broker).await;
    let mut realtime = Client::connect(&hub, "/ws/task-execution/t-m?interval=1").await;
    let mut broadcast = Client::connect(&hub, "/ws/task-execution-broadcast/t-m").await;
    // Watches the key the misaddressed event names: it must not get that event either.
    let mut other = Client::connect(&hub, "/ws/task-execution-broadcast/t-m2").await;
    realtime.next_of_type("task_execution_update").await;
    hub.wait_for_subscriptions(2).await;

    let publisher = owner.publisher();
    let subject = owner.publisher().subjects().task_events("t-m");
    // A result list that fills a payload to just under NATS's 1 MiB limit, valid up to its
    // last entry: the parser reads nearly all of it before it finds the fault.
    let near_limit = {
        let head = r#"{"task_record_id":"t-m","rev":99999999999999999,"op":"replace","results":["#;
        let tail = r#"{"created_at":"x"}]}"#;
        let entry =
            r#"{"created_at":"2025-06-11T12:00:00.000Z","context":"y","status":"RUNNING"},"#;
        let room = vwed_publisher::memory::MAX_PAYLOAD - 64 - head.len() - tail.len();
        let mut payload = String::from(head);
        payload.push_str(&entry.repeat(room / entry.len()));
        payload.push_str(tail);
        payload
    };
    assert!(near_limit.len() > vwed_publisher::memory::MAX_PAYLOAD - 200);
    assert!(near_limit.len() < vwed_publisher::memory::MAX_PAYLOAD);
    let huge_but_short_of_fields = format!(
        r#"{{"task_record_id":"t-m","rev":1,"op":"replace","results":[{}]}}"#,
        vec![r#"{"created_at":"x","context":"y"}"#; 20_000].join(",")
    );
    let malformed: Vec<&[u8]> = vec![
        // Not JSON at all.
        b"not json",
        &[0xff, 0xfe, 0x00],
        b"",
        b"{\"task_record_id\":\"t-m\",\"rev\":5,",
        // JSON, but not an object.
        b"[]",
        br#"[{"task_record_id":"t-m","rev":5,"op":"replace","results":[]}]"#,
        b"42",
        br#""t-m""#,
        b"null",
        b"true",
        // An object of the wrong shape.
        b"{}",
        br#"{"task_record_id":"t-m","op":"append","index":1,"results":[]}"#,
        br#"{"task_record_id":"t-m","rev":"9","op":"replace","results":[]}"#,
        br#"{"task_record_id":"t-m","rev":-1,"op":"replace","results":[]}"#,
        br#"{"task_record_id":"t-m","rev":1.5,"op":"replace","results":[]}"#,
        br#"{"task_record_id":7,"rev":5,"op":"replace","results":[]}"#,
        br#"{"task_record_id":"t-m","rev":5,"op":"explode","results":[]}"#,
        br#"{"task_record_id":"t-m","rev":5,"op":"replace","results":{}}"#,
        br#"{"task_record_id":"t-m","rev":5,"prev_rev":"4","op":"replace","results":[]}"#,
        br#"{"task_record_id":"t-m","rev":5,"prev_rev":-1,"op":"replace","results":[]}"#,
        br#"{"task_record_id":"t-m","rev":99999999999999999,"op":"replace","results":[{"status":"DONE"}]}"#,
        near_limit.as_bytes(),
        huge_but_short_of_fields.as_bytes(),
    ];
    let misaddressed: [&[u8]; 2] = [
        br#"{"task_record_id":"other","rev":99999999999999999,"op":"replace","results":[]}"#,
        // An event for t-m2, which has a client on this hub, on t-m's subject.
        br#"{"task_record_id":"t-m2","rev":99999999999999999,"op":"replace","results":[]}"#,
    ];
    // An event that names itself, or a later rev, as the one before it.
    let broken_chains: [&[u8]; 2] = [
        br#"{"task_record_id":"t-m","rev":99999999999999999,"prev_rev":99999999999999999,"op":"replace","results":[]}"#,
        br#"{"task_record_id":"t-m","rev":99999999999999990,"prev_rev":99999999999999999,"op":"replace","results":[]}"#,
    ];
    for payload in malformed.iter().chain(&misaddressed).chain(&broken_chains) {
        raw_publish(publisher, subject.clone(), payload).await;
    }
    broadcast.expect_silence(Duration::from_millis(800)).await;
    other.expect_silence(Duration::from_millis(100)).await;
    realtime.expect_silence(Duration::from_millis(1500)).await;

    owner.append("t-m", "[b] 2", TaskStatus::Success).await;
    let event = broadcast.next_of_type("task_execution_update").await;
    assert_eq!(event["data"][0]["context"], "[b] 2");
    let update = realtime.next_of_type("task_execution_update").await;
    assert_eq!(update["data"], owner.task_data("t-m").await);
    other.expect_silence(Duration::from_millis(100)).await;
    // Events of one subject arrive in order, so every refusal is counted by now.
    assert_eq!(
        hub.metric(r#"vwed_hub_events_rejected_total{kind="task",reason="malformed"}"#)
            .await,
        malformed.len() as f64
    );
    assert_eq!(
        hub.metric(r#"vwed_hub_events_rejected_total{kind="task",reason="wrong_key"}"#)
            .await,
        misaddressed.len() as f64
    );
    assert_eq!(
        hub.metric(r#"vwed_hub_events_rejected_total{kind="task",reason="broken_chain"}"#)
            .await,
        broken_chains.len() as f64
    );
}

/// The hub logs the first refused payload of each key and cause at warn, and the rest at debug,
/// so a broken publisher cannot flood the log. Shown on the hub binary's JSON log.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_payload_is_logged_once_per_key_and_cause() {
    let broker = TestBroker::start(BrokerKind::Nats).await;
    let owner = Owner::start(&broker).await;
    for task in ["t-log-a", "t-log-b"] {
        owner
            .seed_task(task, vec![TaskResult::now("[a] 1", TaskStatus::Running)])
            .await;
    }
    let hub = HubProcess::start(
        env!("CARGO_BIN_EXE_vwed-hub-under-test"),
        "resilience-refusals-logged-once",
        &broker.nats_url().unwrap_or_default(),
        &[],
    )
    .await;
    let mut clients = Vec::new();
    for task in ["t-log-a", "t-log-b"] {
        let mut client =
            Client::connect_url(&hub.url(&format!("/ws/task-execution-broadcast/{task}"))).await;
        client.assert_alive().await;
        clients.push(client);
    }
    eventually("the hub subscribes to both tasks", || async {
        hub.metric("vwed_hub_broker_subscriptions").await == 2.0
    })
    .await;

    let publisher = owner.publisher();
    let subjects = publisher.subjects();
    let wrong_key = br#"{"task_record_id":"elsewhere","rev":5,"op":"replace","results":[]}"#;
    for _ in 0..3 {
        raw_publish(publisher, subjects.task_events("t-log-a"), b"not json").await;
        raw_publish(publisher, subjects.task_events("t-log-a"), wrong_key).await;
        raw_publish(publisher, subjects.task_events("t-log-b"), b"[]").await;
    }
    // Once each client has a good event after the bad ones, the hub has seen them all.
    for (task, client) in ["t-log-a", "t-log-b"].into_iter().zip(&mut clients) {
        owner.append(task, "[b] 2", TaskStatus::Success).await;
        client.next_of_type("task_execution_update").await;
    }
    assert_eq!(
        hub.metric(r#"vwed_hub_events_rejected_total{kind="task",reason="malformed"}"#)
            .await,
        6.0
    );
    assert_eq!(
        hub.metric(r#"vwed_hub_events_rejected_total{kind="task",reason="wrong_key"}"#)
            .await,
        3.0
    );

    let log = std::fs::read_to_string(hub.log()).expect("the hub's log");
    let mut warned: Vec<(String, String)> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|entry| {
            entry["level"] == "WARN"
                && entry["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("refused a payload"))
        })
        .map(|entry| {
            let field = |name: &str| entry[name].as_str().unwrap_or_default().to_owned();
            (field("id"), field("cause"))
        })
        .collect();
    warned.sort();
    let expected = [
        ("t-log-a", "malformed"),
        ("t-log-a", "wrong_key"),
        ("t-log-b", "malformed"),
    ]
    .map(|(id, cause)| (id.to_owned(), cause.to_owned()));
    assert_eq!(warned, expected, "see {}", hub.log().display());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_nats_a_new_client_is_told_to_come_back_later() {
    let unreachable = format!("nats://127.0.0.1:{}", free_port());
    let hub = TestHub::launch(&unreachable, |_| {}).await;
    assert_eq!(http_get(hub.addr(), "/healthz").await.0, 200);
    assert_eq!(http_get(hub.addr(), "/readyz").await.0, 503);
    let mut client = Client::connect(&hub, "/ws/task-execution/t-1").await;
    let error = client.next_of_type("error").await;
    assert_eq!(error["task_record_id"], "t-1");
    assert_eq!(client.close_code().await, 1013);
}

async fn events_with_an_old_rev_change_nothing(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let owner = Owner::start(&broker).await;
    owner
        .seed_scene("s-old", vec![location("s-old", "l-1", "A1", "S1", 1)])
        .await;
    let hub = TestHub::start(&broker).await;
    let mut realtime = Client::connect(&hub, "/ws/storage-location/s-old?interval=1").await;
    let mut broadcast = Client::connect(&hub, "/ws/storage-location-broadcast/s-old").await;
    realtime.next_of_type("storage_location_update").await;
    hub.wait_for_subscriptions(1).await;
    owner
        .change_status("s-old", "l-1", StatusAction::Lock, |l| l.is_locked = true)
        .await;
    broadcast
        .next_of_type("storage_location_status_change")
        .await;
    realtime
        .next_of_type("storage_location_status_change")
        .await;
    let current = realtime.next_of_type("storage_location_update").await;

    // A late message from before all that: it would occupy l-1, but its rev is old.
    let stale = vwed_publisher::SceneEvent {
        scene_id: "s-old".into(),
        rev: 1,
        prev_rev: None,
        change: vwed_publisher::SceneChange::StatusChange {
            layer_name: "S1-1".into(),
            action: StatusAction::Occupy,
            timestamp: vwed_publisher::timestamp_now(),
            new_status: vwed_publisher::LocationStatus {
                is_occupied: true,
                ..location("s-old", "l-1", "A1", "S1", 1).status()
            },
        },
    };
    owner
        .publisher()
        .publish_scene(&stale)
        .await
        .expect("publish");
    owner.publisher().flush().await.expect("flush");
    broadcast.expect_silence(Duration::from_millis(500)).await;
    realtime.expect_silence(Duration::from_millis(1500)).await;
    realtime.send_text(r#"{"type":"get_status"}"#).await;
    let now = realtime.next_of_type("storage_location_update").await;
    assert_eq!(now["data"], current["data"]);
    assert_eq!(
        now["data"]["storage_locations"],
        owner.scene_locations("s-old", |_| true).await
    );
    assert_eq!(now["data"]["storage_locations"][0]["is_occupied"], false);
    assert!(hub.metric("vwed_hub_events_stale_total").await >= 1.0);
}

async fn a_broadcast_client_that_falls_behind_is_closed_with_1013_and_others_keep_up(
    kind: BrokerKind,
) {
    let broker = TestBroker::start(kind).await;
    let owner = Owner::start(&broker).await;
    owner.seed_scene("s-slow", vec![]).await;
    let hub = TestHub::start_with(&broker, |c| {
        c.client_queue = 4;
        c.write_timeout = Duration::from_secs(60);
    })
    .await;
    let mut stalled =
        Client::connect_with_small_buffer(&hub, "/ws/storage-location-broadcast/s-slow").await;
    let mut reader = Client::connect(&hub, "/ws/storage-location-broadcast/s-slow").await;
    hub.wait_for_subscriptions(1).await;

    // About 8 MB of upserts: far more than the socket buffers hold for a client that does not
    // read while they are published. Each is published once the reader has the one before, so
    // the reader keeps up however fast the broker delivers.
    const EVENTS: usize = 25;
    let publishing_and_reading = async {
        for n in 0..EVENTS {
            let batch = (0..400)
                .map(|i| location("s-slow", &format!("l-{n}-{i}"), "A1", &format!("S{n}"), i))
                .collect();
            owner.upsert("s-slow", batch).await;
            let update = reader.next_of_type("storage_location_update").await;
            assert_eq!(update["data"]["total"], 400);
            assert_eq!(
                update["data"]["storage_locations"][0]["station_name"],
                format!("S{n}")
            );
        }
    };
    let stalled_sees = async {
        // Once the hub gives up on it, the stalled client reads what reached it, then the close.
        vwed_e2e::eventually("the hub gives up on the stalled client", || async {
            hub.metric("vwed_hub_slow_clients_closed_total").await >= 1.0
        })
        .await;
        stalled.close_code().await
    };
    let ((), code) = tokio::join!(publishing_and_reading, stalled_sees);
    assert_eq!(code, 1013);
    reader.assert_alive().await;
}

async fn a_result_past_the_end_fetches_the_missed_ones(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let owner = Owner::start(&broker).await;
    owner
        .seed_task("t-gap", vec![TaskResult::now("[a] 0", TaskStatus::Running)])
        .await;
    let hub = TestHub::start(&broker).await;
    let mut client = Client::connect(&hub, "/ws/task-execution/t-gap?interval=1").await;
    assert_eq!(
        client.next_of_type("task_execution_update").await["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Result 1 is lost on the way; result 2 arrives and shows the hole.
    owner
        .append_unpublished("t-gap", "[b] 1", TaskStatus::Running)
        .await;
    let third = owner
        .append_unpublished("t-gap", "[c] 2", TaskStatus::Success)
        .await;
    owner
        .publisher()
        .publish_task(&third)
        .await
        .expect("publish");
    owner.publisher().flush().await.expect("flush");

    let update = client.next_of_type("task_execution_update").await;
    assert_eq!(update["data"], owner.task_data("t-gap").await);
    assert_eq!(update["data"].as_array().unwrap().len(), 3);
}

async fn an_event_no_snapshot_explains_is_dropped_without_a_storm_of_requests(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let owner = Owner::start(&broker).await;
    owner
        .seed_task("t-bad", vec![TaskResult::now("[a] 0", TaskStatus::Running)])
        .await;
    let hub = TestHub::start(&broker).await;
    let mut client = Client::connect(&hub, "/ws/task-execution/t-bad?interval=1").await;
    let first = client.next_of_type("task_execution_update").await;
    hub.wait_for_subscriptions(1).await;

    // A broken publisher: an append at index 10 that the owner's state will never have.
    let bogus = vwed_publisher::TaskEvent {
        task_record_id: "t-bad".into(),
        rev: owner.publisher().next_rev(),
        prev_rev: None,
        change: vwed_publisher::TaskChange::Append {
            index: 10,
            results: vec![TaskResult::now("[x] ?", TaskStatus::Running)],
        },
    };
    owner
        .publisher()
        .publish_task(&bogus)
        .await
        .expect("publish");
    owner.publisher().flush().await.expect("flush");
    client.expect_silence(Duration::from_millis(2500)).await;
    let requests = r#"vwed_hub_snapshot_requests_total{kind="task",reason="found"}"#;
    let made = hub.metric(requests).await;
    assert!(made <= 4.0, "{made} snapshot requests");
    assert_eq!(
        hub.metric(r#"vwed_hub_events_rejected_total{kind="task",reason="gap"}"#)
            .await,
        1.0
    );

    // The view is as it was, and good events still apply.
    client.send_text(r#"{"type":"get_status"}"#).await;
    assert_eq!(
        client.next_of_type("task_execution_update").await["data"],
        first["data"]
    );
    owner.append("t-bad", "[b] 1", TaskStatus::Success).await;
    let update = client.next_of_type("task_execution_update").await;
    assert_eq!(update["data"], owner.task_data("t-bad").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_lost_while_a_snapshot_is_on_its_way_is_recovered() {
    let mut broker = TestBroker::start(BrokerKind::Nats).await;
    let owner = Owner::start(&broker).await;
    owner
        .seed_task(
            "t-late",
            vec![TaskResult::now("[a] 0", TaskStatus::Running)],
        )
        .await;
    let hub = TestHub::start_with(&broker, |c| c.snapshot_timeout = Duration::from_secs(5)).await;
    let mut client = Client::connect(&hub, "/ws/task-execution/t-late?interval=1").await;
    client.next_of_type("task_execution_update").await;
    hub.wait_for_subscriptions(1).await;

    // A reconnect makes the hub re-snapshot; the owner answers a second late, from state read
    // before what follows. Meanwhile result 1 is lost on the way and result 2 arrives.
    owner.delay_replies(Duration::from_secs(1));
    broker.nats().restart().await;
    hub.wait_until_ready().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    owner.delay_replies(Duration::ZERO);
    owner
        .append_unpublished("t-late", "[b] 1", TaskStatus::Running)
        .await;
    let third = owner
        .append_unpublished("t-late", "[c] 2", TaskStatus::Success)
        .await;
    owner
        .publisher()
        .publish_task(&third)
        .await
        .expect("publish");
    owner.publisher().flush().await.expect("flush");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    loop {
        let update = client.next_of_type("task_execution_update").await;
        if update["data"] == owner.task_data("t-late").await {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "stuck at {update}");
    }
}

async fn a_lost_event_is_healed_by_the_owners_next_tip(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let owner = Owner::start(&broker).await;
    owner
        .seed_task("t-tip", vec![TaskResult::now("[a] 0", TaskStatus::Running)])
        .await;
    let hub = TestHub::start(&broker).await;
    let mut realtime = Client::connect(&hub, "/ws/task-execution/t-tip?interval=1").await;
    realtime.next_of_type("task_execution_update").await;
    let mut broadcast = Client::connect(&hub, "/ws/task-execution-broadcast/t-tip").await;
    broadcast.assert_alive().await;

    // The event is lost on its way; nothing the hub holds says so until the owner's tip.
    owner
        .append_unpublished("t-tip", "[a] 1", TaskStatus::Running)
        .await;
    realtime.expect_silence(Duration::from_millis(1500)).await;
    owner.tip_task("t-tip").await;
    let healed = realtime.next_of_type("task_execution_update").await;
    assert_eq!(healed["data"], owner.task_data("t-tip").await);
    assert_eq!(healed["data"].as_array().unwrap().len(), 2);
    // A tip is never forwarded, and one at the rev the hub holds changes nothing.
    owner.tip_task("t-tip").await;
    broadcast.expect_silence(Duration::from_millis(300)).await;
    realtime.expect_silence(Duration::from_millis(1500)).await;
    assert!(
        hub.metric("vwed_hub_tips_received_total{kind=\"task\"}")
            .await
            >= 2.0
    );
}

/// A status change lost on its way (a NATS node that died with it) while the next one arrives:
/// the owner's tip names the latest rev, which the hub then holds, so only the next event's
/// `prev_rev` can tell the hub; it takes a snapshot, and realtime clients see the lost change.
async fn an_event_lost_between_two_delivered_ones_is_healed_by_the_next(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let owner = Owner::start(&broker).await;
    let seeded = vec![
        location("s-chain", "l-1", "A1", "S1", 1),
        location("s-chain", "l-2", "A1", "S1", 2),
    ];
    owner.seed_scene("s-chain", seeded).await;
    let hub = TestHub::start(&broker).await;
    let mut realtime = Client::connect(&hub, "/ws/storage-location/s-chain?interval=1").await;
    realtime.next_of_type("storage_location_update").await;

    let lost = owner
        .change_status_unpublished("s-chain", "l-1", StatusAction::Lock, |l| {
            l.is_locked = true;
            l.locked_by = Some("task-lost".into());
        })
        .await;
    let mut next = owner
        .change_status_unpublished("s-chain", "l-2", StatusAction::Occupy, |l| {
            l.is_occupied = true;
        })
        .await;
    next.prev_rev = Some(lost.rev);
    owner
        .publisher()
        .publish_scene(&next)
        .await
        .expect("publish");
    owner.publisher().flush().await.expect("flush");

    let expected = owner.scene_locations("s-chain", |_| true).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let update = realtime.next_of_type("storage_location_update").await;
        if update["data"]["storage_locations"] == expected {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "l-1's lost change never reached the client: {update}"
        );
    }
    assert!(
        hub.metric(r#"vwed_hub_snapshot_requests_total{kind="scene",reason="found"}"#)
            .await
            >= 2.0
    );
}

async fn a_key_that_vanishes_is_told_once_and_may_come_back(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let owner = Owner::start(&broker).await;
    let seeded = vec![location("s-gone", "l-1", "A1", "S1", 1)];
    owner.seed_scene("s-gone", seeded.clone()).await;
    let hub = TestHub::start(&broker).await;
    let mut realtime = Client::connect(&hub, "/ws/storage-location/s-gone?interval=1").await;
    realtime.next_of_type("storage_location_update").await;
    let mut broadcast = Client::connect(&hub, "/ws/storage-location-broadcast/s-gone").await;
    broadcast.assert_alive().await;

    owner.forget_scene("s-gone").await;
    // Something makes the hub look again (here a tip above what it holds).
    owner.tip_scene("s-gone", u64::MAX / 2).await;
    for client in [&mut realtime, &mut broadcast] {
        let error = client.next_json().await;
        assert_eq!(error["type"], "error", "{error}");
        assert_eq!(error["scene_id"], "s-gone");
        assert_eq!(error["message"], "场景不存在: s-gone");
    }
    // No more pushes of the old state; the connections stay open.
    realtime.expect_silence(Duration::from_millis(2500)).await;
    broadcast.assert_alive().await;

    owner.upsert("s-gone", seeded).await;
    let back = realtime.next_of_type("storage_location_update").await;
    assert_eq!(
        back["data"]["storage_locations"],
        owner.scene_locations("s-gone", |_| true).await
    );
}

async fn a_store_restored_to_an_older_rev_is_believed(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let owner = Owner::start(&broker).await;
    owner
        .seed_task(
            "t-back",
            vec![TaskResult::now("[new] 1", TaskStatus::Running)],
        )
        .await;
    let hub = TestHub::start(&broker).await;
    let mut realtime = Client::connect(&hub, "/ws/task-execution/t-back?interval=1").await;
    realtime.next_of_type("task_execution_update").await;
    let mut broadcast = Client::connect(&hub, "/ws/task-execution-broadcast/t-back").await;
    broadcast.assert_alive().await;

    // The owner's store comes back from a backup, versioned far below what the hub holds, and
    // the owner carries on from there.
    owner
        .restore_task(
            "t-back",
            100,
            vec![TaskResult::now("[old] 1", TaskStatus::Running)],
        )
        .await;
    for rev in 101..=103 {
        owner
            .append_at_rev("t-back", rev, &format!("[old] {rev}"))
            .await;
    }
    // Three stale events in a row: a snapshot, refused as older a few times, then believed.
    let restored = owner.task_data("t-back").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let update = realtime.next_of_type("task_execution_update").await;
        if update["data"] == restored {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "stuck at {update}");
    }
    // Events at or below the rev the hub held were not news to broadcast clients.
    broadcast.expect_silence(Duration::from_millis(200)).await;
    // From the believed rev on, broadcast clients get the owner's events again.
    owner.append_at_rev("t-back", 104, "[old] 104").await;
    let event = broadcast.next_of_type("task_execution_update").await;
    assert_eq!(event["data"][0]["context"], "[old] 104");
}

/// The Rust SDK tips every recent key at once when its NATS connection comes back, long before
/// its tip interval: the events it published just before the outage may have died with it.
#[tokio::test(flavor = "multi_thread")]
async fn the_sdk_tips_its_recent_keys_at_once_after_a_reconnect() {
    use futures::StreamExt;
    let mut broker = TestBroker::start(BrokerKind::Nats).await;
    let url = broker.nats_url().expect("NATS");
    let publisher = Publisher::new(
        async_nats::ConnectOptions::new()
            .reconnect_delay_callback(|_| Duration::from_millis(500))
            .connect(&url)
            .await
            .expect("connect"),
    )
    .with_tips(Some(Duration::from_secs(60)), Duration::from_secs(60));
    // The observer reconnects faster, so it is back before the publisher's tips.
    let observer = async_nats::ConnectOptions::new()
        .reconnect_delay_callback(|_| Duration::from_millis(50))
        .connect(&url)
        .await
        .expect("connect");
    let mut wire = observer.subscribe("vwed.task.>").await.expect("subscribe");
    observer.flush().await.expect("flush");
    let mut revs = Vec::new();
    for task in ["t-1", "a.b"] {
        let rev = publisher
            .append_task_results(task, 0, vec![TaskResult::now("[a] 1", TaskStatus::Running)])
            .await
            .expect("publish");
        revs.push((task.to_owned(), rev));
    }
    publisher.flush().await.expect("flush");
    for _ in 0..2 {
        wire.next().await.expect("an event");
    }

    broker.nats().stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.nats().restart().await;
    let mut tips = Vec::new();
    while tips.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(10), wire.next())
            .await
            .expect("tips within seconds, not the 60 s interval")
            .expect("a message");
        let tip: vwed_publisher::TaskTip =
            serde_json::from_slice(&message.payload).expect("only tips come now");
        tips.push((tip.task_record_id, tip.rev));
    }
    tips.sort();
    revs.sort();
    assert_eq!(tips, revs);
}

/// NATS drops messages for a subscription that fell behind and names it (a slow consumer):
/// only that subscription hears of it, ahead of what it still holds, so only that key takes a
/// fresh snapshot, not every key the hub serves.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_nats_subscription_alone_hears_that_it_lost_messages() {
    use futures::StreamExt;
    use vwed_hub::broker::{Broker, BrokerEvent, NatsBroker, Received};

    let nats = vwed_e2e::Nats::start().await;
    let broker = NatsBroker::connect(&nats.url(), &Default::default())
        .await
        .expect("connect");
    eventually("the broker connected", || async { broker.is_connected() }).await;
    let mut broker_events = broker.events();
    let mut slow = broker.subscribe("t.slow".into()).await.expect("subscribe");
    let mut quick = broker.subscribe("t.quick".into()).await.expect("subscribe");

    // More than the subscription holds (8,192), with nobody reading it.
    let publisher = async_nats::connect(nats.url()).await.expect("connect");
    for n in 0..10_000u32 {
        publisher
            .publish("t.slow", n.to_string().into())
            .await
            .expect("publish");
    }
    publisher
        .publish("t.quick", "still here".into())
        .await
        .expect("publish");
    publisher.flush().await.expect("flush");
    // Nobody reads until the hub's client has received everything (the server has sent it
    // after the publisher's flush, but it may still be on its way).
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The client tells of the loss through its event task, so the notice may come after some of
    // what the subscription held; it must come, and the messages before it stay in order.
    let mut held = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), slow.next())
            .await
            .unwrap_or_else(|_| {
                let mut events = Vec::new();
                while let Ok(event) = broker_events.try_recv() {
                    events.push(event);
                }
                panic!(
                    "no loss notice after {} messages; broker events {events:?}",
                    held.len()
                )
            });
        match next {
            Some(Received::Lost) => break,
            Some(Received::Message(payload)) => held.push(payload),
            None => panic!("the subscription ended"),
        }
    }
    let expected: Vec<String> = (0..held.len()).map(|n| n.to_string()).collect();
    assert_eq!(held, expected, "what came before the notice is in order");
    assert!(held.len() < 10_000, "messages were indeed dropped");
    let quick_first = tokio::time::timeout(Duration::from_secs(5), quick.next())
        .await
        .expect("the other subscription's message");
    assert!(
        matches!(&quick_first, Some(Received::Message(payload)) if payload == "still here"),
        "the other subscription lost nothing and heard of no loss: {quick_first:?}"
    );
    loop {
        match broker_events.try_recv() {
            Ok(BrokerEvent::MessagesLost) => panic!("a named loss was told to every key"),
            Ok(_) => continue,
            Err(_) => break,
        }
    }
}

on_both_brokers!(
    a_lost_event_is_healed_by_the_owners_next_tip,
    an_event_lost_between_two_delivered_ones_is_healed_by_the_next,
    a_key_that_vanishes_is_told_once_and_may_come_back,
    a_store_restored_to_an_older_rev_is_believed,
    events_racing_a_snapshot_merge_exactly,
    a_missing_owner_gets_an_error_and_the_state_once_it_answers,
    a_slow_owner_times_out_and_is_retried,
    malformed_events_are_dropped_and_the_hub_carries_on,
    events_with_an_old_rev_change_nothing,
    a_broadcast_client_that_falls_behind_is_closed_with_1013_and_others_keep_up,
    a_result_past_the_end_fetches_the_missed_ones,
    an_event_no_snapshot_explains_is_dropped_without_a_storm_of_requests,
);
