//! The engine under the embedded bus and store: a redb database with one writer thread that
//! groups concurrent writes into one fsynced transaction (group commit).
//!
//! Callers hand [`Engine::write`] a closure; the writer runs every closure waiting in its queue
//! inside one write transaction, commits it with `Durability::Immediate` (fsync), and only then
//! answers each caller. One fsync thus covers many writers, which is what lets a single disk
//! accept tens of thousands of durable appends per second. A closure must check before it
//! writes: an error it returns is reported to its caller, but whatever it wrote before erring
//! is committed with the rest of the group.

use redb::{Database, Durability, ReadTransaction, WriteTransaction};
use std::path::Path;
use std::sync::Arc;
use tidings_core::{Error, ErrorKind, Result};

type Reply = Box<dyn FnOnce(Result<()>) + Send>;
type Job = Box<dyn FnOnce(&WriteTransaction) -> Reply + Send>;

/// Most closures committed in one transaction.
const MAX_GROUP: usize = 4096;

/// A redb database with a group-committing writer.
#[derive(Clone)]
pub struct Engine {
    db: Arc<Database>,
    jobs: tokio::sync::mpsc::Sender<Job>,
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
        }
        let db = Database::builder()
            .set_cache_size(256 * 1024 * 1024)
            .create(path)
            .map_err(storage_err)?;
        let txn = db.begin_write().map_err(storage_err)?;
        init(&txn)?;
        txn.commit().map_err(storage_err)?;
        let db = Arc::new(db);
        let (tx, rx) = tokio::sync::mpsc::channel::<Job>(MAX_GROUP * 4);
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
            .send(job)
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

fn writer(db: Arc<Database>, mut rx: tokio::sync::mpsc::Receiver<Job>) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let mut txn = match db.begin_write() {
            Ok(t) => t,
            Err(e) => {
                // dropping the jobs drops their reply channels: every caller gets an error
                tracing::error!(error = %e, "cannot begin a write transaction");
                drop(jobs);
                continue;
            }
        };
        txn.set_durability(Durability::Immediate);
        let replies: Vec<Reply> = jobs.into_iter().map(|j| j(&txn)).collect();
        let result = txn.commit().map_err(storage_err);
        if let Err(e) = &result {
            tracing::error!(error = %e, "group commit failed");
        }
        for r in replies {
            r(result.clone());
        }
    }
}
