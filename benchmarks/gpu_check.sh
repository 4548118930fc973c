#!/usr/bin/env bash
# The prepared device check of the GPU fast path (bnas.accel): one script, about 8 minutes, on a GPU
# machine with torch and the core's few dependencies only (no Ray, Optuna, MLflow, pandas; nothing is
# installed and nothing is downloaded: CIFAR-10-sized data is generated with bnas.testing).
#
#   bash benchmarks/gpu_check.sh                 # results in $OUT (default ./gpu_check_out)
#
# Steps, each under its own time limit so that one stuck step cannot eat the others' time:
#   0. env.json        which imports exist (torch, numpy, yaml, PIL, torchvision; the platform's are absent)
#   1. sanity.json     GPU-only checks: device loader determinism (and equal to the CPU's batches), bf16
#                      and channels_last within tolerance on CUDA, cudnn.benchmark restored
#   2. tiny_search/, tiny_retrain/   python -m bnas search / retrain --device cuda end to end (fast path auto)
#   3. fast_path.json  paper-size steps, fp32 eager vs the fast path (benchmarks/bench_fast_path.py)
#   4. probe.json      one capped stage of each schedule at bench_schedules' gpu scale, GPU-days extrapolated
#   5. fast_path_compile.json   torch.compile as a third variant, with whatever time is left
#   summary.json       every step's status and the headline numbers; gpu_check.log: everything printed
set -u
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-./gpu_check_out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"  # generated data and run folders: not copied back
PY="${PYTHON:-python}"
BUDGET_S="${BUDGET_S:-470}"  # the whole script; steps shrink their limits to what is left
DEVICE="${DEVICE:-cuda}"
# A dry run on a CPU: DEVICE=cpu SIZE=tiny SCALE=tiny N_TRAIN=512 BUDGET_S=900 bash benchmarks/gpu_check.sh
SIZE="${SIZE:-paper}"        # bench_fast_path.py --size
SCALE="${SCALE:-gpu}"        # schedule_probe.py --scale (bench_schedules' scales)
N_TRAIN="${N_TRAIN:-50000}"  # generated training images for the timing (25k + 25k search split)
COMPILE_K="${COMPILE_K:-$([[ $SIZE == paper ]] && echo 4 || echo 2)}"  # the search shape compiled in step 5
cd "$REPO" || exit 2
export PYTHONUNBUFFERED=1 PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
START=$(date +%s)
STEPS="$OUT/steps.jsonl"
: > "$STEPS"

left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }

# step NAME LIMIT_S CMD...: run CMD under min(LIMIT_S, time left), record its status in steps.jsonl.
step() {
  local name="$1" limit="$2"; shift 2
  local avail; avail=$(left)
  (( limit > avail )) && limit=$avail
  if (( limit < 20 )); then
    echo "== $name: skipped (${avail}s left)"
    echo "{\"step\": \"$name\", \"status\": \"skipped\", \"left_s\": $avail}" >> "$STEPS"
    return 1
  fi
  echo "== $name (limit ${limit}s, $(( $(date +%s) - START ))s elapsed): $*"
  local t0 rc; t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  local status=ok
  (( rc == 124 || rc == 137 )) && status=timeout
  (( rc != 0 && rc != 124 && rc != 137 )) && status=failed
  echo "== $name: $status (rc $rc, $(( $(date +%s) - t0 ))s)"
  echo "{\"step\": \"$name\", \"status\": \"$status\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - t0 )), \"limit_s\": $limit}" >> "$STEPS"
  return $rc
}

# 0. what this machine has
step env 60 "$PY" - "$OUT/env.json" "$DEVICE" <<'EOF'
import importlib, json, platform, sys
mods = {}
for m in ("torch", "numpy", "yaml", "PIL", "torchvision", "matplotlib", "pandas", "ray", "optuna", "mlflow"):
    try:
        mods[m] = getattr(importlib.import_module(m), "__version__", "present")
    except Exception as e:
        mods[m] = None
