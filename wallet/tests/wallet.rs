//! The wallet against the test federation (a credentialing office with a real status-list
//! server) and a stub gateway on loopback.

use std::path::Path;

use chrono::Utc;
use federation::credentials::{CredentialKind, Domain, Grantee, PatientIdentifier, ProofFormat};
use federation::keys::{KeyAlgorithm, KeyPair};
use federation::Check;
use serde_json::json;
use test_support::stub::{start_stub, Mode};
use test_support::*;
use wallet::{
    ConsentGrant, GatewayClient, PresentationRequest, Provision, StoredCredential, Wallet,
    WalletError,
};

const FORMATS: [ProofFormat; 2] = [ProofFormat::Jwt, ProofFormat::DataIntegrity];

fn request(format: ProofFormat) -> PresentationRequest {
    PresentationRequest {
        facility: HOSPITAL_B.into(),
        domain: Domain::Clinical,
        purpose: "TREAT".into(),
        patient: None,
        format,
    }
}

fn grant(grantee: &str, kind: &str, format: ProofFormat) -> ConsentGrant {
    ConsentGrant {
        patient_identifiers: vec![PatientIdentifier {
            custodian: HOSPITAL_B.into(),
            system: "urn:oid:2.16.840.1.113883.4.1".into(),
            value: "MRN-0001".into(),
        }],
        custodians: vec![HOSPITAL_B.into()],
        grantee: Grantee {
            id: grantee.into(),
            kind: kind.into(),
        },
        provision: Provision::Permit,
        domains: vec![Domain::Clinical],
        purposes: vec!["TREAT".into()],
        data_classes: vec!["Observation".into(), "Condition".into()],
        period_start: Utc::now() - chrono::Duration::days(1),
        period_end: Some(Utc::now() + chrono::Duration::days(365)),
        format,
    }
}

fn ids(list: &[StoredCredential]) -> Vec<String> {
    list.iter().map(|c| c.id.clone()).collect()
}

fn new_wallet(dir: &Path, alg: KeyAlgorithm) -> Wallet {
    Wallet::init(dir, alg).unwrap()
}

#[tokio::test]
async fn import_then_present_to_a_gateway_in_both_formats() {
    let fed = federation().await;
    let stub = start_stub(&fed).await;
    let gateway = stub.client();
    for alg in [KeyAlgorithm::Ed25519, KeyAlgorithm::P256] {
        let dir = tempfile::tempdir().unwrap();
        let wallet = new_wallet(dir.path(), alg);
        for vc_format in FORMATS {
            let (vc, _) = privilege(&fed.office, wallet.did(), vc_format).await;
            let stored = wallet.import(vc, &fed.verifier).await.unwrap();
            assert_eq!(stored.kind, CredentialKind::ClinicianPrivilege);
            assert_eq!(stored.format, vc_format);
            assert_eq!(stored.subject, wallet.did());
            assert!(stored.summary.contains(HOSPITAL_B), "{}", stored.summary);
            for vp_format in FORMATS {
                let vp = wallet.present(&request(vp_format), &gateway).await.unwrap();
                assert_eq!(vp.is_string(), vp_format == ProofFormat::Jwt);
                let verified = fed
                    .verifier
                    .verify_presentation(&vp, &stub.binding())
                    .await
                    .unwrap_or_else(|e| panic!("{alg}/{vc_format:?}/{vp_format:?}: {e}"));
                assert_eq!(verified.holder, wallet.did());
                assert_eq!(verified.credentials.len(), 1);
                assert_eq!(
                    verified.credentials[0].kind,
                    CredentialKind::ClinicianPrivilege
                );
            }
        }
        assert_eq!(wallet.list().unwrap().len(), 2);
    }
}

