//! Endpoints 1 and 2: task execution results, realtime and broadcast.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;
use vwed_e2e::{encode_id, on_both_brokers, BrokerKind, Client, Owner, TestBroker, TestHub};
use vwed_publisher::{TaskResult, TaskStatus};

fn results(contexts: &[&str]) -> Vec<TaskResult> {
    contexts
        .iter()
        .map(|c| TaskResult::now(*c, TaskStatus::Running))
        .collect()
}

fn assert_timestamp(value: &Value) {
    let stamp = value
        .as_str()
        .unwrap_or_else(|| panic!("timestamp is a string: {value}"));
    assert_eq!(stamp.len(), 24, "{stamp}");
    assert!(
        stamp.ends_with('Z') && stamp.as_bytes()[19] == b'.',
        "{stamp}"
    );
}

/// Checks every field of a `task_execution_update` and returns its `data`.
fn update_data(message: &Value, task: &str) -> Value {
    let object = message.as_object().expect("an object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["data", "message", "task_record_id", "timestamp", "type"]
    );
    assert_eq!(message["type"], "task_execution_update");
    assert_eq!(message["task_record_id"], task);
    assert_eq!(message["message"], "成功获取任务记录执行结果");
    assert_timestamp(&message["timestamp"]);
    message["data"].clone()
}

async fn realtime_sends_the_full_list_on_connect(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let owner = Owner::start(&broker).await;
    owner
        .seed_task("t-1", results(&["[取货] 开始", "[取货] 完成"]))
        .await;
    let hub = TestHub::start(&broker).await;

    let mut client = Client::connect(&hub, "/ws/task-execution/t-1").await;
    let data = update_data(&client.next_json().await, "t-1");
    assert_eq!(data, owner.task_data("t-1").await);
    assert_eq!(data.as_array().unwrap().len(), 2);
    assert_eq!(data[0]["context"], "[取货] 开始");
    assert_eq!(data[0]["status"], "RUNNING");
    let mut keys: Vec<&String> = data[0].as_object().unwrap().keys().collect();
    keys.sort_unstable();
    assert_eq!(keys, ["context", "created_at", "status"]);
}

async fn realtime_conflates_changes_into_one_update_per_interval(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let owner = Owner::start(&broker).await;
    owner.seed_task("t-1", results(&["[a] 1"])).await;
    let hub = TestHub::start(&broker).await;

    let mut client = Client::connect(&hub, "/ws/task-execution/t-1?interval=2").await;
    update_data(&client.next_json().await, "t-1");
    let initial_at = Instant::now();
    owner.append("t-1", "[b] 2", TaskStatus::Running).await;
    owner.append("t-1", "[c] 3", TaskStatus::Running).await;
    owner.append("t-1", "[c] 3", TaskStatus::Success).await;

    let update = client.next_json().await;
    let waited = initial_at.elapsed();
    assert!(
        waited >= Duration::from_millis(1800),
        "an update came {waited:?} after the last one"
    );
    assert!(
        waited < Duration::from_millis(3000),
        "the first update took {waited:?}"
    );
    let data = update_data(&update, "t-1");
    assert_eq!(data, owner.task_data("t-1").await);
    assert_eq!(data.as_array().unwrap().len(), 4);
    assert_eq!(data[3]["status"], "SUCCESS");
    // Nothing changed since: nothing is pushed.
    client.expect_silence(Duration::from_millis(4500)).await;
}

/// Each interval keeps its own clock on one key: a slow panel does not hold back a fast one,
/// and the fast one's updates do not hurry the slow one.
async fn panels_with_different_intervals_on_one_task_each_keep_theirs(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let owner = Owner::start(&broker).await;
    owner.seed_task("t-iv", results(&["[a] 1"])).await;
    let hub = TestHub::start(&broker).await;

    let mut slow = Client::connect(&hub, "/ws/task-execution/t-iv?interval=6").await;
    update_data(&slow.next_json().await, "t-iv");
    let mut fast = Client::connect(&hub, "/ws/task-execution/t-iv?interval=1").await;
    update_data(&fast.next_json().await, "t-iv");
    let fast_joined = Instant::now();
    owner.append("t-iv", "[b] 2", TaskStatus::Running).await;

    let update = update_data(&fast.next_json().await, "t-iv");
    let waited = fast_joined.elapsed();
    assert!(
        waited < Duration::from_millis(2500),
        "the 1 s panel waited {waited:?}"
    );
    assert_eq!(update.as_array().unwrap().len(), 2);
    // The 6 s panel hears nothing before its own interval.
    slow.expect_silence(Duration::from_millis(3000)).await;
    let update = update_data(&slow.next_json().await, "t-iv");
    assert_eq!(update.as_array().unwrap().len(), 2);
}

