"""The faces task: hiding faces from a real, trained face detector (MTCNN) and checking the result
with an independent one (OpenCV's Haar cascade) on a face set built from photos that installed
packages ship.

* :func:`detect` / :class:`Faces`: the full MTCNN cascade as ``facenet_pytorch.MTCNN(
  keep_all=True).detect`` runs it (:mod:`ppjax.faces.cascade`);
* objective ``"faces"`` (:mod:`ppjax.faces.objective`): registered in
  :data:`ppjax.attacks.objectives.OBJECTIVES` (imported by :mod:`ppjax.attacks`).

The judge is ``ppjax.load_judge("mtcnn")`` (:mod:`ppjax.models.mtcnn`, converted by
:mod:`ppjax.convert.mtcnn`). See ``docs/faces-judge.md``.
"""

from ppjax.faces.cascade import THRESHOLDS, Faces, count_faces, detect

__all__ = ["THRESHOLDS", "Faces", "count_faces", "detect"]
