//! `fedgate records`: the gateway's embedded FHIR store.
//!
//! `import --store DIR FILES...` loads transaction or collection Bundles (a directory
//! stands for its `*.json` files) and prints what was imported per resource type and
//! every entry that was skipped, with its reason. Skipped entries are not an error; a file
//! that cannot be read or parsed at all is, after the other files were imported.

use std::path::PathBuf;

use gateway::records::{import_paths, ImportReport, SledStore};

#[derive(Debug, clap::Subcommand)]
pub enum RecordsCommand {
    /// Import FHIR R4 Bundles into the embedded store (idempotent).
    Import(ImportArgs),
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The store directory (the gateway's `data_dir/records`); created if missing. The
    /// gateway must not be running on it.
    #[arg(long)]
    pub store: PathBuf,
    /// Bundle files, or directories of `*.json` bundles.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

pub fn run(command: RecordsCommand) -> Result<(), String> {
    match command {
        RecordsCommand::Import(args) => import(args),
    }
}

pub fn import(args: ImportArgs) -> Result<(), String> {
    let store =
        SledStore::open(&args.store).map_err(|e| format!("{}: {e}", args.store.display()))?;
    let report = import_paths(&store, &args.files).map_err(|e| e.to_string())?;
    print!("{}", render(&report, &args.store.display().to_string()));
    if report.failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
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
