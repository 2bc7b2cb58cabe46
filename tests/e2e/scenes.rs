//! Endpoints 3 and 4: storage locations, realtime (filtered) and broadcast.

use std::time::Duration;

use serde_json::{json, Value};
use vwed_e2e::{
    location, on_both_brokers, BrokerKind, Client, Owner, Received, TestBroker, TestHub,
};
use vwed_publisher::{StatusAction, StorageLocation};

/// A scene with two areas, stations that sort naturally (S2 before S10), and some flags set.
fn warehouse(scene: &str) -> Vec<StorageLocation> {
    let mut locations = vec![
        location(scene, "l-10-1", "A1", "S10", 1),
        location(scene, "l-2-2", "A1", "S2", 2),
        location(scene, "l-2-1", "A1", "S2", 1),
        location(scene, "l-1-1", "A1", "S1", 1),
        location(scene, "l-b-1", "A2", "B1", 1),
        location(scene, "l-b-2", "A2", "B1", 2),
    ];
    locations[1].is_occupied = true;
    locations[1].goods_content = Some("托盘".into());
    locations[3].is_locked = true;
    locations[3].locked_by = Some("agv-7".into());
    locations[5].is_disabled = true;
    locations[4].is_occupied = true;
    locations
}

fn ids(data: &Value) -> Vec<String> {
    data["storage_locations"]
        .as_array()
        .expect("a location list")
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Checks every field of a `storage_location_update` and returns its `data`.
fn update_data(message: &Value, scene: &str) -> Value {
    let object = message.as_object().expect("an object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["data", "message", "scene_id", "timestamp", "type"],
        "{message}"
    );
    assert_eq!(message["type"], "storage_location_update");
    assert_eq!(message["scene_id"], scene);
    assert_eq!(message["message"], "成功获取库位状态");
    let mut data_keys: Vec<&str> = message["data"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    data_keys.sort_unstable();
    assert_eq!(
        data_keys,
        [
            "page",
            "page_size",
            "storage_locations",
            "total",
            "total_pages"
        ]
    );
    message["data"].clone()
}

async fn start(kind: BrokerKind, scene: &str) -> (TestBroker, Owner, TestHub) {
    let broker = TestBroker::start(kind).await;
    let owner = Owner::start(&broker).await;
    owner.seed_scene(scene, warehouse(scene)).await;
    let hub = TestHub::start(&broker).await;
    (broker, owner, hub)
}

async fn realtime_sends_every_location_in_natural_order_on_connect(kind: BrokerKind) {
    let (_broker, owner, hub) = start(kind, "s-1").await;
    let mut client = Client::connect(&hub, "/ws/storage-location/s-1").await;
    let data = update_data(&client.next_json().await, "s-1");
    assert_eq!(
        ids(&data),
        ["l-b-1", "l-b-2", "l-1-1", "l-2-1", "l-2-2", "l-10-1"]
    );
    assert_eq!(data["total"], 6);
    assert_eq!(data["page"], 1);
    assert_eq!(data["page_size"], 1000);
    assert_eq!(data["total_pages"], 1);
    assert_eq!(
        data["storage_locations"],
        owner.scene_locations("s-1", |_| true).await
    );
    let first = data["storage_locations"][0].as_object().unwrap();
    assert_eq!(first.len(), 27);
    assert_eq!(first["goods_weight"], Value::Null);
    assert_eq!(first["max_weight"], 5000);
}

async fn every_filter_alone_and_combined(kind: BrokerKind) {
    let (_broker, _owner, hub) = start(kind, "s-f").await;
    let cases: Vec<(&str, Vec<&str>)> = vec![
        ("storage_area_id=A2", vec!["l-b-1", "l-b-2"]),
        ("station_name=S2", vec!["l-2-1", "l-2-2"]),
        ("layer_name=S10-1", vec!["l-10-1"]),
        ("is_occupied=true", vec!["l-b-1", "l-2-2"]),
        ("is_occupied=0", vec!["l-b-2", "l-1-1", "l-2-1", "l-10-1"]),
        ("is_locked=TRUE", vec!["l-1-1"]),
        ("is_disabled=1", vec!["l-b-2"]),
        (
            "is_disabled=false",
            vec!["l-b-1", "l-1-1", "l-2-1", "l-2-2", "l-10-1"],
        ),
        (
            "storage_area_id=A1&is_occupied=false",
            vec!["l-1-1", "l-2-1", "l-10-1"],
        ),
        (
            "storage_area_id=A1&station_name=S2&is_occupied=true",
            vec!["l-2-2"],
        ),
        (
            "storage_area_id=A2&is_occupied=true&is_disabled=true",
            vec![],
        ),
        ("storage_area_id=a1", vec![]),
        (
            "station_name=&interval=5",
            vec!["l-b-1", "l-b-2", "l-1-1", "l-2-1", "l-2-2", "l-10-1"],
        ),
    ];
    for (query, expected) in cases {
        let mut client = Client::connect(&hub, &format!("/ws/storage-location/s-f?{query}")).await;
        let data = update_data(&client.next_json().await, "s-f");
        assert_eq!(ids(&data), expected, "{query}");
        assert_eq!(data["total"], expected.len(), "{query}");
        assert_eq!(data["total_pages"], 1, "{query}");
        client.close().await;
    }
}

async fn status_changes_reach_filters_that_match_before_or_after(kind: BrokerKind) {
    let (_broker, owner, hub) = start(kind, "s-c").await;
    let mut free = Client::connect(
        &hub,
        "/ws/storage-location/s-c?is_occupied=false&interval=1",
    )
    .await;
    let mut occupied =
        Client::connect(&hub, "/ws/storage-location/s-c?is_occupied=true&interval=1").await;
    let mut other_area = Client::connect(
        &hub,
        "/ws/storage-location/s-c?storage_area_id=A2&interval=1",
    )
    .await;
    for client in [&mut free, &mut occupied, &mut other_area] {
        client.next_of_type("storage_location_update").await;
    }

    owner
        .change_status("s-c", "l-2-1", StatusAction::Occupy, |l| {
            l.is_occupied = true;
            l.goods_content = Some("纸箱".into());
        })
        .await;

    let expected_status = {
        let all = owner.scene_locations("s-c", |l| l.id == "l-2-1").await;
        let l = &all[0];
        json!({
            "id": "l-2-1", "is_occupied": true, "is_locked": false, "is_disabled": false,
            "is_empty_tray": false, "locked_by": null, "goods_content": "纸箱",
            "last_access_at": l["last_access_at"], "updated_at": l["updated_at"],
        })
    };
    for client in [&mut free, &mut occupied] {
        let change = client.next_of_type("storage_location_status_change").await;
        let mut keys: Vec<&String> = change.as_object().unwrap().keys().collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "action",
                "layer_name",
                "new_status",
                "scene_id",
                "timestamp",
                "type"
            ]
        );
        assert_eq!(change["scene_id"], "s-c");
        assert_eq!(change["layer_name"], "S2-1");
        assert_eq!(change["action"], "OCCUPY");
        assert_eq!(change["new_status"], expected_status);
    }
    // Then, within an interval, each filtered view shows the new state.
    let free_now = update_data(&free.next_json().await, "s-c");
    assert!(!ids(&free_now).contains(&"l-2-1".to_owned()));
    let occupied_now = update_data(&occupied.next_json().await, "s-c");
    assert_eq!(ids(&occupied_now), ["l-b-1", "l-2-1", "l-2-2"]);
    // Area A2 saw nothing: not the change, and no update since its view did not change.
    other_area.expect_silence(Duration::from_millis(2500)).await;
}

