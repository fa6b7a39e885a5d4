"""oneDNN convolutions on CPU: the AMX path that XLA's CPU backend does not take.

XLA's CPU backend (jaxlib 0.10) upcasts bfloat16 convolutions to float32 and runs them through
YNNPACK or Eigen, so on a Xeon with AMX a JAX judge runs at a fraction of PyTorch's
channels-last bf16 speed, which is oneDNN underneath. This package calls oneDNN directly from
the compiled program through the XLA FFI, one module per job:

* :mod:`~ppjax.accel.onednn.extension` compiles ``ppjax/accel/csrc/onednn_conv.cc`` (the forward
  convolution, its gradient with respect to the input, and max pooling) on first use against
  the ``onednn-cpu-gomp`` wheel (extra ``ppjax[cpu]``) and loads it.
* :mod:`~ppjax.accel.onednn.cpu` probes what oneDNN runs natively on this CPU
  (:func:`capabilities`).
* :mod:`~ppjax.accel.onednn.ops` holds the differentiable ops, :func:`conv2d` and
  :func:`max_pool`.
* :mod:`~ppjax.accel.onednn.judge` wraps a :class:`~ppjax.judges.Judge` so that its model runs
  on them (:func:`accelerate`).

    from ppjax.accel.onednn import accelerate, available
    if available():
        judge = accelerate(load_judge("resnet50_places365"), dtype=jnp.bfloat16)

Everything here is CPU-only and optional: when the compiler or the wheel is missing,
:func:`available` is false, :func:`why_unavailable` says why, and callers keep the XLA path.
The names below are this package's public API; ppjax's own modules import each from its owner.
"""

from ppjax.accel.onednn.cpu import Capabilities, capabilities, cpu_info, kernel_name, require_native
from ppjax.accel.onednn.extension import OneDnnUnavailable, available, build, wheel_paths, why_unavailable
from ppjax.accel.onednn.judge import accelerate, is_accelerated
from ppjax.accel.onednn.ops import conv2d, max_pool, weight_cache_stats

__all__ = ["Capabilities", "OneDnnUnavailable", "accelerate", "available", "build", "capabilities",
           "conv2d", "cpu_info", "is_accelerated", "kernel_name", "max_pool", "require_native",
           "weight_cache_stats", "wheel_paths", "why_unavailable"]
