//! One WebSocket connection: it joins its key's topic, writes what the topic queues for it,
//! answers the client's messages, keeps the connection alive with Ping frames, and leaves when
//! anything ends it.

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::time::{timeout, Instant, Interval, Sleep};
use tokio_tungstenite::tungstenite::{self, protocol::CloseFrame, Message, Utf8Bytes};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::admission::Refusal;
use super::deflate::{self, Compression};
use super::endpoint::{Endpoint, InvalidRequest, Watch};
use super::fragments::Fragments;
use super::upgrade::WebSocket;
use super::wake_source::WakeSource;
use crate::auth::Denied;
use crate::fanout::{outbox, FanOut, GiveUp, Inbox, Next, Watcher};
use crate::messages::{self, ClientMessageError, ClientRequest, Envelope, Frame};
use crate::metrics::{EndpointLabels, Metrics, SentBytes};

/// Close codes of SPEC 2.4.
pub mod close {
    /// Normal close.
    pub const NORMAL: u16 = 1000;
    /// The hub is shutting down; reconnect elsewhere.
    pub const GOING_AWAY: u16 = 1001;
    /// A text message that is not UTF-8 (RFC 6455 section 7.4.1).
    pub const INVALID_DATA: u16 = 1007;
    /// Invalid parameters or not authorised.
    pub const POLICY: u16 = 1008;
    /// A client frame over the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// Internal error.
    pub const INTERNAL: u16 = 1011;
    /// Try again later: no broker, or the client fell behind.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Frames, and bytes, written per flush at most, so one busy stream cannot starve the reader
/// and a write timeout covers a bounded amount of data.
const MAX_BATCH: usize = 64;
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// How long the closing handshake may take before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Per-connection settings.
#[derive(Debug, Clone)]
pub struct ConnectionSettings {
    /// How often the hub sends a Ping frame; silence for three periods closes the connection.
    pub ping_interval: Duration,
    /// Outgoing frames a connection may have queued.
    pub queue_capacity: usize,
    /// How long one write may block before the client counts as gone.
    pub write_timeout: Duration,
    /// On shutdown, each connection closes at a random moment within this window, so that its
    /// clients reconnect to other replicas a few at a time rather than all at once.
    pub drain_spread: Duration,
    /// Client messages allowed per second, on average; 0 for no limit.
    pub message_rate: f64,
    /// Client messages allowed at once above the rate; also how many more, past the limit, a
    /// client may send before it is closed.
    pub message_burst: u32,
    /// How messages are compressed for clients that negotiate permessage-deflate; `None`: the
    /// hub declines the extension.
    pub compression: Option<Compression>,
}

/// A client's allowance of messages: a token bucket, so bursts up to the limit cost nothing.
struct MessageBudget {
    /// Messages that may be sent now.
    tokens: f64,
    /// When `tokens` was last topped up.
    refilled: Instant,
    /// Messages refused since the client last had its whole allowance; the first gets an
    /// `error`, too many close the connection.
    refused: u32,
}

/// What to do with one client message.
#[derive(Debug, PartialEq, Eq)]
enum Allowance {
    /// Within the limit: handle it.
    Take,
    /// Over the limit for the first time in a row: say so, drop the message.
    Warn,
    /// Still over: drop it.
    Drop,
    /// Over for too long: close with 1008.
    Close,
}

impl MessageBudget {
    fn new(settings: &ConnectionSettings) -> Self {
        Self {
            tokens: f64::from(settings.message_burst),
            refilled: Instant::now(),
            refused: 0,
        }
    }

