//! Crash consistency with real processes killed by SIGKILL under load.
//!
//! A gateway answers an exchange only after its access event is on disk, and drops an
//! event from its outbox only after the log's receipt for it is on disk; the visibility
//! service hands out a receipt or a checkpoint only after the leaves it names are on disk.
//! These tests kill the processes at arbitrary moments while requests and batches are in
//! flight, restart them on the same data, and check those promises: every exchange
//! answered 200 or 403 has its event in the outbox or a receipt after the crash, and ends
//! up exactly once in the log; every receipt a gateway stored names a leaf that is still in
//! the log, at the same index, under every later signed checkpoint.
//!
//! The kill moments are drawn from a seed printed at the start (`FEDGATE_CRASH_SEED`
//! sets it, to repeat the same delays).

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use federation::checkpoint::{self, Checkpoint, NoteVerifier};
use federation::credentials::{self, PresentationBinding, ProofFormat};
use federation::events::{AccessEvent, Outcome};
use federation::log::{self, Hash};
use federation::wire::{leaf_bytes, LogEntry};
use fedgate::harness::{
    contract, fixture_patient, Custodian, FederationBuilder, Gateway, Office, Requester,
    Visibility, MRN_SYSTEM,
};
use gateway::shipper::Receipt;
use serde_json::{json, Value};
use support::{exe, AUDITOR_ORG, VISIBILITY};

const HOSPITAL_A: &str = "did:web:hospital-a.test";
const HOSPITAL_B: &str = "did:web:hospital-b.test";
const REQUESTER_ORG: &str = "did:web:clinic-r.test";

/// Kills per test: each one lands at another moment of the load.
const ROUNDS: usize = 3;
/// Answered exchanges a round must see before its kill, so that no round is vacuous.
const MIN_ANSWERED_PER_ROUND: usize = 8;
/// Every wait for the federation is bounded by this; exceeding it fails the test.
const PATIENCE: Duration = Duration::from_secs(60);

/// Kill delays: xorshift64 from a seed, so that a failing run can be repeated with the same
/// delays (the scheduling of the processes still varies).
struct Jitter {
    seed: u64,
    state: u64,
}

impl Jitter {
    fn new(test: &str) -> Jitter {
        let seed = std::env::var("FEDGATE_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        println!("{test}: FEDGATE_CRASH_SEED={seed}");
        Jitter {
            seed,
            state: seed | 1,
        }
    }

    fn millis(&mut self, below: u64) -> Duration {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        Duration::from_millis(self.state % below)
    }
}

/// An office, the visibility service and one gateway per custodian, each with a contract
/// for the requesting organization.
fn federation(dir: &Path, custodians: &[&str], records: Vec<PathBuf>) -> FederationBuilder {
    custodians
        .iter()
        .fold(support::federation(dir), |builder, did| {
            builder.gateway(
                Custodian::new(did)
                    .records(records.clone())
                    .config(&contract(did, REQUESTER_ORG, &["clinical"], &["TREAT"])),
            )
        })
}

/// What a worker sends.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Privilege and consent: allowed (200).
    Consented,
    /// Privilege only: denied by policy (403).
    Unconsented,
    /// A presentation answering no challenge: refused at verification (403), cheaply, so
    /// that events pile up fast.
    Unbound,
}

/// An exchange the gateway answered 200 or 403: it promised that the event is recorded.
#[derive(Debug, Clone)]
struct Answered {
    decision_id: String,
    status: u16,
    round: usize,
}

/// One exchange. `Err` is a transport failure (the gateway is gone); an answer without a
/// decision id is returned as such and judged by the caller.
async fn exchange(
    client: &reqwest::Client,
    gateway: &str,
    kind: Kind,
    who: Option<&Requester>,
    mrn: &str,
) -> Result<(u16, Option<String>), String> {
    let presentation = match (kind, who) {
        (Kind::Consented | Kind::Unconsented, Some(who)) => {
            let ch: Value = client
                .post(format!("{gateway}v1/challenges"))
                .json(&json!({}))
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            let binding = PresentationBinding {
                challenge: ch["challenge"].as_str().unwrap_or_default().to_string(),
                domain: ch["domain"].as_str().unwrap_or_default().to_string(),
            };
            let creds = match kind {
                Kind::Consented => &who.credentials[..],
                _ => &who.credentials[..1],
            };
            credentials::present(creds, &who.key, &binding, ProofFormat::Jwt)
                .await
                .map_err(|e| e.to_string())?
        }
        _ => json!({}),
    };
    let resp = client
        .post(format!("{gateway}v1/exchange/clinical"))
        .json(&json!({
            "purpose": "TREAT",
            "patient": {"system": MRN_SYSTEM, "value": mrn},
            "data_classes": ["Patient"],
            "presentation": presentation,
        }))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    // An allowed answer names its decision in a header: once the headers are here the
    // event was on disk, whether or not the body still arrives.
    if let Some(id) = resp
        .headers()
        .get("fedgate-decision-id")
        .and_then(|v| v.to_str().ok())
    {
        return Ok((status, Some(id.to_string())));
    }
    let body: Value = resp.json().await.map_err(|e| e.to_string())?;
    Ok((status, body["decision_id"].as_str().map(str::to_string)))
}

