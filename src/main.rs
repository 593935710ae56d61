//! `fedgate`: one command line for every role in a federation.
//!
//! This file only parses arguments, loads configuration and calls the crates. Errors are
//! printed as one line on stderr with a non-zero exit status.

use anyhow::anyhow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod demo;

/// jemalloc rather than glibc's malloc: it returns freed memory to the system, so that the
/// gateway's RSS falls back after large answers instead of staying at its peak.
#[cfg(all(target_os = "linux", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use fedgate::cli;

use clap::{Parser, Subcommand};
use federation::keys::{KeyAlgorithm, KeyPair};

#[derive(Parser)]
#[command(
    name = "fedgate",
    version,
    about = "Federation gateway for healthcare data exchange"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Keys and the crypto inventory.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Start a federation on loopback and run the scenarios against it.
    Demo {
        /// Keep the data here instead of a fresh temporary folder.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
        /// Keep the federation running after the scenarios (Ctrl-C stops it).
        #[arg(long)]
        serve: bool,
        /// Run hospital A's gateway as this many replicas and the visibility service as a
        /// pair, on a PostgreSQL server the demo starts (needs PostgreSQL installed).
        #[arg(long, default_value_t = 1)]
        replicas: usize,
    },
    /// The federation's signed manifest: members, trusted issuers, contracts.
    Federation {
        #[command(subcommand)]
        command: cli::federation::FederationCommand,
    },
    /// A clinician's or patient's wallet: keys, credentials, presentations, consent.
    Wallet {
        /// Machine-readable output.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: cli::wallet::WalletCommand,
    },
    /// Rego policies: run their tests, or evaluate one input.
    Policy {
        #[command(subcommand)]
        command: cli::policy::PolicyCommand,
    },
    /// The organization's gateway.
    Gateway {
        #[command(subcommand)]
        command: GatewayCommand,
    },
    /// The gateway's embedded FHIR record store.
    Records {
        #[command(subcommand)]
        command: cli::records::RecordsCommand,
    },
    /// The federation's shared visibility layer (access-event log).
    Visibility {
        #[command(subcommand)]
        command: cli::visibility::VisibilityCommand,
    },
    /// The credentialing office's issuer service.
    Issuer {
        #[command(subcommand)]
        command: IssuerCommand,
    },
    /// A service's PostgreSQL schema: its migrations.
    Db {
        #[command(subcommand)]
        command: cli::db::DbCommand,
    },
    /// Load tools: clinical exchange, research queries, visibility ingest.
    Bench {
        #[command(subcommand)]
        command: cli::bench::BenchCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key file (0600): a did:key, or a key for an organization's did:web.
    Generate {
        /// Where to write the key file.
        #[arg(long)]
        out: PathBuf,
        /// Ed25519 (default) or P-256.
        #[arg(long, default_value = "Ed25519")]
        alg: String,
        /// Make a key for this did:web instead of a new did:key.
        #[arg(long)]
        did_web: Option<String>,
        /// What the key is for (shown in the inventory).
        #[arg(long, default_value = "")]
        purpose: String,
    },
    /// List every key in the given key files or folders: DID, method, algorithm, dates.
    Inventory {
        /// Key files, or folders searched for `*.key.json` and `*key*.json`.
        paths: Vec<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum GatewayCommand {
    /// Run the gateway.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum IssuerCommand {
    /// Run the issuer service.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Write a starter issuer.toml, a key and an admin token (0600) into a folder.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// The office's did:web, e.g. did:web:credentialing.hospital-a.example
        #[arg(long)]
        did: String,
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:8400")]
        listen: String,
    },
    /// Make an OpenID4VCI offer at a running issuer (admin token): prints the offer URL and
    /// the transaction code, writes the QR codes.
    Offer(cli::issuer::OfferArgs),
}

/// Upper bound of the runtime's blocking pool.
const MAX_BLOCKING_THREADS: usize = 16;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    // Policy evaluation recurses over the policy's syntax tree on the blocking pool: big
    // stacks (virtual memory; only what is touched is resident). The blocking pool does
    // CPU work (policy, tokenization, record reads) and waits on fsync; tokio's default
    // of 512 threads would only add stacks, allocator arenas and context switches on a
    // small machine (docs/performance.md).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(gateway::policy::EVAL_STACK_BYTES)
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        // `{}`, not `{:#}`: the crates' errors already name their cause in their own
        // message, so printing the source chain as well would repeat it.
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("fedgate: {message}");
    ExitCode::FAILURE
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FEDGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal: log files and collectors get plain lines.
    use std::io::IsTerminal as _;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keys { command } => keys(command),
        Command::Issuer { command } => issuer_cmd(command).await,
        Command::Federation { command } => cli::federation::run(command),
        Command::Policy { command } => cli::policy::run(command),
        Command::Records { command } => cli::records::run(command),
        Command::Db { command } => cli::db::run(command),
        Command::Visibility { command } => cli::visibility::run(command).await,
        Command::Gateway {
            command: GatewayCommand::Serve { config },
        } => {
            let cfg = gateway::GatewayConfig::load(&config)?;
            let (tx, rx) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                if let Ok(addr) = rx.await {
                    println!("gateway listening on {addr}");
                }
            });
            gateway::run(cfg, shutdown_signal(), Some(tx))
                .await
                .map_err(anyhow::Error::from)
        }
        Command::Wallet { json, command } => cli::wallet::run(command, json).await,
        Command::Bench { command } => cli::bench::run(command).await,
        Command::Demo {
            dir,
            json,
            serve,
            replicas,
        } => match demo::run(dir, json, serve, replicas).await? {
            true => Ok(()),
            false => Err(anyhow!("some scenarios did not go as expected")),
        },
    }
}

