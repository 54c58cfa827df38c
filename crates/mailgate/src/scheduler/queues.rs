//! Per-destination job queues shared between the scheduler and delivery
//! workers, with the destination status cache.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mailgate_core::client::Outcome;
use tokio::sync::Notify;

use crate::outbound::route::Destination;
use crate::outbound::{Job, JobSource};

#[derive(Default)]
struct DestQueue {
    jobs: VecDeque<Job>,
    workers: usize,
    notify: Arc<Notify>,
    /// The destination failed as a whole; until then, jobs are deferred
    /// with this outcome instead of connecting again.
    dead: Option<(Instant, Outcome)>,
}

#[derive(Default)]
struct Inner {
    queues: HashMap<Destination, DestQueue>,
    workers: usize,
}

pub struct Queues {
    inner: Mutex<Inner>,
    per_destination: usize,
    total: usize,
    dead_for: Duration,
}

/// What the scheduler must do after queueing a job.
pub enum Push {
    /// Start a new worker for the destination.
    Spawn,
    /// A worker will pick it up.
    Queued,
    /// The destination is marked dead: the job gets this outcome now.
    Dead(Outcome),
}

impl Queues {
    pub fn new(per_destination: usize, total: usize, dead_for: Duration) -> Arc<Self> {
        Arc::new(Queues { inner: Mutex::new(Inner::default()), per_destination, total, dead_for })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, dest: Destination, job: Job) -> Push {
        let mut inner = self.lock();
        let total_workers = inner.workers;
        let q = inner.queues.entry(dest).or_default();
        if let Some((until, outcome)) = &q.dead {
            if Instant::now() < *until {
                return Push::Dead(outcome.clone());
            }
            q.dead = None;
        }
        q.jobs.push_back(job);
        q.notify.notify_one();
        if q.jobs.len() > q.workers && q.workers < self.per_destination && total_workers < self.total {
            q.workers += 1;
            inner.workers += 1;
            Push::Spawn
        } else {
            Push::Queued
        }
    }

    /// Forgets that a destination was dead (an administrator forced a retry).
    pub fn revive_all(&self) {
        for q in self.lock().queues.values_mut() {
            q.dead = None;
        }
    }
}

impl JobSource for Queues {
    fn take(&self, dest: &Destination) -> Option<Job> {
        self.lock().queues.get_mut(dest).and_then(|q| q.jobs.pop_front())
    }

    fn try_exit(&self, dest: &Destination) -> bool {
        let mut inner = self.lock();
        let Some(q) = inner.queues.get_mut(dest) else { return true };
        if !q.jobs.is_empty() {
            return false;
        }
        q.workers = q.workers.saturating_sub(1);
        let drop_queue = q.workers == 0 && q.dead.is_none();
        inner.workers = inner.workers.saturating_sub(1);
        if drop_queue {
            inner.queues.remove(dest);
        }
        true
    }

    fn notify(&self, dest: &Destination) -> Arc<Notify> {
        self.lock().queues.entry(dest.clone()).or_default().notify.clone()
    }

    fn mark_dead(&self, dest: &Destination, outcome: &Outcome) {
        if let Some(q) = self.lock().queues.get_mut(dest) {
            q.dead = Some((Instant::now() + self.dead_for, outcome.clone()));
        }
    }
}
