//! The policy input (docs/gateway-contract.md §1, `schemas/policy-input.schema.json`): one
//! typed tree, built from verified claims and the custodian's own settings only, and
//! serialized once, by the engine.
//!
//! Credential subjects are not passed whole: each credential contributes the claims the
//! policies read (and the schema describes), so that, for instance, the patient
//! identifiers of a consent or a clinician's name and NPI never reach the engine.

use federation::credentials::{
    ConsentSubject, CredentialKind, Domain, Grantee, Period, Privilege, PrivilegeSubject,
    StudySubject,
};
use federation::registry::Contract;
use federation::verify::{VerifiedCredential, VerifiedPresentation};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::{CustodianSettings, Shift};

/// What `data.fedgate.<domain>.decision` is evaluated on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyInput {
    pub request: RequestInput,
    /// The requester's own privilege credential; null when none was presented.
    pub privilege: Option<CredentialInput<PrivilegeFacts>>,
    /// Verified, unwithdrawn consents about this patient at this custodian.
    pub consents: Vec<ConsentInput>,
    /// Research: the study credential; null otherwise.
    pub study: Option<CredentialInput<StudyFacts>>,
    /// Registry contracts from this custodian to the requester's organization, unexpired.
    pub contracts: Vec<ContractInput>,
    pub custodian: CustodianInput,
    /// Detokenize: what the vault knows of the token; null otherwise or when unknown.
    pub token: Option<TokenInput>,
}

/// The request being decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestInput {
    pub domain: String,
    /// HL7 v3 PurposeOfUse code.
    pub purpose: String,
    /// FHIR resource types asked for; empty for detokenize.
    pub data_classes: Vec<String>,
    /// Whether the custodian knows the patient (detokenize: the token).
    pub patient_found: bool,
    /// Break-glass reason; empty when none.
    pub justification: String,
    /// Decision time, RFC 3339 UTC.
    pub time: String,
    /// `Mon`..`Sun` in the custodian's local time.
    pub weekday: String,
    /// Minutes since local midnight at the custodian.
    pub minute_of_day: u32,
    /// The presentation's holder.
    pub requester: Option<String>,
    /// The holder's privilege's organization or the study's sponsor.
    pub requester_org: Option<String>,
}

/// A verified credential as the policy sees it: its issuer, id and the claims it reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialInput<S> {
    pub issuer: String,
    pub id: Option<String>,
    /// The claim paths of the subject this credential disclosed and the gateway passed on
    /// (selective disclosure, OpenID4VP: only those the domain's DCQL query asked for);
    /// null when the credential discloses everything it holds (Data Integrity, VC-JOSE).
    #[serde(default)]
    pub disclosed: Option<Vec<Vec<serde_json::Value>>>,
    pub subject: S,
}

impl<S> CredentialInput<S> {
    pub fn new(credential: &VerifiedCredential, subject: S) -> Self {
        CredentialInput {
            issuer: credential.issuer.clone(),
            id: credential.id.clone(),
            disclosed: credential.disclosed.clone(),
            subject,
        }
    }
}

/// A consent, with whether it was self-issued and whether the custodian linked its DID
/// to the requested patient (`speaks_for_patient` in policies/common.rego).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentInput {
    pub issuer: String,
    pub id: Option<String>,
    pub self_issued: bool,
    pub patient_linked: bool,
    /// The claim paths of the subject this credential disclosed and the gateway passed on
    /// (selective disclosure, OpenID4VP: only those the domain's DCQL query asked for);
    /// null when the credential discloses everything it holds (Data Integrity, VC-JOSE).
    #[serde(default)]
    pub disclosed: Option<Vec<Vec<serde_json::Value>>>,
    pub subject: ConsentFacts,
}

impl ConsentInput {
    pub fn new(credential: &VerifiedCredential, claims: &ConsentSubject, linked: bool) -> Self {
        ConsentInput {
            issuer: credential.issuer.clone(),
            id: credential.id.clone(),
            self_issued: is_self_issued(credential, claims),
            patient_linked: linked,
            disclosed: credential.disclosed.clone(),
            subject: ConsentFacts::from(claims),
        }
    }
}

