//! A WebSocket client as a monitoring panel would be, reading one message at a time.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use vwed_hub::ws::deflate::offer::OFFER;
use vwed_hub::ws::deflate::Inflating;

use crate::{TestHub, PATIENCE};

/// A test client's socket: compressed messages inflated, when it negotiated compression.
type Socket = WebSocketStream<Inflating<MaybeTlsStream<TcpStream>>>;

/// Whether the test clients offer permessage-deflate: `VWED_E2E_DEFLATE=1` runs every test
/// with clients that negotiate compression (`.ci/test` runs the behaviour suites both ways).
pub fn clients_offer_deflate() -> bool {
    std::env::var("VWED_E2E_DEFLATE").is_ok_and(|value| value == "1")
}

/// The opening handshake for `request` over `stream`, offering permessage-deflate when the run
/// asks for it (and then failing the test unless the hub agreed).
async fn handshake(
    request: Request,
    stream: MaybeTlsStream<TcpStream>,
) -> Result<(Socket, Response), tungstenite::Error> {
    handshake_offering(request, stream, clients_offer_deflate()).await
}

/// [`handshake`], offering permessage-deflate or not as `offer` says.
async fn handshake_offering(
    mut request: Request,
    stream: MaybeTlsStream<TcpStream>,
    offer: bool,
) -> Result<(Socket, Response), tungstenite::Error> {
    if offer {
        request.headers_mut().insert(
            "sec-websocket-extensions",
            OFFER.parse().expect("a header value"),
        );
    }
    let (ws, response) =
        tokio_tungstenite::client_async(request, Inflating::after_http_answer(stream)).await?;
    if offer {
        let agreed = response
            .headers()
            .get("sec-websocket-extensions")
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("permessage-deflate"));
        assert!(agreed, "the hub declined permessage-deflate: {response:?}");
    }
    Ok((ws, response))
}

/// A plain TCP connection to the host and port `request` names.
async fn tcp_for(request: &Request) -> Result<MaybeTlsStream<TcpStream>, tungstenite::Error> {
    let uri = request.uri();
    let host = uri.host().unwrap_or("127.0.0.1").trim_matches(['[', ']']);
    let port = uri.port_u16().unwrap_or(80);
    let tcp = TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    Ok(MaybeTlsStream::Plain(tcp))
}

/// What a client saw next.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// A JSON text message.
    Json(Value),
    /// A text message that is not JSON.
    Text(String),
    /// A binary message.
    Binary(Vec<u8>),
    /// A close frame with its code and reason.
    Close(Option<(u16, String)>),
    /// The connection ended without a close frame.
    Ended,
}

/// A connected WebSocket client.
pub struct Client {
    ws: Socket,
}

impl Client {
    /// Connects to `path` on `hub` (e.g. `/ws/task-execution/t-1?interval=1`).
    pub async fn connect(hub: &TestHub, path: &str) -> Self {
        Self::connect_url(&hub.url(path)).await
    }

