//! Adam / AdamW with inspectable state (so checkpoints hold it exactly), global grad-norm clipping,
//! linear LR warm-up, and an EMA of the parameters.
use tch::{Kind, Tensor};

use crate::config::OptimConfig;

/// Adam (Kingma & Ba 2015) or AdamW (Loshchilov & Hutter 2019) over named parameters.
pub struct Adam {
    params: Vec<(String, Tensor)>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    /// Number of updates taken (bias correction uses it).
    pub step: i64,
    cfg: OptimConfig,
    decoupled: bool,
}

impl Adam {
    /// State for `params` (name, trainable tensor), zero moments.
    pub fn new(params: Vec<(String, Tensor)>, cfg: &OptimConfig) -> Self {
        let zeros = |p: &Tensor| p.zeros_like().detach();
        let exp_avg = params.iter().map(|(_, p)| zeros(p)).collect();
        let exp_avg_sq = params.iter().map(|(_, p)| zeros(p)).collect();
        Self {
            params,
            exp_avg,
            exp_avg_sq,
            step: 0,
            cfg: cfg.clone(),
            decoupled: cfg.optimizer == "adamw",
        }
    }

    /// The learning rate at optimisation step `step` (0-based): linear warm-up, then constant.
    pub fn lr_at(cfg: &OptimConfig, step: usize) -> f64 {
        if cfg.warmup_steps == 0 {
            cfg.lr
        } else {
            cfg.lr * ((step + 1) as f64 / cfg.warmup_steps as f64).min(1.0)
        }
    }

    /// Sets all gradients to zero (or drops them).
    pub fn zero_grad(&mut self) {
        for (_, p) in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    /// The global L2 norm of the gradients, as a 0-d tensor on the device (no host sync).
    pub fn grad_norm(&self) -> Tensor {
        let norms: Vec<Tensor> = self
            .params
            .iter()
            .map(|(_, p)| p.grad())
            .filter(Tensor::defined)
            .map(|g| g.to_kind(Kind::Float).square().sum(Kind::Float))
            .collect();
        Tensor::stack(&norms, 0).sum(Kind::Float).sqrt()
    }

    /// Scales the gradients so that their global norm is at most `max` (from the given norm), on the
    /// device without a host sync. Returns nothing; `norm` is the pre-clipping norm.
    pub fn clip_grad_norm(&mut self, norm: &Tensor, max: f64) {
        let scale = (norm + 1e-6).reciprocal().g_mul_scalar(max).clamp_max(1.0);
        for (_, p) in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.g_mul_(&scale);
            }
        }
    }

    /// One update with learning rate `lr`.
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let (b1, b2, eps, wd) = (
            self.cfg.beta1,
            self.cfg.beta2,
            self.cfg.eps,
            self.cfg.weight_decay,
        );
        let bc1 = 1.0 - b1.powi(self.step as i32);
        let bc2 = 1.0 - b2.powi(self.step as i32);
        let step_size = lr / bc1;
        tch::no_grad(|| {
            for (i, (_, p)) in self.params.iter_mut().enumerate() {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let mut g = g;
                if wd != 0.0 {
                    if self.decoupled {
                        let _ = p.g_mul_scalar_(1.0 - lr * wd);
                    } else {
                        g += &*p * wd;
                    }
                }
                let m = &mut self.exp_avg[i];
                let _ = m.lerp_(&g, 1.0 - b1);
                let v = &mut self.exp_avg_sq[i];
                let _ = v.g_mul_scalar_(b2);
                let _ = v.addcmul_(&g, &g.g_mul_scalar(1.0 - b2));
                let denom = (v.sqrt() / bc2.sqrt()).g_add_scalar(eps);
                let _ = p.addcdiv_(&(&*m * -step_size), &denom);
            }
        });
    }

    /// The optimiser state as named tensors (for checkpoints): `exp_avg.<name>`, `exp_avg_sq.<name>`.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len() + 1);
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.push((format!("exp_avg.{name}"), self.exp_avg[i].shallow_clone()));
            out.push((
                format!("exp_avg_sq.{name}"),
                self.exp_avg_sq[i].shallow_clone(),
            ));
        }
        out.push(("step".to_string(), Tensor::from_slice(&[self.step])));
        out
    }

    /// Restores the state written by [`Adam::state_tensors`]; names and shapes must match.
    pub fn load_state(&mut self, tensors: &[(String, Tensor)]) -> Result<(), String> {
        let map: std::collections::HashMap<&str, &Tensor> =
            tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let expected = 2 * self.params.len() + 1;
        if tensors.len() != expected {
            return Err(format!(
                "optimiser state has {} tensors, the model needs {expected}",
                tensors.len()
            ));
        }
        tch::no_grad(|| {
            for (i, (name, p)) in self.params.iter().enumerate() {
                for (prefix, dst) in [
                    ("exp_avg", &mut self.exp_avg[i]),
                    ("exp_avg_sq", &mut self.exp_avg_sq[i]),
                ] {
                    let key = format!("{prefix}.{name}");
                    let src = map
                        .get(key.as_str())
                        .ok_or_else(|| format!("optimiser state lacks `{key}`"))?;
                    if src.size() != p.size() {
                        return Err(format!(
                            "optimiser state `{key}` has shape {:?}, parameter has {:?}",
                            src.size(),
                            p.size()
                        ));
                    }
                    dst.copy_(src);
                }
            }
            Ok(())
        })?;
        let step = map.get("step").ok_or("optimiser state lacks `step`")?;
        self.step = step.int64_value(&[0]);
        Ok(())
    }
}

