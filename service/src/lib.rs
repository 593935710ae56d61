//! What every fedgate service (issuer, gateway, visibility) does the same way, so that each
//! service crate holds only what is its own.
//!
//! Map of the modules:
//! - [`config`]: loading a service's TOML configuration (one error type, relative paths).
//! - [`http`]: problem+json, strict JSON bodies, limits and timeouts, TLS/loopback serving.
//! - [`admin`]: admin bearer tokens (0600 file, compared by digest; no default).
//! - [`db`]: opening the embedded databases (one bounded cache size for all).
//! - [`eventbus`]: the optional NATS JetStream path for access events (publish, stream,
//!   consumer), shared by the gateways that publish and the visibility service that reads.
//! - [`openapi`]: the OpenAPI document generated from the handlers, `/openapi.json` and the
//!   `/docs` page.
//! - [`params`]: path parameters checked against their formats (400 naming the parameter).
//! - [`nonce`]: single-use challenges, the replay defence of presentations and logins.
//! - [`qr`]: QR codes (SVG and PNG) of the URLs a wallet scans.
//! - [`start`]: start-up: bind, derive the public URL from the bound address, serve.
//! - [`vcapi`]: the VC API verify endpoints, answered alike by every service.
//!
//! The wallet never links this crate: it has no server parts.

pub mod admin;
pub mod config;
pub mod db;
pub mod eventbus;
pub mod http;
pub mod metrics;
pub mod nonce;
pub mod openapi;
pub mod params;
pub mod qr;
pub mod start;
pub mod vcapi;
