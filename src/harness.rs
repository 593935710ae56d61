//! Starting a federation of real `fedgate` processes on loopback: used by `fedgate demo`,
//! `fedgate bench` and the end-to-end tests, so that all of them exercise the same setup.

mod builder;
pub mod events;
mod postgres;

pub use builder::{contract, Custodian, Federation, FederationBuilder, POSTGRES_DATABASE};
pub use postgres::{Postgres, Storage};

use anyhow::anyhow;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

/// A running `fedgate` process, killed when dropped.
pub struct Process {
    child: Child,
    pub addr: String,
}

impl Process {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kills the process and waits for it (its storage is then free to open).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The process id (for reading its memory and CPU from /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `exe ARGS` and waits for its "listening on ADDR" line.
pub fn spawn(exe: &Path, args: &[&str]) -> anyhow::Result<Process> {
    let mut child = Command::new(exe)
        .args(args)
        .env(
            "FEDGATE_LOG",
            std::env::var("FEDGATE_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| anyhow!("cannot start {args:?}: {e}"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout from child"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.split(" listening on ").nth(1) {
                let _ = tx.send(addr.trim().to_string());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(addr) => Ok(Process { child, addr }),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(anyhow!("{args:?} did not start within 60 s"))
        }
    }
}

/// Runs `exe ARGS` to completion, returning stdout; a failure carries stderr.
fn run(exe: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(exe)
        .args(args)
        .env("FEDGATE_LOG", "warn")
        .output()
        .map_err(|e| anyhow!("cannot run {args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    } else {
        Err(anyhow!(
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `fedgate records import` of FHIR Bundles into the embedded store at `store`.
fn import_records(exe: &Path, store: &Path, records: &[PathBuf]) -> anyhow::Result<()> {
    import_records_with(exe, "--store", store, records)
}

/// Imports `records` wherever the gateway `config` keeps its record store (with PostgreSQL
/// storage: the schema its replicas share).
fn import_records_configured(exe: &Path, config: &Path, records: &[PathBuf]) -> anyhow::Result<()> {
    import_records_with(exe, "--config", config, records)
}

fn import_records_with(
    exe: &Path,
    flag: &str,
    target: &Path,
    records: &[PathBuf],
) -> anyhow::Result<()> {
    let mut args = vec![
        "records".to_string(),
        "import".to_string(),
        flag.to_string(),
        target.to_string_lossy().to_string(),
    ];
    args.extend(records.iter().map(|p| p.to_string_lossy().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(exe, &args).map(|_| ())
}

/// `toml` (a config this harness wrote) with the top-level `key` set to `value`: its line
/// replaced, or one added before the first table. Only lines before the first table are
/// top-level.
fn set_top_level(toml: &str, key: &str, value: &str) -> String {
    let setting = format!("{key} = {value}");
    let mut lines: Vec<String> = toml.lines().map(str::to_string).collect();
    let tables = lines
        .iter()
        .position(|l| l.trim_start().starts_with('['))
        .unwrap_or(lines.len());
    match lines[..tables].iter().position(|l| is_setting(l, key)) {
        Some(at) => lines[at] = setting,
        None => lines.insert(tables, setting),
    }
    lines.join("\n") + "\n"
}

/// Whether `toml` (a config this harness wrote) sets the top-level `key`.
fn has_top_level(toml: &str, key: &str) -> bool {
    toml.lines()
        .take_while(|l| !l.trim_start().starts_with('['))
        .any(|l| is_setting(l, key))
}

fn is_setting(line: &str, key: &str) -> bool {
    line.split_once('=').is_some_and(|(k, _)| k.trim() == key)
}

fn write_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    federation::keys::write_private(path, secret.as_bytes())
        .map_err(|e| anyhow!("{}: {e}", path.display()))
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).map_err(|e| anyhow!("{}: {e}", path.display()))
}

fn mkdir(path: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(path).map_err(|e| anyhow!("{}: {e}", path.display()))
}

fn client() -> reqwest::Client {
    federation::client::http_client()
}

/// The body of a GET as text.
pub async fn get_text(url: &str) -> anyhow::Result<String> {
    client()
        .get(url)
        .send()
        .await?
        .text()
        .await
        .map_err(anyhow::Error::from)
}

async fn post(url: &str, body: &Value, token: Option<&str>) -> anyhow::Result<(u16, Value)> {
    let mut req = client().post(url).json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.map_err(|e| anyhow!("{url}: {e}"))?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

/// A credentialing office (or IRB) running `fedgate issuer serve`.
pub struct Office {
    pub process: Process,
    did: String,
    pub(crate) token: String,
    pub dir: PathBuf,
}

impl Office {
    pub fn start(exe: &Path, dir: &Path, did: &str) -> anyhow::Result<Office> {
        Office::start_with(exe, dir, did, "")
    }

    /// [`Office::start`] with TOML tables of its own appended to the config (its
    /// `[storage]`: see [`Storage::toml`]).
    pub fn start_with(
        exe: &Path,
        dir: &Path,
        did: &str,
        extra_toml: &str,
    ) -> anyhow::Result<Office> {
        mkdir(dir)?;
        let token_path = dir.join("admin-token");
        if !token_path.exists() {
            write_secret(&token_path, &federation::client::random_token())?;
        }
        let token = std::fs::read_to_string(&token_path)?.trim().to_string();
        let config = format!(
            "listen = \"127.0.0.1:0\"\ndid = \"{did}\"\nkey_file = \"issuer.key.json\"\ndata_dir = \"data\"\nadmin_token_file = \"admin-token\"\ndev_mode = true\nstatus_list_ttl_secs = 300\n{extra_toml}"
        );
        let path = dir.join("issuer.toml");
        write(&path, &config)?;
        let process = spawn(
            exe,
            &["issuer", "serve", "--config", &path.to_string_lossy()],
        )?;
        Ok(Office {
            process,
            did: did.to_string(),
            token,
            dir: dir.to_path_buf(),
        })
    }

    pub fn url(&self) -> String {
        format!("{}/", self.process.url())
    }

    async fn admin(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        post(
            &format!("{}{path}", self.process.url()),
            body,
            Some(&self.token),
        )
        .await
    }

    /// Issues any credential (W3C VC API), returning it as it travels.
    pub async fn issue(&self, credential: Value, format: &str) -> anyhow::Result<Value> {
        let (status, body) = self
            .admin(
                "/credentials/issue",
                &json!({"credential": credential, "options": {"format": format}}),
            )
            .await?;
        if status != 201 {
            return Err(anyhow!("issue failed ({status}): {body}"));
        }
        Ok(body["verifiableCredential"].clone())
    }

    /// Joiner: a privilege credential; returns (record id, credential).
    pub async fn joiner(&self, subject: &Value, format: &str) -> anyhow::Result<(String, Value)> {
        let (status, body) = self
            .admin(
                "/v1/privileges",
                &json!({"subject": subject, "format": format}),
            )
            .await?;
        if status != 201 {
            return Err(anyhow!("joiner failed ({status}): {body}"));
        }
        Ok((
            body["id"].as_str().unwrap_or_default().to_string(),
            body["verifiableCredential"].clone(),
        ))
    }

    /// Joiner by OpenID4VCI: an offer of a privilege credential in `formats` (`ldp_vc`,
    /// `jwt_vc_json`, `dc+sd-jwt`); returns (offer URL, transaction code).
    pub async fn offer_privilege(
        &self,
        subject: &Value,
        formats: &[&str],
    ) -> anyhow::Result<(String, String)> {
        let (status, body) = self
            .admin(
                "/v1/privileges",
                &json!({"subject": subject, "offer": {"formats": formats}}),
            )
            .await?;
        let url = body["credentialOfferUrl"].as_str();
        let tx = body["txCode"].as_str();
        match (status, url, tx) {
            (201, Some(url), Some(tx)) => Ok((url.to_string(), tx.to_string())),
            _ => Err(anyhow!("offer failed ({status}): {body}")),
        }
    }

    pub async fn mover(&self, id: &str, privileges: &Value) -> anyhow::Result<(String, Value)> {
        let (status, body) = self
            .admin(
                &format!("/v1/privileges/{id}/move"),
                &json!({"privileges": privileges}),
            )
            .await?;
        if status != 201 {
            return Err(anyhow!("mover failed ({status}): {body}"));
        }
        Ok((
            body["id"].as_str().unwrap_or_default().to_string(),
            body["verifiableCredential"].clone(),
        ))
    }

    pub async fn revoke(&self, id: &str) -> anyhow::Result<()> {
        let (status, body) = self
            .admin(&format!("/v1/credentials/{id}/revoke"), &json!({}))
            .await?;
        if status != 200 {
            return Err(anyhow!("revoke failed ({status}): {body}"));
        }
        Ok(())
    }
}

/// A free loopback port, for services whose address must be known before they start
/// (another service's configuration names it).
pub fn free_port() -> anyhow::Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| anyhow!("no free port: {e}"))
}

/// The federation's visibility service running `fedgate visibility serve`.
pub struct Visibility {
    pub process: Process,
    did: String,
    pub config: PathBuf,
}

impl Visibility {
    /// `extra_toml` holds `[members]`, `auditors`, `[trust]` (or `[registry]`), and
    /// `[storage]` ([`Storage::toml`]).
    pub fn start(
        exe: &Path,
        dir: &Path,
        did: &str,
        port: u16,
        extra_toml: &str,
    ) -> anyhow::Result<Visibility> {
        mkdir(dir)?;
        let config = format!(
            "listen = \"127.0.0.1:{port}\"\ndid = \"{did}\"\nkey_file = \"visibility.key.json\"\ndata_dir = \"data\"\ndev_mode = true\n{extra_toml}\n"
        );
        let path = dir.join("visibility.toml");
        write(&path, &config)?;
        Visibility::restart(exe, did, &path)
    }

    pub fn restart(exe: &Path, did: &str, config: &Path) -> anyhow::Result<Visibility> {
        let process = spawn(
            exe,
            &["visibility", "serve", "--config", &config.to_string_lossy()],
        )?;
        Ok(Visibility {
            process,
            did: did.to_string(),
            config: config.to_path_buf(),
        })
    }

    pub fn url(&self) -> String {
        format!("{}/", self.process.url())
    }

    /// Another process of this visibility service on its own `port`, from a copy of its
    /// config (`visibility-replica-<index>.toml` beside it) that differs only in `listen`
    /// and `data_dir`: with PostgreSQL storage the processes share one log.
    pub fn start_replica(&self, exe: &Path, index: usize, port: u16) -> anyhow::Result<Visibility> {
        let config = std::fs::read_to_string(&self.config)
            .map_err(|e| anyhow!("{}: {e}", self.config.display()))?;
        let mut config = set_top_level(&config, "listen", &format!("\"127.0.0.1:{port}\""));
        config = set_top_level(&config, "data_dir", &format!("\"data-replica-{index}\""));
        let dir = self.config.parent().unwrap_or(Path::new("."));
        let path = dir.join(format!("visibility-replica-{index}.toml"));
        write(&path, &config)?;
        Visibility::restart(exe, &self.did, &path)
    }
}

/// What a gateway is configured with.
pub struct GatewaySpec {
    pub did: String,
    /// A fixed port (when others must know the address in advance); 0 picks one.
    pub port: u16,
    /// FHIR transaction Bundles imported into the embedded store before start.
    pub records: Vec<PathBuf>,
    pub policies: PathBuf,
    /// Extra TOML appended to the generated config (trust, did_web, contracts, custodian,
    /// storage ([`Storage::toml`])...).
    pub extra_toml: String,
}

/// A gateway running `fedgate gateway serve`.
pub struct Gateway {
    pub process: Process,
    pub did: String,
    pub dir: PathBuf,
    pub config: PathBuf,
}

impl Gateway {
    pub fn start(exe: &Path, dir: &Path, spec: &GatewaySpec) -> anyhow::Result<Gateway> {
        mkdir(dir)?;
        let shared = spec.extra_toml.contains("backend = \"postgres\"");
        let store = dir.join("data").join("records");
        if !shared && !spec.records.is_empty() && !store.exists() {
            import_records(exe, &store, &spec.records)?;
        }
        let token_path = dir.join("admin-token");
        if !token_path.exists() {
            write_secret(&token_path, &federation::client::random_token())?;
        }
        let config = format!(
            "listen = \"127.0.0.1:{}\"\ndid = \"{}\"\nkey_file = \"gateway.key.json\"\nsecret_file = \"gateway.secret\"\ndata_dir = \"data\"\npolicies = \"{}\"\nadmin_token_file = \"admin-token\"\ndev_mode = true\n# Test machines run many gateways at once: a starved one must not turn slow\n# decisions into denials.\npolicy_time_limit_ms = 2000\n{}\n",
            spec.port,
            spec.did,
            spec.policies.display(),
            spec.extra_toml
        );
        let path = dir.join("gateway.toml");
        write(&path, &config)?;
        if shared && !spec.records.is_empty() {
            // Idempotent: a restart imports nothing twice.
            import_records_configured(exe, &path, &spec.records)?;
        }
        Gateway::restart(exe, dir, &spec.did, &path)
    }

    /// Another process of this gateway, replica `index` (1 and up), from a copy of its
    /// config (`gateway-replica-<index>.toml` beside it): the same DID, keys, secret,
    /// admin token and `[storage]`, so the replicas share their state in PostgreSQL, and
    /// the same `public_url` (this one's address, unless the config sets one). Two
    /// settings differ: `listen` (its own `port`) and `data_dir` (`data-replica-<index>`),
    /// since what stays in files there (the embedded record store, redb) is locked by the
    /// process that opens it; `records` are imported into its own store first.
    pub fn start_replica(
        &self,
        exe: &Path,
        index: usize,
        port: u16,
        records: &[PathBuf],
    ) -> anyhow::Result<Gateway> {
        let data = format!("data-replica-{index}");
        let store = self.dir.join(&data).join("records");
        let config_text = std::fs::read_to_string(&self.config).unwrap_or_default();
        // With PostgreSQL storage the records are in the schema every replica shares.
        let shared = config_text.contains("backend = \"postgres\"");
        if !shared && !records.is_empty() && !store.exists() {
            mkdir(&self.dir.join(&data))?;
            import_records(exe, &store, records)?;
        }
        let config = std::fs::read_to_string(&self.config)
            .map_err(|e| anyhow!("{}: {e}", self.config.display()))?;
        let mut config = set_top_level(&config, "listen", &format!("\"127.0.0.1:{port}\""));
        config = set_top_level(&config, "data_dir", &format!("\"{data}\""));
        // One organization: its DID document and page links name one address, the
        // first's, whichever replica answers.
        if !has_top_level(&config, "public_url") {
            config = set_top_level(&config, "public_url", &format!("\"{}\"", self.url()));
        }
        let path = self.dir.join(format!("gateway-replica-{index}.toml"));
        write(&path, &config)?;
        Gateway::restart(exe, &self.dir, &self.did, &path)
    }

    /// Starts (again) from an existing config.
    pub fn restart(exe: &Path, dir: &Path, did: &str, config: &Path) -> anyhow::Result<Gateway> {
        let process = spawn(
            exe,
            &["gateway", "serve", "--config", &config.to_string_lossy()],
        )?;
        Ok(Gateway {
            process,
            did: did.to_string(),
            dir: dir.to_path_buf(),
            config: config.to_path_buf(),
        })
    }

    pub fn url(&self) -> String {
        format!("{}/", self.process.url())
    }

    pub async fn challenge(&self) -> anyhow::Result<federation::credentials::PresentationBinding> {
        let (status, body) = post(
            &format!("{}/v1/challenges", self.process.url()),
            &json!({}),
            None,
        )
        .await?;
        match (status, body["challenge"].as_str(), body["domain"].as_str()) {
            (200, Some(c), Some(d)) => Ok(federation::credentials::PresentationBinding {
                challenge: c.to_string(),
                domain: d.to_string(),
            }),
            _ => Err(anyhow!("challenge failed ({status}): {body}")),
        }
    }

    /// POSTs JSON to the gateway; returns status, headers and the raw body.
    pub async fn post_raw(
        &self,
        path: &str,
        body: &Value,
        accept: Option<&str>,
    ) -> anyhow::Result<(u16, reqwest::header::HeaderMap, Vec<u8>)> {
        let mut req = client()
            .post(format!("{}{path}", self.process.url()))
            .json(body);
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await?.to_vec();
        Ok((status, headers, bytes))
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<(u16, Value)> {
        post(&format!("{}{path}", self.process.url()), body, None).await
    }
}

impl Visibility {
    async fn challenge(&self) -> anyhow::Result<federation::credentials::PresentationBinding> {
        let (status, body) =
            post(&format!("{}v1/challenges", self.url()), &json!({}), None).await?;
        match (status, body["challenge"].as_str(), body["domain"].as_str()) {
            (200, Some(c), Some(d)) => Ok(federation::credentials::PresentationBinding {
                challenge: c.to_string(),
                domain: d.to_string(),
            }),
            _ => Err(anyhow!("visibility challenge failed ({status}): {body}")),
        }
    }

    /// Opens an auditor session with `credentials` presented by `holder`.
    async fn auditor_session(
        &self,
        holder: &federation::keys::KeyPair,
        credentials: &[Value],
    ) -> anyhow::Result<String> {
        let binding = self.challenge().await?;
        let vp = federation::credentials::present(
            credentials,
            holder,
            &binding,
            federation::credentials::ProofFormat::Jwt,
        )
        .await?;
        let (status, body) = post(
            &format!("{}v1/audit/sessions", self.url()),
            &json!({"presentation": vp}),
            None,
        )
        .await?;
        body["token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("auditor session refused ({status}): {body}"))
    }

    /// A patient's own history: the holder proves control of the patient DID.
    pub async fn patient_history(
        &self,
        patient: &federation::keys::KeyPair,
        credentials: &[Value],
    ) -> anyhow::Result<Vec<federation::events::AccessEvent>> {
        let binding = self.challenge().await?;
        let vp = federation::credentials::present(
            credentials,
            patient,
            &binding,
            federation::credentials::ProofFormat::Jwt,
        )
        .await?;
        let (status, body) = post(
            &format!("{}v1/patients/history", self.url()),
            &json!({"presentation": vp}),
            None,
        )
        .await?;
        if status != 200 {
            return Err(anyhow!("history refused ({status}): {body}"));
        }
        let events = body["events"]
            .as_array()
            .ok_or_else(|| anyhow!("history answer without events: {body}"))?;
        Ok(events
            .iter()
            .filter_map(|e| {
                serde_json::from_value(e.get("event").cloned().unwrap_or_else(|| e.clone())).ok()
            })
            .collect())
    }

    /// Every logged access event of `custodian`, with its leaf index (auditor session).
    pub async fn events_of(
        &self,
        token: &str,
        custodian: &str,
    ) -> anyhow::Result<Vec<(u64, federation::events::AccessEvent)>> {
        let mut out = Vec::new();
        let mut before: Option<u64> = None;
        loop {
            let mut url = format!(
                "{}v1/audit/events?custodian={custodian}&limit=1000",
                self.url()
            );
            if let Some(b) = before {
                url.push_str(&format!("&before={b}"));
            }
            let page: Value = client()
                .get(url)
                .bearer_auth(token)
                .send()
                .await?
                .json()
                .await?;
            for e in page["events"].as_array().into_iter().flatten() {
                if let (Some(i), Ok(ev)) = (
                    e["leafIndex"].as_u64(),
                    serde_json::from_value(e["event"].clone()),
                ) {
                    out.push((i, ev));
                }
            }
            match page["next"].as_u64() {
                Some(n) => before = Some(n),
                None => break,
            }
        }
        Ok(out)
    }

    /// The latest checkpoint, verified with the key of the service's DID document.
    pub async fn checkpoint(&self) -> anyhow::Result<federation::checkpoint::Checkpoint> {
        let doc: Value = client()
            .get(format!("{}.well-known/did.json", self.url()))
            .send()
            .await?
            .json()
            .await?;
        let vm = doc["verificationMethod"][0].clone();
        let vm_id = vm["id"].as_str().unwrap_or_default().to_string();
        let jwk = federation::did::method_public_jwk(&vm_id, &vm)?;
        let x = serde_json::to_value(&jwk)?["x"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let raw: [u8; 32] = federation::b64::decode(&x)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| anyhow!("the log's key is not Ed25519"))?;
        let verifier = federation::checkpoint::NoteVerifier::new(&self.did, raw)?;
        let note = get_text(&format!("{}v1/checkpoint", self.url())).await?;
        federation::checkpoint::open(&note, &[verifier]).map_err(anyhow::Error::from)
    }

    /// Verifies that `event` sits at `index` under the checkpoint `cp`.
    pub async fn verify_inclusion(
        &self,
        cp: &federation::checkpoint::Checkpoint,
        index: u64,
        event: &federation::events::AccessEvent,
    ) -> anyhow::Result<()> {
        let proof: Value = client()
            .get(format!(
                "{}v1/proofs/inclusion?index={index}&size={}",
                self.url(),
                cp.size
            ))
            .send()
            .await?
            .json()
            .await?;
        let hashes: Vec<federation::log::Hash> = proof["proof"]
            .as_array()
            .ok_or_else(|| anyhow!("no proof"))?
            .iter()
            .map(|h| {
                hex::decode(h.as_str().unwrap_or_default())
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| anyhow!("bad proof hash"))
            })
            .collect::<Result<_, _>>()?;
        let leaf = federation::log::leaf_hash(&federation::wire::leaf_bytes(
            &federation::wire::LogEntry::Access {
                event: event.clone(),
            },
        ));
        federation::log::verify_inclusion(&leaf, index, cp.size, &hashes, &cp.root)
            .map_err(anyhow::Error::from)
    }
}

impl Gateway {
    /// The custodian confirms that `did` belongs to its patient `mrn` (admin token).
    pub async fn link_patient(&self, mrn: &str, did: &str) -> anyhow::Result<()> {
        self.link_patient_by(MRN_SYSTEM, mrn, did).await
    }

    /// [`Gateway::link_patient`] for a patient known by another identifier system.
    pub async fn link_patient_by(
        &self,
        system: &str,
        value: &str,
        did: &str,
    ) -> anyhow::Result<()> {
        let token = std::fs::read_to_string(self.dir.join("admin-token"))
            .map_err(|e| anyhow!("admin token: {e}"))?;
        let (status, body) = post(
            &format!("{}v1/patient-links", self.url()),
            &serde_json::json!({"patient": {"system": system, "value": value}, "did": did}),
            Some(token.trim()),
        )
        .await?;
        if status == 200 {
            Ok(())
        } else {
            Err(anyhow!("linking a patient DID: {status} {body}"))
        }
    }

    /// A physician of `organization`, credentialed by `office`, with the consent of
    /// patient `mrn`, whose DID this custodian has linked to the patient.
    pub async fn consented_physician(
        &self,
        office: &Office,
        organization: &str,
        mrn: &str,
    ) -> anyhow::Result<Requester> {
        let requester = office
            .consented_physician(organization, &self.did, mrn)
            .await?;
        if let Some(patient) = &requester.patient {
            self.link_patient(mrn, patient.did()).await?;
        }
        Ok(requester)
    }

    /// A metric summed over its labels; `name{label="value"}` picks one series.
    pub async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let text = get_text(&format!("{}metrics", self.url())).await?;
        let series = |l: &str| {
            if name.contains('{') {
                l.split(' ').next() == Some(name)
            } else {
                l.split(['{', ' ']).next() == Some(name)
            }
        };
        Ok(text
            .lines()
            .filter(|l| series(l))
            .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
            .sum())
    }

    /// Events waiting in the outbox (from `/readyz`).
    pub async fn outbox_pending(&self) -> Option<u64> {
        let v: Value = client()
            .get(format!("{}readyz", self.url()))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        v["outbox"]["pending"]
            .as_u64()
            .or_else(|| v["state"]["outbox"]["pending"].as_u64())
    }

    /// Waits until the outbox is empty (every event has a receipt).
    pub async fn drained(&self, within: Duration) -> bool {
        let t0 = std::time::Instant::now();
        while t0.elapsed() < within {
            if self.outbox_pending().await == Some(0) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }
}

// ---------------------------------------------------------------------------------------
// Fixtures and credentials for the federation's roles, shared by the demo, the load tool
// and the end-to-end tests.
// ---------------------------------------------------------------------------------------

/// The repository's policies and fixtures: from the current directory (a checkout running
/// `cargo run -- ...`) or the one this binary was built from.
pub(crate) fn repo_root() -> anyhow::Result<PathBuf> {
    [
        std::env::current_dir().ok(),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR"))),
    ]
    .into_iter()
    .flatten()
    .find(|p| p.join("policies").is_dir() && p.join("examples/data/fhir/hospital-a").is_dir())
    .ok_or_else(|| {
        anyhow!("run from the fedgate repository (policies/ and examples/data/ are needed)")
    })
}

/// The FHIR Bundles of a synthetic site (`hospital-a`, `hospital-b`), in name order.
pub fn fixtures(site: &str) -> anyhow::Result<Vec<PathBuf>> {
    let dir = repo_root()?.join("examples/data/fhir").join(site);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| anyhow!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    Ok(files)
}

/// The patient the scenarios ask hospital A about: her Bundle and her MRN.
pub fn fixture_patient() -> anyhow::Result<(PathBuf, String)> {
    let file = repo_root()?.join("examples/data/fhir/hospital-a/Della_Hettinger_8386e1d9.json");
    let mrn = fixture_mrn(&file)?;
    Ok((file, mrn))
}

/// The identifier system of the fixtures' medical record numbers.
pub const MRN_SYSTEM: &str = "http://hospital.smarthealthit.org";

/// MRN of the first Patient in a fixture bundle.
pub(crate) fn fixture_mrn(file: &Path) -> anyhow::Result<String> {
    let bundle: Value = serde_json::from_slice(&std::fs::read(file)?)?;
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] == "Patient")
        .flat_map(|r| r["identifier"].as_array().into_iter().flatten())
        .find(|i| i["system"] == MRN_SYSTEM)
        .and_then(|i| i["value"].as_str())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("{} has no MRN", file.display()))
}

/// Who a privilege credential is for, and what it allows.
pub struct Staff<'a> {
    pub holder: &'a str,
    pub role: &'a str,
    pub organization: &'a str,
    pub facility: &'a str,
    pub domains: &'a [&'a str],
    pub actions: &'a [&'a str],
}

impl Staff<'_> {
    /// The ClinicianPrivilegeCredential subject an office issues for this staff member.
    pub fn subject(&self) -> Value {
        json!({
            "id": self.holder,
            "name": format!("Test {}", self.role),
            "npi": "1234567893",
            "role": self.role,
            "specialty": "207R00000X",
            "organization": self.organization,
            "privileges": [{
                "facility": self.facility,
                "domains": self.domains,
                "actions": self.actions,
            }]
        })
    }
}

/// What a patient's consent permits.
pub struct ConsentSpec<'a> {
    pub custodian: &'a str,
    /// Identifier system and value of the patient at the custodian.
    pub system: &'a str,
    pub value: &'a str,
    /// `{"id": <DID>, "kind": "clinician" | "organization" | ...}`.
    pub grantee: Value,
    pub domains: &'a [&'a str],
    pub purposes: &'a [&'a str],
    pub data_classes: &'a [&'a str],
}