    fn spend(&mut self, settings: &ConnectionSettings) -> Allowance {
        if settings.message_rate <= 0.0 {
            return Allowance::Take;
        }
        let now = Instant::now();
        let full = f64::from(settings.message_burst.max(1));
        let earned = now.duration_since(self.refilled).as_secs_f64() * settings.message_rate;
        self.tokens = (self.tokens + earned).min(full);
        self.refilled = now;
        if self.tokens >= full {
            // A whole allowance saved up again: whatever came before is forgiven. (A token now
            // and then is not enough: a client that keeps sending at twice the rate must still
            // reach the close.)
            self.refused = 0;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Allowance::Take;
        }
        self.refused += 1;
        match self.refused {
            1 => Allowance::Warn,
            n if n > settings.message_burst => Allowance::Close,
            _ => Allowance::Drop,
        }
    }
}

/// Why the connection loop ended.
enum Ending {
    /// Close with this code and reason.
    Close(u16, &'static str),
    /// The client is gone (it closed, or the socket failed); nothing more to send.
    Gone,
}

/// Why a connection is turned away before it joins its key, and how the client is told: one
/// `error` naming the problem, then a close, and nothing of the key's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The `error` message's text.
    text: String,
    /// 1008 when the request itself is at fault, 1013 when the hub cannot take it now.
    code: u16,
    /// The close frame's reason; also the cause in the log line and in
    /// `vwed_hub_connections_refused_total`.
    reason: &'static str,
}

impl From<InvalidRequest> for Rejection {
    fn from(invalid: InvalidRequest) -> Self {
        Self {
            text: invalid.to_string(),
            code: close::POLICY,
            reason: "invalid parameters",
        }
    }
}

impl From<Denied> for Rejection {
    fn from(denied: Denied) -> Self {
        Self {
            text: denied.to_string(),
            code: close::POLICY,
            reason: denied.reason(),
        }
    }
}

impl From<Refusal> for Rejection {
    fn from(refusal: Refusal) -> Self {
        let (text, reason) = match refusal {
            Refusal::TooManyConnections => {
                ("服务连接数已达上限,请稍后重试", "too many connections")
            }
            Refusal::TooManyFromAddress => (
                "该地址的连接数已达上限,请稍后重试",
                "too many connections from this address",
            ),
        };
        Self {
            text: text.into(),
            code: close::TRY_AGAIN_LATER,
            reason,
        }
    }
}

impl Rejection {
    /// No broker to subscribe through: come back later.
    fn broker_unavailable() -> Self {
        Self {
            text: "服务暂时不可用: 消息总线未连接,请稍后重试".into(),
            code: close::TRY_AGAIN_LATER,
            reason: "broker unavailable",
        }
    }
}

/// Serves a connection that may not watch what it asked for: one `error`, then the close.
pub async fn refuse(
    socket: WebSocket,
    endpoint: Endpoint,
    raw_id: &str,
    rejection: Rejection,
    peer: SocketAddr,
    metrics: &Metrics,
) {
    refuse_key(
        socket,
        endpoint,
        &lossy_id(raw_id),
        rejection,
        peer,
        metrics,
    )
    .await;
}

/// [`refuse`], for a key already decoded.
async fn refuse_key(
    mut socket: WebSocket,
    endpoint: Endpoint,
    key: &str,
    rejection: Rejection,
    peer: SocketAddr,
    metrics: &Metrics,
) {
    let Rejection { text, code, reason } = rejection;
    tracing::info!(endpoint = endpoint.segment(), %key, %peer, close_code = code, reason, "connection refused");
    metrics.refused(reason);
    let error = Envelope::new(endpoint.kind(), key).error(&text);
    let _ = timeout(
        CLOSE_GRACE,
        socket.send(Message::Text(error.text().clone())),
    )
    .await;
    close_socket(socket, code, reason, CLOSE_GRACE).await;
}

/// The id as best it can be shown in an error about it.
fn lossy_id(raw: &str) -> String {
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    decoded
        .chars()
        .filter(|c| !c.is_control())
        .take(super::endpoint::MAX_ID_BYTES)
        .collect()
}

/// Serves a valid connection until it ends.
pub async fn serve(
    socket: WebSocket,
    watch: Watch,
    fanout: Arc<FanOut>,
    settings: ConnectionSettings,
    shutdown: CancellationToken,
    peer: SocketAddr,
    expires_in: Option<Duration>,
) {
    let metrics = fanout.metrics().clone();
    let envelope = Envelope::new(watch.endpoint.kind(), &watch.id);
    let endpoint = watch.endpoint.segment();
    if !fanout.broker_connected() {
        let rejection = Rejection::broker_unavailable();
        let refusal = refuse_key(socket, watch.endpoint, &watch.id, rejection, peer, &metrics);
        // Boxed, as the close below: rare paths that would otherwise size every connection's
        // task for as long as it lives.
        return Box::pin(refusal).await;
    }

    let (outbox, inbox) = outbox(settings.queue_capacity, metrics.clone());
    let membership = fanout.join(
        watch.endpoint.kind(),
        &watch.id,
        watch.interval,
        &watch.filter,
        outbox,
    );
    let gauge = metrics
        .connections
        .get_or_create(&EndpointLabels {
            endpoint: watch.endpoint.segment(),
        })
        .clone();
    gauge.inc();
    let started = Instant::now();
    tracing::info!(endpoint, key = %watch.id, %peer, compressed = socket.get_ref().negotiated(), "connection opened");

    let drain = Drain::new(&shutdown, settings.drain_spread);
    let budget = MessageBudget::new(&settings);
    let period = settings.ping_interval;
    let mut connection = Connection {
        // First, while the socket and the settings are still here to ask.
        compression: settings
            .compression
            .filter(|_| socket.get_ref().negotiated()),
        socket,
        give_up: inbox.give_up_signal(),
        inbox,
        membership,
        envelope,
        settings,
        metrics: metrics.clone(),
        drain,
        ping: tokio::time::interval_at(Instant::now() + period, period),
        expiry: expires_in.map(|remaining| Box::pin(tokio::time::sleep(remaining))),
        last_heard: Instant::now(),
        just_wrote: false,
        woken_by_client: WakeSource::new(),
        woken_by_clocks: WakeSource::new(),
        budget,
        client_close: None,
        sent: metrics.sent_bytes(watch.endpoint.segment()),
    };
    let ending = connection.run().await;
    let Connection {
        socket,
        membership,
        inbox,
        settings,
        client_close,
        ..
    } = connection;
    // Leave and free the queue before the (bounded) wait for the closing handshake.
    drop(membership);
    drop(inbox);
    gauge.dec();
    let (code, closed_by) = match (ending, client_close) {
        (Ending::Close(code, reason), _) => {
            Box::pin(close_socket(socket, code, reason, settings.write_timeout)).await;
            (Some(code), "hub")
        }
        (Ending::Gone, Some(code)) => (Some(code), "client"),
        (Ending::Gone, None) => (None, "network"),
    };
    tracing::info!(
        endpoint,
        key = %watch.id,
        %peer,
        duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        close_code = code,
        closed_by,
        "connection closed"
    );
}

/// When a connection closes as the hub drains: at a moment of its own within the drain spread,
/// so that clients reconnect elsewhere a few at a time. Every wait (the loop, a write in
/// progress) polls this one clock, so traffic cannot hurry or postpone the moment.
struct Drain {
    /// Resolves when the hub begins to drain. It waits on a child of the hub's token: this is
    /// polled at every wake-up of the connection, and the hub's own token would be one lock
    /// that every connection contends for.
    began: Pin<Box<WaitForCancellationFutureOwned>>,
    /// This connection's place in the spread, drawn once when it opens.
    delay: Duration,
    /// Running once the drain has begun; elapses at this connection's moment.
    moment: Option<Pin<Box<Sleep>>>,
    /// Whether either of the above woke the connection since it was last polled.
    woken: WakeSource,
}

impl Drain {
    fn new(shutdown: &CancellationToken, spread: Duration) -> Self {
        Self {
            began: Box::pin(shutdown.child_token().cancelled_owned()),
            delay: spread.mul_f64(fastrand::f64()),
            moment: None,
            woken: WakeSource::new(),
        }
    }

