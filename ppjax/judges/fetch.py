"""Getting the judges' official checkpoints and the task's label files.

``ppjax fetch`` downloads from the public URLs with a progress bar, then converts. Offline it fails
within seconds, naming the URL and the path where the file can be placed by hand.
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from ppjax import config
from ppjax.judges.spec import get_spec, missing_weights_message

__all__ = ["DATA_FILES", "FetchError", "download", "fetch_data", "fetch_judge",
           "missing_weights_message"]

# Label files and lists, relative to the data directory -> public URL (as linked from the
# task pages of 2018 and 2019).
_PP18 = ("https://raw.githubusercontent.com/multimediaeval/2018-Pixel-Privacy-Task/"
         "82b3352c75c3e3bba736fc837864bbead83138b1/MEPP18labels/")
_PP19 = "https://raw.githubusercontent.com/multimediaeval/2019-Pixel-Privacy-Task/master/"
_PLACES = "https://raw.githubusercontent.com/CSAILVision/places365/master/"
DATA_FILES = {
    "places365/categories_places365.txt": _PLACES + "categories_places365.txt",
    "places365/IO_places365.txt": _PLACES + "IO_places365.txt",
    "pixelprivacy/MEPP18senscats.txt": _PP19 + "MEPP18senscats.txt",
    "pixelprivacy/MEPP18val.csv": _PP18 + "MEPP18val.csv",
    "pixelprivacy/MEPP18test.csv": _PP18 + "MEPP18test.csv",
    "pixelprivacy/MEPP19test.csv": _PP19 + "MEPP19labels/MEPP19test.csv",
    "pixelprivacy/MEPP19test_manual.csv": _PP19 + "MEPP19labels/MEPP19data_man.csv",
}
# Official Places365 validation labels (``Places365_val_00000001.jpg 165``) ship inside the devkit's
# file-list archive; fetch-data extracts that one member.
PLACES365_FILELIST = "http://data.csail.mit.edu/places/places365/filelist_places365-standard.tar"
PLACES365_VAL = "places365/places365_val.txt"

TIMEOUT_S = 10.0


class FetchError(RuntimeError):
    """A download failed; the message says how to get the file by hand."""


def download(url: str, dest: Path, desc: str | None = None, timeout: float = TIMEOUT_S) -> Path:
    """Download ``url`` to ``dest`` atomically, with a progress bar. Fails fast when offline."""
    from tqdm import tqdm

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=desc or dest.name) as bar:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
        tmp.unlink(missing_ok=True)
        reason = getattr(e, "reason", e)
        raise FetchError(
            f"could not download {url} ({reason}).\n"
            f"  If this machine is offline, download it elsewhere and place it at:\n    {dest}"
        ) from None
    os.replace(tmp, dest)
    return dest


def fetch_judge(name: str, weights_dir=None, force: bool = False) -> Path:
    """Download the official checkpoint of judge ``name`` (unless present) and convert it. A
    judge whose weights ship in a package (``spec.bundled``) is copied from the installed package
    by its converter's ``fetch_bundled`` instead (offline; a missing package is a
    :class:`ppjax.errors.SetupError`)."""
    spec = get_spec(name)
    dest = config.downloads_dir(weights_dir) / spec.filename
    if spec.bundled:  # the weights ship inside an installed package: copied, never downloaded
        return spec.converter_module().fetch_bundled(weights_dir, force)
    if force or not dest.exists():
        download(spec.url, dest, desc=spec.filename)
    return spec.converter_module().convert(dest, weights_dir)


def fetch_data(data_dir=None, force: bool = False, source_dir: str | None = None) -> list[Path]:
    """Download the label files and lists into the data directory.

    ``source_dir``: copy from a local mirror (a directory with the same layout) instead.
    """
    root = config.data_dir(data_dir)
    done = []
    for rel, url in DATA_FILES.items():
        dest = root / rel
        if dest.exists() and not force:
            done.append(dest)
            continue
        if source_dir:
            src = Path(source_dir) / rel
            if not src.exists():
                raise FetchError(f"{src} does not exist (copying {rel} from --from {source_dir})")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
        else:
            download(url, dest, desc=rel)
        done.append(dest)
    done.append(_fetch_val_labels(root, force, source_dir))
    return done


def _fetch_val_labels(root: Path, force: bool, source_dir: str | None) -> Path:
    import tarfile

    dest = root / PLACES365_VAL
    if dest.exists() and not force:
        return dest
    if source_dir:
        src = Path(source_dir) / PLACES365_VAL
        if not src.exists():
            raise FetchError(
                f"{src} does not exist; places365_val.txt comes from {PLACES365_FILELIST}")
        shutil.copyfile(src, dest)
        return dest
    tar = download(PLACES365_FILELIST, root / "places365" / "filelist_places365-standard.tar")
    with tarfile.open(tar) as t:
        member = next((m for m in t.getmembers() if m.name.endswith("places365_val.txt")), None)
        if member is None:
            raise FetchError(f"{tar} has no places365_val.txt")
        data = t.extractfile(member).read()
    tmp = dest.with_name(dest.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, dest)
    return dest
