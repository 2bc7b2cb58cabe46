//! The `--nats-*` command-line flags, mapped onto [`NatsSecurity`]: one definition, so that the
//! hub, the demo and any publisher built with clap take the same names and environment
//! variables, and one environment configures them all.

use std::fmt;
use std::path::PathBuf;

use crate::NatsSecurity;

/// How a program authenticates to NATS and secures the connection, as clap flags with
/// `VWED_NATS_*` environment variables. Clap refuses two ways to authenticate at once, and one
/// half of a pair without the other; [`NatsFlags::security`] gives the settings to apply to the
/// connect options.
///
/// Needs the `cli` feature (`vwed-publisher = { ..., features = ["cli"] }`), which brings clap;
/// without it the crate does not depend on clap. A publisher's own binary takes the same flags
/// as the hub by flattening them into its arguments:
///
/// ```no_run
/// use clap::Parser;
///
/// #[derive(Parser)]
/// struct Args {
///     /// NATS server(s) to publish to.
///     #[arg(long, env = "VWED_NATS_URL", default_value = "nats://127.0.0.1:4222")]
///     nats_url: String,
///
///     /// NATS authentication and TLS, as the hub takes them.
///     #[command(flatten)]
///     nats: vwed_publisher::NatsFlags,
/// }
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let args = Args::parse();
/// let security = args.nats.security().with_url_credentials(&args.nats_url)?;
/// let client = security
///     .apply(async_nats::ConnectOptions::new())?
///     .connect(args.nats_url.as_str())
///     .await?;
/// let publisher = vwed_publisher::Publisher::new(client);
/// # drop(publisher);
/// # Ok(())
/// # }
/// ```
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
    /// The settings to apply to the connection.
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

    /// Whether any of these flags is given, so that a program which may run without NATS (the
    /// hub on its embedded broker) can warn that they do nothing.
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
    use std::path::PathBuf;

    use clap::{CommandFactory, Parser};

    use super::NatsFlags;
    use crate::NatsSecurity;

    /// A publisher's command line with nothing but these flags.
    #[derive(Debug, Parser)]
    struct Args {
        #[command(flatten)]
        nats: NatsFlags,
    }

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("publisher").chain(args.iter().copied()))
    }

    #[test]
    fn the_definition_is_consistent() {
        // Clap checks names in `requires` and `conflicts_with` only when asked, or on first use
        // in a debug build: a typo would otherwise surface in some publisher's binary.
        Args::command().debug_assert();
    }

    #[test]
    fn flags_map_onto_the_settings() {
        let args = parse(&[
            "--nats-nkey",
            "user.nk",
            "--nats-tls-ca",
            "ca.pem",
            "--nats-tls-cert",
            "c.pem",
            "--nats-tls-key",
            "k.pem",
            "--nats-tls-required",
        ])
        .unwrap();
        assert_eq!(
            args.nats.security(),
            NatsSecurity {
                nkey_seed_file: Some(PathBuf::from("user.nk")),
                tls_ca: Some(PathBuf::from("ca.pem")),
                tls_cert: Some(PathBuf::from("c.pem")),
                tls_key: Some(PathBuf::from("k.pem")),
                tls_required: true,
                ..NatsSecurity::default()
            }
        );
        assert!(args.nats.any());
    }

    #[test]
    fn none_given_is_the_default() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.nats.security(), NatsSecurity::default());
        assert!(!args.nats.any());
    }

    #[test]
    fn conflicts_and_halves_of_pairs_are_refused() {
        for bad in [
            &["--nats-token", "t", "--nats-creds", "a.creds"][..],
            &[
                "--nats-user",
                "u",
                "--nats-password",
                "p",
                "--nats-token",
                "t",
            ],
            &["--nats-nkey", "s", "--nats-creds", "a.creds"],
            &["--nats-user", "u"],
            &["--nats-password", "p"],
            &["--nats-tls-cert", "c.pem"],
            &["--nats-tls-key", "k.pem"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let args = parse(&["--nats-user", "svc", "--nats-password", "s3cret"]).unwrap();
        let shown = format!("{args:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("\"svc\""), "{shown}");
        let token = parse(&["--nats-token", "t0ken"]).unwrap();
        assert!(!format!("{token:?}").contains("t0ken"));
    }
}