/// Issued by its own subject (a patient's consent from their wallet).
pub fn is_self_issued(credential: &VerifiedCredential, claims: &ConsentSubject) -> bool {
    claims.id == credential.issuer
}

/// What the policies read of a ClinicianPrivilegeCredential's subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivilegeFacts {
    pub id: String,
    pub role: String,
    /// NUCC taxonomy code.
    pub specialty: String,
    pub organization: String,
    pub privileges: Vec<Privilege>,
}

impl From<&PrivilegeSubject> for PrivilegeFacts {
    fn from(s: &PrivilegeSubject) -> Self {
        PrivilegeFacts {
            id: s.id.clone(),
            role: s.role.clone(),
            specialty: s.specialty.clone(),
            organization: s.organization.clone(),
            privileges: s.privileges.clone(),
        }
    }
}

/// What the policies read of a PatientConsentCredential's subject: everything but the
/// patient's identifiers, which the gateway matched already.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConsentFacts {
    pub id: String,
    pub custodians: Vec<String>,
    pub grantee: Grantee,
    /// `permit` or `deny`.
    pub provision: String,
    pub domains: Vec<Domain>,
    pub purposes: Vec<String>,
    pub data_classes: Vec<String>,
    pub period: Period,
}

impl From<&ConsentSubject> for ConsentFacts {
    fn from(s: &ConsentSubject) -> Self {
        ConsentFacts {
            id: s.id.clone(),
            custodians: s.custodians.clone(),
            grantee: s.grantee.clone(),
            provision: s.provision.clone(),
            domains: s.domains.clone(),
            purposes: s.purposes.clone(),
            data_classes: s.data_classes.clone(),
            period: s.period.clone(),
        }
    }
}

/// What the policies read of a ResearchStudyCredential's subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StudyFacts {
    pub id: String,
    pub sponsor: String,
    pub purposes: Vec<String>,
    pub data_classes: Vec<String>,
    pub aggregate_only: bool,
    pub min_cell_size: u32,
}

impl From<&StudySubject> for StudyFacts {
    fn from(s: &StudySubject) -> Self {
        StudyFacts {
            id: s.id.clone(),
            sponsor: s.sponsor.clone(),
            purposes: s.purposes.clone(),
            data_classes: s.data_classes.clone(),
            aggregate_only: s.aggregate_only,
            min_cell_size: s.min_cell_size,
        }
    }
}

/// A data-sharing contract: `custodian` shares `domains` with `requester` for `purposes`.
/// Domains are names here, not [`Domain`]s: a static `[[contracts]]` entry of the
/// configuration may name more (say `detokenize`), which no policy reads but which must
/// not make the whole contract unreadable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractInput {
    pub custodian: String,
    pub requester: String,
    pub domains: Vec<String>,
    pub purposes: Vec<String>,
    /// RFC 3339; absent when the contract does not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

impl From<&Contract> for ContractInput {
    fn from(c: &Contract) -> Self {
        ContractInput {
            custodian: c.custodian.clone(),
            requester: c.requester.clone(),
            domains: c.domains.iter().map(|d| d.as_str().to_string()).collect(),
            purposes: c.purposes.clone(),
            expires: c.expires.clone(),
        }
    }
}

/// This gateway's organization and its settings (gateway.toml `[custodian]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustodianInput {
    pub did: String,
    pub shifts: Vec<Shift>,
    pub break_glass_minutes: u32,
    pub min_cell_size: u32,
    pub max_records: u32,
    pub utc_offset_minutes: i32,
    pub require_patient_links: bool,
}

impl CustodianInput {
    pub fn new(did: &str, s: &CustodianSettings) -> Self {
        CustodianInput {
            did: did.to_string(),
            shifts: s.shifts.clone(),
            break_glass_minutes: s.break_glass_minutes,
            min_cell_size: s.min_cell_size,
            max_records: s.max_records,
            utc_offset_minutes: s.utc_offset_minutes,
            require_patient_links: s.require_patient_links,
        }
    }
}

