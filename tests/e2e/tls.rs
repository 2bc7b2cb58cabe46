//! The hub serving https:// and wss:// itself: the same messages over TLS, plain requests
//! refused without harm to others, silent clients that hold up nobody (and are closed, before
//! or after the handshake), and a certificate
//! renewed on disk served to new connections while old ones stay.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use vwed_e2e::pki::{scratch_dir, write, TestCa};
use vwed_e2e::{
    eventually, http_exchange, http_get, location, BrokerKind, Client, Owner, TestBroker, TestHub,
};
use vwed_publisher::{StatusAction, TaskResult, TaskStatus};

/// The HTTP header-read timeout of the hub in the test of clients silent after the handshake.
const HEADER_TIMEOUT: Duration = Duration::from_secs(1);

/// How often the hubs under test look at their certificate files.
const RELOAD_INTERVAL: Duration = Duration::from_millis(100);

/// A TLS hub on the embedded broker with an owner of task `t-1` and scene `s-1`.
struct Setup {
    /// The CA that signed the hub's first certificate.
    ca: TestCa,
    /// The hub's certificate file, rewritten by the rotation tests.
    cert: PathBuf,
    /// The hub's key file.
    key: PathBuf,
    /// Owns task `t-1` and scene `s-1`, publishing through the SDK.
    owner: Owner,
    /// The hub under test, serving TLS only.
    hub: TestHub,
    /// The embedded bus the hub and the owner share; kept alive for the test.
    _broker: TestBroker,
}

impl Setup {
    async fn start(name: &str) -> Self {
        Self::start_with(name, |_| {}).await
    }

    /// Like [`start`](Self::start), with `adjust` applied to the hub's configuration.
    async fn start_with(name: &str, adjust: impl FnOnce(&mut vwed_hub::HubConfig)) -> Self {
        let dir = scratch_dir(name);
        let ca = TestCa::new("vwed test CA one");
        let issued = ca.server();
        let cert = write(&dir, "tls.crt", &issued.cert_pem);
        let key = write(&dir, "tls.key", &issued.key_pem);
        let broker = TestBroker::start(BrokerKind::Memory).await;
        let owner = Owner::start(&broker).await;
        owner
            .seed_task(
                "t-1",
                vec![TaskResult::now("[取货] 开始", TaskStatus::Running)],
            )
            .await;
        owner
            .seed_scene("s-1", vec![location("s-1", "l-1", "A1", "S1", 1)])
            .await;
        let (cert_flag, key_flag) = (cert.clone(), key.clone());
        let hub = TestHub::launch_with(&broker, move |config| {
            config.tls.tls_cert = Some(cert_flag);
            config.tls.tls_key = Some(key_flag);
            config.tls.tls_reload_interval = RELOAD_INTERVAL;
            adjust(config);
        })
        .await;
        let setup = Self {
            ca,
            cert,
            key,
            owner,
            hub,
            _broker: broker,
        };
        let addr = setup.hub.addr();
        eventually("the TLS hub is ready", || async {
            https_get(addr, &setup.ca, "/readyz").await.0 == 200
        })
        .await;
        setup
    }

    /// A wss client trusting `ca`, on `path`.
    async fn wss(&self, ca: &TestCa, path: &str) -> Client {
        let tls = ca
            .connect(self.hub.addr())
            .await
            .expect("the TLS handshake");
        Client::connect_over_tls(tls, path)
            .await
            .expect("the WebSocket handshake")
    }

    /// Writes a new pair signed by `ca` into the hub's files: the key first, as a renewal
    /// might, so that the hub may see a mismatched pair for a moment.
    fn renew(&self, ca: &TestCa) {
        let issued = ca.server();
        std::fs::write(&self.key, issued.key_pem).expect("write the new key");
        std::fs::write(&self.cert, issued.cert_pem).expect("write the new certificate");
    }
}

async fn https_get(addr: SocketAddr, ca: &TestCa, path: &str) -> (u16, String) {
    match ca.connect(addr).await {
        Ok(tls) => {
            http_exchange(
                tls,
                &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
            )
            .await
        }
        Err(_) => (0, String::new()),
    }
}

