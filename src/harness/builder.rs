//! A whole federation in one call: the credentialing office, the visibility service and
//! the gateways, each configured to know the others, keeping their state in their data
//! folders or, with [`FederationBuilder::postgres`], in one PostgreSQL database.

use anyhow::anyhow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::postgres::{Admin, Postgres, Storage};
use super::{free_port, repo_root, Gateway, GatewaySpec, Office, Visibility};

/// The database every service of a federation on PostgreSQL keeps its schema in.
pub const POSTGRES_DATABASE: &str = "fedgate";

/// A running federation. Fields drop in order: the gateways stop before the services they
/// talk to.
pub struct Federation {
    /// Every gateway process: each custodian's first, followed by its other replicas
    /// ([`Custodian::replicas`]), in the order the custodians were added.
    pub gateways: Vec<Gateway>,
    pub visibility: Visibility,
    pub office: Office,
}

impl Federation {
    /// Starts nothing yet: `dir` gets a folder per service (`office`, `visibility`, and one
    /// per gateway named after the first label of its did:web).
    pub fn builder(exe: &Path, dir: &Path, office: &str, visibility: &str) -> FederationBuilder {
        FederationBuilder {
            exe: exe.to_path_buf(),
            dir: dir.to_path_buf(),
            office: office.to_string(),
            visibility: visibility.to_string(),
            auditors: None,
            irb: None,
            status_push: false,
            ship_every: None,
            ship_batches_of: None,
            nats: None,
            nats_seed_file: None,
            gossip_every: None,
            extra_peers: Vec::new(),
            gateways: Vec::new(),
            postgres: None,
            commit_delay_us: None,
        }
    }

    /// The custodian's gateway (its first replica, the one the others know it by).
    pub fn gateway(&self, did: &str) -> anyhow::Result<&Gateway> {
        self.gateways
            .iter()
            .find(|g| g.did == did)
            .ok_or_else(|| anyhow!("no gateway {did} in this federation"))
    }

    /// Every replica of the custodian's gateway, the first first.
    pub fn replicas(&self, did: &str) -> Vec<&Gateway> {
        self.gateways.iter().filter(|g| g.did == did).collect()
    }
}

/// A gateway to start in a [`Federation`], with what is particular to its custodian.
pub struct Custodian {
    did: String,
    replicas: usize,
    records: Vec<PathBuf>,
    outbox_max_events: Option<usize>,
    nats_seed_file: Option<PathBuf>,
    settings: String,
    config: String,
}

impl Custodian {
    pub fn new(did: &str) -> Custodian {
        Custodian {
            did: did.to_string(),
            replicas: 1,
            records: Vec::new(),
            outbox_max_events: None,
            nats_seed_file: None,
            settings: String::new(),
            config: String::new(),
        }
    }

    /// The NATS user seed it publishes with (see [`FederationBuilder::nats`]).
    pub fn nats_seed_file(mut self, path: &Path) -> Custodian {
        self.nats_seed_file = Some(path.to_path_buf());
        self
    }

    /// Runs `n` gateway processes (at least one) from the same config: the same DID,
    /// keys and state, each listening on its own port (see [`Gateway::start_replica`]).
    /// They share their state only in PostgreSQL: the federation must have
    /// [`FederationBuilder::postgres`]. The visibility service and the other gateways know
    /// the custodian by its first replica's address.
    pub fn replicas(mut self, n: usize) -> Custodian {
        self.replicas = n.max(1);
        self
    }

    /// FHIR transaction Bundles imported into its store before it starts.
    pub fn records(mut self, files: Vec<PathBuf>) -> Custodian {
        self.records = files;
        self
    }

    pub fn outbox_max_events(mut self, n: usize) -> Custodian {
        self.outbox_max_events = Some(n);
        self
    }

    /// Top-level keys of its config (`key = value` lines), before every table.
    pub fn settings(mut self, toml: &str) -> Custodian {
        self.settings.push_str(toml);
        self
    }

    /// TOML tables of its own (`[custodian]`, `[[contracts]]`: see [`contract`]). They come
    /// after the federation's tables, so top-level keys cannot go here.
    pub fn config(mut self, toml: &str) -> Custodian {
        self.config.push_str(toml);
        self
    }
}

