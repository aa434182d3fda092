#!/usr/bin/env python3
"""PyTorch eager + diffusers' UNet2DModel: the same benchmark as `ddpm-cli bench`, on the same weights.

How to run (from the repository root; `cargo xtask bench-pytorch` does all of this and prints the table):

    ddpm-cli bench --preset mnist-cpu --threads 1 --json --weights-out /tmp/w > ours.json
    python3 scripts/bench_pytorch.py --weights /tmp/w --ours ours.json --threads 1 --json > pytorch.json
    python3 scripts/bench_pytorch.py --compare-ours ours.json --compare-pytorch pytorch.json

The work per training step is that of ddpm-rs' trainer: uint8 batch -> [-1, 1], t ~ U{0..T-1}, eps ~ N(0, I),
q_sample with the linear schedule, eps_theta = UNet2DModel(x_t, t), MSE on eps, backward, global grad-norm clipping,
torch.optim.Adam (fused where this torch has it, else foreach) with the linear warm-up, and an EMA of the weights
(torch._foreach_lerp_). Sampling evaluations run the model under torch.inference_mode(); the full chain is diffusers'
DDIMScheduler (eta 0, clipped x0) on the same strided timesteps. With --ours, batch, threads, optimiser settings,
steps and chain are taken from ddpm-rs' report so the two runs are configured identically.

The script runs itself inside a throw-away virtual environment (default /tmp/venv-diffusers, override with
DDPM_DIFFUSERS_VENV) with diffusers==0.42.1; torch is the project's (a .pth file points at .venv's site-packages)
or torch==2.11.0 from PyPI. HF_HUB_OFFLINE=1: nothing comes from the Hugging Face Hub.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from diffusers_venv import ensure_venv


class BackgroundLoad:
    """N busy-loop processes (sh `while :; do :; done`) competing for the CPUs while the block runs; the kernel kills
    them if this process dies (PR_SET_PDEATHSIG), as ddpm-cli bench --background-load does."""

    def __init__(self, n):
        self.n, self.procs = n, []

    def __enter__(self):
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)

        def die_with_parent():
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

        for _ in range(self.n):
            self.procs.append(subprocess.Popen(["sh", "-c", "while :; do :; done"], stdin=subprocess.DEVNULL,
                                               preexec_fn=die_with_parent))
        time.sleep(0.3)
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
            p.wait()
        return False


def summary(times):
    s = sorted(times)
    return {
        "n": len(s),
        "median_s": statistics.median(s) if s else float("nan"),
        "mean_s": sum(s) / max(len(s), 1),
        "min_s": s[0] if s else float("nan"),
        "max_s": s[-1] if s else float("nan"),
        "all_s": times,
    }


def vm_hwm_mib():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def process_cpu_secs():
    """CPU seconds of this process from /proc/self/stat (user + system, 100 Hz ticks), as ddpm-rs reads them."""
    try:
        rest = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / 100.0
    except (OSError, IndexError, ValueError):
        return None


def cpu_per(start, n):
    end = process_cpu_secs()
    return (end - start) / max(n, 1) if start is not None and end is not None else None


def reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def load_average():
    try:
        return [float(x) for x in open("/proc/loadavg").read().split()[:3]]
    except OSError:
        return None


def malloc_settings():
    """glibc malloc settings from the environment (ddpm-cli sets the same ones on itself with mallopt)."""
    keys = ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"]
    set_ = [f"{k}={os.environ[k]}" for k in keys if k in os.environ]
    return ("glibc malloc, " + " ".join(set_)) if set_ else "system default"


def linear_betas(t_len):
    # ddpm-math's linear schedule (Ho et al.): scale = 1000 / T, betas from scale*1e-4 to scale*0.02.
    import torch

    scale = 1000.0 / t_len
    return torch.linspace(scale * 1e-4, scale * 0.02, t_len, dtype=torch.float64)


def bench(args):
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from diffusers import DDIMScheduler, UNet2DModel

    ours = json.loads(Path(args.ours).read_text()) if args.ours else {}
    optim = ours.get("optim", {})
    batch = args.batch or ours.get("batch", 64)
    if args.threads == "default":
        threads = torch.get_num_threads()  # PyTorch's own choice, as a user gets it
    else:
        threads = int(args.threads) if args.threads else (ours.get("threads") or torch.get_num_threads())
    steps = args.steps or ours.get("train", {}).get("steps", 10)
    warmup = args.warmup if args.warmup is not None else ours.get("train", {}).get("warmup", 2)
    sample_steps = args.sample_steps or ours.get("sample", {}).get("evals", 20)
    if args.chain:
        chain = args.chain
    elif "chain" in ours:
        chain = ours["chain"]["sampler"] if ours["chain"] else "none"
    else:
        chain = "ddim50"
    chain_batch = args.chain_batch or (ours.get("chain") or {}).get("batch") or batch
    pad_to_32 = ours.get("pad_to_32", False)
    random_flip = ours.get("random_flip", False)
    device = torch.device(args.device)
    torch.set_num_threads(threads)
    autocast = args.dtype == "bf16" or (args.dtype == "auto" and device.type == "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    load_before = load_average()
    torch.manual_seed(args.seed)
    model = UNet2DModel.from_pretrained(args.weights, low_cpu_mem_usage=False).to(device)
    model.train()
    ema = UNet2DModel.from_pretrained(args.weights, low_cpu_mem_usage=False).to(device)
    ema.requires_grad_(False)
    ema.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    ema_params = [p for p in ema.parameters()]
    num_params = sum(p.numel() for p in params)
    weights_abs_sum = float(sum(p.detach().double().abs().sum() for p in params))
    cfg = model.config
    c = cfg.in_channels
    h = w = cfg.sample_size if isinstance(cfg.sample_size, int) else cfg.sample_size[0]
    sh, sw = (max(h, 32), max(w, 32)) if pad_to_32 else (h, w)

    lr = optim.get("lr", 2e-4)
    warmup_steps = optim.get("warmup_steps", 0)
    grad_clip = optim.get("grad_clip", 1.0)
    ema_decay = optim.get("ema_decay", 0.9999)
    kwargs = dict(lr=lr, betas=(optim.get("beta1", 0.9), optim.get("beta2", 0.999)), eps=optim.get("eps", 1e-8),
                  weight_decay=optim.get("weight_decay", 0.0))
    adam_impl = args.adam
    if adam_impl == "fused":
        try:
            opt = torch.optim.Adam(params, fused=True, **kwargs)
        except (RuntimeError, TypeError):
            adam_impl = "foreach"
    if adam_impl == "foreach":
        opt = torch.optim.Adam(params, foreach=True, **kwargs)
    elif adam_impl == "for-loop":
        opt = torch.optim.Adam(params, foreach=False, **kwargs)

    t_len = ours.get("diffusion", {}).get("timesteps", 1000)
    betas = linear_betas(t_len)
    abar = torch.cumprod(1 - betas, 0)
    sqrt_ab = abar.sqrt().float().to(device)
    sqrt_1mab = (1 - abar).sqrt().float().to(device)

    g = torch.Generator().manual_seed(args.seed)
    images_u8 = torch.randint(0, 256, (batch, c, h, w), dtype=torch.uint8, generator=g)

    def train_step(step):
        x0 = images_u8.to(device).float() / 127.5 - 1.0
        if pad_to_32 and (sh, sw) != (h, w):
            ph, pw = sh - h, sw - w
            x0 = torch.nn.functional.pad(x0 + 1, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)) - 1
        if random_flip:
            m = (torch.rand(batch, 1, 1, 1, device=device) < 0.5).float()
            x0 = m * x0.flip(3) + (1 - m) * x0
        t = torch.randint(0, t_len, (batch,), device=device)
        noise = torch.randn_like(x0)
        x_t = sqrt_ab[t].view(-1, 1, 1, 1) * x0 + sqrt_1mab[t].view(-1, 1, 1, 1) * noise
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(x_t, t).sample
        loss = (noise - out.float()).square().mean(dim=(1, 2, 3)).mean()
        opt.zero_grad(set_to_none=False)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip, foreach=True)
        for group in opt.param_groups:
            group["lr"] = lr * min((step + 1) / warmup_steps, 1.0) if warmup_steps else lr
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1.0 - ema_decay)
        return loss

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    reset_peak_rss()
    train_times = []
    loss = None
    block_start = time.perf_counter()
    cpu_start = process_cpu_secs()
    for step in range(warmup + steps):
        if step == warmup:
            sync()
            block_start = time.perf_counter()
            cpu_start = process_cpu_secs()
        start = time.perf_counter()
        loss = train_step(step)
        if device.type != "cuda" and step >= warmup:
            train_times.append(time.perf_counter() - start)
    if device.type == "cuda":
        sync()
        train_times = [(time.perf_counter() - block_start) / steps] * steps
    train_cpu = cpu_per(cpu_start, steps)
    final_loss = float(loss.detach())
    train_peak = vm_hwm_mib()
    cuda_train_peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None

    # Sampling evaluations of the EMA model under inference mode.
    reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def evaluate(x, t):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            return ema(x, t).sample.float()

    sample_times = []
    with torch.inference_mode():
        x = torch.randn(batch, c, sh, sw, device=device)
        block_start = time.perf_counter()
        cpu_start = process_cpu_secs()
        for i in range(warmup + sample_steps):
            if i == warmup:
                sync()
                block_start = time.perf_counter()
                cpu_start = process_cpu_secs()
            t = torch.full((batch,), 999 - (i * 20) % 1000, dtype=torch.int64, device=device)
            start = time.perf_counter()
            evaluate(x, t)
            if device.type != "cuda" and i >= warmup:
                sample_times.append(time.perf_counter() - start)
        sample_cpu = cpu_per(cpu_start, sample_steps)
        if device.type == "cuda":
            sync()
            sample_times = [(time.perf_counter() - block_start) / sample_steps] * sample_steps

        chain_report = None
        if chain != "none":
            n_steps = int(chain[4:]) if chain.startswith("ddim") else int(chain)
            sched = DDIMScheduler(num_train_timesteps=t_len, beta_schedule="linear", beta_start=float(betas[0]),
                                  beta_end=float(betas[-1]), clip_sample=True, set_alpha_to_one=False)
            sched.set_timesteps(n_steps)
            x = torch.randn(chain_batch, c, sh, sw, device=device)
            sync()
            start = time.perf_counter()
            for t in sched.timesteps:
                eps = evaluate(x, t.to(device).expand(chain_batch))
                x = sched.step(eps, t, x, eta=0.0).prev_sample
            x = x.clamp(-1, 1)
            sync()
            secs = time.perf_counter() - start
            chain_report = {
                "sampler": f"ddim{len(sched.timesteps)} (diffusers DDIMScheduler)",
                "evals": len(sched.timesteps),
                "batch": chain_batch,
                "secs": secs,
                "images_per_s": chain_batch / secs,
                "finite": bool(torch.isfinite(x).all()),
            }
    sample_peak = vm_hwm_mib()
    cuda_sample_peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    ts, ss = summary(train_times), summary(sample_times)
    return {
        "impl": f"pytorch {torch.__version__} eager + diffusers {__import__('diffusers').__version__} UNet2DModel",
        "preset": ours.get("preset"),
        "device": str(device),
        "dtype": "bf16-autocast" if autocast else "f32",
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "batch": batch,
        "image": [c, sh, sw],
        "params": num_params,
        "weights_abs_sum": weights_abs_sum,
        "adam": adam_impl,
        "host_allocator": malloc_settings(),
        "load_avg_before": load_before,
        "load_avg_after": load_average(),
        "train": {
            "steps": steps, "warmup": warmup, "step": ts, "step_s": ts["median_s"], "cpu_s_per_step": train_cpu,
            "images_per_s": batch / ts["mean_s"], "final_loss": final_loss,
        },
        "sample": {
            "evals": sample_steps, "eval": ss, "eval_s": ss["median_s"], "evals_per_s": 1.0 / ss["mean_s"], "cpu_s_per_eval": sample_cpu,
            "image_evals_per_s": batch / ss["mean_s"], "grad_mode": "inference_mode",
        },
        "chain": chain_report,
        "memory": {
            "train_peak_rss_mib": train_peak, "sample_peak_rss_mib": sample_peak,
            "cuda_peak_mib": max(cuda_train_peak, cuda_sample_peak) if cuda_train_peak is not None else None,
        },
    }


def get(report, path):
    v = report
    for k in path.split("."):
        if not isinstance(v, dict) or v.get(k) is None:
            return None
        v = v[k]
    return v


def median_of(reports, path):
    vals = [get(r, path) for r in reports]
    vals = [v for v in vals if isinstance(v, (int, float))]
    return statistics.median(vals) if vals else None


def compare(ours_files, pt_files):
    ours = [json.loads(Path(f).read_text()) for f in ours_files]
    pt = [json.loads(Path(f).read_text()) for f in pt_files]
    o, p = ours[0], pt[0]
    loads = [r.get("load_avg_before") for r in ours + pt if r.get("load_avg_before")]
    print(f"preset {o.get('preset')} | device {o.get('device')} | batch {o.get('batch')} | threads ours {o.get('threads')} "
          f"/ pytorch {p.get('threads')} | dtype {o.get('dtype')} / {p.get('dtype')} | params {o.get('params')} / {p.get('params')} "
          f"| repeats {len(ours)} / {len(pt)} (medians) | pytorch Adam: {p.get('adam')}")
    wa, wb = o.get("weights_abs_sum"), p.get("weights_abs_sum")
    if wa is not None and wb is not None:
        same = abs(wa - wb) <= 1e-6 * max(abs(wa), 1.0)
        print(f"initial weights: sum|w| ddpm-rs {wa:.6f} / pytorch {wb:.6f} ({'same' if same else 'DIFFERENT'})")
    print(f"host memory: ddpm-rs {o.get('host_allocator', 'n/a')} / pytorch {p.get('host_allocator', 'n/a')}; "
          f"ddpm-rs layers: {o.get('layers', 'n/a')}")
    if loads:
        print(f"1-min load average at the start of each run: {', '.join(f'{l[0]:.2f}' for l in loads)}")
    rows = [
        ("train step, s (median)", "train.step_s", True),
        ("train CPU s/step", "train.cpu_s_per_step", True),
        ("train images/s", "train.images_per_s", False),
        ("sampling eval, s (median)", "sample.eval_s", True),
        ("sampling CPU s/eval", "sample.cpu_s_per_eval", True),
        ("sampling image-evals/s", "sample.image_evals_per_s", False),
        ("full chain images/s", "chain.images_per_s", False),
        ("full chain s", "chain.secs", True),
        ("peak RSS train, MiB", "memory.train_peak_rss_mib", True),
        ("peak RSS sampling, MiB", "memory.sample_peak_rss_mib", True),
        ("CUDA peak, MiB", "memory.cuda_peak_mib", True),
    ]
    print(f"| {'metric':28} | {'ddpm-rs':>12} | {'pytorch':>12} | {'ours/pytorch':>12} |")
    print(f"|{'-' * 30}|{'-' * 14}|{'-' * 14}|{'-' * 14}|")
    ratios = {}
    for name, path, _ in rows:
        a, b = median_of(ours, path), median_of(pt, path)
        if a is None and b is None:
            continue
        fa = f"{a:.4g}" if a is not None else "n/a"
        fb = f"{b:.4g}" if b is not None else "n/a"
        r = a / b if a is not None and b else None
        ratios[path] = r
        print(f"| {name:28} | {fa:>12} | {fb:>12} | {(f'{r:.3f}' if r is not None else 'n/a'):>12} |")
    for what, path, goal in [("training step", "train.step_s", 0.8), ("sampling step", "sample.eval_s", 0.7)]:
        r = ratios.get(path)
        verdict = "n/a" if r is None else ("MET" if r <= goal else "MISSED")
        print(f"target: our {what} time <= {goal} x PyTorch eager's: {verdict}" + (f" (ratio {r:.3f})" if r is not None else ""))
    for r in ours:
        if r.get("profile"):
            print("ddpm-rs step profile (medians, s): " + ", ".join(f"{k}={v:.4f}" for k, v in r["profile"].items() if isinstance(v, float)))
            break


def summarize(manifest):
    """Each thread setting's side-by-side table, then each side's default against its best fixed thread count."""
    runs = json.loads(Path(manifest).read_text())
    load = runs.get("background_load", 0)
    best = {}
    for g in runs["groups"]:
        print(f"\n### threads {g['threads']}, background load {load}")
        compare(g["ours"], g["pytorch"])
        for side in ("ours", "pytorch"):
            reports = [json.loads(Path(f).read_text()) for f in g[side]]
            best.setdefault(side, {})[g["threads"]] = (median_of(reports, "train.step_s"), median_of(reports, "sample.eval_s"),
                                                        median_of(reports, "threads"))
    if len(runs["groups"]) < 2:
        return
    print(f"\n### thread policies under a background load of {load} busy processes (medians, s)")
    print(f"| {'side, threads':34} | {'train step':>10} | {'sampling eval':>13} |")
    print(f"|{'-' * 36}|{'-' * 12}|{'-' * 15}|")
    rows = {}
    for side, name in (("ours", "ddpm-rs"), ("pytorch", "pytorch")):
        fixed = {k: v for k, v in best.get(side, {}).items() if k != "default"}
        if "default" in best.get(side, {}):
            d = best[side]["default"]
            rows[(side, "default")] = d
            print(f"| {name + ' default (' + str(int(d[2] or 0)) + ' threads)':34} | {d[0]:>10.4f} | {d[1]:>13.4f} |")
        for col, label in ((0, "train"), (1, "sampling")):
            if fixed:
                k = min(fixed, key=lambda k: fixed[k][col])
                rows[(side, "best", col)] = fixed[k][col]
                print(f"| {name + ' best fixed for ' + label + ' (' + k + ')':34} | "
                      + (f"{fixed[k][0]:>10.4f} | {'':>13} |" if col == 0 else f"{'':>10} | {fixed[k][1]:>13.4f} |"))
    for col, what in ((0, "training"), (1, "sampling")):
        d, b, p = rows.get(("ours", "default")), rows.get(("ours", "best", col)), rows.get(("pytorch", "default"))
        if d and b:
            r = d[col] / b
            print(f"target: ddpm-rs default {what} <= 1.3 x its best fixed thread count: {'MET' if r <= 1.3 else 'MISSED'} (ratio {r:.3f})")
        if d and p:
            r = d[col] / p[col]
            print(f"target: ddpm-rs default {what} <= PyTorch default's: {'MET' if r <= 1.0 else 'MISSED'} (ratio {r:.3f})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", help="diffusers model folder (ddpm-cli bench --weights-out)")
    ap.add_argument("--ours", help="ddpm-cli bench --json report: take batch, threads, optimiser, steps, chain from it")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--threads", help="intra-op threads: a number, or 'default' (PyTorch's own choice); default: --ours' count")
    ap.add_argument("--background-load", type=int, default=0, help="busy-loop processes competing for the CPUs during the run")
    ap.add_argument("--summary", help="print the tables of a `cargo xtask bench-pytorch` runs.json (groups of thread settings)")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--sample-steps", type=int)
    ap.add_argument("--warmup", type=int)
    ap.add_argument("--chain", help="ddimN, or none")
    ap.add_argument("--chain-batch", type=int)
    ap.add_argument("--dtype", choices=["auto", "f32", "bf16"], default="auto",
                    help="auto = bf16 autocast on CUDA, f32 on the CPU; bf16 = torch.autocast on the device (CUDA or CPU)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--adam", choices=["fused", "foreach", "for-loop"], default="fused")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--out", help="also write the JSON report here")
    ap.add_argument("--compare-ours", nargs="+", help="only print the side-by-side table of these ddpm-rs reports ...")
    ap.add_argument("--compare-pytorch", nargs="+", help="... and these PyTorch reports (medians over repeats)")
    args = ap.parse_args()
    if args.summary:
        summarize(args.summary)
        return
    if args.compare_ours or args.compare_pytorch:
        if not (args.compare_ours and args.compare_pytorch):
            ap.error("--compare-ours and --compare-pytorch go together")
        compare(args.compare_ours, args.compare_pytorch)
        return
    if not args.weights:
        ap.error("--weights DIR is required")
    ensure_venv(__file__, sys.argv[1:])
    with BackgroundLoad(args.background_load):
        report = bench(args)
    report["background_load"] = args.background_load
    report["thread_policy"] = {
        "threads_requested": args.threads or "from --ours",
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "gomp_spincount": os.environ.get("GOMP_SPINCOUNT"),
    }
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.json:
        print(text)
    else:
        t, s = report["train"], report["sample"]
        print(f"pytorch: train {t['step_s']:.4f} s/step ({t['images_per_s']:.1f} img/s); sample {s['eval_s']:.4f} s/eval; "
              f"chain {(report['chain'] or {}).get('images_per_s', float('nan')):.2f} img/s")


if __name__ == "__main__":
    main()
