//! The training objectives on tensors: L_simple (ε, x_0 or v target), L_hybrid (with the mean
//! detached in the vb term) and L_vlb, weighted as ddpm-math's `loss_weights` says, with the
//! per-timestep MSE weights of the tables (min-SNR-γ) when they have any.
use ddpm_math::LossWeights;
use tch::{Kind, Tensor};

use crate::tables::{mean_flat, DeviceTables};

/// Per-sample loss terms, each `[N]`.
pub struct LossTerms {
    /// The combined per-sample loss `mse_w·w_t·mse + vb_w·vb`, `w_t` being the tables' MSE weight
    /// of the sample's timestep (1 without one).
    pub loss: Tensor,
    /// MSE of the mean-type target, unweighted by `w_t` (0 when unused).
    pub mse: Tensor,
    /// vb term in bits/dim (0 when unused).
    pub vb: Tensor,
}

/// Computes the loss terms for `x_t = q_sample(x_start, t, noise)` and the network's output on it.
///
/// The MSE term of each sample is multiplied by the weight of its `t` when the tables carry MSE
/// weights ([`DeviceTables::with_mse_weights`]); the vb term never is. Importance weights of `t`
/// are the caller's to apply to `loss`.
///
/// # Shapes
/// `model_output: [N, C or 2C, H, W]`, `x_start, x_t, noise: [N, C, H, W]`, `t: [N]` → terms `[N]`.
pub fn training_losses(
    tables: &DeviceTables,
    weights: LossWeights,
    model_output: &Tensor,
    x_start: &Tensor,
    x_t: &Tensor,
    t: &Tensor,
    noise: &Tensor,
) -> LossTerms {
    let (mean_out, var_out) = tables.split_output(model_output);
    let mse = if weights.mse != 0.0 {
        mean_flat(
            &(tables.target(x_start, t, noise) - &mean_out)
                .square()
                .to_kind(Kind::Float),
        )
    } else {
        t.zeros_like().to_kind(Kind::Float)
    };
    let vb = if weights.vb != 0.0 {
        let out = match (&var_out, weights.detach_mean_in_vb) {
            (Some(v), true) => Tensor::cat(&[mean_out.detach(), v.shallow_clone()], 1),
            _ => model_output.shallow_clone(),
        };
        tables.vb_terms_bpd(&out.to_kind(Kind::Float), x_start, x_t, t, false)
    } else {
        t.zeros_like().to_kind(Kind::Float)
    };
    let weighted_mse = match tables.mse_weight(t) {
        Some(w) => &mse * w,
        None => mse.shallow_clone(),
    };
    let loss = weighted_mse * weights.mse + &vb * weights.vb;
    LossTerms { loss, mse, vb }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ddpm_math::{BetaSchedule, GaussianDiffusion, LossType, ModelMeanType, ModelVarType};
    use tch::Device;

    /// With MSE weights in the tables, each sample's MSE term is multiplied by the weight of its t
    /// and the vb term is left alone (L_hybrid); the reported `mse` stays unweighted.
    #[test]
    fn mse_weights_scale_the_mse_term_of_each_sample_only() {
        let d = GaussianDiffusion::new(
            BetaSchedule::Linear.betas(100).unwrap(),
            ModelMeanType::Epsilon,
            ModelVarType::LearnedRange,
            LossType::Hybrid,
        )
        .unwrap();
        let w = d.min_snr_weights(5.0).unwrap();
        let plain = DeviceTables::full(&d, Device::Cpu);
        let weighted = DeviceTables::full(&d, Device::Cpu).with_mse_weights(Some(&w));
        tch::manual_seed(7);
        let x0 = Tensor::rand([4, 1, 4, 4], (Kind::Float, Device::Cpu)) * 2 - 1;
        let noise = x0.randn_like();
        let t = Tensor::from_slice(&[0i64, 3, 40, 99]);
        let x_t = plain.q_sample(&x0, &t, &noise);
        let out = Tensor::randn([4, 2, 4, 4], (Kind::Float, Device::Cpu)).tanh();
        let lw = d.loss_weights();
        let a = training_losses(&plain, lw, &out, &x0, &x_t, &t, &noise);
        let b = training_losses(&weighted, lw, &out, &x0, &x_t, &t, &noise);
        assert!(a.mse.equal(&b.mse) && a.vb.equal(&b.vb));
        let (mse, vb) = (
            Vec::<f32>::try_from(&a.mse).unwrap(),
            Vec::<f32>::try_from(&a.vb).unwrap(),
        );
        let loss = Vec::<f32>::try_from(&b.loss).unwrap();
        for (i, &ti) in [0usize, 3, 40, 99].iter().enumerate() {
            let want = w[ti] * mse[i] as f64 + lw.vb * vb[i] as f64;
            assert!(
                (loss[i] as f64 - want).abs() <= 1e-5 * want.abs(),
                "t = {ti}: {} vs {want}",
                loss[i]
            );
        }
        // The first steps have SNR > 5 (weight < 1), the last ones weight 1.
        assert!(w[0] < 0.01 && w[99] == 1.0, "{} {}", w[0], w[99]);
    }
}
