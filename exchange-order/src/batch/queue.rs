//! The bounded queue between handlers and the batch workers: a full queue
//! is answered 503 `OVERLOADED` at once, never waited on, and a handler
//! waits for its batch at most [`BatchOptions::reply_timeout`].

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use exchange_common::ApiError;
use exchange_common::ErrorCode;
use tokio::sync::{mpsc, oneshot};

use super::{BatchOptions, Outcome, Request, outcome_unknown};

/// One queued request and where its answer goes.
pub(super) struct Job {
    pub(super) request: Request,
    pub(super) reply: oneshot::Sender<Outcome>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.request.fmt(f)
    }
}

/// The handle handlers submit to (cheap to clone).
#[derive(Clone, Debug)]
pub struct Batcher {
    tx: mpsc::Sender<Job>,
    reply_timeout: Duration,
}

/// A queue of `opts.queue_len_max` requests: the handle handlers submit
/// to, and the end the workers take batches from.
pub(super) fn open(opts: &BatchOptions) -> (Batcher, Arc<Intake>) {
    let (tx, rx) = mpsc::channel(opts.queue_len_max);
    let intake = Arc::new(Intake {
        rx: tokio::sync::Mutex::new(rx),
        in_flight: AtomicUsize::new(0),
        batch_len_max: opts.batch_len_max,
        linger: opts.linger,
    });
    let batcher = Batcher {
        tx,
        reply_timeout: opts.reply_timeout,
    };
    (batcher, intake)
}

impl Batcher {
    pub async fn submit(&self, request: Request) -> Outcome {
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(Job { request, reply }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("exchange_order_overloaded_total").increment(1);
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Overloaded,
                    "too many requests in flight, retry",
                ));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(ApiError::unavailable("the order service is stopping"));
            }
        }
        match tokio::time::timeout(self.reply_timeout, rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(ApiError::unavailable("the request was dropped, retry")),
            Err(_) => Err(outcome_unknown("timed out waiting for the database")),
        }
    }
}

/// The workers' shared queue end.
pub(super) struct Intake {
    rx: tokio::sync::Mutex<mpsc::Receiver<Job>>,
    /// Batches being applied now.
    in_flight: AtomicUsize,
    batch_len_max: usize,
    linger: Duration,
}

impl Intake {
    /// The next batch: what is queued (waiting for at least one request),
    /// plus, while another batch is in flight, what arrives within
    /// `linger` (see [`BatchOptions::linger`]). Empty when every handle is
    /// gone.
    pub(super) async fn next_batch(&self) -> Vec<Job> {
        let mut jobs = Vec::with_capacity(self.batch_len_max);
        let mut rx = self.rx.lock().await;
        if rx.recv_many(&mut jobs, self.batch_len_max).await == 0 {
            return jobs;
        }
        if !self.linger.is_zero()
            && jobs.len() < self.batch_len_max
            && self.in_flight.load(Ordering::Acquire) > 0
        {
            tokio::time::sleep(self.linger).await;
            while jobs.len() < self.batch_len_max {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        jobs
    }

    pub(super) fn batch_done(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
