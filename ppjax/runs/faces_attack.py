"""The task ``faces``'s attack, registered as ``faces`` in :data:`ppjax.attacks.ATTACKS`
(imported by :meth:`ppjax.runs.data.TaskSpec.import_parts` before a faces run resolves it).

Presets (the numbers behind the choices: ``benchmarks/RESULTS.md``, section ``faces``):

* ``default``: the one that survives an upload. The face-hiding objective (every P-Net window
  at every pyramid scale below the stage threshold with a margin; the clean proposals below the
  R-Net and O-Net thresholds) under EOT over the ``upload`` view (downscale to 0.4-1.0x of the
  long side and JPEG 70-95 with 4:2:0 chroma, either order), MI-FGSM steps in an 8/255 Linf
  ball, every step taken (no early stop: success on the PNG alone is not survival), the final
  iterate kept.
* ``plain``: the same without EOT (hides the faces of the PNG; weaker after an upload).
"""

from __future__ import annotations

from ppjax.attacks import ATTACKS, AttackConfig

# objective "faces" (ppjax.faces.objective) and the EOT view "upload" (ppjax.attacks.rules) are
# registered when ppjax.attacks is imported
DEFAULT = AttackConfig(
    name="faces", objective="faces", step="momentum", momentum=1.0, norm="linf", eps=8 / 255,
    step_size=1 / 255, steps=60, kappa=2.0, early_stop=False, best="final", eot="upload",
    eot_quality_lo=70.0, eot_quality_hi=95.0, subsampling="420", eot_samples=1,
    distortion="linf")
PLAIN = DEFAULT.replace(name="faces/plain", eot="none", steps=40)

if "faces" not in ATTACKS:
    ATTACKS.register("faces", {"default": DEFAULT, "plain": PLAIN})
