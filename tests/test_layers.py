"""The import layers of the package hold: no module imports upward.

The table below is the architecture (the README's Layout): a module may
import its own package and anything on a lower layer, never a higher one and never a sibling
package on its own layer. Every import counts, including the ones inside functions (a lazy import
is still a dependency). A new package must be added to the table, or this test fails.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pseudocot

LAYERS: dict[str, int] = {
    # the ground: no pseudocot imports but each other's, downward
    "pseudocot": 0, "pseudocot.errors": 0, "pseudocot.files": 0, "pseudocot.progress": 0, "pseudocot.cost": 0, "pseudocot.dotted": 1,
    "pseudocot.config": 1, "pseudocot.losses": 1,
    "pseudocot.layout": 2, "pseudocot.data": 2,
    "pseudocot.freshness": 3, "pseudocot.tasks": 3, "pseudocot.models": 3,
    "pseudocot.generate": 4,
    "pseudocot.train": 5, "pseudocot.router": 5, "pseudocot.synth": 5,  # train: on-policy batches sample with generate
    "pseudocot.pipeline": 6,
    "pseudocot.evaluate": 7, "pseudocot.chat": 7, "pseudocot.serve": 7, "pseudocot.rewards": 7,  # base_correct: the loop
    # entry points: stages, then the command line
    "pseudocot.stages": 8,
    "pseudocot.cli": 9, "pseudocot.__main__": 10,
}
"""Package (or top-level module) -> layer. Lower numbers sit below higher ones."""

ROOT = Path(pseudocot.__file__).parent


def _unit(module: str) -> str:
    """The table entry a module belongs to: its top-level package or module under pseudocot."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported module) of every pseudocot import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "pseudocot"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "pseudocot":
                continue
            if target == "pseudocot":  # `from pseudocot import x`: x may be a subpackage
                found += [(node.lineno, f"pseudocot.{a.name}" if f"pseudocot.{a.name}" in LAYERS else "pseudocot")
                          for a in node.names]
            else:
                found.append((node.lineno, target))
    return found


def upward_imports() -> list[str]:
    bad = []
    for module, path in _modules().items():
        own = _unit(module)
        assert own in LAYERS, f"{module} ({path}) belongs to no layer; add '{own}' to LAYERS in {__file__}"
        for line, target in _imports(path, module):
            other = _unit(target)
            if other == own:
                continue
            assert other in LAYERS, f"{path}:{line} imports {target}, which belongs to no layer"
            if LAYERS[other] >= LAYERS[own] and own != "pseudocot":
                bad.append(f"{path.relative_to(ROOT.parent)}:{line}: {own} (layer {LAYERS[own]}) imports {target} "
                           f"(layer {LAYERS[other]})")
    return bad


def test_no_module_imports_upward():
    bad = upward_imports()
    assert not bad, "imports that run upward or sideways:\n" + "\n".join(bad)


def test_router_does_not_import_the_pipeline():
    for module, path in _modules().items():
        if _unit(module) == "pseudocot.router":
            assert not [t for _, t in _imports(path, module) if _unit(t) == "pseudocot.pipeline"], path


def test_library_never_imports_a_stage_or_the_cli():
    for module, path in _modules().items():
        if LAYERS[_unit(module)] < LAYERS["pseudocot.stages"]:
            for line, target in _imports(path, module):
                assert _unit(target) not in ("pseudocot.stages", "pseudocot.cli"), f"{path}:{line} imports {target}"


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: a lazy import from a low layer into a high one is reported."""
    pkg = tmp_path / "pseudocot"
    (pkg / "router").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "router" / "__init__.py").write_text("")
    (pkg / "router" / "x.py").write_text("def f():\n    from pseudocot.pipeline import load_pipeline\n")
    (pkg / "pipeline.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "ROOT", pkg)
    bad = upward_imports()
    assert len(bad) == 1 and "pseudocot.router (layer 5) imports pseudocot.pipeline (layer 6)" in bad[0]


RUN_FOLDER_NAMES = {
    "config.yaml", "run.log", "run_state.json", "logs", "data", "tokenizer", "synth", "teacher", "base", "distill",
    "summary.json", "grpo", "router", "eval", "stats.json", "rejects.jsonl", "results.json", "report.md", "figures",
    "cache", "predictions", "traces", "checkpoints", "metrics.json", "merged", "teacher_cache", "router.json",
    "train.jsonl", "val.jsonl", "test.jsonl",
}
"""Names of the folders and files of a run folder (`pseudocot.layout`)."""


def test_run_folder_paths_are_spelled_only_by_the_layout():
    """`folder / "metrics.json"` and friends appear in layout.py alone: every other module asks it."""
    import re

    joined = re.compile(r"""(?:/\s*|Path\()["']([\w.-]+)["']""")
    bad = []
    for module, path in _modules().items():
        if module == "pseudocot.layout":
            continue
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            bad += [f"{path.relative_to(ROOT.parent)}:{lineno}: {name}" for name in joined.findall(line)
                    if name in RUN_FOLDER_NAMES]
    assert not bad, "run-folder paths spelled outside pseudocot.layout:\n" + "\n".join(bad)
