"""Attack configuration: one frozen pytree, hashable by its static part, no callables.

Every field is declared once, with its default, its help text, its range and (where another
library spells it differently) its aliases: :func:`setting`. Fields fall in two groups:

* **static** fields choose the program (which parts are composed, loop lengths, shapes); they
  are the pytree's metadata, so changing one compiles a new program;
* **traced** fields (``traced=True``: eps, step sizes, C&W constant, ACE lambda, JPEG quality
  range, ...) are the pytree's leaves. The programs take the config itself as an argument, so
  a sweep over traced values compiles once. ``hyper`` carries extra traced values by name (e.g.
  an appeal weight) for objectives registered later, without touching this class; read them
  with :meth:`AttackConfig.hyper_value`.

:func:`problems` is the one validator: it reads the declarations and reports every problem of
a config at once; :func:`coerce` checks (and converts) one user-given value against its field's
kind. The name ``name`` is a label: it is not part of the pytree's structure (configs that
differ only in their names share their programs).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import jax

from ppjax.attacks.appeal import appeal_resize_rules
from ppjax.attacks.parameterisations import NORMS, PARAMETERISATIONS
from ppjax.attacks.probes import PROBES, step_names
from ppjax.attacks.rules import BEST_RULES, DISTORTIONS, EOT_VIEWS, FORMULATIONS
from ppjax.attacks.steps import SCHEDULES
from ppjax.image.jpeg import SUBSAMPLINGS


class SettingsError(TypeError, ValueError):
    """Attack settings refused: every problem at once, one per ``"; "``-separated part. A
    ``ValueError`` (bad values) and a ``TypeError`` (unknown names) at once, so callers catching
    either see it. ``problems``: the lines."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems or [message])


def setting(default, help: str, *, traced: bool = False, lo=None, hi=None, lo_open=False,
            hi_open=False, choices=None, pixel: str | None = None, aliases: tuple = ()):
    """Declare a field of :class:`AttackConfig`.

    help: what it means (shown in errors and listings). traced: its value enters the compiled
    program as an f32 array (a new value never recompiles); every other field is static.
    lo / hi: its range (``lo_open`` / ``hi_open``: the bound itself is excluded). choices: the
    names it accepts (a registry or tuple, or a function returning one, read at validation time
    so that parts registered later are accepted). pixel: the value is in [0, 1] pixel units
    when ``"linf"`` (the config's norm is Linf) or ``"delta"`` (its parameterisation is
    additive): above 1 is refused with the hint ``did you mean v/255?``. aliases: other
    libraries' names for it (torchattacks, Foolbox); refused naming this field.
    """
    meta = dict(help=help, traced=traced, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open,
                choices=choices, pixel=pixel, aliases=tuple(aliases))
    return dataclasses.field(default=default, metadata=meta)


def traced(default: float, help: str = "", **kw):
    """A traced :func:`setting`."""
    return setting(default, help, traced=True, **kw)


