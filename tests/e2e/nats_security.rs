//! The hub on a NATS server that wants credentials or TLS: with the right ones it becomes
//! ready and serves events published through the SDK (which takes the same settings); with
//! wrong ones it stays up, unready, turns clients away with 1013 and says why once.

use std::path::Path;
use std::time::Duration;

use vwed_e2e::cluster::{try_get, wait_until, HubProcess};
use vwed_e2e::creds::{user_creds_signed_by, Operator};
use vwed_e2e::pki::{scratch_dir, write, TestCa};
use vwed_e2e::{http_get, Client, Nats, Owner, TestHub};
use vwed_hub::broker::NatsFlags;
use vwed_publisher::{NatsSecurity, Publisher, TaskResult, TaskStatus};

/// The hub binary, built in this crate.
const HUB: &str = env!("CARGO_BIN_EXE_vwed-hub-under-test");

/// The hub's flags for `security`.
fn flags(security: &NatsSecurity) -> NatsFlags {
    NatsFlags {
        nats_user: security.user.clone(),
        nats_password: security.password.clone(),
        nats_token: security.token.clone(),
        nats_nkey: security.nkey_seed_file.clone(),
        nats_creds: security.creds_file.clone(),
        nats_tls_ca: security.tls_ca.clone(),
        nats_tls_cert: security.tls_cert.clone(),
        nats_tls_key: security.tls_key.clone(),
        nats_tls_required: security.tls_required,
    }
}

/// An owner of task `t-1` publishing through the SDK on a connection secured by `security`.
async fn owner(url: &str, security: &NatsSecurity) -> Owner {
    let options = async_nats::ConnectOptions::new()
        .name("vwed-e2e-owner")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(|_| Duration::from_millis(100));
    let client = security
        .apply(options)
        .expect("the owner's settings are valid")
        .connect(url)
        .await
        .expect("the owner's client starts");
    let owner = Owner::on(Publisher::new(client)).await;
    owner
        .seed_task(
            "t-1",
            vec![TaskResult::now("[取货] 开始", TaskStatus::Running)],
        )
        .await;
    owner
}

/// A hub with `hub` settings becomes ready, a client gets the owner's snapshot, and an event
/// the owner publishes reaches it.
async fn serves_events(nats: &Nats, hub: &NatsSecurity, owner_security: &NatsSecurity) {
    let owner = owner(&nats.url(), owner_security).await;
    let hub_flags = flags(hub);
    let hub = TestHub::launch(&nats.url(), |config| config.nats_security = hub_flags).await;
    hub.wait_until_ready().await;
    let mut client = Client::connect(&hub, "/ws/task-execution/t-1?interval=1").await;
    let first = client.next_of_type("task_execution_update").await;
    assert_eq!(first["data"], owner.task_data("t-1").await);
    owner
        .append("t-1", "[取货] 完成", TaskStatus::Success)
        .await;
    let update = client.next_of_type("task_execution_update").await;
    assert_eq!(update["data"], owner.task_data("t-1").await);
    assert_eq!(update["data"][1]["context"], "[取货] 完成");
}

/// A hub with `hub` settings the server refuses stays up but unready, and turns clients away
/// with 1013.
async fn is_refused(nats: &Nats, hub: &NatsSecurity) {
    let hub_flags = flags(hub);
    let hub = TestHub::launch(&nats.url(), |config| config.nats_security = hub_flags).await;
    // Long enough for several attempts at the normal reconnect pace.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(http_get(hub.addr(), "/healthz").await, (200, "ok".into()));
    assert_eq!(
        http_get(hub.addr(), "/readyz").await,
        (503, "broker not connected".into())
    );
    let mut client = Client::connect(&hub, "/ws/task-execution/t-1").await;
    assert_eq!(client.close_code().await, 1013);
}

fn users_config() -> &'static str {
    r#"authorization {
  users = [
    { user: "hub", password: "hub-secret" }
    { user: "owner", password: "owner-secret" }
  ]
}
"#
}

