//! VRAM admission: GPU work waits for room instead of failing mid-run with
//! an out-of-memory error.
//!
//! # The rule
//!
//! A request of `bytes` is admitted when it is first in line and
//! `free − headroom − promised ≥ bytes`, where `free` is the probe's reading
//! of the device and `promised` sums the bytes of permits that are not yet
//! *settled*. A permit settles when its holder calls
//! [`VramPermit::settled`] (its memory is allocated, so the device reading
//! shows it) or, as a fallback for holders that never say, once it is
//! older than the settle time ([`DEFAULT_SETTLE`]).
//!
//! Why not subtract every outstanding permit: NVML already reports what our
//! running work allocated, so subtracting it again would count it twice and
//! starve the device. Why subtract unsettled ones: between admission and the
//! first allocation the device still looks free, and without them a burst of
//! requests would all be admitted against the same free bytes. Counting an
//! unsettled permit whose memory already shows is the safe error (a short
//! wait, never an out-of-memory), and the settle time bounds it.
//!
//! The line is strictly first-come, first-served: only the head may be
//! admitted, so a waiting large request holds back later small ones instead
//! of being overtaken by them forever. Waiters wake when a permit drops or
//! settles or the head changes (a [`Notify`]), and re-read the probe every
//! poll interval, because other processes free memory without telling us.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::GpuProbe;

/// How often a waiting head re-reads the probe.
pub const DEFAULT_POLL: Duration = Duration::from_millis(50);

/// How long an admitted permit counts as promised when its holder never
/// calls [`VramPermit::settled`]: long enough for a batch to allocate its
/// activations once it has the permit.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(2);

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    /// The request is larger than the device's memory less the headroom:
    /// it would wait forever, so it fails at once.
    #[error(
        "needs {needed} bytes of VRAM; the device has {total} in all, less the headroom kept free"
    )]
    NeverFits { needed: u64, total: u64 },
    /// The deadline passed while the request waited; `free` is the device's
    /// free memory when it gave up.
    #[error("VRAM admission deadline passed: needs {needed} bytes, {free} free on the device")]
    DeadlineExceeded { needed: u64, free: u64 },
    /// The probe does not list the GPU this admission was built for.
    #[error("no GPU {index} to admit work on")]
    NoSuchGpu { index: u32 },
}

#[derive(Debug)]
struct Outstanding {
    bytes: u64,
    admitted_at: Instant,
    settled: bool,
}

#[derive(Debug, Default)]
struct State {
    /// Ticket ids of waiting requests, oldest first.
    line: VecDeque<u64>,
    /// Permits not yet dropped, by ticket id.
    outstanding: HashMap<u64, Outstanding>,
    next_id: u64,
}

impl State {
    fn promised(&self, now: Instant, settle: Duration) -> u64 {
        self.outstanding
            .values()
            .filter(|permit| !permit.settled && now.duration_since(permit.admitted_at) < settle)
            .fold(0u64, |sum, permit| sum.saturating_add(permit.bytes))
    }
}

/// What permits share with their admission: the line, the outstanding
/// permits and the wake-up.
#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    notify: Notify,
}

impl Shared {
    // The state is only counters and ids, each update a single step, so a
    // panic elsewhere while it was held leaves it consistent: poisoning is
    // ignored rather than turned into a panic in every later caller.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Admission of GPU work on one device by VRAM. Cheap to clone; clones share
/// the line and the permits.
#[derive(Clone)]
pub struct VramAdmission {
    probe: Arc<dyn GpuProbe>,
    index: u32,
    headroom: u64,
    /// Read once: a device's total memory does not change while we run.
    total: Option<u64>,
    settle: Duration,
    poll: Duration,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for VramAdmission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VramAdmission")
            .field("probe", &self.probe.describe())
            .field("index", &self.index)
            .field("headroom", &self.headroom)
            .field("total", &self.total)
            .field("settle", &self.settle)
            .field("poll", &self.poll)
            .finish_non_exhaustive()
    }
}

impl VramAdmission {
    /// Admission on GPU `index` of `probe`, keeping `headroom_bytes` free
    /// for what no footprint measures (CUDA context, library workspaces,
    /// other processes' growth).
    pub fn new(probe: Arc<dyn GpuProbe>, index: u32, headroom_bytes: u64) -> Self {
        let total = probe
            .gpus()
            .into_iter()
            .find(|gpu| gpu.index == index)
            .map(|gpu| gpu.memory_total_bytes);
        Self {
            probe,
            index,
            headroom: headroom_bytes,
            total,
            settle: DEFAULT_SETTLE,
            poll: DEFAULT_POLL,
            shared: Arc::new(Shared::default()),
        }
    }

