//! A scripted [`Provider`] for tests of the retry loop and the guard: no
//! network, answers from a script, counts and times calls.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::{GenerationOutput, GenerationRequest, JobKind, Provider, ProviderError};

/// Answers each call with the next scripted result (success once the script
/// runs out), after `hold` of (paused) time, and counts calls and overlap.
/// Calls for a model in `down` always fail retryably instead, like a
/// custom fal app that always answers 503.
#[derive(Default)]
pub(crate) struct Scripted {
    pub(crate) answers: Mutex<VecDeque<Result<(), ProviderError>>>,
    pub(crate) down: Mutex<HashSet<String>>,
    pub(crate) hold: Duration,
    pub(crate) calls: AtomicU32,
    pub(crate) running: AtomicUsize,
    pub(crate) max_running: AtomicUsize,
    pub(crate) call_times: Mutex<Vec<Instant>>,
}

impl Scripted {
    pub(crate) fn new(answers: Vec<Result<(), ProviderError>>) -> Self {
        Self {
            answers: Mutex::new(answers.into()),
            ..Self::default()
        }
    }

    pub(crate) fn holding(hold: Duration) -> Self {
        Self {
            hold,
            ..Self::default()
        }
    }

    pub(crate) fn take_down(&self, model: &str) {
        self.down.lock().unwrap().insert(model.to_owned());
    }

    pub(crate) fn push(&self, answer: Result<(), ProviderError>) {
        self.answers.lock().unwrap().push_back(answer);
    }

    pub(crate) fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    pub(crate) fn call_times(&self) -> Vec<Instant> {
        self.call_times.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl Provider for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }

    async fn generate(
        &self,
        request: &GenerationRequest,
    ) -> Result<GenerationOutput, ProviderError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.call_times.lock().unwrap().push(Instant::now());
        let running = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(running, Ordering::SeqCst);
        if !self.hold.is_zero() {
            tokio::time::sleep(self.hold).await;
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        let answer = if self.down.lock().unwrap().contains(&request.model) {
            unavailable()
        } else {
            self.answers.lock().unwrap().pop_front().unwrap_or(Ok(()))
        };
        answer.map(|()| GenerationOutput {
            artifacts: Vec::new(),
            attempts: 1,
            request_id: None,
        })
    }
}

pub(crate) fn request_for(model: &str, deadline: Option<Instant>) -> GenerationRequest {
    GenerationRequest {
        job_id: "job-1".into(),
        kind: JobKind::ProductPhoto,
        model: model.into(),
        prompt: "a red shoe".into(),
        negative_prompt: String::new(),
        seed: None,
        count: 1,
        aspect_ratio: String::new(),
        parameters: serde_json::Map::new(),
        inputs: Vec::new(),
        deadline,
    }
}

fn unavailable() -> Result<(), ProviderError> {
    Err(ProviderError::Unavailable {
        message: "busy".into(),
        retry_after: None,
    })
}
