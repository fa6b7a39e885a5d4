"""Attacks as compositions run by one generic loop (see :mod:`ppjax.attacks.loop`).

* :func:`attack` -- the simple call; :class:`AttackResult` -- its per-image results;
* :data:`ATTACKS` / :func:`resolve_attack` (:func:`get_attack`) -- named attacks and presets,
  resolved with settings into an :class:`AttackConfig` once, at the boundary;
* :func:`compile_attack` -- the compiled programs (init / step / advance / finish / merge /
  poll / whole); :func:`count_traces` -- counts their compilations (a no-recompile check);
* the parts: :mod:`.objectives`, :mod:`.parameterisations`, :mod:`.steps`, :mod:`.rules`,
  :mod:`.boosters`; the config: :mod:`.config`; the presets: :mod:`.presets`.

Extending without touching the loop: register a part in its registry (each a
:class:`ppjax.registry.Registry`): an objective factory (``@register("name")``,
``factory(cfg) -> Objective``; :data:`OBJECTIVES`), a parameterisation
(:data:`PARAMETERISATIONS`), a step rule or schedule (:data:`STEP_RULES`, :data:`SCHEDULES`), a
formulation, best-rule, distortion or EOT view (:data:`FORMULATIONS`, :data:`BEST_RULES`,
:data:`DISTORTIONS`, :data:`EOT_VIEWS`); the config accepts the new name at once. An
objective gets extra judges through ``attack(..., extra_judges=...)`` (in ``models``) and extra
traced weights through ``AttackConfig.hyper`` (``cfg.hyper_value(name)``); it may report an ``appeal`` in its
:class:`Terms`, and ``best="appeal"`` keeps the most appealing success (:func:`with_appeal` does
all of this for a score judge). EOT through JPEG is ``eot="jpeg"`` with ``eot_quality_lo/hi``;
judging after JPEG is ``judge_jpeg=True``.
"""

from ppjax.attacks import (
    ensembles,  # noqa: F401  (registers the ensemble objectives)
    loop,
    scores,  # noqa: F401  (registers the score-judge objectives)
)
from ppjax.attacks.api import (
    AttackResult,
    Backend,
    attack,
    choose_backend,
    default_seeds,
    stream,
)
from ppjax.attacks.classes import class_mask, read_indoor_classes, read_sensitive_categories
from ppjax.attacks.config import TRACED_FIELDS, AttackConfig, SettingsError, setting, traced
from ppjax.attacks.loop import (
    Programs,
    State,
    auto_driver,
    compile_attack,
    count_traces,
    python_states,
    run,
)
from ppjax.attacks.objectives import OBJECTIVES, Objective, Terms, register, with_appeal
from ppjax.attacks.parameterisations import PARAMETERISATIONS
from ppjax.attacks.presets import ALIASES, ATTACKS, appeal_variant, get_attack, resolve_attack
from ppjax.attacks.rules import BEST_RULES, DISTORTIONS, EOT_VIEWS, FORMULATIONS
from ppjax.attacks.steps import SCHEDULES, STEP_RULES
from ppjax.attacks.stream import StreamItem

__all__ = [
    "ALIASES", "ATTACKS", "AttackConfig", "AttackResult", "BEST_RULES", "Backend", "DISTORTIONS",
    "EOT_VIEWS", "FORMULATIONS", "OBJECTIVES", "Objective", "PARAMETERISATIONS", "Programs",
    "SCHEDULES", "STEP_RULES", "SettingsError", "State", "StreamItem", "TRACED_FIELDS", "Terms",
    "appeal_variant", "attack", "auto_driver", "choose_backend", "class_mask", "compile_attack",
    "count_traces", "default_seeds", "get_attack", "loop", "python_states",
    "read_indoor_classes", "read_sensitive_categories", "register", "resolve_attack", "run",
    "setting", "stream", "traced", "with_appeal",
]

# objective "faces" registers itself (ppjax.faces.objective); imported here so that every
# caller of the registry sees it
import ppjax.faces.objective  # noqa: E402,F401
