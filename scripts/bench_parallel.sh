#!/usr/bin/env bash
# Data-parallel training speed on this machine: images/s of a preset trained by 1 process (with
# all CPUs, and with 1 thread) and by N processes (`--nproc-per-node N`, the CPUs shared), plus the
# gradient all-reduce time per step, from the runs' metrics.jsonl. The configurations run
# interleaved, REPEATS times, so that a change in the machine's load hits all of them alike.
#
#   scripts/bench_parallel.sh [--cli PATH] [--preset mnist-cpu] [--steps 60] [--nproc 2] [--repeats 3]
#
# The first log window (warm-up) is left out. Prints one line per run and the medians.
set -euo pipefail
cli=target/release/ddpm-cli
preset=mnist-cpu
steps=60
nproc=2
repeats=3
while [ $# -gt 0 ]; do
  case "$1" in
    --cli) cli="$2"; shift 2 ;;
    --preset) preset="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --nproc) nproc="$2"; shift 2 ;;
    --repeats) repeats="$2"; shift 2 ;;
    *) echo "bench_parallel.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$cli" ] || { echo "bench_parallel.sh: $cli is not an executable (build it: cargo xtask cargo build --release -p ddpm-cli)" >&2; exit 2; }
data="${DATA:-datasets/mnist.h5}"
[ -f "$data" ] || { echo "bench_parallel.sh: $data is missing (cargo xtask fetch-data)" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log_every=$(( steps / 4 ))
common=(train --no-progress --preset "$preset" --data "$data" --steps "$steps"
  --set "run.log_every=$log_every" --set run.checkpoint_every=0 --set run.sample_num=0
  --set run.sample_every=0)
cpus=$(nproc)
summary() { # run dir, label
  python3 - "$1" "$2" <<'EOF'
import json, sys, statistics
run, label = sys.argv[1], sys.argv[2]
recs = [json.loads(l) for l in open(f"{run}/metrics.jsonl") if '"img_per_s"' in l][1:]
ips = statistics.mean(r["img_per_s"] for r in recs)
ar = [r["allreduce_s_per_step"] for r in recs if "allreduce_s_per_step" in r]
ar_ms = f"{1000 * statistics.mean(ar):.1f}" if ar else "-"
print(f"{label}\t{ips:.1f}\t{ar_ms}")
EOF
}
echo -e "configuration\timg/s\tall-reduce ms/step"
results="$work/results.tsv"
for r in $(seq "$repeats"); do
  "$cli" --threads "$cpus" "${common[@]}" --out "$work/one-$r" > /dev/null 2>&1
  summary "$work/one-$r" "1 process, $cpus threads" | tee -a "$results"
  "$cli" --threads 1 "${common[@]}" --out "$work/one1-$r" > /dev/null 2>&1
  summary "$work/one1-$r" "1 process, 1 thread" | tee -a "$results"
  "$cli" "${common[@]}" --nproc-per-node "$nproc" --out "$work/dp-$r" > /dev/null 2>&1
  summary "$work/dp-$r" "$nproc processes" | tee -a "$results"
done
echo "medians over $repeats runs (load average now: $(cut -d' ' -f1-3 /proc/loadavg)):"
python3 - "$results" <<'EOF'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    label, ips, ar = line.rstrip("\n").split("\t")
    rows[label].append((float(ips), ar))
for label, vals in rows.items():
    ips = statistics.median(v[0] for v in vals)
    ars = [float(v[1]) for v in vals if v[1] != "-"]
    ar = f"{statistics.median(ars):.1f} ms/step all-reduce" if ars else ""
    print(f"  {label:28s} {ips:8.1f} img/s  {ar}")
EOF