#[tokio::test]
async fn a_patients_consent_travels_in_the_clinicians_presentation() {
    let fed = federation().await;
    let stub = start_stub(&fed).await;
    let gateway = stub.client();
    let (pdir, cdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let patient = new_wallet(pdir.path(), KeyAlgorithm::P256);
    let clinician = new_wallet(cdir.path(), KeyAlgorithm::Ed25519);
    let (vc, _) = privilege(&fed.office, clinician.did(), ProofFormat::Jwt).await;
    clinician.import(vc, &fed.verifier).await.unwrap();

    for format in FORMATS {
        let consent = patient
            .consent_grant(grant(clinician.did(), "clinician", format))
            .await
            .unwrap();
        assert_eq!(consent.is_string(), format == ProofFormat::Jwt);
        let verified = fed.verifier.verify_credential(&consent).await.unwrap();
        assert_eq!(verified.kind, CredentialKind::PatientConsent);
        assert_eq!(verified.issuer, patient.did());
        assert_eq!(verified.subject["id"], patient.did());
        assert_eq!(verified.subject["grantee"]["id"], clinician.did());
        assert!(patient
            .consent_list()
            .unwrap()
            .iter()
            .any(|c| c.credential == consent));

        clinician.import(consent, &fed.verifier).await.unwrap();
        let mut req = request(format);
        req.patient = Some(patient.did().to_string());
        let vp = clinician.present(&req, &gateway).await.unwrap();
        let verified = fed
            .verifier
            .verify_presentation(&vp, &stub.binding())
            .await
            .unwrap();
        assert_eq!(verified.holder, clinician.did());
        assert_eq!(
            verified.of_kind(CredentialKind::PatientConsent).count(),
            if format == ProofFormat::Jwt { 1 } else { 2 },
            "every consent of the patient that fits is presented"
        );
        assert_eq!(
            verified.of_kind(CredentialKind::ClinicianPrivilege).count(),
            1
        );
    }

    // A purpose the consents do not cover.
    let mut req = request(ProofFormat::Jwt);
    req.patient = Some(patient.did().to_string());
    req.purpose = "HPAYMT".into();
    let err = clinician.present(&req, &gateway).await.unwrap_err();
    assert!(
        matches!(err, WalletError::NoMatchingConsent { ref purpose, .. } if purpose == "HPAYMT"),
        "{err}"
    );

    // Granted to the clinician's organization: importable and presentable only because the
    // wallet holds a privilege of that organization.
    let org_consent = patient
        .consent_grant(grant(HOSPITAL_A, "organization", ProofFormat::Jwt))
        .await
        .unwrap();
    let edir = tempfile::tempdir().unwrap();
    let empty = new_wallet(edir.path(), KeyAlgorithm::Ed25519);
    let err = empty
        .import(org_consent.clone(), &fed.verifier)
        .await
        .unwrap_err();
    assert!(matches!(err, WalletError::NotAddressed(_)), "{err}");
    clinician.import(org_consent, &fed.verifier).await.unwrap();
    let mut req = request(ProofFormat::DataIntegrity);
    req.patient = Some(patient.did().to_string());
    let vp = clinician.present(&req, &gateway).await.unwrap();
    let verified = fed
        .verifier
        .verify_presentation(&vp, &stub.binding())
        .await
        .unwrap();
    assert_eq!(verified.of_kind(CredentialKind::PatientConsent).count(), 3);
}

#[tokio::test]
async fn refused_imports_name_the_reason_and_write_nothing() {
    let fed = federation().await;
    let dir = tempfile::tempdir().unwrap();
    let wallet = new_wallet(dir.path(), KeyAlgorithm::Ed25519);
    let (vc, _) = privilege(&fed.office, wallet.did(), ProofFormat::Jwt).await;
    wallet.import(vc.clone(), &fed.verifier).await.unwrap();
    // The same credential again changes nothing.
    wallet.import(vc, &fed.verifier).await.unwrap();
    let before = ids(&wallet.list().unwrap());
    assert_eq!(before.len(), 1);

    for garbage in [
        json!("garbage"),
        json!("a.b.c"),
        json!(42),
        json!(null),
        json!([1, 2]),
        json!({"type": "VerifiableCredential"}),
    ] {
        let err = wallet
            .import(garbage.clone(), &fed.verifier)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, WalletError::Rejected(e) if e.check == Check::Format),
            "{garbage}: {err}"
        );
        assert!(err.to_string().contains("check format failed"), "{err}");
    }

    let someone_else = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    for format in FORMATS {
        let (theirs, _) = privilege(&fed.office, someone_else.did(), format).await;
        let err = wallet.import(theirs, &fed.verifier).await.unwrap_err();
        assert!(matches!(err, WalletError::NotAddressed(_)), "{err}");
        assert!(err.to_string().contains(someone_else.did()), "{err}");

        let (revoked, status) = privilege(&fed.office, wallet.did(), format).await;
        fed.office.revoke(&status);
        fed.verifier
            .status
            .invalidate(&status.status_list_credential);
        let err = wallet.import(revoked, &fed.verifier).await.unwrap_err();
        assert!(
            matches!(&err, WalletError::Rejected(e) if e.check == Check::Status),
            "{err}"
        );
        assert!(err.to_string().contains("revoked"), "{err}");

        let (rogue, _) = privilege(&fed.other_office, wallet.did(), format).await;
        let err = wallet.import(rogue, &fed.verifier).await.unwrap_err();
        assert!(
            matches!(&err, WalletError::Rejected(e) if e.check == Check::IssuerTrust),
            "{err}"
        );
    }
    // A study for another sponsor.
    let study = federation::credentials::unsigned_credential(
        CredentialKind::ResearchStudy,
        fed.irb.key.did(),
        study_subject("did:web:research.test"),
        Utc::now(),
        Some(Utc::now() + chrono::Duration::days(90)),
        None,
    );
    let study = federation::credentials::issue(study, &fed.irb.key, ProofFormat::Jwt)
        .await
        .unwrap();
    let err = wallet.import(study, &fed.verifier).await.unwrap_err();
    assert!(err.to_string().contains("sponsored by"), "{err}");

    assert_eq!(ids(&wallet.list().unwrap()), before);
}

