//! The shared contract of a fedgate federation.
//!
//! Every participant (credentialing office, gateway, wallet, visibility layer) links this
//! crate, so that there is exactly one definition of what a credential is and one way to
//! decide whether it is valid.
//!
//! Map of the modules:
//! - [`b64`]: base64url without padding, the one encoding of JOSE, for every module.
//! - [`keys`]: key pairs, key files (0600, refused when readable by others), the crypto inventory.
//! - [`did`]: DID resolution. did:key and did:jwk locally; did:web only through an explicit allow-map,
//!   never an arbitrary URL. Also the in-memory resolver handed to ssi.
//! - `context`: the bundled JSON-LD contexts (nothing is fetched).
//! - [`bundle`]: contexts, schemas and related resources a service bundles by configuration.
//! - [`cache`]: a bounded map of digests in two generations (proofs, decisions).
//! - [`schema`]: the JSON Schemas of the credential types, checked on issue and on verify.
//! - [`kind`]: the credential types fedgate knows, by their VC `type` names.
//! - [`credentials`]: the three credential types, issuing in both proof formats, presenting.
//! - [`json`]: the one strict JSON reader (duplicate keys, depth, UTF-8) for all input.
//! - [`jose`]: the compact JWS handling for VC-JOSE credentials and presentations.
//! - [`sdjwt`]: SD-JWT VC (`dc+sd-jwt`): issuing, revealing, presenting with key binding.
//! - [`status`]: Bitstring and Token Status Lists, on the issuer side and as a verifier's cache.
//! - [`trust`]: which issuers are trusted for which credential type.
//! - [`registry`]: the governance-signed federation manifest: members, trusted issuers, contracts.
//! - [`verify`]: the one verification pipeline, naming the check that failed.
//! - [`events`]: access events, the only thing a federation centralizes (no PHI).
//! - [`log`]: RFC 6962 hashing and the verifiers of the log's inclusion and consistency proofs.
//! - [`checkpoint`]: C2SP tlog-checkpoint signed notes of the log's tree heads.
//! - [`wire`]: the visibility log's wire types: signed event batches, receipts, log leaves.
//! - [`fhir_consent`]: PatientConsentCredential to and from FHIR R4 `Consent`.
//! - [`client`]: the outbound HTTP client policy (https only, no proxy, no redirects).
//! - [`time`]: clock helpers shared by issuing and verifying.
//! - `error`: errors shared by several modules (an unknown name in a closed set).

pub mod b64;
pub mod bundle;
pub mod cache;
pub mod checkpoint;
pub mod client;
mod context;
pub mod credentials;
pub mod did;
mod error;
pub mod events;
pub mod fhir_consent;
pub mod jose;
pub mod json;
pub mod keys;
pub mod kind;
pub mod log;
pub mod registry;
pub mod schema;
pub mod sdjwt;
pub mod status;
pub mod time;
pub mod trust;
pub mod verify;
pub mod wire;

#[cfg(test)]
mod schema_examples;

pub use credentials::CredentialKind;
pub use verify::{Check, VerifyError};
