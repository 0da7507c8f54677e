//! Durable group-committed appends and a full range scan, the embedded bus's workload, on
//! redb, fjall and SQLite. Each group of GROUP records is one fsynced transaction.

use std::time::Instant;

const RECORDS: u64 = 200_000;
const GROUP: u64 = 256;
const VALUE: usize = 300;

fn key(offset: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..4].copy_from_slice(b"reqs");
    k[4..8].copy_from_slice(&1u32.to_be_bytes());
    k[8..].copy_from_slice(&offset.to_be_bytes());
    k
}

fn report(name: &str, append: f64, scan: f64, n: u64) {
    println!(
        "{name:<8} append {:>9.0} records/s ({:>6.0} fsynced groups/s)   scan {:>10.0} records/s",
        RECORDS as f64 / append,
        (RECORDS / GROUP) as f64 / append,
        n as f64 / scan
    );
}

fn redb_run(dir: &std::path::Path) {
    use redb::{Database, Durability, TableDefinition};
    const T: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("log");
    let db = Database::create(dir.join("x.redb")).unwrap();
    let v = vec![7u8; VALUE];
    let t0 = Instant::now();
    for g in 0..RECORDS / GROUP {
        let mut txn = db.begin_write().unwrap();
        txn.set_durability(Durability::Immediate);
        {
            let mut t = txn.open_table(T).unwrap();
            for i in 0..GROUP {
                t.insert(key(g * GROUP + i).as_slice(), v.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    let append = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let r = db.begin_read().unwrap();
    let t = r.open_table(T).unwrap();
    let n = t.range(key(0).as_slice()..).unwrap().count() as u64;
    report("redb", append, t1.elapsed().as_secs_f64(), n);
}

fn fjall_run(dir: &std::path::Path) {
    let ks = fjall::Config::new(dir.join("fjall")).open().unwrap();
    let part = ks.open_partition("log", fjall::PartitionCreateOptions::default()).unwrap();
    let v = vec![7u8; VALUE];
    let t0 = Instant::now();
    for g in 0..RECORDS / GROUP {
        let mut b = ks.batch();
        for i in 0..GROUP {
            b.insert(&part, key(g * GROUP + i), v.clone());
        }
        b.commit().unwrap();
        ks.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    let append = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let n = part.range(key(0)..).count() as u64;
    report("fjall", append, t1.elapsed().as_secs_f64(), n);
}

fn sqlite_run(dir: &std::path::Path) {
    let mut c = rusqlite::Connection::open(dir.join("x.db")).unwrap();
    c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; CREATE TABLE log (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID;").unwrap();
    let v = vec![7u8; VALUE];
    let t0 = Instant::now();
    for g in 0..RECORDS / GROUP {
        let tx = c.transaction().unwrap();
        {
            let mut st = tx.prepare_cached("INSERT INTO log (k, v) VALUES (?1, ?2)").unwrap();
            for i in 0..GROUP {
                st.execute((key(g * GROUP + i).as_slice(), v.as_slice())).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let append = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut st = c.prepare("SELECT k, v FROM log WHERE k >= ?1 ORDER BY k").unwrap();
    let n = st.query_map([key(0).as_slice()], |r| r.get::<_, Vec<u8>>(1)).unwrap().count() as u64;
    report("sqlite", append, t1.elapsed().as_secs_f64(), n);
}

fn main() {
    println!("{RECORDS} records of {VALUE} B, {GROUP} per fsynced transaction");
    for run in [redb_run, fjall_run, sqlite_run] {
        let dir = tempfile::tempdir_in(".").unwrap();
        run(dir.path());
    }
}
