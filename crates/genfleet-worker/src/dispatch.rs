//! Which delivery runs next when a slot frees: priority lanes first, then
//! fairness between workspaces.
//!
//! Each class has three lanes (queues): high, normal, low. The worker holds
//! up to `prefetch` deliveries of each lane; when a slot frees it starts the
//! waiting delivery of the highest lane, and within a lane the one whose
//! workspace has the fewest jobs running here (ties: the oldest).
//!
//! That alone cannot help a single job queued behind a 10,000-image batch:
//! the broker hands out a lane in FIFO order, so the worker would never even
//! see it. So a workspace gets a share: once it holds `cap` deliveries here
//! (running or waiting), its further high/normal deliveries are moved one lane
//! down (republished with a confirm, then acked). The batch drains into the
//! low lane at broker speed, the other tenant's job surfaces in its lane
//! within seconds, and the batch keeps every idle slot busy from the low
//! lane, where nothing is moved again. Each job is moved at most twice, and
//! a crash between the confirm and the ack leaves a duplicate that the
//! ledger's idempotency on `job_id` absorbs.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use genfleet_broker::{JobClass, Lane};
use tokio::sync::Notify;

/// A delivery taken from the broker, waiting for a slot. Generic so the
/// scheduling can be tested without a broker.
pub(crate) struct Waiting<T = crate::job::Delivery> {
    pub item: T,
    pub class: JobClass,
    pub lane: Lane,
    /// `org/workspace`, when the message names a valid tenant.
    pub workspace: Option<String>,
}

pub(crate) struct Dispatcher<T = crate::job::Delivery> {
    state: Mutex<State<T>>,
    ready: Notify,
    cap: usize,
}

struct State<T> {
    /// Indexed by lane: high, normal, low.
    waiting: [VecDeque<Waiting<T>>; 3],
    /// Deliveries held per workspace: running or waiting.
    held: HashMap<String, usize>,
    running: HashMap<String, usize>,
}

fn lane_index(lane: Lane) -> usize {
    match lane {
        Lane::High => 0,
        Lane::Normal => 1,
        Lane::Low => 2,
    }
}

impl<T> Default for State<T> {
    fn default() -> Self {
        State {
            waiting: [VecDeque::new(), VecDeque::new(), VecDeque::new()],
            held: HashMap::new(),
            running: HashMap::new(),
        }
    }
}

impl<T> State<T> {
    fn add(map: &mut HashMap<String, usize>, key: &str) {
        *map.entry(key.to_string()).or_insert(0) += 1;
    }

    fn remove(map: &mut HashMap<String, usize>, key: &str) {
        if let Some(n) = map.get_mut(key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(key);
            }
        }
    }
}