/// A patient's self-issued consent (a `vc+jwt`), valid from a minute ago until 2031.
pub async fn patient_consent(
    patient: &federation::keys::KeyPair,
    spec: &ConsentSpec<'_>,
) -> anyhow::Result<Value> {
    let subject = json!({
        "id": patient.did(),
        "patientIdentifiers": [{"custodian": spec.custodian, "system": spec.system, "value": spec.value}],
        "custodians": [spec.custodian],
        "grantee": spec.grantee,
        "provision": "permit",
        "domains": spec.domains,
        "purposes": spec.purposes,
        "dataClasses": spec.data_classes,
        "period": {"start": "2026-01-01T00:00:00Z", "end": "2031-01-01T00:00:00Z"}
    });
    let vc = federation::credentials::unsigned_credential(
        federation::CredentialKind::PatientConsent,
        patient.did(),
        subject,
        chrono::Utc::now() - chrono::Duration::minutes(1),
        None,
        None,
    );
    federation::credentials::issue(vc, patient, federation::credentials::ProofFormat::Jwt)
        .await
        .map_err(anyhow::Error::from)
}

impl Office {
    /// A new holder key and the privilege this office issues for it (`vc+jwt`).
    pub async fn staff(
        &self,
        role: &str,
        organization: &str,
        facility: &str,
        domains: &[&str],
        actions: &[&str],
    ) -> anyhow::Result<(federation::keys::KeyPair, Value)> {
        let key =
            federation::keys::KeyPair::generate_did_key(federation::keys::KeyAlgorithm::Ed25519)?;
        let staff = Staff {
            holder: key.did(),
            role,
            organization,
            facility,
            domains,
            actions,
        };
        let (_, vc) = self.joiner(&staff.subject(), "jwt").await?;
        Ok((key, vc))
    }
}

