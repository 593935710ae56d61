//! Decision latency per domain, beside raw regorus on the same policies.
//!
//! First a fixed run per domain (20,000 evaluations, interleaved) prints p50/p99 of
//! - `decision`: `PolicyBundle::evaluate` as the gateway runs it (compiled VM) with its
//!   decision cache off (serializing and hashing the input, input conversion, the run,
//!   decoding, checks): every decision that is not a repeat within the same second,
//! - `interp`: the same with `policy_engine = "interpreter"`,
//! - `cached`: `PolicyBundle::evaluate` of an input it decided before (a cache hit:
//!   serializing and hashing the input, a lookup, a clone of the decision),
//! - `raw`: a fresh clone of the prepared interpreter, `set_input` of an already converted
//!   input, `eval_rule` of the same rule (the "raw regorus"),
//! - `rvm`: the same rule compiled for regorus's VM, run on an already converted input,
//!   with the number of sample inputs on which it agrees with the interpreter,
//!
//! then criterion measures `decision`, `decision-cached` and `raw` again.
//! `FEDGATE_BENCH_N` changes the count; `FEDGATE_BENCH_POLICIES` measures another bundle.

use std::hint::black_box;

use sha2::Digest;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::Criterion;
use gateway::policy::{
    decision_rule, decode_decision, engine_input, sample_input, sample_inputs, variants,
    EngineKind, PolicyBundle, PolicyInput, PolicyOptions, DOMAINS,
};
use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::RegoVM;
use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Rc, Value};

// As in the fedgate binary: allocation is a good part of a decision.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The VM for one domain's rule, configured like the engine's interpreter.
fn vm_for(bundle: &PolicyBundle, domain: &str) -> Result<RegoVM, String> {
    let rule = decision_rule(domain);
    let mut engine = bundle.prepared_engine();
    let compiled = engine
        .compile_with_entrypoint(&Rc::from(rule.as_str()))
        .map_err(|e| e.to_string())?;
    let program =
        Compiler::compile_from_policy(&compiled, &[rule.as_str()]).map_err(|e| e.to_string())?;
    let mut vm = RegoVM::new();
    vm.load_program(program);
    vm.set_data(Value::new_object())
        .map_err(|e| e.to_string())?;
    vm.set_strict_builtin_errors(true);
    vm.set_max_instructions(1_000_000);
    vm.set_execution_timer_config(Some(ExecutionTimerConfig {
        limit: Duration::from_millis(50),
        check_interval: NonZeroU32::MIN.saturating_add(15),
    }));
    Ok(vm)
}

/// The input as raw regorus takes it, converted once outside the measurement.
fn engine_value(input: &PolicyInput) -> Value {
    engine_input(input).unwrap_or(Value::Undefined)
}