    /// Ready at the closing moment, and at every poll after it.
    fn poll_reached(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Self {
            began,
            delay,
            moment,
            woken,
        } = self;
        woken.poll(cx, |cx| {
            if moment.is_none() {
                std::task::ready!(began.as_mut().poll(cx));
                *moment = Some(Box::pin(tokio::time::sleep(*delay)));
            }
            match moment {
                Some(moment) => moment.as_mut().poll(cx),
                None => Poll::Pending,
            }
        })
    }
}

struct Connection {
    /// The client's socket; only this task reads or writes it.
    socket: WebSocket,
    /// What the topic queued for this client.
    inbox: Inbox,
    /// Tells a write in progress that the topic gave up on this client.
    give_up: GiveUp,
    /// This connection's place in its topic; dropped on the way out.
    membership: Watcher,
    /// For error messages about this connection's key.
    envelope: Envelope,
    /// Ping period, queue size, write timeout.
    settings: ConnectionSettings,
    /// Counts what the connection sees.
    metrics: Arc<Metrics>,
    /// When to close once the hub drains.
    drain: Drain,
    /// When to send the next Ping frame, and to check that the client still answers.
    ping: Interval,
    /// Elapses when the client's token expires; the connection ends then, as a new one would
    /// be refused.
    expiry: Option<Pin<Box<Sleep>>>,
    /// When the client last sent anything; three ping periods of silence end the connection.
    last_heard: Instant,
    /// Whether the last wake-up wrote frames: if so, the client, the clocks and the drain are
    /// looked at before more frames, so a busy stream cannot starve them.
    just_wrote: bool,
    /// Whether the socket has woken the connection since a read found nothing.
    woken_by_client: WakeSource,
    /// Whether the ping or token-expiry clock has. (The drain has its own, since a write in
    /// progress polls it alone.)
    woken_by_clocks: WakeSource,
    /// How many more messages the client may send now.
    budget: MessageBudget,
    /// The code of the client's close frame (1005 when it gave none), so the closing log line
    /// can tell a client that left from a network that failed.
    client_close: Option<u16>,
    /// How to compress messages, if this client negotiated it.
    compression: Option<Compression>,
    /// Counts the bytes of what this connection sends, before and after compression.
    sent: SentBytes,
}

/// What woke the connection.
enum Wake {
    /// The fan-out has something for the client, or has given up on it.
    Inbox(Next),
    /// The client sent something, or its side ended (`None`).
    Client(Option<Result<Message, tungstenite::Error>>),
    /// Time for a Ping frame.
    Ping,
    /// The client's token expired.
    Expired,
    /// This connection's moment in the drain came.
    Drained,
}

impl Connection {
    async fn run(&mut self) -> Ending {
        loop {
            let step = match poll_fn(|cx| self.poll_wake(cx)).await {
                Wake::Drained => Err(Ending::Close(close::GOING_AWAY, "server shutting down")),
                Wake::Inbox(Next::TooSlow) => {
                    Err(Ending::Close(close::TRY_AGAIN_LATER, "client too slow"))
                }
                Wake::Inbox(Next::Ended) => Err(Ending::Close(close::INTERNAL, "topic ended")),
                Wake::Inbox(Next::Frame(frame)) => self.write_batch(frame).await,
                Wake::Expired => {
                    let error = self.envelope.error(&Denied::Expired.to_string());
                    let closing = Err(Ending::Close(close::POLICY, Denied::Expired.reason()));
                    self.write_text(error).await.and(closing)
                }
                Wake::Client(Some(Ok(message))) => {
                    self.last_heard = Instant::now();
                    self.on_message(message).await
                }
                Wake::Client(Some(Err(error))) => Err(read_error(error)),
                Wake::Client(None) => Err(Ending::Gone),
                Wake::Ping => {
                    if self.last_heard.elapsed() >= self.settings.ping_interval * 3 {
                        tracing::debug!(
                            "no sign of life for three ping periods; dropping the connection"
                        );
                        Err(Ending::Gone)
                    } else {
                        self.write(Message::Ping(Default::default())).await
                    }
                }
            };
            if let Err(ending) = step {
                return ending;
            }
        }
    }

