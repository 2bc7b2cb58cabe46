//! A real headless Chromium, driven over WebDriver by a `chromedriver` of the test's own.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::wd::Capabilities;
use fantoccini::{Client as WebDriver, ClientBuilder};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::{free_port, PATIENCE};

/// The `chromium` on `PATH` (Debian's package puts it in `/usr/bin`).
fn chromium() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("chromium"))
        .find(|path| path.is_file())
        .expect("chromium on PATH (apt-get install chromium chromium-driver)")
}

/// A headless browser window; the browser and its driver end when this is dropped.
pub struct Browser {
    /// The WebDriver session every command goes through.
    driver: WebDriver,
    /// The `chromedriver` process, killed on drop.
    _chromedriver: Child,
    /// The browser's profile directory, unique to this browser: on drop, the processes that
    /// name it are killed (a test that fails never reaches `close`, and a killed chromedriver
    /// leaves its browser running), then it is removed.
    profile: PathBuf,
}

impl Browser {
    /// Starts `chromedriver` on a free port and opens a headless Chromium window of the given
    /// size through it.
    pub async fn start(width: u32, height: u32) -> Self {
        let port = free_port();
        let chromedriver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver on PATH (apt-get install chromium chromium-driver)");
        crate::eventually("chromedriver accepts connections", || async {
            TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
        let profile = std::env::temp_dir().join(format!("vwed-e2e-chromium-{port}"));
        let mut capabilities = Capabilities::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium(),
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.display()),
                    format!("--window-size={width},{height}"),
                ],
            }),
        );
        let driver = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session");
        Self {
            driver,
            _chromedriver: chromedriver,
            profile,
        }
    }

    /// Loads `url` and waits until the page's script says it is ready.
    pub async fn open(&self, url: &str) {
        self.driver.goto(url).await.expect("the page loads");
        self.wait_until(
            "the page script is ready",
            "document.body.dataset.ready === '1'",
        )
        .await;
    }

    /// The value of a JavaScript expression, evaluated in the page.
    pub async fn eval(&self, expression: &str) -> Value {
        self.driver
            .execute(&format!("return ({expression});"), Vec::new())
            .await
            .unwrap_or_else(|e| panic!("evaluating {expression}: {e}"))
    }

    /// Waits until a JavaScript expression is true, failing after [`PATIENCE`].
    pub async fn wait_until(&self, what: &str, expression: &str) {
        self.wait_until_within(what, expression, PATIENCE).await;
    }

    /// Waits at most `limit` until a JavaScript expression is true.
    pub async fn wait_until_within(&self, what: &str, expression: &str, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.eval(expression).await != Value::Bool(true) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out after {limit:?} waiting until {what} ({expression})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Saves a PNG of the window under `target/test-artifacts/` and returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.driver.screenshot().await.expect("a screenshot");
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
        let dir = target.join("test-artifacts");
        std::fs::create_dir_all(&dir).expect("an artifact directory");
        let path = dir.join(name);
        std::fs::write(&path, png).expect("the screenshot is saved");
        path
    }

    /// Ends the session (closing the browser).
    pub async fn close(self) {
        let _ = self.driver.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("pkill")
            .arg("-f")
            .arg(format!("user-data-dir={}", self.profile.display()))
            .status();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
