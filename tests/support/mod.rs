//! Starting real `fedgate` processes on loopback for end-to-end tests.

#![allow(dead_code)]

pub mod audit;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use fedgate::harness::{Federation, FederationBuilder, Office};
use serde_json::Value;

pub const OFFICE: &str = "did:web:credentialing.test";
pub const CUSTODIAN: &str = "did:web:hospital-a.test";
pub const REQUESTER_ORG: &str = "did:web:hospital-b.test";
pub const AUDITOR_ORG: &str = "did:web:auditor.test";
pub const VISIBILITY: &str = "did:web:visibility.test";

pub fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fedgate"))
}

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `node tests/peers/<script>` in tests/peers, once each of `packages` is installed there:
/// without them the test fails, saying how to install them; it never skips.
pub fn node_peer(script: &str, packages: &[&str]) -> Command {
    let dir = repo("tests/peers");
    for package in packages {
        assert!(
            dir.join("node_modules").join(package).is_dir(),
            "the interop peers are not installed: run scripts/peers (npm ci in tests/peers)"
        );
    }
    let mut cmd = Command::new("node");
    cmd.arg(dir.join(script)).current_dir(&dir);
    cmd
}

/// Fails the test, with the command's stderr, unless it exited with success.
pub fn assert_ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts a [`node_peer`] command, failing the test if node itself is missing.
pub fn spawn_node(cmd: &mut Command) -> Child {
    cmd.spawn()
        .unwrap_or_else(|e| panic!("node is needed for the interop test and did not start: {e}"))
}

/// The tests' federation in `dir`: auditors may log in, and receipts come quickly.
pub fn federation(dir: &Path) -> FederationBuilder {
    Federation::builder(&exe(), dir, OFFICE, VISIBILITY)
        .auditors(AUDITOR_ORG)
        .ship_every(Duration::from_millis(100))
}

/// A running `fedgate` process, killed when dropped.
pub struct Service {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Service {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn fedgate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fedgate"))
}

/// Runs `fedgate ARGS` and waits for the line "... listening on ADDR" on stdout.
pub fn start(args: &[&str]) -> Service {
    let mut child = fedgate()
        .args(args)
        .env("FEDGATE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn fedgate");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.split(" listening on ").nth(1) {
                let _ = tx.send(addr.trim().to_string());
            }
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(a) => a.parse().expect("address"),
        Err(_) => {
            let _ = child.kill();
            panic!("fedgate {args:?} did not report its address");
        }
    };
    Service { child, addr }
}

/// Writes a secret file with mode 0600.
pub fn write_secret(path: &Path, secret: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .expect("secret file");
    f.write_all(secret.as_bytes()).expect("write secret");
}

/// A credentialing office (`fedgate issuer serve`) as `did`, with the admin token `token`
/// and `extra` appended to its configuration (a `[section]` may follow the top-level keys
/// only there); with the folder it runs in, kept until the caller drops it.
pub fn start_office(did: &str, token: &str, extra: &str) -> (Service, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary folder");
    write_secret(&dir.path().join("admin-token"), token);
    let config = format!(
        r#"
listen = "127.0.0.1:0"
did = "{did}"
key_file = "office.key.json"
data_dir = "data"
admin_token_file = "admin-token"
dev_mode = true
{extra}"#
    );
    let path = dir.path().join("issuer.toml");
    std::fs::write(&path, config).expect("issuer.toml");
    let svc = start(&["issuer", "serve", "--config", path.to_str().expect("path")]);
    (svc, dir)
}

/// An HTTP client that reuses no connection: a server that refuses an oversized body
/// closes that connection, and a pooled client would otherwise send the next request into
/// it.
pub fn unpooled_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .build()
        .expect("HTTP client")
}

/// The office's assertion key as a public JWK, from its DID document over HTTP.
pub async fn office_jwk(http: &reqwest::Client, office: &Office) -> Value {
    let doc: Value = http
        .get(format!("{}.well-known/did.json", office.url()))
        .send()
        .await
        .expect("the office's DID document")
        .json()
        .await
        .expect("the office's DID document as JSON");
    let vm = doc["assertionMethod"][0]
        .as_str()
        .expect("an assertion method")
        .to_string();
    let method = doc["verificationMethod"]
        .as_array()
        .expect("verification methods")
        .iter()
        .find(|m| m["id"] == vm.as_str())
        .expect("the assertion method's verification method");
    let jwk = federation::did::method_public_jwk(&vm, method).expect("its public JWK");
    serde_json::to_value(jwk).expect("JWK as JSON")
}