async fn realtime_pushes_nothing_while_nothing_changes(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let owner = Owner::start(&broker).await;
    owner.seed_task("quiet", results(&["[a] 1"])).await;
    let hub = TestHub::start(&broker).await;

    let mut client = Client::connect(&hub, "/ws/task-execution/quiet?interval=1").await;
    update_data(&client.next_json().await, "quiet");
    client.expect_silence(Duration::from_millis(3500)).await;
    // A change then arrives within one interval.
    owner.append("quiet", "[b] 2", TaskStatus::Failed).await;
    let data = update_data(&client.next_json().await, "quiet");
    assert_eq!(data[1]["status"], "FAILED");
}

async fn broadcast_forwards_each_event_with_its_own_results(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let owner = Owner::start(&broker).await;
    owner.seed_task("t-b", results(&["[a] 1"])).await;
    let hub = TestHub::start(&broker).await;

    let mut client = Client::connect(&hub, "/ws/task-execution-broadcast/t-b").await;
    hub.wait_for_subscriptions(1).await;
    client.expect_silence(Duration::from_millis(700)).await;
    owner.append("t-b", "[b] 2", TaskStatus::Running).await;
    owner.append("t-b", "[c] 3", TaskStatus::Success).await;
    let first = update_data(&client.next_json().await, "t-b");
    let second = update_data(&client.next_json().await, "t-b");
    let all = owner.task_data("t-b").await;
    assert_eq!(first, json!([all[1]]));
    assert_eq!(second, json!([all[2]]));

    let replaced = results(&["[重做] 1", "[重做] 2"]);
    owner.replace("t-b", replaced).await;
    let third = update_data(&client.next_json().await, "t-b");
    assert_eq!(third, owner.task_data("t-b").await);
    client.expect_silence(Duration::from_millis(2500)).await;
}

