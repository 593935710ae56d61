//! The shared contract of a fedgate federation.
//!
//! Every participant (credentialing office, gateway, wallet, visibility layer) links this
//! crate, so that there is exactly one definition of what a credential is and one way to
//! decide whether it is valid.
//!
//! Map of the modules:
//! - [`keys`]: key pairs, key files (0600, refused when readable by others), the crypto inventory.
//! - [`did`]: DID resolution. did:key locally; did:web only through an explicit allow-map,
//!   never an arbitrary URL. Also the in-memory resolver handed to ssi.
//! - [`context`]: the bundled JSON-LD contexts (nothing is fetched).
//! - [`schema`]: the JSON Schemas of the credential types, checked on issue and on verify.
//! - [`credentials`]: the three credential types, issuing in both proof formats, presenting.
//! - [`jose`]: the compact JWS handling for VC-JOSE credentials and presentations.
//! - [`status`]: Bitstring Status Lists, on the issuer side and as a verifier's cache.
//! - [`trust`]: which issuers are trusted for which credential type.
//! - [`registry`]: the governance-signed federation manifest: members, trusted issuers, contracts.
//! - [`verify`]: the one verification pipeline, naming the check that failed.
//! - [`events`]: access events, the only thing a federation centralizes (no PHI).
//! - [`log`]: the visibility log, an RFC 6962 Merkle tree in sled, and its proof verifiers.
//! - [`checkpoint`]: C2SP tlog-checkpoint signed notes of the log's tree heads.
//! - [`eventbus`]: the optional NATS JetStream path for access events (publish, stream, consumer).
//! - [`visibility`]: the visibility service: signed event batches in, receipts, checkpoints, proofs, auditor and patient queries out.
//! - [`fhir_consent`]: PatientConsentCredential to and from FHIR R4 `Consent`.
//! - [`db`]: opening the embedded sled databases (one bounded cache size for all).
//! - [`nonce`]: single-use challenges (sled), the replay defence of presentations.
//! - [`config`]: loading a service's TOML configuration (one error type, relative paths).
//! - [`json`]: the one strict JSON reader (duplicate keys, UTF-8, surrogates, depth) for
//!   request bodies and every signed byte string.
//! - [`http`]: problem+json, strict JSON bodies, limits, TLS/loopback serving.
//! - [`admin`]: admin bearer tokens (0600 file, compared by digest; no default).
//! - [`time`]: clock helpers shared by issuing and verifying.

pub mod admin;
pub mod checkpoint;
pub mod config;
pub mod context;
pub mod credentials;
pub mod db;
pub mod did;
pub mod eventbus;
pub mod events;
pub mod fhir_consent;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod jose;
pub mod json;
pub mod keys;
pub mod log;
pub mod nonce;
pub mod registry;
pub mod schema;
pub mod status;
pub mod time;
pub mod trust;
pub mod verify;
pub mod visibility;

#[cfg(test)]
mod schema_examples;

pub use credentials::CredentialKind;
pub use verify::{Check, VerifyError};
