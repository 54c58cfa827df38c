//! The scheduler owns changes to the queue. The admin API and the CLI send
//! it commands; they never touch the spool themselves.
//!
//! Delivery scheduling (due times, retries, per-destination concurrency)
//! arrives with the delivery stage; today it executes queue commands.
//!
//! May import: `spool`, `events`, `mailgate-core`.

use std::sync::Arc;

use mailgate_core::QueueId;
use tokio::sync::{mpsc, oneshot};

use crate::spool::{Spool, SpoolError};

pub enum Command {
    /// Remove a message from the queue without delivering it.
    Delete {
        id: QueueId,
        done: oneshot::Sender<Result<bool, SpoolError>>,
    },
}

#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
}

impl Handle {
    pub async fn delete(&self, id: QueueId) -> Result<bool, SpoolError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Command::Delete { id, done })
            .await
            .map_err(|_| SpoolError::Stopped)?;
        rx.await.map_err(|_| SpoolError::Stopped)?
    }
}

pub fn start(spool: Arc<Spool>) -> Handle {
    let (tx, mut rx) = mpsc::channel(64);
    tokio::spawn(async move {
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Command::Delete { id, done } => {
                    let result = spool.remove(&id).await;
                    if matches!(result, Ok(true)) {
                        tracing::info!(queue_id = %id, "deleted by administrator");
                    }
                    let _ = done.send(result);
                }
            }
        }
    });
    Handle { tx }
}
