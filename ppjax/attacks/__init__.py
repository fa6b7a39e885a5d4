"""Attacks as compositions run by one generic loop (see :mod:`ppjax.attacks.loop`).

* :func:`attack` -- the simple call; :class:`AttackResult` -- its per-image results;
* :data:`ATTACKS` / :func:`get_attack` -- named attacks and presets;
* the parts: :mod:`.objectives`, :mod:`.parameterisations`, :mod:`.steps`, :mod:`.config`.

Extending without touching the loop: register an objective factory (``@register("name")``,
``factory(cfg) -> Objective``); give it extra judges through ``attack(..., extra_judges=...)``
(they arrive in ``models``) and extra traced weights through ``AttackConfig.hyper`` (they arrive
in ``hp``); report an ``appeal`` in its :class:`Terms` and set ``best="appeal"`` to keep the most
appealing success (:func:`with_appeal` does all of this for a score judge). EOT through JPEG is
``eot="jpeg"`` with ``eot_quality_lo/hi``; judging after JPEG is ``judge_jpeg=True``.
"""

from ppjax.attacks import loop
from ppjax.attacks.api import (
    AttackResult,
    Backend,
    attack,
    choose_backend,
    default_seeds,
    resolve,
    stream,
)
from ppjax.attacks.config import TRACED_FIELDS, AttackConfig
from ppjax.attacks.loop import TRACES, auto_driver, python_states, run
from ppjax.attacks.objectives import (
    OBJECTIVES,
    Objective,
    Terms,
    class_mask,
    read_indoor_classes,
    read_sensitive_categories,
    register,
    with_appeal,
)
from ppjax.attacks.registry import ALIASES, ATTACKS, get_attack
from ppjax.attacks.stream import StreamItem

__all__ = [
    "ALIASES", "ATTACKS", "AttackConfig", "AttackResult", "Backend", "OBJECTIVES", "Objective",
    "TRACED_FIELDS", "TRACES", "Terms", "attack", "auto_driver", "choose_backend", "class_mask",
    "default_seeds",
    "get_attack", "loop", "python_states", "read_indoor_classes", "read_sensitive_categories",
    "register", "resolve", "run", "stream", "StreamItem", "with_appeal",
]
