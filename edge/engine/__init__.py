"""Inference engines for the station: one module per backend behind the ``Engine`` protocol.

``onnxruntime`` runs anywhere (the CPU fallback); ``tensorrt`` runs an engine that
``facediag build`` made on this very device, after its ``manifest`` matches the
device. Backends import their heavy libraries only when they are used, so a
CPU-only station never needs TensorRT or pycuda installed. The backends a station
may be told to use are registered with a spec in ``backends`` (``ENGINE_BACKENDS``);
which precision each may run is the precision table, :mod:`facediag.edge.precision`.
"""
