"""Named attacks and their presets (for the CLI and ``ppjax.attack``): plain data, no callables.

``ATTACKS[name][preset]`` is an :class:`AttackConfig`; every attack has a ``"default"`` preset.
Step sizes are absolute (pixel units in [0, 1], or parameter units for tanh/ACE); overriding
``eps`` alone does not rescale them (FGSM takes a step of 1, which the projection clips to eps).

Quality camouflage (2020, KonCept512; success = score < 50 after the organisers' Pillow JPEG-90):

* ``camouflage/pp2020_baseline``: the organisers' published baseline, I-FGSM with eps = step =
  0.05 in KonCept512's normalised space. That space is ``(x01 - 0.5) / 0.5`` in [-1, 1], twice
  the [0, 1] pixel range, so eps = step = 0.05 / 2 = 0.025 in pixel units (6.375 grey levels;
  the returned 8-bit images keep the largest grid step inside it, 6 levels). 20 steps, no early
  stop, MSE toward a score of 30 (``score_mse``: target = threshold - margin = 50 - 20), no JPEG
  in the loop (``fused_eval=False``, so the gradient is not taken through the judging JPEG);
  success is judged as the organisers did, after the exact-forward JPEG-90 (bit-exact to
  Pillow).
* ``camouflage`` (default): ours. Hinge below 50 with a margin of 5, EOT through the
  differentiable JPEG (exact forward, straight-through rounding) at a random quality in 85..95
  per image and step, 1/255 sign steps inside a smaller ball (6/255), per-image early stop at the
  first success after the exact JPEG-90, the smallest-distortion success kept.
* ``camouflage/appeal``: the default plus a NIMA appeal term (objective
  ``score_below+appeal``, traced ``appeal_weight``), run for all steps, keeping the most
  appealing success. Needs ``extra_judges={"appeal": nima}``. ``get_attack(..., appeal=True)``
  (:func:`resolve_attack` with an ``appeal_judge``) adds the same term to any preset.
"""

from __future__ import annotations

import numbers

from ppjax.attacks.config import FIELDS, AttackConfig, SettingsError, coerce, unknown_problems
from ppjax.attacks.objectives import appeal_objective
from ppjax.registry import Registry, UnknownName

# ``pgd/torchattacks`` and ``pgd/foolbox`` reproduce those libraries' PGD (defaults and loop: every
# step taken, the final iterate returned); tests/test_runs.py checks the first against torchattacks.

_FGSM = AttackConfig(name="fgsm", objective="ce", step="sign", norm="linf", steps=1,
                     eps=8 / 255, step_size=1.0, distortion="linf")
_IFGSM = AttackConfig(name="ifgsm", objective="ce", step="sign", norm="linf", steps=10,
                      eps=8 / 255, step_size=1 / 255, distortion="linf")
_PGD = AttackConfig(name="pgd", objective="ce", step="sign", norm="linf", steps=10,
                    eps=8 / 255, step_size=2 / 255, random_start=True, distortion="linf")
_PGD_L2 = AttackConfig(name="pgd_l2", objective="ce", step="l2", norm="l2", steps=10, eps=1.0,
                       step_size=0.25, random_start=True, distortion="l2")
_MIFGSM = AttackConfig(name="mifgsm", objective="ce", step="momentum", norm="linf", steps=10,
                       eps=8 / 255, step_size=0.8 / 255, momentum=1.0, distortion="linf")
_CW = AttackConfig(name="cw_l2", objective="margin", param="tanh", norm="none", step="adam",
                   formulation="penalty", distortion="l2sq", early_stop=False, steps=100,
                   search_steps=5, step_size=0.01, const=1.0, kappa=0.0)
# ACE (BMVC 2020): margin and gradient on the continuous filtered image (fused_eval=False),
# success on the 8-bit image, least-regularised success kept, abort_early every 25 iterations
# (per image here), a never-fooled image returned clean.
_ACE = AttackConfig(name="ace", objective="margin", param="ace", norm="none", step="adam",
                    formulation="attack", distortion="reg", early_stop=False, k=64, lam=5.0,
                    step_size=0.01, steps=500, fused_eval=False, plateau=25, unfooled="clean")
