//! How a service (or the hub) authenticates to NATS and secures the connection: one plain
//! struct, [`NatsSecurity`], applied to `async_nats::ConnectOptions`, so that every program on
//! the bus reads the same settings the same way.
//!
//! Every file is read and checked when the settings are applied, so that a wrong path or a
//! broken file stops a program at startup with a message naming the file, rather than
//! surfacing later as an endless reconnect loop.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use vwed_publisher::{NatsSecurity, Publisher};
//!
//! let security = NatsSecurity {
//!     creds_file: Some("/etc/vwed/task-engine.creds".into()),
//!     tls_ca: Some("/etc/vwed/nats-ca.pem".into()),
//!     ..NatsSecurity::default()
//! };
//! let options = security.apply(async_nats::ConnectOptions::new().name("task-engine"))?;
//! let publisher = Publisher::new(options.connect("tls://nats.example:4222").await?);
//! # drop(publisher);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use async_nats::ConnectOptions;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// How to authenticate to NATS and whether and how to use TLS. At most one way to
/// authenticate may be set: a user and password, a token, an nkey seed, or a `.creds` file.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct NatsSecurity {
    /// User name, for servers with `authorization { users = [...] }`; needs `password`.
    pub user: Option<String>,
    /// The user's password; a secret, never printed.
    pub password: Option<String>,
    /// Token, for servers with `authorization { token = ... }`; a secret, never printed.
    pub token: Option<String>,
    /// A file holding a user nkey seed (`SU...`), for servers that list nkey users.
    pub nkey_seed_file: Option<PathBuf>,
    /// A `.creds` file (user JWT and seed), for servers run in operator mode.
    pub creds_file: Option<PathBuf>,
    /// PEM file of the certificate authorities that signed the server's certificate; the
    /// system's roots when unset.
    pub tls_ca: Option<PathBuf>,
    /// PEM certificate chain presented to servers that verify clients (mutual TLS); needs
    /// `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Refuse to talk to a server without TLS, even one that does not ask for it.
    pub tls_required: bool,
}

/// Settings that cannot work, found before connecting.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// Two ways to authenticate were given; a connection uses one.
    #[error("{0} and {1} are both given: authenticate one way only")]
    Conflict(&'static str, &'static str),
    /// One half of a pair is missing.
    #[error("{given} is given without {missing}")]
    Incomplete {
        /// The setting that was given.
        given: &'static str,
        /// The setting it needs.
        missing: &'static str,
    },
    /// A file could not be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        /// What the file is for, e.g. "NATS TLS CA".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file was read but holds nothing usable.
    #[error("{what} {}: {problem}", path.display())]
    Invalid {
        /// What the file is for.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
}

impl NatsSecurity {
    /// Checks the settings and files and sets them on `options`. Certificate files are passed
    /// on by path, so a reconnect reads them again and picks up a renewed client certificate.
    pub fn apply(&self, mut options: ConnectOptions) -> Result<ConnectOptions, SecurityError> {
        self.check_methods()?;
        match (&self.user, &self.password) {
            (Some(user), Some(password)) => {
                options = options.user_and_password(user.clone(), password.clone());
            }
            (Some(_), None) => return Err(incomplete("user", "password")),
            (None, Some(_)) => return Err(incomplete("password", "user")),
            (None, None) => {}
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some(path) = &self.nkey_seed_file {
            options = options.nkey(read_nkey_seed(path)?);
        }
        if let Some(path) = &self.creds_file {
            let text = read_text("NATS credentials file", path)?;
            options = options
                .credentials(&text)
                .map_err(|error| SecurityError::Invalid {
                    what: "NATS credentials file",
                    path: path.clone(),
                    problem: error.to_string(),
                })?;
        }
        if let Some(path) = &self.tls_ca {
            read_certificates("NATS TLS CA", path)?;
            options = options.add_root_certificates(path.clone());
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                read_certificates("NATS TLS client certificate", cert)?;
                read_private_key("NATS TLS client key", key)?;
                options = options.add_client_certificate(cert.clone(), key.clone());
            }
            (Some(_), None) => return Err(incomplete("a TLS client certificate", "its key")),
            (None, Some(_)) => return Err(incomplete("a TLS client key", "its certificate")),
            (None, None) => {}
        }
        if self.tls_required {
            options = options.require_tls(true);
        }
        Ok(options)
    }

