//! The harness's PostgreSQL server (`fedgate::harness::Postgres`), which the end-to-end
//! tests of the PostgreSQL storage and the replicated demo run on: it accepts its
//! password over TCP and refuses a wrong one, keeps committed data across a stop and a
//! start, keeps its password file private, and with TLS proves its name with the CA it
//! hands out. It needs the Debian package `postgresql`; without it these tests fail.
//!
//! Also the gateway replicas the server is for: another process of the same gateway, from
//! a copy of its config, is the same organization on a port of its own.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::{Command, Output};

use fedgate::harness::{fixture_patient, Gateway, GatewaySpec, Postgres};
use serde_json::Value;

/// `psql` over TCP with `password`, connecting with the libpq `conninfo` given.
fn psql(pg: &Postgres, conninfo: &str, password: &str, sql: &str) -> Output {
    Command::new(pg.program("psql"))
        .arg(conninfo)
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGPASSFILE")
        .env_remove("PGSSLMODE")
        .output()
        .unwrap()
}

fn tcp(pg: &Postgres, database: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user=fedgate dbname={database}",
        pg.port()
    )
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn stderr(out: &Output) -> String {
    assert!(!out.status.success(), "psql succeeded: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn password_from_file(pg: &Postgres) -> String {
    std::fs::read_to_string(pg.password_file())
        .unwrap()
        .trim()
        .to_string()
}

fn owner(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().uid()
}

#[test]
fn password_over_tcp_and_data_kept_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut pg = Postgres::start(dir.path()).unwrap();
    let port = pg.port();

    // The password file: private, the caller's, and what the server was given.
    let file = pg.password_file().to_path_buf();
    assert_eq!(file, dir.path().canonicalize().unwrap().join("db-password"));
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.uid(), owner(dir.path()));
    let password = password_from_file(&pg);
    assert_eq!(password, pg.password());
    assert!(
        password.len() >= 32,
        "a weak password: {} chars",
        password.len()
    );

    // When the tests run as root, the server runs as another account.
    if owner(dir.path()) == 0 {
        let data = dir.path().join("pg/data");
        assert_ne!(owner(&data), 0, "the cluster belongs to root");
    }

    let url = pg.url("fedgate");
    assert_eq!(url, format!("postgres://fedgate@127.0.0.1:{port}/fedgate"));
    assert!(!url.contains(&password));

    // The password opens a session over TCP, as the superuser, with fsync on.
    let out = psql(
        &pg,
        &tcp(&pg, "postgres"),
        &password,
        "SELECT 40 + 2, current_user, host(inet_server_addr()), current_setting('fsync')",
    );
    assert_eq!(stdout(&out), "42|fedgate|127.0.0.1|on");

    // A wrong one does not.
    let out = psql(&pg, &tcp(&pg, "postgres"), "not-the-password", "SELECT 1");
    let refused = stderr(&out);
    assert!(
        refused.contains("password authentication failed for user \"fedgate\""),
        "{refused}"
    );
    // Nor does none: TCP never trusts.
    let out = Command::new(pg.program("psql"))
        .args([&tcp(&pg, "postgres"), "-X", "-w", "-c", "SELECT 1"])
        .env_remove("PGPASSWORD")
        .env("PGPASSFILE", "/dev/null")
        .output()
        .unwrap();
    assert!(stderr(&out).contains("no password supplied"), "{out:?}");

    pg.create_database("fedgate").unwrap();
    let again = pg.create_database("fedgate").unwrap_err().to_string();
    assert!(again.contains("already exists"), "{again}");
    let out = psql(
        &pg,
        &tcp(&pg, "fedgate"),
        &password,
        "CREATE TABLE kept (n integer); INSERT INTO kept VALUES (1), (2), (39)",
    );
    stdout(&out);

    // Stopped, it takes no connection.
    pg.stop().unwrap();
    let out = psql(&pg, &tcp(&pg, "fedgate"), &password, "SELECT 1");
    let down = stderr(&out);
    assert!(down.contains("Connection refused"), "{down}");

    // Started again: the same port, password and rows.
    pg.start_again().unwrap();
    assert_eq!(pg.port(), port);
    let out = psql(
        &pg,
        &tcp(&pg, "fedgate"),
        &password,
        "SELECT count(*), sum(n) FROM kept",
    );
    assert_eq!(stdout(&out), "3|42");
    assert_eq!(
        pg.psql(
            "fedgate",
            "SELECT string_agg(n::text, ',' ORDER BY n) FROM kept"
        )
        .unwrap()
        .trim(),
        "1,2,39"
    );

    // What a service is configured with: no password in the URL, none in the file.
    let storage = pg.storage("fedgate", "gateway_hospital_a");
    let table: toml::Table = toml::from_str(&storage.toml()).unwrap();
    let storage_table = table["storage"].as_table().unwrap();
    assert_eq!(storage_table["backend"].as_str(), Some("postgres"));
    assert_eq!(storage_table["url"].as_str(), Some(url.as_str()));
    assert_eq!(
        storage_table["password_file"].as_str(),
        Some(file.to_str().unwrap())
    );
    assert_eq!(storage_table["schema"].as_str(), Some("gateway_hospital_a"));
    assert!(!storage_table.contains_key("ca_file"));
    assert!(!storage.toml().contains(&password));

    // Dropped, it stops at once (as in a crash); started anew on the same folder, it
    // keeps its password and recovers the rows.
    let psql_program = pg.program("psql");
    drop(pg);
    let out = Command::new(&psql_program)
        .args([
            &format!("host=127.0.0.1 port={port} user=fedgate dbname=fedgate"),
            "-X",
            "-c",
            "SELECT 1",
        ])
        .env("PGPASSWORD", &password)
        .output()
        .unwrap();
    assert!(stderr(&out).contains("Connection refused"), "{out:?}");
    let pg = Postgres::start(dir.path()).unwrap();
    assert_eq!(pg.password(), password);
    let out = psql(
        &pg,
        &tcp(&pg, "fedgate"),
        &password,
        "SELECT sum(n) FROM kept",
    );
    assert_eq!(stdout(&out), "42");
}

