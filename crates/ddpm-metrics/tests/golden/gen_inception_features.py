#!/usr/bin/env python3
"""Golden pool3 features of fid-inception-pool3.pt for four synthetic 28×28 grey images.

The images are defined by a formula (pixel = (37·n + 11·y + 5·x + (x·y) mod 7) mod 256), so the
Rust test rebuilds them exactly. Preprocessing follows the file's README and the usual FID
convention: grey repeated to 3 channels, bilinear resize to 299×299 with align_corners=False,
x = (p − 128)/128. Writes `inception_pool3.json` beside this script with, per image, the first 16
features and the sum and sum of squares of all 2048.

Run with the project's virtual environment (torch, no numpy needed):

    .venv/bin/python crates/ddpm-metrics/tests/golden/gen_inception_features.py [WEIGHTS]

WEIGHTS defaults to datasets/weights/fid-inception-pool3.pt, then ../shared/weights/.
"""
import hashlib
import json
import pathlib
import sys

import torch
import torch.nn.functional as F

N, H, W = 4, 28, 28


def pixel(n, y, x):
    return (37 * n + 11 * y + 5 * x + (x * y) % 7) % 256


def find_weights():
    if len(sys.argv) > 1:
        return pathlib.Path(sys.argv[1])
    root = pathlib.Path(__file__).resolve().parents[4]
    for p in [root / "datasets/weights/fid-inception-pool3.pt", root.parent / "shared/weights/fid-inception-pool3.pt"]:
        if p.is_file():
            return p
    sys.exit("fid-inception-pool3.pt not found: run `cargo xtask fetch-weights`")


def main():
    weights = find_weights()
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    imgs = torch.tensor(
        [[[pixel(n, y, x) for x in range(W)] for y in range(H)] for n in range(N)], dtype=torch.uint8
    )
    x = imgs.unsqueeze(1).float().repeat(1, 3, 1, 1)
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    x = (x - 128.0) / 128.0
    net = torch.jit.load(str(weights), map_location="cpu").eval()
    with torch.no_grad():
        feats = net(x).double()
    out = {
        "generator": "gen_inception_features.py",
        "torch": torch.__version__,
        "weights_sha256": sha,
        "shape": list(feats.shape),
        "first16": feats[:, :16].tolist(),
        "sum": feats.sum(dim=1).tolist(),
        "sum_sq": (feats * feats).sum(dim=1).tolist(),
    }
    path = pathlib.Path(__file__).with_name("inception_pool3.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}: sums {out['sum']}")


if __name__ == "__main__":
    main()