/// A clinician's key and the credentials they present.
pub struct Requester {
    pub key: federation::keys::KeyPair,
    pub credentials: Vec<Value>,
    /// The patient whose consent is among the credentials, if any (their wallet key).
    pub patient: Option<federation::keys::KeyPair>,
}

impl Office {
    /// A physician of `organization` who may read clinical records at `custodian`, with the
    /// consent of the patient behind `mrn` there (a new did:key) for treatment: privilege
    /// first, consent second.
    pub async fn consented_physician(
        &self,
        organization: &str,
        custodian: &str,
        mrn: &str,
    ) -> anyhow::Result<Requester> {
        let (key, privilege) = self
            .staff(
                "physician",
                organization,
                custodian,
                &["clinical"],
                &["read"],
            )
            .await?;
        let patient =
            federation::keys::KeyPair::generate_did_key(federation::keys::KeyAlgorithm::Ed25519)?;
        let consent = patient_consent(
            &patient,
            &ConsentSpec {
                custodian,
                system: MRN_SYSTEM,
                value: mrn,
                grantee: json!({"id": key.did(), "kind": "clinician"}),
                domains: &["clinical"],
                purposes: &["TREAT"],
                data_classes: &["Patient", "Observation"],
            },
        )
        .await?;
        Ok(Requester {
            key,
            credentials: vec![privilege, consent],
            patient: Some(patient),
        })
    }
}

impl Visibility {
    /// Opens a session as a new auditor of `organization`, credentialed by `office`.
    pub async fn auditor_login(
        &self,
        office: &Office,
        organization: &str,
    ) -> anyhow::Result<String> {
        let (key, vc) = office
            .staff(
                "auditor",
                organization,
                &self.did,
                &["clinical"],
                &["query"],
            )
            .await?;
        self.auditor_session(&key, &[vc]).await
    }
}
