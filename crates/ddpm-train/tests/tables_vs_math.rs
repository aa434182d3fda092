//! The tensor closed forms of `ddpm_train::tables` agree with ddpm-math's f64 reference for every
//! mean type and variance type. Checked in f64 (tables of kind Double) to 1e-9, so a wrong formula
//! cannot hide behind f32 rounding.
use ddpm_math::{
    BetaSchedule, GaussianDiffusion, LossType, ModelMeanType, ModelVarType, SpacedDiffusion,
};
use ddpm_train::tables::DeviceTables;
use ndarray::{Array, ArrayD, IxDyn};
use rand::{Rng, SeedableRng};
use tch::{Device, Kind, Tensor};

const T: usize = 200;
const TOL: f64 = 1e-9;
const SHAPE: [usize; 4] = [6, 2, 3, 3];

fn diffusion(mean: ModelMeanType, var: ModelVarType) -> GaussianDiffusion {
    let loss = if var.is_learned() {
        LossType::Hybrid
    } else {
        LossType::Simple
    };
    GaussianDiffusion::new(BetaSchedule::Cosine.betas(T).unwrap(), mean, var, loss).unwrap()
}

fn random(shape: &[usize], seed: u64, lo: f64, hi: f64) -> ArrayD<f64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    Array::from_shape_fn(IxDyn(shape), |_| rng.gen_range(lo..hi))
}

/// Pixel-valued x_0 (on the 256-level grid), so the decoder term is exercised at its bins.
fn pixels(shape: &[usize], seed: u64) -> ArrayD<f64> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    Array::from_shape_fn(IxDyn(shape), |_| rng.gen_range(0..256) as f64 / 127.5 - 1.0)
}

fn tensor(a: &ArrayD<f64>) -> Tensor {
    let shape: Vec<i64> = a.shape().iter().map(|&d| d as i64).collect();
    Tensor::from_slice(a.as_slice().unwrap()).view(shape.as_slice())
}

fn close(got: &Tensor, want: &ArrayD<f64>, tol: f64, what: &str) {
    let got = Vec::<f64>::try_from(got.to_kind(Kind::Double).contiguous().view([-1])).unwrap();
    assert_eq!(got.len(), want.len(), "{what}: size");
    for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: tensor {g} vs ddpm-math {w}"
        );
    }
}

const TS: [usize; 6] = [0, 1, 7, 60, 150, T - 1];

fn t_tensor() -> Tensor {
    Tensor::from_slice(&TS.map(|t| t as i64))
}

#[test]
fn forward_process_and_posterior_match() {
    let d = diffusion(ModelMeanType::Epsilon, ModelVarType::FixedLarge);
    let tables =
        DeviceTables::with_kind(&d, &(0..T).collect::<Vec<_>>(), Device::Cpu, Kind::Double);
    let (x0, noise, xt) = (
        pixels(&SHAPE, 1),
        random(&SHAPE, 2, -2.0, 2.0),
        random(&SHAPE, 3, -2.0, 2.0),
    );
    close(
        &tables.q_sample(&tensor(&x0), &t_tensor(), &tensor(&noise)),
        &d.q_sample(&x0, &TS, &noise).unwrap(),
        TOL,
        "q_sample",
    );
    let q = tables.q_posterior(&tensor(&x0), &tensor(&xt), &t_tensor());
    let want = d.q_posterior_mean_variance(&x0, &xt, &TS).unwrap();
    close(&q.mean, &want.mean, TOL, "posterior mean");
    close(
        &q.variance.expand_as(&tensor(&x0)),
        &want.variance,
        TOL,
        "posterior variance",
    );
    close(
        &q.log_variance.expand_as(&tensor(&x0)),
        &want.log_variance,
        TOL,
        "posterior log variance",
    );
    close(
        &tables.prior_bpd(&tensor(&x0)),
        &d.prior_bpd(&x0).unwrap().into_dyn(),
        TOL,
        "prior_bpd",
    );
}

