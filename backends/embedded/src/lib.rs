//! The engine under the embedded bus and store: a redb database with one writer thread that
//! groups concurrent writes into one fsynced transaction (group commit).
//!
//! Callers hand [`Engine::write`] a closure; the writer runs every closure waiting in its queue
//! inside one write transaction, commits it with `Durability::Immediate` (fsync), and only then
//! answers each caller. One fsync thus covers many writers, which is what lets a single disk
//! accept tens of thousands of durable appends per second. A closure must check before it
//! writes: an error it returns is reported to its caller, but whatever it wrote before erring
//! is committed with the rest of the group.
//!
//! **Faults.** After a failed write (a full disk, an I/O error) redb refuses every further
//! write until the database is reopened. The writer then fails what is queued (callers answer
//! 503), reopens the file, and probes with a small write every second until one commits;
//! [`Engine::ready`] reports not ready from the first failure until a write commits again.
//! Nothing needs a restart once space is back.
//!
//! Writes made under [`tidings_core::hint::urgent`] go into the next group ahead of every
//! queued bulk write, and a group stops taking bulk writes once [`GROUP_BUDGET`] of them have
//! run, so an urgent write waits for at most one bounded group before its own.

use redb::{Database, Durability, ReadTransaction, TableDefinition, WriteTransaction};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tidings_core::{Error, ErrorKind, Result};

type Reply = Box<dyn FnOnce(Result<()>) + Send>;
type Job = Box<dyn FnOnce(&WriteTransaction) -> Reply + Send>;
/// A job and whether it is urgent.
type Queued = (bool, Job);

/// Most closures committed in one transaction.
const MAX_GROUP: usize = 4096;
/// Time a group spends running bulk closures before it commits; the rest wait for the next.
pub const GROUP_BUDGET: Duration = Duration::from_millis(20);

/// How often a failed engine probes with a write, and how much it writes.
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_BYTES: usize = 16 * 1024;
const HEALTH: TableDefinition<'static, &'static str, &'static [u8]> =
    TableDefinition::new("engine_health");

/// A redb database with a group-committing writer.
#[derive(Clone)]
pub struct Engine {
    shared: Arc<Shared>,
    jobs: tokio::sync::mpsc::Sender<Queued>,
}

/// What the writer and the readers share.
struct Shared {
    path: PathBuf,
    /// `None` while the writer reopens the file.
    db: RwLock<Option<Arc<Database>>>,
    /// False from a failed write until a write commits again.
    healthy: AtomicBool,
    last_error: Mutex<String>,
}

impl Shared {
    fn db(&self) -> Result<Arc<Database>> {
        self.db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| storage_err("storage is reopening"))
    }

    fn failed(&self, e: &Error) {
        self.healthy.store(false, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e.message.clone();
    }
}

fn open_db(path: &Path) -> Result<Database> {
    Database::builder()
        .set_cache_size(256 * 1024 * 1024)
        .create(path)
        .map_err(storage_err)
}

/// Map a redb error to the port error (a storage failure is the outside world's fault: retry).
pub fn storage_err(e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Unavailable, "storage_error", e.to_string())
}

impl Engine {
    /// Open or create the database at `path`; `init` runs once in a first transaction (create
    /// tables there, so readers never meet a missing one).
    pub fn open(
        path: &Path,
        name: &'static str,
        init: impl FnOnce(&WriteTransaction) -> Result<()>,
    ) -> Result<Engine> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(storage_err)?;
            private(dir, 0o700)?;
        }
        let db = open_db(path)?;
        // the files hold tenants' secrets: owner only, whatever the umask
        private(path, 0o600)?;
        let txn = db.begin_write().map_err(storage_err)?;
        init(&txn)?;
        txn.open_table(HEALTH).map_err(storage_err)?;
        txn.commit().map_err(storage_err)?;
        let shared = Arc::new(Shared {
            path: path.to_path_buf(),
            db: RwLock::new(Some(Arc::new(db))),
            healthy: AtomicBool::new(true),
            last_error: Mutex::new(String::new()),
        });
        let (tx, rx) = tokio::sync::mpsc::channel::<Queued>(MAX_GROUP * 4);
        let writer_shared = shared.clone();
        std::thread::Builder::new()
            .name(format!("{name}-writer"))
            .spawn(move || writer(writer_shared, rx))
            .map_err(storage_err)?;
        Ok(Engine { shared, jobs: tx })
    }

    /// Whether writes commit: an error from the first failed write until one commits again.
    pub fn ready(&self) -> Result<()> {
        if self.shared.healthy.load(Ordering::Relaxed) {
            return Ok(());
        }
        let last = self
            .shared
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Err(storage_err(format!("writes are failing: {last}")))
    }

    /// Run `f` in a durable write transaction shared with other writers; resolves after the
    /// fsync.
    pub async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |txn| {
            let out = f(txn);
            Box::new(move |committed: Result<()>| {
                let _ = tx.send(committed.and(out));
            })
        });
        self.jobs
            .send((tidings_core::hint::is_urgent(), job))
            .await
            .map_err(|_| storage_err("the storage writer has stopped"))?;
        // the writer drops a write only on a storage fault (a transaction it cannot begin, or
        // the database reopening after a failed write): the caller sees that fault
        rx.await
            .map_err(|_| storage_err("the write was not committed: storage is failing"))?
    }

    /// A consistent snapshot for reading.
    pub fn read(&self) -> Result<ReadTransaction> {
        self.shared.db()?.begin_read().map_err(storage_err)
    }
}

