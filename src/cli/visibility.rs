//! `fedgate visibility`: the federation's shared visibility service.

use std::path::PathBuf;

use visibility::VisibilityConfig;

#[derive(Debug, clap::Subcommand)]
pub enum VisibilityCommand {
    /// Run the visibility service: signed event batches in, receipts and checkpoints out.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Verify an evidence package offline: the package's signature, the log's signed
    /// checkpoint, and every event's inclusion proof. Exits non-zero, naming the first
    /// thing that fails, if anything in the file was changed.
    VerifyEvidence {
        /// The evidence file (`GET /v1/audit/evidence`, or the dashboard's download).
        file: PathBuf,
        /// The log's checkpoint verifier key as you know it (`checkpointVerifierKey` of the
        /// log's `/v1/keys`). Without it the key in the file is used, and the output says so.
        #[arg(long)]
        key: Option<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: VisibilityCommand) -> anyhow::Result<()> {
    match cmd {
        VisibilityCommand::VerifyEvidence { file, key, json } => {
            verify_evidence(&file, key.as_deref(), json)
        }
        VisibilityCommand::Serve { config } => {
            let cfg = VisibilityConfig::load(&config)?;
            let (tx, rx) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                if let Ok(addr) = rx.await {
                    // The one line scripts and tests read to find the service.
                    println!("visibility listening on {addr}");
                }
            });
            visibility::run(cfg, shutdown_signal(), Some(tx))
                .await
                .map_err(anyhow::Error::from)
        }
    }
}

fn verify_evidence(file: &std::path::Path, key: Option<&str>, json: bool) -> anyhow::Result<()> {
    use std::io::Read as _;
    let opened =
        std::fs::File::open(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let mut bytes = Vec::new();
    opened
        .take(visibility::evidence::MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let v = visibility::evidence::verify(&bytes, key)
        .map_err(|e| anyhow::anyhow!("{}: NOT VERIFIED: {e}", file.display()))?;
    if json {
        let out = serde_json::json!({
            "verified": true,
            "log": v.log,
            "treeSize": v.tree_size,
            "root": hex::encode(v.root),
            "signer": v.signer,
            "signerPinned": v.pinned,
            "accessEvents": v.accesses,
            "reviews": v.reviews,
            "complete": v.complete,
            "query": serde_json::from_str::<serde_json::Value>(&v.query).unwrap_or_default(),
            "createdAt": v.created_at,
            "createdBy": v.created_by,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("evidence verified: {}", file.display());
    println!(
        "  {} access event(s) and {} review(s), each included in the log {} at tree size {}",
        v.accesses, v.reviews, v.log, v.tree_size
    );
    println!("  root {}", hex::encode(v.root));
    println!(
        "  checkpoint and package signed by {} ({})",
        v.signer,
        if v.pinned {
            "the key given"
        } else {
            "the key in the file: compare it with the log's published checkpoint key, or pass --key"
        }
    );
    println!(
        "  query {} (package made {} by {})",
        v.query, v.created_at, v.created_by
    );
    if !v.complete {
        println!("  note: more events matched than this package holds");
    }
    Ok(())
}

/// Ctrl-C or SIGTERM.
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
