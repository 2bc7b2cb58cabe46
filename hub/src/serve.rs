//! Serving HTTP/1 (and the WebSocket upgrades that ride on it) with hyper directly, rather than
//! with `axum::serve`, which gives hyper no timer: without one, hyper's header-read timeout is
//! off, and a client that opens a socket and sends half a request head, or nothing, or keeps an
//! idle keep-alive connection, holds that socket and its file descriptor for ever (slowloris).
//! Such connections are not WebSocket connections yet, so `--max-connections` does not count
//! them.
//!
//! Nor does hyper bound a response's write: a client that sends requests and never reads the
//! answers (pipelined, or one large enough to fill the socket's buffers) would hold the
//! connection for ever. Every accepted socket is therefore [`StallLimited`]: a write that makes
//! no progress for the limit fails, and the connection ends.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::IntoMakeServiceWithConnectInfo;
use axum::serve::Listener;
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
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
    /// How long a write to a client's socket may make no progress before the connection ends:
    /// an HTTP response the client does not read. Beneath a WebSocket it is a backstop only,
    /// longer than the connection's own write timeout, which acts first.
    pub write_stall_limit: Duration,
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
        let io = StallLimited::new(io, settings.write_stall_limit);
        let http_done = io.retirement();
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
            // Closed, or upgraded: a WebSocket's writes have a timeout of their own, and a
            // timer per full socket would slow a busy fan-out.
            http_done.store(true, Ordering::Relaxed);
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

/// A socket whose writes may not stall while it serves HTTP: a write (or flush, or shutdown)
/// that stays pending for `limit` fails with [`io::ErrorKind::TimedOut`]. Reads are untouched
/// (the header-read timeout and WebSocket pings bound them). Once retired (the connection was
/// upgraded), writes pass through untimed: the WebSocket times its writes itself, and a timer
/// armed each time a busy WebSocket's socket fills would be work for nothing.
pub struct StallLimited<S> {
    /// The socket.
    inner: S,
    /// How long a write may make no progress.
    limit: Duration,
    /// Armed when a write finds the socket full, dropped as soon as one makes progress. Boxed,
    /// so that a connection that is not stalled pays for a pointer, not for a timer.
    stalled: Option<Pin<Box<Sleep>>>,
    /// Set by whoever serves HTTP on it once that is over (see [`retirement`](Self::retirement)).
    retired: Arc<AtomicBool>,
}

impl<S> StallLimited<S> {
    /// `inner`, whose writes may stall at most `limit`.
    pub fn new(inner: S, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            stalled: None,
            retired: Arc::default(),
        }
    }

    /// Setting the flag this returns stops the timing of writes, for good.
    pub fn retirement(&self) -> Arc<AtomicBool> {
        self.retired.clone()
    }

    /// What a write operation that returned `poll` means: progress disarms the timer; pending
    /// arms it (once per stall) and fails when it has run out.
    fn watch<T>(&mut self, poll: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if poll.is_ready() || self.retired.load(Ordering::Relaxed) {
            self.stalled = None;
            return poll;
        }
        let limit = self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {limit:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for StallLimited<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for StallLimited<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(poll, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(poll, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(poll, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(poll, cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    /// A write into a pipe nobody reads fails once it has stalled for the limit; while the
    /// reader keeps up, writes go on however long they take in all.
    #[tokio::test(start_paused = true)]
    async fn a_write_that_stalls_past_the_limit_fails_and_one_that_progresses_does_not() {
        let (writer, mut reader) = tokio::io::duplex(1024);
        let mut limited = StallLimited::new(writer, Duration::from_secs(5));
        let chunk = [7u8; 1024];
        for _ in 0..20 {
            // Each chunk fills the pipe; the reader drains it 4 s later, within the limit.
            let drain = async {
                tokio::time::sleep(Duration::from_secs(4)).await;
                let mut sink = [0u8; 1024];
                tokio::io::AsyncReadExt::read_exact(&mut reader, &mut sink).await
            };
            let (written, drained) = tokio::join!(limited.write_all(&chunk), drain);
            written.expect("progress within the limit");
            drained.expect("read");
        }
        limited.write_all(&chunk).await.expect("the pipe has room");
        let started = tokio::time::Instant::now();
        let error = limited.write_all(&chunk).await.expect_err("nobody reads");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(5));

        // Retired, a stalled write just waits (whoever uses the socket now times it).
        let (writer, _reader) = tokio::io::duplex(1024);
        let mut retired = StallLimited::new(writer, Duration::from_secs(5));
        retired.retirement().store(true, Ordering::Relaxed);
        retired.write_all(&chunk).await.expect("the pipe has room");
        let waited = tokio::time::timeout(Duration::from_secs(60), retired.write_all(&chunk)).await;
        assert!(waited.is_err(), "still pending after a minute, no error");
    }
}