fn fixed_run(bundle: &PolicyBundle, interp: &PolicyBundle, cached: &PolicyBundle, n: usize) {
    println!("decision latency, {n} evaluations per domain (sample allow input), µs");
    println!(
        "{:<11} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>9} {:>9} {:>10}",
        "domain",
        "dec p50",
        "dec p99",
        "interp",
        "hit p50",
        "hit p99",
        "raw p50",
        "raw p99",
        "ratio",
        "rvm p50",
        "rvm p99",
        "rvm agrees"
    );
    for domain in DOMAINS {
        let input = sample_input(domain);
        let converted = engine_value(&input);
        let rule = decision_rule(domain);
        let prepared = bundle.prepared_engine();
        let mut vm = vm_for(bundle, domain);

        let mut dec = Vec::with_capacity(n);
        let mut int = Vec::with_capacity(n);
        let mut hit = Vec::with_capacity(n);
        let mut raw = Vec::with_capacity(n);
        black_box(cached.evaluate(domain, &input));
        let mut rvm = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            black_box(bundle.evaluate(domain, black_box(&input)));
            dec.push(t.elapsed());

            let t = Instant::now();
            black_box(interp.evaluate(domain, black_box(&input)));
            int.push(t.elapsed());

            let t = Instant::now();
            black_box(cached.evaluate(domain, black_box(&input)));
            hit.push(t.elapsed());

            let t = Instant::now();
            let mut e = prepared.clone();
            e.set_input(converted.clone());
            let _ = black_box(e.eval_rule(rule.clone()));
            raw.push(t.elapsed());

            if let Ok(vm) = vm.as_mut() {
                let t = Instant::now();
                vm.set_input(converted.clone());
                let _ = black_box(vm.execute());
                rvm.push(t.elapsed());
            }
        }
        dec.sort();
        int.sort();
        hit.sort();
        raw.sort();
        rvm.sort();

        // Where the VM and the interpreter disagree, the VM is not a drop-in replacement.
        let agrees = match vm.as_mut() {
            Ok(vm) => {
                let cases = sample_inputs(domain);
                let same = cases
                    .iter()
                    .filter(|c| {
                        let v = engine_value(c);
                        let mut e = prepared.clone();
                        e.set_input(v.clone());
                        let interp = e.eval_rule(rule.clone()).ok();
                        vm.set_input(v);
                        let compiled = vm.execute().ok();
                        interp.is_some() && interp == compiled
                    })
                    .count();
                format!("{same}/{}", cases.len())
            }
            Err(e) => format!("no: {}", e.chars().take(40).collect::<String>()),
        };
        let (d50, d99, r50, r99) = (
            percentile(&dec, 0.5),
            percentile(&dec, 0.99),
            percentile(&raw, 0.5),
            percentile(&raw, 0.99),
        );
        println!(
            "{:<11} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>6.2}x {:>9.1} {:>9.1} {:>10}",
            domain,
            us(d50),
            us(d99),
            us(percentile(&int, 0.5)),
            us(percentile(&hit, 0.5)),
            us(percentile(&hit, 0.99)),
            us(r50),
            us(r99),
            us(d50) / us(r50).max(f64::MIN_POSITIVE),
            us(percentile(&rvm, 0.5)),
            us(percentile(&rvm, 0.99)),
            agrees,
        );
    }
    println!("targets: decision p50 <= 50 µs; hit p50 is a repeat of an input within its second");
    stages(bundle, n);
    variant_costs(bundle, n / 5);
}

