//! Transport-level hostility against the three running services (issuer, gateway,
//! visibility), each a real `fedgate` process with small limits: slow headers, slow bodies,
//! connection floods, oversized, deeply nested, duplicate-key and non-UTF-8 bodies. Each
//! gets a clean problem+json (or a closed connection where no request was ever made), the
//! security headers are on every answer, CORS stays closed, and the service keeps serving.
//! Credential-level attacks (alg none, key confusion, replay, ...) are in tests/gateway.rs
//! and federation/tests/pipeline.rs; here, against a whole federation, two that must be
//! named right where auditors look (answer, access event, metric): a consent validly
//! signed over JSON with a key twice, and presentations with forged JWS headers.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use federation::credentials::{self, ProofFormat};
use federation::keys::KeyPair;
use fedgate::harness::{
    contract, fixture_patient, free_port, spawn, Custodian, Federation, Gateway, GatewaySpec,
    Office, Process, Requester, Visibility, MRN_SYSTEM,
};
use serde_json::{json, Value};
use support::{exe, repo, AUDITOR_ORG, CUSTODIAN, REQUESTER_ORG};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMITS: &str = "[limits]\nmax_body_bytes = 65536\nrequest_timeout_secs = 3\nheader_read_timeout_secs = 1\nbody_read_timeout_secs = 1\nmax_concurrent = 16\nmax_connections = 1000\nidle_timeout_secs = 2\nmax_requests_per_connection = 100\n";

/// One raw HTTP/1.1 exchange on a fresh connection; returns the whole answer as text.
/// The request is written while the answer is read: a server may answer (413) and close
/// before taking a large body, and that answer is what is checked.
async fn raw(addr: &str, request: &[u8]) -> String {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let request = request.to_vec();
    let writer = tokio::spawn(async move {
        // The server may stop reading and close; that is allowed.
        let _ = wr.write_all(&request).await;
        wr
    });
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        match tokio::time::timeout(Duration::from_secs(10), rd.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    writer.abort();
    String::from_utf8_lossy(&out).to_string()
}

/// Reads whatever the server sends until it closes the connection (EOF or reset): the
/// bytes, and how long that took, or None if the connection is still open after `limit`.
async fn until_closed(mut s: TcpStream, limit: Duration) -> (Vec<u8>, Option<Duration>) {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(t0.elapsed());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return (out, Some(t0.elapsed())),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (out, None),
        }
    }
}

fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn assert_problem(answer: &str, status: u16, what: &str) {
    assert_eq!(status_of(answer), status, "{what}: {answer:.300}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{what}: not problem+json: {answer:.300}"
    );
}

async fn healthy(addr: &str) {
    let answer = raw(
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 200, "the service stopped serving");
}

