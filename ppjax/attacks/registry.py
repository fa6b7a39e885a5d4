"""Named attacks and their presets (for the CLI and ``ppjax.attack``): plain data, no callables.

``ATTACKS[name][preset]`` is an :class:`AttackConfig`; every attack has a ``"default"`` preset.
Step sizes are absolute (pixel units in [0, 1], or parameter units for tanh/ACE); overriding
``eps`` alone does not rescale them (FGSM takes a step of 1, which the projection clips to eps).
"""

from __future__ import annotations

from ppjax.attacks.config import AttackConfig

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
_ACE = AttackConfig(name="ace", objective="margin", param="ace", norm="none", step="adam",
                    formulation="attack", distortion="reg", early_stop=False, k=64, lam=5.0,
                    step_size=0.01, steps=500)
_PERC_AL = AttackConfig(name="perc_al", objective="ce", param="delta", norm="none", step="l2",
                        formulation="alternate", distortion="ciede2000", early_stop=False,
                        schedule="cosine", step_size=1.0, step_size_min=0.01, step_size2=0.5,
                        step_size2_min=0.05, round_every_step=True, steps=1000, eps=1.0)

ATTACKS: dict[str, dict[str, AttackConfig]] = {
    "fgsm": {"default": _FGSM},
    "ifgsm": {"default": _IFGSM},
    "pgd": {"default": _PGD,
            "madry": _PGD.replace(steps=40, step_size=0.01, early_stop=False),
            "restarts": _PGD.replace(steps=20, restarts=5)},
    "pgd_l2": {"default": _PGD_L2},
    "mifgsm": {"default": _MIFGSM},
    "cw_l2": {"default": _CW,
              "paper": _CW.replace(steps=10000, search_steps=9, const=1e-3)},
    "ace": {"default": _ACE, "bmvc2020": _ACE},
    "perc_al": {"default": _PERC_AL, "cvpr2020": _PERC_AL},
    # Quality camouflage (2020): I-FGSM on a score judge, robust to the JPEG-90 of the
    # evaluation (EOT over JPEG qualities 80..95, success judged after JPEG-90).
    "ifgsm_score": {"default": _IFGSM.replace(
        name="ifgsm_score", objective="score_below", threshold=50.0, margin=5.0, steps=20,
        step_size=2 / 255, eot="jpeg", judge_jpeg=True)},
}
ALIASES = {"bim": "ifgsm", "i-fgsm": "ifgsm", "mi-fgsm": "mifgsm", "cw": "cw_l2",
           "perc-al": "perc_al", "pgd_linf": "pgd"}


def get_attack(name: str, preset: str | None = None, **overrides) -> AttackConfig:
    """The config of attack ``name`` (preset ``"default"`` if None), with ``overrides``."""
    key = ALIASES.get(name, name)
    if key not in ATTACKS:
        raise KeyError(f"unknown attack {name!r}; known: {', '.join(sorted(ATTACKS))} "
                       f"(aliases: {', '.join(sorted(ALIASES))})")
    presets = ATTACKS[key]
    p = preset or "default"
    if p not in presets:
        raise KeyError(f"attack {key!r} has no preset {p!r}; presets: {', '.join(presets)}")
    cfg = presets[p]
    return cfg.replace(**overrides) if overrides else cfg