#[test]
fn reverse_process_and_vb_terms_match_for_every_model_choice() {
    for mean in [
        ModelMeanType::Epsilon,
        ModelMeanType::StartX,
        ModelMeanType::V,
    ] {
        for var in [
            ModelVarType::FixedSmall,
            ModelVarType::FixedLarge,
            ModelVarType::Learned,
            ModelVarType::LearnedRange,
        ] {
            let d = diffusion(mean, var);
            let tables =
                DeviceTables::with_kind(&d, &(0..T).collect::<Vec<_>>(), Device::Cpu, Kind::Double);
            let mut out_shape = SHAPE;
            if var.is_learned() {
                out_shape[1] *= 2;
            }
            // Learned log-variances live around log β; learned-range outputs in [−1, 1].
            let mut out = random(&out_shape, 4, -1.0, 1.0);
            if var == ModelVarType::Learned {
                out.slice_mut(ndarray::s![.., 2.., .., ..])
                    .mapv_inplace(|v| v * 2.0 - 6.0);
            }
            let (x0, xt) = (pixels(&SHAPE, 5), random(&SHAPE, 6, -1.5, 1.5));
            let what = format!("{mean:?}/{var:?}");
            for clip in [false, true] {
                let p = tables.p_mean_variance(&tensor(&out), &tensor(&xt), &t_tensor(), clip);
                let want = d.p_mean_variance(&out, &xt, &TS, clip).unwrap();
                close(
                    &p.pred_xstart,
                    &want.pred_xstart,
                    TOL,
                    &format!("{what} pred_xstart clip={clip}"),
                );
                close(
                    &p.dist.mean,
                    &want.mean,
                    TOL,
                    &format!("{what} mean clip={clip}"),
                );
                close(
                    &p.dist.log_variance,
                    &want.log_variance,
                    TOL,
                    &format!("{what} log variance"),
                );
            }
            let vb = tables.vb_terms_bpd(
                &tensor(&out),
                &tensor(&x0),
                &tensor(&xt),
                &t_tensor(),
                false,
            );
            let want = d.vb_terms_bpd(&out, &x0, &xt, &TS, false).unwrap();
            close(
                &vb,
                &want.output.into_dyn(),
                TOL,
                &format!("{what} vb_terms_bpd"),
            );
        }
    }
}

#[test]
fn ancestral_and_ddim_steps_match_on_a_respaced_chain() {
    let base = diffusion(ModelMeanType::Epsilon, ModelVarType::FixedSmall);
    let spaced = SpacedDiffusion::from_spec(&base, "ddim20").unwrap();
    let d = spaced.diffusion();
    let tables = DeviceTables::with_kind(d, spaced.timestep_map(), Device::Cpu, Kind::Double);
    let ts = [0usize, 1, 5, 10, 15, 19];
    let t = Tensor::from_slice(&ts.map(|t| t as i64));
    let (out, xt, z) = (
        random(&SHAPE, 7, -1.0, 1.0),
        random(&SHAPE, 8, -1.5, 1.5),
        random(&SHAPE, 9, -2.0, 2.0),
    );
    let p = tables.p_mean_variance(&tensor(&out), &tensor(&xt), &t, true);
    let want = d.p_sample(&out, &xt, &ts, true, &z).unwrap();
    close(
        &tables.p_sample(&p, &t, &tensor(&z)),
        &want.sample,
        TOL,
        "p_sample",
    );
    for eta in [0.0, 0.5, 1.0] {
        let want = d.ddim_sample(&out, &xt, &ts, eta, true, &z).unwrap();
        close(
            &tables.ddim_step(&p, &tensor(&xt), &t, eta, &tensor(&z)),
            &want.sample,
            TOL,
            &format!("ddim eta={eta}"),
        );
    }
    // The network sees the original indices.
    let map = Vec::<i64>::try_from(&tables.timestep_map).unwrap();
    assert_eq!(
        map,
        spaced
            .timestep_map()
            .iter()
            .map(|&t| t as i64)
            .collect::<Vec<_>>()
    );
}
