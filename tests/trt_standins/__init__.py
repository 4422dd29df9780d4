"""Stand-ins for TensorRT (one class per generation), pycuda and picamera2. They are NOT those libraries.

TensorRT, pycuda and picamera2 cannot be installed on development or CI machines, so the
code that talks to them is tested against these modules, which carry exactly the API of
each version and refuse what the real libraries refuse (see each module's docstring).
tests/test_trt_contract.py runs the same contract against these and, where they import,
against the real ``tensorrt`` and ``pycuda``, so the stand-ins cannot drift from them.
"""

from __future__ import annotations

from tests.trt_standins._common import DeviceMemory, Member
from tests.trt_standins.generations import GENERATIONS, Generation, TensorRT8, TensorRT10, TensorRT11
from tests.trt_standins.picamera2 import make_picamera2_standin
from tests.trt_standins.pycuda import make_pycuda_standin
from tests.trt_standins.tensorrt import ENGINE_MAGIC, make_tensorrt_standin, was_called

V85, V86 = TensorRT8.V85.version, TensorRT8.V86.version
V103, V1016 = TensorRT10.V103.version, TensorRT10.V1016.version
V11 = TensorRT11.V111.version
ALL_VERSIONS = (V85, V86, V103, V1016, V11)

__all__ = [
    "ALL_VERSIONS", "ENGINE_MAGIC", "GENERATIONS", "V11", "V85", "V86", "V103", "V1016", "DeviceMemory",
    "Generation", "Member", "make_picamera2_standin", "make_pycuda_standin", "make_tensorrt_standin", "was_called",
]
