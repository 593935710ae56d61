//! The organization's gateway: every request is verified, decided by policy for its data
//! domain, fetched locally, tokenized, recorded, and only then answered.
//!
//! Map of the modules, in the order a request meets them:
//! - [`config`]: `gateway.toml`, validated at load.
//! - `nonce`: single-use challenges (`service::nonce`), the replay defence of presentations.
//! - [`policy`]: Rego policies per domain (regorus), hot reload, `policy test` runner.
//! - [`records`]: the local FHIR store (a redb file; records read recently kept parsed)
//!   or the organization's FHIR server.
//! - [`tokenize`]: obligations applied to FHIR JSON (reveal, tokenize, pseudonymize,
//!   generalize, redact), the patient's identifiers scrubbed from every string and text
//!   attachment, unscannable attachments withheld; [`vault`]: the encrypted token vault.
//! - [`research`]: aggregate-only cohort queries, released with differential privacy
//!   (OpenDP) against each study's durable budget, and their request
//!   (`POST /v1/research/queries`).
//! - `detokenize`: `POST /v1/detokenize`, a token revealed under policy.
//! - `registration`: consents registered and withdrawn, DIDs linked to patients.
//! - [`consents`]: consents registered by patients, and their withdrawals.
//! - [`dates`]: the `shift_dates` obligation, one offset per patient and recipient.
//! - [`paging`]: cursors of answers larger than `max_records` (kept in the database, so
//!   any replica honours them), and their page proofs;
//!   [`outcome`]: the OperationOutcome that says what an answer left out and why.
//! - [`bundle`]: the answer's searchset Bundle, written one entry at a time;
//!   [`answers`]: tokenized pages kept for the next request that would make the same one.
//! - [`outbox`]: the durable access-event outbox, written before any response (one per
//!   database: replicas share it, and their shippers claim the batches they ship).
//! - [`jwe`]: response encryption to the requester's key-agreement key.
//! - [`shipper`]: delivers the outbox to the visibility log and checks the log's consistency;
//!   [`gossip`]: compares the adopted checkpoint with peer gateways' (split views).
//! - [`ledger`]: what one request's access event is made of, filled in as it goes.
//! - [`state`]: the shared state and the steps every request takes (verify, decide,
//!   tokenize, record); [`routes`]: the router and its small handlers; [`exchange`]: the
//!   clinical and billing request, top to bottom.
//! - [`oid4vp`]: OpenID4VP 1.0: an exchange started by an authorization request, the
//!   wallet's response verified and decided like an exchange, the records collected once.
//! - [`error`]: the crate's error enum, mapped to problem+json once.
//! - [`db`]: the gateway's database (`data_dir/gateway.redb`), whose trees the modules
//!   above own; a write is on disk when it returns.

pub mod answers;
pub mod bundle;
pub mod config;
pub mod consents;
pub mod dates;
pub mod db;
mod detokenize;
pub mod error;
pub mod exchange;
pub mod gossip;
pub mod jwe;
pub mod ledger;
pub mod oid4vp;
pub mod outbox;
pub mod outcome;
pub mod paging;
pub mod policy;
pub mod records;
mod registration;
pub mod research;
pub mod routes;
pub mod shipper;
pub mod state;
pub mod tokenize;
pub mod vault;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

pub use config::GatewayConfig;
pub use routes::router;
pub use state::GatewayState;

/// Why [`run`] failed: at start, or while serving.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Start(#[from] service::start::StartError),
    /// Keys, storage, policies, record source or trust could not be set up (the message
    /// names the key or file).
    #[error(transparent)]
    State(#[from] crate::error::StartError),
    #[error("visibility log shipping: {0}")]
    Shipping(#[from] shipper::ShipError),
}

/// Runs the gateway until `shutdown` resolves. The public URL names the port actually
/// bound (see [`service::start`]).
pub async fn run(
    config: GatewayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<(), RunError> {
    let bound = service::start::Bound::bind(&config.listen, config.public_url.as_deref())?;
    let mut config = config;
    // The DID document's service endpoint: as configured, else the bound address.
    config
        .public_url
        .get_or_insert_with(|| bound.public_url().to_string());
    let metrics = service::metrics::recorder();
    let state = GatewayState::new(config.clone(), bound.public_url().clone(), metrics)
        .await
        .map_err(RunError::State)?;
    match state.policy.current_digest() {
        Some(d) => tracing::info!(policy = %d, "policies loaded"),
        None => tracing::error!("policies failed to load: every request will be denied"),
    }
    if let Err(e) = state.policy.spawn_watch(Duration::from_secs(2)) {
        tracing::warn!(error = %e, "policy reload watcher not started");
    }
    let (nonces, pages, oid4vp) = (
        state.nonces.clone(),
        state.pages.clone(),
        state.oid4vp.clone(),
    );
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            if let Err(e) = nonces.purge_expired().await {
                tracing::warn!(error = %e, "expired challenges not purged; will retry");
            }
            if let Err(e) = pages.purge_expired().await {
                tracing::warn!(error = %e, "expired page cursors not purged; will retry");
            }
            if let Err(e) = oid4vp.purge_expired().await {
                tracing::warn!(error = %e, "expired OpenID4VP transactions not purged; will retry");
            }
        }
    });
    if let Some(vis) = config.visibility.clone() {
        let shipper = shipper::Shipper::new(
            &state.db,
            state.outbox.clone(),
            state.key.clone(),
            vis.clone(),
            state.verifier.resolver.clone(),
            config.dev_mode,
        )?;
        let shipper = std::sync::Arc::new(shipper);
        let _loops = shipper.clone().spawn();
        // With a signed manifest, every other custodian's gateway is a peer too.
        let more_peers = state.registry().map(|registry| {
            let own = config.did.clone();
            std::sync::Arc::new(move || {
                gossip::gateway_peers(
                    &registry.members_with_role(federation::registry::Role::Custodian),
                    &own,
                )
            }) as gossip::PeerSource
        });
        if !vis.peers.is_empty() || more_peers.is_some() {
            gossip::Gossip::new(
                &state.db,
                shipper,
                &vis.peers,
                more_peers,
                Duration::from_millis(vis.gossip_interval_ms),
                config.dev_mode,
            )?
            .spawn();
        }
    }
    bound
        .serve(router(state), &config.limits, shutdown, ready)
        .await?;
    Ok(())
}
