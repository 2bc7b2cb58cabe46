//! Hostile input, shown harmless: one table of what a client may throw at the hub (odd ids,
//! bad parameters, broken JSON, oversized and malformed frames, floods, broken handshakes,
//! stalled sockets, slow and silent HTTP clients) and exactly what the hub answers each with.
//! After every row a canary client, connected before the table starts, must still receive a
//! freshly published event, and the hub must hold no connection but the canary's.
//!
//! Rows talk to the hub byte by byte over raw TCP ([`RawSocket`]), so they can send what no
//! WebSocket library would: invalid UTF-8 in the request line, unmasked or half frames, a
//! handshake without its key. Some of these cases are also tested on their own in
//! `protocol.rs`; this table is the one place that lists them all.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use vwed_e2e::{
    http_get, location, tokens, BrokerKind, Client, Owner, Received, TestBroker, TestHub, PATIENCE,
};
use vwed_hub::ws::deflate::offer::OFFER;
use vwed_hub::ws::Endpoint;
use vwed_publisher::{TaskResult, TaskStatus};

/// The hub's Ping period in this test: short, so that a stalled client is dropped (after three
/// silent periods) within seconds.
const PING_INTERVAL: Duration = Duration::from_secs(1);

/// The hub's HTTP header-read timeout in this test: short, so that a slow or silent client, or
/// an idle keep-alive, is disconnected within seconds.
const HEADER_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a row's client listens to be sure nothing more comes.
const QUIET: Duration = Duration::from_millis(150);

/// The canary's key: a task nobody else watches.
const CANARY: &str = "canary";

/// WebSocket opcodes a row may put in a frame.
mod op {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const RESERVED: u8 = 0x3;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
}

/// One hostile input and exactly what the hub must do with it.
struct Row {
    /// What the row shows, named in every failure.
    name: String,
    /// The request method.
    method: &'static str,
    /// The request target's path, as raw bytes (it may hold invalid UTF-8).
    path: Vec<u8>,
    /// Query parameters, written `name=value` joined by `&`, exactly as given (no encoding):
    /// a row about a token passed in the query (`access_token=...`) adds one here.
    query: Vec<(String, String)>,
    /// Headers on top of the handshake's own; a name given here replaces the default of the
    /// same name, and `None` removes it. Rows about `Authorization` headers add them here.
    headers: Vec<(String, Option<Vec<u8>>)>,
    /// Bytes sent instead of a request built from the fields above.
    raw_request: Option<Vec<u8>>,
    /// When set, the request is written a byte at a time with this pause after each, as a
    /// slowloris client writes it.
    trickle: Option<Duration>,
    /// What the hub must answer.
    expect: Expect,
}

/// What the hub answers a row's request with.
enum Expect {
    /// No upgrade: this HTTP status, with a body that holds this text.
    Http(u16, &'static str),
    /// The upgrade succeeds; then each step in order.
    Upgraded(Vec<Step>),
    /// The hub sends nothing but `answer` (the start of its response, if any), and hangs up
    /// no sooner than `after` (a slow client gets its time) and no later than `within`, both
    /// counted from the connection.
    HungUp {
        answer: Option<&'static str>,
        after: Duration,
        within: Duration,
    },
}

/// One step of a row after the upgrade: something to send, or something the hub must send.
enum Step {
    /// Write these bytes (whole frames, or less) and carry on.
    Send(Vec<u8>),
    /// Write these bytes from another task, reading meanwhile: for frames so large the hub
    /// hangs up before it has read them.
    SendWhileReading(Vec<u8>),
    /// One `error` message about `id`, with exactly this text.
    Error { id: String, message: String },
    /// A state message (`*_update`) about the row's key.
    State,
    /// The text `pong`.
    TextPong,
    /// Any number of text `pong`s up to this many (answers to a flood), then something else.
    Pongs(usize),
    /// A close frame with this code.
    Close(u16),
    /// The TCP connection ends without a close frame, within this long.
    Dropped(Duration),
    /// Nothing for a moment, then the connection is still served: a text `ping` gets `pong`.
    /// The client stays open until the canary's event has gone out and must not hear of it.
    Open,
}

impl Row {
    /// A WebSocket handshake to `path` (percent-encoded as the row wants it).
    fn ws(name: impl Into<String>, path: impl AsRef<[u8]>) -> Self {
        Self {
            name: name.into(),
            method: "GET",
            path: path.as_ref().to_vec(),
            query: Vec::new(),
            headers: Vec::new(),
            raw_request: None,
            trickle: None,
            expect: Expect::Upgraded(Vec::new()),
        }
    }

    /// Bytes written to the socket as they are, instead of a handshake.
    fn raw(name: impl Into<String>, bytes: impl AsRef<[u8]>) -> Self {
        Self {
            raw_request: Some(bytes.as_ref().to_vec()),
            ..Self::ws(name, "/")
        }
    }

    fn query(mut self, name: &str, value: impl Into<String>) -> Self {
        self.query.push((name.to_owned(), value.into()));
        self
    }

    fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_owned(), Some(value.as_ref().to_vec())));
        self
    }

    fn without(mut self, name: &str) -> Self {
        self.headers.push((name.to_owned(), None));
        self
    }

    fn method(mut self, method: &'static str) -> Self {
        self.method = method;
        self
    }

    fn http(mut self, status: u16, body: &'static str) -> Self {
        self.expect = Expect::Http(status, body);
        self
    }

    fn then(mut self, steps: Vec<Step>) -> Self {
        self.expect = Expect::Upgraded(steps);
        self
    }

    fn trickle(mut self, pause: Duration) -> Self {
        self.trickle = Some(pause);
        self
    }

    /// The hub hangs up on the row's client once the header-read timeout has passed, after
    /// sending `answer` (the start of a response) or nothing.
    fn hung_up_on_timeout(mut self, answer: Option<&'static str>) -> Self {
        self.expect = Expect::HungUp {
            answer,
            // The hub starts its clock a moment after the client's.
            after: HEADER_TIMEOUT * 3 / 4,
            within: HEADER_TIMEOUT + PATIENCE,
        };
        self
    }

    /// The request's bytes.
    fn request(&self) -> Vec<u8> {
        if let Some(raw) = &self.raw_request {
            return raw.clone();
        }
        let mut request = Vec::new();
        request.extend_from_slice(self.method.as_bytes());
        request.push(b' ');
        request.extend_from_slice(&self.path);
        if !self.query.is_empty() {
            request.push(b'?');
            let query: Vec<String> = self.query.iter().map(|(n, v)| format!("{n}={v}")).collect();
            request.extend_from_slice(query.join("&").as_bytes());
        }
        request.extend_from_slice(b" HTTP/1.1\r\n");
        let mut headers: Vec<(String, Option<Vec<u8>>)> = [
            ("Host", "hostile.test"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), Some(value.as_bytes().to_vec())))
        .collect();
        for (name, value) in &self.headers {
            match headers
                .iter_mut()
                .find(|(known, _)| known.eq_ignore_ascii_case(name))
            {
                Some(known) => known.1 = value.clone(),
                None => headers.push((name.clone(), value.clone())),
            }
        }
        for (name, value) in headers {
            let Some(value) = value else { continue };
            request.extend_from_slice(name.as_bytes());
            request.extend_from_slice(b": ");
            request.extend_from_slice(&value);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"\r\n");
        request
    }

    /// The `error` field that names the key on this row's endpoint.
    fn id_field(&self) -> &'static str {
        if self.path.starts_with(b"/ws/storage-location") {
            Endpoint::SceneRealtime.kind().id_field()
        } else {
            Endpoint::TaskRealtime.kind().id_field()
        }
    }
}

