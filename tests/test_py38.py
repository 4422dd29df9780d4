"""Python 3.8 (JetPack 5, whose TensorRT 8.5 has Python bindings for 3.8 only) runs a station.

Cheap guards in the main suite: every station module compiles under a real Python 3.8
(when one is on this machine), a scan for the run-time constructs 3.8 lacks (a type
alias written ``X | None``, ``zip(strict=True)``, ...), facediag.edge.compat's 3.8 code
paths run under that 3.8, and the CLI's refusal of the workstation's commands. The full
run, the station's tests under 3.8 with the station extra installed, is ``.ci/py38``.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from tests.conftest import REPO

# What a station runs (pyproject's [tool.ruff] per-file-target-version says the same): facediag.edge, the CLI
# with its commands, and the two converters modules `facediag build` / `facediag verify` use on a station.
STATION_FOLDERS = ("edge", "facediag")
STATION_CONVERTERS = ("tensorrt_build.py", "tensorrt_plan.py", "tensorrt_cache.py", "tensorrt_calibrator.py",
                      "tensorrt_output.py", "verify.py", "compare.py", "agreement.py")


def python38() -> str | None:
    """A real Python 3.8 interpreter: python3.8 on PATH (not a pyenv shim) or pyenv's 3.8.x."""
    found = sorted(Path("/root/.pyenv/versions").glob("3.8.*/bin/python3.8")) if Path("/root/.pyenv").is_dir() else []
    on_path = shutil.which("python3.8")
    if on_path and "/shims/" not in on_path:
        found.append(Path(on_path))
    return str(found[-1]) if found else None


def _station_sources() -> list[Path]:
    files = [p for folder in STATION_FOLDERS for p in sorted((REPO / folder).rglob("*.py"))
             if "__pycache__" not in p.parts]
    files += [REPO / "converters" / name for name in STATION_CONVERTERS]
    return files


def _need_python38() -> str:
    python = python38()
    if python is None:
        pytest.skip("no Python 3.8 interpreter on this machine (looked for python3.8 and pyenv 3.8.x)")
    return python


