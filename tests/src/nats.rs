//! A real `nats-server` process, on a port of its own, that tests can stop and start again.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// A `nats-server` from `PATH`, killed when dropped.
pub struct Nats {
    port: u16,
    child: Option<Child>,
    /// A configuration file (authorization, TLS, ...) the server reads; the port and address
    /// given on the command line win over it.
    config: Option<PathBuf>,
}

impl Nats {
    /// Starts a server on a free loopback port and waits until it accepts connections.
    pub async fn start() -> Self {
        let mut nats = Self {
            port: crate::free_port(),
            child: None,
            config: None,
        };
        nats.launch().await;
        nats
    }

    /// Starts a server that reads `config` (nats-server's configuration syntax, e.g.
    /// `authorization { token: "t" }`), written for it into `dir`.
    pub async fn start_with_config(dir: &std::path::Path, config: &str) -> Self {
        let path = dir.join("nats-server.conf");
        std::fs::write(&path, config).expect("write the nats-server configuration");
        let mut nats = Self {
            port: crate::free_port(),
            child: None,
            config: Some(path),
        };
        nats.launch().await;
        nats
    }

    /// `nats://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash would) and waits until it is gone.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts the server again on the same port.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.launch().await;
    }

    async fn launch(&mut self) {
        let mut command = Command::new("nats-server");
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        let child = command
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server on PATH (see README: apt-get install nats-server)");
        self.child = Some(child);
        for _ in 0..200 {
            if TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("nats-server did not start on port {}", self.port);
    }
}
