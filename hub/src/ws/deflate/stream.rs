//! A WebSocket's byte stream with [`Inbound`] between it and tungstenite: on the hub, for the
//! frames its clients send; in a Rust client of the hub (the end-to-end tests, the load
//! generator), for the frames the hub sends, once its HTTP answer has agreed to compression.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::inbound::Inbound;

/// The largest message a client inflates: far above any scene's state, and finite, so that a
/// server gone wrong cannot make it allocate without bound.
const CLIENT_LIMIT: usize = 256 << 20;

/// A connection's socket as tungstenite reads and writes it. Writes go straight through (the
/// hub compresses whole messages before tungstenite frames them); reads go through
/// [`Inbound`] when the connection negotiated compression, and straight through otherwise.
pub struct Inflating<S> {
    /// The socket.
    inner: S,
    /// The inflating of compressed frames; `None` when compression was not negotiated, so that
    /// tungstenite fails any frame with RSV1 (1002), as without the extension. Boxed: only
    /// connections that negotiated carry its size.
    inbound: Option<Box<Inbound>>,
    /// A client's only: the server's HTTP answer as read so far, up to its blank line. It goes
    /// through untouched, and decides whether the frames after it are inflated. (tungstenite
    /// reads past the answer while it reads the answer, so the stream must tell the two apart.)
    /// Boxed so that the hub's connections, which never have one, carry 8 bytes for it, not 24.
    #[allow(clippy::box_collection)]
    answer: Option<Box<Vec<u8>>>,
}

impl<S> Inflating<S> {
    /// The hub's side: `inner`, with compressed client frames of at most `limit` bytes (and
    /// messages that inflate to at most that) inflated when `negotiated`.
    pub fn new(inner: S, negotiated: bool, limit: usize) -> Self {
        Self {
            inner,
            inbound: negotiated.then(|| Box::new(Inbound::new(limit))),
            answer: None,
        }
    }

    /// A client's side, before it writes its opening handshake (offering
    /// [`super::offer::OFFER`] or not): the server's answer goes through untouched, and the
    /// frames after it are inflated if it agreed to permessage-deflate.
    pub fn after_http_answer(inner: S) -> Self {
        Self {
            inner,
            inbound: None,
            answer: Some(Box::default()),
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
        let Self {
            inner,
            inbound,
            answer,
        } = self.get_mut();
        if inbound.is_none() && answer.is_none() {
            return Pin::new(inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        loop {
            if let Some(inbound) = inbound {
                if inbound.has_output() {
                    buf.put_slice(&inbound.take(buf.remaining()));
                    return Poll::Ready(Ok(()));
                }
                if let Some(fault) = inbound.fault() {
                    // tungstenite hands this back as its I/O error; the hub finds the fault in
                    // it and closes with the fault's code.
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, fault)));
                }
            }
            let mut chunk = [0_u8; 4096];
            // Bytes that go through untouched must fit the caller's buffer.
            let room = match inbound {
                Some(_) => chunk.len(),
                None => chunk.len().min(buf.remaining()),
            };
            let mut read = ReadBuf::new(&mut chunk[..room]);
            ready!(Pin::new(&mut *inner).poll_read(cx, &mut read))?;
            let mut bytes = read.filled();
            if bytes.is_empty() {
                // The other side ended; whatever half frame is left, tungstenite sees none.
                return Poll::Ready(Ok(()));
            }
            if let Some(head) = answer {
                // Byte by byte, to stop exactly at the blank line.
                let through = bytes
                    .iter()
                    .take_while(|&&byte| {
                        let whole = head.ends_with(b"\r\n\r\n");
                        if !whole {
                            head.push(byte);
                        }
                        !whole
                    })
                    .count();
                buf.put_slice(&bytes[..through]);
                bytes = &bytes[through..];
                if head.ends_with(b"\r\n\r\n") {
                    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
                    if text.contains("sec-websocket-extensions: permessage-deflate") {
                        *inbound = Some(Box::new(Inbound::keeping_inflater(CLIENT_LIMIT)));
                    }
                    *answer = None;
                }
            }
            match inbound {
                Some(inbound) => inbound.push(bytes),
                None => buf.put_slice(bytes),
            }
            if buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
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

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

    use super::*;

    const AGREED: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Extensions: \
        permessage-deflate; server_no_context_takeover\r\n\r\n";

    /// A server's frame (unmasked) of `payload`.
    fn frame(rsv1: bool, payload: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        let header = FrameHeader {
            rsv1,
            opcode: OpCode::Data(Data::Text),
            ..FrameHeader::default()
        };
        header
            .format(payload.len() as u64, &mut bytes)
            .expect("format");
        bytes.extend_from_slice(payload);
        bytes
    }

    async fn read_all(bytes: Vec<u8>) -> Vec<u8> {
        let mut read = Vec::new();
        Inflating::after_http_answer(bytes.as_slice())
            .read_to_end(&mut read)
            .await
            .expect("read");
        read
    }

    #[tokio::test]
    async fn the_answer_goes_through_and_a_compressed_frame_behind_it_comes_out_plain() {
        let text = "{\"type\":\"storage_location_update\"}".repeat(20);
        let deflated = crate::ws::deflate::deflate(text.as_bytes(), 6).expect("shrinks");
        let wire = [AGREED, &frame(true, &deflated)].concat();
        assert_eq!(
            read_all(wire).await,
            [AGREED, &frame(false, text.as_bytes())].concat()
        );
    }

    #[tokio::test]
    async fn without_agreement_every_byte_goes_through() {
        let answer = b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec();
        let wire = [&answer[..], &frame(true, b"not deflate")].concat();
        assert_eq!(read_all(wire.clone()).await, wire);
    }
}
