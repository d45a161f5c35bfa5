//! The token cache with single-flight refresh, independent of where tokens
//! come from.

use super::*;

/// The token cache with single-flight refresh, independent of where tokens
/// come from (so its timing can be tested on a paused clock).
#[derive(Default)]
pub(crate) struct Cache {
    state: Mutex<CacheState>,
    /// Held while a refresh runs; never held with `state`'s lock across an
    /// await.
    refresh: tokio::sync::Mutex<()>,
}

#[derive(Default)]
pub(super) struct CacheState {
    current: Option<Cached>,
    /// Generations handed out so far.
    generations: u64,
    /// Refreshes finished (either way) so far.
    refreshes: u64,
    /// The last refresh's failure, when it failed.
    last_failure: Option<ProviderError>,
    /// Vertex refused the latest token and has accepted none since.
    refused: bool,
}

impl Cache {
    fn lock(&self) -> MutexGuard<'_, CacheState> {
        // Nothing in the state is left half-updated by a panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn usable(&self, usable: &impl Fn(&Cached) -> bool) -> Option<AccessToken> {
        self.lock()
            .current
            .as_ref()
            .filter(|cached| usable(cached))
            .map(|cached| AccessToken {
                authorization: cached.authorization.clone(),
                generation: cached.generation,
            })
    }

    /// The cached token if `usable` says so, else the outcome of a refresh:
    /// ours, or the one that finished while we queued.
    pub(crate) async fn get<F, Fut>(
        &self,
        deadline: Option<Instant>,
        usable: impl Fn(&Cached) -> bool,
        fetch: F,
    ) -> Result<AccessToken, ProviderError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fetched, ProviderError>>,
    {
        if let Some(token) = self.usable(&usable) {
            return Ok(token);
        }
        let seen = self.lock().refreshes;
        let _refreshing = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, self.refresh.lock())
                .await
                .map_err(|_| ProviderError::DeadlineExceeded)?,
            None => self.refresh.lock().await,
        };
        if let Some(token) = self.usable(&usable) {
            return Ok(token);
        }
        {
            let state = self.lock();
            if state.refreshes != seen {
                if let Some(shared) = state.last_failure.as_ref().and_then(share) {
                    return Err(shared);
                }
            }
        }
        // If this future is dropped here, the lock is released and the next
        // waiter refreshes: nothing is recorded for an abandoned refresh.
        let fetched = fetch().await;
        let mut state = self.lock();
        state.refreshes += 1;
        match fetched {
            Ok(fetched) => {
                state.generations += 1;
                let generation = state.generations;
                let unproven = state.refused;
                state.last_failure = None;
                state.current = Some(Cached {
                    authorization: fetched.authorization.clone(),
                    generation,
                    refresh_at: fetched.refresh_at,
                    stamp: fetched.stamp,
                    unproven,
                });
                tracing::debug!(generation, "fetched a vertex access token");
                Ok(AccessToken {
                    authorization: fetched.authorization,
                    generation,
                })
            }
            Err(err) => {
                state.last_failure = share(&err);
                Err(err)
            }
        }
    }

    /// See [`TokenSource::rejected`].
    pub(crate) fn rejected(&self, generation: u64) -> bool {
        let mut state = self.lock();
        match &state.current {
            Some(cached) if cached.generation == generation => {
                let may_help = !cached.unproven;
                state.current = None;
                state.refused = true;
                tracing::info!(
                    generation,
                    refresh_may_help = may_help,
                    "vertex refused an access token; dropped it"
                );
                may_help
            }
            // Already replaced (another job saw the 401 first) or dropped:
            // the next attempt gets a newer token.
            _ => true,
        }
    }

    /// See [`TokenSource::accepted`].
    pub(crate) fn accepted(&self, generation: u64) {
        let mut state = self.lock();
        if let Some(cached) = state.current.as_mut() {
            if cached.generation == generation && cached.unproven {
                cached.unproven = false;
                state.refused = false;
            }
        }
    }
}
