//! The verification pipeline, through the library, against real status-list servers.

use chrono::Utc;
use federation::credentials::{self, CredentialKind, PresentationBinding, ProofFormat};
use federation::keys::{KeyAlgorithm, KeyPair};
use federation::Check;
use serde_json::{json, Value};
use test_support::forge::*;
use test_support::*;

const FORMATS: [ProofFormat; 2] = [ProofFormat::Jwt, ProofFormat::DataIntegrity];

fn binding() -> PresentationBinding {
    PresentationBinding {
        challenge: "nonce-123".into(),
        domain: HOSPITAL_B.into(),
    }
}

#[tokio::test]
async fn every_type_round_trips_in_both_formats() {
    let fed = federation().await;
    let clinician = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let patient = KeyPair::generate_did_key(KeyAlgorithm::P256).unwrap();
    for format in FORMATS {
        let (vc, _) = privilege(&fed.office, clinician.did(), format).await;
        let v = fed.verifier.verify_credential(&vc).await.unwrap();
        assert_eq!(v.kind, CredentialKind::ClinicianPrivilege);
        assert_eq!(v.format, format);
        assert_eq!(v.subject["npi"], "1234567893");
        assert!(v.checks.contains(&Check::Status));

        let consent = self_issued_consent(&patient, clinician.did(), format).await;
        let v = fed.verifier.verify_credential(&consent).await.unwrap();
        assert_eq!(v.kind, CredentialKind::PatientConsent);
        assert_eq!(v.issuer, patient.did());

        let study = credentials::unsigned_credential(
            CredentialKind::ResearchStudy,
            fed.irb.key.did(),
            study_subject("did:web:research.test"),
            Utc::now(),
            Some(Utc::now() + chrono::Duration::days(90)),
            None,
        );
        let study = credentials::issue(study, &fed.irb.key, format)
            .await
            .unwrap();
        let v = fed.verifier.verify_credential(&study).await.unwrap();
        assert_eq!(v.kind, CredentialKind::ResearchStudy);
        assert_eq!(v.subject["minCellSize"], 11);
    }
}

#[tokio::test]
async fn tampered_credentials_fail_the_proof_check() {
    let fed = federation().await;
    let clinician = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    // Data Integrity: change a claim after signing.
    let (mut vc, _) = privilege(&fed.office, clinician.did(), ProofFormat::DataIntegrity).await;
    vc["credentialSubject"]["role"] = json!("pharmacist");
    let err = fed.verifier.verify_credential(&vc).await.unwrap_err();
    assert_eq!(err.check, Check::Proof, "{err}");
    // JWT: swap the payload, keep the signature.
    let (jwt, _) = privilege(&fed.office, clinician.did(), ProofFormat::Jwt).await;
    let jwt = jwt.as_str().unwrap();
    let parts: Vec<&str> = jwt.split('.').collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut payload: Value = serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    payload["credentialSubject"]["role"] = json!("pharmacist");
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64.encode(serde_json::to_vec(&payload).unwrap()),
        parts[2]
    );
    let err = fed
        .verifier
        .verify_credential(&json!(forged))
        .await
        .unwrap_err();
    assert_eq!(err.check, Check::Proof, "{err}");
}

#[tokio::test]
async fn expired_and_premature_credentials_fail_validity() {
    let fed = federation().await;
    let clinician = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    for format in FORMATS {
        for (from, until) in [
            (
                Utc::now() - chrono::Duration::days(10),
                Utc::now() - chrono::Duration::days(1),
            ),
            (
                Utc::now() + chrono::Duration::days(1),
                Utc::now() + chrono::Duration::days(10),
            ),
        ] {
            let vc = credentials::unsigned_credential(
                CredentialKind::ClinicianPrivilege,
                fed.office.key.did(),
                privilege_subject(clinician.did()),
                from,
                Some(until),
                Some(&fed.office.next_status()),
            );
            let vc = credentials::issue(vc, &fed.office.key, format)
                .await
                .unwrap();
            let err = fed.verifier.verify_credential(&vc).await.unwrap_err();
            assert_eq!(err.check, Check::Validity, "{format:?}: {err}");
        }
    }
}

#[tokio::test]
async fn revoked_credential_fails_after_status_refresh() {
    let fed = federation().await;
    let clinician = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    for format in FORMATS {
        let (vc, status) = privilege(&fed.office, clinician.did(), format).await;
        fed.verifier.verify_credential(&vc).await.unwrap();
        fed.office.revoke(&status);
        // Still cached: the push or the TTL is what makes a verifier look again.
        fed.verifier
            .status
            .invalidate(&status.status_list_credential);
        let err = fed.verifier.verify_credential(&vc).await.unwrap_err();
        assert_eq!(err.check, Check::Status, "{err}");
        assert!(err.detail.contains("revoked"));
    }
}

