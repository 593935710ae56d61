//! The patient's side: granting a consent, registering it with a custodian, withdrawing it.
//!
//! A patient's consent is self-issued (issuer = subject = the holder) and needs no office.
//! Registering and withdrawing both present the consent, with the patient as holder, to a
//! custodian's gateway; the gateway's DID must be one of the consent's custodians, so that
//! no other organization learns of it. A consent is marked withdrawn only once a custodian
//! acknowledged the withdrawal (a local flag alone changes nothing at the custodian); it
//! can still be sent to further custodians' withdrawal endpoints, but is never presented
//! for access or registered again.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use federation::credentials::{
    self, ConsentSubject, CredentialKind, Domain, Grantee, IssueError, PatientIdentifier, Period,
    ProofFormat,
};
use federation::did::DidResolver;
use federation::status::StatusCache;
use federation::trust::StaticTrust;
use federation::verify::Verifier;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Result, WalletError};
use crate::gateway::{Challenge, GatewayClient};
use crate::holder::Wallet;
use crate::store::StoredCredential;

/// Whether a consent permits or denies the access it describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provision {
    Permit,
    Deny,
}

impl Provision {
    fn as_str(self) -> &'static str {
        match self {
            Provision::Permit => "permit",
            Provision::Deny => "deny",
        }
    }
}

/// A provision other than `permit` or `deny` (on a command line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown provision {0:?} (permit or deny)")]
pub struct UnknownProvision(pub String);

impl std::str::FromStr for Provision {
    type Err = UnknownProvision;
    fn from_str(s: &str) -> Result<Self, UnknownProvision> {
        match s {
            "permit" => Ok(Provision::Permit),
            "deny" => Ok(Provision::Deny),
            other => Err(UnknownProvision(other.to_string())),
        }
    }
}

impl std::fmt::Display for Provision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The terms of a consent the holder (the patient) grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsentGrant {
    /// The patient's identifiers (MRNs) at the custodians.
    pub patient_identifiers: Vec<PatientIdentifier>,
    /// DIDs of the organizations whose records the consent covers.
    pub custodians: Vec<String>,
    pub grantee: Grantee,
    pub provision: Provision,
    pub domains: Vec<Domain>,
    /// HL7 v3 PurposeOfUse codes.
    pub purposes: Vec<String>,
    /// FHIR R4 resource types.
    pub data_classes: Vec<String>,
    pub period_start: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_end: Option<DateTime<Utc>>,
    #[serde(default)]
    pub format: ProofFormat,
}

/// A verifier for the wallet's own consents: did:key resolves locally and a self-issued
/// consent needs no trusted issuer, so it never touches the network.
fn local_verifier() -> Verifier {
    let resolver = Arc::new(DidResolver::new(false));
    let status = Arc::new(StatusCache::new(
        resolver.clone(),
        Duration::from_secs(60),
        false,
    ));
    Verifier::new(resolver, Arc::new(StaticTrust::new()), status)
}

impl Wallet {
    /// Self-issues a PatientConsentCredential (issuer = subject = the holder), checks it
    /// against its schema and the verification pipeline, stores it and returns it as it
    /// travels.
    pub async fn consent_grant(&self, grant: ConsentGrant) -> Result<Value> {
        let now = Utc::now();
        if let Some(end) = grant.period_end {
            if end <= grant.period_start {
                return Err(WalletError::InvalidConsent(
                    "the period ends before it starts".into(),
                ));
            }
            if end <= now {
                return Err(WalletError::InvalidConsent(
                    "the period has already ended".into(),
                ));
            }
        }
        let subject = ConsentSubject {
            id: self.did().to_string(),
            patient_identifiers: grant.patient_identifiers,
            custodians: grant.custodians,
            grantee: grant.grantee,
            provision: grant.provision.as_str().to_string(),
            domains: grant.domains,
            purposes: grant.purposes,
            data_classes: grant.data_classes,
            period: Period {
                start: federation::time::rfc3339(grant.period_start),
                end: grant.period_end.map(federation::time::rfc3339),
            },
        };
        let subject = serde_json::to_value(&subject)
            .map_err(|e| WalletError::InvalidConsent(e.to_string()))?;
        let unsigned = credentials::unsigned_credential(
            CredentialKind::PatientConsent,
            self.did(),
            subject,
            now,
            grant.period_end,
            None,
        );
        let credential = credentials::issue(unsigned, self.key(), grant.format)
            .await
            .map_err(|e| match e {
                IssueError::Schema(detail) => WalletError::InvalidConsent(detail.to_string()),
                other => WalletError::Sign(other),
            })?;
        let verified = local_verifier()
            .verify_credential(&credential)
            .await
            .map_err(WalletError::Rejected)?;
        self.store.insert_new(StoredCredential::from_verified(
            &verified,
            credential.clone(),
        ))?;
        Ok(credential)
    }

