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
//! Writes made under [`tidings_core::hint::urgent`] go into the next group ahead of every
//! queued bulk write, and a group stops taking bulk writes once [`GROUP_BUDGET`] of them have
//! run, so an urgent write waits for at most one bounded group before its own.

use redb::{Database, Durability, ReadTransaction, WriteTransaction};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;
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

/// A redb database with a group-committing writer.
#[derive(Clone)]
pub struct Engine {
    db: Arc<Database>,
    jobs: tokio::sync::mpsc::Sender<Queued>,
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
        let db = Database::builder()
            .set_cache_size(256 * 1024 * 1024)
            .create(path)
            .map_err(storage_err)?;
        // the files hold tenants' secrets: owner only, whatever the umask
        private(path, 0o600)?;
        let txn = db.begin_write().map_err(storage_err)?;
        init(&txn)?;
        txn.commit().map_err(storage_err)?;
        let db = Arc::new(db);
        let (tx, rx) = tokio::sync::mpsc::channel::<Queued>(MAX_GROUP * 4);
        let writer_db = db.clone();
        std::thread::Builder::new()
            .name(format!("{name}-writer"))
            .spawn(move || writer(writer_db, rx))
            .map_err(storage_err)?;
        Ok(Engine { db, jobs: tx })
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
            .map_err(|_| Error::unavailable("the storage writer has stopped"))?;
        rx.await
            .map_err(|_| Error::unavailable("the storage writer dropped a write"))?
    }

    /// A consistent snapshot for reading.
    pub fn read(&self) -> Result<ReadTransaction> {
        self.db.begin_read().map_err(storage_err)
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

fn writer(db: Arc<Database>, mut rx: tokio::sync::mpsc::Receiver<Queued>) {
    let mut urgent: Vec<Job> = Vec::new();
    let mut bulk: VecDeque<Job> = VecDeque::new();
    fn take((u, job): Queued, urgent: &mut Vec<Job>, bulk: &mut VecDeque<Job>) {
        if u {
            urgent.push(job)
        } else {
            bulk.push_back(job)
        }
    }
    loop {
        if urgent.is_empty() && bulk.is_empty() {
            match rx.blocking_recv() {
                Some(q) => take(q, &mut urgent, &mut bulk),
                None => return,
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
                tracing::error!(error = %e, "cannot begin a write transaction");
                urgent.clear();
                bulk.clear();
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
        if let Err(e) = &result {
            tracing::error!(error = %e, "group commit failed");
        }
        for r in replies {
            r(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

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
