//! Connection tokens as an issuer would mint them, for the hub's `--jwt-*` settings.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// The HS256 secret the token tests configure.
pub const SECRET: &str = "a test secret, long enough for HS256 (32+ bytes)";

/// Seconds since the epoch, `offset` from now.
pub fn epoch_in(offset: i64) -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs();
    i64::try_from(now).expect("a sane clock") + offset
}

/// Claims allowing `scenes` and `tasks`, expiring in an hour.
pub fn claims(scenes: &[&str], tasks: &[&str]) -> Value {
    json!({ "scenes": scenes, "tasks": tasks, "exp": epoch_in(3600) })
}

/// `claims` signed with [`SECRET`] (HS256).
pub fn hs256(claims: &Value) -> String {
    signed(
        claims,
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
}

/// `claims` signed with `key` under `algorithm`.
pub fn signed(claims: &Value, algorithm: Algorithm, key: &EncodingKey) -> String {
    encode(&Header::new(algorithm), claims, key).expect("claims encode")
}

/// `claims` with `"alg": "none"` and no signature: the classic forgery.
pub fn unsigned(claims: &Value) -> String {
    let part = |value: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string().as_bytes())
    };
    format!(
        "{}.{}.",
        part(&json!({ "alg": "none", "typ": "JWT" })),
        part(claims)
    )
}

/// A test key pair's file, e.g. `rsa-public.pem` (see `tests/fixtures/jwt/README.md`).
pub fn key_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/jwt")
        .join(name)
}

/// The private key of a test key pair, for signing.
pub fn private_key(name: &str, algorithm: Algorithm) -> EncodingKey {
    let pem = std::fs::read(key_file(name)).expect("the test key exists");
    match algorithm {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        _ => EncodingKey::from_ec_pem(&pem),
    }
    .expect("a valid test key")
}
