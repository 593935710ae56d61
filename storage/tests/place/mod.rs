//! Where a test's database is: an embedded file, or a fresh schema on the test PostgreSQL
//! server. Tests that state the database's promises run on both (see `on_both!`).

#![allow(dead_code)]

use std::path::PathBuf;

use storage::{Db, PgOptions, Schema, StoreError};

pub enum Place {
    Embedded(tempfile::TempDir, PathBuf),
    Postgres(PgOptions),
}

impl Place {
    pub fn embedded() -> Place {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("x.redb");
        Place::Embedded(dir, path)
    }

    /// A schema of its own on the test server, so that tests do not see each other.
    pub fn postgres() -> Place {
        Place::Postgres(pg_options(&format!("t_{}", uuid())))
    }

    pub fn open(&self, schema: Schema) -> Result<Db, StoreError> {
        match self {
            Place::Embedded(_, path) => Db::open(path, schema),
            Place::Postgres(options) => Db::open_postgres(options, schema),
        }
    }

    pub fn options(&self) -> &PgOptions {
        match self {
            Place::Postgres(o) => o,
            Place::Embedded(..) => panic!("not a PostgreSQL place"),
        }
    }
}

fn uuid() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Options for `schema` on the test server.
pub fn pg_options(schema: &str) -> PgOptions {
    let server = server();
    PgOptions {
        url: server.0.clone(),
        password: Some(server.1.clone()),
        schema: schema.into(),
        ca_pem: None,
        readers: 4,
        application: "storage-tests".into(),
    }
}

/// The test server's URL and password: one real PostgreSQL server per test binary,
/// started on first use and stopped (its folder removed) when the binary exits.
pub fn server() -> &'static (String, String) {
    static SERVER: std::sync::OnceLock<(String, String, fedgate::harness::Postgres)> =
        std::sync::OnceLock::new();
    let (url, password, _) = SERVER.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("fedgate-storage-pg")
            .tempdir()
            .unwrap()
            .keep();
        let pg = fedgate::harness::Postgres::start(&dir)
            .unwrap_or_else(|e| panic!("the PostgreSQL tests need a server: {e:#}"));
        // A static is never dropped: the watcher stops the server when this process exits.
        pg.discard_at_exit();
        (pg.url("postgres"), pg.password().to_string(), pg)
    });
    static SHOWN: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    SHOWN.get_or_init(|| (url.clone(), password.clone()))
}

/// Spends 70 of a budget of 1000 kept in the tree "budget", if that much is left: a
/// check-and-set in one write. Whether it was spent.
pub async fn spend_70_of_1000(db: Db) -> bool {
    let t = db.tree("budget");
    db.write(move |tx| {
        let spent = match tx.get(&t, b"s")? {
            None => 0,
            Some(b) => {
                u64::from_be_bytes(b.try_into().map_err(|_| StoreError::unreadable("budget"))?)
            }
        };
        if spent + 70 > 1000 {
            return Ok(false);
        }
        tx.insert(&t, b"s", &(spent + 70).to_be_bytes())?;
        Ok::<_, StoreError>(true)
    })
    .await
    .unwrap()
}

/// Runs the async test `$name(place)` once on an embedded file and once on PostgreSQL.
#[macro_export]
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn embedded() {
                super::$name(super::place::Place::embedded()).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                super::$name(super::place::Place::postgres()).await
            }
        }
    )*};
}
