//! The DCGAN baseline (Radford et al. 2016) as a training task, in two phases per step: one
//! discriminator update on the real batch and as many fakes G(z), then one generator update with
//! the non-saturating loss (Goodfellow et al. 2014) on the same fakes through the updated
//! discriminator. Logged: `d_loss`, `g_loss`, `d_real` = mean D(x), `d_fake` = mean D(G(z)) (before
//! the discriminator update). Checkpoint groups: `generator`, `discriminator`, `optim_g`, `optim_d`.
use ddpm_nets::gan::{self, Discriminator, Generator};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use tch::{nn, Device, Kind, Tensor};

use crate::baselines::{gan_images, images_from_latents, NetworkConfigs};
use crate::config::TrainConfig;
use crate::engine::{
    scaled, split_rows, Metric, MicroBatches, Plot, Probe, StateGroup, StepMetrics, TrainTask,
};
use crate::error::{Result, TrainError};
use crate::optim::Adam;
use crate::parallel::DataParallel;

/// A GAN step's batch: real images and the latents of the fakes.
#[derive(Debug)]
pub struct GanBatch {
    /// Real images `[N, C, H, W]` in [−1, 1].
    pub x: Tensor,
    /// Latents `[N, z_dim]`.
    pub z: Tensor,
}

impl MicroBatches for GanBatch {
    fn split(self, k: usize) -> Vec<Self> {
        split_rows(&self.x, k)
            .into_iter()
            .zip(split_rows(&self.z, k))
            .map(|(x, z)| Self { x, z })
            .collect()
    }
}

const METRICS: [Metric; 4] = [
    Metric::loss("d_loss", Plot::Linear),
    Metric::loss("g_loss", Plot::Linear),
    Metric::loss("d_real", Plot::Linear),
    Metric::loss("d_fake", Plot::Linear),
];

const DISCRIMINATOR: usize = 0;

/// The GAN training task.
pub struct GanTask {
    vs_g: nn::VarStore,
    vs_d: nn::VarStore,
    generator: Generator,
    discriminator: Discriminator,
    opt_g: Adam,
    opt_d: Adam,
    grad_clip: f64,
    device: Device,
    /// The fakes of the step's micro-batches, made in the discriminator phase and reused (with
    /// their graph through G) in the generator phase.
    fakes: Vec<Tensor>,
    metrics: StepMetrics,
}

impl GanTask {
    /// The networks of `nets` on `device` (initial weights from `run.seed`) with one Adam each.
    pub fn new(cfg: &TrainConfig, nets: &NetworkConfigs, device: Device) -> Result<Self> {
        let NetworkConfigs::Gan {
            generator,
            discriminator,
        } = nets
        else {
            return Err(TrainError::config("model.kind", "expected GAN networks"));
        };
        tch::manual_seed(cfg.run.seed as i64);
        let vs_g = nn::VarStore::new(device);
        let g = Generator::new(vs_g.root(), generator)?;
        let vs_d = nn::VarStore::new(device);
        let d = Discriminator::new(vs_d.root(), discriminator)?;
        Ok(Self {
            opt_g: Adam::for_store(&vs_g, &cfg.optim),
            opt_d: Adam::for_store(&vs_d, &cfg.optim),
            vs_g,
            vs_d,
            generator: g,
            discriminator: d,
            grad_clip: cfg.optim.grad_clip,
            device,
            fakes: Vec::new(),
            metrics: StepMetrics::default(),
        })
    }
}

impl TrainTask for GanTask {
    type Batch = GanBatch;

    fn name(&self) -> &'static str {
        "DCGAN"
    }

    fn metrics(&self) -> &'static [Metric] {
        &METRICS
    }

    fn phases(&self) -> &'static [&'static str] {
        &["discriminator", "generator"]
    }

    fn device(&self) -> Device {
        self.device
    }

    fn prepare(&mut self, x: Tensor, _labels: Tensor, _step: usize) -> Result<GanBatch> {
        let n = x.size()[0];
        let z = Tensor::randn(
            [n, self.generator.config().z_dim],
            (Kind::Float, self.device),
        );
        Ok(GanBatch { x, z })
    }

    fn zero_grad(&mut self, phase: usize) {
        if phase == DISCRIMINATOR {
            self.opt_d.zero_grad();
        } else {
            self.opt_g.zero_grad();
        }
    }

    fn forward_backward(
        &mut self,
        phase: usize,
        b: &GanBatch,
        scale: f64,
        probe: &mut Probe,
    ) -> Result<()> {
        let d = &self.discriminator;
        if phase == DISCRIMINATOR {
            let fake = self.generator.forward_t(&b.z, true);
            let real_logits = d.forward_t(&b.x, true);
            let fake_logits = d.forward_t(&fake.detach(), true);
            let d_loss = gan::discriminator_loss(&real_logits, &fake_logits);
            probe.mark("forward_loss");
            scaled(&d_loss, scale).backward();
            self.metrics.add(0, &scaled(&d_loss, scale));
            let d_real = real_logits.detach().sigmoid().mean(Kind::Float);
            let d_fake = fake_logits.detach().sigmoid().mean(Kind::Float);
            self.metrics.add(2, &scaled(&d_real, scale));
            self.metrics.add(3, &scaled(&d_fake, scale));
            self.fakes.push(fake);
        } else {
            let fake = self.fakes.remove(0);
            let g_loss = gan::generator_loss(&d.forward_t(&fake, true));
            probe.mark("forward_loss");
            scaled(&g_loss, scale).backward();
            self.metrics.add(1, &scaled(&g_loss, scale));
        }
        probe.mark("backward");
        Ok(())
    }

    fn optimizer(&mut self, phase: usize) -> &mut Adam {
        if phase == DISCRIMINATOR {
            &mut self.opt_d
        } else {
            &mut self.opt_g
        }
    }

    fn optimize(&mut self, phase: usize, lr: f64, probe: &mut Probe) -> Result<()> {
        let opt = if phase == DISCRIMINATOR {
            &mut self.opt_d
        } else {
            &mut self.opt_g
        };
        let _ = opt.clipped_step(self.grad_clip, lr);
        probe.mark("adam");
        Ok(())
    }

    fn finish_step(&mut self, _step: usize, _par: Option<&DataParallel>) -> Result<Tensor> {
        self.fakes.clear();
        Ok(self.metrics.take(METRICS.len(), self.device))
    }

    fn state_groups(&mut self) -> Vec<(&'static str, StateGroup<'_>)> {
        vec![
            ("generator", StateGroup::Vars(&mut self.vs_g)),
            ("discriminator", StateGroup::Vars(&mut self.vs_d)),
            ("optim_g", StateGroup::Optimizer(&mut self.opt_g)),
            ("optim_d", StateGroup::Optimizer(&mut self.opt_d)),
        ]
    }

    fn sample_images(
        &self,
        n: usize,
        seed: u64,
        _stop: &Arc<AtomicBool>,
    ) -> Result<Option<Tensor>> {
        let g = &self.generator;
        Ok(Some(images_from_latents(
            g.config().z_dim,
            n,
            n,
            seed,
            self.device,
            |z| gan_images(g, z),
        )))
    }
}