fn keys(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Generate {
            out,
            alg,
            did_web,
            purpose,
        } => {
            let alg: KeyAlgorithm = alg.parse().map_err(|e| anyhow!("{e}"))?;
            let key = match did_web {
                Some(did) => KeyPair::generate_did_web(&did, alg),
                None => KeyPair::generate_did_key(alg),
            }?
            .with_purpose(&purpose);
            key.save(&out)?;
            println!("{}", key.did());
            Ok(())
        }
        KeysCommand::Inventory { paths, json } => {
            let mut infos = Vec::new();
            for path in &paths {
                collect_keys(path, &mut infos)?;
            }
            if json {
                let out = serde_json::json!({ "keys": infos });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!(
                    "{:<10} {:<25} {:<12} {:<20} VERIFICATION METHOD",
                    "ALG", "CREATED", "EXPIRES", "PURPOSE"
                );
                for k in &infos {
                    println!(
                        "{:<10} {:<25} {:<12} {:<20} {}",
                        k.algorithm.to_string(),
                        federation::time::rfc3339(k.created),
                        k.expires
                            .map(|e| e.format("%Y-%m-%d").to_string())
                            .unwrap_or_else(|| "-".into()),
                        if k.purpose.is_empty() {
                            "-"
                        } else {
                            &k.purpose
                        },
                        k.verification_method
                    );
                }
            }
            Ok(())
        }
    }
}

fn collect_keys(path: &Path, out: &mut Vec<federation::keys::KeyInfo>) -> anyhow::Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| anyhow!("{}: {e}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for p in entries {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if p.is_dir() || (name.ends_with(".json") && name.contains("key")) {
                collect_keys(&p, out)?;
            }
        }
        Ok(())
    } else {
        let key = KeyPair::load(path)?;
        out.push(key.info().clone());
        Ok(())
    }
}

async fn issuer_cmd(command: IssuerCommand) -> anyhow::Result<()> {
    match command {
        IssuerCommand::Offer(args) => cli::issuer::offer(args).await,
        IssuerCommand::Serve { config } => {
            let cfg = issuer::IssuerConfig::load(&config)?;
            let (tx, rx) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                if let Ok(addr) = rx.await {
                    // The one line scripts and tests read to find the service.
                    println!("issuer listening on {addr}");
                }
            });
            issuer::run(cfg, shutdown_signal(), Some(tx))
                .await
                .map_err(anyhow::Error::from)
        }
        IssuerCommand::Init { dir, did, listen } => {
            std::fs::create_dir_all(&dir).map_err(|e| anyhow!("{}: {e}", dir.display()))?;
            let key_path = dir.join("issuer.key.json");
            KeyPair::generate_did_web(&did, KeyAlgorithm::Ed25519)?
                .with_purpose("issuer assertion")
                .save(&key_path)?;
            let token = federation::client::random_token();
            write_secret(&dir.join("admin-token"), &token)?;
            let config = format!(
                "listen = \"{listen}\"\n# tls_cert = \"cert.pem\"\n# tls_key = \"key.pem\"\ndid = \"{did}\"\nkey_file = \"issuer.key.json\"\ndata_dir = \"data\"\nadmin_token_file = \"admin-token\"\n"
            );
            let cfg_path = dir.join("issuer.toml");
            if cfg_path.exists() {
                return Err(anyhow!("{} exists; not overwriting", cfg_path.display()));
            }
            std::fs::write(&cfg_path, config)?;
            println!(
                "wrote {} (admin token in {})",
                cfg_path.display(),
                dir.join("admin-token").display()
            );
            Ok(())
        }
    }
}

fn write_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    federation::keys::write_private(path, secret.as_bytes())
        .map_err(|e| anyhow!("{}: {e}", path.display()))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
