//! HTTP routes: the four WebSocket endpoints under `/ws`, the monitoring page, and the probes.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::fanout::FanOut;
use crate::page;
use crate::ws::admission::Admission;
use crate::ws::connection::Rejection;
use crate::ws::upgrade::{Handshake, NotAHandshake};
use crate::ws::{connection, endpoint, ConnectionSettings, Endpoint};

/// Largest client frame or message accepted; larger ones close the connection with 1009.
pub const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

/// Per-connection read buffer, allocated with the connection. Clients send little (`ping`,
/// `get_status`), so a small one keeps idle connections cheap; a larger message grows it as
/// needed. tungstenite's default is 128 KiB.
const READ_BUFFER: usize = 1024;

/// Bytes gathered before a write reaches the socket; flushes send the rest. tungstenite's
/// write buffer grows to this plus one frame (see `ws::fragments`) and keeps that size, so it
/// is small: 1,000 storage panels on a 5,000-location scene hold 51 MB in all with 8 KiB,
/// 63 MB with 16 KiB, and 288 MB when a state went out as one frame.
const WRITE_BUFFER: usize = 8 * 1024;

/// What every request handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The topics connections join.
    pub fanout: Arc<FanOut>,
    /// Ping period, queue size, write timeout.
    pub settings: ConnectionSettings,
    /// Cancelled when the hub begins to shut down.
    pub shutdown: CancellationToken,
    /// Tracks connection tasks, so shutdown can wait for their closes.
    pub connections: TaskTracker,
    /// Origin allow-list and connection limits.
    pub admission: Arc<Admission>,
    /// Connection tokens, when configured.
    pub auth: Arc<Auth>,
}

/// The hub's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/ws/{*path}", any(websocket))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .merge(page::routes())
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found") })
        .with_state(state)
}

async fn websocket(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(query): RawQuery,
    handshake: Result<Handshake, NotAHandshake>,
) -> Response {
    // The raw path keeps the id percent-encoded, so `%2F` stays inside the id's segment.
    let rest = uri.path().strip_prefix("/ws/").unwrap_or_default();
    let (segment, raw_id) = rest.split_once('/').unwrap_or((rest, ""));
    let Some(endpoint) = Endpoint::from_segment(segment) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    if raw_id.contains('/') {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    let handshake = match handshake {
        Ok(handshake) => handshake,
        Err(not_a_handshake) => return not_a_handshake.into_response(),
    };
    let metrics = state.fanout.metrics().clone();
    if !state.admission.origin_allowed(&headers) {
        tracing::info!(endpoint = endpoint.segment(), %peer, origin = ?headers.get(header::ORIGIN), "origin not allowed");
        metrics.refused("origin not allowed");
        return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
    }
    let client_ip = state.admission.client_ip(peer, &headers);
    let place = state.admission.admit(client_ip);
    // Checked in the order a client fixes them: come back later, bring a token, ask properly,
    // ask for what the token allows.
    let admitted = place.map_err(Rejection::from).and_then(|place| {
        let grant = state.auth.authenticate(&headers, query.as_deref())?;
        let watch = endpoint::parse(endpoint, raw_id, query.as_deref())?;
        grant.permits(endpoint.kind(), &watch.id)?;
        Ok((place, watch, grant.remaining()))
    });
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_CLIENT_MESSAGE))
        .max_frame_size(Some(MAX_CLIENT_MESSAGE))
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER);
    let raw_id = raw_id.to_owned();
    let tracker = state.connections.clone();
    let compress = state.settings.compression.is_some();
    let (response, life) = handshake.accept(config, compress, move |socket| async move {
        let peer = SocketAddr::new(client_ip, peer.port());
        match admitted {
            Ok((_place, watch, expires_in)) => {
                connection::serve(
                    socket,
                    watch,
                    state.fanout,
                    state.settings,
                    state.shutdown,
                    peer,
                    expires_in,
                )
                .await;
            }
            Err(rejection) => {
                let refusal =
                    connection::refuse(socket, endpoint, &raw_id, rejection, peer, &metrics);
                // Boxed: a refusal is rare, and would otherwise size every connection's task.
                Box::pin(refusal).await;
            }
        }
    });
    // Tracked from here, not from the upgrade: a handshake that completes as the hub begins to
    // drain is still waited for, and closed with the others.
    tracker.spawn(life);
    response
}

async fn ready(State(state): State<AppState>) -> Response {
    if state.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else if state.fanout.broker_connected() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "broker not connected").into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.fanout.metrics().render(),
    )
        .into_response()
}
