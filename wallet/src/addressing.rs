//! Whether a credential is addressed to this wallet's holder.
//!
//! The wallet refuses to keep what it could never present: a gateway's holder-binding check
//! would refuse it, and a wallet holding other people's credentials leaks them. The rules
//! mirror that check:
//! - a privilege's subject is the holder;
//! - a study's sponsor is the holder (a research network's wallet holds its study);
//! - a consent is the holder's own (the patient), or its grantee is the holder, the
//!   organization of a privilege held here, or a study held here.

use federation::credentials::CredentialKind;
use federation::verify::VerifiedCredential;
use serde_json::Value;

use crate::error::{Result, WalletError};
use crate::store::StoredCredential;

fn field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// The grantee id of a consent's subject.
pub(crate) fn grantee_id(claims: &Value) -> Option<&str> {
    claims.get("grantee").and_then(|g| field(g, "id"))
}

/// Organizations of the privileges held by `holder`.
pub(crate) fn organizations<'a>(
    holder: &'a str,
    held: impl IntoIterator<Item = &'a StoredCredential>,
) -> Vec<&'a str> {
    held.into_iter()
        .filter(|c| c.kind == CredentialKind::ClinicianPrivilege)
        .filter(|c| field(&c.claims, "id") == Some(holder))
        .filter_map(|c| field(&c.claims, "organization"))
        .collect()
}

/// Ids of the studies sponsored by `holder`.
pub(crate) fn studies<'a>(
    holder: &'a str,
    held: impl IntoIterator<Item = &'a StoredCredential>,
) -> Vec<&'a str> {
    held.into_iter()
        .filter(|c| c.kind == CredentialKind::ResearchStudy)
        .filter(|c| field(&c.claims, "sponsor") == Some(holder))
        .filter_map(|c| field(&c.claims, "id"))
        .collect()
}

/// Refuses a verified credential that is not addressed to `holder`.
pub(crate) fn check(
    verified: &VerifiedCredential,
    holder: &str,
    held: &[StoredCredential],
) -> Result<()> {
    let claims = &verified.subject;
    let subject = field(claims, "id").unwrap_or("nobody");
    let kind = verified.kind;
    match kind {
        CredentialKind::ClinicianPrivilege if subject == holder => Ok(()),
        CredentialKind::ClinicianPrivilege => Err(WalletError::NotAddressed(format!(
            "this {kind} is issued to {subject}, not to this wallet's holder {holder}; import it into that holder's wallet"
        ))),
        CredentialKind::ResearchStudy => match field(claims, "sponsor") {
            Some(sponsor) if sponsor == holder => Ok(()),
            sponsor => Err(WalletError::NotAddressed(format!(
                "this {kind} is sponsored by {}, not by this wallet's holder {holder}; import it into the sponsor's wallet",
                sponsor.unwrap_or("nobody")
            ))),
        },
        CredentialKind::PatientConsent => {
            let grantee = grantee_id(claims).unwrap_or("nobody");
            let bound = subject == holder
                || grantee == holder
                || organizations(holder, held).contains(&grantee)
                || studies(holder, held).contains(&grantee);
            if bound {
                Ok(())
            } else {
                Err(WalletError::NotAddressed(format!(
                    "this {kind} is granted to {grantee}, which is neither this wallet's holder {holder} nor the organization or study of a credential held here; import the privilege or study first if the grant is to it"
                )))
            }
        }
    }
}
