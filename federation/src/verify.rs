//! The one verification pipeline. Issuer, gateway, wallet and visibility all call it.
//!
//! ssi checks a proof's signature; everything else a relying party needs is done here, and
//! each failure names its [`Check`]:
//!
//! | check            | credential                                              | presentation                      |
//! |------------------|---------------------------------------------------------|-----------------------------------|
//! | `format`         | a JWT, an enveloped JWT or a Data Integrity document     | same                              |
//! | `proof`          | accepted alg/suite; key is the issuer's, listed under `assertionMethod`; signature | key is the holder's, under `authentication`; signature |
//! | `validity`       | validFrom / validUntil with clock skew                   | JWT `exp`/`iat`, proof `expires`  |
//! | `challenge`      |                                                          | nonce / proof.challenge           |
//! | `domain`         |                                                          | aud / proof.domain = verifier DID |
//! | `schema`         | the type's JSON Schema                                   |                                   |
//! | `issuer-trust`   | issuer trusted for the type (consent: or self-issued)    |                                   |
//! | `status`         | Bitstring Status List (privileges must have one)         |                                   |
//! | `holder-binding` |                                                          | each credential bound to the holder |
//!
//! Every embedded credential goes through the full credential pipeline; an error then also
//! names the credential's position in the presentation.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::credentials::{
    unwrap_enveloped, CredentialKind, PresentationBinding, ProofFormat, StatusEntry,
};
use crate::did::{did_of, DidResolver, Relationship, StaticDids};
use crate::status::{StatusCache, StatusError};
use crate::trust::TrustSource;

/// Most credentials one presentation may carry.
pub const MAX_EMBEDDED_CREDENTIALS: usize = 16;

/// `validFrom` and `validUntil` as read from a credential.
type ValidityPeriod = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// The checks of the pipeline, named in every failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    Format,
    Proof,
    Validity,
    Challenge,
    Domain,
    Schema,
    IssuerTrust,
    Status,
    HolderBinding,
}

impl Check {
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Format => "format",
            Check::Proof => "proof",
            Check::Validity => "validity",
            Check::Challenge => "challenge",
            Check::Domain => "domain",
            Check::Schema => "schema",
            Check::IssuerTrust => "issuer-trust",
            Check::Status => "status",
            Check::HolderBinding => "holder-binding",
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed verification: which check, why, and which embedded credential (if any).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyError {
    pub check: Check,
    pub detail: String,
    /// Position of the failing credential inside a presentation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<usize>,
}

impl VerifyError {
    fn new(check: Check, detail: impl Into<String>) -> Self {
        VerifyError {
            check,
            detail: detail.into(),
            credential: None,
        }
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.credential {
            Some(i) => write!(
                f,
                "check {} failed for credential #{i}: {}",
                self.check, self.detail
            ),
            None => write!(f, "check {} failed: {}", self.check, self.detail),
        }
    }
}

impl std::error::Error for VerifyError {}

/// A credential that passed every check. Only these claims may reach policy.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifiedCredential {
    pub id: Option<String>,
    pub kind: CredentialKind,
    pub format: ProofFormat,
    pub issuer: String,
    /// The verified `credentialSubject`.
    pub subject: Value,
    pub valid_from: Option<DateTime<Utc>>,
    pub valid_until: Option<DateTime<Utc>>,
    pub status: Option<StatusEntry>,
    /// SHA-256 of the secured credential as presented.
    pub digest: String,
    pub checks: Vec<Check>,
}

/// A presentation that passed every check, with its verified credentials.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifiedPresentation {
    pub id: Option<String>,
    pub holder: String,
    pub format: ProofFormat,
    pub credentials: Vec<VerifiedCredential>,
    pub checks: Vec<Check>,
    /// SHA-256 of the presentation as received (replay bookkeeping).
    pub digest: String,
}

impl VerifiedPresentation {
    pub fn of_kind(&self, kind: CredentialKind) -> impl Iterator<Item = &VerifiedCredential> {
        self.credentials.iter().filter(move |c| c.kind == kind)
    }
}