#[tokio::test]
async fn presenting_when_nothing_fits_is_refused_without_asking_the_gateway() {
    let fed = federation().await;
    let stub = start_stub(&fed).await;
    let gateway = stub.client();
    let dir = tempfile::tempdir().unwrap();
    let wallet = new_wallet(dir.path(), KeyAlgorithm::Ed25519);

    let err = wallet
        .present(&request(ProofFormat::Jwt), &gateway)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, WalletError::NoMatchingPrivilege { facility, domain }
            if facility == HOSPITAL_B && domain == "clinical"),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        !message.contains('\n') && message.contains("import"),
        "{message}"
    );

    let (vc, _) = privilege(&fed.office, wallet.did(), ProofFormat::Jwt).await;
    wallet.import(vc, &fed.verifier).await.unwrap();
    let mut other_facility = request(ProofFormat::Jwt);
    other_facility.facility = HOSPITAL_A.into();
    let mut billing = request(ProofFormat::Jwt);
    billing.domain = Domain::Billing;
    for req in [other_facility, billing] {
        let err = wallet.present(&req, &gateway).await.unwrap_err();
        assert!(
            matches!(err, WalletError::NoMatchingPrivilege { .. }),
            "{err}"
        );
    }
    let mut research = request(ProofFormat::Jwt);
    research.domain = Domain::Research;
    research.purpose = "HRESCH".into();
    let err = wallet.present(&research, &gateway).await.unwrap_err();
    assert!(matches!(err, WalletError::NoMatchingStudy { .. }), "{err}");

    let mut for_patient = request(ProofFormat::Jwt);
    for_patient.patient = Some("did:key:z6MkpatientWithoutConsent".into());
    let err = wallet.present(&for_patient, &gateway).await.unwrap_err();
    assert!(
        matches!(err, WalletError::NoMatchingConsent { .. }),
        "{err}"
    );

    let mut not_a_did = request(ProofFormat::Jwt);
    not_a_did.facility = "hospital-b".into();
    let err = wallet.present(&not_a_did, &gateway).await.unwrap_err();
    assert!(matches!(err, WalletError::InvalidRequest(_)), "{err}");

    assert_eq!(stub.challenges_issued(), 0);
}

#[tokio::test]
async fn a_research_network_presents_its_study() {
    let fed = federation().await;
    let stub = start_stub(&fed).await;
    let dir = tempfile::tempdir().unwrap();
    let network = new_wallet(dir.path(), KeyAlgorithm::Ed25519);
    let study = federation::credentials::unsigned_credential(
        CredentialKind::ResearchStudy,
        fed.irb.key.did(),
        study_subject(network.did()),
        Utc::now() - chrono::Duration::minutes(1),
        Some(Utc::now() + chrono::Duration::days(90)),
        None,
    );
    let study = federation::credentials::issue(study, &fed.irb.key, ProofFormat::DataIntegrity)
        .await
        .unwrap();
    network.import(study, &fed.verifier).await.unwrap();
    let mut req = request(ProofFormat::Jwt);
    req.domain = Domain::Research;
    req.purpose = "HRESCH".into();
    let vp = network.present(&req, &stub.client()).await.unwrap();
    let verified = fed
        .verifier
        .verify_presentation(&vp, &stub.binding())
        .await
        .unwrap();
    assert_eq!(verified.of_kind(CredentialKind::ResearchStudy).count(), 1);
}

