//! Property: every schedule ddpm-rs accepts, at every T it accepts, trains and samples to finite
//! values — or is refused with an error up front. Covers schedules × T × mean types × variance and
//! loss types × samplers (ancestral, DDIM η = 0 and 1) × x̂₀ processing (clip, none, dynamic
//! thresholding) × full or respaced chains; zero-terminal-SNR schedules (`jsd`, and the linear
//! family at T = 20) included. The network is a fixed smooth random function of (x_t, t).
use ddpm_math::{
    space_timesteps, BetaSchedule, GaussianDiffusion, LossType, ModelMeanType, ModelVarType,
};
use ddpm_train::objective::training_losses;
use ddpm_train::sampler::{Convention, Sampler, SamplerKind, SamplerSpec, X0Processing};
use ddpm_train::tables::DeviceTables;
use proptest::prelude::*;
use tch::{Device, Kind, Tensor};

const SHAPE: [i64; 4] = [3, 1, 2, 2];

/// A smooth bounded "network": tanh of a seeded affine map of x_t and t/T, doubled in channels
/// for a learned variance (the variance half in [−1, 1]).
fn model(seed: i64, learned: bool, num_timesteps: usize) -> impl Fn(&Tensor, &Tensor) -> Tensor {
    tch::manual_seed(seed);
    let w = Tensor::randn([4], (Kind::Float, Device::Cpu));
    move |x: &Tensor, t: &Tensor| {
        let tt = (t.to_kind(Kind::Float) / num_timesteps as f64).view([-1, 1, 1, 1]);
        let mean = ((x * w.get(0) + &tt * w.get(1)) + w.get(2)).tanh() * 2.0;
        if learned {
            let var = (x * w.get(3) - &tt).tanh();
            Tensor::cat(&[mean, var], 1)
        } else {
            mean
        }
    }
}

fn x0_processing(i: usize) -> X0Processing {
    match i {
        0 => X0Processing::Clip { range: 1.0 },
        1 => X0Processing::None,
        _ => X0Processing::DynamicThreshold {
            ratio: 0.9,
            max_value: 1.5,
        },
    }
}

