"""The package's layering, read from the source with ``ast``: a unit (a subpackage, or a module
directly under ``mmcoa``) imports only from its own floor or the floors below it.

  0  errors, registry, files, provenance, seeding, devices, distributed, settings, outputs,
     flags, units
     (every top-level helper module not named below)
  1  models        2  data        3  attacks        4  train, eval
  5  report, analysis
  6  cli, __main__, and the package's ``__init__`` (the public facade re-exporting the API)

Two pairs on one floor stay apart as well: ``train`` and ``eval`` do not import each other (the
trainer writes its files with ``files``/``provenance``; evaluation knows nothing of training),
and ``report`` does not import ``analysis`` (it reads result files only). No unit imports a
private (underscore) name from another unit. Every import counts, also those inside functions.

The offline demo is an application beside the library (``src/mmcoa_demo``): it imports no
private ``mmcoa`` name, and of the library only the CLI's ``demo`` command imports it.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "mmcoa"
FLOORS = {
    "models": 1,
    "data": 2,
    "attacks": 3,
    "train": 4,
    "eval": 4,
    "report": 5,
    "analysis": 5,
    "cli": 6,
    "__main__": 6,
    "__init__": 6,
}
APP = ROOT.parent / "mmcoa_demo"
APART = {("train", "eval"), ("eval", "train"), ("report", "analysis")}


def imports(path: Path, package: list[str] | None = None, top: str = "mmcoa"):
    """(imported module, name) of every import of package ``top`` in ``path``, a module of
    ``package`` (default: its ``mmcoa`` subpackage); name None for ``import x``."""
    package = package or ["mmcoa", *path.relative_to(ROOT).parent.parts]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((a.name, None) for a in node.names if a.name.split(".")[0] == top)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            if module.split(".")[0] == top:
                yield from ((module, a.name) for a in node.names)


def test_no_upward_imports():
    found = set()
    for path in sorted(ROOT.rglob("*.py")):
        source = path.relative_to(ROOT).parts[0].removesuffix(".py")  # __init__: the facade
        for module, name in imports(path):
            below = module.split(".")[1:]  # from mmcoa import models: the unit is the name
            is_unit = name is not None and ((ROOT / f"{name}.py").exists() or (ROOT / name).is_dir())
            target = below[0] if below else name if is_unit else "__init__"
            upward = FLOORS.get(target, 0) > FLOORS.get(source, 0) or (source, target) in APART
            private = target != source and name is not None and name.startswith("_")
            if upward or private:
                found.add((path.relative_to(ROOT).as_posix(), f"{module}.{name}" if name else module))
    assert not found, f"imports against the layering (module docstring): {sorted(found)}"


def test_the_demo_is_an_application_beside_the_library():
    private = {
        (path.name, f"{module}.{name}")
        for path in sorted(APP.rglob("*.py"))
        for module, name in imports(path, package=["mmcoa_demo"])
        if module.split(".")[0] == "mmcoa" and name is not None and name.startswith("_")
    }
    assert not private, f"the demo imports private library names: {sorted(private)}"
    importers = {
        path.relative_to(ROOT).as_posix()
        for path in sorted(ROOT.rglob("*.py"))
        if any(module.split(".")[0] == "mmcoa_demo" for module, _ in imports(path, top="mmcoa_demo"))
    }
    assert importers <= {"cli.py"}, f"the library imports the demo: {sorted(importers - {'cli.py'})}"
