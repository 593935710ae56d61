//! The federation's signed trust registry.
//!
//! A manifest states, verifiably, who the members are (and where each member's did:web
//! document is served), which issuers are trusted for which credential type, and which
//! custodian shares which data domains with which requester. It travels as a JWS in General
//! JSON Serialization (RFC 7515 §7.2.1) carrying one signature per governance key, so that
//! governance members can co-sign one after the other.
//!
//! Governance is pinned by the verifier: a service is configured with a threshold and the
//! governance keys, and accepts a manifest only when at least `threshold` distinct configured
//! keys signed it. A manifest may name new governance; a [`Registry`] adopts it only after
//! that manifest verified under the governance already held, so a manifest can never appoint
//! the governors that approve it.
//!
//! One file per concept: `manifest` (what a manifest says and its rules),
//! `signed` (the JWS, co-signing, threshold verification, signed files) and `holder` (the
//! [`Registry`] a service keeps in force). Errors are here, shared by all three; everything
//! public is re-exported, so callers name `federation::registry::X` whatever file holds it.

use std::fmt;
use std::path::Path;

use crate::verify::Check;

mod holder;
mod manifest;
mod signed;

pub use holder::*;
pub use manifest::*;
pub use signed::*;

/// Largest signed manifest read from a file or fetched from a URL.
pub const MAX_MANIFEST_BYTES: usize = 1024 * 1024;

/// Most signatures one signed manifest may carry (each costs a verification).
const MAX_SIGNATURES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("manifest field {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("not a federation manifest: {0}")]
    Malformed(String),
    #[error("not a signed federation manifest: {0}")]
    MalformedJws(String),
    /// Bytes of the signed manifest (its file, its payload, a protected header) that are
    /// not strict JSON ([`crate::json`]): refused before anything in them is read.
    #[error("{part} is not strict JSON: {source}")]
    NotStrictJson {
        part: ManifestPart,
        source: crate::json::StrictJsonError,
    },
    #[error("signature #{index}: protected header refused: {reason}")]
    BadHeader { index: usize, reason: String },
    #[error("manifest is signed by {0}, which is not a governance key; refusing it")]
    UnknownSigner(String),
    #[error("signature by {kid} does not verify: {reason}")]
    BadSignature { kid: String, reason: String },
    #[error("{have} valid governance signature(s), {need} required")]
    BelowThreshold { have: u32, need: u32 },
    #[error("manifest version {offered} is older than version {held} in force (rollback)")]
    Rollback { held: u64, offered: u64 },
    #[error("another manifest with version {version} is already in force (equivocation)")]
    Equivocation { version: u64 },
    #[error("{0} has already signed this manifest")]
    AlreadySigned(String),
    #[error("the signed file carries another manifest (version {signed}), not version {offered}")]
    PayloadMismatch { signed: u64, offered: u64 },
    #[error("{0} is not a governance key (governance keys are did:key)")]
    NotGovernanceKey(String),
    #[error("signing failed: {0}")]
    Sign(String),
    #[error("signed manifest is larger than {MAX_MANIFEST_BYTES} bytes")]
    TooLarge,
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
    #[error("fetching the manifest failed: {0}")]
    Fetch(String),
    #[error("the registry state is unavailable")]
    Poisoned,
    #[error("the manifest journal could not be written: {0}")]
    Journal(String),
    #[error("the manifest journal could not be read: {0}")]
    JournalRead(String),
}

fn invalid(field: impl Into<String>, reason: impl fmt::Display) -> RegistryError {
    RegistryError::Invalid {
        field: field.into(),
        reason: reason.to_string(),
    }
}

/// Why one value of a manifest (a member's DID, a URL, a governance key) is refused; the
/// manifest error names the field it was found in.
#[derive(Debug, thiserror::Error)]
enum ValueError {
    #[error("{0:?} is not a did:web")]
    NotDidWeb(String),
    #[error("{0:?} is not a valid did:web")]
    BadDidWeb(String),
    #[error("{url:?} is not a URL: {reason}")]
    NotUrl { url: String, reason: String },
    #[error("{0:?} must not carry credentials")]
    UrlCredentials(String),
    #[error("{0:?} must be https (plain http only to a loopback host in dev mode)")]
    NotHttps(String),
    #[error("{0:?} is not a did:key verification method (did:key:z…#z…)")]
    NotDidKeyMethod(String),
    #[error("{method:?}: {reason}")]
    BadKey { method: String, reason: String },
    #[error("{0:?} is not an Ed25519 or P-256 key")]
    KeyType(String),
}

