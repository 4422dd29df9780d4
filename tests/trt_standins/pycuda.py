"""A stand-in shaped like ``pycuda.driver`` (the parts facediag uses), as strict as pycuda itself.

Not pycuda. What it refuses, as pycuda does (read from pycuda's src/cpp/cuda.hpp and
src/wrapper/wrap_cudadrv.cpp):

* errors are pycuda's own classes: ``Error(Exception)`` with ``LogicError``,
  ``RuntimeError``, ``MemoryError``, ``LaunchError`` below it; none is the builtin
  ``RuntimeError``. ``init()`` on a machine whose driver cannot start raises
  ``RuntimeError`` (pycuda's) "cuInit failed: ...";
* contexts form a stack *per thread*: ``Context.pop()`` (a static method) pops this
  thread's top and refuses an empty stack; a context detached for good cannot be pushed;
* streams, device memory and page-locked host memory need a current context to be
  created; they are freed while a context of theirs can be made current, and a second
  ``free()`` is refused (invalid handle); freeing or collecting them after their
  context was detached is a leak, which is recorded in ``module.leaks``;
* copies need contiguous host buffers (the buffer protocol's ANY_CONTIGUOUS);
* an asynchronous fault surfaces at ``Stream.synchronize()``.

``module.live()`` counts what is allocated now, so tests can prove that nothing leaks.
"""

from __future__ import annotations

import threading
import types
from typing import Any

import numpy as np

from tests.trt_standins._common import DeviceFault, DeviceMemory


