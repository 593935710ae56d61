//! The command line: one-line errors with a non-zero exit, key files and the inventory, and
//! the demo's machine-readable report.

mod support;

use serde_json::Value;
use support::fedgate;

#[test]
fn keys_generate_and_inventory() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("holder.key.json");
    let b = dir.path().join("org.key.json");
    let out = fedgate()
        .args([
            "keys",
            "generate",
            "--out",
            a.to_str().unwrap(),
            "--alg",
            "p-256",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let did = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(did.starts_with("did:key:zDn"), "{did}");
    let out = fedgate()
        .args([
            "keys",
            "generate",
            "--out",
            b.to_str().unwrap(),
            "--did-web",
            "did:web:org.test",
            "--purpose",
            "issuer assertion",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());

    let out = fedgate()
        .args(["keys", "inventory", "--json", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inv: Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys = inv["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    let algs: Vec<&str> = keys
        .iter()
        .map(|k| k["algorithm"].as_str().unwrap())
        .collect();
    assert!(algs.contains(&"P-256") && algs.contains(&"Ed25519"));
    assert!(keys
        .iter()
        .any(|k| k["verificationMethod"] == "did:web:org.test#key-1"));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("privateJwk"));

    // Overwriting a key is refused.
    let out = fedgate()
        .args(["keys", "generate", "--out", a.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn world_readable_key_is_a_one_line_error() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("k.key.json");
    assert!(fedgate()
        .args(["keys", "generate", "--out", k.to_str().unwrap()])
        .status()
        .unwrap()
        .success());
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = fedgate()
        .args(["keys", "inventory", k.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("readable by others") && err.contains("chmod 600"),
        "{err}"
    );
}

#[test]
fn bad_config_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("issuer.toml");
    std::fs::write(
        &cfg,
        "listen = \"127.0.0.1:0\"\ndid = \"did:key:z6Mk\"\nkey_file = \"k\"\ndata_dir = \"d\"\n",
    )
    .unwrap();
    let out = fedgate()
        .args(["issuer", "serve", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`did`") && err.contains("did:web"), "{err}");
    // Plain HTTP off loopback is refused.
    std::fs::write(
        &cfg,
        "listen = \"0.0.0.0:0\"\ndid = \"did:web:x.test\"\nkey_file = \"k\"\ndata_dir = \"d\"\n",
    )
    .unwrap();
    let out = fedgate()
        .args(["issuer", "serve", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}

#[test]
fn demo_reports_every_scenario_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = fedgate()
        .args(["demo", "--json", "--dir", dir.path().to_str().unwrap()])
        .env("FEDGATE_LOG", "warn")
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let rows = report.as_array().unwrap();
    assert!(rows.len() >= 11);
    assert!(rows.iter().filter(|r| r["receipt"].is_string()).count() >= 9);
    for row in rows {
        assert!(row["scenario"].is_string() && row["expected"].is_string());
        assert_eq!(row["ok"], true, "{row}");
    }
    assert!(out.status.success());
}