    /// Connects with a 4 KiB socket receive buffer, so that a client that stops reading falls
    /// behind after little data instead of after megabytes of kernel buffering. It never offers
    /// compression, which would shrink the megabytes it is meant to fall behind on.
    pub async fn connect_with_small_buffer(hub: &TestHub, path: &str) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket.set_recv_buffer_size(4096).expect("set SO_RCVBUF");
        let stream = socket.connect(hub.addr()).await.expect("connect");
        let request = hub.url(path).into_client_request().expect("a valid URL");
        let (ws, _) = handshake_offering(request, MaybeTlsStream::Plain(stream), false)
            .await
            .expect("handshake");
        Self { ws }
    }

    /// Connects with extra request headers (`Origin`, `X-Forwarded-For`, ...); the HTTP status
    /// when the hub refuses the handshake.
    pub async fn try_connect_with_headers(
        hub: &TestHub,
        path: &str,
        headers: &[(&'static str, &str)],
    ) -> Result<Self, u16> {
        let mut request = hub.url(path).into_client_request().expect("a valid URL");
        for (name, value) in headers {
            request
                .headers_mut()
                .insert(*name, value.parse().expect("a valid header value"));
        }
        match Self::connect_request(request).await {
            Ok((client, _)) => Ok(client),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(error) => panic!("cannot connect to {path}: {error}"),
        }
    }

    /// Connects with `request` as it is (headers the test sets); the hub's answer too, for a
    /// test to inspect.
    pub async fn connect_request(request: Request) -> Result<(Self, Response), tungstenite::Error> {
        let stream = tcp_for(&request).await?;
        let (ws, response) = handshake(request, stream).await?;
        Ok((Self { ws }, response))
    }

    /// Connects over `tls` (a TLS connection to the hub) to `path`, as `wss://localhost`.
    pub async fn connect_over_tls(
        tls: tokio_rustls::client::TlsStream<TcpStream>,
        path: &str,
    ) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let request = format!("wss://localhost{path}").into_client_request()?;
        let (ws, _) = handshake(request, MaybeTlsStream::Rustls(tls)).await?;
        Ok(Self { ws })
    }

    /// Connects to a full `ws://` URL.
    pub async fn connect_url(url: &str) -> Self {
        let request = url.into_client_request().expect("a valid URL");
        match Self::connect_request(request).await {
            Ok((client, _)) => client,
            Err(e) => panic!("cannot connect to {url}: {e}"),
        }
    }

    /// The next message (Ping and Pong frames skipped), failing the test after [`PATIENCE`].
    pub async fn next(&mut self) -> Received {
        match self.next_within(PATIENCE).await {
            Some(received) => received,
            None => panic!("no message within {PATIENCE:?}"),
        }
    }

    /// The next message within `wait`, or `None`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Received> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let message = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            return Some(match message {
                Some(Ok(Message::Text(text))) => match serde_json::from_str(text.as_str()) {
                    Ok(value) => Received::Json(value),
                    Err(_) => Received::Text(text.as_str().to_owned()),
                },
                Some(Ok(Message::Binary(data))) => Received::Binary(data.to_vec()),
                Some(Ok(Message::Close(frame))) => Received::Close(
                    frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned())),
                ),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Err(_)) | None => Received::Ended,
            });
        }
    }

    /// The next message, which must be JSON.
    pub async fn next_json(&mut self) -> Value {
        match self.next().await {
            Received::Json(value) => value,
            other => panic!("expected a JSON message, got {other:?}"),
        }
    }

    /// The next message, which must be JSON of `type`.
    pub async fn next_of_type(&mut self, kind: &str) -> Value {
        let value = self.next_json().await;
        assert_eq!(value["type"], kind, "unexpected message: {value}");
        value
    }

    /// Fails the test if any message arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some(received) = self.next_within(wait).await {
            panic!("expected no message for {wait:?}, got {received:?}");
        }
    }

    /// The close code the server ends the connection with (skipping messages before it).
    pub async fn close_code(&mut self) -> u16 {
        loop {
            let code = match self.next().await {
                Received::Close(Some((code, _))) => code,
                Received::Close(None) => 1005,
                Received::Ended => return 1006,
                _ => continue,
            };
            // Reading on sends tungstenite's close reply and completes the handshake.
            while let Ok(Some(Ok(_))) = tokio::time::timeout(PATIENCE, self.ws.next()).await {}
            return code;
        }
    }

    /// Checks the connection is open and served: a text `ping` gets a text `pong`.
    pub async fn assert_alive(&mut self) {
        self.send_text("ping").await;
        assert_eq!(self.next().await, Received::Text("pong".into()), "no pong");
    }

    /// Sends a text message.
    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send a text message");
    }

    /// Sends a raw message.
    pub async fn send(&mut self, message: Message) {
        self.ws.send(message).await.expect("send a message");
    }

    /// Closes the connection normally and waits for the server's reply.
    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))
            .await;
        while let Ok(Some(Ok(_))) = tokio::time::timeout(PATIENCE, self.ws.next()).await {}
    }
}