/// The verifier: resolver, trust and status, shared by a service behind an `Arc`.
pub struct Verifier {
    pub resolver: Arc<DidResolver>,
    pub trust: Arc<dyn TrustSource>,
    pub status: Arc<StatusCache>,
    pub skew: chrono::Duration,
}

const DI_SUITES: [&str; 2] = ["eddsa-rdfc-2022", "ecdsa-rdfc-2019"];

fn digest_of(v: &Value) -> String {
    use sha2::{Digest, Sha256};
    let bytes = match v {
        Value::String(s) => s.as_bytes().to_vec(),
        other => serde_json::to_vec(other).unwrap_or_default(),
    };
    hex::encode(Sha256::digest(bytes))
}

fn jose_check(e: &crate::jose::JoseError) -> Check {
    use crate::jose::JoseError::*;
    match e {
        NotCompact | TooLarge | BadPayload(_) => Check::Format,
        _ => Check::Proof,
    }
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Reads a Data Integrity proof's fields we rely on, refusing anything unexpected.
fn di_proof<'a>(doc: &'a Value, purpose: &str) -> Result<&'a Value, VerifyError> {
    let proof = match doc.get("proof") {
        Some(p @ Value::Object(_)) => p,
        Some(Value::Array(_)) => {
            return Err(VerifyError::new(
                Check::Proof,
                "more than one proof is not accepted",
            ))
        }
        _ => return Err(VerifyError::new(Check::Format, "no proof")),
    };
    if str_field(proof, "type") != Some("DataIntegrityProof") {
        return Err(VerifyError::new(
            Check::Proof,
            format!(
                "proof type {:?} is not accepted (DataIntegrityProof)",
                str_field(proof, "type").unwrap_or("")
            ),
        ));
    }
    let suite = str_field(proof, "cryptosuite").unwrap_or("");
    if !DI_SUITES.contains(&suite) {
        return Err(VerifyError::new(
            Check::Proof,
            format!("cryptosuite {suite:?} is not accepted (eddsa-rdfc-2022, ecdsa-rdfc-2019)"),
        ));
    }
    if str_field(proof, "proofPurpose") != Some(purpose) {
        return Err(VerifyError::new(
            Check::Proof,
            format!("proof purpose must be {purpose}"),
        ));
    }
    Ok(proof)
}

/// Verifies a Data Integrity document with ssi, off the async runtime (RDF canonicalization
/// costs milliseconds of CPU) and with a resolver that knows only `did_doc`.
async fn verify_di(
    document: &Value,
    did_doc: Arc<Value>,
    presentation: bool,
) -> Result<(), VerifyError> {
    use ssi::claims::data_integrity::{AnySuite, DataIntegrity};
    let json =
        serde_json::to_vec(document).map_err(|e| VerifyError::new(Check::Format, e.to_string()))?;
    let task = move || -> Result<(), VerifyError> {
        let format_err = |e: &dyn fmt::Display| VerifyError::new(Check::Format, e.to_string());
        let resolver = ssi::dids::VerificationMethodDIDResolver::<
            _,
            ssi::verification_methods::AnyMethod,
        >::new(StaticDids::new([did_doc.as_ref()]));
        let params = ssi::claims::VerificationParameters::from_resolver(resolver)
            .with_json_ld_loader(crate::context::loader());
        let outcome = if presentation {
            let vp: DataIntegrity<ssi::claims::vc::v2::syntax::JsonPresentation<Value>, AnySuite> =
                ssi::claims::data_integrity::from_json_slice(&json).map_err(|e| format_err(&e))?;
            futures::executor::block_on(vp.verify(params))
        } else {
            let vc: DataIntegrity<ssi::claims::vc::v2::JsonCredential, AnySuite> =
                ssi::claims::data_integrity::from_json_slice(&json).map_err(|e| format_err(&e))?;
            futures::executor::block_on(vc.verify(params))
        };
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(ssi::claims::Invalid::Claims(e))) => {
                Err(VerifyError::new(Check::Validity, e.to_string()))
            }
            Ok(Err(e)) => Err(VerifyError::new(Check::Proof, e.to_string())),
            Err(e) => Err(VerifyError::new(Check::Proof, e.to_string())),
        }
    };
    tokio::task::spawn_blocking(task)
        .await
        .map_err(|e| VerifyError::new(Check::Proof, format!("verification aborted: {e}")))?
}

