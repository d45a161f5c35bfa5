//! The [`Engine`]: the runtime, the chosen execution provider, and the
//! models, each loaded on first use (hash-checked, footprint measured) with
//! its own micro-batcher. The per-operation pre- and post-processing lives
//! in `matte.rs` and `upscale.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant as StdInstant;

use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::batcher::{BatchConfig, BatchRun, MicroBatcher};
use crate::gpu::{GpuProbe, VramAdmission, VramPermit};
use crate::registry::{self, InputSize, ModelSpec};
use crate::runtime::{self, ModelSession, Runtime};
use crate::{ExecutionProvider, InferenceConfig, InferenceError, InferenceObserver, LoadedModel};

/// The GPU this engine runs on (one process serves one GPU per device
/// index; multi-GPU placement is the worker's business).
const GPU_INDEX: u32 = 0;

/// Local inference: cheap to clone, shared by every job of a worker.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    config: InferenceConfig,
    runtime: Arc<Runtime>,
    provider: ExecutionProvider,
    gpus: Arc<dyn GpuProbe>,
    admission: Option<Arc<VramAdmission>>,
    observer: Option<Arc<dyn InferenceObserver>>,
    models: Mutex<HashMap<&'static str, Arc<OnceCell<Arc<Model>>>>>,
    loaded: Mutex<Vec<LoadedModel>>,
}

/// One loaded model and the batcher in front of it.
pub(crate) struct Model {
    pub spec: &'static ModelSpec,
    pub batcher: MicroBatcher<ModelRun>,
}

/// One item of a model batch: planar `[c, h, w]` floats.
pub(crate) struct Tensor {
    pub shape: [usize; 3],
    pub data: Vec<f32>,
}

/// Runs batches of one model (the batcher's [`BatchRun`]).
pub(crate) struct ModelRun {
    spec: &'static ModelSpec,
    session: Arc<ModelSession>,
    admission: Option<Arc<VramAdmission>>,
    observer: Option<Arc<dyn InferenceObserver>>,
}

impl BatchRun for ModelRun {
    type Key = [usize; 3];
    type Item = Tensor;
    type Output = Tensor;
    type Error = InferenceError;
    type Permit = Option<VramPermit>;

    fn key(&self, item: &Tensor) -> [usize; 3] {
        item.shape
    }

    async fn admit(
        &self,
        key: &[usize; 3],
        size: usize,
        deadline: Instant,
    ) -> Result<Option<VramPermit>, InferenceError> {
        // On the CPU there is nothing to admit: the worker's concurrency
        // bound already limits host memory.
        let Some(admission) = &self.admission else {
            return Ok(None);
        };
        let bytes = self.spec.activation_bytes(size, (key[1] * key[2]) as u64);
        let permit =
            admission
                .admit(bytes, deadline)
                .await
                .map_err(|e| InferenceError::Overloaded {
                    message: format!("{}: {e}", self.spec.name),
                })?;
        if let Some(observer) = &self.observer {
            observer.admission_waited(self.spec.name, permit.waited().as_secs_f64());
        }
        Ok(Some(permit))
    }

    fn run(&self, key: &[usize; 3], items: Vec<Tensor>) -> Result<Vec<Tensor>, InferenceError> {
        let started = StdInstant::now();
        let n = items.len();
        let [c, h, w] = *key;
        let mut data = Vec::with_capacity(n * c * h * w);
        for item in &items {
            data.extend_from_slice(&item.data);
        }
        let (shape, values) = self.session.run([n, c, h, w], &data)?;
        let [on, oc, oh, ow] = <[usize; 4]>::try_from(shape.as_slice()).map_err(|_| {
            InferenceError::failed(format!(
                "{} returned a {}-d output",
                self.spec.name,
                shape.len()
            ))
        })?;
        if on != n || values.len() != n || values.iter().any(|v| v.len() != oc * oh * ow) {
            return Err(InferenceError::failed(format!(
                "{} returned {on} items for {n}",
                self.spec.name
            )));
        }
        let outputs = values
            .into_iter()
            .map(|data| Tensor {
                shape: [oc, oh, ow],
                data,
            })
            .collect();
        if let Some(observer) = &self.observer {
            observer.batch_ran(self.spec.name, n, started.elapsed().as_secs_f64());
        }
        Ok(outputs)
    }
}

