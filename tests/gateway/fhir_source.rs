//! The organization's own FHIR server as the record source, end to end: a real FHIR R4
//! server (`test_support::fhir_server`, installed by `scripts/test`) holding generated
//! patients, one of them with more than 5,000 resources, and gateway processes reading
//! from it: directly, and through a proxy that breaks the server's answers one way at a
//! time.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use test_support::fhir_server::FhirServer;

use super::*;

const CLASSES: &[&str] = &[
    "Patient",
    "Condition",
    "Encounter",
    "Observation",
    "Procedure",
    "MedicationRequest",
    "Immunization",
    "AllergyIntolerance",
    "DiagnosticReport",
    "Practitioner",
    "Organization",
];

const JUSTIFICATION: &str = "unconscious patient in the emergency department, no consent on file";

fn patients() -> Vec<synth::Patient> {
    let mut out: Vec<synth::Patient> = (0..12)
        .map(|seed| {
            synth::Generator::new(synth::Options {
                seed: 9000 + seed,
                ..synth::Options::default()
            })
            .patient()
        })
        .collect();
    out.push(
        synth::Generator::new(synth::Options {
            seed: 9100,
            min_resources: 5200,
            max_resources: 5200,
            ..synth::Options::default()
        })
        .patient(),
    );
    out
}

async fn fhir_holding(patients: &[synth::Patient]) -> FhirServer {
    let fhir = FhirServer::start(&[]).unwrap_or_else(|e| panic!("{e}"));
    for p in patients {
        fhir.load(&p.bundle).await.unwrap();
    }
    fhir
}

/// A gateway whose record source is the FHIR server at `url`.
pub(super) fn gateway_reading(url: &str) -> Fed {
    let dir = tempfile::tempdir().unwrap();
    let office = Office::start(&exe(), &dir.path().join("office"), OFFICE).unwrap();
    let spec = GatewaySpec {
        port: 0,
        did: CUSTODIAN.into(),
        records: Vec::new(),
        policies: repo("policies"),
        extra_toml: format!(
            "{}\n[records]\nsource = \"fhir\"\nurl = \"{url}\"\n",
            extra_toml(&office, "test")
        ),
    };
    let gateway = Gateway::start(&exe(), &dir.path().join("gateway"), &spec).unwrap();
    Fed {
        _dir: dir,
        office,
        gateway,
    }
}

/// One break-glass exchange for `mrn`: status and body.
async fn exchange(fed: &Fed, doc: &Clinician, mrn: &str) -> (u16, Value) {
    let (v, _) = vp(
        &fed.gateway,
        &doc.key,
        std::slice::from_ref(&doc.credential),
    )
    .await;
    let body = exchange_body("ETREAT", mrn, CLASSES, &v, Some(JUSTIFICATION));
    // A client that outwaits the gateway's own deadlines (the harness's gives up at 15 s).
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/v1/exchange/clinical",
            fed.gateway.process.url()
        ))
        .json(&body)
        .timeout(Duration::from_secs(90))
        .send()
        .await
        .expect("the gateway answered");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn emergency_doctor(fed: &Fed) -> Clinician {
    clinician(
        fed,
        "physician",
        CUSTODIAN,
        &["clinical"],
        &["read"],
        REQUESTER_ORG,
    )
    .await
}

/// What of an answer does not depend on the gateway's keys or the server's ids: each
/// resource's type and codes, sorted.
fn shape(bundle: &Value) -> Vec<String> {
    let mut out: Vec<String> = entries(bundle)
        .iter()
        .map(|r| {
            let codes: Vec<&str> = ["code", "vaccineCode", "medicationCodeableConcept", "type"]
                .iter()
                .flat_map(|f| {
                    r[*f]["coding"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|c| c["code"].as_str())
                })
                .collect();
            format!(
                "{} {}",
                r["resourceType"].as_str().unwrap_or("?"),
                codes.join(",")
            )
        })
        .collect();
    out.sort();
    out
}

/// The events in a stopped gateway's outbox.
fn outbox(gateway: &Gateway) -> Vec<Value> {
    crate::stored(gateway, "outbox")
}

/// The gateway process's peak resident memory, in MB.
fn peak_mb(gateway: &Gateway) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", gateway.process.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        / 1024
}

