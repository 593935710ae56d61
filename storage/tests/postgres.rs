//! What only the PostgreSQL backend promises: several processes (here, several handles,
//! each with its own connections) share one schema and their writes run one after another;
//! versioned migrations; a newer schema refused; bad settings refused in one line.

use storage::{Db, PgOptions, Schema, StoreError};

mod place;
use place::{pg_options, Place};

const SCHEMA: Schema = Schema {
    name: "test",
    version: 2,
};

/// Runs `sql` on the test server (on a thread of its own: the client must not run on a
/// runtime's thread).
fn sql(options: &PgOptions, text: &str) {
    let (url, password, text) = (
        options.url.clone(),
        options.password.clone(),
        text.to_string(),
    );
    std::thread::spawn(move || {
        let mut config: postgres::Config = url.parse().unwrap();
        if let Some(p) = password {
            config.password(p);
        }
        let mut client = config.connect(postgres::NoTls).unwrap();
        client.batch_execute(&text).unwrap();
    })
    .join()
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_spend_a_budget_once_between_them() {
    let place = Place::postgres();
    let a = place.open(SCHEMA).unwrap();
    let b = place.open(SCHEMA).unwrap();
    let mut tasks = Vec::new();
    for i in 0..60 {
        let db = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(place::spend_70_of_1000(db)));
    }
    let mut granted = 0;
    for task in tasks {
        granted += u32::from(task.await.unwrap());
    }
    assert_eq!(granted, 14, "1000 / 70, whichever replica answered");
    // What one replica wrote, the other reads at once.
    assert_eq!(
        a.tree("budget").get(b"s").unwrap(),
        b.tree("budget").get(b"s").unwrap()
    );
    let t = b.tree("single-use");
    t.insert(b"nonce", b"").await.unwrap();
    let consume = |db: Db| async move {
        let t = db.tree("single-use");
        db.write(move |tx| Ok::<_, StoreError>(tx.remove(&t, b"nonce")?.is_some()))
            .await
            .unwrap()
    };
    let (x, y) = tokio::join!(consume(a.clone()), consume(b.clone()));
    assert!(x ^ y, "exactly one replica consumed the nonce: {x} {y}");
}

#[test]
fn migrations_are_versioned_applied_once_and_a_newer_schema_is_refused() {
    let options = pg_options("t_migrations");
    sql(&options, "DROP SCHEMA IF EXISTS t_migrations CASCADE");
    let status = storage::migration_status(&options).unwrap();
    assert!(status.applied.is_empty());
    assert_eq!(status.pending.first().map(|p| p.0), Some(1));
    assert_eq!(storage::migrate(&options).unwrap(), vec![1, 2]);
    assert!(
        storage::migrate(&options).unwrap().is_empty(),
        "applied once"
    );
    let status = storage::migration_status(&options).unwrap();
    assert_eq!(status.applied.len(), 2);
    assert!(status.pending.is_empty());
    drop(Db::open_postgres(&options, SCHEMA).unwrap());

    // A newer fedgate migrated the schema further: this one refuses to touch it.
    sql(
        &options,
        "INSERT INTO t_migrations.fedgate_migrations (version, description) VALUES (99, 'later')",
    );
    let e = Db::open_postgres(&options, SCHEMA).err().unwrap();
    assert!(
        matches!(
            e,
            StoreError::Newer {
                found: 99,
                supported: 2,
                ..
            }
        ),
        "{e}"
    );
    let text = e.to_string();
    assert!(
        text.contains("t_migrations") && text.contains("newer fedgate"),
        "{text}"
    );
    assert!(!text.contains('\n'));
    assert!(storage::migrate(&options).is_err());
}

#[test]
fn a_layout_written_by_a_newer_service_is_refused() {
    let place = Place::postgres();
    let newer = Schema {
        name: "test",
        version: 3,
    };
    drop(place.open(newer).unwrap());
    let e = place.open(SCHEMA).err().unwrap();
    assert!(
        matches!(
            e,
            StoreError::Newer {
                found: 3,
                supported: 2,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn bad_settings_are_one_line_errors_that_name_the_database() {
    let good = pg_options("t_bad");
    let with = |f: &dyn Fn(&mut PgOptions)| {
        let mut o = good.clone();
        f(&mut o);
        Db::open_postgres(&o, SCHEMA).err().unwrap()
    };

    let e = with(&|o| o.password = Some("not-the-password".into()));
    assert!(matches!(e, StoreError::Unreachable { .. }), "{e}");
    assert!(
        e.to_string().contains("password authentication failed"),
        "{e}"
    );
    assert!(!e.to_string().contains("not-the-password"), "{e}");

    let e = with(&|o| o.url = "http://localhost/x".into());
    assert!(matches!(e, StoreError::Config { .. }), "{e}");

    let e = with(&|o| o.url = o.url.replace("fedgate@", "fedgate:secret@"));
    assert!(e.to_string().contains("password file"), "{e}");
    assert!(!e.to_string().contains("secret"), "{e}");

    // Nothing listens there: refused at once, naming where.
    let e = with(&|o| o.url = "postgres://fedgate@127.0.0.1:1/postgres".into());
    assert!(matches!(e, StoreError::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains("127.0.0.1:1"), "{e}");

    let e = with(&|o| o.url = o.url.replace("/postgres", "/no_such_database"));
    assert!(e.to_string().contains("no_such_database"), "{e}");

    let e = with(&|o| o.schema = "Robert'); DROP TABLE x;--".into());
    assert!(matches!(e, StoreError::Config { .. }), "{e}");

    for e in [
        with(&|o| o.password = Some("wrong".into())),
        with(&|o| o.schema = "pg_catalog".into()),
    ] {
        assert!(!e.to_string().contains('\n'), "{e}");
    }
}
