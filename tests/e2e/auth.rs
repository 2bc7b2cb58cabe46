//! Connection tokens: who may watch what. A token opens exactly the keys it names; a missing,
//! forged, stale or insufficient one gets one `error` saying why and close 1008, before any of
//! the key's data; a connection ends when its token expires.

use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use vwed_e2e::tokens::{self, claims, epoch_in, hs256, key_file, private_key, signed, unsigned};
use vwed_e2e::{
    location, on_both_brokers, BrokerKind, Client, Owner, Received, TestBroker, TestHub,
};
use vwed_hub::HubConfig;
use vwed_publisher::{TaskResult, TaskStatus};

/// An owner of tasks `t-1`, `t-2` and scenes `s-1`, `s-2`.
async fn seeded_owner(broker: &TestBroker) -> Owner {
    let owner = Owner::start(broker).await;
    for task in ["t-1", "t-2"] {
        owner
            .seed_task(task, vec![TaskResult::now("[a] 1", TaskStatus::Success)])
            .await;
    }
    for scene in ["s-1", "s-2"] {
        owner
            .seed_scene(scene, vec![location(scene, "l-1", "A1", "S1", 1)])
            .await;
    }
    owner
}

/// A hub that requires HS256 tokens signed with [`tokens::SECRET`].
async fn hub_with_secret(broker: &TestBroker, adjust: impl FnOnce(&mut HubConfig)) -> TestHub {
    TestHub::start_with(broker, |c| {
        c.jwt_secret = Some(tokens::SECRET.parse().expect("any text is a secret"));
        adjust(c);
    })
    .await
}

/// Asserts the client is refused: one `error` about `id_field`=`id` with exactly `message`,
/// then close 1008 with `reason`, and nothing else.
async fn assert_refused(
    client: &mut Client,
    id_field: &str,
    id: &str,
    message: &str,
    reason: &str,
) {
    let error = client.next_of_type("error").await;
    assert_eq!(error[id_field], id, "{error}");
    assert_eq!(error["message"], message, "{error}");
    assert_eq!(
        client.next().await,
        Received::Close(Some((1008, reason.to_owned())))
    );
}

async fn a_token_opens_what_it_names_and_nothing_else(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let _owner = seeded_owner(&broker).await;
    let hub = hub_with_secret(&broker, |_| {}).await;
    let scene_one = hs256(&claims(&["s-1"], &["t-2"]));

    let mut allowed =
        Client::connect(&hub, &format!("/ws/storage-location/s-1?token={scene_one}")).await;
    let state = allowed.next_of_type("storage_location_update").await;
    assert_eq!(state["scene_id"], "s-1");
    let mut allowed_task =
        Client::connect(&hub, &format!("/ws/task-execution/t-2?token={scene_one}")).await;
    allowed_task.next_of_type("task_execution_update").await;

    for path in [
        "/ws/storage-location/s-2",
        "/ws/storage-location-broadcast/s-2",
    ] {
        let mut refused = Client::connect(&hub, &format!("{path}?token={scene_one}")).await;
        assert_refused(
            &mut refused,
            "scene_id",
            "s-2",
            "无权访问该场景的库位数据",
            "not authorised",
        )
        .await;
    }
    let mut refused =
        Client::connect(&hub, &format!("/ws/task-execution/t-1?token={scene_one}")).await;
    assert_refused(
        &mut refused,
        "task_record_id",
        "t-1",
        "无权访问该任务记录",
        "not authorised",
    )
    .await;

    // `*` is every id of its kind, and only of its kind.
    let every_task = hs256(&claims(&[], &["*"]));
    for task in ["t-1", "t-2"] {
        let mut client = Client::connect(
            &hub,
            &format!("/ws/task-execution/{task}?token={every_task}"),
        )
        .await;
        client.next_of_type("task_execution_update").await;
    }
    let mut refused = Client::connect(
        &hub,
        &format!("/ws/storage-location/s-1?token={every_task}"),
    )
    .await;
    assert_refused(
        &mut refused,
        "scene_id",
        "s-1",
        "无权访问该场景的库位数据",
        "not authorised",
    )
    .await;

    assert_eq!(
        hub.metric(r#"vwed_hub_connections_refused_total{reason="not authorised"}"#)
            .await,
        4.0
    );
    allowed.assert_alive().await;
}

async fn the_token_may_travel_in_a_header_or_a_subprotocol(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let _owner = seeded_owner(&broker).await;
    let hub = hub_with_secret(&broker, |_| {}).await;
    let token = hs256(&claims(&["s-1"], &[]));
    let path = "/ws/storage-location/s-1";

    for scheme in ["Bearer", "bearer"] {
        let header = format!("{scheme} {token}");
        let mut client =
            Client::try_connect_with_headers(&hub, path, &[("authorization", &header)])
                .await
                .expect("the handshake succeeds");
        client.next_of_type("storage_location_update").await;
    }

    // What a browser does: `new WebSocket(url, ["vwed", "bearer." + token])`. The hub must
    // select `vwed`, or the browser fails the handshake.
    let mut request = hub.url(path).into_client_request().expect("a valid URL");
    let offer = format!("vwed, bearer.{token}");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        offer.parse().expect("a header value"),
    );
    let (mut client, response) = Client::connect_request(request)
        .await
        .expect("the handshake succeeds");
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().ok()),
        Some(Some("vwed"))
    );
    client.next_of_type("storage_location_update").await;

    // A header's token is used even when the query carries a forged one, and the other way
    // round no token of the query rescues a bad header.
    let forged = unsigned(&claims(&["*"], &["*"]));
    let header = format!("Bearer {forged}");
    let mut refused = Client::try_connect_with_headers(
        &hub,
        &format!("{path}?token={token}"),
        &[("authorization", &header)],
    )
    .await
    .expect("the handshake succeeds");
    assert_eq!(refused.next_of_type("error").await["scene_id"], "s-1");
    assert_eq!(refused.close_code().await, 1008);
}

