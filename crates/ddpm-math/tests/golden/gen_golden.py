#!/usr/bin/env python3
"""Golden values for crates/ddpm-math/tests/golden.rs: an independent float64 implementation of REFERENCE.md.

Run from the repository root (numpy only; any recent version):

    python3 -m venv /tmp/venv-np && /tmp/venv-np/bin/pip install -q numpy
    /tmp/venv-np/bin/python crates/ddpm-math/tests/golden/gen_golden.py

It rewrites the *.json files next to this script:

    tables_1000.json          core tables of the linear and cosine schedules at T = 1000
    tables_all_40.json        every table of every schedule at T = 40
    respaced.json             space_timesteps and respaced diffusions
    likelihood.json           normal_kl, approx_standard_normal_cdf, discretized_gaussian_log_likelihood
    reverse_cosine_1000.json  p_mean_variance and vb_bpd for every mean and variance type
    dpm_solver.json           DPM-Solver++ (2M) points, orders, step coefficients and a toy chain (see dpm_solver)
    min_snr.json              min-SNR-γ weights of the MSE term for every mean type (see min_snr_weights)

Non-finite floats are written as the strings "inf", "-inf"
and "nan" (JSON has no such numbers). Transcendental functions of scalars use Python's `math` module, so that
both sides call the platform libm; array arithmetic is plain IEEE float64.
"""

import json
import math
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------------------------------------- schedules
def linspace(a, b, n):
    return np.linspace(a, b, n, dtype=np.float64)


def schedule(name, T):
    s = 1000.0 / T
    b0, b1 = s * 1e-4, s * 0.02
    if name == "linear":
        return linspace(b0, b1, T)
    if name == "quad":
        return linspace(math.sqrt(b0), math.sqrt(b1), T) ** 2
    if name == "sigmoid":
        xs = linspace(-6.0, 6.0, T)
        return np.array([(b1 - b0) * (1.0 / (1.0 + math.exp(-x))) + b0 for x in xs])
    if name == "const":
        return np.full(T, b1)
    if name == "jsd":
        return 1.0 / linspace(T, 1, T)
    if name == "cosine":
        def f(u):
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)])
    raise ValueError(name)


# ---------------------------------------------------------------------------------------------- tables
def tables(betas):
    T = len(betas)
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    abar_next = np.concatenate([abar[1:], [0.0]])
    with np.errstate(divide="ignore"):
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        log = lambda a: np.array([math.log(x) if x > 0 else -math.inf for x in a])
        large = np.concatenate([[post_var[1]], betas[1:]])
        out = {
            "betas": betas,
            "log_betas": log(betas),
            "alphas": alphas,
            "alphas_cumprod": abar,
            "alphas_cumprod_prev": abar_prev,
            "alphas_cumprod_next": abar_next,
            "sqrt_alphas_cumprod": np.sqrt(abar),
            "sqrt_alphas_cumprod_prev": np.sqrt(abar_prev),
            "sqrt_alphas_cumprod_next": np.sqrt(abar_next),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - abar),
            "log_one_minus_alphas_cumprod": log(1.0 - abar),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / abar),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / abar - 1.0),
            "posterior_variance": post_var,
            "posterior_log_variance_clipped": log(np.concatenate([[post_var[1]], post_var[1:]])),
            "posterior_mean_coef1": betas * np.sqrt(abar_prev) / (1.0 - abar),
            "posterior_mean_coef2": (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
            "fixed_large_variance": large,
            "fixed_large_log_variance": log(large),
        }
    return out


CORE = ["betas", "alphas_cumprod", "alphas_cumprod_prev", "alphas_cumprod_next", "posterior_variance",
        "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2"]