_ROUNDINGS = ("soft_ste", "ste", "cubic", "soft", "exact")
_POS, _NONNEG = dict(lo=0.0, lo_open=True), dict(lo=0.0)
_QUALITY, _UNIT = dict(lo=1.0, hi=100.0), dict(lo=0.0, hi=1.0)


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """A complete attack: composition (static fields) plus hyperparameter values (traced
    fields), each field's meaning given where it is declared. Construction validates
    (:func:`problems`, every problem at once, :class:`SettingsError`).

    Transfer boosters (:mod:`ppjax.attacks.boosters`; static switches, traced values; each
    composes with EOT JPEG, the appeal term and ensembles; defaults are torchattacks 3.5.1's):
    DI (Xie et al., CVPR 2019: the paper's 299 -> [299, 330) padded to 330 is, for a judge of
    one input size, the same shrink-into-the-frame with rate 299/330 ~ 0.906), TI (Dong et al.,
    CVPR 2019), VMI (Wang & He, CVPR 2021; the paper uses N = 20: preset ``vmifgsm/paper``),
    SGM (Wu et al., ICLR 2020: 0.2 for ResNets). ``step="square"`` is the Square attack
    (Andriushchenko et al., ECCV 2020), Linf and score-based: no gradient; each iteration
    queries one random square update per image and keeps it if the loss improves (``steps`` =
    proposals; queries = 1 + proposals, reported as ``extras["queries"]``).
    """

    name: str = setting("custom", "a label (not part of the program)")
    objective: str = setting("ce", "key of ppjax.attacks.objectives.OBJECTIVES (ce, margin, "
                             "targeted, least_likely, topk, group, score_below, ...; "
                             "'<name>+appeal' adds an appeal term)")
    param: str = setting("delta", "parameterisation of the change: delta (x = x0 + delta), "
                         "tanh (C&W: x = (tanh(w) + 1) / 2), ace (per-channel monotone K-piece "
                         "colour curve)", choices=PARAMETERISATIONS)
    step: str = setting("sign", "step rule: sign, l2 (per-image L2-normalised gradient), "
                        "momentum (MI-FGSM), adam, sgd (step rules of the gradient probe), or "
                        "a score-based probe: square (the Square attack)", choices=step_names)
    norm: str = setting("linf", "constraint on x - x0 (radius eps): linf, l2 or none",
                        choices=NORMS)
    formulation: str = setting(
        "attack", "what is differentiated: attack (objective loss [+ lam * regulariser]), "
        "penalty (C&W: distortion + const * loss), alternate (PerC-AL: loss while not "
        "adversarial, distortion once adversarial, steps step_size / step_size2)",
        choices=FORMULATIONS)
    distortion: str = setting("linf", "what best='distortion' minimises among successes: "
                              "linf, l2, l2sq, ciede2000, reg (the ACE regulariser)",
                              choices=DISTORTIONS)
    best: str = setting("distortion", "which iterate is kept per image: distortion (smallest "
                        "among successes), appeal (highest among successes), last (the last "
                        "success), final (the final iterate)", choices=BEST_RULES)
    steps: int = setting(10, "updates per round (Square: proposals)", lo=1,
                         aliases=("n_queries", "max_iter", "nb_iter", "iterations"))
    restarts: int = setting(1, "PGD restarts (rounds)", lo=1, aliases=("n_restarts",))
    search_steps: int = setting(1, "C&W binary search steps of the constant (rounds)", lo=1,
                                aliases=("binary_search_steps",))
    random_start: bool = setting(False, "start uniformly inside the eps ball (param='delta')",
                                 aliases=("rand_init",))
    early_stop: bool = setting(True, "an image stops once it succeeds, after extra_steps more "
                               "updates")
    extra_steps: int = setting(0, "updates after the first success (early_stop)", lo=0)
    schedule: str = setting("constant", "step-size schedule: constant, or cosine from "
                            "step_size toward step_size_min over steps (PerC-AL)",
                            choices=SCHEDULES)
    unfooled: str = setting("last", "what an image that never succeeds returns: last (its "
                            "final iterate) or clean (the clean input, as ACE and PerC-AL)",
                            choices=("last", "clean"))
    appeal_resize: str = setting("auto", "how the appeal judge sees the image: auto (as that "
                                 "judge's original), native, nearest or bilinear",
                                 choices=appeal_resize_rules)
    plateau: int = setting(0, "0 (off) or P: every P iterations an image whose loss did not "
                           "decrease stops (ACE's abort_early, per image)", lo=0)
    k: int = setting(64, "pieces of the ACE curve", lo=1)
    topk: int = setting(5, "k of the top-k objective", lo=1)
    eot: str = setting("none", "none or jpeg: the gradient is taken through the differentiable "
                       "JPEG at a random quality in [eot_quality_lo, eot_quality_hi], averaged "
                       "over eot_samples draws; upload: a photo service's upload instead "
                       "(ppjax.attacks.rules.upload_eot_view: downscale 0.4-1.0x and that JPEG, "
                       "either order, back at the input's size; set eot_quality_lo=70 for the "
                       "usual 70-95)", choices=EOT_VIEWS)
    eot_samples: int = setting(1, "EOT draws per step", lo=1)
    eot_clean: bool = setting(False, "with EOT: the iterate itself (its 8-bit image, as saved) "
                              "is one more view the gradient sees, beside the eot_samples "
                              "draws (the same pass judges it)")
    judge_jpeg: bool = setting(False, "success is judged after the exact-forward JPEG at "
                               "judge_quality (besides 8-bit rounding)")
    eot_rounding: str = setting("soft_ste", "rounding surrogate of the EOT JPEG: soft_ste "
                                "(exact forward, soft-round gradient), ste, cubic, soft, exact",
                                choices=_ROUNDINGS)
    subsampling: str = setting("420", "chroma subsampling of those JPEGs",
                               choices=SUBSAMPLINGS)
    fused_eval: bool = setting(True, "without EOT, the gradient's forward pass is run on the "
                               "8-bit rounded iterate (straight-through) and also decides "
                               "success: one forward pass per step instead of two")
    # traced values
    eps: float = traced(8 / 255, "the perturbation budget (radius of the norm ball)",
                        **_POS, pixel="linf", aliases=("epsilon", "epsilons", "max_epsilon"))
    step_size: float = traced(2 / 255, "the step size (pixel units for param='delta', else "
                              "parameter units)", **_POS, pixel="delta",
                              aliases=("alpha", "lr", "learning_rate", "abs_stepsize",
                                       "stepsize", "eps_iter", "eps_step"))
    step_size_min: float = traced(0.0, "the smallest step of a schedule", **_NONNEG,
                                  pixel="delta")
    step_size2: float = traced(0.0, "the second step size (formulation='alternate')",
                               **_NONNEG, pixel="delta")
    step_size2_min: float = traced(0.0, "the smallest second step size", **_NONNEG,
                                   pixel="delta")
    momentum: float = traced(1.0, "the momentum decay (step='momentum')", **_NONNEG,
                             aliases=("decay", "decay_factor"))
    kappa: float = traced(0.0, "the confidence (C&W, PerC-AL)", **_NONNEG,
                          aliases=("confidence",))
    const: float = traced(1.0, "the C&W constant (start of its binary search)", **_POS,
                          aliases=("c", "initial_const"))
    lam: float = traced(0.0, "a regulariser weight (ACE)", **_NONNEG)
    theta_min: float = traced(0.0, "smallest slope of the ACE curve")
    theta_max: float = traced(1e9, "largest slope of the ACE curve")
    threshold: float = traced(50.0, "score threshold of the score objectives (success below)")
    margin: float = traced(0.0, "score margin below the threshold", **_NONNEG)
    eot_quality_lo: float = traced(80.0, "lowest EOT JPEG quality", **_QUALITY)
    eot_quality_hi: float = traced(95.0, "highest EOT JPEG quality", **_QUALITY)
    judge_quality: float = traced(90.0, "JPEG quality of the judging JPEG", **_QUALITY)
    adam_b1: float = traced(0.9, "an Adam decay (below 1)", **_UNIT, hi_open=True)
    adam_b2: float = traced(0.999, "an Adam decay (below 1)", **_UNIT, hi_open=True)
    # boosters (see above): static switches ...
    di: bool = setting(False, "DI: the gradient pass's classifier judges see the image resized "
                       "to a random size in [floor(di_resize_rate H), H), zero-padded back, "
                       "with probability di_prob")
    ti_kernel: int = setting(0, "TI: 0 (off) or the side of the Gaussian kernel smoothing the "
                             "gradient", lo=0, aliases=("len_kernel",))
    vmi_samples: int = setting(0, "VMI: 0 (off) or N neighbours giving the variance term",
                               lo=0, aliases=("N",))
    sgm_gamma: float = setting(1.0, "SGM: 1 (off) or the decay of the gradient through every "
                               "residual branch (ResNet-family judges; static)", **_POS)
    # ... and their traced values
    di_prob: float = traced(0.5, "DI's probability", **_UNIT, aliases=("diversity_prob",))
    di_resize_rate: float = traced(0.9, "DI's smallest size as a fraction of the side (< 1)",
                                   **_UNIT, lo_open=True, hi_open=True,
                                   aliases=("resize_rate",))
    ti_nsig: float = traced(3.0, "TI's kernel extent in standard deviations", **_POS,
                            aliases=("nsig",))
    vmi_beta: float = traced(1.5, "VMI's neighbourhood radius in units of eps", **_NONNEG,
                             aliases=("beta",))
    square_p_init: float = traced(0.8, "Square's initial square-area fraction", **_UNIT,
                                  lo_open=True, aliases=("p_init",))
    hyper: tuple[tuple[str, float], ...] = setting(
        (), "extra traced values by name (e.g. appeal_weight), for registered objectives")

    def __post_init__(self):
        bad = problems(self)
        if bad:
            raise SettingsError(f"attack {self.name!r}: " + "; ".join(bad), bad)

    @property
    def rounds(self) -> int:
        return max(self.restarts, self.search_steps)

    def hyper_value(self, name: str, default=None):
        """The extra traced value ``name`` of ``hyper`` (``default`` if it has none)."""
        return dict(self.hyper).get(name, default)

    def replace(self, **overrides) -> AttackConfig:
        """``dataclasses.replace`` with a readable error for unknown names (see
        :func:`unknown_problems`)."""
        bad = unknown_problems(overrides)
        if bad:
            raise SettingsError(f"attack {self.name!r}: " + "; ".join(bad), bad)
        if "hyper" in overrides and isinstance(overrides["hyper"], dict):
            overrides["hyper"] = tuple(sorted(overrides["hyper"].items()))
        return dataclasses.replace(self, **overrides)