fn check_training(d: &GaussianDiffusion, f: &impl Fn(&Tensor, &Tensor) -> Tensor) {
    let t_len = d.num_timesteps() as i64;
    let tables = DeviceTables::full(d, Device::Cpu);
    let t = Tensor::arange(t_len, (Kind::Int64, Device::Cpu));
    let x0 = Tensor::rand([t_len, 1, 2, 2], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let noise = x0.randn_like();
    let x_t = tables.q_sample(&x0, &t, &noise);
    let out = f(&x_t, &t);
    let terms = training_losses(&tables, d.loss_weights(), &out, &x0, &x_t, &t, &noise);
    let finite = terms.loss.isfinite().all().int64_value(&[]) == 1;
    assert!(finite, "non-finite training loss: {:?}", terms.loss);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_accepted_schedule_trains_and_samples_to_finite_values(
        schedule in proptest::sample::select(BetaSchedule::ALL.to_vec()),
        t_len in prop_oneof![Just(20usize), Just(2usize), 2usize..=120],
        mean in proptest::sample::select(vec![ModelMeanType::Epsilon, ModelMeanType::StartX, ModelMeanType::V]),
        var_loss in 0usize..5,
        sampler in 0usize..3,
        x0 in 0usize..3,
        respace in any::<bool>(),
        seed in 0i64..1000,
    ) {
        tch::set_num_threads(1);
        let (var, loss) = [
            (ModelVarType::FixedSmall, LossType::Simple),
            (ModelVarType::FixedLarge, LossType::Simple),
            (ModelVarType::FixedLarge, LossType::Vlb),
            (ModelVarType::LearnedRange, LossType::Hybrid),
            (ModelVarType::Learned, LossType::Vlb),
        ][var_loss];
        // Refusals up front are allowed (linear family below T = 20; ε with a vb loss at ᾱ = 0).
        let Ok(betas) = schedule.betas(t_len) else { return Ok(()) };
        let Ok(d) = GaussianDiffusion::new(betas, mean, var, loss) else { return Ok(()) };
        let f = model(seed, var.is_learned(), t_len);
        check_training(&d, &f);
        let kind = match sampler {
            0 => SamplerKind::Ddpm,
            1 => SamplerKind::Ddim { eta: 0.0 },
            _ => SamplerKind::Ddim { eta: 1.0 },
        };
        let timesteps = if respace && t_len >= 4 {
            space_timesteps(t_len, &(t_len / 2).to_string()).unwrap()
        } else {
            (0..t_len).collect()
        };
        let spec = SamplerSpec {
            kind,
            timesteps,
            x0: x0_processing(x0),
            convention: Convention::ImprovedDiffusion,
        };
        let zero_snr = d.alphas_cumprod()[t_len - 1] == 0.0
            && spec.timesteps.last() == Some(&(t_len - 1));
        let s = match Sampler::new(&d, &spec, Device::Cpu) {
            Ok(s) => s,
            Err(e) => {
                // The one refusal: ε at ᾱ = 0 without clipping.
                prop_assert!(
                    zero_snr && mean == ModelMeanType::Epsilon && x0 != 0,
                    "refused: {}", e
                );
                return Ok(());
            }
        };
        tch::manual_seed(seed);
        let noise = Tensor::randn(SHAPE, (Kind::Float, Device::Cpu));
        let out = s.sample(|x, t, _| f(x, t), noise, None, 0, |_| {});
        let out = match out {
            Ok(o) => o,
            Err(e) => return Err(TestCaseError::fail(format!("{schedule} T={t_len}: {e}"))),
        };
        prop_assert!(out.raw.isfinite().all().int64_value(&[]) == 1);
    }
}

#[test]
fn a_chain_that_turns_non_finite_is_an_error_naming_the_step() {
    let d = GaussianDiffusion::new(
        BetaSchedule::Linear.betas(50).unwrap(),
        ModelMeanType::Epsilon,
        ModelVarType::FixedSmall,
        LossType::Simple,
    )
    .unwrap();
    let spec = SamplerSpec::parse("50", 50).unwrap();
    let s = Sampler::new(&d, &spec, Device::Cpu).unwrap();
    // A network that returns NaN from timestep 30 down.
    let err = s
        .sample(
            |x, t, _| {
                let bad = t.lt(31).view([-1, 1, 1, 1]);
                x.full_like(f64::NAN).where_self(&bad, &x.zeros_like())
            },
            Tensor::randn(SHAPE, (Kind::Float, Device::Cpu)),
            None,
            0,
            |_| {},
        )
        .err()
        .expect("a NaN chain is an error");
    let msg = err.to_string();
    assert!(
        msg.contains("step 20 of 50") && msg.contains("timestep 30"),
        "{msg}"
    );
}

#[test]
fn the_bug_reports_schedules_sample_finite_images_from_a_trained_shape_model() {
    // `jsd` (β_{T−1} = 1) and `linear` at T = 20 (β_end = 0.02·1000/20 = 1) with ε-prediction and
    // the default clipping: the first step is the clamped one, the images are finite.
    for (schedule, t_len) in [(BetaSchedule::Jsd, 50), (BetaSchedule::Linear, 20)] {
        let d = GaussianDiffusion::new(
            schedule.betas(t_len).unwrap(),
            ModelMeanType::Epsilon,
            ModelVarType::FixedLarge,
            LossType::Simple,
        )
        .unwrap();
        assert_eq!(d.alphas_cumprod()[t_len - 1], 0.0, "{schedule}");
        for spec in ["ddim10", &t_len.to_string()] {
            let spec = SamplerSpec::parse(spec, t_len).unwrap();
            let s = Sampler::new(&d, &spec, Device::Cpu).unwrap();
            let out = s
                .sample(
                    |x, _, _| x * 0.9,
                    Tensor::randn(SHAPE, (Kind::Float, Device::Cpu)),
                    None,
                    0,
                    |_| {},
                )
                .unwrap();
            assert!(out.raw.isfinite().all().int64_value(&[]) == 1);
            // Not all black: the images use more than one grey level.
            let u8s = ddpm_train::sampler::to_uint8_nhwc(&out.images);
            assert!(u8s.max().int64_value(&[]) > u8s.min().int64_value(&[]));
        }
    }
}

#[test]
fn dpm_solver_converges_to_the_ddim_ode_solution_on_a_fixed_model() {
    // Both integrate the same probability-flow ODE: DDIM (η = 0) is its first-order solver,
    // DPM-Solver++(2M) a second-order one. On the same grid of timesteps (DPM-Solver's, which
    // ends with x̂₀ at t = 1) they reach the same x_0 as the grid gets fine; on a coarse grid
    // DPM-Solver++ is much closer to that limit than DDIM.
    tch::set_num_threads(1);
    let d = GaussianDiffusion::new(
        BetaSchedule::Linear.betas(1000).unwrap(),
        ModelMeanType::Epsilon,
        ModelVarType::FixedSmall,
        LossType::Simple,
    )
    .unwrap();
    // Fixed weights and x_T (the global torch generator is shared with the other tests here).
    let w = [0.8, -0.5, 0.3];
    let f = move |x: &Tensor, t: &Tensor| {
        let tt = (t.to_kind(Kind::Float) / 1000.0).view([-1, 1, 1, 1]);
        ((x * w[0] + &tt * w[1]) + w[2]).tanh() * 2.0
    };
    let x_t = Tensor::from_slice(&[
        0.3f32, -1.2, 2.0, 0.05, -0.7, 1.1, 0.4, -2.2, 0.9, -0.1, 1.6, -0.4,
    ])
    .view(SHAPE);
    let run = |kind: SamplerKind, n: usize| {
        let mut timesteps = ddpm_math::dpm_solver_timesteps(1000, n).unwrap();
        timesteps.reverse();
        let spec = SamplerSpec {
            kind,
            timesteps,
            x0: X0Processing::None,
            convention: Convention::ImprovedDiffusion,
        };
        Sampler::new(&d, &spec, Device::Cpu)
            .unwrap()
            .sample(|x, t, _| f(x, t), x_t.copy(), None, 0, |_| {})
            .unwrap()
            .raw
    };
    let ddim = SamplerKind::Ddim { eta: 0.0 };
    let dpm = SamplerKind::DpmSolverPlusPlus;
    let reference = run(dpm, 999);
    let scale = 1.0 + reference.abs().max().double_value(&[]);
    let err = |x: &Tensor| (x - &reference).abs().max().double_value(&[]) / scale;
    let (ddim_999, ddim_250) = (err(&run(ddim, 999)), err(&run(ddim, 250)));
    let (dpm_20, ddim_20) = (err(&run(dpm, 20)), err(&run(ddim, 20)));
    eprintln!("relative to DPM-Solver++ 999: DDIM 999 {ddim_999:.2e}, DDIM 250 {ddim_250:.2e}, DPM-Solver++ 20 {dpm_20:.2e}, DDIM 20 {ddim_20:.2e}");
    assert!(ddim_999 < 3e-3, "DDIM 999 vs DPM-Solver++ 999: {ddim_999}");
    assert!(
        ddim_999 < ddim_250 / 2.5,
        "DDIM does not converge to it: 250 {ddim_250}, 999 {ddim_999}"
    );
    assert!(
        dpm_20 < ddim_20 / 2.5,
        "20 steps: DPM-Solver++ {dpm_20} vs DDIM {ddim_20}"
    );
}

#[test]
fn noise_steps_counts_the_draws_and_recorded_noise_replays_the_chain_bit_for_bit() {
    use ddpm_train::sampler::{DiffusersTimesteps, SamplingSettings, TimestepSpacing};
    let d = GaussianDiffusion::new(
        BetaSchedule::Linear.betas(100).unwrap(),
        ModelMeanType::Epsilon,
        ModelVarType::FixedLarge,
        LossType::Simple,
    )
    .unwrap();
    let leading = SamplingSettings {
        diffusers: Some(DiffusersTimesteps {
            spacing: TimestepSpacing::Leading,
            steps_offset: 1,
            set_alpha_to_one: true,
            dpm_solver: Default::default(),
            rescale_betas_zero_snr: false,
        }),
        ..SamplingSettings::default()
    };
    let plain = SamplingSettings::default();
    let cases = [
        ("ddpm", "100", 0.0, &plain, 99),
        ("ddpm", "10", 0.0, &plain, 9),
        ("ddpm", "10", 0.0, &leading, 10),
        ("ddim", "10", 0.0, &plain, 0),
        ("ddim", "10", 1.0, &plain, 9), // σ = 0 on the last step (ᾱ_prev = 1)
        ("dpm++", "10", 0.0, &plain, 0),
    ];
    let f = model(3, false, 100);
    for (sampler, steps, eta, settings, want) in cases {
        let spec = SamplerSpec::from_cli(sampler, steps, eta, 100, settings).unwrap();
        let s = Sampler::new(&d, &spec, Device::Cpu).unwrap();
        let label = format!("{sampler} {steps} η={eta}");
        assert_eq!(s.noise_steps(), want, "{label}");
        let x_t = Tensor::randn(SHAPE, (Kind::Float, Device::Cpu));
        let mut drawn = Vec::new();
        let first = s
            .sample_with_noise(
                |x, t, _| f(x, t),
                x_t.copy(),
                None,
                0,
                |_| {},
                |_, like| {
                    let z = like.randn_like();
                    drawn.push(z.copy());
                    z
                },
            )
            .unwrap();
        assert_eq!(drawn.len(), want, "{label}: draws");
        // Replayed from the recorded noise, after the generator has moved on: the same chain.
        let _ = Tensor::randn([7], (Kind::Float, Device::Cpu));
        let mut m = 0;
        let again = s
            .sample_with_noise(
                |x, t, _| f(x, t),
                x_t,
                None,
                0,
                |_| {},
                |_, _| {
                    m += 1;
                    drawn[m - 1].shallow_clone()
                },
            )
            .unwrap();
        let equal = first.raw.eq_tensor(&again.raw).all().int64_value(&[]) == 1;
        assert!(equal, "{label}: the replayed chain differs");
    }
}