fn user(name: &str, password: &str) -> NatsSecurity {
    NatsSecurity {
        user: Some(name.into()),
        password: Some(password.into()),
        ..NatsSecurity::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn user_and_password() {
    let dir = scratch_dir("nats-user");
    let nats = Nats::start_with_config(&dir, users_config()).await;
    serves_events(
        &nats,
        &user("hub", "hub-secret"),
        &user("owner", "owner-secret"),
    )
    .await;
    is_refused(&nats, &user("hub", "not-the-password")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn token() {
    let dir = scratch_dir("nats-token");
    let nats = Nats::start_with_config(&dir, "authorization { token: \"s3cret-token\" }\n").await;
    let token = |token: &str| NatsSecurity {
        token: Some(token.into()),
        ..NatsSecurity::default()
    };
    serves_events(&nats, &token("s3cret-token"), &token("s3cret-token")).await;
    is_refused(&nats, &token("another-token")).await;
}

/// A user nkey: its public key for the server, its seed in a file for the client.
fn nkey_user(dir: &Path, name: &str) -> (String, NatsSecurity) {
    let key = nkeys::KeyPair::new_user();
    let seed = key.seed().expect("a seed");
    let path = write(dir, &format!("{name}.nk"), &format!("{seed}\n"));
    let security = NatsSecurity {
        nkey_seed_file: Some(path),
        ..NatsSecurity::default()
    };
    (key.public_key(), security)
}

#[tokio::test(flavor = "multi_thread")]
async fn nkey() {
    let dir = scratch_dir("nats-nkey");
    let (hub_key, hub) = nkey_user(&dir, "hub");
    let (owner_key, owner) = nkey_user(&dir, "owner");
    let (_, stranger) = nkey_user(&dir, "stranger");
    let config = format!(
        "authorization {{\n  users = [\n    {{ nkey: \"{hub_key}\" }}\n    {{ nkey: \"{owner_key}\" }}\n  ]\n}}\n"
    );
    let nats = Nats::start_with_config(&dir, &config).await;
    serves_events(&nats, &hub, &owner).await;
    is_refused(&nats, &stranger).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_with_a_private_ca() {
    let dir = scratch_dir("nats-tls");
    let ca = TestCa::new("vwed test NATS CA");
    let server = ca.server();
    let config = format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}\n",
        write(&dir, "server.crt", &server.cert_pem).display(),
        write(&dir, "server.key", &server.key_pem).display(),
        write(&dir, "ca.pem", &ca.pem()).display(),
    );
    let nats = Nats::start_with_config(&dir, &config).await;
    let client = |name: &str| {
        let issued = ca.client(name);
        NatsSecurity {
            tls_ca: Some(dir.join("ca.pem")),
            tls_cert: Some(write(&dir, &format!("{name}.crt"), &issued.cert_pem)),
            tls_key: Some(write(&dir, &format!("{name}.key"), &issued.key_pem)),
            ..NatsSecurity::default()
        }
    };
    serves_events(&nats, &client("hub"), &client("owner")).await;
    // Trusting the CA but showing no certificate of its own.
    let no_client_certificate = NatsSecurity {
        tls_ca: Some(dir.join("ca.pem")),
        ..NatsSecurity::default()
    };
    is_refused(&nats, &no_client_certificate).await;
    // A certificate of its own, but trusting only the system's roots, not the test CA.
    let untrusting = NatsSecurity {
        tls_ca: None,
        ..client("stranger")
    };
    is_refused(&nats, &untrusting).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_required_refuses_a_server_without_tls() {
    let nats = Nats::start().await;
    let required = NatsSecurity {
        tls_required: true,
        ..NatsSecurity::default()
    };
    is_refused(&nats, &required).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn creds_in_operator_mode() {
    let dir = scratch_dir("nats-creds");
    let operator = Operator::new();
    let nats = Nats::start_with_config(&dir, &operator.server_config()).await;
    let creds = |name: &str, text: String| NatsSecurity {
        creds_file: Some(write(&dir, &format!("{name}.creds"), &text)),
        ..NatsSecurity::default()
    };
    serves_events(
        &nats,
        &creds("hub", operator.user_creds("hub")),
        &creds("owner", operator.user_creds("owner")),
    )
    .await;
    // A user of an account the server does not know.
    let stranger = user_creds_signed_by(&nkeys::KeyPair::new_account(), "stranger");
    is_refused(&nats, &creds("stranger", stranger)).await;
}

/// The hub binary with a wrong password: up, unready, and one line of its own saying why;
/// the passwords, also one inside a URL, never appear in its log.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_hub_says_why_once_and_never_logs_a_password() {
    let dir = scratch_dir("nats-refused-log");
    let nats = Nats::start_with_config(&dir, users_config()).await;
    let refused = HubProcess::launch(
        HUB,
        "nats-refused",
        &nats.url(),
        &["--nats-user", "hub", "--nats-password", "wrong-pass-6f3a"],
    );
    wait_until(
        "the refused hub serves /healthz",
        Duration::from_secs(10),
        || async { try_get(refused.addr(), "/healthz").await.is_some() },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        try_get(refused.addr(), "/readyz").await,
        Some((503, "broker not connected".into()))
    );
    let log = std::fs::read_to_string(refused.log()).expect("the hub's log");
    let own: Vec<&str> = log
        .lines()
        .filter(|line| {
            line.contains("\"target\":\"vwed_hub") && line.contains("authorization violation")
        })
        .collect();
    assert_eq!(own.len(), 1, "the hub's own lines about it:\n{log}");
    assert!(own[0].contains("\"level\":\"WARN\""), "{}", own[0]);
    assert!(
        own[0].contains("refused the hub's credentials"),
        "{}",
        own[0]
    );
    // At the normal reconnect pace (up to 2 s apart) 4 s would see five attempts or more; after
    // a refusal the hub waits 30 s, so there is the first and at most one that raced the news.
    let attempts = log
        .lines()
        .filter(|line| {
            line.contains("\"target\":\"async_nats::connector\"")
                && line.contains("authorization violation")
        })
        .count();
    assert!(
        (1..=3).contains(&attempts),
        "{attempts} refused attempts in 4 s:\n{log}"
    );
    assert!(
        !log.contains("wrong-pass-6f3a"),
        "a password in the log:\n{log}"
    );

    let host_port = nats.url().trim_start_matches("nats://").to_owned();
    let mut in_url = HubProcess::launch(
        HUB,
        "nats-url-password",
        &format!("nats://hub:hub-secret@{host_port}"),
        &[],
    );
    in_url.wait_until_ready().await;
    let log = std::fs::read_to_string(in_url.log()).expect("the hub's log");
    assert!(!log.contains("hub-secret"), "a password in the log:\n{log}");
    assert!(
        log.contains("nats://hub:***@"),
        "the URL is not logged:\n{log}"
    );
}
