//! The auditor dashboard in a real browser: a federation of real processes produces a
//! break-glass access, and headless Chromium, driven over WebDriver (Debian's
//! `chromium-driver`, spoken to with plain HTTP through reqwest), shows the event, resolves
//! its review, and sees the log grow consistently.
//!
//! The browser is required: without `chromium` and `chromedriver` the test fails, it does
//! not skip (`.ci/run` installs both). `CHROMIUM` and `CHROMEDRIVER` override the paths.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use federation::credentials::{self, ProofFormat};
use fedgate::harness::{
    contract, fixture_patient, free_port, Custodian, Federation, Gateway, Office, Visibility,
    MRN_SYSTEM,
};
use serde_json::{json, Value};
use support::{AUDITOR_ORG, CUSTODIAN, REQUESTER_ORG};

const JUSTIFICATION: &str = "unconscious patient in the emergency department, no consent on file";

struct Setup {
    office: Office,
    visibility: Visibility,
    gateway: Gateway,
    mrn: String,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (file, mrn) = fixture_patient().unwrap();
    let Federation {
        mut gateways,
        visibility,
        office,
    } = support::federation(dir.path())
        .gateway(
            Custodian::new(CUSTODIAN)
                .records(vec![file])
                .config(&format!(
                    "[custodian]\nbreak_glass_minutes = 30\n{}",
                    contract(
                        CUSTODIAN,
                        REQUESTER_ORG,
                        &["clinical"],
                        &["TREAT", "ETREAT"]
                    )
                )),
        )
        .start()
        .unwrap();
    Setup {
        office,
        visibility,
        gateway: gateways.remove(0),
        mrn,
        _dir: dir,
    }
}

/// One break-glass exchange (ETREAT, justified, no consent); returns its decision id.
async fn break_glass(s: &Setup) -> String {
    let (key, privilege) = s
        .office
        .staff(
            "physician",
            REQUESTER_ORG,
            CUSTODIAN,
            &["clinical"],
            &["read"],
        )
        .await
        .unwrap();
    let binding = s.gateway.challenge().await.unwrap();
    let vp = credentials::present(&[privilege], &key, &binding, ProofFormat::Jwt)
        .await
        .unwrap();
    let body = json!({
        "purpose": "ETREAT",
        "patient": {"system": MRN_SYSTEM, "value": s.mrn},
        "data_classes": ["Patient", "Observation"],
        "presentation": vp,
        "justification": JUSTIFICATION,
    });
    let (status, headers, bytes) = s
        .gateway
        .post_raw("/v1/exchange/clinical", &body, None)
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    assert_eq!(headers["fedgate-break-glass"], "true");
    headers["fedgate-decision-id"].to_str().unwrap().to_string()
}

/// An auditor session on the visibility service.
async fn auditor_token(s: &Setup) -> String {
    s.visibility
        .auditor_login(&s.office, AUDITOR_ORG)
        .await
        .unwrap()
}