#[tokio::test]
async fn untrusted_issuer_fails_issuer_trust() {
    let fed = federation().await;
    let clinician = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    for format in FORMATS {
        // The rogue office is a resolvable member but not trusted for privileges.
        let (vc, _) = privilege(&fed.other_office, clinician.did(), format).await;
        let err = fed.verifier.verify_credential(&vc).await.unwrap_err();
        assert_eq!(err.check, Check::IssuerTrust, "{err}");
        // The IRB is trusted, but for studies only.
        let (vc, _) = privilege(&fed.irb, clinician.did(), format).await;
        let err = fed.verifier.verify_credential(&vc).await.unwrap_err();
        assert_eq!(err.check, Check::IssuerTrust, "{err}");
    }
}

#[tokio::test]
async fn schema_violation_fails_schema_check() {
    let fed = federation().await;
    let clinician = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let mut subject = privilege_subject(clinician.did());
    subject["npi"] = json!("not-an-npi");
    let vc = credentials::unsigned_credential(
        CredentialKind::ClinicianPrivilege,
        fed.office.key.did(),
        subject,
        Utc::now(),
        None,
        Some(&fed.office.next_status()),
    );
    // The issuing library refuses it...
    let refused = credentials::issue(vc.clone(), &fed.office.key, ProofFormat::Jwt).await;
    assert!(matches!(refused, Err(credentials::IssueError::Schema(_))));
    // ...and a verifier refuses one signed anyway.
    let jwt = federation::jose::sign(&vc, &fed.office.key, "vc+jwt").unwrap();
    let err = fed
        .verifier
        .verify_credential(&json!(jwt))
        .await
        .unwrap_err();
    assert_eq!(err.check, Check::Schema, "{err}");
    assert!(
        err.detail.contains("/credentialSubject/npi"),
        "{}",
        err.detail
    );
}

#[tokio::test]
async fn a_key_of_another_did_cannot_sign_for_the_issuer() {
    let fed = federation().await;
    let clinician = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let vc = credentials::unsigned_credential(
        CredentialKind::ClinicianPrivilege,
        fed.office.key.did(),
        privilege_subject(clinician.did()),
        Utc::now(),
        None,
        Some(&fed.office.next_status()),
    );
    // Claims the trusted office as issuer, signed with the rogue office's key.
    let jwt = federation::jose::sign(&vc, &fed.other_office.key, "vc+jwt").unwrap();
    let err = fed
        .verifier
        .verify_credential(&json!(jwt))
        .await
        .unwrap_err();
    assert_eq!(err.check, Check::Proof, "{err}");
}

#[tokio::test]
async fn presentations_verify_in_both_formats() {
    let fed = federation().await;
    let clinician = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let patient = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    for vp_format in FORMATS {
        for vc_format in FORMATS {
            let (privilege, _) = privilege(&fed.office, clinician.did(), vc_format).await;
            let consent = self_issued_consent(&patient, clinician.did(), vc_format).await;
            let vp = credentials::present(&[privilege, consent], &clinician, &binding(), vp_format)
                .await
                .unwrap();
            let v = fed
                .verifier
                .verify_presentation(&vp, &binding())
                .await
                .unwrap_or_else(|e| panic!("{vp_format:?}/{vc_format:?}: {e}"));
            assert_eq!(v.holder, clinician.did());
            assert_eq!(v.credentials.len(), 2);
        }
    }
}

#[tokio::test]
async fn presentation_binding_failures_are_named() {
    let fed = federation().await;
    let clinician = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let other = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    for format in FORMATS {
        let (privilege, _) = privilege(&fed.office, clinician.did(), ProofFormat::Jwt).await;
        let vp = credentials::present(
            std::slice::from_ref(&privilege),
            &clinician,
            &binding(),
            format,
        )
        .await
        .unwrap();
        let wrong_challenge = PresentationBinding {
            challenge: "another".into(),
            ..binding()
        };
        let err = fed
            .verifier
            .verify_presentation(&vp, &wrong_challenge)
            .await
            .unwrap_err();
        assert_eq!(err.check, Check::Challenge, "{err}");
        let wrong_domain = PresentationBinding {
            domain: HOSPITAL_A.into(),
            ..binding()
        };
        let err = fed
            .verifier
            .verify_presentation(&vp, &wrong_domain)
            .await
            .unwrap_err();
        assert_eq!(err.check, Check::Domain, "{err}");

        // Someone else presents the clinician's privilege.
        let stolen = credentials::present(&[privilege], &other, &binding(), format)
            .await
            .unwrap();
        let err = fed
            .verifier
            .verify_presentation(&stolen, &binding())
            .await
            .unwrap_err();
        assert_eq!(err.check, Check::HolderBinding, "{err}");
        assert_eq!(err.credential, Some(0));

        // A forged privilege inside an honestly signed presentation.
        let (mut forged, _) =
            test_support::privilege(&fed.office, clinician.did(), ProofFormat::DataIntegrity).await;
        forged["credentialSubject"]["privileges"][0]["domains"] = json!(["clinical", "billing"]);
        let vp = credentials::present(&[forged], &clinician, &binding(), format)
            .await
            .unwrap();
        let err = fed
            .verifier
            .verify_presentation(&vp, &binding())
            .await
            .unwrap_err();
        assert_eq!(err.check, Check::Proof, "{err}");
        assert_eq!(err.credential, Some(0));
    }
}

