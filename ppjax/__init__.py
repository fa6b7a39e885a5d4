"""ppjax: protect photos from automatic inference (MediaEval Pixel Privacy), in JAX/Flax."""

from ppjax.attacks import AttackResult, attack
from ppjax.judges import JUDGES, Judge, load_judge

__all__ = ["JUDGES", "AttackResult", "Judge", "attack", "load_judge"]
__version__ = "0.1.0"
