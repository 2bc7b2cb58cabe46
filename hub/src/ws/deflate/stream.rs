//! The client's byte stream with [`Inbound`] between it and tungstenite.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::inbound::Inbound;

/// A connection's socket as tungstenite reads and writes it. Writes go straight through (the
/// hub compresses whole messages before tungstenite frames them); reads go through
/// [`Inbound`] when the connection negotiated compression, and straight through otherwise.
pub struct Inflating<S> {
    /// The client's socket.
    inner: S,
    /// The inflating of compressed client frames; `None` when compression was not negotiated,
    /// so that tungstenite fails any frame with RSV1 (1002), as without the extension. Boxed:
    /// only connections that negotiated carry its size.
    inbound: Option<Box<Inbound>>,
}

impl<S> Inflating<S> {
    /// `inner`, with compressed client frames of at most `limit` bytes (and messages that
    /// inflate to at most that) inflated when `negotiated`.
    pub fn new(inner: S, negotiated: bool, limit: usize) -> Self {
        Self {
            inner,
            inbound: negotiated.then(|| Box::new(Inbound::new(limit))),
        }
    }

    /// Whether this connection negotiated permessage-deflate.
    pub fn negotiated(&self) -> bool {
        self.inbound.is_some()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Inflating<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let Self { inner, inbound } = self.get_mut();
        let Some(inbound) = inbound else {
            return Pin::new(inner).poll_read(cx, buf);
        };
        loop {
            if inbound.has_output() {
                buf.put_slice(&inbound.take(buf.remaining()));
                return Poll::Ready(Ok(()));
            }
            if let Some(fault) = inbound.fault() {
                // tungstenite hands this back as its I/O error; the connection finds the fault
                // in it and closes with the fault's code.
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, fault)));
            }
            let mut chunk = [0_u8; 4096];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut *inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // The client's side ended; whatever half frame is left, tungstenite sees none.
                return Poll::Ready(Ok(()));
            }
            inbound.push(read.filled());
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Inflating<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
