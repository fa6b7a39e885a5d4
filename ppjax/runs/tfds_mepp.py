"""A TFDS builder for the MediaEval Pixel Privacy (MEPP) image sets, from a manual directory.

The images are Places365 validation images, which users download themselves, so the builder only
reads a ``manual_dir``::

    <manual_dir>/MEPP18val.csv         # "file","label" rows
    <manual_dir>/MEPP18test.csv        # names only
    <manual_dir>/MEPP19test.csv        # names only
    <manual_dir>/places365_val.txt     # labels for the name-only lists
    <manual_dir>/val_256/ (or images/, or manual_dir itself)   # the listed images

Works without TensorFlow (PNG encoding is done with Pillow, output is ``array_record``)::

    import tensorflow_datasets as tfds
from etils import epath
    from ppjax.runs.tfds_mepp import Mepp
    b = Mepp(config="mepp19test", data_dir=d)
    b.download_and_prepare(file_format="array_record",
                           download_config=tfds.download.DownloadConfig(manual_dir=m))
    ds = b.as_data_source(split="test")            # or tfds.data_source("mepp/mepp19test", ...)
    ds[0]  # {"image": uint8 [256, 256, 3], "label": int64, "file_name": bytes}

``tfds.load``, ``as_dataset`` and ``as_numpy`` need TensorFlow; do not use them here.
Images go through :mod:`ppjax.image.io` (8-bit RGB, 256x256 by the 2019 rule); an undecodable or
missing image is an error naming the file, because a dataset must not silently lose rows.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import tensorflow_datasets as tfds
from etils import epath

from ppjax.image import io as imageio
from ppjax.runs import data

_LISTS = {"mepp18val": "MEPP18val.csv", "mepp18test": "MEPP18test.csv",
          "mepp19test": "MEPP19test.csv"}
LABELS_FILE = "places365_val.txt"


@dataclasses.dataclass
class MeppConfig(tfds.core.BuilderConfig):
    list_file: str = ""
    split: str = "test"


class Mepp(tfds.core.GeneratorBasedBuilder):
    """MEPP sets (Pixel Privacy 2018/2019): Places365 val images, 256x256, with Places365 labels."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version: MEPP18val, MEPP18test, MEPP19test."}
    BUILDER_CONFIGS = [
        MeppConfig(name="mepp18val", list_file="MEPP18val.csv", split="validation",
                   description="MEPP18 development set, 3000 images of 60 sensitive classes."),
        MeppConfig(name="mepp18test", list_file="MEPP18test.csv", split="test",
                   description="MEPP18 test set, 3000 images."),
        MeppConfig(name="mepp19test", list_file="MEPP19test.csv", split="test",
                   description="MEPP19 test set (Pixel Privacy 2019), 600 images."),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put the MEPP list files (MEPP18val.csv, MEPP18test.csv, MEPP19test.csv), Places365's "
        "places365_val.txt and the Places365 val_256 images (folder val_256/) in manual_dir."
    )

    # A builder outside TFDS's tree: give its code path directly (TFDS would otherwise probe the
    # module with importlib_resources, which is not a dependency) so no checksums file is sought.
    code_path = epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        # Built explicitly: dataset_info_from_configs() looks for metadata files beside the
        # builder's module, which a builder outside TFDS's own tree does not have.
        return tfds.core.DatasetInfo(
            builder=self,
            description="MediaEval Pixel Privacy image sets (Places365 validation images).",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(256, 256, 3), encoding_format="png"),
                "label": tfds.features.ClassLabel(num_classes=365),
                "file_name": tfds.features.Text(),
            }),
            supervised_keys=("image", "label"),
            homepage="https://multimediaeval.github.io/",
            citation="",
        )

    def _image_dir(self, manual: Path) -> Path:
        for sub in ("val_256", "images"):
            if (manual / sub).is_dir():
                return manual / sub
        return manual

    def _split_generators(self, dl_manager):
        manual = Path(dl_manager.manual_dir)
        cfg = self.builder_config
        lst = manual / cfg.list_file
        if not lst.is_file():
            raise FileNotFoundError(f"{lst} not found. {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        labels = manual / LABELS_FILE
        items = data.mepp_items(self._image_dir(manual), lst,
                                labels if labels.is_file() else None)
        return {cfg.split: self._generate_examples(items)}

    def _generate_examples(self, items):
        for it in items:
            if it.label is None:
                raise ValueError(f"{it.name}: no label (add {LABELS_FILE} to manual_dir)")
            img, _ = imageio.load_rgb(it.path)
            img, _ = imageio.to_task_size(img, 2019)
            yield it.name, {"image": imageio.encode_png(img), "label": it.label,
                            "file_name": it.name}