#[tokio::test]
async fn consent_must_be_granted_to_the_holder() {
    let fed = federation().await;
    let clinician = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let patient = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let (privilege, _) = privilege(&fed.office, clinician.did(), ProofFormat::Jwt).await;
    // Granted to another clinician: refused.
    let consent =
        self_issued_consent(&patient, "did:key:z6MkotherClinician", ProofFormat::Jwt).await;
    let vp = credentials::present(
        &[privilege.clone(), consent],
        &clinician,
        &binding(),
        ProofFormat::Jwt,
    )
    .await
    .unwrap();
    let err = fed
        .verifier
        .verify_presentation(&vp, &binding())
        .await
        .unwrap_err();
    assert_eq!(err.check, Check::HolderBinding);
    assert_eq!(err.credential, Some(1));
    // Granted to the clinician's organization: accepted.
    let consent = self_issued_consent(&patient, HOSPITAL_A, ProofFormat::Jwt).await;
    let vp = credentials::present(
        &[privilege, consent],
        &clinician,
        &binding(),
        ProofFormat::Jwt,
    )
    .await
    .unwrap();
    fed.verifier
        .verify_presentation(&vp, &binding())
        .await
        .unwrap();
    // A consent for a patient issued by someone who is neither the patient nor trusted.
    let stranger = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let vc = credentials::unsigned_credential(
        CredentialKind::PatientConsent,
        stranger.did(),
        consent_subject(patient.did(), clinician.did()),
        Utc::now(),
        None,
        None,
    );
    let vc = credentials::issue(vc, &stranger, ProofFormat::Jwt)
        .await
        .unwrap();
    let err = fed.verifier.verify_credential(&vc).await.unwrap_err();
    assert_eq!(err.check, Check::IssuerTrust);
}

#[tokio::test]
async fn garbage_is_a_format_error() {
    let fed = federation().await;
    for input in [
        json!(42),
        json!("not.a.jwt.at.all"),
        json!({"type": "VerifiableCredential"}),
    ] {
        let err = fed.verifier.verify_credential(&input).await.unwrap_err();
        assert_eq!(err.check, Check::Format, "{input}: {err}");
    }
    let err = fed
        .verifier
        .verify_presentation(&json!([1, 2]), &binding())
        .await
        .unwrap_err();
    assert_eq!(err.check, Check::Format);
}

