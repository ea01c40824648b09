//! A prefetching loader: batches are decoded and augmented on worker threads while the
//! model trains on the previous one. The order and the augmentations are a pure function
//! of (seed, step), so a resumed run sees exactly the batches it would have seen.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use vmt_registry::bundle::TaskSpec;

use super::augment::{prepare, AugParams, Example};
use super::{DataError, Dataset, Label};
use crate::model::Target;

/// What to load for one batch: ids with their augmentation (None = evaluation).
pub type BatchPlan = Vec<(String, Option<AugParams>)>;

/// A prepared batch, in plan order.
#[derive(Debug)]
pub struct Batch {
    /// Image ids, in plan order.
    pub ids: Vec<String>,
    /// The examples.
    pub examples: Vec<Example>,
    /// Their side in pixels.
    pub size: usize,
}

impl Batch {
    /// Pixels `[B, 3, S, S]` and one target per task.
    pub fn tensors(
        &self,
        tasks: &[TaskSpec],
        device: &Device,
    ) -> candle_core::Result<(Tensor, Vec<Target>)> {
        let (b, s) = (self.examples.len(), self.size);
        let pixels: Vec<f32> = self
            .examples
            .iter()
            .flat_map(|e| e.pixels.iter().copied())
            .collect();
        let pixels = Tensor::from_vec(pixels, (b, 3, s, s), device)?;
        let targets = (0..tasks.len())
            .map(|t| match &self.examples[0].labels[t] {
                Label::Classes(_) => {
                    let v: Vec<u8> = self
                        .examples
                        .iter()
                        .flat_map(|e| match &e.labels[t] {
                            Label::Classes(c) => c.clone(),
                            _ => unreachable!("one label kind per task"),
                        })
                        .collect();
                    Ok(Target::Labels(Tensor::from_vec(v, (b, s, s), device)?))
                }
                Label::Normals(_) | Label::Depth(_) => {
                    let c = if matches!(self.examples[0].labels[t], Label::Normals(_)) {
                        3
                    } else {
                        1
                    };
                    let v: Vec<f32> = self
                        .examples
                        .iter()
                        .flat_map(|e| match &e.labels[t] {
                            Label::Normals(n) | Label::Depth(n) => n.clone(),
                            _ => unreachable!("one label kind per task"),
                        })
                        .collect();
                    Ok(Target::Dense(Tensor::from_vec(v, (b, c, s, s), device)?))
                }
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok((pixels, targets))
    }
}

/// Mixes a seed with a counter into an independent RNG seed (splitmix64).
pub fn mix(seed: u64, k: u64) -> u64 {
    let mut z = seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The training plan of `step`: sample k = step*B + i is position k % n of epoch k / n's
/// shuffle, with augmentation drawn from (seed, k).
pub fn train_plan(ids: &[String], seed: u64, batch: usize, step: usize) -> BatchPlan {
    let n = ids.len();
    let mut cached: Option<(usize, Vec<usize>)> = None;
    (0..batch)
        .map(|i| {
            let k = step * batch + i;
            let epoch = k / n;
            if cached.as_ref().map(|c| c.0) != Some(epoch) {
                let mut order: Vec<usize> = (0..n).collect();
                order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(
                    seed,
                    epoch as u64 ^ 0xE90C,
                )));
                cached = Some((epoch, order));
            }
            let id = ids[cached.as_ref().expect("set above").1[k % n]].clone();
            let aug = AugParams::sample(&mut ChaCha8Rng::seed_from_u64(mix(seed, k as u64)));
            (id, Some(aug))
        })
        .collect()
}

/// The evaluation plans: the ids in order, `batch` at a time.
pub fn eval_plans(ids: &[String], batch: usize) -> Vec<BatchPlan> {
    ids.chunks(batch.max(1))
        .map(|c| c.iter().map(|id| (id.clone(), None)).collect())
        .collect()
}

/// Batches from a background thread that decodes each batch's samples on `workers`
/// threads, keeping up to `prefetch` batches ready.
pub struct Loader {
    rx: Receiver<Result<Batch, DataError>>,
}

impl Loader {
    /// Starts `workers` threads preparing the batches of `plans`, at most `depth` ahead.
    pub fn spawn(
        dataset: Arc<Dataset>,
        tasks: Vec<TaskSpec>,
        size: usize,
        plans: impl Iterator<Item = BatchPlan> + Send + 'static,
        workers: usize,
        prefetch: usize,
    ) -> Self {
        let (tx, rx) = sync_channel(prefetch.max(1));
        std::thread::spawn(move || {
            for plan in plans {
                let batch = load_batch(&dataset, &tasks, size, &plan, workers);
                let failed = batch.is_err();
                if tx.send(batch).is_err() || failed {
                    break;
                }
            }
        });
        Self { rx }
    }
}

impl Iterator for Loader {
    type Item = Result<Batch, DataError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.rx.recv().ok()
    }
}

/// Decodes and prepares one batch, splitting its samples over `workers` threads.
pub fn load_batch(
    dataset: &Dataset,
    tasks: &[TaskSpec],
    size: usize,
    plan: &BatchPlan,
    workers: usize,
) -> Result<Batch, DataError> {
    let chunk = plan.len().div_ceil(workers.max(1)).max(1);
    let results: Vec<Result<Vec<Example>, DataError>> = std::thread::scope(|s| {
        let handles: Vec<_> = plan
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|(id, aug)| Ok(prepare(&dataset.load(id, tasks)?, size, *aug)))
                        .collect::<Result<Vec<_>, DataError>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("loader worker"))
            .collect()
    });
    let mut examples = Vec::with_capacity(plan.len());
    for r in results {
        examples.extend(r?);
    }
    Ok(Batch {
        ids: plan.iter().map(|p| p.0.clone()).collect(),
        examples,
        size,
    })
}
