//! Serving HTTP/1 (and the WebSocket upgrades that ride on it) with hyper directly, rather than
//! with `axum::serve`, which gives hyper no timer: without one, hyper's header-read timeout is
//! off, and a client that opens a socket and sends half a request head, or nothing, or keeps an
//! idle keep-alive connection, holds that socket and its file descriptor for ever (slowloris).
//! Such connections are not WebSocket connections yet, so `--max-connections` does not count
//! them.

use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use axum::extract::connect_info::IntoMakeServiceWithConnectInfo;
use axum::serve::Listener;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

/// How HTTP connections are served.
#[derive(Debug, Clone, Copy)]
pub struct HttpSettings {
    /// How long a client may take to send a whole request head, counted from when the hub
    /// starts waiting for it: on a new connection, and again after each response on a
    /// keep-alive one, so that it also bounds how long an idle connection stays open.
    pub header_read_timeout: Duration,
}

/// Accepts connections from `listener` until `stop`, serving each with `app` in a task that
/// `open` tracks; returns (and so drops `listener`, closing the port) as soon as `stop` is
/// cancelled. Each connection, told of `stop`, finishes the request in hand and closes; the
/// caller waits on `open` for that, within its own limit.
///
/// The listener is axum's accept abstraction (the plain TCP listener, which pauses on accept
/// errors such as running out of file descriptors, or [`crate::tls::TlsListener`]); it should
/// have set `TCP_NODELAY` on each socket.
pub async fn serve<L>(
    mut listener: L,
    app: Router,
    settings: HttpSettings,
    stop: CancellationToken,
    open: TaskTracker,
) where
    L: Listener<Addr = SocketAddr>,
{
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        // Keep-alive stays on, for the page's assets and probes; the header-read timeout above
        // closes a connection idle that long between requests.
        .keep_alive(true);
    let mut make_service: IntoMakeServiceWithConnectInfo<Router, SocketAddr> =
        app.into_make_service_with_connect_info::<SocketAddr>();
    loop {
        let (io, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        // Gives handlers `ConnectInfo<SocketAddr>`, the peer as the listener saw it. The make
        // service is always ready and cannot fail (its error type is `Infallible`).
        let service = match make_service.call(peer).await {
            Ok(service) => service,
            Err(never) => match never {},
        };
        let connection = http
            .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
            .with_upgrades();
        let stop = stop.clone();
        open.spawn(async move {
            let mut connection = pin!(connection);
            let outcome = tokio::select! {
                outcome = connection.as_mut() => outcome,
                _ = stop.cancelled() => {
                    // Lets the request in hand finish and closes the connection after it; a
                    // head still arriving has the header-read timeout, and the caller's drain
                    // limit bounds the rest. An upgraded connection has already left hyper.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = outcome {
                // Header-read timeouts, resets and malformed requests: the client's doing, and
                // hyper has already answered what deserved an answer.
                tracing::debug!(%peer, %error, "HTTP connection ended");
            }
        });
    }
}

/// Sets `TCP_NODELAY` on an accepted socket: the hub's messages are small and latency matters,
/// so they must not wait for Nagle's algorithm to gather more.
pub fn no_delay(stream: &tokio::net::TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        // The connection still works, only a little slower.
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
}