    /// Waits for the next thing to do. Frames come first after a wait, since they are most of
    /// what wakes a connection; after a write, everything else is looked at first, so a busy
    /// stream cannot starve it. The client, the drain and the clocks are polled only once they
    /// have woken the connection (see [`WakeSource`]), and every source lives as long as the
    /// connection, so a poll registers nothing anew.
    fn poll_wake(&mut self, cx: &mut Context<'_>) -> Poll<Wake> {
        let frames_first = !std::mem::take(&mut self.just_wrote);
        if frames_first {
            if let Poll::Ready(next) = self.inbox.poll_next(cx) {
                self.just_wrote = true;
                return Poll::Ready(Wake::Inbox(next));
            }
        }
        let Self {
            socket,
            drain,
            ping,
            expiry,
            woken_by_client,
            woken_by_clocks,
            ..
        } = self;
        if drain.poll_reached(cx).is_ready() {
            return Poll::Ready(Wake::Drained);
        }
        let clocks = woken_by_clocks.poll(cx, |cx| {
            if let Some(expiry) = expiry {
                if expiry.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wake::Expired);
                }
            }
            ping.poll_tick(cx).map(|_| Wake::Ping)
        });
        if clocks.is_ready() {
            return clocks;
        }
        if let Poll::Ready(message) = woken_by_client.poll(cx, |cx| socket.poll_next_unpin(cx)) {
            return Poll::Ready(Wake::Client(message));
        }
        if !frames_first {
            if let Poll::Ready(next) = self.inbox.poll_next(cx) {
                self.just_wrote = true;
                return Poll::Ready(Wake::Inbox(next));
            }
        }
        Poll::Pending
    }

    async fn on_message(&mut self, message: Message) -> Result<(), Ending> {
        if matches!(message, Message::Text(_) | Message::Binary(_)) {
            match self.budget.spend(&self.settings) {
                Allowance::Take => {}
                Allowance::Warn => {
                    let error = self
                        .envelope
                        .error(&ClientMessageError::TooFrequent.to_string());
                    return self.write_text(error).await;
                }
                Allowance::Drop => return Ok(()),
                Allowance::Close => {
                    tracing::debug!("a client kept sending past its message limit; closing");
                    return Err(Ending::Close(close::POLICY, "too many messages"));
                }
            }
        }
        let reply = match message {
            Message::Text(text) => match messages::parse_client_text(text.as_str()) {
                Ok(ClientRequest::TextPing) => Some(Frame::from_static("pong")),
                Ok(ClientRequest::Ping) => Some(messages::pong()),
                Ok(ClientRequest::GetStatus) => {
                    self.membership.request_status();
                    None
                }
                Err(error) => Some(self.envelope.error(&error.to_string())),
            },
            Message::Binary(_) => {
                Some(self.envelope.error(&ClientMessageError::Binary.to_string()))
            }
            // tungstenite answers Pings itself; a Pong is just a sign of life.
            // Reading yields whole messages; raw frames exist only for writing.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => None,
            // tungstenite queues the close reply; the next read completes the handshake.
            Message::Close(frame) => {
                self.client_close = Some(frame.map_or(1005, |frame| u16::from(frame.code)));
                // Bounded like any write: a client that closes and then stops reading must
                // not hold the connection past the write timeout or its moment in the drain.
                let Self {
                    socket,
                    give_up,
                    settings,
                    metrics,
                    drain,
                    ..
                } = self;
                return guarded(socket.flush(), settings, metrics, drain, give_up).await;
            }
        };
        match reply {
            Some(frame) => self.write_text(frame).await,
            None => Ok(()),
        }
    }

    /// Writes `first` and whatever else is queued, then flushes once.
    async fn write_batch(&mut self, first: Frame) -> Result<(), Ending> {
        self.write_frames(first, MAX_BATCH).await
    }

    /// Writes one message of the hub's own (an `error`, a `pong`), plain: they are short (RFC
    /// 7692 lets each message choose), and writing them as [`Connection::write_frames`] does
    /// would put its state into the connection's task at every place this is awaited.
    fn write_text(&mut self, frame: Frame) -> impl Future<Output = Result<(), Ending>> + '_ {
        let length = frame.len() as u64;
        self.sent.message.inc_by(length);
        self.sent.wire.inc_by(length);
        // Not async itself: the task then holds only the write's own state at each await.
        self.write(Message::Text(frame.text().clone()))
    }

    /// Writes `first` and, up to `most` frames in all, what else is queued; then flushes.
    async fn write_frames(&mut self, first: Frame, most: usize) -> Result<(), Ending> {
        let Self {
            socket,
            inbox,
            give_up,
            settings,
            metrics,
            drain,
            compression,
            sent,
            ..
        } = self;
        let write = async {
            // One place that awaits a frame's writing, so that the task holds the state of one.
            let (mut next, mut bytes, mut count) = (Some(first), 0, 0);
            while let Some(frame) = next.take() {
                let (fragments, written) = frames_of(frame, *compression, sent);
                for message in fragments {
                    socket.feed(message).await?;
                }
                bytes += written;
                count += 1;
                if count < most && bytes < MAX_BATCH_BYTES {
                    next = inbox.try_next();
                }
            }
            socket.flush().await
        };
        guarded(write, settings, metrics, drain, give_up).await
    }

    async fn write(&mut self, message: Message) -> Result<(), Ending> {
        let write = self.socket.send(message);
        guarded(
            write,
            &self.settings,
            &self.metrics,
            &mut self.drain,
            &self.give_up,
        )
        .await
    }
}

