//! Tokenization of one hospital-a patient's full record (Della Hettinger: 252 resources,
//! its Provenance dropped on the way) under the clinical TREAT obligations, the fail-closed
//! default, and the research (Safe Harbor) obligations; of the Patient and Conditions alone
//! under TREAT (the exchange bench's page); and of a generated 5,000-resource record under
//! the fail-closed default (free-text scrubbing at scale). Tokens are reused from the vault
//! after the first iteration, as for a recipient that fetches the same record again.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use criterion::{BatchSize, Criterion};
use gateway::records::EmbeddedStore;
use gateway::tokenize::{apply, Obligations, TokenizeContext};
use gateway::vault::Vault;
use serde_json::Value;

type Error = Box<dyn std::error::Error>;

/// The record, from a fresh store in `dir`.
fn record(dir: &Path) -> Result<Vec<Value>, Error> {
    let store = EmbeddedStore::open(&dir.join("records"))?;
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/data/fhir/hospital-a/Della_Hettinger_8386e1d9.json");
    store.import_file(&file)?;
    let types: Vec<String> = store.count_by_type()?.into_keys().collect();
    let pid = store.patient_ids()?.pop().ok_or("no patient imported")?;
    Ok(store.patient_resources(&pid, &types)?)
}

fn run() -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let record = record(dir.path())?;
    let db = gateway::db::open(dir.path())?;
    let vault = Vault::open(db.tree("vault"), [9u8; 32]);
    let key = [7u8; 32];
    let ctx = TokenizeContext {
        recipient_org: "did:web:hospital-b.example",
        domain: "clinical",
        pseudonym_key: &key,
        vault: &vault,
        now: Utc::now(),
    };
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let treat = Obligations {
        reveal: strings(&["address", "birth-date", "mrn", "name", "telecom"]),
        tokenize: strings(&["drivers-license", "other-identifiers", "passport", "ssn"]),
        pseudonymize: strings(&["patient-id", "resource-ids"]),
        max_records: Some(5000),
        ..Obligations::default()
    };
    let research = Obligations {
        pseudonymize: strings(&["patient-id", "resource-ids"]),
        generalize: strings(&["address", "birth-date", "dates"]),
        redact: strings(&["attachments", "narrative"]),
        ..Obligations::default()
    };
    // Fail early rather than measure an error path.
    apply(record.clone(), &treat, &ctx)?;

    let mut c = Criterion::default()
        .sample_size(30)
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    let treat_small = treat.clone();
    for (name, obligations) in [
        ("treat", treat),
        ("fail-closed-default", Obligations::default()),
        ("research-safe-harbor", research),
    ] {
        c.bench_function(
            &format!("tokenize/{}-resources/{name}", record.len()),
            |b| {
                // The clone is setup, not measured.
                b.iter_batched(
                    || record.clone(),
                    |r| apply(black_box(r), &obligations, &ctx).map(|t| t.resources),
                    BatchSize::LargeInput,
                )
            },
        );
    }

    // The page of the exchange bench: the Patient and their Conditions, small enough to be
    // tokenized on a request's own thread (`INLINE_TOKENIZE_BYTES` in state.rs).
    let small: Vec<Value> = record
        .iter()
        .filter(|r| matches!(r["resourceType"].as_str(), Some("Patient" | "Condition")))
        .cloned()
        .collect();
    let small_bytes = serde_json::to_vec(&small)?.len();
    c.bench_function(
        &format!(
            "tokenize/{}-resources-{}-kb/treat",
            small.len(),
            small_bytes / 1024
        ),
        |b| {
            b.iter_batched(
                || small.clone(),
                |r| apply(black_box(r), &treat_small, &ctx).map(|t| t.resources),
                BatchSize::SmallInput,
            )
        },
    );

    // A generated elderly patient's record of 5,000 resources, every form of their
    // identifiers in notes and text attachments, under the fail-closed default (every
    // identifier class scrubbed from every string): one automaton for the record.
    let large = synth::Generator::new(synth::Options {
        seed: 5,
        min_resources: 5000,
        max_resources: 5000,
        ..synth::Options::default()
    })
    .patient();
    let large: Vec<Value> = large.bundle["entry"]
        .as_array()
        .ok_or("a generated bundle without entries")?
        .iter()
        .map(|e| e["resource"].clone())
        .collect();
    let unlimited = Obligations {
        max_records: None,
        ..Obligations::default()
    };
    c.bench_function(
        &format!(
            "tokenize/{}-resources/synth-fail-closed-default",
            large.len()
        ),
        |b| {
            b.iter_batched(
                || large.clone(),
                |r| apply(black_box(r), &unlimited, &ctx).map(|t| t.resources),
                BatchSize::LargeInput,
            )
        },
    );
    c.final_summary();
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("tokenize bench: {e}");
        std::process::exit(1);
    }
}