/// p50 of each variant input of `fedgate policy check` (every deny path, allows,
/// break-glass, unreadable dates), summed up per domain and answer: what a deny costs, not
/// only the sample allow.
fn variant_costs(bundle: &PolicyBundle, n: usize) {
    for domain in DOMAINS {
        let mut by_answer: [Vec<(f64, &'static str)>; 2] = Default::default();
        for (name, input) in variants(domain) {
            let allow = bundle.evaluate(domain, &input).allow;
            let mut times: Vec<Duration> = (0..n.max(1))
                .map(|_| {
                    let t = Instant::now();
                    black_box(bundle.evaluate(domain, black_box(&input)));
                    t.elapsed()
                })
                .collect();
            times.sort();
            by_answer[usize::from(allow)].push((us(percentile(&times, 0.5)), name));
        }
        let line: Vec<String> = ["denies", "allows"]
            .iter()
            .zip(&mut by_answer)
            .filter(|(_, v)| !v.is_empty())
            .map(|(what, v)| {
                v.sort_by(|a, b| a.0.total_cmp(&b.0));
                let median = v[v.len() / 2].0;
                let (slowest, name) = v[v.len() - 1];
                format!(
                    "{} {what}: median {median:.1}, slowest {slowest:.1} ({name})",
                    v.len()
                )
            })
            .collect();
        println!("{domain:<11} variants, p50 µs: {}", line.join("; "));
    }
}

/// p50 of the steps around the engine's run on the clinical sample: what a decision costs
/// besides the policy.
fn stages(bundle: &PolicyBundle, n: usize) {
    let input = sample_input("clinical");
    let mut times: [Vec<Duration>; 4] = Default::default();
    for _ in 0..n {
        let t = Instant::now();
        let bytes = serde_json::to_vec(black_box(&input)).unwrap_or_default();
        times[0].push(t.elapsed());
        let t = Instant::now();
        black_box(sha2::Sha256::digest(&bytes));
        times[1].push(t.elapsed());
        let t = Instant::now();
        let text = std::str::from_utf8(&bytes).unwrap_or_default();
        black_box(Value::from_json_str(text).ok());
        times[2].push(t.elapsed());
        let t = Instant::now();
        black_box(engine_value(&input));
        times[3].push(t.elapsed());
    }
    for t in &mut times {
        t.sort();
    }
    println!(
        "clinical input ({} bytes), p50 µs: serialize {:.1}, SHA-256 {:.1}, parse of the text into regorus {:.1}, conversion as the engine does it {:.1}",
        serde_json::to_vec(&input).map(|b| b.len()).unwrap_or_default(),
        us(percentile(&times[0], 0.5)),
        us(percentile(&times[1], 0.5)),
        us(percentile(&times[2], 0.5)),
        us(percentile(&times[3], 0.5)),
    );
    // The decision document back: through its JSON text (as before), and read directly.
    let Ok(mut vm) = vm_for(bundle, "clinical") else {
        return;
    };
    vm.set_input(engine_value(&input));
    let Ok(value) = vm.execute() else {
        return;
    };
    let mut decode: [Vec<Duration>; 2] = Default::default();
    for _ in 0..n {
        let t = Instant::now();
        let text = serde_json::to_vec(black_box(&value)).unwrap_or_default();
        black_box(serde_json::from_slice::<gateway::policy::Decision>(&text).ok());
        decode[0].push(t.elapsed());
        let t = Instant::now();
        black_box(decode_decision(black_box(&value)));
        decode[1].push(t.elapsed());
    }
    for t in &mut decode {
        t.sort();
    }
    println!(
        "clinical decision, p50 µs: read through its JSON text {:.1}, read directly as the engine does {:.1}",
        us(percentile(&decode[0], 0.5)),
        us(percentile(&decode[1], 0.5)),
    );
}

/// p50 of raw evaluations of single rules on the clinical sample: where the time goes.
fn rule_costs(bundle: &PolicyBundle, rules: &str, n: usize) {
    let converted = engine_value(&sample_input("clinical"));
    let prepared = bundle.prepared_engine();
    for rule in rules.split(',') {
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            let mut e = prepared.clone();
            e.set_input(converted.clone());
            let _ = black_box(e.eval_rule(rule.to_string()));
            times.push(t.elapsed());
        }
        times.sort();
        println!("{rule:<45} p50 {:>8.1} µs", us(percentile(&times, 0.5)));
    }
}

fn main() {
    // FEDGATE_BENCH_POLICIES measures another bundle (a rewrite) against the same inputs.
    let dir = std::env::var_os("FEDGATE_BENCH_POLICIES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"));
    let load = |cache_entries, engine| {
        let options = PolicyOptions {
            cache_entries,
            engine,
            ..PolicyOptions::default()
        };
        PolicyBundle::load_with(&dir, options).unwrap_or_else(|e| {
            eprintln!("cannot load {}: {e}", dir.display());
            std::process::exit(1);
        })
    };
    // Misses are measured without the cache, hits with it.
    let bundle = load(0, EngineKind::Vm);
    let interp = load(0, EngineKind::Interpreter);
    let cached = load(
        gateway::policy::DEFAULT_DECISION_CACHE_ENTRIES,
        EngineKind::Vm,
    );
    let n = std::env::var("FEDGATE_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    if let Ok(rules) = std::env::var("FEDGATE_BENCH_RULES") {
        rule_costs(&bundle, &rules, n);
        return;
    }
    fixed_run(&bundle, &interp, &cached, n);

    let mut c = Criterion::default()
        .sample_size(30)
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    for domain in DOMAINS {
        let input = sample_input(domain);
        let converted = engine_value(&input);
        let rule = decision_rule(domain);
        let prepared = bundle.prepared_engine();
        c.bench_function(&format!("decision/{domain}"), |b| {
            b.iter(|| bundle.evaluate(domain, black_box(&input)))
        });
        c.bench_function(&format!("decision-interpreter/{domain}"), |b| {
            b.iter(|| interp.evaluate(domain, black_box(&input)))
        });
        c.bench_function(&format!("decision-cached/{domain}"), |b| {
            b.iter(|| cached.evaluate(domain, black_box(&input)))
        });
        c.bench_function(&format!("raw-regorus/{domain}"), |b| {
            b.iter(|| {
                let mut e = prepared.clone();
                e.set_input(converted.clone());
                e.eval_rule(rule.clone())
            })
        });
    }
    c.final_summary();
}
