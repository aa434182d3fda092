#!/usr/bin/env python3
"""Write the UNet parity fixtures of ddpm-nets: two small random diffusers `UNet2DModel` checkpoints and their outputs.

How to run (from the repository root; needs PyPI, nothing else from the internet):

    python3 scripts/make_unet_parity_fixtures.py

The script runs itself inside a throw-away virtual environment (scripts/diffusers_venv.py; default /tmp/venv-diffusers, override with
DDPM_DIFFUSERS_VENV). If that venv lacks diffusers, it is created and `diffusers==0.42.1 safetensors numpy` are
installed into it with pip. torch is taken from the project's `.venv` (a .pth file points at its site-packages)
when that exists, otherwise `torch==2.11.0` is installed from PyPI. Nothing is downloaded from the Hugging Face
Hub (HF_HUB_OFFLINE=1): the models are built from configs and random weights.

Output, under crates/ddpm-nets/tests/fixtures/<name>/ (committed, < 2 MB in total):
    config.json                          diffusers' config of the model
    diffusion_pytorch_model.safetensors  its weights, float32, diffusers' key names
    io.safetensors                       x [N,C,H,W] f32, t [N] i64, (class_labels [N] i64), y: diffusers' output

Fixtures:
    cifar_layout  32x32 RGB, the DDPM CIFAR-10 layout (Down, AttnDown, Down, Down; freq_shift 1, flip false,
                  downsample_padding 0, eps 1e-6, one head) with small widths (8, 16, 16, 16), 4 groups
    grey28        28x28 grey, out_channels 2 (learned variance), 3 levels (16, 16, 32), attention at 14x14 and
                  7x7 with head dim 8 (two and four heads), class-conditional (10 classes), flip_sin_to_cos true,
                  freq_shift 0, downsample_padding 1, eps 1e-5, one layer per block
"""

import os
import sys
from pathlib import Path

from diffusers_venv import ensure_venv

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "crates" / "ddpm-nets" / "tests" / "fixtures"


def perturb_norms(model) -> None:
    """GroupNorm weights and biases start at 1 and 0; move them so that a swapped or ignored affine shows."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.GroupNorm):
            with torch.no_grad():
                module.weight.add_(0.2 * torch.randn_like(module.weight))
                module.bias.add_(0.2 * torch.randn_like(module.bias))


def write_fixture(name: str, config: dict, x_shape, t, class_labels=None, seed: int = 0) -> None:
    import torch
    from diffusers import UNet2DModel
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = UNet2DModel(**config)
    perturb_norms(model)
    model.eval()
    x = torch.randn(*x_shape, dtype=torch.float32)
    t = torch.tensor(t, dtype=torch.int64)
    tensors = {"x": x, "t": t}
    kwargs = {}
    if class_labels is not None:
        tensors["class_labels"] = torch.tensor(class_labels, dtype=torch.int64)
        kwargs["class_labels"] = tensors["class_labels"]
    with torch.no_grad():
        y = model(x, t, **kwargs).sample
    tensors["y"] = y.contiguous()
    folder = OUT / name
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    save_file(tensors, str(folder / "io.safetensors"))
    params = sum(p.numel() for p in model.parameters())
    print(f"{name}: {params} parameters, y {tuple(y.shape)} max |y| {y.abs().max().item():.4f}")


def main() -> None:
    ensure_venv(__file__, sys.argv[1:])
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    write_fixture(
        "cifar_layout",
        dict(
            sample_size=32,
            in_channels=3,
            out_channels=3,
            block_out_channels=(8, 16, 16, 16),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            freq_shift=1,
            flip_sin_to_cos=False,
            downsample_padding=0,
            norm_eps=1e-6,
            norm_num_groups=4,
            attention_head_dim=None,
            dropout=0.1,
        ),
        x_shape=(3, 3, 32, 32),
        t=[0, 417, 999],
        seed=1,
    )
    write_fixture(
        "grey28",
        dict(
            sample_size=28,
            in_channels=1,
            out_channels=2,
            block_out_channels=(16, 16, 32),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            freq_shift=0,
            flip_sin_to_cos=True,
            downsample_padding=1,
            norm_eps=1e-5,
            norm_num_groups=8,
            attention_head_dim=8,
            num_class_embeds=10,
        ),
        x_shape=(3, 1, 28, 28),
        t=[3, 250, 998],
        class_labels=[3, 0, 9],
        seed=2,
    )


if __name__ == "__main__":
    main()