/// Verifying with whichever challenge a presentation answers returns that challenge and
/// what verifying with it given returns, in both formats; every other check is the same.
#[tokio::test]
async fn verifying_with_the_answered_challenge_returns_it() {
    let fed = federation().await;
    let clinician = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    for format in FORMATS {
        let (privilege, _) = privilege(&fed.office, clinician.did(), format).await;
        let vp = credentials::present(&[privilege], &clinician, &binding(), format)
            .await
            .unwrap();
        let given = fed
            .verifier
            .verify_presentation(&vp, &binding())
            .await
            .unwrap();
        let (answered, challenge) = fed
            .verifier
            .verify_presentation_answering(&vp, HOSPITAL_B)
            .await
            .unwrap();
        assert_eq!(challenge, binding().challenge, "{format:?}");
        assert_eq!(answered.holder, given.holder);
        assert_eq!(answered.format, format);
        assert_eq!(answered.checks, given.checks);
        assert_eq!(answered.credentials.len(), 1);
        // Another verifier's presentation fails `domain`, whatever its challenge.
        let err = fed
            .verifier
            .verify_presentation_answering(&vp, "did:web:elsewhere.test")
            .await
            .unwrap_err();
        assert_eq!(err.check, Check::Domain, "{format:?}: {err}");
    }
    // A signed presentation that answers no challenge fails `challenge`; a forged header
    // fails `proof`, as it does when the challenge is given.
    let (privilege, _) = privilege(&fed.office, clinician.did(), ProofFormat::Jwt).await;
    let vp = credentials::present(&[privilege], &clinician, &binding(), ProofFormat::Jwt)
        .await
        .unwrap();
    let (_, payload) = jws_parts(vp.as_str().unwrap());
    let kid = clinician.verification_method();
    let mut no_nonce: Value = serde_json::from_slice(&payload).unwrap();
    no_nonce.as_object_mut().unwrap().remove("nonce");
    let header = format!(r#"{{"alg":"EdDSA","kid":"{kid}","typ":"vp+jwt"}}"#);
    let jws = json!(sign_raw_jws(
        header.as_bytes(),
        &serde_json::to_vec(&no_nonce).unwrap(),
        &clinician
    ));
    let err = fed
        .verifier
        .verify_presentation_answering(&jws, HOSPITAL_B)
        .await
        .unwrap_err();
    assert_eq!(err.check, Check::Challenge, "{err}");
    assert!(err.to_string().contains("answers no challenge"), "{err}");
    let forged = json!(sign_raw_jws(
        &serde_json::to_vec(&json!({"alg": "none", "kid": kid, "typ": "vp+jwt"})).unwrap(),
        &payload,
        &clinician
    ));
    let err = fed
        .verifier
        .verify_presentation_answering(&forged, HOSPITAL_B)
        .await
        .unwrap_err();
    assert_eq!(err.check, Check::Proof, "{err}");
}

/// The challenge is read with the checks verification makes first: a presentation with a
/// hostile header is refused as `proof`, as verification refuses it, never as `challenge`
/// (which would log a forgery attempt as a replay).
#[tokio::test]
async fn reading_the_challenge_names_a_hostile_header_proof() {
    let fed = federation().await;
    let clinician = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let (privilege, _) = privilege(&fed.office, clinician.did(), ProofFormat::Jwt).await;
    let vp = credentials::present(&[privilege], &clinician, &binding(), ProofFormat::Jwt)
        .await
        .unwrap();
    assert_eq!(
        federation::verify::claimed_challenge(&vp).unwrap(),
        binding().challenge
    );
    let (_, payload) = jws_parts(vp.as_str().unwrap());
    let kid = clinician.verification_method();
    let jwk = serde_json::to_value(clinician.public_jwk()).unwrap();
    for header in [
        json!({"alg": "none", "kid": kid, "typ": "vp+jwt"}),
        json!({"alg": "HS256", "kid": kid, "typ": "vp+jwt"}),
        json!({"alg": "EdDSA", "kid": kid, "typ": "vp+jwt", "jwk": jwk}),
        json!({"alg": "EdDSA", "kid": kid, "typ": "vp+jwt", "jku": "https://evil.example/k"}),
        json!({"alg": "EdDSA", "kid": kid, "typ": "vp+jwt", "x5u": "https://evil.example/c"}),
        json!({"alg": "EdDSA", "kid": kid, "typ": "vp+jwt", "x5c": ["MIIB"]}),
        json!({"alg": "EdDSA", "kid": "../../../etc/passwd", "typ": "vp+jwt"}),
    ] {
        let jws = json!(sign_raw_jws(
            &serde_json::to_vec(&header).unwrap(),
            &payload,
            &clinician
        ));
        let early = federation::verify::claimed_challenge(&jws).unwrap_err();
        assert_eq!(early.check, Check::Proof, "{header}: {early}");
        let err = fed
            .verifier
            .verify_presentation(&jws, &binding())
            .await
            .unwrap_err();
        assert_eq!(err, early, "{header}");
    }
    // Malformed is `format`; well-formed without a challenge is `challenge`.
    for (malformed, check) in [
        (json!("not.a.jws"), Check::Format),
        (json!(42), Check::Format),
        (json!({"type": "VerifiablePresentation"}), Check::Format),
        (
            json!({"type": "VerifiablePresentation", "proof": [{}, {}]}),
            Check::Proof,
        ),
        (
            json!({"type": "VerifiablePresentation", "proof": {
                "type": "DataIntegrityProof", "cryptosuite": "eddsa-rdfc-2022",
                "proofPurpose": "authentication"}}),
            Check::Challenge,
        ),
    ] {
        let err = federation::verify::claimed_challenge(&malformed).unwrap_err();
        assert_eq!(err.check, check, "{malformed}: {err}");
    }
    let mut no_nonce: Value = serde_json::from_slice(&payload).unwrap();
    no_nonce.as_object_mut().unwrap().remove("nonce");
    let header = format!(r#"{{"alg":"EdDSA","kid":"{kid}","typ":"vp+jwt"}}"#);
    let jws = json!(sign_raw_jws(
        header.as_bytes(),
        &serde_json::to_vec(&no_nonce).unwrap(),
        &clinician
    ));
    let err = federation::verify::claimed_challenge(&jws).unwrap_err();
    assert_eq!(err.check, Check::Challenge, "{err}");
}
