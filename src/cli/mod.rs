//! Subcommands that live beside `main.rs`: each file parses its own arguments and calls
//! the crates.

pub mod bench;
pub mod db;
pub mod federation;
pub mod issuer;
pub mod policy;
pub mod records;
pub mod visibility;
pub mod wallet;
