#!/usr/bin/env bash
# Download, here (where PyPI is reachable), the wheels the offline GPU machine may lack for
# benchmarks/gpu_check.sh: ppjax's runtime requirements except jax/jaxlib (the machine's own
# CUDA jax is used) and numpy (its jax is built against its own), at the versions that
# `make test-jax-next` tests, for CPython 3.12 on x86-64 manylinux, into .whl/ (git-ignored).
# The GPU check installs only those missing there or outside ppjax's ranges (benchmarks/gpu_env.py).
#
#   bash benchmarks/gpu_wheels.sh            # then carry ".whl" (docs/gpu.md)
#
# Environment: WHL (default .whl), PYTHON (default python3: any Python with pip).
set -euo pipefail
cd "$(dirname "$0")/.."

WHL=${WHL:-.whl}
PYTHON=${PYTHON:-python3}
LIMIT_MIB=40  # the working tree and the wheels travel together, 64 MiB in all
# the versions installed in .venv-next by `make test-jax-next` (Python 3.12, jax 0.11.2)
PACKAGES=(flax==0.12.12 optax==0.2.8 orbax-checkpoint==0.12.8 pillow==13.0.0
          scikit-image==0.26.0 matplotlib==3.11.2 tqdm==4.70.1)

mkdir -p "$WHL"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 --platform any \
  -d "$WHL" "${PACKAGES[@]}"

# one version of each distribution: two would stop the whole install there
dupes=$(ls "$WHL"/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z_.' 'a-z--' | sort | uniq -d)
if [[ -n $dupes ]]; then
  echo "gpu_wheels: several versions of: $dupes (remove the stale ones from $WHL)" >&2
  exit 1
fi
size=$(du -sm "$WHL" | cut -f1)
ls -1 "$WHL"
echo "gpu_wheels: ${size} MiB in $WHL"
if (( size > LIMIT_MIB )); then
  echo "gpu_wheels: over ${LIMIT_MIB} MiB: the call's 64 MiB must also hold the working tree" >&2
  exit 1
fi
