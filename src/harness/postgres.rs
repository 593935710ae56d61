//! A real PostgreSQL server in a folder, for the end-to-end tests and the replicated demo.
//!
//! Services can keep their state in PostgreSQL (`[storage] backend = "postgres"`), and
//! gateway replicas share one custodian's state only there. What is tested against must
//! be the real server, with its authentication, TLS and durability, not a stand-in; and
//! the machines the tests and the demo run on have no container engine. So this starts
//! the machine's own PostgreSQL (Debian package `postgresql`) as a private cluster:
//! `initdb` into a folder, a superuser `fedgate` with a random password (SCRAM over TCP,
//! trust only on the cluster's own unix socket), listening on 127.0.0.1 at a free port,
//! with fsync left on.
//!
//! `initdb`, `pg_ctl` and `postgres` refuse to run as root, and CI runs as root: then the
//! cluster's folder belongs to `nobody` and the programs run as that account (`setpriv`,
//! util-linux), while the password file and the CA the services read stay the caller's.

use anyhow::{anyhow, Context as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{free_port, write, write_secret};

/// The superuser the cluster is created with; services connect as this role.
pub const USER: &str = "fedgate";

/// How long `pg_ctl` waits for the server to start or stop, in seconds.
const WAIT_SECS: &str = "60";

/// The longest unix socket path the kernel takes (`sun_path` is 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A PostgreSQL server of its own, stopped (immediately) when dropped. Drop it after the
/// services that use it, before the folder it lives in.
pub struct Postgres {
    bin: PathBuf,
    /// The caller's folder: the password file and the CA live here.
    dir: PathBuf,
    /// `dir/pg`: everything the server itself owns (data, socket, log, TLS key).
    cluster: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    /// The socket folder was made under the temporary folder (the cluster's path was too
    /// long for a socket) and is removed on drop.
    own_socket_dir: bool,
    log: PathBuf,
    port: u16,
    password: String,
    password_file: PathBuf,
    ca_file: Option<PathBuf>,
    /// The account the server runs as when this process is root.
    runner: Option<Account>,
    running: bool,
}

/// An unprivileged account's ids.
#[derive(Clone, Copy)]
struct Account {
    uid: u32,
    gid: u32,
}

/// How `psql` reaches the cluster as its superuser: over the unix socket, where the
/// cluster trusts local connections. Kept apart from [`Postgres`] so that a
/// [`super::FederationBuilder`] can create its database when it starts.
#[derive(Clone)]
pub(crate) struct Admin {
    psql: PathBuf,
    socket_dir: PathBuf,
    port: u16,
}

/// A service's `[storage]` table for a database of a [`Postgres`].
#[derive(Clone, Debug)]
pub struct Storage {
    /// `postgres://fedgate@127.0.0.1:PORT/DATABASE`, never with the password in it
    /// (`?sslmode=require` when the server speaks TLS).
    pub url: String,
    /// The password, mode 0600.
    pub password_file: PathBuf,
    /// The PEM roots to trust for TLS to the database.
    pub ca_file: Option<PathBuf>,
    /// The PostgreSQL schema the service's tables live in.
    pub schema: String,
}

impl Storage {
    /// The same storage in another schema.
    pub fn with_schema(&self, schema: &str) -> Storage {
        Storage {
            schema: schema.to_string(),
            ..self.clone()
        }
    }

    /// The `[storage]` table (paths absolute, so the config's folder does not matter).
    pub fn toml(&self) -> String {
        let mut toml = format!(
            "[storage]\nbackend = \"postgres\"\nurl = {}\npassword_file = {}\nschema = {}\n",
            toml_string(&self.url),
            toml_string(&self.password_file.display().to_string()),
            toml_string(&self.schema)
        );
        if let Some(ca) = &self.ca_file {
            toml.push_str(&format!(
                "ca_file = {}\n",
                toml_string(&ca.display().to_string())
            ));
        }
        toml
    }
}

/// A TOML basic string (JSON's escapes are TOML's).
fn toml_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

impl Postgres {
    /// Creates a cluster in `dir/pg` (or opens the one a previous start left there) and
    /// starts it on a free loopback port. The password goes to `dir/db-password` (0600).
    pub fn start(dir: &Path) -> anyhow::Result<Postgres> {
        Postgres::open(dir, false)
    }

    /// [`Postgres::start`] with TLS: a CA made for this cluster signs the server's
    /// certificate (for 127.0.0.1 and localhost); its PEM is `dir/db-ca.pem`
    /// ([`Postgres::ca_file`]). TCP connections without TLS are refused.
    pub fn start_with_tls(dir: &Path) -> anyhow::Result<Postgres> {
        Postgres::open(dir, true)
    }

    fn open(dir: &Path, tls: bool) -> anyhow::Result<Postgres> {
        let bin = find_bindir()?;
        super::mkdir(dir)?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("{}", dir.display()))?;
        let runner = if effective_uid()? == 0 {
            Some(unprivileged_account()?)
        } else {
            None
        };
        let cluster = dir.join("pg");
        let data = cluster.join("data");
        let password_file = dir.join("db-password");
        let fresh = !data.join("PG_VERSION").exists();
        super::mkdir(&cluster)?;
        if let Some(account) = runner {
            searchable_for_others(&dir)?;
            chown(&cluster, account)?;
        }
        if fresh && !password_file.exists() {
            write_secret(&password_file, &federation::client::random_token())?;
        }
        let password = std::fs::read_to_string(&password_file)
            .with_context(|| format!("the database password {}", password_file.display()))?
            .trim()
            .to_string();
        if password.is_empty() {
            return Err(anyhow!("{} is empty", password_file.display()));
        }
        let ca_path = dir.join("db-ca.pem");
        // A cluster made with TLS refuses TCP without it (pg_hba.conf): it keeps TLS.
        let tls = tls || (!fresh && ca_path.exists());
        let socket_dir = cluster.join("run");
        let (socket_dir, own_socket_dir) =
            if socket_dir.join(".s.PGSQL.65535").as_os_str().len() <= MAX_SOCKET_PATH {
                (socket_dir, false)
            } else {
                // The caller's folder is too deep for a socket path.
                let short = std::env::temp_dir()
                    .join(format!("fedgate-pg-{}", uuid::Uuid::new_v4().simple()));
                (short, true)
            };
        super::mkdir(&socket_dir)?;
        let mut pg = Postgres {
            bin,
            log: cluster.join("postgres.log"),
            dir,
            cluster,
            data,
            socket_dir,
            own_socket_dir,
            port: 0,
            password,
            password_file,
            ca_file: tls.then_some(ca_path),
            runner,
            running: false,
        };
        if let Some(account) = runner {
            chown(&pg.socket_dir, account)?;
        }
        if fresh {
            pg.initdb()?;
            if tls {
                pg.make_certificates()?;
                pg.require_tls_over_tcp()?;
            }
        }
        // `free_port` only finds a port that was free a moment ago: another process may
        // take it before the server binds it.
        let mut attempts = 0;
        loop {
            attempts += 1;
            pg.port = free_port()?;
            pg.write_settings()?;
            let log_before = log_len(&pg.log);
            let Err(e) = pg.pg_ctl_start() else {
                return Ok(pg);
            };
            let port_taken = log_since(&pg.log, log_before).contains("could not bind");
            if !port_taken || attempts == 3 {
                return Err(e);
            }
        }
    }

    /// `postgres://fedgate@127.0.0.1:PORT/DATABASE` (the password is in
    /// [`Postgres::password_file`], never in a URL).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{database}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The file holding the password (mode 0600, readable by this process's user).
    pub fn password_file(&self) -> &Path {
        &self.password_file
    }

    /// The PEM of the CA that signed the server's certificate, when it speaks TLS.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// The folder holding the password file, the CA and the cluster (`pg/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A program of the PostgreSQL installation the server runs from (`psql`, ...).
    pub fn program(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// The `[storage]` a service keeps its tables with in `schema` of `database`.
    pub fn storage(&self, database: &str, schema: &str) -> Storage {
        let mut url = self.url(database);
        if self.ca_file.is_some() {
            url.push_str("?sslmode=require");
        }
        Storage {
            url,
            password_file: self.password_file.clone(),
            ca_file: self.ca_file.clone(),
            schema: schema.to_string(),
        }
    }

    pub(crate) fn admin(&self) -> Admin {
        Admin {
            psql: self.program("psql"),
            socket_dir: self.socket_dir.clone(),
            port: self.port,
        }
    }

    /// `CREATE DATABASE name` (an error if it exists).
    pub fn create_database(&self, name: &str) -> anyhow::Result<()> {
        self.admin().create_database(name)
    }

    /// Runs `sql` in `database` as the superuser; the rows, one a line, columns split by
    /// `|` (`psql -At`).
    pub fn psql(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        self.admin().psql(database, sql)
    }

    /// Stops the server, letting it shut down cleanly (`pg_ctl stop -m fast`): open
    /// connections are ended, committed data stays.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if !self.running {
            return Ok(());
        }
        self.pg_ctl_stop("fast")?;
        self.running = false;
        Ok(())
    }

    /// Starts the stopped server again: the same folder, port and password.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.running {
            return Err(anyhow!("the database server is running already"));
        }
        self.pg_ctl_start()
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 30)
    }

    /// A program of the installation, run as the account the server runs as, in the
    /// cluster's folder (that account may not be able to read the caller's current one).
    fn command(&self, program: &str) -> Command {
        let path = self.program(program);
        let mut command = match self.runner {
            None => Command::new(path),
            Some(account) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={}", account.uid))
                    .arg(format!("--regid={}", account.gid))
                    .args(["--clear-groups", "--"])
                    .arg(path);
                c
            }
        };
        command.current_dir(&self.cluster);
        command
    }

    fn initdb(&self) -> anyhow::Result<()> {
        // The account the server runs as cannot read the caller's password file (0600):
        // initdb reads a copy of its own, removed as soon as it is done.
        let pwfile = match self.runner {
            Some(account) => {
                let copy = self.cluster.join("initdb-password");
                let _ = std::fs::remove_file(&copy);
                write_secret(&copy, &self.password)?;
                chown(&copy, account)?;
                copy
            }
            None => self.password_file.clone(),
        };
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(&self.data)
            .args(["-U", USER, "-E", "UTF8", "--no-locale", "--no-instructions"])
            .args(["--auth-host=scram-sha-256", "--auth-local=trust"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output();
        if self.runner.is_some() {
            let _ = std::fs::remove_file(&pwfile);
        }
        checked(out, "initdb", self.runner.is_some())?;
        Ok(())
    }

    /// The settings of this start, in a file of ours that `postgresql.conf` includes last
    /// (so they win over initdb's).
    fn write_settings(&self) -> anyhow::Result<()> {
        let conf = self.data.join("postgresql.conf");
        let main = std::fs::read_to_string(&conf).with_context(|| conf.display().to_string())?;
        const INCLUDE: &str = "include_if_exists = 'fedgate.conf'";
        if !main.contains(INCLUDE) {
            write(
                &conf,
                &format!("{main}\n# fedgate's test harness\n{INCLUDE}\n"),
            )?;
        }
        let mut settings = format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = {}\n",
            self.port,
            conf_string(&self.socket_dir)
        );
        if self.ca_file.is_some() {
            settings.push_str(&format!(
                "ssl = on\nssl_cert_file = {}\nssl_key_file = {}\n",
                conf_string(&self.cluster.join("server.crt")),
                conf_string(&self.cluster.join("server.key"))
            ));
        }
        let path = self.data.join("fedgate.conf");
        write(&path, &settings)?;
        if let Some(account) = self.runner {
            chown(&path, account)?;
        }
        Ok(())
    }

    /// A CA of this cluster's own and the server certificate it signs. The CA's key is
    /// not kept: nothing else is ever signed with it.
    fn make_certificates(&self) -> anyhow::Result<()> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.distinguished_name
            .push(DnType::CommonName, "fedgate test database CA");
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);
        let mut server = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])?;
        server
            .distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate()?;
        let server_cert = server.signed_by(&server_key, &issuer)?;

        let key_path = self.cluster.join("server.key");
        let crt_path = self.cluster.join("server.crt");
        let _ = std::fs::remove_file(&key_path);
        // PostgreSQL refuses a key that group or others can read.
        write_secret(&key_path, &server_key.serialize_pem())?;
        write(&crt_path, &server_cert.pem())?;
        if let Some(account) = self.runner {
            chown(&key_path, account)?;
            chown(&crt_path, account)?;
        }
        if let Some(ca_file) = &self.ca_file {
            write(ca_file, &ca_cert.pem())?;
        }
        Ok(())
    }

    /// TCP connections must use TLS (`hostssl`); the unix socket stays as it is.
    fn require_tls_over_tcp(&self) -> anyhow::Result<()> {
        let path = self.data.join("pg_hba.conf");
        let hba = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
        let rewritten: Vec<String> = hba
            .lines()
            .map(|line| match line.strip_prefix("host ") {
                Some(rest) => format!("hostssl {rest}"),
                None => line.to_string(),
            })
            .collect();
        write(&path, &(rewritten.join("\n") + "\n"))?;
        if let Some(account) = self.runner {
            chown(&path, account)?;
        }
        Ok(())
    }

    fn pg_ctl_start(&mut self) -> anyhow::Result<()> {
        let log_before = log_len(&self.log);
        let out = self
            .command("pg_ctl")
            .args(["start", "-w", "-t", WAIT_SECS, "-D"])
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .output();
        match checked(out, "pg_ctl start", self.runner.is_some()) {
            Ok(_) => {
                self.running = true;
                self.guard();
                Ok(())
            }
            Err(e) => {
                // pg_ctl may give up waiting while the server still comes up.
                let _ = self.pg_ctl_stop("immediate");
                Err(anyhow!(
                    "the database server did not start on 127.0.0.1:{}: {e}\n{}:\n{}",
                    self.port,
                    self.log.display(),
                    tail(&log_since(&self.log, log_before), 30)
                ))
            }
        }
    }

    /// Starts a watcher that stops the server once this process is gone, however it ends:
    /// a server kept in a `static` is never dropped, and a test killed by a signal or a
    /// timeout drops nothing.
    fn guard(&self) {
        self.when_gone("");
    }

    /// Once this process is gone, stops the server and removes `dir` (the folder given to
    /// [`Postgres::start`]) with everything in it: for a server that lives as long as a
    /// test binary.
    pub fn discard_at_exit(&self) {
        self.when_gone(&format!("; rm -rf '{}'", self.dir.display()));
    }

    fn when_gone(&self, then: &str) {
        let mut stop = format!(
            "'{}' stop -m immediate -D '{}'",
            self.program("pg_ctl").display(),
            self.data.display()
        );
        if let Some(account) = self.runner {
            stop = format!(
                "setpriv --reuid={} --regid={} --clear-groups -- {stop}",
                account.uid, account.gid
            );
        }
        let script = format!(
            "while kill -0 {} 2>/dev/null; do sleep 1; done; cd / && {stop}{then}",
            std::process::id()
        );
        let _ = Command::new("sh")
            .args(["-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }

    fn pg_ctl_stop(&self, mode: &str) -> anyhow::Result<()> {
        let out = self
            .command("pg_ctl")
            .args(["stop", "-w", "-t", WAIT_SECS, "-m", mode, "-D"])
            .arg(&self.data)
            .output();
        checked(out, "pg_ctl stop", self.runner.is_some())
            .map(|_| ())
            .map_err(|e| anyhow!("{e}\n{}", self.log_tail()))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            // Immediate: nothing the tests wrote needs a clean shutdown, and the next
            // start recovers from the WAL like after a crash.
            let _ = self.pg_ctl_stop("immediate");
            self.running = false;
        }
        if self.own_socket_dir {
            let _ = std::fs::remove_dir_all(&self.socket_dir);
        }
    }
}

impl Admin {
    fn command(&self, database: &str) -> Command {
        let mut command = Command::new(&self.psql);
        // The connection is this one, whatever the environment says.
        for var in [
            "PGHOST",
            "PGHOSTADDR",
            "PGPORT",
            "PGUSER",
            "PGDATABASE",
            "PGPASSWORD",
            "PGPASSFILE",
            "PGSERVICE",
            "PGSERVICEFILE",
            "PGOPTIONS",
            "PGSSLMODE",
        ] {
            command.env_remove(var);
        }
        command
            .arg("-h")
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-U", USER, "-d", database])
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .env("PGCONNECT_TIMEOUT", "10");
        command
    }

    pub(crate) fn psql(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        let out = self.command(database).arg("-c").arg(sql).output();
        checked(out, "psql", false).map_err(|e| anyhow!("{e} (in database {database}: {sql})"))
    }

    pub(crate) fn create_database(&self, name: &str) -> anyhow::Result<()> {
        self.psql("postgres", &format!("CREATE DATABASE {}", identifier(name)))
            .map(|_| ())
    }

    pub(crate) fn database_exists(&self, name: &str) -> anyhow::Result<bool> {
        let found = self.psql(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_database WHERE datname = {}",
                literal(name)
            ),
        )?;
        Ok(found.trim() != "0")
    }
}

