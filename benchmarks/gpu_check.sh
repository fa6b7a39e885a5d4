#!/usr/bin/env bash
# GPU check (issues 12, 28): ResNet-50 (STAND-IN weights) PGD in bf16 on the GPU at batch 64 and
# 256 (img·it/s, share of the device's bf16 peak, compile times) against the same attack in the
# machine's torch on the same GPU (ratio_vs_torch_gpu), and the streaming pipeline's efficiency.
# Offline: it runs under the machine's own python3 when that has a CUDA jax, ppjax from this
# source tree (PYTHONPATH), and installs only the packages missing there from the wheels carried
# in .whl/ (benchmarks/gpu_wheels.sh made them here). About 5-8 minutes on an H100/H200; docs/gpu.md.
#
#   bash benchmarks/gpu_check.sh [--cpu-dry-run] [--print]
#
# --cpu-dry-run: the same steps on the CPU at tiny sizes (JAX_PLATFORMS=cpu); run it with a
#   Python 3.12 + jax 0.11 venv first on the PATH (`make gpu-dry-run` uses .venv-next).
# --print: print the commands without running them.
# Environment: PYTHON (default python3), OUT (default out/gpu_check; the device machine sets it),
# WHL (default .whl), WEIGHTS (stand-in weights, default $TMPDIR/ppjax-gpu-check-weights),
# BATCHES, ITERS, ROUNDS, SLOTS, EFF_N, EFF_STEPS, TORCH_COMPILE_BATCHES, PEAK_TFLOPS (override
# the datasheet table), BUDGET_S (end-to-end limit in seconds: 470 on the GPU, 1500 for the dry
# run on a small CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

MODE=gpu
PRINT=0
for a in "$@"; do
  case "$a" in
    --cpu-dry-run) MODE=cpu ;;
    --print) PRINT=1 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown option: $a (see --help)" >&2; exit 2 ;;
  esac
done

PYTHON=${PYTHON:-python3}
OUT=${OUT:-out/gpu_check}
WHL=${WHL:-.whl}
WEIGHTS=${WEIGHTS:-${TMPDIR:-/tmp}/ppjax-gpu-check-weights}
SITE=${SITE:-${TMPDIR:-/tmp}/ppjax-gpu-check-site}
if [[ $MODE == cpu ]]; then
  BUDGET_S=${BUDGET_S:-1500}
  BATCHES=${BATCHES:-2} ITERS=${ITERS:-2} ROUNDS=${ROUNDS:-2} SLOTS=${SLOTS:-4}
  EFF_N=${EFF_N:-8} EFF_STEPS=${EFF_STEPS:-2} TORCH_COMPILE_BATCHES=${TORCH_COMPILE_BATCHES:-}
  export JAX_PLATFORMS=cpu
else
  BUDGET_S=${BUDGET_S:-470}
  BATCHES=${BATCHES:-64,256} ITERS=${ITERS:-20} ROUNDS=${ROUNDS:-5} SLOTS=${SLOTS:-128}
  EFF_N=${EFF_N:-256} EFF_STEPS=${EFF_STEPS:-50} TORCH_COMPILE_BATCHES=${TORCH_COMPILE_BATCHES:-256}
  # torch shares the GPU in the same process: JAX must not take 75% of its memory up front
  export XLA_PYTHON_CLIENT_PREALLOCATE=false
fi
# cold compiles (the figures are compile times), stand-ins written without torch, no buffering
export PPJAX_NO_COMPILATION_CACHE=1 PPJAX_STANDIN_FORMAT=npz PYTHONUNBUFFERED=1

mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
START=$SECONDS
FAILED=()

run() {
  echo "+ $*"
  if [[ $PRINT == 0 ]]; then "$@"; fi
}
left() {  # seconds left of the budget, keeping $1 for the steps after this one
  local l=$((BUDGET_S - (SECONDS - START) - $1))
  echo $((l > 30 ? l : 30))
}
step() {  # a step that fails (or runs out of time) is named, and the others still run
  local name=$1; shift
  run "$@" || { echo "gpu_check: step '$name' failed (rc $?)"; FAILED+=("$name"); }
}

# 1. the Python: the machine's own python3 when it already has jax on the wanted backend
echo "+ $PYTHON -m benchmarks.gpu_env backend"
if ! info=$("$PYTHON" -m benchmarks.gpu_env backend); then
  echo "gpu_check: '$PYTHON' has no working jax (PYTHON=... names another Python)" >&2
  exit 2
fi
echo "$info"
read -r jax_version backend device_kind <<<"$info"
want=$([[ $MODE == cpu ]] && echo cpu || echo gpu)
if [[ $backend != "$want" ]]; then
  echo "gpu_check: jax $jax_version in '$PYTHON' runs on '$backend', not '$want'" \
       "(a GPU run needs a CUDA jax and a visible GPU: nvidia-smi; --cpu-dry-run for the CPU)" >&2
  exit 2
fi

# 2. only the missing packages, from the carried wheels; ppjax itself from this source tree
if [[ -d $WHL ]]; then
  mapfile -t need < <("$PYTHON" -m benchmarks.gpu_env missing "$WHL")
  if (( ${#need[@]} )); then
    step wheels "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target "$SITE" "${need[@]}"
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "gpu_check: every carried wheel's package is already here in range; none installed"
  fi
  if [[ $MODE == cpu ]]; then  # the dry run also proves that every carried wheel installs here
    step wheels_all "$PYTHON" -m pip install -q --no-index --no-deps --no-compile \
      --no-cache-dir --target "$(mktemp -d)" "$WHL"/*.whl
  fi
fi
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
run "$PYTHON" -m benchmarks.gpu_env report > "$OUT/env.json" || FAILED+=(env)

# 3. PGD throughput (ppjax and torch, interleaved), then the pipeline, then the summary
step throughput timeout "$(left 150)" "$PYTHON" -m benchmarks.gpu bench \
  --json "$OUT/throughput.json" --weights-dir "$WEIGHTS" --batches "$BATCHES" --iters "$ITERS" \
  --rounds "$ROUNDS" --torch-compile-batches "$TORCH_COMPILE_BATCHES" \
  ${PEAK_TFLOPS:+--peak-tflops "$PEAK_TFLOPS"}
step pipeline timeout "$(left 10)" "$PYTHON" -m benchmarks.pipeline --parts efficiency \
  --cases resnet50 --judge resnet50_places365 --dtype bfloat16 --slots "$SLOTS" \
  --eff-n "$EFF_N" --eff-steps "$EFF_STEPS" --eff-repeats 1 --weights-dir "$WEIGHTS" \
  --no-results-md --json "$OUT/pipeline.json"
step summary "$PYTHON" -m benchmarks.gpu summary --out "$OUT"

echo "gpu_check: $MODE run in $((SECONDS - START)) s; results in $OUT"
if (( ${#FAILED[@]} )); then
  echo "gpu_check: failed steps: ${FAILED[*]}" >&2
  exit 1
fi
