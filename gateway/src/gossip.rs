//! Checkpoint gossip: catching a log that shows different histories to different members.
//!
//! The shipper checks that every checkpoint this gateway adopts extends the one before, so
//! the log cannot rewrite what this gateway has seen. But a log operator could keep two
//! histories, each consistent in itself, and show one to some gateways and the other to
//! the rest (a split view): no gateway alone would notice. So each gateway serves the
//! signed checkpoint it adopted last (`GET /v1/log/checkpoint`) and compares its peers'
//! with its own: a peer's checkpoint, signed by the log's key, must be consistent with
//! ours, and our own log must prove it (RFC 6962). Two checkpoints the log signed that no
//! proof reconciles are evidence of a split view: an alarm (log line, the counter
//! `fedgate_log_split_view_total` once per incident, the gauge `fedgate_log_split_view`
//! of peers disagreeing now), with both signed notes kept on disk as evidence that anyone
//! can check without trusting this gateway.
//!
//! Peers are the `[visibility] peers` of the configuration and, with a signed federation
//! manifest, the gateway endpoint of every other custodian member, read again each round
//! so that members who join or leave are followed.
//!
//! A peer cannot frame the log: a checkpoint that is not signed by the log's key is the
//! peer's fault, logged and ignored. Nor does a peer learn anything private: a checkpoint
//! is a tree size and a root hash.
//!
//! Replicas of one gateway share its database, so they adopt, serve and compare the same
//! checkpoint; each gossips on its own (one small request and proof per peer and round).
//! Evidence is keyed by the two notes, so replicas that find one split view keep one
//! copy of it; which peers disagree now is each process's, like its metrics, so an alert
//! on the incident counter should not add up the replicas' counts.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use federation::checkpoint;
use reqwest::StatusCode;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::shipper::{ShipError, Shipper};

/// The most a peer's answer may hold: a signed note is a few hundred bytes.
const MAX_NOTE_BYTES: usize = 16 * 1024;

/// What one comparison with a peer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Our log proved the two checkpoints consistent (or they are the same).
    Consistent,
    /// One side has adopted no checkpoint yet.
    NothingToCompare,
    /// Two checkpoints signed by the log that cannot both be true.
    SplitView(String),
}

#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    /// The peer did not answer usefully; says nothing about the log.
    #[error("peer {peer}: {reason}")]
    Peer { peer: String, reason: String },
    /// Our log could not be asked right now.
    #[error(transparent)]
    Log(#[from] ShipError),
}

/// What is kept of a split view: enough for anyone to check it without trusting us.
#[derive(Debug, Serialize)]
struct Evidence<'a> {
    peer: &'a str,
    reason: &'a str,
    ours: &'a str,
    theirs: &'a str,
    found_at: String,
}

/// Peers that change at run time (the manifest's custodian members).
pub type PeerSource = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// The gateway base URLs of a manifest's members other than `own`, each ending in `/`.
pub fn gateway_peers(members: &[federation::registry::Member], own: &str) -> Vec<String> {
    let mut peers: Vec<String> = members
        .iter()
        .filter(|m| m.did != own)
        .filter_map(|m| m.endpoints.gateway.clone())
        .map(|mut url| {
            if !url.ends_with('/') {
                url.push('/');
            }
            url
        })
        .collect();
    peers.sort();
    peers.dedup();
    peers
}

/// The tree of split-view evidence (owned here).
const EVIDENCE: &str = "log_evidence";

pub struct Gossip {
    shipper: Arc<Shipper>,
    peers: Vec<reqwest::Url>,
    more_peers: Option<PeerSource>,
    dev_mode: bool,
    client: reqwest::Client,
    /// The first pair of notes of each incident, for whoever investigates.
    evidence: crate::db::Tree,
    /// Peers whose last comparison found a split view: an incident lasts until a
    /// comparison with that peer succeeds again, however many rounds see it meanwhile.
    split: std::sync::Mutex<HashSet<String>>,
    interval: Duration,
}

