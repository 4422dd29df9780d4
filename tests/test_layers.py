"""The layering is checked, not stated.

- One install namespace: every folder with an ``__init__.py`` under the layer folders is
  listed in pyproject.toml's ``packages`` and mapped by ``package-dir``; a built wheel holds
  exactly one top-level package, ``facediag``.
- Import contracts, read from the source (direct imports, including lazy ones inside
  functions): ``facediag.edge`` never imports torch, sklearn, matplotlib or the training,
  converters and calibration layers; no lower layer imports the CLI (``facediag.cli``,
  ``facediag.commands``).
- And at run time: every ``facediag.edge`` module imports in a fresh interpreter in which
  those modules cannot be imported at all (so a transitive import would fail too).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
LAYER_FOLDERS = {  # installed name -> folder in the repository
    "facediag.edge": "edge",
    "facediag.converters": "converters",
    "facediag.calibration": "calibration",
    "facediag.training": "training",
    "facediag.station_files": "systemd",  # data only: units, example config, sysusers.d / tmpfiles.d files
}
CLI = ("facediag.cli", "facediag.commands")
EDGE_FORBIDDEN = ("torch", "torchvision", "sklearn", "matplotlib", "facediag.training", "facediag.converters",
                  "facediag.calibration", *CLI)


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _module_name(path: Path) -> str:
    """Installed dotted name of a source file under one of the layer folders (or facediag/)."""
    rel = path.relative_to(REPO)
    top = rel.parts[0]
    prefix = next((name for name, folder in LAYER_FOLDERS.items() if folder == top), top)
    parts = [*prefix.split("."), *rel.parts[1:]]
    parts[-1] = parts[-1][:-3] if parts[-1].endswith(".py") else parts[-1]  # runs on Python 3.8 too (.ci/py38)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str | None = None) -> list[tuple[int, str]]:
    """Every module a file imports (absolute names; relative imports resolved), with line numbers."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module or _module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            found.append((node.lineno, mod))
            found += [(node.lineno, f"{mod}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module", "__import__"
        ):
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def _sources(folder: str) -> list[Path]:
    return sorted(p for p in (REPO / folder).rglob("*.py") if "__pycache__" not in p.parts)


def _hits(name: str, forbidden: tuple[str, ...]) -> bool:
    return any(name == f or name.startswith(f + ".") for f in forbidden)


def test_every_package_folder_is_installed_under_the_one_namespace() -> None:
    setuptools_cfg = _pyproject()["tool"]["setuptools"]
    listed = set(setuptools_cfg["packages"])
    mapping = setuptools_cfg["package-dir"]
    for name, folder in LAYER_FOLDERS.items():
        assert mapping.get(name) == folder, f"package-dir must map {name} onto {folder}/"
    on_disk = {_module_name(init) for folder in ["facediag", *LAYER_FOLDERS.values()]
               for init in (REPO / folder).rglob("__init__.py") if "__pycache__" not in init.parts}
    assert on_disk - listed == set(), f"folders with __init__.py missing from pyproject's packages: {on_disk - listed}"
    assert listed - on_disk == set(), f"pyproject lists packages that have no folder: {listed - on_disk}"
    assert all(name == "facediag" or name.startswith("facediag.") for name in listed)


@pytest.mark.parametrize("folder", sorted(LAYER_FOLDERS.values()))
def test_lower_layers_never_import_the_cli(folder: str) -> None:
    bad = [f"{p.relative_to(REPO)}:{line} imports {mod}" for p in _sources(folder)
           for line, mod in _imports(p) if _hits(mod, CLI) or mod == "facediag.__version__"]
    assert bad == [], "a lower layer imports the CLI package:\n" + "\n".join(bad)


def test_edge_imports_nothing_from_the_workstation_side() -> None:
    bad = [f"{p.relative_to(REPO)}:{line} imports {mod}" for p in _sources("edge")
           for line, mod in _imports(p) if _hits(mod, EDGE_FORBIDDEN)]
    assert bad == [], "facediag.edge must run with only the station extra:\n" + "\n".join(bad)


def test_the_contract_scanner_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The scanner itself can fail: a lazy import inside a function and a relative import are found."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    import torch\n    from ..training import train\n", encoding="utf-8")
    mods = {m for _, m in _imports(probe, "facediag.edge.probe")}
    assert "torch" in mods and "facediag.training" in mods


_BLOCKED_IMPORT_SCRIPT = r"""
import importlib, importlib.abc, pkgutil, sys
BLOCKED = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(f"{{name}} is blocked for facediag.edge")
        return None
sys.meta_path.insert(0, Block())
import facediag.edge
names = [m.name for m in pkgutil.walk_packages(facediag.edge.__path__, "facediag.edge.")]
for name in names:
    importlib.import_module(name)
leaked = sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in BLOCKED))
assert not leaked, leaked
print(len(names))
"""


def test_every_edge_module_imports_with_the_workstation_side_blocked() -> None:
    script = _BLOCKED_IMPORT_SCRIPT.format(blocked=EDGE_FORBIDDEN)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd="/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.strip().splitlines()[-1]) >= 40  # the walk really found the edge modules


@pytest.mark.slow
def test_a_built_wheel_has_exactly_one_top_level_package(tmp_path: Path) -> None:
    setuptools = pytest.importorskip("setuptools", reason="building a wheel here needs setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:  # pyproject's build-system floor (SPDX licence field)
        pytest.skip(f"setuptools {setuptools.__version__} here; the build needs >= 77 (pyproject build-system)")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    if proc.returncode != 0 and "No module named" in proc.stderr:
        pytest.skip(f"cannot build a wheel here: {proc.stderr.strip()[-200:]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("facediag-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        tops = {name.split("/")[0] for name in zf.namelist()}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert tops - dist_info == {"facediag"}, f"top-level entries besides facediag: {sorted(tops - dist_info)}"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert "facediag/edge/bundle.py" in names and "facediag/training/train.py" in names
