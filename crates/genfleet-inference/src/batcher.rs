//! A generic micro-batcher: many tasks [`MicroBatcher::submit`] one item
//! each; one background task gathers items into a batch until it holds
//! `max_batch` items or `max_delay` has passed since the batch's FIRST item
//! was submitted, whichever comes first, runs the batch once on a blocking
//! thread, and hands each submitter its own result, in order.
//!
//! Items that cannot share a tensor (different shapes) carry different keys
//! ([`BatchRun::key`]); a batch only ever holds items of one key. Batches of
//! one batcher run one at a time: a model session runs one batch at a time
//! anyway (ONNX Runtime's `run` takes `&mut self`), and requests that arrive
//! meanwhile queue up and make the next batch fuller, which is where batching
//! pays.
//!
//! What this module deliberately does not know: models, tensors, GPUs. The
//! [`BatchRun`] implementation supplies the run, and the admission (a VRAM
//! permit) that must be held while it runs.

use std::collections::VecDeque;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Why the batcher itself, rather than the run, failed a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The request's deadline passed while it was queued or running.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// The batcher's task has stopped (its runtime is shutting down).
    #[error("the batcher has shut down")]
    Closed,
    /// [`MicroBatcher::new`] was called outside a tokio runtime.
    #[error("the batcher needs a tokio runtime to run in")]
    NoRuntime,
    /// The run returned a different number of results than it was given
    /// items: no result can be trusted to belong to its submitter.
    #[error("batch run returned {got} results for {expected} items")]
    CountMismatch { expected: usize, got: usize },
    /// The run panicked; the panic was contained to this batch.
    #[error("batch run panicked")]
    Panicked,
}

/// How a batcher gathers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// The most items in one run (at least 1).
    pub max_batch: usize,
    /// How long the first item of a batch waits for company.
    pub max_delay: Duration,
}

/// What a batcher runs. Implemented by the engine for each model and by
/// [`FnRun`] for a plain closure.
pub trait BatchRun: Send + Sync + 'static {
    /// Items with equal keys may share a batch (e.g. a tile shape).
    type Key: Clone + PartialEq + Send + 'static;
    type Item: Send + 'static;
    type Output: Send + 'static;
    type Error: Clone + Send + From<BatchError> + 'static;
    /// Held for the duration of a run (a VRAM permit); dropped after it.
    type Permit: Send + 'static;

    /// The batch key of an item.
    fn key(&self, item: &Self::Item) -> Self::Key;

    /// Waits, at most until `deadline`, for permission to run a batch of
    /// `size` items of `key`. Called on the async side, before the run.
    fn admit(
        &self,
        key: &Self::Key,
        size: usize,
        deadline: Instant,
    ) -> impl Future<Output = Result<Self::Permit, Self::Error>> + Send;

    /// Runs one batch; blocking (it is called on a blocking thread). Must
    /// return exactly one output per item, in the items' order.
    fn run(
        &self,
        key: &Self::Key,
        items: Vec<Self::Item>,
    ) -> Result<Vec<Self::Output>, Self::Error>;
}

/// One queued request.
struct Request<R: BatchRun> {
    key: R::Key,
    item: R::Item,
    deadline: Instant,
    submitted: Instant,
    reply: oneshot::Sender<Result<R::Output, R::Error>>,
}

/// The submitting side of a batcher; cheap to clone. The background task
/// ends when every handle is dropped and the queue is drained.
pub struct MicroBatcher<R: BatchRun> {
    runner: Arc<R>,
    tx: mpsc::UnboundedSender<Request<R>>,
}

impl<R: BatchRun> Clone for MicroBatcher<R> {
    fn clone(&self) -> Self {
        Self {
            runner: Arc::clone(&self.runner),
            tx: self.tx.clone(),
        }
    }
}

