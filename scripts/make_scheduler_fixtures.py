#!/usr/bin/env python3
"""Write the scheduler fixtures of ddpm-train: diffusers' DDPMScheduler / DDIMScheduler / DPMSolverMultistepScheduler
sampling chains on two tiny random diffusers `UNet2DModel`s, so that the Rust samplers can be compared with diffusers
step by step.

How to run (from the repository root; needs PyPI, nothing else from the internet):

    python3 scripts/make_scheduler_fixtures.py

The script runs itself inside the throw-away virtual environment of scripts/diffusers_venv.py (default
/tmp/venv-diffusers, override with DDPM_DIFFUSERS_VENV; created with diffusers==0.42.1 when missing). Nothing is
downloaded from the Hugging Face Hub (HF_HUB_OFFLINE=1). The output is deterministic (fixed seeds, one thread,
deterministic torch algorithms, float32 on the CPU).

Output, under crates/ddpm-train/tests/fixtures/schedulers/ (committed, < 2 MB in total):
    unet_eps/, unet_learned/   tiny random UNet2DModels (save_pretrained: config.json and
                               diffusion_pytorch_model.safetensors, float32); 8x8 grey, widths (8, 16), attention at
                               4x4, 4 groups; out_channels 1 and 2 (the second channel is the learned_range variance).
                               conv_out is scaled so that the output's std is about 2, which makes x0 clipping matter
    <case>.json                the case's scheduler config as diffusers' save_config writes it (the config of the
                               class that ran the chain; a real pipeline's scheduler_config.json)
    <case>.safetensors         x_T [4,1,8,8] f32 start noise; timesteps [S] i64 (after set_timesteps);
                               noise [S,4,1,8,8] f32 the noise used at step i (zeros where none was used);
                               noise_used [S] i64 (1 where the step drew/used noise); chain [S,4,1,8,8] f32
                               prev_sample after each step; sample [4,1,8,8] f32 the last prev_sample (no clamping)
    cases.json                 [{name, config, unet, sampler, num_inference_steps, eta, finite, description}];
                               sampler is "ddpm", "ddim" or "dpm++"; eta is null for the DDPM and DPM-Solver++
                               cases; finite tells whether diffusers' sample is all finite

The chain is what DDPMPipeline / DDIMPipeline run: model_output = unet(x, t).sample with t the scheduler's timestep,
then DDPM: scheduler.step(model_output, t, x) with diffusers' randn_tensor (in the DDPM scheduler module) replaced so
that it returns the pre-drawn noise of the step; DDIM: scheduler.step(model_output, t, x, eta=eta,
variance_noise=noise[i]) with the default use_clipped_model_output. DDIM ignores variance_noise when eta == 0, so
those steps record noise_used 0 and zero noise. DPM-Solver++: scheduler.step(model_output, t, x) of
DPMSolverMultistepScheduler (algorithm_type "dpmsolver++", solver_order 2, midpoint: its defaults), which draws no
noise (checked: its randn_tensor is replaced too and never called), so noise is all zeros and noise_used all 0. Every
case starts from the same x_T and draws from the same noise.

Base config: DDPMScheduler with num_train_timesteps 20, beta_schedule "linear", beta_start 1e-4, beta_end 0.2, the
rest default. DDIM and DPM-Solver++ cases build DDIMScheduler / DPMSolverMultistepScheduler.from_config of the
case's dict (DPM-Solver++'s own defaults apply: timestep_spacing linspace, no clip_sample, final_sigmas_type zero,
lower_order_final true; its saved JSON has "lambda_min_clipped": -Infinity, as diffusers writes it). Cases (change
from the base; sampler, inference steps, eta):
    ddpm_base                    -; ddpm 20
    ddpm_no_clip                 clip_sample false; ddpm 20
    ddim_base                    -; ddim 10, 0
    ddim_no_clip                 clip_sample false; ddim 10, 0
    ddim_eta1                    -; ddim 10, 1
    ddpm_trained_betas           trained_betas: 20 betas geometric from 0.002 to 0.4; ddpm 20
    ddim_trained_betas           the same; ddim 10, 0
    ddpm_clip_range              clip_sample_range 0.5; ddpm 20
    ddpm_thresholding            thresholding, dynamic_thresholding_ratio 0.9, sample_max_value 1.5; ddpm 20
    ddim_thresholding            the same; ddim 10, 0
    ddpm_spacing_linspace        timestep_spacing linspace; ddpm 7
    ddpm_spacing_leading         timestep_spacing leading, steps_offset 1; ddpm 7
    ddpm_spacing_trailing        timestep_spacing trailing; ddpm 7
    ddim_spacing_linspace        timestep_spacing linspace; ddim 7, 0.5
    ddim_spacing_leading         timestep_spacing leading, steps_offset 1; ddim 7, 0.5
    ddim_spacing_trailing        timestep_spacing trailing; ddim 7, 0.5
    ddim_alpha_not_one           set_alpha_to_one false; ddim 10, 0.5
    ddpm_v, ddim_v               prediction_type v_prediction; ddpm 20 / ddim 10, 0
    ddpm_sample, ddim_sample     prediction_type sample; ddpm 20 / ddim 10, 0
    ddpm_fixed_large             variance_type fixed_large; ddpm 20
    ddpm_fixed_small_log         variance_type fixed_small_log; ddpm 20
    ddpm_fixed_large_log         variance_type fixed_large_log; ddpm 20 (diffusers' chain is NaN: it takes the square
                                 root of log(beta) < 0)
    ddpm_learned_range           variance_type learned_range, unet_learned; ddpm 20
    ddpm_scaled_linear           beta_schedule scaled_linear; ddpm 20
    ddpm_cosine                  beta_schedule squaredcos_cap_v2; ddpm 20
    ddpm_sigmoid                 beta_schedule sigmoid; ddpm 20
    ddpm_zsnr_v, ddim_zsnr_v     rescale_betas_zero_snr, v_prediction; ddpm 20 / ddim 10, 0
    ddpm_zsnr_eps, ddim_zsnr_eps rescale_betas_zero_snr, epsilon, clip on; ddpm 20 / ddim 10, 0
    ddpm_beta_one_eps            trained_betas linear from 1e-4 to exactly 1.0, epsilon, clip on; ddpm 20
    ddim_beta_one_eps            the same; ddim 10, 0
    ddim_zsnr_eps_trailing       ddim_zsnr_eps with timestep_spacing trailing; ddim 10, 0 (leading spacing starts
                                 DDIM at t = 18, so only trailing reaches the t = 19 where alpha_cumprod is 0)
    ddim_beta_one_eps_trailing   ddim_beta_one_eps with timestep_spacing trailing; ddim 10, 0
    dpm_base                     -; dpm++ 5
    dpm_7                        -; dpm++ 7
    dpm_v                        prediction_type v_prediction; dpm++ 7
    dpm_sample                   prediction_type sample; dpm++ 7
    dpm_thresholding             thresholding, dynamic_thresholding_ratio 0.9, sample_max_value 1.5; dpm++ 7
    dpm_sigma_min                final_sigmas_type sigma_min; dpm++ 7 (the last step is first order: n < 15)
    dpm_no_lower_order_final     lower_order_final false, final_sigmas_type sigma_min; dpm++ 7 (the last step is
                                 second order; differs from dpm_sigma_min at the last step only). lower_order_final
                                 acts only when n < 15, so at 16 steps it would change nothing (see dpm_sigma_min_16)
    dpm_sigma_min_16             final_sigmas_type sigma_min; dpm++ 16 (n >= 15: lower_order_final is inactive and the
                                 last step is second order, the same chain as with lower_order_final false)
    dpm_euler_at_final           euler_at_final, final_sigmas_type sigma_min; dpm++ 16 (differs from
                                 dpm_sigma_min_16 at the last step only: first order there)
    dpm_learned_range            variance_type learned_range, unet_learned; dpm++ 7. LEFT OUT: diffusers keeps
                                 model_output[:, :3] (3 channels hard-coded), i.e. both channels of the 1-channel
                                 model's [4,2,8,8] output, so the first prev_sample broadcasts to [4,2,8,8] and the
                                 next UNet call raises (conv_in expects 1 channel)
    dpm_zsnr_v                   rescale_betas_zero_snr, v_prediction; dpm++ 7 (DPM-Solver++ then overwrites
                                 alphas_cumprod[-1] = 2**-24, so the first point t = 19 has sigma 4096, alpha 2**-12)
A case that raises in diffusers, or whose chain changes shape, is left out (and reported); with diffusers 0.42.1 that
is dpm_learned_range only.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

from diffusers_venv import ensure_venv

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "crates" / "ddpm-train" / "tests" / "fixtures" / "schedulers"

BATCH = 4
SAMPLE_SHAPE = (BATCH, 1, 8, 8)
OUTPUT_STD = 2.0

BASE = dict(num_train_timesteps=20, beta_schedule="linear", beta_start=1e-4, beta_end=0.2)


def geometric(first: float, last: float, n: int) -> list:
    """n values from first to last with a constant ratio, as Python floats (they go into JSON)."""
    ratio = (last / first) ** (1.0 / (n - 1))
    values = [first * ratio**i for i in range(n)]
    values[-1] = last
    return values


def linear(first: float, last: float, n: int) -> list:
    """n evenly spaced values from first to exactly last, as Python floats."""
    values = [first + (last - first) * i / (n - 1) for i in range(n)]
    values[-1] = last
    return values


def cases() -> list:
    """(name, sampler, steps, eta, unet, changes from BASE, description) of every case."""
    geometric_betas = geometric(0.002, 0.4, 20)
    beta_one = linear(1e-4, 1.0, 20)
    threshold = dict(thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=1.5)
    zsnr = dict(rescale_betas_zero_snr=True)
    rows = [
        ("ddpm_base", "ddpm", 20, 0.0, "unet_eps", {}, "the base config"),
        ("ddpm_no_clip", "ddpm", 20, 0.0, "unet_eps", dict(clip_sample=False), "x0 is not clipped"),
        ("ddim_base", "ddim", 10, 0.0, "unet_eps", {}, "the base config, deterministic DDIM"),
        ("ddim_no_clip", "ddim", 10, 0.0, "unet_eps", dict(clip_sample=False), "x0 is not clipped"),
        ("ddim_eta1", "ddim", 10, 1.0, "unet_eps", {}, "eta 1: the DDPM-like variance"),
        ("ddpm_trained_betas", "ddpm", 20, 0.0, "unet_eps", dict(trained_betas=geometric_betas),
         "trained_betas: 20 betas geometric from 0.002 to 0.4"),
        ("ddim_trained_betas", "ddim", 10, 0.0, "unet_eps", dict(trained_betas=geometric_betas),
         "trained_betas: 20 betas geometric from 0.002 to 0.4"),
        ("ddpm_clip_range", "ddpm", 20, 0.0, "unet_eps", dict(clip_sample_range=0.5), "x0 clipped to [-0.5, 0.5]"),
        ("ddpm_thresholding", "ddpm", 20, 0.0, "unet_eps", threshold,
         "dynamic thresholding (ratio 0.9, sample_max_value 1.5) instead of clipping"),
        ("ddim_thresholding", "ddim", 10, 0.0, "unet_eps", threshold,
         "dynamic thresholding (ratio 0.9, sample_max_value 1.5) instead of clipping"),
        ("ddpm_spacing_linspace", "ddpm", 7, 0.0, "unet_eps", dict(timestep_spacing="linspace"),
         "7 linspace timesteps"),
        ("ddpm_spacing_leading", "ddpm", 7, 0.0, "unet_eps", dict(timestep_spacing="leading", steps_offset=1),
         "7 leading timesteps with steps_offset 1 (the last step is t = 1, which still draws noise)"),
        ("ddpm_spacing_trailing", "ddpm", 7, 0.0, "unet_eps", dict(timestep_spacing="trailing"),
         "7 trailing timesteps"),
        ("ddim_spacing_linspace", "ddim", 7, 0.5, "unet_eps", dict(timestep_spacing="linspace"),
         "7 linspace timesteps; DDIM's previous timestep is still t - T // n"),
        ("ddim_spacing_leading", "ddim", 7, 0.5, "unet_eps", dict(timestep_spacing="leading", steps_offset=1),
         "7 leading timesteps with steps_offset 1"),
        ("ddim_spacing_trailing", "ddim", 7, 0.5, "unet_eps", dict(timestep_spacing="trailing"),
         "7 trailing timesteps; DDIM's previous timestep is still t - T // n"),
        ("ddim_alpha_not_one", "ddim", 10, 0.5, "unet_eps", dict(set_alpha_to_one=False),
         "set_alpha_to_one false: the last step's previous alpha_cumprod is alphas_cumprod[0]"),
        ("ddpm_v", "ddpm", 20, 0.0, "unet_eps", dict(prediction_type="v_prediction"), "v prediction"),
        ("ddim_v", "ddim", 10, 0.0, "unet_eps", dict(prediction_type="v_prediction"), "v prediction"),
        ("ddpm_sample", "ddpm", 20, 0.0, "unet_eps", dict(prediction_type="sample"), "x0 prediction"),
        ("ddim_sample", "ddim", 10, 0.0, "unet_eps", dict(prediction_type="sample"), "x0 prediction"),
        ("ddpm_fixed_large", "ddpm", 20, 0.0, "unet_eps", dict(variance_type="fixed_large"),
         "variance beta_t (the step's 1 - alpha_cumprod_t / alpha_cumprod_prev)"),
        ("ddpm_fixed_small_log", "ddpm", 20, 0.0, "unet_eps", dict(variance_type="fixed_small_log"),
         "fixed_small_log: the std is exp(0.5 log(clamped posterior variance))"),
        ("ddpm_fixed_large_log", "ddpm", 20, 0.0, "unet_eps", dict(variance_type="fixed_large_log"),
         "fixed_large_log: diffusers takes the square root of log(beta_t) < 0, so the chain turns NaN"),
        ("ddpm_learned_range", "ddpm", 20, 0.0, "unet_learned", dict(variance_type="learned_range"),
         "learned_range: channel 1 of the UNet output interpolates the log variance"),
        ("ddpm_scaled_linear", "ddpm", 20, 0.0, "unet_eps", dict(beta_schedule="scaled_linear"),
         "scaled_linear betas"),
        ("ddpm_cosine", "ddpm", 20, 0.0, "unet_eps", dict(beta_schedule="squaredcos_cap_v2"),
         "squaredcos_cap_v2 betas"),
        ("ddpm_sigmoid", "ddpm", 20, 0.0, "unet_eps", dict(beta_schedule="sigmoid"), "sigmoid betas"),
        ("ddpm_zsnr_v", "ddpm", 20, 0.0, "unet_eps", dict(zsnr, prediction_type="v_prediction"),
         "zero terminal SNR, v prediction"),
        ("ddim_zsnr_v", "ddim", 10, 0.0, "unet_eps", dict(zsnr, prediction_type="v_prediction"),
         "zero terminal SNR, v prediction"),
        ("ddpm_zsnr_eps", "ddpm", 20, 0.0, "unet_eps", dict(zsnr, prediction_type="epsilon", clip_sample=True),
         "zero terminal SNR, epsilon prediction: x0 is +-inf at the first step and clipping makes it finite"),
        ("ddim_zsnr_eps", "ddim", 10, 0.0, "unet_eps", dict(zsnr, prediction_type="epsilon", clip_sample=True),
         "zero terminal SNR, epsilon prediction: x0 is +-inf at the first step and clipping makes it finite"),
        ("ddpm_beta_one_eps", "ddpm", 20, 0.0, "unet_eps",
         dict(trained_betas=beta_one, prediction_type="epsilon", clip_sample=True),
         "trained_betas linear from 1e-4 to exactly 1.0 (alpha_cumprod reaches 0), epsilon prediction, clipping"),
        ("ddim_beta_one_eps", "ddim", 10, 0.0, "unet_eps",
         dict(trained_betas=beta_one, prediction_type="epsilon", clip_sample=True),
         "trained_betas linear from 1e-4 to exactly 1.0 (alpha_cumprod reaches 0), epsilon prediction, clipping"),
        ("ddim_zsnr_eps_trailing", "ddim", 10, 0.0, "unet_eps",
         dict(zsnr, prediction_type="epsilon", clip_sample=True, timestep_spacing="trailing"),
         "ddim_zsnr_eps with trailing spacing, so that the chain starts at t = 19 where alpha_cumprod is 0"),
        ("ddim_beta_one_eps_trailing", "ddim", 10, 0.0, "unet_eps",
         dict(trained_betas=beta_one, prediction_type="epsilon", clip_sample=True, timestep_spacing="trailing"),
         "ddim_beta_one_eps with trailing spacing, so that the chain starts at t = 19 where alpha_cumprod is 0"),
        # DPM-Solver++ (2M): DPMSolverMultistepScheduler's defaults (dpmsolver++, order 2, midpoint, linspace).
        ("dpm_base", "dpm++", 5, None, "unet_eps", {}, "the base config, DPM-Solver++ (2M), final sigma zero"),
        ("dpm_7", "dpm++", 7, None, "unet_eps", {}, "7 linspace timesteps, final sigma zero"),
        ("dpm_v", "dpm++", 7, None, "unet_eps", dict(prediction_type="v_prediction"), "v prediction"),
        ("dpm_sample", "dpm++", 7, None, "unet_eps", dict(prediction_type="sample"), "x0 prediction"),
        ("dpm_thresholding", "dpm++", 7, None, "unet_eps", threshold,
         "dynamic thresholding (ratio 0.9, sample_max_value 1.5) of the data prediction; DPM-Solver++ never clips"),
        ("dpm_sigma_min", "dpm++", 7, None, "unet_eps", dict(final_sigmas_type="sigma_min"),
         "final_sigmas_type sigma_min: the chain ends at the noise level of t = 0; n < 15 with lower_order_final, so "
         "the last step is first order"),
        ("dpm_no_lower_order_final", "dpm++", 7, None, "unet_eps",
         dict(lower_order_final=False, final_sigmas_type="sigma_min"),
         "lower_order_final false, sigma_min: the last step is second order (differs from dpm_sigma_min there only)"),
        ("dpm_sigma_min_16", "dpm++", 16, None, "unet_eps", dict(final_sigmas_type="sigma_min"),
         "sigma_min, 16 steps: lower_order_final acts only for n < 15, so the last step is second order"),
        ("dpm_euler_at_final", "dpm++", 16, None, "unet_eps", dict(euler_at_final=True, final_sigmas_type="sigma_min"),
         "euler_at_final, sigma_min, 16 steps: the last step is first order (differs from dpm_sigma_min_16 there only)"),
        ("dpm_learned_range", "dpm++", 7, None, "unet_learned", dict(variance_type="learned_range"),
         "learned_range: diffusers keeps model_output[:, :3], both channels of a 1-channel model, and breaks"),
        ("dpm_zsnr_v", "dpm++", 7, None, "unet_eps", dict(zsnr, prediction_type="v_prediction"),
         "zero terminal SNR, v prediction: DPM-Solver++ sets alphas_cumprod[-1] = 2**-24 (not 0), so t = 19 has "
         "sigma 4096 and alpha 2**-12"),
    ]
    return rows


def make_unet(out_channels: int, seed: int):
    """A tiny random UNet2DModel whose conv_out is scaled so that its output's std is about OUTPUT_STD."""
    import torch
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    model = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=out_channels,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        attention_head_dim=8,
        norm_num_groups=4,
    )
    model.eval()
    probe = torch.randn(8, *SAMPLE_SHAPE[1:])
    with torch.no_grad():
        std = model(probe, torch.tensor(10)).sample.std().item()
        scale = OUTPUT_STD / std
        model.conv_out.weight.mul_(scale)
        model.conv_out.bias.mul_(scale)
    return model