async fn missing_forged_and_stale_tokens_are_refused_with_the_reason(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let _owner = seeded_owner(&broker).await;
    let hub = hub_with_secret(&broker, |c| c.jwt_leeway = Duration::from_secs(30)).await;
    let wrong_key = jsonwebtoken::EncodingKey::from_secret(b"some other secret of enough length!!");
    let everything = claims(&["*"], &["*"]);
    let cases: Vec<(&str, Option<String>, &str, &str)> = vec![
        (
            "no token",
            None,
            "缺少访问令牌: 请通过 token 参数、Authorization: Bearer 请求头或 bearer.<令牌> 子协议提供",
            "token missing",
        ),
        ("an empty token", Some(String::new()), "缺少访问令牌: 请通过 token 参数、Authorization: Bearer 请求头或 bearer.<令牌> 子协议提供", "token missing"),
        ("not a JWT", Some("abc".into()), "访问令牌无效: 格式错误", "token invalid"),
        (
            "signed with another secret",
            Some(signed(&everything, Algorithm::HS256, &wrong_key)),
            "访问令牌无效: 签名不符",
            "token invalid",
        ),
        (
            "alg none",
            Some(unsigned(&everything)),
            "访问令牌无效: 签名算法不被接受",
            "token invalid",
        ),
        (
            "HS512 with the right secret",
            Some(signed(
                &everything,
                Algorithm::HS512,
                &jsonwebtoken::EncodingKey::from_secret(tokens::SECRET.as_bytes()),
            )),
            "访问令牌无效: 签名算法不被接受",
            "token invalid",
        ),
        (
            "expired beyond the leeway",
            Some(hs256(&json!({ "scenes": ["*"], "exp": epoch_in(-60) }))),
            "访问令牌已过期",
            "token expired",
        ),
        (
            "not valid for another minute",
            Some(hs256(&json!({ "scenes": ["*"], "exp": epoch_in(3600), "nbf": epoch_in(60) }))),
            "访问令牌尚未生效",
            "token not yet valid",
        ),
        (
            "no exp",
            Some(hs256(&json!({ "scenes": ["*"] }))),
            "访问令牌无效: 缺少 exp 声明",
            "token invalid",
        ),
        (
            "scenes as a string",
            Some(hs256(&json!({ "scenes": "*", "exp": epoch_in(3600) }))),
            "访问令牌无效: 声明格式错误: scenes 与 tasks 须为字符串数组",
            "token invalid",
        ),
    ];
    for (case, token, message, reason) in &cases {
        let query = token
            .as_ref()
            .map(|t| format!("?token={t}"))
            .unwrap_or_default();
        let mut client = Client::connect(&hub, &format!("/ws/storage-location/s-1{query}")).await;
        let error = client.next_json().await;
        assert_eq!(error["type"], "error", "{case}: {error}");
        assert_eq!(error["scene_id"], "s-1", "{case}");
        assert_eq!(error["message"], *message, "{case}");
        assert_eq!(
            client.next().await,
            Received::Close(Some((1008, (*reason).to_owned()))),
            "{case}"
        );
    }
    assert_eq!(
        hub.metric(r#"vwed_hub_connections_refused_total{reason="token invalid"}"#)
            .await,
        6.0
    );
    // Within the leeway, a just-expired token still opens.
    let lenient = hs256(&json!({ "scenes": ["*"], "exp": epoch_in(-5) }));
    let mut client =
        Client::connect(&hub, &format!("/ws/storage-location/s-1?token={lenient}")).await;
    client.next_of_type("storage_location_update").await;
}

async fn a_connection_closes_when_its_token_expires(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let owner = seeded_owner(&broker).await;
    let hub = hub_with_secret(&broker, |c| c.jwt_leeway = Duration::ZERO).await;
    let short = hs256(&json!({ "tasks": ["t-1"], "exp": epoch_in(3) }));
    let mut client = Client::connect(
        &hub,
        &format!("/ws/task-execution/t-1?token={short}&interval=1"),
    )
    .await;
    client.next_of_type("task_execution_update").await;
    // Served as usual until the token expires.
    owner.append("t-1", "[a] 2", TaskStatus::Running).await;
    let update = client.next_of_type("task_execution_update").await;
    assert_eq!(update["data"], owner.task_data("t-1").await);
    let error = tokio::time::timeout(Duration::from_secs(5), client.next_of_type("error"))
        .await
        .expect("the token expires within seconds");
    assert_eq!(error["message"], "访问令牌已过期");
    assert_eq!(error["task_record_id"], "t-1");
    assert_eq!(
        client.next().await,
        Received::Close(Some((1008, "token expired".to_owned())))
    );
}

async fn without_a_key_tokens_are_ignored(kind: BrokerKind) {
    let broker = TestBroker::start(kind).await;
    let _owner = seeded_owner(&broker).await;
    let hub = TestHub::start(&broker).await;
    let mut client = Client::try_connect_with_headers(
        &hub,
        "/ws/storage-location/s-1?token=whatever",
        &[("authorization", "Bearer whatever")],
    )
    .await
    .expect("the handshake succeeds");
    client.next_of_type("storage_location_update").await;
}

on_both_brokers!(
    a_token_opens_what_it_names_and_nothing_else,
    the_token_may_travel_in_a_header_or_a_subprotocol,
    missing_forged_and_stale_tokens_are_refused_with_the_reason,
    a_connection_closes_when_its_token_expires,
    without_a_key_tokens_are_ignored,
);

/// The key types a public key file may hold, each accepting only its own algorithm: a token
/// cannot pick HS256 and be "verified" with the public key as its secret.
#[tokio::test(flavor = "multi_thread")]
async fn public_keys_verify_rs256_es256_and_es384_tokens() {
    let broker = TestBroker::start(BrokerKind::Memory).await;
    let _owner = seeded_owner(&broker).await;
    let scene: Value = claims(&["s-1"], &[]);
    for (public, private, algorithm) in [
        ("rsa-public.pem", "rsa-private.pem", Algorithm::RS256),
        ("ec-public.pem", "ec-private.pem", Algorithm::ES256),
        ("ec384-public.pem", "ec384-private.pem", Algorithm::ES384),
    ] {
        let hub = TestHub::start_with(&broker, |c| c.jwt_public_key = Some(key_file(public))).await;
        let good = signed(&scene, algorithm, &private_key(private, algorithm));
        let mut client =
            Client::connect(&hub, &format!("/ws/storage-location/s-1?token={good}")).await;
        client.next_of_type("storage_location_update").await;

        let public_pem = std::fs::read(key_file(public)).expect("the key file");
        let confused = signed(
            &scene,
            Algorithm::HS256,
            &jsonwebtoken::EncodingKey::from_secret(&public_pem),
        );
        let mut refused =
            Client::connect(&hub, &format!("/ws/storage-location/s-1?token={confused}")).await;
        assert_refused(
            &mut refused,
            "scene_id",
            "s-1",
            "访问令牌无效: 签名算法不被接受",
            "token invalid",
        )
        .await;
    }
}

/// Settings that cannot work stop the start with a message naming the problem.
#[tokio::test(flavor = "multi_thread")]
async fn bad_key_settings_stop_the_start() {
    let listen = vwed_e2e::loopback_any_port();
    let mut short = HubConfig::new(listen);
    short.jwt_secret = Some("too short".parse().expect("a secret"));
    let error = vwed_hub::Hub::start(short).await.err().expect("refused");
    assert!(format!("{error:#}").contains("at least 32"), "{error:#}");

    let mut missing = HubConfig::new(listen);
    missing.jwt_public_key = Some(key_file("no-such-key.pem"));
    let error = vwed_hub::Hub::start(missing).await.err().expect("refused");
    assert!(
        format!("{error:#}").contains("no-such-key.pem"),
        "{error:#}"
    );

    let mut not_a_key = HubConfig::new(listen);
    not_a_key.jwt_public_key = Some(key_file("README.md"));
    let error = vwed_hub::Hub::start(not_a_key)
        .await
        .err()
        .expect("refused");
    assert!(
        format!("{error:#}").contains("no RSA or EC public key"),
        "{error:#}"
    );
}