    /// A line for the log: how the connection authenticates and what TLS it uses, without any
    /// secret (`user "hub"`, `token`, `nkey from /run/seed`, ...).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(user) = &self.user {
            parts.push(format!("user {user:?} with password"));
        }
        if self.token.is_some() {
            parts.push("token".to_owned());
        }
        if let Some(path) = &self.nkey_seed_file {
            parts.push(format!("nkey from {}", path.display()));
        }
        if let Some(path) = &self.creds_file {
            parts.push(format!("credentials from {}", path.display()));
        }
        if parts.is_empty() {
            parts.push("no authentication".to_owned());
        }
        if let Some(path) = &self.tls_ca {
            parts.push(format!("TLS trusting {}", path.display()));
        }
        if let Some(path) = &self.tls_cert {
            parts.push(format!("client certificate {}", path.display()));
        }
        if self.tls_required {
            parts.push("TLS required".to_owned());
        }
        parts.join(", ")
    }

    /// Takes credentials written into a server URL (`nats://user:password@host`, or a token
    /// as `nats://token@host`) as if they were set here: async-nats does not send them itself.
    /// The first URL of a comma-separated list that has any is used. Fails when these settings
    /// already say how to authenticate.
    pub fn with_url_credentials(mut self, urls: &str) -> Result<Self, SecurityError> {
        let found = urls
            .split(',')
            .map(str::trim)
            .filter_map(|url| url.parse::<async_nats::ServerAddr>().ok())
            .find_map(|addr| {
                let user = decode(addr.username()?);
                Some((user, addr.password().map(decode)))
            });
        let Some((user, password)) = found else {
            return Ok(self);
        };
        if let Some(other) = self.methods().first() {
            return Err(SecurityError::Conflict(
                "credentials in the NATS URL",
                other,
            ));
        }
        match password {
            Some(password) => {
                self.user = Some(user);
                self.password = Some(password);
            }
            None => self.token = Some(user),
        }
        Ok(self)
    }

    /// The one way to authenticate that is set, failing when there are several.
    fn check_methods(&self) -> Result<(), SecurityError> {
        match self.methods()[..] {
            [first, second, ..] => Err(SecurityError::Conflict(first, second)),
            _ => Ok(()),
        }
    }

    /// The ways to authenticate that are set.
    fn methods(&self) -> Vec<&'static str> {
        [
            (
                "user and password",
                self.user.is_some() || self.password.is_some(),
            ),
            ("a token", self.token.is_some()),
            ("an nkey seed", self.nkey_seed_file.is_some()),
            ("a credentials file", self.creds_file.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

impl fmt::Debug for NatsSecurity {
    /// Shows which secrets are set, never their values, so the settings can be logged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |secret: &Option<String>| secret.as_ref().map(|_| "<hidden>");
        f.debug_struct("NatsSecurity")
            .field("user", &self.user)
            .field("password", &hidden(&self.password))
            .field("token", &hidden(&self.token))
            .field("nkey_seed_file", &self.nkey_seed_file)
            .field("creds_file", &self.creds_file)
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("tls_required", &self.tls_required)
            .finish()
    }
}

/// A URL's percent-encoded user or password, as written.
fn decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

fn incomplete(given: &'static str, missing: &'static str) -> SecurityError {
    SecurityError::Incomplete { given, missing }
}

/// `url` with any password (or token in the user part) replaced by `***`, for logging:
/// `nats://hub:s3cret@host:4222` becomes `nats://hub:***@host:4222`, `nats://tok@host` becomes
/// `nats://***@host`. Comma-separated lists are redacted URL by URL.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|one| {
            let (scheme, rest) = match one.find("://") {
                Some(at) => one.split_at(at + 3),
                None => ("", one),
            };
            // The user part ends at the last `@` before the path: a password may hold `@`.
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => {
                    let userinfo = &rest[..at];
                    let hidden = match userinfo.split_once(':') {
                        Some((user, _)) => format!("{user}:***"),
                        None => "***".to_owned(),
                    };
                    format!("{scheme}{hidden}{}", &rest[at..])
                }
                None => one.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn read_bytes(what: &'static str, path: &Path) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|source| SecurityError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn read_text(what: &'static str, path: &Path) -> Result<String, SecurityError> {
    String::from_utf8(read_bytes(what, path)?).map_err(|_| SecurityError::Invalid {
        what,
        path: path.to_owned(),
        problem: "is not text".into(),
    })
}

/// The user seed in an nkey seed file: the first line that is not blank or a comment.
fn read_nkey_seed(path: &Path) -> Result<String, SecurityError> {
    const WHAT: &str = "NATS nkey seed file";
    let text = read_text(WHAT, path)?;
    let invalid = |problem: String| SecurityError::Invalid {
        what: WHAT,
        path: path.to_owned(),
        problem,
    };
    let seed = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with("//"))
        .ok_or_else(|| invalid("holds no seed".into()))?;
    if !seed.starts_with("SU") {
        return Err(invalid(
            "holds no user seed (a user seed starts with SU; `nk -gen user` makes one)".into(),
        ));
    }
    nkeys::KeyPair::from_seed(seed)
        .map_err(|error| invalid(format!("holds no valid seed: {error}")))?;
    Ok(seed.to_owned())
}

