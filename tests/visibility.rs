//! The visibility layer with real processes: a gateway's access events reach the log with
//! inclusion proofs against a signed checkpoint; an outage of the log loses nothing and
//! duplicates nothing; a full outbox fails closed (503) and recovers by itself.
//!
//! Each guarantee is shown on both event paths: HTTPS straight to the service, and NATS
//! JetStream with a real `nats-server -js` on loopback (Debian package `nats-server`).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use federation::checkpoint;
use federation::credentials::{self, ProofFormat};
use federation::keys::{KeyAlgorithm, KeyPair};
use federation::log;
use federation::wire::{leaf_bytes, LogEntry};
use fedgate::harness::{
    contract, fixture_patient, free_port, get_text, Custodian, Federation, Gateway, Office,
    Requester, Visibility, MRN_SYSTEM,
};
use serde_json::{json, Value};
use support::{exe, AUDITOR_ORG, CUSTODIAN, REQUESTER_ORG, VISIBILITY};

/// A real `nats-server -js` on a loopback port, with its store in a folder that outlives
/// restarts; killed when dropped.
struct NatsServer {
    child: Child,
    port: u16,
    store: PathBuf,
    /// An `authorization { users = [...] }` block, when clients must authenticate.
    authorization: Option<String>,
}

impl NatsServer {
    fn start(store: &Path) -> NatsServer {
        let port = free_port().unwrap();
        NatsServer::start_on(store, port, None)
    }

    /// Clients must authenticate as one of `users` (nats-server's own syntax).
    fn start_with_users(store: &Path, users: &str) -> NatsServer {
        let port = free_port().unwrap();
        NatsServer::start_on(store, port, Some(users.to_string()))
    }

