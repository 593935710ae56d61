//! The organization's gateway: every request is verified, decided by policy for its data
//! domain, fetched locally, tokenized, recorded, and only then answered.
//!
//! Map of the modules, in the order a request meets them:
//! - [`config`]: `gateway.toml`, validated at load.
//! - [`nonce`]: single-use challenges (sled), the replay defence of presentations.
//! - [`policy`]: Rego policies per domain (regorus), hot reload, `policy test` runner.
//! - [`records`]: the local FHIR store (sled) or the organization's FHIR server.
//! - [`tokenize`]: obligations applied to FHIR JSON (reveal, tokenize, pseudonymize,
//!   generalize, redact); [`vault`]: the encrypted token vault.
//! - [`research`]: aggregate-only cohort queries with small-cell suppression.
//! - [`consents`]: consents registered by patients, and their withdrawals.
//! - [`outbox`]: the durable access-event outbox, written before any response.
//! - [`jwe`]: response encryption to the requester's key-agreement key.
//! - [`service`]: shared state, router and the handlers; [`exchange`]: the request flow.
//! - [`error`]: the crate's error enum, mapped to problem+json once.

pub mod config;
pub mod consents;
pub mod error;
pub mod jwe;
pub mod nonce;
pub mod outbox;
