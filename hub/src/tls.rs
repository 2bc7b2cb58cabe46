//! Serving `https://` and `wss://` on the listen port: the certificate and key from PEM files,
//! reloaded when the files change (cert-manager renews them in place) or on SIGHUP, and TLS
//! handshakes done off the accept loop, so that a slow or silent client delays only itself.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// How long a client may take to complete its TLS handshake before it is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections whose handshake is done but which the server has not taken yet; a few are
/// plenty, as taking one is quick.
const READY_QUEUE: usize = 64;

/// TLS handshakes in progress at most. Honest ones take milliseconds; past this, new
/// connections are closed at once, so that a flood of silent clients cannot hold every file
/// descriptor for the whole handshake limit.
pub const MAX_PENDING_HANDSHAKES: usize = 1024;

/// The `--tls-*` flags.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "TLS (https:// and wss://)")]
pub struct TlsFlags {
    /// PEM file with the server certificate chain (the hub's certificate first, then any
    /// intermediates). With --tls-key, the listen port speaks only TLS: https:// and wss://.
    /// Reloaded when the file changes.
    #[arg(
        long,
        env = "VWED_TLS_CERT",
        requires = "tls_key",
        value_name = "PEM_FILE"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM file with the private key of --tls-cert (PKCS#8, PKCS#1 RSA or SEC1 EC).
    #[arg(
        long,
        env = "VWED_TLS_KEY",
        requires = "tls_cert",
        value_name = "PEM_FILE"
    )]
    pub tls_key: Option<PathBuf>,

    /// How often to check whether --tls-cert or --tls-key changed on disk; new connections
    /// then get the new certificate (an invalid new pair is refused and the old one kept).
    /// SIGHUP checks at once.
    #[arg(long, env = "VWED_TLS_RELOAD_INTERVAL", default_value = "30s", value_parser = parse_interval)]
    pub tls_reload_interval: Duration,
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if !duration.is_zero() => Ok(duration),
        Ok(_) => Err("must be more than zero".into()),
        Err(error) => Err(format!("{error} (try e.g. 30s, 5m)")),
    }
}

/// The hub's TLS side: the certificate now served, and where it comes from.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The certificate file, read again when it changes.
    cert_path: PathBuf,
    /// The key file, read again when it changes.
    key_path: PathBuf,
    /// The certificate handed to each new handshake; replaced on reload.
    current: Arc<CurrentCertificate>,
    /// The rustls settings every connection shares; they read `current` per handshake.
    config: Arc<ServerConfig>,
}

impl ServerTls {
    /// Loads the certificate and key named by `flags`; `None` without them.
    pub fn from_flags(flags: &TlsFlags) -> anyhow::Result<Option<Self>> {
        match (&flags.tls_cert, &flags.tls_key) {
            (Some(cert), Some(key)) => Self::load(cert, key).map(Some),
            (None, None) => Ok(None),
            _ => anyhow::bail!("--tls-cert and --tls-key go together: give both or neither"),
        }
    }

    /// Loads `cert_path` and `key_path`, failing with a message that names the bad file.
    pub fn load(cert_path: &Path, key_path: &Path) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certified = load_pair(&provider, cert_path, key_path)?;
        let current = Arc::new(CurrentCertificate(RwLock::new(Arc::new(certified))));
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("the TLS provider supports no protocol version")?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        // The server speaks HTTP/1.1 only (WebSocket upgrades ride on it).
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current,
            config: Arc::new(config),
        })
    }

    /// Reads the files again and serves the new pair to new connections; on any problem keeps
    /// the current pair and says why.
    pub fn reload(&self) -> anyhow::Result<()> {
        let provider = rustls::crypto::ring::default_provider();
        let certified = load_pair(&provider, &self.cert_path, &self.key_path)?;
        self.current.replace(Arc::new(certified));
        Ok(())
    }

    /// Reloads whenever either file changes (checked every `interval`) and on SIGHUP, until
    /// `stop`.
    pub async fn watch(self, interval: Duration, stop: CancellationToken) {
        let mut seen = self.stamps();
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut hangup = hangup_signal();
        loop {
            let forced = tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => false,
                Some(()) = next_hangup(&mut hangup) => true,
            };
            let now = self.stamps();
            if now == seen && !forced {
                continue;
            }
            // Tried once per change: an invalid pair is reported once, not every interval.
            seen = now;
            match self.reload() {
                Ok(()) => tracing::info!(
                    cert = %self.cert_path.display(),
                    key = %self.key_path.display(),
                    "TLS certificate reloaded: new connections use it"
                ),
                Err(error) => tracing::warn!(
                    error = format!("{error:#}"),
                    "TLS certificate not reloaded: keeping the current one"
                ),
            }
        }
    }

    /// When the files last changed, as far as the file system tells.
    fn stamps(&self) -> [Option<(SystemTime, u64)>; 2] {
        let stamp = |path: &Path| {
            let metadata = std::fs::metadata(path).ok()?;
            Some((metadata.modified().ok()?, metadata.len()))
        };
        [stamp(&self.cert_path), stamp(&self.key_path)]
    }

    /// The rustls settings for connections.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }
}

