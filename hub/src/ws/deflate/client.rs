//! The client's side of permessage-deflate, for Rust clients of the hub built on tungstenite
//! (the end-to-end tests and the load generator), which knows no extensions.
//!
//! A client that offered the extension reads the hub's bytes through [`AfterHandshake`]: the
//! HTTP answer goes through untouched, and every frame after it, if the answer agreed, through
//! the same [`Inbound`] the hub uses for its clients' frames, which turns a compressed message
//! into the same message uncompressed. (tungstenite reads past the answer while it reads the
//! answer, so the stream itself must tell the two apart.) Independent clients check the hub
//! too: Python `websockets` in the Python suites, Chromium in the page test.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use super::inbound::Inbound;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a client offers in `Sec-WebSocket-Extensions`: Chromium's offer, which Python
/// `websockets` and Node `ws` make too.
pub const OFFER: &str = "permessage-deflate; client_max_window_bits";

/// The largest message a client inflates: far above any scene's state, and finite, so that a
/// server gone wrong cannot make it allocate without bound.
const CLIENT_LIMIT: usize = 256 << 20;

/// A client's socket that inflates the server's compressed frames once the HTTP answer is read.
pub struct AfterHandshake<S> {
    /// The connection to the hub.
    inner: S,
    /// The answer's bytes so far, until its blank line; `None` once it is through.
    head: Option<Vec<u8>>,
    /// The inflating of frames, once the answer agreed to compression.
    inbound: Option<Inbound>,
}

impl<S> AfterHandshake<S> {
    /// `inner`, before the client writes its handshake.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            head: Some(Vec::new()),
            inbound: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AfterHandshake<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.head.is_none() && this.inbound.is_none() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        loop {
            if let Some(inbound) = &mut this.inbound {
                if inbound.has_output() {
                    buf.put_slice(&inbound.take(buf.remaining()));
                    return Poll::Ready(Ok(()));
                }
                if let Some(fault) = inbound.fault() {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, fault)));
                }
            }
            let mut chunk = [0_u8; 16 * 1024];
            // Bytes that go through untouched must fit the caller's buffer.
            let room = match this.inbound {
                Some(_) => chunk.len(),
                None => chunk.len().min(buf.remaining()),
            };
            let mut read = ReadBuf::new(&mut chunk[..room]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            let mut bytes = read.filled();
            if bytes.is_empty() {
                return Poll::Ready(Ok(()));
            }
            if let Some(head) = &mut this.head {
                // Byte by byte, to stop exactly at the blank line.
                let through = bytes
                    .iter()
                    .take_while(|&&byte| {
                        let done = head.ends_with(b"\r\n\r\n");
                        if !done {
                            head.push(byte);
                        }
                        !done
                    })
                    .count();
                buf.put_slice(&bytes[..through]);
                bytes = &bytes[through..];
                if head.ends_with(b"\r\n\r\n") {
                    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
                    if text.contains("sec-websocket-extensions: permessage-deflate") {
                        this.inbound = Some(Inbound::keeping_inflater(CLIENT_LIMIT));
                    }
                    this.head = None;
                }
            }
            match &mut this.inbound {
                Some(inbound) => inbound.push(bytes),
                None => buf.put_slice(bytes),
            }
            if buf.filled().len() == before {
                continue;
            }
            return Poll::Ready(Ok(()));
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AfterHandshake<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
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
        AfterHandshake::new(bytes.as_slice())
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