def _run38(python: str, script: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -c script`` (or ``python ARGS`` when script is "") under Python 3.8 with this checkout's
    installed layout (facediag.edge = edge/, ...) rebuilt with links and first on the path."""
    pkg = tmp_path / "site" / "facediag"
    if pkg.exists():
        return _run38_in(python, script, tmp_path, args)
    pkg.mkdir(parents=True)
    for f in (REPO / "facediag").iterdir():
        if f.name != "__pycache__":
            (pkg / f.name).symlink_to(f)
    for layer in ("edge", "converters", "calibration", "training"):
        (pkg / layer).symlink_to(REPO / layer)
    (pkg / "station_files").symlink_to(REPO / "systemd")
    return _run38_in(python, script, tmp_path, args)


def _run38_in(python: str, script: str, tmp_path: Path, args: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
    argv = [python, *args] if not script else [python, "-c", script, *args]
    return subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=120, env=env)


# --------------------------------------------------------------------------- syntax, with a real 3.8


def test_every_station_module_compiles_under_python_3_8(tmp_path: Path) -> None:
    python = _need_python38()
    files = _station_sources()
    script = (
        "import sys\n"
        "bad = []\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        compile(open(name, encoding='utf-8').read(), name, 'exec', dont_inherit=True)\n"
        "    except SyntaxError as exc:\n"
        "        bad.append(f'{name}:{exc.lineno}: {exc.msg}')\n"
        "print(sys.version_info[:2], len(sys.argv) - 1)\n"
        "print('\\n'.join(bad))\n"
        "sys.exit(1 if bad else 0)\n"
    )
    done = subprocess.run([python, "-c", script, *map(str, files)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[0] == f"(3, 8) {len(files)}" and len(files) > 100


# --------------------------------------------------------------------------- run-time constructs (no interpreter)

_BUILTIN_GENERICS = {"list", "dict", "tuple", "set", "frozenset", "type"}
_TYPE_NAMES = {"int", "str", "float", "bytes", "bool", "complex", "object", *_BUILTIN_GENERICS}
_NEWER_METHODS = {"removeprefix": "3.9", "removesuffix": "3.9", "is_relative_to": "3.9 (facediag.edge.compat)",
                  "with_stem": "3.9", "hardlink_to": "3.10", "bit_count": "3.10", "pairwise": "3.10",
                  "to_thread": "3.9", "randbytes": "3.9", "get_type_hints": "3.10 syntax (compat.type_hints)",
                  "BooleanOptionalAction": "3.9", "file_digest": "3.11", "readlink": "3.9 (Path)"}
_NEWER_IMPORTS = {("functools", "cache"), ("typing", "TypeAlias"), ("typing", "ParamSpec"), ("typing", "Self"),
                  ("typing", "Annotated"), ("typing", "TypeGuard"), ("typing", "Concatenate"), ("importlib", "resources")}


class _RuntimeScan(ast.NodeVisitor):
    """Constructs that Python 3.8 refuses at run time (annotations are exempt: every module has
    ``from __future__ import annotations``, so they stay strings)."""

    def __init__(self, abc_names: set[str]) -> None:
        self.abc_names = abc_names
        self.found: list[tuple[int, str]] = []

    def _typeish(self, node: ast.expr) -> bool:
        if isinstance(node, ast.Constant) and node.value is None:
            return True
        if isinstance(node, ast.Name) and (node.id in _TYPE_NAMES or node.id in self.abc_names):
            return True
        return isinstance(node, ast.Subscript) or (isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr)
                                                   and (self._typeish(node.left) or self._typeish(node.right)))

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for child in [*node.decorator_list, *node.args.defaults, *[d for d in node.args.kw_defaults if d], *node.body]:
            self.visit(child)  # not the annotations

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        v = node.value
        if isinstance(v, ast.Name) and (v.id in _BUILTIN_GENERICS or v.id in self.abc_names):
            self.found.append((node.lineno, f"{v.id}[...] at run time (use typing.{v.id.capitalize()} there)"))
        self.generic_visit(node)

    def visit_BinOp(self, node: ast.BinOp) -> None:
        if isinstance(node.op, ast.BitOr) and self._typeish(node.left) and self._typeish(node.right):
            self.found.append((node.lineno, "`X | Y` of types at run time (3.10; use typing.Union there)"))
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        name = getattr(node.func, "id", getattr(node.func, "attr", ""))
        for kw in node.keywords:
            if (name, kw.arg) in {("zip", "strict"), ("dataclass", "slots"), ("dataclass", "kw_only")}:
                self.found.append((node.lineno, f"{name}({kw.arg}=...) (3.10; zip: facediag.edge.compat.zip_strict)"))
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in _NEWER_METHODS:
            self.found.append((node.lineno, f".{node.attr} (Python {_NEWER_METHODS[node.attr]})"))
        self.generic_visit(node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            if (node.module, alias.name) in _NEWER_IMPORTS:
                self.found.append((node.lineno, f"from {node.module} import {alias.name} (newer than 3.8)"))


def runtime_problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    abc_names = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                 and n.module == "collections.abc" for a in n.names}
    scan = _RuntimeScan(abc_names)
    scan.visit(tree)
    rel = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    return [f"{rel}:{line}: {what}" for line, what in scan.found]


def test_station_modules_use_nothing_python_3_8_lacks_at_run_time() -> None:
    from facediag.cli import PYTHON_3_8_COMMANDS, _command_modules

    allowed = {"edge/compat.py"}  # the stand-ins themselves, behind version checks
    # The workstation's commands refuse 3.8 before their run() starts: only their module level must load there.
    allowed |= {f"facediag/commands/{m.NAME}.py" for m in _command_modules() if m.NAME not in PYTHON_3_8_COMMANDS}
    problems = [p for f in _station_sources() if str(f.relative_to(REPO)) not in allowed for p in runtime_problems(f)]
    assert problems == [], "Python 3.8 (JetPack 5) runs these modules:\n" + "\n".join(problems)


def test_the_run_time_scan_finds_what_3_8_refuses(tmp_path: Path) -> None:
    """The scan itself can fail: each construct it is meant to catch is caught, annotations are not."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from __future__ import annotations\n"
        "from collections.abc import Callable\n"
        "Alias = str | None\n"
        "Hook = Callable[[int], None]\n"
        "Table = dict[str, int]\n"
        "def f(a: int | None, b: list[int]) -> tuple[int, ...]:\n"
        "    for x, y in zip(a, b, strict=True):\n"
        "        pass\n"
        "    return 'x'.removeprefix('y'), a | 4\n",
        encoding="utf-8",
    )
    found = runtime_problems(probe)
    assert [int(p.split(":")[1]) for p in found] == [3, 4, 5, 7, 9], found


# --------------------------------------------------------------------------- compat's 3.8 code paths


@dataclasses.dataclass
class _Hinted:
    name: str | None
    sizes: tuple[str, ...]
    table: dict[str, list[int]] | None = None


def test_the_3_8_annotation_reader_agrees_with_typing_for_every_config_section() -> None:
    from facediag.edge import compat, config

    sections = [*config.SECTIONS.values(), _Hinted]
    assert len(sections) > 8
    for cls in sections:
        namespace = dict(vars(sys.modules[cls.__module__]))
        want = typing.get_type_hints(cls)
        got = {f: compat.evaluate_annotation(a, namespace) if isinstance(a, str) else a
               for base in reversed(cls.__mro__) for f, a in base.__dict__.get("__annotations__", {}).items()}
        assert got.keys() == want.keys()
        for field in want:
            assert typing.get_origin(got[field]) == typing.get_origin(want[field]) or \
                {typing.get_origin(got[field]), typing.get_origin(want[field])} <= {typing.Union, _union_type()}
            assert set(map(_plain, typing.get_args(got[field]))) == set(map(_plain, typing.get_args(want[field]))), \
                (cls.__name__, field, got[field], want[field])


