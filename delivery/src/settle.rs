//! Acks and reads of every connection on this node, persisted together.
//!
//! A fan-out to thousands of connections brings their acks back at once. Each connection
//! already folds its own consecutive acks into one write (`ws`); the settler folds those of all
//! connections: whatever is waiting when the previous write finishes goes into one store write
//! ([`Inbox::settle_many`](tidings_core::store::Inbox::settle_many)) and one append of the
//! delivery events, and each caller gets its own answer. Under light load a write carries one
//! ack, as before; under a fan-out the per-write cost is paid once per batch, not per user.

use crate::EventGroup;
use tidings_core::model::{Channel, DeliveryState, EventKind, InboxStatus};
use tidings_core::store::Settle;
use tidings_core::{Context, Error, Result};
use tokio::sync::{mpsc, oneshot};

/// Most acks and reads in one write.
const BATCH: usize = 4096;

struct Job {
    settle: Settle,
    kind: EventKind,
    reply: oneshot::Sender<Result<Vec<String>>>,
}

/// The node's ack and read writer (cheap to clone).
#[derive(Clone)]
pub struct Settler {
    tx: mpsc::Sender<Job>,
}

impl Settler {
    /// Start the writer task; it ends when every clone of the settler is dropped.
    pub fn start(ctx: Context) -> Settler {
        let (tx, rx) = mpsc::channel(BATCH * 4);
        tokio::spawn(run(ctx, rx));
        Settler { tx }
    }

    /// Move `ids` of the user's inbox to delivered (an ack) or read, with their in-app
    /// statuses, and publish the events; returns the ids that changed.
    pub async fn settle(
        &self,
        tenant: &str,
        user: &str,
        ids: Vec<String>,
        kind: EventKind,
    ) -> Result<Vec<String>> {
        let (status, state) = match kind {
            EventKind::Read => (InboxStatus::Read, DeliveryState::Read),
            _ => (InboxStatus::Delivered, DeliveryState::Delivered),
        };
        let (reply, answer) = oneshot::channel();
        let job = Job {
            settle: Settle {
                tenant_id: tenant.to_string(),
                user_id: user.to_string(),
                ids,
                status,
                state,
            },
            kind,
            reply,
        };
        let gone = || Error::internal("the ack writer has stopped");
        self.tx.send(job).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

async fn run(ctx: Context, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let (batch, waiting): (Vec<Settle>, Vec<_>) = jobs
            .into_iter()
            .map(|j| (j.settle, (j.kind, j.reply)))
            .unzip();
        match ctx.store.settle_many(&batch).await {
            Ok(changed) => {
                let mut events = Vec::with_capacity(batch.len());
                for ((s, (kind, reply)), ids) in batch.into_iter().zip(waiting).zip(changed) {
                    events.push(EventGroup {
                        tenant: s.tenant_id,
                        user: s.user_id,
                        channel: Channel::Inapp,
                        ids: ids.clone(),
                        kind,
                        error: None,
                    });
                    let _ = reply.send(Ok(ids));
                }
                crate::publish_event_groups(&ctx, &events).await;
            }
            Err(e) => {
                for (_, reply) in waiting {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}