env = {"python": platform.python_version(), "modules": mods}
import torch
env["cuda"] = torch.cuda.is_available()
if env["cuda"]:
    env.update(device_name=torch.cuda.get_device_name(0), capability=list(torch.cuda.get_device_capability(0)),
               bf16=torch.cuda.is_bf16_supported(), memory_gib=torch.cuda.get_device_properties(0).total_memory / 2**30,
               cudnn=torch.backends.cudnn.version(), cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
               matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
try:  # the core must import without the platform's packages
    import bnas.accel, bnas.retrain, bnas.search  # noqa: F401
    env["core_imports"] = True
except Exception as e:
    env["core_imports"] = f"{type(e).__name__}: {e}"
json.dump(env, open(sys.argv[1], "w"), indent=2)
print(json.dumps(env))
sys.exit(0 if env["core_imports"] is True and (env["cuda"] or sys.argv[2] == "cpu") else 3)
EOF
if (( $? != 0 )); then
  echo "the core does not import or there is no CUDA device: see $OUT/env.json; stopping"
  exit 3
fi

# data: a tiny set for the end-to-end runs, and CIFAR-10's size (50,000 + 1,000 images, 32 px) for timing
step data 120 "$PY" -c "
from pathlib import Path
from bnas.testing import make_fake_cifar
make_fake_cifar(Path('$WORK/tiny'), n_train=512, n_test=256)
make_fake_cifar(Path('$WORK/paper'), n_train=$N_TRAIN, n_test=1_000)
print('data in $WORK')"

# 1. GPU-only checks of the fast path
step sanity 90 "$PY" benchmarks/gpu_sanity.py --device "$DEVICE" --out "$OUT/sanity.json"

# 2. a tiny search and a tiny retraining end to end on CUDA (runtime settings auto: the fast path is on)
step tiny_search 150 "$PY" -m bnas search --config configs/search_tiny.yaml --data-root "$WORK/tiny" \
  --device "$DEVICE" --out "$OUT/tiny_search" --no-resume --quiet
rm -f "$OUT/tiny_search/checkpoint.pt"
GENOTYPE="$OUT/tiny_search/genotype.json"
[[ -f "$GENOTYPE" ]] || GENOTYPE=bnas_xnor
step tiny_retrain 120 "$PY" -m bnas retrain --genotype "$GENOTYPE" --data-root "$WORK/tiny" --device "$DEVICE" \
  --layers 3 --channels 8 --epochs 2 --batch-size 64 --image-size 16 --train-subset 512 --test-subset 256 \
  --out "$OUT/tiny_retrain" --no-resume --quiet
rm -f "$OUT/tiny_retrain/checkpoint.pt"

# 3. paper-size steps: fp32 eager vs the fast path, img/s and peak memory
step fast_path 200 "$PY" benchmarks/bench_fast_path.py --device "$DEVICE" --size "$SIZE" --variants fp32,fast \
  --steps 10 --warmup 3 --data-root "$WORK/paper" --work "$WORK/bench" --out "$OUT/fast_path.json"

# 4. one capped stage of every schedule at the gpu scale (fast path auto), whole schedules extrapolated
step schedule_probe 170 "$PY" benchmarks/schedule_probe.py --scale "$SCALE" --device "$DEVICE" \
  --data-root "$WORK/paper" --batches 15 --subnet-batches 2 --out "$WORK/probe" \
  --schedules bnas_k2 pcdarts_fp bnas_k4 pcdarts_xnor
cp "$WORK/probe/probe.json" "$OUT/probe.json" 2>/dev/null

# 5. torch.compile as a third variant: the retraining network first (smaller graph), then the search
step compile_retrain 150 "$PY" benchmarks/bench_fast_path.py --device "$DEVICE" --size "$SIZE" --variants compile \
  --parts retrain --steps 10 --warmup 3 --data-root "$WORK/paper" --work "$WORK/bench" \
  --out "$OUT/fast_path_compile_retrain.json"
step compile_search 150 "$PY" benchmarks/bench_fast_path.py --device "$DEVICE" --size "$SIZE" --variants compile \
  --parts search --k "$COMPILE_K" --steps 10 --warmup 3 --data-root "$WORK/paper" --work "$WORK/bench" \
  --out "$OUT/fast_path_compile_search.json"

# summary: statuses and headline numbers in one file
"$PY" - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def load(name):
    p = out / name
    try:
        return json.loads(p.read_text())
    except Exception:
        return None
summary = {"steps": [json.loads(l) for l in (out / "steps.jsonl").read_text().splitlines() if l.strip()],
           "env": load("env.json"), "sanity": load("sanity.json")}
for run in ("tiny_search", "tiny_retrain"):
    final = load(f"{run}/final.json")
    if final:
        keep = ("genotype_digest", "derived_val_acc", "search_time_s", "test_acc", "wall_time_s", "device",
                "fast_path", "phase_times_s")
        summary[run] = {k: final[k] for k in keep if k in final}
rows = []
for name in ("fast_path.json", "fast_path_compile_retrain.json", "fast_path_compile_search.json"):
    data = load(name)
    if data:
        rows += [{k: r.get(k) for k in ("part", "variant", "k", "batch", "layers", "channels", "img_per_s",
                                         "step_s", "warmup_s", "peak_cuda_mib")} for r in data["rows"]]
summary["steps_per_s"] = rows
probe = load("probe.json")
if probe:
    summary["schedules_gpu_days"] = {n: r["estimate"] for n, r in probe["schedules"].items()}
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
EOF
echo "== done in $(( $(date +%s) - START ))s; results in $OUT"
rm -rf "$WORK"
