//! The DCQL query of a domain, derived from what its policy reads.
//!
//! `policies/disclosure.json` lists, per domain and credential type, the claim paths of the
//! credential subject the gateway needs: those the policy input carries (the fields of
//! `PrivilegeFacts` and `ConsentFacts`, which are all a policy can read, since the input is
//! a closed schema built field by field from verified claims) and those the gateway reads
//! itself before policy (a consent's `patientIdentifiers`, matched to the patient asked
//! for). The tests of this module hold the list and the input types together: every field
//! the policy input can carry is declared, and nothing is declared that neither policy nor
//! the gateway reads.
//!
//! From that list the authorization request asks, for each credential type, one credential
//! query per format the gateway verifies (`ldp_vc`, `jwt_vc_json`, and `dc+sd-jwt` once
//! SD-JWT VC is verified), with `credential_sets` saying which of them may answer. What
//! a presentation discloses beyond the list is dropped ([`retain`]) before anything reads
//! the credential.

use std::collections::BTreeMap;
use std::path::Path;

use federation::credentials::CredentialKind;
use serde_json::{json, Map, Value};

/// A DCQL claims path: strings name object members, integers array elements, null every
/// element of an array.
pub use federation::sdjwt::ClaimPath;

/// The file beside the domain policies that declares what each domain reads.
pub const DISCLOSURE_FILE: &str = "disclosure.json";

/// What one domain reads, per credential type: claim paths of the credential subject.
pub type DomainClaims = BTreeMap<CredentialKind, Vec<ClaimPath>>;

/// `@context`-expanded type IRIs of the W3C formats' `type_values`.
const VC_TYPE_IRI: &str = "https://www.w3.org/2018/credentials#VerifiableCredential";
const FEDGATE_TYPE_BASE: &str = "https://w3id.org/fedgate#";

/// Why the declared claims could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DisclosureError {
    #[error("{path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{DISCLOSURE_FILE} declares nothing for the {0} domain")]
    NoDomain(String),
}

/// Reads the claims `domain` reads from `policies/disclosure.json`.
pub fn domain_claims(policies: &Path, domain: &str) -> Result<DomainClaims, DisclosureError> {
    let path = policies.join(DISCLOSURE_FILE);
    let read_error = |reason: String| DisclosureError::Read {
        path: path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(&path).map_err(|e| read_error(e.to_string()))?;
    let mut all: BTreeMap<String, Value> =
        serde_json::from_slice(&bytes).map_err(|e| read_error(e.to_string()))?;
    let claims = all
        .remove(domain)
        .ok_or_else(|| DisclosureError::NoDomain(domain.to_string()))?;
    let claims: DomainClaims =
        serde_json::from_value(claims).map_err(|e| read_error(e.to_string()))?;
    for paths in claims.values() {
        for path in paths {
            if path.is_empty() || !path[0].is_string() || !path.iter().all(is_path_element) {
                return Err(read_error(format!(
                    "{path:?} is not a claims path starting with a claim name"
                )));
            }
        }
    }
    Ok(claims)
}

fn is_path_element(v: &Value) -> bool {
    v.is_string() || v.is_null() || v.as_u64().is_some()
}

/// A credential type's short name in query ids.
pub fn short_name(kind: CredentialKind) -> &'static str {
    match kind {
        CredentialKind::ClinicianPrivilege => "privilege",
        CredentialKind::PatientConsent => "consent",
        CredentialKind::ResearchStudy => "study",
    }
}

/// A presentation format a credential query asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryFormat {
    /// W3C VC with a Data Integrity proof, in a Data Integrity VP.
    LdpVc,
    /// W3C VC secured as a JWT (VC-JOSE), in a VP JWT.
    JwtVcJson,
    /// SD-JWT VC with a key-binding JWT.
    SdJwt,
}

impl QueryFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            QueryFormat::LdpVc => "ldp_vc",
            QueryFormat::JwtVcJson => "jwt_vc_json",
            QueryFormat::SdJwt => "dc+sd-jwt",
        }
    }

    fn id_suffix(self) -> &'static str {
        match self {
            QueryFormat::LdpVc => "ldp",
            QueryFormat::JwtVcJson => "jwt",
            QueryFormat::SdJwt => "sd_jwt",
        }
    }

    pub fn from_name(s: &str) -> Option<QueryFormat> {
        match s {
            "ldp_vc" => Some(QueryFormat::LdpVc),
            "jwt_vc_json" => Some(QueryFormat::JwtVcJson),
            "dc+sd-jwt" => Some(QueryFormat::SdJwt),
            _ => None,
        }
    }
}

/// The credential query id of `kind` in `format`.
pub fn query_id(kind: CredentialKind, format: QueryFormat) -> String {
    format!("{}_{}", short_name(kind), format.id_suffix())
}