FIELDS = {f.name: f for f in dataclasses.fields(AttackConfig)}
#: The fields whose values are the pytree's leaves (traced f32 scalars in the programs).
TRACED_FIELDS = tuple(k for k, f in FIELDS.items() if f.metadata["traced"])
_STATIC = tuple(k for k, f in FIELDS.items() if not f.metadata["traced"]
                and k not in ("name", "hyper"))
#: Other libraries' names: ``{alias: field}``, read from the fields' declarations.
SETTING_ALIASES = {a: k for k, f in FIELDS.items() for a in f.metadata["aliases"]}


def _flatten(cfg: AttackConfig):
    leaves = tuple(getattr(cfg, k) for k in TRACED_FIELDS) + tuple(v for _, v in cfg.hyper)
    return leaves, (tuple(getattr(cfg, k) for k in _STATIC), tuple(k for k, _ in cfg.hyper))


def _unflatten(aux, leaves) -> AttackConfig:
    # no validation: the leaves may be tracers or arrays (inside the programs)
    static, names = aux
    cfg = object.__new__(AttackConfig)
    values = {"name": "", **dict(zip(_STATIC, static, strict=True)),
              **dict(zip(TRACED_FIELDS, leaves[:len(TRACED_FIELDS)], strict=True)),
              "hyper": tuple(zip(names, leaves[len(TRACED_FIELDS):], strict=True))}
    for k, v in values.items():
        object.__setattr__(cfg, k, v)
    return cfg


