//! The `--nats-*` flags that authenticate the hub to NATS and secure the connection, mapped
//! onto the SDK's [`NatsSecurity`], which the hub, its demo and the demo binary all apply the
//! same way.

use std::fmt;
use std::path::PathBuf;

use vwed_publisher::NatsSecurity;

/// How the hub authenticates to NATS and secures the connection. Clap refuses two ways to
/// authenticate at once, and one half of a pair without the other.
#[derive(Clone, clap::Args)]
#[command(next_help_heading = "NATS authentication and TLS")]
pub struct NatsFlags {
    /// User name for NATS (servers with `authorization { users = [...] }`); needs
    /// --nats-password.
    #[arg(long, env = "VWED_NATS_USER", requires = "nats_password",
          conflicts_with_all = ["nats_token", "nats_nkey", "nats_creds"])]
    pub nats_user: Option<String>,

    /// Password of --nats-user. Prefer the environment variable to the command line, where
    /// other users of the machine can read it.
    #[arg(
        long,
        env = "VWED_NATS_PASSWORD",
        requires = "nats_user",
        hide_env_values = true
    )]
    pub nats_password: Option<String>,

    /// Token for NATS (servers with `authorization { token = ... }`). Prefer the environment
    /// variable to the command line.
    #[arg(long, env = "VWED_NATS_TOKEN", hide_env_values = true,
          conflicts_with_all = ["nats_nkey", "nats_creds"])]
    pub nats_token: Option<String>,

    /// File holding a user nkey seed (`SU...`), for servers that list nkey users.
    #[arg(
        long,
        env = "VWED_NATS_NKEY",
        value_name = "SEED_FILE",
        conflicts_with = "nats_creds"
    )]
    pub nats_nkey: Option<PathBuf>,

    /// Credentials file (user JWT and seed, as `nsc` writes it), for servers in operator mode.
    #[arg(long, env = "VWED_NATS_CREDS", value_name = "CREDS_FILE")]
    pub nats_creds: Option<PathBuf>,

    /// PEM file of the certificate authorities that signed the NATS servers' certificates
    /// (instead of the system's roots).
    #[arg(long, env = "VWED_NATS_TLS_CA", value_name = "PEM_FILE")]
    pub nats_tls_ca: Option<PathBuf>,

    /// PEM client certificate chain for servers that verify clients (mutual TLS); needs
    /// --nats-tls-key. Read again on each reconnect, so renewed files are picked up.
    #[arg(
        long,
        env = "VWED_NATS_TLS_CERT",
        value_name = "PEM_FILE",
        requires = "nats_tls_key"
    )]
    pub nats_tls_cert: Option<PathBuf>,

    /// PEM private key of --nats-tls-cert.
    #[arg(
        long,
        env = "VWED_NATS_TLS_KEY",
        value_name = "PEM_FILE",
        requires = "nats_tls_cert"
    )]
    pub nats_tls_key: Option<PathBuf>,

    /// Use TLS to NATS even when the server does not ask for it, and refuse a server that
    /// cannot (a `tls://` URL does the same).
    #[arg(long, env = "VWED_NATS_TLS_REQUIRED", action = clap::ArgAction::SetTrue,
          value_parser = clap::builder::BoolishValueParser::new())]
    pub nats_tls_required: bool,
}

impl NatsFlags {
    /// The settings the SDK applies to the connection.
    pub fn security(&self) -> NatsSecurity {
        NatsSecurity {
            user: self.nats_user.clone(),
            password: self.nats_password.clone(),
            token: self.nats_token.clone(),
            nkey_seed_file: self.nats_nkey.clone(),
            creds_file: self.nats_creds.clone(),
            tls_ca: self.nats_tls_ca.clone(),
            tls_cert: self.nats_tls_cert.clone(),
            tls_key: self.nats_tls_key.clone(),
            tls_required: self.nats_tls_required,
        }
    }

    /// Whether any of these flags is given (they do nothing without --nats-url).
    pub fn any(&self) -> bool {
        self.security() != NatsSecurity::default()
    }
}

impl fmt::Debug for NatsFlags {
    /// The SDK's redacted form: which secrets are set, never their values.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.security(), f)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::HubConfig;

    fn refused(args: &[&str]) -> String {
        let mut all = vec!["vwed-hub"];
        all.extend_from_slice(args);
        match HubConfig::try_parse_from(all) {
            Ok(_) => String::from("(accepted)"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn two_ways_to_authenticate_are_refused_naming_both() {
        let error = refused(&["--nats-token", "t", "--nats-creds", "a.creds"]);
        assert!(
            error.contains(
                "'--nats-token <NATS_TOKEN>' cannot be used with '--nats-creds <CREDS_FILE>'"
            ),
            "{error}"
        );
        let error = refused(&[
            "--nats-user",
            "u",
            "--nats-password",
            "p",
            "--nats-nkey",
            "s",
        ]);
        assert!(error.contains("cannot be used with"), "{error}");
    }

    #[test]
    fn halves_of_pairs_are_refused() {
        assert!(refused(&["--nats-user", "u"]).contains("--nats-password"));
        assert!(refused(&["--nats-password", "p"]).contains("--nats-user"));
        assert!(refused(&["--nats-tls-cert", "c.pem"]).contains("--nats-tls-key"));
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let config = HubConfig::parse_from([
            "vwed-hub",
            "--nats-user",
            "hub",
            "--nats-password",
            "s3cret",
        ]);
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("\"hub\""), "{shown}");
        let token = HubConfig::parse_from(["vwed-hub", "--nats-token", "t0ken"]);
        assert!(!format!("{token:?}").contains("t0ken"));
    }
}
