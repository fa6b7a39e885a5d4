"""Attack configuration: one frozen dataclass, hashable, no callables.

Fields fall in two groups, declared once per field (:func:`traced` marks the traced ones;
:data:`TRACED_FIELDS` lists them):

* **static** fields choose the program (which parts are composed, loop lengths, shapes); changing
  one compiles a new program;
* **traced** fields are plain values (eps, step sizes, C&W constant, ACE lambda, JPEG quality
  range, ...). They enter the compiled program as array arguments, so a sweep over them compiles
  once. ``hyper`` carries extra traced values by name (e.g. an appeal weight) for objectives that
  are registered later, without touching this class.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ppjax.attacks.objectives import appeal_resize_rules
from ppjax.attacks.parameterisations import NORMS, PARAMETERISATIONS
from ppjax.attacks.rules import BEST_RULES, DISTORTIONS, EOT_VIEWS, FORMULATIONS
from ppjax.attacks.steps import SCHEDULES, STEP_RULES


def traced(default: float):
    """A traced field: its value enters the compiled program as an f32 array argument (a new
    value never recompiles). Every other field is static: it chooses the program."""
    return dataclasses.field(default=default, metadata={"traced": True})


def _choices() -> dict[str, tuple[str, ...]]:
    """The names each choice field accepts, read from the registries of the parts (so a part
    registered later is accepted too)."""
    return {
        "param": tuple(PARAMETERISATIONS), "step": tuple(STEP_RULES), "norm": NORMS,
        "formulation": tuple(FORMULATIONS), "distortion": tuple(DISTORTIONS),
        "best": tuple(BEST_RULES), "unfooled": ("last", "clean"),
        "appeal_resize": appeal_resize_rules(), "schedule": tuple(SCHEDULES),
        "eot": tuple(EOT_VIEWS), "eot_rounding": ("soft_ste", "ste", "cubic", "soft", "exact"),
    }


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """A complete attack: composition (static) plus hyperparameter values (traced).

    Composition (static):
      objective: key of :data:`ppjax.attacks.objectives.OBJECTIVES` ("ce", "margin", "targeted",
        "least_likely", "topk", "group", "score_below", ...).
      param: parameterisation of the change: "delta" (x = x0 + delta), "tanh" (C&W change of
        variables x = (tanh(w) + 1) / 2), "ace" (per-channel monotone K-piece colour curve).
      step: step rule: "sign", "l2" (per-image L2-normalised gradient), "momentum" (MI-FGSM:
        L1-normalised gradient accumulated with decay ``momentum``, then sign), "adam", "sgd".
      norm: constraint on x - x0: "linf", "l2" or "none" (radius ``eps``).
      formulation: what is differentiated: "attack" (objective loss [+ lam * param regulariser]),
        "penalty" (C&W: distortion + const * objective loss), "alternate" (PerC-AL: objective
        loss while not adversarial, distortion once adversarial, with step sizes ``step_size``
        and ``step_size2`` respectively).
      distortion: what "best" minimises among successes: "linf", "l2", "l2sq", "ciede2000"
        (L2 norm of the CIEDE2000 map), "reg" (the parameterisation's regulariser, ACE).
      best: which iterate is kept per image: "distortion" (smallest distortion among
        successes), "appeal" (highest appeal among successes; needs an objective that reports
        one), "last" (the last success, e.g. after margin steps) or "final" (the final iterate,
        successful or not).
      unfooled: what an image that never succeeds returns: "last" (its final iterate) or
        "clean" (the clean input, as ACE's and PerC-AL's code return it).
      appeal_resize: how the appeal term's judge sees the image: "auto" (as that judge's
        original: :data:`ppjax.attacks.objectives.APPEAL_RESIZE`), "native", "nearest" or
        "bilinear" (to the judge's input size).
      plateau: 0 (off) or P > 0: per-image plateau stop. Every P iterations an image's loss (the
        formulation's per-image loss of the current iterate) is compared with its value P
        iterations before; an image whose loss did not decrease stops. This is ACE's
        ``abort_early`` (every 25 iterations, on the batch's summed loss) made per image.
      steps: updates per round. rounds = restarts (PGD) or search_steps (C&W binary search).
      random_start: start uniformly inside the eps ball ("delta" only).
      early_stop: an image stops once it succeeds, after ``extra_steps`` more updates.
      schedule: "constant" or "cosine" (from step_size toward step_size_min over ``steps``, as
        PerC-AL anneals: ``lo + (hi - lo) (1 + cos(pi t / steps)) / 2``).
      k: pieces of the ACE curve.
      topk: k of the top-k objective.
      eot: "none" or "jpeg": the gradient is taken through ``ppjax.image.jpeg.jpeg`` (rounding
        ``eot_rounding``)
        with a random per-image quality in [eot_quality_lo, eot_quality_hi], averaged over
        ``eot_samples`` draws. "upload": a photo service's upload instead
        (``ppjax.attacks.rules.upload_eot_view``: downscale 0.4-1.0x and that JPEG, either
        order, back at the input's size; set eot_quality_lo=70 for the usual 70-95).
      judge_jpeg: success is judged after the exact-forward differentiable JPEG at quality
        ``judge_quality`` (besides 8-bit rounding).
      eot_rounding: rounding surrogate of the EOT JPEG: "soft_ste" (exact forward, soft-round
        gradient; measured best in benchmarks.jpeg_fidelity's gradient table), "ste" (exact
        forward, cubic gradient), "cubic", "soft" or "exact" (identity gradient).
      subsampling: chroma subsampling of those JPEGs.
      fused_eval: when no EOT transform is on, the forward pass used for the gradient is run on
        the 8-bit rounded iterate (straight-through), so it also decides success: one forward
        pass per step instead of two. Exact where the iterate stays on the 8-bit grid (sign
        steps of whole grey levels from an 8-bit image, no random start); ACE and PerC-AL
        take their gradient at the continuous iterate (``fused_eval=False``), as the originals.

    Transfer boosters (:mod:`ppjax.attacks.boosters`; static switches, traced values; each
    composes with EOT JPEG, the appeal term and ensembles; defaults are torchattacks 3.5.1's):
      di: input diversity (Xie et al., CVPR 2019): the gradient pass's classifier judges see the
        image resized to a random size in [floor(di_resize_rate H), H) and zero-padded back to
        H x W at a random place, with probability ``di_prob``, per image and step (the judging
        pass does not; DI turns ``fused_eval`` off). Defaults 0.9 / 0.5 (torchattacks); the
        paper enlarges 299 -> [299, 330) and pads to 330, which for a judge of one input size is
        the same shrink-into-the-frame with rate 299/330 ~ 0.906.
      ti_kernel: 0 (off) or the side of TI's Gaussian kernel (Dong et al., CVPR 2019): the
        gradient is smoothed depthwise before the step rule; ``ti_nsig`` its extent in standard
        deviations. Defaults 15 / 3 (torchattacks and the paper for normally trained judges).
      vmi_samples: 0 (off) or N, VMI's variance tuning (Wang & He, CVPR 2021): gradients at N
        neighbours uniform in the Linf ball of radius ``vmi_beta * eps`` give the variance term
        added to the next gradient before momentum (use ``step="momentum"``). torchattacks
        defaults N = 5, beta = 1.5; the paper N = 20 (preset ``vmifgsm/paper``).
      sgm_gamma: 1.0 (off) or SGM's decay (Wu et al., ICLR 2020): the gradient through every
        residual branch of a ResNet-family judge scaled by gamma (paper: 0.2 for ResNets); the
        forward pass is unchanged. Static (a new gamma compiles a new program); other judges
        are refused.
      step="square": the Square attack (Andriushchenko et al., ECCV 2020), Linf, score-based:
        no gradient; each iteration queries one random square update per image and keeps it if
        the loss improves (``steps`` = proposals; queries = 1 + proposals, reported as
        ``extras["queries"]``); ``square_p_init`` starts the square-size schedule (0.8 as
        torchattacks and AutoAttack; the paper used 0.05 for its ImageNet Linf runs).
    """

    name: str = "custom"
    objective: str = "ce"
    param: str = "delta"
    step: str = "sign"
    norm: str = "linf"
    formulation: str = "attack"
    distortion: str = "linf"
    best: str = "distortion"
    steps: int = 10
    restarts: int = 1
    search_steps: int = 1
    random_start: bool = False
    early_stop: bool = True
    extra_steps: int = 0
    schedule: str = "constant"
    unfooled: str = "last"
    appeal_resize: str = "auto"
    plateau: int = 0
    k: int = 64
    topk: int = 5
    eot: str = "none"
    eot_samples: int = 1
    judge_jpeg: bool = False
    eot_rounding: str = "soft_ste"
    subsampling: str = "420"
    fused_eval: bool = True
    # traced values
    eps: float = traced(8 / 255)
    step_size: float = traced(2 / 255)
    step_size_min: float = traced(0.0)
    step_size2: float = traced(0.0)
    step_size2_min: float = traced(0.0)
    momentum: float = traced(1.0)
    kappa: float = traced(0.0)
    const: float = traced(1.0)
    lam: float = traced(0.0)
    theta_min: float = traced(0.0)
    theta_max: float = traced(1e9)
    threshold: float = traced(50.0)
    margin: float = traced(0.0)
    eot_quality_lo: float = traced(80.0)
    eot_quality_hi: float = traced(95.0)
    judge_quality: float = traced(90.0)
    adam_b1: float = traced(0.9)
    adam_b2: float = traced(0.999)
    # boosters (see above): static switches ...
    di: bool = False
    ti_kernel: int = 0
    vmi_samples: int = 0
    sgm_gamma: float = 1.0
    # ... and their traced values
    di_prob: float = traced(0.5)
    di_resize_rate: float = traced(0.9)
    ti_nsig: float = traced(3.0)
    vmi_beta: float = traced(1.5)
    square_p_init: float = traced(0.8)
    hyper: tuple[tuple[str, float], ...] = ()

    def __post_init__(self):
        for field, choices in _choices().items():
            if getattr(self, field) not in choices:
                raise ValueError(f"attack {self.name!r}: {field}={getattr(self, field)!r}; "
                                 f"choose one of {', '.join(choices)}")
        for field in ("steps", "restarts", "search_steps", "k", "eot_samples"):
            if int(getattr(self, field)) < 1:
                raise ValueError(f"attack {self.name!r}: {field} must be >= 1")
        if self.plateau < 0:
            raise ValueError(f"attack {self.name!r}: plateau must be >= 0 (0 = off)")
        if self.extra_steps < 0:
            raise ValueError(f"attack {self.name!r}: extra_steps must be >= 0")
        if self.restarts > 1 and self.search_steps > 1:
            raise ValueError(f"attack {self.name!r}: restarts and search_steps cannot both be > 1")
        if self.random_start and self.param != "delta":
            raise ValueError(f"attack {self.name!r}: random_start needs param='delta'")
        if self.distortion == "reg" and self.param != "ace":
            raise ValueError(f"attack {self.name!r}: distortion='reg' needs param='ace'")
        if self.param == "tanh" and self.norm != "none":
            raise ValueError(f"attack {self.name!r}: param='tanh' is unconstrained; use norm='none'")
        self._check_boosters()

    def _check_boosters(self):
        who = f"attack {self.name!r}"
        if self.ti_kernel < 0 or self.vmi_samples < 0:
            raise ValueError(f"{who}: ti_kernel and vmi_samples must be >= 0 (0 = off)")
        if self.ti_kernel > 0 and self.param not in ("delta", "tanh"):
            raise ValueError(f"{who}: TI (ti_kernel) smooths image-shaped gradients; it needs "
                             f"param='delta' or 'tanh', not {self.param!r}")
        if not self.sgm_gamma > 0.0:
            raise ValueError(f"{who}: sgm_gamma must be > 0 (1 = off; the paper uses 0.2)")
        if self.step == "square":
            bad = [f for f, off in (("di", False), ("ti_kernel", 0), ("vmi_samples", 0),
                                    ("sgm_gamma", 1.0), ("eot", "none"), ("param", "delta"),
                                    ("norm", "linf"), ("formulation", "attack"),
                                    ("random_start", False), ("restarts", 1),
                                    ("search_steps", 1)) if getattr(self, f) != off]
            if bad:
                raise ValueError(f"{who}: step='square' is gradient-free, Linf, additive, one "
                                 f"round; these settings do not apply: {', '.join(bad)}")

    @property
    def rounds(self) -> int:
        return max(self.restarts, self.search_steps)

    def static(self) -> AttackConfig:
        """This config with every traced value blanked (names of ``hyper`` kept): the part that
        keys compilation."""
        blank = {f: 0.0 for f in TRACED_FIELDS}
        return dataclasses.replace(self, name="", hyper=tuple((k, 0.0) for k, _ in self.hyper),
                                   **blank)

    def hyperparameters(self) -> dict[str, Any]:
        """The traced values, as a dict of Python floats (the caller makes them arrays)."""
        hp = {f: float(getattr(self, f)) for f in TRACED_FIELDS}
        hp.update({k: float(v) for k, v in self.hyper})
        return hp

    def replace(self, **overrides) -> AttackConfig:
        """``dataclasses.replace`` with a readable error for unknown names."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"attack {self.name!r}: unknown setting(s) {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(known))}")
        if "hyper" in overrides and isinstance(overrides["hyper"], dict):
            overrides["hyper"] = tuple(sorted(overrides["hyper"].items()))
        return dataclasses.replace(self, **overrides)


#: The fields whose values are passed to the compiled program as traced f32 scalars.
TRACED_FIELDS = tuple(f.name for f in dataclasses.fields(AttackConfig) if f.metadata.get("traced"))
