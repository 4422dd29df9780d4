"""One module per ``facediag`` subcommand.

Each module defines ``NAME`` (the subcommand), ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Modules import only argparse
and the standard library at top level; heavy dependencies (OpenCV, ONNX Runtime,
torch, TensorRT) are imported inside ``run`` so that ``facediag --help`` and each
command load only what they use.
"""
