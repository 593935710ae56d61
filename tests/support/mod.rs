//! Starting real `fedgate` processes on loopback for end-to-end tests.

#![allow(dead_code)]

pub mod audit;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use fedgate::harness::{Federation, FederationBuilder};

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
