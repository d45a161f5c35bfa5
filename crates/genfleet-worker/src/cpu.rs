//! The worker's bound on CPU-heavy image work (decode, resize, matte,
//! encode): at most one task per core on tokio's blocking pool, whatever the
//! job concurrency, so image work never starves the async runtime and jobs
//! that mostly wait on providers can run many at once.

use std::sync::Arc;

use tokio::sync::Semaphore;

#[derive(Clone)]
pub struct CpuPool {
    slots: Arc<Semaphore>,
}

impl CpuPool {
    /// `threads` tasks at once; 0 means one per CPU.
    pub fn new(threads: usize) -> CpuPool {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(2, usize::from)
        } else {
            threads
        };
        CpuPool {
            slots: Arc::new(Semaphore::new(threads)),
        }
    }

    /// Runs `work` on the blocking pool once a slot is free.
    ///
    /// # Errors
    /// A message when the pool is closed or the task panicked.
    pub async fn run<T, F>(&self, work: F) -> Result<T, String>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| "worker is shutting down".to_string())?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| format!("image task failed: {e}"))
    }
}