def build_scheduler(sampler: str, config: dict, **overrides):
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    cls = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm++": DPMSolverMultistepScheduler}[sampler]
    return cls.from_config(dict(config, **overrides))


class NoiseFeed:
    """Stands in for the randn_tensor of diffusers' DDPM scheduler module: hands out the pre-drawn noise of a step."""

    def __init__(self):
        self.noise = None
        self.calls = 0

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None):
        if tuple(shape) != tuple(self.noise.shape):
            raise RuntimeError(f"scheduler asked for noise of shape {tuple(shape)}, expected {tuple(self.noise.shape)}")
        self.calls += 1
        return self.noise.clone().to(dtype=dtype)


def x0_outside_at_first_step(sampler, config, steps, unet, x, eta, noise, feed) -> float:
    """The fraction of x0 pixels outside [-1, 1] at the first step, before clipping or thresholding."""
    import torch

    limits = dict(thresholding=False) if sampler == "dpm++" else dict(clip_sample=False, thresholding=False)
    scheduler = build_scheduler(sampler, config, **limits)
    scheduler.set_timesteps(steps)
    t = scheduler.timesteps[0]
    with torch.no_grad():
        out = unet(x, t).sample
        feed.noise = noise
        if sampler == "ddpm":
            x0 = scheduler.step(out, t, x).pred_original_sample
        elif sampler == "dpm++":
            scheduler.step(out, t, x)
            x0 = scheduler.model_outputs[-1]  # the converted model output: the data prediction x0
        else:
            x0 = scheduler.step(out, t, x, eta=eta, variance_noise=noise).pred_original_sample
    return (x0.abs() > 1).float().mean().item()


