#!/usr/bin/env bash
# gpu_check.sh: what ddpm-rs does on a GPU box, run from the bundle that `cargo xtask bundle` makes
# (this script, the `ddpm` launcher, the stripped ddpm-cli, MNIST's four .gz files, and the digit
# classifier when it was built). Prints a summary and writes OUT/gpu_check.json:
#
#   info      device name, compute capability, CUDA / cuDNN / driver versions, bf16 support
#   bench     cifar10 and mnist presets in bf16 and f32: training img/s, sampling evaluations/s,
#             device memory in use after each phase
#   train     a 2,000-step `mnist` run on MNIST imported here from the .gz files: img/s, final loss
#   sample    2,000 DDIM-50 samples of that run, their grid, and FID_cls against MNIST's test set
#   cifar     5,000 CIFAR-sized (3×32×32) samples in 100 DDIM steps from the cifar10 preset's
#             untrained UNet: seconds, and the time extrapolated to 50,000
#   dp        training img/s of the cifar10 preset's UNet (1 channel in and out, on MNIST padded to
#             32×32) for 300 steps, as one plain process and as a data-parallel job of one process
#             (`--nproc-per-node 1`: NCCL on CUDA, Gloo on the CPU), with the all-reduce time
#
# usage: gpu_check.sh [--dry-run] [--out DIR] [--device DEV] [--mnist DIR] [--classifier DIR]
#   --dry-run       every step with tiny sizes on the CPU (what CI runs; minutes on 2 cores)
#   --out DIR       where everything goes (default ./gpu-check; must be new or empty)
#   --device DEV    cuda (default), cuda:N, or cpu (default with --dry-run)
#   --mnist DIR     the folder of MNIST's four .gz files (default: the bundle's data/mnist)
#   --classifier D  the digit classifier folder (default: the bundle's; trained here if absent)
# A failed step is recorded (its status and the end of its log) and the others still run; the exit
# status is 1 when any step failed. Ctrl-C or SIGTERM stops the running step as ddpm-cli stops
# (training saves a checkpoint), skips the rest, writes the report and exits 130 / 143.
set -uo pipefail

# The bundle folder, also when this script is run through a symlink.
here="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)"
ddpm="$here/ddpm"
dry=0
out="$PWD/gpu-check"
device=""
mnist="$here/data/mnist"
classifier="$here/weights/classifier-mnist"
usage_error() {
    echo "gpu_check.sh: $1 (see --help)" >&2
    exit 2
}
value() {
    [[ $# -ge 2 && -n "$2" ]] || usage_error "$1 needs a value"
}
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) dry=1 ;;
        --out) value "$@"; out="$2"; shift ;;
        --device) value "$@"; device="$2"; shift ;;
        --mnist) value "$@"; mnist="$2"; shift ;;
        --classifier) value "$@"; classifier="$2"; shift ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) usage_error "unknown argument $1" ;;
    esac
    shift
done
if [[ -z "$device" ]]; then
    if [[ $dry == 1 ]]; then device=cpu; else device=cuda; fi
fi
for f in train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
    if [[ ! -f "$mnist/$f" ]]; then
        echo "gpu_check.sh: $mnist/$f is missing (--mnist DIR: the folder of MNIST's four .gz files)" >&2
        exit 2
    fi
done
if [[ -e "$out" && ! -d "$out" ]]; then
    usage_error "--out $out is a file, not a folder"
fi
if [[ -e "$out" && -n "$(ls -A "$out" 2>/dev/null)" ]]; then
    usage_error "--out $out is not empty; give a new folder"
fi
mkdir -p "$out" || exit 2
out="$(cd "$out" && pwd)"
if ! : >"$out/steps.tsv" 2>/dev/null; then
    echo "gpu_check.sh: cannot write into $out" >&2
    exit 2
fi
python="${DDPM_PYTHON:-python3}"
# The dataset path as a TOML string for --set.
toml_path="$out/mnist.h5"
toml_path="${toml_path//\\/\\\\}"
toml_path="${toml_path//\"/\\\"}"