/// The frames of one message (a long one as several, see [`Fragments`]), deflated when the
/// client negotiated it and the message is long enough, and their payload's length; counted.
/// Not async: nothing of it is held while the frames are written, which keeps every
/// connection's task small.
fn frames_of(
    frame: Frame,
    compression: Option<Compression>,
    sent: &SentBytes,
) -> (Fragments, usize) {
    let deflated = compression
        .filter(|compression| frame.len() >= compression.threshold)
        .and_then(|compression| frame.deflated(|text| deflate::deflate(text, compression.level)));
    let (fragments, written) = match deflated {
        Some(deflated) => (Fragments::deflated(deflated.clone()), deflated.len()),
        None => (Fragments::of(frame.text().clone()), frame.len()),
    };
    sent.message.inc_by(frame.len() as u64);
    sent.wire.inc_by(written as u64);
    (fragments, written)
}

/// Runs a socket write, bounded by the write timeout, and abandons it when the connection's
/// moment in the drain comes or the hub gives up on the client: tungstenite keeps whole frames in its buffer, so the close frame that
/// follows still goes out intact if the client ever reads again.
async fn guarded(
    write: impl Future<Output = Result<(), tungstenite::Error>>,
    settings: &ConnectionSettings,
    metrics: &Metrics,
    drain: &mut Drain,
    give_up: &GiveUp,
) -> Result<(), Ending> {
    tokio::select! {
        // Most writes complete at once: then nothing else is polled.
        biased;
        written = timeout(settings.write_timeout, write) => match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Ending::Gone),
            Err(_) => {
                tracing::debug!("a write did not finish in time; dropping the connection");
                metrics.slow_clients_closed.inc();
                Err(Ending::Gone)
            }
        },
        () = poll_fn(|cx| drain.poll_reached(cx)) => Err(Ending::Close(close::GOING_AWAY, "server shutting down")),
        () = poll_fn(|cx| give_up.poll(cx)) => Err(Ending::Close(close::TRY_AGAIN_LATER, "client too slow")),
    }
}

