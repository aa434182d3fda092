//! The training objectives on tensors: L_simple (ε, x_0 or v target), L_hybrid (with the mean
//! detached in the vb term) and L_vlb, weighted as ddpm-math's `loss_weights` says.
use ddpm_math::LossWeights;
use tch::{Kind, Tensor};

use crate::tables::{mean_flat, DeviceTables};

/// Per-sample loss terms, each `[N]`.
pub struct LossTerms {
    /// The combined per-sample loss `mse_w·mse + vb_w·vb`.
    pub loss: Tensor,
    /// MSE of the mean-type target (0 when unused).
    pub mse: Tensor,
    /// vb term in bits/dim (0 when unused).
    pub vb: Tensor,
}

/// Computes the loss terms for `x_t = q_sample(x_start, t, noise)` and the network's output on it.
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
    let loss = &mse * weights.mse + &vb * weights.vb;
    LossTerms { loss, mse, vb }
}
