//! One benchmark WebSocket client: a VWED panel on the hub, or a NATS-over-WebSocket subscriber
//! on nats-server. Both count the stamped events of the current round and record their latency.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{bail, Context};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use vwed_hub::ws::deflate::offer::OFFER;
use vwed_hub::ws::deflate::Inflating;

use crate::stamp;
use crate::target::TargetKind;

/// What one group of clients subscribes to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamSpec {
    /// Hub endpoint path with its query, e.g. `/ws/task-execution-broadcast/bench-0`.
    pub path: String,
    /// The NATS subject nats-server's clients subscribe to for the same events.
    pub subject: String,
    /// Send `get_status` after connecting and take its answer as "subscribed" (the broadcast
    /// endpoints send nothing on connect; the answer proves the hub's NATS subscription is in
    /// place, since the hub subscribes before it asks the owner for the state).
    pub get_status: bool,
}

/// The `type` prefix of the hub messages a client counts as deliveries.
pub fn counted_prefix(counted_type: &str) -> Vec<u8> {
    format!("{{\"type\":\"{counted_type}\"").into_bytes()
}

/// Latency histograms a worker's clients record into, sharded so that clients on different
/// threads rarely wait for one another.
pub struct Latencies {
    /// Microseconds from the event's stamp to its arrival.
    shards: Vec<Mutex<Histogram<u64>>>,
}

/// Highest latency recorded, in microseconds (larger values are clamped to it).
const MAX_LATENCY_US: u64 = 600_000_000;

/// A histogram of microseconds, 3 significant figures, up to ten minutes.
pub fn new_histogram() -> Histogram<u64> {
    // Constant, valid bounds; the fallback is never taken.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

impl Latencies {
    /// Empty histograms.
    pub fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1))
                .map(|_| Mutex::new(new_histogram()))
                .collect(),
        }
    }

    fn record(&self, client: usize, micros: u64) {
        if let Ok(mut h) = self.shards[client % self.shards.len()].lock() {
            h.saturating_record(micros.clamp(1, MAX_LATENCY_US));
        }
    }

    /// All shards merged; with `reset`, they start empty again.
    pub fn merged(&self, reset: bool) -> Histogram<u64> {
        let mut all = new_histogram();
        for shard in &self.shards {
            if let Ok(mut h) = shard.lock() {
                let _ = all.add(&*h);
                if reset {
                    h.reset();
                }
            }
        }
        all
    }
}

/// What one client has seen, read by its worker.
#[derive(Default)]
pub struct ClientStat {
    /// Stamped events of the current round received.
    pub received: AtomicU64,
    /// Stamped events of an earlier round received during this one.
    pub stale: AtomicU64,
    /// Subscribed (state, `get_status` answer or `PONG` received).
    pub ready: AtomicBool,
    /// Could not connect or subscribe.
    pub failed: AtomicBool,
    /// Close code when the connection ended (1006 when it ended without one); 0 while open.
    pub closed: AtomicU16,
}

/// What every client of a worker shares.
pub struct Shared {
    /// The round whose events count now.
    pub round: AtomicU32,
    /// Latencies of this round.
    pub latencies: Latencies,
    /// Time to subscribed, in microseconds from the start of connecting.
    pub ready_times: Latencies,
    /// When connecting began.
    pub start: Instant,
    /// The hub message type counted as a delivery, as the frame's prefix.
    pub counted: Vec<u8>,
    /// Clients ready or failed so far; the worker waits for all.
    pub settled: AtomicU64,
    /// Wakes the worker when a client settles.
    pub settled_notify: tokio::sync::Notify,
}

impl Shared {
    fn on_stamped(&self, index: usize, stat: &ClientStat, payload: &[u8]) {
        let Some(found) = stamp::find(payload) else {
            return;
        };
        if found.round != self.round.load(Ordering::Acquire) {
            stat.stale.fetch_add(1, Ordering::Relaxed);
            return;
        }
        stat.received.fetch_add(1, Ordering::Relaxed);
        let latency_ns = stamp::now_ns().saturating_sub(found.sent_ns);
        self.latencies.record(index, latency_ns / 1000);
    }
}

/// Tells the worker, once, that a client is subscribed or has failed, and frees its place among
/// the handshakes in flight.
pub struct Settler {
    /// The client's place among the handshakes in flight; given back when it settles.
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Whether it has settled already.
    done: bool,
}

impl Settler {
    /// A client not settled yet, holding `permit` until it is.
    pub fn new(permit: Option<tokio::sync::OwnedSemaphorePermit>) -> Self {
        Self {
            permit,
            done: false,
        }
    }

    /// Records the outcome; later calls do nothing.
    fn settle(&mut self, shared: &Shared, stat: &ClientStat, ok: bool) {
        if self.done {
            return;
        }
        self.done = true;
        self.permit = None;
        if ok {
            stat.ready.store(true, Ordering::Release);
            shared
                .ready_times
                .record(0, shared.start.elapsed().as_micros() as u64);
        } else {
            stat.failed.store(true, Ordering::Release);
        }
        shared.settled.fetch_add(1, Ordering::AcqRel);
        shared.settled_notify.notify_one();
    }
}