impl<R: BatchRun> MicroBatcher<R> {
    /// Starts the gathering task on the current tokio runtime.
    ///
    /// # Errors
    /// [`BatchError::NoRuntime`] outside a tokio runtime.
    pub fn new(config: BatchConfig, runner: Arc<R>) -> Result<Self, BatchError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| BatchError::NoRuntime)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let config = BatchConfig {
            max_batch: config.max_batch.max(1),
            max_delay: config.max_delay,
        };
        handle.spawn(gather(Arc::clone(&runner), config, rx));
        Ok(Self { runner, tx })
    }

    /// Submits one item and waits for its own result.
    ///
    /// # Errors
    /// The run's error for this item's batch, `DeadlineExceeded` when the
    /// deadline passes while queued or running (the run is not interrupted;
    /// its result for this item is dropped), `Closed` when the batcher's task
    /// has ended.
    ///
    /// # Cancel safety
    /// Dropping the future withdraws the request: it is skipped if not yet
    /// run, and its result is discarded otherwise; other requests are not
    /// affected.
    pub async fn submit(&self, item: R::Item, deadline: Instant) -> Result<R::Output, R::Error> {
        let submitted = Instant::now();
        if submitted >= deadline {
            return Err(BatchError::DeadlineExceeded.into());
        }
        let (reply, answer) = oneshot::channel();
        let request = Request {
            key: self.runner.key(&item),
            item,
            deadline,
            submitted,
            reply,
        };
        self.tx.send(request).map_err(|_| BatchError::Closed)?;
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(result)) => result,
            // The task dropped the reply without answering: it has ended.
            Ok(Err(_)) => Err(BatchError::Closed.into()),
            Err(_) => Err(BatchError::DeadlineExceeded.into()),
        }
    }
}

/// The gathering loop: one batch at a time, oldest request first.
async fn gather<R: BatchRun>(
    runner: Arc<R>,
    config: BatchConfig,
    mut rx: mpsc::UnboundedReceiver<Request<R>>,
) {
    let mut pending: VecDeque<Request<R>> = VecDeque::new();
    let mut open = true;
    loop {
        if pending.is_empty() {
            if !open {
                return;
            }
            match rx.recv().await {
                Some(request) => pending.push_back(request),
                None => return,
            }
        }
        // Whatever queued while the previous batch ran joins right away.
        while let Ok(request) = rx.try_recv() {
            pending.push_back(request);
        }
        prune(&mut pending);
        let Some(first) = pending.front() else {
            continue;
        };
        let key = first.key.clone();
        // The delay counts from the first item's submission, so items that
        // queued during the previous run do not wait a second time.
        let close_at = first.submitted + config.max_delay;
        let mut count = pending.iter().filter(|r| r.key == key).count();
        while open && count < config.max_batch {
            tokio::select! {
                biased;
                request = rx.recv() => match request {
                    Some(request) => {
                        count += usize::from(request.key == key);
                        pending.push_back(request);
                    }
                    None => open = false,
                },
                () = tokio::time::sleep_until(close_at) => break,
            }
        }
        let batch = take_batch(&mut pending, &key, config.max_batch);
        run_batch(&runner, key, batch).await;
    }
}

/// Drops withdrawn requests and fails expired ones, before they take a
/// place in a batch.
fn prune<R: BatchRun>(pending: &mut VecDeque<Request<R>>) {
    let now = Instant::now();
    let mut kept = VecDeque::with_capacity(pending.len());
    for request in pending.drain(..) {
        if let Some(request) = live(request, now) {
            kept.push_back(request);
        }
    }
    *pending = kept;
}

/// `Some(request)` if its submitter still waits and its deadline has not
/// passed; answers expired requests with `DeadlineExceeded`.
fn live<R: BatchRun>(request: Request<R>, now: Instant) -> Option<Request<R>> {
    if request.reply.is_closed() {
        return None;
    }
    if request.deadline <= now {
        // The submitter may have gone in the meantime: nothing to do then.
        let _ = request.reply.send(Err(BatchError::DeadlineExceeded.into()));
        return None;
    }
    Some(request)
}