/// A quoted SQL identifier.
fn identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A quoted SQL string literal.
fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A quoted string of `postgresql.conf`.
fn conf_string(path: &Path) -> String {
    literal(&path.display().to_string())
}

/// The output of a program that must have succeeded; a failure carries its output.
fn checked(out: std::io::Result<Output>, what: &str, via_setpriv: bool) -> anyhow::Result<String> {
    let out = out.map_err(|e| {
        if via_setpriv {
            anyhow!("cannot run {what} through setpriv (util-linux): {e}")
        } else {
            anyhow!("cannot run {what}: {e}")
        }
    })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    Err(anyhow!(
        "{what} failed ({}): {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    ))
}

/// Where the server programs are: `pg_config --bindir`, else the newest Debian
/// installation, else `PATH`.
fn find_bindir() -> anyhow::Result<PathBuf> {
    let complete = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres", "psql"]
            .iter()
            .all(|p| dir.join(p).is_file())
    };
    // Debian's pg_config without a server package names /usr/bin, which has no initdb.
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && complete(&dir) {
            return Ok(dir);
        }
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(Vec<u32>, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let version = name
                    .split('.')
                    .map(|n| n.parse().ok())
                    .collect::<Option<Vec<u32>>>()?;
                Some((version, e.path().join("bin")))
            })
            .filter(|(_, dir)| complete(dir))
            .collect();
        versions.sort();
        if let Some((_, dir)) = versions.pop() {
            return Ok(dir);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(dir) = std::env::split_paths(&path).find(|d| complete(d)) {
            return Ok(dir);
        }
    }
    Err(anyhow!(
        "PostgreSQL's server programs (initdb, pg_ctl, postgres, psql) were not found \
         (pg_config --bindir, /usr/lib/postgresql/*/bin, PATH): install the Debian package \
         `postgresql` (apt-get install -y postgresql)"
    ))
}

