"""On-device code: face front-end, bundle format, engine runtimes, the screening daemon.

Never imports torch, ``training``, ``converters`` or ``calibration``.
"""

import sys as _sys

if _sys.version_info < (3, 8):  # noqa: UP036 - for older interpreters
    raise ImportError(
        f"facediag needs Python 3.8 or newer; this is Python {_sys.version_info[0]}.{_sys.version_info[1]}. "
        "JetPack 5 has Python 3.8 (TensorRT 8.5's bindings), JetPack 6 Python 3.10 (TensorRT 10.3)"
    )

if _sys.version_info < (3, 9):  # noqa: UP036 - JetPack 5's Python 3.8
    import warnings as _warnings

    # cryptography 47, the last release for 3.8, warns at import that its 3.8 support ends: nothing a station
    # can act on, and it would be in the journal at every start. Only that message is filtered.
    _warnings.filterwarnings("ignore", message=r"Python 3\.8 is no longer supported", category=UserWarning)

from facediag.edge.privacy import quiet_dependencies as _quiet_dependencies

_quiet_dependencies()  # before any dependency loads: telemetry off (see facediag.edge.privacy)