#[tokio::test]
async fn unusable_gateway_answers_are_errors_and_nothing_is_signed() {
    let fed = federation().await;
    let stub = start_stub(&fed).await;
    let gateway = stub.client();
    let dir = tempfile::tempdir().unwrap();
    let wallet = new_wallet(dir.path(), KeyAlgorithm::Ed25519);
    let (vc, _) = privilege(&fed.office, wallet.did(), ProofFormat::Jwt).await;
    wallet.import(vc, &fed.verifier).await.unwrap();

    for mode in [Mode::ShortChallenge, Mode::BadCharacters, Mode::NotADid] {
        stub.set_mode(mode);
        let err = wallet
            .present(&request(ProofFormat::Jwt), &gateway)
            .await
            .unwrap_err();
        assert!(
            matches!(err, WalletError::BadChallenge(_)),
            "{mode:?}: {err}"
        );
        assert!(err.to_string().contains("nothing was signed"), "{err}");
    }

    stub.set_mode(Mode::OtherDomain);
    let err = wallet
        .present(&request(ProofFormat::DataIntegrity), &gateway)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, WalletError::WrongGateway { expected, got }
            if expected == HOSPITAL_B && got == HOSPITAL_A),
        "{err}"
    );

    stub.set_mode(Mode::Problem);
    let err = wallet
        .present(&request(ProofFormat::Jwt), &gateway)
        .await
        .unwrap_err();
    match &err {
        WalletError::GatewayError {
            status,
            title,
            detail,
        } => {
            assert_eq!(*status, 503);
            assert_eq!(title, "Service Unavailable");
            assert_eq!(detail, "down for maintenance");
        }
        other => panic!("{other}"),
    }

    stub.set_mode(Mode::Garbage);
    let err = wallet
        .present(&request(ProofFormat::Jwt), &gateway)
        .await
        .unwrap_err();
    assert!(matches!(err, WalletError::GatewayProtocol { .. }), "{err}");

    // Nobody listening.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let nowhere = GatewayClient::new(
        reqwest::Url::parse(&format!("http://{closed}/")).unwrap(),
        true,
    )
    .unwrap();
    let err = wallet
        .present(&request(ProofFormat::Jwt), &nowhere)
        .await
        .unwrap_err();
    assert!(
        matches!(err, WalletError::GatewayUnreachable { .. }),
        "{err}"
    );
    assert!(stub.state.registered.lock().unwrap().is_empty());
}

#[tokio::test]
async fn the_store_survives_reopening_and_the_key_stays_private() {
    let fed = federation().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wallet");
    let did = {
        let wallet = new_wallet(&path, KeyAlgorithm::Ed25519);
        let (vc, _) = privilege(&fed.office, wallet.did(), ProofFormat::DataIntegrity).await;
        wallet.import(vc, &fed.verifier).await.unwrap();
        wallet.did().to_string()
    };
    let wallet = Wallet::open(&path).unwrap();
    assert_eq!(wallet.did(), did);
    let list = wallet.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(wallet.show(&list[0].id).unwrap(), list[0]);
    drop(wallet);

    let err = Wallet::init(&path, KeyAlgorithm::Ed25519).unwrap_err();
    assert!(err.to_string().contains("already"), "{err}");
    let err = Wallet::open(&dir.path().join("nothing-here")).unwrap_err();
    assert!(matches!(err, WalletError::NotInitialized { .. }), "{err}");

    // A store is never used with another wallet's key.
    let other = dir.path().join("other");
    drop(new_wallet(&other, KeyAlgorithm::Ed25519));
    let key_file = wallet::holder::KEY_FILE;
    std::fs::remove_file(other.join(key_file)).unwrap();
    std::fs::copy(path.join(key_file), other.join(key_file)).unwrap();
    let err = Wallet::open(&other).unwrap_err();
    assert!(matches!(err, WalletError::HolderMismatch { .. }), "{err}");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let key = path.join(wallet::holder::KEY_FILE);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&path), 0o700);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Wallet::open(&path).unwrap_err();
        assert!(matches!(err, WalletError::Key(_)), "{err}");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }
}

