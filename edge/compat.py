"""Newer standard-library features, for Python 3.8 (JetPack 5, whose TensorRT 8.5 binds Python 3.8 only).

``facediag.edge`` and the station's commands run on Python 3.8 and newer. The
few features they use that 3.8 lacks live here, each with the same behaviour on
every version: ``zip(..., strict=True)`` (3.10), ``Path.is_relative_to`` (3.9),
``importlib.resources.files`` (3.9), and ``typing.get_type_hints`` on
annotations written as ``X | None`` / ``tuple[str, ...]`` (3.10 / 3.9 when they
are evaluated). Everything else in ``facediag.edge`` keeps to 3.8 by itself:
``from __future__ import annotations`` in every module, and ``typing.Union`` /
``typing.Callable`` ... wherever a type is used at run time (aliases, casts).
"""

from __future__ import annotations

import ast
import importlib
import itertools
import sys
import typing
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar, overload

__all__ = ["PackageFile", "evaluate_annotation", "is_relative_to", "package_files", "type_hints", "zip_strict"]

A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")

_MISSING = object()


@overload
def zip_strict(a: Iterable[A], b: Iterable[B], /) -> Iterator[tuple[A, B]]: ...
@overload
def zip_strict(a: Iterable[A], b: Iterable[B], c: Iterable[C], /) -> Iterator[tuple[A, B, C]]: ...
def zip_strict(*iterables: Iterable[Any]) -> Iterator[tuple[Any, ...]]:
    """``zip(*iterables, strict=True)``: ValueError when one runs out before the others."""
    for row in itertools.zip_longest(*iterables, fillvalue=_MISSING):
        if any(item is _MISSING for item in row):
            short = next(i for i, item in enumerate(row, start=1) if item is _MISSING)
            raise ValueError(f"zip_strict() argument {short} has a different length from the others")
        yield row


def is_relative_to(path: Path, root: Path) -> bool:
    """``path.is_relative_to(root)`` (pure path arithmetic, no file system access)."""
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


class PackageFile(Protocol):
    """What ``importlib.resources.files`` returns and a ``Path`` also is (the part facediag uses)."""

    @property
    def name(self) -> str: ...

    def joinpath(self, child: str, /) -> PackageFile: ...

    def is_file(self) -> bool: ...

    def iterdir(self) -> Iterator[PackageFile]: ...

    def read_bytes(self) -> bytes: ...


def package_files(package: str) -> PackageFile:
    """``importlib.resources.files(package)``; on Python 3.8 the package's folder (a wheel installs as files).

    ModuleNotFoundError when the package does not exist, on every version."""
    if sys.version_info >= (3, 9):
        from importlib import resources

        files: PackageFile = resources.files(package)
        return files
    module = importlib.import_module(package)
    locations = list(getattr(module, "__path__", []))
    if not locations:
        raise ModuleNotFoundError(f"{package} is not a package", name=package)
    return Path(locations[0])


# --------------------------------------------------------------------------- annotations on Python 3.8

_TYPING_NAME = "__facediag_typing__"
_BUILTIN_GENERICS = {"tuple": "Tuple", "list": "List", "dict": "Dict", "set": "Set", "frozenset": "FrozenSet",
                     "type": "Type"}


def _typing_attr(name: str, like: ast.AST) -> ast.expr:
    return ast.copy_location(ast.Attribute(value=ast.Name(id=_TYPING_NAME, ctx=ast.Load()), attr=name,
                                           ctx=ast.Load()), like)


def _subscript(value: ast.expr, items: list[ast.expr], like: ast.AST) -> ast.expr:
    elts: ast.expr = ast.Tuple(elts=items, ctx=ast.Load())
    index: Any = elts if sys.version_info >= (3, 9) else ast.Index(value=elts)  # type: ignore[call-arg, unused-ignore]
    return ast.copy_location(ast.Subscript(value=value, slice=index, ctx=ast.Load()), like)


class _Pep604To3_8(ast.NodeTransformer):
    """``X | Y`` -> ``typing.Union[X, Y]``; ``tuple[...]`` (and list, dict, ...) -> ``typing.Tuple[...]``."""

    def visit_BinOp(self, node: ast.BinOp) -> ast.expr:
        self.generic_visit(node)
        if isinstance(node.op, ast.BitOr):
            return _subscript(_typing_attr("Union", node), [node.left, node.right], node)
        return node

    def visit_Subscript(self, node: ast.Subscript) -> ast.expr:
        self.generic_visit(node)
        if isinstance(node.value, ast.Name) and node.value.id in _BUILTIN_GENERICS:
            node.value = _typing_attr(_BUILTIN_GENERICS[node.value.id], node.value)
        return node


def evaluate_annotation(text: str, namespace: dict[str, Any]) -> Any:
    """One string annotation evaluated the way Python 3.10 would, on any version from 3.8 on."""
    tree = _Pep604To3_8().visit(ast.parse(text, mode="eval"))
    code = compile(ast.fix_missing_locations(tree), "<annotation>", "eval")
    return eval(code, {**namespace, _TYPING_NAME: typing})  # noqa: S307 - the package's own annotations


def type_hints(cls: type) -> dict[str, Any]:
    """``typing.get_type_hints(cls)`` for a class whose annotations use 3.10 syntax (``str | None``)."""
    if sys.version_info >= (3, 10):
        return typing.get_type_hints(cls)
    hints: dict[str, Any] = {}
    for base in reversed(cls.__mro__):
        namespace = dict(vars(sys.modules[base.__module__]))
        for name, annotation in base.__dict__.get("__annotations__", {}).items():
            hints[name] = evaluate_annotation(annotation, namespace) if isinstance(annotation, str) else annotation
    return hints