async fn get_status_answers_at_once_on_both_endpoints(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let owner = Owner::start(&broker).await;
    owner.seed_task("t-s", results(&["[a] 1", "[b] 2"])).await;
    let hub = TestHub::start(&broker).await;
    let expected = owner.task_data("t-s").await;

    let mut realtime = Client::connect(&hub, "/ws/task-execution/t-s?interval=30").await;
    assert_eq!(update_data(&realtime.next_json().await, "t-s"), expected);
    realtime
        .send_text(r#"{"type":"get_status","timestamp":"2025-06-11T12:00:00.000Z"}"#)
        .await;
    assert_eq!(update_data(&realtime.next_json().await, "t-s"), expected);

    let mut broadcast = Client::connect(&hub, "/ws/task-execution-broadcast/t-s").await;
    broadcast.send_text(r#"{"type":"get_status"}"#).await;
    assert_eq!(update_data(&broadcast.next_json().await, "t-s"), expected);
}

async fn two_clients_share_one_subscription_that_ends_with_the_last(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let owner = Owner::start(&broker).await;
    owner.seed_task("shared", results(&["[a] 1"])).await;
    let hub = TestHub::start(&broker).await;

    let mut realtime = Client::connect(&hub, "/ws/task-execution/shared?interval=1").await;
    let mut broadcast = Client::connect(&hub, "/ws/task-execution-broadcast/shared").await;
    update_data(&realtime.next_json().await, "shared");
    broadcast.assert_alive().await;
    assert_eq!(hub.metric("vwed_hub_broker_subscriptions").await, 1.0);

    owner.append("shared", "[b] 2", TaskStatus::Running).await;
    assert_eq!(
        update_data(&broadcast.next_json().await, "shared")
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        update_data(&realtime.next_json().await, "shared"),
        owner.task_data("shared").await
    );

    realtime.close().await;
    owner.append("shared", "[c] 3", TaskStatus::Running).await;
    assert_eq!(
        update_data(&broadcast.next_json().await, "shared")[0]["context"],
        "[c] 3"
    );
    assert_eq!(hub.metric("vwed_hub_broker_subscriptions").await, 1.0);
    broadcast.close().await;
    hub.wait_for_subscriptions(0).await;
}

async fn ids_that_look_like_subject_syntax_receive_only_their_own_events(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let owner = Owner::start(&broker).await;
    let hub = TestHub::start(&broker).await;
    let ids = [
        "a.b",
        "a",
        "b",
        "*",
        ">",
        "a.*",
        "a b",
        "任务一号",
        "YS5i",
        "~YS5i",
        "a.>",
    ];

    let mut clients = Vec::new();
    for id in ids {
        let client = Client::connect(
            &hub,
            &format!("/ws/task-execution-broadcast/{}", encode_id(id)),
        )
        .await;
        clients.push((id, client));
    }
    hub.wait_for_subscriptions(ids.len()).await;
    for id in ids {
        owner
            .append(id, &format!("for {id}"), TaskStatus::Running)
            .await;
    }
    for (id, client) in &mut clients {
        let data = update_data(&client.next_json().await, id);
        assert_eq!(data[0]["context"], format!("for {id}"), "client of {id:?}");
        client.expect_silence(Duration::from_millis(300)).await;
    }
}

async fn an_unknown_task_gets_an_error_then_updates_once_it_exists(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let owner = Owner::start(&broker).await;
    let hub = TestHub::start(&broker).await;

    let mut client = Client::connect(&hub, "/ws/task-execution/later?interval=1").await;
    let error = client.next_of_type("error").await;
    assert_eq!(error["task_record_id"], "later");
    assert!(
        error["message"].as_str().unwrap().contains("不存在"),
        "{error}"
    );
    assert_timestamp(&error["timestamp"]);
    client.assert_alive().await;

    owner.append("later", "[开始] 1", TaskStatus::Running).await;
    let data = update_data(&client.next_json().await, "later");
    assert_eq!(data, owner.task_data("later").await);
}

async fn a_client_joining_a_running_group_waits_a_full_interval_for_its_first_update(
    kind: BrokerKind,
) {
    let broker = TestBroker::start(kind).await;
    let owner = Owner::start(&broker).await;
    owner.seed_task("t-g", results(&["[a] 1"])).await;
    let hub = TestHub::start(&broker).await;

    let mut early = Client::connect(&hub, "/ws/task-execution/t-g?interval=2").await;
    update_data(&early.next_json().await, "t-g");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut late = Client::connect(&hub, "/ws/task-execution/t-g?interval=2").await;
    update_data(&late.next_json().await, "t-g");
    let late_initial = Instant::now();
    owner.append("t-g", "[b] 2", TaskStatus::Running).await;

    // The group ticks about 0.8 s after `late` joined: `early` is due then, `late` a tick later.
    update_data(&early.next_json().await, "t-g");
    let data = update_data(&late.next_json().await, "t-g");
    let waited = late_initial.elapsed();
    assert!(
        waited >= Duration::from_millis(1950),
        "first update {waited:?} after the initial state"
    );
    assert_eq!(data, owner.task_data("t-g").await);
}

async fn clients_coming_and_going_do_not_hold_back_a_waiting_one(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let owner = Owner::start(&broker).await;
    let hub = TestHub::start(&broker).await;
    let mut waiting = Client::connect(&hub, "/ws/task-execution/t-cg?interval=2").await;
    waiting.next_of_type("error").await;
    owner.append("t-cg", "[a] 1", TaskStatus::Running).await;
    let appended = Instant::now();

    // Another panel on the same key keeps reconnecting meanwhile.
    let churn = async {
        for _ in 0..6 {
            let mut other = Client::connect(&hub, "/ws/task-execution/t-cg?interval=2").await;
            // Its first message: the state, or "not found" if the append has not arrived yet.
            other.next_json().await;
            other.close().await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let watch = async {
        let update = waiting.next_of_type("task_execution_update").await;
        (update, appended.elapsed())
    };
    let ((update, waited), ()) = tokio::join!(watch, churn);
    assert!(waited < Duration::from_millis(3000), "waited {waited:?}");
    assert_eq!(update["data"], owner.task_data("t-cg").await);
}

on_both_brokers!(
    realtime_sends_the_full_list_on_connect,
    realtime_conflates_changes_into_one_update_per_interval,
    realtime_pushes_nothing_while_nothing_changes,
    panels_with_different_intervals_on_one_task_each_keep_theirs,
    broadcast_forwards_each_event_with_its_own_results,
    get_status_answers_at_once_on_both_endpoints,
    two_clients_share_one_subscription_that_ends_with_the_last,
    ids_that_look_like_subject_syntax_receive_only_their_own_events,
    an_unknown_task_gets_an_error_then_updates_once_it_exists,
    a_client_joining_a_running_group_waits_a_full_interval_for_its_first_update,
    clients_coming_and_going_do_not_hold_back_a_waiting_one,
);