/// How a client connects.
#[derive(Debug, Clone)]
pub struct Dial {
    /// Hub or nats-server.
    pub kind: TargetKind,
    /// The server's address.
    pub addr: SocketAddr,
    /// `ws://host:port` of the server.
    pub ws_base: String,
    /// Loopback source address to connect from (`127.0.0.k`), so that the count of connections
    /// is not capped by one address's ephemeral ports.
    pub source: Ipv4Addr,
    /// SO_RCVBUF to set, e.g. small for a client that will stop reading.
    pub recv_buffer: Option<u32>,
    /// Offer permessage-deflate, as browsers do.
    pub compression: bool,
}

/// A connected WebSocket, which inflates compressed messages when it negotiated compression.
pub type Ws = WebSocketStream<Inflating<TcpStream>>;

/// Opens the TCP connection from the chosen source address and does the WebSocket handshake.
pub async fn open(dial: &Dial, path: &str) -> anyhow::Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    socket
        .bind(SocketAddr::from((dial.source, 0)))
        .with_context(|| format!("binding {}", dial.source))?;
    if let Some(size) = dial.recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    let stream = socket.connect(dial.addr).await?;
    stream.set_nodelay(true)?;
    // A 4 KiB read buffer instead of tungstenite's 128 KiB: thousands of clients per process.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(64 << 20));
    let mut request = format!("{}{}", dial.ws_base, path).into_client_request()?;
    if dial.compression {
        request
            .headers_mut()
            .insert("sec-websocket-extensions", HeaderValue::from_static(OFFER));
    }
    let stream = Inflating::after_http_answer(stream);
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await?;
    Ok(ws)
}

/// Runs client `index` until its connection ends: connect, subscribe, count.
pub async fn run(
    index: usize,
    dial: Dial,
    spec: Arc<StreamSpec>,
    stat: Arc<ClientStat>,
    shared: Arc<Shared>,
    mut settler: Settler,
) {
    let path = match dial.kind {
        TargetKind::Hub => spec.path.as_str(),
        TargetKind::NatsServer => "/",
    };
    let ws = match open(&dial, path).await {
        Ok(ws) => ws,
        Err(_) => {
            settler.settle(&shared, &stat, false);
            return;
        }
    };
    let code = match dial.kind {
        TargetKind::Hub => hub_session(index, ws, &spec, &stat, &shared, &mut settler).await,
        TargetKind::NatsServer => {
            nats_session(index, ws, &spec, &stat, &shared, &mut settler).await
        }
    };
    settler.settle(&shared, &stat, false);
    stat.closed.store(code, Ordering::Release);
}

/// Prefixes of the hub's state messages (the answer that makes a client subscribed).
const STATE_PREFIXES: [&[u8]; 2] = [
    b"{\"type\":\"task_execution_update\"",
    b"{\"type\":\"storage_location_update\"",
];