/// Which bytes of a signed manifest a [`RegistryError::NotStrictJson`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestPart {
    /// The JWS JSON serialization as stored or fetched.
    SignedFile,
    /// The manifest itself (the signed payload).
    Manifest,
    /// The protected header of signature #n.
    Header(usize),
}

impl fmt::Display for ManifestPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManifestPart::SignedFile => f.write_str("the signed manifest"),
            ManifestPart::Manifest => f.write_str("the manifest"),
            ManifestPart::Header(i) => write!(f, "the protected header of signature #{i}"),
        }
    }
}

impl RegistryError {
    /// The check of the verification pipeline ([`crate::verify`]) a refused manifest
    /// failed, named as a refused credential's would be; `None` for what is no
    /// verification failure (I/O, rollback, journal).
    fn check(&self) -> Option<Check> {
        match self {
            RegistryError::Malformed(_)
            | RegistryError::MalformedJws(_)
            | RegistryError::NotStrictJson { .. }
            | RegistryError::TooLarge => Some(Check::Format),
            RegistryError::BadHeader { .. }
            | RegistryError::UnknownSigner(_)
            | RegistryError::BadSignature { .. }
            | RegistryError::BelowThreshold { .. } => Some(Check::Proof),
            RegistryError::Invalid { .. } => Some(Check::Schema),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::signed::unb64;
    use super::*;

    use std::sync::Arc;
    use std::time::Duration;

    use crate::b64::encode as b64;

    use serde_json::Value;

    use crate::credentials::{CredentialKind, Domain};
    use crate::did::DidResolver;

    use crate::did::DidError;
    use crate::keys::{KeyAlgorithm, KeyPair};
    use crate::trust::TrustSource;
    use crate::verify::Check;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn roles_parse_by_name_and_an_unknown_one_lists_them_all() {
        assert_eq!("irb".parse::<Role>(), Ok(Role::Irb));
        let err = "janitor".parse::<Role>().unwrap_err();
        assert_eq!(err.value, "janitor");
        assert_eq!(
            err.to_string(),
            "unknown role \"janitor\" (one of custodian, requester, credentialing-office, \
             consent-registry, irb, research-network, auditor, visibility)"
        );
        assert!("jwt".parse::<crate::credentials::ProofFormat>().is_ok());
        assert_eq!(
            "cbor"
                .parse::<crate::credentials::ProofFormat>()
                .unwrap_err()
                .to_string(),
            "unknown proof format \"cbor\" (data-integrity, jwt or sd-jwt)"
        );
    }

    const OFFICE: &str = "did:web:office.test";
    const HOSPITAL_A: &str = "did:web:hospital-a.test";
    const HOSPITAL_B: &str = "did:web:hospital-b.test";

    fn keys(n: usize) -> Vec<KeyPair> {
        (0..n)
            .map(|i| {
                let alg = if i % 2 == 0 {
                    KeyAlgorithm::Ed25519
                } else {
                    KeyAlgorithm::P256
                };
                KeyPair::generate_did_key(alg).unwrap()
            })
            .collect()
    }

    fn governance(threshold: u32, keys: &[KeyPair]) -> Governance {
        Governance {
            threshold,
            keys: keys
                .iter()
                .map(|k| k.verification_method().to_string())
                .collect(),
        }
    }

    fn member(did: &str, roles: &[Role]) -> Member {
        let host = did.trim_start_matches("did:web:");
        Member {
            did: did.to_string(),
            name: host.to_string(),
            roles: roles.to_vec(),
            endpoints: Endpoints {
                gateway: Some(format!("https://{host}/gateway")),
                ..Endpoints::default()
            },
            base_url: format!("https://{host}"),
        }
    }

    fn manifest(version: u64, gov: Governance) -> Manifest {
        let mut m = Manifest::new("test federation", gov);
        m.version = version;
        // Fixed, so that two manifests built for one version are the same document even
        // when a second ticks between them.
        m.issued_at = "2026-03-01T10:00:00Z".into();
        m.members = vec![
            member(OFFICE, &[Role::CredentialingOffice]),
            member(HOSPITAL_A, &[Role::Custodian, Role::Requester]),
            member(HOSPITAL_B, &[Role::Custodian]),
        ];
        m.trusted_issuers
            .insert(CredentialKind::ClinicianPrivilege, vec![OFFICE.into()]);
        m.contracts.push(Contract {
            custodian: HOSPITAL_B.into(),
            requester: HOSPITAL_A.into(),
            domains: vec![Domain::Clinical],
            purposes: vec!["TREAT".into()],
            expires: None,
        });
        m
    }

    fn tamper(signed: &SignedManifest, edit: impl FnOnce(&mut Value)) -> SignedManifest {
        let mut payload: Value = serde_json::from_slice(&unb64(&signed.payload).unwrap()).unwrap();
        edit(&mut payload);
        SignedManifest {
            payload: b64(&serde_json::to_vec(&payload).unwrap()),
            signatures: signed.signatures.clone(),
        }
    }

    #[test]
    fn two_of_three_is_accepted() {
        let k = keys(3);
        let gov = governance(2, &k);
        let m = manifest(1, gov.clone());
        let signed = SignedManifest::sign(&m, &[&k[0], &k[2]]).unwrap();
        let verified = signed.verify_detailed(&gov, false).unwrap();
        assert_eq!(verified.manifest, m);
        assert_eq!(verified.signers.len(), 2);
        // Co-signing one by one gives the same result, P-256 key included.
        let mut one_by_one = SignedManifest::sign(&m, &[&k[1]]).unwrap();
        one_by_one.add_signature(&k[2]).unwrap();
        assert_eq!(one_by_one.verify(&gov).unwrap(), m);
    }

    #[test]
    fn one_of_three_is_below_threshold() {
        let k = keys(3);
        let gov = governance(2, &k);
        let signed = SignedManifest::sign(&manifest(1, gov.clone()), &[&k[1]]).unwrap();
        assert_eq!(
            signed.verify(&gov).unwrap_err(),
            RegistryError::BelowThreshold { have: 1, need: 2 }
        );
        let unsigned = SignedManifest::sign(&manifest(1, gov.clone()), &[]).unwrap();
        assert_eq!(
            unsigned.verify(&gov).unwrap_err(),
            RegistryError::BelowThreshold { have: 0, need: 2 }
        );
    }

    #[test]
    fn duplicate_signatures_of_one_key_count_once() {
        let k = keys(3);
        let gov = governance(2, &k);
        let mut signed = SignedManifest::sign(&manifest(1, gov.clone()), &[&k[0]]).unwrap();
        assert_eq!(
            signed.add_signature(&k[0]).unwrap_err(),
            RegistryError::AlreadySigned(k[0].verification_method().into())
        );
        // Smuggled in by hand, a copy still counts once.
        let copy = signed.signatures[0].clone();
        signed.signatures.push(copy);
        assert_eq!(
            signed.verify(&gov).unwrap_err(),
            RegistryError::BelowThreshold { have: 1, need: 2 }
        );
    }

    #[test]
    fn unknown_signer_is_refused() {
        let k = keys(3);
        let outsider = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
        let gov = governance(2, &k);
        let signed =
            SignedManifest::sign(&manifest(1, gov.clone()), &[&k[0], &k[1], &outsider]).unwrap();
        assert_eq!(
            signed.verify(&gov).unwrap_err(),
            RegistryError::UnknownSigner(outsider.verification_method().into())
        );
    }

    #[test]
    fn a_manifest_cannot_appoint_its_own_governors() {
        let pinned = keys(3);
        let usurpers = keys(2);
        // The manifest names the usurpers as governance and is signed by them.
        let m = manifest(1, governance(2, &usurpers));
        let signed = SignedManifest::sign(&m, &[&usurpers[0], &usurpers[1]]).unwrap();
        assert!(matches!(
            signed.verify(&governance(2, &pinned)).unwrap_err(),
            RegistryError::UnknownSigner(_)
        ));
    }

    #[test]
    fn tampered_payload_is_refused() {
        let k = keys(3);
        let gov = governance(2, &k);
        let signed = SignedManifest::sign(&manifest(1, gov.clone()), &[&k[0], &k[1]]).unwrap();
        let forged = tamper(&signed, |p| {
            p["members"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({
                    "did": "did:web:evil.test", "name": "Evil", "roles": ["custodian"],
                    "baseUrl": "https://evil.test"
                }));
        });
        assert!(matches!(
            forged.verify(&gov).unwrap_err(),
            RegistryError::BadSignature { .. }
        ));
        // A truncated signature also fails.
        let mut truncated = signed.clone();
        truncated.signatures[0].signature.truncate(20);
        assert!(matches!(
            truncated.verify(&gov).unwrap_err(),
            RegistryError::BadSignature { .. }
        ));
    }

    #[test]
    fn hostile_protected_headers_are_refused() {
        let k = keys(2);
        let gov = governance(1, &k);
        let signed = SignedManifest::sign(&manifest(1, gov.clone()), &[&k[0]]).unwrap();
        let with_header = |h: Value| SignedManifest {
            payload: signed.payload.clone(),
            signatures: vec![JwsSignature {
                protected: b64(&serde_json::to_vec(&h).unwrap()),
                signature: signed.signatures[0].signature.clone(),
            }],
        };
        let kid = k[0].verification_method();
        for extra in ["jwk", "jku", "x5u", "x5c", "crit", "b64", "typ"] {
            let mut h = serde_json::json!({"alg": "EdDSA", "kid": kid});
            h[extra] = serde_json::json!("x");
            assert!(
                matches!(
                    with_header(h).verify(&gov).unwrap_err(),
                    RegistryError::BadHeader { index: 0, .. }
                ),
                "{extra}"
            );
        }
        for alg in ["none", "HS256", "RS256"] {
            let h = serde_json::json!({"alg": alg, "kid": kid});
            assert!(matches!(
                with_header(h).verify(&gov).unwrap_err(),
                RegistryError::BadHeader { .. }
            ));
        }
        // An Ed25519 key's signature relabelled ES256 is refused.
        let h = serde_json::json!({"alg": "ES256", "kid": kid});
        assert!(matches!(
            with_header(h).verify(&gov).unwrap_err(),
            RegistryError::BadSignature { .. }
        ));
        // Unprotected headers are not part of the accepted format.
        let mut raw = serde_json::to_value(&signed).unwrap();
        raw["signatures"][0]["header"] = serde_json::json!({"kid": kid});
        assert!(matches!(
            SignedManifest::from_json(&serde_json::to_vec(&raw).unwrap()).unwrap_err(),
            RegistryError::MalformedJws(_)
        ));
    }

    /// A manifest whose governance key signed exactly these bytes.
    fn signed_over(header: &[u8], payload: &[u8], key: &KeyPair) -> SignedManifest {
        let protected = b64(header);
        let payload = b64(payload);
        let input = format!("{protected}.{payload}");
        let signature = ssi::claims::jws::sign_bytes(
            key.algorithm().jws_algorithm(),
            input.as_bytes(),
            key.jwk(),
        )
        .unwrap();
        SignedManifest {
            payload,
            signatures: vec![JwsSignature {
                protected,
                signature: b64(&signature),
            }],
        }
    }

    /// `doc` with `key` twice (`first` first), invalid UTF-8, a lone surrogate, or
    /// nesting beyond the limit.
    fn ambiguous(doc: &[u8], key: &str, first: &str) -> Vec<(&'static str, Vec<u8>)> {
        let text = std::str::from_utf8(doc).unwrap();
        let needle = format!("\"{key}\":");
        let at = text.find(&needle).unwrap();
        let member = |value: &[u8]| [b"{\"note\":", value, b",", &doc[1..]].concat();
        let deep = format!("{}{}", "[".repeat(80), "]".repeat(80));
        vec![
            (
                "duplicate key",
                format!("{}{needle}{first},{}", &text[..at], &text[at..]).into_bytes(),
            ),
            ("invalid UTF-8", member(b"\"\xff\"")),
            ("lone surrogate", member(br#""\udfff""#)),
            ("too deep", member(deep.as_bytes())),
        ]
    }

    #[test]
    fn manifests_signed_over_ambiguous_json_are_refused_as_format() {
        let k = keys(1);
        let gov = governance(1, &k);
        let payload = manifest(1, gov.clone()).canonical_bytes().unwrap();
        let kid = k[0].verification_method();
        let header = format!(r#"{{"alg":"EdDSA","kid":"{kid}"}}"#);
        // The same bytes, signed the same way, verify: what fails below is the JSON.
        signed_over(header.as_bytes(), &payload, &k[0])
            .verify(&gov)
            .unwrap();

        // "No contracts" first, the contracts second: a last-wins reader sees contracts.
        for (case, hostile) in ambiguous(&payload, "contracts", "[]") {
            let err = signed_over(header.as_bytes(), &hostile, &k[0])
                .verify(&gov)
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    RegistryError::NotStrictJson {
                        part: ManifestPart::Manifest,
                        ..
                    }
                ),
                "{case}: {err}"
            );
            assert_eq!(err.check(), Some(Check::Format), "{case}");
        }
        // The protected header, read with the same check as every JWS header.
        for (case, hostile) in ambiguous(header.as_bytes(), "alg", "\"none\"") {
            let err = signed_over(&hostile, &payload, &k[0])
                .verify(&gov)
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    RegistryError::NotStrictJson {
                        part: ManifestPart::Header(0),
                        ..
                    }
                ),
                "{case}: {err}"
            );
            assert_eq!(err.check(), Some(Check::Format), "{case}");
        }
        // The signed file as stored or fetched.
        let file = signed_over(header.as_bytes(), &payload, &k[0])
            .to_json_pretty()
            .unwrap();
        let file = String::from_utf8(file).unwrap().replacen(
            "\"payload\":",
            "\"payload\": \"e30\",\n  \"payload\":",
            1,
        );
        let err = SignedManifest::from_json(file.as_bytes()).unwrap_err();
        assert!(
            matches!(
                err,
                RegistryError::NotStrictJson {
                    part: ManifestPart::SignedFile,
                    ..
                }
            ),
            "{err}"
        );
        // A hostile header that is well-formed is a proof failure, as for credentials.
        let err = signed_over(
            format!(r#"{{"alg":"EdDSA","kid":"{kid}","jwk":{{}}}}"#).as_bytes(),
            &payload,
            &k[0],
        )
        .verify(&gov)
        .unwrap_err();
        assert!(
            matches!(err, RegistryError::BadHeader { index: 0, .. }),
            "{err}"
        );
        assert_eq!(err.check(), Some(Check::Proof));
    }

    #[test]
    fn pinned_governance_must_be_sound() {
        let k = keys(2);
        let signed = SignedManifest::sign(&manifest(1, governance(1, &k)), &[]).unwrap();
        for gov in [
            governance(0, &k),
            governance(3, &k),
            Governance {
                threshold: 1,
                keys: vec!["did:web:gov.test#key-1".into()],
            },
            Governance {
                threshold: 1,
                keys: vec![
                    k[0].verification_method().into(),
                    k[0].verification_method().into(),
                ],
            },
        ] {
            assert!(matches!(
                signed.verify(&gov).unwrap_err(),
                RegistryError::Invalid { .. }
            ));
        }
        assert_eq!(
            governance_key_id(k[0].did()).unwrap(),
            k[0].verification_method()
        );
    }

    #[test]
    fn registry_refuses_rollback_and_equivocation_and_keeps_the_manifest() {
        let k = keys(3);
        let gov = governance(2, &k);
        let registry = Registry::new(gov.clone(), false);
        assert!(!registry.is_trusted(CredentialKind::ClinicianPrivilege, OFFICE));
        let v2 = SignedManifest::sign(&manifest(2, gov.clone()), &[&k[0], &k[1]]).unwrap();
        assert_eq!(
            registry.install(&v2).unwrap(),
            InstallOutcome::Installed { version: 2 }
        );
        assert!(registry.is_trusted(CredentialKind::ClinicianPrivilege, OFFICE));

        let mut older = manifest(1, gov.clone());
        older.trusted_issuers.clear();
        let v1 = SignedManifest::sign(&older, &[&k[0], &k[1]]).unwrap();
        assert_eq!(
            registry.install(&v1).unwrap_err(),
            RegistryError::Rollback {
                held: 2,
                offered: 1
            }
        );
        assert!(registry.is_trusted(CredentialKind::ClinicianPrivilege, OFFICE));
        assert_eq!(registry.current().unwrap().version, 2);

        // Same version, other signers: unchanged. Same version, other content: refused.
        let v2_again = SignedManifest::sign(&manifest(2, gov.clone()), &[&k[1], &k[2]]).unwrap();
        assert_eq!(
            registry.install(&v2_again).unwrap(),
            InstallOutcome::Unchanged { version: 2 }
        );
        let mut other = manifest(2, gov.clone());
        other.trusted_issuers.clear();
        let v2_other = SignedManifest::sign(&other, &[&k[0], &k[2]]).unwrap();
        assert_eq!(
            registry.install(&v2_other).unwrap_err(),
            RegistryError::Equivocation { version: 2 }
        );
        // A badly signed newer one is refused too.
        let v3 = SignedManifest::sign(&manifest(3, gov.clone()), &[&k[0]]).unwrap();
        assert!(matches!(
            registry.install(&v3).unwrap_err(),
            RegistryError::BelowThreshold { .. }
        ));
        assert!(registry.is_trusted(CredentialKind::ClinicianPrivilege, OFFICE));
        assert_eq!(registry.current().unwrap().version, 2);
    }

    #[test]
    fn governance_rotates_only_through_a_manifest_signed_by_the_old_governance() {
        let old = keys(3);
        let new = keys(2);
        let registry = Registry::new(governance(2, &old), false);
        // v1 hands governance to the new keys, approved by the old ones.
        let v1 =
            SignedManifest::sign(&manifest(1, governance(2, &new)), &[&old[0], &old[1]]).unwrap();
        registry.install(&v1).unwrap();
        assert_eq!(registry.governance().unwrap(), governance(2, &new));
        // From then on the old keys alone no longer count.
        let by_old =
            SignedManifest::sign(&manifest(2, governance(2, &new)), &[&old[0], &old[1]]).unwrap();
        assert!(matches!(
            registry.install(&by_old).unwrap_err(),
            RegistryError::UnknownSigner(_)
        ));
        let by_new =
            SignedManifest::sign(&manifest(2, governance(2, &new)), &[&new[0], &new[1]]).unwrap();
        assert_eq!(
            registry.install(&by_new).unwrap(),
            InstallOutcome::Installed { version: 2 }
        );
    }

    #[test]
    fn registry_queries() {
        let k = keys(1);
        let gov = governance(1, &k);
        let mut m = manifest(1, gov.clone());
        m.members[1].base_url = "https://hospital-a.test/fed".into();
        m.contracts.push(Contract {
            custodian: HOSPITAL_B.into(),
            requester: HOSPITAL_A.into(),
            domains: vec![Domain::Billing],
            purposes: vec!["HPAYMT".into()],
            expires: Some("2001-01-01T00:00:00Z".into()),
        });
        let registry = Registry::new(gov, false);
        registry
            .install(&SignedManifest::sign(&m, &[&k[0]]).unwrap())
            .unwrap();
        let contracts = registry.contracts_between(HOSPITAL_B, HOSPITAL_A);
        assert_eq!(contracts.len(), 1, "the expired contract is left out");
        assert_eq!(contracts[0].domains, [Domain::Clinical]);
        assert_eq!(contracts[0].purposes, ["TREAT"]);
        assert!(registry
            .contracts_between(HOSPITAL_A, HOSPITAL_B)
            .is_empty());
        assert_eq!(registry.member(OFFICE).unwrap().name, "office.test");
        assert!(registry.member("did:web:nobody.test").is_none());
        let custodians: Vec<String> = registry
            .members_with_role(Role::Custodian)
            .into_iter()
            .map(|m| m.did)
            .collect();
        assert_eq!(custodians, vec![HOSPITAL_A, HOSPITAL_B]);
        let map = registry.web_allow_map();
        assert_eq!(map.len(), 3);
        assert_eq!(map[HOSPITAL_A].as_str(), "https://hospital-a.test/fed/");
        assert_eq!(map[OFFICE].as_str(), "https://office.test/");
        assert!(!registry.is_trusted(CredentialKind::ResearchStudy, OFFICE));
        assert!(!registry.is_trusted(CredentialKind::ClinicianPrivilege, HOSPITAL_A));
    }

    #[test]
    fn schema_violations_are_refused() {
        let k = keys(2);
        let gov = governance(1, &k);
        let good = manifest(1, gov.clone());
        good.validate(false).unwrap();

        let mut raw = serde_json::to_value(&good).unwrap();
        raw["extra"] = serde_json::json!(true);
        let err = Manifest::from_json(&serde_json::to_vec(&raw).unwrap()).unwrap_err();
        assert!(err.to_string().contains("extra"), "{err}");
        let mut raw = serde_json::to_value(&good).unwrap();
        raw["members"][0]["colour"] = serde_json::json!("red");
        assert!(Manifest::from_json(&serde_json::to_vec(&raw).unwrap()).is_err());
        let dup = br#"{"federation":"a","federation":"b"}"#;
        assert!(Manifest::from_json(dup).is_err());

        let field_of = |m: &Manifest, dev: bool| match m.validate(dev) {
            Err(RegistryError::Invalid { field, .. }) => field,
            other => panic!("expected a field error, got {other:?}"),
        };
        let mut m = good.clone();
        m.members[1].roles.clear();
        assert_eq!(field_of(&m, false), "members[1].roles");
        let mut m = good.clone();
        m.contracts[0].requester = "did:web:stranger.test".into();
        assert_eq!(field_of(&m, false), "contracts[0].requester");
        let mut m = good.clone();
        m.trusted_issuers.insert(
            CredentialKind::ResearchStudy,
            vec!["did:web:irb.test".into()],
        );
        assert_eq!(
            field_of(&m, false),
            "trustedIssuers.ResearchStudyCredential[0]"
        );
        let mut m = good.clone();
        m.members.push(member(OFFICE, &[Role::Auditor]));
        assert_eq!(field_of(&m, false), "members[3].did");
        let mut m = good.clone();
        m.members[0].did = "did:key:z6Mkabc".into();
        assert_eq!(field_of(&m, false), "members[0].did");
        let mut m = good.clone();
        m.version = 0;
        assert_eq!(field_of(&m, false), "version");
        let mut m = good.clone();
        m.governance.threshold = 3;
        assert_eq!(field_of(&m, false), "governance.threshold");
        let mut m = good.clone();
        m.contracts[0].purposes = vec!["treat me".into()];
        assert_eq!(field_of(&m, false), "contracts[0].purposes[0]");
        let mut m = good.clone();
        m.members[0].endpoints.issuer = Some("http://office.test/issuer".into());
        assert_eq!(field_of(&m, true), "members[0].endpoints.issuer");
        // Plain http to loopback: only in dev mode.
        let mut m = good.clone();
        m.members[0].base_url = "http://127.0.0.1:8443/".into();
        assert_eq!(field_of(&m, false), "members[0].baseUrl");
        m.validate(true).unwrap();
        let mut m = good;
        m.visibility = Some(VisibilityService {
            did: "did:web:elsewhere.test".into(),
            endpoint: "https://elsewhere.test".into(),
        });
        assert_eq!(field_of(&m, false), "visibility.did");
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.signed.json");
        let k = keys(2);
        let gov = governance(2, &k);
        let m = manifest(4, gov.clone());
        let signed = SignedManifest::sign(&m, &[&k[0], &k[1]]).unwrap();
        signed.save(&path).unwrap();
        let back = SignedManifest::load(&path).unwrap();
        assert_eq!(back, signed);
        assert_eq!(back.verify(&gov).unwrap(), m);
        assert!(back.carries(&m).unwrap());
        assert_eq!(back.signers().len(), 2);
        let big = vec![b' '; MAX_MANIFEST_BYTES + 1];
        std::fs::write(&path, big).unwrap();
        assert_eq!(
            SignedManifest::load(&path).unwrap_err(),
            RegistryError::TooLarge
        );
    }

    #[tokio::test]
    async fn file_watcher_picks_up_a_newer_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.signed.json");
        let k = keys(3);
        let gov = governance(2, &k);
        SignedManifest::sign(&manifest(1, gov.clone()), &[&k[0], &k[1]])
            .unwrap()
            .save(&path)
            .unwrap();
        let registry = Arc::new(Registry::new(gov.clone(), false));
        let resolver = Arc::new(DidResolver::new(false));
        let task = registry.spawn_watch(
            ManifestSource::File(path.clone()),
            Duration::from_millis(50),
            Some(resolver.clone()),
        );
        let wait_for = |version: u64| {
            let registry = registry.clone();
            async move {
                tokio::time::timeout(Duration::from_secs(5), async {
                    while registry.current().map(|m| m.version) != Some(version) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                })
                .await
                .is_ok()
            }
        };
        assert!(wait_for(1).await, "v1 was not installed");
        assert!(resolver.web_base(HOSPITAL_A).is_some());

        // A refused file (below threshold) changes nothing.
        let mut bad = manifest(5, gov.clone());
        bad.members.pop();
        bad.contracts.clear();
        SignedManifest::sign(&bad, &[&k[2]])
            .unwrap()
            .save(&path)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(registry.current().unwrap().version, 1);

        let mut v2 = manifest(2, gov.clone());
        v2.members
            .push(member("did:web:newcomer.test", &[Role::Requester]));
        SignedManifest::sign(&v2, &[&k[1], &k[2]])
            .unwrap()
            .save(&path)
            .unwrap();
        assert!(wait_for(2).await, "v2 was not picked up");
        assert!(resolver.web_base("did:web:newcomer.test").is_some());
        task.abort();
    }

    #[tokio::test]
    async fn non_member_did_web_is_refused_without_any_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let server = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                drop(socket);
            }
        });
        let k = keys(1);
        let gov = governance(1, &k);
        let mut m = Manifest::new("loopback", gov.clone());
        m.members.push(Member {
            did: "did:web:member.test".into(),
            name: "Member".into(),
            roles: vec![Role::Custodian],
            endpoints: Endpoints::default(),
            base_url: format!("http://127.0.0.1:{port}/"),
        });
        let registry = Registry::new(gov, true);
        registry
            .install(&SignedManifest::sign(&m, &[&k[0]]).unwrap())
            .unwrap();
        let resolver = DidResolver::new(true);
        // Something configured before the registry is dropped from the map.
        resolver.allow_web(
            &format!("did:web:127.0.0.1%3A{port}"),
            reqwest::Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap(),
        );
        assert!(registry.apply_to(&resolver));
        let outsider = format!("did:web:127.0.0.1%3A{port}");
        assert_eq!(
            resolver.resolve(&outsider).await.unwrap_err(),
            DidError::NotAllowed(outsider.clone())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 0);
        // Control: a resolver that does allow that DID does reach the listener.
        let open = DidResolver::new(true);
        open.allow_web(
            &outsider,
            reqwest::Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap(),
        );
        assert!(open.resolve(&outsider).await.is_err());
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        server.abort();
    }
}

/// How a service follows the federation's manifest (the `[registry]` table of its config).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// A file path (relative to the config file) or an https URL of the signed manifest.
    pub signed: String,
    /// The governance this service pins: k of these keys must sign a manifest.
    pub governance: Governance,
    #[serde(default = "default_poll_secs")]
    pub poll_secs: u64,
}

fn default_poll_secs() -> u64 {
    10
}

impl RegistryConfig {
    /// Whether `signed` names a URL rather than a file.
    pub fn is_url(&self) -> bool {
        self.signed.starts_with("https://") || self.signed.starts_with("http://")
    }

    /// Makes a relative manifest path relative to `base` (the config file's folder).
    pub fn resolve_path(&mut self, base: &Path) {
        if !self.is_url() && Path::new(&self.signed).is_relative() {
            self.signed = base.join(&self.signed).display().to_string();
        }
    }
}
