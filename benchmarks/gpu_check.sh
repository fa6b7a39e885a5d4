#!/usr/bin/env bash
# GPU check (issue 12): install ppjax with its `cuda` extra, then measure ResNet-50 (stand-in
# weights) in bf16 on the GPU at batch 64..256: PGD throughput (benchmarks.throughput) and the
# streaming pipeline's efficiency (benchmarks.pipeline). Prints img·it/s and the share of the
# GPU's bf16 peak. Finishes in under 10 minutes on an H100/H200-class GPU.
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--no-install]
#
# Environment: PYTHON (default: .venv-gpu/bin/python, created with python3 -m venv when absent),
# OUT (default out/gpu_check), BATCHES (default "64 256"), SLOTS (pipeline slots, default 128),
# PEAK_TFLOPS (bf16 dense peak of the GPU, default 790 = H200 SXM), GFLOP_PER_IT (default 21:
# ResNet-50 at 256x256, forward + input gradient, per image and attack iteration).
# --dry-run prints every command without running any.
set -euo pipefail
cd "$(dirname "$0")/.."

DRY=0
INSTALL=1
for a in "$@"; do
  case "$a" in
    --dry-run) DRY=1 ;;
    --no-install) INSTALL=0 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown option: $a (see --help)" >&2; exit 2 ;;
  esac
done

VENV=${VENV:-.venv-gpu}
PYTHON=${PYTHON:-$VENV/bin/python}
OUT=${OUT:-out/gpu_check}
BATCHES=${BATCHES:-"64 256"}
SLOTS=${SLOTS:-128}
PEAK_TFLOPS=${PEAK_TFLOPS:-790}
GFLOP_PER_IT=${GFLOP_PER_IT:-21}
WEIGHTS=${WEIGHTS:-$OUT/weights}

run() {
  echo "+ $*"
  if [[ $DRY == 0 ]]; then "$@"; fi
}

if [[ $INSTALL == 1 ]]; then
  if [[ ! -x $PYTHON ]]; then run python3 -m venv "$VENV"; fi
  run "$PYTHON" -m pip install -q --upgrade pip
  # torch only writes the stand-in weights here: the CPU wheel (~200 MB, not the CUDA one's GBs)
  run "$PYTHON" -m pip install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
  run "$PYTHON" -m pip install -q -e ".[cuda,convert]"
fi
run mkdir -p "$OUT"
# fail early and clearly when JAX sees no GPU (a CPU run would take hours and mean nothing here)
run "$PYTHON" -c "import jax; d = jax.devices(); print(d); assert jax.default_backend() == 'gpu', \
'JAX sees no GPU: check the NVIDIA driver (nvidia-smi) and the cuda extra'"

for B in $BATCHES; do
  run timeout 180 "$PYTHON" -m benchmarks.throughput --judges resnet50_places365 --batch "$B" \
    --variants accel_bf16,accel_f32 --no-torch --no-memory --iters 10 --rounds 3 \
    --weights-dir "$WEIGHTS" --results-section "throughput_gpu_b$B" --json "$OUT/throughput_b$B.json"
done
run timeout 240 "$PYTHON" -m benchmarks.pipeline --parts efficiency --cases resnet50 \
  --judge resnet50_places365 --dtype bfloat16 --slots "$SLOTS" --eff-n $((4 * SLOTS)) --eff-repeats 1 \
  --weights-dir "$WEIGHTS" --results-section pipeline_gpu --json "$OUT/pipeline.json"

summary() {
  "$PYTHON" - "$OUT" "$PEAK_TFLOPS" "$GFLOP_PER_IT" $BATCHES <<'EOF'
import json, sys
from pathlib import Path

out, peak, gflop, batches = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]
print(f"\nResNet-50 (STAND-IN weights) on {json.loads((out / f'throughput_b{batches[0]}.json').read_text())['machine']['devices']}")
print(f"share of bf16 peak = img·it/s x {gflop:g} GFLOP / {peak:g} TFLOP/s")
for b in batches:
    for r in json.loads((out / f"throughput_b{b}.json").read_text())["rows"]:
        if "img_it_per_s" in r:
            share = r["img_it_per_s"] * gflop * 1e9 / (peak * 1e12)
            print(f"  batch {b:>4} {r['config']:32s} {r['img_it_per_s']:10.1f} img·it/s  "
                  f"{100 * share:5.1f}% of bf16 peak  (compile {r['compile_s']:.1f} s)")
p = json.loads((out / "pipeline.json").read_text())
for case, e in p.get("efficiency", {}).items():
    print(f"  pipeline efficiency ({case}): {e}")
EOF
}
if [[ $DRY == 1 ]]; then
  echo "+ summary of $OUT/throughput_b*.json and $OUT/pipeline.json (img·it/s, share of ${PEAK_TFLOPS} TFLOP/s)"
else
  summary
fi