def run_case(name, sampler, steps, eta, unet_name, config, unet, x_T, noise_bank, feed):
    """Runs the chain; returns the tensors of <case>.safetensors, the scheduler and the first-step x0 fraction."""
    import torch

    scheduler = build_scheduler(sampler, config)
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps.clone()
    n = len(timesteps)
    noise = torch.zeros(n, *SAMPLE_SHAPE)
    noise_used = torch.zeros(n, dtype=torch.int64)
    chain = torch.zeros(n, *SAMPLE_SHAPE)
    x = x_T.clone()
    outside = x0_outside_at_first_step(sampler, config, steps, unet, x_T, eta, noise_bank[0], feed)
    for i, t in enumerate(timesteps):
        with torch.no_grad():
            out = unet(x, t).sample
            if sampler == "ddpm":
                feed.noise, feed.calls = noise_bank[i], 0
                x = scheduler.step(out, t, x).prev_sample
                if feed.calls > 1:
                    raise RuntimeError(f"{name}: the DDPM step drew noise {feed.calls} times")
                used = feed.calls == 1
            elif sampler == "dpm++":
                feed.noise, feed.calls = noise_bank[i], 0
                x = scheduler.step(out, t, x).prev_sample
                if feed.calls:
                    raise RuntimeError(f"{name}: the DPM-Solver++ step drew noise")
                used = False
            else:
                x = scheduler.step(out, t, x, eta=eta, variance_noise=noise_bank[i]).prev_sample
                used = eta > 0
        if tuple(x.shape) != SAMPLE_SHAPE:
            raise RuntimeError(f"{name}: step {i} returned prev_sample of shape {tuple(x.shape)}, not {SAMPLE_SHAPE}")
        if used:
            noise[i] = noise_bank[i]
            noise_used[i] = 1
        chain[i] = x
    tensors = {
        "x_T": x_T.contiguous(),
        "timesteps": timesteps.to(torch.int64).contiguous(),
        "noise": noise.contiguous(),
        "noise_used": noise_used,
        "chain": chain.contiguous(),
        "sample": x.contiguous(),
    }
    return tensors, scheduler, outside