# ---------------------------------------------------------------------------------------------- respacing
def space(T, spec):
    if spec.startswith("ddim"):
        n = int(spec[4:])
        for k in range(1, T):
            if len(range(0, T, k)) == n:
                return list(range(0, T, k))
        raise ValueError(spec)
    counts = [int(c) for c in spec.split(",")]
    per, extra = divmod(T, len(counts))
    start, kept = 0, []
    for i, c in enumerate(counts):
        size = per + (1 if i < extra else 0)
        stride = 1 if c <= 1 else (size - 1) / (c - 1)
        pos = 0.0
        for _ in range(c):
            kept.append(start + round(pos))  # Python's round: ties to even
            pos += stride
        start += size
    return sorted(set(kept))


def respaced_betas(abar, kept):
    last, out = 1.0, []
    for t in kept:
        out.append(1.0 - abar[t] / last)
        last = abar[t]
    return np.array(out)


# ---------------------------------------------------------------------------------------------- likelihood
def normal_kl(m1, lv1, m2, lv2):
    return 0.5 * (-1.0 + lv2 - lv1 + math.exp(lv1 - lv2) + (m1 - m2) ** 2 * math.exp(-lv2))


def cdf(x):
    return 0.5 * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def decoder_log_likelihood(x, mean, log_scale):
    c, inv = x - mean, math.exp(-log_scale)
    plus, minus = cdf(inv * (c + 1 / 255)), cdf(inv * (c - 1 / 255))
    if x < -0.999:
        p = plus
    elif x > 0.999:
        p = 1.0 - minus
    else:
        p = plus - minus
    return math.log(max(p, 1e-12))


# ---------------------------------------------------------------------------------------------- reverse process
def p_mean_variance(tab, mean_type, var_type, out, x_t, t, clip):
    """out: [N, C or 2C, P], x_t: [N, C, P], t: list of N indices."""
    N, C, P = x_t.shape
    mean_out = out[:, :C]
    res = {k: np.zeros_like(x_t) for k in ("mean", "log_variance", "pred_xstart")}
    for b, tb in enumerate(t):
        for c in range(C):
            for p in range(P):
                m, x = mean_out[b, c, p], x_t[b, c, p]
                if var_type == "learned":
                    lv = out[b, C + c, p]
                elif var_type == "learned_range":
                    frac = (out[b, C + c, p] + 1) / 2
                    lv = frac * math.log(tab["betas"][tb]) + (1 - frac) * tab["posterior_log_variance_clipped"][tb]
                elif var_type == "fixed_small":
                    lv = tab["posterior_log_variance_clipped"][tb]
                else:
                    lv = tab["fixed_large_log_variance"][tb]
                a = tab["alphas_cumprod"][tb]
                if mean_type == "epsilon":
                    x0 = math.sqrt(1 / a) * x - math.sqrt(1 / a - 1) * m
                elif mean_type == "start_x":
                    x0 = m
                else:
                    x0 = math.sqrt(a) * x - math.sqrt(1 - a) * m
                if clip:
                    x0 = min(max(x0, -1.0), 1.0)
                res["pred_xstart"][b, c, p] = x0
                res["mean"][b, c, p] = tab["posterior_mean_coef1"][tb] * x0 + tab["posterior_mean_coef2"][tb] * x
                res["log_variance"][b, c, p] = lv
    return res


def vb_bpd(tab, pmv, x0, x_t, t):
    out = []
    for b, tb in enumerate(t):
        terms = []
        for c in range(x0.shape[1]):
            for p in range(x0.shape[2]):
                m, lv = pmv["mean"][b, c, p], pmv["log_variance"][b, c, p]
                if tb == 0:
                    terms.append(-decoder_log_likelihood(x0[b, c, p], m, 0.5 * lv))
                else:
                    qm = tab["posterior_mean_coef1"][tb] * x0[b, c, p] + tab["posterior_mean_coef2"][tb] * x_t[b, c, p]
                    terms.append(normal_kl(qm, tab["posterior_log_variance_clipped"][tb], m, lv))
        out.append(sum(terms) / len(terms) / math.log(2.0))
    return out


