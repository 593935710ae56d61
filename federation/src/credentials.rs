//! The three credential types of a fedgate federation, and issuing and presenting them.
//!
//! Credentials are VC Data Model 2.0 documents. They are secured in one of three formats:
//! - Data Integrity, `eddsa-rdfc-2022` (or `ecdsa-rdfc-2019` for P-256 keys), embedded proof;
//! - VC-JOSE: a compact JWS whose payload is the credential (`typ: vc+jwt`);
//! - SD-JWT VC (`dc+sd-jwt`): the credential's claims as selective disclosures, bound to
//!   the holder's key (see [`crate::sdjwt`]).
//!
//! Presentations are signed by the holder and bound to the verifier's challenge (nonce) and
//! domain (the verifier's DID), so a presentation captured by one gateway is useless at
//! another and useless twice.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use ssi::claims::data_integrity::{AnySuite, CryptographicSuite, ProofOptions};
use ssi::claims::SignatureEnvironment;
use ssi::verification_methods::{AnyMethod, ProofPurpose, ReferenceOrOwned, SingleSecretSigner};

use crate::context::{CREDENTIALS_V2, FEDGATE_V1};
use crate::did::StaticDids;
use crate::error::ParseError;
use crate::keys::{KeyAlgorithm, KeyPair};

pub use crate::kind::CredentialKind;
use crate::kind::KindError;
use crate::schema::SchemaError;

/// How a credential or presentation is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum ProofFormat {
    /// VC Data Model 2.0 with an embedded Data Integrity proof.
    #[default]
    DataIntegrity,
    /// VC-JOSE: a compact JWS over the credential.
    Jwt,
    /// SD-JWT VC (`dc+sd-jwt`): selectively disclosable, with key binding on presentation.
    #[serde(alias = "dc+sd-jwt")]
    SdJwt,
}

impl std::str::FromStr for ProofFormat {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        match s {
            "data-integrity" | "di" | "ldp" => Ok(ProofFormat::DataIntegrity),
            "jwt" | "vc+jwt" | "jose" => Ok(ProofFormat::Jwt),
            "sd-jwt" | "dc+sd-jwt" => Ok(ProofFormat::SdJwt),
            other => Err(ParseError::new(
                "proof format",
                other,
                "data-integrity, jwt or sd-jwt",
            )),
        }
    }
}

/// Data domains a gateway shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Domain {
    Clinical,
    Billing,
    Research,
}

impl Domain {
    pub fn as_str(self) -> &'static str {
        match self {
            Domain::Clinical => "clinical",
            Domain::Billing => "billing",
            Domain::Research => "research",
        }
    }
}

impl std::str::FromStr for Domain {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        match s {
            "clinical" => Ok(Domain::Clinical),
            "billing" => Ok(Domain::Billing),
            "research" => Ok(Domain::Research),
            other => Err(ParseError::new(
                "domain",
                other,
                "clinical, billing or research",
            )),
        }
    }
}

/// One facility where a clinician holds privileges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Privilege {
    pub facility: String,
    pub domains: Vec<Domain>,
    pub actions: Vec<String>,
}

/// Subject of a ClinicianPrivilegeCredential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivilegeSubject {
    pub id: String,
    // Never read by a decision: an SD-JWT VC presentation may leave them undisclosed.
    #[serde(default)]
    name: String,
    #[serde(default)]
    npi: String,
    pub role: String,
    pub specialty: String,
    pub organization: String,
    pub privileges: Vec<Privilege>,
}

/// The patient's identifier at one custodian.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatientIdentifier {
    pub custodian: String,
    pub system: String,
    pub value: String,
}

/// Who a consent is granted to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grantee {
    pub id: String,
    /// `clinician`, `organization` or `study`.
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Period {
    pub start: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
}

/// Subject of a PatientConsentCredential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConsentSubject {
    pub id: String,
    pub patient_identifiers: Vec<PatientIdentifier>,
    pub custodians: Vec<String>,
    pub grantee: Grantee,
    /// `permit` or `deny`.
    pub provision: String,
    pub domains: Vec<Domain>,
    pub purposes: Vec<String>,
    pub data_classes: Vec<String>,
    pub period: Period,
}

