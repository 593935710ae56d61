//! The outbound client policy every fedgate participant applies: https only (plain http
//! only to loopback in dev mode), no ambient proxy, no redirects, bounded timeouts.

use std::net::IpAddr;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("refusing {scheme} request to host `{host}`: only https is allowed (http only to a loopback host in dev mode)")]
    OutboundNotAllowed { scheme: String, host: String },
    #[error("cannot build HTTP client: {0}")]
    Build(#[source] reqwest::Error),
}

fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// A fresh 256-bit secret, base64url without padding (e.g. an admin bearer token).
pub fn random_token() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    crate::b64::encode(&bytes)
}

/// The outbound rule every client applies before sending: https always; plain http only
/// in dev mode and only to a loopback IP or `localhost`.
pub fn loopback_only_http(url: &reqwest::Url, dev_mode: bool) -> Result<(), ClientError> {
    let host = url.host_str().unwrap_or_default();
    match url.scheme() {
        "https" if !host.is_empty() => Ok(()),
        "http" if dev_mode && is_loopback_host(host) => Ok(()),
        scheme => Err(ClientError::OutboundNotAllowed {
            scheme: scheme.to_owned(),
            host: host.to_owned(),
        }),
    }
}

fn is_loopback_host(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match bare.parse::<IpAddr>() {
        Ok(ip) => is_loopback(ip),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    }
}

/// The client configuration every fedgate client starts from: rustls, connect timeout
/// 5 s, total timeout 15 s, no redirects (a redirect could lead outside an allow-map),
/// user agent `fedgate/<version>`. Callers may add trust roots before building.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .tls_backend_rustls()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::none())
        // Peers are contacted directly: an ambient HTTP(S)_PROXY would see every request
        // and would make the loopback and allow-map rules meaningless.
        .no_proxy()
        .user_agent(concat!("fedgate/", env!("CARGO_PKG_VERSION")))
}

/// [`http_client_builder`], built; for callers that can propagate the error.
pub fn try_http_client() -> Result<reqwest::Client, ClientError> {
    http_client_builder().build().map_err(ClientError::Build)
}

/// [`http_client_builder`], built. If that fails (e.g. a malformed proxy variable or an
/// unusable system trust store) the result fails closed: no proxy and no trust roots, so
/// every https request is refused at the handshake instead of running with weaker rules.
pub fn http_client() -> reqwest::Client {
    match try_http_client() {
        Ok(client) => client,
        Err(err) => {
            tracing::error!(%err, "cannot build the HTTP client; outbound https will fail");
            match http_client_builder()
                .no_proxy()
                .tls_certs_only(std::iter::empty())
                .build()
            {
                Ok(client) => client,
                // This configuration depends on nothing from the host, so it cannot fail
                // short of a broken TLS library; there is then no safe client to return.
                Err(err) => panic!("no usable TLS stack for outbound HTTP: {err}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_tokens() {
        let a = random_token();
        let b = random_token();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    }

    #[test]
    fn loopback_only_http_rules() {
        let ok = |u: &str, dev| loopback_only_http(&reqwest::Url::parse(u).unwrap(), dev);
        assert!(ok("https://issuer.example.org/x", false).is_ok());
        assert!(ok("https://127.0.0.1/x", false).is_ok());
        assert!(ok("http://127.0.0.1:8080/x", true).is_ok());
        assert!(ok("http://127.9.9.9/x", true).is_ok());
        assert!(ok("http://[::1]:9000/x", true).is_ok());
        assert!(ok("http://localhost:9000/x", true).is_ok());
        assert!(ok("http://LOCALHOST/x", true).is_ok());
        assert!(ok("http://127.0.0.1/x", false).is_err());
        assert!(ok("http://localhost/x", false).is_err());
        assert!(ok("http://[::]/x", true).is_err());
        assert!(ok("http://0.0.0.0/x", true).is_err());
        assert!(ok("http://localhost.evil.example/x", true).is_err());
        assert!(ok("http://127.0.0.1.nip.io/x", true).is_err());
        assert!(ok("ftp://127.0.0.1/x", true).is_err());
        assert!(ok("file:///etc/passwd", true).is_err());
        match ok("http://registry.example.org/x", true) {
            Err(err @ ClientError::OutboundNotAllowed { .. }) => {
                assert!(err.to_string().contains("registry.example.org"), "{err}");
            }
            other => panic!("{other:?}"),
        }
    }
}
