"""The code-layout rules of the re-housing issue, checked on the source (no imports of ppjax):
no import cycle, no long function, no private name used from outside, nothing but ``ppjax`` installed,
one registry type, one owner for task sizes."""

from __future__ import annotations

import ast
import re
import tomllib
from collections import defaultdict
from pathlib import Path

import pytest

from ppjax.registry import Registry, UnknownName

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "ppjax"
MAX_LINES = 60
# model definitions that mirror the original architectures may be longer (the exception)
LONG_OK = ("ppjax/models/",)


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        name = ".".join(p.relative_to(REPO).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def _imported(mods: dict[str, Path], current: str, node: ast.AST) -> list[str]:
    """The ppjax modules an import statement loads (``from pkg import mod`` names the module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in mods]
    package = current if mods[current].name == "__init__.py" else current.rpartition(".")[0]
    if node.level:
        parts = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(parts + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    out = []
    for a in node.names:
        if f"{base}.{a.name}" in mods:
            out.append(f"{base}.{a.name}")
        elif base in mods:
            out.append(base)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the ppjax modules it imports anywhere (top level or inside functions)."""
    mods = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[name].update(m for m in _imported(mods, name, node) if m != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]
    for root in list(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def test_cycle_finder_finds_a_planted_cycle():
    graph = defaultdict(set, {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles(defaultdict(set, {"a": {"b"}, "b": set()})) == []


def test_no_import_cycle_among_ppjax_modules():
    assert cycles(import_graph()) == []


def long_functions(root: Path = PKG) -> list[str]:
    out = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(REPO).as_posix()
        if rel.startswith(LONG_OK):
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_LINES:
                    out.append(f"{rel}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_no_function_longer_than_60_lines():
    assert long_functions() == []


def private_uses(path: Path) -> list[str]:
    """Names starting with ``_`` taken from ppjax: ``from ppjax.x import _y``, ``mod._y`` on a
    module imported from ppjax, and ``"ppjax.x._y"`` strings (monkeypatch targets)."""
    tree = ast.parse(path.read_text())
    bound, out = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "ppjax":
            for a in node.names:
                if a.name.startswith("_"):
                    out.append(f"{path.name}:{node.lineno} imports {a.name}")
                bound.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names
                         if a.name.split(".")[0] == "ppjax")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and isinstance(node.value, (ast.Name, ast.Attribute))):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in bound:
                out.append(f"{path.name}:{node.lineno} uses {ast.unparse(node)}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if re.fullmatch(r"ppjax(\.\w+)*\._\w*", node.value) and "__" not in node.value:
                out.append(f"{path.name}:{node.lineno} names {node.value}")
    return sorted(out, key=lambda s: int(s.split(":")[1].split()[0]))


def test_private_use_finder_flags_each_form(tmp_path):
    p = tmp_path / "t.py"
    p.write_text("from ppjax.attacks import loop, _x\nfrom ppjax import cli as c\nimport ppjax.runs\n"
                 "loop._step\nc._cache()\nppjax.runs._y\nf('ppjax.runs.protect._z')\nobj._fine\n")
    got = private_uses(p)
    assert [g.split(" ", 1)[1] for g in got] == [
        "imports _x", "uses loop._step", "uses c._cache", "uses ppjax.runs._y", "names ppjax.runs.protect._z"]


@pytest.mark.parametrize("folder", ["tests", "benchmarks"])
def test_tests_and_benchmarks_use_only_public_names(folder):
    found = [u for p in sorted((REPO / folder).rglob("*.py")) for u in private_uses(p)]
    assert found == []


def test_only_ppjax_is_installed_and_tfds_is_optional():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["tool"]["setuptools"]["packages"]["find"]["include"] == ["ppjax*"]
    assert not (REPO / "converters").exists()
    core = " ".join(project["project"]["dependencies"])
    assert "tensorflow-datasets" not in core and "array_record" not in core
    assert any("tensorflow-datasets" in d for d in project["project"]["optional-dependencies"]["tfds"])


def test_task_sizes_have_one_owner():
    """The task sizes (2019: 256x256, 2020: 384x512) are written once in ppjax."""
    pattern = re.compile(r"\(\s*384\s*,\s*512\s*\)|\(\s*512\s*,\s*384\s*\)")
    owners = sorted(p.relative_to(REPO).as_posix() for p in PKG.rglob("*.py")
                    if pattern.search(p.read_text()))
    assert len(owners) == 1, owners


def test_registry_names_known_keys_and_refuses_a_second_registration():
    r: Registry[int] = Registry("widget")
    r.register("a", 1)

    @r.register("b")
    def b():
        return 2

    assert r["a"] == 1 and r["b"] is b and sorted(r) == ["a", "b"] and "a" in r and len(r) == 2
    with pytest.raises(UnknownName, match=r"unknown widget 'c'; known: a, b"):
        r["c"]
    with pytest.raises(ValueError, match="already registered"):
        r.register("a", 3)
    r.register("a", 3, replace=True)
    assert r["a"] == 3 and r.get("zzz") is None


# ----------------------------------------------------------------------------- issue 25


def _source(rel: str) -> str:
    return (REPO / rel).read_text()


def test_no_string_keyed_hyperparameter_dict_in_the_attacks():
    for p in sorted((PKG / "attacks").glob("*.py")):
        assert not re.search(r"\bhp\[", p.read_text()), p.name


def test_attack_config_is_one_pytree_without_a_second_half():
    import dataclasses

    import jax

    from ppjax.attacks import AttackConfig, loop
    from ppjax.attacks import config as config_module

    for gone in ("static", "hyperparameters"):
        assert not hasattr(AttackConfig, gone), gone
    for gone in ("traced_values",):
        assert not hasattr(loop, gone), gone
    assert "_RANGES" not in _source("ppjax/attacks/presets.py")
    cfg = AttackConfig()
    leaves, treedef = jax.tree.flatten(cfg)
    traced = [f.name for f in dataclasses.fields(AttackConfig) if f.metadata["traced"]]
    assert len(leaves) == len(traced) and treedef == jax.tree.structure(
        AttackConfig(eps=1 / 255, step_size=0.5 / 255))
    assert all(f.metadata["help"] for f in dataclasses.fields(AttackConfig))
    assert config_module.problems(cfg) == []


_ATTACK_NAMES = r"\b(pgd|fgsm|i-?fgsm|mi-?fgsm|c&w|cw|carlini|square|ace|perc-?al|deepfool|" \
                r"bim|madry|di-?fgsm|ti-?fgsm|vmi-?fgsm|camouflage)\b"


def test_the_loop_names_no_attack():
    from ppjax.attacks import ATTACKS

    text = _source("ppjax/attacks/loop.py").lower()
    assert not re.findall(_ATTACK_NAMES, text)
    assert not [n for n in ATTACKS if re.search(rf"\b{re.escape(n)}\b", text)]


def test_judges_import_neither_converters_nor_runs():
    graph = import_graph()
    for mod, deps in graph.items():
        if mod == "ppjax.judges" or mod.startswith("ppjax.judges."):
            bad = [d for d in deps if d.startswith(("ppjax.convert", "ppjax.runs"))]
            assert not bad, (mod, bad)
    for mod, deps in graph.items():  # converters sit below the runs
        if mod.startswith("ppjax.convert"):
            assert not [d for d in deps if d.startswith("ppjax.runs")], mod


def test_objectives_module_is_under_300_lines():
    assert len(_source("ppjax/attacks/objectives.py").splitlines()) < 300


def test_per_judge_knowledge_lives_on_the_judge_spec():
    onednn = [str(p.relative_to(REPO)) for p in sorted((PKG / "accel" / "onednn").glob("*.py"))]
    for rel, table in (("ppjax/attacks/appeal.py", "APPEAL_RESIZE ="),
                       *((rel, "F32_ACTIVATIONS =") for rel in onednn),
                       ("ppjax/convert/__init__.py", '"nima_mobilenetv2"')):
        assert table not in _source(rel), (rel, table)
    assert "(\"labels\", \"targets\")" not in _source("ppjax/attacks/loop.py")
    assert "(\"labels\", \"targets\")" not in _source("ppjax/attacks/stream.py")


# Each module of ppjax.accel.onednn does one job, lower jobs first: the marks of a job (an import,
# a call, a file it reads) may appear only in its own module.
_ONEDNN_JOBS = {
    "extension": ("subprocess", "register_ffi_target"),  # compile and load the C++ extension
    "cpu": ("/proc/cpuinfo", "dnnl_get_effective_cpu_isa"),  # probe what this CPU runs natively
    "ops": ("ffi_call", "custom_vjp"),  # the differentiable ops inside compiled programs
    "judge": ("flax", "ppjax.judges", "ppjax.accel.intercept"),  # run a judge's model on the ops
}


def _marks(path: Path) -> set[str]:
    """Imported modules, names, attributes and string constants of a file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            out.add(node.module or "")
        elif isinstance(node, ast.Attribute):
            out.add(node.attr)
        elif isinstance(node, ast.Name):
            out.add(node.id)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.add(node.value)
    return out


def test_onednn_modules_each_do_one_job():
    files = {p.stem: p for p in sorted((PKG / "accel" / "onednn").glob("*.py"))}
    assert sorted(files) == sorted(["__init__", *_ONEDNN_JOBS])
    for stem, path in files.items():
        assert len(path.read_text().splitlines()) < 250, stem
        have = _marks(path)
        for job, marks in _ONEDNN_JOBS.items():
            found = [m for m in marks if any(h == m or h.startswith(m + ".") for h in have)]
            if job == stem:
                assert found, (stem, "does not do its job any more: update _ONEDNN_JOBS")
            else:
                assert not found, (stem, f"does {job}'s job", found)
    order, graph = list(_ONEDNN_JOBS), import_graph()  # a job imports only the jobs below it
    for i, stem in enumerate(order):
        deps = {d.rpartition(".")[2] for d in graph[f"ppjax.accel.onednn.{stem}"]
                if d.startswith("ppjax.accel.onednn.")}
        assert deps <= set(order[:i]), (stem, deps)
