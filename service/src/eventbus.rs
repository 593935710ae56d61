//! The optional distributed path for access events: NATS JetStream.
//!
//! Gateways publish each access event as its own message, a signed batch of one (the same
//! `fedgate-batch+jwt` JWS that `POST /v1/batches` takes), with the event id as the
//! `Nats-Msg-Id`, so the stream itself drops a re-publication inside its duplicate window.
//! Visibility instances read the stream through a durable pull consumer and acknowledge a
//! message only after its event is on disk in the log; the log's own exactly-once rule
//! (one leaf per custodian and event id) covers redeliveries the window does not.
//!
//! NATS is a carrier, not a trust anchor: every message is verified exactly as an HTTPS
//! batch is, so a publisher that can reach the server cannot log anything it could not
//! log over HTTPS. It is still a shared store that can be flooded or have its stream
//! deleted, so outside dev mode every client authenticates (a user nkey seed or a `.creds`
//! file) and the server's permissions keep each gateway to publishing on its own subject
//! (see `docs/nats.md`). The default deployment (HTTPS straight to the service) needs none
//! of this.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, message::PublishMessage, stream};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// `[nats]` (visibility service) and `[visibility.nats]` (gateway).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// `tls://host:port`; plain `nats://` only to a loopback address in dev mode.
    url: String,
    /// The JetStream stream holding access events.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Subjects are `<prefix>.<custodian token>`; the stream takes `<prefix>.>`.
    #[serde(default = "default_prefix")]
    subject_prefix: String,
    /// How long the stream remembers message ids to drop duplicates (the log drops any
    /// that arrive later).
    #[serde(default = "default_duplicate_window")]
    duplicate_window_secs: u64,
    /// The durable consumer the visibility service reads with.
    #[serde(default = "default_consumer")]
    pub consumer: String,
    /// A file holding this client's NATS user nkey seed (`SU…`), mode 0600: the server
    /// knows the user by its public key (`nkey` in its `authorization` block).
    #[serde(default)]
    nkey_seed_file: Option<PathBuf>,
    /// A NATS `.creds` file (user JWT and seed, as `nsc` writes it), mode 0600, for servers
    /// run in operator mode.
    #[serde(default)]
    credentials_file: Option<PathBuf>,
}

/// How a client proves who it is to the NATS server.
enum Auth {
    /// Only to loopback in dev mode.
    Anonymous,
    Nkey(zeroize::Zeroizing<String>),
    Credentials(zeroize::Zeroizing<String>),
}

fn default_stream() -> String {
    "FEDGATE_EVENTS".into()
}
fn default_prefix() -> String {
    "fedgate.events".into()
}
fn default_duplicate_window() -> u64 {
    600
}
fn default_consumer() -> String {
    "visibility".into()
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("nats configuration: {0}")]
    Config(#[from] NatsConfigError),
    #[error("nats server unreachable: {0}")]
    Connect(String),
    #[error("jetstream: {0}")]
    JetStream(String),
}

/// A refused `[nats]` table. `what` names the table (`nats`, `visibility.nats`); messages
/// name the key and never show a secret's content.
#[derive(Debug, thiserror::Error)]
pub enum NatsConfigError {
    /// A stream, consumer or subject name, or a number, outside its rule.
    #[error("{what}.{key}: {rule}")]
    Invalid {
        what: String,
        key: &'static str,
        rule: &'static str,
    },
    #[error("{what}.url: unknown scheme {scheme}")]
    UnknownScheme { what: String, scheme: String },
    /// Missing, unreadable, or open to group or others.
    #[error("{what}.{key}: {source}")]
    SecretUnreadable {
        what: String,
        key: &'static str,
        #[source]
        source: federation::keys::KeyError,
    },
    #[error("{what}.{key}: {} is not text", .path.display())]
    SecretNotText {
        what: String,
        key: &'static str,
        path: PathBuf,
    },
    #[error("{what}.nkey_seed_file: {} holds no valid NATS user seed (SU…)", .path.display())]
    BadSeed { what: String, path: PathBuf },
    #[error("{what}.credentials_file: {} is not a NATS .creds file (user JWT and seed)", .path.display())]
    BadCredentials { what: String, path: PathBuf },
    #[error("{what}: set nkey_seed_file or credentials_file, not both")]
    TwoSecrets { what: String },
    #[error("{what}: a NATS client must authenticate outside dev_mode; set nkey_seed_file or credentials_file")]
    Unauthenticated { what: String },
}