/// A `[[contracts]]` table: `requester` may ask `custodian` for `domains` for `purposes`.
pub fn contract(custodian: &str, requester: &str, domains: &[&str], purposes: &[&str]) -> String {
    let list = |items: &[&str]| {
        let quoted: Vec<String> = items.iter().map(|i| format!("\"{i}\"")).collect();
        format!("[{}]", quoted.join(", "))
    };
    format!(
        "[[contracts]]\ncustodian = \"{custodian}\"\nrequester = \"{requester}\"\ndomains = {}\npurposes = {}\n",
        list(domains),
        list(purposes)
    )
}

pub struct FederationBuilder {
    exe: PathBuf,
    dir: PathBuf,
    office: String,
    visibility: String,
    auditors: Option<String>,
    irb: Option<(String, String)>,
    status_push: bool,
    ship_every: Option<Duration>,
    ship_batches_of: Option<usize>,
    nats: Option<String>,
    nats_seed_file: Option<PathBuf>,
    gossip_every: Option<Duration>,
    extra_peers: Vec<String>,
    gateways: Vec<Custodian>,
    postgres: Option<(Storage, Admin)>,
    commit_delay_us: Option<u64>,
}

impl FederationBuilder {
    /// Every service keeps its state in `pg`, in the database `fedgate` (created when the
    /// federation starts, unless it exists), each in a schema of its own: `office`,
    /// `visibility`, and `gateway_<folder>` per custodian (`gateway_hospital_a`), which the
    /// custodian's replicas share. `pg` must outlive the federation.
    pub fn postgres(mut self, pg: &Postgres) -> Self {
        self.postgres = Some((pg.storage(POSTGRES_DATABASE, ""), pg.admin()));
        self
    }

    /// Every service's `[storage] commit_delay_us` (the service's default otherwise).
    pub fn commit_delay_us(mut self, micros: u64) -> Self {
        self.commit_delay_us = Some(micros);
        self
    }

    /// The organization whose staff, credentialed by the office, may open auditor sessions.
    pub fn auditors(mut self, organization: &str) -> Self {
        self.auditors = Some(organization.to_string());
        self
    }

    /// An IRB whose research study credentials the gateways trust; without one they trust
    /// the office's.
    pub fn irb(mut self, irb: &Office) -> Self {
        self.irb = Some((irb.did.clone(), irb.url()));
        self
    }

    /// Gateways subscribe to the office's revocations, so that a revoked privilege is
    /// denied at once instead of when the cached status list expires.
    pub fn status_push(mut self) -> Self {
        self.status_push = true;
        self
    }

    /// How often gateways ship their events (the gateway's default otherwise).
    pub fn ship_every(mut self, interval: Duration) -> Self {
        self.ship_every = Some(interval);
        self
    }

    pub fn ship_batches_of(mut self, events: usize) -> Self {
        self.ship_batches_of = Some(events);
        self
    }

    /// Events travel through this NATS JetStream server instead of straight to the log.
    pub fn nats(mut self, url: &str) -> Self {
        self.nats = Some(url.to_string());
        self
    }

    /// Every gateway compares its adopted log checkpoint with every other's this often.
    pub fn gossip_every(mut self, interval: Duration) -> Self {
        self.gossip_every = Some(interval);
        self
    }

    /// A peer (base URL) every gateway gossips with besides the others.
    pub fn gossip_also_with(mut self, url: &str) -> Self {
        self.extra_peers.push(url.to_string());
        self
    }

    /// The NATS user seed the visibility service reads the stream with.
    pub fn nats_seed_file(mut self, path: &Path) -> Self {
        self.nats_seed_file = Some(path.to_path_buf());
        self
    }

    pub fn gateway(mut self, custodian: Custodian) -> Self {
        self.gateways.push(custodian);
        self
    }

