//! The command line: one-line errors with a non-zero exit, key files and the inventory, and
//! the demo's machine-readable report, with no patient identifier in any log line of it.

mod support;

use std::collections::HashSet;
use std::path::Path;

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

/// Writes `config` as an issuer's config in `dir` and starts `issuer serve` on it, which
/// must fail; returns what it printed on stderr.
fn issuer_refuses(dir: &Path, config: &str) -> String {
    let cfg = dir.join("issuer.toml");
    std::fs::write(&cfg, config).unwrap();
    let out = fedgate()
        .args(["issuer", "serve", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{config}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_config_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = issuer_refuses(
        dir.path(),
        "listen = \"127.0.0.1:0\"\ndid = \"did:key:z6Mk\"\nkey_file = \"k\"\ndata_dir = \"d\"\n",
    );
    assert!(err.contains("`did`") && err.contains("did:web"), "{err}");
    assert!(
        !dir.path().join("k").exists(),
        "no key made for a refused config"
    );
    // A did:key that decodes but whose key file does not exist: no new key in its place.
    let some = federation::keys::KeyPair::generate_did_key(Default::default()).unwrap();
    let err = issuer_refuses(
        dir.path(),
        &format!(
            "listen = \"127.0.0.1:0\"\ndid = \"{}\"\nkey_file = \"k\"\ndata_dir = \"d\"\n",
            some.did()
        ),
    );
    assert!(
        err.contains("`did`") && err.contains("key_file does not exist"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!dir.path().join("k").exists(), "no key made in its place");
    // Plain HTTP off loopback is refused.
    let err = issuer_refuses(
        dir.path(),
        "listen = \"0.0.0.0:0\"\ndid = \"did:web:x.test\"\nkey_file = \"k\"\ndata_dir = \"d\"\n",
    );
    assert!(err.contains("loopback"), "{err}");
}

/// Our own crates log at debug (every request line, with its request id); other crates at
/// info, because their debug output (a database's offsets and sequence numbers, say) is
/// full of numbers that could equal a seven-digit MRN by chance.
const DEMO_LOG: &str =
    "info,fedgate=debug,federation=debug,service=debug,gateway=debug,issuer=debug,wallet=debug,visibility=debug";

/// One direct identifier of a fixture patient, and where it comes from.
struct Phi {
    value: String,
    what: String,
}

/// Every direct identifier of every Patient in the fixture bundles under `dir`: ids,
/// identifier values (MRN, SSN, passport and the rest), names, phone numbers and emails,
/// address lines, birth dates.
fn fixture_phi(dir: &Path) -> Vec<Phi> {
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no fixtures in {}", dir.display());
    for file in files {
        let bundle: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let mut add = |value: &Value, what: &str| {
            if let Some(v) = value.as_str().filter(|v| !v.trim().is_empty()) {
                out.push(Phi {
                    value: v.to_string(),
                    what: format!("{what} of the patient in {name}"),
                });
            }
        };
        for entry in bundle["entry"].as_array().unwrap() {
            let patient = &entry["resource"];
            if patient["resourceType"] != "Patient" {
                continue;
            }
            add(&patient["id"], "resource id");
            if let Some(uuid) = entry["fullUrl"]
                .as_str()
                .and_then(|u| u.strip_prefix("urn:uuid:"))
            {
                add(&Value::from(uuid), "fullUrl");
            }
            for ident in patient["identifier"].as_array().into_iter().flatten() {
                let system = ident["system"].as_str().unwrap_or("identifier");
                add(&ident["value"], &format!("identifier {system}"));
            }
            for n in patient["name"].as_array().into_iter().flatten() {
                add(&n["family"], "family name");
                for given in n["given"].as_array().into_iter().flatten() {
                    add(given, "given name");
                }
            }
            for t in patient["telecom"].as_array().into_iter().flatten() {
                add(&t["value"], t["system"].as_str().unwrap_or("telecom"));
            }
            for a in patient["address"].as_array().into_iter().flatten() {
                for line in a["line"].as_array().into_iter().flatten() {
                    add(line, "address line");
                }
            }
            add(&patient["birthDate"], "birth date");
        }
    }
    out
}

/// A log line without terminal colours and without its own leading timestamp (which is
/// the log's, not a patient's, and could otherwise equal a birth date).
fn plain(line: &str) -> String {
    let mut text = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            text.push(c);
        }
    }
    let trimmed = text.trim_start();
    match trimmed.split_once(' ') {
        Some((first, rest)) if first.len() >= 20 && first.as_bytes()[4] == b'-' => rest.to_string(),
        _ => trimmed.to_string(),
    }
}

/// Whether `value` occurs in `line`. Short values (names, seven-digit MRNs, eight-character
/// ids) count only as whole words, so that they are not found inside request ids or
/// digests; longer ones count anywhere.
fn occurs(line: &str, value: &str) -> bool {
    if value.chars().count() >= 10 {
        return line.contains(value);
    }
    let word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    line.match_indices(value).any(|(at, _)| {
        !word(line[..at].chars().next_back()) && !word(line[at + value.len()..].chars().next())
    })
}

/// Checks every log line of the demo for every fixture identifier, and that the logs are
/// substantial enough for that to mean something.
fn assert_no_phi_in(logs: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/data/fhir");
    let mut phi = fixture_phi(&root.join("hospital-a"));
    phi.extend(fixture_phi(&root.join("hospital-b")));
    assert!(phi.len() >= 100, "only {} identifiers read", phi.len());
    for kind in ["us-ssn", "passportNumber", "phone", "email", "birth date"] {
        assert!(
            phi.iter().any(|p| p.what.contains(kind)),
            "no {kind} among the fixture identifiers"
        );
    }

    // The matcher finds each identifier where a leaking log line would carry it.
    for p in &phi {
        let leak = format!(
            "\u{1b}[2m2026-01-01T00:00:00.000000Z\u{1b}[0m DEBUG x: patient=\"{}\"",
            p.value
        );
        assert!(occurs(&plain(&leak), &p.value), "{leak}");
    }

    let lines: Vec<String> = logs.lines().map(plain).collect();
    for line in &lines {
        for p in &phi {
            assert!(
                !occurs(line, &p.value),
                "a log line carries the {} ({:?}): {line}",
                p.what,
                p.value
            );
        }
    }

    // Not vacuous: every service logged, every request line names its request.
    assert!(lines.len() >= 100, "only {} log lines", lines.len());
    assert!(
        lines.iter().filter(|l| l.contains(" listening ")).count() >= 5,
        "not every service logged its start"
    );
    let requests: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("request finished"))
        .collect();
    let mut ids = HashSet::new();
    for line in &requests {
        let id = line
            .split("request_id=")
            .nth(1)
            .and_then(|rest| rest.split([' ', '}']).next())
            .unwrap_or_else(|| panic!("a request line without a request id: {line}"));
        assert!(
            id.len() >= 16 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "{line}"
        );
        ids.insert(id.to_string());
    }
    assert!(ids.len() >= 50, "only {} requests logged", ids.len());
    for route in [
        "/v1/exchange/{domain}",
        "/v1/consents",
        "/v1/research/queries",
        "/v1/batches",
        "/v1/audit/events",
        "/v1/patients/history",
        "/v1/privileges",
    ] {
        assert!(
            requests
                .iter()
                .any(|l| l.contains(&format!("route={route}"))),
            "no request to {route} was logged"
        );
    }
}