/// Restrict `path` to its owner (`mode`); a no-op where modes do not exist.
fn private(path: &Path, mode: u32) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(storage_err)?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

fn writer(shared: Arc<Shared>, mut rx: tokio::sync::mpsc::Receiver<Queued>) {
    let mut urgent: Vec<Job> = Vec::new();
    let mut bulk: VecDeque<Job> = VecDeque::new();
    fn take((u, job): Queued, urgent: &mut Vec<Job>, bulk: &mut VecDeque<Job>) {
        if u {
            urgent.push(job)
        } else {
            bulk.push_back(job)
        }
    }
    let mut db = match shared.db() {
        Ok(db) => db,
        Err(_) => return,
    };
    loop {
        if urgent.is_empty() && bulk.is_empty() {
            if shared.healthy.load(Ordering::Relaxed) {
                match rx.blocking_recv() {
                    Some(q) => take(q, &mut urgent, &mut bulk),
                    None => return,
                }
            } else {
                // failed and idle: probe until a write commits, taking jobs as they come
                match rx.try_recv() {
                    Ok(q) => take(q, &mut urgent, &mut bulk),
                    Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => return,
                    Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                        if let Err(e) = probe(&db) {
                            shared.failed(&e);
                            db = reopen(&shared, db, &mut rx);
                        } else {
                            shared.healthy.store(true, Ordering::Relaxed);
                            tracing::info!("storage writes commit again");
                        }
                        if !shared.healthy.load(Ordering::Relaxed) {
                            std::thread::sleep(PROBE_EVERY);
                        }
                        continue;
                    }
                }
            }
        }
        // take everything waiting, so an urgent job never sits behind bulk ones in the channel
        // (callers await their replies, so what waits is bounded by the callers in flight)
        while let Ok(q) = rx.try_recv() {
            take(q, &mut urgent, &mut bulk);
        }
        let mut txn = match db.begin_write() {
            Ok(t) => t,
            Err(e) => {
                // dropping the jobs drops their reply channels: every caller gets an error
                let e = storage_err(e);
                tracing::error!(error = %e, "cannot begin a write transaction");
                shared.failed(&e);
                urgent.clear();
                bulk.clear();
                db = reopen(&shared, db, &mut rx);
                continue;
            }
        };
        txn.set_durability(Durability::Immediate);
        let mut replies: Vec<Reply> = urgent.drain(..).map(|j| j(&txn)).collect();
        let started = Instant::now();
        while let Some(j) = bulk.pop_front() {
            replies.push(j(&txn));
            if replies.len() >= MAX_GROUP || started.elapsed() >= GROUP_BUDGET {
                break;
            }
        }
        let result = txn.commit().map_err(storage_err);
        match &result {
            Ok(()) => {
                if !shared.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!("storage writes commit again");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "group commit failed");
                shared.failed(e);
            }
        }
        for r in replies {
            r(result.clone());
        }
        if result.is_err() {
            db = reopen(&shared, db, &mut rx);
        }
    }
}

/// A small durable write: whether the disk takes writes again.
fn probe(db: &Database) -> Result<()> {
    let mut txn = db.begin_write().map_err(storage_err)?;
    txn.set_durability(Durability::Immediate);
    {
        let mut t = txn.open_table(HEALTH).map_err(storage_err)?;
        t.insert("probe", vec![0u8; PROBE_BYTES].as_slice())
            .map_err(storage_err)?;
    }
    txn.commit().map_err(storage_err)
}

