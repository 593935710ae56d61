//! `fedgate demo`: starts real services on loopback and runs scenarios against them over
//! HTTP, printing what was expected, what happened, and whether they agree.
//!
//! Today it covers the credentialing office: issuing in both proof formats, verifying,
//! presentations bound to a verifier, joiner/mover/leaver with revocation, and forged or
//! mis-bound credentials rejected with the failing check named.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use federation::credentials::{present, PresentationBinding, ProofFormat};
use federation::keys::{KeyAlgorithm, KeyPair};
use serde::Serialize;
use serde_json::{json, Value};

const OFFICE_DID: &str = "did:web:credentialing.demo.fedgate";
const HOSPITAL_A: &str = "did:web:hospital-a.demo.fedgate";
const HOSPITAL_B: &str = "did:web:hospital-b.demo.fedgate";
const HOSPITAL_C: &str = "did:web:hospital-c.demo.fedgate";

#[derive(Serialize)]
pub struct Outcome {
    pub scenario: String,
    pub expected: String,
    pub outcome: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision_id: Option<String>,
}

struct Process {
    child: Child,
    addr: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `fedgate ARGS` as a child process and waits for its "listening on" line.
fn spawn_service(args: &[&str]) -> Result<Process, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find fedgate itself: {e}"))?;
    let mut child = Command::new(exe)
        .args(args)
        .env("FEDGATE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {args:?}: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout from child")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.split(" listening on ").nth(1) {
                let _ = tx.send(addr.trim().to_string());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(addr) => Ok(Process { child, addr }),
        Err(_) => {
            let _ = child.kill();
            Err(format!("{args:?} did not start within 30 s"))
        }
    }
}

fn write_secret(path: &Path, secret: &str) -> Result<(), String> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(secret.as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))
}

struct Demo {
    http: reqwest::Client,
    office: String,
    token: String,
    results: Vec<Outcome>,
}

