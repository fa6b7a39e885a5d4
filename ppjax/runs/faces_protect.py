"""``ppjax protect --task faces``: every photo at its own size, through size buckets.

Called by :func:`ppjax.runs.protect.run_protect` in place of its single-shape stream; the
run's layout, validation, lock, manifest, resume and zip are that module's. Per photo:

1. decoded (worker pool), downscaled when its long side is over 2048 px (a manifest note);
2. its faces found by the MTCNN cascade at the default thresholds
   (:func:`ppjax.runs.faces_detect.detect`); a photo with **no face** is written unchanged and
   recorded with ``"no_face": true`` and ``"protected": false`` (there is nothing to hide);
3. otherwise edge-padded to its bucket (:mod:`ppjax.runs.faces`), attacked in that bucket's
   stream, cropped back and written.
"""

from __future__ import annotations

import collections
import contextlib

import numpy as np

from ppjax.image import io as imageio
from ppjax.runs import faces, faces_detect, pipeline
from ppjax.runs.layout import STANDIN_TEXT, ManifestEntry, output_name


def stream_faces(cfg, acfg, judge, extra, todo, img_dir, prog, slots, max_pixels, workers,
                 seed_of) -> None:
    """Protect ``todo`` (:class:`ppjax.runs.data.Item`) into ``img_dir``; each finished file is
    recorded through ``prog`` (``ok(entry)`` / ``error(name, err)``) once its PNG is in place
    (:class:`ppjax.runs.pipeline.RecordedWrites`: a full disk raises its ``OSError`` after the
    writes in flight are recorded). ``seed_of(name)`` is the image's attack seed."""
    from ppjax.runs import data

    spec = data.get_task(cfg.task)
    ordered, counts = faces.by_bucket(todo, spec.max_side)
    decoded = pipeline.prefetch(ordered, cfg.task, cfg.resize, max_pixels, workers=workers)
    png_text = STANDIN_TEXT if cfg.standin else None
    writes = pipeline.RecordedWrites(prog)  # a full disk stops the run, as in the main path
    drain = writes.drain

    def write(entry, img):
        writes.add(writer.submit(img_dir / entry.output, img, png_text, cfg.png_level), entry)
        drain(block=False)

    with pipeline.Writer(workers=workers) as writer, contextlib.closing(decoded):
        try:
            with_faces = _sort_out(decoded, judge, cfg, prog, write, seed_of)
            for i, (hw, group) in enumerate(faces.runs_of_bucket(with_faces, lambda b: b[1])):
                if i:
                    faces.release_programs()
                _attack_bucket(hw, group, acfg, judge, extra, cfg,
                               faces.bucket_slots(hw, slots, counts.get(hw)), seed_of, write,
                               lambda: drain(block=False))
        finally:
            drain(block=True)
    writes.raise_if_full()


def _sort_out(decoded, judge, cfg, prog, write, seed_of):
    """Decoded photos with at least one face, as ``(loaded, bucket, boxes)``; decode errors are
    recorded and photos with no face written unchanged (:func:`face_entry`)."""
    for b in decoded:
        if b.error is not None:
            prog.error(b.item.name, b.error, notes=b.notes)
            continue
        boxes = faces_detect.detect(judge, b.image)[0]
        if len(boxes) == 0:
            write(face_entry(cfg, b, None, 0, seed_of(b.item.name)), b.image)
            continue
        yield b, faces.bucket_hw(*b.image.shape[:2]), boxes


def _attack_bucket(hw, group, acfg, judge, extra, cfg, slots, seed_of, write, on_chunk) -> None:
    """One bucket's stream in ``slots`` slots: photos padded to ``hw``, attacked, cropped back
    and written."""
    import jax.numpy as jnp

    import ppjax
    from ppjax.attacks import StreamItem
    from ppjax.faces.objective import face_regions

    held = {}

    def items():
        for b, _, boxes in group:
            held[b.item.name] = (b, len(boxes))
            yield StreamItem(b.item.name, faces.pad_to(b.image, hw), seed_of(b.item.name),
                             inputs={"faces": face_regions(boxes)})

    for name, res in ppjax.attacks.stream(
            acfg, judge, items(), slots=slots, extra_judges=extra,
            dtype=jnp.bfloat16 if cfg.dtype == "bfloat16" else None, on_chunk=on_chunk):
        b, n_faces = held.pop(name)
        img = faces.crop_to(imageio.to_uint8(res.images), b.image.shape[:2])
        write(face_entry(cfg, b, res, n_faces, seed_of(name), hw), img)