# ACE journal variant: 100 L2-normalised steps of size 1, theta in [1/K, 16/K], no regulariser,
# the latest success kept.
_ACE_JOURNAL = _ACE.replace(name="ace/journal", step="l2", step_size=1.0, steps=100, lam=0.0,
                            theta_min=1 / 64, theta_max=16 / 64, best="last", plateau=0)
# PerC-AL (CVPR 2020): continuous iterate clamped to [0, 1], CE gradient at it, the 8-bit copy
# judged; alpha_l 1 -> 0.01, alpha_c 0.5 -> 0.05 (min = init / 10), cosine over the iterations.
_PERC_AL = AttackConfig(name="perc_al", objective="ce", param="delta", norm="none", step="l2",
                        formulation="alternate", distortion="ciede2000", early_stop=False,
                        schedule="cosine", step_size=1.0, step_size_min=0.01, step_size2=0.5,
                        step_size2_min=0.05, steps=1000, eps=1.0, fused_eval=False,
                        unfooled="clean")

# eps = step = 0.05 in [-1, 1] (Normalize(0.5, 0.5)) = 0.025 in [0, 1] pixel units.
PP2020_NORMALISED_EPS = 0.05
_PP2020_BASELINE = AttackConfig(
    name="camouflage/pp2020_baseline", objective="score_mse", step="sign", norm="linf",
    eps=PP2020_NORMALISED_EPS / 2, step_size=PP2020_NORMALISED_EPS / 2, steps=20,
    threshold=50.0, margin=20.0, early_stop=False, best="final", eot="none", judge_jpeg=True,
    judge_quality=90.0, fused_eval=False, distortion="linf")
_CAMOUFLAGE = AttackConfig(
    name="camouflage", objective="score_below", step="sign", norm="linf", eps=6 / 255,
    step_size=1 / 255, steps=30, threshold=50.0, margin=5.0, early_stop=True, best="distortion",
    eot="jpeg", eot_quality_lo=85.0, eot_quality_hi=95.0, eot_samples=1, judge_jpeg=True,
    judge_quality=90.0, distortion="linf")
APPEAL_WEIGHT = 0.5  # default weight of the appeal term (NIMA mean, 1..10, vs a MOS hinge)


def appeal_variant(cfg: AttackConfig, weight: float | None = None) -> AttackConfig:
    """``cfg`` with a NIMA appeal term: objective ``"<objective>+appeal"`` and a traced
    ``appeal_weight`` (kept if ``cfg`` has one and ``weight`` is None, else ``weight`` or
    :data:`APPEAL_WEIGHT`). Idempotent."""
    hyper = dict(cfg.hyper)
    if weight is not None or "appeal_weight" not in hyper:
        hyper["appeal_weight"] = float(APPEAL_WEIGHT if weight is None else weight)
    return cfg.replace(objective=appeal_objective(cfg.objective), hyper=hyper)


# Transfer boosters (ppjax.attacks.boosters), named as torchattacks names them, with its defaults
# (10 steps of 2/255 in an 8/255 ball, no random start, every step taken, the final iterate kept:
# stopping at the first success on the surrogate would return the least transferable image).
_TRANSFER = dict(objective="ce", norm="linf", steps=10, eps=8 / 255, step_size=2 / 255,
                 random_start=False, early_stop=False, best="final", distortion="linf")
_DIFGSM = AttackConfig(name="difgsm", step="sign", di=True, **_TRANSFER)  # decay 0
_TIFGSM = AttackConfig(name="tifgsm", step="sign", di=True, ti_kernel=15, **_TRANSFER)
_VMIFGSM = AttackConfig(name="vmifgsm", step="momentum", momentum=1.0, vmi_samples=5,
                        **_TRANSFER)
SGM_GAMMA_RESNET = 0.2  # Wu et al. (ICLR 2020) for ResNets
# Square (Linf): margin loss, 5000 proposals per image, p_init 0.8 (torchattacks' defaults); stops
# at the first success (the query count is the point)
_SQUARE = AttackConfig(name="square", objective="margin", step="square", norm="linf",
                       eps=8 / 255, steps=5000, square_p_init=0.8, early_stop=True,
                       best="distortion", distortion="linf")

