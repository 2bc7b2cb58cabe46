//! NATS decentralized authentication made at test time: an operator, an account and users as
//! nkeys, their JWTs signed as `nsc` signs them, and `.creds` files, for a `nats-server` in
//! operator mode with the account preloaded in a memory resolver.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use nkeys::KeyPair;
use serde_json::{json, Value};

/// An operator with one account, as a server configuration and user credentials.
pub struct Operator {
    /// Signs the operator's own JWT and the account's.
    operator: KeyPair,
    /// Signs user JWTs.
    account: KeyPair,
}

impl Default for Operator {
    fn default() -> Self {
        Self::new()
    }
}

impl Operator {
    /// New keys for an operator and its account.
    pub fn new() -> Self {
        Self {
            operator: KeyPair::new_operator(),
            account: KeyPair::new_account(),
        }
    }

    /// The `nats-server` configuration lines for operator mode with this operator and its
    /// account in a memory resolver.
    pub fn server_config(&self) -> String {
        let operator_jwt = sign(
            &self.operator,
            &self.operator.public_key(),
            "vwed-test-operator",
            json!({"type": "operator", "version": 2}),
        );
        let account_jwt = sign(
            &self.operator,
            &self.account.public_key(),
            "vwed-test-account",
            json!({
                "type": "account",
                "version": 2,
                "limits": {
                    "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                    "wildcards": true, "conn": -1, "leaf": -1
                },
                "default_permissions": {"pub": {}, "sub": {}}
            }),
        );
        format!(
            "operator: \"{operator_jwt}\"\nresolver: MEMORY\nresolver_preload: {{\n  {}: \"{account_jwt}\"\n}}\n",
            self.account.public_key()
        )
    }

    /// A `.creds` file's text for a new user of this operator's account.
    pub fn user_creds(&self, name: &str) -> String {
        user_creds_signed_by(&self.account, name)
    }
}

/// A `.creds` file's text for a new user whose JWT `account` signed (an account the server
/// may not know, for a refused login).
pub fn user_creds_signed_by(account: &KeyPair, name: &str) -> String {
    let user = KeyPair::new_user();
    let jwt = sign(
        account,
        &user.public_key(),
        name,
        json!({
            "type": "user",
            "version": 2,
            "pub": {}, "sub": {},
            "subs": -1, "data": -1, "payload": -1
        }),
    );
    let seed = user.seed().expect("a user seed");
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
}

/// A JWT of `nats` claims about `subject`, issued and signed by `issuer`.
fn sign(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> String {
    let header = json!({"typ": "JWT", "alg": "ed25519-nkey"});
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let claims = json!({
        // A JWT's id; the server reads but does not check it.
        "jti": format!("{subject}-{now}"),
        "iat": now,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = issuer
        .sign(signing_input.as_bytes())
        .expect("an ed25519 signature");
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}