/// What a query id names, if it is one this gateway asks.
pub fn parse_query_id(id: &str) -> Option<(CredentialKind, QueryFormat)> {
    CredentialKind::ALL.into_iter().find_map(|kind| {
        let rest = id.strip_prefix(short_name(kind))?.strip_prefix('_')?;
        let format = [
            QueryFormat::LdpVc,
            QueryFormat::JwtVcJson,
            QueryFormat::SdJwt,
        ]
        .into_iter()
        .find(|f| f.id_suffix() == rest)?;
        Some((kind, format))
    })
}

/// The DCQL query for a domain's claims. `vct_values` gives the SD-JWT VC types accepted
/// for a kind (from the issuers trusted for it); `formats` the formats asked, in order of
/// preference. The clinician's privilege is required; the other types are optional (a
/// break-glass request has no consent to present), and a consent may come more than once.
pub fn query(
    claims: &DomainClaims,
    formats: &[QueryFormat],
    vct_values: impl Fn(CredentialKind) -> Vec<String>,
) -> Value {
    let mut credentials = Vec::new();
    let mut sets = Vec::new();
    for (kind, paths) in claims {
        let mut options = Vec::new();
        for format in formats {
            let vcts = match format {
                QueryFormat::SdJwt => vct_values(*kind),
                _ => Vec::new(),
            };
            // No issuer of this type publishes vct values (a self-issued consent has no
            // office): it is not asked for as an SD-JWT VC.
            if *format == QueryFormat::SdJwt && vcts.is_empty() {
                continue;
            }
            let id = query_id(*kind, *format);
            let (meta, prefix) = match format {
                QueryFormat::SdJwt => (json!({ "vct_values": vcts }), None),
                _ => (
                    json!({ "type_values": [[VC_TYPE_IRI, format!("{FEDGATE_TYPE_BASE}{}", kind.type_name())]] }),
                    Some(Value::from("credentialSubject")),
                ),
            };
            // In an SD-JWT VC the subject's id is `sub`, which is never selectively
            // disclosable: it is always there and is not asked for.
            let claims: Vec<Value> = paths
                .iter()
                .filter(|p| prefix.is_some() || p[0] != "id")
                .map(|p| {
                    let path: Vec<Value> =
                        prefix.iter().cloned().chain(p.iter().cloned()).collect();
                    json!({ "path": path })
                })
                .collect();
            credentials.push(json!({
                "id": id,
                "format": format.as_str(),
                "multiple": *kind == CredentialKind::PatientConsent,
                "require_cryptographic_holder_binding": true,
                "meta": meta,
                "claims": claims,
            }));
            options.push(json!([id]));
        }
        sets.push(json!({
            "options": options,
            "required": *kind == CredentialKind::ClinicianPrivilege,
        }));
    }
    json!({ "credentials": credentials, "credential_sets": sets })
}