/// Maps a read error to how the connection ends: an oversized frame is answered with 1009.
fn read_error(error: tungstenite::Error) -> Ending {
    use deflate::inbound::Fault;
    use tungstenite::error::ProtocolError;
    match error {
        tungstenite::Error::Io(io) => match io.get_ref().and_then(|e| e.downcast_ref::<Fault>()) {
            Some(Fault::TooBig) => Ending::Close(close::TOO_BIG, "message too big"),
            Some(Fault::NotInflatable) => {
                Ending::Close(close::INVALID_DATA, "invalid compressed data")
            }
            None => Ending::Gone,
        },
        tungstenite::Error::Capacity(_) => Ending::Close(close::TOO_BIG, "message too big"),
        // The client is there and talking, just not in UTF-8: tell it why, rather than hang up
        // as if the network had failed.
        tungstenite::Error::Utf8(_) => Ending::Close(close::INVALID_DATA, "invalid UTF-8"),
        // A peer that vanished (killed, network gone) is no protocol error of the client's.
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Ending::Gone,
        tungstenite::Error::Protocol(_) => Ending::Close(1002, "protocol error"),
        _ => Ending::Gone,
    }
}

/// Sends a close frame, then waits briefly for the client's reply, so it sees a clean close.
/// The frame goes out behind whatever the socket still holds, so a slow client gets as long as
/// any write (`send_within`); the reply gets [`CLOSE_GRACE`].
async fn close_socket(
    mut socket: WebSocket,
    code: u16,
    reason: &'static str,
    send_within: Duration,
) {
    let frame = CloseFrame {
        code: code.into(),
        reason: Utf8Bytes::from_static(reason),
    };
    let sent = timeout(send_within, socket.send(Message::Close(Some(frame)))).await;
    if matches!(sent, Ok(Ok(()))) {
        let _ = timeout(CLOSE_GRACE, async {
            while let Some(Ok(_)) = socket.next().await {}
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(message_rate: f64, message_burst: u32) -> ConnectionSettings {
        ConnectionSettings {
            ping_interval: Duration::from_secs(20),
            queue_capacity: 8,
            write_timeout: Duration::from_secs(1),
            drain_spread: Duration::ZERO,
            message_rate,
            message_burst,
            compression: None,
        }
    }

    #[test]
    fn a_burst_passes_then_one_warning_then_silence_then_the_close() {
        let settings = settings(0.001, 3);
        let mut budget = MessageBudget::new(&settings);
        let allowances: Vec<_> = (0..8).map(|_| budget.spend(&settings)).collect();
        use Allowance::*;
        assert_eq!(
            allowances,
            [Take, Take, Take, Warn, Drop, Drop, Close, Close]
        );
    }

    #[test]
    fn a_client_that_keeps_sending_too_fast_is_closed_though_tokens_trickle_in() {
        let settings = settings(20.0, 4);
        let mut budget = MessageBudget::new(&settings);
        let mut closed = false;
        // Twice the rate: a message every 25 ms of simulated time.
        for _ in 0..200 {
            budget.refilled -= Duration::from_millis(25);
            if budget.spend(&settings) == Allowance::Close {
                closed = true;
                break;
            }
        }
        assert!(closed);
    }

    #[test]
    fn tokens_come_back_with_time_and_no_rate_means_no_limit() {
        let settings = settings(1000.0, 1);
        let mut budget = MessageBudget::new(&settings);
        assert_eq!(budget.spend(&settings), Allowance::Take);
        budget.refilled -= Duration::from_millis(10);
        assert_eq!(budget.spend(&settings), Allowance::Take);
        let unlimited = self::settings(0.0, 0);
        let mut budget = MessageBudget::new(&unlimited);
        assert!((0..10_000).all(|_| budget.spend(&unlimited) == Allowance::Take));
    }
}