impl Engine {
    /// Loads ONNX Runtime and chooses the execution provider; models load
    /// lazily, on first use or [`Engine::preload`].
    ///
    /// # Errors
    /// `Unavailable` when the library is missing (naming the path tried and
    /// the config key or environment variable it came from) or none of the
    /// configured execution providers works.
    pub fn open(
        config: InferenceConfig,
        gpus: Arc<dyn GpuProbe>,
        observer: Option<Arc<dyn InferenceObserver>>,
    ) -> Result<Engine, InferenceError> {
        let (path, source) = runtime::library_path(&config);
        let runtime = runtime::load(&path, source)?;
        let gpu_present = gpus.free_memory(GPU_INDEX).is_some();
        let provider =
            runtime::choose_provider(&runtime, &config.execution_providers, gpu_present)?;
        let admission = (provider == ExecutionProvider::Cuda).then(|| {
            Arc::new(VramAdmission::new(
                Arc::clone(&gpus),
                GPU_INDEX,
                config.vram_headroom_bytes,
            ))
        });
        Ok(Engine {
            inner: Arc::new(Inner {
                config,
                runtime,
                provider,
                gpus,
                admission,
                observer,
                models: Mutex::new(HashMap::new()),
                loaded: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The execution provider in use.
    pub fn execution_provider(&self) -> ExecutionProvider {
        self.inner.provider
    }

    /// The process's ONNX Runtime environment (ORT allows one per process),
    /// for code that wants a session of its own beside the engine's: the
    /// inference bench runs a bare session of the same model against it.
    pub fn ort_environment(&self) -> &ort::environment::Environment {
        &self.inner.runtime.environment
    }

    /// The engine's configuration.
    pub fn config(&self) -> &InferenceConfig {
        &self.inner.config
    }

    /// Loads the named models now (names from [`crate::registry::MODELS`]).
    ///
    /// # Errors
    /// `Invalid` for an unknown name; the load's error otherwise.
    pub async fn preload(&self, models: &[&str]) -> Result<(), InferenceError> {
        for name in models {
            let spec = registry::by_name(name)
                .ok_or_else(|| InferenceError::invalid(format!("no model called {name}")))?;
            self.model(spec).await?;
        }
        Ok(())
    }

    /// The models loaded so far with their measured footprints.
    pub fn loaded_models(&self) -> Vec<LoadedModel> {
        self.inner
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The loaded model for `spec`, loading it on first use (concurrent
    /// first uses share one load).
    pub(crate) async fn model(
        &self,
        spec: &'static ModelSpec,
    ) -> Result<Arc<Model>, InferenceError> {
        let cell = {
            let mut models = self.inner.models.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(models.entry(spec.name).or_default())
        };
        let model = cell.get_or_try_init(|| self.load(spec)).await?;
        Ok(Arc::clone(model))
    }

    async fn load(&self, spec: &'static ModelSpec) -> Result<Arc<Model>, InferenceError> {
        // A load takes VRAM too: admit its estimate, held until measured.
        let permit = match &self.inner.admission {
            Some(admission) => {
                let deadline = Instant::now() + std::time::Duration::from_secs(60);
                Some(
                    admission
                        .admit(spec.load_estimate_bytes, deadline)
                        .await
                        .map_err(|e| InferenceError::Overloaded {
                            message: format!("loading {}: {e}", spec.name),
                        })?,
                )
            }
            None => None,
        };
        let inner = Arc::clone(&self.inner);
        let (session, footprint) = tokio::task::spawn_blocking(move || load_blocking(&inner, spec))
            .await
            .map_err(|_| InferenceError::failed(format!("loading {} panicked", spec.name)))??;
        drop(permit);
        let provider = self.inner.provider;
        tracing::info!(
            model = spec.name,
            footprint_bytes = footprint,
            execution_provider = provider.label(),
            "model loaded"
        );
        self.inner
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(LoadedModel {
                name: spec.name,
                footprint_bytes: footprint,
                execution_provider: provider,
            });
        if let Some(observer) = &self.inner.observer {
            observer.model_loaded(spec.name, footprint);
        }
        let run = ModelRun {
            spec,
            session: Arc::new(session),
            admission: self.inner.admission.clone(),
            observer: self.inner.observer.clone(),
        };
        let config = BatchConfig {
            max_batch: self.inner.config.max_batch,
            max_delay: self.inner.config.max_delay,
        };
        let batcher = MicroBatcher::new(config, Arc::new(run))?;
        Ok(Arc::new(Model { spec, batcher }))
    }
}

/// Verifies, creates the session and runs it once; the footprint is the
/// device's free-memory drop (CUDA) or the resident-set growth (CPU) over
/// the two. Blocking.
fn load_blocking(
    inner: &Inner,
    spec: &'static ModelSpec,
) -> Result<(ModelSession, u64), InferenceError> {
    let path = registry::verify(spec, &inner.config.models_dir)?;
    let measure = || match inner.provider {
        ExecutionProvider::Cuda => inner.gpus.free_memory(GPU_INDEX).unwrap_or(0),
        ExecutionProvider::Cpu => runtime::resident_bytes(),
    };
    let before = measure();
    let session = ModelSession::create(
        &inner.runtime,
        &path,
        inner.provider,
        inner.config.intra_threads,
    )?;
    let (h, w) = match spec.input {
        InputSize::Fixed { width, height } => (height as usize, width as usize),
        InputSize::Dynamic => (64, 64),
    };
    session.run([1, 3, h, w], &vec![0.0; 3 * h * w])?;
    let after = measure();
    let footprint = match inner.provider {
        ExecutionProvider::Cuda => before.saturating_sub(after),
        ExecutionProvider::Cpu => after.saturating_sub(before),
    };
    Ok((session, footprint))
}