# ---------------------------------------------------------------------------------------------- DPM-Solver++ (2M)
def dpm_solver(betas, n, final="zero", lower_order_final=True, euler_at_final=False):
    """Discrete-time DPM-Solver++ (2M): multistep, order 2, data prediction, midpoint form.

    Source: Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic Models"
    (arXiv 2211.01095), the multistep second-order update (eq. (9) form, Algorithm 2), with the discrete-time
    lambda and the step-order rules of diffusers' DPMSolverMultistepScheduler (algorithm_type "dpmsolver++",
    solver_order 2, solver_type "midpoint", timestep_spacing "linspace", use_karras_sigmas false).

    - abar = cumprod(1 - betas); T = len(betas). The n visited timesteps are
      round(np.linspace(0, T - 1, n + 1))[::-1][:-1] (decreasing; numpy's round is half to even).
    - Points i = 0..n. For i < n, at the visited timestep t_i: alpha_i = sqrt(abar[t_i]), sigma_i =
      sqrt(1 - abar[t_i]). The end point i = n: final "zero" gives alpha_n = 1, sigma_n = 0; final "sigma_min"
      gives alpha_n = sqrt(abar[0]), sigma_n = sqrt(1 - abar[0]). lambda_i = log alpha_i - log sigma_i, which is
      +inf where sigma = 0 and -inf where abar = 0.
    - Step i (i = 0..n-1) goes from point i to point i+1. With m_i the data prediction x0_hat at point i:
          x_{i+1} = x_coef[i] * x_i + d0_coef[i] * m_i + d1_coef[i] * (m_i - m_{i-1})
      h = lambda_{i+1} - lambda_i, x_coef = sigma_{i+1} / sigma_i, d0_coef = alpha_{i+1} * (1 - exp(-h)),
      d1_coef = 0 for an order-1 step, else 0.5 * d0_coef * h / h_prev with h_prev = lambda_i - lambda_{i-1}
      (evaluated left to right, so h_prev = inf gives 0, never inf / inf).
    - Orders: step 0 is order 1; the last step (i = n - 1) is order 1 if euler_at_final, or (lower_order_final
      and n < 15), or final == "zero"; every other step is order 2. (n = 1: one step of order 1.)

    Returns the dict of one case (timesteps, alpha, sigma, lambda of length n + 1 ... coefficients of length n).
    """
    T = len(betas)
    abar = np.cumprod(1.0 - betas)
    ts = [int(v) for v in np.round(np.linspace(0, T - 1, n + 1))[::-1][:-1]]
    ab = [float(abar[t]) for t in ts]
    alpha = [math.sqrt(a) for a in ab] + [1.0 if final == "zero" else math.sqrt(abar[0])]
    sigma = [math.sqrt(1.0 - a) for a in ab] + [0.0 if final == "zero" else math.sqrt(1.0 - abar[0])]

    def lam(a, s):
        if s == 0.0:
            return math.inf
        if a == 0.0:
            return -math.inf
        return math.log(a) - math.log(s)

    lamb = [lam(a, s) for a, s in zip(alpha, sigma)]
    order, x_coef, d0_coef, d1_coef = [], [], [], []
    for i in range(n):
        last = i == n - 1
        low = last and (euler_at_final or (lower_order_final and n < 15) or final == "zero")
        o = 1 if i == 0 or low else 2
        h = lamb[i + 1] - lamb[i]
        d0 = alpha[i + 1] * (1.0 - math.exp(-h))
        order.append(o)
        x_coef.append(sigma[i + 1] / sigma[i])
        d0_coef.append(d0)
        d1_coef.append(0.0 if o == 1 else 0.5 * d0 * h / (lamb[i] - lamb[i - 1]))
    return dict(num_timesteps=T, steps=n, final=final, lower_order_final=lower_order_final,
                euler_at_final=euler_at_final, timesteps=ts, alpha=alpha, sigma=sigma, **{"lambda": lamb},
                order=order, x_coef=x_coef, d0_coef=d0_coef, d1_coef=d1_coef)


DPM_CHAIN_START = [0.3, -1.2, 2.0, 0.05]


