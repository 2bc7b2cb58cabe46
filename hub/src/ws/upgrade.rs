//! The WebSocket opening handshake (RFC 6455 section 4.2) on the hub's HTTP/1.1 server.
//!
//! The hub checks the request and answers 101 itself, rather than through axum's extractor,
//! so that each connection is tungstenite's own stream: only that can write one message as
//! several frames. A scene's state runs to hundreds of kilobytes, and tungstenite keeps its
//! write buffer at the largest size it ever held, so one large frame per state would cost every
//! storage panel that much memory for as long as it stays (see [`super::connection`]).

use std::fmt;
use std::future::Future;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use super::deflate::{offer, Inflating};

/// A client's connection once the handshake is done.
pub type WebSocket = WebSocketStream<Inflating<TokioIo<Upgraded>>>;

/// A valid opening handshake, not answered yet.
pub struct Handshake {
    /// The client's nonce, which the answer must hash.
    key: HeaderValue,
    /// Whether the client offered the subprotocol the hub speaks; browsers that offer any
    /// subprotocol fail the connection unless the answer selects one of them.
    offers_protocol: bool,
    /// The hub's answer to the client's permessage-deflate offer, if it made one the hub
    /// accepts.
    deflate_answer: Option<&'static str>,
    /// Resolves to the socket once hyper has sent the 101 answer.
    on_upgrade: OnUpgrade,
}

/// Why a request is not a WebSocket handshake the hub accepts. The texts are what the client
/// reads in the response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAHandshake {
    MethodNotGet,
    NoConnectionUpgrade,
    NoUpgradeWebsocket,
    KeyMissing,
    KeyInvalid,
    VersionNot13,
    /// The connection cannot be taken over (HTTP/2, or a request hyper will not upgrade).
    NotUpgradable,
}

impl fmt::Display for NotAHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::MethodNotGet => "Request method must be `GET`",
            Self::NoConnectionUpgrade => "Connection header did not include 'upgrade'",
            Self::NoUpgradeWebsocket => "`Upgrade` header did not include 'websocket'",
            Self::KeyMissing => "`Sec-WebSocket-Key` header missing",
            Self::KeyInvalid => "`Sec-WebSocket-Key` header is not 16 bytes in base64",
            Self::VersionNot13 => "`Sec-WebSocket-Version` header did not include '13'",
            Self::NotUpgradable => "this connection cannot be upgraded",
        })
    }
}

impl NotAHandshake {
    /// 400 for a handshake that is malformed; 426 for a request that is not one at all (or
    /// cannot become one here), which is told to upgrade.
    pub fn status(self) -> StatusCode {
        match self {
            Self::MethodNotGet | Self::NotUpgradable => StatusCode::UPGRADE_REQUIRED,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl IntoResponse for NotAHandshake {
    fn into_response(self) -> Response {
        let mut response = (
            self.status(),
            [(header::UPGRADE, "websocket")],
            format!("{self}: this path serves WebSocket connections only\n"),
        )
            .into_response();
        if self == Self::VersionNot13 {
            // Section 4.4: say which version the hub speaks.
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        response
    }
}

impl<S: Sync> FromRequestParts<S> for Handshake {
    type Rejection = NotAHandshake;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if parts.method != Method::GET {
            return Err(NotAHandshake::MethodNotGet);
        }
        let headers = &parts.headers;
        if !lists(headers, header::CONNECTION, "upgrade") {
            return Err(NotAHandshake::NoConnectionUpgrade);
        }
        if !lists(headers, header::UPGRADE, "websocket") {
            return Err(NotAHandshake::NoUpgradeWebsocket);
        }
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or(NotAHandshake::KeyMissing)?
            .clone();
        // 16 random bytes in base64 (section 4.1): a client that sends anything else could not
        // check the answer, and is not speaking this protocol.
        let decoded = base64::engine::general_purpose::STANDARD.decode(key.as_bytes());
        if decoded.map_or(true, |nonce| nonce.len() != 16) {
            return Err(NotAHandshake::KeyInvalid);
        }
        let mut versions = headers.get_all(header::SEC_WEBSOCKET_VERSION).iter();
        let version = versions.next().map(|v| v.as_bytes().trim_ascii());
        if version != Some(b"13".as_slice()) || versions.next().is_some() {
            return Err(NotAHandshake::VersionNot13);
        }
        // Subprotocol names are compared exactly (section 4.1): one offered as `VWED` is not
        // ours, and echoing `vwed` would make the browser fail the connection.
        let offers_protocol = headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .flat_map(|value| value.as_bytes().split(|&byte| byte == b','))
            .any(|item| item.trim_ascii() == crate::auth::SUBPROTOCOL.as_bytes());
        let deflate_answer = offer::answer(
            headers
                .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
                .iter()
                .map(HeaderValue::as_bytes),
        );
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(NotAHandshake::NotUpgradable)?;
        Ok(Self {
            key,
            offers_protocol,
            deflate_answer,
            on_upgrade,
        })
    }
}

impl Handshake {
    /// The 101 answer, and the connection's whole life to run beside it: once hyper hands the
    /// socket over, `serve` on it. A connection that fails in between is dropped, which the
    /// client sees as a close. The caller spawns the life, and so decides what tracks it.
    /// With `compress`, an acceptable permessage-deflate offer is taken (the socket says so:
    /// [`Inflating::negotiated`]).
    pub fn accept<F, Fut>(
        self,
        config: WebSocketConfig,
        compress: bool,
        serve: F,
    ) -> (Response, impl Future<Output = ()> + Send + 'static)
    where
        F: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Self {
            key,
            offers_protocol,
            deflate_answer,
            on_upgrade,
        } = self;
        let deflate_answer = deflate_answer.filter(|_| compress);
        let deflate = deflate_answer.is_some();
        // Compressed client frames are held to the same limit as plain ones, inflated.
        let limit = config.max_frame_size.unwrap_or(usize::MAX);
        let life = async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let io = Inflating::new(TokioIo::new(upgraded), deflate, limit);
                    let socket =
                        WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
                    serve(socket).await;
                }
                Err(error) => tracing::debug!(%error, "a WebSocket upgrade failed"),
            }
        };
        let mut response = (
            StatusCode::SWITCHING_PROTOCOLS,
            [
                (header::CONNECTION, HeaderValue::from_static("upgrade")),
                (header::UPGRADE, HeaderValue::from_static("websocket")),
            ],
        )
            .into_response();
        let accept = derive_accept_key(key.as_bytes());
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            response
                .headers_mut()
                .insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if let Some(answer) = deflate_answer {
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_EXTENSIONS,
                HeaderValue::from_static(answer),
            );
        }
        if offers_protocol {
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(crate::auth::SUBPROTOCOL),
            );
        }
        (response, life)
    }
}

/// Whether the comma-separated list in any `name` header holds `token`, ignoring ASCII case.
fn lists(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&byte| byte == b','))
        .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_hashes_the_key_as_rfc_6455_shows() {
        // The worked example of RFC 6455 section 1.3.
        assert_eq!(
            derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn header_lists_match_whole_tokens_in_any_case() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        headers.append(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("bearer.abc,vwed"),
        );
        assert!(lists(&headers, header::CONNECTION, "upgrade"));
        assert!(lists(&headers, header::SEC_WEBSOCKET_PROTOCOL, "vwed"));
        assert!(!lists(&headers, header::SEC_WEBSOCKET_PROTOCOL, "vwe"));
        assert!(!lists(&headers, header::UPGRADE, "websocket"));
    }
}