impl Demo {
    async fn post(&self, path: &str, body: &Value, admin: bool) -> Result<(u16, Value), String> {
        let mut req = self.http.post(format!("{}{path}", self.office)).json(body);
        if admin {
            req = req.bearer_auth(&self.token);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    fn record(&mut self, scenario: &str, expected: &str, outcome: String, ok: bool) {
        self.results.push(Outcome {
            scenario: scenario.into(),
            expected: expected.into(),
            outcome,
            ok,
            decision_id: None,
        });
    }

    async fn verify(&self, vc: &Value) -> Result<(u16, Value), String> {
        self.post(
            "/credentials/verify",
            &json!({"verifiableCredential": vc}),
            false,
        )
        .await
    }
}

fn privilege_subject(clinician: &str, facility: &str) -> Value {
    json!({
        "id": clinician,
        "name": "Dr. Demo Clinician",
        "npi": "1234567893",
        "role": "physician",
        "specialty": "207R00000X",
        "organization": HOSPITAL_A,
        "privileges": [{"facility": facility, "domains": ["clinical"], "actions": ["read"]}]
    })
}

fn check_of(body: &Value) -> String {
    body.get("check")
        .and_then(Value::as_str)
        .unwrap_or("-")
        .to_string()
}

pub async fn run(dir: Option<PathBuf>, json_out: bool) -> Result<bool, String> {
    let started = Instant::now();
    let tmp;
    let dir = match dir {
        Some(d) => d,
        None => {
            tmp = std::env::temp_dir().join(format!("fedgate-demo-{}", uuid::Uuid::new_v4()));
            tmp
        }
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let office_dir = dir.join("credentialing-office");
    std::fs::create_dir_all(&office_dir).map_err(|e| e.to_string())?;
    let token = federation::http::random_token();
    let token_path = office_dir.join("admin-token");
    if !token_path.exists() {
        write_secret(&token_path, &token)?;
    }
    let token = std::fs::read_to_string(&token_path).map_err(|e| e.to_string())?;
    let config = format!(
        "listen = \"127.0.0.1:0\"\ndid = \"{OFFICE_DID}\"\nkey_file = \"office.key.json\"\ndata_dir = \"data\"\nadmin_token_file = \"admin-token\"\ndev_mode = true\nstatus_list_ttl_secs = 60\n"
    );
    let config_path = office_dir.join("issuer.toml");
    std::fs::write(&config_path, config).map_err(|e| e.to_string())?;
    let config_arg = config_path.to_string_lossy().to_string();
    let office = spawn_service(&["issuer", "serve", "--config", &config_arg])?;
    let mut demo = Demo {
        http: federation::http::http_client(),
        office: format!("http://{}", office.addr),
        token: token.trim().to_string(),
        results: Vec::new(),
    };
    if !json_out {
        println!(
            "credentialing office {OFFICE_DID} listening on {} (started in {} ms)\n",
            office.addr,
            started.elapsed().as_millis()
        );
    }

    let clinician = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).map_err(|e| e.to_string())?;

    // 1. Joiner in both formats, each verified by the office's VC API.
    let mut privilege_jwt = Value::Null;
    let mut privilege_id = String::new();
    for format in ["jwt", "data-integrity"] {
        let (status, joined) = demo
            .post(
                "/v1/privileges",
                &json!({"subject": privilege_subject(clinician.did(), HOSPITAL_B), "format": format}),
                true,
            )
            .await?;
        let vc = joined["verifiableCredential"].clone();
        let (vstatus, verified) = demo.verify(&vc).await?;
        let checks = verified["checks"].as_array().map(|c| c.len()).unwrap_or(0);
        demo.record(
            &format!("joiner: privilege issued as {format} and verified"),
            "issued (201), verified (200)",
            format!("issued ({status}), verified ({vstatus}, {checks} checks passed)"),
            status == 201 && vstatus == 200,
        );
        if format == "jwt" {
            privilege_jwt = vc;
            privilege_id = joined["id"].as_str().unwrap_or_default().to_string();
        }
    }

    // 2. A presentation bound to hospital B's challenge; replayed at hospital A.
    let binding = PresentationBinding {
        challenge: federation::http::random_token(),
        domain: HOSPITAL_B.into(),
    };
    let vp = present(
        std::slice::from_ref(&privilege_jwt),
        &clinician,
        &binding,
        ProofFormat::Jwt,
    )
    .await
    .map_err(|e| e.to_string())?;
    let (status, _) = demo
        .post(
            "/presentations/verify",
            &json!({"verifiablePresentation": vp, "options": {"challenge": binding.challenge, "domain": HOSPITAL_B}}),
            false,
        )
        .await?;
    demo.record(
        "presentation to hospital B with its challenge",
        "accepted",
        if status == 200 {
            "accepted".into()
        } else {
            format!("refused ({status})")
        },
        status == 200,
    );
    let (status, body) = demo
        .post(
            "/presentations/verify",
            &json!({"verifiablePresentation": vp, "options": {"challenge": binding.challenge, "domain": HOSPITAL_A}}),
            false,
        )
        .await?;
    demo.record(
        "the same presentation replayed at hospital A",
        "refused, check domain",
        format!("refused ({status}), check {}", check_of(&body)),
        status == 422 && check_of(&body) == "domain",
    );

    // 3. A forged privilege: signed by a key that is not the office's.
    let forger = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).map_err(|e| e.to_string())?;
    let mut forged = federation::credentials::unsigned_credential(
        federation::CredentialKind::ClinicianPrivilege,
        forger.did(),
        privilege_subject(clinician.did(), HOSPITAL_B),
        chrono::Utc::now(),
        None,
        None,
    );
    forged["issuer"] = json!(forger.did());
    let forged = federation::credentials::issue(forged, &forger, ProofFormat::Jwt)
        .await
        .map_err(|e| e.to_string())?;
    let (status, body) = demo.verify(&forged).await?;
    demo.record(
        "a privilege issued by an untrusted key",
        "refused, check issuer-trust",
        format!("refused ({status}), check {}", check_of(&body)),
        status == 422 && check_of(&body) == "issuer-trust",
    );

    // 4. Mover: B -> C; the old privilege is revoked in the same step.
    let (status, moved) = demo
        .post(
            &format!("/v1/privileges/{privilege_id}/move"),
            &json!({"privileges": [{"facility": HOSPITAL_C, "domains": ["clinical"], "actions": ["read"]}]}),
            true,
        )
        .await?;
    let (old_status, old_body) = demo.verify(&privilege_jwt).await?;
    let new_vc = moved["verifiableCredential"].clone();
    let (new_status, _) = demo.verify(&new_vc).await?;
    demo.record(
        "mover: privileges moved from hospital B to hospital C",
        "new verifies, old refused with check status",
        format!(
            "moved ({status}); new {new_status}; old {old_status} check {}",
            check_of(&old_body)
        ),
        status == 201 && new_status == 200 && old_status == 422 && check_of(&old_body) == "status",
    );

    // 5. Leaver: revoke, measure revocation to first refusal.
    let new_id = moved["id"].as_str().unwrap_or_default().to_string();
    let t0 = Instant::now();
    let (status, _) = demo
        .post(
            &format!("/v1/credentials/{new_id}/revoke"),
            &json!({}),
            true,
        )
        .await?;
    let (vstatus, body) = demo.verify(&new_vc).await?;
    let elapsed = t0.elapsed();
    demo.record(
        "leaver: the office revokes the clinician",
        "next verification refused with check status",
        format!(
            "revoked ({status}); refused ({vstatus}) check {} after {} ms",
            check_of(&body),
            elapsed.as_millis()
        ),
        status == 200 && vstatus == 422 && check_of(&body) == "status",
    );

    let all_ok = demo.results.iter().all(|r| r.ok);
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&demo.results).map_err(|e| e.to_string())?
        );
    } else {
        for (i, r) in demo.results.iter().enumerate() {
            println!(
                "{:>2}. [{}] {}\n      expected: {}\n      happened: {}",
                i + 1,
                if r.ok { " ok " } else { "FAIL" },
                r.scenario,
                r.expected,
                r.outcome
            );
        }
        println!(
            "\n{} of {} scenarios as expected; data in {}",
            demo.results.iter().filter(|r| r.ok).count(),
            demo.results.len(),
            dir.display()
        );
    }
    drop(office);
    Ok(all_ok)
}