/// Removes up to `max` requests of `key` from `pending`, oldest first,
/// leaving the others in their order.
fn take_batch<R: BatchRun>(
    pending: &mut VecDeque<Request<R>>,
    key: &R::Key,
    max: usize,
) -> Vec<Request<R>> {
    let mut batch = Vec::with_capacity(max);
    let mut rest = VecDeque::with_capacity(pending.len());
    for request in pending.drain(..) {
        if batch.len() < max && request.key == *key {
            batch.push(request);
        } else {
            rest.push_back(request);
        }
    }
    *pending = rest;
    batch
}

/// Admits, runs and scatters one batch. Every request of the batch gets
/// exactly one answer (unless its submitter has gone).
async fn run_batch<R: BatchRun>(runner: &Arc<R>, key: R::Key, batch: Vec<Request<R>>) {
    let now = Instant::now();
    let batch: Vec<_> = batch.into_iter().filter_map(|r| live(r, now)).collect();
    let Some(deadline) = batch.iter().map(|r| r.deadline).max() else {
        return;
    };
    // Admission may wait (VRAM busy); it waits at most as long as the
    // longest-waiting member still cares.
    let permit = match runner.admit(&key, batch.len(), deadline).await {
        Ok(permit) => permit,
        Err(error) => {
            for request in batch {
                let _ = request.reply.send(Err(error.clone()));
            }
            return;
        }
    };
    let now = Instant::now();
    let (items, replies): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .filter_map(|r| live(r, now))
        .map(|r| (r.item, r.reply))
        .unzip();
    if items.is_empty() {
        return;
    }
    let expected = items.len();
    let run_on = Arc::clone(runner);
    let result = tokio::task::spawn_blocking(move || run_on.run(&key, items)).await;
    drop(permit);
    let result = match result {
        Ok(Ok(outputs)) if outputs.len() == expected => Ok(outputs),
        Ok(Ok(outputs)) => Err(R::Error::from(BatchError::CountMismatch {
            expected,
            got: outputs.len(),
        })),
        Ok(Err(error)) => Err(error),
        // A panic in the run is contained to its own batch.
        Err(_) => Err(R::Error::from(BatchError::Panicked)),
    };
    match result {
        Ok(outputs) => {
            for (reply, output) in replies.into_iter().zip(outputs) {
                let _ = reply.send(Ok(output));
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

/// A [`BatchRun`] from a closure over a whole batch: one key, no admission.
pub struct FnRun<F, I, O, E> {
    run: F,
    // fn(I) -> (O, E): the types are only passed through, never stored,
    // so this is Send and Sync whatever I, O and E are.
    _types: PhantomData<fn(I) -> (O, E)>,
}

impl<F, I, O, E> FnRun<F, I, O, E> {
    pub fn new(run: F) -> Self {
        Self {
            run,
            _types: PhantomData,
        }
    }
}

impl<F, I, O, E> BatchRun for FnRun<F, I, O, E>
where
    F: Fn(Vec<I>) -> Result<Vec<O>, E> + Send + Sync + 'static,
    I: Send + 'static,
    O: Send + 'static,
    E: Clone + Send + From<BatchError> + 'static,
{
    type Key = ();
    type Item = I;
    type Output = O;
    type Error = E;
    type Permit = ();

    fn key(&self, _item: &I) {}

    async fn admit(&self, _key: &(), _size: usize, _deadline: Instant) -> Result<(), E> {
        Ok(())
    }

    fn run(&self, _key: &(), items: Vec<I>) -> Result<Vec<O>, E> {
        (self.run)(items)
    }
}

impl<F, I, O, E> MicroBatcher<FnRun<F, I, O, E>>
where
    F: Fn(Vec<I>) -> Result<Vec<O>, E> + Send + Sync + 'static,
    I: Send + 'static,
    O: Send + 'static,
    E: Clone + Send + From<BatchError> + 'static,
{
    /// A batcher over a plain closure (tests, benches).
    ///
    /// # Errors
    /// [`BatchError::NoRuntime`] outside a tokio runtime.
    pub fn from_fn(config: BatchConfig, run: F) -> Result<Self, BatchError> {
        Self::new(config, Arc::new(FnRun::new(run)))
    }
}
