//! SMART Backend Services between the FHIR record source and real servers: the
//! authorization server is oidc-provider (tests/oauth: private_key_jwt client assertions
//! checked against the registered keys, client_credentials, JWT access tokens for the FHIR
//! server's audience), and the FHIR server is the Helios FHIR Server (`hfs`), which checks
//! each token against the authorization server's JWKS, issuer, audience and lifetime and
//! enforces its scopes per operation.
//!
//! They need Node.js with `npm ci --prefix tests/oauth` done, and `hfs` (`FEDGATE_HFS`, or
//! on PATH): `scripts/test` installs both. Without them these tests fail, saying what is
//! missing; they never pass without having run.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::response::IntoResponse as _;
use gateway::records::smart::{
    self, ClientTls, FhirAuth, SigningAlgorithm, SmartClient, SmartError, SmartSettings,
};
use gateway::records::{FhirServer, RecordError};
use josekit::jwk::KeyPair as _;
use serde_json::{json, Value};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the gateway crate is in the workspace")
        .to_path_buf()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A child process killed when dropped, with its output lines kept.
struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn spawn(mut command: Command, what: &str) -> Proc {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        for out in [
            child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|e| Box::new(e) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Proc { child, lines }
    }

    fn output(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// The authorization server
// ---------------------------------------------------------------------------------------

/// How the authorization server is started.
#[derive(Clone)]
struct AsOptions {
    /// Access token lifetime, seconds.
    ttl: u64,
    /// Scopes the FHIR server (the resource) accepts: others asked are not granted.
    resource_scopes: &'static str,
    /// The first N tokens carry an `exp` an hour in the past.
    skewed: u32,
}

impl Default for AsOptions {
    fn default() -> Self {
        AsOptions {
            ttl: 300,
            resource_scopes: "system/*.rs system/*.cruds",
            skewed: 0,
        }
    }
}

/// Every scope any test asks for: the server checks a client's allowed scopes only
/// against the ones it knows.
const KNOWN_SCOPES: &str =
    "system/*.rs system/*.cruds system/Patient.rs system/Observation.rs system/Condition.rs";

struct AuthServer {
    proc: Proc,
    port: u16,
    dir: PathBuf,
    resource: String,
}

impl AuthServer {
    fn start(dir: &Path, port: u16, resource: &str, clients: &[Value], opts: &AsOptions) -> Self {
        let script = repo_root().join("tests/oauth/server.mjs");
        let modules = repo_root().join("tests/oauth/node_modules/oidc-provider");
        assert!(
            modules.is_dir(),
            "the authorization server's packages are not installed: run `npm ci --prefix tests/oauth` (scripts/test does)"
        );
        let node = which("node").unwrap_or_else(|| {
            panic!(
                "the SMART tests need Node.js (`node` on PATH; Debian: apt-get install nodejs npm)"
            )
        });
        let clients_file = dir.join(format!("clients-{}.json", uuid::Uuid::new_v4()));
        std::fs::write(&clients_file, serde_json::to_vec(clients).unwrap()).unwrap();
        let mut command = Command::new(node);
        command
            .arg(script)
            .env("OAUTH_PORT", port.to_string())
            .env("OAUTH_CLIENTS", &clients_file)
            .env("OAUTH_KEYS", dir.join("as-keys.json"))
            .env("OAUTH_RESOURCE", resource)
            .env("OAUTH_RESOURCE_SCOPES", opts.resource_scopes)
            .env("OAUTH_SCOPES", KNOWN_SCOPES)
            .env("OAUTH_TOKEN_TTL", opts.ttl.to_string())
            .env("OAUTH_SKEWED_TOKENS", opts.skewed.to_string());
        let mut proc = Proc::spawn(
            command,
            "the authorization server (node tests/oauth/server.mjs)",
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while !proc.output().iter().any(|l| l.starts_with("listening ")) {
            if let Some(status) = proc.exited() {
                panic!(
                    "the authorization server exited ({status}):\n{}",
                    proc.output().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "the authorization server did not start:\n{}",
                proc.output().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        AuthServer {
            proc,
            port,
            dir: dir.to_path_buf(),
            resource: resource.to_string(),
        }
    }

    /// The same server (port, signing keys) started again with other clients or options.
    fn restart(self, clients: &[Value], opts: &AsOptions) -> Self {
        let AuthServer {
            proc,
            port,
            dir,
            resource,
        } = self;
        drop(proc);
        AuthServer::start(&dir, port, &resource, clients, opts)
    }

    fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every line printed so far has been read: a marker asked for is seen.
    fn sync(&self) {
        let id = uuid::Uuid::new_v4().to_string();
        let status = blocking_get(&format!("{}/test-marker?id={id}", self.issuer()));
        assert_eq!(status, Some(200), "the authorization server's marker");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.proc.output().iter().any(|l| l.contains(&id)) {
            assert!(Instant::now() < deadline, "the marker line never came");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn events(&self, event: &str, client: &str) -> Vec<Value> {
        self.sync();
        self.proc
            .output()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["event"] == event && v["client"] == client)
            .collect()
    }

    /// Access tokens issued to `client` since this server started.
    fn tokens(&self, client: &str) -> usize {
        self.events("token", client).len()
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

// ---------------------------------------------------------------------------------------
// The FHIR server
// ---------------------------------------------------------------------------------------

struct Hfs {
    _proc: Proc,
    base: String,
}

fn hfs_binary() -> PathBuf {
    // FEDGATE_HFS, else scripts/peers' build in target/peers, else on PATH.
    test_support::fhir_server::hfs_binary().unwrap_or_else(|e| panic!("{e}"))
}

impl Hfs {
    /// `hfs` on a free port, trusting the tokens of `auth` for its own base URL.
    fn start(dir: &Path, port: u16, auth: &AuthServer) -> Hfs {
        let base = format!("http://127.0.0.1:{port}/");
        let data = dir.join("hfs");
        std::fs::create_dir_all(&data).unwrap();
        // hfs reads its search parameters from the data folder (the crate ships none, and
        // without them it ignores `identifier` and `patient`): the ones the source uses.
        std::fs::write(
            data.join("search-parameters-r4.json"),
            search_parameters().to_string(),
        )
        .unwrap();
        let mut command = Command::new(hfs_binary());
        command
            .current_dir(&data)
            .env("HFS_SERVER_HOST", "127.0.0.1")
            .env("HFS_SERVER_PORT", port.to_string())
            .env("HFS_BASE_URL", base.trim_end_matches('/'))
            .env("HFS_STORAGE_BACKEND", "sqlite")
            .env(
                "DATABASE_URL",
                format!("sqlite://{}?mode=rwc", data.join("fhir.db").display()),
            )
            .env("HFS_DATA_DIR", &data)
            .env("HFS_UI_ENABLED", "false")
            .env("HFS_AUTH_ENABLED", "true")
            .env("HFS_AUTH_JWKS_URL", format!("{}/jwks", auth.issuer()))
            .env("HFS_AUTH_ISSUER", auth.issuer())
            .env("HFS_AUTH_AUDIENCE", &base)
            .env("HFS_AUTH_ALGORITHMS", "ES256")
            .env(
                "HFS_SMART_TOKEN_ENDPOINT",
                format!("{}/token", auth.issuer()),
            )
            .env("RUST_LOG", "warn");
        let mut proc = Proc::spawn(command, "the Helios FHIR Server (hfs)");
        let health = format!("{base}health");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = proc.exited() {
                panic!("hfs exited ({status}):\n{}", proc.output().join("\n"));
            }
            let up = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && blocking_get(&health).is_some_and(|s| s == 200);
            if up {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "hfs did not answer {health}:\n{}",
                proc.output().join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Hfs { _proc: proc, base }
    }
}

/// The R4 SearchParameters the FHIR source's reads need: the patient by identifier, and
/// Observation's patient compartment search (as the FHIR specification defines them).
fn search_parameters() -> Value {
    let param = |id: &str, code: &str, base: &str, ty: &str, expression: &str| {
        let mut p = json!({
            "resourceType": "SearchParameter",
            "id": id,
            "url": format!("http://hl7.org/fhir/SearchParameter/{id}"),
            "name": code,
            "status": "active",
            "code": code,
            "base": [base],
            "type": ty,
            "expression": expression,
        });
        if ty == "reference" {
            p["target"] = json!(["Patient"]);
        }
        json!({ "resource": p })
    };
    json!({
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            param("Patient-identifier", "identifier", "Patient", "token", "Patient.identifier"),
            param(
                "clinical-patient",
                "patient",
                "Observation",
                "reference",
                "Observation.subject.where(resolve() is Patient)",
            ),
        ],
    })
}

/// The status of a plain GET (for readiness), on a throwaway runtime-free client.
fn blocking_get(url: &str) -> Option<u16> {
    use std::io::{Read as _, Write as _};
    let url = reqwest::Url::parse(url).ok()?;
    let mut stream =
        std::net::TcpStream::connect((url.host_str()?, url.port_or_known_default()?)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {}{} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        url.path(),
        url.query().map(|q| format!("?{q}")).unwrap_or_default()
    )
    .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

// ---------------------------------------------------------------------------------------
// Clients and keys
// ---------------------------------------------------------------------------------------

/// A client's private key file (0600) and its public JWK Set.
struct ClientKey {
    file: PathBuf,
    jwks: Value,
    algorithm: SigningAlgorithm,
}

fn es384_key(dir: &Path, name: &str) -> ClientKey {
    let (pem, jwks) = smart::generate_es384_key().unwrap();
    let file = dir.join(name);
    federation::keys::write_private(&file, &pem).unwrap();
    ClientKey {
        file,
        jwks,
        algorithm: SigningAlgorithm::ES384,
    }
}

fn rs384_key(dir: &Path, name: &str) -> ClientKey {
    let pair = josekit::jws::RS384.generate_key_pair(2048).unwrap();
    let jwks = smart::public_jwks(&pair.to_jwk_key_pair(), SigningAlgorithm::RS384).unwrap();
    let file = dir.join(name);
    federation::keys::write_private(&file, &pair.to_pem_private_key()).unwrap();
    ClientKey {
        file,
        jwks,
        algorithm: SigningAlgorithm::RS384,
    }
}

/// The client as the authorization server registers it.
fn registration(client_id: &str, key: &ClientKey, scope: &str) -> Value {
    json!({
        "client_id": client_id,
        "token_endpoint_auth_method": "private_key_jwt",
        "token_endpoint_auth_signing_alg": key.algorithm.name(),
        "grant_types": ["client_credentials"],
        "response_types": [],
        "redirect_uris": [],
        "scope": scope,
        "jwks": key.jwks,
    })
}

fn settings(client_id: &str, key: &ClientKey, scopes: &str) -> SmartSettings {
    SmartSettings {
        client_id: client_id.into(),
        key_file: key.file.clone(),
        algorithm: key.algorithm,
        scopes: scopes.into(),
        token_endpoint: None,
        kid: None,
    }
}

// ---------------------------------------------------------------------------------------
// One world per test: the authorization server, the FHIR server, two patients
// ---------------------------------------------------------------------------------------

const MRN: &str = "urn:oid:1.2.36.146.595.217.0.1";

struct World {
    _dir: tempfile::TempDir,
    auth: Option<AuthServer>,
    hfs: Hfs,
    seeder: ClientKey,
}

impl World {
    /// `clients` besides the seeder (which writes the patients with `system/*.cruds`).
    async fn start(clients: &[Value], opts: &AsOptions) -> World {
        let dir = tempfile::tempdir().unwrap();
        let seeder = es384_key(dir.path(), "seeder.pem");
        let hfs_port = free_port();
        let resource = format!("http://127.0.0.1:{hfs_port}/");
        let mut all = clients.to_vec();
        all.push(registration("seeder", &seeder, "system/*.cruds"));
        let auth = AuthServer::start(dir.path(), free_port(), &resource, &all, opts);
        let hfs = Hfs::start(dir.path(), hfs_port, &auth);
        let world = World {
            _dir: dir,
            auth: Some(auth),
            hfs,
            seeder,
        };
        world.seed().await;
        world
    }

    fn auth(&self) -> &AuthServer {
        self.auth.as_ref().expect("the authorization server runs")
    }

    /// Restarts the authorization server with `clients` (the seeder stays) and `opts`.
    fn restart_auth(&mut self, clients: &[Value], opts: &AsOptions) {
        let mut all = clients.to_vec();
        all.push(registration("seeder", &self.seeder, "system/*.cruds"));
        let auth = self.auth.take().expect("the authorization server runs");
        self.auth = Some(auth.restart(&all, opts));
    }

    /// A source reading by type searches: this server holds only the search parameters
    /// those need (no compartment definition for `$everything`), and each request then
    /// needs the scope of one type.
    fn source(&self, smart: SmartSettings) -> Result<FhirServer, RecordError> {
        FhirServer::connect(
            &self.hfs.base,
            true,
            &FhirAuth {
                smart: Some(smart),
                tls: None,
            },
        )
        .map(FhirServer::without_everything)
    }

    /// Patients p1 (two observations) and p2 (one), written with the seeder's token.
    async fn seed(&self) {
        let http = federation::client::http_client();
        let base = reqwest::Url::parse(&self.hfs.base).unwrap();
        let seeder = SmartClient::new(
            &settings("seeder", &self.seeder, "system/*.cruds"),
            &base,
            http.clone(),
            true,
        )
        .unwrap();
        let token = seeder.token().await.unwrap();
        let resources = [
            json!({"resourceType": "Patient", "id": "p1", "identifier": [{"system": MRN, "value": "MRN-1"}], "gender": "female"}),
            json!({"resourceType": "Patient", "id": "p2", "identifier": [{"system": MRN, "value": "MRN-2"}], "gender": "male"}),
            json!({"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "heart rate"}, "subject": {"reference": "Patient/p1"}}),
            json!({"resourceType": "Observation", "id": "o2", "status": "final", "code": {"text": "weight"}, "subject": {"reference": "Patient/p1"}}),
            json!({"resourceType": "Observation", "id": "o3", "status": "final", "code": {"text": "weight"}, "subject": {"reference": "Patient/p2"}}),
        ];
        for r in resources {
            let url = base
                .join(&format!(
                    "{}/{}",
                    r["resourceType"].as_str().unwrap(),
                    r["id"].as_str().unwrap()
                ))
                .unwrap();
            let resp = http
                .put(url)
                .bearer_auth(token.secret())
                .header("content-type", "application/fhir+json")
                .body(r.to_string())
                .send()
                .await
                .unwrap();
            let status = resp.status();
            assert!(
                status.is_success(),
                "seeding {}: HTTP {status}: {}",
                r["id"],
                resp.text().await.unwrap_or_default()
            );
        }
        assert_eq!(self.auth().tokens("seeder"), 1);
    }
}

fn types(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Reads p1's record through `source`, checking it is p1's and complete.
async fn read_p1(source: &FhirServer) -> Result<(), RecordError> {
    let id = source.find_patient(MRN, "MRN-1").await?;
    assert_eq!(id.as_deref(), Some("p1"));
    let record = source
        .patient_resources("p1", &types(&["Patient", "Observation"]))
        .await?;
    let mut ids: Vec<&str> = record.iter().filter_map(|r| r["id"].as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["o1", "o2", "p1"]);
    Ok(())
}

/// What the requester gets for a source failure: 503 with the reason, never a 4xx.
fn requester_sees(err: RecordError) -> (u16, String) {
    let detail = err.to_string();
    let status = gateway::error::GatewayError::record_source(err)
        .into_response()
        .status()
        .as_u16();
    (status, detail)
}

fn refused(err: &RecordError) -> Option<&str> {
    match err {
        RecordError::Auth(SmartError::Refused { error, .. }) => Some(error),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn es384_and_rs384_clients_read_with_one_cached_token() {
    let dir = tempfile::tempdir().unwrap();
    let es = es384_key(dir.path(), "es.pem");
    let rs = rs384_key(dir.path(), "rs.pem");
    let world = World::start(
        &[
            registration("gw-es", &es, "system/*.rs"),
            registration("gw-rs", &rs, "system/*.rs"),
        ],
        &AsOptions::default(),
    )
    .await;

    for (client, key) in [("gw-es", &es), ("gw-rs", &rs)] {
        let source = world.source(settings(client, key, "system/*.rs")).unwrap();
        for _ in 0..3 {
            read_p1(&source).await.unwrap();
        }
        // Eight FHIR requests (three times a search and two reads...), one token.
        assert_eq!(world.auth().tokens(client), 1, "{client}");
    }

    // Concurrent exchanges of a fresh source wait for one token instead of each asking.
    let source = world.source(settings("gw-es", &es, "system/*.rs")).unwrap();
    let reads: Vec<_> = (0..6)
        .map(|_| {
            let source = source.clone();
            tokio::spawn(async move { read_p1(&source).await })
        })
        .collect();
    for read in reads {
        read.await.unwrap().unwrap();
    }
    assert_eq!(world.auth().tokens("gw-es"), 2);

    // The discovered token endpoint is the one HFS advertises; configured, it is used as is.
    let mut configured = settings("gw-rs", &rs, "system/*.rs");
    configured.token_endpoint = Some(format!("{}/token", world.auth().issuer()));
    read_p1(&world.source(configured).unwrap()).await.unwrap();
    assert_eq!(world.auth().tokens("gw-rs"), 2);

    // Without a token, the same FHIR server refuses: the tokens above were what let in.
    let plain = FhirServer::new(&world.hfs.base, true).unwrap();
    let err = plain.find_patient(MRN, "MRN-1").await.unwrap_err();
    assert!(
        matches!(err, RecordError::Status { status: 401, .. }),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assertion_signed_with_an_unregistered_key_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let registered = es384_key(dir.path(), "registered.pem");
    let other = es384_key(dir.path(), "other.pem");
    let world = World::start(
        &[registration("gw", &registered, "system/*.rs")],
        &AsOptions::default(),
    )
    .await;

    // Another key, named by its own kid: the server holds no such key for the client.
    let source = world.source(settings("gw", &other, "system/*.rs")).unwrap();
    let err = source.find_patient(MRN, "MRN-1").await.unwrap_err();
    assert_eq!(refused(&err), Some("invalid_client"), "{err:?}");
    let (status, detail) = requester_sees(err);
    assert_eq!(status, 503, "{detail}");
    assert!(
        detail.contains("invalid_client") && detail.contains("not signed with the key registered"),
        "{detail}"
    );
    // Another key claiming the registered key's kid: the signature does not verify.
    let mut forged = settings("gw", &other, "system/*.rs");
    forged.kid = Some(
        registered.jwks["keys"][0]["kid"]
            .as_str()
            .unwrap()
            .to_string(),
    );
    let source = world.source(forged).unwrap();
    let err = source
        .patient_resources("p1", &types(&["Patient"]))
        .await
        .unwrap_err();
    assert_eq!(refused(&err), Some("invalid_client"), "{err:?}");
    assert_eq!(requester_sees(err).0, 503);
    // The authorization server refused both for the key, and issued nothing.
    let details: Vec<String> = world
        .auth()
        .events("error", "gw")
        .iter()
        .map(|e| e["detail"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(details.len(), 2, "{details:?}");
    assert!(details[0].contains("no applicable key"), "{details:?}");
    assert!(details[1].contains("signature"), "{details:?}");
    assert_eq!(world.auth().tokens("gw"), 0);

    // The same client with the registered key is let in: the key made the difference.
    let source = world
        .source(settings("gw", &registered, "system/*.rs"))
        .unwrap();
    read_p1(&source).await.unwrap();

    // A PEM key of the other algorithm than configured does not even start.
    let mut wrong_alg = settings("gw", &registered, "system/*.rs");
    wrong_alg.algorithm = SigningAlgorithm::RS384;
    let err = world.source(wrong_alg).unwrap_err().to_string();
    assert!(err.contains("RS384") && err.contains("key_file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_are_replaced_and_a_refused_one_is_retried_once() {
    let dir = tempfile::tempdir().unwrap();
    let key = es384_key(dir.path(), "gw.pem");
    let clients = [registration("gw", &key, "system/*.rs")];
    let short = AsOptions {
        ttl: 5,
        ..AsOptions::default()
    };
    let mut world = World::start(&clients, &short).await;

    // A token is kept while it lasts, and replaced, unasked, once it has run out.
    let source = world.source(settings("gw", &key, "system/*.rs")).unwrap();
    read_p1(&source).await.unwrap();
    read_p1(&source).await.unwrap();
    assert_eq!(world.auth().tokens("gw"), 1);
    // Renewed at four fifths of the lifetime: after 4 s.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    read_p1(&source).await.unwrap();
    assert_eq!(world.auth().tokens("gw"), 2);

    // The FHIR server refuses a token the gateway still thinks valid (its clock is an hour
    // ahead of the authorization server's): 401, a fresh token, the read goes through.
    world.restart_auth(
        &clients,
        &AsOptions {
            skewed: 1,
            ..AsOptions::default()
        },
    );
    let source = world.source(settings("gw", &key, "system/*.rs")).unwrap();
    read_p1(&source).await.unwrap();
    assert_eq!(world.auth().tokens("gw"), 2);
    read_p1(&source).await.unwrap();
    assert_eq!(world.auth().tokens("gw"), 2);

    // Every token refused: one retry, then a failure that says so.
    world.restart_auth(
        &clients,
        &AsOptions {
            skewed: 100,
            ..AsOptions::default()
        },
    );
    let source = world.source(settings("gw", &key, "system/*.rs")).unwrap();
    let err = source.find_patient(MRN, "MRN-1").await.unwrap_err();
    assert!(
        matches!(err, RecordError::Auth(SmartError::TokenRejected { .. })),
        "{err:?}"
    );
    assert_eq!(world.auth().tokens("gw"), 2);
    let (status, detail) = requester_sees(err);
    assert_eq!(status, 503);
    assert!(
        detail.contains("HTTP 401") && detail.contains("fresh access token"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let key = es384_key(dir.path(), "gw.pem");
    let short = AsOptions {
        ttl: 5,
        ..AsOptions::default()
    };
    let mut world = World::start(&[registration("gw", &key, "system/*.rs")], &short).await;
    let source = world.source(settings("gw", &key, "system/*.rs")).unwrap();
    read_p1(&source).await.unwrap();
    assert_eq!(world.auth().tokens("gw"), 1);

    // The authorization server no longer knows the client.
    world.restart_auth(&[], &short);
    // Once the token it had runs out, the gateway asks for another and is refused.
    // Renewed at four fifths of the lifetime: after 4 s.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let err = source.find_patient(MRN, "MRN-1").await.unwrap_err();
    assert_eq!(refused(&err), Some("invalid_client"), "{err:?}");
    let (status, detail) = requester_sees(err);
    assert_eq!(status, 503);
    assert!(detail.contains("unknown or revoked"), "{detail}");
    assert_eq!(world.auth().tokens("gw"), 0);

    // A gateway started afterwards fails the same way at its first read.
    let fresh = world.source(settings("gw", &key, "system/*.rs")).unwrap();
    let err = fresh
        .patient_resources("p1", &types(&["Patient"]))
        .await
        .unwrap_err();
    assert_eq!(refused(&err), Some("invalid_client"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_scope_fails_closed_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = es384_key(dir.path(), "gw.pem");
    let world = World::start(
        &[
            registration("gw-obs", &key, "system/Observation.rs"),
            registration("gw-cond", &key, "system/Patient.rs system/Condition.rs"),
        ],
        &AsOptions {
            // The FHIR server is not registered for Condition: never granted for it.
            resource_scopes: "system/*.cruds system/Patient.rs system/Observation.rs",
            ..AsOptions::default()
        },
    )
    .await;

    // Asking for more than the client is allowed: the authorization server refuses.
    let source = world
        .source(settings(
            "gw-obs",
            &key,
            "system/Patient.rs system/Observation.rs",
        ))
        .unwrap();
    let err = source.find_patient(MRN, "MRN-1").await.unwrap_err();
    assert_eq!(refused(&err), Some("invalid_scope"), "{err:?}");
    let (status, detail) = requester_sees(err);
    assert_eq!(status, 503);
    assert!(detail.contains("records.auth.scopes"), "{detail}");
    assert_eq!(world.auth().tokens("gw-obs"), 0);

    // Granted less than asked: refused before any FHIR request, naming what is missing.
    let source = world
        .source(settings(
            "gw-cond",
            &key,
            "system/Patient.rs system/Condition.rs",
        ))
        .unwrap();
    let err = source.find_patient(MRN, "MRN-1").await.unwrap_err();
    match &err {
        RecordError::Auth(SmartError::MissingScope { missing, granted }) => {
            assert_eq!(missing, "system/Condition.rs");
            assert_eq!(granted, "system/Patient.rs");
        }
        other => panic!("{other:?}"),
    }
    let (status, detail) = requester_sees(err);
    assert_eq!(status, 503);
    assert!(detail.contains("lacks `system/Condition.rs`"), "{detail}");

    // A token without a Patient scope: the FHIR server answers 403, and the error says
    // which scopes the token had.
    let source = world
        .source(settings("gw-obs", &key, "system/Observation.rs"))
        .unwrap();
    let err = source.find_patient(MRN, "MRN-1").await.unwrap_err();
    assert!(
        matches!(err, RecordError::Auth(SmartError::Forbidden { .. })),
        "{err:?}"
    );
    let (status, detail) = requester_sees(err);
    assert_eq!(status, 503);
    assert!(
        detail.contains("HTTP 403") && detail.contains("`system/Observation.rs`"),
        "{detail}"
    );
    // What it was granted it can do.
    let record = source
        .patient_resources("p1", &types(&["Observation"]))
        .await
        .unwrap();
    assert_eq!(record.len(), 2);
}

#[tokio::test]
async fn mutual_tls_files_are_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let key = es384_key(dir.path(), "gw.pem");
    // A self-signed client certificate, as a hospital's PKI would issue one.
    let pkey =
        openssl::pkey::PKey::private_key_from_pem(&std::fs::read(&key.file).unwrap()).unwrap();
    let mut name = openssl::x509::X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "gateway.hospital.example")
        .unwrap();
    let name = name.build();
    let mut cert = openssl::x509::X509Builder::new().unwrap();
    cert.set_version(2).unwrap();
    cert.set_subject_name(&name).unwrap();
    cert.set_issuer_name(&name).unwrap();
    cert.set_pubkey(&pkey).unwrap();
    cert.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    cert.set_not_after(&openssl::asn1::Asn1Time::days_from_now(1).unwrap())
        .unwrap();
    cert.sign(&pkey, openssl::hash::MessageDigest::sha384())
        .unwrap();
    let cert_file = dir.path().join("client.crt");
    std::fs::write(&cert_file, cert.build().to_pem().unwrap()).unwrap();

    let tls = |cert_file: &Path, key_file: &Path| FhirAuth {
        smart: None,
        tls: Some(ClientTls {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
        }),
    };
    let base = "https://fhir.hospital.example/r4";
    FhirServer::connect(base, false, &tls(&cert_file, &key.file)).unwrap();

    // The client key is a secret like the others: 0600 or no start.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&key.file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = FhirServer::connect(base, false, &tls(&cert_file, &key.file))
        .unwrap_err()
        .to_string();
    assert!(err.contains("chmod 600"), "{err}");
    std::fs::set_permissions(&key.file, std::fs::Permissions::from_mode(0o600)).unwrap();

    // Not a certificate: refused, naming the setting, quoting nothing.
    let junk = dir.path().join("junk.crt");
    std::fs::write(&junk, "hello").unwrap();
    let err = FhirServer::connect(base, false, &tls(&junk, &key.file))
        .unwrap_err()
        .to_string();
    assert!(err.contains("records.client_cert"), "{err}");
    assert!(!err.contains("PRIVATE"), "{err}");
    let err = FhirServer::connect(base, false, &tls(&dir.path().join("none.crt"), &key.file))
        .unwrap_err()
        .to_string();
    assert!(err.contains("records.client_cert"), "{err}");
}
