//! The issuer service run by credentialing offices, IRBs and consent registries.
//!
//! Map of the modules:
//! - [`config`]: `issuer.toml`, validated at load.
//! - [`store`]: sled storage of issued credentials and the revocation bitstring. It owns
//!   its trees; transactions make a mover's "issue new, revoke old" atomic.
//! - [`routes`]: shared state, the router, and the handlers (W3C VC API, lifecycle,
//!   status list, revocation push, DID document, key inventory).
//! - [`error`]: the crate's error enum, mapped to problem+json once.

pub mod config;
pub mod error;
pub mod routes;
pub mod store;

pub use config::IssuerConfig;
pub use routes::{router, IssuerState};

use std::future::Future;
use std::net::SocketAddr;

/// Runs the issuer until `shutdown` resolves. Binding happens first so that a port of 0
/// works and the public URL (and so the status list URL) names the real port.
pub async fn run(
    config: IssuerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), String> {
    let listener = service::http::bind(&config.listen).map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let scheme = if config.listen.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let public = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{addr}/"));
    let mut public_url = reqwest::Url::parse(&public).map_err(|e| format!("public_url: {e}"))?;
    if !public_url.path().ends_with('/') {
        public_url.set_path(&format!("{}/", public_url.path()));
    }
    let state = IssuerState::new(config.clone(), public_url)?;
    let app = router(state);
    service::http::serve_on(
        listener,
        app,
        &config.listen,
        &config.limits,
        shutdown,
        ready,
    )
    .await
    .map_err(|e| e.to_string())
}