/// Subject of a ResearchStudyCredential.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StudySubject {
    pub id: String,
    title: String,
    pub sponsor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    irb: Option<String>,
    pub purposes: Vec<String>,
    pub data_classes: Vec<String>,
    pub aggregate_only: bool,
    pub min_cell_size: u32,
    /// The IRB's cap on the ε the study may spend at each custodian (docs/privacy.md);
    /// without it, each custodian's own budget applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon_budget: Option<f64>,
}

/// A `credentialStatus` entry (W3C Bitstring Status List).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusEntry {
    id: String,
    #[serde(rename = "type")]
    pub(crate) type_: String,
    pub(crate) status_purpose: String,
    pub status_list_index: String,
    pub status_list_credential: String,
}

impl StatusEntry {
    pub fn revocation(list_url: &str, index: usize) -> Self {
        StatusEntry {
            id: format!("{list_url}#{index}"),
            type_: "BitstringStatusListEntry".into(),
            status_purpose: "revocation".into(),
            status_list_index: index.to_string(),
            status_list_credential: list_url.to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("the credential is not valid for its type: {0}")]
    Schema(#[from] SchemaError),
    #[error(transparent)]
    Type(#[from] KindError),
    #[error("the issuer {issuer:?} is not the signing key's DID {key:?}")]
    IssuerMismatch { issuer: String, key: String },
    #[error("signing failed: {0}")]
    Sign(String),
    /// A credential of another type than fedgate's that Data Integrity cannot sign as it
    /// is: a term no bundled context defines (there is no `@vocab`), an unknown context.
    #[error("the credential cannot be secured with Data Integrity: {0} (every term must be defined by a bundled context)")]
    Document(String),
    /// A proof to chain to that the document does not carry.
    #[error("the document has no proof with id {0:?} to chain to")]
    NoSuchProof(String),
    #[error(transparent)]
    SdJwt(#[from] crate::sdjwt::SdJwtError),
    /// A format that secures fedgate's own types only, asked for another document.
    #[error("{0:?} secures fedgate's credential types only")]
    FormatNotForDocument(ProofFormat),
}

/// Builds an unsigned credential of `kind` (contexts, types, id, validity).
pub fn unsigned_credential(
    kind: CredentialKind,
    issuer: &str,
    subject: Value,
    valid_from: DateTime<Utc>,
    valid_until: Option<DateTime<Utc>>,
    status: Option<&StatusEntry>,
) -> Value {
    let mut vc = json!({
        "@context": [CREDENTIALS_V2, FEDGATE_V1],
        "id": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
        "type": ["VerifiableCredential", kind.type_name()],
        "issuer": issuer,
        "validFrom": crate::time::rfc3339(valid_from),
        "credentialSubject": subject,
    });
    if let Some(until) = valid_until {
        vc["validUntil"] = json!(crate::time::rfc3339(until));
    }
    if let Some(status) = status {
        vc["credentialStatus"] = json!(status);
    }
    vc
}

/// Signs an unsigned credential in `format`, after checking its type, its schema and that
/// the key belongs to its issuer. Returns the credential as it travels: an object (Data
/// Integrity) or a string (JWT).
pub async fn issue(
    credential: Value,
    key: &KeyPair,
    format: ProofFormat,
) -> Result<Value, IssueError> {
    let kind = CredentialKind::of_credential(&credential)?;
    crate::schema::check(kind, &credential)?;
    let issuer = credential
        .get("issuer")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if issuer != key.did() {
        return Err(IssueError::IssuerMismatch {
            issuer: issuer.to_string(),
            key: key.did().to_string(),
        });
    }
    if format == ProofFormat::SdJwt {
        let base = vct_base_for(&credential).ok_or_else(|| {
            crate::sdjwt::SdJwtError::Issue(
                "no vct base: the credential needs a status entry on the office's origin, or a did:web issuer".into(),
            )
        })?;
        return Ok(Value::String(crate::sdjwt::issue(&credential, key, &base)?));
    }
    sign_document(credential, key, format, None).await
}

/// Where the office that issues `credential` serves its vct type metadata: the URL its
/// status list sits under (`{base}/status/...`), or else the https origin of a did:web
/// issuer. The office serves both, so the two never disagree for an office's credential.
fn vct_base_for(credential: &Value) -> Option<String> {
    let status_url = credential
        .get("credentialStatus")
        .and_then(|s| s.get("statusListCredential"))
        .and_then(Value::as_str);
    if let Some((base, _)) = status_url.and_then(|u| u.rsplit_once("/status/")) {
        return Some(base.to_string());
    }
    let did = issuer_of(credential).strip_prefix("did:web:")?;
    let host = did.split(':').next()?.replace("%3A", ":");
    Some(format!("https://{host}"))
}

/// Signs any credential-shaped document (also status lists) without type checks.
pub(crate) async fn sign_document(
    document: Value,
    key: &KeyPair,
    format: ProofFormat,
    typ: Option<&str>,
) -> Result<Value, IssueError> {
    match format {
        ProofFormat::Jwt => crate::jose::sign(&document, key, typ.unwrap_or("vc+jwt"))
            .map(Value::String)
            .map_err(|e| IssueError::Sign(e.to_string())),
        ProofFormat::DataIntegrity => {
            sign_data_integrity(document, key, None, crate::context::loader()).await
        }
        ProofFormat::SdJwt => Err(IssueError::FormatNotForDocument(format)),
    }
}

/// The issuer of a credential: a string, or an object's `id` (VC Data Model 2.0 §4.7).
fn issuer_of(credential: &Value) -> &str {
    match credential.get("issuer") {
        Some(Value::String(s)) => s,
        Some(Value::Object(o)) => o.get("id").and_then(Value::as_str).unwrap_or_default(),
        _ => "",
    }
}

/// Signs a credential of any type in `format` (the VC API's generic profile), with the
/// contexts of `bundle`. The caller has checked its type, its shape and its schema; this
/// checks that the key belongs to its issuer (a string or an object's `id`).
pub async fn issue_any(
    credential: Value,
    key: &KeyPair,
    format: ProofFormat,
    bundle: &crate::bundle::Bundle,
) -> Result<Value, IssueError> {
    let issuer = issuer_of(&credential);
    if issuer != key.did() {
        return Err(IssueError::IssuerMismatch {
            issuer: issuer.to_string(),
            key: key.did().to_string(),
        });
    }
    match format {
        ProofFormat::Jwt => crate::jose::sign(&credential, key, "vc+jwt")
            .map(Value::String)
            .map_err(|e| IssueError::Sign(e.to_string())),
        ProofFormat::DataIntegrity => sign_data_integrity(credential, key, None, bundle.loader())
            .await
            .map_err(|e| match e {
                IssueError::Sign(m) => IssueError::Document(m),
                other => other,
            }),
        ProofFormat::SdJwt => Err(IssueError::FormatNotForDocument(format)),
    }
}

/// Adds a Data Integrity proof by `key` to a credential secured with Data Integrity: to its
/// proof set, or, with `chain_to` (the id of one of its proofs), chained to that proof
/// (DI 1.0 §2.1.2: the new proof signs the document with that proof in it). The new proof
/// gets an id (`urn:uuid:`), so that later proofs can chain to it.
pub async fn add_proof(
    secured: Value,
    key: &KeyPair,
    chain_to: Option<&str>,
    bundle: &crate::bundle::Bundle,
) -> Result<Value, IssueError> {
    use ssi::claims::data_integrity::DataIntegrity;
    let mut unsecured = secured;
    let existing: Vec<Value> = match unsecured.as_object_mut().and_then(|o| o.remove("proof")) {
        Some(Value::Array(a)) => a,
        Some(p) => vec![p],
        None => Vec::new(),
    };
    let proof_id = format!("urn:uuid:{}", uuid::Uuid::new_v4());
    let mut extra = serde_json::Map::new();
    extra.insert("id".into(), json!(proof_id));
    let mut claims = unsecured.clone();
    if let Some(previous) = chain_to {
        let matching: Vec<Value> = existing
            .iter()
            .filter(|p| p.get("id").and_then(Value::as_str) == Some(previous))
            .cloned()
            .collect();
        if matching.is_empty() {
            return Err(IssueError::NoSuchProof(previous.to_string()));
        }
        extra.insert("previousProof".into(), json!(previous));
        claims["proof"] = Value::Array(matching);
    }
    let own_doc = crate::did::document_for_key(key)
        .await
        .map_err(|e| IssueError::Sign(e.to_string()))?;
    let vm = iref::IriBuf::new(key.verification_method().to_string())
        .map_err(|e| IssueError::Sign(format!("bad verification method: {e}")))?;
    let suite = suite_for(key.algorithm());
    let jwk = key.jwk().clone();
    let loader = bundle.loader();
    let task = move || -> Result<Value, IssueError> {
        let sign_err = |e: &dyn std::fmt::Display| IssueError::Sign(e.to_string());
        let resolver =
            ssi::dids::VerificationMethodDIDResolver::<_, AnyMethod>::new(StaticDids::new([
                &own_doc,
            ]));
        let mut options = ProofOptions::from_method(ReferenceOrOwned::Reference(vm));
        options.proof_purpose = ProofPurpose::Assertion;
        for (k, v) in extra {
            options
                .extra_properties
                .insert(k, serde_json::from_value(v).map_err(|e| sign_err(&e))?);
        }
        let env = SignatureEnvironment {
            json_ld_loader: loader,
            eip712_loader: (),
        };
        let signer = SingleSecretSigner::new(jwk).into_local();
        let doc: ssi::claims::vc::v2::JsonCredential =
            serde_json::from_value(claims).map_err(|e| sign_err(&e))?;
        let signed: DataIntegrity<_, AnySuite> = futures::executor::block_on(suite.sign_with(
            env,
            doc,
            resolver,
            signer,
            options,
            Default::default(),
        ))
        .map_err(|e| sign_err(&e))?;
        let proof = signed
            .proofs
            .first()
            .ok_or_else(|| IssueError::Sign("no proof was made".into()))?;
        serde_json::to_value(proof).map_err(|e| sign_err(&e))
    };
    let proof = tokio::task::spawn_blocking(task)
        .await
        .map_err(|e| IssueError::Sign(e.to_string()))??;
    let mut proofs = existing;
    proofs.push(proof);
    unsecured["proof"] = Value::Array(proofs);
    Ok(unsecured)
}

fn suite_for(alg: KeyAlgorithm) -> AnySuite {
    match alg {
        KeyAlgorithm::Ed25519 => AnySuite::EdDsaRdfc2022,
        KeyAlgorithm::P256 => AnySuite::EcdsaRdfc2019,
    }
}

/// Creates a Data Integrity proof over `doc` (a credential, or a presentation when
/// `binding` is given). RDF canonicalization is CPU-heavy and ssi's futures are not `Send`,
/// so the work runs on the blocking pool with a local executor.
async fn sign_data_integrity(
    doc: Value,
    key: &KeyPair,
    binding: Option<(&str, &str)>,
    loader: ssi::json_ld::ContextLoader,
) -> Result<Value, IssueError> {
    let own_doc = crate::did::document_for_key(key)
        .await
        .map_err(|e| IssueError::Sign(e.to_string()))?;
    let vm = iref::IriBuf::new(key.verification_method().to_string())
        .map_err(|e| IssueError::Sign(format!("bad verification method: {e}")))?;
    let suite = suite_for(key.algorithm());
    let jwk = key.jwk().clone();
    let binding = binding.map(|(c, d)| (c.to_string(), d.to_string()));
    let task = move || -> Result<Value, IssueError> {
        let sign_err = |e: &dyn std::fmt::Display| IssueError::Sign(e.to_string());
        let resolver =
            ssi::dids::VerificationMethodDIDResolver::<_, AnyMethod>::new(StaticDids::new([
                &own_doc,
            ]));
        let mut options = ProofOptions::from_method(ReferenceOrOwned::Reference(vm));
        let env = SignatureEnvironment {
            json_ld_loader: loader,
            eip712_loader: (),
        };
        let signer = SingleSecretSigner::new(jwk).into_local();
        match binding {
            None => {
                options.proof_purpose = ProofPurpose::Assertion;
                let doc: ssi::claims::vc::v2::JsonCredential =
                    serde_json::from_value(doc).map_err(|e| sign_err(&e))?;
                let signed = futures::executor::block_on(suite.sign_with(
                    env,
                    doc,
                    resolver,
                    signer,
                    options,
                    Default::default(),
                ))
                .map_err(|e| sign_err(&e))?;
                serde_json::to_value(&signed).map_err(|e| sign_err(&e))
            }
            Some((challenge, domain)) => {
                options.proof_purpose = ProofPurpose::Authentication;
                options.challenge = Some(challenge);
                options.domains = vec![domain];
                let doc: ssi::claims::vc::v2::syntax::JsonPresentation<Value> =
                    serde_json::from_value(doc).map_err(|e| sign_err(&e))?;
                let signed = futures::executor::block_on(suite.sign_with(
                    env,
                    doc,
                    resolver,
                    signer,
                    options,
                    Default::default(),
                ))
                .map_err(|e| sign_err(&e))?;
                serde_json::to_value(&signed).map_err(|e| sign_err(&e))
            }
        }
    };
    tokio::task::spawn_blocking(task)
        .await
        .map_err(|e| IssueError::Sign(e.to_string()))?
}

/// What a verifier asked for: its challenge and its DID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresentationBinding {
    pub challenge: String,
    pub domain: String,
}

/// Signs a presentation of `credentials` (each as it travels: object or JWT string) by
/// `holder`, bound to the verifier's challenge and DID.
pub async fn present(
    credentials: &[Value],
    holder: &KeyPair,
    binding: &PresentationBinding,
    format: ProofFormat,
) -> Result<Value, IssueError> {
    let embedded: Vec<Value> = credentials.iter().map(embed_credential).collect();
    let mut vp = json!({
        "@context": [CREDENTIALS_V2],
        "id": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
        "type": ["VerifiablePresentation"],
        "holder": holder.did(),
        "verifiableCredential": embedded,
    });
    match format {
        ProofFormat::Jwt => {
            let now = Utc::now();
            vp["nonce"] = json!(binding.challenge);
            vp["aud"] = json!(binding.domain);
            vp["iat"] = json!(now.timestamp());
            vp["exp"] = json!((now + Duration::minutes(5)).timestamp());
            crate::jose::sign(&vp, holder, "vp+jwt")
                .map(Value::String)
                .map_err(|e| IssueError::Sign(e.to_string()))
        }
        ProofFormat::DataIntegrity => {
            sign_data_integrity(
                vp,
                holder,
                Some((&binding.challenge, &binding.domain)),
                crate::context::loader(),
            )
            .await
        }
        // An SD-JWT VC is presented alone, with its key binding JWT (`sdjwt::present`).
        ProofFormat::SdJwt => Err(IssueError::FormatNotForDocument(format)),
    }
}

/// Signs a presentation document as it is (with or without a `holder`: VC Data Model 2.0
/// makes it optional) with a Data Integrity proof by `key`, bound to the verifier's
/// challenge and DID, expanding it with the contexts of `bundle` (those of the credentials
/// it carries). [`present`] builds the presentations fedgate's wallets make.
pub async fn add_presentation_proof(
    presentation: Value,
    key: &KeyPair,
    binding: &PresentationBinding,
    bundle: &crate::bundle::Bundle,
) -> Result<Value, IssueError> {
    sign_data_integrity(
        presentation,
        key,
        Some((&binding.challenge, &binding.domain)),
        bundle.loader(),
    )
    .await
}

/// A JWT credential travels inside a presentation as an `EnvelopedVerifiableCredential`.
pub fn embed_credential(credential: &Value) -> Value {
    match credential {
        Value::String(jwt) => json!({
            "@context": CREDENTIALS_V2,
            "id": format!("data:application/vc+jwt,{jwt}"),
            "type": "EnvelopedVerifiableCredential",
        }),
        other => other.clone(),
    }
}

/// The inverse of [`embed_credential`]: a JWT string for an enveloped credential.
pub fn unwrap_enveloped(credential: &Value) -> Option<&str> {
    let ty = credential.get("type")?;
    let is_enveloped = ty == "EnvelopedVerifiableCredential"
        || ty
            .as_array()
            .is_some_and(|a| a.iter().any(|t| t == "EnvelopedVerifiableCredential"));
    if !is_enveloped {
        return None;
    }
    credential
        .get("id")?
        .as_str()?
        .strip_prefix("data:application/vc+jwt,")
}