    pub fn start(self) -> anyhow::Result<Federation> {
        let policies = repo_root()?.join("policies");
        if let Some((_, admin)) = &self.postgres {
            if !admin.database_exists(POSTGRES_DATABASE)? {
                admin.create_database(POSTGRES_DATABASE)?;
            }
        } else if let Some(c) = self.gateways.iter().find(|c| c.replicas > 1) {
            return Err(anyhow!(
                "the replicas of {} would share their state only in PostgreSQL: \
                 the federation needs .postgres(..)",
                c.did
            ));
        }
        let office = Office::start_with(
            &self.exe,
            &self.dir.join("office"),
            &self.office,
            &self.storage_toml("office"),
        )?;
        // The visibility service names the gateways as members before they run.
        let mut ports = Vec::new();
        for custodian in &self.gateways {
            ports.push((custodian, free_port()?));
        }
        let visibility = Visibility::start(
            &self.exe,
            &self.dir.join("visibility"),
            &self.visibility,
            free_port()?,
            &self.visibility_toml(&office, &ports),
        )?;
        let all_ports: Vec<u16> = ports.iter().map(|(_, port)| *port).collect();
        let mut gateways = Vec::new();
        for (custodian, port) in ports {
            let peers: Vec<u16> = all_ports.iter().copied().filter(|p| *p != port).collect();
            let folder = custodian
                .did
                .trim_start_matches("did:web:")
                .split(['.', ':', '%'])
                .next()
                .filter(|f| !f.is_empty())
                .ok_or_else(|| anyhow!("{}: not a did:web", custodian.did))?;
            if gateways.iter().any(|g: &Gateway| g.dir.ends_with(folder)) {
                return Err(anyhow!("two gateways would share the folder {folder}"));
            }
            let first = Gateway::start(
                &self.exe,
                &self.dir.join(folder),
                &GatewaySpec {
                    did: custodian.did.clone(),
                    port,
                    records: custodian.records.clone(),
                    policies: policies.clone(),
                    extra_toml: format!(
                        "{}{}",
                        self.gateway_toml(&office, &visibility, custodian, &peers),
                        self.storage_toml(&format!("gateway_{folder}"))
                    ),
                },
            )?;
            // Each replica starts once the first has created the keys and secret files.
            let mut replicas = Vec::new();
            for index in 1..custodian.replicas {
                replicas.push(first.start_replica(
                    &self.exe,
                    index,
                    free_port()?,
                    &custodian.records,
                )?);
            }
            gateways.push(first);
            gateways.extend(replicas);
        }
        Ok(Federation {
            gateways,
            visibility,
            office,
        })
    }

    /// The `[storage]` table of the service whose tables live in `schema` (nothing
    /// without [`FederationBuilder::postgres`]: the service's data folder then).
    fn storage_toml(&self, schema: &str) -> String {
        // On a line of its own, whether what came before ended one or not.
        let mut toml = match &self.postgres {
            Some((storage, _)) => {
                format!("\n{}", storage.with_schema(&schema_name(schema)).toml())
            }
            None if self.commit_delay_us.is_some() => "\n[storage]\n".to_string(),
            None => String::new(),
        };
        if let Some(micros) = self.commit_delay_us {
            toml.push_str(&format!("commit_delay_us = {micros}\n"));
        }
        toml
    }

    fn visibility_toml(&self, office: &Office, gateways: &[(&Custodian, u16)]) -> String {
        let mut toml = String::new();
        if let Some(org) = &self.auditors {
            toml.push_str(&format!("auditors = [\"{org}\"]\n"));
        }
        toml.push_str("[members]\n");
        for (custodian, port) in gateways {
            toml.push_str(&format!(
                "\"{}\" = \"http://127.0.0.1:{port}/\"\n",
                custodian.did
            ));
        }
        toml.push_str(&format!(
            "\"{}\" = \"{}\"\n[trust]\nClinicianPrivilegeCredential = [\"{}\"]\n",
            office.did,
            office.url(),
            office.did
        ));
        if let Some(url) = &self.nats {
            toml.push_str(&format!("[nats]\nurl = \"{url}\"\n"));
            if let Some(seed) = &self.nats_seed_file {
                toml.push_str(&format!("nkey_seed_file = {}\n", toml_path(seed)));
            }
        }
        toml.push_str(&self.storage_toml("visibility"));
        toml
    }

