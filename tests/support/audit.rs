//! A visibility service (a real `fedgate visibility serve` process) holding a realistic
//! access log of two custodians, and an auditor session on it: the setup of the auditor
//! API's and the dashboard's tests.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use chrono::Utc;
use federation::credentials::{self, CredentialKind, PresentationBinding, ProofFormat};
use federation::events::AccessEvent;
use federation::keys::{KeyAlgorithm, KeyPair};
use fedgate::harness::events::{generate, report, LogSpec};
use serde_json::{json, Value};
use test_support::{privilege_subject, start_office, Office};

use super::{fedgate, AUDITOR_ORG, VISIBILITY};

pub const HOSPITAL_A: &str = "did:web:hospital-a.test";
pub const HOSPITAL_B: &str = "did:web:hospital-b.test";
pub const REQUESTER_ORGS: [&str; 5] = [
    "did:web:clinic-c.test",
    "did:web:hospital-b.test",
    "did:web:affiliate-d.test",
    "did:web:insurer-e.test",
    "did:web:research-f.test",
];
/// The review deadline the service is configured with.
pub const REVIEW_HOURS: i64 = 72;

pub struct AuditLog {
    /// The service's URL, ending in `/`.
    pub base: String,
    /// An auditor session's bearer token.
    pub token: String,
    /// Every generated event, in the order logged (hospital A's, then hospital B's).
    pub events: Vec<AccessEvent>,
    pub a: Office,
    pub b: Office,
    pub office: Office,
    /// The service's stderr (its log), written to a file.
    pub log_file: PathBuf,
    child: Child,
    pub dir: tempfile::TempDir,
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client() -> reqwest::Client {
    federation::client::http_client()
}

impl AuditLog {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path.trim_start_matches('/'))
    }

    /// GET with the auditor token: status and body (JSON when it is JSON, else a string).
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.get_as(Some(&self.token), path).await
    }

    pub async fn get_as(&self, token: Option<&str>, path: &str) -> (u16, Value) {
        let mut req = client().get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    /// The events the log holds, as its leaves (leaf index = position).
    pub fn logged(&self) -> &[AccessEvent] {
        &self.events
    }

    /// The index of an event's leaf.
    pub fn leaf_of(&self, id: &str) -> u64 {
        self.events.iter().position(|e| e.id == id).unwrap() as u64
    }

    /// The checkpoint verifier key the service publishes.
    pub async fn vkey(&self) -> String {
        let (status, keys) = self.get_as(None, "/v1/keys").await;
        assert_eq!(status, 200);
        keys["checkpointVerifierKey"].as_str().unwrap().to_string()
    }

    pub async fn challenge(&self) -> PresentationBinding {
        let v: Value = client()
            .post(self.url("/v1/challenges"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        PresentationBinding {
            challenge: v["challenge"].as_str().unwrap().to_string(),
            domain: v["domain"].as_str().unwrap().to_string(),
        }
    }

    /// Opens a session with a privilege of `role` at `org`: the answer's status and body.
    pub async fn session(&self, role: &str, org: &str) -> (u16, Value) {
        let holder = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
        let mut subject = privilege_subject(holder.did());
        subject["role"] = json!(role);
        subject["organization"] = json!(org);
        let status = self.office.next_status();
        let vc = credentials::unsigned_credential(
            CredentialKind::ClinicianPrivilege,
            self.office.key.did(),
            subject,
            Utc::now() - chrono::Duration::minutes(1),
            Some(Utc::now() + chrono::Duration::days(30)),
            Some(&status),
        );
        let vc = credentials::issue(vc, &self.office.key, ProofFormat::Jwt)
            .await
            .unwrap();
        let vp = credentials::present(&[vc], &holder, &self.challenge().await, ProofFormat::Jwt)
            .await
            .unwrap();
        let res = client()
            .post(self.url("/v1/audit/sessions"))
            .json(&json!({ "presentation": vp }))
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json().await.unwrap())
    }

    /// Reports more events as the custodian they name (A or B).
    pub async fn add(&mut self, events: Vec<AccessEvent>) {
        for e in &events {
            let key = if e.custodian == HOSPITAL_A {
                &self.a.key
            } else {
                &self.b.key
            };
            report(&self.base, key, std::slice::from_ref(e))
                .await
                .unwrap();
        }
        self.events.extend(events);
    }
}

/// Starts the service with `count` generated events over the last 120 days, and opens an
/// auditor session.
pub async fn start(count: usize, seed: u64) -> AuditLog {
    let dir = tempfile::tempdir().unwrap();
    let a = start_office("hospital-a.test").await;
    let b = start_office("hospital-b.test").await;
    let office = start_office("credentialing.test").await;
    let port = fedgate::harness::free_port().unwrap();
    let config = format!(
        r#"listen = "127.0.0.1:{port}"
did = "{VISIBILITY}"
key_file = "visibility.key.json"
data_dir = "data"
dev_mode = true
checkpoint_interval_ms = 200
review_deadline_hours = {REVIEW_HOURS}
auditors = ["{AUDITOR_ORG}"]
[members]
"{}" = "{}"
"{}" = "{}"
"{}" = "{}"
[trust]
ClinicianPrivilegeCredential = ["{}"]
"#,
        a.key.did(),
        a.base,
        b.key.did(),
        b.base,
        office.key.did(),
        office.base,
        office.key.did(),
    );
    let config_path = dir.path().join("visibility.toml");
    std::fs::write(&config_path, config).unwrap();
    let log_file = dir.path().join("visibility.log");
    let stderr = std::fs::File::create(&log_file).unwrap();
    let mut child = fedgate()
        .args(["visibility", "serve", "--config"])
        .arg(&config_path)
        // Everything the service logs, requests included: the token must be in none of it.
        .env("FEDGATE_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn fedgate");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.split(" listening on ").nth(1) {
                let _ = tx.send(addr.trim().to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the visibility service did not start");
    let base = format!("http://{addr}/");

    let custodians = [HOSPITAL_A, HOSPITAL_B];
    let generated = generate(&LogSpec {
        custodians: &custodians,
        requester_orgs: &REQUESTER_ORGS,
        count,
        span: chrono::Duration::days(120),
        end: Utc::now(),
        seed,
    });
    let mut events = Vec::with_capacity(generated.len());
    for (custodian, office) in [(HOSPITAL_A, &a), (HOSPITAL_B, &b)] {
        let mine: Vec<AccessEvent> = generated
            .iter()
            .filter(|e| e.custodian == custodian)
            .cloned()
            .collect();
        report(&base, &office.key, &mine).await.unwrap();
        events.extend(mine);
    }
    let mut log = AuditLog {
        base,
        token: String::new(),
        events,
        a,
        b,
        office,
        log_file,
        child,
        dir,
    };
    let (status, body) = log.session("auditor", AUDITOR_ORG).await;
    assert_eq!(status, 200, "{body}");
    log.token = body["token"].as_str().unwrap().to_string();
    log
}

/// Every event of `/v1/audit/events?{query}`, page by page with the cursor (`limit` a
/// page): their ids, newest leaf first, and how many pages it took.
pub async fn all_pages(log: &AuditLog, query: &str, limit: usize) -> (Vec<String>, usize) {
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    let mut last_leaf = u64::MAX;
    loop {
        let mut path = format!("/v1/audit/events?{query}&limit={limit}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = log.get(&path).await;
        assert_eq!(status, 200, "{path}: {page}");
        pages += 1;
        for item in page["events"].as_array().unwrap() {
            let leaf = item["leafIndex"].as_u64().unwrap();
            assert!(leaf < last_leaf, "newest first, each leaf once");
            last_leaf = leaf;
            ids.push(item["event"]["id"].as_str().unwrap().to_string());
        }
        match page["cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return (ids, pages),
        }
        assert!(pages < 1000, "paging does not end");
    }
}

/// The ids of `events` matching `keep`, newest leaf first.
pub fn expected(log: &AuditLog, keep: impl Fn(&AccessEvent) -> bool) -> Vec<String> {
    log.logged()
        .iter()
        .rev()
        .filter(|e| keep(e))
        .map(|e| e.id.clone())
        .collect()
}

/// Whether a problem body is a clean problem+json (no trace, no panic, no source path).
pub fn assert_clean_problem(status: u16, body: &Value, want: u16) {
    assert_eq!(status, want, "{body}");
    assert!(
        body["type"].is_string() && body["title"].is_string(),
        "{body}"
    );
    let text = body.to_string();
    for leak in ["panicked", "src/", ".rs:", "backtrace", "RUST_"] {
        assert!(!text.contains(leak), "{text}");
    }
}