impl Verifier {
    pub fn new(
        resolver: Arc<DidResolver>,
        trust: Arc<dyn TrustSource>,
        status: Arc<StatusCache>,
    ) -> Self {
        Verifier {
            resolver,
            trust,
            status,
            skew: chrono::Duration::seconds(crate::time::DEFAULT_SKEW_SECS),
        }
    }

    /// Verifies one credential as it travels (JWT string, enveloped JWT, or DI object).
    pub async fn verify_credential(
        &self,
        input: &Value,
    ) -> Result<VerifiedCredential, VerifyError> {
        let digest = digest_of(input);
        let (format, credential) = match input {
            Value::String(jwt) => (ProofFormat::Jwt, self.check_jwt_credential(jwt).await?),
            Value::Object(_) => match unwrap_enveloped(input) {
                Some(jwt) => (ProofFormat::Jwt, self.check_jwt_credential(jwt).await?),
                None => (
                    ProofFormat::DataIntegrity,
                    self.check_di_credential(input).await?,
                ),
            },
            _ => {
                return Err(VerifyError::new(
                    Check::Format,
                    "a credential is a JWT string or a JSON object",
                ))
            }
        };
        let mut checks = vec![Check::Format, Check::Proof];
        let kind = CredentialKind::of_credential(&credential)
            .map_err(|e| VerifyError::new(Check::Format, e))?;
        let issuer = str_field(&credential, "issuer")
            .unwrap_or_default()
            .to_string();

        let (valid_from, valid_until) = self.check_validity(&credential)?;
        checks.push(Check::Validity);

        crate::schema::check(kind, &credential).map_err(|e| VerifyError::new(Check::Schema, e))?;
        checks.push(Check::Schema);

        let subject = credential
            .get("credentialSubject")
            .cloned()
            .unwrap_or(Value::Null);
        let self_issued_consent =
            kind == CredentialKind::PatientConsent && str_field(&subject, "id") == Some(&issuer);
        if !self_issued_consent && !self.trust.is_trusted(kind, &issuer) {
            return Err(VerifyError::new(
                Check::IssuerTrust,
                format!("{issuer} is not trusted to issue {kind}"),
            ));
        }
        checks.push(Check::IssuerTrust);

        let status = match credential.get("credentialStatus") {
            Some(s) => Some(
                serde_json::from_value::<StatusEntry>(s.clone())
                    .map_err(|e| VerifyError::new(Check::Status, e.to_string()))?,
            ),
            None => None,
        };
        match &status {
            Some(entry) => {
                self.status
                    .check(entry, &issuer)
                    .await
                    .map_err(|e| VerifyError::new(Check::Status, e.to_string()))?;
                checks.push(Check::Status);
            }
            None if kind == CredentialKind::ClinicianPrivilege => {
                return Err(VerifyError::new(
                    Check::Status,
                    "a privilege credential must carry a revocation status",
                ))
            }
            None => {}
        }

        Ok(VerifiedCredential {
            id: str_field(&credential, "id").map(str::to_string),
            kind,
            format,
            issuer,
            subject,
            valid_from,
            valid_until,
            status,
            digest,
            checks,
        })
    }

