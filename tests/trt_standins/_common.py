"""Pieces every stand-in shares: pybind11-like enums and objects, and the stand-in GPU memory.

Not TensorRT, not pycuda: small Python objects that refuse what the real bindings refuse
(an unknown attribute, a plain int where an enum is required, use of freed memory).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class Member(int):
    """An enum member (int-valued like pybind11's ``py::arithmetic`` enums), knowing its name and deprecation."""

    def __new__(cls, enum: str, name: str, value: int, deprecated: bool = False) -> Member:
        obj = int.__new__(cls, value)
        obj.enum = enum  # type: ignore[attr-defined]
        obj.name = name  # type: ignore[attr-defined]
        obj.deprecated = deprecated  # type: ignore[attr-defined]
        return obj

    def __repr__(self) -> str:
        return f"{self.enum}.{self.name}"  # type: ignore[attr-defined]

    __str__ = __repr__

    def __hash__(self) -> int:
        return int.__hash__(self)


def make_enum(enum: str, members: dict[str, tuple[int, bool]]) -> type:
    return type(enum, (), {name: Member(enum, name, value, dep) for name, (value, dep) in members.items()})


def enum_members(enum_cls: type) -> list[Member]:
    return [v for v in vars(enum_cls).values() if isinstance(v, Member)]


def require_member(value: Any, enum: str, where: str) -> Member:
    """pybind11 enums are not implicitly convertible from int: anything else is a TypeError."""
    if not isinstance(value, Member) or value.enum != enum:  # type: ignore[attr-defined]
        raise TypeError(f"{where}(): incompatible function arguments; expected tensorrt.{enum}, got {value!r}")
    return value


class Strict:
    """Refuses to set attributes the class does not define (pybind11 objects behave like this)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_") or isinstance(getattr(type(self), name, None), property):
            object.__setattr__(self, name, value)
            return
        raise AttributeError(f"stand-in {type(self).__name__} has no attribute {name!r}")


class DeviceFault(Exception):
    """Raised by ``DeviceMemory`` for an invalid address; the pycuda stand-in re-raises it as its own error."""


@dataclass
class DeviceMemory:
    """The stand-in GPU shared by the TensorRT and pycuda stand-ins: allocations by integer address.

    ``sticky_error`` is an asynchronous fault (a kernel that failed after its launch
    returned): the next stream synchronisation reports it, as CUDA does.
    ``context_current`` is installed by the pycuda stand-in (whether this thread has a
    current context), so the TensorRT stand-in can refuse work without one.
    """

    blocks: dict[int, bytearray] = field(default_factory=dict)
    _next: itertools.count = field(default_factory=lambda: itertools.count(0x1000, 0x1000))
    freed: list[int] = field(default_factory=list)
    sticky_error: str | None = None
    context_current: Callable[[], bool] = field(default=lambda: True)

    def alloc(self, nbytes: int) -> int:
        ptr = next(self._next) * 0x100000
        self.blocks[ptr] = bytearray(int(nbytes))
        return ptr

    def free(self, ptr: int) -> None:
        if int(ptr) not in self.blocks:
            raise DeviceFault(f"free of {ptr:#x}, which is not allocated (double free?)")
        del self.blocks[int(ptr)]
        self.freed.append(int(ptr))

    def _block(self, ptr: int) -> bytearray:
        block = self.blocks.get(int(ptr))
        if block is None:
            raise DeviceFault(f"address {int(ptr):#x} is not allocated (freed, or never allocated)")
        return block

    def write(self, ptr: int, data: np.ndarray) -> None:
        raw = np.ascontiguousarray(data).tobytes()
        block = self._block(ptr)
        if len(raw) > len(block):
            raise DeviceFault(f"{len(raw)} bytes do not fit a {len(block)}-byte allocation")
        block[: len(raw)] = raw

    def read(self, ptr: int, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape))
        block = self._block(ptr)
        if count * np.dtype(dtype).itemsize > len(block):
            raise DeviceFault("read past the end of an allocation")
        return np.frombuffer(bytes(block), dtype=dtype, count=count).reshape(shape)

    def is_live(self, ptr: int) -> bool:
        return int(ptr) in self.blocks
