"""The runtime half of the TensorRT stand-in: Runtime, ICudaEngine, IExecutionContext. Not TensorRT."""

from __future__ import annotations

import json
import types
from typing import Any

import numpy as np

from facediag.edge.compat import zip_strict  # zip(strict=True) on Python 3.8 too (.ci/py38)
from tests.trt_standins._common import DeviceFault, Member, Strict
from tests.trt_standins.generations import Generation


def add_runtime(mod: types.ModuleType, gen: Generation) -> None:
    from tests.trt_standins.tensorrt import _NP, ENGINE_MAGIC, _check_logger

    mem = mod.memory

    class IExecutionContext(Strict):
        def __init__(self, engine: ICudaEngine) -> None:
            self._engine = engine
            self._shapes: dict[str, tuple[int, ...]] = {}
            self._addresses: dict[str, int] = {}
            self._session: Any = None

        def set_input_shape(self, name: str, shape: Any) -> bool:
            shape = tuple(int(v) for v in shape)
            lo, _, hi = self._engine._blob["profile"][name]
            if len(shape) != len(lo) or not all(a <= s <= b for a, s, b in zip_strict(lo, shape, hi)):
                return False  # TensorRT logs "... is out of the optimization profile's bounds"
            self._shapes[name] = shape
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            if name in self._shapes:
                return self._shapes[name]
            shape = list(self._engine.get_tensor_shape(name))
            if not self._engine._is_input(name) and shape and shape[0] < 0 and self._shapes:
                shape[0] = next(iter(self._shapes.values()))[0]
            return tuple(shape)

        def set_tensor_address(self, name: str, memory: int) -> bool:
            if not isinstance(memory, int) or name not in self._engine._names:
                return False
            self._addresses[name] = int(memory)
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            import onnxruntime as ort

            if not isinstance(stream_handle, int):
                raise TypeError("execute_async_v3(): incompatible function arguments; stream_handle must be an int")
            if not mem.context_current():
                return False  # "Cuda Runtime (invalid device context)"
            blob = self._engine._blob
            missing = [n for n in self._engine._names if n not in self._addresses]
            dead = [n for n, p in self._addresses.items() if not mem.is_live(p)]
            if missing or dead or any(t[0] not in self._shapes for t in blob["inputs"]):
                return False
            if mod.fail_async_next:
                mod.fail_async_next = False
                mem.sticky_error = "an illegal memory access was encountered"
                return True  # launched fine; the failure shows up at the stream's synchronisation
            if self._session is None:
                self._session = ort.InferenceSession(blob["onnx"], providers=["CPUExecutionProvider"])
            try:
                feeds = {name: mem.read(self._addresses[name], _NP[dt], self._shapes[name])
                         for name, _, dt in blob["inputs"]}
                outs = self._session.run([o[0] for o in blob["outputs"]], feeds)
                for (name, _, dt), value in zip_strict(blob["outputs"], outs):
                    mem.write(self._addresses[name], np.asarray(value, dtype=_NP[dt]))
            except DeviceFault as exc:
                mem.sticky_error = str(exc)
            mod.calls.append(("execute_async_v3", self._shapes[blob["inputs"][0][0]]))
            return True

    if gen.binding_api:

        def execute_async_v2(self: IExecutionContext, bindings: Any, stream_handle: int) -> bool:
            mod.deprecated_used.append("IExecutionContext.execute_async_v2")
            return False

        IExecutionContext.execute_async_v2 = execute_async_v2

    class ICudaEngine(Strict):
        def __init__(self, blob: dict[str, Any]) -> None:
            self._blob = blob
            self._names = [t[0] for t in blob["inputs"]] + [t[0] for t in blob["outputs"]]

        def _is_input(self, name: str) -> bool:
            return any(t[0] == name for t in self._blob["inputs"])

        def _tensor(self, name: str) -> list[Any]:
            for t in self._blob["inputs"] + self._blob["outputs"]:
                if t[0] == name:
                    return t
            raise KeyError(name)

        num_io_tensors = property(lambda self: len(self._names))

        def get_tensor_name(self, index: int) -> str:
            return self._names[index]

        def get_tensor_mode(self, name: str) -> Member:
            return mod.TensorIOMode.INPUT if self._is_input(name) else mod.TensorIOMode.OUTPUT

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return tuple(self._tensor(name)[1])

        def get_tensor_dtype(self, name: str) -> Member:
            return getattr(mod.DataType, self._tensor(name)[2])

        def create_execution_context(self) -> IExecutionContext:
            return IExecutionContext(self)

    if gen.binding_api:
        ICudaEngine.num_bindings = property(lambda self: len(self._names))

    class Runtime(Strict):
        def __init__(self, logger: Any) -> None:
            _check_logger(mod, logger, "Runtime")
            self._dla = -1

        num_DLA_cores = property(lambda self: mod.num_dla_cores if gen.dla_supported else 0)
        DLA_core = property(lambda self: self._dla, lambda self, v: object.__setattr__(self, "_dla", int(v)))

        def deserialize_cuda_engine(self, serialized_engine: Any) -> ICudaEngine | None:
            data = bytes(serialized_engine)
            mod.calls.append(("deserialize", len(data)))
            if not data.startswith(ENGINE_MAGIC):
                return None
            blob = json.loads(data[len(ENGINE_MAGIC):])
            if blob["version"] != gen.version:
                return None  # "Version tag does not match"
            return ICudaEngine(blob)

    mod.IExecutionContext = IExecutionContext
    mod.ICudaEngine = ICudaEngine
    mod.Runtime = Runtime