/// Generated patients held by a real FHIR server give the same answers as the embedded
/// store, the large one (5,200 resources) included, and each exchange leaves one event.
#[tokio::test]
async fn fhir_server_answers_match_the_embedded_store() {
    let patients = patients();
    let fhir = fhir_holding(&patients).await;
    let mut from_fhir = gateway_reading(&fhir.base);
    let embedded = federation_holding(&patients, "").await;
    let doc_f = emergency_doctor(&from_fhir).await;
    let doc_e = emergency_doctor(&embedded).await;
    for p in &patients {
        let mrn = &p.identity.mrn;
        let started = Instant::now();
        let (status, a) = exchange(&from_fhir, &doc_f, mrn).await;
        let fhir_time = started.elapsed();
        assert_eq!(status, 200, "{a}");
        let started = Instant::now();
        let (status, b) = exchange(&embedded, &doc_e, mrn).await;
        let embedded_time = started.elapsed();
        assert_eq!(status, 200, "{b}");
        assert_eq!(a["total"], b["total"], "same number of resources");
        if next_link(&a).is_none() {
            assert_eq!(shape(&a), shape(&b));
        } else {
            assert!(next_link(&b).is_some(), "both answers come in pages");
            eprintln!(
                "{} resources: FHIR server {:?}, embedded store {:?}",
                p.bundle["entry"].as_array().map_or(0, Vec::len),
                fhir_time,
                embedded_time
            );
        }
    }
    assert!(
        patients
            .iter()
            .any(|p| p.bundle["entry"].as_array().unwrap().len() > 5000),
        "a patient of more than 5,000 resources was read"
    );
    from_fhir.gateway.process.stop();
    let events = outbox(&from_fhir.gateway);
    assert_eq!(events.len(), patients.len(), "one event per exchange");
    assert!(events.iter().all(|e| e["decision"] == "allow"));
    drop(fhir);
}

/// How the proxy in front of the FHIR server breaks the patient's record reads (the
/// patient lookup is left alone, so that each exchange reaches its decision).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Fault {
    None,
    Status500,
    Outcome500,
    Html,
    Slow,
    SelfNext,
    ForeignNext,
    HugePages,
    OtherPatient,
}

const FAULTS: [Fault; 8] = [
    Fault::Status500,
    Fault::Outcome500,
    Fault::Html,
    Fault::Slow,
    Fault::SelfNext,
    Fault::ForeignNext,
    Fault::HugePages,
    Fault::OtherPatient,
];

struct Proxy {
    upstream: String,
    origin: String,
    fault: AtomicU8,
}

impl Proxy {
    fn fault(&self) -> Fault {
        FAULTS
            .into_iter()
            .find(|f| *f as u8 == self.fault.load(Ordering::SeqCst))
            .unwrap_or(Fault::None)
    }
}

async fn proxied(
    axum::extract::State(proxy): axum::extract::State<Arc<Proxy>>,
    uri: axum::http::Uri,
) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    let upstream = format!("{}{path_and_query}", proxy.upstream);
    let record_read = path_and_query.contains("$everything")
        || path_and_query.contains("patient=")
        || (uri.path().starts_with("/Patient/") && !path_and_query.contains("identifier"));
    let fault = if record_read {
        proxy.fault()
    } else {
        Fault::None
    };
    let fhir_json = [("content-type", "application/fhir+json")];
    match fault {
        Fault::Status500 => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        Fault::Outcome500 => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                fhir_json,
                json!({"resourceType": "OperationOutcome",
                    "issue": [{"severity": "fatal", "code": "exception", "diagnostics": "database unavailable"}]})
                .to_string(),
            )
                .into_response()
        }
        Fault::Html => {
            return (
                StatusCode::OK,
                [("content-type", "text/html")],
                "<html><body>Maintenance window</body></html>",
            )
                .into_response()
        }
        Fault::Slow => tokio::time::sleep(Duration::from_secs(40)).await,
        Fault::HugePages => {
            // 30 MB pages of padding, each pointing to another.
            let filler = "x".repeat(30 * 1024 * 1024);
            let page = json!({"resourceType": "Bundle", "type": "searchset",
                "link": [{"relation": "next", "url": format!("{}{}&huge={}", proxy.origin, path_and_query, filler.len())}],
                "entry": [{"resource": {"resourceType": "Basic", "id": "pad", "text": {"div": filler}}}]});
            return (StatusCode::OK, fhir_json, page.to_string()).into_response();
        }
        _ => {}
    }
    let Ok(resp) = reqwest::Client::new().get(&upstream).send().await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let status = resp.status().as_u16();
    let Ok(mut body) = resp.json::<Value>().await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    // The server's links name the server: the proxy answers for it.
    let text = body.to_string().replace(&proxy.upstream, &proxy.origin);
    body = serde_json::from_str(&text).unwrap_or(body);
    match fault {
        Fault::SelfNext => {
            body["link"] =
                json!([{"relation": "next", "url": format!("{}{path_and_query}", proxy.origin)}]);
        }
        Fault::ForeignNext => {
            body["link"] = json!([{"relation": "next",
                "url": format!("https://elsewhere.example{path_and_query}")}]);
        }
        Fault::OtherPatient => {
            if let Some(entries) = body["entry"].as_array_mut() {
                entries.push(json!({"resource": {"resourceType": "Condition", "id": "other-1",
                    "subject": {"reference": "Patient/someone-else"}}, "search": {"mode": "match"}}));
            }
        }
        _ => {}
    }
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
        fhir_json,
        body.to_string(),
    )
        .into_response()
}