async fn several_changes_in_one_interval_give_one_update(kind: BrokerKind) {
    let (_broker, owner, hub) = start(kind, "s-q").await;
    let mut client =
        Client::connect(&hub, "/ws/storage-location/s-q?station_name=S2&interval=2").await;
    client.next_of_type("storage_location_update").await;
    owner
        .change_status("s-q", "l-2-1", StatusAction::Lock, |l| l.is_locked = true)
        .await;
    owner
        .change_status("s-q", "l-2-1", StatusAction::Unlock, |l| {
            l.is_locked = false
        })
        .await;
    owner
        .change_status("s-q", "l-2-2", StatusAction::Release, |l| {
            l.is_occupied = false
        })
        .await;

    let mut changes = 0;
    let update = loop {
        let message = client.next_json().await;
        match message["type"].as_str() {
            Some("storage_location_status_change") => changes += 1,
            Some("storage_location_update") => break message,
            _ => panic!("unexpected {message}"),
        }
    };
    assert_eq!(changes, 3);
    let data = update_data(&update, "s-q");
    assert_eq!(
        data["storage_locations"],
        owner
            .scene_locations("s-q", |l| l.station_name == "S2")
            .await
    );
    client.expect_silence(Duration::from_millis(4500)).await;
}

async fn a_change_outside_the_filter_pushes_nothing(kind: BrokerKind) {
    let (_broker, owner, hub) = start(kind, "s-n").await;
    let mut client = Client::connect(
        &hub,
        "/ws/storage-location/s-n?storage_area_id=A2&interval=1",
    )
    .await;
    client.next_of_type("storage_location_update").await;
    owner
        .change_status("s-n", "l-1-1", StatusAction::Unlock, |l| {
            l.is_locked = false
        })
        .await;
    owner
        .upsert("s-n", vec![location("s-n", "l-new", "A1", "S3", 1)])
        .await;
    client.expect_silence(Duration::from_millis(2500)).await;
    owner
        .upsert("s-n", vec![location("s-n", "l-b-3", "A2", "B1", 3)])
        .await;
    let data = update_data(&client.next_json().await, "s-n");
    assert_eq!(ids(&data), ["l-b-1", "l-b-2", "l-b-3"]);
}