def dpm_solver_chain(case):
    """A whole chain with the toy data prediction m_i = tanh(0.7 x_i + 0.1 i) (elementwise), from
    x_0 = DPM_CHAIN_START: x_{i+1} = (x_coef x_i + d0_coef m_i) + d1_coef (m_i - m_{i-1}), the last term only for
    i > 0. Returns {x_start, m (n vectors), x (n + 1 vectors, x[0] = x_start)}."""
    x = [list(DPM_CHAIN_START)]
    ms = []
    for i in range(case["steps"]):
        xi = x[-1]
        m = [math.tanh(0.7 * v + 0.1 * i) for v in xi]
        a, b, c = case["x_coef"][i], case["d0_coef"][i], case["d1_coef"][i]
        nxt = [a * v + b * mv for v, mv in zip(xi, m)]
        if i > 0:
            nxt = [v + c * (mv - pv) for v, mv, pv in zip(nxt, m, ms[-1])]
        ms.append(m)
        x.append(nxt)
    return dict(x_start=list(DPM_CHAIN_START), m=ms, x=x)


# ---------------------------------------------------------------------------------------------- min-SNR-γ
def min_snr_weights(abar, mean_type, gamma):
    """Hang et al. 2023: min(SNR, γ) on the x0 error, i.e. min(SNR, γ)/SNR (ε), min(SNR, γ) (x0) and
    min(SNR, γ)/(SNR + 1) (v), with SNR = ᾱ/(1 − ᾱ). At SNR = 0 (ᾱ = 0) the ε weight is its limit 1."""
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = abar / (1.0 - abar)
        clamped = np.minimum(snr, gamma)
        if mean_type == "epsilon":
            return np.where(snr > 0, clamped / snr, 1.0)
        if mean_type == "start_x":
            return clamped
        if mean_type == "v":
            return clamped / (snr + 1.0)
    raise ValueError(mean_type)


# ---------------------------------------------------------------------------------------------- output
def enc(v):
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, list):
        return [enc(x) for x in v]
    if isinstance(v, dict):
        return {k: enc(x) for k, x in v.items()}
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def dump(name, obj):
    with open(os.path.join(HERE, name), "w") as f:
        json.dump(enc(obj), f, separators=(",", ":"))
        f.write("\n")