/// This process's effective user id (the second `Uid:` field of /proc/self/status).
fn effective_uid() -> anyhow::Result<u32> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .ok_or_else(|| anyhow!("no effective uid in /proc/self/status"))
}

/// The account `nobody`, which a server started by root runs as.
fn unprivileged_account() -> anyhow::Result<Account> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"nobody"))
        .and_then(|f| {
            Some(Account {
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
            })
        })
        .filter(|a| a.uid != 0)
        .ok_or_else(|| {
            anyhow!(
                "PostgreSQL refuses to run as root, and there is no account `nobody` in \
                 /etc/passwd to run it as"
            )
        })
}

fn chown(path: &Path, account: Account) -> anyhow::Result<()> {
    std::os::unix::fs::chown(path, Some(account.uid), Some(account.gid))
        .with_context(|| format!("chown {}", path.display()))
}

/// Lets other accounts pass through `dir` and the folders above it (search, `o+x`; not
/// read): the server's account must reach its folder inside. Only what lacks it changes.
fn searchable_for_others(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    for folder in dir.ancestors() {
        let meta = std::fs::metadata(folder).with_context(|| folder.display().to_string())?;
        let mode = meta.permissions().mode();
        if mode & 0o001 == 0 {
            std::fs::set_permissions(folder, std::fs::Permissions::from_mode(mode | 0o001))
                .with_context(|| format!("chmod o+x {}", folder.display()))?;
        }
    }
    Ok(())
}

fn log_len(log: &Path) -> u64 {
    std::fs::metadata(log).map(|m| m.len()).unwrap_or(0)
}

/// What the log gained since it was `from` bytes long.
fn log_since(log: &Path, from: u64) -> String {
    let bytes = std::fs::read(log).unwrap_or_default();
    let from = usize::try_from(from).unwrap_or(0).min(bytes.len());
    String::from_utf8_lossy(&bytes[from..]).into_owned()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