/// Exponential moving average of parameters: θ̄ ← d θ̄ + (1 − d) θ. Buffers are not averaged.
pub struct Ema {
    /// Decay d.
    pub decay: f64,
    /// The averaged copies, by name.
    pub shadow: Vec<(String, Tensor)>,
}

impl Ema {
    /// Starts the average at the current parameters.
    pub fn new(params: &[(String, Tensor)], decay: f64) -> Self {
        let shadow = params
            .iter()
            .map(|(n, p)| (n.clone(), p.detach().copy()))
            .collect();
        Self { decay, shadow }
    }

    /// Sets the average to the live parameters (decay 0).
    pub fn copy_from(&mut self, params: &[(String, Tensor)]) {
        tch::no_grad(|| {
            for ((_, s), (_, p)) in self.shadow.iter_mut().zip(params) {
                s.copy_(p);
            }
        });
    }

    /// One update from the live parameters (same order as at construction).
    pub fn update(&mut self, params: &[(String, Tensor)]) {
        tch::no_grad(|| {
            for ((_, s), (_, p)) in self.shadow.iter_mut().zip(params) {
                let _ = s.lerp_(p, 1.0 - self.decay);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(opt: &str, wd: f64) -> OptimConfig {
        OptimConfig {
            optimizer: opt.into(),
            lr: 0.1,
            weight_decay: wd,
            warmup_steps: 0,
            ..OptimConfig::default()
        }
    }

    /// Reference Adam on f64 scalars.
    fn reference(opt: &str, wd: f64, grads: &[f64], p0: f64) -> f64 {
        let c = cfg(opt, wd);
        let (mut p, mut m, mut v) = (p0, 0.0, 0.0);
        for (k, &g0) in grads.iter().enumerate() {
            let step = (k + 1) as i32;
            let mut g = g0;
            if opt == "adamw" {
                p *= 1.0 - c.lr * wd;
            } else {
                g += wd * p;
            }
            m = c.beta1 * m + (1.0 - c.beta1) * g;
            v = c.beta2 * v + (1.0 - c.beta2) * g * g;
            let mhat = m / (1.0 - c.beta1.powi(step));
            let vhat = v / (1.0 - c.beta2.powi(step));
            p -= c.lr * mhat / (vhat.sqrt() + c.eps);
        }
        p
    }

    #[test]
    fn adam_and_adamw_match_the_reference_update() {
        for (opt, wd) in [("adam", 0.0), ("adam", 0.1), ("adamw", 0.1)] {
            let p = Tensor::from_slice(&[0.5f64]).set_requires_grad(true);
            let mut adam = Adam::new(vec![("p".into(), p.shallow_clone())], &cfg(opt, wd));
            let grads = [0.3, -0.2, 0.7];
            // The gradient of g·p is g; for adam with decay the optimiser adds wd·p itself.
            for g in grads {
                adam.zero_grad();
                (&p * g).sum(Kind::Double).backward();
                adam.step(0.1);
            }
            let got = p.double_value(&[0]);
            let want = reference(opt, wd, &grads, 0.5);
            assert!((got - want).abs() < 1e-12, "{opt} wd={wd}: {got} vs {want}");
        }
    }

    #[test]
    fn clipping_scales_to_the_max_norm_and_state_round_trips() {
        let p = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        let mut adam = Adam::new(vec![("w".into(), p.shallow_clone())], &cfg("adam", 0.0));
        (&p * Tensor::from_slice(&[3.0f32, 4.0]))
            .sum(Kind::Float)
            .backward();
        let norm = adam.grad_norm();
        assert!((norm.double_value(&[]) - 5.0).abs() < 1e-6);
        adam.clip_grad_norm(&norm, 1.0);
        assert!((adam.grad_norm().double_value(&[]) - 1.0).abs() < 1e-5);
        adam.step(0.01);
        let state = adam.state_tensors();
        let q = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        let mut other = Adam::new(vec![("w".into(), q)], &cfg("adam", 0.0));
        other.load_state(&state).unwrap();
        assert_eq!(other.step, 1);
        assert!(other.exp_avg[0].equal(&adam.exp_avg[0]));
        let bad = vec![("step".to_string(), Tensor::from_slice(&[1i64]))];
        assert!(other.load_state(&bad).unwrap_err().contains("tensors"));
    }

    #[test]
    fn warmup_is_linear_then_flat() {
        let c = OptimConfig {
            lr: 1.0,
            warmup_steps: 4,
            ..OptimConfig::default()
        };
        let lrs: Vec<f64> = (0..6).map(|s| Adam::lr_at(&c, s)).collect();
        assert_eq!(lrs, vec![0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
    }

    #[test]
    fn ema_moves_towards_the_parameters() {
        let p = Tensor::from_slice(&[0.0f32]);
        let params = vec![("p".to_string(), p.shallow_clone())];
        let mut ema = Ema::new(&params, 0.9);
        tch::no_grad(|| {
            let _ = p.shallow_clone().fill_(1.0);
        });
        ema.update(&params);
        assert!((ema.shadow[0].1.double_value(&[0]) - 0.1).abs() < 1e-7);
    }
}