/// Every certificate in the PEM file at `path` (a chain: the end entity first); an error
/// naming the file and the problem when it cannot be read or holds none. `what` says what the
/// file is for, e.g. "TLS certificate".
pub fn read_certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, SecurityError> {
    let bytes = read_bytes(what, path)?;
    let invalid = |problem: String| SecurityError::Invalid {
        what,
        path: path.to_owned(),
        problem,
    };
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid(format!("is no valid PEM: {error}")))?;
    if certificates.is_empty() {
        return Err(invalid(
            "holds no certificate (expected a PEM \"BEGIN CERTIFICATE\" section)".into(),
        ));
    }
    Ok(certificates)
}

/// The private key in the PEM file at `path` (PKCS#8, PKCS#1 RSA or SEC1 EC); an error naming
/// the file and the problem when it cannot be read or holds none.
pub fn read_private_key(
    what: &'static str,
    path: &Path,
) -> Result<PrivateKeyDer<'static>, SecurityError> {
    let bytes = read_bytes(what, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|error| SecurityError::Invalid {
        what,
        path: path.to_owned(),
        problem: match error {
            rustls_pki_types::pem::Error::NoItemsFound => "holds no private key (expected a PEM \
                \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\" \
                section)"
                .into(),
            other => format!("is no valid PEM: {other}"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, contents: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vwed-security-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join(name);
        let _ = std::fs::write(&path, contents);
        path
    }

    #[test]
    fn two_ways_to_authenticate_conflict() {
        let security = NatsSecurity {
            token: Some("t".into()),
            user: Some("u".into()),
            password: Some("p".into()),
            ..NatsSecurity::default()
        };
        let error = security
            .apply(ConnectOptions::new())
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            error.as_deref(),
            Some("user and password and a token are both given: authenticate one way only")
        );
    }

    #[test]
    fn a_user_needs_a_password() {
        let security = NatsSecurity {
            user: Some("u".into()),
            ..NatsSecurity::default()
        };
        let error = security
            .apply(ConnectOptions::new())
            .err()
            .map(|e| e.to_string());
        assert_eq!(error.as_deref(), Some("user is given without password"));
    }

    #[test]
    fn secrets_stay_out_of_debug_and_describe() {
        let security = NatsSecurity {
            user: Some("hub".into()),
            password: Some("s3cret".into()),
            ..NatsSecurity::default()
        };
        assert!(!format!("{security:?}").contains("s3cret"));
        assert!(!security.describe().contains("s3cret"));
        let token = NatsSecurity {
            token: Some("t0ken".into()),
            ..NatsSecurity::default()
        };
        assert!(!format!("{token:?}").contains("t0ken"));
        assert_eq!(token.describe(), "token");
    }

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(
            redact_url("nats://hub:s3cret@127.0.0.1:4222"),
            "nats://hub:***@127.0.0.1:4222"
        );
        assert_eq!(redact_url("nats://t0ken@host"), "nats://***@host");
        assert_eq!(redact_url("nats://a:b@c@host/x"), "nats://a:***@host/x");
        assert_eq!(
            redact_url("nats://a:b@h1:4222,nats://h2:4222"),
            "nats://a:***@h1:4222,nats://h2:4222"
        );
        assert_eq!(redact_url("h:4222"), "h:4222");
        assert_eq!(redact_url("u:p@h:4222"), "u:***@h:4222");
    }

    #[test]
    fn credentials_in_a_url_are_taken() {
        let none = NatsSecurity::default();
        let taken = none
            .clone()
            .with_url_credentials("nats://hub:p%40ss@h:4222")
            .ok();
        assert_eq!(
            taken,
            Some(NatsSecurity {
                user: Some("hub".into()),
                password: Some("p@ss".into()),
                ..NatsSecurity::default()
            })
        );
        let token = none
            .clone()
            .with_url_credentials("nats://h1, nats://t0k@h2")
            .ok();
        assert_eq!(token.and_then(|s| s.token), Some("t0k".into()));
        let plain = none.clone().with_url_credentials("nats://h:4222").ok();
        assert_eq!(plain, Some(none));
        let both = NatsSecurity {
            token: Some("t".into()),
            ..NatsSecurity::default()
        }
        .with_url_credentials("nats://u:p@h")
        .err()
        .map(|e| e.to_string());
        assert_eq!(
            both.as_deref(),
            Some(
                "credentials in the NATS URL and a token are both given: authenticate one way only"
            )
        );
    }

    #[test]
    fn a_missing_file_is_named() {
        let security = NatsSecurity {
            tls_ca: Some("no/such/ca.pem".into()),
            ..NatsSecurity::default()
        };
        let error = security
            .apply(ConnectOptions::new())
            .err()
            .map(|e| e.to_string());
        let error = error.unwrap_or_default();
        assert!(
            error.starts_with("cannot read NATS TLS CA no/such/ca.pem: "),
            "{error}"
        );
    }

    #[test]
    fn a_file_without_certificates_says_so() {
        let path = file("empty.pem", "nothing here\n");
        let error = read_certificates("TLS certificate", &path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert_eq!(
            error,
            format!(
                "TLS certificate {}: holds no certificate (expected a PEM \"BEGIN CERTIFICATE\" \
                 section)",
                path.display()
            )
        );
    }

    #[test]
    fn broken_pem_says_so() {
        let path = file(
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
        );
        let error = read_certificates("TLS certificate", &path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("is no valid PEM"), "{error}");
        let truncated = file("truncated.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n");
        let error = read_certificates("TLS certificate", &truncated)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("missing section end marker"), "{error}");
    }

    #[test]
    fn a_certificate_is_no_key() {
        let path = file(
            "cert-as-key.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        let error = read_private_key("TLS key", &path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("holds no private key"), "{error}");
    }

    #[test]
    fn nkey_seeds_are_checked() {
        let not_user = file(
            "account.nk",
            "SAAGNJOZTRPYYXG2NJX3ZNGXYUSDYX2BWO447W3SHG6XQ7U66RWHQ3JUXM\n",
        );
        let error = read_nkey_seed(&not_user)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("holds no user seed"), "{error}");
        let garbage = file("garbage.nk", "SUnotaseed\n");
        let error = read_nkey_seed(&garbage)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("holds no valid seed"), "{error}");
        let seed = nkeys::KeyPair::new_user().seed().unwrap_or_default();
        let good = file("user.nk", &format!("# the hub's key\n{seed}\n"));
        assert_eq!(read_nkey_seed(&good).ok(), Some(seed));
    }
}