/// A client frame: final, masked (as every client frame must be), with `opcode`.
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame_with(0x80 | opcode, true, payload)
}

/// A text frame.
fn text(payload: impl AsRef<[u8]>) -> Vec<u8> {
    frame(op::TEXT, payload.as_ref())
}

/// A frame with the first byte (FIN, RSV bits, opcode) as given, masked or not.
fn frame_with(first: u8, masked: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x5a, 0x17, 0xc3, 0x08];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// `payload` as a client compresses a message (RFC 7692 section 7.2.1): raw deflate,
/// sync-flushed, without the final 4 bytes.
fn deflated(payload: &[u8]) -> Vec<u8> {
    use flate2::{Compress, Compression, FlushCompress};
    let mut compress = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(payload.len() + 64);
    compress
        .compress_vec(payload, &mut out, FlushCompress::Sync)
        .expect("deflate");
    assert_eq!(out.split_off(out.len() - 4), [0, 0, 0xff, 0xff]);
    out
}

/// A close frame from the client.
fn close_frame(code: u16) -> Vec<u8> {
    frame(op::CLOSE, &code.to_be_bytes())
}

/// A WebSocket client that writes bytes as it is told and reads the hub's frames itself.
struct RawSocket {
    /// The hub's side of the conversation.
    read: OwnedReadHalf,
    /// Taken when a row writes from another task.
    write: Option<OwnedWriteHalf>,
    /// Bytes read but not yet parsed.
    buffer: Vec<u8>,
    /// A message read ahead and given back.
    pushed_back: Option<Received>,
}

/// The head of an HTTP response, and what followed it.
struct Response {
    status: u16,
    body: String,
}

impl RawSocket {
    /// Sends `request` and reads the response head; the socket, if the hub switched protocols.
    async fn open(
        addr: std::net::SocketAddr,
        request: &[u8],
        wait: Duration,
    ) -> (Option<RawSocket>, Option<Response>) {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (read, mut write) = stream.into_split();
        // The hub may refuse before reading all of a huge request.
        let _ = write.write_all(request).await;
        let mut socket = RawSocket {
            read,
            write: Some(write),
            buffer: Vec::new(),
            pushed_back: None,
        };
        let Some(head_end) = socket.read_until_head(wait).await else {
            return (None, None);
        };
        let head = String::from_utf8_lossy(&socket.buffer[..head_end]).into_owned();
        socket.buffer.drain(..head_end + 4);
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if status == 101 {
            return (Some(socket), Some(Response { status, body: head }));
        }
        let length = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        });
        socket.read_body(length).await;
        let body = String::from_utf8_lossy(&socket.buffer).into_owned();
        (None, Some(Response { status, body }))
    }

    /// Reads until the end of a response head; where it ends, or `None` if the hub hung up or
    /// said nothing.
    async fn read_until_head(&mut self, wait: Duration) -> Option<usize> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(at) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                return Some(at);
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.read.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buffer.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    async fn read_body(&mut self, length: Option<usize>) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while length.is_none_or(|length| self.buffer.len() < length) {
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.read.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buffer.extend_from_slice(&chunk[..n]),
                _ => break,
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        let write = self.write.as_mut().expect("the write half is here");
        write.write_all(bytes).await.expect("write to the hub");
    }

    /// Writes from another task; errors are expected (the hub may hang up first).
    fn send_while_reading(&mut self, bytes: Vec<u8>) {
        let mut write = self.write.take().expect("the write half is here");
        tokio::spawn(async move {
            let _ = write.write_all(&bytes).await;
            // Keeps the write half (and so the socket) open until the hub hangs up.
            tokio::time::sleep(PATIENCE).await;
        });
    }

    /// The hub's next message within `wait` (Ping and Pong frames skipped), `None` if none.
    async fn next_within(&mut self, wait: Duration) -> Option<Received> {
        if let Some(received) = self.pushed_back.take() {
            return Some(received);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.parse_frame() {
                Some((op::PING | 0xA, _)) => continue,
                Some((op::TEXT, payload)) => {
                    let text = String::from_utf8_lossy(&payload).into_owned();
                    return Some(match serde_json::from_str(&text) {
                        Ok(value) => Received::Json(value),
                        Err(_) => Received::Text(text),
                    });
                }
                Some((op::BINARY, payload)) => return Some(Received::Binary(payload)),
                Some((op::CLOSE, payload)) => {
                    return Some(Received::Close((payload.len() >= 2).then(|| {
                        (
                            u16::from_be_bytes([payload[0], payload[1]]),
                            String::from_utf8_lossy(&payload[2..]).into_owned(),
                        )
                    })))
                }
                Some((opcode, _)) => panic!("the hub sent a frame with opcode {opcode}"),
                None => {}
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.read.read(&mut chunk)).await {
                Err(_) => return None,
                Ok(Ok(n)) if n > 0 => self.buffer.extend_from_slice(&chunk[..n]),
                Ok(_) => return Some(Received::Ended),
            }
        }
    }

    /// One whole frame from the buffer (the hub sends unmasked, unfragmented frames).
    fn parse_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        let buffer = &self.buffer;
        if buffer.len() < 2 {
            return None;
        }
        let opcode = buffer[0] & 0x0f;
        let (length, start) = match buffer[1] & 0x7f {
            126 if buffer.len() >= 4 => {
                (usize::from(u16::from_be_bytes([buffer[2], buffer[3]])), 4)
            }
            127 if buffer.len() >= 10 => {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&buffer[2..10]);
                (usize::try_from(u64::from_be_bytes(bytes)).ok()?, 10)
            }
            126 | 127 => return None,
            n => (usize::from(n), 2),
        };
        if buffer.len() < start + length {
            return None;
        }
        let payload = buffer[start..start + length].to_vec();
        self.buffer.drain(..start + length);
        Some((opcode, payload))
    }

    async fn next(&mut self, row: &str) -> Received {
        match self.next_within(PATIENCE).await {
            Some(received) => received,
            None => panic!("{row}: no message within {PATIENCE:?}"),
        }
    }
}

