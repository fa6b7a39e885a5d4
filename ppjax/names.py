"""Names the command line shows without importing JAX: the judges, the attacks with their
presets, the tasks and the resize rules, so that every ``ppjax COMMAND --help`` stays fast.

These are copies of the registries' keys (:data:`ppjax.judges.JUDGES`,
:data:`ppjax.attacks.ATTACKS`, :data:`ppjax.attacks.presets.ALIASES`,
:data:`ppjax.runs.data.TASKS`, :data:`ppjax.image.io.RESIZE_RULES`); ``tests/test_cli_help.py``
fails when one of them drifts from its registry. Plain data, no imports.
"""

from __future__ import annotations

JUDGE_NAMES = ("alexnet_places365", "densenet161_places365", "koncept512", "mtcnn", "nima_mobilenet",
               "nima_mobilenetv2", "resnet18_places365", "resnet50_places365",
               "wideresnet18_places365")

ATTACK_PRESETS = {
    "fgsm": ("default",), "ifgsm": ("default",),
    "pgd": ("default", "torchattacks", "foolbox", "madry", "restarts", "di", "ti", "sgm"),
    "pgd_l2": ("default",), "mifgsm": ("default", "di", "ti", "vmi", "sgm", "all"),
    "difgsm": ("default", "momentum"), "tifgsm": ("default", "momentum"),
    "vmifgsm": ("default", "paper"), "square": ("default", "paper"),
    "cw_l2": ("default", "paper"), "ace": ("default", "bmvc2020", "journal"),
    "perc_al": ("default", "cvpr2020", "untargeted", "kappa40"), "ifgsm_score": ("default",),
    "camouflage": ("default", "pp2020_baseline", "appeal"),
    "faces": ("default", "plain", "chain"),
}

ATTACK_ALIASES = {"bim": "ifgsm", "cw": "cw_l2", "di-fgsm": "difgsm", "di2-fgsm": "difgsm",
                  "i-fgsm": "ifgsm", "mi-fgsm": "mifgsm", "perc-al": "perc_al", "pgd_linf": "pgd",
                  "square_linf": "square", "ti-fgsm": "tifgsm", "vmi": "vmifgsm",
                  "vmi-fgsm": "vmifgsm"}

TASK_NAMES = (2019, 2020, "faces")

RESIZE_RULES = ("auto", "crop", "squash", "resize", "centre", "reject")