/// Detokenize: what the vault knows about the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenInput {
    /// The organization the token was issued to.
    pub recipient: String,
    pub domain: String,
    pub class: String,
}

// ---------------------------------------------------------------------------------------
// Typed claims of a verified presentation
// ---------------------------------------------------------------------------------------

/// A verified credential with its subject read as its type's claims.
#[derive(Debug)]
pub struct Claimed<'a, T> {
    pub credential: &'a VerifiedCredential,
    pub claims: T,
}

/// A verified credential whose subject does not read as its type's claims. Verification
/// checked it against the type's schema, which the claim types mirror, so this is a bug
/// or a schema the types have not followed; either way nothing it says is used. The serde
/// message is left out: it can quote values of the subject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a verified {} does not have the claims of its type", .0.type_name())]
pub struct UnreadableClaims(pub CredentialKind);

/// The claims of every credential of `kind` in the presentation, or an error when any of
/// them does not read: a consent that could not be read might have been a deny, so none
/// is skipped.
pub fn claims_of<'a, T: DeserializeOwned>(
    vp: &'a VerifiedPresentation,
    kind: CredentialKind,
) -> Result<Vec<Claimed<'a, T>>, UnreadableClaims> {
    vp.of_kind(kind)
        .map(|credential| {
            T::deserialize(&*credential.subject)
                .map(|claims| Claimed { credential, claims })
                .map_err(|_| UnreadableClaims(kind))
        })
        .collect()
}

/// The holder's own privilege credential (its subject is the holder), if presented.
pub fn holder_privilege(
    vp: &VerifiedPresentation,
) -> Result<Option<Claimed<'_, PrivilegeSubject>>, UnreadableClaims> {
    Ok(
        claims_of::<PrivilegeSubject>(vp, CredentialKind::ClinicianPrivilege)?
            .into_iter()
            .find(|c| c.claims.id == vp.holder),
    )
}

/// The holder's study credential (the holder is its sponsor), if presented.
pub fn holder_study(
    vp: &VerifiedPresentation,
) -> Result<Option<Claimed<'_, StudySubject>>, UnreadableClaims> {
    Ok(
        claims_of::<StudySubject>(vp, CredentialKind::ResearchStudy)?
            .into_iter()
            .find(|c| c.claims.sponsor == vp.holder),
    )
}

/// The requester's organization: the employer named by the holder's privilege, or the
/// sponsor of a study the holder presented. None when neither reads.
pub fn requester_org(vp: &VerifiedPresentation) -> Option<String> {
    let employer = holder_privilege(vp)
        .ok()
        .flatten()
        .map(|c| c.claims.organization);
    employer.or_else(|| {
        claims_of::<StudySubject>(vp, CredentialKind::ResearchStudy)
            .ok()?
            .into_iter()
            .next()
            .map(|c| c.claims.sponsor)
    })
}

// ---------------------------------------------------------------------------------------
// Sample
// ---------------------------------------------------------------------------------------

