//! On a real file: no write is acknowledged before an `fdatasync` of the database file
//! returned, seen with strace. (The power-loss simulation in crash.rs checks the same
//! promise against lost writes; this checks the system calls themselves.)

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::Command;

use storage::{Db, Schema};

const CHILD: &str = "FEDGATE_FSYNC_CHILD_DB";
const WRITES: usize = 30;

/// The traced process: writes one by one and says "ack N" after each write returned.
#[tokio::test]
#[ignore = "run under strace by acknowledgements_follow_an_fdatasync"]
async fn child_writes_and_acknowledges() {
    let path = std::env::var(CHILD).expect("the database path, from the tracing test");
    let db = Db::open(
        Path::new(&path),
        Schema {
            name: "fsync",
            version: 1,
        },
    )
    .unwrap();
    let tree = db.tree("events");
    for i in 0..WRITES {
        tree.insert(&(i as u64).to_be_bytes(), &[b'e'; 300])
            .await
            .unwrap();
        let mut out = std::io::stdout().lock();
        writeln!(out, "ack {i}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn acknowledgements_follow_an_fdatasync() {
    let dir = tempfile::tempdir().unwrap();
    let db_path = dir.path().join("traced.redb");
    let trace = dir.path().join("trace.txt");
    let exe = std::env::current_exe().unwrap();
    let status = Command::new("strace")
        .args(["-f", "-qq", "-e", "signal=none"])
        .args([
            "-e",
            "trace=openat,write,pwrite64,pwritev,pwritev2,fsync,fdatasync,sync_file_range",
        ])
        .arg("-o")
        .arg(&trace)
        .arg(&exe)
        .args([
            "--exact",
            "child_writes_and_acknowledges",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, &db_path)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("strace is needed for this test (scripts/test installs it)");
    assert!(status.success(), "the traced writer failed: {status}");
    let trace = std::fs::read_to_string(&trace).unwrap();
    let (acks, syncs) = check(&trace, "traced.redb").unwrap();
    assert_eq!(acks, WRITES, "acknowledgements seen in the trace");
    assert!(
        syncs >= WRITES,
        "{syncs} syncs for {WRITES} sequential writes"
    );
}

/// Walks the trace in order: the database file's descriptor is dirty from a write until
/// an fdatasync/fsync of it returns 0; every "ack" must find it clean. Returns the number
/// of acknowledgements and of completed syncs.
fn check(trace: &str, file_name: &str) -> Result<(usize, usize), String> {
    let mut fd: Option<String> = None;
    let mut dirty = false;
    let (mut syncs, mut acks) = (0, 0);
    // pid → whether its unfinished call is an fdatasync/fsync of the database file.
    let mut syncing: HashMap<&str, bool> = HashMap::new();
    for line in trace.lines() {
        let Some((pid, call)) = line.split_once(' ') else {
            continue;
        };
        let call = call.trim_start();
        if call.starts_with("openat(") && call.contains(file_name) {
            fd = call
                .rsplit("= ")
                .next()
                .filter(|n| n.parse::<u32>().is_ok())
                .map(str::to_string);
            continue;
        }
        let Some(db) = fd.as_deref() else { continue };
        let on_db = |name: &str| {
            call.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('('))
                .and_then(|rest| rest.strip_prefix(db))
                .is_some_and(|rest| rest.starts_with([',', ')', ' ']))
        };
        let finished_ok = call.ends_with("= 0");
        if ["write", "pwrite64", "pwritev", "pwritev2"]
            .iter()
            .any(|c| on_db(c))
        {
            dirty = true;
        } else if ["fdatasync", "fsync"].iter().any(|c| on_db(c)) {
            if call.ends_with("<unfinished ...>") {
                syncing.insert(pid, true);
            } else if finished_ok {
                dirty = false;
                syncs += 1;
            }
        } else if call.starts_with("<... fdatasync resumed>")
            || call.starts_with("<... fsync resumed>")
        {
            if syncing.remove(pid).unwrap_or(false) && finished_ok {
                dirty = false;
                syncs += 1;
            }
        } else if call.starts_with("sync_file_range(") {
            return Err(format!("sync_file_range is not a durable flush: {line}"));
        } else if call.starts_with("write(1, \"ack ") {
            if dirty {
                return Err(format!(
                    "acknowledged before the database file was synced: {line}"
                ));
            }
            acks += 1;
        }
    }
    if fd.is_none() {
        return Err(format!("the trace never opened {file_name}"));
    }
    Ok((acks, syncs))
}

#[test]
fn the_checker_catches_an_acknowledgement_before_the_sync() {
    let good = "10 openat(AT_FDCWD, \"/t/x.redb\", O_RDWR) = 7\n\
                11 pwrite64(7, \"...\", 4096, 0) = 4096\n\
                11 fdatasync(7 <unfinished ...>\n\
                10 write(9, \"x\", 1) = 1\n\
                11 <... fdatasync resumed>) = 0\n\
                10 write(1, \"ack 0\\n\", 6) = 6\n";
    assert_eq!(check(good, "x.redb"), Ok((1, 1)));
    // The acknowledgement overtakes the sync.
    let early = "10 openat(AT_FDCWD, \"/t/x.redb\", O_RDWR) = 7\n\
                 11 pwrite64(7, \"...\", 4096, 0) = 4096\n\
                 11 fdatasync(7 <unfinished ...>\n\
                 10 write(1, \"ack 0\\n\", 6) = 6\n\
                 11 <... fdatasync resumed>) = 0\n";
    assert!(check(early, "x.redb").is_err());
    // A sync of another file does not count; a failed sync does not count.
    let other = good.replace("fdatasync(7 <", "fdatasync(70 <");
    assert!(check(&other, "x.redb").is_err());
    let failed = good.replace("resumed>) = 0", "resumed>) = -1 EIO (Input/output error)");
    assert!(check(&failed, "x.redb").is_err());
    // sled's flush on the request path.
    let sled = good.replace(
        "fdatasync(7 <unfinished ...>",
        "sync_file_range(7, 0, 0, 7) = 0",
    );
    assert!(check(&sled, "x.redb").is_err());
}
