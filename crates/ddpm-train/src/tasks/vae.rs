//! The convolutional VAE baseline (Kingma & Welling 2014) as a training task: the negative ELBO in
//! bits/dim with a discretised Gaussian decoder (as DDPM's L_0), one latent sample per image.
//! Logged: `loss` = `elbo_bpd` (negative ELBO, bits/dim), `recon_bpd`, `kl_bpd`. Checkpoint groups:
//! `model`, `optim`.
use ddpm_nets::vae::Vae;
use serde_json::{json, Map, Value};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tch::{nn, Device, Kind, Tensor};

use crate::baselines::{images_from_latents, vae_images, NetworkConfigs};
use crate::config::TrainConfig;
use crate::engine::{
    scaled, split_rows, Metric, MicroBatches, Plot, Probe, StateGroup, StepMetrics, TrainTask,
};
use crate::error::{Result, TrainError};
use crate::optim::Adam;
use crate::parallel::DataParallel;

/// A VAE step's batch: the images (the latent noise is drawn inside the ELBO).
#[derive(Debug)]
pub struct VaeBatch {
    /// Images `[N, C, H, W]` in [−1, 1].
    pub x: Tensor,
}

impl MicroBatches for VaeBatch {
    fn split(self, k: usize) -> Vec<Self> {
        split_rows(&self.x, k)
            .into_iter()
            .map(|x| Self { x })
            .collect()
    }
}

const METRICS: [Metric; 3] = [
    Metric::loss("loss", Plot::Linear),
    Metric::loss("recon_bpd", Plot::Linear),
    Metric::loss("kl_bpd", Plot::Linear),
];

/// The VAE training task.
pub struct VaeTask {
    vs: nn::VarStore,
    vae: Vae,
    opt: Adam,
    grad_clip: f64,
    device: Device,
    metrics: StepMetrics,
}

impl VaeTask {
    /// The VAE of `nets` on `device` (initial weights from `run.seed`) with Adam.
    pub fn new(cfg: &TrainConfig, nets: &NetworkConfigs, device: Device) -> Result<Self> {
        let NetworkConfigs::Vae { vae } = nets else {
            return Err(TrainError::config("model.kind", "expected VAE networks"));
        };
        tch::manual_seed(cfg.run.seed as i64);
        let vs = nn::VarStore::new(device);
        let net = Vae::new(vs.root(), vae)?;
        Ok(Self {
            opt: Adam::for_store(&vs, &cfg.optim),
            vs,
            vae: net,
            grad_clip: cfg.optim.grad_clip,
            device,
            metrics: StepMetrics::default(),
        })
    }
}

impl TrainTask for VaeTask {
    type Batch = VaeBatch;

    fn name(&self) -> &'static str {
        "VAE"
    }

    fn metrics(&self) -> &'static [Metric] {
        &METRICS
    }

    fn device(&self) -> Device {
        self.device
    }

    fn prepare(&mut self, x: Tensor, _labels: Tensor, _step: usize) -> Result<VaeBatch> {
        Ok(VaeBatch { x })
    }

    fn zero_grad(&mut self, _phase: usize) {
        self.opt.zero_grad();
    }

    fn forward_backward(
        &mut self,
        _phase: usize,
        b: &VaeBatch,
        scale: f64,
        probe: &mut Probe,
    ) -> Result<()> {
        let elbo = self.vae.elbo_bits_per_dim(&b.x, true);
        let loss = elbo.total.mean(Kind::Float);
        probe.mark("forward_loss");
        scaled(&loss, scale).backward();
        probe.mark("backward");
        self.metrics.add(0, &scaled(&loss, scale));
        let recon = elbo.reconstruction.detach().mean(Kind::Float);
        let kl = elbo.kl.detach().mean(Kind::Float);
        self.metrics.add(1, &scaled(&recon, scale));
        self.metrics.add(2, &scaled(&kl, scale));
        Ok(())
    }

    fn optimizer(&mut self, _phase: usize) -> &mut Adam {
        &mut self.opt
    }

    fn optimize(&mut self, _phase: usize, lr: f64, probe: &mut Probe) -> Result<()> {
        let _ = self.opt.clipped_step(self.grad_clip, lr);
        probe.mark("adam");
        Ok(())
    }

    fn finish_step(&mut self, _step: usize, _par: Option<&DataParallel>) -> Result<Tensor> {
        Ok(self.metrics.take(METRICS.len(), self.device))
    }

    fn state_groups(&mut self) -> Vec<(&'static str, StateGroup<'_>)> {
        vec![
            ("model", StateGroup::Vars(&mut self.vs)),
            ("optim", StateGroup::Optimizer(&mut self.opt)),
        ]
    }

    fn sample_images(
        &self,
        n: usize,
        seed: u64,
        _stop: &Arc<AtomicBool>,
    ) -> Result<Option<Tensor>> {
        let v = &self.vae;
        Ok(Some(images_from_latents(
            v.config().latent_dim,
            n,
            n,
            seed,
            self.device,
            |z| vae_images(v, z),
        )))
    }

    fn summarize(&self, means: &[f64]) -> Map<String, Value> {
        let mut m = Map::new();
        for (metric, v) in METRICS.iter().zip(means) {
            m.insert(metric.name.into(), json!(v));
        }
        m.insert("elbo_bpd".into(), json!(means[0]));
        m
    }
}
