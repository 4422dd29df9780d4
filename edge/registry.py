"""Named, typed registries: the one place a kind of pluggable part (detector, source, backbone, ...) is listed.

Every entry is a frozen dataclass (its *spec*) with at least ``name`` and a
one-line ``summary``; what else it carries (options, limits such as a
detector's smallest usable face, a lazy factory) is up to the kind. Entries
register themselves next to their implementation::

    DETECTORS.register(DetectorSpec(name="yunet", summary="...", factory=_make_yunet, ...))

and everything that needs the list (config validation, the command line's
``choices`` and ``--help`` text, tests) reads it from the registry, so adding an
entry is one module (plus a line in the registry's ``builtin_modules``) and one
test.

Heavy imports stay lazy: a registry imports its built-in modules only when it is
first asked for a name, and those modules import their heavy dependencies only
when an entry is built. A factory may be a callable or a ``"module:function"``
string, resolved by :func:`load_factory` when the entry is used.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import logging
import threading
import typing
from collections.abc import Callable, Iterator
from typing import Any, Generic, Protocol, TypeVar

from facediag.edge.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["Factory", "Registry", "RegistrySpec", "UnknownEntryError", "load_factory", "suggest"]

#: A callable, or ``"package.module:function"`` imported when first used.
Factory = typing.Union[str, typing.Callable[..., Any]]  # typing.*: evaluated at run time (3.8)


class RegistrySpec(Protocol):
    """What every registry entry has: a unique name and a one-line summary for ``--help``."""

    @property
    def name(self) -> str: ...

    @property
    def summary(self) -> str: ...


SpecT = TypeVar("SpecT", bound=RegistrySpec)


class UnknownEntryError(ConfigError):
    """A name that no entry of a registry has; the message lists the valid names."""


def suggest(name: str, known: list[str] | tuple[str, ...]) -> str | None:
    """The closest known name to ``name``, ignoring case (for "did you mean ...?"), or None."""
    by_lower = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[close[0]] if close else None


def load_factory(factory: Factory) -> Callable[..., Any]:
    """The callable a factory stands for: itself, or ``module:function`` imported now.

    A malformed reference or a missing attribute is a programming error (``ValueError`` /
    ``AttributeError`` naming it); a missing module raises ``ModuleNotFoundError`` as usual.
    """
    if callable(factory):
        return factory
    if not isinstance(factory, str) or factory.count(":") != 1:
        raise ValueError(f"factory {factory!r} must be a callable or a 'package.module:function' string")
    module_name, _, attr = factory.partition(":")
    if not module_name or not attr:
        raise ValueError(f"factory {factory!r} must be a callable or a 'package.module:function' string")
    module = importlib.import_module(module_name)
    target = module
    for part in attr.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"factory {factory!r} names {type(target).__name__}, not a callable")
    return target


class Registry(Generic[SpecT]):
    """An ordered set of specs of one kind, looked up by name.

    ``kind`` is the human word for an entry ("detector", "backbone"); it appears in
    error messages. ``builtin_modules`` are imported (in order) the first time the
    registry is read; each registers its entries at import. A built-in module that
    is missing from the installation is skipped (its entries are simply absent).
    """

    def __init__(self, kind: str, builtin_modules: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.builtin_modules = builtin_modules
        self._entries: dict[str, SpecT] = {}
        self._loaded = not builtin_modules
        self._loading = False
        # Two locks: one guards the entries, the other serialises importing the built-in modules. register()
        # never waits for the import lock, so a thread that imports a built-in module directly (and so
        # registers from inside that import) cannot deadlock with a thread loading the built-ins.
        self._entries_lock = threading.Lock()
        self._load_lock = threading.RLock()

    # -- registration -------------------------------------------------------------------------
    def register(self, spec: SpecT) -> SpecT:
        """Add ``spec``; a second entry under the same name is refused (``ValueError``).

        Registering an equal spec again is a no-op, so a module that is imported twice
        under one name does not fail.
        """
        name = getattr(spec, "name", None)
        if not isinstance(name, str) or not name or name != name.strip():
            raise ValueError(f"a {self.kind} spec needs a non-empty name without surrounding spaces, got {name!r}")
        with self._entries_lock:
            old = self._entries.get(name)
            if old is not None:
                if old == spec:
                    return old
                raise ValueError(f"a {self.kind} named {name!r} is already registered ({old!r}); choose another name")
            self._entries[name] = spec
        return spec

    def unregister(self, name: str) -> SpecT:
        """Remove and return the entry ``name`` (tests use it to clean up after themselves)."""
        self._ensure_loaded()
        with self._entries_lock:
            if name in self._entries:
                return self._entries.pop(name)
        raise self._unknown(name)

    @contextlib.contextmanager
    def registered(self, spec: SpecT) -> Iterator[SpecT]:
        """Register ``spec`` for the duration of a ``with`` block (then unregister it)."""
        self._ensure_loaded()
        self.register(spec)
        try:
            yield spec
        finally:
            with contextlib.suppress(ConfigError):
                self.unregister(spec.name)

    # -- lookup --------------------------------------------------------------------------------
    def get(self, name: str) -> SpecT:
        """The spec called ``name``; an unknown name raises UnknownEntryError listing the valid ones."""
        self._ensure_loaded()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise self._unknown(name) from None

    def names(self) -> tuple[str, ...]:
        """Entry names in registration order (built-ins first)."""
        self._ensure_loaded()
        return tuple(self._entries)

    def specs(self) -> tuple[SpecT, ...]:
        self._ensure_loaded()
        return tuple(self._entries.values())

    def help_text(self, indent: str = "  ") -> str:
        """One line per entry, ``name  summary``, aligned: for ``--help`` and docs."""
        specs = self.specs()
        if not specs:
            return f"{indent}(no {self.kind} is registered)"
        width = max(len(s.name) for s in specs)
        return "\n".join(f"{indent}{s.name.ljust(width)}  {s.summary}" for s in specs)

    def unknown_message(self, name: object) -> str:
        """'NAME is not a known KIND (did you mean ...?); choose one of: ...' (for a config key's error)."""
        return f"{name!r} is not a known {self.kind}{self._hint(name)}; choose one of: {self._known()}"

    def _hint(self, name: object) -> str:
        close = suggest(name, self.names()) if isinstance(name, str) else None
        return f" (did you mean {close!r}?)" if close else ""

    def _known(self) -> str:
        return ", ".join(self.names()) or "(none registered)"

    def _unknown(self, name: object) -> UnknownEntryError:
        return UnknownEntryError(f"unknown {self.kind} {name!r}{self._hint(name)}: choose one of {self._known()}")

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._entries

    def __getitem__(self, name: str) -> SpecT:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"

    # -- built-ins -----------------------------------------------------------------------------
    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        with self._load_lock:  # other threads wait here until every built-in module is in
            if self._loaded or self._loading:  # _loading: this thread is importing them right now
                return
            self._loading = True
            try:
                for module_name in self.builtin_modules:
                    try:
                        importlib.import_module(module_name)
                    except ModuleNotFoundError as exc:
                        if exc.name != module_name:
                            raise
                        log.debug("%s module %s is not installed; its entries are absent", self.kind, module_name)
            finally:
                self._loading = False
                self._loaded = True
