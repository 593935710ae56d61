//! A short run of the `tokenize` fuzz target inside `cargo test`: the body in
//! `test_support::fuzzing::gateway` (the one the cargo-fuzz target calls) over the committed seeds in
//! `fuzz/corpus/tokenize/` and seeded mutations of each. The seeds are real
//! records cut from `examples/data/fhir/`;
//! `cargo test -p gateway --test fuzz_smoke -- --ignored write_corpus` rewrites them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use test_support::fuzzing;
use test_support::fuzzing::gateway::Tokenizer;

/// Mutations per seed, bounded by the time a debug build takes on a whole record.
const PER_SEED: usize = 300;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn corpus_dir() -> PathBuf {
    repo().join("fuzz/corpus/tokenize")
}

#[test]
fn tokenize() {
    let tokenizer = Tokenizer::new().unwrap();
    let ran = fuzzing::smoke("tokenize", &corpus_dir(), PER_SEED, |data| {
        tokenizer.run(data)
    });
    eprintln!("tokenize: {ran} inputs");
}

/// A bundle with at most `per_type` entries of each resource type of `file`, Provenance
/// left out (the tokenizer drops it first thing).
fn sample(file: &str, per_type: usize) -> Value {
    let bundle: Value = serde_json::from_slice(&std::fs::read(repo().join(file)).unwrap()).unwrap();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let entries: Vec<Value> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            let ty = e["resource"]["resourceType"].as_str().unwrap().to_string();
            let n = seen.entry(ty.clone()).or_default();
            *n += 1;
            ty != "Provenance" && *n <= per_type
        })
        .cloned()
        .collect();
    json!({"resourceType": "Bundle", "type": bundle["type"], "entry": entries})
}

#[test]
#[ignore = "rewrites the committed seed corpus"]
fn write_corpus() {
    let a = sample(
        "examples/data/fhir/hospital-a/Della_Hettinger_8386e1d9.json",
        1,
    );
    let b = sample("examples/data/fhir/hospital-b/mixed-101-0000.json", 2);
    let patient = a["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .find(|r| r["resourceType"] == "Patient")
        .unwrap()
        .clone();
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).unwrap();
    for (name, value) in [
        ("ok-hospital-a-bundle-one-of-each-type", a),
        ("ok-hospital-b-bundle-sample", b),
        ("ok-hospital-a-patient", patient),
    ] {
        std::fs::write(dir.join(name), serde_json::to_vec(&value).unwrap()).unwrap();
    }
}