    /// Replaces [`DEFAULT_SETTLE`]; `Duration::MAX` makes only
    /// [`VramPermit::settled`] settle a permit.
    pub fn with_settle_time(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// Replaces [`DEFAULT_POLL`].
    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn headroom_bytes(&self) -> u64 {
        self.headroom
    }

    /// The device's total memory, `None` when the probe does not list it.
    pub fn total_bytes(&self) -> Option<u64> {
        self.total
    }

    /// Bytes of permits admitted but not yet settled, which admission
    /// subtracts from the device's free memory.
    pub fn promised_bytes(&self) -> u64 {
        self.shared.lock().promised(Instant::now(), self.settle)
    }

    /// Requests waiting in line.
    pub fn waiting(&self) -> usize {
        self.shared.lock().line.len()
    }

    /// Waits until `bytes` of VRAM can be promised to the caller, in line
    /// behind earlier requests, or until `deadline`. A request that fits at
    /// once is admitted even when the deadline has already passed: the
    /// deadline bounds waiting, and refusing work that costs no wait would
    /// only waste it. Cancel-safe: dropping the future leaves the line.
    pub async fn admit(&self, bytes: u64, deadline: Instant) -> Result<VramPermit, AdmissionError> {
        let started = Instant::now();
        let total = self
            .total
            .ok_or(AdmissionError::NoSuchGpu { index: self.index })?;
        if bytes > total.saturating_sub(self.headroom) {
            return Err(AdmissionError::NeverFits {
                needed: bytes,
                total,
            });
        }
        let mut ticket = self.join_line();
        let mut last_free = None;
        loop {
            // Registered before the check, so a wake-up between the check
            // and the wait is not lost.
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            if let Some(permit) = self.try_admit(&mut ticket, bytes, started, &mut last_free) {
                return Ok(permit);
            }
            let now = Instant::now();
            if now >= deadline {
                let free = match last_free {
                    Some(free) => free,
                    // Never reached the head: read the device for the error.
                    None => self.probe.free_memory(self.index).unwrap_or(0),
                };
                return Err(AdmissionError::DeadlineExceeded {
                    needed: bytes,
                    free,
                });
            }
            let wake = now
                .checked_add(self.poll)
                .map_or(deadline, |poll| poll.min(deadline));
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    fn join_line(&self) -> Ticket {
        let mut state = self.shared.lock();
        let id = state.next_id;
        state.next_id += 1;
        state.line.push_back(id);
        Ticket {
            shared: Arc::clone(&self.shared),
            id,
            admitted: false,
        }
    }

    fn try_admit(
        &self,
        ticket: &mut Ticket,
        bytes: u64,
        started: Instant,
        last_free: &mut Option<u64>,
    ) -> Option<VramPermit> {
        // `promised` is taken before the device is read: a permit that
        // settles in between has (by the settle contract) allocated before
        // the read, so the read shows its memory. Taken after, it could be
        // missed by both and its bytes promised twice.
        let promised = {
            let state = self.shared.lock();
            if state.line.front() != Some(&ticket.id) {
                return None;
            }
            state.promised(Instant::now(), self.settle)
        };
        // Read outside the lock because the probe may be a driver call.
        // Nothing else can be admitted meanwhile: only the head admits and
        // only this task holds the head's ticket.
        let free = self.probe.free_memory(self.index)?;
        *last_free = Some(free);
        let available = free.saturating_sub(self.headroom).saturating_sub(promised);
        if bytes > available {
            return None;
        }
        let admitted_at = Instant::now();
        {
            let mut state = self.shared.lock();
            state.line.pop_front();
            state.outstanding.insert(
                ticket.id,
                Outstanding {
                    bytes,
                    admitted_at,
                    settled: false,
                },
            );
        }
        ticket.admitted = true;
        // The next in line may fit in what is left.
        self.shared.notify.notify_waiters();
        Some(VramPermit {
            shared: Arc::clone(&self.shared),
            id: ticket.id,
            bytes,
            waited: admitted_at.duration_since(started),
        })
    }
}

/// A place in line; leaves it when the request is cancelled.
struct Ticket {
    shared: Arc<Shared>,
    id: u64,
    admitted: bool,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.admitted {
            return;
        }
        let mut state = self.shared.lock();
        let was_head = state.line.front() == Some(&self.id);
        state.line.retain(|id| *id != self.id);
        drop(state);
        if was_head {
            // A cancelled head must not hold back the one behind it.
            self.shared.notify.notify_waiters();
        }
    }
}

/// VRAM promised to one piece of work; returns it when dropped. Drop it
/// after the work has released its device memory (or handed it back to a
/// caching allocator whose hold the device reading shows anyway).
#[derive(Debug)]
pub struct VramPermit {
    shared: Arc<Shared>,
    id: u64,
    bytes: u64,
    waited: Duration,
}

impl VramPermit {
    /// The bytes admitted.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// How long admission waited before granting this permit.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Tells admission that this work's memory is now allocated (shows in
    /// the device's reading), so it stops being subtracted as promised.
    /// Call it after the allocation, never before: early, the same bytes
    /// could be promised to someone else. Idempotent.
    pub fn settled(&self) {
        let changed = {
            let mut state = self.shared.lock();
            match state.outstanding.get_mut(&self.id) {
                Some(permit) if !permit.settled => {
                    permit.settled = true;
                    true
                }
                _ => false,
            }
        };
        if changed {
            self.shared.notify.notify_waiters();
        }
    }
}

impl Drop for VramPermit {
    fn drop(&mut self) {
        self.shared.lock().outstanding.remove(&self.id);
        self.shared.notify.notify_waiters();
    }
}

#[cfg(test)]
mod tests;
