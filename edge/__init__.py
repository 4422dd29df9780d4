"""On-device code: face front-end, bundle format, engine runtimes, the screening daemon.

Never imports torch, ``training``, ``converters`` or ``calibration``.
"""