def _union_type() -> object:
    import types

    return getattr(types, "UnionType", typing.Union)


def _plain(tp: object) -> object:
    """``typing.List[int]`` and ``list[int]`` as one comparable value."""
    origin = typing.get_origin(tp)
    return (origin, tuple(map(_plain, typing.get_args(tp)))) if origin is not None else tp


def test_zip_strict_and_is_relative_to() -> None:
    from facediag.edge.compat import is_relative_to, zip_strict

    assert list(zip_strict([1, 2], "ab")) == [(1, "a"), (2, "b")]
    assert list(zip_strict([], [], [])) == []
    with pytest.raises(ValueError, match="argument 2"):
        list(zip_strict([1, 2], [1]))
    with pytest.raises(ValueError, match="argument 1"):
        list(zip_strict([1], [1, 2], [3, 4]))
    assert is_relative_to(Path("/a/b/c"), Path("/a/b")) and not is_relative_to(Path("/a/bc"), Path("/a/b"))


def test_compat_runs_its_3_8_code_under_python_3_8(tmp_path: Path) -> None:
    """The fallbacks themselves, under a real 3.8: zip_strict, package_files (no importlib.resources.files),
    and type_hints on a dataclass written with 3.10 annotations."""
    python = _need_python38()
    script = (
        "from __future__ import annotations\n"
        "import dataclasses, sys, typing\n"
        "from facediag.edge import compat\n"
        "assert sys.version_info[:2] == (3, 8)\n"
        "@dataclasses.dataclass\n"
        "class Section:\n"
        "    name: str | None\n"
        "    sizes: tuple[str, ...] = ()\n"
        "    table: dict[str, list[int]] | None = None\n"
        "hints = compat.type_hints(Section)\n"
        "assert hints == {'name': typing.Optional[str], 'sizes': typing.Tuple[str, ...],\n"
        "                 'table': typing.Optional[typing.Dict[str, typing.List[int]]]}, hints\n"
        "assert list(compat.zip_strict('ab', [1, 2])) == [('a', 1), ('b', 2)]\n"
        "try:\n"
        "    list(compat.zip_strict('ab', [1]))\n"
        "    raise SystemExit('zip_strict let lengths differ')\n"
        "except ValueError:\n"
        "    pass\n"
        "units = sorted(p.name for p in compat.package_files('facediag.station_files').iterdir())\n"
        "assert 'facediag.service' in units, units\n"
        "assert compat.package_files('facediag.station_files').joinpath('station.toml').read_bytes().strip()\n"
        "print('ok', sys.version.split()[0])\n"
    )
    done = _run38(python, script, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok 3.8.")


# --------------------------------------------------------------------------- the CLI on 3.8


def test_the_workstation_commands_refuse_python_3_8_by_name() -> None:
    from facediag.cli import PYTHON_3_8_COMMANDS, _command_modules, python_refusal

    names = {m.NAME for m in _command_modules()}
    assert PYTHON_3_8_COMMANDS <= names and {"run", "build", "verify", "station"} <= PYTHON_3_8_COMMANDS
    for name in sorted(names):
        refusal = python_refusal(name, (3, 8, 10))
        assert python_refusal(name, (3, 10, 0)) is None and python_refusal(name, sys.version_info[:3]) is None
        if name in PYTHON_3_8_COMMANDS:
            assert refusal is None
        else:
            assert refusal is not None and f"`facediag {name}` needs Python 3.10 or newer" in refusal
            assert "this is Python 3.8.10" in refusal and "run, sign, station, verify" in refusal


def test_a_workstation_command_on_python_3_8_names_the_floor_without_a_traceback(tmp_path: Path) -> None:
    """A real 3.8 with the station extra (the venv .ci/py38 makes, when this machine has one) runs this
    checkout's CLI: a station command works, a workstation command refuses by name."""
    venv_python = Path(os.environ.get("FACEDIAG_PY38_VENV", "/tmp/facediag-py38")) / "bin" / "python"
    if not venv_python.exists():
        pytest.skip(f"no Python 3.8 venv at {venv_python.parent.parent} (.ci/py38 makes it)")
    done = _run38(str(venv_python), "", tmp_path, "-m", "facediag", "train", "--out", "x")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "`facediag train` needs Python 3.10 or newer; this is Python 3.8" in done.stderr
    keygen = _run38(str(venv_python), "", tmp_path, "-m", "facediag", "keygen", "--out", str(tmp_path / "k"))
    assert keygen.returncode == 0, keygen.stderr
    assert (tmp_path / "k.pub").read_text().startswith("ed25519:")