    /// The consents in this wallet: granted by the holder, or granted to the holder.
    pub fn consent_list(&self) -> Result<Vec<StoredCredential>> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|c| c.kind == CredentialKind::PatientConsent)
            .collect())
    }

    /// A consent in this wallet as a FHIR R4 `Consent` resource (docs/consent-mapping.md),
    /// for a patient portal or an EHR that keeps consents as FHIR. The credential was
    /// verified when it entered the wallet; its proof is not part of the resource.
    pub fn consent_fhir(&self, id: &str) -> Result<Value> {
        let stored = self.show(id)?;
        if stored.kind != CredentialKind::PatientConsent {
            return Err(WalletError::NotAConsent {
                id: id.to_string(),
                kind: stored.kind.to_string(),
            });
        }
        let document = match &stored.credential {
            Value::String(jwt) => {
                federation::jose::decode(jwt)
                    .map_err(|e| WalletError::ConsentMapping(e.to_string()))?
                    .payload
            }
            other => other.clone(),
        };
        federation::fhir_consent::consent_credential_to_fhir(&document)
            .map_err(|e| WalletError::ConsentMapping(e.to_string()))
    }

    /// Presents the consent (holder = the patient) to `POST /v1/consents` of a custodian.
    pub async fn consent_register(&self, id: &str, gateway: &GatewayClient) -> Result<Value> {
        let mut record = self.own_consent(id)?;
        if record.withdrawn {
            return Err(WalletError::Withdrawn { id: id.to_string() });
        }
        let (challenge, vp) = self.present_consent(&record, gateway).await?;
        let answer = gateway.register_consent(&vp).await?;
        if !record.registered_with.contains(&challenge.domain) {
            record.registered_with.push(challenge.domain);
        }
        self.store.update(&record)?;
        Ok(answer)
    }

    /// Presents the consent (holder = the patient) to `POST /v1/consents/withdrawals` of a
    /// custodian, then marks it withdrawn.
    pub async fn consent_withdraw(&self, id: &str, gateway: &GatewayClient) -> Result<Value> {
        let mut record = self.own_consent(id)?;
        let (challenge, vp) = self.present_consent(&record, gateway).await?;
        let answer = gateway.withdraw_consent(&vp).await?;
        record.withdrawn = true;
        record.withdrawn_at.get_or_insert_with(Utc::now);
        if !record.withdrawal_sent_to.contains(&challenge.domain) {
            record.withdrawal_sent_to.push(challenge.domain);
        }
        self.store.update(&record)?;
        Ok(answer)
    }

    fn own_consent(&self, id: &str) -> Result<StoredCredential> {
        let record = self.show(id)?;
        if record.kind != CredentialKind::PatientConsent {
            return Err(WalletError::NotAConsent {
                id: id.to_string(),
                kind: record.kind.to_string(),
            });
        }
        if record.subject != self.did() {
            return Err(WalletError::NotOwnConsent { id: id.to_string() });
        }
        Ok(record)
    }

    /// Asks the gateway for a challenge and, if the gateway is a custodian of the consent,
    /// signs a presentation of it in the consent's own format.
    async fn present_consent(
        &self,
        record: &StoredCredential,
        gateway: &GatewayClient,
    ) -> Result<(Challenge, Value)> {
        let challenge = gateway.challenge().await?;
        let custodians: Vec<&str> = record
            .claims
            .get("custodians")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if !custodians.contains(&challenge.domain.as_str()) {
            return Err(WalletError::NotACustodian {
                id: record.id.clone(),
                gateway: challenge.domain,
                custodians: custodians.join(", "),
            });
        }
        let vp = self
            .present_with(
                std::slice::from_ref(&record.credential),
                &challenge.binding(),
                record.format,
            )
            .await?;
        Ok((challenge, vp))
    }
}
