//! The signed federation registry as the verifier's trust source, and its URL watcher.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use federation::credentials::{CredentialKind, ProofFormat};
use federation::keys::{KeyAlgorithm, KeyPair};
use federation::registry::{
    Governance, Journal, JournalError, Manifest, ManifestSource, Member, Registry, Role,
    SignedManifest,
};
use federation::trust::TrustSource;
use federation::verify::Verifier;
use federation::Check;
use test_support::*;

fn governors() -> (Vec<KeyPair>, Governance) {
    let keys: Vec<KeyPair> = (0..3)
        .map(|_| KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap())
        .collect();
    let governance = Governance {
        threshold: 2,
        keys: keys
            .iter()
            .map(|k| k.verification_method().to_string())
            .collect(),
    };
    (keys, governance)
}

fn member(office: &Office, roles: &[Role]) -> Member {
    Member {
        did: office.key.did().to_string(),
        name: office.key.did().trim_start_matches("did:web:").to_string(),
        roles: roles.to_vec(),
        endpoints: Default::default(),
        base_url: office.base.to_string(),
    }
}

#[tokio::test]
async fn an_issuer_the_manifest_does_not_trust_fails_issuer_trust() {
    let fed = federation().await;
    let (keys, governance) = governors();
    let mut manifest = Manifest::new("test federation", governance.clone());
    manifest.members = vec![
        member(&fed.office, &[Role::CredentialingOffice]),
        member(&fed.other_office, &[Role::CredentialingOffice]),
        member(&fed.irb, &[Role::Irb]),
    ];
    manifest.trusted_issuers.insert(
        CredentialKind::ClinicianPrivilege,
        vec![fed.office.key.did().to_string()],
    );
    // The other office is a member, but trusted only for studies.
    manifest.trusted_issuers.insert(
        CredentialKind::ResearchStudy,
        vec![fed.other_office.key.did().to_string()],
    );
    let registry = Arc::new(Registry::new(governance, true));
    registry
        .install(&SignedManifest::sign(&manifest, &[&keys[0], &keys[2]]).unwrap())
        .unwrap();
    assert!(registry.apply_to(&fed.verifier.resolver));
    assert!(!registry.is_trusted(
        CredentialKind::ClinicianPrivilege,
        fed.other_office.key.did()
    ));

    let verifier = Verifier::new(
        fed.verifier.resolver.clone(),
        registry.clone(),
        fed.verifier.status.clone(),
    );
    let clinician = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    for format in [ProofFormat::Jwt, ProofFormat::DataIntegrity] {
        let (trusted, _) = privilege(&fed.office, clinician.did(), format).await;
        let v = verifier.verify_credential(&trusted).await.unwrap();
        assert!(v.checks.contains(&Check::IssuerTrust));

        let (untrusted, _) = privilege(&fed.other_office, clinician.did(), format).await;
        let err = verifier.verify_credential(&untrusted).await.unwrap_err();
        assert_eq!(err.check, Check::IssuerTrust, "{err}");
    }
}

#[derive(Clone, Default)]
struct Served(Arc<Mutex<Vec<u8>>>);

