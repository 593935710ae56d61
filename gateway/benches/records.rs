//! Reading one hospital-a patient's full record (Della Hettinger: 252 resources) from the
//! embedded store — redb reads and JSON parsing — beside copying the same record once
//! parsed, which is what a record kept in memory would cost instead.

use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

use criterion::Criterion;
use gateway::records::EmbeddedStore;

type Error = Box<dyn std::error::Error>;

// Allocates as the fedgate binary does: a copy is mostly allocation.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn run() -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let store = EmbeddedStore::open(&dir.path().join("records"))?;
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/data/fhir/hospital-a/Della_Hettinger_8386e1d9.json");
    store.import_file(&file)?;
    let types: Vec<String> = store.count_by_type()?.into_keys().collect();
    let pid = store.patient_ids()?.pop().ok_or("no patient imported")?;
    let record = store.patient_resources(&pid, &types)?;
    let conditions = ["Condition".to_string(), "Patient".to_string()];

    let mut c = Criterion::default()
        .sample_size(30)
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    let n = record.len();
    c.bench_function(&format!("records/{n}-resources/read"), |b| {
        b.iter(|| store.patient_resources(black_box(&pid), &types))
    });
    c.bench_function(&format!("records/{n}-resources/clone"), |b| {
        b.iter(|| black_box(&record).clone())
    });
    let few = store.patient_resources(&pid, &conditions)?;
    c.bench_function(
        &format!("records/patient-and-conditions-{}/read", few.len()),
        |b| b.iter(|| store.patient_resources(black_box(&pid), &conditions)),
    );
    c.bench_function(
        &format!("records/patient-and-conditions-{}/clone", few.len()),
        |b| b.iter(|| black_box(&few).clone()),
    );
    c.final_summary();
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("records bench: {e}");
        std::process::exit(1);
    }
}