/// The canary: a broadcast client, read all the time by a task of its own (so it answers the
/// hub's Pings however long a row takes), whose messages arrive here.
struct Canary {
    /// What the canary client received, in order.
    received: mpsc::UnboundedReceiver<Received>,
    /// Publishes the canary's events.
    published: usize,
}

impl Canary {
    async fn start(hub: &TestHub, query: &str) -> Self {
        let mut client = Client::connect(
            hub,
            &format!("/ws/task-execution-broadcast/{CANARY}{query}"),
        )
        .await;
        // The answer to a `get_status` comes once the topic holds the owner's state, so every
        // event published from here on reaches the canary.
        client.send_text(r#"{"type":"get_status"}"#).await;
        client.next_of_type("task_execution_update").await;
        let (sender, received) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let Some(message) = client.next_within(Duration::from_secs(3600)).await else {
                    continue;
                };
                let ended = matches!(message, Received::Close(_) | Received::Ended);
                if sender.send(message).is_err() || ended {
                    return;
                }
            }
        });
        Self {
            received,
            published: 0,
        }
    }

    /// Publishes a fresh event for the canary's task and checks the canary receives exactly it.
    async fn still_hears(&mut self, owner: &Owner, after: &str) {
        self.published += 1;
        let context = format!("[canary] {} after {after}", self.published);
        owner.append(CANARY, &context, TaskStatus::Running).await;
        let message = tokio::time::timeout(PATIENCE, self.received.recv())
            .await
            .unwrap_or_else(|_| panic!("after {after}: the canary heard nothing"));
        match message {
            Some(Received::Json(event)) => {
                assert_eq!(
                    event["type"], "task_execution_update",
                    "after {after}: {event}"
                );
                assert_eq!(event["task_record_id"], CANARY, "after {after}: {event}");
                assert_eq!(
                    event["data"][0]["context"], context,
                    "after {after}: {event}"
                );
            }
            other => panic!("after {after}: the canary got {other:?}"),
        }
    }
}

/// Connections the hub holds open, over all endpoints.
async fn open_connections(hub: &TestHub) -> f64 {
    let mut total = 0.0;
    for endpoint in Endpoint::ALL {
        total += hub
            .metric(&format!(
                "vwed_hub_connections{{endpoint=\"{}\"}}",
                endpoint.segment()
            ))
            .await;
    }
    total
}

/// Runs one row; returns a client the row left open, to be checked once the canary's event is
/// out.
async fn run(hub: &TestHub, row: &Row) -> Option<RawSocket> {
    let name = &row.name;
    if let Expect::HungUp {
        answer,
        after,
        within,
    } = row.expect
    {
        hung_up(hub, row, answer, after, within).await;
        return None;
    }
    let (socket, response) = RawSocket::open(hub.addr(), &row.request(), PATIENCE).await;
    match &row.expect {
        Expect::Http(status, body) => {
            let response = response.unwrap_or_else(|| panic!("{name}: no response"));
            assert_eq!(response.status, *status, "{name}: {}", response.body);
            assert!(
                response.body.contains(body),
                "{name}: body {:?} lacks {body:?}",
                response.body
            );
            None
        }
        Expect::HungUp { .. } => None,
        Expect::Upgraded(steps) => {
            let Some(mut socket) = socket else {
                let response = response.map(|r| (r.status, r.body));
                panic!("{name}: no upgrade: {response:?}");
            };
            let mut open = false;
            for step in steps {
                open = false;
                match step {
                    Step::Send(bytes) => socket.send(bytes).await,
                    Step::SendWhileReading(bytes) => socket.send_while_reading(bytes.clone()),
                    Step::Error { id, message } => {
                        let error = match socket.next(name).await {
                            Received::Json(error) => error,
                            other => panic!("{name}: expected an error, got {other:?}"),
                        };
                        assert_eq!(error["type"], "error", "{name}: {error}");
                        assert_eq!(error[row.id_field()], id.as_str(), "{name}: {error}");
                        assert_eq!(error["message"], message.as_str(), "{name}: {error}");
                        assert_eq!(
                            error.as_object().map(|o| o.len()),
                            Some(4),
                            "{name}: {error}"
                        );
                    }
                    Step::State => match socket.next(name).await {
                        Received::Json(state) => {
                            let kind = state["type"].as_str().unwrap_or_default();
                            assert!(kind.ends_with("_update"), "{name}: {state}");
                        }
                        other => panic!("{name}: expected a state, got {other:?}"),
                    },
                    Step::TextPong => {
                        assert_eq!(
                            socket.next(name).await,
                            Received::Text("pong".into()),
                            "{name}"
                        )
                    }
                    Step::Pongs(max) => {
                        let mut pongs = 0;
                        loop {
                            match socket.next(name).await {
                                Received::Text(pong) if pong == "pong" => pongs += 1,
                                other => {
                                    socket.pushed_back = Some(other);
                                    break;
                                }
                            }
                        }
                        assert!(pongs <= *max, "{name}: {pongs} pongs, more than {max}");
                    }
                    Step::Close(code) => {
                        match socket.next(name).await {
                            Received::Close(Some((got, _))) => assert_eq!(got, *code, "{name}"),
                            other => panic!("{name}: expected close {code}, got {other:?}"),
                        }
                        // Completes the closing handshake; then the hub hangs up.
                        if let Some(write) = socket.write.as_mut() {
                            // The hub may already have hung up.
                            let _ = write.write_all(&close_frame(*code)).await;
                        }
                        assert_eq!(socket.next(name).await, Received::Ended, "{name}");
                    }
                    Step::Dropped(within) => {
                        let started = tokio::time::Instant::now();
                        let got = socket.next_within(*within).await;
                        assert_eq!(
                            got,
                            Some(Received::Ended),
                            "{name}: after {:?}",
                            started.elapsed()
                        );
                    }
                    Step::Open => {
                        if let Some(received) = socket.next_within(QUIET).await {
                            panic!("{name}: expected nothing, got {received:?}");
                        }
                        socket.send(&text("ping")).await;
                        assert_eq!(
                            socket.next(name).await,
                            Received::Text("pong".into()),
                            "{name}"
                        );
                        open = true;
                    }
                }
            }
            open.then_some(socket)
        }
    }
}

