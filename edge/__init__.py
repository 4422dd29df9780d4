"""On-device code: face front-end, bundle format, engine runtimes, the screening daemon.

Never imports torch, ``training``, ``converters`` or ``calibration``.
"""

import sys as _sys

if _sys.version_info < (3, 10):  # noqa: UP036 - for older interpreters (tests run it under Python 3.8)
    raise ImportError(
        f"facediag needs Python 3.10 or newer; this is Python {_sys.version_info[0]}.{_sys.version_info[1]}. "
        "JetPack 5's TensorRT 8.5 has Python bindings for Python 3.8 only, so a JetPack 5 station cannot run "
        "facediag on TensorRT: upgrade it to JetPack 6 (TensorRT 10.3, Python 3.10), or run facediag under "
        "Python 3.10+ with the engine backend set to onnxruntime"
    )

from facediag.edge.privacy import quiet_dependencies as _quiet_dependencies

_quiet_dependencies()  # before any dependency loads: telemetry off (see facediag.edge.privacy)
