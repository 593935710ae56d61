//! `fedgate db status|migrate SERVICE --config FILE`: a service's PostgreSQL schema.
//!
//! A service applies pending migrations itself when it starts; these commands let a DBA
//! see and apply them first (e.g. with a more privileged role than the service's, by
//! pointing a copy of the config at that role). The embedded backend has nothing to
//! migrate: its layout version is checked when the file is opened.

use std::path::PathBuf;

use anyhow::anyhow;
use service::db::StorageConfig;

#[derive(Debug, clap::Subcommand)]
pub enum DbCommand {
    /// Show the applied and pending migrations of a service's schema.
    Status(DbArgs),
    /// Apply a service's pending migrations (refused if a newer fedgate migrated it).
    Migrate(DbArgs),
}

#[derive(Debug, clap::Args)]
pub struct DbArgs {
    /// Which service's config FILE is.
    #[arg(value_enum)]
    service: Service,
    /// The service's config file (its `[storage]` section).
    #[arg(long)]
    config: PathBuf,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Service {
    Gateway,
    Visibility,
    Issuer,
}

pub fn run(command: DbCommand) -> anyhow::Result<()> {
    match command {
        DbCommand::Status(args) => {
            let Some(options) = options(&args)? else {
                println!("embedded storage: its layout is checked when the file is opened; nothing to migrate");
                return Ok(());
            };
            let status = storage::migration_status(&options)?;
            println!("schema {} at {}", options.schema, shown(&options.url));
            for (version, description, at) in &status.applied {
                println!("  applied  {version:>3}  {description}  ({at})");
            }
            for (version, description) in &status.pending {
                println!("  pending  {version:>3}  {description}");
            }
            let newest = status.applied.iter().map(|a| a.0).max().unwrap_or(0);
            if newest > status.supported {
                return Err(anyhow!(
                    "schema {} was migrated by a newer fedgate (version {newest}; this one knows up to {})",
                    options.schema,
                    status.supported
                ));
            }
            Ok(())
        }
        DbCommand::Migrate(args) => {
            let Some(options) = options(&args)? else {
                println!("embedded storage: nothing to migrate");
                return Ok(());
            };
            let applied = storage::migrate(&options)?;
            if applied.is_empty() {
                println!("schema {}: up to date", options.schema);
            } else {
                let list: Vec<String> = applied.iter().map(i32::to_string).collect();
                println!("schema {}: applied {}", options.schema, list.join(", "));
            }
            Ok(())
        }
    }
}

/// The PostgreSQL options of the service's config, or `None` for embedded storage.
fn options(args: &DbArgs) -> anyhow::Result<Option<storage::PgOptions>> {
    let (storage, name): (StorageConfig, &str) = match args.service {
        Service::Gateway => (
            gateway::config::GatewayConfig::load(&args.config)?.storage,
            "gateway",
        ),
        Service::Visibility => (
            visibility::VisibilityConfig::load(&args.config)?
                .storage()
                .clone(),
            "visibility",
        ),
        Service::Issuer => (
            issuer::IssuerConfig::load(&args.config)?.storage().clone(),
            "issuer",
        ),
    };
    Ok(storage.postgres(name, &format!("fedgate db ({name})"))?)
}

/// The URL without anything after `?` (the config's URL never holds a password).
fn shown(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}