def make_pycuda_standin(
    memory: DeviceMemory | None = None,
    gpu_name: str = "Stand-in Orin",
    compute_capability: tuple[int, int] = (8, 7),
    *,
    init_error: str | None = None,
) -> types.ModuleType:
    """A module shaped like ``pycuda.driver``; ``init_error`` makes ``init()`` fail like a broken driver."""
    mod = types.ModuleType("pycuda_driver_standin")
    mem = memory if memory is not None else DeviceMemory()
    mod.memory = mem
    mod.leaks = []  # what was released with no live context (pycuda: "cleanup on dead context")
    mod.detached = 0
    state: dict[str, Any] = {"initialised": False, "host": 0, "stream": 0, "device": 0}
    local = threading.local()

    error = type("Error", (Exception,), {"__module__": "pycuda._driver"})
    mod.Error = error
    for name in ("LogicError", "RuntimeError", "MemoryError", "LaunchError"):
        setattr(mod, name, type(name, (error,), {"__module__": "pycuda._driver"}))

    def stack() -> list[Any]:
        if not hasattr(local, "stack"):
            local.stack = []
        return local.stack

    def current() -> Any:
        s = stack()
        return s[-1] if s else None

    def need_context(what: str) -> Any:
        ctx = current()
        if ctx is None:
            raise mod.LogicError(f"{what} failed: invalid context (no currently active context?)")
        return ctx

    def need_init(what: str) -> None:
        if not state["initialised"]:
            raise mod.LogicError(f"{what} failed: initialization error (call pycuda.driver.init() first)")

    mem.context_current = lambda: current() is not None
    mod.context_depth = lambda: len(stack())

    class Context:
        def __init__(self) -> None:
            self.alive = True

        def push(self) -> None:
            if not self.alive:
                raise mod.LogicError("cuCtxPushCurrent failed: cannot push a detached (dead) context")
            stack().append(self)

        @staticmethod
        def pop() -> None:
            if not stack():
                raise mod.LogicError("context::pop failed: invalid context - cannot pop non-current context")
            stack().pop()

        def detach(self) -> None:
            if not self.alive:
                raise mod.LogicError("context::detach failed: cannot detach from invalid context")
            if self in stack():
                raise mod.LogicError("stand-in pycuda: detaching a context that is still on this thread's stack")
            self.alive = False
            mod.detached += 1

    def release(kind: str, ctx: Context, what: str) -> None:
        """Free something owned by ``ctx``: fine while ``ctx`` is alive (pycuda re-activates it), a leak after."""
        if not ctx.alive:
            mod.leaks.append(what)
            return
        state[kind] -= 1

    class Device:
        def __init__(self, index: int) -> None:
            need_init("cuDeviceGet")
            if not 0 <= int(index) < 1:
                raise mod.LogicError("cuDeviceGet failed: invalid device ordinal")

        @staticmethod
        def count() -> int:
            need_init("cuDeviceGetCount")
            return 1

        def name(self) -> str:
            return gpu_name

        def compute_capability(self) -> tuple[int, int]:
            return compute_capability

        def retain_primary_context(self) -> Context:
            return Context()

    class Stream:
        def __init__(self, flags: int = 0) -> None:
            self._ctx = need_context("cuStreamCreate")
            self._live = True
            state["stream"] += 1

        @property
        def handle(self) -> int:
            return 0xABC000 + id(self) % 0x1000

        def synchronize(self) -> Stream:
            need_context("cuStreamSynchronize")
            if mem.sticky_error is not None:
                message, mem.sticky_error = mem.sticky_error, None
                raise mod.LaunchError(f"cuStreamSynchronize failed: {message}")
            return self

        def __del__(self) -> None:
            if getattr(self, "_live", False):
                self._live = False
                release("stream", self._ctx, "Stream")

    class HostAllocation:
        """The ``.base`` of a ``pagelocked_empty`` array, with ``free()`` like pycuda's."""

        def __init__(self, shape: tuple[int, ...], dtype: np.dtype, ctx: Context) -> None:
            self._data = np.zeros(shape, dtype)
            self._ctx = ctx
            self._valid = True
            self.__array_interface__ = self._data.__array_interface__
            state["host"] += 1

        def free(self) -> None:
            if not self._valid:
                raise mod.LogicError("pagelocked_host_allocation::free failed: invalid resource handle")
            self._valid = False
            release("host", self._ctx, "pagelocked host buffer")

        def __del__(self) -> None:
            if getattr(self, "_valid", False):
                self._valid = False
                release("host", self._ctx, "pagelocked host buffer (collected)")

    class DeviceAllocation:
        def __init__(self, nbytes: int, ctx: Context) -> None:
            self._ptr = mem.alloc(nbytes)
            self._ctx = ctx
            self._valid = True
            state["device"] += 1

        def __int__(self) -> int:
            return self._ptr

        def free(self) -> None:
            if not self._valid:
                raise mod.LogicError("device_allocation::free failed: invalid resource handle")
            self._valid = False
            mem.free(self._ptr)
            release("device", self._ctx, "device allocation")

        def __del__(self) -> None:
            if getattr(self, "_valid", False):
                self._valid = False
                mem.blocks.pop(self._ptr, None)
                release("device", self._ctx, "device allocation (collected)")

    def host_array(value: Any, what: str, writable: bool = False) -> np.ndarray:
        if not isinstance(value, np.ndarray):
            raise TypeError(f"{what}: expected a buffer, got {type(value).__name__}")
        if not (value.flags.c_contiguous or value.flags.f_contiguous):
            raise ValueError("ndarray is not contiguous")
        if writable and not value.flags.writeable:
            raise ValueError("buffer is not writable")
        base = value
        while base is not None:
            if isinstance(base, HostAllocation) and not base._valid:
                raise mod.LogicError(f"{what}: host buffer was freed")
            base = getattr(base, "base", None)
        return value

    def device_call(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except DeviceFault as exc:
            raise mod.LogicError(f"cuMemcpy failed: invalid argument ({exc})") from None

    def pagelocked_empty(shape: Any, dtype: Any, order: str = "C", mem_flags: int = 0) -> np.ndarray:
        ctx = need_context("cuMemHostAlloc")
        shape = (int(shape),) if isinstance(shape, int) else tuple(int(v) for v in shape)
        return np.asarray(HostAllocation(shape, np.dtype(dtype), ctx))

    def mem_alloc(nbytes: int) -> DeviceAllocation:
        ctx = need_context("cuMemAlloc")
        if int(nbytes) <= 0:
            raise mod.LogicError("cuMemAlloc failed: invalid argument")
        return DeviceAllocation(int(nbytes), ctx)

    def memcpy_htod(dest: Any, src: Any) -> None:
        need_context("cuMemcpyHtoD")
        device_call(mem.write, int(dest), host_array(src, "memcpy_htod"))

    def memcpy_htod_async(dest: Any, src: Any, stream: Any = None) -> None:
        need_context("cuMemcpyHtoDAsync")
        device_call(mem.write, int(dest), host_array(src, "memcpy_htod_async"))

    def memcpy_dtoh_async(dest: Any, src: Any, stream: Any = None) -> None:
        need_context("cuMemcpyDtoHAsync")
        out = host_array(dest, "memcpy_dtoh_async", writable=True)
        out[...] = device_call(mem.read, int(src), out.dtype, out.shape)

    def init(flags: int = 0) -> None:
        if init_error is not None:
            raise mod.RuntimeError(f"cuInit failed: {init_error}")
        state["initialised"] = True

    def live() -> dict[str, int]:
        return {"device": state["device"], "host": state["host"], "stream": state["stream"]}

    mod.init = init
    mod.Device = Device
    mod.Context = Context
    mod.Stream = Stream
    mod.HostAllocation = HostAllocation
    mod.DeviceAllocation = DeviceAllocation
    mod.pagelocked_empty = pagelocked_empty
    mod.mem_alloc = mem_alloc
    mod.memcpy_htod = memcpy_htod
    mod.memcpy_htod_async = memcpy_htod_async
    mod.memcpy_dtoh_async = memcpy_dtoh_async
    mod.live = live
    return mod