    fn gateway_toml(
        &self,
        office: &Office,
        visibility: &Visibility,
        custodian: &Custodian,
        peers: &[u16],
    ) -> String {
        let mut toml = custodian.settings.clone();
        if self.status_push {
            toml.push_str(&format!(
                "status_push = [\"{}v1/status/events\"]\n",
                office.url()
            ));
        }
        if let Some(n) = custodian.outbox_max_events {
            toml.push_str(&format!("outbox_max_events = {n}\n"));
        }
        toml.push_str(&format!(
            "[visibility]\nendpoint = \"{}\"\ndid = \"{}\"\n",
            visibility.url(),
            visibility.did
        ));
        if let Some(interval) = self.ship_every {
            toml.push_str(&format!("interval_ms = {}\n", interval.as_millis()));
        }
        if let Some(n) = self.ship_batches_of {
            toml.push_str(&format!("batch_size = {n}\n"));
        }
        if let Some(every) = self.gossip_every {
            let urls: Vec<String> = peers
                .iter()
                .map(|p| format!("http://127.0.0.1:{p}/"))
                .chain(self.extra_peers.iter().cloned())
                .map(|u| format!("\"{u}\""))
                .collect();
            toml.push_str(&format!(
                "peers = [{}]\ngossip_interval_ms = {}\n",
                urls.join(", "),
                every.as_millis()
            ));
        }
        if let Some(url) = &self.nats {
            toml.push_str(&format!(
                "transport = \"nats\"\n[visibility.nats]\nurl = \"{url}\"\n"
            ));
            if let Some(seed) = &custodian.nats_seed_file {
                toml.push_str(&format!("nkey_seed_file = {}\n", toml_path(seed)));
            }
        }
        let studies = self.irb.as_ref().map_or(&office.did, |(did, _)| did);
        toml.push_str(&format!(
            "[trust]\nClinicianPrivilegeCredential = [\"{}\"]\nResearchStudyCredential = [\"{studies}\"]\n[did_web]\n\"{}\" = \"{}\"\n",
            office.did,
            office.did,
            office.url()
        ));
        if let Some((did, url)) = &self.irb {
            toml.push_str(&format!("\"{did}\" = \"{url}\"\n"));
        }
        toml.push_str(&format!(
            "\"{}\" = \"{}\"\n{}",
            visibility.did,
            visibility.url(),
            custodian.config
        ));
        toml
    }
}

/// A PostgreSQL schema name from a folder name: lower case, `_` for anything but ASCII
/// letters, digits and `_` (a folder like `hospital-a` would need quoting in SQL).
fn schema_name(name: &str) -> String {
    name.chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_') => c,
            _ => '_',
        })
        .collect()
}

/// A path as a TOML basic string (JSON's escapes are TOML's).
fn toml_path(path: &Path) -> String {
    serde_json::Value::String(path.display().to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `[storage]` table a service of `builder` gets, read as the service reads it.
    fn storage_of(builder: &FederationBuilder) -> Option<service::db::StorageConfig> {
        #[derive(serde::Deserialize)]
        struct Config {
            storage: Option<service::db::StorageConfig>,
        }
        let toml = format!("listen = \"x\"\n{}", builder.storage_toml("office"));
        let config: Config = toml::from_str(&toml).unwrap();
        config.storage
    }

    #[test]
    fn a_commit_delay_reaches_every_service_s_storage_table() {
        let builder = Federation::builder(Path::new("fedgate"), Path::new("/tmp/x"), "o", "v");
        // Nothing asked: the services keep their defaults, and no table is written.
        assert!(storage_of(&builder).is_none());
        let builder = builder.commit_delay_us(2000);
        let storage = storage_of(&builder).unwrap();
        assert_eq!(storage.commit_delay_us, 2000);
        assert!(storage.validate("office.toml").is_ok());
        // Beyond the bound, the service refuses its configuration by name.
        let too_long = Federation::builder(Path::new("fedgate"), Path::new("/tmp/x"), "o", "v")
            .commit_delay_us(20_000);
        let refused = storage_of(&too_long).unwrap().validate("office.toml");
        let message = refused.err().unwrap().to_string();
        assert!(message.contains("storage.commit_delay_us"), "{message}");
    }
}
