"""``ppjax attacks [NAME]``: the attacks and their presets with every resolved setting (what
``--attack NAME --preset P`` runs before any ``--set``), read from the configs themselves."""

from __future__ import annotations

import sys

from ppjax import names

#: Settings shown per preset in the overview (every field is shown for one attack).
OVERVIEW = ("objective", "norm", "eps", "steps", "step_size", "step")


def _resolved(name: str) -> dict[str, dict]:
    """``{preset: {field: value}}`` of attack ``name`` (every field of its resolved config)."""
    from ppjax.attacks import ATTACKS, resolve_attack
    from ppjax.runs.provenance import attack_record

    return {p: attack_record(resolve_attack(name, p), name, p)["resolved"] for p in ATTACKS[name]}


def overview() -> str:
    """One line per attack and preset with its main settings."""
    from ppjax.runs.provenance import fmt_setting

    lines = []
    for name in names.ATTACK_PRESETS:
        for preset, r in _resolved(name).items():
            vals = " ".join(f"{k}={fmt_setting(k, r[k])}" for k in OVERVIEW if k in r)
            lines.append(f"{name:12s} {preset:16s} {vals}")
    aliases = ", ".join(f"{a}={n}" for a, n in sorted(names.ATTACK_ALIASES.items()))
    return "\n".join(lines) + f"\naliases: {aliases}\nevery setting of one: ppjax attacks NAME"


def detail(name: str) -> str:
    """Every field of every preset of ``name``: one row per field, one column per preset."""
    from ppjax.runs.provenance import fmt_setting

    res = _resolved(name)
    presets = list(res)
    fields = list(next(iter(res.values())))
    width = max(len(f) for f in fields)
    cells = {p: [fmt_setting(f, res[p][f]) for f in fields] for p in presets}
    cw = {p: max(len(p), *(len(c) for c in cells[p])) for p in presets}
    out = [f"{'setting':{width}s}  " + "  ".join(f"{p:{cw[p]}s}" for p in presets)]
    for i, f in enumerate(fields):
        out.append(f"{f:{width}s}  " + "  ".join(f"{cells[p][i]:{cw[p]}s}" for p in presets))
    return f"{name}: --attack {name} --preset PRESET, then --set KEY=VALUE\n" + "\n".join(out)


def command(args) -> int:
    name = names.ATTACK_ALIASES.get(args.name, args.name) if args.name else None
    if name is not None and name not in names.ATTACK_PRESETS:
        print(f"error: unknown attack {args.name!r}; known: {', '.join(names.ATTACK_PRESETS)}",
              file=sys.stderr)
        return 2
    print(detail(name) if name else overview())
    return 0


def add_parser(sub) -> None:
    from ppjax.cli.help import HelpFormatter

    p = sub.add_parser("attacks", formatter_class=HelpFormatter,
                       help="list the attacks and presets with every resolved setting")
    p.add_argument("name", nargs="?", default=None, metavar="NAME",
                   help=f"one attack (or alias): every setting of each of its presets; one of: "
                        f"{', '.join(names.ATTACK_PRESETS)}")
    p.set_defaults(func=command)