#[tokio::test]
async fn url_watcher_installs_newer_manifests_and_keeps_the_last_good_one() {
    let served = Served::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route(
            "/federation/manifest.json",
            get(|State(s): State<Served>| async move { s.0.lock().unwrap().clone() }),
        )
        .with_state(served.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let (keys, governance) = governors();
    let manifest = |version: u64| {
        let mut m = Manifest::new("url federation", governance.clone());
        m.version = version;
        m.members.push(Member {
            did: "did:web:hospital-a.test".into(),
            name: "Hospital A".into(),
            roles: vec![Role::Custodian],
            endpoints: Default::default(),
            base_url: format!("http://{addr}/"),
        });
        m.trusted_issuers.insert(
            CredentialKind::ClinicianPrivilege,
            vec!["did:web:hospital-a.test".into()],
        );
        m
    };
    let publish = |m: &Manifest, signers: &[&KeyPair]| {
        let body = SignedManifest::sign(m, signers)
            .unwrap()
            .to_json_pretty()
            .unwrap();
        *served.0.lock().unwrap() = body;
    };
    publish(&manifest(1), &[&keys[0], &keys[1]]);

    let registry = Arc::new(Registry::new(governance.clone(), true));
    let resolver = Arc::new(federation::did::DidResolver::new(true));
    let url = reqwest::Url::parse(&format!("http://{addr}/federation/manifest.json")).unwrap();
    let task = registry.spawn_watch(
        ManifestSource::Url(url),
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
    assert!(resolver.web_base("did:web:hospital-a.test").is_some());

    // Oversized and under-signed documents are refused; v1 stays in force.
    *served.0.lock().unwrap() = vec![b' '; federation::registry::MAX_MANIFEST_BYTES + 10];
    tokio::time::sleep(Duration::from_millis(200)).await;
    publish(&manifest(3), &[&keys[2]]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(registry.current().unwrap().version, 1);
    assert!(registry.is_trusted(
        CredentialKind::ClinicianPrivilege,
        "did:web:hospital-a.test"
    ));

    publish(&manifest(2), &[&keys[1], &keys[2]]);
    assert!(wait_for(2).await, "v2 was not picked up");
    task.abort();
}

#[test]
fn a_restart_keeps_rotated_governance_and_the_version_floor() {
    let (old_keys, old_governance) = governors();
    let (new_keys, new_governance) = governors();
    // Version 1, signed by the configured governance, hands over to new keys; version 2
    // is signed by the new keys only.
    let mut v1 = Manifest::new("test federation", new_governance.clone());
    v1.version = 1;
    let v1 = SignedManifest::sign(&v1, &[&old_keys[0], &old_keys[1]]).unwrap();
    let mut v2 = Manifest::new("test federation", new_governance.clone());
    v2.version = 2;
    let v2 = SignedManifest::sign(&v2, &[&new_keys[1], &new_keys[2]]).unwrap();

    let kept = MemoryJournal::default();
    let journal = || Box::new(kept.clone()) as Box<dyn Journal>;
    let registry = Registry::with_journal(old_governance.clone(), true, journal()).unwrap();
    registry.install(&v1).unwrap();
    registry.install(&v2).unwrap();

    // Without the journal, a restart from the configuration can no longer verify what is
    // in force: the service would trust nobody.
    assert!(Registry::new(old_governance.clone(), true)
        .install(&v2)
        .is_err());

    // With it, the restart replays v1 under the configured keys, adopts the new ones, and
    // replays v2: same state, and v1 offered again is a rollback.
    let restarted = Registry::with_journal(old_governance.clone(), true, journal()).unwrap();
    assert_eq!(restarted.current().map(|m| m.version), Some(2));
    assert_eq!(restarted.governance(), Some(new_governance.clone()));
    assert!(restarted.install(&v1).is_err());

    // The journal is not trusted for being there: an entry signed by strangers stops the
    // replay, and what verified before it stays in force.
    let (strange_keys, _) = governors();
    let mut v3 = Manifest::new("test federation", new_governance);
    v3.version = 3;
    let v3 = SignedManifest::sign(&v3, &[&strange_keys[0], &strange_keys[1]]).unwrap();
    journal()
        .keep(3, &serde_json::to_vec(&v3).unwrap())
        .unwrap();
    let restarted = Registry::with_journal(old_governance, true, journal()).unwrap();
    assert_eq!(restarted.current().map(|m| m.version), Some(2));
}

/// A journal in memory: what a service's database does for the registry, without one.
#[derive(Clone, Default)]
struct MemoryJournal(std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<u64, Vec<u8>>>>);

impl Journal for MemoryJournal {
    fn entries(&self) -> Result<Vec<Vec<u8>>, JournalError> {
        Ok(self.0.lock().unwrap().values().cloned().collect())
    }
    fn keep(&self, version: u64, entry: &[u8]) -> Result<(), JournalError> {
        self.0.lock().unwrap().insert(version, entry.to_vec());
        Ok(())
    }
}
