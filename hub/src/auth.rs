//! Who may watch what: JWT connection tokens, checked before the upgrade's first byte of data.
//!
//! Off unless a key is configured. With a key, every WebSocket client presents a token naming
//! the scenes and task records it may watch:
//!
//! ```json
//! { "scenes": ["warehouse-north"], "tasks": ["*"], "exp": 1767225600 }
//! ```
//!
//! `*` allows every id of that kind; a missing list allows none. `exp` is required and `nbf`
//! honoured, both with a small leeway; a connection is closed when its token expires.
//! The token travels as `?token=`, as `Authorization: Bearer`, or, since browsers cannot set
//! headers on a WebSocket, as the subprotocol `bearer.<token>` offered beside [`SUBPROTOCOL`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use axum::http::{header, HeaderMap};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::messages::Kind;

/// The subprotocol the hub selects when a client offers it; a browser sends its token as a
/// second offered subprotocol, `bearer.<token>`, and must offer this one too, since a browser
/// fails a handshake whose answer selects none of its offers.
pub const SUBPROTOCOL: &str = "vwed";

/// How an offered subprotocol marks itself as carrying the token.
const SUBPROTOCOL_TOKEN_PREFIX: &str = "bearer.";

/// Shortest HS256 secret accepted: RFC 7518 §3.2 asks for a key at least as long as the hash.
const MIN_SECRET_BYTES: usize = 32;

/// How tokens are checked, as configured.
#[derive(Debug, Clone, Default)]
pub struct AuthRules {
    /// The key tokens are signed with; `None` turns authentication off.
    pub key: Option<TokenKey>,
    /// How far `exp` and `nbf` may be off, for clocks that disagree a little.
    pub leeway: Duration,
    /// When set, tokens must carry this `iss`.
    pub issuer: Option<String>,
    /// When set, tokens must carry this `aud`.
    pub audience: Option<String>,
}

/// The key that verifies tokens; it also fixes the one algorithm accepted, so a token cannot
/// choose how it is checked (`alg: none`, or HS256 signed with a public key).
#[derive(Clone)]
pub enum TokenKey {
    /// A secret shared with whoever issues tokens: HS256.
    Secret(String),
    /// A PEM file with the issuer's public key: RS256 for an RSA key, ES256 or ES384 for an EC
    /// key (P-256 or P-384).
    PublicKeyFile(PathBuf),
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenKey::Secret(_) => f.write_str("Secret(<redacted>)"),
            TokenKey::PublicKeyFile(path) => f.debug_tuple("PublicKeyFile").field(path).finish(),
        }
    }
}

/// Checks tokens, or lets everyone in when authentication is off.
pub struct Auth {
    /// `None` when authentication is off.
    verifier: Option<Verifier>,
}

/// A configured key and what a token must satisfy.
struct Verifier {
    /// Verifies signatures.
    key: DecodingKey,
    /// Algorithm, `exp`/`nbf` with leeway, issuer and audience.
    validation: Validation,
    /// Added to `exp` for the moment a connection closes, as for the check at connect.
    leeway: Duration,
}

/// What one token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Task record ids the holder may watch.
    tasks: Scope,
    /// Scene ids the holder may watch.
    scenes: Scope,
    /// When the token stops being valid (`exp` plus the leeway); `None` without authentication.
    expires: Option<SystemTime>,
}

/// The ids of one kind a token allows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    /// Every id (`*`).
    All,
    /// These ids only.
    Only(HashSet<String>),
}