#: Named attacks: ``ATTACKS[name]`` is a dict ``{preset: AttackConfig}`` with a "default".
# The task faces (docs/faces.md): objective "faces_jitter" (every P-Net window of every scale,
# and the R-Net/O-Net proposals, each also cropped a little moved and scaled, below their
# thresholds by kappa log-odds), EOT over what an upload does (downscale 0.4-1.0x and JPEG 70-95
# 4:2:0, either order), MI-FGSM in 8/255, every step taken (success on the PNG alone says
# nothing about an upload), the final iterate kept.
_FACES = AttackConfig(
    name="faces", objective="faces_jitter", step="momentum", momentum=1.0, norm="linf", eps=8 / 255,
    step_size=1 / 255, steps=100, kappa=2.0, early_stop=False, best="final", eot="upload",
    eot_quality_lo=70.0, eot_quality_hi=95.0, subsampling="420", eot_samples=1,
    distortion="linf")

ATTACKS: Registry = Registry("attack")
#: Other spellings of attack names: ``ALIASES[alias]`` is a key of :data:`ATTACKS`.
ALIASES: Registry = Registry("attack alias")

for _name, _presets in {
    "fgsm": {"default": _FGSM},
    "ifgsm": {"default": _IFGSM},
    "pgd": {"default": _PGD,
            # torchattacks.PGD's defaults and loop: 10 steps of 2/255 in an 8/255 ball from a
            # random start, every step taken (no early stop), the final iterate returned, the
            # gradient taken at the float iterate (fused_eval=False)
            "torchattacks": _PGD.replace(name="pgd/torchattacks", steps=10, eps=8 / 255,
                                         step_size=2 / 255, random_start=True, early_stop=False,
                                         best="final", fused_eval=False),
            # Foolbox LinfPGD's defaults: 40 steps of rel_stepsize 0.01 / 0.3 of eps (absolute
            # here: eps / 30 at eps 8/255; an eps override does not rescale it), random start
            "foolbox": _PGD.replace(name="pgd/foolbox", steps=40, eps=8 / 255,
                                    step_size=8 / 255 * 0.01 / 0.3, random_start=True,
                                    early_stop=False, best="final", fused_eval=False),
            "madry": _PGD.replace(steps=40, step_size=0.01, early_stop=False, best="final"),
            "restarts": _PGD.replace(steps=20, restarts=5),
            # PGD with one booster each (transfer: every step taken, the final iterate)
            "di": _PGD.replace(name="pgd/di", di=True, early_stop=False, best="final"),
            "ti": _PGD.replace(name="pgd/ti", ti_kernel=15, early_stop=False, best="final"),
            "sgm": _PGD.replace(name="pgd/sgm", sgm_gamma=SGM_GAMMA_RESNET, early_stop=False,
                                best="final")},
    "pgd_l2": {"default": _PGD_L2},
    "mifgsm": {"default": _MIFGSM,
               "di": _MIFGSM.replace(name="mifgsm/di", di=True, early_stop=False, best="final"),
               "ti": _MIFGSM.replace(name="mifgsm/ti", ti_kernel=15, early_stop=False,
                                     best="final"),
               "vmi": _MIFGSM.replace(name="mifgsm/vmi", vmi_samples=5, early_stop=False,
                                      best="final"),
               "sgm": _MIFGSM.replace(name="mifgsm/sgm", sgm_gamma=SGM_GAMMA_RESNET,
                                      early_stop=False, best="final"),
               # all four (VMI-TI-DI-MI with SGM): for ResNet-family surrogates
               "all": _MIFGSM.replace(name="mifgsm/all", di=True, ti_kernel=15, vmi_samples=5,
                                      sgm_gamma=SGM_GAMMA_RESNET, early_stop=False,
                                      best="final")},
    "difgsm": {"default": _DIFGSM,
               # M-DI2-FGSM: with momentum 1 (the paper's strongest variant)
               "momentum": _DIFGSM.replace(name="difgsm/momentum", step="momentum")},
    "tifgsm": {"default": _TIFGSM,
               "momentum": _TIFGSM.replace(name="tifgsm/momentum", step="momentum")},
    "vmifgsm": {"default": _VMIFGSM,
                "paper": _VMIFGSM.replace(name="vmifgsm/paper", vmi_samples=20)},
    "square": {"default": _SQUARE,
               "paper": _SQUARE.replace(name="square/paper", steps=10000, square_p_init=0.05)},
    "cw_l2": {"default": _CW,
              "paper": _CW.replace(steps=10000, search_steps=9, const=1e-3)},
    "ace": {"default": _ACE, "bmvc2020": _ACE, "journal": _ACE_JOURNAL},
    "perc_al": {"default": _PERC_AL, "cvpr2020": _PERC_AL,
                # alpha_c = 0.1 (-> 0.01): what a comment in the authors' code says the paper
                # used for the untargeted case
                "untargeted": _PERC_AL.replace(name="perc_al/untargeted", step_size2=0.1,
                                               step_size2_min=0.01),
                # the confidence of the authors' notebook: adversarial = margin <= -40
                "kappa40": _PERC_AL.replace(name="perc_al/kappa40", kappa=40.0)},
    # Quality camouflage (2020): I-FGSM on a score judge, robust to the JPEG-90 of the
    # evaluation (EOT over JPEG qualities 80..95, success judged after JPEG-90).
    "ifgsm_score": {"default": _IFGSM.replace(
        name="ifgsm_score", objective="score_below", threshold=50.0, margin=5.0, steps=20,
        step_size=2 / 255, eot="jpeg", judge_jpeg=True)},
    "camouflage": {"default": _CAMOUFLAGE,
                   "pp2020_baseline": _PP2020_BASELINE,
                   "appeal": appeal_variant(_CAMOUFLAGE).replace(
                       name="camouflage/appeal", early_stop=False, best="appeal")},
    # plain: without EOT (and the crops as the detector makes them: no resize to allow for)
    "faces": {"default": _FACES, "plain": _FACES.replace(name="faces/plain", eot="none",
                                                         steps=40, objective="faces"),
              # R-Net OR O-Net cuts a proposal (docs/faces.md): more faces hidden on the PNG
              # and after JPEG-90, fewer after an upload
              "chain": _FACES.replace(name="faces/chain", objective="faces_chain")},
}.items():
    ATTACKS.register(_name, _presets)
