"""ppjax: protect photos from automatic inference (MediaEval Pixel Privacy), in JAX/Flax."""

# The public names load JAX on first use only (PEP 562), so ``ppjax --help`` and the CLI's
# argument checks start without it.
_LAZY = {"attack": "ppjax.attacks", "stream": "ppjax.attacks", "StreamItem": "ppjax.attacks",
         "AttackResult": "ppjax.attacks", "JUDGES": "ppjax.judges", "Judge": "ppjax.judges",
         "load_judge": "ppjax.judges"}

__all__ = ["JUDGES", "AttackResult", "Judge", "StreamItem", "attack", "load_judge", "stream"]
__version__ = "0.1.0"


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ppjax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
