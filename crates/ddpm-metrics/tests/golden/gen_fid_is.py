#!/usr/bin/env python3
"""Golden values for ddpm-metrics' FID and Inception Score, computed independently with numpy/scipy.

Writes `fid_is.json` beside this script: two fixed feature matrices with different means and
covariances, a probability matrix, and

* the Fréchet distance the way pytorch-fid computes it (mean and covariance with ddof 1,
  `scipy.linalg.sqrtm` of Σ1·Σ2, real part, trace);
* the Inception Score the way Salimans et al.'s reference code and StyleGAN's metric compute it
  (10 consecutive splits, exp of the mean KL(p(y|x) ‖ p(y)) per split, mean and population std).

Inputs are rounded to 7 significant digits (probabilities then renormalised) before anything
is computed, and JSON keeps every float's shortest round-trip form, so both sides use the same
numbers. Run (numpy + scipy, any recent version):

    python3 -m venv /tmp/venv-sci && /tmp/venv-sci/bin/pip install -q numpy scipy
    /tmp/venv-sci/bin/python crates/ddpm-metrics/tests/golden/gen_fid_is.py
"""
import json
import pathlib

import numpy as np
import scipy
import scipy.linalg

SEED = 20240611
N_FEAT, DIM = 200, 64
N_PROB, N_CLASSES, SPLITS = 500, 10, 10


def rounded(a):
    return np.array([[float(f"{v:.7g}") for v in row] for row in a], dtype=np.float64)


def features(rng, shift, scale):
    # Correlated Gaussian features: x = shift + z @ A, with A a random mixing matrix.
    mix = rng.normal(size=(DIM, DIM)) * scale / np.sqrt(DIM)
    z = rng.normal(size=(N_FEAT, DIM))
    return rounded(shift + z @ mix)


def probabilities(rng):
    # Softmax of logits with per-row temperature; a few rows very peaked.
    logits = rng.normal(size=(N_PROB, N_CLASSES)) * rng.uniform(0.5, 6.0, size=(N_PROB, 1))
    logits[:, 3] += 1.0  # a class preference, so p(y) is not uniform
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    p = rounded(e / e.sum(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)  # renormalise after rounding (kept as is in the JSON)


def fid(a, b):
    mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
    s1, s2 = np.cov(a, rowvar=False, ddof=1), np.cov(b, rowvar=False, ddof=1)
    covmean = np.asarray(scipy.linalg.sqrtm(s1.dot(s2))).real
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean)), float(
        np.trace(covmean)
    )


def inception_score(p, splits):
    n = p.shape[0]
    scores = []
    for k in range(splits):
        part = p[k * n // splits : (k + 1) * n // splits]
        py = part.mean(axis=0, keepdims=True)
        kl = (part * (np.log(part) - np.log(py))).sum(axis=1).mean()
        scores.append(float(np.exp(kl)))
    return float(np.mean(scores)), float(np.std(scores)), scores


def main():
    rng = np.random.default_rng(SEED)
    feat_a = features(rng, shift=rng.normal(size=DIM) * 0.5, scale=1.0)
    feat_b = features(rng, shift=rng.normal(size=DIM) * 0.5 + 0.3, scale=1.4)
    probs = probabilities(rng)
    value, trace_sqrt = fid(feat_a, feat_b)
    self_value, _ = fid(feat_a, feat_a)
    is_mean, is_std, is_splits = inception_score(probs, SPLITS)
    out = {
        "generator": "gen_fid_is.py",
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "seed": SEED,
        "features_a": feat_a.tolist(),
        "features_b": feat_b.tolist(),
        "fid": value,
        "fid_trace_sqrt": trace_sqrt,
        "fid_self_scipy": self_value,
        "probs": probs.tolist(),
        "is_splits": SPLITS,
        "is_mean": is_mean,
        "is_std": is_std,
        "is_split_scores": is_splits,
    }
    path = pathlib.Path(__file__).with_name("fid_is.json")
    path.write_text(json.dumps(out) + "\n")
    print(f"wrote {path}: fid {value!r}, IS {is_mean!r} ± {is_std!r}, self-FID (scipy) {self_value!r}")


if __name__ == "__main__":
    main()
