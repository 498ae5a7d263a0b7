//! Shuffled minibatches, reproducible from the run's seed and resumable at an exact position.
//!
//! Epoch `e`'s order and flips depend only on (seed, e), so the whole iterator state is
//! `BatchState { seed, epoch, position }`: save it with a checkpoint, resume, and the same
//! batches follow.
use super::Dataset;
use crate::core::rng::fill_u64;
use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// Domain separation from the noise streams that share the seed.
const SHUFFLE_DOMAIN: u64 = 0x5348_5546_464C_4521; // "SHUFFLE!"
const FLIP_DOMAIN: u64 = 0x464C_4950_5F48_4F52; // "FLIP_HOR"

/// Where an iterator stands: the next batch starts at `position` of epoch `epoch`'s order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchState {
    pub seed: u64,
    pub epoch: u64,
    pub position: usize,
}

impl BatchState {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            epoch: 0,
            position: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BatchConfig {
    pub batch_size: usize,
    /// Shuffle every epoch (off: dataset order).
    pub shuffle: bool,
    /// Random horizontal flip, one coin per image per epoch.
    pub hflip: bool,
    /// Skip an epoch's short last batch so every batch has `batch_size` images.
    pub drop_last: bool,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            batch_size: 64,
            shuffle: true,
            hflip: false,
            drop_last: true,
        }
    }
}

/// One minibatch: images [B,C,H,W] (and labels [B] u32) on the iterator's device.
#[derive(Clone, Debug)]
pub struct Batch {
    pub images: Tensor,
    pub labels: Option<Tensor>,
    /// Epoch and first position of this batch (its `BatchState` before the call).
    pub epoch: u64,
    pub position: usize,
}

pub struct Batches {
    images: Tensor,
    labels: Option<Tensor>,
    cfg: BatchConfig,
    state: BatchState,
    device: Device,
    /// (epoch, order, flip flags) of the epoch in progress.
    cache: Option<(u64, Vec<u32>, Vec<bool>)>,
}

impl Batches {
    /// Start at epoch 0, position 0.
    pub fn new(ds: &Dataset, cfg: BatchConfig, seed: u64, device: &Device) -> Result<Self> {
        Self::resume(ds, cfg, BatchState::new(seed), device)
    }

    /// Continue from a saved state.
    pub fn resume(
        ds: &Dataset,
        cfg: BatchConfig,
        state: BatchState,
        device: &Device,
    ) -> Result<Self> {
        let n = ds.len();
        if cfg.batch_size == 0 {
            return Err(Error::invalid("batch size must be at least 1"));
        }
        if n == 0 {
            return Err(Error::invalid("cannot batch an empty dataset"));
        }
        if cfg.drop_last && cfg.batch_size > n {
            return Err(Error::invalid(format!(
                "batch size {} is larger than the dataset ({n} images)",
                cfg.batch_size
            )));
        }
        if state.position > n {
            return Err(Error::invalid(format!(
                "saved data position {} is past the end of the dataset ({n} images); was it saved for a different dataset?",
                state.position
            )));
        }
        Ok(Self {
            images: ds.images.clone(),
            labels: ds.labels.clone(),
            cfg,
            state,
            device: device.clone(),
            cache: None,
        })
    }

    /// The state to save: resuming from it continues with the next batch.
    pub fn state(&self) -> BatchState {
        self.state
    }

    pub fn len(&self) -> usize {
        self.images.dims()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        let n = self.len();
        if self.cfg.drop_last {
            n / self.cfg.batch_size
        } else {
            n.div_ceil(self.cfg.batch_size)
        }
    }

    /// The sample order of `epoch` (a permutation of 0..N) and its flip coins.
    pub fn epoch_plan(&self, epoch: u64) -> (Vec<u32>, Vec<bool>) {
        let n = self.len();
        let mut order: Vec<u32> = (0..n as u32).collect();
        if self.cfg.shuffle {
            let mut r = vec![0u64; n];
            fill_u64(self.state.seed ^ SHUFFLE_DOMAIN, epoch, &mut r);
            // Fisher-Yates with multiply-shift bounded draws.
            for i in (1..n).rev() {
                let j = ((r[i] as u128 * (i as u128 + 1)) >> 64) as usize;
                order.swap(i, j);
            }
        }
        let flips = if self.cfg.hflip {
            let mut r = vec![0u64; n];
            fill_u64(self.state.seed ^ FLIP_DOMAIN, epoch, &mut r);
            r.iter().map(|x| x >> 63 == 1).collect()
        } else {
            vec![false; n]
        };
        (order, flips)
    }

    /// The next minibatch; rolls over to a freshly shuffled epoch when one is used up.
    pub fn next_batch(&mut self) -> Result<Batch> {
        let n = self.len();
        let b = self.cfg.batch_size;
        let left = n - self.state.position;
        if left == 0 || (self.cfg.drop_last && left < b) {
            self.state.epoch += 1;
            self.state.position = 0;
        }
        let (epoch, pos) = (self.state.epoch, self.state.position);
        if self.cache.as_ref().is_none_or(|c| c.0 != epoch) {
            let (o, f) = self.epoch_plan(epoch);
            self.cache = Some((epoch, o, f));
        }
        let (_, order, flips) = self.cache.as_ref().expect("filled above");
        let take = b.min(n - pos);
        let idx: Vec<u32> = order[pos..pos + take].to_vec();
        let flip: Vec<u8> = flips[pos..pos + take].iter().map(|f| *f as u8).collect();
        let idx_t = Tensor::from_vec(idx, take, self.images.device())?;
        let mut images = self.images.index_select(&idx_t, 0)?;
        if flip.contains(&1) {
            let w = images.dim(3)?;
            let rev: Vec<u32> = (0..w as u32).rev().collect();
            let rev = Tensor::from_vec(rev, w, images.device())?;
            let flipped = images.index_select(&rev, 3)?;
            let mask = Tensor::from_vec(flip, (take, 1, 1, 1), images.device())?
                .broadcast_as(images.shape())?;
            images = mask.where_cond(&flipped, &images)?;
        }
        let labels = match &self.labels {
            Some(l) => Some(l.index_select(&idx_t, 0)?.to_device(&self.device)?),
            None => None,
        };
        self.state.position = pos + take;
        Ok(Batch {
            images: images.to_device(&self.device)?,
            labels,
            epoch,
            position: pos,
        })
    }
}
