"""Generic validation of the station config's sections (``facediag.edge.config`` re-exports these names).

A section is a frozen dataclass whose fields carry metadata made by :func:`_meta`
(numeric range, "is a path", "accepts false = off", "a name in this registry");
:func:`_build_section` checks a TOML table against it: unknown keys are errors with
a did-you-mean hint, every value is type- and range-checked by :func:`_check_value`,
and the error is ``facediag.edge.errors.ConfigError`` naming the key.
"""

from __future__ import annotations

import difflib
import math
import typing
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

from facediag.edge.compat import type_hints
from facediag.edge.errors import ConfigError
from facediag.edge.registry import Registry, suggest


def _meta(*, min: float | None = None, max: float | None = None, min_exclusive: bool = False,  # noqa: A002
          path: bool = False, off: bool = False, min_if_set: float | None = None,
          registry: Callable[[], Registry[Any]] | None = None) -> dict[str, Any]:
    """Field metadata: numeric range, 'is a path', 'accepts false = off', 'a name in this registry'."""
    return {"min": min, "max": max, "min_exclusive": min_exclusive, "path": path, "off": off, "registry": registry,
            "min_if_set": min_if_set}


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "a list of strings"
    return {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


MAX_STRING_CHARS = 4096  # a path or URI longer than this is a mistake (PATH_MAX), not a station setting


def _check_value(key: str, value: Any, tp: Any, meta: dict[str, Any], base_dir: Path | None) -> Any:
    """Validate and normalise one value; ConfigError names ``key`` and the expected type."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        inner = next(a for a in args if a is not type(None))
        if value is False and meta.get("off"):
            return None
        if isinstance(value, str) and value == "" and meta.get("path"):
            return None
        return _check_value(key, value, inner, meta, base_dir)
    expected = _describe(tp) + (" or false (off)" if meta.get("off") else "")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be {expected} (got {value!r})")
        return value
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{key} must be {expected} (got {value!r}, {_type_name(value)})")
        return tuple(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be {expected} (got {value!r}, {_type_name(value)})")
        return value
    if tp in (int, float):
        ok = isinstance(value, int) and not isinstance(value, bool)
        if tp is float:
            ok = ok or isinstance(value, float)
        if not ok:
            raise ConfigError(f"{key} must be {expected} (got {value!r}, {_type_name(value)})")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number (got {value!r})")
        lo, hi = meta.get("min"), meta.get("max")
        if lo is not None and (value < lo or (meta.get("min_exclusive") and value == lo)):
            relation = ">" if meta.get("min_exclusive") else ">="
            raise ConfigError(f"{key} must be {relation} {lo:g} (got {value!r})")
        if hi is not None and value > hi:
            raise ConfigError(f"{key} must be <= {hi:g} (got {value!r})")
        floor = meta.get("min_if_set")
        if floor is not None and value and value < floor:
            raise ConfigError(f"{key} must be 0 (off) or >= {floor:g} (got {value!r})")
        return float(value) if tp is float else value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be {expected} (got {value!r}, {_type_name(value)})")
        if "\x00" in value:
            raise ConfigError(f"{key} contains a NUL byte; remove it")
        if len(value) > MAX_STRING_CHARS:
            raise ConfigError(f"{key} is {len(value)} characters long; at most {MAX_STRING_CHARS} are accepted")
        registry = meta.get("registry")
        if registry is not None:
            return _check_registered(key, value, registry())
        if meta.get("path"):
            if not value:
                raise ConfigError(f"{key} must be a path (got an empty string)")
            p = Path(value).expanduser()
            if not p.is_absolute() and base_dir is not None and not value.startswith("$"):
                p = base_dir / p
            return str(p)
        return value
    raise TypeError(f"config field {key} has an unsupported type {tp!r}")  # a bug in this module


def _check_registered(key: str, value: str, registry: Registry[Any]) -> str:
    """A name that must be registered (a detector, an engine backend): ConfigError naming the key and the names."""
    if value in registry:
        return value
    close = suggest(value, registry.names())
    hint = f"; did you mean {close!r}?" if close else ""
    names = ", ".join(repr(n) for n in registry.names())
    raise ConfigError(f"{key} must be one of {names} (got {value!r}{hint})")


def _suggest(name: str, known: list[str], prefix: str) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"; did you mean {prefix}{close[0]}?" if close else f"; known keys: {', '.join(prefix + k for k in known)}"


def _build_section(name: str, cls: type, table: Any, base_dir: Path | None) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"[{name}] must be a table (a [{name}] header with key = value lines), got {_type_name(table)}")
    hints = type_hints(cls)  # typing.get_type_hints, also on Python 3.8
    known = [f.name for f in fields(cls)]
    for key in table:
        if key not in known:
            raise ConfigError(f"{name}.{key} is not a known key{_suggest(key, known, name + '.')}")
    values = {}
    for f in fields(cls):
        if f.name in table:
            values[f.name] = _check_value(f"{name}.{f.name}", table[f.name], hints[f.name], dict(f.metadata), base_dir)
    return cls(**values)