/// Why a client may not watch what it asked for. The text is the `error` message sent before
/// the close; it names the cause but never echoes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No token in the query, the `Authorization` header or the subprotocols.
    #[error(
        "缺少访问令牌: 请通过 token 参数、Authorization: Bearer 请求头或 bearer.<令牌> 子协议提供"
    )]
    Missing,
    /// Not a token this hub accepts; the cause says which check failed.
    #[error("访问令牌无效: {0}")]
    Invalid(&'static str),
    /// Past its `exp` (and the leeway).
    #[error("访问令牌已过期")]
    Expired,
    /// Before its `nbf` (less the leeway).
    #[error("访问令牌尚未生效")]
    NotYetValid,
    /// A valid token that does not name this key.
    #[error("{}", forbidden_text(*.0))]
    Forbidden(Kind),
}

fn forbidden_text(kind: Kind) -> &'static str {
    match kind {
        Kind::Task => "无权访问该任务记录",
        Kind::Scene => "无权访问该场景的库位数据",
    }
}

impl Denied {
    /// The close frame's reason, and the cause in metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Denied::Missing => "token missing",
            Denied::Invalid(_) => "token invalid",
            Denied::Expired => "token expired",
            Denied::NotYetValid => "token not yet valid",
            Denied::Forbidden(_) => "not authorised",
        }
    }
}

/// The claims the hub reads; any others are ignored.
#[derive(Debug, Deserialize)]
struct Claims {
    /// Scene ids, or `*`.
    #[serde(default)]
    scenes: Vec<String>,
    /// Task record ids, or `*`.
    #[serde(default)]
    tasks: Vec<String>,
    /// Seconds since the epoch. Required, but by the validation, which says so more clearly
    /// than a failed deserialization would.
    exp: Option<u64>,
}

impl Auth {
    /// Everyone may watch everything.
    pub fn disabled() -> Self {
        Self { verifier: None }
    }

    /// Checks tokens under `rules`; reads the key file now, so a bad one stops the start.
    pub fn new(rules: &AuthRules) -> anyhow::Result<Self> {
        let Some(key) = &rules.key else {
            return Ok(Self::disabled());
        };
        let (key, algorithms) = match key {
            TokenKey::Secret(secret) => {
                if secret.len() < MIN_SECRET_BYTES {
                    bail!(
                        "the JWT secret is {} bytes; HS256 needs at least {MIN_SECRET_BYTES} \
                         (e.g. `openssl rand -base64 48`)",
                        secret.len()
                    );
                }
                (
                    DecodingKey::from_secret(secret.as_bytes()),
                    vec![Algorithm::HS256],
                )
            }
            TokenKey::PublicKeyFile(path) => public_key(path)?,
        };
        let mut validation = Validation::default();
        validation.algorithms = algorithms;
        validation.leeway = rules.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        if let Some(issuer) = &rules.issuer {
            validation.set_issuer(&[issuer]);
        }
        match &rules.audience {
            Some(audience) => validation.set_audience(&[audience]),
            // Without a configured audience, a token's `aud` is not checked.
            None => validation.validate_aud = false,
        }
        Ok(Self {
            verifier: Some(Verifier {
                key,
                validation,
                leeway: rules.leeway,
            }),
        })
    }

    /// Whether clients must present tokens.
    pub fn is_enabled(&self) -> bool {
        self.verifier.is_some()
    }

    /// What the request's token allows; everything when authentication is off.
    pub fn authenticate(&self, headers: &HeaderMap, query: Option<&str>) -> Result<Grant, Denied> {
        let Some(verifier) = &self.verifier else {
            return Ok(Grant::everything());
        };
        let token = presented_token(headers, query).ok_or(Denied::Missing)?;
        // Told apart here, since afterwards the same JSON error means bad claims: a header
        // that names an algorithm this library does not know (`none`) from one that is junk.
        jsonwebtoken::decode_header(&token).map_err(|_| {
            if names_an_algorithm(&token) {
                Denied::Invalid("签名算法不被接受")
            } else {
                Denied::Invalid("格式错误")
            }
        })?;
        let claims = jsonwebtoken::decode::<Claims>(&token, &verifier.key, &verifier.validation)
            .map_err(|error| refusal(error.kind()))?
            .claims;
        Ok(Grant {
            tasks: Scope::from_claim(claims.tasks),
            scenes: Scope::from_claim(claims.scenes),
            expires: claims
                .exp
                .map(|exp| UNIX_EPOCH + Duration::from_secs(exp) + verifier.leeway),
        })
    }
}

