//! `fedgate records`: the gateway's embedded FHIR store.
//!
//! `import --store STORE FILES...` loads transaction or collection Bundles (a directory
//! stands for its `*.json` files) and prints what was imported per resource type and
//! every entry that was skipped, with its reason. Skipped entries are not an error; a file
//! that cannot be read or parsed at all is, after the other files were imported.
//!
//! `smart-key --out FILE` writes the private key the gateway signs its SMART Backend
//! Services client assertions with (ES384, PEM, mode 0600) and prints the public JWK Set
//! to register with the FHIR server's authorization server.

use anyhow::anyhow;
use std::path::PathBuf;

use gateway::records::{import_paths_with, EmbeddedStore, ImportProgress, ImportReport};

#[derive(Debug, clap::Subcommand)]
pub enum RecordsCommand {
    /// Import FHIR R4 Bundles into the embedded store (idempotent).
    Import(ImportArgs),
    /// Write synthetic patients (no real person) as one transaction Bundle per file, with
    /// their identifiers also in free text and attachments: for trying a gateway, tests and
    /// benchmarks.
    Synth(SynthArgs),
    /// Write a new ES384 private key (PEM, 0600) for `[records.auth] key_file` and print
    /// its public JWK Set, to register with the FHIR server's authorization server.
    SmartKey(SmartKeyArgs),
}

#[derive(Debug, clap::Args)]
pub struct SmartKeyArgs {
    /// The private key file to write; an existing file is never overwritten.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct SynthArgs {
    /// Directory to write `patient-NNNN.json` files into (created if missing).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    patients: u32,
    /// The same seed writes the same patients.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Records the size of an elderly patient's history (3,000 to 6,600 resources each).
    #[arg(long)]
    large: bool,
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The store file (the gateway's `data_dir/records`); created if missing. The gateway
    /// must not be running on it. Each bundle is stored in one write, on disk when the
    /// import moves on.
    #[arg(long, required_unless_present = "config", conflicts_with = "config")]
    store: Option<PathBuf>,
    /// Or the gateway's config file: the store is wherever it keeps it (its `data_dir`, or
    /// with `[storage] backend = "postgres"` the schema its replicas share; they may be
    /// running).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Bundle files, or directories of `*.json` bundles.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub fn run(command: RecordsCommand) -> anyhow::Result<()> {
    match command {
        RecordsCommand::Import(args) => import(args),
        RecordsCommand::Synth(args) => synth(args),
        RecordsCommand::SmartKey(args) => smart_key(args),
    }
}

pub fn smart_key(args: SmartKeyArgs) -> anyhow::Result<()> {
    let (pem, jwks) =
        gateway::records::smart::generate_es384_key().map_err(|e| anyhow!("smart-key: {e}"))?;
    federation::keys::write_private(&args.out, &pem)
        .map_err(|e| anyhow!("{}: {e}", args.out.display()))?;
    eprintln!(
        "wrote the private key to {} (mode 0600); register this public JWK Set with the \
         authorization server (or publish it at a JWKS URL it reads):",
        args.out.display()
    );
    let text = serde_json::to_string_pretty(&jwks)?;
    println!("{text}");
    Ok(())
}

pub fn synth(args: SynthArgs) -> anyhow::Result<()> {
    let options = if args.large {
        synth::Options::large(args.seed)
    } else {
        synth::Options {
            seed: args.seed,
            ..synth::Options::default()
        }
    };
    std::fs::create_dir_all(&args.out).map_err(|e| anyhow!("{}: {e}", args.out.display()))?;
    let mut generator = synth::Generator::new(options);
    let mut resources = 0;
    for i in 0..args.patients {
        let patient = generator.patient();
        resources += patient.len();
        let path = args.out.join(format!("patient-{i:04}.json"));
        let bytes = serde_json::to_vec(&patient.bundle)?;
        std::fs::write(&path, bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    }
    println!(
        "wrote {} synthetic patients ({resources} resources) to {}",
        args.patients,
        args.out.display()
    );
    Ok(())
}

fn import(args: ImportArgs) -> anyhow::Result<()> {
    let (store, shown) = match (&args.store, &args.config) {
        (Some(path), _) => (
            EmbeddedStore::open(path).map_err(|e| anyhow!("{}: {e}", path.display()))?,
            path.display().to_string(),
        ),
        (None, Some(config)) => {
            let config = gateway::config::GatewayConfig::load(config)?;
            (
                EmbeddedStore::open_configured(&config.storage, &config.data_dir)?,
                match config.storage.backend {
                    service::db::Backend::Postgres => "the gateway's PostgreSQL schema".into(),
                    service::db::Backend::Embedded => {
                        config.data_dir.join("records").display().to_string()
                    }
                },
            )
        }
        (None, None) => return Err(anyhow!("give --store FILE or --config GATEWAY.toml")),
    };
    let bar = ProgressBar::new();
    let report = import_paths_with(&store, &args.files, |p| bar.show(p))?;
    bar.0.finish_and_clear();
    print!("{}", render(&report, &shown));
    if report.failed.is_empty() {
        Ok(())
    } else {
        Err(anyhow!(
            "{} file(s) could not be imported: {}",
            report.failed.len(),
            report
                .failed
                .iter()
                .map(|f| f.file.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }
}

/// A progress bar on stderr, hidden when stderr is not a terminal.
struct ProgressBar(indicatif::ProgressBar, std::cell::Cell<usize>);

impl ProgressBar {
    fn new() -> Self {
        use std::io::IsTerminal as _;
        if !std::io::stderr().is_terminal() {
            return ProgressBar(indicatif::ProgressBar::hidden(), Default::default());
        }
        let bar = indicatif::ProgressBar::with_draw_target(
            Some(0),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} [{bar:30}] {bytes}/{total_bytes}{wide_msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        ProgressBar(bar, Default::default())
    }

    fn show(&self, progress: ImportProgress<'_>) {
        match progress {
            ImportProgress::Started { files, bytes } => {
                self.0.set_length(bytes);
                self.1.set(files);
            }
            ImportProgress::File { index, name } => {
                let files = self.1.get();
                self.0.set_message(format!(" {}/{files} {name}", index + 1));
            }
            ImportProgress::Done { bytes } => self.0.inc(bytes),
            ImportProgress::Abandoned => self.0.abandon(),
        }
    }
}

/// The report as printed: counts per type, then skipped entries and failed files.
fn render(report: &ImportReport, store: &str) -> String {
    let mut out = format!(
        "imported {} resources from {} bundle(s) into {store}\n",
        report.total_imported(),
        report.bundles
    );
    let width = report.imported.keys().map(String::len).max().unwrap_or(0);
    for (ty, n) in &report.imported {
        out.push_str(&format!("  {ty:<width$}  {n:>7}\n"));
    }
    if !report.skipped.is_empty() {
        out.push_str(&format!(
            "skipped {} entr{}:\n",
            report.skipped.len(),
            if report.skipped.len() == 1 {
                "y"
            } else {
                "ies"
            }
        ));
        for s in &report.skipped {
            out.push_str(&format!(
                "  {} entry {} ({}): {}\n",
                s.file,
                s.entry,
                s.resource_type.as_deref().unwrap_or("no type"),
                s.reason
            ));
        }
    }
    for f in &report.failed {
        out.push_str(&format!("failed: {}: {}\n", f.file, f.reason));
    }
    out
}
