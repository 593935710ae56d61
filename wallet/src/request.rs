//! What a presentation must carry for a request, picked from the store.
//!
//! - A privilege of the holder at the facility covering the domain. For the research
//!   domain a study sponsored by the holder may stand in for it (a research network has
//!   no privileges).
//! - For a named patient: that patient's permits covering the domain, the purpose, the
//!   facility as custodian and today, and bound to what is presented (granted to the
//!   holder, to the organization of the privilege chosen, or to a study presented).
//! - For the research domain: the holder's studies covering the purpose.
//!
//! Withdrawn consents and credentials outside their validity period are never picked.

use chrono::{DateTime, Utc};
use federation::credentials::{CredentialKind, Domain, ProofFormat};
use federation::verify::MAX_EMBEDDED_CREDENTIALS;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::addressing::grantee_id;
use crate::error::{Result, WalletError};
use crate::gateway::is_did;
use crate::store::StoredCredential;

/// What a clinician (or a research network) asks a gateway for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PresentationRequest {
    /// The gateway's organization DID; the gateway must answer the challenge as this DID.
    pub facility: String,
    pub domain: Domain,
    /// An HL7 v3 PurposeOfUse code such as `TREAT`.
    pub purpose: String,
    /// The patient's DID, when the request is about one patient.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// The presentation's proof format.
    #[serde(default)]
    pub format: ProofFormat,
}

impl PresentationRequest {
    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(WalletError::InvalidRequest(m));
        if !is_did(&self.facility) {
            return bad(format!("facility {:?} is not a DID", self.facility));
        }
        if let Some(patient) = &self.patient {
            if !is_did(patient) {
                return bad(format!("patient {patient:?} is not a DID"));
            }
        }
        let purpose_ok = !self.purpose.is_empty()
            && self.purpose.len() <= 64
            && self.purpose.bytes().all(|b| b.is_ascii_alphanumeric());
        if !purpose_ok {
            return bad(format!(
                "purpose {:?} is not a PurposeOfUse code such as TREAT",
                self.purpose
            ));
        }
        Ok(())
    }
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn lists(v: &Value, key: &str, item: &str) -> bool {
    v.get(key)
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(item)))
}

fn usable(c: &StoredCredential, kind: CredentialKind, now: DateTime<Utc>) -> bool {
    c.kind == kind && !c.withdrawn && c.is_current(now)
}

fn privilege_fits(
    c: &StoredCredential,
    holder: &str,
    req: &PresentationRequest,
    now: DateTime<Utc>,
) -> bool {
    usable(c, CredentialKind::ClinicianPrivilege, now)
        && str_of(&c.claims, "id") == Some(holder)
        && c.claims
            .get("privileges")
            .and_then(Value::as_array)
            .is_some_and(|ps| {
                ps.iter().any(|p| {
                    str_of(p, "facility") == Some(req.facility.as_str())
                        && lists(p, "domains", req.domain.as_str())
                })
            })
}

fn study_fits(
    c: &StoredCredential,
    holder: &str,
    req: &PresentationRequest,
    now: DateTime<Utc>,
) -> bool {
    usable(c, CredentialKind::ResearchStudy, now)
        && str_of(&c.claims, "sponsor") == Some(holder)
        && lists(&c.claims, "purposes", &req.purpose)
}

fn consent_fits(
    c: &StoredCredential,
    patient: &str,
    req: &PresentationRequest,
    now: DateTime<Utc>,
) -> bool {
    let claims = &c.claims;
    let period = claims.get("period").unwrap_or(&Value::Null);
    let started = str_of(period, "start")
        .and_then(federation::time::parse)
        .is_some_and(|s| s <= now);
    let not_ended = match period.get("end") {
        None | Some(Value::Null) => true,
        Some(end) => end
            .as_str()
            .and_then(federation::time::parse)
            .is_some_and(|e| now <= e),
    };
    usable(c, CredentialKind::PatientConsent, now)
        && str_of(claims, "id") == Some(patient)
        && str_of(claims, "provision") == Some("permit")
        && lists(claims, "domains", req.domain.as_str())
        && lists(claims, "purposes", &req.purpose)
        && lists(claims, "custodians", &req.facility)
        && started
        && not_ended
}