async fn broadcast_sends_changes_as_they_happen(kind: BrokerKind) {
    let (_broker, owner, hub) = start(kind, "s-b").await;
    let mut client = Client::connect(&hub, "/ws/storage-location-broadcast/s-b").await;
    hub.wait_for_subscriptions(1).await;
    client.expect_silence(Duration::from_millis(500)).await;

    owner
        .change_status("s-b", "l-b-2", StatusAction::Enable, |l| {
            l.is_disabled = false
        })
        .await;
    let change = client.next_of_type("storage_location_status_change").await;
    assert_eq!(change["action"], "ENABLE");
    assert_eq!(change["new_status"]["is_disabled"], false);

    owner
        .change_status(
            "s-b",
            "l-b-2",
            StatusAction::Other("MOVE_TRAY".into()),
            |l| l.is_empty_tray = true,
        )
        .await;
    let change = client.next_of_type("storage_location_status_change").await;
    assert_eq!(change["action"], "MOVE_TRAY");

    let added = vec![
        location("s-b", "z-2", "A3", "Z10", 1),
        location("s-b", "z-1", "A3", "Z9", 1),
    ];
    owner.upsert("s-b", added).await;
    let data = update_data(&client.next_json().await, "s-b");
    assert_eq!(ids(&data), ["z-1", "z-2"]);
    assert_eq!(data["total"], 2);

    owner.remove("s-b", &["z-1"]).await;
    client.expect_silence(Duration::from_millis(700)).await;

    client.send_text(r#"{"type":"get_status"}"#).await;
    let data = update_data(&client.next_json().await, "s-b");
    assert_eq!(
        data["storage_locations"],
        owner.scene_locations("s-b", |_| true).await
    );
    assert_eq!(data["total"], 7);
}

async fn a_large_scene_is_paged(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let owner = Owner::start(&broker).await;
    let many: Vec<StorageLocation> = (1..=1201)
        .map(|i| {
            location(
                "big",
                &format!("l-{i:04}"),
                "A1",
                &format!("S{}", i % 50),
                i,
            )
        })
        .collect();
    owner.seed_scene("big", many).await;
    let hub = TestHub::start(&broker).await;
    let mut client = Client::connect(&hub, "/ws/storage-location/big").await;
    let data = update_data(&client.next_json().await, "big");
    assert_eq!(data["total"], 1201);
    assert_eq!(data["page"], 1);
    assert_eq!(data["page_size"], 1000);
    assert_eq!(data["total_pages"], 2);
    let expected = owner.scene_locations("big", |_| true).await;
    assert_eq!(
        data["storage_locations"],
        json!(expected.as_array().unwrap()[..1000])
    );
    let mut filtered = Client::connect(&hub, "/ws/storage-location/big?station_name=S7").await;
    let data = update_data(&filtered.next_json().await, "big");
    assert_eq!(data["total"], 24);
    assert_eq!(data["total_pages"], 1);
}

/// What a client library sees on the wire: a state longer than one frame comes as a text
/// frame and continuations of at most 8 KiB, each cut between characters, only the last final,
/// and together the same message a client reassembles.
async fn a_large_state_travels_as_frames_of_at_most_8_kib(kind: BrokerKind) {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::FrameSocket;

    let broker = TestBroker::start(kind).await;
    let owner = Owner::start(&broker).await;
    let many: Vec<StorageLocation> = (1..=600)
        .map(|i| location("wide", &format!("l-{i:04}"), "A1", "库位站", i))
        .collect();
    owner.seed_scene("wide", many).await;
    let hub = TestHub::start(&broker).await;
    let mut client = Client::connect(&hub, "/ws/storage-location/wide").await;
    let reassembled = client.next_json().await;
    let length = reassembled.to_string().len();
    assert!(length > 3 * 8 * 1024, "{length}");

    let addr = hub.addr();
    let frames = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "GET /ws/storage-location/wide HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
        let mut socket = FrameSocket::new(stream);
        let mut frames = Vec::new();
        loop {
            let frame = socket.read(None).unwrap().expect("the hub closed");
            let last = frame.header().is_final;
            frames.push((last, frame.header().opcode, frame.into_payload()));
            if last {
                return frames;
            }
        }
    })
    .await
    .unwrap();
    assert!(frames.len() >= 4, "{} frames", frames.len());
    assert_eq!(frames[0].1, OpCode::Data(Data::Text));
    for (last, opcode, payload) in &frames[1..] {
        assert_eq!(*opcode, OpCode::Data(Data::Continue));
        assert!(payload.len() <= 8 * 1024);
        assert!(
            std::str::from_utf8(payload).is_ok(),
            "a frame split a character"
        );
        assert_eq!(*last, std::ptr::eq(payload, &frames.last().unwrap().2));
    }
    let joined: Vec<u8> = frames.iter().flat_map(|f| f.2.iter().copied()).collect();
    let joined: Value = serde_json::from_slice(&joined).expect("the frames join into JSON");
    // The same state (each message has its own timestamp).
    assert_eq!(joined["type"], "storage_location_update");
    assert!(
        joined["data"] == reassembled["data"],
        "the frames joined into another state"
    );
}