/// Shared by the workers of a round.
#[derive(Default)]
struct Board {
    /// Set before the kill: a transport error after it is expected, before it a failure.
    killed: AtomicBool,
    stop: AtomicBool,
    answered: Mutex<Vec<Answered>>,
}

/// Sends exchanges of `kinds` in turn until stopped or the gateway is gone.
async fn worker(
    board: Arc<Board>,
    gateway: String,
    kinds: Vec<Kind>,
    who: Option<Arc<Requester>>,
    mrn: String,
    round: usize,
    pause: Duration,
) -> Result<(), String> {
    // A client per round: pooled connections do not outlive the process they went to.
    let client = federation::client::http_client();
    for kind in kinds.iter().cycle() {
        if board.stop.load(Ordering::SeqCst) {
            break;
        }
        match exchange(&client, &gateway, *kind, who.as_deref(), &mrn).await {
            Ok((status @ (200 | 403), Some(id))) => {
                board.answered.lock().unwrap().push(Answered {
                    decision_id: id,
                    status,
                    round,
                });
            }
            Ok((status, id)) => {
                if board.killed.load(Ordering::SeqCst) {
                    break;
                }
                return Err(format!(
                    "{gateway}: {kind:?} answered {status} with decision {id:?}"
                ));
            }
            Err(e) => {
                if board.killed.load(Ordering::SeqCst) {
                    break;
                }
                return Err(format!("{gateway}: {kind:?} failed before any kill: {e}"));
            }
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    Ok(())
}

fn answered_count(board: &Board) -> usize {
    board.answered.lock().unwrap().len()
}

/// Waits (bounded) until the workers of `board` got `n` answers.
async fn wait_answers(board: &Board, n: usize, what: &str) {
    let t0 = Instant::now();
    while answered_count(board) < n {
        assert!(
            t0.elapsed() < PATIENCE,
            "{what}: only {} exchanges answered within {PATIENCE:?}",
            answered_count(board)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn join_workers(tasks: Vec<tokio::task::JoinHandle<Result<(), String>>>, what: &str) {
    for task in tasks {
        match tokio::time::timeout(PATIENCE, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => panic!("{what}: {e}"),
            Ok(Err(e)) => panic!("{what}: worker panicked: {e}"),
            Err(_) => panic!("{what}: a worker did not stop within {PATIENCE:?}"),
        }
    }
}

/// What a stopped gateway holds: the ids of the events it still has to deliver, and its
/// receipts.
struct Stored {
    outbox: HashSet<String>,
    receipts: Vec<Receipt>,
}

/// Reads the outbox and receipts of a gateway that is not running (a running one holds
/// its database's file).
fn stored(gateway_dir: &Path) -> Stored {
    let data = gateway_dir.join("data");
    let path = data.join("gateway.redb");
    assert!(path.is_file(), "no gateway database at {}", path.display());
    let db = gateway::db::open(&data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // Events handed to a NATS stream wait for their receipt in `outbox_published`; they
    // are still the gateway's to deliver.
    let mut outbox = HashSet::new();
    for tree in ["outbox", "outbox_published"] {
        for (k, _) in db.tree(tree).entries().unwrap() {
            outbox.insert(String::from_utf8(k).unwrap());
        }
    }
    let receipts = db
        .tree("receipts")
        .entries()
        .unwrap()
        .into_iter()
        .map(|(_, v)| serde_json::from_slice(&v).unwrap())
        .collect();
    Stored { outbox, receipts }
}

async fn restart_gateway(gw: &Gateway) -> Gateway {
    let (dir, did, config) = (gw.dir.clone(), gw.did.clone(), gw.config.clone());
    tokio::task::spawn_blocking(move || Gateway::restart(&exe(), &dir, &did, &config))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the gateway did not restart after SIGKILL: {e}"))
}

async fn restart_visibility(vis: &Visibility) -> Visibility {
    let config = vis.config.clone();
    tokio::task::spawn_blocking(move || Visibility::restart(&exe(), VISIBILITY, &config))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the visibility service did not restart after SIGKILL: {e}"))
}

async fn drained(gw: &Gateway, what: &str) {
    assert!(
        gw.drained(PATIENCE).await,
        "{what}: the outbox of {} did not drain within {PATIENCE:?} (pending: {:?})",
        gw.did,
        gw.outbox_pending().await
    );
}

async fn inconsistency_alarms(gw: &Gateway) -> f64 {
    gw.metric("fedgate_log_inconsistency_total").await.unwrap()
}

async fn auditor_token(office: &Office, vis: &Visibility) -> String {
    vis.auditor_login(office, AUDITOR_ORG).await.unwrap()
}

/// The verifier of the log's checkpoints, from the service's DID document.
async fn note_verifier(vis: &Visibility) -> NoteVerifier {
    let doc: Value = federation::client::http_client()
        .get(format!("{}.well-known/did.json", vis.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mb = doc["verificationMethod"][0]["publicKeyMultibase"]
        .as_str()
        .unwrap();
    let (_, bytes) = multibase::decode(mb).unwrap();
    let pk: [u8; 32] = bytes[2..].try_into().unwrap();
    NoteVerifier::new(VISIBILITY, pk).unwrap()
}

/// Checks that `new` extends `old` with the service's consistency proof.
async fn assert_consistent(vis: &Visibility, old: &Checkpoint, new: &Checkpoint, what: &str) {
    assert!(
        new.size >= old.size,
        "{what}: the log shrank from {} to {} leaves",
        old.size,
        new.size
    );
    if old.size == new.size || old.size == 0 {
        assert!(
            old.size == 0 || old.root == new.root,
            "{what}: two roots for size {}",
            old.size
        );
        return;
    }
    let proof: Value = federation::client::http_client()
        .get(format!(
            "{}v1/proofs/consistency?old={}&new={}",
            vis.url(),
            old.size,
            new.size
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let hashes: Vec<Hash> = proof["proof"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no consistency proof: {proof}"))
        .iter()
        .map(|h| {
            hex::decode(h.as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap()
        })
        .collect();
    log::verify_consistency(old.size, new.size, &old.root, &new.root, &hashes).unwrap_or_else(
        |e| {
            panic!(
                "{what}: checkpoint {} does not extend {}: {e}",
                new.size, old.size
            )
        },
    );
}

/// RFC 6962 MTH over leaf hashes, computed here from what the log serves.
fn mth(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => log::empty_root(),
        1 => leaves[0],
        n => {
            let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
            log::node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
        }
    }
}

/// Checks the whole log against a new signed checkpoint, and every receipt against the log:
/// the auditor API serves every leaf of the checkpoint exactly once, those leaves hash to
/// its root, no event is logged twice, each receipt's event sits at the receipt's index,
/// and the checkpoint the receipt was handed is a prefix of today's log. Returns the leaf
/// of every event.
async fn verify_log(
    office: &Office,
    vis: &Visibility,
    custodians: &[&str],
    receipts: &[Receipt],
) -> HashMap<String, (u64, AccessEvent)> {
    let token = auditor_token(office, vis).await;
    let cp = vis.checkpoint().await.unwrap();
    let mut leaves: BTreeMap<u64, AccessEvent> = BTreeMap::new();
    for custodian in custodians {
        for (index, event) in vis.events_of(&token, custodian).await.unwrap() {
            assert!(
                leaves.insert(index, event).is_none(),
                "leaf {index} served twice"
            );
        }
    }
    let indexes: Vec<u64> = leaves.keys().copied().collect();
    assert_eq!(
        indexes,
        (0..cp.size).collect::<Vec<_>>(),
        "the leaves served are not exactly those of the checkpoint (size {})",
        cp.size
    );
    let mut by_id: HashMap<String, (u64, AccessEvent)> = HashMap::new();
    for (index, event) in &leaves {
        if let Some((first, _)) = by_id.insert(event.id.clone(), (*index, event.clone())) {
            panic!(
                "event {} logged twice: leaves {first} and {index}",
                event.id
            );
        }
    }
    let hashes: Vec<Hash> = leaves
        .values()
        .map(|event| {
            log::leaf_hash(&leaf_bytes(&LogEntry::Access {
                event: event.clone(),
            }))
        })
        .collect();
    assert_eq!(
        mth(&hashes),
        cp.root,
        "the leaves served do not hash to the signed root"
    );

    let verifier = note_verifier(vis).await;
    let mut prefix_ok: HashSet<u64> = HashSet::new();
    for r in receipts {
        let (index, _) = by_id.get(&r.event_id).unwrap_or_else(|| {
            panic!(
                "receipt for {} (leaf {}) but the event is not in the log",
                r.event_id, r.leaf_index
            )
        });
        assert_eq!(
            *index, r.leaf_index,
            "event {} moved from leaf {} to {index}",
            r.event_id, r.leaf_index
        );
        let handed = checkpoint::open(&r.checkpoint, std::slice::from_ref(&verifier))
            .unwrap_or_else(|e| panic!("receipt of {}: checkpoint: {e}", r.event_id));
        assert_eq!(handed.size, r.tree_size);
        assert!(r.leaf_index < handed.size && handed.size <= cp.size);
        if prefix_ok.insert(handed.size) {
            assert_eq!(
                mth(&hashes[..handed.size as usize]),
                handed.root,
                "a checkpoint handed out at size {} is not a prefix of the log",
                handed.size
            );
        }
    }
    // The service's own inclusion proofs against the new checkpoint, for a spread of them.
    let step = (receipts.len() / 24).max(1);
    for r in receipts.iter().step_by(step) {
        let (index, event) = &by_id[&r.event_id];
        vis.verify_inclusion(&cp, *index, event)
            .await
            .unwrap_or_else(|e| panic!("inclusion of {} at {index}: {e}", r.event_id));
    }
    by_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_under_load_loses_no_answered_exchange() {
    let mut jitter = Jitter::new("gateway");
    let dir = tempfile::tempdir().unwrap();
    let (file, mrn) = fixture_patient().unwrap();
    let mut fed = federation(dir.path(), &[HOSPITAL_A], vec![file])
        .ship_every(Duration::from_millis(50))
        .start()
        .unwrap();
    let who = Arc::new(
        fed.gateway(HOSPITAL_A)
            .unwrap()
            .consented_physician(&fed.office, REQUESTER_ORG, &mrn)
            .await
            .unwrap(),
    );
    let kinds = [
        Kind::Consented,
        Kind::Unbound,
        Kind::Unconsented,
        Kind::Unbound,
    ];
    let mut answered: Vec<Answered> = Vec::new();
    let token = auditor_token(&fed.office, &fed.visibility).await;

    for round in 0..ROUNDS {
        let what = format!("round {round} (seed {})", jitter.seed);
        let board = Arc::new(Board::default());
        let gw = &fed.gateways[0];
        let tasks: Vec<_> = (0..4)
            .map(|w| {
                let mut mine = kinds.to_vec();
                mine.rotate_left(w);
                tokio::spawn(worker(
                    board.clone(),
                    gw.url(),
                    mine,
                    Some(who.clone()),
                    mrn.clone(),
                    round,
                    Duration::ZERO,
                ))
            })
            .collect();
        wait_answers(&board, MIN_ANSWERED_PER_ROUND, &what).await;
        tokio::time::sleep(jitter.millis(700)).await;
        board.killed.store(true, Ordering::SeqCst);
        fed.gateways[0].process.stop();
        board.stop.store(true, Ordering::SeqCst);
        join_workers(tasks, &what).await;
        answered.extend(board.answered.lock().unwrap().drain(..));

        // The promise made by every answer so far: the event is still in the outbox, or
        // it left it with a receipt.
        let s = stored(&fed.gateways[0].dir);
        let receipted: HashSet<&str> = s.receipts.iter().map(|r| r.event_id.as_str()).collect();
        for a in &answered {
            assert!(
                s.outbox.contains(&a.decision_id) || receipted.contains(a.decision_id.as_str()),
                "{what}: exchange {} (round {}) was answered {} but after SIGKILL its event is neither in the outbox nor receipted",
                a.decision_id,
                a.round,
                a.status
            );
        }
        // A receipted event is in the log, where its receipt says.
        let logged: HashMap<String, u64> = fed
            .visibility
            .events_of(&token, HOSPITAL_A)
            .await
            .unwrap()
            .into_iter()
            .map(|(index, event)| (event.id, index))
            .collect();
        for r in &s.receipts {
            assert_eq!(
                logged.get(&r.event_id),
                Some(&r.leaf_index),
                "{what}: the receipt of {} names leaf {}",
                r.event_id,
                r.leaf_index
            );
        }
        println!(
            "{what}: {} answered so far; {} in the outbox, {} receipts",
            answered.len(),
            s.outbox.len(),
            s.receipts.len()
        );
        fed.gateways[0] = restart_gateway(&fed.gateways[0]).await;
    }
    assert!(answered.iter().any(|a| a.status == 200));
    assert!(answered.iter().any(|a| a.status == 403));

    drained(&fed.gateways[0], "after the last restart").await;
    assert_eq!(inconsistency_alarms(&fed.gateways[0]).await, 0.0);
    fed.gateways[0].process.stop();
    let s = stored(&fed.gateways[0].dir);
    let logged = verify_log(&fed.office, &fed.visibility, &[HOSPITAL_A], &s.receipts).await;
    let receipts: HashMap<&str, &Receipt> = s
        .receipts
        .iter()
        .map(|r| (r.event_id.as_str(), r))
        .collect();
    for a in &answered {
        let (index, event) = logged.get(&a.decision_id).unwrap_or_else(|| {
            panic!(
                "exchange {} (round {}) was answered {} but its event never reached the log",
                a.decision_id, a.round, a.status
            )
        });
        let want = if a.status == 200 {
            Outcome::Allow
        } else {
            Outcome::Deny
        };
        assert_eq!(event.decision, want, "{}", a.decision_id);
        let receipt = receipts
            .get(a.decision_id.as_str())
            .unwrap_or_else(|| panic!("no receipt kept for {}", a.decision_id));
        assert_eq!(receipt.leaf_index, *index);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_killed_while_batches_ship_loses_no_receipt() {
    let mut jitter = Jitter::new("visibility");
    let custodians = [HOSPITAL_A, HOSPITAL_B];
    // Small batches shipped as fast as events come: a kill lands inside one.
    let dir = tempfile::tempdir().unwrap();
    let mut fed = federation(dir.path(), &custodians, Vec::new())
        .ship_every(Duration::from_millis(20))
        .ship_batches_of(16)
        .start()
        .unwrap();
    let board = Arc::new(Board::default());
    let tasks: Vec<_> = fed
        .gateways
        .iter()
        .flat_map(|gw| [gw.url(), gw.url()])
        .map(|url| {
            tokio::spawn(worker(
                board.clone(),
                url,
                vec![Kind::Unbound],
                None,
                "0".into(),
                0,
                // Paced, so that a run logs hundreds of events, not tens of thousands.
                Duration::from_millis(15),
            ))
        })
        .collect();

    let mut before = fed.visibility.checkpoint().await.unwrap();
    for round in 0..ROUNDS {
        let what = format!("round {round} (seed {})", jitter.seed);
        // Wait until the log grew since the last restart: batches are flowing again.
        let t0 = Instant::now();
        loop {
            let cp = fed.visibility.checkpoint().await.unwrap();
            if cp.size >= before.size + MIN_ANSWERED_PER_ROUND as u64 {
                break;
            }
            assert!(
                t0.elapsed() < PATIENCE,
                "{what}: the log did not grow past {} within {PATIENCE:?}",
                cp.size
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(jitter.millis(400)).await;
        before = fed.visibility.checkpoint().await.unwrap();
        fed.visibility.process.stop();
        // The gateways keep answering and queueing while the log is down.
        tokio::time::sleep(jitter.millis(300)).await;
        fed.visibility = restart_visibility(&fed.visibility).await;
        let after = fed.visibility.checkpoint().await.unwrap();
        assert_consistent(&fed.visibility, &before, &after, &what).await;
        println!(
            "{what}: killed after checkpoint {}, restarted at {}; {} answered so far",
            before.size,
            after.size,
            answered_count(&board)
        );
    }
    board.stop.store(true, Ordering::SeqCst);
    join_workers(tasks, "visibility crash").await;
    let answered: Vec<Answered> = board.answered.lock().unwrap().clone();
    assert!(!answered.is_empty());

    let mut receipts = Vec::new();
    for gw in &mut fed.gateways {
        drained(gw, "after the last restart").await;
        assert_eq!(
            inconsistency_alarms(gw).await,
            0.0,
            "{}: a restart produced a checkpoint inconsistent with one handed out",
            gw.did
        );
        gw.process.stop();
        receipts.extend(stored(&gw.dir).receipts);
    }
    let logged = verify_log(&fed.office, &fed.visibility, &custodians, &receipts).await;
    let receipted: HashSet<&str> = receipts.iter().map(|r| r.event_id.as_str()).collect();
    for a in &answered {
        assert!(
            logged.contains_key(&a.decision_id) && receipted.contains(a.decision_id.as_str()),
            "exchange {} was answered {} but its event has no receipt in the log",
            a.decision_id,
            a.status
        );
    }
    println!(
        "{} exchanges answered, {} receipts verified against the log",
        answered.len(),
        receipts.len()
    );
}
