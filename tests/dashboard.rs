//! The auditor dashboard in a real browser: a federation of real processes produces a
//! break-glass access, and headless Chromium, driven over WebDriver (Debian's
//! `chromium-driver`, through fantoccini), shows the event, resolves
//! its review, and sees the log grow consistently.
//!
//! The browser is required: without `chromium` and `chromedriver` the test fails, it does
//! not skip (`scripts/test` installs both). `CHROMIUM` and `CHROMEDRIVER` override the paths.

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
// The browser: chromedriver (a process of ours) driven with fantoccini.
// ---------------------------------------------------------------------------------------

fn tool(env: &str, default: &str, package: &str) -> PathBuf {
    let path = PathBuf::from(std::env::var(env).unwrap_or_else(|_| default.to_string()));
    assert!(
        path.exists(),
        "{} not found: the dashboard test needs headless Chromium and chromedriver. \
         Install them with `apt-get install -y chromium chromium-driver` (package {package}; \
         scripts/test does this), or point {env} at the binary.",
        path.display()
    );
    path
}

struct Browser {
    client: fantoccini::Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        use std::os::unix::process::CommandExt as _;
        let chromium = tool("CHROMIUM", "/usr/bin/chromium", "chromium");
        let chromedriver = tool("CHROMEDRIVER", "/usr/bin/chromedriver", "chromium-driver");
        let port = free_port().unwrap();
        // A process group of its own, so that Chromium, which chromedriver starts, goes
        // with it when the test ends, also on a failed assertion.
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver.display()));
        let profile = tempfile::tempdir().unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium.to_string_lossy(),
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let url = format!("http://127.0.0.1:{port}");
        let t0 = Instant::now();
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match fantoccini::ClientBuilder::new(connector)
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                // chromedriver is still starting.
                Err(_) if t0.elapsed() < Duration::from_secs(20) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("no WebDriver session with chromedriver: {e}"),
            }
        };
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    async fn js(&self, script: &str, args: Value) -> Value {
        let args = match args {
            Value::Array(a) => a,
            other => vec![other],
        };
        self.client.execute(script, args).await.unwrap()
    }

    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .find(fantoccini::Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
    }

    async fn type_into(&self, css: &str, text: &str) {
        self.find(css).await.send_keys(text).await.unwrap();
    }

    async fn click(&self, css: &str) {
        self.find(css).await.click().await.unwrap();
    }

    /// The text of the first element matching `css` ("" when there is none), as the DOM
    /// has it (hidden elements included, unlike WebDriver's rendered text).
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

    async fn quit(self) {
        self.client.clone().close().await.unwrap();
    }
}

impl Drop for Browser {
    /// Ends chromedriver and the Chromium it started (the whole process group).
    fn drop(&mut self) {
        let group = format!("-{}", self.driver.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
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
