//! The database's promises: durable, atomic per write, group-committed, and clear errors
//! for files it must not touch.

use std::ops::ControlFlow;
use std::time::Duration;

use storage::{Db, Schema, StoreError};

mod place;
use place::Place;

on_both!(
    writes_survive_a_reopen_and_reads_see_them,
    a_failed_write_keeps_nothing_and_does_not_spoil_its_batch,
    concurrent_check_and_set_never_overspends,
    many_writers_share_commits_and_none_hangs,
    blocking_writes_work_inside_and_outside_a_runtime,
    prefix_scans_and_ranges_keep_to_their_keys,
    long_scans_cross_pages_both_ways,
    lengths_follow_inserts_overwrites_removes_and_undone_writes,
    blind_writes_and_many_key_reads_see_their_batch_and_a_failure_after_a_scan_keeps_nothing,
    a_key_written_as_new_that_exists_fails_the_write_and_nothing_is_overwritten,
);

const SCHEMA: Schema = Schema {
    name: "test",
    version: 2,
};

fn key(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}

async fn writes_survive_a_reopen_and_reads_see_them(place: Place) {
    {
        let db = place.open(SCHEMA).unwrap();
        let t = db.tree("t");
        assert_eq!(t.get(b"a").unwrap(), None);
        t.insert(b"a", b"1").await.unwrap();
        t.insert(b"b", b"2").await.unwrap();
        t.remove(b"a").await.unwrap();
        assert_eq!(t.get(b"b").unwrap().as_deref(), Some(&b"2"[..]));
    }
    // The file is closed when the last handle is dropped: it reopens at once.
    let db = place.open(SCHEMA).unwrap();
    let t = db.tree("t");
    assert_eq!(t.get(b"a").unwrap(), None);
    assert_eq!(t.entries().unwrap(), vec![(b"b".to_vec(), b"2".to_vec())]);
    assert_eq!(db.tree("never-written").len().unwrap(), 0);
}