/// Reads hub messages until the connection ends; returns the close code.
async fn hub_session(
    index: usize,
    mut ws: Ws,
    spec: &StreamSpec,
    stat: &ClientStat,
    shared: &Shared,
    settler: &mut Settler,
) -> u16 {
    if spec.get_status
        && ws
            .send(Message::text(r#"{"type":"get_status"}"#))
            .await
            .is_err()
    {
        settler.settle(shared, stat, false);
        return 1006;
    }
    let mut ready = false;
    while let Some(message) = ws.next().await {
        match message {
            Ok(Message::Text(text)) => {
                let bytes = text.as_bytes();
                if !ready {
                    if STATE_PREFIXES.iter().any(|p| bytes.starts_with(p)) {
                        ready = true;
                        settler.settle(shared, stat, true);
                    } else if bytes.starts_with(b"{\"type\":\"error\"") {
                        settler.settle(shared, stat, false);
                        return 1000;
                    }
                    continue;
                }
                if bytes.starts_with(&shared.counted) {
                    shared.on_stamped(index, stat, bytes);
                }
            }
            Ok(Message::Close(frame)) => {
                return frame.map(|f| u16::from(f.code)).unwrap_or(1005);
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    1006
}

/// Speaks the NATS client protocol over the WebSocket; returns a close code when it ends.
async fn nats_session(
    index: usize,
    mut ws: Ws,
    spec: &StreamSpec,
    stat: &ClientStat,
    shared: &Shared,
    settler: &mut Settler,
) -> u16 {
    let hello = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"protocol\":1}}\r\nSUB {} 1\r\nPING\r\n",
        spec.subject
    );
    if ws.send(Message::binary(hello.into_bytes())).await.is_err() {
        settler.settle(shared, stat, false);
        return 1006;
    }
    let mut ready = false;
    let mut parser = NatsParser::default();
    while let Some(message) = ws.next().await {
        let data = match message {
            Ok(Message::Binary(data)) => data,
            Ok(Message::Text(text)) => bytes::Bytes::copy_from_slice(text.as_bytes()),
            Ok(Message::Close(frame)) => {
                return frame.map(|f| u16::from(f.code)).unwrap_or(1005);
            }
            Ok(_) => continue,
            Err(_) => break,
        };
        parser.push(&data);
        let mut pings = 0;
        loop {
            match parser.next() {
                Ok(Some(NatsOp::Msg(payload))) => {
                    if ready {
                        shared.on_stamped(index, stat, &payload);
                    }
                }
                Ok(Some(NatsOp::Ping)) => pings += 1,
                Ok(Some(NatsOp::Pong)) => {
                    if !ready {
                        ready = true;
                        settler.settle(shared, stat, true);
                    }
                }
                Ok(Some(NatsOp::Other)) => {}
                Ok(None) => break,
                Err(_) => {
                    return 1002;
                }
            }
        }
        for _ in 0..pings {
            if ws.send(Message::binary(&b"PONG\r\n"[..])).await.is_err() {
                break;
            }
        }
    }
    1006
}

/// One operation of the NATS server protocol, as far as a subscriber cares.
#[derive(Debug, PartialEq, Eq)]
pub enum NatsOp {
    /// A message's payload.
    Msg(Vec<u8>),
    /// The server's keep-alive; answer `PONG`.
    Ping,
    /// The answer to our `PING`: everything sent before it has been processed.
    Pong,
    /// `INFO`, `+OK`: nothing to do.
    Other,
}

/// Splits the byte stream of NATS server operations, which may come several per WebSocket frame
/// or split across frames.
#[derive(Default)]
pub struct NatsParser {
    /// Bytes received and not yet parsed.
    buffer: Vec<u8>,
    /// Where the unparsed bytes start in `buffer`.
    start: usize,
}

impl NatsParser {
    /// Adds received bytes.
    pub fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start == self.buffer.len() {
            self.buffer.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        self.buffer.extend_from_slice(data);
    }

    /// The next complete operation, `None` when more bytes are needed.
    pub fn next(&mut self) -> anyhow::Result<Option<NatsOp>> {
        let rest = &self.buffer[self.start..];
        let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = &rest[..line_end];
        if line.starts_with(b"MSG ") {
            let fields: Vec<&[u8]> = line
                .split(|&b| b == b' ')
                .filter(|f| !f.is_empty())
                .collect();
            let size: usize = match fields.last().and_then(|f| std::str::from_utf8(f).ok()) {
                Some(size) if fields.len() == 4 || fields.len() == 5 => size.parse()?,
                _ => bail!("malformed MSG line"),
            };
            let payload_start = line_end + 2;
            if rest.len() < payload_start + size + 2 {
                return Ok(None);
            }
            let payload = rest[payload_start..payload_start + size].to_vec();
            self.start += payload_start + size + 2;
            return Ok(Some(NatsOp::Msg(payload)));
        }
        let op = if line == b"PING" {
            NatsOp::Ping
        } else if line == b"PONG" {
            NatsOp::Pong
        } else if line.starts_with(b"-ERR") {
            bail!("nats-server: {}", String::from_utf8_lossy(line))
        } else {
            NatsOp::Other
        };
        self.start += line_end + 2;
        Ok(Some(op))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(parser: &mut NatsParser) -> Vec<NatsOp> {
        let mut ops = Vec::new();
        while let Some(op) = parser.next().unwrap() {
            ops.push(op);
        }
        ops
    }

    #[test]
    fn several_messages_in_one_frame_and_one_split_across_frames() {
        let mut parser = NatsParser::default();
        parser.push(b"INFO {\"x\":1}\r\nPONG\r\nMSG a.b 1 3\r\nabc\r\nMSG a.b 1 5\r\nhel");
        assert_eq!(
            drain(&mut parser),
            vec![NatsOp::Other, NatsOp::Pong, NatsOp::Msg(b"abc".to_vec())]
        );
        parser.push(b"lo\r\nPI");
        assert_eq!(drain(&mut parser), vec![NatsOp::Msg(b"hello".to_vec())]);
        parser.push(b"NG\r\nMSG a.b 1 reply.to 2\r\n\r\n\r\n");
        assert_eq!(
            drain(&mut parser),
            vec![NatsOp::Ping, NatsOp::Msg(b"\r\n".to_vec())]
        );
    }

    #[test]
    fn errors_and_malformed_lines_are_errors() {
        let mut parser = NatsParser::default();
        parser.push(b"-ERR 'Authorization Violation'\r\n");
        assert!(parser.next().is_err());
        let mut parser = NatsParser::default();
        parser.push(b"MSG a.b x\r\n");
        assert!(parser.next().is_err());
    }
}