/// Everything this file throws at one service; `post_path` takes a JSON body.
async fn attack(name: &str, addr: &str, post_path: &str) {
    // Security headers on a success and on an error; CORS closed even when asked.
    for request in [
        "GET /healthz HTTP/1.1\r\nHost: localhost\r\nOrigin: https://evil.example\r\nConnection: close\r\n\r\n",
        "GET /no-such-route HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        "OPTIONS /healthz HTTP/1.1\r\nHost: localhost\r\nOrigin: https://evil.example\r\nAccess-Control-Request-Method: POST\r\nConnection: close\r\n\r\n",
    ] {
        let answer = raw(addr, request.as_bytes()).await.to_ascii_lowercase();
        assert!(answer.contains("x-content-type-options: nosniff"), "{name}: {answer:.400}");
        assert!(answer.contains("referrer-policy: no-referrer"), "{name}");
        assert!(answer.contains("content-security-policy:"), "{name}");
        assert!(answer.contains("x-frame-options: deny"), "{name}");
        assert!(answer.contains("cache-control: no-store"), "{name}");
        assert!(answer.contains("x-request-id:"), "{name}: request ids on every answer");
        assert!(
            !answer.contains("access-control-allow-origin"),
            "{name}: CORS must stay closed"
        );
    }

    // Bodies: too large (declared, and chunked without a length), nested 10,000 deep,
    // duplicate keys, not UTF-8.
    let big = vec![b' '; 10 * 1024 * 1024];
    let answer = raw(addr, &post(post_path, &big)).await;
    assert_problem(&answer, 413, &format!("{name}: 10 MB body"));
    let mut chunked = format!(
        "POST {post_path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..160 {
        chunked.extend_from_slice(b"10000\r\n");
        chunked.extend_from_slice(&[b' '; 0x10000]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let answer = raw(addr, &chunked).await;
    assert_problem(&answer, 413, &format!("{name}: 10 MB chunked body"));
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let answer = raw(addr, &post(post_path, deep.as_bytes())).await;
    assert_problem(&answer, 400, &format!("{name}: nested 10,000 deep"));
    let answer = raw(addr, &post(post_path, br#"{"a": 1, "a": 2}"#)).await;
    assert_problem(&answer, 400, &format!("{name}: duplicate keys"));
    let answer = raw(addr, &post(post_path, b"{\"a\": \"\xff\xfe\"}")).await;
    assert_problem(&answer, 400, &format!("{name}: invalid UTF-8"));

    // A slow body: the headers promise 100 bytes, ten arrive, then nothing.
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {post_path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{{\"slow\": 1"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let t0 = Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let answer = String::from_utf8_lossy(&out);
    assert_problem(&answer, 408, &format!("{name}: slow body"));
    // The body deadline (1 s) answers it, not the request timeout (3 s).
    assert!(
        t0.elapsed() < Duration::from_millis(2500),
        "{name}: slow body held too long"
    );

    // Slow headers (slowloris): the connection is closed without an answer in about the
    // header timeout.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let t0 = Instant::now();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(8), s.read_to_end(&mut out)).await;
    assert!(
        closed.is_ok(),
        "{name}: a connection that never finishes its headers must be closed"
    );
    assert!(t0.elapsed() < Duration::from_secs(8));

    // A connection that sends nothing, and one that stops inside the HTTP/2 preface (so
    // that neither HTTP version is known yet): closed in about the header timeout too.
    let silent = TcpStream::connect(addr).await.unwrap();
    let mut preface = TcpStream::connect(addr).await.unwrap();
    preface.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let limit = Duration::from_secs(4);
    let ((_, silent), (_, preface)) =
        tokio::join!(until_closed(silent, limit), until_closed(preface, limit));
    for (what, closed) in [("silent", silent), ("partial HTTP/2 preface", preface)] {
        assert!(
            closed.is_some_and(|t| t < Duration::from_millis(2500)),
            "{name}: a {what} connection must be closed after the header timeout (1 s), was {closed:?}"
        );
    }

    // A flood: 300 idle connections, and slow bodies on more connections than there are
    // request slots (16). Bodies are read before a request takes a slot, so a plain
    // request gets through at once, well inside the body deadline that ends the flood.
    let mut idle = Vec::new();
    for _ in 0..300 {
        if let Ok(s) = TcpStream::connect(addr).await {
            idle.push(s);
        }
    }
    let mut slow = Vec::new();
    for _ in 0..40 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        slow.push(s);
    }
    let t0 = Instant::now();
    healthy(addr).await;
    // (Were slots held by slow bodies, it would wait for the 3 s request timeout.)
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "{name}: a plain request waited {:?} behind slow bodies",
        t0.elapsed()
    );
    drop(idle);
    drop(slow);
    healthy(addr).await;
}

/// Starts a process from a config written here (the harness's own writers leave out
/// `[limits]`).
fn start_with_limits(kind: &str, config: &Path) -> Process {
    let text = std::fs::read_to_string(config).unwrap();
    std::fs::write(config, format!("{text}\n{LIMITS}")).unwrap();
    spawn(
        &exe(),
        &[kind, "serve", "--config", &config.to_string_lossy()],
    )
    .unwrap()
}

#[tokio::test]
async fn every_service_withstands_transport_level_abuse() {
    let dir = tempfile::tempdir().unwrap();
    let mut office =
        Office::start(&exe(), &dir.path().join("office"), "did:web:office.test").unwrap();
    office.process.stop();
    let office_process = start_with_limits("issuer", &office.dir.join("issuer.toml"));

    let mut visibility = Visibility::start(
        &exe(),
        &dir.path().join("visibility"),
        "did:web:visibility.test",
        free_port().unwrap(),
        "",
    )
    .unwrap();
    visibility.process.stop();
    let visibility_process = start_with_limits("visibility", &visibility.config);

    let mut gateway = Gateway::start(
        &exe(),
        &dir.path().join("gateway"),
        &GatewaySpec {
            did: "did:web:hospital-a.test".into(),
            port: 0,
            records: vec![],
            policies: repo("policies"),
            extra_toml: String::new(),
        },
    )
    .unwrap();
    gateway.process.stop();
    let gateway_process = start_with_limits("gateway", &gateway.config);

    tokio::join!(
        attack("issuer", &office_process.addr, "/credentials/verify"),
        attack("visibility", &visibility_process.addr, "/v1/batches"),
        attack("gateway", &gateway_process.addr, "/v1/exchange/clinical"),
    );
}

/// The sockets a process holds open (Linux: its descriptors that are sockets).
fn open_sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
        })
        .count()
}

/// More silent connections than the cap: the gateway holds no more than the cap, a prompt
/// client (`/healthz`, a challenge) is served at once by taking the place of the
/// connection idle longest, and every idle connection is closed by the server. Then the
/// idle timeout between requests and the keep-alive limit.
#[tokio::test]
async fn a_full_connection_cap_still_serves_and_closes_idle_connections() {
    const CAP: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = Gateway::start(
        &exe(),
        &dir.path().join("gateway"),
        &GatewaySpec {
            did: "did:web:hospital-a.test".into(),
            port: 0,
            records: vec![],
            policies: repo("policies"),
            extra_toml: String::new(),
        },
    )
    .unwrap();
    gateway.process.stop();
    let config = std::fs::read_to_string(&gateway.config).unwrap();
    std::fs::write(
        &gateway.config,
        format!(
            "{config}\n[limits]\nmax_connections = {CAP}\nheader_read_timeout_secs = 3\nidle_timeout_secs = 1\nmax_requests_per_connection = 3\nrequest_timeout_secs = 5\n"
        ),
    )
    .unwrap();
    let process = spawn(
        &exe(),
        &[
            "gateway",
            "serve",
            "--config",
            &gateway.config.to_string_lossy(),
        ],
    )
    .unwrap();
    let addr = process.addr.clone();
    healthy(&addr).await;
    let baseline = open_sockets(process.pid());

    // Twelve times the cap, sending nothing.
    let opened = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..12 * CAP {
        idle.push(TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = open_sockets(process.pid());
    assert!(
        held <= baseline + CAP + 1,
        "{held} sockets open ({baseline} before): the cap of {CAP} connections does not hold"
    );

    // Served without waiting for the header timeout (3 s) to free a slot.
    let t0 = Instant::now();
    healthy(&addr).await;
    let answer = raw(&addr, &post("/v1/challenges", b"{}")).await;
    assert_eq!(status_of(&answer), 200, "{answer:.300}");
    assert!(answer.contains("\"challenge\""), "{answer:.300}");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "prompt requests waited {:?} at the cap",
        t0.elapsed()
    );

    // Every idle connection is closed by the server: evicted for a newer one, or at the
    // header timeout (3 s after its accept).
    let waits: Vec<_> = idle
        .into_iter()
        .map(|s| tokio::spawn(until_closed(s, Duration::from_secs(6))))
        .collect();
    let mut still_open = 0;
    for wait in waits {
        if wait.await.unwrap().1.is_none() {
            still_open += 1;
        }
    }
    assert_eq!(still_open, 0, "idle connections left open by the server");
    assert!(
        opened.elapsed() < Duration::from_secs(5),
        "idle connections closed only after {:?}",
        opened.elapsed()
    );

    // Between requests: closed after the idle timeout (1 s), not the header timeout.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let (answer, closed) = until_closed(s, Duration::from_secs(5)).await;
    assert_eq!(status_of(&String::from_utf8_lossy(&answer)), 200);
    assert!(
        closed.is_some_and(|t| t < Duration::from_millis(2500)),
        "an idle keep-alive connection was closed after {closed:?}"
    );

    // Three requests per connection: four pipelined get three answers, the last one
    // saying `connection: close`, and the connection ends.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(&b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n".repeat(4))
        .await
        .unwrap();
    let (answers, closed) = until_closed(s, Duration::from_secs(5)).await;
    let answers = String::from_utf8_lossy(&answers).to_ascii_lowercase();
    assert!(closed.is_some(), "the connection outlived its requests");
    assert_eq!(answers.matches("http/1.1 200").count(), 3, "{answers}");
    assert_eq!(answers.matches("connection: close").count(), 1, "{answers}");

    healthy(&addr).await;
}

// ---------------------------------------------------------------------------------------
// Signed-content attacks through a whole federation
// ---------------------------------------------------------------------------------------

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A federation whose custodian holds the fixture patient and lets the requester's
/// organization read clinical records for treatment; and that patient's MRN.
fn clinical_federation(dir: &Path) -> (Federation, String) {
    let (file, mrn) = fixture_patient().unwrap();
    let federation = support::federation(dir)
        .gateway(
            Custodian::new(CUSTODIAN)
                .records(vec![file])
                .config(&contract(
                    CUSTODIAN,
                    REQUESTER_ORG,
                    &["clinical"],
                    &["TREAT"],
                )),
        )
        .start()
        .unwrap();
    (federation, mrn)
}

/// A compact JWS over exactly these bytes, validly signed by `key` (Ed25519).
fn sign_raw(header: &[u8], payload: &[u8], key: &KeyPair) -> String {
    use ed25519_dalek::Signer;
    let input = format!("{}.{}", B64.encode(header), B64.encode(payload));
    let signature = key.ed25519_signing_key().unwrap().sign(input.as_bytes());
    format!("{input}.{}", B64.encode(signature.to_bytes()))
}

/// The header and payload bytes of a compact JWS.
fn parts(jws: &Value) -> (Vec<u8>, Vec<u8>) {
    let mut parts = jws.as_str().unwrap().split('.');
    let header = B64.decode(parts.next().unwrap()).unwrap();
    let payload = B64.decode(parts.next().unwrap()).unwrap();
    (header, payload)
}

/// Re-signs a presentation's payload bytes as a whole new compact JWS.
type Resign<'a> = &'a dyn Fn(&[u8]) -> String;

/// Asks the gateway for the patient's records with `credentials` presented by `holder`,
/// the presentation's JWS rebuilt over its payload by `resign` when given.
async fn exchange(
    gateway: &Gateway,
    mrn: &str,
    holder: &KeyPair,
    credentials: &[Value],
    resign: Option<Resign<'_>>,
) -> (u16, Value) {
    let binding = gateway.challenge().await.unwrap();
    let mut vp = credentials::present(credentials, holder, &binding, ProofFormat::Jwt)
        .await
        .unwrap();
    if let Some(resign) = resign {
        let (_, payload) = parts(&vp);
        vp = json!(resign(&payload));
    }
    let body = json!({
        "purpose": "TREAT",
        "patient": {"system": MRN_SYSTEM, "value": mrn},
        "data_classes": ["Patient"],
        "presentation": vp,
    });
    let (status, _, bytes) = gateway
        .post_raw("/v1/exchange/clinical", &body, None)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The patient's wallet wrote `"provision": "deny"` and then `"provision": "permit"`, and
/// the patient signed it. A last-wins reader applies it as a permit and releases the
/// records; the gateway refuses it before reading any of it, with the check `format`.
#[tokio::test]
async fn a_consent_signed_over_a_duplicated_key_is_refused_as_format() {
    let dir = tempfile::tempdir().unwrap();
    let (fed, mrn) = clinical_federation(dir.path());
    let gateway = fed.gateway(CUSTODIAN).unwrap();
    let Requester {
        key,
        credentials,
        patient,
    } = gateway
        .consented_physician(&fed.office, REQUESTER_ORG, &mrn)
        .await
        .unwrap();
    let patient = patient.unwrap();
    // As issued, the consent releases the records.
    let (status, answer) = exchange(gateway, &mrn, &key, &credentials, None).await;
    assert_eq!(status, 200, "{answer}");

    let (header, payload) = parts(&credentials[1]);
    let text = String::from_utf8(payload).unwrap();
    assert!(text.contains(r#""provision":"permit""#), "{text}");
    let ambiguous = text.replacen(
        r#""provision":"permit""#,
        r#""provision":"deny","provision":"permit""#,
        1,
    );
    let forged = json!(sign_raw(&header, ambiguous.as_bytes(), &patient));
    let (status, problem) =
        exchange(gateway, &mrn, &key, &[credentials[0].clone(), forged], None).await;
    assert_eq!(status, 403, "{problem}");
    assert_eq!(problem["check"], "format", "{problem}");
    let reasons = problem["reasons"].to_string();
    assert!(reasons.contains("credential #1"), "{problem}");
    assert!(reasons.contains("not strict JSON"), "{problem}");
    assert_eq!(
        gateway
            .metric(r#"fedgate_verification_failures_total{check="format"}"#)
            .await
            .unwrap(),
        1.0
    );
}

/// Presentations whose own JWS header is hostile are forgeries, refused as `proof` in the
/// answer, in the access event the visibility log holds and in the failure metric, never
/// as `challenge` (a replay).
#[tokio::test]
async fn hostile_presentation_headers_are_named_proof_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let (fed, mrn) = clinical_federation(dir.path());
    let gateway = fed.gateway(CUSTODIAN).unwrap();
    let requester = gateway
        .consented_physician(&fed.office, REQUESTER_ORG, &mrn)
        .await
        .unwrap();
    let kid = requester.key.verification_method().to_string();
    let jwk = serde_json::to_value(requester.key.public_jwk()).unwrap();
    let headers = [
        json!({"alg": "none", "kid": kid, "typ": "vp+jwt"}),
        json!({"alg": "HS256", "kid": kid, "typ": "vp+jwt"}),
        json!({"alg": "EdDSA", "kid": kid, "typ": "vp+jwt", "jwk": jwk}),
        json!({"alg": "EdDSA", "kid": kid, "typ": "vp+jwt", "jku": "https://evil.example/jwks"}),
        json!({"alg": "EdDSA", "kid": kid, "typ": "vp+jwt", "x5u": "https://evil.example/x509"}),
        json!({"alg": "EdDSA", "kid": kid, "typ": "vp+jwt", "x5c": ["MIIBkTCB+wIJAK"]}),
        json!({"alg": "EdDSA", "kid": "../../../../etc/passwd", "typ": "vp+jwt"}),
    ];
    let mut decisions = Vec::new();
    for header in &headers {
        let key = requester.key.clone();
        let header_bytes = serde_json::to_vec(header).unwrap();
        let resign = move |payload: &[u8]| sign_raw(&header_bytes, payload, &key);
        let (status, problem) = exchange(
            gateway,
            &mrn,
            &requester.key,
            &requester.credentials,
            Some(&resign),
        )
        .await;
        assert_eq!(status, 403, "{header}: {problem}");
        assert_eq!(problem["check"], "proof", "{header}: {problem}");
        decisions.push(problem["decision_id"].as_str().unwrap().to_string());
    }

    let metric = |check: &str| format!(r#"fedgate_verification_failures_total{{check="{check}"}}"#);
    assert_eq!(gateway.metric(&metric("proof")).await.unwrap(), 7.0);
    assert_eq!(gateway.metric(&metric("challenge")).await.unwrap(), 0.0);

    // The access events, as the visibility log holds them.
    assert!(gateway.drained(Duration::from_secs(30)).await);
    let token = fed
        .visibility
        .auditor_login(&fed.office, AUDITOR_ORG)
        .await
        .unwrap();
    let events = fed.visibility.events_of(&token, CUSTODIAN).await.unwrap();
    for id in &decisions {
        let (_, event) = events
            .iter()
            .find(|(_, e)| &e.decision_id == id)
            .unwrap_or_else(|| panic!("no logged event for decision {id}"));
        assert_eq!(event.failed_check.as_deref(), Some("proof"), "{event:?}");
    }
    assert!(
        events
            .iter()
            .all(|(_, e)| e.failed_check.as_deref() != Some("challenge")),
        "a forgery was logged as a replay"
    );
}