impl Grant {
    /// Everything, for ever: what every client has without authentication.
    pub fn everything() -> Self {
        Self {
            tasks: Scope::All,
            scenes: Scope::All,
            expires: None,
        }
    }

    /// Whether the holder may watch `id` of `kind`.
    pub fn permits(&self, kind: Kind, id: &str) -> Result<(), Denied> {
        let scope = match kind {
            Kind::Task => &self.tasks,
            Kind::Scene => &self.scenes,
        };
        match scope {
            Scope::All => Ok(()),
            Scope::Only(ids) if ids.contains(id) => Ok(()),
            Scope::Only(_) => Err(Denied::Forbidden(kind)),
        }
    }

    /// How long a connection on this grant may stay open; `None` for ever.
    pub fn remaining(&self) -> Option<Duration> {
        self.expires.map(|expires| {
            expires
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
        })
    }
}

impl Scope {
    fn from_claim(ids: Vec<String>) -> Self {
        if ids.iter().any(|id| id == "*") {
            Scope::All
        } else {
            Scope::Only(ids.into_iter().collect())
        }
    }
}

/// The token from, in order: `Authorization: Bearer`, a `bearer.` subprotocol, `?token=`.
fn presented_token(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    let from_header = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find_map(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        });
    let from_subprotocol = || {
        headers
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .find_map(|offer| offer.trim().strip_prefix(SUBPROTOCOL_TOKEN_PREFIX))
            .map(str::to_owned)
    };
    let from_query = || {
        form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .find(|(name, _)| name == "token")
            .map(|(_, value)| value.into_owned())
    };
    from_header
        .or_else(from_subprotocol)
        .or_else(from_query)
        .filter(|token| !token.is_empty())
}

/// Whether the token's header is a JSON object with a string `alg`.
fn names_an_algorithm(token: &str) -> bool {
    use base64::Engine;
    let header = token.split('.').next().unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()
        .and_then(|json| serde_json::from_slice::<serde_json::Value>(&json).ok())
        .is_some_and(|header| header.get("alg").is_some_and(serde_json::Value::is_string))
}

/// What to tell a client whose token failed `jsonwebtoken`'s checks.
fn refusal(kind: &ErrorKind) -> Denied {
    match kind {
        ErrorKind::ExpiredSignature => Denied::Expired,
        ErrorKind::ImmatureSignature => Denied::NotYetValid,
        ErrorKind::InvalidSignature => Denied::Invalid("签名不符"),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            Denied::Invalid("签名算法不被接受")
        }
        ErrorKind::MissingRequiredClaim(_) => Denied::Invalid("缺少 exp 声明"),
        ErrorKind::InvalidIssuer => Denied::Invalid("签发者 (iss) 不符"),
        ErrorKind::InvalidAudience => Denied::Invalid("受众 (aud) 不符"),
        ErrorKind::Json(_) => Denied::Invalid("声明格式错误: scenes 与 tasks 须为字符串数组"),
        _ => Denied::Invalid("格式错误"),
    }
}

/// The decoding key in a PEM file, and the algorithms its type implies.
fn public_key(path: &Path) -> anyhow::Result<(DecodingKey, Vec<Algorithm>)> {
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read the JWT public key {}", path.display()))?;
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok((key, vec![Algorithm::RS256]));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        // The token's ES256 or ES384 must match the key's curve, or its signature fails.
        return Ok((key, vec![Algorithm::ES256, Algorithm::ES384]));
    }
    bail!(
        "{} holds no RSA or EC public key in PEM form (expected -----BEGIN PUBLIC KEY-----)",
        path.display()
    )
}