async fn a_failed_write_keeps_nothing_and_does_not_spoil_its_batch(place: Place) {
    let db = place.open(SCHEMA).unwrap();
    let t = db.tree("t");
    t.insert(b"kept", b"old").await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let db = t.db().clone();
            db.write(move |tx| {
                tx.insert(&t, &key(i), b"v")?;
                tx.insert(&t, b"kept", b"overwritten")?;
                tx.remove(&t, b"kept")?;
                if i % 2 == 1 {
                    return Err(StoreError::unreadable("t"));
                }
                tx.insert(&t, b"kept", b"old")?;
                Ok(i)
            })
            .await
        }));
    }
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(i) => {
                assert_eq!(i % 2, 0);
                ok += 1;
            }
            Err(StoreError::Unreadable { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(ok, 100);
    for i in 0..200u64 {
        assert_eq!(t.contains_key(&key(i)).unwrap(), i % 2 == 0, "key {i}");
    }
    assert_eq!(t.get(b"kept").unwrap().as_deref(), Some(&b"old"[..]));
}

async fn concurrent_check_and_set_never_overspends(place: Place) {
    let db = place.open(SCHEMA).unwrap();
    let t = db.tree("budget");
    let mut tasks = Vec::new();
    for _ in 0..50 {
        tasks.push(tokio::spawn(place::spend_70_of_1000(db.clone())));
    }
    let mut granted = 0;
    for task in tasks {
        granted += u32::from(task.await.unwrap());
    }
    assert_eq!(granted, 14);
    assert_eq!(t.get(b"s").unwrap().unwrap(), 980u64.to_be_bytes());
}

async fn many_writers_share_commits_and_none_hangs(place: Place) {
    // Bounded in time: a hang in the writer fails the test instead of stalling the run.
    let db = place.open(SCHEMA).unwrap();
    let t = db.tree("log");
    let run = async {
        let mut tasks = Vec::new();
        for w in 0..64u64 {
            let t = t.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..50u64 {
                    t.insert(&key(w * 1000 + i), &[7u8; 256]).await.unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("64 writers x 50 durable writes did not finish in 120 s");
    assert_eq!(t.len().unwrap(), 64 * 50);
}

async fn blocking_writes_work_inside_and_outside_a_runtime(place: Place) {
    let db = place.open(SCHEMA).unwrap();
    let t = db.tree("t");
    let t2 = t.clone();
    db.write_blocking(move |tx| tx.insert(&t2, b"a", b"1").map(|_| ()))
        .unwrap();
    let t3 = t.clone();
    std::thread::spawn(move || {
        let db = t3.db().clone();
        db.write_blocking(move |tx| tx.insert(&t3, b"b", b"2").map(|_| ()))
            .unwrap();
    })
    .join()
    .unwrap();
    assert_eq!(t.len().unwrap(), 2);
}

async fn prefix_scans_and_ranges_keep_to_their_keys(place: Place) {
    let db = place.open(SCHEMA).unwrap();
    let t = db.tree("t");
    for k in ["s1/a", "s1/b", "s10/a", "s2/a", "s1\u{ff}"] {
        t.insert(k.as_bytes(), b"").await.unwrap();
    }
    let keys = |v: Vec<(Vec<u8>, Vec<u8>)>| {
        v.into_iter()
            .map(|(k, _)| String::from_utf8(k).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(t.scan_prefix(b"s1/").unwrap()), ["s1/a", "s1/b"]);
    assert_eq!(keys(t.scan_prefix(b"").unwrap()).len(), 5);
    let all_ff = [0xffu8, 0xff];
    t.insert(&all_ff, b"").await.unwrap();
    assert_eq!(t.scan_prefix(&[0xff]).unwrap().len(), 1);
    // An empty or reversed range holds nothing (redb itself would panic on the latter).
    assert!(t.range(&b"z"[..]..&b"a"[..], 10).unwrap().is_empty());
    assert_eq!(t.range(&b"s1/a"[..]..=&b"s2/a"[..], 2).unwrap().len(), 2);
    let mut seen = Vec::new();
    db.read()
        .unwrap()
        .scan_rev(&t, &b"s"[..]..&b"s2"[..], |k, _| {
            seen.push(k.to_vec());
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(seen.first().map(Vec::as_slice), Some(&b"s1\xc3\xbf"[..]));
    assert_eq!(t.last().unwrap().unwrap().0, all_ff.to_vec());
}

async fn long_scans_cross_pages_both_ways(place: Place) {
    // More entries than one round trip fetches on PostgreSQL, in one write.
    let db = place.open(SCHEMA).unwrap();
    let t = db.tree("long");
    let t2 = t.clone();
    db.write(move |tx| {
        for i in 0..1300u64 {
            tx.insert(&t2, &key(i), &i.to_le_bytes())?;
        }
        Ok::<_, StoreError>(())
    })
    .await
    .unwrap();
    let all = t.entries().unwrap();
    assert_eq!(all.len(), 1300);
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "in key order");
    let (lo, hi) = (key(100), key(1200));
    let mut down = Vec::new();
    db.read()
        .unwrap()
        .scan_rev(&t, &lo[..]..&hi[..], |k, _| {
            down.push(u64::from_be_bytes(k.try_into().unwrap()));
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(down, (100..1200).rev().collect::<Vec<_>>());
    // A scan that stops early stops: it sees exactly what it asked for.
    let mut first = Vec::new();
    t.scan(&lo[..].., |k, _| {
        first.push(k.to_vec());
        if first.len() == 700 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert_eq!(first.len(), 700);
    assert_eq!(first[699], key(799).to_vec());
    // Inside a write, the same walk sees the write's own changes.
    let t3 = t.clone();
    let (count, last) = db
        .write(move |tx| {
            tx.remove(&t3, &key(5))?;
            let mut n = 0u64;
            tx.scan(&t3, .., |_, _| {
                n += 1;
                ControlFlow::Continue(())
            })?;
            Ok::<_, StoreError>((n, tx.last(&t3)?.map(|e| e.0)))
        })
        .await
        .unwrap();
    assert_eq!(count, 1299);
    assert_eq!(last, Some(key(1299).to_vec()));
    assert_eq!(t.len().unwrap(), 1299);
}

async fn lengths_follow_inserts_overwrites_removes_and_undone_writes(place: Place) {
    let db = place.open(SCHEMA).unwrap();
    let (t, u) = (db.tree("t"), db.tree("u"));
    for i in 0..10u64 {
        t.insert(&key(i), b"a").await.unwrap();
    }
    t.insert(&key(3), b"overwritten").await.unwrap();
    t.remove(&key(4)).await.unwrap();
    t.remove(&key(99)).await.unwrap();
    u.insert(b"x", b"").await.unwrap();
    assert_eq!((t.len().unwrap(), u.len().unwrap()), (9, 1));
    // A write that fails leaves every count as it was, and its own reads saw its changes.
    let (t2, u2) = (t.clone(), u.clone());
    let seen = db
        .write(move |tx| {
            tx.insert(&t2, &key(50), b"")?;
            tx.remove(&t2, &key(0))?;
            tx.remove(&u2, b"x")?;
            let seen = (tx.len(&t2)?, tx.len(&u2)?);
            Err::<(), _>(StoreError::Commit(format!("{seen:?}")))
        })
        .await
        .unwrap_err();
    assert!(seen.to_string().contains("(9, 0)"), "{seen}");
    assert_eq!((t.len().unwrap(), u.len().unwrap()), (9, 1));
    assert_eq!(t.entries().unwrap().len(), 9);
    assert_eq!(db.tree("never").len().unwrap(), 0);
}

async fn blind_writes_and_many_key_reads_see_their_batch_and_a_failure_after_a_scan_keeps_nothing(
    place: Place,
) {
    let db = place.open(SCHEMA).unwrap();
    let t = db.tree("t");
    for i in 0..5u64 {
        t.insert(&key(i), b"old").await.unwrap();
    }
    // Concurrent writes share batches. Each overwrites an existing key and makes a new one
    // without reading either (`put`, or `put_new` for a key known to be new), then reads both back with a missing key in one call. Every
    // third one scans (on PostgreSQL that sends what waited to the server), writes again,
    // and fails: it must leave nothing, not even what the scan sent.
    let mut tasks = Vec::new();
    for j in 0..120u64 {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let db = t.db().clone();
            db.write(move |tx| {
                tx.put(&t, &key(j % 5), format!("w{j}").as_bytes())?;
                // Half of the new keys say that they are new (no count check at commit).
                if j % 2 == 0 {
                    tx.put_new(&t, &key(1000 + j), b"new")?;
                } else {
                    tx.put(&t, &key(1000 + j), b"new")?;
                }
                let seen = tx.get_many(&t, &[&key(j % 5), &key(1000 + j), &key(999_999)])?;
                if j % 3 == 0 {
                    let mut n = 0u64;
                    tx.scan(&t, .., |_, _| {
                        n += 1;
                        ControlFlow::Continue(())
                    })?;
                    tx.put_new(&t, &key(2000 + j), b"after the scan")?;
                    return Err(StoreError::Commit(format!("failed after a scan of {n}")));
                }
                Ok(seen)
            })
            .await
        }));
    }
    let mut kept = 0u64;
    for (j, task) in (0u64..).zip(tasks) {
        match task.await.unwrap() {
            Ok(seen) => {
                assert_ne!(j % 3, 0);
                assert_eq!(
                    seen,
                    vec![
                        Some(format!("w{j}").into_bytes()),
                        Some(b"new".to_vec()),
                        None
                    ]
                );
                kept += 1;
            }
            Err(StoreError::Commit(reason)) => {
                assert_eq!(j % 3, 0, "{reason}");
                assert!(reason.contains("failed after a scan"), "{reason}");
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    for j in 0..120u64 {
        assert_eq!(t.get(&key(1000 + j)).unwrap().is_some(), j % 3 != 0, "{j}");
        assert_eq!(t.get(&key(2000 + j)).unwrap(), None, "{j}");
    }
    // Each overwritten key holds "old" or what a write that succeeded put there.
    for k in 0..5u64 {
        let v = String::from_utf8(t.get(&key(k)).unwrap().unwrap()).unwrap();
        let ok = v == "old"
            || v.strip_prefix('w')
                .and_then(|j| j.parse::<u64>().ok())
                .is_some_and(|j| j % 5 == k && j % 3 != 0);
        assert!(ok, "key {k} holds {v}");
    }
    assert_eq!(t.len().unwrap(), 5 + kept);
    assert_eq!(t.entries().unwrap().len() as u64, 5 + kept);

    // A count inside a write that mixed blind and read-first changes.
    let before = t.len().unwrap();
    let t2 = t.clone();
    let inside = db
        .write(move |tx| {
            tx.put(&t2, &key(0), b"blind overwrite")?;
            tx.put(&t2, &key(3000), b"blind new")?;
            tx.insert(&t2, &key(3001), b"new")?;
            tx.remove(&t2, &key(1))?;
            tx.len(&t2)
        })
        .await
        .unwrap();
    assert_eq!(inside, before + 1);
    assert_eq!(t.len().unwrap(), before + 1);
    assert_eq!(
        t.get(&key(0)).unwrap().as_deref(),
        Some(&b"blind overwrite"[..])
    );
}

#[test]
fn files_it_must_not_touch_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();

    // In use.
    let path = dir.path().join("a.redb");
    let db = Db::open(&path, SCHEMA).unwrap();
    let e = Db::open(&path, SCHEMA).err().unwrap();
    assert!(matches!(e, StoreError::InUse { .. }), "{e}");
    assert!(e.to_string().contains("a.redb"));
    drop(db);

    // A newer schema.
    let newer = Schema {
        name: "test",
        version: 3,
    };
    drop(Db::open(&path, newer).unwrap());
    let e = Db::open(&path, SCHEMA).err().unwrap();
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
    assert!(e.to_string().contains("newer fedgate"), "{e}");

    // Not a database.
    let junk = dir.path().join("junk.redb");
    std::fs::write(&junk, vec![0x42u8; 8192]).unwrap();
    let e = Db::open(&junk, SCHEMA).err().unwrap();
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("junk.redb"), "{e}");

    // A newer file format.
    let fmt = dir.path().join("fmt.redb");
    drop(Db::open(&fmt, SCHEMA).unwrap());
    let mut bytes = std::fs::read(&fmt).unwrap();
    // The format version opens each of the two commit slots (at 64 and 192).
    bytes[64] = 9;
    bytes[192] = 9;
    std::fs::write(&fmt, bytes).unwrap();
    let e = Db::open(&fmt, SCHEMA).err().unwrap();
    assert!(matches!(e, StoreError::Newer { found: 9, .. }), "{e}");

    // A folder (an earlier fedgate's sled database).
    let e = Db::open(dir.path(), SCHEMA).err().unwrap();
    assert!(matches!(e, StoreError::Folder { .. }), "{e}");
    assert!(!e.to_string().contains('\n'));
}

async fn a_key_written_as_new_that_exists_fails_the_write_and_nothing_is_overwritten(place: Place) {
    let db = place.open(SCHEMA).unwrap();
    let t = db.tree("t");
    t.insert(&key(1), b"old").await.unwrap();
    let t2 = t.clone();
    let failed = db
        .write(move |tx| {
            tx.put_new(&t2, &key(2), b"new")?;
            tx.put_new(&t2, &key(1), b"overwritten?")
        })
        .await;
    // redb refuses at once; PostgreSQL when the batch is sent, on the primary key.
    let e = failed.expect_err("a key written as new exists");
    let shown = e.to_string();
    assert!(
        matches!(e, StoreError::Exists { .. }) || shown.contains("duplicate key"),
        "{shown}"
    );
    assert_eq!(t.get(&key(1)).unwrap().as_deref(), Some(&b"old"[..]));
    assert_eq!(t.get(&key(2)).unwrap(), None);
    assert_eq!(t.len().unwrap(), 1);
    // The database goes on: the next write is kept.
    let t2 = t.clone();
    db.write(move |tx| tx.put_new(&t2, &key(3), b"next"))
        .await
        .unwrap();
    assert_eq!(t.len().unwrap(), 2);
}