    async fn check_jwt_credential(&self, jwt: &str) -> Result<Value, VerifyError> {
        let decoded = crate::jose::decode(jwt)
            .map_err(|e| VerifyError::new(jose_check(&e), e.to_string()))?;
        if let Some(typ) = decoded.typ.as_deref() {
            if !matches!(typ, "vc+jwt" | "vc-ld+jwt") {
                return Err(VerifyError::new(
                    Check::Format,
                    format!("typ {typ:?} is not a credential"),
                ));
            }
        }
        let issuer = str_field(&decoded.payload, "issuer")
            .ok_or_else(|| VerifyError::new(Check::Format, "issuer must be a DID string"))?;
        if did_of(&decoded.kid) != issuer {
            return Err(VerifyError::new(
                Check::Proof,
                "signed with a key that does not belong to the issuer",
            ));
        }
        let (key, _) = self
            .resolver
            .public_key(&decoded.kid, Relationship::AssertionMethod)
            .await
            .map_err(|e| VerifyError::new(Check::Proof, e.to_string()))?;
        decoded
            .verify(&key)
            .map_err(|e| VerifyError::new(Check::Proof, e.to_string()))?;
        Ok(decoded.payload)
    }

    async fn check_di_credential(&self, doc: &Value) -> Result<Value, VerifyError> {
        let proof = di_proof(doc, "assertionMethod")?;
        let issuer = str_field(doc, "issuer")
            .ok_or_else(|| VerifyError::new(Check::Format, "issuer must be a DID string"))?;
        let vm = str_field(proof, "verificationMethod").unwrap_or_default();
        if did_of(vm) != issuer {
            return Err(VerifyError::new(
                Check::Proof,
                "signed with a key that does not belong to the issuer",
            ));
        }
        let (_, did_doc) = self
            .resolver
            .public_key(vm, Relationship::AssertionMethod)
            .await
            .map_err(|e| VerifyError::new(Check::Proof, e.to_string()))?;
        verify_di(doc, did_doc, false).await?;
        let mut credential = doc.clone();
        if let Some(obj) = credential.as_object_mut() {
            obj.remove("proof");
        }
        Ok(credential)
    }

    fn check_validity(&self, credential: &Value) -> Result<ValidityPeriod, VerifyError> {
        let now = Utc::now();
        let parse = |key: &str| -> Result<Option<DateTime<Utc>>, VerifyError> {
            match credential.get(key) {
                None => Ok(None),
                Some(Value::String(s)) => crate::time::parse(s).map(Some).ok_or_else(|| {
                    VerifyError::new(
                        Check::Validity,
                        format!("{key} is not an RFC 3339 date-time"),
                    )
                }),
                Some(_) => Err(VerifyError::new(
                    Check::Validity,
                    format!("{key} is not a date-time string"),
                )),
            }
        };
        let from = parse("validFrom")?;
        let until = parse("validUntil")?;
        if from.is_some_and(|f| f > now + self.skew) {
            return Err(VerifyError::new(Check::Validity, "not yet valid"));
        }
        if until.is_some_and(|u| u + self.skew < now) {
            return Err(VerifyError::new(Check::Validity, "expired"));
        }
        Ok((from, until))
    }

    /// Verifies a presentation bound to `binding`, every credential in it, and that each
    /// credential belongs to the holder.
    pub async fn verify_presentation(
        &self,
        input: &Value,
        binding: &PresentationBinding,
    ) -> Result<VerifiedPresentation, VerifyError> {
        let digest = digest_of(input);
        let (format, vp) = match input {
            Value::String(jwt) => (
                ProofFormat::Jwt,
                self.check_jwt_presentation(jwt, binding).await?,
            ),
            Value::Object(_) => (
                ProofFormat::DataIntegrity,
                self.check_di_presentation(input, binding).await?,
            ),
            _ => {
                return Err(VerifyError::new(
                    Check::Format,
                    "a presentation is a JWT string or a JSON object",
                ))
            }
        };
        let holder = str_field(&vp, "holder").unwrap_or_default().to_string();
        let embedded: Vec<&Value> = match vp.get("verifiableCredential") {
            Some(Value::Array(a)) => a.iter().collect(),
            Some(v @ (Value::Object(_) | Value::String(_))) => vec![v],
            _ => Vec::new(),
        };
        if embedded.is_empty() {
            return Err(VerifyError::new(
                Check::Format,
                "the presentation carries no credential",
            ));
        }
        if embedded.len() > MAX_EMBEDDED_CREDENTIALS {
            return Err(VerifyError::new(
                Check::Format,
                format!("more than {MAX_EMBEDDED_CREDENTIALS} credentials"),
            ));
        }
        let mut credentials = Vec::with_capacity(embedded.len());
        for (i, vc) in embedded.into_iter().enumerate() {
            let verified = self.verify_credential(vc).await.map_err(|mut e| {
                e.credential = Some(i);
                e
            })?;
            credentials.push(verified);
        }
        check_holder_binding(&holder, &credentials)?;
        Ok(VerifiedPresentation {
            id: str_field(&vp, "id").map(str::to_string),
            holder,
            format,
            credentials,
            checks: vec![
                Check::Format,
                Check::Proof,
                Check::Validity,
                Check::Challenge,
                Check::Domain,
                Check::HolderBinding,
            ],
            digest,
        })
    }

