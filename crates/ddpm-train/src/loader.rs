//! Training batches from our HDF5 datasets: the split in memory as uint8, a seeded permutation per
//! epoch (so the batch of step s is a function of (seed, s) and resuming needs no loader state),
//! scaling to [−1, 1], optional pad to 32 and random horizontal flip.
use std::path::Path;

use ndarray::{Array4, Axis};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tch::{Device, Kind, Tensor};

use crate::config::DataConfig;
use crate::error::{Result, TrainError};
use crate::h5images;

/// A split in memory, `[N, H, W, C]` uint8, with its labels when the file has them.
pub struct ImageData {
    images: Array4<u8>,
    labels: Option<Vec<i64>>,
    /// Number of distinct labels (max + 1; 0 without labels).
    pub num_classes: i64,
}

/// Reads `/<split>/images` (`[N,H,W]` or `[N,H,W,C]` uint8, C = 1 or 3) and, when present,
/// `/<split>/labels` (uint8 `[N]`) through [`h5images::read_split`]; errors name the file and the
/// dataset.
pub fn load_images(path: &Path, split: &str) -> Result<ImageData> {
    let (images, labels) = h5images::read_split(path, split)?;
    let labels: Option<Vec<i64>> = labels.map(|l| l.iter().map(|&l| i64::from(l)).collect());
    let num_classes = labels
        .as_ref()
        .and_then(|l| l.iter().copied().max())
        .map_or(0, |m| m + 1);
    Ok(ImageData {
        images,
        labels,
        num_classes,
    })
}

impl ImageData {
    /// A short fingerprint of the images and labels: their shape and a sha256 of every image and
    /// label, in order (about 0.1 s for MNIST's 60,000 images). Data-parallel ranks compare it,
    /// so that no rank trains on other data than rank 0.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for d in self.images.shape() {
            h.update((*d as u64).to_le_bytes());
        }
        match self.images.as_slice() {
            Some(bytes) => h.update(bytes),
            None => self.images.iter().for_each(|b| h.update([*b])),
        }
        for l in self.labels.iter().flatten() {
            h.update(l.to_le_bytes());
        }
        let (n, height, width, c) = self.images.dim();
        let digest = hex::encode(h.finalize());
        format!("{n} images {height}×{width}×{c}, sha256 {}", &digest[..16])
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.images.dim().0
    }

    /// Whether the split has class labels.
    pub fn has_labels(&self) -> bool {
        self.labels.is_some()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `(C, H, W)` of the stored images.
    pub fn chw(&self) -> (i64, i64, i64) {
        let (_, h, w, c) = self.images.dim();
        (c as i64, h as i64, w as i64)
    }

    /// Images `idx` as a uint8 tensor `[B, C, H, W]` on the CPU, and their labels `[B]` (zeros
    /// for a split without labels).
    pub fn gather(&self, idx: &[usize]) -> (Tensor, Tensor) {
        let (_, h, w, c) = self.images.dim();
        let mut buf = Vec::with_capacity(idx.len() * h * w * c);
        for &i in idx {
            buf.extend(self.images.index_axis(Axis(0), i).iter().copied());
        }
        let x = Tensor::from_slice(&buf)
            .view([idx.len() as i64, h as i64, w as i64, c as i64])
            .permute([0, 3, 1, 2]);
        let y: Vec<i64> = match &self.labels {
            Some(l) => idx.iter().map(|&i| l[i]).collect(),
            None => vec![0; idx.len()],
        };
        let y = Tensor::from_slice(&y);
        (x, y)
    }
}

/// uint8 `[B, C, H, W]` → float in [−1, 1] (x = p/127.5 − 1), optionally padded to 32×32 with the
/// background value −1.
pub fn to_model_input(x: &Tensor, pad_to_32: bool, device: Device) -> Tensor {
    let x = x.to_device(device).to_kind(Kind::Float) / 127.5 - 1.0;
    let (h, w) = (x.size()[2], x.size()[3]);
    let (ph, pw) = ((32 - h).max(0), (32 - w).max(0));
    if pad_to_32 && (ph > 0 || pw > 0) {
        // Pad x + 1 with zeros, i.e. x with −1.
        (x + 1.0).constant_pad_nd([pw / 2, pw - pw / 2, ph / 2, ph - ph / 2]) - 1.0
    } else {
        x
    }
}

/// Batches for training: step s draws positions [s·B, (s+1)·B) of the concatenated per-epoch
/// permutations, each permutation seeded by (seed, epoch).
pub struct BatchSampler {
    n: usize,
    batch: usize,
    seed: u64,
    epoch: usize,
    perm: Vec<usize>,
}

impl BatchSampler {
    /// A sampler over `n` examples.
    pub fn new(n: usize, batch: usize, seed: u64) -> Self {
        let mut s = Self {
            n,
            batch,
            seed,
            epoch: usize::MAX,
            perm: Vec::new(),
        };
        s.ensure_epoch(0);
        s
    }

    fn ensure_epoch(&mut self, epoch: usize) {
        if self.epoch != epoch {
            let mut rng = StdRng::seed_from_u64(
                self.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            self.perm = (0..self.n).collect();
            self.perm.shuffle(&mut rng);
            self.epoch = epoch;
        }
    }

    /// The example indices of optimisation step `step`.
    pub fn indices(&mut self, step: usize) -> Vec<usize> {
        (step * self.batch..(step + 1) * self.batch)
            .map(|pos| {
                self.ensure_epoch(pos / self.n);
                self.perm[pos % self.n]
            })
            .collect()
    }
}

/// Flips a random half of the batch horizontally (host RNG seeded by step).
pub fn random_flip(x: &Tensor, seed: u64, step: usize) -> Tensor {
    let n = x.size()[0];
    let mut rng =
        StdRng::seed_from_u64(seed ^ 0xF11F ^ (step as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let mask: Vec<f32> = (0..n)
        .map(|_| if rng.gen_bool(0.5) { 1.0 } else { 0.0 })
        .collect();
    let m = Tensor::from_slice(&mask)
        .to_device(x.device())
        .view([n, 1, 1, 1]);
    &m * x.flip([3]) + (1.0 - &m) * x
}

/// Checks that a config's data settings fit the data (errors name the key).
pub fn check_data(cfg: &DataConfig, data: &ImageData) -> Result<()> {
    if data.is_empty() {
        return Err(TrainError::config(
            "data.path",
            format!(
                "{} has no images in split {}",
                cfg.path.display(),
                cfg.split
            ),
        ));
    }
    if cfg.conditional && !data.has_labels() {
        return Err(TrainError::config(
            "data.conditional",
            format!(
                "is true but {} has no /{}/labels (import with --labels folders for class labels)",
                cfg.path.display(),
                cfg.split
            ),
        ));
    }
    Ok(())
}