/// Writes `row`'s request (at once, or trickled) and checks that the hub sends nothing but
/// `answer` and hangs up between `after` and `within`.
async fn hung_up(
    hub: &TestHub,
    row: &Row,
    answer: Option<&'static str>,
    after: Duration,
    within: Duration,
) {
    let name = &row.name;
    let started = tokio::time::Instant::now();
    let stream = TcpStream::connect(hub.addr()).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let (request, trickle) = (row.request(), row.trickle);
    // Writes from a task of its own, so that the hang-up is seen whenever it comes; a write
    // fails once the hub has hung up, which is what the row expects.
    let writer = tokio::spawn(async move {
        match trickle {
            None => {
                let _ = write.write_all(&request).await;
            }
            Some(pause) => {
                for byte in request {
                    if write.write_all(&[byte]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        }
        // Keeps the write half (and so the socket) open: only the hub may end it.
        tokio::time::sleep(within).await;
    });
    let mut received = Vec::new();
    let ended = loop {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(started + within, read.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => received.extend_from_slice(&chunk[..n]),
            // An end of stream, or a reset when the trickle wrote after the hub hung up.
            Ok(_) => break Some(started.elapsed()),
            Err(_) => break None,
        }
    };
    writer.abort();
    let received = String::from_utf8_lossy(&received);
    match answer {
        None => assert!(received.is_empty(), "{name}: the hub answered {received:?}"),
        Some(start) => assert!(
            received.starts_with(start),
            "{name}: the hub answered {received:?}, not {start:?}"
        ),
    }
    let Some(ended) = ended else {
        panic!("{name}: the hub still holds the connection after {within:?}");
    };
    assert!(
        ended >= after,
        "{name}: the hub hung up after {ended:?}, before {after:?}"
    );
}

/// The table. Ids the owner knows: task `h-task`, scenes `h-scene` and `a.b`.
fn rows() -> Vec<Row> {
    let error = |id: &str, message: &str| Step::Error {
        id: id.to_owned(),
        message: message.to_owned(),
    };
    let task_missing = |id: &str| error(id, &format!("任务记录不存在: {id}"));
    let scene_missing = |id: &str| error(id, &format!("场景不存在: {id}"));
    let rejected = |id: &str, message: &str| vec![error(id, message), Step::Close(1008)];
    let interval = |value: &str, echoed: &str| {
        Row::ws(format!("interval={value}"), "/ws/task-execution/h-int")
            .query("interval", value)
            .then(rejected(
                "h-int",
                &format!("参数 interval 无效: \"{echoed}\",必须是 1 到 30 之间的整数"),
            ))
    };
    let boolean = |name: &str, value: &str, echoed: &str| {
        Row::ws(format!("{name}={value}"), "/ws/storage-location/h-scene")
            .query(name, value)
            .then(rejected(
                "h-scene",
                &format!(
                    "参数 {name} 无效: \"{echoed}\",允许的值为 true、false、1、0(不区分大小写)"
                ),
            ))
    };
    // Client messages go to a broadcast endpoint, which sends nothing on connect, so every
    // answer is the message's own.
    let message = |name: &str, steps: Vec<Step>| {
        Row::ws(name, "/ws/task-execution-broadcast/h-msg").then(steps)
    };
    let invalid_json = || error("h-msg", "无效的JSON消息格式");
    let protocol_error =
        |name: &str, bytes: Vec<u8>| message(name, vec![Step::Send(bytes), Step::Close(1002)]);
    let deflating = |name: &str, steps: Vec<Step>| {
        message(name, steps).header("Sec-WebSocket-Extensions", OFFER)
    };
    let ping_halves = {
        let whole = deflated(b"ping");
        let (first, second) = whole.split_at(whole.len() / 2);
        (first.to_vec(), second.to_vec())
    };
    let long_id = "x".repeat(10 * 1024);
    let nested_fits = "[".repeat(60_000);
    let nested_too_big = "[".repeat(100_000);
    let long_type = "t".repeat(1000);

    vec![
        // Ids: wildcards and separators are ids like any other (the SDK encodes them into one
        // literal subject token), so they are watched, and not found.
        Row::ws("id *", "/ws/task-execution/%2A").then(vec![task_missing("*"), Step::Open]),
        Row::ws("id * raw", "/ws/task-execution/*").then(vec![task_missing("*"), Step::Open]),
        Row::ws("id >", "/ws/task-execution/%3E").then(vec![task_missing(">"), Step::Open]),
        Row::ws("id > on broadcast", "/ws/task-execution-broadcast/%3E").then(vec![Step::Open]),
        Row::ws("id > raw", "/ws/task-execution/>").http(400, ""),
        Row::ws(
            "id a.b, a scene the owner knows",
            "/ws/storage-location/a.b",
        )
        .then(vec![Step::State, Step::Open]),
        Row::ws("id a.*", "/ws/storage-location/a.%2A")
            .then(vec![scene_missing("a.*"), Step::Open]),
        Row::ws("id ..", "/ws/task-execution/..").then(vec![task_missing(".."), Step::Open]),
        Row::ws("id with a space", "/ws/task-execution/a%20b")
            .then(vec![task_missing("a b"), Step::Open]),
        Row::ws("id of one space", "/ws/storage-location/%20")
            .then(vec![scene_missing(" "), Step::Open]),
        Row::ws("id with %2F", "/ws/task-execution/a%2Fb")
            .then(vec![task_missing("a/b"), Step::Open]),
        Row::ws(
            "id with a quote and a backslash",
            "/ws/task-execution/a%22b%5C",
        )
        .then(vec![task_missing("a\"b\\"), Step::Open]),
        Row::ws("id a lone %", "/ws/task-execution/%").then(vec![task_missing("%"), Step::Open]),
        Row::ws("id with a bidi override", "/ws/task-execution/%E2%80%AE")
            .then(vec![task_missing("\u{202e}"), Step::Open]),
        Row::ws("id in raw UTF-8", "/ws/task-execution/任务")
            .then(vec![task_missing("任务"), Step::Open]),
        Row::ws("id with NUL", "/ws/task-execution/a%00b")
            .then(rejected("ab", "task_record_id 不能包含控制字符")),
        Row::ws(
            "id with an ANSI escape",
            "/ws/storage-location-broadcast/%1B%5B31m",
        )
        .then(rejected("[31m", "scene_id 不能包含控制字符")),
        Row::ws("id with DEL", "/ws/task-execution/%7F")
            .then(rejected("", "task_record_id 不能包含控制字符")),
        Row::ws("id with a C1 control", "/ws/task-execution/a%C2%85")
            .then(rejected("a", "task_record_id 不能包含控制字符")),
        Row::ws("id with a raw tab", b"/ws/task-execution/a\tb").http(400, ""),
        Row::ws("id of 10 KiB", format!("/ws/task-execution/{long_id}")).then(rejected(
            &long_id[..256],
            "task_record_id 过长: 最多 256 字节",
        )),
        Row::ws(
            "id of 258 bytes in 86 characters",
            format!("/ws/task-execution/{}", "任".repeat(86)),
        )
        .then(rejected(
            &"任".repeat(86),
            "task_record_id 过长: 最多 256 字节",
        )),
        Row::ws("id %FF", "/ws/task-execution-broadcast/%FF")
            .then(rejected("\u{fffd}", "task_record_id 不是有效的 UTF-8 编码")),
        Row::ws("id overlong UTF-8", "/ws/task-execution/%C0%AF").then(rejected(
            "\u{fffd}\u{fffd}",
            "task_record_id 不是有效的 UTF-8 编码",
        )),
        Row::ws("id a UTF-16 surrogate", "/ws/storage-location/%ED%A0%80").then(rejected(
            "\u{fffd}\u{fffd}\u{fffd}",
            "scene_id 不是有效的 UTF-8 编码",
        )),
        Row::ws("id raw byte 0xFF", b"/ws/task-execution/a\xffb").http(400, ""),
        Row::ws("id empty", "/ws/task-execution/").then(rejected("", "task_record_id 不能为空")),
        Row::ws("id empty on broadcast", "/ws/storage-location-broadcast/")
            .then(rejected("", "scene_id 不能为空")),
        Row::ws("id of two segments", "/ws/task-execution/a/b").http(404, "not found"),
        // interval
        interval("0", "0"),
        interval("31", "31"),
        interval("-1", "-1"),
        interval("2.5", "2.5"),
        interval("abc", "abc"),
        interval("", ""),
        interval("+2", " 2"),
        interval("%2B2", "+2"),
        interval("0x1", "0x1"),
        interval("99999999999999999999999", "99999999999999999999999"),
        interval("%00", "\u{fffd}"),
        interval("%FF", "\u{fffd}"),
        interval(&"9".repeat(10 * 1024), &format!("{}…", "9".repeat(64))),
        Row::ws("interval without =", "/ws/task-execution/h-int?interval").then(rejected(
            "h-int",
            "参数 interval 无效: \"\",必须是 1 到 30 之间的整数",
        )),
        Row::ws("interval repeated", "/ws/task-execution/h-int")
            .query("interval", "2")
            .query("interval", "3")
            .then(rejected("h-int", "参数 interval 重复,只能出现一次")),
        Row::ws(
            "interval repeated, both bad",
            "/ws/storage-location/h-scene",
        )
        .query("interval", "x")
        .query("interval", "y")
        .then(rejected(
            "h-scene",
            "参数 interval 无效: \"x\",必须是 1 到 30 之间的整数",
        )),
        Row::ws("interval 30, the largest", "/ws/task-execution/h-task")
            .query("interval", "30")
            .then(vec![Step::State, Step::Open]),
        Row::ws(
            "INTERVAL=0: names are case-sensitive, unknown ones ignored",
            "/ws/task-execution/h-task",
        )
        .query("INTERVAL", "0")
        .then(vec![Step::State, Step::Open]),
        Row::ws(
            "broadcast ignores every parameter",
            "/ws/task-execution-broadcast/h-task",
        )
        .query("interval", "abc")
        .query("is_locked", "maybe")
        .then(vec![Step::Open]),
        Row::ws(
            "task endpoints have no filters",
            "/ws/task-execution/h-task",
        )
        .query("is_locked", "maybe")
        .then(vec![Step::State, Step::Open]),
        // Endpoint 3's filters
        boolean("is_occupied", "yes", "yes"),
        boolean("is_locked", "", ""),
        boolean("is_disabled", "2", "2"),
        boolean("is_locked", "tru%C3%A9", "trué"),
        boolean("is_occupied", "%0A", "\u{fffd}"),
        Row::ws("is_locked repeated", "/ws/storage-location/h-scene")
            .query("is_locked", "true")
            .query("is_locked", "false")
            .then(rejected("h-scene", "参数 is_locked 重复,只能出现一次")),
        Row::ws(
            "booleans in every accepted spelling",
            "/ws/storage-location/h-scene",
        )
        .query("is_occupied", "TRUE")
        .query("is_locked", "0")
        .query("is_disabled", "False")
        .then(vec![Step::State, Step::Open]),
        Row::ws("a string filter of 10 KiB", "/ws/storage-location/h-scene")
            .query("station_name", &long_id)
            .then(rejected("h-scene", "参数 station_name 过长: 最多 256 字节")),
        // Client messages
        message(
            "malformed JSON",
            vec![Step::Send(text("{not json")), invalid_json(), Step::Open],
        ),
        message(
            "an empty text message",
            vec![Step::Send(text("")), invalid_json(), Step::Open],
        ),
        message(
            "JSON null",
            vec![Step::Send(text("null")), invalid_json(), Step::Open],
        ),
        message(
            "a JSON array",
            vec![Step::Send(text("[1,2]")), invalid_json(), Step::Open],
        ),
        message(
            "a JSON array that reads as a ping by position",
            vec![Step::Send(text(r#"["ping"]"#)), invalid_json(), Step::Open],
        ),
        message(
            "type not a string",
            vec![
                Step::Send(text(r#"{"type":1}"#)),
                invalid_json(),
                Step::Open,
            ],
        ),
        message(
            "PING in capitals",
            vec![Step::Send(text("PING")), invalid_json(), Step::Open],
        ),
        message(
            "unknown type",
            vec![
                Step::Send(text(r#"{"type":"subscribe"}"#)),
                error("h-msg", "未知的消息类型: subscribe"),
                Step::Open,
            ],
        ),
        message(
            "unknown type of 1000 characters",
            vec![
                Step::Send(text(format!(r#"{{"type":"{long_type}"}}"#))),
                error("h-msg", &format!("未知的消息类型: {}…", &long_type[..64])),
                Step::Open,
            ],
        ),
        message(
            "unknown type with NUL",
            vec![
                Step::Send(text(r#"{"type":"ping\u0000"}"#)),
                error("h-msg", "未知的消息类型: ping\u{0}"),
                Step::Open,
            ],
        ),
        message(
            "JSON 60 000 levels deep",
            vec![Step::Send(text(&nested_fits)), invalid_json(), Step::Open],
        ),
        message(
            "JSON 100 000 levels deep, over 64 KiB",
            vec![
                Step::SendWhileReading(text(&nested_too_big)),
                Step::Close(1009),
            ],
        ),
        message(
            "a 1 MiB frame",
            vec![
                Step::SendWhileReading(text("x".repeat(1024 * 1024))),
                Step::Close(1009),
            ],
        ),
        message(
            "a binary frame",
            vec![
                Step::Send(frame(op::BINARY, &[0, 1, 2, 0xff])),
                error("h-msg", "不支持二进制消息,请发送JSON文本消息"),
                Step::Open,
            ],
        ),
        message(
            "a text frame of invalid UTF-8",
            vec![
                Step::Send(text([b'{', 0xff, 0xfe, b'}'])),
                Step::Close(1007),
            ],
        ),
        message(
            "a text message in two fragments",
            vec![
                Step::Send(frame_with(op::TEXT, true, b"pi")),
                Step::Send(frame(op::CONTINUATION, b"ng")),
                Step::TextPong,
                Step::Open,
            ],
        ),
        message(
            "get_status of a task the owner does not know",
            vec![
                Step::Send(text(r#"{"type":"get_status"}"#)),
                task_missing("h-msg"),
                Step::Open,
            ],
        ),
        protocol_error(
            "an unmasked frame",
            frame_with(0x80 | op::TEXT, false, b"ping"),
        ),
        protocol_error("a reserved opcode", frame(op::RESERVED, b"x")),
        protocol_error(
            "RSV1 set without an extension",
            frame_with(0xC0 | op::TEXT, true, b"ping"),
        ),
        // Compression negotiated (SPEC 2.6): compressed client frames are inflated, within
        // the same 64 KiB as plain ones; RSV1 where the extension gives it no meaning is 1002.
        deflating(
            "a compressed ping",
            vec![
                Step::Send(frame_with(0xC0 | op::TEXT, true, &deflated(b"ping"))),
                Step::TextPong,
                Step::Open,
            ],
        ),
        deflating(
            "a compressed ping in two fragments",
            vec![
                Step::Send(frame_with(0x40 | op::TEXT, true, &ping_halves.0)),
                Step::Send(frame_with(0x80 | op::CONTINUATION, true, &ping_halves.1)),
                Step::TextPong,
                Step::Open,
            ],
        ),
        deflating(
            "a plain ping, compression negotiated",
            vec![Step::Send(text("ping")), Step::TextPong, Step::Open],
        ),
        deflating(
            "a compressed message that inflates past 64 KiB",
            vec![
                Step::Send(frame_with(
                    0xC0 | op::TEXT,
                    true,
                    &deflated(&[b' '; 70_000]),
                )),
                Step::Close(1009),
            ],
        ),
        deflating(
            "a compressed frame over 64 KiB",
            vec![
                Step::SendWhileReading(frame_with(0xC0 | op::TEXT, true, &[7; 70_000])),
                Step::Close(1009),
            ],
        ),
        deflating(
            "compressed data that does not inflate",
            vec![
                Step::Send(frame_with(0xC0 | op::TEXT, true, &[0xff; 8])),
                Step::Close(1007),
            ],
        ),
        deflating(
            "a compressed text of invalid UTF-8",
            vec![
                Step::Send(frame_with(
                    0xC0 | op::TEXT,
                    true,
                    &deflated(&[b'{', 0xff, b'}']),
                )),
                Step::Close(1007),
            ],
        ),
        deflating(
            "RSV1 on a Ping, compression negotiated",
            vec![
                Step::Send(frame_with(0xC0 | op::PING, true, b"")),
                Step::Close(1002),
            ],
        ),
        deflating(
            "RSV1 on a continuation, compression negotiated",
            vec![
                Step::Send(frame_with(0x40 | op::TEXT, true, &ping_halves.0)),
                Step::Send(frame_with(0xC0 | op::CONTINUATION, true, &ping_halves.1)),
                Step::Close(1002),
            ],
        ),
        protocol_error("a Ping of 126 bytes", frame(op::PING, &[0; 126])),
        protocol_error("a fragmented Ping", frame_with(op::PING, true, b"x")),
        protocol_error(
            "a continuation with nothing to continue",
            frame(op::CONTINUATION, b"x"),
        ),
        protocol_error("a close code that may not be sent", close_frame(1005)),
        message(
            "a flood of messages",
            vec![
                Step::Send((0..300).flat_map(|_| text("ping")).collect()),
                Step::Pongs(60),
                error("h-msg", "消息发送过于频繁,请降低发送频率"),
                Step::Pongs(10),
                Step::Close(1008),
            ],
        ),
        message(
            "half a frame, then silence",
            vec![
                Step::Send(text("x".repeat(100))[..20].to_vec()),
                Step::Dropped(PING_INTERVAL * 5),
            ],
        ),
        // Handshakes
        Row::ws("plain GET, no upgrade", "/ws/task-execution/h-task")
            .without("Upgrade")
            .without("Connection")
            .http(400, "Connection header did not include 'upgrade'"),
        Row::ws("Upgrade: h2c", "/ws/task-execution/h-task")
            .header("Upgrade", "h2c")
            .http(400, "`Upgrade` header did not include 'websocket'"),
        Row::ws("POST with upgrade headers", "/ws/task-execution/h-task")
            .method("POST")
            .http(426, "Request method must be `GET`"),
        Row::ws("Sec-WebSocket-Version: 8", "/ws/task-execution/h-task")
            .header("Sec-WebSocket-Version", "8")
            .http(400, "`Sec-WebSocket-Version` header did not include '13'"),
        Row::ws("no Sec-WebSocket-Key", "/ws/task-execution/h-task")
            .without("Sec-WebSocket-Key")
            .http(400, "`Sec-WebSocket-Key` header missing"),
        // RFC 6455 asks for 16 bytes in base64: a client that sends anything else is not
        // speaking the protocol, and could not check the answer.
        Row::ws(
            "a Sec-WebSocket-Key that is not base64",
            "/ws/task-execution/h-task",
        )
        .header("Sec-WebSocket-Key", "not base64!")
        .http(400, "`Sec-WebSocket-Key` header is not 16 bytes in base64"),
        Row::ws(
            "a Sec-WebSocket-Key of 15 bytes",
            "/ws/task-execution/h-task",
        )
        .header("Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAA")
        .http(400, "`Sec-WebSocket-Key` header is not 16 bytes in base64"),
        Row::ws(
            "an Origin of invalid UTF-8, no allow-list",
            "/ws/task-execution/h-task",
        )
        .header("Origin", b"http://\xff\xfe")
        .then(vec![Step::State, Step::Open]),
        Row::ws("a header of 100 KiB", "/ws/task-execution/h-task")
            .header("X-Junk", "j".repeat(100 * 1024))
            .then(vec![Step::State, Step::Open]),
        Row::ws("a header of 1 MiB", "/ws/task-execution/h-task")
            .header("X-Junk", "j".repeat(1024 * 1024))
            .http(431, ""),
        Row::ws("200 headers", "/ws/task-execution/h-task")
            .headers_numbered(200)
            .http(431, ""),
        Row::ws("unknown endpoint", "/ws/unknown/x").http(404, "not found"),
        Row::ws("/ws alone", "/ws").http(404, "not found"),
        Row::ws("a path that climbs", "/../../etc/passwd").http(404, "not found"),
        Row::raw(
            "a TLS ClientHello on the plain port",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        )
        .http(400, ""),
        // Slow and silent clients, and idle connections: each holds a socket until the
        // header-read timeout, and not past it.
        Row::raw(
            "half a request head, then silence",
            b"GET /ws/task-execution/h-task HTTP/1.1\r\nHost: hostile.test\r\nUpgrade: webs",
        )
        .hung_up_on_timeout(None),
        Row::raw("connect and send nothing", b"").hung_up_on_timeout(None),
        // Slowloris itself: the head keeps coming, too slowly to end in time. The timeout
        // counts from the start of the head, not from the last byte.
        Row::ws(
            "a handshake a byte every 100 ms",
            "/ws/task-execution/h-task",
        )
        .trickle(Duration::from_millis(100))
        .hung_up_on_timeout(None),
        Row::raw(
            "an idle keep-alive connection after a request",
            b"GET /healthz HTTP/1.1\r\nHost: hostile.test\r\n\r\n",
        )
        .hung_up_on_timeout(Some("HTTP/1.1 200 OK\r\n")),
        // Forged and stale tokens: `token_rows`, on a hub that requires tokens.
    ]
}

impl Row {
    fn headers_numbered(mut self, count: usize) -> Self {
        for n in 0..count {
            self = self.header(&format!("X-Junk-{n}"), "j");
        }
        self
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_input_is_answered_exactly_and_harms_no_one() {
    let broker = TestBroker::start(BrokerKind::Nats).await;
    let owner = table_owner(&broker).await;
    let hub = TestHub::start_with(&broker, |c| {
        c.ping_interval = PING_INTERVAL;
        c.http_header_timeout = HEADER_TIMEOUT;
    })
    .await;
    let rows = rows();
    assert!(rows.len() >= 40, "{} rows", rows.len());
    run_table(hub, &owner, "", rows).await;
}

/// The owner of the tables' keys: task `h-task`, the canary's task, and scenes `h-scene` and
/// `a.b`.
async fn table_owner(broker: &TestBroker) -> Owner {
    let owner = Owner::start(broker).await;
    owner
        .seed_task(
            "h-task",
            vec![TaskResult::now("[h] 1", TaskStatus::Running)],
        )
        .await;
    owner.seed_task(CANARY, vec![]).await;
    owner
        .seed_scene("h-scene", vec![location("h-scene", "l-1", "A1", "S1", 1)])
        .await;
    owner
        .seed_scene("a.b", vec![location("a.b", "l-1", "A1", "S1", 1)])
        .await;
    owner
}

/// Forged, stale and insufficient connection tokens, on a hub that requires them: each gets its
/// exact `error` and 1008, before any of the key's data, and harms no one.
#[tokio::test(flavor = "multi_thread")]
async fn forged_tokens_are_answered_exactly_and_harm_no_one() {
    let broker = TestBroker::start(BrokerKind::Nats).await;
    let owner = table_owner(&broker).await;
    let hub = TestHub::start_with(&broker, |c| {
        c.ping_interval = PING_INTERVAL;
        c.jwt_secret = Some(tokens::SECRET.parse().expect("a secret"));
    })
    .await;
    let canary_token = tokens::hs256(&tokens::claims(&[], &[CANARY]));
    run_table(hub, &owner, &format!("?token={canary_token}"), token_rows()).await;
}

/// Runs `rows` against `hub`, each in a task of its own, checking after each that a canary
/// (connected with `canary_query`) still hears a fresh event and only it is left open.
async fn run_table(hub: TestHub, owner: &Owner, canary_query: &str, rows: Vec<Row>) {
    let mut canary = Canary::start(&hub, canary_query).await;
    hub.wait_for_subscriptions(1).await;
    canary.still_hears(owner, "the start").await;
    let hub = Arc::new(hub);
    // Each row runs in a task of its own, so that one failing row still lets the others run
    // and the test reports every row that failed.
    let mut failures = Vec::new();
    for row in rows {
        let name = row.name.clone();
        let row_hub = hub.clone();
        let left_open = match tokio::spawn(async move { run(&row_hub, &row).await }).await {
            Ok(left_open) => left_open,
            Err(error) => {
                failures.push(panic_message(error));
                None
            }
        };
        canary.still_hears(owner, &name).await;
        if let Some(mut client) = left_open {
            if let Some(received) = client.next_within(QUIET).await {
                failures.push(format!(
                    "{name}: heard {received:?} after the canary's event"
                ));
            }
        }
        vwed_e2e::eventually(
            &format!("after {name}: only the canary is open"),
            || async { open_connections(&hub).await == 1.0 },
        )
        .await;
    }
    assert!(failures.is_empty(), "failed rows:\n{}", failures.join("\n"));
    assert_eq!(
        hub.metric(r#"vwed_hub_connections{endpoint="task-execution-broadcast"}"#)
            .await,
        1.0,
        "the canary's"
    );
    assert_eq!(open_connections(&hub).await, 1.0);
    canary.still_hears(owner, "the table").await;
}

/// The token table, for a hub whose secret is [`tokens::SECRET`]. Task `h-task` exists.
fn token_rows() -> Vec<Row> {
    let path = "/ws/task-execution/h-task";
    let refused = |message: &str, reason_code: u16| {
        vec![
            Step::Error {
                id: "h-task".into(),
                message: message.to_owned(),
            },
            Step::Close(reason_code),
        ]
    };
    let missing =
        "缺少访问令牌: 请通过 token 参数、Authorization: Bearer 请求头或 bearer.<令牌> 子协议提供";
    let everything = tokens::claims(&["*"], &["*"]);
    let other_key =
        jsonwebtoken::EncodingKey::from_secret(b"another secret, just as long as ours!");
    let forged_signature = tokens::signed(&everything, jsonwebtoken::Algorithm::HS256, &other_key);
    vec![
        Row::ws("no token", path).then(refused(missing, 1008)),
        Row::ws("an empty ?token=", path)
            .query("token", "")
            .then(refused(missing, 1008)),
        Row::ws("Authorization: Basic, not Bearer", path)
            .header("Authorization", "Basic dXNlcjpwYXNz")
            .then(refused(missing, 1008)),
        Row::ws("alg none in the query", path)
            .query("token", tokens::unsigned(&everything))
            .then(refused("访问令牌无效: 签名算法不被接受", 1008)),
        Row::ws("alg none as a Bearer header", path)
            .header(
                "Authorization",
                format!("Bearer {}", tokens::unsigned(&everything)),
            )
            .then(refused("访问令牌无效: 签名算法不被接受", 1008)),
        Row::ws("signed with another key", path)
            .query("token", forged_signature.clone())
            .then(refused("访问令牌无效: 签名不符", 1008)),
        Row::ws("a forged token as a subprotocol", path)
            .header(
                "Sec-WebSocket-Protocol",
                format!("vwed, bearer.{forged_signature}"),
            )
            .then(refused("访问令牌无效: 签名不符", 1008)),
        Row::ws("expired an hour ago", path)
            .query(
                "token",
                tokens::hs256(
                    &serde_json::json!({ "tasks": ["*"], "exp": tokens::epoch_in(-3600) }),
                ),
            )
            .then(refused("访问令牌已过期", 1008)),
        Row::ws("not valid for an hour", path)
            .query(
                "token",
                tokens::hs256(&serde_json::json!({
                    "tasks": ["*"], "exp": tokens::epoch_in(7200), "nbf": tokens::epoch_in(3600)
                })),
            )
            .then(refused("访问令牌尚未生效", 1008)),
        Row::ws("a token for another task", path)
            .query(
                "token",
                tokens::hs256(&tokens::claims(&["*"], &["h-other"])),
            )
            .then(refused("无权访问该任务记录", 1008)),
        Row::ws("a token whose claims are the wrong shape", path)
            .query(
                "token",
                tokens::hs256(
                    &serde_json::json!({ "tasks": {"h-task": true}, "exp": tokens::epoch_in(60) }),
                ),
            )
            .then(refused(
                "访问令牌无效: 声明格式错误: scenes 与 tasks 须为字符串数组",
                1008,
            )),
        Row::ws("10 KiB of token", path)
            .query("token", "a".repeat(10 * 1024))
            .then(refused("访问令牌无效: 格式错误", 1008)),
        Row::ws("three dots of nothing", path)
            .query("token", "..")
            .then(refused("访问令牌无效: 格式错误", 1008)),
        Row::ws("a valid token for the task", path)
            .query("token", tokens::hs256(&tokens::claims(&[], &["h-task"])))
            .then(vec![Step::State, Step::Open]),
    ]
}

/// What a row's task panicked with.
fn panic_message(error: tokio::task::JoinError) -> String {
    match error.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic".into()),
        Err(error) => error.to_string(),
    }
}

/// A client that sends requests and never reads the answers (here 200 pipelined requests for
/// the page's script, with a small receive buffer) fills the hub's socket: the write stalls,
/// and the hub ends the connection `--write-timeout` plus 2 s later instead of holding it for
/// ever. Other clients are served all along.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_reads_its_responses_is_disconnected_once_a_write_stalls() {
    const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
    const STALL_LIMIT: Duration = Duration::from_secs(3);
    const REQUESTS: usize = 200;
    let broker = TestBroker::start(BrokerKind::Memory).await;
    let hub = TestHub::start_with(&broker, |c| c.write_timeout = WRITE_TIMEOUT).await;
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket.set_recv_buffer_size(4096).expect("a small buffer");
    let mut stream = socket.connect(hub.addr()).await.expect("connect");
    let requests = "GET /app.js HTTP/1.1\r\nHost: hostile.test\r\n\r\n".repeat(REQUESTS);
    stream
        .write_all(requests.as_bytes())
        .await
        .expect("the requests go out");

    // Not read for longer than the limit: the hub gives up on the connection meanwhile, while
    // serving everyone else.
    let deadline = tokio::time::Instant::now() + STALL_LIMIT + Duration::from_secs(1);
    while tokio::time::Instant::now() < deadline {
        assert_eq!(http_get(hub.addr(), "/healthz").await.0, 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the connection is still open after {STALL_LIMIT:?} of a stalled write"
    );
    let answered = received
        .windows(b"HTTP/1.1 200 OK".len())
        .filter(|w| *w == b"HTTP/1.1 200 OK")
        .count();
    assert!(
        (1..REQUESTS).contains(&answered),
        "{answered} of {REQUESTS} responses arrived before the hub hung up"
    );
}