def main() -> None:
    ensure_venv(__file__, sys.argv[1:])
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from diffusers.schedulers import scheduling_ddpm, scheduling_dpmsolver_multistep
    from safetensors.torch import save_file

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    feed = NoiseFeed()
    scheduling_ddpm.randn_tensor = feed
    scheduling_dpmsolver_multistep.randn_tensor = feed  # dpmsolver++ must never call it

    OUT.mkdir(parents=True, exist_ok=True)
    unets = {"unet_eps": make_unet(1, seed=11), "unet_learned": make_unet(2, seed=12)}
    for unet_name, unet in unets.items():
        unet.save_pretrained(OUT / unet_name, safe_serialization=True)
        params = sum(p.numel() for p in unet.parameters())
        print(f"{unet_name}: {params} parameters")

    generator = torch.Generator().manual_seed(2024)
    x_T = torch.randn(SAMPLE_SHAPE, generator=generator)
    noise_bank = torch.randn((20, *SAMPLE_SHAPE), generator=generator)

    index = []
    failed = []
    print(f"{'case':<28}{'steps':>6}{'finite':>8}{'x0 outside [-1,1] at step 0':>30}")
    for name, sampler, steps, eta, unet_name, changes, description in cases():
        config = dict(BASE, **changes)
        try:
            tensors, scheduler, outside = run_case(
                name, sampler, steps, eta, unet_name, config, unets[unet_name], x_T, noise_bank, feed
            )
        except Exception as error:  # a case diffusers cannot run is reported and left out
            failed.append((name, f"{type(error).__name__}: {error}"))
            for stale in (OUT / f"{name}.json", OUT / f"{name}.safetensors"):
                stale.unlink(missing_ok=True)
            continue
        scheduler.to_json_file(OUT / f"{name}.json")  # what save_config writes as scheduler_config.json
        save_file(tensors, str(OUT / f"{name}.safetensors"))
        finite = bool(torch.isfinite(tensors["sample"]).all())
        index.append(
            dict(
                name=name,
                config=f"{name}.json",
                unet=unet_name,
                sampler=sampler,
                num_inference_steps=steps,
                eta=eta if sampler == "ddim" else None,
                finite=finite,
                description=description,
            )
        )
        print(f"{name:<28}{steps:>6}{str(finite):>8}{outside:>30.3f}")
    (OUT / "cases.json").write_text(json.dumps(index, indent=2) + "\n")
    for name, why in failed:
        print(f"left out {name}: {why}")

    total = 0
    digest = hashlib.sha256()
    for path in sorted(OUT.rglob("*")):
        if path.is_file():
            total += path.stat().st_size
            digest.update(path.relative_to(OUT).as_posix().encode())
            digest.update(path.read_bytes())
    print(f"{len(index)} cases, {total} bytes under {OUT.relative_to(REPO)}, sha256 {digest.hexdigest()[:16]}")


if __name__ == "__main__":
    main()
