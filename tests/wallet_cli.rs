//! The `fedgate wallet` command line (src/cli/wallet.rs), parsed and run in-process against
//! the test federation and the stub gateway.

use fedgate::cli::wallet as cli;

use std::path::Path;

use clap::{CommandFactory, Parser};
use federation::credentials::{CredentialKind, ProofFormat};
use serde_json::{json, Value};
use test_support::stub::start_stub;
use test_support::*;
use wallet::Wallet;

/// Stands in for `fedgate wallet`, which main.rs provides.
#[derive(Parser)]
struct Top {
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: cli::WalletCommand,
}

async fn run(args: &[&str]) -> Result<(), String> {
    let top = Top::try_parse_from(std::iter::once("wallet").chain(args.iter().copied()))
        .map_err(|e| e.to_string())?;
    cli::run(top.command, top.json)
        .await
        .map_err(|e| e.to_string())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn did_of(dir: &Path) -> String {
    Wallet::open(dir).unwrap().did().to_string()
}

#[test]
fn the_command_line_is_well_formed() {
    Top::command().debug_assert();
}

#[tokio::test]
async fn a_clinician_and_a_patient_on_the_command_line() {
    let fed = federation().await;
    let stub = start_stub(&fed).await;
    let url = stub.url.to_string();
    let tmp = tempfile::tempdir().unwrap();
    let (clin, pat) = (tmp.path().join("clinician"), tmp.path().join("patient"));

    run(&["init", "--dir", s(&clin)]).await.unwrap();
    run(&["init", "--dir", s(&pat), "--alg", "P-256", "--json"])
        .await
        .unwrap();
    let err = run(&["init", "--dir", s(&pat)]).await.unwrap_err();
    assert!(err.contains("already"), "{err}");
    let (clinician, patient) = (did_of(&clin), did_of(&pat));
    assert!(patient.starts_with("did:key:zDn"));

    // The default trust file sits in the wallet folder.
    let trust = json!({
        "trustedIssuers": {"ClinicianPrivilegeCredential": [fed.office.key.did()]},
        "didWeb": {fed.office.key.did(): fed.office.base.as_str()},
        "devMode": true
    });
    std::fs::write(clin.join("trust.json"), trust.to_string()).unwrap();
    let (vc, _) = privilege(&fed.office, &clinician, ProofFormat::DataIntegrity).await;
    let vc_file = tmp.path().join("privilege.json");
    std::fs::write(&vc_file, serde_json::to_string_pretty(&vc).unwrap()).unwrap();
    run(&["import", "--dir", s(&clin), s(&vc_file)])
        .await
        .unwrap();
    run(&["list", "--dir", s(&clin), "--json"]).await.unwrap();

    // Nothing to trust in the patient's folder.
    let err = run(&["import", "--dir", s(&pat), s(&vc_file)])
        .await
        .unwrap_err();
    assert!(err.contains("no trust file"), "{err}");
    let garbage = tmp.path().join("garbage.txt");
    std::fs::write(&garbage, "not a credential\n").unwrap();
    let err = run(&["import", "--dir", s(&clin), s(&garbage)])
        .await
        .unwrap_err();
    assert!(err.starts_with("credential rejected"), "{err}");
    assert!(!err.contains('\n'), "{err}");

    run(&[
        "consent",
        "grant",
        "--dir",
        s(&pat),
        "--identifier",
        &format!("{HOSPITAL_B},urn:oid:2.16.840.1.113883.4.1,MRN-0001"),
        "--custodian",
        HOSPITAL_B,
        "--grantee",
        &clinician,
        "--domain",
        "clinical",
        "--purpose",
        "TREAT",
        "--data-class",
        "Observation,Condition",
        "--start",
        "2025-01-01",
        "--end",
        "2099-01-01",
        "--format",
        "jwt",
    ])
    .await
    .unwrap();
    let consent = {
        let w = Wallet::open(&pat).unwrap();
        let list = w.consent_list().unwrap();
        assert_eq!(list.len(), 1);
        list[0].clone()
    };
    assert_eq!(consent.kind, CredentialKind::PatientConsent);
    assert!(!consent.summary.contains("MRN-0001"), "{}", consent.summary);
    let consent_file = tmp.path().join("consent.jwt");
    std::fs::write(
        &consent_file,
        format!("{}\n", consent.credential.as_str().unwrap()),
    )
    .unwrap();
    let explicit_trust = tmp.path().join("trust.toml");
    std::fs::write(&explicit_trust, "devMode = true\n").unwrap();
    run(&[
        "import",
        "--dir",
        s(&clin),
        s(&consent_file),
        "--trust",
        s(&explicit_trust),
    ])
    .await
    .unwrap();

    run(&[
        "consent",
        "register",
        "--dir",
        s(&pat),
        &consent.id,
        "--gateway",
        &url,
        "--dev",
    ])
    .await
    .unwrap();

    let vp_file = tmp.path().join("vp.json");
    let present = |out: Option<&Path>, dev: bool| {
        let mut args = vec![
            "present".to_string(),
            "--dir".into(),
            s(&clin).into(),
            "--gateway".into(),
            url.clone(),
            "--facility".into(),
            HOSPITAL_B.into(),
            "--domain".into(),
            "clinical".into(),
            "--purpose".into(),
            "TREAT".into(),
            "--patient".into(),
            patient.clone(),
        ];
        if dev {
            args.push("--dev".into());
        }
        if let Some(out) = out {
            args.extend(["--out".into(), s(out).into()]);
        }
        args
    };
    let args = present(Some(&vp_file), true);
    run(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await
        .unwrap();
    let vp: Value = serde_json::from_slice(&std::fs::read(&vp_file).unwrap()).unwrap();
    let verified = fed
        .verifier
        .verify_presentation(&vp, &stub.binding())
        .await
        .unwrap();
    assert_eq!(verified.holder, clinician);
    assert_eq!(verified.credentials.len(), 2);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&vp_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    // Plain http to the gateway needs --dev.
    let args = present(None, false);
    let err = run(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await
        .unwrap_err();
    assert!(err.contains("only https"), "{err}");

    run(&[
        "consent",
        "withdraw",
        "--dir",
        s(&pat),
        &consent.id,
        "--gateway",
        &url,
        "--dev",
        "--json",
    ])
    .await
    .unwrap();
    assert!(
        Wallet::open(&pat)
            .unwrap()
            .show(&consent.id)
            .unwrap()
            .withdrawn
    );
    run(&["consent", "list", "--dir", s(&pat)]).await.unwrap();
    assert_eq!(stub.state.withdrawn.lock().unwrap().len(), 1);

    run(&["show", "--dir", s(&clin), &consent.id])
        .await
        .unwrap();
    run(&["remove", "--dir", s(&clin), &consent.id])
        .await
        .unwrap();
    let err = run(&["show", "--dir", s(&clin), &consent.id])
        .await
        .unwrap_err();
    assert!(err.contains("wallet list"), "{err}");

    // Malformed flags are refused before anything runs.
    for bad in [
        vec!["init", "--dir", "x", "--alg", "RSA"],
        vec!["list"],
        vec![
            "consent",
            "grant",
            "--dir",
            "x",
            "--identifier",
            "a",
            "--custodian",
            "b",
            "--grantee",
            "c",
            "--domain",
            "surgery",
            "--purpose",
            "TREAT",
            "--data-class",
            "X",
        ],
    ] {
        assert!(run(&bad).await.is_err(), "{bad:?}");
    }
    let err = run(&[
        "consent",
        "grant",
        "--dir",
        s(&pat),
        "--identifier",
        "only-one-part",
        "--custodian",
        HOSPITAL_B,
        "--grantee",
        &clinician,
        "--domain",
        "clinical",
        "--purpose",
        "TREAT",
        "--data-class",
        "Observation",
    ])
    .await
    .unwrap_err();
    assert!(err.contains("CUSTODIAN_DID,SYSTEM,VALUE"), "{err}");
}