def main():
    # Full core tables at T = 1000 for the two schedules that matter most (ᾱ_prev and ᾱ_next, shifts of ᾱ, are
    # left to the T = 40 file to keep this one small).
    full = [k for k in CORE if k not in ("alphas_cumprod_prev", "alphas_cumprod_next")]
    dump("tables_1000.json", {s: {k: tables(schedule(s, 1000))[k] for k in full} for s in ("linear", "cosine")})
    # Every table of every schedule at T = 40.
    dump("tables_all_40.json", {s: tables(schedule(s, 40)) for s in
                                ("linear", "cosine", "quad", "sigmoid", "const", "jsd")})

    # Respacing.
    spacing = [(1000, "ddim50"), (1000, "10,20"), (1000, "250"), (1000, "ddim3"), (4000, "25,50,100"),
               (100, "7,3,5"), (11, "5"), (10, "3,2"), (37, "4,4,4")]
    respaced = {}
    for sched, spec in [("linear", "ddim50"), ("linear", "10,20"), ("cosine", "ddim50"), ("cosine", "10,20")]:
        kept = space(1000, spec)
        tab = tables(respaced_betas(tables(schedule(sched, 1000))["alphas_cumprod"], kept))
        respaced[f"{sched}/{spec}"] = dict(timesteps=kept, **{k: tab[k] for k in CORE})
    dump("respaced.json", {
        "space_timesteps": [dict(num_timesteps=T, spec=s, timesteps=space(T, s)) for T, s in spacing],
        "diffusions": respaced,
    })

    # Likelihood helpers at a few points.
    kl_points = [(0.0, 0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0), (0.3, -2.0, -0.1, -1.5), (-1.2, 1.0, 0.5, -3.0),
                 (0.05, -9.2, 0.049, -9.1), (2.0, -0.5, -2.0, 0.7)]
    cdf_points = [-5.0, -2.0, -1.0, -0.3, 0.0, 0.2, 1.0, 3.0]
    ll_points = [(-1.0, -0.98, -4.0), (-1.0, 0.5, -1.0), (1.0, 0.97, -3.5), (1.0, -0.2, 0.0),
                 (0.0, 0.01, -5.0), (0.2549019607843137, 0.3, -2.0), (-0.5, -0.52, -6.0), (0.6, -0.9, -8.0)]
    dump("likelihood.json", {
        "normal_kl": [dict(args=list(a), value=normal_kl(*a)) for a in kl_points],
        "approx_standard_normal_cdf": [dict(x=x, value=cdf(x)) for x in cdf_points],
        "discretized_gaussian_log_likelihood": [dict(args=list(a), value=decoder_log_likelihood(*a))
                                                for a in ll_points],
    })

    # The reverse process for every mean and variance type on a small batch [N = 3, C = 2, P = 3].
    rng = np.random.RandomState(0)
    tab = tables(schedule("cosine", 1000))
    x0 = (rng.randint(0, 256, size=(3, 2, 3)) / 127.5 - 1.0)
    x_t = rng.randn(3, 2, 3)
    out_fixed = rng.randn(3, 2, 3)
    out_learned = np.concatenate([out_fixed, rng.uniform(-1, 1, size=(3, 2, 3))], axis=1)
    t = [0, 1, 731]
    cases = []
    for mean_type in ("epsilon", "start_x", "v"):
        for var_type in ("fixed_small", "fixed_large", "learned", "learned_range"):
            out = out_learned if var_type.startswith("learned") else out_fixed
            for clip in (False, True):
                pmv = p_mean_variance(tab, mean_type, var_type, out, x_t, t, clip)
                cases.append(dict(mean_type=mean_type, var_type=var_type, clip=clip,
                                  vb_bpd=vb_bpd(tab, pmv, x0, x_t, t), **pmv))
    dump("reverse_cosine_1000.json", dict(schedule="cosine", num_timesteps=1000, t=t, x_start=x0, x_t=x_t,
                                          model_output_fixed=out_fixed, model_output_learned=out_learned,
                                          cases=cases))

    # DPM-Solver++ (2M): (schedule, T, steps, final, lower_order_final, euler_at_final).
    dpm_cases = [("linear", 1000, 20, "zero", True, False), ("cosine", 1000, 10, "zero", True, False),
                 ("linear", 1000, 25, "sigma_min", True, False), ("linear", 1000, 8, "sigma_min", True, False),
                 ("linear", 1000, 8, "sigma_min", False, False), ("jsd", 100, 7, "zero", True, False),
                 ("quad", 20, 5, "zero", True, False), ("cosine", 50, 1, "zero", True, False),
                 ("linear", 1000, 20, "sigma_min", True, True)]
    dpm = []
    for sched, T, n, final, lof, euler in dpm_cases:
        case = dict(schedule=sched, **dpm_solver(schedule(sched, T), n, final, lof, euler))
        case["dpm_solver_chain"] = dpm_solver_chain(case)
        dpm.append(case)
    dump("dpm_solver.json", {"cases": dpm})

    # min-SNR-γ weights for every mean type: the default γ = 5 at T = 1000, and three γ at T = 40 (jsd has ᾱ = 0
    # at its last step).
    snr_cases = []
    for sched, T, gammas in [("linear", 1000, (5.0,)), ("cosine", 1000, (5.0,)), ("linear", 40, (1.0, 5.0, 20.0)),
                             ("cosine", 40, (1.0, 5.0, 20.0)), ("jsd", 40, (1.0, 5.0, 20.0))]:
        abar = tables(schedule(sched, T))["alphas_cumprod"]
        for mean_type in ("epsilon", "start_x", "v"):
            for gamma in gammas:
                snr_cases.append(dict(schedule=sched, num_timesteps=T, mean_type=mean_type, gamma=gamma,
                                      weights=min_snr_weights(abar, mean_type, gamma)))
    dump("min_snr.json", {"cases": snr_cases})


if __name__ == "__main__":
    main()