impl Gossip {
    /// `peers` are other gateways' base URLs, checked when the config was loaded;
    /// `more_peers` are read each round and checked then.
    pub fn new(
        db: &crate::db::Db,
        shipper: Arc<Shipper>,
        peers: &[String],
        more_peers: Option<PeerSource>,
        interval: Duration,
        dev_mode: bool,
    ) -> Result<Gossip, ShipError> {
        let peers = peers
            .iter()
            .map(|p| reqwest::Url::parse(p).map_err(|e| ShipError::Unreachable(e.to_string())))
            .collect::<Result<_, _>>()?;
        Ok(Gossip {
            shipper,
            peers,
            more_peers,
            dev_mode,
            client: federation::client::http_client(),
            evidence: db.tree(EVIDENCE),
            split: std::sync::Mutex::new(HashSet::new()),
            interval,
        })
    }

    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run())
    }

    /// This round's peers: the configured ones and the current dynamic ones that are
    /// usable URLs (https; http only to loopback in dev mode).
    fn round_peers(&self) -> Vec<reqwest::Url> {
        let mut peers = self.peers.clone();
        for peer in self.more_peers.as_ref().map(|f| f()).unwrap_or_default() {
            match reqwest::Url::parse(&peer)
                .map_err(|e| e.to_string())
                .and_then(|url| {
                    federation::client::loopback_only_http(&url, self.dev_mode)
                        .map(|()| url)
                        .map_err(|e| e.to_string())
                }) {
                Ok(url) if !peers.contains(&url) => peers.push(url),
                Ok(_) => {}
                Err(e) => tracing::warn!(peer = %peer, error = %e, "gossip peer skipped"),
            }
        }
        peers
    }

    async fn run(self) {
        loop {
            tokio::time::sleep(self.interval).await;
            for peer in &self.round_peers() {
                match self.check(peer).await {
                    Ok(outcome) => {
                        let result = match outcome {
                            Outcome::Consistent => "consistent",
                            Outcome::NothingToCompare => "nothing-to-compare",
                            Outcome::SplitView(_) => "split-view",
                        };
                        metrics::counter!("fedgate_gossip_checks_total", "result" => result)
                            .increment(1);
                    }
                    Err(e) => {
                        metrics::counter!("fedgate_gossip_checks_total", "result" => "failed")
                            .increment(1);
                        tracing::warn!(error = %e, "checkpoint gossip failed; will retry");
                    }
                }
            }
        }
    }

    /// Compares `peer`'s adopted checkpoint with ours; a split view is also recorded.
    pub async fn check(&self, peer: &reqwest::Url) -> Result<Outcome, GossipError> {
        let Some(ours) = self.shipper.adopted()? else {
            return Ok(Outcome::NothingToCompare);
        };
        let Some(our_note) = ours.note.as_deref() else {
            return Ok(Outcome::NothingToCompare);
        };
        let Some(their_note) = self.fetch(peer).await? else {
            return Ok(Outcome::NothingToCompare);
        };
        let verifier = self.shipper.note_verifier().await?;
        let theirs =
            checkpoint::open(&their_note, std::slice::from_ref(&verifier)).map_err(|e| {
                GossipError::Peer {
                    peer: peer.to_string(),
                    reason: format!("its checkpoint is not the log's: {e}"),
                }
            })?;
        let our_root = ours.root_hash()?;
        let (old, new) = if theirs.size <= ours.size {
            ((theirs.size, theirs.root), (ours.size, our_root))
        } else {
            ((ours.size, our_root), (theirs.size, theirs.root))
        };
        let reason = match self
            .shipper
            .prove_extends(old.0, &old.1, new.0, &new.1)
            .await
        {
            Ok(()) => {
                self.set_split(peer, false);
                return Ok(Outcome::Consistent);
            }
            Err(ShipError::Inconsistent(reason)) => reason,
            // The log refuses to prove consistency between two checkpoints it signed
            // (typically: "beyond the log" from the history that is shorter).
            Err(ShipError::Refused { status, detail })
                if (400..500).contains(&status) && status != 408 && status != 429 =>
            {
                format!("the log refused a consistency proof ({status}, {detail})")
            }
            Err(e) => return Err(e.into()),
        };
        self.record(peer, &reason, our_note, &their_note).await?;
        Ok(Outcome::SplitView(reason))
    }

    /// The peer's adopted checkpoint, or None when it has none yet.
    async fn fetch(&self, peer: &reqwest::Url) -> Result<Option<String>, GossipError> {
        let failed = |reason: String| GossipError::Peer {
            peer: peer.to_string(),
            reason,
        };
        let url = peer
            .join("v1/log/checkpoint")
            .map_err(|e| failed(e.to_string()))?;
        let mut resp = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| failed(e.without_url().to_string()))?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            other => return Err(failed(format!("HTTP {other}"))),
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| failed(e.without_url().to_string()))?
        {
            if body.len() + chunk.len() > MAX_NOTE_BYTES {
                return Err(failed("answer too large for a checkpoint".into()));
            }
            body.extend_from_slice(&chunk);
        }
        String::from_utf8(body)
            .map(Some)
            .map_err(|_| failed("answer is not UTF-8".into()))
    }

    /// Marks `peer` as disagreeing or not; returns whether that is news. The gauge
    /// `fedgate_log_split_view` is the number of peers disagreeing now.
    fn set_split(&self, peer: &reqwest::Url, split: bool) -> bool {
        let Ok(mut peers) = self.split.lock() else {
            return split;
        };
        let news = if split {
            peers.insert(peer.to_string())
        } else {
            peers.remove(peer.as_str())
        };
        metrics::gauge!("fedgate_log_split_view").set(peers.len() as f64);
        news
    }

    /// Starts an incident when it is new: counted, logged, and its evidence kept.
    async fn record(
        &self,
        peer: &reqwest::Url,
        reason: &str,
        ours: &str,
        theirs: &str,
    ) -> Result<(), GossipError> {
        if !self.set_split(peer, true) {
            return Ok(());
        }
        metrics::counter!("fedgate_log_split_view_total").increment(1);
        tracing::error!(peer = %peer, reason, "ALARM: the visibility log shows this gateway and a peer different histories (split view); evidence kept");
        let mut key = Sha256::new();
        key.update(ours.as_bytes());
        key.update([0]);
        key.update(theirs.as_bytes());
        let evidence = serde_json::to_vec(&Evidence {
            peer: peer.as_str(),
            reason,
            ours,
            theirs,
            found_at: chrono::Utc::now().to_rfc3339(),
        })
        .map_err(|e| ShipError::Storage(e.to_string()))?;
        self.evidence
            .insert(&key.finalize()[..], &evidence)
            .await
            .map_err(|e| ShipError::Storage(e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use federation::registry::{Endpoints, Member, Role};

    #[test]
    fn manifest_peers_are_the_other_members_gateways() {
        let member = |did: &str, gateway: Option<&str>| Member {
            did: did.into(),
            name: did.into(),
            roles: vec![Role::Custodian],
            endpoints: Endpoints {
                gateway: gateway.map(str::to_string),
                ..Default::default()
            },
            base_url: format!("https://{did}/"),
        };
        let members = [
            member("did:web:a.example", Some("https://gw.a.example/")),
            member("did:web:b.example", Some("https://gw.b.example")),
            member("did:web:c.example", None),
            member("did:web:d.example", Some("https://gw.b.example/")),
        ];
        assert_eq!(
            gateway_peers(&members, "did:web:a.example"),
            ["https://gw.b.example/"]
        );
        assert_eq!(
            gateway_peers(&members, "did:web:z.example"),
            ["https://gw.a.example/", "https://gw.b.example/"]
        );
    }
}