/// The credentials (as they travel) a presentation for `req` must carry.
pub(crate) fn select(
    holder: &str,
    held: &[StoredCredential],
    req: &PresentationRequest,
    now: DateTime<Utc>,
) -> Result<Vec<Value>> {
    req.validate()?;
    // An SD-JWT VC is never put in a signed presentation: it is presented alone, with its
    // own key binding (`Wallet::present_sd_jwt`).
    let held: Vec<StoredCredential> = held
        .iter()
        .filter(|c| c.format != federation::credentials::ProofFormat::SdJwt)
        .cloned()
        .collect();
    let held = held.as_slice();
    let mut privileges: Vec<&StoredCredential> = held
        .iter()
        .filter(|c| privilege_fits(c, holder, req, now))
        .collect();
    // The one valid longest first; no end date counts as longest.
    privileges
        .sort_by_key(|c| std::cmp::Reverse(c.valid_until.unwrap_or(DateTime::<Utc>::MAX_UTC)));
    let studies: Vec<&StoredCredential> = if req.domain == Domain::Research {
        held.iter()
            .filter(|c| study_fits(c, holder, req, now))
            .collect()
    } else {
        Vec::new()
    };
    if privileges.is_empty() && studies.is_empty() {
        return Err(if req.domain == Domain::Research {
            WalletError::NoMatchingStudy {
                facility: req.facility.clone(),
                purpose: req.purpose.clone(),
            }
        } else {
            WalletError::NoMatchingPrivilege {
                facility: req.facility.clone(),
                domain: req.domain.as_str().to_string(),
            }
        });
    }

    let mut privilege = privileges.first().copied();
    let mut consents: Vec<&StoredCredential> = Vec::new();
    if let Some(patient) = &req.patient {
        let study_ids: Vec<&str> = studies
            .iter()
            .filter_map(|s| str_of(&s.claims, "id"))
            .collect();
        let bound = |c: &StoredCredential, p: Option<&StoredCredential>| {
            let grantee = grantee_id(&c.claims);
            grantee == Some(holder)
                || str_of(&c.claims, "id") == Some(holder)
                || grantee.is_some_and(|g| {
                    study_ids.contains(&g)
                        || p.is_some_and(|p| str_of(&p.claims, "organization") == Some(g))
                })
        };
        let candidates: Vec<&StoredCredential> = held
            .iter()
            .filter(|c| consent_fits(c, patient, req, now))
            .collect();
        // An organization-level consent is bound only through a privilege of that
        // organization, so prefer a privilege that binds one.
        if let Some(p) = privileges
            .iter()
            .find(|p| candidates.iter().any(|c| bound(c, Some(p))))
        {
            privilege = Some(p);
        }
        consents = candidates
            .into_iter()
            .filter(|c| bound(c, privilege))
            .collect();
        if consents.is_empty() {
            return Err(WalletError::NoMatchingConsent {
                patient: patient.clone(),
                facility: req.facility.clone(),
                domain: req.domain.as_str().to_string(),
                purpose: req.purpose.clone(),
            });
        }
        // Newest first, so that a cut below keeps the most recent grants.
        consents.sort_by_key(|c| std::cmp::Reverse(c.valid_from));
    }

    let mut out: Vec<Value> = privilege.iter().map(|c| c.credential.clone()).collect();
    out.extend(studies.iter().map(|c| c.credential.clone()));
    if out.len() >= MAX_EMBEDDED_CREDENTIALS && !consents.is_empty() {
        return Err(WalletError::TooManyCredentials {
            count: out.len() + consents.len(),
            max: MAX_EMBEDDED_CREDENTIALS,
        });
    }
    if out.len() > MAX_EMBEDDED_CREDENTIALS {
        return Err(WalletError::TooManyCredentials {
            count: out.len(),
            max: MAX_EMBEDDED_CREDENTIALS,
        });
    }
    let room = MAX_EMBEDDED_CREDENTIALS - out.len();
    out.extend(consents.iter().take(room).map(|c| c.credential.clone()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HOLDER: &str = "did:key:z6MkHolder";
    const PATIENT: &str = "did:key:z6MkPatient";
    const B: &str = "did:web:hospital-b.test";

    fn record(kind: CredentialKind, tag: &str, claims: Value) -> StoredCredential {
        let now = Utc::now();
        StoredCredential {
            id: format!("urn:test:{tag}"),
            kind,
            format: ProofFormat::Jwt,
            issuer: "did:web:office.test".into(),
            subject: claims["id"].as_str().unwrap_or_default().into(),
            summary: String::new(),
            valid_from: Some(now - chrono::Duration::days(1)),
            valid_until: Some(now + chrono::Duration::days(1)),
            imported_at: now,
            digest: tag.into(),
            claims,
            credential: json!(tag),
            withdrawn: false,
            withdrawn_at: None,
            withdrawal_sent_to: Vec::new(),
            registered_with: Vec::new(),
        }
    }

    fn privilege(tag: &str, org: &str) -> StoredCredential {
        record(
            CredentialKind::ClinicianPrivilege,
            tag,
            json!({"id": HOLDER, "organization": org,
                   "privileges": [{"facility": B, "domains": ["clinical"], "actions": ["read"]}]}),
        )
    }

    fn consent(tag: &str, grantee: &str) -> StoredCredential {
        record(
            CredentialKind::PatientConsent,
            tag,
            json!({"id": PATIENT, "custodians": [B], "grantee": {"id": grantee, "kind": "clinician"},
                   "provision": "permit", "domains": ["clinical"], "purposes": ["TREAT"],
                   "dataClasses": ["Observation"],
                   "period": {"start": "2020-01-01T00:00:00Z", "end": "2099-01-01T00:00:00Z"}}),
        )
    }

    fn req() -> PresentationRequest {
        PresentationRequest {
            facility: B.into(),
            domain: Domain::Clinical,
            purpose: "TREAT".into(),
            patient: Some(PATIENT.into()),
            format: ProofFormat::Jwt,
        }
    }

    fn tags(out: &[Value]) -> Vec<&str> {
        out.iter().filter_map(Value::as_str).collect()
    }

    #[test]
    fn picks_the_privilege_and_the_fitting_consent() {
        let held = [privilege("p", "did:web:a.test"), consent("c", HOLDER)];
        let out = select(HOLDER, &held, &req(), Utc::now()).unwrap();
        assert_eq!(tags(&out), ["p", "c"]);
        let mut no_patient = req();
        no_patient.patient = None;
        let out = select(HOLDER, &held, &no_patient, Utc::now()).unwrap();
        assert_eq!(tags(&out), ["p"]);
    }

    #[test]
    fn consents_that_do_not_fit_are_never_picked() {
        let now = Utc::now();
        let mut withdrawn = consent("withdrawn", HOLDER);
        withdrawn.withdrawn = true;
        let mut deny = consent("deny", HOLDER);
        deny.claims["provision"] = json!("deny");
        let mut future = consent("future", HOLDER);
        future.claims["period"]["start"] = json!("2098-01-01T00:00:00Z");
        let mut ended = consent("ended", HOLDER);
        ended.claims["period"]["end"] = json!("2021-01-01T00:00:00Z");
        let mut elsewhere = consent("elsewhere", HOLDER);
        elsewhere.claims["custodians"] = json!(["did:web:other.test"]);
        let mut other_purpose = consent("purpose", HOLDER);
        other_purpose.claims["purposes"] = json!(["HPAYMT"]);
        let mut expired = consent("expired", HOLDER);
        expired.valid_until = Some(now - chrono::Duration::hours(1));
        let other_grantee = consent("grantee", "did:key:z6MkSomeoneElse");
        let mut other_patient = consent("patient", HOLDER);
        other_patient.claims["id"] = json!("did:key:z6MkOtherPatient");
        let held = [
            privilege("p", "did:web:a.test"),
            withdrawn,
            deny,
            future,
            ended,
            elsewhere,
            other_purpose,
            expired,
            other_grantee,
            other_patient,
        ];
        let err = select(HOLDER, &held, &req(), now).unwrap_err();
        assert!(
            matches!(err, WalletError::NoMatchingConsent { .. }),
            "{err}"
        );
    }

    #[test]
    fn an_expired_privilege_is_not_picked() {
        let mut p = privilege("p", "did:web:a.test");
        p.valid_until = Some(Utc::now() - chrono::Duration::hours(1));
        let err = select(HOLDER, &[p], &req(), Utc::now()).unwrap_err();
        assert!(matches!(err, WalletError::NoMatchingPrivilege { .. }));
    }

    #[test]
    fn an_organization_consent_picks_the_privilege_of_that_organization() {
        let mut longer = privilege("longer", "did:web:a.test");
        longer.valid_until = Some(Utc::now() + chrono::Duration::days(300));
        let held = [
            longer,
            privilege("c-org", "did:web:c.test"),
            consent("org-consent", "did:web:c.test"),
        ];
        let out = select(HOLDER, &held, &req(), Utc::now()).unwrap();
        assert_eq!(tags(&out), ["c-org", "org-consent"]);
    }

    #[test]
    fn a_presentation_never_exceeds_the_pipeline_limit() {
        let mut held = vec![privilege("p", "did:web:a.test")];
        held.extend((0..30).map(|i| consent(&format!("c{i}"), HOLDER)));
        let out = select(HOLDER, &held, &req(), Utc::now()).unwrap();
        assert_eq!(out.len(), MAX_EMBEDDED_CREDENTIALS);
        assert_eq!(out[0], json!("p"));
    }

    #[test]
    fn requests_are_validated() {
        let mut r = req();
        r.purpose = "TREAT; DROP".into();
        assert!(matches!(
            select(HOLDER, &[], &r, Utc::now()),
            Err(WalletError::InvalidRequest(_))
        ));
        let mut r = req();
        r.patient = Some("patient-1".into());
        assert!(matches!(
            select(HOLDER, &[], &r, Utc::now()),
            Err(WalletError::InvalidRequest(_))
        ));
    }
}