#[test]
fn the_store_is_one_file_in_the_wallet_folder_and_a_second_opener_is_told_it_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wallet");
    let wallet = new_wallet(&path, KeyAlgorithm::Ed25519);
    assert!(path.join(wallet::holder::STORE_FILE).is_file());
    let err = Wallet::open(&path).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, WalletError::Database(_)), "{message}");
    assert!(message.contains(wallet::holder::STORE_FILE), "{message}");
    assert!(!message.contains('\n'), "{message}");
    // The file is closed with the last handle: it opens again at once.
    drop(wallet);
    Wallet::open(&path).unwrap();
}

#[test]
fn an_earlier_sled_store_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wallet");
    drop(new_wallet(&path, KeyAlgorithm::Ed25519));
    // An earlier fedgate's wallet: the key and a sled folder `store/`.
    std::fs::remove_file(path.join(wallet::holder::STORE_FILE)).unwrap();
    let legacy = path.join("store");
    std::fs::create_dir(&legacy).unwrap();
    std::fs::write(legacy.join("db"), b"sled").unwrap();
    let err = Wallet::open(&path).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, WalletError::EarlierStore { .. }), "{message}");
    assert!(message.contains(&legacy.display().to_string()), "{message}");
    assert!(!message.contains('\n'), "{message}");
    assert!(!path.join(wallet::holder::STORE_FILE).exists());
    // Nor is a new wallet made over it.
    std::fs::remove_file(path.join(wallet::holder::KEY_FILE)).unwrap();
    let err = Wallet::init(&path, KeyAlgorithm::Ed25519).unwrap_err();
    assert!(err.to_string().contains("already"), "{err}");
    assert!(!path.join(wallet::holder::KEY_FILE).exists());
}

#[tokio::test]
async fn remove_and_show() {
    let fed = federation().await;
    let dir = tempfile::tempdir().unwrap();
    let wallet = new_wallet(dir.path(), KeyAlgorithm::Ed25519);
    let (vc, _) = privilege(&fed.office, wallet.did(), ProofFormat::Jwt).await;
    let stored = wallet.import(vc, &fed.verifier).await.unwrap();
    assert!(stored.id.starts_with("urn:uuid:"));
    wallet.remove(&stored.id).unwrap();
    assert!(matches!(
        wallet.remove(&stored.id),
        Err(WalletError::NotFound { .. })
    ));
    assert!(matches!(
        wallet.show(&stored.id),
        Err(WalletError::NotFound { .. })
    ));
    assert!(wallet.list().unwrap().is_empty());
}

#[tokio::test]
async fn consents_are_registered_and_withdrawn_at_the_custodian() {
    let fed = federation().await;
    let stub = start_stub(&fed).await;
    let gateway = stub.client();
    let dir = tempfile::tempdir().unwrap();
    let patient = new_wallet(dir.path(), KeyAlgorithm::Ed25519);
    let clinician = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();

    for format in FORMATS {
        patient
            .consent_grant(grant(clinician.did(), "clinician", format))
            .await
            .unwrap();
    }
    let consents = patient.consent_list().unwrap();
    assert_eq!(consents.len(), 2);
    for consent in &consents {
        let id = consent.id.as_str();
        let answer = patient.consent_register(id, &gateway).await.unwrap();
        assert_eq!(answer["holder"], patient.did());
        assert_eq!(patient.show(id).unwrap().registered_with, vec![HOSPITAL_B]);

        // A gateway that refuses: nothing changes locally.
        stub.set_mode(Mode::RefuseConsents);
        let err = patient.consent_withdraw(id, &gateway).await.unwrap_err();
        assert!(
            matches!(err, WalletError::GatewayError { status: 409, .. }),
            "{err}"
        );
        assert!(!patient.show(id).unwrap().withdrawn);
        // A gateway that is not a custodian of the consent learns nothing.
        stub.set_mode(Mode::OtherDomain);
        let err = patient.consent_withdraw(id, &gateway).await.unwrap_err();
        assert!(matches!(err, WalletError::NotACustodian { .. }), "{err}");
        stub.set_mode(Mode::Good);

        patient.consent_withdraw(id, &gateway).await.unwrap();
        let record = patient.show(id).unwrap();
        assert!(record.withdrawn && record.withdrawn_at.is_some());
        assert_eq!(record.withdrawal_sent_to, vec![HOSPITAL_B]);
        let err = patient.consent_register(id, &gateway).await.unwrap_err();
        assert!(matches!(err, WalletError::Withdrawn { .. }), "{err}");
    }
    for list in [&stub.state.registered, &stub.state.withdrawn] {
        let accepted = list.lock().unwrap();
        assert_eq!(accepted.len(), 2);
        for a in accepted.iter() {
            assert_eq!(a.holder, patient.did());
            assert_eq!(a.kinds, vec![CredentialKind::PatientConsent]);
        }
    }
    let json = serde_json::to_value(patient.show(&consents[0].id).unwrap()).unwrap();
    assert_eq!(json["withdrawn"], true);
}

