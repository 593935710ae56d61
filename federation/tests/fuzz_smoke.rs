//! A short run of each fuzz target inside `cargo test`: the bodies in
//! `test_support::fuzzing` (the same ones the cargo-fuzz targets in `fuzz` call)
//! over the committed seed corpus and a few thousand seeded mutations of each seed. Every
//! seed must give the outcome its file name states, and no input may make a body panic.
//!
//! The corpus is made with the project's own code:
//! `cargo test -p federation --test fuzz_smoke -- --ignored write_corpus` rewrites it.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use chrono::{TimeZone, Utc};
use federation::checkpoint::Checkpoint;
use federation::credentials::{self, CredentialKind, ProofFormat, StatusEntry};
use federation::keys::{KeyAlgorithm, KeyPair};
use federation::log::{empty_root, leaf_hash, node_hash, split_point, Hash};
use federation::registry::{
    Contract, Endpoints, Manifest, Member, Role, SignedManifest, VisibilityService,
};
use federation::status::Bitstring;
use serde_json::{json, Value};
use test_support::fuzzing::{self, binding, CHALLENGE, LOG_NAME};

/// Mutations per seed. Each body runs real signature checks, and debug builds of the
/// curve arithmetic take milliseconds per verification: the counts keep every target near
/// a second or two (cargo-fuzz, in `.ci/fuzz`, is where volume comes from).
const CHEAP: usize = 1000;
const SIGNED: usize = 250;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn smoke(target: &str, per_seed: usize, body: fn(&[u8]) -> fuzzing::Outcome) {
    let ran = fuzzing::smoke(target, &corpus_dir(target), per_seed, body);
    eprintln!("{target}: {ran} inputs");
}

#[test]
fn jwt() {
    smoke("jwt", CHEAP, fuzzing::jwt);
}

#[test]
fn checkpoint() {
    smoke("checkpoint", SIGNED, fuzzing::checkpoint);
}

#[test]
fn manifest() {
    smoke("manifest", SIGNED, fuzzing::manifest);
}

#[test]
fn credential() {
    smoke("credential", SIGNED, fuzzing::credential);
}

#[test]
fn presentation() {
    smoke("presentation", SIGNED, fuzzing::presentation);
}

