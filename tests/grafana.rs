//! The operator's Grafana dashboard (`deploy/grafana/fedgate-operations.json`) charts only
//! metrics the services export: every metric name in its queries is one the code records
//! (`metrics::counter!`, `gauge!`, `histogram!`), with the suffixes its kind is exposed
//! under (histograms are Prometheus summaries: quantiles, `_sum`, `_count`, no buckets),
//! and the visibility service's own are on its `/metrics` once it runs.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

const DASHBOARD: &str = "deploy/grafana/fedgate-operations.json";
const SOURCES: [&str; 5] = [
    "gateway/src",
    "visibility/src",
    "storage/src",
    "service/src",
    "issuer/src",
];

/// `fedgate_...` names in `text`.
fn names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (at, _) in text.match_indices("fedgate_") {
        if at > 0 {
            let before = text.as_bytes()[at - 1];
            if before.is_ascii_alphanumeric() || before == b'_' {
                continue;
            }
        }
        let name: String = text[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        out.push(name);
    }
    out
}

/// Metric name → kind (`counter`, `gauge`, `histogram`), from the macros in the sources.
fn recorded() -> BTreeMap<String, &'static str> {
    fn walk(dir: &Path, out: &mut BTreeMap<String, &'static str>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for kind in ["counter", "gauge", "histogram"] {
                    let needle = format!("metrics::{kind}!(");
                    for (at, _) in text.match_indices(&needle) {
                        let rest = text[at + needle.len()..].trim_start();
                        if let Some(rest) = rest.strip_prefix('"') {
                            let name: String = rest.chars().take_while(|c| *c != '"').collect();
                            out.insert(name, kind);
                        }
                    }
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    for dir in SOURCES {
        walk(&support::repo(dir), &mut out);
    }
    out
}

fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == "expr" {
                    out.push(v.as_str().unwrap().to_string());
                } else {
                    exprs(v, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn every_metric_on_the_dashboard_is_exported() {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(support::repo(DASHBOARD)).unwrap()).unwrap();
    assert_eq!(dashboard["uid"], "fedgate-operations");
    let mut queries = Vec::new();
    exprs(&dashboard["panels"], &mut queries);
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let recorded = recorded();
    assert!(recorded.len() >= 20, "{recorded:?}");
    let mut used = BTreeSet::new();
    for q in &queries {
        let found = names(q);
        assert!(!found.is_empty(), "a query without a fedgate metric: {q}");
        for name in found {
            let kind = recorded.get(&name).copied().or_else(|| {
                ["_sum", "_count"].iter().find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .and_then(|base| recorded.get(base))
                        .filter(|k| **k == "histogram")
                        .copied()
                })
            });
            let kind = kind.unwrap_or_else(|| panic!("{name} (in {q}) is not exported"));
            if kind == "histogram" && !name.ends_with("_sum") && !name.ends_with("_count") {
                assert!(q.contains("quantile="), "{name} is a summary: {q}");
            }
            if kind == "counter" {
                assert!(
                    q.contains("rate(") || q.contains("increase("),
                    "{name} is a counter: chart its rate or increase: {q}"
                );
            }
            used.insert(name);
        }
    }
    // What the issue asks the operator to see.
    for needed in [
        "fedgate_decisions_total",
        "fedgate_verification_failures_total",
        "fedgate_outbox_pending",
        "fedgate_outbox_awaiting_receipt",
        "fedgate_log_checkpoint_size",
        "fedgate_log_checkpoint_timestamp_seconds",
        "fedgate_log_split_view",
        "fedgate_log_inconsistent",
    ] {
        assert!(
            used.contains(needed),
            "the dashboard does not chart {needed}"
        );
    }
}

#[tokio::test]
async fn the_visibility_metrics_on_the_dashboard_are_on_its_metrics_endpoint() {
    let log = support::audit::start(20, 5).await;
    let text = support::audit::client()
        .get(log.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "fedgate_log_checkpoint_size",
        "fedgate_log_checkpoint_timestamp_seconds",
        "fedgate_log_appended_total",
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .unwrap_or_else(|| panic!("{name} not on /metrics:\n{text}"));
        let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(value > 0.0, "{line}");
    }
    let dashboard = std::fs::read_to_string(support::repo(DASHBOARD)).unwrap();
    assert!(dashboard.contains("fedgate_log_appended_total"));
}