def face_entry(cfg, b, res, n_faces: int, seed: int, bucket=None) -> ManifestEntry:
    """The manifest line of one photo (its ``sha256`` is set once written): ``res`` None for a
    photo with no face (not attacked)."""
    name = b.item.name
    h, w = b.image.shape[:2]
    common = dict(seed=int(seed), size=(w, h), faces_clean=int(n_faces), no_face=n_faces == 0,
                  protected=n_faces > 0)
    if res is None:
        return ManifestEntry(name, "ok", output_name(cfg.run_code, name),
                             (*b.notes, "no face found: written unchanged, not protected"),
                             success=False, steps=0, linf_levels=0.0, **common)
    appeal = {k: round(float(res.extras[k]), 6) for k in ("appeal_before", "appeal_after")
              if k in res.extras}
    return ManifestEntry(name, "ok", output_name(cfg.run_code, name), tuple(b.notes),
                         bucket=(int(bucket[1]), int(bucket[0])), success=bool(res.success),
                         steps=int(res.steps), linf_levels=round(float(res.linf) * 255.0, 3),
                         **appeal, **common)


def amend_summary(summary: dict, okd: dict) -> dict:
    """``summary`` of a faces run: photos with no face are done but not protected."""
    no_face = sorted(n for n, e in okd.items() if e.get("no_face"))
    downscaled = sorted(n for n, e in okd.items()
                        if any("downscaled" in s for s in e.get("notes") or ()))
    summary.update(protected=summary["done"] - len(no_face), no_face=len(no_face),
                   no_face_images=no_face, downscaled=downscaled,
                   faces_clean=int(np.sum([e.get("faces_clean", 0) for e in okd.values()])))
    n_prot = summary["protected"]
    summary["attack_success_rate"] = summary["attack_success"] / n_prot if n_prot else None
    return summary


def protect_images(acfg, judge, images, seeds, slots: int = 8, extra=None,
                   canvas=faces.bucket_hw, boxes=None) -> list[dict]:
    """Attack photos of any sizes in memory (the benchmark's and the tests' entry): ``images``
    [H_i, W_i, 3] uint8, ``seeds`` per image, ``boxes`` per image the clean faces the attack
    works around (default: MTCNN's detections of each photo). Grouped by ``canvas(h, w)``
    (default: the task's buckets), padded, streamed, cropped back; returns per image (input
    order) ``{"image": uint8 [H_i, W_i, 3], "success", "steps", "linf"}``."""
    import ppjax
    from ppjax.attacks import StreamItem
    from ppjax.faces.objective import face_regions

    if boxes is None:
        boxes = [faces_detect.detect(judge, img)[0] for img in images]

    def hw_of(i):
        return canvas(*images[i].shape[:2])

    order = sorted(range(len(images)), key=hw_of)
    counts = collections.Counter(hw_of(i) for i in order)
    out: list[dict] = [{} for _ in images]
    for n, (hw, group) in enumerate(faces.runs_of_bucket(iter(order), hw_of)):
        if n:
            faces.release_programs()
        items = (StreamItem(i, faces.pad_to(images[i], hw), int(seeds[i]),
                            inputs={"faces": face_regions(boxes[i])}) for i in group)
        for i, res in ppjax.attacks.stream(acfg, judge, items, slots=faces.bucket_slots(
                hw, slots, counts[hw]), extra_judges=extra):
            out[i] = {"image": faces.crop_to(imageio.to_uint8(res.images), images[i].shape[:2]),
                      "success": bool(res.success), "steps": int(res.steps),
                      "linf": float(res.linf)}
    return out