# Sizes: the full check, or tiny ones that exercise the same commands.
if [[ $dry == 1 ]]; then
    bench_args=(--batch 2 --steps 1 --sample-steps 1 --warmup 0 --chain none)
    train_args=(--set run.steps=4 --set data.batch_size=8 --set run.sample_num=4 --set run.log_every=2 --set run.checkpoint_every=4)
    classifier_args=(--steps 2 --batch-size 16)
    samples=8; ddim_steps=2; cifar_num=4; cifar_steps=2; cifar_batch=4; eval_batch=8
    dp_args=(--set run.steps=2 --set data.batch_size=4 --set run.log_every=1)
else
    bench_args=()
    train_args=(--set run.steps=2000 --set run.checkpoint_every=2000 --set run.sample_every=2000)
    classifier_args=()
    samples=2000; ddim_steps=50; cifar_num=5000; cifar_steps=100; cifar_batch=1000; eval_batch=500
    dp_args=(--set run.steps=300 --set run.log_every=50)
fi

steps_file="$out/steps.tsv"
failed=0
stopped=""
child=""
# Ctrl-C or SIGTERM: one SIGTERM to the running step (ddpm-cli stops as on Ctrl-C: a training saves a
# checkpoint), then no further step. The steps run in a session of their own (setsid), so a
# terminal's Ctrl-C reaches them only through this, once.
on_signal() {
    stopped="$1"
    # The step's whole session (its process group): the launcher's helpers included.
    if [[ -n "$child" && ${#detach[@]} -gt 0 ]]; then
        kill -TERM -- "-$child" 2>/dev/null
    elif [[ -n "$child" ]]; then
        kill -TERM "$child" 2>/dev/null
    fi
}
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM
detach=()
if command -v setsid >/dev/null 2>&1; then detach=(setsid); fi
# step NAME CMD...: runs CMD with stdout to OUT/NAME.out and stderr to OUT/NAME.log; records the
# status and seconds.
step() {
    local name="$1"
    shift
    if [[ -n "$stopped" ]]; then return 1; fi
    echo "==> $name: $*" >&2
    local t0 t1 rc
    t0="$(date +%s.%N)"
    "${detach[@]}" "$@" >"$out/$name.out" 2>"$out/$name.log" &
    child=$!
    wait "$child"
    rc=$?
    # A trapped signal interrupts `wait`; wait again for the step itself to end.
    while kill -0 "$child" 2>/dev/null; do
        wait "$child"
        rc=$?
    done
    child=""
    t1="$(date +%s.%N)"
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')" >>"$steps_file"
    if [[ $rc != 0 ]]; then
        failed=1
        echo "    $name failed with status $rc; the end of $out/$name.log:" >&2
        tail -n 5 "$out/$name.log" >&2
    fi
    return $rc
}

step info "$ddpm" info --json

for preset in cifar10 mnist; do
    for dtype in bf16 f32; do
        extra=()
        if [[ $preset == cifar10 && $dtype == bf16 ]]; then
            extra=(--weights-out "$out/cifar10-untrained")
        fi
        step "bench_${preset}_${dtype}" "$ddpm" bench --json --preset "$preset" --device "$device" \
            --dtype "$dtype" "${bench_args[@]}" "${extra[@]}"
    done
done

if step import "$ddpm" data import --name mnist --raw "$mnist" --out "$out/mnist.h5"; then
    step train "$ddpm" train --json --no-progress --preset mnist --device "$device" \
        --set "data.path=\"$toml_path\"" "${train_args[@]}" --out "$out/mnist-run" &&
        step sample "$ddpm" sample --json --model "$out/mnist-run" --device "$device" \
            --num "$samples" --sampler ddim --steps "$ddim_steps" --out "$out/mnist-samples.h5" \
            --grid "$out/mnist-grid.png"
    if [[ ! -f "$classifier/model.safetensors" ]]; then
        classifier="$out/classifier-mnist"
        step classifier "$ddpm" train-classifier --no-progress --dataset mnist --data "$out/mnist.h5" \
            --device "$device" --out "$classifier" "${classifier_args[@]}"
    fi
    if [[ -f "$out/mnist-samples.h5" ]]; then
        step fid_cls "$ddpm" eval --json --device "$device" --real "$out/mnist.h5:test" \
            --fake "$out/mnist-samples.h5" --fid-cls --classifier "$classifier" --batch-size "$eval_batch"
    fi
    # The cifar10 preset's UNet (1 channel in and out) on MNIST padded to 32×32: one plain process,
    # then a data-parallel job of one process (the process group's cost: NCCL on CUDA).
    cifar_unet=(--preset cifar10 --device "$device" --set "data.path=\"$toml_path\"" --set data.pad_to_32=true
        --set model.unet.in_channels=1 --set model.unet.out_channels=1 --set run.checkpoint_every=0
        --set run.sample_num=0 --set run.sample_every=0 "${dp_args[@]}")
    step dp_plain "$ddpm" train --json --no-progress "${cifar_unet[@]}" --out "$out/cifar10-unet-plain"
    step dp_group "$ddpm" train --json --no-progress "${cifar_unet[@]}" --nproc-per-node 1 \
        --out "$out/cifar10-unet-group"
fi

if [[ -d "$out/cifar10-untrained" ]]; then
    step cifar "$ddpm" sample --json --model "$out/cifar10-untrained" --device "$device" \
        --num "$cifar_num" --batch-size "$cifar_batch" --sampler ddim --steps "$cifar_steps" \
        --out "$out/cifar10-samples.h5"
fi

"$python" - "$out" "$dry" "$device" "$samples" "$cifar_num" <<'EOF'
import json, statistics, sys
from pathlib import Path

out, dry, device, samples, cifar_num = Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
steps = {}
for line in (out / "steps.tsv").read_text().splitlines():
    name, rc, secs = line.split("\t")
    steps[name] = {"status": int(rc), "secs": float(secs)}

def doc(name):
    """The JSON a step printed (its last line that parses), or its failure."""
    s = steps.get(name)
    if s is None:
        return {"error": "not run (an earlier step failed)"}
    if s["status"] != 0:
        tail = (out / f"{name}.log").read_text(errors="replace").strip().splitlines()[-5:]
        return {"error": f"status {s['status']}", "log_tail": tail}
    text = (out / f"{name}.out").read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        for line in reversed(text.strip().splitlines()):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                pass
    return {"error": "no JSON in the output"}

info = doc("info").get("device", doc("info"))
report = {"dry_run": dry, "device": device, "steps": steps, "info": {
    k: info.get(k) for k in ("cuda_devices", "cuda_driver_version", "libtorch_cuda_version", "cudnn_version",
                             "libtorch_version", "cpu_threads", "cpu_available", "cpu_wait_policy", "tf32_cublas_override")
}}
bench = {}
for name in [n for n in steps if n.startswith("bench_")]:
    b = doc(name)
    if "error" in b:
        bench[name[6:]] = b
        continue
    bench[name[6:]] = {
        "params": b.get("params"), "batch": b.get("batch"), "dtype": b.get("dtype"),
        "train_images_per_s": b["train"]["images_per_s"], "train_step_s": b["train"]["step_s"],
        "sample_evals_per_s": b["sample"]["evals_per_s"], "sample_image_evals_per_s": b["sample"]["image_evals_per_s"],
        "chain": b.get("chain"), "memory": b.get("memory"),
    }
report["bench"] = bench
train = doc("train")
metrics = out / "mnist-run" / "metrics.jsonl"
if metrics.exists():
    windows = [json.loads(l) for l in metrics.read_text().splitlines() if l.strip()]
    rates = [w["img_per_s"] for w in windows if "img_per_s" in w][1:] or [w["img_per_s"] for w in windows if "img_per_s" in w]
    train["images_per_s_median"] = statistics.median(rates) if rates else None
report["train_mnist"] = train
report["sample_mnist"] = doc("sample") if "sample" in steps else {"error": "not run"}
report["fid_cls"] = doc("fid_cls") if "fid_cls" in steps else {"error": "not run"}
cifar = doc("cifar") if "cifar" in steps else {"error": "not run"}
if "seconds" in cifar:
    # The sampling time the command measured (start-up, model loading and the file write excluded),
    # scaled to 50,000; the step's wall time beside it.
    cifar["wall_secs"] = steps["cifar"]["secs"]
    cifar["extrapolated_50000_secs"] = cifar["seconds"] * 50000 / cifar_num
report["cifar_sampling"] = cifar

def train_rates(run):
    """Median img/s and all-reduce seconds per step of a run's log windows (the first left out)."""
    metrics = out / run / "metrics.jsonl"
    if not metrics.exists():
        return {"error": "no metrics.jsonl"}
    windows = [json.loads(l) for l in metrics.read_text().splitlines() if l.strip()]
    windows = [w for w in windows if "img_per_s" in w]
    rest = windows[1:] or windows
    ar = [w["allreduce_s_per_step"] for w in rest if "allreduce_s_per_step" in w]
    return {"images_per_s_median": statistics.median(w["img_per_s"] for w in rest) if rest else None,
            "allreduce_s_per_step_median": statistics.median(ar) if ar else None,
            "world_size": rest[-1].get("world_size") if rest else None}

dp = {}
for name, step_name, run in (("plain", "dp_plain", "cifar10-unet-plain"),
                             ("process_group", "dp_group", "cifar10-unet-group")):
    d = doc(step_name)
    dp[name] = d if "error" in d else train_rates(run)
report["data_parallel_cifar10_unet"] = dp
(out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")

print(f"gpu_check ({'dry run' if dry else 'full'}) on {device}: {out / 'gpu_check.json'}")
for d in report["info"].get("cuda_devices") or []:
    print(f"  {d['name']}: compute capability {d['compute_capability']}, bf16 {d['bf16_supported']}")
print(f"  CUDA driver {report['info'].get('cuda_driver_version')}, libtorch CUDA {report['info'].get('libtorch_cuda_version')}, "
      f"cuDNN {report['info'].get('cudnn_version')}")
for k, b in bench.items():
    if "error" in b:
        print(f"  bench {k}: FAILED ({b['error']})")
    else:
        print(f"  bench {k}: train {b['train_images_per_s']:.1f} img/s, sampling {b['sample_evals_per_s']:.2f} evals/s "
              f"(batch {b['batch']})")
t = report["train_mnist"]
print(f"  train mnist: {t.get('step')} steps, loss {t.get('last_loss')}, {t.get('images_per_s_median')} img/s" if "error" not in t
      else f"  train mnist: FAILED ({t['error']})")
f = report["fid_cls"]
print(f"  FID_cls of {samples} DDIM-{'2' if dry else '50'} samples: {f.get('fid_cls', f.get('error'))}")
c = report["cifar_sampling"]
if "seconds" in c:
    print(f"  {cifar_num} CIFAR-sized samples: {c['seconds']:.1f} s sampling ({c['wall_secs']:.1f} s with start-up); "
          f"50,000 extrapolated: {c['extrapolated_50000_secs'] / 60:.1f} min")
else:
    print(f"  CIFAR-sized sampling: FAILED ({c.get('error')})")
for name, d in dp.items():
    if "error" in d:
        print(f"  cifar10 UNet training, {name}: FAILED ({d['error']})")
    else:
        ar = d["allreduce_s_per_step_median"]
        print(f"  cifar10 UNet training, {name}: {d['images_per_s_median']:.1f} img/s"
              + (f", all-reduce {1000 * ar:.2f} ms/step" if ar is not None else ""))
failed = [n for n, s in steps.items() if s["status"] != 0]
if failed:
    print(f"  failed steps: {', '.join(failed)}")
EOF
merge_rc=$?
if [[ "$stopped" == INT ]]; then
    echo "gpu_check.sh: interrupted; the report holds the steps that ran" >&2
    exit 130
elif [[ "$stopped" == TERM ]]; then
    echo "gpu_check.sh: terminated; the report holds the steps that ran" >&2
    exit 143
fi
if [[ $failed != 0 || $merge_rc != 0 ]]; then
    exit 1
fi
