//! Transport-level hostility against the three running services (issuer, gateway,
//! visibility), each a real `fedgate` process with small limits: slow headers, slow bodies,
//! connection floods, oversized, deeply nested, duplicate-key and non-UTF-8 bodies. Each
//! gets a clean problem+json (or a closed connection where no request was ever made), the
//! security headers are on every answer, CORS stays closed, and the service keeps serving.
//! Credential-level attacks (alg none, key confusion, replay, ...) are in tests/gateway.rs
//! and federation/tests/pipeline.rs.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use fedgate::harness::{free_port, spawn, Gateway, GatewaySpec, Office, Process, Visibility};
use support::{exe, repo};
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