/// `value` with only what `paths` name: what a credential disclosed beyond the query
/// never reaches the decision. None when nothing of it is named.
pub fn retain(value: &Value, paths: &[&[Value]]) -> Option<Value> {
    if paths.is_empty() {
        return None;
    }
    if paths.iter().any(|p| p.is_empty()) {
        return Some(value.clone());
    }
    match value {
        Value::Object(map) => {
            let mut out = Map::new();
            for (key, child) in map {
                let tails: Vec<&[Value]> = paths
                    .iter()
                    .filter(|p| p[0].as_str() == Some(key.as_str()))
                    .map(|p| &p[1..])
                    .collect();
                if let Some(kept) = retain(child, &tails) {
                    out.insert(key.clone(), kept);
                }
            }
            Some(Value::Object(out))
        }
        Value::Array(items) => {
            let mut out = Vec::new();
            for (i, child) in items.iter().enumerate() {
                let tails: Vec<&[Value]> = paths
                    .iter()
                    .filter(|p| p[0].is_null() || p[0].as_u64() == Some(i as u64))
                    .map(|p| &p[1..])
                    .collect();
                if let Some(kept) = retain(child, &tails) {
                    out.push(kept);
                }
            }
            Some(Value::Array(out))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{sample_input, ConsentFacts, PrivilegeFacts};

    fn shipped(domain: &str) -> DomainClaims {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        domain_claims(&dir, domain).unwrap()
    }

    fn top_level(paths: &[ClaimPath]) -> Vec<String> {
        let mut names: Vec<String> = paths
            .iter()
            .filter_map(|p| p[0].as_str().map(str::to_string))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    fn keys(v: &Value) -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    }

    /// The policy input is a closed schema (`deny_unknown_fields`), built field by field
    /// from verified claims: a policy can read nothing of a credential subject but the
    /// fields of `PrivilegeFacts` and `ConsentFacts`. The declared claims are exactly those
    /// fields, plus what the gateway matches before policy (a consent's patient
    /// identifiers): nothing policy reads is left out of the query, and nothing is asked
    /// that neither policy nor the gateway reads.
    #[test]
    fn the_declared_claims_are_what_the_policy_input_carries() {
        let sample = sample_input("clinical");
        let privilege =
            serde_json::to_value(&sample.privilege.as_ref().unwrap().subject as &PrivilegeFacts)
                .unwrap();
        let consent = serde_json::to_value(&sample.consents[0].subject as &ConsentFacts).unwrap();
        for domain in ["clinical", "billing"] {
            let claims = shipped(domain);
            assert_eq!(
                claims.keys().copied().collect::<Vec<_>>(),
                vec![
                    CredentialKind::ClinicianPrivilege,
                    CredentialKind::PatientConsent
                ],
                "{domain}"
            );
            assert_eq!(
                top_level(&claims[&CredentialKind::ClinicianPrivilege]),
                keys(&privilege),
                "{domain}"
            );
            let mut consent_keys = keys(&consent);
            consent_keys.push("patientIdentifiers".into());
            consent_keys.sort();
            assert_eq!(
                top_level(&claims[&CredentialKind::PatientConsent]),
                consent_keys,
                "{domain}"
            );
        }
    }

    /// The shipped policies decide the same on a sample whose subjects were cut down to
    /// the declared claims (and the input read back through its closed types).
    #[test]
    fn the_policies_decide_the_same_on_the_declared_claims_only() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let holder = crate::policy::PolicyHolder::new(&dir);
        for domain in ["clinical", "billing"] {
            let claims = shipped(domain);
            let input = sample_input(domain);
            let mut value = serde_json::to_value(&input).unwrap();
            let cut = |v: &Value, kind| {
                let paths: Vec<&[Value]> = claims[&kind].iter().map(Vec::as_slice).collect();
                retain(v, &paths).unwrap()
            };
            value["privilege"]["subject"] = cut(
                &value["privilege"]["subject"],
                CredentialKind::ClinicianPrivilege,
            );
            for c in value["consents"].as_array_mut().unwrap() {
                c["subject"] = cut(&c["subject"], CredentialKind::PatientConsent);
            }
            let cut_input: crate::policy::PolicyInput = serde_json::from_value(value).unwrap();
            let a = holder.evaluate(domain, &input);
            let b = holder.evaluate(domain, &cut_input);
            assert!(a.allow, "{domain}: {:?}", a.reasons);
            assert_eq!(a, b, "{domain}");
        }
    }

    #[test]
    fn retain_keeps_only_the_named_paths() {
        let v = json!({"a": 1, "b": {"c": 2, "d": 3}, "e": [{"f": 1, "g": 2}, {"f": 3}], "h": [1, 2, 3]});
        let p1 = [json!("a")];
        let p2 = [json!("b"), json!("c")];
        let p3 = [json!("e"), Value::Null, json!("f")];
        let p4 = [json!("h"), json!(1)];
        let paths: Vec<&[Value]> = vec![&p1, &p2, &p3, &p4];
        assert_eq!(
            retain(&v, &paths).unwrap(),
            json!({"a": 1, "b": {"c": 2}, "e": [{"f": 1}, {"f": 3}], "h": [2]})
        );
        assert_eq!(retain(&v, &[]), None);
    }

    #[test]
    fn query_ids_read_back() {
        for kind in CredentialKind::ALL {
            for f in [
                QueryFormat::LdpVc,
                QueryFormat::JwtVcJson,
                QueryFormat::SdJwt,
            ] {
                assert_eq!(parse_query_id(&query_id(kind, f)), Some((kind, f)));
            }
        }
        assert_eq!(parse_query_id("privilege_x"), None);
        assert_eq!(parse_query_id("nope"), None);
    }

    #[test]
    fn the_query_asks_for_the_declared_claims_in_each_format() {
        let claims = shipped("clinical");
        let q = query(
            &claims,
            &[QueryFormat::JwtVcJson, QueryFormat::LdpVc],
            |_| vec![],
        );
        let creds = q["credentials"].as_array().unwrap();
        assert_eq!(creds.len(), 4);
        assert_eq!(creds[0]["id"], "privilege_jwt");
        assert_eq!(creds[0]["format"], "jwt_vc_json");
        assert!(creds[0]["claims"]
            .as_array()
            .unwrap()
            .contains(&json!({"path": ["credentialSubject", "role"]})));
        assert!(!creds[0]["claims"]
            .as_array()
            .unwrap()
            .contains(&json!({"path": ["credentialSubject", "name"]})));
        assert_eq!(q["credential_sets"][0]["required"], true);
        assert_eq!(q["credential_sets"][1]["required"], false);
    }
}