    async fn check_jwt_presentation(
        &self,
        jwt: &str,
        binding: &PresentationBinding,
    ) -> Result<Value, VerifyError> {
        let decoded = crate::jose::decode(jwt)
            .map_err(|e| VerifyError::new(jose_check(&e), e.to_string()))?;
        if !matches!(decoded.typ.as_deref(), Some("vp+jwt" | "vp-ld+jwt")) {
            return Err(VerifyError::new(Check::Format, "typ must be vp+jwt"));
        }
        let vp = decoded.payload.clone();
        if !has_type(&vp, "VerifiablePresentation") {
            return Err(VerifyError::new(
                Check::Format,
                "not a VerifiablePresentation",
            ));
        }
        let holder = str_field(&vp, "holder")
            .ok_or_else(|| VerifyError::new(Check::Format, "holder must be a DID string"))?;
        if did_of(&decoded.kid) != holder {
            return Err(VerifyError::new(
                Check::Proof,
                "signed with a key that does not belong to the holder",
            ));
        }
        let (key, _) = self
            .resolver
            .public_key(&decoded.kid, Relationship::Authentication)
            .await
            .map_err(|e| VerifyError::new(Check::Proof, e.to_string()))?;
        decoded
            .verify(&key)
            .map_err(|e| VerifyError::new(Check::Proof, e.to_string()))?;
        let now = Utc::now().timestamp();
        let skew = self.skew.num_seconds();
        match vp.get("exp").and_then(Value::as_i64) {
            Some(exp) if exp + skew >= now => {}
            Some(_) => return Err(VerifyError::new(Check::Validity, "presentation expired")),
            None => return Err(VerifyError::new(Check::Validity, "presentation has no exp")),
        }
        if vp
            .get("iat")
            .and_then(Value::as_i64)
            .is_some_and(|iat| iat > now + skew)
        {
            return Err(VerifyError::new(
                Check::Validity,
                "presentation issued in the future",
            ));
        }
        if str_field(&vp, "nonce") != Some(binding.challenge.as_str()) {
            return Err(VerifyError::new(
                Check::Challenge,
                "nonce is not this verifier's challenge",
            ));
        }
        let aud_ok = match vp.get("aud") {
            Some(Value::String(a)) => a == &binding.domain,
            Some(Value::Array(a)) => a.len() == 1 && a[0] == binding.domain.as_str(),
            _ => false,
        };
        if !aud_ok {
            return Err(VerifyError::new(
                Check::Domain,
                "aud is not this verifier's DID",
            ));
        }
        Ok(vp)
    }