async fn start_proxy(upstream: &str) -> Arc<Proxy> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let proxy = Arc::new(Proxy {
        upstream: upstream.to_string(),
        origin,
        fault: AtomicU8::new(Fault::None as u8),
    });
    let app = axum::Router::new()
        .fallback(proxied)
        .with_state(proxy.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    proxy
}

/// Each way a FHIR server fails (down, killed mid-exchange, frozen, 500, an
/// OperationOutcome, HTML, slow, `next` links to itself or elsewhere, huge pages,
/// another patient's resources) gives 503 or 504 within bounded time and memory, and
/// leaves exactly one access event.
#[tokio::test]
async fn fhir_server_failures_are_bounded_and_recorded() {
    let patients = patients();
    let small = &patients[0].identity.mrn;
    let large = &patients[patients.len() - 1].identity.mrn;
    let mut fhir = fhir_holding(&patients).await;
    let proxy = start_proxy(&fhir.base).await;
    let mut through_proxy = gateway_reading(&proxy.origin);
    let doc = emergency_doctor(&through_proxy).await;
    let (status, _) = exchange(&through_proxy, &doc, small).await;
    assert_eq!(status, 200, "the proxy passes a healthy server through");
    let mut expected_events = 1;

    for fault in FAULTS {
        proxy.fault.store(fault as u8, Ordering::SeqCst);
        let started = Instant::now();
        let (status, problem) = exchange(&through_proxy, &doc, small).await;
        let took = started.elapsed();
        expected_events += 1;
        let want = if fault == Fault::Slow { 504 } else { 503 };
        assert_eq!(status, want, "{fault:?}: {problem}");
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.contains("record source")),
            "{fault:?}: {problem}"
        );
        assert!(took < Duration::from_secs(35), "{fault:?} took {took:?}");
    }
    proxy.fault.store(Fault::None as u8, Ordering::SeqCst);
    let peak = peak_mb(&through_proxy.gateway);
    eprintln!("gateway peak resident memory after the faults: {peak} MB");
    assert!(peak < 800, "memory stays bounded: {peak} MB");
    let (status, _) = exchange(&through_proxy, &doc, small).await;
    assert_eq!(status, 200, "a healthy server again serves");
    expected_events += 1;

    // Straight at the server: killed in the middle of a large record, down, frozen.
    let mut direct = gateway_reading(&fhir.base);
    let doc2 = emergency_doctor(&direct).await;
    let (v, _) = vp(
        &direct.gateway,
        &doc2.key,
        std::slice::from_ref(&doc2.credential),
    )
    .await;
    let body = exchange_body("ETREAT", large, CLASSES, &v, Some(JUSTIFICATION));
    let url = format!("{}/v1/exchange/clinical", direct.gateway.process.url());
    let pending = tokio::spawn(async move {
        let resp = reqwest::Client::new()
            .post(url)
            .json(&body)
            .timeout(Duration::from_secs(90))
            .send()
            .await
            .unwrap();
        resp.status().as_u16()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    fhir.kill();
    let status = pending.await.unwrap();
    assert!(
        status == 503 || status == 200,
        "killed mid-exchange: {status}"
    );
    let (status, problem) = exchange(&direct, &doc2, small).await;
    assert_eq!(status, 503, "down: {problem}");
    fhir.restart().unwrap();
    fhir.freeze();
    let started = Instant::now();
    let (status, problem) = exchange(&direct, &doc2, small).await;
    fhir.thaw();
    assert!(status == 503 || status == 504, "frozen: {status} {problem}");
    assert!(started.elapsed() < Duration::from_secs(35));
    let (status, _) = exchange(&direct, &doc2, small).await;
    assert_eq!(status, 200, "back again");

    through_proxy.gateway.process.stop();
    let events = outbox(&through_proxy.gateway);
    assert_eq!(events.len(), expected_events, "one event per exchange");
    let not_served = events
        .iter()
        .filter(|e| e["reasons"].to_string().contains("not served"))
        .count();
    assert_eq!(not_served, FAULTS.len());
    direct.gateway.process.stop();
    assert_eq!(outbox(&direct.gateway).len(), 4, "one event per exchange");
}
