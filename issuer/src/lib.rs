//! The issuer service run by credentialing offices, IRBs and consent registries.
//!
//! Map of the modules:
//! - `config`: `issuer.toml`, validated at load.
//! - `store`: issued credentials and the revocation bitstring in `<data_dir>/issuer.redb`.
//!   It owns its trees; each change is one durable write, so a mover's "issue new, revoke
//!   old" is atomic and status list indexes are never handed out twice.
//! - [`routes`]: shared state, the router, and the handlers (W3C VC API, lifecycle,
//!   status list, revocation push, DID document, key inventory).
//! - `oid4vci`: OpenID4VCI 1.0 (pre-authorized code): configurations, metadata, offers
//!   and their QR codes, key proofs; its handlers are in `routes`.
//! - `offers`: OpenID4VCI offers, pre-authorized codes and access tokens in the database.
//! - `error`: the crate's error enum, mapped to problem+json once (and the OpenID4VCI
//!   endpoints' errors to their own JSON).

mod config;
mod error;
mod offers;
mod oid4vci;
pub mod routes;
mod store;

pub use config::IssuerConfig;
pub use routes::{router, IssuerState};

use std::future::Future;
use std::net::SocketAddr;

use error::StartError;

/// Runs the issuer until `shutdown` resolves. The public URL (and so the status list URL)
/// names the port actually bound (see [`service::start`]).
pub async fn run(
    config: IssuerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), StartError> {
    let bound = service::start::Bound::bind(&config.listen, config.public_url.as_deref())?;
    let state = IssuerState::new(config.clone(), bound.public_url().clone())?;
    // The nonce endpoint is unauthenticated: c_nonces nobody used are dropped once expired.
    let purging = state.clone();
    let purge = tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            every.tick().await;
            purging.purge_expired().await;
        }
    });
    let served = bound
        .serve(router(state), &config.limits, shutdown, ready)
        .await;
    purge.abort();
    served?;
    Ok(())
}