impl<T> Dispatcher<T> {
    /// `cap`: deliveries one workspace may hold before its high and normal
    /// ones are moved down a lane.
    pub(crate) fn new(cap: usize) -> Dispatcher<T> {
        Dispatcher {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            cap: cap.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        // The state is plain counters and queues, consistent after every
        // statement; a panic elsewhere while holding the lock leaves nothing
        // half-done, so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a delivery in, or hands it back with the lane it must move to
    /// because its workspace already holds its share of this worker.
    pub(crate) fn admit(&self, waiting: Waiting<T>) -> Result<(), (Waiting<T>, Lane)> {
        let mut state = self.lock();
        if let (Some(workspace), Some(below)) = (&waiting.workspace, waiting.lane.below()) {
            if state.held.get(workspace).copied().unwrap_or(0) >= self.cap {
                return Err((waiting, below));
            }
        }
        if let Some(workspace) = &waiting.workspace {
            State::<T>::add(&mut state.held, workspace);
        }
        state.waiting[lane_index(waiting.lane)].push_back(waiting);
        drop(state);
        // One dispatcher waits; a permit is stored if it is busy.
        self.ready.notify_one();
        Ok(())
    }

    /// The next delivery to start, once there is one. The caller holds a
    /// free slot and must call [`Dispatcher::finished`] when the job ends.
    ///
    /// # Cancel safety
    /// Cancel safe: a delivery is removed only in the poll that returns it.
    pub(crate) async fn next(&self) -> Waiting<T> {
        loop {
            if let Some(waiting) = self.take() {
                return waiting;
            }
            self.ready.notified().await;
        }
    }

    fn take(&self) -> Option<Waiting<T>> {
        let mut state = self.lock();
        let state = &mut *state;
        for lane in &mut state.waiting {
            let mut best: Option<(usize, usize)> = None;
            for (position, waiting) in lane.iter().enumerate() {
                let running = waiting
                    .workspace
                    .as_ref()
                    .and_then(|w| state.running.get(w))
                    .copied()
                    .unwrap_or(0);
                if best.is_none_or(|(_, fewest)| running < fewest) {
                    best = Some((position, running));
                    if running == 0 {
                        break;
                    }
                }
            }
            if let Some((position, _)) = best {
                let waiting = lane.remove(position)?;
                if let Some(workspace) = &waiting.workspace {
                    State::<T>::add(&mut state.running, workspace);
                }
                return Some(waiting);
            }
        }
        None
    }

    /// A job taken with [`Dispatcher::next`] ended.
    pub(crate) fn finished(&self, workspace: Option<&str>) {
        if let Some(workspace) = workspace {
            let mut state = self.lock();
            State::<T>::remove(&mut state.running, workspace);
            State::<T>::remove(&mut state.held, workspace);
        }
    }

    /// Removes every delivery still waiting (the session is ending).
    pub(crate) fn take_all_waiting(&self) -> Vec<Waiting<T>> {
        let mut state = self.lock();
        let mut all = Vec::new();
        for lane in 0..3 {
            while let Some(waiting) = state.waiting[lane].pop_front() {
                if let Some(workspace) = &waiting.workspace {
                    State::<T>::remove(&mut state.held, workspace);
                }
                all.push(waiting);
            }
        }
        all
    }

    pub(crate) fn waiting_len(&self) -> usize {
        self.lock().waiting.iter().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(item: u32, lane: Lane, workspace: &str) -> Waiting<u32> {
        Waiting {
            item,
            class: JobClass::Remote,
            lane,
            workspace: Some(workspace.to_string()),
        }
    }

    fn next_now(d: &Dispatcher<u32>) -> Option<u32> {
        d.take().map(|w| w.item)
    }

    #[test]
    fn higher_lanes_start_first() {
        let d = Dispatcher::new(10);
        d.admit(job(1, Lane::Low, "a/x")).ok().unwrap();
        d.admit(job(2, Lane::Normal, "a/x")).ok().unwrap();
        d.admit(job(3, Lane::High, "a/x")).ok().unwrap();
        assert_eq!(next_now(&d), Some(3));
        assert_eq!(next_now(&d), Some(2));
        assert_eq!(next_now(&d), Some(1));
        assert_eq!(next_now(&d), None);
    }

    #[test]
    fn a_workspace_past_its_share_moves_one_lane_down() {
        let d = Dispatcher::new(2);
        d.admit(job(1, Lane::Normal, "a/x")).ok().unwrap();
        d.admit(job(2, Lane::Normal, "a/x")).ok().unwrap();
        let (moved, to) = d.admit(job(3, Lane::Normal, "a/x")).err().unwrap();
        assert_eq!((moved.item, to), (3, Lane::Low));
        let (moved, to) = d.admit(job(4, Lane::High, "a/x")).err().unwrap();
        assert_eq!((moved.item, to), (4, Lane::Normal));
        // The low lane is where surplus runs: never moved again.
        d.admit(job(5, Lane::Low, "a/x")).ok().unwrap();
        // Another workspace is not affected.
        d.admit(job(6, Lane::Normal, "b/y")).ok().unwrap();
        // Low-lane deliveries count towards the share too: a, holding 1, 2
        // and 5, frees a share only when two of them have finished.
        for expected in [1, 2] {
            let first = d.take().unwrap();
            assert_eq!(first.item, expected);
            d.finished(first.workspace.as_deref());
            let admitted = d.admit(job(7, Lane::Normal, "a/x")).is_ok();
            assert_eq!(admitted, expected == 2, "after {expected} finished");
        }
    }

    #[test]
    fn within_a_lane_the_least_busy_workspace_goes_first() {
        let d = Dispatcher::new(100);
        for i in 0..5 {
            d.admit(job(i, Lane::Normal, "big/batch")).ok().unwrap();
        }
        d.admit(job(100, Lane::Normal, "small/one")).ok().unwrap();
        // The batch's oldest starts; then the other workspace has fewer
        // running jobs, so its job goes before the batch's second.
        assert_eq!(next_now(&d), Some(0));
        assert_eq!(next_now(&d), Some(100));
        assert_eq!(next_now(&d), Some(1));
    }

    #[test]
    fn messages_without_a_tenant_are_never_moved() {
        let d: Dispatcher<u32> = Dispatcher::new(1);
        for i in 0..3 {
            d.admit(Waiting {
                item: i,
                class: JobClass::Cpu,
                lane: Lane::Normal,
                workspace: None,
            })
            .ok()
            .unwrap();
        }
        assert_eq!(d.waiting_len(), 3);
        assert_eq!(d.take_all_waiting().len(), 3);
        assert_eq!(d.waiting_len(), 0);
    }

    #[tokio::test]
    async fn next_waits_for_an_admission() {
        let d = std::sync::Arc::new(Dispatcher::new(1));
        let waiter = {
            let d = d.clone();
            tokio::spawn(async move { d.next().await.item })
        };
        tokio::task::yield_now().await;
        d.admit(job(9, Lane::Normal, "a/x")).ok().unwrap();
        assert_eq!(waiter.await.unwrap(), 9);
    }
}