#[test]
fn mutations_are_reproducible() {
    let seed = b"eyJhbGciOiJFZERTQSJ9.eyJhIjoxfQ.AAAA".as_slice();
    let run = |s| {
        let mut m = fuzzing::Mutator::new(s);
        (0..50).map(|_| m.mutate(seed, &[seed])).collect::<Vec<_>>()
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
    assert!(run(7).iter().any(|m| m.as_slice() != seed));
}

// ---------------------------------------------------------------------------------------
// Writing the corpus
// ---------------------------------------------------------------------------------------

fn write_seed(target: &str, name: &str, bytes: &[u8]) {
    let dir = corpus_dir(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn write_json(target: &str, name: &str, value: &Value) {
    match value {
        // A compact JWS is stored bare, as a wallet hands it over.
        Value::String(s) => write_seed(target, name, s.as_bytes()),
        other => write_seed(target, name, &serde_json::to_vec(other).unwrap()),
    }
}

/// 2100-01-01T00:00:00Z: far enough that the committed seeds stay valid.
fn far_future() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2100, 1, 1, 0, 0, 0).unwrap()
}

/// A presentation as `credentials::present` makes it; a JWT one re-signed with an `exp`
/// of [`far_future`] instead of five minutes, so that it does not expire in the corpus.
async fn present(credentials: &[Value], holder: &KeyPair, format: ProofFormat) -> Value {
    let vp = credentials::present(credentials, holder, &binding(), format)
        .await
        .unwrap();
    let Value::String(jwt) = &vp else {
        return vp;
    };
    let mut payload = federation::jose::decode(jwt).unwrap().payload;
    payload["exp"] = json!(far_future().timestamp());
    Value::String(federation::jose::sign(&payload, holder, "vp+jwt").unwrap())
}

async fn issue(
    kind: CredentialKind,
    issuer: &KeyPair,
    subject: Value,
    status: Option<&StatusEntry>,
    format: ProofFormat,
) -> Value {
    let vc = credentials::unsigned_credential(
        kind,
        issuer.did(),
        subject,
        Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap(),
        Some(far_future()),
        status,
    );
    credentials::issue(vc, issuer, format).await.unwrap()
}

fn consent_subject(patient: &str, grantee: &str, kind: &str) -> Value {
    json!({
        "id": patient,
        "patientIdentifiers": [{"custodian": "did:web:hospital-a.fuzz.example", "system": "urn:oid:2.16.840.1.113883.4.1", "value": "MRN-0001"}],
        "custodians": ["did:web:hospital-a.fuzz.example"],
        "grantee": {"id": grantee, "kind": kind},
        "provision": "permit",
        "domains": ["clinical", "research"],
        "purposes": ["TREAT", "HRESCH"],
        "dataClasses": ["Observation", "Condition"],
        "period": {"start": "2025-01-01T00:00:00Z", "end": "2099-01-01T00:00:00Z"}
    })
}

const STUDY: &str = "urn:fedgate:study:fuzz-outcomes";

fn study_subject(sponsor: &str) -> Value {
    json!({
        "id": STUDY,
        "title": "HbA1c outcomes",
        "sponsor": sponsor,
        "irb": "IRB-2025-0042",
        "purposes": ["HRESCH"],
        "dataClasses": ["Condition", "Observation"],
        "aggregateOnly": true,
        "minCellSize": 11
    })
}

fn privilege_subject(clinician: &str) -> Value {
    json!({
        "id": clinician,
        "name": "Dr. Fuzz Example",
        "npi": "1234567893",
        "role": "physician",
        "specialty": "207R00000X",
        "organization": "did:web:hospital-b.fuzz.example",
        "privileges": [{"facility": "did:web:hospital-a.fuzz.example", "domains": ["clinical"], "actions": ["read"]}]
    })
}

/// The governance key with this seed, through a key file: the only way in from outside
/// the key module, and the format services load their keys from.
fn governance_key(seed: &[u8; 32], dir: &Path) -> KeyPair {
    let vm = fuzzing::did_key_method(seed);
    let did = vm.split('#').next().unwrap();
    let signing = ed25519_dalek::SigningKey::from_bytes(seed);
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let file = json!({
        "did": did,
        "verificationMethod": vm,
        "algorithm": "Ed25519",
        "created": "2025-01-01T00:00:00Z",
        "purpose": "governance",
        "privateJwk": {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": b64(signing.verifying_key().as_bytes()),
            "d": b64(signing.as_bytes()),
        }
    });
    let path = dir.join(format!("{}.key.json", hex::encode(&seed[..4])));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(
        &mut options.open(&path).unwrap(),
        &serde_json::to_vec(&file).unwrap(),
    )
    .unwrap();
    let key = KeyPair::load(&path).unwrap();
    assert_eq!(key.verification_method(), vm);
    key
}

fn fuzz_manifest() -> Manifest {
    let member = |host: &str, roles: Vec<Role>, gateway: bool| Member {
        did: format!("did:web:{host}"),
        name: host.to_string(),
        roles,
        endpoints: Endpoints {
            gateway: gateway.then(|| format!("https://{host}/")),
            ..Endpoints::default()
        },
        base_url: format!("https://{host}/"),
    };
    let mut m = Manifest::new("fuzz-federation", fuzzing::governance());
    m.issued_at = "2025-06-01T00:00:00Z".into();
    m.members = vec![
        member(
            "hospital-a.fuzz.example",
            vec![Role::Custodian, Role::Requester],
            true,
        ),
        member("hospital-b.fuzz.example", vec![Role::Requester], true),
        member(
            "office.fuzz.example",
            vec![Role::CredentialingOffice, Role::Auditor],
            false,
        ),
        member("visibility.fuzz.example", vec![Role::Visibility], false),
    ];
    m.trusted_issuers.insert(
        CredentialKind::ClinicianPrivilege,
        vec!["did:web:office.fuzz.example".into()],
    );
    m.contracts = vec![Contract {
        custodian: "did:web:hospital-a.fuzz.example".into(),
        requester: "did:web:hospital-b.fuzz.example".into(),
        domains: vec![credentials::Domain::Clinical],
        purposes: vec!["TREAT".into(), "ETREAT".into()],
        expires: Some("2099-01-01T00:00:00Z".into()),
    }];
    m.visibility = Some(VisibilityService {
        did: LOG_NAME.into(),
        endpoint: "https://visibility.fuzz.example/".into(),
    });
    m.validate(false).unwrap();
    m
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "rewrites the committed seed corpus"]
async fn write_corpus() {
    let patient = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let sponsor = KeyPair::generate_did_key(KeyAlgorithm::P256).unwrap();
    let irb = KeyPair::generate_did_key(KeyAlgorithm::P256).unwrap();
    let office = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let clinician = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let (jwt, di) = (ProofFormat::Jwt, ProofFormat::DataIntegrity);
    let consent = |grantee: &str, kind: &str| consent_subject(patient.did(), grantee, kind);

    // Credentials: self-issued consents and an IRB's study are accepted; a privilege is
    // refused at `status`, since no status list origin is registered here.
    let consent_jwt = issue(
        CredentialKind::PatientConsent,
        &patient,
        consent(patient.did(), "clinician"),
        None,
        jwt,
    )
    .await;
    let consent_di = issue(
        CredentialKind::PatientConsent,
        &patient,
        consent(patient.did(), "clinician"),
        None,
        di,
    )
    .await;
    let study_jwt = issue(
        CredentialKind::ResearchStudy,
        &irb,
        study_subject(sponsor.did()),
        None,
        jwt,
    )
    .await;
    let study_di = issue(
        CredentialKind::ResearchStudy,
        &irb,
        study_subject(sponsor.did()),
        None,
        di,
    )
    .await;
    let study_consent = issue(
        CredentialKind::PatientConsent,
        &patient,
        consent(STUDY, "study"),
        None,
        jwt,
    )
    .await;
    let list_url = "https://office.fuzz.example/status/revocation";
    let privilege_jwt = issue(
        CredentialKind::ClinicianPrivilege,
        &office,
        privilege_subject(clinician.did()),
        Some(&StatusEntry::revocation(list_url, 42)),
        jwt,
    )
    .await;
    let clinician_consent = issue(
        CredentialKind::PatientConsent,
        &patient,
        consent(clinician.did(), "clinician"),
        None,
        jwt,
    )
    .await;
    write_json("credential", "ok-consent-vc-jwt-ed25519", &consent_jwt);
    write_json("credential", "ok-consent-data-integrity-eddsa", &consent_di);
    write_json("credential", "ok-study-vc-jwt-es256", &study_jwt);
    write_json("credential", "ok-study-data-integrity-ecdsa", &study_di);
    write_json(
        "credential",
        "ok-study-enveloped",
        &credentials::embed_credential(&study_jwt),
    );
    write_json(
        "credential",
        "rejected-status-privilege-vc-jwt",
        &privilege_jwt,
    );

    // Presentations bound to the fuzz verifier's challenge and DID.
    let vp_patient_jwt = present(std::slice::from_ref(&consent_jwt), &patient, jwt).await;
    let vp_patient_di = present(std::slice::from_ref(&consent_di), &patient, di).await;
    let vp_research = present(&[study_jwt.clone(), study_consent], &sponsor, jwt).await;
    let vp_clinician = present(&[privilege_jwt.clone(), clinician_consent], &clinician, jwt).await;
    assert_eq!(
        federation::verify::claimed_challenge(&vp_patient_di).unwrap(),
        CHALLENGE
    );
    write_json("presentation", "ok-patient-vp-jwt", &vp_patient_jwt);
    write_json("presentation", "ok-patient-data-integrity", &vp_patient_di);
    write_json(
        "presentation",
        "ok-research-sponsor-vp-jwt-es256",
        &vp_research,
    );
    write_json(
        "presentation",
        "rejected-status-clinician-privilege-vp-jwt",
        &vp_clinician,
    );
    // As the request body carries it: a JSON string.
    write_seed(
        "presentation",
        "ok-patient-vp-jwt-as-json-string",
        &serde_json::to_vec(&vp_patient_jwt).unwrap(),
    );

    // Compact JWS of every kind the services decode, and a status list.
    let mut bits = Bitstring::new();
    bits.set(42, true);
    bits.set(7, true);
    let list = federation::status::list_credential(
        office.did(),
        list_url,
        &bits,
        chrono::Duration::days(365),
    )
    .unwrap();
    let list_jwt = federation::status::sign_list(&list, &office).unwrap();
    write_json("jwt", "ok-consent-vc-jwt-ed25519", &consent_jwt);
    write_json("jwt", "ok-study-vc-jwt-es256", &study_jwt);
    write_json("jwt", "ok-privilege-vc-jwt", &privilege_jwt);
    write_json("jwt", "ok-presentation-vp-jwt", &vp_patient_jwt);
    write_json("jwt", "ok-status-list-vc-jwt", &Value::String(list_jwt));

    // Signed manifests under the fuzz governance (2 of 3).
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<KeyPair> = fuzzing::GOVERNANCE_SEEDS
        .iter()
        .map(|s| governance_key(s, dir.path()))
        .collect();
    let m = fuzz_manifest();
    let two = SignedManifest::sign(&m, &[&keys[0], &keys[1]]).unwrap();
    let three = SignedManifest::sign(&m, &[&keys[2], &keys[1], &keys[0]]).unwrap();
    let one = SignedManifest::sign(&m, &[&keys[2]]).unwrap();
    write_seed(
        "manifest",
        "ok-signed-2-of-3",
        &two.to_json_pretty().unwrap(),
    );
    write_seed(
        "manifest",
        "ok-signed-3-of-3",
        &three.to_json_pretty().unwrap(),
    );
    write_seed(
        "manifest",
        "rejected-required-signed-1-of-3",
        &one.to_json_pretty().unwrap(),
    );

    // Checkpoints of a real tree (RFC 6962 roots), signed as the visibility service signs them.
    let leaves: Vec<Vec<u8>> = (0..13)
        .map(|i| format!("{{\"event\":{i},\"decision\":\"allow\"}}").into_bytes())
        .collect();
    struct Tree(Vec<Vec<u8>>);
    impl Tree {
        fn root(&self, size: u64) -> Result<Hash, std::convert::Infallible> {
            Ok(mth(&self.0[..size as usize]))
        }
    }
    fn mth(leaves: &[Vec<u8>]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaf_hash(&leaves[0]),
            n => {
                let k = split_point(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }
    let log = Tree(leaves);
    let key = fuzzing::log_signing_key();
    let sign = |cp: &Checkpoint| cp.sign(LOG_NAME, &key).unwrap();
    let cp13 = Checkpoint::new(LOG_NAME, 13, log.root(13).unwrap());
    let note13 = sign(&cp13);
    write_seed("checkpoint", "ok-log-size-13", note13.as_bytes());
    let cp0 = Checkpoint::new(LOG_NAME, 0, log.root(0).unwrap());
    write_seed("checkpoint", "ok-log-size-0", sign(&cp0).as_bytes());
    let mut cp5 = Checkpoint::new(LOG_NAME, 5, log.root(5).unwrap());
    cp5.extensions = vec!["timestamp 1767225600".into()];
    write_seed(
        "checkpoint",
        "ok-log-size-5-extension",
        sign(&cp5).as_bytes(),
    );
    // Cosigned by a witness the verifier does not know: its line is skipped.
    let witness = ed25519_dalek::SigningKey::from_bytes(&[0x77; 32]);
    let witnessed = cp13.sign("witness.fuzz.example", &witness).unwrap();
    let (_, witness_line) = witnessed.split_once("\n\n").unwrap();
    write_seed(
        "checkpoint",
        "ok-log-size-13-cosigned",
        format!("{note13}{witness_line}").as_bytes(),
    );
}
