//! Admission against a simulated GPU. Most tests run on paused time, so the
//! waits they assert are exact instants, not timing guesses.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{AdmissionError, VramAdmission, DEFAULT_POLL, DEFAULT_SETTLE};
use crate::gpu::{GpuProbe, NoGpu, SimulatedGpu};

fn setup(total: u64, headroom: u64) -> (Arc<SimulatedGpu>, VramAdmission) {
    let gpu = Arc::new(SimulatedGpu::new(total));
    let probe: Arc<dyn GpuProbe> = Arc::clone(&gpu) as Arc<dyn GpuProbe>;
    (gpu, VramAdmission::new(probe, 0, headroom))
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

#[tokio::test(start_paused = true)]
async fn admits_at_once_when_there_is_room() {
    let (_gpu, admission) = setup(1000, 100);
    let permit = admission.admit(900, far()).await.unwrap();
    assert_eq!(permit.bytes(), 900);
    assert_eq!(permit.waited(), Duration::ZERO);
    assert_eq!(admission.promised_bytes(), 900);
    drop(permit);
    assert_eq!(admission.promised_bytes(), 0);
    assert_eq!(admission.waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_headroom_is_kept_free() {
    let (gpu, admission) = setup(1000, 100);
    gpu.set_external_use(400);
    // 600 free, 100 of it headroom: 501 waits until the deadline, 500 fits.
    let start = Instant::now();
    assert_eq!(
        admission.admit(501, start + ms(200)).await.unwrap_err(),
        AdmissionError::DeadlineExceeded {
            needed: 501,
            free: 600
        }
    );
    let permit = admission.admit(500, Instant::now()).await.unwrap();
    assert_eq!(permit.waited(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn waits_while_others_use_memory_and_is_admitted_within_a_poll_of_release() {
    let (gpu, admission) = setup(1000, 100);
    // 1000 − 600 − 100 headroom = 300 free for us: 500 must wait.
    gpu.set_external_use(600);
    let waiter = {
        let admission = admission.clone();
        tokio::spawn(async move { admission.admit(500, far()).await })
    };
    // Released between two polls, so the admission below can only come
    // from the poll that follows.
    tokio::time::sleep(ms(1010)).await;
    assert!(
        !waiter.is_finished(),
        "admitted while only 300 bytes were free"
    );
    assert_eq!(admission.waiting(), 1);
    gpu.set_external_use(0);
    let permit = waiter.await.unwrap().unwrap();
    assert!(permit.waited() > ms(1010), "{:?}", permit.waited());
    assert!(
        permit.waited() <= ms(1010) + DEFAULT_POLL,
        "{:?}",
        permit.waited()
    );
}

#[tokio::test(start_paused = true)]
async fn waits_until_a_permit_drops_and_wakes_without_waiting_for_a_poll() {
    let (gpu, admission) = setup(1000, 100);
    let first = admission.admit(600, far()).await.unwrap();
    gpu.allocate(600).unwrap();
    first.settled();
    let waiter = {
        let admission = admission.clone();
        tokio::spawn(async move { admission.admit(500, far()).await })
    };
    tokio::time::sleep(ms(1025)).await;
    assert!(
        !waiter.is_finished(),
        "admitted while the first permit held 600"
    );
    gpu.free(600);
    drop(first);
    let permit = waiter.await.unwrap().unwrap();
    // The next poll would be at 1050 ms: admission at 1025 ms exactly shows
    // the drop woke the waiter.
    assert_eq!(permit.waited(), ms(1025));
}

#[tokio::test(start_paused = true)]
async fn unsettled_permits_are_promised_and_settled_ones_are_not_counted_twice() {
    let (gpu, admission) = setup(1000, 0);
    let admission = admission.with_settle_time(Duration::MAX);
    let first = admission.admit(600, far()).await.unwrap();
    // Not allocated yet: the device still reads 1000 free, but 600 of it is
    // promised, so 500 must not be admitted.
    let start = Instant::now();
    let refused = admission.admit(500, start + ms(1000)).await;
    assert_eq!(
        refused.unwrap_err(),
        AdmissionError::DeadlineExceeded {
            needed: 500,
            free: 1000
        }
    );
    // Allocated and settled: the device reading shows it (400 free) and it
    // is no longer promised, so 400 fits at once.
    gpu.allocate(600).unwrap();
    first.settled();
    assert_eq!(admission.promised_bytes(), 0);
    let second = admission.admit(400, Instant::now()).await.unwrap();
    assert_eq!(second.waited(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn an_unsettled_permit_stops_counting_after_the_settle_time() {
    let (_gpu, admission) = setup(1000, 0);
    let _silent = admission.admit(600, far()).await.unwrap();
    let permit = admission.admit(500, far()).await.unwrap();
    assert!(permit.waited() >= DEFAULT_SETTLE, "{:?}", permit.waited());
    assert!(
        permit.waited() <= DEFAULT_SETTLE + DEFAULT_POLL,
        "{:?}",
        permit.waited()
    );
}

#[tokio::test(start_paused = true)]
async fn deadline_error_carries_the_numbers_and_comes_on_time() {
    let (gpu, admission) = setup(1000, 100);
    gpu.set_external_use(800);
    let start = Instant::now();
    let error = admission.admit(500, start + ms(1000)).await.unwrap_err();
    assert_eq!(
        error,
        AdmissionError::DeadlineExceeded {
            needed: 500,
            free: 200
        }
    );
    assert_eq!(start.elapsed(), ms(1000));
    assert_eq!(admission.waiting(), 0, "a timed-out request left the line");
}

#[tokio::test(start_paused = true)]
async fn never_fits_fails_at_once_even_while_others_wait() {
    let (_gpu, admission) = setup(1000, 100);
    let _held = admission.admit(900, far()).await.unwrap();
    let start = Instant::now();
    let error = admission.admit(901, far()).await.unwrap_err();
    assert_eq!(
        error,
        AdmissionError::NeverFits {
            needed: 901,
            total: 1000
        }
    );
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(error.to_string().contains("901"));
}

#[tokio::test(start_paused = true)]
async fn a_gpu_the_probe_does_not_list_is_an_error() {
    let gpu: Arc<dyn GpuProbe> = Arc::new(SimulatedGpu::new(1000));
    let admission = VramAdmission::new(gpu, 1, 0);
    assert_eq!(
        admission.admit(1, far()).await.unwrap_err(),
        AdmissionError::NoSuchGpu { index: 1 }
    );
    let admission = VramAdmission::new(Arc::new(NoGpu), 0, 0);
    assert_eq!(admission.total_bytes(), None);
    assert_eq!(
        admission.admit(1, far()).await.unwrap_err(),
        AdmissionError::NoSuchGpu { index: 0 }
    );
}

#[tokio::test(start_paused = true)]
async fn a_big_request_is_not_starved_by_a_stream_of_small_ones() {
    let (gpu, admission) = setup(1000, 0);
    let order = Arc::new(Mutex::new(Vec::new()));
    let held = admission.admit(400, far()).await.unwrap();
    gpu.allocate(400).unwrap();
    held.settled();

    // 800 does not fit beside the 400 held.
    let big = {
        let (admission, gpu, order) = (admission.clone(), Arc::clone(&gpu), Arc::clone(&order));
        tokio::spawn(async move {
            let permit = admission.admit(800, far()).await.unwrap();
            order.lock().unwrap().push("big");
            gpu.allocate(800).unwrap();
            permit.settled();
            tokio::time::sleep(ms(50)).await;
            gpu.free(800);
            permit.waited()
        })
    };
    // Small requests, overlapping so that without first-come-first-served
    // the device would never again have 800 free while they keep coming.
    let mut smalls = Vec::new();
    for i in 0..20u64 {
        let (admission, gpu, order) = (admission.clone(), Arc::clone(&gpu), Arc::clone(&order));
        smalls.push(tokio::spawn(async move {
            tokio::time::sleep(ms(5 + 10 * i)).await;
            let permit = admission.admit(400, far()).await.unwrap();
            order.lock().unwrap().push("small");
            gpu.allocate(400).unwrap();
            permit.settled();
            tokio::time::sleep(ms(100)).await;
            gpu.free(400);
        }));
    }
    tokio::time::sleep(ms(200)).await;
    gpu.free(400);
    drop(held);

    let big_waited = big.await.unwrap();
    assert_eq!(
        big_waited,
        ms(200),
        "the big request waited past the release"
    );
    for small in smalls {
        small.await.unwrap();
    }
    let order = order.lock().unwrap();
    assert_eq!(order.len(), 21);
    assert_eq!(
        order[0], "big",
        "a small request overtook the big one: {order:?}"
    );
    assert_eq!(gpu.refused_allocations(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_head_does_not_hold_back_the_line() {
    let (gpu, admission) = setup(1000, 0);
    let held = admission.admit(600, far()).await.unwrap();
    gpu.allocate(600).unwrap();
    held.settled();
    let big = {
        let admission = admission.clone();
        tokio::spawn(async move { tokio::time::timeout(ms(10), admission.admit(800, far())).await })
    };
    let small = {
        let admission = admission.clone();
        tokio::spawn(async move {
            tokio::time::sleep(ms(1)).await;
            admission.admit(300, far()).await
        })
    };
    assert!(big.await.unwrap().is_err(), "800 fitted beside 600 held");
    let permit = small.await.unwrap().unwrap();
    // Behind the big request until it was cancelled at 10 ms, admitted at
    // that instant rather than at its next poll.
    assert_eq!(permit.waited(), ms(9));
    assert_eq!(admission.waiting(), 0);
}

/// Many tasks at once on a multi-threaded runtime, in real time: each
/// allocates its admitted bytes on the simulated device a little after
/// admission (the window the promised bytes cover), holds, frees. Other
/// processes' use drops midway. The device must never be asked for more
/// than it has, nor our use plus theirs exceed total less headroom.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_admits_never_exceed_capacity() {
    const TOTAL: u64 = 1000;
    const HEADROOM: u64 = 100;
    let (gpu, admission) = setup(TOTAL, HEADROOM);
    gpu.set_external_use(300);
    let live = Arc::new(AtomicUsize::new(0));
    let most_live = Arc::new(AtomicUsize::new(0));

    // A fixed linear congruential sequence: varied sizes and timings, the
    // same on every run.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |below: u64| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % below
    };
    let mut tasks = Vec::new();
    for i in 0..64u64 {
        let bytes = 50 + next(351);
        let gap = next(3);
        let hold = 1 + next(8);
        let (admission, gpu) = (admission.clone(), Arc::clone(&gpu));
        let (live, most_live) = (Arc::clone(&live), Arc::clone(&most_live));
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            let permit = admission.admit(bytes, deadline).await.unwrap();
            let now_live = live.fetch_add(1, Ordering::SeqCst) + 1;
            most_live.fetch_max(now_live, Ordering::SeqCst);
            tokio::time::sleep(ms(gap)).await;
            let allocated = gpu.allocate(bytes);
            // Half the holders say when their memory shows; the rest rely on
            // the settle time.
            if i % 2 == 0 {
                permit.settled();
            }
            tokio::time::sleep(ms(hold)).await;
            if allocated.is_ok() {
                gpu.free(bytes);
            }
            live.fetch_sub(1, Ordering::SeqCst);
            drop(permit);
            allocated
        }));
    }
    tokio::time::sleep(ms(30)).await;
    gpu.set_external_use(0);
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(gpu.refused_allocations(), 0);
    assert!(
        gpu.peak_used() <= TOTAL - HEADROOM,
        "peak use {} over {}",
        gpu.peak_used(),
        TOTAL - HEADROOM
    );
    assert!(
        most_live.load(Ordering::SeqCst) >= 2,
        "never more than one permit at once: the test proves nothing"
    );
    assert_eq!(admission.promised_bytes(), 0);
    assert_eq!(gpu.used(), 0);
}