    async fn check_di_presentation(
        &self,
        vp: &Value,
        binding: &PresentationBinding,
    ) -> Result<Value, VerifyError> {
        if !has_type(vp, "VerifiablePresentation") {
            return Err(VerifyError::new(
                Check::Format,
                "not a VerifiablePresentation",
            ));
        }
        let proof = di_proof(vp, "authentication")?;
        let holder = str_field(vp, "holder")
            .ok_or_else(|| VerifyError::new(Check::Format, "holder must be a DID string"))?;
        let vm = str_field(proof, "verificationMethod").unwrap_or_default();
        if did_of(vm) != holder {
            return Err(VerifyError::new(
                Check::Proof,
                "signed with a key that does not belong to the holder",
            ));
        }
        let (_, did_doc) = self
            .resolver
            .public_key(vm, Relationship::Authentication)
            .await
            .map_err(|e| VerifyError::new(Check::Proof, e.to_string()))?;
        verify_di(vp, did_doc, true).await?;
        if let Some(expires) = str_field(proof, "expires") {
            let t = crate::time::parse(expires).ok_or_else(|| {
                VerifyError::new(Check::Validity, "proof expires is not a date-time")
            })?;
            if t + self.skew < Utc::now() {
                return Err(VerifyError::new(
                    Check::Validity,
                    "presentation proof expired",
                ));
            }
        }
        if str_field(proof, "challenge") != Some(binding.challenge.as_str()) {
            return Err(VerifyError::new(
                Check::Challenge,
                "proof challenge is not this verifier's",
            ));
        }
        let domain_ok = match proof.get("domain") {
            Some(Value::String(d)) => d == &binding.domain,
            Some(Value::Array(a)) => a.len() == 1 && a[0] == binding.domain.as_str(),
            _ => false,
        };
        if !domain_ok {
            return Err(VerifyError::new(
                Check::Domain,
                "proof domain is not this verifier's DID",
            ));
        }
        Ok(vp.clone())
    }
}

fn has_type(v: &Value, ty: &str) -> bool {
    match v.get("type") {
        Some(Value::String(s)) => s == ty,
        Some(Value::Array(a)) => a.iter().any(|t| t == ty),
        _ => false,
    }
}

/// Each credential must belong to the holder:
/// - a privilege's subject is the holder;
/// - a study's sponsor is the holder;
/// - a consent is the holder's own (a patient presenting it), or its grantee is the holder,
///   the organization of a privilege the holder presented, or a study the holder presented.
fn check_holder_binding(
    holder: &str,
    credentials: &[VerifiedCredential],
) -> Result<(), VerifyError> {
    let orgs: Vec<&str> = credentials
        .iter()
        .filter(|c| c.kind == CredentialKind::ClinicianPrivilege)
        .filter(|c| str_field(&c.subject, "id") == Some(holder))
        .filter_map(|c| str_field(&c.subject, "organization"))
        .collect();
    let studies: Vec<&str> = credentials
        .iter()
        .filter(|c| c.kind == CredentialKind::ResearchStudy)
        .filter(|c| str_field(&c.subject, "sponsor") == Some(holder))
        .filter_map(|c| str_field(&c.subject, "id"))
        .collect();
    for (i, c) in credentials.iter().enumerate() {
        let fail = |detail: &str| VerifyError {
            check: Check::HolderBinding,
            detail: detail.to_string(),
            credential: Some(i),
        };
        let subject_id = str_field(&c.subject, "id");
        match c.kind {
            CredentialKind::ClinicianPrivilege => {
                if subject_id != Some(holder) {
                    return Err(fail("the privilege's subject is not the holder"));
                }
            }
            CredentialKind::ResearchStudy => {
                if str_field(&c.subject, "sponsor") != Some(holder) {
                    return Err(fail("the study's sponsor is not the holder"));
                }
            }
            CredentialKind::PatientConsent => {
                let grantee = c
                    .subject
                    .get("grantee")
                    .and_then(|g| g.get("id"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let bound = subject_id == Some(holder)
                    || grantee == holder
                    || orgs.contains(&grantee)
                    || studies.contains(&grantee);
                if !bound {
                    return Err(fail(
                        "the consent is granted neither to the holder nor to the holder's organization or study",
                    ));
                }
            }
        }
    }
    Ok(())
}

impl From<StatusError> for VerifyError {
    fn from(e: StatusError) -> Self {
        VerifyError::new(Check::Status, e.to_string())
    }
}
