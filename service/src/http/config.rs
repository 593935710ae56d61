//! What a service configures for HTTP: where it listens (`ListenConfig`) and the limits
//! every connection and request is held to (`HttpLimits`, validated at load), and the
//! errors of serving them. Its own file because the middleware, the connection loop and
//! serving all read these, and none of them should have to import another for it.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where and how a service listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenConfig {
    pub(crate) listen: SocketAddr,
    #[serde(default)]
    pub(crate) tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub(crate) tls_key: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(
        "plain HTTP is allowed only on loopback; set tls_cert and tls_key (listen address {addr})"
    )]
    PlainHttpNotLoopback { addr: SocketAddr },
    #[error("tls_cert and tls_key must be set together")]
    IncompleteTls,
    #[error("cannot load TLS certificate {} / key {}: {source}", .cert.display(), .key.display())]
    Tls {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("HTTP server failed: {0}")]
    Serve(#[source] io::Error),
    #[error("invalid HTTP limits: {0}")]
    InvalidLimits(String),
}

/// Limits applied by [`common_layers`] and [`serve`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpLimits {
    pub max_body_bytes: usize,
    pub request_timeout_secs: u64,
    pub max_concurrent: usize,
    /// How long a client may take to send a request's headers. The first request of a
    /// connection must also arrive within it, counted from the accept (TLS handshake
    /// included), so a connection that sends nothing is closed after this long.
    pub header_read_timeout_secs: u64,
    /// How long a client may take to send its whole body. Bodies are read before the
    /// request takes a `max_concurrent` slot, so a slow one holds a connection, not a slot.
    pub body_read_timeout_secs: u64,
    /// Open connections at most. At the cap the connection idle longest is closed to make
    /// room; only when every connection has a request in flight do new ones wait in the
    /// kernel's listen backlog. Lowered at start when the file-descriptor limit cannot
    /// hold it (see [`fd_headroom`]).
    pub max_connections: usize,
    /// A keep-alive connection with no request in flight is closed after this long. On
    /// HTTP/1.1 the next request's headers must also arrive within the header read
    /// timeout, so there the shorter of the two applies; this one bounds HTTP/2.
    pub idle_timeout_secs: u64,
    /// Requests served on one connection before it is closed (HTTP/1.1 answers the last
    /// one with `connection: close`, HTTP/2 sends GOAWAY).
    pub max_requests_per_connection: u64,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            request_timeout_secs: 30,
            max_concurrent: 512,
            header_read_timeout_secs: 10,
            body_read_timeout_secs: 10,
            max_connections: 1024,
            idle_timeout_secs: 10,
            max_requests_per_connection: 1000,
        }
    }
}

/// The most `max_connections` accepted: far beyond any descriptor limit in use, and small
/// enough to count in a `u32` (the drain at shutdown waits for every slot at once).
pub(crate) const MAX_CONNECTIONS_LIMIT: usize = 1 << 20;

impl HttpLimits {
    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    pub(crate) fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_secs)
    }

    pub(crate) fn body_read_timeout(&self) -> Duration {
        Duration::from_secs(self.body_read_timeout_secs)
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// Zero for any limit would either refuse everything or hang every request.
    pub fn validate(&self) -> Result<(), HttpError> {
        let zero = [
            ("max_body_bytes", self.max_body_bytes == 0),
            ("request_timeout_secs", self.request_timeout_secs == 0),
            ("max_concurrent", self.max_concurrent == 0),
            (
                "header_read_timeout_secs",
                self.header_read_timeout_secs == 0,
            ),
            ("body_read_timeout_secs", self.body_read_timeout_secs == 0),
            ("max_connections", self.max_connections == 0),
            ("idle_timeout_secs", self.idle_timeout_secs == 0),
            (
                "max_requests_per_connection",
                self.max_requests_per_connection == 0,
            ),
        ];
        if let Some((name, _)) = zero.iter().find(|(_, is_zero)| *is_zero) {
            return Err(HttpError::InvalidLimits(format!("{name} must be > 0")));
        }
        if self.max_connections > MAX_CONNECTIONS_LIMIT {
            return Err(HttpError::InvalidLimits(format!(
                "max_connections must be at most {MAX_CONNECTIONS_LIMIT}"
            )));
        }
        Ok(())
    }
}
