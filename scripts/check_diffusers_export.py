#!/usr/bin/env python3
"""Check a folder written by `ddpm-cli export` in diffusers itself.

Usage (from the repository root; needs PyPI the first time, nothing from the Hugging Face Hub):

    python3 scripts/check_diffusers_export.py PIPELINE_DIR IO.safetensors

The script runs inside the throw-away virtual environment of scripts/diffusers_venv.py (diffusers==0.42.1, torch
from the project's .venv). IO.safetensors holds fixed UNet inputs and ddpm-rs's outputs on them:
    sample [N,C,H,W] f32, timestep [N] i64, output [N,C',H,W] f32 (ddpm-rs's UNet on the EMA weights),
    betas [T] f64 (the run's betas).

Checks, each printed; the exit status is 1 when one fails:
  1. `UNet2DModel.from_pretrained(DIR/unet)` on (sample, timestep) matches `output` to 1e-4 (max |difference|).
  2. `DDPMPipeline.from_pretrained(DIR)` loads with a DDPMScheduler whose betas are the run's betas rounded to f32
     (exactly), and whose prediction and variance types are those of the config.
  3. The pipeline samples: 2 images with 5 inference steps, finite, of the UNet's sample size, in [0, 1].
The last line is a JSON summary.
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from diffusers_venv import ensure_venv  # noqa: E402

TOLERANCE = 1e-4


def main(argv):
    if len(argv) != 2:
        print(__doc__)
        return 2
    ensure_venv(__file__, argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import torch
    from diffusers import DDPMPipeline, UNet2DModel
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    pipe_dir, io_file = Path(argv[0]), Path(argv[1])
    io = load_file(str(io_file))
    failures = []
    summary = {}

    unet = UNet2DModel.from_pretrained(str(pipe_dir / "unet")).eval()
    with torch.no_grad():
        theirs = unet(io["sample"], io["timestep"]).sample
    diff = (theirs - io["output"]).abs().max().item()
    summary["unet_max_abs_diff"] = diff
    print(f"UNet2DModel vs ddpm-rs on {tuple(io['sample'].shape)}: max |difference| {diff:.3e} (tolerance {TOLERANCE})")
    if not diff <= TOLERANCE:
        failures.append(f"UNet outputs differ by {diff:.3e} > {TOLERANCE}")

    pipe = DDPMPipeline.from_pretrained(str(pipe_dir))
    sched = pipe.scheduler
    want = io["betas"].to(torch.float32)
    same_betas = sched.betas.shape == want.shape and torch.equal(sched.betas, want)
    print(f"{type(sched).__name__}: {len(sched.betas)} betas, equal to the run's in f32: {same_betas}; "
          f"prediction_type {sched.config.prediction_type}, variance_type {sched.config.variance_type}")
    if not same_betas:
        failures.append("the scheduler's betas differ from the run's")
    config = json.loads((pipe_dir / "scheduler" / "scheduler_config.json").read_text())
    for key in ("prediction_type", "variance_type", "clip_sample", "thresholding"):
        if sched.config[key] != config[key]:
            failures.append(f"scheduler {key} {sched.config[key]!r} != the file's {config[key]!r}")
    summary["betas_equal"] = bool(same_betas)

    images = pipe(batch_size=2, num_inference_steps=5, generator=torch.manual_seed(0), output_type="np").images
    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    ok = images.shape[1:3] == size and bool(np.isfinite(images).all()) and images.min() >= 0 and images.max() <= 1
    print(f"DDPMPipeline(batch_size=2, num_inference_steps=5): images {images.shape}, finite and in [0, 1]: {ok}")
    if not ok:
        failures.append(f"pipeline images {images.shape} not finite in [0, 1] at {size}")
    summary["pipeline_images"] = list(images.shape)
    summary["failures"] = failures
    print(json.dumps(summary))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
