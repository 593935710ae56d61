//! The FHIR tokenizer's fuzz target body, shared by the cargo-fuzz target `tokenize` in
//! `fuzz/` and by the corpus smoke test that `cargo test` runs
//! (`tests/fuzz_smoke.rs`).
//!
//! The input is read as JSON: a FHIR Bundle (its entries' resources), an array of
//! resources, or one resource. Each obligation set the policies hand out is applied to it
//! with fixed keys and a fixed decision time, and the output is checked: it is JSON that
//! reads back as itself, it holds no more resources than were given (nor any Provenance),
//! nothing of a resource's `meta` but profiles and security labels, and under the
//! fail-closed default no person keeps a direct identifier.

use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use gateway::tokenize::{apply, Obligations, TokenizeContext};
use gateway::vault::Vault;

/// The requesting organization the output is for.
const RECIPIENT: &str = "did:web:hospital-b.fuzz.example";
const PSEUDONYM_KEY: [u8; 32] = [0x70; 32];
const VAULT_KEY: [u8; 32] = [0x76; 32];
/// The decision time: 2026-06-01T00:00:00Z, so that ages (the 90+ rule) do not drift.
const NOW: i64 = 1_780_272_000;
/// Fields a person keeps under the fail-closed default only if something revealed them.
const DIRECT_FIELDS: [&str; 7] = [
    "identifier",
    "name",
    "telecom",
    "address",
    "birthDate",
    "_birthDate",
    "photo",
];

/// The obligation sets of `policies/common.rego` (break-glass, billing, research) and the
/// fail-closed default of a decision that names no class, with the domain each is for.
fn obligation_sets() -> anyhow::Result<Vec<(&'static str, &'static str, Obligations)>> {
    // The lists given over the fail-closed default: a decision names every field.
    let parse = |partial: Value| {
        let mut doc = serde_json::to_value(Obligations::default())?;
        if let (Some(doc), Some(partial)) = (doc.as_object_mut(), partial.as_object()) {
            doc.extend(partial.clone());
        }
        serde_json::from_value::<Obligations>(doc)
    };
    Ok(vec![
        (
            "break-glass",
            "clinical",
            parse(json!({
                "reveal": ["name"],
                "tokenize": ["address", "birth-date", "drivers-license", "mrn",
                             "other-identifiers", "passport", "ssn", "telecom"],
                "pseudonymize": ["patient-id", "resource-ids"],
                "max_records": 5000
            }))?,
        ),
        (
            "billing",
            "billing",
            parse(json!({
                "reveal": ["birth-date", "name"],
                "tokenize": ["drivers-license", "mrn", "other-identifiers", "passport", "ssn"],
                "pseudonymize": ["patient-id", "resource-ids"],
                "generalize": ["address"],
                "redact": ["attachments", "narrative", "telecom"],
                "max_records": 5000
            }))?,
        ),
        (
            "research",
            "research",
            parse(json!({
                "pseudonymize": ["patient-id", "resource-ids"],
                "generalize": ["address", "birth-date", "dates"],
                "redact": ["attachments", "drivers-license", "mrn", "name", "narrative",
                           "other-identifiers", "passport", "ssn", "telecom"],
                "aggregate_only": true,
                "min_cell_size": 11,
                "max_records": 5000
            }))?,
        ),
        ("fail-closed", "clinical", Obligations::default()),
    ])
}

/// The tokenizer with its vault (a database in memory, gone on drop) and the obligation
/// sets.
pub struct Tokenizer {
    vault: Vault,
    now: DateTime<Utc>,
    sets: Vec<(&'static str, &'static str, Obligations)>,
}

impl Tokenizer {
    /// A tokenizer whose vault is a database in memory.
    pub fn new() -> anyhow::Result<Self> {
        let db = gateway::db::temporary()?;
        Ok(Tokenizer {
            vault: Vault::open(db.tree("vault"), VAULT_KEY),
            now: DateTime::from_timestamp(NOW, 0).unwrap_or_else(Utc::now),
            sets: obligation_sets()?,
        })
    }

