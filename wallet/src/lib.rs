//! A holder's wallet: a clinician's, a research network's or a patient's.
//!
//! The wallet keeps the holder's key and the credentials issued to the holder, and signs
//! presentations bound to a gateway's challenge. It only keeps what verifies and what is
//! addressed to its holder, and it never signs for a gateway that does not speak as the
//! facility asked for.
//!
//! Map of the modules:
//! - [`holder`]: the [`Wallet`] (a folder with the holder key and the store): init, open,
//!   import, list, show, remove, present.
//! - `store`: the credential store (a database file) and [`StoredCredential`].
//! - `addressing`: whether a credential is addressed to this holder.
//! - `request`: [`PresentationRequest`] and picking what a presentation must carry.
//! - [`gateway`]: [`GatewayClient`]: challenges, consent registration and withdrawal.
//! - [`oid4vci`]: the OpenID4VCI client: [`Wallet::receive`] an offer (pre-authorized code).
//! - [`oid4vp`]: answering an OpenID4VP 1.0 authorization request (request object
//!   checked, DCQL matched, presentations posted to the verifier).
//! - `consent`: the patient's side: granting, registering, withdrawing consents.
//! - `trust_config`: the trust file a wallet verifies imports with.
//! - `error`: the errors, [`WalletError`], each a one-line actionable message.

mod addressing;
mod consent;
mod error;
pub mod gateway;
pub mod holder;
pub mod oid4vci;
pub mod oid4vp;
mod request;
mod store;
mod trust_config;

pub use consent::{ConsentGrant, Provision};
pub use error::{Result, TrustFileError, WalletError};
pub use gateway::{Challenge, GatewayClient};
pub use holder::Wallet;
pub use request::PresentationRequest;
pub use store::StoredCredential;
pub use trust_config::TrustConfig;

/// Parses a time given on a command line: `now`, an RFC 3339 date-time, or a date
/// (`2026-01-31`, read as midnight UTC).
pub fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("now") {
        return Ok(chrono::Utc::now());
    }
    if let Some(t) = federation::time::parse(text) {
        return Ok(t);
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| WalletError::BadTime(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_now_dates_or_rfc3339_and_anything_else_is_named() {
        assert_eq!(
            parse_time("2026-01-31").unwrap().to_rfc3339(),
            "2026-01-31T00:00:00+00:00"
        );
        assert_eq!(
            parse_time(" 2026-01-31T08:30:00Z ").unwrap().to_rfc3339(),
            "2026-01-31T08:30:00+00:00"
        );
        assert!(parse_time("NOW").is_ok());
        let err = parse_time("31/01/2026").unwrap_err();
        assert!(
            matches!(&err, WalletError::BadTime(t) if t == "31/01/2026"),
            "{err}"
        );
        assert!(err.to_string().contains("YYYY-MM-DD"), "{err}");
    }

    #[test]
    fn provisions_parse_and_refuse_by_name() {
        assert_eq!("permit".parse::<Provision>().unwrap(), Provision::Permit);
        assert_eq!("deny".parse::<Provision>().unwrap(), Provision::Deny);
        let err = "allow".parse::<Provision>().unwrap_err();
        assert_eq!(err, consent::UnknownProvision("allow".into()));
        assert_eq!(
            err.to_string(),
            "unknown provision \"allow\" (permit or deny)"
        );
    }
}