for _alias, _target in {
    "bim": "ifgsm", "i-fgsm": "ifgsm", "mi-fgsm": "mifgsm", "cw": "cw_l2", "perc-al": "perc_al",
    "pgd_linf": "pgd", "di-fgsm": "difgsm", "di2-fgsm": "difgsm", "ti-fgsm": "tifgsm",
    "vmi-fgsm": "vmifgsm", "vmi": "vmifgsm", "square_linf": "square"}.items():
    ALIASES.register(_alias, _target)
del _name, _presets, _alias, _target


def _preset(name: str, preset: str | None) -> tuple[str, str, AttackConfig]:
    """``(attack key, preset name, config)`` of a named attack's preset."""
    key = ALIASES.get(name, name)
    if key not in ATTACKS:
        raise UnknownName(f"unknown attack {name!r}; known: {', '.join(sorted(ATTACKS))} "
                          f"(aliases: {', '.join(sorted(ALIASES))})")
    p = preset or "default"
    if p not in ATTACKS[key]:
        raise UnknownName(f"attack {key!r} has no preset {p!r}; presets: "
                          f"{', '.join(ATTACKS[key])}")
    return key, p, ATTACKS[key][p]


def _setting_problems(key: str, p: str, cfg: AttackConfig, settings: dict) -> list[str]:
    """Appeal weights without an appeal term, and settings that contradict the preset (see
    :func:`resolve_attack`)."""
    hyper, out = dict(cfg.hyper), []
    out += [f"{k} must be a finite number, got {v!r}" for k, v in settings.items()
            if k in hyper and (isinstance(v, bool) or not isinstance(v, numbers.Real))]
    if "appeal_weight" in settings and "appeal_weight" not in hyper:
        out.append(f"preset {p!r} has no appeal term: appeal_weight needs an appeal judge "
                   f"(CLI: --appeal NIMA_JUDGE) or a preset with one")
    if (settings.get("early_stop") is False and "best" not in settings
            and cfg.best == "distortion" and cfg.early_stop):
        out.append(
            "early_stop=False with the preset's best='distortion' keeps the smallest-distortion "
            "success, usually the first one: say best='final' for the final iterate "
            "(torchattacks' behaviour) or best='distortion' to confirm")
    if "const" in settings and "search_steps" not in settings and cfg.search_steps > 1:
        out.append(
            f"const={settings['const']!r} with the preset's binary search "
            f"(search_steps={cfg.search_steps}) is only the starting constant: say "
            f"search_steps=1 for that single constant, or search_steps=N to search from it")
    return out