async fn metric(addr: SocketAddr, ca: &TestCa, sample: &str) -> f64 {
    let (_, body) = https_get(addr, ca, "/metrics").await;
    body.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// Checks a `task_execution_update` field by field and returns its `data`.
fn task_update(message: &Value) -> Value {
    let mut keys: Vec<&str> = message
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["data", "message", "task_record_id", "timestamp", "type"],
        "{message}"
    );
    assert_eq!(message["type"], "task_execution_update");
    assert_eq!(message["task_record_id"], "t-1");
    assert_eq!(message["message"], "成功获取任务记录执行结果");
    message["data"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn wss_clients_get_the_normal_messages_and_https_serves_the_probes_and_page() {
    let setup = Setup::start("tls-messages").await;
    let addr = setup.hub.addr();

    let mut task = setup
        .wss(&setup.ca, "/ws/task-execution/t-1?interval=1")
        .await;
    assert_eq!(
        task_update(&task.next_json().await),
        setup.owner.task_data("t-1").await
    );
    setup
        .owner
        .append("t-1", "[取货] 完成", TaskStatus::Success)
        .await;
    let data = task_update(&task.next_json().await);
    assert_eq!(data, setup.owner.task_data("t-1").await);
    assert_eq!(data[1]["context"], "[取货] 完成");
    task.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(task.next_json().await["type"], "pong");

    let mut feed = setup
        .wss(&setup.ca, "/ws/storage-location-broadcast/s-1")
        .await;
    let mut scene = setup.wss(&setup.ca, "/ws/storage-location/s-1").await;
    let initial = scene.next_json().await;
    assert_eq!(initial["type"], "storage_location_update", "{initial}");
    assert_eq!(initial["scene_id"], "s-1");
    setup
        .owner
        .change_status("s-1", "l-1", StatusAction::Occupy, |l| l.is_occupied = true)
        .await;
    let change = feed.next_of_type("storage_location_status_change").await;
    assert_eq!(change["scene_id"], "s-1");
    assert_eq!(change["layer_name"], "S1-1");
    assert_eq!(change["action"], "OCCUPY", "{change}");
    assert_eq!(change["new_status"]["is_occupied"], true, "{change}");
    let update = scene.next_of_type("storage_location_status_change").await;
    assert_eq!(update, change);

    assert_eq!(
        https_get(addr, &setup.ca, "/healthz").await,
        (200, "ok".into())
    );
    assert_eq!(
        https_get(addr, &setup.ca, "/readyz").await,
        (200, "ready".into())
    );
    let (status, page) = https_get(addr, &setup.ca, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("<html"), "{page}");
    assert_eq!(
        metric(
            addr,
            &setup.ca,
            "vwed_hub_connections{endpoint=\"task-execution\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_and_ws_on_the_tls_port_fail_and_a_wss_client_stays() {
    let setup = Setup::start("tls-plain").await;
    let addr = setup.hub.addr();
    let mut client = setup.wss(&setup.ca, "/ws/task-execution/t-1").await;
    task_update(&client.next_json().await);
    let failures_before = metric(addr, &setup.ca, "vwed_hub_tls_handshake_failures_total").await;

    let (status, body) = http_get(addr, "/healthz").await;
    assert_eq!(status, 0, "plain HTTP got an HTTP answer: {body}");
    let plain_ws =
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws/task-execution/t-1")).await;
    assert!(plain_ws.is_err(), "a plain ws:// client connected");

    eventually("both failed handshakes are counted", || async {
        metric(addr, &setup.ca, "vwed_hub_tls_handshake_failures_total").await
            == failures_before + 2.0
    })
    .await;
    client.assert_alive().await;
    setup
        .owner
        .append("t-1", "[放货] 开始", TaskStatus::Running)
        .await;
    assert_eq!(
        task_update(&client.next_json().await),
        setup.owner.task_data("t-1").await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_that_never_send_a_client_hello_hold_up_nobody() {
    let setup = Setup::start("tls-silent").await;
    let addr = setup.hub.addr();
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    // Far below the 10 s handshake limit the silent ones could hold an inline accept for.
    let quick = Duration::from_secs(2);
    let mut client = tokio::time::timeout(quick, setup.wss(&setup.ca, "/ws/task-execution/t-1"))
        .await
        .expect("a wss client connects while others stay silent");
    let first = tokio::time::timeout(quick, client.next_json())
        .await
        .expect("the first message comes at once");
    task_update(&first);
    let health = tokio::time::timeout(quick, https_get(addr, &setup.ca, "/healthz"))
        .await
        .expect("https answers while others stay silent");
    assert_eq!(health, (200, "ok".into()));
    drop(silent);
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_silent_after_the_handshake_are_closed_after_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let setup = Setup::start_with("tls-header-timeout", |config| {
        config.http_header_timeout = HEADER_TIMEOUT;
    })
    .await;
    let addr = setup.hub.addr();
    let started = tokio::time::Instant::now();
    let mut silent = setup.ca.connect(addr).await.expect("the TLS handshake");
    let mut half = setup.ca.connect(addr).await.expect("the TLS handshake");
    half.write_all(b"GET /ws/task-execution/t-1 HTTP/1.1\r\nHost: loc")
        .await
        .expect("half a request head");
    half.flush().await.expect("flush");
    for (name, stream) in [("silent", &mut silent), ("half a head", &mut half)] {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(HEADER_TIMEOUT * 10, stream.read(&mut byte)).await;
        let elapsed = started.elapsed();
        // The hub closes the TCP connection without an answer, with or without close_notify.
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "{name}: {read:?} after {elapsed:?}"
        );
        assert!(
            elapsed >= HEADER_TIMEOUT * 3 / 4,
            "{name}: closed after {elapsed:?}"
        );
    }
    // The hub still serves everyone else.
    assert_eq!(
        https_get(addr, &setup.ca, "/healthz").await,
        (200, "ok".into())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_renewed_certificate_reaches_new_connections_and_old_ones_stay() {
    let setup = Setup::start("tls-renewal").await;
    let addr = setup.hub.addr();
    let mut old = setup.wss(&setup.ca, "/ws/task-execution/t-1").await;
    task_update(&old.next_json().await);

    let second = TestCa::new("vwed test CA two");
    assert!(
        second.connect(addr).await.is_err(),
        "a client trusting only the second CA connected before the renewal"
    );
    setup.renew(&second);
    eventually("a client trusting only the second CA connects", || async {
        second.connect(addr).await.is_ok()
    })
    .await;
    let mut new = setup.wss(&second, "/ws/task-execution/t-1").await;
    task_update(&new.next_json().await);
    assert!(
        setup.ca.connect(addr).await.is_err(),
        "new connections still get the first certificate"
    );

    old.assert_alive().await;
    setup
        .owner
        .append("t-1", "[放货] 完成", TaskStatus::Success)
        .await;
    let data = setup.owner.task_data("t-1").await;
    assert_eq!(task_update(&old.next_json().await), data);
    assert_eq!(task_update(&new.next_json().await), data);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_renewal_keeps_the_old_certificate_until_a_valid_one_comes() {
    let setup = Setup::start("tls-bad-renewal").await;
    let addr = setup.hub.addr();
    let mut old = setup.wss(&setup.ca, "/ws/task-execution/t-1").await;
    task_update(&old.next_json().await);

    std::fs::write(&setup.cert, "-----BEGIN CERTIFICATE-----\ngarbage\n").expect("write");
    // A mismatched pair: a valid certificate of another key.
    let other = setup.ca.server();
    tokio::time::sleep(RELOAD_INTERVAL * 3).await;
    std::fs::write(&setup.cert, other.cert_pem).expect("write");
    tokio::time::sleep(RELOAD_INTERVAL * 3).await;
    let (status, _) = https_get(addr, &setup.ca, "/healthz").await;
    assert_eq!(status, 200, "the old certificate is no longer served");
    let mut fresh = setup.wss(&setup.ca, "/ws/task-execution/t-1").await;
    task_update(&fresh.next_json().await);

    let second = TestCa::new("vwed test CA two");
    setup.renew(&second);
    eventually("the valid renewal after the bad ones is served", || async {
        second.connect(addr).await.is_ok()
    })
    .await;
    old.assert_alive().await;
    fresh.assert_alive().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_certificate_files_stop_the_start_naming_the_file() {
    let dir = scratch_dir("tls-bad-files");
    let issued = TestCa::new("vwed test CA one").server();
    let cert = write(&dir, "tls.crt", &issued.cert_pem);
    let mut config = vwed_hub::HubConfig::new(vwed_e2e::loopback_any_port());
    // The certificate given as the key, as a swapped mount would.
    config.tls.tls_cert = Some(cert.clone());
    config.tls.tls_key = Some(cert.clone());
    let error = match vwed_hub::Hub::start(config).await {
        Ok(_) => panic!("the hub started with a certificate as its key"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.starts_with(&format!(
            "TLS key (--tls-key) {}: holds no private key",
            cert.display()
        )),
        "{error}"
    );

    let other_key = TestCa::new("vwed test CA two").server().key_pem;
    let mismatched = write(&dir, "other.key", &other_key);
    let mut config = vwed_hub::HubConfig::new(vwed_e2e::loopback_any_port());
    config.tls.tls_cert = Some(cert.clone());
    config.tls.tls_key = Some(mismatched.clone());
    let error = match vwed_hub::Hub::start(config).await {
        Ok(_) => panic!("the hub started with a key of another certificate"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.starts_with(&format!(
            "TLS key (--tls-key) {} does not fit the certificate (--tls-cert) {}",
            mismatched.display(),
            cert.display()
        )),
        "{error}"
    );
}