#[test]
fn demo_reports_every_scenario_as_json() {
    let dir = tempfile::tempdir().unwrap();
    // Every service is a child of the demo and writes its log to the demo's stderr.
    let out = fedgate()
        .args(["demo", "--json", "--dir", dir.path().to_str().unwrap()])
        .env("FEDGATE_LOG", DEMO_LOG)
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
    assert_no_phi_in(&String::from_utf8_lossy(&out.stderr));
}

#[test]
fn synthetic_patients_are_written_and_import_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("patients");
    let store = dir.path().join("store");
    let run = |args: &[&str]| {
        let out = fedgate().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let said = run(&[
        "records",
        "synth",
        "--out",
        out.to_str().unwrap(),
        "--patients",
        "12",
        "--seed",
        "9",
    ]);
    assert!(said.contains("wrote 12 synthetic patients"), "{said}");
    let files = std::fs::read_dir(&out).unwrap().count();
    assert_eq!(files, 12);
    let mut expected = 0;
    let mut generator = synth::Generator::new(synth::Options {
        seed: 9,
        ..synth::Options::default()
    });
    for i in 0..12 {
        let patient = generator.patient();
        expected += patient.len();
        let written: Value = serde_json::from_slice(
            &std::fs::read(out.join(format!("patient-{i:04}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(written, patient.bundle, "the seed fixes the patients");
    }
    let report = run(&[
        "records",
        "import",
        "--store",
        store.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(
        report.starts_with(&format!("imported {expected} resources from 12 bundle(s)")),
        "{report}"
    );
    assert!(!report.contains("skipped"), "{report}");

    let bad = fedgate()
        .args([
            "records",
            "synth",
            "--out",
            out.to_str().unwrap(),
            "--patients",
            "0",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

#[test]
fn smart_key_writes_a_private_key_and_prints_what_to_register() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("smart.pem");
    let out = fedgate()
        .args(["records", "smart-key", "--out", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let jwks: Value = serde_json::from_slice(&out.stdout).unwrap();
    let jwk = &jwks["keys"][0];
    assert_eq!(jwk["kty"], "EC");
    assert_eq!(jwk["crv"], "P-384");
    assert_eq!(jwk["alg"], "ES384");
    assert!(jwk.get("d").is_none(), "the private part is never printed");
    // The gateway's assertions name the key by the kid printed.
    let settings = gateway::records::smart::SmartSettings {
        client_id: "gw".into(),
        key_file: key.clone(),
        algorithm: gateway::records::smart::SigningAlgorithm::ES384,
        scopes: "system/*.rs".into(),
        token_endpoint: None,
        kid: None,
    };
    let base = reqwest::Url::parse("https://fhir.example/").unwrap();
    let client =
        gateway::records::smart::SmartClient::new(&settings, &base, reqwest::Client::new(), false)
            .unwrap();
    assert_eq!(jwk["kid"], client.kid());
    // An existing key is never overwritten.
    let before = std::fs::read(&key).unwrap();
    let again = fedgate()
        .args(["records", "smart-key", "--out", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert_eq!(std::fs::read(&key).unwrap(), before);
}

#[test]
fn policy_check_names_a_rule_whose_error_would_let_a_request_through() {
    // The shipped bundle with billing's allow written the usual way (no denials, without
    // `permitted`): under the compiled VM a failing denial rule lets requests through.
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&policies).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".rego") && !name.ends_with("_test.rego") {
            let mut text = std::fs::read_to_string(entry.path()).unwrap();
            if name == "billing.rego" {
                let before = text.clone();
                text = text.replace(
                    "\tcount(denials) == 0\n\tpermitted\n",
                    "\tcount(denials) == 0\n",
                );
                assert_ne!(text, before);
            }
            std::fs::write(dir.path().join(&name), text).unwrap();
        }
    }
    let out = fedgate()
        .args(["policy", "check", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("FAIL billing.rego:")
                && l.contains("allows what the bundle denies")),
        "{stdout}"
    );
    assert!(stdout.contains("rule bodies injected"), "{stdout}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("does not fail closed under the compiled VM"),
        "{stderr}"
    );
}