async fn get_status_answers_even_when_nothing_changed(kind: BrokerKind) {
    let (_broker, _owner, hub) = start(kind, "s-g").await;
    let mut client =
        Client::connect(&hub, "/ws/storage-location/s-g?is_locked=true&interval=30").await;
    let first = update_data(&client.next_json().await, "s-g");
    client.send_text(r#"{"type":"get_status"}"#).await;
    let again = update_data(&client.next_json().await, "s-g");
    assert_eq!(first, again);
    assert_eq!(ids(&again), ["l-1-1"]);
    client.assert_alive().await;
}

async fn a_scene_that_appears_later_starts_with_its_state_not_a_change(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let owner = Owner::start(&broker).await;
    let hub = TestHub::start(&broker).await;
    let mut client = Client::connect(&hub, "/ws/storage-location/s-new?interval=1").await;
    let error = client.next_of_type("error").await;
    assert_eq!(error["scene_id"], "s-new");

    owner
        .upsert("s-new", vec![location("s-new", "l-1", "A1", "S1", 1)])
        .await;
    owner
        .change_status("s-new", "l-1", StatusAction::Occupy, |l| {
            l.is_occupied = true
        })
        .await;
    let first = update_data(&client.next_json().await, "s-new");
    assert_eq!(
        first["storage_locations"],
        owner.scene_locations("s-new", |_| true).await
    );
    client.expect_silence(Duration::from_millis(1500)).await;
}

async fn a_slow_reader_ends_with_the_latest_word_on_every_location(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let owner = Owner::start(&broker).await;
    owner
        .seed_scene("s-lag", vec![location("s-lag", "a", "A1", "S1", 1)])
        .await;
    let hub = TestHub::start_with(&broker, |c| c.client_queue = 4).await;
    let mut client =
        Client::connect_with_small_buffer(&hub, "/ws/storage-location/s-lag?interval=1").await;
    client.next_of_type("storage_location_update").await;

    // The client does not read while 200 changes of 24 KB each happen: more than the socket
    // buffers hold, so notices overflow its queue.
    let padding = "箱".repeat(8000);
    for n in 0..200 {
        owner
            .change_status("s-lag", "a", StatusAction::Update, |l| {
                l.goods_content = Some(format!("n{n:03}{padding}"));
            })
            .await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut last_word = None;
    while let Some(received) = client.next_within(Duration::from_millis(2500)).await {
        let Received::Json(message) = received else {
            panic!("unexpected {received:?}")
        };
        last_word = match message["type"].as_str() {
            Some("storage_location_status_change") => message["new_status"]["goods_content"]
                .as_str()
                .map(str::to_owned),
            Some("storage_location_update") => message["data"]["storage_locations"][0]
                ["goods_content"]
                .as_str()
                .map(str::to_owned),
            _ => panic!("unexpected {message}"),
        };
    }
    let last_word = last_word.unwrap_or_default();
    assert!(
        last_word.starts_with("n199"),
        "the last word is {:?}",
        &last_word[..4.min(last_word.len())]
    );
    assert!(
        hub.metric("vwed_hub_messages_dropped_total").await > 0.0,
        "the queue overflowed"
    );
}

on_both_brokers!(
    realtime_sends_every_location_in_natural_order_on_connect,
    every_filter_alone_and_combined,
    status_changes_reach_filters_that_match_before_or_after,
    several_changes_in_one_interval_give_one_update,
    a_change_outside_the_filter_pushes_nothing,
    broadcast_sends_changes_as_they_happen,
    a_large_scene_is_paged,
    a_large_state_travels_as_frames_of_at_most_8_kib,
    get_status_answers_even_when_nothing_changed,
    a_scene_that_appears_later_starts_with_its_state_not_a_change,
    a_slow_reader_ends_with_the_latest_word_on_every_location,
);