#[test]
fn tls_proves_the_servers_name_with_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    // So deep that a unix socket inside it would be too long a path for the kernel.
    let deep = dir
        .path()
        .join("a-folder-deep-enough-that-a-unix-socket-in-it-would-not-fit-in-sun-path");
    let pg = Postgres::start_with_tls(&deep).unwrap();
    assert_eq!(pg.psql("postgres", "SHOW ssl").unwrap().trim(), "on");
    let ca = pg.ca_file().unwrap().to_path_buf();
    let pem = std::fs::read_to_string(&ca).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let password = password_from_file(&pg);

    for host in ["127.0.0.1", "localhost"] {
        let conninfo = format!(
            "host={host} port={} user=fedgate dbname=postgres sslmode=verify-full sslrootcert={}",
            pg.port(),
            ca.display()
        );
        let out = psql(
            &pg,
            &conninfo,
            &password,
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        );
        assert_eq!(stdout(&out), "t", "over {host}");
    }

    // The certificate names 127.0.0.1 and localhost, nothing else.
    let conninfo = format!(
        "host=db.example.test hostaddr=127.0.0.1 port={} user=fedgate dbname=postgres sslmode=verify-full sslrootcert={}",
        pg.port(),
        ca.display()
    );
    let mismatch = stderr(&psql(&pg, &conninfo, &password, "SELECT 1"));
    assert!(mismatch.contains("does not match host name"), "{mismatch}");

    // TCP without TLS is refused even with the password.
    let conninfo = format!("{} sslmode=disable", tcp(&pg, "postgres"));
    let plain = stderr(&psql(&pg, &conninfo, &password, "SELECT 1"));
    assert!(plain.contains("no pg_hba.conf entry"), "{plain}");

    let storage = pg.storage("fedgate", "visibility");
    assert_eq!(
        storage.url,
        format!(
            "postgres://fedgate@127.0.0.1:{}/fedgate?sslmode=require",
            pg.port()
        )
    );
    let table: toml::Table = toml::from_str(&storage.toml()).unwrap();
    assert_eq!(
        table["storage"]["ca_file"].as_str(),
        Some(ca.to_str().unwrap())
    );
}

#[tokio::test]
async fn a_gateway_replica_is_the_same_organization_on_its_own_port() {
    let dir = tempfile::tempdir().unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_fedgate"));
    let did = "did:web:hospital-a.test";
    let (records, _) = fixture_patient().unwrap();
    let first = Gateway::start(
        exe,
        &dir.path().join("hospital-a"),
        &GatewaySpec {
            did: did.into(),
            port: 0,
            records: vec![records.clone()],
            policies: Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"),
            extra_toml: "[custodian]\nbreak_glass_minutes = 30\n".into(),
        },
    )
    .unwrap();
    let port = fedgate::harness::free_port().unwrap();
    let replica = first.start_replica(exe, 1, port, &[records]).unwrap();

    assert_eq!(replica.process.addr, format!("127.0.0.1:{port}"));
    assert_ne!(replica.process.addr, first.process.addr);
    assert_eq!((replica.did.as_str(), &replica.dir), (did, &first.dir));

    // The same DID document (the same key, the same address), and challenges bound to
    // the same DID.
    let document = |gw: &Gateway| {
        let url = format!("{}.well-known/did.json", gw.url());
        async move {
            let text = fedgate::harness::get_text(&url).await.unwrap();
            serde_json::from_str::<Value>(&text).unwrap()
        }
    };
    let (a, b) = (document(&first).await, document(&replica).await);
    assert_eq!(a["id"], did);
    assert!(
        a["verificationMethod"][0]["publicKeyMultibase"].is_string(),
        "{a}"
    );
    assert_eq!(a["service"][0]["serviceEndpoint"], first.url());
    assert_eq!(a, b);
    for gw in [&first, &replica] {
        assert_eq!(gw.challenge().await.unwrap().domain, did);
    }

    // The configs differ in the listening address, the data folder and the public URL
    // (which the first's leaves to its address) only.
    let original = std::fs::read_to_string(&first.config).unwrap();
    let copy = std::fs::read_to_string(&replica.config).unwrap();
    let only_in = |a: &str, b: &str| -> Vec<String> {
        a.lines()
            .filter(|l| !b.lines().any(|m| m == *l))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(
        only_in(&original, &copy),
        [original.lines().next().unwrap(), "data_dir = \"data\""]
    );
    assert_eq!(
        only_in(&copy, &original),
        [
            format!("listen = \"127.0.0.1:{port}\""),
            "data_dir = \"data-replica-1\"".to_string(),
            format!("public_url = \"{}\"", first.url()),
        ]
    );
    assert!(first.dir.join("data-replica-1/records").is_file());
}