jax.tree_util.register_pytree_node(AttackConfig, _flatten, _unflatten)


# ----------------------------------------------------------------------------- validation


def _kind(default) -> tuple[type, str]:
    if isinstance(default, bool):
        return bool, "true or false"
    if isinstance(default, int):
        return int, "an integer"
    if isinstance(default, float):
        return float, "a finite number"
    return str, "a name"


def coerce(name: str, value) -> tuple[Any, str | None]:
    """``(value, problem)``: ``value`` checked against the kind of field ``name`` (from its
    default); a boolean field also takes the strings true/false in any case (``--set
    early_stop=False``). ``problem`` is None when the value is of the right kind."""
    kind, what = _kind(FIELDS[name].default)
    if kind is bool and isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true", None
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif kind is float:
        ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
              and math.isfinite(float(value)))
    else:
        ok = isinstance(value, str)
    return value, None if ok else f"{name} must be {what}, got {value!r}"


def unknown_problems(settings) -> list[str]:
    """One line naming the settings that are no field (with the field meant, for another
    library's name such as torchattacks' ``alpha`` or Foolbox's ``epsilon``)."""
    unknown = sorted(set(settings) - set(FIELDS))
    if not unknown:
        return []
    meant = [f"{SETTING_ALIASES[u]} (ppjax's name for {u})" for u in unknown
             if u in SETTING_ALIASES]
    if len(meant) == len(unknown):  # each is another library's name for a field
        return [f"unknown setting(s) {', '.join(unknown)}; known: {'; '.join(meant)}"]
    lead = f"{'; '.join(meant)}; all settings: " if meant else ""
    return [f"unknown setting(s) {', '.join(unknown)}; known: {lead}{', '.join(sorted(FIELDS))}"]