    fn start_on(store: &Path, port: u16, authorization: Option<String>) -> NatsServer {
        std::fs::create_dir_all(store).unwrap();
        let mut command = Command::new("nats-server");
        command
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store);
        if let Some(users) = &authorization {
            let file = store.join("server.conf");
            std::fs::write(
                &file,
                format!("authorization {{\n  users = [\n{users}\n  ]\n}}\n"),
            )
            .unwrap();
            command.arg("-c").arg(&file);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "nats-server is needed for the NATS path (apt-get install -y nats-server): {e}"
                )
            });
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "nats-server did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        NatsServer {
            child,
            port,
            store: store.to_path_buf(),
            authorization,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The server stops answering (as a hung process does) with requests in flight, then
    /// dies: whatever a client asked just before is never answered.
    fn hang_then_die(&mut self) {
        let pid = self.child.id().to_string();
        let frozen = Command::new("kill").args(["-STOP", &pid]).status().unwrap();
        assert!(frozen.success(), "could not freeze nats-server");
        // The visibility service polls every 50 ms: some of its requests now wait.
        std::thread::sleep(Duration::from_millis(500));
        self.stop();
    }

    fn restart(&mut self) {
        self.stop();
        *self = NatsServer::start_on(&self.store.clone(), self.port, self.authorization.take());
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Which path the gateway's events take to the log.
#[derive(Clone, Copy, PartialEq, Debug)]
enum EventPath {
    Https,
    Nats,
    /// NATS, where every client authenticates with its user nkey and may do only its part.
    NatsWithUsers,
}

/// The NATS users of a [`EventPath::NatsWithUsers`] setup.
struct NatsUsers {
    visibility_seed_file: PathBuf,
    gateway_seed_file: PathBuf,
    gateway_seed: String,
}

/// The subject a custodian's events go to (a digest of its DID).
fn subject_of(custodian: &str) -> String {
    let config: service::eventbus::NatsConfig =
        toml::from_str("url = \"nats://127.0.0.1:4222\"").unwrap();
    config.subject_for(custodian)
}

/// Keys for the visibility service and the gateway, and the server's users with the
/// permissions `docs/nats.md` recommends: the log manages the stream and reads it, a
/// gateway publishes on its own subject and hears the acknowledgements.
fn nats_users(dir: &Path) -> (NatsUsers, String) {
    use std::os::unix::fs::PermissionsExt;
    let write_seed = |name: &str, key: &nkeys::KeyPair| {
        let path = dir.join(name);
        std::fs::write(&path, key.seed().unwrap()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    };
    let visibility = nkeys::KeyPair::new_user();
    let gateway = nkeys::KeyPair::new_user();
    let block = format!(
        r#"    {{ nkey: "{}", permissions: {{ publish: ["$JS.API.>", "$JS.ACK.FEDGATE_EVENTS.>"], subscribe: ["_INBOX.>"] }} }}
    {{ nkey: "{}", permissions: {{ publish: ["{}"], subscribe: ["_INBOX.>"] }} }}"#,
        visibility.public_key(),
        gateway.public_key(),
        subject_of(CUSTODIAN),
    );
    let users = NatsUsers {
        visibility_seed_file: write_seed("visibility.nkey", &visibility),
        gateway_seed_file: write_seed("gateway.nkey", &gateway),
        gateway_seed: gateway.seed().unwrap(),
    };
    (users, block)
}

struct Setup {
    office: Office,
    visibility: Visibility,
    gateway: Gateway,
    nats: Option<NatsServer>,
    nats_users: Option<NatsUsers>,
    mrn: String,
    dir: tempfile::TempDir,
}

async fn setup(outbox_max: usize, path: EventPath) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("nats");
    let (nats, nats_users) = match path {
        EventPath::Https => (None, None),
        EventPath::Nats => (Some(NatsServer::start(&store)), None),
        EventPath::NatsWithUsers => {
            let (users, block) = nats_users(dir.path());
            (
                Some(NatsServer::start_with_users(&store, &block)),
                Some(users),
            )
        }
    };
    let (file, mrn) = fixture_patient().unwrap();
    let mut custodian = Custodian::new(CUSTODIAN)
        .records(vec![file])
        .outbox_max_events(outbox_max)
        .config(&contract(
            CUSTODIAN,
            REQUESTER_ORG,
            &["clinical"],
            &["TREAT"],
        ));
    if let Some(users) = &nats_users {
        custodian = custodian.nats_seed_file(&users.gateway_seed_file);
    }
    let mut federation = support::federation(dir.path()).gateway(custodian);
    if let Some(n) = &nats {
        federation = federation.nats(&n.url());
    }
    if let Some(users) = &nats_users {
        federation = federation.nats_seed_file(&users.visibility_seed_file);
    }
    let Federation {
        mut gateways,
        visibility,
        office,
    } = federation.start().unwrap();
    Setup {
        office,
        visibility,
        gateway: gateways.remove(0),
        nats,
        nats_users,
        mrn,
        dir,
    }
}

async fn requester(s: &Setup) -> Requester {
    s.gateway
        .consented_physician(&s.office, REQUESTER_ORG, &s.mrn)
        .await
        .unwrap()
}

/// One exchange; returns (status, decision id).
async fn exchange(s: &Setup, r: &Requester, with_consent: bool) -> (u16, Option<String>) {
    let binding = s.gateway.challenge().await.unwrap();
    let creds = if with_consent {
        &r.credentials[..]
    } else {
        &r.credentials[..1]
    };
    let vp = credentials::present(creds, &r.key, &binding, ProofFormat::Jwt)
        .await
        .unwrap();
    let body = json!({
        "purpose": "TREAT",
        "patient": {"system": MRN_SYSTEM, "value": s.mrn},
        "data_classes": ["Patient"],
        "presentation": vp,
    });
    let (status, headers, bytes) = s
        .gateway
        .post_raw("/v1/exchange/clinical", &body, None)
        .await
        .unwrap();
    let problem: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let id = headers
        .get("fedgate-decision-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| problem["decision_id"].as_str().map(str::to_string));
    (status, id)
}

/// One consented exchange, which must be served; returns its decision id.
async fn served(s: &Setup, r: &Requester) -> String {
    let (status, id) = exchange(s, r, true).await;
    assert_eq!(status, 200);
    id.unwrap()
}

/// The gateway's outbox counters from `/readyz` (also served with a 503).
async fn outbox_state(s: &Setup) -> Value {
    let v: Value = reqwest::get(format!("{}readyz", s.gateway.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or(Value::Null);
    if v["outbox"].is_object() {
        v["outbox"].clone()
    } else {
        v["state"]["outbox"].clone()
    }
}

/// Events without a receipt, in either stage.
async fn outbox_pending(s: &Setup) -> u64 {
    s.gateway.outbox_pending().await.unwrap_or(u64::MAX)
}

async fn wait_drained(s: &Setup) {
    wait_drained_within(s, Duration::from_secs(30)).await
}

async fn wait_drained_within(s: &Setup, limit: Duration) {
    assert!(s.gateway.drained(limit).await, "the outbox never drained");
}

async fn gateway_counter(s: &Setup, name: &str) -> f64 {
    s.gateway.metric(name).await.unwrap()
}

/// An auditor session on the visibility service.
async fn auditor_token(s: &Setup) -> String {
    s.visibility
        .auditor_login(&s.office, AUDITOR_ORG)
        .await
        .unwrap()
}

/// The log's events for the custodian, as (leaf index, event).
async fn logged(s: &Setup, token: &str) -> Vec<(u64, federation::events::AccessEvent)> {
    s.visibility.events_of(token, CUSTODIAN).await.unwrap()
}

async fn checkpoint_of(s: &Setup) -> checkpoint::Checkpoint {
    s.visibility.checkpoint().await.unwrap()
}

/// Every id appears exactly once in the log, with a valid inclusion proof against the
/// current signed checkpoint.
async fn assert_logged_once(s: &Setup, ids: &[String]) {
    let token = auditor_token(s).await;
    let events = logged(s, &token).await;
    let cp = checkpoint_of(s).await;
    assert!(cp.size >= ids.len() as u64);
    for id in ids {
        let hits: Vec<_> = events
            .iter()
            .filter(|(_, e)| &e.decision_id == id)
            .collect();
        assert_eq!(hits.len(), 1, "decision {id} logged {} times", hits.len());
        s.visibility
            .verify_inclusion(&cp, hits[0].0, &hits[0].1)
            .await
            .unwrap();
    }
}

async fn events_reach_the_log(path: EventPath) {
    let s = setup(10_000, path).await;
    let r = requester(&s).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let (status, id) = exchange(&s, &r, i % 3 != 0).await;
        assert!(status == 200 || status == 403, "{status}");
        ids.push(id.unwrap());
    }
    wait_drained(&s).await;
    assert_logged_once(&s, &ids).await;
    let published = gateway_counter(&s, "fedgate_events_published_total").await;
    match path {
        EventPath::Nats | EventPath::NatsWithUsers => {
            assert!(published >= 6.0, "events went through JetStream")
        }
        EventPath::Https => assert_eq!(published, 0.0),
    }
}

#[tokio::test]
async fn events_reach_the_log_with_inclusion_proofs() {
    events_reach_the_log(EventPath::Https).await
}

#[tokio::test]
async fn events_reach_the_log_through_nats_jetstream() {
    events_reach_the_log(EventPath::Nats).await
}

#[tokio::test]
async fn outage_loses_nothing_and_a_full_outbox_fails_closed() {
    let mut s = setup(4, EventPath::Https).await;
    let r = requester(&s).await;
    let mut ids = Vec::new();
    ids.push(served(&s, &r).await);
    wait_drained(&s).await;

    // The log goes away; exchanges go on until the outbox is full, then fail closed.
    s.visibility.process.stop();
    let mut refused = false;
    for _ in 0..10 {
        let (status, id) = exchange(&s, &r, true).await;
        match status {
            200 => ids.push(id.unwrap()),
            503 => {
                refused = true;
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(refused, "a full outbox must refuse new exchanges");
    assert!(ids.len() >= 4);

    // The log comes back on the same data: the outbox drains by itself, service resumes.
    s.visibility = Visibility::restart(&exe(), VISIBILITY, &s.visibility.config.clone()).unwrap();
    wait_drained(&s).await;
    ids.push(served(&s, &r).await);
    wait_drained(&s).await;
    assert_logged_once(&s, &ids).await;
}

#[tokio::test]
async fn nats_outages_lose_nothing_and_a_full_outbox_fails_closed() {
    let mut s = setup(4, EventPath::Nats).await;
    let r = requester(&s).await;
    let mut ids = Vec::new();
    ids.push(served(&s, &r).await);
    wait_drained(&s).await;

    // The log goes away. Events still leave the outbox for the stream, which records
    // them, so more exchanges than the outbox holds are served.
    s.visibility.process.stop();
    for _ in 0..8 {
        let (status, id) = exchange(&s, &r, true).await;
        assert_eq!(
            status, 200,
            "the stream records events while the log is away"
        );
        ids.push(id.unwrap());
    }
    let t0 = Instant::now();
    loop {
        let state = outbox_state(&s).await;
        if state["unpublished"] == 0 && state["awaitingReceipt"].as_u64() >= Some(8) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "not published: {state}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The log comes back: it reads the stream, every event gets its receipt.
    s.visibility = Visibility::restart(&exe(), VISIBILITY, &s.visibility.config.clone()).unwrap();
    wait_drained(&s).await;

    // The stream hangs, then goes away: nothing can record new events, the outbox fills,
    // and the gateway fails closed.
    s.nats.as_mut().unwrap().hang_then_die();
    let mut refused = false;
    for _ in 0..10 {
        let (status, id) = exchange(&s, &r, true).await;
        match status {
            200 => ids.push(id.unwrap()),
            503 => {
                refused = true;
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(refused, "a full outbox must refuse new exchanges");

    // The stream comes back on its store: the gateway reconnects and drains by itself.
    s.nats.as_mut().unwrap().restart();
    wait_drained_within(&s, Duration::from_secs(60)).await;
    ids.push(served(&s, &r).await);
    wait_drained(&s).await;
    assert_logged_once(&s, &ids).await;
}

#[tokio::test]
async fn nats_clients_authenticate_and_a_gateway_publishes_only_its_own_events() {
    let s = setup(10_000, EventPath::NatsWithUsers).await;
    let r = requester(&s).await;
    let mut ids = Vec::new();
    ids.push(served(&s, &r).await);
    wait_drained(&s).await;

    // Nobody gets in without a key the server knows.
    let url = s.nats.as_ref().unwrap().url();
    assert!(
        async_nats::connect(&url).await.is_err(),
        "an anonymous client was let in"
    );
    let stranger = nkeys::KeyPair::new_user().seed().unwrap();
    assert!(
        async_nats::ConnectOptions::with_nkey(stranger)
            .connect(&url)
            .await
            .is_err(),
        "an unknown key was let in"
    );

    // A gateway's key can publish its own events and do nothing else: not speak for
    // another custodian, not read, not delete the stream.
    let users = s.nats_users.as_ref().unwrap();
    // Refusals come as silence: requests and acknowledgements time out.
    let client = async_nats::ConnectOptions::with_nkey(users.gateway_seed.clone())
        .request_timeout(Some(Duration::from_secs(2)))
        .connect(&url)
        .await
        .unwrap();
    let mut js = async_nats::jetstream::new(client);
    js.set_timeout(Duration::from_secs(2));
    let forged = match js
        .publish(subject_of("did:web:other-hospital.example"), "x".into())
        .await
    {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    assert!(
        !forged,
        "the stream took a message on another custodian's subject"
    );
    assert!(js.get_stream("FEDGATE_EVENTS").await.is_err());
    assert!(js.delete_stream("FEDGATE_EVENTS").await.is_err());
    // The same question from the log's key is answered: the refusals above are the
    // server's permissions, not a wrong name.
    let seed = std::fs::read_to_string(&users.visibility_seed_file).unwrap();
    let log_client = async_nats::ConnectOptions::with_nkey(seed)
        .connect(&url)
        .await
        .unwrap();
    let stream = async_nats::jetstream::new(log_client)
        .get_stream("FEDGATE_EVENTS")
        .await;
    assert!(stream.is_ok(), "the log's key could not read its stream");

    // The stream is intact and keeps carrying the gateway's events, each logged once.
    for _ in 0..3 {
        ids.push(served(&s, &r).await);
    }
    wait_drained(&s).await;
    assert_logged_once(&s, &ids).await;
}

#[tokio::test]
async fn a_consent_signed_by_a_stranger_grants_nothing_and_opens_no_history() {
    let s = setup(10_000, EventPath::Https).await;
    // The patient's DID is linked by the custodian; their physician is served.
    let patient_side = requester(&s).await;
    let served_id = served(&s, &patient_side).await;
    // A stranger makes a DID and signs a consent naming the same patient: denied, and
    // the reason says why.
    let stranger_side = s
        .office
        .consented_physician(REQUESTER_ORG, CUSTODIAN, &s.mrn)
        .await
        .unwrap();
    let binding = s.gateway.challenge().await.unwrap();
    let vp = credentials::present(
        &stranger_side.credentials,
        &stranger_side.key,
        &binding,
        ProofFormat::Jwt,
    )
    .await
    .unwrap();
    let body = json!({
        "purpose": "TREAT",
        "patient": {"system": MRN_SYSTEM, "value": s.mrn},
        "data_classes": ["Patient"],
        "presentation": vp,
    });
    let (status, problem) = s
        .gateway
        .post("/v1/exchange/clinical", &body)
        .await
        .unwrap();
    assert_eq!(status, 403, "{problem}");
    assert!(
        problem["reasons"]
            .to_string()
            .contains("not linked to the patient"),
        "{problem}"
    );
    let denied_id = problem["decision_id"].as_str().unwrap().to_string();
    wait_drained(&s).await;

    // The patient sees both accesses to their records, the stranger's attempt included;
    // the stranger's DID opens nobody's history.
    let patient = patient_side.patient.as_ref().unwrap();
    let history = s
        .visibility
        .patient_history(patient, &patient_side.credentials[1..])
        .await
        .unwrap();
    for id in [&served_id, &denied_id] {
        assert!(
            history.iter().any(|e| &e.decision_id == id),
            "{id} missing from the patient's history"
        );
    }
    let stranger = stranger_side.patient.as_ref().unwrap();
    let theirs = s
        .visibility
        .patient_history(stranger, &stranger_side.credentials[1..])
        .await
        .unwrap();
    assert!(
        theirs.is_empty(),
        "a stranger's DID opened {} events",
        theirs.len()
    );
}

/// A consented exchange at `gateway` that must be served and then reach the log.
async fn served_and_logged(office: &Office, gateway: &Gateway, mrn: &str) {
    let r = gateway
        .consented_physician(office, REQUESTER_ORG, mrn)
        .await
        .unwrap();
    let binding = gateway.challenge().await.unwrap();
    let vp = credentials::present(&r.credentials, &r.key, &binding, ProofFormat::Jwt)
        .await
        .unwrap();
    let body = json!({
        "purpose": "TREAT",
        "patient": {"system": MRN_SYSTEM, "value": mrn},
        "data_classes": ["Patient"],
        "presentation": vp,
    });
    let (status, _, _) = gateway
        .post_raw("/v1/exchange/clinical", &body, None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(gateway.drained(Duration::from_secs(30)).await);
}

/// A "peer gateway" that answers every request with `note` as its adopted checkpoint.
async fn fake_peer(note: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let note = note.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{note}",
                    note.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    url
}

/// Waits until `metric` of `gateway` reaches `at_least`.
async fn wait_metric(gateway: &Gateway, metric: &str, at_least: f64, within: Duration) -> f64 {
    let t0 = Instant::now();
    loop {
        let v = gateway.metric(metric).await.unwrap_or(0.0);
        if v >= at_least || t0.elapsed() > within {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn gateways_comparing_checkpoints_catch_a_log_that_shows_them_different_histories() {
    const OTHER_CUSTODIAN: &str = "did:web:hospital-c.test";
    let dir = tempfile::tempdir().unwrap();
    let (file, mrn) = fixture_patient().unwrap();
    // A peer that passes on a checkpoint the log never signed (same origin, another key):
    // taken at its word, it would look like a split view.
    let forger = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let forged = checkpoint::Checkpoint::new(VISIBILITY, 1, [9; 32])
        .sign(VISIBILITY, &forger)
        .unwrap();
    let forging_peer = fake_peer(forged).await;
    let custodian = |did: &str| {
        Custodian::new(did)
            .records(vec![file.clone()])
            .config(&contract(did, REQUESTER_ORG, &["clinical"], &["TREAT"]))
    };
    let Federation {
        mut gateways,
        visibility,
        office,
    } = support::federation(dir.path())
        .gossip_every(Duration::from_millis(300))
        .gossip_also_with(&forging_peer)
        .gateway(custodian(CUSTODIAN))
        .gateway(custodian(OTHER_CUSTODIAN))
        .start()
        .unwrap();
    // One honest log: both gateways adopt its checkpoints, and find each other's consistent.
    served_and_logged(&office, &gateways[0], &mrn).await;
    served_and_logged(&office, &gateways[1], &mrn).await;
    served_and_logged(&office, &gateways[0], &mrn).await;
    let consistent = "fedgate_gossip_checks_total{result=\"consistent\"}";
    let failed = "fedgate_gossip_checks_total{result=\"failed\"}";
    for g in &gateways {
        assert!(wait_metric(g, consistent, 1.0, Duration::from_secs(15)).await >= 1.0);
        assert!(
            wait_metric(g, failed, 1.0, Duration::from_secs(15)).await >= 1.0,
            "the forged checkpoint was not refused"
        );
        assert_eq!(g.metric("fedgate_log_split_view_total").await.unwrap(), 0.0);
        let note = get_text(&format!("{}v1/log/checkpoint", g.url()))
            .await
            .unwrap();
        assert!(note.starts_with(VISIBILITY), "{note}");
    }

    // The operator forks the log: a copy of the same database, with the same key, on
    // another port; hospital C is sent to the copy. Each history goes on growing, and each
    // is consistent in itself, so neither gateway's own checks can see anything wrong.
    let mut visibility = visibility;
    visibility.process.stop();
    let fork_dir = dir.path().join("visibility-fork");
    let copied = Command::new("cp")
        .arg("-a")
        .arg(dir.path().join("visibility"))
        .arg(&fork_dir)
        .status()
        .unwrap();
    assert!(copied.success());
    let honest_url = visibility.url();
    let honest = Visibility::restart(&exe(), VISIBILITY, &visibility.config).unwrap();
    let fork_port = free_port().unwrap();
    let fork_config = fork_dir.join("visibility.toml");
    let text = std::fs::read_to_string(&fork_config).unwrap();
    let listen = text.lines().find(|l| l.starts_with("listen = ")).unwrap();
    std::fs::write(
        &fork_config,
        text.replace(listen, &format!("listen = \"127.0.0.1:{fork_port}\"")),
    )
    .unwrap();
    let fork = Visibility::restart(&exe(), VISIBILITY, &fork_config).unwrap();
    let c = gateways.pop().unwrap();
    let c_config = c.config.clone();
    let c_dir = c.dir.clone();
    drop(c);
    let text = std::fs::read_to_string(&c_config).unwrap();
    let endpoint = format!("endpoint = \"{honest_url}\"");
    assert!(text.contains(&endpoint));
    std::fs::write(
        &c_config,
        text.replace(&endpoint, &format!("endpoint = \"{}\"", fork.url())),
    )
    .unwrap();
    gateways.push(Gateway::restart(&exe(), &c_dir, OTHER_CUSTODIAN, &c_config).unwrap());

    served_and_logged(&office, &gateways[0], &mrn).await;
    served_and_logged(&office, &gateways[1], &mrn).await;
    for g in &gateways {
        assert!(
            wait_metric(
                g,
                "fedgate_log_split_view_total",
                1.0,
                Duration::from_secs(20)
            )
            .await
                >= 1.0,
            "{} did not catch the split view",
            g.did
        );
        assert_eq!(
            g.metric("fedgate_log_inconsistency_total").await.unwrap(),
            0.0,
            "each history is consistent in itself"
        );
    }
    // One split is one incident, however many rounds see it again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for g in &gateways {
        assert_eq!(g.metric("fedgate_log_split_view_total").await.unwrap(), 1.0);
    }
    drop((fork, honest));
}

/// Rewrites history in a stopped visibility service's database the way an operator with
/// write access could without the service noticing at start: leaf 0 gets other content,
/// every stored subtree hash is recomputed from the leaves, and the stored checkpoint is
/// deleted so that the service signs the rewritten tree afresh.
fn rewrite_history(visibility_dir: &Path) {
    let db = service::db::open_service_db(
        &visibility_dir.join("data"),
        "visibility",
        visibility::SCHEMA,
    )
    .unwrap();
    let leaves = db.tree("fedgate.log/visibility/leaves");
    let nodes = db.tree("fedgate.log/visibility/nodes");
    let meta = db.tree("visibility/meta");

    let first = 0u64.to_be_bytes();
    let mut entry: LogEntry =
        serde_json::from_slice(&leaves.get(&first).unwrap().unwrap()).unwrap();
    match &mut entry {
        LogEntry::Access { event } => event.purpose = "RESEARCH".into(),
        other => panic!("leaf 0 is not an access event: {other:?}"),
    }
    let rewritten = leaf_bytes(&entry);

    // Every complete subtree, level by level, in tiles of 256 hashes (see federation::log).
    let mut level_hashes: Vec<log::Hash> = leaves
        .entries()
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            if k == first {
                log::leaf_hash(&rewritten)
            } else {
                log::leaf_hash(&v)
            }
        })
        .collect();
    assert!(!level_hashes.is_empty());
    let mut tiles: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut level = 0u8;
    while !level_hashes.is_empty() {
        for (tile, chunk) in
            (0u64..).zip(level_hashes.chunks(visibility::merkle::TILE_WIDTH as usize))
        {
            let mut key = vec![level];
            key.extend_from_slice(&tile.to_be_bytes());
            tiles.push((key, chunk.concat()));
        }
        level_hashes = level_hashes
            .chunks_exact(2)
            .map(|pair| log::node_hash(&pair[0], &pair[1]))
            .collect();
        level += 1;
    }
    let had_checkpoint = db
        .write_blocking(move |tx| {
            tx.insert(&leaves, &first, &rewritten)?;
            for key in tx.keys_with_prefix(&nodes, &[])? {
                tx.remove(&nodes, &key)?;
            }
            for (key, tile) in &tiles {
                tx.insert(&nodes, key, tile)?;
            }
            let removed = tx.remove(&meta, b"checkpoint")?;
            Ok::<_, service::db::StoreError>(removed.is_some())
        })
        .unwrap();
    assert!(had_checkpoint);
    // Dropping the last handle closes the file: the service can open it again.
}

async fn inconsistency_alarms(s: &Setup) -> f64 {
    gateway_counter(s, "fedgate_log_inconsistency_total").await
}

async fn a_rewritten_log_raises_the_alarm(path: EventPath) {
    let mut s = setup(10_000, path).await;
    let r = requester(&s).await;
    for _ in 0..3 {
        let (status, _) = exchange(&s, &r, true).await;
        assert_eq!(status, 200);
        wait_drained(&s).await;
    }
    // The outbox drained: the gateway accepted a checkpoint covering these events.
    let accepted = checkpoint_of(&s).await;
    assert!(accepted.size >= 3);
    assert_eq!(inconsistency_alarms(&s).await, 0.0);

    // The operator rewrites leaf 0 and everything above it, then restarts the service.
    s.visibility.process.stop();
    rewrite_history(&s.dir.path().join("visibility"));
    s.visibility = Visibility::restart(&exe(), VISIBILITY, &s.visibility.config.clone()).unwrap();
    let forged = checkpoint_of(&s).await;
    assert_eq!(forged.size, accepted.size);
    assert_ne!(
        forged.root, accepted.root,
        "the tampering must change the served root"
    );

    // The next event's checkpoint does not extend the accepted one: alarm, no ack.
    let (status, _) = exchange(&s, &r, true).await;
    assert_eq!(status, 200);
    let t0 = Instant::now();
    while inconsistency_alarms(&s).await < 1.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the gateway never noticed the rewritten log"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(outbox_pending(&s).await >= 1);
    // It keeps refusing: the event is never acknowledged against this log. The retries
    // are one incident: counted once, with the alarm gauge held up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(outbox_pending(&s).await >= 1);
    assert_eq!(inconsistency_alarms(&s).await, 1.0);
    assert_eq!(gateway_counter(&s, "fedgate_log_inconsistent").await, 1.0);
    assert!(gateway_counter(&s, "fedgate_shipper_failures_total").await >= 2.0);
}

#[tokio::test]
async fn a_rewritten_log_raises_the_alarm_and_keeps_the_event() {
    a_rewritten_log_raises_the_alarm(EventPath::Https).await
}

#[tokio::test]
async fn a_rewritten_log_raises_the_alarm_on_the_nats_path() {
    a_rewritten_log_raises_the_alarm(EventPath::Nats).await
}

/// Messages on the stream are verified exactly as HTTPS batches are: garbage, a
/// non-member's batch and a member's batch about another custodian are refused with
/// nothing appended; one event published three times (twice under one message id, once
/// under another) is logged once.
#[tokio::test]
async fn nats_messages_are_verified_like_batches_and_logged_once() {
    use service::eventbus::{publish_all, NatsConfig};

    let s = setup(10_000, EventPath::Nats).await;
    let r = requester(&s).await;
    let (status, id) = exchange(&s, &r, true).await;
    assert_eq!(status, 200);
    wait_drained(&s).await;
    let before = checkpoint_of(&s).await.size;

    let nats: NatsConfig =
        toml::from_str(&format!("url = \"{}\"", s.nats.as_ref().unwrap().url())).unwrap();
    let js = nats.connect().await.unwrap();
    let subject = nats.subject_for(CUSTODIAN);
    let custodian_key = KeyPair::load(&s.gateway.dir.join("gateway.key.json")).unwrap();
    let stranger = KeyPair::generate_did_key(KeyAlgorithm::Ed25519).unwrap();
    let batch = |key: &KeyPair, custodian: &str, event: &Value| {
        federation::jose::sign(
            &json!({"custodian": custodian, "events": [event]}),
            key,
            federation::wire::BATCH_TYP,
        )
        .unwrap()
    };
    // A fresh, valid event of this custodian, as its gateway would report it.
    let mut event = serde_json::to_value(&logged(&s, &auditor_token(&s).await).await[0].1).unwrap();
    event["id"] = json!(federation::events::AccessEvent::new_id());
    event["decisionId"] = json!("d-nats-direct");
    let mut foreign = event.clone();
    foreign["id"] = json!(federation::events::AccessEvent::new_id());
    foreign["custodian"] = json!(REQUESTER_ORG);
    // Signed by the custodian, but with an SSN in its free text: never logged.
    let mut ssn = event.clone();
    ssn["id"] = json!(federation::events::AccessEvent::new_id());
    ssn["reasons"] = json!(["patient 123-45-6789 is not known"]);

    let sent = publish_all(
        &js,
        &subject,
        vec![
            ("garbage".into(), "not a jws".into()),
            ("stranger".into(), batch(&stranger, stranger.did(), &event)),
            ("foreign".into(), batch(&custodian_key, CUSTODIAN, &foreign)),
            ("ssn".into(), batch(&custodian_key, CUSTODIAN, &ssn)),
            (
                event["id"].as_str().unwrap().into(),
                batch(&custodian_key, CUSTODIAN, &event),
            ),
            (
                event["id"].as_str().unwrap().into(),
                batch(&custodian_key, CUSTODIAN, &event),
            ),
            (
                "same-event-other-id".into(),
                batch(&custodian_key, CUSTODIAN, &event),
            ),
        ],
    )
    .await
    .unwrap();
    assert_eq!(sent.len(), 7, "the stream takes every message");

    // Wait until the visibility service has handled every message.
    let stream = nats.ensure_stream(&js).await.unwrap();
    let mut consumer = nats.consumer(&stream).await.unwrap();
    let t0 = Instant::now();
    loop {
        let info = consumer.info().await.unwrap();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "{info:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = checkpoint_of(&s).await;
    assert_eq!(
        after.size,
        before + 1,
        "exactly one leaf for the one valid event"
    );
    let events = logged(&s, &auditor_token(&s).await).await;
    let hits = events
        .iter()
        .filter(|(_, e)| e.decision_id == "d-nats-direct")
        .count();
    assert_eq!(hits, 1);
    assert!(events.iter().all(|(_, e)| e.custodian == CUSTODIAN));
    assert!(events.iter().all(|(_, e)| e.id != ssn["id"]));
    assert!(!serde_json::to_string(&events).unwrap().contains("6789"));
    assert!(events
        .iter()
        .any(|(_, e)| Some(&e.decision_id) == id.as_ref()));
}

/// A batch of `n` fresh events of `custodian`, signed with its key, as a gateway sends it.
fn signed_batch(key: &KeyPair, n: usize) -> (String, Vec<(String, String)>) {
    let events: Vec<federation::events::AccessEvent> = (0..n)
        .map(|_| test_support::allowed_event(key.did()))
        .collect();
    let ids = events
        .iter()
        .map(|e| {
            let leaf = log::leaf_hash(&leaf_bytes(&LogEntry::Access { event: e.clone() }));
            (e.id.clone(), hex::encode(leaf))
        })
        .collect();
    let payload = json!({"custodian": key.did(), "events": events});
    let jws = federation::jose::sign(&payload, key, federation::wire::BATCH_TYP).unwrap();
    (jws, ids)
}

/// Three visibility processes share one log in PostgreSQL. Four senders keep sending
/// batches to them in turn (a batch that fails goes to the next process, as a gateway
/// behind a load balancer would retry). One process is killed with SIGKILL under that
/// load. Every event is then in the log exactly once, every checkpoint any process handed
/// out is consistent with the final one, and acknowledgements never stop for long.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_visibility_process_killed_under_load_loses_and_duplicates_nothing() {
    const TAKEOVER: Duration = Duration::from_secs(5);
    let dir = tempfile::tempdir().unwrap();
    let pg = fedgate::harness::Postgres::start(&dir.path().join("db")).unwrap();
    let fed = Federation::builder(&exe(), dir.path(), support::OFFICE, VISIBILITY)
        .postgres(&pg)
        .start()
        .unwrap();
    let key = std::sync::Arc::new(KeyPair::load(&fed.office.dir.join("issuer.key.json")).unwrap());
    let mut processes = vec![
        fed.visibility.start_replica(&exe(), 1, 0).unwrap(),
        fed.visibility.start_replica(&exe(), 2, 0).unwrap(),
    ];
    let urls: Vec<String> = std::iter::once(fed.visibility.url())
        .chain(processes.iter().map(Visibility::url))
        .collect();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();

    let started = Instant::now();
    let stop_at = started + Duration::from_secs(12);
    let mut senders = Vec::new();
    for s in 0..4usize {
        let (http, urls, key) = (http.clone(), urls.clone(), key.clone());
        senders.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut acks = Vec::new();
            let mut notes = Vec::new();
            let mut turn = s;
            while Instant::now() < stop_at {
                let (jws, ids) = signed_batch(&key, 20);
                // Until some process acknowledges it: a gateway keeps an event until then.
                loop {
                    let url = &urls[turn % urls.len()];
                    turn += 1;
                    let answer = http
                        .post(format!("{url}v1/batches"))
                        .json(&json!({"batch": jws}))
                        .send()
                        .await;
                    if let Ok(r) = answer {
                        if r.status() == 200 {
                            let body: Value = r.json().await.unwrap();
                            acks.push(Instant::now());
                            notes.push(body["checkpoint"].as_str().unwrap().to_string());
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    assert!(
                        Instant::now() < stop_at + Duration::from_secs(60),
                        "a batch found no process to take it for a minute"
                    );
                }
                sent.extend(ids);
            }
            (sent, acks, notes)
        }));
    }
    // Under load, the first process (which started first and has appended the most) dies.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut first = fed.visibility;
    let killed_at = Instant::now();
    first.process.stop();

    let mut sent = Vec::new();
    let mut acks = Vec::new();
    let mut notes = Vec::new();
    for task in senders {
        let (s, a, n) = task.await.unwrap();
        sent.extend(s);
        acks.extend(a);
        notes.extend(n);
    }
    acks.sort();
    assert!(acks.len() > 20, "{} batches acknowledged", acks.len());
    // Acknowledgements went on after the kill, within TAKEOVER.
    let after: Vec<&Instant> = acks.iter().filter(|t| **t > killed_at).collect();
    assert!(!after.is_empty(), "nothing was acknowledged after the kill");
    let first_after = after[0].duration_since(killed_at);
    assert!(
        first_after < TAKEOVER,
        "first acknowledgement {first_after:?} after the kill"
    );
    let longest = acks
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap();
    assert!(
        longest < TAKEOVER,
        "acknowledgements stopped for {longest:?}"
    );

    // Every event sent is in the log, once: its receipt names one leaf, no two alike, and
    // the log holds exactly as many leaves as events were sent.
    let survivor = processes.remove(0);
    let mut leaves = std::collections::BTreeSet::new();
    for chunk in sent.chunks(500) {
        let events: Vec<Value> = chunk
            .iter()
            .map(|(id, hash)| json!({"id": id, "leafHash": hash}))
            .collect();
        let r: Value = http
            .post(format!("{}v1/receipts", survivor.url()))
            .json(&json!({"custodian": key.did(), "events": events}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let receipts = r["receipts"].as_array().unwrap();
        assert_eq!(receipts.len(), chunk.len(), "{r}");
        assert!(r["conflicts"].as_array().unwrap().is_empty(), "{r}");
        for receipt in receipts {
            assert!(
                leaves.insert(receipt["leafIndex"].as_u64().unwrap()),
                "{receipt}"
            );
        }
    }
    let verifier_key = {
        let doc: Value = http
            .get(format!("{}.well-known/did.json", survivor.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let vm = doc["verificationMethod"][0].clone();
        let jwk = federation::did::method_public_jwk(vm["id"].as_str().unwrap(), &vm).unwrap();
        let x = serde_json::to_value(&jwk).unwrap()["x"]
            .as_str()
            .unwrap()
            .to_string();
        let raw: [u8; 32] = federation::b64::decode(&x).unwrap().try_into().unwrap();
        checkpoint::NoteVerifier::new(VISIBILITY, raw).unwrap()
    };
    let open = |note: &str| checkpoint::open(note, std::slice::from_ref(&verifier_key)).unwrap();
    let last = open(
        &get_text(&format!("{}v1/checkpoint", survivor.url()))
            .await
            .unwrap(),
    );
    assert_eq!(last.size, sent.len() as u64, "one leaf per event sent");
    assert_eq!(leaves.len(), sent.len());
    // Each survivor's /metrics shows what it appended, its pool and its waits for the
    // shared write lock.
    for process in [&survivor, &processes[0]] {
        let text = get_text(&format!("{}metrics", process.url()))
            .await
            .unwrap();
        let value = |name: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(name))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        assert!(value("fedgate_log_appended_total") > 0.0, "{text}");
        assert!(value("fedgate_db_lock_wait_seconds_count") > 0.0, "{text}");
        assert!(value("fedgate_db_pool_size") >= 1.0, "{text}");
        assert_eq!(
            value("fedgate_log_checkpoint_size"),
            last.size as f64,
            "{text}"
        );
    }
    // The other survivor serves the same checkpoint (it reads the stored one).
    let other = open(
        &get_text(&format!("{}v1/checkpoint", processes[0].url()))
            .await
            .unwrap(),
    );
    assert_eq!((other.size, other.root), (last.size, last.root));

    // Every checkpoint handed out, by any process, is a prefix of the final log: one root
    // per size, and a consistency proof to the final tree.
    let mut by_size = std::collections::BTreeMap::new();
    for note in &notes {
        let cp = open(note);
        if let Some(root) = by_size.insert(cp.size, cp.root) {
            assert_eq!(root, cp.root, "two checkpoints for size {}", cp.size);
        }
    }
    let sizes: Vec<u64> = by_size.keys().copied().collect();
    for size in sizes.iter().step_by((sizes.len() / 25).max(1)) {
        let proof: Value = http
            .get(format!(
                "{}v1/proofs/consistency?old={size}&new={}",
                survivor.url(),
                last.size
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let hashes: Vec<log::Hash> = proof["proof"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                hex::decode(h.as_str().unwrap())
                    .unwrap()
                    .try_into()
                    .unwrap()
            })
            .collect();
        log::verify_consistency(*size, last.size, &by_size[size], &last.root, &hashes)
            .unwrap_or_else(|e| panic!("checkpoint at {size} is not a prefix: {e}"));
    }
    drop(first);
}
