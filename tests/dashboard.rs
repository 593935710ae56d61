//! The auditor dashboard in a real browser, headless Chromium driven over WebDriver
//! (Debian's `chromium-driver`, through fantoccini):
//! - a federation of real processes produces a break-glass access; the page shows the
//!   event, resolves its review, and sees the log grow consistently;
//! - on a realistic log (hundreds of events over four months), an auditor filters by
//!   failing check and by patient, pages, sorts, opens an event and sees its inclusion
//!   proof verified in the page, resolves an overdue review, draws the charts and
//!   downloads the FHIR export and an evidence package that verifies offline (and, once
//!   tampered with, does not); bad input gives a clean message; the token is in no URL;
//! - a patient who proves control of their DID reads their history in plain language.
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

use federation::keys::{KeyAlgorithm, KeyPair};
use support::audit::{expected, start as start_log, AuditLog, HOSPITAL_A, REVIEW_HOURS};

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
        Self::start_with(None).await
    }

    /// A browser that saves downloads into `downloads`, when given.
    async fn start_with(downloads: Option<&std::path::Path>) -> Browser {
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
                    "--window-size=1400,1000",
                ],
                "prefs": {
                    "download.default_directory": downloads
                        .map(|d| d.display().to_string())
                        .unwrap_or_default(),
                    "download.prompt_for_download": false,
                    "safebrowsing.enabled": false,
                },
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

    /// Waits until the row of the event with `decision_id` is in the events table;
    /// returns the table's text.
    async fn wait_row(&self, decision_id: &str, within: Duration) -> String {
        let t0 = Instant::now();
        loop {
            let found = self
                .js(
                    "return document.querySelector(`#event-rows tr[data-decision-id='${arguments[0]}']`) !== null;",
                    json!([decision_id]),
                )
                .await;
            if found == json!(true) {
                return self.text("#event-rows").await;
            }
            if t0.elapsed() > within {
                let status = self.text("#status").await;
                let rows = self.text("#event-rows").await;
                panic!("no row for {decision_id}; the table says {rows:?} (status: {status:?})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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

    // The first page of events shows the break-glass event, flagged, without patient data.
    let stream = browser
        .wait_row(&decision_id, Duration::from_secs(15))
        .await;
    assert!(stream.contains("ETREAT"), "{stream}");
    assert!(!stream.contains(&s.mrn), "no patient data in the stream");
    let flagged = browser
        .js(
            "return document.querySelector(`#event-rows tr[data-decision-id='${arguments[0]}']`).cells[8].textContent;",
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
    browser.type_into("#f-patient", &patient_ref).await;
    browser.click("#search-button").await;
    let history = browser
        .wait_text("#search-status", Duration::from_secs(10), |t| {
            t.starts_with("1 event(s)")
        })
        .await;
    assert!(history.contains("no older events"), "{history}");
    let rows = browser.wait_row(&decision_id, Duration::from_secs(1)).await;
    assert!(!rows.contains(&s.mrn), "{rows}");

    // A token handed over in the fragment connects and leaves the address bar.
    browser.goto("about:blank").await;
    browser.goto(&format!("{dashboard}#token={token}")).await;
    browser
        .wait_row(&decision_id, Duration::from_secs(10))
        .await;
    let href = browser.js("return location.href;", json!([])).await;
    assert!(!href.as_str().unwrap().contains(&token), "{href}");

    browser.quit().await;
    eprintln!("dashboard test took {:?}", started.elapsed());
}

/// Waits until `dir` holds a file named `name` (complete: no `.crdownload` beside it).
async fn downloaded(dir: &std::path::Path, name: &str) -> Vec<u8> {
    let t0 = Instant::now();
    let path = dir.join(name);
    loop {
        let partial = std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .any(|e| e.file_name().to_string_lossy().ends_with(".crdownload"))
            })
            .unwrap_or(false);
        if path.is_file() && !partial {
            return std::fs::read(&path).unwrap();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{name} was never downloaded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sets a form control's value as a person choosing it would (a select's option).
async fn choose(browser: &Browser, css: &str, value: &str) {
    browser
        .js(
            "const e = document.querySelector(arguments[0]); e.value = arguments[1]; \
             e.dispatchEvent(new Event('change')); return e.value;",
            json!([css, value]),
        )
        .await;
}

/// The cells of column `col` of the result rows.
async fn column(browser: &Browser, col: usize) -> Vec<String> {
    let v = browser
        .js(
            "return Array.from(document.querySelectorAll('#event-rows tr'), r => r.cells[arguments[0]].textContent);",
            json!([col]),
        )
        .await;
    v.as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect()
}

async fn search_and_wait(browser: &Browser) -> String {
    browser
        .js(
            "document.getElementById('search-status').textContent = '';",
            json!([]),
        )
        .await;
    browser.click("#search-button").await;
    browser
        .wait_text("#search-status", Duration::from_secs(15), |t| {
            t.contains("on this page") || t.starts_with("Search refused")
        })
        .await
}

/// Saves a screenshot of the page when `DASHBOARD_SCREENSHOTS` names a folder.
async fn screenshot(browser: &Browser, name: &str) {
    if let Ok(dir) = std::env::var("DASHBOARD_SCREENSHOTS") {
        let png = browser.client.screenshot().await.unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(std::path::Path::new(&dir).join(name), png).unwrap();
    }
}

#[tokio::test]
async fn an_auditor_searches_pages_verifies_exports_and_reviews_a_realistic_log() {
    let started = Instant::now();
    let log: AuditLog = start_log(420, 7).await;
    let downloads = tempfile::tempdir().unwrap();
    let browser = Browser::start_with(Some(downloads.path())).await;
    let dashboard = format!("{}dashboard", log.base);
    browser.goto(&dashboard).await;
    browser.type_into("#token", &log.token).await;
    browser.click("#connect").await;
    let first = browser
        .wait_text("#search-status", Duration::from_secs(15), |t| {
            t.contains("on this page")
        })
        .await;
    assert!(first.starts_with("50 event(s)"), "{first}");
    assert!(first.contains("older events follow"), "{first}");

    // Paging: the second page continues below the first, and back.
    let page1: Vec<u64> = column(&browser, 0)
        .await
        .iter()
        .map(|c| c.parse().unwrap())
        .collect();
    assert_eq!(page1[0], 419);
    browser.click("#page-older").await;
    browser
        .wait_text("#page-info", Duration::from_secs(10), |t| {
            t.starts_with("Page 2")
        })
        .await;
    let page2: Vec<u64> = column(&browser, 0)
        .await
        .iter()
        .map(|c| c.parse().unwrap())
        .collect();
    assert_eq!(page2.len(), 50);
    assert_eq!(page2[0], page1[49] - 1, "page 2 starts right below page 1");
    browser.click("#page-older").await;
    browser
        .wait_text("#page-info", Duration::from_secs(10), |t| {
            t.starts_with("Page 3")
        })
        .await;
    browser.click("#page-newer").await;
    browser
        .wait_text("#page-info", Duration::from_secs(10), |t| {
            t.starts_with("Page 2")
        })
        .await;
    assert_eq!(
        column(&browser, 0).await,
        page2.iter().map(u64::to_string).collect::<Vec<_>>()
    );
    // Sorting a page by a column, with the keyboard's Enter on its header button.
    browser
        .find("#results button.sort[data-key='leafIndex']")
        .await
        .send_keys("\u{E007}")
        .await
        .unwrap();
    let ascending: Vec<u64> = column(&browser, 0)
        .await
        .iter()
        .map(|c| c.parse().unwrap())
        .collect();
    let mut sorted = page2.clone();
    sorted.sort_unstable();
    assert_eq!(ascending, sorted);
    let sort = browser
        .js(
            "return document.querySelector(\"#results button.sort[data-key='leafIndex']\").parentElement.getAttribute('aria-sort');",
            json!([]),
        )
        .await;
    assert_eq!(sort, "ascending");

    // Filter by failing check.
    choose(&browser, "#f-failed-check", "proof").await;
    choose(&browser, "#f-limit", "250").await;
    let status = search_and_wait(&browser).await;
    let want = expected(&log, |e| e.failed_check.as_deref() == Some("proof"));
    assert!(!want.is_empty());
    assert!(
        status.starts_with(&format!("{} event(s)", want.len())),
        "{status}"
    );
    assert!(column(&browser, 7).await.iter().all(|c| c == "proof"));
    assert!(column(&browser, 6).await.iter().all(|c| c == "denied"));
    screenshot(&browser, "dashboard-failing-check.png").await;

    // Filter by patient.
    choose(&browser, "#f-failed-check", "").await;
    let patient = log
        .logged()
        .iter()
        .rev()
        .find_map(|e| e.patient_ref.clone().filter(|_| e.custodian == HOSPITAL_A))
        .unwrap();
    browser.type_into("#f-patient", &patient).await;
    let status = search_and_wait(&browser).await;
    let want = expected(&log, |e| e.patient_ref.as_deref() == Some(patient.as_str()));
    assert!(
        status.starts_with(&format!("{} event(s)", want.len())),
        "{status}"
    );
    let ids = browser
        .js(
            "return Array.from(document.querySelectorAll('#event-rows tr'), r => r.dataset.eventId);",
            json!([]),
        )
        .await;
    // The page is still sorted by leaf, oldest first, as chosen above.
    let oldest_first: Vec<&String> = want.iter().rev().collect();
    assert_eq!(ids, json!(oldest_first));

    // One event in detail, opened with the keyboard: its proof is verified in the page.
    browser
        .find("#event-rows button.details")
        .await
        .send_keys("\u{E007}")
        .await
        .unwrap();
    let verdict = browser
        .wait_text("#proof-status", Duration::from_secs(15), |t| {
            t.starts_with("Verified") || t.starts_with("NOT VERIFIED")
        })
        .await;
    assert!(verdict.starts_with("Verified in this browser"), "{verdict}");
    let steps = browser.text("#proof-steps").await;
    assert!(steps.contains("inclusion proof"), "{steps}");
    assert!(
        steps.contains("Ed25519 signature of the checkpoint"),
        "{steps}"
    );
    assert!(!steps.contains('\u{2717}'), "no step failed: {steps}");
    let focused = browser
        .js(
            "return document.activeElement && document.activeElement.id;",
            json!([]),
        )
        .await;
    assert_eq!(focused, "detail", "focus moves to the details");
    screenshot(&browser, "dashboard-event-proof.png").await;

    // The exports, for the filters shown: FHIR, then an evidence package.
    browser.click("#export-fhir").await;
    let fhir = downloaded(downloads.path(), "audit-events.fhir.json").await;
    let bundle: Value = serde_json::from_slice(&fhir).unwrap();
    assert_eq!(bundle["resourceType"], "Bundle");
    assert_eq!(bundle["entry"].as_array().unwrap().len(), want.len());
    browser.click("#export-evidence").await;
    let evidence = downloaded(downloads.path(), "evidence.json").await;
    let vkey = log.vkey().await;
    let file = downloads.path().join("evidence.json");
    let out = support::fedgate()
        .args(["visibility", "verify-evidence"])
        .arg(&file)
        .args(["--key", &vkey])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut doc: Value = serde_json::from_slice(&evidence).unwrap();
    let package = doc["package"].as_str().unwrap().replacen(
        &format!("\"patientRef\":\"{patient}\""),
        "\"patientRef\":\"pt-someone-else\"",
        1,
    );
    doc["package"] = Value::String(package);
    let tampered = downloads.path().join("tampered.json");
    std::fs::write(&tampered, serde_json::to_vec(&doc).unwrap()).unwrap();
    let out = support::fedgate()
        .args(["visibility", "verify-evidence"])
        .arg(&tampered)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a tampered package verified");

    // Bad input: a clean message, no trace.
    browser.type_into("#f-from", "yesterday").await;
    let status = search_and_wait(&browser).await;
    assert!(status.starts_with("Search refused: 400"), "{status}");
    assert!(status.contains("RFC 3339"), "{status}");
    assert!(
        !status.contains("panicked") && !status.contains(".rs"),
        "{status}"
    );
    browser.click("#reset-button").await;

    // The overdue reviews are highlighted; resolving one takes it off the queue.
    let deadline = chrono::Utc::now() - chrono::Duration::hours(REVIEW_HOURS);
    let overdue = log
        .logged()
        .iter()
        .filter(|e| e.break_glass && e.time < deadline)
        .count();
    assert!(overdue > 0);
    browser.click("#r-overdue").await;
    browser.click("#review-filters button[type='submit']").await;
    let want_count = format!("({overdue}, {overdue} overdue)");
    browser
        .wait_text("#review-count", Duration::from_secs(10), |t| {
            t == want_count
        })
        .await;
    let target = browser
        .js(
            "const r = document.querySelector('#review-rows tr.overdue'); return r.dataset.eventId;",
            json!([]),
        )
        .await;
    let target = target.as_str().unwrap().to_string();
    let badge = browser
        .text(&format!("#review-rows tr[data-event-id='{target}'] .badge"))
        .await;
    assert_eq!(badge, "OVERDUE");
    let row = format!("#review-rows tr[data-event-id='{target}']");
    assert!(browser
        .text(&row)
        .await
        .contains(fedgate::harness::events::JUSTIFICATION));
    browser
        .type_into(
            &format!("{row} input.note"),
            "reviewed with the ED lead: justified",
        )
        .await;
    screenshot(&browser, "dashboard-reviews.png").await;
    browser.click(&format!("{row} button.resolve")).await;
    browser
        .wait_text("#review-notice", Duration::from_secs(10), |t| {
            t.starts_with("Resolved")
        })
        .await;
    browser
        .wait_text("#review-count", Duration::from_secs(10), |t| {
            t == format!("({}, {} overdue)", overdue - 1, overdue - 1)
        })
        .await;
    browser.click("#export-decisions").await;
    let decisions = downloaded(downloads.path(), "review-decisions.csv").await;
    let decisions = String::from_utf8(decisions).unwrap();
    assert!(decisions.contains(&target) && decisions.contains("reviewed with the ED lead"));

    // Charts over the last 90 days, drawn by the vendored library.
    choose(&browser, "#c-range", "2160").await;
    browser.click("#chart-form button").await;
    let charted = browser
        .wait_text("#chart-status", Duration::from_secs(15), |t| {
            t.starts_with("Charted") || t.starts_with("Charts refused")
        })
        .await;
    assert!(charted.starts_with("Charted"), "{charted}");
    let canvases = browser
        .js(
            "return document.querySelectorAll('#charts canvas').length;",
            json!([]),
        )
        .await;
    assert_eq!(canvases, 4, "four time-series charts");
    let denials = browser.text("#denials-rows").await;
    assert!(denials.contains("proof"), "{denials}");
    browser
        .js(
            "document.getElementById('charts').scrollIntoView();",
            json!([]),
        )
        .await;
    screenshot(&browser, "dashboard-charts.png").await;

    // The token was sent in headers only: no URL the page loaded holds it.
    let leaked = browser
        .js(
            "return performance.getEntries().map(e => e.name).filter(n => n.includes(arguments[0]));",
            json!([log.token]),
        )
        .await;
    assert_eq!(leaked, json!([]));
    let res = reqwest::get(&dashboard).await.unwrap();
    assert_eq!(res.headers()["referrer-policy"], "no-referrer");
    browser.quit().await;
    let logged = std::fs::read_to_string(&log.log_file).unwrap();
    assert!(
        !logged.contains(&log.token),
        "the token reached the service's log"
    );
    eprintln!("realistic dashboard test took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_patient_reads_their_own_history_in_plain_language() {
    let mut log: AuditLog = start_log(60, 3).await;
    let patient = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let digest = federation::events::patient_did_digest(patient.did());
    let mine: Vec<federation::events::AccessEvent> = (0..3)
        .map(|i| federation::events::AccessEvent {
            requester_org: Some("did:web:clinic-c.test".into()),
            patient_did_digests: vec![digest.clone()],
            data_classes: vec!["Observation".into()],
            record_count: 4,
            reasons: vec!["consent permits TREAT for Observation".into()],
            time: chrono::Utc::now() - chrono::Duration::days(3 - i),
            ..test_support::allowed_event(HOSPITAL_A)
        })
        .enumerate()
        .map(|(i, mut e)| {
            if i == 0 {
                e.break_glass = true;
                e.review_required = true;
                e.purpose = "ETREAT".into();
                e.justification = Some(fedgate::harness::events::JUSTIFICATION.into());
                e.reasons = vec![
                    "break-glass ETREAT without consent for Observation; review required".into(),
                ];
            }
            e
        })
        .collect();
    log.add(mine).await;

    let browser = Browser::start().await;
    browser
        .goto(&format!("{}dashboard/patient", log.base))
        .await;
    browser.click("#get-challenge").await;
    let challenge = browser
        .wait_text("#challenge", Duration::from_secs(10), |t| !t.is_empty())
        .await;
    let domain = browser.text("#domain").await;
    let consent = test_support::self_issued_consent(&patient, HOSPITAL_A, ProofFormat::Jwt).await;
    let vp = credentials::present(
        &[consent],
        &patient,
        &federation::credentials::PresentationBinding { challenge, domain },
        ProofFormat::Jwt,
    )
    .await
    .unwrap();
    let text = vp
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| vp.to_string());
    browser.type_into("#presentation", &text).await;
    browser.click("#show-history").await;
    let summary = browser
        .wait_text("#history-summary", Duration::from_secs(15), |t| {
            !t.is_empty()
        })
        .await;
    assert_eq!(
        summary,
        "3 requests named you, 1 of them in an emergency without your consent (break-the-glass)."
    );
    let history = browser.text("#history").await;
    assert!(history.contains("asked hospital-a.test for"), "{history}");
    assert!(
        history.contains("to treat you in an emergency"),
        "{history}"
    );
    assert!(
        history.contains("The privacy office reviews every such access"),
        "{history}"
    );
    assert!(!history.contains(&digest), "no digests, in plain language");
    screenshot(&browser, "dashboard-patient.png").await;
    // A presentation used once is not accepted again.
    browser.type_into("#presentation", &text).await;
    browser.click("#show-history").await;
    let refused = browser
        .wait_text("#patient-status", Duration::from_secs(10), |t| {
            t.contains("not accepted")
        })
        .await;
    assert!(!refused.contains("panicked"), "{refused}");
    browser.quit().await;
}
