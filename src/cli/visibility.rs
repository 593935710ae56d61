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
}

pub async fn run(cmd: VisibilityCommand) -> anyhow::Result<()> {
    match cmd {
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