impl NatsConfig {
    /// Checks names and the transport rule; `what` names the table in messages.
    pub fn validate(&self, what: &str, dev_mode: bool) -> Result<(), NatsConfigError> {
        let invalid = |key, rule| NatsConfigError::Invalid {
            what: what.to_string(),
            key,
            rule,
        };
        let token_ok = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !token_ok(&self.stream) {
            return Err(invalid("stream", "letters, digits, '-' and '_' only"));
        }
        if !token_ok(&self.consumer) {
            return Err(invalid("consumer", "letters, digits, '-' and '_' only"));
        }
        if self.subject_prefix.is_empty() || !self.subject_prefix.split('.').all(token_ok) {
            return Err(invalid(
                "subject_prefix",
                "dot-separated tokens of letters, digits, '-' and '_'",
            ));
        }
        if self.duplicate_window_secs == 0 {
            return Err(invalid("duplicate_window_secs", "must be at least 1"));
        }
        let (scheme, rest) = self
            .url
            .split_once("://")
            .ok_or_else(|| invalid("url", "expected tls://host:port or nats://host:port"))?;
        let host = rest
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(rest)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        match scheme {
            "tls" => {}
            "nats" if loopback && dev_mode => {}
            "nats" => {
                return Err(invalid(
                    "url",
                    "plain nats:// is allowed only to loopback in dev_mode; use tls://",
                ))
            }
            other => {
                return Err(NatsConfigError::UnknownScheme {
                    what: what.to_string(),
                    scheme: other.to_string(),
                })
            }
        }
        // Read now, so that a missing, open or malformed secret stops the start.
        match self.auth(what)? {
            Auth::Anonymous if !dev_mode => Err(NatsConfigError::Unauthenticated {
                what: what.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// Makes relative secret paths relative to `base` (the config file's folder).
    pub fn resolve_paths(&mut self, base: &Path) {
        for path in [&mut self.nkey_seed_file, &mut self.credentials_file]
            .into_iter()
            .flatten()
        {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
    }

    /// Reads the configured secret; never puts its content in an error.
    fn auth(&self, what: &str) -> Result<Auth, NatsConfigError> {
        let read = |key: &'static str, path: &Path| {
            let bytes = federation::keys::read_private(path).map_err(|source| {
                NatsConfigError::SecretUnreadable {
                    what: what.to_string(),
                    key,
                    source,
                }
            })?;
            let text = std::str::from_utf8(&bytes).map_err(|_| NatsConfigError::SecretNotText {
                what: what.to_string(),
                key,
                path: path.to_path_buf(),
            })?;
            Ok(zeroize::Zeroizing::new(text.to_string()))
        };
        match (&self.nkey_seed_file, &self.credentials_file) {
            (Some(_), Some(_)) => Err(NatsConfigError::TwoSecrets {
                what: what.to_string(),
            }),
            (Some(path), None) => {
                let seed =
                    zeroize::Zeroizing::new(read("nkey_seed_file", path)?.trim().to_string());
                // One user seed (SU…) on one line; account and server seeds are refused.
                let valid = seed.starts_with("SU")
                    && seed.lines().count() == 1
                    && nkeys::KeyPair::from_seed(&seed).is_ok();
                valid
                    .then_some(Auth::Nkey(seed))
                    .ok_or_else(|| NatsConfigError::BadSeed {
                        what: what.to_string(),
                        path: path.clone(),
                    })
            }
            (None, Some(path)) => {
                let creds = read("credentials_file", path)?;
                let valid = async_nats::ConnectOptions::with_credentials(&creds).is_ok();
                valid.then_some(Auth::Credentials(creds)).ok_or_else(|| {
                    NatsConfigError::BadCredentials {
                        what: what.to_string(),
                        path: path.clone(),
                    }
                })
            }
            (None, None) => Ok(Auth::Anonymous),
        }
    }

    /// The subject a custodian publishes on. DIDs hold '.' and ':', which NATS subjects
    /// reserve, so the token is a digest of the DID.
    pub fn subject_for(&self, custodian: &str) -> String {
        let digest = Sha256::digest(custodian.as_bytes());
        format!("{}.{}", self.subject_prefix, hex::encode(&digest[..16]))
    }

    /// Connects and returns a JetStream context. The client reconnects by itself after a
    /// later outage; callers retry a failed first connection.
    pub async fn connect(&self) -> Result<jetstream::Context, BusError> {
        let options = match self.auth("nats")? {
            Auth::Anonymous => async_nats::ConnectOptions::new(),
            Auth::Nkey(seed) => async_nats::ConnectOptions::with_nkey(seed.to_string()),
            Auth::Credentials(creds) => async_nats::ConnectOptions::with_credentials(&creds)
                .map_err(|_| {
                    BusError::Config(NatsConfigError::BadCredentials {
                        what: "nats".into(),
                        path: self.credentials_file.clone().unwrap_or_default(),
                    })
                })?,
        };
        let client = options
            .connection_timeout(Duration::from_secs(5))
            .connect(self.url.as_str())
            .await
            .map_err(|e| BusError::Connect(e.to_string()))?;
        Ok(jetstream::new(client))
    }

    /// Creates the stream if missing: file storage, every custodian's subject, the
    /// configured duplicate window. The visibility service owns it; gateways only publish
    /// (a publish before it exists fails, and is retried).
    pub async fn ensure_stream(&self, js: &jetstream::Context) -> Result<stream::Stream, BusError> {
        js.get_or_create_stream(stream::Config {
            name: self.stream.clone(),
            subjects: vec![format!("{}.>", self.subject_prefix)],
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(self.duplicate_window_secs),
            ..Default::default()
        })
        .await
        .map_err(|e| BusError::JetStream(e.to_string()))
    }

    /// The durable pull consumer: explicit acknowledgement, redelivery after 30 s.
    pub async fn consumer(&self, stream: &stream::Stream) -> Result<PullConsumer, BusError> {
        stream
            .get_or_create_consumer(
                &self.consumer,
                jetstream::consumer::pull::Config {
                    durable_name: Some(self.consumer.clone()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    max_ack_pending: 20_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| BusError::JetStream(e.to_string()))
    }
}

/// Publishes signed single-event batches, all in flight at once, and waits for the
/// stream's acknowledgements. Returns the ids the stream holds (newly or as duplicates);
/// an id missing from the answer was not stored and stays with the caller.
pub async fn publish_all(
    js: &jetstream::Context,
    subject: &str,
    messages: Vec<(String, String)>,
) -> Result<Vec<String>, BusError> {
    let mut pending = Vec::with_capacity(messages.len());
    let mut first_error = None;
    for (id, jws) in messages {
        let publish = PublishMessage::build()
            .message_id(&id)
            .payload(jws.into_bytes().into());
        match js.send_publish(subject.to_string(), publish).await {
            Ok(ack) => pending.push((id, ack)),
            Err(e) => {
                first_error.get_or_insert_with(|| e.to_string());
                break;
            }
        }
    }
    let mut stored = Vec::with_capacity(pending.len());
    for (id, ack) in pending {
        match ack.await {
            Ok(_) => stored.push(id),
            Err(e) => {
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    match (stored.is_empty(), first_error) {
        (true, Some(e)) => Err(BusError::JetStream(e)),
        _ => Ok(stored),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> NatsConfig {
        toml::from_str(&format!("url = \"{url}\"")).unwrap()
    }

    #[test]
    fn transport_rule() {
        assert!(config("nats://127.0.0.1:4222")
            .validate("nats", true)
            .is_ok());
        assert!(config("nats://localhost:4222")
            .validate("nats", true)
            .is_ok());
        assert!(config("nats://127.0.0.1:4222")
            .validate("nats", false)
            .is_err());
        assert!(config("nats://10.0.0.5:4222")
            .validate("nats", true)
            .is_err());
        assert!(config("http://127.0.0.1:4222")
            .validate("nats", true)
            .is_err());
        assert!(config("127.0.0.1:4222").validate("nats", true).is_err());
    }

    /// Writes `content` to a file of `dir` with `mode`.
    fn secret(dir: &Path, name: &str, content: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn clients_authenticate_outside_dev_mode_with_a_closed_secret() {
        let dir = tempfile::tempdir().unwrap();
        let user = nkeys::KeyPair::new_user();
        let seed = user.seed().unwrap();

        let mut c = config("tls://nats.example:4222");
        let err = c.validate("nats", false).unwrap_err();
        assert!(
            matches!(err, NatsConfigError::Unauthenticated { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("must authenticate"), "{err}");

        c.nkey_seed_file = Some(secret(dir.path(), "seed", &format!("{seed}\n"), 0o600));
        c.validate("nats", false).unwrap();

        // Readable by others: refused, and the seed never appears in the message.
        c.nkey_seed_file = Some(secret(dir.path(), "open", &seed, 0o644));
        let err = c.validate("nats", false).unwrap_err().to_string();
        assert!(err.contains("chmod 600") && !err.contains(&seed), "{err}");

        c.nkey_seed_file = Some(secret(dir.path(), "bad", "SUnot-a-seed", 0o600));
        let err = c.validate("nats", false).unwrap_err().to_string();
        assert!(err.contains("no valid NATS user seed"), "{err}");
        c.nkey_seed_file = Some(dir.path().join("missing"));
        assert!(c.validate("nats", false).is_err());

        // An account or server seed is not a user's.
        let account = nkeys::KeyPair::new_account().seed().unwrap();
        c.nkey_seed_file = Some(secret(dir.path(), "account", &account, 0o600));
        assert!(c.validate("nats", false).is_err());

        let creds = format!(
            "-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.e30.sig\n------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        );
        c.nkey_seed_file = None;
        c.credentials_file = Some(secret(dir.path(), "user.creds", &creds, 0o600));
        c.validate("nats", false).unwrap();
        c.credentials_file = Some(secret(dir.path(), "junk.creds", "hello", 0o600));
        let err = c.validate("nats", false).unwrap_err().to_string();
        assert!(err.contains("not a NATS .creds file"), "{err}");

        c.credentials_file = Some(secret(dir.path(), "both.creds", &creds, 0o600));
        c.nkey_seed_file = Some(secret(dir.path(), "seed2", &seed, 0o600));
        let err = c.validate("nats", false).unwrap_err().to_string();
        assert!(err.contains("not both"), "{err}");

        // Relative paths are the config file's.
        let mut r: NatsConfig =
            toml::from_str("url = \"tls://n:4222\"\nnkey_seed_file = \"seed\"").unwrap();
        r.resolve_paths(dir.path());
        assert_eq!(
            r.nkey_seed_file.as_deref(),
            Some(dir.path().join("seed").as_path())
        );
        r.validate("nats", false).unwrap();
    }

    #[test]
    fn names_are_checked_and_subjects_hide_the_did() {
        let mut c = config("nats://127.0.0.1:4222");
        let s = c.subject_for("did:web:hospital-a.example");
        assert!(s.starts_with("fedgate.events."));
        assert!(!s.contains("hospital"));
        assert_eq!(s, c.subject_for("did:web:hospital-a.example"));
        assert_ne!(s, c.subject_for("did:web:hospital-b.example"));
        c.subject_prefix = "a.>".into();
        let err = c.validate("nats", true).unwrap_err().to_string();
        assert!(err.starts_with("nats.subject_prefix: "), "{err}");
        c.subject_prefix = "fedgate.events".into();
        c.stream = "has space".into();
        assert!(c.validate("nats", true).is_err());
    }
}