/// After a failed write redb refuses writes until reopened: close the database, fail the
/// writes that arrive meanwhile, and open it again (retrying each [`PROBE_EVERY`]).
fn reopen(
    shared: &Shared,
    old: Arc<Database>,
    rx: &mut tokio::sync::mpsc::Receiver<Queued>,
) -> Arc<Database> {
    *shared.db.write().unwrap_or_else(|p| p.into_inner()) = None;
    drop(old);
    loop {
        // dropped jobs answer their callers with an error at once
        while rx.try_recv().is_ok() {}
        match open_db(&shared.path) {
            Ok(db) => {
                let db = Arc::new(db);
                *shared.db.write().unwrap_or_else(|p| p.into_inner()) = Some(db.clone());
                tracing::info!(path = %shared.path.display(), "storage reopened");
                return db;
            }
            Err(e) => {
                // a reader may still hold the old file for a moment, or the disk is gone
                tracing::warn!(error = %e, "cannot reopen storage yet");
                std::thread::sleep(PROBE_EVERY);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A small tmpfs mounted for one test, unmounted on drop; `None` where mounting is not
    /// allowed (not root).
    struct SmallDisk(PathBuf);

    impl SmallDisk {
        fn mount(mib: u32) -> Option<SmallDisk> {
            let dir = tempfile::tempdir().ok()?.keep();
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success());
            ok.then_some(SmallDisk(dir))
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
            let _ = std::fs::remove_dir(&self.0);
        }
    }

    const T: TableDefinition<'static, u64, &'static [u8]> = TableDefinition::new("t");

    /// The disk fills: writes fail and the engine says not ready; space comes back: writes
    /// commit again without a restart, and it says ready.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recovers_by_itself_after_the_disk_fills() {
        let Some(disk) = SmallDisk::mount(24) else {
            eprintln!("skipped: cannot mount a tmpfs here (needs root)");
            return;
        };
        let engine = Engine::open(&disk.0.join("t.redb"), "test", |txn| {
            txn.open_table(T).map_err(storage_err)?;
            Ok(())
        })
        .unwrap();
        // leave a few MiB, then write until the disk is full
        let ballast = disk.0.join("ballast");
        std::fs::write(&ballast, vec![1u8; 16 * 1024 * 1024]).unwrap();
        let value = vec![7u8; 256 * 1024];
        let mut written = 0u64;
        let failure = loop {
            let v = value.clone();
            let k = written;
            match engine
                .write(move |txn| {
                    let mut t = txn.open_table(T).map_err(storage_err)?;
                    t.insert(k, v.as_slice()).map_err(storage_err)?;
                    Ok(())
                })
                .await
            {
                Ok(()) => written += 1,
                Err(e) => break e,
            }
            assert!(written < 1000, "the disk never filled");
        };
        assert_eq!(failure.code, "storage_error");
        assert!(engine.ready().is_err(), "ready while writes fail");
        // space comes back
        std::fs::remove_file(&ballast).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while engine.ready().is_err() {
            assert!(Instant::now() < deadline, "never ready again");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        engine
            .write(|txn| {
                let mut t = txn.open_table(T).map_err(storage_err)?;
                t.insert(u64::MAX, b"after".as_slice())
                    .map_err(storage_err)?;
                Ok(())
            })
            .await
            .unwrap();
        let r = engine.read().unwrap();
        let t = r.open_table(T).unwrap();
        assert_eq!(t.get(u64::MAX).unwrap().unwrap().value(), b"after");
        assert!(
            t.get(0).unwrap().is_some(),
            "what committed before is there"
        );
    }

    #[cfg(unix)]
    #[test]
    fn files_are_private_to_their_owner() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.join("t.redb");
        let _engine = Engine::open(&path, "test", |_| Ok(())).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&path), 0o600);
    }

    /// An urgent write queued behind a long run of bulk writes commits before most of them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn urgent_writes_overtake_queued_bulk_writes() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("t.redb"), "test", |_| Ok(())).unwrap();
        let done = Arc::new(AtomicUsize::new(0));
        let mut bulk = Vec::new();
        for _ in 0..30 {
            let (e, done) = (engine.clone(), done.clone());
            bulk.push(tokio::spawn(async move {
                e.write(|_| {
                    // a slow bulk closure: 30 of them are 150 ms of work
                    std::thread::sleep(Duration::from_millis(5));
                    Ok(())
                })
                .await
                .unwrap();
                done.fetch_add(1, Ordering::SeqCst)
            }));
        }
        // let the bulk writes reach the queue first
        tokio::time::sleep(Duration::from_millis(10)).await;
        let (e, d) = (engine.clone(), done.clone());
        let urgent = tidings_core::hint::urgent(async move {
            e.write(|_| Ok(())).await.unwrap();
            d.fetch_add(1, Ordering::SeqCst)
        })
        .await;
        for b in bulk {
            b.await.unwrap();
        }
        assert!(
            urgent < 15,
            "the urgent write finished {urgent}th of 31; it should overtake the queue"
        );
    }
}