def _range_problem(name: str, v: float, m: dict, cfg) -> str | None:
    lo, hi = m["lo"], m["hi"]
    low = lo is not None and (v <= lo if m["lo_open"] else v < lo)
    high = hi is not None and (v >= hi if m["hi_open"] else v > hi)
    pixel = {"linf": cfg.norm == "linf", "delta": cfg.param == "delta"}.get(m["pixel"], False)
    if not (low or high) and pixel and v > 1.0:
        hint = f"did you mean {v:g}/255?" if v <= 255 else "pixel values are in [0, 1]"
        return f"{name}={v:g} is out of range: {name} is in [0, 1] units: {hint}"
    if not (low or high):
        return None
    if isinstance(FIELDS[name].default, int) and not isinstance(FIELDS[name].default, float):
        return f"{name} must be >= {lo}" + (" (0 = off)" if lo == 0 else "")
    rng = " and ".join(
        ([f"{'>' if m['lo_open'] else '>='} {lo:g}"] if lo is not None else [])
        + ([f"{'<' if m['hi_open'] else '<='} {hi:g}"] if hi is not None else []))
    return f"{name}={v:g} is out of range: {m['help']} must be {rng}"


def _choices(m: dict):
    c = m["choices"]
    return tuple(c() if callable(c) and not hasattr(c, "__contains__") else c)


def field_problems(cfg: AttackConfig) -> list[str]:
    """Each field against its declaration: kind, choices, range (see :func:`setting`)."""
    out = []
    for name, f in FIELDS.items():
        if name in ("name", "hyper"):
            continue
        v, bad = coerce(name, getattr(cfg, name))
        if bad:
            out.append(bad)
        elif f.metadata["choices"] is not None and v not in _choices(f.metadata):
            out.append(f"{name}={v!r}; choose one of {', '.join(_choices(f.metadata))}")
        elif not isinstance(v, str | bool):
            out.append(_range_problem(name, float(v), f.metadata, cfg))
    for k, v in cfg.hyper:
        if k.endswith("_weight") and float(v) < 0:
            out.append(f"{k}={float(v):g} is out of range: a weight must be >= 0")
    return [p for p in out if p]


def _composition_problems(cfg: AttackConfig) -> list[str]:
    """Settings that do not go together."""
    out = []
    if cfg.eot_quality_lo > cfg.eot_quality_hi:
        out.append(f"eot_quality_lo={cfg.eot_quality_lo:g} is above eot_quality_hi="
                   f"{cfg.eot_quality_hi:g}")
    if cfg.restarts > 1 and cfg.search_steps > 1:
        out.append("restarts and search_steps cannot both be > 1")
    if cfg.random_start and cfg.param != "delta":
        out.append("random_start needs param='delta'")
    if cfg.distortion == "reg" and cfg.param != "ace":
        out.append("distortion='reg' needs param='ace'")
    if cfg.param == "tanh" and cfg.norm != "none":
        out.append("param='tanh' is unconstrained; use norm='none'")
    if cfg.ti_kernel > 0 and cfg.param not in ("delta", "tanh"):
        out.append(f"TI (ti_kernel) smooths image-shaped gradients; it needs param='delta' or "
                   f"'tanh', not {cfg.param!r}")
    if cfg.step in PROBES:  # a score-based probe (Square): no gradient
        bad = [f for f, off in (("di", False), ("ti_kernel", 0), ("vmi_samples", 0),
                                ("sgm_gamma", 1.0), ("eot", "none"), ("param", "delta"),
                                ("norm", "linf"), ("formulation", "attack"),
                                ("random_start", False), ("restarts", 1),
                                ("search_steps", 1)) if getattr(cfg, f) != off]
        if bad:
            out.append(f"step={cfg.step!r} is gradient-free, Linf, additive, one round; these "
                       f"settings do not apply: {', '.join(bad)}")
    return out


def problems(cfg: AttackConfig) -> list[str]:
    """Every problem of ``cfg``, as readable lines (empty when it is sound): each field
    against its declaration, then the combinations (only once every field is sound)."""
    out = field_problems(cfg)
    return out or _composition_problems(cfg)