/// A well-formed request of `domain` that reaches the allow path of the shipped policies:
/// the engine checks every bundle on it at load, and the tests start from it.
pub fn sample_input(domain: &str) -> PolicyInput {
    let purpose = match domain {
        "billing" => "HPAYMT",
        "research" => "HRESCH",
        _ => "TREAT",
    };
    let classes: &[&str] = match domain {
        "billing" => &["Claim", "Coverage"],
        "detokenize" => &[],
        _ => &["Observation", "Condition"],
    };
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let custodian = "did:web:hospital-b.example";
    let org = "did:web:hospital-a.example";
    let clinician = "did:key:z6MkSampleClinician";
    let patient = "did:key:z6MkSamplePatient";
    let research = domain == "research";
    PolicyInput {
        request: RequestInput {
            domain: domain.to_string(),
            purpose: purpose.to_string(),
            data_classes: strings(classes),
            patient_found: true,
            justification: String::new(),
            time: "2026-11-27T10:00:00Z".into(),
            weekday: "Fri".into(),
            minute_of_day: 600,
            requester: Some(if research { org } else { clinician }.to_string()),
            requester_org: Some(org.to_string()),
        },
        privilege: (!research).then(|| CredentialInput {
            issuer: "did:web:credentialing.example".into(),
            id: Some("urn:uuid:sample-privilege".into()),
            disclosed: None,
            subject: PrivilegeFacts {
                id: clinician.into(),
                role: if domain == "billing" {
                    "billing-specialist"
                } else {
                    "physician"
                }
                .into(),
                specialty: "207R00000X".into(),
                organization: org.into(),
                privileges: vec![Privilege {
                    facility: custodian.into(),
                    domains: vec![Domain::Clinical, Domain::Billing],
                    actions: strings(&["read", "detokenize"]),
                }],
            },
        }),
        consents: vec![ConsentInput {
            issuer: patient.into(),
            id: Some("urn:uuid:sample-consent".into()),
            self_issued: true,
            patient_linked: true,
            disclosed: None,
            subject: ConsentFacts {
                id: patient.into(),
                custodians: strings(&[custodian]),
                grantee: Grantee {
                    id: org.into(),
                    kind: "organization".into(),
                },
                provision: "permit".into(),
                domains: vec![Domain::Clinical, Domain::Billing],
                purposes: strings(&[purpose]),
                data_classes: strings(&["Observation", "Condition", "Claim", "Coverage"]),
                period: Period {
                    start: "2026-01-01T00:00:00Z".into(),
                    end: Some("2027-01-01T00:00:00Z".into()),
                },
            },
        }],
        study: research.then(|| CredentialInput {
            issuer: "did:web:irb.example".into(),
            id: Some("urn:uuid:sample-study".into()),
            disclosed: None,
            subject: StudyFacts {
                id: "urn:fedgate:study:sample".into(),
                sponsor: org.into(),
                purposes: strings(&["HRESCH"]),
                data_classes: strings(&["Observation", "Condition"]),
                aggregate_only: true,
                min_cell_size: 5,
            },
        }),
        contracts: vec![ContractInput {
            custodian: custodian.into(),
            requester: org.into(),
            domains: strings(&["clinical", "billing", "research"]),
            purposes: strings(&["TREAT", "ETREAT", "BTG", "HPAYMT", "HRESCH"]),
            expires: None,
        }],
        custodian: CustodianInput {
            did: custodian.into(),
            shifts: vec![Shift {
                roles: strings(&["nurse"]),
                days: strings(&["Mon", "Tue", "Wed", "Thu", "Fri"]),
                from_minute: 420,
                to_minute: 1140,
            }],
            break_glass_minutes: 60,
            min_cell_size: 11,
            max_records: 5000,
            utc_offset_minutes: 0,
            require_patient_links: true,
        },
        token: (domain == "detokenize").then(|| TokenInput {
            recipient: org.into(),
            domain: "clinical".into(),
            class: "ssn".into(),
        }),
    }
}

/// The sample input of a domain and variations of it that take other paths through the
/// policies (no consent, another organization, an emergency without consent, a deny
/// consent, a nurse outside their shift): what the loader decides with both engines to
/// check that they agree.
pub fn sample_inputs(domain: &str) -> Vec<PolicyInput> {
    let base = sample_input(domain);
    let mut out = vec![base.clone()];

    let mut no_consent = base.clone();
    no_consent.consents.clear();
    out.push(no_consent);

    let mut other_org = base.clone();
    other_org.request.requester_org = Some("did:web:other.example".into());
    out.push(other_org);

    let mut emergency = base.clone();
    emergency.consents.clear();
    emergency.request.purpose = "ETREAT".into();
    emergency.request.justification = "unconscious patient, no consent on file".into();
    out.push(emergency);

    let mut refused = base.clone();
    if let Some(first) = base.consents.first() {
        let mut deny = first.clone();
        deny.subject.provision = "deny".into();
        deny.subject.data_classes = vec!["Condition".into(), "Claim".into()];
        refused.consents.push(deny);
    }
    out.push(refused);

    let mut night = base;
    if let Some(p) = night.privilege.as_mut() {
        p.subject.role = "nurse".into();
    }
    night.request.minute_of_day = 1300;
    out.push(night);
    out
}