    /// Tokenizes the resources in `data` under every obligation set. `Ok` when the input
    /// was JSON and every set applied; an error of one set does not stop the others.
    pub fn run(&self, data: &[u8]) -> anyhow::Result<()> {
        let resources = read_resources(data)?;
        let eligible = resources
            .iter()
            .filter(|r| {
                r["resourceType"]
                    .as_str()
                    .is_some_and(|t| t != "Provenance")
            })
            .count();
        let mut outcome = Ok(());
        for (name, domain, obligations) in &self.sets {
            let ctx = TokenizeContext {
                recipient_org: RECIPIENT,
                domain,
                pseudonym_key: &PSEUDONYM_KEY,
                vault: &self.vault,
                now: self.now,
            };
            match apply(resources.clone(), obligations, &ctx) {
                Ok(out) => check_output(name, obligations, eligible, &out.resources),
                Err(e) => {
                    if outcome.is_ok() {
                        outcome = Err(anyhow::anyhow!("{name}: {e}"));
                    }
                }
            }
        }
        outcome
    }
}

/// The resources of a Bundle, an array, or one resource.
fn read_resources(data: &[u8]) -> anyhow::Result<Vec<Value>> {
    let value: Value = serde_json::from_slice(data)?;
    Ok(match value {
        Value::Array(items) => items,
        bundle if bundle["resourceType"] == "Bundle" => bundle["entry"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter_map(|e| e.get("resource").cloned())
                    .collect()
            })
            .unwrap_or_default(),
        one => vec![one],
    })
}

fn check_output(set: &str, obligations: &Obligations, eligible: usize, out: &[Value]) {
    let limit = obligations
        .max_records
        .map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX));
    assert!(
        out.len() <= eligible.min(limit),
        "{set}: {} resources out of {eligible}",
        out.len()
    );
    for r in out {
        let ty = r["resourceType"].as_str();
        assert!(
            ty.is_some_and(|t| t != "Provenance"),
            "{set}: every resource that leaves has a type and none is a Provenance"
        );
        assert!(
            r["meta"]["source"].is_null(),
            "{set}: meta.source is removed"
        );
        // No set names `meta`: only profiles and HL7 security labels are left of it.
        if let Some(meta) = r.get("meta").and_then(Value::as_object) {
            assert!(
                meta.keys().all(|k| k == "profile" || k == "security"),
                "{set}: meta keeps only profiles and security labels"
            );
        }
    }
    let text = serde_json::to_vec(out).unwrap_or_else(|e| panic!("{set}: output: {e}"));
    let back: Vec<Value> =
        serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{set}: output: {e}"));
    assert_eq!(
        back, out,
        "{set}: the output is JSON that reads back as itself"
    );
    if set == "fail-closed" {
        for r in out {
            assert_no_person_identifiers(set, r);
        }
    }
}

/// Under the fail-closed default every person, top level or contained, loses its direct
/// identifiers.
fn assert_no_person_identifiers(set: &str, value: &Value) {
    match value {
        Value::Object(obj) => {
            if let Some(ty @ ("Patient" | "RelatedPerson")) =
                obj.get("resourceType").and_then(Value::as_str)
            {
                for field in DIRECT_FIELDS {
                    assert!(
                        !obj.contains_key(field),
                        "{set}: a {ty} keeps {field} though nothing revealed it"
                    );
                }
            }
            for v in obj.values() {
                assert_no_person_identifiers(set, v);
            }
        }
        Value::Array(items) => {
            for v in items {
                assert_no_person_identifiers(set, v);
            }
        }
        _ => {}
    }
}

/// The cargo-fuzz body: one [`Tokenizer`] per process. Its temporary vault is left behind
/// when the fuzzer exits (nothing is dropped then): the fuzz script points `TMPDIR` at a
/// scratch directory it removes.
pub fn tokenize(data: &[u8]) -> anyhow::Result<()> {
    static TOKENIZER: OnceLock<Tokenizer> = OnceLock::new();
    TOKENIZER
        .get_or_init(|| {
            // Depends on nothing from the input: without a vault the fuzzer cannot run.
            Tokenizer::new().unwrap_or_else(|e| panic!("fuzz harness: no tokenizer: {e}"))
        })
        .run(data)
}