def _apply(cfg: AttackConfig, settings: dict) -> tuple[AttackConfig | None, list[str]]:
    """``cfg`` with ``settings`` (field values, or values of its ``hyper``), and every problem
    found on the way: unknown names, values of the wrong kind, the config's own
    :func:`~ppjax.attacks.config.problems`."""
    hyper = dict(cfg.hyper)
    bad = unknown_problems({k: v for k, v in settings.items() if k not in hyper})
    fields = {}
    for k, v in settings.items():
        if k in FIELDS and k not in ("name", "hyper"):
            v, problem = coerce(k, v)
            bad += [problem] if problem else []
            if not problem:  # the others are still checked against the config
                fields[k] = v
        elif k == "hyper":
            fields[k] = v
    named = {k: float(v) for k, v in settings.items() if k in hyper
             and isinstance(v, numbers.Real) and not isinstance(v, bool)}
    if named:
        fields["hyper"] = {**hyper, **named, **dict(fields.get("hyper", {}) or {})}
    try:
        cfg = cfg.replace(**fields) if fields else cfg
    except SettingsError as e:
        return None, bad + e.problems
    return (None if bad else cfg), bad


def resolve_attack(name: str | AttackConfig, preset: str | None = None,
                   settings: dict | None = None, appeal_judge=None) -> AttackConfig:
    """The one place where an attack's name, preset and settings become an
    :class:`AttackConfig` (the CLI, the sweep and :func:`ppjax.attack` all call it, once).

    Args:
      name: a key of :data:`ATTACKS` or :data:`ALIASES`, or an ``AttackConfig`` (then
        ``settings`` replace its fields, and ``preset`` must be None).
      preset: the preset of a named attack (default ``"default"``).
      settings: ``AttackConfig`` field values; a name of one of the config's ``hyper`` values
        (e.g. ``appeal_weight``) sets that traced value. A boolean also takes the strings
        true/false in any case.
      appeal_judge: the appeal judge's name (or True) adds the appeal term
        (:func:`appeal_variant`); None or False adds none. The caller loads that judge and
        passes it as ``extra_judges={"appeal": judge}``.

    Every problem is reported at once, in one
    :class:`~ppjax.attacks.config.SettingsError` (both a ``ValueError`` and a ``TypeError``):
    an unknown setting (naming the valid ones, and the ppjax name of another library's, e.g.
    torchattacks' ``alpha`` is ``step_size``), a value of the wrong kind (``eps="abc"``), a
    value outside what its field can mean (each field's declared range; a Linf ``eps`` or a
    step size above 1 with the hint ``did you mean 8/255?``), and settings that contradict the
    preset: ``early_stop=False`` while the preset keeps the smallest-distortion success
    (``best="distortion"``) would silently return an early iterate, so it needs ``best`` said
    too (``best="final"`` for the final iterate, as torchattacks returns); ``const`` under a
    C&W binary search (``search_steps > 1``) is only its start, so it needs ``search_steps``
    said. An unknown name raises :class:`ppjax.registry.UnknownName` (a ``KeyError``) naming
    the known ones.
    """
    settings = dict(settings or {})
    if "appeal" in settings:
        raise TypeError("attack: 'appeal' is not a setting: the appeal term comes with an appeal "
                        "judge (resolve_attack(..., appeal_judge=NAME); CLI: --appeal NAME)")
    if isinstance(name, AttackConfig):
        if preset is not None:
            raise ValueError(f"attack: preset={preset!r} applies to a named attack, not to a "
                             f"config")
        key, p, cfg, bad = name.name, None, appeal_variant(name) if appeal_judge else name, []
    else:
        key, p, cfg = _preset(name, preset)
        if appeal_judge:
            cfg = appeal_variant(cfg)
        bad = _setting_problems(key, p, cfg, settings)
    cfg, more = _apply(cfg, settings)
    if bad or more:
        raise SettingsError(f"attack {key!r}: " + "; ".join(bad + more), bad + more)
    return cfg


def get_attack(name: str, preset: str | None = None, *, appeal: bool = False,
               **settings) -> AttackConfig:
    """``resolve_attack(name, preset, settings, appeal_judge=appeal)``: the config of attack
    ``name`` (preset ``"default"`` if None) with ``settings``; ``appeal=True`` adds the appeal
    term."""
    return resolve_attack(name, preset, settings, appeal_judge=appeal or None)