#[tokio::test]
async fn only_the_patient_registers_or_withdraws_a_consent() {
    let fed = federation().await;
    let stub = start_stub(&fed).await;
    let gateway = stub.client();
    let (pdir, cdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let patient = new_wallet(pdir.path(), KeyAlgorithm::Ed25519);
    let clinician = new_wallet(cdir.path(), KeyAlgorithm::Ed25519);
    let consent = patient
        .consent_grant(grant(clinician.did(), "clinician", ProofFormat::Jwt))
        .await
        .unwrap();
    let stored = clinician.import(consent, &fed.verifier).await.unwrap();
    let err = clinician
        .consent_withdraw(&stored.id, &gateway)
        .await
        .unwrap_err();
    assert!(matches!(err, WalletError::NotOwnConsent { .. }), "{err}");

    let (vc, _) = privilege(&fed.office, clinician.did(), ProofFormat::Jwt).await;
    let privilege = clinician.import(vc, &fed.verifier).await.unwrap();
    let err = clinician
        .consent_register(&privilege.id, &gateway)
        .await
        .unwrap_err();
    assert!(matches!(err, WalletError::NotAConsent { .. }), "{err}");
    assert_eq!(stub.challenges_issued(), 0);

    // Terms the schema refuses are named before anything is stored.
    let mut bad = grant(clinician.did(), "clinician", ProofFormat::Jwt);
    bad.data_classes = vec!["*".into()];
    let err = patient.consent_grant(bad).await.unwrap_err();
    assert!(matches!(err, WalletError::InvalidConsent(_)), "{err}");
    let mut ended = grant(clinician.did(), "clinician", ProofFormat::Jwt);
    ended.period_end = Some(Utc::now() - chrono::Duration::days(1));
    assert!(matches!(
        patient.consent_grant(ended).await,
        Err(WalletError::InvalidConsent(_))
    ));
    assert_eq!(patient.consent_list().unwrap().len(), 1);
}

/// A consent in the wallet reads as a FHIR R4 Consent in both proof formats, and maps back
/// to the same terms; a credential that is not a consent is refused by name.
#[tokio::test]
async fn a_consent_reads_as_a_fhir_consent_in_both_formats() {
    let dir = tempfile::tempdir().unwrap();
    let patient = new_wallet(dir.path(), KeyAlgorithm::Ed25519);
    for format in [ProofFormat::DataIntegrity, ProofFormat::Jwt] {
        let credential = patient
            .consent_grant(grant("did:web:hospital-a.example", "organization", format))
            .await
            .unwrap();
        let stored = patient
            .consent_list()
            .unwrap()
            .into_iter()
            .find(|c| c.credential == credential)
            .unwrap();
        let fhir = patient.consent_fhir(&stored.id).unwrap();
        assert_eq!(fhir["resourceType"], "Consent", "{fhir}");
        assert_eq!(fhir["status"], "active", "{fhir}");
        assert_eq!(fhir["provision"]["type"], "permit", "{fhir}");
        let subject = federation::fhir_consent::fhir_to_consent_subject(&fhir).unwrap();
        assert_eq!(subject["provision"], "permit");
        assert_eq!(subject["grantee"]["id"], "did:web:hospital-a.example");
        assert_eq!(subject["domains"], json!(["clinical"]));
        assert_eq!(subject["purposes"], json!(["TREAT"]));
        assert_eq!(subject["dataClasses"], json!(["Observation", "Condition"]));
    }
    let err = patient.consent_fhir("urn:uuid:not-here").unwrap_err();
    assert!(err.to_string().contains("no credential"), "{err}");
}

/// An SD-JWT VC is imported after verification, kept in its compact form, and presented
/// alone with chosen claims and a key binding JWT; it never goes into a signed
/// presentation, and other formats are not presented as SD-JWT VCs.
#[tokio::test]
async fn an_sd_jwt_vc_is_stored_compact_and_presented_with_chosen_claims() {
    let fed = federation().await;
    let stub = start_stub(&fed).await;
    let gateway = stub.client();
    let dir = tempfile::tempdir().unwrap();
    let wallet = new_wallet(dir.path(), KeyAlgorithm::P256);
    let (vc, status) = privilege(&fed.office, wallet.did(), ProofFormat::SdJwt).await;
    let compact = vc.as_str().unwrap().to_string();
    let stored = wallet.import(vc, &fed.verifier).await.unwrap();
    assert_eq!(stored.format, ProofFormat::SdJwt);
    assert_eq!(stored.credential, json!(compact));
    assert_eq!(stored.subject, wallet.did());
    assert!(stored.summary.contains(HOSPITAL_B), "{}", stored.summary);
    // Reopened, it is the same compact SD-JWT.
    drop(wallet);
    let wallet = Wallet::open(dir.path()).unwrap();
    assert_eq!(wallet.show(&stored.id).unwrap().credential, json!(compact));

    let aud = "decentralized_identifier:did:web:hospital-b.test";
    let paths = vec![
        vec![json!("organization")],
        vec![json!("privileges"), json!(null)],
    ];
    let presented = wallet
        .present_sd_jwt(&stored.id, &paths, aud, "nonce-42")
        .unwrap();
    let verified = fed
        .verifier
        .verify_sd_jwt_presentation(&presented, aud, "nonce-42")
        .await
        .unwrap();
    assert_eq!(verified.holder.as_deref(), Some(wallet.did()));
    assert_eq!(verified.subject["organization"], HOSPITAL_A);
    assert!(verified.subject.get("npi").is_none());
    assert!(verified.subject.get("name").is_none());
    // Another nonce at the verifier: refused.
    let e = fed
        .verifier
        .verify_sd_jwt_presentation(&presented, aud, "nonce-43")
        .await
        .unwrap_err();
    assert_eq!(e.check, Check::Challenge);
    // A claim the credential does not hold.
    let err = wallet
        .present_sd_jwt(&stored.id, &[vec![json!("nope")]], aud, "n")
        .unwrap_err();
    assert!(matches!(err, WalletError::SdJwt(_)), "{err}");
    // Never in a signed presentation: nothing else fits, so nothing is asked of the gateway.
    let err = wallet
        .present(&request(ProofFormat::Jwt), &gateway)
        .await
        .unwrap_err();
    assert!(
        matches!(err, WalletError::NoMatchingPrivilege { .. }),
        "{err}"
    );
    // A JWT credential is not presented as an SD-JWT VC.
    let (jwt, _) = privilege(&fed.office, wallet.did(), ProofFormat::Jwt).await;
    let jwt = wallet.import(jwt, &fed.verifier).await.unwrap();
    let err = wallet
        .present_sd_jwt(&jwt.id, &paths, aud, "n")
        .unwrap_err();
    assert!(matches!(err, WalletError::NotSdJwt { .. }), "{err}");
    // Revoked at the office: the import of it is refused from then on.
    fed.office.revoke(&status);
    fed.verifier
        .status
        .invalidate(&format!("{}status/revocation", fed.office.base));
    let other = tempfile::tempdir().unwrap();
    let other_wallet = new_wallet(other.path(), KeyAlgorithm::Ed25519);
    let e = other_wallet
        .import(json!(compact), &fed.verifier)
        .await
        .unwrap_err();
    assert!(matches!(e, WalletError::Rejected(_)), "{e}");
}