async fn reviews(s: &Setup, token: &str) -> Vec<Value> {
    let body: Value = reqwest::Client::new()
        .get(format!("{}v1/audit/reviews", s.visibility.url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["reviews"].as_array().unwrap().clone()
}

// ---------------------------------------------------------------------------------------
// A minimal WebDriver client (W3C WebDriver over HTTP, to chromedriver).
// ---------------------------------------------------------------------------------------

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn tool(env: &str, default: &str, package: &str) -> PathBuf {
    let path = PathBuf::from(std::env::var(env).unwrap_or_else(|_| default.to_string()));
    assert!(
        path.exists(),
        "{} not found: the dashboard test needs headless Chromium and chromedriver. \
         Install them with `apt-get install -y chromium chromium-driver` (package {package}; \
         .ci/run does this), or point {env} at the binary.",
        path.display()
    );
    path
}

struct Browser {
    http: reqwest::Client,
    base: String,
    session: String,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let chromium = tool("CHROMIUM", "/usr/bin/chromium", "chromium");
        let chromedriver = tool("CHROMEDRIVER", "/usr/bin/chromedriver", "chromium-driver");
        let port = free_port().unwrap();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        let profile = tempfile::tempdir().unwrap();
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let mut browser = Browser {
            http,
            base,
            session: String::new(),
            driver,
            _profile: profile,
        };
        let t0 = Instant::now();
        loop {
            let ready = browser
                .http
                .get(format!("{}/status", browser.base))
                .send()
                .await
                .ok()
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "chromedriver did not come up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile_arg = format!("--user-data-dir={}", browser._profile.path().display());
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.to_string_lossy(),
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", profile_arg,
                ],
            },
        }}});
        let created = browser.call("POST", "/session", caps).await;
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
            .to_string();
        browser
    }

    /// One WebDriver command; returns its `value`, panicking on a WebDriver error.
    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        };
        let res = req.send().await.unwrap();
        let status = res.status();
        let v: Value = res.json().await.unwrap();
        assert!(status.is_success(), "WebDriver {method} {path}: {v}");
        v["value"].clone()
    }

    async fn session(&self, method: &str, path: &str, body: Value) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
            .await
    }

    async fn goto(&self, url: &str) {
        self.session("POST", "/url", json!({ "url": url })).await;
    }

    async fn js(&self, script: &str, args: Value) -> Value {
        self.session(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": args}),
        )
        .await
    }

    async fn find(&self, css: &str) -> String {
        let v = self
            .session(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css).await;
        self.session(
            "POST",
            &format!("/element/{el}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let el = self.find(css).await;
        self.session("POST", &format!("/element/{el}/click"), json!({}))
            .await;
    }

    /// The text of the first element matching `css` ("" when there is none).
    async fn text(&self, css: &str) -> String {
        self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';",
            json!([css]),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    /// Waits until the text of `css` satisfies `ok`; returns it.
    async fn wait_text(&self, css: &str, within: Duration, ok: impl Fn(&str) -> bool) -> String {
        let t0 = Instant::now();
        loop {
            let text = self.text(css).await;
            if ok(&text) {
                return text;
            }
            if t0.elapsed() > within {
                let status = self.text("#status").await;
                panic!("{css} never got there; it says {text:?} (status: {status:?})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn quit(mut self) {
        let path = format!("/session/{}", self.session);
        self.call("DELETE", &path, Value::Null).await;
        self.session.clear();
    }
}

impl Drop for Browser {
    /// Also on a failed assertion: the session is deleted first (chromedriver then closes
    /// Chromium, which killing chromedriver alone would leave running), with a plain
    /// blocking request since `drop` cannot await.
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let addr = self.base.trim_start_matches("http://").to_string();
            if let Ok(mut stream) = std::net::TcpStream::connect(&addr) {
                use std::io::{Read, Write};
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let _ = write!(
                    stream,
                    "DELETE /session/{} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n",
                    self.session
                );
                // chromedriver keeps the connection open: read until the JSON body ends.
                let (mut got, mut buf) = (Vec::new(), [0u8; 1024]);
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    got.extend_from_slice(&buf[..n]);
                    if got.trim_ascii_end().ends_with(b"}") {
                        break;
                    }
                }
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[tokio::test]
async fn the_dashboard_shows_events_and_resolves_break_glass_reviews() {
    let started = Instant::now();
    let s = setup().await;
    let decision_id = break_glass(&s).await;
    assert!(
        s.gateway.drained(Duration::from_secs(30)).await,
        "the outbox never drained"
    );
    let token = auditor_token(&s).await;
    let queued = reviews(&s, &token).await;
    assert_eq!(queued.len(), 1, "{queued:?}");
    let event_id = queued[0]["event"]["id"].as_str().unwrap().to_string();

    // The page and its assets carry a CSP that lets them run and nothing else.
    let dashboard = format!("{}dashboard", s.visibility.url());
    for path in ["", "/app.js", "/app.css"] {
        let res = reqwest::get(format!("{dashboard}{path}")).await.unwrap();
        assert_eq!(res.status(), 200);
        let csp = res.headers()["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe"),
            "{csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    }

    let browser = Browser::start().await;
    browser.goto(&dashboard).await;
    browser.type_into("#token", &token).await;
    browser.click("#connect").await;

    // The live stream shows the break-glass event, flagged, without patient data.
    let stream = browser
        .wait_text("#event-rows", Duration::from_secs(15), |t| {
            t.contains(&decision_id)
        })
        .await;
    assert!(stream.contains("ETREAT"), "{stream}");
    assert!(!stream.contains(&s.mrn), "no patient data in the stream");
    let flagged = browser
        .js(
            "return document.querySelector(`#event-rows tr[data-decision-id='${arguments[0]}']`).cells[6].textContent;",
            json!([decision_id]),
        )
        .await;
    assert_eq!(flagged, "yes");

    // The review queue lists it; resolving it through the page empties the queue.
    let row = format!("#review-rows tr[data-event-id='{event_id}']");
    let queue = browser
        .wait_text(&row, Duration::from_secs(10), |t| t.contains(JUSTIFICATION))
        .await;
    assert!(queue.contains("ETREAT"), "{queue}");
    let size_before = browser
        .wait_text("#log-size", Duration::from_secs(10), |t| {
            t.parse::<u64>().is_ok()
        })
        .await;
    browser
        .type_into(
            &format!("{row} input.note"),
            "justified: <b>ED admission</b> & confirmed by the attending",
        )
        .await;
    browser.click(&format!("{row} button.resolve")).await;
    browser
        .wait_text("#review-notice", Duration::from_secs(10), |t| {
            t.starts_with("Resolved")
        })
        .await;
    let t0 = Instant::now();
    while !reviews(&s, &token).await.is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the review queue is still not empty"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser
        .wait_text("#review-empty", Duration::from_secs(5), |_| true)
        .await;
    assert_eq!(
        browser
            .js(
                "return document.querySelectorAll('#review-rows tr').length;",
                json!([])
            )
            .await,
        0
    );
    let notes: Value = reqwest::Client::new()
        .get(format!(
            "{}v1/audit/reviews/{event_id}/notes",
            s.visibility.url()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        notes["notes"][0]["note"],
        "justified: <b>ED admission</b> & confirmed by the attending"
    );

    // The review leaf grew the log; the page verified the consistency proof.
    let consistency = browser
        .wait_text("#log-consistency", Duration::from_secs(10), |t| {
            t.starts_with("verified") || t.contains("INCONSISTENT") || t.contains("SHRANK")
        })
        .await;
    assert!(consistency.starts_with("verified"), "{consistency}");
    let size_after: u64 = browser.text("#log-size").await.parse().unwrap();
    assert!(size_after > size_before.parse::<u64>().unwrap());

    // Per-patient history by patient reference (as the log records it).
    let logged: Value = reqwest::Client::new()
        .get(format!("{}v1/audit/events?limit=10", s.visibility.url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let patient_ref = logged["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"]["decisionId"] == decision_id.as_str())
        .and_then(|e| e["event"]["patientRef"].as_str())
        .map(str::to_string)
        .unwrap_or_else(|| panic!("the event has no patient reference: {logged}"));
    browser.type_into("#patient-value", &patient_ref).await;
    browser.click("#patient-form button").await;
    let history = browser
        .wait_text("#patient-status", Duration::from_secs(10), |t| {
            t.contains("event(s)")
        })
        .await;
    assert!(history.starts_with("1 event(s)"), "{history}");
    let rows = browser.text("#patient-rows").await;
    assert!(rows.contains(&decision_id), "{rows}");

    // A token handed over in the fragment connects and leaves the address bar.
    browser.goto("about:blank").await;
    browser.goto(&format!("{dashboard}#token={token}")).await;
    browser
        .wait_text("#event-rows", Duration::from_secs(10), |t| {
            t.contains(&decision_id)
        })
        .await;
    let href = browser.js("return location.href;", json!([])).await;
    assert!(!href.as_str().unwrap().contains(&token), "{href}");

    browser.quit().await;
    eprintln!("dashboard test took {:?}", started.elapsed());
}
