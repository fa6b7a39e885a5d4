"""The config of ``ppjax sweep`` (format: :mod:`ppjax.runs.sweep`'s docstring): a TOML or JSON
file -> a :class:`SweepConfig` of :class:`Grid` s, every name checked before anything runs."""

from __future__ import annotations

import dataclasses
import itertools
import json
import tomllib
from pathlib import Path
from typing import Any

# Grid keys that are not AttackConfig fields.
ALIASES = {"eot_quality": ("eot_quality_lo", "eot_quality_hi")}


@dataclasses.dataclass(frozen=True)
class Grid:
    """One grid: an attack (and preset) and its axes ``((field, (v1, v2, ...)), ...)``."""

    attack: str
    preset: str = "default"
    axes: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def points(self) -> list[tuple[tuple[str, Any], ...]]:
        """Every combination, as ``((field, value), ...)`` with aliases expanded."""
        names = [n for n, _ in self.axes]
        out = []
        for combo in itertools.product(*(vals for _, vals in self.axes)):
            settings = []
            for name, value in zip(names, combo, strict=True):
                if name in ALIASES:
                    settings += list(zip(ALIASES[name], value, strict=True))
                else:
                    settings.append((name, value))
            out.append(tuple(settings))
        return out


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A whole sweep (see the module docstring for the file format)."""

    judge: str
    images: tuple[str, ...]
    grids: tuple[Grid, ...]
    output: str = "sweep-out"
    standin: bool = False
    weights_dir: str | None = None
    max_images: int = 64
    batch: int = 8
    seed: int = 0
    appeal_judge: str | None = None
    driver: str = "auto"
    dtype: str = "float32"  # judge compute dtype; "bfloat16" = oneDNN/AMX on CPU (ppjax.accel.onednn)


def _as_tuple(v) -> tuple:
    return tuple(v) if isinstance(v, list | tuple) else (v,)


def parse_config(data: dict, base: Path | None = None) -> SweepConfig:
    """A :class:`SweepConfig` from the decoded TOML/JSON ``data``; relative paths resolve
    against ``base`` (the config file's directory)."""
    from ppjax.attacks import AttackConfig, get_attack

    data = dict(data)
    for required in ("judge", "images", "grid"):
        if required not in data:
            raise ValueError(f"sweep config: missing {required!r}")
    base = base or Path.cwd()
    fields = {f.name for f in dataclasses.fields(AttackConfig)} - {"name", "hyper"}
    grids = []
    for i, g in enumerate(_as_tuple(data.pop("grid"))):
        g = dict(g)
        if "attack" not in g:
            raise ValueError(f"sweep config: grid {i} has no 'attack'")
        attack, preset = g.pop("attack"), g.pop("preset", "default")
        get_attack(attack, preset)  # unknown names fail here, before any compilation
        axes = []
        for name, values in g.items():
            values = _as_tuple(values)
            if name in ALIASES:
                values = tuple(tuple(v) for v in values)
                if any(len(v) != len(ALIASES[name]) for v in values):
                    raise ValueError(f"sweep config: grid {i}: {name} takes pairs "
                                     f"{list(ALIASES[name])}, got {list(values)}")
            elif name != "appeal_weight" and name not in fields:
                raise ValueError(f"sweep config: grid {i}: unknown setting {name!r}; settings are "
                                 f"AttackConfig fields, eot_quality or appeal_weight")
            axes.append((name, values))
        grids.append(Grid(attack, preset, tuple(axes)))
    images = tuple(str((base / p) if not Path(p).is_absolute() else p)
                   for p in _as_tuple(data.pop("images")))
    output = data.pop("output", "sweep-out")
    output = str(base / output) if not Path(output).is_absolute() else output
    known = {f.name for f in dataclasses.fields(SweepConfig)} - {"grids", "images", "output"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"sweep config: unknown key(s) {', '.join(unknown)}")
    if data.get("dtype", "float32") not in ("float32", "bfloat16"):
        raise ValueError(f"sweep config: dtype must be 'float32' or 'bfloat16', got "
                         f"{data['dtype']!r}")
    return SweepConfig(images=images, grids=tuple(grids), output=output, **data)


def load_config(path: str | Path) -> SweepConfig:
    path = Path(path)
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    return parse_config(data, path.parent)