fn load_pair(
    provider: &CryptoProvider,
    cert_path: &Path,
    key_path: &Path,
) -> anyhow::Result<CertifiedKey> {
    let chain =
        vwed_publisher::security::read_certificates("TLS certificate (--tls-cert)", cert_path)?;
    let key = vwed_publisher::security::read_private_key("TLS key (--tls-key)", key_path)?;
    CertifiedKey::from_der(chain, key, provider).map_err(|error| {
        anyhow::anyhow!(
            "TLS key (--tls-key) {} does not fit the certificate (--tls-cert) {}: {error}",
            key_path.display(),
            cert_path.display()
        )
    })
}

/// The certificate new handshakes get, swapped whole on reload.
#[derive(Debug)]
struct CurrentCertificate(RwLock<Arc<CertifiedKey>>);

impl CurrentCertificate {
    fn get(&self) -> Arc<CertifiedKey> {
        // A writer cannot panic halfway through a swap, so a poisoned lock still holds a
        // whole certificate.
        match self.0.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace(&self, new: Arc<CertifiedKey>) {
        match self.0.write() {
            Ok(mut current) => *current = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }
}

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; the TLS files are still checked on a timer");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup_signal() -> Hangup {}

#[cfg(unix)]
async fn next_hangup(hangup: &mut Hangup) -> Option<()> {
    match hangup {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn next_hangup(_: &mut Hangup) -> Option<()> {
    std::future::pending().await
}

/// A listener for [`crate::serve::serve`] that hands over connections only once their TLS
/// handshake is done. A background task accepts TCP connections and gives each handshake a task of its
/// own with a time limit, so one silent client cannot hold up the others.
pub struct TlsListener {
    /// Connections ready to serve, from the handshake tasks.
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    /// The bound address, for `local_addr`.
    local_addr: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `tcp` with `tls`, with at most `max_pending` handshakes at a time,
    /// each given `handshake_timeout`. The accepting task ends (and the port closes) when the
    /// listener is dropped.
    pub fn new(
        tcp: TcpListener,
        tls: Arc<ServerConfig>,
        handshake_timeout: Duration,
        max_pending: usize,
        metrics: Arc<Metrics>,
    ) -> io::Result<Self> {
        let local_addr = tcp.local_addr()?;
        let (sender, ready) = mpsc::channel(READY_QUEUE);
        tokio::spawn(accept_loop(
            tcp,
            Handshakes {
                acceptor: TlsAcceptor::from(tls),
                timeout: handshake_timeout,
                pending: Arc::new(Semaphore::new(max_pending)),
                metrics,
            },
            sender,
        ));
        Ok(Self { ready, local_addr })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(ready) => ready,
            None => {
                // The accepting task only stops once this listener is gone, so this means it
                // died: there is nothing more to accept.
                tracing::error!("the TLS accept task stopped; no new connections are accepted");
                std::future::pending().await
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

/// What each handshake task needs.
struct Handshakes {
    /// Runs the handshake with the current certificate.
    acceptor: TlsAcceptor,
    /// How long a client may take.
    timeout: Duration,
    /// One permit per handshake in progress.
    pending: Arc<Semaphore>,
    /// Counts the failures.
    metrics: Arc<Metrics>,
}

async fn accept_loop(
    tcp: TcpListener,
    handshakes: Handshakes,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let accepted = tokio::select! {
            _ = ready.closed() => return,
            accepted = tcp.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: pause rather than spin, as axum does.
                tracing::warn!(%error, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Before the handshake, which is several small messages too.
        crate::serve::no_delay(&stream);
        let Ok(permit) = handshakes.pending.clone().try_acquire_owned() else {
            handshakes.metrics.tls_handshake_failures.inc();
            tracing::debug!(%peer, "too many TLS handshakes in progress: connection closed");
            continue;
        };
        let (acceptor, timeout, metrics, ready) = (
            handshakes.acceptor.clone(),
            handshakes.timeout,
            handshakes.metrics.clone(),
            ready.clone(),
        );
        tokio::spawn(async move {
            let outcome = tokio::time::timeout(timeout, acceptor.accept(stream)).await;
            drop(permit);
            match outcome {
                Ok(Ok(tls)) => {
                    // The server gone (shutting down) drops the connection, as it should.
                    let _ = ready.send((tls, peer)).await;
                }
                Ok(Err(error)) => {
                    metrics.tls_handshake_failures.inc();
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                }
                Err(_) => {
                    metrics.tls_handshake_failures.inc();
                    tracing::debug!(%peer, ?timeout, "TLS handshake timed out");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
        let path = dir.join(name);
        let _ = std::fs::write(&path, contents);
        path
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vwed-hub-tls-{}-{name}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        dir
    }

    fn error_of(result: anyhow::Result<ServerTls>) -> String {
        match result {
            Ok(_) => String::from("(loaded)"),
            Err(error) => format!("{error:#}"),
        }
    }

    #[test]
    fn a_missing_certificate_file_is_named() {
        let dir = scratch("missing");
        let key = write(&dir, "key.pem", "");
        let error = error_of(ServerTls::load(&dir.join("nope.pem"), &key));
        assert!(
            error.starts_with(&format!(
                "cannot read TLS certificate (--tls-cert) {}: ",
                dir.join("nope.pem").display()
            )),
            "{error}"
        );
    }

    #[test]
    fn a_key_file_in_place_of_the_certificate_is_named() {
        let dir = scratch("swapped");
        let key = write(
            &dir,
            "key.pem",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        );
        let error = error_of(ServerTls::load(&key, &key));
        assert_eq!(
            error,
            format!(
                "TLS certificate (--tls-cert) {}: holds no certificate (expected a PEM \"BEGIN \
                 CERTIFICATE\" section)",
                key.display()
            )
        );
    }

    #[test]
    fn a_certificate_in_place_of_the_key_is_named() {
        let dir = scratch("nokey");
        let cert = write(
            &dir,
            "cert.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        let error = error_of(ServerTls::load(&cert, &cert));
        assert!(
            error.starts_with(&format!(
                "TLS key (--tls-key) {}: holds no private key",
                cert.display()
            )),
            "{error}"
        );
    }

    #[test]
    fn garbage_that_is_no_certificate_is_refused() {
        let dir = scratch("garbage");
        let cert = write(
            &dir,
            "cert.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        let key = write(
            &dir,
            "key.pem",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        );
        let error = error_of(ServerTls::load(&cert, &key));
        assert!(error.starts_with("TLS key (--tls-key) "), "{error}");
        assert!(error.contains("does not fit the certificate"), "{error}");
    }

    /// A certificate for localhost and its key, as PEM.
    fn pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("a key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .and_then(|params| params.self_signed(&key))
            .expect("a certificate");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_valid_pair_loads_and_a_bad_renewal_keeps_it() {
        let dir = scratch("reload");
        let (cert_pem, key_pem) = pair();
        let cert = write(&dir, "tls.crt", &cert_pem);
        let key = write(&dir, "tls.key", &key_pem);
        let tls = ServerTls::load(&cert, &key).expect("a valid pair loads");
        let served = tls.current.get();

        // A new certificate without its new key: refused, the old pair stays.
        let (new_cert_pem, new_key_pem) = pair();
        write(&dir, "tls.crt", &new_cert_pem);
        let error = tls
            .reload()
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(error.contains("does not fit the certificate"), "{error}");
        assert!(Arc::ptr_eq(&tls.current.get(), &served));

        write(&dir, "tls.key", &new_key_pem);
        assert!(tls.reload().is_ok());
        let now = tls.current.get();
        assert!(!Arc::ptr_eq(&now, &served));
        assert_eq!(now.cert[0].as_ref(), served_der(&new_cert_pem).as_slice());
    }

    fn served_der(pem: &str) -> Vec<u8> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .map(|der| der.to_vec())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn handshakes_past_the_limit_are_closed_and_silent_ones_time_out() {
        use tokio::io::AsyncReadExt;
        let dir = scratch("limit");
        let (cert_pem, key_pem) = pair();
        let tls = ServerTls::load(
            &write(&dir, "tls.crt", &cert_pem),
            &write(&dir, "tls.key", &key_pem),
        )
        .expect("a valid pair loads");
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let metrics = Arc::new(Metrics::default());
        let timeout = Duration::from_millis(500);
        let listener =
            TlsListener::new(tcp, tls.config(), timeout, 2, metrics.clone()).expect("a listener");
        let addr = listener.local_addr;
        let mut silent = Vec::new();
        for _ in 0..2 {
            silent.push(TcpStream::connect(addr).await.expect("connect"));
        }
        // Let the accept loop take both before the third arrives.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut third = TcpStream::connect(addr).await.expect("connect");
        let mut byte = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_millis(300), third.read(&mut byte)).await;
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "the third connection was not closed at once: {closed:?}"
        );
        assert_eq!(metrics.tls_handshake_failures.get(), 1);
        // The silent two run out of time, are closed and counted, and free their places.
        for stream in &mut silent {
            let ended = tokio::time::timeout(timeout * 4, stream.read(&mut byte)).await;
            assert!(matches!(ended, Ok(Ok(0)) | Ok(Err(_))), "{ended:?}");
        }
        assert_eq!(metrics.tls_handshake_failures.get(), 3);
        let mut fourth = TcpStream::connect(addr).await.expect("connect");
        let open = tokio::time::timeout(Duration::from_millis(300), fourth.read(&mut byte)).await;
        assert!(
            open.is_err(),
            "a place freed by a timeout was not reused: {open:?}"
        );
        drop(listener);
    }

    #[test]
    fn one_of_the_pair_alone_is_refused_by_the_flags() {
        use clap::Parser;
        let only_cert = crate::HubConfig::try_parse_from(["vwed-hub", "--tls-cert", "c.pem"]);
        assert!(only_cert.is_err());
        let only_key = crate::HubConfig::try_parse_from(["vwed-hub", "--tls-key", "k.pem"]);
        assert!(only_key.is_err());
    }
}
